#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

atomic_int nvipcfix_log_level_now = NVIPCFIX_LOG_WARN;
static atomic_int log_fd = STDERR_FILENO;

static const char *const level_names[] = {"error", "warning", "info", "debug"};

/* Which file a descriptor the log writes to is meant to be (device and
 * inode; no descriptor is held for it): state -1 not recorded (every line
 * is written), 0 closed (nothing is), 1 recorded. */
struct file_identity {
    atomic_int state;
    _Atomic unsigned long long dev, ino;
};

/* fd 2 as it was when the library was loaded, and the log file as opened. */
static struct file_identity stderr_at_load = {-1, 0, 0}, log_file_opened = {-1, 0, 0};

/* What fd is (*st): 0, or the errno. fstatat with an empty path on this
 * stack rather than fstat: glibc 2.36's fstat is the same system call
 * (newfstatat, which glibc also makes for every stat) with a "" of its own
 * read-only data, which the kernel then reads, and at load that page of the
 * C library is often not mapped yet (a page fault in every process:
 * docs/performance.md). */
static inline __attribute__((always_inline)) int identify(int fd, struct stat *st)
{
    char empty[1] = {'\0'};
    return fstatat(fd, empty, st, AT_EMPTY_PATH) == 0 ? 0 : errno;
}

/* fd closed (EBADF): nothing is written while it stays closed. Any other
 * failure (a sandbox that refuses the call) records nothing: every line is
 * written, as before there was a record, never none. errno is kept (fd 2
 * is recorded at load, before the program's main). */
static inline __attribute__((always_inline)) void remember(struct file_identity *id, int fd)
{
    struct stat st;
    int saved_errno = errno, err = identify(fd, &st);
    atomic_store(&id->dev, err == 0 ? (unsigned long long)st.st_dev : 0);
    atomic_store(&id->ino, err == 0 ? (unsigned long long)st.st_ino : 0);
    atomic_store(&id->state, err == 0 ? 1 : err == EBADF ? 0 : -1);
    errno = saved_errno;
}

/* With the constructors' code (.text.startup), which GNU ld places at the
 * front of the library's text (pages the loader has mapped already), not
 * in a page of its own that every process would fault in at load. */
__attribute__((section(".text.startup"))) void nvipcfix_log_remember_stderr(void)
{
    remember(&stderr_at_load, STDERR_FILENO);
}

/* Whether fd is still the file recorded: a program that closed it and
 * opened a data file (which got its number) must never find log lines in
 * that file. */
static int still_the_same_file(const struct file_identity *id, int fd)
{
    int state = atomic_load(&id->state);
    if (state <= 0)
        return state < 0;
    struct stat st;
    return identify(fd, &st) == 0 && (unsigned long long)st.st_dev == atomic_load(&id->dev) &&
           (unsigned long long)st.st_ino == atomic_load(&id->ino);
}

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

static const char not_regular[] =
    "not a regular file (use /dev/stderr for the process's own stderr)";
static const char through_link[] = "a symbolic link in the path; give the real path";

/* Why openat(dir, name, ...) failed: a symbolic link said as such. */
static const char *open_failure(int dir, const char *name, int err)
{
    struct stat st;
    if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
        return through_link;
    return err == ENXIO ? not_regular : strerror(err); /* ENXIO: a FIFO with no reader */
}

/* Opens the folder that holds path's last component, one component at a
 * time from / (or the working directory) and never through a symbolic link,
 * so that no one who can write a folder on the way can redirect the log.
 * Cuts path at the last component and points *name at it. Returns the
 * folder's descriptor, or -1 with *why set. */
static int open_parent(char *path, const char **name, const char **why)
{
    int dir = open(path[0] == '/' ? "/" : ".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        *why = strerror(errno);
    char *part = path;
    for (;;) {
        while (*part == '/')
            part++;
        char *slash = strchr(part, '/');
        if (dir < 0 || slash == NULL)
            break;
        *slash = '\0';
        int sub = openat(dir, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0)
            *why = open_failure(dir, part, errno);
        close(dir);
        dir = sub;
        part = slash + 1;
    }
    if (dir >= 0 && *part == '\0') {
        close(dir);
        dir = -1;
        *why = strerror(EISDIR);
    }
    *name = part;
    return dir;
}

/* Opens a log file without ever blocking (a FIFO with no reader would hang
 * the first IPC call of every thread), never through a symbolic link, and
 * keeps it only if it is a regular file of this user (never appends to a
 * file someone else planted). Creates it 0600. Returns the descriptor, or -1
 * with *why set. */
static int open_regular(char *path, const char **why)
{
    const char *name;
    int dir = open_parent(path, &name, why);
    if (dir < 0)
        return -1;
    int fd = openat(dir, name, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC |
                                   O_NONBLOCK | O_NOCTTY, 0600);
    if (fd < 0)
        *why = open_failure(dir, name, errno);
    close(dir);
    if (fd < 0)
        return -1;
    struct stat st;
    *why = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        *why = not_regular;
    else if (st.st_uid != geteuid())
        *why = "owned by another user; nvipcfix appends only to its user's own files";
    if (*why != NULL) {
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

int nvipcfix_log_open(enum nvipcfix_log_level level, const char *path)
{
    atomic_store(&nvipcfix_log_level_now, (int)level);
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
    remember(&log_file_opened, fd);
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
    atomic_store(&nvipcfix_log_level_now, NVIPCFIX_LOG_WARN);
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
    int fd = atomic_load(&log_fd);
    if (still_the_same_file(fd == STDERR_FILENO ? &stderr_at_load : &log_file_opened, fd)) {
        ssize_t w = write(fd, line, len);
        (void)w;
    }
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
