/*
 * bench_conn.c - one load thread: its event loop, its connections (TCP,
 * then TLS when the URL is https), the schedule that decides when each
 * connection sends, timeouts, and the accounting of every request.
 *
 * Rules this file keeps:
 *   - Nothing is allocated after setup but per connection (a socket, an SSL,
 *     an nghttp2 session whose allocations are pooled): slots, buffers and
 *     the request bytes exist once. A request is a slot, a timestamp and a
 *     write of shared bytes.
 *   - Closed loop: a connection keeps max_inflight requests out (1 on
 *     HTTP/1.1, --streams on HTTP/2) and sends the next one when one ends.
 *     Open loop (-R): connection g wants its requests at start + g/R +
 *     k*C/R; a request that cannot go out on time (the connection is busy or
 *     reconnecting) goes out as soon as it can, and its corrected latency
 *     is measured from the time it was wanted, not the time it was sent.
 *   - Each request sent is counted exactly once: a complete response, an
 *     error of the kind that ended it, or unfinished when the run stopped.
 *     A request belongs to the warm-up or to the measurement by the time it
 *     was (meant to be) sent; warm-up requests are counted apart.
 *   - The protocol code (bench_h1.c, bench_h2.c) reports completions from
 *     its parser callbacks and never sends from them: sending happens in
 *     conn_pump, after the parser has returned.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "bench_internal.h"

const char *const bench_err_names[BENCH_ERR_COUNT] = {"connect", "tls",   "timeout", "read",
                                                      "write",   "parse", "reset"};

static void conn_connect(bench_conn *c);
static void conn_pump(bench_conn *c);
static void arm_at(struct ev_loop *loop, ev_timer *w, uint64_t at_ns, uint64_t now);

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------ */
/* accounting                                                          */

static void thread_finish(bench_thread *t, uint64_t now)
{
    if (t->stopping)
        return;
    t->stopping = 1;
    t->st.finish_ns = now;
    ev_break(t->loop, EVBREAK_ALL);
}

static int measuring(const bench_run *r, uint64_t now)
{
    return now >= r->measure_ns && now <= r->end_ns;
}

static void slot_release(bench_conn *c, bench_slot *s)
{
    s->busy = 0;
    c->inflight--;
    c->t->inflight--;
}

/* -n: a thread whose budget is spent stops when its last request ends. */
static void check_budget_done(bench_thread *t, uint64_t now)
{
    if (t->budget == 0 && t->inflight == 0 && now >= t->run->measure_ns)
        thread_finish(t, now);
}

void bench_slot_done(bench_conn *c, bench_slot *s)
{
    bench_thread *t = c->t;
    const bench_run *r = t->run;
    uint64_t now = bench_now_ns();
    if (!s->measured) {
        t->st.warmup_requests++;
    } else if (now > r->end_ns) {
        t->st.unfinished++;
    } else {
        t->st.requests++;
        t->st.status[s->status >= 100 && s->status <= 599 ? s->status / 100 : 0]++;
        bench_hist_record(&t->lat, now - s->sent_ns);
        if (r->o.rate > 0)
            bench_hist_record(&t->lat_co, now > s->intended_ns ? now - s->intended_ns : 0);
    }
    atomic_fetch_add_explicit(&t->live_done, 1, memory_order_relaxed);
    slot_release(c, s);
    check_budget_done(t, now);
}

static void record_msg(bench_thread *t, int kind, const char *msg)
{
    if (t->errmsg[kind][0] == '\0')
        snprintf(t->errmsg[kind], sizeof(t->errmsg[kind]), "%s", msg);
}

void bench_conn_error_msg(bench_conn *c, int kind, const char *fmt, ...)
{
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    record_msg(c->t, kind, msg);
}

static void count_error(bench_thread *t, int kind, int measured, uint64_t now)
{
    if (!measured)
        return;
    if (now > t->run->end_ns) {
        t->st.unfinished++;
        return;
    }
    t->st.errors[kind]++;
    atomic_fetch_add_explicit(&t->live_err, 1, memory_order_relaxed);
}

void bench_slot_failed(bench_conn *c, bench_slot *s, int kind)
{
    uint64_t now = bench_now_ns();
    count_error(c->t, kind, s->measured, now);
    slot_release(c, s);
    check_budget_done(c->t, now);
}

void bench_conn_count_read(bench_conn *c, size_t n)
{
    if (measuring(c->t->run, bench_now_ns()))
        c->t->st.bytes += n;
}

/* ------------------------------------------------------------------ */
/* connection lifetime                                                 */

void bench_conn_update_events(bench_conn *c)
{
    if (c->fd < 0)
        return;
    int want = EV_READ;
    if (c->state == BENCH_C_CONNECTING)
        want = EV_WRITE;
    else if (c->tls_want_write)
        want |= EV_WRITE;
    else if (c->state == BENCH_C_READY && c->proto == 1 && c->writing)
        want |= EV_WRITE;
    else if (c->state == BENCH_C_READY && c->proto == 2 &&
             (c->olen > c->ooff || c->pendlen || nghttp2_session_want_write(c->h2)))
        want |= EV_WRITE;
    if (ev_is_active(&c->io) && (c->io.events & (EV_READ | EV_WRITE)) == want)
        return;
    ev_io_stop(c->t->loop, &c->io);
    ev_io_set(&c->io, c->fd, want);
    ev_io_start(c->t->loop, &c->io);
}

static void conn_teardown(bench_conn *c)
{
    ev_io_stop(c->t->loop, &c->io);
    ev_timer_stop(c->t->loop, &c->timer);
    if (c->h2)
        bench_h2_close(c);
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->state = BENCH_C_CLOSED;
    c->tls_want_write = 0;
    c->writing = 0;
    c->olen = c->ooff = c->pendlen = 0;
    c->pend = NULL;
    c->h2_dead = 0;
    c->h2_err = 0;
}

static void conn_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    conn_connect(w->data);
}

/* Reconnects now, or after BENCH_RETRY_S when connecting itself failed (a
 * closed port must not turn the client into a busy loop). */
static void conn_reconnect(bench_conn *c, int pause)
{
    if (c->t->stopping)
        return;
    if (!pause) {
        conn_connect(c);
        return;
    }
    ev_timer_stop(c->t->loop, &c->timer);
    ev_set_cb(&c->timer, conn_retry_cb);
    ev_timer_set(&c->timer, BENCH_RETRY_S, 0);
    ev_timer_start(c->t->loop, &c->timer);
}

/* Ends every request in flight on C with KIND (one already counted as a
 * timeout is only released); returns how many there were. */
static unsigned fail_inflight(bench_conn *c, int kind, uint64_t now)
{
    unsigned n = 0;
    for (unsigned i = 0; i < c->max_inflight; i++) {
        bench_slot *s = &c->slots[i];
        if (!s->busy)
            continue;
        if (!s->timed_out)
            count_error(c->t, kind, s->measured, now);
        slot_release(c, s);
        n++;
    }
    return n;
}

/* The server ended the connection between requests (keep-alive timeout,
 * Connection: close, GOAWAY): not an error; open the next one. */
void bench_conn_close_quietly(bench_conn *c)
{
    uint64_t now = bench_now_ns();
    fail_inflight(c, BENCH_ERR_READ, now);
    conn_teardown(c);
    check_budget_done(c->t, now);
    conn_reconnect(c, 0);
}

/* A failure of KIND: every request in flight fails with it. A connection
 * that fails with nothing in flight counts one error of KIND: so connect
 * and tls errors (never with requests out) count attempts. */
void bench_conn_fail(bench_conn *c, int kind, const char *what)
{
    bench_thread *t = c->t;
    uint64_t now = bench_now_ns();
    if (what)
        record_msg(t, kind, what);
    if (fail_inflight(c, kind, now) == 0 && measuring(t->run, now)) {
        t->st.errors[kind]++;
        atomic_fetch_add_explicit(&t->live_err, 1, memory_order_relaxed);
    }
    int pause = kind == BENCH_ERR_CONNECT || kind == BENCH_ERR_TLS;
    conn_teardown(c);
    check_budget_done(t, now);
    conn_reconnect(c, pause);
}

/* ------------------------------------------------------------------ */
/* transport: plain or TLS                                             */

static ssize_t tls_result(bench_conn *c, int n, int is_read)
{
    int e = SSL_get_error(c->ssl, n);
    switch (e) {
    case SSL_ERROR_WANT_READ: c->tls_want_write = 0; return BENCH_IO_AGAIN;
    case SSL_ERROR_WANT_WRITE: c->tls_want_write = 1; return BENCH_IO_AGAIN;
    case SSL_ERROR_ZERO_RETURN: return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == EAGAIN || errno == EINTR)
            return BENCH_IO_AGAIN;
        if (errno == 0 && is_read)
            return 0;
        snprintf(c->t->ioerr, sizeof(c->t->ioerr), "%s", strerror(errno ? errno : EPIPE));
        return BENCH_IO_ERROR;
    default: {
        unsigned long err = ERR_get_error();
        snprintf(c->t->ioerr, sizeof(c->t->ioerr), "TLS: %s",
                 err ? ERR_reason_error_string(err) : "error");
        if (c->t->ioerr[5] == '\0' || strcmp(c->t->ioerr, "TLS: (null)") == 0)
            snprintf(c->t->ioerr, sizeof(c->t->ioerr), "TLS error %lu", err);
        ERR_clear_error();
        return BENCH_IO_ERROR;
    }
    }
}

/* One read (into RBUF) or write (from WBUF) of at most LEN bytes. */
static ssize_t io_once(bench_conn *c, void *rbuf, const void *wbuf, size_t len)
{
    if (c->ssl == NULL) {
        ssize_t n = rbuf ? recv(c->fd, rbuf, len, 0) : send(c->fd, wbuf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return BENCH_IO_AGAIN;
        snprintf(c->t->ioerr, sizeof(c->t->ioerr), "%s", strerror(errno));
        return BENCH_IO_ERROR;
    }
    ERR_clear_error();
    errno = 0;
    int max = len > INT32_MAX ? INT32_MAX : (int)len;
    int n = rbuf ? SSL_read(c->ssl, rbuf, max) : SSL_write(c->ssl, wbuf, max);
    if (n > 0) {
        c->tls_want_write = 0;
        return n;
    }
    return tls_result(c, n, rbuf != NULL);
}

ssize_t bench_io_read(bench_conn *c, void *buf, size_t len)
{
    return io_once(c, buf, NULL, len);
}

ssize_t bench_io_write(bench_conn *c, const void *buf, size_t len)
{
    return io_once(c, NULL, buf, len);
}

/* ------------------------------------------------------------------ */
/* connecting                                                          */

static void conn_ready(bench_conn *c, int proto)
{
    bench_thread *t = c->t;
    c->state = BENCH_C_READY;
    c->proto = proto;
    t->st.opened++;
    if (proto == 2)
        t->st.proto_h2++;
    else
        t->st.proto_h1++;
    c->max_inflight = proto == 2 ? t->run->o.streams : 1;
    if (proto == 2) {
        if (bench_h2_start(c) != 0) {
            bench_conn_fail(c, BENCH_ERR_CONNECT, "cannot start an HTTP/2 session");
            return;
        }
    } else {
        bench_h1_start(c);
    }
    conn_pump(c);
    if (c->state == BENCH_C_READY)
        bench_conn_update_events(c);
}

static void conn_handshake(bench_conn *c)
{
    const bench_run *r = c->t->run;
    ERR_clear_error();
    errno = 0;
    int n = SSL_do_handshake(c->ssl);
    if (n != 1) {
        ssize_t rv = tls_result(c, n, 0);
        if (rv == BENCH_IO_AGAIN) {
            bench_conn_update_events(c);
            return;
        }
        long vr = SSL_get_verify_result(c->ssl);
        if (vr != X509_V_OK && r->o.cacert)
            bench_conn_fail(c, BENCH_ERR_TLS, X509_verify_cert_error_string(vr));
        else
            bench_conn_fail(c, BENCH_ERR_TLS,
                            rv == 0 ? "the server closed the connection during the handshake"
                                    : c->t->ioerr);
        return;
    }
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    int h2 = alpn_len == 2 && memcmp(alpn, "h2", 2) == 0;
    if (r->o.http == BENCH_HTTP_2 && !h2) {
        bench_conn_fail(c, BENCH_ERR_TLS, "the server did not select h2 by ALPN (--http http2)");
        return;
    }
    conn_ready(c, h2 ? 2 : 1);
}

static void conn_connected(bench_conn *c)
{
    const bench_run *r = c->t->run;
    if (r->ssl_ctx == NULL) {
        conn_ready(c, r->o.http == BENCH_HTTP_2 ? 2 : 1);
        return;
    }
    c->ssl = SSL_new(r->ssl_ctx);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
        bench_conn_fail(c, BENCH_ERR_TLS, "cannot create a TLS connection (out of memory?)");
        return;
    }
    struct in6_addr a6;
    int literal =
        inet_pton(AF_INET, r->o.host, &a6) == 1 || inet_pton(AF_INET6, r->o.host, &a6) == 1;
    if (!literal)
        SSL_set_tlsext_host_name(c->ssl, r->o.host); /* SNI: never an IP address (RFC 6066) */
    if (r->o.cacert) {
        if (literal)
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), r->o.host);
        else
            SSL_set1_host(c->ssl, r->o.host);
    }
    SSL_set_connect_state(c->ssl);
    c->state = BENCH_C_HANDSHAKE;
    conn_handshake(c);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    bench_conn *c = w->data;
    switch (c->state) {
    case BENCH_C_CONNECTING: {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            bench_conn_error_msg(c, BENCH_ERR_CONNECT, "%s: %s", c->t->run->addr_text,
                                 strerror(err));
            bench_conn_fail(c, BENCH_ERR_CONNECT, NULL);
            return;
        }
        conn_connected(c);
        return;
    }
    case BENCH_C_HANDSHAKE: conn_handshake(c); return;
    case BENCH_C_READY:
        if (c->proto == 2)
            bench_h2_on_io(c, revents);
        else
            bench_h1_on_io(c, revents);
        if (c->state == BENCH_C_READY) {
            conn_pump(c);
            if (c->state == BENCH_C_READY)
                bench_conn_update_events(c);
        }
        return;
    default: return;
    }
}

static void conn_connect(bench_conn *c)
{
    bench_thread *t = c->t;
    const bench_run *r = t->run;
    if (t->stopping)
        return;
    c->conn_start_ns = bench_now_ns();
    c->fd = socket(r->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        bench_conn_error_msg(c, BENCH_ERR_CONNECT, "socket: %s", strerror(errno));
        bench_conn_fail(c, BENCH_ERR_CONNECT, NULL);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->state = BENCH_C_CONNECTING;
    if (connect(c->fd, (const struct sockaddr *)&r->addr, r->addrlen) == 0) {
        conn_connected(c);
        return;
    }
    if (errno != EINPROGRESS) {
        bench_conn_error_msg(c, BENCH_ERR_CONNECT, "%s: %s", r->addr_text, strerror(errno));
        bench_conn_fail(c, BENCH_ERR_CONNECT, NULL);
        return;
    }
    bench_conn_update_events(c);
}

/* ------------------------------------------------------------------ */
/* the schedule                                                        */

static void conn_due_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    bench_conn *c = w->data;
    conn_pump(c);
    if (c->state == BENCH_C_READY)
        bench_conn_update_events(c);
}

static bench_slot *free_slot(bench_conn *c)
{
    for (unsigned i = 0; i < c->max_inflight; i++)
        if (!c->slots[i].busy)
            return &c->slots[i];
    return NULL;
}

/* Sends what the schedule allows now. */
static void conn_pump(bench_conn *c)
{
    bench_thread *t = c->t;
    const bench_run *r = t->run;
    if (c->state != BENCH_C_READY)
        return;
    if (t->stopping || c->h2_dead) {
        if (c->proto == 2)
            bench_h2_flush(c);
        return;
    }
    unsigned limit = c->max_inflight;
    if (c->proto == 2) {
        uint32_t peer =
            nghttp2_session_get_remote_settings(c->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if (peer < limit)
            limit = peer;
    }
    uint64_t now = bench_now_ns();
    while (c->inflight < limit && c->state == BENCH_C_READY && !t->stopping) {
        uint64_t intended = now;
        if (r->o.rate > 0) {
            if (c->next_due_ns > now) {
                ev_set_cb(&c->timer, conn_due_cb);
                arm_at(t->loop, &c->timer, c->next_due_ns, now);
                break;
            }
            intended = c->next_due_ns;
        }
        if (intended >= r->end_ns)
            break;
        int measured = intended >= r->measure_ns;
        if (measured && t->budget == 0)
            break;
        bench_slot *s = free_slot(c);
        if (s == NULL)
            break;
        s->busy = 1;
        s->measured = (uint8_t)measured;
        s->done = 0;
        s->timed_out = 0;
        s->status = 0;
        s->body_off = 0;
        s->intended_ns = intended;
        s->sent_ns = now;
        c->inflight++;
        t->inflight++;
        if (measured)
            t->budget--;
        /* a request that fails while being written is accounted by then */
        int rc = c->proto == 2 ? bench_h2_issue(c, s) : bench_h1_issue(c, s);
        if (rc < 0) { /* not sent: the HTTP/2 session takes no new stream */
            s->busy = 0;
            c->inflight--;
            t->inflight--;
            if (measured)
                t->budget++;
            break;
        }
        if (r->o.rate > 0)
            c->next_due_ns += r->interval_ns;
    }
    if (c->state == BENCH_C_READY && c->proto == 2)
        bench_h2_flush(c);
}

/* ------------------------------------------------------------------ */
/* the thread                                                          */

/* Timeouts of connects, handshakes and requests; the -n end when a thread
 * had nothing left to send as the warm-up ended. */
static void sweep_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    bench_thread *t = w->data;
    const bench_run *r = t->run;
    uint64_t now = bench_now_ns();
    uint64_t limit = (uint64_t)(r->o.timeout_s * 1e9);
    for (unsigned i = 0; i < t->nconns && !t->stopping; i++) {
        bench_conn *c = &t->conns[i];
        if (c->state == BENCH_C_CONNECTING || c->state == BENCH_C_HANDSHAKE) {
            if (now - c->conn_start_ns > limit) {
                int kind = c->state == BENCH_C_CONNECTING ? BENCH_ERR_CONNECT : BENCH_ERR_TLS;
                bench_conn_error_msg(c, kind, "%s: %s timed out after %.3g s", r->addr_text,
                                     kind == BENCH_ERR_CONNECT ? "connect" : "TLS handshake",
                                     r->o.timeout_s);
                bench_conn_fail(c, kind, NULL);
            }
            continue;
        }
        if (c->state != BENCH_C_READY || c->inflight == 0)
            continue;
        for (unsigned k = 0; k < c->max_inflight && c->state == BENCH_C_READY; k++) {
            bench_slot *s = &c->slots[k];
            if (!s->busy || s->timed_out || now - s->sent_ns <= limit)
                continue;
            bench_conn_error_msg(c, BENCH_ERR_TIMEOUT, "no complete response within %.3g s",
                                 r->o.timeout_s);
            if (c->proto == 1) {
                bench_conn_fail(c, BENCH_ERR_TIMEOUT, NULL);
            } else {
                /* the stream is reset; the connection and its other
                 * streams go on */
                count_error(t, BENCH_ERR_TIMEOUT, s->measured, now);
                s->timed_out = 1;
                bench_h2_cancel(c, s);
            }
        }
        if (c->state == BENCH_C_READY && c->proto == 2) {
            bench_h2_flush(c);
            if (c->state == BENCH_C_READY)
                bench_conn_update_events(c);
        }
    }
    check_budget_done(t, now);
}

/* libev's timers run on the time its loop iteration started, which may be
 * a little stale: the end is checked against the clock, and the timer armed
 * again for what is left. */
static void arm_at(struct ev_loop *loop, ev_timer *w, uint64_t at_ns, uint64_t now)
{
    double delay = at_ns > now ? (double)(at_ns - now) / 1e9 + (ev_time() - ev_now(loop)) : 0;
    ev_timer_stop(loop, w);
    ev_timer_set(w, delay > 0 ? delay : 0, 0);
    ev_timer_start(loop, w);
}

static void end_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    bench_thread *t = w->data;
    uint64_t now = bench_now_ns();
    if (now < t->run->end_ns)
        arm_at(loop, w, t->run->end_ns, now);
    else
        thread_finish(t, now);
}

static void wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    bench_thread *t = w->data;
    if (atomic_load(&t->run->stop))
        thread_finish(t, bench_now_ns());
}

int bench_thread_setup(bench_thread *t, bench_run *run, unsigned index, unsigned first_conn,
                       unsigned nconns, uint64_t budget)
{
    t->run = run;
    t->index = index;
    t->nconns = nconns;
    t->budget = budget;
    bench_hist_init(&t->lat);
    bench_hist_init(&t->lat_co);
    bench_pool_init(t);
    t->loop = ev_loop_new(EVFLAG_AUTO);
    t->conns = calloc(nconns, sizeof(*t->conns));
    if (t->loop == NULL || t->conns == NULL)
        return -1;
    unsigned slots = run->o.http == BENCH_HTTP_1 ? 1 : run->o.streams;
    for (unsigned i = 0; i < nconns; i++) {
        bench_conn *c = &t->conns[i];
        c->t = t;
        c->gindex = first_conn + i;
        c->fd = -1;
        c->slots = calloc(slots, sizeof(*c->slots));
        c->rbuf = malloc(BENCH_RBUF);
        if (run->o.http != BENCH_HTTP_1)
            c->obuf = malloc(BENCH_H2_OBUF);
        if (c->slots == NULL || c->rbuf == NULL || (run->o.http != BENCH_HTTP_1 && !c->obuf))
            return -1;
        ev_io_init(&c->io, conn_io_cb, -1, 0);
        c->io.data = c;
        ev_timer_init(&c->timer, conn_due_cb, 0, 0);
        c->timer.data = c;
    }
    ev_async_init(&t->wake, wake_cb);
    t->wake.data = t;
    ev_async_start(t->loop, &t->wake);
    ev_timer_init(&t->sweep, sweep_cb, BENCH_SWEEP_S, BENCH_SWEEP_S);
    t->sweep.data = t;
    ev_timer_init(&t->end, end_cb, 0, 0);
    t->end.data = t;
    return 0;
}

void bench_thread_free(bench_thread *t)
{
    for (unsigned i = 0; t->conns && i < t->nconns; i++) {
        free(t->conns[i].slots);
        free(t->conns[i].rbuf);
        free(t->conns[i].obuf);
    }
    free(t->conns);
    if (t->loop)
        ev_loop_destroy(t->loop);
    bench_pool_free(t);
}

void *bench_thread_main(void *arg)
{
    bench_thread *t = arg;
    bench_run *r = t->run;
    for (unsigned i = 0; i < t->nconns; i++) {
        bench_conn *c = &t->conns[i];
        c->next_due_ns = r->start_ns + (uint64_t)(c->gindex * r->slot_ns);
        conn_connect(c);
    }
    ev_timer_start(t->loop, &t->sweep);
    arm_at(t->loop, &t->end, r->end_ns, bench_now_ns());
    if (!t->stopping && !atomic_load(&r->stop))
        ev_run(t->loop, 0);
    if (!t->stopping)
        thread_finish(t, bench_now_ns());
    /* what is still in flight was cut off by the end of the run */
    for (unsigned i = 0; i < t->nconns; i++) {
        bench_conn *c = &t->conns[i];
        for (unsigned k = 0; k < c->max_inflight; k++)
            if (c->slots[k].busy && c->slots[k].measured && !c->slots[k].timed_out)
                t->st.unfinished++;
        conn_teardown(c);
    }
    ev_timer_stop(t->loop, &t->sweep);
    ev_timer_stop(t->loop, &t->end);
    ev_async_stop(t->loop, &t->wake);
    atomic_store(&t->finished, 1);
    ev_async_send(r->main_loop, r->main_wake);
    return NULL;
}
