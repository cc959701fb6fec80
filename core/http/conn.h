/*
 * conn.h - client connections: the socket and its transport (plain or TLS),
 * buffers, timers, the re-entrancy bracket, and the protocol that runs on
 * the connection (HTTP/1.1 in http1.c, HTTP/2 in http2.c).
 *
 * Ownership: a connection owns at most one active HTTP/1.x request
 * (pipelined bytes wait in the input buffer) or an HTTP/2 session and its
 * streams. Only conn_leave() (the outermost hx_conn_leave) completes
 * requests and frees connections, so no caller ever touches freed memory.
 */
#ifndef HX_CONN_H
#define HX_CONN_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "base/addr.h"
#include "http/request.h"
#include "http/transport.h"

/* Collects the request target and header spans that llhttp may deliver in
 * pieces. One per HTTP/1.x request, inside the request's allocation. */
typedef struct hx_hdr_builder {
    hx_buf url;
    hx_buf name, value;
    int in_value;
    size_t total; /* bytes of all header lines (and trailer lines) */
    unsigned count;
    int in_trailers;  /* the head is done: fields now are trailers */
    size_t chunk_ext; /* bytes of the current chunk's extensions */
    const char *err_reason; /* with hx_conn.err_status */
} hx_hdr_builder;

enum hx_conn_state {
    HX_CS_IDLE = 0, /* keep-alive, waiting for the next request */
    HX_CS_HEAD,     /* reading a request head */
    HX_CS_ACTIVE,   /* a request is being served */
    HX_CS_CLOSING,  /* flushing the last bytes, then close */
};

struct hx_conn {
    hx_worker *w;
    hx_lsock *ls;
    struct ssl_st *ssl; /* TLS, or NULL (transport.h) */
    struct hx_h2 *h2;   /* HTTP/2 session, or NULL for HTTP/1.x */
    hx_wgen *hs_wg;     /* keeps the TLS contexts' generation during the handshake */
    int fd;
    unsigned head_state; /* raw head validator state */
    /* bit fields, packed: an idle connection costs its struct (D54) */
    unsigned state : 2;              /* enum hx_conn_state */
    unsigned served : 1;             /* a request was answered: no HTTP/2 preface now */
    unsigned tls_hs : 1;             /* handshake in progress */
    unsigned tls_rd_wants_write : 1; /* SSL_read needs the socket writable */
    unsigned lingering : 1;          /* GOAWAY sent: reading and dropping until the peer closes */
    unsigned head_paused : 1;        /* parser paused at headers complete */
    unsigned parsing : 1;            /* inside llhttp_execute: never re-enter it */
    unsigned msg_paused : 1;         /* parser paused at message complete */
    unsigned reading : 1;            /* rio active */
    unsigned close_after : 1;        /* close once the current response is flushed */
    unsigned half_closed : 1;        /* the client shut down its side: read no more */
    uint16_t err_status;             /* status a parser callback asked for (reason: hb) */
    unsigned head_flags;             /* C_DEAD, C_ERRSENT, and the enter/leave depth */
    ev_io rio, wio;
    ev_timer timer;
    uint64_t id; /* unique in the process, from 1: logs' connection_id */
    union { /* listeners are TCP over IPv4 or IPv6: no sockaddr_storage */
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } peer;
    /* the peer is formatted when needed (HX_CONN_PEER), not kept as text:
     * 40 bytes fewer make the struct 448 bytes, a 464-byte malloc chunk (D54) */

    llhttp_t parser;
    hx_buf in;
    hx_buf out;
    hx_hdr_builder *hb; /* the current request's, or NULL (D54) */
    ev_tstamp head_start;
    ev_tstamp last_io;

    hx_req *req;

    struct hx_conn *prev, *next; /* worker's list */
};

/* The peer's IP as text, for log messages: formatted into a buffer that
 * lives until the end of the enclosing block (a compound literal). */
#define HX_CONN_PEER(c) \
    hx_addr_ip_str(&(c)->peer.sa, (char[HX_IP_STRLEN]){0}, HX_IP_STRLEN)

/* ---- accept and stop (registered with the worker by the runtime) ---- */
void hx_conn_accept(hx_lsock *ls, int fd, const struct sockaddr *sa, socklen_t salen);
/* Graceful stop of W: idle connections close now, busy ones after their
 * response (HTTP/2: GOAWAY). */
void hx_conns_shutdown(hx_worker *w);
/* After W's thread ended: every connection of W goes now (logged). */
void hx_conns_kill(hx_worker *w);

/* ---- output ---- */
int hx_conn_write(hx_conn *c, const void *p, size_t n); /* queue; sent at flush */
struct iovec;
int hx_conn_writev(hx_conn *c, const struct iovec *iov, int cnt); /* big pieces */
void hx_conn_flush(hx_conn *c); /* send what is queued (conn_leave does it) */
size_t hx_conn_pending(const hx_conn *c);

/* ---- the bracket: run code that may finish requests inside it ---- */
void hx_conn_enter(hx_conn *c);
void hx_conn_leave(hx_conn *c);
void hx_conn_mark_dead(hx_conn *c);
/* The bracket of a request's connection: the enter/leave of the ops of
 * every request a client connection owns (HTTP/1.x and HTTP/2). */
void hx_conn_req_enter(hx_req *r);
void hx_conn_req_leave(hx_req *r);

/* ---- HTTP/1.1 (http1.c) ---- */
extern const hx_req_ops hx_http1_ops;
void hx_http1_body_wanted(hx_conn *c); /* resume reading the request body */

#endif
