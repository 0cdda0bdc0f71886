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
 *   --squatter        the exporter exits; then a process of another user
 *                     (VMM_IPC_SQUATTER_UID, if root) or of this one binds
 *                     its socket's name and answers: nothing may be taken
 *   --stopped         the exporter stops (SIGSTOP) after the export; the
 *                     child opens tensor 0 alone, which must fail at the
 *                     deadline (NVIPCFIX_VMM_TIMEOUT_MS) while legacy IPC
 *                     calls on another thread of it go on unhindered
 *   --hostile         a neighbour (user 65534 if root) holds 70 idle
 *                     connections to the exporter's socket and drips bytes
 *                     on another while the child opens everything
 *                     (with VMM_IPC_LEGACY_THREAD=1 beside legacy IPC calls
 *                     on another thread, as --stopped)
 *   --start-again ROAD  a range of 16 chunk places, chunks at 0, 2, 5, its
 *                     start exported twice after each change: a chunk mapped
 *                     in a gap, one unmapped, one mapped without access,
 *                     access granted, a change in another range; the mapping
 *                     calls reached through ROAD (direct, dlsym-default:
 *                     dlsym(RTLD_DEFAULT), dlsym: on a handle of
 *                     libcuda.so.1, procaddr: cuGetProcAddress). Says whether
 *                     each second export was looked up or walked (attribute
 *                     queries, counted by the simulated driver) and where
 *                     cuMemMap came from; a child maps each ticket at once
 *                     and checks every place: each chunk's bytes, each gap
 *                     unmapped. Exit: bit 1 a ticket wrong, bit 2 a failure
 *   --start-race      3 threads export a range's start while this one maps
 *                     and unmaps chunks in its gaps 200 times; then the
 *                     state left, exported and checked as above
 *   --bench           no check: what a VMM export, first open, re-open and
 *                     last close cost against legacy IPC of cuMemAlloc
 *                     blocks of the same sizes (median of 30, us; open+close
 *                     while held: the mean of 100 in a row; an export
 *                     again also as the mean of 10 in a row; run with
 *                     the preload and NVIPCFIX_VMM=1)
 * Environment: VMM_IPC_IMPORTER_DEVICE (device the child uses, default 0),
 * VMM_IPC_IMPORTER_NO_PRELOAD=1 (child without LD_PRELOAD),
 * VMM_IPC_TICKET_EDIT=ns|boot|secret|guess (the child alters each ticket's
 * PID namespace, boot or secret field, re-sealed; guess: the child keeps
 * nothing of the tickets and makes its own from what any process can read,
 * the exporter's name in /proc/net/unix, with ids 1..6 and random
 * secrets), VMM_IPC_IMPORTER_UID=N (the child, if root, becomes user N
 * first), VMM_IPC_IMPORTER_WRAP="unshare -p -f --mount-proc" (the child
 * starts through that command: another PID or network namespace),
 * VMM_IPC_IMPORTER_ROOM=N and VMM_IPC_EXPORTER_ROOM=N (the open-file limit
 * leaves the child, or the exporter after its exports, room for N more),
 * VMM_IPC_OPEN_FLAGS=N (the child's first open of each handle passes flags
 * N instead of CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS), VMM_IPC_IMPORTER_PRELOAD
 * (--start-again: the child's LD_PRELOAD instead of this one's).
 *
 * Every open that succeeds must map its whole export: the child also reads
 * the last byte of the run of chunks the tensor starts in.
 *
 * Prints "right R/6, failed F, wrong W, stray S, left L" (a tensor is
 * right, wrong: a byte read was not the one exported, its export not mapped
 * whole, or a second open gave another pointer, or failed: a CUDA call on
 * it failed; stray: exporter bytes changed outside the tensors; left:
 * mappings, allocations or ranges left after the last close). Exit status,
 * a bit mask: 0 all six right; bit 1 (exit 1) wrong, stray or left, or a
 * deadline property broken; bit 2 (exit 2) a CUDA call failed or a tensor
 * did not open; 3 both. */
#include <cuda.h>

#include "../common/test_process.h"
#include "../../shim/fd_channel.h"
#include "../../shim/vmm_ticket.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
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
    uint64_t last;    /* the last byte the export covers, from the range's start */
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
    for (uint64_t i = 0; status == 0 && i < n; i++)
        if (buf[i] != pattern(tensors[k].offset + i)) {
            fprintf(stderr, "vmm_ipc: tensor %d byte %llu: 0x%02x, expected 0x%02x\n", k,
                    (unsigned long long)i, buf[i], pattern(tensors[k].offset + i));
            status |= 1;
            break;
        }
    unsigned char end = 0; /* all of the export is mapped, not a prefix */
    if (status == 0 && (cuMemcpyDtoH(&end, t + (rec->last - tensors[k].offset), 1) !=
                            CUDA_SUCCESS ||
                        end != pattern(rec->last))) {
        fprintf(stderr, "vmm_ipc: tensor %d opened, but the end of its export is not mapped\n",
                k);
        status |= 1;
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

/* The exporter's socket as anyone can read it in /proc/net/unix (the
 * abstract name holds its user, PID namespace, pid and nonce). */
static int public_address(uint32_t pid, struct nvipcfix_fd_address *a)
{
    FILE *f = fopen("/proc/net/unix", "r");
    char line[512];
    int found = 0;
    while (f != NULL && !found && fgets(line, sizeof line, f) != NULL) {
        const char *at = strstr(line, "@nvipcfix-vmm-");
        found = at != NULL && sscanf(at, "@nvipcfix-vmm-%u-%u-%u-%x", &a->uid, &a->pid_ns,
                                     &a->pid, &a->nonce) == 4 && a->pid == pid;
    }
    if (f != NULL)
        fclose(f);
    a->in_dir = 0;
    return found ? 0 : -1;
}

/* Re-seals a ticket with its PID namespace, boot or secret field changed,
 * or (guess) makes one from public facts alone: export id k + 1, a random
 * secret. */
static void edit_ticket(CUipcMemHandle *h, const char *what, int k)
{
    struct nvipcfix_vmm_ticket t;
    struct nvipcfix_fd_address a;
    if (what == NULL || nvipcfix_vmm_ticket_decode((unsigned char *)h->reserved, &t) != 0)
        return;
    if (strcmp(what, "ns") == 0)
        t.pid_ns += 1;
    else if (strcmp(what, "boot") == 0)
        t.boot ^= 2;
    else if (strcmp(what, "secret") == 0)
        t.secret[k % 16] ^= 1;
    else if (strcmp(what, "guess") == 0) {
        if (public_address(t.pid, &a) != 0) {
            fprintf(stderr, "vmm_ipc: the exporter's socket is not in /proc/net/unix\n");
            exit(2);
        }
        uint32_t boot = t.boot;
        memset(&t, 0, sizeof t);
        t.pid = a.pid;
        t.uid = a.uid;
        t.pid_ns = a.pid_ns;
        t.nonce = a.nonce;
        t.boot = boot;
        t.export_id = (uint32_t)k + 1;
        if (getrandom(t.secret, sizeof t.secret, 0) != (ssize_t)sizeof t.secret)
            exit(2);
    }
    nvipcfix_vmm_ticket_encode((unsigned char *)h->reserved, &t);
}

/* The open-file limit set so that only `room` more descriptors fit (the
 * free numbers below the highest open one are filled first). */
static void leave_room(int room)
{
    int top = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        if (atoi(e->d_name) > top)
            top = atoi(e->d_name);
    if (d != NULL)
        closedir(d);
    for (int fd; (fd = open("/", O_RDONLY | O_CLOEXEC)) >= 0;)
        if (fd > top) {
            close(fd);
            break;
        }
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    lim.rlim_cur = (rlim_t)top + 1 + (rlim_t)room;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0)
        exit(2);
}

/* ---- legacy IPC on another thread while tickets are opened -------------- */

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

struct legacy_loop {
    CUcontext ctx;
    atomic_int stop;
    int calls, failed;
    double slowest; /* ms */
};

/* Legacy IPC on another thread: export a fresh block, open it (this
 * process's own handle), close, free; each round timed. */
static void *legacy_calls(void *arg)
{
    struct legacy_loop *l = arg;
    cuCtxSetCurrent(l->ctx);
    while (!atomic_load(&l->stop)) {
        CUdeviceptr b, p;
        CUipcMemHandle h;
        double t0 = now_ms();
        int bad = cuMemAlloc(&b, 1 << 20) != CUDA_SUCCESS ||
                  cuIpcGetMemHandle(&h, b + 4096) != CUDA_SUCCESS ||
                  cuIpcOpenMemHandle(&p, h, 1) != CUDA_SUCCESS ||
                  cuIpcCloseMemHandle(p) != CUDA_SUCCESS || cuMemFree(b) != CUDA_SUCCESS;
        double took = now_ms() - t0;
        l->failed += bad;
        l->calls++;
        if (took > l->slowest)
            l->slowest = took;
        usleep(2000);
    }
    return NULL;
}

/* Says whether the legacy calls went on unhindered beside the opens (the
 * slowest under half the deadline), and the opens ended by it. */
static int legacy_verdict(struct legacy_loop *l, pthread_t thread, const char *what,
                          double took, int deadline, int open_ok)
{
    atomic_store(&l->stop, 1);
    pthread_join(thread, NULL);
    int ok = open_ok && l->calls > 0 && l->failed == 0 && l->slowest < deadline / 2.0;
    fprintf(stderr, "vmm_ipc: %s %.0f ms (deadline %d ms); legacy calls on another thread "
                    "meanwhile: %d (%d failed), slowest %.1f ms: %s\n",
            what, took, deadline, l->calls, l->failed, l->slowest, ok ? "OK" : "WRONG");
    return ok;
}

static int importer(int reopen)
{
    struct record recs[NT];
    struct result res[NT] = {{0, 0}};
    if (tp_read_full(0, recs, sizeof recs) != 0)
        return 2;
    int uid = env_int("VMM_IPC_IMPORTER_UID", -1);
    if (uid >= 0 && geteuid() == 0 && setuid((uid_t)uid) != 0)
        return 2;
    struct legacy_loop l = {0};
    pthread_t thread;
    int with_legacy = env_int("VMM_IPC_LEGACY_THREAD", 0);
    double slowest = 0;
    if (tp_use_primary_context(env_int("VMM_IPC_IMPORTER_DEVICE", 0), &l.ctx) != 0 ||
        (with_legacy && pthread_create(&thread, NULL, legacy_calls, &l) != 0))
        return 2;
    if (env_int("VMM_IPC_IMPORTER_ROOM", -1) >= 0)
        leave_room(env_int("VMM_IPC_IMPORTER_ROOM", -1));
    for (int k = 0; k < NT; k++) {
        CUdeviceptr seen = 0;
        edit_ticket(&recs[k].handle, getenv("VMM_IPC_TICKET_EDIT"), k);
        double t0 = now_ms();
        res[k].status = import_one(&recs[k], k, reopen, &seen);
        slowest = now_ms() - t0 > slowest ? now_ms() - t0 : slowest;
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
    int deadline = env_int("NVIPCFIX_VMM_TIMEOUT_MS", 5000);
    if (with_legacy &&
        !legacy_verdict(&l, thread, "the slowest open took", slowest, deadline, slowest < deadline))
        res[0].status |= 1;
    return tp_write_full(1, res, sizeof res) == 0 ? 0 : 2;
}

/* ---- --stopped: the exporter does not answer ------------------------- */

/* Tensor 0's open must fail by the deadline, and legacy calls on another
 * thread must never wait for it. */
static int stopped_importer(void)
{
    struct record recs[NT];
    struct result res[NT] = {{0, 0}};
    struct legacy_loop l = {0};
    pthread_t thread;
    CUdeviceptr p;
    int deadline = env_int("NVIPCFIX_VMM_TIMEOUT_MS", 5000);
    if (tp_read_full(0, recs, sizeof recs) != 0 || tp_use_primary_context(0, &l.ctx) != 0 ||
        pthread_create(&thread, NULL, legacy_calls, &l) != 0)
        return 2;
    double t0 = now_ms();
    CUresult r = cuIpcOpenMemHandle(&p, recs[0].handle, 1);
    double took = now_ms() - t0;
    int ok = legacy_verdict(&l, thread, "open failed after", took, deadline,
                            r != CUDA_SUCCESS && took >= deadline * 0.9);
    for (int k = 0; k < NT; k++)
        res[k].status = 2;
    if (!ok)
        res[0].status |= 1;
    return tp_write_full(1, res, sizeof res) == 0 ? 0 : 2;
}

/* ---- hostile neighbours of the exporter --------------------------------- */

/* The address of the exporter's server, from its ticket. */
static int ticket_address(const CUipcMemHandle *h, struct nvipcfix_fd_address *a)
{
    struct nvipcfix_vmm_ticket t;
    if (nvipcfix_vmm_ticket_decode((const unsigned char *)h->reserved, &t) != 0)
        return -1;
    struct nvipcfix_fd_address mine = {t.uid, t.pid, t.pid_ns, t.nonce,
                                       (t.flags & NVIPCFIX_TICKET_IN_DIR) != 0};
    *a = mine;
    return 0;
}

/* A child, as user uid if root (-1: as this one), that dies with us and
 * runs fn on the exporter's address; returns once fn said it is ready. */
static pid_t neighbour(const CUipcMemHandle *h, int uid,
                       void (*fn)(const struct sockaddr_un *, socklen_t, int ready))
{
    struct nvipcfix_fd_address a;
    struct sockaddr_un sa;
    int ready[2];
    char r;
    if (ticket_address(h, &a) != 0 || pipe(ready) != 0)
        exit(2);
    socklen_t len = nvipcfix_fd_sockaddr(&a, getenv("NVIPCFIX_VMM_SOCKET_DIR"), &sa);
    pid_t child = fork();
    if (child == 0) {
        close(ready[0]);
        if (uid >= 0 && geteuid() == 0 && (setgid((gid_t)uid) != 0 || setuid((uid_t)uid) != 0))
            _exit(2);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        fn(&sa, len, ready[1]);
        _exit(0);
    }
    close(ready[1]);
    if (child < 0 || tp_read_full(ready[0], &r, 1) != 0)
        exit(2);
    close(ready[0]);
    return child;
}

static int dial(const struct sockaddr_un *sa, socklen_t len)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (const struct sockaddr *)sa, len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* 70 idle connections and one that drips a byte every 400 ms. */
static void hold_and_drip(const struct sockaddr_un *sa, socklen_t len, int ready)
{
    for (int i = 0; i < 70; i++)
        dial(sa, len);
    int drip = dial(sa, len);
    tp_write_full(ready, "r", 1);
    for (char b = 0;; b++) {
        usleep(400 * 1000);
        if (drip < 0 || write(drip, &b, 1) != 1)
            drip = dial(sa, len);
    }
}

/* On the exited exporter's name: answers every client as a server would,
 * with a proof made up, then a descriptor of its own memory. */
static void squat(const struct sockaddr_un *sa, socklen_t len, int ready)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (const struct sockaddr *)sa, len) != 0 || listen(fd, 8) != 0)
        _exit(3);
    tp_write_full(ready, "r", 1);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        unsigned char request[32], hello[40] = {0x4d, 0x6e, 0x76, 0x68}; /* "Mnvh", OK */
        if (c < 0)
            continue;
        if (tp_read_full(c, request, sizeof request) == 0 &&
            getrandom(hello + 8, 32, 0) == 32 && tp_write_full(c, hello, sizeof hello) == 0) {
            unsigned char proof[16];
            if (tp_read_full(c, proof, sizeof proof) == 0)
                fprintf(stderr, "vmm_ipc: the squatter got a client's proof\n");
        }
        close(c);
    }
}

/* Exports every tensor (base: the range's start for each, and the offset
 * for the importer to add); returns the number that failed. */
static int export_all(CUdeviceptr va, struct record *recs, int base)
{
    int failed = 0;
    for (int k = 0; k < NT; k++) {
        recs[k].add = base ? tensors[k].offset : 0;
        /* the run of chunks side by side from the tensor's, or all */
        recs[k].last = (base ? 6 : tensors[k].offset / CHUNK <= 2 ? 3 : 6) * CHUNK - 1;
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

/* The time of one of BENCH_ROW exports of p in a row, into *us. */
#define BENCH_ROW 10
static int export_row(double *us, CUdeviceptr p)
{
    CUipcMemHandle h;
    double t0 = now_us();
    for (int j = 0; j < BENCH_ROW; j++)
        if (cuIpcGetMemHandle(&h, p) != CUDA_SUCCESS)
            return -1;
    *us = (now_us() - t0) / BENCH_ROW;
    return 0;
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
    double legacy_row[BENCH_N], vmm_row[BENCH_N];
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
        /* again, BENCH_ROW calls in a row: the work itself, where a single
         * call just after other work also pays for the caches it finds
         * cold */
        if (export_row(&legacy_row[i], blocks[i] + 8192) != 0 ||
            export_row(&vmm_row[i], va + (uint64_t)(2 * i) * CHUNK + 8192) != 0)
            return 2;
    }
    printf("BENCH export of a new block/chunk: legacy %.2f us, VMM %.2f us; again: legacy %.2f "
           "us, VMM %.2f us; again, %d in a row: legacy %.2f us, VMM %.2f us a call (goal for "
           "VMM again: <= 1 us)\n",
           median(legacy), median(vmm), median(legacy_again), median(vmm_again), BENCH_ROW,
           median(legacy_row), median(vmm_row));
    /* a reservation's start (16 GiB, 4 chunks far apart: one walk asks
     * 8192 granules), exported again, and again after a chunk was mapped
     * and unmapped in another reservation (walked, the same export) */
    static const uint64_t far[4] = {0, 100, 4000, 8000};
    CUdeviceptr big;
    CUmemGenericAllocationHandle bh[4], tmp;
    double start_again[BENCH_N], start_row[BENCH_N], after_change[BENCH_N];
    if (cuMemAddressReserve(&big, (uint64_t)8192 * CHUNK, 0, 0, 0) != CUDA_SUCCESS)
        return 2;
    for (int c = 0; c < 4; c++)
        if (create_chunk(big + far[c] * CHUNK, 1, &bh[c]) != CUDA_SUCCESS)
            return 2;
    double t0 = now_us();
    if (cuIpcGetMemHandle(&x, big) != CUDA_SUCCESS)
        return 2;
    double start_first = now_us() - t0;
    for (int i = 0; i < BENCH_N; i++) {
        t0 = now_us();
        CUresult a = cuIpcGetMemHandle(&x, big);
        start_again[i] = now_us() - t0;
        if (a != CUDA_SUCCESS || export_row(&start_row[i], big) != 0 ||
            create_chunk(va + 127 * CHUNK, 1, &tmp) != CUDA_SUCCESS ||
            cuMemUnmap(va + 127 * CHUNK, CHUNK) != CUDA_SUCCESS || cuMemRelease(tmp))
            return 2;
        t0 = now_us();
        a = cuIpcGetMemHandle(&x, big);
        after_change[i] = now_us() - t0;
        if (a != CUDA_SUCCESS)
            return 2;
    }
    printf("BENCH export of a reservation's start (16 GiB, 4 chunks): first %.0f us, again %.2f "
           "us, %d in a row %.2f us a call, after a mapping changed elsewhere %.0f us (goal for "
           "again: <= 1 us)\n",
           start_first, median(start_again), BENCH_ROW, median(start_row), median(after_change));
    for (int c = 0; c < 4; c++)
        if (cuMemUnmap(big + far[c] * CHUNK, CHUNK) != CUDA_SUCCESS || cuMemRelease(bh[c]))
            return 2;
    if (cuMemAddressFree(big, (uint64_t)8192 * CHUNK) != CUDA_SUCCESS)
        return 2;
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

/* ---- --start-again ROAD: a reservation's start exported again ------------ */

typedef CUresult (*map_fn)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                           unsigned long long);
typedef CUresult (*unmap_fn)(CUdeviceptr, size_t);
typedef CUresult (*access_fn)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
typedef CUresult (*range_free_fn)(CUdeviceptr, size_t);
typedef CUresult (*gpa2_fn)(const char *, void **, int, cuuint64_t,
                            CUdriverProcAddressQueryResult *);

/* The mapping calls, reached by one road. */
struct mapping_calls {
    map_fn map;
    unmap_fn unmap;
    access_fn access;
    range_free_fn free;
};

static void *need_fn(void *fn, const char *name)
{
    if (fn == NULL) {
        fprintf(stderr, "vmm_ipc: cannot find %s\n", name);
        exit(2);
    }
    return fn;
}

/* direct: the symbols the program is linked to; dlsym-default:
 * dlsym(RTLD_DEFAULT); dlsym: dlsym on a handle of libcuda.so.1, as
 * PyTorch's driver API does; procaddr: cuGetProcAddress, fetched through
 * itself, as the CUDA runtime does. Says where cuMemMap comes from. */
static void mapping_road(const char *road, struct mapping_calls *c)
{
    static const char *const names[4] = {"cuMemMap", "cuMemUnmap", "cuMemSetAccess",
                                         "cuMemAddressFree"};
    void *fn[4] = {NULL, NULL, NULL, NULL};
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (strcmp(road, "direct") == 0) {
        c->map = cuMemMap;
        c->unmap = cuMemUnmap;
        c->access = cuMemSetAccess;
        c->free = cuMemAddressFree;
        return;
    } else if (strcmp(road, "dlsym-default") == 0 || strcmp(road, "dlsym") == 0) {
        for (int i = 0; i < 4; i++)
            fn[i] = dlsym(strcmp(road, "dlsym") == 0 ? lib : RTLD_DEFAULT, names[i]);
    } else if (strcmp(road, "procaddr") == 0) {
        gpa2_fn boot = (gpa2_fn)need_fn(dlsym(lib, "cuGetProcAddress_v2"), "cuGetProcAddress_v2");
        gpa2_fn gpa = NULL;
        CUdriverProcAddressQueryResult st;
        if (boot("cuGetProcAddress", (void **)&gpa, 12000, 0, &st) != CUDA_SUCCESS || gpa == NULL)
            exit(2);
        for (int i = 0; i < 4; i++)
            if (gpa(names[i], &fn[i], 12000, 0, &st) != CUDA_SUCCESS)
                fn[i] = NULL;
    } else {
        fprintf(stderr, "vmm_ipc: unknown road '%s'\n", road);
        exit(2);
    }
    for (int i = 0; i < 4; i++)
        need_fn(fn[i], names[i]);
    c->map = (map_fn)fn[0];
    c->unmap = (unmap_fn)fn[1];
    c->access = (access_fn)fn[2];
    c->free = (range_free_fn)fn[3];
    Dl_info where;
    const char *from = dladdr(fn[0], &where) != 0 && where.dli_fname != NULL
                           ? strrchr(where.dli_fname, '/')
                           : NULL;
    printf("cuMemMap from %s\n", from != NULL ? from + 1 : "?");
}

#define SA_PLACES 16
#define SA_GAP (-1)   /* must not be mapped in the importer */
#define SA_ANY (-2)   /* not looked at */

/* One ticket for the importer: the byte each place must hold. */
struct probe {
    CUipcMemHandle handle;
    int32_t last;
    int16_t fill[SA_PLACES];
};

static long attribute_queries(void)
{
    long (*count)(void) = (long (*)(void))dlsym(RTLD_DEFAULT, "simcuda_attribute_queries");
    return count != NULL ? count() : -1;
}

/* Opens each ticket, checks the first and last byte of each place that
 * must be mapped and that each gap is not, closes; answers 0 (right), 1
 * (wrong) or 2 (the open failed) for each. */
static int start_again_importer(void)
{
    struct probe p;
    if (tp_use_primary_context(0, NULL) != 0)
        return 2;
    while (tp_read_full(0, &p, sizeof p) == 0 && !p.last) {
        CUdeviceptr base;
        int32_t status = 0;
        CUresult r = cuIpcOpenMemHandle(&base, p.handle, 1);
        if (r != CUDA_SUCCESS) {
            fprintf(stderr, "vmm_ipc: open failed: error %d\n", (int)r);
            status = 2;
        }
        for (int i = 0; status == 0 && i < SA_PLACES; i++) {
            unsigned char b[2] = {0, 0};
            CUdeviceptr at = base + (uint64_t)i * CHUNK;
            if (p.fill[i] == SA_ANY)
                continue;
            int readable = cuMemcpyDtoH(&b[0], at, 1) == CUDA_SUCCESS &&
                           cuMemcpyDtoH(&b[1], at + CHUNK - 1, 1) == CUDA_SUCCESS;
            if (p.fill[i] == SA_GAP ? readable
                                    : !readable || b[0] != p.fill[i] || b[1] != p.fill[i]) {
                fprintf(stderr, "vmm_ipc: place %d: %s, expected %s 0x%02x\n", i,
                        readable ? "mapped" : "not mapped",
                        p.fill[i] == SA_GAP ? "a gap, not" : "the byte", (unsigned)p.fill[i]);
                status = 1;
            }
        }
        if (r == CUDA_SUCCESS && cuIpcCloseMemHandle(base) != CUDA_SUCCESS)
            status |= 2;
        if (tp_write_full(1, &status, sizeof status) != 0)
            return 2;
    }
    return 0;
}

struct start_again {
    struct mapping_calls c;
    CUdeviceptr va;
    CUmemGenericAllocationHandle h[SA_PLACES];
    int16_t fill[SA_PLACES]; /* what each place holds, SA_GAP: nothing mapped */
    int serial;
    int to, from;
    int wrong, failed;
};

/* A new chunk at place i, filled with a byte of its own; access granted
 * only if grant (then filled). */
static int sa_map(struct start_again *s, int i, int grant)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    CUdeviceptr at = s->va + (uint64_t)i * CHUNK;
    if (cuMemCreate(&s->h[i], CHUNK, &prop, 0) != CUDA_SUCCESS ||
        s->c.map(at, CHUNK, 0, s->h[i], 0) != CUDA_SUCCESS)
        return -1;
    return grant ? 0 : 1;
}

static int sa_grant(struct start_again *s, int i)
{
    CUmemAccessDesc a;
    memset(&a, 0, sizeof a);
    a.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CUdeviceptr at = s->va + (uint64_t)i * CHUNK;
    int16_t fill = (int16_t)(0x40 + s->serial++);
    if (s->c.access(at, CHUNK, &a, 1) != CUDA_SUCCESS ||
        cuMemsetD8(at, (unsigned char)fill, CHUNK) != CUDA_SUCCESS)
        return -1;
    s->fill[i] = fill;
    return 0;
}

static int sa_unmap(struct start_again *s, int i)
{
    if (s->c.unmap(s->va + (uint64_t)i * CHUNK, CHUNK) != CUDA_SUCCESS ||
        cuMemRelease(s->h[i]) != CUDA_SUCCESS)
        return -1;
    s->fill[i] = SA_GAP;
    return 0;
}

/* The reservation's start exported: its handle, and how many attribute
 * queries it took. */
static int sa_export(CUdeviceptr va, CUipcMemHandle *h, long *queries)
{
    long q = attribute_queries();
    CUresult r = cuIpcGetMemHandle(h, va);
    *queries = attribute_queries() - q;
    if (r != CUDA_SUCCESS)
        fprintf(stderr, "vmm_ipc: export of the reservation's start: error %d\n", (int)r);
    return r == CUDA_SUCCESS ? 0 : -1;
}

/* The importer maps h and checks every place up to the last one mapped:
 * what is mapped there now, and the gaps. */
static void sa_probe(struct start_again *s, const CUipcMemHandle *h, const char *what)
{
    struct probe p;
    int32_t status = 2;
    int last = 0;
    memset(&p, 0, sizeof p);
    p.handle = *h;
    for (int i = 0; i < SA_PLACES; i++)
        if (s->fill[i] != SA_GAP)
            last = i;
    for (int i = 0; i < SA_PLACES; i++)
        p.fill[i] = i <= last ? s->fill[i] : SA_ANY;
    if (tp_write_full(s->to, &p, sizeof p) != 0 || tp_read_full(s->from, &status, sizeof status))
        status = 2;
    printf("%s: %s\n", what, status == 0 ? "right" : status == 1 ? "WRONG" : "FAILED");
    s->wrong += (status & 1) != 0;
    s->failed += (status & 2) != 0;
}

/* Exports the reservation's start twice: the second a look-up (a few
 * queries) or a walk (one a granule). Says which; the two must be the
 * same ticket. */
static int sa_twice(struct start_again *s, CUipcMemHandle *h, const char *what)
{
    CUipcMemHandle again;
    long walk, q;
    if (sa_export(s->va, h, &walk) != 0 || sa_export(s->va, &again, &q) != 0)
        return -1;
    printf("%s, exported again: %s (%ld attribute queries; the first export %ld)\n", what,
           q < SA_PLACES / 2 ? "looked up" : "walked", q, walk); /* a walk: one a place */
    if (memcmp(h, &again, sizeof again) != 0) {
        printf("%s: exported again, another ticket: WRONG\n", what);
        s->wrong++;
    }
    return 0;
}

static int ticket_id(const CUipcMemHandle *h)
{
    struct nvipcfix_vmm_ticket t;
    return nvipcfix_vmm_ticket_decode((const unsigned char *)h->reserved, &t) == 0
               ? (int)t.export_id
               : -1;
}

/* Ends the importer, unmaps every chunk and frees the reservation (through
 * the road); the verdict. */
static int sa_finish(struct start_again *s, pid_t child, const char *what)
{
    struct probe end;
    int st;
    memset(&end, 0, sizeof end);
    end.last = 1;
    if (tp_write_full(s->to, &end, sizeof end) != 0 || waitpid(child, &st, 0) != child ||
        !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        s->failed++;
    for (int i = 0; i < SA_PLACES; i++)
        if (s->fill[i] != SA_GAP && sa_unmap(s, i) != 0)
            s->failed++;
    if (s->c.free(s->va, SA_PLACES * CHUNK) != CUDA_SUCCESS)
        s->failed++;
    printf("%s: %d wrong, %d failed\n", what, s->wrong, s->failed);
    return (s->wrong > 0 ? 1 : 0) | (s->failed > 0 ? 2 : 0);
}

/* A reservation of 16 places, chunks at 0, 2 and 5, its start exported
 * again and again while chunks are mapped, unmapped and granted access
 * through the road given; each ticket mapped by another process at once
 * and checked place by place. */
static int start_again(char *self, const char *road)
{
    static struct start_again s;
    CUipcMemHandle h1, h, same;
    char *args[] = {self, "--start-again-importer", NULL};
    const char *importer_preload = getenv("VMM_IPC_IMPORTER_PRELOAD");
    mapping_road(road, &s.c);
    if (tp_use_primary_context(0, NULL) != 0 ||
        cuMemAddressReserve(&s.va, SA_PLACES * CHUNK, 0, 0, 0) != CUDA_SUCCESS)
        return 2;
    for (int i = 0; i < SA_PLACES; i++)
        s.fill[i] = SA_GAP;
    for (int i = 0; i < 3; i++)
        if (sa_map(&s, (int[]){0, 2, 5}[i], 1) != 0 || sa_grant(&s, (int[]){0, 2, 5}[i]) != 0)
            return 2;
    if (importer_preload != NULL) /* the importer's own, if another than this one's */
        setenv("LD_PRELOAD", importer_preload, 1);
    pid_t child = tp_spawn(self, args, &s.to, &s.from);
    if (sa_twice(&s, &h1, "without a change") != 0)
        return 2;
    sa_probe(&s, &h1, "chunks 0 2 5");
    /* a chunk mapped in a gap */
    if (sa_map(&s, 3, 1) != 0 || sa_grant(&s, 3) != 0 || sa_twice(&s, &h, "a chunk mapped") != 0)
        return 2;
    if (ticket_id(&h) == ticket_id(&h1)) {
        printf("a chunk mapped: the export of before: WRONG\n");
        s.wrong++;
    }
    sa_probe(&s, &h, "chunks 0 2 3 5");
    /* a chunk unmapped */
    if (sa_unmap(&s, 2) != 0 || sa_twice(&s, &h, "a chunk unmapped") != 0)
        return 2;
    sa_probe(&s, &h, "chunks 0 3 5");
    /* a chunk mapped without access (its range not found yet, as measured:
     * a gap to the walk, but for a driver that finds it: then its bytes,
     * zeros, are exported), then granted */
    if (sa_map(&s, 7, 0) != 1)
        return 2;
    if (getenv("SIMCUDA_RANGE_BEFORE_ACCESS") != NULL)
        s.fill[7] = 0;
    if (sa_twice(&s, &h, "a chunk mapped without access") != 0)
        return 2;
    sa_probe(&s, &h, "chunks 0 3 5, and 7 without access");
    if (sa_grant(&s, 7) != 0 || sa_twice(&s, &h, "access granted") != 0)
        return 2;
    sa_probe(&s, &h, "chunks 0 3 5 7");
    /* a change elsewhere: walked again, the same export */
    CUdeviceptr other;
    CUmemGenericAllocationHandle oh;
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    if (cuMemAddressReserve(&other, CHUNK, 0, 0, 0) != CUDA_SUCCESS ||
        cuMemCreate(&oh, CHUNK, &prop, 0) != CUDA_SUCCESS ||
        s.c.map(other, CHUNK, 0, oh, 0) != CUDA_SUCCESS ||
        s.c.unmap(other, CHUNK) != CUDA_SUCCESS || cuMemRelease(oh) != CUDA_SUCCESS ||
        s.c.free(other, CHUNK) != CUDA_SUCCESS || sa_twice(&s, &same, "a change elsewhere") != 0)
        return 2;
    if (memcmp(&same, &h, sizeof h) != 0) {
        printf("a change elsewhere: another export: WRONG\n");
        s.wrong++;
    }
    sa_probe(&s, &same, "chunks 0 3 5 7, again");
    return sa_finish(&s, child, road);
}

/* ---- --start-race: exports of a reservation's start on threads, while
 * another thread maps and unmaps chunks in its gaps ---------------------- */

#define RACE_OPS 200
#define RACE_EXPORTERS 3

struct race {
    struct start_again s;
    CUcontext ctx;
    atomic_int done;
    atomic_int failed;
    atomic_long exports;
};

static void *race_exports(void *arg)
{
    struct race *r = arg;
    cuCtxSetCurrent(r->ctx);
    while (!atomic_load(&r->done)) {
        CUipcMemHandle h;
        if (cuIpcGetMemHandle(&h, r->s.va) != CUDA_SUCCESS)
            atomic_fetch_add(&r->failed, 1);
        atomic_fetch_add(&r->exports, 1);
    }
    return NULL;
}

static int start_race(char *self)
{
    static struct race r;
    pthread_t t[RACE_EXPORTERS];
    char *args[] = {self, "--start-again-importer", NULL};
    mapping_road("direct", &r.s.c);
    if (tp_use_primary_context(0, &r.ctx) != 0 ||
        cuMemAddressReserve(&r.s.va, SA_PLACES * CHUNK, 0, 0, 0) != CUDA_SUCCESS)
        return 2;
    for (int i = 0; i < SA_PLACES; i++)
        r.s.fill[i] = SA_GAP;
    if (sa_map(&r.s, 0, 1) != 0 || sa_grant(&r.s, 0) != 0)
        return 2;
    for (int i = 0; i < RACE_EXPORTERS; i++)
        if (pthread_create(&t[i], NULL, race_exports, &r) != 0)
            return 2;
    for (int k = 0; k < RACE_OPS; k++) { /* places 3, 7, 11 in turn */
        int i = 3 + 4 * (k % 3);
        if ((r.s.fill[i] == SA_GAP ? sa_map(&r.s, i, 1) || sa_grant(&r.s, i) : sa_unmap(&r.s, i)))
            atomic_fetch_add(&r.failed, 1);
        usleep(200);
    }
    atomic_store(&r.done, 1);
    for (int i = 0; i < RACE_EXPORTERS; i++)
        pthread_join(t[i], NULL);
    printf("%ld exports on %d threads beside %d mapping changes, %d failed\n",
           atomic_load(&r.exports), RACE_EXPORTERS, RACE_OPS, atomic_load(&r.failed));
    /* the state they left: exported again, mapped by another process */
    CUipcMemHandle h;
    pid_t child = tp_spawn(self, args, &r.s.to, &r.s.from);
    if (sa_twice(&r.s, &h, "after the race") != 0)
        return 2;
    sa_probe(&r.s, &h, "the chunks left");
    if (atomic_load(&r.failed) != 0)
        r.s.failed++;
    return sa_finish(&r.s, child, "start-race");
}

/* ---- the exporter's side and the verdict --------------------------------- */

struct run {
    int reopen, self, freed, fd_handles, base;
    int forked;  /* a child exports (and exits, or stops); this process passes tickets on */
    int stopped, squatter, hostile;
    CUdeviceptr va;
    struct record recs[NT];
    struct result res[NT];
};

static unsigned char host[SPAN * CHUNK], now_bytes[SPAN * CHUNK];

/* Makes the chunks, fills them and exports every tensor. */
static int export_side(struct run *r)
{
    CUmemGenericAllocationHandle h[NCHUNKS];
    if (tp_use_primary_context(0, NULL) != 0 ||
        cuMemAddressReserve(&r->va, 32 * CHUNK, 0, 0, 0) != CUDA_SUCCESS)
        return 2;
    for (int c = 0; c < NCHUNKS; c++)
        if (create_chunk(r->va + place[c] * CHUNK, r->fd_handles, &h[c]) != CUDA_SUCCESS) {
            fprintf(stderr, "vmm_ipc: cannot create VMM memory\n");
            return 2;
        }
    for (uint64_t i = 0; i < SPAN * CHUNK; i++)
        host[i] = pattern(i);
    for (int c = 0; c < NCHUNKS; c++)
        if (cuMemcpyHtoD(r->va + place[c] * CHUNK, host + place[c] * CHUNK, CHUNK))
            return 2;
    if (export_all(r->va, r->recs, r->base) != 0) {
        printf("right 0/%d, export failed\n", NT);
        return 2;
    }
    if (r->freed) { /* new memory where chunk 0 was, never to be seen */
        if (cuMemUnmap(r->va, CHUNK) != CUDA_SUCCESS || cuMemRelease(h[0]) != CUDA_SUCCESS ||
            create_chunk(r->va, r->fd_handles, &h[0]) != CUDA_SUCCESS ||
            cuMemsetD8(r->va, 0xEE, CHUNK) != CUDA_SUCCESS)
            return 2;
        for (uint64_t i = 0; i < CHUNK; i++)
            host[i] = 0xEE;
    }
    return 0;
}

/* The child that opens the tickets, started directly or through
 * VMM_IPC_IMPORTER_WRAP (a command such as unshare). */
static pid_t spawn_importer(char *self, const char *how, int *to, int *from)
{
    const char *wrap = getenv("VMM_IPC_IMPORTER_WRAP");
    char *mode = (char *)(strcmp(how, "--stopped") == 0 ? "--stopped-importer" : "--importer");
    char *arg = (char *)(strcmp(how, "--reopen") == 0 ? "--reopen" : "");
    if (getenv("VMM_IPC_IMPORTER_NO_PRELOAD") != NULL)
        unsetenv("LD_PRELOAD");
    if (wrap == NULL || wrap[0] == '\0') {
        char *args[] = {self, mode, arg, NULL};
        return tp_spawn(self, args, to, from);
    }
    const char *runner = getenv("TEST_PROGRAM_RUNNER");
    if (runner != NULL && runner[0] != '\0') {
        fprintf(stderr, "vmm_ipc: VMM_IPC_IMPORTER_WRAP cannot run under an emulator\n");
        exit(2);
    }
    static char script[600];
    snprintf(script, sizeof script, "exec %s \"$0\" \"$1\" \"$2\"", wrap);
    char *args[] = {"sh", "-c", script, self, mode, arg, NULL};
    return tp_spawn("/bin/sh", args, to, from);
}

/* The importer's results, for every tensor. */
static int run_importer(struct run *r, char *self, const char *how)
{
    int to, from, st;
    pid_t child = spawn_importer(self, how, &to, &from);
    if (env_int("VMM_IPC_EXPORTER_ROOM", -1) >= 0) /* the exporter's server, from now on */
        leave_room(env_int("VMM_IPC_EXPORTER_ROOM", -1));
    if (tp_write_full(to, r->recs, sizeof r->recs) != 0 ||
        tp_read_full(from, r->res, sizeof r->res) != 0) {
        fprintf(stderr, "vmm_ipc: the importer did not answer\n");
        return 2;
    }
    waitpid(child, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 2;
}

/* Counts what the importer found; checks every byte of the exporter's
 * memory when it is this process. */
static int verdict(struct run *r)
{
    int right = 0, failed = 0, wrong = 0, left = 0;
    long stray = 0;
    for (int k = 0; k < NT; k++) {
        right += r->res[k].status == 0;
        wrong += (r->res[k].status & 1) != 0;
        failed += (r->res[k].status & 2) != 0;
        left += r->res[k].left;
        if (r->res[k].status == 0 && !r->forked)
            for (uint64_t i = 0; i < tensors[k].len; i++)
                host[tensors[k].offset + i] = (unsigned char)~host[tensors[k].offset + i];
    }
    if (!r->forked) {
        for (int c = 0; c < NCHUNKS; c++)
            if (cuMemcpyDtoH(now_bytes + place[c] * CHUNK, r->va + place[c] * CHUNK, CHUNK))
                return 2;
        for (uint64_t i = 0; i < SPAN * CHUNK; i++)
            stray += mapped(i) && now_bytes[i] != host[i];
    }
    printf("right %d/%d, failed %d, wrong %d, stray %ld, left %d\n", right, NT, failed, wrong,
           stray, left);
    return (wrong > 0 || stray > 0 || left > 0 ? 1 : 0) | (failed > 0 ? 2 : 0);
}

/* A child exports and writes the tickets here, then exits (or stops). */
static int forked_exporter(struct run *r, pid_t *exporter)
{
    int p[2], st;
    if (pipe(p) != 0 || (*exporter = fork()) < 0)
        return 2;
    if (*exporter == 0) {
        close(p[0]);
        int e = export_side(r);
        fflush(stdout); /* its "export failed" line, before _exit */
        if (e != 0 || tp_write_full(p[1], r->recs, sizeof r->recs) != 0)
            _exit(2);
        if (r->stopped)
            raise(SIGSTOP); /* until killed */
        _exit(0);
    }
    close(p[1]);
    if (tp_read_full(p[0], r->recs, sizeof r->recs) != 0)
        return 2;
    close(p[0]);
    if (!r->stopped &&
        (waitpid(*exporter, &st, 0) != *exporter || !WIFEXITED(st) || WEXITSTATUS(st) != 0))
        return 2;
    return 0;
}

static void end_child(pid_t child)
{
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "--importer") == 0)
        return importer(argc > 2 && strcmp(argv[2], "--reopen") == 0);
    if (strcmp(mode, "--stopped-importer") == 0)
        return stopped_importer();
    if (strcmp(mode, "--bench-importer") == 0)
        return bench_importer();
    if (strcmp(mode, "--bench") == 0)
        return bench(argv[0]);
    if (strcmp(mode, "--start-again-importer") == 0)
        return start_again_importer();
    if (strcmp(mode, "--start-again") == 0)
        return start_again(argv[0], argc > 2 ? argv[2] : "direct");
    if (strcmp(mode, "--start-race") == 0)
        return start_race(argv[0]);
    static struct run r;
    r.reopen = strcmp(mode, "--reopen") == 0;
    r.self = strcmp(mode, "--self") == 0;
    r.freed = strcmp(mode, "--freed") == 0;
    r.fd_handles = strcmp(mode, "--no-fd") != 0;
    r.base = strcmp(mode, "--base") == 0;
    r.stopped = strcmp(mode, "--stopped") == 0;
    r.squatter = strcmp(mode, "--squatter") == 0;
    r.hostile = strcmp(mode, "--hostile") == 0;
    r.forked = strcmp(mode, "--exporter-exits") == 0 || r.stopped || r.squatter;
    pid_t exporter = 0, other = 0;
    int e = r.forked ? forked_exporter(&r, &exporter) : export_side(&r);
    if (e != 0)
        return e;
    if (r.squatter) /* on the name of the exporter, which has exited */
        other = neighbour(&r.recs[0].handle, env_int("VMM_IPC_SQUATTER_UID", -1), squat);
    if (r.hostile)
        other = neighbour(&r.recs[0].handle, 65534, hold_and_drip);
    if (r.self)
        for (int k = 0; k < NT; k++) {
            CUdeviceptr seen;
            r.res[k].status = import_one(&r.recs[k], k, 1, &seen);
            r.res[k].left = 0;
        }
    else
        e = run_importer(&r, argv[0], mode);
    end_child(other);
    if (r.stopped)
        end_child(exporter);
    return e != 0 ? e : verdict(&r);
}
