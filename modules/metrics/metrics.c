/*
 * metrics.c - Prometheus metrics: counts every finished request (filter
 * kind, on_log) and serves the text exposition format 0.0.4 (service kind),
 * on its own libmicrohttpd listener or through admin_api's.
 *
 * Hot path: a worker writes only its own shard. A shard is a list of series
 * (one per route and upstream label pair), each on its own cache lines,
 * appended by that worker alone and published with a release store; the
 * counters inside are bumped with a relaxed load and store (single writer,
 * so no read-modify-write and no lock). The scrape thread walks every
 * shard's list with acquire loads, reads the counters relaxed, and sums.
 * Finding the series of a request is a direct-mapped cache keyed by the
 * route's and upstream's name pointers (stable for a generation, so the
 * cache lives in the per-generation worker state); a miss compares strings
 * along the shard's list and appends on a first sight.
 *
 * Lifetime: shards and series live in a store that outlives configuration
 * generations (the module is never unloaded). A reload with the same
 * `buckets` reuses the store, so counters carry on and Prometheus sees no
 * reset; a reload that changes `buckets` starts a new store (a reset, since
 * the histograms' shape changed). The store is freed with the last
 * generation using it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include <helios.h>
#include <helios/util/exports.h>

#define MX_NAME "metrics"
#define MX_VERSION "1.0.0"
#define MX_MAX_WORKERS 256 /* the core's own limit on `workers:` */
#define MX_MAX_BUCKETS 64  /* configured bucket bounds, +Inf excluded */
#define MX_MAX_SERIES 4096 /* route x upstream pairs per worker */
#define MX_CACHE_SLOTS 64  /* per worker: name pointers -> series */
#define MX_LABEL_MAX 256   /* bytes of a route or upstream name kept */
#define MX_LISTEN_DEFAULT "127.0.0.1:9100"
#define MX_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

static const helios_host_api *api;

static const double mx_default_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                            0.1,    0.25,  0.5,    1,     2.5,  5,     10};

/* Status classes: the `code` label. Index 0 is a request that ended with no
 * response status (client gone before a response started). */
enum { MX_CLASSES = 6 };
static const char *const mx_class_names[MX_CLASSES] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};

/* ---- process-lifetime storage ---- */

/*
 * One route x upstream pair seen by one worker. Written by that worker
 * only; read by scrapes. next, route and upstream never change once the
 * series is published. The counters array holds, in order: latency
 * buckets (nb + 1, the last is +Inf), upstream latency buckets (nb + 1).
 */
typedef struct mx_series {
    struct mx_series *next;
    char *route;
    char *upstream;
    _Atomic uint64_t code[MX_CLASSES];
    _Atomic uint64_t bytes_in;
    _Atomic uint64_t bytes_out;
    _Atomic uint64_t retries;
    _Atomic uint64_t limited;
    _Atomic uint64_t lat_sum_us;
    _Atomic uint64_t up_sum_us;
    _Atomic uint64_t hist[]; /* 2 * (nb + 1) */
} mx_series;

/* One worker's series, on its own cache line. */
typedef struct mx_shard {
    _Alignas(64) _Atomic(mx_series *) head;
    _Atomic uint64_t dropped; /* requests not counted: MX_MAX_SERIES reached */
    unsigned nseries;         /* worker only */
} mx_shard;

typedef struct mx_store {
    struct mx_store *next; /* list of live stores (main thread) */
    unsigned refs;         /* configurations using it (main thread) */
    size_t nb;
    double le[MX_MAX_BUCKETS];      /* bucket bounds, seconds */
    uint64_t le_us[MX_MAX_BUCKETS]; /* the same, whole microseconds (floor) */
    _Atomic(mx_shard *) shards[MX_MAX_WORKERS];
} mx_store;

static mx_store *mx_stores; /* main thread only */

static size_t mx_series_size(size_t nb)
{
    size_t n = sizeof(mx_series) + 2 * (nb + 1) * sizeof(uint64_t);
    return (n + 63) & ~(size_t)63; /* whole cache lines: no sharing */
}

static void mx_store_free(mx_store *st)
{
    for (size_t i = 0; i < MX_MAX_WORKERS; i++) {
        mx_shard *sh = atomic_load_explicit(&st->shards[i], memory_order_acquire);
        if (sh == NULL)
            continue;
        mx_series *s = atomic_load_explicit(&sh->head, memory_order_acquire);
        while (s != NULL) {
            mx_series *next = s->next;
            free(s->route);
            free(s->upstream);
            free(s);
            s = next;
        }
        free(sh);
    }
    free(st);
}

/* The store for these bucket bounds: a live one with the same bounds, or a
 * new one. Main thread (config_new). */
static mx_store *mx_store_get(const double *le, size_t nb)
{
    for (mx_store *st = mx_stores; st != NULL; st = st->next) {
        if (st->nb == nb && memcmp(st->le, le, nb * sizeof(double)) == 0) {
            st->refs++;
            return st;
        }
    }
    mx_store *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    st->nb = nb;
    for (size_t i = 0; i < nb; i++) {
        st->le[i] = le[i];
        st->le_us[i] = (uint64_t)floor(le[i] * 1e6 + 1e-6);
    }
    for (size_t i = 0; i < MX_MAX_WORKERS; i++)
        atomic_init(&st->shards[i], NULL);
    st->refs = 1;
    st->next = mx_stores;
    mx_stores = st;
    return st;
}

static void mx_store_put(mx_store *st)
{
    if (st == NULL || --st->refs > 0)
        return;
    for (mx_store **pp = &mx_stores; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    }
    mx_store_free(st);
}

/* ---- configuration ---- */

static const char *const mx_keys[] = {"listen", "path", "buckets", NULL};

typedef struct mx_config {
    mx_store *store;
    int admin;                    /* listen: admin */
    struct sockaddr_storage addr; /* own listener */
    char listen[128];
    char *path;
    struct MHD_Daemon *daemon;       /* service start .. stop */
    helios_prometheus_export export; /* listen: admin */
} mx_config;

/* "1.2.3.4:80" or "[::1]:80" into SS. Returns 0, -1 when malformed. */
static int mx_parse_listen(const char *s, struct sockaddr_storage *ss)
{
    char host[64];
    const char *colon;
    size_t hl;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        hl = (size_t)(close - s - 1);
        if (hl == 0 || hl >= sizeof(host))
            return -1;
        memcpy(host, s + 1, hl);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -1;
        hl = (size_t)(colon - s);
        if (hl == 0 || hl >= sizeof(host))
            return -1;
        memcpy(host, s, hl);
    }
    host[hl] = '\0';
    const char *ps = colon + 1;
    if (*ps == '\0' || strspn(ps, "0123456789") != strlen(ps) || strlen(ps) > 5)
        return -1;
    long port = strtol(ps, NULL, 10);
    if (port < 1 || port > 65535)
        return -1;
    memset(ss, 0, sizeof(*ss));
    if (s[0] == '[') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            return -1;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return -1;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
    }
    return 0;
}

/* `buckets:` into LE and NB. Returns 0, -1 after recording errors. */
static int mx_parse_buckets(const helios_conf *conf, double *le, size_t *nb)
{
    const helios_conf *n = api->conf_get(conf, "buckets");
    if (n == NULL) {
        *nb = sizeof(mx_default_buckets) / sizeof(mx_default_buckets[0]);
        memcpy(le, mx_default_buckets, sizeof(mx_default_buckets));
        return 0;
    }
    if (api->conf_kind(n) != HELIOS_CONF_SEQ) {
        api->conf_error(n, "must be a list of bucket upper bounds in seconds, e.g. [0.01, 0.1, 1]");
        return -1;
    }
    size_t len = api->conf_len(n);
    if (len == 0 || len > MX_MAX_BUCKETS) {
        api->conf_error(n, "must list 1 to %d bucket bounds (+Inf is implicit), got %zu",
                        MX_MAX_BUCKETS, len);
        return -1;
    }
    int bad = 0;
    double prev = 0; /* the last valid bound, compared when nprev > 0 */
    size_t nprev = 0;
    for (size_t i = 0; i < len; i++) {
        const helios_conf *item = api->conf_at(n, i);
        const char *s = api->conf_scalar(item);
        char *end = NULL;
        double v = 0;
        if (s != NULL && *s != '\0') {
            errno = 0;
            v = strtod(s, &end);
        }
        if (s == NULL || *s == '\0' || end == NULL || *end != '\0' || errno != 0 || !isfinite(v)) {
            api->conf_error(item, "not a number of seconds: bucket bounds are finite numbers "
                                  "(+Inf is implicit)");
            bad = 1;
            continue;
        }
        if (v <= 0) {
            api->conf_error(item, "bucket bound %g must be greater than 0", v);
            bad = 1;
            continue;
        }
        if (nprev > 0 && v <= prev) {
            api->conf_error(item, "bucket bounds must increase strictly: %g after %g", v, prev);
            bad = 1;
        }
        prev = v;
        nprev++;
        le[i] = v;
    }
    *nb = len;
    return bad ? -1 : 0;
}

static void mx_config_free(void *cfg)
{
    mx_config *c = cfg;
    if (c == NULL)
        return;
    mx_store_put(c->store);
    free(c->path);
    free(c);
}

static int mx_config_new(const helios_conf *conf, void **cfg)
{
    int bad = api->conf_check_keys(conf, mx_keys) > 0;
    const char *listen = NULL, *path = NULL;
    int listen_ok = api->conf_str(conf, "listen", MX_LISTEN_DEFAULT, &listen) >= 0;
    int path_ok = api->conf_str(conf, "path", "/metrics", &path) >= 0;
    if (!listen_ok || !path_ok)
        bad = 1; /* the getter reported it */
    mx_config *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        api->log(HELIOS_LOG_ERROR, MX_NAME, "out of memory");
        return -1;
    }
    if (!listen_ok) {
        /* reported */
    } else if (strcmp(listen, "admin") == 0) {
        c->admin = 1;
    } else if (strlen(listen) >= sizeof(c->listen) || mx_parse_listen(listen, &c->addr) != 0) {
        api->conf_error(api->conf_get(conf, "listen"),
                        "expected IPV4:PORT, [IPV6]:PORT (numeric addresses) or `admin`");
        bad = 1;
    } else {
        snprintf(c->listen, sizeof(c->listen), "%s", listen);
    }
    if (path_ok && (path[0] != '/' || strpbrk(path, " ?#") != NULL)) {
        api->conf_error(api->conf_get(conf, "path"),
                        "must be an absolute path starting with '/' (no spaces, '?' or '#')");
        bad = 1;
    }
    double le[MX_MAX_BUCKETS];
    size_t nb = 0;
    if (mx_parse_buckets(conf, le, &nb) != 0)
        bad = 1;
    if (bad) {
        free(c);
        return -1;
    }
    c->path = strdup(path);
    c->store = mx_store_get(le, nb);
    if (c->path == NULL || c->store == NULL) {
        api->log(HELIOS_LOG_ERROR, MX_NAME, "out of memory");
        mx_config_free(c);
        return -1;
    }
    *cfg = c;
    return 0;
}

/* ---- per-worker state and the hot path ---- */

typedef struct mx_cache_slot {
    const char *route; /* the core's pointers, stable for the generation */
    const char *upstream;
    mx_series *series;
} mx_cache_slot;

typedef struct mx_wstate {
    mx_store *store;
    mx_shard *shard;
    mx_cache_slot cache[MX_CACHE_SLOTS];
} mx_wstate;

static int mx_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    mx_config *c = cfg;
    unsigned idx = api->worker_index(w);
    if (idx >= MX_MAX_WORKERS) {
        api->log(HELIOS_LOG_ERROR, MX_NAME, "worker index %u above %d", idx, MX_MAX_WORKERS);
        return -1;
    }
    mx_shard *sh = atomic_load_explicit(&c->store->shards[idx], memory_order_relaxed);
    if (sh == NULL) {
        /* only this worker ever sets its slot */
        sh = aligned_alloc(64, (sizeof(mx_shard) + 63) & ~(size_t)63);
        if (sh == NULL)
            return -1;
        memset(sh, 0, sizeof(*sh));
        atomic_init(&sh->head, NULL);
        atomic_init(&sh->dropped, 0);
        atomic_store_explicit(&c->store->shards[idx], sh, memory_order_release);
    }
    mx_wstate *ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return -1;
    ws->store = c->store;
    ws->shard = sh;
    *wstate = ws;
    return 0;
}

static void mx_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    free(wstate);
}

static inline void mx_add(_Atomic uint64_t *v, uint64_t n)
{
    /* single writer: a plain load and store, no locked instruction */
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static char *mx_strndup(const char *s)
{
    size_t n = strnlen(s, MX_LABEL_MAX);
    char *p = malloc(n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static int mx_label_eq(const char *kept, const char *s)
{
    return strncmp(kept, s, MX_LABEL_MAX) == 0;
}

/* The series of ROUTE x UPSTREAM in the worker's shard, appended when new;
 * NULL when the shard is full or memory is short. Worker only. */
static mx_series *mx_series_find(mx_wstate *ws, const char *route, const char *upstream)
{
    mx_shard *sh = ws->shard;
    mx_series *head = atomic_load_explicit(&sh->head, memory_order_relaxed);
    for (mx_series *s = head; s != NULL; s = s->next)
        if (mx_label_eq(s->route, route) && mx_label_eq(s->upstream, upstream))
            return s;
    if (sh->nseries >= MX_MAX_SERIES)
        return NULL;
    size_t size = mx_series_size(ws->store->nb);
    mx_series *s = aligned_alloc(64, size);
    if (s == NULL)
        return NULL;
    memset(s, 0, size);
    s->route = mx_strndup(route);
    s->upstream = mx_strndup(upstream);
    if (s->route == NULL || s->upstream == NULL) {
        free(s->route);
        free(s->upstream);
        free(s);
        return NULL;
    }
    s->next = head;
    /* the scrape sees the series only complete */
    atomic_store_explicit(&sh->head, s, memory_order_release);
    sh->nseries++;
    return s;
}

static inline mx_series *mx_series_get(mx_wstate *ws, const char *route, const char *upstream)
{
    uintptr_t h = ((uintptr_t)route * 0x9E3779B97F4A7C15u) ^ (uintptr_t)upstream;
    mx_cache_slot *slot = &ws->cache[(h >> 7) % MX_CACHE_SLOTS];
    if (slot->route == route && slot->upstream == upstream && slot->series != NULL)
        return slot->series;
    mx_series *s = mx_series_find(ws, route, upstream);
    if (s != NULL) {
        slot->route = route;
        slot->upstream = upstream;
        slot->series = s;
    }
    return s;
}

static inline void mx_observe(_Atomic uint64_t *hist, const uint64_t *le_us, size_t nb, uint64_t us)
{
    size_t i = 0;
    while (i < nb && us > le_us[i])
        i++;
    mx_add(&hist[i], 1);
}

static void mx_on_log(helios_ctx *c)
{
    mx_wstate *ws = c->wstate;
    if (ws == NULL)
        return;
    helios_req_stats st;
    st.size = sizeof(st);
    if (api->req_stats(c->req, &st) != 0)
        return;
    const char *upstream = st.upstream_name ? st.upstream_name : "";
    mx_series *s = mx_series_get(ws, api->req_route(c->req), upstream);
    if (s == NULL) {
        mx_add(&ws->shard->dropped, 1);
        return;
    }
    const mx_store *store = ws->store;
    size_t nb = store->nb;
    unsigned cls = st.status >= 100 && st.status < 600 ? (unsigned)st.status / 100 : 0;
    mx_add(&s->code[cls], 1);
    mx_add(&s->bytes_in, st.bytes_in);
    mx_add(&s->bytes_out, st.bytes_out);
    mx_add(&s->lat_sum_us, st.duration_us);
    mx_observe(s->hist, store->le_us, nb, st.duration_us);
    if (st.upstream_us >= 0) {
        mx_add(&s->up_sum_us, (uint64_t)st.upstream_us);
        mx_observe(s->hist + nb + 1, store->le_us, nb, (uint64_t)st.upstream_us);
    }
    if (st.attempts > 1)
        mx_add(&s->retries, st.attempts - 1);
    helios_buf rl = api->req_var_get(c->req, "rate_limit");
    if (rl.ptr != NULL && rl.len == 7 && memcmp(rl.ptr, "limited", 7) == 0)
        mx_add(&s->limited, 1);
}

/* ---- rendering ---- */

typedef struct mx_out {
    char *p;
    size_t len, cap;
    int oom;
} mx_out;

static void mx_reserve(mx_out *o, size_t n)
{
    if (o->oom || o->len + n < o->cap)
        return;
    size_t cap = o->cap ? o->cap : 16384;
    while (cap <= o->len + n)
        cap *= 2;
    char *p = realloc(o->p, cap);
    if (p == NULL) {
        o->oom = 1;
        return;
    }
    o->p = p;
    o->cap = cap;
}

static void mx_printf(mx_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mx_printf(mx_out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        o->oom = 1;
        return;
    }
    mx_reserve(o, (size_t)n + 1);
    if (o->oom)
        return;
    va_start(ap, fmt);
    vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    o->len += (size_t)n;
}

/* A label value with \, " and newline escaped, as the format requires. */
static void mx_escaped(mx_out *o, const char *s)
{
    mx_reserve(o, 2 * strlen(s) + 1);
    if (o->oom)
        return;
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') {
            o->p[o->len++] = '\\';
            o->p[o->len++] = *s;
        } else if (*s == '\n') {
            o->p[o->len++] = '\\';
            o->p[o->len++] = 'n';
        } else {
            o->p[o->len++] = *s;
        }
    }
}

static void mx_family(mx_out *o, const char *name, const char *type, const char *help)
{
    mx_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* NAME{K1="V1",K2="V2"...} with escaped values; NULL ends the pairs. */
static void mx_sample_start(mx_out *o, const char *name, const char *k1, const char *v1,
                            const char *k2, const char *v2)
{
    mx_printf(o, "%s", name);
    if (k1 == NULL)
        return;
    mx_printf(o, "{%s=\"", k1);
    mx_escaped(o, v1);
    if (k2 != NULL) {
        mx_printf(o, "\",%s=\"", k2);
        mx_escaped(o, v2);
    }
    mx_printf(o, "\"");
}

static void mx_u64(mx_out *o, const char *name, const char *k1, const char *v1, const char *k2,
                   const char *v2, uint64_t v)
{
    mx_sample_start(o, name, k1, v1, k2, v2);
    if (k1 != NULL)
        mx_printf(o, "}");
    mx_printf(o, " %llu\n", (unsigned long long)v);
}

/* Sums of one label set over every worker's shard. */
typedef struct mx_agg {
    const char *route;
    const char *upstream;
    uint64_t code[MX_CLASSES];
    uint64_t bytes_in, bytes_out, retries, limited, lat_sum_us, up_sum_us;
    uint64_t *hist; /* 2 * (nb + 1), into one allocation */
} mx_agg;

static uint64_t mx_ld(const _Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

static int mx_agg_cmp_route(const void *a, const void *b)
{
    const mx_agg *x = a, *y = b;
    int r = strcmp(x->route, y->route);
    return r ? r : strcmp(x->upstream, y->upstream);
}

static int mx_aggp_cmp_upstream(const void *a, const void *b)
{
    const mx_agg *x = *(const mx_agg *const *)a, *y = *(const mx_agg *const *)b;
    return strcmp(x->upstream, y->upstream);
}

/* Every series of every shard, summed per label pair and sorted by route
 * then upstream. Returns the count, or -1 when memory is short. */
static long mx_collect(mx_store *st, mx_agg **out, uint64_t **hist_out, uint64_t *dropped)
{
    size_t nh = 2 * (st->nb + 1);
    size_t n = 0, cap = 0;
    mx_agg *v = NULL;
    uint64_t *hist = NULL;
    *dropped = 0;
    for (size_t w = 0; w < MX_MAX_WORKERS; w++) {
        mx_shard *sh = atomic_load_explicit(&st->shards[w], memory_order_acquire);
        if (sh == NULL)
            continue;
        *dropped += mx_ld(&sh->dropped);
        for (mx_series *s = atomic_load_explicit(&sh->head, memory_order_acquire); s != NULL;
             s = s->next) {
            if (n == cap) {
                cap = cap ? cap * 2 : 32;
                mx_agg *nv = realloc(v, cap * sizeof(*v));
                uint64_t *nhist = nv ? realloc(hist, cap * nh * sizeof(uint64_t)) : NULL;
                if (nv != NULL)
                    v = nv;
                if (nhist == NULL) {
                    free(v);
                    free(hist);
                    return -1;
                }
                hist = nhist;
            }
            mx_agg *a = &v[n++];
            a->route = s->route;
            a->upstream = s->upstream;
            for (int k = 0; k < MX_CLASSES; k++)
                a->code[k] = mx_ld(&s->code[k]);
            a->bytes_in = mx_ld(&s->bytes_in);
            a->bytes_out = mx_ld(&s->bytes_out);
            a->retries = mx_ld(&s->retries);
            a->limited = mx_ld(&s->limited);
            a->lat_sum_us = mx_ld(&s->lat_sum_us);
            a->up_sum_us = mx_ld(&s->up_sum_us);
            for (size_t k = 0; k < nh; k++)
                hist[(n - 1) * nh + k] = mx_ld(&s->hist[k]);
        }
    }
    for (size_t i = 0; i < n; i++)
        v[i].hist = hist + i * nh;
    /* merge equal label pairs (one per worker that saw them) */
    if (n > 1)
        qsort(v, n, sizeof(*v), mx_agg_cmp_route);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m > 0 && mx_agg_cmp_route(&v[m - 1], &v[i]) == 0) {
            mx_agg *a = &v[m - 1], *b = &v[i];
            for (int k = 0; k < MX_CLASSES; k++)
                a->code[k] += b->code[k];
            a->bytes_in += b->bytes_in;
            a->bytes_out += b->bytes_out;
            a->retries += b->retries;
            a->limited += b->limited;
            a->lat_sum_us += b->lat_sum_us;
            a->up_sum_us += b->up_sum_us;
            for (size_t k = 0; k < nh; k++)
                a->hist[k] += b->hist[k];
        } else {
            v[m++] = v[i];
        }
    }
    *out = v;
    *hist_out = hist;
    return (long)m;
}

/* The shortest text of V that reads back as V ("0.0005", not 17 digits). */
static void mx_fmt_le(char *buf, size_t size, double v)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

/* One histogram sample group: cumulative buckets, +Inf, _sum, _count. */
static void mx_histogram(mx_out *o, const char *name, const char *label, const char *value,
                         const mx_store *st, const uint64_t *h, uint64_t sum_us)
{
    char le[MX_MAX_BUCKETS][32];
    for (size_t i = 0; i < st->nb; i++)
        mx_fmt_le(le[i], sizeof(le[i]), st->le[i]);
    uint64_t cum = 0;
    for (size_t i = 0; i <= st->nb; i++) {
        cum += h[i];
        mx_printf(o, "%s_bucket{%s=\"", name, label);
        mx_escaped(o, value);
        if (i < st->nb)
            mx_printf(o, "\",le=\"%s\"} %llu\n", le[i], (unsigned long long)cum);
        else
            mx_printf(o, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    mx_printf(o, "%s_sum{%s=\"", name, label);
    mx_escaped(o, value);
    mx_printf(o, "\"} %.6f\n", (double)sum_us / 1e6);
    mx_printf(o, "%s_count{%s=\"", name, label);
    mx_escaped(o, value);
    mx_printf(o, "\"} %llu\n", (unsigned long long)cum);
}

static void mx_render_requests(mx_out *o, const mx_store *st, mx_agg *v, size_t n)
{
    size_t nb = st->nb;
    mx_family(o, "helios_http_requests_total", "counter",
              "Requests finished, by route, upstream and status class.");
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < MX_CLASSES; k++) {
            if (v[i].code[k] == 0 && k != 2)
                continue;
            mx_sample_start(o, "helios_http_requests_total", "route", v[i].route, "upstream",
                            v[i].upstream);
            mx_printf(o, ",code=\"%s\"} %llu\n", mx_class_names[k],
                      (unsigned long long)v[i].code[k]);
        }
    }
    mx_family(o, "helios_http_request_body_bytes_total", "counter",
              "Request body bytes received, by route and upstream.");
    for (size_t i = 0; i < n; i++)
        mx_u64(o, "helios_http_request_body_bytes_total", "route", v[i].route, "upstream",
               v[i].upstream, v[i].bytes_in);
    mx_family(o, "helios_http_response_body_bytes_total", "counter",
              "Response body bytes sent, by route and upstream.");
    for (size_t i = 0; i < n; i++)
        mx_u64(o, "helios_http_response_body_bytes_total", "route", v[i].route, "upstream",
               v[i].upstream, v[i].bytes_out);
    mx_family(o, "helios_http_retries_total", "counter",
              "Upstream attempts after the first, by route and upstream.");
    for (size_t i = 0; i < n; i++)
        mx_u64(o, "helios_http_retries_total", "route", v[i].route, "upstream", v[i].upstream,
               v[i].retries);
    mx_family(o, "helios_http_rate_limited_total", "counter",
              "Requests refused by the rate_limit module, by route and upstream.");
    for (size_t i = 0; i < n; i++)
        mx_u64(o, "helios_http_rate_limited_total", "route", v[i].route, "upstream", v[i].upstream,
               v[i].limited);

    /* latency by route: V is sorted by route, so equal routes are adjacent */
    uint64_t *h = calloc(nb + 1, sizeof(uint64_t));
    if (h == NULL) {
        o->oom = 1;
        return;
    }
    mx_family(o, "helios_http_request_duration_seconds", "histogram",
              "Time from the first byte of the request to the end of the response, by route.");
    for (size_t i = 0; i < n;) {
        size_t j = i;
        uint64_t sum = 0;
        memset(h, 0, (nb + 1) * sizeof(uint64_t));
        for (; j < n && strcmp(v[j].route, v[i].route) == 0; j++) {
            sum += v[j].lat_sum_us;
            for (size_t k = 0; k <= nb; k++)
                h[k] += v[j].hist[k];
        }
        mx_histogram(o, "helios_http_request_duration_seconds", "route", v[i].route, st, h, sum);
        i = j;
    }
    /* upstream latency by upstream */
    mx_agg **p = malloc((n ? n : 1) * sizeof(*p));
    if (p == NULL) {
        free(h);
        o->oom = 1;
        return;
    }
    size_t np = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i].upstream[0] != '\0')
            p[np++] = &v[i];
    if (np > 1)
        qsort(p, np, sizeof(*p), mx_aggp_cmp_upstream);
    mx_family(o, "helios_upstream_duration_seconds", "histogram",
              "Time spent on upstream attempts of a request, by upstream.");
    for (size_t i = 0; i < np;) {
        size_t j = i;
        uint64_t sum = 0;
        memset(h, 0, (nb + 1) * sizeof(uint64_t));
        for (; j < np && strcmp(p[j]->upstream, p[i]->upstream) == 0; j++) {
            sum += p[j]->up_sum_us;
            for (size_t k = 0; k <= nb; k++)
                h[k] += p[j]->hist[nb + 1 + k];
        }
        mx_histogram(o, "helios_upstream_duration_seconds", "upstream", p[i]->upstream, st, h, sum);
        i = j;
    }
    free(p);
    free(h);
}

static void mx_render_core(mx_out *o)
{
    helios_core_stats cs;
    memset(&cs, 0, sizeof(cs));
    cs.size = sizeof(cs);
    api->core_stats(&cs);
    mx_family(o, "helios_build_info", "gauge", "heliosd version and plugin ABI; always 1.");
    char abi[32];
    snprintf(abi, sizeof(abi), "%u.%u", (unsigned)api->abi_major, (unsigned)api->abi_minor);
    mx_u64(o, "helios_build_info", "version", cs.version ? cs.version : "", "abi", abi, 1);
    mx_family(o, "helios_process_start_time_seconds", "gauge",
              "Start time of heliosd since the Unix epoch, in seconds.");
    mx_u64(o, "helios_process_start_time_seconds", NULL, NULL, NULL, NULL, cs.start_time);
    mx_family(o, "helios_workers", "gauge", "Worker threads.");
    mx_u64(o, "helios_workers", NULL, NULL, NULL, NULL, cs.workers);
    mx_family(o, "helios_config_generation", "gauge",
              "Id of the running configuration generation.");
    mx_u64(o, "helios_config_generation", NULL, NULL, NULL, NULL, cs.generation);
    mx_family(o, "helios_reloads_total", "counter", "Successful configuration reloads.");
    mx_u64(o, "helios_reloads_total", NULL, NULL, NULL, NULL, cs.reloads);
    mx_family(o, "helios_reload_failures_total", "counter",
              "Refused configuration reloads (the running configuration stayed).");
    mx_u64(o, "helios_reload_failures_total", NULL, NULL, NULL, NULL, cs.reload_failures);
    mx_family(o, "helios_connections_accepted_total", "counter", "Client connections accepted.");
    mx_u64(o, "helios_connections_accepted_total", NULL, NULL, NULL, NULL, cs.connections_accepted);
    mx_family(o, "helios_connections_active", "gauge", "Client connections open now.");
    mx_u64(o, "helios_connections_active", NULL, NULL, NULL, NULL, cs.connections_active);
    mx_family(o, "helios_connections_refused_total", "counter",
              "Client connections closed at accept (per-worker connection cap).");
    mx_u64(o, "helios_connections_refused_total", NULL, NULL, NULL, NULL, cs.connections_refused);
    mx_family(o, "helios_requests_total", "counter",
              "Requests finished, all of them (also those no route matched or that were "
              "malformed).");
    mx_u64(o, "helios_requests_total", NULL, NULL, NULL, NULL, cs.requests);
    mx_family(o, "helios_requests_in_flight", "gauge", "Requests routed and not yet finished.");
    mx_u64(o, "helios_requests_in_flight", NULL, NULL, NULL, NULL, cs.requests_active);
    mx_family(o, "helios_request_body_bytes_total", "counter",
              "Request body bytes received, all requests.");
    mx_u64(o, "helios_request_body_bytes_total", NULL, NULL, NULL, NULL, cs.bytes_in);
    mx_family(o, "helios_response_body_bytes_total", "counter",
              "Response body bytes sent, all requests.");
    mx_u64(o, "helios_response_body_bytes_total", NULL, NULL, NULL, NULL, cs.bytes_out);
}

/* ---- backends (walked at scrape time) ---- */

typedef struct mx_backend_snap {
    char upstream[MX_LABEL_MAX];
    char name[MX_LABEL_MAX];
    int healthy, draining, usable, breaker;
    uint32_t weight, inflight;
    uint64_t requests, failures, retries;
} mx_backend_snap;

typedef struct mx_walk {
    mx_backend_snap *v;
    size_t n, cap;
    const char *upstream;
    int oom;
} mx_walk;

static void mx_walk_backend(void *arg, const helios_backend *b)
{
    mx_walk *wk = arg;
    if (wk->oom)
        return;
    if (wk->n == wk->cap) {
        size_t cap = wk->cap ? wk->cap * 2 : 16;
        mx_backend_snap *v = realloc(wk->v, cap * sizeof(*v));
        if (v == NULL) {
            wk->oom = 1;
            return;
        }
        wk->v = v;
        wk->cap = cap;
    }
    mx_backend_snap *s = &wk->v[wk->n++];
    snprintf(s->upstream, sizeof(s->upstream), "%s", wk->upstream);
    snprintf(s->name, sizeof(s->name), "%s", api->backend_name(b));
    s->healthy = api->backend_healthy(b);
    s->draining = api->backend_draining(b);
    s->usable = api->backend_usable(b);
    s->breaker = api->backend_breaker(b);
    s->weight = api->backend_weight(b);
    s->inflight = api->backend_inflight(b);
    s->requests = api->backend_requests(b);
    s->failures = api->backend_failures(b);
    s->retries = api->backend_retries(b);
}

typedef enum {
    MX_B_HEALTHY,
    MX_B_DRAINING,
    MX_B_USABLE,
    MX_B_BREAKER,
    MX_B_WEIGHT,
    MX_B_INFLIGHT,
    MX_B_REQUESTS,
    MX_B_FAILURES,
    MX_B_RETRIES,
    MX_B_COUNT
} mx_bfield;

static const struct {
    const char *name, *type, *help;
} mx_bfams[MX_B_COUNT] = {
    {"helios_backend_up", "gauge", "1 when the backend is healthy, 0 when marked down."},
    {"helios_backend_draining", "gauge", "1 when the backend is drained."},
    {"helios_backend_usable", "gauge",
     "1 when the backend takes new requests: healthy, not drained, breaker not open."},
    {"helios_backend_breaker_state", "gauge", "Circuit breaker: 0 closed, 1 open, 2 half-open."},
    {"helios_backend_weight", "gauge", "Balancer weight."},
    {"helios_backend_in_flight", "gauge", "Requests in flight to the backend."},
    {"helios_backend_requests_total", "counter",
     "Requests sent to the backend (since the configuration generation started)."},
    {"helios_backend_failures_total", "counter",
     "Failed attempts to the backend (since the configuration generation started)."},
    {"helios_backend_retries_total", "counter",
     "Retries made to the backend (since the configuration generation started)."},
};

static uint64_t mx_bvalue(const mx_backend_snap *s, int f)
{
    switch (f) {
    case MX_B_HEALTHY: return (uint64_t)(s->healthy != 0);
    case MX_B_DRAINING: return (uint64_t)(s->draining != 0);
    case MX_B_USABLE: return (uint64_t)(s->usable != 0);
    case MX_B_BREAKER: return (uint64_t)s->breaker;
    case MX_B_WEIGHT: return s->weight;
    case MX_B_INFLIGHT: return s->inflight;
    case MX_B_REQUESTS: return s->requests;
    case MX_B_FAILURES: return s->failures;
    default: return s->retries;
    }
}

static void mx_render_backends(mx_out *o)
{
    mx_walk wk = {0};
    char name[MX_LABEL_MAX];
    size_t nu = api->ctl_upstreams_count();
    for (size_t i = 0; i < nu && !wk.oom; i++) {
        if (api->ctl_upstream_name(i, name, sizeof(name)) != 0)
            continue; /* a reload shrank the list meanwhile */
        wk.upstream = name;
        api->ctl_backends_walk(name, mx_walk_backend, &wk);
    }
    if (wk.oom) {
        free(wk.v);
        o->oom = 1;
        return;
    }
    for (int f = 0; f < MX_B_COUNT; f++) {
        mx_family(o, mx_bfams[f].name, mx_bfams[f].type, mx_bfams[f].help);
        for (size_t i = 0; i < wk.n; i++)
            mx_u64(o, mx_bfams[f].name, "upstream", wk.v[i].upstream, "backend", wk.v[i].name,
                   mx_bvalue(&wk.v[i], f));
    }
    free(wk.v);
}

/* The whole exposition into a malloc'd buffer. Any thread; reads only. */
static int mx_render(void *ctx, char **out, size_t *len)
{
    mx_config *c = ctx;
    mx_out o = {0};
    mx_render_core(&o);
    mx_agg *v = NULL;
    uint64_t *hist = NULL, dropped = 0;
    long n = mx_collect(c->store, &v, &hist, &dropped);
    if (n < 0) {
        o.oom = 1;
    } else {
        mx_render_requests(&o, c->store, v, (size_t)n);
        free(v);
        free(hist);
    }
    mx_render_backends(&o);
    mx_family(&o, "helios_metrics_dropped_total", "counter",
              "Requests the metrics module could not count (label sets per worker exhausted).");
    mx_u64(&o, "helios_metrics_dropped_total", NULL, NULL, NULL, NULL, dropped);
    if (o.oom) {
        free(o.p);
        return -1;
    }
    *out = o.p;
    *len = o.len;
    return 0;
}

/* ---- service: the own listener ---- */

static enum MHD_Result mx_queue(struct MHD_Connection *conn, unsigned status, const char *type,
                                char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
    if (resp == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result mx_http(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    mx_config *c = cls;
    if (*con_cls == NULL) { /* first call: head only; answer once the body is in */
        *con_cls = c;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* a body on a scrape: ignored */
        return MHD_YES;
    }
    if (strcmp(url, c->path) != 0) {
        static char nf[] = "not found\n";
        return mx_queue(conn, MHD_HTTP_NOT_FOUND, "text/plain", nf, sizeof(nf) - 1,
                        MHD_RESPMEM_PERSISTENT);
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static char na[] = "method not allowed\n";
        return mx_queue(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", na, sizeof(na) - 1,
                        MHD_RESPMEM_PERSISTENT);
    }
    char *body = NULL;
    size_t len = 0;
    if (mx_render(c, &body, &len) != 0) {
        static char oom[] = "out of memory\n";
        return mx_queue(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", oom, sizeof(oom) - 1,
                        MHD_RESPMEM_PERSISTENT);
    }
    return mx_queue(conn, MHD_HTTP_OK, MX_CONTENT_TYPE, body, len, MHD_RESPMEM_MUST_FREE);
}

/* libmicrohttpd's own messages, into the error log with our prefix. */
static void mx_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    api->log(HELIOS_LOG_WARN, MX_NAME, "libmicrohttpd: %s", msg);
}

static int mx_start(void *cfg)
{
    mx_config *c = cfg;
    if (c->admin) {
        c->export.size = sizeof(c->export);
        c->export.ctx = c;
        c->export.render = mx_render;
        if (api->export_set(HELIOS_EXPORT_PROMETHEUS, &c->export) != 0) {
            api->log(HELIOS_LOG_ERROR, MX_NAME, "cannot offer %s to admin_api",
                     HELIOS_EXPORT_PROMETHEUS);
            return -1;
        }
        api->log(HELIOS_LOG_INFO, MX_NAME, "metrics offered to admin_api as %s",
                 HELIOS_EXPORT_PROMETHEUS);
        return 0;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (c->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    c->daemon = MHD_start_daemon(flags, 0, NULL, NULL, mx_http, c, MHD_OPTION_SOCK_ADDR,
                                 (struct sockaddr *)&c->addr, MHD_OPTION_CONNECTION_LIMIT,
                                 (unsigned)64, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
                                 MHD_OPTION_EXTERNAL_LOGGER, mx_mhd_log, NULL, MHD_OPTION_END);
    if (c->daemon == NULL) {
        api->log(HELIOS_LOG_ERROR, MX_NAME, "cannot listen on %s: %s", c->listen,
                 errno ? strerror(errno) : "libmicrohttpd refused to start");
        return -1;
    }
    api->log(HELIOS_LOG_INFO, MX_NAME, "serving %s on %s", c->path, c->listen);
    return 0;
}

static void mx_stop(void *cfg)
{
    mx_config *c = cfg;
    if (c->admin) {
        api->export_set(HELIOS_EXPORT_PROMETHEUS, NULL);
        return;
    }
    if (c->daemon != NULL) {
        MHD_stop_daemon(c->daemon); /* joins its thread */
        c->daemon = NULL;
    }
}

/* ---- module descriptor ---- */

static const helios_filter_hooks mx_filter = {
    .size = sizeof(helios_filter_hooks),
    .on_log = mx_on_log,
};

static const helios_service_hooks mx_service = {
    .size = sizeof(helios_service_hooks),
    .start = mx_start,
    .stop = mx_stop,
};

static const helios_module mx_module = {
    HELIOS_MODULE_HEADER(MX_NAME, MX_VERSION),
    .config_new = mx_config_new,
    .config_free = mx_config_free,
    .worker_init = mx_worker_init,
    .worker_fini = mx_worker_fini,
    .filter = &mx_filter,
    .service = &mx_service,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &mx_module;
}
