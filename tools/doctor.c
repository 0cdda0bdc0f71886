/* nvipcfix-doctor: what `nvipcfix doctor` runs. Reports the driver, the
 * GPUs, whether this driver leaves bytes 56-63 of an IPC handle free, and
 * runs a two-process self-test on every GPU through the library (the
 * launcher starts it with the library preloaded). It finds the driver with
 * dlopen, so it runs on machines without one and says so.
 *
 * Exit status (documented in nvipcfix(1)):
 *   0  everything works          3  no usable CUDA driver
 *   4  no GPU                    5  a self-test failed
 *   6  the driver uses bytes 56-63 of IPC handles (nvipcfix cannot tag)
 *   7  nvipcfix is not loaded in this process (run it as `nvipcfix doctor`)
 *   8  a library that defines dlsym is loaded before nvipcfix (from
 *      LD_PRELOAD or /etc/ld.so.preload): look-ups it answers bypass nvipcfix
 *   9  a receiver without nvipcfix opens a guarded tag, fresh or after it
 *      opened the block's base handle (this driver does not check the byte
 *      guarded tags change in that order): it would read wrong bytes
 *  10  another copy of nvipcfix older than 0.3.7 is loaded behind the first
 *      (from /etc/ld.so.preload, say): it fixes the calls a second time */
#include <cuda.h>

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BLOCK (4u << 20)
#define OFFSET 12345u

static struct {
    CUresult (*init)(unsigned);
    CUresult (*version)(int *);
    CUresult (*count)(int *);
    CUresult (*get)(CUdevice *, int);
    CUresult (*name)(char *, int, CUdevice);
    CUresult (*retain)(CUcontext *, CUdevice);
    CUresult (*set)(CUcontext);
    CUresult (*alloc)(CUdeviceptr *, size_t);
    CUresult (*free_)(CUdeviceptr);
    CUresult (*htod)(CUdeviceptr, const void *, size_t);
    CUresult (*dtoh)(void *, CUdeviceptr, size_t);
    CUresult (*ipc_get)(CUipcMemHandle *, CUdeviceptr);
    CUresult (*ipc_open)(CUdeviceptr *, CUipcMemHandle, unsigned);
    CUresult (*ipc_close)(CUdeviceptr);
} cu;

static int load_driver(char *why, size_t n)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (lib == NULL) {
        snprintf(why, n, "%s", dlerror());
        return -1;
    }
    struct {
        void **slot;
        const char *name;
    } fns[] = {
        {(void **)&cu.init, "cuInit"},
        {(void **)&cu.version, "cuDriverGetVersion"},
        {(void **)&cu.count, "cuDeviceGetCount"},
        {(void **)&cu.get, "cuDeviceGet"},
        {(void **)&cu.name, "cuDeviceGetName"},
        {(void **)&cu.retain, "cuDevicePrimaryCtxRetain"},
        {(void **)&cu.set, "cuCtxSetCurrent"},
        {(void **)&cu.alloc, "cuMemAlloc_v2"},
        {(void **)&cu.free_, "cuMemFree_v2"},
        {(void **)&cu.htod, "cuMemcpyHtoD_v2"},
        {(void **)&cu.dtoh, "cuMemcpyDtoH_v2"},
        {(void **)&cu.ipc_get, "cuIpcGetMemHandle"},
        {(void **)&cu.ipc_open, "cuIpcOpenMemHandle_v2"},
        {(void **)&cu.ipc_close, "cuIpcCloseMemHandle"},
    };
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        if ((*fns[i].slot = dlsym(lib, fns[i].name)) == NULL) {
            snprintf(why, n, "libcuda.so.1 has no %s", fns[i].name);
            return -1;
        }
    return 0;
}

static int use_device(int ordinal)
{
    CUdevice dev;
    CUcontext ctx;
    return cu.get(&dev, ordinal) || cu.retain(&ctx, dev) || cu.set(ctx);
}

static unsigned char pattern(uint64_t i)
{
    return (unsigned char)(i * 7 + (i >> 9));
}

/* --import ORDINAL [base-first]: the second process of a self-test. Reads
 * a handle on stdin (base-first: the block's base handle before it, which
 * it opens first and holds), opens it, checks 4096 bytes, writes them back
 * complemented. */
static int import_side(int ordinal, int base_first)
{
    CUipcMemHandle h, base;
    CUdeviceptr p, b = 0;
    unsigned char buf[4096];
    if ((base_first && fread(&base, sizeof base, 1, stdin) != 1) ||
        fread(&h, sizeof h, 1, stdin) != 1 || cu.init(0) || use_device(ordinal))
        return 2;
    if (base_first && cu.ipc_open(&b, base, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS))
        return 2;
    int refused = cu.ipc_open(&p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) != CUDA_SUCCESS;
    if (b != 0 && cu.ipc_close(b) != CUDA_SUCCESS)
        return 2;
    if (refused)
        return 3;
    int ok = cu.dtoh(buf, p, sizeof buf) == 0;
    for (size_t i = 0; ok && i < sizeof buf; i++)
        ok = buf[i] == pattern(OFFSET + i);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)~pattern(OFFSET + i);
    ok = cu.htod(p, buf, sizeof buf) == 0 && ok;
    ok = cu.ipc_close(p) == 0 && ok;
    return ok ? 0 : 1;
}

extern char **environ;

static int write_full(int fd, const void *buf, size_t n)
{
    size_t w = 0;
    while (w < n) {
        ssize_t r = write(fd, (const char *)buf + w, n - w);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        w += (size_t)r;
    }
    return 0;
}

/* Runs `self --import ORDINAL` with the handle on its stdin (after the
 * block's base handle, which it opens first, when base is not NULL), with
 * the environment as it is or (bare) without LD_PRELOAD, as a receiver
 * without nvipcfix would run. Returns its exit status (100: killed, -1:
 * the handles could not be sent). */
static int run_importer(const char *self, int ordinal, const CUipcMemHandle *h,
                        const CUipcMemHandle *base, int bare)
{
    static char *env[512];
    int k = 0;
    for (char **e = environ; *e != NULL && k < 511; e++)
        if (!bare || strncmp(*e, "LD_PRELOAD=", 11) != 0)
            env[k++] = *e;
    env[k] = NULL;
    int fd[2];
    if (pipe(fd))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[0], 0);
        close(fd[1]);
        char ord[16];
        snprintf(ord, sizeof ord, "%d", ordinal);
        char *args[] = {(char *)self, "--import", ord, base != NULL ? "base-first" : NULL, NULL};
        execve(self, args, env);
        _exit(127);
    }
    close(fd[0]);
    int bad = (base != NULL && write_full(fd[1], base, sizeof *base)) ||
              write_full(fd[1], h, sizeof *h);
    close(fd[1]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (bad)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

/* A self-test on one GPU: returns 0 when the importer read and wrote the
 * right bytes at an interior pointer. *tail_used is set when the driver's
 * own handle of the block has non-zero bytes 56-63; bare_code[0] to the
 * exit status of an importer without nvipcfix given the same handle,
 * bare_code[1] to that of one that opened the block's base handle first
 * (3: it could not open it, as guarded tags intend; 1: it read the block
 * base). */
static int self_test(const char *self, int ordinal, int *tail_used, int bare_code[2], char *why,
                     size_t n)
{
    static unsigned char host[BLOCK];
    CUdeviceptr base;
    CUipcMemHandle whole, inner;
    bare_code[0] = bare_code[1] = -1;
    if (use_device(ordinal) || cu.alloc(&base, BLOCK)) {
        snprintf(why, n, "cannot allocate on the GPU");
        return -1;
    }
    for (uint64_t i = 0; i < BLOCK; i++)
        host[i] = pattern(i);
    if (cu.htod(base, host, BLOCK) || cu.ipc_get(&whole, base) ||
        cu.ipc_get(&inner, base + OFFSET)) {
        snprintf(why, n, "cudaIpcGetMemHandle failed (is this memory IPC-capable?)");
        cu.free_(base);
        return -1;
    }
    static const char zero[8];
    *tail_used = memcmp(whole.reserved + 56, zero, 8) != 0;

    int code = run_importer(self, ordinal, &inner, NULL, 0);
    int written = cu.dtoh(host, base + OFFSET, 4096) == 0;
    for (size_t i = 0; written && i < 4096; i++)
        written = host[i] == (unsigned char)~pattern(OFFSET + i);
    if (code == 0 && written) {
        bare_code[0] = run_importer(self, ordinal, &inner, NULL, 1);
        bare_code[1] = run_importer(self, ordinal, &inner, &whole, 1);
    }
    cu.free_(base);
    if (code != 0 || !written) {
        snprintf(why, n, "%s",
                 code == 3   ? "the importer could not open the handle"
                 : code == 1 ? "the importer read wrong bytes (the offset bug is not fixed)"
                 : !written  ? "the importer's writes did not land at the exported pointer"
                             : "the importer process failed");
        return -1;
    }
    return 0;
}

/* The loaded objects in search order (the program, then what LD_PRELOAD
 * and /etc/ld.so.preload put first, then the rest): those before nvipcfix
 * that define dlsym themselves. Writes their names, one per line, into
 * out; returns how many. */
struct order {
    const char *nvipcfix; /* its file */
    int seen_nvipcfix;
    int count;
    char *out;
    size_t n;
};

static int visit(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct order *o = arg;
    const char *name = info->dlpi_name;
    if (o->seen_nvipcfix || name == NULL || name[0] == '\0')
        return 0; /* the program itself, or the vDSO */
    if (strcmp(name, o->nvipcfix) == 0) {
        o->seen_nvipcfix = 1;
        return 0;
    }
    void *h = dlopen(name, RTLD_LAZY | RTLD_NOLOAD);
    void *fn = h != NULL ? dlsym(h, "dlsym") : NULL;
    Dl_info where;
    if (fn != NULL && dladdr(fn, &where) && where.dli_fbase == (void *)info->dlpi_addr) {
        size_t used = strlen(o->out);
        snprintf(o->out + used, o->n - used, "%s\n", name);
        o->count++;
    }
    if (h != NULL)
        dlclose(h);
    return 0;
}

/* Whether a loaded object is a copy of the library, by its file name. */
static int named_nvipcfix(const char *name)
{
    const char *base = name ? strrchr(name, '/') : NULL;
    base = base != NULL ? base + 1 : name;
    return base != NULL && strncmp(base, "libnvipcfix", 11) == 0;
}

static int find_nvipcfix(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    const char *name = info->dlpi_name;
    if (named_nvipcfix(name)) {
        snprintf(arg, 1024, "%s", name);
        return 1;
    }
    return 0;
}

/* The release of the library at path: the "nvipcfix version X" string it
 * carries (preload/library.c), or "unknown" for a build without it. */
static void library_version(const char *path, char *out, size_t n)
{
    static const char mark[] = "nvipcfix version ";
    snprintf(out, n, "unknown");
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return;
    static char file[4 << 20];
    size_t len = fread(file, 1, sizeof file - 1, f);
    fclose(f);
    file[len] = '\0';
    const char *at = memmem(file, len, mark, sizeof mark - 1);
    if (at != NULL)
        snprintf(out, n, "%s", at + sizeof mark - 1);
}

/* The loaded library's path and release, and whether it is this doctor's. */
static void print_library(int loaded, const char *path)
{
    if (!loaded) {
        printf("nvipcfix:     not loaded\n");
        return;
    }
    char version[64];
    library_version(path, version, sizeof version);
    printf("nvipcfix:     %s (version %s", path, version);
    if (strcmp(version, NVIPCFIX_VERSION) != 0)
        printf("; this doctor is version " NVIPCFIX_VERSION);
    printf(")\n");
}

/* The copies of the library loaded after the first (told by their file
 * names, as the launcher tells them), each with its release; older: those
 * before 0.3.7, which fix the calls the first copy passes on a second time
 * (VMM memory then reads wrong bytes). */
struct copies {
    const char *first;
    int count, older;
    char out[2048];
};

static int release_before_0_3_7(const char *version)
{
    int major, minor, patch;
    if (sscanf(version, "%d.%d.%d", &major, &minor, &patch) != 3)
        return 1; /* a build without its release: older than the mark's */
    return major == 0 && (minor < 3 || (minor == 3 && patch < 7));
}

static int visit_copies(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct copies *c = arg;
    const char *name = info->dlpi_name;
    if (!named_nvipcfix(name) || strcmp(name, c->first) == 0)
        return 0;
    char version[64];
    library_version(name, version, sizeof version);
    int older = release_before_0_3_7(version);
    size_t used = strlen(c->out);
    snprintf(c->out + used, sizeof c->out - used, "              %s (version %s)%s\n", name,
             version, older ? ": OLDER THAN 0.3.7, it fixes the calls again" : "");
    c->count++;
    c->older += older;
    return 0;
}

static int dlsym_before(const char *nvipcfix, char *out, size_t n)
{
    struct order o = {nvipcfix, 0, 0, out, n};
    out[0] = '\0';
    dl_iterate_phdr(visit, &o);
    return o.count;
}

int main(int argc, char **argv)
{
    char why[512] = "";
    const char *self = argv[0];
    if (load_driver(why, sizeof why) != 0) {
        if (argc >= 3 && strcmp(argv[1], "--import") == 0)
            return 2;
        printf("driver:       not found (%s)\n", why);
        printf("\nNo usable CUDA driver on this machine. nvipcfix only matters where GPU\n"
               "programs run: install the NVIDIA driver, or in a container pass the GPU in\n"
               "(e.g. docker run --gpus all), then run nvipcfix doctor again.\n");
        return 3;
    }
    if (argc >= 3 && strcmp(argv[1], "--import") == 0)
        return import_side(atoi(argv[2]), argc == 4 && strcmp(argv[3], "base-first") == 0);

    int version = 0, ngpu = 0;
    CUresult r = cu.init(0);
    cu.version(&version);
    printf("driver:       CUDA %d.%d driver API (libcuda.so.1)\n", version / 1000,
           version % 1000 / 10);
    if (r == CUDA_SUCCESS)
        cu.count(&ngpu);
    /* The library by its file name among the loaded objects (another
     * interposer may define the same entry points). */
    char nvipcfix[1024] = "";
    int loaded = dl_iterate_phdr(find_nvipcfix, nvipcfix) == 1;
    print_library(loaded, nvipcfix);
    if (ngpu == 0) {
        printf("GPUs:         none (cuInit: error %d)\n", (int)r);
        printf("\nThe driver is installed but sees no GPU. Check nvidia-smi; in a container,\n"
               "pass the GPUs in. Nothing for nvipcfix to do here.\n");
        return 4;
    }
    printf("GPUs:         %d\n", ngpu);
    if (!loaded) {
        printf("\nRun this as `nvipcfix doctor`, which loads the library first.\n");
        return 7;
    }
    char before[2048];
    int shadowed = dlsym_before(nvipcfix, before, sizeof before);
    if (shadowed)
        printf("preload order: WRONG: loaded before nvipcfix, defining dlsym:\n%s", before);
    else
        printf("preload order: ok (no library loaded before nvipcfix defines dlsym)\n");
    struct copies copies = {nvipcfix, 0, 0, ""};
    dl_iterate_phdr(visit_copies, &copies);
    if (copies.count > 0)
        printf("other copies: %d, behind the one above, which fixes the calls:\n%s", copies.count,
               copies.out);
    int failed = 0, tail = 0, unguarded = 0;
    const char *tag = getenv("NVIPCFIX_TAG");
    int plain = tag != NULL && strcmp(tag, "plain") == 0;
    for (int g = 0; g < ngpu; g++) {
        char name[128] = "?";
        CUdevice dev;
        int tail_used = 0, bare[2] = {-1, -1};
        if (cu.get(&dev, g) == 0)
            cu.name(name, sizeof name, dev);
        int rc = self_test(self, g, &tail_used, bare, why, sizeof why);
        tail |= tail_used;
        printf("GPU %d:        %s: handle bytes 56-63 %s; self-test (export at +%u, open in "
               "another process): %s%s%s\n",
               g, name, tail_used ? "USED by the driver" : "free", OFFSET,
               rc == 0 ? "passed" : "FAILED", rc == 0 ? "" : ": ", rc == 0 ? "" : why);
        failed |= rc != 0;
        for (int order = 0; rc == 0 && order < 2; order++)
            printf("              a receiver without nvipcfix, same handle%s: %s\n",
                   order ? ", after the block's base handle" : "",
                   bare[order] == 3   ? "refused by the driver (a clean error, as intended)"
                   : bare[order] == 1 ? "OPENS THE BLOCK BASE and reads the wrong bytes, silently"
                                      : "its test failed");
        unguarded |= rc == 0 && !tail_used && (bare[0] != 3 || bare[1] != 3);
    }
    if (shadowed) {
        printf("\nA library above defines dlsym and comes before nvipcfix in LD_PRELOAD or\n"
               "/etc/ld.so.preload: the CUDA look-ups it answers itself never reach nvipcfix,\n"
               "so their IPC is not fixed. Put libnvipcfix.so first, before GPU-sharing\n"
               "layers such as HAMi-core or vgpu-manager (their quotas still hold: nvipcfix\n"
               "passes every look-up on to the next dlsym). See docs/compatibility.md.\n");
        return 8;
    }
    if (copies.older > 0) {
        printf("\nA copy of nvipcfix older than 0.3.7 is loaded behind the first (listed\n"
               "above; /etc/ld.so.preload, say): it fixes the calls the first passes on a\n"
               "second time, and VMM memory (NVIPCFIX_VMM=1) reads wrong bytes through it.\n"
               "Update that copy, or load one copy only.\n");
        return 10;
    }
    if (tail) {
        printf("\nThis driver writes bytes 56-63 of IPC handles, where nvipcfix carries the\n"
               "offset: nvipcfix exports natively here (and says so). Please report the\n"
               "driver version above.\n");
        return 6;
    }
    if (unguarded && !plain) {
        printf("\nThis driver opens a guarded tag without nvipcfix in the order shown above:\n"
               "a receiver that runs without nvipcfix would read the wrong bytes, silently.\n"
               "Run every receiver with nvipcfix (the launcher, or LD_PRELOAD in its\n"
               "environment too), and please report the driver version above.\n");
        return 9;
    }
    if (unguarded && plain)
        printf("\nNVIPCFIX_TAG=plain: a receiver without nvipcfix reads the block base\n"
               "silently. Leave NVIPCFIX_TAG unset (guarded tags) unless every receiver\n"
               "runs an nvipcfix older than guarded tags.\n");
    if (failed) {
        printf("\nA self-test failed. Run it again with NVIPCFIX_LOG=debug to see each call,\n"
               "and see docs/troubleshooting.md.\n");
        return 5;
    }
    printf("\nAll good. Run your program as:  nvipcfix -- COMMAND ...\n"
           "To see whether it exports interior pointers at all:  nvipcfix --mode audit "
           "--log info -- COMMAND ...\n");
    return 0;
}
