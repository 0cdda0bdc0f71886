/* Unit tests of shim/vmm_ticket.c: the 64-byte ticket for VMM memory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../shim/vmm_ticket.h"

static const struct nvipcfix_vmm_ticket sample = {
    .pid = 4242,
    .uid = 1000,
    .export_id = 7,
    .nonce = 0x5eed5eedu,
    .pid_ns = 4026531836u,
    .secret = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
               0xee, 0xf0, 0x0f},
    .offset = (UINT64_C(1) << 47) + 513,
    .boot = 0xcafebeefu,
    .device = 3,
    .flags = NVIPCFIX_TICKET_IN_DIR,
};

static void test_round_trip(void **state)
{
    (void)state;
    unsigned char b[64];
    struct nvipcfix_vmm_ticket t;
    nvipcfix_vmm_ticket_encode(b, &sample);
    assert_int_equal(nvipcfix_vmm_ticket_decode(b, &t), 0);
    assert_true(t.pid == sample.pid && t.uid == sample.uid && t.export_id == sample.export_id &&
                t.nonce == sample.nonce && t.pid_ns == sample.pid_ns &&
                t.offset == sample.offset && t.boot == sample.boot && t.device == 3 &&
                t.flags == NVIPCFIX_TICKET_IN_DIR);
    assert_memory_equal(t.secret, sample.secret, sizeof t.secret);
    /* 128 bits of the export's secret, as they were */
    assert_memory_equal(b + 32, sample.secret, 16);
    /* the pid where drivers put theirs, and zero where a driver reads the
     * chunk size (so a driver alone refuses the ticket) */
    assert_int_equal(b[8] | b[9] << 8, 4242);
    assert_int_equal(b[24] | b[25] | b[26] | b[27], 0);
}

static void test_any_changed_byte_is_no_ticket(void **state)
{
    (void)state;
    unsigned char b[64], c[64];
    struct nvipcfix_vmm_ticket t;
    nvipcfix_vmm_ticket_encode(b, &sample);
    for (int i = 0; i < 64; i++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(c, b, sizeof c);
            c[i] ^= (unsigned char)(1u << bit);
            assert_int_equal(nvipcfix_vmm_ticket_decode(c, &t), -1);
        }
}

static void test_driver_handles_are_no_tickets(void **state)
{
    (void)state;
    /* the 64 MiB handle measured on an H100 (cuda-ipc-facts.md) */
    static const unsigned char real[64] = {
        0x70, 0xe6, 0x15, 0x7e, 0x06, 0x56, 0x00, 0x00, 0xa5, 0x01, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0x04, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0,
        0x06, 0, 0, 0, 0, 0xff, 0, 0, 0x32, 0, 0, 0, 0, 0, 0, 0,
        0x1a, 0x00, 0xd0, 0xc1, 0x96, 0x00, 0x00, 0x5c, 0, 0, 0, 0, 0, 0, 0, 0};
    unsigned char zero[64] = {0};
    struct nvipcfix_vmm_ticket t;
    assert_int_equal(nvipcfix_vmm_ticket_decode(real, &t), -1);
    assert_int_equal(nvipcfix_vmm_ticket_decode(zero, &t), -1);
}

static void test_key_ignores_the_offset_only(void **state)
{
    (void)state;
    struct nvipcfix_vmm_ticket a = sample, b = sample;
    unsigned char ta[64], tb[64], ka[64], kb[64];
    b.offset = 12;
    nvipcfix_vmm_ticket_encode(ta, &a);
    nvipcfix_vmm_ticket_encode(tb, &b);
    nvipcfix_vmm_ticket_key(ta, ka);
    nvipcfix_vmm_ticket_key(tb, kb);
    assert_memory_equal(ka, kb, 64);
    b.export_id = 8;
    nvipcfix_vmm_ticket_encode(tb, &b);
    nvipcfix_vmm_ticket_key(tb, kb);
    assert_memory_not_equal(ka, kb, 64);
    b = sample; /* two exports differ in their secrets alone: two keys */
    b.secret[15] ^= 1;
    nvipcfix_vmm_ticket_encode(tb, &b);
    nvipcfix_vmm_ticket_key(tb, kb);
    assert_memory_not_equal(ka, kb, 64);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_any_changed_byte_is_no_ticket),
        cmocka_unit_test(test_driver_handles_are_no_tickets),
        cmocka_unit_test(test_key_ignores_the_offset_only),
    };
    return cmocka_run_group_tests_name("vmm_ticket", tests, NULL, NULL);
}
