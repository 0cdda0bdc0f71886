/* The hash function of the library's uthash tables (uthash's default,
 * Jenkins, costs about 8 instructions a byte; this one about 1). Keys are
 * addresses and (context, handle) pairs. Include before uthash.h. */
#ifndef NVIPCFIX_TABLE_HASH_H
#define NVIPCFIX_TABLE_HASH_H

#include <stdint.h>
#include <string.h>

static inline unsigned nvipcfix_table_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ len, w;
    for (; len >= 8; len -= 8, p += 8) {
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
    }
    for (; len > 0; len--, p++)
        h = (h ^ *p) * 0x94D049BB133111EBull;
    h ^= h >> 32;
    return (unsigned)h;
}

#define HASH_FUNCTION(keyptr, keylen, hashv) ((hashv) = nvipcfix_table_hash((keyptr), (keylen)))

#endif
