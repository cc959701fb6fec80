/*
 * js.c - Workers-style JavaScript handlers and filters on QuickJS.
 *
 * Engine model:
 *   - config_new compiles the script once per configuration generation to
 *     QuickJS bytecode (or reads bytecode written by `heliosd compile`); a
 *     syntax error is a configuration error with file:line.
 *   - worker_init gives each worker one JSRuntime + JSContext for the
 *     instance: it evaluates prelude.js (the Web API, embedded at build
 *     time), then the script's bytecode. Requests never create a VM.
 *   - Every entry into JS (a request, a timer, a subrequest or body
 *     callback) is bracketed by js_enter/js_leave: js_leave runs the
 *     promise jobs until none is left, so async/await is driven by the
 *     worker loop. A handler whose promise is still pending returns PAUSE
 *     and api->resume is called when it settles.
 *   - Safety: JS_SetMemoryLimit per runtime, JS_SetMaxStackSize, and an
 *     interrupt handler with a deadline: a request's JS may run for at most
 *     cpu_limit in total, and any single run (including a promise job not
 *     attributable to the request) for at most cpu_limit.
 *
 * Per-request state (js_rq) is reference counted: the live request holds
 * one reference, the request's JS token object another (it is released by
 * the object's finalizer), and a request that ended with ctx.waitUntil()
 * work pending a third ("linger"), bounded by JS_LINGER_MS. Timers and
 * fetches belong to a js_rq and are cancelled when it stops being able to
 * use them (on_done without pending waitUntil work, or the linger end).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <quickjs.h>

#include <helios.h>

#include "js_prelude.h"

#define JS_NAME "js"
#define JS_SCRIPT_MAX (16u * 1024 * 1024)
#define JS_STACK_SIZE (1024u * 1024)
#define JS_LINGER_MS 30000u
#define JS_BC_MAGIC "HXJSBC\x01\n"
#define JS_BC_MAGIC_LEN 8
#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

static const helios_host_api *api;
static JSClassID js_tok_class_id;

/* ------------------------------------------------------------------ */
/* configuration                                                       */

static const char *const js_keys[] = {
    "script", "env", "memory_limit", "cpu_limit", "max_body", "timeout", NULL,
};

typedef struct js_config {
    char *script; /* resolved path, for messages */
    uint8_t *bc;  /* QuickJS bytecode (JS_WriteObject) */
    size_t bc_len;
    size_t nenv;
    const char **env_keys; /* strings live as long as the generation */
    const char **env_vals;
    uint64_t memory_limit;
    uint64_t cpu_limit_ms;
    uint64_t max_body;
    uint64_t timeout_ms;
} js_config;

/* ------------------------------------------------------------------ */
/* per-worker and per-request state                                    */

typedef struct js_rq js_rq;

typedef struct js_worker {
    const js_config *cfg;
    helios_worker *w;
    JSRuntime *rt;
    JSContext *ctx;
    JSValue dispatch, filter_req, filter_resp, error_text;
    JSValue env;
    js_rq *cur;        /* request the running JS is attributed to */
    unsigned depth;    /* nesting of js_enter */
    uint64_t deadline; /* monotonic us; 0 = no limit */
    uint64_t t0;       /* start of the outermost run */
    int cpu_hit;       /* the interrupt handler stopped the script */
    int mem_hit;       /* memory_limit passed: stop the script at the next check */
    int next_timer_id;
    js_rq *rqs; /* every live js_rq of this worker */
} js_worker;

typedef struct js_timer {
    js_rq *rq;
    helios_timer *t;
    JSValue fn;
    int id;
    struct js_timer *prev, *next;
} js_timer;

typedef struct js_fetch {
    js_rq *rq;
    helios_subreq *s;
    JSValue res[2];
    helios_timer *t; /* `timeout` */
    char *buf;
    size_t len, cap;
    int parented; /* cancelled by the core with the parent request */
    struct js_fetch *prev, *next;
} js_fetch;

enum { JS_BODY_NONE, JS_BODY_READING, JS_BODY_DONE };

struct js_rq {
    js_worker *ws;
    helios_request *r; /* NULL once the request ended */
    unsigned refs;
    unsigned in_hook : 1;   /* inside handle()/on_request_headers: no resume */
    unsigned responded : 1; /* answered (or passed on, for a filter) */
    unsigned filter : 1;
    unsigned lingering : 1;
    int hook_rc;        /* filter: CONTINUE or RESPONDED once settled */
    unsigned waits;     /* pending ctx.waitUntil promises */
    uint64_t cpu_us;    /* JS time spent for this request */
    char host[256];     /* the request's host, lower case, no port */
    char upstream[128]; /* the route's upstream, for fetches after the end */
    int body_state;
    JSValue body_p, body_res[2];
    char *body;
    size_t body_len, body_cap;
    js_timer *timers;
    js_fetch *fetches;
    helios_timer *linger;
    js_rq *prev, *next;
};

/* ------------------------------------------------------------------ */
/* clock and CPU limit                                                 */

static uint64_t js_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int js_interrupt(JSRuntime *rt, void *opaque)
{
    (void)rt;
    js_worker *ws = opaque;
    if (ws->mem_hit)
        return 1; /* over memory_limit: stop while the reserve lasts */
    if (ws->deadline == 0 || js_now_us() < ws->deadline)
        return 0;
    ws->cpu_hit = 1;
    return 1;
}

/*
 * The runtime's allocator: memory_limit with a reserve above it. QuickJS
 * 2021-03-27 can crash building an error object when an allocation fails
 * while it is already out of memory (a backtrace's property table), so:
 *   - a large allocation (an ArrayBuffer, a big string) that would pass
 *     memory_limit fails at once, and the error it raises is built from
 *     memory still under the limit;
 *   - small allocations may go past memory_limit into JS_MEM_RESERVE; the
 *     first one that does flags the runtime, and the interrupt handler
 *     stops the script at its next check (every few thousand operations),
 *     long before the reserve runs out.
 * Accounting is QuickJS's own (malloc_usable_size plus its overhead).
 */
#define JS_MEM_RESERVE (4u << 20)
#define JS_MEM_BIG (256u << 10)
#define JS_MALLOC_OVERHEAD 8

static int js_mem_allow(JSMallocState *s, size_t size)
{
    if (s->malloc_size + size <= s->malloc_limit)
        return 1;
    if (size >= JS_MEM_BIG || s->malloc_size + size > s->malloc_limit + JS_MEM_RESERVE)
        return 0;
    js_worker *ws = s->opaque;
    if (ws)
        ws->mem_hit = 1;
    return 1;
}

static void *js_mem_malloc(JSMallocState *s, size_t size)
{
    if (!js_mem_allow(s, size))
        return NULL;
    void *p = malloc(size);
    if (p) {
        s->malloc_count++;
        s->malloc_size += malloc_usable_size(p) + JS_MALLOC_OVERHEAD;
    }
    return p;
}

static void js_mem_free(JSMallocState *s, void *p)
{
    if (p == NULL)
        return;
    s->malloc_count--;
    s->malloc_size -= malloc_usable_size(p) + JS_MALLOC_OVERHEAD;
    free(p);
}

static void *js_mem_realloc(JSMallocState *s, void *p, size_t size)
{
    if (p == NULL)
        return size ? js_mem_malloc(s, size) : NULL;
    if (size == 0) {
        js_mem_free(s, p);
        return NULL;
    }
    size_t old = malloc_usable_size(p);
    if (size > old && !js_mem_allow(s, size - old))
        return NULL;
    void *q = realloc(p, size);
    if (q == NULL)
        return NULL;
    s->malloc_size += malloc_usable_size(q);
    s->malloc_size -= old;
    return q;
}

static size_t js_mem_usable(const void *p) { return malloc_usable_size((void *)p); }

static const JSMallocFunctions js_mem_funcs = {js_mem_malloc, js_mem_free, js_mem_realloc,
                                               js_mem_usable};

static uint64_t js_budget_us(const js_worker *ws, const js_rq *rq)
{
    uint64_t lim = ws->cfg->cpu_limit_ms * 1000u;
    if (rq == NULL)
        return lim;
    return rq->cpu_us >= lim ? 1000u : lim - rq->cpu_us;
}

/* ------------------------------------------------------------------ */
/* js_rq lifetime                                                      */

static void js_rq_ref(js_rq *rq)
{
    rq->refs++;
}

static void js_timer_free(js_worker *ws, js_timer *t, int cancel)
{
    js_rq *rq = t->rq;
    if (t->prev)
        t->prev->next = t->next;
    else
        rq->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
    if (cancel && t->t)
        api->timer_cancel(t->t);
    JS_FreeValueRT(ws->rt, t->fn);
    free(t);
}

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
static void js_fetch_free(js_worker *ws, js_fetch *f, int cancel)
{
    js_fetch_unlink(f);
    if (cancel && f->s)
        api->subreq_cancel(f->s);
    if (f->t)
        api->timer_cancel(f->t);
    JS_FreeValueRT(ws->rt, f->res[0]);
    JS_FreeValueRT(ws->rt, f->res[1]);
    free(f->buf);
    free(f);
}

static void js_rq_drop_body(js_rq *rq)
{
    JSRuntime *rt = rq->ws->rt;
    JS_FreeValueRT(rt, rq->body_p);
    JS_FreeValueRT(rt, rq->body_res[0]);
    JS_FreeValueRT(rt, rq->body_res[1]);
    rq->body_p = rq->body_res[0] = rq->body_res[1] = JS_UNDEFINED;
    free(rq->body);
    rq->body = NULL;
    rq->body_len = rq->body_cap = 0;
}

/* Stops all asynchronous work of RQ: it can no longer use it. */
static void js_rq_stop_work(js_rq *rq)
{
    js_worker *ws = rq->ws;
    while (rq->timers)
        js_timer_free(ws, rq->timers, 1);
    while (rq->fetches)
        js_fetch_free(ws, rq->fetches, 1);
    if (rq->linger) {
        api->timer_cancel(rq->linger);
        rq->linger = NULL;
    }
}

static void js_rq_unref(js_rq *rq)
{
    if (--rq->refs > 0)
        return;
    js_worker *ws = rq->ws;
    js_rq_stop_work(rq);
    js_rq_drop_body(rq);
    if (rq->prev)
        rq->prev->next = rq->next;
    else
        ws->rqs = rq->next;
    if (rq->next)
        rq->next->prev = rq->prev;
    free(rq);
}

static void js_copy_lower(char *dst, size_t cap, helios_buf b)
{
    size_t n = b.ptr && b.len < cap ? b.len : 0;
    for (size_t i = 0; i < n; i++) {
        char ch = b.ptr[i];
        dst[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    dst[n] = '\0';
}

static js_rq *js_rq_new(js_worker *ws, helios_request *r)
{
    js_rq *rq = calloc(1, sizeof(*rq));
    if (rq == NULL)
        return NULL;
    rq->ws = ws;
    rq->r = r;
    rq->refs = 1; /* the request */
    rq->body_p = rq->body_res[0] = rq->body_res[1] = JS_UNDEFINED;
    js_copy_lower(rq->host, sizeof(rq->host), api->req_host(r));
    const char *up = api->req_upstream(r);
    if (up && strlen(up) < sizeof(rq->upstream))
        memcpy(rq->upstream, up, strlen(up) + 1);
    rq->next = ws->rqs;
    if (ws->rqs)
        ws->rqs->prev = rq;
    ws->rqs = rq;
    return rq;
}

/* ------------------------------------------------------------------ */
/* the token: the JS object that names an incoming request             */

static void js_tok_finalizer(JSRuntime *rt, JSValue val)
{
    (void)rt;
    js_rq *rq = JS_GetOpaque(val, js_tok_class_id);
    if (rq)
        js_rq_unref(rq);
}

static JSClassDef js_tok_class = {
    .class_name = "HeliosRequestToken",
    .finalizer = js_tok_finalizer,
};

static JSValue js_tok_new(js_worker *ws, js_rq *rq)
{
    JSValue t = JS_NewObjectClass(ws->ctx, (int)js_tok_class_id);
    if (JS_IsException(t))
        return t;
    JS_SetOpaque(t, rq);
    js_rq_ref(rq);
    return t;
}

static js_rq *js_tok_rq(JSValueConst v)
{
    return JS_GetOpaque(v, js_tok_class_id);
}

/* ------------------------------------------------------------------ */
/* running JS: enter / leave, exceptions, failing a request             */

typedef struct js_saved {
    js_rq *cur;
} js_saved;

static void js_drain(js_worker *ws);

static void js_enter(js_worker *ws, js_rq *rq, js_saved *sv)
{
    sv->cur = ws->cur;
    ws->cur = rq;
    if (rq)
        js_rq_ref(rq);
    if (ws->depth++ == 0) {
        ws->t0 = js_now_us();
        ws->deadline = ws->t0 + js_budget_us(ws, rq);
        ws->cpu_hit = 0;
        /* a new run: memory freed since by the GC counts again */
        if (ws->mem_hit) {
            JS_RunGC(ws->rt);
            JSMemoryUsage mu;
            JS_ComputeMemoryUsage(ws->rt, &mu);
            ws->mem_hit = (size_t)mu.malloc_size > ws->cfg->memory_limit;
        }
    }
}

static void js_leave(js_worker *ws, js_saved *sv)
{
    js_rq *rq = ws->cur;
    if (ws->depth == 1)
        js_drain(ws);
    if (--ws->depth == 0) {
        if (rq)
            rq->cpu_us += js_now_us() - ws->t0;
        ws->deadline = 0;
    }
    ws->cur = sv->cur;
    if (rq)
        js_rq_unref(rq);
}

/* "GET /path" of RQ for log lines, or a note that it ended. */
static void js_rq_desc(const js_rq *rq, char *buf, size_t size)
{
    if (rq == NULL) {
        snprintf(buf, size, "outside a request");
        return;
    }
    if (rq->r == NULL) {
        snprintf(buf, size, "after its request ended");
        return;
    }
    helios_buf m = api->req_method(rq->r), t = api->req_target(rq->r);
    const char *route = api->req_route(rq->r);
    snprintf(buf, size, "route '%s', %.*s %.*s", route ? route : "", (int)m.len, m.ptr,
             (int)(t.len > 200 ? 200 : t.len), t.ptr);
}

/* Answers RQ (once): the response was produced with api->respond, or a
 * filter passed the request on. Resumes unless inside the hook itself. */
static void js_rq_settle(js_rq *rq, int rc)
{
    if (rq->responded || rq->r == NULL)
        return;
    rq->responded = 1;
    rq->hook_rc = rc;
    if (!rq->in_hook)
        api->resume(rq->r, rc);
}

static void js_rq_fail(js_rq *rq)
{
    if (rq == NULL || rq->responded || rq->r == NULL)
        return;
    static const char body[] = "Internal Server Error\n";
    if (api->respond(rq->r, 500, "text/plain; charset=utf-8", body, sizeof(body) - 1) != 0) {
        /* a response had started (cannot happen before respond): error */
        rq->responded = 1;
        rq->hook_rc = HELIOS_ERROR;
        if (!rq->in_hook)
            api->resume(rq->r, HELIOS_ERROR);
        return;
    }
    js_rq_settle(rq, HELIOS_RESPONDED);
}

/* Text of exception E (with its stack) for the log; malloc'd or NULL. */
static char *js_error_text(js_worker *ws, JSValueConst e)
{
    JSContext *ctx = ws->ctx;
    char *out = NULL;
    JSValue s = JS_Call(ctx, ws->error_text, JS_UNDEFINED, 1, &e);
    const char *c = JS_IsException(s) ? NULL : JS_ToCString(ctx, s);
    if (JS_IsException(s)) {
        JS_FreeValue(ctx, JS_GetException(ctx));
        c = JS_ToCString(ctx, e);
        if (c == NULL)
            JS_FreeValue(ctx, JS_GetException(ctx));
    }
    if (c) {
        out = strdup(c);
        JS_FreeCString(ctx, c);
    }
    JS_FreeValue(ctx, s);
    return out;
}

/* Logs exception E (owned) thrown while running JS for RQ, and answers
 * RQ with 500. A CPU-limit stop says so instead of printing a stack. */
static void js_report(js_worker *ws, js_rq *rq, JSValue e, const char *where)
{
    char desc[300];
    js_rq_desc(rq, desc, sizeof(desc));
    /* the rest of this run gets a fresh budget so reporting can run */
    ws->deadline = js_now_us() + ws->cfg->cpu_limit_ms * 1000u;
    if (ws->mem_hit) {
        /* stay flagged until a GC at the next run brings usage back down */
        api->log(HELIOS_LOG_ERROR, JS_NAME,
                 "%s: memory_limit of %llu bytes exceeded %s (%s): script interrupted (out of "
                 "memory), 500 sent",
                 ws->cfg->script, (unsigned long long)ws->cfg->memory_limit, where, desc);
        ws->cpu_hit = 0;
    } else if (ws->cpu_hit) {
        ws->cpu_hit = 0;
        api->log(HELIOS_LOG_ERROR, JS_NAME,
                 "%s: cpu_limit of %llu ms exceeded %s (%s): script interrupted, 500 sent",
                 ws->cfg->script, (unsigned long long)ws->cfg->cpu_limit_ms, where, desc);
    } else {
        char *text = js_error_text(ws, e);
        api->log(HELIOS_LOG_ERROR, JS_NAME, "%s: uncaught exception %s (%s): %s", ws->cfg->script,
                 where, desc, text ? text : "(no message: out of memory?)");
        free(text);
    }
    JS_FreeValue(ws->ctx, e);
    js_rq_fail(rq);
}

static void js_drain(js_worker *ws)
{
    JSContext *c1;
    for (;;) {
        int rc = JS_ExecutePendingJob(ws->rt, &c1);
        if (rc == 0)
            break;
        if (rc < 0)
            js_report(ws, ws->cur, JS_GetException(ws->ctx), "in a promise job");
    }
}

/* Calls FN(ARGS) attributed to RQ; exceptions are reported. Consumes
 * nothing. */
static void js_call(js_worker *ws, js_rq *rq, JSValueConst fn, int argc, JSValueConst *argv,
                    const char *where)
{
    js_saved sv;
    js_enter(ws, rq, &sv);
    JSValue ret = JS_Call(ws->ctx, fn, JS_UNDEFINED, argc, argv);
    if (JS_IsException(ret))
        js_report(ws, rq, JS_GetException(ws->ctx), where);
    else
        JS_FreeValue(ws->ctx, ret);
    js_leave(ws, &sv);
}

static js_worker *js_ws(JSContext *ctx)
{
    return JS_GetContextOpaque(ctx);
}

/* ------------------------------------------------------------------ */
/* bytes helpers                                                       */

/* Bytes of a string or ArrayBuffer (or view) V. *HOLD receives a C string
 * to free with JS_FreeCString (or NULL). Returns 0, or -1 with an
 * exception. */
static int js_bytes(JSContext *ctx, JSValueConst v, const char **hold, const uint8_t **p,
                    size_t *len)
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

static int js_hop_header(const char *n)
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
    api->log(level, JS_NAME, "%s: console: %s", js_ws(ctx)->cfg->script, s);
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
    helios_buf m = api->req_method(rq->r);
    return JS_NewStringLen(ctx, m.ptr, m.len);
}

static JSValue nat_url(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL || rq->r == NULL)
        return JS_NewString(ctx, "http://localhost/");
    helios_buf host = api->req_header(rq->r, "host");
    if (host.ptr == NULL || host.len == 0)
        host = api->req_host(rq->r);
    if (host.ptr == NULL || host.len == 0)
        host = (helios_buf){"localhost", 9};
    helios_buf t = api->req_target(rq->r);
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
    size_t n = api->req_header_count(rq->r);
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++) {
        helios_buf name, value;
        if (api->req_header_at(rq->r, i, &name, &value) != 0)
            continue;
        JS_SetPropertyUint32(ctx, a, k++, JS_NewStringLen(ctx, name.ptr, name.len));
        JS_SetPropertyUint32(ctx, a, k++, JS_NewStringLen(ctx, value.ptr, value.len));
    }
    return a;
}

/* Walks [[name, value]...] PAIRS calling FN(ARG, name, value) with C
 * strings. Returns 0, or -1 with an exception (FN returning -1 throws). */
static int js_pairs(JSContext *ctx, JSValueConst pairs,
                    int (*fn)(void *arg, const char *n, const char *v), void *arg)
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
    return api->resp_header_add(h->r, n, v) == 0 ? 0 : -1;
}

/* hx.respond(tok, status, pairs, body) -> true if sent */
static JSValue nat_respond(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL || rq->r == NULL || rq->responded)
        return JS_FALSE;
    int status;
    if (JS_ToInt32(ctx, &status, argv[1]))
        return JS_EXCEPTION;
    if (status < 200 || status > 599)
        return JS_ThrowRangeError(ctx, "response status %d is not from 200 to 599", status);
    js_resp_hdrs h = {rq->r, NULL};
    if (js_pairs(ctx, argv[2], js_resp_header, &h) != 0) {
        free(h.ctype);
        return JS_EXCEPTION;
    }
    const char *hold;
    const uint8_t *p;
    size_t len;
    if (js_bytes(ctx, argv[3], &hold, &p, &len) != 0) {
        free(h.ctype);
        return JS_EXCEPTION;
    }
    const char *ctype = h.ctype;
    if (ctype == NULL && JS_IsString(argv[3]))
        ctype = "text/plain;charset=UTF-8";
    if (status == 204 || status == 304)
        len = 0;
    int rc = api->respond(rq->r, status, ctype, p, len);
    JS_FreeCString(ctx, hold);
    free(h.ctype);
    if (rc != 0)
        return JS_ThrowTypeError(ctx, "the response could not be sent (invalid Content-Type?)");
    js_rq_settle(rq, HELIOS_RESPONDED);
    return JS_TRUE;
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
    return api->req_header_add(arg, n, v) == 0 ? 0 : -1;
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
            if (api->req_header_count(rq->r) == 0 || api->req_header_at(rq->r, 0, &name, NULL) != 0)
                break;
            char nb[256];
            if (name.len >= sizeof(nb))
                break;
            memcpy(nb, name.ptr, name.len);
            nb[name.len] = '\0';
            if (api->req_header_remove(rq->r, nb) <= 0)
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
        helios_buf b = api->resp_header(rq->r, n);
        ret = b.ptr ? JS_NewStringLen(ctx, b.ptr, b.len) : JS_NULL;
    } else if (op == 3) {
        api->resp_header_remove(rq->r, n);
    } else if (js_hop_header(n)) {
        ret = JS_ThrowTypeError(ctx, "header '%s' is managed by heliosd", n);
    } else if ((op == 1 ? api->resp_header_set(rq->r, n, v) : api->resp_header_add(rq->r, n, v)) !=
               0) {
        ret = JS_ThrowTypeError(ctx, "invalid header '%s'", n);
    }
    JS_FreeCString(ctx, n);
    JS_FreeCString(ctx, v);
    return ret;
}

/* ---- request body ---- */

static void js_body_data(void *arg, helios_buf chunk, int last, int error)
{
    js_rq *rq = arg;
    js_worker *ws = rq->ws;
    if (rq->body_state != JS_BODY_READING)
        return;
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
    JSValue p = JS_NewPromiseCapability(ctx, rq->body_res);
    if (JS_IsException(p))
        return p;
    rq->body_p = JS_DupValue(ctx, p);
    rq->body_state = JS_BODY_READING;
    if (api->req_body_read(rq->r, js_body_data, rq) != 0) {
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
            api->subreq_cancel(s);
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
                    api->subreq_cancel(s);
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
    JS_SetPropertyUint32(ctx, a, 0, JS_NewInt32(ctx, api->subreq_status(s)));
    JS_SetPropertyUint32(ctx, a, 1, JS_NewString(ctx, ""));
    JSValue h = JS_NewArray(ctx);
    size_t n = api->subreq_header_count(s);
    uint32_t k = 0;
    for (size_t i = 0; i < n; i++) {
        helios_buf name, value;
        if (api->subreq_header_at(s, i, &name, &value) != 0)
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
        api->subreq_cancel(f->s);
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
    return api->subreq_header_add(h->s, n, v) == 0 ? 0 : -1;
}

/* hx.fetch(tok|null, host, method, target, pairs|null, body|null) */
static JSValue nat_fetch(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
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
    s = api->subreq_new(ws->w, rq->r, upstream, method, target, err, sizeof(err));
    if (s == NULL) {
        ret = JS_ThrowTypeError(ctx, "fetch(%s %s%s): %s", method, host, target, err);
        goto out;
    }
    js_sub_hdrs sh = {s};
    if (js_pairs(ctx, argv[4], js_sub_header, &sh) != 0) {
        api->subreq_cancel(s);
        ret = JS_EXCEPTION;
        goto out;
    }
    const char *hold;
    const uint8_t *p;
    size_t len;
    if (js_bytes(ctx, argv[5], &hold, &p, &len) != 0) {
        api->subreq_cancel(s);
        ret = JS_EXCEPTION;
        goto out;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL) {
        JS_FreeCString(ctx, hold);
        api->subreq_cancel(s);
        ret = JS_ThrowOutOfMemory(ctx);
        goto out;
    }
    f->res[0] = f->res[1] = JS_UNDEFINED;
    ret = JS_NewPromiseCapability(ctx, f->res);
    if (JS_IsException(ret)) {
        JS_FreeCString(ctx, hold);
        api->subreq_cancel(s);
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
    int rc = api->subreq_send(s, p, len, &js_fetch_cb, f);
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
        f->t = api->timer_add(ws->w, ws->cfg->timeout_ms, js_fetch_timeout, f);
out:
    JS_FreeCString(ctx, host);
    JS_FreeCString(ctx, method);
    JS_FreeCString(ctx, target);
    return ret;
}

/* ---- timers ---- */

static void js_timer_fire(void *arg)
{
    js_timer *t = arg;
    js_rq *rq = t->rq;
    js_worker *ws = rq->ws;
    t->t = NULL; /* fired: freed by the core */
    JSValue fn = JS_DupValue(ws->ctx, t->fn);
    js_rq_ref(rq);
    js_timer_free(ws, t, 0);
    js_call(ws, rq, fn, 0, NULL, "in a setTimeout callback");
    JS_FreeValue(ws->ctx, fn);
    js_rq_unref(rq);
}

static JSValue nat_set_timeout(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_worker *ws = js_ws(ctx);
    js_rq *rq = ws->cur;
    if (rq == NULL)
        return JS_ThrowTypeError(ctx, "setTimeout() is only available while handling a request");
    if (rq->r == NULL && !rq->lingering)
        return JS_ThrowTypeError(ctx, "setTimeout(): the request has ended");
    double ms;
    if (JS_ToFloat64(ctx, &ms, argv[1]))
        return JS_EXCEPTION;
    js_timer *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return JS_ThrowOutOfMemory(ctx);
    t->rq = rq;
    t->fn = JS_DupValue(ctx, argv[0]);
    t->id = ++ws->next_timer_id;
    if (ws->next_timer_id >= INT_MAX - 1)
        ws->next_timer_id = 0;
    t->t = api->timer_add(ws->w, ms > 0 ? (uint64_t)ms : 0, js_timer_fire, t);
    if (t->t == NULL) {
        JS_FreeValue(ctx, t->fn);
        free(t);
        return JS_ThrowInternalError(ctx, "setTimeout(): no timer available");
    }
    t->next = rq->timers;
    if (rq->timers)
        rq->timers->prev = t;
    rq->timers = t;
    return JS_NewInt32(ctx, t->id);
}

static JSValue nat_clear_timeout(JSContext *ctx, JSValueConst this_val, int argc,
                                 JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_worker *ws = js_ws(ctx);
    int id;
    if (JS_ToInt32(ctx, &id, argv[0]))
        return JS_EXCEPTION;
    for (js_rq *rq = ws->rqs; rq; rq = rq->next)
        for (js_timer *t = rq->timers; t; t = t->next)
            if (t->id == id) {
                js_timer_free(ws, t, 1);
                return JS_UNDEFINED;
            }
    return JS_UNDEFINED;
}

/* ---- waitUntil ---- */

static void js_linger_end(void *arg)
{
    js_rq *rq = arg;
    rq->linger = NULL; /* fired */
    if (!rq->lingering)
        return;
    api->log(HELIOS_LOG_WARN, JS_NAME,
             "%s: ctx.waitUntil work still pending %u ms after the response; cancelled",
             rq->ws->cfg->script, JS_LINGER_MS);
    rq->lingering = 0;
    js_rq_stop_work(rq);
    js_rq_unref(rq);
}

static JSValue nat_wait_begin(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)ctx;
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq)
        rq->waits++;
    return JS_UNDEFINED;
}

static JSValue nat_wait_end(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)ctx;
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq == NULL || rq->waits == 0)
        return JS_UNDEFINED;
    if (--rq->waits == 0 && rq->lingering) {
        rq->lingering = 0;
        js_rq_stop_work(rq);
        js_rq_unref(rq);
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

static const JSCFunctionListEntry js_natives[] = {
    JS_CFUNC_DEF("log", 2, nat_log),
    JS_CFUNC_DEF("method", 1, nat_method),
    JS_CFUNC_DEF("url", 1, nat_url),
    JS_CFUNC_DEF("headers", 1, nat_headers),
    JS_CFUNC_DEF("respond", 4, nat_respond),
    JS_CFUNC_DEF("fail", 2, nat_fail),
    JS_CFUNC_DEF("pass", 2, nat_pass),
    JS_CFUNC_DEF("rh", 4, nat_resp_header),
    JS_CFUNC_DEF("body", 1, nat_body),
    JS_CFUNC_DEF("fetch", 6, nat_fetch),
    JS_CFUNC_DEF("setTimeout", 2, nat_set_timeout),
    JS_CFUNC_DEF("clearTimeout", 1, nat_clear_timeout),
    JS_CFUNC_DEF("waitBegin", 1, nat_wait_begin),
    JS_CFUNC_DEF("waitEnd", 1, nat_wait_end),
    JS_CFUNC_DEF("random", 1, nat_random),
    JS_CFUNC_DEF("encode", 1, nat_encode),
    JS_CFUNC_DEF("decode", 3, nat_decode),
};

/* ------------------------------------------------------------------ */
/* compiling                                                           */

/* 1 when SRC looks like an ES module: a line starting with `export`, or
 * with `import` not followed by `(` or `.` (dynamic import, import.meta). */
static int js_is_module(const char *src, size_t len)
{
    if (JS_DetectModule(src, len))
        return 1;
    for (size_t i = 0; i < len;) {
        while (i < len && (src[i] == ' ' || src[i] == '\t'))
            i++;
        if (len - i > 7 && memcmp(src + i, "export", 6) == 0 && strchr(" \t{*", src[i + 6]) != NULL)
            return 1;
        if (len - i > 7 && memcmp(src + i, "import", 6) == 0 &&
            strchr(" \t{*\"'", src[i + 6]) != NULL)
            return 1;
        while (i < len && src[i] != '\n')
            i++;
        i++;
    }
    return 0;
}

/* "file:line: message" of the pending exception (a SyntaxError from the
 * parser carries its position as the first line of its stack). */
static void js_compile_error(JSContext *ctx, const char *path, char *err, size_t errlen)
{
    JSValue e = JS_GetException(ctx);
    const char *msg = JS_ToCString(ctx, e);
    long line = 0;
    JSValue st = JS_GetPropertyStr(ctx, e, "stack");
    const char *stack = JS_IsString(st) ? JS_ToCString(ctx, st) : NULL;
    if (stack) {
        /* "    at /path/app.js:3\n" */
        const char *at = strstr(stack, "at ");
        const char *nl = at ? strchr(at, '\n') : NULL;
        const char *end = nl ? nl : (at ? at + strlen(at) : NULL);
        if (at) {
            const char *c = end;
            while (c > at && c[-1] >= '0' && c[-1] <= '9')
                c--;
            if (c > at && c[-1] == ':')
                line = strtol(c, NULL, 10);
        }
    }
    if (line > 0)
        snprintf(err, errlen, "%s:%ld: %s", path, line, msg ? msg : "syntax error");
    else
        snprintf(err, errlen, "%s: %s", path, msg ? msg : "cannot compile");
    JS_FreeCString(ctx, stack);
    JS_FreeCString(ctx, msg);
    JS_FreeValue(ctx, st);
    JS_FreeValue(ctx, e);
}

/* Compiles SRC (NUL-terminated, LEN bytes) named PATH into malloc'd
 * bytecode. Returns 0, or -1 with "file:line: message" in ERR. */
static int js_compile(const char *path, const char *src, size_t len, uint8_t **out, size_t *outlen,
                      char *err, size_t errlen)
{
    JSRuntime *rt = JS_NewRuntime();
    JSContext *ctx = rt ? JS_NewContext(rt) : NULL;
    int rc = -1;
    if (ctx == NULL) {
        snprintf(err, errlen, "%s: cannot create a JavaScript runtime (out of memory)", path);
        goto done;
    }
    size_t plen = strlen(path);
    int module = js_is_module(src, len) || (plen > 4 && strcmp(path + plen - 4, ".mjs") == 0);
    JSValue obj =
        JS_Eval(ctx, src, len, path,
                (module ? JS_EVAL_TYPE_MODULE : JS_EVAL_TYPE_GLOBAL) | JS_EVAL_FLAG_COMPILE_ONLY);
    if (JS_IsException(obj)) {
        js_compile_error(ctx, path, err, errlen);
        goto done;
    }
    size_t n;
    uint8_t *bc = JS_WriteObject(ctx, &n, obj, JS_WRITE_OBJ_BYTECODE);
    JS_FreeValue(ctx, obj);
    if (bc == NULL) {
        snprintf(err, errlen, "%s: cannot serialise the bytecode", path);
        JS_FreeValue(ctx, JS_GetException(ctx));
        goto done;
    }
    *out = malloc(n);
    if (*out == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
    } else {
        memcpy(*out, bc, n);
        *outlen = n;
        rc = 0;
    }
    js_free(ctx, bc);
done:
    if (ctx)
        JS_FreeContext(ctx);
    if (rt)
        JS_FreeRuntime(rt);
    return rc;
}

/* Checks that BC loads (a .qjsbc from another QuickJS would not). */
static int js_check_bytecode(const char *path, const uint8_t *bc, size_t len, char *err,
                             size_t errlen)
{
    JSRuntime *rt = JS_NewRuntime();
    JSContext *ctx = rt ? JS_NewContext(rt) : NULL;
    int rc = -1;
    if (ctx == NULL) {
        snprintf(err, errlen, "%s: cannot create a JavaScript runtime", path);
    } else {
        JSValue obj = JS_ReadObject(ctx, bc, len, JS_READ_OBJ_BYTECODE);
        if (JS_IsException(obj)) {
            js_compile_error(ctx, path, err, errlen);
        } else {
            JS_FreeValue(ctx, obj);
            rc = 0;
        }
    }
    if (ctx)
        JS_FreeContext(ctx);
    if (rt)
        JS_FreeRuntime(rt);
    return rc;
}

/* Reads the regular file PATH (at most JS_SCRIPT_MAX bytes), NUL-terminated. */
static char *js_read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)JS_SCRIPT_MAX) {
        snprintf(err, errlen, "cannot use '%s': %s", path,
                 S_ISREG(st.st_mode) ? "over 16 MiB" : "not a regular file");
        close(fd);
        return NULL;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = malloc(cap + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return NULL;
    }
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n == cap) {
        snprintf(err, errlen, "'%s' changed while it was read", path);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int js_has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

/* The .qjsbc header: magic, the QuickJS version, NUL. */
static size_t js_bc_header(char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s%s", JS_BC_MAGIC, HX_QJS_VERSION);
    return (size_t)n + 1;
}

/* Loads PATH (source, or .qjsbc) into bytecode. */
static int js_load_script(const char *path, uint8_t **bc, size_t *bclen, char *err, size_t errlen)
{
    size_t len;
    char *src = js_read_file(path, &len, err, errlen);
    if (src == NULL)
        return -1;
    int rc;
    if (js_has_suffix(path, ".qjsbc")) {
        char hdr[64];
        size_t hl = js_bc_header(hdr, sizeof(hdr));
        if (len < hl || memcmp(src, hdr, JS_BC_MAGIC_LEN) != 0) {
            snprintf(err, errlen,
                     "%s: not a heliosd bytecode file (write one with "
                     "`heliosd compile app.js -o app.qjsbc`)",
                     path);
            rc = -1;
        } else if (memcmp(src, hdr, hl) != 0) {
            snprintf(err, errlen,
                     "%s: compiled for another QuickJS version (this heliosd runs "
                     "%s): compile it again",
                     path, HX_QJS_VERSION);
            rc = -1;
        } else if ((rc = js_check_bytecode(path, (uint8_t *)src + hl, len - hl, err, errlen)) ==
                   0) {
            *bc = malloc(len - hl);
            if (*bc == NULL) {
                snprintf(err, errlen, "out of memory");
                rc = -1;
            } else {
                memcpy(*bc, src + hl, len - hl);
                *bclen = len - hl;
            }
        }
    } else {
        rc = js_compile(path, src, len, bc, bclen, err, errlen);
    }
    free(src);
    return rc;
}

/* `heliosd compile app.js -o app.qjsbc`: called by core/main.c. */
__attribute__((visibility("default"))) int helios_js_compile(int argc, char **argv);
__attribute__((visibility("default"))) int helios_js_compile(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("usage: heliosd compile SCRIPT.js [-o OUT.qjsbc]\n"
                   "Compiles a js module script to QuickJS %s bytecode; configure the .qjsbc "
                   "file as the module's script to skip parsing at (re)load.\n",
                   HX_QJS_VERSION);
            return 0;
        } else if (argv[i][0] == '-' || in != NULL) {
            fprintf(stderr,
                    "heliosd compile: unexpected argument '%s'\n"
                    "usage: heliosd compile SCRIPT.js [-o OUT.qjsbc]\n",
                    argv[i]);
            return 2;
        } else {
            in = argv[i];
        }
    }
    if (in == NULL) {
        fprintf(stderr, "usage: heliosd compile SCRIPT.js [-o OUT.qjsbc]\n");
        return 2;
    }
    char outbuf[PATH_MAX];
    if (out == NULL) {
        size_t n = strlen(in);
        const char *dot = strrchr(in, '.');
        size_t stem = dot && !strchr(dot, '/') ? (size_t)(dot - in) : n;
        if (stem + 7 >= sizeof(outbuf)) {
            fprintf(stderr, "heliosd compile: path too long\n");
            return 2;
        }
        memcpy(outbuf, in, stem);
        memcpy(outbuf + stem, ".qjsbc", 7);
        out = outbuf;
    }
    char err[1024];
    size_t len;
    char *src = js_read_file(in, &len, err, sizeof(err));
    if (src == NULL) {
        fprintf(stderr, "heliosd compile: %s\n", err);
        return 1;
    }
    uint8_t *bc = NULL;
    size_t bclen = 0;
    int rc = js_compile(in, src, len, &bc, &bclen, err, sizeof(err));
    free(src);
    if (rc != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char hdr[64], tmp[PATH_MAX + 16];
    size_t hl = js_bc_header(hdr, sizeof(hdr));
    snprintf(tmp, sizeof(tmp), "%s.tmp%ld", out, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(hdr, 1, hl, f) == hl && fwrite(bc, 1, bclen, f) == bclen;
    if (f && fclose(f) != 0)
        ok = 0;
    free(bc);
    if (!ok || rename(tmp, out) != 0) {
        fprintf(stderr, "heliosd compile: cannot write '%s': %s\n", out, strerror(errno));
        unlink(tmp);
        return 1;
    }
    printf("%s: %zu bytes of bytecode (QuickJS %s)\n", out, bclen + hl, HX_QJS_VERSION);
    return 0;
}

/* ------------------------------------------------------------------ */
/* config_new / config_free                                            */

static void js_config_free(void *cfgp)
{
    js_config *c = cfgp;
    if (c == NULL)
        return;
    free(c->script);
    free(c->bc);
    free(c->env_keys);
    free(c->env_vals);
    free(c);
}

static int js_config_env(const helios_conf *conf, js_config *c)
{
    const helios_conf *env = api->conf_get(conf, "env");
    int kind = api->conf_kind(env);
    if (kind == HELIOS_CONF_NULL)
        return 0;
    if (kind != HELIOS_CONF_MAP) {
        api->conf_error(env, "env must be a map of NAME: string");
        return -1;
    }
    size_t n = api->conf_len(env);
    c->env_keys = calloc(n + 1, sizeof(char *));
    c->env_vals = calloc(n + 1, sizeof(char *));
    if (c->env_keys == NULL || c->env_vals == NULL) {
        api->conf_error(env, "out of memory");
        return -1;
    }
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const char *v = api->conf_scalar(api->conf_at(env, i));
        if (v == NULL) {
            api->conf_error(api->conf_at(env, i), "env values must be strings (quote them)");
            bad = 1;
            continue;
        }
        c->env_keys[c->nenv] = api->conf_key_at(env, i);
        c->env_vals[c->nenv++] = v;
    }
    return bad ? -1 : 0;
}

static int js_config_new(const helios_conf *conf, void **cfgp)
{
    if (api->conf_kind(conf) != HELIOS_CONF_MAP) {
        api->conf_error(conf, "the js module needs a config map with at least `script: FILE.js`");
        return -1;
    }
    js_config *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        api->conf_error(conf, "out of memory");
        return -1;
    }
    int bad = api->conf_check_keys(conf, js_keys) > 0;
    const char *script = NULL;
    if (api->conf_str(conf, "script", NULL, &script) != 1) {
        if (script == NULL && api->conf_get(conf, "script") == NULL)
            api->conf_error(conf, "script is required: the path of the JavaScript file");
        bad = 1;
    }
    if (api->conf_size(conf, "memory_limit", 64u << 20, &c->memory_limit) < 0 ||
        api->conf_duration_ms(conf, "cpu_limit", 50, &c->cpu_limit_ms) < 0 ||
        api->conf_size(conf, "max_body", 1u << 20, &c->max_body) < 0 ||
        api->conf_duration_ms(conf, "timeout", 30000, &c->timeout_ms) < 0)
        bad = 1;
    if (!bad && c->memory_limit < (1u << 20)) {
        api->conf_error(api->conf_get(conf, "memory_limit"), "memory_limit must be at least 1MiB");
        bad = 1;
    }
    if (!bad && c->cpu_limit_ms == 0) {
        api->conf_error(api->conf_get(conf, "cpu_limit"), "cpu_limit must be at least 1ms");
        bad = 1;
    }
    if (js_config_env(conf, c) != 0)
        bad = 1;
    /* compile even when other keys are wrong: one run reports every problem */
    if (script != NULL) {
        char path[PATH_MAX], err[1024];
        const helios_conf *sn = api->conf_get(conf, "script");
        if (api->conf_path(sn, script, path, sizeof(path)) != 0) {
            api->conf_error(sn, "script path is too long");
            bad = 1;
        } else if ((c->script = strdup(path)) == NULL) {
            api->conf_error(sn, "out of memory");
            bad = 1;
        } else if (js_load_script(path, &c->bc, &c->bc_len, err, sizeof(err)) != 0) {
            api->conf_error(sn, "%s", err);
            bad = 1;
        }
    }
    if (bad) {
        js_config_free(c);
        return -1;
    }
    *cfgp = c;
    return 0;
}

/* ------------------------------------------------------------------ */
/* worker_init / worker_fini                                           */

static void js_worker_free(js_worker *ws)
{
    /* stop everything that could call back into this runtime */
    for (js_rq *rq = ws->rqs; rq; rq = rq->next) {
        js_rq_stop_work(rq);
        js_rq_drop_body(rq);
    }
    if (ws->ctx) {
        JS_FreeValue(ws->ctx, ws->dispatch);
        JS_FreeValue(ws->ctx, ws->filter_req);
        JS_FreeValue(ws->ctx, ws->filter_resp);
        JS_FreeValue(ws->ctx, ws->error_text);
        JS_FreeValue(ws->ctx, ws->env);
        JS_FreeContext(ws->ctx);
    }
    if (ws->rt)
        JS_FreeRuntime(ws->rt); /* finalizes the tokens: drops their refs */
    while (ws->rqs) {           /* lingering or leaked: nothing can use them now */
        js_rq *rq = ws->rqs;
        ws->rqs = rq->next;
        free(rq);
    }
    free(ws);
}

/* Logs the pending exception of worker init and returns -1. */
static int js_init_error(js_worker *ws, const char *what)
{
    JSValue e = JS_GetException(ws->ctx);
    ws->deadline = 0;
    char *text = JS_IsFunction(ws->ctx, ws->error_text) ? js_error_text(ws, e) : NULL;
    if (text == NULL) {
        const char *s = JS_ToCString(ws->ctx, e);
        text = s ? strdup(s) : NULL;
        JS_FreeCString(ws->ctx, s);
    }
    api->log(HELIOS_LOG_ERROR, JS_NAME, "%s: %s failed on worker %u: %s", ws->cfg->script, what,
             api->worker_index(ws->w), text ? text : "out of memory");
    free(text);
    JS_FreeValue(ws->ctx, e);
    return -1;
}

static int js_load_prelude(js_worker *ws)
{
    JSContext *ctx = ws->ctx;
    JSValue fn = JS_Eval(ctx, (const char *)js_prelude_src, js_prelude_len, "helios:prelude.js",
                         JS_EVAL_TYPE_GLOBAL | JS_EVAL_FLAG_STRICT);
    if (JS_IsException(fn))
        return js_init_error(ws, "the prelude");
    JSValue hx = JS_NewObject(ctx);
    JS_SetPropertyFunctionList(ctx, hx, js_natives, sizeof(js_natives) / sizeof(js_natives[0]));
    JSValue o = JS_Call(ctx, fn, JS_UNDEFINED, 1, (JSValueConst *)&hx);
    JS_FreeValue(ctx, fn);
    JS_FreeValue(ctx, hx);
    if (JS_IsException(o))
        return js_init_error(ws, "the prelude");
    ws->dispatch = JS_GetPropertyStr(ctx, o, "dispatch");
    ws->filter_req = JS_GetPropertyStr(ctx, o, "filterRequest");
    ws->filter_resp = JS_GetPropertyStr(ctx, o, "filterResponse");
    ws->error_text = JS_GetPropertyStr(ctx, o, "errorText");
    JS_FreeValue(ctx, o);
    return 0;
}

static int js_make_env(js_worker *ws)
{
    JSContext *ctx = ws->ctx;
    ws->env = JS_NewObject(ctx);
    if (JS_IsException(ws->env))
        return js_init_error(ws, "building env");
    for (size_t i = 0; i < ws->cfg->nenv; i++)
        JS_DefinePropertyValueStr(ctx, ws->env, ws->cfg->env_keys[i],
                                  JS_NewString(ctx, ws->cfg->env_vals[i]), JS_PROP_ENUMERABLE);
    JS_PreventExtensions(ctx, ws->env);
    return 0;
}

/* Runs the script's bytecode; an ES module's default export becomes
 * globalThis.__helios_default through a one-line glue module. */
static int js_run_script(js_worker *ws)
{
    JSContext *ctx = ws->ctx;
    JSValue obj = JS_ReadObject(ctx, ws->cfg->bc, ws->cfg->bc_len, JS_READ_OBJ_BYTECODE);
    if (JS_IsException(obj))
        return js_init_error(ws, "loading the bytecode");
    if (JS_VALUE_GET_TAG(obj) != JS_TAG_MODULE) {
        JSValue r = JS_EvalFunction(ctx, obj);
        if (JS_IsException(r))
            return js_init_error(ws, "running the script");
        JS_FreeValue(ctx, r);
        return 0;
    }
    JSModuleDef *m = JS_VALUE_GET_PTR(obj);
    JSAtom name_atom = JS_GetModuleName(ctx, m);
    const char *name = JS_AtomToCString(ctx, name_atom);
    JS_FreeAtom(ctx, name_atom);
    if (name == NULL)
        return js_init_error(ws, "loading the module");
    if (JS_ResolveModule(ctx, obj) < 0) {
        JS_FreeCString(ctx, name);
        return js_init_error(ws, "linking the module (imports are not supported)");
    }
    JSValue r = JS_EvalFunction(ctx, obj);
    if (JS_IsException(r)) {
        JS_FreeCString(ctx, name);
        return js_init_error(ws, "running the module");
    }
    JS_FreeValue(ctx, r);
    /* import by the module's own name, escaped as a JSON string */
    size_t nl = strlen(name);
    char *glue = malloc(nl * 6 + 128);
    if (glue == NULL) {
        JS_FreeCString(ctx, name);
        JS_ThrowOutOfMemory(ctx);
        return js_init_error(ws, "linking the module");
    }
    char *o = glue + sprintf(glue, "import * as m from \"");
    for (size_t i = 0; i < nl; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch == '"' || ch == '\\')
            o += sprintf(o, "\\%c", ch);
        else if (ch < 0x20)
            o += sprintf(o, "\\u%04x", ch);
        else
            *o++ = (char)ch;
    }
    o += sprintf(o, "\"; globalThis.__helios_default = m.default;");
    JS_FreeCString(ctx, name);
    r = JS_Eval(ctx, glue, (size_t)(o - glue), "helios:glue", JS_EVAL_TYPE_MODULE);
    free(glue);
    if (JS_IsException(r))
        return js_init_error(ws, "reading the module's default export");
    JS_FreeValue(ctx, r);
    return 0;
}

static int js_worker_init(void *cfgp, helios_worker *w, void **wstate)
{
    const js_config *cfg = cfgp;
    js_worker *ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return -1;
    ws->cfg = cfg;
    ws->w = w;
    ws->dispatch = ws->filter_req = ws->filter_resp = ws->error_text = ws->env = JS_UNDEFINED;
    ws->rt = JS_NewRuntime2(&js_mem_funcs, ws);
    if (ws->rt == NULL) {
        api->log(HELIOS_LOG_ERROR, JS_NAME, "%s: cannot create a JavaScript runtime", cfg->script);
        js_worker_free(ws);
        return -1;
    }
    JS_SetMemoryLimit(ws->rt, cfg->memory_limit);
    JS_SetMaxStackSize(ws->rt, JS_STACK_SIZE);
    JS_SetInterruptHandler(ws->rt, js_interrupt, ws);
    JS_SetCanBlock(ws->rt, 0);
    if (JS_NewClass(ws->rt, js_tok_class_id, &js_tok_class) != 0 ||
        (ws->ctx = JS_NewContext(ws->rt)) == NULL) {
        api->log(HELIOS_LOG_ERROR, JS_NAME, "%s: cannot create a JavaScript context", cfg->script);
        js_worker_free(ws);
        return -1;
    }
    JS_SetContextOpaque(ws->ctx, ws);
    /* top-level code gets a generous but finite budget */
    uint64_t startup_ms = cfg->cpu_limit_ms > 2000 ? cfg->cpu_limit_ms : 2000;
    ws->deadline = js_now_us() + startup_ms * 1000u;
    int rc = js_load_prelude(ws);
    if (rc == 0)
        rc = js_make_env(ws);
    if (rc == 0)
        rc = js_run_script(ws);
    if (rc == 0) {
        JSContext *c1;
        int jr;
        while ((jr = JS_ExecutePendingJob(ws->rt, &c1)) != 0)
            if (jr < 0) {
                rc = js_init_error(ws, "running the script's top-level promises");
                break;
            }
    }
    ws->deadline = 0;
    ws->cpu_hit = 0;
    if (rc != 0) {
        js_worker_free(ws);
        return -1;
    }
    *wstate = ws;
    return 0;
}

static void js_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    if (wstate)
        js_worker_free(wstate);
}

/* ------------------------------------------------------------------ */
/* handler hooks                                                       */

/* Starts the script's entry point FN for the request: the handler's
 * dispatch, or a filter's onRequest (FILTER set). PAUSE until it answers. */
static int js_begin(helios_ctx *c, JSValueConst fn, int filter, const char *where)
{
    js_worker *ws = c->wstate;
    js_rq *rq = js_rq_new(ws, c->req);
    if (rq == NULL)
        return HELIOS_ERROR;
    rq->filter = filter;
    *c->rstate = rq;
    rq->in_hook = 1;
    JSValue tok = js_tok_new(ws, rq);
    if (JS_IsException(tok)) {
        JS_FreeValue(ws->ctx, JS_GetException(ws->ctx));
        rq->in_hook = 0;
        return HELIOS_ERROR;
    }
    JSValueConst args[2] = {tok, ws->env};
    js_call(ws, rq, fn, 2, args, where);
    JS_FreeValue(ws->ctx, tok);
    rq->in_hook = 0;
    if (!rq->responded)
        return HELIOS_PAUSE;
    return rq->hook_rc;
}

static int js_handle(helios_ctx *c)
{
    js_worker *ws = c->wstate;
    return js_begin(c, ws->dispatch, 0, "in the handler");
}

/* The request ended: nothing may use it any more. Subrequests made with
 * it as parent die with it; the rest of the work stays only for pending
 * ctx.waitUntil promises, for at most JS_LINGER_MS. */
static void js_done(helios_ctx *c)
{
    js_rq *rq = *c->rstate;
    if (rq == NULL)
        return;
    *c->rstate = NULL;
    js_worker *ws = rq->ws;
    rq->r = NULL;
    js_rq_drop_body(rq);
    for (js_fetch *f = rq->fetches, *next; f; f = next) {
        next = f->next;
        if (f->parented)
            js_fetch_free(ws, f, 1);
    }
    if (rq->waits > 0 && !rq->lingering) {
        rq->lingering = 1;
        js_rq_ref(rq);
        rq->linger = api->timer_add(ws->w, JS_LINGER_MS, js_linger_end, rq);
    } else {
        js_rq_stop_work(rq);
    }
    js_rq_unref(rq);
}

/* ------------------------------------------------------------------ */
/* filter hooks                                                        */

static int js_filter_request(helios_ctx *c)
{
    js_worker *ws = c->wstate;
    return js_begin(c, ws->filter_req, 1, "in onRequest");
}

static int js_filter_response(helios_ctx *c)
{
    js_worker *ws = c->wstate;
    js_rq *rq = *c->rstate;
    JSContext *ctx = ws->ctx;
    if (rq == NULL)
        return HELIOS_CONTINUE;
    JSValue tok = js_tok_new(ws, rq);
    if (JS_IsException(tok)) {
        JS_FreeValue(ctx, JS_GetException(ctx));
        return HELIOS_ERROR;
    }
    int status = api->resp_status(c->req), rc = HELIOS_CONTINUE;
    JSValueConst args[3] = {tok, ws->env, JS_NewInt32(ctx, status)};
    js_saved sv;
    js_enter(ws, rq, &sv);
    JSValue ret = JS_Call(ctx, ws->filter_resp, JS_UNDEFINED, 3, args);
    if (JS_IsException(ret)) {
        char desc[300];
        js_rq_desc(rq, desc, sizeof(desc));
        JSValue e = JS_GetException(ctx);
        int cpu = ws->cpu_hit;
        ws->cpu_hit = 0;
        ws->deadline = js_now_us() + ws->cfg->cpu_limit_ms * 1000u;
        char *text = cpu ? NULL : js_error_text(ws, e);
        api->log(HELIOS_LOG_ERROR, JS_NAME, "%s: %s in onResponse (%s)", ws->cfg->script,
                 cpu ? "cpu_limit exceeded" : (text ? text : "exception"), desc);
        free(text);
        JS_FreeValue(ctx, e);
        rc = HELIOS_ERROR;
    } else {
        int ns;
        if (JS_ToInt32(ctx, &ns, ret) == 0 && ns != status) {
            if (ns >= 200 && ns <= 599)
                api->resp_set_status(c->req, ns);
            else
                rc = HELIOS_ERROR;
        }
    }
    JS_FreeValue(ctx, ret);
    JS_FreeValue(ctx, tok);
    js_leave(ws, &sv);
    return rc;
}

static void js_filter_log(helios_ctx *c)
{
    js_done(c);
}

/* ------------------------------------------------------------------ */
/* module descriptor                                                   */

static const helios_handler_hooks js_handler_hooks = {
    .size = sizeof(helios_handler_hooks),
    .handle = js_handle, /* run the fetch handler; PAUSE while its promise is pending */
    .on_done = js_done,  /* cancel timers and fetches of the request */
};

static const helios_filter_hooks js_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = js_filter_request, /* onRequest(request, env) */
    .on_request_body = NULL,
    .on_response_headers = js_filter_response, /* onResponse(response, env) */
    .on_response_body = NULL,
    .on_log = js_filter_log,
};

static const helios_module js_module = {
    HELIOS_MODULE_HEADER(JS_NAME, "0.1.0"),
    .config_new = js_config_new, /* compile the script to bytecode once per generation */
    .config_free = js_config_free,
    .worker_init = js_worker_init, /* one runtime per worker: prelude, then the script */
    .worker_fini = js_worker_fini,
    .filter = &js_filter_hooks,
    .handler = &js_handler_hooks,
    .balancer = NULL,
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    if (js_tok_class_id == 0)
        JS_NewClassID(&js_tok_class_id);
    return &js_module;
}
