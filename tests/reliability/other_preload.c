/* Another interposer, as profilers and GPU sharing layers are: wraps the
 * driver's IPC calls, finds the next definition with dlsym(RTLD_NEXT) and
 * counts the calls it sees. Preloaded before or after nvipcfix, it must
 * still see calls, and nvipcfix must still fix them. */
#include <cuda.h>

#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>

static atomic_long seen;

typedef CUresult (*get_fn)(CUipcMemHandle *, CUdeviceptr);
typedef CUresult (*open_fn)(CUdeviceptr *, CUipcMemHandle, unsigned int);
typedef CUresult (*close_fn)(CUdeviceptr);

/* Each call counted when it returns: the wrapper does work after the
 * next definition's (as a profiler timing it does), so it is never a tail
 * call and the next definition sees this library as its caller. */
#define NEXT(name, type)                                                     \
    static type next_;                                                       \
    if (next_ == NULL)                                                       \
        next_ = (type)dlsym(RTLD_NEXT, name);                                \
    if (next_ == NULL)                                                       \
        return CUDA_ERROR_NOT_FOUND

static CUresult counted(CUresult r)
{
    atomic_fetch_add(&seen, 1);
    return r;
}

CUresult cuIpcGetMemHandle(CUipcMemHandle *h, CUdeviceptr p)
{
    NEXT("cuIpcGetMemHandle", get_fn);
    return counted(next_(h, p));
}

CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *p, CUipcMemHandle h, unsigned int flags)
{
    NEXT("cuIpcOpenMemHandle_v2", open_fn);
    return counted(next_(p, h, flags));
}

CUresult cuIpcCloseMemHandle(CUdeviceptr p)
{
    NEXT("cuIpcCloseMemHandle", close_fn);
    return counted(next_(p));
}

__attribute__((destructor)) static void report(void)
{
    if (atomic_load(&seen) > 0)
        fprintf(stderr, "other_preload: %ld calls seen\n", atomic_load(&seen));
}
