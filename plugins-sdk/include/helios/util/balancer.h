/*
 * helios/util/balancer.h - what every balancer needs besides its own
 * choice: the candidate scan, a config_new for balancers without settings,
 * and per-worker state on its own cache line.
 *
 * A candidate is a backend that pick() may return (helios/module.h): usable
 * (api->backend_usable() is 1) and not in the request's TRIED set. Every
 * function below that looks at backends decides that in one place,
 * helios_balancer_candidate(), and every walk over the list is
 * helios_balancer_walk(); count, rank and iteration are built on it.
 *
 * Threads: the backend functions are called from pick(), on the request's
 * worker, with the BACKENDS and TRIED pick() was given; N is always
 * helios_balancer_size(api, BACKENDS). Indexes are ints because pick()
 * answers with one; -1 means "no candidate".
 *
 * Header-only and not part of the ABI: every function is static inline and
 * takes the host API the module was given.
 */
#ifndef HELIOS_UTIL_BALANCER_H
#define HELIOS_UTIL_BALANCER_H

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../helios.h"

/* Per-worker state is allocated in whole lines of this size, so that no two
 * workers (and no other allocation) ever write the same cache line. */
#define HELIOS_BALANCER_CACHE_LINE 64

/* ---- the backend list ---- */

/* The number of backends in BACKENDS, at most INT_MAX (pick() answers with
 * an int index). 0 means pick() has nothing to offer: return -1. */
static inline size_t helios_balancer_size(const helios_host_api *api,
                                          const helios_backends *backends)
{
    size_t n = api->backends_count(backends);
    return n > INT_MAX ? INT_MAX : n;
}

/* 1 when backend I of BACKENDS may be picked: usable and not in TRIED (a
 * NULL TRIED has nothing in it). I < N. */
static inline int helios_balancer_candidate(const helios_host_api *api,
                                            const helios_backends *backends,
                                            const helios_tried *tried, size_t i)
{
    return api->backend_usable(api->backends_at(backends, i)) && !api->tried_has(tried, i);
}

/* The scan itself: the first candidate among the LEN positions FROM,
 * FROM + 1, ... of the N backends, wrapping from N - 1 to 0. FROM < N,
 * LEN <= N. Returns its index, or -1. */
static inline int helios_balancer_walk(const helios_host_api *api, const helios_backends *backends,
                                       size_t n, const helios_tried *tried, size_t from, size_t len)
{
    for (size_t k = 0; k < len; k++) {
        size_t i = from + k < n ? from + k : from + k - n;
        if (helios_balancer_candidate(api, backends, tried, i))
            return (int)i;
    }
    return -1;
}

/* The first candidate at or after START (taken modulo N, so a position kept
 * from a longer list is fine), wrapping around the list once. Returns its
 * index, or -1 when there is no candidate at all. */
static inline int helios_balancer_scan(const helios_host_api *api, const helios_backends *backends,
                                       size_t n, const helios_tried *tried, size_t start)
{
    if (n == 0)
        return -1;
    return helios_balancer_walk(api, backends, n, tried, start % n, n);
}

/* The candidate after PREV on the walk helios_balancer_scan(START) began,
 * or -1 once that walk is back at START: every candidate exactly once.
 *
 *     for (int i = helios_balancer_scan(api, bs, n, tried, start); i >= 0;
 *          i = helios_balancer_scan_next(api, bs, n, tried, start, i))
 */
static inline int helios_balancer_scan_next(const helios_host_api *api,
                                            const helios_backends *backends, size_t n,
                                            const helios_tried *tried, size_t start, int prev)
{
    /* positions START..PREV; no division in the usual case (START < N), as
     * this runs once per candidate when a pick weighs them all */
    size_t s = start < n ? start : start % n, p = (size_t)prev;
    size_t walked = p >= s ? p - s + 1 : p + n - s + 1;
    if (walked >= n)
        return -1;
    size_t from = (size_t)prev + 1 < n ? (size_t)prev + 1 : 0;
    return helios_balancer_walk(api, backends, n, tried, from, n - walked);
}

/* The number of candidates. O(n). */
static inline size_t helios_balancer_count(const helios_host_api *api,
                                           const helios_backends *backends, size_t n,
                                           const helios_tried *tried)
{
    size_t m = 0;
    for (int i = helios_balancer_scan(api, backends, n, tried, 0); i >= 0;
         i = helios_balancer_scan_next(api, backends, n, tried, 0, i))
        m++;
    return m;
}

/* The candidate of rank RANK (0 = the first) in list order, or -1 when
 * there are no more than RANK candidates. O(n). */
static inline int helios_balancer_nth(const helios_host_api *api, const helios_backends *backends,
                                      size_t n, const helios_tried *tried, size_t rank)
{
    int i = helios_balancer_scan(api, backends, n, tried, 0);
    for (; i >= 0 && rank > 0; rank--)
        i = helios_balancer_scan_next(api, backends, n, tried, 0, i);
    return i;
}

/* ---- configuration ---- */

/*
 * The whole config_new of a balancer without settings, to call from it:
 * an absent `config:` (CONF NULL) or an empty map is accepted and *CFG
 * stays NULL; every key is refused with the host's located "unknown key"
 * error. Main thread (or the ctl_balancer_set caller), like config_new.
 * Returns 0, or -1 after the error.
 */
static inline int helios_balancer_config_none(const helios_host_api *api, const helios_conf *conf,
                                              void **cfg)
{
    static const char *const no_keys[] = {NULL};
    (void)cfg;
    if (api->conf_kind(conf) == HELIOS_CONF_NULL)
        return 0;
    return api->conf_check_keys(conf, no_keys) > 0 ? -1 : 0;
}

/* ---- per-worker state ---- */

/* SIZE bytes of zeroed memory starting on a cache line and rounded up to
 * whole lines, so nothing else shares its last line: for per-worker arrays
 * (weighted_round_robin's current weights). Any thread. Returns NULL when
 * out of memory (nothing logged); release with free(). */
static inline void *helios_balancer_alloc_lines(size_t size)
{
    if (size > SIZE_MAX - HELIOS_BALANCER_CACHE_LINE)
        return NULL; /* rounding up would wrap */
    size_t lines = size / HELIOS_BALANCER_CACHE_LINE + (size % HELIOS_BALANCER_CACHE_LINE != 0);
    size_t bytes = (lines ? lines : 1) * HELIOS_BALANCER_CACHE_LINE;
    void *p = aligned_alloc(HELIOS_BALANCER_CACHE_LINE, bytes);
    if (p != NULL)
        memset(p, 0, bytes);
    return p;
}

/*
 * A worker's state struct of SIZE bytes, zeroed, on cache lines of its own
 * (helios_balancer_alloc_lines), for worker_init to store in *wstate.
 * Declare the struct's first member alignas(HELIOS_BALANCER_CACHE_LINE) so
 * the compiler knows too. On the worker's thread. When out of memory, logs
 * it under the module's NAME and returns NULL: worker_init then returns
 * -1. The caller owns the state and releases it with free()
 * (helios_balancer_worker_fini does just that).
 */
static inline void *helios_balancer_wstate_new(const helios_host_api *api, const char *name,
                                               size_t size)
{
    void *st = helios_balancer_alloc_lines(size);
    if (st == NULL)
        api->log(HELIOS_LOG_ERROR, name, "out of memory allocating %zu bytes of worker state",
                 size);
    return st;
}

/* A worker_fini for state from helios_balancer_wstate_new that owns no
 * other memory: use it as the descriptor's .worker_fini. On the worker's
 * thread. */
static inline void helios_balancer_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    free(wstate);
}

#endif
