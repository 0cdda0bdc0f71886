/* Unit tests of shim/open_errors.c: a failed open explained. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../shim/open_errors.h"

static enum nvipcfix_open_cause cause(CUresult r, int ctx, int visible, int own, char *buf)
{
    struct nvipcfix_open_facts f = {ctx, 4242, visible, own, 1};
    return nvipcfix_open_error_cause(r, &f, buf, 512);
}

static void test_each_cause(void **state)
{
    (void)state;
    char b[512];
    assert_int_equal(cause(CUDA_ERROR_INVALID_CONTEXT, 0, 1, 0, b), NVIPCFIX_CAUSE_NO_CONTEXT);
    assert_non_null(strstr(b, "no CUDA context is current"));
    assert_int_equal(cause(CUDA_ERROR_INVALID_CONTEXT, 1, 1, 1, b), NVIPCFIX_CAUSE_OWN_EXPORT);
    assert_non_null(strstr(b, "this process exported the handle itself"));
    assert_int_equal(cause(CUDA_ERROR_INVALID_HANDLE, 1, 0, 0, b), NVIPCFIX_CAUSE_EXPORTER_GONE);
    assert_non_null(strstr(b, "(pid 4242 in the handle) does not exist"));
    assert_non_null(strstr(b, "another PID namespace"));
    assert_int_equal(cause(CUDA_ERROR_INVALID_DEVICE, 1, 0, 0, b), NVIPCFIX_CAUSE_DEVICE);
    assert_non_null(strstr(b, "importer's current device"));
    assert_int_equal(cause(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED, 1, 1, 0, b), NVIPCFIX_CAUSE_PEER);
    assert_int_equal(cause(CUDA_ERROR_ALREADY_MAPPED, 1, 1, 0, b), NVIPCFIX_CAUSE_STALE_MAPPING);
    assert_int_equal(cause(CUDA_ERROR_INVALID_HANDLE, 1, 1, 0, b), NVIPCFIX_CAUSE_CORRUPT);
    assert_int_equal(cause(CUDA_ERROR_INVALID_VALUE, 1, -1, 0, b), NVIPCFIX_CAUSE_CORRUPT);
    assert_int_equal(cause(CUDA_ERROR_OUT_OF_MEMORY, 1, 1, 0, b), NVIPCFIX_CAUSE_NONE);
    assert_string_equal(b, "cudaIpcOpenMemHandle failed (error 2)");
    /* unknown flags: their own cause, not a freed or changed handle's */
    struct nvipcfix_open_facts f = {1, 4242, 1, 0, 0x9};
    assert_int_equal(nvipcfix_open_error_cause(CUDA_ERROR_INVALID_VALUE, &f, b, sizeof b),
                     NVIPCFIX_CAUSE_FLAGS);
    assert_non_null(strstr(b, "flags 0x9 include bits the driver does not know"));
    f.flags = 1;
    assert_int_equal(nvipcfix_open_error_cause(CUDA_ERROR_INVALID_VALUE, &f, b, sizeof b),
                     NVIPCFIX_CAUSE_CORRUPT);
}

static void test_exporter_pid_from_handle(void **state)
{
    (void)state;
    unsigned char h[64] = {0};
    h[8] = 0xa5;
    h[9] = 0x01; /* 421, as in the measured example */
    assert_int_equal(nvipcfix_handle_exporter_pid(h), 421);
    h[15] = 0x80; /* not a pid */
    assert_int_equal(nvipcfix_handle_exporter_pid(h), 0);
    memset(h, 0, sizeof h);
    assert_int_equal(nvipcfix_handle_exporter_pid(h), 0);
}

static void test_pid_visible(void **state)
{
    (void)state;
    assert_int_equal(nvipcfix_pid_visible(getpid()), 1);
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    waitpid(child, NULL, 0); /* reaped: gone */
    assert_int_equal(nvipcfix_pid_visible(child), 0);
    assert_int_equal(nvipcfix_pid_visible(0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_cause),
        cmocka_unit_test(test_exporter_pid_from_handle),
        cmocka_unit_test(test_pid_visible),
    };
    return cmocka_run_group_tests_name("open_errors", tests, NULL, NULL);
}
