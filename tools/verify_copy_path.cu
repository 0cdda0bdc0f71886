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
//   nvipcfix-verify [--mib N] [--repeats R] [--pair E:I]...
// Without --pair: every ordered pair of visible GPUs (E exports, I imports),
// E:E included; one GPU gives the pair 0:0.
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
    int exporter_gpu;
    int repeats;
    Export buf[NBUF + 1]; // the sub-buffers, then the offset-0 block
};

struct Result {
    unsigned long long bad_pull[NBUF + 1], bad_kernel[NBUF + 1];
    int open_error;
    double pull_gbs[2], push_gbs[2], kernel_gbs[2]; // [0] sub-buffer 0, [1] offset-0 block
    double peer_gbs[2];                             // cudaMemcpyPeer plain buffers (E->I, I->E)
};

static double timed(int repeats, size_t bytes, cudaStream_t s,
                    const std::function<void()> &op);

// ---- importer -------------------------------------------------------------

static int importer(int gpu)
{
    Message m;
    Result r;
    memset(&r, 0, sizeof r);
    if (read_all(0, &m, sizeof m))
        return 2;
    CHECK(cudaSetDevice(gpu));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    size_t maxsize = 0;
    for (int k = 0; k <= NBUF; k++)
        maxsize = m.buf[k].size > maxsize ? m.buf[k].size : maxsize;
    unsigned char *local, *mapped[NBUF + 1];
    unsigned long long *bad;
    CHECK(cudaMalloc(&local, maxsize));
    CHECK(cudaMalloc(&bad, sizeof *bad));

    for (int k = 0; k <= NBUF; k++) {
        cudaError_t e = cudaIpcOpenMemHandle((void **)&mapped[k], m.buf[k].handle,
                                             cudaIpcMemLazyEnablePeerAccess);
        if (e != cudaSuccess) {
            fprintf(stderr, "nvipcfix-verify: open of buffer %d failed: %s\n", k,
                    cudaGetErrorString(e));
            r.open_error = 1;
            write_all(1, &r, sizeof r);
            return 2;
        }
    }
    const int G = 264, T = 512;
    for (int k = 0; k <= NBUF; k++) {
        Export &b = m.buf[k];
        // Pull through the mapping with a copy engine, check what arrived.
        if (gpu == m.exporter_gpu)
            CHECK(cudaMemcpyAsync(local, mapped[k], b.size, cudaMemcpyDeviceToDevice, s));
        else
            CHECK(cudaMemcpyPeerAsync(local, gpu, mapped[k], m.exporter_gpu, b.size, s));
        CHECK(cudaMemsetAsync(bad, 0, sizeof *bad, s));
        verify<<<G, T, 0, s>>>(local, b.size, b.first, b.salt, bad);
        CHECK(cudaMemcpyAsync(&r.bad_pull[k], bad, sizeof *bad, cudaMemcpyDeviceToHost, s));
        // Push a new pattern through the mapping with a copy engine.
        fill<<<G, T, 0, s>>>(local, b.size, b.first, b.salt + 1);
        if (gpu == m.exporter_gpu)
            CHECK(cudaMemcpyAsync(mapped[k], local, b.size, cudaMemcpyDeviceToDevice, s));
        else
            CHECK(cudaMemcpyPeerAsync(mapped[k], m.exporter_gpu, local, gpu, b.size, s));
        // Loads and stores over the mapping from a kernel.
        CHECK(cudaMemsetAsync(bad, 0, sizeof *bad, s));
        load_store<<<G, T, 0, s>>>(mapped[k], b.size, b.first, b.salt + 1, b.salt + 2, bad);
        CHECK(cudaMemcpyAsync(&r.bad_kernel[k], bad, sizeof *bad, cudaMemcpyDeviceToHost, s));
        CHECK(cudaStreamSynchronize(s));
    }

    // Bandwidth: sub-buffer 0 (4 KiB-aligned inside the pool) and the
    // offset-0 block, same size, same transfers. The bandwidth runs write
    // back the bytes they read, so the contents stay as checked.
    const int idx[2] = {0, NBUF};
    for (int j = 0; j < 2; j++) {
        unsigned char *mp = mapped[idx[j]];
        size_t n = m.buf[idx[j]].size;
        auto pull = [&] {
            if (gpu == m.exporter_gpu)
                cudaMemcpyAsync(local, mp, n, cudaMemcpyDeviceToDevice, s);
            else
                cudaMemcpyPeerAsync(local, gpu, mp, m.exporter_gpu, n, s);
        };
        auto push = [&] {
            if (gpu == m.exporter_gpu)
                cudaMemcpyAsync(mp, local, n, cudaMemcpyDeviceToDevice, s);
            else
                cudaMemcpyPeerAsync(mp, m.exporter_gpu, local, gpu, n, s);
        };
        auto kern = [&] { copy16<<<G * 4, T, 0, s>>>((uint4 *)local, (const uint4 *)mp, n / 16); };
        r.pull_gbs[j] = timed(m.repeats, n, s, pull);
        r.push_gbs[j] = timed(m.repeats, n, s, push);
        r.kernel_gbs[j] = timed(m.repeats, n, s, kern);
    }
    if (gpu != m.exporter_gpu) {
        // Plain buffers on both GPUs, one process: the peer copy's own speed.
        unsigned char *there;
        size_t n = m.buf[NBUF].size;
        CHECK(cudaSetDevice(m.exporter_gpu));
        CHECK(cudaMalloc(&there, n));
        CHECK(cudaSetDevice(gpu));
        r.peer_gbs[0] = timed(m.repeats, n, s, [&] {
            cudaMemcpyPeerAsync(local, gpu, there, m.exporter_gpu, n, s);
        });
        r.peer_gbs[1] = timed(m.repeats, n, s, [&] {
            cudaMemcpyPeerAsync(there, m.exporter_gpu, local, gpu, n, s);
        });
        CHECK(cudaFree(there));
    }
    // Put back what the load_store pass left, for the exporter's check.
    for (int k = 0; k <= NBUF; k++) {
        fill<<<G, T, 0, s>>>(local, m.buf[k].size, m.buf[k].first, m.buf[k].salt + 2);
        CHECK(cudaMemcpyAsync(mapped[k], local, m.buf[k].size, cudaMemcpyDefault, s));
        CHECK(cudaStreamSynchronize(s));
    }
    for (int k = 0; k <= NBUF; k++)
        CHECK(cudaIpcCloseMemHandle(mapped[k]));
    write_all(1, &r, sizeof r);
    return 0;
}

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

// ---- exporter ---------------------------------------------------------------

static int run_pair(const char *self, int e, int i, size_t size, int repeats)
{
    CHECK(cudaSetDevice(e));
    const size_t slot = size + GUARD + 65536; // room for the largest shift
    const size_t pool_size = GUARD + NBUF * slot;
    unsigned char *pool, *ref;
    CHECK(cudaMalloc(&pool, pool_size));
    CHECK(cudaMalloc(&ref, size));
    const uint32_t salt = 11, ref_salt = 77;
    fill<<<264, 512>>>(pool, pool_size, 0, salt);
    fill<<<264, 512>>>(ref, size, 0, ref_salt);
    CHECK(cudaDeviceSynchronize());

    Message m;
    memset(&m, 0, sizeof m);
    m.exporter_gpu = e;
    m.repeats = repeats;
    size_t off[NBUF];
    for (int k = 0; k < NBUF; k++) {
        off[k] = GUARD + k * slot + SHIFT[k];
        CHECK(cudaIpcGetMemHandle(&m.buf[k].handle, pool + off[k]));
        m.buf[k].first = off[k];
        m.buf[k].size = size;
        m.buf[k].salt = salt;
    }
    CHECK(cudaIpcGetMemHandle(&m.buf[NBUF].handle, ref));
    m.buf[NBUF].size = size;
    m.buf[NBUF].salt = ref_salt;

    int to[2], from[2];
    if (pipe(to) || pipe(from))
        return 2;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[1]);
        close(from[0]);
        std::string g = std::to_string(i);
        execl(self, self, "--importer", g.c_str(), (char *)NULL);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    write_all(to[1], &m, sizeof m);
    close(to[1]);
    Result r;
    int failed = read_all(from[0], &r, sizeof r);
    int status = 0;
    waitpid(pid, &status, 0);
    if (failed || r.open_error || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        printf("pair GPU%d -> GPU%d: the importer failed (status %d)\n", e, i, status);
        return 2;
    }

    // Every sub-buffer must hold salt + 2 (the last pattern written through
    // the mapping), every byte around them the original pattern.
    std::vector<unsigned char> host(pool_size), href(size);
    CHECK(cudaMemcpy(host.data(), pool, pool_size, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(href.data(), ref, size, cudaMemcpyDeviceToHost));
    unsigned long long bad_inside = 0, bad_guard = 0, bad_seen = 0;
    size_t k = 0;
    for (size_t b = 0; b < pool_size; b++) {
        while (k < NBUF && b >= off[k] + size)
            k++;
        int inside = k < NBUF && b >= off[k];
        if (inside)
            bad_inside += host[b] != pat(b, salt + 2);
        else
            bad_guard += host[b] != pat(b, salt);
    }
    for (size_t b = 0; b < size; b++)
        bad_inside += href[b] != pat(b, ref_salt + 2);
    for (int j = 0; j <= NBUF; j++)
        bad_seen += r.bad_pull[j] + r.bad_kernel[j];
    int exact = bad_inside == 0 && bad_guard == 0 && bad_seen == 0;
    printf("pair GPU%d -> GPU%d: %d sub-buffers of %zu MiB at odd and aligned offsets + an "
           "offset-0 block: %s (importer saw %llu bad bytes, exporter %llu inside, %llu in "
           "guard bands)\n",
           e, i, NBUF, size >> 20, exact ? "EXACT" : "WRONG", bad_seen, bad_inside, bad_guard);
    printf("  GB/s          sub-buffer   offset-0 block   ratio\n");
    printf("  pull (CE)     %10.1f   %14.1f   %5.3f\n", r.pull_gbs[0], r.pull_gbs[1],
           r.pull_gbs[0] / r.pull_gbs[1]);
    printf("  push (CE)     %10.1f   %14.1f   %5.3f\n", r.push_gbs[0], r.push_gbs[1],
           r.push_gbs[0] / r.push_gbs[1]);
    printf("  kernel read   %10.1f   %14.1f   %5.3f\n", r.kernel_gbs[0], r.kernel_gbs[1],
           r.kernel_gbs[0] / r.kernel_gbs[1]);
    if (e != i)
        printf("  cudaMemcpyPeer, plain buffers: GPU%d->GPU%d %.1f, GPU%d->GPU%d %.1f\n", e, i,
               r.peer_gbs[0], i, e, r.peer_gbs[1]);
    printf("RESULT pair=%d:%d exact=%d pull=%.1f/%.1f push=%.1f/%.1f kernel=%.1f/%.1f "
           "peer=%.1f/%.1f\n",
           e, i, exact, r.pull_gbs[0], r.pull_gbs[1], r.push_gbs[0], r.push_gbs[1],
           r.kernel_gbs[0], r.kernel_gbs[1], r.peer_gbs[0], r.peer_gbs[1]);
    CHECK(cudaFree(pool));
    CHECK(cudaFree(ref));
    return exact ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--importer") == 0)
        return importer(atoi(argv[2]));
    size_t mib = 64;
    int repeats = 10;
    std::vector<std::pair<int, int>> pairs;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--mib") == 0 && a + 1 < argc)
            mib = strtoull(argv[++a], NULL, 10);
        else if (strcmp(argv[a], "--repeats") == 0 && a + 1 < argc)
            repeats = atoi(argv[++a]);
        else if (strcmp(argv[a], "--pair") == 0 && a + 1 < argc) {
            int e, i;
            if (sscanf(argv[++a], "%d:%d", &e, &i) != 2)
                return 2;
            pairs.push_back({e, i});
        } else {
            fprintf(stderr, "usage: nvipcfix-verify [--mib N] [--repeats R] [--pair E:I]...\n");
            return 2;
        }
    }
    if (mib == 0 || repeats <= 0)
        return 2;
    int n = 0;
    CHECK(cudaGetDeviceCount(&n));
    if (pairs.empty())
        for (int e = 0; e < n; e++)
            for (int i = 0; i < n; i++)
                pairs.push_back({e, i});
    int worst = 0;
    for (auto &p : pairs) {
        int r = run_pair("/proc/self/exe", p.first, p.second, mib << 20, repeats);
        worst = r > worst ? r : worst;
    }
    return worst;
}
