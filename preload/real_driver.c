/* The bottom of preload/: where the real functions are. glibc's dlsym and
 * the next dlsym after nvipcfix in the chain (for the dlsym hook), and the
 * table of the real driver's functions (for the entry points and the fix).
 * Calls nothing else in preload/. */
#include "real_driver.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "export.h"
#include "../shim/log.h"

/* ---- the dlsym chain ------------------------------------------------------ */

static _Atomic(nvipcfix_dlsym_fn) next_dlsym_fn;
static _Atomic(nvipcfix_dlsym_fn) glibc_dlsym_fn;

NVIPCFIX_UNINSTRUMENTED static void *no_dlsym(void *handle, const char *name)
{
    (void)handle;
    (void)name;
    return NULL;
}

/* The next dlsym after nvipcfix in the search order: another interposer's
 * (GPU-sharing layers such as HAMi-core define an unversioned dlsym and
 * enforce their quotas through it), else glibc's. */
NVIPCFIX_UNINSTRUMENTED static nvipcfix_dlsym_fn find_next_dlsym(void)
{
    /* glibc >= 2.34 defines dlsym in libc under GLIBC_2.34; older ones in
     * libdl under the architecture's first version. */
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    nvipcfix_dlsym_fn glibc = NULL;
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && glibc == NULL; i++)
        glibc = (nvipcfix_dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (glibc == NULL) {
        nvipcfix_log(NVIPCFIX_LOG_ERROR, "cannot find glibc's dlsym; every dlsym returns NULL");
        return no_dlsym;
    }
    atomic_store_explicit(&glibc_dlsym_fn, glibc, memory_order_release);
    /* Called from here, RTLD_NEXT means: after nvipcfix. */
    nvipcfix_dlsym_fn next = (nvipcfix_dlsym_fn)glibc(RTLD_NEXT, "dlsym");
    return next != NULL ? next : glibc;
}

NVIPCFIX_UNINSTRUMENTED nvipcfix_dlsym_fn nvipcfix_next_dlsym(void)
{
    nvipcfix_dlsym_fn f = atomic_load_explicit(&next_dlsym_fn, memory_order_acquire);
    if (f == NULL) {
        f = find_next_dlsym(); /* racing threads find the same answer */
        atomic_store_explicit(&next_dlsym_fn, f, memory_order_release);
    }
    return f;
}

void *nvipcfix_glibc_dlsym(void)
{
    nvipcfix_next_dlsym();
    return (void *)atomic_load_explicit(&glibc_dlsym_fn, memory_order_acquire);
}

void *nvipcfix_real_dlsym(void *handle, const char *name)
{
    nvipcfix_dlsym_fn glibc = (nvipcfix_dlsym_fn)nvipcfix_glibc_dlsym();
    return glibc != NULL ? glibc(handle, name) : NULL;
}

/* ---- the real driver's functions ------------------------------------------- */

_Atomic uint64_t nvipcfix_map_generation;
static struct nvipcfix_real_driver real = {.ops.map_generation = &nvipcfix_map_generation};
static pthread_once_t real_once = PTHREAD_ONCE_INIT;

/* The next definition after nvipcfix first, so that another interposer
 * preloaded after it stays in the chain; else the driver's own. */
static void *lookup(const char *name)
{
    void *fn = nvipcfix_real_dlsym(RTLD_NEXT, name);
    return fn != NULL ? fn : nvipcfix_real_dlsym(real.library, name);
}

#define LOOKUP(field, name) (*(void **)&(field) = lookup(name))

static void load(void)
{
    real.library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (real.library == NULL) {
        const char *err = dlerror();
        NVIPCFIX_WARN_ONCE("cannot load the CUDA driver libcuda.so.1 (%s); CUDA IPC calls "
                           "fail with CUDA_ERROR_NOT_INITIALIZED",
                           err != NULL ? err : "unknown error");
        return;
    }
    LOOKUP(real.ipc_open_legacy, "cuIpcOpenMemHandle");
    LOOKUP(real.ipc_open_v2, "cuIpcOpenMemHandle_v2");
    LOOKUP(real.get_proc_address_v1, "cuGetProcAddress");
    LOOKUP(real.get_proc_address_v2, "cuGetProcAddress_v2");
    LOOKUP(real.ops.pointer_get_attributes, "cuPointerGetAttributes");
    LOOKUP(real.ops.mem_get_address_range, "cuMemGetAddressRange_v2");
    LOOKUP(real.ops.ctx_get_current, "cuCtxGetCurrent");
    LOOKUP(real.ops.ipc_get_mem_handle, "cuIpcGetMemHandle");
    LOOKUP(real.ops.ipc_close_mem_handle, "cuIpcCloseMemHandle");
    LOOKUP(real.ops.ctx_set_current, "cuCtxSetCurrent");
    LOOKUP(real.ops.ctx_get_device, "cuCtxGetDevice");
    LOOKUP(real.ops.mem_retain_allocation_handle, "cuMemRetainAllocationHandle");
    LOOKUP(real.ops.mem_get_allocation_properties_from_handle,
           "cuMemGetAllocationPropertiesFromHandle");
    LOOKUP(real.ops.mem_release, "cuMemRelease");
    LOOKUP(real.ops.mem_export_to_shareable_handle, "cuMemExportToShareableHandle");
    LOOKUP(real.ops.mem_import_from_shareable_handle, "cuMemImportFromShareableHandle");
    LOOKUP(real.ops.mem_address_reserve, "cuMemAddressReserve");
    LOOKUP(real.ops.mem_address_free, "cuMemAddressFree");
    LOOKUP(real.ops.mem_map, "cuMemMap");
    LOOKUP(real.ops.mem_unmap, "cuMemUnmap");
    LOOKUP(real.ops.mem_set_access, "cuMemSetAccess");
    LOOKUP(real.ops.mem_get_allocation_granularity, "cuMemGetAllocationGranularity");
}

int nvipcfix_real_driver_owns(const char *name, void *fn)
{
    const struct nvipcfix_real_driver *r = nvipcfix_real_driver();
    if (r->library == NULL)
        return 0;
    return fn == nvipcfix_real_dlsym(RTLD_NEXT, name) || fn == nvipcfix_real_dlsym(r->library, name);
}

const struct nvipcfix_real_driver *nvipcfix_real_driver(void)
{
    pthread_once(&real_once, load);
    return &real;
}
