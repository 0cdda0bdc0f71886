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
    atomic_uint_fast64_t refs; /* changed under the shared lock too */
    int self;
    struct nvipcfix_import_ptr *ptrs; /* the pointers returned into it */
    UT_hash_handle hh;
};

struct nvipcfix_import_ptr {
    uint64_t ptr;
    struct nvipcfix_import_block *block;
    struct nvipcfix_import_ptr *next_in_block;
    UT_hash_handle hh;
};

void nvipcfix_import_table_init(struct nvipcfix_import_table *t)
{
    memset(t, 0, sizeof *t);
    pthread_rwlock_init(&t->lock, NULL);
}

/* Caller holds the lock exclusively. */
static void remove_block(struct nvipcfix_import_table *t, struct nvipcfix_import_block *b)
{
    struct nvipcfix_import_ptr *p = b->ptrs, *next;
    for (; p != NULL; p = next) {
        next = p->next_in_block;
        HASH_DEL(t->ptrs, p);
        free(p);
        t->nptrs--;
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
    pthread_rwlock_unlock(&t->lock);
    pthread_rwlock_destroy(&t->lock);
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
    if (find_ptr(t, addr) == NULL) {
        struct nvipcfix_import_ptr *p = *spare;
        if (p == NULL)
            return NVIPCFIX_IMPORT_NOMEM;
        *spare = NULL;
        memset(p, 0, sizeof *p);
        p->ptr = addr;
        p->block = b;
        p->next_in_block = b->ptrs;
        b->ptrs = p;
        HASH_ADD(hh, t->ptrs, ptr, sizeof p->ptr, p);
        t->nptrs++;
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
        if (offset != 0 && offset >= b->size) {
            r = NVIPCFIX_IMPORT_BAD_OFFSET;
        } else if (find_ptr(t, b->base + offset) != NULL) {
            atomic_fetch_add(&b->refs, 1);
            *ptr = b->base + offset;
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

enum nvipcfix_import_result
nvipcfix_import_insert(struct nvipcfix_import_table *t, const void *ctx,
                       const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t base,
                       uint64_t size, int self, uint64_t offset, uint64_t *ptr, int *existed)
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
    fresh->self = self;

    pthread_rwlock_wrlock(&t->lock);
    b = find_block(t, &l);
    if (b != NULL) {
        *existed = 1;
        r = take(t, b, offset, &spare, ptr);
    } else {
        HASH_ADD_BYHASHVALUE(hh, t->blocks, key, sizeof fresh->key, l.hash, fresh);
        t->nblocks++;
        r = take(t, fresh, offset, &spare, ptr);
        fresh = NULL;
    }
    pthread_rwlock_unlock(&t->lock);
    free(fresh);
    free(spare);
    return r;
}

enum nvipcfix_release_result
nvipcfix_import_release(struct nvipcfix_import_table *t, uint64_t ptr, int allow_last,
                        struct nvipcfix_released_block *out)
{
    struct nvipcfix_import_ptr *p;
    enum nvipcfix_release_result r;
    if (!allow_last) {
        /* Shared: drop a reference unless it is the last one. */
        pthread_rwlock_rdlock(&t->lock);
        p = find_ptr(t, ptr);
        r = NVIPCFIX_RELEASE_NOT_OURS;
        if (p != NULL) {
            uint_fast64_t refs = atomic_load(&p->block->refs);
            r = NVIPCFIX_RELEASE_WOULD_BE_LAST;
            while (refs > 1)
                if (atomic_compare_exchange_weak(&p->block->refs, &refs, refs - 1)) {
                    r = NVIPCFIX_RELEASE_DONE;
                    break;
                }
        }
        pthread_rwlock_unlock(&t->lock);
        return r;
    }
    /* Exclusive: a count can reach zero only here. */
    pthread_rwlock_wrlock(&t->lock);
    p = find_ptr(t, ptr);
    if (p == NULL) {
        r = NVIPCFIX_RELEASE_NOT_OURS;
    } else if (atomic_fetch_sub(&p->block->refs, 1) == 1) {
        out->base = p->block->base;
        out->self = p->block->self;
        remove_block(t, p->block);
        r = NVIPCFIX_RELEASE_LAST;
    } else {
        r = NVIPCFIX_RELEASE_DONE;
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

uint64_t nvipcfix_import_refs(struct nvipcfix_import_table *t, uint64_t ptr)
{
    struct nvipcfix_import_ptr *p;
    uint64_t refs = 0;
    pthread_rwlock_rdlock(&t->lock);
    p = find_ptr(t, ptr);
    if (p != NULL)
        refs = atomic_load(&p->block->refs);
    pthread_rwlock_unlock(&t->lock);
    return refs;
}

void nvipcfix_import_table_lock(struct nvipcfix_import_table *t)
{
    pthread_rwlock_wrlock(&t->lock);
}

void nvipcfix_import_table_unlock(struct nvipcfix_import_table *t)
{
    pthread_rwlock_unlock(&t->lock);
}

void nvipcfix_import_table_reset_lock(struct nvipcfix_import_table *t)
{
    pthread_rwlock_init(&t->lock, NULL);
}
