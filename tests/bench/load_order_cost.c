/* load_order_cost: what nvipcfix's check at load costs (preload/
 * load_order.c): the same look-ups in the global scope, 10,000 times in
 * this process, the median of 5 rounds per check. Run with the library
 * preloaded, so that the look-ups find what they find in a real process. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int first_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    *(ElfW(Addr) *)arg = info->dlpi_addr;
    return 1;
}

static double one_round(int n)
{
    static const char *const names[] = {"dlsym", "cuIpcGetMemHandle", "cuIpcOpenMemHandle",
                                        "cuIpcOpenMemHandle_v2", "cuIpcCloseMemHandle"};
    struct timespec a, b;
    Dl_info info;
    ElfW(Addr) program;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int k = 0; k < n; k++) {
        dladdr((void *)one_round, &info);
        dladdr((void *)malloc, &info);
        dl_iterate_phdr(first_object, &program);
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            void *fn = dlsym(RTLD_DEFAULT, names[i]);
            if (fn != NULL)
                dladdr(fn, &info);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / n / 1e3;
}

static int by_value(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

int main(void)
{
    double us[5];
    for (int r = 0; r < 5; r++)
        us[r] = one_round(10000);
    qsort(us, 5, sizeof us[0], by_value);
    printf("load-order check: %.2f us (median of 5 rounds of 10,000)\n", us[2]);
    return 0;
}
