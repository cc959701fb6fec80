/*
 * bench_report.c - the results of a run: a report for people (text, like
 * wrk's) or one JSON document (--json) with every figure, the options and
 * the errors by kind. Latencies are in milliseconds in both.
 *
 * JSON keys are stable (tests/integration/modules/test_bench.py checks
 * them; modules/bench/README.md documents them); a figure that does not
 * apply is null, never missing.
 */
#include <stdio.h>
#include <string.h>

#include "bench_internal.h"

static const double pcts[] = {50, 90, 99, 99.9, 99.99};
static const char *const pct_keys[] = {"p50", "p90", "p99", "p99_9", "p99_99"};
#define NPCTS (sizeof(pcts) / sizeof(pcts[0]))

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

static const char *http_name(int http)
{
    switch (http) {
    case BENCH_HTTP_1: return "http1";
    case BENCH_HTTP_2: return "http2";
    case BENCH_HTTP_3: return "http3";
    default: return "auto";
    }
}

/* ---- text ---- */

static void text_latency_row(const char *label, const bench_hist *h)
{
    printf("    %-12s %8.3f %8.3f %8.3f", label, h->count ? ms(h->min) : 0.0,
           bench_hist_mean(h) / 1e6, bench_hist_stdev(h) / 1e6);
    for (size_t i = 0; i < NPCTS; i++)
        printf(" %8.3f", ms(bench_hist_percentile(h, pcts[i])));
    printf(" %8.3f\n", ms(h->max));
}

void bench_report_text(const bench_run *r, const bench_stats *st, const bench_hist *lat,
                       const bench_hist *lat_co, double window_s, double user_s, double sys_s,
                       int interrupted, const char *const errmsg[BENCH_ERR_COUNT])
{
    const bench_opts *o = &r->o;
    printf("heliosd bench %s\n", o->url);
    if (o->rate > 0)
        printf("  open loop at %.6g req/s", o->rate);
    else
        printf("  closed loop");
    printf(", %u connection%s on %u thread%s", o->connections, o->connections == 1 ? "" : "s",
           r->nthreads, r->nthreads == 1 ? "" : "s");
    if (st->proto_h2)
        printf(" (HTTP/2, %u stream%s each)", o->streams, o->streams == 1 ? "" : "s");
    else if (st->proto_h1)
        printf(" (HTTP/1.1)");
    printf("; %.2f s measured after %.2f s of warm-up\n", window_s, o->warmup_s);
    if (interrupted)
        printf("  interrupted: what was measured until then\n");
    printf("  requests     %llu (%.1f req/s), %.2f MiB read (%.2f MiB/s)",
           (unsigned long long)st->requests, window_s > 0 ? (double)st->requests / window_s : 0,
           (double)st->bytes / 1048576, window_s > 0 ? (double)st->bytes / 1048576 / window_s : 0);
    if (st->unfinished)
        printf(", %llu unfinished at the end", (unsigned long long)st->unfinished);
    printf("\n  status      ");
    int any = 0;
    for (int k = 1; k <= 5; k++)
        if (st->status[k]) {
            printf(" %dxx %llu", k, (unsigned long long)st->status[k]);
            any = 1;
        }
    if (st->status[0]) {
        printf(" other %llu", (unsigned long long)st->status[0]);
        any = 1;
    }
    printf("%s\n  errors      ", any ? "" : " none");
    any = 0;
    for (int k = 0; k < BENCH_ERR_COUNT; k++)
        if (st->errors[k]) {
            printf(" %s %llu", bench_err_names[k], (unsigned long long)st->errors[k]);
            any = 1;
        }
    printf("%s\n", any ? "" : " none");
    for (int k = 0; k < BENCH_ERR_COUNT; k++)
        if (errmsg[k])
            printf("    first %s error: %s\n", bench_err_names[k], errmsg[k]);
    printf("  latency ms        min     mean    stdev      p50      p90      p99    p99.9   "
           "p99.99      max\n");
    if (lat_co)
        text_latency_row("corrected", lat_co);
    text_latency_row(lat_co ? "uncorrected" : "", lat);
    if (lat_co)
        printf("    (corrected: from the time the schedule wanted each request sent)\n");
    printf("  client CPU   %.2f s user + %.2f s sys", user_s, sys_s);
    if (st->requests)
        printf(" = %.2f us per request", (user_s + sys_s) * 1e6 / (double)st->requests);
    printf("\n");
}

/* ---- JSON ---- */

static void json_str(const char *s, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void json_cstr(const char *s)
{
    if (s)
        json_str(s, strlen(s));
    else
        printf("null");
}

static void json_latency(const bench_hist *h)
{
    if (h == NULL) {
        printf("null");
        return;
    }
    printf("{\"count\": %llu, \"min\": %.6f, \"mean\": %.6f, \"stdev\": %.6f",
           (unsigned long long)h->count, h->count ? ms(h->min) : 0.0, bench_hist_mean(h) / 1e6,
           bench_hist_stdev(h) / 1e6);
    for (size_t i = 0; i < NPCTS; i++)
        printf(", \"%s\": %.6f", pct_keys[i], ms(bench_hist_percentile(h, pcts[i])));
    printf(", \"max\": %.6f}", ms(h->max));
}

void bench_report_json(const bench_run *r, const bench_stats *st, const bench_hist *lat,
                       const bench_hist *lat_co, double window_s, double user_s, double sys_s,
                       int interrupted, const char *const errmsg[BENCH_ERR_COUNT])
{
    const bench_opts *o = &r->o;
    printf("{\"tool\": \"heliosd bench\", \"version\": \"%s\",\n", BENCH_VERSION);
    printf(" \"options\": {\"url\": ");
    json_cstr(o->url);
    printf(", \"duration_s\": %.6g, \"warmup_s\": %.6g, \"connections\": %u, \"threads\": %u",
           o->duration_s, o->warmup_s, o->connections, r->nthreads);
    if (o->rate > 0)
        printf(", \"rate\": %.6g", o->rate);
    else
        printf(", \"rate\": null");
    if (o->max_requests)
        printf(", \"requests\": %llu", (unsigned long long)o->max_requests);
    else
        printf(", \"requests\": null");
    printf(", \"http\": \"%s\", \"streams\": %u, \"method\": ", http_name(o->http), o->streams);
    json_cstr(o->method);
    printf(", \"headers\": [");
    for (unsigned i = 0; i < o->nheaders; i++) {
        printf("%s", i ? ", " : "");
        json_cstr(o->headers[i].name); /* the whole -H argument: "Name: value" */
    }
    printf("], \"body_bytes\": %zu, \"timeout_s\": %.6g, \"cacert\": ", r->body_len, o->timeout_s);
    json_cstr(o->cacert);
    printf(", \"connect\": ");
    json_cstr(o->connect_to);
    printf("},\n");
    printf(" \"mode\": \"%s\", \"interrupted\": %s,\n", o->rate > 0 ? "open" : "closed",
           interrupted ? "true" : "false");
    printf(" \"duration_s\": %.6f, \"requests\": %llu, \"requests_per_s\": %.3f,"
           " \"bytes\": %llu, \"bytes_per_s\": %.3f, \"unfinished\": %llu,\n",
           window_s, (unsigned long long)st->requests,
           window_s > 0 ? (double)st->requests / window_s : 0.0, (unsigned long long)st->bytes,
           window_s > 0 ? (double)st->bytes / window_s : 0.0, (unsigned long long)st->unfinished);
    printf(" \"warmup\": {\"duration_s\": %.6g, \"requests\": %llu},\n", o->warmup_s,
           (unsigned long long)st->warmup_requests);
    printf(" \"connections\": {\"opened\": %llu, \"http1\": %llu, \"http2\": %llu},\n",
           (unsigned long long)st->opened, (unsigned long long)st->proto_h1,
           (unsigned long long)st->proto_h2);
    printf(" \"status\": {\"1xx\": %llu, \"2xx\": %llu, \"3xx\": %llu, \"4xx\": %llu,"
           " \"5xx\": %llu, \"other\": %llu},\n",
           (unsigned long long)st->status[1], (unsigned long long)st->status[2],
           (unsigned long long)st->status[3], (unsigned long long)st->status[4],
           (unsigned long long)st->status[5], (unsigned long long)st->status[0]);
    uint64_t total = 0;
    printf(" \"errors\": {");
    for (int k = 0; k < BENCH_ERR_COUNT; k++) {
        printf("\"%s\": %llu, ", bench_err_names[k], (unsigned long long)st->errors[k]);
        total += st->errors[k];
    }
    printf("\"total\": %llu},\n \"error_messages\": {", (unsigned long long)total);
    int first = 1;
    for (int k = 0; k < BENCH_ERR_COUNT; k++)
        if (errmsg[k]) {
            printf("%s\"%s\": ", first ? "" : ", ", bench_err_names[k]);
            json_cstr(errmsg[k]);
            first = 0;
        }
    printf("},\n \"latency_ms\": {\"relative_error\": %.6f,\n  \"uncorrected\": ",
           BENCH_HIST_REL_ERR);
    json_latency(lat);
    printf(",\n  \"corrected\": ");
    json_latency(lat_co);
    printf("},\n \"cpu\": {\"user_s\": %.6f, \"sys_s\": %.6f, \"us_per_request\": ", user_s, sys_s);
    if (st->requests)
        printf("%.4f}}\n", (user_s + sys_s) * 1e6 / (double)st->requests);
    else
        printf("null}}\n");
}
