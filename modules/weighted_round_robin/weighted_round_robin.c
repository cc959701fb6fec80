/*
 * weighted_round_robin.c - smooth weighted round robin, as nginx does it:
 * each backend gets its weight's share of the requests, spread out rather
 * than in bursts (weights 5/1/1 give a a b a c a a, not a a a a a b c).
 *
 * Every pick, each candidate's current weight grows by its weight; the
 * largest current weight wins and gives back the total of the weights
 * added in that round. Over any run of sum(weights) picks with a stable
 * set of candidates, each backend is chosen exactly weight times.
 *
 * The current weights live per worker, so picking never touches memory
 * another thread writes. They are indexed like the backend list, so a new
 * list (add, remove, reload) starts them again from zero. Weights are read
 * on every pick: a weight change takes effect on the next one.
 */
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>

#include <helios.h>
#include <helios/util/balancer.h>

#define WRR_NAME "weighted_round_robin"

static const helios_host_api *api;

/* ---- configuration ---- */

/* No settings, no config struct: *cfg stays NULL. */
static int wrr_config_new(const helios_conf *conf, void **cfg)
{
    return helios_balancer_config_none(api, conf, cfg);
}

/* ---- per-worker state ---- */

typedef struct wrr_worker {
    /* The list CURRENT is indexed by. Lists are immutable and a pointer is
     * never reused for another list while the generation lives, so a
     * different pointer means "rebuild". */
    alignas(HELIOS_BALANCER_CACHE_LINE) const helios_backends *list;
    size_t n;                        /* entries in CURRENT */
    int64_t *current;                /* smooth-WRR current weight per backend index */
    const helios_backends *oom_list; /* list we failed to rebuild for: log once */
} wrr_worker;

/* Starts with no list and no weights: the first pick builds them. */
static int wrr_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    (void)w;
    *wstate = helios_balancer_wstate_new(api, WRR_NAME, sizeof(wrr_worker));
    return *wstate != NULL ? 0 : -1;
}

static void wrr_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    wrr_worker *st = wstate;
    free(st->current);
    helios_balancer_worker_fini(cfg, w, st);
}

/*
 * Points the state at BACKENDS (N entries), zeroing every current weight:
 * indexes of the old list mean nothing in the new one. The array is sized
 * in whole cache lines so no other allocation shares its last line.
 * Returns 0, or -1 when out of memory (the old state is kept).
 */
static int wrr_rebuild(wrr_worker *st, const helios_backends *backends, size_t n)
{
    if (n > st->n || st->current == NULL) {
        int64_t *cur = helios_balancer_alloc_lines(n * sizeof(int64_t));
        if (cur == NULL)
            return -1;
        free(st->current);
        st->current = cur;
    }
    for (size_t i = 0; i < n; i++)
        st->current[i] = 0;
    st->list = backends;
    st->n = n;
    return 0;
}

/* ---- hooks ---- */

/*
 * One smooth-WRR round among the candidates (usable, not tried by this
 * request), in list order. Backends left out do not take part in the
 * round: their current weight neither grows nor pays. Returns the chosen
 * index, or -1 when there was no candidate (nothing changed then).
 */
static int wrr_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    wrr_worker *st = c->wstate;
    size_t n = helios_balancer_size(api, backends);
    if (n == 0)
        return -1;
    if (backends != st->list && wrr_rebuild(st, backends, n) != 0) {
        if (st->oom_list != backends)
            api->log(HELIOS_LOG_ERROR, WRR_NAME,
                     "out of memory for %zu backends' weights; ignoring weights until it fits", n);
        st->oom_list = backends;
        return helios_balancer_scan(api, backends, n, tried, 0);
    }

    int best = -1;
    int64_t total = 0;
    for (int i = helios_balancer_scan(api, backends, n, tried, 0); i >= 0;
         i = helios_balancer_scan_next(api, backends, n, tried, 0, i)) {
        uint32_t weight = api->backend_weight(api->backends_at(backends, (size_t)i));
        if (weight == 0)
            weight = 1; /* the core allows 1..10000; never let a backend starve */
        st->current[i] += weight;
        total += weight;
        /* strictly greater: on a tie the earlier backend wins, as in nginx */
        if (best < 0 || st->current[i] > st->current[best])
            best = i;
    }
    if (best >= 0)
        st->current[best] -= total;
    return best;
}

/* ---- module descriptor ---- */

static const helios_balancer_hooks wrr_balancer_hooks = {
    .size = sizeof(helios_balancer_hooks),
    .pick = wrr_pick,         /* every upstream attempt, on the request's worker */
    .backends_changed = NULL, /* each worker notices the new list pointer in pick() */
};

static const helios_module wrr_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(WRR_NAME, "0.1.0"),
    .config_new = wrr_config_new,   /* refuses every key */
    .config_free = NULL,            /* config_new allocates nothing */
    .worker_init = wrr_worker_init, /* the worker's current weights */
    .worker_fini = wrr_worker_fini,
    .filter = NULL,
    .handler = NULL,
    .balancer = &wrr_balancer_hooks, /* used as an upstream's `balancer:` */
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &wrr_module;
}
