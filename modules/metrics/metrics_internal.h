/*
 * metrics_internal.h - shared between the metrics module's files.
 *
 *   metrics.c          configuration, the descriptor
 *   metrics_collect.c  per-worker shards and series, on_log (the hot path),
 *                      and summing the shards for a scrape
 *   metrics_render.c   the Prometheus text exposition of a scrape
 *   metrics_service.c  the service: the own libmicrohttpd listener, or the
 *                      export admin_api serves
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

/* Status classes: the `code` label. Index 0 is a request that ended with no
 * response status (client gone before a response started). */
enum { MX_CLASSES = 6 };

/* ---- process-lifetime storage (metrics_collect.c) ---- */

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

/* ---- one instance (metrics.c) ---- */

typedef struct mx_config {
    mx_store *store;
    int admin;                    /* listen: admin */
    struct sockaddr_storage addr; /* own listener */
    char listen[128];
    char *path;
    struct MHD_Daemon *daemon;       /* service start .. stop */
    helios_prometheus_export export; /* listen: admin */
} mx_config;

/* ---- a scrape (metrics_collect.c, metrics_render.c) ---- */

/* Sums of one label set over every worker's shard. */
typedef struct mx_agg {
    const char *route;
    const char *upstream;
    uint64_t code[MX_CLASSES];
    uint64_t bytes_in, bytes_out, retries, limited, lat_sum_us, up_sum_us;
    uint64_t *hist; /* 2 * (nb + 1), into one allocation */
} mx_agg;

/* ---- metrics_collect.c ---- */

mx_store *mx_store_get(const double *le, size_t nb);
void mx_store_put(mx_store *st);
int mx_worker_init(void *cfg, helios_worker *w, void **wstate);
void mx_worker_fini(void *cfg, helios_worker *w, void *wstate);
void mx_on_log(helios_ctx *c);
long mx_collect(mx_store *st, mx_agg **out, uint64_t **hist_out, uint64_t *dropped);

/* ---- metrics_render.c ---- */

int mx_render(void *ctx, char **out, size_t *len);

/* ---- metrics_service.c ---- */

int mx_start(void *cfg);
void mx_stop(void *cfg);

#endif
