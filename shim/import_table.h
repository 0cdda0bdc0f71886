/* Import table: every block this process opened through nvipcfix, once per
 * (context, handle), with nvipcfix's own reference count, and every pointer
 * nvipcfix returned for it (block base + offset), so that a close of any of
 * them releases one reference of the right block. A pointer stays known
 * until its block's last reference is gone.
 *
 * Locking: a read-write lock; re-opens and closes that are not the last
 * take it shared and change the count atomically, so threads using the same
 * block do not serialise. Only adding a block or a new pointer, and dropping
 * the last reference, take it exclusively. */
#ifndef NVIPCFIX_IMPORT_TABLE_H
#define NVIPCFIX_IMPORT_TABLE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "handle_tag.h"

struct nvipcfix_import_block;
struct nvipcfix_import_ptr;

struct nvipcfix_import_table {
    pthread_rwlock_t lock;
    struct nvipcfix_import_block *blocks; /* by (context, handle) */
    struct nvipcfix_import_ptr *ptrs;     /* by returned pointer */
    size_t nblocks, nptrs;
};

enum nvipcfix_import_result {
    NVIPCFIX_IMPORT_HIT,        /* *ptr set, one more reference taken */
    NVIPCFIX_IMPORT_MISS,       /* no such block open */
    NVIPCFIX_IMPORT_BAD_OFFSET, /* offset not inside the block: nothing taken */
    NVIPCFIX_IMPORT_NOMEM,      /* out of memory: nothing taken */
};

enum nvipcfix_release_result {
    NVIPCFIX_RELEASE_NOT_OURS,      /* nvipcfix never returned this pointer */
    NVIPCFIX_RELEASE_DONE,          /* one reference dropped, others remain */
    NVIPCFIX_RELEASE_WOULD_BE_LAST, /* last reference, not dropped (allow_last 0) */
    NVIPCFIX_RELEASE_LAST,          /* last reference dropped, block removed */
};

/* What a caller needs to close a block for real. */
struct nvipcfix_released_block {
    uint64_t base;
    int self; /* opened from our own export: nothing to close in the driver */
};

void nvipcfix_import_table_init(struct nvipcfix_import_table *t);
void nvipcfix_import_table_destroy(struct nvipcfix_import_table *t);

/* If the block (ctx, handle) is open, takes one reference and sets *ptr to
 * its base + offset. */
enum nvipcfix_import_result
nvipcfix_import_acquire(struct nvipcfix_import_table *t, const void *ctx,
                        const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t offset,
                        uint64_t *ptr);

/* Records a block just opened (base, size; size 0 when unknown, allowing
 * offset 0 only) with one reference, and sets *ptr to base + offset. If the
 * block is already there, takes a reference of that one instead and sets
 * *existed, so the caller can undo its own open. */
enum nvipcfix_import_result
nvipcfix_import_insert(struct nvipcfix_import_table *t, const void *ctx,
                       const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t base,
                       uint64_t size, int self, uint64_t offset, uint64_t *ptr, int *existed);

/* Drops one reference of the block that ptr was returned for. Unless
 * allow_last, the last reference is left alone (WOULD_BE_LAST), so the
 * caller can take the slow path that closes in the driver. */
enum nvipcfix_release_result
nvipcfix_import_release(struct nvipcfix_import_table *t, uint64_t ptr, int allow_last,
                        struct nvipcfix_released_block *out);

size_t nvipcfix_import_blocks(struct nvipcfix_import_table *t);
size_t nvipcfix_import_pointers(struct nvipcfix_import_table *t);

/* Reference count of the block ptr was returned for (0 if none). */
uint64_t nvipcfix_import_refs(struct nvipcfix_import_table *t, uint64_t ptr);

/* For fork, as for the export cache. */
void nvipcfix_import_table_lock(struct nvipcfix_import_table *t);
void nvipcfix_import_table_unlock(struct nvipcfix_import_table *t);
void nvipcfix_import_table_reset_lock(struct nvipcfix_import_table *t);

#endif
