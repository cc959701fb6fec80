/*
 * metrics_collect.c - counting: per-worker shards written by on_log, and
 * their sum for a scrape.
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
 * reset; a reload that changes `buckets` starts a new store, whose
 * histograms start empty (their shape changed). The counters carry on: a
 * scrape adds those of older stores, live or retired (mx_collect). A store
 * is freed with the last generation using it, its counters kept.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "metrics_internal.h"

/* ---- process-lifetime storage ---- */

/* Live stores, newest first. Changed on the main thread; a scrape reads
 * the older stores' counters too, so both hold the lock (a scrape keeps it
 * while it uses the series' names). */
static pthread_mutex_t mx_stores_lock = PTHREAD_MUTEX_INITIALIZER;
static mx_store *mx_stores;

/* Counters (no histograms) of stores already freed while a newer one
 * runs, by label pair, with names of their own: what the route series
 * counted before a reload changed `buckets` (under mx_stores_lock). */
static mx_agg *mx_retired;
static size_t mx_nretired;
static uint64_t mx_retired_dropped;

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
        for (int list = 0; list < 2; list++) {
            mx_series *s =
                atomic_load_explicit(list ? &sh->bhead : &sh->head, memory_order_acquire);
            while (s != NULL) {
                mx_series *next = s->next;
                free(s->route);
                free(s->upstream);
                free(s);
                s = next;
            }
        }
        free(sh);
    }
    free(st);
}

/* The store for these bucket bounds: a live one with the same bounds, or a
 * new one. Main thread (config_new). */
mx_store *mx_store_get(const double *le, size_t nb)
{
    pthread_mutex_lock(&mx_stores_lock);
    for (mx_store *st = mx_stores; st != NULL; st = st->next) {
        if (st->nb == nb && memcmp(st->le, le, nb * sizeof(double)) == 0) {
            st->refs++;
            pthread_mutex_unlock(&mx_stores_lock);
            return st;
        }
    }
    mx_store *st = calloc(1, sizeof(*st));
    if (st == NULL) {
        pthread_mutex_unlock(&mx_stores_lock);
        return NULL;
    }
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
    pthread_mutex_unlock(&mx_stores_lock);
    return st;
}

static void mx_retire(mx_store *st);

void mx_store_put(mx_store *st)
{
    pthread_mutex_lock(&mx_stores_lock);
    if (st == NULL || --st->refs > 0) {
        pthread_mutex_unlock(&mx_stores_lock);
        return;
    }
    for (mx_store **pp = &mx_stores; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    }
    /* a newer store runs (buckets changed): its scrapes go on counting
     * what this one counted */
    if (mx_stores != NULL)
        mx_retire(st);
    mx_store_free(st);
    pthread_mutex_unlock(&mx_stores_lock);
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
    mx_cache_slot cache[MX_CACHE_SLOTS];  /* route x upstream */
    mx_cache_slot bcache[MX_CACHE_SLOTS]; /* upstream x backend */
} mx_wstate;

int mx_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    mx_config *c = cfg;
    unsigned idx = mx_api->worker_index(w);
    if (idx >= MX_MAX_WORKERS) {
        mx_api->log(HELIOS_LOG_ERROR, MX_NAME, "worker index %u above %d", idx, MX_MAX_WORKERS);
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
        atomic_init(&sh->bhead, NULL);
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

void mx_worker_fini(void *cfg, helios_worker *w, void *wstate)
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

/* The series of ROUTE x UPSTREAM in the worker's shard (of UPSTREAM x
 * BACKEND in its backend list when BLIST), appended when new; NULL when the
 * shard is full or memory is short. Worker only. */
static mx_series *mx_series_find(mx_wstate *ws, int blist, const char *route, const char *upstream)
{
    mx_shard *sh = ws->shard;
    _Atomic(mx_series *) *list = blist ? &sh->bhead : &sh->head;
    mx_series *head = atomic_load_explicit(list, memory_order_relaxed);
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
    atomic_store_explicit(list, s, memory_order_release);
    sh->nseries++;
    return s;
}

static inline mx_series *mx_series_get(mx_wstate *ws, int blist, const char *route,
                                       const char *upstream)
{
    uintptr_t h = ((uintptr_t)route * 0x9E3779B97F4A7C15u) ^ (uintptr_t)upstream;
    mx_cache_slot *slot = &(blist ? ws->bcache : ws->cache)[(h >> 7) % MX_CACHE_SLOTS];
    if (slot->route == route && slot->upstream == upstream && slot->series != NULL)
        return slot->series;
    mx_series *s = mx_series_find(ws, blist, route, upstream);
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

/* Counts STATUS in S's exact-status slots (single writer: a slot is taken
 * by storing its id after its count is zero, with release order). */
static inline void mx_count_status(mx_series *s, int status)
{
    uint32_t id = status >= 100 && status < 600 ? (uint32_t)status : MX_CODE_NONE;
    for (int i = 0; i < MX_CODES; i++) {
        uint32_t have = atomic_load_explicit(&s->code_id[i], memory_order_relaxed);
        if (have == id) {
            mx_add(&s->code_n[i], 1);
            return;
        }
        if (have == 0) {
            mx_add(&s->code_n[i], 1);
            atomic_store_explicit(&s->code_id[i], id, memory_order_release);
            return;
        }
    }
    mx_add(&s->code_other[id == MX_CODE_NONE ? 0 : id / 100], 1);
}

/* The request's backend series: its upstream time and time to first byte. */
static void mx_count_backend(mx_wstate *ws, const helios_req_stats *st)
{
    /* a 1.2 core leaves the 1.3 fields (TTFB) unfilled */
    if ((mx_api->abi_major == 1 && mx_api->abi_minor < 3) || st->upstream_us < 0 ||
        st->backend_name == NULL || st->backend_name[0] == '\0')
        return;
    mx_series *b = mx_series_get(ws, 1, st->upstream_name, st->backend_name);
    if (b == NULL) {
        mx_add(&ws->shard->dropped, 1);
        return;
    }
    size_t nb = ws->store->nb;
    mx_add(&b->lat_sum_us, (uint64_t)st->upstream_us);
    mx_observe(b->hist, ws->store->le_us, nb, (uint64_t)st->upstream_us);
    if (st->upstream_ttfb_us >= 0) {
        mx_add(&b->up_sum_us, (uint64_t)st->upstream_ttfb_us);
        mx_observe(b->hist + nb + 1, ws->store->le_us, nb, (uint64_t)st->upstream_ttfb_us);
    }
}

void mx_on_log(helios_ctx *c)
{
    mx_wstate *ws = c->wstate;
    if (ws == NULL)
        return;
    helios_req_stats st;
    memset(&st, 0, sizeof(st));
    st.size = sizeof(st);
    if (mx_api->req_stats(c->req, &st) != 0)
        return;
    const char *upstream = st.upstream_name ? st.upstream_name : "";
    mx_series *s = mx_series_get(ws, 0, mx_api->req_route(c->req), upstream);
    if (s == NULL) {
        mx_add(&ws->shard->dropped, 1);
        return;
    }
    const mx_store *store = ws->store;
    size_t nb = store->nb;
    mx_count_status(s, st.status);
    mx_count_backend(ws, &st);
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
    helios_buf rl = mx_api->req_var_get(c->req, "rate_limit");
    if (rl.ptr != NULL && rl.len == 7 && memcmp(rl.ptr, "limited", 7) == 0)
        mx_add(&s->limited, 1);
}

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

/* A growing list of label pairs with their counters and, per entry, NH
 * histogram slots (zero for entries that bring counters only). */
typedef struct mx_vec {
    mx_agg *v;
    uint64_t *hist;
    size_t n, cap, nh;
    int oom;
} mx_vec;

static mx_agg *mx_vec_push(mx_vec *x)
{
    if (x->oom)
        return NULL;
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 32;
        mx_agg *nv = realloc(x->v, cap * sizeof(*nv));
        if (nv != NULL)
            x->v = nv;
        uint64_t *nhist = nv ? realloc(x->hist, (cap * x->nh + 1) * sizeof(uint64_t)) : NULL;
        if (nhist == NULL) {
            x->oom = 1;
            return NULL;
        }
        x->hist = nhist;
        x->cap = cap;
    }
    mx_agg *a = &x->v[x->n];
    memset(a, 0, sizeof(*a));
    memset(x->hist + x->n * x->nh, 0, x->nh * sizeof(uint64_t));
    x->n++;
    return a;
}

/* Appends every series of ST's shards (its backend list when BACKENDS);
 * the histograms too when HIST. Adds the shards' drops to *DROPPED. */
static void mx_gather(mx_vec *x, mx_store *st, int backends, int hist, uint64_t *dropped)
{
    for (size_t w = 0; w < MX_MAX_WORKERS; w++) {
        mx_shard *sh = atomic_load_explicit(&st->shards[w], memory_order_acquire);
        if (sh == NULL)
            continue;
        *dropped += mx_ld(&sh->dropped);
        for (mx_series *s =
                 atomic_load_explicit(backends ? &sh->bhead : &sh->head, memory_order_acquire);
             s != NULL; s = s->next) {
            mx_agg *a = mx_vec_push(x);
            if (a == NULL)
                return;
            a->route = s->route;
            a->upstream = s->upstream;
            for (int k = 0; k < MX_CODES; k++) {
                uint32_t id = atomic_load_explicit(&s->code_id[k], memory_order_acquire);
                if (id != 0)
                    a->code[id == MX_CODE_NONE ? 0 : id] += mx_ld(&s->code_n[k]);
            }
            for (int k = 0; k < MX_CLASSES; k++)
                a->code_other[k] = mx_ld(&s->code_other[k]);
            a->bytes_in = mx_ld(&s->bytes_in);
            a->bytes_out = mx_ld(&s->bytes_out);
            a->retries = mx_ld(&s->retries);
            a->limited = mx_ld(&s->limited);
            if (!hist)
                continue;
            a->lat_sum_us = mx_ld(&s->lat_sum_us);
            a->up_sum_us = mx_ld(&s->up_sum_us);
            uint64_t *h = x->hist + (x->n - 1) * x->nh;
            for (size_t k = 0; k < x->nh; k++)
                h[k] = mx_ld(&s->hist[k]);
        }
    }
}

/* B's counts into A (same label pair); histograms over NH slots. */
static void mx_agg_add(mx_agg *a, const mx_agg *b, uint64_t *ah, const uint64_t *bh, size_t nh)
{
    for (int k = 0; k < MX_STATUS_MAX; k++)
        a->code[k] += b->code[k];
    for (int k = 0; k < MX_CLASSES; k++)
        a->code_other[k] += b->code_other[k];
    a->bytes_in += b->bytes_in;
    a->bytes_out += b->bytes_out;
    a->retries += b->retries;
    a->limited += b->limited;
    a->lat_sum_us += b->lat_sum_us;
    a->up_sum_us += b->up_sum_us;
    for (size_t k = 0; k < nh; k++)
        ah[k] += bh[k];
}

/* Sorts X by route then upstream and merges equal label pairs (one per
 * worker and store that saw them); sets every entry's hist. */
static void mx_vec_merge(mx_vec *x)
{
    for (size_t i = 0; i < x->n; i++)
        x->v[i].hist = x->hist + i * x->nh;
    if (x->n > 1)
        qsort(x->v, x->n, sizeof(*x->v), mx_agg_cmp_route);
    size_t m = 0;
    for (size_t i = 0; i < x->n; i++) {
        if (m > 0 && mx_agg_cmp_route(&x->v[m - 1], &x->v[i]) == 0)
            mx_agg_add(&x->v[m - 1], &x->v[i], x->v[m - 1].hist, x->v[i].hist, x->nh);
        else
            x->v[m++] = x->v[i];
    }
    x->n = m;
}

/* Under mx_stores_lock, ST leaving while a newer store runs: its route
 * counters join mx_retired, with names of their own. */
static void mx_retire(mx_store *st)
{
    mx_vec x = {.nh = 0};
    uint64_t dropped = 0;
    for (size_t i = 0; i < mx_nretired; i++) {
        mx_agg *a = mx_vec_push(&x);
        if (a != NULL)
            *a = mx_retired[i];
    }
    size_t kept = x.n;
    mx_gather(&x, st, 0, 0, &dropped);
    for (size_t i = kept; i < x.n && !x.oom; i++) {
        char *r = strdup(x.v[i].route), *u = strdup(x.v[i].upstream);
        if (r == NULL || u == NULL) {
            free(r);
            free(u);
            x.n = i; /* the rest is not counted: logged below */
            x.oom = 1;
            break;
        }
        x.v[i].route = r;
        x.v[i].upstream = u;
    }
    if (x.oom && x.n < kept) {
        free(x.v);
        free(x.hist);
        mx_api->log(HELIOS_LOG_ERROR, MX_NAME,
                    "out of memory keeping the request counters of the previous buckets: "
                    "they restart from 0");
        return;
    }
    if (x.oom)
        mx_api->log(HELIOS_LOG_ERROR, MX_NAME,
                    "out of memory keeping some request counters of the previous buckets: "
                    "those restart from 0");
    /* merge, freeing the names of the duplicates */
    if (x.n > 1)
        qsort(x.v, x.n, sizeof(*x.v), mx_agg_cmp_route);
    size_t m = 0;
    for (size_t i = 0; i < x.n; i++) {
        if (m > 0 && mx_agg_cmp_route(&x.v[m - 1], &x.v[i]) == 0) {
            mx_agg_add(&x.v[m - 1], &x.v[i], NULL, NULL, 0);
            free((char *)x.v[i].route);
            free((char *)x.v[i].upstream);
        } else {
            x.v[m++] = x.v[i];
        }
    }
    free(mx_retired);
    free(x.hist);
    mx_retired = x.v;
    mx_nretired = m;
    mx_retired_dropped += dropped;
}

/* Every series of every shard, summed per label pair and sorted by route
 * then upstream. The route series (not BACKENDS) add the counters of older
 * stores, live or retired, so a change of `buckets` restarts only the
 * histograms. Call between mx_scrape_lock and mx_scrape_unlock (the names
 * point into the stores). Returns the count, or -1 when memory is short. */
long mx_collect(mx_store *st, int backends, mx_agg **out, uint64_t **hist_out, uint64_t *dropped)
{
    mx_vec x = {.nh = 2 * (st->nb + 1)};
    *dropped = 0;
    mx_gather(&x, st, backends, 1, dropped);
    for (mx_store *o = mx_stores; !backends && o != NULL; o = o->next)
        if (o != st)
            mx_gather(&x, o, 0, 0, dropped);
    for (size_t i = 0; !backends && i < mx_nretired; i++) {
        mx_agg *a = mx_vec_push(&x);
        if (a != NULL)
            *a = mx_retired[i];
    }
    if (!backends)
        *dropped += mx_retired_dropped;
    if (x.oom) {
        free(x.v);
        free(x.hist);
        return -1;
    }
    mx_vec_merge(&x);
    *out = x.v;
    *hist_out = x.hist;
    return (long)x.n;
}

void mx_scrape_lock(void)
{
    pthread_mutex_lock(&mx_stores_lock);
}

void mx_scrape_unlock(void)
{
    pthread_mutex_unlock(&mx_stores_lock);
}
