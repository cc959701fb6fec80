/*
 * request.h - the request layer: a request and the phase machine that
 * carries it through routing, filters, the handler or the proxy, and back.
 *
 * The request layer knows no protocol. HTTP/1.1 (http1.c), HTTP/2
 * (http2.c) and subrequests (subreq.c) each give their requests an ops
 * table (hx_req_ops): the request layer frames nothing itself, it asks the
 * protocol to write the head and the body, to abort, to read more body, and
 * to open and close the re-entrancy bracket of whatever owns the request.
 * The proxy (proxy/, a higher layer) is reached through hx_proxy, which the
 * runtime registers at start-up.
 *
 * Ownership: a request owns its arena, its upstream connection while
 * attached, and a reference on its worker's generation view.
 * helios_request handed to modules is hx_req.
 */
#ifndef HX_REQUEST_H
#define HX_REQUEST_H

#include <ev.h>
#include <llhttp.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/arena.h"
#include "base/buf.h"
#include "base/httputil.h"
#include "base/log.h"
#include "event/worker.h"

typedef struct hx_upconn hx_upconn;

/* A request variable (api->req_var_*): name and value in the arena. */
typedef struct hx_var {
    const char *name;
    helios_buf value;
    struct hx_var *next;
} hx_var;

typedef struct hx_req hx_req;

/*
 * What a protocol gives its requests. Every entry is called on the
 * request's worker, inside the owner's bracket (enter/leave).
 */
typedef struct hx_req_ops {
    const char *name; /* "HTTP/1.x", "HTTP/2", "subrequest": for logs */
    /* Frame and queue the final response head (r->status, r->rhdrs).
     * r->resp_no_body and r->resp_length are set; the protocol may decide
     * the body's framing (r->resp_chunked, r->resp_close). 0, or -1 when
     * the head cannot be sent (the request is aborted). */
    int (*write_head)(hx_req *r);
    /* Queue one filtered body chunk; LAST ends the body (with r->trailers,
     * if any). 0, or -1 when the request cannot take more (it is aborted
     * or cancelled; the caller stops). */
    int (*write_body)(hx_req *r, const char *p, size_t n, int last);
    /* The response cannot be completed: reset the stream, or close the
     * connection after what is queued. NULL when fail is set (fail gets
     * the abort, as a 502). */
    void (*abort)(hx_req *r);
    /* The request's framing cannot be trusted any more (its body will not
     * be read): HTTP/1.x closes the connection after this response. NULL
     * when the protocol frames requests on its own (HTTP/2 streams). */
    void (*no_reuse)(hx_req *r);
    /* A request with no client to answer (a subrequest) reports failures
     * to its owner instead of sending an error response. NULL: the request
     * layer answers with an error response (or aborts after the head). */
    void (*fail)(hx_req *r, int status, const char *why);
    /* The request can take more of its body now: read on. */
    void (*body_wanted)(hx_req *r);
    /* Response bytes queued toward the client and not yet sent. */
    size_t (*pending)(const hx_req *r);
    /* The re-entrancy bracket of the request's owner (its connection, or the
     * subrequest): nothing is freed between enter and the matching leave. */
    void (*enter)(hx_req *r);
    void (*leave)(hx_req *r);
} hx_req_ops;

enum hx_req_phase {
    HX_PH_HEAD = 0,     /* reading the request head */
    HX_PH_FILTERS,      /* running on_request_headers */
    HX_PH_HANDLER,      /* a module handler owns the response */
    HX_PH_PROXY,        /* upstream exchange in progress */
    HX_PH_RESPONDING,   /* a local response is being written */
    HX_PH_DONE,         /* response fully queued to the client */
};

struct hx_req {
    const hx_req_ops *ops; /* the protocol that owns this request */
    hx_conn *conn;         /* client connection; NULL for a subrequest */
    hx_worker *w;
    hx_wgen *wg;
    hx_gen *gen;
    hx_arena arena;

    /* request head */
    helios_buf method, target, path, query;
    /* The one host of the request (request.c, req_identity): lower-cased,
     * no port, no trailing dot. What routing matches, what modules and
     * variables see, and (with the port, if any) the Host sent upstream. */
    helios_buf host;
    /* The authority the protocol was given besides Host: an absolute-form
     * target's (HTTP/1.1) or :authority (HTTP/2). {NULL, 0} when none. */
    helios_buf authority;
    int https; /* the client connection is TLS: default port 443, not 80 */
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
    /* Request buffering (upstream request_buffering): 1 while the body is
     * read into body_buf before the proxy starts, 2 when it all fit, 3 when
     * it did not and the proxy is starting (request.c, buffer_body); 4
     * while a filter's req_body_hold reads it (request.c, hold_body). */
    int buffering;
    hx_buf body_buf;
    /* A request body held whole in memory (a buffered body, a subrequest's):
     * the proxy queues it with the head and sends it again on a retry. */
    helios_buf body_mem;
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
    int add_date;        /* the head gets the worker's Date (hx_resp_begin) */
    ev_tstamp try_start; /* the last upstream attempt began */
    ev_tstamp up_head;   /* its response head arrived: TTFB is the difference */
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
    int body_paused; /* the handler paused its body (api->req_body_pause) */
    ev_timer body_kick;
    /* handler streaming its response (api->respond_begin / respond_body):
     * resp_blocked is set when respond_body reported the client's queue at
     * the high watermark; the drain callback is owed when it falls under */
    int resp_streamed;
    int resp_blocked;
    void (*drain_fn)(void *arg);
    void *drain_arg;
    ev_timer drain_kick;
    hx_var *vars; /* api->req_var_* (arena) */
    /* WebSocket tunnel (tunnel.c) */
    int ws_upgrade;              /* HTTP/1.1 GET with Upgrade: websocket, no body */
    struct hx_tunnel *tunnel;    /* after the backend's 101: both connections are its */
    hx_backend *tunnel_slot;     /* holds one of this backend's max_tunnels */

    /* ABI 1.3 module contracts (request.c, upstream.c) */
    uint64_t hold_max;              /* req_body_hold: held body cap (0: not held) */
    uint32_t ref_slot;              /* req_ref: slot + 1 in the worker's table, 0 none */
    int att_open;                   /* an attempt is in flight and not yet reported */
    size_t att_index;               /* its backend's index in the picked list */
    size_t att_up;                  /* its upstream's index in the generation */
    ev_tstamp att_start, att_first; /* its pick, its first response byte */
    void *att_slot;                 /* the balancer's per-attempt slot (ctx->rstate) */
    const void *att_bal;            /* the balancer instance that picked (compared only) */

    hx_arena_block first[]; /* embedded first arena block */
};

/* ---- the phase machine (request.c) ---- */

/* The head is parsed and validated: route, run filters, then the handler
 * or the proxy. */
void hx_req_start(hx_req *r);
void hx_req_resume(hx_req *r, int status); /* module resume; late ones are no-ops */
/* Answers STATUS with a short text body (or reports the failure through
 * ops->fail, or aborts when the head is already out). */
void hx_req_error(hx_req *r, int status, const char *reason);
/* A local response (module respond / error): head + whole body. */
int hx_req_respond(hx_req *r, int status, const char *ctype, const void *body, size_t len);

/* ---- the response path, shared by local responses and the proxy ---- */
int hx_resp_begin(hx_req *r); /* response filters, then ops->write_head */
int hx_resp_body(hx_req *r, const char *p, size_t n, int last);
void hx_resp_abort(hx_req *r, const char *why); /* cannot complete */
void hx_req_finish(hx_req *r);                  /* response fully queued */
/* The protocol took queued response bytes off R's queue (it calls this
 * when the queue falls under its low watermark): the proxy or a handler's
 * streamed response may produce more. */
void hx_req_drained(hx_req *r);

/* ---- streamed handler responses (host API 1.3) ---- */
int hx_resp_stream_begin(hx_req *r, int status, const char *ctype, void (*on_drain)(void *arg),
                         void *arg);
int hx_resp_stream_body(hx_req *r, const void *p, size_t n, int last);
void hx_resp_stream_abort(hx_req *r, const char *why);

/* ---- lifetime ---- */

/* Sets up a request in MEM (sizeof(hx_req) + an arena block of ARENA
 * bytes) for connection C (NULL for a subrequest) on worker W. */
void hx_req_init(hx_req *r, const hx_req_ops *ops, hx_worker *w, hx_conn *c, size_t arena);
/* Lets go of everything R holds (timers, handler body reader,
 * subrequests, upstream, generation view, arena blocks) but R's memory. */
void hx_req_fini(hx_req *r);
/* malloc + hx_req_init, and hx_req_fini + free. */
hx_req *hx_req_alloc(const hx_req_ops *ops, hx_worker *w, hx_conn *c);
void hx_req_release(hx_req *r);
/* Once per request: the handler's on_done, filters' on_log, access log. */
void hx_req_log(hx_req *r);
/* Request body bytes from the protocol: body filters, then the proxy or
 * the handler. 0, or -1 when a filter failed. */
int hx_req_body_in(hx_req *r, const char *p, size_t n, int last);
/* 1 when R can take request body bytes now (the protocol reads on). */
int hx_req_takes_body(const hx_req *r);

/* ---- the protocol, through r->ops ---- */
/* The error log's request context (base/log.h) for the bracket; only
 * when the JSON error log uses it (a thread-local test otherwise). */
void hx_req_log_ctx_push(const hx_req *r);
static inline void hx_req_enter(hx_req *r)
{
    r->ops->enter(r);
    if (atomic_load_explicit(&hx_log_json, memory_order_relaxed))
        hx_req_log_ctx_push(r);
}
static inline void hx_req_leave(hx_req *r)
{
    if (hx_log_depth > 0)
        hx_log_ctx_pop();
    r->ops->leave(r); /* may free R */
}
static inline void hx_req_body_wanted(hx_req *r) { r->ops->body_wanted(r); }
static inline size_t hx_req_pending(const hx_req *r) { return r->ops->pending(r); }

/* ---- the proxy, as the request layer sees it ----
 * proxy/ is a higher layer: the runtime registers its entry points at
 * start-up (hx_proxy_register) and nothing in http/ names a proxy function. */
typedef struct hx_proxy_ops {
    void (*start)(hx_req *r);  /* the route has an upstream: pick, connect, send */
    void (*detach)(hx_req *r); /* let go of the upstream attempt (idempotent) */
    int (*body)(hx_req *r, const char *p, size_t n, int last); /* request body up */
    int (*body_writable)(const hx_req *r); /* the upstream takes more body */
    void (*client_drained)(hx_req *r); /* the client took queued response bytes */
    void (*tunnel_close)(hx_req *r);   /* a tunnel's client connection goes */
} hx_proxy_ops;
extern const hx_proxy_ops *hx_proxy;
void hx_proxy_register(const hx_proxy_ops *ops);

/* ---- ABI 1.3: held bodies and request references (request.c) ---- */
int hx_req_body_hold(hx_req *r, uint64_t max);
int64_t hx_req_body_length(const hx_req *r);
uint64_t hx_req_ref(hx_req *r);
hx_req *hx_req_from_ref(uint64_t ref); /* NULL once ended, or off its worker */
void hx_req_ref_drop(hx_req *r);       /* the request ends: its refs die */

/* Per-request module context */
void hx_ctx_init(helios_ctx *c, hx_req *r, const hx_instance *inst);

#endif
