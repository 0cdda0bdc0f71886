/* Marks the few symbols the library exports; everything else is hidden
 * (built with -fvisibility=hidden). */
#ifndef NVIPCFIX_EXPORT_H
#define NVIPCFIX_EXPORT_H
#define NVIPCFIX_EXPORT __attribute__((visibility("default")))
#endif
