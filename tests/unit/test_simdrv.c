/* Tests of the simulated driver itself: it must behave as the facts file
 * says the real driver does, bug included, or the integration tests prove
 * nothing. Importer-side facts are checked in a forked child (another
 * process, as the driver sees it). */
#include <cuda.h>

#include <dlfcn.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

void simcuda_counts(long *open_mappings, long *opens, long *closes);
long simcuda_attribute_queries(void);

static uint64_t le64(const char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | (unsigned char)p[i];
    return v;
}

static int setup(void **state)
{
    (void)state;
    CUdevice dev;
    CUcontext ctx;
    return cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) ||
           cuCtxSetCurrent(ctx);
}

static void test_handle_layout_and_interior_bug(void **state)
{
    (void)state;
    CUdeviceptr p;
    CUipcMemHandle a, b;
    assert_int_equal(cuMemAlloc(&p, 64u << 20), CUDA_SUCCESS);
    assert_int_equal(cuIpcGetMemHandle(&a, p), CUDA_SUCCESS);
    assert_int_equal(cuIpcGetMemHandle(&b, p + (1u << 20)), CUDA_SUCCESS);
    assert_memory_equal(a.reserved, b.reserved, 64); /* byte-identical: the bug */
    assert_true(le64(a.reserved + 8) == (uint64_t)getpid());
    assert_true(le64(a.reserved + 16) == 64u << 20);
    assert_int_equal((unsigned char)a.reserved[32], 0x06);
    assert_true(le64(a.reserved + 56) == 0); /* the tail is free */
    assert_int_equal(cuMemFree(p), CUDA_SUCCESS);
}

static void test_small_allocations_packed(void **state)
{
    (void)state;
    CUdeviceptr s1, s2, base;
    size_t size;
    CUipcMemHandle h1, h2;
    assert_int_equal(cuMemAlloc(&s1, 512), CUDA_SUCCESS);
    assert_int_equal(cuMemAlloc(&s2, 4096), CUDA_SUCCESS);
    assert_true(s2 == s1 + 512);               /* one chunk, 512-byte steps */
    assert_int_equal(cuMemGetAddressRange(&base, &size, s2 + 100), CUDA_SUCCESS);
    assert_true(base == s2 && size == 4096);   /* each its own range */
    assert_int_equal(cuIpcGetMemHandle(&h1, s1), CUDA_SUCCESS);
    assert_int_equal(cuIpcGetMemHandle(&h2, s2), CUDA_SUCCESS);
    assert_memory_not_equal(h1.reserved, h2.reserved, 64);
    assert_true((uint32_t)le64(h2.reserved + 24) == 512); /* 2 MiB chunk in 4 KiB pages */
    assert_true((le64(h2.reserved + 24) >> 32) == 512);   /* offset in the chunk */
}

static void test_buffer_ids_and_reuse_of_addresses(void **state)
{
    (void)state;
    CUdeviceptr p, q;
    unsigned long long id1 = 0, id2 = 0;
    assert_int_equal(cuMemAlloc(&p, 8u << 20), CUDA_SUCCESS);
    assert_int_equal(cuPointerGetAttribute(&id1, CU_POINTER_ATTRIBUTE_BUFFER_ID, p + 5),
                     CUDA_SUCCESS);
    assert_int_equal(cuMemFree(p), CUDA_SUCCESS);
    assert_int_equal(cuMemAlloc(&q, 8u << 20), CUDA_SUCCESS);
    assert_true(q == p); /* the address comes back, as with cudaMalloc */
    assert_int_equal(cuPointerGetAttribute(&id2, CU_POINTER_ATTRIBUTE_BUFFER_ID, q),
                     CUDA_SUCCESS);
    assert_true(id1 != id2); /* the buffer id does not */
    /* unknown pointers: no error from cuPointerGetAttributes, zero values */
    CUdeviceptr start = 1;
    CUpointer_attribute attr = CU_POINTER_ATTRIBUTE_RANGE_START_ADDR;
    void *data = &start;
    assert_int_equal(cuPointerGetAttributes(1, &attr, &data, 0x10), CUDA_SUCCESS);
    assert_true(start == 0);
    cuMemFree(q);
}

static void test_open_in_exporter_fails(void **state)
{
    (void)state;
    CUdeviceptr p, o;
    CUipcMemHandle h;
    assert_int_equal(cuMemAlloc(&p, 2u << 20), CUDA_SUCCESS);
    assert_int_equal(cuIpcGetMemHandle(&h, p), CUDA_SUCCESS);
    assert_int_equal(cuIpcOpenMemHandle(&o, h, 1), CUDA_ERROR_INVALID_CONTEXT);
    cuMemFree(p);
}

/* A 2 MiB block and its handle, then fork(): the child (0) is to import. */
static pid_t fork_importer(CUdeviceptr *p, CUipcMemHandle *h)
{
    assert_int_equal(cuMemAlloc(p, 2u << 20), CUDA_SUCCESS);
    assert_int_equal(cuIpcGetMemHandle(h, *p), CUDA_SUCCESS);
    return fork();
}

/* The forked child pid exited with 0. */
static void assert_child_passed(pid_t pid)
{
    int status = -1;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* A handle whose client bytes (48-51) were changed to name the importer
 * itself, a process that allocated nothing (a forked child, whose pid can
 * be the exporter's with a bit flipped): no client's handle, refused with
 * INVALID_HANDLE as any changed client is; only the exporter's own handle
 * gets INVALID_CONTEXT (test_open_in_exporter_fails). */
static void test_client_naming_the_importer(void **state)
{
    (void)state;
    CUdeviceptr p;
    CUipcMemHandle h;
    pid_t pid = fork_importer(&p, &h);
    if (pid == 0) {
        CUdeviceptr o = 0;
        uint32_t client = ((uint32_t)le64(h.reserved + 48) & UINT32_C(0xffc00000)) |
                          (uint32_t)getpid();
        memcpy(h.reserved + 48, &client, 4);
        _exit(cuIpcOpenMemHandle(&o, h, 1) == CUDA_ERROR_INVALID_HANDLE ? 0 : 1);
    }
    assert_child_passed(pid);
    cuMemFree(p);
}

/* A forked child opens h: the base comes back, re-open is counted, close of
 * an interior pointer fails, byte 63 is ignored, a changed chunk size is
 * not looked at by a re-open. Returns 0 when all hold. */
static int importer(CUipcMemHandle h, uint64_t offset)
{
    pid_t pid = fork();
    if (pid == 0) {
        CUdeviceptr o1 = 0, o2 = 0;
        unsigned char byte = 0;
        long left, opens, closes;
        if (cuIpcOpenMemHandle(&o1, h, 1) != CUDA_SUCCESS)
            _exit(10);
        cuMemcpyDtoH(&byte, o1, 1);
        if (byte != 0xA0) /* the base's byte, not the one at offset */
            _exit(11);
        if (cuIpcOpenMemHandle(&o2, h, 1) != CUDA_SUCCESS || o2 != o1)
            _exit(13);
        if (cuIpcCloseMemHandle(o1 + offset) != CUDA_ERROR_INVALID_VALUE)
            _exit(14);
        h.reserved[63] = 0x7f; /* ignored by the driver */
        if (cuIpcOpenMemHandle(&o2, h, 1) != CUDA_SUCCESS || o2 != o1)
            _exit(15);
        /* the chunk size (bytes 24-27) is not looked at by a re-open: the
         * existing mapping, as on the H200 (docs/handle-format.md) */
        for (int i = 24; i < 28; i++) {
            CUipcMemHandle m = h;
            m.reserved[i] ^= (char)0x80;
            if (cuIpcOpenMemHandle(&o2, m, 1) != CUDA_SUCCESS || o2 != o1 ||
                cuIpcCloseMemHandle(o2) != CUDA_SUCCESS)
                _exit(18);
        }
        for (int i = 0; i < 3; i++)
            if (cuIpcCloseMemHandle(o1) != CUDA_SUCCESS)
                _exit(16);
        simcuda_counts(&left, &opens, &closes);
        _exit(left == 0 && opens == 1 && closes == 1 ? 0 : 17);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

static void test_importer_sees_the_bug(void **state)
{
    (void)state;
    CUdeviceptr p;
    CUipcMemHandle h;
    assert_int_equal(cuMemAlloc(&p, 4u << 20), CUDA_SUCCESS);
    assert_int_equal(cuMemsetD8(p, 0xA0, 1), CUDA_SUCCESS);
    assert_int_equal(cuMemsetD8(p + 4096, 0xB0, 1), CUDA_SUCCESS);
    assert_int_equal(cuIpcGetMemHandle(&h, p + 4096), CUDA_SUCCESS);
    assert_int_equal(importer(h, 4096), 0);
    cuMemFree(p);
}

/* ---- the open path, byte by byte, as measured ----------------------------
 * Measured on an NVIDIA H200, driver 580.159.04 (CUDA 13.0), with
 * tests/gpu/handle_bytes.c (docs/handle-format.md has the command and the
 * whole table): one fresh importer per byte and change. One letter per
 * byte 0-63:
 *   o  opens and reads the block (fresh: a mapping; base first: the SAME
 *      mapping as the base)        n  base first: a NEW mapping of the block
 *   u  opens and reads bytes that are not the block's
 *   s  opens, the first read fails with 719 and the context stays failed
 *   1  CUDA_ERROR_INVALID_VALUE  h  CUDA_ERROR_INVALID_HANDLE (400)
 *   m  CUDA_ERROR_ALREADY_MAPPED (208) */
struct byte_row {
    const char *what;
    int packed, base_first;
    unsigned char change;
    const char bytes[65];
};

static const struct byte_row measured[] = {
    /*                                        0         1         2         3         4         5         6    */
    /*                                        0123456789012345678901234567890123456789012345678901234567890123 */
    {"2 MiB, fresh", 0, 0, 0x01, "oooooooooooooooooooooooo1111mmmm11111ooooooooooohhhh1111oooooooo"},
    {"2 MiB, fresh", 0, 0, 0x80, "oooooooooooooooooooooooo1111mmms11111ooooooooooohhhh1111oooooooo"},
    {"2 MiB, base first", 0, 1, 0x01, "oooooooooooooooommmmmmmmoooommmmoooooooonnnnnnnnhhhh1111oooooooo"},
    {"2 MiB, base first", 0, 1, 0x80, "oooooooooooooooommmmmmmmoooommmsoooooooonnnnnnnnhhhh1111oooooooo"},
    {"4 KiB packed, fresh", 1, 0, 0x01, "ooooooooooooooooooommmmm1111uuum11111ooooooooooohhhh1111oooooooo"},
    {"4 KiB packed, base first", 1, 1, 0x01, "oooooooooooooooommmmmmmmoooommumoooooooonnnnnnnnhhhh1111oooooooo"},
};

static unsigned char pattern_byte(unsigned char seed, size_t i)
{
    return (unsigned char)(i * 131 + (i >> 8) * 7 + seed);
}

static char outcome(CUipcMemHandle base, CUipcMemHandle m, int base_first, unsigned char seed)
{
    CUdeviceptr b = 0, o = 0;
    unsigned char bytes[16];
    if (base_first && cuIpcOpenMemHandle(&b, base, 1) != CUDA_SUCCESS)
        return '?';
    CUresult r = cuIpcOpenMemHandle(&o, m, 1);
    switch (r) {
    case CUDA_SUCCESS:
        break;
    case CUDA_ERROR_INVALID_VALUE:
        return '1';
    case CUDA_ERROR_INVALID_HANDLE:
        return 'h';
    case CUDA_ERROR_ALREADY_MAPPED:
        return 'm';
    default:
        return '?';
    }
    if (cuMemcpyDtoH(bytes, o, sizeof bytes) != CUDA_SUCCESS)
        return cuCtxSynchronize() == CUDA_ERROR_LAUNCH_FAILED ? 's' : '?';
    for (size_t i = 0; i < sizeof bytes; i++)
        if (bytes[i] != pattern_byte(seed, i))
            return 'u';
    return !base_first || o == b ? 'o' : 'n';
}

/* One fresh importer process per byte (a sticky error cannot leak). */
static char outcome_in_child(CUipcMemHandle base, int byte, const struct byte_row *row,
                             unsigned char seed)
{
    CUipcMemHandle m = base;
    m.reserved[byte] ^= (char)row->change;
    pid_t pid = fork();
    if (pid == 0)
        _exit(outcome(base, m, row->base_first, seed));
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? (char)WEXITSTATUS(status) : '!';
}

/* A 4 KiB allocation packed at a non-zero 4 KiB boundary of its chunk. */
static CUdeviceptr packed_block(CUipcMemHandle *h)
{
    CUdeviceptr p = 0;
    for (int i = 0; i < 32; i++) {
        assert_int_equal(cuMemAlloc(&p, 4096), CUDA_SUCCESS);
        assert_int_equal(cuIpcGetMemHandle(h, p), CUDA_SUCCESS);
        uint32_t off = (uint32_t)le64(h->reserved + 28);
        if (off != 0 && off % 4096 == 0)
            return p;
        if (off % 4096 != 0)
            assert_int_equal(cuMemAlloc(&p, 512), CUDA_SUCCESS); /* realign */
    }
    fail_msg("no 4 KiB-aligned packed allocation");
    return 0;
}

static void test_open_validates_the_measured_bytes(void **state)
{
    (void)state;
    CUdeviceptr blocks[2];
    CUipcMemHandle handles[2];
    assert_int_equal(cuMemAlloc(&blocks[0], 2u << 20), CUDA_SUCCESS);
    assert_int_equal(cuIpcGetMemHandle(&handles[0], blocks[0]), CUDA_SUCCESS);
    blocks[1] = packed_block(&handles[1]);
    unsigned char fill[4096];
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < sizeof fill; i++)
            fill[i] = pattern_byte((unsigned char)(0x31 + k), i);
        assert_int_equal(cuMemcpyHtoD(blocks[k], fill, sizeof fill), CUDA_SUCCESS);
    }
    for (size_t r = 0; r < sizeof measured / sizeof measured[0]; r++) {
        const struct byte_row *row = &measured[r];
        char got[65] = {0};
        for (int i = 0; i < 64; i++)
            got[i] = outcome_in_child(handles[row->packed], i, row, (unsigned char)(0x31 + row->packed));
        if (strcmp(got, row->bytes) != 0)
            fail_msg("%s, xor 0x%02x:\nmeasured %s\nsimulated %s", row->what, row->change,
                     row->bytes, got);
    }
}

/* In every order the H200 was measured in, a change of the client's top
 * bit (byte 51, what guarded tags change) is refused with
 * CUDA_ERROR_INVALID_HANDLE; the old guard (byte 27's top bit) is refused
 * fresh but opens the block silently once the base is mapped (orders b and
 * c of docs/handle-format.md). Order c: a guarded handle refused, the base
 * opened, another guarded handle of the block (another tail). */
static int order_c(CUipcMemHandle base, int byte, unsigned char mask, CUresult expect)
{
    pid_t pid = fork();
    if (pid == 0) {
        CUipcMemHandle a = base, b = base;
        CUdeviceptr o = 0, p = 0;
        a.reserved[byte] ^= (char)mask;
        b.reserved[byte] ^= (char)mask;
        a.reserved[60] = 0x5a;
        b.reserved[61] = (char)0xa5;
        CUresult first = cuIpcOpenMemHandle(&o, a, 1);
        if (first == CUDA_SUCCESS || cuIpcOpenMemHandle(&p, base, 1) != CUDA_SUCCESS)
            _exit(20);
        CUresult again = cuIpcOpenMemHandle(&o, b, 1);
        _exit(again == expect && (again != CUDA_SUCCESS || o == p) ? 0 : 21);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

/* The legacy entry point (cuIpcOpenMemHandle, version 4010, what dlsym of
 * that name gives) refuses a second open of a mapped block with
 * ALREADY_MAPPED; the _v2 entry counts references. Measured on the H200,
 * driver 580.159.04: gpu-check "exporter preloaded, importer not, base
 * opened first: dlsym" (every second open: 208). */
static void test_legacy_entry_refuses_a_reopen(void **state)
{
    (void)state;
    CUdeviceptr p;
    CUipcMemHandle h;
    pid_t pid = fork_importer(&p, &h);
    if (pid == 0) {
        typedef CUresult (*open_fn)(CUdeviceptr *, CUipcMemHandle, unsigned int);
        open_fn legacy = (open_fn)dlsym(RTLD_DEFAULT, "cuIpcOpenMemHandle");
        CUdeviceptr a = 0, b = 0, c = 0;
        int ok = legacy != NULL && legacy(&a, h, 1) == CUDA_SUCCESS &&
                 legacy(&b, h, 1) == CUDA_ERROR_ALREADY_MAPPED &&
                 cuIpcOpenMemHandle_v2(&c, h, 1) == CUDA_SUCCESS && c == a &&
                 cuIpcCloseMemHandle(a) == CUDA_SUCCESS && cuIpcCloseMemHandle(a) == CUDA_SUCCESS;
        _exit(ok ? 0 : 1);
    }
    assert_child_passed(pid);
    cuMemFree(p);
}

static void test_guard_bytes_in_every_order(void **state)
{
    (void)state;
    CUdeviceptr p;
    CUipcMemHandle h;
    assert_int_equal(cuMemAlloc(&p, 2u << 20), CUDA_SUCCESS);
    assert_int_equal(cuIpcGetMemHandle(&h, p), CUDA_SUCCESS);
    assert_int_equal(order_c(h, 51, 0x80, CUDA_ERROR_INVALID_HANDLE), 0);
    assert_int_equal(order_c(h, 27, 0x80, CUDA_SUCCESS), 0); /* the hole of issue 17 */
    cuMemFree(p);
}

/* VMM memory as measured on an H100 (cuda-ipc-facts.md and
 * docs/handle-format.md): no legacy handle; the range attributes give the
 * reservation, cuMemGetAddressRange the mapping (once accessible); a new
 * buffer id for every mapping; retain gives the creating handle back;
 * memory created without POSIX descriptors cannot be exported. */
static void test_vmm_memory_as_measured(void **state)
{
    (void)state;
    CUdeviceptr va, start = 0, base = 0;
    size_t rsize = 0, size = 0;
    unsigned long long id1 = 0, id2 = 0;
    const size_t C = 2u << 20;
    CUmemGenericAllocationHandle h, again, none;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    CUmemAccessDesc acc = {prop.location, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    assert_int_equal(cuMemAddressReserve(&va, 32 * C, 0, 0, 0), CUDA_SUCCESS);
    assert_int_equal(cuMemCreate(&h, C, &prop, 0), CUDA_SUCCESS);
    assert_int_equal(cuMemMap(va + C, C, 0, h, 0), CUDA_SUCCESS);
    assert_int_equal(cuMemGetAddressRange(&base, &size, va + C + 5), CUDA_ERROR_NOT_FOUND);
    assert_int_equal(cuMemSetAccess(va + C, C, &acc, 1), CUDA_SUCCESS);
    CUipcMemHandle ih;
    assert_int_equal(cuIpcGetMemHandle(&ih, va + C + 5), CUDA_ERROR_INVALID_VALUE);
    CUpointer_attribute a[3] = {CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                CU_POINTER_ATTRIBUTE_RANGE_SIZE, CU_POINTER_ATTRIBUTE_BUFFER_ID};
    void *d[3] = {&start, &rsize, &id1};
    assert_int_equal(cuPointerGetAttributes(3, a, d, va + C + 5), CUDA_SUCCESS);
    assert_true(start == va && rsize == 32 * C && id1 != 0);
    assert_int_equal(cuMemGetAddressRange(&base, &size, va + C + 5), CUDA_SUCCESS);
    assert_true(base == va + C && size == C);
    assert_int_equal(cuMemRetainAllocationHandle(&again, (void *)(va + C + 7)), CUDA_SUCCESS);
    assert_true(again == h);
    assert_int_equal(cuMemRelease(again), CUDA_SUCCESS);
    /* unmapped and mapped again: a new buffer id */
    assert_int_equal(cuMemUnmap(va + C, C), CUDA_SUCCESS);
    assert_int_equal(cuMemMap(va + C, C, 0, h, 0), CUDA_SUCCESS);
    assert_int_equal(cuMemSetAccess(va + C, C, &acc, 1), CUDA_SUCCESS);
    d[2] = &id2;
    assert_int_equal(cuPointerGetAttributes(3, a, d, va + C), CUDA_SUCCESS);
    assert_true(id2 != 0 && id2 != id1);
    int fd = -1;
    assert_int_equal(cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
                     CUDA_SUCCESS);
    assert_true(fd >= 0);
    close(fd);
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
    assert_int_equal(cuMemCreate(&none, C, &prop, 0), CUDA_SUCCESS);
    assert_int_equal(cuMemExportToShareableHandle(&fd, none, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
                     CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(cuMemRelease(none), CUDA_SUCCESS);
    assert_int_equal(cuMemUnmap(va + C, C), CUDA_SUCCESS);
    assert_int_equal(cuMemRelease(h), CUDA_SUCCESS);
    assert_int_equal(cuMemAddressFree(va, 32 * C), CUDA_SUCCESS);
}

/* The instrument the VMM tests count walks with: one a query, of either
 * attribute call, known pointer or not. */
static void test_attribute_queries_counted(void **state)
{
    (void)state;
    unsigned long long id;
    CUpointer_attribute attr = CU_POINTER_ATTRIBUTE_BUFFER_ID;
    void *data = &id;
    long before = simcuda_attribute_queries();
    cuPointerGetAttribute(&id, CU_POINTER_ATTRIBUTE_BUFFER_ID, 0x1000);
    cuPointerGetAttributes(1, &attr, &data, 0x1000);
    assert_int_equal(simcuda_attribute_queries() - before, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handle_layout_and_interior_bug),
        cmocka_unit_test(test_small_allocations_packed),
        cmocka_unit_test(test_buffer_ids_and_reuse_of_addresses),
        cmocka_unit_test(test_open_in_exporter_fails),
        cmocka_unit_test(test_client_naming_the_importer),
        cmocka_unit_test(test_importer_sees_the_bug),
        cmocka_unit_test(test_open_validates_the_measured_bytes),
        cmocka_unit_test(test_guard_bytes_in_every_order),
        cmocka_unit_test(test_legacy_entry_refuses_a_reopen),
        cmocka_unit_test(test_vmm_memory_as_measured),
        cmocka_unit_test(test_attribute_queries_counted),
    };
    return cmocka_run_group_tests_name("simulated_driver", tests, setup, NULL);
}
