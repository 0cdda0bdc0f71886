/* The one instance of the fix in this process, set up on first use. */
#ifndef NVIPCFIX_LIBRARY_H
#define NVIPCFIX_LIBRARY_H

#include "real_driver.h"

/* Reads the configuration, opens the log, loads the real driver and
 * installs the fork handlers, all once; never in a constructor (the only
 * constructor, load_order.c, makes a few look-ups and no driver call). */
struct nvipcfix_fix *nvipcfix_library(void);

#endif
