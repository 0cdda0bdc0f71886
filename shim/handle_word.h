/* Reading a word of a handle the driver has just written.
 *
 * The export path compares the 64 bytes the driver wrote with the ones it
 * remembers, right after the driver's call, while the driver's stores may
 * still be in the processor's store buffer. A load is answered from that
 * buffer only when one store holds all of its bytes; one that spans two
 * stores waits until they reach the cache. The driver (580.159.04, x86-64)
 * writes a handle field by field: bytes 8-15, 24-31 and 48-55 as two
 * 4-byte stores each, 32-35 as one, 36 and 37 a byte each, 38-39 as one
 * 2-byte store, the other words 8 bytes at a time. Measured on the H200
 * machine (docs/performance.md, "the handle read in the driver's
 * pieces"): after the call, reading the handle as 8 words of 8 bytes
 * cost 9.7 ns a call, and words 1, 3, 4 and 6 alone 2.7-5.3 ns each,
 * where any one piece as the driver wrote it cost nothing measurable.
 *
 * So a word is read here in the driver's pieces, each piece a load of its
 * own. The value is the same whatever the driver does: a driver that
 * writes otherwise only brings the wait back. On a big-endian host, one
 * load per word. test_handle_word checks the values. */
#ifndef NVIPCFIX_HANDLE_WORD_H
#define NVIPCFIX_HANDLE_WORD_H

#include <stdint.h>

/* n bytes at p (1, 2, 4 or 8), little-endian, as one load of its own:
 * the empty asm hides the value from the compiler, which could otherwise
 * merge neighbouring pieces into one wider load. (memcpy: a handle may
 * lie at any address.) */
static inline __attribute__((always_inline)) uint64_t nvipcfix_handle_piece_(const unsigned char *p,
                                                                             unsigned n)
{
    uint64_t v;
    if (n == 8) {
        __builtin_memcpy(&v, p, 8);
    } else if (n == 4) {
        uint32_t x;
        __builtin_memcpy(&x, p, 4);
        v = x;
    } else if (n == 2) {
        uint16_t x;
        __builtin_memcpy(&x, p, 2);
        v = x;
    } else {
        v = *p;
    }
    __asm__("" : "+r"(v));
    return v;
}

/* Word i (0-7) of a handle, bytes 8i to 8i+7 in the host's order (what
 * memcpy of those 8 bytes gives), xor k: 0 when the word is k. Inline,
 * for a constant i. */
static inline __attribute__((always_inline)) uint64_t
nvipcfix_handle_word_xor(const unsigned char *handle, int i, uint64_t k)
{
    const unsigned char *p = handle + 8 * i;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    switch (i) {
    case 1: /* the exporter's process id */
    case 3: /* chunk size in pages, offset in the chunk */
    case 6: /* client handle, memory handle */
        return k ^ nvipcfix_handle_piece_(p, 4) ^ nvipcfix_handle_piece_(p + 4, 4) << 32;
    case 4: /* type, then single bytes */
        return k ^ nvipcfix_handle_piece_(p, 4) ^ nvipcfix_handle_piece_(p + 4, 1) << 32 ^
               nvipcfix_handle_piece_(p + 5, 1) << 40 ^ nvipcfix_handle_piece_(p + 6, 2) << 48;
    default:
        return k ^ nvipcfix_handle_piece_(p, 8);
    }
#else
    return k ^ nvipcfix_handle_piece_(p, 8);
#endif
}

/* Word i itself. */
static inline __attribute__((always_inline)) uint64_t
nvipcfix_handle_word(const unsigned char *handle, int i)
{
    return nvipcfix_handle_word_xor(handle, i, 0);
}

#endif
