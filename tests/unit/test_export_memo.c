/* Unit tests of shim/export_memo.c: the answer to a pointer's export comes
 * back only for the very handle it was given for. */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <cmocka.h>

#include "../../shim/export_memo.h"

/* A driver's handle: layout as measured (type 0x06 at 32, client handle
 * 0xc1xxxxxx in 48-51), bytes 56-63 zero; fill tells allocations apart. */
static void driver_handle(unsigned char h[64], unsigned char fill)
{
    memset(h, fill, 56);
    h[32] = 0x06;
    h[51] = 0xc1;
    memset(h + 56, 0, 8);
}

/* The answer nvipcfix gives for offset: a guarded tag (or a plain one). */
static void tagged(unsigned char out[64], const unsigned char driver[64], uint64_t offset,
                   enum nvipcfix_tag_style style)
{
    memcpy(out, driver, 64);
    assert_int_equal(nvipcfix_tag_encode_style(out, offset, style), 0);
}

/* What an export does: probe before the driver's call, the driver writes
 * its handle, apply. Returns apply's result; handle is what the caller
 * gets. */
static int export_with(struct nvipcfix_export_memo *m, uint64_t ptr,
                       const unsigned char driver[64], unsigned char handle[64], uint64_t *tail)
{
    struct nvipcfix_export_memo_probe p;
    nvipcfix_export_memo_probe(m, ptr, &p);
    memcpy(handle, driver, 64);
    return nvipcfix_export_memo_apply(&p, handle, tail);
}

static int setup(void **state)
{
    static struct nvipcfix_export_memo m;
    nvipcfix_export_memo_init(&m);
    *state = &m;
    return 0;
}

static int teardown(void **state)
{
    nvipcfix_export_memo_destroy(*state);
    return 0;
}

static void test_empty_memo_answers_nothing(void **state)
{
    unsigned char d[64], h[64];
    uint64_t tail = 7;
    driver_handle(d, 0x11);
    assert_int_equal(export_with(*state, 0x7f0000100000, d, h, &tail), 0);
    assert_memory_equal(h, d, 64);
    assert_int_equal(tail, 7);
}

static void test_base_answer_comes_back_untouched(void **state)
{
    unsigned char d[64], h[64];
    uint64_t tail = 7;
    driver_handle(d, 0x12);
    nvipcfix_export_memo_put(*state, 0x7f0000200000, d, d);
    assert_int_equal(export_with(*state, 0x7f0000200000, d, h, &tail), 1);
    assert_memory_equal(h, d, 64);
    assert_int_equal(tail, 0);
}

static void test_tagged_answers_come_back_byte_for_byte(void **state)
{
    const enum nvipcfix_tag_style styles[] = {NVIPCFIX_TAG_PLAIN, NVIPCFIX_TAG_GUARDED};
    for (int i = 0; i < 2; i++) {
        unsigned char d[64], answer[64], h[64];
        uint64_t ptr = 0x7f0000300000 + 0x100000 * (uint64_t)i + 4097, tail = 0;
        driver_handle(d, (unsigned char)(0x20 + i));
        tagged(answer, d, 4097, styles[i]);
        nvipcfix_export_memo_put(*state, ptr, d, answer);
        assert_int_equal(export_with(*state, ptr, d, h, &tail), 1);
        assert_memory_equal(h, answer, 64);
        assert_int_not_equal(tail, 0);
        uint64_t offset;
        unsigned char native[64];
        enum nvipcfix_tag_style style;
        assert_int_equal(nvipcfix_tag_decode_style(h, &offset, native, &style), NVIPCFIX_TAG_OURS);
        assert_int_equal(offset, 4097);
        assert_int_equal(style, styles[i]);
        assert_memory_equal(native, d, 64);
    }
}

/* The block was freed and another allocated at the same address (another
 * size, another object): the driver's handle differs in any one byte, and
 * the old answer is not given; the handle stays the driver's. */
static void test_another_allocation_at_the_pointer_is_a_miss(void **state)
{
    unsigned char d[64], answer[64], h[64];
    uint64_t ptr = 0x7f0000500000 + 64, tail = 0;
    driver_handle(d, 0x31);
    tagged(answer, d, 64, NVIPCFIX_TAG_GUARDED);
    nvipcfix_export_memo_put(*state, ptr, d, answer);
    for (int byte = 0; byte < 56; byte++) {
        unsigned char other[64];
        memcpy(other, d, 64);
        other[byte] ^= 0x01;
        assert_int_equal(export_with(*state, ptr, other, h, &tail), 0);
        assert_memory_equal(h, other, 64);
    }
    /* and another pointer with the same handle is not answered either */
    assert_int_equal(export_with(*state, ptr + 1, d, h, &tail), 0);
    assert_memory_equal(h, d, 64);
}

/* Only an answer that is the driver's handle with a tail (and byte 51
 * flipped for a guarded one) is kept; a driver that wrote bytes 56-63 is
 * not answered from the memo. */
static void test_answers_of_other_shapes_are_not_kept(void **state)
{
    unsigned char d[64], answer[64], h[64];
    uint64_t ptr = 0x7f0000600000 + 128, tail = 0;
    driver_handle(d, 0x41);
    tagged(answer, d, 128, NVIPCFIX_TAG_GUARDED);
    answer[10] ^= 0xff; /* a byte the tag never touches */
    nvipcfix_export_memo_put(*state, ptr, d, answer);
    assert_int_equal(export_with(*state, ptr, d, h, &tail), 0);

    tagged(answer, d, 128, NVIPCFIX_TAG_PLAIN);
    answer[NVIPCFIX_GUARD_BYTE] ^= NVIPCFIX_GUARD_MASK; /* flipped, tail says plain */
    nvipcfix_export_memo_put(*state, ptr, d, answer);
    assert_int_equal(export_with(*state, ptr, d, h, &tail), 0);

    d[60] = 1; /* the driver wrote the tail */
    nvipcfix_export_memo_put(*state, ptr, d, d);
    assert_int_equal(export_with(*state, ptr, d, h, &tail), 0);
    assert_memory_equal(h, d, 64);
}

/* Pointers in one bucket (two slots): two both stay; a third takes the
 * place of one, which is then a miss (never another pointer's answer, the
 * handle left as the driver wrote it). */
static void test_pointers_sharing_a_bucket(void **state)
{
    unsigned char d[64], a[3][64], h[64];
    uint64_t p[3], tail;
    p[0] = 0x7f0000700000 + 256;
    for (int i = 1; i < 3; i++)
        for (p[i] = p[i - 1] + 4096;
             nvipcfix_export_memo_index(p[i]) != nvipcfix_export_memo_index(p[0]);)
            p[i] += 4096;
    driver_handle(d, 0x51); /* one block holds them all */
    for (int i = 0; i < 3; i++)
        tagged(a[i], d, p[i] - p[0] + 256, NVIPCFIX_TAG_GUARDED);
    nvipcfix_export_memo_put(*state, p[0], d, a[0]);
    nvipcfix_export_memo_put(*state, p[1], d, a[1]);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(export_with(*state, p[i], d, h, &tail), 1);
        assert_memory_equal(h, a[i], 64);
    }
    nvipcfix_export_memo_put(*state, p[2], d, a[2]);
    assert_int_equal(export_with(*state, p[2], d, h, &tail), 1);
    assert_memory_equal(h, a[2], 64);
    int hits = 0;
    for (int i = 0; i < 2; i++) {
        int hit = export_with(*state, p[i], d, h, &tail);
        assert_memory_equal(h, hit ? a[i] : d, 64);
        hits += hit;
    }
    assert_int_equal(hits, 1);
}

/* An exporter walking 1,024 sub-allocations of a block, 64 bytes apart
 * (what the fork benchmark's threads do, and a caching allocator's small
 * tensors), in turns: after one round every export is a hit, whatever the
 * block's address (no bucket gets a third pointer to evict another). */
static void test_a_block_of_small_exports_stays(void **state)
{
    static const uint64_t bases[] = {0x7f0000000000, 0x7fe3a0200000, 0x302000000,
                                     0x2a54000000, 0x7f1234400000};
    unsigned char d[64], a[64], h[64];
    uint64_t tail;
    for (size_t b = 0; b < sizeof bases / sizeof bases[0]; b++) {
        nvipcfix_export_memo_destroy(*state); /* a fresh memo for each block */
        driver_handle(d, (unsigned char)(0x61 + b));
        for (int round = 0; round < 2; round++) {
            int hits = 0;
            for (uint64_t k = 0; k < 1024; k++) {
                uint64_t ptr = bases[b] + k * 64;
                memcpy(a, d, 64);
                if (k != 0)
                    tagged(a, d, k * 64, NVIPCFIX_TAG_GUARDED);
                int hit = export_with(*state, ptr, d, h, &tail);
                assert_memory_equal(h, hit ? a : d, 64);
                if (!hit)
                    nvipcfix_export_memo_put(*state, ptr, d, a);
                hits += hit;
            }
            assert_int_equal(hits, round == 0 ? 0 : 1024);
        }
    }
}

/* A slot changed between the probe (before the driver's call) and the
 * compare (after it): a miss, whatever the new contents. */
static void test_slot_changed_during_the_call_is_a_miss(void **state)
{
    unsigned char d1[64], d2[64], a1[64], a2[64], h[64];
    uint64_t ptr = 0x7f0000800000 + 512, tail;
    struct nvipcfix_export_memo_probe p;
    driver_handle(d1, 0x61);
    driver_handle(d2, 0x62);
    tagged(a1, d1, 512, NVIPCFIX_TAG_GUARDED);
    tagged(a2, d2, 512, NVIPCFIX_TAG_GUARDED);
    nvipcfix_export_memo_put(*state, ptr, d1, a1);
    nvipcfix_export_memo_probe(*state, ptr, &p);
    nvipcfix_export_memo_put(*state, ptr, d2, a2); /* another thread, meanwhile */
    memcpy(h, d2, 64);
    assert_int_equal(nvipcfix_export_memo_apply(&p, h, &tail), 0);
    assert_memory_equal(h, d2, 64);
    assert_int_equal(export_with(*state, ptr, d2, h, &tail), 1);
    assert_memory_equal(h, a2, 64);
}

/* A slot another writer holds (its counter odd) is neither read nor
 * written. */
static void test_slot_being_written_is_left_alone(void **state)
{
    struct nvipcfix_export_memo *m = *state;
    unsigned char d[64], a[64], h[64];
    uint64_t ptr = 0x7f0000900000 + 1024, tail;
    driver_handle(d, 0x71);
    tagged(a, d, 1024, NVIPCFIX_TAG_GUARDED);
    nvipcfix_export_memo_put(m, ptr, d, a);
    struct nvipcfix_export_memo_slot *s =
        &atomic_load(&m->slots)[nvipcfix_export_memo_index(ptr)];
    atomic_fetch_add(&s->seq, 1); /* a writer in the middle */
    assert_int_equal(export_with(m, ptr, d, h, &tail), 0);
    unsigned char d2[64], a2[64];
    driver_handle(d2, 0x72);
    tagged(a2, d2, 1024, NVIPCFIX_TAG_GUARDED);
    nvipcfix_export_memo_put(m, ptr, d2, a2); /* gives up */
    atomic_fetch_add(&s->seq, 1);            /* the writer done */
    assert_int_equal(export_with(m, ptr, d, h, &tail), 1);
    assert_memory_equal(h, a, 64);
}

static void test_forget_after_fork(void **state)
{
    struct nvipcfix_export_memo *m = *state;
    unsigned char d[64], h[64];
    uint64_t tail;
    driver_handle(d, 0x81);
    nvipcfix_export_memo_put(m, 0x7f0000a00000, d, d);
    nvipcfix_export_memo_forget(m);
    assert_int_equal(export_with(m, 0x7f0000a00000, d, h, &tail), 0);
    nvipcfix_export_memo_put(m, 0x7f0000a00000, d, d);
    assert_int_equal(export_with(m, 0x7f0000a00000, d, h, &tail), 1);
}

/* Threads racing for one pointer's slot, for a fixed time (so that they
 * overlap on any machine): writers keep replacing its answer with one of
 * two allocations' answers (a guarded and a plain tag, other bytes 0-55);
 * readers export with the first allocation's handle. A reader gets that
 * allocation's answer or a miss, never the other's tail or a mix of the
 * two. */
#define RACE_MS 400
struct race {
    struct nvipcfix_export_memo *m;
    uint64_t ptr;
    unsigned char d1[64], d2[64], a1[64], a2[64];
    atomic_int stop;
    atomic_long wrong, hits, misses;
};

static void *race_writer(void *arg)
{
    struct race *r = arg;
    for (unsigned long i = 0; !atomic_load_explicit(&r->stop, memory_order_relaxed); i++) {
        if (i & 1)
            nvipcfix_export_memo_put(r->m, r->ptr, r->d2, r->a2);
        else
            nvipcfix_export_memo_put(r->m, r->ptr, r->d1, r->a1);
    }
    return NULL;
}

static void *race_reader(void *arg)
{
    struct race *r = arg;
    unsigned char h[64];
    uint64_t tail;
    while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
        int hit = export_with(r->m, r->ptr, r->d1, h, &tail);
        atomic_fetch_add_explicit(hit ? &r->hits : &r->misses, 1, memory_order_relaxed);
        if (memcmp(h, hit ? r->a1 : r->d1, 64) != 0)
            atomic_fetch_add_explicit(&r->wrong, 1, memory_order_relaxed);
    }
    return NULL;
}

static void test_readers_racing_writers(void **state)
{
    static struct race r;
    pthread_t t[4];
    r.m = *state;
    r.ptr = 0x7f0000b00000 + 2048;
    driver_handle(r.d1, 0x91);
    driver_handle(r.d2, 0x92);
    tagged(r.a1, r.d1, 2048, NVIPCFIX_TAG_GUARDED);
    tagged(r.a2, r.d2, 2048, NVIPCFIX_TAG_PLAIN);
    atomic_init(&r.stop, 0);
    atomic_init(&r.wrong, 0);
    atomic_init(&r.hits, 0);
    atomic_init(&r.misses, 0);
    nvipcfix_export_memo_put(r.m, r.ptr, r.d1, r.a1);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, i < 2 ? race_writer : race_reader, &r), 0);
    struct timespec ts = {0, RACE_MS * 1000000L};
    nanosleep(&ts, NULL);
    atomic_store(&r.stop, 1);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    print_message("racing: %ld hits, %ld misses, %ld wrong\n", atomic_load(&r.hits),
                  atomic_load(&r.misses), atomic_load(&r.wrong));
    assert_int_equal(atomic_load(&r.wrong), 0);
    /* once the writers are done, the first allocation's answer again */
    nvipcfix_export_memo_put(r.m, r.ptr, r.d1, r.a1);
    unsigned char h[64];
    uint64_t tail;
    assert_int_equal(export_with(r.m, r.ptr, r.d1, h, &tail), 1);
    assert_memory_equal(h, r.a1, 64);
}

/* A reader that interrupts the writer anywhere in its writing: a signal
 * handler on the writer's thread (SIGALRM every 50 us; the test runs no
 * other thread), while it keeps replacing the slot's answer with one of
 * two allocations' answers that differ only in the object id (bytes 40-47)
 * and the tail. Each read gets the first allocation's answer or a miss,
 * never the other's tail with the first's handle. (Under ThreadSanitizer,
 * which holds signals back until a safe point, the handler never lands
 * inside a write.) */
static struct race irq;

static void irq_read(int sig)
{
    (void)sig;
    unsigned char h[64];
    uint64_t tail;
    int hit = export_with(irq.m, irq.ptr, irq.d1, h, &tail);
    atomic_fetch_add_explicit(hit ? &irq.hits : &irq.misses, 1, memory_order_relaxed);
    if (memcmp(h, hit ? irq.a1 : irq.d1, 64) != 0)
        atomic_fetch_add_explicit(&irq.wrong, 1, memory_order_relaxed);
}

static void test_reader_interrupting_the_writer(void **state)
{
    irq.m = *state;
    irq.ptr = 0x7f0000c00000 + 4096;
    driver_handle(irq.d1, 0xa1);
    memcpy(irq.d2, irq.d1, 64);
    irq.d2[40] ^= 0x5a;
    tagged(irq.a1, irq.d1, 4096, NVIPCFIX_TAG_GUARDED);
    tagged(irq.a2, irq.d2, 4096, NVIPCFIX_TAG_PLAIN);
    atomic_init(&irq.wrong, 0);
    atomic_init(&irq.hits, 0);
    atomic_init(&irq.misses, 0);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = irq_read;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    assert_int_equal(sigaction(SIGALRM, &sa, &old), 0);
    struct itimerval every = {{0, 50}, {0, 50}}, off = {{0, 0}, {0, 0}};
    assert_int_equal(setitimer(ITIMER_REAL, &every, NULL), 0);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    unsigned long i = 0;
    do {
        for (int k = 0; k < 1000; k++, i++) {
            if (i & 1)
                nvipcfix_export_memo_put(irq.m, irq.ptr, irq.d2, irq.a2);
            else
                nvipcfix_export_memo_put(irq.m, irq.ptr, irq.d1, irq.a1);
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < RACE_MS);
    assert_int_equal(setitimer(ITIMER_REAL, &off, NULL), 0);
    assert_int_equal(sigaction(SIGALRM, &old, NULL), 0);
    print_message("interrupted: %ld hits, %ld misses, %ld wrong\n", atomic_load(&irq.hits),
                  atomic_load(&irq.misses), atomic_load(&irq.wrong));
    assert_int_equal(atomic_load(&irq.wrong), 0);
    assert_true(atomic_load(&irq.hits) + atomic_load(&irq.misses) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_memo_answers_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_base_answer_comes_back_untouched, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tagged_answers_come_back_byte_for_byte, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_another_allocation_at_the_pointer_is_a_miss, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_answers_of_other_shapes_are_not_kept, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pointers_sharing_a_bucket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_block_of_small_exports_stays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slot_changed_during_the_call_is_a_miss, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_slot_being_written_is_left_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forget_after_fork, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readers_racing_writers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reader_interrupting_the_writer, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
