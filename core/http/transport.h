/*
 * transport.h - the one socket transport: every byte to or from a client,
 * a backend or an HTTP/2 backend goes through these (plain TCP, or TLS
 * when SSL is not NULL). Same contract as send(2)/recv(2) on a
 * non-blocking socket: -1 with errno EAGAIN means "wait for the event".
 * Inline: they sit on every read and write of the proxied path.
 */
#ifndef HX_TRANSPORT_H
#define HX_TRANSPORT_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#include "config/tls.h"
#include "event/uring.h"

static inline ssize_t hx_sock_send(int fd, SSL *ssl, const void *p, size_t n)
{
    if (ssl == NULL) {
        hx_usock *s = hx_uring_sock(fd);
        if (s)
            return hx_usock_send(s, p, n);
        return send(fd, p, n, MSG_NOSIGNAL);
    }
    return hx_tls_send(ssl, p, n);
}

/* WANT_WRITE (may be NULL) is set when TLS must write before it can read
 * on (a key update): the caller waits for writability, then reads again. */
static inline ssize_t hx_sock_recv(int fd, SSL *ssl, void *p, size_t n, int *want_write)
{
    if (ssl == NULL) {
        hx_usock *s = hx_uring_sock(fd);
        if (s)
            return hx_usock_recv(s, p, n);
        return recv(fd, p, n, 0);
    }
    return hx_tls_recv(ssl, p, n, want_write);
}

/* 1 when TLS holds decrypted bytes epoll cannot see (read them now). */
static inline int hx_sock_rd_pending(SSL *ssl) { return ssl && SSL_has_pending(ssl); }

/* EOF to the peer: TLS close_notify first, then the TCP FIN. */
void hx_sock_shutdown_write(int fd, SSL *ssl);

#endif
