/*
 * uring_spike.c - the io_uring spike of issue 18: the accept + recv + send
 * path of an HTTP/1.1 server answering a fixed response, written twice in
 * one program so the two run the same work:
 *
 *   --mode epoll   non-blocking sockets, level-triggered epoll, accept4,
 *                  recv and send per ready socket (what heliosd does);
 *   --mode uring   liburing: one multishot accept, one multishot recv per
 *                  connection reading into provided buffers (a buffer
 *                  ring), sends queued as SQEs, everything submitted in one
 *                  io_uring_submit_and_wait per loop pass.
 *
 * Requests are GETs without bodies that fit one read (wrk's); each complete
 * head gets one response; "Connection: close" closes after the response.
 * Not a server: no parsing beyond the end of the head, no partial-send
 * handling beyond closing. bench/iouring.sh builds and measures it.
 *
 * Usage: uring_spike --mode epoll|uring --port N
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "uring_bench.h"

#define MAXFD 65536
#define BUF_SIZE 4096
#define NBUFS 1024 /* provided buffers (a power of two) */

static const char RESP[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";
#define RESP_LEN (sizeof(RESP) - 1)
static const char RESP_CLOSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: "
                                 "text/plain\r\nConnection: close\r\n\r\nok\n";
#define RESP_CLOSE_LEN (sizeof(RESP_CLOSE) - 1)
#define MAXPIPE 64
static char resp_many[MAXPIPE * RESP_LEN];

/* per connection: the unfinished head bytes and what to do after sending */
typedef struct conn {
    char head[BUF_SIZE];
    size_t len;
    int close_after;
} conn;
static conn *conns[MAXFD];

/* Counts complete heads in the connection's bytes so far; keeps the tail. */
static int take_requests(conn *c, const char *p, size_t n, int *close)
{
    if (c->len + n > sizeof(c->head))
        return -1;
    memcpy(c->head + c->len, p, n);
    c->len += n;
    int count = 0;
    char *start = c->head, *end = c->head + c->len, *e;
    while ((e = memmem(start, (size_t)(end - start), "\r\n\r\n", 4)) != NULL) {
        if (memmem(start, (size_t)(e - start), "onnection: close", 16))
            *close = 1;
        count++;
        start = e + 4;
    }
    c->len = (size_t)(end - start);
    memmove(c->head, start, c->len);
    return count > MAXPIPE ? -1 : count;
}

static conn *conn_new(int fd)
{
    if (fd >= MAXFD) {
        close(fd);
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    conn *c = calloc(1, sizeof(*c));
    conns[fd] = c;
    return c;
}

static void conn_free(int fd)
{
    free(conns[fd]);
    conns[fd] = NULL;
    close(fd);
}

/* ---- epoll ---------------------------------------------------------------- */

static void run_epoll(int lfd)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[512];
    char buf[BUF_SIZE];
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int cfd;
                while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (conn_new(cfd) == NULL)
                        continue;
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ce);
                }
                continue;
            }
            conn *c = conns[fd];
            ssize_t r = recv(fd, buf, sizeof(buf), 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                conn_free(fd); /* close removes it from the epoll set */
                continue;
            }
            int close_after = 0;
            int k = take_requests(c, buf, (size_t)r, &close_after);
            if (k < 0) {
                conn_free(fd);
                continue;
            }
            if (k == 0)
                continue;
            const char *out = close_after ? RESP_CLOSE : resp_many;
            size_t len = close_after ? RESP_CLOSE_LEN : (size_t)k * RESP_LEN;
            if (send(fd, out, len, MSG_NOSIGNAL) != (ssize_t)len || close_after)
                conn_free(fd);
        }
    }
}

/* ---- io_uring ------------------------------------------------------------- */

enum { OP_ACCEPT = 1, OP_RECV, OP_SEND };

static struct io_uring ring;
static ub_bufs bufs;

static void run_uring(int lfd)
{
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN;
    if (io_uring_queue_init_params(4096, &ring, &p) != 0) {
        p.flags = 0;
        if (io_uring_queue_init_params(4096, &ring, &p) != 0) {
            perror("io_uring_queue_init");
            exit(1);
        }
    }
    ub_bufs_init(&ring, &bufs, BUF_SIZE, NBUFS);
    ub_arm_accept(&ring, lfd, OP_ACCEPT);
    for (;;) {
        io_uring_submit_and_wait(&ring, 1);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe)
        {
            seen++;
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            int op = (int)(ud >> 32), fd = (int)(uint32_t)ud, res = cqe->res;
            if (op == OP_ACCEPT) {
                if (res >= 0 && conn_new(res))
                    ub_arm_recv(&ring, res, OP_RECV);
                if (!(cqe->flags & IORING_CQE_F_MORE))
                    ub_arm_accept(&ring, lfd, OP_ACCEPT);
            } else if (op == OP_RECV) {
                conn *c = conns[fd];
                if (res == -ENOBUFS && c) {
                    ub_arm_recv(&ring, fd, OP_RECV);
                    continue;
                }
                if (res <= 0 || c == NULL) {
                    if (c && !(cqe->flags & IORING_CQE_F_MORE))
                        conn_free(fd);
                    continue;
                }
                int bid = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                int close_after = 0;
                int k = take_requests(c, ub_buf(&bufs, bid), (size_t)res, &close_after);
                ub_recycle(&bufs, bid);
                if (k < 0) {
                    shutdown(fd, SHUT_RDWR); /* the recv completes with 0 and frees it */
                    continue;
                }
                if (k > 0) {
                    c->close_after = close_after;
                    struct io_uring_sqe *sqe = ub_sqe(&ring);
                    io_uring_prep_send(sqe, fd, close_after ? RESP_CLOSE : resp_many,
                                       close_after ? RESP_CLOSE_LEN : (size_t)k * RESP_LEN,
                                       MSG_NOSIGNAL);
                    io_uring_sqe_set_data64(sqe, UB_UD(OP_SEND, fd));
                }
                if (!(cqe->flags & IORING_CQE_F_MORE))
                    ub_arm_recv(&ring, fd, OP_RECV);
            } else if (op == OP_SEND) {
                conn *c = conns[fd];
                if (c && (res < 0 || c->close_after))
                    shutdown(fd, SHUT_RDWR); /* the pending recv ends with 0: freed there */
            }
        }
        io_uring_cq_advance(&ring, seen);
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
    }
    if (mode == NULL || port <= 0 || (strcmp(mode, "epoll") != 0 && strcmp(mode, "uring") != 0)) {
        fprintf(stderr, "usage: %s --mode epoll|uring --port N\n", argv[0]);
        return 2;
    }
    for (int i = 0; i < MAXPIPE; i++)
        memcpy(resp_many + i * RESP_LEN, RESP, RESP_LEN);
    int lfd = ub_listen(port);
    printf("ready\n");
    fflush(stdout);
    if (strcmp(mode, "epoll") == 0)
        run_epoll(lfd);
    else
        run_uring(lfd);
    return 0;
}
