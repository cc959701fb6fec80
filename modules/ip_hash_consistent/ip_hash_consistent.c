/*
 * ip_hash_consistent.c - sticky balancing with Jump Consistent Hash (Lamping
 * and Veach, 2014, arXiv:1406.2294) over the backend list in the order
 * given.
 *
 * Growing the list from n to n+1 backends at the end moves only the keys
 * that the new backend takes, 1/(n+1) of them; shrinking from the end moves
 * only the removed backend's keys. Jump hash numbers backends by position,
 * so removing one from the middle shifts the ones after it and moves more:
 * drain such a backend rather than remove it (a drained backend is only
 * skipped, which moves only its keys, below).
 *
 * Every key has a fixed, deterministic sequence of candidates: candidate 0 is
 * jump(h0, n), candidate k is jump(hk, n) with hk = mix(h(k-1) + golden).
 * A request goes to its first candidate that is usable and not yet tried.
 * So when a backend becomes unusable, exactly the keys it served move (each
 * to its next candidate, spread evenly over the others) and come back when
 * it recovers; keys on healthy backends stay put. Nothing is kept per
 * worker; weights are ignored.
 */
#define _POSIX_C_SOURCE 200809L /* netinet/in.h types with -std=c17 */

#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <helios.h>
#include <helios/util/balancer.h>
#include <helios/util/reqkey.h>

#define JCH_NAME "ip_hash_consistent"
/* Candidates tried before the last-resort step (see jch_pick). With half of
 * the backends down, all of them miss with probability 2^-32. */
#define JCH_CANDIDATES 32
/* 2^64 / golden ratio: steps the candidate key (as in splitmix64). */
#define JCH_GOLDEN 0x9e3779b97f4a7c15u

static const helios_host_api *api;

/* ---- configuration ---- */

/* The `key` setting and the request key come from the SDK's
 * helios/util/reqkey.h, shared with the other hash balancers so that
 * switching strategies keeps the same notion of "the same client". */
static const char *const jch_keys[] = {"key", NULL};

typedef struct jch_config {
    helios_reqkey key; /* what a request is hashed on */
} jch_config;

static int jch_config_new(const helios_conf *conf, void **cfg)
{
    int bad = api->conf_check_keys(conf, jch_keys) > 0;
    helios_reqkey key;
    if (helios_reqkey_parse(api, conf, &key) != 0)
        bad = 1;
    if (bad)
        return -1;
    jch_config *c = malloc(sizeof(*c));
    if (c == NULL) {
        api->log(HELIOS_LOG_ERROR, JCH_NAME, "out of memory allocating the configuration");
        return -1;
    }
    c->key = key;
    *cfg = c;
    return 0;
}

static void jch_config_free(void *cfg)
{
    free(cfg);
}

/* ---- hooks ---- */

/*
 * Jump Consistent Hash, exactly as published: the bucket in [0, N) for KEY.
 * O(ln N) steps, no memory. Going from N to N+1 buckets changes the result
 * for 1/(N+1) of the keys, all of which move to bucket N.
 */
static int jch_jump(uint64_t key, int n)
{
    int64_t b = -1, j = 0;
    while (j < n) {
        b = j;
        key = key * 2862933555777941757u + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (int)b;
}

/*
 * The first candidate (usable, not tried by this request) of the key's
 * sequence (see the top of the file). If the first JCH_CANDIDATES
 * candidates all miss (most backends down or tried), the last resort is
 * jump(next key, m) over the m candidates in list order: still
 * deterministic, but it moves keys whenever that set changes. -1 when there
 * is no candidate.
 */
static int jch_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    const jch_config *cfg = c->cfg;
    size_t n = helios_balancer_size(api, backends);
    if (n == 0)
        return -1;

    uint64_t h = helios_reqkey_hash(api, c->req, &cfg->key);
    for (int k = 0; k < JCH_CANDIDATES; k++) {
        size_t i = (size_t)jch_jump(h, (int)n);
        if (helios_balancer_candidate(api, backends, tried, i))
            return (int)i;
        h = helios_hash_mix(h + JCH_GOLDEN);
    }
    size_t m = helios_balancer_count(api, backends, n, tried);
    if (m == 0)
        return -1;
    return helios_balancer_nth(api, backends, n, tried, (size_t)jch_jump(h, (int)m));
}

/* ---- module descriptor ---- */

static const helios_balancer_hooks jch_balancer_hooks = {
    .size = sizeof(helios_balancer_hooks),
    .pick = jch_pick,         /* every upstream attempt, on the request's worker */
    .backends_changed = NULL, /* nothing cached per backend: pick() reads the new list */
};

static const helios_module jch_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(JCH_NAME, "0.1.0"),
    .config_new = jch_config_new, /* `key` */
    .config_free = jch_config_free,
    .worker_init = NULL, /* no per-worker state: the choice is a pure function */
    .worker_fini = NULL,
    .filter = NULL,
    .handler = NULL,
    .balancer = &jch_balancer_hooks, /* used as an upstream's `balancer:` */
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &jch_module;
}
