/* Unit tests of shim/ipc_fix.c against an in-process fake driver that has
 * the bug: the handle of an interior pointer is the block's, an open returns
 * the block's base. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../common/test_deadline.h"
#include "../../shim/ipc_fix.h"

/* ---- the fake driver ---------------------------------------------------- */

#define MAX_BLOCKS 16
#define MAPPED_AT 0x7000000000ull /* importer's address of a block = this + base */

struct fake_block {
    uint64_t base, size, id;
    int refs; /* importer side: real opens not closed */
};

static struct {
    pthread_mutex_t lock;
    struct fake_block blocks[MAX_BLOCKS];
    int nblocks;
    uint64_t next_id;
    int exporter; /* opens fail as in the exporting process */
    int tail;     /* the driver writes bytes 56-63 */
    int measured; /* handles have the measured layout (type 0x06, client 0xc1xxxxxx) */
    int gets, attrs, opens, closes;
    /* A hostile neighbour: before the driver call numbered `replace_at`
     * (gets and range queries counted together from 0), the block holding
     * `replace_ptr` is freed and another allocated in its place:
     * [replace_base, + replace_size), with a new id. */
    int calls, replace_at;
    uint64_t replace_ptr, replace_base, replace_size;
    struct CUctx_st *ctx;
} fake = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int ctx_storage[2];

static struct fake_block *containing(uint64_t p)
{
    for (int i = 0; i < fake.nblocks; i++)
        if (p >= fake.blocks[i].base && p < fake.blocks[i].base + fake.blocks[i].size)
            return &fake.blocks[i];
    return NULL;
}

static uint64_t fake_alloc(uint64_t base, uint64_t size)
{
    fake.blocks[fake.nblocks++] = (struct fake_block){base, size, ++fake.next_id, 0};
    return base;
}

static void fake_realloc_same_address(uint64_t base)
{
    containing(base)->id = ++fake.next_id;
}

static atomic_int neighbour_runs; /* a thread replaces blocks (test_threads_export_...) */

/* Caller holds fake.lock: the block holding p freed, a new one allocated
 * at [base, base + size) (which holds p). */
static void fake_replace(uint64_t p, uint64_t base, uint64_t size)
{
    struct fake_block *b = containing(p);
    b->base = base;
    b->size = size;
    b->id = ++fake.next_id;
}

/* Caller holds fake.lock. */
static void neighbour_acts(void)
{
    if (fake.calls++ == fake.replace_at)
        fake_replace(fake.replace_ptr, fake.replace_base, fake.replace_size);
}

static CUresult f_attrs(unsigned int n, CUpointer_attribute *attrs, void **data, CUdeviceptr p)
{
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&fake.lock);
    neighbour_acts();
    fake.attrs++;
    struct fake_block *b = containing(p);
    for (unsigned i = 0; i < n; i++) {
        if (attrs[i] == CU_POINTER_ATTRIBUTE_RANGE_START_ADDR)
            *(CUdeviceptr *)data[i] = b ? b->base : 0;
        else if (attrs[i] == CU_POINTER_ATTRIBUTE_RANGE_SIZE)
            *(size_t *)data[i] = b ? b->size : 0;
        else if (attrs[i] == CU_POINTER_ATTRIBUTE_BUFFER_ID)
            *(unsigned long long *)data[i] = b ? b->id : 0;
        else
            r = CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_unlock(&fake.lock);
    if (atomic_load_explicit(&neighbour_runs, memory_order_relaxed))
        sched_yield(); /* the racing neighbour's chance between two calls */
    return r;
}

static CUresult f_range(CUdeviceptr *base, size_t *size, CUdeviceptr p)
{
    /* importer side: mapped blocks */
    struct fake_block *b = p >= MAPPED_AT ? containing(p - MAPPED_AT) : containing(p);
    if (b == NULL)
        return CUDA_ERROR_NOT_FOUND;
    *base = b->base + (p >= MAPPED_AT ? MAPPED_AT : 0);
    *size = b->size;
    return CUDA_SUCCESS;
}

static CUresult f_ctx(CUcontext *ctx)
{
    *ctx = fake.ctx;
    return CUDA_SUCCESS;
}

/* Bytes 0-55 of a block's handle, as this driver writes them. */
static void fill_head(CUipcMemHandle *h, const struct fake_block *b)
{
    memset(h, 0, sizeof *h);
    memcpy(h->reserved, &b->base, 8); /* the block, whatever p was: the bug */
    memcpy(h->reserved + 8, &b->id, 8);
    memset(h->reserved + 16, 0x5a, 40);
    if (fake.measured) {
        h->reserved[32] = 0x06;
        h->reserved[51] = (char)0xc1;
    }
}

static CUresult f_get(CUipcMemHandle *h, CUdeviceptr p)
{
    pthread_mutex_lock(&fake.lock);
    neighbour_acts();
    struct fake_block *b = containing(p);
    fake.gets++;
    if (b == NULL) {
        pthread_mutex_unlock(&fake.lock);
        return CUDA_ERROR_INVALID_VALUE;
    }
    fill_head(h, b);
    pthread_mutex_unlock(&fake.lock);
    if (fake.tail)
        h->reserved[63] = 0x42;
    return CUDA_SUCCESS;
}

static CUresult f_open(CUdeviceptr *pp, CUipcMemHandle h, unsigned int flags)
{
    if (flags > CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) /* the driver's check */
        return CUDA_ERROR_INVALID_VALUE;
    if (fake.exporter)
        return CUDA_ERROR_INVALID_CONTEXT;
    for (int i = 56; i < 64; i++) /* never handed a tagged handle */
        if (h.reserved[i] != 0 && !fake.tail)
            return CUDA_ERROR_INVALID_HANDLE;
    uint64_t base;
    memcpy(&base, h.reserved, 8);
    pthread_mutex_lock(&fake.lock);
    struct fake_block *b = containing(base);
    CUipcMemHandle written;
    if (b != NULL)
        fill_head(&written, b);
    if (b == NULL || memcmp(written.reserved + 16, h.reserved + 16, 40) != 0) {
        pthread_mutex_unlock(&fake.lock); /* not bytes it wrote (a guarded tag) */
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if (b->refs > 0) { /* an old driver: the second open fails */
        pthread_mutex_unlock(&fake.lock);
        return CUDA_ERROR_ALREADY_MAPPED;
    }
    b->refs++;
    fake.opens++;
    pthread_mutex_unlock(&fake.lock);
    *pp = MAPPED_AT + b->base; /* the base: the bug */
    return CUDA_SUCCESS;
}

static CUresult f_close(CUdeviceptr p)
{
    pthread_mutex_lock(&fake.lock);
    struct fake_block *b = p >= MAPPED_AT ? containing(p - MAPPED_AT) : NULL;
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    if (b != NULL && b->base == p - MAPPED_AT && b->refs > 0) {
        b->refs--;
        fake.closes++;
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&fake.lock);
    return r;
}

static const struct nvipcfix_driver driver = {
    .pointer_get_attributes = f_attrs,
    .mem_get_address_range = f_range,
    .ctx_get_current = f_ctx,
    .ipc_get_mem_handle = f_get,
    .ipc_close_mem_handle = f_close,
};

/* ---- fixture ---------------------------------------------------------------- */

static struct nvipcfix_fix fix;

static void start(enum nvipcfix_mode mode, int self_open)
{
    struct nvipcfix_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.mode = mode;
    cfg.log_level = NVIPCFIX_LOG_ERROR;
    cfg.self_open = self_open;
    cfg.stats = 1;
    memset(fake.blocks, 0, sizeof fake.blocks);
    fake.nblocks = 0;
    fake.exporter = fake.tail = fake.measured = 0;
    fake.gets = fake.attrs = fake.opens = fake.closes = 0;
    fake.calls = 0;
    fake.replace_at = -1;
    fake.next_id = 0; /* each test's ids small, whatever ran before */
    fake.ctx = (CUcontext)&ctx_storage[0];
    nvipcfix_fix_init(&fix, &cfg, &driver);
    nvipcfix_log_open(NVIPCFIX_LOG_ERROR, NULL); /* the tests provoke warnings */
}

static int setup_fix(void **state)
{
    (void)state;
    start(NVIPCFIX_MODE_FIX, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    nvipcfix_fix_destroy(&fix);
    return 0;
}

static CUipcMemHandle export_ok(CUdeviceptr p)
{
    CUipcMemHandle h;
    assert_int_equal(nvipcfix_export(&fix, &h, p), CUDA_SUCCESS);
    return h;
}

static CUdeviceptr open_ok(CUipcMemHandle h)
{
    CUdeviceptr p = 0;
    assert_int_equal(nvipcfix_open(&fix, f_open, &p, h, 1), CUDA_SUCCESS);
    return p;
}

/* ---- export ------------------------------------------------------------------ */

static void test_base_export_is_native(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle native, ours = export_ok(b);
    f_get(&native, b);
    assert_memory_equal(ours.reserved, native.reserved, 64);
}

static void test_interior_export_is_tagged_and_cached(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle native, h1 = export_ok(b + 4096), h2 = export_ok(b + 4097);
    f_get(&native, b);
    assert_memory_equal(h1.reserved, native.reserved, 56);
    assert_memory_not_equal(h1.reserved, native.reserved, 64);
    assert_memory_not_equal(h1.reserved, h2.reserved, 64);
    /* the block is known now: each export is the driver's handle of the
     * pointer (one call) and a look-up in the cache, no range query */
    int gets = fake.gets, attrs = fake.attrs;
    export_ok(b + 99);
    export_ok(b);
    assert_int_equal(fake.gets, gets + 2);
    assert_int_equal(fake.attrs, attrs);
    assert_int_equal(atomic_load(&fix.stats.exports_tagged), 3);
}

/* Where the handle has the measured layout, an interior pointer's tag is
 * guarded: byte 51's top bit flipped, which a driver alone refuses; a
 * receiver with nvipcfix hands the driver its own bytes again, whether or
 * not it opened the block's base first. NVIPCFIX_TAG=plain leaves 0-55. */
static void test_guarded_export_and_open(void **state)
{
    (void)state;
    fake.measured = 1;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle native, base = export_ok(b), h = export_ok(b + 4096);
    CUdeviceptr p = 0;
    f_get(&native, b);
    for (int i = 0; i < 56; i++)
        assert_int_equal((unsigned char)(h.reserved[i] ^ native.reserved[i]), i == 51 ? 0x80 : 0);
    assert_memory_not_equal(h.reserved + 56, native.reserved + 56, 8);
    assert_int_equal(f_open(&p, h, 1), CUDA_ERROR_INVALID_HANDLE); /* no nvipcfix */
    CUdeviceptr q = open_ok(base), r = open_ok(h);
    assert_true(q == MAPPED_AT + b && r == MAPPED_AT + b + 4096);
    assert_int_equal(fake.opens, 1);
    assert_int_equal(nvipcfix_close(&fix, r), CUDA_SUCCESS);
    assert_int_equal(nvipcfix_close(&fix, q), CUDA_SUCCESS);
    assert_int_equal(fake.closes, 1);
    fix.config.plain_tags = 1;
    h = export_ok(b + 8192);
    assert_memory_equal(h.reserved, native.reserved, 56);
}

static void test_reallocated_block_gets_fresh_handle(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle old = export_ok(b + 8);
    fake_realloc_same_address(b);
    CUipcMemHandle now = export_ok(b + 8);
    assert_memory_not_equal(old.reserved, now.reserved, 56);
    CUipcMemHandle native;
    f_get(&native, b);
    assert_memory_equal(now.reserved, native.reserved, 56);
}

/* What a receiver with nvipcfix gets for an exported handle: the base of
 * the block the handle names (the fake writes it in bytes 0-7) plus the
 * tag's offset (0 for a native handle); *id: the block's id (bytes 8-15). */
static uint64_t received_pointer(CUipcMemHandle h, uint64_t *id)
{
    unsigned char native[64];
    uint64_t offset = 0, base;
    if (nvipcfix_tag_decode((const unsigned char *)h.reserved, &offset, native) ==
        NVIPCFIX_TAG_FOREIGN)
        return 0;
    memcpy(&base, native, 8);
    if (id != NULL)
        memcpy(id, native + 8, 8);
    return base + offset;
}

/* An export the memo answers (the same pointer again, the driver's handle
 * unchanged) gives the same bytes as an export that looks the block up,
 * and counts the same, whatever the answer was: a base, a guarded or a
 * plain tag, an offset too large for a tag, a driver that writes the tail;
 * and after the block was freed and another allocated at its address, the
 * new block's answer. */
static void test_memo_answers_as_a_fresh_export(void **state)
{
    (void)state;
    const uint64_t b = 0x100000, big = (uint64_t)1 << 48;
    const uint64_t offsets[] = {0, 1, 4096, 0x80000, NVIPCFIX_MAX_OFFSET + 1};
    for (int config = 0; config < 4; config++) /* guarded, plain, not measured, tail */
        for (size_t k = 0; k < sizeof offsets / sizeof offsets[0]; k++) {
            nvipcfix_fix_destroy(&fix);
            start(NVIPCFIX_MODE_FIX, 1);
            fix.config.plain_tags = config == 1;
            fake.measured = config != 2;
            fake.tail = config == 3;
            fake_alloc(b, big);
            uint64_t ptr = b + offsets[k];
            for (int change = 0; change < 2; change++) {
                if (change)
                    fake_realloc_same_address(b);
                CUipcMemHandle first = export_ok(ptr);
                long tagged = (long)atomic_load(&fix.stats.exports_tagged);
                int gets = fake.gets, attrs = fake.attrs;
                CUipcMemHandle again = export_ok(ptr); /* from the memo */
                assert_int_equal(fake.gets, gets + 1);   /* the driver's handle, once */
                assert_int_equal(fake.attrs, attrs);     /* no range query */
                long counted = (long)atomic_load(&fix.stats.exports_tagged) - tagged;
                nvipcfix_export_memo_destroy(&fix.memo); /* the memo emptied */
                nvipcfix_export_memo_init(&fix.memo);
                tagged = (long)atomic_load(&fix.stats.exports_tagged);
                CUipcMemHandle fresh = export_ok(ptr); /* looked up */
                assert_memory_equal(again.reserved, first.reserved, 64);
                assert_memory_equal(again.reserved, fresh.reserved, 64);
                assert_int_equal(counted,
                                 (long)atomic_load(&fix.stats.exports_tagged) - tagged);
                uint64_t id = 0;
                if (config != 3)
                    assert_int_equal(received_pointer(again, &id),
                                     offsets[k] <= NVIPCFIX_MAX_OFFSET ? ptr : b);
                else /* the driver wrote the tail: its handle, untouched */
                    assert_true(again.reserved[63] != 0);
            }
        }
}

/* The block of an exported pointer is freed and another allocated where it
 * was (at the same address, another size; or beginning lower, or higher)
 * before each of the driver calls an export makes in turn:
 * the handle and offset given always take a receiver to the pointer, never
 * to another offset, and once the change is over the handle names the
 * block that holds the pointer now. */
static void test_reallocation_between_export_calls(void **state)
{
    (void)state;
    static const struct {
        uint64_t base, size;
    } now[] = {
        {0x100000, 2 << 20},        /* the same address, larger */
        {0x100000, 0x90000},        /* the same address, smaller, still holding ptr */
        {0x0c0000, 2 << 20},        /* lower, holding the old base */
        {0x0f0000, 0x100000},       /* lower, the same size */
        {0x140000, 0x80000},        /* higher, after the old base */
    };
    const uint64_t ptr = 0x100000 + 0x80000;
    for (size_t k = 0; k < sizeof now / sizeof now[0]; k++)
        for (int at = 0; at < 6; at++) {
            nvipcfix_fix_destroy(&fix);
            start(NVIPCFIX_MODE_FIX, 1);
            fake_alloc(0x100000, 1 << 20);
            fake.replace_ptr = ptr;
            fake.replace_base = now[k].base;
            fake.replace_size = now[k].size;
            fake.replace_at = at;
            /* until the neighbour has acted, and once more */
            for (int round = 0, after = 0; after < 2 && round < 12; round++) {
                uint64_t id = 0;
                after += fake.calls > at;
                CUipcMemHandle h = export_ok(ptr);
                if (received_pointer(h, &id) != ptr)
                    fail_msg("new block [0x%llx, +0x%llx) before call %d: export %d gives "
                             "0x%llx, not 0x%llx",
                             (unsigned long long)now[k].base, (unsigned long long)now[k].size,
                             at, round, (unsigned long long)received_pointer(h, NULL),
                             (unsigned long long)ptr);
                if (after) /* the neighbour acted before this export */
                    assert_int_equal(id, fake.blocks[0].id);
            }
            assert_true(fake.calls > at);
        }
}

/* Another thread frees and re-allocates blocks where exported pointers are
 * (each new block somewhere else around them, of another size) while eight
 * threads export pointers inside them: every tag takes a receiver to the
 * exported pointer. An export may fall back to the native handle when the
 * block changed at every look (the driver's own answer; counted, allowed),
 * never to a tag with another offset. */
#define REGIONS 8
#define REGION(r) (0x10000000ull * (uint64_t)((r) + 1))

static void *neighbour(void *arg)
{
    unsigned seed = 12345;
    (void)arg;
    while (atomic_load(&neighbour_runs)) {
        int r = rand_r(&seed) % REGIONS;
        uint64_t lower = (uint64_t)(rand_r(&seed) % 16) * 0x10000;
        uint64_t more = (uint64_t)(rand_r(&seed) % 16) * 0x10000;
        pthread_mutex_lock(&fake.lock);
        fake_replace(REGION(r), REGION(r) - lower, lower + 0x10000 + more);
        pthread_mutex_unlock(&fake.lock);
        struct timespec ts = {0, 1000 * (rand_r(&seed) % 20)};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static atomic_long race_wrong, race_native, race_tagged;

static void *racing_exporter(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < 4000; i++) {
        uint64_t ptr = REGION(rand_r(&seed) % REGIONS) + 1 + (uint64_t)(rand_r(&seed) % 0xffff);
        CUipcMemHandle h;
        uint64_t offset;
        unsigned char native[64];
        if (nvipcfix_export(&fix, &h, ptr) != CUDA_SUCCESS) {
            atomic_fetch_add(&race_wrong, 1); /* ptr is always in a block */
            continue;
        }
        enum nvipcfix_tag_kind k =
            nvipcfix_tag_decode((const unsigned char *)h.reserved, &offset, native);
        if (received_pointer(h, NULL) == ptr)
            atomic_fetch_add(k == NVIPCFIX_TAG_OURS ? &race_tagged : &race_native, 1);
        else if (k == NVIPCFIX_TAG_NONE)
            atomic_fetch_add(&race_native, 1);
        else
            atomic_fetch_add(&race_wrong, 1);
    }
    return NULL;
}

static void test_threads_export_while_blocks_are_replaced(void **state)
{
    (void)state;
    test_alarm(120);
    for (int r = 0; r < REGIONS; r++)
        fake_alloc(REGION(r), 0x10000);
    atomic_store(&race_wrong, 0);
    atomic_store(&race_native, 0);
    atomic_store(&race_tagged, 0);
    atomic_store(&neighbour_runs, 1);
    pthread_t n, t[8];
    pthread_create(&n, NULL, neighbour, NULL);
    for (long i = 0; i < 8; i++)
        pthread_create(&t[i], NULL, racing_exporter, (void *)(i + 1));
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    atomic_store(&neighbour_runs, 0);
    pthread_join(n, NULL);
    print_message("racing exports: %ld tagged, %ld native fallbacks\n", atomic_load(&race_tagged),
                  atomic_load(&race_native));
    assert_int_equal(atomic_load(&race_wrong), 0);
    assert_true(atomic_load(&race_tagged) > 0);
    alarm(0);
}

/* When the export cache fills, the entries of blocks freed since their
 * export are swept by the fix's own liveness check (the driver's answer for
 * the block's base), and a live block's entry stays. */
static void test_export_cache_sweeps_freed_blocks(void **state)
{
    (void)state;
    uint64_t kept = fake_alloc(0x100000, 4096);
    export_ok(kept + 8);
    fake_alloc(0x200000, 4096);
    struct fake_block *moving = &fake.blocks[1];
    for (uint64_t i = 0; i < NVIPCFIX_EXPORT_CACHE_MAX; i++) {
        moving->base = 0x200000 + i * 4096; /* the previous one freed, a new one here */
        moving->id = ++fake.next_id;
        export_ok(moving->base + 8);
    }
    assert_int_equal(nvipcfix_export_cache_count(&fix.exports), 2);
    int attrs = fake.attrs;
    export_ok(kept + 16);
    assert_int_equal(fake.attrs, attrs); /* the live block is still known */
}

static void test_driver_using_tail_exports_natively(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    fake.tail = 1;
    CUipcMemHandle native, h = export_ok(b + 4096);
    f_get(&native, b + 4096);
    assert_memory_equal(h.reserved, native.reserved, 64);
}

static void test_unknown_pointer_goes_native(void **state)
{
    (void)state;
    CUipcMemHandle h;
    assert_int_equal(nvipcfix_export(&fix, &h, 0xdead0000), CUDA_ERROR_INVALID_VALUE);
}

/* ---- open and close ------------------------------------------------------------ */

static void test_open_returns_pointer_and_counts(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle h0 = export_ok(b), h1 = export_ok(b + 4096), h2 = export_ok(b + (1 << 20) - 1);
    CUdeviceptr p0 = open_ok(h0), p1 = open_ok(h1), p2 = open_ok(h2), p1b = open_ok(h1);
    assert_true(p0 == MAPPED_AT + b);
    assert_true(p1 == MAPPED_AT + b + 4096);
    assert_true(p2 == MAPPED_AT + b + (1 << 20) - 1);
    assert_true(p1b == p1);
    assert_int_equal(fake.opens, 1); /* one real open for the block */

    assert_int_equal(nvipcfix_close(&fix, p1), CUDA_SUCCESS);
    assert_int_equal(nvipcfix_close(&fix, p2), CUDA_SUCCESS);
    assert_int_equal(nvipcfix_close(&fix, p0), CUDA_SUCCESS);
    assert_int_equal(fake.closes, 0);
    assert_int_equal(nvipcfix_close(&fix, p1b), CUDA_SUCCESS);
    assert_int_equal(fake.closes, 1); /* the last one closes for real */
    assert_int_equal(nvipcfix_import_blocks(&fix.imports), 0);
    /* a pointer closed too often goes to the driver, which refuses it */
    assert_int_equal(nvipcfix_close(&fix, p1), CUDA_ERROR_INVALID_VALUE);
}

/* The importer computes the block base itself and closes that: nvipcfix
 * releases one reference of the block; the driver never sees the close
 * while nvipcfix counts references, and a re-open is right afterwards. */
static void test_close_of_address_inside_held_block(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle h = export_ok(b + 4096);
    CUdeviceptr p = open_ok(h), q = open_ok(h);
    assert_true(p == MAPPED_AT + b + 4096);
    assert_int_equal(nvipcfix_close(&fix, p - 4096), CUDA_SUCCESS);
    assert_int_equal(fake.closes, 0);
    assert_int_equal(nvipcfix_import_refs(&fix.imports, p), 1);
    assert_int_equal(nvipcfix_close(&fix, p + 64), CUDA_SUCCESS); /* the last: for real */
    assert_int_equal(fake.closes, 1);
    assert_int_equal(nvipcfix_import_blocks(&fix.imports), 0);
    assert_true(open_ok(h) == MAPPED_AT + b + 4096);
    assert_int_equal(fake.opens, 2);
    assert_int_equal(nvipcfix_close(&fix, q), CUDA_SUCCESS);
    /* outside every block nvipcfix holds: the driver decides */
    assert_int_equal(nvipcfix_close(&fix, q), CUDA_ERROR_INVALID_VALUE);
}

/* An open with flags the driver refuses is refused even when the block is
 * already open (a table hit must not skip the driver's check). */
static void test_bad_flags_refused_on_table_hit(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle h = export_ok(b + 8);
    CUdeviceptr p = open_ok(h), q = 0;
    assert_int_equal(nvipcfix_open(&fix, f_open, &q, h, 0x8), CUDA_ERROR_INVALID_VALUE);
    assert_true(q == 0);
    assert_int_equal(nvipcfix_import_refs(&fix.imports, p), 1);
    assert_int_equal(nvipcfix_open(&fix, f_open, &q, h, 0), CUDA_SUCCESS); /* 0 is valid */
    assert_int_equal(nvipcfix_close(&fix, q), CUDA_SUCCESS);
    assert_int_equal(nvipcfix_close(&fix, p), CUDA_SUCCESS);
    assert_int_equal(fake.opens, fake.closes);
}

static int count_lines(const char *path, const char *text)
{
    char line[1024];
    int n = 0;
    FILE *f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        n += strstr(line, text) != NULL;
    if (f != NULL)
        fclose(f);
    return n;
}

/* Issue 17: an open with unknown flags on a table hit, then a handle the
 * driver does not know: two warnings, each naming its own cause, each once
 * (in a child: the once-per-cause flags are per process). */
static void test_each_open_failure_cause_warned_once(void **state)
{
    (void)state;
    char path[] = "/tmp/nvipcfix-causes-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    pid_t pid = fork();
    if (pid == 0) {
        nvipcfix_log_open(NVIPCFIX_LOG_WARN, path);
        uint64_t b = fake_alloc(0x100000, 1 << 20);
        CUipcMemHandle h = export_ok(b + 8), unknown;
        CUdeviceptr p = open_ok(h), q = 0;
        for (int i = 0; i < 2; i++) {
            nvipcfix_open(&fix, f_open, &q, h, 0x8);
            f_get(&unknown, b);
            unknown.reserved[3] ^= 0x40; /* a block the driver does not know */
            nvipcfix_open(&fix, f_open, &q, unknown, 1);
        }
        nvipcfix_close(&fix, p);
        nvipcfix_log_close();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    int flags = count_lines(path, "flags 0x8 include bits the driver does not know");
    int unknown = count_lines(path, "the driver does not know this handle");
    int all = count_lines(path, "nvipcfix[");
    if (getenv("KEEP_CAUSES") == NULL)
        unlink(path);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(flags, 1);
    assert_int_equal(unknown, 1);
    assert_int_equal(all, 2);
}

static void test_forged_offset_refused(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 4096);
    /* a well-formed tag (check value right) whose offset is past the block,
     * as a forger or a bit flip before the check was computed would make */
    CUipcMemHandle h = export_ok(b);
    nvipcfix_tag_encode((unsigned char *)h.reserved, 8192);
    CUdeviceptr p = 0;
    assert_int_equal(nvipcfix_open(&fix, f_open, &p, h, 1), CUDA_ERROR_INVALID_VALUE);
    assert_true(p == 0);
    assert_int_equal(fake.opens, fake.closes); /* the real open was undone */
    assert_int_equal(nvipcfix_import_blocks(&fix.imports), 0);
    /* same while the block is already open */
    CUdeviceptr q = open_ok(export_ok(b + 1));
    assert_int_equal(nvipcfix_open(&fix, f_open, &p, h, 1), CUDA_ERROR_INVALID_VALUE);
    assert_int_equal(nvipcfix_close(&fix, q), CUDA_SUCCESS);
}

static void test_foreign_tail_passes_through(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    fake.tail = 1;
    CUipcMemHandle h;
    f_get(&h, b);
    CUdeviceptr p = 0;
    assert_int_equal(nvipcfix_open(&fix, f_open, &p, h, 1), CUDA_SUCCESS);
    assert_true(p == MAPPED_AT + b);
    assert_int_equal(nvipcfix_import_blocks(&fix.imports), 0); /* not tracked */
    assert_int_equal(nvipcfix_close(&fix, p), CUDA_SUCCESS);
    assert_int_equal(fake.closes, 1);
}

static void test_self_open(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle h = export_ok(b + 100);
    fake.exporter = 1;
    CUdeviceptr p = open_ok(h), q = open_ok(export_ok(b));
    assert_true(p == b + 100); /* the exporter's own pointer */
    assert_true(q == b);
    assert_int_equal(nvipcfix_close(&fix, p), CUDA_SUCCESS);
    assert_int_equal(nvipcfix_close(&fix, q), CUDA_SUCCESS);
    assert_int_equal(fake.closes, 0); /* nothing to close in the driver */
    /* once the block is freed and re-allocated, the handle is stale */
    fake_realloc_same_address(b);
    CUdeviceptr r = 0;
    assert_int_equal(nvipcfix_open(&fix, f_open, &r, h, 1), CUDA_ERROR_INVALID_CONTEXT);
}

static void test_self_open_disabled(void **state)
{
    (void)state;
    nvipcfix_fix_destroy(&fix);
    start(NVIPCFIX_MODE_FIX, 0);
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle h = export_ok(b + 100);
    fake.exporter = 1;
    CUdeviceptr p = 0;
    assert_int_equal(nvipcfix_open(&fix, f_open, &p, h, 1), CUDA_ERROR_INVALID_CONTEXT);
}

/* The exporter opens its own handle from two contexts: one pointer, and
 * each open needs and gets its own close. */
static void test_self_open_in_two_contexts(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle h = export_ok(b + 100);
    fake.exporter = 1;
    CUdeviceptr p = open_ok(h);
    fake.ctx = (CUcontext)&ctx_storage[1];
    CUdeviceptr q = open_ok(h);
    assert_true(p == b + 100 && q == p);
    assert_int_equal(nvipcfix_close(&fix, q), CUDA_SUCCESS);
    fake.ctx = (CUcontext)&ctx_storage[0];
    assert_int_equal(nvipcfix_close(&fix, p), CUDA_SUCCESS);
    assert_int_equal(nvipcfix_import_blocks(&fix.imports), 0);
    assert_int_equal(nvipcfix_import_pointers(&fix.imports), 0);
}

/* After fork() the child starts with empty tables, fresh locks and zero
 * counts, whatever the parent held (here: its slow lock, taken by a thread
 * of the parent that the child does not have). */
static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;

static void *hold_slow(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&fix.slow);
    pthread_mutex_lock(&gate);
    pthread_mutex_unlock(&gate);
    pthread_mutex_unlock(&fix.slow);
    return NULL;
}

static void test_forget_after_fork(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle h = export_ok(b + 8);
    CUdeviceptr p = open_ok(h);
    pthread_mutex_lock(&gate);
    pthread_t th;
    pthread_create(&th, NULL, hold_slow, NULL);
    while (pthread_mutex_trylock(&fix.slow) == 0) /* wait for the thread */
        pthread_mutex_unlock(&fix.slow);
    pid_t pid = fork();
    if (pid == 0) {
        test_alarm(20);
        nvipcfix_fix_forget_after_fork(&fix);
        int ok = nvipcfix_import_blocks(&fix.imports) == 0 &&
                 nvipcfix_export_cache_count(&fix.exports) == 0 &&
                 atomic_load(&fix.stats.opens) == 0 && pthread_mutex_trylock(&fix.slow) == 0;
        _exit(ok ? 0 : 1);
    }
    pthread_mutex_unlock(&gate);
    pthread_join(th, NULL);
    int status = 0;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(nvipcfix_close(&fix, p), CUDA_SUCCESS); /* the parent's, intact */
}

static void test_contexts_are_separate(void **state)
{
    (void)state;
    uint64_t b = fake_alloc(0x100000, 1 << 20);
    CUipcMemHandle h = export_ok(b + 1);
    CUdeviceptr p = open_ok(h);
    fake.ctx = (CUcontext)&ctx_storage[1];
    CUdeviceptr q = 0;
    /* another context opens for real (the fake, an old driver, refuses) */
    assert_int_equal(nvipcfix_open(&fix, f_open, &q, h, 1), CUDA_ERROR_ALREADY_MAPPED);
    fake.ctx = (CUcontext)&ctx_storage[0];
    assert_int_equal(nvipcfix_close(&fix, p), CUDA_SUCCESS);
}

/* ---- modes ------------------------------------------------------------------ */

static void test_off_and_audit_change_nothing(void **state)
{
    (void)state;
    for (int m = NVIPCFIX_MODE_AUDIT; m <= NVIPCFIX_MODE_OFF; m++) {
        nvipcfix_fix_destroy(&fix);
        start((enum nvipcfix_mode)m, 1);
        uint64_t b = fake_alloc(0x100000, 1 << 20);
        CUipcMemHandle native, h = export_ok(b + 4096);
        f_get(&native, b);
        assert_memory_equal(h.reserved, native.reserved, 64);
        CUdeviceptr p = open_ok(h);
        assert_true(p == MAPPED_AT + b); /* the bug, untouched */
        assert_int_equal(nvipcfix_close(&fix, p), CUDA_SUCCESS);
        assert_int_equal(fake.closes, 1);
    }
}

/* ---- threads ------------------------------------------------------------------ */

#define THREADS 16
#define ROUNDS 3000

static void *worker(void *arg)
{
    long id = (long)arg, bad = 0;
    for (long i = 0; i < ROUNDS; i++) {
        uint64_t base = i % 2 ? 0x100000 : 0x400000 + 0x100000 * (uint64_t)(id % 4);
        uint64_t off = (uint64_t)((i * 37 + id) % 4096);
        CUipcMemHandle h;
        CUdeviceptr p = 0;
        if (nvipcfix_export(&fix, &h, base + off) != CUDA_SUCCESS ||
            nvipcfix_open(&fix, f_open, &p, h, 1) != CUDA_SUCCESS || p != MAPPED_AT + base + off ||
            nvipcfix_close(&fix, p) != CUDA_SUCCESS)
            bad++;
    }
    return (void *)bad;
}

static void test_threads(void **state)
{
    (void)state;
    fake_alloc(0x100000, 1 << 20);
    for (int i = 0; i < 4; i++)
        fake_alloc(0x400000 + 0x100000 * (uint64_t)i, 1 << 20);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    long bad = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)r;
    }
    assert_int_equal(bad, 0);
    /* the fake is an old driver: a second real open of an open block fails,
     * so no failure above means no block was ever opened twice */
    assert_int_equal(fake.opens, fake.closes);
    for (int i = 0; i < fake.nblocks; i++)
        assert_int_equal(fake.blocks[i].refs, 0);
    assert_int_equal(nvipcfix_import_blocks(&fix.imports), 0);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup_fix, teardown)
    const struct CMUnitTest tests[] = {
        T(test_base_export_is_native),
        T(test_interior_export_is_tagged_and_cached),
        T(test_guarded_export_and_open),
        T(test_reallocated_block_gets_fresh_handle),
        T(test_memo_answers_as_a_fresh_export),
        T(test_reallocation_between_export_calls),
        T(test_threads_export_while_blocks_are_replaced),
        T(test_export_cache_sweeps_freed_blocks),
        T(test_driver_using_tail_exports_natively),
        T(test_unknown_pointer_goes_native),
        T(test_open_returns_pointer_and_counts),
        T(test_close_of_address_inside_held_block),
        T(test_bad_flags_refused_on_table_hit),
        T(test_each_open_failure_cause_warned_once),
        T(test_forged_offset_refused),
        T(test_foreign_tail_passes_through),
        T(test_self_open),
        T(test_self_open_disabled),
        T(test_self_open_in_two_contexts),
        T(test_forget_after_fork),
        T(test_contexts_are_separate),
        T(test_off_and_audit_change_nothing),
        T(test_threads),
    };
    return cmocka_run_group_tests_name("ipc_fix", tests, NULL, NULL);
}
