/* Export cache: the driver's handle of each block this process exported,
 * keyed by the block's base address and checked against the driver's
 * buffer id, which is unique per allocation and never reused in a process.
 * A block freed and re-allocated at the same address has a new buffer id,
 * so it can never be given the old block's handle.
 *
 * A second index by handle bytes lets an open of our own export (in the
 * exporting process) find the block it names. */
#ifndef NVIPCFIX_EXPORT_CACHE_H
#define NVIPCFIX_EXPORT_CACHE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "handle_tag.h"

/* When the cache reaches this many blocks, the entries of blocks that no
 * longer exist are dropped; the next sweep comes when it holds twice as many
 * as survived (at least this many again). Blocks still allocated are never
 * dropped, so an open of a live block's handle in its own process keeps
 * working however many other blocks were exported. */
#define NVIPCFIX_EXPORT_CACHE_MAX 65536

/* Whether the block recorded at base with this buffer id still exists. */
typedef int (*nvipcfix_export_live_fn)(void *arg, uint64_t base, uint64_t buffer_id);

struct nvipcfix_export_entry;

struct nvipcfix_export_cache {
    pthread_rwlock_t lock;
    struct nvipcfix_export_entry *by_base;
    struct nvipcfix_export_entry *by_handle;
    size_t count;
    size_t sweep_at; /* count that triggers the next sweep */
    nvipcfix_export_live_fn live;
    void *live_arg;
};

struct nvipcfix_export_block {
    uint64_t base;
    uint64_t size;
    uint64_t buffer_id;
    unsigned char handle[NVIPCFIX_HANDLE_BYTES];
};

/* live may be NULL: then a full cache drops its oldest half. */
void nvipcfix_export_cache_init(struct nvipcfix_export_cache *c, nvipcfix_export_live_fn live,
                                void *live_arg);
void nvipcfix_export_cache_destroy(struct nvipcfix_export_cache *c);

/* Copies the cached handle of the block (base, buffer_id) into handle and
 * returns 1; returns 0 if there is none (or only one of an older block at
 * that address). */
int nvipcfix_export_cache_get(struct nvipcfix_export_cache *c, uint64_t base,
                              uint64_t buffer_id, unsigned char handle[NVIPCFIX_HANDLE_BYTES]);

/* Records the driver's handle of a block, replacing whatever was recorded
 * at that base or for that handle. Returns 0, or -1 if out of memory. */
int nvipcfix_export_cache_put(struct nvipcfix_export_cache *c,
                              const struct nvipcfix_export_block *block);

/* Finds the block whose handle is these bytes; returns 1 and fills *out, or 0. */
int nvipcfix_export_cache_find_handle(struct nvipcfix_export_cache *c,
                                      const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                      struct nvipcfix_export_block *out);

size_t nvipcfix_export_cache_count(struct nvipcfix_export_cache *c);

/* In a child after fork(): an empty cache with a fresh lock, the parent's
 * entries left behind. Takes no lock. */
void nvipcfix_export_cache_forget(struct nvipcfix_export_cache *c);

#endif
