/* Import table: every block this process opened through nvipcfix, once per
 * (context, handle), with nvipcfix's own reference count, and every pointer
 * nvipcfix returned into it (block base + offset), each with a count of its
 * own. A block's count is the sum of its pointers' counts; the block is
 * freed when its count reaches zero. A pointer whose count reaches zero
 * keeps its slot for a quick re-open; once a block has more than
 * NVIPCFIX_IMPORT_IDLE_MAX such closed pointers, and they are a quarter of
 * its slots, they are dropped: opening and closing ever new offsets of a
 * block kept open does not grow the table.
 *
 * Storage: a block is one record (144 bytes) found by (context, handle)
 * through a chained hash, and by address through a sorted array of block
 * bases. Its pointers are slots of 12 bytes (an 8-byte offset key, a 32-bit
 * count) in one open-addressed allocation per block (linear probing), used
 * to 3/4 at most and rebuilt with twice as many slots as pointers when full
 * (four times while under 32): 16 to 24 bytes a pointer from 100 pointers
 * a block on, no allocation per pointer.
 *
 * A close is matched by the block that contains the address, then by the
 * exact offset: a close of any address inside a block nvipcfix holds
 * releases one reference of that block (charged to one of its pointers), so
 * it never reaches the driver while nvipcfix still counts references.
 *
 * Locking: a read-write lock. Taken shared: opens of a known or a new
 * pointer of an open block (a new offset takes an empty slot with a
 * compare-and-swap), and closes that are not the block's last; counts
 * change atomically, so threads using the same block do not serialise.
 * Taken exclusively: adding or removing a block, rebuilding a block's slot
 * array (grown, or its closed pointers dropped), and closes that are a
 * block's last or that no open pointer matches. */
#ifndef NVIPCFIX_IMPORT_TABLE_H
#define NVIPCFIX_IMPORT_TABLE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "handle_tag.h"

/* Closed pointers a block keeps for quick re-opens (a 12-byte slot each). */
#define NVIPCFIX_IMPORT_IDLE_MAX 64

struct nvipcfix_import_block;
struct nvipcfix_import_range;

struct nvipcfix_import_table {
    pthread_rwlock_t lock;
    struct nvipcfix_import_block **buckets; /* by (context, handle), chained */
    size_t nbuckets;                        /* a power of two, or 0 */
    struct nvipcfix_import_range *ranges;   /* by base address, sorted */
    size_t nblocks, ranges_cap;
    _Atomic size_t nptrs; /* pointer slots in use, open or kept closed */
    size_t stale;   /* blocks dropped because a new one overlapped them */
};

enum nvipcfix_import_result {
    NVIPCFIX_IMPORT_HIT,        /* *ptr set, one more reference taken */
    NVIPCFIX_IMPORT_MISS,       /* no such block open */
    NVIPCFIX_IMPORT_BAD_OFFSET, /* offset not inside the block: nothing taken */
    NVIPCFIX_IMPORT_NOMEM,      /* out of memory, or 2^32-1 opens of one pointer not
                                 * closed: nothing taken */
};

enum nvipcfix_release_result {
    NVIPCFIX_RELEASE_NOT_OURS,      /* not inside any block nvipcfix holds */
    NVIPCFIX_RELEASE_DONE,          /* one reference dropped, others remain */
    NVIPCFIX_RELEASE_WOULD_BE_LAST, /* last reference, not dropped (allow_last 0) */
    NVIPCFIX_RELEASE_LAST,          /* last reference dropped, block removed */
};

/* Where a block came from, so its last close undoes the right thing. */
enum nvipcfix_import_origin {
    NVIPCFIX_ORIGIN_DRIVER = 0, /* the driver's IPC open: closed in the driver */
    NVIPCFIX_ORIGIN_SELF = 1,   /* this process's own export: nothing to close */
    NVIPCFIX_ORIGIN_VMM = 2,    /* VMM chunks nvipcfix mapped: unmapped, range freed */
};

/* What a caller needs to close a block for real. */
struct nvipcfix_released_block {
    uint64_t base, size;
    int origin; /* enum nvipcfix_import_origin */
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
 * offset 0 only; origin: enum nvipcfix_import_origin) with one reference, and sets *ptr to base + offset. If the
 * block is already there, takes a reference of that one instead and sets
 * *existed, so the caller can undo its own open. A block already recorded
 * whose range overlaps the new one was unmapped behind nvipcfix's back (the
 * driver reuses addresses only after that): it is dropped, and counted in
 * t->stale. */
enum nvipcfix_import_result
nvipcfix_import_insert(struct nvipcfix_import_table *t, const void *ctx,
                       const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t base,
                       uint64_t size, int origin, uint64_t offset, uint64_t *ptr, int *existed);

/* Drops one reference of the block that contains addr (a pointer nvipcfix
 * returned, or any address inside such a block). Unless allow_last, the
 * block's last reference is left alone (WOULD_BE_LAST), so the caller can
 * take the slow path that closes in the driver. */
enum nvipcfix_release_result
nvipcfix_import_release(struct nvipcfix_import_table *t, uint64_t addr, int allow_last,
                        struct nvipcfix_released_block *out);

size_t nvipcfix_import_blocks(struct nvipcfix_import_table *t);
size_t nvipcfix_import_pointers(struct nvipcfix_import_table *t);

/* Blocks still mapped (opened from another process, not yet closed for
 * the last time) and their total size, for the report at exit. */
void nvipcfix_import_usage(struct nvipcfix_import_table *t, size_t *blocks, uint64_t *bytes);

/* Reference count of the block that contains addr (0 if none). */
uint64_t nvipcfix_import_refs(struct nvipcfix_import_table *t, uint64_t addr);

/* Reference count of the pointer addr itself, as nvipcfix returned it (0 if
 * it has none, or is not a pointer nvipcfix returned). */
uint64_t nvipcfix_import_pointer_refs(struct nvipcfix_import_table *t, uint64_t addr);

/* In a child after fork(): an empty table with a fresh lock. The parent's
 * entries are left behind, not freed (another thread may have been changing
 * them when fork() copied the memory). Takes no lock. */
void nvipcfix_import_table_forget(struct nvipcfix_import_table *t);

#endif
