#include "library.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "../shim/log.h"

extern char **environ;

static struct nvipcfix_fix fix;
static pthread_once_t fix_once = PTHREAD_ONCE_INIT;

static const char *read_env(const char *name)
{
    return getenv(name);
}

static pid_t setup_pid;

/* Only a child handler: nothing is locked across fork(), so fork() costs
 * what it does without nvipcfix and cannot deadlock with the driver's own
 * handlers, whichever were registered first. */
static void fork_child(void)
{
    nvipcfix_fix_forget_after_fork(&fix);
}

/* Each process its own counts; a forked child that made no IPC call says
 * nothing. */
static void print_stats(void)
{
    char line[512];
    if (getpid() != setup_pid && !nvipcfix_stats_any(&fix.stats))
        return;
    nvipcfix_log_line("stats", "%s", nvipcfix_stats_format(&fix.stats, line, sizeof line));
}

static void setup(void)
{
    struct nvipcfix_config cfg;
    nvipcfix_config_parse(&cfg, read_env, environ);
    nvipcfix_log_open(cfg.log_level, cfg.log_file);
    for (int i = 0; i < cfg.nwarnings; i++)
        nvipcfix_log(NVIPCFIX_LOG_WARN, "%s", cfg.warnings[i]);

    const struct nvipcfix_real_driver *real = nvipcfix_real_driver();
    nvipcfix_fix_init(&fix, &cfg, &real->ops);
    setup_pid = getpid();
    pthread_atfork(NULL, NULL, fork_child);
    if (cfg.stats)
        atexit(print_stats);
    const char *before = nvipcfix_dlsym_shadowed_by();
    if (before != NULL && cfg.mode != NVIPCFIX_MODE_OFF)
        nvipcfix_log(NVIPCFIX_LOG_WARN,
                     "%s defines dlsym and is loaded before nvipcfix: the look-ups it answers "
                     "itself never reach nvipcfix, so IPC through them is not fixed; load "
                     "libnvipcfix.so first in LD_PRELOAD (nvipcfix doctor checks the order)",
                     before);
    NVIPCFIX_INFO("active: mode %s, self-open %s", nvipcfix_mode_name(cfg.mode),
                  cfg.self_open ? "on" : "off");
}

struct nvipcfix_fix *nvipcfix_library(void)
{
    pthread_once(&fix_once, setup);
    return &fix;
}
