/* Which of some names a loaded object may define, read from its GNU hash
 * table (DT_GNU_HASH) as the loader reads it: the Bloom filter, then the
 * hashes on the bucket's chain. For the load-order check (load_order.c):
 * it tells, without a symbol look-up, that a library ahead of nvipcfix
 * defines none of the names nvipcfix watches. */
#ifndef NVIPCFIX_GNU_HASH_H
#define NVIPCFIX_GNU_HASH_H

#include <link.h>
#include <stddef.h>
#include <stdint.h>

/* The names (n <= 32, given by their GNU hashes: the loader's h * 33 + c
 * from 5381, watched_names.h) that the object loaded at
 * base with dynamic section dynamic may define: bit k for name k. A bit
 * is set when the hash is on its bucket's chain (the name itself is not
 * compared), and every bit when that cannot be told (no GNU hash table,
 * a malformed one, a table whose place is in doubt). Reads only the
 * tables: no loader call, no lock. In the start-up code's section: the
 * load-order check calls it in every process where a library comes ahead
 * of nvipcfix. */
uint32_t nvipcfix_may_define(ElfW(Addr) base, const ElfW(Dyn) *dynamic, const uint32_t *hashes,
                             size_t n);

#endif
