/* Unit tests of shim/config.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "../../shim/config.h"

static const char *const *fake_env;

static const char *fake_getenv(const char *name)
{
    size_t n = strlen(name);
    for (const char *const *e = fake_env; e != NULL && *e != NULL; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

static void parse(struct nvipcfix_config *cfg, const char *const *env)
{
    fake_env = env;
    nvipcfix_config_parse(cfg, fake_getenv, (char *const *)env);
}

static void test_defaults(void **state)
{
    (void)state;
    struct nvipcfix_config c;
    const char *env[] = {"PATH=/bin", NULL};
    parse(&c, env);
    assert_int_equal(c.mode, NVIPCFIX_MODE_FIX);
    assert_int_equal(c.log_level, NVIPCFIX_LOG_WARN);
    assert_string_equal(c.log_file, "");
    assert_int_equal(c.self_open, 1);
    assert_int_equal(c.stats, 0);
    assert_int_equal(c.plain_tags, 0); /* guarded tags */
    assert_int_equal(c.vmm, 0);        /* no descriptor server unless asked */
    assert_int_equal(c.nwarnings, 0);
}

static void test_every_value(void **state)
{
    (void)state;
    struct nvipcfix_config c;
    const char *env1[] = {"NVIPCFIX_MODE=audit", "NVIPCFIX_LOG=debug", "NVIPCFIX_SELF_OPEN=0",
                          "NVIPCFIX_STATS=1", "NVIPCFIX_LOG_FILE=/tmp/x.%p.log",
                          "NVIPCFIX_TAG=plain", "NVIPCFIX_VMM=1", NULL};
    parse(&c, env1);
    assert_int_equal(c.plain_tags, 1);
    assert_int_equal(c.vmm, 1);
    assert_int_equal(c.mode, NVIPCFIX_MODE_AUDIT);
    assert_int_equal(c.log_level, NVIPCFIX_LOG_DEBUG);
    assert_int_equal(c.self_open, 0);
    assert_int_equal(c.stats, 1);
    assert_string_equal(c.log_file, "/tmp/x.%p.log");
    assert_int_equal(c.nwarnings, 0);
    const char *env2[] = {"NVIPCFIX_MODE=off", "NVIPCFIX_LOG=error", "NVIPCFIX_TAG=guarded", NULL};
    parse(&c, env2);
    assert_int_equal(c.plain_tags, 0);
    assert_int_equal(c.mode, NVIPCFIX_MODE_OFF);
    assert_int_equal(c.log_level, NVIPCFIX_LOG_ERROR);
    const char *env3[] = {"NVIPCFIX_MODE=fix", "NVIPCFIX_LOG=info", NULL};
    parse(&c, env3);
    assert_int_equal(c.mode, NVIPCFIX_MODE_FIX);
    assert_int_equal(c.log_level, NVIPCFIX_LOG_INFO);
}

static void test_bad_values_keep_defaults(void **state)
{
    (void)state;
    struct nvipcfix_config c;
    const char *env[] = {"NVIPCFIX_MODE=FIXX", "NVIPCFIX_LOG=verbose", "NVIPCFIX_SELF_OPEN=yes",
                         "NVIPCFIX_STATS=", NULL};
    parse(&c, env);
    assert_int_equal(c.mode, NVIPCFIX_MODE_FIX);
    assert_int_equal(c.log_level, NVIPCFIX_LOG_WARN);
    assert_int_equal(c.self_open, 1);
    assert_int_equal(c.stats, 0);
    assert_int_equal(c.nwarnings, 4); /* one each */
    assert_non_null(strstr(c.warnings[0], "NVIPCFIX_MODE='FIXX'"));
    assert_non_null(strstr(c.warnings[0], "'fix'"));
}

static void test_garbage_is_bounded(void **state)
{
    (void)state;
    struct nvipcfix_config c;
    char big[3000];
    memset(big, 'A', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    char mode[3100], file[3100];
    snprintf(mode, sizeof mode, "NVIPCFIX_MODE=%s", big);
    snprintf(file, sizeof file, "NVIPCFIX_LOG_FILE=%s", big);
    const char *env[] = {mode, file, "NVIPCFIX_LOG=\x01\xff", NULL};
    parse(&c, env);
    assert_int_equal(c.mode, NVIPCFIX_MODE_FIX);
    assert_string_equal(c.log_file, "");
    assert_int_equal(c.nwarnings, 3);
    for (int i = 0; i < c.nwarnings; i++)
        assert_true(strlen(c.warnings[i]) < sizeof c.warnings[i]);
}

static void test_unknown_variable(void **state)
{
    (void)state;
    struct nvipcfix_config c;
    const char *env[] = {"NVIPCFIX_MOD=off", "NVIPCFIX_MODE=off", NULL};
    parse(&c, env);
    assert_int_equal(c.mode, NVIPCFIX_MODE_OFF);
    assert_int_equal(c.nwarnings, 1);
    assert_non_null(strstr(c.warnings[0], "NVIPCFIX_MOD "));
}

/* The VMM exchange's deadline and socket directory. */
static void test_vmm_settings(void **state)
{
    (void)state;
    struct nvipcfix_config c;
    const char *ok[] = {"NVIPCFIX_VMM_TIMEOUT_MS=250", "NVIPCFIX_VMM_SOCKET_DIR=/run/x", NULL};
    parse(&c, ok);
    assert_int_equal(c.vmm_timeout_ms, 250);
    assert_string_equal(c.vmm_socket_dir, "/run/x");
    assert_int_equal(c.nwarnings, 0);
    const char *bad[] = {"NVIPCFIX_VMM_TIMEOUT_MS=0", "NVIPCFIX_VMM_SOCKET_DIR=run/x", NULL};
    parse(&c, bad);
    assert_int_equal(c.vmm_timeout_ms, 0); /* the default */
    assert_string_equal(c.vmm_socket_dir, "");
    assert_int_equal(c.nwarnings, 2);
    const char *junk[] = {"NVIPCFIX_VMM_TIMEOUT_MS=5s", NULL};
    parse(&c, junk);
    assert_int_equal(c.vmm_timeout_ms, 0);
    assert_int_equal(c.nwarnings, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_value),
        cmocka_unit_test(test_bad_values_keep_defaults),
        cmocka_unit_test(test_garbage_is_bounded),
        cmocka_unit_test(test_unknown_variable),
        cmocka_unit_test(test_vmm_settings),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
