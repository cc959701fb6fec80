/*
 * http1.c - HTTP/1.1 client connections on llhttp.
 *
 * Reading: bytes go through a strict head validator (bare CR/LF, obs-fold,
 * NUL and bad name characters are refused before llhttp sees them), then
 * llhttp. The parser is paused at the end of a head that has a body (so
 * routing and filters run before any body byte is accepted) and at the end
 * of every message (so pipelined requests wait their turn in the input
 * buffer and responses go out in order).
 *
 * Re-entrancy: everything that can finish a request runs between
 * conn_enter() and conn_leave(); only conn_leave() completes requests and
 * frees connections, so no caller ever touches freed memory.
 */
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "http/conn.h"
#include "base/log.h"
#include "http/subreq.h"
#include "http/http2.h"
#include "http/transport.h"

/* io: uring (D75): watchers of sockets the ring drives are fed by it */
#define ev_io_start hx_io_start
#define ev_io_stop hx_io_stop

#define HX_READ_CHUNK 16384 /* one cached I/O buffer: a read fills it */
#define HX_SMALL_BUF 4096   /* request line, header name, header value */
#define HX_WRITEV_MIN 4096 /* below this, copying and coalescing is cheaper */
/* After an early answer, at most this much unread request body is read and
 * dropped to keep the connection; more means closing it. */
#define HX_DISCARD_MAX (1u << 20)
#define HX_REQ_ARENA 4096
/* a request, its first arena block, then its head builder (c->hb) */
#define HX_REQ_HB_AT (sizeof(hx_req) + sizeof(hx_arena_block) + HX_REQ_ARENA)
#define HX_REQ_ALLOC (HX_REQ_HB_AT + sizeof(hx_hdr_builder))

/* head validator states */
enum { V_BEGIN, V_BEGIN_CR, V_RL, V_RL_CR, V_H_START, V_H_NAME, V_H_VALUE, V_H_CR, V_END_CR };

static const llhttp_settings_t *req_settings(void);
static void conn_process(hx_conn *c);
static void conn_update_timer(hx_conn *c);
static hx_req *req_new(hx_conn *c);
static void req_free(hx_conn *c, hx_req *r);
static void conn_close(hx_conn *c);

/* ------------------------------------------------------------------ */
/* entry/exit bookkeeping                                              */

/* head_flags: low bits are flags, the bits above C_BUSY_SHIFT count how
 * deep we are in enter/leave. */
#define C_BUSY_SHIFT 8
#define C_DEAD 0x1u
#define C_ERRSENT 0x2u

static void conn_enter(hx_conn *c) { c->head_flags += 1u << C_BUSY_SHIFT; }
static void conn_leave(hx_conn *c);

/* Bytes of a request line: no control byte at all (not even HTAB), no DEL. */
static const unsigned char rl_char[256] = {[0x20 ... 0x7e] = 1, [0x80 ... 0xff] = 1};

/* Moves *I past the bytes of P (up to N) that are in TAB, four a step
 * while all four are, then one by one. 1 when it stopped at a byte not in
 * TAB (P[*I]), 0 when the input ended first. */
static inline int skip_run(const unsigned char *tab, const char *p, size_t *i, size_t n)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t k = *i;
    while (k + 4 <= n && (tab[u[k]] & tab[u[k + 1]] & tab[u[k + 2]] & tab[u[k + 3]]))
        k += 4;
    while (k < n && tab[u[k]])
        k++;
    *i = k;
    return k < n;
}

/*
 * Scans N new head bytes. Returns the number of bytes that belong to the
 * head (== N while it goes on, less when the head ended inside), or -1 for
 * a malformed head.
 */
static long head_validate(hx_conn *c, const char *p, size_t n)
{
    unsigned st = c->head_state;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        switch (st) {
        case V_BEGIN: /* RFC 9112 2.2: ignore empty lines before a request */
            if (ch == '\r') {
                st = V_BEGIN_CR;
                break;
            }
            if (ch == '\n')
                return -1;
            st = V_RL;
            /* fall through */
        case V_RL:
            /* the states that run over many bytes loop here, not through
             * the switch (skip_run) */
            if (!skip_run(rl_char, p, &i, n))
                goto more;
            if (p[i] != '\r')
                return -1;
            st = V_RL_CR;
            break;
        case V_BEGIN_CR:
            if (ch != '\n')
                return -1;
            st = V_BEGIN;
            break;
        case V_RL_CR:
            if (ch != '\n')
                return -1;
            st = V_H_START;
            break;
        case V_H_START:
            if (ch == '\r') {
                st = V_END_CR;
                break;
            }
            if (!hx_tchar[ch]) /* obs-fold, bare LF, bad name byte */
                return -1;
            st = V_H_NAME; /* and on with this byte: a tchar is never the colon */
            /* fall through */
        case V_H_NAME:
            if (!skip_run(hx_tchar, p, &i, n))
                goto more;
            if (p[i] != ':') /* includes space before the colon */
                return -1;
            st = V_H_VALUE;
            break;
        case V_H_VALUE:
            if (!skip_run(hx_vchar, p, &i, n))
                goto more;
            if (p[i] != '\r')
                return -1;
            st = V_H_CR;
            break;
        case V_H_CR:
            if (ch != '\n')
                return -1;
            st = V_H_START;
            break;
        case V_END_CR:
            if (ch != '\n')
                return -1;
            c->head_state = V_BEGIN;
            return (long)(i + 1);
        }
    }
    c->head_state = st;
    return (long)n;
more: /* the input ended inside a line: its state goes on with the next read */
    c->head_state = st;
    return (long)n;
}

/* ------------------------------------------------------------------ */
/* memory of idle connections                                          */

/* Gives B a block of SIZE bytes from the worker's cache when it has none;
 * hx_buf grows it with realloc past that. */
static inline int buf_take(hx_blockcache *bc, hx_buf *b, size_t size)
{
    if (b->data)
        return 0;
    b->data = hx_blockcache_get(bc, size);
    if (b->data == NULL)
        return -1;
    b->off = b->len = 0;
    b->cap = size;
    return 0;
}

/* Hands an empty buffer back: to the cache at its block size, else (it
 * grew) to malloc. */
static inline void buf_give(hx_blockcache *bc, hx_buf *b, size_t size)
{
    if (b->data == NULL || hx_buf_size(b) != 0)
        return;
    if (b->cap == size)
        hx_blockcache_put(bc, b->data);
    else
        free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

/* Between requests a connection holds only itself (448 bytes): its I/O
 * buffers go back to the worker and come again with the next byte (the
 * head buffers went with the request), so 100k idle keep-alive clients
 * cost what 100k structs cost (D54). */
static void conn_release_idle(hx_conn *c)
{
    hx_worker *w = c->w;
    buf_give(&w->conn_bufs, &c->in, HX_READ_CHUNK);
    buf_give(&w->conn_bufs, &c->out, HX_READ_CHUNK);
}

/* ------------------------------------------------------------------ */
/* transport: plain TCP or TLS                                         */

static ssize_t conn_send(hx_conn *c, const void *p, size_t n)
{
    return hx_sock_send(c->fd, c->ssl, p, n);
}

static ssize_t conn_recv(hx_conn *c, void *p, size_t n)
{
    int want_write = 0;
    ssize_t r = hx_sock_recv(c->fd, c->ssl, p, n, &want_write);
    if (want_write) {
        c->tls_rd_wants_write = 1;
        ev_io_start(c->w->loop, &c->wio);
    }
    return r;
}

/* TLS keeps decrypted bytes of its own that epoll cannot see: when reading
 * (re)starts with some of them buffered, read them now. */
static void conn_tls_kick_read(hx_conn *c)
{
    if (c->ssl && c->reading && !c->tls_hs && SSL_has_pending(c->ssl))
        ev_feed_event(c->w->loop, &c->rio, EV_READ);
}

static void conn_tls_handshake_done(hx_conn *c)
{
    c->tls_hs = 0;
    if (c->hs_wg) {
        hx_wgen_unref(c->hs_wg);
        c->hs_wg = NULL;
    }
}

/* 1 handshake complete, 0 in progress, -1 failed (the connection dies). */
static int conn_tls_handshake(hx_conn *c)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        conn_tls_handshake_done(c);
        if (hx_buf_size(&c->out) == 0 && ev_is_active(&c->wio))
            ev_io_stop(c->w->loop, &c->wio);
        return 1;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        if (ev_is_active(&c->wio))
            ev_io_stop(c->w->loop, &c->wio);
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        ev_io_start(c->w->loop, &c->wio);
        return 0;
    }
    unsigned long err = ERR_get_error();
    char buf[200] = "";
    if (err)
        ERR_error_string_n(err, buf, sizeof(buf));
    ERR_clear_error();
    /* a peer that connects and goes away (a port probe, a load balancer's
     * health check) is not worth an info line */
    int quiet = (e == SSL_ERROR_SYSCALL && err == 0) ||
                ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
    hx_log(quiet ? HELIOS_LOG_DEBUG : HELIOS_LOG_INFO, "%s: TLS handshake failed: %s", HX_CONN_PEER(c),
           err ? buf : (e == SSL_ERROR_SYSCALL ? "connection closed" : "protocol error"));
    return -1;
}

/* The socket became writable for TLS's own sake: 0 to go on writing
 * queued output, -1 when the event was for the handshake only. */
static int conn_tls_write_event(hx_conn *c)
{
    if (c->tls_hs) {
        int h = conn_tls_handshake(c);
        if (h < 0)
            c->head_flags |= C_DEAD;
        if (h <= 0)
            return -1;
        if (hx_tls_alpn_is_h2(c->ssl) && !c->h2) {
            if (hx_h2_start(c, NULL, 0) != 0) {
                c->head_flags |= C_DEAD;
                return -1;
            }
            c->state = HX_CS_ACTIVE;
        }
        if (c->reading)
            ev_feed_event(c->w->loop, &c->rio, EV_READ);
    }
    if (c->tls_rd_wants_write) {
        c->tls_rd_wants_write = 0;
        if (c->reading)
            ev_feed_event(c->w->loop, &c->rio, EV_READ);
        if (hx_buf_size(&c->out) == 0) {
            ev_io_stop(c->w->loop, &c->wio);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* output                                                              */

size_t hx_conn_pending(const hx_conn *c) { return hx_buf_size(&c->out); }

/* Output is queued and sent once per event-loop pass (hx_conn_flush, run
 * by conn_leave): a response head, its body and chunk framing leave in one
 * send(2) instead of several. */
int hx_conn_write(hx_conn *c, const void *p, size_t n)
{
    if (c->fd < 0 || (c->head_flags & C_DEAD))
        return -1;
    if ((c->out.data == NULL && n && buf_take(&c->w->conn_bufs, &c->out, HX_READ_CHUNK) != 0) ||
        hx_buf_append(&c->out, p, n) != 0) {
        c->head_flags |= C_DEAD;
        return -1;
    }
    return 0;
}

/* Large body pieces skip the copy: what is queued and the pieces go out in
 * one writev(2); only what the socket does not take is buffered. */
int hx_conn_writev(hx_conn *c, const struct iovec *iov, int cnt)
{
    size_t total = 0;
    for (int i = 0; i < cnt; i++)
        total += iov[i].iov_len;
    if (c->fd < 0 || (c->head_flags & C_DEAD))
        return -1;
    if (c->ssl || total < HX_WRITEV_MIN || ev_is_active(&c->wio) || cnt > 7 ||
        hx_uring_sock(c->fd)) {
        for (int i = 0; i < cnt; i++)
            if (hx_conn_write(c, iov[i].iov_base, iov[i].iov_len) != 0)
                return -1;
        return 0;
    }
    struct iovec v[8];
    int n = 0;
    size_t queued = hx_buf_size(&c->out);
    if (queued)
        v[n++] = (struct iovec){hx_buf_head(&c->out), queued};
    for (int i = 0; i < cnt; i++)
        v[n++] = iov[i];
    ssize_t w;
    do {
        w = writev(c->fd, v, n);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            c->head_flags |= C_DEAD;
            return -1;
        }
        w = 0;
    }
    c->last_io = ev_now(c->w->loop);
    size_t done = (size_t)w;
    size_t from_out = done < queued ? done : queued;
    hx_buf_consume(&c->out, from_out);
    done -= from_out;
    for (int i = 0; i < cnt; i++) {
        size_t len = iov[i].iov_len;
        if (done >= len) {
            done -= len;
            continue;
        }
        if (hx_buf_append(&c->out, (const char *)iov[i].iov_base + done, len - done) != 0) {
            c->head_flags |= C_DEAD;
            return -1;
        }
        done = 0;
    }
    if (hx_buf_size(&c->out) > 0)
        ev_io_start(c->w->loop, &c->wio);
    return 0;
}

void hx_conn_flush(hx_conn *c)
{
    if (c->fd < 0 || (c->head_flags & C_DEAD))
        return;
    if (c->h2 && (buf_take(&c->w->conn_bufs, &c->out, HX_READ_CHUNK) != 0 || hx_h2_pump(c) != 0)) {
        c->head_flags |= C_DEAD;
        return;
    }
    if (ev_is_active(&c->wio))
        return; /* a pending EV_WRITE will do it */
    while (hx_buf_size(&c->out) > 0) {
        ssize_t w = conn_send(c, hx_buf_head(&c->out), hx_buf_size(&c->out));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                c->head_flags |= C_DEAD;
            break;
        }
        c->last_io = ev_now(c->w->loop);
        hx_buf_consume(&c->out, (size_t)w);
    }
    if (hx_buf_size(&c->out) > 0 && !(c->head_flags & C_DEAD))
        ev_io_start(c->w->loop, &c->wio);
}

static void conn_write_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    hx_conn *c = io->data;
    conn_enter(c);
    if (c->ssl && conn_tls_write_event(c) != 0) {
        conn_leave(c);
        return;
    }
    while (hx_buf_size(&c->out) > 0) {
        ssize_t w = conn_send(c, hx_buf_head(&c->out), hx_buf_size(&c->out));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                c->head_flags |= C_DEAD;
            break;
        }
        c->last_io = ev_now(loop);
        hx_buf_consume(&c->out, (size_t)w);
    }
    if (c->h2 && hx_buf_size(&c->out) < 65536 && !(c->head_flags & C_DEAD)) {
        /* room again: serialise more frames (flushed by conn_leave) */
        ev_io_stop(loop, &c->wio);
        conn_leave(c);
        return;
    }
    if (hx_buf_size(&c->out) == 0) {
        ev_io_stop(loop, &c->wio);
        hx_buf_shrink(&c->out, 65536);
        if (c->req)
            hx_req_drained(c->req);
    } else if (c->req && hx_buf_size(&c->out) < 32768) {
        hx_req_drained(c->req);
    }
    conn_leave(c);
}

/* Error before/without routing: fixed response, connection closes. */
static void conn_send_error(hx_conn *c, int status, const char *why)
{
    if (c->head_flags & C_ERRSENT)
        return;
    c->head_flags |= C_ERRSENT;
    char buf[512];
    const char *reason = hx_reason(status);
    int blen = (int)strlen(reason) + 5;
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                     "Connection: close\r\nDate: %s\r\n\r\n%d %s\n",
                     status, reason, blen, hx_worker_date(c->w), status, reason);
    hx_info("%s: %d %s: %s", HX_CONN_PEER(c), status, reason, why);
    if (c->req && !c->req->head_sent) {
        c->req->status = status;
        c->req->head_sent = 1;
        c->req->resp_done = 1;
        c->req->error_reason = why;
        c->req->phase = HX_PH_DONE;
    } else if (c->req == NULL) {
        /* Refused before the parser began a request (a head the raw
         * validator rejected, a head that never completed): the logs
         * still get a line, with what is known. */
        hx_req *r = req_new(c);
        if (r != NULL) {
            r->http_major = 1;
            r->http_minor = 1;
            r->status = status;
            r->head_sent = r->resp_done = 1;
            r->error_reason = why;
            r->phase = HX_PH_DONE;
            hx_req_log(r);
            req_free(c, r);
        }
    }
    hx_conn_write(c, buf, (size_t)n);
    c->close_after = 1;
    c->state = HX_CS_CLOSING;
    if (c->reading) {
        ev_io_stop(c->w->loop, &c->rio);
        c->reading = 0;
    }
}

/* ------------------------------------------------------------------ */
/* requests                                                            */

/* Requests come from the worker's cache: the one a connection just
 * finished is usually the one its next request gets. */
static hx_req *req_new(hx_conn *c)
{
    hx_req *r = hx_blockcache_get(&c->w->conn_reqs, HX_REQ_ALLOC);
    if (r == NULL)
        return NULL;
    hx_req_init(r, &hx_http1_ops, c->w, c, HX_REQ_ARENA);
    r->https = c->ssl != NULL;
    memcpy(&r->client, &c->peer, sizeof(c->peer));
    /* the head builder lives and dies with the request: an idle
     * connection does not carry it (D54) */
    c->hb = (hx_hdr_builder *)((char *)r + HX_REQ_HB_AT);
    memset(c->hb, 0, sizeof(*c->hb));
    return r;
}

static void req_free(hx_conn *c, hx_req *r)
{
    hx_hdr_builder *hb = (hx_hdr_builder *)((char *)r + HX_REQ_HB_AT);
    hx_buf_reset(&hb->url);
    hx_buf_reset(&hb->name);
    hx_buf_reset(&hb->value);
    buf_give(&c->w->conn_small, &hb->url, HX_SMALL_BUF);
    buf_give(&c->w->conn_small, &hb->name, HX_SMALL_BUF);
    buf_give(&c->w->conn_small, &hb->value, HX_SMALL_BUF);
    if (c->hb == hb)
        c->hb = NULL;
    hx_req_fini(r);
    hx_blockcache_put(&c->w->conn_reqs, r);
}

/* The response is complete and flushed (or the connection is going away):
 * log it, free it, and move on to the next request. */
static void conn_request_complete(hx_conn *c)
{
    hx_req *r = c->req;
    c->req = NULL;
    hx_req_log(r);
    int keep = r->keepalive && !r->aborted && r->body_done && !c->close_after &&
               !c->w->stopping;
    c->served = 1;
    req_free(c, r);
    if (!keep) {
        c->close_after = 1;
        c->state = HX_CS_CLOSING;
        return;
    }
    c->state = HX_CS_IDLE;
    if (c->msg_paused) {
        llhttp_resume(&c->parser);
        c->msg_paused = 0;
    }
    c->head_state = V_BEGIN;
    c->head_start = ev_now(c->w->loop);
}

/* Lingering close (nginx's lingering_close): after a GOAWAY to a client
 * that may still be sending, close our side for writing and read and drop
 * what comes for a moment, so the kernel does not answer the unread bytes
 * with a reset that would destroy the GOAWAY before the client reads it. */
static void linger_read_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_conn *c = io->data;
    char buf[16384];
    for (int i = 0; i < 16; i++) {
        ssize_t n = hx_sock_recv(c->fd, NULL, buf, sizeof(buf), NULL);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_close(c);
        return;
    }
}

static void linger_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    conn_close(t->data);
}

static void conn_linger(hx_conn *c)
{
    hx_worker *w = c->w;
    c->lingering = 1;
    if (c->h2) {
        c->head_flags += 1u << C_BUSY_SHIFT;
        hx_h2_free(c);
        c->head_flags -= 1u << C_BUSY_SHIFT;
    }
    if (c->ssl) {
        ERR_clear_error();
        SSL_free(c->ssl); /* no close_notify: the peer misbehaved */
        c->ssl = NULL;
    }
    hx_sock_shutdown_write(c->fd, NULL);
    ev_io_stop(w->loop, &c->wio);
    ev_io_stop(w->loop, &c->rio);
    ev_set_cb(&c->rio, linger_read_cb);
    ev_io_start(w->loop, &c->rio);
    c->reading = 1;
    ev_timer_stop(w->loop, &c->timer);
    ev_set_cb(&c->timer, linger_timer_cb);
    ev_timer_set(&c->timer, 2.0, 0.);
    ev_timer_start(w->loop, &c->timer);
}

/* conn_leave for an HTTP/2 connection: finish closed streams, serialise
 * and send frames, and close when the session is over. */
static void conn_h2_leave(hx_conn *c)
{
    for (int guard = 0; guard < 100; guard++) {
        c->head_flags += 1u << C_BUSY_SHIFT;
        hx_h2_reap(c);
        /* serialising frames runs data callbacks that reach request and
         * upstream code: inside the bracket, so nothing re-enters here */
        hx_conn_flush(c);
        c->head_flags -= 1u << C_BUSY_SHIFT;
        if (c->head_flags & C_DEAD) {
            conn_close(c);
            return;
        }
        /* sending END_STREAM may have closed streams: finish them now */
        c->head_flags += 1u << C_BUSY_SHIFT;
        hx_h2_reap(c);
        c->head_flags -= 1u << C_BUSY_SHIFT;
        if (hx_h2_done(c) && hx_buf_size(&c->out) == 0) {
            if (hx_h2_killed(c))
                conn_linger(c);
            else
                conn_close(c);
            return;
        }
        /* frames queued while finishing streams (a reset, a window) */
        if (hx_h2_wants_write(c) && hx_buf_size(&c->out) == 0)
            continue;
        /* input held back by backpressure may go on now */
        if (hx_buf_size(&c->in) > 0 && hx_h2_wants_read(c) && hx_buf_size(&c->out) < 65536) {
            size_t before = hx_buf_size(&c->in);
            c->head_flags += 1u << C_BUSY_SHIFT;
            hx_h2_input(c);
            c->head_flags -= 1u << C_BUSY_SHIFT;
            if (hx_buf_size(&c->in) != before)
                continue;
        }
        break;
    }
    int want = hx_h2_wants_read(c) && !c->half_closed && hx_buf_size(&c->in) < 65536;
    /* the session itself stays; its I/O buffers go back while empty (D54) */
    buf_give(&c->w->conn_bufs, &c->in, HX_READ_CHUNK);
    buf_give(&c->w->conn_bufs, &c->out, HX_READ_CHUNK);
    if (want && !c->reading) {
        ev_io_start(c->w->loop, &c->rio);
        c->reading = 1;
        conn_tls_kick_read(c);
    } else if (!want && c->reading) {
        ev_io_stop(c->w->loop, &c->rio);
        c->reading = 0;
    }
    conn_update_timer(c);
}

static void conn_leave(hx_conn *c)
{
    c->head_flags -= 1u << C_BUSY_SHIFT;
    if ((c->head_flags >> C_BUSY_SHIFT) != 0)
        return;
    if (c->lingering) { /* only the linger's own callbacks close it, or death */
        if (c->head_flags & C_DEAD)
            conn_close(c);
        return;
    }
    if (c->req && c->req->tunnel) {
        /* tunnel.c drives this connection's I/O now; it only ever asks
         * for the close (graceful stop leaves it open until the grace
         * period ends) */
        if (c->head_flags & C_DEAD)
            conn_close(c);
        return;
    }
    if (c->h2) {
        conn_h2_leave(c);
        return;
    }
    for (int guard = 0; guard < 1000; guard++) {
        hx_conn_flush(c);
        if (c->head_flags & C_DEAD) {
            conn_close(c);
            return;
        }
        hx_req *r = c->req;
        if (r && r->phase == HX_PH_DONE && hx_buf_size(&c->out) == 0 && !r->up) {
            if (!r->body_done && !r->aborted && !c->close_after) {
                /* answered before the body was read: drop the rest of it,
                 * unless the client still waits for 100-continue */
                if ((r->expect_continue && !r->continue_sent) || r->chunked ||
                    (r->content_length >= 0 &&
                     (uint64_t)r->content_length - r->bytes_in > HX_DISCARD_MAX)) {
                    /* reading the rest would cost more than a new
                     * connection (or its size is unknown): close */
                    c->close_after = 1;
                } else if (!r->body_discard) {
                    r->body_discard = 1;
                    c->head_flags += 1u << C_BUSY_SHIFT;
                    conn_process(c);
                    c->head_flags -= 1u << C_BUSY_SHIFT;
                    continue;
                } else {
                    break; /* waiting for more body bytes */
                }
            }
            c->head_flags += 1u << C_BUSY_SHIFT;
            conn_request_complete(c);
            c->head_flags -= 1u << C_BUSY_SHIFT;
            if (c->state == HX_CS_IDLE && hx_buf_size(&c->in) > 0) {
                c->head_flags += 1u << C_BUSY_SHIFT;
                conn_process(c); /* pipelined request */
                c->head_flags -= 1u << C_BUSY_SHIFT;
                continue;
            }
        }
        if (c->state == HX_CS_CLOSING && c->req == NULL && hx_buf_size(&c->out) == 0) {
            conn_close(c);
            return;
        }
        if (c->state == HX_CS_CLOSING && c->req && c->req->phase == HX_PH_DONE &&
            hx_buf_size(&c->out) == 0) {
            c->head_flags += 1u << C_BUSY_SHIFT;
            conn_request_complete(c);
            c->head_flags -= 1u << C_BUSY_SHIFT;
            continue;
        }
        break;
    }
    /* Resume reading when there is room and something to read for. */
    /* Keep reading (pipelined bytes wait in the buffer) unless the buffer
     * is full: toggling the watcher per request costs an epoll_ctl. */
    int want = c->state != HX_CS_CLOSING && !c->half_closed &&
               hx_buf_size(&c->in) < (c->req ? c->req->gen->limits.max_body_buffer
                                             : c->w->wgen->gen->limits.max_header_size +
                                                   c->w->wgen->gen->limits.max_request_line);
    if (c->req && c->req->phase == HX_PH_PROXY && !hx_proxy->body_writable(c->req))
        want = 0;
    if (want && !c->reading) {
        ev_io_start(c->w->loop, &c->rio);
        c->reading = 1;
        conn_tls_kick_read(c);
    } else if (!want && c->reading) {
        ev_io_stop(c->w->loop, &c->rio);
        c->reading = 0;
    }
    if (c->req == NULL && c->state != HX_CS_CLOSING && hx_buf_size(&c->in) == 0 &&
        hx_buf_size(&c->out) == 0)
        conn_release_idle(c);
    conn_update_timer(c);
}

/* ------------------------------------------------------------------ */
/* llhttp callbacks                                                    */

static hx_conn *P(llhttp_t *p) { return p->data; }

static int push_header(hx_conn *c)
{
    hx_hdr_builder *hb = c->hb;
    if (!hb->in_value && hx_buf_size(&hb->name) == 0)
        return 0;
    hx_req *r = c->req;
    const char *v = hx_buf_head(&hb->value);
    size_t vl = hx_buf_size(&hb->value);
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    while (vl > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    if (++hb->count > r->gen->limits.max_headers)
        return 431;
    if (hb->in_trailers) {
        /* Trailers get the head's rules (the head validator never sees
         * them) and are dropped: the head went on long ago, and a field
         * that arrives after the body must never be read as part of it. */
        if (!hx_hdr_name_valid(hx_buf_head(&hb->name), hx_buf_size(&hb->name)) ||
            !hx_hdr_value_valid(v, vl))
            return 400;
    } else if (hx_hdrs_add(&r->arena, &r->hdrs, hx_buf_head(&hb->name), hx_buf_size(&hb->name), v,
                    vl) != 0)
        return 500;
    hx_buf_reset(&hb->name);
    hx_buf_reset(&hb->value);
    hb->in_value = 0;
    return 0;
}

static const char *header_error(int st)
{
    return st == 431 ? "too many header fields"
           : st == 400 ? "malformed trailer field"
                       : "out of memory";
}

static int set_error(hx_conn *c, int status, const char *why)
{
    c->err_status = status;
    if (c->hb) /* none only when the request itself could not be allocated */
        c->hb->err_reason = why;
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
    hx_conn *c = P(p);
    if (c->req == NULL) {
        c->req = req_new(c);
        if (c->req == NULL)
            return set_error(c, 500, "out of memory");
    }
    c->state = HX_CS_HEAD;
    hx_buf_reset(&c->hb->name);
    hx_buf_reset(&c->hb->value);
    c->hb->in_value = 0;
    c->hb->total = 0;
    c->hb->count = 0;
    c->hb->in_trailers = 0;
    c->hb->chunk_ext = 0;
    hx_buf_reset(&c->hb->url);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    hx_conn *c = P(p);
    if (hx_buf_size(&c->hb->url) + len > c->req->gen->limits.max_request_line)
        return set_error(c, 414, "request line too long");
    if (buf_take(&c->w->conn_small, &c->hb->url, HX_SMALL_BUF) != 0)
        return set_error(c, 500, "out of memory");
    hx_buf_append(&c->hb->url, at, len);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    hx_conn *c = P(p);
    if (c->hb->in_value) {
        int st = push_header(c);
        if (st)
            return set_error(c, st, header_error(st));
    }
    c->hb->total += len;
    if (c->hb->total > c->req->gen->limits.max_header_size)
        return set_error(c, 431, "request header fields too large");
    if (buf_take(&c->w->conn_small, &c->hb->name, HX_SMALL_BUF) != 0 ||
        hx_buf_append(&c->hb->name, at, len) != 0)
        return set_error(c, 500, "out of memory");
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    hx_conn *c = P(p);
    c->hb->in_value = 1;
    c->hb->total += len;
    if (c->hb->total > c->req->gen->limits.max_header_size)
        return set_error(c, 431, "request header fields too large");
    if (buf_take(&c->w->conn_small, &c->hb->value, HX_SMALL_BUF) != 0 ||
        hx_buf_append(&c->hb->value, at, len) != 0)
        return set_error(c, 500, "out of memory");
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    hx_conn *c = P(p);
    hx_req *r = c->req;
    if (c->hb->in_value || hx_buf_size(&c->hb->name)) {
        int st = push_header(c);
        if (st)
            return set_error(c, st, header_error(st));
    }
    c->hb->in_trailers = 1;
    const char *m = llhttp_method_name((llhttp_method_t)p->method);
    r->method.ptr = m;
    r->method.len = strlen(m);
    r->method_id = p->method;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    if (r->http_major != 1)
        return set_error(c, 505, "unsupported HTTP version");
    r->is_head = p->method == HTTP_HEAD;
    r->target.ptr = hx_arena_strndup(&r->arena, hx_buf_head(&c->hb->url), hx_buf_size(&c->hb->url));
    r->target.len = hx_buf_size(&c->hb->url);
    if (r->target.ptr == NULL)
        return set_error(c, 500, "out of memory");
    if (p->method == HTTP_CONNECT)
        return set_error(c, 405, "CONNECT is not supported");

    /* Framing: refuse anything that two parsers could read differently. */
    int ncl = 0, nte = 0, nhost = 0;
    helios_buf te = {0}, host = {0}, cl = {0};
    for (size_t i = 0; i < r->hdrs.n; i++) {
        const hx_hdr *h = &r->hdrs.v[i];
        if (hx_name_is(h->name.ptr, h->name.len, "content-length", 14)) {
            if (ncl++ && (h->value.len != cl.len || memcmp(h->value.ptr, cl.ptr, cl.len)))
                return set_error(c, 400, "conflicting Content-Length headers");
            cl = h->value;
        } else if (hx_name_is(h->name.ptr, h->name.len, "transfer-encoding", 17)) {
            nte++;
            te = h->value;
        } else if (hx_name_is(h->name.ptr, h->name.len, "host", 4)) {
            nhost++;
            host = h->value;
        } else if (hx_name_is(h->name.ptr, h->name.len, "expect", 6)) {
            if (hx_name_is(h->value.ptr, h->value.len, "100-continue", 12))
                r->expect_continue = 1;
            else
                return set_error(c, 417, "unsupported Expect value");
        }
    }
    if (nte && ncl)
        return set_error(c, 400, "both Content-Length and Transfer-Encoding");
    if (nte) {
        if (r->http_minor == 0)
            return set_error(c, 400, "Transfer-Encoding in an HTTP/1.0 request");
        if (nte > 1 || !hx_name_is(te.ptr, te.len, "chunked", 7))
            return set_error(c, 501, "Transfer-Encoding other than chunked");
        r->chunked = 1;
        r->has_body = 1;
    }
    if (ncl) {
        if (cl.len == 0 || cl.len > 18)
            return set_error(c, 400, "invalid Content-Length");
        int64_t v = 0;
        for (size_t i = 0; i < cl.len; i++) {
            if (cl.ptr[i] < '0' || cl.ptr[i] > '9')
                return set_error(c, 400, "invalid Content-Length");
            v = v * 10 + (cl.ptr[i] - '0');
        }
        r->content_length = v;
        r->has_body = v > 0;
        uint64_t max = r->gen->limits.max_request_body;
        if (max && (uint64_t)v > max) /* before any 100 Continue */
            return set_error(c, 413, "request body larger than limits.max_request_body");
    }
    if (nhost > 1)
        return set_error(c, 400, "more than one Host header");
    if (nhost == 0 && r->http_minor >= 1)
        return set_error(c, 400, "missing Host header");
    (void)host; /* parsed and normalised once, by the request layer */
    r->keepalive = llhttp_should_keep_alive(p);
    if (p->upgrade)
        c->close_after = 1; /* answered normally, then closed (unless tunnelled) */
    /* WebSocket (tunnel.c): a GET without a body may become a tunnel when
     * the backend answers 101; any other upgrade is answered as plain HTTP */
    if (p->upgrade && p->method == HTTP_GET && r->http_minor >= 1 && !r->has_body &&
        hx_list_has_token(hx_hdrs_get(&r->hdrs, "upgrade"), "websocket", 9))
        r->ws_upgrade = 1;
    if (!r->has_body)
        return 0; /* message completes right away */
    c->head_paused = 1;
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    hx_conn *c = P(p);
    if (hx_req_body_in(c->req, at, len, 0) != 0)
        return set_error(c, 500, "request body filter failed");
    return 0;
}

/* Chunk extensions are allowed and ignored, but bounded: a client cannot
 * make heliosd read an endless chunk header. */
#define HX_CHUNK_EXT_MAX 4096

/* llhttp reports a chunk's extensions before its on_chunk_header: the count
 * starts again after each chunk header line. */
static int on_chunk_header(llhttp_t *p)
{
    P(p)->hb->chunk_ext = 0;
    return 0;
}

static int on_chunk_ext(llhttp_t *p, const char *at, size_t len)
{
    (void)at;
    hx_conn *c = P(p);
    c->hb->chunk_ext += len;
    if (c->hb->chunk_ext > HX_CHUNK_EXT_MAX)
        return set_error(c, 400, "chunk extensions too long");
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    hx_conn *c = P(p);
    hx_req *r = c->req;
    if (c->hb->in_value || hx_buf_size(&c->hb->name)) { /* the last trailer field */
        int st = push_header(c);
        if (st)
            return set_error(c, st, header_error(st));
    }
    if (r->phase == HX_PH_HEAD) {
        r->body_done = 1;
    } else if (hx_req_body_in(r, NULL, 0, 1) != 0) {
        return set_error(c, 500, "request body filter failed");
    }
    c->msg_paused = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t *req_settings(void)
{
    static llhttp_settings_t s;
    static int init;
    if (!init) {
        llhttp_settings_init(&s);
        s.on_message_begin = on_message_begin;
        s.on_url = on_url;
        s.on_header_field = on_header_field;
        s.on_header_value = on_header_value;
        s.on_headers_complete = on_headers_complete;
        s.on_body = on_body;
        s.on_message_complete = on_message_complete;
        s.on_chunk_header = on_chunk_header;
        s.on_chunk_extension_name = on_chunk_ext;
        s.on_chunk_extension_value = on_chunk_ext;
        init = 1;
    }
    return &s;
}

/* ------------------------------------------------------------------ */
/* input processing                                                    */

static int body_wanted(hx_conn *c)
{
    hx_req *r = c->req;
    if (r == NULL)
        return 0;
    return hx_req_takes_body(r);
}

void hx_http1_body_wanted(hx_conn *c)
{
    hx_req *r = c->req;
    if (r && r->expect_continue && !r->continue_sent && !r->body_done && !r->head_sent) {
        r->continue_sent = 1;
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        hx_conn_write(c, cont, sizeof(cont) - 1);
    }
    /* From inside llhttp's callbacks (a request body that outgrew its
     * buffer starts the proxy there) the parser is already running: its
     * caller's loop reads on when it returns. */
    if (!c->parsing)
        conn_process(c);
}

static void conn_parse_error(hx_conn *c, llhttp_errno_t err)
{
    int status = 400;
    const char *why = llhttp_get_error_reason(&c->parser);
    if (c->err_status) {
        /* llhttp reports a callback's refusal as HPE_CB_* "User callback
         * error"; the callback left the real status and reason here */
        status = c->err_status;
        why = c->hb ? c->hb->err_reason : "out of memory";
    } else if (err == HPE_INVALID_TRANSFER_ENCODING) {
        /* llhttp refuses a non-chunked final coding before our own check */
        status = 501;
    } else if (why == NULL) {
        why = llhttp_errno_name(err);
    }
    if (c->req && c->req->head_sent) {
        /* mid-body framing error while a response is under way */
        hx_resp_abort(c->req, why ? why : "malformed request body");
        c->close_after = 1;
        return;
    }
    conn_send_error(c, status, why ? why : "malformed request");
}

/*
 * What a new clear-text connection on an h2c listener speaks, from its
 * first line: 2 the HTTP/2 preface, 1 an HTTP/1.x request line ("... HTTP/
 * d.d", after the empty lines RFC 9112 2.2 allows), 0 not known yet, -1
 * neither. Neither is an invalid HTTP/2 preface (RFC 9113 3.4: a connection
 * error), so it is closed without an HTTP/1.1 answer that an HTTP/2 client
 * would read as a frame (h2spec 3.5/2); on a listener without h2c the
 * same bytes get the HTTP/1.1 400. A first line longer than
 * limits.max_request_line is left to the HTTP/1.1 checks (414).
 */
static int conn_sniff_h2c(hx_conn *c)
{
    const char *p = hx_buf_head(&c->in);
    size_t n = hx_buf_size(&c->in);
    int pre = hx_h2_preface(p, n);
    if (pre >= 0)
        return pre == 1 ? 2 : 0;
    while (n >= 2 && p[0] == '\r' && p[1] == '\n') {
        p += 2;
        n -= 2;
    }
    const char *nl = memchr(p, '\n', n);
    if (nl == NULL) {
        int too_long = hx_buf_size(&c->in) >= c->w->wgen->gen->limits.max_request_line;
        return too_long && !(n == 1 && p[0] == '\r') ? 1 : 0;
    }
    size_t len = (size_t)(nl - p);
    if (len > 0 && p[len - 1] == '\r')
        len--;
    static const char pri[] = "PRI * HTTP/2.0";
    if (len == sizeof(pri) - 1 && memcmp(p, pri, len) == 0)
        return -1; /* the preface, broken after its first line */
    if (len < 10)
        return -1;
    const char *v = p + len - 8;
    if (memcmp(v, "HTTP/", 5) != 0 || v[-1] != ' ' || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return -1;
    return 1;
}

static void conn_process(hx_conn *c)
{
    if (c->h2) {
        hx_h2_input(c);
        return;
    }
    if (!c->served && c->req == NULL && c->ls->conf.h2c && c->ssl == NULL &&
        hx_buf_size(&c->in) > 0) {
        int proto = conn_sniff_h2c(c);
        if (proto == 0)
            return; /* the first line is not complete: wait for more */
        if (proto < 0) {
            hx_info("%s: neither an HTTP/1.x request line nor the HTTP/2 preface: closed",
                    HX_CONN_PEER(c));
            c->head_flags |= C_DEAD;
            return;
        }
        if (proto == 2) {
            if (hx_h2_start(c, NULL, 0) != 0) {
                c->head_flags |= C_DEAD;
                return;
            }
            c->state = HX_CS_ACTIVE;
            hx_h2_input(c);
            return;
        }
    }
    for (;;) {
        if (c->state == HX_CS_CLOSING || (c->head_flags & C_DEAD))
            return;
        size_t avail = hx_buf_size(&c->in);
        if (c->head_paused) {
            if (!body_wanted(c))
                return;
            llhttp_resume(&c->parser);
            c->head_paused = 0;
        }
        if (c->msg_paused) /* pipelined bytes wait for the current response */
            return;
        if (avail == 0)
            return;
        const char *p = hx_buf_head(&c->in);
        size_t n = avail;
        int in_head = c->req == NULL || c->req->phase == HX_PH_HEAD;
        if (in_head && !c->head_paused) {
            if (c->state == HX_CS_IDLE) {
                c->state = HX_CS_HEAD;
                c->head_start = ev_now(c->w->loop);
            }
            long k = head_validate(c, p, n);
            if (k < 0) {
                conn_send_error(c, 400, "malformed request head (bare CR/LF, obs-fold, NUL "
                                        "or invalid character)");
                return;
            }
            n = (size_t)k;
        } else if (!body_wanted(c)) {
            return;
        } else if (c->req && c->req->phase == HX_PH_PROXY) {
            /* feed no more than the upstream side can take right now */
            size_t room = c->req->gen->limits.max_body_buffer;
            if (n > room)
                n = room;
        }
        c->parsing = 1;
        llhttp_errno_t err = llhttp_execute(&c->parser, p, n);
        c->parsing = 0;
        size_t used = n;
        if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            used = (size_t)(llhttp_get_error_pos(&c->parser) - p);
            if (err == HPE_PAUSED_UPGRADE) {
                c->msg_paused = 1;
                c->close_after = 1;
            }
        } else if (err != HPE_OK) {
            conn_parse_error(c, err);
            return;
        }
        c->last_io = ev_now(c->w->loop);
        hx_buf_consume(&c->in, used);
        hx_req *r = c->req;
        if (r && r->phase == HX_PH_HEAD && (c->head_paused || c->msg_paused)) {
            c->state = HX_CS_ACTIVE;
            if (c->w->stopping)
                r->keepalive = 0;
            hx_req_start(r);
            if (c->state == HX_CS_CLOSING || c->req != r)
                return;
            continue;
        }
        if (used == 0 && err != HPE_OK)
            return;
        if (used == 0)
            return;
    }
}

static void conn_read_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    hx_conn *c = io->data;
    conn_enter(c);
    if (buf_take(&c->w->conn_bufs, &c->in, HX_READ_CHUNK) != 0 ||
        hx_buf_reserve(&c->in, HX_READ_CHUNK) != 0) {
        c->head_flags |= C_DEAD;
        conn_leave(c);
        return;
    }
    if (c->tls_hs) {
        int h = conn_tls_handshake(c);
        if (h <= 0) {
            if (h < 0)
                c->head_flags |= C_DEAD;
            conn_leave(c);
            return;
        }
        if (hx_tls_alpn_is_h2(c->ssl)) {
            if (hx_h2_start(c, NULL, 0) != 0) {
                c->head_flags |= C_DEAD;
                conn_leave(c);
                return;
            }
            c->state = HX_CS_ACTIVE;
        }
    }
    ssize_t n = conn_recv(c, c->in.data + c->in.len, c->in.cap - c->in.len);
    if (n > 0) {
        c->in.len += (size_t)n;
        c->last_io = ev_now(loop);
        conn_process(c);
        conn_tls_kick_read(c);
    } else if (c->h2 && (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))) {
        /* the end of an HTTP/2 connection ends its streams (as nginx does):
         * a client that only half-closed cannot send WINDOW_UPDATE any more,
         * so waiting for its answers could wait forever */
        c->head_flags |= C_DEAD;
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        /* peer closed or reset */
        if (c->req && c->req->phase != HX_PH_HEAD && !c->req->body_done && !c->msg_paused &&
            !c->head_paused) {
            /* body cut short: llhttp decides if EOF ends it (it never does
             * for length or chunked framing) */
            hx_resp_abort(c->req, "client closed the connection during the request body");
        }
        if (c->req && c->req->phase != HX_PH_DONE && c->req->phase != HX_PH_HEAD && n == 0 &&
            c->req->body_done) {
            /* half-close after a full request: keep answering */
            ev_io_stop(loop, &c->rio);
            c->reading = 0;
            c->half_closed = 1;
            c->close_after = 1;
            conn_leave(c);
            return;
        }
        c->head_flags |= C_DEAD;
    }
    conn_leave(c);
}

/* ------------------------------------------------------------------ */
/* timers                                                              */

static void conn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    hx_conn *c = t->data;
    conn_enter(c);
    ev_tstamp now = ev_now(loop);
    const hx_gen *g = c->req ? c->req->gen : c->w->wgen->gen;
    const hx_timeouts *to = &g->timeouts;
    if (c->h2) {
        ev_tstamp next = 0;
        if (hx_buf_size(&c->out) > 0 && now - c->last_io >= to->client_write_ms / 1000.0) {
            hx_info("closing HTTP/2 connection: client write timeout");
            c->head_flags |= C_DEAD;
        } else if (hx_h2_check_timeouts(c, now, &next, 1)) {
            c->close_after = 1;
        }
        conn_leave(c);
        return;
    }
    if (hx_buf_size(&c->out) > 0) {
        if (now - c->last_io >= to->client_write_ms / 1000.0) {
            hx_info("closing connection: client write timeout");
            if (c->req)
                c->req->aborted = 1;
            c->head_flags |= C_DEAD;
        }
    } else if (c->state == HX_CS_IDLE) {
        if (now - c->last_io >= to->keepalive_ms / 1000.0)
            c->head_flags |= C_DEAD;
    } else if (c->state == HX_CS_HEAD) {
        if (now - c->head_start >= to->client_header_ms / 1000.0)
            conn_send_error(c, 408, "client header timeout");
    } else if (c->req && !c->req->body_done && c->reading) {
        if (now - c->last_io >= to->client_body_ms / 1000.0) {
            if (c->req->head_sent) {
                hx_resp_abort(c->req, "client body timeout");
                c->head_flags |= C_DEAD;
            } else {
                hx_proxy->detach(c->req);
                conn_send_error(c, 408, "client body timeout");
            }
        }
    }
    conn_leave(c);
}

static void conn_update_timer(hx_conn *c)
{
    if (c->fd < 0)
        return;
    const hx_gen *g = c->req ? c->req->gen : c->w->wgen->gen;
    const hx_timeouts *to = &g->timeouts;
    ev_tstamp now = ev_now(c->w->loop), at = 0;
    if (c->h2) {
        if (hx_buf_size(&c->out) > 0)
            at = c->last_io + to->client_write_ms / 1000.0;
        else if (hx_h2_check_timeouts(c, now, &at, 0))
            at = now; /* due: the timer closes it */
    } else if (hx_buf_size(&c->out) > 0)
        at = c->last_io + to->client_write_ms / 1000.0;
    else if (c->state == HX_CS_IDLE)
        at = c->last_io + to->keepalive_ms / 1000.0;
    else if (c->state == HX_CS_HEAD)
        at = c->head_start + to->client_header_ms / 1000.0;
    else if (c->req && !c->req->body_done && c->reading)
        at = c->last_io + to->client_body_ms / 1000.0;
    if (at == 0) {
        /* Nothing to time (a request being served): an armed timer is
         * left to run out instead of stopped. conn_timer_cb checks every
         * deadline again, so an early firing only re-arms, and the
         * keep-alive deadline set after the response usually lands within
         * the 50 ms below of the one still armed: no stop and start per
         * request. */
        return;
    }
    ev_tstamp after = at - now;
    if (after < 0.001)
        after = 0.001;
    /* re-arm only when it moves: ev_timer_set on an active timer is UB */
    if (ev_is_active(&c->timer)) {
        ev_tstamp left = ev_timer_remaining(c->w->loop, &c->timer);
        if (left > after - 0.05 && left < after + 0.05)
            return;
        ev_timer_stop(c->w->loop, &c->timer);
    }
    ev_timer_set(&c->timer, after, 0.);
    ev_timer_start(c->w->loop, &c->timer);
}

/* ------------------------------------------------------------------ */
/* life cycle                                                          */

void hx_conn_accept(hx_lsock *ls, int fd, const struct sockaddr *sa, socklen_t salen)
{
    hx_worker *w = ls->w;
    hx_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->w = w;
    c->ls = ls;
    c->fd = fd;
    if (ls->conf.tls) {
        c->ssl = hx_tls_accept(ls->conf.tls, fd);
        if (c->ssl == NULL) {
            hx_error("cannot create a TLS session for a connection on %s", ls->key);
            free(c);
            close(fd);
            return;
        }
        c->tls_hs = 1;
        /* the SNI and ALPN callbacks read the generation's TLS settings */
        c->hs_wg = w->wgen;
        hx_wgen_ref(c->hs_wg);
    }
    if (salen > sizeof(c->peer))
        salen = sizeof(c->peer);
    memcpy(&c->peer, sa, salen);
    static _Atomic uint64_t next_id = 1;
    c->id = atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed);
    llhttp_init(&c->parser, HTTP_REQUEST, req_settings());
    c->parser.data = c;
    ev_io_init(&c->rio, conn_read_cb, fd, EV_READ);
    ev_io_init(&c->wio, conn_write_cb, fd, EV_WRITE);
    c->rio.data = c->wio.data = c;
    ev_init(&c->timer, conn_timer_cb);
    c->timer.data = c;
    c->state = HX_CS_IDLE;
    c->head_start = c->last_io = ev_now(w->loop);
    /* a new connection gets the header timeout, not the keep-alive one */
    c->state = HX_CS_HEAD;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    ls->nconns++;
    HX_STAT_ADD(w, accepted, 1);
    HX_STAT_ADD(w, active, 1);
    if (c->ssl == NULL && w->uring)
        hx_uring_adopt(fd);
    ev_io_start(w->loop, &c->rio);
    c->reading = 1;
    conn_update_timer(c);
}

static void conn_close(hx_conn *c)
{
    hx_worker *w = c->w;
    if (c->h2) {
        c->head_flags += 1u << C_BUSY_SHIFT; /* streams' ends must not recurse here */
        hx_h2_free(c);
        c->head_flags -= 1u << C_BUSY_SHIFT;
    }
    if (c->req && c->req->tunnel)
        hx_proxy->tunnel_close(c->req); /* logs it and closes the upstream side */
    if (c->req) {
        hx_req *r = c->req;
        c->req = NULL;
        if (!r->log_done && r->phase != HX_PH_HEAD) {
            if (!r->resp_done)
                r->aborted = 1;
            hx_req_log(r);
        } else if (!r->log_done && r->status) {
            hx_req_log(r); /* an error answered before routing: no filters ran */
        }
        req_free(c, r);
    }
    ev_io_stop(w->loop, &c->rio);
    ev_io_stop(w->loop, &c->wio);
    ev_timer_stop(w->loop, &c->timer);
    if (c->ssl) {
        if (!c->tls_hs && !(c->head_flags & C_DEAD))
            SSL_shutdown(c->ssl); /* close_notify, best effort: never waits */
        ERR_clear_error();
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->hs_wg) {
        hx_wgen_unref(c->hs_wg);
        c->hs_wg = NULL;
    }
    if (c->fd >= 0)
        hx_fd_close(c->fd);
    c->fd = -1;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->ls->nconns--;
    w->nconns--;
    HX_STAT_ADD(w, active, -1);
    hx_buf_free(&c->in);
    hx_buf_free(&c->out);
    free(c);
    hx_worker_conn_gone(w);
}

static void conn_shutdown(hx_conn *c)
{
    conn_enter(c);
    if (c->lingering)
        c->head_flags |= C_DEAD; /* stopping: no need to wait for the peer */
    else if (c->h2)
        hx_h2_shutdown(c);
    else if (c->state == HX_CS_IDLE && c->req == NULL)
        c->head_flags |= C_DEAD;
    else
        c->close_after = 1;
    conn_leave(c);
}

/* Wrappers so request.c/upstream.c can run code inside the conn's
 * enter/leave bracket (for callbacks that do not come through http1.c). */
void hx_conn_enter(hx_conn *c) { conn_enter(c); }
void hx_conn_leave(hx_conn *c) { conn_leave(c); }
void hx_conn_mark_dead(hx_conn *c) { c->head_flags |= C_DEAD; }
void hx_conn_req_enter(hx_req *r) { conn_enter(r->conn); }
void hx_conn_req_leave(hx_req *r) { conn_leave(r->conn); /* may free R */ }

void hx_conns_shutdown(hx_worker *w)
{
    hx_conn *c = w->conns;
    while (c) {
        hx_conn *next = c->next;
        conn_shutdown(c);
        c = next;
    }
}

void hx_conns_kill(hx_worker *w)
{
    while (w->conns) {
        hx_conn *c = w->conns;
        hx_conn_mark_dead(c);
        conn_enter(c);
        conn_leave(c);
    }
}

/* ------------------------------------------------------------------ */
/* HTTP/1.1 responses: the request layer's write_head and write_body   */

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

/* The status line and the headers, straight into the connection's output;
 * picks the body's framing (length, chunked, or close-delimited). */
static int http1_write_head(hx_req *r)
{
    hx_conn *c = r->conn;
    int status = r->status;
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

    hx_buf *head = &c->out;
    if (buf_take(&c->w->conn_bufs, head, HX_READ_CHUNK) != 0)
        return -1;
    const char *reason = hx_reason(status);
    size_t rl = strlen(reason);
    const char *date = r->add_date ? hx_worker_date(r->w) : "";
    size_t dl = strlen(date);
    /* room for all of it at once, then plain copies: every header with
     * ": " and CRLF, and 128 for the status line's and Date's fixed parts
     * and the framing and Connection lines below (at most 101) */
    size_t need = rl + dl + 128;
    int has_connection = 0;
    for (size_t i = 0; i < r->rhdrs.n; i++) {
        const hx_hdr *h = &r->rhdrs.v[i];
        need += h->name.len + h->value.len + 4;
        has_connection |= hx_name_is(h->name.ptr, h->name.len, "connection", 10);
    }
    if (hx_buf_reserve(head, need) != 0)
        return -1;
    char *o = head->data + head->len;
    char *const o0 = o;
    memcpy(o, "HTTP/1.1 ", 9);
    o += 9;
    o += hx_u64_dec(o, (unsigned)status);
    *o++ = ' ';
    o = put(o, reason, rl);
    o = put(o, "\r\n", 2);
    for (size_t i = 0; i < r->rhdrs.n; i++) {
        const hx_hdr *h = &r->rhdrs.v[i];
        if (hx_is_hop_header(h->name.ptr, h->name.len) ||
            (has_connection && hx_hdrs_connection_lists(&r->rhdrs, h->name.ptr, h->name.len)))
            continue;
        if ((r->resp_chunked || r->resp_close ||
             (r->resp_no_body && !r->is_head && status != 304)) &&
            hx_name_is(h->name.ptr, h->name.len, "content-length", 14))
            continue;
        /* never emit a header that could split the response */
        if (!hx_hdr_name_valid(h->name.ptr, h->name.len) ||
            !hx_hdr_value_valid(h->value.ptr, h->value.len)) {
            hx_warn("dropping invalid response header '%.*s'", (int)h->name.len, h->name.ptr);
            continue;
        }
        o = put(o, h->name.ptr, h->name.len);
        o = put(o, ": ", 2);
        o = put(o, h->value.ptr, h->value.len);
        o = put(o, "\r\n", 2);
    }
    if (r->add_date) {
        o = put(o, "Date: ", 6);
        o = put(o, date, dl);
        o = put(o, "\r\n", 2);
    }
    if (r->resp_chunked)
        o = putl(o, "Transfer-Encoding: chunked\r\n");
    if (status == 101 && r->ws_upgrade)
        /* WebSocket: the switch is confirmed on this hop too (tunnel.c) */
        o = putl(o, "Upgrade: websocket\r\nConnection: upgrade\r\n");
    else if (!keep)
        o = putl(o, "Connection: close\r\n");
    else if (r->http_minor == 0)
        o = putl(o, "Connection: keep-alive\r\n");
    o = put(o, "\r\n", 2);
    assert((size_t)(o - o0) <= need); /* the fixed parts' 128 still hold */
    (void)o0;
    head->len = (size_t)(o - head->data);
    return 0;
}

static int http1_write_body(hx_req *r, const char *p, size_t n, int last)
{
    hx_conn *c = r->conn;
    if (n > 0) {
        if (r->resp_chunked) {
            char hdr[24];
            size_t hn = hx_u64_hex(hdr, n);
            hdr[hn++] = '\r';
            hdr[hn++] = '\n';
            struct iovec v[3] = {{hdr, hn}, {(void *)p, n}, {"\r\n", 2}};
            hx_conn_writev(c, v, 3);
        } else {
            struct iovec v[1] = {{(void *)p, n}};
            hx_conn_writev(c, v, 1);
        }
    }
    if (!last || !r->resp_chunked)
        return 0;
    if (r->trailers.n == 0) {
        hx_conn_write(c, "0\r\n\r\n", 5);
        return 0;
    }
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
    return 0;
}

/* What cannot be completed or trusted ends the connection after what is
 * queued: HTTP/1.x has no other way to tell the client. */
static void http1_close_after(hx_req *r) { r->conn->close_after = 1; }

static void http1_body_wanted(hx_req *r) { hx_http1_body_wanted(r->conn); }

static size_t http1_pending(const hx_req *r) { return hx_buf_size(&r->conn->out); }

const hx_req_ops hx_http1_ops = {
    .name = "HTTP/1.x",
    .write_head = http1_write_head,
    .write_body = http1_write_body,
    .abort = http1_close_after,
    .no_reuse = http1_close_after,
    .fail = NULL,
    .body_wanted = http1_body_wanted,
    .pending = http1_pending,
    .enter = hx_conn_req_enter,
    .leave = hx_conn_req_leave,
};

/* The transport for tunnel.c (plain or TLS, same contract as send/recv). */

