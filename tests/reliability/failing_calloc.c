/* A memory allocator that runs out when nvipcfix sets itself up: calloc
 * returns NULL for a single large object (nmemb 1, at least 8 KiB: the
 * library's instance) asked for by code in libnvipcfix.so, and works for
 * everything else. Preloaded before nvipcfix, so that nvipcfix's calloc is
 * this one. The library must then leave every IPC call to the driver,
 * unchanged, say so once, and not crash. */
#include <dlfcn.h>
#include <stddef.h>
#include <string.h>

static int from_nvipcfix(const void *caller)
{
    Dl_info info;
    return dladdr(caller, &info) != 0 && info.dli_fname != NULL &&
           strstr(info.dli_fname, "libnvipcfix") != NULL;
}

/* glibc's own (malloc and memset here would be made a call to calloc). */
extern void *__libc_calloc(size_t nmemb, size_t size);

void *calloc(size_t nmemb, size_t size)
{
    if (nmemb == 1 && size >= 8192 && from_nvipcfix(__builtin_return_address(0)))
        return NULL;
    return __libc_calloc(nmemb, size);
}
