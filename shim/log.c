#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static atomic_int log_level = NVIPCFIX_LOG_WARN;
static atomic_int log_fd = STDERR_FILENO;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

int nvipcfix_log_expand_path(const char *path, long pid, char *out, unsigned long outsz)
{
    unsigned long n = 0;
    for (const char *s = path; *s; s++) {
        char piece[32];
        const char *add = piece;
        unsigned long len;
        if (s[0] == '%' && s[1] == 'p') {
            snprintf(piece, sizeof piece, "%ld", pid);
            s++;
        } else if (s[0] == '%' && s[1] == '%') {
            piece[0] = '%';
            piece[1] = '\0';
            s++;
        } else {
            piece[0] = *s;
            piece[1] = '\0';
        }
        len = strlen(add);
        if (n + len + 1 > outsz)
            return -1;
        memcpy(out + n, add, len);
        n += len;
    }
    if (n + 1 > outsz)
        return -1;
    out[n] = '\0';
    return 0;
}

/* The process's stderr, named as a file. */
static int names_stderr(const char *path)
{
    return strcmp(path, "/dev/stderr") == 0 || strcmp(path, "/proc/self/fd/2") == 0 ||
           strcmp(path, "/dev/fd/2") == 0;
}

/* Opens a log file without ever blocking (a FIFO with no reader would hang
 * the first IPC call of every thread) and keeps it only if it is a regular
 * file. Returns the descriptor, or -1 with *why set. */
static int open_regular(const char *path, const char **why)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK |
                            O_NOCTTY, 0600);
    if (fd < 0) {
        /* ENXIO: a FIFO with no reader, or a device */
        *why = errno == ENXIO ? "not a regular file (use /dev/stderr for the process's own "
                                "stderr)"
                              : strerror(errno);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        *why = "not a regular file (use /dev/stderr for the process's own stderr)";
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

int nvipcfix_log_open(enum nvipcfix_log_level level, const char *path)
{
    atomic_store(&log_level, (int)level);
    if (path == NULL || path[0] == '\0')
        return 0;

    char expanded[4096];
    int fd = -1;
    const char *why = strerror(ENAMETOOLONG);
    if (nvipcfix_log_expand_path(path, (long)getpid(), expanded, sizeof expanded) == 0) {
        if (names_stderr(expanded))
            return 0; /* whatever stderr is: terminal, pipe or socket */
        fd = open_regular(expanded, &why);
    }
    if (fd < 0) {
        nvipcfix_log(NVIPCFIX_LOG_WARN, "cannot use log file '%s' (%s); logging to stderr",
                     path, why);
        return -1;
    }
    int old = atomic_exchange(&log_fd, fd);
    if (old != STDERR_FILENO)
        close(old);
    return 0;
}

void nvipcfix_log_close(void)
{
    int old = atomic_exchange(&log_fd, STDERR_FILENO);
    if (old != STDERR_FILENO)
        close(old);
    atomic_store(&log_level, NVIPCFIX_LOG_WARN);
}

int nvipcfix_log_enabled(enum nvipcfix_log_level level)
{
    return (int)level <= atomic_load_explicit(&log_level, memory_order_relaxed);
}

/* Copies src into dst (room for n bytes), writing control characters
 * (newlines from an environment value, escape sequences) as \xNN so that
 * one call is one line, as it was logged. Returns the length written. */
unsigned long nvipcfix_log_escape(char *dst, unsigned long n, const char *src)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *s = (const unsigned char *)src; *s != '\0'; s++) {
        if (*s >= 0x20 && *s != 0x7f) {
            if (o + 1 >= n)
                break;
            dst[o++] = (char)*s;
        } else {
            if (o + 4 >= n)
                break;
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[*s >> 4];
            dst[o++] = hex[*s & 15];
        }
    }
    if (n > 0)
        dst[o] = '\0';
    return o;
}

static void vlog_line(const char *tag, const char *fmt, va_list ap)
{
    int saved_errno = errno;
    char msg[1024], line[1100];
    if (vsnprintf(msg, sizeof msg, fmt, ap) < 0)
        msg[0] = '\0';
    int n = snprintf(line, sizeof line, "nvipcfix[%ld]: %s: ", (long)getpid(), tag);
    size_t len = (size_t)n + nvipcfix_log_escape(line + n, sizeof line - (size_t)n - 1, msg);
    line[len++] = '\n';
    /* One write per line keeps lines from several threads whole. */
    ssize_t w = write(atomic_load(&log_fd), line, len);
    (void)w;
    errno = saved_errno;
}

void nvipcfix_log_line(const char *tag, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog_line(tag, fmt, ap);
    va_end(ap);
}

void nvipcfix_log(enum nvipcfix_log_level level, const char *fmt, ...)
{
    if (!nvipcfix_log_enabled(level))
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog_line(level_names[level], fmt, ap);
    va_end(ap);
}
