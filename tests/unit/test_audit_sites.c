/* Unit tests of shim/audit_sites.c: audit mode's call sites and verdict. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "../../shim/audit_sites.h"

static void test_not_affected(void **state)
{
    (void)state;
    struct nvipcfix_audit_sites a;
    char line[256], where[64];
    unsigned long n;
    nvipcfix_audit_sites_init(&a);
    assert_string_equal(nvipcfix_audit_verdict(&a, line, sizeof line),
                        "this process exported no interior pointer: not affected");
    assert_int_equal(nvipcfix_audit_site(&a, 0, where, sizeof where, &n), 0);
}

static void test_sites_aggregated_busiest_first(void **state)
{
    (void)state;
    struct nvipcfix_audit_sites a;
    char line[256], where[64];
    unsigned long n = 0;
    nvipcfix_audit_sites_init(&a);
    nvipcfix_audit_sites_add(&a, "libmooncake.so(register_buffer+0x4c)");
    for (int i = 0; i < 5; i++)
        nvipcfix_audit_sites_add(&a, "libkv.so+0x1234");
    nvipcfix_audit_sites_add(&a, NULL);
    assert_string_equal(nvipcfix_audit_verdict(&a, line, sizeof line),
                        "this process exported 7 interior pointers from 3 call sites: affected "
                        "(receivers without nvipcfix get the block base)");
    assert_int_equal(nvipcfix_audit_site(&a, 0, where, sizeof where, &n), 1);
    assert_string_equal(where, "libkv.so+0x1234");
    assert_int_equal(n, 5);
    assert_int_equal(nvipcfix_audit_site(&a, 1, where, sizeof where, &n), 1);
    assert_string_equal(where, "libmooncake.so(register_buffer+0x4c)");
    assert_int_equal(nvipcfix_audit_site(&a, 2, where, sizeof where, &n), 1);
    assert_string_equal(where, "(caller not known)");
    assert_int_equal(nvipcfix_audit_site(&a, 3, where, sizeof where, &n), 0);
}

static void test_one_site_singular(void **state)
{
    (void)state;
    struct nvipcfix_audit_sites a;
    char line[256];
    nvipcfix_audit_sites_init(&a);
    nvipcfix_audit_sites_add(&a, "prog+0x10");
    assert_string_equal(nvipcfix_audit_verdict(&a, line, sizeof line),
                        "this process exported 1 interior pointer from 1 call site: affected "
                        "(receivers without nvipcfix get the block base)");
}

/* Past the table's capacity the exports are still counted, and the verdict
 * says there were more sites. */
static void test_capacity(void **state)
{
    (void)state;
    struct nvipcfix_audit_sites a;
    char line[256], where[32];
    nvipcfix_audit_sites_init(&a);
    for (int i = 0; i < NVIPCFIX_AUDIT_MAX_SITES + 5; i++) {
        snprintf(where, sizeof where, "site%d", i);
        nvipcfix_audit_sites_add(&a, where);
    }
    snprintf(where, sizeof where, "%d", NVIPCFIX_AUDIT_MAX_SITES);
    nvipcfix_audit_verdict(&a, line, sizeof line);
    assert_non_null(strstr(line, "exported 37 interior pointers from more than 32 call sites"));
}

static struct nvipcfix_audit_sites shared;

static void *adder(void *arg)
{
    (void)arg;
    for (int i = 0; i < 10000; i++)
        nvipcfix_audit_sites_add(&shared, i % 2 ? "a" : "b");
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    pthread_t t[8];
    unsigned long n1 = 0, n2 = 0;
    char where[8];
    nvipcfix_audit_sites_init(&shared);
    for (int i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, adder, NULL);
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(nvipcfix_audit_site(&shared, 0, where, sizeof where, &n1), 1);
    assert_int_equal(nvipcfix_audit_site(&shared, 1, where, sizeof where, &n2), 1);
    assert_int_equal(n1 + n2, 80000);
    assert_int_equal(shared.exports, 80000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_affected),
        cmocka_unit_test(test_sites_aggregated_busiest_first),
        cmocka_unit_test(test_one_site_singular),
        cmocka_unit_test(test_capacity),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests_name("audit_sites", tests, NULL, NULL);
}
