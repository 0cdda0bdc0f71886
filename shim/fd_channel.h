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

/* The most descriptors one answer carries. */
#define NVIPCFIX_FD_MAX (1u << 16)

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

struct nvipcfix_fd_reply {
    int32_t status;       /* enum nvipcfix_fd_status */
    int32_t driver_error; /* NVIPCFIX_FD_FAILED: the exporter's driver's error */
    uint32_t n;
    uint64_t *sizes;   /* n sizes, malloc'd */
    uint64_t *offsets; /* n places, from the first one's, malloc'd */
    int *fds;          /* n descriptors, malloc'd */
};

/* Closes every descriptor still in the reply (those not set to -1) and
 * frees its arrays. */
void nvipcfix_fd_reply_free(struct nvipcfix_fd_reply *r);

/* Fills out for the export asked for; the channel sends the descriptors,
 * then closes them and frees the arrays. Runs on the server's thread. */
typedef void (*nvipcfix_fd_serve_fn)(void *arg, uint64_t export_id,
                                     struct nvipcfix_fd_reply *out);

struct nvipcfix_fd_server {
    pthread_mutex_t lock;
    int fd; /* listening socket; -1 before the start */
    pid_t pid;
    uint64_t secret;
    nvipcfix_fd_serve_fn serve;
    void *arg;
    atomic_int stopping;
    atomic_ulong served, refused;
    atomic_int running; /* the thread has not ended yet */
};

void nvipcfix_fd_server_init(struct nvipcfix_fd_server *s, nvipcfix_fd_serve_fn serve,
                             void *arg);

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

/* Asks process pid for export_id's descriptors. Returns out->status; on
 * NVIPCFIX_FD_OK the caller owns out (nvipcfix_fd_reply_free). timeout_ms
 * bounds every wait for the other side. */
int nvipcfix_fd_request(pid_t pid, uint64_t secret, uint64_t export_id, int timeout_ms,
                        struct nvipcfix_fd_reply *out);

const char *nvipcfix_fd_status_name(int status);

#endif
