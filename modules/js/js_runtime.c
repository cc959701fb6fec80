/*
 * js_runtime.c - the per-worker QuickJS runtime and the request glue.
 *
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

#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "js_internal.h"
#include "js_prelude.h"

static JSClassID js_tok_class_id;

/* ------------------------------------------------------------------ */
/* clock and CPU limit                                                 */

uint64_t js_now_us(void)
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

static size_t js_mem_usable(const void *p)
{
    return malloc_usable_size((void *)p);
}

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

void js_rq_ref(js_rq *rq)
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
        js_api->timer_cancel(t->t);
    JS_FreeValueRT(ws->rt, t->fn);
    free(t);
}

void js_rq_drop_body(js_rq *rq)
{
    JSRuntime *rt = rq->ws->rt;
    JS_FreeValueRT(rt, rq->body_p);
    JS_FreeValueRT(rt, rq->body_res[0]);
    JS_FreeValueRT(rt, rq->body_res[1]);
    JS_FreeValueRT(rt, rq->body_sink);
    JS_FreeValueRT(rt, rq->resp_drain);
    rq->body_p = rq->body_res[0] = rq->body_res[1] = rq->body_sink = JS_UNDEFINED;
    rq->resp_drain = JS_UNDEFINED;
    free(rq->body);
    rq->body = NULL;
    rq->body_len = rq->body_cap = 0;
}

/* Stops all asynchronous work of RQ: it can no longer use it. */
void js_rq_stop_work(js_rq *rq)
{
    js_worker *ws = rq->ws;
    while (rq->timers)
        js_timer_free(ws, rq->timers, 1);
    while (rq->fetches)
        js_fetch_free(ws, rq->fetches, 1);
    if (rq->linger) {
        js_api->timer_cancel(rq->linger);
        rq->linger = NULL;
    }
}

void js_rq_unref(js_rq *rq)
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

js_rq *js_rq_new(js_worker *ws, helios_request *r)
{
    js_rq *rq = calloc(1, sizeof(*rq));
    if (rq == NULL)
        return NULL;
    rq->ws = ws;
    rq->r = r;
    rq->refs = 1; /* the request */
    rq->body_p = rq->body_res[0] = rq->body_res[1] = rq->body_sink = JS_UNDEFINED;
    rq->resp_drain = JS_UNDEFINED;
    js_copy_lower(rq->host, sizeof(rq->host), js_api->req_host(r));
    const char *up = js_api->req_upstream(r);
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

JSValue js_tok_new(js_worker *ws, js_rq *rq)
{
    JSValue t = JS_NewObjectClass(ws->ctx, (int)js_tok_class_id);
    if (JS_IsException(t))
        return t;
    JS_SetOpaque(t, rq);
    js_rq_ref(rq);
    return t;
}

js_rq *js_tok_rq(JSValueConst v)
{
    return JS_GetOpaque(v, js_tok_class_id);
}

void js_tok_class_init(void)
{
    if (js_tok_class_id == 0)
        JS_NewClassID(&js_tok_class_id);
}

/* ------------------------------------------------------------------ */
/* running JS: enter / leave, exceptions, failing a request             */

static void js_drain(js_worker *ws);

void js_enter(js_worker *ws, js_rq *rq, js_saved *sv)
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

void js_leave(js_worker *ws, js_saved *sv)
{
    js_rq *rq = ws->cur;
    if (ws->depth == 1) {
        js_drain(ws);
        /* a cpu_limit stop that a promise turned into a rejection (a
         * stream's pull, a then() callback) and that nothing reported:
         * the script did not finish, so the request fails all the same */
        if (ws->cpu_hit)
            js_report(ws, rq, JS_UNDEFINED, "in a promise job");
    }
    if (--ws->depth == 0) {
        if (rq)
            rq->cpu_us += js_now_us() - ws->t0;
        ws->deadline = 0;
    }
    ws->cur = sv->cur;
    if (rq)
        js_rq_unref(rq);
    if (ws->depth == 0 && ws->unsent > 0)
        js_fetch_flush(ws);
}

/* "GET /path" of RQ for log lines, or a note that it ended. */
void js_rq_desc(const js_rq *rq, char *buf, size_t size)
{
    if (rq == NULL) {
        snprintf(buf, size, "outside a request");
        return;
    }
    if (rq->r == NULL) {
        snprintf(buf, size, "after its request ended");
        return;
    }
    helios_buf m = js_api->req_method(rq->r), t = js_api->req_target(rq->r);
    const char *route = js_api->req_route(rq->r);
    snprintf(buf, size, "route '%s', %.*s %.*s", route ? route : "", (int)m.len, m.ptr,
             (int)(t.len > 200 ? 200 : t.len), t.ptr);
}

/* Answers RQ (once): the response was produced with api->respond, or a
 * filter passed the request on. Resumes unless inside the hook itself. */
void js_rq_settle(js_rq *rq, int rc)
{
    if (rq->responded || rq->r == NULL)
        return;
    rq->responded = 1;
    rq->hook_rc = rc;
    if (!rq->in_hook)
        js_api->resume(rq->r, rc);
}

static void js_rq_fail(js_rq *rq)
{
    if (rq == NULL || rq->responded || rq->r == NULL)
        return;
    static const char body[] = "Internal Server Error\n";
    if (js_api->respond(rq->r, 500, "text/plain; charset=utf-8", body, sizeof(body) - 1) != 0) {
        /* a response had started (cannot happen before respond): error */
        rq->responded = 1;
        rq->hook_rc = HELIOS_ERROR;
        if (!rq->in_hook)
            js_api->resume(rq->r, HELIOS_ERROR);
        return;
    }
    js_rq_settle(rq, HELIOS_RESPONDED);
}

/* Text of exception E (with its stack) for the log; malloc'd or NULL. */
char *js_error_text(js_worker *ws, JSValueConst e)
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
 * RQ with 500 (or cuts its streamed response off when a limit stopped the
 * script). A CPU-limit stop says so instead of printing a stack. */
void js_report(js_worker *ws, js_rq *rq, JSValue e, const char *where)
{
    char desc[300];
    js_rq_desc(rq, desc, sizeof(desc));
    /* the rest of this run gets a fresh budget so reporting can run */
    ws->deadline = js_now_us() + ws->cfg->cpu_limit_ms * 1000u;
    int interrupted = ws->mem_hit || ws->cpu_hit;
    const char *outcome = rq && rq->streaming ? "response cut off" : "500 sent";
    if (ws->mem_hit) {
        /* stay flagged until a GC at the next run brings usage back down */
        js_api->log(HELIOS_LOG_ERROR, JS_NAME,
                    "%s: memory_limit of %llu bytes exceeded %s (%s): script interrupted (out of "
                    "memory), %s",
                    ws->cfg->script, (unsigned long long)ws->cfg->memory_limit, where, desc,
                    outcome);
        ws->cpu_hit = 0;
    } else if (ws->cpu_hit) {
        ws->cpu_hit = 0;
        js_api->log(HELIOS_LOG_ERROR, JS_NAME,
                    "%s: cpu_limit of %llu ms exceeded %s (%s): script interrupted, %s",
                    ws->cfg->script, (unsigned long long)ws->cfg->cpu_limit_ms, where, desc,
                    outcome);
    } else {
        char *text = js_error_text(ws, e);
        js_api->log(HELIOS_LOG_ERROR, JS_NAME, "%s: uncaught exception %s (%s): %s",
                    ws->cfg->script, where, desc, text ? text : "(no message: out of memory?)");
        free(text);
    }
    JS_FreeValue(ws->ctx, e);
    /* an interrupted script cannot go on feeding its streamed response
     * (the stop is uncatchable): cut it off rather than let it hang */
    if (rq && rq->streaming && rq->r && interrupted)
        js_api->respond_abort(rq->r, "the script was interrupted (cpu_limit or memory_limit)");
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
void js_call(js_worker *ws, js_rq *rq, JSValueConst fn, int argc, JSValueConst *argv,
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

js_worker *js_ws(JSContext *ctx)
{
    return JS_GetContextOpaque(ctx);
}

/* ---- timers ---- */

static void js_timer_fire(void *arg)
{
    js_timer *t = arg;
    js_rq *rq = t->rq;
    js_worker *ws = rq->ws;
    t->t = NULL; /* fired: freed by the core */
    JSValue fn = JS_DupValue(ws->ctx, t->fn);
    int every = t->every_ms > 0;
    js_rq_ref(rq);
    /* an interval is re-armed first: its callback may clear it (T is not
     * touched after the call) */
    if (!every || (t->t = js_api->timer_add(ws->w, t->every_ms, js_timer_fire, t)) == NULL)
        js_timer_free(ws, t, 0);
    js_call(ws, rq, fn, 0, NULL, every ? "in a setInterval callback" : "in a setTimeout callback");
    JS_FreeValue(ws->ctx, fn);
    js_rq_unref(rq);
}

JSValue nat_set_timeout(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_worker *ws = js_ws(ctx);
    if (ws->exec)
        return js_exec_set_timeout(ctx, argc, argv);
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
    /* hx.setTimeout(fn, ms, repeat): an interval runs at most every 1 ms */
    if (argc > 2 && JS_ToBool(ctx, argv[2]))
        t->every_ms = ms >= 1 ? (uint64_t)ms : 1;
    t->id = ++ws->next_timer_id;
    if (ws->next_timer_id >= INT_MAX - 1)
        ws->next_timer_id = 0;
    t->t = js_api->timer_add(ws->w, ms > 0 ? (uint64_t)ms : 0, js_timer_fire, t);
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

JSValue nat_clear_timeout(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    js_worker *ws = js_ws(ctx);
    if (ws->exec)
        return js_exec_clear_timeout(ctx, argv);
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

void js_linger_end(void *arg)
{
    js_rq *rq = arg;
    rq->linger = NULL; /* fired */
    if (!rq->lingering)
        return;
    js_api->log(HELIOS_LOG_WARN, JS_NAME,
                "%s: ctx.waitUntil work still pending %u ms after the response; cancelled",
                rq->ws->cfg->script, JS_LINGER_MS);
    rq->lingering = 0;
    js_rq_stop_work(rq);
    js_rq_unref(rq);
}

JSValue nat_wait_begin(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)ctx;
    (void)this_val;
    (void)argc;
    js_rq *rq = js_tok_rq(argv[0]);
    if (rq)
        rq->waits++;
    return JS_UNDEFINED;
}

JSValue nat_wait_end(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
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

/* ------------------------------------------------------------------ */
/* worker_init / worker_fini                                           */

/* Frees WS's runtime and what could call back into it; WS stays. */
static void js_runtime_close(js_worker *ws)
{
    /* stop everything that could call back into this runtime */
    for (js_rq *rq = ws->rqs; rq; rq = rq->next) {
        js_rq_stop_work(rq);
        js_rq_drop_body(rq);
    }
    if (ws->exec)
        js_exec_free_all(ws->exec);
    if (ws->ctx) {
        JS_FreeValue(ws->ctx, ws->dispatch);
        JS_FreeValue(ws->ctx, ws->filter_req);
        JS_FreeValue(ws->ctx, ws->filter_resp);
        JS_FreeValue(ws->ctx, ws->error_text);
        JS_FreeValue(ws->ctx, ws->probe);
        JS_FreeValue(ws->ctx, ws->same_body);
        JS_FreeValue(ws->ctx, ws->buffer);
        JS_FreeValue(ws->ctx, ws->env);
        JS_FreeContext(ws->ctx);
        ws->ctx = NULL;
    }
    ws->dispatch = ws->filter_req = ws->filter_resp = ws->error_text = ws->env = JS_UNDEFINED;
    ws->buffer = ws->probe = ws->same_body = JS_UNDEFINED;
    if (ws->rt) {
        JS_FreeRuntime(ws->rt); /* finalizes the tokens: drops their refs */
        ws->rt = NULL;
    }
    while (ws->rqs) { /* lingering or leaked: nothing can use them now */
        js_rq *rq = ws->rqs;
        ws->rqs = rq->next;
        free(rq);
    }
}

void js_worker_free(js_worker *ws)
{
    js_runtime_close(ws);
    js_cache_free(ws->cache);
    free(ws);
}

/* Puts "WHAT: " and the text of the pending exception in ERR; returns -1. */
static int js_init_error(js_worker *ws, const char *what, char *err, size_t errlen)
{
    JSValue e = JS_GetException(ws->ctx);
    ws->deadline = 0;
    if (ws->cpu_hit) {
        snprintf(err, errlen, "%s: interrupted after its startup budget of %llu ms", what,
                 (unsigned long long)(ws->cfg->cpu_limit_ms > 2000 ? ws->cfg->cpu_limit_ms : 2000));
        JS_FreeValue(ws->ctx, e);
        return -1;
    }
    char *text = JS_IsFunction(ws->ctx, ws->error_text) ? js_error_text(ws, e) : NULL;
    if (text == NULL) {
        const char *s = JS_ToCString(ws->ctx, e);
        text = s ? strdup(s) : NULL;
        JS_FreeCString(ws->ctx, s);
    }
    snprintf(err, errlen, "%s: %s", what, text ? text : "out of memory");
    free(text);
    JS_FreeValue(ws->ctx, e);
    return -1;
}

/* Evaluates the embedded .js files (js_prelude_files): each is a function
 * expression called with `hx` (the natives) and the `lib` object the first
 * one, prelude.js, returns among its entry points. */
static int js_load_prelude(js_worker *ws, char *err, size_t errlen)
{
    JSContext *ctx = ws->ctx;
    JSValue hx = JS_NewObject(ctx);
    if (JS_IsException(hx))
        return js_init_error(ws, "the prelude", err, errlen);
    js_natives_install(ctx, hx);
    JS_SetPropertyStr(ctx, hx, "maxBody", JS_NewFloat64(ctx, (double)ws->cfg->max_body));
    JSValue o = JS_UNDEFINED, lib = JS_UNDEFINED;
    int rc = 0;
    for (size_t i = 0; i < sizeof(js_prelude_files) / sizeof(js_prelude_files[0]) && rc == 0; i++) {
        JSValue fn = JS_Eval(ctx, (const char *)js_prelude_files[i].src, js_prelude_files[i].len,
                             js_prelude_files[i].name, JS_EVAL_TYPE_GLOBAL | JS_EVAL_FLAG_STRICT);
        if (JS_IsException(fn)) {
            rc = js_init_error(ws, js_prelude_files[i].name, err, errlen);
            break;
        }
        JSValueConst args[2] = {hx, lib};
        JSValue r = JS_Call(ctx, fn, JS_UNDEFINED, 2, args);
        JS_FreeValue(ctx, fn);
        if (JS_IsException(r)) {
            rc = js_init_error(ws, js_prelude_files[i].name, err, errlen);
        } else if (i == 0) {
            o = r;
            lib = JS_GetPropertyStr(ctx, o, "lib");
        } else {
            JS_FreeValue(ctx, r);
        }
    }
    if (rc == 0) {
        ws->dispatch = JS_GetPropertyStr(ctx, o, "dispatch");
        ws->filter_req = JS_GetPropertyStr(ctx, o, "filterRequest");
        ws->filter_resp = JS_GetPropertyStr(ctx, o, "filterResponse");
        ws->error_text = JS_GetPropertyStr(ctx, o, "errorText");
        ws->buffer = JS_GetPropertyStr(ctx, o, "Buffer");
        ws->probe = JS_GetPropertyStr(ctx, o, "probe");
    }
    JS_FreeValue(ctx, lib);
    JS_FreeValue(ctx, o);
    JS_FreeValue(ctx, hx);
    return rc;
}

static int js_make_env(js_worker *ws, char *err, size_t errlen)
{
    JSContext *ctx = ws->ctx;
    ws->env = JS_NewObject(ctx);
    if (JS_IsException(ws->env))
        return js_init_error(ws, "building env", err, errlen);
    for (size_t i = 0; i < ws->cfg->nenv; i++)
        JS_DefinePropertyValueStr(ctx, ws->env, ws->cfg->env_keys[i],
                                  JS_NewString(ctx, ws->cfg->env_vals[i]), JS_PROP_ENUMERABLE);
    JS_PreventExtensions(ctx, ws->env);
    return 0;
}

/* Runs the script's bytecode; an ES module's default export becomes
 * globalThis.__helios_default through a one-line glue module. */
static int js_run_script(js_worker *ws, char *err, size_t errlen)
{
    static const char top[] = "the script's top level failed";
    JSContext *ctx = ws->ctx;
    JSValue obj = JS_ReadObject(ctx, ws->cfg->bc, ws->cfg->bc_len, JS_READ_OBJ_BYTECODE);
    if (JS_IsException(obj))
        return js_init_error(ws, "loading the bytecode", err, errlen);
    if (JS_VALUE_GET_TAG(obj) != JS_TAG_MODULE) {
        JSValue r = JS_EvalFunction(ctx, obj);
        if (JS_IsException(r))
            return js_init_error(ws, top, err, errlen);
        JS_FreeValue(ctx, r);
        return 0;
    }
    JSModuleDef *m = JS_VALUE_GET_PTR(obj);
    JSAtom name_atom = JS_GetModuleName(ctx, m);
    const char *name = JS_AtomToCString(ctx, name_atom);
    JS_FreeAtom(ctx, name_atom);
    if (name == NULL)
        return js_init_error(ws, "loading the module", err, errlen);
    if (JS_ResolveModule(ctx, obj) < 0) {
        JS_FreeCString(ctx, name);
        return js_init_error(ws, "linking the module", err, errlen);
    }
    JSValue r = JS_EvalFunction(ctx, obj);
    if (JS_IsException(r)) {
        JS_FreeCString(ctx, name);
        return js_init_error(ws, top, err, errlen);
    }
    JS_FreeValue(ctx, r);
    /* import by the module's own name (js_module_normalize keeps names as
     * they are), escaped as a JSON string */
    size_t nl = strlen(name);
    char *glue = malloc(nl * 6 + 128);
    if (glue == NULL) {
        JS_FreeCString(ctx, name);
        JS_ThrowOutOfMemory(ctx);
        return js_init_error(ws, "linking the module", err, errlen);
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
        return js_init_error(ws, "reading the module's default export", err, errlen);
    JS_FreeValue(ctx, r);
    return 0;
}

/* Creates WS's runtime and context and runs the prelude and the script's
 * top level (with its promise jobs) under a startup budget. Returns 0, or
 * -1 with the reason in ERR (WS then has no runtime). */
int js_runtime_open(js_worker *ws, char *err, size_t errlen)
{
    const js_config *cfg = ws->cfg;
    ws->dispatch = ws->filter_req = ws->filter_resp = ws->error_text = ws->env = JS_UNDEFINED;
    ws->buffer = ws->probe = ws->same_body = JS_UNDEFINED;
    ws->rt = JS_NewRuntime2(&js_mem_funcs, ws);
    if (ws->rt == NULL) {
        snprintf(err, errlen, "cannot create a JavaScript runtime (out of memory)");
        return -1;
    }
    JS_SetMemoryLimit(ws->rt, cfg->memory_limit);
    JS_SetMaxStackSize(ws->rt, JS_STACK_SIZE);
    JS_SetInterruptHandler(ws->rt, js_interrupt, ws);
    JS_SetCanBlock(ws->rt, 0);
    if (ws->exec)
        js_exec_runtime_init(ws);
    js_module_loader_install(ws->rt);
    if (JS_NewClass(ws->rt, js_tok_class_id, &js_tok_class) != 0 ||
        js_crypto_runtime_init(ws->rt) != 0 || (ws->ctx = JS_NewContext(ws->rt)) == NULL) {
        snprintf(err, errlen, "cannot create a JavaScript context (out of memory)");
        js_runtime_close(ws);
        return -1;
    }
    JS_SetContextOpaque(ws->ctx, ws);
    /* top-level code gets a generous but finite budget */
    uint64_t startup_ms = cfg->cpu_limit_ms > 2000 ? cfg->cpu_limit_ms : 2000;
    ws->deadline = js_now_us() + startup_ms * 1000u;
    int rc = js_load_prelude(ws, err, errlen);
    if (rc == 0)
        rc = js_make_env(ws, err, errlen);
    if (rc == 0)
        rc = js_run_script(ws, err, errlen);
    if (rc == 0) {
        JSContext *c1;
        int jr;
        while ((jr = JS_ExecutePendingJob(ws->rt, &c1)) != 0)
            if (jr < 0) {
                rc = js_init_error(ws, "the script's top-level promises failed", err, errlen);
                break;
            }
    }
    ws->deadline = 0;
    ws->cpu_hit = 0;
    if (rc != 0)
        js_runtime_close(ws);
    return rc;
}

/*
 * The static-response probe (prelude.js `probe`), in a worker's runtime
 * right after the script's top level, before any request: the handler
 * answers a GET http://localhost/ and then a POST http://localhost/other,
 * with a request's cpu_limit and outside any request (fetch() and timers
 * throw). When both answers are the same 200 with no header of their own
 * and a whole body, they become a prepared response that js_handle sends
 * without running JavaScript. NULL otherwise.
 */
static helios_prepared *js_probe(js_worker *ws)
{
    JSContext *ctx = ws->ctx;
    if (!JS_IsFunction(ctx, ws->probe))
        return NULL;
    js_saved sv;
    js_enter(ws, NULL, &sv);
    JSValue out = JS_Call(ctx, ws->probe, JS_UNDEFINED, 1, (JSValueConst *)&ws->env);
    if (JS_IsException(out))
        JS_FreeValue(ctx, JS_GetException(ctx));
    js_leave(ws, &sv); /* runs the promise jobs: a synchronous handler settles here */
    helios_prepared *p = NULL;
    JSValue done = JS_GetPropertyStr(ctx, out, "done");
    JSValue res = JS_GetPropertyStr(ctx, out, "result");
    if (JS_ToBool(ctx, done) == 1 && JS_IsObject(res)) {
        JSValue ct = JS_GetPropertyStr(ctx, res, "ct");
        JSValue body = JS_GetPropertyStr(ctx, res, "body");
        const char *cts = JS_IsString(ct) ? JS_ToCString(ctx, ct) : NULL;
        const char *hold = NULL;
        const uint8_t *b;
        size_t len;
        if (js_bytes(ctx, body, &hold, &b, &len) == 0) {
            const char *hdrs[2] = {"Content-Type", cts};
            char err[256];
            p = js_api->prepared_new(200, hdrs, cts ? 1 : 0, b, len, err, sizeof(err));
            JS_FreeCString(ctx, hold);
        } else {
            JS_FreeValue(ctx, JS_GetException(ctx));
        }
        JS_FreeCString(ctx, cts);
        JS_FreeValue(ctx, ct);
        JS_FreeValue(ctx, body);
    }
    JS_FreeValue(ctx, done);
    JS_FreeValue(ctx, res);
    JS_FreeValue(ctx, out);
    return p;
}

/* Keeps P until config_free (a response in flight may point into it after
 * its worker let the generation go). 0, or -1 with P freed. */
int js_keep_prepared(const js_config *cfgc, helios_prepared *p)
{
    js_config *cfg = (js_config *)cfgc; /* probed_lock guards the list */
    js_probed *k = p ? malloc(sizeof(*k)) : NULL;
    if (k == NULL) {
        js_api->prepared_free(p);
        return -1;
    }
    k->resp = p;
    pthread_mutex_lock(&cfg->probed_lock);
    k->next = cfg->probed;
    cfg->probed = k;
    pthread_mutex_unlock(&cfg->probed_lock);
    return 0;
}

/* Runs the probe on WS and keeps what it found with the configuration. */
static void js_worker_probe(js_worker *ws)
{
    helios_prepared *p = js_probe(ws);
    if (p && js_keep_prepared(ws->cfg, p) == 0)
        ws->probed = p;
}

/*
 * A script that cannot be initialised on a worker (a top level that is not
 * deterministic, or no memory) does not fail worker_init: that would make
 * the core answer 503 on every route of the worker. The instance stays,
 * broken: its routes answer 503 (js.c) and the reason is logged once.
 *
 * HELIOS_JS_TEST_FAIL_INIT=TEXT makes the scripts whose path contains TEXT
 * fail here: the configuration check runs the same top level first, so a
 * test cannot reach this path with a deterministic script otherwise.
 */
int js_worker_init(void *cfgp, helios_worker *w, void **wstate)
{
    const js_config *cfg = cfgp;
    js_worker *ws = calloc(1, sizeof(*ws));
    if (ws == NULL)
        return -1;
    ws->cfg = cfg;
    ws->w = w;
    char err[2048];
    const char *fault = getenv("HELIOS_JS_TEST_FAIL_INIT");
    int rc;
    if (fault && fault[0] && strstr(cfg->script, fault)) {
        snprintf(err, sizeof(err), "Error: fault injected (HELIOS_JS_TEST_FAIL_INIT)");
        rc = -1;
    } else if (cfg->cache_size && (ws->cache = js_cache_new(cfg->cache_size)) == NULL) {
        snprintf(err, sizeof(err), "out of memory (the cache)");
        rc = -1;
    } else {
        rc = js_runtime_open(ws, err, sizeof(err));
    }
    if (rc == 0 && cfg->probe)
        js_worker_probe(ws);
    if (rc != 0) {
        ws->broken = 1;
        js_api->log(HELIOS_LOG_ERROR, JS_NAME,
                    "%s: the script could not be initialised on worker %u, its routes answer 503: "
                    "%s",
                    cfg->script, js_api->worker_index(w), err);
    }
    *wstate = ws;
    return 0;
}

void js_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    if (wstate)
        js_worker_free(wstate);
}

/* config_new's check: the script's top level runs once in a runtime of its
 * own, with the workers' limits, so `heliosd -t`, a start and a reload
 * report its errors instead of workers answering 503. */
int js_trial_run(const js_config *cfg, char *err, size_t errlen)
{
    js_worker *ws = calloc(1, sizeof(*ws));
    if (ws == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    ws->cfg = cfg;
    ws->trial = 1;
    int rc = js_runtime_open(ws, err, errlen);
    js_worker_free(ws);
    return rc;
}
