/* A simulated CUDA driver, built as build/sim/libcuda.so.1 for the CPU tier
 * of the tests. It is a test instrument: never installed, never linked into
 * the library.
 *
 * Device memory is shared memory that two processes really share: every
 * driver chunk is a memfd mapped into a reserved address range per device;
 * an importer maps the same memfd through /proc/PID/fd/N. It behaves as
 * ../shared/reference/cuda-ipc-facts.md describes the real driver,
 * including the bug:
 *   - cuIpcGetMemHandle of an interior pointer returns the handle of the
 *     whole allocation, byte-identical to the base's;
 *   - cuIpcOpenMemHandle returns the allocation's base; a second open in one
 *     context returns the same pointer and counts a reference;
 *   - cuIpcCloseMemHandle of an interior pointer fails (invalid value);
 *   - opening a handle in the process that exported it fails (invalid
 *     context); bytes 56-63 of a handle are zero and ignored on open;
 *   - small allocations (up to 1 MiB) are packed into 2 MiB chunks at
 *     512-byte steps, each with its own range and handle;
 *   - VMM memory (cuMemCreate, cuMemAddressReserve, cuMemMap,
 *     cuMemSetAccess) is a memfd per allocation; as measured on an H100:
 *     cuIpcGetMemHandle on it fails with CUDA_ERROR_INVALID_VALUE, the
 *     RANGE_START_ADDR/RANGE_SIZE attributes give the whole reservation,
 *     cuMemGetAddressRange gives the one mapping (NOT_FOUND before access is
 *     granted), BUFFER_ID is new for every mapping, allocation handles are
 *     process-wide values that cuMemRetainAllocationHandle returns again,
 *     and an allocation created without CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
 *     cannot be exported (CUDA_ERROR_INVALID_VALUE). Exported descriptors
 *     are duplicates of the memfd, so two processes really share the bytes;
 *     there is no peer access between simulated devices;
 *   - an open validates what the H200 validates, with its errors, on a
 *     fresh open and on a re-open of a block already mapped in the context
 *     (found by the object id; the chunk size, bytes 24-27, is not looked
 *     at then), byte 31 with bit 7 set leaves a sticky launch failure, and
 *     the legacy entry (cuIpcOpenMemHandle, 4010) refuses a re-open with
 *     CUDA_ERROR_ALREADY_MAPPED (docs/handle-format.md has the measured
 *     table; ipc_open below says what is modelled). Bytes 48-51 hold the
 *     exporter's "client" (0xc1 and its pid), 52-55 the chunk's "memory
 *     handle" (its memfd's descriptor number and chunk id).
 * The entry points the driver hands out (cuGetProcAddress) are its own
 * functions, bound inside the library (built with -Bsymbolic), as the real
 * driver's are (measured on the H200): a preloaded library's definition of
 * the same name never replaces them there.
 * Switches (environment, read at cuInit):
 *   SIMCUDA_DEVICES=N       number of devices (1..8, default 1)
 *   SIMCUDA_REOPEN_UNCHECKED=1  a re-open of a mapped block checks nothing but
 *                           the object id (a driver on which guarded tags are
 *                           silent once the base is mapped; for the doctor)
 *   SIMCUDA_OLD_DRIVER=1    a second open of an open handle fails with
 *                           CUDA_ERROR_ALREADY_MAPPED (drivers before CUDA 11)
 *   SIMCUDA_HANDLE_TAIL=1   the driver writes non-zero bytes 56-63
 *   SIMCUDA_IPC_ANY_FLAGS=1 cuIpcOpenMemHandle accepts any flags (a newer
 *                           driver with flags this one does not know;
 *                           they change nothing here)
 *   SIMCUDA_RANGE_BEFORE_ACCESS=1  cuMemGetAddressRange finds a VMM mapping
 *                           before access to it is granted (a driver other
 *                           than the one measured)
 *   SIMCUDA_FAIL=a,b|all    the named entry points fail with CUDA_ERROR_UNKNOWN
 *   SIMCUDA_VA_GIB=N        address space reserved per device (default 64;
 *                           smaller under valgrind)
 */
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uthash.h>

#undef cuIpcOpenMemHandle
#undef cuGetProcAddress

#define SIM_EXPORT __attribute__((visibility("default")))
#define SIM_MAX_DEVICES 8
#define SIM_CHUNK (UINT64_C(2) << 20)
#define SIM_SMALL_MAX (UINT64_C(1) << 20)
#define SIM_PACK_STEP 512
#define SIM_PAGE 4096
/* Bytes 48-51, the exporter's "client" (the real driver's resource-manager
 * client handle, 0xc1d0xxxx): here 0xc1 and the exporter's process id (pid_max
 * is at most 2^22). Bytes 52-55, the chunk's "memory handle": its memfd's
 * descriptor number in the exporter (16 bits) and the chunk id's low 16. */
#define SIM_CLIENT_BASE UINT32_C(0xc1000000)
#define SIM_CLIENT_PID_MASK UINT32_C(0x003fffff)
#define SIM_FD_BITS 16
#define SIM_FD_MASK ((UINT32_C(1) << SIM_FD_BITS) - 1)

struct CUctx_st {
    int device;
    CUresult sticky; /* an error every later call returns (a launch failure) */
};

struct chunk {
    int fd;
    uint32_t id;
    int device;
    uint64_t addr, size;
    uint64_t used; /* bump pointer for packed small allocations */
    int live;      /* allocations in it */
    struct chunk *next;
};

struct alloc {
    uint64_t base, size;
    struct chunk *chunk;
    uint64_t object_id; /* also the buffer id */
    struct alloc *next;
    UT_hash_handle hh; /* by base: look-ups of a base stay fast with many */
};

struct import {
    unsigned char key[56]; /* the handle it was opened with */
    int poisoned;          /* opened from an offset with bit 31 set: access fails, sticky */
    CUcontext ctx;
    void *map;
    uint64_t map_size;
    uint64_t ptr, size;
    uint64_t buffer_id;
    int refs;
    struct import *next;
};

/* VMM: a physical allocation (a memfd), referenced by its handles and its
 * mappings. */
struct vmm_alloc {
    uint64_t handle;
    int fd, device;
    uint64_t size;
    unsigned types; /* requested handle types */
    int refs;
    struct vmm_alloc *next;
};

/* A reservation, or a mapping inside one. */
struct vmm_range {
    uint64_t va, size;
    struct vmm_alloc *alloc; /* mappings only */
    uint64_t buffer_id;
    int access;
    struct vmm_range *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized;
static int ndevices = 1, old_driver, handle_tail, reopen_unchecked, any_ipc_flags;
static int range_before_access;
static uint64_t va_per_device = UINT64_C(64) << 30;
static char fail_list[512];
static unsigned char ident[8];
static uint64_t va_base[SIM_MAX_DEVICES];
static struct CUctx_st primary[SIM_MAX_DEVICES];
static struct chunk *chunks;
static struct chunk *small_chunk[SIM_MAX_DEVICES];
static struct alloc *allocs, *allocs_by_base;
static struct import *imports;
static struct vmm_alloc *vmm_allocs;
static struct vmm_range *vmm_reserved, *vmm_maps;
static uint64_t next_vmm_handle = 0x5a0000001000;
static uint64_t next_object_id = 1;
static uint32_t next_chunk_id = 1;
static long real_opens, real_closes;
static atomic_long attribute_queries; /* cuPointerGetAttribute(s) calls, for the tests */
static _Thread_local CUcontext current;

/* ---- helpers ---------------------------------------------------------- */

static int failing(const char *name)
{
    if (fail_list[0] == '\0')
        return 0;
    if (strcmp(fail_list, "all") == 0)
        return 1;
    size_t n = strlen(name);
    for (const char *p = fail_list; (p = strstr(p, name)) != NULL; p += n)
        if ((p == fail_list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return 1;
    return 0;
}

#define ENTER(name)                                                          \
    do {                                                                     \
        if (failing(name))                                                   \
            return CUDA_ERROR_UNKNOWN;                                       \
    } while (0)

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static int env_flag(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && strcmp(v, "1") == 0;
}

static struct alloc *find_alloc(uint64_t p)
{
    struct alloc *a;
    HASH_FIND(hh, allocs_by_base, &p, sizeof p, a);
    if (a != NULL)
        return a;
    for (a = allocs; a != NULL; a = a->next)
        if (p >= a->base && p - a->base < a->size)
            return a;
    return NULL;
}

static struct import *find_import(uint64_t p)
{
    for (struct import *m = imports; m != NULL; m = m->next)
        if (p >= m->ptr && p - m->ptr < m->size)
            return m;
    return NULL;
}

/* Nonzero if [p, p+n) is device memory this process may touch. */
static struct vmm_range *find_range(struct vmm_range *list, uint64_t p)
{
    for (struct vmm_range *r = list; r != NULL; r = r->next)
        if (p >= r->va && p - r->va < r->size)
            return r;
    return NULL;
}

/* Nonzero if [p, p+n) lies in VMM mappings this process may access. */
static int vmm_accessible(uint64_t p, uint64_t n)
{
    while (n > 0) {
        struct vmm_range *m = find_range(vmm_maps, p);
        if (m == NULL || !m->access)
            return 0;
        uint64_t left = m->size - (p - m->va);
        if (left >= n)
            return 1;
        p += left;
        n -= left;
    }
    return 1;
}

static int accessible(uint64_t p, uint64_t n)
{
    struct alloc *a = find_alloc(p);
    if (a != NULL)
        return n <= a->size - (p - a->base);
    struct import *m = find_import(p);
    if (m != NULL)
        return n <= m->size - (p - m->ptr);
    return vmm_accessible(p, n);
}

/* ---- init, devices, contexts ------------------------------------------ */

static void fork_prepare(void)
{
    pthread_mutex_lock(&lock);
}

static void fork_release(void)
{
    pthread_mutex_unlock(&lock);
}

SIM_EXPORT CUresult cuInit(unsigned int flags)
{
    ENTER("cuInit");
    (void)flags;
    pthread_mutex_lock(&lock);
    if (!initialized) {
        const char *n = getenv("SIMCUDA_DEVICES");
        if (n != NULL && atoi(n) >= 1 && atoi(n) <= SIM_MAX_DEVICES)
            ndevices = atoi(n);
        old_driver = env_flag("SIMCUDA_OLD_DRIVER");
        reopen_unchecked = env_flag("SIMCUDA_REOPEN_UNCHECKED");
        handle_tail = env_flag("SIMCUDA_HANDLE_TAIL");
        any_ipc_flags = env_flag("SIMCUDA_IPC_ANY_FLAGS");
        range_before_access = env_flag("SIMCUDA_RANGE_BEFORE_ACCESS");
        const char *va = getenv("SIMCUDA_VA_GIB");
        if (va != NULL && atoi(va) >= 1 && atoi(va) <= 1024)
            va_per_device = (uint64_t)atoi(va) << 30;
        const char *f = getenv("SIMCUDA_FAIL");
        snprintf(fail_list, sizeof fail_list, "%s", f != NULL ? f : "");
        if (getrandom(ident, sizeof ident, 0) != (ssize_t)sizeof ident)
            put64(ident, (uint64_t)getpid() * UINT64_C(0x9E3779B97F4A7C15));
        /* chunk ids from a random start: a handle whose client bytes were
         * changed to name another simulated process (tests run side by
         * side) then names a chunk there only by a 1 in 32768 chance, even
         * at the same descriptor number (the driver's handles are random) */
        next_chunk_id = 1 + (uint32_t)(get64(ident) & 0x7fff);
        for (int d = 0; d < ndevices; d++) {
            void *va = mmap(NULL, va_per_device, PROT_NONE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (va == MAP_FAILED) {
                pthread_mutex_unlock(&lock);
                return CUDA_ERROR_OUT_OF_MEMORY;
            }
            va_base[d] = (uint64_t)va;
            primary[d].device = d;
        }
        pthread_atfork(fork_prepare, fork_release, fork_release);
        initialized = 1;
    }
    pthread_mutex_unlock(&lock);
    return failing("cuInit") ? CUDA_ERROR_UNKNOWN : CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuDriverGetVersion(int *version)
{
    if (version == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *version = 13000;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuDeviceGetCount(int *count)
{
    ENTER("cuDeviceGetCount");
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    *count = ndevices;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuDeviceGet(CUdevice *dev, int ordinal)
{
    ENTER("cuDeviceGet");
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal < 0 || ordinal >= ndevices)
        return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (dev < 0 || dev >= ndevices || name == NULL || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "nvipcfix simulated device %d", dev);
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev)
{
    ENTER("cuDevicePrimaryCtxRetain");
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (dev < 0 || dev >= ndevices)
        return CUDA_ERROR_INVALID_DEVICE;
    *ctx = &primary[dev];
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    if (dev < 0 || dev >= ndevices)
        return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx)
{
    ENTER("cuCtxSetCurrent");
    current = ctx;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuCtxGetCurrent(CUcontext *ctx)
{
    ENTER("cuCtxGetCurrent");
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    *ctx = current;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuCtxGetDevice(CUdevice *dev)
{
    if (current == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    *dev = current->device;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuCtxSynchronize(void)
{
    return current == NULL ? CUDA_ERROR_INVALID_CONTEXT : current->sticky;
}

/* ---- memory ------------------------------------------------------------ */

/* Caller holds the lock. First-fit placement in the device's range, so a
 * freed address is handed out again, as cudaMalloc does. */
static struct chunk *new_chunk(int device, uint64_t size)
{
    uint64_t start = va_base[device], end = start + va_per_device, at = start;
    for (;;) {
        int moved = 0;
        for (struct chunk *c = chunks; c != NULL; c = c->next)
            if (c->device == device && at < c->addr + c->size && c->addr < at + size) {
                at = c->addr + c->size;
                moved = 1;
            }
        if (!moved)
            break;
    }
    if (at + size > end)
        return NULL;

    struct chunk *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->id = next_chunk_id++;
    char name[64];
    snprintf(name, sizeof name, "simcuda-%016llx-%u-p%d", (unsigned long long)get64(ident), c->id,
             (int)getpid());
    c->fd = memfd_create(name, MFD_CLOEXEC);
    if (c->fd < 0 || ftruncate(c->fd, (off_t)size) != 0 ||
        mmap((void *)at, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, c->fd, 0) ==
            MAP_FAILED) {
        if (c->fd >= 0)
            close(c->fd);
        free(c);
        return NULL;
    }
    c->device = device;
    c->addr = at;
    c->size = size;
    c->next = chunks;
    chunks = c;
    return c;
}

static void drop_chunk(struct chunk *c)
{
    for (struct chunk **pp = &chunks; *pp != NULL; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (small_chunk[c->device] == c)
        small_chunk[c->device] = NULL;
    /* Give the range back to the reservation. */
    mmap((void *)c->addr, c->size, PROT_NONE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    close(c->fd);
    free(c);
}

SIM_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    ENTER("cuMemAlloc");
    if (current == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (dptr == NULL || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    int dev = current->device;
    pthread_mutex_lock(&lock);
    struct chunk *c;
    uint64_t at;
    if (bytesize <= SIM_SMALL_MAX) {
        uint64_t need = (bytesize + SIM_PACK_STEP - 1) / SIM_PACK_STEP * SIM_PACK_STEP;
        c = small_chunk[dev];
        if (c == NULL || c->used + need > c->size) {
            c = new_chunk(dev, SIM_CHUNK);
            small_chunk[dev] = c;
        }
        if (c == NULL) {
            pthread_mutex_unlock(&lock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        at = c->addr + c->used;
        c->used += need;
    } else {
        c = new_chunk(dev, (bytesize + SIM_CHUNK - 1) / SIM_CHUNK * SIM_CHUNK);
        if (c == NULL) {
            pthread_mutex_unlock(&lock);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        at = c->addr;
        c->used = c->size;
    }
    struct alloc *a = calloc(1, sizeof *a);
    if (a == NULL) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    a->base = at;
    a->size = bytesize;
    a->chunk = c;
    a->object_id = next_object_id++;
    a->next = allocs;
    allocs = a;
    HASH_ADD(hh, allocs_by_base, base, sizeof a->base, a);
    c->live++;
    pthread_mutex_unlock(&lock);
    *dptr = at;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    ENTER("cuMemFree");
    pthread_mutex_lock(&lock);
    for (struct alloc **pp = &allocs; *pp != NULL; pp = &(*pp)->next) {
        struct alloc *a = *pp;
        if (a->base != dptr)
            continue;
        *pp = a->next;
        HASH_DEL(allocs_by_base, a);
        struct chunk *c = a->chunk;
        /* A packed chunk is emptied only when nothing more fits in it. */
        if (--c->live == 0 && (small_chunk[c->device] != c || c->used == c->size))
            drop_chunk(c);
        free(a);
        pthread_mutex_unlock(&lock);
        return CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_INVALID_VALUE;
}

/* Caller holds the lock. An access to a poisoned import leaves the
 * context with a sticky launch failure, as the H200 did after opening a
 * handle whose byte 31 was changed (docs/handle-format.md). */
static int poisoned(uint64_t p, int on_device)
{
    struct import *m = on_device ? find_import(p) : NULL;
    if (m != NULL && m->poisoned && current != NULL)
        current->sticky = CUDA_ERROR_LAUNCH_FAILED;
    return current != NULL && current->sticky != CUDA_SUCCESS;
}

static CUresult copy(uint64_t dst, int dst_dev, uint64_t src, int src_dev, size_t n)
{
    pthread_mutex_lock(&lock);
    int bad = poisoned(dst, dst_dev) | poisoned(src, src_dev);
    int ok = (!dst_dev || accessible(dst, n)) && (!src_dev || accessible(src, n));
    pthread_mutex_unlock(&lock);
    if (bad)
        return CUDA_ERROR_LAUNCH_FAILED;
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;
    memmove((void *)dst, (const void *)src, n);
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n)
{
    ENTER("cuMemcpyHtoD");
    return copy(dst, 1, (uint64_t)src, 0, n);
}

SIM_EXPORT CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{
    ENTER("cuMemcpyDtoH");
    return copy((uint64_t)dst, 0, src, 1, n);
}

SIM_EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    ENTER("cuMemcpyDtoD");
    return copy(dst, 1, src, 1, n);
}

SIM_EXPORT CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char value, size_t n)
{
    ENTER("cuMemsetD8");
    pthread_mutex_lock(&lock);
    int ok = accessible(dst, n);
    pthread_mutex_unlock(&lock);
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;
    memset((void *)dst, value, n);
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr p)
{
    ENTER("cuMemGetAddressRange");
    uint64_t base = 0, size = 0;
    pthread_mutex_lock(&lock);
    struct alloc *a = find_alloc(p);
    struct import *m = a == NULL ? find_import(p) : NULL;
    if (a != NULL) {
        base = a->base;
        size = a->size;
    } else if (m != NULL) {
        base = m->ptr;
        size = m->size;
    } else {
        struct vmm_range *map = find_range(vmm_maps, p);
        if (map != NULL && (map->access || range_before_access)) { /* the one mapping */
            base = map->va;
            size = map->size;
        }
    }
    pthread_mutex_unlock(&lock);
    if (base == 0)
        return CUDA_ERROR_NOT_FOUND;
    if (pbase != NULL)
        *pbase = base;
    if (psize != NULL)
        *psize = size;
    return CUDA_SUCCESS;
}

/* Caller holds the lock. Returns 0, or -1 for an attribute not simulated.
 * VMM memory as measured: the reservation's range, the mapping's buffer id
 * (0 where nothing is mapped), never legacy-IPC capable. */
static int attribute(CUpointer_attribute attr, void *data, uint64_t p)
{
    struct alloc *a = find_alloc(p);
    struct import *m = a == NULL ? find_import(p) : NULL;
    struct vmm_range *res = a == NULL && m == NULL ? find_range(vmm_reserved, p) : NULL;
    struct vmm_range *map = res != NULL ? find_range(vmm_maps, p) : NULL;
    int known = a != NULL || m != NULL || res != NULL;
    CUcontext ctx = NULL;
    uint64_t base = 0, size = 0, id = 0;
    int ordinal = -1;
    if (a != NULL) {
        ctx = &primary[a->chunk->device];
        base = a->base;
        size = a->size;
        id = a->object_id;
        ordinal = a->chunk->device;
    } else if (m != NULL) {
        ctx = m->ctx;
        base = m->ptr;
        size = m->size;
        id = m->buffer_id;
        ordinal = m->ctx->device;
    } else if (res != NULL) {
        ctx = map != NULL ? &primary[map->alloc->device] : NULL;
        base = res->va;
        size = res->size;
        id = map != NULL ? map->buffer_id : 0;
        ordinal = map != NULL ? map->alloc->device : -2;
    }
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
        *(CUcontext *)data = ctx;
        return 0;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = known ? CU_MEMORYTYPE_DEVICE : 0;
        return 0;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
        *(CUdeviceptr *)data = known ? p : 0;
        return 0;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
        *(unsigned long long *)data = id;
        return 0;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        *(CUdeviceptr *)data = base;
        return 0;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        *(size_t *)data = size;
        return 0;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = ordinal;
        return 0;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
        *(int *)data = a != NULL;
        return 0;
    default:
        return -1;
    }
}

SIM_EXPORT CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attr, CUdeviceptr p)
{
    ENTER("cuPointerGetAttribute");
    atomic_fetch_add(&attribute_queries, 1);
    if (data == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    int known = find_alloc(p) != NULL || find_import(p) != NULL ||
                find_range(vmm_reserved, p) != NULL;
    int r = known ? attribute(attr, data, p) : -1;
    pthread_mutex_unlock(&lock);
    return r == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Like the real driver: an unknown pointer is no error, its attributes are
 * zero. */
SIM_EXPORT CUresult cuPointerGetAttributes(unsigned int n, CUpointer_attribute *attrs,
                                           void **data, CUdeviceptr p)
{
    ENTER("cuPointerGetAttributes");
    atomic_fetch_add(&attribute_queries, 1);
    if (attrs == NULL || data == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&lock);
    for (unsigned int i = 0; i < n && r == CUDA_SUCCESS; i++)
        if (data[i] == NULL || attribute(attrs[i], data[i], p) != 0)
            r = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_unlock(&lock);
    return r;
}

/* ---- IPC ---------------------------------------------------------------- */

SIM_EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr p)
{
    ENTER("cuIpcGetMemHandle");
    if (handle == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    struct alloc *a = find_alloc(p); /* the bug: the containing allocation */
    if (a == NULL) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    unsigned char *h = (unsigned char *)handle->reserved;
    memset(h, 0, CU_IPC_HANDLE_SIZE);
    memcpy(h, ident, 8);
    put64(h + 8, (uint64_t)getpid());
    put64(h + 16, a->size);
    uint64_t pages = a->chunk->size / SIM_PAGE, off = a->base - a->chunk->addr;
    put32(h + 24, (uint32_t)pages);
    put32(h + 28, (uint32_t)off);
    h[32] = 0x06;
    h[37] = 0xff;
    put64(h + 40, a->object_id);
    put32(h + 48, SIM_CLIENT_BASE | (uint32_t)getpid());
    put32(h + 52, (uint32_t)a->chunk->fd | (a->chunk->id << SIM_FD_BITS));
    if (handle_tail)
        put64(h + 56, a->object_id * UINT64_C(0x9E3779B97F4A7C15) | 1);
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

/* The open path validates what the real driver validates, with its errors
 * (H200, driver 580.159.04, tests/gpu/handle_bytes.c; table in
 * docs/handle-format.md). A fresh open ignores bytes 0-23, 37-47 and 56-63;
 * refuses a changed client (48-51) with INVALID_HANDLE, a changed type or
 * bytes 33-36 (32-36), chunk size (24-27) or memory handle (52-55) with
 * INVALID_VALUE; an offset in the chunk (28-31) that does not fit
 * with ALREADY_MAPPED, and one with bit 31 set opens, but the first access
 * leaves a sticky launch failure. A re-open of a block already mapped in
 * the context is found by the object id (40-47) and checks only the client,
 * the memory handle, the size and the offset: bytes 24-27 and 32-39 are
 * not looked at (the re-open gives the existing mapping). An offset that
 * changed to another 4 KiB boundary, or with bit 31 set, is a fresh open.
 * Not modelled: object ids here are per allocation, while the H200 gives
 * the packed blocks of a chunk one id (an importer holding a neighbour of
 * the same chunk then takes the re-open path, where a changed chunk size
 * opened); the NOT_PERMITTED (800) of byte 52 xor 0x80 (see chunk_of). */

/* Whether pid is a live process: /proc/PID also answers for a thread's id
 * (qemu-user's own threads, say), whose descriptors are its process's, so
 * a client is a thread-group leader only. */
static int is_process(pid_t pid)
{
    char path[40], line[128];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    long tgid = -1;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "Tgid: %ld", &tgid) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return tgid == (long)pid;
}

/* The exporter's process id in a valid client, or 0. */
static pid_t client_pid(const unsigned char *h)
{
    uint32_t client = get32(h + 48);
    if ((client & ~SIM_CLIENT_PID_MASK) != SIM_CLIENT_BASE)
        return 0;
    pid_t pid = (pid_t)(client & SIM_CLIENT_PID_MASK);
    return pid != 0 && is_process(pid) ? pid : 0;
}

/* Nonzero when process pid holds a chunk of a simulated driver that it
 * allocated itself (a live client; looked for only on the error path).
 * Chunks it holds as an importer, or inherited through fork(), do not make
 * it one: a handle whose client bytes were changed to name such a process
 * (a test's own importer, pid ^ 256) is no client's, as on the GPU. */
static int holds_chunks(pid_t pid)
{
    char path[64], link[256], own[32];
    snprintf(own, sizeof own, "-p%d", (int)pid);
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *dir = opendir(path);
    int found = 0;
    for (struct dirent *e; dir != NULL && !found && (e = readdir(dir)) != NULL;) {
        snprintf(path, sizeof path, "/proc/%d/fd/%.20s", (int)pid, e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        link[n > 0 ? n : 0] = '\0';
        char *mark = strncmp(link, "/memfd:simcuda-", 15) == 0 ? strrchr(link, '-') : NULL;
        found = mark != NULL && strncmp(mark, own, strlen(own)) == 0 &&
                (mark[strlen(own)] == '\0' || mark[strlen(own)] == ' ');
    }
    if (dir != NULL)
        closedir(dir);
    return found;
}

/* Opens the chunk the memory handle (52-55) names in the exporter. Returns
 * CUDA_SUCCESS and *fd, or INVALID_VALUE if it names no chunk. (The H200
 * answered NOT_PERMITTED, 800, to byte 52 xor 0x80 of a packed block, the
 * H100 to that of a 64 MiB block; what that value named is not known, so
 * it is not modelled.) */
static CUresult chunk_of(pid_t pid, uint32_t memory, int *fd)
{
    char path[64], link[256];
    snprintf(path, sizeof path, "/proc/%d/fd/%u", (int)pid, memory & SIM_FD_MASK);
    ssize_t n = readlink(path, link, sizeof link - 1);
    link[n > 0 ? n : 0] = '\0';
    static const char prefix[] = "/memfd:simcuda-";
    const char *dash = n > 0 && strncmp(link, prefix, sizeof prefix - 1) == 0
                           ? strchr(link + sizeof prefix - 1, '-')
                           : NULL;
    if (dash == NULL || (strtoul(dash + 1, NULL, 10) & 0xffff) != memory >> SIM_FD_BITS)
        return CUDA_ERROR_INVALID_VALUE;
    *fd = open(path, O_RDWR | O_CLOEXEC);
    return *fd >= 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Caller holds the lock. A re-open of m with handle h. Through the legacy
 * entry point (cuIpcOpenMemHandle, version 4010) a re-open that passes the
 * checks is refused with ALREADY_MAPPED, as drivers before CUDA 11 did: on
 * the H200 (580.159.04) a program that took "cuIpcOpenMemHandle" with
 * dlsym got 208 for every second open of a block (gpu-check, "exporter
 * preloaded, importer not, base opened first: dlsym"); the _v2 entry counts
 * references. */
static CUresult reopen(struct import *m, const unsigned char *h, CUdeviceptr *pdptr, int legacy)
{
    if (reopen_unchecked)
        goto found;
    if (memcmp(m->key + 48, h + 48, 4) != 0)
        return CUDA_ERROR_INVALID_HANDLE;
    if (memcmp(m->key + 52, h + 52, 4) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (memcmp(m->key + 16, h + 16, 8) != 0 || memcmp(m->key + 28, h + 28, 4) != 0)
        return CUDA_ERROR_ALREADY_MAPPED;
found:
    if (old_driver || legacy)
        return CUDA_ERROR_ALREADY_MAPPED;
    m->refs++;
    *pdptr = m->ptr;
    return CUDA_SUCCESS;
}

/* Caller holds the lock. Maps the chunk fd for handle h (a fresh open). */
static CUresult map_import(const unsigned char *h, int fd, CUdeviceptr *pdptr)
{
    uint64_t chunk = (uint64_t)get32(h + 24) * SIM_PAGE, size = get64(h + 16);
    uint32_t off = get32(h + 28);
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size != chunk)
        return CUDA_ERROR_INVALID_VALUE; /* not the chunk's size */
    int poison = (off & UINT32_C(0x80000000)) != 0;
    /* A size past the chunk counts as the chunk (measured: a packed block's
     * then fails the offset check with 208, an unpacked one opens). A size
     * of 0 was never measured: the simulator maps the rest of the chunk,
     * so that what opens is always an allocation (the fuzzer found a zero
     * size opening an empty one). */
    if (size > chunk)
        size = chunk;
    if (size == 0)
        size = off < chunk ? chunk - off : 0;
    if (!poison && off + size > chunk)
        return CUDA_ERROR_ALREADY_MAPPED;
    void *map = mmap(NULL, chunk, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    struct import *m = map == MAP_FAILED ? NULL : calloc(1, sizeof *m);
    if (m == NULL) {
        if (map != MAP_FAILED)
            munmap(map, chunk);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    memcpy(m->key, h, sizeof m->key);
    m->poisoned = poison;
    m->ctx = current;
    m->map = map;
    m->map_size = chunk;
    m->ptr = (uint64_t)map + (poison ? 0 : off); /* the allocation's base */
    m->size = poison ? SIM_PAGE : size;
    m->buffer_id = next_object_id++;
    m->refs = 1;
    m->next = imports;
    imports = m;
    real_opens++;
    *pdptr = m->ptr;
    return CUDA_SUCCESS;
}

/* Caller holds the lock. An open of a block not mapped in the context. */
static CUresult fresh_open(const unsigned char *h, CUdeviceptr *pdptr)
{
    pid_t pid = client_pid(h);
    if (pid == 0)
        return CUDA_ERROR_INVALID_HANDLE;
    /* The exporter itself; a client changed to name this process when it
     * allocated nothing (a forked importer whose pid is the exporter's with
     * a bit flipped) is no client's, as any changed client. */
    if (pid == getpid())
        return holds_chunks(pid) ? CUDA_ERROR_INVALID_CONTEXT : CUDA_ERROR_INVALID_HANDLE;
    int fd = -1;
    CUresult r = h[32] != 0x06 || get32(h + 33) != 0 ? CUDA_ERROR_INVALID_VALUE
                                                     : chunk_of(pid, get32(h + 52), &fd);
    if (r == CUDA_ERROR_INVALID_VALUE && !holds_chunks(pid))
        r = CUDA_ERROR_INVALID_HANDLE; /* no such client */
    if (r == CUDA_SUCCESS)
        r = map_import(h, fd, pdptr);
    if (fd >= 0)
        close(fd);
    return r;
}

static CUresult ipc_open(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int flags,
                         int legacy)
{
    const unsigned char *h = (const unsigned char *)handle.reserved;
    if (pdptr == NULL || (flags > CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS && !any_ipc_flags))
        return CUDA_ERROR_INVALID_VALUE;
    if (current == NULL)
        return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&lock);
    uint32_t off = get32(h + 28);
    struct import *m = imports;
    while (m != NULL && !(m->ctx == current && memcmp(m->key + 40, h + 40, 8) == 0 &&
                          (get32(m->key + 28) == off ||
                           ((off & 0xfff) != 0 && !(off & UINT32_C(0x80000000))))))
        m = m->next;
    CUresult r = m != NULL ? reopen(m, h, pdptr, legacy) : fresh_open(h, pdptr);
    pthread_mutex_unlock(&lock);
    return r;
}

SIM_EXPORT CUresult cuIpcOpenMemHandle(CUdeviceptr *pdptr, CUipcMemHandle handle,
                                       unsigned int flags)
{
    ENTER("cuIpcOpenMemHandle");
    return ipc_open(pdptr, handle, flags, 1);
}

SIM_EXPORT CUresult cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle,
                                          unsigned int flags)
{
    ENTER("cuIpcOpenMemHandle_v2");
    return ipc_open(pdptr, handle, flags, 0);
}

SIM_EXPORT CUresult cuIpcCloseMemHandle(CUdeviceptr p)
{
    ENTER("cuIpcCloseMemHandle");
    pthread_mutex_lock(&lock);
    for (struct import **pp = &imports; *pp != NULL; pp = &(*pp)->next) {
        struct import *m = *pp;
        if (m->ptr != p) /* an interior pointer is an error */
            continue;
        if (--m->refs == 0) {
            *pp = m->next;
            munmap(m->map, m->map_size);
            free(m);
            real_closes++;
        }
        pthread_mutex_unlock(&lock);
        return CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_INVALID_VALUE;
}

/* ---- VMM: cuMemCreate and friends ---------------------------------------- */

#define SIM_VMM_GRANULARITY SIM_CHUNK

static struct vmm_alloc *find_vmm_alloc(uint64_t handle)
{
    for (struct vmm_alloc *a = vmm_allocs; a != NULL; a = a->next)
        if (a->handle == handle)
            return a;
    return NULL;
}

/* Caller holds the lock. */
static void vmm_unref(struct vmm_alloc *a)
{
    if (--a->refs > 0)
        return;
    for (struct vmm_alloc **pp = &vmm_allocs; *pp != NULL; pp = &(*pp)->next)
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    close(a->fd);
    free(a);
}

/* Caller holds the lock. Takes ownership of fd. */
static struct vmm_alloc *vmm_new_alloc(int fd, uint64_t size, int device, unsigned types)
{
    struct vmm_alloc *a = calloc(1, sizeof *a);
    if (a == NULL)
        return NULL;
    a->handle = next_vmm_handle;
    next_vmm_handle += 0x9d0; /* handles look like heap addresses, as measured */
    a->fd = fd;
    a->size = size;
    a->device = device;
    a->types = types;
    a->refs = 1;
    a->next = vmm_allocs;
    vmm_allocs = a;
    return a;
}

SIM_EXPORT CUresult cuMemGetAllocationGranularity(size_t *granularity,
                                                  const CUmemAllocationProp *prop,
                                                  CUmemAllocationGranularity_flags option)
{
    ENTER("cuMemGetAllocationGranularity");
    (void)option;
    if (granularity == NULL || prop == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    *granularity = SIM_VMM_GRANULARITY;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                                const CUmemAllocationProp *prop, unsigned long long flags)
{
    ENTER("cuMemCreate");
    if (!initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (handle == NULL || prop == NULL || flags != 0 || size == 0 ||
        size % SIM_VMM_GRANULARITY != 0 || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED ||
        prop->location.type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    if (prop->location.id < 0 || prop->location.id >= ndevices)
        return CUDA_ERROR_INVALID_DEVICE;
    char name[64];
    pthread_mutex_lock(&lock);
    snprintf(name, sizeof name, "simcuda-vmm-%d-%llx", prop->location.id,
             (unsigned long long)next_vmm_handle);
    int fd = memfd_create(name, MFD_CLOEXEC);
    struct vmm_alloc *a = NULL;
    if (fd >= 0 && ftruncate(fd, (off_t)size) == 0)
        a = vmm_new_alloc(fd, size, prop->location.id, prop->requestedHandleTypes);
    if (a == NULL) {
        if (fd >= 0)
            close(fd);
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *handle = a->handle;
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    ENTER("cuMemRelease");
    pthread_mutex_lock(&lock);
    struct vmm_alloc *a = find_vmm_alloc(handle);
    if (a != NULL)
        vmm_unref(a);
    pthread_mutex_unlock(&lock);
    return a != NULL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SIM_EXPORT CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
                                        CUdeviceptr addr, unsigned long long flags)
{
    ENTER("cuMemAddressReserve");
    (void)addr; /* a hint only */
    if (ptr == NULL || size == 0 || size % SIM_VMM_GRANULARITY != 0 || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    uint64_t align = alignment > SIM_VMM_GRANULARITY ? alignment : SIM_VMM_GRANULARITY;
    /* Reserve more and trim, so the range is aligned as the driver's is. */
    uint8_t *raw = mmap(NULL, size + align, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED)
        return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t start = ((uint64_t)raw + align - 1) / align * align;
    if (start > (uint64_t)raw)
        munmap(raw, start - (uint64_t)raw);
    munmap((void *)(start + size), (uint64_t)raw + size + align - (start + size));
    struct vmm_range *r = calloc(1, sizeof *r);
    if (r == NULL) {
        munmap((void *)start, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    r->va = start;
    r->size = size;
    pthread_mutex_lock(&lock);
    r->next = vmm_reserved;
    vmm_reserved = r;
    pthread_mutex_unlock(&lock);
    *ptr = start;
    return CUDA_SUCCESS;
}

SIM_EXPORT CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    ENTER("cuMemAddressFree");
    pthread_mutex_lock(&lock);
    for (struct vmm_range **pp = &vmm_reserved; *pp != NULL; pp = &(*pp)->next) {
        struct vmm_range *r = *pp;
        if (r->va != ptr || r->size != size)
            continue;
        for (struct vmm_range *m = vmm_maps; m != NULL; m = m->next)
            if (m->va >= r->va && m->va - r->va < r->size) {
                pthread_mutex_unlock(&lock);
                return CUDA_ERROR_INVALID_VALUE; /* still mapped */
            }
        *pp = r->next;
        munmap((void *)r->va, r->size);
        free(r);
        pthread_mutex_unlock(&lock);
        return CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_INVALID_VALUE;
}

SIM_EXPORT CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                             CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    ENTER("cuMemMap");
    if (offset != 0 || flags != 0 || size == 0 || ptr % SIM_VMM_GRANULARITY != 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    struct vmm_alloc *a = find_vmm_alloc(handle);
    struct vmm_range *res = find_range(vmm_reserved, ptr);
    CUresult r = CUDA_SUCCESS;
    if (a == NULL || res == NULL || size != a->size || size > res->size - (ptr - res->va))
        r = CUDA_ERROR_INVALID_VALUE;
    for (struct vmm_range *m = vmm_maps; r == CUDA_SUCCESS && m != NULL; m = m->next)
        if (ptr < m->va + m->size && m->va < ptr + size)
            r = CUDA_ERROR_ALREADY_MAPPED;
    struct vmm_range *m = r == CUDA_SUCCESS ? calloc(1, sizeof *m) : NULL;
    if (r == CUDA_SUCCESS && (m == NULL || mmap((void *)ptr, size, PROT_NONE,
                                                MAP_SHARED | MAP_FIXED, a->fd, 0) == MAP_FAILED)) {
        free(m);
        r = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (r == CUDA_SUCCESS) {
        m->va = ptr;
        m->size = size;
        m->alloc = a;
        m->buffer_id = next_object_id++;
        m->next = vmm_maps;
        vmm_maps = m;
        a->refs++;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

SIM_EXPORT CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    ENTER("cuMemUnmap");
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    for (struct vmm_range **pp = &vmm_maps; *pp != NULL;) {
        struct vmm_range *m = *pp;
        if (m->va < ptr || m->va + m->size > ptr + size) {
            pp = &m->next;
            continue;
        }
        *pp = m->next;
        mmap((void *)m->va, m->size, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        vmm_unref(m->alloc);
        free(m);
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

/* Every byte of [ptr, ptr+size) must be mapped; access is per device, and
 * simulated devices have no peer access to each other's memory. */
SIM_EXPORT CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
                                   size_t count)
{
    ENTER("cuMemSetAccess");
    if (desc == NULL || count == 0 || size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    CUresult r = CUDA_SUCCESS;
    for (uint64_t p = ptr; r == CUDA_SUCCESS && p < ptr + size;) {
        struct vmm_range *m = find_range(vmm_maps, p);
        if (m == NULL) {
            r = CUDA_ERROR_INVALID_VALUE;
            break;
        }
        for (size_t i = 0; i < count; i++)
            if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
                desc[i].location.id < 0 || desc[i].location.id >= ndevices)
                r = CUDA_ERROR_INVALID_DEVICE;
            else if (desc[i].location.id != m->alloc->device)
                r = CUDA_ERROR_PEER_ACCESS_UNSUPPORTED;
        p = m->va + m->size;
    }
    for (uint64_t p = ptr; r == CUDA_SUCCESS && p < ptr + size;) {
        struct vmm_range *m = find_range(vmm_maps, p);
        int rw = desc[0].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        mprotect((void *)m->va, m->size, rw ? PROT_READ | PROT_WRITE : PROT_READ);
        m->access = 1;
        p = m->va + m->size;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

SIM_EXPORT CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    ENTER("cuMemRetainAllocationHandle");
    if (handle == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    struct vmm_range *m = find_range(vmm_maps, (uint64_t)addr);
    if (m != NULL) {
        m->alloc->refs++;
        *handle = m->alloc->handle;
    }
    pthread_mutex_unlock(&lock);
    return m != NULL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SIM_EXPORT CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop,
                                                           CUmemGenericAllocationHandle handle)
{
    ENTER("cuMemGetAllocationPropertiesFromHandle");
    if (prop == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    struct vmm_alloc *a = find_vmm_alloc(handle);
    if (a != NULL) {
        memset(prop, 0, sizeof *prop);
        prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop->requestedHandleTypes = (CUmemAllocationHandleType)a->types;
        prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop->location.id = a->device;
    }
    pthread_mutex_unlock(&lock);
    return a != NULL ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SIM_EXPORT CUresult cuMemExportToShareableHandle(void *shareable,
                                                 CUmemGenericAllocationHandle handle,
                                                 CUmemAllocationHandleType type,
                                                 unsigned long long flags)
{
    ENTER("cuMemExportToShareableHandle");
    if (shareable == NULL || flags != 0 || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lock);
    struct vmm_alloc *a = find_vmm_alloc(handle);
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    if (a != NULL && (a->types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)) {
        /* A new descriptor, as the driver gives; not inherited across exec. */
        int fd = fcntl(a->fd, F_DUPFD_CLOEXEC, 0);
        r = fd >= 0 ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
        if (fd >= 0)
            *(int *)shareable = fd;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

/* The descriptor stays the caller's. Anything but a simulated allocation's
 * memfd is refused. */
SIM_EXPORT CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle,
                                                   void *os_handle,
                                                   CUmemAllocationHandleType type)
{
    ENTER("cuMemImportFromShareableHandle");
    if (handle == NULL || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_INVALID_VALUE;
    int fd = (int)(intptr_t)os_handle, device = -1;
    char path[64], link[256];
    unsigned long long id;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    link[n > 0 ? n : 0] = '\0';
    struct stat st;
    if (sscanf(link, "/memfd:simcuda-vmm-%d-%llx", &device, &id) != 2 || device < 0 ||
        device >= ndevices || fstat(fd, &st) != 0 || st.st_size <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&lock);
    struct vmm_alloc *a =
        vmm_new_alloc(own, (uint64_t)st.st_size, device, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (a != NULL)
        *handle = a->handle;
    pthread_mutex_unlock(&lock);
    if (a == NULL)
        close(own);
    return a != NULL ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

/* ---- errors and entry-point look-up ------------------------------------ */

static const struct {
    CUresult code;
    const char *name, *text;
} errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_ALREADY_MAPPED, "CUDA_ERROR_ALREADY_MAPPED", "resource already mapped"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_PEER_ACCESS_UNSUPPORTED, "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED",
     "peer access is not supported between these two devices"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

SIM_EXPORT CUresult cuGetErrorName(CUresult error, const char **str)
{
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++)
        if (errors[i].code == error) {
            *str = errors[i].name;
            return CUDA_SUCCESS;
        }
    *str = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

SIM_EXPORT CUresult cuGetErrorString(CUresult error, const char **str)
{
    for (size_t i = 0; i < sizeof errors / sizeof errors[0]; i++)
        if (errors[i].code == error) {
            *str = errors[i].text;
            return CUDA_SUCCESS;
        }
    *str = NULL;
    return CUDA_ERROR_INVALID_VALUE;
}

SIM_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                        cuuint64_t flags,
                                        CUdriverProcAddressQueryResult *status);
SIM_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version,
                                     cuuint64_t flags);

/* Base name, the version that introduced this entry, the entry. */
static const struct {
    const char *name;
    int since;
    void *fn;
} procs[] = {
    {"cuInit", 2000, (void *)cuInit},
    {"cuDriverGetVersion", 2020, (void *)cuDriverGetVersion},
    {"cuDeviceGetCount", 2000, (void *)cuDeviceGetCount},
    {"cuDeviceGet", 2000, (void *)cuDeviceGet},
    {"cuDeviceGetName", 2000, (void *)cuDeviceGetName},
    {"cuDevicePrimaryCtxRetain", 7000, (void *)cuDevicePrimaryCtxRetain},
    {"cuDevicePrimaryCtxRelease", 11000, (void *)cuDevicePrimaryCtxRelease_v2},
    {"cuCtxSetCurrent", 4000, (void *)cuCtxSetCurrent},
    {"cuCtxGetCurrent", 4000, (void *)cuCtxGetCurrent},
    {"cuCtxGetDevice", 2000, (void *)cuCtxGetDevice},
    {"cuCtxSynchronize", 2000, (void *)cuCtxSynchronize},
    {"cuMemAlloc", 3020, (void *)cuMemAlloc_v2},
    {"cuMemFree", 3020, (void *)cuMemFree_v2},
    {"cuMemcpyHtoD", 3020, (void *)cuMemcpyHtoD_v2},
    {"cuMemcpyDtoH", 3020, (void *)cuMemcpyDtoH_v2},
    {"cuMemcpyDtoD", 3020, (void *)cuMemcpyDtoD_v2},
    {"cuMemsetD8", 3020, (void *)cuMemsetD8_v2},
    {"cuMemGetAddressRange", 3020, (void *)cuMemGetAddressRange_v2},
    {"cuPointerGetAttribute", 4000, (void *)cuPointerGetAttribute},
    {"cuPointerGetAttributes", 7000, (void *)cuPointerGetAttributes},
    {"cuIpcGetMemHandle", 4010, (void *)cuIpcGetMemHandle},
    {"cuIpcOpenMemHandle", 11000, (void *)cuIpcOpenMemHandle_v2},
    {"cuIpcOpenMemHandle", 4010, (void *)cuIpcOpenMemHandle},
    {"cuIpcCloseMemHandle", 4010, (void *)cuIpcCloseMemHandle},
    {"cuMemGetAllocationGranularity", 10020, (void *)cuMemGetAllocationGranularity},
    {"cuMemCreate", 10020, (void *)cuMemCreate},
    {"cuMemRelease", 10020, (void *)cuMemRelease},
    {"cuMemAddressReserve", 10020, (void *)cuMemAddressReserve},
    {"cuMemAddressFree", 10020, (void *)cuMemAddressFree},
    {"cuMemMap", 10020, (void *)cuMemMap},
    {"cuMemUnmap", 10020, (void *)cuMemUnmap},
    {"cuMemSetAccess", 10020, (void *)cuMemSetAccess},
    {"cuMemRetainAllocationHandle", 11000, (void *)cuMemRetainAllocationHandle},
    {"cuMemGetAllocationPropertiesFromHandle", 10020,
     (void *)cuMemGetAllocationPropertiesFromHandle},
    {"cuMemExportToShareableHandle", 10020, (void *)cuMemExportToShareableHandle},
    {"cuMemImportFromShareableHandle", 10020, (void *)cuMemImportFromShareableHandle},
    {"cuGetErrorName", 6000, (void *)cuGetErrorName},
    {"cuGetErrorString", 6000, (void *)cuGetErrorString},
    {"cuGetProcAddress", 12000, (void *)cuGetProcAddress_v2},
    {"cuGetProcAddress", 11030, (void *)cuGetProcAddress},
};

SIM_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int version,
                                        cuuint64_t flags,
                                        CUdriverProcAddressQueryResult *status)
{
    (void)flags;
    if (failing("cuGetProcAddress"))
        return CUDA_ERROR_UNKNOWN;
    if (symbol == NULL || pfn == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    int seen = 0;
    /* Newest entry first: the first one old enough for the caller wins. */
    for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++) {
        if (strcmp(procs[i].name, symbol) != 0)
            continue;
        seen = 1;
        if (procs[i].since <= version) {
            *pfn = procs[i].fn;
            if (status != NULL)
                *status = CU_GET_PROC_ADDRESS_SUCCESS;
            return CUDA_SUCCESS;
        }
    }
    *pfn = NULL;
    if (status != NULL)
        *status = seen ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                       : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_ERROR_NOT_FOUND;
}

SIM_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int version,
                                     cuuint64_t flags)
{
    return cuGetProcAddress_v2(symbol, pfn, version, flags, NULL);
}

/* ---- for the tests only -------------------------------------------------- */

/* Mappings of other processes' memory this process holds, and how many real
 * opens and last closes the simulated driver has done. */
SIM_EXPORT void simcuda_counts(long *open_mappings, long *opens, long *closes)
{
    long n = 0;
    pthread_mutex_lock(&lock);
    for (struct import *m = imports; m != NULL; m = m->next)
        n++;
    *open_mappings = n;
    *opens = real_opens;
    *closes = real_closes;
    pthread_mutex_unlock(&lock);
}

/* VMM mappings, physical allocations and reservations this process holds. */
SIM_EXPORT void simcuda_vmm_counts(long *maps, long *allocs, long *reservations)
{
    long n[3] = {0, 0, 0};
    pthread_mutex_lock(&lock);
    for (struct vmm_range *m = vmm_maps; m != NULL; m = m->next)
        n[0]++;
    for (struct vmm_alloc *a = vmm_allocs; a != NULL; a = a->next)
        n[1]++;
    for (struct vmm_range *r = vmm_reserved; r != NULL; r = r->next)
        n[2]++;
    pthread_mutex_unlock(&lock);
    *maps = n[0];
    *allocs = n[1];
    *reservations = n[2];
}

/* How many pointer attribute queries (cuPointerGetAttribute and
 * cuPointerGetAttributes) this process has made: what a walk of a
 * reservation costs, one a granule. */
SIM_EXPORT long simcuda_attribute_queries(void)
{
    return atomic_load(&attribute_queries);
}
