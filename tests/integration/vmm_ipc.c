/* vmm_ipc: legacy IPC on VMM memory, as PyTorch's expandable segments have
 * it. The exporter reserves a range, maps 2 MiB chunks (cuMemCreate with
 * POSIX file descriptor handles, as PyTorch does) at places 0, 1, 2 and 5
 * (a gap where memory was given back) and exports six "tensors" with
 * cuIpcGetMemHandle: two sharing the first chunk, one spanning chunks 0-1,
 * one spanning chunks 1-2, one alone in chunk 2, one past the gap. A child opens every handle, checks every byte, writes the
 * complement back and closes; the exporter checks that every write landed
 * where it should and nowhere else. Without nvipcfix (or without
 * NVIPCFIX_VMM=1) the export itself fails, as natively.
 *
 * Cases (first argument, default none):
 *   --reopen          the child opens every handle twice (same pointer) and
 *                     closes twice; after the last close the mapping is gone
 *   --self            no child: the exporter opens its own handles
 *   --freed           after the export, chunk 0 is unmapped, released and
 *                     replaced by new memory at the same address: the three
 *                     tensors in it must not open, the other two must
 *   --exporter-exits  the exporter exits before the child opens
 *   --no-fd           the chunks are created without POSIX descriptors
 *   --base            as vLLM's custom all-reduce does: every export is of
 *                     the range's start (RANGE_START_ADDR), and the child
 *                     adds each tensor's offset to what it opens
 *   --bench           no check: what a VMM export, first open, re-open and
 *                     last close cost against legacy IPC of cuMemAlloc
 *                     blocks of the same sizes (median of 30, us; open+close
 *                     while held: the mean of 100 in a row; run with
 *                     the preload and NVIPCFIX_VMM=1)
 * Environment: VMM_IPC_IMPORTER_DEVICE (device the child uses, default 0),
 * VMM_IPC_IMPORTER_NO_PRELOAD=1 (child without LD_PRELOAD),
 * VMM_IPC_TICKET_EDIT=ns|boot (the child alters each ticket's PID
 * namespace or boot field, re-sealed, as a ticket from another namespace or
 * machine would be), VMM_IPC_IMPORTER_UID=N (the child, if root, becomes
 * user N first), VMM_IPC_OPEN_FLAGS=N (the child's first open of each
 * handle passes flags N instead of CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS).
 *
 * Prints "right R/6, failed F, wrong W, stray S, left L" (a tensor is
 * right, wrong: a byte read was not the one exported or a second open gave
 * another pointer, or failed: a CUDA call on it failed; stray: exporter
 * bytes changed outside the tensors; left: mappings, allocations or ranges
 * left after the last close). Exit status, a bit mask: 0 all six right;
 * bit 1 (exit 1) wrong, stray or left; bit 2 (exit 2) a CUDA call failed
 * or a tensor did not open; 3 both. */
#include <cuda.h>

#include "../common/test_process.h"
#include "../../shim/vmm_ticket.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (UINT64_C(2) << 20)
#define NCHUNKS 4
#define SPAN 6 /* places 0-5, chunks at 0, 1, 2, 5 */
#define NT 6

static const struct {
    uint64_t offset, len;
} tensors[NT] = {
    {0, 1000},
    {1024, 3000},
    {CHUNK - 4096, 8192},
    {CHUNK + 8192, CHUNK},
    {2 * CHUNK + 16384, 4096},
    {5 * CHUNK + 100, 5000},
};

static const int place[NCHUNKS] = {0, 1, 2, 5};

static int mapped(uint64_t at)
{
    uint64_t c = at / CHUNK;
    return c <= 2 || c == 5;
}

struct record {
    CUipcMemHandle handle;
    int32_t exported; /* the export's CUresult */
    uint64_t add;     /* what the importer adds to the pointer it opens */
};

/* What the child found for one tensor: status 0 right, bit 1 wrong, bit 2
 * a call failed; left: mappings still there after its last close (and, in
 * the first, everything the simulated driver still holds at the end). */
struct result {
    int32_t status;
    int32_t left;
};

static unsigned char pattern(uint64_t i)
{
    return (unsigned char)(i * 131 + (i >> 12) * 7 + 0x5a);
}

static int env_int(const char *name, int dflt)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? atoi(v) : dflt;
}

static CUresult create_chunk(CUdeviceptr at, int fd_handles, CUmemGenericAllocationHandle *h)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    prop.requestedHandleTypes =
        fd_handles ? CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR : CU_MEM_HANDLE_TYPE_NONE;
    CUmemAccessDesc access;
    memset(&access, 0, sizeof access);
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CUresult r = cuMemCreate(h, CHUNK, &prop, 0);
    if (r == CUDA_SUCCESS)
        r = cuMemMap(at, CHUNK, 0, *h, 0);
    if (r == CUDA_SUCCESS)
        r = cuMemSetAccess(at, CHUNK, &access, 1);
    return r;
}

/* Opens, checks and writes back one tensor. */
static int import_one(const struct record *rec, int k, int reopen, CUdeviceptr *seen)
{
    CUdeviceptr p = 0, q = 0;
    CUresult r = cuIpcOpenMemHandle(
        &p, rec->handle,
        (unsigned int)env_int("VMM_IPC_OPEN_FLAGS", CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "vmm_ipc: open of tensor %d failed: error %d\n", k, (int)r);
        return 2;
    }
    int status = 0;
    if (reopen && (r = cuIpcOpenMemHandle(&q, rec->handle, 0)) != CUDA_SUCCESS) {
        fprintf(stderr, "vmm_ipc: second open of tensor %d failed: error %d\n", k, (int)r);
        cuIpcCloseMemHandle(p);
        return 2;
    }
    if (reopen && q != p) {
        fprintf(stderr, "vmm_ipc: second open of tensor %d gave another pointer\n", k);
        status |= 1;
    }
    uint64_t n = tensors[k].len;
    unsigned char *buf = malloc(n);
    CUdeviceptr t = p + rec->add;
    if (buf == NULL || cuMemcpyDtoH(buf, t, n) != CUDA_SUCCESS) {
        fprintf(stderr, "vmm_ipc: read of tensor %d failed\n", k);
        status |= 2;
    }
    for (uint64_t i = 0; !(status & 2) && i < n; i++)
        if (buf[i] != pattern(tensors[k].offset + i)) {
            fprintf(stderr, "vmm_ipc: tensor %d byte %llu: 0x%02x, expected 0x%02x\n", k,
                    (unsigned long long)i, buf[i], pattern(tensors[k].offset + i));
            status |= 1;
            break;
        }
    if (status == 0) {
        for (uint64_t i = 0; i < n; i++)
            buf[i] = (unsigned char)~pattern(tensors[k].offset + i);
        if (cuMemcpyHtoD(t, buf, n) != CUDA_SUCCESS || cuCtxSynchronize() != CUDA_SUCCESS)
            status |= 2;
    }
    free(buf);
    if (cuIpcCloseMemHandle(p) != CUDA_SUCCESS ||
        (reopen && cuIpcCloseMemHandle(q) != CUDA_SUCCESS)) {
        fprintf(stderr, "vmm_ipc: close of tensor %d failed\n", k);
        status |= 2;
    }
    *seen = p;
    return status;
}

/* Re-seals a ticket with its PID namespace or boot field changed. */
static void edit_ticket(CUipcMemHandle *h, const char *what)
{
    struct nvipcfix_vmm_ticket t;
    if (what == NULL || nvipcfix_vmm_ticket_decode((unsigned char *)h->reserved, &t) != 0)
        return;
    if (strcmp(what, "ns") == 0)
        t.pid_ns += 1;
    else if (strcmp(what, "boot") == 0)
        t.boot ^= 2;
    nvipcfix_vmm_ticket_encode((unsigned char *)h->reserved, &t);
}

static int importer(int reopen)
{
    struct record recs[NT];
    struct result res[NT];
    if (tp_read_full(0, recs, sizeof recs) != 0)
        return 2;
    int uid = env_int("VMM_IPC_IMPORTER_UID", -1);
    if (uid >= 0 && geteuid() == 0 && setuid((uid_t)uid) != 0)
        return 2;
    if (tp_use_primary_context(env_int("VMM_IPC_IMPORTER_DEVICE", 0), NULL) != 0)
        return 2;
    for (int k = 0; k < NT; k++) {
        CUdeviceptr seen = 0;
        edit_ticket(&recs[k].handle, getenv("VMM_IPC_TICKET_EDIT"));
        res[k].status = import_one(&recs[k], k, reopen, &seen);
        res[k].left = 0;
        /* After the last close nothing is mapped there any more. */
        CUdeviceptr base;
        size_t size;
        if (seen != 0 && cuMemGetAddressRange(&base, &size, seen) == CUDA_SUCCESS) {
            fprintf(stderr, "vmm_ipc: tensor %d still mapped after its last close\n", k);
            res[k].left = 1;
        }
    }
    /* On the simulated driver: no mapping, allocation or reservation left. */
    void (*vmm_counts)(long *, long *, long *) =
        (void (*)(long *, long *, long *))dlsym(RTLD_DEFAULT, "simcuda_vmm_counts");
    long maps = 0, allocs = 0, reserved = 0;
    if (vmm_counts != NULL)
        vmm_counts(&maps, &allocs, &reserved);
    if (maps != 0 || allocs != 0 || reserved != 0) {
        fprintf(stderr, "vmm_ipc: left behind: %ld mappings, %ld allocations, %ld ranges\n", maps,
                allocs, reserved);
        res[0].left += (int32_t)(maps + allocs + reserved);
    }
    return tp_write_full(1, res, sizeof res) == 0 ? 0 : 2;
}

/* Exports every tensor (base: the range's start for each, and the offset
 * for the importer to add); returns the number that failed. */
static int export_all(CUdeviceptr va, struct record *recs, int base)
{
    int failed = 0;
    for (int k = 0; k < NT; k++) {
        recs[k].add = base ? tensors[k].offset : 0;
        recs[k].exported = cuIpcGetMemHandle(&recs[k].handle, base ? va : va + tensors[k].offset);
        if (recs[k].exported != CUDA_SUCCESS) {
            fprintf(stderr, "vmm_ipc: cuIpcGetMemHandle of tensor %d: error %d\n", k,
                    (int)recs[k].exported);
            failed++;
        }
    }
    return failed;
}

/* ---- --bench ------------------------------------------------------------ */

#define BENCH_N 30

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v)
{
    qsort(v, BENCH_N, sizeof *v, cmp_double);
    return v[BENCH_N / 2];
}

/* Handles for the importer: legacy 2 MiB, legacy 16 MiB, VMM 1 chunk, VMM
 * 8 chunks; each exported at +4096. */
#define BENCH_KINDS 4
static const char *const bench_kind[BENCH_KINDS] = {"legacy 2 MiB", "legacy 16 MiB",
                                                    "VMM 1 chunk (2 MiB)",
                                                    "VMM 8 chunks (16 MiB)"};

static int bench_importer(void)
{
    CUipcMemHandle h[BENCH_KINDS];
    if (tp_read_full(0, h, sizeof h) != 0 || tp_use_primary_context(0, NULL) != 0)
        return 2;
    for (int k = 0; k < BENCH_KINDS; k++) {
        double first[BENCH_N], again[BENCH_N], last[BENCH_N];
        for (int i = 0; i < BENCH_N; i++) {
            CUdeviceptr p, q;
            double t0 = now_us();
            if (cuIpcOpenMemHandle(&p, h[k], 1) != CUDA_SUCCESS)
                return 2;
            double t1 = now_us();
            for (int j = 0; j < 100; j++) /* while held: answered from the table */
                if (cuIpcOpenMemHandle(&q, h[k], 1) != CUDA_SUCCESS || cuIpcCloseMemHandle(q))
                    return 2;
            double t2 = now_us();
            if (cuIpcCloseMemHandle(p) != CUDA_SUCCESS)
                return 2;
            double t3 = now_us();
            first[i] = t1 - t0;
            again[i] = (t2 - t1) / 100;
            last[i] = t3 - t2;
        }
        printf("BENCH %-22s first open %9.1f us | open+close while held %6.2f us | last close "
               "%8.1f us\n",
               bench_kind[k], median(first), median(again), median(last));
    }
    fflush(stdout);
    return 0;
}

static int bench(char *self)
{
    CUdeviceptr va, blocks[BENCH_N], l2, l16;
    CUmemGenericAllocationHandle hh[40];
    double legacy[BENCH_N], vmm[BENCH_N], legacy_again[BENCH_N], vmm_again[BENCH_N];
    CUipcMemHandle h[BENCH_KINDS], x;
    if (tp_use_primary_context(0, NULL) != 0 ||
        cuMemAddressReserve(&va, 128 * CHUNK, 0, 0, 0) != CUDA_SUCCESS)
        return 2;
    /* fresh blocks and fresh chunks, each exported once, then again */
    for (int i = 0; i < BENCH_N; i++) {
        if (cuMemAlloc(&blocks[i], CHUNK) != CUDA_SUCCESS ||
            create_chunk(va + (uint64_t)(2 * i) * CHUNK, 1, &hh[i]) != CUDA_SUCCESS)
            return 2;
    }
    for (int i = 0; i < BENCH_N; i++) {
        double t0 = now_us();
        CUresult a = cuIpcGetMemHandle(&x, blocks[i] + 4096);
        double t1 = now_us();
        CUresult b = cuIpcGetMemHandle(&x, va + (uint64_t)(2 * i) * CHUNK + 4096);
        double t2 = now_us();
        CUresult c = cuIpcGetMemHandle(&x, blocks[i] + 8192);
        double t3 = now_us();
        CUresult d = cuIpcGetMemHandle(&x, va + (uint64_t)(2 * i) * CHUNK + 8192);
        double t4 = now_us();
        if (a || b || c || d) {
            fprintf(stderr, "vmm_ipc: bench export failed (%d %d %d %d)\n", a, b, c, d);
            return 2;
        }
        legacy[i] = t1 - t0;
        vmm[i] = t2 - t1;
        legacy_again[i] = t3 - t2;
        vmm_again[i] = t4 - t3;
    }
    printf("BENCH export of a new block/chunk: legacy %.2f us, VMM %.2f us; again: legacy %.2f "
           "us, VMM %.2f us\n",
           median(legacy), median(vmm), median(legacy_again), median(vmm_again));
    /* for the importer: 8 chunks side by side at 64..71 */
    for (int c = 0; c < 8; c++)
        if (create_chunk(va + (64 + c) * CHUNK, 1, &hh[32 + c]) != CUDA_SUCCESS)
            return 2;
    if (cuMemAlloc(&l2, CHUNK) || cuMemAlloc(&l16, 8 * CHUNK) ||
        cuIpcGetMemHandle(&h[0], l2 + 4096) || cuIpcGetMemHandle(&h[1], l16 + 4096) ||
        cuIpcGetMemHandle(&h[2], va + 4096) || cuIpcGetMemHandle(&h[3], va + 64 * CHUNK + 4096))
        return 2;
    fflush(stdout);
    int to, from, st;
    char *args[] = {self, "--bench-importer", NULL};
    pid_t child = tp_spawn(self, args, &to, &from);
    if (tp_write_full(to, h, sizeof h) != 0)
        return 2;
    close(to);
    char buf[4096];
    ssize_t n;
    while ((n = read(from, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
        if (n > 0 && tp_write_full(1, buf, (size_t)n) != 0)
            return 2;
    waitpid(child, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 2;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "--importer") == 0)
        return importer(argc > 2 && strcmp(argv[2], "--reopen") == 0);
    if (strcmp(mode, "--bench-importer") == 0)
        return bench_importer();
    if (strcmp(mode, "--bench") == 0)
        return bench(argv[0]);
    int reopen = strcmp(mode, "--reopen") == 0, self = strcmp(mode, "--self") == 0;
    int freed = strcmp(mode, "--freed") == 0, exits = strcmp(mode, "--exporter-exits") == 0;
    int fd_handles = strcmp(mode, "--no-fd") != 0, base = strcmp(mode, "--base") == 0;
    struct record recs[NT];
    struct result res[NT];
    int to_exporter[2] = {-1, -1};
    pid_t exporter = 0;

    /* --exporter-exits: a child exports and exits; this process only
     * passes the tickets on. */
    if (exits) {
        if (pipe(to_exporter) != 0 || (exporter = fork()) < 0)
            return 2;
        close(to_exporter[exporter == 0 ? 0 : 1]);
    }
    CUdeviceptr va = 0;
    static unsigned char host[SPAN * CHUNK], now[SPAN * CHUNK];
    if (!exits || exporter == 0) {
        CUmemGenericAllocationHandle h[NCHUNKS];
        if (tp_use_primary_context(0, NULL) != 0 ||
            cuMemAddressReserve(&va, 32 * CHUNK, 0, 0, 0) != CUDA_SUCCESS)
            return 2;
        for (int c = 0; c < NCHUNKS; c++)
            if (create_chunk(va + place[c] * CHUNK, fd_handles, &h[c]) != CUDA_SUCCESS) {
                fprintf(stderr, "vmm_ipc: cannot create VMM memory\n");
                return 2;
            }
        for (uint64_t i = 0; i < SPAN * CHUNK; i++)
            host[i] = pattern(i);
        for (int c = 0; c < NCHUNKS; c++)
            if (cuMemcpyHtoD(va + place[c] * CHUNK, host + place[c] * CHUNK, CHUNK))
                return 2;
        if (export_all(va, recs, base) != 0) {
            printf("right 0/%d, export failed\n", NT);
            return 2;
        }
        if (freed) { /* new memory where chunk 0 was, never to be seen */
            if (cuMemUnmap(va, CHUNK) != CUDA_SUCCESS || cuMemRelease(h[0]) != CUDA_SUCCESS ||
                create_chunk(va, fd_handles, &h[0]) != CUDA_SUCCESS ||
                cuMemsetD8(va, 0xEE, CHUNK) != CUDA_SUCCESS)
                return 2;
            for (uint64_t i = 0; i < CHUNK; i++)
                host[i] = 0xEE;
        }
        if (exits)
            return tp_write_full(to_exporter[1], recs, sizeof recs) == 0 ? 0 : 2;
    } else {
        int st;
        if (tp_read_full(to_exporter[0], recs, sizeof recs) != 0 ||
            waitpid(exporter, &st, 0) != exporter || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return 2;
    }

    if (self) {
        for (int k = 0; k < NT; k++) {
            CUdeviceptr seen;
            res[k].status = import_one(&recs[k], k, 1, &seen);
            res[k].left = 0;
        }
    } else {
        int to, from, st;
        if (getenv("VMM_IPC_IMPORTER_NO_PRELOAD") != NULL)
            unsetenv("LD_PRELOAD");
        char *args[] = {argv[0], "--importer", reopen ? "--reopen" : "", NULL};
        pid_t child = tp_spawn(argv[0], args, &to, &from);
        if (tp_write_full(to, recs, sizeof recs) != 0 ||
            tp_read_full(from, res, sizeof res) != 0) {
            fprintf(stderr, "vmm_ipc: the importer did not answer\n");
            return 2;
        }
        waitpid(child, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            return 2;
    }

    int right = 0, failed = 0, wrong = 0, left = 0;
    long stray = 0;
    for (int k = 0; k < NT; k++) {
        right += res[k].status == 0;
        wrong += (res[k].status & 1) != 0;
        failed += (res[k].status & 2) != 0;
        left += res[k].left;
        if (res[k].status == 0 && !exits)
            for (uint64_t i = 0; i < tensors[k].len; i++)
                host[tensors[k].offset + i] = (unsigned char)~host[tensors[k].offset + i];
    }
    if (!exits) { /* every byte of the exporter's memory is what it should be */
        for (int c = 0; c < NCHUNKS; c++)
            if (cuMemcpyDtoH(now + place[c] * CHUNK, va + place[c] * CHUNK, CHUNK))
                return 2;
        for (uint64_t i = 0; i < SPAN * CHUNK; i++)
            stray += mapped(i) && now[i] != host[i];
    }
    printf("right %d/%d, failed %d, wrong %d, stray %ld, left %d\n", right, NT, failed, wrong,
           stray, left);
    return (wrong > 0 || stray > 0 || left > 0 ? 1 : 0) | (failed > 0 ? 2 : 0);
}
