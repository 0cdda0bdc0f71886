/* ipc_faults: what happens to an importer when things go wrong. Run under
 * the preload on the simulated driver; each case prints one line and the
 * exit status is 0 when every case held.
 *
 *   exporter-dies   the exporter is killed while the importer holds
 *                   mappings: they stay readable and close cleanly; blocks
 *                   not yet opened fail to open, nothing crashes
 *   forged-tags     an offset past the block, a damaged check value, all
 *                   bytes 0xFF, all zero: errors or native behaviour, never
 *                   a pointer outside the block, nothing left open
 *   fork            fork() while other threads are inside the library: the
 *                   child can still call it (no lock held by a thread that
 *                   does not exist there), the parent's counts stay right
 *   double-close    closing twice, closing what was never opened
 *   close-inside    the importer closes the block base (computed itself)
 *                   instead of the pointer it got: one reference of the
 *                   block is released, the driver unmaps nothing while
 *                   nvipcfix still counts one, and later opens are right
 *   cache-full      the exporter opens its own handle of a live block after
 *                   70,000 exports of other live blocks (more than the
 *                   export cache's sweep threshold) */
#include <cuda.h>

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../shim/handle_tag.h"
#include "../common/test_deadline.h"
#include "../common/test_process.h"

#define BLOCK (1u << 20)
#define NH 4 /* handles per block: offsets 0, 4096, 8193, BLOCK - 1 */

static const uint64_t offsets[NH] = {0, 4096, 8193, BLOCK - 1};
static CUcontext ctx;
static int failures;

static void expect(int cond, const char *what)
{
    if (!cond) {
        printf("  FAILED: %s\n", what);
        failures++;
    }
}

static unsigned char pattern(int b, uint64_t off)
{
    return (unsigned char)(b * 77 + off * 13 + (off >> 12));
}

/* Exporter: two blocks, NH handles each, then waits for stdin to close. */
static int exporter(void)
{
    static unsigned char host[BLOCK];
    if (tp_use_primary_context(0, &ctx))
        return 2;
    for (int b = 0; b < 2; b++) {
        CUdeviceptr p;
        if (cuMemAlloc(&p, BLOCK))
            return 2;
        for (uint64_t i = 0; i < BLOCK; i++)
            host[i] = pattern(b, i);
        if (cuMemcpyHtoD(p, host, BLOCK))
            return 2;
        for (int k = 0; k < NH; k++) {
            CUipcMemHandle h;
            if (cuIpcGetMemHandle(&h, p + offsets[k]) || tp_write_full(1, &h, sizeof h))
                return 2;
        }
    }
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}

struct peer {
    pid_t pid;
    int to;
    CUipcMemHandle h[2 * NH];
};

static const char *self_path;

static struct peer start_exporter(void)
{
    struct peer x;
    int from;
    char *args[] = {(char *)self_path, "--exporter", NULL};
    x.pid = tp_spawn(self_path, args, &x.to, &from);
    if (tp_read_full(from, x.h, sizeof x.h))
        exit(2);
    close(from);
    return x;
}

static void stop_exporter(struct peer *x)
{
    close(x->to);
    waitpid(x->pid, NULL, 0);
}

static long mappings_left(void)
{
    long left = -1, o, c;
    void (*counts)(long *, long *, long *) =
        (void (*)(long *, long *, long *))dlsym(RTLD_DEFAULT, "simcuda_counts");
    if (counts != NULL)
        counts(&left, &o, &c);
    return left;
}

static int reads(CUdeviceptr p, int b, uint64_t off)
{
    unsigned char byte = 0;
    return cuMemcpyDtoH(&byte, p, 1) == CUDA_SUCCESS && byte == pattern(b, off);
}

static void exporter_dies(void)
{
    struct peer x = start_exporter();
    CUdeviceptr a = 0, b = 0, c = 0;
    expect(cuIpcOpenMemHandle(&a, x.h[1], 1) == CUDA_SUCCESS, "open before the exporter dies");
    kill(x.pid, SIGKILL);
    waitpid(x.pid, NULL, 0);
    close(x.to);
    expect(reads(a, 0, offsets[1]), "a held mapping is still readable");
    expect(cuIpcOpenMemHandle(&b, x.h[2], 1) == CUDA_SUCCESS && reads(b, 0, offsets[2]),
           "another offset of an open block still opens (from the table)");
    expect(cuIpcOpenMemHandle(&c, x.h[NH + 1], 1) != CUDA_SUCCESS,
           "a block of the dead exporter not yet open fails to open");
    expect(cuIpcCloseMemHandle(a) == CUDA_SUCCESS && cuIpcCloseMemHandle(b) == CUDA_SUCCESS,
           "the held mappings close");
    expect(mappings_left() == 0, "no mapping left");
    printf("exporter-dies: %s\n", failures ? "FAILED" : "ok");
}

static void forged_tags(void)
{
    int before = failures;
    struct peer x = start_exporter();
    CUdeviceptr p = 0;
    CUipcMemHandle h;

    /* a well-formed tag whose offset is past the block */
    h = x.h[0];
    expect(nvipcfix_tag_encode((unsigned char *)h.reserved, BLOCK) == 0, "forge a tag");
    expect(cuIpcOpenMemHandle(&p, h, 1) == CUDA_ERROR_INVALID_VALUE,
           "an offset past the block is refused");
    h = x.h[0];
    nvipcfix_tag_encode((unsigned char *)h.reserved, NVIPCFIX_MAX_OFFSET);
    expect(cuIpcOpenMemHandle(&p, h, 1) == CUDA_ERROR_INVALID_VALUE,
           "the largest offset is refused");
    expect(mappings_left() == 0, "a refused open leaves no mapping");

    /* a damaged check value: not nvipcfix's, so the driver decides: the
     * guarded byte (the client's top bit) makes it refuse with an invalid
     * handle (never the block base) */
    h = x.h[2];
    h.reserved[62] ^= 0x10;
    p = 0;
    expect(cuIpcOpenMemHandle(&p, h, 1) == CUDA_ERROR_INVALID_HANDLE && p == 0,
           "a damaged guarded tag is refused by the driver");

    memset(&h, 0xff, sizeof h);
    expect(cuIpcOpenMemHandle(&p, h, 1) != CUDA_SUCCESS, "all bytes 0xFF fail to open");
    memset(&h, 0, sizeof h);
    expect(cuIpcOpenMemHandle(&p, h, 1) != CUDA_SUCCESS, "all bytes zero fail to open");
    expect(cuIpcOpenMemHandle(NULL, x.h[1], 1) != CUDA_SUCCESS, "a NULL result pointer fails");
    expect(mappings_left() == 0, "no mapping left");
    stop_exporter(&x);
    printf("forged-tags: %s\n", failures > before ? "FAILED" : "ok");
}

static atomic_int stop_threads;
static struct peer shared_peer;

static void *churn(void *arg)
{
    long bad = 0;
    cuCtxSetCurrent(ctx);
    for (unsigned i = (unsigned)(uintptr_t)arg; !atomic_load(&stop_threads); i++) {
        CUdeviceptr p;
        if (cuIpcOpenMemHandle(&p, shared_peer.h[i % (2 * NH)], 1) != CUDA_SUCCESS ||
            cuIpcCloseMemHandle(p) != CUDA_SUCCESS)
            bad++;
    }
    return (void *)bad;
}

static void fork_while_busy(void)
{
    int before = failures;
    shared_peer = start_exporter();
    CUdeviceptr held;
    expect(cuIpcOpenMemHandle(&held, shared_peer.h[1], 1) == CUDA_SUCCESS, "open");
    pthread_t th[4];
    for (long t = 0; t < 4; t++)
        pthread_create(&th[t], NULL, churn, (void *)t);
    int hung = 0, child_failed = 0;
    for (int f = 0; f < 20; f++) {
        pid_t pid = fork();
        if (pid == 0) {
            test_alarm(10); /* a deadlock would hang here */
            CUipcMemHandle h;
            CUdeviceptr q;
            cuIpcOpenMemHandle(&q, shared_peer.h[2], 1);
            cuIpcGetMemHandle(&h, held);
            _exit(cuIpcCloseMemHandle(held) == CUDA_SUCCESS ? 0 : 3);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        hung += WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            printf("  child %d: %s %d\n", f, WIFEXITED(status) ? "exit" : "signal",
                   WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        child_failed += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        usleep(2000);
    }
    atomic_store(&stop_threads, 1);
    long bad = 0;
    for (int t = 0; t < 4; t++) {
        void *r;
        pthread_join(th[t], &r);
        bad += (long)r;
    }
    expect(hung == 0, "no child hung on a lock");
    expect(child_failed == 0, "every child could use the library");
    expect(bad == 0, "the parent's threads saw no error");
    expect(cuIpcCloseMemHandle(held) == CUDA_SUCCESS, "the parent closes its mapping");
    expect(mappings_left() == 0, "no mapping left in the parent");
    stop_exporter(&shared_peer);
    printf("fork: %s (20 forks during 4 busy threads)\n", failures > before ? "FAILED" : "ok");
}

static void double_close(void)
{
    int before = failures;
    struct peer x = start_exporter();
    CUdeviceptr p;
    expect(cuIpcOpenMemHandle(&p, x.h[1], 1) == CUDA_SUCCESS, "open");
    expect(cuIpcCloseMemHandle(p) == CUDA_SUCCESS, "close");
    expect(cuIpcCloseMemHandle(p) == CUDA_ERROR_INVALID_VALUE, "a second close fails");
    expect(cuIpcCloseMemHandle(0x1234000) == CUDA_ERROR_INVALID_VALUE,
           "closing what was never opened fails");
    expect(mappings_left() == 0, "no mapping left");
    stop_exporter(&x);
    printf("double-close: %s\n", failures > before ? "FAILED" : "ok");
}

static void close_inside_block(void)
{
    int before = failures;
    struct peer x = start_exporter();
    CUdeviceptr p = 0, q = 0, r = 0;
    /* h[1]: block 0 at +4096, opened twice; the importer closes the base */
    expect(cuIpcOpenMemHandle(&p, x.h[1], 1) == CUDA_SUCCESS &&
               cuIpcOpenMemHandle(&q, x.h[1], 1) == CUDA_SUCCESS && p == q,
           "open twice");
    expect(cuIpcCloseMemHandle(p - offsets[1]) == CUDA_SUCCESS, "close of the block base");
    expect(mappings_left() == 1 && reads(p, 0, offsets[1]),
           "one reference left: still mapped, still the right bytes");
    expect(cuIpcCloseMemHandle(p - offsets[1]) == CUDA_SUCCESS, "the base again: the last");
    expect(mappings_left() == 0, "the block is unmapped once no reference is left");
    /* the other block lands where the first was; then the first again */
    expect(cuIpcOpenMemHandle(&r, x.h[NH + 2], 1) == CUDA_SUCCESS && reads(r, 1, offsets[2]),
           "another block opens right");
    expect(cuIpcOpenMemHandle(&p, x.h[1], 1) == CUDA_SUCCESS && reads(p, 0, offsets[1]),
           "the first handle again: the right bytes, not a stale entry");
    expect(cuIpcCloseMemHandle(p) == CUDA_SUCCESS && cuIpcCloseMemHandle(r) == CUDA_SUCCESS,
           "both close");
    expect(mappings_left() == 0, "no mapping left");
    stop_exporter(&x);
    printf("close-inside: %s\n", failures > before ? "FAILED" : "ok");
}

#define MANY 70000

static void cache_full(void)
{
    int before = failures;
    static CUdeviceptr many[MANY];
    CUdeviceptr live, q = 0;
    CUipcMemHandle h, other;
    expect(cuMemAlloc(&live, BLOCK) == CUDA_SUCCESS, "alloc");
    expect(cuIpcGetMemHandle(&h, live + 100) == CUDA_SUCCESS, "export of a live block");
    int bad = 0, n = 0;
    for (; n < MANY && !bad; n++)
        bad = cuMemAlloc(&many[n], 512) || cuIpcGetMemHandle(&other, many[n] + 8);
    expect(!bad, "70,000 more exports");
    expect(cuIpcOpenMemHandle(&q, h, 1) == CUDA_SUCCESS && q == live + 100,
           "the exporter opens its own live block's handle");
    if (q != 0)
        expect(cuIpcCloseMemHandle(q) == CUDA_SUCCESS, "and closes it");
    while (n-- > 0)
        cuMemFree(many[n]);
    cuMemFree(live);
    printf("cache-full: %s\n", failures > before ? "FAILED" : "ok");
}

int main(int argc, char **argv)
{
    self_path = argv[0];
    if (argc == 2 && strcmp(argv[1], "--exporter") == 0)
        return exporter();
    if (argc == 2 && strcmp(argv[1], "--leave-open") == 0) {
        /* opens one pointer in each of the two blocks and exits holding
         * both: what the library reports at exit */
        CUdeviceptr a, b;
        if (tp_use_primary_context(0, &ctx))
            return 2;
        struct peer x = start_exporter();
        int r = cuIpcOpenMemHandle(&a, x.h[1], 1) || cuIpcOpenMemHandle(&b, x.h[NH + 2], 1);
        stop_exporter(&x);
        printf("leave-open: %s\n", r ? "FAILED" : "2 blocks held at exit");
        return r;
    }
    if (tp_use_primary_context(0, &ctx))
        return 2;
    exporter_dies();
    forged_tags();
    fork_while_busy();
    double_close();
    close_inside_block();
    cache_full();
    return failures == 0 ? 0 : 1;
}
