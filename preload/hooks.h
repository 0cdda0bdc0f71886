/* Which names the library wraps, and the wrapper for each, shared by the
 * dlsym hook and the cuGetProcAddress hooks. */
#ifndef NVIPCFIX_HOOKS_H
#define NVIPCFIX_HOOKS_H

/* Nonzero for the driver names whose look-ups the library answers. */
int nvipcfix_is_wrapped_name(const char *name);

/* The wrapper to hand out instead of found, the real driver's function for
 * name. version is the CUDA version a cuGetProcAddress caller asked for,
 * or -1 for a dlsym look-up of the exported symbol name. Returns found
 * itself for names that are not wrapped. */
void *nvipcfix_wrapper_for(const char *name, void *found, int version);

#endif
