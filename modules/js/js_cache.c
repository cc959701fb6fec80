/*
 * js_cache.c - the store behind the Cache API (caches.default,
 * caches.open(name)): one per worker and js instance, in C memory (not the
 * JS heap), bounded by `cache_size`, least recently used entries evicted
 * first. cache.js decides what may be stored and for how long (the
 * Cache-Control rules); this file keeps entries until they expire or are
 * evicted.
 *
 * Entries are keyed by namespace (the cache's name) and URL, in a chained
 * hash table that doubles as it fills, with an LRU list through them.
 * Expired entries go when they are looked up or reach the LRU's end.
 * Everything runs on the worker's thread: no locks.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <stdlib.h>
#include <string.h>

#include "js_internal.h"

typedef struct js_centry {
    char *key; /* namespace, NUL, URL */
    size_t keylen;
    uint64_t hash;
    uint64_t stored_us, expires_us; /* js_now_us() clock */
    int status;
    char *hdrs; /* name NUL value NUL ... */
    size_t hlen;
    uint32_t nhdrs;
    uint8_t *body;
    size_t blen;
    size_t size; /* what it counts against cache_size */
    struct js_centry *hnext;
    struct js_centry *prev, *next; /* LRU: head is the most recent */
} js_centry;

struct js_cache {
    size_t cap, used;
    js_centry **buckets;
    size_t nbuckets, count;
    js_centry *head, *tail;
};

/* per-entry bookkeeping counted on top of its bytes */
#define JS_CENTRY_OVERHEAD 128

js_cache *js_cache_new(size_t cap)
{
    js_cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->cap = cap;
    c->nbuckets = 64;
    c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
    if (c->buckets == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

static void js_centry_free(js_centry *e)
{
    free(e->key);
    free(e->hdrs);
    free(e->body);
    free(e);
}

void js_cache_free(js_cache *c)
{
    if (c == NULL)
        return;
    for (js_centry *e = c->head, *n; e; e = n) {
        n = e->next;
        js_centry_free(e);
    }
    free(c->buckets);
    free(c);
}

static uint64_t js_hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void js_lru_unlink(js_cache *c, js_centry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void js_lru_front(js_cache *c, js_centry *e)
{
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (c->tail == NULL)
        c->tail = e;
}

static void js_cache_remove(js_cache *c, js_centry *e)
{
    js_centry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    js_lru_unlink(c, e);
    c->used -= e->size;
    c->count--;
    js_centry_free(e);
}

static js_centry *js_cache_find(js_cache *c, const char *key, size_t keylen, uint64_t h)
{
    for (js_centry *e = c->buckets[h & (c->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->keylen == keylen && memcmp(e->key, key, keylen) == 0)
            return e;
    return NULL;
}

static void js_cache_grow(js_cache *c)
{
    size_t n = c->nbuckets * 2;
    js_centry **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < c->nbuckets; i++)
        for (js_centry *e = c->buckets[i], *next; e; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = n;
}

/* "namespace NUL url" in a malloc'd buffer */
static char *js_cache_key(JSContext *ctx, JSValueConst ns, JSValueConst url, size_t *len)
{
    size_t nl, ul;
    const char *n = JS_ToCStringLen(ctx, &nl, ns), *u = JS_ToCStringLen(ctx, &ul, url);
    char *k = n && u ? malloc(nl + 1 + ul) : NULL;
    if (k) {
        memcpy(k, n, nl);
        k[nl] = '\0';
        memcpy(k + nl + 1, u, ul);
        *len = nl + 1 + ul;
    } else if (n && u) {
        JS_ThrowOutOfMemory(ctx);
    }
    JS_FreeCString(ctx, n);
    JS_FreeCString(ctx, u);
    return k;
}

static js_cache *js_cache_of(JSContext *ctx)
{
    return js_ws(ctx)->cache;
}

/* hx.cachePut(ns, url, status, [[name, value]...], body, ttl_ms) -> bool:
 * false when the entry cannot fit in cache_size at all */
static JSValue nat_cache_put(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_cache *c = js_cache_of(ctx);
    int status;
    double ttl;
    if (JS_ToInt32(ctx, &status, argv[2]) || JS_ToFloat64(ctx, &ttl, argv[5]))
        return JS_EXCEPTION;
    if (c == NULL || c->cap == 0 || !(ttl > 0))
        return JS_FALSE;
    const char *hold;
    const uint8_t *p;
    size_t blen;
    if (js_bytes(ctx, argv[4], &hold, &p, &blen) != 0)
        return JS_EXCEPTION;
    size_t keylen;
    char *key = js_cache_key(ctx, argv[0], argv[1], &keylen);
    js_centry *e = key ? calloc(1, sizeof(*e)) : NULL;
    if (e == NULL) {
        JS_FreeCString(ctx, hold);
        free(key);
        return key ? JS_ThrowOutOfMemory(ctx) : JS_EXCEPTION;
    }
    e->key = key;
    e->keylen = keylen;
    e->hash = js_hash(key, keylen);
    e->status = status;
    /* headers flattened: name NUL value NUL */
    JSValue lv = JS_GetPropertyStr(ctx, argv[3], "length");
    uint32_t n = 0;
    int bad = JS_ToUint32(ctx, &n, lv) != 0;
    JS_FreeValue(ctx, lv);
    size_t cap = 256;
    e->hdrs = bad ? NULL : malloc(cap);
    bad = bad || e->hdrs == NULL;
    for (uint32_t i = 0; i < n && !bad; i++) {
        JSValue pair = JS_GetPropertyUint32(ctx, argv[3], i);
        JSValue nv = JS_GetPropertyUint32(ctx, pair, 0), vv = JS_GetPropertyUint32(ctx, pair, 1);
        JS_FreeValue(ctx, pair);
        size_t a, b;
        const char *ns = JS_ToCStringLen(ctx, &a, nv), *vs = JS_ToCStringLen(ctx, &b, vv);
        JS_FreeValue(ctx, nv);
        JS_FreeValue(ctx, vv);
        if (ns && vs) {
            while (e->hlen + a + b + 2 > cap)
                cap *= 2;
            char *nh = realloc(e->hdrs, cap);
            if (nh) {
                e->hdrs = nh;
                memcpy(e->hdrs + e->hlen, ns, a + 1);
                memcpy(e->hdrs + e->hlen + a + 1, vs, b + 1);
                e->hlen += a + b + 2;
                e->nhdrs++;
            } else {
                bad = 1;
            }
        } else {
            bad = 1;
        }
        JS_FreeCString(ctx, ns);
        JS_FreeCString(ctx, vs);
    }
    e->size = keylen + e->hlen + blen + JS_CENTRY_OVERHEAD;
    if (!bad && e->size <= c->cap && blen) {
        e->body = malloc(blen);
        bad = e->body == NULL;
        if (!bad)
            memcpy(e->body, p, blen);
    }
    e->blen = blen;
    JS_FreeCString(ctx, hold);
    if (bad || e->size > c->cap) {
        js_centry_free(e);
        return bad ? JS_ThrowOutOfMemory(ctx) : JS_FALSE;
    }
    e->stored_us = js_now_us();
    e->expires_us = e->stored_us + (uint64_t)(ttl * 1000.0);
    js_centry *old = js_cache_find(c, key, keylen, e->hash);
    if (old)
        js_cache_remove(c, old);
    /* make room: expired entries go first, then the least recently used */
    if (c->used + e->size > c->cap)
        for (js_centry *x = c->head, *next; x; x = next) {
            next = x->next;
            if (e->stored_us >= x->expires_us)
                js_cache_remove(c, x);
        }
    while (c->used + e->size > c->cap && c->tail)
        js_cache_remove(c, c->tail);
    if (c->count + 1 > c->nbuckets)
        js_cache_grow(c);
    e->hnext = c->buckets[e->hash & (c->nbuckets - 1)];
    c->buckets[e->hash & (c->nbuckets - 1)] = e;
    js_lru_front(c, e);
    c->used += e->size;
    c->count++;
    return JS_TRUE;
}

/* The live or expired entry for (ARGV[0], ARGV[1]) in *E (NULL: none).
 * Returns -1 with an exception. */
static int js_cache_lookup(JSContext *ctx, JSValueConst *argv, js_cache **cp, js_centry **e)
{
    js_cache *c = *cp = js_cache_of(ctx);
    *e = NULL;
    if (c == NULL || c->count == 0)
        return 0;
    size_t keylen;
    char *key = js_cache_key(ctx, argv[0], argv[1], &keylen);
    if (key == NULL)
        return -1;
    *e = js_cache_find(c, key, keylen, js_hash(key, keylen));
    free(key);
    return 0;
}

/* hx.cacheMatch(ns, url) -> null | [status, [name, value...], body, age_s] */
static JSValue nat_cache_match(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_cache *c;
    js_centry *e;
    if (js_cache_lookup(ctx, argv, &c, &e) != 0)
        return JS_EXCEPTION;
    uint64_t now = js_now_us();
    if (e == NULL)
        return JS_NULL;
    if (now >= e->expires_us) {
        js_cache_remove(c, e);
        return JS_NULL;
    }
    js_lru_unlink(c, e);
    js_lru_front(c, e);
    JSValue a = JS_NewArray(ctx), h = JS_NewArray(ctx);
    JS_SetPropertyUint32(ctx, a, 0, JS_NewInt32(ctx, e->status));
    const char *q = e->hdrs;
    for (uint32_t i = 0; i < e->nhdrs; i++) {
        size_t a1 = strlen(q);
        JS_SetPropertyUint32(ctx, h, 2 * i, JS_NewStringLen(ctx, q, a1));
        q += a1 + 1;
        size_t b1 = strlen(q);
        JS_SetPropertyUint32(ctx, h, 2 * i + 1, JS_NewStringLen(ctx, q, b1));
        q += b1 + 1;
    }
    JS_SetPropertyUint32(ctx, a, 1, h);
    JS_SetPropertyUint32(ctx, a, 2,
                         e->blen ? JS_NewArrayBufferCopy(ctx, e->body, e->blen) : JS_NULL);
    JS_SetPropertyUint32(ctx, a, 3, JS_NewInt64(ctx, (int64_t)((now - e->stored_us) / 1000000u)));
    return a;
}

/* hx.cacheDelete(ns, url) -> bool: whether a live entry was there */
static JSValue nat_cache_delete(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_cache *c;
    js_centry *e;
    if (js_cache_lookup(ctx, argv, &c, &e) != 0)
        return JS_EXCEPTION;
    if (e == NULL)
        return JS_FALSE;
    int live = js_now_us() < e->expires_us;
    js_cache_remove(c, e);
    return JS_NewBool(ctx, live);
}

/* hx.cacheStats() -> [entries, bytes used, cache_size] */
static JSValue nat_cache_stats(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    (void)argv;
    js_cache *c = js_cache_of(ctx);
    JSValue a = JS_NewArray(ctx);
    JS_SetPropertyUint32(ctx, a, 0, JS_NewInt64(ctx, c ? (int64_t)c->count : 0));
    JS_SetPropertyUint32(ctx, a, 1, JS_NewInt64(ctx, c ? (int64_t)c->used : 0));
    JS_SetPropertyUint32(ctx, a, 2, JS_NewInt64(ctx, c ? (int64_t)c->cap : 0));
    return a;
}

static const JSCFunctionListEntry js_cache_natives[] = {
    JS_CFUNC_DEF("cachePut", 6, nat_cache_put),
    JS_CFUNC_DEF("cacheMatch", 2, nat_cache_match),
    JS_CFUNC_DEF("cacheDelete", 2, nat_cache_delete),
    JS_CFUNC_DEF("cacheStats", 0, nat_cache_stats),
};

void js_cache_natives_install(JSContext *ctx, JSValueConst hx)
{
    JS_SetPropertyFunctionList(ctx, hx, js_cache_natives,
                               sizeof(js_cache_natives) / sizeof(js_cache_natives[0]));
}
