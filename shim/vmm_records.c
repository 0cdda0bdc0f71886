#include "vmm_records.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <uthash.h>

#define SWEEP_FIRST 256

struct vmm_entry {
    uint32_t id;
    size_t n; /* the run's first n chunks */
    struct vmm_run *run;
    unsigned char secret[NVIPCFIX_KEY_BYTES];
    UT_hash_handle hh, hh_n;
};

struct vmm_run {
    uint64_t first;
    struct vmm_run *self; /* the key in r->runs */
    CUcontext ctx;
    size_t n, cap;
    int current; /* in by_first */
    struct nvipcfix_vmm_chunk *chunks;
    struct vmm_entry *by_n;
    UT_hash_handle hh_first, hh_all;
};

void nvipcfix_vmm_records_init(struct nvipcfix_vmm_records *r, nvipcfix_chunk_check unchanged,
                               void *arg)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->lock, NULL);
    r->next_id = 1;
    r->sweep_at = SWEEP_FIRST;
    r->unchanged = unchanged;
    r->arg = arg;
}

static void drop_entry(struct nvipcfix_vmm_records *r, struct vmm_entry *e)
{
    HASH_DELETE(hh, r->by_id, e);
    HASH_DELETE(hh_n, e->run->by_n, e);
    memset(e->secret, 0, sizeof e->secret);
    free(e);
    r->entries--;
}

static void drop_run(struct nvipcfix_vmm_records *r, struct vmm_run *run)
{
    struct vmm_entry *e, *tmp;
    HASH_ITER(hh_n, run->by_n, e, tmp)
        drop_entry(r, e);
    if (run->current)
        HASH_DELETE(hh_first, r->by_first, run);
    HASH_DELETE(hh_all, r->runs, run);
    r->chunks -= run->n;
    free(run->chunks);
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
    left_behind = r->runs;
    nvipcfix_vmm_records_init(r, r->unchanged, r->arg);
}

/* Forgets runs whose first chunk is gone (caller holds the lock). */
static void sweep(struct nvipcfix_vmm_records *r)
{
    struct vmm_run *run, *tmp;
    HASH_ITER(hh_all, r->runs, run, tmp)
        if (!r->unchanged(r->arg, &run->chunks[0]))
            drop_run(r, run);
    r->sweep_at = r->entries * 2 > SWEEP_FIRST ? r->entries * 2 : SWEEP_FIRST;
}

/* The run's chunks from m on are replaced by chunks[m, n). */
static int put_tail(struct nvipcfix_vmm_records *r, struct vmm_run *run, size_t m,
                    const struct nvipcfix_vmm_chunk *chunks, size_t n)
{
    if (n > run->cap) {
        size_t cap = run->cap * 2 > n ? run->cap * 2 : n;
        struct nvipcfix_vmm_chunk *more = realloc(run->chunks, cap * sizeof *more);
        if (more == NULL)
            return -1;
        run->chunks = more;
        run->cap = cap;
    }
    memcpy(run->chunks + m, chunks + m, (n - m) * sizeof *chunks);
    r->chunks += n - run->n;
    run->n = n;
    return 0;
}

static struct vmm_run *new_run(struct nvipcfix_vmm_records *r, CUcontext ctx,
                               const struct nvipcfix_vmm_chunk *chunks, size_t n)
{
    struct vmm_run *run = calloc(1, sizeof *run);
    if (run == NULL || put_tail(r, run, 0, chunks, n) != 0) {
        free(run);
        return NULL;
    }
    run->first = chunks[0].va;
    run->self = run;
    run->ctx = ctx;
    run->current = 1;
    HASH_ADD(hh_all, r->runs, self, sizeof run->self, run);
    HASH_ADD(hh_first, r->by_first, first, sizeof run->first, run);
    return run;
}

/* The run that holds chunks[0, n) as its first n: the latest at that
 * place, grown or with its stale tail replaced, or a new one. */
static struct vmm_run *run_for(struct nvipcfix_vmm_records *r, CUcontext ctx,
                               const struct nvipcfix_vmm_chunk *chunks, size_t n)
{
    struct vmm_run *run;
    HASH_FIND(hh_first, r->by_first, &chunks[0].va, sizeof chunks[0].va, run);
    if (run != NULL && run->ctx == ctx) {
        size_t m = 0;
        while (m < n && m < run->n && memcmp(&run->chunks[m], &chunks[m], sizeof *chunks) == 0)
            m++;
        if (m == n)
            return run; /* a prefix of what is recorded */
        if (m == run->n || (m > 0 && !r->unchanged(r->arg, &run->chunks[m]))) {
            struct vmm_entry *e, *tmp;
            HASH_ITER(hh_n, run->by_n, e, tmp)
                if (e->n > m) /* it covers a chunk that is gone */
                    drop_entry(r, e);
            if (m < run->n) {
                r->chunks -= run->n - m;
                run->n = m;
            }
            return put_tail(r, run, m, chunks, n) == 0 ? run : NULL;
        }
    }
    if (run != NULL) { /* other chunks at this place: only their ids find them now */
        HASH_DELETE(hh_first, r->by_first, run);
        run->current = 0;
    }
    return new_run(r, ctx, chunks, n);
}

static struct vmm_entry *entry_for(struct nvipcfix_vmm_records *r, struct vmm_run *run,
                                   size_t n)
{
    struct vmm_entry *e;
    HASH_FIND(hh_n, run->by_n, &n, sizeof n, e);
    if (e != NULL || r->next_id == 0)
        return e;
    e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    size_t got = 0;
    while (got < sizeof e->secret) {
        ssize_t k = getrandom(e->secret + got, sizeof e->secret - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            free(e);
            return NULL;
        }
        got += (size_t)k;
    }
    e->id = r->next_id++; /* 0 after 2^32 - 1 ids: no more exports */
    e->n = n;
    e->run = run;
    HASH_ADD(hh, r->by_id, id, sizeof e->id, e);
    HASH_ADD(hh_n, run->by_n, n, sizeof e->n, e);
    r->entries++;
    return e;
}

int nvipcfix_vmm_records_add(struct nvipcfix_vmm_records *r, CUcontext ctx,
                             const struct nvipcfix_vmm_chunk *chunks, size_t n, uint32_t *id,
                             unsigned char secret[NVIPCFIX_KEY_BYTES])
{
    pthread_mutex_lock(&r->lock);
    if (r->entries >= r->sweep_at)
        sweep(r);
    struct vmm_run *run = run_for(r, ctx, chunks, n);
    struct vmm_entry *e = run != NULL ? entry_for(r, run, n) : NULL;
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
            memcpy(copy, e->run->chunks + first, *n * sizeof *copy);
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
