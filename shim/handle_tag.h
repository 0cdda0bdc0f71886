/* The tag nvipcfix writes into bytes 56-63 of a legacy IPC handle.
 *
 * The driver leaves those 8 bytes zero. An exported interior pointer gets,
 * in them (little-endian 64-bit word):
 *   bits  0-46  the offset of the pointer from its block's base (1 .. 2^47-1)
 *   bit     47  set for a guarded tag
 *   bits 48-63  a check value computed from bytes 0-55 and the offset
 * A guarded tag also flips the top bit of byte 51, the top byte of the
 * driver's resource-manager client handle (0xc1d0xxxx), which the driver
 * checks in every order of opens (fresh, and re-open of a block already
 * mapped: docs/handle-format.md has the table measured on an H200): a
 * driver without nvipcfix refuses such a handle with
 * CUDA_ERROR_INVALID_HANDLE instead of opening the block base, and since
 * 0x41d0xxxx is no client handle it can never name another live client.
 * nvipcfix restores the byte before any real call. The check value of a
 * guarded tag is computed over the restored bytes, in its own domain.
 * Guarded tags of nvipcfix 0.2 flipped byte 27 (the chunk size), which a
 * re-open does not check; they are still read. docs/handle-format.md
 * explains why a handle nvipcfix did not make is never taken for a tagged
 * one. */
#ifndef NVIPCFIX_HANDLE_TAG_H
#define NVIPCFIX_HANDLE_TAG_H

#include <stdint.h>

#define NVIPCFIX_HANDLE_BYTES 64
#define NVIPCFIX_TAIL_AT 56
#define NVIPCFIX_MAX_OFFSET ((UINT64_C(1) << 47) - 1)
#define NVIPCFIX_GUARD_FLAG (UINT64_C(1) << 47)
#define NVIPCFIX_GUARD_BYTE 51       /* top byte of the client handle */
#define NVIPCFIX_CHUNK_GUARD_BYTE 27 /* top byte of the chunk size (nvipcfix 0.2) */
#define NVIPCFIX_GUARD_MASK 0x80u
/* A guarded tag's check is computed in its own domain: a bit of the offset
 * word above any offset, one per guarded style. */
#define NVIPCFIX_GUARD_DOMAIN (UINT64_C(1) << 62)
#define NVIPCFIX_CHUNK_GUARD_DOMAIN (UINT64_C(1) << 63)

enum nvipcfix_tag_style {
    NVIPCFIX_TAG_PLAIN = 0,   /* bytes 0-55 untouched */
    NVIPCFIX_TAG_GUARDED = 1, /* byte 51 flipped: refused by a driver alone, in every order */
    NVIPCFIX_TAG_GUARDED_CHUNK = 2, /* byte 27 flipped (nvipcfix 0.2): read, never written
                                     * by the library (a re-open does not check it) */
};

/* The byte a guarded style flips (by NVIPCFIX_GUARD_MASK), or -1. */
int nvipcfix_tag_guard_byte(enum nvipcfix_tag_style style);

enum nvipcfix_tag_kind {
    NVIPCFIX_TAG_NONE = 0, /* tail all zero: a native handle, offset 0 */
    NVIPCFIX_TAG_OURS,     /* a valid nvipcfix tag */
    NVIPCFIX_TAG_FOREIGN,  /* non-zero tail that is not a valid tag */
};

/* A word of a handle as it lies in the bytes (little-endian, whatever
 * the host) in the host's order; the same swap the other way. */
static inline uint64_t nvipcfix_le64(uint64_t word)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap64(word);
#endif
    return word;
}

/* The 16-bit check value for these 56 bytes and this offset. */
uint16_t nvipcfix_tag_check(const unsigned char head[NVIPCFIX_TAIL_AT], uint64_t offset);

/* The same in two steps: the check's state after the 56 bytes (a function
 * of the handle alone, which the export cache keeps beside each handle),
 * then the check for an offset from that state. */
uint64_t nvipcfix_tag_check_head(const unsigned char head[NVIPCFIX_TAIL_AT]);

/* One step of the check: a word mixed into the state. */
static inline uint64_t nvipcfix_tag_mix(uint64_t h, uint64_t v)
{
    h ^= v;
    h *= UINT64_C(0x9E3779B97F4A7C15);
    return h ^ (h >> 31);
}

/* Inline: the export path computes it on every interior export. */
static inline uint16_t nvipcfix_tag_check_from(uint64_t head_state, uint64_t offset)
{
    uint64_t h = nvipcfix_tag_mix(head_state, offset);
    /* Final avalanche (splitmix64's), then fold to 16 bits. */
    h ^= h >> 30;
    h *= UINT64_C(0xBF58476D1CE4E5B9);
    h ^= h >> 27;
    h *= UINT64_C(0x94D049BB133111EB);
    h ^= h >> 31;
    return (uint16_t)(h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48));
}

/* Nonzero when bytes 56-63 are all zero, i.e. free for a tag (inline: the
 * export path asks it on every call). */
static inline int nvipcfix_tail_is_zero(const unsigned char handle[NVIPCFIX_HANDLE_BYTES])
{
    uint64_t tail;
    __builtin_memcpy(&tail, handle + NVIPCFIX_TAIL_AT, sizeof tail);
    return tail == 0;
}

/* Writes a plain tag for offset into a handle whose tail is zero.
 * Returns 0, or -1 (handle unchanged) if the tail is not zero or the offset
 * is 0 or above NVIPCFIX_MAX_OFFSET. */
int nvipcfix_tag_encode(unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t offset);

/* The same with a tag of the given style. */
int nvipcfix_tag_encode_style(unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t offset,
                              enum nvipcfix_tag_style style);

/* The same, given nvipcfix_tag_check_head(handle) already computed
 * (inline: the export path's). */
static inline int nvipcfix_tag_encode_from(unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                           uint64_t head_state, uint64_t offset,
                                           enum nvipcfix_tag_style style)
{
    int byte;
    uint64_t domain;
    switch (style) {
    case NVIPCFIX_TAG_PLAIN: byte = -1; domain = 0; break;
    case NVIPCFIX_TAG_GUARDED: byte = NVIPCFIX_GUARD_BYTE; domain = NVIPCFIX_GUARD_DOMAIN; break;
    case NVIPCFIX_TAG_GUARDED_CHUNK:
        byte = NVIPCFIX_CHUNK_GUARD_BYTE;
        domain = NVIPCFIX_CHUNK_GUARD_DOMAIN;
        break;
    default: return -1;
    }
    if (offset == 0 || offset > NVIPCFIX_MAX_OFFSET || !nvipcfix_tail_is_zero(handle))
        return -1;
    uint64_t tail = nvipcfix_le64(offset | (byte >= 0 ? NVIPCFIX_GUARD_FLAG : 0) |
                                  ((uint64_t)nvipcfix_tag_check_from(head_state, offset | domain)
                                   << 48));
    __builtin_memcpy(handle + NVIPCFIX_TAIL_AT, &tail, sizeof tail);
    if (byte >= 0)
        handle[byte] ^= NVIPCFIX_GUARD_MASK;
    return 0;
}

/* Nonzero when a driver's handle has the layout measured on real drivers
 * (type byte 0x06 at 32, a client handle 0xc1xxxxxx in bytes 48-51), so
 * that a guarded tag is known to be refused by a driver without nvipcfix
 * and never to name another client. */
static inline int nvipcfix_tag_can_guard(const unsigned char handle[NVIPCFIX_HANDLE_BYTES])
{
    return handle[32] == 0x06 && handle[NVIPCFIX_GUARD_BYTE] == 0xc1;
}

/* Classifies a handle. For NVIPCFIX_TAG_OURS, *offset gets the offset and
 * native (if not NULL) the handle as the driver wrote it (tail zeroed, a
 * guarded byte restored); for the other kinds *offset is 0 and native gets
 * the handle unchanged. */
enum nvipcfix_tag_kind nvipcfix_tag_decode(const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                           uint64_t *offset,
                                           unsigned char native[NVIPCFIX_HANDLE_BYTES]);

/* The same, also telling the style of a tag of ours (style may be NULL). */
enum nvipcfix_tag_kind nvipcfix_tag_decode_style(const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                                 uint64_t *offset,
                                                 unsigned char native[NVIPCFIX_HANDLE_BYTES],
                                                 enum nvipcfix_tag_style *style);

#endif
