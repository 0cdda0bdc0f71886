#include "export_cache.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "table_hash.h" /* before uthash.h */
#include <uthash.h>

#define KEY_WORDS (NVIPCFIX_HANDLE_BYTES / 8)

/* One slot of the fast table: the handle's bytes as eight words, the block
 * it names. seq is odd while a writer changes the slot; size 0 is a slot
 * never used. Every word is atomic, so readers racing a writer are no data
 * race; the sequence counter tells them. Without fences (ThreadSanitizer
 * does not model them): the writer marks seq odd, then stores each word
 * with release order, so a reader whose acquire load of a word sees a new
 * value also sees seq changed when it reads it again (Boehm, "Can seqlocks
 * get along with programming language memory models?", 2012). On x86
 * acquire loads and release stores are plain moves. */
struct nvipcfix_export_slot {
    atomic_uint_least64_t seq;
    atomic_uint_least64_t key[KEY_WORDS];
    atomic_uint_least64_t base;
    atomic_uint_least64_t size;
    atomic_uint_least64_t check; /* nvipcfix_tag_check_head of the handle */
};

static void handle_words(const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                         uint64_t w[KEY_WORDS])
{
    memcpy(w, handle, NVIPCFIX_HANDLE_BYTES);
}

/* The first slot of the handle's bucket: every word mixed in (rotated, so
 * that equal words do not cancel), one multiplication. */
static size_t bucket_of(const uint64_t w[KEY_WORDS])
{
    uint64_t x = 0;
#pragma GCC unroll 8
    for (int i = 0; i < KEY_WORDS; i++)
        x = ((x << 23) | (x >> 41)) ^ w[i];
    x *= 0x9E3779B97F4A7C15ull;
    return (size_t)(x >> 40) & (NVIPCFIX_EXPORT_FAST_SLOTS - 1) &
           ~(size_t)(NVIPCFIX_EXPORT_FAST_WAYS - 1);
}

/* The word compared first: bytes 40-47, the driver's object id, which
 * differs most between handles (handle-format.md; any word would be right,
 * as all eight are compared). */
#define FIRST_WORD 5

/* Lock-free: 1 and the block if a slot holds exactly these words. */
static int fast_find(struct nvipcfix_export_slot *t, const uint64_t w[KEY_WORDS],
                     uint64_t *base, uint64_t *size, uint64_t *check)
{
    struct nvipcfix_export_slot *s = &t[bucket_of(w)];
    for (int way = 0; way < NVIPCFIX_EXPORT_FAST_WAYS; way++, s++) {
        uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (atomic_load_explicit(&s->key[FIRST_WORD], memory_order_acquire) != w[FIRST_WORD])
            continue;
        uint64_t diff = seq & 1;
#pragma GCC unroll 8
        for (int i = 0; i < KEY_WORDS; i++)
            diff |= atomic_load_explicit(&s->key[i], memory_order_acquire) ^ w[i];
        if (diff != 0)
            continue;
        uint64_t b = atomic_load_explicit(&s->base, memory_order_acquire);
        uint64_t n = atomic_load_explicit(&s->size, memory_order_acquire);
        uint64_t k = atomic_load_explicit(&s->check, memory_order_acquire);
        if (n == 0 || atomic_load_explicit(&s->seq, memory_order_relaxed) != seq)
            continue; /* never used, or changed while read: a miss */
        *base = b;
        *size = n;
        *check = k;
        return 1;
    }
    return 0;
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
    struct nvipcfix_export_slot *b = &t[bucket_of(w)], *victim = NULL;
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
    uint64_t w[KEY_WORDS];
    handle_words(handle, w);
    struct nvipcfix_export_slot *t = atomic_load_explicit(&c->fast, memory_order_acquire);
    if (t == NULL)
        return 0; /* nothing recorded yet */
    if (fast_find(t, w, base, size, check))
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
