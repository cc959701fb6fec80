/*
 * request.c - the request layer: a request's lifetime (allocation,
 * release, logging), routing, the filter chain, handlers, request body
 * delivery and the response path. It knows no protocol: everything that
 * frames bytes goes through r->ops (request.h), and the proxy through
 * hx_proxy. The one rule it keeps for them: hooks run inside the owner's
 * bracket (hx_req_enter/leave), so nothing a hook finishes is freed under
 * the caller's feet.
 */
#include <arpa/inet.h>
#include <sys/uio.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http/request.h"

#include <stddef.h>
#include <stdlib.h>

#include "base/log.h"
#include "config/router.h"
#include "http/accesslog.h"
#include "http/subreq.h"

const hx_proxy_ops *hx_proxy;

void hx_proxy_register(const hx_proxy_ops *ops) { hx_proxy = ops; }

/* ------------------------------------------------------------------ */
/* lifetime                                                            */

void hx_req_init(hx_req *r, const hx_req_ops *ops, hx_worker *w, hx_conn *c, size_t arena)
{
    memset(r, 0, sizeof(*r));
    hx_arena_init(&r->arena, r->first, arena);
    r->ops = ops;
    r->conn = c;
    r->w = w;
    r->wg = w->wgen;
    hx_wgen_ref(r->wg);
    r->gen = r->wg->gen;
    r->content_length = -1;
    r->resp_length = -1;
    r->start = ev_now(w->loop);
}

void hx_req_fini(hx_req *r)
{
    if (r->ref_slot)
        hx_req_ref_drop(r);
    if (ev_is_active(&r->deadline))
        ev_timer_stop(r->w->loop, &r->deadline);
    if (ev_is_active(&r->drain_kick))
        ev_timer_stop(r->w->loop, &r->drain_kick);
    hx_req_body_end(r);
    hx_subs_cancel_all(r);
    hx_proxy->detach(r);
    hx_buf_free(&r->body_buf);
    hx_wgen_unref(r->wg);
    hx_arena_reset(&r->arena);
}

#define HX_REQ_ARENA 4096

hx_req *hx_req_alloc(const hx_req_ops *ops, hx_worker *w, hx_conn *c)
{
    hx_req *r = malloc(sizeof(*r) + sizeof(hx_arena_block) + HX_REQ_ARENA);
    if (r)
        hx_req_init(r, ops, w, c, HX_REQ_ARENA);
    return r;
}

void hx_req_release(hx_req *r)
{
    hx_req_fini(r);
    free(r);
}

/*
 * A request no route took (malformed 400, unrouted 404, 408, 413, 431...)
 * still reaches the logs: the global `modules:` chain's on_log, in reverse
 * order, so log and metrics modules count it as the core's access log
 * does. Only modules built for ABI 1.3 or later get it (D50): an older
 * module was promised on_log for routed requests only.
 */
static void log_unrouted(hx_req *r)
{
    const hx_gen *g = r->gen;
    if (r->rstates == NULL) {
        r->rstates = hx_arena_alloc(&r->arena, (g->ninstances + 1) * sizeof(void *));
        if (r->rstates == NULL)
            return;
        memset(r->rstates, 0, (g->ninstances + 1) * sizeof(void *));
    }
    for (size_t i = g->nglobal; i-- > 0;) {
        const hx_instance *inst = g->global[i];
        const helios_module *d = inst->mod->desc;
        if (inst->mod->filter == NULL || inst->mod->filter->on_log == NULL ||
            (d->abi_major == 1 && d->abi_minor < 3))
            continue;
        helios_ctx ctx;
        hx_ctx_init(&ctx, r, inst);
        inst->mod->filter->on_log(&ctx);
    }
}

/* Once per request: the handler's on_done, filters' on_log in reverse
 * order, then the access log. */
void hx_req_log(hx_req *r)
{
    if (r->log_done)
        return;
    r->log_done = 1;
    hx_worker *w = r->w;
    HX_STAT_ADD(w, requests, 1);
    HX_STAT_ADD(w, bytes_in, r->bytes_in);
    HX_STAT_ADD(w, bytes_out, r->bytes_out);
    if (r->counted)
        HX_STAT_ADD(w, requests_active, -1);
    if (ev_is_active(&r->drain_kick))
        ev_timer_stop(w->loop, &r->drain_kick);
    hx_req_body_end(r);
    if (r->route && r->route->handler) {
        const hx_instance *inst = r->route->handler;
        const helios_handler_hooks *hh = inst->mod->handler;
        if (hh->size >= offsetof(helios_handler_hooks, on_done) + sizeof(hh->on_done) &&
            hh->on_done) {
            helios_ctx ctx;
            hx_ctx_init(&ctx, r, inst);
            hh->on_done(&ctx);
        }
    }
    if (r->route) {
        for (size_t i = r->route->nfilters; i-- > 0;) {
            const hx_instance *inst = r->route->filters[i];
            if (inst->mod->filter->on_log) {
                helios_ctx ctx;
                hx_ctx_init(&ctx, r, inst);
                inst->mod->filter->on_log(&ctx);
            }
        }
    } else if (r->gen) {
        log_unrouted(r);
    }
    hx_accesslog_write(r);
}

/* A hook's return code as its name, for log lines ("returned PAUSE"). */
static const char *rc_name(int rc)
{
    static _Thread_local char other[32];
    switch (rc) {
    case HELIOS_CONTINUE: return "CONTINUE";
    case HELIOS_RESPONDED: return "RESPONDED";
    case HELIOS_PAUSE: return "PAUSE";
    case HELIOS_ERROR: return "ERROR";
    default:
        snprintf(other, sizeof(other), "unknown code %d", rc);
        return other;
    }
}

static void start_handler_or_proxy(hx_req *r);

/* ------------------------------------------------------------------ */
/* request buffering                                                   */

/*
 * A body that fits the upstream's request_buffering is read whole before
 * the proxy starts (nginx's proxy_request_buffering): the backend gets it
 * with a Content-Length whatever the client's framing, in one piece, and a
 * retry can send it again. A body that turns out larger (chunked, no
 * length) stops the buffering: what was read goes first, the rest streams.
 */
static int buffering_wanted(const hx_req *r)
{
    uint64_t max = r->route->upstream->request_buffering;
    if (max == 0 || !r->has_body || r->body_done || r->route->upstream->protocol != HX_PROTO_HTTP1)
        return 0;
    return r->content_length < 0 || (uint64_t)r->content_length <= max;
}

/* Bytes read while buffering (1), or after it overflowed while the
 * upstream exchange has not started yet (3): they all go with the head. */
static int buffer_body(hx_req *r, const char *p, size_t n, int last)
{
    if (n && hx_buf_append(&r->body_buf, p, n) != 0) {
        hx_req_error(r, 500, "out of memory buffering the request body");
        return 0;
    }
    r->body_mem = (helios_buf){hx_buf_head(&r->body_buf), hx_buf_size(&r->body_buf)};
    if (r->buffering == 3)
        return 0;
    if (last) {
        r->buffering = 2;
        r->chunked = 0;
        r->content_length = (int64_t)hx_buf_size(&r->body_buf);
        hx_proxy->start(r);
    } else if (hx_buf_size(&r->body_buf) > r->route->upstream->request_buffering) {
        /* too large: the proxy starts now and sends what was read first;
         * bytes that arrive before its exchange starts are kept with it
         * (reading stops meanwhile, so that is at most one read), then
         * the rest streams (the proxy sets buffering to 0) */
        r->buffering = 3;
        hx_proxy->start(r);
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* hold until verified (ABI 1.3, api->req_body_hold)                   */

/*
 * A filter that must see the whole body before anything else does (an
 * HMAC check) asks from on_request_headers. The body is read into
 * body_buf like a buffered one (buffering 4), bounded by the smallest of
 * the filters' limits, limits.max_held_body and limits.max_request_body;
 * then the body filters run once on all of it, LAST set, and only then
 * the handler or the proxy starts, with the (possibly replaced) body in
 * body_mem. Too large means 413 before anyone saw the request.
 */
int hx_req_body_hold(hx_req *r, uint64_t max)
{
    if (r->sub || r->phase != HX_PH_FILTERS || r->head_sent || r->buffering)
        return -1;
    uint64_t cap = r->gen->limits.max_held_body, mrb = r->gen->limits.max_request_body;
    if (mrb && mrb < cap)
        cap = mrb;
    if (max && max < cap)
        cap = max;
    if (r->hold_max == 0 || cap < r->hold_max)
        r->hold_max = cap;
    return 0;
}

static const char hold_too_large[] = "request body larger than a filter's hold limit";

/* Reading starts: a body announced too large is refused unread. */
static void hold_start(hx_req *r)
{
    if (r->content_length >= 0 && (uint64_t)r->content_length > r->hold_max) {
        hx_req_error(r, 413, hold_too_large);
        return;
    }
    r->buffering = 4;
    hx_req_body_wanted(r);
}

/* Bytes of a held body: 0 when it is complete and now all in *CHUNK (the
 * filters see it once), 1 while more is to come or after a refusal. */
static int hold_body(hx_req *r, helios_buf *chunk, int last)
{
    if (hx_buf_size(&r->body_buf) + chunk->len > r->hold_max) {
        r->body_discard = 1;
        r->buffering = 0;
        hx_req_error(r, 413, hold_too_large);
        return 1;
    }
    if (chunk->len && hx_buf_append(&r->body_buf, chunk->ptr, chunk->len) != 0) {
        r->body_discard = 1;
        r->buffering = 0;
        hx_req_error(r, 500, "out of memory holding the request body");
        return 1;
    }
    if (!last)
        return 1;
    r->buffering = 2; /* whole, like a buffered body that fit */
    size_t n = hx_buf_size(&r->body_buf);
    *chunk = (helios_buf){n ? hx_buf_head(&r->body_buf) : "", n};
    return 0;
}

int64_t hx_req_body_length(const hx_req *r)
{
    return r->has_body ? r->content_length : 0;
}

/* ------------------------------------------------------------------ */
/* request references (ABI 1.3, api->req_ref)                          */

/* ref = worker id + 1 (16 bits) | slot (16) | slot generation (32) */
#define HX_REF_SLOTS 65535u

uint64_t hx_req_ref(hx_req *r)
{
    hx_worker *w = r->w;
    if (r->ref_slot == 0) {
        uint32_t i;
        if (w->free_ref) {
            i = w->free_ref - 1;
            w->free_ref = w->refs[i].next;
        } else {
            if (w->nrefs >= HX_REF_SLOTS)
                return 0;
            if (w->nrefs == w->caprefs) {
                uint32_t cap = w->caprefs ? w->caprefs * 2 : 16;
                struct hx_refslot *v = realloc(w->refs, cap * sizeof(*v));
                if (v == NULL)
                    return 0;
                w->refs = v;
                w->caprefs = cap;
            }
            i = w->nrefs++;
            w->refs[i].gen = 0;
        }
        w->refs[i].req = r;
        w->refs[i].next = 0;
        r->ref_slot = i + 1;
    }
    uint32_t i = r->ref_slot - 1;
    return ((uint64_t)(w->id + 1) << 48) | ((uint64_t)i << 32) | w->refs[i].gen;
}

hx_req *hx_req_from_ref(uint64_t ref)
{
    hx_worker *w = hx_worker_self();
    if (w == NULL || ref == 0 || (ref >> 48) != (uint64_t)w->id + 1)
        return NULL;
    uint32_t i = (uint32_t)(ref >> 32) & 0xffffu;
    if (i >= w->nrefs || w->refs[i].req == NULL || w->refs[i].gen != (uint32_t)ref)
        return NULL;
    hx_req *r = w->refs[i].req;
    return r->log_done ? NULL : r;
}

void hx_req_ref_drop(hx_req *r)
{
    hx_worker *w = r->w;
    uint32_t i = r->ref_slot - 1;
    r->ref_slot = 0;
    w->refs[i].req = NULL;
    w->refs[i].gen++;
    w->refs[i].next = w->free_ref;
    w->free_ref = i + 1;
}

int hx_req_takes_body(const hx_req *r)
{
    if (r->body_discard || r->buffering == 1 || r->buffering == 4)
        return 1;
    if (hx_req_body_wanted_by_handler(r))
        return !r->body_paused;
    return r->phase == HX_PH_PROXY && hx_proxy->body_writable(r);
}

/* Request body bytes: through the filters, then to the proxy or the
 * handler, or dropped. */
int hx_req_body_in(hx_req *r, const char *at, size_t len, int last)
{
    r->bytes_in += len;
    uint64_t max = r->gen->limits.max_request_body;
    if (max && r->bytes_in > max && !r->body_discard) {
        /* a chunked or HTTP/2 body that announced no length went over */
        r->body_discard = 1;
        if (r->ops->no_reuse)
            r->ops->no_reuse(r);
        if (!r->head_sent) {
            hx_proxy->detach(r);
            hx_req_error(r, 413, "request body larger than limits.max_request_body");
        } else {
            hx_resp_abort(r, "request body larger than limits.max_request_body");
        }
        return 0;
    }
    if (last)
        r->body_done = 1;
    if (r->body_discard || r->phase == HX_PH_DONE || r->phase == HX_PH_RESPONDING)
        return 0;
    helios_buf chunk = {at, len};
    int held = 0;
    if (r->buffering == 4) {
        if (hold_body(r, &chunk, last) != 0)
            return 0;
        held = 1;
    }
    if (r->route) {
        for (size_t i = 0; i < r->route->nfilters; i++) {
            const hx_instance *inst = r->route->filters[i];
            if (!inst->mod->filter->on_request_body)
                continue;
            helios_ctx ctx;
            hx_ctx_init(&ctx, r, inst);
            int rc = inst->mod->filter->on_request_body(&ctx, &chunk, last);
            if (rc == HELIOS_RESPONDED && r->head_sent) {
                /* the module answered (e.g. 413): the unread rest of the
                 * body makes the connection unusable (HTTP/1.x; an HTTP/2
                 * stream is reset instead) */
                hx_proxy->detach(r);
                r->body_discard = 1;
                if (!last && r->ops->no_reuse) /* with LAST the body is all read */
                    r->ops->no_reuse(r);
                return 0;
            }
            if (rc != HELIOS_CONTINUE) {
                hx_error("module %s: on_request_body returned %s", inst->mod->name, rc_name(rc));
                return -1;
            }
        }
    }
    if (held) {
        /* verified: the (maybe replaced) body goes on whole */
        r->body_mem = (helios_buf){chunk.ptr ? chunk.ptr : "", chunk.len};
        r->content_length = (int64_t)chunk.len;
        r->chunked = 0;
        start_handler_or_proxy(r);
        return 0;
    }
    if (r->buffering == 1 || r->buffering == 3)
        return buffer_body(r, chunk.ptr, chunk.len, last);
    if (r->phase == HX_PH_PROXY)
        return hx_proxy->body(r, chunk.ptr, chunk.len, last);
    if (hx_req_body_wanted_by_handler(r))
        hx_req_body_deliver(r, chunk.ptr, chunk.len, last);
    return 0;
}

/* ------------------------------------------------------------------ */
/* module context                                                      */

void hx_ctx_init(helios_ctx *c, hx_req *r, const hx_instance *inst)
{
    c->size = sizeof(*c);
    c->cfg = inst->cfg;
    c->wstate = r->wg->wstates[inst->slot];
    c->rstate = r->rstates ? &r->rstates[inst->slot] : NULL;
    c->req = (helios_request *)r;
    c->worker = (helios_worker *)r->w;
}

/* ------------------------------------------------------------------ */
/* client address                                                      */

static int trusted(const hx_gen *g, const struct sockaddr *sa)
{
    for (size_t i = 0; i < g->ntrusted; i++)
        if (hx_cidr_match(&g->trusted[i], sa))
            return 1;
    return 0;
}

/* Walks X-Forwarded-For from the right while hops are trusted proxies: the
 * client is the first untrusted address (nginx real_ip_recursive). */
static void resolve_client(hx_req *r)
{
    const hx_gen *g = r->gen;
    /* r->client is still the connection's peer here */
    if (g->ntrusted == 0 || !trusted(g, (struct sockaddr *)&r->client))
        return;
    helios_buf xff = hx_hdrs_get(&r->hdrs, "x-forwarded-for");
    if (xff.ptr == NULL)
        return;
    size_t end = xff.len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff.ptr[start - 1] != ',')
            start--;
        size_t a = start, b = end;
        while (a < b && (xff.ptr[a] == ' ' || xff.ptr[a] == '\t'))
            a++;
        while (b > a && (xff.ptr[b - 1] == ' ' || xff.ptr[b - 1] == '\t'))
            b--;
        char ip[64];
        if (b - a == 0 || b - a >= sizeof(ip))
            return;
        memcpy(ip, xff.ptr + a, b - a);
        ip[b - a] = '\0';
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1)
            s4->sin_family = AF_INET;
        else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1)
            s6->sin6_family = AF_INET6;
        else
            return;
        memcpy(&r->client, &ss, sizeof(ss));
        if (!trusted(g, (struct sockaddr *)&ss))
            return;
        end = start > 0 ? start - 1 : 0;
    }
}

/* ------------------------------------------------------------------ */
/* methods                                                             */

static int route_lists_method(const hx_route *rt, const char *m)
{
    for (char **p = rt->methods; p && *p; p++)
        if (strcmp(*p, m) == 0)
            return 1;
    return 0;
}

/* 405 with the Allow header RFC 9110 15.5.6 asks for: the route's methods,
 * or the common ones when it takes any. */
static void refuse_method(hx_req *r)
{
    char allow[256];
    size_t n = 0;
    if (r->route->methods) {
        for (char **p = r->route->methods; *p; p++) {
            size_t l = strlen(*p);
            if (strcmp(*p, r->method.ptr) == 0 || n + l + 2 >= sizeof(allow))
                continue;
            if (n) {
                memcpy(allow + n, ", ", 2);
                n += 2;
            }
            memcpy(allow + n, *p, l);
            n += l;
        }
    } else {
        static const char common[] = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";
        memcpy(allow, common, sizeof(common) - 1);
        n = sizeof(common) - 1;
    }
    char peer[64];
    hx_addr_ip_str((struct sockaddr *)&r->client, peer, sizeof(peer));
    hx_log(HELIOS_LOG_INFO, "%s \"%.*s %.*s\": 405: method not allowed on route %s", peer,
           (int)r->method.len, r->method.ptr, (int)r->target.len, r->target.ptr,
           r->route->name ? r->route->name : "");
    r->error_reason = "method not allowed on this route";
    r->route = NULL; /* answered by the core: no filters, no handler */
    hx_hdrs_add(&r->arena, &r->rhdrs, "Allow", 5, allow, n);
    static const char body[] = "405 Method Not Allowed\n";
    hx_req_respond(r, 405, "text/plain", body, sizeof(body) - 1);
}

/* ------------------------------------------------------------------ */
/* request identity                                                    */

/* The Host field value heliosd sends on: HOST, and the port when one was
 * given that is not the default of the client's scheme. */
static int set_host_header(hx_req *r, helios_buf field, helios_buf host, unsigned port)
{
    char v[300];
    size_t n = host.len;
    if (n > sizeof(v) - 8)
        return -1;
    /* The usual case first: the field is already HOST, or HOST ":" PORT
     * with PORT's digits as formatting it would give them (no leading
     * zero): nothing to build or copy. */
    unsigned dflt = r->https ? 443u : 80u;
    if (n && field.len >= n && memcmp(field.ptr, host.ptr, n) == 0) {
        if (field.len == n && (port == 0 || port == dflt))
            return 0;
        if (port && port != dflt && field.len > n + 1 && field.len - n - 1 <= 5 &&
            field.ptr[n] == ':' && field.ptr[n + 1] != '0') {
            const char *d = field.ptr + n + 1;
            size_t dl = field.len - n - 1, i = 0;
            unsigned pv = 0;
            for (; i < dl && d[i] >= '0' && d[i] <= '9'; i++)
                pv = pv * 10 + (unsigned)(d[i] - '0');
            if (i == dl && pv == port)
                return 0;
        }
    }
    memcpy(v, host.ptr, n);
    if (port && port != (r->https ? 443u : 80u)) {
        v[n++] = ':';
        n += hx_u64_dec(v + n, port);
    }
    if (n && field.len == n && memcmp(field.ptr, v, n) == 0)
        return 0; /* already the one value: nothing to copy */
    hx_hdrs_remove(&r->hdrs, "host");
    if (n == 0)
        return 0; /* HTTP/1.0 without Host: the proxy names the backend */
    return hx_hdrs_add(&r->arena, &r->hdrs, "Host", 4, v, n);
}

/*
 * One identity per request (RFC 9112 3.2.2, RFC 9113 8.3.1): the authority
 * of an absolute-form target replaces Host; an HTTP/2 :authority and a host
 * field that name different hosts are refused; the winner is normalised
 * once (hx_host_parse) into r->host, and the Host header is rewritten to
 * it, so routing, modules, variables and the upstream all see one value.
 * 0, or -1 after answering 400.
 */
static int req_identity(hx_req *r)
{
    helios_buf field = hx_hdrs_get(&r->hdrs, "host"), host = {"", 0};
    unsigned port = 0;
    if (r->authority.ptr) {
        if (hx_host_parse(&r->arena, r->authority.ptr, r->authority.len, &host, &port) != 0 ||
            host.len == 0) {
            hx_req_error(r, 400, "invalid authority in the request target");
            return -1;
        }
        if (field.ptr && r->http_major == 2) {
            helios_buf fh;
            unsigned fp = 0, dflt = r->https ? 443u : 80u;
            if (hx_host_parse(&r->arena, field.ptr, field.len, &fh, &fp) != 0 ||
                fh.len != host.len || memcmp(fh.ptr, host.ptr, host.len) != 0 ||
                (fp ? fp : dflt) != (port ? port : dflt)) {
                hx_req_error(r, 400, ":authority and host name different hosts");
                return -1;
            }
        }
    } else if (field.ptr && hx_host_parse(&r->arena, field.ptr, field.len, &host, &port) != 0) {
        hx_req_error(r, 400, "invalid Host header");
        return -1;
    }
    r->host = host;
    if (set_host_header(r, field, host, port) != 0) {
        hx_req_error(r, 400, "invalid Host header");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* phases                                                              */

static void run_handler_or_proxy(hx_req *r);

static int hook_result(hx_req *r, const hx_instance *inst, const char *hook, int rc)
{
    switch (rc) {
    case HELIOS_CONTINUE:
    case HELIOS_RESPONDED:
    case HELIOS_PAUSE:
        return rc;
    default:
        if (rc != HELIOS_ERROR)
            hx_error("module %s: %s returned unknown code %d (treated as ERROR)",
                     inst->mod->name, hook, rc);
        else
            hx_error("module %s: %s failed", inst->mod->name, hook);
        (void)r;
        return HELIOS_ERROR;
    }
}

/* After a module said RESPONDED: it must have produced a response. */
static void after_responded(hx_req *r, const hx_instance *inst)
{
    if (!r->head_sent) {
        hx_error("module %s returned RESPONDED without responding", inst->mod->name);
        hx_req_error(r, 500, "module returned RESPONDED without a response");
    }
}

static void run_request_filters(hx_req *r)
{
    const hx_route *rt = r->route;
    r->phase = HX_PH_FILTERS;
    while (r->fidx < rt->nfilters) {
        const hx_instance *inst = rt->filters[r->fidx++];
        if (!inst->mod->filter->on_request_headers)
            continue;
        helios_ctx ctx;
        hx_ctx_init(&ctx, r, inst);
        int rc = hook_result(r, inst, "on_request_headers",
                             inst->mod->filter->on_request_headers(&ctx));
        if (rc == HELIOS_CONTINUE)
            continue;
        if (rc == HELIOS_PAUSE) {
            r->paused = 1;
            return;
        }
        if (rc == HELIOS_RESPONDED)
            after_responded(r, inst);
        else
            hx_req_error(r, 500, "request filter failed");
        return;
    }
    run_handler_or_proxy(r);
}

static void run_handler_or_proxy(hx_req *r)
{
    if (!r->has_body) {
        /* module.h: every request ends its body with on_request_body(LAST),
         * a bodiless one included (Content-Length: 0, END_STREAM on
         * HEADERS), before the handler or the upstream sees it, so a
         * filter that checks bodies cannot be skipped by sending none */
        if (hx_req_body_in(r, NULL, 0, 1) != 0) {
            hx_req_error(r, 500, "request body filter failed");
            return;
        }
        if (r->head_sent || r->phase == HX_PH_DONE)
            return; /* a filter answered */
    } else if (r->hold_max && !r->body_done) {
        hold_start(r); /* the rest follows once the filters saw it all */
        return;
    }
    start_handler_or_proxy(r);
}

static void start_handler_or_proxy(hx_req *r)
{
    const hx_route *rt = r->route;
    if (rt->handler) {
        r->phase = HX_PH_HANDLER;
        const hx_instance *inst = rt->handler;
        helios_ctx ctx;
        hx_ctx_init(&ctx, r, inst);
        int rc = hook_result(r, inst, "handle", inst->mod->handler->handle(&ctx));
        if (rc == HELIOS_PAUSE) {
            r->paused = 1;
            return;
        }
        if (rc == HELIOS_RESPONDED) {
            after_responded(r, inst);
            return;
        }
        hx_req_error(r, 500, rc == HELIOS_CONTINUE ? "handler returned CONTINUE"
                                                   : "handler failed");
        return;
    }
    if (buffering_wanted(r)) {
        r->buffering = 1; /* the phase stays: the proxy has not started */
        hx_req_body_wanted(r);
        return;
    }
    hx_proxy->start(r);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    hx_req *r = t->data;
    hx_req_enter(r);
    if (!r->head_sent) {
        hx_proxy->detach(r);
        hx_req_error(r, 504, "request timeout");
    } else if (!r->resp_done) {
        hx_resp_abort(r, "request timeout");
    }
    hx_req_leave(r);
}

static void req_start(hx_req *r)
{
    hx_gen *g = r->gen;
    r->counted = 1;
    HX_STAT_ADD(r->w, requests_active, 1);
    /* split target: origin-form, absolute-form, asterisk-form */
    const char *t = r->target.ptr;
    size_t tl = r->target.len;
    if (tl >= 7 && (strncasecmp(t, "http://", 7) == 0 || strncasecmp(t, "https://", 8) == 0)) {
        const char *auth = t + (t[4] == ':' ? 7 : 8);
        const char *slash = memchr(auth, '/', (size_t)(t + tl - auth));
        const char *end = slash ? slash : t + tl;
        /* absolute-form: the authority replaces Host (RFC 9112 3.2.2) */
        const char *at = memchr(auth, '@', (size_t)(end - auth));
        if (at) {
            hx_req_error(r, 400, "userinfo in request target");
            return;
        }
        r->authority = (helios_buf){auth, (size_t)(end - auth)};
        t = slash ? slash : "/";
        tl = slash ? (size_t)(r->target.ptr + r->target.len - slash) : 1;
    } else if (tl == 1 && t[0] == '*') {
        if (r->method_id != HTTP_OPTIONS) {
            hx_req_error(r, 400, "asterisk target outside OPTIONS");
            return;
        }
    } else if (tl == 0 || t[0] != '/') {
        hx_req_error(r, 400, "malformed request target");
        return;
    }
    const char *q = memchr(t, '?', tl);
    size_t plen = q ? (size_t)(q - t) : tl;
    if (q)
        r->query = (helios_buf){q + 1, tl - plen - 1};
    else
        r->query = (helios_buf){"", 0};
    if (tl == 1 && t[0] == '*') {
        r->path = (helios_buf){"*", 1};
    } else {
        const char *hash = memchr(t, '#', plen);
        if (hash)
            plen = (size_t)(hash - t);
        char *np = hx_arena_alloc(&r->arena, plen * 3 + 2);
        long nl = np ? hx_path_normalize(t, plen, np) : -1;
        if (nl < 0) {
            hx_req_error(r, 400, "malformed request path");
            return;
        }
        r->path = (helios_buf){np, (size_t)nl};
    }
    if (req_identity(r) != 0)
        return;

    if (r->wg->broken) {
        hx_req_error(r, 503, "a module failed to initialise on this worker");
        return;
    }
    resolve_client(r);
    r->route = hx_route_match(g, r->host.ptr, r->host.len, r->path.ptr, r->path.len,
                              r->method.ptr, r->method.len);
    if (r->route == NULL) {
        hx_req_error(r, 404, "no route matches");
        return;
    }
    if (r->method_id == HTTP_TRACE && !route_lists_method(r->route, "TRACE")) {
        /* TRACE echoes the request, cookies and credentials included, to
         * a script that can read the answer (cross-site tracing): only a
         * route that names it in `methods:` lets it through */
        refuse_method(r);
        return;
    }
    r->rstates = hx_arena_alloc(&r->arena, (g->ninstances + 1) * sizeof(void *));
    if (r->rstates == NULL) {
        hx_req_error(r, 500, "out of memory");
        return;
    }
    memset(r->rstates, 0, (g->ninstances + 1) * sizeof(void *));
    if (g->timeouts.request_ms) {
        ev_timer_init(&r->deadline, deadline_cb, g->timeouts.request_ms / 1000.0, 0.);
        r->deadline.data = r;
        ev_timer_start(r->w->loop, &r->deadline);
    }
    run_request_filters(r);
}

void hx_req_log_ctx_push(const hx_req *r)
{
    helios_buf id = hx_req_log_id(r);
    hx_log_ctx_push(r->conn ? r->conn->id : 0, id.ptr, id.len);
}

void hx_req_start(hx_req *r)
{
    int ids = atomic_load_explicit(&hx_log_json, memory_order_relaxed);
    if (ids)
        hx_req_log_ctx_push(r);
    req_start(r);
    if (ids && hx_log_depth > 0)
        hx_log_ctx_pop();
}

void hx_req_resume(hx_req *r, int status)
{
    if (!r->paused)
        return; /* late or duplicate resume: a no-op by contract */
    r->paused = 0;
    hx_req_enter(r);
    if (r->phase == HX_PH_DONE) {
        /* answered meanwhile (by the module itself, or the request
         * timeout while paused): nothing left to resume */
    } else if (status == HELIOS_CONTINUE) {
        if (r->phase == HX_PH_FILTERS)
            run_request_filters(r);
        else
            hx_req_error(r, 500, "handler resumed with CONTINUE");
    } else if (status == HELIOS_RESPONDED) {
        if (!r->head_sent)
            hx_req_error(r, 500, "module resumed RESPONDED without a response");
    } else {
        hx_req_error(r, 500, "module resumed with an error");
    }
    hx_req_leave(r);
}

/* ------------------------------------------------------------------ */
/* responses                                                           */

/* The head of a local response: STATUS, CTYPE (may be NULL) and Date.
 * 0, or -1 (nothing changed) for a response already started, a bad status
 * or an invalid Content-Type. */
static int local_head(hx_req *r, int status, const char *ctype)
{
    if (r->head_sent || r->phase == HX_PH_DONE)
        return -1;
    if (status < 100 || status > 599)
        return -1;
    if (ctype && !hx_hdr_value_valid(ctype, strlen(ctype)))
        return -1;
    r->status = status;
    if (ctype) {
        hx_hdrs_remove(&r->rhdrs, "content-type");
        hx_hdrs_add(&r->arena, &r->rhdrs, "Content-Type", 12, ctype, strlen(ctype));
    }
    return 0; /* Date: hx_resp_begin, like every final response */
}

int hx_req_respond(hx_req *r, int status, const char *ctype, const void *body, size_t len)
{
    if (local_head(r, status, ctype) != 0)
        return -1;
    char cl[24];
    int n = (int)hx_u64_dec(cl, len);
    hx_hdrs_remove(&r->rhdrs, "content-length");
    if (status >= 200 && status != 204 && status != 304)
        hx_hdrs_add(&r->arena, &r->rhdrs, "Content-Length", 14, cl, (size_t)n);
    r->phase = HX_PH_RESPONDING;
    if (hx_resp_begin(r) != 0)
        return 0; /* already turned into an error response */
    hx_resp_body(r, body, len, 1);
    return 0;
}

/* ------------------------------------------------------------------ */
/* streamed handler responses                                          */

/*
 * A handler's streamed response goes through the same response path as a
 * proxied one (hx_resp_begin / hx_resp_body: filters, length checks, the
 * protocol's framing) and keeps the same watermark: a module is told to
 * wait once the client's queue reaches limits.max_body_buffer, and is
 * called back (from the loop, never inside the protocol's own write
 * callbacks) when the protocol reports the queue drained under it. The
 * phase stays HX_PH_HANDLER until the last piece: the handler may still be
 * reading the request body it transforms.
 */
static void drain_check(hx_req *r);

/* These are called from whatever the module runs in (a subrequest's or a
 * timer's callback, not the client connection's), so each opens the
 * request's own bracket: its leave sends what was queued, and may finish
 * the request (on_done) when the response ended. R is not touched after. */
int hx_resp_stream_begin(hx_req *r, int status, const char *ctype, void (*on_drain)(void *arg),
                         void *arg)
{
    if (r->sub || r->phase != HX_PH_HANDLER || local_head(r, status, ctype) != 0)
        return -1;
    r->resp_streamed = 1;
    r->drain_fn = on_drain;
    r->drain_arg = arg;
    hx_req_enter(r);
    hx_resp_begin(r); /* on failure it answered 500 and ended the response */
    hx_req_leave(r);
    return 0;
}

int hx_resp_stream_body(hx_req *r, const void *p, size_t n, int last)
{
    if (!r->resp_streamed || !r->head_sent || r->resp_done || r->aborted)
        return -1;
    int rc = 0;
    hx_req_enter(r);
    if (hx_resp_body(r, p, n, last) != 0 || r->aborted) {
        rc = -1;
    } else if (!r->resp_done && hx_req_pending(r) >= r->gen->limits.max_body_buffer) {
        /* the protocol may still send it all when the bracket closes,
         * without ever reporting a drain: look again from the loop */
        r->resp_blocked = 1;
        drain_check(r);
        rc = 1;
    }
    hx_req_leave(r);
    return rc;
}

void hx_resp_stream_abort(hx_req *r, const char *why)
{
    if (!r->resp_streamed || r->resp_done)
        return;
    hx_req_enter(r);
    hx_resp_abort(r, why ? why : "the handler could not complete its response");
    hx_req_leave(r);
}

static void drain_kick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    hx_req *r = t->data;
    hx_req_enter(r);
    /* still over the watermark: the protocol reports the drain later */
    if (r->resp_blocked && !r->log_done && !r->resp_done && r->drain_fn &&
        hx_req_pending(r) < r->gen->limits.max_body_buffer) {
        r->resp_blocked = 0;
        r->drain_fn(r->drain_arg);
    }
    hx_req_leave(r);
}

/* The drain callback runs from the loop, never from inside the protocol's
 * write path (an HTTP/2 data callback must not be re-entered). */
static void drain_check(hx_req *r)
{
    if (ev_is_active(&r->drain_kick))
        return;
    ev_timer_init(&r->drain_kick, drain_kick_cb, 0., 0.);
    r->drain_kick.data = r;
    ev_timer_start(r->w->loop, &r->drain_kick);
}

void hx_req_drained(hx_req *r)
{
    if (r->up) {
        hx_proxy->client_drained(r);
        return;
    }
    if (r->resp_blocked && !r->resp_done && hx_req_pending(r) < r->gen->limits.max_body_buffer)
        drain_check(r);
}

void hx_req_error(hx_req *r, int status, const char *reason)
{
    if (r->ops->fail) {
        r->ops->fail(r, status, reason);
        return;
    }
    if (r->head_sent) {
        hx_resp_abort(r, reason);
        return;
    }
    r->error_reason = reason;
    char peer[64];
    hx_addr_ip_str((struct sockaddr *)&r->client, peer, sizeof(peer));
    hx_log(status >= 500 ? HELIOS_LOG_WARN : HELIOS_LOG_INFO, "%s \"%.*s %.*s\": %d: %s%s%s",
           peer, (int)r->method.len, r->method.ptr, (int)r->target.len, r->target.ptr, status,
           reason, r->upstream_addr[0] ? " upstream=" : "", r->upstream_addr);
    r->rhdrs.n = 0;
    if (status == 503)
        hx_hdrs_add(&r->arena, &r->rhdrs, "Retry-After", 11, "1", 1);
    char body[128];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, hx_reason(status));
    /* the framing of a request we could not read is not trustworthy */
    if (!r->body_done && (status == 400 || status == 408 || status == 413) && r->ops->no_reuse)
        r->ops->no_reuse(r);
    hx_req_respond(r, status, "text/plain", body, (size_t)n);
}

int hx_resp_begin(hx_req *r)
{
    if (r->route) {
        for (size_t i = r->route->nfilters; i-- > 0;) {
            const hx_instance *inst = r->route->filters[i];
            if (!inst->mod->filter->on_response_headers)
                continue;
            helios_ctx ctx;
            hx_ctx_init(&ctx, r, inst);
            int rc = inst->mod->filter->on_response_headers(&ctx);
            if (rc != HELIOS_CONTINUE) {
                hx_error("module %s: on_response_headers returned %s", inst->mod->name,
                         rc_name(rc));
                /* replace the response with a plain 500, no filters */
                r->route = NULL;
                hx_proxy->detach(r);
                r->head_sent = 0;
                hx_req_error(r, 500, "response filter failed");
                return -1;
            }
        }
    }
    int status = r->status;
    if (r->upstream_bytes_seen && r->try_start > 0 && r->up_head == 0)
        r->up_head = ev_now(r->w->loop);
    /* Every final response carries Date (RFC 9110 6.6.1), proxied ones
     * whose backend sent none included. The protocol appends the worker's
     * string (formatted once a second) when framing the head: not a
     * header in rhdrs, so no copy and no per-byte validation. */
    /* the first Date and Content-Length, in one pass */
    helios_buf date = {NULL, 0}, cl = {NULL, 0};
    int seen_date = 0, seen_cl = 0;
    for (size_t i = 0; i < r->rhdrs.n && !(seen_date && seen_cl); i++) {
        const hx_hdr *h = &r->rhdrs.v[i];
        if (!seen_date && hx_name_is(h->name.ptr, h->name.len, "date", 4)) {
            date = h->value;
            seen_date = 1;
        } else if (!seen_cl && hx_name_is(h->name.ptr, h->name.len, "content-length", 14)) {
            cl = h->value;
            seen_cl = 1;
        }
    }
    r->add_date = status >= 200 && date.ptr == NULL;
    r->resp_no_body = r->is_head || status == 204 || status == 304 || status < 200 ||
                      r->end_with_head;
    r->resp_length = -1;
    if (cl.ptr) {
        int64_t v = 0;
        for (size_t i = 0; i < cl.len && v >= 0; i++)
            v = (cl.ptr[i] >= '0' && cl.ptr[i] <= '9') ? v * 10 + (cl.ptr[i] - '0') : -1;
        r->resp_length = cl.len ? v : -1;
    }
    if (r->ops->write_head(r) != 0) {
        hx_resp_abort(r, "cannot send the response head");
        return -1;
    }
    r->head_sent = 1;
    if (r->resp_no_body) {
        r->resp_done = 1;
        hx_req_finish(r);
    }
    return 0;
}

int hx_resp_body(hx_req *r, const char *p, size_t n, int last)
{
    if (r->resp_done)
        return 0;
    helios_buf chunk = {p, n};
    if (r->route) {
        for (size_t i = r->route->nfilters; i-- > 0;) {
            const hx_instance *inst = r->route->filters[i];
            if (!inst->mod->filter->on_response_body)
                continue;
            helios_ctx ctx;
            hx_ctx_init(&ctx, r, inst);
            int rc = inst->mod->filter->on_response_body(&ctx, &chunk, last);
            if (rc != HELIOS_CONTINUE) {
                hx_error("module %s: on_response_body returned %s", inst->mod->name, rc_name(rc));
                hx_resp_abort(r, "response body filter failed");
                return -1;
            }
        }
    }
    if (r->resp_length >= 0) {
        uint64_t total = r->bytes_out + chunk.len;
        if (total > (uint64_t)r->resp_length) {
            hx_resp_abort(r, "response body longer than its Content-Length");
            return -1;
        }
        if (last && total != (uint64_t)r->resp_length) {
            hx_resp_abort(r, "response body shorter than its Content-Length");
            return -1;
        }
    }
    if (r->ops->write_body(r, chunk.ptr, chunk.len, last) != 0)
        return -1;
    r->bytes_out += chunk.len;
    if (last) {
        r->resp_done = 1;
        hx_req_finish(r);
    }
    return 0;
}

void hx_resp_abort(hx_req *r, const char *why)
{
    if (r->ops->fail) {
        r->ops->fail(r, 502, why);
        return;
    }
    if (r->resp_done && r->phase == HX_PH_DONE)
        return;
    char peer[64];
    hx_addr_ip_str((struct sockaddr *)&r->client, peer, sizeof(peer));
    hx_warn("%s \"%.*s %.*s\": response aborted: %s%s%s", peer, (int)r->method.len,
            r->method.ptr, (int)r->target.len, r->target.ptr, why,
            r->upstream_addr[0] ? " upstream=" : "", r->upstream_addr);
    r->error_reason = why;
    r->aborted = 1;
    r->resp_done = 1;
    r->ops->abort(r);
    if (!r->head_sent)
        r->head_sent = 1;
    hx_proxy->detach(r);
    hx_req_finish(r);
}

void hx_req_finish(hx_req *r)
{
    r->phase = HX_PH_DONE;
    if (ev_is_active(&r->deadline))
        ev_timer_stop(r->w->loop, &r->deadline);
}
