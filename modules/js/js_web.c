/*
 * js_web.c - the natives behind prelude.js's Web API: the `hx` object the
 * prelude is called with. prelude.js builds Request, Response, Headers,
 * URL, TextEncoder/TextDecoder, crypto and console on top of these.
 *
 * Natives take the request's token object (js_tok_rq) and check that the
 * request is still there: JS may hold a Request long after it ended.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include <helios/util/http.h>

#include "js_internal.h"

/* ------------------------------------------------------------------ */
/* bytes helpers                                                       */

/* Bytes of a string or ArrayBuffer (or view) V. *HOLD receives a C string
 * to free with JS_FreeCString (or NULL). Returns 0, or -1 with an
 * exception. */
int js_bytes(JSContext *ctx, JSValueConst v, const char **hold, const uint8_t **p, size_t *len)
{
    *hold = NULL;
    *p = NULL;
    *len = 0;
    if (JS_IsNull(v) || JS_IsUndefined(v))
        return 0;
    if (JS_IsString(v)) {
        *hold = JS_ToCStringLen(ctx, len, v);
        if (*hold == NULL)
            return -1;
        *p = (const uint8_t *)*hold;
        return 0;
    }
    size_t n;
    uint8_t *b = JS_GetArrayBuffer(ctx, &n, v);
    if (b) {
        *p = b;
        *len = n;
        return 0;
    }
    JS_FreeValue(ctx, JS_GetException(ctx));
    size_t off, blen, bpe;
    JSValue buf = JS_GetTypedArrayBuffer(ctx, v, &off, &blen, &bpe);
    if (JS_IsException(buf))
        return -1;
    b = JS_GetArrayBuffer(ctx, &n, buf);
    JS_FreeValue(ctx, buf); /* the view keeps the buffer alive */
    if (b == NULL || off + blen > n)
        return -1;
    *p = b + off;
    *len = blen;
    return 0;
}

int js_hop_header(const char *n)
{
    static const char *const hop[] = {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding",
        "te",         "trailer",    "upgrade",          "content-length",
        NULL,
    };
    for (const char *const *h = hop; *h; h++)
        if (strcasecmp(n, *h) == 0)
            return 1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* natives: hx.*                                                       */

static JSValue nat_log(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    int level;
    if (JS_ToInt32(ctx, &level, argv[0]))
        return JS_EXCEPTION;
    const char *s = JS_ToCString(ctx, argv[1]);
    if (s == NULL)
        return JS_EXCEPTION;
    if (level < HELIOS_LOG_ERROR || level > HELIOS_LOG_DEBUG)
        level = HELIOS_LOG_INFO;
    if (js_ws(ctx)->exec)
        js_exec_log(js_ws(ctx), level, s);
    else if (!js_ws(ctx)->trial)
        js_api->log(level, JS_NAME, "%s: console: %s", js_ws(ctx)->cfg->script, s);
    JS_FreeCString(ctx, s);
    return JS_UNDEFINED;
}

static JSValue nat_method(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL || rq->r == NULL)
        return JS_NewString(ctx, "GET");
    helios_buf m = js_api->req_method(rq->r);
    return JS_NewStringLen(ctx, m.ptr, m.len);
}

static JSValue nat_url(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL || rq->r == NULL)
        return JS_NewString(ctx, "http://localhost/");
    helios_buf host = js_api->req_header(rq->r, "host");
    if (host.ptr == NULL || host.len == 0)
        host = js_api->req_host(rq->r);
    if (host.ptr == NULL || host.len == 0)
        host = (helios_buf){"localhost", 9};
    helios_buf t = js_api->req_target(rq->r);
    /* absolute-form targets carry their own scheme and host */
    if (t.len >= 7 &&
        (strncasecmp(t.ptr, "http://", 7) == 0 || strncasecmp(t.ptr, "https://", 8) == 0))
        return JS_NewStringLen(ctx, t.ptr, t.len);
    size_t n = 7 + host.len + t.len;
    char stackbuf[1024];
    char *buf = n < sizeof(stackbuf) ? stackbuf : malloc(n + 1);
    if (buf == NULL)
        return JS_ThrowOutOfMemory(ctx);
    memcpy(buf, "http://", 7);
    memcpy(buf + 7, host.ptr, host.len);
    memcpy(buf + 7 + host.len, t.ptr, t.len);
    JSValue v = JS_NewStringLen(ctx, buf, n);
    if (buf != stackbuf)
        free(buf);
    return v;
}

static JSValue nat_headers(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    JSValue a = JS_NewArray(ctx);
    if (JS_IsException(a) || rq == NULL || rq->r == NULL)
        return a;
    size_t n = js_api->req_header_count(rq->r);
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++) {
        helios_buf name, value;
        if (js_api->req_header_at(rq->r, i, &name, &value) != 0)
            continue;
        JS_SetPropertyUint32(ctx, a, k++, JS_NewStringLen(ctx, name.ptr, name.len));
        JS_SetPropertyUint32(ctx, a, k++, JS_NewStringLen(ctx, value.ptr, value.len));
    }
    return a;
}

/* Walks [[name, value]...] PAIRS calling FN(ARG, name, value) with C
 * strings. Returns 0, or -1 with an exception (FN returning -1 throws). */
int js_pairs(JSContext *ctx, JSValueConst pairs, int (*fn)(void *arg, const char *n, const char *v),
             void *arg)
{
    if (JS_IsNull(pairs) || JS_IsUndefined(pairs))
        return 0;
    JSValue lv = JS_GetPropertyStr(ctx, pairs, "length");
    uint32_t n;
    if (JS_ToUint32(ctx, &n, lv)) {
        JS_FreeValue(ctx, lv);
        return -1;
    }
    JS_FreeValue(ctx, lv);
    for (uint32_t i = 0; i < n; i++) {
        JSValue p = JS_GetPropertyUint32(ctx, pairs, i);
        JSValue nv = JS_GetPropertyUint32(ctx, p, 0), vv = JS_GetPropertyUint32(ctx, p, 1);
        JS_FreeValue(ctx, p);
        const char *name = JS_ToCString(ctx, nv), *value = JS_ToCString(ctx, vv);
        JS_FreeValue(ctx, nv);
        JS_FreeValue(ctx, vv);
        int rc = name && value ? fn(arg, name, value) : -3;
        if (rc == -1)
            JS_ThrowTypeError(ctx, "invalid header '%s'", name);
        else if (rc == -2)
            JS_ThrowOutOfMemory(ctx);
        JS_FreeCString(ctx, name);
        JS_FreeCString(ctx, value);
        if (rc != 0)
            return -1;
    }
    return 0;
}

typedef struct js_resp_hdrs {
    helios_request *r;
    char *ctype; /* malloc'd */
} js_resp_hdrs;

static int js_resp_header(void *arg, const char *n, const char *v)
{
    js_resp_hdrs *h = arg;
    if (strcasecmp(n, "content-type") == 0) {
        if (h->ctype == NULL && (h->ctype = strdup(v)) == NULL)
            return -2;
        return 0;
    }
    if (js_hop_header(n))
        return 0;
    return js_api->resp_header_add(h->r, n, v) == 0 ? 0 : -1;
}

/* The head of a response from hx.respond* (tok, status, pairs, ...): the
 * request in *RQ, the status (200..599) in *STATUS, the header pairs set
 * on the response but Content-Type, which goes to H->ctype (malloc'd).
 * 0; 1 when the request is gone or already answered; -1 with an exception. */
static int js_resp_head(JSContext *ctx, JSValueConst *argv, js_rq **rqp, int *status,
                        js_resp_hdrs *h)
{
    js_rq *rq = *rqp = js_tok_rq(argv[0]);
    if (rq == NULL || rq->r == NULL || rq->responded)
        return 1;
    JSValueConst st = argv[1], pairs = argv[2];
    h->r = rq->r;
    h->ctype = NULL;
    if (JS_ToInt32(ctx, status, st))
        return -1;
    if (*status < 200 || *status > 599) {
        JS_ThrowRangeError(ctx, "response status %d is not from 200 to 599", *status);
        return -1;
    }
    if (js_pairs(ctx, pairs, js_resp_header, h) != 0) {
        free(h->ctype);
        h->ctype = NULL;
        return -1;
    }
    return 0;
}

/* hx.respond(tok, status, pairs, body, implied content type|null) -> true if sent */
/*
 * A string body handed over with no headers and the default Content-Type
 * (hx.respond(tok, status, null, string, null)): when it is the very same
 * JS string as the worker's previous such response (a literal is one atom:
 * `new Response('Hello')` answers it every time), the response is prepared
 * once (prepared_new, kept until config_free, one per worker) and then sent
 * with respond_prepared, without converting the string or validating the
 * header again. Bounded: the worker holds one string and one response.
 */
#define JS_SAME_MAX (64u * 1024)

static int js_same_candidate(JSValueConst *argv)
{
    return JS_IsNull(argv[2]) && JS_IsNull(argv[4]) && JS_VALUE_GET_TAG(argv[3]) == JS_TAG_STRING;
}

static int js_same_hit(js_worker *ws, int status, JSValueConst body)
{
    return ws->same_resp && status == ws->same_status &&
           JS_VALUE_GET_PTR(body) == JS_VALUE_GET_PTR(ws->same_body);
}

/* After a response sent the normal way: remember BODY, or prepare it when
 * it was the previous one too. */
static void js_same_note(js_worker *ws, int status, JSValueConst body, const uint8_t *p, size_t len)
{
    JSContext *ctx = ws->ctx;
    if (ws->same_resp || len > JS_SAME_MAX || status == 204 || status == 304)
        return;
    if (JS_VALUE_GET_TAG(ws->same_body) != JS_TAG_STRING ||
        JS_VALUE_GET_PTR(body) != JS_VALUE_GET_PTR(ws->same_body) || status != ws->same_status) {
        JS_FreeValue(ctx, ws->same_body);
        ws->same_body = JS_DupValue(ctx, body);
        ws->same_status = status;
        return;
    }
    static const char *const hdrs[2] = {"Content-Type", "text/plain;charset=UTF-8"};
    helios_prepared *r = js_api->prepared_new(status, hdrs, 1, p, len, NULL, 0);
    if (r && js_keep_prepared(ws->cfg, r) == 0)
        ws->same_resp = r;
}

static JSValue nat_respond(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq;
    int status;
    /* a string body answered the same way as last time: prepared once */
    int same = js_same_candidate(argv);
    rq = js_tok_rq(argv[0]);
    if (same && rq != NULL && rq->r != NULL && !rq->responded &&
        JS_VALUE_GET_TAG(argv[1]) == JS_TAG_INT &&
        js_same_hit(rq->ws, JS_VALUE_GET_INT(argv[1]), argv[3])) {
        if (js_api->respond_prepared(rq->r, rq->ws->same_resp) != 0)
            return JS_ThrowTypeError(ctx, "the response could not be sent");
        js_rq_settle(rq, HELIOS_RESPONDED);
        return JS_TRUE;
    }
    js_resp_hdrs h;
    int hr = js_resp_head(ctx, argv, &rq, &status, &h);
    if (hr != 0)
        return hr > 0 ? JS_FALSE : JS_EXCEPTION;
    js_worker *ws = rq->ws;
    const char *hold;
    const uint8_t *p;
    size_t len;
    if (js_bytes(ctx, argv[3], &hold, &p, &len) != 0) {
        free(h.ctype);
        return JS_EXCEPTION;
    }
    /* no Content-Type among the headers: the one the body implies */
    const char *ctype = h.ctype, *implied = NULL;
    if (ctype == NULL && JS_IsString(argv[4]))
        ctype = implied = JS_ToCString(ctx, argv[4]);
    else if (ctype == NULL && JS_IsString(argv[3]))
        ctype = "text/plain;charset=UTF-8";
    if (status == 204 || status == 304)
        len = 0;
    int rc = js_api->respond(rq->r, status, ctype, p, len);
    if (rc == 0 && same)
        js_same_note(ws, status, argv[3], p, len);
    JS_FreeCString(ctx, hold);
    JS_FreeCString(ctx, implied);
    free(h.ctype);
    if (rc != 0)
        return JS_ThrowTypeError(ctx, "the response could not be sent (invalid Content-Type?)");
    js_rq_settle(rq, HELIOS_RESPONDED);
    return JS_TRUE;
}

/* ---- streamed responses (host API 1.3) ---- */

/* The client took the queued response: the pump waiting in
 * hx.respondWait goes on. */
static void js_resp_drained(void *arg)
{
    js_rq *rq = arg;
    js_worker *ws = rq->ws;
    JSValue fn = rq->resp_drain;
    rq->resp_drain = JS_UNDEFINED;
    if (JS_IsUndefined(fn))
        return;
    js_call(ws, rq, fn, 0, NULL, "in a streamed response");
    JS_FreeValue(ws->ctx, fn);
}

/* hx.respondBegin(tok, status, pairs, implied content type|null, length
 * or -1) -> true once the head is sent; the body follows with
 * hx.respondBody (a LENGTH >= 0 is sent as Content-Length) */
static JSValue nat_respond_begin(JSContext *ctx, JSValueConst this_val, int argc,
                                 JSValueConst *argv)
{
    (void)this_val;
    js_rq *rq;
    int status;
    js_resp_hdrs h;
    int hr = js_resp_head(ctx, argv, &rq, &status, &h);
    if (hr != 0)
        return hr > 0 ? JS_FALSE : JS_EXCEPTION;
    int64_t length = -1;
    if (argc > 4 && JS_ToInt64(ctx, &length, argv[4]) != 0) {
        free(h.ctype);
        return JS_EXCEPTION;
    }
    if (length >= 0) {
        char cl[24];
        snprintf(cl, sizeof(cl), "%lld", (long long)length);
        js_api->resp_header_set(rq->r, "content-length", cl);
    }
    const char *implied =
        h.ctype == NULL && JS_IsString(argv[3]) ? JS_ToCString(ctx, argv[3]) : NULL;
    int rc = js_api->respond_begin(rq->r, status, h.ctype ? h.ctype : implied, js_resp_drained, rq);
    JS_FreeCString(ctx, implied);
    free(h.ctype);
    if (rc != 0)
        return JS_ThrowTypeError(ctx, "the response could not be sent (invalid Content-Type?)");
    rq->streaming = 1;
    js_rq_settle(rq, HELIOS_RESPONDED);
    return JS_TRUE;
}

/* hx.respondBody(tok, chunk|null, last) -> 0 send more, 1 wait for
 * hx.respondWait, -1 the response takes no more (client gone, HEAD...) */
static JSValue nat_respond_body(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL || rq->r == NULL)
        return JS_NewInt32(ctx, -1);
    const char *hold;
    const uint8_t *p;
    size_t len;
    if (js_bytes(ctx, argv[1], &hold, &p, &len) != 0)
        return JS_EXCEPTION;
    int rc = js_api->respond_body(rq->r, p, len, JS_ToBool(ctx, argv[2]));
    JS_FreeCString(ctx, hold);
    return JS_NewInt32(ctx, rc);
}

/* Streamed bodies' controls on RQ (nothing once the request ended):
 *   hx.respondWait(tok, fn)     (MAGIC 0) FN runs once the client drained;
 *   hx.respondAbort(tok, msg)   (MAGIC 1) the streamed body failed: cut off;
 *   hx.bodyPause(tok, pause)    (MAGIC 2) the request body stream is full
 *                               (or has room again): stop (resume) reading */
static JSValue nat_stream_ctl(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv,
                              int magic)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL || rq->r == NULL)
        return JS_UNDEFINED;
    if (magic == 0) {
        JS_FreeValue(ctx, rq->resp_drain);
        rq->resp_drain = JS_DupValue(ctx, argv[1]);
    } else if (magic == 1) {
        const char *msg = JS_ToCString(ctx, argv[1]);
        js_api->respond_abort(rq->r, msg);
        JS_FreeCString(ctx, msg);
    } else if (rq->body_state == JS_BODY_READING) {
        js_api->req_body_pause(rq->r, JS_ToBool(ctx, argv[1]));
    }
    return JS_UNDEFINED;
}

/* hx.fail(tok, error): logs ERROR with its stack, answers 500. */
static JSValue nat_fail(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_worker *ws = js_ws(ctx);
    js_rq *rq = js_tok_rq(argv[0]);
    js_report(ws, rq, JS_DupValue(ctx, argv[1]), "in the handler");
    return JS_UNDEFINED;
}

/* filter mode: hx.pass(tok, pairs|null): the request goes on, with the
 * request headers replaced by PAIRS when given. */
static int js_req_header_add(void *arg, const char *n, const char *v)
{
    return js_api->req_header_add(arg, n, v) == 0 ? 0 : -1;
}

static JSValue nat_pass(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL || rq->r == NULL || rq->responded)
        return JS_FALSE;
    if (!JS_IsNull(argv[1]) && !JS_IsUndefined(argv[1])) {
        /* remove every current header, then add the new list */
        for (;;) {
            helios_buf name;
            if (js_api->req_header_count(rq->r) == 0 ||
                js_api->req_header_at(rq->r, 0, &name, NULL) != 0)
                break;
            char nb[256];
            if (name.len >= sizeof(nb))
                break;
            memcpy(nb, name.ptr, name.len);
            nb[name.len] = '\0';
            if (js_api->req_header_remove(rq->r, nb) <= 0)
                break;
        }
        if (js_pairs(ctx, argv[1], js_req_header_add, rq->r) != 0)
            return JS_EXCEPTION;
    }
    js_rq_settle(rq, HELIOS_CONTINUE);
    return JS_TRUE;
}

/* filter mode: hx.rh(tok, op, name[, value]) on the response headers:
 * op 0 get, 1 set, 2 append, 3 delete. */
static JSValue nat_resp_header(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    js_rq *rq = js_tok_rq(argv[0]);
    int op;
    if (rq == NULL || rq->r == NULL)
        return JS_ThrowTypeError(ctx, "the response is gone");
    if (JS_ToInt32(ctx, &op, argv[1]))
        return JS_EXCEPTION;
    const char *n = JS_ToCString(ctx, argv[2]);
    const char *v = op == 1 || op == 2 ? (argc > 3 ? JS_ToCString(ctx, argv[3]) : NULL) : NULL;
    JSValue ret = JS_UNDEFINED;
    if (n == NULL || ((op == 1 || op == 2) && v == NULL)) {
        ret = JS_EXCEPTION;
    } else if (op == 0) {
        helios_buf b = js_api->resp_header(rq->r, n);
        ret = b.ptr ? JS_NewStringLen(ctx, b.ptr, b.len) : JS_NULL;
    } else if (op == 3) {
        js_api->resp_header_remove(rq->r, n);
    } else if (js_hop_header(n)) {
        ret = JS_ThrowTypeError(ctx, "header '%s' is managed by heliosd", n);
    } else if ((op == 1 ? js_api->resp_header_set(rq->r, n, v)
                        : js_api->resp_header_add(rq->r, n, v)) != 0) {
        ret = JS_ThrowTypeError(ctx, "invalid header '%s'", n);
    }
    JS_FreeCString(ctx, n);
    JS_FreeCString(ctx, v);
    return ret;
}

/* ---- request body ---- */

/* Stream mode (hx.bodyStream): each piece goes to the sink as it comes;
 * the JS stream bounds what it queues (streams.js). */
static void js_body_to_sink(js_rq *rq, helios_buf chunk, int last, int error)
{
    js_worker *ws = rq->ws;
    JSContext *ctx = ws->ctx;
    if (last || error)
        rq->body_state = JS_BODY_DONE;
    JSValue fn = JS_DupValue(ctx, rq->body_sink);
    JSValue args[3] = {JS_NULL, JS_NewBool(ctx, last || error), JS_UNDEFINED};
    if (error)
        args[2] = JS_NewString(ctx, "the request body could not be read");
    else if (chunk.len)
        args[0] = JS_NewArrayBufferCopy(ctx, (const uint8_t *)chunk.ptr, chunk.len);
    if (last || error) {
        JS_FreeValue(ctx, rq->body_sink);
        rq->body_sink = JS_UNDEFINED;
    }
    if (chunk.len || last || error)
        js_call(ws, rq, fn, 3, args, "in a request body stream");
    JS_FreeValue(ctx, fn);
    JS_FreeValue(ctx, args[0]);
    JS_FreeValue(ctx, args[2]);
}

static void js_body_data(void *arg, helios_buf chunk, int last, int error)
{
    js_rq *rq = arg;
    js_worker *ws = rq->ws;
    if (rq->body_state != JS_BODY_READING)
        return;
    if (!JS_IsUndefined(rq->body_sink)) {
        js_body_to_sink(rq, chunk, last, error);
        return;
    }
    JSContext *ctx = ws->ctx;
    JSValue v = JS_UNDEFINED;
    int settle = -1; /* 0 resolve, 1 reject */
    if (error) {
        v = JS_NewError(ctx);
        JS_DefinePropertyValueStr(ctx, v, "message",
                                  JS_NewString(ctx, "the request body could not be read"),
                                  JS_PROP_CONFIGURABLE | JS_PROP_WRITABLE);
        settle = 1;
    } else if (rq->body_len + chunk.len > ws->cfg->max_body) {
        char msg[128];
        snprintf(msg, sizeof(msg), "the request body is over max_body (%llu bytes)",
                 (unsigned long long)ws->cfg->max_body);
        v = JS_NewError(ctx);
        JS_DefinePropertyValueStr(ctx, v, "message", JS_NewString(ctx, msg),
                                  JS_PROP_CONFIGURABLE | JS_PROP_WRITABLE);
        settle = 1;
    } else {
        if (chunk.len) {
            if (rq->body_len + chunk.len > rq->body_cap) {
                size_t cap = rq->body_cap ? rq->body_cap : 4096;
                while (cap < rq->body_len + chunk.len)
                    cap *= 2;
                char *nb = realloc(rq->body, cap);
                if (nb == NULL) {
                    error = 1;
                    v = JS_NewError(ctx);
                    settle = 1;
                } else {
                    rq->body = nb;
                    rq->body_cap = cap;
                }
            }
            if (!error) {
                memcpy(rq->body + rq->body_len, chunk.ptr, chunk.len);
                rq->body_len += chunk.len;
            }
        }
        if (settle < 0 && last) {
            v = JS_NewArrayBufferCopy(ctx, (const uint8_t *)rq->body, rq->body_len);
            settle = 0;
        }
    }
    if (settle < 0)
        return;
    rq->body_state = JS_BODY_DONE;
    JSValue fn = JS_DupValue(ctx, rq->body_res[settle]);
    free(rq->body);
    rq->body = NULL;
    rq->body_len = rq->body_cap = 0;
    js_call(ws, rq, fn, 1, (JSValueConst *)&v, "in the request body callback");
    JS_FreeValue(ctx, fn);
    JS_FreeValue(ctx, v);
}

/* hx.body(tok) -> Promise<ArrayBuffer> (the same promise every time) */
static JSValue nat_body(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL)
        return JS_ThrowTypeError(ctx, "not a request");
    if (!JS_IsUndefined(rq->body_p))
        return JS_DupValue(ctx, rq->body_p);
    if (rq->r == NULL)
        return JS_ThrowTypeError(ctx, "the request has ended: its body is gone");
    if (rq->body_state != JS_BODY_NONE)
        return JS_ThrowTypeError(ctx, "the request body is being read as a stream (request.body)");
    JSValue p = JS_NewPromiseCapability(ctx, rq->body_res);
    if (JS_IsException(p))
        return p;
    rq->body_p = JS_DupValue(ctx, p);
    rq->body_state = JS_BODY_READING;
    if (js_api->req_body_read(rq->r, js_body_data, rq) != 0) {
        rq->body_state = JS_BODY_DONE;
        JSValue e = JS_NewError(ctx);
        JS_DefinePropertyValueStr(ctx, e, "message",
                                  JS_NewString(ctx, "the request body cannot be read here"),
                                  JS_PROP_CONFIGURABLE | JS_PROP_WRITABLE);
        JSValue r = JS_Call(ctx, rq->body_res[1], JS_UNDEFINED, 1, (JSValueConst *)&e);
        JS_FreeValue(ctx, r);
        JS_FreeValue(ctx, e);
    }
    return p;
}

/* hx.bodyStream(tok, sink): the body piece by piece, sink(chunk, done,
 * error); throws if the body was already asked for */
static JSValue nat_body_stream(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL)
        return JS_ThrowTypeError(ctx, "not a request");
    if (rq->r == NULL)
        return JS_ThrowTypeError(ctx, "the request has ended: its body is gone");
    if (rq->body_state != JS_BODY_NONE)
        return JS_ThrowTypeError(ctx, "the request body is already being read");
    rq->body_sink = JS_DupValue(ctx, argv[1]);
    rq->body_state = JS_BODY_READING;
    if (js_api->req_body_read(rq->r, js_body_data, rq) != 0) {
        rq->body_state = JS_BODY_DONE;
        JS_FreeValue(ctx, rq->body_sink);
        rq->body_sink = JS_UNDEFINED;
        return JS_ThrowTypeError(ctx, "the request body cannot be read here");
    }
    return JS_UNDEFINED;
}

/* ---- crypto, text ---- */

static JSValue nat_random(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    const char *hold;
    const uint8_t *p;
    size_t len;
    if (js_bytes(ctx, argv[0], &hold, &p, &len) != 0 || hold != NULL) {
        JS_FreeCString(ctx, hold);
        return JS_ThrowTypeError(ctx, "expected a typed array");
    }
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom((uint8_t *)p + done, len - done, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return JS_ThrowInternalError(ctx, "getrandom: %s", strerror(errno));
        done += (size_t)n;
    }
    return JS_DupValue(ctx, argv[0]);
}

static JSValue nat_encode(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    size_t len;
    const char *s = JS_ToCStringLen(ctx, &len, argv[0]);
    if (s == NULL)
        return JS_EXCEPTION;
    JSValue b = JS_NewArrayBufferCopy(ctx, (const uint8_t *)s, len);
    JS_FreeCString(ctx, s);
    return b;
}

/* Length of the valid UTF-8 sequence at P (N bytes left), or 0. */
static size_t js_utf8_seq(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t min, cp;
    if ((c & 0xe0) == 0xc0) {
        len = 2, min = 0x80, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3, min = 0x800, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4, min = 0x10000, cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* hx.decode(buffer|view, fatal, ignoreBOM) -> string (U+FFFD for bad bytes) */
static JSValue nat_decode(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    const char *hold;
    const uint8_t *p;
    size_t len;
    if (js_bytes(ctx, argv[0], &hold, &p, &len) != 0)
        return JS_EXCEPTION;
    int fatal = JS_ToBool(ctx, argv[1]), ignore_bom = JS_ToBool(ctx, argv[2]);
    if (!ignore_bom && len >= 3 && p[0] == 0xef && p[1] == 0xbb && p[2] == 0xbf) {
        p += 3;
        len -= 3;
    }
    size_t i = 0;
    while (i < len) {
        size_t k = js_utf8_seq(p + i, len - i);
        if (k == 0)
            break;
        i += k;
    }
    if (i == len) { /* valid: no copy */
        JSValue v = JS_NewStringLen(ctx, (const char *)p, len);
        JS_FreeCString(ctx, hold);
        return v;
    }
    if (fatal) {
        JS_FreeCString(ctx, hold);
        return JS_ThrowTypeError(ctx, "TextDecoder: invalid UTF-8 at byte %zu", i);
    }
    char *out = malloc(len * 3 + 1);
    if (out == NULL) {
        JS_FreeCString(ctx, hold);
        return JS_ThrowOutOfMemory(ctx);
    }
    size_t o = 0;
    for (i = 0; i < len;) {
        size_t k = js_utf8_seq(p + i, len - i);
        if (k == 0) {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        } else {
            memcpy(out + o, p + i, k);
            o += k;
            i += k;
        }
    }
    JSValue v = JS_NewStringLen(ctx, out, o);
    free(out);
    JS_FreeCString(ctx, hold);
    return v;
}

/* ---- binary codecs (node:buffer, atob/btoa, crypto JWK) ---- */

/* An encoder writes at most 2 * LEN + 4 bytes of text for LEN bytes and
 * returns how many; a decoder at most LEN bytes for LEN characters, and
 * returns how many or -1 (refused). OPT is the native's second argument. */
typedef size_t js_encoder(const uint8_t *p, size_t len, char *out, int opt);
typedef long js_decoder(const char *s, size_t len, uint8_t *out, int opt);

/* hx.NAME(bytes, opt) -> string, through ENC */
static JSValue js_encode(JSContext *ctx, JSValueConst *argv, js_encoder *enc)
{
    const char *hold;
    const uint8_t *p;
    size_t len;
    if (js_bytes(ctx, argv[0], &hold, &p, &len) != 0)
        return JS_EXCEPTION;
    char *out = malloc(2 * len + 4);
    if (out == NULL) {
        JS_FreeCString(ctx, hold);
        return JS_ThrowOutOfMemory(ctx);
    }
    size_t n = enc(p, len, out, JS_ToBool(ctx, argv[1]));
    JSValue v = JS_NewStringLen(ctx, out, n);
    free(out);
    JS_FreeCString(ctx, hold);
    return v;
}

/* hx.NAME(string, opt) -> ArrayBuffer, or null when DEC refuses it */
static JSValue js_decode(JSContext *ctx, JSValueConst *argv, js_decoder *dec)
{
    size_t len;
    const char *s = JS_ToCStringLen(ctx, &len, argv[0]);
    if (s == NULL)
        return JS_EXCEPTION;
    uint8_t *out = malloc(len + 1);
    if (out == NULL) {
        JS_FreeCString(ctx, s);
        return JS_ThrowOutOfMemory(ctx);
    }
    long n = dec(s, len, out, JS_ToBool(ctx, argv[1]));
    JS_FreeCString(ctx, s);
    JSValue v = n < 0 ? JS_NULL : JS_NewArrayBufferCopy(ctx, out, (size_t)n);
    free(out);
    return v;
}

/* standard base64 (padded), or base64url (not) when URL */
static size_t js_b64_encode(const uint8_t *p, size_t len, char *out, int url)
{
    const char *a = url ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                        : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t n = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = a[n >> 18];
        out[o++] = a[(n >> 12) & 63];
        out[o++] = a[(n >> 6) & 63];
        out[o++] = a[n & 63];
    }
    if (i < len) {
        uint32_t n = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        out[o++] = a[n >> 18];
        out[o++] = a[(n >> 12) & 63];
        if (i + 1 < len)
            out[o++] = a[(n >> 6) & 63];
        else if (!url)
            out[o++] = '=';
        if (!url)
            out[o++] = '=';
    }
    return o;
}

/* Both alphabets; whitespace is skipped; decoding stops at '=' and skips
 * other bytes (lenient, as node is) unless STRICT refuses them, padding
 * before the end, or a partial byte. */
static long js_b64_decode(const char *s, size_t len, uint8_t *out, int strict)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0, i = 0;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int v;
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '+' || c == '-')
            v = 62;
        else if (c == '/' || c == '_')
            v = 63;
        else if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f')
            continue;
        else if (c == '=')
            break;
        else if (strict)
            return -1;
        else
            continue;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (strict) {
        for (; i < len; i++)
            if (s[i] != '=' && s[i] != ' ' && s[i] != '\n' && s[i] != '\r' && s[i] != '\t')
                return -1;
        if (bits >= 6)
            return -1;
    }
    return (long)o;
}

static size_t js_hex_encode(const uint8_t *p, size_t len, char *out, int opt)
{
    (void)opt;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex[p[i] >> 4];
        out[2 * i + 1] = hex[p[i] & 15];
    }
    return 2 * len;
}

/* pairs of hex digits up to the first that is not (as node does) */
static long js_hex_decode(const char *s, size_t len, uint8_t *out, int opt)
{
    (void)opt;
    size_t o = 0;
    for (size_t i = 0; i + 1 < len; i += 2) {
        int hi = helios_http_hexval((unsigned char)s[i]);
        int lo = helios_http_hexval((unsigned char)s[i + 1]);
        if (hi < 0 || lo < 0)
            break;
        out[o++] = (uint8_t)(hi << 4 | lo);
    }
    return (long)o;
}

/* bytes as code points 0..255, written as UTF-8 (two bytes at most each) */
static size_t js_latin1_encode(const uint8_t *p, size_t len, char *out, int opt)
{
    (void)opt;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x80) {
            out[o++] = (char)p[i];
        } else {
            out[o++] = (char)(0xc0 | p[i] >> 6);
            out[o++] = (char)(0x80 | (p[i] & 0x3f));
        }
    }
    return o;
}

/* hx.b64enc(bytes, url) -> string; hx.b64dec(string, strict) ->
 * ArrayBuffer | null; hx.hexenc(bytes); hx.hexdec(string); hx.latin1(bytes)
 * -> string of code points 0..255. MAGIC indexes js_codecs. */
static const struct {
    js_encoder *enc;
    js_decoder *dec;
} js_codecs[] = {
    {js_b64_encode, NULL}, {NULL, js_b64_decode},    {js_hex_encode, NULL},
    {NULL, js_hex_decode}, {js_latin1_encode, NULL},
};

static JSValue nat_codec(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv,
                         int magic)
{
    (void)this_val;
    (void)argc;
    if (js_codecs[magic].enc)
        return js_encode(ctx, argv, js_codecs[magic].enc);
    return js_decode(ctx, argv, js_codecs[magic].dec);
}

/* hx.now() -> milliseconds (with fractions) on the monotonic clock */
static JSValue nat_now(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    (void)argv;
    return JS_NewFloat64(ctx, (double)js_now_us() / 1000.0);
}

static const JSCFunctionListEntry js_natives[] = {
    JS_CFUNC_DEF("log", 2, nat_log),
    JS_CFUNC_DEF("method", 1, nat_method),
    JS_CFUNC_DEF("url", 1, nat_url),
    JS_CFUNC_DEF("headers", 1, nat_headers),
    JS_CFUNC_DEF("respond", 5, nat_respond),
    JS_CFUNC_DEF("fail", 2, nat_fail),
    JS_CFUNC_DEF("pass", 2, nat_pass),
    JS_CFUNC_DEF("rh", 4, nat_resp_header),
    JS_CFUNC_DEF("body", 1, nat_body),
    JS_CFUNC_DEF("bodyStream", 2, nat_body_stream),
    JS_CFUNC_MAGIC_DEF("fetchCancel", 1, nat_fetch_ctl, 0),
    JS_CFUNC_MAGIC_DEF("fetchPause", 2, nat_fetch_ctl, 1),
    JS_CFUNC_DEF("respondBegin", 5, nat_respond_begin),
    JS_CFUNC_DEF("respondBody", 3, nat_respond_body),
    JS_CFUNC_MAGIC_DEF("respondWait", 2, nat_stream_ctl, 0),
    JS_CFUNC_MAGIC_DEF("respondAbort", 2, nat_stream_ctl, 1),
    JS_CFUNC_MAGIC_DEF("bodyPause", 2, nat_stream_ctl, 2),
    JS_CFUNC_DEF("fetch", 8, nat_fetch),
    JS_CFUNC_DEF("setTimeout", 3, nat_set_timeout),
    JS_CFUNC_DEF("clearTimeout", 1, nat_clear_timeout),
    JS_CFUNC_DEF("waitBegin", 1, nat_wait_begin),
    JS_CFUNC_DEF("waitEnd", 1, nat_wait_end),
    JS_CFUNC_DEF("random", 1, nat_random),
    JS_CFUNC_DEF("encode", 1, nat_encode),
    JS_CFUNC_DEF("decode", 3, nat_decode),
    JS_CFUNC_MAGIC_DEF("b64enc", 2, nat_codec, 0),
    JS_CFUNC_MAGIC_DEF("b64dec", 2, nat_codec, 1),
    JS_CFUNC_MAGIC_DEF("hexenc", 2, nat_codec, 2),
    JS_CFUNC_MAGIC_DEF("hexdec", 2, nat_codec, 3),
    JS_CFUNC_MAGIC_DEF("latin1", 2, nat_codec, 4),
    JS_CFUNC_DEF("now", 0, nat_now),
};

void js_natives_install(JSContext *ctx, JSValueConst hx)
{
    JS_SetPropertyFunctionList(ctx, hx, js_natives, sizeof(js_natives) / sizeof(js_natives[0]));
    js_crypto_natives_install(ctx, hx);
    js_cache_natives_install(ctx, hx);
}
