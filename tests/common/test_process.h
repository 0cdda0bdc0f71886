/* What the two-process test programs share: whole reads and writes on
 * pipes, a child running this same program with its stdin and stdout on
 * pipes, and a current primary context. Header-only, static inline. */
#ifndef NVIPCFIX_TEST_PROCESS_H
#define NVIPCFIX_TEST_PROCESS_H

#include <cuda.h>

#include <errno.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

/* Reads or writes exactly n bytes, however the pipe splits them and
 * whatever signal interrupts; returns 0, or -1 (end of file or an error). */
static inline int tp_read_full(int fd, void *buf, size_t n)
{
    for (size_t done = 0; done < n;) {
        ssize_t r = read(fd, (char *)buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

static inline int tp_write_full(int fd, const void *buf, size_t n)
{
    for (size_t done = 0; done < n;) {
        ssize_t r = write(fd, (const char *)buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        done += (size_t)r;
    }
    return 0;
}

/* Runs path with argv, its stdin fed from *to and its stdout read from
 * *from. path should be argv[0] of this program rather than
 * /proc/self/exe, which under valgrind is valgrind. */
static inline pid_t tp_spawn(const char *path, char *const argv[], int *to, int *from)
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
        execv(path, argv);
        _exit(127);
    }
    close(a[0]);
    close(b[1]);
    *to = a[1];
    *from = b[0];
    return pid;
}

/* cuInit, then the primary context of device `ordinal` made current. */
static inline int tp_use_primary_context(int ordinal, CUcontext *ctx)
{
    CUdevice dev;
    CUcontext c;
    int r = cuInit(0) || cuDeviceGet(&dev, ordinal) || cuDevicePrimaryCtxRetain(&c, dev) ||
            cuCtxSetCurrent(c);
    if (r == 0 && ctx != NULL)
        *ctx = c;
    return r;
}

#endif
