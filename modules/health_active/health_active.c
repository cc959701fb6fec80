/*
 * health_active.c - active health checks: a service that probes every backend
 * of the chosen upstreams on its own thread and marks them up or down.
 *
 * One thread, one libev loop (never a worker's), so probes stay off the
 * request path. Each backend has at most one probe in flight: a single timer
 * per backend is the "next probe" timer while idle and the probe timeout
 * while a probe runs. The backend lists are walked again every interval, so
 * backends added at runtime get probed; handles stay valid for the service's
 * lifetime because the core stops services before freeing a generation.
 *
 * The module only calls backend_set_healthy on its own transitions (after
 * `fall` failures in a row, or `rise` successes in a row), so it does not
 * fight a passive checker that marked a backend down for its own reasons.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>

#include <ev.h>

#include <helios.h>
#include <helios/util/exports.h>

#define HA_NAME "health_active"
#define HA_MAX_RANGES 32
#define HA_MAX_UPSTREAMS 256
#define HA_UPSTREAM_NAME_MAX 256
#define HA_HEAD_CAP 8192        /* status line + headers we read */
#define HA_BODY_CAP (64 * 1024) /* body searched for body_contains */
#define HA_STATUS_CAP 512       /* enough for "HTTP/1.1 200 ..." */
#define HA_BODY_NEEDLE_MAX 4096
#define HA_WHY_MAX 160

static const helios_host_api *api;

/* ---- configuration ---- */

enum { HA_HTTP = 0, HA_TCP = 1 };

typedef struct ha_range {
    int lo, hi;
} ha_range;

struct ha_runtime;

typedef struct ha_config {
    int type;             /* HA_HTTP or HA_TCP */
    uint64_t interval_ms; /* probe start to probe start, at most */
    uint64_t jitter_ms;   /* each wait is shortened by a random 0..jitter */
    unsigned jitter_pct;  /* when jitter was given as a percentage (else 0) */
    uint64_t timeout_ms;  /* whole probe: connect, send, read */
    long long rise, fall;
    const char *method, *path, *host; /* host NULL: the backend's address */
    const char *body_contains;        /* NULL: status only */
    size_t body_contains_len;
    ha_range ranges[HA_MAX_RANGES];
    size_t nranges;
    const char **upstreams; /* NULL: every upstream */
    size_t nupstreams;
    struct ha_runtime *rt; /* between start and stop */
} ha_config;

static const char *const ha_keys[] = {
    "type", "interval", "jitter",          "timeout",       "rise",      "fall", "method",
    "path", "host",     "expected_status", "body_contains", "upstreams", NULL};

static int ha_token_ok(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return 0;
    return 1;
}

/* No CTL, space or DEL: the value goes verbatim into the request line or a header. */
static int ha_visible_ok(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s == 0x7f)
            return 0;
    return 1;
}

/* "200", "200-399" (blanks allowed around '-'). */
static int ha_parse_range(const char *s, ha_range *r)
{
    char *end;
    long lo = strtol(s, &end, 10), hi = lo;
    if (end == s)
        return -1;
    while (*end == ' ')
        end++;
    if (*end == '-') {
        const char *p = end + 1;
        hi = strtol(p, &end, 10);
        if (end == p)
            return -1;
        while (*end == ' ')
            end++;
    }
    if (*end != '\0' || lo < 100 || hi > 599 || lo > hi)
        return -1;
    r->lo = (int)lo;
    r->hi = (int)hi;
    return 0;
}

static int ha_parse_status(const helios_conf *conf, ha_config *c)
{
    const helios_conf *n = api->conf_get(conf, "expected_status");
    int kind = api->conf_kind(n);
    if (n == NULL || kind == HELIOS_CONF_NULL) {
        c->ranges[0] = (ha_range){200, 399};
        c->nranges = 1;
        return 0;
    }
    size_t count = kind == HELIOS_CONF_SEQ ? api->conf_len(n) : 1;
    if (kind == HELIOS_CONF_MAP || count == 0 || count > HA_MAX_RANGES) {
        api->conf_error(n,
                        "expected a list of 1 to %d status codes or ranges such as "
                        "[200, \"200-399\"]",
                        HA_MAX_RANGES);
        return -1;
    }
    int bad = 0;
    for (size_t i = 0; i < count; i++) {
        const helios_conf *item = kind == HELIOS_CONF_SEQ ? api->conf_at(n, i) : n;
        const char *s = api->conf_scalar(item);
        if (s == NULL || ha_parse_range(s, &c->ranges[i]) != 0) {
            api->conf_error(item,
                            "expected a status code or range from 100 to 599 such as "
                            "200 or \"200-399\", got %s",
                            s ? s : "a non-scalar");
            bad = 1;
        }
    }
    c->nranges = count;
    return bad ? -1 : 0;
}

static int ha_parse_upstreams(const helios_conf *conf, ha_config *c)
{
    const helios_conf *n = api->conf_get(conf, "upstreams");
    int kind = api->conf_kind(n);
    if (n == NULL || kind == HELIOS_CONF_NULL)
        return 0;
    size_t count = api->conf_len(n);
    if (kind != HELIOS_CONF_SEQ || count == 0 || count > HA_MAX_UPSTREAMS) {
        api->conf_error(n,
                        "expected a list of 1 to %d upstream names (omit the key to probe "
                        "every upstream)",
                        HA_MAX_UPSTREAMS);
        return -1;
    }
    c->upstreams = calloc(count, sizeof *c->upstreams);
    if (c->upstreams == NULL) {
        api->conf_error(n, "out of memory");
        return -1;
    }
    int bad = 0;
    for (size_t i = 0; i < count; i++) {
        const char *s = api->conf_scalar(api->conf_at(n, i));
        if (s == NULL || *s == '\0' || strlen(s) >= HA_UPSTREAM_NAME_MAX) {
            api->conf_error(api->conf_at(n, i), "expected an upstream name");
            bad = 1;
        }
        c->upstreams[i] = s;
    }
    c->nupstreams = count;
    return bad ? -1 : 0;
}

/* `jitter` is a duration ("500ms") or a percentage of the interval ("10%"). */
static int ha_parse_jitter(const helios_conf *conf, ha_config *c)
{
    const helios_conf *n = api->conf_get(conf, "jitter");
    const char *s = api->conf_scalar(n);
    size_t len = s ? strlen(s) : 0;
    if (len > 0 && s[len - 1] == '%') {
        char *end;
        long pct = strtol(s, &end, 10);
        if (end == s || *end != '%' || pct < 0 || pct > 100) {
            api->conf_error(n,
                            "expected a percentage of the interval from 0%% to 100%% or a "
                            "duration such as 500ms, got %s",
                            s);
            return -1;
        }
        c->jitter_pct = (unsigned)pct;
        c->jitter_ms = c->interval_ms * (uint64_t)pct / 100;
        return 0;
    }
    int rc = api->conf_duration_ms(conf, "jitter", c->interval_ms / 10, &c->jitter_ms);
    if (rc < 0)
        return -1;
    if (c->jitter_ms > c->interval_ms) {
        api->conf_error(n, "jitter (%llu ms) must not exceed interval (%llu ms)",
                        (unsigned long long)c->jitter_ms, (unsigned long long)c->interval_ms);
        return -1;
    }
    return 0;
}

static void ha_config_free(void *cfg)
{
    ha_config *c = cfg;
    if (c == NULL)
        return;
    free(c->upstreams);
    free(c);
}

static int ha_config_new(const helios_conf *conf, void **cfg)
{
    ha_config *c = calloc(1, sizeof *c);
    if (c == NULL) {
        api->conf_error(conf, "out of memory");
        return -1;
    }
    int bad = api->conf_check_keys(conf, ha_keys) > 0;

    const char *type = "http";
    if (api->conf_str(conf, "type", "http", &type) < 0)
        bad = 1;
    else if (strcmp(type, "http") == 0)
        c->type = HA_HTTP;
    else if (strcmp(type, "tcp") == 0)
        c->type = HA_TCP;
    else {
        api->conf_error(api->conf_get(conf, "type"), "expected http or tcp, got %s", type);
        bad = 1;
    }

    int interval_ok = 0;
    if (api->conf_duration_ms(conf, "interval", 5000, &c->interval_ms) < 0)
        bad = 1;
    else if (c->interval_ms == 0) {
        api->conf_error(api->conf_get(conf, "interval"), "must be greater than 0");
        bad = 1;
    } else
        interval_ok = 1;
    if (api->conf_duration_ms(conf, "timeout", 2000, &c->timeout_ms) < 0)
        bad = 1;
    else if (c->timeout_ms == 0) {
        api->conf_error(api->conf_get(conf, "timeout"), "must be greater than 0");
        bad = 1;
    }
    /* jitter may be relative to the interval: judge it only against a valid one */
    if (interval_ok && ha_parse_jitter(conf, c) != 0)
        bad = 1;
    if (api->conf_int(conf, "rise", 2, 1, 1000, &c->rise) < 0)
        bad = 1;
    if (api->conf_int(conf, "fall", 3, 1, 1000, &c->fall) < 0)
        bad = 1;

    if (api->conf_str(conf, "method", "GET", &c->method) < 0)
        bad = 1;
    else if (!ha_token_ok(c->method)) {
        api->conf_error(api->conf_get(conf, "method"), "expected an HTTP method token such as GET");
        bad = 1;
    }
    if (api->conf_str(conf, "path", "/", &c->path) < 0)
        bad = 1;
    else if (c->path[0] != '/' || !ha_visible_ok(c->path)) {
        api->conf_error(api->conf_get(conf, "path"),
                        "expected a path starting with '/' without spaces or control characters");
        bad = 1;
    }
    int rc = api->conf_str(conf, "host", NULL, &c->host);
    if (rc < 0)
        bad = 1;
    else if (rc == 1 && !ha_visible_ok(c->host)) {
        api->conf_error(api->conf_get(conf, "host"),
                        "expected a host name without spaces or control characters");
        bad = 1;
    }
    rc = api->conf_str(conf, "body_contains", NULL, &c->body_contains);
    if (rc < 0)
        bad = 1;
    else if (rc == 1) {
        c->body_contains_len = strlen(c->body_contains);
        if (c->body_contains_len == 0 || c->body_contains_len > HA_BODY_NEEDLE_MAX) {
            api->conf_error(api->conf_get(conf, "body_contains"),
                            "expected a non-empty string of at most %d bytes", HA_BODY_NEEDLE_MAX);
            bad = 1;
        }
    }
    if (ha_parse_status(conf, c) != 0)
        bad = 1;
    if (ha_parse_upstreams(conf, c) != 0)
        bad = 1;

    if (c->type == HA_TCP) {
        static const char *const http_only[] = {"method",          "path",          "host",
                                                "expected_status", "body_contains", NULL};
        for (size_t i = 0; http_only[i]; i++) {
            const helios_conf *n = api->conf_get(conf, http_only[i]);
            if (n != NULL) {
                api->conf_error(n, "only used with type: http (this check is type: tcp)");
                bad = 1;
            }
        }
    }
    if (bad) {
        ha_config_free(c);
        return -1;
    }
    *cfg = c;
    return 0;
}

/* ---- probe state ---- */

typedef struct ha_target {
    struct ha_runtime *rt;
    helios_backend *b;
    char upstream[HA_UPSTREAM_NAME_MAX];
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *request; /* the whole HTTP request, built once */
    size_t request_len;

    ev_timer timer; /* next probe while idle, timeout while probing */
    ev_io io;
    int fd; /* >= 0 while a probe is in flight */
    size_t sent;
    char *buf; /* response bytes of the probe in flight */
    size_t buf_len, buf_cap;
    ev_tstamp started;

    long long fails, oks; /* consecutive results */
    int up;               /* this checker's verdict (starts as the core's state) */
    int adopted_down;     /* started as down: the first failed probe says so again */
    unsigned seen;        /* walk number that last listed it */
} ha_target;

typedef struct ha_runtime {
    const ha_config *cfg;
    struct ev_loop *loop;
    ev_async stop;
    ev_timer rewalk;
    pthread_t thread;
    ha_target **targets;
    size_t ntargets, cap;
    unsigned walk;
    uint64_t rng;
    char (*names)[HA_UPSTREAM_NAME_MAX]; /* the upstreams probed */
    size_t nnames;
} ha_runtime;

static uint64_t ha_rand(ha_runtime *rt)
{
    /* xorshift64: enough to spread probes, and owned by the probe thread */
    uint64_t x = rt->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rt->rng = x;
}

/* Seconds until the next probe: the interval, shortened by a random share of
 * the jitter, so probes never come later than `interval` apart. */
static ev_tstamp ha_next_delay(ha_runtime *rt, ev_tstamp since_start)
{
    uint64_t j = rt->cfg->jitter_ms ? ha_rand(rt) % (rt->cfg->jitter_ms + 1) : 0;
    ev_tstamp d = (double)(rt->cfg->interval_ms - j) / 1000.0 - since_start;
    return d > 0.001 ? d : 0.001;
}

static void ha_probe_start(ha_target *t);

static void ha_verdict(ha_target *t, int ok, const char *why)
{
    const ha_config *c = t->rt->cfg;
    if (ok) {
        t->fails = 0;
        t->adopted_down = 0;
        if (t->oks < c->rise)
            t->oks++;
        if (!t->up && t->oks >= c->rise) {
            t->up = 1;
            api->log(HELIOS_LOG_INFO, HA_NAME,
                     "upstream %s backend %s (%s): up after %lld successful probes", t->upstream,
                     api->backend_name(t->b), api->backend_address(t->b), c->rise);
            api->backend_set_healthy(t->b, 1, "active health check passed");
        }
    } else {
        t->oks = 0;
        if (t->fails < c->fall)
            t->fails++;
        if (t->adopted_down) {
            t->adopted_down = 0;
            if (!t->up)
                api->backend_set_healthy(t->b, 0, "active health check: still down");
        }
        api->log(HELIOS_LOG_DEBUG, HA_NAME, "upstream %s backend %s (%s): probe failed: %s",
                 t->upstream, api->backend_name(t->b), api->backend_address(t->b), why);
        if (t->up && t->fails >= c->fall) {
            t->up = 0;
            char msg[HA_WHY_MAX + 64];
            snprintf(msg, sizeof msg, "active health check failed %lld times, last: %s", c->fall,
                     why);
            api->log(HELIOS_LOG_WARN, HA_NAME, "upstream %s backend %s (%s): down: %s", t->upstream,
                     api->backend_name(t->b), api->backend_address(t->b), msg);
            api->backend_set_healthy(t->b, 0, msg);
        }
    }
}

/* Ends the probe in flight (if any) and frees what it holds. */
static void ha_probe_close(ha_target *t)
{
    ev_io_stop(t->rt->loop, &t->io);
    ev_timer_stop(t->rt->loop, &t->timer);
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    free(t->buf);
    t->buf = NULL;
    t->buf_len = t->buf_cap = 0;
}

/* The probe's result and duration to the metrics module, when there is
 * one (helios/util/exports.h; looked up per probe: a mutex, at probe rate). */
static void ha_report(ha_target *t, int ok, double seconds)
{
    const helios_backend_events *ev = api->export_get(HELIOS_EXPORT_BACKEND_EVENTS);
    if (ev != NULL && ev->size >= sizeof(*ev))
        ev->event(ok ? HELIOS_BACKEND_EVENT_PROBE_OK : HELIOS_BACKEND_EVENT_PROBE_FAIL,
                  t->upstream, api->backend_name(t->b), seconds);
}

static void ha_probe_done(ha_target *t, int ok, const char *why)
{
    ha_runtime *rt = t->rt;
    ha_probe_close(t);
    ev_now_update(rt->loop);
    ha_report(t, ok, ev_now(rt->loop) - t->started);
    ha_verdict(t, ok, why);
    ev_timer_set(&t->timer, ha_next_delay(rt, ev_now(rt->loop) - t->started), 0.);
    ev_timer_start(rt->loop, &t->timer);
}

static int ha_status_expected(const ha_config *c, int status)
{
    for (size_t i = 0; i < c->nranges; i++)
        if (status >= c->ranges[i].lo && status <= c->ranges[i].hi)
            return 1;
    return 0;
}

/* Content-Length of the head [p, p+n), or -1 when absent or unreadable. */
static long long ha_content_length(const char *p, size_t n)
{
    static const char name[] = "\r\ncontent-length:";
    size_t nl = sizeof name - 1;
    for (size_t i = 0; i + nl <= n; i++) {
        if (strncasecmp(p + i, name, nl) != 0)
            continue;
        size_t k = i + nl;
        while (k < n && (p[k] == ' ' || p[k] == '\t'))
            k++;
        long long v = 0;
        size_t digits = 0;
        while (k < n && p[k] >= '0' && p[k] <= '9' && digits < 18) {
            v = v * 10 + (p[k++] - '0');
            digits++;
        }
        return digits ? v : -1;
    }
    return -1;
}

/*
 * Looks at what has arrived. Returns 1 (healthy), 0 (unhealthy, WHY filled)
 * or -1 (need more bytes). EOF says the peer closed: no more will come.
 */
static int ha_judge(ha_target *t, int eof, char *why, size_t whylen)
{
    const ha_config *c = t->rt->cfg;
    const char *p = t->buf;
    size_t n = t->buf_len;
    /* "HTTP/1.x DDD": anything else is not an HTTP/1 response */
    if (n < 12)
        goto short_read;
    if (memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' || p[9] < '1' || p[9] > '5' || p[10] < '0' ||
        p[10] > '9' || p[11] < '0' || p[11] > '9') {
        snprintf(why, whylen, "not an HTTP/1 status line");
        return 0;
    }
    int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    if (!ha_status_expected(c, status)) {
        snprintf(why, whylen, "status %d not expected", status);
        return 0;
    }
    if (c->body_contains == NULL)
        return 1;

    const char *head_end = memmem(p, n, "\r\n\r\n", 4);
    if (head_end == NULL) {
        if (n >= HA_HEAD_CAP) {
            snprintf(why, whylen, "response head larger than %d bytes", HA_HEAD_CAP);
            return 0;
        }
        goto short_read;
    }
    const char *body = head_end + 4;
    size_t blen = n - (size_t)(body - p);
    if (memmem(body, blen, c->body_contains, c->body_contains_len) != NULL)
        return 1;
    long long clen = ha_content_length(p, (size_t)(head_end - p) + 2);
    if (eof || blen >= HA_BODY_CAP || t->buf_len >= t->buf_cap ||
        (clen >= 0 && (long long)blen >= clen)) {
        snprintf(why, whylen, "status %d but body does not contain the expected text", status);
        return 0;
    }
    return -1;

short_read:
    if (eof) {
        snprintf(why, whylen, "connection closed before a complete response (%zu bytes)", n);
        return 0;
    }
    return -1;
}

static void ha_on_read(ha_target *t)
{
    char why[HA_WHY_MAX];
    for (;;) {
        if (t->buf_len == t->buf_cap) {
            int v = ha_judge(t, 1, why, sizeof why);
            ha_probe_done(t, v == 1, why);
            return;
        }
        ssize_t r = recv(t->fd, t->buf + t->buf_len, t->buf_cap - t->buf_len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r < 0) {
            snprintf(why, sizeof why, "read: %s", strerror(errno));
            ha_probe_done(t, 0, why);
            return;
        }
        t->buf_len += (size_t)r;
        int v = ha_judge(t, r == 0, why, sizeof why);
        if (v >= 0) {
            ha_probe_done(t, v, why);
            return;
        }
    }
}

static void ha_on_write(ha_target *t)
{
    char why[HA_WHY_MAX];
    if (t->sent == 0) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            snprintf(why, sizeof why, "connect: %s", strerror(err));
            ha_probe_done(t, 0, why);
            return;
        }
        if (t->rt->cfg->type == HA_TCP) {
            ha_probe_done(t, 1, "connected");
            return;
        }
    }
    while (t->sent < t->request_len) {
        ssize_t w = send(t->fd, t->request + t->sent, t->request_len - t->sent, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (w < 0) {
            snprintf(why, sizeof why, "send: %s", strerror(errno));
            ha_probe_done(t, 0, why);
            return;
        }
        t->sent += (size_t)w;
    }
    t->buf_cap = t->rt->cfg->body_contains ? HA_HEAD_CAP + HA_BODY_CAP : HA_STATUS_CAP;
    t->buf = malloc(t->buf_cap);
    if (t->buf == NULL) {
        ha_probe_done(t, 0, "out of memory");
        return;
    }
    ev_io_stop(t->rt->loop, &t->io);
    ev_io_set(&t->io, t->fd, EV_READ);
    ev_io_start(t->rt->loop, &t->io);
}

static void ha_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    ha_target *t = w->data;
    if (w->events & EV_WRITE)
        ha_on_write(t);
    else
        ha_on_read(t);
}

static void ha_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    ha_target *t = w->data;
    if (t->fd >= 0) {
        char why[HA_WHY_MAX];
        snprintf(why, sizeof why, "timed out after %llu ms%s",
                 (unsigned long long)t->rt->cfg->timeout_ms,
                 t->buf == NULL ? " (connecting or sending)" : " (waiting for the response)");
        ha_probe_done(t, 0, why);
    } else {
        ha_probe_start(t);
    }
}

static void ha_probe_start(ha_target *t)
{
    ha_runtime *rt = t->rt;
    char why[HA_WHY_MAX];
    t->started = ev_now(rt->loop);
    t->sent = 0;
    t->fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t->fd < 0) {
        snprintf(why, sizeof why, "socket: %s", strerror(errno));
        ha_probe_done(t, 0, why);
        return;
    }
    if (connect(t->fd, (const struct sockaddr *)&t->addr, t->addrlen) != 0 &&
        errno != EINPROGRESS) {
        snprintf(why, sizeof why, "connect: %s", strerror(errno));
        ha_probe_done(t, 0, why);
        return;
    }
    /* writability reports the connect's outcome (SO_ERROR), even when done */
    ev_io_set(&t->io, t->fd, EV_WRITE);
    ev_io_start(rt->loop, &t->io);
    ev_timer_set(&t->timer, (double)rt->cfg->timeout_ms / 1000.0, 0.);
    ev_timer_start(rt->loop, &t->timer);
}

/* ---- target table ---- */

static void ha_target_free(ha_target *t)
{
    ha_probe_close(t);
    free(t->request);
    free(t);
}

static ha_target *ha_target_new(ha_runtime *rt, const char *upstream, helios_backend *b)
{
    const struct sockaddr *sa = api->backend_sockaddr(b);
    if (sa == NULL)
        return NULL;
    ha_target *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->rt = rt;
    t->b = b;
    t->fd = -1;
    snprintf(t->upstream, sizeof t->upstream, "%s", upstream);
    t->addrlen =
        sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    memcpy(&t->addr, sa, t->addrlen);
    if (rt->cfg->type == HA_HTTP) {
        const ha_config *c = rt->cfg;
        const char *host = c->host ? c->host : api->backend_address(b);
        int n = snprintf(NULL, 0,
                         "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                         "User-Agent: heliosd-health\r\n\r\n",
                         c->method, c->path, host);
        t->request = malloc((size_t)n + 1);
        if (t->request == NULL) {
            free(t);
            return NULL;
        }
        snprintf(t->request, (size_t)n + 1,
                 "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n"
                 "User-Agent: heliosd-health\r\n\r\n",
                 c->method, c->path, host);
        t->request_len = (size_t)n;
    }
    t->up = api->backend_healthy(b);
    /* down already (a verdict kept across a reload): the core lifts it
     * after a grace period unless a module confirms it */
    t->adopted_down = !t->up;
    ev_init(&t->timer, ha_timer_cb);
    t->timer.data = t;
    ev_init(&t->io, ha_io_cb);
    t->io.data = t;
    return t;
}

typedef struct ha_walk {
    helios_backend **v;
    size_t n, cap;
    int oom;
} ha_walk;

/* Runs under the core's control lock: only collect, call nothing back. */
static void ha_walk_cb(void *arg, const helios_backend *b)
{
    ha_walk *w = arg;
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        helios_backend **v = realloc(w->v, cap * sizeof *v);
        if (v == NULL) {
            w->oom = 1;
            return;
        }
        w->v = v;
        w->cap = cap;
    }
    /* The API hands out const for reporting; marking health needs the handle. */
    w->v[w->n++] = (helios_backend *)b;
}

static ha_target *ha_find(ha_runtime *rt, const helios_backend *b)
{
    for (size_t i = 0; i < rt->ntargets; i++)
        if (rt->targets[i]->b == b)
            return rt->targets[i];
    return NULL;
}

/* Adds targets for backends that appeared, drops those that are gone. */
static void ha_rewalk(ha_runtime *rt)
{
    unsigned walk = ++rt->walk;
    ha_walk w = {0};
    for (size_t u = 0; u < rt->nnames; u++) {
        w.n = 0;
        w.oom = 0;
        if (api->ctl_backends_walk(rt->names[u], ha_walk_cb, &w) < 0 || w.oom) {
            /* keep what we have: an unknown upstream now, or no memory */
            for (size_t i = 0; i < rt->ntargets; i++)
                if (strcmp(rt->targets[i]->upstream, rt->names[u]) == 0)
                    rt->targets[i]->seen = walk;
            continue;
        }
        for (size_t i = 0; i < w.n; i++) {
            ha_target *t = ha_find(rt, w.v[i]);
            if (t) {
                t->seen = walk;
                continue;
            }
            if (rt->ntargets == rt->cap) {
                size_t cap = rt->cap ? rt->cap * 2 : 16;
                ha_target **v = realloc(rt->targets, cap * sizeof *v);
                if (v == NULL)
                    break;
                rt->targets = v;
                rt->cap = cap;
            }
            t = ha_target_new(rt, rt->names[u], w.v[i]);
            if (t == NULL) {
                api->log(HELIOS_LOG_ERROR, HA_NAME,
                         "upstream %s backend %s: cannot set up its probe (out of memory?)",
                         rt->names[u], api->backend_name(w.v[i]));
                continue;
            }
            t->seen = walk;
            rt->targets[rt->ntargets++] = t;
            /* first probe soon, spread over the jitter so they do not all fire at once */
            uint64_t j = rt->cfg->jitter_ms ? ha_rand(rt) % (rt->cfg->jitter_ms + 1) : 0;
            ev_timer_set(&t->timer, (double)j / 1000.0, 0.);
            ev_timer_start(rt->loop, &t->timer);
        }
    }
    free(w.v);
    size_t kept = 0;
    for (size_t i = 0; i < rt->ntargets; i++) {
        if (rt->targets[i]->seen == walk)
            rt->targets[kept++] = rt->targets[i];
        else
            ha_target_free(rt->targets[i]);
    }
    rt->ntargets = kept;
}

static void ha_rewalk_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    ha_rewalk(w->data);
}

static void ha_stop_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void *ha_thread(void *arg)
{
    ha_runtime *rt = arg;
    ha_rewalk(rt);
    ev_run(rt->loop, 0);
    for (size_t i = 0; i < rt->ntargets; i++)
        ha_target_free(rt->targets[i]);
    rt->ntargets = 0;
    return NULL;
}

/* ---- service hooks ---- */

static void ha_runtime_free(ha_runtime *rt)
{
    if (rt->loop)
        ev_loop_destroy(rt->loop);
    free(rt->targets);
    free(rt->names);
    free(rt);
}

static int ha_start(void *cfg)
{
    ha_config *c = cfg;
    ha_runtime *rt = calloc(1, sizeof *rt);
    if (rt == NULL) {
        api->log(HELIOS_LOG_ERROR, HA_NAME, "out of memory starting the probe thread");
        return -1;
    }
    rt->cfg = c;
    rt->rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)(uintptr_t)rt ^ 0x9e3779b97f4a7c15u;

    size_t n = c->upstreams ? c->nupstreams : api->ctl_upstreams_count();
    rt->names = calloc(n ? n : 1, sizeof *rt->names);
    if (rt->names == NULL)
        goto oom;
    for (size_t i = 0; i < n; i++) {
        if (c->upstreams) {
            snprintf(rt->names[i], sizeof rt->names[i], "%s", c->upstreams[i]);
            if (api->ctl_backends_walk(c->upstreams[i], NULL, NULL) < 0) {
                api->log(HELIOS_LOG_ERROR, HA_NAME,
                         "upstreams: no upstream named %s in the configuration; list names "
                         "from the top-level upstreams: map, or omit the key to probe all",
                         c->upstreams[i]);
                ha_runtime_free(rt);
                return -1;
            }
        } else if (api->ctl_upstream_name(i, rt->names[i], sizeof rt->names[i]) != 0) {
            continue; /* name too long for us, or the list changed: skip it */
        }
        rt->nnames++;
    }

    rt->loop = ev_loop_new(EVFLAG_AUTO);
    if (rt->loop == NULL) {
        api->log(HELIOS_LOG_ERROR, HA_NAME, "cannot create an event loop for the probe thread");
        ha_runtime_free(rt);
        return -1;
    }
    ev_async_init(&rt->stop, ha_stop_cb);
    ev_async_start(rt->loop, &rt->stop);
    double every = (double)c->interval_ms / 1000.0;
    ev_timer_init(&rt->rewalk, ha_rewalk_cb, every, every);
    rt->rewalk.data = rt;
    ev_timer_start(rt->loop, &rt->rewalk);

    int err = pthread_create(&rt->thread, NULL, ha_thread, rt);
    if (err != 0) {
        api->log(HELIOS_LOG_ERROR, HA_NAME, "cannot start the probe thread: %s", strerror(err));
        ha_runtime_free(rt);
        return -1;
    }
    c->rt = rt;
    api->log(HELIOS_LOG_INFO, HA_NAME,
             "probing %zu upstream(s) every %llu ms (%s, timeout %llu ms, rise %lld, fall %lld)",
             rt->nnames, (unsigned long long)c->interval_ms, c->type == HA_TCP ? "tcp" : "http",
             (unsigned long long)c->timeout_ms, c->rise, c->fall);
    return 0;

oom:
    api->log(HELIOS_LOG_ERROR, HA_NAME, "out of memory starting the probe thread");
    ha_runtime_free(rt);
    return -1;
}

static void ha_stop(void *cfg)
{
    ha_config *c = cfg;
    ha_runtime *rt = c->rt;
    if (rt == NULL)
        return;
    ev_async_send(rt->loop, &rt->stop);
    pthread_join(rt->thread, NULL);
    ha_runtime_free(rt);
    c->rt = NULL;
}

/* ---- module descriptor ---- */

static const helios_service_hooks ha_service_hooks = {
    .size = sizeof(helios_service_hooks),
    .start = ha_start, /* main thread, after workers start: spawns the probe thread */
    .stop = ha_stop,   /* main thread, before workers stop: stops and joins it */
};

static const helios_module ha_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(HA_NAME, "0.1.0"),
    .config_new = ha_config_new, /* probe settings and the upstreams to probe */
    .config_free = ha_config_free,
    .worker_init = NULL, /* nothing per worker: probes run on their own thread */
    .worker_fini = NULL,
    .filter = NULL,
    .handler = NULL,
    .balancer = NULL,
    .service = &ha_service_hooks, /* listed in the global `modules:` */
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &ha_module;
}
