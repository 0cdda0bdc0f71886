/* Audit mode's description of the code that called an IPC export. */
#ifndef NVIPCFIX_CALL_SITE_H
#define NVIPCFIX_CALL_SITE_H

#include <stddef.h>

/* Writes the first caller outside nvipcfix, libcuda and libcudart as
 * "MODULE(SYMBOL+0xOFF)" or "MODULE+0xOFF"; "" when none is found. */
void nvipcfix_describe_caller(char *buf, size_t n);

#endif
