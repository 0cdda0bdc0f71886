/* File descriptors from one process to another of the same user, over a
 * Unix socket (abstract namespace, or a filesystem socket in a directory of
 * the user's: NVIPCFIX_VMM_SOCKET_DIR), with SCM_RIGHTS.
 *
 * The server is a thread of the exporting process, started on its first
 * use; each client is served on a thread of its own (at most
 * NVIPCFIX_FD_CLIENTS at once), within one deadline. The socket's name
 * is public and grants nothing. Each export has a 128-bit secret, known
 * to the exporter and to whoever holds the ticket, and the two prove it to
 * each other without sending it (a challenge and response with
 * SipHash-2-4-128, keyed_hash.h):
 *
 *   client -> server  export id, client nonce Nc (16 random bytes)
 *   server -> client  server nonce Ns, H(secret; "S", id, address, Nc, Ns)
 *   client -> server  H(secret; "C", id, address, Nc, Ns)
 *   server -> client  the offer (sizes and places), then the descriptors
 *
 * The client first checks with SO_PEERCRED that the listening process runs
 * as the user the ticket names (and, in one PID namespace, is the process
 * it names), then checks the server's proof before it sends its own: a
 * squatter on the name learns nothing and gives nothing. The server
 * refuses at once a process of another user (root may ask), and answers
 * the descriptors only after the client's proof: a guessed or replayed
 * exchange gets nothing.
 *
 * An importer may keep its connection for its next request to the same
 * exporter (nvipcfix_fd_request_kept): each request on it is a whole
 * exchange as above, with fresh nonces and its own export's secret, but
 * in one round trip: each hello on it also gives the server's nonce Ns'
 * for the next request (good for that one only), and the next request
 * carries the client's proof over it:
 *
 *   client -> server  export id, Nc, H(secret; "C", id, address, Nc, Ns')
 *   server -> client  H(secret; "S", id, address, Nc, Ns'), the next Ns'',
 *                     the offer, then the descriptors
 *
 * The client sends that proof only to the process whose proof over another
 * export it checked on this connection (SO_PEERCRED does not change), and
 * takes nothing before checking the server's; the server checks the
 * client's before it proves anything. The server keeps a connection only
 * after a whole answer, idle NVIPCFIX_FD_IDLE_MS at
 * most, and cuts an idle one when a new client waits for a thread. */
#ifndef NVIPCFIX_FD_CHANNEL_H
#define NVIPCFIX_FD_CHANNEL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "keyed_hash.h"

/* The most descriptors one answer offers, and how many travel together. */
#define NVIPCFIX_FD_MAX (1u << 20)
#define NVIPCFIX_FD_BATCH 250
/* Clients served at once; more wait, within their deadline. */
#define NVIPCFIX_FD_CLIENTS 32
/* A kept connection (nvipcfix_fd_request_kept) waits this long, idle, for
 * its next request; sooner given up when a new client needs its thread. */
#define NVIPCFIX_FD_IDLE_MS 5000

enum nvipcfix_fd_status {
    NVIPCFIX_FD_OK = 0,
    /* from the exporter */
    NVIPCFIX_FD_UNKNOWN = 1,      /* no such export in that process */
    NVIPCFIX_FD_FREED = 2,        /* the exported memory was freed or remapped since */
    NVIPCFIX_FD_REFUSED = 3,      /* a process of another user, or a wrong proof */
    NVIPCFIX_FD_FAILED = 4,       /* the exporter's driver could not export it */
    NVIPCFIX_FD_EXPORTER_FDS = 5, /* the exporter is at its open-file limit */
    /* found by the asking side */
    NVIPCFIX_FD_NO_EXPORTER = 6,  /* nothing listens on the exporter's name */
    NVIPCFIX_FD_WRONG_USER = 7,   /* the process listening runs as another user */
    NVIPCFIX_FD_NO_PROOF = 8,     /* it could not prove it holds the export's secret */
    NVIPCFIX_FD_WRONG_PID = 9,    /* it proved it, but is not the process named (a relay) */
    NVIPCFIX_FD_TIMEOUT = 10,     /* no complete answer within the deadline */
    NVIPCFIX_FD_IMPORTER_FDS = 11, /* this process is at its open-file limit */
    NVIPCFIX_FD_BAD_DIR = 12,     /* the socket directory is missing or unsafe */
    NVIPCFIX_FD_BROKEN = 13,      /* connection failed or was cut short, or nonsense came */
    NVIPCFIX_FD_STATUS_COUNT
};

/* Where a server listens: all of it public (also in /proc/net/unix). */
struct nvipcfix_fd_address {
    uint32_t uid, pid, pid_ns, nonce;
    int in_dir; /* a filesystem socket in the socket directory */
};

/* What the exporter says about an export: how many descriptors it offers,
 * and each one's size and place. */
struct nvipcfix_fd_reply {
    int32_t status;       /* enum nvipcfix_fd_status */
    int32_t driver_error; /* NVIPCFIX_FD_FAILED: the exporter's driver's error */
    uint32_t n;
    uint64_t *sizes;      /* n sizes, malloc'd */
    uint64_t *offsets;    /* n places, from the first one's, malloc'd */
};

/* Frees the reply's arrays. */
void nvipcfix_fd_reply_free(struct nvipcfix_fd_reply *r);

/* The exporter's side, on a client's thread. secret gives the export's
 * secret (0) or says there is no such export (-1). describe fills out for
 * the export (status; for NVIPCFIX_FD_OK n, sizes, offsets): everything it
 * offers must then be handed over, or the answer ends in an error.
 * export_fds writes the descriptors of items [first, first + count) into
 * fds, in order, and returns how many it made: fewer is an error (FREED,
 * or FAILED with *driver_error; the channel finds out itself when the
 * process is at its open-file limit). */
struct nvipcfix_fd_service {
    int (*secret)(void *arg, uint32_t export_id, unsigned char key[NVIPCFIX_KEY_BYTES]);
    void (*describe)(void *arg, uint32_t export_id, struct nvipcfix_fd_reply *out);
    uint32_t (*export_fds)(void *arg, uint32_t export_id, uint32_t first, uint32_t count,
                           int *fds, int32_t *driver_error);
    void *arg;
};

/* The asking side: begin is called once with the offer (nonzero: give up);
 * take with each batch of descriptors, items [first, first + k): it closes
 * each with nvipcfix_fd_close when done with it, and the channel closes
 * the rest when take returns (nonzero: stop; its status in *why, else
 * BROKEN). The
 * answer is complete only when nvipcfix_fd_request returns NVIPCFIX_FD_OK;
 * on any other status the taker must undo what it took. */
struct nvipcfix_fd_taker {
    int (*begin)(void *arg, const struct nvipcfix_fd_reply *offer);
    int (*take)(void *arg, uint32_t first, int *fds, uint32_t k, int *why);
    void *arg;
};

struct nvipcfix_fd_server {
    pthread_mutex_t lock;
    int fd;    /* listening socket; -1 before the start */
    int spare; /* kept open, to answer one client when at the open-file limit */
    struct nvipcfix_fd_address address;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* filesystem socket, or "" */
    int timeout_ms; /* the whole exchange with one client */
    struct nvipcfix_fd_service service;
    atomic_int stopping;
    atomic_ulong served, refused;
    atomic_ulong connections; /* accepted from a client of this user */
    atomic_ulong one_trip;    /* requests answered whose proof came with them */
    atomic_int idle_ms;       /* a kept connection's wait for its next request */
    pthread_t thread;   /* the accepting thread, */
    int has_thread;     /* not yet joined (under lock) */
    atomic_int clients; /* clients whose socket is still open */
    /* One per client thread: started and joined by the accepting thread
     * only; a client marks its own slot done (its socket closed, under
     * lock) just before its thread ends. */
    struct nvipcfix_fd_client_slot {
        pthread_t thread;
        int sock;           /* -1 once closed */
        dev_t dev;          /* its file, for a forked child to close */
        ino_t ino;          /* (0: not known) */
        atomic_int state;   /* 0 free, 1 serving, 2 done: to be joined */
        atomic_int idle;    /* 1: kept, waiting for its next request, may be
                             * cut; 2: being cut (claimed by the accepting
                             * thread, the request that comes is not served) */
    } slots[NVIPCFIX_FD_CLIENTS];
};

void nvipcfix_fd_server_init(struct nvipcfix_fd_server *s,
                             const struct nvipcfix_fd_service *service);

/* Starts the server if it is not running: 0, or an errno value (ENOTDIR:
 * dir is unsafe; why says so). dir: NULL or "" for the abstract namespace,
 * else the directory (checked: nvipcfix_fd_check_dir). pid_ns goes into
 * the name. *where gets what a client needs to reach it. */
int nvipcfix_fd_server_start(struct nvipcfix_fd_server *s, const char *dir, int timeout_ms,
                             uint32_t pid_ns, struct nvipcfix_fd_address *where, char *why,
                             size_t n);

/* No request is served after this (at exit), and a filesystem socket is
 * removed. The accepting thread cuts every client's connection short and
 * waits for their threads, and this waits for it, up to wait_ms: so no
 * thread of the server is still ending while the process exits. */
void nvipcfix_fd_server_stop(struct nvipcfix_fd_server *s, int wait_ms);

/* Stops the server, waits for its threads however long and closes its
 * socket. */
void nvipcfix_fd_server_destroy(struct nvipcfix_fd_server *s);

/* In a child after fork(): the parent's socket is closed, a server of the
 * child's own starts on its first use, and the descriptors other threads
 * of the parent were handing over or receiving at the fork are closed (the
 * child would keep the exporter's memory alive). Takes no lock. */
void nvipcfix_fd_server_forget(struct nvipcfix_fd_server *s);

/* 0 when dir is a directory (not a symbolic link) owned by this process's
 * effective user, with no permission for group or others, and short enough
 * for a socket's name in it; else -1 and why says what is wrong. */
int nvipcfix_fd_check_dir(const char *dir, char *why, size_t n);

/* The socket's address for a server (dir for in_dir ones). Its length, or
 * 0 when it does not fit. */
socklen_t nvipcfix_fd_sockaddr(const struct nvipcfix_fd_address *a, const char *dir,
                               struct sockaddr_un *out);

/* Asks the server at *to for export_id's descriptors, proving knowledge of
 * its secret. The whole exchange ends by timeout_ms. Returns the status; on
 * NVIPCFIX_FD_OK, every descriptor offered was handed to the taker. */
int nvipcfix_fd_request(const struct nvipcfix_fd_address *to, const char *dir,
                        uint32_t export_id, const unsigned char secret[NVIPCFIX_KEY_BYTES],
                        int timeout_ms, const struct nvipcfix_fd_taker *taker,
                        int32_t *driver_error);

/* The same, on a connection kept for this process's next request to the
 * same server (one per server; the first request, or one while another
 * thread uses it, connects anew). Every request proves its own export's
 * secret as a fresh connection's does; a kept connection that the server
 * has given up (idle too long, or its thread needed) is replaced once,
 * before anything was received on it. */
int nvipcfix_fd_request_kept(const struct nvipcfix_fd_address *to, const char *dir,
                             uint32_t export_id, const unsigned char secret[NVIPCFIX_KEY_BYTES],
                             int timeout_ms, const struct nvipcfix_fd_taker *taker,
                             int32_t *driver_error);

/* In a child after fork(): the parent's kept connections are closed here
 * (not used: the parent's threads may be talking on them). Takes no lock. */
void nvipcfix_fd_kept_forget(void);

/* The proof of knowing an export's secret in one exchange: label 'S' the
 * server's, 'C' the client's (public for tests that play a hostile peer). */
void nvipcfix_fd_proof(const unsigned char key[NVIPCFIX_KEY_BYTES], char label, uint32_t id,
                       const unsigned char *client_nonce, const unsigned char *server_nonce,
                       const struct nvipcfix_fd_address *a, unsigned char out[NVIPCFIX_TAG_BYTES]);

/* Closes *fd, a descriptor of a batch being taken, and sets it to -1 first
 * (so a child forked meanwhile knows it is not to be closed). */
void nvipcfix_fd_close(int *fd);

/* The inode of this process's PID namespace (0: not known). */
uint32_t nvipcfix_own_pid_ns(void);

/* Nonzero when this process cannot open one more descriptor (EMFILE). */
int nvipcfix_fd_at_limit(void);

#endif
