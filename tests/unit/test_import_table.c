/* Unit tests of shim/import_table.c. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
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
    };
    return cmocka_run_group_tests_name("import_table", tests, NULL, NULL);
}
