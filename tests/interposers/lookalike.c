/* A library that looks like a copy of nvipcfix and is not: it defines the
 * eleven names nvipcfix watches (its dlsym forwards to glibc's, the driver
 * names refuse) and mentions nvipcfix's release text inside a sentence.
 * Preloaded ahead of nvipcfix it bypasses it, and must be warned of: taken
 * for a copy of nvipcfix, its calls would go unfixed without a word. */
#include <dlfcn.h>
#include <stddef.h>

#define EXPORT __attribute__((visibility("default")))
/* On the dlsym path: a sanitizer runtime calls dlsym before it is set up. */
#define UNINSTRUMENTED __attribute__((no_sanitize("address", "undefined", "thread")))

typedef void *(*dlsym_fn)(void *, const char *);

__attribute__((used)) static const char about[] = "compatible with nvipcfix version 0.3 and later";

UNINSTRUMENTED EXPORT void *dlsym(void *handle, const char *name)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    static dlsym_fn glibc;
    dlsym_fn f = __atomic_load_n(&glibc, __ATOMIC_ACQUIRE);
    for (size_t i = 0; i < 3 && f == NULL; i++)
        f = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    __atomic_store_n(&glibc, f, __ATOMIC_RELEASE);
    return f != NULL ? f(handle, name) : NULL;
}

/* The driver names, declared without cuda.h: their arguments are never
 * read. 801: CUDA_ERROR_NOT_SUPPORTED. */
#define REFUSING(name)                                                       \
    EXPORT int name(void);                                                   \
    EXPORT int name(void) { return 801; }
REFUSING(cuIpcGetMemHandle)
REFUSING(cuIpcOpenMemHandle)
REFUSING(cuIpcOpenMemHandle_v2)
REFUSING(cuIpcCloseMemHandle)
REFUSING(cuGetProcAddress)
REFUSING(cuGetProcAddress_v2)
REFUSING(cuMemMap)
REFUSING(cuMemUnmap)
REFUSING(cuMemSetAccess)
REFUSING(cuMemAddressFree)
