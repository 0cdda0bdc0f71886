/* Audit mode's record of where interior pointers were exported from: each
 * call site (a short text naming the calling module and symbol) with how
 * many exports it made, and the verdict printed at exit. */
#ifndef NVIPCFIX_AUDIT_SITES_H
#define NVIPCFIX_AUDIT_SITES_H

#include <pthread.h>
#include <stddef.h>

#define NVIPCFIX_AUDIT_MAX_SITES 32
#define NVIPCFIX_AUDIT_SITE_LEN 160

struct nvipcfix_audit_sites {
    pthread_mutex_t lock;
    unsigned long exports;  /* interior pointers exported */
    unsigned long untold;   /* of which from sites past the table's capacity */
    int nsites;
    struct {
        char where[NVIPCFIX_AUDIT_SITE_LEN];
        unsigned long count;
    } sites[NVIPCFIX_AUDIT_MAX_SITES];
};

void nvipcfix_audit_sites_init(struct nvipcfix_audit_sites *a);

/* Counts one interior export from the call site `where` (NULL or "": not
 * known). */
void nvipcfix_audit_sites_add(struct nvipcfix_audit_sites *a, const char *where);

/* The verdict line: "this process exported N interior pointer(s) from M
 * call site(s): affected" or "... no interior pointer ...: not affected". */
char *nvipcfix_audit_verdict(struct nvipcfix_audit_sites *a, char *buf, size_t n);

/* The i-th call site and its count, busiest first; returns 0 when there is
 * none. */
int nvipcfix_audit_site(struct nvipcfix_audit_sites *a, int i, char *where, size_t n,
                        unsigned long *count);

#endif
