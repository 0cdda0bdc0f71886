#include "vmm_ticket.h"

#include <string.h>

static const unsigned char magic[8] = {'n', 'v', 'i', 'p', 'c', 'V', 'M', 2};

static void put(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++, v >>= 8)
        p[i] = (unsigned char)v;
}

static uint64_t get(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* A 32-bit check of bytes 0-59, a word at a time (every step is a
 * bijection of the running value, so one changed word always changes the
 * 64-bit result). */
static uint32_t check(const unsigned char *b)
{
    uint64_t x = UINT64_C(0x6e7669706356c001);
    for (int i = 0; i < 60; i += 8) {
        x = (x ^ get(b + i, i + 8 <= 60 ? 8 : 4)) * UINT64_C(0x9E3779B97F4A7C15);
        x ^= x >> 29;
    }
    return (uint32_t)(x ^ (x >> 32));
}

void nvipcfix_vmm_ticket_encode(unsigned char out[NVIPCFIX_TICKET_BYTES],
                                const struct nvipcfix_vmm_ticket *t)
{
    memset(out, 0, NVIPCFIX_TICKET_BYTES);
    memcpy(out, magic, sizeof magic);
    put(out + 8, t->pid, 4);
    put(out + 12, t->uid, 4);
    put(out + 16, t->export_id, 4);
    put(out + 20, t->nonce, 4);
    put(out + 28, t->pid_ns, 4);
    memcpy(out + 32, t->secret, NVIPCFIX_TICKET_SECRET_BYTES);
    put(out + 48, t->offset, 6);
    out[54] = t->device;
    out[55] = t->flags;
    put(out + 56, t->boot, 4);
    put(out + 60, check(out), 4);
}

int nvipcfix_vmm_ticket_decode(const unsigned char in[NVIPCFIX_TICKET_BYTES],
                               struct nvipcfix_vmm_ticket *t)
{
    if (memcmp(in, magic, sizeof magic) != 0 || get(in + 24, 4) != 0 ||
        (in[55] & ~NVIPCFIX_TICKET_IN_DIR) != 0 || get(in + 60, 4) != check(in))
        return -1;
    t->pid = (uint32_t)get(in + 8, 4);
    t->uid = (uint32_t)get(in + 12, 4);
    t->export_id = (uint32_t)get(in + 16, 4);
    t->nonce = (uint32_t)get(in + 20, 4);
    t->pid_ns = (uint32_t)get(in + 28, 4);
    memcpy(t->secret, in + 32, NVIPCFIX_TICKET_SECRET_BYTES);
    t->offset = get(in + 48, 6);
    t->device = in[54];
    t->flags = in[55];
    t->boot = (uint32_t)get(in + 56, 4);
    return 0;
}

void nvipcfix_vmm_ticket_key(const unsigned char ticket[NVIPCFIX_TICKET_BYTES],
                             unsigned char key[NVIPCFIX_TICKET_BYTES])
{
    memcpy(key, ticket, NVIPCFIX_TICKET_BYTES);
    memset(key + 48, 0, 6); /* the offset */
    memset(key + 60, 0, 4); /* the check, which covers the offset */
}
