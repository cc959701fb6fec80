/*
 * uring.c - the opt-in io_uring data path (see uring.h, D75).
 */
#include <errno.h>
#include <liburing.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "event/uring.h"

#include "base/log.h"

#define UR_ENTRIES 1024
#define UR_BUF 16384   /* bytes per provided receive buffer */
#define UR_NBUFS 512   /* provided buffers per worker (a power of two) */
#define UR_BGID 1
#define HX_URING_SNDQ 65536 /* queued, not yet sent bytes per socket */
#define HX_URING_LINGER 5.0 /* seconds a closed socket may spend sending its tail */

enum { OP_NONE = 0, OP_RECV = 1, OP_SEND = 2 };

/* A send buffer: HX_URING_SNDQ bytes (the queue never holds more), from
 * the ring's spares. */
typedef struct sbuf {
    char *p;
    size_t len, off;
} sbuf;

#define UR_SPARES 64 /* send buffers kept for reuse per worker */

struct hx_usock {
    int fd;
    ev_io *rw, *ww; /* the owner's watchers (NULL once closed) */
    unsigned rwant : 1, wwant : 1, recv_posted : 1, send_posted : 1, eof : 1, closing : 1,
        shut_wr : 1, kicked : 1, starved : 1;
    int rerr, serr; /* sticky errno of the receive and the send side */
    int bid;        /* the provided buffer holding received bytes, or -1 */
    unsigned blen, boff;
    sbuf fl, acc; /* in flight (untouched until its completion), queued after it */
    ev_tstamp deadline;
    hx_usock *knext; /* kick list: sends to submit at the end of the pass */
    hx_usock *snext; /* starved list: receives that found no buffer */
    hx_usock *cnext; /* closing list */
};

typedef struct hx_uring {
    hx_uring_tab t;
    struct ev_loop *loop;
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    char *bufs;
    ev_io rio;
    ev_prepare prep;
    ev_timer linger;
    hx_usock *kick, *starved, *closing;
    unsigned recycled; /* buffers given back since the starved list was retried */
    unsigned inflight; /* receives and sends the kernel holds */
    int stopping;      /* the loop ended: no more watcher events */
    unsigned fed;      /* watcher events fed, ever */
    char *spare[UR_SPARES];
    unsigned nspare;
    ev_idle idle;      /* events fed before libev blocks: do not block */
} hx_uring;

_Thread_local hx_uring_tab *hx_ur;
static _Thread_local hx_uring *cur;

/* ------------------------------------------------------------------ */

static struct io_uring_sqe *sqe_get(hx_uring *u)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (sqe == NULL) { /* full: submit what is queued and take a fresh one */
        io_uring_submit(&u->ring);
        sqe = io_uring_get_sqe(&u->ring);
    }
    return sqe;
}

static char *sbuf_get(hx_uring *u)
{
    return u->nspare ? u->spare[--u->nspare] : malloc(HX_URING_SNDQ);
}

/* Gives S's buffers back: an idle socket holds none (D54). */
static void sbuf_drop(hx_uring *u, sbuf *b)
{
    if (b->p && u->nspare < UR_SPARES)
        u->spare[u->nspare++] = b->p;
    else
        free(b->p);
    *b = (sbuf){0};
}

static void buf_recycle(hx_uring *u, int bid)
{
    io_uring_buf_ring_add(u->br, u->bufs + (size_t)bid * UR_BUF, UR_BUF, (unsigned short)bid,
                          io_uring_buf_ring_mask(UR_NBUFS), 0);
    io_uring_buf_ring_advance(u->br, 1);
    u->recycled++;
}

static void post_recv(hx_uring *u, hx_usock *s)
{
    if (s->recv_posted || s->closing || s->bid >= 0 || s->eof || s->rerr)
        return;
    struct io_uring_sqe *sqe = sqe_get(u);
    if (sqe == NULL)
        return; /* cannot happen after a submit; the next watch retries */
    io_uring_prep_recv(sqe, s->fd, NULL, UR_BUF, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = UR_BGID;
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)s | OP_RECV);
    s->recv_posted = 1;
    u->inflight++;
}

static void post_send(hx_uring *u, hx_usock *s)
{
    struct io_uring_sqe *sqe = sqe_get(u);
    if (sqe == NULL)
        return;
    io_uring_prep_send(sqe, s->fd, s->fl.p + s->fl.off, s->fl.len - s->fl.off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)s | OP_SEND);
    s->send_posted = 1;
    u->inflight++;
}

static void feed(hx_uring *u, ev_io *w, int ev)
{
    ev_feed_event(u->loop, w, ev);
    u->fed++;
}

static size_t queued(const hx_usock *s) { return s->fl.len - s->fl.off + s->acc.len; }

static void usock_free(hx_uring *u, hx_usock *s)
{
    if (s->bid >= 0)
        buf_recycle(u, s->bid);
    sbuf_drop(u, &s->fl);
    sbuf_drop(u, &s->acc);
    close(s->fd);
    if (s->fd < u->t.n)
        u->t.tab[s->fd] = NULL;
    free(s);
}

/* A closed socket goes once nothing is in flight and its tail is sent. */
static void maybe_free(hx_uring *u, hx_usock *s)
{
    if (!s->closing || s->recv_posted || s->send_posted || s->kicked)
        return;
    if (queued(s) && !s->serr)
        return;
    for (hx_usock **pp = &u->closing; *pp; pp = &(*pp)->cnext)
        if (*pp == s) {
            *pp = s->cnext;
            break;
        }
    usock_free(u, s);
}

static void cancel_ops(hx_uring *u, hx_usock *s)
{
    struct io_uring_sqe *sqe = sqe_get(u);
    if (sqe == NULL)
        return;
    io_uring_prep_cancel_fd(sqe, s->fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, OP_NONE);
}

static void kick(hx_uring *u, hx_usock *s)
{
    if (s->kicked || s->send_posted)
        return;
    s->kicked = 1;
    s->knext = u->kick;
    u->kick = s;
}

/* ------------------------------------------------------------------ */
/* completions                                                         */

static void on_recv(hx_uring *u, hx_usock *s, int res, unsigned flags)
{
    s->recv_posted = 0;
    u->inflight--;
    if (s->closing) {
        if (res > 0 && (flags & IORING_CQE_F_BUFFER))
            buf_recycle(u, (int)(flags >> IORING_CQE_BUFFER_SHIFT));
        maybe_free(u, s);
        return;
    }
    if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
        s->bid = (int)(flags >> IORING_CQE_BUFFER_SHIFT);
        s->blen = (unsigned)res;
        s->boff = 0;
    } else if (res == 0) {
        s->eof = 1;
    } else if (res == -ENOBUFS) {
        if (!s->starved) {
            s->starved = 1;
            s->snext = u->starved;
            u->starved = s;
        }
        return;
    } else if (res == -EINTR || res == -EAGAIN) {
        if (s->rwant)
            post_recv(u, s);
        return;
    } else if (res < 0 && res != -ECANCELED) {
        s->rerr = -res;
    }
    if (s->rwant && s->rw && !u->stopping && (s->bid >= 0 || s->eof || s->rerr))
        feed(u, s->rw, EV_READ);
}

static void on_send(hx_uring *u, hx_usock *s, int res)
{
    s->send_posted = 0;
    u->inflight--;
    if (res == -EINTR || res == -EAGAIN) {
        post_send(u, s);
        return;
    }
    if (res < 0) {
        s->serr = res == -ECANCELED ? EPIPE : -res;
        s->fl.len = s->fl.off = s->acc.len = 0;
    } else {
        s->fl.off += (size_t)res;
        if (s->fl.off < s->fl.len) {
            post_send(u, s); /* partial: the rest, in order */
            return;
        }
        s->fl.len = s->fl.off = 0;
        if (s->acc.len) { /* what was queued meanwhile goes next */
            sbuf t = s->fl;
            s->fl = s->acc;
            s->acc = t;
            post_send(u, s);
        } else {
            sbuf_drop(u, &s->fl);
            sbuf_drop(u, &s->acc);
        }
    }
    if (s->shut_wr && queued(s) == 0 && !s->send_posted)
        shutdown(s->fd, SHUT_WR);
    if (s->closing) {
        maybe_free(u, s);
        return;
    }
    if (s->wwant && s->ww && !u->stopping && (queued(s) < HX_URING_SNDQ || s->serr))
        feed(u, s->ww, EV_WRITE);
}

static void reap(hx_uring *u)
{
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&u->ring, head, cqe)
    {
        seen++;
        uint64_t ud = io_uring_cqe_get_data64(cqe);
        hx_usock *s = (hx_usock *)(uintptr_t)(ud & ~(uint64_t)3);
        switch (ud & 3) {
        case OP_RECV:
            on_recv(u, s, cqe->res, cqe->flags);
            break;
        case OP_SEND:
            on_send(u, s, cqe->res);
            break;
        default:
            break;
        }
    }
    io_uring_cq_advance(&u->ring, seen);
}

static void ring_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    reap(io->data);
}

static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)revents;
    ev_idle_stop(loop, w);
}

static void submit_pass(hx_uring *u);

/* End of the pass, before libev blocks: queue the sends of this pass (one
 * per socket), retry receives that found no buffer, submit all at once. */
static void prep_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)loop;
    (void)revents;
    hx_uring *u = p->data;
    submit_pass(u);
}

static void submit_pass(hx_uring *u)
{
    while (u->kick) {
        hx_usock *s = u->kick;
        u->kick = s->knext;
        s->kicked = 0;
        if (!s->send_posted && s->acc.len && !s->serr) {
            sbuf t = s->fl;
            s->fl = s->acc;
            s->acc = t;
            post_send(u, s);
        }
        if (s->closing)
            maybe_free(u, s);
    }
    if (u->starved && u->recycled) {
        hx_usock *s = u->starved;
        u->starved = NULL;
        u->recycled = 0;
        while (s) {
            hx_usock *next = s->snext;
            s->starved = 0;
            if (s->closing)
                maybe_free(u, s);
            else
                post_recv(u, s);
            s = next;
        }
    }
    if (io_uring_sq_ready(&u->ring) == 0)
        return;
    io_uring_submit(&u->ring);
    /* sends to sockets with room complete inside the submit: reap them now
     * rather than in one more epoll_wait round; if that fed a watcher
     * (a receive that found bytes), libev must not block before running it */
    if (io_uring_cq_ready(&u->ring) && !u->stopping) {
        unsigned fed = u->fed;
        reap(u);
        if (u->fed != fed && !ev_is_active(&u->idle))
            ev_idle_start(u->loop, &u->idle);
    }
}

/* Closed sockets whose peer does not take their tail: cut it. */
static void linger_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    hx_uring *u = t->data;
    ev_tstamp now = ev_now(loop);
    for (hx_usock *s = u->closing; s; s = s->cnext)
        if (s->deadline <= now && !s->serr) {
            s->serr = ECANCELED;
            cancel_ops(u, s);
        }
    if (u->closing == NULL)
        ev_timer_stop(loop, t);
}

/* ------------------------------------------------------------------ */
/* the hooks                                                           */

ssize_t hx_usock_send(hx_usock *s, const void *p, size_t n)
{
    if (s->serr) {
        errno = s->serr == ECANCELED ? EPIPE : s->serr;
        return -1;
    }
    size_t q = queued(s);
    if (q >= HX_URING_SNDQ) {
        errno = EAGAIN;
        return -1;
    }
    size_t k = n < HX_URING_SNDQ - q ? n : HX_URING_SNDQ - q;
    sbuf *a = &s->acc;
    if (a->p == NULL && (a->p = sbuf_get(cur)) == NULL) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(a->p + a->len, p, k);
    a->len += k;
    kick(cur, s);
    return (ssize_t)k;
}

ssize_t hx_usock_recv(hx_usock *s, void *p, size_t n)
{
    hx_uring *u = cur;
    if (s->bid >= 0) {
        size_t k = s->blen - s->boff;
        if (k > n)
            k = n;
        memcpy(p, u->bufs + (size_t)s->bid * UR_BUF + s->boff, k);
        s->boff += (unsigned)k;
        if (s->boff == s->blen) {
            buf_recycle(u, s->bid);
            s->bid = -1;
            if (s->rwant)
                post_recv(u, s);
        } else if (s->rwant && s->rw) {
            feed(u, s->rw, EV_READ); /* level-triggered, as epoll */
        }
        return (ssize_t)k;
    }
    if (s->eof)
        return 0;
    if (s->rerr) {
        errno = s->rerr;
        return -1;
    }
    if (s->rwant)
        post_recv(u, s);
    errno = EAGAIN;
    return -1;
}

void hx_usock_watch(hx_usock *s, ev_io *w, int on)
{
    hx_uring *u = cur;
    if (w->events & EV_READ) {
        s->rw = w;
        s->rwant = on ? 1 : 0;
        if (!on)
            return;
        if (s->bid >= 0 || s->eof || s->rerr)
            feed(u, w, EV_READ);
        else if (!s->starved)
            post_recv(u, s);
    } else {
        s->ww = w;
        s->wwant = on ? 1 : 0;
        if (on && (queued(s) < HX_URING_SNDQ || s->serr))
            feed(u, w, EV_WRITE);
    }
}

void hx_usock_shutdown_write(hx_usock *s)
{
    s->shut_wr = 1;
    if (queued(s) == 0 && !s->send_posted)
        shutdown(s->fd, SHUT_WR);
}

void hx_usock_close(hx_usock *s)
{
    hx_uring *u = cur;
    s->closing = 1;
    s->rw = s->ww = NULL;
    s->rwant = s->wwant = 0;
    s->deadline = ev_now(u->loop) + HX_URING_LINGER;
    if (s->starved) {
        for (hx_usock **pp = &u->starved; *pp; pp = &(*pp)->snext)
            if (*pp == s) {
                *pp = s->snext;
                break;
            }
        s->starved = 0;
    }
    s->cnext = u->closing;
    u->closing = s;
    if (s->bid >= 0) {
        buf_recycle(u, s->bid);
        s->bid = -1;
    }
    if (s->recv_posted) {
        /* the receive goes; a send in flight finishes (the tail of the
         * last response) unless the linger timer cuts it */
        struct io_uring_sqe *sqe = sqe_get(u);
        if (sqe) {
            io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)s | OP_RECV, 0);
            io_uring_sqe_set_data64(sqe, OP_NONE);
        }
    }
    if (s->serr) {
        s->fl.len = s->fl.off = s->acc.len = 0;
        if (s->send_posted)
            cancel_ops(u, s);
    }
    if (queued(s) && !ev_is_active(&u->linger))
        ev_timer_again(u->loop, &u->linger);
    maybe_free(u, s);
}

int hx_uring_adopt(int fd)
{
    hx_uring *u = cur;
    if (u == NULL || fd < 0)
        return -1;
    if (fd >= u->t.n) {
        int n = u->t.n ? u->t.n : 1024;
        while (n <= fd)
            n *= 2;
        hx_usock **t = realloc(u->t.tab, (size_t)n * sizeof(*t));
        if (t == NULL)
            return -1;
        memset(t + u->t.n, 0, (size_t)(n - u->t.n) * sizeof(*t));
        u->t.tab = t;
        u->t.n = n;
    }
    hx_usock *s = aligned_alloc(16, (sizeof(hx_usock) + 15) & ~(size_t)15);
    if (s == NULL)
        return -1;
    memset(s, 0, sizeof(*s));
    s->fd = fd;
    s->bid = -1;
    u->t.tab[fd] = s;
    return 0;
}

/* ------------------------------------------------------------------ */
/* set-up and tear-down                                                */

int hx_uring_start(struct ev_loop *loop, unsigned worker_id)
{
    hx_uring *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return -1;
    /* libev waits in epoll_wait on the ring's fd. DEFER_TASKRUN stalls
     * there (its completions need io_uring_enter(GETEVENTS) and epoll is
     * not woken for them: requests took seconds on kernel 6.18); with
     * COOP_TASKRUN a sleeping worker is woken (its epoll_wait returns
     * EINTR) and a running one is not interrupted. */
    static const unsigned tries[] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN,
                                     IORING_SETUP_COOP_TASKRUN, 0};
    static const char *const names[] = {"single_issuer+coop_taskrun", "coop_taskrun", "none"};
    int rc = -ENOSYS;
    size_t i;
    for (i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
        struct io_uring_params p;
        memset(&p, 0, sizeof(p));
        p.flags = tries[i];
        rc = io_uring_queue_init_params(UR_ENTRIES, &u->ring, &p);
        if (rc == 0)
            break;
    }
    if (rc != 0) {
        hx_warn("worker %u: io: uring: cannot set up a ring (%s); this worker uses epoll",
                worker_id, strerror(-rc));
        free(u);
        return -1;
    }
    u->br = mmap(NULL, UR_NBUFS * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    u->bufs = malloc((size_t)UR_NBUFS * UR_BUF);
    struct io_uring_buf_reg reg = {
        .ring_addr = (uintptr_t)u->br, .ring_entries = UR_NBUFS, .bgid = UR_BGID};
    if (u->br == MAP_FAILED || u->bufs == NULL ||
        (rc = io_uring_register_buf_ring(&u->ring, &reg, 0)) != 0) {
        hx_warn("worker %u: io: uring: cannot register receive buffers (%s); this worker uses "
                "epoll",
                worker_id, rc ? strerror(-rc) : "out of memory");
        if (u->br != MAP_FAILED)
            munmap(u->br, UR_NBUFS * sizeof(struct io_uring_buf));
        free(u->bufs);
        io_uring_queue_exit(&u->ring);
        free(u);
        return -1;
    }
    io_uring_buf_ring_init(u->br);
    for (int b = 0; b < UR_NBUFS; b++)
        io_uring_buf_ring_add(u->br, u->bufs + (size_t)b * UR_BUF, UR_BUF, (unsigned short)b,
                              io_uring_buf_ring_mask(UR_NBUFS), b);
    io_uring_buf_ring_advance(u->br, UR_NBUFS);
    u->loop = loop;
    ev_io_init(&u->rio, ring_cb, u->ring.ring_fd, EV_READ);
    u->rio.data = u;
    ev_io_start(loop, &u->rio);
    ev_prepare_init(&u->prep, prep_cb);
    u->prep.data = u;
    ev_prepare_start(loop, &u->prep);
    ev_idle_init(&u->idle, idle_cb);
    ev_init(&u->linger, linger_cb);
    u->linger.repeat = 1.0;
    u->linger.data = u;
    cur = u;
    hx_ur = &u->t;
    hx_info("worker %u: io: uring: plain HTTP/1.1 sockets use io_uring (setup flags: %s)",
            worker_id, names[i]);
    return 0;
}

void hx_uring_stop(void)
{
    hx_uring *u = cur;
    if (u == NULL)
        return;
    ev_io_stop(u->loop, &u->rio);
    ev_prepare_stop(u->loop, &u->prep);
    ev_idle_stop(u->loop, &u->idle);
    ev_timer_stop(u->loop, &u->linger);
    /* sockets closed at the end (a graceful stop's last responses) send
     * their tails first, for at most HX_URING_LINGER seconds */
    u->stopping = 1;
    for (int i = 0; i < (int)(HX_URING_LINGER * 100) && u->closing; i++) {
        submit_pass(u);
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 10000000};
        io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
        reap(u);
    }
    /* the kernel must be done with the buffers before they go */
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (sqe && u->inflight) {
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
        io_uring_sqe_set_data64(sqe, OP_NONE);
    }
    for (int i = 0; i < 100 && u->inflight; i++) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 10000000};
        io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
        struct io_uring_cqe *c;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&u->ring, head, c)
        {
            seen++;
            if (io_uring_cqe_get_data64(c) & 3)
                u->inflight--;
        }
        io_uring_cq_advance(&u->ring, seen);
    }
    /* the kernel ends what is in flight; sockets whose owners are gone are
     * closed here, the others by their owners (plain close from now on) */
    io_uring_queue_exit(&u->ring);
    for (int fd = 0; fd < u->t.n; fd++) {
        hx_usock *s = u->t.tab[fd];
        if (s == NULL)
            continue;
        sbuf_drop(u, &s->fl);
        sbuf_drop(u, &s->acc);
        if (s->closing)
            close(s->fd);
        free(s);
    }
    free(u->t.tab);
    while (u->nspare)
        free(u->spare[--u->nspare]);
    munmap(u->br, UR_NBUFS * sizeof(struct io_uring_buf));
    free(u->bufs);
    hx_ur = NULL;
    cur = NULL;
    free(u);
}
