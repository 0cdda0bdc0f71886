#include "vmm_share.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uthash.h>

#include "log.h"

#define TIMEOUT_MS 60000 /* the exporter exports about 1 ms per chunk (H100) */
#define SWEEP_FIRST 256

struct chunk {
    uint64_t va, size, buffer_id;
};

/* A mapping this process made from another's chunks: where each chunk
 * went, so the last close unmaps them one by one. */
struct nvipcfix_vmm_import {
    uint64_t base, size, reserved; /* reserved: the range's size, size: what is mapped */
    size_t n, cap;                  /* chunks mapped, room for */
    UT_hash_handle hh;
    uint64_t offsets[];             /* cap places, then cap sizes */
};

struct nvipcfix_vmm_export {
    uint64_t id, first;
    CUcontext ctx;
    int in_first;
    size_t n;
    UT_hash_handle hh_id, hh_first;
    struct chunk chunks[];
};

static uint32_t own_pid_ns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint32_t)st.st_ino : 0;
}

/* A hash (FNV-1a) of the kernel's boot id: the same for every process of
 * one boot of one machine. */
static uint64_t own_boot(void)
{
    char buf[64];
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0)
        return 0;
    uint64_t x = UINT64_C(14695981039346656037);
    for (ssize_t i = 0; i < n; i++)
        x = (x ^ (unsigned char)buf[i]) * UINT64_C(1099511628211);
    return x | 1;
}

static void describe(void *arg, uint64_t export_id, struct nvipcfix_fd_reply *out);
static uint32_t export_fds(void *arg, uint64_t export_id, uint32_t first, uint32_t count,
                           int *fds, int32_t *driver_error);

void nvipcfix_vmm_init(struct nvipcfix_vmm *v, const struct nvipcfix_driver *driver)
{
    memset(v, 0, sizeof *v);
    v->driver = driver;
    pthread_mutex_init(&v->lock, NULL);
    v->next_id = 1;
    v->sweep_at = SWEEP_FIRST;
    struct nvipcfix_fd_service service = {describe, export_fds, v};
    nvipcfix_fd_server_init(&v->server, &service);
}

/* This process's PID namespace and machine, read on first use (so a
 * process that never shares VMM memory reads nothing), again after fork. */
static void identity(struct nvipcfix_vmm *v, uint32_t *pid_ns, uint64_t *boot)
{
    pthread_mutex_lock(&v->lock);
    if (!v->have_identity) {
        v->pid_ns = own_pid_ns();
        v->boot = own_boot();
        v->have_identity = 1;
    }
    *pid_ns = v->pid_ns;
    *boot = v->boot;
    pthread_mutex_unlock(&v->lock);
}

static int has_vmm_calls(const struct nvipcfix_driver *d)
{
    return d->mem_get_address_range != NULL && d->pointer_get_attributes != NULL &&
           d->mem_retain_allocation_handle != NULL &&
           d->mem_get_allocation_properties_from_handle != NULL && d->mem_release != NULL &&
           d->mem_export_to_shareable_handle != NULL &&
           d->mem_import_from_shareable_handle != NULL && d->mem_address_reserve != NULL &&
           d->mem_address_free != NULL && d->mem_map != NULL && d->mem_unmap != NULL &&
           d->mem_set_access != NULL && d->ctx_get_device != NULL &&
           d->mem_get_allocation_granularity != NULL;
}

/* The mapping that contains va: its range and buffer id, and its device. */
static int chunk_at(const struct nvipcfix_driver *d, uint64_t va, struct chunk *c, int *device)
{
    CUdeviceptr base = 0;
    size_t size = 0;
    unsigned long long id = 0;
    int ordinal = -1;
    CUpointer_attribute attrs[2] = {CU_POINTER_ATTRIBUTE_BUFFER_ID,
                                    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL};
    void *data[2] = {&id, &ordinal};
    if (d->mem_get_address_range(&base, &size, va) != CUDA_SUCCESS || base == 0 || size == 0 ||
        d->pointer_get_attributes(2, attrs, data, va) != CUDA_SUCCESS || id == 0)
        return -1;
    c->va = base;
    c->size = size;
    c->buffer_id = id;
    *device = ordinal;
    return 0;
}

/* Nonzero when something is mapped at va (its buffer id is not 0). */
static int mapped_at(const struct nvipcfix_driver *d, uint64_t va)
{
    unsigned long long id = 0;
    CUpointer_attribute attr = CU_POINTER_ATTRIBUTE_BUFFER_ID;
    void *data = &id;
    return d->pointer_get_attributes(1, &attr, &data, va) == CUDA_SUCCESS && id != 0;
}

/* Nonzero while the mapping recorded as c is still there. */
static int chunk_unchanged(const struct nvipcfix_driver *d, const struct chunk *c)
{
    struct chunk now;
    int device;
    return chunk_at(d, c->va, &now, &device) == 0 && now.va == c->va && now.size == c->size &&
           now.buffer_id == c->buffer_id;
}

/* Caller holds v->lock. */
static void drop(struct nvipcfix_vmm *v, struct nvipcfix_vmm_export *e)
{
    HASH_DELETE(hh_id, v->by_id, e);
    if (e->in_first)
        HASH_DELETE(hh_first, v->by_first, e);
    free(e);
    v->count--;
}

/* Caller holds v->lock: forgets exports whose first chunk is gone. */
static void sweep(struct nvipcfix_vmm *v)
{
    struct nvipcfix_vmm_export *e, *tmp;
    HASH_ITER(hh_id, v->by_id, e, tmp)
        if (!chunk_unchanged(v->driver, &e->chunks[0]))
            drop(v, e);
    v->sweep_at = v->count * 2 > SWEEP_FIRST ? v->count * 2 : SWEEP_FIRST;
}

/* The export id for these chunks: the last one made for the same chunks,
 * else a new one. 0 when out of memory. */
static uint64_t record(struct nvipcfix_vmm *v, CUcontext ctx, const struct chunk *chunks,
                       size_t n)
{
    struct nvipcfix_vmm_export *e;
    uint64_t id = 0;
    pthread_mutex_lock(&v->lock);
    HASH_FIND(hh_first, v->by_first, &chunks[0].va, sizeof chunks[0].va, e);
    if (e != NULL && e->n == n && e->ctx == ctx &&
        memcmp(e->chunks, chunks, n * sizeof *chunks) == 0) {
        id = e->id;
        pthread_mutex_unlock(&v->lock);
        return id;
    }
    if (e != NULL) { /* older chunks at this place: only their id finds them now */
        HASH_DELETE(hh_first, v->by_first, e);
        e->in_first = 0;
    }
    if (v->count >= v->sweep_at)
        sweep(v);
    e = malloc(sizeof *e + n * sizeof *chunks);
    if (e != NULL) {
        memset(e, 0, sizeof *e);
        e->id = id = v->next_id++;
        e->first = chunks[0].va;
        e->ctx = ctx;
        e->n = n;
        e->in_first = 1;
        memcpy(e->chunks, chunks, n * sizeof *chunks);
        HASH_ADD(hh_id, v->by_id, id, sizeof e->id, e);
        HASH_ADD(hh_first, v->by_first, first, sizeof e->first, e);
        v->count++;
    }
    pthread_mutex_unlock(&v->lock);
    return id;
}

enum nvipcfix_vmm_error nvipcfix_vmm_export(struct nvipcfix_vmm *v, CUcontext ctx,
                                            CUdeviceptr ptr,
                                            unsigned char ticket[NVIPCFIX_TICKET_BYTES])
{
    const struct nvipcfix_driver *d = v->driver;
    if (!has_vmm_calls(d))
        return NVIPCFIX_VMM_NO_DRIVER;
    CUmemGenericAllocationHandle h;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    if (d->mem_retain_allocation_handle(&h, (void *)(uintptr_t)ptr) != CUDA_SUCCESS)
        return NVIPCFIX_VMM_NOT_VMM;
    CUresult r = d->mem_get_allocation_properties_from_handle(&prop, h);
    d->mem_release(h);
    if (r != CUDA_SUCCESS)
        return NVIPCFIX_VMM_NOT_VMM;
    if (!(prop.requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR))
        return NVIPCFIX_VMM_NOT_SHAREABLE;

    /* The pointer's mapping and those right after it, on the same device.
     * An export of the reservation's start (what RANGE_START_ADDR gives,
     * and what programs that send offsets themselves export) covers every
     * chunk mapped in the reservation, at its place, gaps included. */
    size_t n = 1, cap = 16, step = 0;
    int device, next_device;
    struct chunk *chunks = malloc(cap * sizeof *chunks), c;
    if (chunks == NULL)
        return NVIPCFIX_VMM_NOMEM;
    if (chunk_at(d, ptr, &chunks[0], &device) != 0) {
        free(chunks);
        return NVIPCFIX_VMM_NOT_VMM;
    }
    CUdeviceptr res_start = 0;
    size_t res_size = 0;
    CUpointer_attribute attrs[2] = {CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                    CU_POINTER_ATTRIBUTE_RANGE_SIZE};
    void *data[2] = {&res_start, &res_size};
    uint64_t end = 0;
    if (ptr == chunks[0].va && d->pointer_get_attributes(2, attrs, data, ptr) == CUDA_SUCCESS &&
        res_start == ptr &&
        d->mem_get_allocation_granularity(&step, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) ==
            CUDA_SUCCESS &&
        step > 0)
        end = res_start + res_size;
    for (uint64_t next = chunks[0].va + chunks[0].size; n < NVIPCFIX_FD_MAX;) {
        /* In a reservation's gaps only the buffer id is asked (0: nothing
         * mapped there): 0.14 us a probe on the H100, where a failing
         * cuMemGetAddressRange takes 0.94 us. */
        if ((end != 0 && !mapped_at(d, next)) || chunk_at(d, next, &c, &next_device) != 0) {
            if (next + step < end) {
                next += step;
                continue;
            }
            break;
        }
        if (c.va != next || next_device != device)
            break;
        if (n == cap) {
            struct chunk *more = realloc(chunks, 2 * cap * sizeof *chunks);
            if (more == NULL)
                break; /* the export covers fewer chunks */
            chunks = more;
            cap *= 2;
        }
        chunks[n++] = c;
        next = c.va + c.size;
    }

    pid_t pid;
    uint64_t secret;
    if (nvipcfix_fd_server_start(&v->server, &pid, &secret) != 0) {
        free(chunks);
        return NVIPCFIX_VMM_NO_SERVER;
    }
    uint64_t id = record(v, ctx, chunks, n);
    struct nvipcfix_vmm_ticket t = {
        .pid = (uint64_t)pid,
        .export_id = id,
        .secret = secret,
        .offset = ptr - chunks[0].va,
        .device = (uint8_t)device,
    };
    identity(v, &t.pid_ns, &t.boot);
    free(chunks);
    if (id == 0)
        return NVIPCFIX_VMM_NOMEM;
    nvipcfix_vmm_ticket_encode(ticket, &t);
    return NVIPCFIX_VMM_OK;
}

/* A copy of chunks [first, first + *n) of export id (fewer where it has
 * fewer: *n is set to how many), malloc'd; NULL when there is no such
 * export or none from first on. */
static struct chunk *find_export(struct nvipcfix_vmm *v, uint64_t id, size_t first, size_t *n,
                                 CUcontext *ctx)
{
    struct nvipcfix_vmm_export *e;
    struct chunk *copy = NULL;
    pthread_mutex_lock(&v->lock);
    HASH_FIND(hh_id, v->by_id, &id, sizeof id, e);
    if (e != NULL && first < e->n) {
        if (*n > e->n - first)
            *n = e->n - first;
        if ((copy = malloc(*n * sizeof *copy)) != NULL)
            memcpy(copy, e->chunks + first, *n * sizeof *copy);
        *ctx = e->ctx;
    }
    pthread_mutex_unlock(&v->lock);
    return copy;
}

/* On the server's thread: what export id offers (every chunk recorded; the
 * descriptors say how many are still as exported). */
static void describe(void *arg, uint64_t export_id, struct nvipcfix_fd_reply *out)
{
    struct nvipcfix_vmm *v = arg;
    size_t n = NVIPCFIX_FD_MAX;
    CUcontext ctx = NULL;
    struct chunk *chunks = find_export(v, export_id, 0, &n, &ctx);
    if (chunks == NULL) {
        out->status = NVIPCFIX_FD_UNKNOWN;
        return;
    }
    out->sizes = calloc(n, sizeof *out->sizes);
    out->offsets = calloc(n, sizeof *out->offsets);
    if (out->sizes == NULL || out->offsets == NULL) {
        out->status = NVIPCFIX_FD_FAILED;
        out->driver_error = CUDA_ERROR_OUT_OF_MEMORY;
        free(chunks);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        out->sizes[i] = chunks[i].size;
        out->offsets[i] = chunks[i].va - chunks[0].va;
    }
    out->n = (uint32_t)n;
    out->status = NVIPCFIX_FD_OK;
    free(chunks);
}

/* On the server's thread: a descriptor for each chunk still as exported,
 * in order, stopping at the first that is not. The allocation is retained
 * before the check, so the descriptor is of the mapping checked (buffer
 * ids are never reused). */
static uint32_t export_fds(void *arg, uint64_t export_id, uint32_t first, uint32_t count,
                           int *fds, int32_t *driver_error)
{
    struct nvipcfix_vmm *v = arg;
    const struct nvipcfix_driver *d = v->driver;
    size_t n = count;
    CUcontext ctx = NULL;
    struct chunk *chunks = find_export(v, export_id, first, &n, &ctx);
    if (chunks == NULL)
        return 0;
    if (first == 0 && ctx != NULL && d->ctx_set_current != NULL)
        d->ctx_set_current(ctx);
    uint32_t k;
    for (k = 0; k < n; k++) {
        CUmemGenericAllocationHandle h;
        int fd = -1;
        CUresult r = d->mem_retain_allocation_handle(&h, (void *)(uintptr_t)chunks[k].va);
        if (r != CUDA_SUCCESS)
            break;
        if (!chunk_unchanged(d, &chunks[k])) {
            d->mem_release(h);
            break;
        }
        r = d->mem_export_to_shareable_handle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
        d->mem_release(h);
        if (r != CUDA_SUCCESS) {
            if (k == 0)
                *driver_error = r;
            break;
        }
        fds[k] = fd;
    }
    free(chunks);
    return k;
}

int nvipcfix_vmm_own(struct nvipcfix_vmm *v, const struct nvipcfix_vmm_ticket *t,
                     uint64_t *base, uint64_t *size)
{
    pthread_mutex_lock(&v->server.lock);
    int own = v->server.fd >= 0 && t->pid == (uint64_t)v->server.pid &&
              t->secret == v->server.secret;
    pthread_mutex_unlock(&v->server.lock);
    if (!own)
        return 0;
    size_t n = NVIPCFIX_FD_MAX, i;
    CUcontext ctx;
    struct chunk *chunks = find_export(v, t->export_id, 0, &n, &ctx);
    if (chunks == NULL)
        n = 0;
    *base = chunks != NULL ? chunks[0].va : 0;
    *size = 0;
    for (i = 0; i < n && chunk_unchanged(v->driver, &chunks[i]); i++)
        *size = chunks[i].va + chunks[i].size - chunks[0].va;
    free(chunks);
    return 1;
}

static const char *const channel_advice[] = {
    [NVIPCFIX_FD_UNKNOWN] = "it has no such export (its memory was freed and the export "
                            "forgotten)",
    [NVIPCFIX_FD_FREED] = "the exported memory was freed or remapped since the export; "
                          "nvipcfix never maps newer memory at the same place",
    [NVIPCFIX_FD_REFUSED] = "it refused: this process runs as another user, or the ticket "
                            "was altered",
    [NVIPCFIX_FD_FAILED] = "its driver could not export the memory as a file descriptor",
    [NVIPCFIX_FD_NO_EXPORTER] = "nothing answers for it: the exporter has exited, or runs in "
                                "another network namespace (container)",
    [NVIPCFIX_FD_IMPOSTOR] = "another process answered in its name; nothing was taken from it",
    [NVIPCFIX_FD_BROKEN] = "the connection failed or timed out (out of file descriptors?)",
};

/* Unmaps each chunk mapped and frees the whole range: the first error. */
static CUresult unmap_all(const struct nvipcfix_driver *d, const struct nvipcfix_vmm_import *im)
{
    CUresult r = CUDA_SUCCESS, e;
    for (size_t i = 0; i < im->n; i++)
        if ((e = d->mem_unmap(im->base + im->offsets[i], im->offsets[im->cap + i])) !=
                CUDA_SUCCESS &&
            r == CUDA_SUCCESS)
            r = e;
    e = d->mem_address_free(im->base, im->reserved);
    return r != CUDA_SUCCESS ? r : e;
}

/* An open in progress: the range reserved for the offer, and the chunks
 * mapped into it as their descriptors arrive (each closed at once). */
struct map_job {
    const struct nvipcfix_driver *d;
    struct nvipcfix_vmm_import *im;
    int where; /* the memory's device, as this process numbers it */
    int bad_offer;
    CUresult e;
};

/* The offer: places in order, apart, the first at 0; a range reserved for
 * exactly the span they cover. */
static int begin_map(void *arg, const struct nvipcfix_fd_reply *offer)
{
    struct map_job *job = arg;
    uint64_t total = 0;
    for (uint32_t i = 0; i < offer->n; i++) {
        if (offer->offsets[i] < total || (i == 0 && offer->offsets[0] != 0) ||
            offer->sizes[i] == 0 || offer->offsets[i] + offer->sizes[i] < offer->offsets[i]) {
            job->bad_offer = 1;
            return -1;
        }
        total = offer->offsets[i] + offer->sizes[i];
    }
    job->where = -1;
    job->im = calloc(1, sizeof *job->im + 2 * (size_t)offer->n * sizeof(uint64_t));
    if (job->im == NULL) {
        job->e = CUDA_ERROR_OUT_OF_MEMORY;
        return -1;
    }
    job->im->cap = offer->n;
    memcpy(job->im->offsets, offer->offsets, offer->n * sizeof(uint64_t));
    memcpy(job->im->offsets + offer->n, offer->sizes, offer->n * sizeof(uint64_t));
    CUdeviceptr va = 0;
    job->e = job->d->mem_address_reserve(&va, total, 0, 0, 0);
    job->im->base = va;
    job->im->reserved = total;
    return job->e != CUDA_SUCCESS ? -1 : 0;
}

/* A batch of descriptors: imported, mapped at their places, closed. */
static int take_chunks(void *arg, uint32_t first, const int *fds, uint32_t k)
{
    struct map_job *job = arg;
    struct nvipcfix_vmm_import *im = job->im;
    const struct nvipcfix_driver *d = job->d;
    for (uint32_t j = 0; j < k; j++) {
        uint32_t i = first + j;
        CUmemGenericAllocationHandle h;
        if (job->e == CUDA_SUCCESS)
            job->e = d->mem_import_from_shareable_handle(
                &h, (void *)(intptr_t)fds[j], CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
        close(fds[j]);
        if (job->e != CUDA_SUCCESS)
            continue; /* the rest are closed too */
        if (i == 0) {
            CUmemAllocationProp prop;
            memset(&prop, 0, sizeof prop);
            if (d->mem_get_allocation_properties_from_handle(&prop, h) == CUDA_SUCCESS)
                job->where = prop.location.id;
        }
        job->e = d->mem_map(im->base + im->offsets[i], im->offsets[im->cap + i], 0, h, 0);
        d->mem_release(h); /* the mapping keeps the memory */
        if (job->e == CUDA_SUCCESS) {
            im->n = i + 1;
            im->size = im->offsets[i] + im->offsets[im->cap + i];
        }
    }
    return job->e != CUDA_SUCCESS ? -1 : 0;
}

enum nvipcfix_vmm_error nvipcfix_vmm_map(struct nvipcfix_vmm *v,
                                         const struct nvipcfix_vmm_ticket *t, uint64_t *base,
                                         uint64_t *size, CUresult *r, char *why, size_t n)
{
    const struct nvipcfix_driver *d = v->driver;
    *r = CUDA_ERROR_INVALID_HANDLE;
    if (!has_vmm_calls(d)) {
        *r = CUDA_ERROR_NOT_SUPPORTED;
        snprintf(why, n, "this driver lacks the VMM calls needed to open a VMM ticket");
        return NVIPCFIX_VMM_NO_DRIVER;
    }
    uint32_t pid_ns;
    uint64_t boot;
    identity(v, &pid_ns, &boot);
    if (t->boot != 0 && boot != 0 && t->boot != boot) {
        snprintf(why, n, "a VMM ticket from another machine (or an earlier boot) cannot be "
                         "opened here (CUDA_ERROR_INVALID_HANDLE)");
        return NVIPCFIX_VMM_OTHER_MACHINE;
    }
    if (t->pid_ns != 0 && pid_ns != 0 && t->pid_ns != pid_ns) {
        snprintf(why, n, "a VMM ticket from process %llu of another PID namespace (container) "
                         "cannot be opened here: run both processes in one PID namespace "
                         "(CUDA_ERROR_INVALID_HANDLE)",
                 (unsigned long long)t->pid);
        return NVIPCFIX_VMM_OTHER_NS;
    }
    CUdevice dev;
    CUresult e = d->ctx_get_device(&dev);
    if (e != CUDA_SUCCESS) {
        *r = e;
        snprintf(why, n, "opening a VMM ticket needs a current context (error %d)", (int)e);
        return NVIPCFIX_VMM_IMPORT;
    }

    struct map_job job = {.d = d};
    struct nvipcfix_fd_taker taker = {begin_map, take_chunks, &job};
    uint32_t served = 0;
    int32_t driver_error = 0;
    int st = nvipcfix_fd_request((pid_t)t->pid, t->secret, t->export_id, TIMEOUT_MS, &taker,
                                 &served, &driver_error);
    struct nvipcfix_vmm_import *im = job.im;
    enum nvipcfix_vmm_error err = NVIPCFIX_VMM_OK;
    if (job.bad_offer) {
        snprintf(why, n, "exporting process %llu described its VMM chunks inconsistently; "
                         "nothing was mapped (CUDA_ERROR_INVALID_HANDLE)",
                 (unsigned long long)t->pid);
        err = NVIPCFIX_VMM_CHANNEL;
    } else if (job.e != CUDA_SUCCESS) {
        *r = job.e;
        snprintf(why, n, "importing VMM memory from process %llu failed in the driver "
                         "(error %d)",
                 (unsigned long long)t->pid, (int)job.e);
        err = NVIPCFIX_VMM_IMPORT;
    } else if (st != NVIPCFIX_FD_OK) {
        if (st == NVIPCFIX_FD_FAILED)
            snprintf(why, n, "exporting process %llu could not hand over VMM memory: %s "
                             "(its error %d) (CUDA_ERROR_INVALID_HANDLE)",
                     (unsigned long long)t->pid, channel_advice[st], (int)driver_error);
        else
            snprintf(why, n, "exporting process %llu did not hand over VMM memory: %s "
                             "(CUDA_ERROR_INVALID_HANDLE)",
                     (unsigned long long)t->pid, channel_advice[st]);
        err = NVIPCFIX_VMM_CHANNEL;
    } else if (t->offset >= im->size) {
        *r = CUDA_ERROR_INVALID_VALUE;
        snprintf(why, n, "a VMM ticket's offset %llu is beyond the %llu bytes its exporter "
                         "still has (corrupted ticket, or memory freed since)",
                 (unsigned long long)t->offset, (unsigned long long)im->size);
        err = NVIPCFIX_VMM_BAD_OFFSET;
    }
    CUmemAccessDesc access;
    memset(&access, 0, sizeof access);
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = dev;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    for (size_t i = 0; err == NVIPCFIX_VMM_OK && i < im->n; i++) {
        e = d->mem_set_access(im->base + im->offsets[i], im->offsets[im->cap + i], &access, 1);
        if (e != CUDA_SUCCESS) {
            *r = e;
            snprintf(why, n, "the VMM memory lives on device %d (as this process numbers it); "
                             "the driver refused access from device %d, current here (error "
                             "%d): open it with that device current, or enable peer access",
                     job.where, (int)dev, (int)e);
            err = NVIPCFIX_VMM_ACCESS;
        }
    }
    if (err != NVIPCFIX_VMM_OK) {
        if (im != NULL && im->base != 0)
            unmap_all(d, im);
        free(im);
        return err;
    }
    pthread_mutex_lock(&v->lock);
    HASH_ADD(hh, v->imports, base, sizeof im->base, im);
    pthread_mutex_unlock(&v->lock);
    NVIPCFIX_DEBUG("VMM ticket of process %llu: %zu chunk%s (%llu bytes) received over its "
                   "socket (SCM_RIGHTS) and mapped at 0x%llx",
                   (unsigned long long)t->pid, im->n, im->n == 1 ? "" : "s",
                   (unsigned long long)im->size, (unsigned long long)im->base);
    *base = im->base;
    *size = im->size;
    return NVIPCFIX_VMM_OK;
}

CUresult nvipcfix_vmm_unmap(struct nvipcfix_vmm *v, uint64_t base, uint64_t size)
{
    struct nvipcfix_vmm_import *im;
    pthread_mutex_lock(&v->lock);
    HASH_FIND(hh, v->imports, &base, sizeof base, im);
    if (im != NULL)
        HASH_DEL(v->imports, im);
    pthread_mutex_unlock(&v->lock);
    if (im == NULL || im->size != size) {
        if (im != NULL) { /* not the mapping the caller thinks: leave it */
            pthread_mutex_lock(&v->lock);
            HASH_ADD(hh, v->imports, base, sizeof im->base, im);
            pthread_mutex_unlock(&v->lock);
        }
        return CUDA_ERROR_INVALID_VALUE;
    }
    CUresult r = unmap_all(v->driver, im);
    free(im);
    return r;
}

void nvipcfix_vmm_destroy(struct nvipcfix_vmm *v)
{
    struct nvipcfix_vmm_export *e, *tmp;
    nvipcfix_fd_server_destroy(&v->server);
    struct nvipcfix_vmm_import *im, *itmp;
    HASH_ITER(hh_id, v->by_id, e, tmp)
        drop(v, e);
    HASH_ITER(hh, v->imports, im, itmp) {
        HASH_DEL(v->imports, im);
        free(im);
    }
    pthread_mutex_destroy(&v->lock);
}

void nvipcfix_vmm_stop(struct nvipcfix_vmm *v)
{
    nvipcfix_fd_server_stop(&v->server);
}

/* A child's copy of its parent's records, left behind but still reachable
 * (so leak checkers do not report them). */
static void *volatile left_behind, *volatile left_behind_imports;

void nvipcfix_vmm_forget_after_fork(struct nvipcfix_vmm *v)
{
    /* The parent's records are left behind (another thread may have been
     * changing them); the child starts empty. */
    left_behind = v->by_id;
    left_behind_imports = v->imports;
    nvipcfix_fd_server_forget(&v->server);
    pthread_mutex_init(&v->lock, NULL);
    v->by_id = v->by_first = NULL;
    v->imports = NULL;
    v->have_identity = 0; /* a child may be in a new PID namespace */
    v->count = 0;
    v->next_id = 1;
    v->sweep_at = SWEEP_FIRST;
}

void nvipcfix_vmm_counts(struct nvipcfix_vmm *v, size_t *exports, unsigned long *served,
                         unsigned long *refused)
{
    pthread_mutex_lock(&v->lock);
    *exports = v->count;
    pthread_mutex_unlock(&v->lock);
    *served = atomic_load(&v->server.served);
    *refused = atomic_load(&v->server.refused);
}
