/*
 * access_log.c - the access log as a module: one line per request, text or
 * JSON, to stdout or a file, written off the workers.
 *
 * A worker never touches the disk. In on_log it formats the line on its
 * stack and appends it to its own single-producer/single-consumer byte ring
 * (one ring per worker and instance, bounded by `ring_size`); a full ring
 * drops the line and counts the drop. One writer thread per instance,
 * started by the service start hook and joined by stop, drains every ring
 * with write(2).
 *
 * Reopening: heliosd's SIGUSR1 reopens only the core's own log, and a
 * module never sees signals. So the writer stat()s the path once a second
 * and reopens it when the path is gone or names another inode than the open
 * descriptor (logrotate's rename-then-create, or a plain rename/remove).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <helios.h>
#include <helios/util/http.h>
#include <helios/util/json.h>

#define AL_NAME "access_log"
#define AL_MAX_FIELDS 16
#define AL_LINE_MAX 16384  /* one formatted line, on the worker's stack */
#define AL_VALUE_MAX 512   /* escaped bytes kept per extra field */
#define AL_TARGET_MAX 4096 /* escaped bytes kept of the request target */
#define AL_FIELD_NAME_MAX 64
#define AL_IDLE_NS 10000000L /* writer sleep when every ring is empty: 10 ms */
#define AL_CHECK_MS 1000     /* path check (rotation) and drop report period */

static const helios_host_api *api;

/* ---- the per-worker ring ---- */

/*
 * Bytes [tail, head) are lines waiting for the writer. The worker is the
 * only writer of head, the writer thread the only writer of tail; both are
 * free-running counters (never wrapped), so head - tail is the fill.
 * Separate cache lines keep the two sides from bouncing one line.
 */
typedef struct al_ring {
    _Alignas(64) _Atomic uint64_t head;
    _Alignas(64) _Atomic uint64_t tail;
    _Alignas(64) _Atomic uint64_t drops; /* lines refused because the ring was full */
    uint64_t drops_reported;             /* writer thread only */
    struct al_ring *next;                /* registry list, immutable once published */
    size_t cap;                          /* power of two */
    char *data;
} al_ring;

/* ---- configuration ---- */

enum { AL_FMT_TEXT, AL_FMT_JSON };

typedef struct al_config {
    int format;
    int to_stdout;
    char path[4096];
    size_t nfields;
    const char *fields[AL_MAX_FIELDS]; /* header names, from the config tree */
    size_t ring_size;

    _Atomic(al_ring *) rings; /* every ring ever made for this instance */

    pthread_t thread;
    int thread_running;
    _Atomic int stop;
    int fd;
    dev_t dev;
    ino_t ino;
    int write_error_logged;
} al_config;

static const char *const al_keys[] = {"format", "path", "fields", "ring_size", NULL};

static int al_parse_fields(const helios_conf *n, al_config *c)
{
    if (n == NULL)
        return 0;
    if (api->conf_kind(n) != HELIOS_CONF_SEQ) {
        api->conf_error(n, "fields must be a list of request header names, e.g. [x-request-id]");
        return -1;
    }
    size_t len = api->conf_len(n);
    if (len > AL_MAX_FIELDS) {
        api->conf_error(n, "at most %d fields (got %zu)", AL_MAX_FIELDS, len);
        return -1;
    }
    int bad = 0;
    for (size_t i = 0; i < len; i++) {
        const helios_conf *item = api->conf_at(n, i);
        const char *s = api->conf_scalar(item);
        int ok = s != NULL && *s != '\0' && strlen(s) <= AL_FIELD_NAME_MAX;
        for (const char *p = s; ok && *p; p++)
            ok = helios_http_is_tchar((unsigned char)*p);
        if (!ok) {
            api->conf_error(item,
                            "not a header name (at most %d of letters, digits and "
                            "!#$%%&'*+-.^_`|~)",
                            AL_FIELD_NAME_MAX);
            bad = 1;
            continue;
        }
        c->fields[c->nfields++] = s;
    }
    return bad ? -1 : 0;
}

/* The directory must exist now: a typo is a config error, not a log line
 * repeated every second at run time. The file itself is created at start. */
static int al_check_dir(const helios_conf *n, const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash != NULL)
        *slash = '\0';
    else
        snprintf(dir, sizeof(dir), ".");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        api->conf_error(n, "directory of %s does not exist: create %s or change path", path, dir);
        return -1;
    }
    if (access(dir, W_OK) != 0 && access(path, W_OK) != 0) {
        api->conf_error(n, "%s is not writable: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int al_config_new(const helios_conf *conf, void **cfg)
{
    if (api->conf_kind(conf) != HELIOS_CONF_MAP && api->conf_kind(conf) != HELIOS_CONF_NULL) {
        api->conf_error(conf, "expected a map with format, path, fields and ring_size");
        return -1;
    }
    al_config *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    c->fd = -1;
    int bad = api->conf_check_keys(conf, al_keys) > 0;

    const char *fmt, *path;
    if (api->conf_str(conf, "format", "text", &fmt) < 0) {
        bad = 1;
    } else if (strcmp(fmt, "text") == 0) {
        c->format = AL_FMT_TEXT;
    } else if (strcmp(fmt, "json") == 0) {
        c->format = AL_FMT_JSON;
    } else {
        api->conf_error(api->conf_get(conf, "format"), "format must be text or json (got '%s')",
                        fmt);
        bad = 1;
    }

    if (api->conf_str(conf, "path", "stdout", &path) < 0) {
        bad = 1;
    } else if (strcmp(path, "stdout") == 0) {
        c->to_stdout = 1;
    } else {
        const helios_conf *pn = api->conf_get(conf, "path");
        if (api->conf_path(pn, path, c->path, sizeof(c->path)) != 0) {
            api->conf_error(pn, "path too long");
            bad = 1;
        } else if (al_check_dir(pn, c->path) != 0) {
            bad = 1;
        }
    }

    if (al_parse_fields(api->conf_get(conf, "fields"), c) != 0)
        bad = 1;

    uint64_t ring;
    if (api->conf_size(conf, "ring_size", 1u << 20, &ring) < 0) {
        bad = 1;
    } else if (ring < 4096 || ring > (256u << 20)) {
        api->conf_error(api->conf_get(conf, "ring_size"),
                        "ring_size must be from 4KiB to 256MiB (got %llu bytes)",
                        (unsigned long long)ring);
        bad = 1;
    } else {
        size_t cap = 4096;
        while (cap < ring)
            cap <<= 1;
        c->ring_size = cap;
    }

    if (bad) {
        free(c);
        return -1;
    }
    *cfg = c;
    return 0;
}

/* ---- writer thread ---- */

static void al_write_all(al_config *c, const char *p, size_t n)
{
    while (n > 0 && c->fd >= 0) {
        ssize_t w = write(c->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            /* Disk full or the like: the bytes are lost (the ring must keep
             * moving); say so once per open file. */
            if (!c->write_error_logged)
                api->log(HELIOS_LOG_ERROR, AL_NAME, "writing %s: %s; lines are being lost",
                         c->to_stdout ? "stdout" : c->path,
                         w < 0 ? strerror(errno) : "short write");
            c->write_error_logged = 1;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

/* Writes out everything in the rings; returns the bytes moved. */
static size_t al_drain(al_config *c)
{
    size_t moved = 0;
    for (al_ring *r = atomic_load_explicit(&c->rings, memory_order_acquire); r; r = r->next) {
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        if (head == tail)
            continue;
        size_t off = (size_t)(tail & (r->cap - 1));
        size_t n = (size_t)(head - tail);
        size_t first = n < r->cap - off ? n : r->cap - off;
        al_write_all(c, r->data + off, first);
        if (n > first)
            al_write_all(c, r->data, n - first);
        atomic_store_explicit(&r->tail, head, memory_order_release);
        moved += n;
    }
    return moved;
}

static void al_report_drops(al_config *c)
{
    for (al_ring *r = atomic_load_explicit(&c->rings, memory_order_acquire); r; r = r->next) {
        uint64_t d = atomic_load_explicit(&r->drops, memory_order_relaxed);
        if (d != r->drops_reported) {
            api->log(HELIOS_LOG_WARN, AL_NAME,
                     "ring full: dropped %llu lines (%llu in total on this ring of %zu bytes); "
                     "raise ring_size or use a faster disk",
                     (unsigned long long)(d - r->drops_reported), (unsigned long long)d, r->cap);
            r->drops_reported = d;
        }
    }
}

static int al_open(al_config *c)
{
    if (c->to_stdout) {
        c->fd = STDOUT_FILENO;
        return 0;
    }
    int fd = open(c->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        api->log(HELIOS_LOG_ERROR, AL_NAME, "cannot open %s: %s (retrying every second)", c->path,
                 strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0) {
        c->dev = st.st_dev;
        c->ino = st.st_ino;
    }
    c->fd = fd;
    c->write_error_logged = 0;
    return 0;
}

static void al_close(al_config *c)
{
    if (c->fd >= 0 && !c->to_stdout)
        close(c->fd);
    c->fd = -1;
}

/* The rotation check: reopen when PATH no longer names our file. */
static void al_check_path(al_config *c)
{
    if (c->to_stdout)
        return;
    struct stat st;
    if (c->fd >= 0 && stat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino)
        return;
    if (c->fd >= 0) {
        /* Lines already in the rings belong to the old file's period. */
        al_drain(c);
        al_close(c);
        api->log(HELIOS_LOG_INFO, AL_NAME, "%s was moved or removed: reopening", c->path);
    }
    al_open(c);
}

static uint64_t al_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void *al_writer(void *arg)
{
    al_config *c = arg;
    uint64_t next_check = al_mono_ms() + AL_CHECK_MS;
    while (!atomic_load_explicit(&c->stop, memory_order_acquire)) {
        size_t moved = al_drain(c);
        uint64_t now = al_mono_ms();
        if (now >= next_check) {
            al_check_path(c);
            al_report_drops(c);
            next_check = now + AL_CHECK_MS;
        }
        if (moved == 0) {
            struct timespec ts = {0, AL_IDLE_NS};
            nanosleep(&ts, NULL);
        }
    }
    al_drain(c);
    al_report_drops(c);
    return NULL;
}

static int al_start(void *cfg)
{
    al_config *c = cfg;
    al_open(c); /* a failure is retried by the writer's path check */
    atomic_store(&c->stop, 0);
    int err = pthread_create(&c->thread, NULL, al_writer, c);
    if (err != 0) {
        api->log(HELIOS_LOG_ERROR, AL_NAME, "cannot start the writer thread: %s", strerror(err));
        al_close(c);
        return -1;
    }
    c->thread_running = 1;
    return 0;
}

static void al_stop(void *cfg)
{
    al_config *c = cfg;
    if (!c->thread_running)
        return;
    atomic_store_explicit(&c->stop, 1, memory_order_release);
    pthread_join(c->thread, NULL);
    c->thread_running = 0;
}

/*
 * Runs once no worker uses the generation any more. Requests of an old
 * generation may finish (and log) after its service stopped, so the last
 * lines are written here, by the main thread.
 */
static void al_config_free(void *cfg)
{
    al_config *c = cfg;
    al_stop(c);
    al_ring *r = atomic_load(&c->rings);
    if (r != NULL) {
        if (c->fd < 0)
            al_open(c);
        al_drain(c);
        al_report_drops(c);
    }
    al_close(c);
    while (r != NULL) {
        al_ring *next = r->next;
        free(r->data);
        free(r);
        r = next;
    }
    free(c);
}

/* ---- per worker ---- */

static int al_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)w;
    al_config *c = cfg;
    al_ring *r = aligned_alloc(64, sizeof(*r));
    if (r == NULL)
        return -1;
    memset(r, 0, sizeof(*r));
    r->cap = c->ring_size;
    r->data = malloc(r->cap);
    if (r->data == NULL) {
        free(r);
        api->log(HELIOS_LOG_ERROR, AL_NAME, "out of memory for a %zu-byte ring", c->ring_size);
        return -1;
    }
    /* Lock-free push: the writer only ever walks the list. */
    al_ring *head = atomic_load_explicit(&c->rings, memory_order_relaxed);
    do {
        r->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&c->rings, &head, r, memory_order_release,
                                                    memory_order_relaxed));
    *wstate = r;
    return 0;
}

/* The ring stays registered until config_free: the writer may be reading
 * it, and lines still in it must reach the file. */
static void al_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    (void)wstate;
}

/* ---- formatting ---- */

typedef struct al_out {
    char *p;
    size_t len, cap;
} al_out;

static void al_put(al_out *o, const char *s, size_t n)
{
    if (n > o->cap - o->len)
        n = o->cap - o->len;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void al_puts(al_out *o, const char *s)
{
    al_put(o, s, strlen(s));
}

static void al_printf(al_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void al_printf(al_out *o, const char *fmt, ...)
{
    if (o->cap - o->len < 2)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n < o->cap - o->len ? (size_t)n : o->cap - o->len - 1;
}

/* Text: control bytes, non-ASCII, quotes and backslashes become \xHH so a
 * client cannot forge a line or a field. */
static void al_text_esc(al_out *o, const char *s, size_t n, size_t max)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t start = o->len;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char e[4];
        size_t k = 0;
        if (ch < 0x21 || ch >= 0x7f || ch == '"' || ch == '\\') {
            e[0] = '\\', e[1] = 'x', e[2] = hex[ch >> 4], e[3] = hex[ch & 15];
            k = 4;
        } else {
            e[k++] = (char)ch;
        }
        if (o->len - start + k > max || o->cap - o->len < k)
            return;
        al_put(o, e, k);
    }
}

static void al_client(helios_request *r, char *buf, size_t size)
{
    const struct sockaddr *sa = api->req_client(r);
    snprintf(buf, size, "-");
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf,
                  (socklen_t)size);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf,
                  (socklen_t)size);
}

static size_t al_format(const al_config *c, helios_request *r, char *line, size_t cap)
{
    helios_req_stats st;
    memset(&st, 0, sizeof(st));
    st.size = sizeof(st);
    st.upstream_ms = -1;
    st.upstream_ttfb_us = -1;
    st.backend_health = st.backend_breaker = -1;
    api->req_stats(r, &st);

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char ts[96];
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(now.tv_nsec / 1000000));
    char client[INET6_ADDRSTRLEN + 1];
    al_client(r, client, sizeof(client));
    helios_buf method = api->req_method(r);
    helios_buf target = api->req_target(r);
    const char *route = api->req_route(r);
    const char *proto = st.protocol ? st.protocol : api->req_protocol(r);
    const char *up = st.upstream && st.upstream[0] ? st.upstream : NULL;

    al_out o = {line, 0, cap - 1}; /* room for the final '\n' */
    if (c->format == AL_FMT_JSON) {
        helios_buf rid = api->req_var_get(r, "request_id");
        if (rid.ptr == NULL)
            rid = api->req_header(r, "x-request-id");
        helios_access_entry e = {
            .time = ts,
            .request_id = rid,
            .connection_id = st.connection_id,
            .client = client[0] != '-' ? client : NULL,
            .method = method,
            .path = target,
            .protocol = proto,
            .status = st.status,
            .bytes_in = st.bytes_in,
            .bytes_out = st.bytes_out,
            .duration_ms = st.duration_ms,
            .route = route,
            .upstream = up,
            .backend = st.backend_name,
            .upstream_ms = st.upstream_ms,
            .upstream_ttfb_ms =
                st.upstream_ttfb_us >= 0 ? (st.upstream_ttfb_us + 500) / 1000 : -1,
            .tries = st.attempts,
            .backend_health = st.backend_health,
            .breaker = st.backend_breaker,
            .tls = st.tls_version,
            .cipher = st.tls_cipher,
            .aborted = st.aborted,
            .worker = (int)api->worker_index(api->req_worker(r)),
        };
        helios_jbuf j = {line, 0, cap - 1, 0};
        helios_access_json_begin(&j, &e);
        if (c->nfields > 0) {
            helios_jbuf_puts(&j, ",\"headers\":{");
            for (size_t i = 0; i < c->nfields; i++) {
                helios_buf v = api->req_header(r, c->fields[i]);
                if (i)
                    helios_jbuf_puts(&j, ",");
                helios_json_cstr(&j, c->fields[i], AL_FIELD_NAME_MAX);
                helios_jbuf_puts(&j, ":");
                helios_json_str(&j, v.ptr, v.len, AL_VALUE_MAX);
            }
            helios_jbuf_puts(&j, "}");
        }
        helios_access_json_end(&j, &e);
        return j.len;
    } else {
        al_printf(&o, "%s %s \"", ts, client);
        al_text_esc(&o, method.ptr ? method.ptr : "-", method.ptr ? method.len : 1, 64);
        al_puts(&o, " ");
        al_text_esc(&o, target.ptr ? target.ptr : "", target.ptr ? target.len : 0, AL_TARGET_MAX);
        al_printf(&o, " %s\" %d %llu %llu %llu route=", proto ? proto : "-", st.status,
                  (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out,
                  (unsigned long long)st.duration_ms);
        if (route && route[0])
            al_text_esc(&o, route, strlen(route), 256);
        else
            al_puts(&o, "-");
        al_printf(&o, " upstream=%s upstream_ms=%lld tries=%u", up ? up : "-",
                  (long long)st.upstream_ms, st.attempts);
        for (size_t i = 0; i < c->nfields; i++) {
            helios_buf v = api->req_header(r, c->fields[i]);
            al_printf(&o, " %s=", c->fields[i]);
            if (v.ptr == NULL) {
                al_puts(&o, "-");
            } else {
                al_puts(&o, "\"");
                al_text_esc(&o, v.ptr, v.len, AL_VALUE_MAX);
                al_puts(&o, "\"");
            }
        }
        if (st.aborted)
            al_puts(&o, " aborted");
    }
    line[o.len++] = '\n';
    return o.len;
}

/* ---- hooks ---- */

/* Worker thread: format, then append the whole line or drop it. */
static void al_on_log(helios_ctx *ctx)
{
    al_ring *r = ctx->wstate;
    if (r == NULL)
        return;
    char line[AL_LINE_MAX];
    size_t n = al_format(ctx->cfg, ctx->req, line, sizeof(line));

    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (r->cap - (size_t)(head - tail) < n) {
        atomic_fetch_add_explicit(&r->drops, 1, memory_order_relaxed);
        return;
    }
    size_t off = (size_t)(head & (r->cap - 1));
    size_t first = n < r->cap - off ? n : r->cap - off;
    memcpy(r->data + off, line, first);
    memcpy(r->data, line + first, n - first);
    atomic_store_explicit(&r->head, head + n, memory_order_release);
}

/* ---- module descriptor ---- */

static const helios_filter_hooks al_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_log = al_on_log, /* format and enqueue one line; never blocks */
};

static const helios_service_hooks al_service_hooks = {
    .size = sizeof(helios_service_hooks),
    .start = al_start, /* open the file, start the writer thread */
    .stop = al_stop,   /* join the writer after a last drain */
};

static const helios_module al_module = {
    HELIOS_MODULE_HEADER(AL_NAME, "1.0.0"),
    .config_new = al_config_new,   /* main thread, per generation */
    .config_free = al_config_free, /* writes what is left, frees the rings */
    .worker_init = al_worker_init, /* one ring per worker */
    .worker_fini = al_worker_fini,
    .filter = &al_filter_hooks,
    .service = &al_service_hooks,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &al_module;
}
