/* The exporter's records of VMM exports (vmm_share.c): for each export its
 * chunks (address, size, buffer id), its 128-bit secret and its id.
 *
 * Exports of one place share their chunks: a run holds the chunks recorded
 * side by side from one first address, and an export is a stretch of a run
 * (n chunks from one of them: a tensor in a later chunk of a segment
 * exported before shares its run, and one in the chunk just before a run's
 * first is put at its front) with its own id and secret. Re-exporting a segment that grew
 * appends the new chunks to its run; one that shrank and grew again
 * replaces the run's tail (dropping the exports that covered the freed
 * chunks, which could no longer be served whole); the same chunks exported
 * again get the same export, whichever run holds them (a reservation back
 * to an earlier state). So memory is linear in the chunks exported, not in
 * exports times chunks. Exports with a chunk gone are swept (every chunk
 * held checked, once the exports or the chunks held have doubled). */
#ifndef NVIPCFIX_VMM_RECORDS_H
#define NVIPCFIX_VMM_RECORDS_H

#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "keyed_hash.h"

struct nvipcfix_vmm_chunk {
    uint64_t va, size, buffer_id;
};

struct vmm_run;
struct vmm_entry;
struct vmm_place;

/* Nonzero while the mapping recorded as c is still there. */
typedef int (*nvipcfix_chunk_check)(void *arg, const struct nvipcfix_vmm_chunk *c);

struct nvipcfix_vmm_records {
    pthread_mutex_t lock;
    struct vmm_place *by_va;  /* the latest run holding each chunk's address */
    struct vmm_run *runs;     /* every run */
    struct vmm_entry *by_id;
    struct vmm_entry *by_sum; /* by a hash of their context and chunks */
    uint32_t next_id;
    size_t entries, chunks, sweep_at, sweep_chunks_at;
    nvipcfix_chunk_check unchanged;
    void *arg;
    atomic_uint_least64_t dropped; /* exports dropped so far, forgotten ones included */
};

void nvipcfix_vmm_records_init(struct nvipcfix_vmm_records *r, nvipcfix_chunk_check unchanged,
                               void *arg);
void nvipcfix_vmm_records_destroy(struct nvipcfix_vmm_records *r);

/* How many exports were dropped so far. While it stands still, every
 * export recorded when it was read is still recorded, with its id and
 * secret: no look-up needed. Ids are given again only after a child
 * forgets its parent's records, which counts as dropping them all (the
 * child also forgets the exports it kept, and a kept export is taken for
 * a new one only if its secret is the same). */
static inline uint64_t nvipcfix_vmm_records_dropped(struct nvipcfix_vmm_records *r)
{
    return atomic_load_explicit(&r->dropped, memory_order_acquire);
}

/* In a child after fork: empty (the parent's records are left behind). */
void nvipcfix_vmm_records_forget(struct nvipcfix_vmm_records *r);

/* Records an export of chunks[0, n) in ctx: *id and secret, the same as the
 * last export of the same chunks. -1 when out of memory or of ids. */
int nvipcfix_vmm_records_add(struct nvipcfix_vmm_records *r, CUcontext ctx,
                             const struct nvipcfix_vmm_chunk *chunks, size_t n, uint32_t *id,
                             unsigned char secret[NVIPCFIX_KEY_BYTES]);

/* Export id's secret: 0, or -1 when there is no such export. */
int nvipcfix_vmm_records_secret(struct nvipcfix_vmm_records *r, uint32_t id,
                                unsigned char secret[NVIPCFIX_KEY_BYTES]);

/* A copy of chunks [first, first + *n) of export id (*n cut to what it
 * has), malloc'd, and its context; NULL when there is no such export or
 * nothing from first on. *total: how many chunks the export has. */
struct nvipcfix_vmm_chunk *nvipcfix_vmm_records_get(struct nvipcfix_vmm_records *r,
                                                    uint32_t id, size_t first, size_t *n,
                                                    size_t *total, CUcontext *ctx);

/* Exports and chunks held. */
void nvipcfix_vmm_records_counts(struct nvipcfix_vmm_records *r, size_t *exports,
                                 size_t *chunks);

#endif
