/* Why a real open failed, in words: from the driver's error and what can be
 * checked locally (a current context, whether the exporting process is
 * visible here, whether this process exported the handle itself, the
 * flags). One warning per distinct cause, not per call: a first warning of
 * one cause never hides a later one of another. */
#ifndef NVIPCFIX_OPEN_ERRORS_H
#define NVIPCFIX_OPEN_ERRORS_H

#include <cuda.h>
#include <stddef.h>
#include <sys/types.h>

struct nvipcfix_open_facts {
    int has_context;      /* a context was current in the calling thread */
    pid_t exporter_pid;   /* from the handle's bytes 8-15 as measured; 0: not known */
    int exporter_visible; /* 1 it exists in this PID namespace, 0 it does not, -1 not known */
    int own_export;       /* this process exported the handle */
    unsigned int flags;   /* the flags the open was asked with */
};

enum nvipcfix_open_cause {
    NVIPCFIX_CAUSE_NONE = 0, /* nothing more to say than the driver's error */
    NVIPCFIX_CAUSE_NO_CONTEXT,
    NVIPCFIX_CAUSE_FLAGS,
    NVIPCFIX_CAUSE_OWN_EXPORT,
    NVIPCFIX_CAUSE_EXPORTER_GONE,
    NVIPCFIX_CAUSE_DEVICE,
    NVIPCFIX_CAUSE_PEER,
    NVIPCFIX_CAUSE_STALE_MAPPING,
    NVIPCFIX_CAUSE_CORRUPT,
    NVIPCFIX_CAUSE_COUNT,
};

/* The most likely cause of error r, and a sentence saying it (with what to
 * do) in buf. */
enum nvipcfix_open_cause nvipcfix_open_error_cause(CUresult r,
                                                   const struct nvipcfix_open_facts *f,
                                                   char *buf, size_t n);

/* The exporting process id a driver wrote into a handle (bytes 8-15, as
 * measured on driver 580), or 0 when the bytes do not look like one. */
pid_t nvipcfix_handle_exporter_pid(const unsigned char handle[64]);

/* 1 when pid exists in this process's PID namespace, 0 when it does not,
 * -1 when that cannot be told. */
int nvipcfix_pid_visible(pid_t pid);

#endif
