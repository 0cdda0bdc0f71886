/* Audit mode: which code called the IPC export. The first frame of the
 * stack outside nvipcfix, the driver and the CUDA runtime, named by module
 * and symbol (dladdr), e.g. "libfoo.so(export_tensor+0x4c)" or
 * "legacy_ipc+0x1a2b" for a program that exports no symbols. Only audit mode
 * pays for the unwinding. */
#include "call_site.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int is_cuda_or_ours(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base != NULL ? base + 1 : path;
    return strncmp(base, "libnvipcfix", 11) == 0 || strncmp(base, "libcuda.so", 10) == 0 ||
           strncmp(base, "libcudart", 9) == 0;
}

void nvipcfix_describe_caller(char *buf, size_t n)
{
    void *frames[32];
    int depth = backtrace(frames, 32);
    buf[0] = '\0';
    for (int i = 0; i < depth; i++) {
        Dl_info info;
        if (dladdr(frames[i], &info) == 0 || info.dli_fname == NULL ||
            is_cuda_or_ours(info.dli_fname))
            continue;
        const char *base = strrchr(info.dli_fname, '/');
        base = base != NULL ? base + 1 : info.dli_fname;
        /* a return address: the call is the instruction before it */
        uintptr_t at = (uintptr_t)frames[i] - 1;
        if (info.dli_sname != NULL)
            snprintf(buf, n, "%s(%s+0x%lx)", base, info.dli_sname,
                     (unsigned long)(at - (uintptr_t)info.dli_saddr));
        else
            snprintf(buf, n, "%s+0x%lx", base, (unsigned long)(at - (uintptr_t)info.dli_fbase));
        return;
    }
}
