// nvipcfix-verify: proves the data path through legacy CUDA IPC mappings.
//
// An exporter allocates one pool, carves sub-buffers at many offsets with
// guard bands between them, fills everything with a pattern and exports each
// sub-buffer with cudaIpcGetMemHandle on its own pointer, plus one separate
// block exported at offset 0 (the native way, for reference). An importer
// process on the same or another GPU opens them all and moves data through
// each mapping in both directions: copy engines (cudaMemcpy, cudaMemcpyPeer
// across GPUs) and a kernel that loads and stores over the mapping. The
// exporter then checks every byte and every guard band.
//
// It prints GB/s per direction for a sub-buffer and for the offset-0 block,
// and exits 0 only if every byte is right (1: wrong bytes, 2: an error).
// Under LD_PRELOAD=libnvipcfix.so the sub-buffers are right; without it the
// importer gets the pool's base and the check fails.
//
//   nvipcfix-verify [--mib N] [--repeats R] [--pair E:I]... [--importer-visible LIST]
//   nvipcfix-verify [--mib N] --fan-in
// Without --pair: every ordered pair of visible GPUs (E exports, I imports),
// E:E included; one GPU gives the pair 0:0. --importer-visible runs the
// importer with CUDA_VISIBLE_DEVICES=LIST, and I is then its own ordinal (the
// exporter's GPU under another number, or not visible at all).
// --fan-in: one exporter process per GPU, one importer holding the mappings
// of all of them at once, each opened while another GPU is current.
#include <cuda_runtime.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <vector>

#define CHECK(call)                                                                       \
    do {                                                                                  \
        cudaError_t e_ = (call);                                                          \
        if (e_ != cudaSuccess) {                                                          \
            fprintf(stderr, "nvipcfix-verify: %s failed: %s (%d) at line %d\n", #call,   \
                    cudaGetErrorString(e_), (int)e_, __LINE__);                           \
            exit(2);                                                                      \
        }                                                                                 \
    } while (0)

static const size_t GUARD = 4096;
static const int NBUF = 8;
// Offsets inside each slot: aligned, odd, 512 B, 4 KiB, 64 KiB...
static const size_t SHIFT[NBUF] = {0, 1, 7, 512, 4096, 3, 65536, 255};

__host__ __device__ static inline unsigned char pat(uint64_t i, uint32_t salt)
{
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)salt * 0xD6E8FEB86659FD93ull;
    return (unsigned char)(x >> 56 ^ x >> 24 ^ x);
}

// Fills [p, p+n) with pat(first + i, salt).
__global__ void fill(unsigned char *p, size_t n, uint64_t first, uint32_t salt)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = pat(first + i, salt);
}

// Counts bytes of [p, p+n) that differ from pat(first + i, salt).
__global__ void verify(const unsigned char *p, size_t n, uint64_t first, uint32_t salt,
                       unsigned long long *bad)
{
    unsigned long long mine = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        mine += p[i] != pat(first + i, salt);
    if (mine)
        atomicAdd(bad, mine);
}

// Over the mapping: load each byte, count those that are not pat(.., expect),
// store pat(.., next).
__global__ void load_store(unsigned char *p, size_t n, uint64_t first, uint32_t expect,
                           uint32_t next, unsigned long long *bad)
{
    unsigned long long mine = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        mine += p[i] != pat(first + i, expect);
        p[i] = pat(first + i, next);
    }
    if (mine)
        atomicAdd(bad, mine);
}

// 16-byte copy for the kernel bandwidth figures (aligned buffers only).
__global__ void copy16(uint4 *dst, const uint4 *src, size_t n16)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n16;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i];
}

static void write_all(int fd, const void *p, size_t n)
{
    for (size_t d = 0; d < n;) {
        ssize_t r = write(fd, (const char *)p + d, n - d);
        if (r <= 0)
            exit(2);
        d += (size_t)r;
    }
}

static int read_all(int fd, void *p, size_t n)
{
    for (size_t d = 0; d < n;) {
        ssize_t r = read(fd, (char *)p + d, n - d);
        if (r <= 0)
            return -1;
        d += (size_t)r;
    }
    return 0;
}

struct Export {
    cudaIpcMemHandle_t handle;
    uint64_t first; // index of the buffer's first byte in the pattern
    uint64_t size;
    uint32_t salt;  // pattern the buffer holds now
};

struct Message {
    int peer_ordinal; // the exporter's GPU as the importer numbers it, or -1
    int repeats;      // bandwidth repeats; 0: no bandwidth runs
    Export buf[NBUF + 1]; // the sub-buffers, then the offset-0 block
};

struct Result {
    unsigned long long bad_pull[NBUF + 1], bad_kernel[NBUF + 1];
    int open_error;
    double pull_gbs[2], push_gbs[2], kernel_gbs[2]; // [0] sub-buffer 0, [1] offset-0 block
    double peer_gbs[2];                             // cudaMemcpyPeer plain buffers (E->I, I->E)
};

static double timed(int repeats, size_t bytes, cudaStream_t s, const std::function<void()> &op)
{
    cudaEvent_t a, b;
    CHECK(cudaEventCreate(&a));
    CHECK(cudaEventCreate(&b));
    op(); // warm-up
    CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < repeats; i++)
        op();
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    CHECK(cudaGetLastError());
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return (double)bytes * repeats / (ms * 1e-3) / 1e9;
}

// ---- importer -------------------------------------------------------------

static const int GRID = 264, BLOCK = 512;

// Opens every buffer of m in the current context. Returns 0, or -1 (after
// saying which open failed).
static int open_all(const Message &m, unsigned char **mapped)
{
    for (int k = 0; k <= NBUF; k++) {
        cudaError_t e = cudaIpcOpenMemHandle((void **)&mapped[k], m.buf[k].handle,
                                             cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
            fprintf(stderr, "nvipcfix-verify: open of buffer %d failed: %s\n", k,
                    cudaGetErrorString(e));
            return -1;
        }
    }
    return 0;
}

static void close_all(unsigned char **mapped)
{
    for (int k = 0; k <= NBUF; k++)
        CHECK(cudaIpcCloseMemHandle(mapped[k]));
}

// Lets the current device reach `peer` directly (already enabled is fine).
static void enable_peer(int peer)
{
    cudaError_t e = cudaDeviceEnablePeerAccess(peer, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled)
        (void)cudaGetLastError();
    else
        CHECK(e);
}

// Moves data through every mapping both ways, with copy engines and a
// kernel, counting what arrives wrong; then the bandwidth runs (when
// m.repeats > 0). Leaves every buffer holding pattern salt + 2.
static void move_and_check(const Message &m, unsigned char **mapped, int gpu, Result &r)
{
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    size_t maxsize = 0;
    for (int k = 0; k <= NBUF; k++)
        maxsize = m.buf[k].size > maxsize ? m.buf[k].size : maxsize;
    unsigned char *local;
    unsigned long long *bad;
    CHECK(cudaMalloc(&local, maxsize));
    CHECK(cudaMalloc(&bad, sizeof *bad));

    for (int k = 0; k <= NBUF; k++) {
        const Export &b = m.buf[k];
        // Pull through the mapping with a copy engine, check what arrived.
        CHECK(cudaMemcpyAsync(local, mapped[k], b.size, cudaMemcpyDefault, s));
        CHECK(cudaMemsetAsync(bad, 0, sizeof *bad, s));
        verify<<<GRID, BLOCK, 0, s>>>(local, b.size, b.first, b.salt, bad);
        CHECK(cudaMemcpyAsync(&r.bad_pull[k], bad, sizeof *bad, cudaMemcpyDeviceToHost, s));
        // Push a new pattern through the mapping with a copy engine.
        fill<<<GRID, BLOCK, 0, s>>>(local, b.size, b.first, b.salt + 1);
        CHECK(cudaMemcpyAsync(mapped[k], local, b.size, cudaMemcpyDefault, s));
        // Loads and stores over the mapping from a kernel.
        CHECK(cudaMemsetAsync(bad, 0, sizeof *bad, s));
        load_store<<<GRID, BLOCK, 0, s>>>(mapped[k], b.size, b.first, b.salt + 1, b.salt + 2,
                                          bad);
        CHECK(cudaMemcpyAsync(&r.bad_kernel[k], bad, sizeof *bad, cudaMemcpyDeviceToHost, s));
        CHECK(cudaStreamSynchronize(s));
    }

    if (m.repeats > 0) {
        // Sub-buffer 0 (4 KiB-aligned inside the pool) against the offset-0
        // block: same size, same transfers. Pull then push writes back the
        // bytes just read, so the contents stay as checked.
        const int idx[2] = {0, NBUF};
        for (int j = 0; j < 2; j++) {
            unsigned char *mp = mapped[idx[j]];
            size_t n = m.buf[idx[j]].size;
            r.pull_gbs[j] = timed(m.repeats, n, s,
                                  [&] { cudaMemcpyAsync(local, mp, n, cudaMemcpyDefault, s); });
            r.push_gbs[j] = timed(m.repeats, n, s,
                                  [&] { cudaMemcpyAsync(mp, local, n, cudaMemcpyDefault, s); });
            r.kernel_gbs[j] = timed(m.repeats, n, s, [&] {
                copy16<<<GRID * 4, BLOCK, 0, s>>>((uint4 *)local, (const uint4 *)mp, n / 16);
            });
        }
    }
    if (m.repeats > 0 && m.peer_ordinal >= 0 && m.peer_ordinal != gpu) {
        // Plain buffers on both GPUs, one process: the peer copy's own speed.
        unsigned char *there;
        int e = m.peer_ordinal;
        size_t n = m.buf[NBUF].size;
        CHECK(cudaSetDevice(e));
        CHECK(cudaMalloc(&there, n));
        enable_peer(gpu); // e reaches gpu directly, not through the host
        CHECK(cudaSetDevice(gpu));
        enable_peer(e);
        r.peer_gbs[0] = timed(m.repeats, n, s,
                              [&] { cudaMemcpyPeerAsync(local, gpu, there, e, n, s); });
        r.peer_gbs[1] = timed(m.repeats, n, s,
                              [&] { cudaMemcpyPeerAsync(there, e, local, gpu, n, s); });
        CHECK(cudaFree(there));
    }
    CHECK(cudaFree(local));
    CHECK(cudaFree(bad));
    CHECK(cudaStreamDestroy(s));
}

static int importer(int gpu)
{
    Message m;
    Result r;
    unsigned char *mapped[NBUF + 1];
    memset(&r, 0, sizeof r);
    if (read_all(0, &m, sizeof m))
        return 2;
    CHECK(cudaSetDevice(gpu));
    if (open_all(m, mapped) != 0) {
        r.open_error = 1;
        write_all(1, &r, sizeof r);
        return 2;
    }
    move_and_check(m, mapped, gpu, r);
    close_all(mapped);
    write_all(1, &r, sizeof r);
    return 0;
}

// ---- exporter ---------------------------------------------------------------

struct Pool {
    unsigned char *pool, *ref;
    size_t pool_size, size;
    size_t off[NBUF];
};

static const uint32_t SALT = 11, REF_SALT = 77;

// On GPU e: a pool with NBUF sub-buffers of `size` bytes between guard
// bands, and a separate block; all filled with patterns, all exported.
static void make_pool(int e, size_t size, Pool &p, Message &m)
{
    CHECK(cudaSetDevice(e));
    const size_t slot = size + GUARD + 65536; // room for the largest shift
    p.size = size;
    p.pool_size = GUARD + NBUF * slot;
    CHECK(cudaMalloc(&p.pool, p.pool_size));
    CHECK(cudaMalloc(&p.ref, size));
    fill<<<GRID, BLOCK>>>(p.pool, p.pool_size, 0, SALT);
    fill<<<GRID, BLOCK>>>(p.ref, size, 0, REF_SALT);
    CHECK(cudaDeviceSynchronize());
    for (int k = 0; k < NBUF; k++) {
        p.off[k] = GUARD + k * slot + SHIFT[k];
        CHECK(cudaIpcGetMemHandle(&m.buf[k].handle, p.pool + p.off[k]));
        m.buf[k].first = p.off[k];
        m.buf[k].size = size;
        m.buf[k].salt = SALT;
    }
    CHECK(cudaIpcGetMemHandle(&m.buf[NBUF].handle, p.ref));
    m.buf[NBUF].size = size;
    m.buf[NBUF].salt = REF_SALT;
}

// After the importer: every sub-buffer must hold pattern salt + 2 (the last
// one written through the mapping), every byte around them the original.
static void check_pool(const Pool &p, unsigned long long *bad_inside,
                       unsigned long long *bad_guard)
{
    std::vector<unsigned char> host(p.pool_size), href(p.size);
    CHECK(cudaMemcpy(host.data(), p.pool, p.pool_size, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(href.data(), p.ref, p.size, cudaMemcpyDeviceToHost));
    *bad_inside = *bad_guard = 0;
    size_t k = 0;
    for (size_t b = 0; b < p.pool_size; b++) {
        while (k < NBUF && b >= p.off[k] + p.size)
            k++;
        if (k < NBUF && b >= p.off[k])
            *bad_inside += host[b] != pat(b, SALT + 2);
        else
            *bad_guard += host[b] != pat(b, SALT);
    }
    for (size_t b = 0; b < p.size; b++)
        *bad_inside += href[b] != pat(b, REF_SALT + 2);
    CHECK(cudaFree(p.pool));
    CHECK(cudaFree(p.ref));
}

static unsigned long long seen_bad(const Result &r)
{
    unsigned long long n = 0;
    for (int j = 0; j <= NBUF; j++)
        n += r.bad_pull[j] + r.bad_kernel[j];
    return n;
}

// Starts `self ARGS...` with its stdin and stdout on pipes.
static pid_t spawn(const std::vector<std::string> &args, const char *visible, int *to, int *from)
{
    int a[2], b[2];
    if (pipe(a) || pipe(b))
        exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(a[0], 0);
        dup2(b[1], 1);
        close(a[1]);
        close(b[0]);
        if (visible != NULL)
            setenv("CUDA_VISIBLE_DEVICES", visible, 1);
        std::vector<char *> argv;
        for (auto &x : args)
            argv.push_back((char *)x.c_str());
        argv.push_back(NULL);
        execv("/proc/self/exe", argv.data());
        _exit(127);
    }
    close(a[0]);
    close(b[1]);
    *to = a[1];
    *from = b[0];
    return pid;
}

static int exited_ok(pid_t pid)
{
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int run_pair(int e, int i, const char *visible, size_t size, int repeats)
{
    Pool p;
    Message m;
    memset(&m, 0, sizeof m);
    m.repeats = repeats;
    m.peer_ordinal = visible == NULL ? e : -1;
    make_pool(e, size, p, m);

    int to, from;
    pid_t pid = spawn({"nvipcfix-verify", "--importer", std::to_string(i)}, visible, &to, &from);
    write_all(to, &m, sizeof m);
    close(to);
    Result r;
    int failed = read_all(from, &r, sizeof r);
    close(from);
    int ok = exited_ok(pid);
    char where[64];
    snprintf(where, sizeof where, "GPU%d -> GPU%d%s%s", e, i, visible ? " of " : "",
             visible ? visible : "");
    if (failed || r.open_error || !ok) {
        printf("pair %s: the importer failed\n", where);
        return 2;
    }
    unsigned long long bad_inside, bad_guard, bad_seen = seen_bad(r);
    check_pool(p, &bad_inside, &bad_guard);
    int exact = bad_inside == 0 && bad_guard == 0 && bad_seen == 0;
    printf("pair %s: %d sub-buffers of %zu MiB at odd and aligned offsets + an offset-0 "
           "block: %s (importer saw %llu bad bytes, exporter %llu inside, %llu in guard "
           "bands)\n",
           where, NBUF, size >> 20, exact ? "EXACT" : "WRONG", bad_seen, bad_inside, bad_guard);
    if (repeats > 0) {
        printf("  GB/s          sub-buffer   offset-0 block   ratio\n");
        printf("  pull (CE)     %10.1f   %14.1f   %5.3f\n", r.pull_gbs[0], r.pull_gbs[1],
               r.pull_gbs[0] / r.pull_gbs[1]);
        printf("  push (CE)     %10.1f   %14.1f   %5.3f\n", r.push_gbs[0], r.push_gbs[1],
               r.push_gbs[0] / r.push_gbs[1]);
        printf("  kernel read   %10.1f   %14.1f   %5.3f\n", r.kernel_gbs[0], r.kernel_gbs[1],
               r.kernel_gbs[0] / r.kernel_gbs[1]);
        if (r.peer_gbs[0] > 0)
            printf("  cudaMemcpyPeer, plain buffers: GPU%d->GPU%d %.1f, GPU%d->GPU%d %.1f\n", e,
                   i, r.peer_gbs[0], i, e, r.peer_gbs[1]);
    }
    printf("RESULT pair=%d:%d visible=%s exact=%d pull=%.1f/%.1f push=%.1f/%.1f "
           "kernel=%.1f/%.1f peer=%.1f/%.1f\n",
           e, i, visible ? visible : "all", exact, r.pull_gbs[0], r.pull_gbs[1], r.push_gbs[0],
           r.push_gbs[1], r.kernel_gbs[0], r.kernel_gbs[1], r.peer_gbs[0], r.peer_gbs[1]);
    return exact ? 0 : 1;
}

// --exporter G (fan-in): export a pool on G, send the handles, wait for the
// importer, check the pool and send the counts back.
static int exporter(int e, size_t size)
{
    Pool p;
    Message m;
    memset(&m, 0, sizeof m);
    m.peer_ordinal = -1;
    make_pool(e, size, p, m);
    write_all(1, &m, sizeof m);
    char go;
    if (read_all(0, &go, 1))
        return 2;
    unsigned long long bad[2];
    check_pool(p, &bad[0], &bad[1]);
    write_all(1, bad, sizeof bad);
    return 0;
}

// --fan-in: this process imports from one exporter per GPU and holds all
// their mappings at once, each opened while the next GPU is current.
static int fan_in(int n, size_t size)
{
    std::vector<Message> m(n);
    std::vector<Result> r(n);
    std::vector<int> to(n), from(n);
    std::vector<pid_t> pid(n);
    std::vector<std::vector<unsigned char *>> mapped(n, std::vector<unsigned char *>(NBUF + 1));
    for (int g = 0; g < n; g++) {
        pid[g] = spawn({"nvipcfix-verify", "--exporter", std::to_string(g), "--mib",
                        std::to_string(size >> 20)},
                       NULL, &to[g], &from[g]);
        if (read_all(from[g], &m[g], sizeof m[g]))
            return 2;
    }
    int worst = 0;
    for (int g = 0; g < n; g++) {
        CHECK(cudaSetDevice((g + 1) % n));
        if (open_all(m[g], mapped[g].data()) != 0)
            return 2;
    }
    for (int g = 0; g < n; g++) {
        memset(&r[g], 0, sizeof r[g]);
        CHECK(cudaSetDevice((g + 1) % n));
        move_and_check(m[g], mapped[g].data(), (g + 1) % n, r[g]);
    }
    for (int g = 0; g < n; g++) {
        CHECK(cudaSetDevice((g + 1) % n));
        close_all(mapped[g].data());
    }
    for (int g = 0; g < n; g++) {
        unsigned long long bad[2] = {1, 1};
        write_all(to[g], "g", 1);
        int failed = read_all(from[g], bad, sizeof bad);
        int ok = exited_ok(pid[g]) && !failed;
        unsigned long long seen = seen_bad(r[g]);
        int exact = ok && seen == 0 && bad[0] == 0 && bad[1] == 0;
        printf("fan-in: exporter on GPU%d, opened on GPU%d among %d exporters' mappings held at "
               "once: %s (importer saw %llu bad bytes, exporter %llu inside, %llu in guard "
               "bands)\n",
               g, (g + 1) % n, n, exact ? "EXACT" : "WRONG", seen, bad[0], bad[1]);
        printf("RESULT fan-in=%d:%d exact=%d\n", g, (g + 1) % n, exact);
        worst = exact ? worst : (ok ? 1 : 2);
    }
    return worst;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--importer") == 0)
        return importer(atoi(argv[2]));
    size_t mib = 64;
    int repeats = 10, fan = 0;
    const char *visible = NULL;
    std::vector<std::pair<int, int>> pairs;
    int exporter_gpu = -1;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--mib") == 0 && a + 1 < argc)
            mib = strtoull(argv[++a], NULL, 10);
        else if (strcmp(argv[a], "--repeats") == 0 && a + 1 < argc)
            repeats = atoi(argv[++a]);
        else if (strcmp(argv[a], "--importer-visible") == 0 && a + 1 < argc)
            visible = argv[++a];
        else if (strcmp(argv[a], "--fan-in") == 0)
            fan = 1;
        else if (strcmp(argv[a], "--exporter") == 0 && a + 1 < argc)
            exporter_gpu = atoi(argv[++a]);
        else if (strcmp(argv[a], "--pair") == 0 && a + 1 < argc) {
            int e, i;
            if (sscanf(argv[++a], "%d:%d", &e, &i) != 2)
                return 2;
            pairs.push_back({e, i});
        } else {
            fprintf(stderr, "usage: nvipcfix-verify [--mib N] [--repeats R] [--pair E:I]... "
                            "[--importer-visible LIST] | [--mib N] --fan-in\n");
            return 2;
        }
    }
    if (mib == 0 || repeats < 0)
        return 2;
    if (exporter_gpu >= 0)
        return exporter(exporter_gpu, mib << 20);
    int n = 0;
    CHECK(cudaGetDeviceCount(&n));
    if (fan)
        return fan_in(n, mib << 20);
    if (pairs.empty())
        for (int e = 0; e < n; e++)
            for (int i = 0; i < n; i++)
                pairs.push_back({e, i});
    int worst = 0;
    for (auto &p : pairs) {
        int r = run_pair(p.first, p.second, visible, mib << 20, repeats);
        worst = r > worst ? r : worst;
    }
    return worst;
}
