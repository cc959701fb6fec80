/*
 * host_api.c - the function table every module gets (helios/host.h).
 *
 * Thin adapters from the opaque ABI handles to core structures. Anything a
 * module passes in is validated here: modules are third-party code.
 */
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "runtime/control.h"
#include "runtime/runtime.h"
#include "http/conn.h"
#include "http/accesslog.h"
#include "base/log.h"
#include "config/module_loader.h"
#include "proxy/upstream.h"
#include "http/subreq.h"
#include "config/tls.h"

#define REQ(r) ((hx_req *)(r))
#define NODE(n) ((const hx_conf_node *)(n))

/* the attributes let the compiler check the forwarded format (-Wformat-nonliteral) */
static __attribute__((format(printf, 3, 4))) void api_log(int level, const char *module,
                                                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    hx_vlog(level, module, fmt, ap);
    va_end(ap);
}

/* ---- configuration ---- */

static int api_conf_kind(const helios_conf *n)
{
    if (n == NULL)
        return HELIOS_CONF_NULL;
    switch (NODE(n)->kind) {
    case HX_CONF_SCALAR: return HELIOS_CONF_SCALAR;
    case HX_CONF_MAP: return HELIOS_CONF_MAP;
    case HX_CONF_SEQ: return HELIOS_CONF_SEQ;
    default: return HELIOS_CONF_NULL;
    }
}

static const helios_conf *api_conf_get(const helios_conf *map, const char *key)
{
    return map ? (const helios_conf *)hx_conf_get(NODE(map), key) : NULL;
}

static size_t api_conf_len(const helios_conf *n)
{
    if (n == NULL)
        return 0;
    const hx_conf_node *c = NODE(n);
    return c->kind == HX_CONF_MAP || c->kind == HX_CONF_SEQ ? c->n : 0;
}

static const helios_conf *api_conf_at(const helios_conf *n, size_t i)
{
    if (n == NULL)
        return NULL;
    const hx_conf_node *c = NODE(n);
    if ((c->kind != HX_CONF_MAP && c->kind != HX_CONF_SEQ) || i >= c->n)
        return NULL;
    return (const helios_conf *)c->items[i];
}

static const char *api_conf_key_at(const helios_conf *map, size_t i)
{
    if (map == NULL)
        return NULL;
    const hx_conf_node *c = NODE(map);
    return c->kind == HX_CONF_MAP && i < c->n ? c->keys[i] : NULL;
}

static const char *api_conf_scalar(const helios_conf *n)
{
    return n && NODE(n)->kind == HX_CONF_SCALAR ? NODE(n)->scalar : NULL;
}

static __attribute__((format(printf, 2, 3))) void api_conf_error(const helios_conf *n,
                                                                 const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n == NULL)
        n = (const helios_conf *)hx_instance_current_node();
    if (n == NULL) {
        hx_error("module configuration: %s", msg);
        return;
    }
    hx_conf_error(NODE(n), "%s", msg);
}

static int api_conf_check_keys(const helios_conf *map, const char *const *allowed)
{
    return map ? hx_conf_check_keys(NODE(map), allowed) : 0;
}

static int api_conf_str(const helios_conf *m, const char *k, const char *def, const char **out)
{
    return hx_conf_str(NODE(m), k, def, out);
}

static int api_conf_int(const helios_conf *m, const char *k, long long def, long long min,
                        long long max, long long *out)
{
    return hx_conf_int(NODE(m), k, def, min, max, out);
}

static int api_conf_bool(const helios_conf *m, const char *k, int def, int *out)
{
    return hx_conf_bool(NODE(m), k, def, out);
}

static int api_conf_duration_ms(const helios_conf *m, const char *k, uint64_t def, uint64_t *out)
{
    return hx_conf_duration_ms(NODE(m), k, def, out);
}

static int api_conf_size(const helios_conf *m, const char *k, uint64_t def, uint64_t *out)
{
    return hx_conf_size(NODE(m), k, def, out);
}

static int api_conf_path(const helios_conf *n, const char *path, char *buf, size_t size)
{
    if (path == NULL || buf == NULL || size == 0)
        return -1;
    if (path[0] == '/' || n == NULL || NODE(n)->file == NULL) {
        return snprintf(buf, size, "%s", path) < (int)size ? 0 : -1;
    }
    const char *file = NODE(n)->file;
    const char *slash = strrchr(file, '/');
    int dl = slash ? (int)(slash - file) : 1;
    const char *dir = slash ? file : ".";
    return snprintf(buf, size, "%.*s/%s", dl, dir, path) < (int)size ? 0 : -1;
}

/* ---- request ---- */

static helios_buf api_req_method(helios_request *r) { return REQ(r)->method; }
static helios_buf api_req_target(helios_request *r) { return REQ(r)->target; }
static helios_buf api_req_path(helios_request *r) { return REQ(r)->path; }
static helios_buf api_req_query(helios_request *r) { return REQ(r)->query; }
static helios_buf api_req_host(helios_request *r) { return REQ(r)->host; }

static const char *api_req_protocol(helios_request *r)
{
    return REQ(r)->http_major == 2 ? "HTTP/2" : REQ(r)->http_minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
}

static const struct sockaddr *api_req_peer(helios_request *r)
{
    hx_req *q = REQ(r);
    return q->conn ? (const struct sockaddr *)&q->conn->peer : (const struct sockaddr *)&q->client;
}

static const struct sockaddr *api_req_client(helios_request *r)
{
    return (const struct sockaddr *)&REQ(r)->client;
}

static const char *api_req_route(helios_request *r)
{
    const hx_route *rt = REQ(r)->route;
    return rt && rt->name ? rt->name : "";
}

static helios_buf api_req_header(helios_request *r, const char *name)
{
    return hx_hdrs_get(&REQ(r)->hdrs, name);
}

static size_t api_req_header_count(helios_request *r) { return REQ(r)->hdrs.n; }

static int api_req_header_at(helios_request *r, size_t i, helios_buf *name, helios_buf *value)
{
    const hx_hdrs *h = &REQ(r)->hdrs;
    if (i >= h->n)
        return -1;
    if (name)
        *name = h->v[i].name;
    if (value)
        *value = h->v[i].value;
    return 0;
}

static int checked(const char *name, const char *value)
{
    if (name == NULL || !hx_hdr_name_valid(name, strlen(name)))
        return -1;
    if (value && !hx_hdr_value_valid(value, strlen(value)))
        return -1;
    return 0;
}

static int hdr_set(hx_req *r, hx_hdrs *h, const char *name, const char *value, int replace)
{
    if (checked(name, value) != 0 || value == NULL)
        return -1;
    if (replace)
        hx_hdrs_remove(h, name);
    return hx_hdrs_add(&r->arena, h, name, strlen(name), value, strlen(value));
}

static int api_req_header_set(helios_request *r, const char *n, const char *v)
{
    if (REQ(r)->up)
        return -1; /* already on its way upstream */
    return hdr_set(REQ(r), &REQ(r)->hdrs, n, v, 1);
}

static int api_req_header_add(helios_request *r, const char *n, const char *v)
{
    if (REQ(r)->up)
        return -1;
    return hdr_set(REQ(r), &REQ(r)->hdrs, n, v, 0);
}

static int api_req_header_remove(helios_request *r, const char *n)
{
    if (REQ(r)->up || checked(n, NULL) != 0)
        return -1;
    return hx_hdrs_remove(&REQ(r)->hdrs, n);
}

/* ---- response ---- */

static int api_resp_status(helios_request *r) { return REQ(r)->status; }

static int api_resp_set_status(helios_request *r, int status)
{
    if (REQ(r)->head_sent || status < 100 || status > 599)
        return -1;
    REQ(r)->status = status;
    return 0;
}

static helios_buf api_resp_header(helios_request *r, const char *name)
{
    return hx_hdrs_get(&REQ(r)->rhdrs, name);
}

static int api_resp_header_set(helios_request *r, const char *n, const char *v)
{
    return REQ(r)->head_sent ? -1 : hdr_set(REQ(r), &REQ(r)->rhdrs, n, v, 1);
}

static int api_resp_header_add(helios_request *r, const char *n, const char *v)
{
    return REQ(r)->head_sent ? -1 : hdr_set(REQ(r), &REQ(r)->rhdrs, n, v, 0);
}

static int api_resp_header_remove(helios_request *r, const char *n)
{
    if (REQ(r)->head_sent || checked(n, NULL) != 0)
        return -1;
    return hx_hdrs_remove(&REQ(r)->rhdrs, n);
}

static int api_respond(helios_request *r, int status, const char *ctype, const void *body,
                       size_t len)
{
    return hx_req_respond(REQ(r), status, ctype, body, len);
}

/* 1.3: a streamed response (request.c keeps the watermark) */
static int api_respond_begin(helios_request *r, int status, const char *ctype,
                             void (*on_drain)(void *arg), void *arg)
{
    return hx_resp_stream_begin(REQ(r), status, ctype, on_drain, arg);
}

static int api_respond_body(helios_request *r, const void *p, size_t len, int last)
{
    if (len && p == NULL)
        return -1;
    return hx_resp_stream_body(REQ(r), p, len, last);
}

static void api_respond_abort(helios_request *rq, const char *why)
{
    hx_req *r = REQ(rq);
    /* the access log reads the reason after the call: keep a copy */
    hx_resp_stream_abort(r, why ? hx_arena_strndup(&r->arena, why, strnlen(why, 200)) : NULL);
}

/* A prepared response: header list and body, built once per generation. */
struct helios_prepared {
    int status;
    size_t nheaders;
    hx_hdr *headers;
    char *body;
    size_t len;
    char cl[24];
};

static helios_prepared *api_prepared_new(int status, const char *const *headers,
                                         size_t nheaders, const void *body, size_t len,
                                         char *err, size_t errlen)
{
    if (status < 100 || status > 599) {
        snprintf(err, errlen, "status %d is not between 100 and 599", status);
        return NULL;
    }
    for (size_t i = 0; i < nheaders; i++) {
        const char *n = headers[2 * i], *v = headers[2 * i + 1];
        if (n == NULL || !hx_hdr_name_valid(n, strlen(n))) {
            snprintf(err, errlen, "invalid header name '%s'", n ? n : "(null)");
            return NULL;
        }
        if (v == NULL || !hx_hdr_value_valid(v, strlen(v))) {
            snprintf(err, errlen, "header '%s': value contains CR, LF or control bytes", n);
            return NULL;
        }
    }
    helios_prepared *p = calloc(1, sizeof(*p));
    if (p == NULL)
        goto oom;
    p->status = status;
    p->nheaders = nheaders;
    p->headers = calloc(nheaders + 1, sizeof(hx_hdr));
    p->body = malloc(len + 1);
    if (p->headers == NULL || p->body == NULL)
        goto oom;
    for (size_t i = 0; i < nheaders; i++) {
        p->headers[i].name.ptr = strdup(headers[2 * i]);
        p->headers[i].value.ptr = strdup(headers[2 * i + 1]);
        if (!p->headers[i].name.ptr || !p->headers[i].value.ptr)
            goto oom;
        p->headers[i].name.len = strlen(headers[2 * i]);
        p->headers[i].value.len = strlen(headers[2 * i + 1]);
    }
    if (len)
        memcpy(p->body, body, len);
    p->len = len;
    snprintf(p->cl, sizeof(p->cl), "%zu", len);
    return p;
oom:
    snprintf(err, errlen, "out of memory");
    if (p) {
        for (size_t i = 0; p->headers && i < nheaders; i++) {
            free((char *)p->headers[i].name.ptr);
            free((char *)p->headers[i].value.ptr);
        }
        free(p->headers);
        free(p->body);
        free(p);
    }
    return NULL;
}

static void api_prepared_free(helios_prepared *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->nheaders; i++) {
        free((char *)p->headers[i].name.ptr);
        free((char *)p->headers[i].value.ptr);
    }
    free(p->headers);
    free(p->body);
    free(p);
}

static int api_respond_prepared(helios_request *rq, const helios_prepared *p)
{
    hx_req *r = REQ(rq);
    if (r->head_sent || p == NULL)
        return -1;
    /* headers point into the prepared object: it outlives the request
     * because the generation holding it does */
    for (size_t i = 0; i < p->nheaders; i++) {
        if (r->rhdrs.n == r->rhdrs.cap) {
            size_t cap = r->rhdrs.cap ? r->rhdrs.cap * 2 : 16;
            hx_hdr *v = hx_arena_alloc(&r->arena, cap * sizeof(*v));
            if (v == NULL)
                return -1;
            if (r->rhdrs.n)
                memcpy(v, r->rhdrs.v, r->rhdrs.n * sizeof(*v));
            r->rhdrs.v = v;
            r->rhdrs.cap = cap;
        }
        r->rhdrs.v[r->rhdrs.n++] = p->headers[i];
    }
    return hx_req_respond(r, p->status, NULL, p->body, p->len);
}

/* ---- memory and flow ---- */

static void *api_req_alloc(helios_request *r, size_t size)
{
    if (size > (1u << 20))
        return NULL;
    void *p = hx_arena_alloc(&REQ(r)->arena, size);
    if (p)
        memset(p, 0, size);
    return p;
}

static void api_resume(helios_request *r, int status) { hx_req_resume(REQ(r), status); }

static int api_post(helios_worker *w, void (*fn)(void *), void *arg)
{
    return w && fn ? hx_worker_post((hx_worker *)w, fn, arg) : -1;
}

struct helios_timer {
    ev_timer t;
    hx_worker *w;
    void (*fn)(void *);
    void *arg;
};

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    helios_timer *ht = t->data;
    void (*fn)(void *) = ht->fn;
    void *arg = ht->arg;
    free(ht);
    fn(arg);
}

static helios_timer *api_timer_add(helios_worker *w, uint64_t ms, void (*fn)(void *), void *arg)
{
    if (w == NULL || fn == NULL)
        return NULL;
    helios_timer *t = malloc(sizeof(*t));
    if (t == NULL)
        return NULL;
    t->w = (hx_worker *)w;
    t->fn = fn;
    t->arg = arg;
    ev_timer_init(&t->t, timer_cb, ms / 1000.0, 0.);
    t->t.data = t;
    ev_timer_start(t->w->loop, &t->t);
    return t;
}

static void api_timer_cancel(helios_timer *t)
{
    if (t == NULL)
        return;
    ev_timer_stop(t->w->loop, &t->t);
    free(t);
}

static helios_worker *api_req_worker(helios_request *r) { return (helios_worker *)REQ(r)->w; }
static unsigned api_worker_index(helios_worker *w) { return ((hx_worker *)w)->id; }
static unsigned api_worker_count(void) { return hx_srv.nworkers; }

static uint64_t api_now_ms(helios_worker *w)
{
    return (uint64_t)(ev_now(((hx_worker *)w)->loop) * 1000.0);
}

/* ---- backends ---- */

#define BS(s) ((const hx_backends *)(s))
#define BE(b) ((hx_backend *)(b))

static size_t api_backends_count(const helios_backends *s) { return s ? BS(s)->n : 0; }

static helios_backend *api_backends_at(const helios_backends *s, size_t i)
{
    return s && i < BS(s)->n ? (helios_backend *)BS(s)->v[i] : NULL;
}

static const char *api_backend_name(const helios_backend *b) { return BE(b)->name; }
static const char *api_backend_address(const helios_backend *b) { return BE(b)->address; }

static const struct sockaddr *api_backend_sockaddr(const helios_backend *b)
{
    return (const struct sockaddr *)&BE(b)->addr.ss;
}

static uint32_t api_backend_weight(const helios_backend *b)
{
    return atomic_load_explicit(&BE(b)->weight, memory_order_relaxed);
}

static int api_backend_usable(const helios_backend *b) { return hx_backend_usable(BE(b)); }

static uint32_t api_backend_inflight(const helios_backend *b)
{
    return atomic_load_explicit(&BE(b)->inflight, memory_order_relaxed);
}

static void api_backend_set_healthy(helios_backend *b, int healthy, const char *why)
{
    int old = atomic_exchange(&BE(b)->healthy, healthy ? 1 : 0);
    atomic_fetch_and(&BE(b)->carried, ~HX_CARRIED_HEALTH); /* a module decides now */
    if (old != (healthy ? 1 : 0))
        hx_warn("backend %s (%s) is now %s%s%s", BE(b)->name, BE(b)->address,
                healthy ? "healthy" : "unhealthy", why ? ": " : "", why ? why : "");
}

static int api_backend_healthy(const helios_backend *b)
{
    return atomic_load_explicit(&BE(b)->healthy, memory_order_relaxed);
}

static const char *const breaker_names[] = {"closed", "open", "half-open"};

static void api_backend_set_breaker(helios_backend *b, int state, uint32_t max_trials)
{
    if (state < HELIOS_BREAKER_CLOSED || state > HELIOS_BREAKER_HALF_OPEN)
        return;
    atomic_store(&BE(b)->breaker_max_trials, max_trials);
    int old = atomic_exchange(&BE(b)->breaker, state);
    atomic_fetch_and(&BE(b)->carried, ~HX_CARRIED_BREAKER);
    if (old != state) {
        atomic_fetch_add(&BE(b)->breaker_transitions[state], 1);
        hx_warn("backend %s (%s): circuit breaker %s -> %s", BE(b)->name, BE(b)->address,
                breaker_names[old], breaker_names[state]);
    }
}

static int api_backend_breaker(const helios_backend *b)
{
    return atomic_load_explicit(&BE(b)->breaker, memory_order_relaxed);
}

static uint64_t api_backend_breaker_transitions(const helios_backend *b, int state)
{
    if (state < HELIOS_BREAKER_CLOSED || state > HELIOS_BREAKER_HALF_OPEN)
        return 0;
    return atomic_load_explicit(&BE(b)->breaker_transitions[state], memory_order_relaxed);
}

static uint64_t api_backend_retries(const helios_backend *b)
{
    return atomic_load_explicit(&BE(b)->retries, memory_order_relaxed);
}

static unsigned api_req_attempts(helios_request *r) { return REQ(r)->attempts; }

static int api_req_stats(helios_request *rq, helios_req_stats *out)
{
    /* the 1.0 struct ends at protocol; later fields only if covered */
    if (out == NULL || out->size < offsetof(helios_req_stats, duration_us))
        return -1;
    helios_req_stats s;
    hx_req_stats_fill(REQ(rq), &s);
    uint32_t size = out->size < sizeof(s) ? out->size : (uint32_t)sizeof(s);
    memcpy((char *)out + sizeof(uint32_t), (char *)&s + sizeof(uint32_t), size - sizeof(uint32_t));
    return 0;
}

static void *api_worker_ev_loop(helios_worker *w) { return ((hx_worker *)w)->loop; }

static int api_backend_draining(const helios_backend *b)
{
    return atomic_load_explicit(&BE(b)->draining, memory_order_relaxed);
}

static uint64_t api_backend_requests(const helios_backend *b)
{
    return atomic_load_explicit(&BE(b)->requests, memory_order_relaxed);
}

static uint64_t api_backend_failures(const helios_backend *b)
{
    return atomic_load_explicit(&BE(b)->failures, memory_order_relaxed);
}

/* ---- ABI 1.1 ---- */

static uint32_t api_generation(void) { return atomic_load(&hx_srv.gen_id); }

static int api_core_stats(helios_core_stats *out)
{
    if (out == NULL || out->size < sizeof(uint32_t))
        return -1;
    helios_core_stats s;
    memset(&s, 0, sizeof(s));
    s.generation = atomic_load(&hx_srv.gen_id);
    s.workers = hx_srv.nworkers;
    s.version = HELIOS_VERSION;
    s.start_time = hx_srv.start_time;
    s.reloads = hx_srv.reloads;
    s.reload_failures = hx_srv.reload_failures;
    for (unsigned i = 0; hx_srv.workers && i < hx_srv.nworkers; i++) {
        hx_wstats *w = &hx_srv.workers[i].stats;
#define RD(f) atomic_load_explicit(&w->f, memory_order_relaxed)
        s.connections_accepted += RD(accepted);
        s.connections_active += RD(active);
        s.connections_refused += RD(refused);
        s.requests += RD(requests);
        s.requests_active += RD(requests_active);
        s.bytes_in += RD(bytes_in);
        s.bytes_out += RD(bytes_out);
#undef RD
    }
    uint32_t size = out->size < sizeof(s) ? out->size : (uint32_t)sizeof(s);
    memcpy((char *)out + sizeof(uint32_t), (char *)&s + sizeof(uint32_t), size - sizeof(uint32_t));
    return 0;
}

static int api_req_var_set(helios_request *rq, const char *name, const char *value)
{
    hx_req *r = REQ(rq);
    if (name == NULL || name[0] == '\0')
        return -1;
    hx_var **pp = &r->vars;
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->name, name) == 0)
            break;
    if (value == NULL) {
        if (*pp)
            *pp = (*pp)->next;
        return 0;
    }
    char *v = hx_arena_strndup(&r->arena, value, strlen(value));
    if (v == NULL)
        return -1;
    if (*pp) {
        (*pp)->value = (helios_buf){v, strlen(v)};
        return 0;
    }
    hx_var *n = hx_arena_alloc(&r->arena, sizeof(*n));
    char *nm = hx_arena_strndup(&r->arena, name, strlen(name));
    if (n == NULL || nm == NULL)
        return -1;
    *n = (hx_var){nm, {v, strlen(v)}, NULL};
    *pp = n;
    return 0;
}

static helios_buf api_req_var_get(helios_request *rq, const char *name)
{
    for (hx_var *v = REQ(rq)->vars; v && name; v = v->next)
        if (strcmp(v->name, name) == 0)
            return v->value;
    return (helios_buf){NULL, 0};
}

static const char *api_req_upstream(helios_request *rq)
{
    const hx_route *rt = REQ(rq)->route;
    return rt && rt->upstream ? rt->upstream->name : "";
}

static int api_req_tls(helios_request *rq, helios_tls_info *out)
{
    hx_req *r = REQ(rq);
    if (out == NULL || out->size < sizeof(uint32_t) || r->conn == NULL || r->conn->ssl == NULL)
        return -1;
    SSL *ssl = r->conn->ssl;
    helios_tls_info t;
    memset(&t, 0, sizeof(t));
    t.version = hx_tls_version(ssl);
    t.cipher = hx_tls_cipher(ssl);
    t.sni = hx_tls_sni(ssl);
    const unsigned char *ap = NULL;
    unsigned int al = 0;
    SSL_get0_alpn_selected(ssl, &ap, &al);
    if (al)
        t.alpn = hx_arena_strndup(&r->arena, (const char *)ap, al);
    char subj[512];
    if (hx_tls_client_subject(ssl, subj, sizeof(subj)) == 0)
        t.client_subject = hx_arena_strndup(&r->arena, subj, strlen(subj));
    t.client_verified = hx_tls_client_verified(ssl);
    uint32_t size = out->size < sizeof(t) ? out->size : (uint32_t)sizeof(t);
    memcpy((char *)out + sizeof(uint32_t), (char *)&t + sizeof(uint32_t), size - sizeof(uint32_t));
    return 0;
}

/* Named pointers between modules: a tiny table under a mutex (set on the
 * main thread at service start/stop, read by service threads). */
static pthread_mutex_t export_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char name[64];
    void *ptr;
} exports[32];

static int api_export_set(const char *name, void *ptr)
{
    if (name == NULL || strlen(name) >= sizeof(exports[0].name))
        return -1;
    int rc = -1;
    pthread_mutex_lock(&export_lock);
    size_t free_slot = SIZE_MAX;
    for (size_t i = 0; i < sizeof(exports) / sizeof(exports[0]); i++) {
        if (exports[i].name[0] && strcmp(exports[i].name, name) == 0) {
            exports[i].ptr = ptr;
            if (ptr == NULL)
                exports[i].name[0] = '\0';
            rc = 0;
            goto out;
        }
        if (!exports[i].name[0] && free_slot == SIZE_MAX)
            free_slot = i;
    }
    if (ptr == NULL) {
        rc = 0;
    } else if (free_slot != SIZE_MAX) {
        snprintf(exports[free_slot].name, sizeof(exports[0].name), "%s", name);
        exports[free_slot].ptr = ptr;
        rc = 0;
    }
out:
    pthread_mutex_unlock(&export_lock);
    return rc;
}

static void *api_export_get(const char *name)
{
    void *p = NULL;
    pthread_mutex_lock(&export_lock);
    for (size_t i = 0; name && i < sizeof(exports) / sizeof(exports[0]); i++)
        if (exports[i].name[0] && strcmp(exports[i].name, name) == 0) {
            p = exports[i].ptr;
            break;
        }
    pthread_mutex_unlock(&export_lock);
    return p;
}

/* ---- ABI 1.3: body facts, hold, request references ---- */

static int64_t api_req_body_length(helios_request *r)
{
    return hx_req_body_length(REQ(r));
}

static int api_req_has_body(helios_request *r)
{
    return hx_req_body_length(REQ(r)) != 0;
}

static int api_req_body_hold(helios_request *r, uint64_t max)
{
    return r ? hx_req_body_hold(REQ(r), max) : -1;
}

static helios_req_ref api_req_ref(helios_request *r)
{
    return r ? hx_req_ref(REQ(r)) : 0;
}

static helios_request *api_req_from_ref(helios_req_ref ref)
{
    return (helios_request *)hx_req_from_ref(ref);
}

static int api_resume_ref(helios_req_ref ref, int status)
{
    hx_req *r = hx_req_from_ref(ref);
    if (r == NULL || !r->paused || r->phase == HX_PH_DONE)
        return -1;
    hx_req_resume(r, status);
    return 0;
}

const helios_host_api hx_host_api = {
    .size = sizeof(helios_host_api),
    .abi_major = HELIOS_ABI_MAJOR,
    .abi_minor = HELIOS_ABI_MINOR,
    .log = api_log,
    .conf_kind = api_conf_kind,
    .conf_get = api_conf_get,
    .conf_len = api_conf_len,
    .conf_at = api_conf_at,
    .conf_key_at = api_conf_key_at,
    .conf_scalar = api_conf_scalar,
    .conf_error = api_conf_error,
    .conf_check_keys = api_conf_check_keys,
    .conf_str = api_conf_str,
    .conf_int = api_conf_int,
    .conf_bool = api_conf_bool,
    .conf_duration_ms = api_conf_duration_ms,
    .conf_size = api_conf_size,
    .conf_path = api_conf_path,
    .req_method = api_req_method,
    .req_target = api_req_target,
    .req_path = api_req_path,
    .req_query = api_req_query,
    .req_host = api_req_host,
    .req_protocol = api_req_protocol,
    .req_peer = api_req_peer,
    .req_client = api_req_client,
    .req_route = api_req_route,
    .req_header = api_req_header,
    .req_header_count = api_req_header_count,
    .req_header_at = api_req_header_at,
    .req_header_set = api_req_header_set,
    .req_header_add = api_req_header_add,
    .req_header_remove = api_req_header_remove,
    .resp_status = api_resp_status,
    .resp_set_status = api_resp_set_status,
    .resp_header = api_resp_header,
    .resp_header_set = api_resp_header_set,
    .resp_header_add = api_resp_header_add,
    .resp_header_remove = api_resp_header_remove,
    .respond = api_respond,
    .prepared_new = api_prepared_new,
    .prepared_free = api_prepared_free,
    .respond_prepared = api_respond_prepared,
    .req_alloc = api_req_alloc,
    .resume = api_resume,
    .post = api_post,
    .timer_add = api_timer_add,
    .timer_cancel = api_timer_cancel,
    .req_worker = api_req_worker,
    .worker_index = api_worker_index,
    .worker_count = api_worker_count,
    .now_ms = api_now_ms,
    .backends_count = api_backends_count,
    .backends_at = api_backends_at,
    .backend_name = api_backend_name,
    .backend_address = api_backend_address,
    .backend_sockaddr = api_backend_sockaddr,
    .backend_weight = api_backend_weight,
    .backend_usable = api_backend_usable,
    .backend_inflight = api_backend_inflight,
    .backend_set_healthy = api_backend_set_healthy,
    .backend_healthy = api_backend_healthy,
    .tried_has = hx_tried_has,
    .ctl_backend_add = hx_ctl_backend_add,
    .ctl_backend_remove = hx_ctl_backend_remove,
    .ctl_backend_weight = hx_ctl_backend_weight,
    .ctl_backend_drain = hx_ctl_backend_drain,
    .ctl_balancer_set = hx_ctl_balancer_set,
    .ctl_backends_walk = hx_ctl_backends_walk,
    .ctl_balancer_name = hx_ctl_balancer_name,
    .ctl_upstreams_count = hx_ctl_upstreams_count,
    .ctl_upstream_name = hx_ctl_upstream_name,
    .backend_draining = api_backend_draining,
    .backend_requests = api_backend_requests,
    .backend_failures = api_backend_failures,
    .backend_set_breaker = api_backend_set_breaker,
    .backend_breaker = api_backend_breaker,
    .backend_breaker_transitions = api_backend_breaker_transitions,
    .backend_retries = api_backend_retries,
    .req_attempts = api_req_attempts,
    .req_stats = api_req_stats,
    .worker_ev_loop = api_worker_ev_loop,
    .generation = api_generation,
    .core_stats = api_core_stats,
    .ctl_reload = hx_ctl_reload,
    .ctl_modules_walk = hx_ctl_modules_walk,
    .ctl_config_walk = hx_ctl_config_walk,
    .req_var_set = api_req_var_set,
    .req_var_get = api_req_var_get,
    .req_upstream = api_req_upstream,
    .export_set = api_export_set,
    .export_get = api_export_get,
    .req_body_read = hx_req_body_read,
    .subreq_new = hx_subreq_new,
    .subreq_header_add = hx_subreq_header_add,
    .subreq_send = hx_subreq_send,
    .subreq_status = hx_subreq_status,
    .subreq_header_count = hx_subreq_header_count,
    .subreq_header_at = hx_subreq_header_at,
    .subreq_cancel = hx_subreq_cancel,
    .req_tls = api_req_tls,
    .req_body_length = api_req_body_length,
    .req_has_body = api_req_has_body,
    .req_body_hold = api_req_body_hold,
    .req_ref = api_req_ref,
    .req_from_ref = api_req_from_ref,
    .resume_ref = api_resume_ref,
    /* 1.3: streamed bodies */
    .respond_begin = api_respond_begin,
    .respond_body = api_respond_body,
    .respond_abort = api_respond_abort,
    .req_body_pause = hx_req_body_pause,
    .subreq_pause = hx_subreq_pause,
    .ctl_upstream_panic = hx_ctl_upstream_panic,
};
