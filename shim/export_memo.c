#include "export_memo.h"

#include <stdlib.h>
#include <string.h>

void nvipcfix_export_memo_init(struct nvipcfix_export_memo *m)
{
    atomic_init(&m->slots, NULL);
}

void nvipcfix_export_memo_destroy(struct nvipcfix_export_memo *m)
{
    free(atomic_load_explicit(&m->slots, memory_order_relaxed));
    atomic_store_explicit(&m->slots, NULL, memory_order_relaxed);
}

/* A child's copy of its parent's table, still reachable (leak checkers). */
static void *volatile left_behind;

void nvipcfix_export_memo_forget(struct nvipcfix_export_memo *m)
{
    left_behind = atomic_load_explicit(&m->slots, memory_order_relaxed);
    nvipcfix_export_memo_init(m);
}

/* The table, allocated by the first writer, every page written at once
 * (calloc may leave fresh pages untouched, each a fault at some later
 * export); a writer that loses the race frees its own. NULL when out of
 * memory. */
static struct nvipcfix_export_memo_slot *table(struct nvipcfix_export_memo *m)
{
    struct nvipcfix_export_memo_slot *t = atomic_load_explicit(&m->slots, memory_order_acquire);
    if (t != NULL)
        return t;
    struct nvipcfix_export_memo_slot *mine = calloc(NVIPCFIX_EXPORT_MEMO_SLOTS, sizeof *mine);
    if (mine == NULL)
        return NULL;
    /* a write to every page (volatile: a memset of zero could be folded
     * into the calloc) */
    for (size_t at = 0; at < NVIPCFIX_EXPORT_MEMO_SLOTS * sizeof *mine; at += 4096)
        ((volatile unsigned char *)mine)[at] = 0;
    if (atomic_compare_exchange_strong_explicit(&m->slots, &t, mine, memory_order_acq_rel,
                                                memory_order_acquire))
        return mine;
    free(mine);
    return t;
}

/* The slot of the bucket for ptr's answer: the one that holds ptr, else
 * an unused one, else the one ptr's address picks (another bit of its
 * hash). Two pointers that take turns in a bucket both stay; a third only
 * ever replaces one of them, always the same one. */
static struct nvipcfix_export_memo_slot *victim(struct nvipcfix_export_memo_slot *b, uint64_t ptr)
{
    for (int way = 0; way < NVIPCFIX_EXPORT_MEMO_WAYS; way++) {
        uint64_t held = atomic_load_explicit(&b[way].ptr, memory_order_relaxed);
        if (held == ptr || held == 0)
            return &b[way];
    }
    uint64_t x = ptr * UINT64_C(0x9E3779B97F4A7C15);
    return &b[(x >> (63 - NVIPCFIX_EXPORT_MEMO_BITS)) & (NVIPCFIX_EXPORT_MEMO_WAYS - 1)];
}

void nvipcfix_export_memo_put(struct nvipcfix_export_memo *m, uint64_t ptr,
                              const unsigned char driver[NVIPCFIX_HANDLE_BYTES],
                              const unsigned char answer[NVIPCFIX_HANDLE_BYTES])
{
    /* What apply() would make of the driver's handle with this tail must
     * be the answer, byte for byte; else nothing is recorded. */
    unsigned char replayed[NVIPCFIX_HANDLE_BYTES];
    uint64_t tail;
    if (ptr == 0 || !nvipcfix_tail_is_zero(driver))
        return;
    memcpy(&tail, answer + NVIPCFIX_TAIL_AT, sizeof tail);
    memcpy(replayed, driver, sizeof replayed);
    nvipcfix_export_memo_replay(replayed, tail);
    if (memcmp(replayed, answer, sizeof replayed) != 0)
        return;

    struct nvipcfix_export_memo_slot *t = table(m);
    if (t == NULL)
        return;
    struct nvipcfix_export_memo_slot *s = victim(&t[nvipcfix_export_memo_index(ptr)], ptr);
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
    /* Acquire on success: the previous writer's stores (seen through its
     * release of seq) come before this one's, so a slot never keeps a mix
     * of two writers' words. */
    if ((seq & 1) != 0 || !atomic_compare_exchange_strong_explicit(
                              &s->seq, &seq, seq + 1, memory_order_acquire, memory_order_relaxed))
        return; /* another writer has the slot: this answer is simply not kept */
    /* Release stores: a reader whose acquire load sees a new word also sees
     * seq changed when it reads it again (export_cache.h). */
    atomic_store_explicit(&s->ptr, ptr, memory_order_release);
    for (int i = 0; i < NVIPCFIX_EXPORT_MEMO_WORDS; i++) {
        uint64_t w;
        memcpy(&w, driver + 8 * i, sizeof w);
        atomic_store_explicit(&s->key[i], w, memory_order_release);
    }
    atomic_store_explicit(&s->tail, tail, memory_order_release);
    atomic_store_explicit(&s->seq, seq + 2, memory_order_release);
}
