/* ipc_bench: what nvipcfix costs, against native, per call.
 *
 *   ipc_bench compare LIB [--quick]   runs `run` without and with
 *                                     LD_PRELOAD=LIB, prints ratios
 *   ipc_bench run [--quick]           measures in this process, whatever is
 *                                     preloaded; prints RESULT lines
 *   ipc_bench startup LIB... [--quick] start-up of /bin/true without and with
 *                                     each LIB preloaded
 *   ipc_bench count OP N              N calls of one kind, for callgrind
 *   ipc_bench exports [--quick]       the export rows of `run` alone (for
 *                                     pinned, alternating runs of variants)
 *   ipc_bench threads [--quick]       the exports at 1, 8 and 32 threads alone
 *   ipc_bench scale [--quick]         the 100,000 (10,000) pointers alone
 *
 * Uses the driver API, so it runs on a GPU (linked with -lcuda) and on the
 * simulated driver. An exporter child process provides the handles the
 * open/close measurements need. Times are per call: the median and the 99th
 * percentile of batches of BATCH calls, divided by BATCH. */
#include <cuda.h>

#include <alloca.h>
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../common/test_process.h"

extern char **environ;

#define BATCH 10
#define BLOCK (2u << 20)
#define OFFSETS 64

static int quick;

static void die(const char *what, CUresult r)
{
    fprintf(stderr, "ipc_bench: %s failed (%d)\n", what, (int)r);
    exit(2);
}

#define CK(call)                                                             \
    do {                                                                     \
        CUresult r_ = (call);                                                \
        if (r_ != CUDA_SUCCESS)                                              \
            die(#call, r_);                                                  \
    } while (0)

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Per-call median and p99 from per-batch times. */
static void report(const char *name, double *batch_us, int n)
{
    qsort(batch_us, (size_t)n, sizeof *batch_us, cmp_double);
    printf("RESULT %s %.4f %.4f\n", name, batch_us[n / 2] / BATCH,
           batch_us[(int)(n * 0.99)] / BATCH);
    fflush(stdout);
}

static CUcontext ctx;

static void init(void)
{
    CK(tp_use_primary_context(0, &ctx));
}

/* ---- the exporter child ------------------------------------------------ */

/* Exports `per` handles (offsets 0, 4096, 8192 + 7, ...) of each of
 * `blocks` blocks of BLOCK bytes; writes them to stdout; waits for stdin to
 * close. */
static int exporter(int blocks, int per)
{
    init();
    for (int b = 0; b < blocks; b++) {
        CUdeviceptr p;
        CK(cuMemAlloc(&p, BLOCK));
        for (int k = 0; k < per; k++) {
            CUipcMemHandle h;
            CK(cuIpcGetMemHandle(&h, p + (uint64_t)k * 4096 + (k > 1 ? 7 : 0)));
            if (fwrite(&h, sizeof h, 1, stdout) != 1)
                return 2;
        }
    }
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}

struct peer {
    pid_t pid;
    int to;
    FILE *from;
};

static struct peer start_exporter(const char *self, int blocks, int per)
{
    struct peer x;
    int from;
    char nb[16], np[16];
    snprintf(nb, sizeof nb, "%d", blocks);
    snprintf(np, sizeof np, "%d", per);
    char *args[] = {(char *)self, "exporter", nb, np, NULL};
    x.pid = tp_spawn(self, args, &x.to, &from);
    x.from = fdopen(from, "r");
    return x;
}

static void stop_exporter(struct peer *x)
{
    close(x->to);
    fclose(x->from);
    waitpid(x->pid, NULL, 0);
}

static CUipcMemHandle *read_handles(struct peer *x, int n)
{
    CUipcMemHandle *h = malloc(sizeof *h * (size_t)n);
    if (h == NULL || fread(h, sizeof *h, (size_t)n, x->from) != (size_t)n)
        exit(2);
    return h;
}

/* ---- single-thread measurements -------------------------------------------- */

static void bench_exports(int batches)
{
    CUdeviceptr p;
    CUipcMemHandle h;
    double *t = malloc(sizeof *t * (size_t)batches);
    CK(cuMemAlloc(&p, BLOCK));
    CK(cuIpcGetMemHandle(&h, p));
    /* Warm-up, unmeasured: the CPU's clock and caches settle first. */
    for (int i = 0; i < batches * BATCH; i++)
        cuIpcGetMemHandle(&h, p + 4096u * (unsigned)(i % OFFSETS));
    for (int b = 0; b < batches; b++) {
        double t0 = now_us();
        for (int i = 0; i < BATCH; i++)
            cuIpcGetMemHandle(&h, p);
        t[b] = now_us() - t0;
    }
    report("export_base", t, batches);
    for (int b = 0; b < batches; b++) {
        double t0 = now_us();
        for (int i = 0; i < BATCH; i++)
            cuIpcGetMemHandle(&h, p + 4096u * (unsigned)((b * BATCH + i) % OFFSETS) + 1);
        t[b] = now_us() - t0;
    }
    report("export_interior", t, batches);
    CK(cuMemFree(p));
    int fresh = batches / 10 > 20 ? batches / 10 : 20;
    for (int b = 0; b < fresh; b++) {
        CUdeviceptr q[BATCH];
        for (int i = 0; i < BATCH; i++)
            CK(cuMemAlloc(&q[i], BLOCK));
        double t0 = now_us();
        for (int i = 0; i < BATCH; i++)
            cuIpcGetMemHandle(&h, q[i] + 64);
        t[b] = now_us() - t0;
        for (int i = 0; i < BATCH; i++)
            CK(cuMemFree(q[i]));
    }
    report("export_fresh", t, fresh);
    free(t);
}

static void bench_opens(const char *self, int batches)
{
    struct peer x = start_exporter(self, BATCH, OFFSETS);
    CUipcMemHandle *h = read_handles(&x, BATCH * OFFSETS);
    double *to = malloc(sizeof *to * (size_t)batches), *tc = malloc(sizeof *tc * (size_t)batches);
    CUdeviceptr p[BATCH], q[BATCH];
    /* first open / last close: BATCH different blocks, interior handles */
    int cycles = batches / 20 > 10 ? batches / 20 : 10;
    double *tr = malloc(sizeof *tr * (size_t)cycles);
    for (int b = 0; b < cycles; b++) {
        double t0 = now_us();
        for (int i = 0; i < BATCH; i++)
            CK(cuIpcOpenMemHandle(&p[i], h[i * OFFSETS + 1], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
        double t1 = now_us();
        for (int i = 0; i < BATCH; i++) {
            CUdeviceptr base;
            size_t size;
            CK(cuMemGetAddressRange(&base, &size, p[i]));
        }
        double t2 = now_us();
        for (int i = 0; i < BATCH; i++)
            CK(cuIpcCloseMemHandle(p[i]));
        to[b] = t1 - t0;
        tr[b] = t2 - t1;
        tc[b] = now_us() - t2;
    }
    report("open_first", to, cycles);
    report("range_of_new_mapping", tr, cycles);
    report("close_last", tc, cycles);
    free(tr);

    /* with block 0 held open: re-open (other offset, same offset), and the
     * closes that are not the last */
    CUdeviceptr held;
    CK(cuIpcOpenMemHandle(&held, h[1], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    const char *names[2] = {"reopen_other_offset", "reopen_same_offset"};
    for (int v = 0; v < 2; v++) {
        for (int b = 0; b < batches; b++) {
            double t0 = now_us();
            for (int i = 0; i < BATCH; i++)
                CK(cuIpcOpenMemHandle(&q[i], h[v ? 1 : 2 + (b * BATCH + i) % (OFFSETS - 2)],
                                      CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
            double t1 = now_us();
            for (int i = 0; i < BATCH; i++)
                CK(cuIpcCloseMemHandle(q[i]));
            to[b] = t1 - t0;
            tc[b] = now_us() - t1;
        }
        report(names[v], to, batches);
        if (v == 0)
            report("close_not_last", tc, batches);
    }
    CK(cuIpcCloseMemHandle(held));
    stop_exporter(&x);
    free(h);
    free(to);
    free(tc);
}

static void bench_dlsym(int batches)
{
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    double *t = malloc(sizeof *t * (size_t)batches);
    volatile void *sink;
    for (int b = 0; b < batches; b++) {
        double t0 = now_us();
        for (int i = 0; i < BATCH; i++)
            sink = dlsym(libc, "malloc");
        t[b] = now_us() - t0;
    }
    (void)sink;
    report("dlsym_handle", t, batches);
    free(t);
}

/* ---- threads ------------------------------------------------------------------ */

struct thread_job {
    int op, batches;
    CUdeviceptr block;
    CUipcMemHandle *handles;
    double *t;
    pthread_barrier_t *start;
};

static void *thread_main(void *arg)
{
    struct thread_job *j = arg;
    CK(cuCtxSetCurrent(ctx));
    pthread_barrier_wait(j->start);
    for (int b = 0; b < j->batches; b++) {
        double t0 = now_us();
        for (int i = 0; i < BATCH; i++) {
            int k = (b * BATCH + i) % OFFSETS;
            if (j->op == 0) {
                CUipcMemHandle h;
                cuIpcGetMemHandle(&h, j->block + 4096u * (unsigned)k + 1);
            } else {
                CUdeviceptr q;
                CK(cuIpcOpenMemHandle(&q, j->handles[2 + k % (OFFSETS - 2)],
                                      CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
                CK(cuIpcCloseMemHandle(q));
            }
        }
        j->t[b] = now_us() - t0;
    }
    return NULL;
}

/* 2: exports and re-opens; 1: exports only (`ipc_bench threads`). */
static int thread_ops = 2;

static void bench_threads(const char *self, int batches)
{
    static const int counts[3] = {1, 8, 32};
    struct peer x = start_exporter(self, 1, OFFSETS);
    CUipcMemHandle *h = read_handles(&x, OFFSETS);
    CUdeviceptr block, held;
    CK(cuMemAlloc(&block, BLOCK));
    CK(cuIpcOpenMemHandle(&held, h[1], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    for (int op = 0; op < thread_ops; op++)
        for (int c = 0; c < 3; c++) {
            int n = counts[c], per = batches / n > 50 ? batches / n : 50;
            pthread_t th[32];
            struct thread_job job[32];
            pthread_barrier_t start;
            pthread_barrier_init(&start, NULL, (unsigned)n);
            double *all = malloc(sizeof *all * (size_t)(per * n));
            for (int i = 0; i < n; i++) {
                job[i] = (struct thread_job){op, per, block, h, all + i * per, &start};
                pthread_create(&th[i], NULL, thread_main, &job[i]);
            }
            for (int i = 0; i < n; i++)
                pthread_join(th[i], NULL);
            char name[64];
            snprintf(name, sizeof name, "%s_threads_%d",
                     op == 0 ? "export_interior" : "reopen_and_close", n);
            report(name, all, per * n);
            pthread_barrier_destroy(&start);
            free(all);
        }
    CK(cuIpcCloseMemHandle(held));
    CK(cuMemFree(block));
    stop_exporter(&x);
    free(h);
}

/* ---- scale: 100,000 sub-allocations of 1,000 blocks ---------------------------- */

static void bench_scale(const char *self)
{
    const int blocks = quick ? 100 : 1000, per = 100, n = blocks * per;
    double t0 = now_us();
    struct peer x = start_exporter(self, blocks, per);
    CUipcMemHandle *h = read_handles(&x, n);
    double exported = now_us() - t0;
    CUdeviceptr *p = malloc(sizeof *p * (size_t)n);
    struct mallinfo2 m0 = mallinfo2();
    t0 = now_us();
    for (int i = 0; i < n; i++)
        CK(cuIpcOpenMemHandle(&p[i], h[i], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    double opened = now_us() - t0;
    struct mallinfo2 m1 = mallinfo2();
    t0 = now_us();
    for (int i = 0; i < n; i++)
        CK(cuIpcCloseMemHandle(p[i]));
    double closed = now_us() - t0;
    stop_exporter(&x);
    printf("RESULT scale_export_total_ms %.3f 0\n", exported / 1e3);
    printf("RESULT scale_open_total_ms %.3f 0\n", opened / 1e3);
    printf("RESULT scale_close_total_ms %.3f 0\n", closed / 1e3);
    printf("RESULT scale_heap_while_open_kib %.1f 0\n",
           ((double)m1.uordblks - (double)m0.uordblks) / 1024);
    printf("INFO scale: %d handles from %d blocks\n", n, blocks);
    free(p);
    free(h);
}

/* ---- compare: the same measurements without and with the library --------------- */

/* One run of /bin/true: its time from spawn to reaped; *faults gets its
 * page faults (minor and major: what mapping a larger library costs). */
static double spawn_true(char **env, long *faults)
{
    pid_t pid;
    struct rusage ru;
    char *argv[] = {"/bin/true", NULL};
    double t0 = now_us();
    if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv, env) != 0)
        exit(2);
    if (wait4(pid, NULL, 0, &ru) != pid)
        exit(2);
    double us = now_us() - t0;
    *faults = ru.ru_minflt + ru.ru_majflt;
    return us;
}

/* Start-up of a process that never uses CUDA: no preload, then each of the
 * libraries, interleaved run by run (the order rotating from one run to
 * the next), in ROUNDS rounds of n runs. t[k * total + r * n + i] gets run
 * i of round r of column k, faults[k] the mean page faults of column k. */
#define ROUNDS 15
static void bench_startup(char **libs, int nlibs, int n, double *t, double *faults)
{
    static char pre[4][4200];
    char *envs[5][2];
    int w = nlibs + 1, total = ROUNDS * n;
    envs[0][0] = NULL;
    for (int k = 0; k < nlibs && k < 4; k++) {
        snprintf(pre[k], sizeof pre[k], "LD_PRELOAD=%s", libs[k]);
        envs[k + 1][0] = pre[k];
        envs[k + 1][1] = NULL;
    }
    double *f = malloc(sizeof *f * (size_t)(w * total));
    long pf;
    if (f == NULL)
        exit(2);
    for (int k = 0; k < w; k++) /* the page cache warm for every column */
        spawn_true(envs[k], &pf);
    for (int j = 0; j < total; j++)
        for (int m = 0; m < w; m++) {
            int k = (m + j) % w;
            t[k * total + j] = spawn_true(envs[k], &pf);
            f[k * total + j] = (double)pf;
        }
    for (int k = 0; k < w; k++) { /* the mean: a run's count depends on where the
                                    * loader put the libraries, one page either way */
        double sum = 0;
        for (int j = 0; j < total; j++)
            sum += f[k * total + j];
        faults[k] = sum / total;
    }
    free(f);
}

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Round r's cost of column k over column base in points of the start-up
 * without preload: the median of the run-by-run differences (runs a
 * millisecond apart, so the machine's drift cancels), over the round's
 * median without preload. */
static double round_points(const double *t, int total, int n, int r, int k, int base,
                           double *scratch)
{
    for (int i = 0; i < n; i++)
        scratch[i] = t[k * total + r * n + i] - t[base * total + r * n + i];
    double d = median_of(scratch, n);
    for (int i = 0; i < n; i++)
        scratch[i] = t[r * n + i];
    return 100 * d / median_of(scratch, n);
}

/* One row per library: its median start-up, and its cost in points of the
 * start-up without preload, over none and over the first library (the
 * empty preload): the median of the rounds and their range. A
 * machine-readable line per library follows the table:
 *   STARTUP NAME MEDIAN_US POINTS_OVER_NONE POINTS_OVER_FIRST MIN MAX FAULTS
 * (MIN and MAX: the range of the rounds' points over the first library;
 * FAULTS: the mean page faults of a run). */
static int startup(char **libs, int nlibs)
{
    /* 500 a round: a round's median difference moved by a point from run
     * to run of the bench with 200 on the H200 (rounds -0.6 to +2.7 around
     * a median of +1.2), about as much as the goal allows. */
    int n = quick ? 40 : 500;
    if (nlibs > 4)
        nlibs = 4;
    int w = nlibs + 1, total = ROUNDS * n;
    double *t = malloc(sizeof *t * (size_t)(w * total)), *scratch = malloc(sizeof *t * (size_t)total);
    double pts[ROUNDS], over[ROUNDS], faults[5];
    bench_startup(libs, nlibs, n, t, faults);
    memcpy(scratch, t, sizeof *t * (size_t)total);
    double none = median_of(scratch, total);
    printf("%d rounds of %d runs of each, interleaved run by run; a round's points are the "
           "median of the run-by-run differences over the round's median without preload; "
           "here the median of the %d rounds and their range.\n\n",
           ROUNDS, n, ROUNDS);
    printf("| preload | start-up | points over none (range) | points over %s (range) | page "
           "faults |\n",
           nlibs > 0 ? (strrchr(libs[0], '/') ? strrchr(libs[0], '/') + 1 : libs[0]) : "-");
    printf("| --- | --- | --- | --- | --- |\n");
    printf("| none | %.1f us | | | %.1f |\n", none, faults[0]);
    char lines[4][200];
    for (int k = 1; k <= nlibs; k++) {
        for (int r = 0; r < ROUNDS; r++) {
            pts[r] = round_points(t, total, n, r, k, 0, scratch);
            over[r] = round_points(t, total, n, r, k, 1, scratch);
        }
        memcpy(scratch, t + k * total, sizeof *t * (size_t)total);
        double us = median_of(scratch, total);
        double p = median_of(pts, ROUNDS), o = median_of(over, ROUNDS);
        const char *name = strrchr(libs[k - 1], '/') ? strrchr(libs[k - 1], '/') + 1 : libs[k - 1];
        if (k == 1)
            printf("| %s | %.1f us | %+.1f (%+.1f to %+.1f) | | %.1f |\n", name, us, p, pts[0],
                   pts[ROUNDS - 1], faults[k]);
        else
            printf("| %s | %.1f us | %+.1f (%+.1f to %+.1f) | %+.1f (%+.1f to %+.1f) | %.1f |\n",
                   name, us, p, pts[0], pts[ROUNDS - 1], o, over[0], over[ROUNDS - 1], faults[k]);
        snprintf(lines[k - 1], sizeof lines[0], "STARTUP %s %.1f %.2f %.2f %.2f %.2f %.2f", name,
                 us, p, o, over[0], over[ROUNDS - 1], faults[k]);
    }
    printf("\n");
    for (int k = 0; k < nlibs; k++)
        printf("%s\n", lines[k]);
    free(t);
    free(scratch);
    return 0;
}

struct row {
    char name[64];
    double med[2], p99[2];
};

static int collect(const char *self, const char *lib, int which, struct row *rows, int max)
{
    int fd[2];
    if (pipe(fd))
        exit(2);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        if (lib != NULL)
            setenv("LD_PRELOAD", lib, 1);
        else
            unsetenv("LD_PRELOAD");
        execl(self, self, "run", quick ? "--quick" : NULL, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    char line[256], name[64];
    double med, p99;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "RESULT %63s %lf %lf", name, &med, &p99) != 3)
            continue;
        int i = 0;
        while (i < n && strcmp(rows[i].name, name) != 0)
            i++;
        if (i == n && n < max)
            snprintf(rows[n++].name, sizeof rows[0].name, "%s", name);
        /* the better of the runs of each side */
        if (rows[i].med[which] == 0 || med < rows[i].med[which]) {
            rows[i].med[which] = med;
            rows[i].p99[which] = p99;
        }
    }
    fclose(f);
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "ipc_bench: the %s run failed\n", lib ? "preloaded" : "native");
        exit(2);
    }
    return n;
}

/* runs of each side in a comparison */
#define COMPARE_RUNS 4

static int compare(const char *self, const char *lib)
{
    struct row rows[64];
    memset(rows, 0, sizeof rows);
    /* Interleaved, who goes first alternating: drift over time hits both
     * sides. On the H200 machine a process's driver calls run in one of two
     * speeds (the slow one some 30 ns longer per export, native or not; it
     * changes from run to run and within one), so each side's best run is
     * the figure: with COMPARE_RUNS runs a side, both sides get the fast one. */
    int n = 0;
    for (int round = 0; round < COMPARE_RUNS; round++) {
        n = collect(self, round % 2 ? lib : NULL, round % 2, rows, 64);
        n = collect(self, round % 2 ? NULL : lib, !(round % 2), rows, 64);
    }
    printf("Each side ran %d times, interleaved; the best median of its runs (and its p99).\n\n",
           COMPARE_RUNS);
    printf("| measure | native median | nvipcfix median | ratio | native p99 | nvipcfix p99 |\n");
    printf("| --- | --- | --- | --- | --- | --- |\n");
    for (int i = 0; i < n; i++) {
        const char *unit = strstr(rows[i].name, "_ms") ? " ms" : strstr(rows[i].name, "_kib") ? " KiB" : " us";
        printf("| %s | %.3f%s | %.3f%s | %.2fx | %.3f | %.3f |\n", rows[i].name, rows[i].med[0],
               unit, rows[i].med[1], unit,
               rows[i].med[0] > 0 ? rows[i].med[1] / rows[i].med[0] : 0.0, rows[i].p99[0],
               rows[i].p99[1]);
    }
    /* the same, machine-readable, for bench.sh's goal table */
    printf("\n");
    for (int i = 0; i < n; i++)
        printf("COMPARE %s %.4f %.4f\n", rows[i].name, rows[i].med[0], rows[i].med[1]);
    return 0;
}

__attribute__((noinline)) static int run_all(const char *self)
{
    int batches = quick ? 500 : 5000;
    init();
    bench_exports(batches);
    bench_opens(self, batches);
    bench_dlsym(batches);
    bench_threads(self, batches);
    bench_scale(self);
    return 0;
}

/* ---- count: N calls of one kind (for callgrind) ----------------------------------- */

static int count(const char *self, const char *op, long n)
{
    init();
    CUdeviceptr p;
    CUipcMemHandle h;
    CK(cuMemAlloc(&p, BLOCK));
    if (strcmp(op, "export_interior") == 0) {
        for (long i = 0; i < n; i++)
            cuIpcGetMemHandle(&h, p + 4096u * (unsigned)(i % OFFSETS) + 1);
        return 0;
    }
    if (strcmp(op, "dlsym") == 0) {
        void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
        for (long i = 0; i < n; i++)
            if (dlsym(libc, "malloc") == NULL)
                return 2;
        return 0;
    }
    struct peer x = start_exporter(self, 1, OFFSETS);
    CUipcMemHandle *hs = read_handles(&x, OFFSETS);
    CUdeviceptr held, q;
    CK(cuIpcOpenMemHandle(&held, hs[1], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    if (strcmp(op, "reopen_close") == 0) {
        for (long i = 0; i < n; i++) {
            CK(cuIpcOpenMemHandle(&q, hs[2 + i % (OFFSETS - 2)], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
            CK(cuIpcCloseMemHandle(q));
        }
    } else if (strcmp(op, "open_close_last") == 0) {
        CK(cuIpcCloseMemHandle(held));
        for (long i = 0; i < n; i++) {
            CK(cuIpcOpenMemHandle(&q, hs[1], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
            CK(cuIpcCloseMemHandle(q));
        }
        CK(cuIpcOpenMemHandle(&held, hs[1], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS));
    } else {
        fprintf(stderr, "ipc_bench: unknown op %s\n", op);
        return 2;
    }
    CK(cuIpcCloseMemHandle(held));
    stop_exporter(&x);
    return 0;
}

int main(int argc, char **argv)
{
    /* argv[0], not /proc/self/exe: under valgrind that is valgrind */
    const char *self = argv[0];
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
    if (argc >= 4 && strcmp(argv[1], "exporter") == 0)
        return exporter(atoi(argv[2]), atoi(argv[3]));
    if (argc >= 3 && strcmp(argv[1], "compare") == 0)
        return compare(self, argv[2]);
    if (argc >= 3 && strcmp(argv[1], "startup") == 0) {
        int nlibs = 0;
        while (2 + nlibs < argc && strcmp(argv[2 + nlibs], "--quick") != 0)
            nlibs++;
        return startup(argv + 2, nlibs);
    }
    if (argc >= 4 && strcmp(argv[1], "count") == 0)
        return count(self, argv[2], atol(argv[3]));
    if (argc >= 2 && strcmp(argv[1], "exports") == 0) {
        init();
        bench_exports(quick ? 500 : 5000);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "scale") == 0) {
        init();
        bench_scale(self);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "threads") == 0) {
        init();
        thread_ops = 1;
        bench_threads(self, quick ? 500 : 5000);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "run") == 0) {
        /* IPC_BENCH_STACK_SHIFT=N: every frame below N bytes further down
         * (where the handle buffers lie against the driver's data) */
        const char *shift = getenv("IPC_BENCH_STACK_SHIFT");
        size_t pad = shift != NULL ? (size_t)strtoul(shift, NULL, 10) % 65536 : 0;
        volatile char *below = alloca(pad + 1);
        below[0] = 0;
        return run_all(self);
    }
    fprintf(stderr, "usage: ipc_bench compare LIB [--quick] | run [--quick] | exports [--quick] | threads [--quick] | scale [--quick] | count OP N\n");
    return 2;
}
