/*
 * ip_hash.c - sends all requests with the same key (by default the client
 * address) to the same backend: hash(key) modulo the number of backends.
 *
 * The simplest sticky balancer, and the least stable one: the modulo is over
 * the whole backend list, so adding or removing one backend moves most keys
 * (about n/(n+1) of them when growing from n to n+1). Use
 * ip_hash_consistent or maglev when sessions should survive such changes.
 *
 * An unusable or already-tried backend is skipped the nginx way: rehash up
 * to n times, then scan the list. Nothing is kept per worker; weights are
 * ignored.
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

#define IPH_NAME "ip_hash"
/* Multiplier of the rehash sequence (Knuth's MMIX LCG); the +1 increment
 * makes it a full-period generator modulo 2^64. */
#define IPH_REHASH_MUL 6364136223846793005u

static const helios_host_api *api;

/* ---- configuration ---- */

/* The `key` setting and the request key come from the SDK's
 * helios/util/reqkey.h, shared with the other hash balancers so that
 * switching strategies keeps the same notion of "the same client". */
static const char *const iph_keys[] = {"key", NULL};

typedef struct iph_config {
    helios_reqkey key; /* what a request is hashed on */
} iph_config;

static int iph_config_new(const helios_conf *conf, void **cfg)
{
    int bad = api->conf_check_keys(conf, iph_keys) > 0;
    helios_reqkey key;
    if (helios_reqkey_parse(api, conf, &key) != 0)
        bad = 1;
    if (bad)
        return -1;
    iph_config *c = malloc(sizeof(*c));
    if (c == NULL) {
        api->log(HELIOS_LOG_ERROR, IPH_NAME, "out of memory allocating the configuration");
        return -1;
    }
    c->key = key;
    *cfg = c;
    return 0;
}

static void iph_config_free(void *cfg)
{
    free(cfg);
}

/* ---- hooks ---- */

/*
 * hash % n picks the backend. If it is not a candidate (unusable, or
 * already tried by this retry), the hash is advanced (h = h * a + 1,
 * re-mixed before the modulo so that the keys of one failed backend spread
 * over all the others) up to n times in all; then the list is scanned from
 * the first choice. Every step depends only on the key and the list, so all
 * workers make the same choice. -1 when there is no candidate.
 */
static int iph_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    const iph_config *cfg = c->cfg;
    size_t n = helios_balancer_size(api, backends);
    if (n == 0)
        return -1;

    uint64_t h = helios_reqkey_hash(api, c->req, &cfg->key);
    size_t first = (size_t)(h % n);
    size_t i = first;
    for (size_t attempt = 0; attempt < n; attempt++) {
        if (helios_balancer_candidate(api, backends, tried, i))
            return (int)i;
        h = h * IPH_REHASH_MUL + 1;
        i = (size_t)(helios_hash_mix(h) % n);
    }
    return helios_balancer_scan(api, backends, n, tried, first);
}

/* ---- module descriptor ---- */

static const helios_balancer_hooks iph_balancer_hooks = {
    .size = sizeof(helios_balancer_hooks),
    .pick = iph_pick,         /* every upstream attempt, on the request's worker */
    .backends_changed = NULL, /* nothing cached per backend: pick() reads the new list */
};

static const helios_module iph_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(IPH_NAME, "0.1.0"),
    .config_new = iph_config_new, /* `key` */
    .config_free = iph_config_free,
    .worker_init = NULL, /* no per-worker state: the choice is a pure function */
    .worker_fini = NULL,
    .filter = NULL,
    .handler = NULL,
    .balancer = &iph_balancer_hooks, /* used as an upstream's `balancer:` */
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &iph_module;
}
