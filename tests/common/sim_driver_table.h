/* The fix's driver table filled with the driver the test links: the
 * simulated libcuda.so.1 in unit tests and fuzzing. Header-only. */
#ifndef NVIPCFIX_SIM_DRIVER_TABLE_H
#define NVIPCFIX_SIM_DRIVER_TABLE_H

#include <cuda.h>

#include "../../shim/driver_table.h"

static const struct nvipcfix_driver linked_driver = {
    .pointer_get_attributes = cuPointerGetAttributes,
    .mem_get_address_range = cuMemGetAddressRange,
    .ctx_get_current = cuCtxGetCurrent,
    .ipc_get_mem_handle = cuIpcGetMemHandle,
    .ipc_close_mem_handle = cuIpcCloseMemHandle,
    .ctx_set_current = cuCtxSetCurrent,
    .ctx_get_device = cuCtxGetDevice,
    .mem_retain_allocation_handle = cuMemRetainAllocationHandle,
    .mem_get_allocation_properties_from_handle = cuMemGetAllocationPropertiesFromHandle,
    .mem_release = cuMemRelease,
    .mem_export_to_shareable_handle = cuMemExportToShareableHandle,
    .mem_import_from_shareable_handle = cuMemImportFromShareableHandle,
    .mem_address_reserve = cuMemAddressReserve,
    .mem_address_free = cuMemAddressFree,
    .mem_map = cuMemMap,
    .mem_unmap = cuMemUnmap,
    .mem_set_access = cuMemSetAccess,
    .mem_get_allocation_granularity = cuMemGetAllocationGranularity,
};

#endif
