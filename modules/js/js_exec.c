/*
 * js_exec.c - `heliosd exec script.js [-s]`: runs a script once, the way
 * node runs one, and exits (a command of the module's descriptor, ABI 1.2).
 *
 * The script gets the same runtime as a handler (prelude, Web APIs), with
 * four differences that a worker does not need:
 *   - console writes to stdout (log, info, debug) and stderr (warn, error);
 *   - setTimeout/setInterval work at the top level, on a loop of this file;
 *   - fetch() is a real HTTP/1.1 client for absolute http:// and https://
 *     URLs: DNS (getaddrinfo), TLS verified against the system's CAs with
 *     the host name checked, redirects followed only with
 *     `redirect: 'follow'` (at most 20); not heliosd's upstreams;
 *   - no cpu_limit; memory_limit 1 GiB.
 * The loop runs until no timer or fetch is left. An uncaught exception (the
 * top level, a timer, a promise rejected with no handler once the jobs have
 * run) prints its stack on stderr and exits 1.
 *
 * Simplicity over concurrency: fetches run one at a time, each to its end
 * (Connection: close, the body read whole, at most JS_EXEC_MAX_BODY), and
 * timers due meanwhile fire after it. A command-line script does not need
 * more; a server does, and has heliosd's subrequests.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "js_internal.h"

#define JS_EXEC_MAX_BODY (64u << 20)
#define JS_EXEC_IO_MS 30000
#define JS_EXEC_REDIRECTS 20

typedef struct js_xtimer {
    int id;
    uint64_t due_ms, every_ms; /* every: setInterval, 0 = once */
    JSValue fn;
    struct js_xtimer *next;
} js_xtimer;

typedef struct js_xfetch {
    int id;
    int follow;
    char *method, *url;
    JSValue hdrs, body; /* [[name, value]...] | null; string | ArrayBuffer | null */
    JSValue res[2], sink;
    struct js_xfetch *next;
} js_xfetch;

typedef struct js_xreject {
    JSValue promise, reason;
    struct js_xreject *next;
} js_xreject;

struct js_exec {
    js_worker *ws;
    js_xtimer *timers;
    js_xfetch *fetches, **fetch_tail;
    js_xreject *rejected;
    SSL_CTX *tls;
    int next_id;
    int failed;
};

static uint64_t js_exec_ms(void)
{
    return js_now_us() / 1000u;
}

/* ------------------------------------------------------------------ */
/* uncaught errors                                                      */

static void js_exec_uncaught(js_exec *x, JSValueConst e, const char *what)
{
    js_worker *ws = x->ws;
    char *text = js_error_text(ws, e);
    fflush(stdout);
    fprintf(stderr, "%s%s%s\n", what ? what : "", what ? ": " : "",
            text ? text : "uncaught exception (no memory to describe it)");
    free(text);
    x->failed = 1;
}

/* QuickJS calls this when a promise is rejected with no handler (and again,
 * IS_HANDLED set, if one is attached later). */
static void js_exec_track(JSContext *ctx, JSValueConst promise, JSValueConst reason,
                          JS_BOOL is_handled, void *opaque)
{
    js_exec *x = opaque;
    if (is_handled) {
        for (js_xreject **p = &x->rejected; *p; p = &(*p)->next)
            if (JS_VALUE_GET_PTR((*p)->promise) == JS_VALUE_GET_PTR(promise)) {
                js_xreject *r = *p;
                *p = r->next;
                JS_FreeValue(ctx, r->promise);
                JS_FreeValue(ctx, r->reason);
                free(r);
                return;
            }
        return;
    }
    js_xreject *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return;
    r->promise = JS_DupValue(ctx, promise);
    r->reason = JS_DupValue(ctx, reason);
    r->next = x->rejected;
    x->rejected = r;
}

/* Runs the promise jobs; then a rejection nobody handled is uncaught. */
static void js_exec_drain(js_exec *x)
{
    JSContext *ctx = x->ws->ctx, *c1;
    for (;;) {
        int rc = JS_ExecutePendingJob(x->ws->rt, &c1);
        if (rc == 0)
            break;
        if (rc < 0) {
            JSValue e = JS_GetException(ctx);
            js_exec_uncaught(x, e, NULL);
            JS_FreeValue(ctx, e);
        }
    }
    while (x->rejected) {
        js_xreject *r = x->rejected;
        x->rejected = r->next;
        if (!x->failed)
            js_exec_uncaught(x, r->reason, "Uncaught (in promise)");
        JS_FreeValue(ctx, r->promise);
        JS_FreeValue(ctx, r->reason);
        free(r);
    }
}

static void js_exec_call(js_exec *x, JSValueConst fn, int argc, JSValueConst *argv)
{
    JSContext *ctx = x->ws->ctx;
    JSValue r = JS_Call(ctx, fn, JS_UNDEFINED, argc, argv);
    if (JS_IsException(r)) {
        JSValue e = JS_GetException(ctx);
        js_exec_uncaught(x, e, NULL);
        JS_FreeValue(ctx, e);
    }
    JS_FreeValue(ctx, r);
    js_exec_drain(x);
}

void js_exec_runtime_init(js_worker *ws)
{
    JS_SetHostPromiseRejectionTracker(ws->rt, js_exec_track, ws->exec);
}

/* ------------------------------------------------------------------ */
/* console, timers                                                      */

void js_exec_log(js_worker *ws, int level, const char *s)
{
    (void)ws;
    FILE *f = level <= HELIOS_LOG_WARN ? stderr : stdout;
    if (f == stderr)
        fflush(stdout);
    fputs(s, f);
    fputc('\n', f);
}

JSValue js_exec_set_timeout(JSContext *ctx, int argc, JSValueConst *argv)
{
    js_exec *x = js_ws(ctx)->exec;
    double ms;
    if (JS_ToFloat64(ctx, &ms, argv[1]))
        return JS_EXCEPTION;
    if (!(ms >= 0))
        ms = 0;
    js_xtimer *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return JS_ThrowOutOfMemory(ctx);
    t->fn = JS_DupValue(ctx, argv[0]);
    if (argc > 2 && JS_ToBool(ctx, argv[2]))
        t->every_ms = ms >= 1 ? (uint64_t)ms : 1;
    t->due_ms = js_exec_ms() + (uint64_t)ms;
    t->id = ++x->next_id;
    t->next = x->timers;
    x->timers = t;
    return JS_NewInt32(ctx, t->id);
}

JSValue js_exec_clear_timeout(JSContext *ctx, JSValueConst *argv)
{
    js_exec *x = js_ws(ctx)->exec;
    int id;
    if (JS_ToInt32(ctx, &id, argv[0]))
        return JS_EXCEPTION;
    for (js_xtimer **p = &x->timers; *p; p = &(*p)->next)
        if ((*p)->id == id) {
            js_xtimer *t = *p;
            *p = t->next;
            JS_FreeValue(ctx, t->fn);
            free(t);
            break;
        }
    return JS_UNDEFINED;
}

/* The timer due first (the oldest among equals), or NULL. */
static js_xtimer *js_exec_next_timer(js_exec *x)
{
    js_xtimer *best = NULL;
    for (js_xtimer *t = x->timers; t; t = t->next)
        if (best == NULL || t->due_ms < best->due_ms ||
            (t->due_ms == best->due_ms && t->id < best->id))
            best = t;
    return best;
}

static void js_exec_fire(js_exec *x, js_xtimer *t)
{
    JSContext *ctx = x->ws->ctx;
    JSValue fn = JS_DupValue(ctx, t->fn);
    if (t->every_ms) {
        t->due_ms = js_exec_ms() + t->every_ms;
    } else {
        for (js_xtimer **p = &x->timers; *p; p = &(*p)->next)
            if (*p == t) {
                *p = t->next;
                break;
            }
        JS_FreeValue(ctx, t->fn);
        free(t);
    }
    js_exec_call(x, fn, 0, NULL);
    JS_FreeValue(ctx, fn);
}

/* ------------------------------------------------------------------ */
/* fetch: an HTTP/1.1 client, one request per connection               */

/* hx.fetch(tok, hostname, method, target, headers, body, host, sink,
 * protocol, follow) -> [Promise<[status, statusText, [name, value...]]>,
 * id]; the body then goes to sink(chunk, done, error). */
JSValue js_exec_fetch(JSContext *ctx, int argc, JSValueConst *argv)
{
    js_exec *x = js_ws(ctx)->exec;
    const char *proto = argc > 8 ? JS_ToCString(ctx, argv[8]) : NULL;
    const char *host = JS_ToCString(ctx, argv[6]);
    const char *target = JS_ToCString(ctx, argv[3]);
    const char *method = JS_ToCString(ctx, argv[2]);
    JSValue ret = JS_EXCEPTION;
    if (proto == NULL || host == NULL || target == NULL || method == NULL)
        goto out;
    if (strcmp(proto, "http:") != 0 && strcmp(proto, "https:") != 0) {
        /* a rejected promise, as fetch() gives for any failure */
        JSValue res[2];
        JSValue p = JS_NewPromiseCapability(ctx, res);
        if (JS_IsException(p))
            goto out;
        JS_ThrowTypeError(ctx, "fetch(): only http: and https: URLs (not %s)", proto);
        JSValue e = JS_GetException(ctx);
        JSValue r = JS_Call(ctx, res[1], JS_UNDEFINED, 1, (JSValueConst *)&e);
        JS_FreeValue(ctx, r);
        JS_FreeValue(ctx, e);
        JS_FreeValue(ctx, res[0]);
        JS_FreeValue(ctx, res[1]);
        ret = JS_NewArray(ctx);
        JS_SetPropertyUint32(ctx, ret, 0, p);
        JS_SetPropertyUint32(ctx, ret, 1, JS_NewInt32(ctx, 0));
        goto out;
    }
    js_xfetch *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        ret = JS_ThrowOutOfMemory(ctx);
        goto out;
    }
    size_t ul = strlen(proto) + strlen(host) + strlen(target) + 3;
    f->url = malloc(ul);
    f->method = strdup(method);
    f->res[0] = f->res[1] = JS_UNDEFINED;
    JSValue p = JS_NewPromiseCapability(ctx, f->res);
    if (f->url == NULL || f->method == NULL || JS_IsException(p)) {
        free(f->url);
        free(f->method);
        JS_FreeValue(ctx, f->res[0]);
        JS_FreeValue(ctx, f->res[1]);
        free(f);
        ret = JS_IsException(p) ? p : JS_ThrowOutOfMemory(ctx);
        goto out;
    }
    snprintf(f->url, ul, "%s//%s%s", proto, host, target);
    f->follow = argc > 9 && JS_ToBool(ctx, argv[9]);
    f->hdrs = JS_DupValue(ctx, argv[4]);
    f->body = JS_DupValue(ctx, argv[5]);
    f->sink = JS_DupValue(ctx, argv[7]);
    f->id = ++x->next_id;
    *x->fetch_tail = f;
    x->fetch_tail = &f->next;
    ret = JS_NewArray(ctx);
    JS_SetPropertyUint32(ctx, ret, 0, p);
    JS_SetPropertyUint32(ctx, ret, 1, JS_NewInt32(ctx, f->id));
out:
    JS_FreeCString(ctx, proto);
    JS_FreeCString(ctx, host);
    JS_FreeCString(ctx, target);
    JS_FreeCString(ctx, method);
    return ret;
}

static void js_xfetch_free(JSContext *ctx, js_xfetch *f)
{
    JS_FreeValue(ctx, f->hdrs);
    JS_FreeValue(ctx, f->body);
    JS_FreeValue(ctx, f->res[0]);
    JS_FreeValue(ctx, f->res[1]);
    JS_FreeValue(ctx, f->sink);
    free(f->method);
    free(f->url);
    free(f);
}

typedef struct js_buf {
    char *p;
    size_t len, cap;
} js_buf;

static int js_buf_add(js_buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (q == NULL)
            return -1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

typedef struct js_url {
    int tls;
    char host[300];     /* Host header: name[:port] as in the URL */
    char hostname[256]; /* for DNS and TLS, without brackets */
    char port[8];
    const char *target; /* into the URL: path and query */
} js_url;

/* Splits an absolute http(s) URL. 0, or -1. */
static int js_url_parse(const char *url, js_url *u)
{
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0) {
        u->tls = 0;
        p = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        u->tls = 1;
        p = url + 8;
    } else {
        return -1;
    }
    size_t hl = strcspn(p, "/?#");
    if (hl == 0 || hl >= sizeof(u->host))
        return -1;
    memcpy(u->host, p, hl);
    u->host[hl] = '\0';
    u->target = p[hl] == '/' ? p + hl : (p[hl] == '?' ? p + hl : "/");
    const char *h = u->host, *colon;
    size_t nl;
    if (h[0] == '[') {
        const char *end = strchr(h, ']');
        if (end == NULL)
            return -1;
        h++;
        nl = (size_t)(end - h);
        colon = end[1] == ':' ? end + 1 : NULL;
    } else {
        colon = strrchr(h, ':');
        nl = colon ? (size_t)(colon - h) : strlen(h);
    }
    if (nl == 0 || nl >= sizeof(u->hostname))
        return -1;
    memcpy(u->hostname, h, nl);
    u->hostname[nl] = '\0';
    snprintf(u->port, sizeof(u->port), "%s",
             colon && colon[1] ? colon + 1 : (u->tls ? "443" : "80"));
    return 0;
}

typedef struct js_conn {
    int fd;
    SSL *ssl;
} js_conn;

static int js_wait(int fd, short ev)
{
    struct pollfd pfd = {fd, ev, 0};
    int n;
    do
        n = poll(&pfd, 1, JS_EXEC_IO_MS);
    while (n < 0 && errno == EINTR);
    return n > 0 ? 0 : -1;
}

static int js_connect(const js_url *u, char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_socktype = SOCK_STREAM;
    int g = getaddrinfo(u->hostname, u->port, &hints, &ai);
    if (g != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", u->hostname, gai_strerror(g));
        return -1;
    }
    int fd = -1, e = 0;
    for (struct addrinfo *a = ai; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) {
            e = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            e = errno;
        } else if (js_wait(fd, POLLOUT) != 0) {
            e = ETIMEDOUT;
        } else {
            socklen_t sl = sizeof(e);
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) != 0)
                e = errno;
            if (e == 0)
                break;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0)
        snprintf(err, errlen, "cannot connect to %s port %s: %s", u->hostname, u->port,
                 strerror(e));
    return fd;
}

static void js_tls_error(const char *what, char *err, size_t errlen)
{
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(err, errlen, "%s: %s", what, e ? buf : "connection closed");
    ERR_clear_error();
}

/* TLS on C->fd: the system's CAs, the URL's host name checked. */
static int js_tls_start(js_exec *x, js_conn *c, const js_url *u, char *err, size_t errlen)
{
    if (x->tls == NULL) {
        x->tls = SSL_CTX_new(TLS_client_method());
        if (x->tls == NULL || SSL_CTX_set_default_verify_paths(x->tls) != 1) {
            js_tls_error("TLS setup", err, errlen);
            return -1;
        }
        SSL_CTX_set_verify(x->tls, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_min_proto_version(x->tls, TLS1_2_VERSION);
        static const unsigned char alpn[] = "\x08http/1.1";
        SSL_CTX_set_alpn_protos(x->tls, alpn, sizeof(alpn) - 1);
    }
    c->ssl = SSL_new(x->tls);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
        js_tls_error("TLS setup", err, errlen);
        return -1;
    }
    int ip = strchr(u->hostname, ':') != NULL ||
             strspn(u->hostname, "0123456789.") == strlen(u->hostname);
    if (ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), u->hostname);
    } else {
        SSL_set_tlsext_host_name(c->ssl, u->hostname);
        SSL_set1_host(c->ssl, u->hostname);
    }
    for (;;) {
        int r = SSL_connect(c->ssl);
        if (r == 1)
            return 0;
        int e = SSL_get_error(c->ssl, r);
        if ((e == SSL_ERROR_WANT_READ && js_wait(c->fd, POLLIN) == 0) ||
            (e == SSL_ERROR_WANT_WRITE && js_wait(c->fd, POLLOUT) == 0))
            continue;
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK) {
            snprintf(err, errlen, "TLS: %s: certificate verification failed: %s", u->hostname,
                     X509_verify_cert_error_string(v));
            ERR_clear_error();
        } else {
            js_tls_error("TLS handshake", err, errlen);
        }
        return -1;
    }
}

static int js_send_all(js_conn *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w;
        if (c->ssl) {
            int r = SSL_write(c->ssl, p, (int)(n > 1 << 30 ? 1 << 30 : n));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if ((e == SSL_ERROR_WANT_WRITE && js_wait(c->fd, POLLOUT) == 0) ||
                    (e == SSL_ERROR_WANT_READ && js_wait(c->fd, POLLIN) == 0))
                    continue;
                return -1;
            }
            w = r;
        } else {
            w = send(c->fd, p, n, MSG_NOSIGNAL);
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
                if (js_wait(c->fd, POLLOUT) != 0)
                    return -1;
                continue;
            }
            if (w < 0)
                return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads until the peer closes (the request said Connection: close). */
static int js_recv_all(js_conn *c, js_buf *b, char *err, size_t errlen)
{
    char tmp[16384];
    for (;;) {
        ssize_t n;
        if (c->ssl) {
            int r = SSL_read(c->ssl, tmp, sizeof(tmp));
            if (r <= 0) {
                int e = SSL_get_error(c->ssl, r);
                if ((e == SSL_ERROR_WANT_READ && js_wait(c->fd, POLLIN) == 0) ||
                    (e == SSL_ERROR_WANT_WRITE && js_wait(c->fd, POLLOUT) == 0))
                    continue;
                if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL)
                    return 0; /* closed (a missing close_notify is common) */
                js_tls_error("TLS read", err, errlen);
                return -1;
            }
            n = r;
        } else {
            n = recv(c->fd, tmp, sizeof(tmp), 0);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                if (js_wait(c->fd, POLLIN) != 0) {
                    snprintf(err, errlen, "no answer within %d s", JS_EXEC_IO_MS / 1000);
                    return -1;
                }
                continue;
            }
            if (n < 0) {
                snprintf(err, errlen, "read: %s", strerror(errno));
                return -1;
            }
            if (n == 0)
                return 0;
        }
        if (b->len + (size_t)n > JS_EXEC_MAX_BODY + 65536) {
            snprintf(err, errlen, "the response is larger than %u MiB", JS_EXEC_MAX_BODY >> 20);
            return -1;
        }
        if (js_buf_add(b, tmp, (size_t)n) != 0) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
}

typedef struct js_hdr_out {
    js_buf *b;
    int has_ua, has_accept;
} js_hdr_out;

static int js_hdr_emit(void *arg, const char *n, const char *v)
{
    js_hdr_out *o = arg;
    if (js_hop_header(n) || strcasecmp(n, "host") == 0 || strcasecmp(n, "content-length") == 0)
        return 0;
    o->has_ua |= strcasecmp(n, "user-agent") == 0;
    o->has_accept |= strcasecmp(n, "accept") == 0;
    if (js_buf_add(o->b, n, strlen(n)) || js_buf_add(o->b, ": ", 2) ||
        js_buf_add(o->b, v, strlen(v)) || js_buf_add(o->b, "\r\n", 2))
        return -1;
    return 0;
}

/* A response, parsed. */
typedef struct js_resp {
    int status;
    char *head; /* the header lines, NUL-separated pairs below point into it */
    size_t nh;
    char *names[200], *values[200];
    const char *body;
    size_t body_len;
    js_buf dechunked;
} js_resp;

static const char *js_resp_get(const js_resp *r, const char *name)
{
    for (size_t i = 0; i < r->nh; i++)
        if (strcasecmp(r->names[i], name) == 0)
            return r->values[i];
    return NULL;
}

/* Parses B (the whole response) into R; -1 with a message if malformed. */
static int js_resp_parse(js_buf *b, int head_only, js_resp *r, char *err, size_t errlen)
{
    char *end = b->p ? strstr(b->p, "\r\n\r\n") : NULL;
    if (end == NULL || strncmp(b->p, "HTTP/1.", 7) != 0 || b->len < 12) {
        snprintf(err, errlen, "not an HTTP/1.x response");
        return -1;
    }
    *end = '\0';
    r->status = atoi(b->p + 9);
    if (r->status < 100 || r->status > 599) {
        snprintf(err, errlen, "invalid status line");
        return -1;
    }
    char *line = strstr(b->p, "\r\n");
    while (line && line < end && r->nh < sizeof(r->names) / sizeof(r->names[0])) {
        *line = '\0';
        line += 2;
        char *next = strstr(line, "\r\n");
        if (next)
            *next = '\0';
        char *colon = strchr(line, ':');
        if (colon) {
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t vl = strlen(v);
            while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                v[--vl] = '\0';
            for (char *k = line; *k; k++)
                *k = (char)(*k >= 'A' && *k <= 'Z' ? *k + 32 : *k);
            r->names[r->nh] = line;
            r->values[r->nh++] = v;
        }
        if (next)
            *next = '\r';
        line = next;
    }
    const char *body = end + 4;
    size_t blen = b->len - (size_t)(body - b->p);
    if (head_only || r->status == 204 || r->status == 304 || r->status < 200) {
        r->body = body;
        r->body_len = 0;
        return 0;
    }
    const char *te = js_resp_get(r, "transfer-encoding");
    const char *cl = js_resp_get(r, "content-length");
    if (te && strcasestr(te, "chunked")) {
        const char *p = body, *lim = body + blen;
        for (;;) {
            char *e;
            unsigned long long n = strtoull(p, &e, 16);
            const char *eol = memmem(p, (size_t)(lim - p), "\r\n", 2);
            if (e == p || eol == NULL || n > JS_EXEC_MAX_BODY || (size_t)(lim - eol - 2) < n) {
                snprintf(err, errlen, "invalid or truncated chunked body");
                return -1;
            }
            if (n == 0)
                break;
            if (js_buf_add(&r->dechunked, eol + 2, (size_t)n) != 0) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            p = eol + 2 + n + 2;
            if (p > lim) {
                snprintf(err, errlen, "truncated chunked body");
                return -1;
            }
        }
        r->body = r->dechunked.p ? r->dechunked.p : "";
        r->body_len = r->dechunked.len;
    } else if (cl) {
        unsigned long long n = strtoull(cl, NULL, 10);
        if (n > blen) {
            snprintf(err, errlen, "the body ended after %zu of %llu bytes", blen, n);
            return -1;
        }
        r->body = body;
        r->body_len = (size_t)n;
    } else {
        r->body = body;
        r->body_len = blen;
    }
    if (r->body_len > JS_EXEC_MAX_BODY) {
        snprintf(err, errlen, "the body is larger than %u MiB", JS_EXEC_MAX_BODY >> 20);
        return -1;
    }
    return 0;
}

/* One request/response exchange on a new connection. Fills RAW with the
 * whole response. */
static int js_exchange(js_exec *x, const js_url *u, const char *method, js_buf *req,
                       const uint8_t *body, size_t blen, js_buf *raw, char *err, size_t errlen)
{
    js_conn c = {-1, NULL};
    int rc = -1;
    if ((c.fd = js_connect(u, err, errlen)) < 0)
        return -1;
    if (u->tls && js_tls_start(x, &c, u, err, errlen) != 0)
        goto out;
    if (js_send_all(&c, req->p, req->len) != 0 ||
        (blen && js_send_all(&c, (const char *)body, blen) != 0)) {
        snprintf(err, errlen, "sending the %s request failed: %s", method, strerror(errno));
        goto out;
    }
    rc = js_recv_all(&c, raw, err, errlen);
out:
    if (c.ssl) {
        SSL_shutdown(c.ssl);
        SSL_free(c.ssl);
    }
    close(c.fd);
    return rc;
}

static void js_exec_reject(js_exec *x, js_xfetch *f, const char *url, const char *msg)
{
    JSContext *ctx = x->ws->ctx;
    JS_ThrowTypeError(ctx, "fetch failed: %s: %s", url, msg);
    JSValue e = JS_GetException(ctx);
    js_exec_call(x, f->res[1], 1, (JSValueConst *)&e);
    JS_FreeValue(ctx, e);
}

/* Sends F and settles its promise (and feeds its body). */
static void js_exec_do_fetch(js_exec *x, js_xfetch *f)
{
    JSContext *ctx = x->ws->ctx;
    char err[512] = "", url[4096];
    snprintf(url, sizeof(url), "%s", f->url);
    char method[32];
    snprintf(method, sizeof(method), "%s", f->method);
    const char *hold = NULL;
    const uint8_t *body = NULL;
    size_t blen = 0;
    if (!JS_IsNull(f->body) && !JS_IsUndefined(f->body) &&
        js_bytes(ctx, f->body, &hold, &body, &blen) != 0) {
        JSValue e = JS_GetException(ctx);
        js_exec_call(x, f->res[1], 1, (JSValueConst *)&e);
        JS_FreeValue(ctx, e);
        return;
    }
    js_buf raw = {0};
    js_resp r;
    for (int hops = 0;; hops++) {
        memset(&r, 0, sizeof(r));
        js_url u;
        if (js_url_parse(url, &u) != 0) {
            snprintf(err, sizeof(err), "not an absolute http(s) URL");
            break;
        }
        js_buf req = {0};
        js_hdr_out ho = {&req, 0, 0};
        char line[4500];
        snprintf(line, sizeof(line), "%s %s HTTP/1.1\r\nHost: %s\r\n", method, u.target, u.host);
        int bad = js_buf_add(&req, line, strlen(line));
        if (!bad && !JS_IsNull(f->hdrs) && !JS_IsUndefined(f->hdrs) &&
            js_pairs(ctx, f->hdrs, js_hdr_emit, &ho) != 0) {
            JS_FreeValue(ctx, JS_GetException(ctx));
            bad = 1;
        }
        int has_body = blen > 0 || (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0);
        char cl[48] = "";
        if (has_body)
            snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", blen);
        snprintf(line, sizeof(line), "%s%s%sConnection: close\r\n\r\n",
                 ho.has_ua ? "" : "User-Agent: heliosd-exec\r\n",
                 ho.has_accept ? "" : "Accept: */*\r\n", cl);
        bad = bad || js_buf_add(&req, line, strlen(line));
        if (bad) {
            free(req.p);
            snprintf(err, sizeof(err), "cannot build the request (out of memory?)");
            break;
        }
        raw.len = 0;
        int rc = js_exchange(x, &u, method, &req, body, blen, &raw, err, sizeof(err));
        free(req.p);
        if (rc != 0 || js_resp_parse(&raw, strcmp(method, "HEAD") == 0, &r, err, sizeof(err)) != 0)
            break;
        const char *loc = js_resp_get(&r, "location");
        int redirect = r.status == 301 || r.status == 302 || r.status == 303 || r.status == 307 ||
                       r.status == 308;
        if (!f->follow || !redirect || loc == NULL)
            break;
        if (hops == JS_EXEC_REDIRECTS) {
            snprintf(err, sizeof(err), "more than %d redirects", JS_EXEC_REDIRECTS);
            break;
        }
        char next[4096];
        if (loc[0] == '/' && loc[1] != '/')
            snprintf(next, sizeof(next), "%s://%s%s", u.tls ? "https" : "http", u.host, loc);
        else
            snprintf(next, sizeof(next), "%s", loc);
        snprintf(url, sizeof(url), "%s", next);
        if (r.status == 303 ||
            ((r.status == 301 || r.status == 302) && strcmp(method, "POST") == 0)) {
            snprintf(method, sizeof(method), "GET");
            blen = 0;
        }
        free(r.dechunked.p);
    }
    JS_FreeCString(ctx, hold);
    if (err[0]) {
        free(r.dechunked.p);
        free(raw.p);
        js_exec_reject(x, f, f->url, err);
        return;
    }
    JSValue a = JS_NewArray(ctx);
    JS_SetPropertyUint32(ctx, a, 0, JS_NewInt32(ctx, r.status));
    JS_SetPropertyUint32(ctx, a, 1, JS_NewString(ctx, ""));
    JSValue h = JS_NewArray(ctx);
    uint32_t k = 0;
    for (size_t i = 0; i < r.nh; i++) {
        if (js_hop_header(r.names[i]) && strcmp(r.names[i], "content-length") != 0)
            continue;
        JS_SetPropertyUint32(ctx, h, k++, JS_NewString(ctx, r.names[i]));
        JS_SetPropertyUint32(ctx, h, k++, JS_NewString(ctx, r.values[i]));
    }
    JS_SetPropertyUint32(ctx, a, 2, h);
    JSValue chunk = JS_NewArrayBufferCopy(ctx, (const uint8_t *)r.body, r.body_len);
    free(r.dechunked.p);
    free(raw.p);
    js_exec_call(x, f->res[0], 1, (JSValueConst *)&a);
    JS_FreeValue(ctx, a);
    JSValue args[3] = {chunk, JS_FALSE, JS_UNDEFINED};
    if (r.body_len)
        js_exec_call(x, f->sink, 3, args);
    args[0] = JS_NULL;
    args[1] = JS_TRUE;
    js_exec_call(x, f->sink, 3, args);
    JS_FreeValue(ctx, chunk);
}

/* ------------------------------------------------------------------ */
/* the command                                                          */

/* Frees what holds JS values, before the runtime goes (js_runtime_close). */
void js_exec_free_all(js_exec *x)
{
    JSContext *ctx = x->ws->ctx;
    while (x->timers) {
        js_xtimer *t = x->timers;
        x->timers = t->next;
        if (ctx)
            JS_FreeValue(ctx, t->fn);
        free(t);
    }
    while (x->fetches) {
        js_xfetch *f = x->fetches;
        x->fetches = f->next;
        if (ctx)
            js_xfetch_free(ctx, f);
        else
            free(f);
    }
    x->fetch_tail = &x->fetches;
    while (x->rejected) {
        js_xreject *r = x->rejected;
        x->rejected = r->next;
        if (ctx) {
            JS_FreeValue(ctx, r->promise);
            JS_FreeValue(ctx, r->reason);
        }
        free(r);
    }
}

static void js_exec_loop(js_exec *x)
{
    JSContext *ctx = x->ws->ctx;
    while (!x->failed) {
        if (x->fetches) {
            js_xfetch *f = x->fetches;
            x->fetches = f->next;
            if (x->fetches == NULL)
                x->fetch_tail = &x->fetches;
            js_exec_do_fetch(x, f);
            js_xfetch_free(ctx, f);
            continue;
        }
        js_xtimer *t = js_exec_next_timer(x);
        if (t == NULL)
            break;
        uint64_t now = js_exec_ms();
        if (t->due_ms > now) {
            uint64_t ms = t->due_ms - now;
            struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        }
        js_exec_fire(x, t);
    }
}

int js_exec_command(const helios_host_api *api, int argc, char **argv)
{
    (void)api;
    const char *script = NULL;
    int script_only = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-s") == 0) {
            script_only = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            printf("usage: heliosd exec SCRIPT.js [-s]\n"
                   "Runs SCRIPT.js once: its top level, then its promises, timers and fetch()es\n"
                   "until none is left. console.log/info/debug print on stdout, warn/error on\n"
                   "stderr. Exits 0, or 1 on an uncaught exception (its stack on stderr).\n"
                   "  -s  a classic script, never an ES module (no module resolution)\n");
            return 0;
        } else if (argv[i][0] == '-' || script != NULL) {
            fprintf(stderr,
                    "heliosd exec: unexpected argument '%s'\nusage: heliosd exec SCRIPT.js [-s]\n",
                    argv[i]);
            return 2;
        } else {
            script = argv[i];
        }
    }
    if (script == NULL) {
        fprintf(stderr, "usage: heliosd exec SCRIPT.js [-s]\n");
        return 2;
    }
    js_config cfg = {0};
    char path[PATH_MAX], err[4096];
    if (realpath(script, path) == NULL) {
        fprintf(stderr, "heliosd exec: %s: %s\n", script, strerror(errno));
        return 1;
    }
    cfg.script = path;
    cfg.script_only = script_only;
    cfg.memory_limit = 1u << 30;
    cfg.cpu_limit_ms = 100ull * 365 * 86400 * 1000; /* none, in effect */
    cfg.max_body = JS_EXEC_MAX_BODY;
    cfg.timeout_ms = JS_EXEC_IO_MS;
    cfg.cache_size = 8u << 20;
    if (js_load_script(path, script_only, &cfg.bc, &cfg.bc_len, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN); /* a peer that closes early fails the fetch, not the process */
    js_exec x = {0};
    x.fetch_tail = &x.fetches;
    js_worker *ws = calloc(1, sizeof(*ws));
    if (ws == NULL || (ws->cache = js_cache_new(cfg.cache_size)) == NULL) {
        fprintf(stderr, "heliosd exec: out of memory\n");
        free(ws);
        free(cfg.bc);
        return 1;
    }
    ws->cfg = &cfg;
    ws->exec = &x;
    x.ws = ws;
    int rc = 0;
    if (js_runtime_open(ws, err, sizeof(err)) != 0) {
        fflush(stdout);
        fprintf(stderr, "%s: %s\n", script, err);
        rc = 1;
    } else {
        js_exec_drain(&x);
        js_exec_loop(&x);
        rc = x.failed ? 1 : 0;
    }
    js_worker_free(ws); /* js_runtime_close calls js_exec_free_all first */
    if (x.tls)
        SSL_CTX_free(x.tls);
    free(cfg.bc);
    fflush(stdout);
    return rc;
}
