/*
 * tunnel.h - WebSocket tunnels (tunnel.c). After a backend's 101 to a
 * WebSocket upgrade, the client connection and the upstream connection
 * become a byte tunnel that tunnel.c drives: http1.c and upstream.c stop
 * touching either.
 */
#ifndef HX_TUNNEL_H
#define HX_TUNNEL_H

#include "http/request.h"

typedef struct hx_upconn hx_upconn;

/* upstream.c, from up_read_cb: the backend answered 101 to R; REST are the
 * bytes after the head (already tunnel payload). */
void hx_tunnel_start(hx_req *r, hx_upconn *u, const char *rest, size_t n);
/* The client connection goes, so does its tunnel (logged); reached from
 * http1.c through hx_proxy->tunnel_close. */
void hx_tunnel_close(hx_req *r);
/* max_tunnels per backend: 0 taken (or no cap), -1 the backend is full. */
int hx_tunnel_slot_take(hx_req *r, hx_backend *b);
void hx_tunnel_slot_release(hx_req *r);

#endif
