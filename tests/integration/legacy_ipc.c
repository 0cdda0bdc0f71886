/* legacy_ipc: a program with the bug nvipcfix fixes, as legacy code has it.
 *
 * The exporter allocates one block and two small allocations the driver
 * packs together, fills them with a pattern, and exports many pointers
 * inside them (the base, aligned and odd offsets, the last byte) with
 * cuIpcGetMemHandle on each pointer itself. A child process opens every
 * handle, checks what it reads against what the exporter sent, writes the
 * complement back and closes. The exporter then checks that every write
 * landed where it should and nowhere else.
 *
 * The IPC calls reach the driver one of three ways (--road):
 *   direct    symbols linked from libcuda
 *   dlsym     dlopen("libcuda.so.1") + dlsym
 *   procaddr  as the CUDA runtime does: dlsym of cuGetProcAddress_v2, then
 *             cuGetProcAddress fetched through itself, then the IPC calls
 *   procaddr-v1  the same with the 4-argument cuGetProcAddress of CUDA 11.3
 *             and the legacy cuIpcOpenMemHandle (version 4010)
 * Built with -DLEGACY_RUNTIME (by nvcc, against the CUDA runtime, static or
 * shared) it allocates and copies with the runtime, and the roads are:
 *   runtime     cudaIpcGetMemHandle / cudaIpcOpenMemHandle / cudaIpcCloseMemHandle
 *   entrypoint  the driver's IPC calls from cudaGetDriverEntryPointByVersion
 * --reopen: the child opens every handle twice and closes twice.
 * --order base-first: the child opens the handle of the buffer's allocation
 *   base before each handle (and closes it after); --order refused-first:
 *   it opens the handle once (closing it if that succeeded), then the
 *   base's, then the handle again. The orders a receiver without nvipcfix
 *   must be refused a guarded tag in (docs/handle-format.md); they add a
 *   line "order=...: N opened, N refused, N read wrong".
 * --small: only buffers in the two small allocations (512 B and 4 KiB) the
 *   driver packs into one chunk (bytes 28-31 of their handles non-zero).
 * --self: no child; the exporter opens its own handles.
 * Environment: LEGACY_IPC_DEVICE (default 0) is the device both use;
 * LEGACY_IPC_IMPORTER_DEVICE, if set, the importer's;
 * LEGACY_IPC_IMPORTER_NO_PRELOAD=1 starts the importer without LD_PRELOAD
 * (a deployment where only the exporter has nvipcfix);
 * LEGACY_IPC_REOPEN_FLAGS=N: with --reopen, the second open passes flags N.
 *
 * Prints one line, "... right R, wrong W, failed F; ..." (each buffer is
 * right, wrong: its bytes were not what was exported or its write landed
 * wrong, or failed: a CUDA call on it failed), then the details. Exit
 * status, a bit mask: 0 every byte right; bit 1 (exit 1) wrong bytes,
 * stray bytes, mappings left or tagged base handles (the bug); bit 2
 * (exit 2) a CUDA call failed; 3 both. Runs on the simulated driver and on
 * a real GPU. */
#include <cuda.h>
#ifdef LEGACY_RUNTIME
#include <cuda_runtime.h>
#endif

#include "../common/test_process.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BLOCK_SIZE (8u << 20)
#define MAX_LEN 4096

typedef CUresult (*get_fn)(CUipcMemHandle *, CUdeviceptr);
typedef CUresult (*open_fn)(CUdeviceptr *, CUipcMemHandle, unsigned int);
typedef CUresult (*close_fn)(CUdeviceptr);
typedef CUresult (*gpa2_fn)(const char *, void **, int, cuuint64_t,
                            CUdriverProcAddressQueryResult *);
typedef CUresult (*gpa1_fn)(const char *, void **, int, cuuint64_t);

static get_fn ipc_get;
static open_fn ipc_open;
static close_fn ipc_close;

struct record {
    CUipcMemHandle handle;
    CUipcMemHandle base; /* the handle of the allocation's base */
    uint32_t len;
    unsigned char expect[MAX_LEN];
};

static int check(int r, const char *what)
{
    if (r == 0)
        return 0;
    fprintf(stderr, "legacy_ipc: %s failed: error %d\n", what, r);
    return -1;
}

static void *need(void *p, const char *what)
{
    if (p == NULL) {
        fprintf(stderr, "legacy_ipc: cannot find %s\n", what);
        exit(2);
    }
    return p;
}

#ifdef LEGACY_RUNTIME
static const char *road = "runtime";

/* The runtime's IPC calls, in the driver's types (the handles are the same
 * 64 bytes). */
static CUresult rt_get(CUipcMemHandle *h, CUdeviceptr p)
{
    return (CUresult)cudaIpcGetMemHandle((cudaIpcMemHandle_t *)h, (void *)p);
}

static CUresult rt_open(CUdeviceptr *p, CUipcMemHandle h, unsigned int flags)
{
    cudaIpcMemHandle_t rh;
    memcpy(&rh, &h, sizeof rh);
    return (CUresult)cudaIpcOpenMemHandle((void **)p, rh, flags);
}

static CUresult rt_close(CUdeviceptr p)
{
    return (CUresult)cudaIpcCloseMemHandle((void *)p);
}

static void *entry_point(const char *name)
{
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult st;
    if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &st) !=
        cudaSuccess)
        return NULL;
    return fn;
}

static void choose_road(void)
{
    if (strcmp(road, "runtime") == 0) {
        ipc_get = rt_get;
        ipc_open = rt_open;
        ipc_close = rt_close;
    } else if (strcmp(road, "entrypoint") == 0) {
        ipc_get = (get_fn)need(entry_point("cuIpcGetMemHandle"), "cuIpcGetMemHandle");
        ipc_open = (open_fn)need(entry_point("cuIpcOpenMemHandle"), "cuIpcOpenMemHandle");
        ipc_close = (close_fn)need(entry_point("cuIpcCloseMemHandle"), "cuIpcCloseMemHandle");
    } else {
        fprintf(stderr, "legacy_ipc: unknown road '%s'\n", road);
        exit(2);
    }
}

static int init_context(void)
{
    const char *d = getenv("LEGACY_IPC_DEVICE");
    return check(cudaSetDevice(d ? atoi(d) : 0), "cudaSetDevice") ||
           check(cudaFree(0), "cudaFree(0)");
}

static int dev_alloc(CUdeviceptr *p, size_t n)
{
    return check(cudaMalloc((void **)p, n), "cudaMalloc");
}

static int to_device(CUdeviceptr dst, const void *src, size_t n)
{
    return check(cudaMemcpy((void *)dst, src, n, cudaMemcpyHostToDevice), "cudaMemcpy");
}

static int to_host(void *dst, CUdeviceptr src, size_t n)
{
    return check(cudaMemcpy(dst, (const void *)src, n, cudaMemcpyDeviceToHost), "cudaMemcpy");
}
#else
static const char *road = "direct";

static void choose_road(void)
{
    if (strcmp(road, "direct") == 0) {
        ipc_get = cuIpcGetMemHandle;
        ipc_open = cuIpcOpenMemHandle; /* cuIpcOpenMemHandle_v2 */
        ipc_close = cuIpcCloseMemHandle;
        return;
    }
    void *lib = need(dlopen("libcuda.so.1", RTLD_NOW), "libcuda.so.1");
    if (strcmp(road, "dlsym") == 0) {
        ipc_get = (get_fn)need(dlsym(lib, "cuIpcGetMemHandle"), "cuIpcGetMemHandle");
        ipc_open = (open_fn)need(dlsym(lib, "cuIpcOpenMemHandle"), "cuIpcOpenMemHandle");
        ipc_close = (close_fn)need(dlsym(lib, "cuIpcCloseMemHandle"), "cuIpcCloseMemHandle");
        return;
    }
    if (strcmp(road, "procaddr") == 0) {
        gpa2_fn boot = (gpa2_fn)need(dlsym(lib, "cuGetProcAddress_v2"), "cuGetProcAddress_v2");
        gpa2_fn gpa = NULL;
        CUdriverProcAddressQueryResult st;
        if (check(boot("cuGetProcAddress", (void **)&gpa, 12000, 0, &st), "cuGetProcAddress") ||
            check(gpa("cuIpcGetMemHandle", (void **)&ipc_get, 4010, 0, &st), "lookup get") ||
            check(gpa("cuIpcOpenMemHandle", (void **)&ipc_open, 11000, 0, &st), "lookup open") ||
            check(gpa("cuIpcCloseMemHandle", (void **)&ipc_close, 4010, 0, &st), "lookup close"))
            exit(2);
        return;
    }
    if (strcmp(road, "procaddr-v1") == 0) {
        /* An older caller: cuGetProcAddress with 4 arguments, fetched
         * through itself at 11030, and the legacy open (version 4010). */
        gpa1_fn boot = (gpa1_fn)need(dlsym(lib, "cuGetProcAddress"), "cuGetProcAddress");
        gpa1_fn gpa = NULL;
        if (check(boot("cuGetProcAddress", (void **)&gpa, 11030, 0), "cuGetProcAddress") ||
            check(gpa("cuIpcGetMemHandle", (void **)&ipc_get, 4010, 0), "lookup get") ||
            check(gpa("cuIpcOpenMemHandle", (void **)&ipc_open, 4010, 0), "lookup open") ||
            check(gpa("cuIpcCloseMemHandle", (void **)&ipc_close, 4010, 0), "lookup close"))
            exit(2);
        return;
    }
    fprintf(stderr, "legacy_ipc: unknown road '%s'\n", road);
    exit(2);
}

static int init_context(void)
{
    const char *d = getenv("LEGACY_IPC_DEVICE");
    return check(tp_use_primary_context(d ? atoi(d) : 0, NULL), "context");
}

static int dev_alloc(CUdeviceptr *p, size_t n)
{
    return check(cuMemAlloc(p, n), "cuMemAlloc");
}

static int to_device(CUdeviceptr dst, const void *src, size_t n)
{
    return check(cuMemcpyHtoD(dst, src, n), "cuMemcpyHtoD");
}

static int to_host(void *dst, CUdeviceptr src, size_t n)
{
    return check(cuMemcpyDtoH(dst, src, n), "cuMemcpyDtoH");
}
#endif

static unsigned char pattern(unsigned alloc, uint64_t i)
{
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ (alloc * 0xD6E8FEB86659FD93ull);
    return (unsigned char)(x >> 56 ^ x >> 24 ^ x);
}

/* ---- the importer ---------------------------------------------------------- */

static const char *order = "fresh";

/* Opens one handle, checks what it reads, writes the complement back and
 * closes. Returns bit 0: read right; 0x40: opened and read wrong bytes;
 * 0x80: a CUDA call failed. */
static unsigned char import_one(const struct record *rec, int reopen)
{
    unsigned char got[MAX_LEN], back[MAX_LEN], result = 0;
    CUdeviceptr p = 0, p2 = 0;
    const char *flags2 = getenv("LEGACY_IPC_REOPEN_FLAGS");
    unsigned int reopen_flags =
        flags2 != NULL ? (unsigned int)strtoul(flags2, NULL, 0) : CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS;
    if (check(ipc_open(&p, rec->handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS), "open"))
        return 0x80;
    if (reopen && (check(ipc_open(&p2, rec->handle, reopen_flags), "reopen") || p2 != p))
        result |= 0x80;
    if (to_host(got, p, rec->len))
        result |= 0x80;
    else if (memcmp(got, rec->expect, rec->len) == 0)
        result |= 1;
    else
        result |= 0x40;
    for (uint32_t i = 0; i < rec->len; i++)
        back[i] = (unsigned char)~rec->expect[i];
    if (to_device(p, back, rec->len))
        result |= 0x80;
    if (reopen && p2 != 0 && check(ipc_close(p2), "close"))
        result |= 0x80;
    if (check(ipc_close(p), "close"))
        result |= 0x80;
    return result;
}

/* import_one in the order asked for: the base's handle opened first, or
 * the handle tried once before that. */
static unsigned char import_in_order(const struct record *rec, int reopen)
{
    CUdeviceptr b = 0, first = 0;
    int base_first = strcmp(order, "base-first") == 0;
    if (!base_first && strcmp(order, "refused-first") != 0)
        return import_one(rec, reopen);
    if (!base_first && ipc_open(&first, rec->handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) == 0 &&
        check(ipc_close(first), "close"))
        return 0x80;
    if (check(ipc_open(&b, rec->base, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS), "open of the base"))
        return 0x80;
    unsigned char result = import_one(rec, reopen);
    if (check(ipc_close(b), "close of the base"))
        result |= 0x80;
    return result;
}

static int child_main(int reopen)
{
    uint32_t n;
    const char *dev = getenv("LEGACY_IPC_IMPORTER_DEVICE");
    if (dev != NULL)
        setenv("LEGACY_IPC_DEVICE", dev, 1);
    if (init_context() || tp_read_full(0, &n, sizeof n))
        return 2;
    static struct record rec;
    for (uint32_t k = 0; k < n; k++) {
        if (tp_read_full(0, &rec, sizeof rec))
            return 2;
        unsigned char result = import_in_order(&rec, reopen);
        if (tp_write_full(1, &result, 1))
            return 2;
    }
    /* On the simulated driver: how many mappings are still open. */
    long left = -1, opens = 0, closes = 0;
    void (*counts)(long *, long *, long *) =
        (void (*)(long *, long *, long *))dlsym(RTLD_DEFAULT, "simcuda_counts");
    if (counts != NULL)
        counts(&left, &opens, &closes);
    return tp_write_full(1, &left, sizeof left) ? 2 : 0;
}

/* ---- the exporter ---------------------------------------------------------- */

struct buffer {
    unsigned alloc;  /* which allocation */
    uint64_t offset; /* from its base */
    uint32_t len;
};

int main(int argc, char **argv)
{
    int child = 0, reopen = 0, self = 0, small = 0;
    const char *self_path = strchr(argv[0], '/') ? argv[0] : "/proc/self/exe";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--child") == 0)
            child = 1;
        else if (strcmp(argv[i], "--reopen") == 0)
            reopen = 1;
        else if (strcmp(argv[i], "--self") == 0)
            self = 1;
        else if (strcmp(argv[i], "--road") == 0 && i + 1 < argc)
            road = argv[++i];
        else if (strcmp(argv[i], "--small") == 0)
            small = 1;
        else if (strcmp(argv[i], "--order") == 0 && i + 1 < argc)
            order = argv[++i];
        else {
            fprintf(stderr, "usage: legacy_ipc [--road ROAD] [--order fresh|base-first|"
                            "refused-first] [--small] [--reopen] [--self]\n");
            return 2;
        }
    }
    choose_road();
    if (child)
        return child_main(reopen);

    if (init_context())
        return 2;
    const uint64_t sizes[3] = {BLOCK_SIZE, 512, 4096};
    CUdeviceptr base[3];
    static unsigned char host[BLOCK_SIZE];
    for (unsigned a = 0; a < 3; a++) {
        if (dev_alloc(&base[a], sizes[a]))
            return 2;
        for (uint64_t i = 0; i < sizes[a]; i++)
            host[i] = pattern(a, i);
        if (to_device(base[a], host, sizes[a]))
            return 2;
    }

    static const struct buffer all_bufs[] = {
        {0, 0, 256},          {0, 512, 256},         {0, 4096, 256},
        {0, 65537, 255},      {0, 1u << 20, 4096},   {0, (3u << 20) + 7, 1000},
        {0, BLOCK_SIZE - 64, 63}, {0, BLOCK_SIZE - 1, 1}, {1, 0, 512},
        {2, 100, 100},
    };
    /* --small: only the two small allocations the driver packs together */
    static const struct buffer small_bufs[] = {
        {1, 0, 128}, {1, 200, 64}, {1, 511, 1}, {2, 0, 1024}, {2, 2048, 100}, {2, 4095, 1},
    };
    const struct buffer *bufs = small ? small_bufs : all_bufs;
    const uint32_t n = small ? sizeof small_bufs / sizeof small_bufs[0]
                             : sizeof all_bufs / sizeof all_bufs[0];

    static struct record recs[sizeof all_bufs / sizeof all_bufs[0]];
    unsigned untouched = 0, base_exports = 0;
    for (uint32_t k = 0; k < n; k++) {
        if (check(ipc_get(&recs[k].handle, base[bufs[k].alloc] + bufs[k].offset), "export") ||
            (strcmp(order, "fresh") != 0 && /* the base's handle, for the orders that need it */
             check(ipc_get(&recs[k].base, base[bufs[k].alloc]), "export of the base")))
            return 2;
        recs[k].len = bufs[k].len;
        for (uint32_t i = 0; i < recs[k].len; i++)
            recs[k].expect[i] = pattern(bufs[k].alloc, bufs[k].offset + i);
        if (bufs[k].offset == 0) { /* a block exported whole: no tag */
            static const char zero[8];
            base_exports++;
            untouched += memcmp(recs[k].handle.reserved + 56, zero, 8) == 0;
        }
    }

    unsigned char results[sizeof all_bufs / sizeof all_bufs[0]] = {0};
    long left = -2;
    if (self) {
        /* The exporter opens its own handles. */
        for (uint32_t k = 0; k < n; k++)
            results[k] = import_one(&recs[k], reopen);
        left = -1;
    } else {
        int to, from;
        char *args[] = {"legacy_ipc", "--child", "--road", (char *)road, "--order", (char *)order,
                        reopen ? "--reopen" : NULL, NULL};
        if (getenv("LEGACY_IPC_IMPORTER_NO_PRELOAD") != NULL)
            unsetenv("LD_PRELOAD"); /* this process keeps what it loaded */
        pid_t pid = tp_spawn(self_path, args, &to, &from);
        int failed = tp_write_full(to, &n, sizeof n);
        for (uint32_t k = 0; k < n && !failed; k++)
            failed = tp_write_full(to, &recs[k], sizeof recs[k]);
        close(to);
        if (!failed)
            failed = tp_read_full(from, results, n) || tp_read_full(from, &left, sizeof left);
        close(from);
        int status = 0;
        waitpid(pid, &status, 0);
        if (failed || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            printf("road=%s: the importer failed (status %d)\n", road, status);
            return 2;
        }
    }

    /* Every buffer must now hold the complement, every other byte the
     * pattern. */
    unsigned read_ok = 0, written_ok = 0, errors = 0, stray = 0, right_bufs = 0, wrong_bufs = 0;
    for (unsigned a = 0; a < 3; a++) {
        if (to_host(host, base[a], sizes[a]))
            return 2;
        for (uint64_t i = 0; i < sizes[a]; i++) {
            int inside = 0;
            for (uint32_t k = 0; k < n; k++)
                if (bufs[k].alloc == a && i >= bufs[k].offset && i < bufs[k].offset + bufs[k].len)
                    inside = 1;
            if (!inside && host[i] != pattern(a, i))
                stray++;
        }
        for (uint32_t k = 0; k < n; k++) {
            if (bufs[k].alloc != a)
                continue;
            uint32_t i = 0;
            while (i < bufs[k].len &&
                   host[bufs[k].offset + i] == (unsigned char)~pattern(a, bufs[k].offset + i))
                i++;
            written_ok += i == bufs[k].len;
            read_ok += results[k] & 1;
            errors += (results[k] & 0x80) != 0;
            if (results[k] & 0x80)
                continue;
            if ((results[k] & 1) && i == bufs[k].len)
                right_bufs++;
            else
                wrong_bufs++;
        }
    }
    if (strcmp(order, "fresh") != 0) {
        unsigned wrong = 0, refused = 0;
        for (uint32_t k = 0; k < n; k++) {
            wrong += (results[k] & 0x40) != 0;
            refused += results[k] == 0x80;
        }
        printf("order=%s: %u opened, %u refused, %u read wrong\n", order, n - refused, refused,
               wrong);
    }
    int bug = wrong_bufs != 0 || stray != 0 || left > 0 || untouched != base_exports;
    char leftstr[32];
    snprintf(leftstr, sizeof leftstr, left >= 0 ? "%ld" : "n/a", left);
    printf("road=%s%s%s: %u buffers: right %u, wrong %u, failed %u; read %u/%u right, "
           "written %u/%u right, %u stray bytes, %u failed calls, base handles untagged %u/%u, "
           "mappings left %s -> %s\n",
           road, reopen ? " reopen" : "", self ? " self" : "", n, right_bufs, wrong_bufs, errors,
           read_ok, n, written_ok, n, stray, errors, untouched, base_exports, leftstr,
           !bug && errors == 0 ? "CORRECT" : "WRONG");
    return (bug ? 1 : 0) | (errors != 0 ? 2 : 0);
}
