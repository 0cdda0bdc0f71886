/* Sharing VMM memory (cuMemCreate/cuMemMap: PyTorch's expandable segments)
 * through the legacy IPC calls, which the driver refuses for it.
 *
 * Export: the pointer's mapping and the mappings after it, side by side up
 * to the first gap (a tensor may span several: PyTorch maps 2 MiB or 20 MiB
 * chunks next to each other), or, for an export of the reservation's start
 * (programs that send offsets themselves), every chunk mapped in the
 * reservation at its place, are recorded under an export id, and a
 * ticket naming it stands in for the handle. Nothing is held: the record
 * keeps addresses, sizes and each mapping's buffer id (new for every
 * mapping, as measured), so memory freed later is not kept alive, and a
 * mapping replaced since the export is noticed.
 *
 * Open: the importer asks the exporting process for the chunks' POSIX file
 * descriptors (fd_channel.h: only with the ticket's secret, within one
 * deadline, without any lock other IPC calls need), imports them, reserves
 * exactly the span they cover, maps each at its place and grants the
 * current device access. Every chunk of the export is mapped, or none: a
 * chunk freed or replaced since the export, either side at its open-file
 * limit, or the exporter gone or stopped fails the open with a warning
 * that says which; newer memory at the same place is never mapped. */
#ifndef NVIPCFIX_VMM_SHARE_H
#define NVIPCFIX_VMM_SHARE_H

#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "driver_table.h"
#include "fd_channel.h"
#include "vmm_records.h"
#include "vmm_ticket.h"

/* The exchange's deadline unless NVIPCFIX_VMM_TIMEOUT_MS says otherwise:
 * the exporter makes about one descriptor a millisecond (H100). */
#define NVIPCFIX_VMM_TIMEOUT_DEFAULT_MS 5000

struct nvipcfix_vmm_import;
struct nvipcfix_vmm_again;
struct nvipcfix_vmm_whole;

struct nvipcfix_vmm {
    const struct nvipcfix_driver *driver;
    pthread_mutex_t lock; /* imports, identity; never held while waiting on a socket */
    struct nvipcfix_vmm_records records;
    struct nvipcfix_vmm_import *imports; /* mappings made here, by base */
    /* The ranges reserved for those, from before their first chunk is
     * mapped until they are freed, by base: nvipcfix maps and unmaps in
     * them through the driver table, uncounted by the mapping generation,
     * so an export of one's start is never remembered. */
    struct nvipcfix_vmm_import *import_ranges;
    /* Exports made, by the buffer id of the pointer's mapping: a repeated
     * export is a look-up (nvipcfix_vmm_export_again); under again_lock. */
    pthread_mutex_t again_lock;
    struct nvipcfix_vmm_again *again;
    /* Exports of a reservation's start, by the buffer id of the chunk
     * there, each with the mapping generation (driver_table.h) read before
     * its walk: while the generation stands still, a repeated export is a
     * look-up; under again_lock. */
    struct nvipcfix_vmm_whole *whole;
    atomic_size_t again_count;           /* entries of again and whole */
    _Atomic uint64_t again_lo, again_hi; /* the span of the chunks kept (only grows) */
    struct nvipcfix_fd_server server;
    int timeout_ms;             /* one exchange, either side */
    char socket_dir[96];        /* NVIPCFIX_VMM_SOCKET_DIR, or "" (abstract sockets) */
    char server_why[256];       /* why the server did not start (under server.lock) */
    int have_identity; /* pid_ns and boot read (under lock) */
    uint32_t pid_ns;   /* this process's PID namespace (0: not known) */
    uint32_t boot;     /* hash of this machine's boot id (0: not known) */
};

/* Why an export or an open did not go through. */
enum nvipcfix_vmm_error {
    NVIPCFIX_VMM_OK = 0,
    NVIPCFIX_VMM_NOT_VMM,        /* export: not mapped VMM memory */
    NVIPCFIX_VMM_NOT_SHAREABLE,  /* export: allocated without POSIX descriptors */
    NVIPCFIX_VMM_NO_DRIVER,      /* the driver lacks a VMM call */
    NVIPCFIX_VMM_NO_SERVER,      /* export: the descriptor server could not start */
    NVIPCFIX_VMM_NOMEM,
    NVIPCFIX_VMM_OTHER_MACHINE,  /* open: the ticket comes from another boot */
    NVIPCFIX_VMM_CHANNEL,        /* open: the exporter did not hand the descriptors */
    NVIPCFIX_VMM_BAD_OFFSET,     /* open: offset beyond what was served */
    NVIPCFIX_VMM_IMPORT,         /* open: import or map failed in the driver */
    NVIPCFIX_VMM_NOT_AGAIN,      /* export again: not an export made before, as it was */
    NVIPCFIX_VMM_ACCESS,         /* open: access for the current device refused */
    NVIPCFIX_VMM_ERROR_COUNT,
};

void nvipcfix_vmm_init(struct nvipcfix_vmm *v, const struct nvipcfix_driver *driver);

/* The settings: the exchange's deadline (ms; 0 keeps the default) and the
 * socket directory (NULL or "": abstract sockets). Before any export. */
void nvipcfix_vmm_configure(struct nvipcfix_vmm *v, int timeout_ms, const char *socket_dir);

/* Exports ptr as a ticket. ctx is the exporter's current context (the
 * server uses it). Returns NVIPCFIX_VMM_OK or why not. */
enum nvipcfix_vmm_error nvipcfix_vmm_export(struct nvipcfix_vmm *v, CUcontext ctx,
                                            CUdeviceptr ptr,
                                            unsigned char ticket[NVIPCFIX_TICKET_BYTES]);

/* A repeated export, as a look-up: the ticket of an export made before of
 * ptr's mapping, in ctx, if that mapping and those after it that it covers
 * are still the ones exported (one buffer id query each) and nothing was
 * mapped after them since (one more); for an export of a reservation's
 * start, if the driver table's mapping generation has not moved since
 * its walk (one query: the buffer id at ptr). NVIPCFIX_VMM_NOT_AGAIN
 * otherwise (and at once, without a driver call, before any export): then
 * nvipcfix_vmm_export does the whole work. */
enum nvipcfix_vmm_error nvipcfix_vmm_export_again(struct nvipcfix_vmm *v, CUcontext ctx,
                                                  CUdeviceptr ptr,
                                                  unsigned char ticket[NVIPCFIX_TICKET_BYTES]);

/* Nonzero when the ticket is one this process made (it must not ask
 * itself over the socket); *base and *size then give the exported chunks
 * still as they were, or *size is 0 when they are not. */
int nvipcfix_vmm_own(struct nvipcfix_vmm *v, const struct nvipcfix_vmm_ticket *t,
                     uint64_t *base, uint64_t *size);

/* Maps the export a ticket names into this process for the current
 * context. On NVIPCFIX_VMM_OK, [*base, *base + *size) is the new mapping;
 * else *r is the CUDA error to return and why (n bytes) says it in words. */
enum nvipcfix_vmm_error nvipcfix_vmm_map(struct nvipcfix_vmm *v,
                                         const struct nvipcfix_vmm_ticket *t, uint64_t *base,
                                         uint64_t *size, CUresult *r, char *why, size_t n);

/* Undoes nvipcfix_vmm_map. */
CUresult nvipcfix_vmm_unmap(struct nvipcfix_vmm *v, uint64_t base, uint64_t size);

/* Stops the server (waiting for its thread) and frees the records. */
void nvipcfix_vmm_destroy(struct nvipcfix_vmm *v);

/* At exit: no more descriptors are handed out. */
void nvipcfix_vmm_stop(struct nvipcfix_vmm *v);

/* A copy of why the descriptor server did not start (after
 * NVIPCFIX_VMM_NO_SERVER; another thread may be writing it). */
void nvipcfix_vmm_server_why(struct nvipcfix_vmm *v, char *out, size_t n);

/* In a child after fork(): no records, the parent's socket closed. */
void nvipcfix_vmm_forget_after_fork(struct nvipcfix_vmm *v);

/* Exports recorded and requests served and refused, for the statistics. */
void nvipcfix_vmm_counts(struct nvipcfix_vmm *v, size_t *exports, unsigned long *served,
                         unsigned long *refused);

#endif
