/*
 * request.c - the protocol-independent part of a request: routing, the
 * filter chain, handlers, and the response path (filters, framing).
 */
#include <arpa/inet.h>
#include <sys/uio.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http/http.h"
#include "http/http2.h"
#include "base/log.h"
#include "config/router.h"
#include "http/subreq.h"
#include "proxy/upstream.h"

const char *hx_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status < 200 ? "Informational" : status < 300 ? "OK"
                  : status < 400 ? "Redirection" : status < 500 ? "Client Error"
                                                             : "Server Error";
    }
}

/* ------------------------------------------------------------------ */
/* headers                                                             */

int hx_hdrs_add(hx_arena *a, hx_hdrs *h, const char *name, size_t nlen, const char *value,
                size_t vlen)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        hx_hdr *v = hx_arena_alloc(a, cap * sizeof(*v));
        if (v == NULL)
            return -1;
        if (h->n)
            memcpy(v, h->v, h->n * sizeof(*v));
        h->v = v;
        h->cap = cap;
    }
    char *nm = hx_arena_strndup(a, name, nlen);
    char *vl = hx_arena_strndup(a, value, vlen);
    if (nm == NULL || vl == NULL)
        return -1;
    h->v[h->n].name = (helios_buf){nm, nlen};
    h->v[h->n].value = (helios_buf){vl, vlen};
    h->n++;
    return 0;
}

helios_buf hx_hdrs_get(const hx_hdrs *h, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < h->n; i++)
        if (h->v[i].name.len == n && strncasecmp(h->v[i].name.ptr, name, n) == 0)
            return h->v[i].value;
    return (helios_buf){NULL, 0};
}

int hx_hdrs_remove(hx_hdrs *h, const char *name)
{
    size_t n = strlen(name), o = 0;
    int removed = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (h->v[i].name.len == n && strncasecmp(h->v[i].name.ptr, name, n) == 0) {
            removed++;
            continue;
        }
        h->v[o++] = h->v[i];
    }
    h->n = o;
    return removed;
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
    if (g->ntrusted == 0 || !trusted(g, (struct sockaddr *)&r->conn->peer))
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
    hx_proxy_start(r);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    hx_req *r = t->data;
    hx_conn *c = r->conn;
    hx_conn_enter(c);
    if (!r->head_sent) {
        hx_proxy_detach(r);
        hx_req_error(r, 504, "request timeout");
    } else if (!r->resp_done) {
        hx_resp_abort(r, "request timeout");
    }
    hx_conn_leave(c);
}

void hx_req_start(hx_req *r)
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
        helios_buf old = r->host;
        (void)old;
        char *h = hx_arena_strndup(&r->arena, auth, (size_t)(end - auth));
        size_t hl = (size_t)(end - auth);
        const char *colon = memchr(h, ':', hl);
        if (colon && h[0] != '[')
            hl = (size_t)(colon - h);
        for (size_t i = 0; i < hl; i++)
            if (h[i] >= 'A' && h[i] <= 'Z')
                h[i] = (char)(h[i] + 32);
        r->host = (helios_buf){h, hl};
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
    if (r->host.ptr == NULL)
        r->host = (helios_buf){"", 0};

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

void hx_req_resume(hx_req *r, int status)
{
    if (!r->paused)
        return; /* late or duplicate resume: a no-op by contract */
    r->paused = 0;
    hx_conn *c = r->conn;
    hx_conn_enter(c);
    if (status == HELIOS_CONTINUE) {
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
    hx_conn_leave(c);
}

/* ------------------------------------------------------------------ */
/* responses                                                           */

int hx_req_respond(hx_req *r, int status, const char *ctype, const void *body, size_t len)
{
    if (r->head_sent || r->phase == HX_PH_DONE)
        return -1;
    if (status < 100 || status > 599)
        return -1;
    r->status = status;
    if (ctype) {
        if (!hx_hdr_value_valid(ctype, strlen(ctype)))
            return -1;
        hx_hdrs_remove(&r->rhdrs, "content-type");
        hx_hdrs_add(&r->arena, &r->rhdrs, "Content-Type", 12, ctype, strlen(ctype));
    }
    char cl[24];
    int n = (int)hx_u64_dec(cl, len);
    hx_hdrs_remove(&r->rhdrs, "content-length");
    if (status >= 200 && status != 204 && status != 304)
        hx_hdrs_add(&r->arena, &r->rhdrs, "Content-Length", 14, cl, (size_t)n);
    if (hx_hdrs_get(&r->rhdrs, "date").ptr == NULL) {
        const char *d = hx_worker_date(r->w);
        hx_hdrs_add(&r->arena, &r->rhdrs, "Date", 4, d, strlen(d));
    }
    r->phase = HX_PH_RESPONDING;
    if (hx_resp_begin(r) != 0)
        return 0; /* already turned into an error response */
    hx_resp_body(r, body, len, 1);
    return 0;
}

void hx_req_error(hx_req *r, int status, const char *reason)
{
    if (r->sub) {
        hx_sub_error(r, status, reason);
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
    if (!r->body_done && !r->h2s && (status == 400 || status == 408 || status == 413))
        r->conn->close_after = 1;
    hx_req_respond(r, status, "text/plain", body, (size_t)n);
}

static const char *const hop_by_hop[] = {"connection", "keep-alive", "proxy-connection",
                                         "transfer-encoding", "te", "trailer", "upgrade",
                                         "proxy-authenticate", NULL};

int hx_is_hop_header(const char *name, size_t n);
int hx_is_hop_header(const char *name, size_t n)
{
    for (const char *const *h = hop_by_hop; *h; h++)
        if (strlen(*h) == n && strncasecmp(*h, name, n) == 0)
            return 1;
    return 0;
}

/* 1 when a Connection header in H lists NAME (RFC 9110 7.6.1). */
int hx_hdrs_connection_lists(const hx_hdrs *h, const char *name, size_t n);
int hx_hdrs_connection_lists(const hx_hdrs *h, const char *name, size_t n)
{
    for (size_t i = 0; i < h->n; i++) {
        const hx_hdr *c = &h->v[i];
        if (c->name.len != 10 || strncasecmp(c->name.ptr, "connection", 10) != 0)
            continue;
        const char *p = c->value.ptr, *e = p + c->value.len;
        while (p < e) {
            while (p < e && (*p == ' ' || *p == '\t' || *p == ','))
                p++;
            const char *s = p;
            while (p < e && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            if ((size_t)(p - s) == n && strncasecmp(s, name, n) == 0)
                return 1;
        }
    }
    return 0;
}

int hx_resp_begin(hx_req *r)
{
    if (r->sub)
        return hx_sub_head(r);
    hx_conn *c = r->conn;
    if (r->route) {
        for (size_t i = r->route->nfilters; i-- > 0;) {
            const hx_instance *inst = r->route->filters[i];
            if (!inst->mod->filter->on_response_headers)
                continue;
            helios_ctx ctx;
            hx_ctx_init(&ctx, r, inst);
            int rc = inst->mod->filter->on_response_headers(&ctx);
            if (rc != HELIOS_CONTINUE) {
                hx_error("module %s: on_response_headers returned %d", inst->mod->name, rc);
                /* replace the response with a plain 500, no filters */
                r->route = NULL;
                hx_proxy_detach(r);
                r->head_sent = 0;
                hx_req_error(r, 500, "response filter failed");
                return -1;
            }
        }
    }
    int status = r->status;
    r->resp_no_body = r->is_head || status == 204 || status == 304 || status < 200 ||
                      r->end_with_head;
    helios_buf cl = hx_hdrs_get(&r->rhdrs, "content-length");
    r->resp_length = -1;
    if (cl.ptr) {
        int64_t v = 0;
        for (size_t i = 0; i < cl.len && v >= 0; i++)
            v = (cl.ptr[i] >= '0' && cl.ptr[i] <= '9') ? v * 10 + (cl.ptr[i] - '0') : -1;
        r->resp_length = cl.len ? v : -1;
    }
    if (r->h2s) {
        /* HTTP/2 frames the body itself: no chunking, no Connection */
        if (hx_h2_resp_head(r) != 0) {
            hx_resp_abort(r, "cannot send the HTTP/2 response head");
            return -1;
        }
        r->head_sent = 1;
        if (r->resp_no_body) {
            r->resp_done = 1;
            hx_req_finish(r);
        }
        return 0;
    }
    int keep = r->keepalive && !c->close_after && !c->w->stopping;
    if (!r->resp_no_body && r->resp_length < 0) {
        if (r->http_minor >= 1) {
            r->resp_chunked = 1;
        } else {
            r->resp_close = 1;
            keep = 0;
        }
    }
    if (!keep)
        c->close_after = 1;

    /* serialise straight into the connection's output */
    hx_buf *head = &c->out;
    int has_connection = hx_hdrs_get(&r->rhdrs, "connection").ptr != NULL;
    char line[64];
    const char *reason = hx_reason(status);
    size_t rl = strlen(reason);
    memcpy(line, "HTTP/1.1 ", 9);
    size_t n = 9 + hx_u64_dec(line + 9, (unsigned)status);
    line[n++] = ' ';
    hx_buf_append(head, line, n);
    hx_buf_append(head, reason, rl);
    hx_buf_append(head, "\r\n", 2);
    for (size_t i = 0; i < r->rhdrs.n; i++) {
        const hx_hdr *h = &r->rhdrs.v[i];
        if (hx_is_hop_header(h->name.ptr, h->name.len) ||
            (has_connection && hx_hdrs_connection_lists(&r->rhdrs, h->name.ptr, h->name.len)))
            continue;
        if (h->name.len == 14 && strncasecmp(h->name.ptr, "content-length", 14) == 0 &&
            (r->resp_chunked || r->resp_close || (r->resp_no_body && !r->is_head &&
                                                  status != 304)))
            continue;
        /* never emit a header that could split the response */
        if (!hx_hdr_name_valid(h->name.ptr, h->name.len) ||
            !hx_hdr_value_valid(h->value.ptr, h->value.len)) {
            hx_warn("dropping invalid response header '%.*s'", (int)h->name.len, h->name.ptr);
            continue;
        }
        hx_buf_append(head, h->name.ptr, h->name.len);
        hx_buf_append(head, ": ", 2);
        hx_buf_append(head, h->value.ptr, h->value.len);
        hx_buf_append(head, "\r\n", 2);
    }
    if (r->resp_chunked)
        hx_buf_append(head, "Transfer-Encoding: chunked\r\n", 28);
    if (status == 101 && r->ws_upgrade) {
        /* WebSocket: the switch is confirmed on this hop too (tunnel.c) */
        static const char sw[] = "Upgrade: websocket\r\nConnection: upgrade\r\n";
        hx_buf_append(head, sw, sizeof(sw) - 1);
    } else if (!keep)
        hx_buf_append(head, "Connection: close\r\n", 19);
    else if (r->http_minor == 0)
        hx_buf_append(head, "Connection: keep-alive\r\n", 24);
    hx_buf_append(head, "\r\n", 2);
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
    if (r->sub)
        return hx_sub_body(r, p, n, last);
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
                hx_error("module %s: on_response_body returned %d", inst->mod->name, rc);
                hx_resp_abort(r, "response body filter failed");
                return -1;
            }
        }
    }
    hx_conn *c = r->conn;
    if (chunk.len > 0) {
        if (r->resp_length >= 0 && r->bytes_out + chunk.len > (uint64_t)r->resp_length) {
            hx_resp_abort(r, "response body longer than its Content-Length");
            return -1;
        }
        if (r->h2s) {
            if (hx_h2_resp_data(r, chunk.ptr, chunk.len, 0) != 0) {
                hx_resp_abort(r, "out of memory");
                return -1;
            }
        } else if (r->resp_chunked) {
            char hdr[24];
            size_t hn = hx_u64_hex(hdr, chunk.len);
            hdr[hn++] = '\r';
            hdr[hn++] = '\n';
            struct iovec v[3] = {{hdr, hn}, {(void *)chunk.ptr, chunk.len}, {"\r\n", 2}};
            hx_conn_writev(c, v, 3);
        } else {
            struct iovec v[1] = {{(void *)chunk.ptr, chunk.len}};
            hx_conn_writev(c, v, 1);
        }
        r->bytes_out += chunk.len;
    }
    if (last) {
        if (r->resp_length >= 0 && r->bytes_out != (uint64_t)r->resp_length) {
            hx_resp_abort(r, "response body shorter than its Content-Length");
            return -1;
        }
        if (r->h2s) {
            hx_h2_resp_data(r, NULL, 0, 1); /* trailers go with the end (http2.c) */
        } else if (r->resp_chunked && r->trailers.n) {
            /* trailers of an HTTP/2 backend (gRPC) on a chunked HTTP/1.1 body */
            hx_conn_write(c, "0\r\n", 3);
            for (size_t i = 0; i < r->trailers.n; i++) {
                const hx_hdr *t = &r->trailers.v[i];
                if (!hx_hdr_name_valid(t->name.ptr, t->name.len) ||
                    !hx_hdr_value_valid(t->value.ptr, t->value.len))
                    continue;
                hx_conn_write(c, t->name.ptr, t->name.len);
                hx_conn_write(c, ": ", 2);
                hx_conn_write(c, t->value.ptr, t->value.len);
                hx_conn_write(c, "\r\n", 2);
            }
            hx_conn_write(c, "\r\n", 2);
        } else if (r->resp_chunked) {
            hx_conn_write(c, "0\r\n\r\n", 5);
        }
        r->resp_done = 1;
        hx_req_finish(r);
    }
    return 0;
}

void hx_resp_abort(hx_req *r, const char *why)
{
    if (r->sub) {
        hx_sub_error(r, 502, why);
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
    if (r->h2s)
        hx_h2_resp_abort(r);
    else
        r->conn->close_after = 1;
    if (!r->head_sent)
        r->head_sent = 1;
    hx_proxy_detach(r);
    hx_req_finish(r);
}

void hx_req_finish(hx_req *r)
{
    r->phase = HX_PH_DONE;
    if (ev_is_active(&r->deadline))
        ev_timer_stop(r->w->loop, &r->deadline);
}
