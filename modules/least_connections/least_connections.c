/*
 * least_connections.c - sends each request to the usable backend with the
 * fewest requests in flight relative to its weight.
 *
 * In-flight counts are the core's, across all workers, so a slow backend
 * (whose requests pile up) gets fewer new ones whichever worker picks.
 * Load per weight is compared by cross-multiplying (inflight_a * weight_b
 * against inflight_b * weight_a), exact in 64 bits, no division.
 *
 * Ties are common: when traffic is light every backend has 0 in flight.
 * Each worker starts its scan just after the backend it chose last time and
 * keeps the first of equals, so equal backends take turns instead of the
 * first one in the list getting everything.
 */
#include <limits.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>

#include <helios.h>

#define LC_NAME "least_connections"
#define LC_CACHE_LINE 64

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const lc_keys[] = {NULL}; /* no settings */

/* No config struct: the instance has nothing to remember, *cfg stays NULL. */
static int lc_config_new(const helios_conf *conf, void **cfg)
{
    (void)cfg;
    if (api->conf_kind(conf) == HELIOS_CONF_NULL)
        return 0;
    return api->conf_check_keys(conf, lc_keys) > 0 ? -1 : 0;
}

/* ---- per-worker state ---- */

typedef struct lc_worker {
    alignas(LC_CACHE_LINE) size_t next; /* where the scan starts; written by its worker only */
} lc_worker;

static int lc_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    lc_worker *st = aligned_alloc(LC_CACHE_LINE, sizeof(lc_worker));
    if (st == NULL) {
        api->log(HELIOS_LOG_ERROR, LC_NAME, "out of memory allocating worker state");
        return -1;
    }
    /* Different starting points per worker, so that when all backends are
     * idle (all tied) the workers' first requests spread out. */
    st->next = api->worker_index(w);
    *wstate = st;
    return 0;
}

static void lc_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    free(wstate);
}

/* ---- hooks ---- */

/*
 * The least loaded usable backend not in TRIED (NULL: none), scanning N
 * backends from START and keeping the first of equals. Returns N when
 * there is no candidate.
 */
static size_t lc_scan(const helios_backends *backends, size_t n, size_t start,
                      const helios_tried *tried)
{
    size_t best = n;
    uint64_t best_inflight = 0, best_weight = 1;
    for (size_t k = 0; k < n; k++) {
        size_t i = start + k < n ? start + k : start + k - n;
        const helios_backend *b = api->backends_at(backends, i);
        if (!api->backend_usable(b) || (tried != NULL && api->tried_has(tried, i)))
            continue;
        uint64_t inflight = api->backend_inflight(b);
        uint64_t weight = api->backend_weight(b);
        if (weight == 0)
            weight = 1; /* the core allows 1..10000; keep the comparison meaningful */
        /* inflight/weight < best_inflight/best_weight; 32-bit factors cannot overflow */
        if (best == n || inflight * best_weight < best_inflight * weight) {
            best = i;
            best_inflight = inflight;
            best_weight = weight;
        }
    }
    return best;
}

/*
 * The least loaded usable backend this request has not tried. If it has
 * tried them all, the least loaded usable one: a retry on a backend that
 * failed once beats a 503 while it is still marked usable (the core
 * decides whether to use it). -1 only when no backend is usable.
 */
static int lc_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    lc_worker *st = c->wstate;
    size_t n = api->backends_count(backends);
    if (n == 0)
        return -1;
    if (n > INT_MAX)
        n = INT_MAX; /* pick() answers with an int index */

    size_t start = st->next % n; /* the list may have shrunk since last time */
    size_t chosen = lc_scan(backends, n, start, tried);
    if (chosen == n && tried != NULL)
        chosen = lc_scan(backends, n, start, NULL);
    if (chosen == n)
        return -1;
    st->next = chosen + 1;
    return (int)chosen;
}

/* ---- module descriptor ---- */

static const helios_balancer_hooks lc_balancer_hooks = {
    .size = sizeof(helios_balancer_hooks),
    .pick = lc_pick,          /* every upstream attempt, on the request's worker */
    .backends_changed = NULL, /* nothing cached per backend: pick() reads the new list */
};

static const helios_module lc_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(LC_NAME, "0.1.0"),
    .config_new = lc_config_new,   /* refuses every key */
    .config_free = NULL,           /* config_new allocates nothing */
    .worker_init = lc_worker_init, /* the worker's scan position */
    .worker_fini = lc_worker_fini,
    .filter = NULL,
    .handler = NULL,
    .balancer = &lc_balancer_hooks, /* used as an upstream's `balancer:` */
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &lc_module;
}
