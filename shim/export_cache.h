/* Export cache: the driver's handle of each block this process exported,
 * and the block it names (base, size, buffer id).
 *
 * The driver's handle of a pointer identifies its allocation (the handle of
 * an interior pointer is byte-identical to its block's; a free and a new
 * allocation give a new handle): a given handle always names one block
 * base. So the export path asks the driver for the pointer's handle and
 * looks the base up here by the handle bytes (nvipcfix_export_cache_base_of)
 * in a table of fixed size read without locks and without any shared write:
 * each slot is read under its own sequence counter, its words as atomics
 * (acquire loads, release stores: plain moves on x86); writers are
 * serialised by a mutex. An entry there is never
 * wrong, only useless once its block is freed, so a full bucket simply
 * replaces one of its slots.
 *
 * Behind it, the complete record: every block exported and still live,
 * indexed by handle (an open of our own export in the exporting process
 * finds the block it names; a slot replaced in the fast table is found
 * again) and by base (a block freed and re-allocated at the same address
 * replaces its predecessor's entry; the buffer id, unique per allocation
 * and never reused in a process, tells them apart). */
#ifndef NVIPCFIX_EXPORT_CACHE_H
#define NVIPCFIX_EXPORT_CACHE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "handle_tag.h"
#include "handle_word.h"

/* When the cache reaches this many blocks, the entries of blocks that no
 * longer exist are dropped; the next sweep comes when it holds twice as many
 * as survived (at least this many again). Blocks still allocated are never
 * dropped, so an open of a live block's handle in its own process keeps
 * working however many other blocks were exported. */
#define NVIPCFIX_EXPORT_CACHE_MAX 65536

/* Whether the block recorded at base with this buffer id still exists. */
typedef int (*nvipcfix_export_live_fn)(void *arg, uint64_t base, uint64_t buffer_id);

/* The lock-free table in front: a power of two, in buckets of WAYS slots. */
#define NVIPCFIX_EXPORT_FAST_SLOTS 4096
#define NVIPCFIX_EXPORT_FAST_WAYS 4

struct nvipcfix_export_entry;

#define NVIPCFIX_EXPORT_KEY_WORDS (NVIPCFIX_HANDLE_BYTES / 8)

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
    atomic_uint_least64_t key[NVIPCFIX_EXPORT_KEY_WORDS];
    atomic_uint_least64_t base;
    atomic_uint_least64_t size;
    atomic_uint_least64_t check; /* nvipcfix_tag_check_head of the handle */
};

struct nvipcfix_export_cache {
    /* NULL until the first block is recorded (allocated then, 384 KiB of
     * zeroed pages, touched only where slots are used). */
    struct nvipcfix_export_slot *_Atomic fast;
    pthread_mutex_t fast_write; /* serialises writers of the fast table */
    unsigned fast_victim;       /* under fast_write: next slot replaced */
    pthread_rwlock_t lock;      /* the complete record below */
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

/* The block that the driver's handle (all 64 bytes, as the driver wrote
 * them) names: 1 with *base and *size (and *check, the tag check's state
 * after the handle's bytes 0-55: nvipcfix_tag_check_head), or 0 if it was
 * never recorded. The
 * fast table first (no lock, no shared write), then the complete record
 * (a read lock; a hit there goes back into the fast table). */
int nvipcfix_export_cache_base_of(struct nvipcfix_export_cache *c,
                                  const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                  uint64_t *base, uint64_t *size, uint64_t *check);

/* The first slot of the bucket of a handle (as words): the words that
 * differ between the driver's handles of one process (bytes 16-31, the size
 * and the place in the driver's chunk; 40-47, the object id) mixed, one
 * multiplication. Any choice would be right (all eight words are compared);
 * this one spreads the blocks of one process, packed small ones included. */
static inline size_t nvipcfix_export_bucket_of(uint64_t w2, uint64_t w3, uint64_t w5)
{
    uint64_t x = (w5 ^ (w3 * UINT64_C(0xff51afd7ed558ccd)) ^ w2) * UINT64_C(0x9E3779B97F4A7C15);
    return (size_t)(x >> 40) & (NVIPCFIX_EXPORT_FAST_SLOTS - 1) &
           ~(size_t)(NVIPCFIX_EXPORT_FAST_WAYS - 1);
}

static inline size_t nvipcfix_export_bucket(const uint64_t w[NVIPCFIX_EXPORT_KEY_WORDS])
{
    return nvipcfix_export_bucket_of(w[2], w[3], w[5]);
}

/* The fast table's half of nvipcfix_export_cache_base_of, inline for the
 * export path: 1 and the block if a slot holds exactly these 64 bytes, 0
 * otherwise (then ask nvipcfix_export_cache_base_of). Lock-free, writes
 * nothing. */
static inline int nvipcfix_export_cache_fast_find(struct nvipcfix_export_cache *c,
                                                  const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                                  uint64_t *base, uint64_t *size, uint64_t *check)
{
    /* The handle's words read where they are, in the driver's pieces. */
    struct nvipcfix_export_slot *s = atomic_load_explicit(&c->fast, memory_order_acquire);
    if (s == NULL)
        return 0; /* nothing recorded yet */
    uint64_t w5 = nvipcfix_handle_word(handle, 5);
    s += nvipcfix_export_bucket_of(nvipcfix_handle_word(handle, 2), nvipcfix_handle_word(handle, 3), w5);
    for (int way = 0; way < NVIPCFIX_EXPORT_FAST_WAYS; way++, s++) {
        uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        /* bytes 40-47 first, the object id, which differs most */
        if (atomic_load_explicit(&s->key[5], memory_order_acquire) != w5)
            continue;
        uint64_t diff = seq & 1;
#pragma GCC unroll 8
        for (int i = 0; i < NVIPCFIX_EXPORT_KEY_WORDS; i++)
            diff |= nvipcfix_handle_word_xor(handle, i,
                                             atomic_load_explicit(&s->key[i], memory_order_acquire));
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

/* Records the driver's handle of a block, replacing whatever was recorded
 * at that base or for that handle. The caller guarantees that the handle
 * names this block (the export path checks it with the driver's buffer id
 * before and after taking the handle of the base). Returns 0, or -1 if out
 * of memory (then nothing is recorded). */
int nvipcfix_export_cache_put(struct nvipcfix_export_cache *c,
                              const struct nvipcfix_export_block *block);

/* Finds the block whose handle is these bytes; returns 1 and fills *out, or 0. */
int nvipcfix_export_cache_find_handle(struct nvipcfix_export_cache *c,
                                      const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                      struct nvipcfix_export_block *out);

size_t nvipcfix_export_cache_count(struct nvipcfix_export_cache *c);

/* In a child after fork(): an empty cache with fresh locks, the parent's
 * entries and fast table left behind (not freed: another thread may have
 * been writing them when fork() copied the memory). Takes no lock. */
void nvipcfix_export_cache_forget(struct nvipcfix_export_cache *c);

#endif
