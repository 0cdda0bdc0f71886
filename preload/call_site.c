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

static const char *base_name(const char *path)
{
    const char *base = strrchr(path, '/');
    return base != NULL ? base + 1 : path;
}

static int is_cuda(const char *path)
{
    const char *base = base_name(path);
    return strncmp(base, "libcuda.so", 10) == 0 || strncmp(base, "libcudart", 9) == 0;
}

/* This function's own module: frames in it are nvipcfix's. */
static int is_ours(const Dl_info *info)
{
    Dl_info self;
    return dladdr((void *)nvipcfix_describe_caller, &self) != 0 &&
           info->dli_fbase == self.dli_fbase;
}

void nvipcfix_describe_caller(char *buf, size_t n)
{
    void *frames[32];
    int depth = backtrace(frames, 32), i = 0;
    Dl_info info;
    buf[0] = '\0';
    /* past the last of nvipcfix's own frames (whatever came before or
     * between them: a sanitizer's interceptor of backtrace itself) */
    for (int j = 0; j < depth; j++)
        if (dladdr(frames[j], &info) && is_ours(&info))
            i = j + 1;
    for (; i < depth; i++) {
        if (dladdr(frames[i], &info) == 0 || info.dli_fname == NULL || is_cuda(info.dli_fname))
            continue;
        const char *base = base_name(info.dli_fname);
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
