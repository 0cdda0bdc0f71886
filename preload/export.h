/* Marks the few symbols the library exports; everything else is hidden
 * (built with -fvisibility=hidden). */
#ifndef NVIPCFIX_EXPORT_H
#define NVIPCFIX_EXPORT_H
#define NVIPCFIX_EXPORT __attribute__((visibility("default")))

/* For code on the dlsym path: a sanitizer runtime resolves its own
 * interceptors through dlsym before it has set itself up, so that code
 * must not be instrumented (only matters for make test-asan/test-tsan). */
#define NVIPCFIX_UNINSTRUMENTED __attribute__((no_sanitize("address", "undefined", "thread")))
#endif
