/* Unit tests of shim/log.c and shim/stats.c. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/test_deadline.h"
#include "../../shim/log.h"
#include "../../shim/stats.h"

static char dir[] = "/tmp/nvipcfix-logtest-XXXXXX";

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
        cmocka_unit_test(test_warn_once),
        cmocka_unit_test(test_fifo_refused_without_blocking),
        cmocka_unit_test(test_dev_stderr_is_stderr),
        cmocka_unit_test(test_control_characters_escaped),
        cmocka_unit_test(test_stats_line),
    };
    return cmocka_run_group_tests_name("log_and_stats", tests, make_dir, remove_dir);
}
