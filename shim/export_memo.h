/* Export memo: for each pointer exported lately, the driver's handle of it
 * and the answer nvipcfix gave (the tail it wrote into bytes 56-63, zero
 * for a block base or an export left as the driver made it).
 *
 * An export asks the memo for its pointer before it calls the driver; once
 * the driver has written its handle, the two handles are compared. All 64
 * bytes equal means the same allocation (the driver's handle names one
 * allocation: export_cache.h), so the same block base, the same offset and
 * the same tail: it is written again (and byte 51 flipped for a guarded
 * tag) without looking the block up or computing the tag's check. Any
 * other handle (the block was freed and another allocated at that address,
 * at another size, by another thread) is a miss: the export takes the full
 * path, which records its answer here. An entry can be useless, never
 * wrong.
 *
 * Why a memo by pointer, asked before the call: what it reads does not
 * depend on what the driver writes, so it is read while the driver runs,
 * and after the call only a compare and two stores are left. (On an H200
 * the export path's cost was the work after the driver's call: the look-up
 * of the block by the handle just written and the tag's chain of
 * multiplications; docs/performance.md has the figures.)
 *
 * A table of fixed size in buckets of two slots (a pointer's place chosen
 * by a multiplicative hash; two pointers that share it both stay), read
 * without locks and without any shared write, each slot under its own
 * sequence counter (the reader's side of the export cache's fast table).
 * A writer takes a slot by moving its counter from even to odd with one
 * compare-and-swap (acquire: what the previous writer stored is ordered
 * before its own stores), and gives up if another writer holds it: an
 * export never waits for another. */
#ifndef NVIPCFIX_EXPORT_MEMO_H
#define NVIPCFIX_EXPORT_MEMO_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "handle_tag.h"
#include "handle_word.h"

/* A power of two: 1,024 buckets of two slots of 88 bytes (176 KiB),
 * allocated at the first answer recorded and written through at once, so
 * that no later export takes a page fault in it (on the H200's virtual
 * machine a fault cost about 3 us, more than the memo saves in a hundred
 * exports). Twice as many slots as the 1,024 pointers an exporter walking
 * one block's sub-allocations may take turns with: the hash spreads such a
 * run over the buckets evenly, two at most in one (with 512 buckets some
 * 80 of them got three, and two of each three missed in turn, each miss a
 * shared write). */
#define NVIPCFIX_EXPORT_MEMO_BITS 10
#define NVIPCFIX_EXPORT_MEMO_WAYS 2
#define NVIPCFIX_EXPORT_MEMO_SLOTS (NVIPCFIX_EXPORT_MEMO_WAYS << NVIPCFIX_EXPORT_MEMO_BITS)
#define NVIPCFIX_EXPORT_MEMO_WORDS (NVIPCFIX_HANDLE_BYTES / 8)

/* seq is odd while a writer changes the slot; ptr 0 is a slot never used.
 * tail: bytes 56-63 of the answer as they lie in the handle. */
struct nvipcfix_export_memo_slot {
    atomic_uint_least64_t seq;
    atomic_uint_least64_t ptr;
    atomic_uint_least64_t key[NVIPCFIX_EXPORT_MEMO_WORDS];
    atomic_uint_least64_t tail;
};

struct nvipcfix_export_memo {
    struct nvipcfix_export_memo_slot *_Atomic slots; /* NULL until the first answer */
};

/* What the memo knows of one pointer, read before the driver's call. */
struct nvipcfix_export_memo_probe {
    struct nvipcfix_export_memo_slot *slot; /* NULL: nothing for this pointer */
    uint64_t seq;
};

void nvipcfix_export_memo_init(struct nvipcfix_export_memo *m);
void nvipcfix_export_memo_destroy(struct nvipcfix_export_memo *m);

/* In a child after fork(): an empty memo, the parent's table left behind
 * (another thread may have been writing it when fork() copied it). */
void nvipcfix_export_memo_forget(struct nvipcfix_export_memo *m);

/* Records the answer to an export of ptr: driver is the handle the driver
 * wrote, answer the handle nvipcfix returned (driver's bytes with a tail
 * and, for a guarded tag, byte 51 flipped; or the same bytes). Recorded
 * only when answer is one of those and the driver left bytes 56-63 zero;
 * nothing when out of memory or when another thread is writing the slot. */
void nvipcfix_export_memo_put(struct nvipcfix_export_memo *m, uint64_t ptr,
                              const unsigned char driver[NVIPCFIX_HANDLE_BYTES],
                              const unsigned char answer[NVIPCFIX_HANDLE_BYTES]);

/* Writes an answer's tail (bytes 56-63 as they lie in the handle) into the
 * driver's handle, and flips byte 51 for a guarded tag: the answer again. */
static inline void nvipcfix_export_memo_replay(unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                               uint64_t tail)
{
    __builtin_memcpy(handle + NVIPCFIX_TAIL_AT, &tail, sizeof tail);
    if ((nvipcfix_le64(tail) & NVIPCFIX_GUARD_FLAG) != 0)
        handle[NVIPCFIX_GUARD_BYTE] ^= NVIPCFIX_GUARD_MASK;
}

/* The first slot of ptr's bucket. */
static inline size_t nvipcfix_export_memo_index(uint64_t ptr)
{
    return (size_t)((ptr * UINT64_C(0x9E3779B97F4A7C15)) >> (64 - NVIPCFIX_EXPORT_MEMO_BITS)) *
           NVIPCFIX_EXPORT_MEMO_WAYS;
}

/* Before the driver's call: the slot that may hold ptr's answer. */
static inline void nvipcfix_export_memo_probe(struct nvipcfix_export_memo *m, uint64_t ptr,
                                              struct nvipcfix_export_memo_probe *p)
{
    struct nvipcfix_export_memo_slot *t = atomic_load_explicit(&m->slots, memory_order_acquire);
    p->slot = NULL;
    if (t == NULL)
        return;
    struct nvipcfix_export_memo_slot *s = &t[nvipcfix_export_memo_index(ptr)];
    for (int way = 0; way < NVIPCFIX_EXPORT_MEMO_WAYS; way++, s++) {
        uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        if ((seq & 1) == 0 && atomic_load_explicit(&s->ptr, memory_order_acquire) == ptr) {
            p->slot = s;
            p->seq = seq;
            return;
        }
    }
}

/* After the driver wrote its handle of the probed pointer into handle: 1 if
 * the slot holds exactly this handle, and then handle carries the answer
 * given before and *tail its bytes 56-63 (0: the driver's handle as it
 * is); 0 otherwise, handle unchanged. Lock-free, writes nothing shared. */
static inline int nvipcfix_export_memo_apply(const struct nvipcfix_export_memo_probe *p,
                                             unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                             uint64_t *tail)
{
    struct nvipcfix_export_memo_slot *s = p->slot;
    if (s == NULL)
        return 0;
    uint64_t diff = 0;
#pragma GCC unroll 8
    for (int i = 0; i < NVIPCFIX_EXPORT_MEMO_WORDS; i++) {
        diff |= nvipcfix_handle_word_xor(handle, i, /* in the driver's pieces */
                                         atomic_load_explicit(&s->key[i], memory_order_acquire));
        __asm__ volatile("" : "+r"(diff)); /* word by word: no spills */
    }
    uint64_t t = atomic_load_explicit(&s->tail, memory_order_acquire);
    if (diff != 0 || atomic_load_explicit(&s->seq, memory_order_relaxed) != p->seq)
        return 0; /* another handle, or the slot changed while read */
    if (t != 0)
        nvipcfix_export_memo_replay(handle, t);
    *tail = t;
    return 1;
}

#endif
