/*
 * circuit_breaker.c - a breaker per backend: closed -> open after too many
 * failures in an interval -> half-open after a timeout -> closed after
 * enough successful trials (or open again on any failed one).
 *
 * The module decides; the core enforces: it keeps an open backend out of
 * every pick, admits at most max_requests trials at a time to a half-open
 * one, counts transitions and answers 503 with Retry-After when no backend
 * of an upstream is usable.
 *
 * The per-backend state is shared by every worker without a lock: a
 * fixed-size open-addressing table keyed by backend pointer, filled with a
 * compare-and-swap. The interval's start, failure count and attempt count
 * share one 64-bit word so a result is counted (and the interval rolled
 * over) in a single CAS; state changes are CASes too, so exactly one worker
 * makes each transition and arms the one timer that ends the open state.
 * Timers are listed in the arming worker's state; worker_fini cancels them
 * because the config a timer points into is freed after the generation.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include <helios.h>
#include <helios/util/conf.h>
#include <helios/util/backend_table.h>

#define CB_NAME "circuit_breaker"
/* Backends tracked per instance; past that, extra backends get no breaker
 * (logged once). A power of two: the probe sequence masks with it. */
#define CB_TABLE_CAP 4096
/* Layout of cb_slot.window: start ms (40 bits) | failures (12) | attempts (12). */
#define CB_TIME_BITS 40
#define CB_TIME_MASK ((UINT64_C(1) << CB_TIME_BITS) - 1)
#define CB_COUNT_MAX 4095

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const cb_keys[] = {"failures",          "failure_ratio", "min_requests",
                                      "interval",          "open_timeout",  "max_requests",
                                      "success_threshold", "statuses",      NULL};

typedef struct cb_slot {
    _Atomic(helios_backend *) key; /* NULL = free; set once, by CAS */
    _Atomic uint64_t window;       /* see CB_TIME_BITS; 0 = no interval open */
    _Atomic int state;             /* HELIOS_BREAKER_*, the module's view */
    _Atomic uint32_t successes;    /* successful trials while half-open */
    _Atomic uint32_t opens;        /* times opened: tags the timer of each opening */
    _Atomic int adopted;           /* the core's state was looked at (first result) */
} cb_slot;

typedef struct cb_config {
    uint32_t failures;     /* 0 = no count trigger */
    double failure_ratio;  /* 0 = no ratio trigger */
    uint32_t min_requests; /* attempts needed before the ratio counts */
    uint64_t interval_ms;
    uint64_t open_timeout_ms;
    uint32_t max_requests;
    uint32_t success_threshold;
    uint8_t statuses[100]; /* statuses[s - 500] = 1: status S is a failure */
    _Atomic int full_logged;
    cb_slot *slots; /* CB_TABLE_CAP entries */
} cb_config;

/* A ratio 0..1 written as a decimal number. */
static int cb_parse_ratio(const helios_conf *conf, double *out)
{
    const helios_conf *n = api->conf_get(conf, "failure_ratio");
    *out = 0;
    if (n == NULL)
        return 0;
    const char *s = api->conf_scalar(n);
    char *end = NULL;
    double v = s ? strtod(s, &end) : -1;
    if (s == NULL || *s == '\0' || *end != '\0' || !(v >= 0 && v <= 1)) {
        api->conf_error(n, "expected a number between 0 and 1 (0 = off), e.g. 0.5, got %s%s%s",
                        s ? "\"" : "", s ? s : "a non-scalar", s ? "\"" : "");
        return -1;
    }
    *out = v;
    return 0;
}

static int cb_duration(const helios_conf *conf, const char *key, uint64_t def, uint64_t *out)
{
    if (api->conf_duration_ms(conf, key, def, out) < 0)
        return -1;
    if (*out == 0) {
        api->conf_error(api->conf_get(conf, key), "must be greater than 0, e.g. 5s");
        return -1;
    }
    return 0;
}

static void cb_config_free(void *p)
{
    cb_config *cfg = p;
    if (cfg == NULL)
        return;
    free(cfg->slots);
    free(cfg);
}

static int cb_config_new(const helios_conf *conf, void **out)
{
    if (api->conf_kind(conf) != HELIOS_CONF_NULL && api->conf_kind(conf) != HELIOS_CONF_MAP) {
        api->conf_error(conf, "expected a map of settings (failures, interval, open_timeout, ...)");
        return -1;
    }
    cb_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        api->conf_error(conf, "out of memory");
        return -1;
    }
    long long failures, min_requests, max_requests, success_threshold;
    int bad = api->conf_check_keys(conf, cb_keys) > 0;
    bad |= api->conf_int(conf, "failures", 5, 0, CB_COUNT_MAX, &failures) < 0;
    bad |= cb_parse_ratio(conf, &cfg->failure_ratio) < 0;
    bad |= api->conf_int(conf, "min_requests", 10, 1, CB_COUNT_MAX, &min_requests) < 0;
    bad |= cb_duration(conf, "interval", 10000, &cfg->interval_ms) < 0;
    bad |= cb_duration(conf, "open_timeout", 5000, &cfg->open_timeout_ms) < 0;
    bad |= api->conf_int(conf, "max_requests", 1, 1, CB_COUNT_MAX, &max_requests) < 0;
    bad |= api->conf_int(conf, "success_threshold", 2, 1, CB_COUNT_MAX, &success_threshold) < 0;
    bad |= helios_conf_statuses_5xx(api, conf, cfg->statuses) < 0;
    if (!bad && failures == 0 && cfg->failure_ratio == 0) {
        api->conf_error(api->conf_get(conf, "failures"),
                        "the breaker could never open: set failures > 0 or a failure_ratio");
        bad = 1;
    }
    if (bad) {
        cb_config_free(cfg);
        return -1;
    }
    cfg->failures = (uint32_t)failures;
    cfg->min_requests = (uint32_t)min_requests;
    cfg->max_requests = (uint32_t)max_requests;
    cfg->success_threshold = (uint32_t)success_threshold;
    /* calloc gives NULL keys, zero words and CLOSED (0): a valid empty table */
    cfg->slots = calloc(CB_TABLE_CAP, sizeof(cb_slot));
    if (cfg->slots == NULL) {
        api->conf_error(conf, "out of memory");
        cb_config_free(cfg);
        return -1;
    }
    *out = cfg;
    return 0;
}

/* B's slot, claimed on first use; NULL when the table is full. */
static cb_slot *cb_slot_of(cb_config *cfg, helios_backend *b)
{
    long i = helios_backend_table_slot(cfg->slots, sizeof(cb_slot), CB_TABLE_CAP, b);
    if (i >= 0)
        return &cfg->slots[i];
    if (!atomic_exchange(&cfg->full_logged, 1))
        api->log(HELIOS_LOG_WARN, CB_NAME,
                 "more than %d backends: backend %s and later ones get no breaker", CB_TABLE_CAP,
                 api->backend_name(b));
    return NULL;
}

/* ---- per-worker state: the open-timeout timers armed by this worker ---- */

typedef struct cb_pending cb_pending;

typedef struct cb_worker {
    cb_pending *head;
} cb_worker;

struct cb_pending {
    cb_pending *prev, *next;
    cb_worker *owner;
    helios_timer *timer;
    cb_config *cfg;
    cb_slot *slot;
    helios_backend *backend;
    uint32_t tag; /* slot->opens when armed: a later opening has its own timer */
};

static void cb_unlink(cb_pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        p->owner->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
}

static int cb_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    (void)w;
    cb_worker *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        api->log(HELIOS_LOG_ERROR, CB_NAME, "out of memory allocating worker state");
        return -1;
    }
    *wstate = st;
    return 0;
}

/* The generation ends for this worker: its timers must not fire into a
 * config about to be freed. The backends end with the generation too. */
static void cb_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    cb_worker *st = wstate;
    while (st->head) {
        cb_pending *p = st->head;
        cb_unlink(p);
        api->timer_cancel(p->timer);
        free(p);
    }
    free(st);
}

/* ---- transitions ---- */

static void cb_half_open(cb_config *cfg, cb_slot *s, helios_backend *b, uint32_t tag)
{
    if (atomic_load(&s->opens) != tag)
        return; /* stale: the breaker closed and opened again since */
    atomic_store(&s->successes, 0);
    int expected = HELIOS_BREAKER_OPEN;
    if (atomic_compare_exchange_strong(&s->state, &expected, HELIOS_BREAKER_HALF_OPEN))
        api->backend_set_breaker(b, HELIOS_BREAKER_HALF_OPEN, cfg->max_requests);
}

static void cb_timer_fired(void *arg)
{
    cb_pending *p = arg;
    cb_unlink(p); /* the timer has fired: it is freed and must not be cancelled */
    cb_half_open(p->cfg, p->slot, p->backend, p->tag);
    free(p);
}

/* FROM -> OPEN, by the one worker whose CAS wins; that worker arms the timer. */
static void cb_open(helios_ctx *c, cb_config *cfg, cb_slot *s, helios_backend *b, int from)
{
    if (!atomic_compare_exchange_strong(&s->state, &from, HELIOS_BREAKER_OPEN))
        return;
    uint32_t tag = atomic_fetch_add(&s->opens, 1) + 1;
    api->backend_set_breaker(b, HELIOS_BREAKER_OPEN, 0);
    cb_worker *st = c->wstate;
    cb_pending *p = calloc(1, sizeof(*p));
    if (p != NULL) {
        p->timer = api->timer_add(c->worker, cfg->open_timeout_ms, cb_timer_fired, p);
        if (p->timer == NULL) {
            free(p);
            p = NULL;
        }
    }
    if (p == NULL) {
        /* Without a timer the backend would stay open for good: try it now. */
        api->log(HELIOS_LOG_ERROR, CB_NAME,
                 "cannot arm the open_timeout timer; backend %s goes half-open at once",
                 api->backend_name(b));
        cb_half_open(cfg, s, b, tag);
        return;
    }
    p->owner = st;
    p->cfg = cfg;
    p->slot = s;
    p->backend = b;
    p->tag = tag;
    p->next = st->head;
    if (st->head)
        st->head->prev = p;
    st->head = p;
}

/* ---- hooks ---- */

static int cb_is_failure(const cb_config *cfg, int outcome, int status)
{
    switch (outcome) {
    case HELIOS_OUTCOME_CONNECT_FAILED:
    case HELIOS_OUTCOME_RESET:
    case HELIOS_OUTCOME_TIMEOUT: return 1;
    case HELIOS_OUTCOME_OK: return status >= 500 && status <= 599 && cfg->statuses[status - 500];
    default: /* a malformed response: the upstream's bug, not a sign it is down */ return 0;
    }
}

/* Distance from START to NOW on the 40-bit clock, signed: workers' cached
 * clocks differ by a few ms, so NOW may be slightly behind START. */
static int64_t cb_elapsed(uint64_t now, uint64_t start)
{
    uint64_t d = (now - start) & CB_TIME_MASK;
    return d & (UINT64_C(1) << (CB_TIME_BITS - 1)) ? (int64_t)(d | ~CB_TIME_MASK) : (int64_t)d;
}

/* Counts one attempt in the current interval; returns 1 when it trips. */
static int cb_count(helios_ctx *c, const cb_config *cfg, cb_slot *s, int failed)
{
    uint64_t now = api->now_ms(c->worker) & CB_TIME_MASK;
    uint64_t old = atomic_load_explicit(&s->window, memory_order_relaxed), next;
    uint32_t fails, total;
    do {
        uint64_t start = old >> 24;
        fails = (uint32_t)(old >> 12) & CB_COUNT_MAX;
        total = (uint32_t)old & CB_COUNT_MAX;
        if (old == 0 || cb_elapsed(now, start) >= (int64_t)cfg->interval_ms) {
            start = now;
            fails = total = 0;
        }
        if (total == CB_COUNT_MAX) {
            /* Saturated: halve both, which keeps the ratio. */
            fails /= 2;
            total /= 2;
        }
        total++;
        fails += failed ? 1 : 0;
        next = start << 24 | (uint64_t)fails << 12 | total;
    } while (!atomic_compare_exchange_weak(&s->window, &old, next));
    if (!failed)
        return 0;
    if (cfg->failures > 0 && fails >= cfg->failures)
        return 1;
    return cfg->failure_ratio > 0 && total >= cfg->min_requests &&
           (double)fails >= cfg->failure_ratio * (double)total;
}

static void cb_on_upstream_result(helios_ctx *c, helios_backend *b, int outcome, int status)
{
    cb_config *cfg = c->cfg;
    cb_slot *s = cb_slot_of(cfg, b);
    if (s == NULL)
        return;
    /* A breaker half-open in the core before this instance saw the backend
     * was carried over a reload: its trials are this instance's to judge. */
    int fresh = 0;
    if (atomic_load_explicit(&s->adopted, memory_order_relaxed) == 0 &&
        atomic_compare_exchange_strong(&s->adopted, &fresh, 1) &&
        api->backend_breaker(b) == HELIOS_BREAKER_HALF_OPEN) {
        int closed = HELIOS_BREAKER_CLOSED;
        atomic_compare_exchange_strong(&s->state, &closed, HELIOS_BREAKER_HALF_OPEN);
    }
    int failed = cb_is_failure(cfg, outcome, status);
    switch (atomic_load(&s->state)) {
    case HELIOS_BREAKER_CLOSED:
        if (cb_count(c, cfg, s, failed))
            cb_open(c, cfg, s, b, HELIOS_BREAKER_CLOSED);
        break;
    case HELIOS_BREAKER_HALF_OPEN:
        if (failed) {
            cb_open(c, cfg, s, b, HELIOS_BREAKER_HALF_OPEN);
        } else if (atomic_fetch_add(&s->successes, 1) + 1 == cfg->success_threshold) {
            atomic_store(&s->window, 0); /* a fresh interval after closing */
            int expected = HELIOS_BREAKER_HALF_OPEN;
            if (atomic_compare_exchange_strong(&s->state, &expected, HELIOS_BREAKER_CLOSED))
                api->backend_set_breaker(b, HELIOS_BREAKER_CLOSED, 0);
        }
        break;
    default:
        /* OPEN: results of attempts that started before it opened say
         * nothing new; the timer decides when to try again. */
        break;
    }
}

/* ---- module descriptor ---- */

static const helios_health_hooks cb_health_hooks = {
    .size = sizeof(helios_health_hooks),
    .on_upstream_result = cb_on_upstream_result, /* every attempt, on the request's worker */
};

static const helios_module cb_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(CB_NAME, "0.1.0"),
    .config_new = cb_config_new,   /* thresholds, timeouts, and the per-backend table */
    .config_free = cb_config_free, /* after every worker ran worker_fini */
    .worker_init = cb_worker_init, /* the list of open_timeout timers this worker armed */
    .worker_fini = cb_worker_fini, /* cancels them */
    .filter = NULL,
    .handler = NULL,
    .balancer = NULL,
    .service = NULL,
    .health = &cb_health_hooks, /* listed in the global `modules:` */
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &cb_module;
}
