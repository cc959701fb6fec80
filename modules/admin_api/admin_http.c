/*
 * admin_http.c - the admin API's HTTP server on libmicrohttpd.
 *
 * One thread per connection (MHD_USE_THREAD_PER_CONNECTION): control calls
 * may block (a reload waits for the main thread), and an operator's slow
 * request must not hold up the others. Each request goes:
 *
 *   IP lists (403) -> route (404/405 after auth) -> bearer token (401) ->
 *   scope (403) -> Content-Length cap (413) -> body, capped as it streams
 *   (413) -> JSON parse (400) -> the endpoint -> audit line for changes.
 *
 * stop() is graceful: the daemon stops accepting first (quiesce), the
 * requests already being answered get up to AA_STOP_WAIT_MS to finish and
 * have their responses sent (counted with NOTIFY_COMPLETED), and only then
 * is the daemon stopped. That is what lets POST /v1/reload answer its
 * client: heliosd stops this instance right after ctl_reload returns.
 *
 * The listening socket outlives a reload when the address stays (D76): the
 * quiesced socket is parked in a module-level table (the .so stays loaded)
 * for the new generation's instance, which claimed the address in
 * config_new and serves on it with MHD_OPTION_LISTEN_SOCKET. Connections
 * arriving in between wait in the backlog; none is refused. Answers given
 * once this instance is stopping say Connection: close, so that a client's
 * next request opens a connection the new instance accepts.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include <helios/util/listen_keep.h>

#include "admin_api.h"

#define AA_CONN_LIMIT 64
#define AA_CONN_TIMEOUT_S 30
#define AA_AUDIT_BODY_MAX 256

/* Per-request state, from the first call of the access handler until
 * NOTIFY_COMPLETED. */
typedef struct aa_state {
    aa_req q;
    aa_match m;
    char *body;
    size_t len;
    int too_big;
    int answered; /* a response was queued */
} aa_state;

/* ---- replies ---- */

static int reply_error(aa_req *q, int status, const char *msg)
{
    json_decref(q->reply);
    q->reply = json_pack("{s:{s:i,s:s}}", "error", "status", status, "message", msg);
    if (q->reply == NULL) {
        /* a message quoting the client (a path, a field) that is not
         * UTF-8: JSON cannot carry it, so its non-ASCII bytes become '?' */
        char safe[1024];
        size_t i = 0;
        for (; msg[i] && i < sizeof(safe) - 1; i++)
            safe[i] = (unsigned char)msg[i] < 0x80 ? msg[i] : '?';
        safe[i] = '\0';
        q->reply = json_pack("{s:{s:i,s:s}}", "error", "status", status, "message", safe);
    }
    q->status = status;
    return status;
}

int aa_fail(aa_req *q, int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return reply_error(q, status, msg);
}

int aa_ok(aa_req *q, int status, json_t *obj)
{
    json_decref(q->reply);
    q->reply = obj;
    q->status = obj ? status : reply_error(q, 500, "out of memory");
    return q->status;
}

static void add_header(struct MHD_Response *r, const char *name, const char *value)
{
    if (MHD_add_response_header(r, name, value) != MHD_YES)
        aa_api->log(HELIOS_LOG_WARN, AA_NAME, "cannot add response header %s", name);
}

static enum MHD_Result send_reply(aa_state *s, const char *www_auth)
{
    aa_req *q = &s->q;
    char *buf;
    size_t len;
    const char *ctype;
    if (q->text) {
        buf = q->text;
        len = q->textlen;
        q->text = NULL;
        ctype = q->content_type ? q->content_type : "text/plain; charset=utf-8";
    } else {
        if (q->reply == NULL)
            reply_error(q, 500, "the endpoint produced no reply");
        buf = json_dumps(q->reply, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (buf == NULL)
            return MHD_NO;
        len = strlen(buf);
        char *nl = realloc(buf, len + 2);
        if (nl) {
            buf = nl;
            buf[len++] = '\n';
            buf[len] = '\0';
        }
        ctype = "application/json";
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(buf);
        return MHD_NO;
    }
    add_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    add_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (www_auth)
        add_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, www_auth);
    if (q->allow)
        add_header(r, MHD_HTTP_HEADER_ALLOW, q->allow);
    if (atomic_load(&q->cfg->stopping))
        add_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(s->q.conn, (unsigned)q->status, r);
    MHD_destroy_response(r);
    s->answered = 1;
    return rc;
}

/* ---- audit ---- */

static int is_read_method(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0;
}

static void body_summary(const aa_state *s, char *out, size_t size)
{
    if (s->len == 0 || s->body == NULL) {
        snprintf(out, size, "-");
        return;
    }
    json_t *j = s->q.body;
    char *txt = j ? json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER) : NULL;
    if (txt == NULL) {
        snprintf(out, size, "<%zu bytes, not JSON>", s->len);
        return;
    }
    if (strlen(txt) > AA_AUDIT_BODY_MAX)
        snprintf(out, size, "%.*s...", AA_AUDIT_BODY_MAX, txt);
    else
        snprintf(out, size, "%s", txt);
    free(txt);
}

/*
 * Rotation: a module never sees SIGUSR1, so before each line (changes are
 * rare: one stat() is nothing) the path is compared with the open file;
 * when it names another file or none (logrotate renamed it, then sent
 * SIGUSR1), the file is reopened, and the line lands where the core's own
 * logs went after the signal.
 */
static void audit_write(aa_config *c, const char *line, size_t len)
{
    pthread_mutex_lock(&c->audit_lock);
    struct stat ps, fs;
    if (c->audit_fd >= 0 &&
        (stat(c->audit_path, &ps) != 0 || fstat(c->audit_fd, &fs) != 0 ||
         ps.st_dev != fs.st_dev || ps.st_ino != fs.st_ino)) {
        int fd = open(c->audit_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd >= 0) {
            close(c->audit_fd);
            c->audit_fd = fd;
            aa_api->log(HELIOS_LOG_INFO, AA_NAME, "audit_log %s reopened", c->audit_path);
        } else {
            aa_api->log(HELIOS_LOG_WARN, AA_NAME, "cannot reopen audit_log %s: %s",
                        c->audit_path, strerror(errno));
        }
    }
    if (write(c->audit_fd, line, len) != (ssize_t)len)
        aa_api->log(HELIOS_LOG_WARN, AA_NAME, "audit_log write failed: %s", strerror(errno));
    pthread_mutex_unlock(&c->audit_lock);
}

/* One line per request that may change something (every method but GET
 * and HEAD), whatever its outcome. */
static void audit(aa_state *s)
{
    aa_req *q = &s->q;
    if (is_read_method(q->method))
        return;
    char body[AA_AUDIT_BODY_MAX + 32], line[2048];
    body_summary(s, body, sizeof(body));
    char path[512];
    snprintf(path, sizeof(path), "%s", q->path);
    for (char *p = path; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    snprintf(line, sizeof(line), "audit: sub=\"%s\" ip=%s %s %s body=%s status=%d",
             q->who.sub[0] ? q->who.sub : "-", q->peer, q->method, path, body, q->status);
    aa_api->log(HELIOS_LOG_INFO, AA_NAME, "%s", line);
    if (q->cfg->audit_fd >= 0) {
        char ts[64], out[2200];
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
        int n = snprintf(out, sizeof(out), "%s %s\n", ts, line);
        if (n > 0)
            audit_write(q->cfg, out, (size_t)n < sizeof(out) ? (size_t)n : sizeof(out) - 1);
    }
}

static enum MHD_Result finish(aa_state *s, const char *www_auth)
{
    audit(s);
    return send_reply(s, www_auth);
}

/* ---- intake ---- */

static void peer_text(const struct sockaddr *sa, char *out, size_t size)
{
    snprintf(out, size, "?");
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)size);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)size);
}

/* The checks that need only the head (admin_api.h). */
int aa_req_check(aa_req *q, aa_match *m, const struct sockaddr *sa, const char *authz,
                 const char *content_length, char *www, size_t wwwlen)
{
    aa_config *c = q->cfg;
    peer_text(sa, q->peer, sizeof(q->peer));
    if (!aa_acl_permits(c, sa))
        return reply_error(q, 403, "your address is not allowed to use the admin API"), 1;
    int known = aa_route(q->method, q->path, m) == 0;
    int need_auth = !(known && (m->is_public || (m->is_metrics && !c->metrics_auth)));
    if (need_auth) {
        char why[256];
        if (aa_auth_check(&c->auth, authz, &q->who, why, sizeof(why)) != 0) {
            if (why[0] == '\0') {
                snprintf(www, wwwlen, "Bearer realm=\"%s\"", AA_REALM);
                reply_error(q, 401, "authentication required: send Authorization: Bearer <JWT>");
            } else {
                snprintf(www, wwwlen,
                         "Bearer realm=\"%s\", error=\"invalid_token\", error_description=\"%s\"",
                         AA_REALM, why);
                reply_error(q, 401, why);
            }
            return 1;
        }
    } else {
        snprintf(q->who.sub, sizeof(q->who.sub), "-");
    }
    if (!known)
        return aa_fail(q, 404, "no such endpoint: %s", q->path), 1;
    if (m->fn == NULL) {
        q->allow = m->allow;
        return aa_fail(q, 405, "%s is not allowed on %s (allowed: %s)", q->method, q->path,
                       m->allow),
               1;
    }
    if (need_auth) {
        unsigned want = m->write ? AA_SCOPE_WRITE : AA_SCOPE_READ;
        if ((q->who.scopes & want) == 0) {
            snprintf(www, wwwlen, "Bearer realm=\"%s\", error=\"insufficient_scope\", scope=\"%s\"",
                     AA_REALM, m->write ? "write" : "read");
            return aa_fail(q, 403, "the token lacks the '%s' scope", m->write ? "write" : "read"),
                   1;
        }
    }
    if (content_length != NULL && strtoull(content_length, NULL, 10) > c->max_body)
        return aa_fail(q, 413, "the body is larger than max_body (%llu bytes)",
                       (unsigned long long)c->max_body),
               1;
    return 0;
}

/* The MHD side of aa_req_check: the peer and headers from the connection. */
static int check_head(aa_state *s, char *www, size_t wwwlen)
{
    struct MHD_Connection *conn = s->q.conn;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const char *authz =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return aa_req_check(&s->q, &s->m, ci ? ci->client_addr : NULL, authz, cl, www, wwwlen);
}

static void take_chunk(aa_state *s, const char *data, size_t n)
{
    if (s->too_big)
        return;
    if (s->len + n > s->q.cfg->max_body) {
        s->too_big = 1;
        free(s->body);
        s->body = NULL;
        return;
    }
    char *nb = realloc(s->body, s->len + n + 1);
    if (nb == NULL) {
        s->too_big = 1; /* answered as 413: the cap is what we can hold */
        free(s->body);
        s->body = NULL;
        return;
    }
    memcpy(nb + s->len, data, n);
    s->len += n;
    nb[s->len] = '\0';
    s->body = nb;
}

/* Parses the body and runs the endpoint (admin_api.h). */
void aa_req_run(aa_req *q, aa_match *m, const char *body, size_t len)
{
    if (len > 0) {
        json_error_t jerr;
        q->body = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
        if (q->body == NULL) {
            aa_fail(q, 400, "the body is not valid JSON: %s (line %d, column %d)", jerr.text,
                    jerr.line, jerr.column);
            return;
        }
    }
    m->fn(q, m->a1, m->a2);
}

static enum MHD_Result run_endpoint(aa_state *s)
{
    aa_req_run(&s->q, &s->m, s->body, s->len);
    return finish(s, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    aa_config *c = cls;
    aa_state *s = *con_cls;
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s == NULL)
            return MHD_NO;
        atomic_fetch_add(&c->active, 1);
        const union MHD_ConnectionInfo *sc =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        helios_listen_conn_used(&c->fresh, sc ? sc->socket_context : NULL);
        *con_cls = s;
        s->q.cfg = c;
        s->q.conn = conn;
        s->q.method = method;
        s->q.path = url;
        s->q.status = 500;
        char www[512];
        www[0] = '\0';
        if (check_head(s, www, sizeof(www)))
            return finish(s, www[0] ? www : NULL);
        return MHD_YES;
    }
    if (s->answered) { /* refused early: drop whatever body follows */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        take_chunk(s, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (s->too_big) {
        aa_fail(&s->q, 413, "the body is larger than max_body (%llu bytes)",
                (unsigned long long)c->max_body);
        return finish(s, NULL);
    }
    return run_endpoint(s);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    (void)toe;
    aa_config *c = cls;
    aa_state *s = *con_cls;
    if (s == NULL)
        return;
    json_decref(s->q.body);
    json_decref(s->q.reply);
    free(s->q.text);
    free(s->body);
    free(s);
    *con_cls = NULL;
    atomic_fetch_sub(&c->active, 1);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    (void)conn;
    aa_config *c = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED)
        helios_listen_conn_open(&c->fresh, socket_context);
    else
        helios_listen_conn_closed(&c->fresh, socket_context);
}

static __attribute__((format(printf, 2, 0))) void on_mhd_log(void *cls, const char *fmt,
                                                             va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    aa_api->log(HELIOS_LOG_WARN, AA_NAME, "libmicrohttpd: %s", msg);
}

/* ---- lifecycle ---- */

/* Module-level: the .so stays loaded across reloads. */
static helios_listen_keep aa_keep = HELIOS_LISTEN_KEEP_INIT;

void aa_listen_claim(aa_config *c)
{
    if (helios_listen_claim(&aa_keep, c, &c->listen) != 0)
        aa_api->log(HELIOS_LOG_WARN, AA_NAME,
                    "too many configurations at once: %s will be bound again at the next reload",
                    c->listen_text);
}

void aa_listen_unclaim(aa_config *c)
{
    helios_listen_unclaim(&aa_keep, c);
}

void aa_http_drop_kept(aa_config *c)
{
    int fd = helios_listen_take(&aa_keep, &c->listen);
    if (fd >= 0)
        close(fd); /* refused, not left waiting in a backlog nobody reads */
}

int aa_http_start(aa_config *c)
{
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (c->listen.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    uint16_t port = c->listen.ss_family == AF_INET6
                        ? ntohs(((struct sockaddr_in6 *)&c->listen)->sin6_port)
                        : ntohs(((struct sockaddr_in *)&c->listen)->sin_port);
    int kept = helios_listen_take(&aa_keep, &c->listen);
    errno = 0;
    /* the logger first: libmicrohttpd warns when another option precedes it;
     * a kept socket replaces the address (nothing to bind) */
    if (kept >= 0)
        c->daemon = MHD_start_daemon(
            flags, port, NULL, NULL, on_request, c, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, c,
            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)kept, MHD_OPTION_NOTIFY_COMPLETED,
            on_completed, c, MHD_OPTION_NOTIFY_CONNECTION, on_connection, c,
            MHD_OPTION_CONNECTION_LIMIT, (unsigned)AA_CONN_LIMIT,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)AA_CONN_TIMEOUT_S, MHD_OPTION_END);
    else
        c->daemon = MHD_start_daemon(
            flags, port, NULL, NULL, on_request, c, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, c,
            MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)&c->listen,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, c, MHD_OPTION_NOTIFY_CONNECTION,
            on_connection, c, MHD_OPTION_CONNECTION_LIMIT,
            (unsigned)AA_CONN_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)AA_CONN_TIMEOUT_S,
            MHD_OPTION_END);
    if (c->daemon == NULL) {
        int e = errno;
        if (kept >= 0)
            close(kept); /* refused, not left waiting in a backlog nobody reads */
        aa_api->log(HELIOS_LOG_ERROR, AA_NAME, "cannot listen on %s: %s", c->listen_text,
                    e ? strerror(e) : "libmicrohttpd could not start");
        return -1;
    }
    if (kept >= 0)
        aa_api->log(HELIOS_LOG_INFO, AA_NAME, "listening socket on %s kept across the reload",
                    c->listen_text);
    return 0;
}

void aa_http_quiesce(aa_config *c)
{
    pthread_mutex_lock(&c->quiesce_lock);
    atomic_store(&c->stopping, 1);
    if (c->daemon != NULL && !c->quiesced) {
        c->quiesced = 1;
        MHD_socket fd = MHD_quiesce_daemon(c->daemon);
        if (fd != MHD_INVALID_SOCKET)
            helios_listen_park(&aa_keep, c, &c->listen, fd); /* or closed: nobody wants it */
    }
    pthread_mutex_unlock(&c->quiesce_lock);
}

void aa_http_stop(aa_config *c)
{
    if (c->daemon == NULL)
        return;
    aa_http_quiesce(c);
    /* let the requests being answered finish and their responses go out,
     * and the connections accepted before the quiesce ask and be answered */
    long left = helios_listen_drain(&c->active, &c->fresh, AA_STOP_WAIT_MS);
    if (left > 0)
        aa_api->log(HELIOS_LOG_WARN, AA_NAME,
                    "stopping with %ld request(s) or new connection(s) still open after %d ms",
                    left, AA_STOP_WAIT_MS);
    MHD_stop_daemon(c->daemon);
    c->daemon = NULL;
}
