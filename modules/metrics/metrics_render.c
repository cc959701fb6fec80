/*
 * metrics_render.c - the Prometheus text exposition format 0.0.4 of one
 * scrape: core counters, the summed series (counters and histograms by
 * route and by upstream) and the backends, walked at scrape time.
 *
 * Runs on the scraping thread and only reads: series through mx_collect,
 * the rest through the host API. The output grows in one malloc'd buffer;
 * running out of memory anywhere fails the whole scrape (mx_out.oom).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "metrics_internal.h"

static const char *const mx_class_names[MX_CLASSES] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};

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

/* The labels LABEL="VALUE"[,LABEL2="VALUE2"] of a sample (no braces). */
static void mx_hlabels(mx_out *o, const char *label, const char *value, const char *label2,
                       const char *value2)
{
    mx_printf(o, "%s=\"", label);
    mx_escaped(o, value);
    if (label2 != NULL) {
        mx_printf(o, "\",%s=\"", label2);
        mx_escaped(o, value2);
    }
    mx_printf(o, "\"");
}

/* NAME{K1="V1",K2="V2"...} with escaped values; NULL ends the pairs. */
static void mx_sample_start(mx_out *o, const char *name, const char *k1, const char *v1,
                            const char *k2, const char *v2)
{
    mx_printf(o, "%s", name);
    if (k1 == NULL)
        return;
    mx_printf(o, "{");
    mx_hlabels(o, k1, v1, k2, v2);
}

static void mx_u64(mx_out *o, const char *name, const char *k1, const char *v1, const char *k2,
                   const char *v2, uint64_t v)
{
    mx_sample_start(o, name, k1, v1, k2, v2);
    if (k1 != NULL)
        mx_printf(o, "}");
    mx_printf(o, " %llu\n", (unsigned long long)v);
}

static int mx_aggp_cmp_upstream(const void *a, const void *b)
{
    const mx_agg *x = *(const mx_agg *const *)a, *y = *(const mx_agg *const *)b;
    return strcmp(x->upstream, y->upstream);
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

/* One histogram sample group over NB bounds LE: cumulative buckets, +Inf,
 * _sum, _count. */
static void mx_histogram2(mx_out *o, const char *name, const char *label, const char *value,
                          const char *label2, const char *value2, const double *bounds, size_t nb,
                          const uint64_t *h, uint64_t sum_us)
{
    uint64_t cum = 0;
    for (size_t i = 0; i <= nb; i++) {
        char le[32] = "+Inf";
        if (i < nb)
            mx_fmt_le(le, sizeof(le), bounds[i]);
        cum += h[i];
        mx_printf(o, "%s_bucket{", name);
        mx_hlabels(o, label, value, label2, value2);
        mx_printf(o, ",le=\"%s\"} %llu\n", le, (unsigned long long)cum);
    }
    mx_printf(o, "%s_sum{", name);
    mx_hlabels(o, label, value, label2, value2);
    mx_printf(o, "} %.6f\n", (double)sum_us / 1e6);
    mx_printf(o, "%s_count{", name);
    mx_hlabels(o, label, value, label2, value2);
    mx_printf(o, "} %llu\n", (unsigned long long)cum);
}

static void mx_histogram(mx_out *o, const char *name, const char *label, const char *value,
                         const mx_store *st, const uint64_t *h, uint64_t sum_us)
{
    mx_histogram2(o, name, label, value, NULL, NULL, st->le, st->nb, h, sum_us);
}

/* Per backend (the store's backend series, merged over workers): upstream
 * time and time to first byte. */
static void mx_render_backend_latency(mx_out *o, const mx_store *st, const mx_agg *v, size_t n)
{
    size_t nb = st->nb;
    mx_family(o, "helios_backend_duration_seconds", "histogram",
              "Time on upstream attempts of requests whose last attempt went to the backend.");
    for (size_t i = 0; i < n; i++)
        mx_histogram2(o, "helios_backend_duration_seconds", "upstream", v[i].route, "backend",
                      v[i].upstream, st->le, nb, v[i].hist, v[i].lat_sum_us);
    mx_family(o, "helios_backend_ttfb_seconds", "histogram",
              "Time from the start of the attempt to the backend's response head.");
    for (size_t i = 0; i < n; i++)
        mx_histogram2(o, "helios_backend_ttfb_seconds", "upstream", v[i].route, "backend",
                      v[i].upstream, st->le, nb, v[i].hist + nb + 1, v[i].up_sum_us);
}

static void mx_render_requests(mx_out *o, const mx_store *st, mx_agg *v, size_t n)
{
    size_t nb = st->nb;
    mx_family(o, "helios_http_requests_total", "counter",
              "Requests finished, by route, upstream, exact status (code) and status class.");
    for (size_t i = 0; i < n; i++) {
        for (int k = 0; k < MX_STATUS_MAX; k++) {
            if (v[i].code[k] == 0)
                continue;
            mx_sample_start(o, "helios_http_requests_total", "route", v[i].route, "upstream",
                            v[i].upstream);
            if (k == 0)
                mx_printf(o, ",code=\"none\",class=\"none\"} %llu\n",
                          (unsigned long long)v[i].code[k]);
            else
                mx_printf(o, ",code=\"%d\",class=\"%s\"} %llu\n", k, mx_class_names[k / 100],
                          (unsigned long long)v[i].code[k]);
        }
        for (int k = 0; k < MX_CLASSES; k++) {
            if (v[i].code_other[k] == 0)
                continue;
            mx_sample_start(o, "helios_http_requests_total", "route", v[i].route, "upstream",
                            v[i].upstream);
            mx_printf(o, ",code=\"other\",class=\"%s\"} %llu\n", mx_class_names[k],
                      (unsigned long long)v[i].code_other[k]);
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

static void mx_render_process(mx_out *o, uint64_t start_time);

static void mx_render_core(mx_out *o)
{
    helios_core_stats cs;
    memset(&cs, 0, sizeof(cs));
    cs.size = sizeof(cs);
    mx_api->core_stats(&cs);
    mx_family(o, "helios_build_info", "gauge", "heliosd version and plugin ABI; always 1.");
    char abi[32];
    snprintf(abi, sizeof(abi), "%u.%u", (unsigned)mx_api->abi_major, (unsigned)mx_api->abi_minor);
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
    mx_render_process(o, cs.start_time);
}

/* ---- backends (walked at scrape time) ---- */

typedef struct mx_backend_snap {
    char upstream[MX_LABEL_MAX];
    char name[MX_LABEL_MAX];
    int healthy, draining, usable, breaker;
    uint32_t weight, inflight;
    uint64_t requests, failures, retries;
    uint64_t transitions[3]; /* into closed, open, half-open */
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
    snprintf(s->name, sizeof(s->name), "%s", mx_api->backend_name(b));
    s->healthy = mx_api->backend_healthy(b);
    s->draining = mx_api->backend_draining(b);
    s->usable = mx_api->backend_usable(b);
    s->breaker = mx_api->backend_breaker(b);
    s->weight = mx_api->backend_weight(b);
    s->inflight = mx_api->backend_inflight(b);
    /* per generation in the core: carried so they only grow (metrics_events.c) */
    s->requests = mx_carry(wk->upstream, s->name, 0, mx_api->backend_requests(b));
    s->failures = mx_carry(wk->upstream, s->name, 1, mx_api->backend_failures(b));
    s->retries = mx_carry(wk->upstream, s->name, 2, mx_api->backend_retries(b));
    for (int k = 0; k < 3; k++)
        s->transitions[k] =
            mx_carry(wk->upstream, s->name, 3 + k, mx_api->backend_breaker_transitions(b, k));
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
     "Requests sent to the backend (carried across reloads)."},
    {"helios_backend_failures_total", "counter",
     "Failed attempts to the backend (carried across reloads)."},
    {"helios_backend_retries_total", "counter",
     "Retries made to the backend (carried across reloads)."},
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
    size_t nu = mx_api->ctl_upstreams_count();
    for (size_t i = 0; i < nu && !wk.oom; i++) {
        if (mx_api->ctl_upstream_name(i, name, sizeof(name)) != 0)
            continue; /* a reload shrank the list meanwhile */
        wk.upstream = name;
        mx_api->ctl_backends_walk(name, mx_walk_backend, &wk);
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
    static const char *const to[3] = {"closed", "open", "half-open"};
    mx_family(o, "helios_backend_breaker_transitions_total", "counter",
              "Circuit breaker state changes, by the state entered (carried across reloads).");
    for (size_t i = 0; i < wk.n; i++) {
        for (int k = 0; k < 3; k++) {
            mx_sample_start(o, "helios_backend_breaker_transitions_total", "upstream",
                            wk.v[i].upstream, "backend", wk.v[i].name);
            mx_printf(o, ",to=\"%s\"} %llu\n", to[k], (unsigned long long)wk.v[i].transitions[k]);
        }
    }
    free(wk.v);
}

/* Panic mode per upstream (ABI 1.3 getter; absent on an older core). */
static void mx_render_panic(mx_out *o)
{
    if (!HELIOS_API_HAS(mx_api, ctl_upstream_panic))
        return;
    char name[MX_LABEL_MAX];
    size_t nu = mx_api->ctl_upstreams_count();
    mx_family(o, "helios_upstream_panic", "gauge",
              "1 while the upstream balances over all backends (panic_threshold).");
    for (size_t i = 0; i < nu; i++) {
        uint64_t entries = 0;
        if (mx_api->ctl_upstream_name(i, name, sizeof(name)) != 0)
            continue;
        int p = mx_api->ctl_upstream_panic(name, &entries);
        if (p >= 0)
            mx_u64(o, "helios_upstream_panic", "upstream", name, NULL, NULL, (uint64_t)p);
    }
    mx_family(o, "helios_upstream_panic_entries_total", "counter",
              "Times the upstream entered panic mode (carried across reloads).");
    for (size_t i = 0; i < nu; i++) {
        uint64_t entries = 0;
        if (mx_api->ctl_upstream_name(i, name, sizeof(name)) != 0 ||
            mx_api->ctl_upstream_panic(name, &entries) < 0)
            continue;
        mx_u64(o, "helios_upstream_panic_entries_total", "upstream", name, NULL, NULL,
               mx_carry(name, "", 100, entries));
    }
}

/* What health modules reported (metrics_events.c). */
static void mx_render_events(mx_out *o)
{
    mx_bev_snap *v = NULL;
    long n = mx_events_snapshot(&v);
    if (n < 0) {
        o->oom = 1;
        return;
    }
    mx_family(o, "helios_health_probes_total", "counter",
              "Active health probes (health_active), by result.");
    for (long i = 0; i < n; i++) {
        for (int k = 0; k < 2; k++) {
            mx_sample_start(o, "helios_health_probes_total", "upstream", v[i].upstream, "backend",
                            v[i].backend);
            mx_printf(o, ",result=\"%s\"} %llu\n", k ? "failure" : "success",
                      (unsigned long long)v[i].n[k]);
        }
    }
    mx_family(o, "helios_health_probe_duration_seconds", "histogram",
              "Duration of active health probes (health_active).");
    for (long i = 0; i < n; i++)
        mx_histogram2(o, "helios_health_probe_duration_seconds", "upstream", v[i].upstream,
                      "backend", v[i].backend, mx_default_buckets, MX_PROBE_NB, v[i].probe_hist,
                      v[i].probe_sum_us);
    mx_family(o, "helios_backend_ejections_total", "counter",
              "Backends marked down by passive health checks (health_passive).");
    for (long i = 0; i < n; i++)
        mx_u64(o, "helios_backend_ejections_total", "upstream", v[i].upstream, "backend",
               v[i].backend, v[i].n[HELIOS_BACKEND_EVENT_EJECTION]);
    free(v);
}

/* Standard process metrics (Prometheus client conventions), from /proc. */
static void mx_render_process(mx_out *o, uint64_t start_time)
{
    double cpu = 0, rss = 0, vsz = 0;
    FILE *f = fopen("/proc/self/stat", "r");
    if (f != NULL) {
        char buf[1024];
        size_t k = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[k] = '\0';
        /* fields after the command name, which may hold spaces: from the last ')' */
        const char *p = strrchr(buf, ')');
        unsigned long long ut = 0, stt = 0, vs = 0, rs = 0;
        if (p != NULL && sscanf(p + 2,
                                "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu "
                                "%*d %*d %*d %*d %*d %*d %*u %llu %llu",
                                &ut, &stt, &vs, &rs) == 4) {
            long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
            cpu = (double)(ut + stt) / (double)(tick > 0 ? tick : 100);
            vsz = (double)vs;
            rss = (double)rs * (double)(page > 0 ? page : 4096);
        }
    }
    uint64_t fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            fds += e->d_name[0] != '.';
        fds -= fds > 0; /* opendir's own descriptor */
        closedir(d);
    }
    struct rlimit rl;
    uint64_t maxfds = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (uint64_t)rl.rlim_cur : 0;
    mx_family(o, "process_cpu_seconds_total", "counter",
              "Total user and system CPU time spent in seconds.");
    mx_printf(o, "process_cpu_seconds_total %.2f\n", cpu);
    mx_family(o, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    mx_printf(o, "process_resident_memory_bytes %.0f\n", rss);
    mx_family(o, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    mx_printf(o, "process_virtual_memory_bytes %.0f\n", vsz);
    mx_family(o, "process_open_fds", "gauge", "Number of open file descriptors.");
    mx_u64(o, "process_open_fds", NULL, NULL, NULL, NULL, fds);
    mx_family(o, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
    mx_u64(o, "process_max_fds", NULL, NULL, NULL, NULL, maxfds);
    mx_family(o, "process_start_time_seconds", "gauge",
              "Start time of the process since unix epoch in seconds.");
    mx_u64(o, "process_start_time_seconds", NULL, NULL, NULL, NULL, start_time);
}

/* The whole exposition into a malloc'd buffer. Any thread; reads only. */
int mx_render(void *ctx, char **out, size_t *len)
{
    mx_config *c = ctx;
    mx_out o = {0};
    mx_render_core(&o);
    mx_agg *v = NULL;
    uint64_t *hist = NULL, dropped = 0;
    mx_scrape_lock(); /* not across the core's calls below: they take its lock */
    long n = mx_collect(c->store, 0, &v, &hist, &dropped);
    if (n < 0) {
        o.oom = 1;
    } else {
        mx_render_requests(&o, c->store, v, (size_t)n);
        free(v);
        free(hist);
    }
    uint64_t bdropped = 0;
    n = mx_collect(c->store, 1, &v, &hist, &bdropped);
    if (n < 0) {
        o.oom = 1;
    } else {
        mx_render_backend_latency(&o, c->store, v, (size_t)n);
        free(v);
        free(hist);
    }
    mx_scrape_unlock();
    mx_render_backends(&o);
    mx_render_panic(&o);
    mx_render_events(&o);
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
