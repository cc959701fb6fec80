/*
 * subreq.c - handler request bodies and subrequests (see subreq.h).
 * Not implemented yet: every entry refuses.
 */
#include "subreq.h"

#include <stdio.h>

int hx_req_body_read(helios_request *r,
                     void (*on_data)(void *arg, helios_buf chunk, int last, int error), void *arg)
{
    (void)r;
    (void)on_data;
    (void)arg;
    return -1;
}

helios_subreq *hx_subreq_new(helios_worker *w, helios_request *parent, const char *upstream,
                             const char *method, const char *target, char *err, size_t errlen)
{
    (void)w;
    (void)parent;
    (void)upstream;
    (void)method;
    (void)target;
    if (err && errlen)
        snprintf(err, errlen, "subrequests are not implemented");
    return NULL;
}

int hx_subreq_header_add(helios_subreq *s, const char *name, const char *value)
{
    (void)s;
    (void)name;
    (void)value;
    return -1;
}

int hx_subreq_send(helios_subreq *s, const void *body, size_t len, const helios_subreq_cb *cb,
                   void *arg)
{
    (void)s;
    (void)body;
    (void)len;
    (void)cb;
    (void)arg;
    return -1;
}

int hx_subreq_status(helios_subreq *s)
{
    (void)s;
    return 0;
}

size_t hx_subreq_header_count(helios_subreq *s)
{
    (void)s;
    return 0;
}

int hx_subreq_header_at(helios_subreq *s, size_t i, helios_buf *name, helios_buf *value)
{
    (void)s;
    (void)i;
    (void)name;
    (void)value;
    return -1;
}

void hx_subreq_cancel(helios_subreq *s) { (void)s; }
