/*
 * h2up.h - HTTP/2 to upstreams (`protocol: h2`): h2c, or h2 over TLS with
 * the upstream's `tls:`. Many requests share few connections per worker
 * and backend; trailers pass through (enough for gRPC).
 */
#ifndef HX_H2UP_H
#define HX_H2UP_H

#include "http/conn.h"

typedef struct hx_h2up_conn hx_h2up_conn;
typedef struct hx_h2up_stream hx_h2up_stream;

/* R picked backend B (in-flight already counted): open a stream on a
 * connection with room, or a new connection. */
void hx_h2up_start(hx_req *r, hx_backend *b);
int hx_h2up_body(hx_req *r, const char *p, size_t n, int last);
int hx_h2up_body_writable(const hx_req *r);
/* The client side drained: acknowledge held response bytes upstream. */
void hx_h2up_drained(hx_req *r);
/* The request goes away: reset its stream. */
void hx_h2up_detach(hx_req *r);
/* Worker thread: close W's connections to B (removed / generation end). */
void hx_h2up_drain(hx_worker *w, hx_backend *b);

#endif
