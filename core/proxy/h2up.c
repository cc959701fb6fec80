/*
 * h2up.c - HTTP/2 to upstreams (see h2up.h).
 *
 * Per worker and backend a short list of connections (the pool's `h2`),
 * each an nghttp2 client session carrying up to the peer's
 * MAX_CONCURRENT_STREAMS requests. A request gets a stream on the first
 * connection with room, or a new connection; streams wait in the
 * connection's queue while it connects (and does TLS).
 *
 * Bodies both ways are streamed with flow control as backpressure: the
 * request body waits in the stream until nghttp2 asks for it (DEFERRED
 * otherwise), and response DATA is acknowledged (nghttp2_session_consume)
 * only once the client side has room. Trailers (gRPC's grpc-status) are
 * kept on the request and sent after the body by the client side.
 *
 * Failures before any response byte go back to the core's retry logic
 * (hx_proxy_attempt_failed); a stream refused by a GOAWAY never reached
 * the backend and is retried like a failed connect.
 *
 * Every callback that reaches request code runs inside the request's
 * bracket (its client connection's, or its subrequest's), and no request
 * pointer is used after that bracket closes.
 */
#include "proxy/h2up.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "http/subreq.h"
#include "http/transport.h"
#include "config/tls.h"
#include "proxy/upstream.h"


#define H2UP_OUT_AHEAD (256 * 1024)

enum { H2C_CONNECTING = 1, H2C_TLS, H2C_READY, H2C_DEAD };

struct hx_h2up_stream {
    hx_req *r;      /* NULL once the request let go */
    hx_h2up_conn *c;
    hx_backend *b;
    int32_t id;     /* 0 until submitted */
    hx_buf body;    /* request body not yet taken by nghttp2 */
    int body_last;
    int deferred;
    int need_body;  /* drained: ask the client side for more (kick_bodies) */
    size_t unconsumed; /* response DATA not yet acknowledged */
    int head_seen;
    int got_final;  /* END_STREAM from the backend */
    ev_timer timer; /* read timeout between frames of this stream */
    ev_tstamp last_io;
    struct hx_h2up_stream *qnext; /* waiting for the connection */
    struct hx_h2up_stream *oprev, *onext; /* the connection's open streams */
};

struct hx_h2up_conn {
    hx_worker *w;
    hx_backend *b;
    const hx_upstream *u;
    int fd;
    SSL *ssl;
    int state;
    ev_io rio, wio;
    ev_timer timer; /* connect/TLS timeout, then idle timeout */
    nghttp2_session *s;
    hx_buf out;
    unsigned nstreams;
    int goaway;     /* no new streams (GOAWAY either way, or draining) */
    unsigned busy;  /* inside our own callbacks: closing is deferred */
    int zombie;
    int closing;    /* conn_close ran once (maybe deferred) */
    int was_ready;  /* the session was up when closing began */
    hx_h2up_stream *queue, *qtail;
    hx_h2up_stream *open; /* submitted, not yet closed by nghttp2 */
    ev_tstamp last_io;
    struct hx_h2up_conn *next;
};

static void conn_close(hx_h2up_conn *c, const char *why);
/* These return 1 when C was closed (and freed) on the way. */
static int conn_pump(hx_h2up_conn *c);
static int conn_update(hx_h2up_conn *c);

/* ------------------------------------------------------------------ */
/* transport                                                           */

static ssize_t c_send(hx_h2up_conn *c, const void *p, size_t n)
{
    return hx_sock_send(c->fd, c->ssl, p, n);
}

static ssize_t c_recv(hx_h2up_conn *c, void *p, size_t n)
{
    return hx_sock_recv(c->fd, c->ssl, p, n, NULL);
}

/* ------------------------------------------------------------------ */
/* streams                                                             */

static void stream_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);

static void stream_free(hx_h2up_stream *st)
{
    if (ev_is_active(&st->timer))
        ev_timer_stop(st->c->w->loop, &st->timer);
    hx_buf_free(&st->body);
    free(st);
}

/* The attempt ends for the request (success or failure): release what it
 * holds on the backend and unlink. */
static void stream_let_go(hx_h2up_stream *st)
{
    hx_req *r = st->r;
    if (r == NULL)
        return;
    st->r = NULL;
    r->h2up = NULL;
    hx_proxy_attempt_end(r, st->b);
    /* response bytes held back for the client are nobody's now: give the
     * window back, or the shared connection would stall */
    if (st->unconsumed && st->id > 0 && st->c->s && st->c->state == H2C_READY) {
        nghttp2_session_consume(st->c->s, st->id, st->unconsumed);
        st->unconsumed = 0;
    }
    if (ev_is_active(&st->timer))
        ev_timer_stop(st->c->w->loop, &st->timer);
}

static void stream_touch(hx_h2up_stream *st)
{
    st->last_io = ev_now(st->c->w->loop);
    uint64_t ms = st->c->u->read_timeout_ms;
    if (!st->head_seen && st->c->u->per_try_timeout_ms)
        ms = st->c->u->per_try_timeout_ms;
    if (ev_is_active(&st->timer))
        ev_timer_stop(st->c->w->loop, &st->timer);
    ev_timer_set(&st->timer, ms / 1000.0, 0.);
    ev_timer_start(st->c->w->loop, &st->timer);
}

/* The stream failed: back to the core's retry/answer logic. */
static void stream_fail(hx_h2up_stream *st, int outcome, const char *why)
{
    hx_req *r = st->r;
    if (r == NULL)
        return;
    hx_backend *b = st->b;
    hx_req_enter(r);
    hx_proxy_report(r, b, outcome, 0); /* before the attempt ends (on_attempt_end) */
    stream_let_go(st);
    hx_proxy_attempt_failed(r, b, outcome, why);
    hx_req_leave(r);
}

static void stream_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    hx_h2up_stream *st = t->data;
    hx_h2up_conn *c = st->c;
    char why[160];
    snprintf(why, sizeof(why), "reading from %s (HTTP/2 stream %d) timed out", c->b->address,
             st->id);
    c->busy++;
    if (st->id > 0)
        nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    stream_fail(st, HELIOS_OUTCOME_TIMEOUT, why);
    c->busy--;
    conn_pump(c);
}

static ssize_t body_read_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *src, void *user)
{
    (void)s;
    (void)id;
    (void)user;
    hx_h2up_stream *st = src->ptr;
    size_t n = hx_buf_size(&st->body);
    if (n > length)
        n = length;
    if (n)
        memcpy(buf, hx_buf_head(&st->body), n);
    hx_buf_consume(&st->body, n);
    if (hx_buf_size(&st->body) == 0 && st->body_last) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    } else if (n == 0) {
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (n && st->r)
        st->r->req_sent_some = 1;
    /* room again: the client side may send more (kick_bodies asks it, from
     * an event callback: never from inside its own delivery) */
    hx_req *r = st->r;
    if (r && !r->body_done && hx_buf_size(&st->body) < r->gen->limits.max_body_buffer / 2)
        st->need_body = 1;
    return (ssize_t)n;
}

static int is_hop(const char *n, size_t l)
{
    /* hop-by-hop, framing, and the forwarding headers the proxy rewrites */
    static const char *const names[] = {"connection", "keep-alive", "proxy-connection",
                                        "transfer-encoding", "upgrade", "host", "te",
                                        "x-forwarded-for", "x-forwarded-proto",
                                        "x-forwarded-host", "forwarded", NULL};
    for (int i = 0; names[i]; i++)
        if (strlen(names[i]) == l && strncasecmp(names[i], n, l) == 0)
            return 1;
    return 0;
}

static char *lower_dup(hx_arena *a, const char *p, size_t n)
{
    char *o = hx_arena_alloc(a, n + 1);
    if (o == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        o[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] + 32 : p[i]);
    o[n] = '\0';
    return o;
}

static int stream_submit(hx_h2up_conn *c, hx_h2up_stream *st)
{
    hx_req *r = st->r;
    if (r == NULL)
        return 0;
    size_t cap = r->hdrs.n + 12;
    nghttp2_nv *nv = hx_arena_alloc(&r->arena, cap * sizeof(*nv));
    if (nv == NULL)
        return -1;
    size_t n = 0;
#define NV(name, val, vlen)                                                                   \
    (nv[n++] = (nghttp2_nv){(uint8_t *)(name), (uint8_t *)(val), strlen(name), (vlen),        \
                            NGHTTP2_NV_FLAG_NONE})
    NV(":method", r->method.ptr, r->method.len);
    NV(":scheme", c->ssl ? "https" : "http", c->ssl ? 5 : 4);
    helios_buf host = hx_hdrs_get(&r->hdrs, "host");
    if (host.ptr == NULL)
        host = r->host.len ? r->host : (helios_buf){c->b->address, strlen(c->b->address)};
    NV(":authority", host.ptr, host.len);
    NV(":path", r->target.ptr, r->target.len);
    int te_trailers = 0;
    int has_connection = hx_hdrs_get(&r->hdrs, "connection").ptr != NULL;
    for (size_t i = 0; i < r->hdrs.n; i++) {
        const hx_hdr *h = &r->hdrs.v[i];
        if (has_connection && hx_hdrs_connection_lists(&r->hdrs, h->name.ptr, h->name.len))
            continue;
        if (h->name.len == 2 && strncasecmp(h->name.ptr, "te", 2) == 0 && h->value.len >= 8 &&
            strncasecmp(h->value.ptr, "trailers", 8) == 0)
            te_trailers = 1; /* the one TE value HTTP/2 allows: gRPC needs it */
        if (is_hop(h->name.ptr, h->name.len) ||
            (h->name.len == 14 && strncasecmp(h->name.ptr, "content-length", 14) == 0))
            continue;
        char *ln = lower_dup(&r->arena, h->name.ptr, h->name.len);
        if (ln == NULL)
            return -1;
        nv[n++] = (nghttp2_nv){(uint8_t *)ln, (uint8_t *)h->value.ptr, h->name.len, h->value.len,
                               NGHTTP2_NV_FLAG_NONE};
    }
    if (te_trailers)
        NV("te", "trailers", 8);
    if (r->content_length >= 0 && (r->has_body || r->method_id == HTTP_POST ||
                                   r->method_id == HTTP_PUT)) {
        char *cl = hx_arena_alloc(&r->arena, 24);
        if (cl == NULL)
            return -1;
        size_t cln = hx_u64_dec(cl, (unsigned long long)r->content_length);
        NV("content-length", cl, cln);
    }
    if (r->conn) {
        /* the same X-Forwarded-* / Forwarded rules as HTTP/1.1 upstreams */
        const char *xff, *xfp, *xfh, *fwd;
        if (hx_proxy_forwarded(r, &xff, &xfp, &xfh, &fwd) != 0)
            return -1;
        NV("x-forwarded-for", xff, strlen(xff));
        NV("x-forwarded-proto", xfp, strlen(xfp));
        if (xfh)
            NV("x-forwarded-host", xfh, strlen(xfh));
        NV("forwarded", fwd, strlen(fwd));
    }
#undef NV
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = body_read_cb};
    int32_t id = nghttp2_submit_request(c->s, NULL, nv, n, r->has_body ? &prd : NULL, st);
    if (id < 0)
        return -1;
    st->id = id;
    c->nstreams++;
    st->onext = c->open;
    if (c->open)
        c->open->oprev = st;
    c->open = st;
    stream_touch(st);
    if (r->has_body && !r->body_done)
        st->need_body = 1;
    return 0;
}

/* ------------------------------------------------------------------ */
/* nghttp2 callbacks                                                   */

static hx_h2up_stream *SD(nghttp2_session *s, int32_t id)
{
    return nghttp2_session_get_stream_user_data(s, id);
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    (void)flags;
    (void)user;
    hx_h2up_stream *st = SD(s, f->hd.stream_id);
    if (st == NULL || st->r == NULL || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    hx_req *r = st->r;
    const char *n = (const char *)name, *v = (const char *)value;
    if (namelen == 7 && memcmp(n, ":status", 7) == 0) {
        int status = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            status = status * 10 + (v[i] - '0');
        if (status >= 200) {
            r->status = status;
            r->rhdrs.n = 0;
        }
        return 0;
    }
    if (namelen && n[0] == ':')
        return 0;
    hx_hdrs *dst = st->head_seen ? &r->trailers : &r->rhdrs;
    if (hx_hdrs_add(&r->arena, dst, n, namelen, v, valuelen) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static void stream_finish(hx_h2up_stream *st)
{
    hx_req *r = st->r;
    if (r == NULL)
        return;
    hx_backend *b = st->b;
    hx_req_enter(r);
    hx_proxy_report(r, b, HELIOS_OUTCOME_OK, r->status);
    stream_let_go(st);
    hx_resp_body(r, NULL, 0, 1);
    hx_req_leave(r);
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    hx_h2up_conn *c = user;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        c->goaway = 1;
        return 0;
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    hx_h2up_stream *st = SD(s, f->hd.stream_id);
    if (st == NULL || st->r == NULL)
        return 0;
    stream_touch(st);
    int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    hx_req *r = st->r;
    if (f->hd.type == NGHTTP2_HEADERS && !st->head_seen) {
        if (r->status < 200)
            return 0; /* an interim response */
        st->head_seen = 1;
        r->upstream_bytes_seen = 1;
        if (r->att_open)
            hx_proxy_first_byte(r);
        hx_req_enter(r);
        if (end) {
            /* a response that is all head (gRPC's trailers-only) */
            if (r->h2s)
                r->end_with_head = 1;
            else if (hx_hdrs_get(&r->rhdrs, "content-length").ptr == NULL)
                hx_hdrs_add(&r->arena, &r->rhdrs, "content-length", 14, "0", 1);
        }
        hx_resp_begin(r);
        hx_req_leave(r);
        if (end && st->r) {
            st->got_final = 1;
            stream_finish(st);
        }
        return 0;
    }
    if (end) {
        st->got_final = 1;
        stream_finish(st);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    (void)flags;
    (void)user;
    hx_h2up_stream *st = SD(s, id);
    if (st == NULL || st->r == NULL || !st->head_seen) {
        nghttp2_session_consume(s, id, len);
        return 0;
    }
    hx_req *r = st->r;
    hx_req_enter(r);
    hx_resp_body(r, (const char *)data, len, 0);
    /* acknowledge now if the client side has room, else when it drains */
    if (st->r && hx_req_pending(r) > r->gen->limits.max_body_buffer)
        st->unconsumed += len;
    else
        nghttp2_session_consume(s, id, len);
    hx_req_leave(r);
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *user)
{
    hx_h2up_conn *c = user;
    hx_h2up_stream *st = SD(s, id);
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(s, id, NULL);
    if (c->nstreams)
        c->nstreams--;
    if (st->oprev)
        st->oprev->onext = st->onext;
    else
        c->open = st->onext;
    if (st->onext)
        st->onext->oprev = st->oprev;
    if (st->r && !st->got_final) {
        char why[160];
        int refused = code == NGHTTP2_REFUSED_STREAM;
        snprintf(why, sizeof(why), "backend %s %s HTTP/2 stream %d (%s)", c->b->address,
                 refused ? "refused" : "reset", id, nghttp2_http2_strerror(code));
        /* refused streams were never processed: as safe as a failed connect */
        stream_fail(st, refused ? HELIOS_OUTCOME_CONNECT_FAILED : HELIOS_OUTCOME_RESET, why);
    }
    stream_free(st);
    return 0;
}

/* ------------------------------------------------------------------ */
/* connections                                                         */

static void pool_unlink(hx_h2up_conn *c)
{
    hx_h2up_conn **pp = hx_pool_h2(c->w, c->b);
    for (; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    c->next = NULL;
}

/* Fails every stream still waiting or open on C, then frees C. */
static void conn_close(hx_h2up_conn *c, const char *why)
{
    if (!c->closing) {
        c->closing = 1;
        c->was_ready = c->state == H2C_READY;
    }
    c->state = H2C_DEAD;
    if (c->busy) {
        c->zombie = 1; /* the outermost caller closes it */
        return;
    }
    int was_ready = c->was_ready;
    c->busy++;
    pool_unlink(c);
    ev_io_stop(c->w->loop, &c->rio);
    ev_io_stop(c->w->loop, &c->wio);
    ev_timer_stop(c->w->loop, &c->timer);
    /* queued streams never went out: a connect failure for them */
    while (c->queue) {
        hx_h2up_stream *st = c->queue;
        c->queue = st->qnext;
        stream_fail(st, was_ready ? HELIOS_OUTCOME_RESET : HELIOS_OUTCOME_CONNECT_FAILED, why);
        stream_free(st);
    }
    /* open streams end with the connection (nghttp2_session_del calls
     * no callback) */
    while (c->open) {
        hx_h2up_stream *st = c->open;
        c->open = st->onext;
        if (c->s)
            nghttp2_session_set_stream_user_data(c->s, st->id, NULL);
        if (st->r && !st->got_final)
            stream_fail(st, st->head_seen ? HELIOS_OUTCOME_RESET
                                          : (was_ready ? HELIOS_OUTCOME_RESET
                                                       : HELIOS_OUTCOME_CONNECT_FAILED),
                        why);
        stream_free(st);
    }
    if (c->s) {
        nghttp2_session_del(c->s);
        c->s = NULL;
    }
    if (c->ssl) {
        ERR_clear_error();
        SSL_free(c->ssl);
    }
    if (c->fd >= 0)
        close(c->fd);
    hx_buf_free(&c->out);
    free(c);
}

static int conn_flush(hx_h2up_conn *c)
{
    while (hx_buf_size(&c->out) > 0) {
        ssize_t n = c_send(c, hx_buf_head(&c->out), hx_buf_size(&c->out));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            conn_close(c, "sending to the backend failed");
            return 1;
        }
        c->last_io = ev_now(c->w->loop);
        hx_buf_consume(&c->out, (size_t)n);
    }
    if (hx_buf_size(&c->out) > 0)
        ev_io_start(c->w->loop, &c->wio);
    else
        ev_io_stop(c->w->loop, &c->wio);
    return 0;
}

/* Serialises frames and sends them. */
static int conn_pump(hx_h2up_conn *c)
{
    if (c->busy)
        return 0;
    if (c->zombie) {
        c->zombie = 0;
        conn_close(c, "connection closed");
        return 1;
    }
    if (c->state != H2C_READY)
        return 0;
    c->busy++;
    while (hx_buf_size(&c->out) < H2UP_OUT_AHEAD) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->s, &data);
        if (n < 0) {
            c->busy--;
            conn_close(c, nghttp2_strerror((int)n));
            return 1;
        }
        if (n == 0)
            break;
        hx_buf_append(&c->out, data, (size_t)n);
    }
    c->busy--;
    if (c->zombie) {
        c->zombie = 0;
        conn_close(c, "connection closed");
        return 1;
    }
    if (conn_flush(c))
        return 1;
    return conn_update(c);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    hx_h2up_conn *c = t->data;
    char why[160];
    if (c->state != H2C_READY)
        snprintf(why, sizeof(why), "connect to %s timed out", c->b->address);
    else
        snprintf(why, sizeof(why), "idle HTTP/2 connection to %s", c->b->address);
    conn_close(c, why);
}

/* Idle timer when no stream is open; the session ending closes too. */
static int conn_update(hx_h2up_conn *c)
{
    if (c->state != H2C_READY)
        return 0;
    if (!nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s) &&
        hx_buf_size(&c->out) == 0) {
        conn_close(c, "HTTP/2 session ended");
        return 1;
    }
    if (c->goaway && c->nstreams == 0 && c->queue == NULL) {
        conn_close(c, "HTTP/2 connection drained");
        return 1;
    }
    if (c->nstreams == 0) {
        if (!ev_is_active(&c->timer)) {
            ev_timer_set(&c->timer, c->u->keepalive_idle_ms / 1000.0, 0.);
            ev_timer_start(c->w->loop, &c->timer);
        }
    } else if (ev_is_active(&c->timer)) {
        ev_timer_stop(c->w->loop, &c->timer);
    }
    return 0;
}

static void submit_queued(hx_h2up_conn *c)
{
    while (c->queue) {
        hx_h2up_stream *st = c->queue;
        c->queue = st->qnext;
        if (c->queue == NULL)
            c->qtail = NULL;
        st->qnext = NULL;
        if (st->r == NULL) {
            stream_free(st);
            continue;
        }
        if (stream_submit(c, st) != 0) {
            stream_fail(st, HELIOS_OUTCOME_CONNECT_FAILED, "cannot submit the HTTP/2 request");
            stream_free(st);
        }
    }
}

static void conn_read_cb(struct ev_loop *loop, ev_io *io, int revents);
static void conn_write_cb(struct ev_loop *loop, ev_io *io, int revents);

/* Streams whose request body buffer drained ask their client side for
 * more. Runs from event callbacks only; the connection is held busy so no
 * stream goes away during the walk. */
static void kick_bodies(hx_h2up_conn *c)
{
    if (c->state != H2C_READY || c->busy)
        return;
    int any = 0;
    c->busy++;
    for (hx_h2up_stream *st = c->open; st; st = st->onext) {
        if (!st->need_body)
            continue;
        st->need_body = 0;
        hx_req *r = st->r;
        if (r == NULL || r->body_done)
            continue;
        any = 1;
        hx_req_enter(r);
        hx_req_body_wanted(r);
        hx_req_leave(r);
    }
    c->busy--;
    if (c->zombie) {
        c->zombie = 0;
        conn_close(c, "connection closed");
        return;
    }
    if (any)
        conn_pump(c);
}

static int session_new(hx_h2up_conn *c)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return -1;
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
    int rv = nghttp2_session_client_new2(&c->s, cb, c, opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    if (rv != 0)
        return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
    };
    nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(c->s, NGHTTP2_FLAG_NONE, 0, 16 << 20);
    return 0;
}

static void conn_ready(hx_h2up_conn *c)
{
    if (c->ssl) {
        const unsigned char *p = NULL;
        unsigned int l = 0;
        SSL_get0_alpn_selected(c->ssl, &p, &l);
        if (!(l == 2 && memcmp(p, "h2", 2) == 0)) {
            char why[160];
            snprintf(why, sizeof(why), "backend %s did not agree to h2 in ALPN", c->b->address);
            conn_close(c, why);
            return;
        }
    }
    if (session_new(c) != 0) {
        conn_close(c, "cannot create an HTTP/2 session");
        return;
    }
    c->state = H2C_READY;
    ev_timer_stop(c->w->loop, &c->timer);
    ev_io_stop(c->w->loop, &c->wio);
    ev_set_cb(&c->rio, conn_read_cb);
    ev_set_cb(&c->wio, conn_write_cb);
    ev_io_start(c->w->loop, &c->rio);
    c->busy++;
    submit_queued(c);
    c->busy--;
    if (c->zombie) {
        c->zombie = 0;
        conn_close(c, "connection closed");
        return;
    }
    if (conn_pump(c) == 0)
        kick_bodies(c);
}

static void tls_step(hx_h2up_conn *c)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        conn_ready(c);
        return;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        ev_io_stop(c->w->loop, &c->wio);
        ev_io_start(c->w->loop, &c->rio);
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        ev_io_start(c->w->loop, &c->wio);
        return;
    }
    char why[320], ebuf[200] = "";
    unsigned long err = ERR_get_error();
    if (err)
        ERR_error_string_n(err, ebuf, sizeof(ebuf));
    ERR_clear_error();
    snprintf(why, sizeof(why), "TLS handshake with %s failed: %s", c->b->address,
             err ? ebuf : "connection closed");
    conn_close(c, why);
}

static void connecting_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_h2up_conn *c = io->data;
    if (c->state == H2C_TLS) {
        tls_step(c);
        return;
    }
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    ev_io_stop(c->w->loop, &c->wio);
    if (err) {
        char why[160];
        snprintf(why, sizeof(why), "connect to %s failed: %s", c->b->address, strerror(err));
        conn_close(c, why);
        return;
    }
    if (c->u->tls) {
        c->ssl = hx_tls_connect(c->u->tls, c->fd);
        if (c->ssl == NULL) {
            conn_close(c, "cannot create a TLS session");
            return;
        }
        c->state = H2C_TLS;
        tls_step(c);
        return;
    }
    conn_ready(c);
}

static void conn_read_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_h2up_conn *c = io->data;
    uint8_t buf[65536];
    for (int round = 0; round < 4; round++) {
        ssize_t n = c_recv(c, buf, sizeof(buf));
        if (n > 0) {
            c->last_io = ev_now(c->w->loop);
            c->busy++;
            ssize_t used = nghttp2_session_mem_recv(c->s, buf, (size_t)n);
            c->busy--;
            if (used < 0 || c->zombie) {
                char why[160];
                snprintf(why, sizeof(why), "HTTP/2 from %s: %s", c->b->address,
                         used < 0 ? nghttp2_strerror((int)used) : "connection closed");
                c->zombie = 0;
                conn_close(c, why);
                return;
            }
            if (!(c->ssl && SSL_has_pending(c->ssl)))
                break;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        char why[160];
        snprintf(why, sizeof(why), "backend %s %s the HTTP/2 connection", c->b->address,
                 n == 0 ? "closed" : "reset");
        conn_close(c, why);
        return;
    }
    if (conn_pump(c) == 0)
        kick_bodies(c);
}

static void conn_write_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_h2up_conn *c = io->data;
    if (conn_flush(c))
        return;
    if (c->state == H2C_READY && hx_buf_size(&c->out) < H2UP_OUT_AHEAD / 2 && conn_pump(c) == 0)
        kick_bodies(c);
}

static hx_h2up_conn *conn_new(hx_worker *w, hx_backend *b, const hx_upstream *u)
{
    hx_h2up_conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->w = w;
    c->b = b;
    c->u = u;
    c->state = H2C_CONNECTING;
    c->fd = socket(b->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ev_init(&c->rio, connecting_cb);
    ev_init(&c->wio, connecting_cb);
    ev_init(&c->timer, conn_timer_cb);
    c->rio.data = c->wio.data = c->timer.data = c;
    hx_h2up_conn **head = hx_pool_h2(w, b);
    c->next = *head;
    *head = c;
    if (c->fd < 0)
        return c; /* failed on first use below */
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ev_io_set(&c->rio, c->fd, EV_READ);
    ev_io_set(&c->wio, c->fd, EV_WRITE);
    ev_timer_set(&c->timer, u->connect_timeout_ms / 1000.0, 0.);
    ev_timer_start(w->loop, &c->timer);
    if (connect(c->fd, (struct sockaddr *)&b->addr.ss, b->addr.len) != 0 && errno != EINPROGRESS) {
        c->state = H2C_DEAD; /* reported when the first stream is queued */
        return c;
    }
    ev_io_start(w->loop, &c->wio);
    return c;
}

/* ------------------------------------------------------------------ */
/* entry points                                                        */

void hx_h2up_start(hx_req *r, hx_backend *b)
{
    const hx_upstream *u = r->route->upstream;
    hx_worker *w = r->w;
    hx_h2up_conn *c = *hx_pool_h2(w, b);
    for (; c; c = c->next) {
        if (c->state == H2C_DEAD || c->goaway)
            continue;
        uint32_t max = c->s ? nghttp2_session_get_remote_settings(
                                  c->s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
                            : 100;
        unsigned queued = 0;
        for (hx_h2up_stream *q = c->queue; q; q = q->qnext)
            queued++;
        if (c->nstreams + queued < max)
            break;
    }
    if (c == NULL)
        c = conn_new(w, b, u);
    hx_h2up_stream *st = c ? calloc(1, sizeof(*st)) : NULL;
    if (st == NULL) {
        hx_proxy_attempt_end(r, b);
        hx_req_error(r, 500, "out of memory");
        return;
    }
    st->r = r;
    st->c = c;
    st->b = b;
    if (r->body_mem.ptr && r->body_done) {
        /* a body held whole (a filter's req_body_hold, a subrequest's)
         * goes as the stream's data, on every attempt */
        if (r->body_mem.len && hx_buf_append(&st->body, r->body_mem.ptr, r->body_mem.len) != 0) {
            hx_buf_free(&st->body);
            free(st);
            hx_proxy_attempt_end(r, b);
            hx_req_error(r, 500, "out of memory");
            return;
        }
        st->body_last = 1;
    }
    ev_init(&st->timer, stream_timer_cb);
    st->timer.data = st;
    r->h2up = st;
    if (c->state == H2C_DEAD) {
        char why[160];
        snprintf(why, sizeof(why), "connect to %s failed: %s", b->address,
                 c->fd < 0 ? strerror(errno) : "refused");
        c->queue = st;
        conn_close(c, why);
        return;
    }
    if (c->state != H2C_READY) {
        if (c->qtail)
            c->qtail->qnext = st;
        else
            c->queue = st;
        c->qtail = st;
        return;
    }
    if (stream_submit(c, st) != 0) {
        r->h2up = NULL;
        stream_free(st);
        hx_proxy_attempt_end(r, b);
        hx_req_error(r, 502, "cannot submit the HTTP/2 request");
        return;
    }
    st->need_body = 0; /* the proxy start asks the client side itself */
    conn_pump(c);
    if (r->has_body && !r->body_done)
        hx_req_body_wanted(r);
}

int hx_h2up_body(hx_req *r, const char *p, size_t n, int last)
{
    hx_h2up_stream *st = r->h2up;
    if (n && hx_buf_append(&st->body, p, n) != 0)
        return -1;
    if (last)
        st->body_last = 1;
    if (st->deferred && st->id > 0 && (n || last)) {
        st->deferred = 0;
        nghttp2_session_resume_data(st->c->s, st->id);
    }
    conn_pump(st->c);
    return 0;
}

int hx_h2up_body_writable(const hx_req *r)
{
    const hx_h2up_stream *st = r->h2up;
    return st && hx_buf_size(&st->body) < r->gen->limits.max_body_buffer;
}

void hx_h2up_drained(hx_req *r)
{
    hx_h2up_stream *st = r->h2up;
    if (st && st->unconsumed && st->id > 0 && st->c->s) {
        nghttp2_session_consume(st->c->s, st->id, st->unconsumed);
        st->unconsumed = 0;
        conn_pump(st->c);
    }
}

void hx_h2up_detach(hx_req *r)
{
    hx_h2up_stream *st = r->h2up;
    if (st == NULL)
        return;
    hx_h2up_conn *c = st->c;
    stream_let_go(st);
    if (st->id > 0 && c->s && c->state == H2C_READY) {
        nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        conn_pump(c);
    }
    /* a queued stream stays in the queue with no request: skipped there */
}

void hx_h2up_drain(hx_worker *w, hx_backend *b)
{
    hx_h2up_conn **head = hx_pool_h2(w, b);
    hx_h2up_conn *c = *head;
    while (c) {
        hx_h2up_conn *next = c->next;
        c->goaway = 1;
        if (c->nstreams == 0 && c->queue == NULL)
            conn_close(c, "draining");
        c = next;
    }
}
