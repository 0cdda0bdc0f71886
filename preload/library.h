/* The one instance of the fix in this process, set up on first use. Above
 * the real driver (real_driver.c); used by the entry points
 * (driver_entry.c) and the load-order check (load_order.c). */
#ifndef NVIPCFIX_LIBRARY_H
#define NVIPCFIX_LIBRARY_H

#include <stdatomic.h>

#include "real_driver.h"
#include "../shim/config.h"

/* Reads the configuration, opens the log, loads the real driver and
 * installs the fork handler, all once; never in a constructor (the
 * constructors, in library.c and load_order.c, record what fd 2 is and
 * compare a few addresses the loader bound; no look-up, no driver call). */
struct nvipcfix_fix *nvipcfix_library_setup(void);

/* The instance once set up (library.c), else NULL. */
extern struct nvipcfix_fix *_Atomic nvipcfix_library_ready;

/* The instance, set up on first use; NULL only if it could not be (out of
 * memory: the caller then goes to the driver unchanged). Inline: after the
 * first call, one load. */
static inline struct nvipcfix_fix *nvipcfix_library(void)
{
    struct nvipcfix_fix *f = atomic_load_explicit(&nvipcfix_library_ready, memory_order_acquire);
    return __builtin_expect(f != NULL, 1) ? f : nvipcfix_library_setup();
}

/* "nvipcfix version X", X the release, in the library's read-only data. */
extern const char nvipcfix_version_mark[];
#define NVIPCFIX_VERSION_MARK_PREFIX (sizeof "nvipcfix version " - 1)

/* The NVIPCFIX_* settings of this process's environment. */
void nvipcfix_config_from_environ(struct nvipcfix_config *cfg);

#endif
