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

/* The table, allocated by the first writer (a writer that loses the race
 * frees its own). NULL when out of memory. */
static struct nvipcfix_export_memo_slot *table(struct nvipcfix_export_memo *m)
{
    struct nvipcfix_export_memo_slot *t = atomic_load_explicit(&m->slots, memory_order_acquire);
    if (t != NULL)
        return t;
    struct nvipcfix_export_memo_slot *mine = calloc(NVIPCFIX_EXPORT_MEMO_SLOTS, sizeof *mine);
    if (mine == NULL)
        return NULL;
    if (atomic_compare_exchange_strong_explicit(&m->slots, &t, mine, memory_order_acq_rel,
                                                memory_order_acquire))
        return mine;
    free(mine);
    return t;
}

void nvipcfix_export_memo_put(struct nvipcfix_export_memo *m, uint64_t ptr,
                              const unsigned char driver[NVIPCFIX_HANDLE_BYTES],
                              const unsigned char answer[NVIPCFIX_HANDLE_BYTES])
{
    /* What apply() would make of the driver's handle with this tail must
     * be the answer, byte for byte; else nothing is recorded. */
    unsigned char replayed[NVIPCFIX_HANDLE_BYTES];
    uint64_t tail, word;
    if (ptr == 0 || !nvipcfix_tail_is_zero(driver))
        return;
    memcpy(&tail, answer + NVIPCFIX_TAIL_AT, sizeof tail);
    memcpy(replayed, driver, sizeof replayed);
    memcpy(replayed + NVIPCFIX_TAIL_AT, &tail, sizeof tail);
    word = tail;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap64(word);
#endif
    if (tail != 0 && (word & NVIPCFIX_GUARD_FLAG) != 0)
        replayed[NVIPCFIX_GUARD_BYTE] ^= NVIPCFIX_GUARD_MASK;
    if (memcmp(replayed, answer, sizeof replayed) != 0)
        return;

    struct nvipcfix_export_memo_slot *t = table(m);
    if (t == NULL)
        return;
    struct nvipcfix_export_memo_slot *s = &t[nvipcfix_export_memo_index(ptr)];
    uint64_t seq = atomic_load_explicit(&s->seq, memory_order_relaxed);
    if ((seq & 1) != 0 || !atomic_compare_exchange_strong_explicit(
                              &s->seq, &seq, seq + 1, memory_order_relaxed, memory_order_relaxed))
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
