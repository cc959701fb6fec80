/*
 * uring_bench.h - what the io_uring benchmark programs (uring_spike.c,
 * floor_proxy.c) share: a loopback listener, a submission-queue entry that
 * is always there, the provided-buffer ring, and the multishot accept and
 * receive they arm. Header-only (static functions): each program is one
 * file built by its script with `cc -O2 ... -luring`.
 *
 * user_data of every request is UB_UD(op, fd): the program's operation code
 * in the high 32 bits, the descriptor in the low ones.
 */
#ifndef URING_BENCH_H
#define URING_BENCH_H

#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#define UB_UD(op, fd) (((uint64_t)(op) << 32) | (uint32_t)(fd))
#define UB_BGID 1 /* the one buffer group */

/* A non-blocking listener on 127.0.0.1:PORT (backlog 4096); exits on failure. */
static int ub_listen(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 4096) != 0) {
        fprintf(stderr, "cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        exit(1);
    }
    return fd;
}

/* An SQE; when the queue is full, what is queued is submitted first. */
static struct io_uring_sqe *ub_sqe(struct io_uring *ring)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) {
        io_uring_submit(ring);
        sqe = io_uring_get_sqe(ring);
    }
    if (sqe == NULL) {
        fprintf(stderr, "no io_uring submission queue entry\n");
        exit(1);
    }
    return sqe;
}

/* COUNT (a power of two) buffers of SIZE bytes, provided to the kernel as
 * buffer group UB_BGID. */
typedef struct ub_bufs {
    struct io_uring_buf_ring *br;
    char *base;
    unsigned size, count;
} ub_bufs;

static void ub_bufs_init(struct io_uring *ring, ub_bufs *b, unsigned size, unsigned count)
{
    b->size = size;
    b->count = count;
    b->br = mmap(NULL, count * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    b->base = malloc((size_t)count * size);
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)b->br, .ring_entries = count, .bgid = UB_BGID};
    if (b->br == MAP_FAILED || b->base == NULL || io_uring_register_buf_ring(ring, &reg, 0) != 0) {
        fprintf(stderr, "cannot register the provided-buffer ring\n");
        exit(1);
    }
    io_uring_buf_ring_init(b->br);
    for (unsigned i = 0; i < count; i++)
        io_uring_buf_ring_add(b->br, b->base + (size_t)i * size, size, (unsigned short)i,
                              io_uring_buf_ring_mask(count), (int)i);
    io_uring_buf_ring_advance(b->br, (int)count);
}

static char *ub_buf(const ub_bufs *b, int bid)
{
    return b->base + (size_t)bid * b->size;
}

/* Hands buffer BID back to the kernel. */
static void ub_recycle(ub_bufs *b, int bid)
{
    io_uring_buf_ring_add(b->br, ub_buf(b, bid), b->size, (unsigned short)bid,
                          io_uring_buf_ring_mask(b->count), 0);
    io_uring_buf_ring_advance(b->br, 1);
}

static void ub_arm_accept(struct io_uring *ring, int lfd, int op)
{
    struct io_uring_sqe *sqe = ub_sqe(ring);
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, UB_UD(op, lfd));
}

/* A multishot recv on FD into buffers of group UB_BGID. */
static void ub_arm_recv(struct io_uring *ring, int fd, int op)
{
    struct io_uring_sqe *sqe = ub_sqe(ring);
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = UB_BGID;
    io_uring_sqe_set_data64(sqe, UB_UD(op, fd));
}

#endif
