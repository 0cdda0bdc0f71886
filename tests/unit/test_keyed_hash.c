/* Unit tests of shim/keyed_hash.c: SipHash-2-4-128 against the reference
 * implementation's vectors (github.com/veorq/SipHash, vectors.h: key
 * 00..0f, message 00..(n-1)), and the constant-time comparison. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../shim/keyed_hash.h"

static const struct {
    size_t n;
    unsigned char tag[16];
} vectors[] = {
    {0, {0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
         0x02, 0x93}},
    {1, {0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99, 0xaf, 0x44, 0x34, 0x76, 0x59, 0x11, 0x9b, 0x22,
         0xfc, 0x45}},
    {8, {0x3b, 0x62, 0xa9, 0xba, 0x62, 0x58, 0xf5, 0x61, 0x0f, 0x83, 0xe2, 0x64, 0xf3, 0x14,
         0x97, 0xb4}},
    {15, {0x54, 0x93, 0xe9, 0x99, 0x33, 0xb0, 0xa8, 0x11, 0x7e, 0x08, 0xec, 0x0f, 0x97, 0xcf,
          0xc3, 0xd9}},
    {63, {0x51, 0x50, 0xd1, 0x77, 0x2f, 0x50, 0x83, 0x4a, 0x50, 0x3e, 0x06, 0x9a, 0x97, 0x3f,
          0xbd, 0x7c}},
};

static void test_reference_vectors(void **state)
{
    (void)state;
    unsigned char key[16], msg[64], tag[16];
    for (int i = 0; i < 16; i++)
        key[i] = (unsigned char)i;
    for (int i = 0; i < 64; i++)
        msg[i] = (unsigned char)i;
    for (size_t v = 0; v < sizeof vectors / sizeof vectors[0]; v++) {
        nvipcfix_siphash128(key, msg, vectors[v].n, tag);
        assert_memory_equal(tag, vectors[v].tag, 16);
    }
}

/* Every key bit and every message bit changes the tag. */
static void test_every_bit_counts(void **state)
{
    (void)state;
    unsigned char key[16] = {0}, msg[40] = {0}, base[16], tag[16];
    nvipcfix_siphash128(key, msg, sizeof msg, base);
    for (int b = 0; b < 128; b++) {
        key[b / 8] ^= (unsigned char)(1u << (b % 8));
        nvipcfix_siphash128(key, msg, sizeof msg, tag);
        key[b / 8] ^= (unsigned char)(1u << (b % 8));
        assert_memory_not_equal(tag, base, 16);
    }
    for (int b = 0; b < 320; b++) {
        msg[b / 8] ^= (unsigned char)(1u << (b % 8));
        nvipcfix_siphash128(key, msg, sizeof msg, tag);
        msg[b / 8] ^= (unsigned char)(1u << (b % 8));
        assert_memory_not_equal(tag, base, 16);
    }
}

static void test_equal_ct(void **state)
{
    (void)state;
    unsigned char a[16] = {1, 2, 3}, b[16] = {1, 2, 3};
    assert_true(nvipcfix_equal_ct(a, b, 16));
    for (int i = 0; i < 16; i++) {
        b[i] ^= 0x80;
        assert_false(nvipcfix_equal_ct(a, b, 16));
        b[i] ^= 0x80;
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_vectors),
        cmocka_unit_test(test_every_bit_counts),
        cmocka_unit_test(test_equal_ct),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
