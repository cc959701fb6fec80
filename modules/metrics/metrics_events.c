/*
 * metrics_events.c - process-wide counts the metrics module keeps for
 * other modules and across generations.
 *
 * Backend events: health_active's probe results and durations and
 * health_passive's ejections happen outside any request, in modules the
 * core knows nothing of. They report them through the export
 * HELIOS_EXPORT_BACKEND_EVENTS (contract: helios/util/exports.h) into one
 * list keyed by upstream and backend name, under a mutex: events come at
 * probe rate (a few per second), never per request.
 *
 * The carry: the core carries a backend's counters (requests, failures,
 * retries, breaker transitions) and an upstream's panic entries into the
 * next generation, losing nothing, while the backend keeps its upstream
 * and name (D71). A backend removed and added again starts at 0, which
 * exported as it is would look like a counter reset. mx_carry remembers,
 * per label set, the last value seen and what earlier counts had reached,
 * so the exported counter only grows; a counter the core carried never
 * goes down, so it is never added twice.
 *
 * Both live as long as the process (the module is never unloaded); both
 * are bounded: MX_EVENTS_MAX backends, MX_CARRY_MAX label sets.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics_internal.h"

#define MX_EVENTS_MAX 4096
#define MX_CARRY_MAX 65536
#define MX_CARRY_BUCKETS 1024

static pthread_mutex_t mx_ev_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- backend events ---- */

typedef struct mx_bev {
    struct mx_bev *next;
    mx_bev_snap v;
} mx_bev;

static mx_bev *mx_bevs; /* under mx_ev_lock */
static size_t mx_nbevs;

static void mx_event(int kind, const char *upstream, const char *backend, double seconds)
{
    if (kind < 0 || kind >= HELIOS_BACKEND_EVENT_COUNT || upstream == NULL || backend == NULL)
        return;
    pthread_mutex_lock(&mx_ev_lock);
    mx_bev *e = mx_bevs;
    while (e != NULL && (strncmp(e->v.upstream, upstream, MX_LABEL_MAX - 1) != 0 ||
                         strncmp(e->v.backend, backend, MX_LABEL_MAX - 1) != 0))
        e = e->next;
    if (e == NULL && mx_nbevs < MX_EVENTS_MAX && (e = calloc(1, sizeof(*e))) != NULL) {
        snprintf(e->v.upstream, sizeof(e->v.upstream), "%s", upstream);
        snprintf(e->v.backend, sizeof(e->v.backend), "%s", backend);
        e->next = mx_bevs;
        mx_bevs = e;
        mx_nbevs++;
    }
    if (e != NULL) {
        e->v.n[kind]++;
        if (kind != HELIOS_BACKEND_EVENT_EJECTION && seconds >= 0 && isfinite(seconds)) {
            size_t i = 0;
            while (i < MX_PROBE_NB && seconds > mx_default_buckets[i])
                i++;
            e->v.probe_hist[i]++;
            e->v.probe_sum_us += (uint64_t)(seconds * 1e6 + 0.5);
        }
    }
    pthread_mutex_unlock(&mx_ev_lock);
}

static const helios_backend_events mx_events_export = {
    .size = sizeof(helios_backend_events),
    .event = mx_event,
};

void mx_events_publish(void)
{
    mx_api->export_set(HELIOS_EXPORT_BACKEND_EVENTS, (void *)&mx_events_export);
}

static int mx_bev_cmp(const void *a, const void *b)
{
    const mx_bev_snap *x = a, *y = b;
    int r = strcmp(x->upstream, y->upstream);
    return r ? r : strcmp(x->backend, y->backend);
}

long mx_events_snapshot(mx_bev_snap **out)
{
    pthread_mutex_lock(&mx_ev_lock);
    size_t n = mx_nbevs;
    mx_bev_snap *v = malloc((n ? n : 1) * sizeof(*v));
    if (v == NULL) {
        pthread_mutex_unlock(&mx_ev_lock);
        return -1;
    }
    size_t i = 0;
    for (mx_bev *e = mx_bevs; e != NULL && i < n; e = e->next)
        v[i++] = e->v;
    pthread_mutex_unlock(&mx_ev_lock);
    qsort(v, i, sizeof(*v), mx_bev_cmp);
    *out = v;
    return (long)i;
}

/* ---- the carry of per-generation counters ---- */

typedef struct mx_carry_ent {
    struct mx_carry_ent *next;
    int metric;
    uint64_t last; /* raw value at the last scrape */
    uint64_t base; /* what earlier generations reached */
    char key[];    /* K1 '\0' K2 '\0' */
} mx_carry_ent;

static mx_carry_ent *mx_carry_tab[MX_CARRY_BUCKETS]; /* under mx_ev_lock */
static size_t mx_ncarry;

static uint64_t mx_carry_hash(const char *k1, const char *k2, int metric)
{
    uint64_t h = 0xcbf29ce484222325u ^ (uint64_t)metric;
    for (const char *p = k1; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3u;
    h = (h ^ 0xff) * 0x100000001b3u;
    for (const char *p = k2; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3u;
    return h;
}

uint64_t mx_carry(const char *k1, const char *k2, int metric, uint64_t raw)
{
    size_t l1 = strlen(k1), l2 = strlen(k2);
    uint64_t h = mx_carry_hash(k1, k2, metric) % MX_CARRY_BUCKETS;
    pthread_mutex_lock(&mx_ev_lock);
    mx_carry_ent *e = mx_carry_tab[h];
    while (e != NULL &&
           (e->metric != metric || strcmp(e->key, k1) != 0 || strcmp(e->key + l1 + 1, k2) != 0))
        e = e->next;
    if (e == NULL && mx_ncarry < MX_CARRY_MAX && (e = malloc(sizeof(*e) + l1 + l2 + 2)) != NULL) {
        e->metric = metric;
        e->last = e->base = 0;
        memcpy(e->key, k1, l1 + 1);
        memcpy(e->key + l1 + 1, k2, l2 + 1);
        e->next = mx_carry_tab[h];
        mx_carry_tab[h] = e;
        mx_ncarry++;
    }
    uint64_t v = raw;
    if (e != NULL) {
        if (raw < e->last)
            e->base += e->last; /* a new generation's counter */
        e->last = raw;
        v = e->base + raw;
    }
    pthread_mutex_unlock(&mx_ev_lock);
    return v;
}
