/*
 * subreq.h - handler request bodies and subrequests (host API 1.1):
 * a module's own requests to upstreams through their balancers and pools.
 */
#ifndef HX_SUBREQ_H
#define HX_SUBREQ_H

#include <helios.h>

#include "http/request.h"

int hx_req_body_read(helios_request *r,
                     void (*on_data)(void *arg, helios_buf chunk, int last, int error), void *arg);
int hx_req_body_pause(helios_request *r, int pause);

helios_subreq *hx_subreq_new(helios_worker *w, helios_request *parent, const char *upstream,
                             const char *method, const char *target, char *err, size_t errlen);
int hx_subreq_header_add(helios_subreq *s, const char *name, const char *value);
int hx_subreq_send(helios_subreq *s, const void *body, size_t len, const helios_subreq_cb *cb,
                   void *arg);
int hx_subreq_status(helios_subreq *s);
size_t hx_subreq_header_count(helios_subreq *s);
int hx_subreq_header_at(helios_subreq *s, size_t i, helios_buf *name, helios_buf *value);
void hx_subreq_cancel(helios_subreq *s);
int hx_subreq_pause(helios_subreq *s, int pause);

/* core side (upstream.c): a subrequest's bracket (its ops' enter/leave)
 * and its request head; its body is r->body_mem */
void hx_sub_enter(hx_req *r);
void hx_sub_leave(hx_req *r);
int hx_sub_serialize(hx_req *r, hx_buf *o);
/* The parent request R ends: cancel its remaining subrequests. */
void hx_subs_cancel_all(hx_req *r);

/* request.c, the protocols: handler body reading */
int hx_req_body_wanted_by_handler(const hx_req *r);
void hx_req_body_deliver(hx_req *r, const char *p, size_t n, int last);
/* The request ends: a handler still reading the body hears it failed. */
void hx_req_body_end(hx_req *r);

#endif
