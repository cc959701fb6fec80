/*
 * floor_proxy.c - the floor of a proxied keep-alive request (issue 18, D70):
 * a TCP relay that does no HTTP work at all. Each accepted client connection
 * gets its own backend connection (1:1, opened at accept and kept while the
 * client keeps its own); bytes read on one side are written to the other,
 * unparsed. What is left per request is what any proxy must pay on this
 * machine: recv from the client, send to the backend, recv from the
 * backend, send to the client, and the readiness or completion machinery
 * around them. bench/floor.sh builds it and measures it next to heliosd,
 * nginx and HAProxy.
 *
 *   --mode epoll   non-blocking sockets, level-triggered epoll, one recv per
 *                  readiness and the send straight after it (what heliosd
 *                  and nginx do).
 *   --mode uring   liburing: one multishot recv per socket into provided
 *                  buffers (a buffer ring), the send from that same buffer,
 *                  every SQE of a loop pass submitted by the single
 *                  io_uring_submit_and_wait of the next pass. The ring asks
 *                  for SINGLE_ISSUER + DEFER_TASKRUN, then SINGLE_ISSUER +
 *                  COOP_TASKRUN, then no flags; the "ready" line says which.
 *
 * The rules it keeps, so its numbers are those of a correct relay:
 * - bytes go out in the order they came in. A short send (or EAGAIN) keeps
 *   the rest and stops reading the side it came from until the rest is out
 *   (epoll: EPOLLOUT on the writer, no EPOLLIN on the reader); io_uring has
 *   at most one send in flight per socket, later buffers queue behind it.
 * - Everything is bounded: MAXFD descriptors (a connection past it is
 *   closed), one EP_BUF buffer per direction (epoll), UR_NBUFS provided
 *   buffers shared by all sockets (io_uring: when all of them wait behind
 *   slow writers, receives end with ENOBUFS and are re-armed once a quarter
 *   of the buffers are back). Every loop runs at most once per event.
 * - Either side closing or failing closes both.
 * - SIGTERM and SIGINT (read from a signalfd among the events) end the loop;
 *   the process exits 0.
 * The backend connection is opened with a blocking connect() at accept
 * (loopback: it completes at once); it is not on the per-request path.
 *
 * Usage: floor_proxy --mode epoll|uring --port N --backend PORT
 *        (both on 127.0.0.1; prints "ready ..." once listening)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "uring_bench.h"

#define MAXFD 32768
#define EP_BUF 16384 /* epoll: bytes per direction */
#define UR_BUF 4096  /* io_uring: bytes per provided buffer */
#define UR_NBUFS 512 /* io_uring: provided buffers (a power of two) */

static int backend_port;

static void fail(const char *what)
{
    fprintf(stderr, "floor_proxy: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* The backend connection for a new client: connected, non-blocking, no
 * Nagle (like the client side); -1 (client closed) when it cannot be had. */
static int pair_backend(int cfd)
{
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)backend_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int bfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (bfd >= 0 && connect(bfd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        fprintf(stderr, "floor_proxy: connect to 127.0.0.1:%d: %s\n", backend_port,
                strerror(errno));
        close(bfd);
        bfd = -1;
    }
    if (bfd >= MAXFD || cfd >= MAXFD) {
        fprintf(stderr, "floor_proxy: descriptor past %d, connection closed\n", MAXFD);
        close(bfd);
        bfd = -1;
    }
    if (bfd < 0 || fcntl(bfd, F_SETFL, O_NONBLOCK) != 0 || fcntl(cfd, F_SETFL, O_NONBLOCK) != 0) {
        if (bfd >= 0)
            close(bfd);
        close(cfd);
        return -1;
    }
    setsockopt(bfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return bfd;
}

/* SIGTERM and SIGINT, blocked and readable from the returned signalfd. */
static int signals_fd(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        fail("sigprocmask");
    int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0)
        fail("signalfd");
    return fd;
}

/* ---- epoll ---------------------------------------------------------------- */

/* One socket of a pair: the bytes read from it not yet written to its peer. */
typedef struct ep_side {
    int peer;
    uint32_t events; /* what is registered with epoll */
    size_t off, len;
    char buf[EP_BUF];
} ep_side;

static ep_side *eps[MAXFD];
static int ep;

/* Reads a socket only while its earlier bytes are all out; waits for
 * writability only while its peer's bytes are not. */
static void ep_update(int fd)
{
    ep_side *s = eps[fd];
    uint32_t want = (s->len == 0 ? EPOLLIN : 0) | (eps[s->peer]->len > 0 ? EPOLLOUT : 0);
    if (want != s->events) {
        struct epoll_event ev = {.events = want, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        s->events = want;
    }
}

static void ep_close_pair(int fd)
{
    int peer = eps[fd]->peer;
    free(eps[fd]);
    free(eps[peer]);
    eps[fd] = eps[peer] = NULL;
    close(fd); /* close takes them out of the epoll set */
    close(peer);
}

static void ep_open_pair(int cfd)
{
    int bfd = pair_backend(cfd);
    if (bfd < 0)
        return;
    int fds[2] = {cfd, bfd};
    for (int i = 0; i < 2; i++) {
        eps[fds[i]] = malloc(sizeof(ep_side));
        if (eps[fds[i]] == NULL)
            fail("malloc");
        eps[fds[i]]->peer = fds[1 - i];
        eps[fds[i]]->events = EPOLLIN;
        eps[fds[i]]->off = eps[fds[i]]->len = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
}

/* Writes what is pending from SRC to its peer; 0, or -1 when the pair was
 * closed. */
static int ep_flush(int src)
{
    ep_side *s = eps[src];
    ssize_t n = send(s->peer, s->buf + s->off, s->len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) {
            ep_close_pair(src);
            return -1;
        }
        n = 0;
    }
    s->off += (size_t)n;
    s->len -= (size_t)n;
    if (s->len == 0)
        s->off = 0;
    ep_update(src);
    ep_update(s->peer);
    return 0;
}

static void ep_event(int fd, uint32_t events)
{
    ep_side *s = eps[fd];
    if (s == NULL)
        return;
    if ((events & EPOLLOUT) && eps[s->peer]->len > 0 && ep_flush(s->peer) != 0)
        return;
    if (s->len > 0) { /* not reading: only a hangup or error matters */
        if (events & (EPOLLHUP | EPOLLERR))
            ep_close_pair(fd);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    ssize_t n = recv(fd, s->buf, EP_BUF, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        ep_close_pair(fd);
        return;
    }
    s->len = (size_t)n;
    ep_flush(fd);
}

static void run_epoll(int lfd, int sfd)
{
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
    struct epoll_event sev = {.events = EPOLLIN, .data.fd = sfd};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) != 0 ||
        epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &sev) != 0)
        fail("epoll");
    printf("ready epoll\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno != EINTR)
            fail("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == sfd)
                return;
            if (fd != lfd) {
                ep_event(fd, evs[i].events);
                continue;
            }
            /* at most one pass over the accept queue: bounded by its length */
            for (int k = 0; k < 4096; k++) {
                int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (cfd < 0)
                    break;
                ep_open_pair(cfd);
            }
        }
    }
}

/* ---- io_uring ------------------------------------------------------------- */

enum { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_SIGNAL };

/* One socket of a pair. The queue holds the buffers to be sent TO it, in
 * the order they were received from its peer; qoff is what of the first
 * one is already out. */
typedef struct ur_side {
    int peer;
    int qhead, qtail; /* buffer ids, -1: empty */
    unsigned qoff;
    unsigned recv_armed : 1; /* a multishot recv is outstanding */
    unsigned sending : 1;    /* a send to this socket is in flight */
    unsigned starved : 1;    /* its recv ended with ENOBUFS */
    unsigned closing : 1;
} ur_side;

static ur_side *urs[MAXFD];
static struct io_uring ring;
static ub_bufs bufs;
static unsigned blen[UR_NBUFS];
static int bnext[UR_NBUFS];
static int free_bufs = UR_NBUFS;
static int starved_fds[MAXFD], n_starved;

static void buf_recycle(int bid)
{
    ub_recycle(&bufs, bid);
    free_bufs++;
}

static void arm_recv(int fd)
{
    ub_arm_recv(&ring, fd, OP_RECV);
    urs[fd]->recv_armed = 1;
    urs[fd]->starved = 0;
}

static void send_next(int fd)
{
    ur_side *d = urs[fd];
    int bid = d->qhead;
    struct io_uring_sqe *sqe = ub_sqe(&ring);
    io_uring_prep_send(sqe, fd, ub_buf(&bufs, bid) + d->qoff, blen[bid] - d->qoff, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, UB_UD(OP_SEND, fd));
    d->sending = 1;
}

/* Gives back the buffers queued for FD (none may be in flight). */
static void drop_queue(ur_side *d)
{
    while (d->qhead >= 0) {
        int bid = d->qhead;
        d->qhead = bnext[bid];
        buf_recycle(bid);
    }
    d->qtail = -1;
    d->qoff = 0;
}

/* Closes and frees FD once nothing of it is outstanding in the ring. */
static void maybe_free(int fd)
{
    ur_side *s = urs[fd];
    if (s && s->closing && !s->recv_armed && !s->sending) {
        drop_queue(s);
        free(s);
        urs[fd] = NULL;
        close(fd);
    }
}

/* Both sockets stop: shutdown makes their outstanding recvs complete (0)
 * and their sends fail; each is freed when its last operation is back. */
static void pair_shutdown(int fd)
{
    int fds[2] = {fd, urs[fd]->peer};
    for (int i = 0; i < 2; i++) {
        ur_side *s = urs[fds[i]];
        if (s == NULL || s->closing)
            continue;
        s->closing = 1;
        s->starved = 0;
        shutdown(fds[i], SHUT_RDWR);
        if (!s->sending)
            drop_queue(s);
    }
    maybe_free(fds[0]);
    maybe_free(fds[1]);
}

static void ur_open_pair(int cfd)
{
    int bfd = pair_backend(cfd);
    if (bfd < 0)
        return;
    int fds[2] = {cfd, bfd};
    for (int i = 0; i < 2; i++) {
        ur_side *s = calloc(1, sizeof(*s));
        if (s == NULL)
            fail("calloc");
        s->peer = fds[1 - i];
        s->qhead = s->qtail = -1;
        urs[fds[i]] = s;
    }
    arm_recv(cfd);
    arm_recv(bfd);
}

static void on_recv(int fd, int res, unsigned flags)
{
    ur_side *s = urs[fd];
    if (s == NULL)
        return;
    if (!(flags & IORING_CQE_F_MORE))
        s->recv_armed = 0;
    if (res == -ENOBUFS && !s->closing) {
        if (!s->recv_armed && !s->starved) {
            s->starved = 1;
            starved_fds[n_starved++] = fd;
        }
        return;
    }
    int bid = (flags & IORING_CQE_F_BUFFER) ? (int)(flags >> IORING_CQE_BUFFER_SHIFT) : -1;
    if (bid >= 0)
        free_bufs--;
    if (res <= 0 || s->closing) {
        if (bid >= 0)
            buf_recycle(bid);
        if (!s->closing)
            pair_shutdown(fd);
        else
            maybe_free(fd);
        return;
    }
    ur_side *d = urs[s->peer];
    blen[bid] = (unsigned)res;
    bnext[bid] = -1;
    if (d->qtail >= 0)
        bnext[d->qtail] = bid;
    else
        d->qhead = bid;
    d->qtail = bid;
    if (!d->sending)
        send_next(s->peer);
    if (!s->recv_armed) /* the multishot ended without an error (e.g. CQ overflow) */
        arm_recv(fd);
}

static void on_send(int fd, int res)
{
    ur_side *d = urs[fd];
    if (d == NULL)
        return;
    d->sending = 0;
    if (d->closing) {
        maybe_free(fd);
        return;
    }
    if (res < 0) {
        pair_shutdown(fd);
        return;
    }
    d->qoff += (unsigned)res;
    if (d->qoff >= blen[d->qhead]) {
        int bid = d->qhead;
        d->qhead = bnext[bid];
        if (d->qhead < 0)
            d->qtail = -1;
        d->qoff = 0;
        buf_recycle(bid);
    }
    if (d->qhead >= 0)
        send_next(fd);
}

static void run_uring(int lfd, int sfd)
{
    struct io_uring_params p;
    const char *mode = "single_issuer+defer_taskrun";
    unsigned tries[3] = {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                         IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN, 0};
    const char *names[3] = {mode, "single_issuer+coop_taskrun", "no setup flags"};
    int i, rc = -1;
    for (i = 0; i < 3 && rc != 0; i++) {
        memset(&p, 0, sizeof(p));
        p.flags = tries[i];
        rc = io_uring_queue_init_params(4096, &ring, &p);
        mode = names[i];
    }
    if (rc != 0) {
        errno = -rc;
        fail("io_uring_queue_init");
    }
    ub_bufs_init(&ring, &bufs, UR_BUF, UR_NBUFS);

    struct signalfd_siginfo si;
    struct io_uring_sqe *sqe = ub_sqe(&ring);
    io_uring_prep_read(sqe, sfd, &si, sizeof(si), 0);
    io_uring_sqe_set_data64(sqe, UB_UD(OP_SIGNAL, sfd));
    ub_arm_accept(&ring, lfd, OP_ACCEPT);
    printf("ready io_uring (%s)\n", mode);
    fflush(stdout);

    int accept_errors = 0;
    for (;;) {
        rc = io_uring_submit_and_wait(&ring, 1);
        if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
            errno = -rc;
            fail("io_uring_submit_and_wait");
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe)
        {
            seen++;
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            int op = (int)(ud >> 32), fd = (int)(uint32_t)ud, res = cqe->res;
            switch (op) {
            case OP_ACCEPT:
                if (res >= 0)
                    ur_open_pair(res);
                else if (accept_errors++ < 10)
                    fprintf(stderr, "floor_proxy: accept: %s\n", strerror(-res));
                if (!(cqe->flags & IORING_CQE_F_MORE))
                    ub_arm_accept(&ring, lfd, OP_ACCEPT);
                break;
            case OP_RECV: on_recv(fd, res, cqe->flags); break;
            case OP_SEND: on_send(fd, res); break;
            case OP_SIGNAL:
                io_uring_cq_advance(&ring, seen);
                io_uring_queue_exit(&ring);
                return;
            }
        }
        io_uring_cq_advance(&ring, seen);
        if (n_starved > 0 && free_bufs >= UR_NBUFS / 4) {
            for (i = 0; i < n_starved; i++) {
                ur_side *s = urs[starved_fds[i]];
                if (s && s->starved && !s->closing)
                    arm_recv(starved_fds[i]);
            }
            n_starved = 0;
        }
    }
}

int main(int argc, char **argv)
{
    const char *mode = NULL;
    int port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--mode") == 0)
            mode = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--backend") == 0)
            backend_port = atoi(argv[i + 1]);
    }
    if (mode == NULL || port <= 0 || port > 65535 || backend_port <= 0 || backend_port > 65535 ||
        (strcmp(mode, "epoll") != 0 && strcmp(mode, "uring") != 0)) {
        fprintf(stderr, "usage: %s --mode epoll|uring --port N --backend PORT\n", argv[0]);
        return 2;
    }
    int sfd = signals_fd();
    int lfd = ub_listen(port);
    if (strcmp(mode, "epoll") == 0)
        run_epoll(lfd, sfd);
    else
        run_uring(lfd, sfd);
    return 0;
}
