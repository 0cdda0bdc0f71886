/* At load, once: is a library that defines dlsym or a cuIpc* entry point
 * ahead of nvipcfix in the process's search order? Such a library (HAMi-core
 * first in LD_PRELOAD, /etc/ld.so.preload) answers calls and look-ups
 * itself, and nvipcfix never sees them: no call reaches the library, so the
 * only chance to say so is now.
 *
 * Every process pays for this check, so the usual answer (nothing ahead of
 * nvipcfix) costs no look-up at all: the loader has already bound this
 * file's own references to the watched names (relocations it processes
 * anyway, the same global-scope search dlsym(RTLD_DEFAULT, ...) makes), and
 * when each is nvipcfix's own definition there is nothing to say. Only when
 * one is not is the definition's library found and named (dladdr: a walk of
 * its symbol table, some 10,000 instructions a name). */
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hooks.h"
#include "library.h"
#include "real_driver.h"
#include "../shim/log.h"

#undef cuIpcOpenMemHandle

/* The exported dlsym's own address (a hidden label in dlsym_entry_*.S). */
extern char nvipcfix_dlsym_entry[];

#define WATCHED 5
static const char *const watched[WATCHED] = {
    "dlsym", "cuIpcGetMemHandle", "cuIpcOpenMemHandle", "cuIpcOpenMemHandle_v2",
    "cuIpcCloseMemHandle",
};

/* The first definition of each watched name in the search order: these
 * references go through the global offset table (the names have default
 * visibility, so the loader may bind them to another library's definition),
 * filled at load. */
static void first_definitions(void *first[WATCHED])
{
    first[0] = (void *)&dlsym;
    first[1] = (void *)&cuIpcGetMemHandle;
    first[2] = (void *)&cuIpcOpenMemHandle;
    first[3] = (void *)&cuIpcOpenMemHandle_v2;
    first[4] = (void *)&cuIpcCloseMemHandle;
}

/* nvipcfix's own definitions (hidden names, bound inside this file). */
static void own_definitions(void *own[WATCHED])
{
    own[0] = (void *)nvipcfix_dlsym_entry;
    own[1] = (void *)nvipcfix_own_ipc_get_mem_handle;
    own[2] = (void *)nvipcfix_own_ipc_open_mem_handle;
    own[3] = (void *)nvipcfix_own_ipc_open_mem_handle_v2;
    own[4] = (void *)nvipcfix_own_ipc_close_mem_handle;
}

static int first_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    *(ElfW(Addr) *)arg = info->dlpi_addr;
    return 1; /* the program comes first */
}

/* The library (not nvipcfix, the program or the C library) that gives the
 * first definition of one of the names in first[] other than nvipcfix's;
 * names gets the names it defines there, comma-separated. NULL when
 * nvipcfix comes first. */
static const char *library_before_nvipcfix(void *const first[WATCHED],
                                           void *const own[WATCHED], char *names, size_t n)
{
    Dl_info self, libc, found;
    ElfW(Addr) program = 0;
    const char *name_of_first = NULL;
    names[0] = '\0';
    if (dladdr(own[0], &self) == 0)
        return NULL;
    if (dladdr((void *)&getpid, &libc) == 0) /* the C library */
        libc.dli_fbase = NULL;
    dl_iterate_phdr(first_object, &program);
    for (size_t i = 0; i < WATCHED; i++) {
        if (first[i] == NULL || first[i] == own[i] || dladdr(first[i], &found) == 0 ||
            found.dli_fname == NULL || found.dli_fbase == self.dli_fbase ||
            found.dli_fbase == libc.dli_fbase || (ElfW(Addr))found.dli_fbase == program)
            continue;
        if (name_of_first == NULL)
            name_of_first = found.dli_fname;
        else if (strcmp(name_of_first, found.dli_fname) != 0)
            continue; /* one library named at a time */
        size_t used = strlen(names);
        snprintf(names + used, n - used, "%s%s", used ? ", " : "", watched[i]);
    }
    return name_of_first;
}

__attribute__((constructor)) static void check_load_order(void)
{
    void *first[WATCHED], *own[WATCHED];
    first_definitions(first);
    own_definitions(own);
    if (memcmp(first, own, sizeof first) == 0)
        return; /* the usual case: nothing ahead of nvipcfix */
    char names[256];
    const char *before = library_before_nvipcfix(first, own, names, sizeof names);
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
