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
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../shim/vmm_share.h"
#include "../common/sim_driver_table.h"

void simcuda_vmm_counts(long *maps, long *allocs, long *reservations);

#define CHUNK (UINT64_C(2) << 20)


static struct nvipcfix_vmm vmm;
static CUcontext ctx;
static CUdeviceptr va;
static CUmemGenericAllocationHandle chunk[8];

static CUresult map_chunk(int c, int fd_handles)
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
        r = cuMemMap(va + c * CHUNK, CHUNK, 0, chunk[c], 0);
    if (r == CUDA_SUCCESS)
        r = cuMemSetAccess(va + c * CHUNK, CHUNK, &a, 1);
    if (r == CUDA_SUCCESS)
        r = cuMemsetD8(va + c * CHUNK, (unsigned char)(0x10 + c), CHUNK);
    return r;
}

static void unmap_chunk(int c)
{
    assert_int_equal(cuMemUnmap(va + c * CHUNK, CHUNK), CUDA_SUCCESS);
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
    nvipcfix_vmm_init(&vmm, &linked_driver);
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
        if (maps != 3 || ranges != 1) /* all or nothing: what was mapped is undone */
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
    return maps == 3 && ranges == 1 ? 0 : 5;
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
    assert_int_equal(again(va, &b), NVIPCFIX_VMM_NOT_AGAIN); /* the reservation's start */
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
        assert_int_equal(cuMemMap(big + c * CHUNK, CHUNK, 0, h, 0), CUDA_SUCCESS);
        assert_int_equal(cuMemRelease(h), CUDA_SUCCESS);
        assert_int_equal(cuMemSetAccess(big + c * CHUNK, CHUNK, &a, 1), CUDA_SUCCESS);
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
    assert_int_equal(cuMemUnmap(big, N * CHUNK), CUDA_SUCCESS);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_export_records_the_run_from_the_pointer),
        cmocka_unit_test(test_export_of_the_start_covers_gaps),
        cmocka_unit_test(test_not_vmm_or_not_shareable),
        cmocka_unit_test(test_export_again_is_a_look_up),
        cmocka_unit_test(test_export_again_notices_changes),
        cmocka_unit_test(test_another_process_maps_what_was_exported),
        cmocka_unit_test(test_replaced_chunks_are_never_served),
        cmocka_unit_test(test_records_of_freed_memory_are_swept),
        cmocka_unit_test(test_many_chunks_arrive_in_batches),
        cmocka_unit_test(test_ticket_of_another_machine),
        cmocka_unit_test(test_guessed_secret_maps_nothing),
        cmocka_unit_test(test_fd_limits_fail_whole),
    };
    return cmocka_run_group_tests_name("vmm_share", tests, setup, teardown);
}
