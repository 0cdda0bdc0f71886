/* Unit tests of shim/log.c and shim/stats.c. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/unit_skip.h"

#include "../common/test_deadline.h"
#include "../../shim/log.h"
#include "../../shim/stats.h"

static char dir[] = "/tmp/nvipcfix-logtest-XXXXXX";

/* The library asks what a descriptor is with fstatat (shim/log.c); this
 * definition, in the test program, is the one its calls reach. While
 * refuse_fstatat is set it fails with EPERM, as under a seccomp filter
 * that refuses the call. */
static int refuse_fstatat;
int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
    if (refuse_fstatat) {
        errno = EPERM;
        return -1;
    }
    return (int)syscall(SYS_newfstatat, dirfd, path, st, flags);
}

static void slurp(const char *path, char *buf, size_t n)
{
    memset(buf, 0, n);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t got = fread(buf, 1, n - 1, f);
    (void)got;
    fclose(f);
}

static void test_expand_path(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(nvipcfix_log_expand_path("/tmp/a.%p.log", 1234, out, sizeof out), 0);
    assert_string_equal(out, "/tmp/a.1234.log");
    assert_int_equal(nvipcfix_log_expand_path("%p%p", 7, out, sizeof out), 0);
    assert_string_equal(out, "77");
    assert_int_equal(nvipcfix_log_expand_path("/tmp/100%", 7, out, sizeof out), 0);
    assert_string_equal(out, "/tmp/100%");
    assert_int_equal(nvipcfix_log_expand_path("/tmp/%%p-%%%p", 7, out, sizeof out), 0);
    assert_string_equal(out, "/tmp/%p-%7");
    assert_int_equal(nvipcfix_log_expand_path("/a/very/long/path", 1, out, 8), -1);
}

static void test_file_prefix_levels_and_mode(void **state)
{
    (void)state;
    char path[128], buf[4096], expect[64];
    snprintf(path, sizeof path, "%s/log.%%p", dir);
    assert_int_equal(nvipcfix_log_open(NVIPCFIX_LOG_INFO, path), 0);
    nvipcfix_log(NVIPCFIX_LOG_INFO, "hello %d", 42);
    nvipcfix_log(NVIPCFIX_LOG_DEBUG, "not shown");
    nvipcfix_log(NVIPCFIX_LOG_ERROR, "bad");
    nvipcfix_log_close();

    snprintf(path, sizeof path, "%s/log.%ld", dir, (long)getpid());
    slurp(path, buf, sizeof buf);
    snprintf(expect, sizeof expect, "nvipcfix[%ld]: info: hello 42\n", (long)getpid());
    assert_non_null(strstr(buf, expect));
    snprintf(expect, sizeof expect, "nvipcfix[%ld]: error: bad\n", (long)getpid());
    assert_non_null(strstr(buf, expect));
    assert_null(strstr(buf, "not shown"));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_planted_symlink_not_followed(void **state)
{
    (void)state;
    char target[128], link[128], buf[256];
    snprintf(target, sizeof target, "%s/victim", dir);
    snprintf(link, sizeof link, "%s/planted", dir);
    FILE *f = fopen(target, "w");
    fputs("precious\n", f);
    fclose(f);
    assert_int_equal(symlink(target, link), 0);
    int saved = dup(2), null = open("/dev/null", O_WRONLY); /* the warnings go to stderr */
    dup2(null, 2);
    assert_int_equal(nvipcfix_log_open(NVIPCFIX_LOG_WARN, link), -1);
    nvipcfix_log(NVIPCFIX_LOG_WARN, "must not reach the victim");
    nvipcfix_log_close();
    dup2(saved, 2);
    close(saved);
    close(null);
    slurp(target, buf, sizeof buf);
    assert_string_equal(buf, "precious\n");
}

/* Runs nvipcfix_log_open(path) with stderr sent to a file; returns its
 * result and leaves what was printed in err. */
static int open_capturing_stderr(const char *path, char *err, size_t n)
{
    char errpath[128];
    snprintf(errpath, sizeof errpath, "%s/stderr-capture", dir);
    int saved = dup(2), fd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 2);
    int r = nvipcfix_log_open(NVIPCFIX_LOG_WARN, path);
    nvipcfix_log(NVIPCFIX_LOG_WARN, "a line after the open");
    nvipcfix_log_close();
    dup2(saved, 2);
    close(saved);
    close(fd);
    slurp(errpath, err, n);
    return r;
}

/* A symbolic link in a folder of the path (not only the last component) is
 * never followed: whoever can write a folder on the way could point it at
 * another user's folder. */
static void test_symlinked_folder_not_followed(void **state)
{
    (void)state;
    char real[128], link[128], path[160], planted[160], err[1024];
    snprintf(real, sizeof real, "%s/realdir", dir);
    snprintf(link, sizeof link, "%s/linkdir", dir);
    assert_int_equal(mkdir(real, 0700), 0);
    assert_int_equal(symlink(real, link), 0);
    snprintf(path, sizeof path, "%s/sub/../log", link);
    snprintf(planted, sizeof planted, "%s/log", real);
    assert_int_equal(open_capturing_stderr(path, err, sizeof err), -1);
    assert_non_null(strstr(err, "a symbolic link in the path"));
    assert_non_null(strstr(err, "warning: a line after the open"));
    assert_int_equal(access(planted, F_OK), -1);
    /* the same folder named by its real path is fine, "." and ".." too */
    snprintf(path, sizeof path, "%s/./../realdir//log", real);
    assert_int_equal(open_capturing_stderr(path, err, sizeof err), 0);
    assert_int_equal(access(planted, F_OK), 0);
    assert_string_equal(err, "");
}

/* A file someone else created (here: root's file given to nobody) is never
 * appended to, whatever its mode. */
static void test_foreign_file_refused(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip_because("only root can give a file to another user");
    char path[128], err[1024], buf[256];
    snprintf(path, sizeof path, "%s/foreign", dir);
    FILE *f = fopen(path, "w");
    fputs("theirs\n", f);
    fclose(f);
    assert_int_equal(chmod(path, 0666), 0);
    assert_int_equal(chown(path, 65534, 65534), 0);
    assert_int_equal(open_capturing_stderr(path, err, sizeof err), -1);
    assert_non_null(strstr(err, "owned by another user"));
    slurp(path, buf, sizeof buf);
    assert_string_equal(buf, "theirs\n");
}

/* New files are 0600 whatever the umask allows. */
static void test_new_file_0600_with_umask_0(void **state)
{
    (void)state;
    char path[128], err[256];
    snprintf(path, sizeof path, "%s/umask0", dir);
    mode_t old = umask(0);
    int r = open_capturing_stderr(path, err, sizeof err);
    umask(old);
    assert_int_equal(r, 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
}

static void test_warn_once(void **state)
{
    (void)state;
    char path[128], buf[4096];
    snprintf(path, sizeof path, "%s/once", dir);
    assert_int_equal(nvipcfix_log_open(NVIPCFIX_LOG_WARN, path), 0);
    for (int i = 0; i < 5; i++)
        NVIPCFIX_WARN_ONCE("said once");
    NVIPCFIX_INFO("below the level");
    nvipcfix_log_close();
    slurp(path, buf, sizeof buf);
    char *first = strstr(buf, "said once");
    assert_non_null(first);
    assert_null(strstr(first + 1, "said once"));
    assert_null(strstr(buf, "below the level"));
}

/* A FIFO (or any file that is not regular) must not be opened in a way
 * that blocks, nor kept: one warning, stderr. */
static void test_fifo_refused_without_blocking(void **state)
{
    (void)state;
    char fifo[128], errpath[128], buf[1024];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    snprintf(errpath, sizeof errpath, "%s/stderr", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    int saved = dup(2), err = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(err, 2);
    test_alarm(20); /* before the fix, open() waited for a reader for ever */
    int r = nvipcfix_log_open(NVIPCFIX_LOG_WARN, fifo);
    alarm(0);
    nvipcfix_log(NVIPCFIX_LOG_WARN, "went to stderr");
    nvipcfix_log_close();
    dup2(saved, 2);
    close(saved);
    close(err);
    assert_int_equal(r, -1);
    slurp(errpath, buf, sizeof buf);
    assert_non_null(strstr(buf, "not a regular file"));
    assert_non_null(strstr(buf, "went to stderr"));
}

/* /dev/stderr: the process's stderr as it is (here a pipe). */
static void test_dev_stderr_is_stderr(void **state)
{
    (void)state;
    int fd[2], saved = dup(2);
    char buf[512] = "";
    assert_int_equal(pipe(fd), 0);
    dup2(fd[1], 2);
    assert_int_equal(nvipcfix_log_open(NVIPCFIX_LOG_WARN, "/dev/stderr"), 0);
    nvipcfix_log(NVIPCFIX_LOG_WARN, "through the pipe");
    nvipcfix_log_close();
    dup2(saved, 2);
    close(saved);
    close(fd[1]);
    size_t got = 0;
    for (ssize_t r; got < sizeof buf - 1 && (r = read(fd[0], buf + got, sizeof buf - 1 - got)) > 0;)
        got += (size_t)r;
    close(fd[0]);
    assert_non_null(strstr(buf, "warning: through the pipe\n"));
}

/* Newlines and escape sequences from an environment value stay inside one
 * line, visibly. */
static void test_control_characters_escaped(void **state)
{
    (void)state;
    char path[128], buf[1024], expect[160];
    snprintf(path, sizeof path, "%s/escaped", dir);
    assert_int_equal(nvipcfix_log_open(NVIPCFIX_LOG_WARN, path), 0);
    nvipcfix_log(NVIPCFIX_LOG_WARN, "value '%s'", "fix\nnvipcfix[1]: error: forged\x1b[2J\x7f");
    nvipcfix_log_close();
    slurp(path, buf, sizeof buf);
    snprintf(expect, sizeof expect,
             "nvipcfix[%ld]: warning: value 'fix\\x0anvipcfix[1]: error: forged\\x1b[2J\\x7f'\n",
             (long)getpid());
    assert_string_equal(buf, expect);
    char small[8];
    assert_int_equal(nvipcfix_log_escape(small, sizeof small, "ab\ncd"), 7);
    assert_string_equal(small, "ab\\x0ac");
}

/* fd 2 back to saved (the test's own stderr, recorded again) and the pipe
 * that stood in for it, fd[1] its only writer, read to its end into buf
 * (NUL-terminated): the bytes read. */
static ssize_t stderr_back(int saved, int fd[2], char *buf, size_t n)
{
    ssize_t got = 0, r;
    dup2(saved, 2);
    close(saved);
    close(fd[1]);
    nvipcfix_log_remember_stderr();
    while ((size_t)got < n - 1 &&
           ((r = read(fd[0], buf + got, n - 1 - (size_t)got)) > 0 || (r < 0 && errno == EINTR)))
        got += r > 0 ? r : 0;
    buf[got] = '\0';
    close(fd[0]);
    return got;
}

/* Lines meant for stderr while fd 2 is a file the program opened itself
 * (it closed fd 2 first): dropped, the file holds only its own records. */
static void check_data_file_untouched(int fd2_open_at_load)
{
    char data[128], buf[256] = "", records[128];
    int fd[2], saved = dup(2);
    snprintf(data, sizeof data, "%s/data-%d", dir, fd2_open_at_load);
    assert_int_equal(pipe(fd), 0);
    if (fd2_open_at_load)
        dup2(fd[1], 2);
    else
        close(2);
    nvipcfix_log_remember_stderr(); /* what the library does when it is loaded */
    close(2);
    int file = open(data, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_int_equal(file, 2); /* the lowest free descriptor, as in a program */
    assert_int_equal(write(file, "RECORD-1\n", 9), 9);
    nvipcfix_log(NVIPCFIX_LOG_WARN, "must not land in the data file");
    assert_int_equal(write(file, "RECORD-2\n", 9), 9);
    if (fd2_open_at_load) { /* fd 2 back as it was: lines are written again */
        dup2(fd[1], 2);
        nvipcfix_log(NVIPCFIX_LOG_WARN, "back on stderr");
    }
    ssize_t got = stderr_back(saved, fd, buf, sizeof buf);
    slurp(data, records, sizeof records);
    assert_string_equal(records, "RECORD-1\nRECORD-2\n");
    if (fd2_open_at_load) {
        assert_true(got > 0);
        assert_non_null(strstr(buf, "warning: back on stderr\n"));
        assert_null(strstr(buf, "must not land"));
    }
}

/* fd 2 cannot be asked what it is (the call refused, at load and after):
 * the lines are written all the same, never silently dropped; errno is
 * left as the program had it. A closed fd 2 at load is not such a case
 * (the test below: nothing is written while it stays closed). */
static void test_fd2_identity_refused(void **state)
{
    (void)state;
    char buf[256] = "";
    int fd[2], saved = dup(2);
    assert_int_equal(pipe(fd), 0);
    dup2(fd[1], 2);
    refuse_fstatat = 1;
    errno = ENOENT;
    nvipcfix_log_remember_stderr();
    assert_int_equal(errno, ENOENT);
    nvipcfix_log(NVIPCFIX_LOG_WARN, "written although fd 2 cannot be asked");
    refuse_fstatat = 0;
    ssize_t got = stderr_back(saved, fd, buf, sizeof buf);
    assert_true(got > 0);
    assert_non_null(strstr(buf, "warning: written although fd 2 cannot be asked\n"));
}

static void test_fd2_replaced_by_a_data_file(void **state)
{
    (void)state;
    check_data_file_untouched(1);
}

static void test_fd2_closed_at_load_then_a_data_file(void **state)
{
    (void)state;
    check_data_file_untouched(0);
}

/* The descriptor of the open log file, found by its path. */
static int log_file_descriptor(const char *path)
{
    char link[64], target[256];
    for (int fd = 3; fd < 1024; fd++) {
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = '\0';
            if (strcmp(target, path) == 0)
                return fd;
        }
    }
    return -1;
}

/* A program that closes every descriptor (the log file's too) and opens a
 * data file that gets the log's number: the data file holds only its own
 * records. */
static void test_log_descriptor_reused_for_a_data_file(void **state)
{
    (void)state;
    char path[128], data[128], buf[256];
    snprintf(path, sizeof path, "%s/reused.log", dir);
    snprintf(data, sizeof data, "%s/reused.data", dir);
    assert_int_equal(nvipcfix_log_open(NVIPCFIX_LOG_WARN, path), 0);
    nvipcfix_log(NVIPCFIX_LOG_WARN, "in the log");
    int fd = log_file_descriptor(path);
    assert_true(fd >= 3);
    close(fd);
    int file = open(data, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_int_equal(dup2(file, fd), fd);
    close(file);
    assert_int_equal(write(fd, "RECORD-1\n", 9), 9);
    nvipcfix_log(NVIPCFIX_LOG_WARN, "must not land in the data file");
    assert_int_equal(write(fd, "RECORD-2\n", 9), 9);
    nvipcfix_log_close(); /* closes fd: the data file, as the program would */
    slurp(data, buf, sizeof buf);
    assert_string_equal(buf, "RECORD-1\nRECORD-2\n");
    slurp(path, buf, sizeof buf);
    assert_non_null(strstr(buf, "warning: in the log\n"));
    assert_null(strstr(buf, "must not land"));
}

static void test_stats_line(void **state)
{
    (void)state;
    struct nvipcfix_stats s;
    memset(&s, 0, sizeof s);
    NVIPCFIX_STAT_ADD(&s, exports);
    NVIPCFIX_STAT_ADD(&s, exports);
    NVIPCFIX_STAT_ADD(&s, exports_tagged);
    NVIPCFIX_STAT_ADD(&s, opens);
    NVIPCFIX_STAT_ADD(&s, table_hits);
    NVIPCFIX_STAT_ADD(&s, errors);
    char line[256];
    assert_string_equal(nvipcfix_stats_format(&s, line, sizeof line),
                        "exports=2 (with offset 1) opens=1 (real 0, table hits 1) "
                        "closes=0 (real 0) errors=1");
    assert_true(nvipcfix_stats_any(&s));
    nvipcfix_stats_reset(&s); /* a forked child counts its own calls */
    assert_false(nvipcfix_stats_any(&s));
    assert_string_equal(nvipcfix_stats_format(&s, line, sizeof line),
                        "exports=0 (with offset 0) opens=0 (real 0, table hits 0) "
                        "closes=0 (real 0) errors=0");
}

static int make_dir(void **state)
{
    (void)state;
    return mkdtemp(dir) == NULL;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expand_path),
        cmocka_unit_test(test_file_prefix_levels_and_mode),
        cmocka_unit_test(test_planted_symlink_not_followed),
        cmocka_unit_test(test_symlinked_folder_not_followed),
        cmocka_unit_test(test_foreign_file_refused),
        cmocka_unit_test(test_new_file_0600_with_umask_0),
        cmocka_unit_test(test_warn_once),
        cmocka_unit_test(test_fifo_refused_without_blocking),
        cmocka_unit_test(test_dev_stderr_is_stderr),
        cmocka_unit_test(test_control_characters_escaped),
        cmocka_unit_test(test_log_descriptor_reused_for_a_data_file),
        cmocka_unit_test(test_stats_line),
        cmocka_unit_test(test_fd2_identity_refused),
        cmocka_unit_test(test_fd2_replaced_by_a_data_file),
        cmocka_unit_test(test_fd2_closed_at_load_then_a_data_file),
    };
    return cmocka_run_group_tests_name("log_and_stats", tests, make_dir, remove_dir);
}
