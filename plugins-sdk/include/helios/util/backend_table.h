/*
 * helios/util/backend_table.h - a fixed-size, lock-free map from backend
 * handle to a module's per-backend state, shared by all workers.
 *
 * For health-kind modules whose on_upstream_result runs on every worker and
 * must not take a lock. The caller owns an array of CAP slot structs (CAP a
 * power of two, zeroed, e.g. calloc) whose FIRST member is
 * `_Atomic(helios_backend *) key`; a slot is claimed for a backend with one
 * compare-and-swap on first use and never released (backends live as long
 * as the generation, and so does the module's config holding the table).
 *
 * Header-only and not part of the ABI.
 */
#ifndef HELIOS_UTIL_BACKEND_TABLE_H
#define HELIOS_UTIL_BACKEND_TABLE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../../helios.h"

/*
 * Index of B's slot in SLOTS (CAP slots of STRIDE bytes each), claimed on
 * first use; -1 when every slot belongs to another backend.
 */
static inline long helios_backend_table_slot(void *slots, size_t stride, size_t cap,
                                             helios_backend *b)
{
    uint64_t h = (uint64_t)(uintptr_t)b; /* murmur3 finaliser of the pointer */
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    for (size_t k = 0; k < cap; k++) {
        size_t i = (size_t)(h + k) & (cap - 1);
        _Atomic(helios_backend *) *key = (_Atomic(helios_backend *) *)((char *)slots + i * stride);
        helios_backend *cur = atomic_load_explicit(key, memory_order_acquire);
        if (cur == b)
            return (long)i;
        if (cur == NULL && (atomic_compare_exchange_strong(key, &cur, b) || cur == b))
            return (long)i;
    }
    return -1;
}

#endif
