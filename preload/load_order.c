/* At load, once: is a library that defines dlsym or a cuIpc* entry point
 * ahead of nvipcfix in the process's search order? Such a library (HAMi-core
 * first in LD_PRELOAD, /etc/ld.so.preload) answers calls and look-ups
 * itself, and nvipcfix never sees them: no call reaches the library, so the
 * only chance to say so is now. A few look-ups in the global scope, each
 * compared with nvipcfix's own definition of the name. */
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

#include "library.h"
#include "real_driver.h"
#include "../shim/log.h"

static const char *const watched[] = {
    "dlsym", "cuIpcGetMemHandle", "cuIpcOpenMemHandle", "cuIpcOpenMemHandle_v2",
    "cuIpcCloseMemHandle",
};

static int first_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    *(ElfW(Addr) *)arg = info->dlpi_addr;
    return 1; /* the program comes first */
}

/* The library (not nvipcfix, the program or the C library) that gives the
 * first definition of one of the watched names; names gets the names it
 * defines there, comma-separated. NULL when nvipcfix comes first. */
static const char *defined_before_nvipcfix(char *names, size_t n)
{
    Dl_info self, libc, found;
    ElfW(Addr) program = 0;
    const char *first = NULL;
    names[0] = '\0';
    if (dladdr((void *)defined_before_nvipcfix, &self) == 0)
        return NULL;
    void *glibc = nvipcfix_real_dlsym(RTLD_NEXT, "malloc");
    if (glibc == NULL || dladdr(glibc, &libc) == 0)
        libc.dli_fbase = NULL;
    dl_iterate_phdr(first_object, &program);
    for (size_t i = 0; i < sizeof watched / sizeof watched[0]; i++) {
        void *fn = nvipcfix_real_dlsym(RTLD_DEFAULT, watched[i]);
        if (fn == NULL || dladdr(fn, &found) == 0 || found.dli_fname == NULL ||
            found.dli_fbase == self.dli_fbase || found.dli_fbase == libc.dli_fbase ||
            (ElfW(Addr))found.dli_fbase == program)
            continue;
        if (first == NULL)
            first = found.dli_fname;
        else if (strcmp(first, found.dli_fname) != 0)
            continue; /* one library named at a time */
        size_t used = strlen(names);
        snprintf(names + used, n - used, "%s%s", used ? ", " : "", watched[i]);
    }
    return first;
}

__attribute__((constructor)) static void check_load_order(void)
{
    char names[256];
    const char *before = defined_before_nvipcfix(names, sizeof names);
    if (before == NULL)
        return;
    struct nvipcfix_config cfg;
    nvipcfix_config_from_environ(&cfg);
    if (cfg.mode == NVIPCFIX_MODE_OFF)
        return;
    nvipcfix_log_open(cfg.log_level, cfg.log_file);
    nvipcfix_log(NVIPCFIX_LOG_WARN,
                 "%s is loaded before nvipcfix and defines %s: the calls and look-ups it "
                 "answers itself never reach nvipcfix, so IPC through them is not fixed; load "
                 "libnvipcfix.so first in LD_PRELOAD (nvipcfix -- COMMAND does; nvipcfix doctor "
                 "checks the order)",
                 before, names);
}
