/* The one instance of the fix in this process, set up on first use. */
#ifndef NVIPCFIX_LIBRARY_H
#define NVIPCFIX_LIBRARY_H

#include "real_driver.h"
#include "../shim/config.h"

/* Reads the configuration, opens the log, loads the real driver and
 * installs the fork handlers, all once; never in a constructor (the
 * constructors, in library.c and load_order.c, record what fd 2 is and make
 * a few look-ups; no driver call). */
struct nvipcfix_fix *nvipcfix_library(void);

/* The NVIPCFIX_* settings of this process's environment. */
void nvipcfix_config_from_environ(struct nvipcfix_config *cfg);

#endif
