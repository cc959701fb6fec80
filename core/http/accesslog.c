#include "http/accesslog.h"

#include <openssl/ssl.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

/* JSON string body: quotes, backslashes and control bytes escaped. */
static size_t json_esc(char *o, size_t cap, const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 7 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            o[k++] = '\\';
            o[k++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            k += (size_t)snprintf(o + k, cap - k, "\\u%04x", c);
        } else {
            o[k++] = (char)c;
        }
    }
    return k;
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

void hx_accesslog_write(const hx_req *r)
{
    int fd = atomic_load_explicit(&al_fd, memory_order_relaxed);
    if (fd < 0)
        return;
    char ts[64], client[64], path[1024], line[2048];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             now.tv_nsec / 1000000);
    hx_addr_ip_str((const struct sockaddr *)&r->client, client, sizeof(client));
    ev_tstamp end = ev_now(r->w->loop);
    long dur = (long)((end - r->start) * 1000.0 + 0.5);
    long up_ms = -1;
    if (r->up_start > 0)
        up_ms = (long)(((r->up_end > 0 ? r->up_end : end) - r->up_start) * 1000.0 + 0.5);
    const char *route = r->route && r->route->name ? r->route->name : "-";
    const char *up = r->upstream_addr[0] ? r->upstream_addr : "-";
    const char *proto = r->http_major == 2 ? "HTTP/2" : r->http_minor == 0 ? "HTTP/1.0" : "HTTP/1.1";
    static const char *const brk[] = {"closed", "open", "half-open"};
    const char *health = "-", *breaker = "-";
    if (r->backend) {
        health = atomic_load(&r->backend->healthy) ? "up" : "down";
        int bs = atomic_load(&r->backend->breaker);
        breaker = bs >= 0 && bs <= 2 ? brk[bs] : "-";
    }
    int status = r->aborted && r->status == 0 ? 0 : r->status;
    const char *tlsv = "-", *tlsc = "-";
    if (r->conn && r->conn->ssl) {
        tlsv = hx_tls_version(r->conn->ssl);
        tlsc = hx_tls_cipher(r->conn->ssl);
    }
    int n;
    if (al_format == HX_LOG_FMT_JSON) {
        char method[64];
        size_t ml = json_esc(method, sizeof(method), r->method.ptr ? r->method.ptr : "-",
                             r->method.ptr ? r->method.len : 1);
        size_t pl = json_esc(path, sizeof(path), r->target.ptr ? r->target.ptr : "",
                             r->target.len);
        char rt[256];
        size_t rl = json_esc(rt, sizeof(rt), route, strlen(route));
        n = snprintf(line, sizeof(line),
                     "{\"time\":\"%s\",\"client\":\"%s\",\"method\":\"%.*s\",\"path\":\"%.*s\","
                     "\"protocol\":\"%s\",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu,"
                     "\"duration_ms\":%ld,\"route\":\"%.*s\",\"upstream\":\"%s\","
                     "\"upstream_ms\":%ld,\"tries\":%u,\"backend_health\":\"%s\","
                     "\"breaker\":\"%s\",\"tls\":\"%s\",\"cipher\":\"%s\",\"worker\":%u,"
                     "\"aborted\":%s}\n",
                     ts, client, (int)ml, method, (int)pl, path, proto, status,
                     (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out, dur,
                     (int)rl, rt, up, up_ms, r->attempts, health, breaker, tlsv, tlsc, r->w->id,
                     r->aborted ? "true" : "false");
    } else {
        char method[64];
        size_t ml = text_esc(method, sizeof(method), r->method.ptr ? r->method.ptr : "-",
                             r->method.ptr ? r->method.len : 1);
        size_t pl = text_esc(path, sizeof(path), r->target.ptr ? r->target.ptr : "",
                             r->target.len);
        n = snprintf(
            line, sizeof(line),
            "%s %s \"%.*s %.*s %s\" %d %llu %llu %ld route=%s upstream=%s "
            "upstream_ms=%ld tries=%u backend=%s breaker=%s tls=%s cipher=%s worker=%u%s\n",
            ts, client, (int)ml, method, (int)pl, path, proto, status,
            (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out, dur, route, up,
            up_ms, r->attempts, health, breaker, tlsv, tlsc, r->w->id,
            r->aborted ? " aborted" : "");
    }
    if (n > 0) {
        if ((size_t)n >= sizeof(line)) {
            n = sizeof(line);
            line[n - 1] = '\n';
        }
        ssize_t w = write(fd, line, (size_t)n);
        (void)w;
    }
}
