/* handle_bytes: which bytes of a legacy IPC handle does the driver check,
 * and in which order of opens?
 *
 * The exporter allocates blocks of several sizes (eight 4 KiB blocks the
 * driver packs into one chunk, two of 2 MiB, two of 20 MiB, two of 1 GiB),
 * fills the first 4 KiB of each with a pattern of its own (a seed) and
 * takes their handles. The targets are the first packed block whose offset
 * in its chunk (bytes 28-31) is not zero, and the first block of each
 * other size. For every target, every byte 0-63 and each of two changes
 * (xor 0x01, xor 0x80), a fresh importer process (one per case, so that a
 * sticky error cannot mask the next) opens the changed handle in one of
 * four orders:
 *   a  fresh importer: the changed handle alone
 *   b  the block's untouched (base) handle first, then the changed one
 *   c  the changed handle (tail A), the base handle, the changed handle
 *      again with another tail (B): "refused once, then base, then another
 *      guarded handle of the block"
 *   e  the base handles of every OTHER block of the exporter first, then
 *      the changed one: does a changed handle ever open another live block?
 * then reads 4096 bytes, synchronises and closes everything. The same is
 * done for the changes combined with byte 27 xor 0x80 (the old guard) on
 * the bytes a fresh open ignores, to find a change that a re-open keys on.
 * Tail A sets byte 60 to 0x5a, tail B byte 61 to 0xa5 (bytes 56-63 are
 * ignored by the driver).
 *
 * HB_BYTES, HB_TARGETS and HB_COMBO restrict the cases (see make_jobs).
 * Output: one line per case, then a table per target, change and order of
 * the byte ranges with one verdict. Importers run HB_JOBS at a time
 * (default 12); HB_DEADLINE (seconds, default 420) stops starting new ones.
 * Runs on a real GPU (driver API, linked with -lcuda). */
#include <cuda.h>

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NBLOCKS 14
#define NPACKED 8
#define READ_LEN 4096
#define MAX_PRE (NBLOCKS + 1)
#define NTARGETS 4

static const size_t block_sizes[NBLOCKS] = {
    4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096,
    2u << 20, 2u << 20, 20u << 20, 20u << 20, (size_t)1 << 30, (size_t)1 << 30,
};
static const char *const target_names[NTARGETS] = {"2 MiB", "4 KiB packed", "1 GiB", "20 MiB"};

static unsigned char pattern(int seed, uint64_t i)
{
    return (unsigned char)((i * 131 + (i >> 8)) ^ (uint64_t)(seed * 29 + 7));
}

static int context(void)
{
    CUdevice dev;
    CUcontext ctx;
    return cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) ||
           cuCtxSetCurrent(ctx);
}

static int full_io(int fd, void *buf, size_t n, int writing)
{
    for (size_t done = 0; done < n;) {
        ssize_t r = writing ? write(fd, (char *)buf + done, n - done)
                            : read(fd, (char *)buf + done, n - done);
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

struct request {
    int npre;
    CUipcMemHandle pre[MAX_PRE];
    CUipcMemHandle target;
};

struct result {
    int valid;
    int pre_rc[MAX_PRE];
    int open_rc;
    int hit;  /* index of the pre-opened handle whose pointer the target got, -1 none */
    int read_rc;
    int seed; /* whose pattern was read: 1..NBLOCKS, 0 none */
    int sync_rc;
    int close_rc;
};

static int seed_of(const unsigned char *buf)
{
    for (int s = 1; s <= NBLOCKS; s++) {
        int same = 1;
        for (size_t i = 0; i < READ_LEN && same; i++)
            same = buf[i] == pattern(s, i);
        if (same)
            return s;
    }
    return 0;
}

static int importer(void)
{
    struct request q;
    struct result r;
    memset(&r, 0, sizeof r);
    r.open_rc = r.read_rc = r.sync_rc = r.close_rc = -1;
    r.hit = -1;
    alarm(60);
    if (full_io(0, &q, sizeof q, 0) || context())
        return 2;
    CUdeviceptr pre[MAX_PRE] = {0}, p = 0;
    for (int i = 0; i < q.npre; i++)
        r.pre_rc[i] = cuIpcOpenMemHandle(&pre[i], q.pre[i], CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
    r.open_rc = cuIpcOpenMemHandle(&p, q.target, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
    if (r.open_rc == 0) {
        static unsigned char buf[READ_LEN];
        for (int i = 0; i < q.npre; i++)
            if (r.pre_rc[i] == 0 && pre[i] == p)
                r.hit = i;
        r.read_rc = cuMemcpyDtoH(buf, p, sizeof buf);
        r.seed = r.read_rc == 0 ? seed_of(buf) : 0;
        r.sync_rc = cuCtxSynchronize();
        r.close_rc = cuIpcCloseMemHandle(p);
    }
    for (int i = 0; i < q.npre; i++)
        if (r.pre_rc[i] == 0)
            cuIpcCloseMemHandle(pre[i]);
    r.valid = 1;
    return full_io(1, &r, sizeof r, 1) ? 2 : 0;
}

/* ---- the exporter: a pool of importer processes ---- */

enum order { ORDER_A, ORDER_B, ORDER_C, ORDER_E, NORDERS };
static const char order_names[NORDERS] = {'a', 'b', 'c', 'e'};

struct job {
    int target, combo, change, byte, order;
    pid_t pid;
    int from_fd;
    struct result res;
};

static CUipcMemHandle handles[NBLOCKS];
static int targets[NTARGETS];
static const unsigned char changes[2] = {0x01, 0x80};

/* Bytes a fresh open ignored on the H100 (docs/handle-format.md): the
 * combinations with the old guard are measured on these. */
static int combo_byte(int b)
{
    return b < 24 || (b >= 37 && b < 48);
}

static CUipcMemHandle changed(const struct job *j, int tail)
{
    CUipcMemHandle m = handles[targets[j->target]];
    m.reserved[j->byte] ^= (char)changes[j->change];
    if (j->combo)
        m.reserved[27] ^= (char)0x80;
    if (tail && j->byte < 56)
        m.reserved[tail] ^= (char)(tail == 60 ? 0x5a : 0xa5);
    return m;
}

static void fill_request(const struct job *j, struct request *q)
{
    memset(q, 0, sizeof *q);
    int t = targets[j->target];
    switch (j->order) {
    case ORDER_A:
        q->target = changed(j, 0);
        break;
    case ORDER_B:
        q->npre = 1;
        q->pre[0] = handles[t];
        q->target = changed(j, 0);
        break;
    case ORDER_C:
        q->npre = 2;
        q->pre[0] = changed(j, 60);
        q->pre[1] = handles[t];
        q->target = changed(j, 61);
        break;
    default:
        for (int b = 0; b < NBLOCKS; b++)
            if (b != t)
                q->pre[q->npre++] = handles[b];
        q->target = changed(j, 0);
        break;
    }
}

static int start_job(const char *self, struct job *j)
{
    int to[2], from[2];
    struct request q;
    fill_request(j, &q);
    if (pipe(to) || pipe(from))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[0]);
        close(to[1]);
        close(from[0]);
        close(from[1]);
        execl(self, self, "--import", (char *)NULL);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    j->pid = pid;
    j->from_fd = from[0];
    int bad = full_io(to[1], &q, sizeof q, 1);
    close(to[1]);
    return bad ? -1 : 0;
}

/* The target's own seed is its block index + 1. */
static void verdict(const struct job *j, char *buf, size_t n)
{
    const struct result *r = &j->res;
    int own = targets[j->target] + 1;
    char pre[64] = "";
    if (j->order == ORDER_C)
        snprintf(pre, sizeof pre, "first %d, base %d; ", r->pre_rc[0], r->pre_rc[1]);
    if (!r->valid)
        snprintf(buf, n, "%sno result (importer died or hung)", pre);
    else if (r->open_rc != 0)
        snprintf(buf, n, "%srefused %d", pre, r->open_rc);
    else if (r->read_rc != 0)
        snprintf(buf, n, "%sopens, read fails %d (sync %d)", pre, r->read_rc, r->sync_rc);
    else
        snprintf(buf, n, "%sopens %s, reads %s%s", pre,
                 r->hit < 0 ? "a new mapping" : "the SAME mapping",
                 r->seed == own ? "the block" : r->seed == 0 ? "UNKNOWN bytes" : "ANOTHER block",
                 r->sync_rc ? " (sync error)" : "");
}

#define NJOBS (NTARGETS * 2 * 2 * 64 * NORDERS)
static struct job jobs[NJOBS];
static char verdicts[NJOBS][128];

/* HB_BYTES="24-27,40-55" and HB_TARGETS="1,2" (indices into target_names)
 * restrict the cases; HB_COMBO=0 leaves out the combinations. */
static int listed(const char *list, int v)
{
    if (list == NULL)
        return 1;
    for (const char *p = list; *p != '\0';) {
        char *end;
        long lo = strtol(p, &end, 10), hi = lo;
        if (*end == '-')
            hi = strtol(end + 1, &end, 10);
        if (v >= lo && v <= hi)
            return 1;
        p = *end == ',' ? end + 1 : end;
        if (*end != ',' )
            break;
    }
    return 0;
}

static int make_jobs(void)
{
    int n = 0;
    const char *bytes = getenv("HB_BYTES"), *tlist = getenv("HB_TARGETS"), *co = getenv("HB_COMBO");
    for (int t = 0; t < NTARGETS; t++)
        for (int combo = 0; combo < 2; combo++)
            for (int c = 0; c < 2; c++)
                for (int b = 0; b < 64; b++)
                    for (int o = 0; o < NORDERS; o++) {
                        if ((combo && (!combo_byte(b) || (co && atoi(co) == 0))) ||
                            !listed(bytes, b) || !listed(tlist, t))
                            continue;
                        jobs[n] = (struct job){t, combo, c, b, o, 0, -1, {0}};
                        n++;
                    }
    return n;
}

static void print_job(struct job *j, char *v)
{
    verdict(j, v, 128);
    printf("CASE %-12s %s%02d^%02x order %c: %s\n", target_names[j->target],
           j->combo ? "27^80+" : "", j->byte, changes[j->change], order_names[j->order], v);
}

static void run_pool(const char *self, int njobs, int width, int deadline)
{
    time_t start = time(NULL);
    int next = 0, running = 0;
    while (next < njobs || running > 0) {
        while (running < width && next < njobs && time(NULL) - start < deadline) {
            if (start_job(self, &jobs[next]) == 0)
                running++;
            next++;
        }
        if (running == 0)
            break;
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        for (int i = 0; i < next; i++) {
            if (jobs[i].pid != pid || jobs[i].from_fd < 0)
                continue;
            if (full_io(jobs[i].from_fd, &jobs[i].res, sizeof jobs[i].res, 0))
                jobs[i].res.valid = 0;
            close(jobs[i].from_fd);
            jobs[i].from_fd = -1;
            print_job(&jobs[i], verdicts[i]);
            running--;
        }
    }
    for (int i = next; i < njobs; i++)
        snprintf(verdicts[i], 128, "not run (deadline)");
    printf("ran %d of %d cases in %ld s\n", next, njobs, (long)(time(NULL) - start));
}

/* Per target, combination, change and order: ranges of bytes with one verdict. */
static void print_group(int t, int combo, int c, int o, int njobs)
{
    printf("TABLE %s, %sxor 0x%02x, order %c\n", target_names[t],
           combo ? "byte 27^0x80 and " : "", changes[c], order_names[o]);
    int first = -1, last = -1;
    const char *prev = NULL;
    for (int i = 0; i <= njobs; i++) {
        int in = i < njobs && jobs[i].target == t && jobs[i].combo == combo &&
                 jobs[i].change == c && jobs[i].order == o;
        if (i < njobs && !in)
            continue;
        if (prev != NULL && (i == njobs || strcmp(verdicts[i], prev) != 0 ||
                             jobs[i].byte != last + 1)) {
            printf("  bytes %2d-%2d: %s\n", first, last, prev);
            prev = NULL;
        }
        if (i == njobs)
            break;
        if (prev == NULL) {
            first = jobs[i].byte;
            prev = verdicts[i];
        }
        last = jobs[i].byte;
    }
}

static void print_tables(int njobs)
{
    for (int t = 0; t < NTARGETS; t++)
        for (int combo = 0; combo < 2; combo++)
            for (int c = 0; c < 2; c++)
                for (int o = 0; o < NORDERS; o++)
                    print_group(t, combo, c, o, njobs);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--import") == 0)
        return importer();
    signal(SIGPIPE, SIG_IGN);
    CUdeviceptr ptr[NBLOCKS];
    static unsigned char host[READ_LEN];
    if (context())
        return 2;
    for (int b = 0; b < NBLOCKS; b++) {
        if (cuMemAlloc(&ptr[b], block_sizes[b]))
            return 2;
        for (size_t i = 0; i < READ_LEN; i++)
            host[i] = pattern(b + 1, i);
        if (cuMemcpyHtoD(ptr[b], host, READ_LEN) || cuIpcGetMemHandle(&handles[b], ptr[b]))
            return 2;
    }
    targets[0] = NPACKED;
    targets[1] = 1;
    for (int b = 0; b < NPACKED; b++) {
        uint32_t off;
        memcpy(&off, handles[b].reserved + 28, 4);
        if (off != 0) {
            targets[1] = b;
            break;
        }
    }
    targets[2] = NPACKED + 4;
    targets[3] = NPACKED + 2;
    int version = 0;
    cuDriverGetVersion(&version);
    printf("driver API %d\n", version);
    for (int b = 0; b < NBLOCKS; b++) {
        printf("block %2d size %10zu ptr 0x%llx handle:", b, block_sizes[b],
               (unsigned long long)ptr[b]);
        for (int i = 0; i < 64; i++)
            printf("%s%02x", i % 8 ? "" : " ", (unsigned char)handles[b].reserved[i]);
        printf("\n");
    }
    for (int t = 0; t < NTARGETS; t++)
        printf("target %s: block %d\n", target_names[t], targets[t]);
    fflush(stdout);
    const char *w = getenv("HB_JOBS"), *d = getenv("HB_DEADLINE");
    int njobs = make_jobs();
    run_pool(argv[0], njobs, w ? atoi(w) : 12, d ? atoi(d) : 420);
    print_tables(njobs);
    return 0;
}
