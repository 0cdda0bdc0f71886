/* The names whose first definition in the search order nvipcfix cares
 * about: dlsym, then the driver names it wraps, in the order of
 * driver_entry.c's table of wrappers; and their GNU hashes (the loader's),
 * written here so that the check at load reads no string
 * (test_gnu_hash computes them again). A mask of the names has bit k for
 * name k. */
#ifndef NVIPCFIX_WATCHED_NAMES_H
#define NVIPCFIX_WATCHED_NAMES_H

#define NVIPCFIX_WATCHED 11
#define NVIPCFIX_WATCHED_NAMES                                                                \
    "dlsym", "cuIpcGetMemHandle", "cuIpcOpenMemHandle", "cuIpcOpenMemHandle_v2",              \
        "cuIpcCloseMemHandle", "cuGetProcAddress", "cuGetProcAddress_v2", "cuMemMap",         \
        "cuMemUnmap", "cuMemSetAccess", "cuMemAddressFree"
#define NVIPCFIX_WATCHED_HASHES                                                               \
    0x0f4dc4aeu, 0xbddc0884u, 0x5af32c36u, 0x7252ebfdu, 0x3163521au, 0xd8ca0f97u,             \
        0xa5181fbeu, 0xc2845e5au, 0x75ad41fdu, 0xc67df79au, 0xaa495c24u

/* Name k of the wrapped names (driver_entry.c's entry k) is watched name k + 1. */
#define NVIPCFIX_WATCHED_DLSYM 0
#define NVIPCFIX_WATCHED_WRAPPED(k) ((k) + 1)

#endif
