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
#include <limits.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>

#include <helios.h>

#define WRR_NAME "weighted_round_robin"
#define WRR_CACHE_LINE 64

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const wrr_keys[] = {NULL}; /* no settings */

/* No config struct: the instance has nothing to remember, *cfg stays NULL. */
static int wrr_config_new(const helios_conf *conf, void **cfg)
{
    (void)cfg;
    if (api->conf_kind(conf) == HELIOS_CONF_NULL)
        return 0;
    return api->conf_check_keys(conf, wrr_keys) > 0 ? -1 : 0;
}

/* ---- per-worker state ---- */

typedef struct wrr_worker {
    /* The list CURRENT is indexed by. Lists are immutable and a pointer is
     * never reused for another list while the generation lives, so a
     * different pointer means "rebuild". */
    alignas(WRR_CACHE_LINE) const helios_backends *list;
    size_t n;                        /* entries in CURRENT */
    int64_t *current;                /* smooth-WRR current weight per backend index */
    const helios_backends *oom_list; /* list we failed to rebuild for: log once */
} wrr_worker;

static int wrr_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    (void)w;
    wrr_worker *st = aligned_alloc(WRR_CACHE_LINE, sizeof(wrr_worker));
    if (st == NULL) {
        api->log(HELIOS_LOG_ERROR, WRR_NAME, "out of memory allocating worker state");
        return -1;
    }
    *st = (wrr_worker){.list = NULL, .n = 0, .current = NULL, .oom_list = NULL};
    *wstate = st;
    return 0;
}

static void wrr_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    wrr_worker *st = wstate;
    free(st->current);
    free(st);
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
        size_t bytes = n * sizeof(int64_t);
        bytes = (bytes + WRR_CACHE_LINE - 1) / WRR_CACHE_LINE * WRR_CACHE_LINE;
        int64_t *cur = aligned_alloc(WRR_CACHE_LINE, bytes);
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
 * One smooth-WRR round over the usable backends, leaving out those in
 * TRIED (NULL: none). Backends left out do not take part in the round:
 * their current weight neither grows nor pays. Returns the chosen index,
 * or N when there was no candidate (nothing changed then).
 */
static size_t wrr_round(int64_t *current, const helios_backends *backends, size_t n,
                        const helios_tried *tried)
{
    size_t best = n;
    int64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const helios_backend *b = api->backends_at(backends, i);
        if (!api->backend_usable(b) || (tried != NULL && api->tried_has(tried, i)))
            continue;
        uint32_t weight = api->backend_weight(b);
        if (weight == 0)
            weight = 1; /* the core allows 1..10000; never let a backend starve */
        current[i] += weight;
        total += weight;
        /* strictly greater: on a tie the earlier backend wins, as in nginx */
        if (best == n || current[i] > current[best])
            best = i;
    }
    if (best != n)
        current[best] -= total;
    return best;
}

/* The first usable backend not in TRIED, else the first usable one, else
 * -1: what pick() falls back to when it cannot keep weights. */
static int wrr_first_usable(const helios_backends *backends, size_t n, const helios_tried *tried)
{
    int fallback = -1;
    for (size_t i = 0; i < n; i++) {
        if (!api->backend_usable(api->backends_at(backends, i)))
            continue;
        if (tried == NULL || !api->tried_has(tried, i))
            return (int)i;
        if (fallback < 0)
            fallback = (int)i;
    }
    return fallback;
}

/*
 * A round among the usable backends this request has not tried. If it has
 * tried them all, a round among all usable ones: a retry on a backend that
 * failed once beats a 503 while it is still marked usable (the core
 * decides whether to use it). -1 only when no backend is usable.
 */
static int wrr_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    wrr_worker *st = c->wstate;
    size_t n = api->backends_count(backends);
    if (n == 0)
        return -1;
    if (n > INT_MAX)
        n = INT_MAX; /* pick() answers with an int index */

    if (backends != st->list && wrr_rebuild(st, backends, n) != 0) {
        if (st->oom_list != backends)
            api->log(HELIOS_LOG_ERROR, WRR_NAME,
                     "out of memory for %zu backends' weights; ignoring weights until it fits", n);
        st->oom_list = backends;
        return wrr_first_usable(backends, n, tried);
    }

    size_t chosen = wrr_round(st->current, backends, n, tried);
    if (chosen == n && tried != NULL)
        chosen = wrr_round(st->current, backends, n, NULL);
    return chosen == n ? -1 : (int)chosen;
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
