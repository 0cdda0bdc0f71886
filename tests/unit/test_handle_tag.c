/* Unit tests of shim/handle_tag.c: the bytes nvipcfix writes into a handle. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../shim/handle_tag.h"

/* A handle as the driver lays it out: 56 varied bytes, tail zero. */
static void driver_handle(unsigned char h[64], unsigned seed)
{
    for (int i = 0; i < 56; i++)
        h[i] = (unsigned char)(seed * 131u + (unsigned)i * 29u + (seed >> 3));
    memset(h + 56, 0, 8);
}

static void test_round_trip(void **state)
{
    (void)state;
    const uint64_t offsets[] = {1, 2, 511, 512, 4097, UINT64_C(1) << 20, (UINT64_C(3) << 20) + 7,
                                UINT64_C(1) << 40, UINT64_C(1) << 46, NVIPCFIX_MAX_OFFSET};
    for (unsigned s = 0; s < 50; s++) {
        for (size_t i = 0; i < sizeof offsets / sizeof offsets[0]; i++) {
            unsigned char h[64], orig[64], native[64];
            uint64_t off = 99;
            driver_handle(h, s);
            memcpy(orig, h, 64);
            assert_int_equal(nvipcfix_tag_encode(h, offsets[i]), 0);
            assert_memory_equal(h, orig, 56); /* the driver's bytes are kept */
            assert_int_equal(nvipcfix_tag_decode(h, &off, native), NVIPCFIX_TAG_OURS);
            assert_true(off == offsets[i]);
            assert_memory_equal(native, orig, 64); /* restored exactly */
        }
    }
}

/* A guarded tag: byte 51 (the client handle's top byte) flipped, so that
 * a driver alone refuses the handle in every order of opens; decoding
 * restores every driver byte. */
static void test_guarded_round_trip(void **state)
{
    (void)state;
    for (unsigned s = 0; s < 50; s++) {
        unsigned char h[64], orig[64], native[64], plain[64];
        uint64_t off = 0;
        enum nvipcfix_tag_style style = NVIPCFIX_TAG_PLAIN;
        driver_handle(h, s);
        memcpy(orig, h, 64);
        memcpy(plain, h, 64);
        assert_int_equal(nvipcfix_tag_encode_style(h, 4096 + s, NVIPCFIX_TAG_GUARDED), 0);
        for (int i = 0; i < 56; i++)
            assert_int_equal(h[i] ^ orig[i], i == 51 ? 0x80 : 0);
        assert_int_equal(nvipcfix_tag_decode_style(h, &off, native, &style), NVIPCFIX_TAG_OURS);
        assert_true(off == 4096 + s && style == NVIPCFIX_TAG_GUARDED);
        assert_memory_equal(native, orig, 64);
        /* its own domain: not the plain tag's check value */
        nvipcfix_tag_encode(plain, 4096 + s);
        assert_memory_not_equal(plain + 56, h + 56, 8);
        assert_int_equal(nvipcfix_tag_decode_style(plain, &off, NULL, &style), NVIPCFIX_TAG_OURS);
        assert_int_equal(style, NVIPCFIX_TAG_PLAIN);
        /* a guarded tag whose byte 51 was restored by someone else is foreign */
        h[51] ^= 0x80;
        assert_int_equal(nvipcfix_tag_decode(h, &off, NULL), NVIPCFIX_TAG_FOREIGN);
    }
}

/* Guarded tags of nvipcfix 0.2 (byte 27 flipped) are still read, and
 * restored exactly; a tag with both bytes flipped is neither. */
static void test_chunk_guarded_tags_still_read(void **state)
{
    (void)state;
    for (unsigned s = 0; s < 50; s++) {
        unsigned char h[64], orig[64], native[64];
        uint64_t off = 0;
        enum nvipcfix_tag_style style = NVIPCFIX_TAG_PLAIN;
        driver_handle(h, s);
        memcpy(orig, h, 64);
        assert_int_equal(nvipcfix_tag_encode_style(h, 777 + s, NVIPCFIX_TAG_GUARDED_CHUNK), 0);
        for (int i = 0; i < 56; i++)
            assert_int_equal(h[i] ^ orig[i], i == 27 ? 0x80 : 0);
        assert_int_equal(nvipcfix_tag_decode_style(h, &off, native, &style), NVIPCFIX_TAG_OURS);
        assert_true(off == 777 + s && style == NVIPCFIX_TAG_GUARDED_CHUNK);
        assert_memory_equal(native, orig, 64);
        h[51] ^= 0x80;
        assert_int_equal(nvipcfix_tag_decode(h, &off, NULL), NVIPCFIX_TAG_FOREIGN);
    }
    assert_int_equal(nvipcfix_tag_guard_byte(NVIPCFIX_TAG_PLAIN), -1);
    assert_int_equal(nvipcfix_tag_guard_byte(NVIPCFIX_TAG_GUARDED), 51);
    assert_int_equal(nvipcfix_tag_guard_byte(NVIPCFIX_TAG_GUARDED_CHUNK), 27);
}

/* Guarded only where the handle has the measured layout: type byte 0x06
 * and a client handle 0xc1xxxxxx (flipped, 0x41xxxxxx, it is no client). */
static void test_can_guard(void **state)
{
    (void)state;
    unsigned char h[64] = {0};
    h[32] = 0x06;
    h[48] = 0x1d;
    h[50] = 0xd0;
    h[51] = 0xc1;
    assert_true(nvipcfix_tag_can_guard(h));
    h[32] = 0x07;
    assert_false(nvipcfix_tag_can_guard(h));
    h[32] = 0x06;
    h[51] = 0x41; /* already flipped: guarding again would restore a client */
    assert_false(nvipcfix_tag_can_guard(h));
    h[51] = 0;
    assert_false(nvipcfix_tag_can_guard(h));
}

static void test_offset_zero_is_identity(void **state)
{
    (void)state;
    unsigned char h[64], orig[64], native[64];
    uint64_t off = 99;
    driver_handle(h, 7);
    memcpy(orig, h, 64);
    assert_int_equal(nvipcfix_tag_encode(h, 0), -1);
    assert_memory_equal(h, orig, 64);
    assert_int_equal(nvipcfix_tag_decode(h, &off, native), NVIPCFIX_TAG_NONE);
    assert_true(off == 0);
    assert_memory_equal(native, orig, 64);
}

static void test_largest_offset(void **state)
{
    (void)state;
    unsigned char h[64], native[64];
    uint64_t off;
    driver_handle(h, 3);
    assert_int_equal(nvipcfix_tag_encode(h, NVIPCFIX_MAX_OFFSET + 1), -1);
    assert_true(nvipcfix_tail_is_zero(h));
    assert_int_equal(nvipcfix_tag_encode(h, NVIPCFIX_MAX_OFFSET), 0);
    assert_int_equal(nvipcfix_tag_decode(h, &off, native), NVIPCFIX_TAG_OURS);
    assert_true(off == NVIPCFIX_MAX_OFFSET && off >= (UINT64_C(1) << 46)); /* 128 TiB */
}

static void test_foreign_tail_is_not_ours(void **state)
{
    (void)state;
    unsigned char h[64], orig[64], native[64];
    uint64_t off = 5;
    driver_handle(h, 11);
    h[63] = 0x01; /* a driver that writes byte 63 */
    memcpy(orig, h, 64);
    assert_int_equal(nvipcfix_tag_decode(h, &off, native), NVIPCFIX_TAG_FOREIGN);
    assert_true(off == 0);
    assert_memory_equal(native, orig, 64); /* passed on unchanged */
    /* A tail that is not ours cannot be tagged over. */
    assert_int_equal(nvipcfix_tag_encode(h, 100), -1);
    assert_memory_equal(h, orig, 64);
}

static void test_all_ff_is_not_ours(void **state)
{
    (void)state;
    unsigned char h[64];
    uint64_t off;
    memset(h, 0xff, sizeof h);
    assert_int_equal(nvipcfix_tag_decode(h, &off, NULL), NVIPCFIX_TAG_FOREIGN);
}

static void test_damaged_check(void **state)
{
    (void)state;
    for (int bit = 48; bit < 64; bit++) {
        unsigned char h[64];
        uint64_t off;
        driver_handle(h, 5);
        assert_int_equal(nvipcfix_tag_encode(h, 4096), 0);
        h[56 + bit / 8] ^= (unsigned char)(1u << (bit % 8));
        assert_int_equal(nvipcfix_tag_decode(h, &off, NULL), NVIPCFIX_TAG_FOREIGN);
    }
}

static void test_check_is_bound_to_the_handle(void **state)
{
    (void)state;
    /* A tag moved onto another handle, or a handle changed under its tag,
     * is not accepted: every one of the 56 bytes and the offset count. */
    for (int i = 0; i < 56; i++) {
        unsigned char h[64];
        uint64_t off;
        driver_handle(h, 9);
        assert_int_equal(nvipcfix_tag_encode(h, 123456), 0);
        h[i] ^= 0x40;
        assert_int_equal(nvipcfix_tag_decode(h, &off, NULL), NVIPCFIX_TAG_FOREIGN);
    }
    unsigned char h[64];
    uint64_t off;
    driver_handle(h, 9);
    assert_int_equal(nvipcfix_tag_encode(h, 123456), 0);
    h[56] ^= 0x01; /* offset changed, check kept */
    assert_int_equal(nvipcfix_tag_decode(h, &off, NULL), NVIPCFIX_TAG_FOREIGN);
}

static void test_random_tails_rarely_pass(void **state)
{
    (void)state;
    /* Random non-zero tails pass the 16-bit check about once in 65536. */
    uint64_t x = 0x123456789abcdefULL;
    unsigned accepted = 0, trials = 200000;
    for (unsigned t = 0; t < trials; t++) {
        unsigned char h[64];
        uint64_t off;
        driver_handle(h, t);
        for (int i = 56; i < 64; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            h[i] = (unsigned char)x;
        }
        accepted += nvipcfix_tag_decode(h, &off, NULL) == NVIPCFIX_TAG_OURS;
    }
    assert_true(accepted <= 12); /* expected about 3 */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_guarded_round_trip),
        cmocka_unit_test(test_chunk_guarded_tags_still_read),
        cmocka_unit_test(test_can_guard),
        cmocka_unit_test(test_offset_zero_is_identity),
        cmocka_unit_test(test_largest_offset),
        cmocka_unit_test(test_foreign_tail_is_not_ours),
        cmocka_unit_test(test_all_ff_is_not_ours),
        cmocka_unit_test(test_damaged_check),
        cmocka_unit_test(test_check_is_bound_to_the_handle),
        cmocka_unit_test(test_random_tails_rarely_pass),
    };
    return cmocka_run_group_tests_name("handle_tag", tests, NULL, NULL);
}
