/*
 * subreq.c - handler request bodies and subrequests (host API 1.1).
 *
 * A subrequest is an hx_req without a client connection: upstream.c runs it
 * through the upstream's balancer, retries and keep-alive pools exactly like
 * a proxied request, and where a proxied request would write to its client
 * (hx_resp_begin / hx_resp_body / hx_req_error / hx_resp_abort) a
 * subrequest calls its module's callbacks instead.
 *
 * Lifetime: the module holds the helios_subreq (hx_sub) from subreq_new
 * until its final callback or subreq_cancel. Upstream callbacks run inside
 * a bracket (hx_sub_enter / hx_sub_leave, like the client connection's), so
 * a subrequest that finishes or is cancelled from inside a callback is
 * freed when the outermost bracket closes, never under a caller's feet.
 */
#include "http/subreq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/log.h"

#define HX_SUB_ARENA 2048

static const hx_req_ops sub_ops;

typedef struct hx_sub {
    hx_req *r; /* conn NULL, sub = this */
    hx_req *parent;
    hx_route route; /* synthetic: the target upstream, no filters */
    const helios_subreq_cb *cb;
    void *arg;
    char *body;
    size_t body_len;
    ev_timer kick;   /* starts the exchange from the loop, not from send() */
    ev_timer unpause; /* reads on from the loop after subreq_pause(0) */
    unsigned busy;   /* open brackets */
    int paused;      /* subreq_pause: the module takes no more body now */
    int sent;
    int done;        /* final callback made (or about to be) */
    int cancelled;   /* no more callbacks */
    struct hx_sub *prev, *next; /* parent's list */
} hx_sub;

#define SUB(s) ((hx_sub *)(s))

static int cb_has(const helios_subreq_cb *cb, size_t end) { return cb && cb->size >= end; }
#define CB_HAS(cb, fn)                                                                    \
    (cb_has((cb), offsetof(helios_subreq_cb, fn) + sizeof((cb)->fn)) && (cb)->fn != NULL)

static void sub_free(hx_sub *s)
{
    hx_req *r = s->r;
    if (r->ref_slot)
        hx_req_ref_drop(r);
    if (ev_is_active(&s->kick))
        ev_timer_stop(r->w->loop, &s->kick);
    if (ev_is_active(&s->unpause))
        ev_timer_stop(r->w->loop, &s->unpause);
    hx_proxy->detach(r);
    if (s->parent) {
        if (s->prev)
            s->prev->next = s->next;
        else
            s->parent->subs = s->next;
        if (s->next)
            s->next->prev = s->prev;
    }
    hx_wgen_unref(r->wg);
    hx_arena_reset(&r->arena);
    free(r);
    free(s->body);
    free(s);
}

void hx_sub_enter(hx_req *r) { r->sub->busy++; }

void hx_sub_leave(hx_req *r)
{
    hx_sub *s = r->sub;
    if (--s->busy == 0 && (s->done || s->cancelled))
        sub_free(s);
}

/* ------------------------------------------------------------------ */
/* module API                                                          */

static int target_valid(const char *t)
{
    if (t[0] != '/')
        return 0;
    for (const unsigned char *p = (const unsigned char *)t; *p; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return 0;
    return 1;
}

static helios_subreq *fail_null(char *err, size_t errlen, const char *fmt, const char *arg)
    __attribute__((format(printf, 3, 0)));

/* FMT has one %s, filled with ARG ("" when NULL). */
static helios_subreq *fail_null(char *err, size_t errlen, const char *fmt, const char *arg)
{
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    if (err && errlen)
        snprintf(err, errlen, fmt, arg ? arg : "");
#pragma GCC diagnostic pop
    return NULL;
}

helios_subreq *hx_subreq_new(helios_worker *hw, helios_request *parent, const char *upstream,
                             const char *method, const char *target, char *err, size_t errlen)
{
    hx_worker *w = (hx_worker *)hw;
    hx_req *pr = (hx_req *)parent;
    if (pr)
        w = pr->w;
    if (w == NULL || w != hx_worker_self())
        return fail_null(err, errlen, "subrequests are made on the worker's own thread%s", NULL);
    if (method == NULL || !hx_token_valid(method, strlen(method)))
        return fail_null(err, errlen, "invalid method '%s'", method);
    if (target == NULL || !target_valid(target))
        return fail_null(err, errlen,
                         "invalid request target '%s' (expected origin-form: /path?query)", target);
    hx_wgen *wg = pr ? pr->wg : w->wgen;
    hx_upstream *up = NULL;
    if (upstream) {
        up = hx_gen_upstream(wg->gen, upstream);
        if (up == NULL)
            return fail_null(err, errlen, "no upstream named '%s'", upstream);
    } else {
        if (pr == NULL || pr->route == NULL || pr->route->upstream == NULL)
            return fail_null(err, errlen, "no upstream given and the route has none%s", NULL);
        up = pr->route->upstream;
    }
    hx_sub *s = calloc(1, sizeof(*s));
    hx_req *r = malloc(sizeof(*r) + sizeof(hx_arena_block) + HX_SUB_ARENA);
    if (s == NULL || r == NULL) {
        free(s);
        free(r);
        return fail_null(err, errlen, "out of memory%s", NULL);
    }
    memset(r, 0, sizeof(*r));
    hx_arena_init(&r->arena, r->first, HX_SUB_ARENA);
    s->r = r;
    s->parent = pr;
    s->route.name = pr && pr->route && pr->route->name ? pr->route->name : "";
    s->route.upstream = up;
    r->ops = &sub_ops;
    r->sub = s;
    r->w = w;
    r->wg = wg;
    hx_wgen_ref(wg);
    r->gen = wg->gen;
    r->route = &s->route;
    r->content_length = -1;
    r->resp_length = -1;
    r->http_major = r->http_minor = 1;
    r->keepalive = 1;
    r->body_done = 1;
    r->start = ev_now(w->loop);
    r->method_id = hx_method_id(method, strlen(method));
    r->is_head = strcmp(method, "HEAD") == 0;
    char *m = hx_arena_strndup(&r->arena, method, strlen(method));
    char *t = hx_arena_strndup(&r->arena, target, strlen(target));
    r->rstates = hx_arena_alloc(&r->arena, (r->gen->ninstances + 1) * sizeof(void *));
    if (m == NULL || t == NULL || r->rstates == NULL) {
        r->sub->cancelled = 1;
        sub_free(s);
        return fail_null(err, errlen, "out of memory%s", NULL);
    }
    memset(r->rstates, 0, (r->gen->ninstances + 1) * sizeof(void *));
    r->method = (helios_buf){m, strlen(m)};
    r->target = (helios_buf){t, strlen(t)};
    const char *q = strchr(t, '?');
    r->path = (helios_buf){t, q ? (size_t)(q - t) : strlen(t)};
    r->query = q ? (helios_buf){q + 1, strlen(q + 1)} : (helios_buf){"", 0};
    if (pr) {
        r->host = pr->host;
        memcpy(&r->client, &pr->client, sizeof(r->client));
        s->next = pr->subs;
        if (pr->subs)
            pr->subs->prev = s;
        pr->subs = s;
    } else {
        r->host = (helios_buf){"", 0};
    }
    return (helios_subreq *)s;
}

int hx_subreq_header_add(helios_subreq *hs, const char *name, const char *value)
{
    hx_sub *s = SUB(hs);
    if (s == NULL || s->sent || name == NULL || value == NULL)
        return -1;
    size_t nl = strlen(name), vl = strlen(value);
    if (!hx_hdr_name_valid(name, nl) || !hx_hdr_value_valid(value, vl))
        return -1;
    /* the core frames the message and owns the connection */
    if (hx_is_hop_header(name, nl) || (nl == 14 && strncasecmp(name, "content-length", 14) == 0))
        return -1;
    hx_req *r = s->r;
    if (nl == 4 && strncasecmp(name, "host", 4) == 0) {
        hx_hdrs_remove(&r->hdrs, "host");
        char *h = hx_arena_strndup(&r->arena, value, vl);
        if (h == NULL)
            return -1;
        r->host = (helios_buf){h, vl};
    }
    return hx_hdrs_add(&r->arena, &r->hdrs, name, nl, value, vl) == 0 ? 0 : -1;
}

static void kick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    hx_sub *s = t->data;
    hx_req *r = s->r;
    hx_sub_enter(r);
    if (!s->cancelled)
        hx_proxy->start(r);
    hx_sub_leave(r);
}

int hx_subreq_send(helios_subreq *hs, const void *body, size_t len, const helios_subreq_cb *cb,
                   void *arg)
{
    hx_sub *s = SUB(hs);
    if (s == NULL)
        return -1;
    if (s->sent || cb == NULL || cb->size < sizeof(uint32_t) || (len && body == NULL)) {
        if (!s->sent) {
            s->cancelled = 1;
            sub_free(s);
        }
        return -1;
    }
    hx_req *r = s->r;
    if (len) {
        s->body = malloc(len);
        if (s->body == NULL) {
            s->cancelled = 1;
            sub_free(s);
            return -1;
        }
        memcpy(s->body, body, len);
        s->body_len = len;
        r->body_mem = (helios_buf){s->body, len};
    }
    r->content_length = (int64_t)len;
    r->has_body = len > 0;
    s->cb = cb;
    s->arg = arg;
    s->sent = 1;
    ev_timer_init(&s->kick, kick_cb, 0., 0.);
    s->kick.data = s;
    ev_timer_start(r->w->loop, &s->kick);
    return 0;
}

int hx_subreq_status(helios_subreq *hs) { return hs ? SUB(hs)->r->status : 0; }

size_t hx_subreq_header_count(helios_subreq *hs) { return hs ? SUB(hs)->r->rhdrs.n : 0; }

int hx_subreq_header_at(helios_subreq *hs, size_t i, helios_buf *name, helios_buf *value)
{
    if (hs == NULL || i >= SUB(hs)->r->rhdrs.n)
        return -1;
    const hx_hdr *h = &SUB(hs)->r->rhdrs.v[i];
    if (name)
        *name = h->name;
    if (value)
        *value = h->value;
    return 0;
}

static void unpause_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    hx_sub *s = t->data;
    hx_req *r = s->r;
    hx_sub_enter(r);
    if (!s->done && !s->cancelled && !s->paused)
        hx_proxy->client_drained(r);
    hx_sub_leave(r);
}

/* A paused subrequest's "client queue" reads as full (sub_pending), so the
 * proxy stops reading the backend exactly as it does for a slow client;
 * resuming is that client draining. */
int hx_subreq_pause(helios_subreq *hs, int pause)
{
    hx_sub *s = SUB(hs);
    if (s == NULL || !s->sent || s->done || s->cancelled)
        return -1;
    if (pause || !s->paused) {
        s->paused = pause != 0;
        return 0;
    }
    s->paused = 0;
    if (!ev_is_active(&s->unpause)) {
        ev_timer_init(&s->unpause, unpause_cb, 0., 0.);
        s->unpause.data = s;
        ev_timer_start(s->r->w->loop, &s->unpause);
    }
    return 0;
}

void hx_subreq_cancel(helios_subreq *hs)
{
    hx_sub *s = SUB(hs);
    if (s == NULL || s->cancelled)
        return;
    s->cancelled = 1;
    if (s->busy) {
        /* inside one of its own callbacks: free when the bracket closes.
         * A finished response keeps its backend connection, which goes
         * back to the pool; otherwise let go of the backend now. */
        if (!s->done)
            hx_proxy->detach(s->r);
        return;
    }
    sub_free(s);
}

void hx_subs_cancel_all(hx_req *r)
{
    while (r->subs) {
        hx_sub *s = r->subs;
        /* unlink first: a subrequest still inside a bracket is freed later
         * and must not touch its parent any more */
        r->subs = s->next;
        if (s->next)
            s->next->prev = NULL;
        s->parent = NULL;
        s->prev = s->next = NULL;
        hx_subreq_cancel((helios_subreq *)s);
    }
}

/* ------------------------------------------------------------------ */
/* core side                                                           */

/* always inlined: strlen of a literal folds to a constant */
static inline __attribute__((always_inline)) void append(hx_buf *b, const char *s)
{
    hx_buf_append(b, s, strlen(s));
}

int hx_sub_serialize(hx_req *r, hx_buf *o)
{
    hx_buf_append(o, r->method.ptr, r->method.len);
    hx_buf_append(o, " ", 1);
    hx_buf_append(o, r->target.ptr, r->target.len);
    append(o, " HTTP/1.1\r\n");
    int have_host = 0;
    for (size_t i = 0; i < r->hdrs.n; i++) {
        const hx_hdr *h = &r->hdrs.v[i];
        if (h->name.len == 4 && strncasecmp(h->name.ptr, "host", 4) == 0)
            have_host = 1;
        hx_buf_append(o, h->name.ptr, h->name.len);
        hx_buf_append(o, ": ", 2);
        hx_buf_append(o, h->value.ptr, h->value.len);
        hx_buf_append(o, "\r\n", 2);
    }
    if (!have_host) {
        append(o, "Host: ");
        if (r->host.len)
            hx_buf_append(o, r->host.ptr, r->host.len);
        else
            append(o, r->backend->address);
        append(o, "\r\n");
    }
    if (r->content_length > 0 || r->method_id == HTTP_POST || r->method_id == HTTP_PUT ||
        r->method_id == HTTP_PATCH) {
        char cl[24];
        append(o, "Content-Length: ");
        hx_buf_append(o, cl, hx_u64_dec(cl, (unsigned long long)(r->content_length > 0
                                                                    ? r->content_length
                                                                    : 0)));
        append(o, "\r\n");
    }
    if (r->route->upstream->keepalive_max_idle == 0)
        append(o, "Connection: close\r\n");
    append(o, "\r\n");
    return 0;
}

/* The module hears the end of every response, bodiless ones included, as
 * on_body(last), and gets the body as the upstream framed it (the proxy
 * already checked that framing): no "no body" shortcut, no length check. */
static int sub_head(hx_req *r)
{
    hx_sub *s = r->sub;
    r->resp_no_body = 0;
    r->resp_length = -1;
    r->head_sent = 1;
    if (!s->cancelled && CB_HAS(s->cb, on_head))
        s->cb->on_head(s->arg, (helios_subreq *)s);
    return 0;
}

static int sub_body(hx_req *r, const char *p, size_t n, int last)
{
    hx_sub *s = r->sub;
    if (s->done)
        return -1;
    if (last) {
        s->done = 1;
        r->resp_done = 1;
    }
    if (!s->cancelled && CB_HAS(s->cb, on_body))
        s->cb->on_body(s->arg, (helios_subreq *)s, (helios_buf){p ? p : "", n}, last);
    return s->cancelled && !last ? -1 : 0;
}

static void sub_error(hx_req *r, int status, const char *why)
{
    hx_sub *s = r->sub;
    if (s->done)
        return;
    s->done = 1;
    r->aborted = 1;
    hx_proxy->detach(r);
    hx_debug("subrequest \"%.*s %.*s\" to upstream %s: %d: %s", (int)r->method.len,
             r->method.ptr, (int)r->target.len, r->target.ptr, r->route->upstream->name, status,
             why ? why : "");
    if (!s->cancelled && CB_HAS(s->cb, on_error))
        s->cb->on_error(s->arg, (helios_subreq *)s, status, why ? why : "");
    /* an error outside any upstream callback (no backend at all, from the
     * kick) is inside the kick's bracket; elsewhere too: freed at leave */
}

static void sub_nothing(hx_req *r) { (void)r; } /* the body is in memory */

static size_t sub_pending(const hx_req *r)
{
    /* the module takes every chunk as it comes, unless it paused */
    return r->sub->paused ? SIZE_MAX / 2 : 0;
}

/* A subrequest's "client" is the module that made it. */
static const hx_req_ops sub_ops = {
    .name = "subrequest",
    .write_head = sub_head,
    .write_body = sub_body,
    .abort = NULL, /* never called: fail reports an abort to the module */
    .no_reuse = NULL,
    .fail = sub_error,
    .body_wanted = sub_nothing,
    .pending = sub_pending,
    .enter = hx_sub_enter,
    .leave = hx_sub_leave,
};

/* ------------------------------------------------------------------ */
/* handler request bodies                                              */

static void body_kick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    hx_req *r = t->data;
    hx_req_enter(r);
    if (!r->has_body || r->body_done) /* a held body was read whole */
        hx_req_body_deliver(r, r->body_mem.ptr, r->body_mem.len, 1);
    else
        hx_req_body_wanted(r);
    hx_req_leave(r);
}

int hx_req_body_read(helios_request *rq,
                     void (*on_data)(void *arg, helios_buf chunk, int last, int error), void *arg)
{
    hx_req *r = (hx_req *)rq;
    if (r == NULL || on_data == NULL || r->sub || r->conn == NULL || r->body_state != 0 ||
        r->phase != HX_PH_HANDLER)
        return -1;
    r->body_state = 1;
    r->body_cb = on_data;
    r->body_arg = arg;
    ev_timer_init(&r->body_kick, body_kick_cb, 0., 0.);
    r->body_kick.data = r;
    ev_timer_start(r->w->loop, &r->body_kick);
    return 0;
}

int hx_req_body_pause(helios_request *rq, int pause)
{
    hx_req *r = (hx_req *)rq;
    if (r == NULL || r->sub || r->body_state != 1)
        return -1;
    if (pause || !r->body_paused) {
        r->body_paused = pause != 0;
        return 0;
    }
    r->body_paused = 0;
    /* read on from the loop: the kick asks the protocol for more */
    if (!ev_is_active(&r->body_kick))
        ev_timer_start(r->w->loop, &r->body_kick);
    return 0;
}

int hx_req_body_wanted_by_handler(const hx_req *r)
{
    return r->body_state == 1 && r->phase == HX_PH_HANDLER;
}

void hx_req_body_deliver(hx_req *r, const char *p, size_t n, int last)
{
    if (r->body_state != 1)
        return;
    void (*cb)(void *, helios_buf, int, int) = r->body_cb;
    if (last) {
        r->body_state = 2;
        r->body_cb = NULL;
    }
    cb(r->body_arg, (helios_buf){p ? p : "", n}, last, 0);
}

void hx_req_body_end(hx_req *r)
{
    if (ev_is_active(&r->body_kick))
        ev_timer_stop(r->w->loop, &r->body_kick);
    if (r->body_state != 1)
        return;
    void (*cb)(void *, helios_buf, int, int) = r->body_cb;
    r->body_state = 2;
    r->body_cb = NULL;
    cb(r->body_arg, (helios_buf){"", 0}, 0, 1);
}
