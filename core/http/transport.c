/*
 * transport.c - the parts of the socket transport that are not inline.
 */
#include "http/transport.h"

#include <openssl/err.h>

void hx_sock_shutdown_write(int fd, SSL *ssl)
{
    if (ssl) {
        ERR_clear_error();
        SSL_shutdown(ssl);
        ERR_clear_error();
    }
    hx_usock *s = hx_uring_sock(fd);
    if (s)
        hx_usock_shutdown_write(s); /* after the queued bytes */
    else
        shutdown(fd, SHUT_WR);
}
