/* A GPU-sharing interposer modelled on HAMi-core and vgpu-manager, for the
 * coexistence tests: preloaded, it defines its own (unversioned) dlsym,
 * answers the cu* names it hooks itself (through dlsym on any handle and
 * through cuGetProcAddress), and enforces a device-memory quota in its
 * cuMemAlloc_v2 hook. It reaches the driver through libcuda.so.1's own
 * functions, found with glibc's dlsym, as those libraries do.
 *
 *   GPU_SHARE_LIMIT_MIB=N  allocations past N MiB in all fail with
 *                          CUDA_ERROR_OUT_OF_MEMORY (default: no limit)
 * At exit it prints "gpu_share: N allocations refused, M IPC opens seen". */
#include <cuda.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#undef cuGetProcAddress

#define EXPORT __attribute__((visibility("default")))
/* On the dlsym path: a sanitizer runtime calls dlsym before it is set up,
 * so that code must not be instrumented (make test-asan, test-tsan). */
#define UNINSTRUMENTED __attribute__((no_sanitize("address", "undefined", "thread")))

typedef void *(*dlsym_fn)(void *, const char *);
typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*free_fn)(CUdeviceptr);
typedef CUresult (*open_fn)(CUdeviceptr *, CUipcMemHandle, unsigned int);
typedef CUresult (*gpa_fn)(const char *, void **, int, cuuint64_t,
                           CUdriverProcAddressQueryResult *);

static dlsym_fn real_dlsym;
static void *libcuda;
static alloc_fn real_alloc;
static free_fn real_free;
static open_fn real_open;
static gpa_fn real_gpa;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static atomic_ulong used, refused, opens;
static unsigned long limit = (unsigned long)-1;

/* glibc's dlsym. Only this runs inside the dlsym hook: a sanitizer runtime
 * calls dlsym while it sets itself up, before dlopen may be used. */
UNINSTRUMENTED static dlsym_fn glibc_dlsym(void)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    dlsym_fn f = __atomic_load_n(&real_dlsym, __ATOMIC_ACQUIRE);
    for (size_t i = 0; i < 3 && f == NULL; i++)
        f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    __atomic_store_n(&real_dlsym, f, __ATOMIC_RELEASE);
    return f;
}

/* The driver's own functions, on the first call of a hook. */
static void init(void)
{
    glibc_dlsym();
    libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (libcuda != NULL) {
        real_alloc = (alloc_fn)real_dlsym(libcuda, "cuMemAlloc_v2");
        real_free = (free_fn)real_dlsym(libcuda, "cuMemFree_v2");
        real_open = (open_fn)real_dlsym(libcuda, "cuIpcOpenMemHandle_v2");
        real_gpa = (gpa_fn)real_dlsym(libcuda, "cuGetProcAddress_v2");
    }
    const char *l = getenv("GPU_SHARE_LIMIT_MIB");
    if (l != NULL)
        limit = strtoul(l, NULL, 10) << 20;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n)
{
    pthread_once(&once, init);
    if (real_alloc == NULL)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (atomic_fetch_add(&used, n) + n > limit) {
        atomic_fetch_sub(&used, n);
        atomic_fetch_add(&refused, 1);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    CUresult r = real_alloc(p, n);
    if (r != CUDA_SUCCESS)
        atomic_fetch_sub(&used, n);
    return r;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr p)
{
    pthread_once(&once, init);
    return real_free != NULL ? real_free(p) : CUDA_ERROR_NOT_INITIALIZED;
}

EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *p, CUipcMemHandle h, unsigned int flags)
{
    pthread_once(&once, init);
    atomic_fetch_add(&opens, 1);
    return real_open != NULL ? real_open(p, h, flags) : CUDA_ERROR_NOT_INITIALIZED;
}

/* The hooks by name, as such libraries keep them. */
UNINSTRUMENTED static int same(const char *a, const char *b)
{
    while (*a != '\0' && *a == *b)
        a++, b++;
    return *a == *b;
}

UNINSTRUMENTED static void *hooked(const char *name)
{
    if (same(name, "cuMemAlloc_v2") || same(name, "cuMemAlloc"))
        return (void *)cuMemAlloc_v2;
    if (same(name, "cuMemFree_v2") || same(name, "cuMemFree"))
        return (void *)cuMemFree_v2;
    if (same(name, "cuIpcOpenMemHandle_v2"))
        return (void *)cuIpcOpenMemHandle_v2;
    return NULL;
}

EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                    cuuint64_t flags, CUdriverProcAddressQueryResult *status)
{
    pthread_once(&once, init);
    if (real_gpa == NULL)
        return CUDA_ERROR_NOT_INITIALIZED;
    CUresult r = real_gpa(symbol, pfn, version, flags, status);
    void *mine = symbol != NULL ? hooked(symbol) : NULL;
    if (r == CUDA_SUCCESS && mine != NULL)
        *pfn = mine;
    if (r == CUDA_SUCCESS && symbol != NULL && same(symbol, "cuGetProcAddress") &&
        version >= 12000)
        *pfn = (void *)cuGetProcAddress_v2;
    return r;
}

/* Every look-up of a cu* name it hooks, on any handle, gets its hook. */
UNINSTRUMENTED EXPORT void *dlsym(void *handle, const char *name)
{
    const char *n = name; /* declared nonnull; a caller may still pass NULL */
    if (n != NULL && n[0] == 'c' && n[1] == 'u') {
        void *mine = hooked(name);
        if (mine == NULL && same(name, "cuGetProcAddress_v2"))
            mine = (void *)cuGetProcAddress_v2;
        if (mine != NULL)
            return mine;
    }
    dlsym_fn next = glibc_dlsym();
    return next != NULL ? next(handle, name) : NULL;
}

__attribute__((destructor)) static void report(void)
{
    if (atomic_load(&refused) || atomic_load(&opens))
        fprintf(stderr, "gpu_share: %lu allocations refused, %lu IPC opens seen\n",
                atomic_load(&refused), atomic_load(&opens));
}
