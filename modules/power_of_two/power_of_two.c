/*
 * power_of_two.c - "power of two choices": draw two different usable
 * backends at random and send the request to the one with fewer requests
 * in flight relative to its weight.
 *
 * Two random choices keep most of least_connections' benefit without
 * scanning the list (balls into n bins: the fullest bin holds about
 * log n / log log n with one random choice, log log n with two). And since
 * each worker draws its own pairs, workers picking at the same moment from
 * the same counts do not all pile onto one "least loaded" backend.
 *
 * Each worker has its own xorshift64* generator, seeded from the worker's
 * index and the time. Draws are by rejection (a drawn backend that is
 * unusable or already tried is drawn again), which is O(1) while most
 * backends are usable; after a few misses the pick falls back to counting
 * the candidates, O(n), which is exact however few are left.
 */
#include <stdalign.h>
#include <stdint.h>
#include <time.h>

#include <helios.h>
#include <helios/util/balancer.h>

#define P2_NAME "power_of_two"
#define P2_DRAWS 8 /* random draws per candidate before counting instead */

static const helios_host_api *api;

/* ---- configuration ---- */

/* No settings, no config struct: *cfg stays NULL. */
static int p2_config_new(const helios_conf *conf, void **cfg)
{
    return helios_balancer_config_none(api, conf, cfg);
}

/* ---- per-worker state ---- */

typedef struct p2_worker {
    alignas(HELIOS_BALANCER_CACHE_LINE) uint64_t rng; /* xorshift64* state, never 0 */
} p2_worker;

/* splitmix64's finaliser: spreads seeds that differ in a few bits. */
static uint64_t p2_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

static uint64_t p2_next(p2_worker *st)
{
    uint64_t x = st->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    st->rng = x;
    return x * 0x2545f4914f6cdd1du;
}

/* Uniform in [0, N) for 1 <= N <= UINT32_MAX (Lemire's multiply-shift;
 * the bias, N / 2^32, is far below anything a load test can see). */
static size_t p2_below(p2_worker *st, size_t n)
{
    return (size_t)(((p2_next(st) >> 32) * (uint64_t)n) >> 32);
}

static int p2_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    p2_worker *st = helios_balancer_wstate_new(api, P2_NAME, sizeof(p2_worker));
    if (st == NULL)
        return -1;
    /* Worker index so workers started together differ; wall-clock time so
     * runs and reloads differ. Not for anything secret. */
    struct timespec ts = {0, 0};
    timespec_get(&ts, TIME_UTC);
    uint64_t seed = p2_mix(((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec);
    seed = p2_mix(seed ^ api->worker_index(w) ^ ((uint64_t)api->now_ms(w) << 20));
    st->rng = seed != 0 ? seed : 0x9e3779b97f4a7c15u;
    *wstate = st;
    return 0;
}

/* ---- hooks ---- */

/* A, unless B has fewer requests in flight per weight. A wins ties: it was
 * drawn at random, so that favours no backend. */
static int p2_lighter(const helios_backends *backends, int a, int b)
{
    const helios_backend *ba = api->backends_at(backends, (size_t)a);
    const helios_backend *bb = api->backends_at(backends, (size_t)b);
    uint64_t wa = api->backend_weight(ba), wb = api->backend_weight(bb);
    wa = wa ? wa : 1; /* the core allows 1..10000; keep the comparison meaningful */
    wb = wb ? wb : 1;
    uint64_t ia = api->backend_inflight(ba), ib = api->backend_inflight(bb);
    /* ib/wb < ia/wa; 32-bit factors cannot overflow */
    return ib * wa < ia * wb ? b : a;
}

/*
 * Exact draw: counts the candidates (O(n)), then takes two different ones
 * by rank. Returns the only candidate, the lighter of two, or -1 for none.
 */
static int p2_pick_counting(p2_worker *st, const helios_backends *backends, size_t n,
                            const helios_tried *tried)
{
    size_t m = helios_balancer_count(api, backends, n, tried);
    if (m <= 1)
        return m == 1 ? helios_balancer_nth(api, backends, n, tried, 0) : -1;
    size_t ra = p2_below(st, m), rb = p2_below(st, m - 1);
    if (rb >= ra)
        rb++; /* uniform over the other m - 1 ranks */
    return p2_lighter(backends, helios_balancer_nth(api, backends, n, tried, ra),
                      helios_balancer_nth(api, backends, n, tried, rb));
}

/*
 * Two different candidates (usable, not tried by this request) drawn
 * uniformly, each draw retried while it hits a non-candidate; the lighter
 * one wins. When the draws keep missing, counts instead. -1 when there is
 * no candidate.
 */
static int p2_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    p2_worker *st = c->wstate;
    size_t n = helios_balancer_size(api, backends);
    if (n <= 1)
        return helios_balancer_scan(api, backends, n, tried, 0);

    int a = -1, b = -1;
    for (int k = 0; k < P2_DRAWS && a < 0; k++) {
        size_t i = p2_below(st, n);
        if (helios_balancer_candidate(api, backends, tried, i))
            a = (int)i;
    }
    for (int k = 0; a >= 0 && k < P2_DRAWS && b < 0; k++) {
        size_t i = p2_below(st, n - 1);
        if (i >= (size_t)a)
            i++; /* uniform over the backends other than A */
        if (helios_balancer_candidate(api, backends, tried, i))
            b = (int)i;
    }
    if (b < 0) /* few candidates (maybe one or none): count them */
        return p2_pick_counting(st, backends, n, tried);
    return p2_lighter(backends, a, b);
}

/* ---- module descriptor ---- */

static const helios_balancer_hooks p2_balancer_hooks = {
    .size = sizeof(helios_balancer_hooks),
    .pick = p2_pick,          /* every upstream attempt, on the request's worker */
    .backends_changed = NULL, /* nothing cached per backend: pick() reads the new list */
};

static const helios_module p2_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(P2_NAME, "0.1.0"),
    .config_new = p2_config_new,   /* refuses every key */
    .config_free = NULL,           /* config_new allocates nothing */
    .worker_init = p2_worker_init, /* the worker's random generator */
    .worker_fini = helios_balancer_worker_fini,
    .filter = NULL,
    .handler = NULL,
    .balancer = &p2_balancer_hooks, /* used as an upstream's `balancer:` */
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &p2_module;
}
