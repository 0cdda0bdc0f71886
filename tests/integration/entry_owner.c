/* entry_owner: which library's function a program gets when it looks the
 * driver's entry points up as the CUDA runtime does: dlopen("libcuda.so.1"),
 * dlsym(handle, "cuGetProcAddress_v2"), cuGetProcAddress fetched through
 * itself, then every name through that.
 *
 * The real driver hands out its own functions there, whatever a preloaded
 * library defines (measured on the H200: a program looking up
 * cuIpcOpenMemHandle through cuGetProcAddress gets the driver's function
 * while a preloaded library defines cuIpcOpenMemHandle_v2), so only a
 * library that hooks cuGetProcAddress itself (nvipcfix) can hand out its
 * own.
 *
 * Prints one line per look-up, "NAME@VERSION: FILE" (the file's base
 * name), and a last line "N look-ups, N failed". Exit status: 0 every
 * look-up answered, 2 one failed. */
#include <cuda.h>

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#undef cuGetProcAddress

typedef CUresult (*gpa_fn)(const char *, void **, int, cuuint64_t,
                           CUdriverProcAddressQueryResult *);

static const char *file_of(void *fn)
{
    Dl_info info;
    if (fn == NULL || !dladdr(fn, &info) || info.dli_fname == NULL)
        return "?";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash != NULL ? slash + 1 : info.dli_fname;
}

int main(void)
{
    static const struct {
        const char *name;
        int version;
    } names[] = {
        {"cuGetProcAddress", 12000},   {"cuGetProcAddress", 11030},
        {"cuIpcGetMemHandle", 4010},   {"cuIpcOpenMemHandle", 11000},
        {"cuIpcOpenMemHandle", 4010},  {"cuIpcCloseMemHandle", 4010},
        {"cuMemAlloc", 3020},          {"cuMemGetAddressRange", 3020},
    };
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    gpa_fn boot = cuda != NULL ? (gpa_fn)dlsym(cuda, "cuGetProcAddress_v2") : NULL, gpa = NULL;
    CUdriverProcAddressQueryResult st;
    if (boot == NULL || boot("cuGetProcAddress", (void **)&gpa, 12000, 0, &st) != CUDA_SUCCESS ||
        gpa == NULL) {
        fprintf(stderr, "entry_owner: no cuGetProcAddress_v2 in libcuda.so.1\n");
        return 2;
    }
    printf("dlsym(libcuda.so.1, cuGetProcAddress_v2): %s\n", file_of((void *)boot));
    unsigned n = sizeof names / sizeof names[0], failed = 0;
    for (unsigned i = 0; i < n; i++) {
        void *fn = NULL;
        CUresult r = gpa(names[i].name, &fn, names[i].version, 0, &st);
        failed += r != CUDA_SUCCESS || fn == NULL;
        printf("%s@%d: %s\n", names[i].name, names[i].version,
               r == CUDA_SUCCESS ? file_of(fn) : "error");
    }
    printf("%u look-ups, %u failed\n", n, failed);
    return failed ? 2 : 0;
}
