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
#include <limits.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <helios.h>

#define P2_NAME "power_of_two"
#define P2_CACHE_LINE 64
#define P2_DRAWS 8 /* random draws per candidate before counting instead */

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const p2_keys[] = {NULL}; /* no settings */

/* No config struct: the instance has nothing to remember, *cfg stays NULL. */
static int p2_config_new(const helios_conf *conf, void **cfg)
{
    (void)cfg;
    if (api->conf_kind(conf) == HELIOS_CONF_NULL)
        return 0;
    return api->conf_check_keys(conf, p2_keys) > 0 ? -1 : 0;
}

/* ---- per-worker state ---- */

typedef struct p2_worker {
    alignas(P2_CACHE_LINE) uint64_t rng; /* xorshift64* state, never 0 */
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
    p2_worker *st = aligned_alloc(P2_CACHE_LINE, sizeof(p2_worker));
    if (st == NULL) {
        api->log(HELIOS_LOG_ERROR, P2_NAME, "out of memory allocating worker state");
        return -1;
    }
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

static void p2_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    free(wstate);
}

/* ---- hooks ---- */

/* Usable and not in TRIED (NULL: none). */
static int p2_candidate(const helios_backends *backends, size_t i, const helios_tried *tried)
{
    return api->backend_usable(api->backends_at(backends, i)) &&
           (tried == NULL || !api->tried_has(tried, i));
}

/* A, unless B has fewer requests in flight per weight. A wins ties: it was
 * drawn at random, so that favours no backend. */
static size_t p2_lighter(const helios_backends *backends, size_t a, size_t b)
{
    const helios_backend *ba = api->backends_at(backends, a);
    const helios_backend *bb = api->backends_at(backends, b);
    uint64_t wa = api->backend_weight(ba), wb = api->backend_weight(bb);
    wa = wa ? wa : 1; /* the core allows 1..10000; keep the comparison meaningful */
    wb = wb ? wb : 1;
    uint64_t ia = api->backend_inflight(ba), ib = api->backend_inflight(bb);
    /* ib/wb < ia/wa; 32-bit factors cannot overflow */
    return ib * wa < ia * wb ? b : a;
}

/*
 * Exact draw: counts the candidates (O(n)), then takes two different ones
 * by rank. Returns the only candidate, the lighter of two, or N for none.
 */
static size_t p2_choose_counting(p2_worker *st, const helios_backends *backends, size_t n,
                                 const helios_tried *tried)
{
    size_t m = 0, last = n;
    for (size_t i = 0; i < n; i++)
        if (p2_candidate(backends, i, tried)) {
            m++;
            last = i;
        }
    if (m <= 1)
        return last;

    size_t ra = p2_below(st, m), rb = p2_below(st, m - 1);
    if (rb >= ra)
        rb++; /* uniform over the other m - 1 ranks */
    size_t a = n, b = n, rank = 0;
    for (size_t i = 0; i < n && (a == n || b == n); i++) {
        if (!p2_candidate(backends, i, tried))
            continue;
        if (rank == ra)
            a = i;
        else if (rank == rb)
            b = i;
        rank++;
    }
    return p2_lighter(backends, a, b);
}

/*
 * Two different candidates drawn uniformly (each draw retried while it
 * hits a non-candidate), the lighter one wins. Returns N for no candidate.
 */
static size_t p2_choose(p2_worker *st, const helios_backends *backends, size_t n,
                        const helios_tried *tried)
{
    if (n == 1)
        return p2_candidate(backends, 0, tried) ? 0 : n;

    size_t a = n, b = n;
    for (int k = 0; k < P2_DRAWS && a == n; k++) {
        size_t i = p2_below(st, n);
        if (p2_candidate(backends, i, tried))
            a = i;
    }
    for (int k = 0; a != n && k < P2_DRAWS && b == n; k++) {
        size_t i = p2_below(st, n - 1);
        if (i >= a)
            i++; /* uniform over the backends other than A */
        if (p2_candidate(backends, i, tried))
            b = i;
    }
    if (b == n) /* few candidates (maybe one or none): count them */
        return p2_choose_counting(st, backends, n, tried);
    return p2_lighter(backends, a, b);
}

/*
 * Two random choices among the usable backends this request has not tried.
 * If it has tried them all, among all usable ones: a retry on a backend
 * that failed once beats a 503 while it is still marked usable (the core
 * decides whether to use it). -1 only when no backend is usable.
 */
static int p2_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    p2_worker *st = c->wstate;
    size_t n = api->backends_count(backends);
    if (n == 0)
        return -1;
    if (n > INT_MAX)
        n = INT_MAX; /* pick() answers with an int index */

    size_t chosen = p2_choose(st, backends, n, tried);
    if (chosen == n && tried != NULL)
        chosen = p2_choose(st, backends, n, NULL);
    return chosen == n ? -1 : (int)chosen;
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
    .worker_fini = p2_worker_fini,
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
