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
#include <stdalign.h>

#include <helios.h>
#include <helios/util/balancer.h>

#define RR_NAME "round_robin"

static const helios_host_api *api;

/* ---- configuration ---- */

/* No settings, no config struct: *cfg stays NULL. */
static int rr_config_new(const helios_conf *conf, void **cfg)
{
    return helios_balancer_config_none(api, conf, cfg);
}

/* ---- per-worker state ---- */

typedef struct rr_worker {
    alignas(HELIOS_BALANCER_CACHE_LINE) size_t next; /* index to try first; its worker's only */
} rr_worker;

static int rr_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    rr_worker *st = helios_balancer_wstate_new(api, RR_NAME, sizeof(rr_worker));
    if (st == NULL)
        return -1;
    /* Start each worker at a different backend, so that right after start
     * or reload the first requests of N workers do not all go to backend 0. */
    st->next = api->worker_index(w);
    *wstate = st;
    return 0;
}

/* ---- hooks ---- */

/* The first candidate (usable, not tried by this request) from this
 * worker's position on; the next pick starts after it. */
static int rr_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    rr_worker *st = c->wstate;
    size_t n = helios_balancer_size(api, backends);
    int chosen = helios_balancer_scan(api, backends, n, tried, st->next);
    if (chosen >= 0)
        st->next = (size_t)chosen + 1;
    return chosen;
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
    .worker_fini = helios_balancer_worker_fini,
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
