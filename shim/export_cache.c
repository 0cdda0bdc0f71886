#include "export_cache.h"

#include <stdlib.h>
#include <string.h>
#include "table_hash.h" /* before uthash.h */
#include <uthash.h>

struct nvipcfix_export_entry {
    struct nvipcfix_export_block block;
    UT_hash_handle hh_base;
    UT_hash_handle hh_handle;
};

void nvipcfix_export_cache_init(struct nvipcfix_export_cache *c, nvipcfix_export_live_fn live,
                                void *live_arg)
{
    memset(c, 0, sizeof *c);
    pthread_rwlock_init(&c->lock, NULL);
    c->sweep_at = NVIPCFIX_EXPORT_CACHE_MAX;
    c->live = live;
    c->live_arg = live_arg;
}

/* A child's copy of its parent's cache, left behind by forget() but still
 * reachable, so that leak checkers do not report it. */
static void *volatile left_behind;

void nvipcfix_export_cache_forget(struct nvipcfix_export_cache *c)
{
    left_behind = c->by_base;
    nvipcfix_export_cache_init(c, c->live, c->live_arg);
}

/* Caller holds the write lock. */
static void remove_entry(struct nvipcfix_export_cache *c, struct nvipcfix_export_entry *e)
{
    HASH_DELETE(hh_base, c->by_base, e);
    HASH_DELETE(hh_handle, c->by_handle, e);
    free(e);
    c->count--;
}

static void clear(struct nvipcfix_export_cache *c)
{
    struct nvipcfix_export_entry *e, *tmp;
    HASH_ITER(hh_base, c->by_base, e, tmp)
        remove_entry(c, e);
}

/* Caller holds the write lock. Drops the entries of blocks that are gone
 * (without a liveness check: the older half, in insertion order). */
static void sweep(struct nvipcfix_export_cache *c)
{
    struct nvipcfix_export_entry *e, *tmp;
    size_t old_half = c->count / 2;
    HASH_ITER(hh_base, c->by_base, e, tmp) {
        if (c->live != NULL ? !c->live(c->live_arg, e->block.base, e->block.buffer_id)
                            : old_half-- > 0)
            remove_entry(c, e);
    }
    c->sweep_at = 2 * c->count > NVIPCFIX_EXPORT_CACHE_MAX ? 2 * c->count
                                                           : NVIPCFIX_EXPORT_CACHE_MAX;
}

void nvipcfix_export_cache_destroy(struct nvipcfix_export_cache *c)
{
    pthread_rwlock_wrlock(&c->lock);
    clear(c);
    pthread_rwlock_unlock(&c->lock);
    pthread_rwlock_destroy(&c->lock);
}

int nvipcfix_export_cache_get(struct nvipcfix_export_cache *c, uint64_t base,
                              uint64_t buffer_id, unsigned char handle[NVIPCFIX_HANDLE_BYTES])
{
    struct nvipcfix_export_entry *e;
    int hit = 0;
    pthread_rwlock_rdlock(&c->lock);
    HASH_FIND(hh_base, c->by_base, &base, sizeof base, e);
    if (e != NULL && e->block.buffer_id == buffer_id) {
        memcpy(handle, e->block.handle, NVIPCFIX_HANDLE_BYTES);
        hit = 1;
    }
    pthread_rwlock_unlock(&c->lock);
    return hit;
}

int nvipcfix_export_cache_put(struct nvipcfix_export_cache *c,
                              const struct nvipcfix_export_block *block)
{
    struct nvipcfix_export_entry *n = malloc(sizeof *n), *old;
    if (n == NULL)
        return -1;
    memset(n, 0, sizeof *n);
    n->block = *block;

    pthread_rwlock_wrlock(&c->lock);
    HASH_FIND(hh_base, c->by_base, &block->base, sizeof block->base, old);
    if (old != NULL)
        remove_entry(c, old);
    HASH_FIND(hh_handle, c->by_handle, block->handle, NVIPCFIX_HANDLE_BYTES, old);
    if (old != NULL)
        remove_entry(c, old);
    if (c->count >= c->sweep_at)
        sweep(c);
    HASH_ADD(hh_base, c->by_base, block.base, sizeof n->block.base, n);
    HASH_ADD(hh_handle, c->by_handle, block.handle, NVIPCFIX_HANDLE_BYTES, n);
    c->count++;
    pthread_rwlock_unlock(&c->lock);
    return 0;
}

int nvipcfix_export_cache_find_handle(struct nvipcfix_export_cache *c,
                                      const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                      struct nvipcfix_export_block *out)
{
    struct nvipcfix_export_entry *e;
    pthread_rwlock_rdlock(&c->lock);
    HASH_FIND(hh_handle, c->by_handle, handle, NVIPCFIX_HANDLE_BYTES, e);
    if (e != NULL)
        *out = e->block;
    pthread_rwlock_unlock(&c->lock);
    return e != NULL;
}

size_t nvipcfix_export_cache_count(struct nvipcfix_export_cache *c)
{
    pthread_rwlock_rdlock(&c->lock);
    size_t n = c->count;
    pthread_rwlock_unlock(&c->lock);
    return n;
}
