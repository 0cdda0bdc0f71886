#include "stats.h"

#include <stdio.h>

static unsigned long get(const atomic_ulong *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

char *nvipcfix_stats_format(const struct nvipcfix_stats *s, char *buf, size_t bufsz)
{
    snprintf(buf, bufsz,
             "exports=%lu (with offset %lu) opens=%lu (real %lu, table hits %lu) "
             "closes=%lu (real %lu) errors=%lu",
             get(&s->exports), get(&s->exports_tagged), get(&s->opens), get(&s->real_opens),
             get(&s->table_hits), get(&s->closes), get(&s->real_closes), get(&s->errors));
    return buf;
}
