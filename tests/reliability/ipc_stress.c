/* ipc_stress: many threads doing mixed exports, opens and closes, on
 * handles shared by all threads and on each thread's own blocks, against an
 * exporter process. Every open is checked by reading the byte it must point
 * at. At the end every real open of the simulated driver must be matched by
 * one real close, and no mapping may be left.
 *
 *   ipc_stress [--threads N] [--ops N]     (default 32 threads, 100000 ops each)
 *
 * Prints one line; exit status 0 when nothing was lost or wrong. */
#include <cuda.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/test_process.h"

#define BLOCKS 4
#define PER 64
#define BLOCK (4u << 20)
#define HELD 32

static CUcontext ctx;
static CUipcMemHandle handles[BLOCKS * PER];
static long ops = 100000;
static pthread_barrier_t start;

static uint64_t offset_of(int k)
{
    return (uint64_t)k * 65536 + (uint64_t)(k % 3) * 7;
}

static unsigned char pattern(int b, uint64_t off)
{
    return (unsigned char)(b * 31 + (off >> 16) * 7 + off);
}

static int exporter(void)
{
    if (tp_use_primary_context(0, &ctx))
        return 2;
    static unsigned char host[BLOCK];
    for (int b = 0; b < BLOCKS; b++) {
        CUdeviceptr p;
        if (cuMemAlloc(&p, BLOCK))
            return 2;
        for (uint64_t i = 0; i < BLOCK; i++)
            host[i] = pattern(b, i);
        if (cuMemcpyHtoD(p, host, BLOCK))
            return 2;
        for (int k = 0; k < PER; k++) {
            CUipcMemHandle h;
            if (cuIpcGetMemHandle(&h, p + offset_of(k)) || tp_write_full(1, &h, sizeof h))
                return 2;
        }
    }
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}

struct counts {
    long exports, opens, closes, errors, wrong;
};

static void *worker(void *arg)
{
    struct counts *c = arg;
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u;
    CUdeviceptr held[HELD], own;
    int nheld = 0;
    if (cuCtxSetCurrent(ctx) || cuMemAlloc(&own, 1u << 20))
        c->errors++;
    pthread_barrier_wait(&start);
    for (long i = 0; i < ops; i++) {
        int r = rand_r(&seed) % 100;
        if (r < 30) {
            CUipcMemHandle h;
            c->exports++;
            if (cuIpcGetMemHandle(&h, own + (uint64_t)(rand_r(&seed) % 4096) * 255))
                c->errors++;
        } else if (r < 65 || nheld == 0) {
            if (nheld == HELD)
                continue;
            /* half the time one's "own" shared block, else any */
            int b = rand_r(&seed) % 2 ? (int)((uintptr_t)arg % BLOCKS) : rand_r(&seed) % BLOCKS;
            int k = rand_r(&seed) % PER;
            CUdeviceptr p;
            unsigned char byte;
            c->opens++;
            if (cuIpcOpenMemHandle(&p, handles[b * PER + k], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS)) {
                c->errors++;
                continue;
            }
            if (cuMemcpyDtoH(&byte, p, 1))
                c->errors++;
            else if (byte != pattern(b, offset_of(k)))
                c->wrong++;
            held[nheld++] = p;
        } else {
            int j = rand_r(&seed) % nheld;
            c->closes++;
            if (cuIpcCloseMemHandle(held[j]))
                c->errors++;
            held[j] = held[--nheld];
        }
    }
    while (nheld > 0) {
        c->closes++;
        if (cuIpcCloseMemHandle(held[--nheld]))
            c->errors++;
    }
    cuMemFree(own);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 32;
    if (argc == 2 && strcmp(argv[1], "--exporter") == 0)
        return exporter();
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--ops") == 0)
            ops = atol(argv[i + 1]);
    }
    if (threads < 1 || threads > 256 || ops < 1 || tp_use_primary_context(0, &ctx))
        return 2;

    int to, from;
    char *args[] = {argv[0], "--exporter", NULL};
    pid_t pid = tp_spawn(argv[0], args, &to, &from);
    if (tp_read_full(from, handles, sizeof handles))
        return 2;

    pthread_t th[256];
    struct counts c[256];
    memset(c, 0, sizeof c);
    pthread_barrier_init(&start, NULL, (unsigned)threads);
    for (int t = 0; t < threads; t++)
        pthread_create(&th[t], NULL, worker, &c[t]);
    struct counts sum = {0, 0, 0, 0, 0};
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        sum.exports += c[t].exports;
        sum.opens += c[t].opens;
        sum.closes += c[t].closes;
        sum.errors += c[t].errors;
        sum.wrong += c[t].wrong;
    }
    close(to);
    close(from);
    waitpid(pid, NULL, 0);

    long left = -1, real_opens = -1, real_closes = -1;
    void (*counts)(long *, long *, long *) =
        (void (*)(long *, long *, long *))dlsym(RTLD_DEFAULT, "simcuda_counts");
    if (counts != NULL)
        counts(&left, &real_opens, &real_closes);
    int ok = sum.errors == 0 && sum.wrong == 0 && sum.opens == sum.closes &&
             (counts == NULL || (left == 0 && real_opens == real_closes));
    printf("ipc_stress: %d threads x %ld ops: %ld exports, %ld opens, %ld closes, %ld errors, "
           "%ld wrong bytes; driver: %ld real opens, %ld real closes, %ld mappings left -> %s\n",
           threads, ops, sum.exports, sum.opens, sum.closes, sum.errors, sum.wrong, real_opens,
           real_closes, left, ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
}
