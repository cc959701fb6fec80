/*
 * js_fetch.c - fetch(): a subrequest through heliosd's upstreams, settled
 * into a promise.
 *
 * A fetch belongs to its js_rq (rq->fetches) and is freed with it; one made
 * while the request is live has it as parent, so the core cancels it when
 * the request ends. One made from ctx.waitUntil work after the end has no
 * parent and lives until it settles or the linger ends. The response body
 * is buffered up to max_body; `timeout` bounds the whole exchange.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "js_internal.h"

static void js_fetch_unlink(js_fetch *f)
{
    js_rq *rq = f->rq;
    if (f->prev)
        f->prev->next = f->next;
    else
        rq->fetches = f->next;
    if (f->next)
        f->next->prev = f->prev;
    f->prev = f->next = NULL;
}

/* Forgets F: cancels its subrequest (when CANCEL) and timeout timer. The
 * promise stays pending and is collected with whatever awaits it. */
void js_fetch_free(js_worker *ws, js_fetch *f, int cancel)
{
    js_fetch_unlink(f);
    if (cancel && f->s)
        js_api->subreq_cancel(f->s);
    if (f->t)
        js_api->timer_cancel(f->t);
    JS_FreeValueRT(ws->rt, f->res[0]);
    JS_FreeValueRT(ws->rt, f->res[1]);
    free(f->buf);
    free(f);
}

/* ---- fetch ---- */

static void js_fetch_settle(js_fetch *f, int which, JSValue v)
{
    js_rq *rq = f->rq;
    js_worker *ws = rq->ws;
    JSValue fn = JS_DupValue(ws->ctx, f->res[which]);
    js_rq_ref(rq);
    js_fetch_free(ws, f, 0);
    js_call(ws, rq, fn, 1, (JSValueConst *)&v, "in a fetch callback");
    JS_FreeValue(ws->ctx, fn);
    JS_FreeValue(ws->ctx, v);
    js_rq_unref(rq);
}

static JSValue js_type_error(JSContext *ctx, const char *msg)
{
    JS_ThrowTypeError(ctx, "%s", msg);
    return JS_GetException(ctx);
}

static void js_fetch_on_head(void *arg, helios_subreq *s)
{
    (void)arg;
    (void)s;
}

static void js_fetch_on_body(void *arg, helios_subreq *s, helios_buf chunk, int last)
{
    js_fetch *f = arg;
    js_worker *ws = f->rq->ws;
    JSContext *ctx = ws->ctx;
    if (f->len + chunk.len > ws->cfg->max_body) {
        char msg[160];
        snprintf(msg, sizeof(msg), "fetch: the response body is over max_body (%llu bytes)",
                 (unsigned long long)ws->cfg->max_body);
        if (!last)
            js_api->subreq_cancel(s);
        f->s = NULL;
        js_fetch_settle(f, 1, js_type_error(ctx, msg));
        return;
    }
    if (chunk.len) {
        if (f->len + chunk.len > f->cap) {
            size_t cap = f->cap ? f->cap : 4096;
            while (cap < f->len + chunk.len)
                cap *= 2;
            char *nb = realloc(f->buf, cap);
            if (nb == NULL) {
                if (!last)
                    js_api->subreq_cancel(s);
                f->s = NULL;
                js_fetch_settle(f, 1, js_type_error(ctx, "fetch: out of memory"));
                return;
            }
            f->buf = nb;
            f->cap = cap;
        }
        memcpy(f->buf + f->len, chunk.ptr, chunk.len);
        f->len += chunk.len;
    }
    if (!last)
        return;
    /* [status, statusText, [name, value...], body] */
    JSValue a = JS_NewArray(ctx);
    JS_SetPropertyUint32(ctx, a, 0, JS_NewInt32(ctx, js_api->subreq_status(s)));
    JS_SetPropertyUint32(ctx, a, 1, JS_NewString(ctx, ""));
    JSValue h = JS_NewArray(ctx);
    size_t n = js_api->subreq_header_count(s);
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++) {
        helios_buf name, value;
        if (js_api->subreq_header_at(s, i, &name, &value) != 0)
            continue;
        char nb[64];
        if (name.len < sizeof(nb)) {
            memcpy(nb, name.ptr, name.len);
            nb[name.len] = '\0';
            if (js_hop_header(nb))
                continue;
        }
        JS_SetPropertyUint32(ctx, h, k++, JS_NewStringLen(ctx, name.ptr, name.len));
        JS_SetPropertyUint32(ctx, h, k++, JS_NewStringLen(ctx, value.ptr, value.len));
    }
    JS_SetPropertyUint32(ctx, a, 2, h);
    JS_SetPropertyUint32(
        ctx, a, 3, f->len ? JS_NewArrayBufferCopy(ctx, (const uint8_t *)f->buf, f->len) : JS_NULL);
    f->s = NULL; /* freed by the core after this call */
    js_fetch_settle(f, 0, a);
}

static void js_fetch_on_error(void *arg, helios_subreq *s, int status, const char *reason)
{
    (void)s;
    js_fetch *f = arg;
    char msg[256];
    snprintf(msg, sizeof(msg), "fetch failed: %d %s", status, reason ? reason : "");
    f->s = NULL;
    js_fetch_settle(f, 1, js_type_error(f->rq->ws->ctx, msg));
}

static const helios_subreq_cb js_fetch_cb = {
    .size = sizeof(helios_subreq_cb),
    .on_head = js_fetch_on_head,
    .on_body = js_fetch_on_body,
    .on_error = js_fetch_on_error,
};

static void js_fetch_timeout(void *arg)
{
    js_fetch *f = arg;
    f->t = NULL; /* fired: already freed */
    if (f->s) {
        js_api->subreq_cancel(f->s);
        f->s = NULL;
    }
    char msg[96];
    snprintf(msg, sizeof(msg), "fetch timed out after %llu ms",
             (unsigned long long)f->rq->ws->cfg->timeout_ms);
    js_fetch_settle(f, 1, js_type_error(f->rq->ws->ctx, msg));
}

typedef struct js_sub_hdrs {
    helios_subreq *s;
} js_sub_hdrs;

static int js_sub_header(void *arg, const char *n, const char *v)
{
    js_sub_hdrs *h = arg;
    if (js_hop_header(n))
        return 0;
    return js_api->subreq_header_add(h->s, n, v) == 0 ? 0 : -1;
}

/* hx.fetch(tok|null, host, method, target, pairs|null, body|null) */
JSValue nat_fetch(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_worker *ws = js_ws(ctx);
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL)
        rq = ws->cur;
    if (rq == NULL)
        return JS_ThrowTypeError(ctx, "fetch() is only available while handling a request");
    if (rq->r == NULL && !rq->lingering)
        return JS_ThrowTypeError(ctx, "fetch(): the request has ended");
    const char *host = JS_ToCString(ctx, argv[1]);
    const char *method = JS_ToCString(ctx, argv[2]);
    const char *target = JS_ToCString(ctx, argv[3]);
    JSValue ret = JS_UNDEFINED;
    js_fetch *f = NULL;
    helios_subreq *s = NULL;
    char err[256] = "";
    if (host == NULL || method == NULL || target == NULL) {
        ret = JS_EXCEPTION;
        goto out;
    }
    /* the incoming request's own host means the route's own upstream */
    const char *upstream = host;
    if (strcasecmp(host, rq->host) == 0 && rq->host[0]) {
        upstream = rq->r ? NULL : rq->upstream;
        if (upstream && upstream[0] == '\0') {
            ret = JS_ThrowTypeError(ctx, "fetch(): the route has no upstream");
            goto out;
        }
    }
    s = js_api->subreq_new(ws->w, rq->r, upstream, method, target, err, sizeof(err));
    if (s == NULL) {
        ret = JS_ThrowTypeError(ctx, "fetch(%s %s%s): %s", method, host, target, err);
        goto out;
    }
    js_sub_hdrs sh = {s};
    if (js_pairs(ctx, argv[4], js_sub_header, &sh) != 0) {
        js_api->subreq_cancel(s);
        ret = JS_EXCEPTION;
        goto out;
    }
    const char *hold;
    const uint8_t *p;
    size_t len;
    if (js_bytes(ctx, argv[5], &hold, &p, &len) != 0) {
        js_api->subreq_cancel(s);
        ret = JS_EXCEPTION;
        goto out;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL) {
        JS_FreeCString(ctx, hold);
        js_api->subreq_cancel(s);
        ret = JS_ThrowOutOfMemory(ctx);
        goto out;
    }
    f->res[0] = f->res[1] = JS_UNDEFINED;
    ret = JS_NewPromiseCapability(ctx, f->res);
    if (JS_IsException(ret)) {
        JS_FreeCString(ctx, hold);
        js_api->subreq_cancel(s);
        free(f);
        goto out;
    }
    f->rq = rq;
    f->s = s;
    f->parented = rq->r != NULL;
    f->next = rq->fetches;
    if (rq->fetches)
        rq->fetches->prev = f;
    rq->fetches = f;
    int rc = js_api->subreq_send(s, p, len, &js_fetch_cb, f);
    JS_FreeCString(ctx, hold);
    if (rc != 0) {
        f->s = NULL; /* freed by subreq_send */
        JSValue e = js_type_error(ctx, "fetch(): the subrequest could not be sent");
        JSValue r = JS_Call(ctx, f->res[1], JS_UNDEFINED, 1, (JSValueConst *)&e);
        JS_FreeValue(ctx, r);
        JS_FreeValue(ctx, e);
        js_fetch_free(ws, f, 0);
        goto out;
    }
    if (ws->cfg->timeout_ms)
        f->t = js_api->timer_add(ws->w, ws->cfg->timeout_ms, js_fetch_timeout, f);
out:
    JS_FreeCString(ctx, host);
    JS_FreeCString(ctx, method);
    JS_FreeCString(ctx, target);
    return ret;
}
