/* The 64-byte ticket that stands in for an IPC handle of VMM memory
 * (cuMemCreate/cuMemMap, PyTorch's expandable segments), for which the
 * driver has no legacy handle. It names an export in the exporting process
 * and carries that export's secret: the ticket is the capability, and
 * nothing else (the socket's name, /proc, export ids) grants anything.
 *
 * Layout (little-endian), docs/handle-format.md has the table:
 *   0-7   magic "nvipcVM" and format version 2 (no driver handle has it)
 *   8-11  exporter's process id, in its PID namespace (where drivers put theirs)
 *   12-15 exporter's effective user id: the importer accepts descriptors
 *         only from a server running as that user
 *   16-19 export id, never reused in the exporting process
 *   20-23 the exporter's server nonce (random, public: part of its socket name)
 *   24-27 zero: a driver refuses the ticket (chunk size 0) with
 *         CUDA_ERROR_INVALID_VALUE, so a receiver without nvipcfix fails
 *   28-31 inode of the exporter's PID namespace
 *   32-47 the export's secret: 128 bits from getrandom, one per export
 *   48-53 offset of the exported pointer from the first exported chunk
 *   54    exporter's device ordinal (for messages)
 *   55    flags: bit 0, the server listens in NVIPCFIX_VMM_SOCKET_DIR
 *   56-59 hash of the exporter's kernel boot id (the machine)
 *   60-63 check of bytes 0-59 (against damage, not a secret) */
#ifndef NVIPCFIX_VMM_TICKET_H
#define NVIPCFIX_VMM_TICKET_H

#include <stdint.h>

#define NVIPCFIX_TICKET_BYTES 64
#define NVIPCFIX_TICKET_SECRET_BYTES 16
#define NVIPCFIX_TICKET_MAX_OFFSET ((UINT64_C(1) << 48) - 1)
#define NVIPCFIX_TICKET_IN_DIR 1u /* flags: a filesystem socket */

struct nvipcfix_vmm_ticket {
    uint32_t pid, uid, export_id, nonce, pid_ns, boot;
    unsigned char secret[NVIPCFIX_TICKET_SECRET_BYTES];
    uint64_t offset; /* at most NVIPCFIX_TICKET_MAX_OFFSET */
    uint8_t device, flags;
};

void nvipcfix_vmm_ticket_encode(unsigned char out[NVIPCFIX_TICKET_BYTES],
                                const struct nvipcfix_vmm_ticket *t);

/* 0 and *t filled when in is a well-formed ticket; -1 otherwise. */
int nvipcfix_vmm_ticket_decode(const unsigned char in[NVIPCFIX_TICKET_BYTES],
                               struct nvipcfix_vmm_ticket *t);

/* A well-formed ticket without its offset (and check): every pointer into
 * one export has the same key, so the import table maps the export once. */
void nvipcfix_vmm_ticket_key(const unsigned char ticket[NVIPCFIX_TICKET_BYTES],
                             unsigned char key[NVIPCFIX_TICKET_BYTES]);

#endif
