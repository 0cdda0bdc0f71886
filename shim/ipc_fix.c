#include "ipc_fix.h"

#include <stdio.h>
#include <string.h>

#include "handle_tag.h"
#include "log.h"
#include "open_errors.h"

typedef unsigned long long ull;

static int block_is_live(void *arg, uint64_t base, uint64_t buffer_id);

void nvipcfix_fix_init(struct nvipcfix_fix *fix, const struct nvipcfix_config *config,
                       const struct nvipcfix_driver *driver)
{
    memset(fix, 0, sizeof *fix);
    fix->config = *config;
    fix->driver = driver;
    nvipcfix_export_cache_init(&fix->exports, block_is_live, fix);
    nvipcfix_export_memo_init(&fix->memo);
    fix->stats.quiet = !config->stats;
    nvipcfix_import_table_init(&fix->imports);
    pthread_mutex_init(&fix->slow, NULL);
    nvipcfix_audit_sites_init(&fix->audit);
    nvipcfix_vmm_init(&fix->vmm, driver);
    nvipcfix_vmm_configure(&fix->vmm, config->vmm_timeout_ms, config->vmm_socket_dir);
}

void nvipcfix_fix_destroy(struct nvipcfix_fix *fix)
{
    nvipcfix_vmm_destroy(&fix->vmm);
    nvipcfix_export_cache_destroy(&fix->exports);
    nvipcfix_export_memo_destroy(&fix->memo);
    nvipcfix_import_table_destroy(&fix->imports);
    pthread_mutex_destroy(&fix->slow);
}

void nvipcfix_fix_stop(struct nvipcfix_fix *fix)
{
    nvipcfix_vmm_stop(&fix->vmm);
}

static CUresult counted(struct nvipcfix_fix *fix, CUresult r)
{
    if (r != CUDA_SUCCESS)
        NVIPCFIX_STAT_ADD(&fix->stats, errors);
    return r;
}

/* Finds the allocation that contains ptr. buffer_id is 0 when the driver
 * cannot tell it, and such a block must not be cached. Returns 0, or -1 when
 * ptr is not in any allocation or the driver could not say. */
static int find_block(const struct nvipcfix_driver *d, CUdeviceptr ptr,
                      struct nvipcfix_export_block *blk)
{
    CUresult r = CUDA_ERROR_NOT_SUPPORTED;
    memset(blk, 0, sizeof *blk);
    if (d->pointer_get_attributes != NULL) {
        CUdeviceptr start = 0;
        size_t size = 0;
        ull id = 0;
        CUpointer_attribute attrs[3] = {CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                        CU_POINTER_ATTRIBUTE_RANGE_SIZE,
                                        CU_POINTER_ATTRIBUTE_BUFFER_ID};
        void *data[3] = {&start, &size, &id};
        /* Unknown pointers succeed with zeroed values: check the range. */
        r = d->pointer_get_attributes(3, attrs, data, ptr);
        if (r == CUDA_SUCCESS && start != 0 && ptr >= start && ptr - start < size) {
            blk->base = start;
            blk->size = size;
            blk->buffer_id = id;
            return 0;
        }
    } else if (d->mem_get_address_range != NULL) {
        CUdeviceptr base = 0;
        size_t size = 0;
        r = d->mem_get_address_range(&base, &size, ptr);
        if (r == CUDA_SUCCESS && base != 0 && ptr >= base && ptr - base < size) {
            blk->base = base;
            blk->size = size;
            return 0;
        }
        if (r == CUDA_ERROR_NOT_FOUND)
            r = CUDA_SUCCESS; /* a pointer outside device memory, no failure */
    }
    if (r != CUDA_SUCCESS)
        NVIPCFIX_WARN_ONCE("the driver cannot tell which allocation a pointer is in (error "
                           "%d); such pointers are exported natively",
                           (int)r);
    return -1;
}

/* For the export cache: is the block exported at base still the one with
 * this buffer id? */
static int block_is_live(void *arg, uint64_t base, uint64_t buffer_id)
{
    struct nvipcfix_fix *fix = arg;
    struct nvipcfix_export_block now;
    return find_block(fix->driver, base, &now) == 0 && now.base == base &&
           now.buffer_id == buffer_id;
}

static CUresult native_export(struct nvipcfix_fix *fix, CUipcMemHandle *handle,
                              CUdeviceptr ptr)
{
    return counted(fix, fix->driver->ipc_get_mem_handle(handle, ptr));
}

static void warn_vmm_export(enum nvipcfix_vmm_error e, const char *detail)
{
    static atomic_flag said[NVIPCFIX_VMM_ERROR_COUNT];
    static const char *const why[NVIPCFIX_VMM_ERROR_COUNT] = {
        [NVIPCFIX_VMM_NOT_SHAREABLE] = "this VMM memory was allocated without POSIX file "
                                       "descriptor handles (CU_MEM_HANDLE_TYPE_POSIX_FILE_"
                                       "DESCRIPTOR), so it cannot be shared",
        [NVIPCFIX_VMM_NO_DRIVER] = "this driver lacks the VMM calls nvipcfix needs",
        [NVIPCFIX_VMM_NO_SERVER] = "the descriptor server (a Unix socket) could not start",
        [NVIPCFIX_VMM_NOMEM] = "out of memory",
    };
    if (why[e] != NULL && !atomic_flag_test_and_set(&said[e]))
        nvipcfix_log(NVIPCFIX_LOG_WARN,
                     "cannot export VMM memory (cuMemCreate, PyTorch expandable segments) "
                     "through legacy IPC: %s%s%s; the driver's error stands",
                     why[e], detail[0] != '\0' ? ": " : "", detail);
}

/* The driver refused a legacy handle: VMM memory gets a ticket when
 * NVIPCFIX_VMM=1, else one hint that it could. */
static CUresult export_vmm(struct nvipcfix_fix *fix, CUipcMemHandle *handle, CUdeviceptr ptr,
                           CUresult native)
{
    static atomic_flag hinted;
    const struct nvipcfix_driver *d = fix->driver;
    if (!fix->config.vmm) {
        CUmemGenericAllocationHandle h;
        if (d->mem_retain_allocation_handle != NULL && d->mem_release != NULL &&
            d->mem_retain_allocation_handle(&h, (void *)(uintptr_t)ptr) == CUDA_SUCCESS) {
            d->mem_release(h);
            if (!atomic_flag_test_and_set(&hinted))
                nvipcfix_log(NVIPCFIX_LOG_WARN,
                             "cudaIpcGetMemHandle on VMM memory (cuMemCreate, PyTorch "
                             "expandable segments) fails in the driver; NVIPCFIX_VMM=1 makes "
                             "nvipcfix share it (docs/usage.md)");
        }
        return native;
    }
    CUcontext ctx = NULL;
    if (d->ctx_get_current == NULL || d->ctx_get_current(&ctx) != CUDA_SUCCESS)
        ctx = NULL;
    unsigned char ticket[NVIPCFIX_TICKET_BYTES];
    enum nvipcfix_vmm_error e = nvipcfix_vmm_export(&fix->vmm, ctx, ptr, ticket);
    if (e != NVIPCFIX_VMM_OK) {
        char why[sizeof fix->vmm.server_why] = "";
        if (e == NVIPCFIX_VMM_NO_SERVER)
            nvipcfix_vmm_server_why(&fix->vmm, why, sizeof why);
        warn_vmm_export(e, why);
        return native;
    }
    memcpy(handle->reserved, ticket, sizeof ticket);
    NVIPCFIX_STAT_ADD(&fix->stats, vmm_exports);
    NVIPCFIX_DEBUG("export of VMM memory 0x%llx: ticket", (ull)ptr);
    return CUDA_SUCCESS;
}

/* How many times the export path asks the driver again when the block of a
 * pointer changed between its questions (freed and re-allocated by another
 * thread). */
#define EXPORT_TRIES 4

/* The block that `handle`, the driver's handle of ptr just taken, names:
 * returns 0 with its base and size, or -1 when it cannot be told (then ptr
 * is exported natively). On the slow path below `handle` may be replaced by
 * the handle of the block that holds ptr now.
 *
 * Hot path: the handle's bytes in the export cache give the base (no lock,
 * no shared write). A given handle always names the same base, so a hit is
 * never stale: the handle was taken for ptr just now, so the block it names
 * held ptr then.
 *
 * Miss: the driver's range query for ptr (base B, buffer id I), the
 * driver's handle of B, and the range query again. Only if the buffer id is
 * I both times was that one block at B all along, so the handle of B names
 * it, and only then is it recorded; a free and a re-allocation in between,
 * at the same address, another size, from another thread, means asking
 * again. The handle tagged is the handle of B: the same bytes as the
 * pointer's own handle on every driver measured, and if the block changed
 * since the pointer's handle was taken, that of the block holding ptr now.
 * A driver that cannot tell buffer ids gets what nvipcfix did before the
 * cache (the handle of B, nothing recorded), with the range checked
 * unchanged around it. */
static int resolve_miss(struct nvipcfix_fix *fix, CUdeviceptr ptr,
                        unsigned char handle[NVIPCFIX_HANDLE_BYTES], uint64_t *base,
                        uint64_t *size, uint64_t *check);

/* *check: the tag check's state after the handle's bytes 0-55 (kept in the
 * cache, so that a tag costs the offset's part only). */
static inline __attribute__((always_inline)) int
resolve_block(struct nvipcfix_fix *fix, CUdeviceptr ptr, unsigned char handle[NVIPCFIX_HANDLE_BYTES],
              uint64_t *base, uint64_t *size, uint64_t *check)
{
    if (__builtin_expect(
            nvipcfix_export_cache_fast_find(&fix->exports, handle, base, size, check), 1) &&
        ptr - *base < *size && ptr >= *base)
        return 0;
    return resolve_miss(fix, ptr, handle, base, size, check);
}

/* Kept out of line: the hit path above stays small. The complete record
 * first (a slot of the fast table may have been replaced), then the
 * driver. */
__attribute__((noinline)) static int resolve_miss(struct nvipcfix_fix *fix, CUdeviceptr ptr,
                                                  unsigned char handle[NVIPCFIX_HANDLE_BYTES],
                                                  uint64_t *base, uint64_t *size,
                                                  uint64_t *check)
{
    const struct nvipcfix_driver *d = fix->driver;
    if (nvipcfix_export_cache_base_of(&fix->exports, handle, base, size, check) &&
        ptr >= *base && ptr - *base < *size)
        return 0;
    for (int i = 0; i < EXPORT_TRIES; i++) {
        struct nvipcfix_export_block blk, again;
        CUipcMemHandle h;
        if (find_block(d, ptr, &blk) != 0) {
            NVIPCFIX_DEBUG("export of 0x%llx: no allocation found; native call", (ull)ptr);
            return -1;
        }
        if (d->ipc_get_mem_handle(&h, blk.base) != CUDA_SUCCESS ||
            find_block(d, ptr, &again) != 0 || again.base != blk.base ||
            again.size != blk.size || again.buffer_id != blk.buffer_id)
            continue; /* the block changed meanwhile: ask again */
        memcpy(blk.handle, h.reserved, NVIPCFIX_HANDLE_BYTES);
        if (blk.buffer_id != 0 && nvipcfix_export_cache_put(&fix->exports, &blk) != 0)
            NVIPCFIX_WARN_ONCE("out of memory for the export cache; blocks are looked up in "
                               "the driver each time");
        memcpy(handle, blk.handle, NVIPCFIX_HANDLE_BYTES);
        *base = blk.base;
        *size = blk.size;
        *check = nvipcfix_tag_check_head(handle);
        return 0;
    }
    NVIPCFIX_WARN_ONCE("the allocation holding an exported pointer changed at every look "
                       "(freed and re-allocated by another thread while it was exported?); "
                       "such exports are native (receivers get the block base)");
    return -1;
}

/* A VMM mapping exported before, as it was: its ticket again, a look-up
 * (before the legacy path, whose driver call fails for VMM memory). Costs
 * nothing until a VMM export was made. */
static int export_vmm_again(struct nvipcfix_fix *fix, CUipcMemHandle *handle, CUdeviceptr ptr)
{
    CUcontext ctx = NULL;
    unsigned char ticket[NVIPCFIX_TICKET_BYTES];
    if (atomic_load(&fix->vmm.again_count) == 0)
        return 0;
    if (fix->driver->ctx_get_current == NULL || fix->driver->ctx_get_current(&ctx) != CUDA_SUCCESS)
        ctx = NULL;
    if (nvipcfix_vmm_export_again(&fix->vmm, ctx, ptr, ticket) != NVIPCFIX_VMM_OK)
        return 0;
    memcpy(handle->reserved, ticket, sizeof ticket);
    NVIPCFIX_STAT_ADD(&fix->stats, vmm_exports);
    return 1;
}

static CUresult export_audit(struct nvipcfix_fix *fix, CUipcMemHandle *handle, CUdeviceptr ptr);
static inline __attribute__((always_inline)) CUresult
export_fixed(struct nvipcfix_fix *fix, CUipcMemHandle *handle, CUdeviceptr ptr);

/* The export in other modes than fix, or with VMM exports on, or when the
 * driver refused (out of line: the common case below stays small). */
__attribute__((noinline)) static CUresult export_other(struct nvipcfix_fix *fix,
                                                      CUipcMemHandle *handle, CUdeviceptr ptr,
                                                      CUresult fixed)
{
    if (fix->config.mode == NVIPCFIX_MODE_OFF || handle == NULL)
        return native_export(fix, handle, ptr);
    if (fix->config.mode == NVIPCFIX_MODE_AUDIT)
        return export_audit(fix, handle, ptr);
    if (fixed == CUDA_SUCCESS) { /* not tried yet: VMM exports are on */
        if (export_vmm_again(fix, handle, ptr))
            return CUDA_SUCCESS;
        fixed = export_fixed(fix, handle, ptr);
    }
    if (fixed == CUDA_ERROR_INVALID_VALUE)
        fixed = export_vmm(fix, handle, ptr, fixed);
    return counted(fix, fixed);
}

CUresult nvipcfix_export(struct nvipcfix_fix *fix, CUipcMemHandle *handle, CUdeviceptr ptr)
{
    NVIPCFIX_STAT_ADD(&fix->stats, exports);
    if (__builtin_expect(fix->config.mode != NVIPCFIX_MODE_FIX || handle == NULL ||
                             fix->config.vmm, 0))
        return export_other(fix, handle, ptr, CUDA_SUCCESS);
    CUresult r = export_fixed(fix, handle, ptr);
    if (__builtin_expect(r != CUDA_SUCCESS, 0))
        return export_other(fix, handle, ptr, r);
    return r;
}

/* Audit mode: the native call, and a record of interior exports. */
static CUresult export_audit(struct nvipcfix_fix *fix, CUipcMemHandle *handle, CUdeviceptr ptr)
{
    struct nvipcfix_export_block blk;
    uint64_t check;
    CUresult r = native_export(fix, handle, ptr);
    memcpy(blk.handle, handle->reserved, sizeof blk.handle); /* *handle stays native */
    if (r != CUDA_SUCCESS ||
        resolve_block(fix, ptr, blk.handle, &blk.base, &blk.size, &check) != 0)
        return r;
    uint64_t offset = ptr - blk.base;
    if (offset != 0) {
        char where[NVIPCFIX_AUDIT_SITE_LEN] = "";
        if (fix->describe_caller != NULL)
            fix->describe_caller(where, sizeof where);
        nvipcfix_audit_sites_add(&fix->audit, where);
        NVIPCFIX_STAT_ADD(&fix->stats, exports_tagged); /* "with offset" */
        nvipcfix_log(NVIPCFIX_LOG_INFO,
                     "audit: export of 0x%llx is %llu bytes into block 0x%llx "
                     "(size %llu): a receiver will get the block base, not this pointer; "
                     "called from %s",
                     (ull)ptr, (ull)offset, (ull)blk.base, (ull)blk.size,
                     where[0] ? where : "(not known)");
    } else
        NVIPCFIX_DEBUG("audit: export of block base 0x%llx (size %llu)", (ull)ptr,
                       (ull)blk.size);
    return r;
}

/* Why a tag could not be written (nvipcfix_tag_encode_from refused):
 * said once per cause; the handle stays the driver's. */
__attribute__((noinline, cold)) static void warn_untagged(const unsigned char *bytes,
                                                         uint64_t offset)
{
    if (!nvipcfix_tail_is_zero(bytes))
        NVIPCFIX_WARN_ONCE("this driver writes bytes 56-63 of IPC handles, where nvipcfix "
                           "carries offsets; interior pointers are exported natively "
                           "(receivers will get the block base)");
    else if (offset > NVIPCFIX_MAX_OFFSET)
        NVIPCFIX_WARN_ONCE("offset %llu is too large to carry in a handle; exported natively",
                           (ull)offset);
}

__attribute__((noinline, cold)) static void warn_unguarded(void)
{
    NVIPCFIX_WARN_ONCE("this driver's IPC handles do not have the layout nvipcfix knows; "
                       "tags are plain, so a receiver without nvipcfix would open the "
                       "block base instead of failing");
}

/* The answer to an export the memo did not know: the block looked up, the
 * tag written; the answer recorded in the memo. */
static CUresult export_resolved(struct nvipcfix_fix *fix, unsigned char *bytes,
                                CUdeviceptr ptr);

/* Fix mode: the driver's handle of ptr, which is its block's; tagged with
 * the offset when ptr is not the block's base. The memo is asked before
 * the driver's call and answers after it when the driver's handle is the
 * one it remembers. Errors are not counted here (the caller counts what it
 * returns). */
static inline __attribute__((always_inline)) CUresult
export_fixed(struct nvipcfix_fix *fix, CUipcMemHandle *handle, CUdeviceptr ptr)
{
    unsigned char *bytes = (unsigned char *)handle->reserved;
    struct nvipcfix_export_memo_probe probe;
    uint64_t tail;
    nvipcfix_export_memo_probe(&fix->memo, ptr, &probe);
    CUresult r = fix->driver->ipc_get_mem_handle(handle, ptr);
    if (r != CUDA_SUCCESS)
        return r; /* the driver's error */
    if (__builtin_expect(nvipcfix_export_memo_apply(&probe, bytes, &tail), 1)) {
        if (tail != 0)
            NVIPCFIX_STAT_ADD(&fix->stats, exports_tagged);
        NVIPCFIX_DEBUG("export of 0x%llx: the same allocation as at its last export, the "
                       "same answer (%s, offset %llu)", (ull)ptr,
                       tail != 0 ? "tagged" : "native handle",
                       (ull)(nvipcfix_le64(tail) & NVIPCFIX_MAX_OFFSET));
        return CUDA_SUCCESS;
    }
    return export_resolved(fix, bytes, ptr);
}

/* The tag of an interior pointer written into its block's handle (bytes,
 * the driver's), or the handle left as it is, with one warning, where no
 * tag can be written. */
static void tag_interior(struct nvipcfix_fix *fix, unsigned char *bytes, CUdeviceptr ptr,
                         uint64_t base, uint64_t offset, uint64_t check)
{
    /* A guarded tag, which a driver without nvipcfix refuses, where the
     * handle has the layout measured on real drivers; else a plain one. */
    enum nvipcfix_tag_style style = NVIPCFIX_TAG_PLAIN;
    if (!fix->config.plain_tags) {
        if (__builtin_expect(nvipcfix_tag_can_guard(bytes), 1))
            style = NVIPCFIX_TAG_GUARDED;
        else
            warn_unguarded();
    }
    /* Refused, handle unchanged, when the driver wrote the tail or the
     * offset does not fit. */
    if (nvipcfix_tag_encode_from(bytes, check, offset, style) != 0) {
        warn_untagged(bytes, offset);
        return;
    }
    NVIPCFIX_STAT_ADD(&fix->stats, exports_tagged);
    NVIPCFIX_DEBUG("export of 0x%llx: block 0x%llx + %llu, tagged", (ull)ptr, (ull)base,
                   (ull)offset);
}

__attribute__((noinline)) static CUresult export_resolved(struct nvipcfix_fix *fix,
                                                         unsigned char *bytes, CUdeviceptr ptr)
{
    uint64_t base, size, check;
    unsigned char driver[NVIPCFIX_HANDLE_BYTES];
    if (resolve_block(fix, ptr, bytes, &base, &size, &check) != 0)
        return CUDA_SUCCESS; /* the driver's handle of ptr */
    memcpy(driver, bytes, sizeof driver);
    if (ptr == base)
        NVIPCFIX_DEBUG("export of block base 0x%llx: native handle", (ull)ptr);
    else
        tag_interior(fix, bytes, ptr, base, ptr - base, check);
    nvipcfix_export_memo_put(&fix->memo, ptr, driver, bytes);
    return CUDA_SUCCESS;
}

/* The exporting process opens its own handle: the driver refuses, nvipcfix
 * answers with the exporter's block, if it is still the one exported. */
static int find_own_export(struct nvipcfix_fix *fix,
                           const unsigned char native[NVIPCFIX_HANDLE_BYTES],
                           CUdeviceptr *base, uint64_t *size)
{
    struct nvipcfix_export_block exported, now;
    if (!fix->config.self_open ||
        !nvipcfix_export_cache_find_handle(&fix->exports, native, &exported))
        return -1;
    if (find_block(fix->driver, exported.base, &now) != 0 || now.base != exported.base ||
        now.buffer_id != exported.buffer_id)
        return -1;
    *base = exported.base;
    *size = exported.size;
    return 0;
}

static CUresult real_close(struct nvipcfix_fix *fix, CUdeviceptr base)
{
    NVIPCFIX_STAT_ADD(&fix->stats, real_closes);
    CUresult r = fix->driver->ipc_close_mem_handle(base);
    if (r != CUDA_SUCCESS)
        NVIPCFIX_WARN_ONCE("closing block 0x%llx failed in the driver (error %d)", (ull)base,
                           (int)r);
    return r;
}

static CUresult import_error(struct nvipcfix_fix *fix, enum nvipcfix_import_result r,
                             uint64_t offset)
{
    if (r == NVIPCFIX_IMPORT_BAD_OFFSET) {
        NVIPCFIX_WARN_ONCE("refused a handle whose offset %llu is not inside its block "
                           "(corrupted or forged tag)", (ull)offset);
        return counted(fix, CUDA_ERROR_INVALID_VALUE);
    }
    NVIPCFIX_WARN_ONCE("out of memory for the import table");
    return counted(fix, CUDA_ERROR_OUT_OF_MEMORY);
}

/* One warning per cause when a real open fails: what most likely happened. */
static void explain_open_failure(struct nvipcfix_fix *fix, CUresult r, CUcontext ctx,
                                 const unsigned char native[NVIPCFIX_HANDLE_BYTES],
                                 unsigned int flags)
{
    struct nvipcfix_export_block own;
    struct nvipcfix_open_facts f;
    char why[512];
    f.has_context = ctx != NULL;
    f.exporter_pid = nvipcfix_handle_exporter_pid(native);
    f.exporter_visible = nvipcfix_pid_visible(f.exporter_pid);
    f.own_export = nvipcfix_export_cache_find_handle(&fix->exports, native, &own);
    f.flags = flags;
    enum nvipcfix_open_cause c = nvipcfix_open_error_cause(r, &f, why, sizeof why);
    if (c != NVIPCFIX_CAUSE_NONE && !atomic_flag_test_and_set(&fix->open_causes_said[c]))
        nvipcfix_log(NVIPCFIX_LOG_WARN, "%s", why);
}

/* The import table's answer for (ctx, handle), or for the process's own
 * exports, recorded without a context. */
static enum nvipcfix_import_result acquire(struct nvipcfix_fix *fix, CUcontext ctx,
                                           const unsigned char native[NVIPCFIX_HANDLE_BYTES],
                                           uint64_t offset, uint64_t *p)
{
    enum nvipcfix_import_result ir =
        nvipcfix_import_acquire(&fix->imports, ctx, native, offset, p);
    if (ir == NVIPCFIX_IMPORT_MISS && ctx != NULL && fix->config.self_open)
        ir = nvipcfix_import_acquire(&fix->imports, NULL, native, offset, p);
    return ir;
}

/* Slow path of an open: the block is not in the table, or the flags are
 * ones only the driver can judge (check_flags: the driver is asked even if
 * the block is open, and its answer stands). */
static CUresult open_block(struct nvipcfix_fix *fix, nvipcfix_open_fn real_open,
                           CUcontext ctx, const unsigned char native[NVIPCFIX_HANDLE_BYTES],
                           uint64_t offset, unsigned int flags, int check_flags,
                           CUdeviceptr *pdptr)
{
    const struct nvipcfix_driver *d = fix->driver;
    uint64_t p = 0;
    enum nvipcfix_import_result ir;
    CUresult r;

    pthread_mutex_lock(&fix->slow);
    ir = check_flags ? NVIPCFIX_IMPORT_MISS : acquire(fix, ctx, native, offset, &p);
    if (ir != NVIPCFIX_IMPORT_MISS) {
        pthread_mutex_unlock(&fix->slow);
        if (ir != NVIPCFIX_IMPORT_HIT)
            return import_error(fix, ir, offset);
        NVIPCFIX_STAT_ADD(&fix->stats, table_hits);
        *pdptr = p;
        return CUDA_SUCCESS;
    }

    CUipcMemHandle h;
    CUdeviceptr base = 0;
    uint64_t size = 0;
    int self = 0;
    memcpy(h.reserved, native, sizeof h.reserved);
    NVIPCFIX_STAT_ADD(&fix->stats, real_opens);
    r = real_open(&base, h, flags);
    if (r == CUDA_SUCCESS) {
        CUdeviceptr range_base = 0;
        size_t range_size = 0;
        if (d->mem_get_address_range != NULL &&
            d->mem_get_address_range(&range_base, &range_size, base) == CUDA_SUCCESS &&
            range_base == base)
            size = range_size;
        else
            NVIPCFIX_WARN_ONCE("cannot learn the size of an opened block; handles with an "
                               "offset into such blocks are refused");
    } else if (r == CUDA_ERROR_INVALID_CONTEXT && ctx != NULL &&
               find_own_export(fix, native, &base, &size) == 0) {
        self = 1;
        NVIPCFIX_DEBUG("open of this process's own export: block 0x%llx", (ull)base);
    } else {
        pthread_mutex_unlock(&fix->slow);
        explain_open_failure(fix, r, ctx, native, flags);
        return counted(fix, r);
    }

    /* The exporter's own block is the same in every context of the process:
     * recorded once, without a context. */
    int existed = 0;
    size_t stale = fix->imports.stale; /* changed only by inserts, all under fix->slow */
    ir = nvipcfix_import_insert(&fix->imports, self ? NULL : ctx, native, base, size, self,
                                offset, &p, &existed);
    if (fix->imports.stale != stale)
        NVIPCFIX_WARN_ONCE("a block nvipcfix held was unmapped behind its back (closed through "
                           "a road nvipcfix does not see, or its context was destroyed); the "
                           "new mapping at 0x%llx replaces its entry",
                           (ull)base);
    if ((ir != NVIPCFIX_IMPORT_HIT || existed) && !self)
        real_close(fix, base);
    pthread_mutex_unlock(&fix->slow);
    if (ir != NVIPCFIX_IMPORT_HIT)
        return import_error(fix, ir, offset);
    NVIPCFIX_DEBUG("open: block 0x%llx + %llu -> 0x%llx", (ull)base, (ull)offset, (ull)p);
    *pdptr = p;
    return CUDA_SUCCESS;
}

static void warn_vmm_open(enum nvipcfix_vmm_error e, const char *why)
{
    static atomic_flag said[NVIPCFIX_VMM_ERROR_COUNT];
    if (!atomic_flag_test_and_set(&said[e]))
        nvipcfix_log(NVIPCFIX_LOG_WARN, "%s", why);
}

/* The mapping for a VMM ticket: this process's own chunks, or chunks the
 * exporter hands over and nvipcfix maps. Called without fix->slow. */
static CUresult map_ticket(struct nvipcfix_fix *fix, const struct nvipcfix_vmm_ticket *tk,
                           uint64_t *base, uint64_t *size, int *origin)
{
    char why[512];
    CUresult r;
    if (nvipcfix_vmm_own(&fix->vmm, tk, base, size)) {
        *origin = NVIPCFIX_ORIGIN_SELF;
        if (!fix->config.self_open)
            return CUDA_ERROR_INVALID_CONTEXT; /* what the driver says to its own handles */
        if (*size == 0) {
            snprintf(why, sizeof why, "this process opened its own VMM ticket, but the memory "
                                      "was freed or remapped since the export "
                                      "(CUDA_ERROR_INVALID_HANDLE)");
            warn_vmm_open(NVIPCFIX_VMM_CHANNEL, why);
            return CUDA_ERROR_INVALID_HANDLE;
        }
        return CUDA_SUCCESS;
    }
    *origin = NVIPCFIX_ORIGIN_VMM;
    enum nvipcfix_vmm_error e = nvipcfix_vmm_map(&fix->vmm, tk, base, size, &r, why, sizeof why);
    if (e != NVIPCFIX_VMM_OK) {
        warn_vmm_open(e, why);
        return r;
    }
    NVIPCFIX_STAT_ADD(&fix->stats, vmm_maps);
    return CUDA_SUCCESS;
}

/* Open of a VMM ticket: from the table when its export is mapped already,
 * else mapped now. The key is the ticket without its offset. */
static CUresult open_ticket(struct nvipcfix_fix *fix, const unsigned char *raw,
                            const struct nvipcfix_vmm_ticket *tk, unsigned int flags,
                            CUdeviceptr *pdptr)
{
    if ((flags & ~(unsigned)CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) != 0)
        return counted(fix, CUDA_ERROR_INVALID_VALUE);
    CUcontext ctx = NULL;
    if (fix->driver->ctx_get_current == NULL ||
        fix->driver->ctx_get_current(&ctx) != CUDA_SUCCESS)
        ctx = NULL;
    unsigned char key[NVIPCFIX_TICKET_BYTES];
    nvipcfix_vmm_ticket_key(raw, key);
    uint64_t p = 0, base = 0, size = 0;
    int origin = NVIPCFIX_ORIGIN_VMM, existed = 0;

    enum nvipcfix_import_result ir = acquire(fix, ctx, key, tk->offset, &p);
    if (ir == NVIPCFIX_IMPORT_HIT) {
        NVIPCFIX_STAT_ADD(&fix->stats, table_hits);
        *pdptr = p;
        return CUDA_SUCCESS;
    }
    if (ir != NVIPCFIX_IMPORT_MISS)
        return import_error(fix, ir, tk->offset);
    /* Mapped without fix->slow: the exchange with the exporter may wait
     * up to its deadline, and other IPC calls must not wait with it. */
    CUresult r = map_ticket(fix, tk, &base, &size, &origin);
    if (r != CUDA_SUCCESS)
        return counted(fix, r);
    pthread_mutex_lock(&fix->slow);
    ir = acquire(fix, ctx, key, tk->offset, &p);
    if (ir == NVIPCFIX_IMPORT_MISS) {
        NVIPCFIX_STAT_ADD(&fix->stats, real_opens);
        ir = nvipcfix_import_insert(&fix->imports, origin == NVIPCFIX_ORIGIN_SELF ? NULL : ctx,
                                    key, base, size, origin, tk->offset, &p, &existed);
        if (ir != NVIPCFIX_IMPORT_HIT && origin == NVIPCFIX_ORIGIN_VMM)
            nvipcfix_vmm_unmap(&fix->vmm, base, size);
    } else {
        if (origin == NVIPCFIX_ORIGIN_VMM) /* another thread mapped it meanwhile */
            nvipcfix_vmm_unmap(&fix->vmm, base, size);
        if (ir == NVIPCFIX_IMPORT_HIT)
            NVIPCFIX_STAT_ADD(&fix->stats, table_hits);
    }
    pthread_mutex_unlock(&fix->slow);
    if (ir != NVIPCFIX_IMPORT_HIT)
        return import_error(fix, ir, tk->offset);
    NVIPCFIX_DEBUG("open of a VMM ticket: 0x%llx", (ull)p);
    *pdptr = p;
    return CUDA_SUCCESS;
}

CUresult nvipcfix_open(struct nvipcfix_fix *fix, nvipcfix_open_fn real_open, CUdeviceptr *pdptr,
                       CUipcMemHandle handle, unsigned int flags)
{
    NVIPCFIX_STAT_ADD(&fix->stats, opens);
    if (fix->config.mode == NVIPCFIX_MODE_OFF || pdptr == NULL)
        return counted(fix, real_open(pdptr, handle, flags));

    /* A VMM ticket (its magic is compared first: cheap for other handles). */
    struct nvipcfix_vmm_ticket ticket;
    const unsigned char *raw = (const unsigned char *)handle.reserved;
    if (fix->config.mode == NVIPCFIX_MODE_FIX && nvipcfix_vmm_ticket_decode(raw, &ticket) == 0)
        return open_ticket(fix, raw, &ticket, flags, pdptr);

    unsigned char native[NVIPCFIX_HANDLE_BYTES];
    uint64_t offset;
    enum nvipcfix_tag_kind kind = nvipcfix_tag_decode(raw, &offset, native);

    if (fix->config.mode == NVIPCFIX_MODE_AUDIT) {
        CUresult r = counted(fix, real_open(pdptr, handle, flags));
        nvipcfix_log(NVIPCFIX_LOG_INFO, "audit: open of a %s handle -> 0x%llx (error %d)",
                     kind == NVIPCFIX_TAG_OURS ? "tagged" : "native",
                     r == CUDA_SUCCESS ? (ull)*pdptr : 0ULL, (int)r);
        return r;
    }
    if (kind == NVIPCFIX_TAG_FOREIGN) {
        NVIPCFIX_WARN_ONCE("an IPC handle has non-zero bytes 56-63 that nvipcfix did not "
                           "write; it is passed to the driver unchanged");
        return counted(fix, real_open(pdptr, handle, flags));
    }

    CUcontext ctx = NULL;
    if (fix->driver->ctx_get_current == NULL ||
        fix->driver->ctx_get_current(&ctx) != CUDA_SUCCESS)
        ctx = NULL;

    /* Flags the driver accepts today are answered from the table; any other
     * goes to the driver, which refuses it (or, if a newer driver accepts
     * it, the extra mapping is undone below). */
    int check_flags = (flags & ~(unsigned)CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS) != 0;
    uint64_t p = 0;
    enum nvipcfix_import_result ir =
        check_flags ? NVIPCFIX_IMPORT_MISS : acquire(fix, ctx, native, offset, &p);
    if (ir == NVIPCFIX_IMPORT_HIT) {
        NVIPCFIX_STAT_ADD(&fix->stats, table_hits);
        *pdptr = p;
        return CUDA_SUCCESS;
    }
    if (ir != NVIPCFIX_IMPORT_MISS)
        return import_error(fix, ir, offset);
    return open_block(fix, real_open, ctx, native, offset, flags, check_flags, pdptr);
}

CUresult nvipcfix_close(struct nvipcfix_fix *fix, CUdeviceptr ptr)
{
    struct nvipcfix_released_block out;
    enum nvipcfix_release_result rr;
    NVIPCFIX_STAT_ADD(&fix->stats, closes);
    if (fix->config.mode != NVIPCFIX_MODE_FIX)
        return counted(fix, fix->driver->ipc_close_mem_handle(ptr));

    rr = nvipcfix_import_release(&fix->imports, ptr, 0, &out);
    if (rr == NVIPCFIX_RELEASE_DONE)
        return CUDA_SUCCESS;
    if (rr == NVIPCFIX_RELEASE_WOULD_BE_LAST) {
        CUresult r = CUDA_SUCCESS;
        pthread_mutex_lock(&fix->slow);
        rr = nvipcfix_import_release(&fix->imports, ptr, 1, &out);
        if (rr == NVIPCFIX_RELEASE_LAST && out.origin == NVIPCFIX_ORIGIN_DRIVER)
            r = real_close(fix, out.base);
        else if (rr == NVIPCFIX_RELEASE_LAST && out.origin == NVIPCFIX_ORIGIN_VMM) {
            NVIPCFIX_STAT_ADD(&fix->stats, real_closes);
            r = nvipcfix_vmm_unmap(&fix->vmm, out.base, out.size);
            if (r != CUDA_SUCCESS)
                NVIPCFIX_WARN_ONCE("unmapping VMM memory at 0x%llx failed in the driver "
                                   "(error %d)", (ull)out.base, (int)r);
        }
        pthread_mutex_unlock(&fix->slow);
        if (rr != NVIPCFIX_RELEASE_NOT_OURS)
            return counted(fix, r);
    }
    /* Not inside any block nvipcfix holds: the driver decides. */
    NVIPCFIX_STAT_ADD(&fix->stats, real_closes);
    return counted(fix, fix->driver->ipc_close_mem_handle(ptr));
}

void nvipcfix_fix_forget_after_fork(struct nvipcfix_fix *fix)
{
    nvipcfix_audit_sites_init(&fix->audit);
    nvipcfix_export_cache_forget(&fix->exports);
    nvipcfix_export_memo_forget(&fix->memo);
    nvipcfix_import_table_forget(&fix->imports);
    nvipcfix_vmm_forget_after_fork(&fix->vmm);
    pthread_mutex_init(&fix->slow, NULL);
    nvipcfix_stats_reset(&fix->stats);
}
