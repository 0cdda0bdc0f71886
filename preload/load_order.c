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
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hooks.h"
#include "library.h"
#include "real_driver.h"
#include "../shim/log.h"

#undef cuIpcOpenMemHandle
#undef cuGetProcAddress

/* The exported dlsym's own address (a hidden label in dlsym_entry_*.S). */
extern char nvipcfix_dlsym_entry[];

/* The first IPC names: a library ahead that defines one gets a warning.
 * The others (and dlsym) are roads to the VMM mapping calls: a library
 * ahead that defines one may map or unmap where nvipcfix cannot count it,
 * so the mapping generation is marked untracked (repeated exports of a
 * reservation's start then walk it each time, as before it was counted),
 * and said at info level. */
#define WATCHED 11
#define IPC_NAMES 5
static const char *const watched[WATCHED] = {
    "dlsym", "cuIpcGetMemHandle", "cuIpcOpenMemHandle", "cuIpcOpenMemHandle_v2",
    "cuIpcCloseMemHandle", "cuGetProcAddress", "cuGetProcAddress_v2", "cuMemMap", "cuMemUnmap",
    "cuMemSetAccess", "cuMemAddressFree",
};

/* The first definition of each watched name in the search order: these
 * references go through the global offset table (the names have default
 * visibility, so the loader may bind them to another library's definition),
 * filled at load. */
static inline __attribute__((always_inline)) void first_definitions(void *first[WATCHED])
{
    first[0] = (void *)&dlsym;
    first[1] = (void *)&cuIpcGetMemHandle;
    first[2] = (void *)&cuIpcOpenMemHandle;
    first[3] = (void *)&cuIpcOpenMemHandle_v2;
    first[4] = (void *)&cuIpcCloseMemHandle;
    first[5] = (void *)&cuGetProcAddress;
    first[6] = (void *)&cuGetProcAddress_v2;
    first[7] = (void *)&cuMemMap;
    first[8] = (void *)&cuMemUnmap;
    first[9] = (void *)&cuMemSetAccess;
    first[10] = (void *)&cuMemAddressFree;
}

/* nvipcfix's own definitions (hidden names, bound inside this file). */
static inline __attribute__((always_inline)) void own_definitions(void *own[WATCHED])
{
    own[0] = (void *)nvipcfix_dlsym_entry;
    own[1] = (void *)nvipcfix_own_ipc_get_mem_handle;
    own[2] = (void *)nvipcfix_own_ipc_open_mem_handle;
    own[3] = (void *)nvipcfix_own_ipc_open_mem_handle_v2;
    own[4] = (void *)nvipcfix_own_ipc_close_mem_handle;
    own[5] = (void *)nvipcfix_own_get_proc_address;
    own[6] = (void *)nvipcfix_own_get_proc_address_v2;
    own[7] = (void *)nvipcfix_own_mem_map;
    own[8] = (void *)nvipcfix_own_mem_unmap;
    own[9] = (void *)nvipcfix_own_mem_set_access;
    own[10] = (void *)nvipcfix_own_mem_address_free;
}

static int first_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    *(ElfW(Addr) *)arg = info->dlpi_addr;
    return 1; /* the program comes first */
}

/* The library (not nvipcfix, the program or the C library) that gives the
 * first definition of one of the names first[from, to) other than
 * nvipcfix's; names gets the names it defines there, comma-separated. NULL
 * when nvipcfix comes first. */
static const char *library_before_nvipcfix(void *const first[WATCHED],
                                           void *const own[WATCHED], size_t from, size_t to,
                                           char *names, size_t n)
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
    for (size_t i = from; i < to; i++) {
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

/* In .text.startup whatever the optimization level (GCC puts constructors
 * there only at -O2): GNU ld places that section at the front of the code,
 * in pages the loader has faulted in anyway. */
__attribute__((constructor, section(".text.startup"))) static void check_load_order(void)
{
    void *first[WATCHED], *own[WATCHED];
    first_definitions(first);
    own_definitions(own);
    /* Compared here, not with memcmp: its page of the C library is often
     * not mapped yet at load, nor is memcmp bound (-z lazy). */
    size_t ours = 0;
    for (size_t i = 0; i < WATCHED; i++)
        ours += first[i] == own[i];
    if (ours == WATCHED)
        return; /* the usual case: nothing ahead of nvipcfix */
    char names[256], mapping_names[256];
    const char *before = library_before_nvipcfix(first, own, 0, IPC_NAMES, names, sizeof names);
    const char *mapping = library_before_nvipcfix(first, own, IPC_NAMES, WATCHED, mapping_names,
                                                  sizeof mapping_names);
    if (before == NULL && mapping == NULL)
        return;
    if ((before != NULL && first[0] != own[0]) || mapping != NULL)
        atomic_fetch_or_explicit(&nvipcfix_map_generation, NVIPCFIX_MAP_GEN_UNTRACKED,
                                 memory_order_acq_rel);
    struct nvipcfix_config cfg;
    nvipcfix_config_from_environ(&cfg);
    if (cfg.mode == NVIPCFIX_MODE_OFF)
        return;
    nvipcfix_log_open(cfg.log_level, cfg.log_file);
    if (before != NULL)
        nvipcfix_log(NVIPCFIX_LOG_WARN,
                     "%s is loaded before nvipcfix and defines %s: the calls and look-ups it "
                     "answers itself never reach nvipcfix, so IPC through them is not fixed; "
                     "load libnvipcfix.so first in LD_PRELOAD (nvipcfix -- COMMAND does; "
                     "nvipcfix doctor checks the order)",
                     before, names);
    if (mapping != NULL)
        NVIPCFIX_INFO("%s is loaded before nvipcfix and defines %s: VMM mappings made through "
                      "it may not be counted, so every export of a VMM reservation's start "
                      "walks the reservation",
                      mapping, mapping_names);
}
