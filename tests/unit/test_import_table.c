/* Unit tests of shim/import_table.c. */
#include <malloc.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/test_deadline.h"
#include "../../shim/import_table.h"

static int ctx_a, ctx_b;

static void handle(unsigned char h[64], unsigned char fill)
{
    memset(h, fill, 56);
    memset(h + 56, 0, 8);
}

static int setup(void **state)
{
    static struct nvipcfix_import_table t;
    nvipcfix_import_table_init(&t);
    *state = &t;
    return 0;
}

static int teardown(void **state)
{
    nvipcfix_import_table_destroy(*state);
    return 0;
}

static void test_insert_then_hit(void **state)
{
    struct nvipcfix_import_table *t = *state;
    unsigned char h[64];
    uint64_t p = 0;
    int existed = 1;
    handle(h, 1);
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, 0, &p), NVIPCFIX_IMPORT_MISS);
    assert_int_equal(nvipcfix_import_insert(t, &ctx_a, h, 0x10000, 4096, 0, 0, &p, &existed),
                     NVIPCFIX_IMPORT_HIT);
    assert_true(p == 0x10000 && existed == 0);
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, 100, &p), NVIPCFIX_IMPORT_HIT);
    assert_true(p == 0x10000 + 100);
    assert_int_equal(nvipcfix_import_refs(t, 0x10000), 2);
    /* another context is another mapping */
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_b, h, 0, &p), NVIPCFIX_IMPORT_MISS);
}

static void test_many_pointers_one_block(void **state)
{
    struct nvipcfix_import_table *t = *state;
    unsigned char h[64];
    uint64_t p;
    int existed;
    struct nvipcfix_released_block out;
    handle(h, 2);
    assert_int_equal(nvipcfix_import_insert(t, &ctx_a, h, 0x20000, 1 << 20, 0, 0, &p, &existed),
                     NVIPCFIX_IMPORT_HIT);
    for (uint64_t off = 1; off <= 100; off++) {
        assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, off * 7, &p), NVIPCFIX_IMPORT_HIT);
        assert_true(p == 0x20000 + off * 7);
    }
    /* the same offset twice: one pointer, two references */
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, 7, &p), NVIPCFIX_IMPORT_HIT);
    assert_int_equal(nvipcfix_import_blocks(t), 1);
    assert_int_equal(nvipcfix_import_pointers(t), 101);
    assert_int_equal(nvipcfix_import_refs(t, 0x20000), 102);

    /* every close but the last is answered from the table */
    assert_int_equal(nvipcfix_import_release(t, 0x20000 + 7, 0, &out), NVIPCFIX_RELEASE_DONE);
    assert_int_equal(nvipcfix_import_release(t, 0x20000 + 7, 0, &out), NVIPCFIX_RELEASE_DONE);
    assert_int_equal(nvipcfix_import_refs(t, 0x20000), 100);
    for (uint64_t off = 2; off <= 100; off++)
        assert_int_equal(nvipcfix_import_release(t, 0x20000 + off * 7, 0, &out),
                         NVIPCFIX_RELEASE_DONE);
    assert_int_equal(nvipcfix_import_release(t, 0x20000, 0, &out),
                     NVIPCFIX_RELEASE_WOULD_BE_LAST);
    assert_int_equal(nvipcfix_import_refs(t, 0x20000), 1);
    assert_int_equal(nvipcfix_import_release(t, 0x20000, 1, &out), NVIPCFIX_RELEASE_LAST);
    assert_true(out.base == 0x20000 && out.origin == NVIPCFIX_ORIGIN_DRIVER);
    assert_int_equal(nvipcfix_import_blocks(t), 0);
    assert_int_equal(nvipcfix_import_pointers(t), 0);
    /* once the block is closed, none of its pointers is ours any more */
    assert_int_equal(nvipcfix_import_release(t, 0x20000 + 7, 1, &out),
                     NVIPCFIX_RELEASE_NOT_OURS);
}

static void test_bad_offsets(void **state)
{
    struct nvipcfix_import_table *t = *state;
    unsigned char h[64], h2[64];
    uint64_t p = 0;
    int existed;
    handle(h, 3);
    assert_int_equal(nvipcfix_import_insert(t, &ctx_a, h, 0x30000, 4096, 0, 4096, &p, &existed),
                     NVIPCFIX_IMPORT_BAD_OFFSET);
    assert_int_equal(nvipcfix_import_blocks(t), 0);
    assert_int_equal(nvipcfix_import_insert(t, &ctx_a, h, 0x30000, 4096, 0, 4095, &p, &existed),
                     NVIPCFIX_IMPORT_HIT);
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, 4096, &p), NVIPCFIX_IMPORT_BAD_OFFSET);
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, UINT64_MAX, &p),
                     NVIPCFIX_IMPORT_BAD_OFFSET);
    assert_int_equal(nvipcfix_import_refs(t, 0x30000 + 4095), 1);
    /* size unknown (0): offset 0 only */
    handle(h2, 4);
    assert_int_equal(nvipcfix_import_insert(t, &ctx_a, h2, 0x40000, 0, 0, 1, &p, &existed),
                     NVIPCFIX_IMPORT_BAD_OFFSET);
    assert_int_equal(nvipcfix_import_insert(t, &ctx_a, h2, 0x40000, 0, 0, 0, &p, &existed),
                     NVIPCFIX_IMPORT_HIT);
}

static void test_insert_existing(void **state)
{
    struct nvipcfix_import_table *t = *state;
    unsigned char h[64];
    uint64_t p;
    int existed;
    struct nvipcfix_released_block out;
    handle(h, 5);
    nvipcfix_import_insert(t, &ctx_a, h, 0x50000, 4096, 1, 0, &p, &existed);
    assert_int_equal(nvipcfix_import_insert(t, &ctx_a, h, 0x99000, 4096, 0, 8, &p, &existed),
                     NVIPCFIX_IMPORT_HIT);
    assert_true(existed == 1 && p == 0x50008);
    assert_int_equal(nvipcfix_import_release(t, 0x50008, 1, &out), NVIPCFIX_RELEASE_DONE);
    assert_int_equal(nvipcfix_import_release(t, 0x50000, 1, &out), NVIPCFIX_RELEASE_LAST);
    assert_int_equal(out.origin, NVIPCFIX_ORIGIN_SELF);
}

/* A close of an address nvipcfix did not return, inside a block it holds:
 * one reference of that block, never a pass to the driver while counted. */
static void test_release_by_address_inside_block(void **state)
{
    struct nvipcfix_import_table *t = *state;
    unsigned char h[64], h2[64];
    uint64_t p, q;
    int existed;
    struct nvipcfix_released_block out;
    handle(h, 6);
    handle(h2, 7);
    nvipcfix_import_insert(t, &ctx_a, h, 0x100000, 0x10000, 0, 4096, &p, &existed);
    nvipcfix_import_insert(t, &ctx_a, h2, 0x200000, 0x10000, 0, 0, &q, &existed);
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, 4096, &p), NVIPCFIX_IMPORT_HIT);
    assert_int_equal(nvipcfix_import_refs(t, 0x100000), 2);
    /* the block base, never returned: one reference */
    assert_int_equal(nvipcfix_import_release(t, 0x100000, 0, &out), NVIPCFIX_RELEASE_DONE);
    assert_int_equal(nvipcfix_import_refs(t, 0x100000 + 4096), 1);
    /* the last one, by another inner address: the caller closes for real */
    assert_int_equal(nvipcfix_import_release(t, 0x100000 + 0xffff, 0, &out),
                     NVIPCFIX_RELEASE_WOULD_BE_LAST);
    assert_int_equal(nvipcfix_import_release(t, 0x100000 + 0xffff, 1, &out),
                     NVIPCFIX_RELEASE_LAST);
    assert_true(out.base == 0x100000);
    assert_int_equal(nvipcfix_import_pointers(t), 1); /* q's only */
    /* just past a block, between blocks, before all: not ours */
    assert_int_equal(nvipcfix_import_release(t, 0x200000 + 0x10000, 1, &out),
                     NVIPCFIX_RELEASE_NOT_OURS);
    assert_int_equal(nvipcfix_import_release(t, 0x150000, 1, &out), NVIPCFIX_RELEASE_NOT_OURS);
    assert_int_equal(nvipcfix_import_release(t, 0x1000, 1, &out), NVIPCFIX_RELEASE_NOT_OURS);
    assert_int_equal(nvipcfix_import_refs(t, 0x200000), 1);
}

/* Open and close on ever new offsets of a block kept open: the table keeps
 * at most NVIPCFIX_IMPORT_IDLE_MAX closed pointers; it does not grow. */
static void test_pointer_entries_do_not_pile_up(void **state)
{
    struct nvipcfix_import_table *t = *state;
    unsigned char h[64];
    uint64_t p, held;
    int existed;
    struct nvipcfix_released_block out;
    handle(h, 8);
    nvipcfix_import_insert(t, &ctx_a, h, 0x100000, 1 << 20, 0, 0, &held, &existed);
    for (uint64_t off = 1; off < 100000; off++) {
        assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, off % (1 << 20), &p),
                         NVIPCFIX_IMPORT_HIT);
        assert_int_equal(nvipcfix_import_release(t, p, 0, &out), NVIPCFIX_RELEASE_DONE);
    }
    assert_true(nvipcfix_import_pointers(t) <= 1 + NVIPCFIX_IMPORT_IDLE_MAX + 1);
    assert_int_equal(nvipcfix_import_refs(t, held), 1);
    /* a closed pointer kept for re-open counts as closed: one more close
     * of it is charged to the pointer still open, the block's last */
    nvipcfix_import_acquire(t, &ctx_a, h, 64, &p);
    nvipcfix_import_acquire(t, &ctx_a, h, 64, &p);
    assert_int_equal(nvipcfix_import_refs(t, held), 3);
    assert_int_equal(nvipcfix_import_release(t, p, 0, &out), NVIPCFIX_RELEASE_DONE);
    assert_int_equal(nvipcfix_import_release(t, p, 0, &out), NVIPCFIX_RELEASE_DONE);
    assert_int_equal(nvipcfix_import_release(t, p, 0, &out), NVIPCFIX_RELEASE_WOULD_BE_LAST);
    assert_int_equal(nvipcfix_import_release(t, p, 1, &out), NVIPCFIX_RELEASE_LAST);
    assert_int_equal(nvipcfix_import_pointers(t), 0);
}

/* A new block at an address the table still covers: the old one was
 * unmapped behind nvipcfix's back, and is dropped rather than answered. */
static void test_overlapping_block_replaces_stale_one(void **state)
{
    struct nvipcfix_import_table *t = *state;
    unsigned char h[64], h2[64];
    uint64_t p;
    int existed;
    size_t blocks;
    uint64_t bytes;
    handle(h, 9);
    handle(h2, 10);
    nvipcfix_import_insert(t, &ctx_a, h, 0x100000, 0x10000, 0, 8, &p, &existed);
    nvipcfix_import_insert(t, &ctx_a, h2, 0x108000, 0x1000, 0, 0, &p, &existed);
    assert_int_equal(nvipcfix_import_blocks(t), 1);
    assert_int_equal(t->stale, 1);
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, 8, &p), NVIPCFIX_IMPORT_MISS);
    nvipcfix_import_usage(t, &blocks, &bytes);
    assert_true(blocks == 1 && bytes == 0x1000);
}

/* A thread of the parent holds the table's lock exclusively when another
 * forks: the child starts with an empty table and a lock it can take. */
static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;

static void *hold_lock(void *arg)
{
    struct nvipcfix_import_table *t = arg;
    pthread_rwlock_wrlock(&t->lock);
    pthread_mutex_lock(&gate); /* until the parent has forked */
    pthread_mutex_unlock(&gate);
    pthread_rwlock_unlock(&t->lock);
    return NULL;
}

static void test_forget_after_fork(void **state)
{
    struct nvipcfix_import_table *t = *state;
    unsigned char h[64];
    uint64_t p;
    int existed;
    handle(h, 11);
    nvipcfix_import_insert(t, &ctx_a, h, 0x100000, 0x10000, 0, 8, &p, &existed);
    pthread_mutex_lock(&gate);
    pthread_t th;
    pthread_create(&th, NULL, hold_lock, t);
    while (pthread_rwlock_tryrdlock(&t->lock) == 0) /* wait for the thread */
        pthread_rwlock_unlock(&t->lock);
    pid_t pid = fork();
    if (pid == 0) {
        test_alarm(20); /* a lock inherited locked would hang here */
        nvipcfix_import_table_forget(t);
        int ok = nvipcfix_import_blocks(t) == 0 &&
                 nvipcfix_import_acquire(t, &ctx_a, h, 8, &p) == NVIPCFIX_IMPORT_MISS &&
                 nvipcfix_import_insert(t, &ctx_a, h, 0x200000, 0x10000, 0, 0, &p, &existed) ==
                     NVIPCFIX_IMPORT_HIT &&
                 p == 0x200000;
        _exit(ok ? 0 : 1);
    }
    pthread_mutex_unlock(&gate);
    pthread_join(th, NULL);
    int status = 0;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(nvipcfix_import_refs(t, 0x100000 + 8), 1); /* the parent's, intact */
}

#define THREADS 8
#define ROUNDS 20000

static struct nvipcfix_import_table *shared;

static void *worker(void *arg)
{
    long id = (long)arg, bad = 0;
    unsigned char hs[64], hp[64];
    handle(hs, 0x70);            /* one block all threads share */
    handle(hp, (unsigned char)(0x80 + id)); /* one of this thread's own */
    uint64_t own_base = 0x1000000 * (uint64_t)(id + 2);
    int existed;
    uint64_t p;
    struct nvipcfix_released_block out;
    for (long i = 0; i < ROUNDS; i++) {
        const unsigned char *h = i % 2 ? hs : hp;
        uint64_t base = i % 2 ? 0x100000 : own_base, off = (uint64_t)(i % 97);
        if (nvipcfix_import_acquire(shared, &ctx_a, h, off, &p) == NVIPCFIX_IMPORT_MISS &&
            nvipcfix_import_insert(shared, &ctx_a, h, base, 4096, 0, off, &p, &existed) !=
                NVIPCFIX_IMPORT_HIT)
            bad++;
        if (p != base + off)
            bad++;
        if (nvipcfix_import_release(shared, p, 1, &out) == NVIPCFIX_RELEASE_NOT_OURS)
            bad++;
    }
    return (void *)bad;
}

static void test_threads(void **state)
{
    shared = *state;
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    long bad = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    assert_int_equal(bad, 0);
    /* every acquire was matched by a release: nothing left */
    assert_int_equal(nvipcfix_import_blocks(shared), 0);
    assert_int_equal(nvipcfix_import_pointers(shared), 0);
}


/* ---- the table as ipc_fix.c uses it, against a counting driver ---------- */

/* A driver that maps a block at its first open and unmaps it at its close,
 * and counts both; nvipcfix's slow lock around them, as in ipc_fix.c. */
#define DBLOCKS 4
#define DSIZE (1u << 20)

static struct {
    pthread_mutex_t slow;
    int mapped[DBLOCKS];
    long opens, closes, wrong; /* wrong: an open of a mapped block, a close of an unmapped one */
} drv = {.slow = PTHREAD_MUTEX_INITIALIZER};

static uint64_t dbase(int b)
{
    return 0x40000000ull + (uint64_t)b * 2 * DSIZE;
}

static void dhandle(unsigned char h[64], int b)
{
    handle(h, (unsigned char)(0xd0 + b));
}

/* nvipcfix_open's road: the table, else (slow lock) a real open recorded. */
static uint64_t fix_open(struct nvipcfix_import_table *t, int b, uint64_t off)
{
    unsigned char h[64];
    uint64_t p = 0;
    int existed = 0;
    dhandle(h, b);
    if (nvipcfix_import_acquire(t, &ctx_a, h, off, &p) == NVIPCFIX_IMPORT_HIT)
        return p;
    pthread_mutex_lock(&drv.slow);
    if (nvipcfix_import_acquire(t, &ctx_a, h, off, &p) != NVIPCFIX_IMPORT_HIT) {
        if (drv.mapped[b])
            drv.wrong++;
        drv.mapped[b] = 1;
        drv.opens++;
        if (nvipcfix_import_insert(t, &ctx_a, h, dbase(b), DSIZE, 0, off, &p, &existed) !=
                NVIPCFIX_IMPORT_HIT ||
            existed)
            drv.wrong++;
    }
    pthread_mutex_unlock(&drv.slow);
    return p;
}

/* nvipcfix_close's road: returns what the table said (NOT_OURS: the close
 * went to the driver). */
static enum nvipcfix_release_result fix_close(struct nvipcfix_import_table *t, uint64_t p)
{
    struct nvipcfix_released_block out;
    enum nvipcfix_release_result rr = nvipcfix_import_release(t, p, 0, &out);
    if (rr != NVIPCFIX_RELEASE_WOULD_BE_LAST)
        return rr;
    pthread_mutex_lock(&drv.slow);
    rr = nvipcfix_import_release(t, p, 1, &out);
    if (rr == NVIPCFIX_RELEASE_LAST) {
        int b = (int)((out.base - dbase(0)) / (2 * DSIZE));
        if (out.base != dbase(b) || !drv.mapped[b])
            drv.wrong++;
        drv.mapped[b] = 0;
        drv.closes++;
    }
    pthread_mutex_unlock(&drv.slow);
    return rr;
}

static void driver_reset(void)
{
    memset(drv.mapped, 0, sizeof drv.mapped);
    drv.opens = drv.closes = drv.wrong = 0;
}

/* Many pointers per block, opened and closed in random orders by several
 * threads: at every pause, each block's count and each pointer's count are
 * exactly the opens not yet closed, a block is mapped exactly while it has
 * references, and every real open is matched by one real close. */
#define RTHREADS 6
#define RPHASES 12
#define RSTEPS 3000
#define ROFFSETS 512 /* distinct offsets a thread uses in each block */

struct held {
    uint64_t p[RSTEPS * RPHASES];
    int n;
};

static struct held held[RTHREADS];
static pthread_barrier_t phase;
static long random_bad;

/* A thread's offsets are its own (id in the low bits): held[] alone says
 * each pointer's count. */
static uint64_t offset_of(long id, unsigned r)
{
    return ((uint64_t)(r % ROFFSETS) * RTHREADS + (uint64_t)id) * 8 % DSIZE;
}

static void check_counts(struct nvipcfix_import_table *t)
{
    for (int b = 0; b < DBLOCKS; b++) {
        uint64_t refs = 0;
        for (int i = 0; i < RTHREADS; i++)
            for (int k = 0; k < held[i].n; k++)
                refs += held[i].p[k] - dbase(b) < DSIZE;
        if (nvipcfix_import_refs(t, dbase(b)) != refs || drv.mapped[b] != (refs > 0))
            random_bad++;
    }
    for (int i = 0; i < RTHREADS; i++)
        for (int k = 0; k < held[i].n; k++) {
            uint64_t n = 0;
            for (int m = 0; m < held[i].n; m++)
                n += held[i].p[m] == held[i].p[k];
            if (nvipcfix_import_pointer_refs(t, held[i].p[k]) != n)
                random_bad++;
        }
    if (drv.wrong != 0)
        random_bad++;
}

static void *random_worker(void *arg)
{
    long id = (long)arg;
    unsigned seed = (unsigned)(id * 7919 + 1);
    struct held *me = &held[id];
    for (int ph = 0; ph < RPHASES; ph++) {
        /* opens outnumber closes in the first half, closes in the second:
         * each block's pointer set grows, then shrinks */
        unsigned open_pct = ph < RPHASES / 2 ? 70 : 30;
        for (int s = 0; s < RSTEPS; s++) {
            if (me->n == 0 || (unsigned)rand_r(&seed) % 100 < open_pct) {
                int b = (int)(rand_r(&seed) % DBLOCKS);
                uint64_t off = offset_of(id, (unsigned)rand_r(&seed));
                uint64_t p = fix_open(shared, b, off);
                if (p != dbase(b) + off)
                    __atomic_add_fetch(&random_bad, 1, __ATOMIC_RELAXED);
                me->p[me->n++] = p;
            } else {
                int k = (int)(rand_r(&seed) % (unsigned)me->n);
                if (fix_close(shared, me->p[k]) == NVIPCFIX_RELEASE_NOT_OURS)
                    __atomic_add_fetch(&random_bad, 1, __ATOMIC_RELAXED);
                me->p[k] = me->p[--me->n];
            }
        }
        pthread_barrier_wait(&phase);
        if (id == 0)
            check_counts(shared);
        pthread_barrier_wait(&phase);
    }
    while (me->n > 0) /* the rest, newest first */
        if (fix_close(shared, me->p[--me->n]) == NVIPCFIX_RELEASE_NOT_OURS)
            __atomic_add_fetch(&random_bad, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void test_random_orders_exact_counts(void **state)
{
    shared = *state;
    driver_reset();
    random_bad = 0;
    memset(held, 0, sizeof held);
    test_alarm(120);
    pthread_barrier_init(&phase, NULL, RTHREADS);
    pthread_t th[RTHREADS];
    for (long i = 0; i < RTHREADS; i++)
        pthread_create(&th[i], NULL, random_worker, (void *)i);
    for (int i = 0; i < RTHREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&phase);
    assert_int_equal(random_bad, 0);
    assert_int_equal(drv.wrong, 0);
    assert_true(drv.opens > 0);
    assert_int_equal(drv.opens, drv.closes);
    assert_int_equal(nvipcfix_import_blocks(shared), 0);
    assert_int_equal(nvipcfix_import_pointers(shared), 0);
}

/* Heap in use, large (mmapped) blocks included. */
static size_t heap_in_use(void)
{
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

/* Whether heap_in_use() sees allocations: glibc's malloc does, a
 * sanitizer's allocator does not. */
static int heap_is_measured(void)
{
    size_t before = heap_in_use();
    void *volatile probe = malloc(1 << 20);
    int seen = heap_in_use() >= before + (1 << 20);
    free(probe);
    return seen;
}

/* A block's pointer set grows to many thousands and shrinks back: the
 * heap it took is given back once they are closed, and it grows again. */
static void test_pointer_set_grows_and_shrinks(void **state)
{
    struct nvipcfix_import_table *t = *state;
    enum { N = 20000 };
    driver_reset();
    int measured = heap_is_measured();
    if (!measured)
        print_message("[ INFO     ] this malloc is not glibc's: heap sizes not checked\n");
    uint64_t held_base = fix_open(t, 0, 0);
    size_t heap0 = heap_in_use();
    for (uint64_t i = 1; i <= N; i++)
        assert_true(fix_open(t, 0, i * 16) == dbase(0) + i * 16);
    assert_int_equal(nvipcfix_import_pointers(t), N + 1);
    assert_int_equal(nvipcfix_import_refs(t, held_base), N + 1);
    size_t heap1 = heap_in_use();
    assert_true(!measured || heap1 - heap0 >= (size_t)N * 12); /* the slots are there */
    /* closed in a scrambled order: every close but the base's is answered
     * from the table, and the block keeps few closed pointers */
    for (uint64_t i = 0; i < N; i++) {
        uint64_t k = 1 + (i * 7919) % N;
        assert_int_equal(fix_close(t, dbase(0) + k * 16), NVIPCFIX_RELEASE_DONE);
        assert_int_equal(nvipcfix_import_pointer_refs(t, dbase(0) + k * 16), 0);
    }
    assert_int_equal(nvipcfix_import_refs(t, held_base), 1);
    assert_true(nvipcfix_import_pointers(t) <= 1 + NVIPCFIX_IMPORT_IDLE_MAX);
    size_t heap2 = heap_in_use();
    assert_true(!measured || heap2 < heap0 + 4096); /* given back */
    /* and again: new pointers and old ones, each with its own count */
    for (uint64_t i = 1; i <= N; i++)
        fix_open(t, 0, i * 24);
    for (uint64_t i = 1; i <= N; i += 1000) {
        assert_int_equal(nvipcfix_import_pointer_refs(t, dbase(0) + i * 24), 1);
        assert_int_equal(nvipcfix_import_pointer_refs(t, dbase(0) + i * 24 + 8), 0);
    }
    assert_int_equal(nvipcfix_import_refs(t, held_base), N + 1);
    for (uint64_t i = 1; i <= N; i++)
        assert_int_equal(fix_close(t, dbase(0) + i * 24), NVIPCFIX_RELEASE_DONE);
    assert_int_equal(drv.opens, 1);
    assert_int_equal(drv.closes, 0);
    assert_int_equal(fix_close(t, held_base), NVIPCFIX_RELEASE_LAST);
    assert_int_equal(drv.closes, 1);
    assert_int_equal(drv.wrong, 0);
    assert_int_equal(nvipcfix_import_pointers(t), 0);
}

/* A pointer at a block's last byte is the block's, with a count of its
 * own; the next byte is another block's, or nobody's. */
static void test_offset_at_last_byte(void **state)
{
    struct nvipcfix_import_table *t = *state;
    unsigned char h[64], h2[64];
    uint64_t p, q, last = DSIZE - 1;
    int existed;
    handle(h, 0x31);
    handle(h2, 0x32);
    assert_int_equal(nvipcfix_import_insert(t, &ctx_a, h, 0x10000000, DSIZE, 0, last, &p, &existed),
                     NVIPCFIX_IMPORT_HIT);
    assert_true(p == 0x10000000 + last);
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, last, &p), NVIPCFIX_IMPORT_HIT);
    assert_int_equal(nvipcfix_import_acquire(t, &ctx_a, h, last + 1, &q),
                     NVIPCFIX_IMPORT_BAD_OFFSET);
    assert_int_equal(nvipcfix_import_pointer_refs(t, p), 2);
    assert_int_equal(nvipcfix_import_refs(t, p), 2);
    struct nvipcfix_released_block out;
    assert_int_equal(nvipcfix_import_release(t, p + 1, 1, &out), NVIPCFIX_RELEASE_NOT_OURS);
    /* a neighbour right after it */
    assert_int_equal(nvipcfix_import_insert(t, &ctx_a, h2, 0x10000000 + DSIZE, DSIZE, 0, 0, &q,
                                            &existed),
                     NVIPCFIX_IMPORT_HIT);
    assert_int_equal(nvipcfix_import_blocks(t), 2); /* not taken for an overlap */
    assert_int_equal(nvipcfix_import_release(t, p, 0, &out), NVIPCFIX_RELEASE_DONE);
    assert_int_equal(nvipcfix_import_pointer_refs(t, p), 1);
    assert_int_equal(nvipcfix_import_refs(t, q), 1);
    assert_int_equal(nvipcfix_import_release(t, p, 0, &out), NVIPCFIX_RELEASE_WOULD_BE_LAST);
    assert_int_equal(nvipcfix_import_release(t, p, 1, &out), NVIPCFIX_RELEASE_LAST);
    assert_true(out.base == 0x10000000);
    assert_int_equal(nvipcfix_import_refs(t, q), 1);
}

/* Closes of addresses nvipcfix never returned, inside a block with many
 * pointers open: each is one reference of the block, and the real close
 * comes once, with the block's last reference, whatever the order. */
static void test_unknown_pointer_inside_held_block(void **state)
{
    struct nvipcfix_import_table *t = *state;
    driver_reset();
    for (uint64_t i = 0; i < 100; i++) /* 100 pointers, 2 references each */
        for (int k = 0; k < 2; k++)
            fix_open(t, 1, i * 4096 + 8);
    assert_int_equal(nvipcfix_import_refs(t, dbase(1)), 200);
    for (int i = 0; i < 199; i++) {
        /* alternate: an unknown address, a returned pointer */
        uint64_t p = i % 2 ? dbase(1) + (uint64_t)(i % 100) * 4096 + 8
                           : dbase(1) + (uint64_t)i * 4096 + 9 + (uint64_t)i;
        assert_int_equal(fix_close(t, p), NVIPCFIX_RELEASE_DONE);
        assert_int_equal(nvipcfix_import_refs(t, dbase(1)), 199 - i);
        /* charged to pointers that had references: the counts still add up */
        uint64_t sum = 0;
        for (uint64_t k = 0; k < 100; k++) {
            assert_true(nvipcfix_import_pointer_refs(t, dbase(1) + k * 4096 + 8) <= 2);
            sum += nvipcfix_import_pointer_refs(t, dbase(1) + k * 4096 + 8);
        }
        assert_int_equal(sum, 199 - i);
    }
    assert_int_equal(drv.closes, 0);
    /* the last reference, through an address never returned */
    assert_int_equal(fix_close(t, dbase(1) + 5), NVIPCFIX_RELEASE_LAST);
    assert_int_equal(drv.opens, 1);
    assert_int_equal(drv.closes, 1);
    assert_int_equal(drv.wrong, 0);
    assert_int_equal(nvipcfix_import_blocks(t), 0);
    /* and now the block is not ours: the driver's */
    assert_int_equal(fix_close(t, dbase(1) + 8), NVIPCFIX_RELEASE_NOT_OURS);

    /* The pointer an unknown close was charged to has no reference left: a
     * close of it later is charged to another one that has, never below 0. */
    for (int trial = 0; trial < 20; trial++) {
        uint64_t p[5];
        for (int k = 0; k < 5; k++)
            p[k] = fix_open(t, 2, (uint64_t)(trial * 5 + k) * 40 + 16);
        assert_int_equal(fix_close(t, dbase(2) + 1), NVIPCFIX_RELEASE_DONE);
        for (int k = 0; k < 3; k++)
            assert_int_equal(fix_close(t, p[k]), NVIPCFIX_RELEASE_DONE);
        uint64_t sum = 0;
        for (int k = 0; k < 5; k++) {
            assert_true(nvipcfix_import_pointer_refs(t, p[k]) <= 1);
            sum += nvipcfix_import_pointer_refs(t, p[k]);
        }
        assert_int_equal(sum, 1);
        assert_int_equal(nvipcfix_import_refs(t, dbase(2)), 1);
        assert_int_equal(fix_close(t, p[3]), NVIPCFIX_RELEASE_LAST);
    }
    assert_int_equal(drv.opens, drv.closes);
    assert_int_equal(drv.wrong, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_insert_then_hit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_pointers_one_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_offsets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_insert_existing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_by_address_inside_block, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pointer_entries_do_not_pile_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overlapping_block_replaces_stale_one, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_forget_after_fork, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_random_orders_exact_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pointer_set_grows_and_shrinks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_offset_at_last_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_pointer_inside_held_block, setup, teardown),
    };
    return cmocka_run_group_tests_name("import_table", tests, NULL, NULL);
}
