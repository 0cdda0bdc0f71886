#include "fd_channel.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_MAGIC 0x71766e4du /* "Mnvq" */
#define REPLY_MAGIC 0x72766e4du   /* "Mnvr" */
#define FDS_PER_MESSAGE NVIPCFIX_FD_BATCH /* under the kernel's SCM_MAX_FD (253) */
#define SERVER_TIMEOUT_MS 5000    /* a client that stalls cannot hold the server */

struct request {
    uint32_t magic, version;
    uint64_t secret, export_id;
};

struct reply_head {
    uint32_t magic;
    int32_t status, driver_error;
    uint32_t n;
};

void nvipcfix_fd_reply_free(struct nvipcfix_fd_reply *r)
{
    free(r->sizes);
    free(r->offsets);
    r->sizes = NULL;
    r->offsets = NULL;
    r->n = 0;
}

static void close_all(const int *fds, uint32_t k)
{
    for (uint32_t i = 0; i < k; i++)
        close(fds[i]);
}

/* The socket's name: "\0nvipcfix-vmm-PID-SECRET". Returns its length. */
static socklen_t address(struct sockaddr_un *a, pid_t pid, uint64_t secret)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int n = snprintf(a->sun_path + 1, sizeof a->sun_path - 1, "nvipcfix-vmm-%d-%016llx",
                     (int)pid, (unsigned long long)secret);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static void set_timeouts(int fd, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static int send_full(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int recv_full(int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t k = recv(fd, p, n, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* One byte carrying up to FDS_PER_MESSAGE descriptors: 'F' more may
 * follow, 'E' the last batch. */
static int send_fds(int sock, char byte, const int *fds, size_t n)
{
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(FDS_PER_MESSAGE * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (n > 0) {
        m.msg_control = u.buf;
        m.msg_controllen = CMSG_SPACE(n * sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(n * sizeof(int));
        memcpy(CMSG_DATA(c), fds, n * sizeof(int));
    }
    for (;;) {
        ssize_t k = sendmsg(sock, &m, MSG_NOSIGNAL);
        if (k == 1)
            return 0;
        if (k < 0 && errno == EINTR)
            continue;
        return -1;
    }
}

/* Receives one batch: its byte into *tag and up to want descriptors into
 * fds (*got of them). -1 on a broken or surplus batch (all closed). */
static int recv_fds(int sock, char *tag, int *fds, uint32_t *got, uint32_t want)
{
    char byte;
    *got = 0;
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(FDS_PER_MESSAGE * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.buf;
    m.msg_controllen = sizeof u.buf;
    ssize_t k;
    do
        k = recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
    while (k < 0 && errno == EINTR);
    if (k != 1)
        return -1;
    *tag = byte;
    int bad = (m.msg_flags & MSG_CTRUNC) != 0 || (byte != 'F' && byte != 'E');
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *in = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, in + i, sizeof fd);
            if (*got < want)
                fds[(*got)++] = fd;
            else {
                close(fd); /* more than announced */
                bad = 1;
            }
        }
    }
    if (bad) {
        close_all(fds, *got);
        *got = 0;
    }
    return bad ? -1 : 0;
}

/* The offer, then the descriptors batch by batch as they are made: no more
 * than one batch is open here at a time. */
static void send_reply(struct nvipcfix_fd_server *s, int sock, uint64_t id,
                       struct nvipcfix_fd_reply *r)
{
    const struct nvipcfix_fd_service *sv = &s->service;
    int fds[FDS_PER_MESSAGE];
    uint32_t k = 0;
    if (r->status == NVIPCFIX_FD_OK && (r->n == 0 || r->n > NVIPCFIX_FD_MAX))
        r->status = NVIPCFIX_FD_FAILED;
    if (r->status == NVIPCFIX_FD_OK) { /* the first batch decides the status */
        k = sv->export_fds(sv->arg, id, 0, r->n < FDS_PER_MESSAGE ? r->n : FDS_PER_MESSAGE, fds,
                           &r->driver_error);
        if (k == 0)
            r->status = r->driver_error != 0 ? NVIPCFIX_FD_FAILED : NVIPCFIX_FD_FREED;
    }
    struct reply_head h = {REPLY_MAGIC, r->status, r->driver_error,
                           r->status == NVIPCFIX_FD_OK ? r->n : 0};
    int ok = send_full(sock, &h, sizeof h) == 0 && h.n > 0 &&
             send_full(sock, r->sizes, h.n * sizeof(uint64_t)) == 0 &&
             send_full(sock, r->offsets, h.n * sizeof(uint64_t)) == 0;
    if (!ok)
        close_all(fds, k); /* the offer did not go out */
    for (uint32_t first = 0; ok;) {
        uint32_t want = h.n - first < FDS_PER_MESSAGE ? h.n - first : FDS_PER_MESSAGE;
        int last = k < want || first + k == h.n;
        ok = send_fds(sock, last ? 'E' : 'F', fds, k) == 0;
        close_all(fds, k);
        if (last)
            break;
        first += k;
        want = h.n - first < FDS_PER_MESSAGE ? h.n - first : FDS_PER_MESSAGE;
        int32_t unused = 0;
        k = sv->export_fds(sv->arg, id, first, want, fds, &unused);
    }
}

static void serve_one(struct nvipcfix_fd_server *s, int sock)
{
    struct request q;
    struct nvipcfix_fd_reply r = {0};
    struct ucred cred;
    socklen_t len = sizeof cred;
    set_timeouts(sock, SERVER_TIMEOUT_MS);
    if (recv_full(sock, &q, sizeof q) != 0)
        return;
    int same_user = getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
                    (cred.uid == geteuid() || cred.uid == 0);
    if (q.magic != REQUEST_MAGIC || q.version != 1 || q.secret != s->secret || !same_user) {
        r.status = NVIPCFIX_FD_REFUSED;
        atomic_fetch_add(&s->refused, 1);
    } else {
        s->service.describe(s->service.arg, q.export_id, &r);
        atomic_fetch_add(&s->served, 1);
    }
    send_reply(s, sock, q.export_id, &r);
    nvipcfix_fd_reply_free(&r);
}

static void *server_main(void *arg)
{
    struct nvipcfix_fd_server *s = arg;
    int listen_fd = s->fd;
    while (!atomic_load(&s->stopping)) {
        int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE ||
                errno == ENOBUFS || errno == ENOMEM) {
                if (errno != EINTR && errno != ECONNABORTED) {
                    struct timespec pause = {0, 10 * 1000 * 1000};
                    nanosleep(&pause, NULL);
                }
                continue;
            }
            break; /* shut down */
        }
        if (!atomic_load(&s->stopping))
            serve_one(s, c);
        close(c);
    }
    atomic_store(&s->running, 0); /* s is not touched after this */
    return NULL;
}

void nvipcfix_fd_server_init(struct nvipcfix_fd_server *s,
                             const struct nvipcfix_fd_service *service)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->fd = -1;
    s->service = *service;
}

int nvipcfix_fd_server_start(struct nvipcfix_fd_server *s, pid_t *pid, uint64_t *secret)
{
    int err = 0;
    pthread_mutex_lock(&s->lock);
    if (s->fd < 0 && !atomic_load(&s->stopping)) {
        uint64_t sec = 0;
        while (sec == 0)
            if (getrandom(&sec, sizeof sec, 0) != (ssize_t)sizeof sec) {
                err = errno != 0 ? errno : EIO;
                break;
            }
        int fd = err == 0 ? socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
        struct sockaddr_un a;
        socklen_t alen = address(&a, getpid(), sec);
        if (err == 0 && (fd < 0 || bind(fd, (struct sockaddr *)&a, alen) != 0 ||
                         listen(fd, 64) != 0))
            err = errno;
        if (err == 0) {
            s->fd = fd;
            s->pid = getpid();
            s->secret = sec;
            /* The thread takes no signal meant for the program's threads. */
            sigset_t all, old;
            /* Detached: at exit it ends when the socket is shut down, and
             * nothing waits for it. */
            pthread_attr_t attr;
            pthread_t thread;
            sigfillset(&all);
            pthread_sigmask(SIG_SETMASK, &all, &old);
            pthread_attr_init(&attr);
            pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
            atomic_store(&s->running, 1);
            err = pthread_create(&thread, &attr, server_main, s);
            pthread_attr_destroy(&attr);
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            if (err != 0) {
                atomic_store(&s->running, 0);
                s->fd = -1;
            }
        }
        if (err != 0 && fd >= 0)
            close(fd);
    } else if (s->fd < 0)
        err = ESHUTDOWN;
    *pid = s->pid;
    *secret = s->secret;
    pthread_mutex_unlock(&s->lock);
    return err;
}

void nvipcfix_fd_server_stop(struct nvipcfix_fd_server *s)
{
    pthread_mutex_lock(&s->lock);
    atomic_store(&s->stopping, 1);
    if (s->fd >= 0)
        shutdown(s->fd, SHUT_RDWR); /* wakes the thread; the descriptor stays */
    pthread_mutex_unlock(&s->lock);
}

void nvipcfix_fd_server_destroy(struct nvipcfix_fd_server *s)
{
    struct timespec pause = {0, 1000 * 1000};
    nvipcfix_fd_server_stop(s);
    while (atomic_load(&s->running))
        nanosleep(&pause, NULL);
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    pthread_mutex_destroy(&s->lock);
}

void nvipcfix_fd_server_forget(struct nvipcfix_fd_server *s)
{
    if (s->fd >= 0)
        close(s->fd); /* the parent's socket; its thread is not in the child */
    struct nvipcfix_fd_service service = s->service;
    nvipcfix_fd_server_init(s, &service);
}

int nvipcfix_fd_request(pid_t pid, uint64_t secret, uint64_t export_id, int timeout_ms,
                        const struct nvipcfix_fd_taker *taker, uint32_t *served,
                        int32_t *driver_error)
{
    *served = 0;
    *driver_error = 0;
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return NVIPCFIX_FD_BROKEN;
    struct sockaddr_un a;
    socklen_t alen = address(&a, pid, secret);
    set_timeouts(sock, timeout_ms);
    int r;
    do
        r = connect(sock, (struct sockaddr *)&a, alen);
    while (r != 0 && errno == EINTR);
    if (r != 0) {
        int gone = errno == ECONNREFUSED || errno == ENOENT;
        close(sock);
        return gone ? NVIPCFIX_FD_NO_EXPORTER : NVIPCFIX_FD_BROKEN;
    }
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid != pid) {
        close(sock);
        return NVIPCFIX_FD_IMPOSTOR;
    }
    struct request q = {REQUEST_MAGIC, 1, secret, export_id};
    struct reply_head h;
    if (send_full(sock, &q, sizeof q) != 0 || recv_full(sock, &h, sizeof h) != 0 ||
        h.magic != REPLY_MAGIC || h.n > NVIPCFIX_FD_MAX) {
        close(sock);
        return NVIPCFIX_FD_BROKEN;
    }
    if (h.status != NVIPCFIX_FD_OK || h.n == 0) {
        close(sock);
        *driver_error = h.driver_error;
        return h.status >= NVIPCFIX_FD_UNKNOWN && h.status <= NVIPCFIX_FD_FAILED
                   ? h.status
                   : NVIPCFIX_FD_BROKEN;
    }
    struct nvipcfix_fd_reply offer = {h.status, h.driver_error, h.n, NULL, NULL};
    offer.sizes = calloc(h.n, sizeof *offer.sizes);
    offer.offsets = calloc(h.n, sizeof *offer.offsets);
    int status = NVIPCFIX_FD_BROKEN;
    if (offer.sizes != NULL && offer.offsets != NULL &&
        recv_full(sock, offer.sizes, h.n * sizeof(uint64_t)) == 0 &&
        recv_full(sock, offer.offsets, h.n * sizeof(uint64_t)) == 0 &&
        taker->begin(taker->arg, &offer) == 0) {
        int fds[FDS_PER_MESSAGE];
        char tag = 'F';
        while (tag == 'F' && *served < h.n) {
            uint32_t want = h.n - *served < FDS_PER_MESSAGE ? h.n - *served : FDS_PER_MESSAGE;
            uint32_t k = 0;
            if (recv_fds(sock, &tag, fds, &k, want) != 0 || (k < want && tag != 'E'))
                break;
            if (k > 0 && taker->take(taker->arg, *served, fds, k) != 0)
                break;
            *served += k;
        }
        if (tag == 'E' || *served == h.n)
            status = *served > 0 ? NVIPCFIX_FD_OK : NVIPCFIX_FD_FREED;
    }
    nvipcfix_fd_reply_free(&offer);
    close(sock);
    return status;
}
