/* Unit tests of shim/vmm_records.c: the exporter's records of VMM exports,
 * shared per run of chunks so that memory stays linear in the chunks
 * exported, with a fresh 128-bit secret per export. */
#include <setjmp.h>
#include <malloc.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "../../shim/vmm_records.h"

#define CHUNK (UINT64_C(2) << 20)
#define BASE UINT64_C(0x7f0000000000)

/* Chunk i of the test's segment; a chunk is stale when its buffer id is
 * in the stale range. */
static uint64_t stale_from = UINT64_MAX, stale_to;

static int unchanged(void *arg, const struct nvipcfix_vmm_chunk *c)
{
    (void)arg;
    return !(c->buffer_id >= stale_from && c->buffer_id < stale_to);
}

static struct nvipcfix_vmm_chunk *segment(size_t n, uint64_t id_base)
{
    struct nvipcfix_vmm_chunk *c = calloc(n, sizeof *c);
    for (size_t i = 0; i < n; i++) {
        c[i].va = BASE + i * CHUNK;
        c[i].size = CHUNK;
        c[i].buffer_id = id_base + i;
    }
    return c;
}

static struct nvipcfix_vmm_records r;

static int setup(void **state)
{
    (void)state;
    stale_from = UINT64_MAX;
    nvipcfix_vmm_records_init(&r, unchanged, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nvipcfix_vmm_records_destroy(&r);
    return 0;
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* 2000 exports of a segment that grows by a chunk each time (PyTorch's
 * expandable segment, exported at its start after every growth): the
 * chunks are held once, each export costs a small record. */
static void test_growing_segment_is_linear(void **state)
{
    (void)state;
    enum { N = 2000 };
    struct nvipcfix_vmm_chunk *c = segment(N, 1);
    unsigned char secret[16], first_secret[16];
    uint32_t id, last_id = 0;
    size_t before = mallinfo2().uordblks;
    double t_first = 0, t_last = 0;
    for (size_t n = 1; n <= N; n++) {
        double t0 = now_us();
        assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, n, &id, secret), 0);
        double t = now_us() - t0;
        if (n == 1) {
            t_first = t;
            memcpy(first_secret, secret, 16);
        }
        if (n == N)
            t_last = t;
        assert_true(id != last_id); /* every growth is a new export... */
        last_id = id;
    }
    size_t held = mallinfo2().uordblks - before, exports, chunks;
    nvipcfix_vmm_records_counts(&r, &exports, &chunks);
    print_message("[ INFO     ] %d re-exports of a growing segment: %zu bytes held (%.0f per "
                  "export), export %.2f us at 1 chunk, %.2f us at %d\n",
                  N, held, (double)held / N, t_first, t_last, N);
    assert_int_equal(exports, N);
    assert_int_equal(chunks, N); /* ...and the chunks are held once */
    assert_true(held < (size_t)N * 1024); /* one record each kept 47.5 MB here */
    /* ...each with its own secret, still known by id */
    assert_int_equal(nvipcfix_vmm_records_secret(&r, last_id, secret), 0);
    assert_memory_not_equal(secret, first_secret, 16);
    free(c);
}

/* The same chunks exported again: the same export, id and secret. */
static void test_same_chunks_same_export(void **state)
{
    (void)state;
    struct nvipcfix_vmm_chunk *c = segment(4, 100);
    unsigned char s1[16], s2[16], s3[16];
    uint32_t a, b, d;
    assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, 4, &a, s1), 0);
    assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, 4, &b, s2), 0);
    assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, 2, &d, s3), 0);
    assert_int_equal(a, b);
    assert_memory_equal(s1, s2, 16);
    assert_int_not_equal(a, d); /* fewer chunks: another export, another secret */
    assert_memory_not_equal(s1, s3, 16);
    size_t n = 9, total;
    CUcontext ctx;
    struct nvipcfix_vmm_chunk *got = nvipcfix_vmm_records_get(&r, d, 0, &n, &total, &ctx);
    assert_true(got != NULL && n == 2 && total == 2);
    assert_memory_equal(got, c, 2 * sizeof *c);
    free(got);
    free(c);
}

/* A segment that shrank and grew again: the exports that covered the freed
 * chunks are forgotten (they could not be served whole), the others stay,
 * and the run's tail is replaced, not copied. */
static void test_shrink_and_regrow(void **state)
{
    (void)state;
    struct nvipcfix_vmm_chunk *c = segment(10, 200);
    unsigned char s[16];
    uint32_t whole, half, again;
    size_t exports, chunks;
    assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, 10, &whole, s), 0);
    assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, 5, &half, s), 0);
    stale_from = 205; /* chunks 5-9 freed, new ones mapped there */
    stale_to = 210;
    for (int i = 5; i < 10; i++)
        c[i].buffer_id = 300 + (uint64_t)i;
    assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, 10, &again, s), 0);
    assert_int_not_equal(again, whole);
    assert_int_equal(nvipcfix_vmm_records_secret(&r, whole, s), -1);
    assert_int_equal(nvipcfix_vmm_records_secret(&r, half, s), 0);
    nvipcfix_vmm_records_counts(&r, &exports, &chunks);
    assert_int_equal(exports, 2);
    assert_int_equal(chunks, 10);
    free(c);
}

/* Exports whose first chunk is gone are swept: the records do not grow. */
static void test_freed_exports_are_swept(void **state)
{
    (void)state;
    unsigned char s[16];
    uint32_t id;
    size_t exports, chunks;
    stale_from = 1000;
    stale_to = 1000;
    for (uint64_t i = 0; i < 3000; i++) {
        struct nvipcfix_vmm_chunk c = {BASE + (i % 7) * CHUNK, CHUNK, 1000 + i};
        stale_to = 1000 + i; /* every earlier chunk is gone */
        assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, &c, 1, &id, s), 0);
    }
    nvipcfix_vmm_records_counts(&r, &exports, &chunks);
    assert_true(exports <= 300 && chunks <= 300);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_growing_segment_is_linear, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_chunks_same_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shrink_and_regrow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_freed_exports_are_swept, setup, teardown),
    };
    return cmocka_run_group_tests_name("vmm_records", tests, NULL, NULL);
}
