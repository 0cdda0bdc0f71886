#include "handle_tag.h"

#include <string.h>

/* The handle's words are little-endian whatever the host is. */
static uint64_t load64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return nvipcfix_le64(v);
}

uint64_t nvipcfix_tag_check_head(const unsigned char head[NVIPCFIX_TAIL_AT])
{
    /* Domain constant: "nvipcfx1". */
    uint64_t h = UINT64_C(0x6e76697063667831);
    for (int i = 0; i < NVIPCFIX_TAIL_AT; i += 8)
        h = nvipcfix_tag_mix(h, load64(head + i));
    return h;
}

uint16_t nvipcfix_tag_check(const unsigned char head[NVIPCFIX_TAIL_AT], uint64_t offset)
{
    return nvipcfix_tag_check_from(nvipcfix_tag_check_head(head), offset);
}

/* A guarded tag's check value is computed in its own domain (a bit of the
 * offset word above any offset), one per guarded style. */
static const struct {
    int byte;
    uint64_t domain;
} guards[] = {
    [NVIPCFIX_TAG_PLAIN] = {-1, 0},
    [NVIPCFIX_TAG_GUARDED] = {NVIPCFIX_GUARD_BYTE, NVIPCFIX_GUARD_DOMAIN},
    [NVIPCFIX_TAG_GUARDED_CHUNK] = {NVIPCFIX_CHUNK_GUARD_BYTE, NVIPCFIX_CHUNK_GUARD_DOMAIN},
};

int nvipcfix_tag_guard_byte(enum nvipcfix_tag_style style)
{
    return (unsigned)style < sizeof guards / sizeof guards[0] ? guards[style].byte : -1;
}

int nvipcfix_tag_encode_style(unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t offset,
                              enum nvipcfix_tag_style style)
{
    return nvipcfix_tag_encode_from(handle, nvipcfix_tag_check_head(handle), offset, style);
}

int nvipcfix_tag_encode(unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t offset)
{
    return nvipcfix_tag_encode_style(handle, offset, NVIPCFIX_TAG_PLAIN);
}

/* Nonzero when the check of a guarded tag of this style verifies; restored
 * then holds the handle with the guarded byte restored. */
static int guarded_tag_verifies(const unsigned char *handle, enum nvipcfix_tag_style style,
                                uint64_t off, uint16_t check, unsigned char *restored)
{
    memcpy(restored, handle, NVIPCFIX_HANDLE_BYTES);
    restored[guards[style].byte] ^= NVIPCFIX_GUARD_MASK;
    return check == nvipcfix_tag_check(restored, off | guards[style].domain);
}

enum nvipcfix_tag_kind nvipcfix_tag_decode_style(const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                                 uint64_t *offset,
                                                 unsigned char native[NVIPCFIX_HANDLE_BYTES],
                                                 enum nvipcfix_tag_style *style)
{
    uint64_t tail = load64(handle + NVIPCFIX_TAIL_AT);
    uint64_t off = tail & NVIPCFIX_MAX_OFFSET;
    uint16_t check = (uint16_t)(tail >> 48);
    unsigned char restored[NVIPCFIX_HANDLE_BYTES];
    enum nvipcfix_tag_kind kind = NVIPCFIX_TAG_FOREIGN;
    enum nvipcfix_tag_style st = NVIPCFIX_TAG_PLAIN;

    /* The flag says plain or guarded, so no tail verifies as both. */
    if (tail == 0) {
        kind = NVIPCFIX_TAG_NONE;
    } else if (off != 0 && !(tail & NVIPCFIX_GUARD_FLAG)) {
        if (check == nvipcfix_tag_check(handle, off))
            kind = NVIPCFIX_TAG_OURS;
    } else if (off != 0) {
        for (st = NVIPCFIX_TAG_GUARDED; st <= NVIPCFIX_TAG_GUARDED_CHUNK; st++)
            if (guarded_tag_verifies(handle, st, off, check, restored)) {
                kind = NVIPCFIX_TAG_OURS;
                break;
            }
        if (kind != NVIPCFIX_TAG_OURS)
            st = NVIPCFIX_TAG_PLAIN;
    }

    *offset = kind == NVIPCFIX_TAG_OURS ? off : 0;
    if (style != NULL)
        *style = st;
    if (native != NULL) {
        memcpy(native, kind == NVIPCFIX_TAG_OURS && st != NVIPCFIX_TAG_PLAIN ? restored : handle,
               NVIPCFIX_HANDLE_BYTES);
        if (kind == NVIPCFIX_TAG_OURS)
            memset(native + NVIPCFIX_TAIL_AT, 0, NVIPCFIX_HANDLE_BYTES - NVIPCFIX_TAIL_AT);
    }
    return kind;
}

enum nvipcfix_tag_kind nvipcfix_tag_decode(const unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                           uint64_t *offset,
                                           unsigned char native[NVIPCFIX_HANDLE_BYTES])
{
    return nvipcfix_tag_decode_style(handle, offset, native, NULL);
}
