/*
 * tunnel.c - WebSocket tunnels: after a backend's 101 to an HTTP/1.1
 * `Upgrade: websocket` request, the client connection and the upstream
 * connection carry opaque bytes both ways until both sides are done.
 *
 * Ownership: the tunnel belongs to its request (r->tunnel), which stays the
 * client connection's request; the request keeps its generation view and
 * the upstream connection (r->up, never pooled), so a reload closes
 * nothing. The tunnel borrows the event watchers of both connections
 * (client: c->rio, c->wio, c->timer; upstream: its rio and wio) with its
 * own callbacks, and their output buffers: c->out carries bytes to the
 * client, the upstream connection's `out` bytes to the backend.
 *
 * Every callback runs inside the client connection's enter/leave bracket;
 * ending the tunnel is marking that connection dead, and conn_close calls
 * hx_tunnel_close, which logs the tunnel and frees it. So there is one way
 * out whatever ends it: both sides closed, an error, the idle timeout, or
 * the worker's shutdown grace running out.
 *
 * Backpressure: a side is read only while the other side's output holds
 * less than limits.max_body_buffer, so a tunnel holds at most about two
 * buffers plus one read per direction, whatever the peers do.
 */
#include <errno.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "proxy/tunnel.h"

#include "base/log.h"
#include "http/conn.h"
#include "http/transport.h"
#include "proxy/upstream.h"

/* io: uring (D75): watchers of sockets the ring drives are fed by it */
#define ev_io_start hx_io_start
#define ev_io_stop hx_io_stop

#define HX_TUNNEL_READ 65536
#define HX_TUNNEL_READS 4 /* reads per event before giving others a turn */

typedef struct hx_tunnel {
    hx_req *r;
    hx_conn *c;
    hx_upconn *u;
    int ufd;            /* the upstream connection's transport */
    SSL *ussl;
    ev_io *urio, *uwio; /* the upstream connection's watchers, lent */
    hx_buf *uout;       /* bytes to the backend (the upstream's buffer) */
    ev_tstamp last_io;
    ev_tstamp idle;     /* seconds */
    int c_eof, u_eof;   /* that side will send nothing more */
    int c_shut, u_shut; /* EOF passed on to that side */
    int failed;
} hx_tunnel;

/* ------------------------------------------------------------------ */
/* helpers shared with http1.c and upstream.c                          */

int hx_tunnel_slot_take(hx_req *r, hx_backend *b)
{
    unsigned max = r->route->upstream->max_tunnels;
    uint32_t cur = atomic_load_explicit(&b->tunnels, memory_order_relaxed);
    do {
        if (max && cur >= max)
            return -1;
    } while (!atomic_compare_exchange_weak_explicit(&b->tunnels, &cur, cur + 1,
                                                    memory_order_relaxed, memory_order_relaxed));
    r->tunnel_slot = b;
    return 0;
}

void hx_tunnel_slot_release(hx_req *r)
{
    if (r->tunnel_slot) {
        atomic_fetch_sub_explicit(&r->tunnel_slot->tunnels, 1, memory_order_relaxed);
        r->tunnel_slot = NULL;
    }
}

/* ------------------------------------------------------------------ */
/* I/O                                                                 */

static void tunnel_fail(hx_tunnel *t, const char *why)
{
    if (t->failed)
        return;
    t->failed = 1;
    t->r->error_reason = why;
    t->r->aborted = 1;
    hx_debug("%s: tunnel to %s closed: %s", HX_CONN_PEER(t->c), t->r->upstream_addr, why);
    hx_conn_mark_dead(t->c);
}

static size_t max_buffer(const hx_tunnel *t)
{
    return t->r->gen->limits.max_body_buffer;
}

/* Both sides through the one transport (http/transport.h). */
static ssize_t side_send(hx_tunnel *t, int to_client, const void *p, size_t n)
{
    return to_client ? hx_sock_send(t->c->fd, t->c->ssl, p, n) : hx_sock_send(t->ufd, t->ussl, p, n);
}

static ssize_t side_recv(hx_tunnel *t, int from_client, void *p, size_t n)
{
    if (!from_client)
        return hx_sock_recv(t->ufd, t->ussl, p, n, NULL);
    int want_write = 0;
    ssize_t r = hx_sock_recv(t->c->fd, t->c->ssl, p, n, &want_write);
    if (want_write) {
        t->c->tls_rd_wants_write = 1;
        ev_io_start(t->c->w->loop, &t->c->wio);
    }
    return r;
}

static int would_block(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK;
}

/* Sends what OUT holds through SEND; -1 when the peer is gone. */
static int flush_out(hx_tunnel *t, hx_buf *out, int to_client)
{
    while (hx_buf_size(out) > 0) {
        ssize_t w = side_send(t, to_client, hx_buf_head(out), hx_buf_size(out));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (would_block())
                break;
            return -1;
        }
        hx_buf_consume(out, (size_t)w);
        t->last_io = ev_now(t->c->w->loop);
    }
    hx_buf_shrink(out, 65536); /* an idle tunnel keeps no big buffer */
    return 0;
}

/* Bytes for one side: straight to the socket when nothing waits before
 * them, the rest queued. */
static int forward(hx_tunnel *t, hx_buf *out, int to_client, const char *p, size_t n)
{
    size_t done = 0;
    if (hx_buf_size(out) == 0) {
        ssize_t w;
        do {
            w = side_send(t, to_client, p, n);
        } while (w < 0 && errno == EINTR);
        if (w < 0 && !would_block())
            return -1;
        done = w > 0 ? (size_t)w : 0;
    }
    return hx_buf_append(out, p + done, n - done);
}

/* Reads one side and forwards to the other while the other's output has
 * room. FROM_CLIENT picks the direction. */
static void pump(hx_tunnel *t, int from_client)
{
    char buf[HX_TUNNEL_READ];
    hx_buf *out = from_client ? t->uout : &t->c->out;
    int *eof = from_client ? &t->c_eof : &t->u_eof;
    for (int i = 0; i < HX_TUNNEL_READS && !*eof && !t->failed; i++) {
        if (hx_buf_size(out) >= max_buffer(t))
            return;
        ssize_t n = side_recv(t, from_client, buf, sizeof(buf));
        if (n > 0) {
            t->last_io = ev_now(t->c->w->loop);
            if (from_client)
                t->r->bytes_in += (uint64_t)n;
            else
                t->r->bytes_out += (uint64_t)n;
            if (forward(t, out, !from_client, buf, (size_t)n) != 0)
                tunnel_fail(t, from_client ? "backend write failed" : "client write failed");
        } else if (n == 0) {
            *eof = 1;
        } else if (errno == EINTR) {
            continue;
        } else if (would_block()) {
            return;
        } else {
            tunnel_fail(t, from_client ? "client reset the connection"
                                       : "backend reset the connection");
        }
    }
}

static void watch(hx_tunnel *t, ev_io *io, int want)
{
    struct ev_loop *loop = t->c->w->loop;
    if (want && !ev_is_active(io))
        ev_io_start(loop, io);
    else if (!want && ev_is_active(io))
        ev_io_stop(loop, io);
}

/* After any event: send what is queued, pass EOFs on, end the tunnel when
 * both directions are over, and watch exactly what may move now. */
static void tunnel_update(hx_tunnel *t)
{
    hx_conn *c = t->c;
    if (!t->failed && flush_out(t, &c->out, 1) != 0)
        tunnel_fail(t, "client write failed");
    if (!t->failed && flush_out(t, t->uout, 0) != 0)
        tunnel_fail(t, "backend write failed");
    if (t->failed)
        return;
    if (t->c_eof && !t->u_shut && hx_buf_size(t->uout) == 0) {
        hx_sock_shutdown_write(t->ufd, t->ussl);
        t->u_shut = 1;
    }
    if (t->u_eof && !t->c_shut && hx_buf_size(&c->out) == 0) {
        hx_sock_shutdown_write(c->fd, c->ssl);
        t->c_shut = 1;
    }
    if (t->c_shut && t->u_shut) {
        hx_conn_mark_dead(c); /* both directions are over: a clean end */
        return;
    }
    size_t max = max_buffer(t);
    int c_read = !t->c_eof && hx_buf_size(t->uout) < max;
    int u_read = !t->u_eof && hx_buf_size(&c->out) < max;
    watch(t, &c->rio, c_read);
    watch(t, t->urio, u_read);
    watch(t, &c->wio, hx_buf_size(&c->out) > 0 || c->tls_rd_wants_write);
    watch(t, t->uwio, hx_buf_size(t->uout) > 0);
    c->reading = c_read;
    /* TLS holds decrypted bytes epoll cannot see */
    if (c_read && hx_sock_rd_pending(c->ssl))
        ev_feed_event(c->w->loop, &c->rio, EV_READ);
    if (u_read && hx_sock_rd_pending(t->ussl))
        ev_feed_event(c->w->loop, t->urio, EV_READ);
}

/* ------------------------------------------------------------------ */
/* event callbacks                                                     */

static void client_read_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_tunnel *t = io->data;
    hx_conn *c = t->c;
    hx_conn_enter(c);
    pump(t, 1);
    tunnel_update(t);
    hx_conn_leave(c); /* may free T */
}

static void client_write_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_tunnel *t = io->data;
    hx_conn *c = t->c;
    hx_conn_enter(c);
    if (c->tls_rd_wants_write) {
        /* a TLS read needed the socket writable: read again now */
        c->tls_rd_wants_write = 0;
        pump(t, 1);
    }
    tunnel_update(t); /* flushes, and reads the backend again when room */
    hx_conn_leave(c);
}

static void up_read_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_tunnel *t = io->data;
    hx_conn *c = t->c;
    hx_conn_enter(c);
    pump(t, 0);
    tunnel_update(t);
    hx_conn_leave(c);
}

static void up_write_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_tunnel *t = io->data;
    hx_conn *c = t->c;
    hx_conn_enter(c);
    tunnel_update(t);
    hx_conn_leave(c);
}

/* The idle timer is checked lazily: I/O only moves last_io, the timer
 * re-arms for what is left when it fires early. */
static void idle_cb(struct ev_loop *loop, ev_timer *tm, int revents)
{
    (void)revents;
    hx_tunnel *t = tm->data;
    hx_conn *c = t->c;
    hx_conn_enter(c);
    ev_tstamp left = t->idle - (ev_now(loop) - t->last_io);
    if (left <= 0) {
        hx_info("%s: tunnel to %s idle for %.0f s: closed", HX_CONN_PEER(c), t->r->upstream_addr,
                t->idle);
        tunnel_fail(t, "tunnel idle timeout");
    } else {
        ev_timer_set(tm, left, 0.);
        ev_timer_start(loop, tm);
    }
    hx_conn_leave(c);
}

/* ------------------------------------------------------------------ */
/* life cycle                                                          */

void hx_tunnel_start(hx_req *r, hx_upconn *u, const char *rest, size_t n)
{
    hx_conn *c = r->conn;
    struct ev_loop *loop = c->w->loop;
    hx_tunnel *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        hx_error("%s: out of memory starting a tunnel", HX_CONN_PEER(c));
        r->aborted = 1;
        hx_conn_mark_dead(c);
        return;
    }
    t->r = r;
    t->c = c;
    t->u = u;
    t->idle = r->gen->timeouts.tunnel_idle_ms / 1000.0;
    t->last_io = ev_now(loop);
    hx_up_tunnel_io(u, &t->ufd, &t->ussl, &t->urio, &t->uwio, &t->uout);
    /* the client connection's HTTP machinery stops here */
    ev_io_stop(loop, &c->rio);
    ev_io_stop(loop, &c->wio);
    ev_timer_stop(loop, &c->timer);
    c->reading = 0;
    c->state = HX_CS_ACTIVE;
    ev_set_cb(&c->rio, client_read_cb);
    ev_set_cb(&c->wio, client_write_cb);
    ev_set_cb(&c->timer, idle_cb);
    ev_set_cb(t->urio, up_read_cb);
    ev_set_cb(t->uwio, up_write_cb);
    c->rio.data = c->wio.data = c->timer.data = t;
    t->urio->data = t->uwio->data = t;
    r->tunnel = t;
    /* bytes each side sent right after its head go first */
    int oom = 0;
    if (hx_buf_size(&c->in)) {
        r->bytes_in += hx_buf_size(&c->in);
        oom |= hx_buf_append(t->uout, hx_buf_head(&c->in), hx_buf_size(&c->in));
    }
    hx_buf_free(&c->in);
    if (n) {
        r->bytes_out += n;
        oom |= hx_buf_append(&c->out, rest, n);
    }
    if (c->half_closed)
        t->c_eof = 1; /* the client shut its side while the 101 was coming */
    hx_debug("%s: tunnel to %s open", HX_CONN_PEER(c), r->upstream_addr);
    if (oom) {
        tunnel_fail(t, "out of memory");
        return;
    }
    ev_timer_set(&c->timer, t->idle, 0.);
    ev_timer_start(loop, &c->timer);
    tunnel_update(t);
}

void hx_tunnel_close(hx_req *r)
{
    hx_tunnel *t = r->tunnel;
    if (t == NULL)
        return;
    hx_conn *c = t->c;
    struct ev_loop *loop = c->w->loop;
    ev_io_stop(loop, &c->rio);
    ev_io_stop(loop, &c->wio);
    ev_timer_stop(loop, &c->timer);
    ev_io_stop(loop, t->urio);
    ev_io_stop(loop, t->uwio);
    if (!(t->c_shut && t->u_shut) && !r->aborted) {
        /* closed from outside (shutdown grace over) */
        r->aborted = 1;
        r->error_reason = "tunnel closed by the server";
    }
    r->tunnel = NULL;
    free(t);
    hx_proxy_detach(r);  /* closes the upstream side, frees the max_tunnels slot */
    hx_req_log(r);      /* status 101, bytes each way, duration */
}
