/* Unit tests of preload/gnu_hash.c, on the objects loaded in this process
 * and on tables made here: the hash is the loader's (the values published
 * with the format, and the watched names' hashes written in
 * watched_names.h); an object's table says "may define" for every name it
 * defines (read through a dynamic section glibc has rewritten to
 * addresses, and through the vDSO's, left as offsets; with the object's
 * base above, below or near its link address) and "defines none" for the
 * names the load-order check watches, in the C library and in a library
 * that defines one other name. A "defines none" that is wrong would hide a
 * library ahead of nvipcfix from its warning; a table read in the wrong
 * place would crash every process at load. */
#include <dlfcn.h>
#include <link.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "../common/unit_skip.h"
#include "../../preload/gnu_hash.h"
#include "../../preload/watched_names.h"

static const char *const watched[] = {NVIPCFIX_WATCHED_NAMES};
static const uint32_t watched_hash[] = {NVIPCFIX_WATCHED_HASHES};
#define NWATCHED (sizeof watched / sizeof watched[0])

static char test_dir[4096];

/* The GNU hash of a symbol name, as the loader computes it (nvipcfix's
 * own check reads only the constants of watched_names.h). */
static uint32_t gnu_hash(const char *name)
{
    uint32_t h = 5381;
    for (const unsigned char *s = (const unsigned char *)name; *s != '\0'; s++)
        h = h * 33 + *s;
    return h;
}

static int may_define(const struct link_map *m, const char *name)
{
    uint32_t h = gnu_hash(name);
    return (int)nvipcfix_may_define(m->l_addr, m->l_ld, &h, 1);
}

static struct link_map *map_of(void *handle)
{
    struct link_map *m = NULL;
    assert_non_null(handle);
    assert_int_equal(dlinfo(handle, RTLD_DI_LINKMAP, &m), 0);
    return m;
}

static void *open_test_library(const char *file)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", test_dir, file);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        fail_msg("dlopen %s: %s", path, dlerror());
    return h;
}

static void test_the_loaders_hash(void **state)
{
    (void)state;
    assert_int_equal(gnu_hash(""), 0x1505);
    assert_int_equal(gnu_hash("printf"), 0x156b2bb8);
    assert_int_equal(gnu_hash("exit"), 0x7c967e3f);
    assert_int_equal(gnu_hash("syscall"), 0xbac212a0);
}

static void test_the_watched_names_hashes(void **state)
{
    (void)state;
    assert_int_equal(NWATCHED, NVIPCFIX_WATCHED);
    assert_int_equal(sizeof watched_hash / sizeof watched_hash[0], NVIPCFIX_WATCHED);
    for (size_t i = 0; i < NWATCHED; i++)
        assert_int_equal(watched_hash[i], gnu_hash(watched[i]));
}

/* Every name the C library defines that this test names: "may define". */
static void test_the_c_library_may_define_what_it_defines(void **state)
{
    (void)state;
    static const char *const names[] = {"malloc", "printf", "getpid", "environ", "dlsym",
                                        "dladdr", "pthread_create", "memcpy", "exit"};
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    struct link_map *m = map_of(libc);
    int checked = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *found = dlsym(libc, names[i]);
        Dl_info where;
        if (found == NULL || dladdr(found, &where) == 0 ||
            where.dli_fbase != (void *)map_of(libc)->l_addr)
            continue; /* defined elsewhere (dlsym in libdl before glibc 2.34) */
        if (!may_define(m, names[i]))
            fail_msg("libc.so.6 defines %s, its table says it does not", names[i]);
        checked++;
    }
    assert_true(checked >= 7);
    /* And as one of several names. */
    uint32_t hashes[3] = {gnu_hash("cuMemMap"), gnu_hash("malloc"),
                          gnu_hash("cuMemUnmap")};
    assert_int_equal(nvipcfix_may_define(m->l_addr, m->l_ld, hashes, 3), 2);
    dlclose(libc);
}

static void test_the_c_library_defines_no_driver_name(void **state)
{
    (void)state;
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    struct link_map *m = map_of(libc);
    for (size_t i = 1; i < NWATCHED; i++)
        assert_int_equal(may_define(m, watched[i]), 0);
    assert_int_equal(nvipcfix_may_define(m->l_addr, m->l_ld, watched_hash + 1, NWATCHED - 1), 0);
    dlclose(libc);
}

/* The test proxy defines cuIpcGetMemHandle (and proxy_own_get) only. */
static void test_a_library_with_one_watched_name(void **state)
{
    (void)state;
    void *proxy = open_test_library("libcuda_proxy.so");
    struct link_map *m = map_of(proxy);
    for (size_t i = 0; i < NWATCHED; i++)
        if (strcmp(watched[i], "cuIpcGetMemHandle") == 0)
            assert_int_equal(may_define(m, watched[i]), 1);
        else
            assert_int_equal(may_define(m, watched[i]), 0);
    assert_int_equal(nvipcfix_may_define(m->l_addr, m->l_ld, watched_hash, NWATCHED), 1u << 1);
    dlclose(proxy);

    void *empty = open_test_library("libempty_two_segments.so");
    m = map_of(empty);
    for (size_t i = 0; i < NWATCHED; i++)
        assert_int_equal(may_define(m, watched[i]), 0);
    assert_int_equal(may_define(m, "nvipcfix_bench_empty_preload"), 1);
    dlclose(empty);
}

/* A table made here, for one name, as a linker writes it: one bucket, a
 * filter of one word, the name's hash on the chain. */
static union {
    uint64_t align;
    uint32_t words[4 + 2 * sizeof(ElfW(Addr)) / 4 + 2];
} made;

static const uint32_t *make_table(const char *name)
{
    uint32_t h = gnu_hash(name);
    const unsigned bits = 8 * sizeof(ElfW(Addr));
    memset(&made, 0, sizeof made);
    made.words[0] = 1; /* nbuckets */
    made.words[1] = 1; /* the first hashed symbol */
    made.words[2] = 1; /* the filter's words */
    made.words[3] = 6; /* its second shift */
    ElfW(Addr) word = ((ElfW(Addr))1 << (h % bits)) | ((ElfW(Addr))1 << ((h >> 6) % bits));
    memcpy(&made.words[4], &word, sizeof word);
    made.words[4 + sizeof word / 4] = 1;     /* the bucket: symbol 1 */
    made.words[4 + sizeof word / 4 + 1] = h | 1; /* its chain, one hash */
    return made.words;
}

/* Whatever base the loader computed (the load address less the link
 * address: above, below, or the same) and whether it rewrote the pointer
 * or left it an offset, the table is read where it is; with a base too
 * near zero to tell the two readings apart, every name may be defined. */
static void test_a_table_read_where_it_is(void **state)
{
    (void)state;
    const uint32_t *table = make_table("cuMemMap");
    static ElfW(Dyn) dynamic[2]; /* beside the table, as in an object */
    dynamic[0].d_tag = DT_GNU_HASH;
    dynamic[1].d_tag = DT_NULL;
    ElfW(Addr) t = (ElfW(Addr))table;
    const ElfW(Addr) bases[] = {
        (ElfW(Addr))0x7f0000000000ull,   /* a library linked at 0, the usual */
        (ElfW(Addr))-0x1000000000ll,     /* loaded 64 GiB below its link address */
        (ElfW(Addr))-0x7fff00000000ll,   /* far below */
    };
    uint32_t map_bit = 1u << 7; /* cuMemMap among the watched names */
    for (size_t b = 0; b < sizeof bases / sizeof bases[0]; b++) {
        dynamic[0].d_un.d_ptr = t; /* rewritten to the address */
        assert_int_equal(nvipcfix_may_define(bases[b], dynamic, watched_hash, NWATCHED), map_bit);
        dynamic[0].d_un.d_ptr = t - bases[b]; /* left an offset */
        assert_int_equal(nvipcfix_may_define(bases[b], dynamic, watched_hash, NWATCHED), map_bit);
    }
    dynamic[0].d_un.d_ptr = t; /* loaded at its link address */
    assert_int_equal(nvipcfix_may_define(0, dynamic, watched_hash, NWATCHED), map_bit);
    assert_int_equal(nvipcfix_may_define(0x1000, dynamic, watched_hash, NWATCHED),
                     (1u << NWATCHED) - 1);
    /* No table: cannot tell. */
    dynamic[0].d_tag = DT_NULL;
    assert_int_equal(nvipcfix_may_define(0, dynamic, watched_hash, NWATCHED),
                     (1u << NWATCHED) - 1);
}

/* The vDSO's dynamic section is read-only: its pointers stay offsets. */
static void test_the_vdso(void **state)
{
    (void)state;
    const struct link_map *m;
    for (m = _r_debug.r_map; m != NULL; m = m->l_next)
        if (m->l_name != NULL && strncmp(m->l_name, "linux-", 6) == 0)
            break;
    if (m == NULL)
        skip_because("no vDSO in this process");
    int defines_clock = may_define(m, "__vdso_clock_gettime") ||
                        may_define(m, "__kernel_clock_gettime");
    assert_true(defines_clock);
    for (size_t i = 0; i < NWATCHED; i++)
        assert_int_equal(may_define(m, watched[i]), 0);
}

int main(int argc, char **argv)
{
    (void)argc;
    snprintf(test_dir, sizeof test_dir, "%s", argv[0]);
    char *slash = strrchr(test_dir, '/');
    if (slash != NULL)
        *slash = '\0';
    else
        snprintf(test_dir, sizeof test_dir, ".");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_loaders_hash),
        cmocka_unit_test(test_the_watched_names_hashes),
        cmocka_unit_test(test_a_table_read_where_it_is),
        cmocka_unit_test(test_the_c_library_may_define_what_it_defines),
        cmocka_unit_test(test_the_c_library_defines_no_driver_name),
        cmocka_unit_test(test_a_library_with_one_watched_name),
        cmocka_unit_test(test_the_vdso),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
