/* late_driver: nvipcfix opened with dlopen (RTLD_LOCAL), then the driver
 * with RTLD_GLOBAL; nvipcfix's cuGetProcAddress_v2 asked for three of the
 * names it wraps. The wrapper handed out must be nvipcfix's own, as the
 * loader bound it when nvipcfix was loaded: a look-up made later, through
 * the global scope, finds the driver's function first and would hand out
 * the driver's own, so IPC would go unfixed. Built with the old SysV hash
 * table only, so that the load-order check cannot read this program's
 * table and looks the names up (the path where that happened).
 *
 * Usage: late_driver LIBNVIPCFIX. Prints "NAME: FILE" per name; exit 0
 * when every one is from LIBNVIPCFIX, 1 otherwise, 2 on a setup error. */
#include <cuda.h>

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

typedef CUresult (*gpa_fn)(const char *, void **, int, cuuint64_t,
                           CUdriverProcAddressQueryResult *);

static const char *file_of(void *fn)
{
    Dl_info i;
    return fn != NULL && dladdr(fn, &i) != 0 && i.dli_fname != NULL ? i.dli_fname : "?";
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: late_driver LIBNVIPCFIX\n");
        return 2;
    }
    void *nv = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    void *cu = nv != NULL ? dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL) : NULL;
    gpa_fn gpa = nv != NULL ? (gpa_fn)dlsym(nv, "cuGetProcAddress_v2") : NULL;
    if (nv == NULL || cu == NULL || gpa == NULL) {
        fprintf(stderr, "late_driver: %s\n", dlerror());
        return 2;
    }
    Dl_info self;
    if (dladdr((void *)gpa, &self) == 0 || self.dli_fname == NULL)
        return 2;
    static const char *const names[] = {"cuIpcGetMemHandle", "cuIpcOpenMemHandle", "cuMemMap"};
    int wrong = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *fn = NULL;
        CUdriverProcAddressQueryResult status;
        CUresult r = gpa(names[i], &fn, 12000, 0, &status);
        const char *from = file_of(fn);
        printf("%s: %s\n", names[i], from);
        wrong |= r != CUDA_SUCCESS || strcmp(from, self.dli_fname) != 0;
    }
    return wrong;
}
