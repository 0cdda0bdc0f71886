/* SipHash-2-4 with a 128-bit tag (Aumasson and Bernstein, 2012): a keyed
 * hash (a pseudorandom function of a 128-bit key), used as the MAC of the
 * VMM channel's challenge and response (fd_channel.c). Written here because
 * the library links glibc alone. */
#ifndef NVIPCFIX_KEYED_HASH_H
#define NVIPCFIX_KEYED_HASH_H

#include <stddef.h>
#include <stdint.h>

#define NVIPCFIX_KEY_BYTES 16
#define NVIPCFIX_TAG_BYTES 16

void nvipcfix_siphash128(const unsigned char key[NVIPCFIX_KEY_BYTES], const void *msg,
                         size_t n, unsigned char tag[NVIPCFIX_TAG_BYTES]);

/* n bytes from getrandom (keys, secrets, nonces): 0, or -1 when the
 * kernel gave none. */
int nvipcfix_random_bytes(void *buf, size_t n);

/* Nonzero when a and b (n bytes) are equal; the time taken does not depend
 * on where they differ. */
int nvipcfix_equal_ct(const void *a, const void *b, size_t n);

#endif
