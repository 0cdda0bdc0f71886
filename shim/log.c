#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
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

int nvipcfix_log_open(enum nvipcfix_log_level level, const char *path)
{
    atomic_store(&log_level, (int)level);
    if (path == NULL || path[0] == '\0')
        return 0;

    char expanded[4096];
    int fd = -1;
    int err = ENAMETOOLONG;
    if (nvipcfix_log_expand_path(path, (long)getpid(), expanded, sizeof expanded) == 0) {
        fd = open(expanded, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
        err = errno;
    }
    if (fd < 0) {
        nvipcfix_log(NVIPCFIX_LOG_WARN, "cannot open log file '%s' (%s); logging to stderr",
                     path, strerror(err));
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

static void vlog_line(const char *tag, const char *fmt, va_list ap)
{
    int saved_errno = errno;
    char line[1024];
    int n = snprintf(line, sizeof line, "nvipcfix[%ld]: %s: ", (long)getpid(), tag);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof line - 2)
        len = sizeof line - 2;
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
