/* Prints what dlsym(RTLD_NEXT) found from inside libprobe: "next=2" is
 * glibc's answer. Also looks up a name nobody defines, which must fail with
 * dlerror set, as without the preload. */
#include <dlfcn.h>
#include <stdio.h>

int probe_next(void);

int main(void)
{
    void *none = dlsym(RTLD_DEFAULT, "no_such_symbol_anywhere");
    const char *err = dlerror();
    printf("next=%d missing=%s dlerror=%s\n", probe_next(), none ? "found" : "null",
           err ? "set" : "unset");
    return 0;
}
