/*
 * contracts.c - a test-only filter and balancer for the ABI 1.3 module
 * contracts: body facts, late callbacks through request references, and
 * the per-attempt balancer hook and slot. Every finding is a WARN line
 * starting "contracts:" so the tests read it from the error log.
 *
 * Filter (on_request_headers), by path:
 *   any          adds X-Body-Length and X-Has-Body (req_body_length,
 *                req_has_body) to the request, for /headers to echo
 *   /late/arm    takes a reference, lets the request finish, and 150 ms
 *                later uses it from a timer and from a post: both must
 *                find the request gone ("stale ref refused"), even when
 *                the connection's next request lives in the same memory
 *   /late/wait   PAUSEs; 400 ms later resumes itself through its reference
 *                ("own resume ok", or "ended request refused" when the
 *                client left first)
 *   ?failresp=1  on_response_headers fails (an attempt let go unreported)
 *   ?hold=1      req_body_hold(max=?max, default 0); on the held body,
 *                &replace=1 replaces it with "replaced:<old length>"
 * Balancer: the first usable untried backend; logs the body facts it
 * sees in pick (subrequests included), puts a marker in the per-attempt
 * slot, and on_attempt_end checks the marker and logs the attempt.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <helios.h>

static const helios_host_api *api;

#define LOGW(...) api->log(HELIOS_LOG_WARN, "contracts", __VA_ARGS__)

static int path_is(helios_request *r, const char *p)
{
    helios_buf b = api->req_path(r);
    size_t n = strlen(p);
    return b.len >= n && memcmp(b.ptr, p, n) == 0;
}

/* ---- late callbacks ---- */

typedef struct late {
    helios_req_ref ref;
    helios_worker *w;
    int own; /* 1: the request's own resume (/late/wait) */
} late;

static void late_post_cb(void *arg)
{
    late *l = arg;
    if (api->req_from_ref(l->ref) == NULL && api->resume_ref(l->ref, HELIOS_CONTINUE) != 0)
        LOGW("post: stale ref refused");
    else
        LOGW("BUG: post: a stale reference reached a request");
    free(l);
}

static void late_timer_cb(void *arg)
{
    late *l = arg;
    if (l->own) {
        if (api->resume_ref(l->ref, HELIOS_CONTINUE) == 0)
            LOGW("own resume ok");
        else
            LOGW("ended request refused");
        free(l);
        return;
    }
    if (api->req_from_ref(l->ref) == NULL && api->resume_ref(l->ref, HELIOS_CONTINUE) != 0)
        LOGW("timer: stale ref refused");
    else
        LOGW("BUG: timer: a stale reference reached a request");
    /* the same reference once more, from a post: still nothing */
    if (api->post(l->w, late_post_cb, l) != 0)
        free(l);
}

static int late_arm(helios_ctx *c, int own, uint64_t ms)
{
    late *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return HELIOS_ERROR;
    l->ref = api->req_ref(c->req);
    l->w = c->worker;
    l->own = own;
    if (l->ref == 0 || l->ref != api->req_ref(c->req) || api->req_from_ref(l->ref) != c->req) {
        LOGW("BUG: req_ref is not stable");
        free(l);
        return HELIOS_ERROR;
    }
    if (api->timer_add(c->worker, ms, late_timer_cb, l) == NULL) {
        free(l);
        return HELIOS_ERROR;
    }
    return own ? HELIOS_PAUSE : HELIOS_CONTINUE;
}

/* ---- filter ---- */

static uint64_t query_u64(helios_request *r, const char *key)
{
    helios_buf q = api->req_query(r);
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl < q.len; i++)
        if ((i == 0 || q.ptr[i - 1] == '&') && memcmp(q.ptr + i, key, kl) == 0 &&
            q.ptr[i + kl] == '=')
            return strtoull(q.ptr + i + kl + 1, NULL, 10);
    return 0;
}

static int ct_request_headers(helios_ctx *c)
{
    helios_request *r = c->req;
    char v[32];
    snprintf(v, sizeof(v), "%" PRId64, api->req_body_length(r));
    api->req_header_set(r, "X-Body-Length", v);
    api->req_header_set(r, "X-Has-Body", api->req_has_body(r) ? "1" : "0");
    if (path_is(r, "/late/arm"))
        return late_arm(c, 0, 150);
    if (path_is(r, "/late/wait"))
        return late_arm(c, 1, 400);
    if (query_u64(r, "hold")) {
        if (api->req_body_hold(r, query_u64(r, "max")) != 0)
            return HELIOS_ERROR;
        *c->rstate = api->req_alloc(r, 1); /* marks a held request */
    }
    return HELIOS_CONTINUE;
}

static int ct_request_body(helios_ctx *c, helios_buf *chunk, int last)
{
    if (*c->rstate == NULL)
        return HELIOS_CONTINUE;
    if (!last) {
        LOGW("BUG: a held body came in pieces");
        return HELIOS_ERROR;
    }
    LOGW("held body of %zu bytes", chunk->len);
    if (query_u64(c->req, "replace")) {
        char *o = api->req_alloc(c->req, 40);
        if (o == NULL)
            return HELIOS_ERROR;
        int n = snprintf(o, 40, "replaced:%zu", chunk->len);
        *chunk = (helios_buf){o, (size_t)n};
    }
    return HELIOS_CONTINUE;
}

/* ?failresp=1: the response filter fails while the upstream attempt is
 * still open (its body not read): the core replaces the response and lets
 * the attempt go, which the balancer hears as CANCELLED */
static int ct_response_headers(helios_ctx *c)
{
    return query_u64(c->req, "failresp") ? HELIOS_ERROR : HELIOS_CONTINUE;
}

static const helios_filter_hooks ct_filter = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = ct_request_headers,
    .on_request_body = ct_request_body,
    .on_response_headers = ct_response_headers,
};

/* ---- balancer ---- */

static int ct_pick(helios_ctx *c, const helios_backends *bs, const helios_tried *tried)
{
    if (c->rstate == NULL) {
        LOGW("BUG: no per-attempt slot in pick");
        return -1;
    }
    if (*c->rstate != NULL)
        LOGW("BUG: the per-attempt slot did not start NULL");
    LOGW("pick: body_length=%" PRId64 " has_body=%d", api->req_body_length(c->req),
         api->req_has_body(c->req));
    for (size_t i = 0; i < api->backends_count(bs); i++)
        if (api->backend_usable(api->backends_at(bs, i)) && !api->tried_has(tried, i)) {
            *c->rstate = (void *)(uintptr_t)(0xa770 + i);
            return (int)i;
        }
    return -1;
}

static void ct_attempt_end(helios_ctx *c, const helios_attempt *a)
{
    int slot_ok = *c->rstate == (void *)(uintptr_t)(0xa770 + a->index);
    LOGW("attempt %u: backend=%s outcome=%d status=%d first_byte_us=%" PRId64
         " last_byte_us=%" PRId64 " slot=%s",
         a->attempt, api->backend_name(a->backend), a->outcome, a->status, a->first_byte_us,
         a->last_byte_us, slot_ok ? "ok" : "BUG");
}

static const helios_balancer_hooks ct_balancer = {
    .size = sizeof(helios_balancer_hooks),
    .pick = ct_pick,
    .on_attempt_end = ct_attempt_end,
};

static const helios_module ct_module = {
    HELIOS_MODULE_HEADER("contracts", "1.0.0"),
    .filter = &ct_filter,
    .balancer = &ct_balancer,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &ct_module;
}
