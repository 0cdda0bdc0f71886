#include "import_table.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "table_hash.h"

/* A block's pointers are slots i < cap of two arrays in one allocation:
 * keys[i], the pointer's offset + 1 (0: an empty slot), and counts[i], the
 * opens through it not yet closed. A key goes from 0 to an offset under the
 * shared lock (by compare-and-swap) and back only under the exclusive
 * lock. A count stops at UINT32_MAX (an open more is refused: NOMEM). */
#define SLOT_BYTES (sizeof(uint64_t) + sizeof(uint32_t))

struct nvipcfix_import_block {
    struct nvipcfix_import_block *next; /* in its hash bucket */
    const void *ctx;
    unsigned char handle[NVIPCFIX_HANDLE_BYTES];
    uint64_t base;
    uint64_t size;
    atomic_uint_fast64_t refs; /* sum of its pointers' counts */
    _Atomic uint64_t *keys;    /* cap of them; replaced only under the exclusive lock */
    _Atomic uint32_t *counts;  /* cap of them, after the keys in the same allocation */
    uint32_t cap, limit;       /* slots, and how many may be in use */
    atomic_uint used;          /* slots in use (or reserved by an insert) */
    atomic_int idle;           /* slots in use whose count is zero */
    unsigned hash;             /* of (ctx, handle) */
    unsigned char origin;      /* enum nvipcfix_import_origin */
};

struct nvipcfix_import_range {
    uint64_t base;
    struct nvipcfix_import_block *block;
};

void nvipcfix_import_table_init(struct nvipcfix_import_table *t)
{
    memset(t, 0, sizeof *t);
    pthread_rwlock_init(&t->lock, NULL);
}

/* ---- slots --------------------------------------------------------------- */

/* Where the probe for a key starts: the high half of the key times an odd
 * constant (every bit of an offset moves it, page multiples too), scaled
 * to cap. */
static uint32_t slot_start(uint64_t key, uint32_t cap)
{
    uint64_t h = (key * 0x9E3779B97F4A7C15ull) >> 32;
    return (uint32_t)((h * cap) >> 32);
}

/* The slots a block of that many pointers gets (half used; a quarter while
 * small, so that a block filled with pointers is copied fewer times), and
 * how many may be used: 3/4 at most, at least one slot free (a probe always
 * ends). */
static uint32_t cap_for(uint32_t n)
{
    return n < 32 ? 4 * n + 2 : 2 * n + 2;
}

static uint32_t limit_of(uint32_t cap)
{
    return cap - cap / 4 - 1;
}

/* Where key is in b's slots, or else the empty slot where its probe
 * ended. Caller holds the lock (either way). */
static uint32_t slot_probe(const struct nvipcfix_import_block *b, uint64_t key, int *found)
{
    uint32_t i = slot_start(key, b->cap);
    for (;;) {
        uint64_t k = atomic_load_explicit(&b->keys[i], memory_order_acquire);
        if (k == key || k == 0) {
            *found = k == key;
            return i;
        }
        if (++i == b->cap)
            i = 0;
    }
}

/* The slot holding key, or -1. Caller holds the lock (either way). */
static int64_t slot_find(const struct nvipcfix_import_block *b, uint64_t key)
{
    int found;
    uint32_t i = slot_probe(b, key, &found);
    return found ? (int64_t)i : -1;
}

/* Caller holds the lock (either way) and has reserved a slot in b->used:
 * the slot holding key, taken now (from i on, where its probe found an
 * empty slot) if no other thread took it first. *fresh: 1 if this call
 * filled it. */
static uint32_t slot_claim(struct nvipcfix_import_block *b, uint64_t key, uint32_t i, int *fresh)
{
    *fresh = 0;
    for (;;) {
        uint64_t k = 0;
        if (atomic_compare_exchange_strong(&b->keys[i], &k, key)) {
            *fresh = 1;
            return i;
        }
        if (k == key)
            return i;
        if (++i == b->cap)
            i = 0;
    }
}

/* Room for cap slots, empty; NULL out of memory. */
static _Atomic uint64_t *slots_alloc(uint32_t cap, _Atomic uint32_t **counts)
{
    _Atomic uint64_t *keys = calloc(cap, SLOT_BYTES);
    *counts = keys != NULL ? (_Atomic uint32_t *)(keys + cap) : NULL;
    return keys;
}

/* Caller holds the lock exclusively. Puts b's slots in a new array for
 * at least extra more, dropping its closed pointers if more than
 * NVIPCFIX_IMPORT_IDLE_MAX are kept. Returns 0, or -1 out of memory (b
 * unchanged). */
static int slots_rebuild(struct nvipcfix_import_table *t, struct nvipcfix_import_block *b,
                         uint32_t extra)
{
    /* Exclusive: used and idle are exact, and no other thread reads. */
    int drop_idle = atomic_load(&b->idle) > NVIPCFIX_IMPORT_IDLE_MAX;
    uint32_t used = atomic_load(&b->used);
    uint32_t keep = drop_idle ? used - (uint32_t)atomic_load(&b->idle) : used;
    if (keep > UINT32_MAX / 2 - 2) /* 2^31 pointers in one block */
        return -1;
    uint32_t cap = cap_for(keep + extra);
    _Atomic uint32_t *counts;
    _Atomic uint64_t *keys = slots_alloc(cap, &counts);
    if (keys == NULL)
        return -1;
    _Atomic uint64_t *old_keys = b->keys;
    _Atomic uint32_t *old_counts = b->counts;
    uint32_t old_cap = b->cap, idle = 0;
    b->keys = keys;
    b->counts = counts;
    b->cap = cap;
    b->limit = limit_of(cap);
    for (uint32_t i = 0; i < old_cap; i++) {
        uint64_t k = atomic_load_explicit(&old_keys[i], memory_order_relaxed);
        uint32_t n = atomic_load_explicit(&old_counts[i], memory_order_relaxed);
        if (k == 0 || (drop_idle && n == 0))
            continue;
        uint32_t j = slot_start(k, cap); /* keys are distinct: the first empty slot */
        while (atomic_load_explicit(&keys[j], memory_order_relaxed) != 0)
            j = j + 1 == cap ? 0 : j + 1;
        atomic_store_explicit(&keys[j], k, memory_order_relaxed);
        atomic_store_explicit(&counts[j], n, memory_order_relaxed);
        idle += n == 0;
    }
    free(old_keys);
    atomic_fetch_sub(&t->nptrs, used - keep);
    atomic_store(&b->used, keep);
    atomic_store(&b->idle, (int)idle);
    return 0;
}

/* Many closed pointers kept, and a quarter of the slots: worth dropping. */
static int slots_want_trim(const struct nvipcfix_import_block *b)
{
    int idle = atomic_load(&b->idle);
    return idle > NVIPCFIX_IMPORT_IDLE_MAX && (uint32_t)idle > b->cap / 4;
}

/* Caller holds the lock (either way). One more reference through slot i;
 * returns 0, or -1 if its count is at its maximum (nothing taken). */
static int slot_take(struct nvipcfix_import_block *b, uint32_t i)
{
    uint32_t n = atomic_load_explicit(&b->counts[i], memory_order_relaxed);
    do {
        if (n == UINT32_MAX)
            return -1;
    } while (!atomic_compare_exchange_weak(&b->counts[i], &n, n + 1));
    if (n == 0) /* a closed pointer, kept (or a new one) */
        atomic_fetch_sub(&b->idle, 1);
    atomic_fetch_add(&b->refs, 1);
    return 0;
}

/* Caller holds the lock shared. Takes one reference of b at key, adding its
 * slot if there is room. Returns 0; -1 when the slots are full (nothing
 * taken: the caller grows them under the exclusive lock); -2 when the
 * pointer's count is at its maximum. */
static int take_shared(struct nvipcfix_import_table *t, struct nvipcfix_import_block *b,
                       uint64_t key)
{
    int found;
    uint32_t i = slot_probe(b, key, &found);
    if (!found) {
        if (atomic_fetch_add(&b->used, 1) >= b->limit) {
            atomic_fetch_sub(&b->used, 1);
            return -1;
        }
        int fresh;
        i = slot_claim(b, key, i, &fresh);
        if (fresh) {
            atomic_fetch_add(&t->nptrs, 1);
            atomic_fetch_add(&b->idle, 1); /* a closed pointer, until taken below */
        } else {
            atomic_fetch_sub(&b->used, 1); /* another thread added it first */
        }
    }
    return slot_take(b, i) == 0 ? 0 : -2;
}

/* ---- blocks -------------------------------------------------------------- */

/* The end of a block's range; a block of unknown size covers its base. */
static uint64_t end_of(const struct nvipcfix_import_block *b)
{
    return b->base + (b->size != 0 ? b->size : 1);
}

/* Index of the first block in ranges whose base is above addr (a search
 * without a branch on the comparison: every close takes it). */
static size_t upper_bound(const struct nvipcfix_import_table *t, uint64_t addr)
{
    size_t n = t->nblocks, lo = 0;
    if (n == 0)
        return 0;
    while (n > 1) { /* the answer is in [lo, lo + n] */
        size_t half = n / 2;
        lo = t->ranges[lo + half].base <= addr ? lo + half : lo;
        n -= half;
    }
    return lo + (t->ranges[lo].base <= addr);
}

static struct nvipcfix_import_block *find_range(const struct nvipcfix_import_table *t,
                                                uint64_t addr)
{
    size_t i = upper_bound(t, addr);
    if (i == 0)
        return NULL;
    struct nvipcfix_import_block *b = t->ranges[i - 1].block;
    return addr < end_of(b) ? b : NULL;
}

struct lookup {
    const void *ctx;
    const unsigned char *handle;
    unsigned hash; /* computed before the lock is taken */
};

static void make_key(struct lookup *l, const void *ctx,
                     const unsigned char handle[NVIPCFIX_HANDLE_BYTES])
{
    l->ctx = ctx;
    l->handle = handle;
    uint64_t c = (uint64_t)(uintptr_t)ctx * 0x9E3779B97F4A7C15ull;
    l->hash = nvipcfix_table_hash(handle, NVIPCFIX_HANDLE_BYTES) ^ (unsigned)(c >> 32);
}

static struct nvipcfix_import_block *find_block(const struct nvipcfix_import_table *t,
                                                const struct lookup *l)
{
    if (t->nbuckets == 0)
        return NULL;
    struct nvipcfix_import_block *b = t->buckets[l->hash & (t->nbuckets - 1)];
    for (; b != NULL; b = b->next)
        if (b->hash == l->hash && b->ctx == l->ctx &&
            memcmp(b->handle, l->handle, NVIPCFIX_HANDLE_BYTES) == 0)
            return b;
    return NULL;
}

/* Caller holds the lock exclusively. */
static void remove_block(struct nvipcfix_import_table *t, struct nvipcfix_import_block *b)
{
    size_t i = upper_bound(t, b->base);
    while (i > 0 && t->ranges[i - 1].block != b) /* blocks of one base: at most a few */
        i--;
    if (i > 0)
        memmove(&t->ranges[i - 1], &t->ranges[i], (t->nblocks - i) * sizeof t->ranges[0]);
    struct nvipcfix_import_block **pp = &t->buckets[b->hash & (t->nbuckets - 1)];
    while (*pp != b)
        pp = &(*pp)->next;
    *pp = b->next;
    atomic_fetch_sub(&t->nptrs, atomic_load(&b->used));
    free(b->keys);
    free(b);
    t->nblocks--;
}

void nvipcfix_import_table_destroy(struct nvipcfix_import_table *t)
{
    pthread_rwlock_wrlock(&t->lock);
    while (t->nblocks > 0)
        remove_block(t, t->ranges[t->nblocks - 1].block);
    free(t->ranges);
    free(t->buckets);
    t->ranges = NULL;
    t->buckets = NULL;
    t->nbuckets = 0;
    pthread_rwlock_unlock(&t->lock);
    pthread_rwlock_destroy(&t->lock);
}

/* A child's copy of its parent's table, left behind by forget() but still
 * reachable, so that leak checkers do not report it. */
static void *volatile left_behind[2];

void nvipcfix_import_table_forget(struct nvipcfix_import_table *t)
{
    left_behind[0] = t->buckets;
    left_behind[1] = t->ranges;
    memset(t, 0, sizeof *t);
    pthread_rwlock_init(&t->lock, NULL);
}

/* Caller holds the lock exclusively. Takes one reference of b through
 * base + offset, growing its slots if they are full. */
static enum nvipcfix_import_result take(struct nvipcfix_import_table *t,
                                        struct nvipcfix_import_block *b, uint64_t offset,
                                        uint64_t *ptr)
{
    if (offset != 0 && offset >= b->size)
        return NVIPCFIX_IMPORT_BAD_OFFSET;
    if (slot_find(b, offset + 1) < 0 && atomic_load(&b->used) >= b->limit &&
        slots_rebuild(t, b, 1) != 0)
        return NVIPCFIX_IMPORT_NOMEM;
    if (take_shared(t, b, offset + 1) != 0) /* room made above: a count at its maximum */
        return NVIPCFIX_IMPORT_NOMEM;
    *ptr = b->base + offset;
    return NVIPCFIX_IMPORT_HIT;
}

enum nvipcfix_import_result
nvipcfix_import_acquire(struct nvipcfix_import_table *t, const void *ctx,
                        const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t offset,
                        uint64_t *ptr)
{
    struct lookup l;
    struct nvipcfix_import_block *b;
    enum nvipcfix_import_result r = NVIPCFIX_IMPORT_MISS;
    make_key(&l, ctx, handle);

    /* Shared: the block is known, and the pointer too or a slot is free. */
    int full = 0;
    pthread_rwlock_rdlock(&t->lock);
    b = find_block(t, &l);
    if (b != NULL) {
        if (offset != 0 && offset >= b->size) {
            r = NVIPCFIX_IMPORT_BAD_OFFSET;
        } else {
            int taken = take_shared(t, b, offset + 1);
            if (taken == 0) {
                *ptr = b->base + offset;
                r = NVIPCFIX_IMPORT_HIT;
            } else {
                r = NVIPCFIX_IMPORT_NOMEM;
                full = taken == -1;
            }
        }
    }
    pthread_rwlock_unlock(&t->lock);
    if (!full)
        return r;

    /* The block's slots are full: grown, exclusive. The block may have been
     * closed meanwhile; then it is a miss. */
    pthread_rwlock_wrlock(&t->lock);
    b = find_block(t, &l);
    r = b != NULL ? take(t, b, offset, ptr) : NVIPCFIX_IMPORT_MISS;
    pthread_rwlock_unlock(&t->lock);
    return r;
}

/* Caller holds the lock exclusively. Drops every block overlapping
 * [base, end), then puts b in the sorted range index (room reserved). */
static void index_block(struct nvipcfix_import_table *t, struct nvipcfix_import_block *b)
{
    for (;;) {
        size_t i = upper_bound(t, end_of(b) - 1);
        if (i == 0 || end_of(t->ranges[i - 1].block) <= b->base)
            break;
        remove_block(t, t->ranges[i - 1].block);
        t->stale++;
    }
    size_t i = upper_bound(t, b->base);
    memmove(&t->ranges[i + 1], &t->ranges[i], (t->nblocks - i) * sizeof t->ranges[0]);
    t->ranges[i].base = b->base;
    t->ranges[i].block = b;
}

/* Caller holds the lock exclusively: room for one more block in ranges and
 * in the buckets (one bucket a block at most). */
static int reserve_block(struct nvipcfix_import_table *t)
{
    if (t->nblocks >= t->ranges_cap) {
        size_t cap = t->ranges_cap ? 2 * t->ranges_cap : 64;
        struct nvipcfix_import_range *n = realloc(t->ranges, cap * sizeof *n);
        if (n == NULL)
            return -1;
        t->ranges = n;
        t->ranges_cap = cap;
    }
    if (t->nblocks >= t->nbuckets) {
        size_t nb = t->nbuckets ? 2 * t->nbuckets : 64;
        struct nvipcfix_import_block **n = calloc(nb, sizeof *n);
        if (n == NULL)
            return -1;
        for (size_t i = 0; i < t->nbuckets; i++)
            for (struct nvipcfix_import_block *b = t->buckets[i], *next; b != NULL; b = next) {
                next = b->next;
                b->next = n[b->hash & (nb - 1)];
                n[b->hash & (nb - 1)] = b;
            }
        free(t->buckets);
        t->buckets = n;
        t->nbuckets = nb;
    }
    return 0;
}

enum nvipcfix_import_result
nvipcfix_import_insert(struct nvipcfix_import_table *t, const void *ctx,
                       const unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t base,
                       uint64_t size, int origin, uint64_t offset, uint64_t *ptr, int *existed)
{
    struct lookup l;
    struct nvipcfix_import_block *b, *fresh;
    enum nvipcfix_import_result r;
    make_key(&l, ctx, handle);
    *existed = 0;
    if (offset != 0 && offset >= size)
        return NVIPCFIX_IMPORT_BAD_OFFSET;
    fresh = calloc(1, sizeof *fresh);
    _Atomic uint32_t *counts;
    _Atomic uint64_t *keys = slots_alloc(2, &counts); /* the first pointer's */
    if (fresh == NULL || keys == NULL) {
        free(fresh);
        free(keys);
        return NVIPCFIX_IMPORT_NOMEM;
    }
    fresh->ctx = l.ctx;
    memcpy(fresh->handle, handle, NVIPCFIX_HANDLE_BYTES);
    fresh->hash = l.hash;
    fresh->base = base;
    fresh->size = size;
    fresh->origin = (unsigned char)origin;
    fresh->keys = keys;
    fresh->counts = counts;
    fresh->cap = 2;
    fresh->limit = limit_of(fresh->cap);

    pthread_rwlock_wrlock(&t->lock);
    b = find_block(t, &l);
    if (b != NULL) {
        *existed = 1;
        r = take(t, b, offset, ptr);
    } else if (reserve_block(t) != 0) {
        r = NVIPCFIX_IMPORT_NOMEM;
    } else {
        index_block(t, fresh);
        fresh->next = t->buckets[l.hash & (t->nbuckets - 1)];
        t->buckets[l.hash & (t->nbuckets - 1)] = fresh;
        t->nblocks++;
        r = take(t, fresh, offset, ptr); /* offset checked above; a slot is free */
        fresh = NULL;
    }
    pthread_rwlock_unlock(&t->lock);
    if (fresh != NULL) {
        free(fresh->keys);
        free(fresh);
    }
    return r;
}

/* Caller holds the lock shared. Drops one reference through slot i unless
 * it would be its block's last; returns 1 if it did. A reference through i
 * must exist (count above zero); a count that reaches zero keeps the slot
 * (idle), for a quick re-open. */
static int release_shared(struct nvipcfix_import_block *b, uint32_t i)
{
    uint32_t k = atomic_load(&b->counts[i]);
    do {
        if (k == 0)
            return 0; /* closed more often than opened: the exclusive path decides */
    } while (!atomic_compare_exchange_weak(&b->counts[i], &k, k - 1));
    if (k == 1)
        atomic_fetch_add(&b->idle, 1);
    uint_fast64_t m = atomic_load(&b->refs);
    do {
        if (m <= 1) { /* the block's last: undo, for the exclusive path */
            if (atomic_fetch_add(&b->counts[i], 1) == 0)
                atomic_fetch_sub(&b->idle, 1);
            return 0;
        }
    } while (!atomic_compare_exchange_weak(&b->refs, &m, m - 1));
    return 1;
}

/* The slot of addr in b if nvipcfix returned it, else -1. */
static int64_t slot_of(const struct nvipcfix_import_block *b, uint64_t addr)
{
    return slot_find(b, addr - b->base + 1);
}

enum nvipcfix_release_result
nvipcfix_import_release(struct nvipcfix_import_table *t, uint64_t addr, int allow_last,
                        struct nvipcfix_released_block *out)
{
    int64_t s;
    struct nvipcfix_import_block *b;
    enum nvipcfix_release_result r;
    if (!allow_last) {
        /* Shared: a returned pointer's reference, not the block's last. */
        int trim = 0;
        pthread_rwlock_rdlock(&t->lock);
        b = find_range(t, addr);
        s = b != NULL ? slot_of(b, addr) : -1;
        r = b == NULL                                   ? NVIPCFIX_RELEASE_NOT_OURS
            : s >= 0 && release_shared(b, (uint32_t)s) ? NVIPCFIX_RELEASE_DONE
                                                        : NVIPCFIX_RELEASE_WOULD_BE_LAST;
        if (r == NVIPCFIX_RELEASE_DONE)
            trim = slots_want_trim(b);
        pthread_rwlock_unlock(&t->lock);
        if (trim) {
            /* Many closed pointers: dropped, exclusive (the block may be
             * gone, or trimmed by another thread, meanwhile). */
            pthread_rwlock_wrlock(&t->lock);
            b = find_range(t, addr);
            if (b != NULL && slots_want_trim(b))
                slots_rebuild(t, b, 0); /* out of memory: kept as they are */
            pthread_rwlock_unlock(&t->lock);
        }
        if (r != NVIPCFIX_RELEASE_WOULD_BE_LAST)
            return r;
    }
    /* Exclusive: no shared operation runs; a block's count reaches zero,
     * and blocks are freed, only here. */
    pthread_rwlock_wrlock(&t->lock);
    b = find_range(t, addr);
    s = b != NULL ? slot_of(b, addr) : -1;
    if (b == NULL) {
        r = NVIPCFIX_RELEASE_NOT_OURS;
    } else if (!allow_last && atomic_load(&b->refs) == 1) {
        r = NVIPCFIX_RELEASE_WOULD_BE_LAST;
    } else {
        /* An address nvipcfix did not return, or a pointer closed more often
         * than opened: one reference of the block, charged to a pointer that
         * has one. */
        if (s < 0 || atomic_load(&b->counts[s]) == 0)
            for (s = 0; s < b->cap && (b->keys[s] == 0 || b->counts[s] == 0); s++)
                ;
        if (s == b->cap) { /* cannot be: a block's count is its pointers' sum */
            pthread_rwlock_unlock(&t->lock);
            return NVIPCFIX_RELEASE_NOT_OURS;
        }
        if (atomic_fetch_sub(&b->counts[s], 1) == 1)
            atomic_fetch_add(&b->idle, 1);
        if (atomic_fetch_sub(&b->refs, 1) == 1) {
            out->base = b->base;
            out->size = b->size;
            out->origin = b->origin;
            remove_block(t, b);
            r = NVIPCFIX_RELEASE_LAST;
        } else {
            if (slots_want_trim(b))
                slots_rebuild(t, b, 0);
            r = NVIPCFIX_RELEASE_DONE;
        }
    }
    pthread_rwlock_unlock(&t->lock);
    return r;
}

size_t nvipcfix_import_blocks(struct nvipcfix_import_table *t)
{
    pthread_rwlock_rdlock(&t->lock);
    size_t n = t->nblocks;
    pthread_rwlock_unlock(&t->lock);
    return n;
}

size_t nvipcfix_import_pointers(struct nvipcfix_import_table *t)
{
    pthread_rwlock_rdlock(&t->lock);
    size_t n = atomic_load(&t->nptrs);
    pthread_rwlock_unlock(&t->lock);
    return n;
}

void nvipcfix_import_usage(struct nvipcfix_import_table *t, size_t *blocks, uint64_t *bytes)
{
    *blocks = 0;
    *bytes = 0;
    pthread_rwlock_rdlock(&t->lock);
    for (size_t i = 0; i < t->nblocks; i++) {
        const struct nvipcfix_import_block *b = t->ranges[i].block;
        if (b->origin != NVIPCFIX_ORIGIN_SELF) { /* mappings; the exporter's own blocks are not */
            (*blocks)++;
            *bytes += b->size;
        }
    }
    pthread_rwlock_unlock(&t->lock);
}

uint64_t nvipcfix_import_refs(struct nvipcfix_import_table *t, uint64_t addr)
{
    uint64_t refs = 0;
    pthread_rwlock_rdlock(&t->lock);
    struct nvipcfix_import_block *b = find_range(t, addr);
    if (b != NULL)
        refs = atomic_load(&b->refs);
    pthread_rwlock_unlock(&t->lock);
    return refs;
}

uint64_t nvipcfix_import_pointer_refs(struct nvipcfix_import_table *t, uint64_t addr)
{
    uint64_t refs = 0;
    pthread_rwlock_rdlock(&t->lock);
    struct nvipcfix_import_block *b = find_range(t, addr);
    int64_t s = b != NULL ? slot_of(b, addr) : -1;
    if (s >= 0)
        refs = atomic_load(&b->counts[s]);
    pthread_rwlock_unlock(&t->lock);
    return refs;
}
