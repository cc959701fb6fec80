/*
 * upstream.h - the proxy: backend choice, keep-alive pools, and streaming
 * a request to a backend and its response back.
 */
#ifndef HX_UPSTREAM_H
#define HX_UPSTREAM_H

#include "http/conn.h"

/* The proxy's entry points for the request layer (hx_proxy_register). */
extern const hx_proxy_ops hx_upstream_proxy;

/* 1 when B may take a new request: healthy, not draining, breaker not open,
 * and a half-open breaker with a free trial slot. */
int hx_backend_usable(const hx_backend *b);
/* 1 when backend I is in the tried set T (a request: api->tried_has). */
int hx_tried_has(const helios_tried *t, size_t i);

/* Starts proxying R to its route's upstream (phase HX_PH_PROXY). Errors end
 * in a response (502/503/504) through hx_req_error. */
void hx_proxy_start(hx_req *r);
/* Request body bytes from the client (already through body filters). */
int hx_proxy_body(hx_req *r, const char *p, size_t n, int last);
/* 1 when the upstream side can take more request body now. */
int hx_proxy_body_writable(const hx_req *r);
/* The client drained its output: resume reading the upstream. */
void hx_proxy_client_drained(hx_req *r);
/* The request is going away (client gone, timeout): drop the upstream. */
void hx_proxy_detach(hx_req *r);

/* Worker thread: per-worker pools of one generation view are closed when the
 * view is released. */
void hx_pools_close_gen(hx_worker *w, hx_gen *g);
/* Pools per backend: an array of per-worker pool heads allocated with the
 * backend (config.c calls this). */
int hx_backend_pools_init(hx_backend *b, unsigned nworkers);
/* Worker thread: closes W's idle connections to B (B was removed). */
void hx_pool_drain_backend(hx_worker *w, hx_backend *b);
void hx_backend_pools_free(hx_backend *b);

/* For tunnel.c: lends U's transport, watchers and output buffer. */
void hx_up_tunnel_io(hx_upconn *u, int *fd, SSL **ssl, ev_io **rio, ev_io **wio, hx_buf **out);

/* For the HTTP/2 upstream side (h2up.c). */
void hx_proxy_report(hx_req *r, hx_backend *b, int outcome, int status);
void hx_proxy_attempt_end(hx_req *r, hx_backend *b);
/* The attempt's first response byte arrived (ABI 1.3 attempt timing);
 * call only while r->att_open. */
void hx_proxy_first_byte(hx_req *r);
void hx_proxy_attempt_failed(hx_req *r, hx_backend *b, int outcome, const char *why);
struct hx_h2up_conn **hx_pool_h2(hx_worker *w, hx_backend *b);
int hx_proxy_forwarded(hx_req *r, const char **xff, const char **xfp, const char **xfh,
                       const char **fwd);

#endif
