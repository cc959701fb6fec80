/*
 * js.c - Workers-style JavaScript handlers and filters on QuickJS: the
 * module's configuration, its hooks and its descriptor.
 *
 * Engine model (js_internal.h lists the files):
 *   - config_new compiles the script once per configuration generation to
 *     QuickJS bytecode (or reads bytecode written by `heliosd compile`); a
 *     syntax error is a configuration error with file:line (js_compile.c).
 *   - worker_init gives each worker one JSRuntime + JSContext for the
 *     instance; every entry into JS is bracketed by js_enter/js_leave,
 *     which drive the promise jobs and enforce cpu_limit and memory_limit
 *     (js_runtime.c).
 *   - A hook starts the script's entry point for the request and returns
 *     PAUSE while its promise is pending; api->resume is called when it
 *     settles. on_done (on_log for a filter) ends what the request owns,
 *     except pending ctx.waitUntil work, which lingers for at most
 *     JS_LINGER_MS.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "js_internal.h"

const helios_host_api *js_api;

/* ------------------------------------------------------------------ */
/* configuration                                                       */

static const char *const js_keys[] = {
    "script",  "env",        "memory_limit", "cpu_limit", "max_body",
    "timeout", "cache_size", "mode",         "probe",     NULL,
};

/* ------------------------------------------------------------------ */
/* config_new / config_free                                            */

static void js_config_free(void *cfgp)
{
    js_config *c = cfgp;
    if (c == NULL)
        return;
    while (c->probed) {
        js_probed *p = c->probed;
        c->probed = p->next;
        js_api->prepared_free(p->resp);
        free(p);
    }
    pthread_mutex_destroy(&c->probed_lock);
    free(c->script);
    free(c->bc);
    free(c->env_keys);
    free(c->env_vals);
    free(c);
}

static int js_config_env(const helios_conf *conf, js_config *c)
{
    const helios_conf *env = js_api->conf_get(conf, "env");
    int kind = js_api->conf_kind(env);
    if (kind == HELIOS_CONF_NULL)
        return 0;
    if (kind != HELIOS_CONF_MAP) {
        js_api->conf_error(env, "env must be a map of NAME: string");
        return -1;
    }
    size_t n = js_api->conf_len(env);
    c->env_keys = calloc(n + 1, sizeof(char *));
    c->env_vals = calloc(n + 1, sizeof(char *));
    if (c->env_keys == NULL || c->env_vals == NULL) {
        js_api->conf_error(env, "out of memory");
        return -1;
    }
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const char *v = js_api->conf_scalar(js_api->conf_at(env, i));
        if (v == NULL) {
            js_api->conf_error(js_api->conf_at(env, i), "env values must be strings (quote them)");
            bad = 1;
            continue;
        }
        c->env_keys[c->nenv] = js_api->conf_key_at(env, i);
        c->env_vals[c->nenv++] = v;
    }
    return bad ? -1 : 0;
}

/* The script's path: relative to the YAML file's directory, then made
 * absolute, so that names in stacks and the module's own name do not
 * depend on how heliosd was started (`-c config.yaml`). */
static int js_script_path(const helios_conf *sn, const char *script, char *path, size_t size)
{
    char rel[PATH_MAX];
    if (js_api->conf_path(sn, script, rel, sizeof(rel)) != 0)
        return -1;
    if (rel[0] == '/' || getcwd(path, size) == NULL) {
        if (strlen(rel) >= size)
            return -1;
        memcpy(path, rel, strlen(rel) + 1);
        return 0;
    }
    const char *r = rel;
    while (r[0] == '.' && r[1] == '/')
        r += 2;
    size_t n = strlen(path);
    if (n + 1 + strlen(r) >= size)
        return -1;
    if (n == 0 || path[n - 1] != '/')
        path[n++] = '/';
    memcpy(path + n, r, strlen(r) + 1);
    return 0;
}

static int js_config_new(const helios_conf *conf, void **cfgp)
{
    if (js_api->conf_kind(conf) != HELIOS_CONF_MAP) {
        js_api->conf_error(conf,
                           "the js module needs a config map with at least `script: FILE.js`");
        return -1;
    }
    js_config *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        js_api->conf_error(conf, "out of memory");
        return -1;
    }
    pthread_mutex_init(&c->probed_lock, NULL);
    int bad = js_api->conf_check_keys(conf, js_keys) > 0;
    const char *script = NULL;
    if (js_api->conf_str(conf, "script", NULL, &script) != 1) {
        if (script == NULL && js_api->conf_get(conf, "script") == NULL)
            js_api->conf_error(conf, "script is required: the path of the JavaScript file");
        bad = 1;
    }
    if (js_api->conf_size(conf, "memory_limit", 64u << 20, &c->memory_limit) < 0 ||
        js_api->conf_duration_ms(conf, "cpu_limit", 50, &c->cpu_limit_ms) < 0 ||
        js_api->conf_size(conf, "max_body", 1u << 20, &c->max_body) < 0 ||
        js_api->conf_duration_ms(conf, "timeout", 30000, &c->timeout_ms) < 0 ||
        js_api->conf_size(conf, "cache_size", 8u << 20, &c->cache_size) < 0)
        bad = 1;
    if (!bad && c->memory_limit < (1u << 20)) {
        js_api->conf_error(js_api->conf_get(conf, "memory_limit"),
                           "memory_limit must be at least 1MiB");
        bad = 1;
    }
    if (!bad && c->cpu_limit_ms == 0) {
        js_api->conf_error(js_api->conf_get(conf, "cpu_limit"), "cpu_limit must be at least 1ms");
        bad = 1;
    }
    if (js_config_env(conf, c) != 0)
        bad = 1;
    if (js_api->conf_bool(conf, "probe", 1, &c->probe) < 0)
        bad = 1;
    const char *mode = NULL;
    if (js_api->conf_str(conf, "mode", "auto", &mode) < 0) {
        bad = 1;
    } else if (mode && strcmp(mode, "script") == 0) {
        c->script_only = 1;
    } else if (mode && strcmp(mode, "auto") != 0) {
        js_api->conf_error(js_api->conf_get(conf, "mode"),
                           "mode must be auto (an ES module when the file has import/export "
                           "lines or ends in .mjs) or script (always a classic script)");
        bad = 1;
    }
    /* compile even when other keys are wrong: one run reports every problem */
    if (script != NULL) {
        char path[PATH_MAX], err[1024];
        const helios_conf *sn = js_api->conf_get(conf, "script");
        if (js_script_path(sn, script, path, sizeof(path)) != 0) {
            js_api->conf_error(sn, "script path is too long");
            bad = 1;
        } else if ((c->script = strdup(path)) == NULL) {
            js_api->conf_error(sn, "out of memory");
            bad = 1;
        } else if (js_load_script(path, c->script_only, &c->bc, &c->bc_len, err, sizeof(err)) !=
                   0) {
            js_api->conf_error(sn, "%s", err);
            bad = 1;
        } else if (!bad && js_trial_run(c, err, sizeof(err)) != 0) {
            js_api->conf_error(sn, "%s: %s", path, err);
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

/* An instance whose script could not be initialised on this worker
 * answers 503 on its own routes (js_worker_init logged why). */
static int js_unavailable(helios_ctx *c)
{
    static const char body[] = "Service Unavailable\n";
    if (js_api->respond(c->req, 503, "text/plain; charset=utf-8", body, sizeof(body) - 1) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

static int js_handle(helios_ctx *c)
{
    js_worker *ws = c->wstate;
    /* the probe found the answer when the worker started: no JavaScript runs */
    if (ws->probed)
        return js_api->respond_prepared(c->req, ws->probed) == 0 ? HELIOS_RESPONDED : HELIOS_ERROR;
    if (ws->broken)
        return js_unavailable(c);
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
    if (rq->waits > 0 && !rq->lingering) {
        rq->lingering = 1;
        js_rq_ref(rq);
        rq->linger = js_api->timer_add(ws->w, JS_LINGER_MS, js_linger_end, rq);
        js_fetch_orphaned(ws, rq);
    } else if (!rq->lingering) {
        js_rq_stop_work(rq);
    }
    js_rq_unref(rq);
}

/* ------------------------------------------------------------------ */
/* filter hooks                                                        */

static int js_filter_request(helios_ctx *c)
{
    js_worker *ws = c->wstate;
    if (ws->broken)
        return js_unavailable(c);
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
    int status = js_api->resp_status(c->req), rc = HELIOS_CONTINUE;
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
        js_api->log(HELIOS_LOG_ERROR, JS_NAME, "%s: %s in onResponse (%s)", ws->cfg->script,
                    cpu ? "cpu_limit exceeded" : (text ? text : "exception"), desc);
        free(text);
        JS_FreeValue(ctx, e);
        rc = HELIOS_ERROR;
    } else {
        int ns;
        if (JS_ToInt32(ctx, &ns, ret) == 0 && ns != status) {
            if (ns >= 200 && ns <= 599)
                js_api->resp_set_status(c->req, ns);
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

/* `heliosd compile|build|serve|exec` (ABI 1.2 command table) */
static const helios_command js_commands[] = {
    {"serve", "serve a JavaScript file's fetch handler, no YAML needed (serve --help)",
     js_serve_command},
    {"exec", "run a JavaScript file once, with fetch() and timers, and exit", js_exec_command},
    {"compile", "compile a js module script to QuickJS bytecode (.qjsbc)", js_compile_command},
    {"build", "the same as compile", js_compile_command},
    {NULL, NULL, NULL},
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
    .commands = js_commands,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    js_api = host;
    js_tok_class_init();
    js_crypto_class_init();
    return &js_module;
}
