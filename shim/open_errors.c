#include "open_errors.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

pid_t nvipcfix_handle_exporter_pid(const unsigned char handle[64])
{
    uint64_t v = 0;
    for (int i = 15; i >= 8; i--)
        v = (v << 8) | handle[i];
    /* Linux pids are at most 2^22 */
    return v > 0 && v <= (UINT64_C(1) << 22) ? (pid_t)v : 0;
}

int nvipcfix_pid_visible(pid_t pid)
{
    if (pid <= 0)
        return -1;
    if (kill(pid, 0) == 0 || errno == EPERM)
        return 1;
    return errno == ESRCH ? 0 : -1;
}

enum nvipcfix_open_cause nvipcfix_open_error_cause(CUresult r,
                                                   const struct nvipcfix_open_facts *f,
                                                   char *buf, size_t n)
{
    enum nvipcfix_open_cause c = NVIPCFIX_CAUSE_NONE;
    if (!f->has_context && r == CUDA_ERROR_INVALID_CONTEXT) {
        c = NVIPCFIX_CAUSE_NO_CONTEXT;
        snprintf(buf, n, "cudaIpcOpenMemHandle failed (error %d): no CUDA context is current in "
                         "the opening thread; call cudaSetDevice() (or cudaFree(0)) first", r);
    } else if (r == CUDA_ERROR_INVALID_VALUE &&
               (f->flags & ~(unsigned)CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) != 0) {
        c = NVIPCFIX_CAUSE_FLAGS;
        snprintf(buf, n, "cudaIpcOpenMemHandle failed (error %d): flags 0x%x include bits the "
                         "driver does not know (only cudaIpcMemLazyEnablePeerAccess, 0x1, "
                         "exists); the handle itself may be fine", r, f->flags);
    } else if (f->own_export && r == CUDA_ERROR_INVALID_CONTEXT) {
        c = NVIPCFIX_CAUSE_OWN_EXPORT;
        snprintf(buf, n, "cudaIpcOpenMemHandle failed (error %d): this process exported the "
                         "handle itself, which the driver refuses (UCX #11226); nvipcfix "
                         "answers such opens only while the block is still allocated and "
                         "NVIPCFIX_SELF_OPEN=1", r);
    } else if (f->exporter_visible == 0 && r != CUDA_ERROR_INVALID_DEVICE) {
        c = NVIPCFIX_CAUSE_EXPORTER_GONE;
        snprintf(buf, n, "cudaIpcOpenMemHandle failed (error %d): the exporting process (pid %d "
                         "in the handle) does not exist in this process's PID namespace: it has "
                         "exited, or it runs in another PID namespace (a container without "
                         "--pid=host; vLLM #55906, UCX #11514) or on another machine; legacy "
                         "IPC needs both on one machine and in one PID namespace",
                 r, (int)f->exporter_pid);
    } else if (r == CUDA_ERROR_INVALID_DEVICE) {
        c = NVIPCFIX_CAUSE_DEVICE;
        snprintf(buf, n, "cudaIpcOpenMemHandle failed (error %d): the importer's current device "
                         "cannot open this block; with other CUDA_VISIBLE_DEVICES in the "
                         "two processes the ordinals differ: select the importer's own device "
                         "for the GPU, not the exporter's ordinal (Mooncake #3678)", r);
    } else if (r == CUDA_ERROR_PEER_ACCESS_UNSUPPORTED || r == CUDA_ERROR_TOO_MANY_PEERS ||
               r == CUDA_ERROR_PEER_ACCESS_NOT_ENABLED) {
        c = NVIPCFIX_CAUSE_PEER;
        snprintf(buf, n, "cudaIpcOpenMemHandle failed (error %d): the importer's device cannot "
                         "reach the exporter's GPU (no peer access between them)", r);
    } else if (r == CUDA_ERROR_ALREADY_MAPPED) {
        c = NVIPCFIX_CAUSE_STALE_MAPPING;
        snprintf(buf, n, "cudaIpcOpenMemHandle failed (error %d): a mapping of this handle's "
                         "memory is already open here, typically a stale one of a block the "
                         "exporter freed and allocated again (UCX #3192): close old mappings "
                         "before opening new handles", r);
    } else if (r == CUDA_ERROR_INVALID_HANDLE || r == CUDA_ERROR_INVALID_VALUE) {
        c = NVIPCFIX_CAUSE_CORRUPT;
        snprintf(buf, n, "cudaIpcOpenMemHandle failed (error %d): the driver does not know this "
                         "handle: its block was freed by the exporter, or the 64 bytes were "
                         "changed on the way (a text encoding that stops at a zero byte, a "
                         "truncated copy)", r);
    } else {
        snprintf(buf, n, "cudaIpcOpenMemHandle failed (error %d)", r);
    }
    return c;
}
