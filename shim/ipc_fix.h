/* The fix itself: what export, open and close do, written against a table
 * of driver functions (the real driver in the library, a fake in tests). */
#ifndef NVIPCFIX_IPC_FIX_H
#define NVIPCFIX_IPC_FIX_H

#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>

#include "audit_sites.h"
#include "config.h"
#include "driver_table.h"
#include "export_cache.h"
#include "export_memo.h"
#include "import_table.h"
#include "open_errors.h"
#include "stats.h"
#include "vmm_share.h"

typedef CUresult (*nvipcfix_open_fn)(CUdeviceptr *pdptr, CUipcMemHandle handle,
                                     unsigned int flags);


struct nvipcfix_fix {
    struct nvipcfix_config config;
    const struct nvipcfix_driver *driver;
    struct nvipcfix_export_cache exports;
    /* The answer given to each pointer exported lately (export_memo.h). */
    struct nvipcfix_export_memo memo;
    struct nvipcfix_import_table imports;
    /* Serialises the driver's real opens and last closes, so that two
     * threads never open one block twice and a close never races an open
     * of the same block. Never held on the fast paths. */
    pthread_mutex_t slow;
    struct nvipcfix_stats stats;
    /* Audit mode: where interior exports come from. describe_caller, if
     * set (the library sets it), writes the calling module and symbol. */
    struct nvipcfix_audit_sites audit;
    void (*describe_caller)(char *buf, size_t n);
    /* VMM memory shared through tickets (NVIPCFIX_VMM=1 to export; tickets
     * from others are always opened). */
    struct nvipcfix_vmm vmm;
    /* Causes of failed opens already warned about (one warning each). */
    atomic_flag open_causes_said[NVIPCFIX_CAUSE_COUNT];
};

void nvipcfix_fix_init(struct nvipcfix_fix *fix, const struct nvipcfix_config *config,
                       const struct nvipcfix_driver *driver);
void nvipcfix_fix_destroy(struct nvipcfix_fix *fix);

/* At exit: VMM memory is no longer handed to other processes. */
void nvipcfix_fix_stop(struct nvipcfix_fix *fix);

/* cuIpcGetMemHandle */
CUresult nvipcfix_export(struct nvipcfix_fix *fix, CUipcMemHandle *handle, CUdeviceptr ptr);

/* cuIpcOpenMemHandle and cuIpcOpenMemHandle_v2: real_open is the entry
 * point the caller asked for. */
CUresult nvipcfix_open(struct nvipcfix_fix *fix, nvipcfix_open_fn real_open, CUdeviceptr *pdptr,
                       CUipcMemHandle handle, unsigned int flags);

/* cuIpcCloseMemHandle */
CUresult nvipcfix_close(struct nvipcfix_fix *fix, CUdeviceptr ptr);

/* In a child after fork(): empty tables, fresh locks, zero counts. A child
 * of a CUDA process cannot use its parent's mappings, so nothing of the
 * parent's is kept (its entries are left behind, not freed: another thread
 * may have been changing them when fork() copied the memory). No lock is
 * ever held across fork(), so fork() costs what it costs without nvipcfix
 * and cannot deadlock against the driver's own fork handlers. */
void nvipcfix_fix_forget_after_fork(struct nvipcfix_fix *fix);

#endif
