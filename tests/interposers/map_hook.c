/* A layer that keeps books of VMM mappings (as accounting and checkpoint
 * layers do) and hands its hook out through cuGetProcAddress only: for
 * "cuMemMap" it answers its own function, which counts the call and calls
 * the one the driver gave. Preloaded after nvipcfix, its hook must still
 * see the program's calls (nvipcfix must not put its own wrapper in its
 * place); it says how many it saw at exit. */
#include <cuda.h>

#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#undef cuGetProcAddress

typedef CUresult (*map_fn)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                           unsigned long long);
typedef CUresult (*gpa_v1_fn)(const char *, void **, int, cuuint64_t);
typedef CUresult (*gpa_v2_fn)(const char *, void **, int, cuuint64_t,
                              CUdriverProcAddressQueryResult *);

static _Atomic(map_fn) driver_map;
static atomic_long calls;

static CUresult counted_map(CUdeviceptr ptr, size_t size, size_t offset,
                            CUmemGenericAllocationHandle h, unsigned long long flags)
{
    atomic_fetch_add(&calls, 1);
    map_fn next = atomic_load(&driver_map);
    return next != NULL ? next(ptr, size, offset, h, flags) : CUDA_ERROR_NOT_INITIALIZED;
}

static void take(const char *symbol, void **pfn)
{
    if (symbol != NULL && pfn != NULL && *pfn != NULL && strcmp(symbol, "cuMemMap") == 0) {
        atomic_store(&driver_map, (map_fn)*pfn);
        *pfn = (void *)counted_map;
    }
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int version, cuuint64_t flags)
{
    gpa_v1_fn next = (gpa_v1_fn)dlsym(RTLD_NEXT, "cuGetProcAddress");
    CUresult r = next != NULL ? next(symbol, pfn, version, flags) : CUDA_ERROR_NOT_FOUND;
    if (r == CUDA_SUCCESS)
        take(symbol, pfn);
    return r;
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status)
{
    gpa_v2_fn next = (gpa_v2_fn)dlsym(RTLD_NEXT, "cuGetProcAddress_v2");
    CUresult r = next != NULL ? next(symbol, pfn, version, flags, status) : CUDA_ERROR_NOT_FOUND;
    if (r == CUDA_SUCCESS && (status == NULL || *status == CU_GET_PROC_ADDRESS_SUCCESS))
        take(symbol, pfn);
    return r;
}

__attribute__((destructor)) static void say(void)
{
    fprintf(stderr, "map_hook: %ld cuMemMap calls\n", atomic_load(&calls));
}
