/*
 * metrics_service.c - the service kind: serving the exposition on the
 * instance's own libmicrohttpd listener (its own thread), or, with
 * `listen: admin`, offering mx_render to admin_api as an export.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "metrics_internal.h"

/* ---- service: the own listener ---- */

static enum MHD_Result mx_queue(struct MHD_Connection *conn, unsigned status, const char *type,
                                char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
    if (resp == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result r = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result mx_http(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    mx_config *c = cls;
    if (*con_cls == NULL) { /* first call: head only; answer once the body is in */
        *con_cls = c;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* a body on a scrape: ignored */
        return MHD_YES;
    }
    if (strcmp(url, c->path) != 0) {
        static char nf[] = "not found\n";
        return mx_queue(conn, MHD_HTTP_NOT_FOUND, "text/plain", nf, sizeof(nf) - 1,
                        MHD_RESPMEM_PERSISTENT);
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static char na[] = "method not allowed\n";
        return mx_queue(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", na, sizeof(na) - 1,
                        MHD_RESPMEM_PERSISTENT);
    }
    char *body = NULL;
    size_t len = 0;
    if (mx_render(c, &body, &len) != 0) {
        static char oom[] = "out of memory\n";
        return mx_queue(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", oom, sizeof(oom) - 1,
                        MHD_RESPMEM_PERSISTENT);
    }
    return mx_queue(conn, MHD_HTTP_OK, MX_CONTENT_TYPE, body, len, MHD_RESPMEM_MUST_FREE);
}

/* libmicrohttpd's own messages, into the error log with our prefix. */
static __attribute__((format(printf, 2, 0))) void mx_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    mx_api->log(HELIOS_LOG_WARN, MX_NAME, "libmicrohttpd: %s", msg);
}

int mx_start(void *cfg)
{
    mx_config *c = cfg;
    if (c->admin) {
        c->export.size = sizeof(c->export);
        c->export.ctx = c;
        c->export.render = mx_render;
        if (mx_api->export_set(HELIOS_EXPORT_PROMETHEUS, &c->export) != 0) {
            mx_api->log(HELIOS_LOG_ERROR, MX_NAME, "cannot offer %s to admin_api",
                        HELIOS_EXPORT_PROMETHEUS);
            return -1;
        }
        mx_api->log(HELIOS_LOG_INFO, MX_NAME, "metrics offered to admin_api as %s",
                    HELIOS_EXPORT_PROMETHEUS);
        return 0;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (c->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* the logger first: libmicrohttpd warns when another option precedes it */
    c->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, mx_http, c, MHD_OPTION_EXTERNAL_LOGGER, mx_mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&c->addr, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)64, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (c->daemon == NULL) {
        mx_api->log(HELIOS_LOG_ERROR, MX_NAME, "cannot listen on %s: %s", c->listen,
                    errno ? strerror(errno) : "libmicrohttpd refused to start");
        return -1;
    }
    mx_api->log(HELIOS_LOG_INFO, MX_NAME, "serving %s on %s", c->path, c->listen);
    return 0;
}

void mx_stop(void *cfg)
{
    mx_config *c = cfg;
    if (c->admin) {
        mx_api->export_set(HELIOS_EXPORT_PROMETHEUS, NULL);
        return;
    }
    if (c->daemon != NULL) {
        MHD_stop_daemon(c->daemon); /* joins its thread */
        c->daemon = NULL;
    }
}
