/* A proxy library that defines a driver entry point of its own (as
 * tracing and remoting layers do). dlsym on its handle must give its own
 * function, whatever is preloaded. */
#include <cuda.h>

CUresult cuIpcGetMemHandle(CUipcMemHandle *h, CUdeviceptr p)
{
    (void)h;
    (void)p;
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* The same function under a name nobody wraps, to compare with. */
CUresult proxy_own_get(CUipcMemHandle *h, CUdeviceptr p) __attribute__((alias("cuIpcGetMemHandle")));
