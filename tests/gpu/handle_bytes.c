/* handle_bytes: which bytes of a legacy IPC handle does the driver check?
 *
 * The exporter allocates a 64 MiB block, fills it with a pattern and takes
 * the block's handle. Then, for every byte 0-63 and each of two changes
 * (xor 0x01, xor 0x80), a fresh importer process (one per byte and change,
 * so that a sticky error in one cannot mask the next) opens the changed
 * handle, reads 4096 bytes, synchronises and closes, and reports each
 * step's result. Prints one line per byte and change, then a summary.
 * Runs on a real GPU (driver API, linked with -lcuda). */
#include <cuda.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define BLOCK (64u << 20)

static unsigned char pattern(uint64_t i)
{
    return (unsigned char)(i * 131 + (i >> 8));
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

/* The importer: result codes open, read, sync, close and whether the bytes
 * were the block's. */
static int importer(void)
{
    CUipcMemHandle h;
    int res[5] = {-1, -1, -1, -1, 0};
    if (full_io(0, &h, sizeof h, 0) || context())
        return 2;
    CUdeviceptr p = 0;
    res[0] = cuIpcOpenMemHandle(&p, h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
    if (res[0] == 0) {
        static unsigned char buf[4096];
        res[1] = cuMemcpyDtoH(buf, p, sizeof buf);
        res[4] = 1;
        for (size_t i = 0; i < sizeof buf; i++)
            res[4] &= buf[i] == pattern(i);
        res[2] = cuCtxSynchronize();
        res[3] = cuIpcCloseMemHandle(p);
    }
    return full_io(1, res, sizeof res, 1) ? 2 : 0;
}

static int run_importer(const char *self, const CUipcMemHandle *h, int res[5])
{
    int to[2], from[2];
    if (pipe(to) || pipe(from))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[1]);
        close(from[0]);
        execl(self, self, "--import", (char *)NULL);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    int bad = full_io(to[1], (void *)h, sizeof *h, 1);
    close(to[1]);
    bad |= full_io(from[0], res, 5 * sizeof(int), 0);
    close(from[0]);
    int status;
    waitpid(pid, &status, 0);
    return bad ? -1 : 0;
}

static const char *verdict(const int r[5], char *buf, size_t n)
{
    if (r[0] != 0)
        snprintf(buf, n, "refused: open error %d", r[0]);
    else if (r[1] != 0)
        snprintf(buf, n, "opens, read fails (error %d; sync %d)", r[1], r[2]);
    else if (!r[4])
        snprintf(buf, n, "opens, WRONG bytes (sync %d, close %d)", r[2], r[3]);
    else if (r[2] != 0)
        snprintf(buf, n, "opens, reads right, sync error %d", r[2]);
    else
        snprintf(buf, n, "ignored: opens, reads right");
    return buf;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--import") == 0)
        return importer();
    CUdeviceptr base;
    CUipcMemHandle h;
    static unsigned char host[BLOCK];
    if (context() || cuMemAlloc(&base, BLOCK))
        return 2;
    for (uint64_t i = 0; i < BLOCK; i++)
        host[i] = pattern(i);
    if (cuMemcpyHtoD(base, host, BLOCK) || cuIpcGetMemHandle(&h, base))
        return 2;
    int version = 0;
    cuDriverGetVersion(&version);
    printf("handle of a 64 MiB block (driver API %d):", version);
    for (int i = 0; i < 64; i++)
        printf("%s%02x", i % 8 ? "" : " ", (unsigned char)h.reserved[i]);
    printf("\n");

    int r[5];
    char v[128], prev[128] = "";
    if (run_importer(argv[0], &h, r))
        return 2;
    printf("unchanged: %s\n", verdict(r, v, sizeof v));
    static const unsigned char changes[2] = {0x01, 0x80};
    for (int c = 0; c < 2; c++) {
        int start = 0;
        prev[0] = '\0';
        for (int i = 0; i <= 64; i++) {
            if (i < 64) {
                CUipcMemHandle m = h;
                m.reserved[i] ^= (char)changes[c];
                if (run_importer(argv[0], &m, r))
                    return 2;
                verdict(r, v, sizeof v);
                printf("byte %2d xor 0x%02x: %s\n", i, changes[c], v);
                fflush(stdout);
            }
            if (i == 64 || (i > 0 && strcmp(v, prev) != 0)) {
                printf("SUMMARY xor 0x%02x bytes %d-%d: %s\n", changes[c], start, i - 1, prev);
                start = i;
            }
            snprintf(prev, sizeof prev, "%s", v);
        }
    }
    return 0;
}
