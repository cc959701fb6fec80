/*
 * admin_routes.c - the admin API's endpoints.
 *
 * Every endpoint drives heliosd through the host API only. 404 / 409 / 400
 * are decided by looking at the running state first (ctl_backends_walk),
 * not by parsing the error strings of ctl_* calls; a ctl_* failure after
 * those checks is reported with its message.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strcasestr */
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include <helios/util/exports.h>

#include "admin_api.h"

#define AA_UPSTREAM_NAME_MAX 256
#define AA_RELOAD_ERR_MAX 16384

static const char *breaker_name(int state)
{
    switch (state) {
    case HELIOS_BREAKER_OPEN:
        return "open";
    case HELIOS_BREAKER_HALF_OPEN:
        return "half_open";
    default:
        return "closed";
    }
}

/* ---- reading the running state ---- */

static json_t *backend_json(const helios_backend *b)
{
    return json_pack("{s:s,s:s,s:I,s:b,s:b,s:b,s:s,s:I,s:I,s:I,s:I}", "name",
                     aa_api->backend_name(b), "address", aa_api->backend_address(b), "weight",
                     (json_int_t)aa_api->backend_weight(b), "healthy", aa_api->backend_healthy(b),
                     "draining", aa_api->backend_draining(b), "usable", aa_api->backend_usable(b),
                     "breaker", breaker_name(aa_api->backend_breaker(b)), "inflight",
                     (json_int_t)aa_api->backend_inflight(b), "requests",
                     (json_int_t)aa_api->backend_requests(b), "failures",
                     (json_int_t)aa_api->backend_failures(b), "retries",
                     (json_int_t)aa_api->backend_retries(b));
}

static void collect_backend(void *arg, const helios_backend *b)
{
    json_t *arr = arg, *j = backend_json(b);
    if (j)
        json_array_append_new(arr, j);
}

/* The backends of UPSTREAM as a JSON array, or NULL when unknown. */
static json_t *backends_of(const char *upstream)
{
    json_t *arr = json_array();
    if (arr && aa_api->ctl_backends_walk(upstream, collect_backend, arr) < 0) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

typedef struct find_ctx {
    const char *name;
    json_t *found; /* the backend's JSON when found */
} find_ctx;

static void find_backend(void *arg, const helios_backend *b)
{
    find_ctx *f = arg;
    if (f->found == NULL && strcmp(aa_api->backend_name(b), f->name) == 0)
        f->found = backend_json(b);
}

/* -1: no such upstream; 0: no such backend; 1: found (*OUT gets its JSON
 * when OUT is given). */
static int lookup_backend(const char *upstream, const char *name, json_t **out)
{
    find_ctx f = {name, NULL};
    if (aa_api->ctl_backends_walk(upstream, find_backend, &f) < 0)
        return -1;
    int found = f.found != NULL;
    if (out)
        *out = f.found;
    else
        json_decref(f.found);
    return found;
}

static int need_backend(aa_req *q, const char *upstream, const char *name)
{
    int st = lookup_backend(upstream, name, NULL);
    if (st < 0)
        return aa_fail(q, 404, "no upstream named '%s'", upstream);
    if (st == 0)
        return aa_fail(q, 404, "upstream '%s' has no backend named '%s'", upstream, name);
    return 0;
}

/* Calls FN(ARG, NAME) for every upstream of the running generation. */
static void each_upstream(void (*fn)(void *arg, const char *name), void *arg)
{
    size_t n = aa_api->ctl_upstreams_count();
    for (size_t i = 0; i < n; i++) {
        char name[AA_UPSTREAM_NAME_MAX];
        if (aa_api->ctl_upstream_name(i, name, sizeof(name)) == 0)
            fn(arg, name);
    }
}

/* ---- body fields ---- */

static int body_object(aa_req *q)
{
    if (!json_is_object(q->body))
        return aa_fail(q, 400, "the body must be a JSON object");
    return 0;
}

/* A required non-empty string field; NULL (and a 400 reply) otherwise. */
static const char *str_field(aa_req *q, const char *key)
{
    json_t *v = json_object_get(q->body, key);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 255 ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        aa_fail(q, 400, "'%s' must be a string of 1 to 255 characters", key);
        return NULL;
    }
    return json_string_value(v);
}

/* Weight: an integer 1..10000; DEF when absent and DEF > 0. */
static int weight_field(aa_req *q, long long def, uint32_t *out)
{
    /* set on every path: gcc -O3 cannot see that aa_fail never returns 0 */
    *out = 0;
    json_t *v = json_object_get(q->body, "weight");
    if (v == NULL && def > 0) {
        *out = (uint32_t)def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 10000)
        return aa_fail(q, 400, "'weight' must be an integer from 1 to 10000");
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

/* The upstream a body names; when it names none, admin_api's
 * default_upstream, else the only upstream there is (the seed product's
 * calls carry no upstream). NULL with a 400/404 reply otherwise. */
static const char *upstream_field(aa_req *q)
{
    if (json_object_get(q->body, "upstream") != NULL)
        return str_field(q, "upstream");
    const char *def = q->cfg->default_upstream;
    if (def != NULL) {
        if (aa_api->ctl_balancer_name(def) == NULL) {
            aa_fail(q, 404, "admin_api default_upstream '%s' is not an upstream of the running "
                            "configuration; name one in 'upstream'",
                    def);
            return NULL;
        }
        snprintf(q->upstream, sizeof(q->upstream), "%s", def);
        return q->upstream;
    }
    size_t n = aa_api->ctl_upstreams_count();
    if (n == 1 && aa_api->ctl_upstream_name(0, q->upstream, sizeof(q->upstream)) == 0)
        return q->upstream;
    aa_fail(q, 400, "'upstream' is required: heliosd runs %zu upstreams (set admin_api "
                    "default_upstream to name one for calls without it)",
            n);
    return NULL;
}

/* A backend address: HOST:PORT, or http://HOST:PORT as the seed product
 * sends (a trailing "/" allowed). NULL with a 400 reply otherwise. */
static const char *address_field(aa_req *q)
{
    const char *a = str_field(q, "address");
    if (a == NULL)
        return NULL;
    if (strncasecmp(a, "https://", 8) == 0) {
        aa_fail(q, 400, "'address': heliosd speaks TLS to the backends of an upstream with "
                        "tls: in the configuration; give HOST:PORT, not https://");
        return NULL;
    }
    if (strncasecmp(a, "http://", 7) == 0)
        a += 7;
    size_t n = strlen(a);
    if (n > 0 && a[n - 1] == '/')
        n--;
    if (n == 0 || memchr(a, '/', n) || memchr(a, '?', n) || memchr(a, '#', n) ||
        memchr(a, '@', n)) {
        aa_fail(q, 400, "'address' must be HOST:PORT or http://HOST:PORT (no path, query or "
                        "user), got '%s'",
                json_string_value(json_object_get(q->body, "address")));
        return NULL;
    }
    snprintf(q->address, sizeof(q->address), "%.*s", (int)n, a);
    return q->address;
}

/* ---- GET /v1/health ---- */

static int ep_health(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    helios_core_stats st = {.size = sizeof(st)};
    aa_api->core_stats(&st);
    long long up = (long long)time(NULL) - (long long)st.start_time;
    return aa_ok(q, 200,
                 json_pack("{s:s,s:I,s:s,s:I,s:I}", "status", "ok", "generation",
                           (json_int_t)aa_api->generation(), "version",
                           st.version ? st.version : "", "uptime_s", (json_int_t)(up > 0 ? up : 0),
                           "workers", (json_int_t)st.workers));
}

/* ---- GET /v1/backends ---- */

typedef struct list_ctx {
    json_t *arr;
    const char *only;
    int matched;
} list_ctx;

static void list_upstream(void *arg, const char *name)
{
    list_ctx *l = arg;
    if (l->only && strcmp(l->only, name) != 0)
        return;
    json_t *bs = backends_of(name);
    if (bs == NULL)
        return; /* gone by a reload meanwhile */
    const char *bal = aa_api->ctl_balancer_name(name);
    json_t *u = json_pack("{s:s,s:s,s:o}", "name", name, "balancer", bal ? bal : "", "backends", bs);
    if (u) {
        json_array_append_new(l->arr, u);
        l->matched = 1;
    }
}

static int ep_backends_list(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    list_ctx l = {json_array(), NULL, 0};
    l.only = MHD_lookup_connection_value(q->conn, MHD_GET_ARGUMENT_KIND, "upstream");
    if (l.arr == NULL)
        return aa_fail(q, 500, "out of memory");
    each_upstream(list_upstream, &l);
    if (l.only && !l.matched) {
        json_decref(l.arr);
        return aa_fail(q, 404, "no upstream named '%s'", l.only);
    }
    return aa_ok(q, 200, json_pack("{s:I,s:o}", "generation", (json_int_t)aa_api->generation(),
                                   "upstreams", l.arr));
}

/* ---- POST /v1/backends, /v1/backends/add ---- */

static int ep_backend_add(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    if (body_object(q))
        return q->status;
    const char *up = upstream_field(q), *name = up ? str_field(q, "name") : NULL,
               *addr = name ? address_field(q) : NULL;
    uint32_t weight;
    if (addr == NULL || weight_field(q, 1, &weight))
        return q->status;
    int st = lookup_backend(up, name, NULL);
    if (st < 0)
        return aa_fail(q, 404, "no upstream named '%s'", up);
    if (st > 0)
        return aa_fail(q, 409, "upstream '%s' already has a backend named '%s'", up, name);
    char err[512] = "";
    if (aa_api->ctl_backend_add(up, name, addr, weight, err, sizeof(err)) != 0) {
        st = lookup_backend(up, name, NULL);
        if (st < 0)
            return aa_fail(q, 404, "no upstream named '%s'", up);
        return aa_fail(q, st > 0 ? 409 : 400, "%s", err);
    }
    json_t *b = NULL;
    lookup_backend(up, name, &b);
    return aa_ok(q, 201, json_pack("{s:s,s:o}", "upstream", up, "backend",
                                   b ? b : json_pack("{s:s,s:s,s:I}", "name", name, "address",
                                                     addr, "weight", (json_int_t)weight)));
}

/* ---- removal ---- */

static int remove_backend(aa_req *q, const char *up, const char *name)
{
    json_t *b = NULL;
    int st = lookup_backend(up, name, &b);
    if (st < 0)
        return aa_fail(q, 404, "no upstream named '%s'", up);
    if (st == 0)
        return aa_fail(q, 404, "upstream '%s' has no backend named '%s'", up, name);
    char err[512] = "";
    if (aa_api->ctl_backend_remove(up, name, err, sizeof(err)) != 0) {
        json_decref(b);
        return aa_fail(q, 409, "%s", err);
    }
    return aa_ok(q, 200, json_pack("{s:s,s:o}", "upstream", up, "removed", b));
}

static int ep_backend_delete(aa_req *q, const char *up, const char *name)
{
    return remove_backend(q, up, name);
}

static int ep_backend_remove_body(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    if (body_object(q))
        return q->status;
    const char *up = upstream_field(q), *name = up ? str_field(q, "name") : NULL;
    if (name == NULL)
        return q->status;
    return remove_backend(q, up, name);
}

/* ---- PATCH /v1/backends/{u}/{n} ---- */

static int reply_backend(aa_req *q, const char *up, const char *name)
{
    json_t *b = NULL;
    lookup_backend(up, name, &b);
    if (b == NULL)
        return aa_fail(q, 404, "upstream '%s' has no backend named '%s'", up, name);
    return aa_ok(q, 200, json_pack("{s:s,s:o}", "upstream", up, "backend", b));
}

static int ep_backend_patch(aa_req *q, const char *up, const char *name)
{
    uint32_t weight;
    if (body_object(q) || weight_field(q, 0, &weight))
        return q->status;
    if (need_backend(q, up, name))
        return q->status;
    char err[512] = "";
    if (aa_api->ctl_backend_weight(up, name, weight, err, sizeof(err)) != 0)
        return aa_fail(q, 409, "%s", err);
    return reply_backend(q, up, name);
}

/* ---- POST .../drain, .../undrain ---- */

static int drain(aa_req *q, const char *up, const char *name, int on)
{
    if (need_backend(q, up, name))
        return q->status;
    char err[512] = "";
    if (aa_api->ctl_backend_drain(up, name, on, err, sizeof(err)) != 0)
        return aa_fail(q, 409, "%s", err);
    return reply_backend(q, up, name);
}

static int ep_backend_drain(aa_req *q, const char *up, const char *name)
{
    int on = 1;
    if (q->body != NULL) {
        json_t *d;
        if (!json_is_object(q->body) ||
            ((d = json_object_get(q->body, "drain")) != NULL && !json_is_boolean(d)))
            return aa_fail(q, 400, "the body must be empty or {\"drain\": true|false}");
        if (d)
            on = json_is_true(d);
    }
    return drain(q, up, name, on);
}

static int ep_backend_undrain(aa_req *q, const char *up, const char *name)
{
    return drain(q, up, name, 0);
}

/* ---- POST /v1/strategy ---- */

static int module_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return 0;
    return 1;
}

static int ep_strategy(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    if (body_object(q))
        return q->status;
    const char *up = upstream_field(q), *strat = up ? str_field(q, "strategy") : NULL;
    if (strat == NULL)
        return q->status;
    if (!module_name_ok(strat))
        return aa_fail(q, 400, "'strategy' must be a balancer module name ([a-z0-9_]+)");
    if (aa_api->ctl_balancer_name(up) == NULL)
        return aa_fail(q, 404, "no upstream named '%s'", up);
    char err[512] = "";
    if (aa_api->ctl_balancer_set(up, strat, err, sizeof(err)) != 0) {
        if (aa_api->ctl_balancer_name(up) == NULL)
            return aa_fail(q, 404, "no upstream named '%s'", up);
        return aa_fail(q, 400, "%s", err);
    }
    const char *now = aa_api->ctl_balancer_name(up);
    return aa_ok(q, 200, json_pack("{s:s,s:s}", "upstream", up, "strategy", now ? now : strat));
}

/* ---- GET /v1/metrics ---- */

typedef struct totals {
    json_int_t backends, usable, inflight, requests, failures, retries;
} totals;

static void add_totals(void *arg, const helios_backend *b)
{
    totals *t = arg;
    t->backends++;
    t->usable += aa_api->backend_usable(b) ? 1 : 0;
    t->inflight += aa_api->backend_inflight(b);
    t->requests += (json_int_t)aa_api->backend_requests(b);
    t->failures += (json_int_t)aa_api->backend_failures(b);
    t->retries += (json_int_t)aa_api->backend_retries(b);
}

static void metrics_upstream(void *arg, const char *name)
{
    json_t *arr = arg;
    totals t = {0};
    if (aa_api->ctl_backends_walk(name, add_totals, &t) < 0)
        return;
    json_array_append_new(arr, json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I}", "name", name, "backends",
                                         t.backends, "usable_backends", t.usable, "inflight",
                                         t.inflight, "requests", t.requests, "failures",
                                         t.failures, "retries", t.retries));
}

static int ep_metrics_json(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    helios_core_stats st = {.size = sizeof(st)};
    aa_api->core_stats(&st);
    json_t *ups = json_array();
    if (ups)
        each_upstream(metrics_upstream, ups);
    json_t *core = json_pack(
        "{s:I,s:I,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "generation",
        (json_int_t)st.generation, "workers", (json_int_t)st.workers, "version",
        st.version ? st.version : "", "start_time", (json_int_t)st.start_time, "reloads",
        (json_int_t)st.reloads, "reload_failures", (json_int_t)st.reload_failures,
        "connections_accepted", (json_int_t)st.connections_accepted, "connections_active",
        (json_int_t)st.connections_active, "connections_refused", (json_int_t)st.connections_refused,
        "requests", (json_int_t)st.requests, "requests_active", (json_int_t)st.requests_active,
        "bytes_in", (json_int_t)st.bytes_in, "bytes_out", (json_int_t)st.bytes_out);
    if (ups == NULL || core == NULL) {
        json_decref(ups);
        json_decref(core);
        return aa_fail(q, 500, "out of memory");
    }
    return aa_ok(q, 200, json_pack("{s:o,s:o}", "core", core, "upstreams", ups));
}

/* ---- GET /v1/circuit-breakers ---- */

static void breaker_backend(void *arg, const helios_backend *b)
{
    json_array_append_new(
        arg, json_pack("{s:s,s:s,s:{s:I,s:I,s:I}}", "name", aa_api->backend_name(b), "state",
                       breaker_name(aa_api->backend_breaker(b)), "transitions", "closed",
                       (json_int_t)aa_api->backend_breaker_transitions(b, HELIOS_BREAKER_CLOSED),
                       "open",
                       (json_int_t)aa_api->backend_breaker_transitions(b, HELIOS_BREAKER_OPEN),
                       "half_open",
                       (json_int_t)aa_api->backend_breaker_transitions(b, HELIOS_BREAKER_HALF_OPEN)));
}

static void breaker_upstream(void *arg, const char *name)
{
    json_t *bs = json_array();
    if (bs == NULL || aa_api->ctl_backends_walk(name, breaker_backend, bs) < 0) {
        json_decref(bs);
        return;
    }
    json_array_append_new(arg, json_pack("{s:s,s:o}", "name", name, "backends", bs));
}

static int ep_breakers(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    json_t *ups = json_array();
    if (ups == NULL)
        return aa_fail(q, 500, "out of memory");
    each_upstream(breaker_upstream, ups);
    return aa_ok(q, 200, json_pack("{s:o}", "upstreams", ups));
}

/* ---- GET /v1/modules ---- */

static void collect_module(void *arg, const helios_module_info *m)
{
    static const struct {
        unsigned bit;
        const char *name;
    } kinds[] = {{HELIOS_KIND_FILTER, "filter"},   {HELIOS_KIND_HANDLER, "handler"},
                 {HELIOS_KIND_BALANCER, "balancer"}, {HELIOS_KIND_SERVICE, "service"},
                 {HELIOS_KIND_HEALTH, "health"}};
    json_t *k = json_array();
    for (size_t i = 0; k && i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (m->kinds & kinds[i].bit)
            json_array_append_new(k, json_string(kinds[i].name));
    char abi[32];
    snprintf(abi, sizeof(abi), "%u.%u", (unsigned)m->abi_major, (unsigned)m->abi_minor);
    json_array_append_new(arg, json_pack("{s:s,s:s,s:s,s:o*,s:I,s:s}", "name", m->name, "version",
                                         m->version ? m->version : "", "abi", abi, "kinds", k,
                                         "instances", (json_int_t)m->instances, "path",
                                         m->path ? m->path : ""));
}

static int ep_modules(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    json_t *arr = json_array();
    if (arr == NULL)
        return aa_fail(q, 500, "out of memory");
    aa_api->ctl_modules_walk(collect_module, arr);
    char abi[32];
    snprintf(abi, sizeof(abi), "%u.%u", (unsigned)aa_api->abi_major, (unsigned)aa_api->abi_minor);
    return aa_ok(q, 200, json_pack("{s:s,s:o}", "core_abi", abi, "modules", arr));
}

/* ---- persisted admin changes: GET /v1/state, DELETE /v1/state/... ---- */

static const helios_runtime_state_export *state_export(void)
{
    const helios_runtime_state_export *e = aa_api->export_get(HELIOS_EXPORT_RUNTIME_STATE);
    if (e == NULL || e->size < offsetof(helios_runtime_state_export, forget) + sizeof(e->forget) ||
        e->render == NULL || e->forget == NULL)
        return NULL;
    return e;
}

/* The core's persisted changes as JSON, or NULL. */
static json_t *state_json(void)
{
    const helios_runtime_state_export *e = state_export();
    char *text = NULL;
    size_t len = 0;
    if (e == NULL || e->render(e->ctx, &text, &len) != 0 || text == NULL) {
        free(text);
        return NULL;
    }
    json_t *j = json_loadb(text, len, 0, NULL);
    free(text);
    return j;
}

static int ep_state(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    json_t *j = state_json();
    if (j == NULL)
        return aa_fail(q, 503, "this heliosd offers no runtime state");
    return aa_ok(q, 200, j);
}

static int forget(aa_req *q, int what, const char *up, const char *backend)
{
    const helios_runtime_state_export *e = state_export();
    if (e == NULL)
        return aa_fail(q, 503, "this heliosd offers no runtime state");
    char err[512] = "";
    int rc = e->forget(e->ctx, what, up, backend, err, sizeof(err));
    if (rc > 0)
        return aa_fail(q, 404, "%s", err);
    if (rc < 0)
        return aa_fail(q, 409, "cannot put the configuration's value back: %s", err);
    json_t *j = state_json();
    return aa_ok(q, 200, json_pack("{s:o*}", "state", j));
}

static int ep_state_forget_all(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    return forget(q, HELIOS_STATE_ALL, NULL, NULL);
}

static int ep_state_forget_upstream(aa_req *q, const char *up, const char *a2)
{
    (void)a2;
    return forget(q, HELIOS_STATE_UPSTREAM, up, NULL);
}

static int ep_state_forget_strategy(aa_req *q, const char *up, const char *a2)
{
    (void)a2;
    return forget(q, HELIOS_STATE_STRATEGY, up, NULL);
}

static int ep_state_forget_backend(aa_req *q, const char *up, const char *name)
{
    return forget(q, HELIOS_STATE_BACKEND, up, name);
}

/* ---- the running view for GET /v1/config ---- */

typedef struct running_ctx {
    json_t *arr;
    json_t *state; /* upstreams map of the state, or NULL */
} running_ctx;

/* Marks B's JSON with where it came from: "admin" (added at runtime), or
 * "file" with the fields the admin API changed. */
static void mark_backend(json_t *b, json_t *entry)
{
    const char *change = json_string_value(json_object_get(entry, "change"));
    int applied = entry && json_is_null(json_object_get(entry, "conflict"));
    json_object_set_new(b, "source", json_string(applied && change && strcmp(change, "add") == 0
                                                     ? "admin"
                                                     : "file"));
    json_t *changed = json_array();
    if (applied && change && strcmp(change, "set") == 0) {
        if (json_object_get(entry, "weight"))
            json_array_append_new(changed, json_string("weight"));
        if (json_object_get(entry, "drain"))
            json_array_append_new(changed, json_string("drain"));
    }
    json_object_set_new(b, "admin_changed", changed);
}

static void running_upstream(void *arg, const char *name)
{
    running_ctx *r = arg;
    json_t *bs = backends_of(name), *su = json_object_get(r->state, name);
    if (bs == NULL)
        return;
    json_t *entries = json_object_get(su, "backends");
    size_t i;
    json_t *b;
    json_array_foreach(bs, i, b)
    {
        mark_backend(b, json_object_get(entries, json_string_value(json_object_get(b, "name"))));
    }
    const char *bal = aa_api->ctl_balancer_name(name);
    int admin_bal = json_is_string(json_object_get(su, "strategy")) &&
                    json_is_null(json_object_get(su, "strategy_conflict"));
    json_array_append_new(r->arr, json_pack("{s:s,s:s,s:s,s:o}", "name", name, "balancer",
                                            bal ? bal : "", "balancer_source",
                                            admin_bal ? "admin" : "file", "backends", bs));
}

/* ---- GET /v1/config ---- */

static int secret_key(const char *key)
{
    static const char *const parts[] = {"secret", "password", "passwd", "token", "credential"};
    static const char *const exact[] = {"keys", "api_keys", "private_key"};
    if (key == NULL)
        return 0;
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        if (strcasestr(key, parts[i]))
            return 1;
    for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
        if (strcasecmp(key, exact[i]) == 0)
            return 1;
    return 0;
}

json_t *aa_conf_to_json(const helios_conf *n, const char *key)
{
    if (secret_key(key))
        return json_string("[redacted]");
    switch (aa_api->conf_kind(n)) {
    case HELIOS_CONF_SCALAR:
        return json_string(aa_api->conf_scalar(n));
    case HELIOS_CONF_SEQ: {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < aa_api->conf_len(n); i++)
            json_array_append_new(arr, aa_conf_to_json(aa_api->conf_at(n, i), NULL));
        return arr;
    }
    case HELIOS_CONF_MAP: {
        json_t *obj = json_object();
        for (size_t i = 0; obj && i < aa_api->conf_len(n); i++) {
            const char *k = aa_api->conf_key_at(n, i);
            json_object_set_new(obj, k, aa_conf_to_json(aa_api->conf_at(n, i), k));
        }
        return obj;
    }
    default:
        return json_null();
    }
}

static void config_root(void *arg, const helios_conf *root)
{
    *(json_t **)arg = aa_conf_to_json(root, NULL);
}

static int ep_config(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    json_t *conf = NULL;
    if (aa_api->ctl_config_walk(config_root, &conf) != 0 || conf == NULL) {
        json_decref(conf);
        return aa_fail(q, 503, "no running configuration");
    }
    json_t *state = state_json();
    running_ctx r = {json_array(), json_object_get(state, "upstreams")};
    if (r.arr)
        each_upstream(running_upstream, &r);
    return aa_ok(q, 200, json_pack("{s:I,s:o,s:{s:o*},s:o*}", "generation",
                                   (json_int_t)aa_api->generation(), "config", conf, "running",
                                   "upstreams", r.arr, "state", state));
}

/* ---- POST /v1/reload ---- */

static json_t *lines_json(const char *text)
{
    json_t *arr = json_array();
    const char *p = text;
    while (arr && p && *p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n)
            json_array_append_new(arr, json_stringn(p, n));
        p = nl ? nl + 1 : NULL;
    }
    return arr;
}

static int ep_reload(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    aa_config *c = q->cfg;
    uint32_t before = aa_api->generation(), gen = 0;
    char *err = calloc(1, AA_RELOAD_ERR_MAX);
    if (err == NULL)
        return aa_fail(q, 500, "out of memory");
    /* After a successful reload this instance is stopped by the main
     * thread; a second reload started from here after that point would
     * wait for the main thread while it waits for us. So: one reload at
     * a time per instance, and none once this instance is on its way out. */
    pthread_mutex_lock(&c->reload_lock);
    int rc;
    if (atomic_load(&c->stopping)) {
        rc = 1;
    } else {
        rc = aa_api->ctl_reload(&gen, err, AA_RELOAD_ERR_MAX);
        /* gen == c->gen: asked of this instance while the reload that
         * started it still starts the other services, and answered with
         * that reload; but it read the files before this request came (the
         * client may have just got the previous reload's answer and changed
         * them). Once that reload is over, reload for real (bounded). */
        struct timespec step = {0, 5 * 1000 * 1000};
        for (int i = 0; rc == 0 && gen == c->gen && i < 400; i++) {
            nanosleep(&step, NULL);
            rc = aa_api->ctl_reload(&gen, err, AA_RELOAD_ERR_MAX);
        }
        if (rc == 0 && gen != c->gen)
            atomic_store(&c->stopping, 1);
    }
    pthread_mutex_unlock(&c->reload_lock);
    /* the new generation's instance takes the socket over: from now on a
     * new connection waits for it instead of reaching this instance */
    if (rc == 0 && gen != c->gen)
        aa_http_quiesce(c);
    if (rc == 1)
        aa_fail(q, 503, "a reload just replaced this admin listener; retry on a new "
                        "connection");
    else if (rc == 0)
        aa_ok(q, 200, json_pack("{s:I,s:I}", "generation", (json_int_t)gen, "previous",
                                (json_int_t)before));
    else if (strcmp(err, "heliosd is stopping") == 0)
        aa_fail(q, 503, "%s", err);
    else {
        json_t *e = json_pack("{s:{s:i,s:s,s:o,s:I}}", "error", "status", 422, "message",
                              "reload failed: the running configuration stays", "errors",
                              lines_json(err), "generation", (json_int_t)aa_api->generation());
        aa_ok(q, 422, e);
    }
    free(err);
    return q->status;
}

/* ---- GET /metrics ---- */

static int ep_prometheus(aa_req *q, const char *a1, const char *a2)
{
    (void)a1;
    (void)a2;
    const helios_prometheus_export *p = aa_api->export_get(HELIOS_EXPORT_PROMETHEUS);
    if (p == NULL || p->size < offsetof(helios_prometheus_export, render) + sizeof(p->render) ||
        p->render == NULL)
        return aa_fail(q, 404, "no metrics module serves /metrics on this listener "
                               "(metrics module with `listen: admin`)");
    char *out = NULL;
    size_t len = 0;
    if (p->render(p->ctx, &out, &len) != 0 || out == NULL) {
        free(out);
        return aa_fail(q, 500, "the metrics module could not render");
    }
    q->text = out;
    q->textlen = len;
    q->content_type = "text/plain; version=0.0.4; charset=utf-8";
    q->status = 200;
    return 200;
}

/* ---- the route table ---- */

enum {
    P_FIXED,
    P_UPSTREAM_BACKEND,
    P_UPSTREAM_BACKEND_ACTION,
    P_STATE_UPSTREAM,  /* /v1/state/U */
    P_STATE_STRATEGY,  /* /v1/state/U/strategy */
    P_STATE_BACKEND,   /* /v1/state/U/backends/N */
};

typedef struct aa_route_def {
    const char *method;
    const char *path; /* fixed path, or the action for P_UPSTREAM_BACKEND_ACTION */
    int pattern;
    aa_handler fn;
    int write, is_public, is_metrics;
} aa_route_def;

static const aa_route_def routes[] = {
    {"GET", "/v1/health", P_FIXED, ep_health, 0, 1, 0},
    {"GET", "/v1/backends", P_FIXED, ep_backends_list, 0, 0, 0},
    {"POST", "/v1/backends", P_FIXED, ep_backend_add, 1, 0, 0},
    {"POST", "/v1/backends/add", P_FIXED, ep_backend_add, 1, 0, 0},
    {"POST", "/v1/backends/remove", P_FIXED, ep_backend_remove_body, 1, 0, 0},
    {"DELETE", NULL, P_UPSTREAM_BACKEND, ep_backend_delete, 1, 0, 0},
    {"PATCH", NULL, P_UPSTREAM_BACKEND, ep_backend_patch, 1, 0, 0},
    {"POST", "drain", P_UPSTREAM_BACKEND_ACTION, ep_backend_drain, 1, 0, 0},
    {"POST", "undrain", P_UPSTREAM_BACKEND_ACTION, ep_backend_undrain, 1, 0, 0},
    {"POST", "/v1/strategy", P_FIXED, ep_strategy, 1, 0, 0},
    {"GET", "/v1/metrics", P_FIXED, ep_metrics_json, 0, 0, 0},
    {"GET", "/v1/circuit-breakers", P_FIXED, ep_breakers, 0, 0, 0},
    {"GET", "/v1/modules", P_FIXED, ep_modules, 0, 0, 0},
    {"GET", "/v1/config", P_FIXED, ep_config, 0, 0, 0},
    {"GET", "/v1/state", P_FIXED, ep_state, 0, 0, 0},
    {"DELETE", "/v1/state", P_FIXED, ep_state_forget_all, 1, 0, 0},
    {"DELETE", NULL, P_STATE_UPSTREAM, ep_state_forget_upstream, 1, 0, 0},
    {"DELETE", NULL, P_STATE_STRATEGY, ep_state_forget_strategy, 1, 0, 0},
    {"DELETE", NULL, P_STATE_BACKEND, ep_state_forget_backend, 1, 0, 0},
    {"POST", "/v1/reload", P_FIXED, ep_reload, 1, 0, 0},
    {"GET", "/metrics", P_FIXED, ep_prometheus, 0, 0, 1},
};

/* Splits "/v1/backends/U/N[/ACTION]" into U, N and ACTION; the number of
 * segments after /v1/backends/ (2 or 3), or 0. */
static int split_backend_path(const char *path, aa_match *m, char *action, size_t alen)
{
    static const char prefix[] = "/v1/backends/";
    if (strncmp(path, prefix, sizeof(prefix) - 1) != 0)
        return 0;
    const char *seg[3];
    size_t len[3];
    int n = 0;
    const char *p = path + sizeof(prefix) - 1;
    while (n < 4) {
        const char *slash = strchr(p, '/');
        size_t l = slash ? (size_t)(slash - p) : strlen(p);
        if (l == 0 || n == 3)
            return 0;
        seg[n] = p;
        len[n++] = l;
        if (slash == NULL)
            break;
        p = slash + 1;
    }
    if (n < 2 || len[0] >= sizeof(m->a1) || len[1] >= sizeof(m->a2) ||
        (n == 3 && len[2] >= alen))
        return 0;
    memcpy(m->a1, seg[0], len[0]);
    m->a1[len[0]] = '\0';
    memcpy(m->a2, seg[1], len[1]);
    m->a2[len[1]] = '\0';
    if (n == 3) {
        memcpy(action, seg[2], len[2]);
        action[len[2]] = '\0';
    }
    return n;
}

/* Splits "/v1/state/U[/strategy | /backends/N]" into M's a1 (and a2);
 * the P_STATE_* pattern, or 0. */
static int split_state_path(const char *path, aa_match *m)
{
    static const char prefix[] = "/v1/state/";
    if (strncmp(path, prefix, sizeof(prefix) - 1) != 0)
        return 0;
    const char *u = path + sizeof(prefix) - 1, *slash = strchr(u, '/');
    size_t ulen = slash ? (size_t)(slash - u) : strlen(u);
    if (ulen == 0 || ulen >= sizeof(m->a1))
        return 0;
    memcpy(m->a1, u, ulen);
    m->a1[ulen] = '\0';
    if (slash == NULL)
        return P_STATE_UPSTREAM;
    if (strcmp(slash, "/strategy") == 0)
        return P_STATE_STRATEGY;
    static const char bk[] = "/backends/";
    const char *n = slash + sizeof(bk) - 1;
    if (strncmp(slash, bk, sizeof(bk) - 1) != 0 || *n == '\0' || strchr(n, '/') ||
        strlen(n) >= sizeof(m->a2))
        return 0;
    snprintf(m->a2, sizeof(m->a2), "%s", n);
    return P_STATE_BACKEND;
}

static int route_matches(const aa_route_def *r, const char *path, int nseg, const char *action,
                         int state)
{
    switch (r->pattern) {
    case P_FIXED:
        return strcmp(r->path, path) == 0;
    case P_UPSTREAM_BACKEND:
        return nseg == 2;
    case P_UPSTREAM_BACKEND_ACTION:
        return nseg == 3 && strcmp(r->path, action) == 0;
    default:
        return state == r->pattern;
    }
}

static void allow_add(char *allow, size_t size, const char *method)
{
    if (strstr(allow, method))
        return;
    size_t n = strlen(allow);
    snprintf(allow + n, size - n, "%s%s", n ? ", " : "", method);
    if (strcmp(method, "GET") == 0)
        allow_add(allow, size, "HEAD");
}

int aa_route(const char *method, const char *path, aa_match *m)
{
    char action[32] = "";
    memset(m, 0, sizeof(*m));
    char *allow = m->allow;
    int nseg = split_backend_path(path, m, action, sizeof(action));
    int state = nseg ? 0 : split_state_path(path, m);
    const char *meth = strcmp(method, "HEAD") == 0 ? "GET" : method;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        const aa_route_def *r = &routes[i];
        if (!route_matches(r, path, nseg, action, state))
            continue;
        allow_add(allow, sizeof(m->allow), r->method);
        if (m->fn == NULL && strcmp(r->method, meth) == 0) {
            m->fn = r->fn;
            m->write = r->write;
            m->is_public = r->is_public;
            m->is_metrics = r->is_metrics;
        }
    }
    return allow[0] ? 0 : -1;
}
