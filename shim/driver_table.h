/* The driver functions the fix calls: the real driver's in the library
 * (preload/real_driver.c looks them up), a fake or the simulated driver's in
 * tests. Any may be NULL (an old or partial driver); the fix then falls back
 * to the native call, or VMM sharing is off. */
#ifndef NVIPCFIX_DRIVER_TABLE_H
#define NVIPCFIX_DRIVER_TABLE_H

#include <cuda.h>
#include <stdatomic.h>
#include <stdint.h>

/* Set in the mapping generation (below) once some changes may not be
 * counted; never cleared. */
#define NVIPCFIX_MAP_GEN_UNTRACKED (UINT64_C(1) << 63)

struct nvipcfix_driver {
    CUresult (*pointer_get_attributes)(unsigned int n, CUpointer_attribute *attrs, void **data,
                                       CUdeviceptr ptr);
    CUresult (*mem_get_address_range)(CUdeviceptr *base, size_t *size, CUdeviceptr ptr);
    CUresult (*ctx_get_current)(CUcontext *ctx);
    CUresult (*ipc_get_mem_handle)(CUipcMemHandle *handle, CUdeviceptr ptr);
    CUresult (*ipc_close_mem_handle)(CUdeviceptr ptr);
    /* VMM sharing (NVIPCFIX_VMM=1) */
    CUresult (*ctx_set_current)(CUcontext ctx);
    CUresult (*ctx_get_device)(CUdevice *dev);
    CUresult (*mem_retain_allocation_handle)(CUmemGenericAllocationHandle *h, void *addr);
    CUresult (*mem_get_allocation_properties_from_handle)(CUmemAllocationProp *prop,
                                                          CUmemGenericAllocationHandle h);
    CUresult (*mem_release)(CUmemGenericAllocationHandle h);
    CUresult (*mem_export_to_shareable_handle)(void *shareable, CUmemGenericAllocationHandle h,
                                               CUmemAllocationHandleType type,
                                               unsigned long long flags);
    CUresult (*mem_import_from_shareable_handle)(CUmemGenericAllocationHandle *h, void *os_handle,
                                                 CUmemAllocationHandleType type);
    CUresult (*mem_address_reserve)(CUdeviceptr *ptr, size_t size, size_t alignment,
                                    CUdeviceptr addr, unsigned long long flags);
    CUresult (*mem_address_free)(CUdeviceptr ptr, size_t size);
    CUresult (*mem_map)(CUdeviceptr ptr, size_t size, size_t offset,
                        CUmemGenericAllocationHandle h, unsigned long long flags);
    CUresult (*mem_unmap)(CUdeviceptr ptr, size_t size);
    CUresult (*mem_set_access)(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
                               size_t count);
    CUresult (*mem_get_allocation_granularity)(size_t *granularity,
                                               const CUmemAllocationProp *prop,
                                               CUmemAllocationGranularity_flags option);
    /* The mapping generation: moves on before and after every cuMemMap,
     * cuMemUnmap, cuMemSetAccess and cuMemAddressFree the program makes
     * (the library's entry points count them; the fix's own calls through
     * this table are not counted), with NVIPCFIX_MAP_GEN_UNTRACKED set
     * once some of the program's may not be. NULL: not kept. While it
     * stands still, nothing the walk of a reservation sees has changed
     * (vmm_share.c: repeated exports of a reservation's start). */
    _Atomic uint64_t *map_generation;
};

#endif
