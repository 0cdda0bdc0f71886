/* The dlsym hook (above the entry points, driver_entry.c, and the real
 * driver, real_driver.c; nothing in preload/ calls it). The exported dlsym
 * (dlsym_entry_*.S) asks nvipcfix_dlsym_route where to go, then jumps there
 * with the caller's own arguments and return address, so that for every
 * name the library does not wrap the next dlsym in the chain (another
 * interposer's, else glibc's) runs exactly as if called directly:
 * RTLD_NEXT and RTLD_DEFAULT resolve relative to the real caller, and
 * dependencies are recorded for it. Only the wrapped names looked up
 * through a library handle take the C path below. */
#include <dlfcn.h>

#include "export.h"
#include "hooks.h"
#include "real_driver.h"

/* A look-up of a wrapped name through a handle: the real answer first; a
 * wrapper only in place of the real driver's own function for that name.
 * Anything else found (a proxy library's own function, the driver of
 * another link-map namespace opened with dlmopen) is returned as found;
 * for a VMM mapping call nvipcfix then no longer trusts its count. */
__attribute__((used)) void *nvipcfix_dlsym_wrapped(void *handle, const char *name)
{
    void *found = nvipcfix_next_dlsym()(handle, name);
    if (found == NULL)
        return found;
    if (!nvipcfix_real_driver_owns(name, found)) {
        nvipcfix_mapping_call_not_ours(name, found);
        return found;
    }
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
    return (void *)nvipcfix_next_dlsym();
}
