/*
 * http.h - client connections (HTTP/1.1), requests, and the phase machine
 * that carries a request through routing, filters, the handler or the
 * proxy, and back.
 *
 * Ownership: a connection owns at most one active request (pipelined bytes
 * wait in the input buffer). A request owns its arena, its upstream
 * connection while attached, and a reference on its worker's generation
 * view. helios_request handed to modules is hx_req.
 */
#ifndef HX_HTTP_H
#define HX_HTTP_H

#include <ev.h>
#include <llhttp.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/arena.h"
#include "base/buf.h"
#include "event/worker.h"

typedef struct hx_upconn hx_upconn;

typedef struct hx_hdr {
    helios_buf name;
    helios_buf value;
} hx_hdr;

typedef struct hx_hdrs {
    hx_hdr *v;
    size_t n, cap;
} hx_hdrs;

/* Collects header spans that llhttp may deliver in pieces. */
typedef struct hx_hdr_builder {
    hx_buf name, value;
    int in_value;
    size_t total; /* bytes of all header lines */
    unsigned count;
} hx_hdr_builder;

enum hx_req_phase {
    HX_PH_HEAD = 0,     /* reading the request head */
    HX_PH_FILTERS,      /* running on_request_headers */
    HX_PH_HANDLER,      /* a module handler owns the response */
    HX_PH_PROXY,        /* upstream exchange in progress */
    HX_PH_RESPONDING,   /* a local response is being written */
    HX_PH_DONE,         /* response fully queued to the client */
};

typedef struct hx_req {
    hx_conn *conn;
    hx_worker *w;
    hx_wgen *wg;
    hx_gen *gen;
    hx_arena arena;

    /* request head */
    helios_buf method, target, path, query, host;
    int http_major, http_minor;
    int method_id; /* llhttp_method_t */
    hx_hdrs hdrs;
    int64_t content_length; /* -1 when absent */
    int chunked;
    int up_chunked; /* body goes upstream chunked (client's, or filtered) */
    int has_body;
    int expect_continue;
    int continue_sent;
    int keepalive; /* client wants to keep the connection */
    int is_head;
    struct sockaddr_storage client; /* after trusted_proxies */

    const hx_route *route;
    void **rstates;  /* per instance slot */
    size_t fidx;     /* next filter for on_request_headers */
    int paused;      /* a hook returned PAUSE and has not resumed */
    int phase;

    /* request body */
    int body_done;      /* whole request body read from the client */
    int body_discard;   /* body is read and dropped (local responses) */
    uint64_t bytes_in;  /* request body bytes from the client */

    /* response */
    int status;
    hx_hdrs rhdrs;
    int head_sent;      /* response head queued to the client */
    int resp_chunked;   /* chunked to the client */
    int resp_close;     /* close-delimited to the client */
    int resp_no_body;
    int64_t resp_length; /* declared length, -1 unknown */
    uint64_t bytes_out; /* response body bytes queued to the client */
    int resp_done;      /* last body byte queued */
    int aborted;        /* the response cannot be completed: close */
    const char *error_reason; /* why the core answered with an error */

    /* upstream */
    hx_upconn *up;
    hx_backend *backend;
    uint8_t *tried; /* [backends->n] bitmap, lazily */
    size_t tried_n;
    unsigned attempts;
    int trial;       /* the current attempt holds a half-open trial slot */
    int retry_status; /* a retryable 5xx seen in the response head */
    int upstream_bytes_seen; /* any response byte received */
    int req_sent_some;       /* any request body byte written upstream */
    ev_tstamp up_start, up_end;
    char upstream_addr[64];

    ev_tstamp start;
    ev_timer deadline; /* whole-request timeout */
    int log_done;
    int counted; /* in the worker's requests_active */
    struct hx_sub *sub;  /* this request is a module's subrequest (no conn) */
    struct hx_h2_stream *h2s; /* an HTTP/2 stream of conn (else HTTP/1.x) */
    struct hx_h2up_stream *h2up; /* attempt on an HTTP/2 upstream connection */
    hx_hdrs trailers;    /* response trailers (from an HTTP/2 upstream) */
    int end_with_head;   /* the upstream's response had no body at all */
    struct hx_sub *subs; /* subrequests made with this request as parent */
    /* handler reading the body (api->req_body_read) */
    void (*body_cb)(void *arg, helios_buf chunk, int last, int error);
    void *body_arg;
    int body_state; /* 0 not asked, 1 reading, 2 finished */
    ev_timer body_kick;
    struct hx_var *vars; /* api->req_var_* (arena) */
    /* WebSocket tunnel (tunnel.c) */
    int ws_upgrade;              /* HTTP/1.1 GET with Upgrade: websocket, no body */
    struct hx_tunnel *tunnel;    /* after the backend's 101: both connections are its */
    hx_backend *tunnel_slot;     /* holds one of this backend's max_tunnels */

    hx_arena_block first[]; /* embedded first arena block */
} hx_req;

enum hx_conn_state {
    HX_CS_IDLE = 0, /* keep-alive, waiting for the next request */
    HX_CS_HEAD,     /* reading a request head */
    HX_CS_ACTIVE,   /* a request is being served */
    HX_CS_CLOSING,  /* flushing the last bytes, then close */
};

struct hx_conn {
    hx_worker *w;
    hx_lsock *ls;
    int fd;
    struct ssl_st *ssl;  /* TLS, or NULL */
    struct hx_h2 *h2;    /* HTTP/2 session, or NULL for HTTP/1.x */
    int tls_hs;          /* handshake in progress */
    int tls_rd_wants_write; /* SSL_read needs the socket writable */
    hx_wgen *hs_wg;      /* keeps the TLS contexts' generation during the handshake */
    int lingering;       /* GOAWAY sent: reading and dropping until the peer closes */
    ev_io rio, wio;
    ev_timer timer;
    int state;
    struct sockaddr_storage peer;
    socklen_t peer_len;
    char peer_ip[46]; /* formatted once per connection: X-Forwarded-For etc. */

    llhttp_t parser;
    hx_buf in;
    hx_buf out;
    hx_hdr_builder hb;
    hx_buf url;
    int head_paused;   /* parser paused at headers complete */
    int msg_paused;    /* parser paused at message complete */
    int reading;       /* rio active */
    int close_after;   /* close once the current response is flushed */
    int half_closed;   /* the client shut down its side: read no more */
    ev_tstamp head_start;
    ev_tstamp last_io;
    unsigned head_state; /* raw head validator state */
    unsigned head_flags; /* C_DEAD, C_ERRSENT, and the enter/leave depth */
    int err_status;      /* status a parser callback asked for */
    const char *err_reason;

    hx_req *req;
    hx_req *spare; /* reused request allocation */
    unsigned requests;

    struct hx_conn *prev, *next; /* worker's list */
};

/* worker.c -> http1.c */
void hx_conn_accept(hx_lsock *ls, int fd, const struct sockaddr *sa, socklen_t salen);
/* Graceful stop: idle connections close now, busy ones after their response. */
void hx_conn_shutdown(hx_conn *c);

/* Request phase machine (request.c) */
void hx_req_start(hx_req *r);                /* head parsed and validated */
void hx_req_resume(hx_req *r, int status);   /* module resume */
void hx_req_error(hx_req *r, int status, const char *reason);
/* A local response (module respond / error): head + whole body. */
int hx_req_respond(hx_req *r, int status, const char *ctype, const void *body, size_t len);

/* Response path, shared by local responses and the proxy. */
int hx_resp_begin(hx_req *r);                       /* filters + head to client */
int hx_resp_body(hx_req *r, const char *p, size_t n, int last);
void hx_resp_abort(hx_req *r, const char *why);     /* cannot complete: close */

/* http1.c helpers used by request.c and upstream.c */
int hx_conn_write(hx_conn *c, const void *p, size_t n); /* queue; sent at flush */
void hx_conn_flush(hx_conn *c); /* send what is queued (conn_leave does it) */
struct iovec;
int hx_conn_writev(hx_conn *c, const struct iovec *iov, int cnt); /* big pieces */
size_t hx_conn_pending(const hx_conn *c);
void hx_conn_request_body_wanted(hx_conn *c);           /* resume reading body */
/* The request can take more of its body now (HTTP/1.1 or HTTP/2). */
void hx_req_body_wanted(hx_req *r);
/* Response bytes queued toward the client for R (backpressure). */
size_t hx_req_pending(const hx_req *r);
/* Request objects shared by HTTP/1.1 and HTTP/2 (http1.c). */
hx_req *hx_req_alloc(hx_conn *c);
void hx_req_release(hx_req *r);  /* frees a request that is not c->req */
void hx_req_log(hx_req *r);      /* once: on_done, filters' on_log, access log */
int hx_req_body_in(hx_req *r, const char *p, size_t n, int last); /* body filters, then on */
int hx_parse_host(hx_req *r, const char *h, size_t n);
void hx_req_finish(hx_req *r);                          /* response fully queued */

/* Headers */
int hx_hdrs_add(hx_arena *a, hx_hdrs *h, const char *name, size_t nlen, const char *value,
                size_t vlen);
helios_buf hx_hdrs_get(const hx_hdrs *h, const char *name);
int hx_hdrs_remove(hx_hdrs *h, const char *name);
int hx_hdr_name_valid(const char *p, size_t n);
int hx_hdr_value_valid(const char *p, size_t n);

/* Run code that may finish requests inside the connection's bracket. */
void hx_conn_enter(hx_conn *c);
void hx_conn_leave(hx_conn *c);
void hx_conn_mark_dead(hx_conn *c);

/* Tunnels (tunnel.c). After a backend's 101 to a WebSocket upgrade, the
 * client connection and the upstream connection become a byte tunnel that
 * tunnel.c drives: http1.c and upstream.c stop touching either. */
/* Upstream side (upstream.c): the transport of U, and its event watchers,
 * which tunnel.c takes over (their callbacks and data are its own). */
ssize_t hx_up_send(hx_upconn *u, const void *p, size_t n);
ssize_t hx_up_recv(hx_upconn *u, void *p, size_t n);
int hx_up_rd_pending(hx_upconn *u);        /* bytes the transport holds (TLS) */
void hx_up_shutdown_write(hx_upconn *u);   /* send EOF to the backend */
void hx_up_tunnel_io(hx_upconn *u, ev_io **rio, ev_io **wio, hx_buf **out);
/* Client side (http1.c): the connection's transport, plain or TLS. */
ssize_t hx_conn_send(hx_conn *c, const void *p, size_t n);
ssize_t hx_conn_recv(hx_conn *c, void *p, size_t n);
/* upstream.c, from up_read_cb: the backend answered 101 to R; REST are the
 * bytes after the head (already tunnel payload). */
void hx_tunnel_start(hx_req *r, hx_upconn *u, const char *rest, size_t n);
/* http1.c, from conn_close: the connection goes, so does its tunnel (logged). */
void hx_tunnel_close(hx_req *r);
/* max_tunnels per backend: 0 taken (or no cap), -1 the backend is full. */
int hx_tunnel_slot_take(hx_req *r, hx_backend *b);
void hx_tunnel_slot_release(hx_req *r);
/* 1 when the Upgrade header value H lists "websocket". */
int hx_tunnel_is_websocket(helios_buf h);

/* Per-request module context */
void hx_ctx_init(helios_ctx *c, hx_req *r, const hx_instance *inst);

extern const char *const hx_status_text[600];
const char *hx_reason(int status);

#endif
