#include "fd_channel.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_MAGIC 0x71766e4du /* "Mnvq" */
#define HELLO_MAGIC 0x68766e4du   /* "Mnvh" */
#define REPLY_MAGIC 0x72766e4du   /* "Mnvr" */
#define VERSION 2
#define FDS_PER_MESSAGE NVIPCFIX_FD_BATCH /* under the kernel's SCM_MAX_FD (253) */
#define NONCE_BYTES 16
#define HELLO_NEXT_MAGIC 0x6e766e4du /* "Mnvn": a hello with the nonce of the next request */
/* A request's flags: */
#define REQUEST_KEEP 1u   /* the client would send its next request on this connection */
#define REQUEST_NEXT 2u   /* ...and takes the server's nonce for it with this hello */
#define REQUEST_PROVEN 4u /* its proof follows it, over the nonce the last hello gave */

struct request {
    uint32_t magic, version, export_id, flags;
    unsigned char nonce[NONCE_BYTES];
};

struct hello {
    uint32_t magic;
    int32_t status;
    unsigned char nonce[NONCE_BYTES];
    unsigned char proof[NVIPCFIX_TAG_BYTES];
};

/* HELLO_NEXT_MAGIC's: the server's nonce for the client's next request on
 * this connection, good for that one request only. */
struct hello_next {
    struct hello h;
    unsigned char next[NONCE_BYTES];
};

struct reply_head {
    uint32_t magic;
    int32_t status, driver_error;
    uint32_t n;
};

/* The data of each message that carries descriptors: 'F' more follow, 'E'
 * the last, 'X' the answer ends in error (status) without descriptors. */
struct batch {
    uint32_t tag;
    int32_t status, driver_error;
};

void nvipcfix_fd_reply_free(struct nvipcfix_fd_reply *r)
{
    free(r->sizes);
    free(r->offsets);
    r->sizes = NULL;
    r->offsets = NULL;
    r->n = 0;
}

/* ---- descriptors in flight, and fork ---------------------------------------
 * A batch of descriptors is open in a thread for a while (made and sent by
 * the exporter, received and taken by the importer, each as slow as its
 * peer or the driver). A child forked then would keep copies, and with
 * them the exporter's memory, for as long as it lives: so each thread that
 * handles batches registers where it holds them (-1 where none; cleared
 * before a close), with each descriptor's file (device and inode) noted
 * once it is there, and the child closes those still the same file
 * (nvipcfix_fd_server_forget). The kernel copies the descriptor table
 * before the memory, while other threads run: a descriptor made or closed
 * in that instant may be missed (leaked as before), and one not of the
 * noted file is never closed. */
#define IN_FLIGHT_SLOTS 128

struct held_batch {
    int fds[FDS_PER_MESSAGE];
    struct {
        dev_t dev;
        ino_t ino; /* 0: not noted */
    } file[FDS_PER_MESSAGE];
    int slot;
};

static _Atomic(struct held_batch *) in_flight[IN_FLIGHT_SLOTS];

/* Registers h, empty (when every slot is taken a fork may leak it). */
static void hold_batch(struct held_batch *h)
{
    memset(h->file, 0, sizeof h->file);
    for (uint32_t i = 0; i < FDS_PER_MESSAGE; i++)
        h->fds[i] = -1;
    h->slot = -1;
    for (int i = 0; i < IN_FLIGHT_SLOTS && h->slot < 0; i++) {
        struct held_batch *none = NULL;
        if (atomic_compare_exchange_strong(&in_flight[i], &none, h))
            h->slot = i;
    }
}

/* Notes the file of h->fds[i]. */
static void note_batch(struct held_batch *h, uint32_t i)
{
    struct stat st;
    if (h->fds[i] >= 0 && fstat(h->fds[i], &st) == 0) {
        h->file[i].dev = st.st_dev;
        h->file[i].ino = st.st_ino;
    } else
        h->file[i].ino = 0;
}

static void release_batch(struct held_batch *h)
{
    if (h->slot >= 0)
        atomic_store(&in_flight[h->slot], NULL);
}

void nvipcfix_fd_close(int *fd)
{
    /* cleared (a sequentially consistent store) before the close: a child
     * forked meanwhile never closes a number the parent reused */
    int was = __atomic_exchange_n(fd, -1, __ATOMIC_SEQ_CST);
    if (was >= 0)
        close(was);
}

/* Closes fds[0, k), each cleared first. */
static void close_all(int *fds, uint32_t k)
{
    for (uint32_t i = 0; i < k; i++)
        nvipcfix_fd_close(&fds[i]);
}

/* In a child after fork: the batches other threads of the parent held. */
static void close_in_flight(void)
{
    for (int i = 0; i < IN_FLIGHT_SLOTS; i++) {
        struct held_batch *h = atomic_load(&in_flight[i]);
        for (uint32_t j = 0; h != NULL && j < FDS_PER_MESSAGE; j++) {
            struct stat st;
            int fd = h->fds[j];
            if (fd >= 0 && h->file[j].ino != 0 && fstat(fd, &st) == 0 &&
                st.st_dev == h->file[j].dev && st.st_ino == h->file[j].ino)
                close(fd);
        }
        atomic_store(&in_flight[i], NULL);
    }
}

int nvipcfix_fd_at_limit(void)
{
    int fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    return errno == EMFILE || errno == ENFILE;
}

/* ---- one deadline for a whole exchange ---------------------------------- */

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

struct link {
    int fd;
    int64_t deadline; /* CLOCK_MONOTONIC, ms */
    int timed_out;
};

/* Waits until fd is ready for events or the deadline passes (-1). */
static int wait_for(struct link *l, short events)
{
    for (;;) {
        int64_t left = l->deadline - now_ms();
        if (left <= 0) {
            l->timed_out = 1;
            return -1;
        }
        struct pollfd p = {l->fd, events, 0};
        int r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

static int send_all(struct link *l, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t k = send(l->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k < 0 && errno == EINTR)
            continue;
        else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_for(l, POLLOUT) != 0)
                return -1;
        } else
            return -1;
    }
    return 0;
}

static int recv_all(struct link *l, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t k = recv(l->fd, p, n, MSG_DONTWAIT);
        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k < 0 && errno == EINTR)
            continue;
        else if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_for(l, POLLIN) != 0)
                return -1;
        } else
            return -1; /* end of stream or error */
    }
    return 0;
}

static int send_batch(struct link *l, char tag, int32_t status, int32_t driver_error,
                      const int *fds, uint32_t n)
{
    struct batch b = {(uint32_t)tag, status, driver_error};
    struct iovec iov = {&b, sizeof b};
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
        ssize_t k = sendmsg(l->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) /* the descriptors went with the first byte */
            return send_all(l, (char *)&b + k, sizeof b - (size_t)k);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_for(l, POLLOUT) == 0)
            continue;
        return -1;
    }
}

/* Takes the descriptors of a received message: up to want into fds (*got),
 * the rest closed. Nonzero when more came than wanted. */
static int take_rights(struct msghdr *m, int *fds, uint32_t *got, uint32_t want)
{
    int surplus = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *in = CMSG_DATA(c);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, in + i * sizeof fd, sizeof fd);
            if (*got < want)
                fds[(*got)++] = fd;
            else {
                close(fd);
                surplus = 1;
            }
        }
    }
    return surplus;
}

/* Receives one batch into *b and up to want descriptors into fds (*got of
 * them). Returns 0, or a status: BROKEN for a malformed message, the
 * importer's limit when the kernel could not give every descriptor, a
 * timeout. On any error no descriptor is left open. */
static int recv_batch(struct link *l, struct batch *b, int *fds, uint32_t *got, uint32_t want)
{
    struct iovec iov = {b, sizeof *b};
    union {
        char buf[CMSG_SPACE(FDS_PER_MESSAGE * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct msghdr m = {0};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.buf;
    m.msg_controllen = sizeof u.buf;
    *got = 0;
    ssize_t k;
    for (;;) {
        k = recvmsg(l->fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_for(l, POLLIN) == 0)
                continue;
            return l->timed_out ? NVIPCFIX_FD_TIMEOUT : NVIPCFIX_FD_BROKEN;
        }
        break;
    }
    if (k <= 0)
        return NVIPCFIX_FD_BROKEN;
    int bad = take_rights(&m, fds, got, want);
    int status = 0;
    if (m.msg_flags & MSG_CTRUNC) /* descriptors the kernel could not install */
        status = nvipcfix_fd_at_limit() ? NVIPCFIX_FD_IMPORTER_FDS : NVIPCFIX_FD_BROKEN;
    else if (bad || ((size_t)k < sizeof *b &&
                     recv_all(l, (char *)b + k, sizeof *b - (size_t)k) != 0))
        status = l->timed_out ? NVIPCFIX_FD_TIMEOUT : NVIPCFIX_FD_BROKEN;
    if (status != 0) {
        close_all(fds, *got);
        *got = 0;
    }
    return status;
}

/* ---- names and proofs --------------------------------------------------- */

socklen_t nvipcfix_fd_sockaddr(const struct nvipcfix_fd_address *a, const char *dir,
                               struct sockaddr_un *out)
{
    memset(out, 0, sizeof *out);
    out->sun_family = AF_UNIX;
    int n;
    size_t room = sizeof out->sun_path;
    if (a->in_dir) {
        if (dir == NULL || dir[0] == '\0')
            return 0;
        n = snprintf(out->sun_path, room, "%s/nvipcfix-vmm-%u-%u-%u-%08x.sock", dir, a->uid,
                     a->pid_ns, a->pid, a->nonce);
        if (n < 0 || (size_t)n >= room)
            return 0;
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
    }
    n = snprintf(out->sun_path + 1, room - 1, "nvipcfix-vmm-%u-%u-%u-%08x", a->uid, a->pid_ns,
                 a->pid, a->nonce);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

int nvipcfix_fd_check_dir(const char *dir, char *why, size_t n)
{
    struct stat st;
    struct sockaddr_un probe;
    if (strlen(dir) + 64 > sizeof probe.sun_path) {
        snprintf(why, n, "NVIPCFIX_VMM_SOCKET_DIR '%.60s' is too long for a socket's name "
                         "(at most %zu characters)", dir, sizeof probe.sun_path - 64);
        return -1;
    }
    if (lstat(dir, &st) != 0) {
        snprintf(why, n, "NVIPCFIX_VMM_SOCKET_DIR '%s' cannot be used (%s)", dir,
                 strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(why, n, "NVIPCFIX_VMM_SOCKET_DIR '%s' is not a directory (a symbolic link "
                         "is not followed)", dir);
        return -1;
    }
    if (st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
        snprintf(why, n, "NVIPCFIX_VMM_SOCKET_DIR '%s' must be owned by this user (%u) and "
                         "closed to others (mode 0700); it is owned by %u, mode %04o", dir,
                 (unsigned)geteuid(), (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}

/* H(secret; label, export id, both nonces, the server's address). */
void nvipcfix_fd_proof(const unsigned char key[NVIPCFIX_KEY_BYTES], char label, uint32_t id,
                       const unsigned char *nc, const unsigned char *ns,
                       const struct nvipcfix_fd_address *a, unsigned char out[NVIPCFIX_TAG_BYTES])
{
    unsigned char msg[1 + 4 + 2 * NONCE_BYTES + 16 + 1];
    uint32_t words[5] = {id, a->uid, a->pid, a->pid_ns, a->nonce};
    size_t at = 0;
    msg[at++] = (unsigned char)label;
    for (int w = 0; w < 5; w++)
        for (int i = 0; i < 4; i++)
            msg[at++] = (unsigned char)(words[w] >> (8 * i));
    memcpy(msg + at, nc, NONCE_BYTES);
    memcpy(msg + at + NONCE_BYTES, ns, NONCE_BYTES);
    at += 2 * NONCE_BYTES;
    msg[at++] = (unsigned char)(a->in_dir != 0);
    nvipcfix_siphash128(key, msg, at, out);
}

/* ---- the exporter's side ------------------------------------------------- */

/* The offer, then the descriptors batch by batch as they are made: no more
 * than one batch is open here at a time. If one cannot be made, the
 * answer ends in an error that says why. Nonzero when every descriptor
 * offered was sent. */
static int send_reply(struct nvipcfix_fd_server *s, struct link *l, uint32_t id,
                      struct nvipcfix_fd_reply *r)
{
    int whole = 0;
    const struct nvipcfix_fd_service *sv = &s->service;
    struct held_batch held;
    int *fds = held.fds;
    if (r->status == NVIPCFIX_FD_OK && (r->n == 0 || r->n > NVIPCFIX_FD_MAX))
        r->status = NVIPCFIX_FD_FAILED;
    struct reply_head h = {REPLY_MAGIC, r->status, r->driver_error,
                           r->status == NVIPCFIX_FD_OK ? r->n : 0};
    if (send_all(l, &h, sizeof h) != 0 || h.n == 0 ||
        send_all(l, r->sizes, h.n * sizeof(uint64_t)) != 0 ||
        send_all(l, r->offsets, h.n * sizeof(uint64_t)) != 0)
        return 0;
    hold_batch(&held);
    for (uint32_t first = 0; first < h.n && !atomic_load(&s->stopping);) {
        uint32_t want = h.n - first < FDS_PER_MESSAGE ? h.n - first : FDS_PER_MESSAGE;
        int32_t driver_error = 0;
        uint32_t k = 0; /* one at a time, each noted at once */
        while (k < want && sv->export_fds(sv->arg, id, first + k, 1, &fds[k], &driver_error) == 1)
            note_batch(&held, k++);
        if (k < want) {
            int32_t why = nvipcfix_fd_at_limit() ? NVIPCFIX_FD_EXPORTER_FDS
                          : driver_error != 0    ? NVIPCFIX_FD_FAILED
                                                 : NVIPCFIX_FD_FREED;
            close_all(fds, k);
            send_batch(l, 'X', why, driver_error, NULL, 0);
            break;
        }
        int sent = send_batch(l, first + k == h.n ? 'E' : 'F', 0, 0, fds, k) == 0;
        close_all(fds, k);
        if (!sent)
            break;
        first += k;
        whole = first == h.n;
    }
    release_batch(&held);
    return whole;
}

static void send_status(struct link *l, int32_t status)
{
    struct hello h = {.magic = HELLO_MAGIC, .status = status};
    send_all(l, &h, sizeof h);
}

/* The nonce a kept connection's last hello gave for its next request. */
struct next_nonce {
    int has;
    unsigned char nonce[NONCE_BYTES];
};

/* One request, within the server's deadline: its export id, our proof,
 * its proof, the answer. A client sends its request and its proof as soon
 * as it can, so those two get a fifth of the deadline (at least a second):
 * a process without the secret holds a thread that long, not the whole
 * deadline. On a kept connection whose last hello gave a nonce for this
 * request, the client's proof comes with the request (REQUEST_PROVEN) and
 * is checked before ours goes: one round trip. Nonzero when the answer was
 * whole and the client asked to send its next request on this connection. */
static int serve_one(struct nvipcfix_fd_server *s, int sock, struct next_nonce *next)
{
    int64_t start = now_ms();
    int handshake = s->timeout_ms / 5 > 1000 ? s->timeout_ms / 5 : 1000;
    struct link l = {sock, start + (handshake < s->timeout_ms ? handshake : s->timeout_ms), 0};
    struct request q;
    struct hello_next h = {.h = {.magic = HELLO_MAGIC, .status = NVIPCFIX_FD_OK}};
    unsigned char key[NVIPCFIX_KEY_BYTES], want[NVIPCFIX_TAG_BYTES], got[NVIPCFIX_TAG_BYTES];
    int had = next->has;
    next->has = 0; /* a nonce is good for one request */
    if (recv_all(&l, &q, sizeof q) != 0 || q.magic != REQUEST_MAGIC || q.version != VERSION)
        return 0;
    int proven = (q.flags & REQUEST_PROVEN) != 0;
    int gives_next = (q.flags & (REQUEST_KEEP | REQUEST_NEXT)) == (REQUEST_KEEP | REQUEST_NEXT);
    if (proven && (!had || recv_all(&l, got, sizeof got) != 0))
        return 0;
    if (s->service.secret(s->service.arg, q.export_id, key) != 0) {
        send_status(&l, NVIPCFIX_FD_UNKNOWN);
        return 0;
    }
    if (proven)
        memcpy(h.h.nonce, next->nonce, sizeof h.h.nonce);
    if ((!proven && nvipcfix_random_bytes(h.h.nonce, sizeof h.h.nonce) != 0) ||
        (gives_next && nvipcfix_random_bytes(h.next, sizeof h.next) != 0)) {
        memset(key, 0, sizeof key);
        send_status(&l, NVIPCFIX_FD_FAILED);
        return 0;
    }
    nvipcfix_fd_proof(key, 'S', q.export_id, q.nonce, h.h.nonce, &s->address, h.h.proof);
    nvipcfix_fd_proof(key, 'C', q.export_id, q.nonce, h.h.nonce, &s->address, want);
    memset(key, 0, sizeof key);
    if (proven) {
        if (!nvipcfix_equal_ct(got, want, sizeof want)) { /* refused before our proof goes */
            atomic_fetch_add(&s->refused, 1);
            send_status(&l, NVIPCFIX_FD_REFUSED);
            return 0;
        }
        atomic_fetch_add(&s->one_trip, 1);
    }
    if (gives_next)
        h.h.magic = HELLO_NEXT_MAGIC;
    if (send_all(&l, &h, gives_next ? sizeof h : sizeof h.h) != 0 ||
        (!proven && recv_all(&l, got, sizeof got) != 0))
        return 0;
    struct nvipcfix_fd_reply r = {0};
    if (!nvipcfix_equal_ct(got, want, sizeof want)) {
        r.status = NVIPCFIX_FD_REFUSED;
        atomic_fetch_add(&s->refused, 1);
    } else {
        l.deadline = start + s->timeout_ms; /* the ticket's holder: the whole deadline */
        s->service.describe(s->service.arg, q.export_id, &r);
        atomic_fetch_add(&s->served, 1);
    }
    int whole = send_reply(s, &l, q.export_id, &r) && r.status == NVIPCFIX_FD_OK;
    nvipcfix_fd_reply_free(&r);
    if (!whole || (q.flags & REQUEST_KEEP) == 0)
        return 0;
    if (gives_next) {
        memcpy(next->nonce, h.next, sizeof next->nonce);
        next->has = 1;
    }
    return 1;
}

/* A client's requests: after a whole answer, if it asked, the connection
 * waits idle for its next one (up to idle_ms, or until the accepting
 * thread cuts it for a new client). */
static void serve_client(struct nvipcfix_fd_server *s, struct nvipcfix_fd_client_slot *slot)
{
    struct next_nonce next = {0};
    int keep = serve_one(s, slot->sock, &next);
    while (keep && !atomic_load(&s->stopping)) {
        struct pollfd p = {slot->sock, POLLIN, 0};
        atomic_store(&slot->idle, 1);
        int r = poll(&p, 1, atomic_load(&s->idle_ms));
        /* Cut meanwhile: the request is left unanswered, so the client
         * heard nothing and asks again on a new connection. */
        if (atomic_exchange(&slot->idle, 0) == 2 || r <= 0 || atomic_load(&s->stopping))
            break;
        keep = serve_one(s, slot->sock, &next);
    }
}

struct client {
    struct nvipcfix_fd_server *s;
    struct nvipcfix_fd_client_slot *slot;
};

static void *client_main(void *arg)
{
    struct client c = *(struct client *)arg;
    free(arg);
    if (!atomic_load(&c.s->stopping))
        serve_client(c.s, c.slot);
    pthread_mutex_lock(&c.s->lock); /* the accepting thread may be cutting it short */
    close(c.slot->sock);
    c.slot->sock = -1;
    pthread_mutex_unlock(&c.s->lock);
    atomic_fetch_sub(&c.s->clients, 1);
    atomic_store(&c.slot->state, 2); /* c.s is not touched after this */
    return NULL;
}

/* Joins the threads of clients that are done; returns how many still
 * serve. Accepting thread only. */
static int reap_clients(struct nvipcfix_fd_server *s)
{
    int serving = 0;
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++) {
        int state = atomic_load(&s->slots[i].state);
        if (state == 2) {
            pthread_join(s->slots[i].thread, NULL);
            atomic_store(&s->slots[i].state, 0);
        }
        serving += state == 1;
    }
    return serving;
}

/* A client waits while every thread serves: one kept connection idle
 * between requests is cut (its client connects anew when it next asks).
 * Accepting thread only. */
static void cut_one_idle(struct nvipcfix_fd_server *s)
{
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++)
        if (atomic_load(&s->slots[i].state) == 1 && atomic_load(&s->slots[i].idle) == 2) {
            pthread_mutex_unlock(&s->lock); /* one cut at a time: that one is ending */
            return;
        }
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++) {
        int idle = 1; /* claimed from 1 to 2: its thread then serves nothing more */
        if (atomic_load(&s->slots[i].state) == 1 && s->slots[i].sock >= 0 &&
            atomic_compare_exchange_strong(&s->slots[i].idle, &idle, 2)) {
            shutdown(s->slots[i].sock, SHUT_RDWR);
            break;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

/* At the end: every client's connection cut short, every thread joined.
 * Accepting thread only. */
static void end_clients(struct nvipcfix_fd_server *s)
{
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++)
        if (atomic_load(&s->slots[i].state) == 1 && s->slots[i].sock >= 0)
            shutdown(s->slots[i].sock, SHUT_RDWR);
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++)
        if (atomic_load(&s->slots[i].state) != 0) {
            pthread_join(s->slots[i].thread, NULL);
            atomic_store(&s->slots[i].state, 0);
        }
}

/* A status at once, without waiting on the client, then the end. */
static void turn_away(int sock, int32_t status)
{
    struct hello h = {.magic = HELLO_MAGIC, .status = status};
    send(sock, &h, sizeof h, MSG_NOSIGNAL | MSG_DONTWAIT);
    close(sock);
}

/* A new connection: another user's is turned away at once; a client of
 * this user gets a thread of its own. */
static void admit(struct nvipcfix_fd_server *s, int sock)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (cred.uid != geteuid() && cred.uid != 0)) {
        atomic_fetch_add(&s->refused, 1);
        turn_away(sock, NVIPCFIX_FD_REFUSED);
        return;
    }
    struct nvipcfix_fd_client_slot *slot = NULL;
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS && slot == NULL; i++)
        if (atomic_load(&s->slots[i].state) == 0)
            slot = &s->slots[i];
    struct client *c = slot != NULL ? malloc(sizeof *c) : NULL;
    if (c == NULL) {
        turn_away(sock, NVIPCFIX_FD_FAILED);
        return;
    }
    c->s = s;
    c->slot = slot;
    struct stat st;
    slot->sock = sock;
    slot->ino = fstat(sock, &st) == 0 ? st.st_ino : 0;
    slot->dev = slot->ino != 0 ? st.st_dev : 0;
    atomic_store(&slot->idle, 0);
    atomic_fetch_add(&s->connections, 1);
    atomic_store(&slot->state, 1);
    atomic_fetch_add(&s->clients, 1);
    if (pthread_create(&slot->thread, NULL, client_main, c) != 0) {
        atomic_fetch_sub(&s->clients, 1);
        atomic_store(&slot->state, 0);
        slot->sock = -1;
        free(c);
        turn_away(sock, NVIPCFIX_FD_FAILED);
    }
}

/* At the open-file limit: the spare descriptor makes room to tell one
 * waiting client so. */
static void refuse_at_limit(struct nvipcfix_fd_server *s)
{
    if (s->spare >= 0) {
        close(s->spare);
        int c = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0)
            turn_away(c, NVIPCFIX_FD_EXPORTER_FDS);
        s->spare = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    struct timespec pause = {0, 10 * 1000 * 1000};
    nanosleep(&pause, NULL);
}

static void *server_main(void *arg)
{
    struct nvipcfix_fd_server *s = arg;
    struct timespec pause = {0, 1000 * 1000};
    while (!atomic_load(&s->stopping)) {
        if (reap_clients(s) >= NVIPCFIX_FD_CLIENTS) {
            struct pollfd w = {s->fd, POLLIN, 0};
            if (poll(&w, 1, 0) > 0)
                cut_one_idle(s); /* someone waits: an idle kept connection makes room */
            nanosleep(&pause, NULL); /* each client ends by its deadline */
            continue;
        }
        struct pollfd p = {s->fd, POLLIN, 0};
        if (poll(&p, 1, -1) < 0 && errno != EINTR)
            break;
        int c = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0)
            admit(s, c);
        else if (errno == EMFILE || errno == ENFILE)
            refuse_at_limit(s);
        else if (errno == ENOBUFS || errno == ENOMEM)
            nanosleep(&pause, NULL);
        else if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN)
            break; /* shut down */
    }
    end_clients(s);
    return NULL;
}

void nvipcfix_fd_server_init(struct nvipcfix_fd_server *s,
                             const struct nvipcfix_fd_service *service)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++)
        s->slots[i].sock = -1;
    s->fd = -1;
    s->spare = -1;
    atomic_store(&s->idle_ms, NVIPCFIX_FD_IDLE_MS);
    s->service = *service;
}

/* A listening socket at a fresh name (a new nonce if the name is taken). */
static int listen_at(struct nvipcfix_fd_server *s, const char *dir)
{
    int err = EADDRINUSE;
    for (int tries = 0; tries < 8 && err == EADDRINUSE; tries++) {
        struct sockaddr_un a;
        if (nvipcfix_random_bytes(&s->address.nonce, sizeof s->address.nonce) != 0)
            return errno != 0 ? errno : EIO;
        socklen_t len = nvipcfix_fd_sockaddr(&s->address, dir, &a);
        if (len == 0)
            return ENAMETOOLONG;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && bind(fd, (struct sockaddr *)&a, len) == 0 && listen(fd, 128) == 0) {
            s->fd = fd;
            if (s->address.in_dir)
                memcpy(s->path, a.sun_path, sizeof s->path);
            return 0;
        }
        err = errno;
        if (fd >= 0)
            close(fd);
    }
    return err;
}

/* Starts the accepting thread (caller holds the lock); it takes no signal
 * meant for the program's threads (nor do the client threads it starts).
 * It ends when the socket is shut down, and is joined then. */
static int start_thread(struct nvipcfix_fd_server *s)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&s->thread, NULL, server_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    s->has_thread = err == 0;
    return err;
}

int nvipcfix_fd_server_start(struct nvipcfix_fd_server *s, const char *dir, int timeout_ms,
                             uint32_t pid_ns, struct nvipcfix_fd_address *where, char *why,
                             size_t n)
{
    int err = 0;
    pthread_mutex_lock(&s->lock);
    if (s->fd < 0 && !atomic_load(&s->stopping)) {
        int in_dir = dir != NULL && dir[0] != '\0';
        struct nvipcfix_fd_address a = {(uint32_t)geteuid(), (uint32_t)getpid(), pid_ns, 0,
                                        in_dir};
        s->address = a;
        s->timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
        if (in_dir && nvipcfix_fd_check_dir(dir, why, n) != 0)
            err = ENOTDIR;
        else if ((err = listen_at(s, dir)) != 0)
            snprintf(why, n, "its socket could not be made (%s)", strerror(err));
        else {
            s->spare = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if ((err = start_thread(s)) != 0) {
                snprintf(why, n, "its thread could not start (%s)", strerror(err));
                if (s->path[0] != '\0')
                    unlink(s->path);
                s->path[0] = '\0';
                close(s->fd);
                if (s->spare >= 0)
                    close(s->spare); /* a later start opens its own */
                s->fd = s->spare = -1;
            }
        }
    } else if (s->fd < 0) {
        err = ESHUTDOWN;
        snprintf(why, n, "the process is exiting");
    }
    *where = s->address;
    pthread_mutex_unlock(&s->lock);
    return err;
}

void nvipcfix_fd_server_stop(struct nvipcfix_fd_server *s, int wait_ms)
{
    pthread_t thread;
    pthread_mutex_lock(&s->lock);
    atomic_store(&s->stopping, 1);
    if (s->fd >= 0)
        shutdown(s->fd, SHUT_RDWR); /* wakes the thread; the descriptor stays */
    if (s->path[0] != '\0')
        unlink(s->path);
    s->path[0] = '\0';
    int joinable = s->has_thread;
    s->has_thread = 0; /* joined once, by whoever stops first */
    thread = s->thread;
    pthread_mutex_unlock(&s->lock);
    if (!joinable)
        return;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    if (wait_ms >= 0 && pthread_timedjoin_np(thread, NULL, &until) != 0)
        pthread_detach(thread); /* still ending (a driver call that hangs): left to run */
    else if (wait_ms < 0)
        pthread_join(thread, NULL);
}

void nvipcfix_fd_server_destroy(struct nvipcfix_fd_server *s)
{
    nvipcfix_fd_server_stop(s, -1);
    if (s->fd >= 0)
        close(s->fd);
    if (s->spare >= 0)
        close(s->spare);
    s->fd = s->spare = -1;
    pthread_mutex_destroy(&s->lock);
}

void nvipcfix_fd_server_forget(struct nvipcfix_fd_server *s)
{
    close_in_flight();
    nvipcfix_fd_kept_forget();
    /* The parent's clients' connections: kept here, a client's next
     * request on a connection the parent gave up would wait for nobody.
     * Closed only where the number is still that socket. */
    for (int i = 0; i < NVIPCFIX_FD_CLIENTS; i++) {
        struct stat st;
        int fd = s->slots[i].sock;
        if (atomic_load(&s->slots[i].state) == 1 && fd >= 0 && s->slots[i].ino != 0 &&
            fstat(fd, &st) == 0 && st.st_dev == s->slots[i].dev && st.st_ino == s->slots[i].ino)
            close(fd);
    }
    if (s->fd >= 0)
        close(s->fd); /* the parent's socket; its threads are not in the child */
    if (s->spare >= 0)
        close(s->spare);
    struct nvipcfix_fd_service service = s->service;
    nvipcfix_fd_server_init(s, &service); /* the parent's file is the parent's to remove */
}

/* ---- the asking side ------------------------------------------------------ */

static int link_status(const struct link *l)
{
    return l->timed_out ? NVIPCFIX_FD_TIMEOUT : NVIPCFIX_FD_BROKEN;
}

/* Connects within the deadline (a full backlog is waited out). */
static int connect_to(struct link *l, const struct sockaddr_un *a, socklen_t len)
{
    struct timespec pause = {0, 2 * 1000 * 1000};
    for (;;) {
        if (connect(l->fd, (const struct sockaddr *)a, len) == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EINPROGRESS) {
            if (errno == EINPROGRESS && wait_for(l, POLLOUT) == 0)
                return 0;
            if (now_ms() >= l->deadline) {
                l->timed_out = 1;
                return NVIPCFIX_FD_TIMEOUT;
            }
            nanosleep(&pause, NULL);
            continue;
        }
        return errno == ECONNREFUSED || errno == ENOENT ? NVIPCFIX_FD_NO_EXPORTER
                                                        : NVIPCFIX_FD_BROKEN;
    }
}

uint32_t nvipcfix_own_pid_ns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint32_t)st.st_ino : 0;
}

/* The server's nonce for a request on a kept connection: in (from the last
 * hello, or none) and out (from this one's). */
struct nonces {
    const unsigned char *in; /* NULL: none */
    unsigned char out[NONCE_BYTES];
    int has_out;
};

/* The server's identity and proof, then ours; or, with a nonce given for
 * this request, ours with the request (the listener's identity checked
 * first), then the server's. 0 or a status; *heard once the server
 * answered the request. */
static int authenticate(struct link *l, const struct nvipcfix_fd_address *to,
                        uint32_t export_id, const unsigned char *secret, uint32_t flags,
                        struct nonces *nn, int *heard)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(l->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return NVIPCFIX_FD_BROKEN;
    if (cred.uid != to->uid)
        return NVIPCFIX_FD_WRONG_USER;
    /* In one PID namespace the process must also be the one named: a
     * process of this user relaying to the exporter is not believed. */
    int relay = to->pid_ns != 0 && to->pid_ns == nvipcfix_own_pid_ns() &&
                (uint32_t)cred.pid != to->pid;
    if (nn->in != NULL && relay)
        return NVIPCFIX_FD_WRONG_PID;
    struct {
        struct request q;
        unsigned char proof[NVIPCFIX_TAG_BYTES];
    } ask = {{REQUEST_MAGIC, VERSION, export_id, flags, {0}}, {0}};
    struct hello_next h;
    unsigned char want[NVIPCFIX_TAG_BYTES];
    if (nvipcfix_random_bytes(ask.q.nonce, sizeof ask.q.nonce) != 0)
        return NVIPCFIX_FD_BROKEN;
    if (nn->in != NULL) {
        ask.q.flags |= REQUEST_PROVEN;
        nvipcfix_fd_proof(secret, 'C', export_id, ask.q.nonce, nn->in, to, ask.proof);
    }
    /* A server that turns this process away may close before the request
     * is sent: its status is read all the same. */
    send_all(l, &ask, nn->in != NULL ? sizeof ask : sizeof ask.q);
    if (recv_all(l, &h.h, sizeof h.h) != 0)
        return link_status(l);
    *heard = 1;
    int with_next = h.h.magic == HELLO_NEXT_MAGIC && (flags & REQUEST_NEXT) != 0;
    if (h.h.magic != HELLO_MAGIC && !with_next)
        return NVIPCFIX_FD_BROKEN;
    if (h.h.status != NVIPCFIX_FD_OK)
        return h.h.status >= NVIPCFIX_FD_UNKNOWN && h.h.status <= NVIPCFIX_FD_EXPORTER_FDS
                   ? h.h.status
                   : NVIPCFIX_FD_BROKEN;
    if (with_next && recv_all(l, h.next, sizeof h.next) != 0)
        return link_status(l);
    const unsigned char *server_nonce = nn->in != NULL ? nn->in : h.h.nonce;
    nvipcfix_fd_proof(secret, 'S', export_id, ask.q.nonce, server_nonce, to, want);
    if (!nvipcfix_equal_ct(want, h.h.proof, sizeof want))
        return NVIPCFIX_FD_NO_PROOF;
    if (with_next) {
        memcpy(nn->out, h.next, sizeof nn->out);
        nn->has_out = 1;
    }
    if (nn->in != NULL)
        return 0; /* ours went with the request */
    if (relay)
        return NVIPCFIX_FD_WRONG_PID;
    nvipcfix_fd_proof(secret, 'C', export_id, ask.q.nonce, h.h.nonce, to, ask.proof);
    return send_all(l, ask.proof, sizeof ask.proof) == 0 ? 0 : link_status(l);
}

/* Every descriptor offered, batch by batch, to the taker. */
static int receive_all(struct link *l, uint32_t n, const struct nvipcfix_fd_taker *taker,
                       int32_t *driver_error)
{
    struct held_batch held;
    int *fds = held.fds, st = NVIPCFIX_FD_OK;
    hold_batch(&held);
    for (uint32_t first = 0; first < n && st == NVIPCFIX_FD_OK;) {
        uint32_t want = n - first < FDS_PER_MESSAGE ? n - first : FDS_PER_MESSAGE, k = 0;
        struct batch b;
        if ((st = recv_batch(l, &b, fds, &k, want)) != 0)
            break;
        for (uint32_t i = 0; i < k; i++)
            note_batch(&held, i);
        if (b.tag == 'X') {
            *driver_error = b.driver_error;
            st = b.status >= NVIPCFIX_FD_FREED && b.status <= NVIPCFIX_FD_EXPORTER_FDS &&
                         b.status != NVIPCFIX_FD_REFUSED
                     ? b.status
                     : NVIPCFIX_FD_BROKEN;
        } else if (k != want || (b.tag != 'F' && b.tag != 'E') ||
                   (b.tag == 'E') != (first + k == n)) {
            st = NVIPCFIX_FD_BROKEN; /* a batch is whole: 'F' full, more to come; 'E' the rest */
        } else {
            int why = NVIPCFIX_FD_BROKEN;
            if (taker->take(taker->arg, first, fds, k, &why) != 0)
                st = why;
            first += k;
        }
        close_all(fds, k);
    }
    release_batch(&held);
    return st;
}

static int exchange(struct link *l, const struct nvipcfix_fd_address *to, uint32_t export_id,
                    const unsigned char *secret, const struct nvipcfix_fd_taker *taker,
                    int32_t *driver_error, uint32_t flags, struct nonces *nn, int *heard)
{
    int st = authenticate(l, to, export_id, secret, flags, nn, heard);
    if (st != 0)
        return st;
    struct reply_head h;
    if (recv_all(l, &h, sizeof h) != 0)
        return link_status(l);
    if (h.magic != REPLY_MAGIC || h.n > NVIPCFIX_FD_MAX)
        return NVIPCFIX_FD_BROKEN;
    if (h.status != NVIPCFIX_FD_OK || h.n == 0) {
        *driver_error = h.driver_error;
        return h.status >= NVIPCFIX_FD_UNKNOWN && h.status <= NVIPCFIX_FD_EXPORTER_FDS
                   ? h.status
                   : NVIPCFIX_FD_BROKEN;
    }
    struct nvipcfix_fd_reply offer = {h.status, h.driver_error, h.n, NULL, NULL};
    offer.sizes = calloc(h.n, sizeof *offer.sizes);
    offer.offsets = calloc(h.n, sizeof *offer.offsets);
    st = NVIPCFIX_FD_BROKEN;
    if (offer.sizes != NULL && offer.offsets != NULL) {
        if (recv_all(l, offer.sizes, h.n * sizeof(uint64_t)) != 0 ||
            recv_all(l, offer.offsets, h.n * sizeof(uint64_t)) != 0)
            st = link_status(l);
        else if (taker->begin(taker->arg, &offer) == 0)
            st = receive_all(l, h.n, taker, driver_error);
    }
    nvipcfix_fd_reply_free(&offer);
    return st;
}

/* ---- kept connections: one per server, for this process's next request */
#define KEPT_SLOTS 16

static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kept {
    struct nvipcfix_fd_address to;
    int fd;        /* -1: none */
    uint64_t used; /* when last put back (the oldest is closed for room) */
    int has_next;  /* the server's nonce for the next request came: */
    unsigned char next[NONCE_BYTES];
} kept[KEPT_SLOTS] = {[0 ... KEPT_SLOTS - 1] = {.fd = -1}};
static uint64_t kept_clock;

static int same_server(const struct nvipcfix_fd_address *a, const struct nvipcfix_fd_address *b)
{
    return a->uid == b->uid && a->pid == b->pid && a->pid_ns == b->pid_ns &&
           a->nonce == b->nonce && (a->in_dir != 0) == (b->in_dir != 0);
}

/* The connection kept for to, now this thread's (with the server's nonce
 * for its next request in next, *has_next when it gave one); -1 if none. */
static int take_kept(const struct nvipcfix_fd_address *to, unsigned char next[NONCE_BYTES],
                     int *has_next)
{
    int fd = -1;
    *has_next = 0;
    pthread_mutex_lock(&kept_lock);
    for (int i = 0; i < KEPT_SLOTS && fd < 0; i++)
        if (kept[i].fd >= 0 && same_server(&kept[i].to, to)) {
            fd = kept[i].fd;
            kept[i].fd = -1;
            *has_next = kept[i].has_next;
            memcpy(next, kept[i].next, NONCE_BYTES);
            memset(kept[i].next, 0, sizeof kept[i].next);
        }
    pthread_mutex_unlock(&kept_lock);
    return fd;
}

/* Keeps fd for to's next request, with the server's nonce for it if it
 * gave one (one per server: a second is closed; with every slot taken,
 * the one unused longest is). */
static void put_kept(const struct nvipcfix_fd_address *to, int fd, const struct nonces *nn)
{
    int spare = fd, at = -1;
    pthread_mutex_lock(&kept_lock);
    for (int i = 0; i < KEPT_SLOTS && at != -2; i++)
        if (kept[i].fd >= 0 && same_server(&kept[i].to, to))
            at = -2; /* another thread's, put back first: that one stays */
        else if (at == -1 || (kept[at].fd >= 0 && (kept[i].fd < 0 || kept[i].used < kept[at].used)))
            at = i; /* a free slot, else the one unused longest */
    if (at >= 0) {
        spare = kept[at].fd;
        kept[at].to = *to;
        kept[at].fd = fd;
        kept[at].used = ++kept_clock;
        kept[at].has_next = nn->has_out;
        memcpy(kept[at].next, nn->out, sizeof kept[at].next);
    }
    pthread_mutex_unlock(&kept_lock);
    if (spare >= 0)
        close(spare);
}

void nvipcfix_fd_kept_forget(void)
{
    for (int i = 0; i < KEPT_SLOTS; i++) {
        if (kept[i].fd >= 0)
            close(kept[i].fd); /* the child's copy; the parent's stays */
        kept[i].fd = -1;
        kept[i].has_next = 0;
    }
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&kept_lock, &fresh, sizeof fresh);
}

static int request(const struct nvipcfix_fd_address *to, const char *dir, uint32_t export_id,
                   const unsigned char secret[NVIPCFIX_KEY_BYTES], int timeout_ms,
                   const struct nvipcfix_fd_taker *taker, int32_t *driver_error, int keep)
{
    char why[200];
    *driver_error = 0;
    struct sockaddr_un a;
    socklen_t len = nvipcfix_fd_sockaddr(to, dir, &a);
    if (len == 0 || (to->in_dir && nvipcfix_fd_check_dir(dir, why, sizeof why) != 0))
        return NVIPCFIX_FD_BAD_DIR;
    struct link l = {socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
                     now_ms() + (timeout_ms > 0 ? timeout_ms : 1), 0};
    if (l.fd < 0)
        return errno == EMFILE || errno == ENFILE ? NVIPCFIX_FD_IMPORTER_FDS
                                                  : NVIPCFIX_FD_BROKEN;
    int heard = 0;
    struct nonces nn = {NULL, {0}, 0};
    int st = connect_to(&l, &a, len);
    if (st == 0)
        st = exchange(&l, to, export_id, secret, taker, driver_error,
                      keep ? REQUEST_KEEP | REQUEST_NEXT : 0, &nn, &heard);
    if (keep && st == NVIPCFIX_FD_OK)
        put_kept(to, l.fd, &nn);
    else
        close(l.fd);
    return st;
}

int nvipcfix_fd_request(const struct nvipcfix_fd_address *to, const char *dir,
                        uint32_t export_id, const unsigned char secret[NVIPCFIX_KEY_BYTES],
                        int timeout_ms, const struct nvipcfix_fd_taker *taker,
                        int32_t *driver_error)
{
    return request(to, dir, export_id, secret, timeout_ms, taker, driver_error, 0);
}

int nvipcfix_fd_request_kept(const struct nvipcfix_fd_address *to, const char *dir,
                             uint32_t export_id, const unsigned char secret[NVIPCFIX_KEY_BYTES],
                             int timeout_ms, const struct nvipcfix_fd_taker *taker,
                             int32_t *driver_error)
{
    unsigned char last[NONCE_BYTES];
    int has_last;
    int fd = take_kept(to, last, &has_last);
    if (fd >= 0) {
        struct link l = {fd, now_ms() + (timeout_ms > 0 ? timeout_ms : 1), 0};
        struct nonces nn = {has_last ? last : NULL, {0}, 0};
        int heard = 0;
        *driver_error = 0;
        int st = exchange(&l, to, export_id, secret, taker, driver_error,
                          REQUEST_KEEP | REQUEST_NEXT, &nn, &heard);
        if (st == NVIPCFIX_FD_OK) {
            put_kept(to, fd, &nn);
            return st;
        }
        close(fd);
        if (heard || st != NVIPCFIX_FD_BROKEN)
            return st;
        /* the server had given it up before our request came: anew */
    }
    return request(to, dir, export_id, secret, timeout_ms, taker, driver_error, 1);
}
