/* What the two-process test programs share: whole reads and writes on
 * pipes, a child running this same program with its stdin and stdout on
 * pipes, and a current primary context. Header-only, static inline. */
#ifndef NVIPCFIX_TEST_PROCESS_H
#define NVIPCFIX_TEST_PROCESS_H

#include <cuda.h>

#include <errno.h>
#include <stdio.h>
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

/* execv(path, argv), or through the emulator named by
 * TEST_PROGRAM_RUNNER (e.g. "qemu-aarch64", as make test-aarch64 sets it; no
 * binfmt is needed): LD_PRELOAD and
 * LD_LIBRARY_PATH are handed to the emulated program with -E and kept out
 * of the emulator's own environment. Returns only on failure. */
static inline void tp_exec(const char *path, char *const argv[])
{
    const char *runner = getenv("TEST_PROGRAM_RUNNER");
    if (runner == NULL || runner[0] == '\0') {
        execv(path, argv);
        return;
    }
    static char words[512], env[2][4096];
    static const char *const names[2] = {"LD_PRELOAD", "LD_LIBRARY_PATH"};
    char *args[96];
    int n = 0;
    snprintf(words, sizeof words, "%s", runner);
    for (char *w = words; *w != '\0' && n < 16;) {
        while (*w == ' ')
            *w++ = '\0';
        if (*w != '\0')
            args[n++] = w;
        while (*w != '\0' && *w != ' ')
            w++;
    }
    for (int i = 0; i < 2; i++) {
        const char *v = getenv(names[i]);
        if (v == NULL)
            continue;
        snprintf(env[i], sizeof env[i], "%s=%s", names[i], v);
        args[n++] = "-E";
        args[n++] = env[i];
        unsetenv(names[i]);
    }
    args[n++] = (char *)path;
    for (int i = 1; argv[i] != NULL && n < 95; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    execvp(args[0], args);
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
        tp_exec(path, argv);
        _exit(127);
    }
    close(a[0]);
    close(b[1]);
    *to = a[1];
    *from = b[0];
    return pid;
}

/* cuInit, then the primary context of device `ordinal` made current.
 * Returns the first error, as the driver gave it. */
static inline int tp_use_primary_context(int ordinal, CUcontext *ctx)
{
    CUdevice dev;
    CUcontext c = NULL;
    CUresult r = cuInit(0);
    if (r == CUDA_SUCCESS)
        r = cuDeviceGet(&dev, ordinal);
    if (r == CUDA_SUCCESS)
        r = cuDevicePrimaryCtxRetain(&c, dev);
    if (r == CUDA_SUCCESS)
        r = cuCtxSetCurrent(c);
    if (r == CUDA_SUCCESS && ctx != NULL)
        *ctx = c;
    return (int)r;
}

#endif
