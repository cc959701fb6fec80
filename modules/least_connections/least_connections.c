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
#include <stdalign.h>
#include <stdint.h>

#include <helios.h>
#include <helios/util/balancer.h>

#define LC_NAME "least_connections"

static const helios_host_api *api;

/* ---- configuration ---- */

/* No settings, no config struct: *cfg stays NULL. */
static int lc_config_new(const helios_conf *conf, void **cfg)
{
    return helios_balancer_config_none(api, conf, cfg);
}

/* ---- per-worker state ---- */

typedef struct lc_worker {
    alignas(HELIOS_BALANCER_CACHE_LINE) size_t next; /* where the scan starts; its worker's only */
} lc_worker;

static int lc_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    lc_worker *st = helios_balancer_wstate_new(api, LC_NAME, sizeof(lc_worker));
    if (st == NULL)
        return -1;
    /* Different starting points per worker, so that when all backends are
     * idle (all tied) the workers' first requests spread out. */
    st->next = api->worker_index(w);
    *wstate = st;
    return 0;
}

/* ---- hooks ---- */

/*
 * The least loaded candidate (usable, not tried by this request), scanning
 * from this worker's position and keeping the first of equals; the next
 * pick starts after it. -1 when there is no candidate.
 */
static int lc_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    lc_worker *st = c->wstate;
    size_t n = helios_balancer_size(api, backends);
    int best = -1;
    uint64_t best_inflight = 0, best_weight = 1;
    for (int i = helios_balancer_scan(api, backends, n, tried, st->next); i >= 0;
         i = helios_balancer_scan_next(api, backends, n, tried, st->next, i)) {
        const helios_backend *b = api->backends_at(backends, (size_t)i);
        uint64_t inflight = api->backend_inflight(b);
        uint64_t weight = api->backend_weight(b);
        if (weight == 0)
            weight = 1; /* the core allows 1..10000; keep the comparison meaningful */
        /* inflight/weight < best_inflight/best_weight; 32-bit factors cannot overflow */
        if (best < 0 || inflight * best_weight < best_inflight * weight) {
            best = i;
            best_inflight = inflight;
            best_weight = weight;
        }
    }
    if (best >= 0)
        st->next = (size_t)best + 1;
    return best;
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
    .worker_fini = helios_balancer_worker_fini,
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
