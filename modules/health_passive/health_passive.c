/*
 * health_passive.c - ejects a backend after N failed attempts of real
 * traffic within a window, and lets it back in after a timeout.
 *
 * Failures are connect errors, resets, timeouts and the configured response
 * statuses (502, 503, 504 by default). The counters are per backend and
 * shared by every worker, without a lock: a fixed-size open-addressing table
 * keyed by backend pointer, filled with a compare-and-swap, whose window
 * start and failure count share one 64-bit word so a window rolls over and
 * counts in a single CAS.
 *
 * The worker whose failure crossed the threshold marks the backend
 * unhealthy and arms a timer on its own loop to readmit it. Pending timers
 * are listed in the worker's state so worker_fini can cancel them when the
 * worker leaves the generation: the config (and the table a timer points
 * into) is freed after that.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <helios.h>
#include <helios/util/conf.h>
#include <helios/util/backend_table.h>
#include <helios/util/exports.h>

#define HP_NAME "health_passive"
/* Backends tracked per instance; past that, extra backends are not watched
 * (logged once). A power of two: the probe sequence masks with it. */
#define HP_TABLE_CAP 4096
#define HP_FAILURES_MAX 65535 /* the count shares a word with the window start */
#define HP_TIME_BITS 48
#define HP_TIME_MASK ((UINT64_C(1) << HP_TIME_BITS) - 1)

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const hp_keys[] = {"failures", "window", "unhealthy_timeout", "statuses", NULL};

typedef struct hp_slot {
    _Atomic(helios_backend *) key; /* NULL = free; set once, by CAS */
    /* window start in ms (high 48 bits) | failures in that window (low 16) */
    _Atomic uint64_t window;
    _Atomic int ejected; /* 1 from ejection until readmission: one timer */
} hp_slot;

typedef struct hp_config {
    uint32_t failures;
    uint64_t window_ms;
    uint64_t unhealthy_timeout_ms;
    uint8_t statuses[100]; /* statuses[s - 500] = 1: status S counts as a failure */
    char why[96];          /* reason given to backend_set_healthy */
    _Atomic int full_logged;
    hp_slot *slots; /* HP_TABLE_CAP entries */
} hp_config;

/* A positive duration: 0 would eject forever or never count. */
static int hp_duration(const helios_conf *conf, const char *key, uint64_t def, uint64_t *out)
{
    int rc = api->conf_duration_ms(conf, key, def, out);
    if (rc < 0)
        return -1;
    if (*out == 0) {
        api->conf_error(api->conf_get(conf, key), "must be greater than 0, e.g. 10s");
        return -1;
    }
    return 0;
}

static void hp_config_free(void *p)
{
    hp_config *cfg = p;
    if (cfg == NULL)
        return;
    free(cfg->slots);
    free(cfg);
}

static int hp_config_new(const helios_conf *conf, void **out)
{
    if (api->conf_kind(conf) != HELIOS_CONF_NULL && api->conf_kind(conf) != HELIOS_CONF_MAP) {
        api->conf_error(conf, "expected a map of settings (failures, window, unhealthy_timeout, "
                              "statuses)");
        return -1;
    }
    hp_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        api->conf_error(conf, "out of memory");
        return -1;
    }
    long long failures = 5;
    int bad = api->conf_check_keys(conf, hp_keys) > 0;
    bad |= api->conf_int(conf, "failures", 5, 1, HP_FAILURES_MAX, &failures) < 0;
    bad |= hp_duration(conf, "window", 10000, &cfg->window_ms) < 0;
    bad |= hp_duration(conf, "unhealthy_timeout", 30000, &cfg->unhealthy_timeout_ms) < 0;
    bad |= helios_conf_statuses_5xx(api, conf, cfg->statuses) < 0;
    if (bad) {
        hp_config_free(cfg);
        return -1;
    }
    cfg->failures = (uint32_t)failures;
    if (cfg->window_ms % 1000 == 0)
        snprintf(cfg->why, sizeof(cfg->why), "passive: %u failures in %llus", cfg->failures,
                 (unsigned long long)(cfg->window_ms / 1000));
    else
        snprintf(cfg->why, sizeof(cfg->why), "passive: %u failures in %llums", cfg->failures,
                 (unsigned long long)cfg->window_ms);
    /* calloc gives NULL keys and zero words: a valid empty table */
    cfg->slots = calloc(HP_TABLE_CAP, sizeof(hp_slot));
    if (cfg->slots == NULL) {
        api->conf_error(conf, "out of memory");
        hp_config_free(cfg);
        return -1;
    }
    *out = cfg;
    return 0;
}

/* B's slot, claimed on first use; NULL when the table is full. */
static hp_slot *hp_slot_of(hp_config *cfg, helios_backend *b)
{
    long i = helios_backend_table_slot(cfg->slots, sizeof(hp_slot), HP_TABLE_CAP, b);
    if (i >= 0)
        return &cfg->slots[i];
    if (!atomic_exchange(&cfg->full_logged, 1))
        api->log(HELIOS_LOG_WARN, HP_NAME,
                 "more than %d backends: backend %s and later ones are not watched", HP_TABLE_CAP,
                 api->backend_name(b));
    return NULL;
}

/* ---- per-worker state: the readmission timers armed by this worker ---- */

typedef struct hp_pending hp_pending;

typedef struct hp_worker {
    helios_worker *w;
    hp_pending *head;
} hp_worker;

struct hp_pending {
    hp_pending *prev, *next;
    hp_worker *owner;
    helios_timer *timer;
    hp_slot *slot;
    helios_backend *backend;
};

static void hp_unlink(hp_pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        p->owner->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
}

static int hp_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    hp_worker *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        api->log(HELIOS_LOG_ERROR, HP_NAME, "out of memory allocating worker state");
        return -1;
    }
    st->w = w;
    *wstate = st;
    return 0;
}

/* The generation ends for this worker: its timers must not fire into a
 * config that is about to be freed. The backends go with the generation,
 * so nothing is left unhealthy that outlives it. */
static void hp_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    hp_worker *st = wstate;
    while (st->head) {
        hp_pending *p = st->head;
        hp_unlink(p);
        api->timer_cancel(p->timer);
        free(p);
    }
    free(st);
}

/* ---- hooks ---- */

static void hp_readmit(void *arg)
{
    hp_pending *p = arg;
    hp_unlink(p); /* the timer has fired: it is freed and must not be cancelled */
    /* A fresh window: failures from before the ejection do not count. */
    atomic_store(&p->slot->window, 0);
    atomic_store(&p->slot->ejected, 0);
    api->backend_set_healthy(p->backend, 1, "passive: unhealthy_timeout elapsed");
    free(p);
}

static void hp_eject(helios_ctx *c, hp_config *cfg, hp_slot *s, helios_backend *b)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&s->ejected, &expected, 1))
        return; /* another worker got there first and armed the timer */
    hp_worker *st = c->wstate;
    hp_pending *p = calloc(1, sizeof(*p));
    if (p != NULL) {
        p->timer = api->timer_add(c->worker, cfg->unhealthy_timeout_ms, hp_readmit, p);
        if (p->timer == NULL) {
            free(p);
            p = NULL;
        }
    }
    if (p == NULL) {
        /* Without a timer the backend would stay out for good: keep it in. */
        atomic_store(&s->ejected, 0);
        api->log(HELIOS_LOG_ERROR, HP_NAME, "cannot arm the readmission timer; backend %s stays in",
                 api->backend_name(b));
        return;
    }
    p->owner = st;
    p->slot = s;
    p->backend = b;
    p->next = st->head;
    if (st->head)
        st->head->prev = p;
    st->head = p;
    api->backend_set_healthy(b, 0, cfg->why);
    /* counted by the metrics module, when there is one (helios/util/exports.h) */
    const helios_backend_events *ev = api->export_get(HELIOS_EXPORT_BACKEND_EVENTS);
    if (ev != NULL && ev->size >= sizeof(*ev) && HELIOS_API_HAS(api, req_upstream))
        ev->event(HELIOS_BACKEND_EVENT_EJECTION, api->req_upstream(c->req), api->backend_name(b),
                  0);
}

static int hp_is_failure(const hp_config *cfg, int outcome, int status)
{
    switch (outcome) {
    case HELIOS_OUTCOME_CONNECT_FAILED:
    case HELIOS_OUTCOME_RESET:
    case HELIOS_OUTCOME_TIMEOUT: return 1;
    case HELIOS_OUTCOME_OK: return status >= 500 && status <= 599 && cfg->statuses[status - 500];
    default: /* a malformed response is the upstream's bug, not a sign it is down */ return 0;
    }
}

/* Distance from START to NOW in the 48-bit clock, signed: workers' cached
 * clocks differ by a few ms, so NOW may be slightly behind START. */
static int64_t hp_elapsed(uint64_t now, uint64_t start)
{
    uint64_t d = (now - start) & HP_TIME_MASK;
    return d & (UINT64_C(1) << (HP_TIME_BITS - 1)) ? (int64_t)(d | ~HP_TIME_MASK) : (int64_t)d;
}

static void hp_on_upstream_result(helios_ctx *c, helios_backend *b, int outcome, int status)
{
    hp_config *cfg = c->cfg;
    if (!hp_is_failure(cfg, outcome, status))
        return;
    hp_slot *s = hp_slot_of(cfg, b);
    if (s == NULL || atomic_load_explicit(&s->ejected, memory_order_relaxed))
        return;
    uint64_t now = api->now_ms(c->worker) & HP_TIME_MASK;
    uint64_t old = atomic_load_explicit(&s->window, memory_order_relaxed), next;
    uint32_t count;
    do {
        uint64_t start = old >> 16;
        count = (uint32_t)(old & 0xffff);
        if (old == 0 || hp_elapsed(now, start) >= (int64_t)cfg->window_ms) {
            start = now; /* the window opens at the first failure after the last one ended */
            count = 0;
        }
        if (count < HP_FAILURES_MAX)
            count++;
        next = start << 16 | count;
    } while (!atomic_compare_exchange_weak(&s->window, &old, next));
    if (count >= cfg->failures)
        hp_eject(c, cfg, s, b);
}

/* ---- module descriptor ---- */

static const helios_health_hooks hp_health_hooks = {
    .size = sizeof(helios_health_hooks),
    .on_upstream_result = hp_on_upstream_result, /* every attempt, on the request's worker */
};

static const helios_module hp_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(HP_NAME, "0.1.0"),
    .config_new = hp_config_new,   /* thresholds, statuses, and the per-backend table */
    .config_free = hp_config_free, /* after every worker ran worker_fini */
    .worker_init = hp_worker_init, /* the list of readmission timers this worker armed */
    .worker_fini = hp_worker_fini, /* cancels them */
    .filter = NULL,
    .handler = NULL,
    .balancer = NULL,
    .service = NULL,
    .health = &hp_health_hooks, /* listed in the global `modules:` */
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &hp_module;
}
