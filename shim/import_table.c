#include "import_table.h"

#include <stdlib.h>
#include <string.h>
#include <uthash.h>

struct import_key {
    const void *ctx;
    unsigned char handle[NVIPCFIX_HANDLE_BYTES];
};

struct nvipcfix_import_block {
    struct import_key key;
    uint64_t base;
    uint64_t size;
    uint64_t refs;
    int self;
    UT_hash_handle hh;
};

struct nvipcfix_import_ptr {
    uint64_t ptr;
    uint64_t count; /* opens that returned this pointer and are not closed */
    struct nvipcfix_import_block *block;
    UT_hash_handle hh;
};

void nvipcfix_import_table_init(struct nvipcfix_import_table *t)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->lock, NULL);
}

void nvipcfix_import_table_destroy(struct nvipcfix_import_table *t)
{
    struct nvipcfix_import_ptr *p, *ptmp;
    struct nvipcfix_import_block *b, *btmp;
    pthread_mutex_lock(&t->lock);
    HASH_ITER(hh, t->ptrs, p, ptmp) {
        HASH_DEL(t->ptrs, p);
        free(p);
    }
    HASH_ITER(hh, t->blocks, b, btmp) {
        HASH_DEL(t->blocks, b);
        free(b);
    }
    t->nblocks = t->nptrs = 0;
    pthread_mutex_unlock(&t->lock);
    pthread_mutex_destroy(&t->lock);
}

static void make_key(struct import_key *k, const void *ctx,
                     const unsigned char handle[NVIPCFIX_HANDLE_BYTES])
{
    memset(k, 0, sizeof *k);
    k->ctx = ctx;
    memcpy(k->handle, handle, NVIPCFIX_HANDLE_BYTES);
}

/* Caller holds the lock. Takes one reference of b through base + offset. */
static enum nvipcfix_import_result take(struct nvipcfix_import_table *t,
                                        struct nvipcfix_import_block *b, uint64_t offset,
                                        uint64_t *ptr)
{
    if (offset != 0 && offset >= b->size)
        return NVIPCFIX_IMPORT_BAD_OFFSET;
    uint64_t addr = b->base + offset;
    struct nvipcfix_import_ptr *p;
    HASH_FIND(hh, t->ptrs, &addr, sizeof addr, p);
    if (p == NULL) {
        p = calloc(1, sizeof *p);
        if (p == NULL)
            return NVIPCFIX_IMPORT_NOMEM;
        p->ptr = addr;
        p->block = b;
        HASH_ADD(hh, t->ptrs, ptr, sizeof p->ptr, p);
        t->nptrs++;
    }
    p->count++;
    b->refs++;
    *ptr = addr;
    return NVIPCFIX_IMPORT_HIT;
}

enum nvipcfix_import_result
nvipcfix_import_acquire(struct nvipcfix_import_table *t, const void *ctx,
                        const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t offset,
                        uint64_t *ptr)
{
    struct import_key k;
    struct nvipcfix_import_block *b;
    enum nvipcfix_import_result r = NVIPCFIX_IMPORT_MISS;
    make_key(&k, ctx, handle);
    pthread_mutex_lock(&t->lock);
    HASH_FIND(hh, t->blocks, &k, sizeof k, b);
    if (b != NULL)
        r = take(t, b, offset, ptr);
    pthread_mutex_unlock(&t->lock);
    return r;
}

enum nvipcfix_import_result
nvipcfix_import_insert(struct nvipcfix_import_table *t, const void *ctx,
                       const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t base,
                       uint64_t size, int self, uint64_t offset, uint64_t *ptr, int *existed)
{
    struct import_key k;
    struct nvipcfix_import_block *b;
    enum nvipcfix_import_result r;
    make_key(&k, ctx, handle);
    *existed = 0;
    pthread_mutex_lock(&t->lock);
    HASH_FIND(hh, t->blocks, &k, sizeof k, b);
    if (b != NULL) {
        *existed = 1;
        r = take(t, b, offset, ptr);
        pthread_mutex_unlock(&t->lock);
        return r;
    }
    if (offset != 0 && offset >= size) {
        pthread_mutex_unlock(&t->lock);
        return NVIPCFIX_IMPORT_BAD_OFFSET;
    }
    b = calloc(1, sizeof *b);
    if (b == NULL) {
        pthread_mutex_unlock(&t->lock);
        return NVIPCFIX_IMPORT_NOMEM;
    }
    b->key = k;
    b->base = base;
    b->size = size;
    b->self = self;
    r = take(t, b, offset, ptr);
    if (r != NVIPCFIX_IMPORT_HIT) {
        free(b);
    } else {
        HASH_ADD(hh, t->blocks, key, sizeof b->key, b);
        t->nblocks++;
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}

/* Caller holds the lock. b->refs is 0, the sum of its pointers' counts, so
 * none of its pointers is left in the table. */
static void remove_block(struct nvipcfix_import_table *t, struct nvipcfix_import_block *b)
{
    HASH_DEL(t->blocks, b);
    t->nblocks--;
    free(b);
}

enum nvipcfix_release_result
nvipcfix_import_release(struct nvipcfix_import_table *t, uint64_t ptr, int allow_last,
                        struct nvipcfix_released_block *out)
{
    struct nvipcfix_import_ptr *p;
    enum nvipcfix_release_result r;
    pthread_mutex_lock(&t->lock);
    HASH_FIND(hh, t->ptrs, &ptr, sizeof ptr, p);
    if (p == NULL) {
        r = NVIPCFIX_RELEASE_NOT_OURS;
    } else if (p->block->refs == 1 && !allow_last) {
        r = NVIPCFIX_RELEASE_WOULD_BE_LAST;
    } else {
        struct nvipcfix_import_block *b = p->block;
        if (--p->count == 0) {
            HASH_DEL(t->ptrs, p);
            t->nptrs--;
            free(p);
        }
        if (--b->refs == 0) {
            out->base = b->base;
            out->self = b->self;
            remove_block(t, b);
            r = NVIPCFIX_RELEASE_LAST;
        } else {
            r = NVIPCFIX_RELEASE_DONE;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return r;
}

size_t nvipcfix_import_blocks(struct nvipcfix_import_table *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->nblocks;
    pthread_mutex_unlock(&t->lock);
    return n;
}

size_t nvipcfix_import_pointers(struct nvipcfix_import_table *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->nptrs;
    pthread_mutex_unlock(&t->lock);
    return n;
}

uint64_t nvipcfix_import_refs(struct nvipcfix_import_table *t, uint64_t ptr)
{
    struct nvipcfix_import_ptr *p;
    uint64_t refs = 0;
    pthread_mutex_lock(&t->lock);
    HASH_FIND(hh, t->ptrs, &ptr, sizeof ptr, p);
    if (p != NULL)
        refs = p->block->refs;
    pthread_mutex_unlock(&t->lock);
    return refs;
}

void nvipcfix_import_table_lock(struct nvipcfix_import_table *t)
{
    pthread_mutex_lock(&t->lock);
}

void nvipcfix_import_table_unlock(struct nvipcfix_import_table *t)
{
    pthread_mutex_unlock(&t->lock);
}
