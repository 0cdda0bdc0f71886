/* The tag nvipcfix writes into bytes 56-63 of a legacy IPC handle.
 *
 * The driver leaves those 8 bytes zero. An exported interior pointer gets,
 * in them (little-endian 64-bit word):
 *   bits  0-47  the offset of the pointer from its block's base (1 .. 2^48-1)
 *   bits 48-63  a check value computed from bytes 0-55 and the offset
 * docs/handle-format.md explains why a handle nvipcfix did not make is
 * never taken for a tagged one. */
#ifndef NVIPCFIX_HANDLE_TAG_H
#define NVIPCFIX_HANDLE_TAG_H

#include <stdint.h>

#define NVIPCFIX_HANDLE_BYTES 64
#define NVIPCFIX_TAIL_AT 56
#define NVIPCFIX_MAX_OFFSET ((UINT64_C(1) << 48) - 1)

enum nvipcfix_tag_kind {
    NVIPCFIX_TAG_NONE = 0, /* tail all zero: a native handle, offset 0 */
    NVIPCFIX_TAG_OURS,     /* a valid nvipcfix tag */
    NVIPCFIX_TAG_FOREIGN,  /* non-zero tail that is not a valid tag */
};

/* The 16-bit check value for these 56 bytes and this offset. */
uint16_t nvipcfix_tag_check(const unsigned char head[NVIPCFIX_TAIL_AT], uint64_t offset);

/* Nonzero when bytes 56-63 are all zero, i.e. free for a tag. */
int nvipcfix_tail_is_zero(const unsigned char handle[NVIPCFIX_HANDLE_BYTES]);

/* Writes the tag for offset into a handle whose tail is zero.
 * Returns 0, or -1 (handle unchanged) if the tail is not zero or the offset
 * is 0 or above NVIPCFIX_MAX_OFFSET. */
int nvipcfix_tag_encode(unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t offset);

/* Classifies a handle. For NVIPCFIX_TAG_OURS, *offset gets the offset and
 * native (if not NULL) the handle as the driver wrote it (tail zeroed); for
 * the other kinds *offset is 0 and native gets the handle unchanged. */
enum nvipcfix_tag_kind nvipcfix_tag_decode(const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                           uint64_t *offset,
                                           unsigned char native[NVIPCFIX_HANDLE_BYTES]);

#endif
