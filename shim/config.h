/* Configuration from NVIPCFIX_* environment variables. */
#ifndef NVIPCFIX_CONFIG_H
#define NVIPCFIX_CONFIG_H

#include "log.h"

enum nvipcfix_mode {
    NVIPCFIX_MODE_FIX = 0,   /* rewrite exports, resolve opens (default) */
    NVIPCFIX_MODE_AUDIT = 1, /* change nothing, log what would be fixed */
    NVIPCFIX_MODE_OFF = 2,   /* pure pass-through */
};

#define NVIPCFIX_CONFIG_MAX_WARNINGS 8

struct nvipcfix_config {
    enum nvipcfix_mode mode;
    enum nvipcfix_log_level log_level;
    char log_file[1024]; /* empty: stderr */
    int self_open;       /* answer opens of our own exports (default 1) */
    int stats;           /* one summary line at exit (default 0) */
    int plain_tags;      /* NVIPCFIX_TAG=plain: tags a driver alone opens (default 0) */
    int vmm;             /* NVIPCFIX_VMM=1: export VMM memory as tickets (default 0) */
    int vmm_timeout_ms;  /* NVIPCFIX_VMM_TIMEOUT_MS: one VMM exchange's deadline (0: default) */
    char vmm_socket_dir[96]; /* NVIPCFIX_VMM_SOCKET_DIR: filesystem sockets there ("": none) */
    /* Problems found while parsing, to be logged once logging is set up. */
    int nwarnings;
    char warnings[NVIPCFIX_CONFIG_MAX_WARNINGS][160];
};

/* Reads the settings through getenv_fn (getenv in the library, a fake in
 * tests). envp, if not NULL, is scanned for NVIPCFIX_* names that mean
 * nothing, so that a typo does not pass unnoticed. A bad value leaves the
 * default and adds one warning. */
void nvipcfix_config_parse(struct nvipcfix_config *cfg,
                           const char *(*getenv_fn)(const char *name),
                           char *const *envp);

const char *nvipcfix_mode_name(enum nvipcfix_mode mode);

#endif
