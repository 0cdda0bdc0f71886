#include "real_driver.h"

#include <dlfcn.h>
#include <pthread.h>

#include "../shim/log.h"

static struct nvipcfix_real_driver real;
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
