/* Loaded before target.c's library; defines probe_target itself, so
 * dlsym(RTLD_NEXT, "probe_target") from here must skip this definition and
 * find the next one. Resolved relative to any other object, it would not. */
#include <dlfcn.h>
#include <stddef.h>

int probe_target(void)
{
    return 1;
}

int probe_next(void)
{
    int (*f)(void) = (int (*)(void))dlsym(RTLD_NEXT, "probe_target");
    return f != NULL ? f() : -1;
}
