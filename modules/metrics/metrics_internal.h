/*
 * metrics_internal.h - shared between the metrics module's files.
 *
 *   metrics.c          configuration, the descriptor
 *   metrics_collect.c  per-worker shards and series, on_log (the hot path),
 *                      and summing the shards for a scrape
 *   metrics_render.c   the Prometheus text exposition of a scrape
 *   metrics_service.c  the service: the own libmicrohttpd listener, or the
 *                      export admin_api serves
 *   metrics_events.c   process-wide counts other modules report (probes,
 *                      ejections; helios/util/exports.h) and the carry of
 *                      the core's per-generation backend counters
 *
 * Threads: configuration and start/stop run on heliosd's main thread,
 * on_log and worker_init/fini on the workers, rendering on the thread that
 * scrapes (libmicrohttpd's or admin_api's). metrics_collect.c states the
 * memory-ordering rules between them.
 */
#ifndef HELIOS_METRICS_INTERNAL_H
#define HELIOS_METRICS_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

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

struct MHD_Daemon;

extern const helios_host_api *mx_api;

/* Status classes: the `class` label. Index 0 is a request that ended with no
 * response status (client gone before a response started). */
enum { MX_CLASSES = 6 };
/* Exact statuses (the `code` label) kept per series; a 17th distinct one
 * is counted as code="other" in its class. */
#define MX_CODES 16
#define MX_CODE_NONE 1000 /* code_id of "no status" (0 means a free slot) */
#define MX_STATUS_MAX 600 /* mx_agg.code: index = status, 0 = none */

/* ---- process-lifetime storage (metrics_collect.c) ---- */

/*
 * One route x upstream pair seen by one worker, or (in the shard's
 * backend list) one upstream x backend pair: then `route` holds the
 * upstream's name and `upstream` the backend's, the first histogram is the
 * backend's upstream time, the second its time to first byte, and only
 * those are used. Written by that worker only; read by scrapes. next,
 * route and upstream never change once the series is published. The
 * counters array holds, in order: latency buckets (nb + 1, the last is
 * +Inf), upstream latency buckets (nb + 1).
 */
typedef struct mx_series {
    struct mx_series *next;
    char *route;
    char *upstream;
    _Atomic uint32_t code_id[MX_CODES]; /* published (release) once its slot is taken */
    _Atomic uint64_t code_n[MX_CODES];
    _Atomic uint64_t code_other[MX_CLASSES];
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
    _Atomic(mx_series *) bhead; /* upstream x backend series */
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

/* ---- one instance (metrics.c) ---- */

typedef struct mx_config {
    mx_store *store;
    int admin;                    /* listen: admin */
    struct sockaddr_storage addr; /* own listener */
    char listen[128];
    char *path;
    struct MHD_Daemon *daemon;       /* service start .. stop */
    atomic_int stopping;             /* stop() began: answers say Connection: close */
    atomic_long active;              /* requests between intake and completion */
    atomic_long fresh;               /* connections accepted, no request begun yet */
} mx_config;

/* ---- a scrape (metrics_collect.c, metrics_render.c) ---- */

/* Sums of one label set over every worker's shard. */
typedef struct mx_agg {
    const char *route;
    const char *upstream;
    uint64_t code[MX_STATUS_MAX]; /* by exact status; [0]: none */
    uint64_t code_other[MX_CLASSES];
    uint64_t bytes_in, bytes_out, retries, limited, lat_sum_us, up_sum_us;
    uint64_t *hist; /* 2 * (nb + 1), into one allocation */
} mx_agg;

/* ---- metrics_collect.c ---- */

mx_store *mx_store_get(const double *le, size_t nb);
void mx_store_put(mx_store *st);
int mx_worker_init(void *cfg, helios_worker *w, void **wstate);
void mx_worker_fini(void *cfg, helios_worker *w, void *wstate);
void mx_on_log(helios_ctx *c);
long mx_collect(mx_store *st, int backends, mx_agg **out, uint64_t **hist_out,
                uint64_t *dropped);
/* Held by a scrape around its mx_collect calls and their use: no store is
 * freed meanwhile (the main thread waits at most one scrape). */
void mx_scrape_lock(void);
void mx_scrape_unlock(void);

/* ---- metrics_events.c ---- */

/* One backend's reported events, copied for a scrape. */
#define MX_PROBE_NB 14 /* probe duration buckets: mx_default_buckets */
typedef struct mx_bev_snap {
    char upstream[MX_LABEL_MAX], backend[MX_LABEL_MAX];
    uint64_t n[HELIOS_BACKEND_EVENT_COUNT];
    uint64_t probe_hist[MX_PROBE_NB + 1];
    uint64_t probe_sum_us;
} mx_bev_snap;

extern const double mx_default_buckets[MX_PROBE_NB];
void mx_events_publish(void);
/* Every backend with events, sorted; the count, or -1 (out of memory). */
long mx_events_snapshot(mx_bev_snap **out);
/* The core's counter RAW of (K1, K2, METRIC) made monotonic across
 * generations: a value below the last one seen is a new generation's
 * counter, and what the old one had reached is carried. Any thread. */
uint64_t mx_carry(const char *k1, const char *k2, int metric, uint64_t raw);

/* ---- metrics_render.c ---- */

int mx_render(void *ctx, char **out, size_t *len);

/* ---- metrics_service.c ---- */

int mx_start(void *cfg);
void mx_stop(void *cfg);
/* C exists (config_new) / no longer (config_free): what lets stop() hand
 * the own listener's socket, or the admin export, to the next generation
 * (D76). */
void mx_listen_claim(mx_config *c);
void mx_listen_unclaim(mx_config *c);

#endif
