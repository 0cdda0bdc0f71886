/* The least any interposer of cuIpcGetMemHandle costs: the call forwarded,
 * unchanged, to the next definition (the driver's), found once at load.
 * `make bench` measures it beside nvipcfix, so that the floor an interposer
 * cannot go under is printed next to the goal. */
#include <cuda.h>
#include <dlfcn.h>

typedef CUresult (*export_fn)(CUipcMemHandle *, CUdeviceptr);

static export_fn next_export;

__attribute__((constructor)) static void find_next(void)
{
    next_export = (export_fn)dlsym(RTLD_NEXT, "cuIpcGetMemHandle");
}

CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr ptr)
{
    return next_export != NULL ? next_export(handle, ptr) : CUDA_ERROR_NOT_INITIALIZED;
}
