/* libFuzzer target: the open path (shim/ipc_fix.c) against the simulated
 * driver, with arbitrary 64-byte handles and flags.
 *
 * At start-up a forked exporter process (another process, as the simulated
 * driver sees it) exports pointers inside two blocks, and this process
 * exports some of its own (their opens take the self-open path). An input
 * is a selector byte, 64 bytes and 4 bytes of flags: selectors below 0xC0
 * take a known handle and XOR the 64 bytes into it (small mutations of
 * valid handles, tags included), others use the 64 bytes as they are.
 *
 * Whatever the input: a successful open returns a pointer inside the block
 * the handle names; closing it succeeds; afterwards nothing is left in the
 * import table and no mapping is left in the driver. */
#include <cuda.h>

#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../shim/ipc_fix.h"
#include "../common/test_process.h"
#include "../common/sim_driver_table.h"

void simcuda_counts(long *open_mappings, long *opens, long *closes);

#define REQUIRE(c)                                                           \
    do {                                                                     \
        if (!(c))                                                            \
            abort();                                                         \
    } while (0)

#define NKNOWN 16
#define BLOCK (1u << 20)

static struct nvipcfix_fix fix;
static CUipcMemHandle known[NKNOWN];
static long inputs, opened, refused;

static void print_counts(void)
{
    fprintf(stderr, "fuzz_open: %ld inputs: %ld opened (pointer inside its block, closed), "
                    "%ld refused\n", inputs, opened, refused);
}
static CUdeviceptr own[2];

static void setup(void)
{
    CUdevice dev;
    CUcontext ctx;
    setenv("SIMCUDA_VA_GIB", "1", 1); /* room for the sanitizer's shadow */
    REQUIRE(cuInit(0) == 0 && cuDeviceGet(&dev, 0) == 0 &&
            cuDevicePrimaryCtxRetain(&ctx, dev) == 0 && cuCtxSetCurrent(ctx) == 0);
    struct nvipcfix_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.mode = NVIPCFIX_MODE_FIX;
    cfg.log_level = NVIPCFIX_LOG_ERROR;
    cfg.self_open = 1;
    nvipcfix_log_open(NVIPCFIX_LOG_ERROR, NULL);
    nvipcfix_fix_init(&fix, &cfg, &linked_driver);

    int fd[2];
    REQUIRE(pipe(fd) == 0);
    if (fork() == 0) { /* the exporter: lives until the fuzzer is gone */
        CUdeviceptr p;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (int b = 0; b < 2; b++) {
            REQUIRE(cuMemAlloc(&p, BLOCK) == 0);
            for (int k = 0; k < NKNOWN / 4; k++) {
                CUipcMemHandle h;
                REQUIRE(nvipcfix_export(&fix, &h, p + (uint64_t)k * 4099) == 0);
                REQUIRE(tp_write_full(fd[1], &h, sizeof h) == 0);
            }
        }
        close(fd[1]);
        for (;;)
            pause();
    }
    close(fd[1]);
    REQUIRE(tp_read_full(fd[0], known, sizeof known / 2) == 0);
    close(fd[0]);
    for (int b = 0; b < 2; b++) {
        REQUIRE(cuMemAlloc(&own[b], BLOCK) == 0);
        for (int k = 0; k < NKNOWN / 4; k++)
            REQUIRE(nvipcfix_export(&fix, &known[NKNOWN / 2 + b * NKNOWN / 4 + k],
                                    own[b] + (uint64_t)k * 8191) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        atexit(print_counts);
        ready = 1;
    }
    if (size < 1 + 64 + 4)
        return 0;
    CUipcMemHandle h;
    unsigned flags;
    memcpy(&flags, data + 65, 4);
    if (data[0] < 0xC0) {
        h = known[data[0] % NKNOWN];
        for (int i = 0; i < 64; i++)
            h.reserved[i] ^= (char)data[1 + i];
    } else {
        memcpy(h.reserved, data + 1, 64);
    }

    CUdeviceptr p = 0, p2 = 0;
    CUresult r = nvipcfix_open(&fix, cuIpcOpenMemHandle_v2, &p, h, flags);
    inputs++;
    if (r == CUDA_SUCCESS) {
        opened++;
        CUdeviceptr base = 0;
        size_t bsize = 0;
        REQUIRE(cuMemGetAddressRange(&base, &bsize, p) == CUDA_SUCCESS);
        REQUIRE(p >= base && p < base + bsize);
        /* a second open of the same handle: the same pointer */
        REQUIRE(nvipcfix_open(&fix, cuIpcOpenMemHandle_v2, &p2, h, flags) == CUDA_SUCCESS &&
                p2 == p);
        REQUIRE(nvipcfix_close(&fix, p2) == CUDA_SUCCESS);
        REQUIRE(nvipcfix_close(&fix, p) == CUDA_SUCCESS);
    } else {
        refused++;
        REQUIRE(p == 0);
    }
    long left, opens, closes;
    simcuda_counts(&left, &opens, &closes);
    REQUIRE(nvipcfix_import_blocks(&fix.imports) == 0 && left == 0 && opens == closes);
    return 0;
}
