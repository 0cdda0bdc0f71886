#include "gnu_hash.h"

uint32_t nvipcfix_gnu_hash(const char *name)
{
    uint32_t h = 5381;
    for (const unsigned char *s = (const unsigned char *)name; *s != '\0'; s++)
        h = h * 33 + *s;
    return h;
}

/* A d_ptr of the dynamic section: glibc rewrites them in place to
 * addresses, except in a read-only dynamic section (the vDSO's, some
 * architectures'), where they stay offsets from the object's base. An
 * address lies at or above the base; an offset (a few KiB into the file)
 * below it. */
static const void *address_of(ElfW(Addr) base, ElfW(Addr) d_ptr)
{
    return (const void *)(d_ptr >= base ? d_ptr : base + d_ptr);
}

int nvipcfix_may_define_any(ElfW(Addr) base, const ElfW(Dyn) *dynamic, const uint32_t *hashes,
                            size_t n)
{
    const uint32_t *table = NULL;
    for (const ElfW(Dyn) *d = dynamic; d != NULL && d->d_tag != DT_NULL; d++)
        if (d->d_tag == DT_GNU_HASH)
            table = address_of(base, d->d_un.d_ptr);
    if (table == NULL)
        return 1;
    /* nbuckets, the first hashed symbol, the filter's words (a power of
     * two), its second shift; then the filter, the buckets, the chains. */
    uint32_t nbuckets = table[0], symoffset = table[1], words = table[2], shift = table[3];
    if (nbuckets == 0 || words == 0 || (words & (words - 1)) != 0)
        return 1;
    const ElfW(Addr) *filter = (const ElfW(Addr) *)(const void *)(table + 4);
    const uint32_t *buckets = (const uint32_t *)(const void *)(filter + words);
    const uint32_t *chains = buckets + nbuckets;
    const unsigned bits = 8 * sizeof(ElfW(Addr));
    for (size_t k = 0; k < n; k++) {
        uint32_t h = hashes[k];
        ElfW(Addr) word = filter[(h / bits) & (words - 1)];
        if (((word >> (h % bits)) & (word >> ((h >> shift) % bits)) & 1) == 0)
            continue; /* the filter: not here */
        uint32_t i = buckets[h % nbuckets];
        if (i == 0)
            continue; /* an empty bucket */
        if (i < symoffset)
            return 1;
        /* The chain: the hashes (low bit cleared) of the bucket's symbols,
         * the last one's low bit set. */
        for (const uint32_t *c = chains + (i - symoffset);; c++) {
            if (((*c ^ h) & ~1u) == 0)
                return 1;
            if (*c & 1u)
                break;
        }
    }
    return 0;
}
