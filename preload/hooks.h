/* What driver_entry.c gives the files above it (dlsym_hook.c, load_order.c):
 * which names the library wraps, the wrapper for each, and nvipcfix's own
 * definitions of the entry points. */
#ifndef NVIPCFIX_HOOKS_H
#define NVIPCFIX_HOOKS_H

#include <stddef.h>
#include <stdint.h>

#include "real_driver.h"
#include "watched_names.h"

/* Nonzero for the driver names whose look-ups the library answers. */
int nvipcfix_is_wrapped_name(const char *name);

/* The wrapper to hand out instead of found, the real driver's function for
 * name. version is the CUDA version a cuGetProcAddress caller asked for,
 * or -1 for a dlsym look-up of the exported symbol name. Returns found
 * itself for names that are not wrapped. */
void *nvipcfix_wrapper_for(const char *name, void *found, int version);

/* When name is one of the counted VMM mapping calls and found is not
 * nvipcfix's own, marks the mapping generation untracked: a caller got a
 * definition of it that is not the driver's own, so its calls may not be
 * counted. */
void nvipcfix_mapping_call_not_ours(const char *name, void *found);

/* Said once, at load, by the load-order check: the first definition of
 * each watched name (watched_names.h) as it looked them up, NULL for one
 * not found; first itself NULL when nothing ahead of nvipcfix may define
 * any of them (the wrappers are then nvipcfix's own, with no look-up).
 * Until it is said, a wrapper is looked up when first needed. */
void nvipcfix_note_first_definitions(void *const *first);

/* Said at load by the load-order check, once for each, when another copy
 * of nvipcfix comes ahead in the search order: the addresses spanned by
 * its loaded segments, and by those of each library between it and this
 * one that may define an IPC name. The copy ahead fixes the calls the
 * program makes through it and calls this copy's entry points as the next
 * definitions, directly or through those libraries; a call that returns
 * into one of the spans goes to the driver unchanged (a second fix would
 * take the first copy's answers for the driver's), any other is fixed
 * here. At most 16 spans. */
void nvipcfix_note_copy_ahead(uintptr_t start, size_t size);

/* The watched names (watched_names.h) and nvipcfix's own definition of
 * each, its exported dlsym's first. */
extern const char *const nvipcfix_watched_names[NVIPCFIX_WATCHED];
extern void *const nvipcfix_own_definitions[NVIPCFIX_WATCHED];

/* The exported dlsym's own address (a hidden label in dlsym_entry_*.S). */
extern char nvipcfix_dlsym_entry[];

/* nvipcfix's own exported entry points under hidden names: always this
 * library's functions, whichever definition the search order binds the
 * exported names to. */
CUresult nvipcfix_own_ipc_get_mem_handle(CUipcMemHandle *pHandle, CUdeviceptr dptr);
CUresult nvipcfix_own_ipc_open_mem_handle(CUdeviceptr *pdptr, CUipcMemHandle handle,
                                          unsigned int Flags);
CUresult nvipcfix_own_ipc_open_mem_handle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle,
                                             unsigned int Flags);
CUresult nvipcfix_own_ipc_close_mem_handle(CUdeviceptr dptr);
CUresult nvipcfix_own_get_proc_address(const char *symbol, void **pfn, int cudaVersion,
                                       cuuint64_t flags);
CUresult nvipcfix_own_get_proc_address_v2(const char *symbol, void **pfn, int cudaVersion,
                                          cuuint64_t flags,
                                          CUdriverProcAddressQueryResult *symbolStatus);
CUresult nvipcfix_own_mem_map(CUdeviceptr ptr, size_t size, size_t offset,
                              CUmemGenericAllocationHandle handle, unsigned long long flags);
CUresult nvipcfix_own_mem_unmap(CUdeviceptr ptr, size_t size);
CUresult nvipcfix_own_mem_set_access(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
                                     size_t count);
CUresult nvipcfix_own_mem_address_free(CUdeviceptr ptr, size_t size);

#endif
