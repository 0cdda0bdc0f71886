/* Counters of what the library did in this process, summed over all
 * threads. */
#ifndef NVIPCFIX_STATS_H
#define NVIPCFIX_STATS_H

#include <stdatomic.h>
#include <stddef.h>

struct nvipcfix_stats {
    atomic_ulong exports;      /* export calls seen */
    atomic_ulong exports_tagged; /* of which carried an offset */
    atomic_ulong opens;        /* open calls seen */
    atomic_ulong real_opens;   /* opens that reached the driver */
    atomic_ulong table_hits;   /* opens answered from the import table */
    atomic_ulong closes;       /* close calls seen */
    atomic_ulong real_closes;  /* closes that reached the driver */
    atomic_ulong errors;       /* calls that returned an error */
    atomic_ulong vmm_exports;  /* exports answered with a VMM ticket */
    atomic_ulong vmm_maps;     /* VMM tickets mapped from another process */
};

#define NVIPCFIX_STAT_ADD(stats, field) \
    atomic_fetch_add_explicit(&(stats)->field, 1, memory_order_relaxed)

void nvipcfix_stats_reset(struct nvipcfix_stats *s);

/* Nonzero once any call was counted. */
int nvipcfix_stats_any(const struct nvipcfix_stats *s);

/* Writes the one-line summary into buf; returns buf. */
char *nvipcfix_stats_format(const struct nvipcfix_stats *s, char *buf, size_t bufsz);

#endif
