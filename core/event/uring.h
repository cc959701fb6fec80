/*
 * uring.h - the opt-in io_uring data path (`io: uring`, D75).
 *
 * One ring per worker thread. A socket the ring drives ("adopted": plain
 * HTTP/1.1 client connections and plain HTTP/1.1 backend connections) keeps
 * the readiness contract the rest of the code is written against: its
 * ev_io watchers go through hx_io_start/hx_io_stop, its bytes through
 * hx_sock_send/hx_sock_recv (http/transport.h), and the ring turns
 * completions back into watcher events (ev_feed_event). So http1.c,
 * upstream.c and tunnel.c run unchanged on top of it:
 *
 *  - reads: one IORING_OP_RECV with buffer select is outstanding while the
 *    read watcher is on (an idle connection holds no buffer, D54); its bytes
 *    wait in the provided buffer until the read callback takes them, and no
 *    new receive is posted while reading is paused;
 *  - writes: hx_sock_send copies into the socket's send queue (at most
 *    HX_URING_SNDQ bytes, then EAGAIN as a full socket would) and one
 *    IORING_OP_SEND per socket is in flight, submitted once per loop pass
 *    (ev_prepare); the write watcher fires when the queue has room again;
 *  - close: the fd is closed when its last operation completed (queued
 *    bytes go out first, for at most HX_URING_LINGER seconds).
 *
 * Everything else (accept, timers, TLS, HTTP/2 backends, health checks)
 * stays on libev's epoll. With `io: epoll` (the default) hx_ur is NULL and
 * every hook is one predicted branch.
 */
#ifndef HX_URING_H
#define HX_URING_H

#include <ev.h>
#include <stddef.h>
#include <sys/types.h>
#include <unistd.h>

typedef struct hx_usock hx_usock;

/* The worker thread's ring, or NULL (epoll): only what the inline checks
 * read. */
typedef struct hx_uring_tab {
    hx_usock **tab; /* by fd: the adopted sockets */
    int n;
} hx_uring_tab;

extern _Thread_local hx_uring_tab *hx_ur;

static inline hx_usock *hx_uring_sock(int fd)
{
    hx_uring_tab *t = hx_ur;
    if (__builtin_expect(t != NULL, 0) && (unsigned)fd < (unsigned)t->n)
        return t->tab[fd];
    return NULL;
}

/* On the worker thread, before ev_run: 0 when the ring runs, -1 when it
 * cannot be set up (one warning is logged; the worker stays on epoll). */
int hx_uring_start(struct ev_loop *loop, unsigned worker_id);
/* On the worker thread, after ev_run returned: every operation ends, the
 * sockets already closed by their owners are closed, the ring goes. */
void hx_uring_stop(void);
/* Drive FD by the ring from now on; none of its watchers may be active.
 * 0 on success, -1 (no ring on this thread, no memory): epoll keeps it. */
int hx_uring_adopt(int fd);

ssize_t hx_usock_send(hx_usock *s, const void *p, size_t n);
ssize_t hx_usock_recv(hx_usock *s, void *p, size_t n);
void hx_usock_watch(hx_usock *s, ev_io *w, int on);
void hx_usock_shutdown_write(hx_usock *s);
void hx_usock_close(hx_usock *s);

/* ev_io_start/ev_io_stop for watchers that may be on an adopted socket. */
static inline void hx_io_start(struct ev_loop *loop, ev_io *w)
{
    hx_usock *s = hx_uring_sock(w->fd);
    if (s) {
        hx_usock_watch(s, w, 1);
        return;
    }
    ev_io_start(loop, w);
}

static inline void hx_io_stop(struct ev_loop *loop, ev_io *w)
{
    ev_io_stop(loop, w); /* never active on an adopted socket: clears a fed event */
    hx_usock *s = hx_uring_sock(w->fd);
    if (s)
        hx_usock_watch(s, w, 0);
}

/* close(2), or the ring's deferred close for an adopted socket. */
static inline void hx_fd_close(int fd)
{
    hx_usock *s = hx_uring_sock(fd);
    if (s)
        hx_usock_close(s);
    else
        close(fd);
}

#endif
