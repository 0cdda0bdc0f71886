/* The one instance of the fix in this process (library.h): set up on the
 * first IPC call, reset in a forked child, reported on at exit. Uses the
 * real driver (real_driver.c) below it; the entry points (driver_entry.c)
 * and the load-order check (load_order.c) above it use it. */
#include "library.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "call_site.h"
#include "../shim/log.h"

/* The release (the VERSION file, through the Makefile), readable in the file:
 * `strings libnvipcfix.so | grep 'nvipcfix version'`; nvipcfix doctor reads it,
 * and so does another copy's load-order check (load_order.c). */
const char nvipcfix_version_mark[] = "nvipcfix version " NVIPCFIX_VERSION;

/* On the heap, set up once: in .bss its 10 KiB would cost every process
 * that loads the library (a mapping of its own at load) whether or not it
 * ever makes an IPC call. nvipcfix_library_ready is published last
 * (release), so a thread that reads it (acquire) sees the instance set up. */
static struct nvipcfix_fix *fix;
struct nvipcfix_fix *_Atomic nvipcfix_library_ready;
static pthread_once_t fix_once = PTHREAD_ONCE_INIT;

static const char *read_env(const char *name)
{
    return getenv(name);
}

/* The environment is found through dlsym, not the variable environ: a
 * reference to it would be bound at load, a symbol look-up every process
 * would pay for. */
void nvipcfix_config_from_environ(struct nvipcfix_config *cfg)
{
    char ***env = nvipcfix_real_dlsym(RTLD_DEFAULT, "environ");
    nvipcfix_config_parse(cfg, read_env, env != NULL ? *env : NULL);
}

static pid_t setup_pid;

/* At load, before the program can close fd 2 and open a file of its own
 * there: what stderr is (see nvipcfix_log_remember_stderr). */
__attribute__((constructor, section(".text.startup"))) static void remember_stderr_at_load(void)
{
    nvipcfix_log_remember_stderr();
}

/* Only a child handler: nothing is locked across fork(), so fork() costs
 * what it does without nvipcfix and cannot deadlock with the driver's own
 * handlers, whichever were registered first. */
static void fork_child(void)
{
    nvipcfix_fix_forget_after_fork(fix);
}

/* At exit, in each process that made an IPC call (a forked child that made
 * none says nothing): the mappings still open, the statistics line
 * (NVIPCFIX_STATS=1), and in audit mode the verdict and its call sites. */
static void at_exit(void)
{
    char line[512];
    size_t blocks;
    uint64_t bytes;
    nvipcfix_fix_stop(fix);
    if (getpid() != setup_pid && !nvipcfix_stats_any(&fix->stats))
        return;
    nvipcfix_import_usage(&fix->imports, &blocks, &bytes);
    if (blocks > 0)
        NVIPCFIX_INFO("at exit: %zu block%s (%.1f MiB) opened through nvipcfix still mapped "
                      "(never closed, or closed fewer times than opened)",
                      blocks, blocks == 1 ? "" : "s", (double)bytes / 1048576.0);
    if (fix->config.stats)
        nvipcfix_log_line("stats", "%s open at exit=%zu (%llu bytes)",
                          nvipcfix_stats_format(&fix->stats, line, sizeof line), blocks,
                          (unsigned long long)bytes);
    if (fix->config.mode == NVIPCFIX_MODE_AUDIT) {
        nvipcfix_log_line("audit", "%s", nvipcfix_audit_verdict(&fix->audit, line, sizeof line));
        unsigned long count;
        char where[NVIPCFIX_AUDIT_SITE_LEN];
        for (int i = 0; i < 8 && nvipcfix_audit_site(&fix->audit, i, where, sizeof where, &count);
             i++)
            nvipcfix_log_line("audit", "  %lu from %s", count, where);
    }
}

static void setup(void)
{
    struct nvipcfix_config cfg;
    nvipcfix_config_from_environ(&cfg);
    nvipcfix_log_open(cfg.log_level, cfg.log_file);
    for (int i = 0; i < cfg.nwarnings; i++)
        nvipcfix_log(NVIPCFIX_LOG_WARN, "%s", cfg.warnings[i]);

    const struct nvipcfix_real_driver *real = nvipcfix_real_driver();
    fix = calloc(1, sizeof *fix);
    if (fix == NULL) {
        NVIPCFIX_WARN_ONCE("out of memory when setting up; IPC calls go to the driver unchanged");
        return;
    }
    nvipcfix_fix_init(fix, &cfg, &real->ops);
    setup_pid = getpid();
    pthread_atfork(NULL, NULL, fork_child);
    if (cfg.mode == NVIPCFIX_MODE_AUDIT)
        fix->describe_caller = nvipcfix_describe_caller;
    atexit(at_exit);
    /* A library ahead of nvipcfix in the search order was named at load
     * (load_order.c). */
    NVIPCFIX_INFO("active: nvipcfix " NVIPCFIX_VERSION ", mode %s, self-open %s, VMM export %s",
                  nvipcfix_mode_name(cfg.mode), cfg.self_open ? "on" : "off",
                  cfg.vmm ? "on" : "off");
}

struct nvipcfix_fix *nvipcfix_library_setup(void)
{
    pthread_once(&fix_once, setup);
    if (fix != NULL)
        atomic_store_explicit(&nvipcfix_library_ready, fix, memory_order_release);
    return fix;
}
