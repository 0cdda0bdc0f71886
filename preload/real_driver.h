/* The bottom of preload/ (real_driver.c calls nothing else in it): the dlsym
 * chain after nvipcfix, and the table of real driver functions, looked up
 * lazily and once: the next definition after nvipcfix (the driver, or
 * another interposer preloaded after nvipcfix), else libcuda.so.1's own.
 * Nothing here runs at load. */
#ifndef NVIPCFIX_REAL_DRIVER_H
#define NVIPCFIX_REAL_DRIVER_H

#define __CUDA_API_VERSION_INTERNAL 1 /* declares the legacy entry points too */
#include <cuda.h>

#include "../shim/ipc_fix.h"

typedef CUresult (*nvipcfix_gpa_v1_fn)(const char *symbol, void **pfn, int version,
                                       cuuint64_t flags);
typedef CUresult (*nvipcfix_gpa_v2_fn)(const char *symbol, void **pfn, int version,
                                       cuuint64_t flags, CUdriverProcAddressQueryResult *status);

struct nvipcfix_real_driver {
    void *library; /* NULL: no libcuda.so.1 could be loaded */
    nvipcfix_open_fn ipc_open_legacy; /* cuIpcOpenMemHandle */
    nvipcfix_open_fn ipc_open_v2;     /* cuIpcOpenMemHandle_v2 */
    nvipcfix_gpa_v1_fn get_proc_address_v1;
    nvipcfix_gpa_v2_fn get_proc_address_v2;
    struct nvipcfix_driver ops; /* what the fix calls */
};

const struct nvipcfix_real_driver *nvipcfix_real_driver(void);

/* The mapping generation (shim/driver_table.h), which ops.map_generation
 * points to: moved on by the cuMem* entry points (driver_entry.c), marked
 * untracked by the load-order check (load_order.c). */
extern _Atomic uint64_t nvipcfix_map_generation;

/* Nonzero when fn is the real driver's own function for name: the next
 * definition after nvipcfix, or libcuda.so.1's own. */
int nvipcfix_real_driver_owns(const char *name, void *fn);

typedef void *(*nvipcfix_dlsym_fn)(void *handle, const char *name);

/* The next dlsym after nvipcfix in the search order (another interposer's,
 * else glibc's), found on first use; where the dlsym hook sends every
 * look-up it does not answer. */
nvipcfix_dlsym_fn nvipcfix_next_dlsym(void);

/* glibc's dlsym, for the library's own look-ups (RTLD_NEXT: after
 * nvipcfix, whatever the next interposer's dlsym would make of it). */
void *nvipcfix_real_dlsym(void *handle, const char *name);

/* glibc's dlsym itself (in the C library since glibc 2.34, in libdl
 * before), or NULL: an address in the object that defines it. */
void *nvipcfix_glibc_dlsym(void);

#endif
