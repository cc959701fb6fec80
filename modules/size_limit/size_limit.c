/*
 * size_limit.c - a filter that caps request and response body sizes.
 *
 * Request bodies: a Content-Length over the limit is refused with 413 from
 * on_request_headers, before a byte goes upstream; a body without a length
 * (chunked, HTTP/2) is counted as it streams and refused with 413 the
 * moment it crosses the limit (the core then drops the upstream exchange
 * and closes the client connection, since the rest of the body is unread).
 *
 * Response bodies: counted as they stream; crossing the limit fails the
 * body filter, and the core aborts the response and closes the connection.
 * A response head cannot be replaced from a filter, so the client sees a
 * truncated response, not an error status (README: "Behaviour").
 */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <helios.h>

#define SL_NAME "size_limit"

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const sl_keys[] = {"max_request_body", "max_response_body", NULL};

typedef struct sl_config {
    uint64_t max_request;  /* bytes; 0 = no limit */
    uint64_t max_response; /* bytes; 0 = no limit */
} sl_config;

static int sl_config_new(const helios_conf *conf, void **cfg)
{
    int kind = api->conf_kind(conf);
    if (kind == HELIOS_CONF_NULL) {
        conf = NULL;
    } else if (kind != HELIOS_CONF_MAP) {
        api->conf_error(conf, "expected a map with max_request_body and/or max_response_body");
        return -1;
    }
    sl_config tmp = {0};
    int bad = api->conf_check_keys(conf, sl_keys) > 0;
    if (api->conf_size(conf, "max_request_body", 0, &tmp.max_request) < 0)
        bad = 1;
    if (api->conf_size(conf, "max_response_body", 0, &tmp.max_response) < 0)
        bad = 1;
    if (bad)
        return -1;
    if (tmp.max_request == 0 && tmp.max_response == 0)
        api->log(HELIOS_LOG_WARN, SL_NAME,
                 "neither max_request_body nor max_response_body is set: no limit applies");
    sl_config *c = malloc(sizeof(*c));
    if (c == NULL) {
        api->log(HELIOS_LOG_ERROR, SL_NAME, "out of memory");
        return -1;
    }
    *c = tmp;
    *cfg = c;
    return 0;
}

static void sl_config_free(void *cfg)
{
    free(cfg);
}

/* ---- hooks ---- */

typedef struct sl_rstate {
    uint64_t request_bytes;
    uint64_t response_bytes;
} sl_rstate;

/* The request's counters, made on first use (response hooks may run for a
 * request whose request hooks never reached this filter). */
static sl_rstate *sl_state(helios_ctx *c)
{
    if (*c->rstate == NULL) {
        sl_rstate *st = api->req_alloc(c->req, sizeof(*st));
        if (st == NULL)
            return NULL;
        memset(st, 0, sizeof(*st));
        *c->rstate = st;
    }
    return *c->rstate;
}

/* Decimal Content-Length, or -1 when absent or not a plain number (the core
 * has already refused malformed framing; then we count while streaming). */
static int64_t sl_content_length(helios_buf v)
{
    if (v.ptr == NULL || v.len == 0 || v.len > 19)
        return -1;
    int64_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        if (v.ptr[i] < '0' || v.ptr[i] > '9')
            return -1;
        n = n * 10 + (v.ptr[i] - '0');
    }
    return n;
}

static int sl_refuse(helios_ctx *c, uint64_t limit)
{
    char body[96];
    int n = snprintf(body, sizeof(body), "413 Content Too Large: the limit is %llu bytes\n",
                     (unsigned long long)limit);
    if (api->respond(c->req, 413, "text/plain", body, (size_t)n) == 0)
        return HELIOS_RESPONDED;
    /* the upstream already answered (e.g. an echoing backend): the head is
     * out, so the only way to stop the body is to cut the exchange */
    api->log(HELIOS_LOG_WARN, SL_NAME,
             "request body over max_request_body (%llu bytes) after the response started: "
             "connection cut",
             (unsigned long long)limit);
    return HELIOS_ERROR;
}

static int sl_on_request_headers(helios_ctx *c)
{
    const sl_config *cfg = c->cfg;
    if (cfg->max_request == 0)
        return HELIOS_CONTINUE;
    int64_t cl = sl_content_length(api->req_header(c->req, "content-length"));
    if (cl >= 0 && (uint64_t)cl > cfg->max_request)
        return sl_refuse(c, cfg->max_request);
    return HELIOS_CONTINUE;
}

static int sl_on_request_body(helios_ctx *c, helios_buf *chunk, int last)
{
    (void)last;
    const sl_config *cfg = c->cfg;
    if (cfg->max_request == 0 || chunk->len == 0)
        return HELIOS_CONTINUE;
    sl_rstate *st = sl_state(c);
    if (st == NULL)
        return HELIOS_ERROR;
    st->request_bytes += chunk->len;
    if (st->request_bytes > cfg->max_request)
        return sl_refuse(c, cfg->max_request);
    return HELIOS_CONTINUE;
}

static int sl_on_response_body(helios_ctx *c, helios_buf *chunk, int last)
{
    (void)last;
    const sl_config *cfg = c->cfg;
    if (cfg->max_response == 0 || chunk->len == 0)
        return HELIOS_CONTINUE;
    sl_rstate *st = sl_state(c);
    if (st == NULL)
        return HELIOS_ERROR;
    st->response_bytes += chunk->len;
    if (st->response_bytes > cfg->max_response) {
        api->log(HELIOS_LOG_WARN, SL_NAME,
                 "response body over max_response_body (%llu bytes): response cut off",
                 (unsigned long long)cfg->max_response);
        return HELIOS_ERROR;
    }
    return HELIOS_CONTINUE;
}

/* ---- module descriptor ---- */

static const helios_filter_hooks sl_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = sl_on_request_headers, /* 413 early from Content-Length */
    .on_request_body = sl_on_request_body,       /* 413 while a body streams */
    .on_response_headers = NULL,                 /* a head cannot be refused here */
    .on_response_body = sl_on_response_body,     /* cut off an oversized response */
    .on_log = NULL,                              /* counters live in the arena */
};

static const helios_module sl_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(SL_NAME, "0.1.0"),
    .config_new = sl_config_new,   /* two sizes */
    .config_free = sl_config_free, /* free them */
    .worker_init = NULL,           /* no per-worker state */
    .worker_fini = NULL,
    .filter = &sl_filter_hooks, /* in `modules:` or a route's `filters:` */
    .handler = NULL,
    .balancer = NULL,
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &sl_module;
}
