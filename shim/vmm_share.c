#include "vmm_share.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uthash.h>

#include "log.h"

#define chunk nvipcfix_vmm_chunk

/* A mapping this process made from another's chunks: where each chunk
 * went, so the last close unmaps them one by one. */
struct nvipcfix_vmm_import {
    uint64_t base, size, reserved; /* reserved: the range's size, size: what is mapped */
    size_t n, cap;                  /* chunks mapped, room for */
    UT_hash_handle hh;              /* in imports, once mapped */
    UT_hash_handle hh_range;        /* in import_ranges, while reserved */
    uint64_t offsets[];             /* cap places, then cap sizes */
};

/* An export made, for a repeated export of the same mapping: its ticket
 * (without the offset) and the chunks it covers, to check again. */
#define AGAIN_MAX_CHUNKS 16   /* longer exports are not kept here */
#define AGAIN_MAX_ENTRIES 4096 /* more: all forgotten (freed mappings' linger) */
struct nvipcfix_vmm_again {
    uint64_t buffer_id; /* the key: the first chunk's */
    CUcontext ctx;
    int start_ok; /* an export of the first chunk's start was this export too */
    uint64_t dropped; /* the records' count of dropped exports, read before it was recorded */
    struct nvipcfix_vmm_ticket t;
    size_t n;
    UT_hash_handle hh;
    struct chunk chunks[AGAIN_MAX_CHUNKS];
};

/* An export of a reservation's start (it covers every chunk mapped in the
 * reservation, gaps included): its ticket (without the offset), where the
 * reservation starts, and the mapping generation read before its walk.
 * While the generation stands still, nothing the walk saw has changed:
 * the same walk would find the same chunks, so the same export. While the
 * records' count of dropped exports also stands still, the export is still
 * recorded: the ticket, encoded once, is the answer. */
struct nvipcfix_vmm_whole {
    uint64_t buffer_id; /* the key: the chunk's at the reservation's start */
    CUcontext ctx;
    uint64_t va;         /* the reservation's start */
    uint64_t generation; /* never with NVIPCFIX_MAP_GEN_UNTRACKED */
    uint64_t dropped;    /* the records' count of dropped exports, read before it was recorded */
    struct nvipcfix_vmm_ticket t;
    unsigned char ticket[NVIPCFIX_TICKET_BYTES]; /* t encoded */
    UT_hash_handle hh;
};

/* A hash (FNV-1a) of the kernel's boot id: the same for every process of
 * one boot of one machine. */
static uint32_t own_boot(void)
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
    return (uint32_t)(x ^ (x >> 32)) | 1;
}

static int service_secret(void *arg, uint32_t export_id, unsigned char key[NVIPCFIX_KEY_BYTES]);
static void describe(void *arg, uint32_t export_id, struct nvipcfix_fd_reply *out);
static uint32_t export_fds(void *arg, uint32_t export_id, uint32_t first, uint32_t count,
                           int *fds, int32_t *driver_error);
static int chunk_still(void *arg, const struct chunk *c);

/* Microseconds on the monotonic clock: the phases of a VMM open, said at
 * debug level. */
static uint64_t now_us(void)
{
    struct timespec t = {0, 0};
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000 + (uint64_t)t.tv_nsec / 1000;
}

void nvipcfix_vmm_init(struct nvipcfix_vmm *v, const struct nvipcfix_driver *driver)
{
    memset(v, 0, sizeof *v);
    v->driver = driver;
    v->timeout_ms = NVIPCFIX_VMM_TIMEOUT_DEFAULT_MS;
    pthread_mutex_init(&v->lock, NULL);
    pthread_mutex_init(&v->again_lock, NULL);
    nvipcfix_vmm_records_init(&v->records, chunk_still, v);
    struct nvipcfix_fd_service service = {service_secret, describe, export_fds, v};
    nvipcfix_fd_server_init(&v->server, &service);
}

void nvipcfix_vmm_configure(struct nvipcfix_vmm *v, int timeout_ms, const char *socket_dir)
{
    if (timeout_ms > 0)
        v->timeout_ms = timeout_ms;
    snprintf(v->socket_dir, sizeof v->socket_dir, "%s", socket_dir != NULL ? socket_dir : "");
}

/* This process's PID namespace and machine, read on first use (so a
 * process that never shares VMM memory reads nothing), again after fork. */
static void identity(struct nvipcfix_vmm *v, uint32_t *pid_ns, uint32_t *boot)
{
    pthread_mutex_lock(&v->lock);
    if (!v->have_identity) {
        v->pid_ns = nvipcfix_own_pid_ns();
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

/* The buffer id of the mapping at va (0: none). */
static unsigned long long buffer_at(const struct nvipcfix_driver *d, uint64_t va)
{
    unsigned long long id = 0;
    CUpointer_attribute attr = CU_POINTER_ATTRIBUTE_BUFFER_ID;
    void *data = &id;
    return d->pointer_get_attributes(1, &attr, &data, va) == CUDA_SUCCESS ? id : 0;
}

/* The driver table's mapping generation now (acquire: the driver calls
 * after it see at least the changes it counts), or
 * NVIPCFIX_MAP_GEN_UNTRACKED where it keeps none. */
static uint64_t generation(const struct nvipcfix_driver *d)
{
    return d->map_generation != NULL
               ? atomic_load_explicit(d->map_generation, memory_order_acquire)
               : NVIPCFIX_MAP_GEN_UNTRACKED;
}

/* Nonzero while the mapping recorded as c is still there: the mapping at
 * its place has its buffer id, new for every mapping and never reused, so
 * it is the same mapping, at the same place with the same size (one
 * driver call, where a range query and the id took two). */
static int chunk_unchanged(const struct nvipcfix_driver *d, const struct chunk *c)
{
    return c->buffer_id != 0 && buffer_at(d, c->va) == c->buffer_id;
}

static int chunk_still(void *arg, const struct chunk *c)
{
    const struct nvipcfix_vmm *v = arg;
    return chunk_unchanged(v->driver, c);
}

/* The server started, the chunks recorded, the ticket written. */
static enum nvipcfix_vmm_error make_ticket(struct nvipcfix_vmm *v, CUcontext ctx, CUdeviceptr ptr,
                                           const struct chunk *chunks, size_t n, int device,
                                           unsigned char ticket[NVIPCFIX_TICKET_BYTES],
                                           struct nvipcfix_vmm_ticket *made)
{
    struct nvipcfix_vmm_ticket t;
    struct nvipcfix_fd_address where;
    memset(&t, 0, sizeof t);
    identity(v, &t.pid_ns, &t.boot);
    if (nvipcfix_fd_server_start(&v->server, v->socket_dir, v->timeout_ms, t.pid_ns, &where,
                                 v->server_why, sizeof v->server_why) != 0)
        return NVIPCFIX_VMM_NO_SERVER;
    if (ptr - chunks[0].va > NVIPCFIX_TICKET_MAX_OFFSET ||
        nvipcfix_vmm_records_add(&v->records, ctx, chunks, n, &t.export_id, t.secret) != 0)
        return NVIPCFIX_VMM_NOMEM;
    t.pid = where.pid;
    t.uid = where.uid;
    t.nonce = where.nonce;
    t.flags = where.in_dir ? NVIPCFIX_TICKET_IN_DIR : 0;
    t.offset = ptr - chunks[0].va;
    t.device = (uint8_t)device;
    nvipcfix_vmm_ticket_encode(ticket, &t);
    *made = t;
    memset(&t, 0, sizeof t);
    return NVIPCFIX_VMM_OK;
}

/* The end of the reservation that starts at ptr, and in *step the
 * granularity to walk its gaps by; 0 when ptr is not a reservation's start
 * (or the driver does not say). */
static uint64_t reservation_end(const struct nvipcfix_driver *d, CUdeviceptr ptr,
                                const CUmemAllocationProp *prop, size_t *step)
{
    CUdeviceptr start = 0;
    size_t size = 0;
    CUpointer_attribute attrs[2] = {CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                    CU_POINTER_ATTRIBUTE_RANGE_SIZE};
    void *data[2] = {&start, &size};
    if (d->pointer_get_attributes(2, attrs, data, ptr) != CUDA_SUCCESS || start != ptr ||
        d->mem_get_allocation_granularity(step, prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) !=
            CUDA_SUCCESS ||
        *step == 0)
        return 0;
    return start + size;
}

/* Forgets every export kept for repeated exports (caller holds again_lock). */
static void forget_kept(struct nvipcfix_vmm *v)
{
    struct nvipcfix_vmm_again *a, *tmp;
    struct nvipcfix_vmm_whole *w, *wtmp;
    HASH_ITER(hh, v->again, a, tmp) {
        HASH_DEL(v->again, a);
        memset(a, 0, sizeof *a);
        free(a);
    }
    HASH_ITER(hh, v->whole, w, wtmp) {
        HASH_DEL(v->whole, w);
        memset(w, 0, sizeof *w);
        free(w);
    }
    atomic_store(&v->again_count, 0);
}

/* The span of the exports kept takes in [lo, hi) (caller holds again_lock). */
static void widen_span(struct nvipcfix_vmm *v, uint64_t lo, uint64_t hi)
{
    if (atomic_load(&v->again_lo) == 0 || lo < atomic_load(&v->again_lo))
        atomic_store(&v->again_lo, lo);
    if (hi > atomic_load(&v->again_hi))
        atomic_store(&v->again_hi, hi);
}

/* Keeps an export of chunks[0, n) (up to the first gap: a reservation's
 * whole, with its gaps, is kept by remember_whole) for repeated exports. */
static void remember(struct nvipcfix_vmm *v, CUcontext ctx, CUdeviceptr ptr,
                     const struct chunk *chunks, size_t n, uint64_t dropped,
                     const struct nvipcfix_vmm_ticket *t)
{
    if (n > AGAIN_MAX_CHUNKS)
        return;
    struct nvipcfix_vmm_again *a;
    pthread_mutex_lock(&v->again_lock);
    HASH_FIND(hh, v->again, &chunks[0].buffer_id, sizeof chunks[0].buffer_id, a);
    if (a != NULL && a->ctx == ctx && a->n == n && a->t.export_id == t->export_id &&
        nvipcfix_equal_ct(a->t.secret, t->secret, sizeof t->secret) &&
        memcmp(a->chunks, chunks, n * sizeof *chunks) == 0) {
        a->start_ok |= ptr == chunks[0].va; /* the same export */
        if (a->dropped < dropped)
            a->dropped = dropped; /* recorded since that count */
        pthread_mutex_unlock(&v->again_lock);
        return;
    }
    if (a != NULL) { /* another context's, or the chunks after changed: the latest wins */
        HASH_DEL(v->again, a);
        memset(a, 0, sizeof *a);
        free(a);
        atomic_fetch_sub(&v->again_count, 1);
    }
    if (atomic_load(&v->again_count) >= AGAIN_MAX_ENTRIES)
        forget_kept(v);
    if ((a = calloc(1, sizeof *a)) != NULL) {
        a->buffer_id = chunks[0].buffer_id;
        a->ctx = ctx;
        a->start_ok = ptr == chunks[0].va;
        a->dropped = dropped;
        a->t = *t;
        a->n = n;
        memcpy(a->chunks, chunks, n * sizeof *chunks);
        HASH_ADD(hh, v->again, buffer_id, sizeof a->buffer_id, a);
        atomic_fetch_add(&v->again_count, 1);
        widen_span(v, chunks[0].va, chunks[n - 1].va + chunks[n - 1].size);
    }
    pthread_mutex_unlock(&v->again_lock);
}

/* Keeps the export of a reservation's start (first: the chunk there) for
 * repeated exports, with gen, the mapping generation read before its walk:
 * only if the generation is kept and has not moved since (else the walk
 * may have seen a change half made, and the entry would never be used),
 * and not for a range reserved for an import (nvipcfix maps there without
 * moving the generation; such exports are walked each time). Of two
 * exports of one start, the later walk is kept. */
static void remember_whole(struct nvipcfix_vmm *v, CUcontext ctx, const struct chunk *first,
                           uint64_t gen, uint64_t dropped, const struct nvipcfix_vmm_ticket *t)
{
    if ((gen & NVIPCFIX_MAP_GEN_UNTRACKED) != 0 || generation(v->driver) != gen)
        return;
    struct nvipcfix_vmm_import *im;
    pthread_mutex_lock(&v->lock);
    HASH_FIND(hh_range, v->import_ranges, &first->va, sizeof first->va, im);
    pthread_mutex_unlock(&v->lock);
    if (im != NULL)
        return;
    struct nvipcfix_vmm_whole *w;
    pthread_mutex_lock(&v->again_lock);
    HASH_FIND(hh, v->whole, &first->buffer_id, sizeof first->buffer_id, w);
    if (w == NULL) {
        if (atomic_load(&v->again_count) >= AGAIN_MAX_ENTRIES)
            forget_kept(v);
        if ((w = calloc(1, sizeof *w)) != NULL) {
            w->buffer_id = first->buffer_id;
            HASH_ADD(hh, v->whole, buffer_id, sizeof w->buffer_id, w);
            atomic_fetch_add(&v->again_count, 1);
            widen_span(v, first->va, first->va + 1);
        }
    } else if (w->ctx == ctx && w->generation > gen)
        w = NULL; /* a later walk is kept already */
    if (w != NULL) {
        w->ctx = ctx;
        w->va = first->va;
        w->generation = gen;
        w->dropped = dropped;
        w->t = *t;
        w->t.offset = 0;
        nvipcfix_vmm_ticket_encode(w->ticket, &w->t);
    }
    pthread_mutex_unlock(&v->again_lock);
}

/* Nonzero while export t is recorded, with its secret. */
static int still_recorded(struct nvipcfix_vmm *v, const struct nvipcfix_vmm_ticket *t)
{
    unsigned char secret[NVIPCFIX_KEY_BYTES];
    int same = nvipcfix_vmm_records_secret(&v->records, t->export_id, secret) == 0 &&
               nvipcfix_equal_ct(secret, t->secret, sizeof secret);
    memset(secret, 0, sizeof secret);
    return same;
}

/* Export t, kept under key (whole: as a reservation's start's), was found
 * recorded after `dropped` exports had been dropped: while that count
 * stands still, it needs no look-up. */
static void still_recorded_at(struct nvipcfix_vmm *v, int whole, uint64_t key,
                              const struct nvipcfix_vmm_ticket *t, uint64_t dropped)
{
    struct nvipcfix_vmm_whole *w;
    struct nvipcfix_vmm_again *a;
    uint64_t *mark = NULL;
    const struct nvipcfix_vmm_ticket *kept = NULL;
    pthread_mutex_lock(&v->again_lock);
    if (whole) {
        HASH_FIND(hh, v->whole, &key, sizeof key, w);
        if (w != NULL)
            mark = &w->dropped, kept = &w->t;
    } else {
        HASH_FIND(hh, v->again, &key, sizeof key, a);
        if (a != NULL)
            mark = &a->dropped, kept = &a->t;
    }
    if (mark != NULL && *mark < dropped && kept->export_id == t->export_id &&
        nvipcfix_equal_ct(kept->secret, t->secret, sizeof t->secret))
        *mark = dropped;
    pthread_mutex_unlock(&v->again_lock);
}

enum nvipcfix_vmm_error nvipcfix_vmm_export_again(struct nvipcfix_vmm *v, CUcontext ctx,
                                                  CUdeviceptr ptr,
                                                  unsigned char ticket[NVIPCFIX_TICKET_BYTES])
{
    const struct nvipcfix_driver *d = v->driver;
    /* outside every export kept (a legacy block, mostly): no driver call */
    if (atomic_load(&v->again_count) == 0 || ptr < atomic_load(&v->again_lo) ||
        ptr >= atomic_load(&v->again_hi) || d->pointer_get_attributes == NULL ||
        atomic_load(&v->server.stopping))
        return NVIPCFIX_VMM_NOT_AGAIN;
    /* The generation first: if it has not moved since a reservation's walk
     * was made, nothing mapped or unmapped since, up to this moment. So is
     * the count of exports dropped: if it has not moved since an export
     * was kept, the export is still recorded, with its secret. */
    uint64_t gen = generation(d), dropped = nvipcfix_vmm_records_dropped(&v->records);
    unsigned long long id = buffer_at(d, ptr);
    if (id == 0)
        return NVIPCFIX_VMM_NOT_AGAIN;
    struct nvipcfix_vmm_again *a, got;
    struct nvipcfix_vmm_whole *w;
    uint64_t key = id;
    int found = 0, whole = 0, recorded = 0;
    pthread_mutex_lock(&v->again_lock);
    HASH_FIND(hh, v->whole, &key, sizeof key, w);
    if (w != NULL && w->ctx == ctx && w->va == ptr && w->generation == gen) {
        whole = 1; /* gen has no NVIPCFIX_MAP_GEN_UNTRACKED: w's never has */
        recorded = w->dropped == dropped;
        memcpy(ticket, w->ticket, NVIPCFIX_TICKET_BYTES);
        got.t = w->t;
    }
    HASH_FIND(hh, v->again, &key, sizeof key, a);
    if (!whole && a != NULL && a->ctx == ctx) {
        found = 1;
        recorded = a->dropped == dropped;
        got.n = a->n;
        got.start_ok = a->start_ok;
        got.t = a->t;
        memcpy(got.chunks, a->chunks, a->n * sizeof *a->chunks);
    }
    pthread_mutex_unlock(&v->again_lock);
    int same = whole;
    if (found) {
        /* ptr is in the first chunk (its buffer id is never another
         * mapping's); an export of that chunk's start may be a
         * reservation's, which covers more. The chunks after it must be
         * the ones exported, and nothing mapped after them since: else the
         * export would be another. */
        const struct chunk *c = got.chunks;
        same = (ptr != c[0].va || got.start_ok) && ptr - c[0].va < c[0].size &&
               ptr - c[0].va <= NVIPCFIX_TICKET_MAX_OFFSET;
        for (size_t i = 1; same && i < got.n; i++)
            same = chunk_unchanged(d, &c[i]);
        same = same && buffer_at(d, c[got.n - 1].va + c[got.n - 1].size) == 0;
    }
    /* For a reservation's start: the chunk at ptr is the one the walk found
     * there (buffer ids are never reused), and nothing else changed. Either
     * export stands if it is still recorded, with its secret. */
    if (same && !recorded) {
        same = still_recorded(v, &got.t);
        if (same)
            still_recorded_at(v, whole, key, &got.t, dropped);
    }
    if (same && found) {
        got.t.offset = ptr - got.chunks[0].va;
        nvipcfix_vmm_ticket_encode(ticket, &got.t);
    }
    if (!same)
        memset(ticket, 0, NVIPCFIX_TICKET_BYTES);
    memset(&got.t, 0, sizeof got.t);
    return same ? NVIPCFIX_VMM_OK : NVIPCFIX_VMM_NOT_AGAIN;
}

enum nvipcfix_vmm_error nvipcfix_vmm_export(struct nvipcfix_vmm *v, CUcontext ctx,
                                            CUdeviceptr ptr,
                                            unsigned char ticket[NVIPCFIX_TICKET_BYTES])
{
    const struct nvipcfix_driver *d = v->driver;
    if (!has_vmm_calls(d))
        return NVIPCFIX_VMM_NO_DRIVER;
    uint64_t gen = generation(d); /* before anything is asked (remember_whole) */
    uint64_t dropped = nvipcfix_vmm_records_dropped(&v->records); /* before it is recorded */
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
    int device, next_device, cut_short = 0;
    struct chunk *chunks = malloc(cap * sizeof *chunks), c;
    if (chunks == NULL)
        return NVIPCFIX_VMM_NOMEM;
    if (chunk_at(d, ptr, &chunks[0], &device) != 0) {
        free(chunks);
        return NVIPCFIX_VMM_NOT_VMM;
    }
    uint64_t end = ptr == chunks[0].va ? reservation_end(d, ptr, &prop, &step) : 0;
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
            if (more == NULL) {
                cut_short = 1; /* the export covers fewer chunks (not kept) */
                break;
            }
            chunks = more;
            cap *= 2;
        }
        chunks[n++] = c;
        next = c.va + c.size;
    }

    struct nvipcfix_vmm_ticket made;
    enum nvipcfix_vmm_error e = make_ticket(v, ctx, ptr, chunks, n, device, ticket, &made);
    if (e == NVIPCFIX_VMM_OK && end == 0)
        remember(v, ctx, ptr, chunks, n, dropped, &made);
    else if (e == NVIPCFIX_VMM_OK && !cut_short)
        remember_whole(v, ctx, &chunks[0], gen, dropped, &made);
    memset(&made, 0, sizeof made);
    free(chunks);
    return e;
}

static int service_secret(void *arg, uint32_t export_id, unsigned char key[NVIPCFIX_KEY_BYTES])
{
    struct nvipcfix_vmm *v = arg;
    return nvipcfix_vmm_records_secret(&v->records, export_id, key);
}

/* On a client's thread: what export id offers, every chunk recorded (the
 * descriptors must then all be made, or the answer ends in an error). */
static void describe(void *arg, uint32_t export_id, struct nvipcfix_fd_reply *out)
{
    struct nvipcfix_vmm *v = arg;
    size_t n = NVIPCFIX_FD_MAX, total;
    CUcontext ctx = NULL;
    struct chunk *chunks = nvipcfix_vmm_records_get(&v->records, export_id, 0, &n, &total, &ctx);
    if (chunks == NULL) {
        out->status = total == 0 ? NVIPCFIX_FD_UNKNOWN : NVIPCFIX_FD_FAILED;
        out->driver_error = total == 0 ? 0 : CUDA_ERROR_OUT_OF_MEMORY;
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

/* On a client's thread: a descriptor for each chunk, in order, stopping at
 * the first that is not as exported. The allocation is retained before the
 * check, so the descriptor is of the mapping checked (buffer ids are never
 * reused). */
static uint32_t export_fds(void *arg, uint32_t export_id, uint32_t first, uint32_t count,
                           int *fds, int32_t *driver_error)
{
    struct nvipcfix_vmm *v = arg;
    const struct nvipcfix_driver *d = v->driver;
    size_t n = count, total;
    CUcontext ctx = NULL;
    struct chunk *chunks =
        nvipcfix_vmm_records_get(&v->records, export_id, first, &n, &total, &ctx);
    if (chunks == NULL)
        return 0;
    if (ctx != NULL && d->ctx_set_current != NULL)
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
            *driver_error = r;
            break;
        }
        fds[k] = fd;
    }
    free(chunks);
    return k;
}

/* Nonzero when the ticket names this process's server; then *base and
 * *size give the export's chunks if every one is still as exported and the
 * secret is right, else *size is 0. */
int nvipcfix_vmm_own(struct nvipcfix_vmm *v, const struct nvipcfix_vmm_ticket *t,
                     uint64_t *base, uint64_t *size)
{
    pthread_mutex_lock(&v->server.lock);
    const struct nvipcfix_fd_address *a = &v->server.address;
    int own = v->server.fd >= 0 && t->pid == a->pid && t->nonce == a->nonce &&
              t->uid == a->uid && (t->flags & NVIPCFIX_TICKET_IN_DIR) == (a->in_dir != 0) &&
              t->pid_ns == a->pid_ns;
    pthread_mutex_unlock(&v->server.lock);
    if (!own)
        return 0;
    size_t n = NVIPCFIX_FD_MAX, total, i;
    CUcontext ctx;
    struct chunk *chunks = NULL;
    if (still_recorded(v, t))
        chunks = nvipcfix_vmm_records_get(&v->records, t->export_id, 0, &n, &total, &ctx);
    *base = chunks != NULL ? chunks[0].va : 0;
    *size = 0;
    for (i = 0; chunks != NULL && i < n && chunk_unchanged(v->driver, &chunks[i]); i++)
        ;
    if (chunks != NULL && i == n)
        *size = chunks[n - 1].va + chunks[n - 1].size - chunks[0].va;
    free(chunks);
    return 1;
}

static const char *const channel_advice[NVIPCFIX_FD_STATUS_COUNT] = {
    [NVIPCFIX_FD_UNKNOWN] = "it has no such export (its memory was freed and the export "
                            "forgotten, or the ticket is from an earlier run)",
    [NVIPCFIX_FD_FREED] = "a chunk of it was freed or remapped since the export; nvipcfix "
                          "maps all of an export or nothing, and never newer memory at the "
                          "same place",
    [NVIPCFIX_FD_REFUSED] = "it refused: this process runs as another user, or the ticket "
                            "was altered",
    [NVIPCFIX_FD_FAILED] = "its driver could not export the memory as a file descriptor",
    [NVIPCFIX_FD_EXPORTER_FDS] = "the exporting process is at its open-file limit (raise its "
                                 "RLIMIT_NOFILE: ulimit -n)",
    [NVIPCFIX_FD_NO_EXPORTER] = "nothing answers for it: the exporter has exited, or runs in "
                                "another network namespace (containers: set "
                                "NVIPCFIX_VMM_SOCKET_DIR in both to one directory)",
    [NVIPCFIX_FD_WRONG_USER] = "a process of another user listens in its name (the exporter "
                               "has exited and its name was taken); nothing was taken from it",
    [NVIPCFIX_FD_NO_PROOF] = "the process answering could not prove it made the ticket (an "
                             "impostor on its name, or an altered ticket); nothing was taken "
                             "from it",
    [NVIPCFIX_FD_WRONG_PID] = "another process relayed the exchange; nothing was taken from it",
    [NVIPCFIX_FD_TIMEOUT] = "no complete answer within the deadline (the exporter is stopped "
                            "or overloaded; NVIPCFIX_VMM_TIMEOUT_MS sets the deadline)",
    [NVIPCFIX_FD_IMPORTER_FDS] = "this process is at its open-file limit (raise its "
                                 "RLIMIT_NOFILE: ulimit -n)",
    [NVIPCFIX_FD_BAD_DIR] = "its socket is in NVIPCFIX_VMM_SOCKET_DIR, which is not set here, "
                            "or not a directory of this user's closed to others (mode 0700)",
    [NVIPCFIX_FD_BROKEN] = "the connection failed or was cut short",
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

/* Unmaps and frees an import's range (reserved by begin_map), then forgets
 * it. A range the driver did not free stays known as an import's (its
 * chunks may still be mapped): never remembered for repeated exports. */
static CUresult release_range(struct nvipcfix_vmm *v, struct nvipcfix_vmm_import *im)
{
    CUresult r = unmap_all(v->driver, im);
    if (r != CUDA_SUCCESS)
        return r;
    pthread_mutex_lock(&v->lock);
    HASH_DELETE(hh_range, v->import_ranges, im);
    pthread_mutex_unlock(&v->lock);
    free(im);
    return r;
}

/* An open in progress: the range reserved for the offer, and the chunks
 * mapped into it as their descriptors arrive. */
struct map_job {
    struct nvipcfix_vmm *v;
    const struct nvipcfix_driver *d;
    struct nvipcfix_vmm_import *im;
    int bad_offer;
    int fd_limit; /* an import failed with this process at its open-file limit */
    CUresult e;
    /* when the offer and the first descriptors came, and the driver's time
     * importing and mapping them (us; said at debug level) */
    uint64_t offer_at, fds_at, import_us, map_us;
};

/* The offer: places in order, apart, the first at 0; a range reserved for
 * exactly the span they cover. */
static int begin_map(void *arg, const struct nvipcfix_fd_reply *offer)
{
    struct map_job *job = arg;
    uint64_t total = 0;
    job->offer_at = now_us();
    for (uint32_t i = 0; i < offer->n; i++) {
        if (offer->offsets[i] < total || (i == 0 && offer->offsets[0] != 0) ||
            offer->sizes[i] == 0 || offer->offsets[i] + offer->sizes[i] < offer->offsets[i]) {
            job->bad_offer = 1;
            return -1;
        }
        total = offer->offsets[i] + offer->sizes[i];
    }
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
    if (job->e != CUDA_SUCCESS)
        return -1; /* base stays 0: nothing reserved, nothing in the ranges */
    job->im->base = va;
    job->im->reserved = total;
    /* Known as an import's range before its first chunk is mapped: a walk
     * that finds one of its chunks then finds it here too. */
    pthread_mutex_lock(&job->v->lock);
    HASH_ADD(hh_range, job->v->import_ranges, base, sizeof job->im->base, job->im);
    pthread_mutex_unlock(&job->v->lock);
    return 0;
}

/* A batch of descriptors: imported, mapped at their places, closed. */
static int take_chunks(void *arg, uint32_t first, int *fds, uint32_t k, int *why)
{
    struct map_job *job = arg;
    struct nvipcfix_vmm_import *im = job->im;
    const struct nvipcfix_driver *d = job->d;
    uint64_t t = now_us();
    if (job->fds_at == 0)
        job->fds_at = t;
    for (uint32_t j = 0; j < k; j++) {
        uint32_t i = first + j;
        CUmemGenericAllocationHandle h;
        if (job->e == CUDA_SUCCESS) {
            job->e = d->mem_import_from_shareable_handle(
                &h, (void *)(intptr_t)fds[j], CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
            if (job->e != CUDA_SUCCESS && nvipcfix_fd_at_limit())
                job->fd_limit = 1; /* told before any descriptor is closed */
        }
        nvipcfix_fd_close(&fds[j]);
        uint64_t imported = now_us();
        job->import_us += imported - t;
        t = imported;
        if (job->e != CUDA_SUCCESS)
            continue; /* the rest are closed too */
        job->e = d->mem_map(im->base + im->offsets[i], im->offsets[im->cap + i], 0, h, 0);
        d->mem_release(h); /* the mapping keeps the memory */
        uint64_t mapped = now_us();
        job->map_us += mapped - t;
        t = mapped;
        if (job->e == CUDA_SUCCESS) {
            im->n = i + 1;
            im->size = im->offsets[i] + im->offsets[im->cap + i];
        }
    }
    *why = job->fd_limit ? NVIPCFIX_FD_IMPORTER_FDS : NVIPCFIX_FD_BROKEN;
    return job->e != CUDA_SUCCESS ? -1 : 0;
}

/* Says why an open did not go through; the error to return. */
static enum nvipcfix_vmm_error explain(const struct nvipcfix_vmm *v,
                                       const struct nvipcfix_vmm_ticket *t,
                                       const struct map_job *job, int st, int32_t driver_error,
                                       CUresult *r, char *why, size_t n)
{
    unsigned long long pid = t->pid;
    if (job->bad_offer) {
        snprintf(why, n, "exporting process %llu described its VMM chunks inconsistently; "
                         "nothing was mapped (CUDA_ERROR_INVALID_HANDLE)", pid);
        return NVIPCFIX_VMM_CHANNEL;
    }
    if (job->e != CUDA_SUCCESS && !job->fd_limit) {
        *r = job->e;
        snprintf(why, n, "importing VMM memory from process %llu failed in the driver (error "
                         "%d); nothing was mapped", pid, (int)job->e);
        return NVIPCFIX_VMM_IMPORT;
    }
    if (st == NVIPCFIX_FD_IMPORTER_FDS)
        *r = CUDA_ERROR_OUT_OF_MEMORY;
    if (st == NVIPCFIX_FD_TIMEOUT)
        snprintf(why, n, "exporting process %llu did not hand over VMM memory within %d ms: %s; "
                         "nothing was mapped (CUDA_ERROR_INVALID_HANDLE)", pid, v->timeout_ms,
                 channel_advice[st]);
    else if (st == NVIPCFIX_FD_FAILED)
        snprintf(why, n, "exporting process %llu could not hand over VMM memory: %s (its error "
                         "%d); nothing was mapped (CUDA_ERROR_INVALID_HANDLE)", pid,
                 channel_advice[st], (int)driver_error);
    else
        snprintf(why, n, "exporting process %llu did not hand over VMM memory: %s; nothing was "
                         "mapped (%s)", pid,
                 channel_advice[st > 0 && st < NVIPCFIX_FD_STATUS_COUNT ? st : NVIPCFIX_FD_BROKEN],
                 *r == CUDA_ERROR_OUT_OF_MEMORY ? "CUDA_ERROR_OUT_OF_MEMORY"
                                                : "CUDA_ERROR_INVALID_HANDLE");
    return NVIPCFIX_VMM_CHANNEL;
}

/* The device of the memory mapped at va, as this process numbers it (-1:
 * not known); only to say so when access is refused. */
static int device_of(const struct nvipcfix_driver *d, uint64_t va)
{
    CUmemGenericAllocationHandle h;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    if (d->mem_retain_allocation_handle(&h, (void *)(uintptr_t)va) != CUDA_SUCCESS)
        return -1;
    CUresult e = d->mem_get_allocation_properties_from_handle(&prop, h);
    d->mem_release(h);
    return e == CUDA_SUCCESS ? prop.location.id : -1;
}

/* Access for device dev to every chunk mapped: one call for each stretch
 * of chunks side by side (the driver takes a range over several mappings;
 * a base export's gaps are not mapped, so they split it). */
static enum nvipcfix_vmm_error grant(const struct nvipcfix_driver *d,
                                     const struct nvipcfix_vmm_import *im, CUdevice dev,
                                     CUresult *r, char *why, size_t n)
{
    CUmemAccessDesc access;
    memset(&access, 0, sizeof access);
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = dev;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    for (size_t i = 0, j; i < im->n; i = j) {
        uint64_t from = im->offsets[i], to = from + im->offsets[im->cap + i];
        for (j = i + 1; j < im->n && im->offsets[j] == to; j++)
            to += im->offsets[im->cap + j];
        CUresult e = d->mem_set_access(im->base + from, to - from, &access, 1);
        if (e != CUDA_SUCCESS) {
            int where = device_of(d, im->base + from);
            *r = e;
            snprintf(why, n, "the VMM memory lives on device %d (as this process numbers it); "
                             "the driver refused access from device %d, current here (error "
                             "%d): open it with that device current, or enable peer access",
                     where, (int)dev, (int)e);
            return NVIPCFIX_VMM_ACCESS;
        }
    }
    return NVIPCFIX_VMM_OK;
}

/* The ticket's machine, and a current context. */
static enum nvipcfix_vmm_error can_open(struct nvipcfix_vmm *v,
                                        const struct nvipcfix_vmm_ticket *t, CUdevice *dev,
                                        CUresult *r, char *why, size_t n)
{
    uint32_t pid_ns, boot;
    if (!has_vmm_calls(v->driver)) {
        *r = CUDA_ERROR_NOT_SUPPORTED;
        snprintf(why, n, "this driver lacks the VMM calls needed to open a VMM ticket");
        return NVIPCFIX_VMM_NO_DRIVER;
    }
    identity(v, &pid_ns, &boot);
    if (t->boot != 0 && boot != 0 && t->boot != boot) {
        snprintf(why, n, "a VMM ticket from another machine (or an earlier boot) cannot be "
                         "opened here (CUDA_ERROR_INVALID_HANDLE)");
        return NVIPCFIX_VMM_OTHER_MACHINE;
    }
    CUresult e = v->driver->ctx_get_device(dev);
    if (e != CUDA_SUCCESS) {
        *r = e;
        snprintf(why, n, "opening a VMM ticket needs a current context (error %d)", (int)e);
        return NVIPCFIX_VMM_IMPORT;
    }
    return NVIPCFIX_VMM_OK;
}

enum nvipcfix_vmm_error nvipcfix_vmm_map(struct nvipcfix_vmm *v,
                                         const struct nvipcfix_vmm_ticket *t, uint64_t *base,
                                         uint64_t *size, CUresult *r, char *why, size_t n)
{
    const struct nvipcfix_driver *d = v->driver;
    CUdevice dev;
    *r = CUDA_ERROR_INVALID_HANDLE;
    enum nvipcfix_vmm_error err = can_open(v, t, &dev, r, why, n);
    if (err != NVIPCFIX_VMM_OK)
        return err;
    struct map_job job = {.v = v, .d = d};
    struct nvipcfix_fd_taker taker = {begin_map, take_chunks, &job};
    uint64_t t0 = now_us();
    struct nvipcfix_fd_address to = {t->uid, t->pid, t->pid_ns, t->nonce,
                                     (t->flags & NVIPCFIX_TICKET_IN_DIR) != 0};
    int32_t driver_error = 0;
    int st = nvipcfix_fd_request_kept(&to, v->socket_dir, t->export_id, t->secret, v->timeout_ms,
                                 &taker, &driver_error);
    struct nvipcfix_vmm_import *im = job.im;
    uint64_t received = now_us();
    if (st != NVIPCFIX_FD_OK || job.e != CUDA_SUCCESS || job.bad_offer)
        err = explain(v, t, &job, st, driver_error, r, why, n);
    else if (t->offset >= im->size) {
        *r = CUDA_ERROR_INVALID_VALUE;
        snprintf(why, n, "a VMM ticket's offset %llu is beyond the %llu bytes of its export "
                         "(an altered ticket)",
                 (unsigned long long)t->offset, (unsigned long long)im->size);
        err = NVIPCFIX_VMM_BAD_OFFSET;
    } else
        err = grant(d, im, dev, r, why, n);
    uint64_t granted = now_us();
    if (err != NVIPCFIX_VMM_OK) {
        if (im != NULL && im->base != 0)
            release_range(v, im);
        else
            free(im);
        return err;
    }
    pthread_mutex_lock(&v->lock);
    HASH_ADD(hh, v->imports, base, sizeof im->base, im);
    pthread_mutex_unlock(&v->lock);
    NVIPCFIX_DEBUG("VMM ticket of process %llu: %zu chunk%s (%llu bytes) received over its "
                   "socket (SCM_RIGHTS) and mapped at 0x%llx in %llu us: its offer after %llu "
                   "us, the descriptors %llu us later; import %llu us, map %llu us, access "
                   "%llu us",
                   (unsigned long long)t->pid, im->n, im->n == 1 ? "" : "s",
                   (unsigned long long)im->size, (unsigned long long)im->base,
                   (unsigned long long)(granted - t0), (unsigned long long)(job.offer_at - t0),
                   (unsigned long long)(job.fds_at - job.offer_at),
                   (unsigned long long)job.import_us, (unsigned long long)job.map_us,
                   (unsigned long long)(granted - received));
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
    return release_range(v, im);
}

void nvipcfix_vmm_destroy(struct nvipcfix_vmm *v)
{
    nvipcfix_fd_server_destroy(&v->server);
    nvipcfix_vmm_records_destroy(&v->records);
    struct nvipcfix_vmm_import *im, *itmp;
    HASH_CLEAR(hh, v->imports); /* each is in import_ranges too */
    HASH_ITER(hh_range, v->import_ranges, im, itmp) {
        HASH_DELETE(hh_range, v->import_ranges, im);
        free(im);
    }
    forget_kept(v);
    pthread_mutex_destroy(&v->again_lock);
    pthread_mutex_destroy(&v->lock);
}

void nvipcfix_vmm_stop(struct nvipcfix_vmm *v)
{
    nvipcfix_fd_server_stop(&v->server, 1000); /* a stuck driver call waits no longer */
}

void nvipcfix_vmm_server_why(struct nvipcfix_vmm *v, char *out, size_t n)
{
    pthread_mutex_lock(&v->server.lock); /* nvipcfix_fd_server_start writes it under it */
    snprintf(out, n, "%s", v->server_why);
    pthread_mutex_unlock(&v->server.lock);
}

/* A child's copy of its parent's mappings, left behind but still reachable
 * (so leak checkers do not report them). */
static void *volatile left_behind_imports;
static void *volatile left_behind_ranges;
static void *volatile left_behind_again;
static void *volatile left_behind_whole;

void nvipcfix_vmm_forget_after_fork(struct nvipcfix_vmm *v)
{
    /* The parent's records are left behind (another thread may have been
     * changing them); the child starts empty. */
    left_behind_imports = v->imports;
    left_behind_ranges = v->import_ranges;
    left_behind_again = v->again; /* tickets naming the parent's server */
    left_behind_whole = v->whole;
    nvipcfix_fd_server_forget(&v->server);
    nvipcfix_vmm_records_forget(&v->records);
    pthread_mutex_init(&v->lock, NULL);
    v->imports = NULL;
    v->import_ranges = NULL;
    pthread_mutex_init(&v->again_lock, NULL);
    v->again = NULL;
    v->whole = NULL;
    atomic_store(&v->again_count, 0);
    v->have_identity = 0; /* a child may be in a new PID namespace */
}

void nvipcfix_vmm_counts(struct nvipcfix_vmm *v, size_t *exports, unsigned long *served,
                         unsigned long *refused)
{
    size_t chunks;
    nvipcfix_vmm_records_counts(&v->records, exports, &chunks);
    *served = atomic_load(&v->server.served);
    *refused = atomic_load(&v->server.refused);
}
