/*
 * upstream.c - proxying a request to a backend over HTTP/1.1, with
 * per-worker keep-alive pools.
 *
 * Backpressure: the client's bytes are read only while the upstream output
 * buffer is below limits.max_body_buffer, and the upstream is read only
 * while the client output buffer is below it, so a transfer of any size
 * holds at most about two buffers plus one read per direction.
 */
#include <assert.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "proxy/h2up.h"
#include "http/subreq.h"
#include "http/transport.h"
#include "proxy/tunnel.h"
#include "proxy/upstream.h"

/* io: uring (D75): watchers of sockets the ring drives are fed by it */
#define ev_io_start hx_io_start
#define ev_io_stop hx_io_stop

#define HX_UP_READ 65536

typedef struct hx_pool {
    _Alignas(64) hx_upconn *idle; /* one cache line per worker */
    unsigned nidle;
    struct hx_h2up_conn *h2; /* HTTP/2 connections to the backend (h2up.c) */
} hx_pool;

enum { UP_CONNECTING = 1, UP_ACTIVE, UP_IDLE };

struct hx_upconn {
    hx_worker *w;
    hx_backend *b;
    const hx_upstream *u;
    int fd;
    int state;
    ev_io rio, wio;
    ev_timer timer;
    llhttp_t parser;
    hx_hdr_builder hb;
    hx_buf out;
    hx_req *req;
    ev_tstamp last_io;
    int reused;
    SSL *ssl;     /* TLS to the backend, or NULL */
    int in_parse; /* inside llhttp_execute: closing is deferred */
    int zombie;   /* closed while in_parse */
    int reading_paused;  /* client output is full */
    int resp_complete;
    int body_queued_all; /* the whole request body is in `out` or sent */
    unsigned ignored_1xx;
    hx_upconn *next, *prev;
};


static void up_close(hx_upconn *u);
static int retry_allowed(hx_req *r, unsigned cond);
static void up_fail(hx_upconn *u, int outcome, const char *why);
static void up_update_timer(hx_upconn *u);
static int up_time_left(const hx_upconn *u, ev_tstamp *after);
static const llhttp_settings_t *resp_settings(void);

/* ------------------------------------------------------------------ */
/* pools                                                               */

int hx_backend_pools_init(hx_backend *b, unsigned nworkers)
{
    if (b->pools)
        return 0;
    b->pools = aligned_alloc(64, (nworkers ? nworkers : 1) * sizeof(hx_pool));
    if (b->pools)
        memset(b->pools, 0, (nworkers ? nworkers : 1) * sizeof(hx_pool));
    return b->pools ? 0 : -1;
}

void hx_backend_pools_free(hx_backend *b)
{
    free(b->pools);
    b->pools = NULL;
}

static hx_pool *pool_of(hx_worker *w, hx_backend *b) { return &b->pools[w->id]; }

struct hx_h2up_conn **hx_pool_h2(hx_worker *w, hx_backend *b) { return &pool_of(w, b)->h2; }

static void pool_remove(hx_upconn *u)
{
    hx_pool *p = pool_of(u->w, u->b);
    if (u->prev)
        u->prev->next = u->next;
    else
        p->idle = u->next;
    if (u->next)
        u->next->prev = u->prev;
    u->next = u->prev = NULL;
    p->nidle--;
}

static void pool_drain(hx_worker *w, hx_backend *b)
{
    if (b->pools == NULL)
        return;
    hx_pool *p = pool_of(w, b);
    hx_h2up_drain(w, b);
    while (p->idle) {
        hx_upconn *u = p->idle;
        pool_remove(u);
        u->state = 0;
        up_close(u);
    }
}

void hx_pools_close_gen(hx_worker *w, hx_gen *g)
{
    for (size_t i = 0; i < g->nupstreams; i++) {
        hx_upstream *up = g->upstreams[i];
        hx_backends *bs = atomic_load(&up->backends);
        for (size_t j = 0; bs && j < bs->n; j++)
            pool_drain(w, bs->v[j]);
        /* workers are all done with this generation: no lock needed */
        for (size_t j = 0; j < up->nremoved; j++)
            pool_drain(w, up->removed[j]);
    }
}

void hx_pool_drain_backend(hx_worker *w, hx_backend *b) { pool_drain(w, b); }

/* ------------------------------------------------------------------ */

/* ABI 1.3: the balancer that picked an attempt hears how it ended
 * (module.h, "When the upstream hooks fire"). r->att_open is set only for
 * balancers with on_attempt_end, so others pay one branch. */
static int has_attempt_hook(const helios_balancer_hooks *bh)
{
    return bh->size >=
               offsetof(helios_balancer_hooks, on_attempt_end) + sizeof(bh->on_attempt_end) &&
           bh->on_attempt_end != NULL;
}

static void attempt_ended(hx_req *r, hx_backend *b, int outcome, int status)
{
    r->att_open = 0;
    /* not r->route: a failed response filter clears it before detaching */
    size_t ui = r->att_up;
    const hx_instance *bal = r->wg->bal[ui];
    if ((const void *)bal != r->att_bal)
        return; /* switched (ctl_balancer_set) since the pick: not its attempt */
    ev_tstamp now = ev_time();
    helios_attempt a = {
        .size = sizeof(a),
        .backend = (helios_backend *)b,
        .index = r->att_index,
        .outcome = outcome,
        .status = status,
        .first_byte_us = r->att_first > 0 ? (int64_t)((r->att_first - r->att_start) * 1e6) : -1,
        .last_byte_us = (int64_t)((now - r->att_start) * 1e6),
        .attempt = r->attempts,
    };
    helios_ctx ctx = {.size = sizeof(ctx),
                      .cfg = bal->cfg,
                      .wstate = r->wg->bal_ws[ui],
                      .rstate = &r->att_slot,
                      .req = (helios_request *)r,
                      .worker = (helios_worker *)r->w};
    bal->mod->balancer->on_attempt_end(&ctx, &a);
}

/* The first response byte of an attempt (for helios_attempt). */
void hx_proxy_first_byte(hx_req *r)
{
    if (r->att_first == 0)
        r->att_first = ev_time();
}

void hx_proxy_report(hx_req *r, hx_backend *b, int outcome, int status)
{
    if (outcome != HELIOS_OUTCOME_OK)
        atomic_fetch_add_explicit(&b->failures, 1, memory_order_relaxed);
    for (size_t i = 0; i < r->gen->nglobal; i++) {
        const hx_instance *inst = r->gen->global[i];
        if (inst->mod->health && inst->mod->health->on_upstream_result) {
            helios_ctx ctx;
            hx_ctx_init(&ctx, r, inst);
            inst->mod->health->on_upstream_result(&ctx, (helios_backend *)b, outcome, status);
        }
    }
    if (r->att_open)
        attempt_ended(r, b, outcome, status);
}

/* Set around one pick when the upstream is in panic mode (see panic_mode):
 * health marks are ignored then, drains and open breakers are not. */
static _Thread_local int panic_pick;

int hx_backend_usable(const hx_backend *b)
{
    if ((!panic_pick && !atomic_load_explicit(&b->healthy, memory_order_relaxed)) ||
        atomic_load_explicit(&b->draining, memory_order_relaxed))
        return 0;
    int br = atomic_load_explicit(&b->breaker, memory_order_relaxed);
    if (br == HELIOS_BREAKER_OPEN)
        return 0;
    if (br == HELIOS_BREAKER_HALF_OPEN)
        return atomic_load_explicit(&b->trials, memory_order_relaxed) <
               atomic_load_explicit(&b->breaker_max_trials, memory_order_relaxed);
    return 1;
}

/* A half-open breaker admits at most max_trials attempts at a time: the
 * slot is taken here, after the pick, with a CAS so two workers cannot both
 * take the last one. */
static int take_trial(hx_req *r, hx_backend *b)
{
    if (atomic_load_explicit(&b->breaker, memory_order_acquire) != HELIOS_BREAKER_HALF_OPEN)
        return 1;
    uint32_t max = atomic_load(&b->breaker_max_trials);
    uint32_t cur = atomic_load(&b->trials);
    while (cur < max)
        if (atomic_compare_exchange_weak(&b->trials, &cur, cur + 1)) {
            r->trial = 1;
            return 1;
        }
    return 0;
}

static void release_trial(hx_req *r, hx_backend *b)
{
    if (r->trial) {
        r->trial = 0;
        atomic_fetch_sub(&b->trials, 1);
    }
}

/* An attempt on B ends (any protocol): its in-flight count and half-open
 * trial slot go back. */
void hx_proxy_attempt_end(hx_req *r, hx_backend *b)
{
    if (r->att_open)
        attempt_ended(r, b, HELIOS_OUTCOME_CANCELLED, r->status);
    release_trial(r, b);
    r->up_end = ev_now(r->w->loop);
    atomic_fetch_sub_explicit(&b->inflight, 1, memory_order_relaxed);
}

static void detach_req(hx_upconn *u)
{
    hx_req *r = u->req;
    if (r == NULL)
        return;
    if (r->att_open)
        attempt_ended(r, u->b, HELIOS_OUTCOME_CANCELLED, r->status);
    release_trial(r, u->b);
    r->up = NULL;
    r->up_end = ev_now(u->w->loop);
    u->req = NULL;
    atomic_fetch_sub_explicit(&u->b->inflight, 1, memory_order_relaxed);
}

static void up_close(hx_upconn *u)
{
    detach_req(u);
    if (u->in_parse) {
        u->zombie = 1;
        return;
    }
    if (u->state == UP_IDLE)
        pool_remove(u);
    ev_io_stop(u->w->loop, &u->rio);
    ev_io_stop(u->w->loop, &u->wio);
    ev_timer_stop(u->w->loop, &u->timer);
    if (u->ssl) {
        if (u->state == UP_IDLE)
            SSL_shutdown(u->ssl); /* close_notify, best effort */
        ERR_clear_error();
        SSL_free(u->ssl);
        u->ssl = NULL;
    }
    if (u->fd >= 0)
        hx_fd_close(u->fd);
    hx_buf_free(&u->out);
    hx_buf_free(&u->hb.name);
    hx_buf_free(&u->hb.value);
    free(u);
}

static void idle_read_cb(struct ev_loop *loop, ev_io *io, int revents);

/* The exchange finished cleanly: keep the connection if we may. */
static void up_release(hx_upconn *u)
{
    hx_req *r = u->req;
    int keep = llhttp_should_keep_alive(&u->parser) && u->body_queued_all &&
               !atomic_load_explicit(&u->b->removed, memory_order_relaxed) &&
               hx_buf_size(&u->out) == 0 && u->u->keepalive_max_idle > 0 && !u->w->stopping &&
               r && r->wg->current;
    hx_pool *p = pool_of(u->w, u->b);
    if (keep && p->nidle >= u->u->keepalive_max_idle)
        keep = 0;
    detach_req(u);
    if (!keep) {
        up_close(u);
        return;
    }
    /* The read watcher stays on (libev lets a callback change at any
     * time): a stop and a start per request saved. A pending event of the
     * exchange is dropped, as ev_io_stop would. */
    ev_clear_pending(u->w->loop, &u->rio);
    ev_set_cb(&u->rio, idle_read_cb);
    ev_io_start(u->w->loop, &u->rio); /* after a read pause; else a no-op */
    ev_io_stop(u->w->loop, &u->wio);
    u->state = UP_IDLE;
    u->last_io = ev_now(u->w->loop);
    u->next = p->idle;
    u->prev = NULL;
    if (p->idle)
        p->idle->prev = u;
    p->idle = u;
    p->nidle++;
    up_update_timer(u);
}

static void idle_read_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_upconn *u = io->data;
    if (u->ssl) {
        /* TLS 1.3 servers send session tickets after the handshake: those
         * are not data; only data or the end makes the connection unusable */
        char b;
        ERR_clear_error();
        int rc = SSL_read(u->ssl, &b, 1);
        if (rc <= 0 && SSL_get_error(u->ssl, rc) == SSL_ERROR_WANT_READ)
            return;
        ERR_clear_error();
    }
    /* an idle backend connection that becomes readable was closed (or
     * sent garbage): either way it is not reusable */
    up_close(u);
}

/* ------------------------------------------------------------------ */
/* request serialisation                                               */

static int peer_trusted(const hx_req *r)
{
    for (size_t i = 0; i < r->gen->ntrusted; i++)
        if (hx_cidr_match(&r->gen->trusted[i], (const struct sockaddr *)&r->conn->peer))
            return 1;
    return 0;
}

/* Copies into room reserved beforehand; returns the end. putl is for
 * literals (always inlined: strlen folds to a constant). */
static inline char *put(char *o, const char *p, size_t n)
{
    hx_copy(o, p, n);
    return o + n;
}

static inline __attribute__((always_inline)) char *putl(char *o, const char *s)
{
    return put(o, s, strlen(s));
}

/*
 * X-Forwarded-For / -Proto / -Host and Forwarded: extend what a trusted
 * proxy sent, replace the rest. The values are written by these helpers,
 * shared by the HTTP/1.1 serialiser (straight into the request bytes) and
 * the HTTP/2 upstream side (hx_proxy_forwarded, as separate strings). They
 * write into room reserved beforehand: fwd_room is the most all four take.
 */
typedef struct fwd_in {
    int trusted;    /* the peer is in trusted_proxies */
    char peer[HX_IP_STRLEN];
    size_t peer_len;
    int peer_v6;    /* an IPv6 address: bracketed in Forwarded */
    const char *scheme;
    size_t scheme_len;
    helios_buf xff, fwd, xfp, xfh; /* what the client sent */
} fwd_in;

static void fwd_start(fwd_in *f, hx_req *r)
{
    f->trusted = peer_trusted(r);
    hx_addr_ip_str(&r->conn->peer.sa, f->peer, sizeof(f->peer));
    f->peer_len = strlen(f->peer);
    f->peer_v6 = memchr(f->peer, ':', f->peer_len) != NULL;
    f->scheme = r->conn->ssl ? "https" : "http";
    f->scheme_len = r->conn->ssl ? 5 : 4;
}

static size_t fwd_room(const fwd_in *f, const hx_req *r)
{
    return f->xff.len + f->fwd.len + f->xfp.len + f->xfh.len + 2 * f->peer_len + 2 * r->host.len +
           64;
}

static char *put_xff(char *o, const fwd_in *f)
{
    if (f->trusted && f->xff.len) {
        o = put(o, f->xff.ptr, f->xff.len);
        o = putl(o, ", ");
    }
    return put(o, f->peer, f->peer_len);
}

static char *put_xfp(char *o, const fwd_in *f)
{
    if (f->trusted && f->xfp.len)
        return put(o, f->xfp.ptr, f->xfp.len);
    return put(o, f->scheme, f->scheme_len);
}

/* PREFIX then the value; nothing when there is no X-Forwarded-Host (then
 * O comes back unchanged). */
static char *put_xfh(char *o, const fwd_in *f, const hx_req *r, const char *prefix, size_t pl)
{
    helios_buf v = f->trusted && f->xfh.len ? f->xfh : r->host;
    if (v.len == 0)
        return o;
    o = put(o, prefix, pl);
    return put(o, v.ptr, v.len);
}

static char *put_fwd(char *o, const fwd_in *f, const hx_req *r)
{
    if (f->trusted && f->fwd.len) {
        o = put(o, f->fwd.ptr, f->fwd.len);
        o = putl(o, ", ");
    }
    if (f->peer_v6) {
        o = putl(o, "for=\"[");
        o = put(o, f->peer, f->peer_len);
        o = putl(o, "]\"");
    } else {
        o = putl(o, "for=");
        o = put(o, f->peer, f->peer_len);
    }
    if (r->host.len) {
        o = putl(o, ";host=\"");
        o = put(o, r->host.ptr, r->host.len);
        o = putl(o, "\"");
    }
    o = putl(o, ";proto=");
    return put(o, f->scheme, f->scheme_len);
}

/* O..END as a string in R's arena. */
static const char *fwd_dup(hx_req *r, const char *o, const char *end)
{
    return hx_arena_strndup(&r->arena, o, (size_t)(end - o));
}

/* The four values as strings in R's arena, for the HTTP/2 upstream side;
 * *XFH is NULL when there is none. Returns 0 or -1. */
int hx_proxy_forwarded(hx_req *r, const char **xff, const char **xfp, const char **xfh,
                       const char **fwd)
{
    fwd_in f;
    fwd_start(&f, r);
    f.xff = hx_hdrs_get(&r->hdrs, "x-forwarded-for");
    f.fwd = hx_hdrs_get(&r->hdrs, "forwarded");
    f.xfp = hx_hdrs_get(&r->hdrs, "x-forwarded-proto");
    f.xfh = hx_hdrs_get(&r->hdrs, "x-forwarded-host");
    char *b = hx_arena_alloc(&r->arena, fwd_room(&f, r));
    if (b == NULL)
        return -1;
    char *e = put_xff(b, &f);
    *xff = fwd_dup(r, b, e);
    e = put_xfp(b, &f);
    *xfp = fwd_dup(r, b, e);
    e = put_xfh(b, &f, r, "", 0);
    *xfh = e != b ? fwd_dup(r, b, e) : NULL;
    e = put_fwd(b, &f, r);
    *fwd = fwd_dup(r, b, e);
    return *xff && *xfp && *fwd ? 0 : -1;
}

static int is_named(const hx_hdr *h, const char *name, size_t n)
{
    return hx_name_is(h->name.ptr, h->name.len, name, n);
}

/* The request head for an HTTP/1.1 backend, into O. Room for it all is
 * reserved once (every header's length summed first), then plain copies.
 * 0, or -1 out of memory. */
static int serialize_request(hx_req *r, hx_buf *o)
{
    if (r->sub)
        return hx_sub_serialize(r, o);
    fwd_in f = {0};
    fwd_start(&f, r);
    int have_host = 0, has_connection = 0;
    size_t need = r->method.len + r->target.len + 16;
    for (size_t i = 0; i < r->hdrs.n; i++) {
        const hx_hdr *h = &r->hdrs.v[i];
        need += h->name.len + h->value.len + 4;
        has_connection |= is_named(h, "connection", 10);
    }
    /* what the client's headers become is counted above (each one is
     * copied once at most); the rest: Host, the forwarding headers, the
     * framing and Connection lines */
    const char *baddr = r->backend->address;
    size_t bal = strlen(baddr);
    need += bal + fwd_room(&f, r) + 256;
    if (hx_buf_reserve(o, need) != 0)
        return -1;
    char *p = o->data + o->len;
    char *const p0 = p;
    p = put(p, r->method.ptr, r->method.len);
    *p++ = ' ';
    p = put(p, r->target.ptr, r->target.len);
    p = putl(p, " HTTP/1.1\r\n");
    for (size_t i = 0; i < r->hdrs.n; i++) {
        const hx_hdr *h = &r->hdrs.v[i];
        if (hx_is_hop_header(h->name.ptr, h->name.len) || is_named(h, "content-length", 14) ||
            (has_connection && hx_hdrs_connection_lists(&r->hdrs, h->name.ptr, h->name.len)))
            continue;
        if (is_named(h, "x-forwarded-for", 15)) {
            f.xff = h->value;
            continue;
        }
        if (is_named(h, "forwarded", 9)) {
            f.fwd = h->value;
            continue;
        }
        if (is_named(h, "x-forwarded-proto", 17)) {
            f.xfp = h->value;
            continue;
        }
        if (is_named(h, "x-forwarded-host", 16)) {
            f.xfh = h->value;
            continue;
        }
        if (is_named(h, "host", 4))
            have_host = 1;
        p = put(p, h->name.ptr, h->name.len);
        p = putl(p, ": ");
        p = put(p, h->value.ptr, h->value.len);
        p = putl(p, "\r\n");
    }
    if (!have_host) {
        p = putl(p, "Host: ");
        p = put(p, baddr, bal);
        p = putl(p, "\r\n");
    }
    p = putl(p, "X-Forwarded-For: ");
    p = put_xff(p, &f);
    p = putl(p, "\r\nX-Forwarded-Proto: ");
    p = put_xfp(p, &f);
    static const char xfh_name[] = "\r\nX-Forwarded-Host: ";
    p = put_xfh(p, &f, r, xfh_name, sizeof(xfh_name) - 1);
    p = putl(p, "\r\nForwarded: ");
    p = put_fwd(p, &f, r);
    p = putl(p, "\r\n");
    if (r->up_chunked) {
        p = putl(p, "Transfer-Encoding: chunked\r\n");
    } else if (r->content_length >= 0 && (r->has_body || r->method_id == HTTP_POST ||
                                          r->method_id == HTTP_PUT)) {
        p = putl(p, "Content-Length: ");
        p += hx_u64_dec(p, (unsigned long long)r->content_length);
        p = putl(p, "\r\n");
    }
    if (r->ws_upgrade) {
        /* WebSocket (tunnel.c): the hop-by-hop upgrade is asked again on
         * this hop; the connection is never pooled after a 101 */
        helios_buf up = hx_hdrs_get(&r->hdrs, "upgrade");
        p = putl(p, "Upgrade: ");
        p = put(p, up.ptr, up.len);
        p = putl(p, "\r\nConnection: upgrade\r\n");
    } else if (r->route->upstream->keepalive_max_idle == 0) {
        p = putl(p, "Connection: close\r\n");
    }
    p = putl(p, "\r\n");
    assert((size_t)(p - p0) <= need); /* the fixed parts' 256 still hold */
    (void)p0;
    o->len = (size_t)(p - o->data);
    return 0;
}

/* ------------------------------------------------------------------ */
/* I/O                                                                 */

/* The upstream transport: every byte to and from a backend goes through
 * these two (plain TCP, or TLS with the upstream's `tls:`). Same
 * contract as send(2)/recv(2) on a non-blocking socket. */
static ssize_t up_send(hx_upconn *u, const void *p, size_t n)
{
    return hx_sock_send(u->fd, u->ssl, p, n);
}

/* A read that needs to write first (rare: a key update) waits for the
 * next event; the writer side retries. */
static ssize_t up_recv(hx_upconn *u, void *p, size_t n)
{
    return hx_sock_recv(u->fd, u->ssl, p, n, NULL);
}

/* Decrypted bytes TLS holds that epoll cannot see: read them now. */
static void up_tls_kick_read(hx_upconn *u)
{
    if (u->ssl && ev_is_active(&u->rio) && SSL_has_pending(u->ssl))
        ev_feed_event(u->w->loop, &u->rio, EV_READ);
}

static void up_flush(hx_upconn *u)
{
    while (hx_buf_size(&u->out) > 0) {
        ssize_t n = up_send(u, hx_buf_head(&u->out), hx_buf_size(&u->out));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            /* the backend stopped reading (it may have answered early):
             * keep reading its response */
            hx_buf_reset(&u->out);
            ev_io_stop(u->w->loop, &u->wio);
            return;
        }
        u->last_io = ev_now(u->w->loop);
        hx_buf_consume(&u->out, (size_t)n);
    }
    if (hx_buf_size(&u->out) > 0) {
        if (!ev_is_active(&u->wio))
            ev_io_start(u->w->loop, &u->wio);
    } else if (ev_is_active(&u->wio)) {
        ev_io_stop(u->w->loop, &u->wio);
    }
}

int hx_proxy_body_writable(const hx_req *r)
{
    if (r->h2up)
        return hx_h2up_body_writable(r);
    const hx_upconn *u = r->up;
    return u && u->state == UP_ACTIVE && !u->resp_complete &&
           hx_buf_size(&u->out) < r->gen->limits.max_body_buffer;
}

int hx_proxy_body(hx_req *r, const char *p, size_t n, int last)
{
    if (r->h2up)
        return hx_h2up_body(r, p, n, last);
    hx_upconn *u = r->up;
    if (u == NULL)
        return 0; /* upstream gone (early response): drop */
    if (n) {
        r->req_sent_some = 1;
        if (r->up_chunked) {
            char hdr[24];
            size_t hn = hx_u64_hex(hdr, n);
            hdr[hn++] = '\r';
            hdr[hn++] = '\n';
            hx_buf_append(&u->out, hdr, hn);
            hx_buf_append(&u->out, p, n);
            hx_buf_append(&u->out, "\r\n", 2);
        } else {
            hx_buf_append(&u->out, p, n);
        }
    }
    if (last) {
        if (r->up_chunked)
            hx_buf_append(&u->out, "0\r\n\r\n", 5);
        u->body_queued_all = 1;
    }
    up_flush(u);
    up_update_timer(u);
    return 0;
}

static void up_write_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_upconn *u = io->data;
    hx_req *r = u->req;
    if (r == NULL) {
        up_close(u);
        return;
    }
    hx_conn *c = r->conn;
    hx_req_enter(r);
    up_flush(u);
    /* more request body may now fit */
    if (c && hx_proxy_body_writable(r) && !r->body_done)
        hx_req_body_wanted(r);
    if (r->up == u)
        up_update_timer(u);
    hx_req_leave(r);
}

static void start_exchange(hx_upconn *u);
static void up_read_cb(struct ev_loop *loop, ev_io *io, int revents);

/* One step of the TLS handshake with the backend; on success the exchange
 * starts. Failures are connect failures (retried like them). */
static void up_tls_step(hx_upconn *u)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(u->ssl);
    if (rc == 1) {
        ev_io_stop(u->w->loop, &u->rio);
        ev_io_stop(u->w->loop, &u->wio);
        ev_set_cb(&u->rio, up_read_cb);
        ev_set_cb(&u->wio, up_write_cb);
        start_exchange(u);
        return;
    }
    int e = SSL_get_error(u->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        ev_io_stop(u->w->loop, &u->wio);
        ev_io_start(u->w->loop, &u->rio);
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        ev_io_start(u->w->loop, &u->wio);
        return;
    }
    char why[320], ebuf[200] = "";
    unsigned long err = ERR_get_error();
    if (err)
        ERR_error_string_n(err, ebuf, sizeof(ebuf));
    long vr = SSL_get_verify_result(u->ssl);
    ERR_clear_error();
    snprintf(why, sizeof(why), "TLS handshake with %s failed: %s%s%s", u->b->address,
             err ? ebuf : "connection closed", vr != X509_V_OK ? "; certificate: " : "",
             vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
    up_fail(u, HELIOS_OUTCOME_CONNECT_FAILED, why);
}

static void up_tls_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_upconn *u = io->data;
    hx_req *r = u->req;
    if (r == NULL) {
        up_close(u);
        return;
    }
    hx_req_enter(r);
    up_tls_step(u);
    hx_req_leave(r);
}

/* TCP is up: TLS first when the upstream wants it, then the exchange. */
static void up_connected(hx_upconn *u)
{
    ev_io_stop(u->w->loop, &u->wio);
    if (u->u->tls) {
        u->ssl = hx_tls_connect(u->u->tls, u->fd);
        if (u->ssl == NULL) {
            up_fail(u, HELIOS_OUTCOME_CONNECT_FAILED, "cannot create a TLS session");
            return;
        }
        u->state = UP_CONNECTING; /* the connect timeout covers the handshake */
        ev_set_cb(&u->rio, up_tls_cb);
        ev_set_cb(&u->wio, up_tls_cb);
        up_tls_step(u);
        return;
    }
    if (u->w->uring)
        hx_uring_adopt(u->fd);
    ev_set_cb(&u->wio, up_write_cb);
    start_exchange(u);
}

static void up_connect_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    hx_upconn *u = io->data;
    int err = 0;
    socklen_t len = sizeof(err);
    getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    ev_io_stop(loop, &u->wio);
    hx_req *r = u->req;
    hx_req_enter(r);
    if (err) {
        char why[160];
        snprintf(why, sizeof(why), "connect to %s failed: %s", u->b->address, strerror(err));
        up_fail(u, HELIOS_OUTCOME_CONNECT_FAILED, why);
    } else {
        up_connected(u);
    }
    hx_req_leave(r);
}

static void up_read_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    hx_upconn *u = io->data;
    hx_req *r = u->req;
    if (r == NULL) {
        up_close(u);
        return;
    }
    hx_conn *c = r->conn;
    hx_req_enter(r);
    char buf[HX_UP_READ];
    ssize_t n = up_recv(u, buf, sizeof(buf));
    if (n > 0) {
        u->last_io = ev_now(loop);
        r->upstream_bytes_seen = 1;
        if (r->att_open)
            hx_proxy_first_byte(r);
        u->in_parse = 1;
        llhttp_errno_t e = llhttp_execute(&u->parser, buf, (size_t)n);
        u->in_parse = 0;
        if (u->zombie) {
            up_close(u);
        } else if (e == HPE_PAUSED) {
            /* message complete; bytes after it make the conn unusable */
            const char *pos = llhttp_get_error_pos(&u->parser);
            if (pos != buf + n)
                u->body_queued_all = 0;
            if (u->req == r) {
                hx_proxy_report(r, u->b, HELIOS_OUTCOME_OK, r->status);
                up_release(u);
            }
        } else if (e == HPE_PAUSED_UPGRADE && u->req == r && r->status == 101 &&
                   r->ws_upgrade && c) {
            /* the backend switched protocols: a tunnel from here on */
            const char *pos = llhttp_get_error_pos(&u->parser);
            hx_tunnel_start(r, u, pos, (size_t)(buf + n - pos));
        } else if (e != HPE_OK && r->retry_status && u->req == r) {
            int st = r->retry_status;
            r->retry_status = 0;
            r->rhdrs.n = 0;
            r->upstream_bytes_seen = 0;
            hx_proxy_report(r, u->b, HELIOS_OUTCOME_OK, st);
            hx_info("backend %s answered %d; retrying (attempt %u of %u)", u->b->address, st,
                    r->attempts + 1, r->route->upstream->retry_tries);
            up_close(u);
            hx_proxy_start(r);
        } else if (e != HPE_OK) {
            char why[200];
            snprintf(why, sizeof(why), "invalid response from %s: %s", u->b->address,
                     llhttp_get_error_reason(&u->parser));
            up_fail(u, HELIOS_OUTCOME_BAD_RESPONSE, why);
        } else if (u->req == r) {
            if (c)
                hx_conn_flush(c);
            /* a subrequest's module that paused reads as a full client */
            if (hx_req_pending(r) > r->gen->limits.max_body_buffer) {
                ev_io_stop(loop, &u->rio);
                u->reading_paused = 1;
            }
            up_update_timer(u);
            up_tls_kick_read(u);
        }
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        int reset = n < 0;
        llhttp_errno_t fe = n == 0 && r->upstream_bytes_seen ? llhttp_finish(&u->parser)
                                                              : HPE_INTERNAL;
        if ((fe == HPE_OK || fe == HPE_PAUSED) && u->resp_complete) {
            /* close-delimited body ended */
            hx_proxy_report(r, u->b, HELIOS_OUTCOME_OK, r->status);
            detach_req(u);
            up_close(u);
        } else {
            char why[160];
            snprintf(why, sizeof(why), "backend %s %s", u->b->address,
                     reset ? "reset the connection" : "closed the connection");
            up_fail(u, HELIOS_OUTCOME_RESET, why);
        }
    }
    hx_req_leave(r);
}

static void up_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    hx_upconn *u = t->data;
    if (u->state == UP_IDLE) {
        up_close(u);
        return;
    }
    /* A timer kept armed from the idle state into an exchange (D68) may
     * fire up to 50 ms before the exchange's deadline, or when none
     * applies any more: time is only up when the deadline says so. */
    ev_tstamp left;
    if (!up_time_left(u, &left))
        return;
    if (left >= 0.001) {
        ev_timer_set(&u->timer, left, 0.);
        ev_timer_start(u->w->loop, &u->timer);
        return;
    }
    hx_req *r = u->req;
    hx_req_enter(r);
    char why[160];
    if (u->state == UP_CONNECTING)
        snprintf(why, sizeof(why), "connect to %s timed out", u->b->address);
    else if (hx_buf_size(&u->out))
        snprintf(why, sizeof(why), "sending to %s timed out", u->b->address);
    else
        snprintf(why, sizeof(why), "reading from %s timed out", u->b->address);
    up_fail(u, HELIOS_OUTCOME_TIMEOUT, why);
    hx_req_leave(r);
}

/* Seconds left before U's current deadline, in *AFTER; 0 when none applies
 * (an exchange whose response is complete or whose reading is paused). */
static int up_time_left(const hx_upconn *u, ev_tstamp *after)
{
    ev_tstamp now = ev_now(u->w->loop);
    switch (u->state) {
    case UP_CONNECTING:
        *after = u->u->connect_timeout_ms / 1000.0 - (now - u->last_io);
        return 1;
    case UP_IDLE:
        *after = u->u->keepalive_idle_ms / 1000.0 - (now - u->last_io);
        return 1;
    case UP_ACTIVE:
        if (hx_buf_size(&u->out)) {
            *after = u->u->send_timeout_ms / 1000.0 - (now - u->last_io);
            return 1;
        }
        if (!u->reading_paused && !u->resp_complete) {
            *after = (u->req && !u->req->upstream_bytes_seen && u->u->per_try_timeout_ms
                          ? u->u->per_try_timeout_ms
                          : u->u->read_timeout_ms) /
                         1000.0 -
                     (now - u->last_io);
            return 1;
        }
        return 0;
    default:
        *after = 0;
        return 1;
    }
}

static void up_update_timer(hx_upconn *u)
{
    ev_tstamp after = 0;
    if (!up_time_left(u, &after)) {
        ev_timer_stop(u->w->loop, &u->timer);
        return;
    }
    if (after < 0.001)
        after = 0.001;
    if (ev_is_active(&u->timer)) {
        ev_tstamp left = ev_timer_remaining(u->w->loop, &u->timer);
        if (left > after - 0.05 && left < after + 0.05)
            return;
        ev_timer_stop(u->w->loop, &u->timer);
    }
    ev_timer_set(&u->timer, after, 0.);
    ev_timer_start(u->w->loop, &u->timer);
}

/* ------------------------------------------------------------------ */
/* response parsing                                                    */

static hx_upconn *U(llhttp_t *p) { return p->data; }

static int up_push_header(hx_upconn *u)
{
    hx_req *r = u->req;
    const char *v = hx_buf_head(&u->hb.value);
    size_t vl = hx_buf_size(&u->hb.value);
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    while (vl && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    if (++u->hb.count > r->gen->limits.max_headers * 2)
        return -1;
    if (hx_hdrs_add(&r->arena, &r->rhdrs, hx_buf_head(&u->hb.name), hx_buf_size(&u->hb.name), v,
                    vl) != 0)
        return -1;
    hx_buf_reset(&u->hb.name);
    hx_buf_reset(&u->hb.value);
    u->hb.in_value = 0;
    return 0;
}

static int r_begin(llhttp_t *p)
{
    hx_upconn *u = U(p);
    hx_buf_reset(&u->hb.name);
    hx_buf_reset(&u->hb.value);
    u->hb.in_value = 0;
    u->hb.total = 0;
    u->hb.count = 0;
    if (u->req)
        u->req->rhdrs.n = 0;
    return 0;
}

static int r_field(llhttp_t *p, const char *at, size_t len)
{
    hx_upconn *u = U(p);
    if (u->req == NULL || (u->hb.in_value && up_push_header(u) != 0))
        return HPE_USER;
    u->hb.total += len;
    if (u->hb.total > u->req->gen->limits.max_header_size * 2)
        return HPE_USER;
    hx_buf_append(&u->hb.name, at, len);
    return 0;
}

static int r_value(llhttp_t *p, const char *at, size_t len)
{
    hx_upconn *u = U(p);
    if (u->req == NULL)
        return HPE_USER;
    u->hb.in_value = 1;
    u->hb.total += len;
    if (u->hb.total > u->req->gen->limits.max_header_size * 2)
        return HPE_USER;
    hx_buf_append(&u->hb.value, at, len);
    return 0;
}

static int r_headers_complete(llhttp_t *p)
{
    hx_upconn *u = U(p);
    hx_req *r = u->req;
    if (r == NULL)
        return HPE_USER;
    if ((u->hb.in_value || hx_buf_size(&u->hb.name)) && up_push_header(u) != 0)
        return HPE_USER;
    int status = p->status_code;
    if (status == 101 && r->ws_upgrade && !r->head_sent &&
        hx_list_has_token(hx_hdrs_get(&r->rhdrs, "upgrade"), "websocket", 9)) {
        /* WebSocket accepted: the 101 head goes to the client through the
         * response filters; llhttp then stops with HPE_PAUSED_UPGRADE and
         * up_read_cb hands both connections to tunnel.c */
        r->status = 101;
        hx_resp_begin(r);
        return 0;
    }
    if (status >= 100 && status < 200) {
        if (status == 101 || ++u->ignored_1xx > 10)
            return HPE_USER; /* no tunnels here yet */
        return 0; /* interim response: dropped, the final one follows */
    }
    unsigned bit = status == 502 ? HX_RETRY_502 : status == 503 ? HX_RETRY_503
                 : status == 504 ? HX_RETRY_504 : 0;
    if (bit && !r->head_sent && retry_allowed(r, bit)) {
        /* drop this response unseen and try another backend */
        r->retry_status = status;
        return HPE_USER;
    }
    r->status = status;
    hx_resp_begin(r);
    if (r->is_head || status == 204 || status == 304)
        return 1; /* no body whatever the headers say */
    return 0;
}

static int r_body(llhttp_t *p, const char *at, size_t len)
{
    hx_upconn *u = U(p);
    if (u->req == NULL || u->req->up != u)
        return HPE_USER;
    return hx_resp_body(u->req, at, len, 0) == 0 ? 0 : HPE_USER;
}

static int r_complete(llhttp_t *p)
{
    hx_upconn *u = U(p);
    hx_req *r = u->req;
    if (r == NULL)
        return HPE_USER;
    if (r->status < 200) {
        r->rhdrs.n = 0;
        return 0;
    }
    u->resp_complete = 1;
    hx_resp_body(r, NULL, 0, 1);
    return HPE_PAUSED;
}

static const llhttp_settings_t *resp_settings(void)
{
    static llhttp_settings_t s;
    static int init;
    if (!init) {
        llhttp_settings_init(&s);
        s.on_message_begin = r_begin;
        s.on_header_field = r_field;
        s.on_header_value = r_value;
        s.on_headers_complete = r_headers_complete;
        s.on_body = r_body;
        s.on_message_complete = r_complete;
        init = 1;
    }
    return &s;
}

/* ------------------------------------------------------------------ */
/* choosing, connecting, failing                                       */

static void try_backend(hx_req *r);

static int idempotent(const hx_req *r)
{
    switch (r->method_id) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_TRACE:
    case HTTP_PUT:
    case HTTP_DELETE:
        return 1;
    default:
        return 0;
    }
}

/*
 * May R try again after an attempt ended with COND? Only when the client has
 * seen nothing yet, the condition is enabled, tries remain, the request can
 * be replayed (nothing of it was sent when the connect failed; otherwise an
 * idempotent method with no body byte sent), and the upstream's retry
 * budget has a token: each request deposits budget_percent % of a token,
 * each retry spends one, and budget_min tokens are there from the start, so
 * an outage costs backends at most requests x (1 + budget_percent %) +
 * budget_min attempts. A failed connect reached no backend, so failing over
 * from it spends no token (it is still bounded by `tries`).
 */
/* Is there anywhere left to go? Checked before a response is dropped or a
 * token spent, so the last backend's own answer reaches the client. */
static int untried_usable_left(const hx_req *r)
{
    hx_backends *bs = atomic_load(&r->route->upstream->backends);
    for (size_t i = 0; i < bs->n; i++)
        if ((i >= r->tried_n || !r->tried[i]) && hx_backend_usable(bs->v[i]))
            return 1;
    return 0;
}

static int retry_allowed(hx_req *r, unsigned cond)
{
    hx_upstream *up = r->route->upstream;
    if (r->head_sent || !(up->retry_on & cond) || r->attempts >= up->retry_tries)
        return 0;
    if (r->req_sent_some || !untried_usable_left(r))
        return 0;
    if (cond == HX_RETRY_CONNECT)
        return 1; /* reached no backend: failover costs none of them anything */
    if (!idempotent(r))
        return 0;
    int64_t bal = atomic_load_explicit(&up->retry_balance, memory_order_relaxed);
    while (bal >= 1000)
        if (atomic_compare_exchange_weak(&up->retry_balance, &bal, bal - 1000))
            return 1;
    hx_warn("upstream %s: retry budget exhausted, not retrying", up->name);
    return 0;
}

static unsigned outcome_cond(int outcome)
{
    switch (outcome) {
    case HELIOS_OUTCOME_CONNECT_FAILED: return HX_RETRY_CONNECT;
    case HELIOS_OUTCOME_RESET: return HX_RETRY_RESET;
    case HELIOS_OUTCOME_TIMEOUT: return HX_RETRY_TIMEOUT;
    default: return 0;
    }
}

/* An attempt failed. Before any byte of response: maybe another try;
 * otherwise the client gets an error or the response is cut. */
static void attempt_failed(hx_req *r, hx_backend *b, int outcome, const char *why, int seen);

void hx_proxy_attempt_failed(hx_req *r, hx_backend *b, int outcome, const char *why)
{
    attempt_failed(r, b, outcome, why, r->upstream_bytes_seen);
}

static void up_fail(hx_upconn *u, int outcome, const char *why)
{
    hx_req *r = u->req;
    if (r == NULL) {
        up_close(u);
        return;
    }
    int reused = u->reused;
    hx_backend *b = u->b;
    int seen = r->upstream_bytes_seen;
    int hooked = r->att_open;
    hx_proxy_report(r, b, outcome, 0);
    up_close(u);
    if (r->head_sent) {
        hx_resp_abort(r, why);
        return;
    }
    /* a kept-alive connection the backend had closed: try once more on a
     * fresh connection to the same backend when nothing of the request
     * body has gone out yet (not a retry: the request never reached it) */
    if (!seen && reused && !r->req_sent_some &&
        (outcome == HELIOS_OUTCOME_RESET || outcome == HELIOS_OUTCOME_CONNECT_FAILED)) {
        hx_debug("retrying on a fresh connection: %s", why);
        r->backend = b;
        atomic_fetch_add_explicit(&b->inflight, 1, memory_order_relaxed);
        if (take_trial(r, b)) {
            if (hooked) { /* the replay is a try of the same pick */
                r->att_open = 1;
                r->att_start = ev_time();
                r->att_first = 0;
            }
            try_backend(r);
            return;
        }
        atomic_fetch_sub_explicit(&b->inflight, 1, memory_order_relaxed);
    }
    attempt_failed(r, b, outcome, why, seen);
}

/* After a failed attempt on B (already reported and ended): another try,
 * or the error to the client. */
static void attempt_failed(hx_req *r, hx_backend *b, int outcome, const char *why, int seen)
{
    if (r->head_sent) {
        hx_resp_abort(r, why);
        return;
    }
    if (!seen && retry_allowed(r, outcome_cond(outcome))) {
        hx_info("%s; retrying (attempt %u of %u)", why, r->attempts + 1,
                r->route->upstream->retry_tries);
        r->upstream_bytes_seen = 0;
        hx_proxy_start(r);
        return;
    }
    size_t al = strlen(b->address);
    if (al >= sizeof(r->upstream_addr))
        al = sizeof(r->upstream_addr) - 1;
    memcpy(r->upstream_addr, b->address, al);
    r->upstream_addr[al] = '\0';
    int status = outcome == HELIOS_OUTCOME_TIMEOUT ? 504 : 502;
    char *msg = hx_arena_strndup(&r->arena, why, strlen(why));
    hx_req_error(r, status, msg ? msg : "upstream error");
}

static void start_exchange(hx_upconn *u)
{
    hx_req *r = u->req;
    u->state = UP_ACTIVE;
    u->last_io = ev_now(u->w->loop);
    llhttp_init(&u->parser, HTTP_RESPONSE, resp_settings());
    u->parser.data = u;
    u->resp_complete = 0;
    u->reading_paused = 0;
    u->body_queued_all = !r->has_body;
    hx_buf_reset(&u->out);
    if (serialize_request(r, &u->out) != 0) {
        up_fail(u, HELIOS_OUTCOME_CONNECT_FAILED, "out of memory for the request head");
        return;
    }
    if (r->body_mem.ptr) {
        /* A body held in memory (buffered, or a subrequest's) goes with the
         * head, on every attempt: a whole one can be sent again on a retry;
         * the first part of a body that outgrew request_buffering cannot
         * (the rest streams after it). */
        helios_buf body = r->body_mem;
        if (body.len && r->up_chunked) {
            char hdr[24];
            size_t hn = hx_u64_hex(hdr, body.len);
            hdr[hn++] = '\r';
            hdr[hn++] = '\n';
            hx_buf_append(&u->out, hdr, hn);
            hx_buf_append(&u->out, body.ptr, body.len);
            hx_buf_append(&u->out, "\r\n", 2);
        } else if (body.len) {
            hx_buf_append(&u->out, body.ptr, body.len);
        }
        if (r->body_done) {
            if (r->up_chunked)
                hx_buf_append(&u->out, "0\r\n\r\n", 5);
            u->body_queued_all = 1;
        } else if (body.len) {
            r->req_sent_some = 1;
        }
        if (r->buffering == 3)
            r->buffering = 0; /* taken: the rest of the body streams */
    }
    ev_set_cb(&u->rio, up_read_cb);
    ev_set_cb(&u->wio, up_write_cb);
    ev_io_start(u->w->loop, &u->rio);
    up_flush(u);
    up_update_timer(u);
    if (r->has_body && !r->body_done && r->conn)
        hx_req_body_wanted(r);
}

static void try_backend(hx_req *r)
{
    hx_worker *w = r->w;
    hx_backend *b = r->backend;
    hx_pool *p = pool_of(w, b);
    size_t al = strlen(b->address);
    if (al >= sizeof(r->upstream_addr))
        al = sizeof(r->upstream_addr) - 1;
    memcpy(r->upstream_addr, b->address, al);
    r->upstream_addr[al] = '\0';
    if (r->up_start == 0)
        r->up_start = ev_now(w->loop);
    r->try_start = ev_now(w->loop);
    /* A pooled connection first. A backend that closed it while idle was
     * noticed by idle_read_cb; one that closes it right now is caught by
     * the stale-connection retry in up_fail. */
    if (p->idle) {
        hx_upconn *u = p->idle;
        pool_remove(u);
        /* its read watcher stays on: start_exchange gives it the
         * exchange's callback; an idle event still pending is dropped. Its
         * timer too: start_exchange re-arms it (up_update_timer) unless the
         * idle deadline is the exchange's to 50 ms (the defaults: 60 s) */
        ev_clear_pending(w->loop, &u->rio);
        ev_clear_pending(w->loop, &u->timer);
        u->req = r;
        u->reused = 1;
        r->up = u;
        start_exchange(u);
        return;
    }
    hx_upconn *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        release_trial(r, b);
        atomic_fetch_sub_explicit(&b->inflight, 1, memory_order_relaxed);
        hx_req_error(r, 500, "out of memory");
        return;
    }
    u->w = w;
    u->b = b;
    u->u = r->route->upstream;
    u->req = r;
    r->up = u;
    ev_init(&u->rio, up_read_cb);
    ev_init(&u->wio, up_connect_cb);
    ev_init(&u->timer, up_timer_cb);
    /* Backend events go before client events of the same loop pass: a
     * response finishes a request already in flight before new requests
     * start (libev runs one priority's events last-in first-out; D55). */
    ev_set_priority(&u->rio, 1);
    ev_set_priority(&u->wio, 1);
    u->rio.data = u->wio.data = u->timer.data = u;
    u->fd = socket(b->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (u->fd < 0) {
        char why[128];
        snprintf(why, sizeof(why), "socket() for %s: %s", b->address, strerror(errno));
        up_fail(u, HELIOS_OUTCOME_CONNECT_FAILED, why);
        return;
    }
    int one = 1;
    setsockopt(u->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ev_io_set(&u->rio, u->fd, EV_READ);
    ev_io_set(&u->wio, u->fd, EV_WRITE);
    u->last_io = ev_now(w->loop);
    if (connect(u->fd, (struct sockaddr *)&b->addr.ss, b->addr.len) == 0) {
        up_connected(u);
        return;
    }
    if (errno != EINPROGRESS) {
        char why[160];
        snprintf(why, sizeof(why), "connect to %s failed: %s", b->address, strerror(errno));
        up_fail(u, HELIOS_OUTCOME_CONNECT_FAILED, why);
        return;
    }
    u->state = UP_CONNECTING;
    ev_io_start(w->loop, &u->wio);
    up_update_timer(u);
}

static int tried_has_impl(const hx_req *r, size_t i)
{
    return r && i < r->tried_n && r->tried[i];
}

int hx_tried_has(const helios_tried *t, size_t i) { return tried_has_impl((const hx_req *)t, i); }

/* A request body filter may change the length: then the client's
 * Content-Length cannot be forwarded and the body goes chunked. */
static int request_body_filtered(const hx_req *r)
{
    for (size_t i = 0; i < r->route->nfilters; i++)
        if (r->route->filters[i]->mod->filter->on_request_body)
            return 1;
    return 0;
}

/*
 * Panic mode (Envoy's panic threshold): when health checks leave less than
 * panic_threshold % of an upstream's (not drained) backends healthy, the
 * checks are more likely wrong than the backends (one path answering 503
 * made passive health eject them all), and sending everything to the few
 * left would overload them: the balancer picks among all of them again,
 * healthy or not. Logged (the error log folds the repeats).
 */
static int panic_mode(hx_upstream *up, const hx_backends *bs)
{
    if (up->panic_threshold == 0)
        return 0;
    size_t eligible = 0, healthy = 0;
    for (size_t i = 0; i < bs->n; i++) {
        const hx_backend *b = bs->v[i];
        if (atomic_load_explicit(&b->draining, memory_order_relaxed))
            continue;
        eligible++;
        healthy += atomic_load_explicit(&b->healthy, memory_order_relaxed) != 0;
    }
    int panic = eligible > 0 && healthy * 100 < (size_t)up->panic_threshold * eligible;
    /* an entry is a change from balanced to panic: one exchange per change,
     * a plain load otherwise */
    if (atomic_load_explicit(&up->panicking, memory_order_relaxed) != panic &&
        atomic_exchange_explicit(&up->panicking, panic, memory_order_relaxed) != panic && panic)
        atomic_fetch_add_explicit(&up->panic_entries, 1, memory_order_relaxed);
    if (!panic)
        return 0;
    hx_warn("upstream %s: panic mode: %zu of %zu backends healthy, below panic_threshold "
            "%u%%: balancing over all of them",
            up->name, healthy, eligible, up->panic_threshold);
    return 1;
}

void hx_proxy_start(hx_req *r)
{
    hx_upstream *up = r->route->upstream;
    hx_tunnel_slot_release(r); /* a retry: the slot was the last backend's */
    /* a buffered body went through the filters already: its length is known */
    r->up_chunked = r->buffering != 2 && (r->chunked || (r->has_body && request_body_filtered(r)));
    hx_backends *bs = atomic_load(&up->backends);
    r->phase = HX_PH_PROXY;
    if (bs == NULL || bs->n == 0) {
        hx_req_error(r, 503, "upstream has no backends");
        return;
    }
    if (r->attempts == 0) {
        /* every request earns budget_percent % of a retry; the balance is
         * capped at budget_min + 10 retries so a quiet hour cannot bank a
         * burst that ignores the percentage */
        int64_t cap = 1000 * ((int64_t)up->retry_budget_min + 10);
        if (atomic_fetch_add_explicit(&up->retry_balance, (int64_t)up->retry_budget_percent * 10,
                                      memory_order_relaxed) > cap)
            atomic_fetch_sub_explicit(&up->retry_balance,
                                      (int64_t)up->retry_budget_percent * 10,
                                      memory_order_relaxed);
    }
    if (r->tried == NULL || r->tried_n != bs->n) {
        r->tried = hx_arena_alloc(&r->arena, bs->n);
        if (r->tried == NULL) {
            hx_req_error(r, 500, "out of memory");
            return;
        }
        memset(r->tried, 0, bs->n);
        r->tried_n = bs->n;
    }
    panic_pick = panic_mode(up, bs);
    const hx_instance *bal = r->wg->bal[up->index];
    helios_ctx ctx = {.size = sizeof(ctx),
                      .cfg = bal->cfg,
                      .wstate = r->wg->bal_ws[up->index],
                      .rstate = NULL,
                      .req = (helios_request *)r,
                      .worker = (helios_worker *)r->w};
    if (bal->mod->desc->abi_minor >= 3) {
        r->att_slot = NULL; /* ABI 1.3: a fresh per-attempt slot */
        ctx.rstate = &r->att_slot;
    }
    /* The pick contract (module.h): an untried usable backend, or -1. An
     * index out of range ends the search; a tried or unusable one (usability
     * can change between pick and here) is replaced by the first untried
     * usable backend in list order. A half-open breaker whose trial slots
     * filled meanwhile is marked tried and the balancer asked again, at
     * most once per backend. */
    hx_backend *b = NULL;
    int idx = -1;
    for (size_t round = 0; round <= bs->n && b == NULL; round++) {
        idx = bal->mod->balancer->pick(&ctx, (const helios_backends *)bs,
                                       (const helios_tried *)r);
        if (idx < 0 || (size_t)idx >= bs->n)
            break;
        hx_backend *cand = bs->v[idx];
        if (r->tried[idx] || !hx_backend_usable(cand)) {
            /* the balancer offered a tried or unusable one: any untried
             * usable backend instead, else give up */
            idx = -1;
            for (size_t i = 0; i < bs->n; i++)
                if (!r->tried[i] && hx_backend_usable(bs->v[i])) {
                    idx = (int)i;
                    break;
                }
            if (idx < 0)
                break;
            cand = bs->v[idx];
        }
        if (take_trial(r, cand)) {
            b = cand;
        } else {
            r->tried[idx] = 1;
        }
    }
    panic_pick = 0;
    if (b == NULL) {
        hx_req_error(r, r->attempts ? 502 : 503,
                     r->attempts ? "every backend failed" : "no usable backend");
        return;
    }
    if (r->ws_upgrade && hx_tunnel_slot_take(r, b) != 0) {
        /* max_tunnels (tunnel.c): refused before connecting */
        release_trial(r, b);
        r->tried[idx] = 1;
        hx_req_error(r, 503, "backend has max_tunnels tunnels open");
        return;
    }
    r->tried[idx] = 1;
    if (r->attempts++ > 0)
        atomic_fetch_add_explicit(&b->retries, 1, memory_order_relaxed);
    r->backend = b;
    if (has_attempt_hook(bal->mod->balancer)) {
        r->att_open = 1;
        r->att_bal = bal;
        r->att_up = up->index;
        r->att_index = (size_t)idx;
        r->att_start = ev_time();
        r->att_first = 0;
    }
    atomic_fetch_add_explicit(&b->inflight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->requests, 1, memory_order_relaxed);
    if (up->protocol == HX_PROTO_H2 && !r->ws_upgrade) {
        if (r->up_start == 0)
            r->up_start = ev_now(r->w->loop);
        r->try_start = ev_now(r->w->loop);
        size_t al = strlen(b->address);
        if (al >= sizeof(r->upstream_addr))
            al = sizeof(r->upstream_addr) - 1;
        memcpy(r->upstream_addr, b->address, al);
        r->upstream_addr[al] = '\0';
        hx_h2up_start(r, b); /* many requests, few connections */
        return;
    }
    try_backend(r);
}

void hx_proxy_client_drained(hx_req *r)
{
    if (r->h2up) {
        hx_h2up_drained(r);
        return;
    }
    hx_upconn *u = r->up;
    if (u && u->reading_paused && hx_req_pending(r) < r->gen->limits.max_body_buffer) {
        u->reading_paused = 0;
        u->last_io = ev_now(u->w->loop);
        ev_io_start(u->w->loop, &u->rio);
        up_update_timer(u);
        up_tls_kick_read(u);
    }
}

void hx_proxy_detach(hx_req *r)
{
    if (r->h2up)
        hx_h2up_detach(r);
    hx_tunnel_slot_release(r);
    hx_upconn *u = r->up;
    if (u == NULL)
        return;
    up_close(u);
}

/* ------------------------------------------------------------------ */
/* tunnels (tunnel.c): after a 101 the connection is driven from there  */

/* Stops everything upstream.c runs on U and lends tunnel.c its watchers
 * and its output buffer (request bytes not yet sent go first). U stays
 * attached to its request, so hx_proxy_detach closes it, never pools it. */
void hx_up_tunnel_io(hx_upconn *u, int *fd, SSL **ssl, ev_io **rio, ev_io **wio, hx_buf **out)
{
    *fd = u->fd;
    *ssl = u->ssl;
    ev_io_stop(u->w->loop, &u->rio);
    ev_io_stop(u->w->loop, &u->wio);
    ev_timer_stop(u->w->loop, &u->timer);
    u->reading_paused = 0;
    *rio = &u->rio;
    *wio = &u->wio;
    *out = &u->out;
}

const hx_proxy_ops hx_upstream_proxy = {
    .start = hx_proxy_start,
    .detach = hx_proxy_detach,
    .body = hx_proxy_body,
    .body_writable = hx_proxy_body_writable,
    .client_drained = hx_proxy_client_drained,
    .tunnel_close = hx_tunnel_close,
};
