/* Unit tests of shim/handle_word.h: a handle's words read in pieces are
 * the words memcpy reads, at any address. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../shim/handle_word.h"

static uint64_t next_random(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Every word, every byte of it varied, the handle at each of 8 alignments,
 * against memcpy; xored with a key, 0 exactly when the word is the key. */
static void test_words_are_memcpy_words(void **state)
{
    (void)state;
    uint64_t x = UINT64_C(0x9E3779B97F4A7C15);
    unsigned char buf[64 + 8];
    for (int round = 0; round < 2000; round++) {
        unsigned char *h = buf + round % 8;
        for (int b = 0; b < 64; b++)
            h[b] = (unsigned char)next_random(&x);
        for (int i = 0; i < 8; i++) {
            uint64_t w;
            memcpy(&w, h + 8 * i, sizeof w);
            uint64_t k = next_random(&x);
            assert_true(nvipcfix_handle_word(h, i) == w);
            assert_true(nvipcfix_handle_word_xor(h, i, k) == (w ^ k));
            assert_true(nvipcfix_handle_word_xor(h, i, w) == 0);
        }
    }
}

/* One byte changed anywhere changes its word, and only its word. */
static void test_each_byte_lands_in_its_word(void **state)
{
    (void)state;
    unsigned char h[64];
    for (int b = 0; b < 64; b++)
        h[b] = (unsigned char)(b * 37 + 11);
    uint64_t before[8];
    for (int i = 0; i < 8; i++)
        before[i] = nvipcfix_handle_word(h, i);
    for (int b = 0; b < 64; b++) {
        for (int bit = 0; bit < 8; bit++) {
            h[b] ^= (unsigned char)(1u << bit);
            for (int i = 0; i < 8; i++)
                assert_int_equal(nvipcfix_handle_word_xor(h, i, before[i]) != 0, i == b / 8);
            h[b] ^= (unsigned char)(1u << bit);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_words_are_memcpy_words),
        cmocka_unit_test(test_each_byte_lands_in_its_word),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
