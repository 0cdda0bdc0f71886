/* fork_safety: fork() in a process whose threads are busy in the library.
 *
 *   --deadlock ipc-first|driver-first [FORKS]
 *       Worker threads open and close handles of another process (every open
 *       a real one) while the main thread forks FORKS times (default 300). ipc-first makes
 *       the first IPC call before cuInit, so nvipcfix's fork handlers (if it
 *       has any) are registered before the driver's; driver-first the other
 *       way. No lock may be held across fork() that a worker needs to
 *       release a lock the driver's own fork handler takes. A deadlock is
 *       ended by alarm() after 60 s (exit by SIGALRM). Prints
 *       "deadlock ORDER: FORKS forks, children ok, N errors" and exits 0 when
 *       nothing hung and every child exited; N counts the workers' failed
 *       calls (the real driver, without nvipcfix, fails some concurrent
 *       opens and closes of one handle; the tests assert N where it
 *       matters).
 *   --bench THREADS FORKS
 *       THREADS threads re-open and close handles of an open block and
 *       export their own pointers while the main thread times FORKS forks
 *       (the child exits at once). Prints the median and mean time of
 *       fork() in the parent, in microseconds, and, to show what differs
 *       between runs with and without a preload, the threads' rounds (an
 *       open, a close and an export each) per millisecond and the
 *       process's minor page faults per fork (after a fork every page a
 *       thread writes faults once more).
 *   --stats-child
 *       One export, then a forked child that exits through exit(): with
 *       NVIPCFIX_STATS=1 only the parent has counts to print. */
#include <cuda.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/test_deadline.h"
#include "../common/test_process.h"

#define BLOCK (1u << 20)
#define NH 4

static CUcontext ctx;
static CUipcMemHandle handles[NH];
static atomic_int stop;
static atomic_long errors;
static atomic_long rounds; /* --bench: the threads' rounds of calls */

static int exporter(void)
{
    if (tp_use_primary_context(0, NULL))
        return 2;
    for (int k = 0; k < NH; k++) {
        CUdeviceptr p;
        CUipcMemHandle h;
        if (cuMemAlloc(&p, BLOCK) || cuIpcGetMemHandle(&h, p + 4096 * (uint64_t)k) ||
            tp_write_full(1, &h, sizeof h))
            return 2;
    }
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

/* Every open a real one: the block is not held between them. */
static void *real_opens(void *arg)
{
    cuCtxSetCurrent(ctx);
    for (unsigned i = (unsigned)(uintptr_t)arg; !atomic_load(&stop); i++) {
        CUdeviceptr p;
        if (cuIpcOpenMemHandle(&p, handles[i % NH], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) ||
            cuIpcCloseMemHandle(p))
            atomic_fetch_add(&errors, 1);
    }
    return NULL;
}

/* Table hits and non-last closes, and exports of this process's memory. */
static CUdeviceptr own;
static void *busy(void *arg)
{
    cuCtxSetCurrent(ctx);
    for (unsigned i = (unsigned)(uintptr_t)arg; !atomic_load(&stop); i++) {
        CUdeviceptr p;
        CUipcMemHandle h;
        if (cuIpcOpenMemHandle(&p, handles[i % NH], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) ||
            cuIpcCloseMemHandle(p) || cuIpcGetMemHandle(&h, own + (i % 1024) * 64))
            atomic_fetch_add(&errors, 1);
        atomic_fetch_add_explicit(&rounds, 1, memory_order_relaxed);
    }
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--exporter") == 0)
        return exporter();
    int deadlock = (argc == 3 || argc == 4) && strcmp(argv[1], "--deadlock") == 0;
    int bench = argc == 4 && strcmp(argv[1], "--bench") == 0;
    int stats_child = argc == 2 && strcmp(argv[1], "--stats-child") == 0;
    if (!deadlock && !bench && !stats_child) {
        fprintf(stderr, "usage: fork_safety --deadlock ipc-first|driver-first [FORKS] | "
                        "--bench THREADS FORKS | --stats-child\n");
        return 2;
    }
    if (stats_child) {
        CUdeviceptr p;
        CUipcMemHandle h;
        if (tp_use_primary_context(0, &ctx) || cuMemAlloc(&p, BLOCK) ||
            cuIpcGetMemHandle(&h, p + 64))
            return 2;
        pid_t pid = fork();
        if (pid == 0)
            exit(0);
        int status;
        waitpid(pid, &status, 0);
        return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
    }
    if (deadlock && strcmp(argv[2], "ipc-first") == 0) {
        CUipcMemHandle h; /* before cuInit: the driver refuses, the library is set up */
        cuIpcGetMemHandle(&h, 0);
    }
    test_alarm(60);
    if (tp_use_primary_context(0, &ctx))
        return 2;
    int to, from;
    char *args[] = {argv[0], "--exporter", NULL};
    pid_t exp = tp_spawn(argv[0], args, &to, &from);
    if (tp_read_full(from, handles, sizeof handles))
        return 2;
    close(from);

    int nthreads = bench ? atoi(argv[2]) : 4;
    int nforks = bench ? atoi(argv[3]) : argc == 4 ? atoi(argv[3]) : 300;
    if (nthreads < 1 || nthreads > 64 || nforks < 1)
        return 2;
    CUdeviceptr held[NH];
    if (bench) {
        if (cuMemAlloc(&own, BLOCK))
            return 2;
        for (int k = 0; k < NH; k++)
            if (cuIpcOpenMemHandle(&held[k], handles[k], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS))
                return 2;
    }
    pthread_t th[64];
    for (long t = 0; t < nthreads; t++)
        pthread_create(&th[t], NULL, bench ? busy : real_opens, (void *)t);
    usleep(20000);

    double *times = calloc((size_t)nforks, sizeof *times);
    int bad_children = 0;
    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    long rounds0 = atomic_load(&rounds);
    double start = now_us();
    for (int f = 0; f < nforks; f++) {
        double t0 = now_us();
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        times[f] = now_us() - t0;
        int status = 0;
        waitpid(pid, &status, 0);
        bad_children += !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    }
    double took = now_us() - start;
    long rounds1 = atomic_load(&rounds);
    getrusage(RUSAGE_SELF, &ru1);
    atomic_store(&stop, 1);
    for (int t = 0; t < nthreads; t++)
        pthread_join(th[t], NULL);
    if (bench)
        for (int k = 0; k < NH; k++)
            cuIpcCloseMemHandle(held[k]);
    close(to);
    waitpid(exp, NULL, 0);

    int result = bad_children == 0 ? 0 : 1;
    if (bench) {
        double sum = 0;
        for (int f = 0; f < nforks; f++)
            sum += times[f];
        qsort(times, (size_t)nforks, sizeof *times, cmp);
        printf("fork with %d busy threads: median %.1f us, mean %.1f us (%d forks), "
               "%ld errors; the threads' rounds %.0f a ms, minor faults %.1f a fork\n",
               nthreads, times[nforks / 2], sum / nforks, nforks, atomic_load(&errors),
               (double)(rounds1 - rounds0) * 1000 / took,
               (double)(ru1.ru_minflt - ru0.ru_minflt) / nforks);
        result |= atomic_load(&errors) != 0;
    }
    free(times);
    if (bench)
        return result;
    printf("deadlock %s: %d forks, children %s, %ld errors\n", argv[2], nforks,
           bad_children ? "FAILED" : "ok", atomic_load(&errors));
    return result;
}
