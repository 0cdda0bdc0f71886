#include "stats.h"

#include <stdio.h>
#include <string.h>

static unsigned long get(const atomic_ulong *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

void nvipcfix_stats_reset(struct nvipcfix_stats *s)
{
    atomic_ulong *all[] = {&s->exports,   &s->exports_tagged, &s->opens,       &s->real_opens,
                           &s->table_hits, &s->closes,        &s->real_closes, &s->errors,
                           &s->vmm_exports, &s->vmm_maps};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        atomic_store_explicit(all[i], 0, memory_order_relaxed);
    atomic_store_explicit(&s->used, 0, memory_order_relaxed);
}

int nvipcfix_stats_any(const struct nvipcfix_stats *s)
{
    return atomic_load_explicit(&s->used, memory_order_relaxed) || get(&s->exports) ||
           get(&s->opens) || get(&s->closes);
}

char *nvipcfix_stats_format(const struct nvipcfix_stats *s, char *buf, size_t bufsz)
{
    snprintf(buf, bufsz,
             "exports=%lu (with offset %lu) opens=%lu (real %lu, table hits %lu) "
             "closes=%lu (real %lu) errors=%lu",
             get(&s->exports), get(&s->exports_tagged), get(&s->opens), get(&s->real_opens),
             get(&s->table_hits), get(&s->closes), get(&s->real_closes), get(&s->errors));
    size_t len = strlen(buf);
    if ((get(&s->vmm_exports) || get(&s->vmm_maps)) && len < bufsz)
        snprintf(buf + len, bufsz - len, " vmm exports=%lu vmm maps=%lu", get(&s->vmm_exports),
                 get(&s->vmm_maps));
    return buf;
}
