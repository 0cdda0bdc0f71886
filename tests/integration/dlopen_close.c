/* dlopen_close: the library loaded with dlopen (not preloaded), used, and
 * unloaded with dlclose before the program exits.
 *
 * The first IPC call registers the library's exit report with atexit,
 * against the library's own __dso_handle; dlclose must run it (glibc's
 * __cxa_finalize, called from the library's .fini_array: the library has
 * no DT_FINI), or the process would call into unmapped code at exit.
 *
 *   dlopen_close LIBRARY
 *
 * Says "export through the library: ok", then "unloaded", on stderr (where
 * the library's report goes, so their order shows), then exits 0 (2 on an
 * error). With NVIPCFIX_STATS=1 the report comes at dlclose, between the
 * two, and never again. */
#include <cuda.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include "../common/test_process.h"

typedef CUresult (*export_fn)(CUipcMemHandle *, CUdeviceptr);

int main(int argc, char **argv)
{
    CUdeviceptr p;
    CUipcMemHandle h;
    if (argc != 2 || tp_use_primary_context(0, NULL) != 0 || cuMemAlloc(&p, 1 << 20) != CUDA_SUCCESS)
        return 2;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "dlopen_close: %s\n", dlerror());
        return 2;
    }
    export_fn export = (export_fn)dlsym(lib, "cuIpcGetMemHandle");
    if (export == NULL || export(&h, p + 4096) != CUDA_SUCCESS)
        return 2;
    fprintf(stderr, "export through the library: ok\n");
    if (dlclose(lib) != 0)
        return 2;
    fprintf(stderr, "unloaded\n");
    cuMemFree(p);
    return 0;
}
