/* Unit tests of shim/fd_channel.c: descriptors handed over a Unix socket in
 * the abstract namespace, only to those who may have them. */
#include <setjmp.h>
#include <dirent.h>
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
#include "../common/unit_skip.h"

#include "../../shim/fd_channel.h"

/* Export id N offers N descriptors, item i a memfd holding the byte i;
 * id 0 is unknown; id 1000 + N offers N + 5 but hands over only N. */
static uint64_t offered(uint64_t id)
{
    return id >= 1000 ? id - 1000 + 5 : id;
}

static void describe(void *arg, uint64_t id, struct nvipcfix_fd_reply *out)
{
    (void)arg;
    if (id == 0) {
        out->status = NVIPCFIX_FD_UNKNOWN;
        return;
    }
    uint64_t n = offered(id);
    out->sizes = calloc(n, sizeof *out->sizes);
    out->offsets = calloc(n, sizeof *out->offsets);
    for (uint64_t i = 0; i < n; i++) {
        out->sizes[i] = 4096 + i;
        out->offsets[i] = 8192 * i;
    }
    out->n = (uint32_t)n;
    out->status = NVIPCFIX_FD_OK;
}

/* Descriptors open in this process (server and asking side together). */
static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.';
    if (d != NULL)
        closedir(d);
    return n;
}

static int most_open; /* the most seen when a batch is made */

static uint32_t export_fds(void *arg, uint64_t id, uint32_t first, uint32_t count, int *fds,
                           int32_t *driver_error)
{
    (void)arg;
    (void)driver_error;
    uint64_t give = id >= 1000 ? id - 1000 : id;
    uint32_t k = 0;
    for (uint32_t i = first; i < first + count && i < give; i++, k++) {
        unsigned char b = (unsigned char)i;
        fds[k] = memfd_create("fd-channel-test", MFD_CLOEXEC);
        assert_true(fds[k] >= 0 && write(fds[k], &b, 1) == 1);
    }
    if (open_fds() > most_open)
        most_open = open_fds();
    return k;
}

static const struct nvipcfix_fd_service service = {describe, export_fds, NULL};

/* What the asking side got: each descriptor checked and closed at once. */
struct got {
    uint32_t offered, taken, bad;
    int stop_after; /* give up after this many, 0 never */
};

static int begin(void *arg, const struct nvipcfix_fd_reply *offer)
{
    struct got *g = arg;
    g->offered = offer->n;
    for (uint32_t i = 0; i < offer->n; i++)
        g->bad += offer->sizes[i] != 4096 + i || offer->offsets[i] != 8192 * i;
    return 0;
}

static int take(void *arg, uint32_t first, const int *fds, uint32_t k)
{
    struct got *g = arg;
    for (uint32_t j = 0; j < k; j++) {
        unsigned char b = 0xff;
        g->bad += first + j != g->taken || pread(fds[j], &b, 1, 0) != 1 ||
                  b != (unsigned char)(first + j);
        close(fds[j]);
        g->taken++;
    }
    return g->stop_after > 0 && g->taken >= (uint32_t)g->stop_after;
}

static int ask(pid_t to, uint64_t sec, uint64_t id, struct got *g, uint32_t *served)
{
    struct nvipcfix_fd_taker t = {begin, take, g};
    int32_t err;
    return nvipcfix_fd_request(to, sec, id, 5000, &t, served, &err);
}

static struct nvipcfix_fd_server server;
static pid_t pid;
static uint64_t secret;

static int setup(void **state)
{
    (void)state;
    nvipcfix_fd_server_init(&server, &service);
    return nvipcfix_fd_server_start(&server, &pid, &secret);
}

static int teardown(void **state)
{
    (void)state;
    nvipcfix_fd_server_destroy(&server);
    return 0;
}

/* Waits until this process has n descriptors open (the server closes each
 * batch after sending it, so just after an answer it may still hold one). */
static int settle_to(int n)
{
    for (int i = 0; i < 5000 && open_fds() != n; i++)
        usleep(1000);
    return open_fds();
}

static void test_descriptors_arrive(void **state)
{
    (void)state;
    struct got g = {0};
    uint32_t served;
    int before = open_fds();
    assert_int_equal(pid, getpid());
    assert_int_equal(ask(pid, secret, 3, &g, &served), NVIPCFIX_FD_OK);
    assert_true(served == 3 && g.offered == 3 && g.taken == 3 && g.bad == 0);
    assert_int_equal(settle_to(before), before);
    /* more than one batch (the kernel takes 253 per message): neither side
     * holds more than one batch at a time, and nothing stays open */
    memset(&g, 0, sizeof g);
    most_open = 0;
    assert_int_equal(ask(pid, secret, 600, &g, &served), NVIPCFIX_FD_OK);
    assert_true(served == 600 && g.taken == 600 && g.bad == 0);
    assert_true(most_open - before <= 2 * NVIPCFIX_FD_BATCH + 8);
    assert_int_equal(settle_to(before), before);
    assert_int_equal(atomic_load(&server.served), 2);
}

/* The exporter stops handing over part-way (memory freed since): the
 * asking side gets what came before, and knows how much. */
static void test_fewer_than_offered(void **state)
{
    (void)state;
    struct got g = {0};
    uint32_t served;
    assert_int_equal(ask(pid, secret, 1000 + 260, &g, &served), NVIPCFIX_FD_OK);
    assert_true(g.offered == 265 && served == 260 && g.taken == 260 && g.bad == 0);
    memset(&g, 0, sizeof g);
    assert_int_equal(ask(pid, secret, 1000 + 0, &g, &served), NVIPCFIX_FD_FREED);
    assert_int_equal(g.taken, 0);
}

/* The asking side gives up part-way: nothing is left open on either side. */
static void test_taker_stops(void **state)
{
    (void)state;
    struct got g = {.stop_after = 10};
    uint32_t served;
    assert_int_equal(ask(pid, secret, 600, &g, &served), NVIPCFIX_FD_BROKEN);
    assert_int_equal(g.taken, NVIPCFIX_FD_BATCH);
}

static void test_exporter_answers_pass_through(void **state)
{
    (void)state;
    struct got g = {0};
    uint32_t served;
    assert_int_equal(ask(pid, secret, 0, &g, &served), NVIPCFIX_FD_UNKNOWN);
    assert_int_equal(g.offered, 0);
}

static void test_wrong_secret_or_pid_finds_nobody(void **state)
{
    (void)state;
    struct got g = {0};
    uint32_t served;
    assert_int_equal(ask(pid, secret ^ 1, 3, &g, &served), NVIPCFIX_FD_NO_EXPORTER);
    assert_int_equal(ask(pid + 100000, secret, 3, &g, &served), NVIPCFIX_FD_NO_EXPORTER);
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
    struct got g = {0};
    uint32_t served;
    assert_int_equal(ask(other, 0x5eed, 3, &g, &served), NVIPCFIX_FD_IMPOSTOR);
    assert_int_equal(g.offered, 0);
    close(fd);
    kill(other, SIGKILL);
    waitpid(other, NULL, 0);
}

/* Another user is refused; root may ask (it could take them anyway). */
static void test_other_user_refused(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip_because("needs root to act as another user");
    pid_t child = fork();
    if (child == 0) {
        struct got g = {0};
        uint32_t served;
        if (setuid(65534) != 0)
            _exit(10);
        _exit(ask(pid, secret, 3, &g, &served));
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
    skip_because("ThreadSanitizer cannot start threads after a multi-threaded fork");
#endif
    const char *runner = getenv("TEST_PROGRAM_RUNNER");
    if (runner != NULL && runner[0] != '\0')
        skip_because("qemu-user aborts on threads started after a multi-threaded fork");
    pid_t child = fork();
    if (child == 0) {
        pid_t p2;
        uint64_t s2;
        struct got g = {0};
        uint32_t served;
        nvipcfix_fd_server_forget(&server);
        if (nvipcfix_fd_server_start(&server, &p2, &s2) != 0 || p2 != getpid())
            _exit(1);
        if (ask(p2, s2, 2, &g, &served) != NVIPCFIX_FD_OK || served != 2)
            _exit(2);
        if (ask(pid, secret, 2, &g, &served) != NVIPCFIX_FD_OK)
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
    struct got g = {0};
    uint32_t served;
    nvipcfix_fd_server_stop(&server);
    assert_int_not_equal(ask(pid, secret, 3, &g, &served), NVIPCFIX_FD_OK);
    assert_int_equal(g.taken, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_descriptors_arrive),
        cmocka_unit_test(test_fewer_than_offered),
        cmocka_unit_test(test_taker_stops),
        cmocka_unit_test(test_exporter_answers_pass_through),
        cmocka_unit_test(test_wrong_secret_or_pid_finds_nobody),
        cmocka_unit_test(test_impostor_is_noticed),
        cmocka_unit_test(test_other_user_refused),
        cmocka_unit_test(test_fork_child_serves_itself),
        cmocka_unit_test(test_stopped_server_answers_nobody),
    };
    return cmocka_run_group_tests_name("fd_channel", tests, setup, teardown);
}
