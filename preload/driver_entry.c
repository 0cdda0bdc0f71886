/* The driver entry points the library exports, and the cuGetProcAddress
 * hooks that hand them out in place of the driver's own. Above the fix's
 * instance (library.c) and the real driver (real_driver.c); below the dlsym
 * hook and the load-order check, which use hooks.h. */
#include <dlfcn.h>
#include <stdatomic.h>
#include <string.h>

#include "export.h"
#include "hooks.h"
#include "library.h"
#include "watched_names.h"
#include "../shim/log.h"

/* cuda.h maps these names to their newest versions; here each is defined
 * under its exact symbol name. */
#undef cuIpcOpenMemHandle
#undef cuGetProcAddress

static CUresult no_driver(void)
{
    if (nvipcfix_real_driver()->library != NULL) /* else loading it said why */
        NVIPCFIX_WARN_ONCE("the CUDA driver lacks an entry point nvipcfix needs; "
                           "returning CUDA_ERROR_NOT_INITIALIZED");
    return CUDA_ERROR_NOT_INITIALIZED;
}

/* Where the instance could not be set up (out of memory; said once), or
 * the call comes from a copy of nvipcfix ahead (from_copy_ahead, below),
 * a call goes to the driver unchanged. */
__attribute__((noinline, cold)) static const struct nvipcfix_driver *unfixed(void)
{
    return &nvipcfix_real_driver()->ops;
}

/* The spans of the copies of nvipcfix ahead and of the interposers
 * between them and this one (hooks.h); none in the usual case. Set at
 * load, before any call. */
#define COPY_SPANS 16
static struct {
    uintptr_t start;
    size_t size;
} copy_spans[COPY_SPANS];
static int copy_span_count;

void nvipcfix_note_copy_ahead(uintptr_t start, size_t size)
{
    if (copy_span_count < COPY_SPANS) {
        copy_spans[copy_span_count].start = start;
        copy_spans[copy_span_count].size = size;
        copy_span_count++;
    }
}

/* Whether a call returns into a copy ahead or an interposer after it: that
 * copy has fixed it. */
static inline int from_copy_ahead(void *return_address)
{
    for (int i = 0; __builtin_expect(i < copy_span_count, 0); i++)
        if ((uintptr_t)return_address - copy_spans[i].start < copy_spans[i].size)
            return 1;
    return 0;
}

NVIPCFIX_EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr)
{
    struct nvipcfix_fix *fix =
        from_copy_ahead(__builtin_return_address(0)) ? NULL : nvipcfix_library();
    const struct nvipcfix_driver *d = fix != NULL ? fix->driver : unfixed();
    if (d->ipc_get_mem_handle == NULL)
        return no_driver();
    if (__builtin_expect(fix == NULL, 0))
        return d->ipc_get_mem_handle(pHandle, dptr);
    return nvipcfix_export(fix, pHandle, dptr);
}

static CUresult open_with(nvipcfix_open_fn real, CUdeviceptr *pdptr, CUipcMemHandle handle,
                          unsigned int Flags, void *return_address)
{
    struct nvipcfix_fix *fix = from_copy_ahead(return_address) ? NULL : nvipcfix_library();
    const struct nvipcfix_driver *d = fix != NULL ? fix->driver : unfixed();
    if (real == NULL || d->ipc_close_mem_handle == NULL)
        return no_driver();
    if (fix == NULL)
        return real(pdptr, handle, Flags);
    return nvipcfix_open(fix, real, pdptr, handle, Flags);
}

NVIPCFIX_EXPORT CUresult cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle handle,
                                            unsigned int Flags)
{
    return open_with(nvipcfix_real_driver()->ipc_open_legacy, pdptr, handle, Flags,
                     __builtin_return_address(0));
}

NVIPCFIX_EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle,
                                               unsigned int Flags)
{
    return open_with(nvipcfix_real_driver()->ipc_open_v2, pdptr, handle, Flags,
                     __builtin_return_address(0));
}

NVIPCFIX_EXPORT CUresult cuIpcCloseMemHandle(CUdeviceptr dptr)
{
    struct nvipcfix_fix *fix =
        from_copy_ahead(__builtin_return_address(0)) ? NULL : nvipcfix_library();
    const struct nvipcfix_driver *d = fix != NULL ? fix->driver : unfixed();
    if (d->ipc_close_mem_handle == NULL)
        return no_driver();
    if (fix == NULL)
        return d->ipc_close_mem_handle(dptr);
    return nvipcfix_close(fix, dptr);
}

/* ---- VMM mappings, counted ---------------------------------------------
 * cuMemMap, cuMemUnmap, cuMemSetAccess and cuMemAddressFree: the driver's
 * call and its answer, with the mapping generation moved on before it and
 * again after it. A repeated export of a reservation's start reuses its
 * walk only while the generation stands still (shim/vmm_share.c), so no
 * walk is reused that was made before a change, or while one was in
 * progress: the first move puts every walk made before out of date, the
 * second every walk made while the driver was changing the mapping.
 * Nothing else: no set-up of the fix (these run in every process that
 * maps VMM memory, most of which never make an IPC call), no lock, no log
 * unless the driver lacks the function. */
static inline void mappings_change(void)
{
    atomic_fetch_add_explicit(&nvipcfix_map_generation, 1, memory_order_acq_rel);
}

NVIPCFIX_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                                  CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    const struct nvipcfix_driver *d = &nvipcfix_real_driver()->ops;
    if (d->mem_map == NULL)
        return no_driver();
    mappings_change();
    CUresult r = d->mem_map(ptr, size, offset, handle, flags);
    mappings_change();
    return r;
}

NVIPCFIX_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    const struct nvipcfix_driver *d = &nvipcfix_real_driver()->ops;
    if (d->mem_unmap == NULL)
        return no_driver();
    mappings_change();
    CUresult r = d->mem_unmap(ptr, size);
    mappings_change();
    return r;
}

/* A chunk is found by its range only once access is granted (as measured:
 * cuMemGetAddressRange fails before), so access changes what a walk sees. */
NVIPCFIX_EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size,
                                        const CUmemAccessDesc *desc, size_t count)
{
    const struct nvipcfix_driver *d = &nvipcfix_real_driver()->ops;
    if (d->mem_set_access == NULL)
        return no_driver();
    mappings_change();
    CUresult r = d->mem_set_access(ptr, size, desc, count);
    mappings_change();
    return r;
}

/* The driver's documentation does not say a range must be unmapped first. */
NVIPCFIX_EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    const struct nvipcfix_driver *d = &nvipcfix_real_driver()->ops;
    if (d->mem_address_free == NULL)
        return no_driver();
    mappings_change();
    CUresult r = d->mem_address_free(ptr, size);
    mappings_change();
    return r;
}

NVIPCFIX_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion,
                                          cuuint64_t flags)
{
    nvipcfix_gpa_v1_fn real = nvipcfix_real_driver()->get_proc_address_v1;
    if (real == NULL)
        return no_driver();
    CUresult r = real(symbol, pfn, cudaVersion, flags);
    if (r == CUDA_SUCCESS && pfn != NULL && *pfn != NULL && symbol != NULL)
        *pfn = nvipcfix_wrapper_for(symbol, *pfn, cudaVersion);
    return r;
}

NVIPCFIX_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                             cuuint64_t flags,
                                             CUdriverProcAddressQueryResult *symbolStatus)
{
    nvipcfix_gpa_v2_fn real = nvipcfix_real_driver()->get_proc_address_v2;
    if (real == NULL)
        return no_driver();
    CUresult r = real(symbol, pfn, cudaVersion, flags, symbolStatus);
    if (r == CUDA_SUCCESS && pfn != NULL && *pfn != NULL && symbol != NULL &&
        (symbolStatus == NULL || *symbolStatus == CU_GET_PROC_ADDRESS_SUCCESS))
        *pfn = nvipcfix_wrapper_for(symbol, *pfn, cudaVersion);
    return r;
}

/* The wrappers by name. For names with two versions, a dlsym look-up
 * (version -1) gets the one the exported symbol names; a cuGetProcAddress
 * look-up gets the one matching what the driver returned, or else the one
 * the requested version selects.
 *
 * What is handed out for a name is its first definition in the search
 * order, what the program gets by linking the name: nvipcfix's own, or the
 * program's or a library's ahead of nvipcfix (which then still sees the
 * calls it wraps). It is not bound by relocations at load: every process
 * would pay for them, and only a process using CUDA needs them. The
 * load-order check says at load what the first definitions are: all
 * nvipcfix's own when nothing ahead of it may define one of the names
 * (the usual case: no look-up at all), else as it looked them up then,
 * the scope the loader binds this library's references in. (A look-up
 * later could find a driver opened with RTLD_GLOBAL since, ahead of a
 * nvipcfix opened with dlopen.) Only a call that comes before the check
 * has spoken looks the name up itself. */
enum {
    W_GET, W_OPEN, W_OPEN_V2, W_CLOSE, W_GPA, W_GPA_V2,
    W_MAP, W_UNMAP, W_SET_ACCESS, W_ADDRESS_FREE, /* the four mapping calls counted above */
    WRAPPED
};
_Static_assert(WRAPPED == NVIPCFIX_WATCHED - 1, "the wrapped names are the watched ones but dlsym");

const char *const nvipcfix_watched_names[NVIPCFIX_WATCHED] = {NVIPCFIX_WATCHED_NAMES};
void *const nvipcfix_own_definitions[NVIPCFIX_WATCHED] = {
    (void *)nvipcfix_dlsym_entry,
    (void *)nvipcfix_own_ipc_get_mem_handle,
    (void *)nvipcfix_own_ipc_open_mem_handle,
    (void *)nvipcfix_own_ipc_open_mem_handle_v2,
    (void *)nvipcfix_own_ipc_close_mem_handle,
    (void *)nvipcfix_own_get_proc_address,
    (void *)nvipcfix_own_get_proc_address_v2,
    (void *)nvipcfix_own_mem_map,
    (void *)nvipcfix_own_mem_unmap,
    (void *)nvipcfix_own_mem_set_access,
    (void *)nvipcfix_own_mem_address_free,
};
#define NAME(w) nvipcfix_watched_names[NVIPCFIX_WATCHED_WRAPPED(w)]
#define OWN_DEFINITION(w) nvipcfix_own_definitions[NVIPCFIX_WATCHED_WRAPPED(w)]

/* For names with two versions: the entry of the newer one, which a
 * cuGetProcAddress look-up at version >= since gets; else 0. */
static const struct {
    int newer, since;
} versions[WRAPPED] = {
    [W_OPEN] = {W_OPEN_V2, 11000},
    [W_GPA] = {W_GPA_V2, 12000},
};

static _Atomic(void *) first_found[WRAPPED];
static atomic_int said; /* the load-order check has given first_found */

__attribute__((section(".text.startup"))) void nvipcfix_note_first_definitions(void *const *first)
{
    for (int w = 0; first != NULL && w < WRAPPED; w++)
        atomic_store_explicit(&first_found[w], first[NVIPCFIX_WATCHED_WRAPPED(w)],
                              memory_order_relaxed);
    atomic_store_explicit(&said, 1, memory_order_release);
}

/* Entry w's first definition: as the load-order check gave it, or
 * nvipcfix's own where it gave none; before it has spoken, glibc's dlsym
 * with RTLD_DEFAULT from here. Racing threads find the same answer. */
static void *first_definition(int w)
{
    void *f = atomic_load_explicit(&first_found[w], memory_order_acquire);
    if (f == NULL) {
        if (atomic_load_explicit(&said, memory_order_acquire)) {
            f = atomic_load_explicit(&first_found[w], memory_order_relaxed);
            if (f == NULL)
                f = OWN_DEFINITION(w);
        } else {
            f = nvipcfix_real_dlsym(RTLD_DEFAULT, NAME(w));
            if (f == NULL)
                f = OWN_DEFINITION(w);
            atomic_store_explicit(&first_found[w], f, memory_order_release);
        }
    }
    return f;
}

/* The entry for name, or -1. */
NVIPCFIX_UNINSTRUMENTED static int find_wrapped(const char *name)
{
    if (name[0] != 'c' || name[1] != 'u')
        return -1;
    for (int w = 0; w < WRAPPED; w++)
        if (strcmp(name, NAME(w)) == 0)
            return w;
    return -1;
}

NVIPCFIX_UNINSTRUMENTED int nvipcfix_is_wrapped_name(const char *name)
{
    return find_wrapped(name) >= 0;
}

static int is_mapping_call(int w)
{
    return w >= W_MAP && w <= W_ADDRESS_FREE;
}

/* found is the driver's: its exported function, or (what its
 * cuGetProcAddress may hand out) any address inside the driver library. */
static int from_driver(const char *name, void *found)
{
    if (nvipcfix_real_driver_owns(name, found))
        return 1;
    void *library = nvipcfix_real_driver()->library;
    void *exported = library != NULL ? nvipcfix_real_dlsym(library, name) : NULL;
    Dl_info a, b;
    return exported != NULL && dladdr(found, &a) != 0 && dladdr(exported, &b) != 0 &&
           a.dli_fbase == b.dli_fbase;
}

void nvipcfix_mapping_call_not_ours(const char *name, void *found)
{
    int w = find_wrapped(name);
    if (w >= 0 && is_mapping_call(w) && found != first_definition(w) && !from_driver(name, found))
        atomic_fetch_or_explicit(&nvipcfix_map_generation, NVIPCFIX_MAP_GEN_UNTRACKED,
                                 memory_order_acq_rel);
}

void *nvipcfix_wrapper_for(const char *name, void *found, int version)
{
    int w = find_wrapped(name);
    if (w < 0)
        return found;
    int newer = versions[w].newer;
    if (found == first_definition(w) || (newer != 0 && found == first_definition(newer)))
        return found;
    /* A mapping call that is not the driver's own (another layer's hook
     * handed out by its cuGetProcAddress): kept, so that layer still sees
     * its calls; nvipcfix no longer counts them, so it stops trusting the
     * generation (every export of a reservation's start walks it). */
    if (is_mapping_call(w) && !from_driver(name, found)) {
        nvipcfix_mapping_call_not_ours(name, found);
        return found;
    }
    if (version < 0 || newer == 0)
        return first_definition(w);

    /* The two pairs: the open (legacy, _v2) and the resolver (v1, _v2). */
    const struct nvipcfix_real_driver *real = nvipcfix_real_driver();
    int open = w == W_OPEN;
    void *real_older = open ? (void *)real->ipc_open_legacy : (void *)real->get_proc_address_v1;
    void *real_newer = open ? (void *)real->ipc_open_v2 : (void *)real->get_proc_address_v2;
    if (found == real_older)
        return first_definition(w);
    if (found == real_newer)
        return first_definition(newer);
    return first_definition(version >= versions[w].since ? newer : w);
}

/* The hidden names of hooks.h. */
#define OWN(hidden_name, name) \
    extern __typeof__(name) hidden_name __attribute__((alias(#name), visibility("hidden")))
OWN(nvipcfix_own_ipc_get_mem_handle, cuIpcGetMemHandle);
OWN(nvipcfix_own_ipc_open_mem_handle, cuIpcOpenMemHandle);
OWN(nvipcfix_own_ipc_open_mem_handle_v2, cuIpcOpenMemHandle_v2);
OWN(nvipcfix_own_ipc_close_mem_handle, cuIpcCloseMemHandle);
OWN(nvipcfix_own_get_proc_address, cuGetProcAddress);
OWN(nvipcfix_own_get_proc_address_v2, cuGetProcAddress_v2);
OWN(nvipcfix_own_mem_map, cuMemMap);
OWN(nvipcfix_own_mem_unmap, cuMemUnmap);
OWN(nvipcfix_own_mem_set_access, cuMemSetAccess);
OWN(nvipcfix_own_mem_address_free, cuMemAddressFree);
