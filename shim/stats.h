/* Counters of what the library did in this process, summed over all
 * threads.
 *
 * They are counted only when the summary line is asked for
 * (NVIPCFIX_STATS=1: quiet is 0). Otherwise a call writes nothing shared
 * but, once per process, the flag that says a call was made (at exit, a
 * forked child that made no IPC call says nothing): an export from many
 * threads then bumps no shared cache line. */
#ifndef NVIPCFIX_STATS_H
#define NVIPCFIX_STATS_H

#include <stdatomic.h>
#include <stddef.h>

struct nvipcfix_stats {
    int quiet;                 /* nonzero: count nothing, only set `used` */
    atomic_int used;           /* a call was seen (also when quiet) */
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

static inline void nvipcfix_stat_add(struct nvipcfix_stats *s, atomic_ulong *counter)
{
    if (!s->quiet)
        atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
    else if (!atomic_load_explicit(&s->used, memory_order_relaxed))
        atomic_store_explicit(&s->used, 1, memory_order_relaxed);
}

#define NVIPCFIX_STAT_ADD(stats, field) nvipcfix_stat_add((stats), &(stats)->field)

/* Zero counts (quiet is kept). */
void nvipcfix_stats_reset(struct nvipcfix_stats *s);

/* Nonzero once any call was counted (or, when quiet, seen). */
int nvipcfix_stats_any(const struct nvipcfix_stats *s);

/* Writes the one-line summary into buf; returns buf. */
char *nvipcfix_stats_format(const struct nvipcfix_stats *s, char *buf, size_t bufsz);

#endif
