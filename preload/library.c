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

static void fork_prepare(void)
{
    nvipcfix_fix_lock_all(&fix);
}

static void fork_parent(void)
{
    nvipcfix_fix_unlock_all(&fix);
}

static void fork_child(void)
{
    nvipcfix_fix_reset_locks(&fix);
}

static void print_stats(void)
{
    char line[512];
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
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    if (cfg.stats)
        atexit(print_stats);
    NVIPCFIX_INFO("active: mode %s, self-open %s", nvipcfix_mode_name(cfg.mode),
                  cfg.self_open ? "on" : "off");
}

struct nvipcfix_fix *nvipcfix_library(void)
{
    pthread_once(&fix_once, setup);
    return &fix;
}
