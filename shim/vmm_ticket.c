#include "vmm_ticket.h"

#include <string.h>

static const unsigned char magic[8] = {'n', 'v', 'i', 'p', 'c', 'V', 'M', 1};

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
    put(out + 8, t->pid, 8);
    put(out + 16, t->export_id, 8);
    put(out + 28, t->pid_ns, 4);
    put(out + 32, t->secret, 8);
    put(out + 40, t->offset, 8);
    put(out + 48, t->boot, 8);
    out[56] = t->device;
    put(out + 60, check(out), 4);
}

int nvipcfix_vmm_ticket_decode(const unsigned char in[NVIPCFIX_TICKET_BYTES],
                               struct nvipcfix_vmm_ticket *t)
{
    if (memcmp(in, magic, sizeof magic) != 0 || get(in + 24, 4) != 0 || get(in + 57, 3) != 0 ||
        get(in + 60, 4) != check(in))
        return -1;
    t->pid = get(in + 8, 8);
    t->export_id = get(in + 16, 8);
    t->pid_ns = (uint32_t)get(in + 28, 4);
    t->secret = get(in + 32, 8);
    t->offset = get(in + 40, 8);
    t->boot = get(in + 48, 8);
    t->device = in[56];
    return 0;
}

void nvipcfix_vmm_ticket_key(const unsigned char ticket[NVIPCFIX_TICKET_BYTES],
                             unsigned char key[NVIPCFIX_TICKET_BYTES])
{
    memcpy(key, ticket, NVIPCFIX_TICKET_BYTES);
    memset(key + 40, 0, 8); /* the offset */
    memset(key + 60, 0, 4); /* the check, which covers the offset */
}
