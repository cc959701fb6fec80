/*
 * tls.h - TLS termination (OpenSSL 3): a listener's `tls:` block becomes
 * one SSL_CTX per certificate, chosen by SNI, with ALPN, session tickets
 * under process-wide rotating keys, optional client certificates and kTLS.
 *
 * Built on the main thread with the generation; the SSL_CTXs are reference
 * counted by OpenSSL, so a connection accepted under an older generation
 * keeps its context after a reload replaced (and freed) the generation's.
 */
#ifndef HX_TLS_H
#define HX_TLS_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <sys/types.h>

#include "config/conf.h"

/* HTTP/2 over TLS (ALPN h2): offered by default once the core speaks it. */
#ifndef HX_HAVE_H2
#define HX_HAVE_H2 1
#endif
#define HX_TLS_DEFAULT_H2 HX_HAVE_H2

typedef struct hx_tls_cert {
    SSL_CTX *ctx;
    char **names; /* DNS names from subjectAltName (or CN); "*.x.com" kept as is */
    size_t nnames;
    char *cert_file;
} hx_tls_cert;

typedef struct hx_tls {
    hx_tls_cert *certs; /* certs[0] is the default (no SNI or no match) */
    size_t ncerts;
    int alpn_h2;      /* offer h2 in ALPN */
    int alpn_http11;  /* offer http/1.1 */
    int client_auth;  /* 0 off, 1 optional, 2 required */
    int ktls;
    unsigned ticket_rotation; /* seconds; the key ring itself is process-wide */
} hx_tls;

/* Parses a listener's `tls:` map (errors recorded on the tree). Returns
 * NULL after an error. */
hx_tls *hx_tls_new(const hx_conf_node *n);
void hx_tls_free(hx_tls *t);

/* A server SSL for an accepted socket, or NULL. */
SSL *hx_tls_accept(hx_tls *t, int fd);

/* ALPN chosen on an established connection: 2 = h2, 1 = http/1.1 or none. */
int hx_tls_alpn_is_h2(SSL *ssl);


/* "TLSv1.3", cipher name, SNI, client subject (NULL when none); the
 * verification result of the client certificate (1 verified). */
const char *hx_tls_version(SSL *ssl);
const char *hx_tls_cipher(SSL *ssl);
const char *hx_tls_sni(SSL *ssl);
int hx_tls_client_subject(SSL *ssl, char *buf, size_t size);
int hx_tls_client_verified(SSL *ssl);
/* 1 when kTLS carries the send (and receive) side of SSL. */
int hx_tls_ktls_active(SSL *ssl);

/* ---- TLS to upstreams ---- */

typedef struct hx_uptls {
    SSL_CTX *ctx;
    char *sni;         /* server name sent, or NULL */
    char *verify_name; /* name the certificate must carry (default: sni), or NULL */
    int verify;        /* verify the chain (and the name when one is known) */
    int h2;            /* ALPN offers h2 (protocol: h2), else http/1.1 */
} hx_uptls;

/* Parses an upstream's `tls:` map (or `true`); NULL after an error. */
hx_uptls *hx_tls_client_new(const hx_conf_node *n, int h2);
void hx_tls_client_free(hx_uptls *t);
/* A client SSL on FD, with SNI and name verification set up. */
SSL *hx_tls_connect(hx_uptls *t, int fd);

/* send(2)/recv(2) on a TLS session: bytes; 0 for a clean close (recv);
 * -1 with errno EAGAIN (would block; *WANT_WRITE set when a read must
 * wait for the socket to be writable), EPIPE or ECONNRESET. */
ssize_t hx_tls_send(SSL *ssl, const void *p, size_t n);
ssize_t hx_tls_recv(SSL *ssl, void *p, size_t n, int *want_write);

#endif
