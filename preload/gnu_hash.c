#include "gnu_hash.h"

/* Where a d_ptr of the dynamic section points. glibc rewrites them in
 * place to addresses, except in a read-only dynamic section (the vDSO's),
 * where they stay offsets from the object's base; and base (the load
 * address less the link address) may be any value, a library loaded
 * below its link address giving a "negative" one. Of the two readings,
 * d_ptr and base + d_ptr, the table is the one near the dynamic section
 * (an object spans far less than 4 GiB), the other is base away from it:
 * NULL when both or neither are near (a base within 8 GiB of zero but
 * not zero), and the caller says it cannot tell. */
__attribute__((section(".text.startup"))) static const void *
address_of(ElfW(Addr) base, const ElfW(Dyn) *dynamic, ElfW(Addr) d_ptr)
{
    const ElfW(Addr) near = (ElfW(Addr))1 << (sizeof(ElfW(Addr)) == 8 ? 32 : 28);
    ElfW(Addr) at = (ElfW(Addr))dynamic, as_address = d_ptr, as_offset = base + d_ptr;
    if (as_address == as_offset)
        return (const void *)as_address;
    int address_near = as_address - at + near < 2 * near; /* |as_address - at| < near */
    int offset_near = as_offset - at + near < 2 * near;
    if (address_near == offset_near)
        return NULL;
    return (const void *)(address_near ? as_address : as_offset);
}

__attribute__((section(".text.startup"))) uint32_t
nvipcfix_may_define(ElfW(Addr) base, const ElfW(Dyn) *dynamic, const uint32_t *hashes, size_t n)
{
    const uint32_t all = n >= 32 ? UINT32_MAX : ((uint32_t)1 << n) - 1;
    const uint32_t *table = NULL;
    for (const ElfW(Dyn) *d = dynamic; d != NULL && d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_GNU_HASH)
            table = address_of(base, dynamic, d->d_un.d_ptr);
    if (table == NULL)
        return all;
    /* nbuckets, the first hashed symbol, the filter's words (a power of
     * two), its second shift; then the filter, the buckets, the chains. */
    uint32_t nbuckets = table[0], symoffset = table[1], words = table[2], shift = table[3];
    if (nbuckets == 0 || words == 0 || (words & (words - 1)) != 0)
        return all;
    const ElfW(Addr) *filter = (const ElfW(Addr) *)(const void *)(table + 4);
    const uint32_t *buckets = (const uint32_t *)(const void *)(filter + words);
    const uint32_t *chains = buckets + nbuckets;
    const unsigned bits = 8 * sizeof(ElfW(Addr));
    uint32_t may = 0;
    for (size_t k = 0; k < n && k < 32; k++) {
        uint32_t h = hashes[k];
        ElfW(Addr) word = filter[(h / bits) & (words - 1)];
        if (((word >> (h % bits)) & (word >> ((h >> shift) % bits)) & 1) == 0)
            continue; /* the filter: not here */
        uint32_t i = buckets[h % nbuckets];
        if (i == 0)
            continue; /* an empty bucket */
        if (i < symoffset)
            return all;
        /* The chain: the hashes (low bit cleared) of the bucket's symbols,
         * the last one's low bit set. */
        for (const uint32_t *c = chains + (i - symoffset);; c++) {
            if (((*c ^ h) & ~1u) == 0) {
                may |= (uint32_t)1 << k;
                break;
            }
            if (*c & 1u)
                break;
        }
    }
    return may;
}
