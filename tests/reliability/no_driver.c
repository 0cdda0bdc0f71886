/* A process on a machine without libcuda.so.1 that still finds the IPC entry
 * point by name (as a plugin probing for CUDA would). Natively the name is
 * not there; under nvipcfix it is, and must answer with an error, not crash. */
#include <cuda.h>

#include <dlfcn.h>
#include <stdio.h>

int main(void)
{
    CUresult (*get)(CUipcMemHandle *, CUdeviceptr) =
        (CUresult(*)(CUipcMemHandle *, CUdeviceptr))dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle");
    if (get == NULL) {
        printf("no cuIpcGetMemHandle\n");
        return 0;
    }
    CUipcMemHandle h;
    printf("cuIpcGetMemHandle -> %d\n", (int)get(&h, 0x1000));
    printf("again -> %d\n", (int)get(&h, 0x1000));
    return 0;
}
