/* Logging: one prefix ("nvipcfix[PID]: LEVEL: ") on every line, to stderr
 * or to NVIPCFIX_LOG_FILE. Silent below the configured level. */
#ifndef NVIPCFIX_LOG_H
#define NVIPCFIX_LOG_H

#include <stdatomic.h>

enum nvipcfix_log_level {
    NVIPCFIX_LOG_ERROR = 0,
    NVIPCFIX_LOG_WARN = 1,
    NVIPCFIX_LOG_INFO = 2,
    NVIPCFIX_LOG_DEBUG = 3,
};

/* Sets the level and the destination. path may be NULL (stderr); "%p" in
 * it is replaced by the pid, "%%" by "%". The file is opened without
 * blocking, created 0600, never through a symbolic link in any component
 * (folder by folder), and kept only if it is a regular file owned by this
 * process's user; /dev/stderr (or /proc/self/fd/2, /dev/fd/2) means the
 * process's stderr, whatever it is. Otherwise stderr is used and a warning
 * says so. Returns 0, or -1 when the file could not be used. */
int nvipcfix_log_open(enum nvipcfix_log_level level, const char *path);

/* Records what fd 2 is now (device and inode, no descriptor held); called
 * when the library is loaded. From then on a line meant for stderr is
 * written only while fd 2 is still that file: a program that closed fd 2
 * and opened a file of its own (which got fd 2) never finds log lines in
 * it; they are dropped (NVIPCFIX_LOG_FILE still gets them). Until it is
 * called, and if fd 2 cannot be asked what it is (a sandbox that refuses
 * the call; a closed fd 2 is not such a failure), every line is written.
 * errno is left as it was. The log file is checked the same way
 * against what it was when nvipcfix_log_open opened it (a program that
 * closed every descriptor and opened a file that got the log's number). */
void nvipcfix_log_remember_stderr(void);

/* Closes a log file opened by nvipcfix_log_open and goes back to stderr at
 * level warn. */
void nvipcfix_log_close(void);

/* The level in force (set by nvipcfix_log_open); read inline, so that a
 * debug line on a hot path costs one load when it is off. */
extern atomic_int nvipcfix_log_level_now;

static inline int nvipcfix_log_enabled(enum nvipcfix_log_level level)
{
    return (int)level <= atomic_load_explicit(&nvipcfix_log_level_now, memory_order_relaxed);
}

/* Copies src to dst (n bytes of room, always terminated) with control
 * characters written as \xNN; every logged line goes through it. Returns
 * the length copied. */
unsigned long nvipcfix_log_escape(char *dst, unsigned long n, const char *src);

__attribute__((format(printf, 2, 3)))
void nvipcfix_log(enum nvipcfix_log_level level, const char *fmt, ...);

/* Writes one line "nvipcfix[PID]: TAG: ..." whatever the level. */
__attribute__((format(printf, 2, 3)))
void nvipcfix_log_line(const char *tag, const char *fmt, ...);

/* Expands "%p" of a path into the pid and "%%" into "%"; returns -1 if out
 * is too small. */
int nvipcfix_log_expand_path(const char *path, long pid, char *out, unsigned long outsz);

/* Logs at warning level the first time this line is reached, never again. */
#define NVIPCFIX_WARN_ONCE(...)                                              \
    do {                                                                     \
        static atomic_flag nvipcfix_once_ = ATOMIC_FLAG_INIT;                \
        if (!atomic_flag_test_and_set_explicit(&nvipcfix_once_,              \
                                               memory_order_relaxed))        \
            nvipcfix_log(NVIPCFIX_LOG_WARN, __VA_ARGS__);                    \
    } while (0)

#define NVIPCFIX_DEBUG(...)                                                  \
    do {                                                                     \
        if (nvipcfix_log_enabled(NVIPCFIX_LOG_DEBUG))                        \
            nvipcfix_log(NVIPCFIX_LOG_DEBUG, __VA_ARGS__);                   \
    } while (0)

#define NVIPCFIX_INFO(...)                                                   \
    do {                                                                     \
        if (nvipcfix_log_enabled(NVIPCFIX_LOG_INFO))                         \
            nvipcfix_log(NVIPCFIX_LOG_INFO, __VA_ARGS__);                    \
    } while (0)

#endif
