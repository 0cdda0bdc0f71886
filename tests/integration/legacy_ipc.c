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
 * --reopen: the child opens every handle twice and closes twice.
 *
 * Prints one line. Exit status: 0 every byte right, 1 wrong bytes (the bug),
 * 2 a CUDA call failed. Runs on the simulated driver and on a real GPU. */
#include <cuda.h>

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

static get_fn ipc_get;
static open_fn ipc_open;
static close_fn ipc_close;
static const char *road = "direct";

struct record {
    CUipcMemHandle handle;
    uint32_t len;
    unsigned char expect[MAX_LEN];
};

static int check(CUresult r, const char *what)
{
    if (r == CUDA_SUCCESS)
        return 0;
    const char *name = NULL;
    cuGetErrorName(r, &name);
    fprintf(stderr, "legacy_ipc: %s failed: %s (%d)\n", what, name ? name : "?", (int)r);
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
    fprintf(stderr, "legacy_ipc: unknown road '%s'\n", road);
    exit(2);
}

static unsigned char pattern(unsigned alloc, uint64_t i)
{
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ (alloc * 0xD6E8FEB86659FD93ull);
    return (unsigned char)(x >> 56 ^ x >> 24 ^ x);
}

static int init_context(void)
{
    CUdevice dev;
    CUcontext ctx;
    const char *d = getenv("LEGACY_IPC_DEVICE");
    return check(cuInit(0), "cuInit") || check(cuDeviceGet(&dev, d ? atoi(d) : 0), "cuDeviceGet") ||
           check(cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain") ||
           check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
}

static int read_full(int fd, void *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
    for (size_t put = 0; put < n;) {
        ssize_t r = write(fd, (const char *)buf + put, n - put);
        if (r <= 0)
            return -1;
        put += (size_t)r;
    }
    return 0;
}

/* ---- the importer ---------------------------------------------------------- */

/* Result byte per record: bit 0 read right; 0x80: a CUDA call failed. */
static int child_main(int reopen)
{
    uint32_t n;
    if (init_context() || read_full(0, &n, sizeof n))
        return 2;
    static struct record rec;
    unsigned char got[MAX_LEN], back[MAX_LEN];
    for (uint32_t k = 0; k < n; k++) {
        unsigned char result = 0;
        CUdeviceptr p = 0, p2 = 0;
        if (read_full(0, &rec, sizeof rec))
            return 2;
        if (check(ipc_open(&p, rec.handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS), "open")) {
            result = 0x80;
        } else {
            if (reopen &&
                (check(ipc_open(&p2, rec.handle, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS), "reopen") ||
                 p2 != p))
                result |= 0x80;
            if (check(cuMemcpyDtoH(got, p, rec.len), "read"))
                result |= 0x80;
            else if (memcmp(got, rec.expect, rec.len) == 0)
                result |= 1;
            for (uint32_t i = 0; i < rec.len; i++)
                back[i] = (unsigned char)~rec.expect[i];
            if (check(cuMemcpyHtoD(p, back, rec.len), "write"))
                result |= 0x80;
            if (reopen && p2 != 0 && check(ipc_close(p2), "close"))
                result |= 0x80;
            if (check(ipc_close(p), "close"))
                result |= 0x80;
        }
        if (write_full(1, &result, 1))
            return 2;
    }
    /* On the simulated driver: how many mappings are still open. */
    long left = -1, opens = 0, closes = 0;
    void (*counts)(long *, long *, long *) =
        (void (*)(long *, long *, long *))dlsym(RTLD_DEFAULT, "simcuda_counts");
    if (counts != NULL)
        counts(&left, &opens, &closes);
    return write_full(1, &left, sizeof left) ? 2 : 0;
}

/* ---- the exporter ---------------------------------------------------------- */

struct buffer {
    unsigned alloc;  /* which allocation */
    uint64_t offset; /* from its base */
    uint32_t len;
};

int main(int argc, char **argv)
{
    int child = 0, reopen = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--child") == 0)
            child = 1;
        else if (strcmp(argv[i], "--reopen") == 0)
            reopen = 1;
        else if (strcmp(argv[i], "--road") == 0 && i + 1 < argc)
            road = argv[++i];
        else {
            fprintf(stderr, "usage: legacy_ipc [--road direct|dlsym|procaddr] [--reopen]\n");
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
        if (check(cuMemAlloc(&base[a], sizes[a]), "cuMemAlloc"))
            return 2;
        for (uint64_t i = 0; i < sizes[a]; i++)
            host[i] = pattern(a, i);
        if (check(cuMemcpyHtoD(base[a], host, sizes[a]), "fill"))
            return 2;
    }

    const struct buffer bufs[] = {
        {0, 0, 256},          {0, 512, 256},         {0, 4096, 256},
        {0, 65537, 255},      {0, 1u << 20, 4096},   {0, (3u << 20) + 7, 1000},
        {0, BLOCK_SIZE - 64, 63}, {0, BLOCK_SIZE - 1, 1}, {1, 0, 512},
        {2, 100, 100},
    };
    const uint32_t n = sizeof bufs / sizeof bufs[0];

    int to_child[2], from_child[2];
    if (pipe(to_child) || pipe(from_child))
        return 2;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        close(to_child[1]);
        close(from_child[0]);
        char *args[] = {"legacy_ipc", "--child", "--road", (char *)road,
                        reopen ? "--reopen" : NULL, NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);

    int failed = write_full(to_child[1], &n, sizeof n);
    static struct record rec;
    for (uint32_t k = 0; k < n && !failed; k++) {
        memset(&rec, 0, sizeof rec);
        if (check(ipc_get(&rec.handle, base[bufs[k].alloc] + bufs[k].offset), "export"))
            return 2;
        rec.len = bufs[k].len;
        for (uint32_t i = 0; i < rec.len; i++)
            rec.expect[i] = pattern(bufs[k].alloc, bufs[k].offset + i);
        failed = write_full(to_child[1], &rec, sizeof rec);
    }
    close(to_child[1]);

    unsigned char results[sizeof bufs / sizeof bufs[0]] = {0};
    long left = -2;
    if (!failed)
        failed = read_full(from_child[0], results, n) || read_full(from_child[0], &left, sizeof left);
    int status = 0;
    waitpid(pid, &status, 0);
    if (failed || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        printf("road=%s: the importer failed (status %d)\n", road, status);
        return 2;
    }

    /* Every buffer must now hold the complement, every other byte the
     * pattern. */
    unsigned read_ok = 0, written_ok = 0, errors = 0, stray = 0;
    for (unsigned a = 0; a < 3; a++) {
        if (check(cuMemcpyDtoH(host, base[a], sizes[a]), "read back"))
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
        }
    }
    int right = read_ok == n && written_ok == n && stray == 0 && errors == 0 && left <= 0;
    char leftstr[32];
    snprintf(leftstr, sizeof leftstr, left >= 0 ? "%ld" : "n/a", left);
    printf("road=%s%s: %u buffers: read %u/%u right, written %u/%u right, %u stray bytes, "
           "%u failed calls, mappings left %s -> %s\n",
           road, reopen ? " reopen" : "", n, read_ok, n, written_ok, n, stray, errors, leftstr,
           right ? "CORRECT" : "WRONG");
    return right ? 0 : errors ? 2 : 1;
}
