/* quota_probe: allocates device memory through the roads a CUDA runtime
 * uses (dlsym on a handle of libcuda.so.1, then cuGetProcAddress) and says
 * what a GPU-sharing layer's quota made of it. Also checks that look-ups
 * of the IPC names through other handles are answered by what those
 * handles hold:
 *   - a proxy library that defines cuIpcGetMemHandle itself keeps it;
 *   - libcuda.so.1 opened again in a new link-map namespace (dlmopen) gives
 *     that namespace's own function, not one of the base namespace;
 * and says which library answered the same look-up on libcuda.so.1's own
 * handle (an interposer's hook, if one is preloaded).
 * Usage: quota_probe MIB [PROXY_LIBRARY]; MIB 0 checks only the look-ups,
 * which are checked only when PROXY_LIBRARY is given;
 * QUOTA_PROBE_NO_DLMOPEN=1 leaves out the dlmopen check.
 * Prints one line per check and exits 0 when the quota held (every
 * allocation was refused) and every look-up was right, 1 when an
 * allocation past the quota succeeded, 3 when a look-up was wrong. */
#include <cuda.h>

#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#undef cuGetProcAddress

typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*gpa_fn)(const char *, void **, int, cuuint64_t,
                           CUdriverProcAddressQueryResult *);

static void *need(void *lib, const char *name)
{
    void *p = dlsym(lib, name);
    if (p == NULL) {
        fprintf(stderr, "quota_probe: no %s\n", name);
        exit(2);
    }
    return p;
}

static const char *object_of(void *fn)
{
    Dl_info info;
    return fn != NULL && dladdr(fn, &info) && info.dli_fname ? info.dli_fname : "?";
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    size_t bytes = strtoul(argv[1], NULL, 10) << 20;
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (cuda == NULL)
        return 2;
    CUresult (*init)(unsigned) = (CUresult(*)(unsigned))need(cuda, "cuInit");
    CUresult (*get)(CUdevice *, int) = (CUresult(*)(CUdevice *, int))need(cuda, "cuDeviceGet");
    CUresult (*retain)(CUcontext *, CUdevice) =
        (CUresult(*)(CUcontext *, CUdevice))need(cuda, "cuDevicePrimaryCtxRetain");
    CUresult (*set)(CUcontext) = (CUresult(*)(CUcontext))need(cuda, "cuCtxSetCurrent");
    CUdevice dev;
    CUcontext ctx;
    if (init(0) || get(&dev, 0) || retain(&ctx, dev) || set(ctx))
        return 2;

    int over = 0;
    CUdeviceptr p;
    if (bytes == 0)
        goto lookups;
    alloc_fn by_dlsym = (alloc_fn)need(cuda, "cuMemAlloc_v2");
    CUresult r = by_dlsym(&p, bytes);
    printf("dlsym road: cuMemAlloc_v2(%zu MiB) -> %d\n", bytes >> 20, (int)r);
    over |= r == CUDA_SUCCESS;

    gpa_fn boot = (gpa_fn)need(cuda, "cuGetProcAddress_v2"), gpa = NULL;
    alloc_fn by_gpa = NULL;
    CUdriverProcAddressQueryResult st;
    if (boot("cuGetProcAddress", (void **)&gpa, 12000, 0, &st) ||
        gpa("cuMemAlloc", (void **)&by_gpa, 3020, 0, &st))
        return 2;
    r = by_gpa(&p, bytes);
    printf("cuGetProcAddress road: cuMemAlloc(%zu MiB) -> %d\n", bytes >> 20, (int)r);
    over |= r == CUDA_SUCCESS;

lookups:;
    int wrong = 0;
    if (argc > 2) {
        /* The driver's own handle: what a preloaded hook hands out there. */
        printf("driver handle: cuIpcGetMemHandle from %s\n",
               object_of(dlsym(cuda, "cuIpcGetMemHandle")));
        void *proxy = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
        void *own = proxy ? dlsym(proxy, "proxy_own_get") : NULL;
        void *found = proxy ? dlsym(proxy, "cuIpcGetMemHandle") : NULL;
        int ok = own != NULL && found == own;
        printf("proxy library: cuIpcGetMemHandle from %s -> %s\n", object_of(found),
               ok ? "its own" : "REPLACED");
        wrong |= !ok;
    }
    /* A sanitizer runtime cannot have a second libc beside it. */
    void *ns = argc < 3 || getenv("QUOTA_PROBE_NO_DLMOPEN") != NULL
                   ? NULL
                   : dlmopen(LM_ID_NEWLM, "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (ns != NULL) {
        void *found = dlsym(ns, "cuIpcGetMemHandle");
        Lmid_t where = -1;
        Dl_info info;
        struct link_map *map = NULL;
        int ok = found != NULL && dladdr1(found, &info, (void **)&map, RTLD_DL_LINKMAP) &&
                 dlinfo(ns, RTLD_DI_LMID, &where) == 0 && where != LM_ID_BASE &&
                 strstr(object_of(found), "libnvipcfix") == NULL;
        printf("dlmopen namespace: cuIpcGetMemHandle from %s -> %s\n", object_of(found),
               ok ? "that namespace's own" : "NOT ITS OWN");
        wrong |= !ok;
    }
    return over ? 1 : wrong ? 3 : 0;
}
