/* Whether a loaded object may define some names, read from its GNU hash
 * table (DT_GNU_HASH) as the loader reads it: the Bloom filter, then the
 * hashes on the bucket's chain. For the load-order check (load_order.c):
 * it tells, without a symbol look-up, that a library ahead of nvipcfix
 * defines none of the names nvipcfix watches. */
#ifndef NVIPCFIX_GNU_HASH_H
#define NVIPCFIX_GNU_HASH_H

#include <link.h>
#include <stddef.h>
#include <stdint.h>

/* The GNU hash of a symbol name (the loader's). */
uint32_t nvipcfix_gnu_hash(const char *name);

/* 0 when the object loaded at base with dynamic section dynamic defines
 * none of the n names whose GNU hashes are given; 1 when it may define one
 * (a hash on a chain: the name itself is not compared), and when it cannot
 * be told (no GNU hash table, a malformed one). Reads only the tables:
 * no loader call, no lock. */
int nvipcfix_may_define_any(ElfW(Addr) base, const ElfW(Dyn) *dynamic, const uint32_t *hashes,
                            size_t n);

#endif
