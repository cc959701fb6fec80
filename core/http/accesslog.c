#include "http/accesslog.h"

#include <openssl/ssl.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <helios/util/json.h>

#include "base/log.h"
#include "config/tls.h"

static _Atomic int al_fd = -1;
static int al_format;
static char al_path[4096];

int hx_accesslog_open(const hx_logging *cfg)
{
    al_format = cfg->access_format;
    if (!cfg->access_enabled) {
        hx_accesslog_close();
        return 0;
    }
    if (cfg->access_log == NULL || strcmp(cfg->access_log, "stdout") == 0) {
        al_path[0] = '\0';
        int old = atomic_exchange(&al_fd, STDOUT_FILENO);
        if (old > STDERR_FILENO)
            close(old);
        return 0;
    }
    snprintf(al_path, sizeof(al_path), "%s", cfg->access_log);
    return hx_accesslog_reopen();
}

int hx_accesslog_reopen(void)
{
    if (al_path[0] == '\0')
        return 0;
    int fd = open(al_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        hx_error("access log %s: %s", al_path, strerror(errno));
        return -1;
    }
    /* Workers may hold the current descriptor number: put the new file
     * under that same number (dup2 is atomic), so a write in flight lands
     * in the old or the new file, never in a reused descriptor. */
    int cur = atomic_load(&al_fd);
    if (cur > STDERR_FILENO && dup2(fd, cur) == cur) {
        close(fd);
        return 0;
    }
    int old = atomic_exchange(&al_fd, fd);
    if (old > STDERR_FILENO)
        close(old);
    return 0;
}

void hx_accesslog_close(void)
{
    int old = atomic_exchange(&al_fd, -1);
    if (old > STDERR_FILENO)
        close(old);
}

/* Text format: control bytes and quotes from the client are hex-escaped so
 * a line cannot be forged. */
static size_t text_esc(char *o, size_t cap, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            k += (size_t)snprintf(o + k, cap - k, "\\x%02X", c);
        else
            o[k++] = (char)c;
    }
    return k;
}

void hx_req_stats_fill(const hx_req *r, helios_req_stats *s)
{
    ev_tstamp now = ev_now(r->w->loop);
    memset(s, 0, sizeof(*s));
    s->size = sizeof(*s);
    s->status = r->aborted && r->status == 0 ? 0 : r->status;
    s->aborted = r->aborted;
    s->bytes_in = r->bytes_in;
    s->bytes_out = r->bytes_out;
    s->start_ms = (uint64_t)(r->start * 1000.0);
    double dur = now - r->start;
    s->duration_ms = (uint64_t)(dur * 1000.0 + 0.5);
    s->duration_us = (uint64_t)(dur * 1e6 + 0.5);
    s->upstream = r->upstream_addr;
    if (r->up_start > 0) {
        double up = (r->up_end > 0 ? r->up_end : now) - r->up_start;
        s->upstream_ms = (int64_t)(up * 1000.0 + 0.5);
        s->upstream_us = (int64_t)(up * 1e6 + 0.5);
    } else {
        s->upstream_ms = s->upstream_us = -1;
    }
    s->attempts = r->attempts;
    s->protocol = r->http_major == 2 ? "HTTP/2" : r->http_minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
    s->upstream_name = r->route && r->route->upstream ? r->route->upstream->name : "";
    s->backend_name = r->backend ? r->backend->name : "";
    s->upstream_ttfb_us = r->up_head > 0 && r->try_start > 0
                              ? (int64_t)((r->up_head - r->try_start) * 1e6 + 0.5)
                              : -1;
    s->backend_health = -1;
    s->backend_breaker = -1;
    if (r->backend) {
        s->backend_health = atomic_load(&r->backend->healthy) ? 1 : 0;
        int bs = atomic_load(&r->backend->breaker);
        s->backend_breaker = bs >= 0 && bs <= 2 ? bs : -1;
    }
    s->connection_id = r->conn ? r->conn->id : 0;
    if (r->conn && r->conn->ssl) {
        s->tls_version = hx_tls_version(r->conn->ssl);
        s->tls_cipher = hx_tls_cipher(r->conn->ssl);
    }
}

helios_buf hx_req_log_id(const hx_req *r)
{
    for (const hx_var *v = r->vars; v; v = v->next)
        if (strcmp(v->name, "request_id") == 0)
            return v->value;
    return hx_hdrs_get(&r->hdrs, "x-request-id");
}

void hx_access_entry_time(char *ts, size_t size)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    snprintf(ts, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(now.tv_nsec / 1000000));
}

/* The JSON line: the schema of helios/util/json.h, filled from the same
 * facts api->req_stats gives the access_log module. */
static size_t json_line(const hx_req *r, const helios_req_stats *st, const char *ts,
                        const char *client, char *line, size_t cap)
{
    helios_access_entry e = {
        .time = ts,
        .request_id = hx_req_log_id(r),
        .connection_id = st->connection_id,
        .client = client,
        .method = r->method.ptr ? r->method : (helios_buf){NULL, 0},
        .path = r->target.ptr ? r->target : (helios_buf){NULL, 0},
        .protocol = st->protocol,
        .status = st->status,
        .bytes_in = st->bytes_in,
        .bytes_out = st->bytes_out,
        .duration_ms = st->duration_ms,
        .route = r->route ? r->route->name : NULL,
        .upstream = st->upstream,
        .backend = st->backend_name,
        .upstream_ms = st->upstream_ms,
        .upstream_ttfb_ms = st->upstream_ttfb_us >= 0 ? (st->upstream_ttfb_us + 500) / 1000 : -1,
        .tries = st->attempts,
        .backend_health = st->backend_health,
        .breaker = st->backend_breaker,
        .tls = st->tls_version,
        .cipher = st->tls_cipher,
        .worker = (int)r->w->id,
        .aborted = st->aborted,
    };
    helios_jbuf o = {line, 0, cap - 1, 0};
    helios_access_json_begin(&o, &e);
    helios_access_json_end(&o, &e);
    return o.len;
}

void hx_accesslog_write(const hx_req *r)
{
    int fd = atomic_load_explicit(&al_fd, memory_order_relaxed);
    if (fd < 0)
        return;
    char ts[64], client[64], path[1024], line[HX_ACCESSLOG_LINE_MAX];
    hx_access_entry_time(ts, sizeof(ts));
    hx_addr_ip_str((const struct sockaddr *)&r->client, client, sizeof(client));
    helios_req_stats st;
    hx_req_stats_fill(r, &st);
    size_t len;
    if (al_format == HX_LOG_FMT_JSON) {
        len = json_line(r, &st, ts, client, line, sizeof(line));
    } else {
        const char *route = r->route && r->route->name ? r->route->name : "-";
        const char *up = st.upstream[0] ? st.upstream : "-";
        static const char *const brk[] = {"closed", "open", "half-open"};
        const char *health = st.backend_health < 0 ? "-" : st.backend_health ? "up" : "down";
        const char *breaker = st.backend_breaker < 0 ? "-" : brk[st.backend_breaker];
        char method[64];
        size_t ml = text_esc(method, sizeof(method), r->method.ptr ? r->method.ptr : "-",
                             r->method.ptr ? r->method.len : 1);
        size_t pl = text_esc(path, sizeof(path), r->target.ptr ? r->target.ptr : "", r->target.len);
        int n = snprintf(line, sizeof(line),
                         "%s %s \"%.*s %.*s %s\" %d %llu %llu %llu route=%s upstream=%s "
                         "upstream_ms=%lld tries=%u backend=%s breaker=%s tls=%s cipher=%s worker=%u%s\n",
                         ts, client, (int)ml, method, (int)pl, path, st.protocol, st.status,
                         (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out,
                         (unsigned long long)st.duration_ms, route, up, (long long)st.upstream_ms,
                         st.attempts, health, breaker, st.tls_version ? st.tls_version : "-",
                         st.tls_cipher ? st.tls_cipher : "-", r->w->id, st.aborted ? " aborted" : "");
        if (n <= 0)
            return;
        len = (size_t)n;
        if (len >= sizeof(line)) {
            len = sizeof(line);
            line[len - 1] = '\n';
        }
    }
    ssize_t w = write(fd, line, len);
    (void)w;
}
