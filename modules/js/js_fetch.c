/*
 * js_fetch.c - fetch(): a subrequest through heliosd's upstreams, settled
 * into a promise.
 *
 * A fetch belongs to its js_rq (rq->fetches) and is freed with it. It is
 * sent at the end of the JS run that called fetch() (js_fetch_flush, from
 * js_leave), when the script has had its chance to call ctx.waitUntil on
 * it: `ctx.waitUntil(fetch(url))` evaluates fetch() first. A fetch sent
 * while the request is live and no waitUntil work is pending has the
 * request as parent (the core cancels it when the request ends, and
 * balancers see the client); any other has no parent, so that it outlives
 * the response, and lives until it settles, the waitUntil work ends or the
 * linger ends. The promise resolves with the response head; the body
 * follows piece by piece to a JS sink (streams.js makes it the response's
 * ReadableStream and bounds what it queues); `timeout` bounds the whole
 * exchange.
 *
 * Host: a URL naming an upstream sends the URL's host (as Workers do); the
 * route's own upstream (the URL's host is the request's) keeps the Host of
 * the headers given, else the request's.
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
    if (f->unsent) {
        f->unsent = 0;
        ws->unsent--;
    }
    if (cancel && f->s)
        js_api->subreq_cancel(f->s);
    if (f->t)
        js_api->timer_cancel(f->t);
    JS_FreeValueRT(ws->rt, f->res[0]);
    JS_FreeValueRT(ws->rt, f->res[1]);
    JS_FreeValueRT(ws->rt, f->hdrs);
    JS_FreeValueRT(ws->rt, f->body);
    JS_FreeValueRT(ws->rt, f->sink);
    free(f->upstream);
    free(f->method);
    free(f->target);
    free(f->host);
    free(f);
}

/* ---- fetch ---- */

/* Settles F's promise (WHICH: 0 resolve, 1 reject) with V (owned) and
 * frees F: the fetch failed before its response head. */
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

/* Hands a piece of the response body to F's stream: sink(CHUNK, DONE,
 * MSG). A final piece frees F first. The JS may cancel F meanwhile (a
 * reader's cancel()): F is not touched after the call. */
static void js_fetch_feed(js_fetch *f, JSValue chunk, int done, const char *msg)
{
    js_rq *rq = f->rq;
    js_worker *ws = rq->ws;
    JSContext *ctx = ws->ctx;
    JSValue fn = JS_DupValue(ctx, f->sink);
    js_rq_ref(rq);
    if (done)
        js_fetch_free(ws, f, 0);
    JSValue args[3] = {chunk, JS_NewBool(ctx, done), msg ? JS_NewString(ctx, msg) : JS_UNDEFINED};
    js_call(ws, rq, fn, 3, args, "in a fetch body stream");
    JS_FreeValue(ctx, fn);
    JS_FreeValue(ctx, args[0]);
    JS_FreeValue(ctx, args[2]);
    js_rq_unref(rq);
}

/* F cannot complete: its promise rejects or, once resolved, its body
 * stream errors. F is freed; its subrequest is already gone. */
static void js_fetch_fail(js_fetch *f, const char *msg)
{
    if (f->head_done)
        js_fetch_feed(f, JS_NULL, 1, msg);
    else
        js_fetch_settle(f, 1, js_type_error(f->rq->ws->ctx, msg));
}

/* The head arrived: the promise resolves with [status, statusText,
 * [name, value...]]; the body follows through the sink. */
static void js_fetch_on_head(void *arg, helios_subreq *s)
{
    js_fetch *f = arg;
    js_rq *rq = f->rq;
    js_worker *ws = rq->ws;
    JSContext *ctx = ws->ctx;
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
            /* Content-Length stays visible, as in Workers (respond and
             * fetch drop it: heliosd frames what it sends) */
            if (js_hop_header(nb) && strcasecmp(nb, "content-length") != 0)
                continue;
        }
        JS_SetPropertyUint32(ctx, h, k++, JS_NewStringLen(ctx, name.ptr, name.len));
        JS_SetPropertyUint32(ctx, h, k++, JS_NewStringLen(ctx, value.ptr, value.len));
    }
    JS_SetPropertyUint32(ctx, a, 2, h);
    f->head_done = 1;
    JSValue fn = JS_DupValue(ctx, f->res[0]);
    js_rq_ref(rq);
    js_call(ws, rq, fn, 1, (JSValueConst *)&a, "in a fetch callback");
    JS_FreeValue(ctx, fn);
    JS_FreeValue(ctx, a);
    js_rq_unref(rq);
}

static void js_fetch_on_body(void *arg, helios_subreq *s, helios_buf chunk, int last)
{
    js_fetch *f = arg;
    JSContext *ctx = f->rq->ws->ctx;
    if (last)
        f->s = NULL; /* freed by the core after this call */
    if (!chunk.len && !last)
        return;
    (void)s;
    JSValue c =
        chunk.len ? JS_NewArrayBufferCopy(ctx, (const uint8_t *)chunk.ptr, chunk.len) : JS_NULL;
    js_fetch_feed(f, c, last, NULL);
}

static void js_fetch_on_error(void *arg, helios_subreq *s, int status, const char *reason)
{
    (void)s;
    js_fetch *f = arg;
    char msg[256];
    snprintf(msg, sizeof(msg), "fetch failed: %d %s", status, reason ? reason : "");
    f->s = NULL;
    js_fetch_fail(f, msg);
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
    js_fetch_fail(f, msg);
}

static js_fetch *js_fetch_by_id(js_worker *ws, int id)
{
    for (js_rq *rq = ws->rqs; rq; rq = rq->next)
        for (js_fetch *f = rq->fetches; f; f = f->next)
            if (f->id == id)
                return f;
    return NULL;
}

/* hx.fetchCancel(id) (MAGIC 0): the body stream was cancelled, nothing
 * more is called back; hx.fetchPause(id, pause) (MAGIC 1): the body stream
 * is full (or has room again), stop (or resume) reading the upstream */
JSValue nat_fetch_ctl(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv,
                      int magic)
{
    (void)this_val;
    (void)argc;
    js_worker *ws = js_ws(ctx);
    int id;
    if (JS_ToInt32(ctx, &id, argv[0]))
        return JS_EXCEPTION;
    js_fetch *f = js_fetch_by_id(ws, id);
    if (f && magic == 0)
        js_fetch_free(ws, f, 1);
    else if (f && f->s)
        js_api->subreq_pause(f->s, JS_ToBool(ctx, argv[1]));
    return JS_UNDEFINED;
}

typedef struct js_sub_hdrs {
    helios_subreq *s;
    int skip_host; /* the URL's host replaces any Host given */
    int have_host;
} js_sub_hdrs;

static int js_sub_header(void *arg, const char *n, const char *v)
{
    js_sub_hdrs *h = arg;
    if (js_hop_header(n))
        return 0;
    if (strcasecmp(n, "host") == 0) {
        if (h->skip_host)
            return 0;
        h->have_host = 1;
    }
    return js_api->subreq_header_add(h->s, n, v) == 0 ? 0 : -1;
}

/* Sends F (see the top of the file for the parent and Host rules). A
 * failure rejects its promise. */
static void js_fetch_start(js_worker *ws, js_fetch *f)
{
    JSContext *ctx = ws->ctx;
    js_rq *rq = f->rq;
    f->unsent = 0;
    ws->unsent--;
    helios_request *parent = rq->r && rq->waits == 0 ? rq->r : NULL;
    const char *up = f->upstream;
    char err[256] = "";
    if (f->own) {
        up = parent ? NULL : rq->upstream;
        if (up && up[0] == '\0') {
            js_fetch_settle(f, 1, js_type_error(ctx, "fetch(): the route has no upstream"));
            return;
        }
    }
    helios_subreq *s =
        js_api->subreq_new(ws->w, parent, up, f->method, f->target, err, sizeof(err));
    if (s == NULL) {
        char msg[600];
        snprintf(msg, sizeof(msg), "fetch(%s %s%s): %s", f->method, f->own ? "" : f->upstream,
                 f->target, err);
        js_fetch_settle(f, 1, js_type_error(ctx, msg));
        return;
    }
    js_sub_hdrs sh = {s, f->host != NULL, 0};
    const char *hold = NULL;
    const uint8_t *p;
    size_t len;
    int bad = js_pairs(ctx, f->hdrs, js_sub_header, &sh) != 0;
    if (!bad && f->host && js_api->subreq_header_add(s, "host", f->host) != 0) {
        JS_ThrowTypeError(ctx, "fetch(): invalid host '%s'", f->host);
        bad = 1;
    }
    if (bad || js_bytes(ctx, f->body, &hold, &p, &len) != 0) {
        js_api->subreq_cancel(s);
        js_fetch_settle(f, 1, JS_GetException(ctx));
        return;
    }
    if (!f->host && !sh.have_host && !parent && rq->host[0])
        js_api->subreq_header_add(s, "host", rq->host);
    f->s = s;
    f->parented = parent != NULL;
    int rc = js_api->subreq_send(s, p, len, &js_fetch_cb, f);
    JS_FreeCString(ctx, hold);
    if (rc != 0) {
        f->s = NULL; /* freed by subreq_send */
        js_fetch_settle(f, 1, js_type_error(ctx, "fetch(): the subrequest could not be sent"));
        return;
    }
    JS_FreeValue(ctx, f->hdrs);
    JS_FreeValue(ctx, f->body);
    f->hdrs = f->body = JS_NULL;
    if (ws->cfg->timeout_ms)
        f->t = js_api->timer_add(ws->w, ws->cfg->timeout_ms, js_fetch_timeout, f);
}

/* Sends the fetches asked for during the run that just ended. Each
 * rejection runs JS, which may free or add fetches: rescan each time. */
void js_fetch_flush(js_worker *ws)
{
    while (ws->unsent > 0) {
        js_fetch *found = NULL;
        for (js_rq *rq = ws->rqs; rq && !found; rq = rq->next)
            for (js_fetch *f = rq->fetches; f && !found; f = f->next)
                if (f->unsent)
                    found = f;
        if (found == NULL) {
            ws->unsent = 0;
            return;
        }
        js_fetch_start(ws, found);
    }
}

/* RQ ended with ctx.waitUntil work pending: its fetches that have it as
 * parent are cancelled by the core now, so reject them (the waitUntil work
 * may be waiting for them). */
void js_fetch_orphaned(js_worker *ws, js_rq *rq)
{
    for (;;) {
        js_fetch *f = rq->fetches;
        while (f && !(f->parented && f->s))
            f = f->next;
        if (f == NULL)
            return;
        (void)ws;
        js_api->subreq_cancel(f->s);
        f->s = NULL;
        js_fetch_fail(f, "fetch() cancelled: the request it was made for ended");
    }
}

static char *js_strdup_js(JSContext *ctx, JSValueConst v)
{
    const char *c = JS_ToCString(ctx, v);
    char *out = c ? strdup(c) : NULL;
    JS_FreeCString(ctx, c);
    return out;
}

/* hx.fetch(tok|null, hostname, method, target, pairs|null, body|null, host,
 * sink) -> [Promise<[status, statusText, [name, value...]]>, id]; the body
 * then goes to sink(chunk ArrayBuffer | null, done, error message) */
JSValue nat_fetch(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_worker *ws = js_ws(ctx);
    if (ws->exec)
        return js_exec_fetch(ctx, argc, argv);
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL)
        rq = ws->cur;
    if (rq == NULL)
        return JS_ThrowTypeError(ctx, "fetch() is only available while handling a request");
    if (rq->r == NULL && !rq->lingering)
        return JS_ThrowTypeError(ctx, "fetch(): the request has ended");
    js_fetch *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return JS_ThrowOutOfMemory(ctx);
    f->res[0] = f->res[1] = JS_UNDEFINED;
    f->hdrs = JS_DupValue(ctx, argv[4]);
    f->body = JS_DupValue(ctx, argv[5]);
    f->sink = JS_DupValue(ctx, argv[7]);
    f->id = ++ws->next_fetch_id;
    if (ws->next_fetch_id >= INT_MAX - 1)
        ws->next_fetch_id = 0;
    f->rq = rq;
    f->next = rq->fetches;
    if (rq->fetches)
        rq->fetches->prev = f;
    rq->fetches = f;
    char *hostname = js_strdup_js(ctx, argv[1]);
    f->method = js_strdup_js(ctx, argv[2]);
    f->target = js_strdup_js(ctx, argv[3]);
    if (hostname == NULL || f->method == NULL || f->target == NULL) {
        free(hostname);
        js_fetch_free(ws, f, 0);
        return JS_EXCEPTION;
    }
    /* the incoming request's own host means the route's own upstream */
    f->own = rq->host[0] && strcasecmp(hostname, rq->host) == 0;
    if (!f->own) {
        f->upstream = hostname;
        hostname = NULL;
        if ((f->host = js_strdup_js(ctx, argv[6])) == NULL) {
            js_fetch_free(ws, f, 0);
            return JS_EXCEPTION;
        }
    }
    free(hostname);
    JSValue p = JS_NewPromiseCapability(ctx, f->res);
    if (JS_IsException(p)) {
        js_fetch_free(ws, f, 0);
        return p;
    }
    f->unsent = 1;
    ws->unsent++;
    JSValue ret = JS_NewArray(ctx);
    JS_SetPropertyUint32(ctx, ret, 0, p);
    JS_SetPropertyUint32(ctx, ret, 1, JS_NewInt32(ctx, f->id));
    return ret;
}
