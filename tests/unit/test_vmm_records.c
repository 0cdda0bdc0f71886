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


/* Tensors in every chunk of a segment that is whole before any is shared
 * (a model allocated, then sent): each export runs from its tensor's chunk
 * to the segment's end; the chunks are still held once. */
static void every_chunk_exported(int last_first)
{
    enum { N = 2000 };
    struct nvipcfix_vmm_chunk *c = segment(N, 5000);
    unsigned char secret[16];
    uint32_t id;
    size_t before = mallinfo2().uordblks, exports, chunks;
    double t0 = now_us();
    for (size_t k = 0; k < N; k++) {
        size_t i = last_first ? N - 1 - k : k;
        assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c + i, N - i, &id, secret), 0);
    }
    double took = now_us() - t0;
    size_t held = mallinfo2().uordblks - before;
    nvipcfix_vmm_records_counts(&r, &exports, &chunks);
    print_message("[ INFO     ] a tensor in each of %d chunks exported, %s: %zu bytes held, "
                  "%zu chunks recorded, %.2f us per export\n", N,
                  last_first ? "last to first" : "first to last", held, chunks, took / N);
    assert_int_equal(exports, N);
    assert_int_equal(chunks, N);
    assert_true(held < (size_t)N * 1024);
    for (size_t i = 0; i < N; i += 499) { /* each export still its own chunks */
        size_t n = N, total;
        CUcontext ctx;
        assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c + i, N - i, &id, secret), 0);
        struct nvipcfix_vmm_chunk *got = nvipcfix_vmm_records_get(&r, id, 0, &n, &total, &ctx);
        assert_true(got != NULL && n == N - i && total == N - i);
        assert_memory_equal(got, c + i, n * sizeof *c);
        free(got);
    }
    nvipcfix_vmm_records_counts(&r, &exports, &chunks);
    assert_int_equal(exports, N); /* the same exports again */
    free(c);
}

static void test_every_chunk_of_a_full_segment(void **state)
{
    (void)state;
    every_chunk_exported(0);
}

static void test_every_chunk_last_to_first(void **state)
{
    (void)state;
    every_chunk_exported(1);
}

/* An export from a later chunk of a run outlives the run's first chunk:
 * when that is freed, the sweep forgets only the exports that needed it. */
static void test_sweep_keeps_exports_past_a_freed_chunk(void **state)
{
    (void)state;
    struct nvipcfix_vmm_chunk *c = segment(8, 700);
    unsigned char s[16];
    uint32_t whole, tail, id;
    assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, 8, &whole, s), 0);
    assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c + 3, 5, &tail, s), 0);
    stale_from = 700; /* chunk 0 freed */
    stale_to = 701;
    for (uint64_t i = 0; i < 300; i++) { /* enough exports for a sweep */
        struct nvipcfix_vmm_chunk one = {BASE + (100 + i) * CHUNK, CHUNK, 1000 + i};
        assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, &one, 1, &id, s), 0);
    }
    assert_int_equal(nvipcfix_vmm_records_secret(&r, whole, s), -1);
    assert_int_equal(nvipcfix_vmm_records_secret(&r, tail, s), 0);
    size_t n = 9, total;
    CUcontext ctx;
    struct nvipcfix_vmm_chunk *got = nvipcfix_vmm_records_get(&r, tail, 0, &n, &total, &ctx);
    assert_true(got != NULL && n == 5 && total == 5);
    assert_memory_equal(got, c + 3, 5 * sizeof *c);
    free(got);
    free(c);
}

/* A reservation exported at its start while a chunk is mapped in a gap
 * and unmapped again, 2000 times (PyTorch's segment, a block allocated and
 * released): back to its first state, it is the first export again
 * (whichever run holds those chunks), and the exports that covered a chunk
 * since unmapped are swept, though their first chunk is still there. */
static void test_reservation_back_to_a_state_is_bounded(void **state)
{
    (void)state;
    static const int place[4] = {0, 2, 5, 9};
    struct nvipcfix_vmm_chunk c[5];
    unsigned char s[16];
    uint32_t base_id = 0, id;
    size_t exports, chunks;
    stale_from = 10000;
    stale_to = 10000;
    for (uint64_t i = 0; i < 2000; i++) {
        uint64_t gap = i % 2 ? 3 : 7; /* mapped at 3 or at 7, then unmapped */
        size_t n = 0;
        for (int k = 0; k < 4; k++) {
            if (gap < (uint64_t)place[k] && n == (size_t)k) {
                c[n].va = BASE + gap * CHUNK;
                c[n].size = CHUNK;
                c[n++].buffer_id = 10000 + i;
            }
            c[n].va = BASE + (uint64_t)place[k] * CHUNK;
            c[n].size = CHUNK;
            c[n++].buffer_id = 1 + (uint64_t)k;
        }
        assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, 5, &id, s), 0);
        stale_to = 10000 + i + 1; /* unmapped */
        for (size_t k = 0; k < 4; k++)
            c[k] = (struct nvipcfix_vmm_chunk){BASE + (uint64_t)place[k] * CHUNK, CHUNK, 1 + k};
        assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, 4, &id, s), 0);
        if (i == 0)
            base_id = id;
        assert_int_equal(id, base_id);
    }
    nvipcfix_vmm_records_counts(&r, &exports, &chunks);
    print_message("[ INFO     ] 2000 chunks mapped in a gap and unmapped, the start exported "
                  "each time: %zu exports and %zu chunks held\n", exports, chunks);
    assert_true(exports <= 300 && chunks <= 1500); /* not one export or run per change */
}

/* Few exports, each of a large reservation (1000 chunks) with a chunk
 * mapped in another gap each time and unmapped after: the records are
 * swept by the chunks they hold too, not only by exports. */
static void test_large_reservation_swept_by_chunks_held(void **state)
{
    (void)state;
    enum { N = 1000, CHANGES = 200 };
    struct nvipcfix_vmm_chunk *c = calloc(N + 1, sizeof *c);
    unsigned char s[16];
    uint32_t id;
    size_t exports, chunks;
    stale_from = 100000;
    stale_to = 100000;
    for (uint64_t i = 0; i < CHANGES; i++) {
        uint64_t gap = 2 * (N - i) - 1; /* odd places, each lower than the last */
        size_t n = 0;
        for (uint64_t k = 0; k < N; k++) {
            if (gap < 2 * k && n == k) {
                c[n++] = (struct nvipcfix_vmm_chunk){BASE + gap * CHUNK, CHUNK, 100000 + i};
            }
            c[n++] = (struct nvipcfix_vmm_chunk){BASE + 2 * k * CHUNK, CHUNK, 1 + k};
        }
        assert_int_equal(nvipcfix_vmm_records_add(&r, NULL, c, N + 1, &id, s), 0);
        stale_to = 100000 + i + 1; /* unmapped again */
    }
    nvipcfix_vmm_records_counts(&r, &exports, &chunks);
    print_message("[ INFO     ] %d exports of a 1000-chunk reservation, each with another chunk "
                  "since unmapped: %zu exports and %zu chunks held\n", CHANGES, exports, chunks);
    assert_true(chunks <= 10 * (N + 1)); /* not one run of 1001 chunks per change */
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_growing_segment_is_linear, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_chunk_of_a_full_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_chunk_last_to_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_chunks_same_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shrink_and_regrow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_freed_exports_are_swept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep_keeps_exports_past_a_freed_chunk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reservation_back_to_a_state_is_bounded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_large_reservation_swept_by_chunks_held, setup,
                                        teardown),
    };
    return cmocka_run_group_tests_name("vmm_records", tests, NULL, NULL);
}
