/* Tests of the simulated driver itself: it must behave as the facts file
 * says the real driver does, bug included, or the integration tests prove
 * nothing. Importer-side facts are checked in a forked child (another
 * process, as the driver sees it). */
#include <cuda.h>

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

/* A forked child opens h: the base comes back, re-open is counted, close of
 * an interior pointer fails, byte 63 is ignored, a changed chunk size is
 * refused. Returns 0 when all hold. */
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
        /* the chunk size (bytes 24-27) is checked: invalid value, as the
         * real driver answers, whichever bit changed */
        for (int i = 24; i < 28; i++)
            for (int bit = 0; bit < 8; bit += 7) {
                CUipcMemHandle m = h;
                CUdeviceptr o3 = 0;
                m.reserved[i] ^= (char)(1 << bit);
                if (cuIpcOpenMemHandle(&o3, m, 1) != CUDA_ERROR_INVALID_VALUE || o3 != 0)
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handle_layout_and_interior_bug),
        cmocka_unit_test(test_small_allocations_packed),
        cmocka_unit_test(test_buffer_ids_and_reuse_of_addresses),
        cmocka_unit_test(test_open_in_exporter_fails),
        cmocka_unit_test(test_importer_sees_the_bug),
    };
    return cmocka_run_group_tests_name("simulated_driver", tests, setup, NULL);
}
