#include "export_cache.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "table_hash.h" /* before uthash.h */
#include <uthash.h>

#define KEY_WORDS NVIPCFIX_EXPORT_KEY_WORDS

static void handle_words(const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                         uint64_t w[KEY_WORDS])
{
    memcpy(w, handle, NVIPCFIX_HANDLE_BYTES);
}

static void slot_write(struct nvipcfix_export_slot *s, const uint64_t w[KEY_WORDS],
                       uint64_t base, uint64_t size, uint64_t check)
{
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
    atomic_store_explicit(&s->seq, seq + 1, memory_order_relaxed);
    for (int i = 0; i < KEY_WORDS; i++)
        atomic_store_explicit(&s->key[i], w[i], memory_order_release);
    atomic_store_explicit(&s->base, base, memory_order_release);
    atomic_store_explicit(&s->size, size, memory_order_release);
    atomic_store_explicit(&s->check, check, memory_order_release);
    atomic_store_explicit(&s->seq, seq + 2, memory_order_release);
}

/* Records handle -> (base, size) in the fast table: in the slot that holds
 * the handle already, else in a free slot of its bucket, else in place of
 * one of them (round robin). Allocates the table on first use; nothing is
 * recorded if that fails (lookups then fall back to the complete record). */
static void fast_put(struct nvipcfix_export_cache *c,
                     const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t base,
                     uint64_t size)
{
    uint64_t w[KEY_WORDS];
    if (size == 0)
        return; /* never happens (the driver's blocks have a size); 0 marks a free slot */
    handle_words(handle, w);
    uint64_t check = nvipcfix_tag_check_head(handle);
    pthread_mutex_lock(&c->fast_write);
    struct nvipcfix_export_slot *t = atomic_load_explicit(&c->fast, memory_order_relaxed);
    if (t == NULL) {
        t = calloc(NVIPCFIX_EXPORT_FAST_SLOTS, sizeof *t);
        if (t == NULL) {
            pthread_mutex_unlock(&c->fast_write);
            return;
        }
        atomic_store_explicit(&c->fast, t, memory_order_release);
    }
    struct nvipcfix_export_slot *b = &t[nvipcfix_export_bucket(w)], *victim = NULL;
    for (int way = 0; way < NVIPCFIX_EXPORT_FAST_WAYS && victim == NULL; way++) {
        struct nvipcfix_export_slot *s = &b[way];
        uint64_t diff = 0;
        for (int i = 0; i < KEY_WORDS; i++)
            diff |= atomic_load_explicit(&s->key[i], memory_order_relaxed) ^ w[i];
        if (diff == 0 || atomic_load_explicit(&s->size, memory_order_relaxed) == 0)
            victim = s;
    }
    if (victim == NULL)
        victim = &b[c->fast_victim++ % NVIPCFIX_EXPORT_FAST_WAYS];
    slot_write(victim, w, base, size, check);
    pthread_mutex_unlock(&c->fast_write);
}

struct nvipcfix_export_entry {
    struct nvipcfix_export_block block;
    UT_hash_handle hh_base;
    UT_hash_handle hh_handle;
};

void nvipcfix_export_cache_init(struct nvipcfix_export_cache *c, nvipcfix_export_live_fn live,
                                void *live_arg)
{
    memset(c, 0, sizeof *c);
    atomic_init(&c->fast, NULL);
    pthread_mutex_init(&c->fast_write, NULL);
    pthread_rwlock_init(&c->lock, NULL);
    c->sweep_at = NVIPCFIX_EXPORT_CACHE_MAX;
    c->live = live;
    c->live_arg = live_arg;
}

/* A child's copy of its parent's cache, left behind by forget() but still
 * reachable, so that leak checkers do not report it. */
static void *volatile left_behind, *volatile fast_left_behind;

void nvipcfix_export_cache_forget(struct nvipcfix_export_cache *c)
{
    left_behind = c->by_base;
    fast_left_behind = atomic_load_explicit(&c->fast, memory_order_relaxed);
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
    free(atomic_load_explicit(&c->fast, memory_order_relaxed));
    atomic_store_explicit(&c->fast, NULL, memory_order_relaxed);
    pthread_mutex_destroy(&c->fast_write);
}

int nvipcfix_export_cache_base_of(struct nvipcfix_export_cache *c,
                                  const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                  uint64_t *base, uint64_t *size, uint64_t *check)
{
    if (atomic_load_explicit(&c->fast, memory_order_acquire) == NULL)
        return 0; /* nothing recorded yet */
    if (nvipcfix_export_cache_fast_find(c, handle, base, size, check))
        return 1;
    struct nvipcfix_export_block found;
    if (!nvipcfix_export_cache_find_handle(c, handle, &found))
        return 0;
    fast_put(c, handle, found.base, found.size);
    *base = found.base;
    *size = found.size;
    *check = nvipcfix_tag_check_head(handle);
    return 1;
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
    fast_put(c, block->handle, block->base, block->size);
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
