#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const mode_names[] = {"fix", "audit", "off"};
static const char *const level_names[] = {"error", "warn", "info", "debug"};

const char *nvipcfix_mode_name(enum nvipcfix_mode mode)
{
    return mode_names[mode];
}

__attribute__((format(printf, 2, 3)))
static void add_warning(struct nvipcfix_config *cfg, const char *fmt, ...)
{
    if (cfg->nwarnings >= NVIPCFIX_CONFIG_MAX_WARNINGS)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cfg->warnings[cfg->nwarnings++], sizeof cfg->warnings[0], fmt, ap);
    va_end(ap);
}

/* Index of value in names[0..n), or -1. */
static int pick(const char *value, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(value, names[i]) == 0)
            return i;
    return -1;
}

static void parse_choice(struct nvipcfix_config *cfg, const char *var, const char *value,
                         const char *const *names, int n, int *out)
{
    if (value == NULL)
        return;
    int i = pick(value, names, n);
    if (i < 0) {
        add_warning(cfg, "%s='%.40s' is not one of the accepted values; using '%s'", var,
                    value, names[*out]);
        return;
    }
    *out = i;
}

static const char *const bool_names[] = {"0", "1"};
static const char *const tag_names[] = {"guarded", "plain"};

static const char *const known_vars[] = {
    "NVIPCFIX_MODE", "NVIPCFIX_LOG", "NVIPCFIX_LOG_FILE", "NVIPCFIX_SELF_OPEN",
    "NVIPCFIX_STATS", "NVIPCFIX_TAG", "NVIPCFIX_VMM", "NVIPCFIX_VMM_TIMEOUT_MS", "NVIPCFIX_VMM_SOCKET_DIR",
    "NVIPCFIX_LIBRARY" /* the launcher's */,
};

/* NVIPCFIX_VMM_TIMEOUT_MS (1 to 3600000) and NVIPCFIX_VMM_SOCKET_DIR (an
 * absolute path; checked where it is used). */
static void parse_vmm(struct nvipcfix_config *cfg, const char *(*getenv_fn)(const char *name))
{
    const char *ms = getenv_fn("NVIPCFIX_VMM_TIMEOUT_MS");
    if (ms != NULL && ms[0] != '\0') {
        char *end;
        long v = strtol(ms, &end, 10);
        if (*end != '\0' || v < 1 || v > 3600000)
            add_warning(cfg, "NVIPCFIX_VMM_TIMEOUT_MS='%.40s' is not a number of milliseconds "
                             "from 1 to 3600000; using the default", ms);
        else
            cfg->vmm_timeout_ms = (int)v;
    }
    const char *dir = getenv_fn("NVIPCFIX_VMM_SOCKET_DIR");
    if (dir != NULL && dir[0] != '\0') {
        if (dir[0] != '/' || strlen(dir) >= sizeof cfg->vmm_socket_dir)
            add_warning(cfg, "NVIPCFIX_VMM_SOCKET_DIR must be an absolute path of at most %zu "
                             "characters; VMM sockets stay in the abstract namespace",
                        sizeof cfg->vmm_socket_dir - 1);
        else
            strcpy(cfg->vmm_socket_dir, dir);
    }
}

void nvipcfix_config_parse(struct nvipcfix_config *cfg,
                           const char *(*getenv_fn)(const char *name), char *const *envp)
{
    memset(cfg, 0, sizeof *cfg);
    int mode = NVIPCFIX_MODE_FIX, level = NVIPCFIX_LOG_WARN, self_open = 1, stats = 0;
    int plain_tags = 0, vmm = 0;

    parse_choice(cfg, "NVIPCFIX_MODE", getenv_fn("NVIPCFIX_MODE"), mode_names, 3, &mode);
    parse_choice(cfg, "NVIPCFIX_LOG", getenv_fn("NVIPCFIX_LOG"), level_names, 4, &level);
    parse_choice(cfg, "NVIPCFIX_SELF_OPEN", getenv_fn("NVIPCFIX_SELF_OPEN"), bool_names, 2,
                 &self_open);
    parse_choice(cfg, "NVIPCFIX_STATS", getenv_fn("NVIPCFIX_STATS"), bool_names, 2, &stats);
    parse_choice(cfg, "NVIPCFIX_TAG", getenv_fn("NVIPCFIX_TAG"), tag_names, 2, &plain_tags);
    parse_choice(cfg, "NVIPCFIX_VMM", getenv_fn("NVIPCFIX_VMM"), bool_names, 2, &vmm);

    parse_vmm(cfg, getenv_fn);

    const char *file = getenv_fn("NVIPCFIX_LOG_FILE");
    if (file != NULL && file[0] != '\0') {
        if (strlen(file) >= sizeof cfg->log_file)
            add_warning(cfg, "NVIPCFIX_LOG_FILE is too long; logging to stderr");
        else
            strcpy(cfg->log_file, file);
    }

    cfg->mode = (enum nvipcfix_mode)mode;
    cfg->log_level = (enum nvipcfix_log_level)level;
    cfg->self_open = self_open;
    cfg->stats = stats;
    cfg->plain_tags = plain_tags;
    cfg->vmm = vmm;

    for (char *const *e = envp; e != NULL && *e != NULL; e++) {
        if (strncmp(*e, "NVIPCFIX_", 9) != 0)
            continue;
        size_t len = strcspn(*e, "=");
        int known = 0;
        for (size_t i = 0; i < sizeof known_vars / sizeof known_vars[0]; i++)
            if (strlen(known_vars[i]) == len && strncmp(*e, known_vars[i], len) == 0)
                known = 1;
        if (!known)
            add_warning(cfg, "unknown variable %.*s ignored", (int)(len > 60 ? 60 : len), *e);
    }
}
