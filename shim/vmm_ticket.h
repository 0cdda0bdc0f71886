/* The 64-byte ticket that stands in for an IPC handle of VMM memory
 * (cuMemCreate/cuMemMap, PyTorch's expandable segments), for which the
 * driver has no legacy handle. It names an export in the exporting process;
 * the importer asks that process for the memory's file descriptors.
 *
 * Layout (little-endian), docs/handle-format.md has the table:
 *   0-7   magic "nvipcVM" and format version 1 (no driver handle has it)
 *   8-15  exporter's process id (where drivers put theirs)
 *   16-23 export id: unique in the exporting process, never reused, so it
 *         is also the generation of the memory it names
 *   24-27 zero: a driver refuses the ticket (chunk size 0) with
 *         CUDA_ERROR_INVALID_VALUE, so a receiver without nvipcfix fails
 *   28-31 inode of the exporter's PID namespace
 *   32-39 the exporting process's random secret
 *   40-47 offset of the exported pointer from the first exported chunk
 *   48-55 hash of the exporter's kernel boot id (the machine)
 *   56    exporter's device ordinal (for messages)
 *   57-59 zero
 *   60-63 check of bytes 0-59 */
#ifndef NVIPCFIX_VMM_TICKET_H
#define NVIPCFIX_VMM_TICKET_H

#include <stdint.h>

#define NVIPCFIX_TICKET_BYTES 64

struct nvipcfix_vmm_ticket {
    uint64_t pid;
    uint64_t export_id;
    uint32_t pid_ns;
    uint64_t secret;
    uint64_t offset;
    uint64_t boot;
    uint8_t device;
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
