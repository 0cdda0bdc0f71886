#include "audit_sites.h"

#include <stdio.h>
#include <string.h>

void nvipcfix_audit_sites_init(struct nvipcfix_audit_sites *a)
{
    memset(a, 0, sizeof *a);
    pthread_mutex_init(&a->lock, NULL);
}

void nvipcfix_audit_sites_add(struct nvipcfix_audit_sites *a, const char *where)
{
    if (where == NULL || where[0] == '\0')
        where = "(caller not known)";
    pthread_mutex_lock(&a->lock);
    a->exports++;
    int i = 0;
    while (i < a->nsites && strcmp(a->sites[i].where, where) != 0)
        i++;
    if (i == a->nsites && a->nsites < NVIPCFIX_AUDIT_MAX_SITES) {
        snprintf(a->sites[i].where, sizeof a->sites[i].where, "%s", where);
        a->nsites++;
    }
    if (i < a->nsites)
        a->sites[i].count++;
    else
        a->untold++;
    pthread_mutex_unlock(&a->lock);
}

char *nvipcfix_audit_verdict(struct nvipcfix_audit_sites *a, char *buf, size_t n)
{
    pthread_mutex_lock(&a->lock);
    if (a->exports == 0)
        snprintf(buf, n, "this process exported no interior pointer: not affected");
    else
        snprintf(buf, n,
                 "this process exported %lu interior pointer%s from %s%d call site%s: affected "
                 "(receivers without nvipcfix get the block base)",
                 a->exports, a->exports == 1 ? "" : "s", a->untold ? "more than " : "",
                 a->nsites, a->nsites == 1 && !a->untold ? "" : "s");
    pthread_mutex_unlock(&a->lock);
    return buf;
}

int nvipcfix_audit_site(struct nvipcfix_audit_sites *a, int i, char *where, size_t n,
                        unsigned long *count)
{
    int found = 0;
    pthread_mutex_lock(&a->lock);
    /* the i-th busiest, ties in order of first appearance */
    int order[NVIPCFIX_AUDIT_MAX_SITES];
    for (int k = 0; k < a->nsites; k++)
        order[k] = k;
    for (int k = 1; k < a->nsites; k++)
        for (int j = k; j > 0 && a->sites[order[j]].count > a->sites[order[j - 1]].count; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    if (i >= 0 && i < a->nsites) {
        snprintf(where, n, "%s", a->sites[order[i]].where);
        *count = a->sites[order[i]].count;
        found = 1;
    }
    pthread_mutex_unlock(&a->lock);
    return found;
}
