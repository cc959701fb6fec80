/*
 * latency_balancer.c - an example third-party heliosd module: a balancer
 * that sends each request to the backend that has answered fastest
 * lately, learning from nothing but its own hooks (ABI 1.3).
 *
 * pick() chooses, among the candidates, the backend with the lowest
 * moving average of attempt time; a backend with no sample yet is tried
 * first, and every `explore_every`-th pick goes round-robin instead, so a
 * backend that got faster is noticed. on_attempt_end() feeds the average:
 * the time to the last response byte of a successful attempt, or a
 * penalty for a failed one. Averages are per worker (no locks, no shared
 * cache lines): each worker learns on its own traffic.
 *
 * The per-attempt slot (c->rstate, 1.3) carries the backend list pick
 * chose from to on_attempt_end: a sample for a list that was replaced
 * meanwhile (a backend added or removed at run time) is dropped, since
 * its index may name another backend now.
 *
 * It uses nothing but the installed SDK (<helios.h> and the header-only
 * helios/util/balancer.h) and libc.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <helios.h>
#include <helios/util/balancer.h>

#define LB_NAME "latency_balancer"
#define LB_PENALTY_US 1000000 /* a failed attempt counts as a 1 s answer */

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const lb_keys[] = {"decay", "explore_every", NULL};

typedef struct lb_config {
    unsigned decay;         /* weight of a new sample, percent */
    unsigned explore_every; /* every Nth pick is round-robin; 0 never */
} lb_config;

static int lb_config_new(const helios_conf *conf, void **cfg)
{
    long long decay = 30, explore = 20;
    int bad = api->conf_check_keys(conf, lb_keys) != 0;
    bad |= api->conf_int(conf, "decay", 30, 1, 100, &decay) < 0;
    bad |= api->conf_int(conf, "explore_every", 20, 0, 1000000, &explore) < 0;
    if (bad)
        return -1;
    lb_config *c = malloc(sizeof(*c));
    if (c == NULL) {
        api->conf_error(NULL, "out of memory");
        return -1;
    }
    c->decay = (unsigned)decay;
    c->explore_every = (unsigned)explore;
    *cfg = c;
    return 0;
}

static void lb_config_free(void *cfg)
{
    free(cfg);
}

/* ---- per-worker state ---- */

typedef struct lb_worker {
    _Alignas(HELIOS_BALANCER_CACHE_LINE) const helios_backends *list; /* averages belong to it */
    size_t n;
    uint64_t *avg_us; /* [n] moving average per backend; 0 = no sample yet */
    unsigned long picks;
} lb_worker;

static int lb_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    (void)w;
    *wstate = helios_balancer_wstate_new(api, LB_NAME, sizeof(lb_worker));
    return *wstate ? 0 : -1;
}

static void lb_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    lb_worker *s = wstate;
    free(s->avg_us);
    free(s);
}

/* The averages for LIST, started afresh when the list was replaced.
 * Returns 0, or -1 when out of memory (the pick goes round-robin). */
static int lb_track(lb_worker *s, const helios_backends *list, size_t n)
{
    if (s->list == list && s->n == n)
        return 0;
    uint64_t *v = calloc(n ? n : 1, sizeof(*v));
    if (v == NULL)
        return -1;
    free(s->avg_us);
    s->avg_us = v;
    s->list = list;
    s->n = n;
    return 0;
}

/* ---- hooks ---- */

static int lb_pick(helios_ctx *c, const helios_backends *bs, const helios_tried *tried)
{
    const lb_config *cfg = c->cfg;
    lb_worker *s = c->wstate;
    size_t n = helios_balancer_size(api, bs);
    unsigned long nth = s->picks++;
    if (c->rstate) /* 1.3: remember which list the index below is for */
        *c->rstate = (void *)bs;
    if (lb_track(s, bs, n) != 0 ||
        (cfg->explore_every && nth % cfg->explore_every == cfg->explore_every - 1))
        return helios_balancer_scan(api, bs, n, tried, nth);
    int best = -1;
    for (int i = helios_balancer_scan(api, bs, n, tried, 0); i >= 0;
         i = helios_balancer_scan_next(api, bs, n, tried, 0, i)) {
        if (s->avg_us[i] == 0)
            return i; /* not measured yet: measure it */
        if (best < 0 || s->avg_us[i] < s->avg_us[best])
            best = i;
    }
    return best;
}

static void lb_attempt_end(helios_ctx *c, const helios_attempt *a)
{
    const lb_config *cfg = c->cfg;
    lb_worker *s = c->wstate;
    if (*c->rstate != (void *)s->list || a->index >= s->n)
        return; /* picked from a list that is gone */
    uint64_t sample;
    if (a->outcome == HELIOS_OUTCOME_OK && a->status < 500)
        sample = a->last_byte_us > 0 ? (uint64_t)a->last_byte_us : 1;
    else if (a->outcome == HELIOS_OUTCOME_CANCELLED)
        return; /* the client left: says nothing about the backend */
    else
        sample = LB_PENALTY_US;
    uint64_t *avg = &s->avg_us[a->index];
    *avg = *avg == 0 ? sample : (*avg * (100 - cfg->decay) + sample * cfg->decay) / 100;
    if (*avg == 0)
        *avg = 1;
}

static const helios_balancer_hooks lb_hooks = {
    .size = sizeof(helios_balancer_hooks),
    .pick = lb_pick,
    .on_attempt_end = lb_attempt_end,
};

static const helios_module lb_module = {
    HELIOS_MODULE_HEADER(LB_NAME, "1.0.0"), .config_new = lb_config_new,
    .config_free = lb_config_free,          .worker_init = lb_worker_init,
    .worker_fini = lb_worker_fini,          .balancer = &lb_hooks,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host; /* a core older than 1.3 refuses this module: no check needed */
    return &lb_module;
}
