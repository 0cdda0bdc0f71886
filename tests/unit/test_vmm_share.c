/* Unit tests of shim/vmm_share.c against the simulated driver: what an
 * export records, what is served, and the mapping another process makes
 * (a forked child, a separate process as the driver sees it). */
#include <cuda.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../shim/vmm_share.h"
#include "../common/sim_driver_table.h"
#include "../common/test_process.h"

void simcuda_vmm_counts(long *maps, long *allocs, long *reservations);
long simcuda_attribute_queries(void);

#define CHUNK (UINT64_C(2) << 20)

/* The driver as the library hands it to the fix: with a mapping
 * generation, which the calls below move on as the library's cuMem* entry
 * points do (preload/driver_entry.c): before and after the driver's call. */
static _Atomic uint64_t gen;
static struct nvipcfix_driver counted;

static CUresult counted_map(CUdeviceptr p, size_t n, CUmemGenericAllocationHandle h)
{
    atomic_fetch_add(&gen, 1);
    CUresult r = cuMemMap(p, n, 0, h, 0);
    atomic_fetch_add(&gen, 1);
    return r;
}

static CUresult counted_unmap(CUdeviceptr p, size_t n)
{
    atomic_fetch_add(&gen, 1);
    CUresult r = cuMemUnmap(p, n);
    atomic_fetch_add(&gen, 1);
    return r;
}

static CUresult counted_set_access(CUdeviceptr p, size_t n, const CUmemAccessDesc *a)
{
    atomic_fetch_add(&gen, 1);
    CUresult r = cuMemSetAccess(p, n, a, 1);
    atomic_fetch_add(&gen, 1);
    return r;
}

static struct nvipcfix_vmm vmm;
static CUcontext ctx;
static CUdeviceptr va;
static CUmemGenericAllocationHandle chunk[8];

/* Chunk c of the test's reservation, filled with 0x10 + c; without
 * access (and unfilled) unless grant. */
static CUresult map_chunk_as(int c, int fd_handles, int grant)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.requestedHandleTypes =
        fd_handles ? CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR : CU_MEM_HANDLE_TYPE_NONE;
    CUmemAccessDesc a;
    memset(&a, 0, sizeof a);
    a.location = prop.location;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CUresult r = cuMemCreate(&chunk[c], CHUNK, &prop, 0);
    if (r == CUDA_SUCCESS)
        r = counted_map(va + c * CHUNK, CHUNK, chunk[c]);
    if (r == CUDA_SUCCESS && grant)
        r = counted_set_access(va + c * CHUNK, CHUNK, &a);
    if (r == CUDA_SUCCESS && grant)
        r = cuMemsetD8(va + c * CHUNK, (unsigned char)(0x10 + c), CHUNK);
    return r;
}

static CUresult map_chunk(int c, int fd_handles)
{
    return map_chunk_as(c, fd_handles, 1);
}

/* Access to chunk c granted after it was mapped without, and filled. */
static void grant_chunk(int c)
{
    CUmemAccessDesc a;
    memset(&a, 0, sizeof a);
    a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    assert_int_equal(counted_set_access(va + c * CHUNK, CHUNK, &a), CUDA_SUCCESS);
    assert_int_equal(cuMemsetD8(va + c * CHUNK, (unsigned char)(0x10 + c), CHUNK), CUDA_SUCCESS);
}

static void unmap_chunk(int c)
{
    assert_int_equal(counted_unmap(va + c * CHUNK, CHUNK), CUDA_SUCCESS);
    assert_int_equal(cuMemRelease(chunk[c]), CUDA_SUCCESS);
}

static int setup(void **state)
{
    (void)state;
    CUdevice dev;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) ||
        cuCtxSetCurrent(ctx) || cuMemAddressReserve(&va, 16 * CHUNK, 0, 0, 0))
        return -1;
    for (int c = 0; c < 3; c++)
        if (map_chunk(c, 1) != CUDA_SUCCESS)
            return -1;
    counted = linked_driver;
    counted.map_generation = &gen;
    nvipcfix_vmm_init(&vmm, &counted);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nvipcfix_vmm_destroy(&vmm);
    return 0;
}

static struct nvipcfix_vmm_ticket export(CUdeviceptr p)
{
    unsigned char b[64];
    struct nvipcfix_vmm_ticket t;
    assert_int_equal(nvipcfix_vmm_export(&vmm, ctx, p, b), NVIPCFIX_VMM_OK);
    assert_int_equal(nvipcfix_vmm_ticket_decode(b, &t), 0);
    return t;
}

static void test_export_records_the_run_from_the_pointer(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket a = export(va + 100), b = export(va + 5000),
                               c = export(va + CHUNK + 7);
    uint64_t base, size;
    assert_int_equal(a.pid, getpid());
    assert_int_equal(a.offset, 100);
    assert_int_equal(b.offset, 5000);
    assert_int_equal(a.export_id, b.export_id); /* one chunk, one export */
    assert_int_not_equal(a.export_id, c.export_id);
    assert_int_equal(c.offset, 7);
    /* its own tickets: the chunks from the pointer's to the end of the run */
    assert_true(nvipcfix_vmm_own(&vmm, &a, &base, &size));
    assert_true(base == va && size == 3 * CHUNK);
    assert_true(nvipcfix_vmm_own(&vmm, &c, &base, &size));
    assert_true(base == va + CHUNK && size == 2 * CHUNK);
}

/* The reservation's start: every chunk mapped in it, at its place. */
static void test_export_of_the_start_covers_gaps(void **state)
{
    (void)state;
    uint64_t base, size;
    assert_int_equal(map_chunk(4, 1), CUDA_SUCCESS); /* 0 1 2 _ 4 */
    struct nvipcfix_vmm_ticket whole = export(va), first = export(va + 1);
    assert_true(nvipcfix_vmm_own(&vmm, &whole, &base, &size));
    assert_true(base == va && size == 5 * CHUNK);
    assert_true(nvipcfix_vmm_own(&vmm, &first, &base, &size)); /* an interior pointer */
    assert_true(base == va && size == 3 * CHUNK);
    unmap_chunk(4);
}

static void test_not_vmm_or_not_shareable(void **state)
{
    (void)state;
    unsigned char b[64];
    CUdeviceptr legacy;
    assert_int_equal(cuMemAlloc(&legacy, 4096), CUDA_SUCCESS);
    assert_int_equal(nvipcfix_vmm_export(&vmm, ctx, legacy + 8, b), NVIPCFIX_VMM_NOT_VMM);
    assert_int_equal(nvipcfix_vmm_export(&vmm, ctx, va + 10 * CHUNK, b), NVIPCFIX_VMM_NOT_VMM);
    cuMemFree(legacy);
    assert_int_equal(map_chunk(5, 0), CUDA_SUCCESS);
    assert_int_equal(nvipcfix_vmm_export(&vmm, ctx, va + 5 * CHUNK, b),
                     NVIPCFIX_VMM_NOT_SHAREABLE);
    unmap_chunk(5);
}

/* The open-file limit set so that only `room` more descriptors fit: the
 * free numbers below the highest open one are filled first (fillers are
 * kept in filler[], *nfill of them, for the caller to close). */
static int filler[1024];

static int leave_room(int room)
{
    int top = 0, n = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        if (atoi(e->d_name) > top)
            top = atoi(e->d_name);
    closedir(d);
    for (int fd; n < 1024 && (fd = open("/", O_RDONLY | O_CLOEXEC)) >= 0;) {
        if (fd > top) {
            close(fd);
            break;
        }
        filler[n++] = fd;
    }
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = (rlim_t)top + 1 + (rlim_t)room;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
    return n;
}

static const char *expect_why; /* a failing child's message must hold it */
static int child_room = -1;    /* the child's open-file room, -1 as it is */
static long parent_maps = 3;   /* the parent's own mappings, which the child's sim counts */

/* In a child: map the ticket, check the bytes, unmap, nothing left. A
 * failure: 10 + the error, with nothing left mapped. */
static int child_maps(const struct nvipcfix_vmm_ticket *t, uint64_t expect_size,
                      unsigned char first_byte)
{
    struct nvipcfix_vmm mine;
    uint64_t base = 0, size = 0;
    CUresult r;
    char why[512];
    unsigned char byte = 0;
    long maps, allocs, ranges;
    nvipcfix_vmm_init(&mine, &linked_driver);
    nvipcfix_vmm_configure(&mine, 5000, NULL);
    struct rlimit lim; /* not the parent's limit, if it set one */
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = lim.rlim_max < 65536 ? lim.rlim_max : 65536;
    setrlimit(RLIMIT_NOFILE, &lim);
    if (child_room >= 0)
        leave_room(child_room);
    if (nvipcfix_vmm_map(&mine, t, &base, &size, &r, why, sizeof why) != NVIPCFIX_VMM_OK) {
        simcuda_vmm_counts(&maps, &allocs, &ranges);
        if (maps != parent_maps || ranges != 1) /* all or nothing: what was mapped is undone */
            return 7;
        if (expect_why != NULL && strstr(why, expect_why) == NULL) {
            fprintf(stderr, "child: %s\n", why);
            return 6;
        }
        return 10 + (int)r % 100;
    }
    if (size != expect_size) {
        fprintf(stderr, "child: %llu bytes mapped, expected %llu\n", (unsigned long long)size,
                (unsigned long long)expect_size);
        return 2;
    }
    if (cuMemcpyDtoH(&byte, base + t->offset, 1) != CUDA_SUCCESS || byte != first_byte)
        return 3;
    if (nvipcfix_vmm_unmap(&mine, base, size) != CUDA_SUCCESS)
        return 4;
    simcuda_vmm_counts(&maps, &allocs, &ranges);
    /* the child's copies of the parent's own mappings stay counted */
    return maps == parent_maps && ranges == 1 ? 0 : 5;
}

static int run_child(const struct nvipcfix_vmm_ticket *t, uint64_t expect_size,
                     unsigned char first_byte)
{
    pid_t child = fork();
    if (child == 0)
        _exit(child_maps(t, expect_size, first_byte));
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

/* NVIPCFIX_VMM_OK and the ticket when a repeated export is a look-up. */
static enum nvipcfix_vmm_error again(CUdeviceptr p, struct nvipcfix_vmm_ticket *t)
{
    unsigned char b[64];
    enum nvipcfix_vmm_error e = nvipcfix_vmm_export_again(&vmm, ctx, p, b);
    if (e == NVIPCFIX_VMM_OK)
        assert_int_equal(nvipcfix_vmm_ticket_decode(b, t), 0);
    return e;
}

/* A repeated export of a mapping is a look-up with the same export, at
 * the pointer's offset; but not an export of a reservation's start (which
 * covers more), nor one from another context. */
static void test_export_again_is_a_look_up(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket a = export(va + CHUNK + 100), b;
    uint64_t base, size;
    assert_int_equal(again(va + CHUNK + 300, &b), NVIPCFIX_VMM_OK);
    assert_int_equal(b.export_id, a.export_id);
    assert_memory_equal(b.secret, a.secret, sizeof a.secret);
    assert_int_equal(b.offset, 300);
    assert_true(nvipcfix_vmm_own(&vmm, &b, &base, &size));
    assert_true(base == va + CHUNK && size == 2 * CHUNK);
    assert_int_equal(again(va + CHUNK, &b), NVIPCFIX_VMM_NOT_AGAIN); /* not asked before */
    b = export(va + CHUNK); /* not a reservation's start: the same export */
    assert_int_equal(b.export_id, a.export_id);
    assert_int_equal(again(va + CHUNK, &b), NVIPCFIX_VMM_OK);
    assert_int_equal(b.offset, 0);
    export(va + 100);
    /* the reservation's start, never exported in this state (chunks were
     * mapped and unmapped since the earlier test's export of it) */
    assert_int_equal(again(va, &b), NVIPCFIX_VMM_NOT_AGAIN);
    unsigned char t[64];
    assert_int_equal(nvipcfix_vmm_export_again(&vmm, (CUcontext)&b, va + 200, t),
                     NVIPCFIX_VMM_NOT_AGAIN); /* another context */
    assert_int_equal(again(va + 16 * CHUNK, &b), NVIPCFIX_VMM_NOT_AGAIN); /* nothing there */
}

/* A repeated export notices what changed since: a chunk mapped after the
 * export's last (the segment grew: the export covers it now), that chunk
 * gone again, a chunk it covers or its first chunk replaced. */
static void test_export_again_notices_changes(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket a = export(va + CHUNK + 1), b;
    uint64_t base, size;
    assert_int_equal(again(va + CHUNK + 2, &b), NVIPCFIX_VMM_OK);
    assert_int_equal(map_chunk(3, 1), CUDA_SUCCESS); /* grew: 0 1 2 3 */
    assert_int_equal(again(va + CHUNK + 2, &b), NVIPCFIX_VMM_NOT_AGAIN);
    b = export(va + CHUNK + 2);
    assert_int_not_equal(b.export_id, a.export_id);
    assert_true(nvipcfix_vmm_own(&vmm, &b, &base, &size));
    assert_true(base == va + CHUNK && size == 3 * CHUNK);
    assert_int_equal(again(va + CHUNK + 3, &b), NVIPCFIX_VMM_OK);
    assert_true(nvipcfix_vmm_own(&vmm, &b, &base, &size));
    assert_true(size == 3 * CHUNK);
    unmap_chunk(3); /* shrank again */
    assert_int_equal(again(va + CHUNK + 3, &b), NVIPCFIX_VMM_NOT_AGAIN);
    b = export(va + CHUNK + 3);
    assert_true(nvipcfix_vmm_own(&vmm, &b, &base, &size));
    assert_true(size == 2 * CHUNK);
    unmap_chunk(2); /* a chunk after the first, replaced */
    assert_int_equal(map_chunk(2, 1), CUDA_SUCCESS);
    assert_int_equal(again(va + CHUNK + 4, &b), NVIPCFIX_VMM_NOT_AGAIN);
    struct nvipcfix_vmm_ticket c = export(va + CHUNK + 4);
    assert_int_equal(again(va + CHUNK + 5, &b), NVIPCFIX_VMM_OK);
    assert_int_equal(b.export_id, c.export_id);
    unmap_chunk(1); /* the first chunk, replaced */
    assert_int_equal(map_chunk(1, 1), CUDA_SUCCESS);
    assert_int_equal(again(va + CHUNK + 5, &b), NVIPCFIX_VMM_NOT_AGAIN);
    b = export(va + CHUNK + 5);
    assert_int_not_equal(b.export_id, c.export_id);
    assert_int_equal(run_child(&b, 2 * CHUNK, 0x11), 0); /* the new memory, whole */
}

static void test_another_process_maps_what_was_exported(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t = export(va + CHUNK + 9);
    assert_int_equal(run_child(&t, 2 * CHUNK, 0x11), 0);
}

/* Opens one after another from one exporter: each a whole exchange, the
 * second and third on the connection the first kept, in one round trip
 * each (their proof with the request), every byte right. */
static void test_opens_in_a_row_take_one_round_trip(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t = export(va + CHUNK + 9);
    unsigned long one_trip = atomic_load(&vmm.server.one_trip);
    unsigned long served = atomic_load(&vmm.server.served);
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < 3; i++) {
            int r = child_maps(&t, 2 * CHUNK, 0x11);
            if (r != 0)
                _exit(r);
        }
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(atomic_load(&vmm.server.served) - served, 3);
    assert_int_equal(atomic_load(&vmm.server.one_trip) - one_trip, 2);
}

/* An export with a chunk replaced since is not served at all (all or
 * nothing), and never the newer memory at the same place. */
static void test_replaced_chunks_are_never_served(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t0 = export(va + 1), t1 = export(va + CHUNK + 1);
    uint64_t base, size;
    unmap_chunk(1);
    assert_int_equal(map_chunk(1, 1), CUDA_SUCCESS); /* new memory, same place */
    expect_why = "freed or remapped since the export";
    assert_int_equal(run_child(&t0, 0, 0), 10 + CUDA_ERROR_INVALID_HANDLE % 100);
    assert_true(nvipcfix_vmm_own(&vmm, &t0, &base, &size));
    assert_int_equal(size, 0);
    assert_true(nvipcfix_vmm_own(&vmm, &t1, &base, &size));
    assert_int_equal(size, 0);
    assert_int_equal(run_child(&t1, 0, 0), 10 + CUDA_ERROR_INVALID_HANDLE % 100);
    expect_why = NULL;
    /* a new export of the new chunk is a new export id */
    struct nvipcfix_vmm_ticket t2 = export(va + CHUNK + 1);
    assert_int_not_equal(t2.export_id, t1.export_id);
}

/* Exports of memory freed since are forgotten: the records do not grow. */
static void test_records_of_freed_memory_are_swept(void **state)
{
    (void)state;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(map_chunk(6, 1), CUDA_SUCCESS);
        export(va + 6 * CHUNK);
        unmap_chunk(6);
    }
    size_t n;
    unsigned long served, refused;
    nvipcfix_vmm_counts(&vmm, &n, &served, &refused);
    assert_true(n <= 300);
}

/* More chunks than one batch of descriptors: all mapped, in order. */
static void test_many_chunks_arrive_in_batches(void **state)
{
    (void)state;
    enum { N = 300 };
    CUdeviceptr big;
    CUmemGenericAllocationHandle h;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    CUmemAccessDesc a = {prop.location, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    assert_int_equal(cuMemAddressReserve(&big, N * CHUNK, 0, 0, 0), CUDA_SUCCESS);
    for (int c = 0; c < N; c++) {
        assert_int_equal(cuMemCreate(&h, CHUNK, &prop, 0), CUDA_SUCCESS);
        assert_int_equal(counted_map(big + c * CHUNK, CHUNK, h), CUDA_SUCCESS);
        assert_int_equal(cuMemRelease(h), CUDA_SUCCESS);
        assert_int_equal(counted_set_access(big + c * CHUNK, CHUNK, &a), CUDA_SUCCESS);
        unsigned char b = (unsigned char)c;
        assert_int_equal(cuMemcpyHtoD(big + c * CHUNK + 5, &b, 1), CUDA_SUCCESS);
    }
    struct nvipcfix_vmm_ticket t = export(big + (N - 1) * CHUNK + 5);
    assert_int_equal(t.offset, 5); /* the last chunk alone */
    t = export(big + 5);
    pid_t child = fork();
    if (child == 0) {
        struct nvipcfix_vmm mine;
        uint64_t base = 0, size = 0;
        CUresult r;
        char why[512];
        nvipcfix_vmm_init(&mine, &linked_driver);
        nvipcfix_vmm_configure(&mine, 20000, NULL);
        if (nvipcfix_vmm_map(&mine, &t, &base, &size, &r, why, sizeof why) != NVIPCFIX_VMM_OK ||
            size != N * CHUNK)
            _exit(1);
        for (int c = 0; c < N; c++) {
            unsigned char b = 0;
            if (cuMemcpyDtoH(&b, base + c * CHUNK + 5, 1) != CUDA_SUCCESS || b != (unsigned char)c)
                _exit(2);
        }
        _exit(nvipcfix_vmm_unmap(&mine, base, size) == CUDA_SUCCESS ? 0 : 3);
    }
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_int_equal(counted_unmap(big, N * CHUNK), CUDA_SUCCESS);
    assert_int_equal(cuMemAddressFree(big, N * CHUNK), CUDA_SUCCESS);
}

static void test_ticket_of_another_machine(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t = export(va + 3);
    uint64_t base, size;
    CUresult r;
    char why[512];
    t.boot ^= 2;
    assert_int_equal(nvipcfix_vmm_map(&vmm, &t, &base, &size, &r, why, sizeof why),
                     NVIPCFIX_VMM_OTHER_MACHINE);
    assert_int_equal(r, CUDA_ERROR_INVALID_HANDLE);
}

/* A ticket with its secret guessed (all else public and right): refused,
 * nothing mapped; this process does not take it for its own either. */
static void test_guessed_secret_maps_nothing(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t = export(va + 3);
    uint64_t base, size;
    t.secret[0] ^= 1;
    assert_true(nvipcfix_vmm_own(&vmm, &t, &base, &size));
    assert_int_equal(size, 0);
    expect_why = "could not prove it made the ticket";
    assert_int_equal(run_child(&t, 0, 0), 10 + CUDA_ERROR_INVALID_HANDLE % 100);
    expect_why = NULL;
}

/* At the open-file limit, on either side: an error naming it, never a
 * partial mapping. The export has three chunks. */
static void test_fd_limits_fail_whole(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t = export(va + 5);
    struct rlimit saved;
    getrlimit(RLIMIT_NOFILE, &saved);
    nvipcfix_vmm_configure(&vmm, 5000, NULL);
    /* the exporter (this process): room for the connection and one chunk */
    int filled = leave_room(2);
    expect_why = "exporting process is at its open-file limit";
    int st = run_child(&t, 0, 0);
    setrlimit(RLIMIT_NOFILE, &saved);
    while (filled > 0)
        close(filler[--filled]);
    assert_int_equal(st, 10 + CUDA_ERROR_INVALID_HANDLE % 100);
    /* the importer: room for the connection and one of three */
    child_room = 2;
    expect_why = "this process is at its open-file limit";
    assert_int_equal(run_child(&t, 0, 0), 10 + CUDA_ERROR_OUT_OF_MEMORY % 100);
    child_room = -1;
    expect_why = NULL;
    assert_int_equal(run_child(&t, 3 * CHUNK, 0x10), 0); /* and with room, all of it */
}

/* ---- repeated exports of a reservation's start --------------------------- */

/* The places (chunks from base) of the export a ticket names, one bit
 * each; the buffer ids in ids[place] when ids is not NULL. ~0: the export
 * is not recorded. */
static uint64_t places_of(const struct nvipcfix_vmm_ticket *t, CUdeviceptr base, uint64_t *ids)
{
    size_t n = 64, total;
    CUcontext c;
    struct nvipcfix_vmm_chunk *ch =
        nvipcfix_vmm_records_get(&vmm.records, t->export_id, 0, &n, &total, &c);
    if (ch == NULL)
        return ~UINT64_C(0);
    uint64_t mask = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t place = (ch[i].va - base) / CHUNK;
        mask |= UINT64_C(1) << place;
        if (ids != NULL)
            ids[place] = ch[i].buffer_id;
    }
    free(ch);
    return mask;
}

static size_t exports_recorded(void)
{
    size_t n;
    unsigned long served, refused;
    nvipcfix_vmm_counts(&vmm, &n, &served, &refused);
    return n;
}

/* Exported again with nothing mapped or unmapped since: a look-up (one
 * attribute query, where the walk asks one a granule), the same export,
 * no new record. After a change elsewhere the reservation is walked again,
 * finds the same chunks and gives the same export; then a look-up again. */
static void test_start_again_is_a_look_up_until_a_mapping_changes(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket first = export(va), t;
    size_t recorded = exports_recorded();
    long q = simcuda_attribute_queries();
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_OK);
    assert_int_equal(simcuda_attribute_queries() - q, 1);
    assert_int_equal(t.export_id, first.export_id);
    assert_memory_equal(t.secret, first.secret, sizeof t.secret);
    assert_int_equal(t.offset, 0);
    assert_int_equal(exports_recorded(), recorded);
    q = simcuda_attribute_queries();
    export(va); /* what the walk costs here: 16 granules */
    assert_true(simcuda_attribute_queries() - q >= 16);

    /* a chunk mapped and unmapped in another reservation */
    CUdeviceptr other;
    CUmemGenericAllocationHandle h;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    assert_int_equal(cuMemAddressReserve(&other, CHUNK, 0, 0, 0), CUDA_SUCCESS);
    assert_int_equal(cuMemCreate(&h, CHUNK, &prop, 0), CUDA_SUCCESS);
    assert_int_equal(counted_map(other, CHUNK, h), CUDA_SUCCESS);
    assert_int_equal(counted_unmap(other, CHUNK), CUDA_SUCCESS);
    assert_int_equal(cuMemRelease(h), CUDA_SUCCESS);
    assert_int_equal(cuMemAddressFree(other, CHUNK), CUDA_SUCCESS);
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_NOT_AGAIN);
    t = export(va);
    assert_int_equal(t.export_id, first.export_id);
    assert_int_equal(exports_recorded(), recorded);
    q = simcuda_attribute_queries();
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_OK); /* the walk's generation kept */
    assert_int_equal(simcuda_attribute_queries() - q, 1);
    assert_int_equal(t.export_id, first.export_id);
}

/* A chunk mapped in a gap, a chunk unmapped, access granted to a chunk
 * mapped before: each time the repeated export walks again and covers
 * exactly what is mapped, and another process maps all of it. */
static void test_start_again_sees_every_change(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t0 = export(va), t;
    assert_int_equal(places_of(&t0, va, NULL), 0x7); /* chunks 0 1 2 */
    assert_int_equal(map_chunk(6, 1), CUDA_SUCCESS);  /* 0 1 2 _ _ _ 6 */
    parent_maps = 4;
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_NOT_AGAIN);
    struct nvipcfix_vmm_ticket t1 = export(va);
    assert_int_not_equal(t1.export_id, t0.export_id);
    assert_int_equal(places_of(&t1, va, NULL), 0x47);
    assert_int_equal(run_child(&t1, 7 * CHUNK, 0x10), 0);
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_OK);
    assert_int_equal(t.export_id, t1.export_id);

    unmap_chunk(1); /* 0 _ 2 _ _ _ 6 */
    parent_maps = 3;
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_NOT_AGAIN);
    struct nvipcfix_vmm_ticket t2 = export(va);
    assert_int_equal(places_of(&t2, va, NULL), 0x45);
    assert_int_equal(run_child(&t2, 7 * CHUNK, 0x10), 0);
    /* t1 is not served now (dropped when t2 replaced its run's tail) */
    assert_int_equal(run_child(&t1, 0, 0), 10 + CUDA_ERROR_INVALID_HANDLE % 100);

    /* mapped without access: not found by its range yet, so not covered */
    assert_int_equal(map_chunk_as(1, 1, 0), CUDA_SUCCESS);
    parent_maps = 4;
    struct nvipcfix_vmm_ticket t3 = export(va);
    assert_int_equal(places_of(&t3, va, NULL), 0x45);
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_OK);
    grant_chunk(1);
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_NOT_AGAIN);
    struct nvipcfix_vmm_ticket t4 = export(va);
    assert_int_equal(places_of(&t4, va, NULL), 0x47);
    assert_int_equal(run_child(&t4, 7 * CHUNK, 0x10), 0);
    unmap_chunk(6);
    parent_maps = 3;
}

/* Without a mapping generation (a driver table that keeps none), or with
 * one that may miss changes, every export of a reservation's start walks. */
static void test_start_without_a_generation_walks_each_time(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t;
    atomic_fetch_or(&gen, NVIPCFIX_MAP_GEN_UNTRACKED);
    export(va);
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_NOT_AGAIN);
    atomic_fetch_and(&gen, ~NVIPCFIX_MAP_GEN_UNTRACKED);
    struct nvipcfix_vmm plain;
    unsigned char b[64];
    nvipcfix_vmm_init(&plain, &linked_driver);
    assert_int_equal(nvipcfix_vmm_export(&plain, ctx, va, b), NVIPCFIX_VMM_OK);
    assert_int_equal(nvipcfix_vmm_export_again(&plain, ctx, va, b), NVIPCFIX_VMM_NOT_AGAIN);
    nvipcfix_vmm_destroy(&plain);
}

/* An export of the start of a range nvipcfix mapped from a ticket (it
 * maps there without moving the generation) is walked each time. In a new
 * process (this program again, --import-start TICKET): exporting starts a
 * thread, which a fork of this process with its server thread may not
 * (ThreadSanitizer refuses it). */
static char *self;

static int import_start(const char *hex)
{
    unsigned char raw[NVIPCFIX_TICKET_BYTES];
    struct nvipcfix_vmm_ticket t;
    struct nvipcfix_vmm mine;
    uint64_t base = 0, size = 0;
    CUresult r;
    char why[512];
    unsigned char b[64];
    CUdevice dev;
    for (int i = 0; i < NVIPCFIX_TICKET_BYTES; i++)
        if (sscanf(hex + 2 * i, "%2hhx", &raw[i]) != 1)
            return 1;
    if (nvipcfix_vmm_ticket_decode(raw, &t) != 0 || cuInit(0) || cuDeviceGet(&dev, 0) ||
        cuDevicePrimaryCtxRetain(&ctx, dev) || cuCtxSetCurrent(ctx))
        return 1;
    counted = linked_driver;
    counted.map_generation = &gen;
    nvipcfix_vmm_init(&mine, &counted);
    nvipcfix_vmm_configure(&mine, 5000, NULL);
    if (nvipcfix_vmm_map(&mine, &t, &base, &size, &r, why, sizeof why) != NVIPCFIX_VMM_OK)
        return 2;
    if (nvipcfix_vmm_export(&mine, ctx, base, b) != NVIPCFIX_VMM_OK)
        return 3;
    if (nvipcfix_vmm_export_again(&mine, ctx, base, b) != NVIPCFIX_VMM_NOT_AGAIN)
        return 4; /* kept: nvipcfix's own mapping there is not counted */
    if (nvipcfix_vmm_unmap(&mine, base, size) != CUDA_SUCCESS)
        return 5;
    nvipcfix_vmm_destroy(&mine);
    return 0;
}

static void test_start_of_an_import_is_walked_each_time(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t = export(va);
    unsigned char raw[NVIPCFIX_TICKET_BYTES];
    char hex[2 * NVIPCFIX_TICKET_BYTES + 1];
    nvipcfix_vmm_ticket_encode(raw, &t);
    for (int i = 0; i < NVIPCFIX_TICKET_BYTES; i++)
        snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    pid_t child = fork();
    if (child == 0) {
        char *args[] = {self, "--import-start", hex, NULL};
        tp_exec(self, args);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* A forked child forgets its parent's exports of reservation starts (their
 * tickets name the parent's server): none is found, so the child's next
 * export makes its own. (Where a forked child may start threads, which
 * ThreadSanitizer refuses after a fork of a process with threads and
 * qemu-user aborts on, it does.) */
#if defined(__SANITIZE_THREAD__)
#define FORKED_CHILD_MAY_START_THREADS 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FORKED_CHILD_MAY_START_THREADS 0
#endif
#endif
#ifndef FORKED_CHILD_MAY_START_THREADS
#define FORKED_CHILD_MAY_START_THREADS 1
#endif

static void test_fork_forgets_start_exports(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket t = export(va);
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_OK);
    pid_t child = fork();
    if (child == 0) {
        unsigned char b[64];
        nvipcfix_vmm_forget_after_fork(&vmm);
        if (vmm.whole != NULL || vmm.again != NULL ||
            nvipcfix_vmm_export_again(&vmm, ctx, va, b) != NVIPCFIX_VMM_NOT_AGAIN)
            _exit(2);
        /* qemu-user aborts on a thread started after a fork of a process
         * with threads (TEST_PROGRAM_RUNNER names it, as make test-aarch64
         * sets it) */
        const char *runner = getenv("TEST_PROGRAM_RUNNER");
        if (!FORKED_CHILD_MAY_START_THREADS || (runner != NULL && runner[0] != '\0'))
            _exit(0);
        if (nvipcfix_vmm_export(&vmm, ctx, va, b) != NVIPCFIX_VMM_OK ||
            nvipcfix_vmm_ticket_decode(b, &t) != 0)
            _exit(3);
        _exit(t.pid == (uint32_t)getpid() ? 0 : 4);
    }
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* ---- threads: exports of a reservation's start while chunks come and go -- */

enum { RACE_OPS = 240, RACE_EXPORTERS = 3, RACE_PLACES = 16 };
static const int race_place[3] = {3, 7, 11};     /* op k toggles race_place[k % 3] */
static CUdeviceptr rva;                           /* the raced reservation */
static uint64_t race_ids[RACE_OPS + 1][RACE_PLACES]; /* after op k: each place's buffer id, 0 none */
static atomic_int race_version;                   /* ops done, published after race_ids[k] */
static atomic_int race_done;
static atomic_long race_checked, race_looked_up, race_unrecorded, race_stale;

static uint64_t buffer_id_at(CUdeviceptr p)
{
    unsigned long long id = 0;
    return cuPointerGetAttribute(&id, CU_POINTER_ATTRIBUTE_BUFFER_ID, p) == CUDA_SUCCESS ? id : 0;
}

static CUresult race_map(int place, CUmemGenericAllocationHandle *h)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    CUmemAccessDesc a;
    memset(&a, 0, sizeof a);
    a.location = prop.location;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CUresult r = cuMemCreate(h, CHUNK, &prop, 0);
    if (r == CUDA_SUCCESS)
        r = counted_map(rva + (uint64_t)place * CHUNK, CHUNK, *h);
    if (r == CUDA_SUCCESS)
        r = counted_set_access(rva + (uint64_t)place * CHUNK, CHUNK, &a);
    return r;
}

/* Toggles a place at a time (mapped: unmapped; else mapped anew), and
 * publishes each state once its calls returned. */
static void *race_mapper(void *arg)
{
    CUmemGenericAllocationHandle h[RACE_PLACES] = {0};
    (void)arg;
    cuCtxSetCurrent(ctx);
    for (int k = 1; k <= RACE_OPS; k++) {
        int p = race_place[k % 3];
        memcpy(race_ids[k], race_ids[k - 1], sizeof race_ids[k]);
        if (race_ids[k - 1][p] != 0) {
            if (counted_unmap(rva + (uint64_t)p * CHUNK, CHUNK) != CUDA_SUCCESS ||
                cuMemRelease(h[p]) != CUDA_SUCCESS)
                atomic_fetch_add(&race_stale, 1000000);
            race_ids[k][p] = 0;
        } else {
            if (race_map(p, &h[p]) != CUDA_SUCCESS)
                atomic_fetch_add(&race_stale, 1000000);
            race_ids[k][p] = buffer_id_at(rva + (uint64_t)p * CHUNK);
        }
        atomic_store_explicit(&race_version, k, memory_order_release);
        usleep(300); /* room for repeated exports between changes */
    }
    for (int i = 0; i < 3; i++) {
        int p = race_place[i];
        if (race_ids[RACE_OPS][p] != 0 &&
            (counted_unmap(rva + (uint64_t)p * CHUNK, CHUNK) != CUDA_SUCCESS ||
             cuMemRelease(h[p]) != CUDA_SUCCESS))
            atomic_fetch_add(&race_stale, 1000000);
    }
    atomic_store(&race_done, 1);
    return NULL;
}

/* Exports the start as the library does (a look-up first); when no change
 * was published meanwhile, the export must cover exactly the chunks of the
 * state published before it, but for the place the next change (maybe
 * under way) touches. */
static void *race_exporter(void *arg)
{
    (void)arg;
    cuCtxSetCurrent(ctx);
    while (!atomic_load(&race_done)) {
        unsigned char b[64];
        struct nvipcfix_vmm_ticket t;
        uint64_t ids[RACE_PLACES] = {0};
        int v1 = atomic_load_explicit(&race_version, memory_order_acquire);
        int hit = nvipcfix_vmm_export_again(&vmm, ctx, rva, b) == NVIPCFIX_VMM_OK;
        if ((!hit && nvipcfix_vmm_export(&vmm, ctx, rva, b) != NVIPCFIX_VMM_OK) ||
            nvipcfix_vmm_ticket_decode(b, &t) != 0) {
            atomic_fetch_add(&race_stale, 1000000);
            continue;
        }
        uint64_t mask = places_of(&t, rva, ids);
        int v2 = atomic_load_explicit(&race_version, memory_order_acquire);
        if (v1 != v2 || v1 >= RACE_OPS)
            continue;
        if (mask == ~UINT64_C(0)) { /* superseded meanwhile: dropped */
            atomic_fetch_add(&race_unrecorded, 1);
            continue;
        }
        int moving = race_place[(v1 + 1) % 3];
        for (int p = 0; p < RACE_PLACES; p++)
            if (p != moving && ids[p] != race_ids[v1][p] && atomic_fetch_add(&race_stale, 1) < 5)
                fprintf(stderr, "stale: state %d, place %d: export has buffer %llu, mapped "
                                "%llu (%s)\n", v1, p, (unsigned long long)ids[p],
                        (unsigned long long)race_ids[v1][p], hit ? "look-up" : "walk");
        atomic_fetch_add(&race_checked, 1);
        atomic_fetch_add(&race_looked_up, hit);
    }
    return NULL;
}

static void test_start_exports_race_mapping_changes(void **state)
{
    (void)state;
    CUmemGenericAllocationHandle h0;
    assert_int_equal(cuMemAddressReserve(&rva, RACE_PLACES * CHUNK, 0, 0, 0), CUDA_SUCCESS);
    assert_int_equal(race_map(0, &h0), CUDA_SUCCESS);
    race_ids[0][0] = buffer_id_at(rva);
    pthread_t mapper, exporters[RACE_EXPORTERS];
    for (int i = 0; i < RACE_EXPORTERS; i++)
        assert_int_equal(pthread_create(&exporters[i], NULL, race_exporter, NULL), 0);
    assert_int_equal(pthread_create(&mapper, NULL, race_mapper, NULL), 0);
    pthread_join(mapper, NULL);
    for (int i = 0; i < RACE_EXPORTERS; i++)
        pthread_join(exporters[i], NULL);
    print_message("[ INFO     ] %d mapping changes: %ld exports checked (%ld look-ups, %ld "
                  "superseded before the check), %ld stale\n",
                  RACE_OPS, atomic_load(&race_checked), atomic_load(&race_looked_up),
                  atomic_load(&race_unrecorded), atomic_load(&race_stale));
    assert_int_equal(atomic_load(&race_stale), 0);
    assert_true(atomic_load(&race_checked) > 0);
    assert_true(atomic_load(&race_looked_up) > 0);
    assert_int_equal(counted_unmap(rva, CHUNK), CUDA_SUCCESS);
    assert_int_equal(cuMemRelease(h0), CUDA_SUCCESS);
    assert_int_equal(cuMemAddressFree(rva, RACE_PLACES * CHUNK), CUDA_SUCCESS);
}

/* Exported again while nothing was mapped, but the records were dropped
 * (all forgotten, as a forked child does, with the kept exports left in
 * place: what no program does, so the check of the records alone decides)
 * and ids given again from 1 (a group of its own: its vmm is new, so the
 * ids collide): neither a reservation's start nor a chunk is given again;
 * exported anew, each gets its old id with a new secret, and is given
 * again with the new secret. */
static void test_again_needs_the_record(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket start = export(va), chunk1 = export(va + CHUNK + 64), t;
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_OK);
    assert_int_equal(again(va + CHUNK + 64, &t), NVIPCFIX_VMM_OK);
    assert_memory_equal(t.secret, chunk1.secret, sizeof t.secret);
    nvipcfix_vmm_records_forget(&vmm.records);
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_NOT_AGAIN);
    assert_int_equal(again(va + CHUNK + 64, &t), NVIPCFIX_VMM_NOT_AGAIN);
    struct nvipcfix_vmm_ticket start2 = export(va), chunk2 = export(va + CHUNK + 64);
    assert_int_equal(start2.export_id, start.export_id); /* ids given again */
    assert_int_equal(chunk2.export_id, chunk1.export_id);
    assert_memory_not_equal(start2.secret, start.secret, sizeof start.secret);
    assert_memory_not_equal(chunk2.secret, chunk1.secret, sizeof chunk1.secret);
    assert_int_equal(again(va, &t), NVIPCFIX_VMM_OK);
    assert_int_equal(t.export_id, start2.export_id);
    assert_memory_equal(t.secret, start2.secret, sizeof t.secret);
    assert_int_equal(again(va + CHUNK + 64, &t), NVIPCFIX_VMM_OK);
    assert_int_equal(t.export_id, chunk2.export_id);
    assert_memory_equal(t.secret, chunk2.secret, sizeof t.secret);
    assert_int_equal(t.offset, 64);
}

int main(int argc, char **argv)
{
    self = argv[0];
    if (argc == 3 && strcmp(argv[1], "--import-start") == 0)
        return import_start(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_export_records_the_run_from_the_pointer),
        cmocka_unit_test(test_export_of_the_start_covers_gaps),
        cmocka_unit_test(test_not_vmm_or_not_shareable),
        cmocka_unit_test(test_export_again_is_a_look_up),
        cmocka_unit_test(test_export_again_notices_changes),
        cmocka_unit_test(test_another_process_maps_what_was_exported),
        cmocka_unit_test(test_opens_in_a_row_take_one_round_trip),
        cmocka_unit_test(test_replaced_chunks_are_never_served),
        cmocka_unit_test(test_records_of_freed_memory_are_swept),
        cmocka_unit_test(test_many_chunks_arrive_in_batches),
        cmocka_unit_test(test_ticket_of_another_machine),
        cmocka_unit_test(test_guessed_secret_maps_nothing),
        cmocka_unit_test(test_fd_limits_fail_whole),
        cmocka_unit_test(test_start_again_is_a_look_up_until_a_mapping_changes),
        cmocka_unit_test(test_start_again_sees_every_change),
        cmocka_unit_test(test_start_without_a_generation_walks_each_time),
        cmocka_unit_test(test_start_of_an_import_is_walked_each_time),
        cmocka_unit_test(test_fork_forgets_start_exports),
        cmocka_unit_test(test_start_exports_race_mapping_changes),
    };
    const struct CMUnitTest fresh[] = {
        cmocka_unit_test(test_again_needs_the_record),
    };
    int failed = cmocka_run_group_tests_name("vmm_share", tests, setup, teardown);
    return failed + cmocka_run_group_tests_name("vmm_share, a new vmm", fresh, setup, teardown);
}
