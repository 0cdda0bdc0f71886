/* Unit tests of shim/fd_channel.c: descriptors handed over a Unix socket in
 * the abstract namespace, only to those who may have them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../shim/fd_channel.h"

/* Export id N: N memfds, descriptor i holding the byte i; id 0 unknown. */
static void serve(void *arg, uint64_t id, struct nvipcfix_fd_reply *out)
{
    (void)arg;
    if (id == 0) {
        out->status = NVIPCFIX_FD_UNKNOWN;
        return;
    }
    out->sizes = calloc(id, sizeof *out->sizes);
    out->offsets = calloc(id, sizeof *out->offsets);
    out->fds = calloc(id, sizeof *out->fds);
    for (uint64_t i = 0; i < id; i++) {
        unsigned char b = (unsigned char)i;
        out->fds[i] = memfd_create("fd-channel-test", MFD_CLOEXEC);
        assert_true(out->fds[i] >= 0 && write(out->fds[i], &b, 1) == 1);
        out->sizes[i] = 4096 + i;
        out->offsets[i] = 8192 * i;
    }
    out->n = (uint32_t)id;
    out->status = NVIPCFIX_FD_OK;
}

static struct nvipcfix_fd_server server;
static pid_t pid;
static uint64_t secret;

static int setup(void **state)
{
    (void)state;
    nvipcfix_fd_server_init(&server, serve, NULL);
    return nvipcfix_fd_server_start(&server, &pid, &secret);
}

static int teardown(void **state)
{
    (void)state;
    nvipcfix_fd_server_destroy(&server);
    return 0;
}

static void check_reply(const struct nvipcfix_fd_reply *r, uint32_t n)
{
    assert_int_equal(r->n, n);
    for (uint32_t i = 0; i < n; i++) {
        unsigned char b = 0xff;
        assert_int_equal(pread(r->fds[i], &b, 1, 0), 1);
        assert_int_equal(b, (unsigned char)i);
        assert_int_equal(r->sizes[i], 4096 + i);
        assert_int_equal(r->offsets[i], 8192 * i);
    }
}

static void test_descriptors_arrive(void **state)
{
    (void)state;
    struct nvipcfix_fd_reply r;
    assert_int_equal(pid, getpid());
    assert_int_equal(nvipcfix_fd_request(pid, secret, 3, 5000, &r), NVIPCFIX_FD_OK);
    check_reply(&r, 3);
    nvipcfix_fd_reply_free(&r);
    /* more than one message carries (the kernel takes 253 per message) */
    assert_int_equal(nvipcfix_fd_request(pid, secret, 600, 5000, &r), NVIPCFIX_FD_OK);
    check_reply(&r, 600);
    nvipcfix_fd_reply_free(&r);
    assert_int_equal(atomic_load(&server.served), 2);
}

static void test_exporter_answers_pass_through(void **state)
{
    (void)state;
    struct nvipcfix_fd_reply r;
    assert_int_equal(nvipcfix_fd_request(pid, secret, 0, 5000, &r), NVIPCFIX_FD_UNKNOWN);
    assert_null(r.fds);
}

static void test_wrong_secret_or_pid_finds_nobody(void **state)
{
    (void)state;
    struct nvipcfix_fd_reply r;
    assert_int_equal(nvipcfix_fd_request(pid, secret ^ 1, 3, 5000, &r),
                     NVIPCFIX_FD_NO_EXPORTER);
    assert_int_equal(nvipcfix_fd_request(pid + 100000, secret, 3, 5000, &r),
                     NVIPCFIX_FD_NO_EXPORTER);
}

/* A process listening under another process's name is not believed. */
static void test_impostor_is_noticed(void **state)
{
    (void)state;
    pid_t other = fork();
    if (other == 0) {
        pause();
        _exit(0);
    }
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "nvipcfix-vmm-%d-%016llx",
                     (int)other, 0x5eedULL);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n)),
                     0);
    assert_int_equal(listen(fd, 4), 0);
    struct nvipcfix_fd_reply r;
    assert_int_equal(nvipcfix_fd_request(other, 0x5eed, 3, 2000, &r), NVIPCFIX_FD_IMPOSTOR);
    close(fd);
    kill(other, SIGKILL);
    waitpid(other, NULL, 0);
}

/* Another user is refused; root may ask (it could take them anyway). */
static void test_other_user_refused(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip();
    pid_t child = fork();
    if (child == 0) {
        struct nvipcfix_fd_reply r;
        if (setuid(65534) != 0)
            _exit(10);
        _exit(nvipcfix_fd_request(pid, secret, 3, 5000, &r));
    }
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), NVIPCFIX_FD_REFUSED);
    assert_int_equal(atomic_load(&server.refused), 1);
}

/* A child after fork: the parent's socket closed, its own server on first
 * use, the parent's still answering. */
static void test_fork_child_serves_itself(void **state)
{
    (void)state;
#if defined(__SANITIZE_THREAD__)
    skip(); /* ThreadSanitizer cannot start threads after a multi-threaded fork */
#endif
    pid_t child = fork();
    if (child == 0) {
        pid_t p2;
        uint64_t s2;
        struct nvipcfix_fd_reply r;
        nvipcfix_fd_server_forget(&server);
        if (nvipcfix_fd_server_start(&server, &p2, &s2) != 0 || p2 != getpid())
            _exit(1);
        if (nvipcfix_fd_request(p2, s2, 2, 5000, &r) != NVIPCFIX_FD_OK || r.n != 2)
            _exit(2);
        if (nvipcfix_fd_request(pid, secret, 2, 5000, &r) != NVIPCFIX_FD_OK)
            _exit(3);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static void test_stopped_server_answers_nobody(void **state)
{
    (void)state;
    struct nvipcfix_fd_reply r;
    nvipcfix_fd_server_stop(&server);
    assert_int_not_equal(nvipcfix_fd_request(pid, secret, 3, 2000, &r), NVIPCFIX_FD_OK);
    assert_null(r.fds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_descriptors_arrive),
        cmocka_unit_test(test_exporter_answers_pass_through),
        cmocka_unit_test(test_wrong_secret_or_pid_finds_nobody),
        cmocka_unit_test(test_impostor_is_noticed),
        cmocka_unit_test(test_other_user_refused),
        cmocka_unit_test(test_fork_child_serves_itself),
        cmocka_unit_test(test_stopped_server_answers_nobody),
    };
    return cmocka_run_group_tests_name("fd_channel", tests, setup, teardown);
}
