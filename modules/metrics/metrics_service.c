/*
 * metrics_service.c - the service kind: serving the exposition on the
 * instance's own libmicrohttpd listener (its own thread), or, with
 * `listen: admin`, offering mx_render to admin_api as an export.
 *
 * The listening socket outlives a reload when the address stays (D76):
 * stop() stops accepting (MHD_quiesce_daemon) and parks the socket for the
 * new generation's instance, which claimed the address in config_new;
 * start() serves on it (MHD_OPTION_LISTEN_SOCKET). Connections arriving in
 * between wait in the socket's backlog. The scrapes the old daemon already
 * accepted finish (up to MX_STOP_WAIT_MS) before it stops.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <microhttpd.h>
#include <helios/util/listen_keep.h>

#include "metrics_internal.h"

#define MX_STOP_WAIT_MS 2000

/* Module-level: the .so stays loaded across reloads. */
static helios_listen_keep mx_keep = HELIOS_LISTEN_KEEP_INIT;

/*
 * `listen: admin`: one export for the module, whose render runs on the
 * configuration in mx_admin_cur under a read lock. A reload's old stop()
 * leaves it in place when a new `listen: admin` configuration exists, and
 * the new start() points it to the new one, so a scrape through admin_api
 * is never told "no metrics module" in between (admin_api may start
 * first). config_free takes the write lock only for the configuration in
 * use (never one of a failed build, freed under the core's control lock,
 * which a render takes inside ctl_backends_walk).
 */
static pthread_rwlock_t mx_admin_lock = PTHREAD_RWLOCK_INITIALIZER;
static _Atomic(mx_config *) mx_admin_cur;
static atomic_int mx_admin_configs; /* `listen: admin` configurations alive */

static int mx_admin_render(void *ctx, char **out, size_t *len)
{
    (void)ctx;
    pthread_rwlock_rdlock(&mx_admin_lock);
    mx_config *c = atomic_load(&mx_admin_cur);
    int rc = c != NULL ? mx_render(c, out, len) : -1;
    pthread_rwlock_unlock(&mx_admin_lock);
    return rc;
}

static helios_prometheus_export mx_admin_export = {
    .size = sizeof(helios_prometheus_export),
    .ctx = NULL,
    .render = mx_admin_render,
};

/* Sets the configuration the export renders, replacing OLD (NULL: any). */
static void mx_admin_use(mx_config *old, mx_config *c)
{
    pthread_rwlock_wrlock(&mx_admin_lock);
    if (old == NULL || atomic_load(&mx_admin_cur) == old)
        atomic_store(&mx_admin_cur, c);
    pthread_rwlock_unlock(&mx_admin_lock);
}

void mx_listen_claim(mx_config *c)
{
    if (c->admin) {
        atomic_fetch_add(&mx_admin_configs, 1);
        return;
    }
    if (helios_listen_claim(&mx_keep, c, &c->addr) != 0)
        mx_api->log(HELIOS_LOG_WARN, MX_NAME,
                    "too many configurations at once: %s will be bound again at the next reload",
                    c->listen);
}

void mx_listen_unclaim(mx_config *c)
{
    if (!c->admin) {
        helios_listen_unclaim(&mx_keep, c);
        return;
    }
    atomic_fetch_sub(&mx_admin_configs, 1);
    if (atomic_load(&mx_admin_cur) == c) { /* its successor never started */
        mx_api->export_set(HELIOS_EXPORT_PROMETHEUS, NULL);
        mx_admin_use(c, NULL);
    }
}

/* ---- service: the own listener ---- */

static enum MHD_Result mx_queue(struct MHD_Connection *conn, unsigned status, const char *type,
                                char *body, size_t len, enum MHD_ResponseMemoryMode mode,
                                int close_after)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
    if (resp == NULL) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (close_after) /* stopping: the next request goes to the new daemon */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
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
        atomic_fetch_add(&c->active, 1); /* until mx_completed */
        const union MHD_ConnectionInfo *sc =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        helios_listen_conn_used(&c->fresh, sc ? sc->socket_context : NULL);
        return MHD_YES;
    }
    int close_after = atomic_load(&c->stopping);
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* a body on a scrape: ignored */
        return MHD_YES;
    }
    if (strcmp(url, c->path) != 0) {
        static char nf[] = "not found\n";
        return mx_queue(conn, MHD_HTTP_NOT_FOUND, "text/plain", nf, sizeof(nf) - 1,
                        MHD_RESPMEM_PERSISTENT, close_after);
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static char na[] = "method not allowed\n";
        return mx_queue(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", na, sizeof(na) - 1,
                        MHD_RESPMEM_PERSISTENT, close_after);
    }
    char *body = NULL;
    size_t len = 0;
    if (mx_render(c, &body, &len) != 0) {
        static char oom[] = "out of memory\n";
        return mx_queue(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", oom, sizeof(oom) - 1,
                        MHD_RESPMEM_PERSISTENT, close_after);
    }
    return mx_queue(conn, MHD_HTTP_OK, MX_CONTENT_TYPE, body, len, MHD_RESPMEM_MUST_FREE, close_after);
}

static void mx_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    (void)toe;
    mx_config *c = cls;
    if (*con_cls != NULL)
        atomic_fetch_sub(&c->active, 1);
    *con_cls = NULL;
}

static void mx_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    (void)conn;
    mx_config *c = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED)
        helios_listen_conn_open(&c->fresh, socket_context);
    else
        helios_listen_conn_closed(&c->fresh, socket_context);
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
        mx_admin_use(NULL, c);
        if (mx_api->export_set(HELIOS_EXPORT_PROMETHEUS, &mx_admin_export) != 0) {
            mx_admin_use(c, NULL);
            mx_api->log(HELIOS_LOG_ERROR, MX_NAME, "cannot offer %s to admin_api",
                        HELIOS_EXPORT_PROMETHEUS);
            return -1;
        }
        mx_api->log(HELIOS_LOG_INFO, MX_NAME, "metrics offered to admin_api as %s",
                    HELIOS_EXPORT_PROMETHEUS);
        return 0;
    }
    /* ITC: MHD_quiesce_daemon needs it with an internal thread */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (c->addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    atomic_store(&c->stopping, 0);
    atomic_store(&c->active, 0);
    atomic_store(&c->fresh, 0);
    int kept = helios_listen_take(&mx_keep, &c->addr);
    errno = 0;
    /* the logger first: libmicrohttpd warns when another option precedes it;
     * a kept socket replaces the address (nothing to bind) */
    if (kept >= 0)
        c->daemon = MHD_start_daemon(
            flags, 0, NULL, NULL, mx_http, c, MHD_OPTION_EXTERNAL_LOGGER, mx_mhd_log, NULL,
            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)kept, MHD_OPTION_NOTIFY_COMPLETED,
            mx_completed, c, MHD_OPTION_NOTIFY_CONNECTION, mx_connection, c,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    else
        c->daemon = MHD_start_daemon(
            flags, 0, NULL, NULL, mx_http, c, MHD_OPTION_EXTERNAL_LOGGER, mx_mhd_log, NULL,
            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&c->addr, MHD_OPTION_NOTIFY_COMPLETED,
            mx_completed, c, MHD_OPTION_NOTIFY_CONNECTION, mx_connection, c,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (c->daemon == NULL) {
        int e = errno;
        if (kept >= 0)
            close(kept); /* refused, not left hanging in a backlog nobody reads */
        mx_api->log(HELIOS_LOG_ERROR, MX_NAME, "cannot listen on %s: %s", c->listen,
                    e ? strerror(e) : "libmicrohttpd refused to start");
        return -1;
    }
    mx_api->log(HELIOS_LOG_INFO, MX_NAME, "serving %s on %s%s", c->path, c->listen,
                kept >= 0 ? " (listening socket kept across the reload)" : "");
    return 0;
}

void mx_stop(void *cfg)
{
    mx_config *c = cfg;
    if (c->admin) {
        /* another `listen: admin` configuration (the next generation's,
         * built before this stop) takes the export over in its start();
         * until then this one, alive until config_free, renders */
        if (atomic_load(&mx_admin_configs) > 1)
            return;
        mx_api->export_set(HELIOS_EXPORT_PROMETHEUS, NULL);
        mx_admin_use(c, NULL);
        return;
    }
    if (c->daemon == NULL)
        return;
    atomic_store(&c->stopping, 1);
    MHD_socket fd = MHD_quiesce_daemon(c->daemon);
    if (fd != MHD_INVALID_SOCKET)
        helios_listen_park(&mx_keep, c, &c->addr, fd); /* or closed: nobody wants it */
    /* let the scrapes already accepted, or whose connection was, get their
     * answers */
    long left = helios_listen_drain(&c->active, &c->fresh, MX_STOP_WAIT_MS);
    if (left > 0)
        mx_api->log(HELIOS_LOG_WARN, MX_NAME,
                    "stopping with %ld scrape(s) or new connection(s) still open after %d ms",
                    left, MX_STOP_WAIT_MS);
    MHD_stop_daemon(c->daemon); /* joins its thread */
    c->daemon = NULL;
}
