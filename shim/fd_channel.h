/* File descriptors from one process to another of the same user, over a
 * Unix socket in the abstract namespace (no file on disk), with SCM_RIGHTS.
 *
 * The server is a thread of the exporting process, started on its first
 * use. Its socket name holds the process id and a random 64-bit secret, and
 * every request must carry that secret: only a process that was given a
 * ticket (which holds both) can ask. The server also checks the asking
 * process with SO_PEERCRED (same user, or root), and the client checks that
 * the process listening on the name is the one the ticket names, so no
 * other process can pose as the exporter. */
#ifndef NVIPCFIX_FD_CHANNEL_H
#define NVIPCFIX_FD_CHANNEL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

/* The most descriptors one answer offers, and how many travel together. */
#define NVIPCFIX_FD_MAX (1u << 20)
#define NVIPCFIX_FD_BATCH 250

enum nvipcfix_fd_status {
    NVIPCFIX_FD_OK = 0,
    /* from the exporter */
    NVIPCFIX_FD_UNKNOWN = 1, /* no such export in that process */
    NVIPCFIX_FD_FREED = 2,   /* the exported memory was freed or remapped since */
    NVIPCFIX_FD_REFUSED = 3, /* wrong secret, or a process of another user */
    NVIPCFIX_FD_FAILED = 4,  /* the exporter's driver could not export it */
    /* found by the asking side */
    NVIPCFIX_FD_NO_EXPORTER = 5, /* nothing listens on the exporter's name */
    NVIPCFIX_FD_IMPOSTOR = 6,    /* the process listening is not the exporter */
    NVIPCFIX_FD_BROKEN = 7,      /* connection failed, timed out or was cut short */
};

/* What the exporter says about an export: how many descriptors it offers,
 * and each one's size and place. */
struct nvipcfix_fd_reply {
    int32_t status;       /* enum nvipcfix_fd_status */
    int32_t driver_error; /* NVIPCFIX_FD_FAILED: the exporter's driver's error */
    uint32_t n;           /* offered; the client learns at the end how many came */
    uint64_t *sizes;      /* n sizes, malloc'd */
    uint64_t *offsets;    /* n places, from the first one's, malloc'd */
};

/* Frees the reply's arrays. */
void nvipcfix_fd_reply_free(struct nvipcfix_fd_reply *r);

/* The exporter's side, on the server's thread. describe fills out for the
 * export (status; for NVIPCFIX_FD_OK n, sizes, offsets). export_fds writes
 * the descriptors of items [first, first + count) into fds, in order, and
 * returns how many it made: fewer means the rest is not to be handed over
 * (with none for item 0, *driver_error may say why). The channel sends them
 * in batches as they are made and closes them, so neither side ever holds
 * more than one batch. */
struct nvipcfix_fd_service {
    void (*describe)(void *arg, uint64_t export_id, struct nvipcfix_fd_reply *out);
    uint32_t (*export_fds)(void *arg, uint64_t export_id, uint32_t first, uint32_t count,
                           int *fds, int32_t *driver_error);
    void *arg;
};

/* The asking side: begin is called once with the offer (nonzero: give up);
 * take with each batch of descriptors, items [first, first + k), which it
 * owns from then on (nonzero: stop, the rest is not received). */
struct nvipcfix_fd_taker {
    int (*begin)(void *arg, const struct nvipcfix_fd_reply *offer);
    int (*take)(void *arg, uint32_t first, const int *fds, uint32_t k);
    void *arg;
};

struct nvipcfix_fd_server {
    pthread_mutex_t lock;
    int fd; /* listening socket; -1 before the start */
    pid_t pid;
    uint64_t secret;
    struct nvipcfix_fd_service service;
    atomic_int stopping;
    atomic_ulong served, refused;
    atomic_int running; /* the thread has not ended yet */
};

void nvipcfix_fd_server_init(struct nvipcfix_fd_server *s,
                             const struct nvipcfix_fd_service *service);

/* Starts the server if it is not running: 0, or an errno value. *pid and
 * *secret get what a client needs to reach it. */
int nvipcfix_fd_server_start(struct nvipcfix_fd_server *s, pid_t *pid, uint64_t *secret);

/* No request is served after this (at exit; the thread, detached, ends on
 * its own and is not waited for). */
void nvipcfix_fd_server_stop(struct nvipcfix_fd_server *s);

/* Stops the server, waits for its thread and closes its socket. */
void nvipcfix_fd_server_destroy(struct nvipcfix_fd_server *s);

/* In a child after fork(): the parent's socket is closed, a server of the
 * child's own starts on its first use. Takes no lock. */
void nvipcfix_fd_server_forget(struct nvipcfix_fd_server *s);

/* Asks process pid for export_id's descriptors. Returns the status; on
 * NVIPCFIX_FD_OK, *served is how many descriptors were handed to the taker
 * (at least one). timeout_ms bounds every wait for the other side. */
int nvipcfix_fd_request(pid_t pid, uint64_t secret, uint64_t export_id, int timeout_ms,
                        const struct nvipcfix_fd_taker *taker, uint32_t *served,
                        int32_t *driver_error);


#endif
