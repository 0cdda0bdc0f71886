/* Unit tests of shim/fd_channel.c: descriptors handed over a Unix socket
 * only to a client that proves it holds the export's secret, only by a
 * server that proves the same, within one deadline, whole or not at all.
 * Hostile peers are played here: a same-user process without the secret,
 * a replayed proof, a squatter on the name (same user, another user), idle
 * and dripping connections, a server that never answers, malformed
 * batches. */
#include <setjmp.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "../common/unit_skip.h"
#include "../common/test_process.h"

#include "../../shim/fd_channel.h"

#define SERVER_MS 1500 /* the server's deadline per client */

/* Export id N offers N descriptors, item i a memfd holding the byte i;
 * id 0 is unknown; id 1000 + N offers N + 5 but makes only N. Export N's
 * secret is bytes N*7+i. */
#define PAUSE_ID 77 /* offers 3, and pauses with them open (pause_side) */

static uint32_t offered(uint32_t id)
{
    return id == PAUSE_ID ? 3 : id >= 1000 ? id - 1000 + 5 : id;
}

/* Where export PAUSE_ID's answer stops with descriptors open until told
 * to go on: 1 the exporter's side, before making the third (the first two
 * held by the channel); 2 the asking side, in take. */
static atomic_int pause_side;
static int paused[2], go_on[2];

static void pause_here(int side)
{
    char c = 'p';
    struct pollfd p = {go_on[0], POLLIN, 0};
    if (atomic_load(&pause_side) != side)
        return;
    assert_int_equal(tp_write_full(paused[1], &c, 1), 0);
    assert_int_equal(poll(&p, 1, 10000), 1);
    assert_int_equal(tp_read_full(go_on[0], &c, 1), 0);
}

static void key_of(uint32_t id, unsigned char key[16])
{
    for (int i = 0; i < 16; i++)
        key[i] = (unsigned char)(id * 7 + (uint32_t)i);
}

static int secret(void *arg, uint32_t id, unsigned char key[16])
{
    (void)arg;
    if (id == 0)
        return -1;
    key_of(id, key);
    return 0;
}

static void describe(void *arg, uint32_t id, struct nvipcfix_fd_reply *out)
{
    (void)arg;
    uint32_t n = offered(id);
    out->sizes = calloc(n, sizeof *out->sizes);
    out->offsets = calloc(n, sizeof *out->offsets);
    for (uint32_t i = 0; i < n; i++) {
        out->sizes[i] = 4096 + i;
        out->offsets[i] = 8192 * (uint64_t)i;
    }
    out->n = n;
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

static uint32_t export_fds(void *arg, uint32_t id, uint32_t first, uint32_t count, int *fds,
                           int32_t *driver_error)
{
    (void)arg;
    (void)driver_error;
    uint32_t give = id == PAUSE_ID ? 3 : id >= 1000 ? id - 1000 : id, k = 0;
    if (id == PAUSE_ID && first == 2)
        pause_here(1); /* the first two made and held by the channel */
    for (uint32_t i = first; i < first + count && i < give; i++, k++) {
        unsigned char b = (unsigned char)i;
        fds[k] = memfd_create("fd-channel-test", MFD_CLOEXEC);
        assert_true(fds[k] >= 0 && write(fds[k], &b, 1) == 1);
    }
    if (open_fds() > most_open)
        most_open = open_fds();
    return k;
}

static const struct nvipcfix_fd_service service = {secret, describe, export_fds, NULL};

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
        g->bad += offer->sizes[i] != 4096 + i || offer->offsets[i] != 8192 * (uint64_t)i;
    return 0;
}

static int take(void *arg, uint32_t first, int *fds, uint32_t k, int *why)
{
    struct got *g = arg;
    (void)why;
    if (g->offered == 3)
        pause_here(2);
    for (uint32_t j = 0; j < k; j++) {
        unsigned char b = 0xff;
        g->bad += first + j != g->taken || pread(fds[j], &b, 1, 0) != 1 ||
                  b != (unsigned char)(first + j);
        nvipcfix_fd_close(&fds[j]);
        g->taken++;
    }
    return g->stop_after > 0 && g->taken >= (uint32_t)g->stop_after;
}

static struct nvipcfix_fd_server server;
static struct nvipcfix_fd_address addr;
static char dir[64];

static int ask_with(const struct nvipcfix_fd_address *to, uint32_t id,
                    const unsigned char key[16], int ms, struct got *g)
{
    struct nvipcfix_fd_taker t = {begin, take, g};
    int32_t err;
    return nvipcfix_fd_request(to, dir, id, key, ms, &t, &err);
}

static int ask(uint32_t id, struct got *g)
{
    unsigned char key[16];
    key_of(id, key);
    return ask_with(&addr, id, key, 5000, g);
}

static uint32_t pid_ns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint32_t)st.st_ino : 0;
}

static int start(struct nvipcfix_fd_server *s, const char *in)
{
    char why[256];
    nvipcfix_fd_server_init(s, &service);
    return nvipcfix_fd_server_start(s, in, SERVER_MS, pid_ns(), &addr, why, sizeof why);
}

static int setup(void **state)
{
    (void)state;
    return start(&server, NULL);
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

/* Descriptors open once the server has closed every client's socket. */
static int quiet_fds(void)
{
    for (int i = 0; i < 5000 && atomic_load(&server.clients) > 0; i++)
        usleep(1000);
    return open_fds();
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* ---- the wire, as a hostile peer writes it ------------------------------ */

struct wire_request {
    uint32_t magic, version, export_id, zero;
    unsigned char nonce[16];
};
struct wire_hello {
    uint32_t magic;
    int32_t status;
    unsigned char nonce[16], proof[16];
};
struct wire_head {
    uint32_t magic;
    int32_t status, driver_error;
    uint32_t n;
};
struct wire_batch {
    uint32_t tag;
    int32_t status, driver_error;
};

static int dial(const struct nvipcfix_fd_address *a)
{
    struct sockaddr_un sa;
    socklen_t len = nvipcfix_fd_sockaddr(a, dir, &sa);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, len) == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

/* A listening socket on the name of a made-up server of this process. */
static int bind_as(const struct nvipcfix_fd_address *a)
{
    struct sockaddr_un sa;
    socklen_t len = nvipcfix_fd_sockaddr(a, dir, &sa);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, len) != 0 || listen(fd, 8) != 0)
        return -1;
    return fd;
}

/* A raw client without the secret: the request, the server's hello, a
 * proof it made up (or the one given); the status answered, and whether
 * any descriptor came. */
static int raw_exchange(uint32_t id, const unsigned char nonce[16], const unsigned char *proof,
                        struct wire_hello *hello, int *fds_came)
{
    struct wire_request q = {0x71766e4du, 2, id, 0, {0}};
    struct wire_head h = {0};
    unsigned char made_up[16];
    memcpy(q.nonce, nonce, 16);
    int fd = dial(&addr);
    assert_true(fd >= 0);
    assert_int_equal(tp_write_full(fd, &q, sizeof q), 0);
    assert_int_equal(tp_read_full(fd, hello, sizeof *hello), 0);
    assert_int_equal(getrandom(made_up, sizeof made_up, 0), 16);
    assert_int_equal(tp_write_full(fd, proof != NULL ? proof : made_up, 16), 0);
    assert_int_equal(tp_read_full(fd, &h, sizeof h), 0);
    char byte[64];
    union {
        char buf[CMSG_SPACE(64 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {byte, sizeof byte};
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.buf;
    m.msg_controllen = sizeof u.buf;
    *fds_came = h.status == 0 && recvmsg(fd, &m, MSG_CMSG_CLOEXEC) > 0 && m.msg_controllen > 0;
    for (struct cmsghdr *c = *fds_came ? CMSG_FIRSTHDR(&m) : NULL; c != NULL;
         c = CMSG_NXTHDR(&m, c))
        for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
            int one;
            memcpy(&one, CMSG_DATA(c) + i * sizeof(int), sizeof one);
            close(one);
        }
    close(fd);
    return h.status;
}

/* ---- what the exporter hands over ---------------------------------------- */

static void test_descriptors_arrive(void **state)
{
    (void)state;
    struct got g = {0};
    int before = quiet_fds();
    assert_int_equal(addr.pid, getpid());
    assert_int_equal(ask(3, &g), NVIPCFIX_FD_OK);
    assert_true(g.offered == 3 && g.taken == 3 && g.bad == 0);
    assert_int_equal(settle_to(before), before);
    /* more than one batch (the kernel takes 253 per message): neither side
     * holds more than one batch at a time, and nothing stays open */
    memset(&g, 0, sizeof g);
    most_open = 0;
    assert_int_equal(ask(600, &g), NVIPCFIX_FD_OK);
    assert_true(g.taken == 600 && g.bad == 0);
    assert_true(most_open - before <= 2 * NVIPCFIX_FD_BATCH + 8);
    assert_int_equal(settle_to(before), before);
    assert_int_equal(atomic_load(&server.served), 2);
}

/* The exporter cannot make every descriptor it offered (memory freed
 * since): the answer is an error, not a shorter success. */
static void test_fewer_than_offered_is_an_error(void **state)
{
    (void)state;
    struct got g = {0};
    int before = quiet_fds();
    assert_int_equal(ask(1000 + 260, &g), NVIPCFIX_FD_FREED);
    assert_true(g.offered == 265 && g.taken == NVIPCFIX_FD_BATCH && g.bad == 0);
    memset(&g, 0, sizeof g);
    assert_int_equal(ask(1000 + 0, &g), NVIPCFIX_FD_FREED);
    assert_int_equal(g.taken, 0);
    assert_int_equal(settle_to(before), before);
}

/* The asking side gives up part-way: nothing is left open on either side. */
static void test_taker_stops(void **state)
{
    (void)state;
    struct got g = {.stop_after = 10};
    int before = quiet_fds();
    assert_int_equal(ask(600, &g), NVIPCFIX_FD_BROKEN);
    assert_int_equal(g.taken, NVIPCFIX_FD_BATCH);
    assert_int_equal(settle_to(before), before);
}

static void test_unknown_export(void **state)
{
    (void)state;
    struct got g = {0};
    assert_int_equal(ask(0, &g), NVIPCFIX_FD_UNKNOWN);
    assert_int_equal(g.offered, 0);
}

/* ---- only the secret grants ---------------------------------------------- */

/* A process that read the name (it is public) and guesses ids and secrets:
 * the server's proof does not check out, the client never answers it, and
 * nothing is handed over. */
static void test_guessed_secrets_get_nothing(void **state)
{
    (void)state;
    struct got g = {0};
    unsigned char key[16];
    unsigned long served = atomic_load(&server.served);
    key_of(3, key);
    key[15] ^= 1;
    assert_int_equal(ask_with(&addr, 3, key, 5000, &g), NVIPCFIX_FD_NO_PROOF);
    for (uint32_t id = 1; id <= 40; id++) {
        assert_int_equal(getrandom(key, sizeof key, 0), 16);
        assert_int_equal(ask_with(&addr, id, key, 5000, &g), NVIPCFIX_FD_NO_PROOF);
    }
    assert_true(g.offered == 0 && g.taken == 0);
    assert_int_equal(atomic_load(&server.served), served);
}

/* A raw client that answers the challenge with anything but the right
 * proof is refused and gets no descriptor; a proof from an earlier
 * exchange (replayed) does not fit a new one. */
static void test_wrong_or_replayed_proof_refused(void **state)
{
    (void)state;
    unsigned char nonce[16] = {1, 2, 3}, key[16], right[16];
    struct wire_hello h;
    int came;
    unsigned long refused = atomic_load(&server.refused);
    int before = quiet_fds();
    assert_int_equal(raw_exchange(3, nonce, NULL, &h, &came), NVIPCFIX_FD_REFUSED);
    assert_false(came);
    assert_int_equal(atomic_load(&server.refused), refused + 1);
    /* with the secret, the proof for this exchange works... */
    key_of(3, key);
    struct wire_request q = {0x71766e4du, 2, 3, 0, {1, 2, 3}};
    int fd = dial(&addr);
    assert_int_equal(tp_write_full(fd, &q, sizeof q), 0);
    assert_int_equal(tp_read_full(fd, &h, sizeof h), 0);
    nvipcfix_fd_proof(key, 'C', 3, nonce, h.nonce, &addr, right);
    close(fd);
    /* ...and only for it: the server's nonce is new in the next one */
    assert_int_equal(raw_exchange(3, nonce, right, &h, &came), NVIPCFIX_FD_REFUSED);
    assert_false(came);
    /* the server's proof is not the client's: reflecting it fails too */
    assert_int_equal(raw_exchange(3, nonce, h.proof, &h, &came), NVIPCFIX_FD_REFUSED);
    assert_int_equal(settle_to(before), before);
}

/* Another user is refused at once, even with the secret (root may ask). */
static void test_other_user_refused(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip_because("needs root to act as another user");
    unsigned long refused = atomic_load(&server.refused);
    pid_t child = fork();
    if (child == 0) {
        struct got g = {0};
        if (setuid(65534) != 0)
            _exit(100);
        _exit(ask(3, &g));
    }
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), NVIPCFIX_FD_REFUSED);
    assert_int_equal(atomic_load(&server.refused), refused + 1);
}

/* ---- a squatter on the exporter's name ----------------------------------- */

/* A child that listens on the name of a made-up server of this user's and
 * answers every client with a hello that proves nothing (and would send
 * descriptors after it). uid: the user it runs as (-1: this one). */
static pid_t squatter(int uid, struct nvipcfix_fd_address *a)
{
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t child = fork();
    if (child == 0) {
        struct nvipcfix_fd_address mine = {geteuid(), getpid(), pid_ns(), 0x5eed, 0};
        if (uid >= 0 && setuid((uid_t)uid) != 0)
            _exit(1);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = bind_as(&mine);
        if (fd < 0 || tp_write_full(ready[1], &mine, sizeof mine) != 0)
            _exit(2);
        for (;;) {
            int c = accept(fd, NULL, NULL);
            struct wire_request q;
            struct wire_hello h = {0x68766e4du, 0, {7}, {9}};
            if (c >= 0 && tp_read_full(c, &q, sizeof q) == 0)
                tp_write_full(c, &h, sizeof h);
            if (c >= 0)
                close(c);
        }
    }
    close(ready[1]);
    assert_int_equal(tp_read_full(ready[0], a, sizeof *a), 0);
    close(ready[0]);
    return child;
}

static void kill_child(pid_t child)
{
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
}

/* A process of this user on the name (an exporter's, after it exited)
 * cannot prove it made the ticket: nothing is taken from it. */
static void test_squatter_of_this_user(void **state)
{
    (void)state;
    struct nvipcfix_fd_address fake;
    pid_t child = squatter(-1, &fake);
    struct got g = {0};
    unsigned char key[16];
    key_of(3, key);
    assert_int_equal(ask_with(&fake, 3, key, 5000, &g), NVIPCFIX_FD_NO_PROOF);
    assert_true(g.offered == 0 && g.taken == 0);
    kill_child(child);
}

/* Another user on the name (pid reused, name taken): refused before a
 * byte is sent to it. */
static void test_squatter_of_another_user(void **state)
{
    (void)state;
    if (geteuid() != 0)
        skip_because("needs root to act as another user");
    struct nvipcfix_fd_address fake;
    pid_t child = squatter(65534, &fake);
    struct got g = {0};
    unsigned char key[16];
    key_of(3, key);
    assert_int_equal(ask_with(&fake, 3, key, 5000, &g), NVIPCFIX_FD_WRONG_USER);
    assert_int_equal(g.offered, 0);
    kill_child(child);
}

/* ---- liveness --------------------------------------------------------------- */

/* A child holding idle connections to the server and one that drips a
 * byte every 100 ms (as another user when root: 70 of them; else this
 * user's, fewer than the server's client threads). */
static pid_t hostile_neighbour(int *holding)
{
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    int other = geteuid() == 0;
    *holding = other ? 70 : NVIPCFIX_FD_CLIENTS - 4;
    pid_t child = fork();
    if (child == 0) {
        int fds[72], n = *holding;
        if (other && setuid(65534) != 0)
            _exit(1);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        for (int i = 0; i < n; i++)
            fds[i] = dial(&addr); /* held open, never written */
        (void)fds;
        int drip = dial(&addr);
        tp_write_full(ready[1], "r", 1);
        for (int i = 0;; i++) {
            char b = (char)i;
            usleep(100 * 1000);
            if (drip >= 0 && write(drip, &b, 1) < 0) {
                close(drip);
                drip = dial(&addr); /* dropped at its deadline: again */
            }
        }
    }
    char r;
    close(ready[1]);
    assert_int_equal(tp_read_full(ready[0], &r, 1), 0);
    close(ready[0]);
    return child;
}

/* Idle and dripping connections delay nobody: a client's answer comes
 * within its deadline (the request's own, here 5 s). */
static void test_hostile_connections_delay_nobody(void **state)
{
    (void)state;
    int holding;
    pid_t child = hostile_neighbour(&holding);
    for (int round = 0; round < 3; round++) {
        struct got g = {0};
        double t0 = now_ms();
        assert_int_equal(ask(5, &g), NVIPCFIX_FD_OK);
        assert_int_equal(g.taken, 5);
        print_message("[ INFO     ] %d idle connections and a dripping one (%s): an answer in "
                      "%.1f ms\n", holding, geteuid() == 0 ? "another user" : "this user",
                      now_ms() - t0);
        usleep(SERVER_MS * 1000 / 2); /* the dripping one is dropped and comes back */
    }
    kill_child(child);
}

/* A server that never answers: the request ends at its deadline. */
static void test_silent_server_times_out(void **state)
{
    (void)state;
    struct nvipcfix_fd_address fake = {geteuid(), getpid(), pid_ns(), 0x51e47, 0};
    int fd = bind_as(&fake);
    assert_true(fd >= 0);
    struct got g = {0};
    unsigned char key[16] = {0};
    double t0 = now_ms();
    assert_int_equal(ask_with(&fake, 3, key, 300, &g), NVIPCFIX_FD_TIMEOUT);
    double took = now_ms() - t0;
    print_message("[ INFO     ] silent server: gave up after %.1f ms (deadline 300)\n", took);
    assert_true(took >= 290);
    close(fd);
}

/* ---- malformed answers ------------------------------------------------------ */

/* Sends len bytes of buf with n new memfds attached (then closed here). */
static int send_with_fds(int c, const void *buf, size_t len, int n)
{
    int fds[253];
    for (int i = 0; i < n; i++)
        fds[i] = memfd_create("malformed", MFD_CLOEXEC);
    struct iovec iov = {(void *)buf, len};
    union {
        char buf[CMSG_SPACE(253 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (n > 0) {
        m.msg_control = u.buf;
        m.msg_controllen = CMSG_SPACE(n * sizeof(int));
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(n * sizeof(int));
        memcpy(CMSG_DATA(cm), fds, n * sizeof(int));
    }
    ssize_t k = sendmsg(c, &m, MSG_NOSIGNAL);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    return k == (ssize_t)len ? 0 : -1;
}

/* A server that knows the secret of export 5 and proves it, offers 5
 * descriptors, then sends one malformed batch: 'F' with 3, 'E' with 2,
 * 'E' with 7 (more than offered), an unknown tag with 5, an error ('X')
 * with 5, 'E' with 253 (the most one message carries); or (how 6)
 * descriptors on its hello, on the offer's head and in its sizes, then a
 * right batch: the stray ones must be dropped and the answer taken. */
static void serve_malformed(int fd, const struct nvipcfix_fd_address *me, int how)
{
    static const struct {
        char tag;
        int n;
    } bad[7] = {{'F', 3}, {'E', 2}, {'E', 7}, {'Q', 5}, {'X', 5}, {'E', 253}, {'E', 5}};
    int stray = how == 6 ? 4 : 0;
    int c = accept(fd, NULL, NULL);
    struct wire_request q;
    struct wire_hello h = {0x68766e4du, 0, {42}, {0}};
    unsigned char key[16], proof[16];
    key_of(5, key);
    if (c < 0 || tp_read_full(c, &q, sizeof q) != 0)
        _exit(1);
    nvipcfix_fd_proof(key, 'S', 5, q.nonce, h.nonce, me, h.proof);
    struct wire_head head = {0x72766e4du, 0, 0, 5};
    uint64_t sizes[5] = {4096, 4097, 4098, 4099, 4100}, offsets[5] = {0, 8192, 16384, 24576,
                                                                        32768};
    if (send_with_fds(c, &h, sizeof h, stray) != 0 || tp_read_full(c, proof, sizeof proof) != 0 ||
        send_with_fds(c, &head, sizeof head, stray) != 0 ||
        send_with_fds(c, sizes, sizeof sizes, stray) != 0 ||
        tp_write_full(c, offsets, sizeof offsets) != 0)
        _exit(2);
    struct wire_batch b = {(uint32_t)bad[how].tag, 0, 0};
    if (send_with_fds(c, &b, sizeof b, bad[how].n) != 0)
        _exit(3);
    char end;
    read(c, &end, 1); /* until the client hangs up */
    _exit(0);
}

/* A made-up server in a child, on a name of its own (nonce), serving with
 * serve(its socket, its address, how); its address into *fake. */
static pid_t fake_server(uint32_t nonce,
                         void (*serve)(int, const struct nvipcfix_fd_address *, int), int how,
                         struct nvipcfix_fd_address *fake)
{
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    pid_t child = fork();
    if (child == 0) {
        struct nvipcfix_fd_address me = {geteuid(), getpid(), pid_ns(), nonce, 0};
        int fd = bind_as(&me);
        if (fd < 0 || tp_write_full(ready[1], &me, sizeof me) != 0)
            _exit(8);
        serve(fd, &me, how);
    }
    assert_true(child > 0);
    close(ready[1]);
    assert_int_equal(tp_read_full(ready[0], fake, sizeof *fake), 0);
    close(ready[0]);
    return child;
}

static void test_malformed_batches_leak_nothing(void **state)
{
    (void)state;
    for (int how = 0; how < 7; how++) {
        struct nvipcfix_fd_address fake;
        pid_t child = fake_server(0xbad0 + how, serve_malformed, how, &fake);
        int before = quiet_fds();
        struct got g = {0};
        unsigned char key[16];
        key_of(5, key);
        int st = ask_with(&fake, 5, key, 5000, &g);
        assert_int_equal(st, how == 6 ? NVIPCFIX_FD_OK : NVIPCFIX_FD_BROKEN);
        assert_int_equal(g.taken, how == 6 ? 5 : 0);
        /* every descriptor received was closed; but qemu-user (make
         * test-aarch64) takes a control message whole and hands on what
         * fits, leaving the rest open in the process where a kernel closes
         * it: the 253-descriptor batch is counted natively only */
        const char *runner = getenv("TEST_PROGRAM_RUNNER");
        if (how != 5 || runner == NULL || runner[0] == '\0')
            assert_int_equal(open_fds(), before);
        assert_int_equal(waitpid(child, &st, 0), child);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
}

/* ---- the socket directory ---------------------------------------------------- */

static void test_socket_directory(void **state)
{
    (void)state;
    char why[256], path[128];
    static struct nvipcfix_fd_server in_dir; /* beside the test's server */
    struct nvipcfix_fd_address saved_addr = addr;
    snprintf(dir, sizeof dir, "/tmp/nvipcfix-fd-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    assert_int_equal(nvipcfix_fd_check_dir(dir, why, sizeof why), 0);
    assert_int_equal(start(&in_dir, dir), 0);
    assert_true(addr.in_dir);
    struct got g = {0};
    assert_int_equal(ask(4, &g), NVIPCFIX_FD_OK);
    assert_int_equal(g.taken, 4);
    struct sockaddr_un sa;
    nvipcfix_fd_sockaddr(&addr, dir, &sa);
    snprintf(path, sizeof path, "%s", sa.sun_path);
    assert_int_equal(access(path, F_OK), 0);
    nvipcfix_fd_server_destroy(&in_dir);
    assert_int_not_equal(access(path, F_OK), 0); /* removed at the end */
    /* unsafe directories: open to others, a symbolic link, another owner */
    assert_int_equal(chmod(dir, 0755), 0);
    assert_int_equal(nvipcfix_fd_check_dir(dir, why, sizeof why), -1);
    assert_non_null(strstr(why, "mode 0700"));
    assert_int_equal(start(&in_dir, dir), ENOTDIR);
    nvipcfix_fd_server_destroy(&in_dir);
    assert_int_equal(chmod(dir, 0700), 0);
    snprintf(path, sizeof path, "%s.link", dir);
    assert_int_equal(symlink(dir, path), 0);
    assert_int_equal(nvipcfix_fd_check_dir(path, why, sizeof why), -1);
    assert_non_null(strstr(why, "symbolic link"));
    unlink(path);
    if (geteuid() == 0) {
        assert_int_equal(chown(dir, 65534, 65534), 0);
        assert_int_equal(nvipcfix_fd_check_dir(dir, why, sizeof why), -1);
    }
    rmdir(dir);
    dir[0] = '\0';
    addr = saved_addr;
}

/* ---- fork and stop ------------------------------------------------------------- */

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
        struct nvipcfix_fd_address parent = addr;
        struct got g = {0};
        char why[256];
        nvipcfix_fd_server_forget(&server);
        if (nvipcfix_fd_server_start(&server, NULL, SERVER_MS, pid_ns(), &addr, why,
                                     sizeof why) != 0 ||
            addr.pid != (uint32_t)getpid())
            _exit(1);
        if (ask(2, &g) != NVIPCFIX_FD_OK || g.taken != 2)
            _exit(2);
        addr = parent;
        if (ask(2, &g) != NVIPCFIX_FD_OK)
            _exit(3);
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

/* Memfds of this test's server open in this process. */
static int test_memfds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    for (struct dirent *e; d != NULL && (e = readdir(d)) != NULL;) {
        char path[300], link[256];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, link, sizeof link - 1);
        link[k > 0 ? k : 0] = '\0';
        n += strstr(link, "memfd:fd-channel-test") != NULL;
    }
    if (d != NULL)
        closedir(d);
    return n;
}

static void *ask_paused(void *arg)
{
    struct got *g = arg;
    g->stop_after = ask(PAUSE_ID, g); /* the status, kept here */
    return NULL;
}

/* A fork while another thread holds a batch (made and not yet sent by the
 * exporter, or received and not yet taken): the child, once the library's
 * fork handler ran, holds none of it (it would keep the exporter's memory
 * alive as long as it lives), and the answer still arrives whole. */
static void test_fork_mid_batch_leaves_child_nothing(void **state)
{
    (void)state;
    for (int side = 1; side <= 2; side++) {
        struct got g = {0};
        pthread_t t;
        char c;
        int st;
        assert_int_equal(pipe(paused), 0);
        assert_int_equal(pipe(go_on), 0);
        atomic_store(&pause_side, side);
        assert_int_equal(pthread_create(&t, NULL, ask_paused, &g), 0);
        assert_int_equal(tp_read_full(paused[0], &c, 1), 0);
        /* Only the paused batch open: on the asking side the exporter's
         * thread may still be closing its copies of what it sent, and a
         * descriptor closed while fork() runs can stay open in the child
         * (the kernel copies the descriptor table before the memory that
         * says it is being closed): that window is not what this tests. */
        int held = side == 1 ? 2 : 3;
        for (int ms = 0; test_memfds() != held && ms < 10000; ms++)
            usleep(1000);
        assert_int_equal(test_memfds(), held);
        pid_t child = fork();
        if (child == 0) {
            nvipcfix_fd_server_forget(&server); /* what the library does in a child */
            _exit(test_memfds());
        }
        assert_int_equal(waitpid(child, &st, 0), child);
        assert_int_equal(tp_write_full(go_on[1], "g", 1), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        atomic_store(&pause_side, 0);
        print_message("[ INFO     ] fork while the %s held a batch: the child kept %d of it\n",
                      side == 1 ? "exporter" : "asking side", WEXITSTATUS(st));
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
        assert_int_equal(g.stop_after, NVIPCFIX_FD_OK);
        assert_int_equal(g.taken, 3);
        for (int i = 0; i < 2; i++) {
            close(paused[i]);
            close(go_on[i]);
        }
    }
}

/* At exit the server stops: idle clients (each would hold its thread for
 * a minute here) are cut short, and every thread of the server has ended
 * when stop returns, so none is still ending while the process exits. */
/* ---- kept connections ---------------------------------------------------- */

static int ask_kept(uint32_t id, const unsigned char key[16], int ms, struct got *g)
{
    struct nvipcfix_fd_taker t = {begin, take, g};
    int32_t err;
    return nvipcfix_fd_request_kept(&addr, dir, id, key, ms, &t, &err);
}

/* One connection serves a client's requests one after another, each
 * proving its own export's secret, each after the first in one round trip
 * (its proof with the request): a wrong one gets nothing, and ends it. */
static void test_kept_connection_proves_every_request(void **state)
{
    (void)state;
    unsigned char key[16];
    unsigned long was = atomic_load(&server.connections), served = atomic_load(&server.served);
    unsigned long one_trip = atomic_load(&server.one_trip);
    unsigned long refused = atomic_load(&server.refused);
    for (uint32_t id = 4; id <= 6; id++) {
        struct got g = {0};
        key_of(id, key);
        assert_int_equal(ask_kept(id, key, 5000, &g), NVIPCFIX_FD_OK);
        assert_true(g.taken == id && g.bad == 0);
    }
    assert_int_equal(atomic_load(&server.connections) - was, 1);
    assert_int_equal(atomic_load(&server.one_trip) - one_trip, 2);
    struct got g = {0};
    key_of(8, key); /* export 7's secret is another: refused before the server proves it */
    assert_int_equal(ask_kept(7, key, 5000, &g), NVIPCFIX_FD_REFUSED);
    assert_int_equal(g.taken, 0);
    assert_int_equal(atomic_load(&server.refused) - refused, 1);
    key_of(7, key);
    assert_int_equal(ask_kept(7, key, 5000, &g), NVIPCFIX_FD_OK);
    assert_int_equal(g.taken, 7);
    assert_int_equal(atomic_load(&server.connections) - was, 2); /* anew after the refusal */
    assert_int_equal(atomic_load(&server.served) - served, 4);
}

/* ---- one round trip on a kept connection, on the wire ---------------------- */

#define WIRE_KEEP_NEXT 3u /* REQUEST_KEEP | REQUEST_NEXT */
#define WIRE_PROVEN 4u
#define WIRE_HELLO 0x68766e4du
#define WIRE_HELLO_NEXT 0x6e766e4du

struct wire_hello_next {
    struct wire_hello h;
    unsigned char next[16];
};

/* The answer after a hello: its status, and (OK) how many descriptors came,
 * each closed. -1: the connection ended first. */
static int read_answer(int fd, uint32_t *fds_came)
{
    struct wire_head h;
    *fds_came = 0;
    if (tp_read_full(fd, &h, sizeof h) != 0)
        return -1;
    if (h.status != 0)
        return h.status;
    uint64_t places[2 * 64];
    assert_true(h.n <= 64);
    assert_int_equal(tp_read_full(fd, places, 2 * h.n * sizeof(uint64_t)), 0);
    for (char tag = 'F'; tag == 'F';) {
        struct wire_batch b;
        union {
            char buf[CMSG_SPACE(64 * sizeof(int))];
            struct cmsghdr align;
        } u;
        struct iovec iov = {&b, sizeof b};
        struct msghdr m = {0};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = u.buf;
        m.msg_controllen = sizeof u.buf;
        ssize_t k = recvmsg(fd, &m, MSG_CMSG_CLOEXEC);
        assert_true(k > 0);
        if ((size_t)k < sizeof b)
            assert_int_equal(tp_read_full(fd, (char *)&b + k, sizeof b - (size_t)k), 0);
        for (struct cmsghdr *c = m.msg_controllen > 0 ? CMSG_FIRSTHDR(&m) : NULL; c != NULL;
             c = CMSG_NXTHDR(&m, c))
            for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
                int one;
                memcpy(&one, CMSG_DATA(c) + i * sizeof(int), sizeof one);
                close(one);
                (*fds_came)++;
            }
        tag = (char)b.tag;
    }
    return 0;
}

/* A request for export id on fd, as a client that keeps the connection
 * and takes the nonce for its next request; with proof_over (that nonce
 * from the last hello) its proof goes with it. */
static void send_keep_request(int fd, uint32_t id, const unsigned char nonce[16],
                              const unsigned char *proof_over)
{
    struct {
        struct wire_request q;
        unsigned char proof[16];
    } ask = {{0x71766e4du, 2, id, WIRE_KEEP_NEXT | (proof_over != NULL ? WIRE_PROVEN : 0), {0}},
             {0}};
    unsigned char key[16];
    key_of(id, key);
    memcpy(ask.q.nonce, nonce, 16);
    if (proof_over != NULL)
        nvipcfix_fd_proof(key, 'C', id, nonce, proof_over, &addr, ask.proof);
    assert_int_equal(tp_write_full(fd, &ask, proof_over != NULL ? sizeof ask : sizeof ask.q), 0);
}

/* A new connection and a whole first request for export 3 on it, kept,
 * with the nonce for the next request: its hello into *h. */
static int first_request(const unsigned char nc[16], struct wire_hello_next *h)
{
    unsigned char key[16], proof[16];
    uint32_t came;
    key_of(3, key);
    int fd = dial(&addr);
    assert_true(fd >= 0);
    send_keep_request(fd, 3, nc, NULL);
    assert_int_equal(tp_read_full(fd, h, sizeof *h), 0);
    assert_int_equal(h->h.magic, WIRE_HELLO_NEXT);
    nvipcfix_fd_proof(key, 'C', 3, nc, h->h.nonce, &addr, proof);
    assert_int_equal(tp_write_full(fd, proof, 16), 0);
    assert_int_equal(read_answer(fd, &came), 0);
    assert_int_equal(came, 3);
    return fd;
}

/* The server's side of the one round trip: each hello gives the nonce for
 * the next request, which is good for that request only, on that
 * connection only, and only with the right proof; the server proves
 * nothing to a request whose proof is wrong. */
static void test_next_nonce_is_good_once(void **state)
{
    (void)state;
    unsigned char key[16], nc[16] = {9, 9, 9}, want[16];
    struct wire_hello_next h, h2;
    uint32_t came;
    key_of(3, key);
    int before = quiet_fds();
    unsigned long refused = atomic_load(&server.refused);
    unsigned long one_trip = atomic_load(&server.one_trip);
    /* the first request: a whole exchange, and the nonce for the next */
    int fd = first_request(nc, &h);
    /* the next: the proof over the given nonce goes with the request, and
     * the server's proof over it comes back with the answer */
    nc[0] = 10;
    send_keep_request(fd, 3, nc, h.next);
    assert_int_equal(tp_read_full(fd, &h2, sizeof h2), 0);
    assert_int_equal(h2.h.magic, WIRE_HELLO_NEXT);
    assert_int_equal(h2.h.status, 0);
    nvipcfix_fd_proof(key, 'S', 3, nc, h.next, &addr, want);
    assert_memory_equal(h2.h.proof, want, 16);
    assert_memory_not_equal(h2.next, h.next, 16);
    assert_int_equal(read_answer(fd, &came), 0);
    assert_int_equal(came, 3);
    assert_int_equal(atomic_load(&server.one_trip) - one_trip, 1);
    /* the same request again (the used nonce): refused, unproven, ended */
    send_keep_request(fd, 3, nc, h.next);
    assert_int_equal(tp_read_full(fd, &h.h, sizeof h.h), 0);
    assert_int_equal(h.h.magic, WIRE_HELLO);
    assert_int_equal(h.h.status, NVIPCFIX_FD_REFUSED);
    const unsigned char zero[16] = {0};
    assert_memory_equal(h.h.proof, zero, 16);
    char b;
    assert_int_equal(read(fd, &b, 1), 0);
    close(fd);
    assert_int_equal(atomic_load(&server.refused) - refused, 1);
    /* a nonce of one connection is nothing on another: the server ends it
     * unanswered (no nonce was given there) */
    fd = dial(&addr);
    assert_true(fd >= 0);
    send_keep_request(fd, 3, nc, h2.next);
    assert_true(read(fd, &b, 1) <= 0); /* end of stream, or reset: the proof was not read */
    close(fd);
    /* a wrong proof with the nonce given: refused before the server proves */
    fd = first_request(nc, &h);
    key[0] ^= 1; /* not export 3's secret */
    struct {
        struct wire_request q;
        unsigned char proof[16];
    } forged = {{0x71766e4du, 2, 3, WIRE_KEEP_NEXT | WIRE_PROVEN, {11}}, {0}};
    nvipcfix_fd_proof(key, 'C', 3, forged.q.nonce, h.next, &addr, forged.proof);
    assert_int_equal(tp_write_full(fd, &forged, sizeof forged), 0);
    assert_int_equal(tp_read_full(fd, &h.h, sizeof h.h), 0);
    assert_int_equal(h.h.status, NVIPCFIX_FD_REFUSED);
    assert_memory_equal(h.h.proof, zero, 16);
    assert_int_equal(read(fd, &b, 1), 0);
    close(fd);
    assert_int_equal(atomic_load(&server.refused) - refused, 2);
    /* a request with its proof that keeps the connection but takes no
     * nonce for the next is answered; the same bytes again get nothing */
    key_of(3, key);
    fd = first_request(nc, &h);
    struct {
        struct wire_request q;
        unsigned char proof[16];
    } keep_only = {{0x71766e4du, 2, 3, 1u /* KEEP */ | WIRE_PROVEN, {12}}, {0}};
    nvipcfix_fd_proof(key, 'C', 3, keep_only.q.nonce, h.next, &addr, keep_only.proof);
    assert_int_equal(tp_write_full(fd, &keep_only, sizeof keep_only), 0);
    assert_int_equal(tp_read_full(fd, &h.h, sizeof h.h), 0);
    assert_int_equal(h.h.magic, WIRE_HELLO);
    assert_int_equal(read_answer(fd, &came), 0);
    assert_int_equal(came, 3);
    assert_int_equal(tp_write_full(fd, &keep_only, sizeof keep_only), 0);
    assert_true(read(fd, &b, 1) <= 0);
    close(fd);
    assert_int_equal(settle_to(before), before);
}

/* A made-up server of export 5 for two requests on one connection, each
 * answered with one descriptor: how 0 as an older nvipcfix (no nonce for
 * the next request: the second is a whole exchange again), 1 one that
 * gives the nonce and reads the second request's proof right after it (a
 * client waiting for a hello first would wait here until its deadline),
 * 2 like 1 but answering the second with a wrong proof and a descriptor,
 * 3 one that gives a nonce to a request that did not ask for one (the
 * client must hang up at once, not wait for the rest of a hello).
 * Exits 0 when the client did as the protocol says. */
static void serve_twice(int fd, const struct nvipcfix_fd_address *me, int how)
{
    unsigned char key[16], proof[16], want[16], last_next[16];
    struct wire_hello_next h = {{WIRE_HELLO, 0, {42}, {0}}, {43}};
    struct wire_head head = {0x72766e4du, 0, 0, 1};
    uint64_t places[2] = {4096, 0};
    struct wire_batch e = {'E', 0, 0};
    key_of(5, key);
    signal(SIGPIPE, SIG_IGN);
    int c = accept(fd, NULL, NULL);
    for (int round = 0; round < 2; round++) {
        struct wire_request q;
        int proven = how > 0 && round == 1;
        if (c < 0 || tp_read_full(c, &q, sizeof q) != 0)
            _exit(1);
        if (how == 3) { /* 56 bytes where the client expects 40 */
            struct wire_hello_next unasked = {{WIRE_HELLO_NEXT, 0, {42}, {0}}, {43}};
            nvipcfix_fd_proof(key, 'S', 5, q.nonce, unasked.h.nonce, me, unasked.h.proof);
            if (q.zero != 0 || tp_write_full(c, &unasked, sizeof unasked) != 0 ||
                tp_read_full(c, proof, 16) == 0)
                _exit(2);
            _exit(0);
        }
        if ((q.zero & WIRE_KEEP_NEXT) != WIRE_KEEP_NEXT || ((q.zero & WIRE_PROVEN) != 0) != proven)
            _exit(2);
        memcpy(last_next, h.next, 16);
        h.next[0]++;
        if (proven) {
            if (tp_read_full(c, proof, 16) != 0)
                _exit(3);
            nvipcfix_fd_proof(key, 'C', 5, q.nonce, last_next, me, want);
            if (memcmp(proof, want, 16) != 0)
                _exit(4);
            nvipcfix_fd_proof(key, 'S', 5, q.nonce, last_next, me, h.h.proof);
            h.h.proof[0] ^= how == 2;
        } else {
            h.h.nonce[0]++;
            nvipcfix_fd_proof(key, 'S', 5, q.nonce, h.h.nonce, me, h.h.proof);
        }
        h.h.magic = how > 0 ? WIRE_HELLO_NEXT : WIRE_HELLO;
        if (tp_write_full(c, &h, how > 0 ? sizeof h : sizeof h.h) != 0)
            _exit(5);
        if (!proven) {
            nvipcfix_fd_proof(key, 'C', 5, q.nonce, h.h.nonce, me, want);
            if (tp_read_full(c, proof, 16) != 0 || memcmp(proof, want, 16) != 0)
                _exit(6);
        }
        /* the answer to a wrong proof may find the client gone */
        if ((tp_write_full(c, &head, sizeof head) != 0 ||
             tp_write_full(c, places, sizeof places) != 0 ||
             send_with_fds(c, &e, sizeof e, 1) != 0) &&
            !(how == 2 && round == 1))
            _exit(7);
    }
    char end;
    read(c, &end, 1); /* until the client hangs up */
    _exit(0);
}

/* The client's side: on a kept connection it sends its proof with the
 * request when the server gave a nonce for it (and still talks to a server
 * that gives none), takes nothing from an answer whose proof is wrong, and
 * refuses a nonce it did not ask for at once. */
static void test_kept_connection_one_round_trip(void **state)
{
    (void)state;
    for (int how = 0; how < 4; how++) {
        struct nvipcfix_fd_address fake;
        pid_t child = fake_server(0xcafe0 + how, serve_twice, how, &fake);
        nvipcfix_fd_kept_forget(); /* none kept from the tests before: their threads end */
        for (int i = 0; i < 5000 && atomic_load(&server.clients) > 0; i++)
            usleep(1000);
        int before = quiet_fds();
        unsigned char key[16];
        key_of(5, key);
        struct nvipcfix_fd_taker t;
        int st[2] = {-1, -1};
        uint32_t taken[2] = {0, 0};
        double t0 = now_ms(), took = 0;
        for (int round = 0; round < (how == 3 ? 1 : 2); round++) {
            struct got g = {0};
            int32_t err;
            t = (struct nvipcfix_fd_taker){begin, take, &g};
            st[round] = how == 3 ? nvipcfix_fd_request(&fake, dir, 5, key, 3000, &t, &err)
                                 : nvipcfix_fd_request_kept(&fake, dir, 5, key, 3000, &t, &err);
            taken[round] = g.taken;
            took = now_ms() - t0;
        }
        nvipcfix_fd_kept_forget(); /* the client hangs up */
        int status;
        assert_int_equal(waitpid(child, &status, 0), child);
        print_message("[ INFO     ] server %d: statuses %d %d, server's exit %d\n", how, st[0],
                      st[1], WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (how == 3) {
            assert_int_equal(st[0], NVIPCFIX_FD_BROKEN);
            assert_int_equal(taken[0], 0);
            assert_true(took < 1500); /* not the deadline (3 s) */
            assert_int_equal(open_fds(), before);
            continue;
        }
        assert_int_equal(st[0], NVIPCFIX_FD_OK);
        assert_int_equal(taken[0], 1);
        assert_int_equal(st[1], how == 2 ? NVIPCFIX_FD_NO_PROOF : NVIPCFIX_FD_OK);
        assert_int_equal(taken[1], how == 2 ? 0 : 1);
        assert_int_equal(open_fds(), before);
    }
}

/* The server gives up a connection idle too long; the next request
 * connects anew and is answered. */
static void test_kept_connection_given_up_is_replaced(void **state)
{
    (void)state;
    unsigned char key[16];
    struct got g = {0};
    key_of(5, key);
    nvipcfix_fd_kept_forget(); /* none kept from the test before: its thread ends */
    for (int i = 0; i < 5000 && atomic_load(&server.clients) > 0; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&server.clients), 0);
    server.idle_ms = 50; /* no client thread runs now */
    unsigned long was = atomic_load(&server.connections);
    assert_int_equal(ask_kept(5, key, 5000, &g), NVIPCFIX_FD_OK);
    usleep(300 * 1000);
    memset(&g, 0, sizeof g);
    assert_int_equal(ask_kept(5, key, 5000, &g), NVIPCFIX_FD_OK);
    assert_int_equal(g.taken, 5);
    assert_int_equal(atomic_load(&server.connections) - was, 2);
    nvipcfix_fd_kept_forget();
    for (int i = 0; i < 5000 && atomic_load(&server.clients) > 0; i++)
        usleep(1000);
    server.idle_ms = NVIPCFIX_FD_IDLE_MS;
}

/* Every thread of the server held by an idle kept connection (one for
 * each of as many clients): a new client is answered all the same, well
 * within the idle wait, which is cut short for it. */
static void test_kept_connections_delay_nobody(void **state)
{
    (void)state;
    pid_t kids[NVIPCFIX_FD_CLIENTS];
    int ready[2];
    assert_int_equal(pipe(ready), 0);
    nvipcfix_fd_kept_forget();
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++) {
        if ((kids[i] = fork()) == 0) {
            unsigned char key[16];
            struct got g = {0};
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            key_of(4, key);
            char r = ask_kept(4, key, 5000, &g) == NVIPCFIX_FD_OK ? 'r' : 'x';
            tp_write_full(ready[1], &r, 1);
            pause(); /* the connection stays kept, idle */
            _exit(0);
        }
        assert_true(kids[i] > 0);
    }
    close(ready[1]);
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++) {
        char r = 0;
        assert_int_equal(tp_read_full(ready[0], &r, 1), 0);
        assert_int_equal(r, 'r');
    }
    close(ready[0]);
    assert_int_equal(atomic_load(&server.clients), NVIPCFIX_FD_CLIENTS);
    struct got g = {0};
    unsigned char key[16];
    key_of(5, key);
    double t0 = now_ms();
    /* a deadline shorter than the idle wait (5 s): met only if one is cut */
    assert_int_equal(ask_with(&addr, 5, key, NVIPCFIX_FD_IDLE_MS / 2, &g), NVIPCFIX_FD_OK);
    assert_int_equal(g.taken, 5);
    print_message("[ INFO     ] %d idle kept connections: a new client answered in %.1f ms\n",
                  NVIPCFIX_FD_CLIENTS, now_ms() - t0);
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++)
        kill_child(kids[i]);
    for (int i = 0; i < 10000 && atomic_load(&server.clients) > 0; i++)
        usleep(1000);
}

static void test_stopped_server_answers_nobody(void **state)
{
    (void)state;
    struct got g = {0};
    char why[256];
    int idle[8];
    nvipcfix_fd_server_destroy(&server);
    nvipcfix_fd_server_init(&server, &service);
    assert_int_equal(nvipcfix_fd_server_start(&server, NULL, 5 * 60 * 1000, pid_ns(), &addr,
                                              why, sizeof why), 0);
    for (int i = 0; i < 8; i++)
        assert_true((idle[i] = dial(&addr)) >= 0);
    for (int i = 0; i < 5000 && atomic_load(&server.clients) < 8; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&server.clients), 8);
    double t0 = now_ms();
    nvipcfix_fd_server_stop(&server, 30 * 1000);
    double took = now_ms() - t0;
    print_message("[ INFO     ] stop with 8 idle clients: %.1f ms\n", took);
    assert_true(took < 20 * 1000); /* not the clients' deadline (a minute) */
    assert_int_equal(atomic_load(&server.clients), 0);
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++)
        assert_int_equal(atomic_load(&server.slots[i].state), 0); /* every thread joined */
    for (int i = 0; i < 8; i++) {
        char b;
        assert_int_equal(read(idle[i], &b, 1), 0); /* closed by the server, not pending */
        close(idle[i]);
    }
    assert_int_not_equal(ask(3, &g), NVIPCFIX_FD_OK);
    assert_int_equal(g.taken, 0);
}

/* The exporter forks while a kept connection idles on it: once the parent
 * gives the connection up, the client's next request is answered (on a new
 * connection), not left to wait for the child, which held the server's end
 * of it. */
static void test_exporter_fork_leaves_kept_connection_nobody(void **state)
{
    (void)state;
    unsigned char key[16];
    struct got g = {0};
    key_of(5, key);
    nvipcfix_fd_kept_forget();
    for (int i = 0; i < 5000 && atomic_load(&server.clients) > 0; i++)
        usleep(1000);
    atomic_store(&server.idle_ms, 50);
    assert_int_equal(ask_kept(5, key, 5000, &g), NVIPCFIX_FD_OK);
    pid_t kid = fork();
    if (kid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        nvipcfix_fd_server_forget(&server); /* what the atfork child handler does */
        pause();
        _exit(0);
    }
    usleep(300 * 1000); /* the parent's thread gave the kept connection up */
    memset(&g, 0, sizeof g);
    double t0 = now_ms();
    int st = ask_kept(5, key, 2000, &g);
    print_message("[ INFO     ] after the exporter's fork: status %d in %.0f ms\n", st,
                  now_ms() - t0);
    kill_child(kid);
    atomic_store(&server.idle_ms, NVIPCFIX_FD_IDLE_MS);
    assert_int_equal(st, NVIPCFIX_FD_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_descriptors_arrive),
        cmocka_unit_test(test_fewer_than_offered_is_an_error),
        cmocka_unit_test(test_taker_stops),
        cmocka_unit_test(test_unknown_export),
        cmocka_unit_test(test_guessed_secrets_get_nothing),
        cmocka_unit_test(test_wrong_or_replayed_proof_refused),
        cmocka_unit_test(test_other_user_refused),
        cmocka_unit_test(test_squatter_of_this_user),
        cmocka_unit_test(test_squatter_of_another_user),
        cmocka_unit_test(test_hostile_connections_delay_nobody),
        cmocka_unit_test(test_silent_server_times_out),
        cmocka_unit_test(test_malformed_batches_leak_nothing),
        cmocka_unit_test(test_socket_directory),
        cmocka_unit_test(test_fork_child_serves_itself),
        cmocka_unit_test(test_fork_mid_batch_leaves_child_nothing),
        cmocka_unit_test(test_kept_connection_proves_every_request),
        cmocka_unit_test(test_next_nonce_is_good_once),
        cmocka_unit_test(test_kept_connection_one_round_trip),
        cmocka_unit_test(test_kept_connection_given_up_is_replaced),
        cmocka_unit_test(test_exporter_fork_leaves_kept_connection_nobody),
        cmocka_unit_test(test_kept_connections_delay_nobody),
        cmocka_unit_test(test_stopped_server_answers_nobody),
    };
    return cmocka_run_group_tests_name("fd_channel", tests, setup, teardown);
}
