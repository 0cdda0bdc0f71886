/* At load, once: is a library that defines dlsym or a cuIpc* entry point
 * ahead of nvipcfix in the process's search order? Such a library (HAMi-core
 * first in LD_PRELOAD, /etc/ld.so.preload) answers calls and look-ups
 * itself, and nvipcfix never sees them: no call reaches the library, so the
 * only chance to say so is now.
 *
 * Every process pays for this check, so the usual answer (nothing ahead of
 * nvipcfix defines a watched name) costs no symbol look-up: the loader's
 * list of objects says what is ahead (the program, the vDSO, the libraries
 * preloaded before nvipcfix), and the GNU hash table of each but the vDSO
 * says, without a look-up, which of the names it may define (gnu_hash.c).
 * Only when one may are the names looked up as the loader binds them,
 * and a definition's library (never the program's) found and named;
 * nvipcfix opened with dlopen reads every object loaded before it (the C
 * library's dlsym among them: the names are looked up), and in another
 * namespace, where it is not in the list, looks them up too. The table of
 * wrappers is given the first definitions (driver_entry.c): nvipcfix's own
 * in the usual case, with no look-up either. (The check
 * once read the loader's bindings of the names from the global offset
 * table: eleven look-ups at load, a third of the instructions nvipcfix
 * added to a process's start.) */
#include <dlfcn.h>
#include <link.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "gnu_hash.h"
#include "hooks.h"
#include "library.h"
#include "real_driver.h"
#include "watched_names.h"
#include "../shim/log.h"

#undef cuIpcOpenMemHandle
#undef cuGetProcAddress

/* The first IPC names: a library ahead that defines one gets a warning.
 * The others (and dlsym) are roads to the VMM mapping calls: a library
 * ahead that defines one may map or unmap where nvipcfix cannot count it,
 * so the mapping generation is marked untracked (repeated exports of a
 * reservation's start then walk it each time, as before it was counted),
 * and said at info level. */
#define WATCHED NVIPCFIX_WATCHED
#define IPC_NAMES 5

/* The first definition of each watched name in the search order, as the
 * loader would bind a reference to it from nvipcfix (glibc's dlsym with
 * RTLD_DEFAULT, from here: the same scope). */
static void first_definitions(void *first[WATCHED])
{
    for (size_t i = 0; i < WATCHED; i++)
        first[i] = nvipcfix_real_dlsym(RTLD_DEFAULT, nvipcfix_watched_names[i]);
}

/* The library (not nvipcfix, the program or glibc's) that gives the
 * first definition of one of the names first[from, to) other than
 * nvipcfix's; names gets the names it defines there, comma-separated. NULL
 * when nvipcfix comes first. */
static const char *library_before_nvipcfix(void *const first[WATCHED], size_t from, size_t to,
                                           char *names, size_t n)
{
    Dl_info self, glibc, found;
    ElfW(Addr) program = 0;
    const char *name_of_first = NULL;
    names[0] = '\0';
    void *const *own = nvipcfix_own_definitions;
    if (dladdr(own[0], &self) == 0)
        return NULL;
    /* glibc's object that defines dlsym (the C library, or libdl before
     * glibc 2.34): its dlsym is no library's ahead of nvipcfix. */
    void *glibc_dlsym = nvipcfix_glibc_dlsym();
    if (glibc_dlsym == NULL || dladdr(glibc_dlsym, &glibc) == 0)
        glibc.dli_fbase = NULL;
    if (_r_debug.r_map != NULL)
        program = _r_debug.r_map->l_addr; /* the program comes first */
    for (size_t i = from; i < to; i++) {
        if (first[i] == NULL || first[i] == own[i] || dladdr(first[i], &found) == 0 ||
            found.dli_fname == NULL || found.dli_fbase == self.dli_fbase ||
            found.dli_fbase == glibc.dli_fbase || (ElfW(Addr))found.dli_fbase == program)
            continue;
        if (name_of_first == NULL)
            name_of_first = found.dli_fname;
        else if (strcmp(name_of_first, found.dli_fname) != 0)
            continue; /* one library named at a time */
        size_t used = strlen(names);
        snprintf(names + used, n - used, "%s%s", used ? ", " : "",
                 nvipcfix_watched_names[i]);
    }
    return name_of_first;
}

/* The vDSO's name in the loader's list: "linux-vdso.so.1" ("linux-gate.so.1"
 * on 32-bit x86), the kernel's object, which defines none of the names;
 * the whole name, so that no library's path can pass for it. Compared a
 * character at a time in the code: a string constant would fault in a
 * page of read-only data in every process, and strcmp's page of the C
 * library is often not mapped yet at load, nor is it bound. */
__attribute__((section(".text.startup"))) static int is_vdso(const char *n)
{
    return n != NULL && n[0] == 'l' && n[1] == 'i' && n[2] == 'n' && n[3] == 'u' &&
           n[4] == 'x' && n[5] == '-' &&
           ((n[6] == 'v' && n[7] == 'd' && n[8] == 's' && n[9] == 'o') ||
            (n[6] == 'g' && n[7] == 'a' && n[8] == 't' && n[9] == 'e')) &&
           n[10] == '.' && n[11] == 's' && n[12] == 'o' && n[13] == '.' && n[14] == '1' &&
           n[15] == '\0';
}

/* The watched names' hashes, placed with the start-up code (a section
 * GNU ld puts with .text.startup) for the same reason. */
static const uint32_t watched_hash[WATCHED]
    __attribute__((section(".text.startup.nvipcfix_names"))) = {NVIPCFIX_WATCHED_HASHES};

/* The watched names that the program or a library ahead of nvipcfix may
 * define (bit k for name k), from the loader's list of objects in load
 * order, which for the program and its preloaded libraries is the search
 * order: the program first, the vDSO, then the libraries of LD_PRELOAD
 * and /etc/ld.so.preload in turn, then their dependencies (and then the
 * libraries opened since: a nvipcfix opened with dlopen comes after
 * them). Every name when nvipcfix is not found in it (in another
 * namespace): the names are then looked up. */
__attribute__((section(".text.startup"))) static uint32_t names_ahead(void)
{
    extern ElfW(Dyn) _DYNAMIC[]; /* nvipcfix's own dynamic section (the linker's) */
    const uint32_t all = ((uint32_t)1 << WATCHED) - 1;
    uint32_t may = 0;
    for (const struct link_map *m = _r_debug.r_map; m != NULL; m = m->l_next) {
        if (m->l_ld == _DYNAMIC)
            return may; /* nvipcfix: what is ahead of it is known */
        if (!is_vdso(m->l_name))
            may |= nvipcfix_may_define(m->l_addr, m->l_ld, watched_hash, WATCHED);
    }
    return all;
}

/* ---- another copy of nvipcfix ahead ---------------------------------------
 * The system's in /etc/ld.so.preload and a wheel's through the launcher:
 * the first copy in the search order fixes the calls the program makes,
 * and calls the next definitions, those of the libraries after it, this
 * copy's among them (dlsym(RTLD_NEXT)), directly or through interposers
 * between the two. A second fix here would take the first copy's answers
 * (tagged handles, VMM tickets) for the driver's: such calls go to the
 * driver unchanged (driver_entry.c), any other is fixed. A copy is known
 * by what it defines (every watched name, from its GNU hash table) and
 * the release it carries in its read-only data ("nvipcfix version X",
 * library.c, as a string of its own), not by its file name. */

/* One object of the loader's list: the span of its loaded segments, and
 * with release non-NULL whether it carries a release of nvipcfix (then
 * written there). */
struct object_look {
    const char *name; /* the link map's l_name: dl_iterate_phdr gives the same pointer */
    ElfW(Addr) start, end;
    char *release;
    size_t n;
    int found;
};

/* A release's number, then its end: digits and dots, at most 15. */
static int release_number(const char *v, const char *stop)
{
    if (v >= stop || *v < '0' || *v > '9')
        return 0;
    for (const char *c = v; c < stop && c - v <= 15; c++) {
        if (*c == '\0')
            return 1;
        if ((*c < '0' || *c > '9') && *c != '.')
            return 0;
    }
    return 0;
}

/* The release text in the read-only segments of a library that may
 * define every watched name: in their first MiB each (nvipcfix's is in its
 * first 200 KiB), and only in bytes the file holds (a segment that runs
 * past the end of its file would fault there). */
static void find_release(struct dl_phdr_info *info, struct object_look *o)
{
    const char *mark = nvipcfix_version_mark; /* its first NVIPCFIX_VERSION_MARK_PREFIX bytes */
    const size_t len = NVIPCFIX_VERSION_MARK_PREFIX;
    struct stat st;
    if (info->dlpi_name == NULL || stat(info->dlpi_name, &st) != 0 || st.st_size < 0)
        return;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum && !o->found; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || (ph->p_flags & (PF_R | PF_W)) != PF_R ||
            ph->p_offset >= (ElfW(Off))st.st_size)
            continue;
        size_t size = ph->p_filesz;
        if (size > (ElfW(Off))st.st_size - ph->p_offset)
            size = (ElfW(Off))st.st_size - ph->p_offset;
        if (size > (size_t)1 << 20)
            size = (size_t)1 << 20;
        const char *m, *p = (const char *)(info->dlpi_addr + ph->p_vaddr);
        const char *start = p, *stop = p + size;
        for (; !o->found && (m = memmem(p, (size_t)(stop - p), mark, len)) != NULL; p = m + 1) {
            /* a string of its own: "nvipcfix version ", then the number */
            if ((m == start || m[-1] == '\0') && release_number(m + len, stop)) {
                snprintf(o->release, o->n, "%s", m);
                o->found = 1;
            }
        }
    }
}

static int look_at_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    struct object_look *o = arg;
    if (info->dlpi_name != o->name)
        return 0;
    o->start = UINTPTR_MAX;
    o->end = 0;
    for (ElfW(Half) i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        ElfW(Addr) from = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD) {
            o->start = from < o->start ? from : o->start;
            o->end = from + ph->p_memsz > o->end ? from + ph->p_memsz : o->end;
        }
    }
    if (o->release != NULL)
        find_release(info, o);
    return 1;
}

/* The copies of nvipcfix ahead of this one in the loader's list, and the
 * libraries between the first of them and this one that may define an IPC
 * name (interposers in the chain): their spans given to driver_entry.c.
 * Returns the first copy's path (its release in release), or NULL. */
static const char *copies_ahead(char *release, size_t n)
{
    extern ElfW(Dyn) _DYNAMIC[];
    const uint32_t all = ((uint32_t)1 << WATCHED) - 1;
    const uint32_t ipc = (((uint32_t)1 << IPC_NAMES) - 1) & ~(uint32_t)1; /* not dlsym */
    const char *first = NULL;
    for (const struct link_map *m = _r_debug.r_map; m != NULL; m = m->l_next) {
        if (m->l_ld == _DYNAMIC)
            return first;
        if (m == _r_debug.r_map || is_vdso(m->l_name))
            continue; /* the program, the kernel's object */
        uint32_t may = nvipcfix_may_define(m->l_addr, m->l_ld, watched_hash, WATCHED);
        struct object_look o = {m->l_name, 0, 0, NULL, 0, 0};
        if (first == NULL && may == all) {
            o.release = release;
            o.n = n;
        } else if (first == NULL || (may & ipc) == 0) {
            continue;
        }
        dl_iterate_phdr(look_at_object, &o);
        if (first == NULL && !o.found)
            continue;
        if (first == NULL)
            first = m->l_name;
        if (o.end > o.start)
            nvipcfix_note_copy_ahead(o.start, o.end - o.start);
    }
    return NULL; /* not in the list (another namespace): no copy known */
}

/* This and the functions it calls on the usual path are in .text.startup
 * whatever the optimization level (GCC puts constructors there only at
 * -O2): GNU ld places that section at the front of the code,
 * in pages the loader has faulted in anyway. */
__attribute__((constructor, section(".text.startup"))) static void check_load_order(void)
{
    if (names_ahead() == 0) {
        nvipcfix_note_first_definitions(NULL);
        return; /* the usual case */
    }
    void *first[WATCHED];
    void *const *own = nvipcfix_own_definitions;
    first_definitions(first);
    nvipcfix_note_first_definitions(first);
    size_t ours = 0;
    for (size_t i = 0; i < WATCHED; i++)
        ours += first[i] == own[i];
    if (ours == WATCHED)
        return; /* a library ahead, but none of its definitions comes first */
    char names[256], mapping_names[256], release[64];
    const char *copy = copies_ahead(release, sizeof release);
    const char *before = library_before_nvipcfix(first, 0, IPC_NAMES, names, sizeof names);
    const char *mapping = library_before_nvipcfix(first, IPC_NAMES, WATCHED, mapping_names,
                                                  sizeof mapping_names);
    if (before == NULL && mapping == NULL && copy == NULL)
        return;
    if ((before != NULL && first[0] != own[0]) || mapping != NULL || copy != NULL)
        atomic_fetch_or_explicit(&nvipcfix_map_generation, NVIPCFIX_MAP_GEN_UNTRACKED,
                                 memory_order_acq_rel);
    struct nvipcfix_config cfg;
    nvipcfix_config_from_environ(&cfg);
    if (cfg.mode == NVIPCFIX_MODE_OFF || (copy != NULL && cfg.log_level < NVIPCFIX_LOG_INFO))
        return;
    nvipcfix_log_open(cfg.log_level, cfg.log_file);
    if (copy != NULL) { /* it speaks of the libraries ahead of it */
        Dl_info self;
        NVIPCFIX_INFO("%s (%s) is another copy of nvipcfix, loaded before this one (%s): it "
                      "fixes the IPC calls; those that reach this copy from it go to the "
                      "driver unchanged",
                      copy, release,
                      dladdr(own[0], &self) != 0 && self.dli_fname != NULL ? self.dli_fname
                                                                           : "libnvipcfix.so");
        return;
    }
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
