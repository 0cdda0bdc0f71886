/* Unit tests of shim/export_cache.c. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../shim/export_cache.h"

static struct nvipcfix_export_block block(uint64_t base, uint64_t id, unsigned char fill)
{
    struct nvipcfix_export_block b;
    memset(&b, 0, sizeof b);
    b.base = base;
    b.size = 1 << 20;
    b.buffer_id = id;
    memset(b.handle, fill, 56);
    return b;
}

/* Blocks with a buffer id above this are gone; at or below, still live. */
static uint64_t live_up_to = UINT64_MAX;
static long live_calls;

static int live(void *arg, uint64_t base, uint64_t buffer_id)
{
    (void)arg;
    (void)base;
    live_calls++;
    return buffer_id <= live_up_to;
}

static int setup(void **state)
{
    static struct nvipcfix_export_cache c;
    live_up_to = UINT64_MAX;
    live_calls = 0;
    nvipcfix_export_cache_init(&c, live, NULL);
    *state = &c;
    return 0;
}

static int teardown(void **state)
{
    nvipcfix_export_cache_destroy(*state);
    return 0;
}

static void test_put_get(void **state)
{
    struct nvipcfix_export_cache *c = *state;
    unsigned char h[64];
    struct nvipcfix_export_block b = block(0x1000, 7, 0xab);
    assert_int_equal(nvipcfix_export_cache_get(c, 0x1000, 7, h), 0);
    assert_int_equal(nvipcfix_export_cache_put(c, &b), 0);
    assert_int_equal(nvipcfix_export_cache_get(c, 0x1000, 7, h), 1);
    assert_memory_equal(h, b.handle, 64);
    assert_int_equal(nvipcfix_export_cache_get(c, 0x2000, 7, h), 0);
    assert_int_equal(nvipcfix_export_cache_count(c), 1);
}

static void test_reallocation_at_same_address(void **state)
{
    struct nvipcfix_export_cache *c = *state;
    unsigned char h[64];
    struct nvipcfix_export_block old = block(0x1000, 7, 0xab), now = block(0x1000, 8, 0xcd);
    nvipcfix_export_cache_put(c, &old);
    /* The block was freed and another allocated at the same base: a new
     * buffer id, so the old handle must not be returned. */
    assert_int_equal(nvipcfix_export_cache_get(c, 0x1000, 8, h), 0);
    nvipcfix_export_cache_put(c, &now);
    assert_int_equal(nvipcfix_export_cache_get(c, 0x1000, 8, h), 1);
    assert_memory_equal(h, now.handle, 64);
    assert_int_equal(nvipcfix_export_cache_get(c, 0x1000, 7, h), 0);
    assert_int_equal(nvipcfix_export_cache_count(c), 1);
    /* and the old handle no longer names any block */
    struct nvipcfix_export_block found;
    assert_int_equal(nvipcfix_export_cache_find_handle(c, old.handle, &found), 0);
}

static void test_find_by_handle(void **state)
{
    struct nvipcfix_export_cache *c = *state;
    struct nvipcfix_export_block a = block(0x1000, 1, 0x11), b = block(0x9000, 2, 0x22), found;
    nvipcfix_export_cache_put(c, &a);
    nvipcfix_export_cache_put(c, &b);
    assert_int_equal(nvipcfix_export_cache_find_handle(c, b.handle, &found), 1);
    assert_true(found.base == 0x9000 && found.buffer_id == 2 && found.size == (1 << 20));
    unsigned char other[64] = {0x33};
    assert_int_equal(nvipcfix_export_cache_find_handle(c, other, &found), 0);
}

/* 65,536 exports of blocks since freed must not push out a block still
 * allocated: the exporter's open of its own handle depends on it. */
static void test_full_cache_drops_only_dead_blocks(void **state)
{
    struct nvipcfix_export_cache *c = *state;
    struct nvipcfix_export_block keep = block(0x10000, 1, 0x77), found;
    nvipcfix_export_cache_put(c, &keep);
    live_up_to = 1; /* every block after the first is freed once exported */
    for (uint64_t i = 1; i < NVIPCFIX_EXPORT_CACHE_MAX + 10; i++) {
        struct nvipcfix_export_block b = block(0x100000 + i * 0x1000, i + 1, 0);
        memcpy(b.handle, &i, sizeof i);
        assert_int_equal(nvipcfix_export_cache_put(c, &b), 0);
    }
    assert_true(nvipcfix_export_cache_count(c) < 20); /* the dead ones were dropped */
    assert_int_equal(live_calls, NVIPCFIX_EXPORT_CACHE_MAX); /* one sweep */
    assert_int_equal(nvipcfix_export_cache_find_handle(c, keep.handle, &found), 1);
    assert_true(found.base == 0x10000 && found.buffer_id == 1);
    unsigned char h[64];
    uint64_t last = NVIPCFIX_EXPORT_CACHE_MAX + 9;
    assert_int_equal(nvipcfix_export_cache_get(c, 0x100000 + last * 0x1000, last + 1, h), 1);
}

/* All live: the cache grows, and sweeps again only at twice the size. */
static void test_full_cache_of_live_blocks_grows(void **state)
{
    struct nvipcfix_export_cache *c = *state;
    uint64_t n = NVIPCFIX_EXPORT_CACHE_MAX + 100;
    for (uint64_t i = 0; i < n; i++) {
        struct nvipcfix_export_block b = block(0x100000 + i * 0x1000, i + 1, 0);
        memcpy(b.handle, &i, sizeof i);
        nvipcfix_export_cache_put(c, &b);
    }
    assert_int_equal(nvipcfix_export_cache_count(c), n);
    assert_int_equal(live_calls, NVIPCFIX_EXPORT_CACHE_MAX);
    unsigned char h[64];
    assert_int_equal(nvipcfix_export_cache_get(c, 0x100000, 1, h), 1);
}

#define THREADS 8
#define ROUNDS 20000

static void *hammer(void *arg)
{
    struct nvipcfix_export_cache *c = arg;
    long bad = 0;
    for (uint64_t i = 0; i < ROUNDS; i++) {
        uint64_t base = 0x1000 * (i % 64), id = i % 3 + 1;
        struct nvipcfix_export_block b = block(base, id, (unsigned char)(base >> 12 ^ id));
        unsigned char h[64];
        if (nvipcfix_export_cache_get(c, base, id, h)) {
            /* a hit is always the handle recorded for exactly this block */
            if (memcmp(h, b.handle, 64) != 0)
                bad++;
        } else {
            nvipcfix_export_cache_put(c, &b);
        }
    }
    return (void *)bad;
}

static void test_threads(void **state)
{
    struct nvipcfix_export_cache *c = *state;
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, hammer, c);
    long bad = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    assert_int_equal(bad, 0);
    assert_true(nvipcfix_export_cache_count(c) <= 64);
}

/* A handle naming block number n (its base and size derived from n), in
 * bytes 0-7, 40-47 and 16-23 as a driver would place them. */
static struct nvipcfix_export_block numbered(uint64_t n)
{
    struct nvipcfix_export_block b;
    memset(&b, 0, sizeof b);
    b.base = 0x7f0000000000ull + n * 0x200000;
    b.size = 0x1000 * (n % 512 + 1);
    b.buffer_id = n + 1;
    memcpy(b.handle, &b.base, 8);
    memcpy(b.handle + 16, &b.size, 8);
    memcpy(b.handle + 40, &n, 8);
    b.handle[32] = 0x06;
    return b;
}

/* The lock-free look-up by handle: what it answers is the block recorded
 * for exactly those bytes (and the tag check's state of those bytes), also
 * while writers record more blocks than the table holds, so that slots are
 * replaced under the readers; what the table lost, the record behind it
 * still answers. */
#define BLOCKS 20000
static atomic_int writing;

static void *recorder(void *arg)
{
    struct nvipcfix_export_cache *c = arg;
    for (uint64_t n = 0; n < BLOCKS; n++) {
        struct nvipcfix_export_block b = numbered(n);
        nvipcfix_export_cache_put(c, &b);
    }
    atomic_store(&writing, 0);
    return NULL;
}

static void *looker(void *arg)
{
    struct nvipcfix_export_cache *c = arg;
    long bad = 0;
    unsigned seed = 7;
    while (atomic_load(&writing))
        for (int i = 0; i < 1000; i++) {
            struct nvipcfix_export_block b = numbered((uint64_t)rand_r(&seed) % BLOCKS);
            uint64_t base, size, check;
            if (nvipcfix_export_cache_base_of(c, b.handle, &base, &size, &check) &&
                (base != b.base || size != b.size || check != nvipcfix_tag_check_head(b.handle)))
                bad++;
        }
    return (void *)bad;
}

static void test_lookup_by_handle_races_writers(void **state)
{
    struct nvipcfix_export_cache *c = *state;
    pthread_t w, t[4];
    atomic_store(&writing, 1);
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, looker, c);
    pthread_create(&w, NULL, recorder, c);
    pthread_join(w, NULL);
    long bad = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    assert_int_equal(bad, 0);
    /* every block is still answered for (the record keeps live blocks) */
    for (uint64_t n = 0; n < BLOCKS; n++) {
        struct nvipcfix_export_block b = numbered(n);
        uint64_t base = 0, size = 0, check = 0;
        assert_int_equal(nvipcfix_export_cache_base_of(c, b.handle, &base, &size, &check), 1);
        assert_true(base == b.base && size == b.size);
    }
    struct nvipcfix_export_block never = numbered(BLOCKS + 1);
    uint64_t base, size, check;
    assert_int_equal(nvipcfix_export_cache_base_of(c, never.handle, &base, &size, &check), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_put_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reallocation_at_same_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_by_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_cache_drops_only_dead_blocks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_cache_of_live_blocks_grows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lookup_by_handle_races_writers, setup, teardown),
    };
    return cmocka_run_group_tests_name("export_cache", tests, NULL, NULL);
}
