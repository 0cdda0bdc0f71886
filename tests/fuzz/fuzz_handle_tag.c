/* libFuzzer target: the handle decoder (shim/handle_tag.c) on arbitrary
 * 64-byte handles. Whatever the bytes, decoding must classify them
 * consistently and never change what it does not own. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../shim/handle_tag.h"

#define REQUIRE(c)                                                           \
    do {                                                                     \
        if (!(c))                                                            \
            abort();                                                         \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char h[64], native[64], again[64];
    uint64_t off = 12345, off2;
    if (size < 64)
        return 0;
    memcpy(h, data, 64);
    enum nvipcfix_tag_style style = NVIPCFIX_TAG_PLAIN;
    enum nvipcfix_tag_kind k = nvipcfix_tag_decode_style(h, &off, native, &style);
    /* the driver's bytes never change, but a guarded byte restored */
    for (int i = 0; i < 56; i++)
        REQUIRE((native[i] ^ h[i]) ==
                (k == NVIPCFIX_TAG_OURS && i == nvipcfix_tag_guard_byte(style)
                     ? NVIPCFIX_GUARD_MASK
                     : 0));
    switch (k) {
    case NVIPCFIX_TAG_NONE:
        REQUIRE(nvipcfix_tail_is_zero(h) && off == 0 && memcmp(native, h, 64) == 0);
        break;
    case NVIPCFIX_TAG_OURS:
        /* a valid tag is exactly what encoding its offset gives */
        REQUIRE(off >= 1 && off <= NVIPCFIX_MAX_OFFSET && nvipcfix_tail_is_zero(native));
        memcpy(again, native, 64);
        REQUIRE(nvipcfix_tag_encode_style(again, off, style) == 0 && memcmp(again, h, 64) == 0);
        break;
    case NVIPCFIX_TAG_FOREIGN:
        REQUIRE(!nvipcfix_tail_is_zero(h) && off == 0 && memcmp(native, h, 64) == 0);
        break;
    default:
        abort();
    }
    /* Encoding any offset the rest of the input names onto the zero-tailed
     * handle, then decoding, gives that offset back. */
    if (size >= 72) {
        memcpy(&off2, data + 64, 8);
        memcpy(again, h, 56);
        memset(again + 56, 0, 8);
        enum nvipcfix_tag_style want = data[64] & 1 ? NVIPCFIX_TAG_GUARDED : NVIPCFIX_TAG_PLAIN;
        if (nvipcfix_tag_encode_style(again, off2, want) == 0) {
            REQUIRE(off2 >= 1 && off2 <= NVIPCFIX_MAX_OFFSET);
            REQUIRE(nvipcfix_tag_decode_style(again, &off, NULL, &style) == NVIPCFIX_TAG_OURS &&
                    off == off2 && style == want);
        } else {
            REQUIRE(off2 == 0 || off2 > NVIPCFIX_MAX_OFFSET);
        }
    }
    return 0;
}
