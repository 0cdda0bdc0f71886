/* The dlsym hook. The exported dlsym (dlsym_entry_x86_64.S) asks
 * nvipcfix_dlsym_route where to go, then jumps there with the caller's own
 * arguments and return address, so that for every name the library does not
 * wrap the next dlsym in the chain (another interposer's, else glibc's) runs
 * exactly as if called directly: RTLD_NEXT and RTLD_DEFAULT resolve relative
 * to the real caller, and dependencies are recorded for it. Only the wrapped
 * names looked up through a library handle take the C path below. */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>

#include "export.h"
#include "hooks.h"
#include "real_driver.h"
#include "../shim/log.h"

typedef void *(*dlsym_fn)(void *handle, const char *name);

static _Atomic(dlsym_fn) real_dlsym_fn;
static _Atomic(dlsym_fn) glibc_dlsym_fn;

/* The exported dlsym's own address (a hidden label on it in the assembly
 * entry; a plain reference to dlsym would bind to the first definition in
 * the process, which may be another library's). */
extern char nvipcfix_dlsym_entry[];

NVIPCFIX_UNINSTRUMENTED static void *no_dlsym(void *handle, const char *name)
{
    (void)handle;
    (void)name;
    return NULL;
}

/* The next dlsym after nvipcfix in the search order: another interposer's
 * (GPU-sharing layers such as HAMi-core define an unversioned dlsym and
 * enforce their quotas through it), else glibc's. */
NVIPCFIX_UNINSTRUMENTED static dlsym_fn find_real_dlsym(void)
{
    /* glibc >= 2.34 defines dlsym in libc under GLIBC_2.34; older ones in
     * libdl under the architecture's first version. */
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    dlsym_fn glibc = NULL;
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && glibc == NULL; i++)
        glibc = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (glibc == NULL) {
        nvipcfix_log(NVIPCFIX_LOG_ERROR, "cannot find glibc's dlsym; every dlsym returns NULL");
        return no_dlsym;
    }
    atomic_store_explicit(&glibc_dlsym_fn, glibc, memory_order_release);
    /* Called from here, RTLD_NEXT means: after nvipcfix. */
    dlsym_fn next = (dlsym_fn)glibc(RTLD_NEXT, "dlsym");
    return next != NULL ? next : glibc;
}

NVIPCFIX_UNINSTRUMENTED static dlsym_fn get_real_dlsym(void)
{
    dlsym_fn f = atomic_load_explicit(&real_dlsym_fn, memory_order_acquire);
    if (f == NULL) {
        f = find_real_dlsym(); /* racing threads find the same answer */
        atomic_store_explicit(&real_dlsym_fn, f, memory_order_release);
    }
    return f;
}

/* nvipcfix's own look-ups go to glibc directly: RTLD_NEXT then means
 * "after nvipcfix" whatever the next interposer's dlsym would make of it. */
void *nvipcfix_real_dlsym(void *handle, const char *name)
{
    get_real_dlsym();
    dlsym_fn glibc = atomic_load_explicit(&glibc_dlsym_fn, memory_order_acquire);
    return glibc != NULL ? glibc(handle, name) : NULL;
}

/* A look-up of a wrapped name through a handle: the real answer first; a
 * wrapper only in place of the real driver's own function for that name.
 * Anything else found (a proxy library's own function, the driver of
 * another link-map namespace opened with dlmopen) is returned as found. */
__attribute__((used)) void *nvipcfix_dlsym_wrapped(void *handle, const char *name)
{
    void *found = get_real_dlsym()(handle, name);
    if (found == NULL || !nvipcfix_real_driver_owns(name, found))
        return found;
    return nvipcfix_wrapper_for(name, found, -1);
}


/* Where dlsym(handle, name) goes. RTLD_DEFAULT and RTLD_NEXT always go to
 * the next dlsym with the real caller's return address: symbol order already
 * puts nvipcfix's exports (and those of any other interposer) where they
 * belong, and resolving RTLD_NEXT from here instead of from the caller would
 * hand an interposer preloaded after nvipcfix its own function back. */
NVIPCFIX_UNINSTRUMENTED __attribute__((used)) void *nvipcfix_dlsym_route(void *handle,
                                                                      const char *name)
{
    if (handle != RTLD_DEFAULT && handle != RTLD_NEXT && name != NULL &&
        nvipcfix_is_wrapped_name(name))
        return (void *)nvipcfix_dlsym_wrapped;
    return (void *)get_real_dlsym();
}
