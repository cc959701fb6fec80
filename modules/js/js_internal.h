/*
 * js_internal.h - shared between the js module's files.
 *
 *   js.c          configuration, handler and filter hooks, the descriptor
 *                 with its command table
 *   js_runtime.c  the per-worker runtime: allocator and limits, js_rq
 *                 lifetime, entering and leaving JS, timers, waitUntil,
 *                 worker_init/worker_fini
 *   js_web.c      the natives behind prelude.js's Web API (hx.*): request,
 *                 response, headers, body, crypto, TextEncoder/Decoder
 *   js_crypto.c   crypto.subtle's OpenSSL natives (hx.digest, hx.sign...)
 *   js_cache.c    the Cache API's store: per worker, LRU, cache_size
 *   js_fetch.c    fetch(): subrequests and their promises
 *   js_compile.c  source and .qjsbc loading, `heliosd compile` (`build`)
 *   js_serve.c    `heliosd serve app.js`: a configuration in memory, then heliosd
 *   js_exec.c     `heliosd exec script.js`: run once with a loop and an HTTP client
 *
 * Threads: configuration and the command run on heliosd's main thread;
 * everything touching a js_worker runs on that worker's thread.
 */
#ifndef HELIOS_JS_INTERNAL_H
#define HELIOS_JS_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <quickjs.h>

#include <helios.h>

#define JS_NAME "js"
#define JS_SCRIPT_MAX (16u * 1024 * 1024)
#define JS_STACK_SIZE (1024u * 1024)
#define JS_LINGER_MS 30000u
#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

extern const helios_host_api *js_api;

/* ---- configuration (immutable once config_new returns) ---- */

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
    uint64_t cache_size; /* per worker: the Cache API's bound (0: off) */
    int script_only;     /* `mode: script`: never an ES module */
    int probe;           /* `probe:` (default on): the static-response probe */
    /* The workers' probed responses, kept until config_free: a response in
     * flight may point into one after its worker let the generation go.
     * The one mutable part, under its lock. */
    pthread_mutex_t probed_lock;
    struct js_probed *probed;
} js_config;

typedef struct js_probed {
    helios_prepared *resp;
    struct js_probed *next;
} js_probed;

/* ---- per-worker and per-request state ---- */

typedef struct js_rq js_rq;
typedef struct js_cache js_cache;
typedef struct js_exec js_exec;

typedef struct js_worker {
    const js_config *cfg;
    helios_worker *w; /* NULL for config_new's trial run */
    int broken;       /* the script could not be initialised: 503 */
    int trial;        /* config_new's trial run: console output is dropped */
    JSRuntime *rt;
    JSContext *ctx;
    JSValue dispatch, filter_req, filter_resp, error_text, probe;
    JSValue buffer; /* the Buffer class, for `import ... from 'node:buffer'` */
    JSValue env;
    js_rq *cur;        /* request the running JS is attributed to */
    unsigned depth;    /* nesting of js_enter */
    uint64_t deadline; /* monotonic us; 0 = no limit */
    uint64_t t0;       /* start of the outermost run */
    int cpu_hit;       /* the interrupt handler stopped the script */
    int mem_hit;       /* memory_limit passed: stop the script at the next check */
    int next_timer_id;
    int next_fetch_id;
    unsigned unsent;               /* fetches waiting for the end of the run (js_fetch_flush) */
    js_cache *cache;               /* the Cache API's store (js_cache.c) */
    js_rq *rqs;                    /* every live js_rq of this worker */
    js_exec *exec;                 /* `heliosd exec`: its loop, console and fetch (js_exec.c) */
    const helios_prepared *probed; /* the probe's static response: sent without JS */
    /* nat_respond's one response kept per worker (js_web.c): a handler that
     * answers the very same string twice in a row gets it prepared once */
    JSValue same_body;
    int same_status;
    const helios_prepared *same_resp;
} js_worker;

typedef struct js_timer {
    js_rq *rq;
    helios_timer *t;
    JSValue fn;
    int id;
    uint64_t every_ms; /* setInterval: re-armed before each call; 0 = once */
    struct js_timer *prev, *next;
} js_timer;

typedef struct js_fetch {
    js_rq *rq;
    helios_subreq *s;
    JSValue res[2];
    helios_timer *t; /* `timeout` */
    int parented;    /* cancelled by the core with the parent request */
    int id;          /* hx.fetchCancel(id) */
    int head_done;   /* the promise is resolved: body pieces go to SINK */
    JSValue sink;    /* sink(chunk ArrayBuffer | null, done, error message) */
    /* what js_fetch_flush sends at the end of the JS run that asked */
    int unsent;
    int own;        /* the route's own upstream (the request's host) */
    char *upstream; /* named upstream (NULL: own) */
    char *method, *target;
    char *host;         /* Host to send: the URL's host[:port] for a named
                         * upstream, NULL to keep the request's */
    JSValue hdrs, body; /* [[name, value]...] or null; string|ArrayBuffer|null */
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
    unsigned streaming : 1; /* the response head is out, its body streams */
    int hook_rc;        /* filter: CONTINUE or RESPONDED once settled */
    unsigned waits;     /* pending ctx.waitUntil promises */
    uint64_t cpu_us;    /* JS time spent for this request */
    char host[256];     /* the request's host, lower case, no port */
    char upstream[128]; /* the route's upstream, for fetches after the end */
    int body_state;
    JSValue body_p, body_res[2]; /* hx.body(): the whole body, once */
    JSValue body_sink;           /* hx.bodyStream(): each chunk as it comes */
    JSValue resp_drain;          /* hx.respondWait(): run when the client drained */
    char *body;
    size_t body_len, body_cap;
    js_timer *timers;
    js_fetch *fetches;
    helios_timer *linger;
    js_rq *prev, *next;
};

/* What js_enter saves for js_leave. */
typedef struct js_saved {
    js_rq *cur;
} js_saved;

/* ---- js_runtime.c ---- */

void js_tok_class_init(void); /* once per process, from the module entry */
uint64_t js_now_us(void);

js_rq *js_rq_new(js_worker *ws, helios_request *r);
void js_rq_ref(js_rq *rq);
void js_rq_unref(js_rq *rq);
void js_rq_drop_body(js_rq *rq);
void js_rq_stop_work(js_rq *rq);
void js_rq_desc(const js_rq *rq, char *buf, size_t size);
void js_rq_settle(js_rq *rq, int rc);

JSValue js_tok_new(js_worker *ws, js_rq *rq);
js_rq *js_tok_rq(JSValueConst v);
js_worker *js_ws(JSContext *ctx);

void js_enter(js_worker *ws, js_rq *rq, js_saved *sv);
void js_leave(js_worker *ws, js_saved *sv);
void js_call(js_worker *ws, js_rq *rq, JSValueConst fn, int argc, JSValueConst *argv,
             const char *where);
void js_report(js_worker *ws, js_rq *rq, JSValue e, const char *where);
char *js_error_text(js_worker *ws, JSValueConst e);
void js_linger_end(void *arg);

int js_worker_init(void *cfgp, helios_worker *w, void **wstate);
int js_runtime_open(js_worker *ws, char *err, size_t errlen);
void js_worker_free(js_worker *ws);
void js_worker_fini(void *cfg, helios_worker *w, void *wstate);
int js_trial_run(const js_config *cfg, char *err, size_t errlen);
int js_keep_prepared(const js_config *cfg, helios_prepared *p);

JSValue nat_set_timeout(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv);
JSValue nat_clear_timeout(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv);
JSValue nat_wait_begin(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv);
JSValue nat_wait_end(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv);

/* ---- js_web.c ---- */

void js_natives_install(JSContext *ctx, JSValueConst hx); /* every hx.* native */
int js_bytes(JSContext *ctx, JSValueConst v, const char **hold, const uint8_t **p, size_t *len);
int js_hop_header(const char *n);
int js_pairs(JSContext *ctx, JSValueConst pairs, int (*fn)(void *arg, const char *n, const char *v),
             void *arg);

/* ---- js_cache.c ---- */

js_cache *js_cache_new(size_t cap);
void js_cache_free(js_cache *c);
void js_cache_natives_install(JSContext *ctx, JSValueConst hx);

/* ---- js_crypto.c ---- */

void js_crypto_class_init(void);           /* once per process, from the module entry */
int js_crypto_runtime_init(JSRuntime *rt); /* per runtime */
void js_crypto_natives_install(JSContext *ctx, JSValueConst hx);

/* ---- js_fetch.c ---- */

void js_fetch_free(js_worker *ws, js_fetch *f, int cancel);
void js_fetch_flush(js_worker *ws);
void js_fetch_orphaned(js_worker *ws, js_rq *rq);
JSValue nat_fetch(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv);
JSValue nat_fetch_ctl(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv,
                      int magic);

/* ---- js_compile.c ---- */

int js_load_script(const char *path, int script_only, uint8_t **bc, size_t *bclen, char *err,
                   size_t errlen);
void js_module_loader_install(JSRuntime *rt);
int js_compile_command(const helios_host_api *api, int argc, char **argv);

/* ---- js_serve.c, js_exec.c ---- */

int js_serve_command(const helios_host_api *api, int argc, char **argv);
int js_exec_command(const helios_host_api *api, int argc, char **argv);
/* what a runtime with ws->exec set does instead of a worker's */
void js_exec_runtime_init(js_worker *ws);
void js_exec_free_all(js_exec *x);
void js_exec_log(js_worker *ws, int level, const char *s);
JSValue js_exec_set_timeout(JSContext *ctx, int argc, JSValueConst *argv);
JSValue js_exec_clear_timeout(JSContext *ctx, JSValueConst *argv);
JSValue js_exec_fetch(JSContext *ctx, int argc, JSValueConst *argv);

#endif
