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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    snprintf(s->name, sizeof(s->name), "%s", mx_api->backend_name(b));
    s->healthy = mx_api->backend_healthy(b);
    s->draining = mx_api->backend_draining(b);
    s->usable = mx_api->backend_usable(b);
    s->breaker = mx_api->backend_breaker(b);
    s->weight = mx_api->backend_weight(b);
    s->inflight = mx_api->backend_inflight(b);
    s->requests = mx_api->backend_requests(b);
    s->failures = mx_api->backend_failures(b);
    s->retries = mx_api->backend_retries(b);
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
    free(wk.v);
}

/* The whole exposition into a malloc'd buffer. Any thread; reads only. */
int mx_render(void *ctx, char **out, size_t *len)
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
