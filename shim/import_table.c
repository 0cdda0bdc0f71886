#include "import_table.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "table_hash.h" /* before uthash.h */
#include <uthash.h>

struct import_key {
    const void *ctx;
    unsigned char handle[NVIPCFIX_HANDLE_BYTES];
};

struct nvipcfix_import_block {
    struct import_key key;
    uint64_t base;
    uint64_t size;
    atomic_uint_fast64_t refs; /* sum of its pointers' counts */
    atomic_long idle;          /* its pointers whose count is zero */
    int origin; /* enum nvipcfix_import_origin */
    struct nvipcfix_import_ptr *ptrs; /* the pointers returned into it */
    UT_hash_handle hh;
};

struct nvipcfix_import_ptr {
    uint64_t ptr;
    atomic_uint_fast64_t refs; /* opens through this pointer not yet closed */
    struct nvipcfix_import_block *block;
    struct nvipcfix_import_ptr *prev_in_block, *next_in_block;
    UT_hash_handle hh;
};

void nvipcfix_import_table_init(struct nvipcfix_import_table *t)
{
    memset(t, 0, sizeof *t);
    pthread_rwlock_init(&t->lock, NULL);
}

/* The end of a block's range; a block of unknown size covers its base. */
static uint64_t end_of(const struct nvipcfix_import_block *b)
{
    return b->base + (b->size != 0 ? b->size : 1);
}

/* Index of the first block in ranges whose base is above addr. */
static size_t upper_bound(const struct nvipcfix_import_table *t, uint64_t addr)
{
    size_t lo = 0, hi = t->nblocks;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->ranges[mid]->base <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct nvipcfix_import_block *find_range(const struct nvipcfix_import_table *t,
                                                uint64_t addr)
{
    size_t i = upper_bound(t, addr);
    if (i == 0)
        return NULL;
    struct nvipcfix_import_block *b = t->ranges[i - 1];
    return addr < end_of(b) ? b : NULL;
}

/* Caller holds the lock exclusively. */
static void free_ptr(struct nvipcfix_import_table *t, struct nvipcfix_import_ptr *p)
{
    struct nvipcfix_import_block *b = p->block;
    if (p->prev_in_block != NULL)
        p->prev_in_block->next_in_block = p->next_in_block;
    else
        b->ptrs = p->next_in_block;
    if (p->next_in_block != NULL)
        p->next_in_block->prev_in_block = p->prev_in_block;
    HASH_DEL(t->ptrs, p);
    free(p);
    t->nptrs--;
}

/* Caller holds the lock exclusively. Frees closed pointers of b beyond the
 * NVIPCFIX_IMPORT_IDLE_MAX most recently added ones. */
static void trim_idle(struct nvipcfix_import_table *t, struct nvipcfix_import_block *b)
{
    long keep = NVIPCFIX_IMPORT_IDLE_MAX;
    struct nvipcfix_import_ptr *p = b->ptrs, *next;
    for (; p != NULL && atomic_load(&b->idle) > NVIPCFIX_IMPORT_IDLE_MAX; p = next) {
        next = p->next_in_block;
        if (atomic_load(&p->refs) != 0)
            continue;
        if (keep > 0) {
            keep--;
            continue;
        }
        free_ptr(t, p);
        atomic_fetch_sub(&b->idle, 1);
    }
}

/* Caller holds the lock exclusively. */
static void remove_block(struct nvipcfix_import_table *t, struct nvipcfix_import_block *b)
{
    while (b->ptrs != NULL)
        free_ptr(t, b->ptrs);
    size_t i = upper_bound(t, b->base);
    while (i > 0 && t->ranges[i - 1] != b) /* blocks of one base: at most a few */
        i--;
    if (i > 0) {
        memmove(&t->ranges[i - 1], &t->ranges[i], (t->nblocks - i) * sizeof t->ranges[0]);
    }
    HASH_DEL(t->blocks, b);
    free(b);
    t->nblocks--;
}

void nvipcfix_import_table_destroy(struct nvipcfix_import_table *t)
{
    struct nvipcfix_import_block *b, *tmp;
    pthread_rwlock_wrlock(&t->lock);
    HASH_ITER(hh, t->blocks, b, tmp)
        remove_block(t, b);
    free(t->ranges);
    t->ranges = NULL;
    pthread_rwlock_unlock(&t->lock);
    pthread_rwlock_destroy(&t->lock);
}

/* A child's copy of its parent's table, left behind by forget() but still
 * reachable, so that leak checkers do not report it. */
static void *volatile left_behind[3];

void nvipcfix_import_table_forget(struct nvipcfix_import_table *t)
{
    left_behind[0] = t->blocks;
    left_behind[1] = t->ptrs;
    left_behind[2] = t->ranges;
    memset(t, 0, sizeof *t);
    pthread_rwlock_init(&t->lock, NULL);
}

struct lookup {
    struct import_key key;
    unsigned hash; /* computed before the lock is taken */
};

static void make_key(struct lookup *l, const void *ctx,
                     const unsigned char handle[NVIPCFIX_HANDLE_BYTES])
{
    memset(&l->key, 0, sizeof l->key);
    l->key.ctx = ctx;
    memcpy(l->key.handle, handle, NVIPCFIX_HANDLE_BYTES);
    HASH_VALUE(&l->key, sizeof l->key, l->hash);
}

static struct nvipcfix_import_block *find_block(struct nvipcfix_import_table *t,
                                                const struct lookup *l)
{
    struct nvipcfix_import_block *b;
    HASH_FIND_BYHASHVALUE(hh, t->blocks, &l->key, sizeof l->key, l->hash, b);
    return b;
}

static struct nvipcfix_import_ptr *find_ptr(struct nvipcfix_import_table *t, uint64_t addr)
{
    struct nvipcfix_import_ptr *p;
    HASH_FIND(hh, t->ptrs, &addr, sizeof addr, p);
    return p;
}

/* Caller holds the lock exclusively. Takes one reference of b through
 * base + offset, recording the pointer with spare (set to NULL if used). */
static enum nvipcfix_import_result take(struct nvipcfix_import_table *t,
                                        struct nvipcfix_import_block *b, uint64_t offset,
                                        struct nvipcfix_import_ptr **spare, uint64_t *ptr)
{
    if (offset != 0 && offset >= b->size)
        return NVIPCFIX_IMPORT_BAD_OFFSET;
    uint64_t addr = b->base + offset;
    struct nvipcfix_import_ptr *p = find_ptr(t, addr);
    if (p != NULL) {
        if (atomic_fetch_add(&p->refs, 1) == 0) /* a closed pointer, kept */
            atomic_fetch_sub(&b->idle, 1);
    } else {
        p = *spare;
        if (p == NULL)
            return NVIPCFIX_IMPORT_NOMEM;
        *spare = NULL;
        memset(p, 0, sizeof *p);
        p->ptr = addr;
        p->refs = 1;
        p->block = b;
        p->next_in_block = b->ptrs;
        if (b->ptrs != NULL)
            b->ptrs->prev_in_block = p;
        b->ptrs = p;
        HASH_ADD(hh, t->ptrs, ptr, sizeof p->ptr, p);
        t->nptrs++;
        trim_idle(t, b);
    }
    atomic_fetch_add(&b->refs, 1);
    *ptr = addr;
    return NVIPCFIX_IMPORT_HIT;
}

enum nvipcfix_import_result
nvipcfix_import_acquire(struct nvipcfix_import_table *t, const void *ctx,
                        const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t offset,
                        uint64_t *ptr)
{
    struct lookup l;
    struct nvipcfix_import_block *b;
    enum nvipcfix_import_result r = NVIPCFIX_IMPORT_MISS;
    make_key(&l, ctx, handle);

    /* Fast path, shared: the block and the pointer are both known. */
    int new_pointer = 0;
    pthread_rwlock_rdlock(&t->lock);
    b = find_block(t, &l);
    if (b != NULL) {
        struct nvipcfix_import_ptr *p;
        if (offset != 0 && offset >= b->size) {
            r = NVIPCFIX_IMPORT_BAD_OFFSET;
        } else if ((p = find_ptr(t, b->base + offset)) != NULL && p->block == b) {
            if (atomic_fetch_add(&p->refs, 1) == 0) /* a closed pointer, kept */
                atomic_fetch_sub(&b->idle, 1);
            atomic_fetch_add(&b->refs, 1);
            *ptr = p->ptr;
            r = NVIPCFIX_IMPORT_HIT;
        } else {
            new_pointer = 1;
        }
    }
    pthread_rwlock_unlock(&t->lock);
    if (!new_pointer)
        return r;

    /* A new pointer into an open block: exclusive. The block may have been
     * closed meanwhile; then it is a miss. */
    struct nvipcfix_import_ptr *spare = malloc(sizeof *spare);
    pthread_rwlock_wrlock(&t->lock);
    b = find_block(t, &l);
    r = b != NULL ? take(t, b, offset, &spare, ptr) : NVIPCFIX_IMPORT_MISS;
    pthread_rwlock_unlock(&t->lock);
    free(spare);
    return r;
}

/* Caller holds the lock exclusively. Drops every block overlapping
 * [base, end), then puts b in the sorted range index (room reserved). */
static void index_block(struct nvipcfix_import_table *t, struct nvipcfix_import_block *b)
{
    for (;;) {
        size_t i = upper_bound(t, end_of(b) - 1);
        if (i == 0 || end_of(t->ranges[i - 1]) <= b->base)
            break;
        remove_block(t, t->ranges[i - 1]);
        t->stale++;
    }
    size_t i = upper_bound(t, b->base);
    memmove(&t->ranges[i + 1], &t->ranges[i], (t->nblocks - i) * sizeof t->ranges[0]);
    t->ranges[i] = b;
}

/* Caller holds the lock exclusively: room for one more block in ranges. */
static int reserve_range(struct nvipcfix_import_table *t)
{
    if (t->nblocks < t->ranges_cap)
        return 0;
    size_t cap = t->ranges_cap ? 2 * t->ranges_cap : 64;
    struct nvipcfix_import_block **n = realloc(t->ranges, cap * sizeof *n);
    if (n == NULL)
        return -1;
    t->ranges = n;
    t->ranges_cap = cap;
    return 0;
}

enum nvipcfix_import_result
nvipcfix_import_insert(struct nvipcfix_import_table *t, const void *ctx,
                       const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t base,
                       uint64_t size, int origin, uint64_t offset, uint64_t *ptr, int *existed)
{
    struct lookup l;
    struct nvipcfix_import_block *b, *fresh;
    struct nvipcfix_import_ptr *spare;
    enum nvipcfix_import_result r;
    make_key(&l, ctx, handle);
    *existed = 0;
    if (offset != 0 && offset >= size)
        return NVIPCFIX_IMPORT_BAD_OFFSET;
    fresh = calloc(1, sizeof *fresh);
    spare = malloc(sizeof *spare);
    if (fresh == NULL || spare == NULL) {
        free(fresh);
        free(spare);
        return NVIPCFIX_IMPORT_NOMEM;
    }
    fresh->key = l.key;
    fresh->base = base;
    fresh->size = size;
    fresh->origin = origin;

    pthread_rwlock_wrlock(&t->lock);
    b = find_block(t, &l);
    if (b != NULL) {
        *existed = 1;
        r = take(t, b, offset, &spare, ptr);
    } else if (reserve_range(t) != 0) {
        r = NVIPCFIX_IMPORT_NOMEM;
    } else {
        index_block(t, fresh);
        HASH_ADD_BYHASHVALUE(hh, t->blocks, key, sizeof fresh->key, l.hash, fresh);
        t->nblocks++;
        r = take(t, fresh, offset, &spare, ptr); /* offset checked above */
        fresh = NULL;
    }
    pthread_rwlock_unlock(&t->lock);
    free(fresh);
    free(spare);
    return r;
}

/* Caller holds the lock shared. Drops one reference through p unless it
 * would be its block's last; returns 1 if it did. A reference through p
 * must exist (count above zero); a count that reaches zero keeps the entry
 * (idle), for a quick re-open. */
static int release_shared(struct nvipcfix_import_ptr *p)
{
    struct nvipcfix_import_block *b = p->block;
    uint_fast64_t k = atomic_load(&p->refs);
    do {
        if (k == 0)
            return 0; /* closed more often than opened: the exclusive path decides */
    } while (!atomic_compare_exchange_weak(&p->refs, &k, k - 1));
    if (k == 1)
        atomic_fetch_add(&b->idle, 1);
    uint_fast64_t m = atomic_load(&b->refs);
    do {
        if (m <= 1) { /* the block's last: undo, for the exclusive path */
            if (atomic_fetch_add(&p->refs, 1) == 0)
                atomic_fetch_sub(&b->idle, 1);
            return 0;
        }
    } while (!atomic_compare_exchange_weak(&b->refs, &m, m - 1));
    return 1;
}

enum nvipcfix_release_result
nvipcfix_import_release(struct nvipcfix_import_table *t, uint64_t addr, int allow_last,
                        struct nvipcfix_released_block *out)
{
    struct nvipcfix_import_ptr *p;
    struct nvipcfix_import_block *b;
    enum nvipcfix_release_result r;
    if (!allow_last) {
        /* Shared: a returned pointer's reference, not the block's last. */
        pthread_rwlock_rdlock(&t->lock);
        p = find_ptr(t, addr);
        b = p != NULL ? p->block : find_range(t, addr);
        r = b == NULL                          ? NVIPCFIX_RELEASE_NOT_OURS
            : p != NULL && release_shared(p) ? NVIPCFIX_RELEASE_DONE
                                               : NVIPCFIX_RELEASE_WOULD_BE_LAST;
        pthread_rwlock_unlock(&t->lock);
        if (r != NVIPCFIX_RELEASE_WOULD_BE_LAST)
            return r;
    }
    /* Exclusive: no shared operation runs; a block's count reaches zero,
     * and entries are freed, only here. */
    pthread_rwlock_wrlock(&t->lock);
    p = find_ptr(t, addr);
    b = p != NULL ? p->block : find_range(t, addr);
    if (b == NULL) {
        r = NVIPCFIX_RELEASE_NOT_OURS;
    } else if (!allow_last && atomic_load(&b->refs) == 1) {
        r = NVIPCFIX_RELEASE_WOULD_BE_LAST;
    } else {
        /* An address nvipcfix did not return, or a pointer closed more often
         * than opened: one reference of the block, charged to a pointer that
         * has one. */
        if (p == NULL || atomic_load(&p->refs) == 0)
            for (p = b->ptrs; p != NULL && atomic_load(&p->refs) == 0; p = p->next_in_block)
                ;
        if (p == NULL) { /* cannot be: a block's count is its pointers' sum */
            pthread_rwlock_unlock(&t->lock);
            return NVIPCFIX_RELEASE_NOT_OURS;
        }
        if (atomic_fetch_sub(&p->refs, 1) == 1)
            atomic_fetch_add(&b->idle, 1);
        if (atomic_fetch_sub(&b->refs, 1) == 1) {
            out->base = b->base;
            out->size = b->size;
            out->origin = b->origin;
            remove_block(t, b);
            r = NVIPCFIX_RELEASE_LAST;
        } else {
            trim_idle(t, b);
            r = NVIPCFIX_RELEASE_DONE;
        }
    }
    pthread_rwlock_unlock(&t->lock);
    return r;
}

size_t nvipcfix_import_blocks(struct nvipcfix_import_table *t)
{
    pthread_rwlock_rdlock(&t->lock);
    size_t n = t->nblocks;
    pthread_rwlock_unlock(&t->lock);
    return n;
}

size_t nvipcfix_import_pointers(struct nvipcfix_import_table *t)
{
    pthread_rwlock_rdlock(&t->lock);
    size_t n = t->nptrs;
    pthread_rwlock_unlock(&t->lock);
    return n;
}

void nvipcfix_import_usage(struct nvipcfix_import_table *t, size_t *blocks, uint64_t *bytes)
{
    struct nvipcfix_import_block *b, *tmp;
    *blocks = 0;
    *bytes = 0;
    pthread_rwlock_rdlock(&t->lock);
    HASH_ITER(hh, t->blocks, b, tmp) {
        if (b->origin != NVIPCFIX_ORIGIN_SELF) { /* mappings; the exporter's own blocks are not */
            (*blocks)++;
            *bytes += b->size;
        }
    }
    pthread_rwlock_unlock(&t->lock);
}

uint64_t nvipcfix_import_refs(struct nvipcfix_import_table *t, uint64_t addr)
{
    struct nvipcfix_import_ptr *p;
    struct nvipcfix_import_block *b;
    uint64_t refs = 0;
    pthread_rwlock_rdlock(&t->lock);
    p = find_ptr(t, addr);
    b = p != NULL ? p->block : find_range(t, addr);
    if (b != NULL)
        refs = atomic_load(&b->refs);
    pthread_rwlock_unlock(&t->lock);
    return refs;
}
