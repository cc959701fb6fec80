/*
 * round_robin.c - the default balancer: each worker hands requests to the
 * usable backends in turn.
 *
 * Every worker keeps its own position, on its own cache line, so picking
 * never touches memory another thread writes. Across workers the order is
 * only approximately round robin, which is what the kernel's accept
 * balancing gives us anyway. Weights are ignored (weighted_round_robin
 * honours them).
 */
#include <limits.h>
#include <stdalign.h>
#include <stdlib.h>

#include <helios.h>

#define RR_NAME "round_robin"
#define RR_CACHE_LINE 64

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const rr_keys[] = {NULL}; /* no settings */

/* No config struct: the instance has nothing to remember, *cfg stays NULL. */
static int rr_config_new(const helios_conf *conf, void **cfg)
{
    (void)cfg;
    if (api->conf_kind(conf) == HELIOS_CONF_NULL)
        return 0;
    return api->conf_check_keys(conf, rr_keys) > 0 ? -1 : 0;
}

/* ---- per-worker state ---- */

typedef struct rr_worker {
    alignas(RR_CACHE_LINE) size_t next; /* index to try first; written by its worker only */
} rr_worker;

static int rr_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    rr_worker *st = aligned_alloc(RR_CACHE_LINE, sizeof(rr_worker));
    if (st == NULL) {
        api->log(HELIOS_LOG_ERROR, RR_NAME, "out of memory allocating worker state");
        return -1;
    }
    /* Start each worker at a different backend, so that right after start
     * or reload the first requests of N workers do not all go to backend 0. */
    st->next = api->worker_index(w);
    *wstate = st;
    return 0;
}

static void rr_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    free(wstate);
}

/* ---- hooks ---- */

/*
 * Walks the list once from this worker's position. The first usable backend
 * not yet tried by this request wins. If every usable backend was already
 * tried, the first usable one is returned anyway: a retry on a backend that
 * failed once beats a 503 while it is still marked usable. -1 only when no
 * backend is usable.
 */
static int rr_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    rr_worker *st = c->wstate;
    size_t n = api->backends_count(backends);
    if (n == 0)
        return -1;
    if (n > INT_MAX)
        n = INT_MAX; /* pick() answers with an int index */

    size_t start = st->next % n; /* the list may have shrunk since last time */
    size_t chosen = n, fallback = n;
    for (size_t k = 0; k < n; k++) {
        size_t i = start + k < n ? start + k : start + k - n;
        if (!api->backend_usable(api->backends_at(backends, i)))
            continue;
        if (tried == NULL || !api->tried_has(tried, i)) {
            chosen = i;
            break;
        }
        if (fallback == n)
            fallback = i;
    }
    if (chosen == n)
        chosen = fallback;
    if (chosen == n)
        return -1;
    st->next = chosen + 1;
    return (int)chosen;
}

/* ---- module descriptor ---- */

static const helios_balancer_hooks rr_balancer_hooks = {
    .size = sizeof(helios_balancer_hooks),
    .pick = rr_pick,          /* every upstream attempt, on the request's worker */
    .backends_changed = NULL, /* nothing cached per backend: pick() reads the new list */
};

static const helios_module rr_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(RR_NAME, "0.1.0"),
    .config_new = rr_config_new,   /* refuses every key */
    .config_free = NULL,           /* config_new allocates nothing */
    .worker_init = rr_worker_init, /* the worker's position in the list */
    .worker_fini = rr_worker_fini,
    .filter = NULL,
    .handler = NULL,
    .balancer = &rr_balancer_hooks, /* used as an upstream's `balancer:` */
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &rr_module;
}
