/* Memory the library's tables take: bytes of heap per tracked block, per
 * returned pointer and per cached export, measured with mallinfo2 around
 * filling the real tables (shim/import_table.c, shim/export_cache.c). */
#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "../../shim/export_cache.h"
#include "../../shim/import_table.h"

static size_t heap(void)
{
    return mallinfo2().uordblks;
}

int main(void)
{
    enum { BLOCKS = 1000, PER = 100 };
    static int ctx;
    struct nvipcfix_import_table t;
    struct nvipcfix_export_cache c;
    unsigned char h[64];
    uint64_t p;
    int existed;

    nvipcfix_import_table_init(&t);
    size_t h0 = heap();
    for (int b = 0; b < BLOCKS; b++) {
        memset(h, 0, sizeof h);
        memcpy(h, &b, sizeof b);
        nvipcfix_import_insert(&t, &ctx, h, 0x100000000ull + (uint64_t)b * (2u << 20), 2u << 20,
                               0, 0, &p, &existed);
    }
    size_t h1 = heap();
    for (int b = 0; b < BLOCKS; b++) {
        memset(h, 0, sizeof h);
        memcpy(h, &b, sizeof b);
        for (int k = 1; k < PER; k++)
            nvipcfix_import_acquire(&t, &ctx, h, (uint64_t)k * 4096 + 7, &p);
    }
    size_t h2 = heap();
    nvipcfix_import_table_destroy(&t);

    nvipcfix_export_cache_init(&c, NULL, NULL);
    size_t h3 = heap();
    for (int b = 0; b < BLOCKS; b++) {
        struct nvipcfix_export_block e;
        memset(&e, 0, sizeof e);
        e.base = 0x100000000ull + (uint64_t)b * (2u << 20);
        e.buffer_id = (uint64_t)b + 1;
        memcpy(e.handle, &b, sizeof b);
        nvipcfix_export_cache_put(&c, &e);
    }
    size_t h4 = heap();
    nvipcfix_export_cache_destroy(&c);

    printf("RESULT bytes_per_tracked_block %.1f 0\n", (double)(h1 - h0) / BLOCKS);
    printf("RESULT bytes_per_returned_pointer %.1f 0\n",
           (double)(h2 - h1) / (BLOCKS * (PER - 1)));
    printf("RESULT bytes_per_cached_export %.1f 0\n", (double)(h4 - h3) / BLOCKS);
    printf("RESULT heap_for_1000_blocks_100000_pointers_kib %.1f 0\n", (double)(h2 - h0) / 1024);
    return 0;
}
