#include "vmm_records.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#define SWEEP_FIRST 256         /* exports */
#define SWEEP_FIRST_CHUNKS 4096 /* chunks held */

struct vmm_entry {
    uint32_t id;
    size_t start, n; /* the run's chunks [start, start + n); the key in run->by_n */
    struct vmm_run *run;
    uint64_t sum; /* of its context and chunks (which never change): the key in r->by_sum */
    unsigned char secret[NVIPCFIX_KEY_BYTES];
    UT_hash_handle hh, hh_n, hh_sum;
};
_Static_assert(offsetof(struct vmm_entry, n) == offsetof(struct vmm_entry, start) + sizeof(size_t),
               "by_n's key is start and n side by side");

/* Where a chunk is recorded: the latest run holding it is found by its
 * address (r->by_va), so an export that starts inside a run (a tensor in
 * a later chunk of a segment already exported) shares that run. */
struct vmm_place {
    uint64_t va;
    struct vmm_run *run;
    size_t pos;
    int indexed; /* in r->by_va (a newer run may hold the address now) */
    UT_hash_handle hh;
};

struct vmm_run {
    struct vmm_run *self; /* the key in r->runs */
    CUcontext ctx;
    size_t n, cap;
    struct nvipcfix_vmm_chunk *chunks;
    struct vmm_place *places; /* one per chunk */
    struct vmm_entry *by_n;
    UT_hash_handle hh_all;
};

void nvipcfix_vmm_records_init(struct nvipcfix_vmm_records *r, nvipcfix_chunk_check unchanged,
                               void *arg)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    r->next_id = 1;
    r->sweep_at = SWEEP_FIRST;
    r->sweep_chunks_at = SWEEP_FIRST_CHUNKS;
    r->unchanged = unchanged;
    r->arg = arg;
}

static void drop_entry(struct nvipcfix_vmm_records *r, struct vmm_entry *e)
{
    HASH_DELETE(hh, r->by_id, e);
    HASH_DELETE(hh_n, e->run->by_n, e);
    HASH_DELETE(hh_sum, r->by_sum, e);
    memset(e->secret, 0, sizeof e->secret);
    free(e);
    r->entries--;
    atomic_fetch_add_explicit(&r->dropped, 1, memory_order_release);
}

/* Takes the run's places [from, to) out of the address index. */
static void unindex(struct nvipcfix_vmm_records *r, struct vmm_run *run, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (run->places[i].indexed) {
            HASH_DELETE(hh, r->by_va, &run->places[i]);
            run->places[i].indexed = 0;
        }
}

/* The run's place i becomes the one found at its address. */
static void index_place(struct nvipcfix_vmm_records *r, struct vmm_run *run, size_t i)
{
    struct vmm_place *p = &run->places[i], *old;
    HASH_FIND(hh, r->by_va, &run->chunks[i].va, sizeof(uint64_t), old);
    if (old != NULL) {
        HASH_DELETE(hh, r->by_va, old);
        old->indexed = 0;
    }
    p->va = run->chunks[i].va;
    p->run = run;
    p->pos = i;
    p->indexed = 1;
    HASH_ADD(hh, r->by_va, va, sizeof p->va, p);
}

static void drop_run(struct nvipcfix_vmm_records *r, struct vmm_run *run)
{
    struct vmm_entry *e, *tmp;
    HASH_ITER(hh_n, run->by_n, e, tmp)
        drop_entry(r, e);
    unindex(r, run, 0, run->n);
    HASH_DELETE(hh_all, r->runs, run);
    r->chunks -= run->n;
    free(run->chunks);
    free(run->places);
    free(run);
}

void nvipcfix_vmm_records_destroy(struct nvipcfix_vmm_records *r)
{
    struct vmm_run *run, *tmp;
    HASH_ITER(hh_all, r->runs, run, tmp)
        drop_run(r, run);
    pthread_mutex_destroy(&r->lock);
}

/* A child's copy of its parent's records, left behind but still reachable
 * (so leak checkers do not report them). */
static void *volatile left_behind;

void nvipcfix_vmm_records_forget(struct nvipcfix_vmm_records *r)
{
    uint64_t dropped = nvipcfix_vmm_records_dropped(r);
    left_behind = r->runs;
    nvipcfix_vmm_records_init(r, r->unchanged, r->arg);
    atomic_store_explicit(&r->dropped, dropped + 1, memory_order_release); /* ids start again */
}

/* Forgets exports with a chunk gone (no importer can map them: an export
 * is served whole or not at all), and runs left without any (caller holds
 * the lock): one check a chunk held. Out of memory for the count, only
 * each export's first chunk is checked. */
static void sweep(struct nvipcfix_vmm_records *r)
{
    struct vmm_run *run, *tmp;
    struct vmm_entry *e, *etmp;
    HASH_ITER(hh_all, r->runs, run, tmp) {
        size_t *gone = calloc(run->n + 1, sizeof *gone); /* gone[i]: chunks gone before i */
        for (size_t i = 0; gone != NULL && i < run->n; i++)
            gone[i + 1] = gone[i] + !r->unchanged(r->arg, &run->chunks[i]);
        HASH_ITER(hh_n, run->by_n, e, etmp)
            if (gone != NULL ? gone[e->start + e->n] != gone[e->start]
                             : !r->unchanged(r->arg, &run->chunks[e->start]))
                drop_entry(r, e);
        free(gone);
        if (run->by_n == NULL)
            drop_run(r, run);
    }
    r->sweep_at = r->entries * 2 > SWEEP_FIRST ? r->entries * 2 : SWEEP_FIRST;
    r->sweep_chunks_at = r->chunks * 2 > SWEEP_FIRST_CHUNKS ? r->chunks * 2 : SWEEP_FIRST_CHUNKS;
}

/* The key of chunks[0, n) in ctx: their count and the buffer ids of the
 * first and the last (new for every mapping), so that a look-up costs the
 * same for any n; a candidate found is compared in full. */
static uint64_t sum_of(CUcontext ctx, const struct nvipcfix_vmm_chunk *chunks, size_t n)
{
    const uint64_t w[4] = {(uint64_t)(uintptr_t)ctx, n, chunks[0].buffer_id,
                           chunks[n - 1].buffer_id};
    uint64_t h = UINT64_C(0x9e3779b97f4a7c15);
    for (int j = 0; j < 4; j++) {
        h = (h ^ w[j]) * UINT64_C(0xbf58476d1ce4e5b9);
        h ^= h >> 31;
    }
    return h;
}

/* The export of exactly chunks[0, n) in ctx, whichever run holds it, or
 * NULL. */
static struct vmm_entry *same_export(struct nvipcfix_vmm_records *r, CUcontext ctx,
                                     const struct nvipcfix_vmm_chunk *chunks, size_t n,
                                     uint64_t sum)
{
    struct vmm_entry *e;
    HASH_FIND(hh_sum, r->by_sum, &sum, sizeof sum, e);
    return e != NULL && e->run->ctx == ctx && e->n == n &&
                   memcmp(e->run->chunks + e->start, chunks, n * sizeof *chunks) == 0
               ? e
               : NULL;
}

/* Room for cap chunks (the places move: out of the index meanwhile). */
static int grow(struct nvipcfix_vmm_records *r, struct vmm_run *run, size_t cap)
{
    char *was = calloc(run->n + 1, 1);
    if (was == NULL)
        return -1;
    for (size_t i = 0; i < run->n; i++)
        was[i] = (char)run->places[i].indexed;
    unindex(r, run, 0, run->n);
    struct nvipcfix_vmm_chunk *chunks = realloc(run->chunks, cap * sizeof *chunks);
    if (chunks != NULL)
        run->chunks = chunks;
    struct vmm_place *places = chunks != NULL ? realloc(run->places, cap * sizeof *places) : NULL;
    if (places != NULL) {
        run->places = places;
        run->cap = cap;
    }
    for (size_t i = 0; i < run->n; i++)
        if (was[i])
            index_place(r, run, i);
    free(was);
    return places != NULL ? 0 : -1;
}

/* The run's chunks from m on are replaced by from[0, n - m). */
static int put_tail(struct nvipcfix_vmm_records *r, struct vmm_run *run, size_t m,
                    const struct nvipcfix_vmm_chunk *from, size_t n)
{
    if (n > run->cap && grow(r, run, run->cap * 2 > n ? run->cap * 2 : n) != 0)
        return -1;
    if (m < run->n) {
        unindex(r, run, m, run->n);
        r->chunks -= run->n - m;
        run->n = m;
    }
    memcpy(run->chunks + m, from, (n - m) * sizeof *from);
    for (size_t i = m; i < n; i++)
        index_place(r, run, i);
    r->chunks += n - m;
    run->n = n;
    return 0;
}

static struct vmm_run *new_run(struct nvipcfix_vmm_records *r, CUcontext ctx,
                               const struct nvipcfix_vmm_chunk *chunks, size_t n)
{
    struct vmm_run *run = calloc(1, sizeof *run);
    if (run == NULL || put_tail(r, run, 0, chunks, n) != 0) {
        if (run != NULL) {
            free(run->chunks);
            free(run->places);
        }
        free(run);
        return NULL;
    }
    run->self = run;
    run->ctx = ctx;
    HASH_ADD(hh_all, r->runs, self, sizeof run->self, run);
    return run;
}

/* The run that starts with chunks[1, n) (a tensor exported before, in the
 * chunk after this one), with chunks[0] put before them; NULL if none. So
 * exports from the last chunk to the first share one run too. */
static struct vmm_run *run_after(struct nvipcfix_vmm_records *r, CUcontext ctx,
                                 const struct nvipcfix_vmm_chunk *chunks, size_t n)
{
    struct vmm_place *at = NULL;
    if (n >= 2)
        HASH_FIND(hh, r->by_va, &chunks[1].va, sizeof chunks[1].va, at);
    if (at == NULL || at->pos != 0 || at->run->ctx != ctx || at->run->n < n - 1 ||
        memcmp(at->run->chunks, chunks + 1, (n - 1) * sizeof *chunks) != 0)
        return NULL;
    struct vmm_run *run = at->run;
    struct vmm_entry *e, *tmp, *old = run->by_n;
    if (run->n + 1 > run->cap && grow(r, run, run->cap * 2) != 0)
        return NULL;
    unindex(r, run, 0, run->n); /* every place moves up by one */
    memmove(run->chunks + 1, run->chunks, run->n * sizeof *run->chunks);
    run->chunks[0] = chunks[0];
    run->n++;
    r->chunks++;
    for (size_t i = 0; i < run->n; i++)
        index_place(r, run, i);
    run->by_n = NULL;
    HASH_ITER(hh_n, old, e, tmp) {
        HASH_DELETE(hh_n, old, e);
        e->start++;
        HASH_ADD(hh_n, run->by_n, start, 2 * sizeof(size_t), e);
    }
    return run;
}

/* The run that holds chunks[0, n) from *start on: the latest that holds
 * the first of them, grown or with its stale tail replaced, or one that
 * starts right after the first, or a new one. */
static struct vmm_run *run_for(struct nvipcfix_vmm_records *r, CUcontext ctx,
                               const struct nvipcfix_vmm_chunk *chunks, size_t n, size_t *start)
{
    struct vmm_place *at;
    *start = 0;
    HASH_FIND(hh, r->by_va, &chunks[0].va, sizeof chunks[0].va, at);
    if (at != NULL && at->run->ctx == ctx) {
        struct vmm_run *run = at->run;
        size_t p = at->pos, m = 0;
        while (m < n && p + m < run->n &&
               memcmp(&run->chunks[p + m], &chunks[m], sizeof *chunks) == 0)
            m++;
        *start = p;
        if (m == n)
            return run; /* recorded already */
        if (m > 0 && (p + m == run->n || !r->unchanged(r->arg, &run->chunks[p + m]))) {
            struct vmm_entry *e, *tmp;
            HASH_ITER(hh_n, run->by_n, e, tmp)
                if (e->start + e->n > p + m) /* it covers a chunk that is gone */
                    drop_entry(r, e);
            return put_tail(r, run, p + m, chunks + m, p + n) == 0 ? run : NULL;
        }
        *start = 0;
    }
    struct vmm_run *run = run_after(r, ctx, chunks, n);
    return run != NULL ? run : new_run(r, ctx, chunks, n); /* others: found by their ids */
}

static struct vmm_entry *entry_for(struct nvipcfix_vmm_records *r, struct vmm_run *run,
                                   size_t start, size_t n, uint64_t sum)
{
    struct vmm_entry *e;
    size_t key[2] = {start, n};
    HASH_FIND(hh_n, run->by_n, key, sizeof key, e);
    if (e != NULL || r->next_id == 0)
        return e;
    e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    if (nvipcfix_random_bytes(e->secret, sizeof e->secret) != 0) {
        free(e);
        return NULL;
    }
    e->id = r->next_id++; /* 0 after 2^32 - 1 ids: no more exports */
    e->start = start;
    e->n = n;
    e->run = run;
    e->sum = sum;
    HASH_ADD(hh, r->by_id, id, sizeof e->id, e);
    HASH_ADD(hh_n, run->by_n, start, sizeof key, e);
    HASH_ADD(hh_sum, r->by_sum, sum, sizeof e->sum, e);
    r->entries++;
    return e;
}

int nvipcfix_vmm_records_add(struct nvipcfix_vmm_records *r, CUcontext ctx,
                             const struct nvipcfix_vmm_chunk *chunks, size_t n, uint32_t *id,
                             unsigned char secret[NVIPCFIX_KEY_BYTES])
{
    uint64_t sum = sum_of(ctx, chunks, n);
    pthread_mutex_lock(&r->lock);
    if (r->entries >= r->sweep_at || r->chunks >= r->sweep_chunks_at)
        sweep(r);
    /* The same chunks recorded already, in any run: the same export (a
     * reservation back to an earlier state, whose latest run differs). */
    struct vmm_entry *e = same_export(r, ctx, chunks, n, sum);
    if (e == NULL) {
        size_t start;
        struct vmm_run *run = run_for(r, ctx, chunks, n, &start);
        e = run != NULL ? entry_for(r, run, start, n, sum) : NULL;
    }
    if (e != NULL) {
        *id = e->id;
        memcpy(secret, e->secret, sizeof e->secret);
    }
    pthread_mutex_unlock(&r->lock);
    return e != NULL ? 0 : -1;
}

int nvipcfix_vmm_records_secret(struct nvipcfix_vmm_records *r, uint32_t id,
                                unsigned char secret[NVIPCFIX_KEY_BYTES])
{
    struct vmm_entry *e;
    pthread_mutex_lock(&r->lock);
    HASH_FIND(hh, r->by_id, &id, sizeof id, e);
    if (e != NULL)
        memcpy(secret, e->secret, sizeof e->secret);
    pthread_mutex_unlock(&r->lock);
    return e != NULL ? 0 : -1;
}

struct nvipcfix_vmm_chunk *nvipcfix_vmm_records_get(struct nvipcfix_vmm_records *r,
                                                    uint32_t id, size_t first, size_t *n,
                                                    size_t *total, CUcontext *ctx)
{
    struct vmm_entry *e;
    struct nvipcfix_vmm_chunk *copy = NULL;
    pthread_mutex_lock(&r->lock);
    HASH_FIND(hh, r->by_id, &id, sizeof id, e);
    *total = e != NULL ? e->n : 0;
    if (e != NULL && first < e->n) {
        if (*n > e->n - first)
            *n = e->n - first;
        if ((copy = malloc(*n * sizeof *copy)) != NULL)
            memcpy(copy, e->run->chunks + e->start + first, *n * sizeof *copy);
        *ctx = e->run->ctx;
    }
    pthread_mutex_unlock(&r->lock);
    return copy;
}

void nvipcfix_vmm_records_counts(struct nvipcfix_vmm_records *r, size_t *exports,
                                 size_t *chunks)
{
    pthread_mutex_lock(&r->lock);
    *exports = r->entries;
    *chunks = r->chunks;
    pthread_mutex_unlock(&r->lock);
}
