/*
 * bench.c - `heliosd bench URL [options]`, a load generator registered as a
 * module command (ABI 1.2): the core stays free of client code, and the
 * command is there wherever the module directory is.
 *
 * This file: the descriptor and its command table, the options, the setup
 * shared by every thread (address, TLS context, the request bytes), and the
 * run: T threads with one libev loop each (bench_conn.c) while the main
 * thread's loop waits for them, handles Ctrl-C and draws the progress
 * line; then the per-thread results are merged and reported
 * (bench_report.c).
 *
 * Exit status: 0 when the run completed or was interrupted (the report is
 * printed either way; errors are part of the results), 1 when the run could
 * not be set up (unresolvable host, unreadable file), 2 for a usage error,
 * including --http http3 until heliosd speaks HTTP/3.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/err.h>

#include <helios.h>

#include "bench_internal.h"

/* ------------------------------------------------------------------ */
/* options                                                             */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: heliosd bench URL [options]\n"
            "HTTP load generator: HTTP/1.1 keep-alive, HTTP/2 (h2c or h2 over TLS), closed or\n"
            "open loop, latency percentiles from an HDR-style histogram (within 0.4 %%).\n"
            "  -d, --duration DUR      measurement length (default 30s; with -n a cap)\n"
            "      --warmup DUR        sent first and not counted (default 3s)\n"
            "  -c, --connections N     connections (default 64)\n"
            "  -t, --threads N         threads, one event loop each (default: the CPUs, at\n"
            "                          most one per connection)\n"
            "  -R, --rate R            open loop: R requests/s over all connections, on a fixed\n"
            "                          schedule; latency also measured from the intended send\n"
            "                          time (coordinated-omission correction). Default: closed\n"
            "                          loop, each connection sends when its response is back\n"
            "  -n, --requests N        stop after N measured requests\n"
            "      --http MODE         auto (ALPN over TLS, HTTP/1.1 on http://), http1, http2\n"
            "                          (h2c with prior knowledge on http://), http3 (not built)\n"
            "      --streams N         HTTP/2 requests in flight per connection (default 1)\n"
            "  -H, --header 'N: V'     add a request header (repeatable); Host replaces the\n"
            "                          URL's authority\n"
            "  -X, --method M          default GET, or POST with --body-file\n"
            "      --body-file FILE    request body, sent with Content-Length\n"
            "      --timeout DUR       per request, connect and TLS handshake (default 10s)\n"
            "      --cacert FILE       verify the server's certificate and name against FILE\n"
            "                          (default: no verification, like wrk and h2load)\n"
            "      --connect HOST:PORT connect there; the URL still gives Host and SNI\n"
            "      --json              one JSON document on stdout instead of the report\n"
            "DUR: 10 or 10s, 500ms, 2m. Ctrl-C stops early and reports what was measured.\n"
            "-m is heliosd's own option (the module directory), hence -X for the method.\n");
}

/* "10", "10s", "500ms", "2m", "1.5h" -> seconds */
static int parse_duration(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v < 0)
        return -1;
    if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
        *out = v;
    else if (strcmp(end, "ms") == 0)
        *out = v / 1000;
    else if (strcmp(end, "m") == 0)
        *out = v * 60;
    else if (strcmp(end, "h") == 0)
        *out = v * 3600;
    else
        return -1;
    return 0;
}

static int parse_count(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int is_tchar(int ch)
{
    return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* host[:port] or [v6]:port at S (up to END); brackets not kept */
static int split_hostport(const char *s, size_t len, char *host, size_t hostcap, char *port,
                          size_t portcap, const char *defport)
{
    const char *hend, *p = NULL;
    const char *end = s + len;
    if (len && s[0] == '[') {
        hend = memchr(s, ']', len);
        if (hend == NULL)
            return -1;
        if (hend + 1 < end) {
            if (hend[1] != ':')
                return -1;
            p = hend + 2;
        }
        s++;
    } else {
        hend = memchr(s, ':', len);
        if (hend)
            p = hend + 1;
        else
            hend = end;
    }
    size_t hl = (size_t)(hend - s);
    if (hl == 0 || hl >= hostcap)
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    const char *pv = p ? p : defport;
    size_t pl = p ? (size_t)(end - p) : strlen(defport);
    uint64_t pn;
    char tmp[8];
    if (pl == 0 || pl >= sizeof(tmp) || pl >= portcap)
        return -1;
    memcpy(tmp, pv, pl);
    tmp[pl] = '\0';
    if (parse_count(tmp, 1, 65535, &pn) != 0)
        return -1;
    snprintf(port, portcap, "%u", (unsigned)pn);
    return 0;
}

static int parse_url(bench_opts *o, const char *url, char *err, size_t errlen)
{
    const char *rest;
    if (strncasecmp(url, "http://", 7) == 0) {
        rest = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        rest = url + 8;
        o->tls = 1;
    } else {
        snprintf(err, errlen, "URL '%s' must start with http:// or https://", url);
        return -1;
    }
    size_t alen = strcspn(rest, "/?#");
    if (memchr(rest, '@', alen)) {
        snprintf(err, errlen, "URL '%s': user information is not supported", url);
        return -1;
    }
    if (alen >= sizeof(o->authority) ||
        split_hostport(rest, alen, o->host, sizeof(o->host), o->port, sizeof(o->port),
                       o->tls ? "443" : "80") != 0) {
        snprintf(err, errlen, "URL '%s': bad host or port", url);
        return -1;
    }
    memcpy(o->authority, rest, alen);
    o->authority[alen] = '\0';
    const char *path = rest + alen;
    size_t plen = strcspn(path, "#");
    for (size_t i = 0; i < plen; i++)
        if ((unsigned char)path[i] <= 0x20 || path[i] == 0x7f) {
            snprintf(err, errlen, "URL '%s': a space or control character in the path", url);
            return -1;
        }
    int slash = plen == 0 || path[0] == '?';
    o->path = malloc(plen + 2);
    if (o->path == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(o->path, plen + 2, "%s%.*s", slash ? "/" : "", (int)plen, path);
    return 0;
}

static int parse_header(bench_opts *o, const char *arg, char *err, size_t errlen)
{
    if (o->nheaders == BENCH_MAX_HEADERS) {
        snprintf(err, errlen, "at most %d -H options", BENCH_MAX_HEADERS);
        return -1;
    }
    size_t n = 0;
    while (is_tchar((unsigned char)arg[n]))
        n++;
    if (n == 0 || arg[n] != ':') {
        snprintf(err, errlen, "-H '%s': expected 'Name: value'", arg);
        return -1;
    }
    const char *v = arg + n + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    size_t vl = strlen(v);
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    for (size_t i = 0; i < vl; i++)
        if (v[i] == '\r' || v[i] == '\n' || (unsigned char)v[i] == 0x7f) {
            snprintf(err, errlen, "-H '%s': control character in the value", arg);
            return -1;
        }
    if ((n == 14 && strncasecmp(arg, "content-length", 14) == 0) ||
        (n == 17 && strncasecmp(arg, "transfer-encoding", 17) == 0)) {
        snprintf(err, errlen, "-H '%s': the body and its length come from --body-file", arg);
        return -1;
    }
    o->headers[o->nheaders++] = (bench_header){arg, v, n, vl};
    return 0;
}

enum {
    OPT_WARMUP = 256,
    OPT_HTTP,
    OPT_STREAMS,
    OPT_BODY,
    OPT_TIMEOUT,
    OPT_CACERT,
    OPT_CONNECT,
    OPT_JSON
};

static const struct option long_opts[] = {
    {"duration", required_argument, NULL, 'd'},
    {"warmup", required_argument, NULL, OPT_WARMUP},
    {"connections", required_argument, NULL, 'c'},
    {"threads", required_argument, NULL, 't'},
    {"rate", required_argument, NULL, 'R'},
    {"requests", required_argument, NULL, 'n'},
    {"http", required_argument, NULL, OPT_HTTP},
    {"streams", required_argument, NULL, OPT_STREAMS},
    {"header", required_argument, NULL, 'H'},
    {"method", required_argument, NULL, 'X'},
    {"body-file", required_argument, NULL, OPT_BODY},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"cacert", required_argument, NULL, OPT_CACERT},
    {"connect", required_argument, NULL, OPT_CONNECT},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* 0: go; 1: help printed; 2: usage error (printed) */
static int parse_opts(bench_opts *o, int argc, char **argv)
{
    char err[512] = "";
    uint64_t v;
    int threads_set = 0, streams_set = 0, opt;
    o->duration_s = 30;
    o->warmup_s = 3;
    o->timeout_s = 10;
    o->connections = 64;
    o->streams = 1;
    o->http = BENCH_HTTP_AUTO;
    optind = 0; /* glibc: a full re-initialisation (heliosd may have used getopt) */
    opterr = 0;
    while (!err[0] && (opt = getopt_long(argc, argv, ":d:c:t:R:n:H:X:h", long_opts, NULL)) != -1) {
        switch (opt) {
        case 'd':
            if (parse_duration(optarg, &o->duration_s) || o->duration_s <= 0 ||
                o->duration_s > 366 * 86400.0)
                snprintf(err, sizeof(err), "-d %s: expected a duration such as 30, 30s or 2m",
                         optarg);
            o->duration_set = 1;
            break;
        case OPT_WARMUP:
            if (parse_duration(optarg, &o->warmup_s) || o->warmup_s > 86400)
                snprintf(err, sizeof(err), "--warmup %s: expected a duration such as 3s or 0",
                         optarg);
            break;
        case OPT_TIMEOUT:
            if (parse_duration(optarg, &o->timeout_s) || o->timeout_s < 0.001 || o->timeout_s > 600)
                snprintf(err, sizeof(err), "--timeout %s: expected a duration from 1ms to 600s",
                         optarg);
            break;
        case 'c':
            if (parse_count(optarg, 1, BENCH_MAX_CONNECTIONS, &v) == 0)
                o->connections = (unsigned)v;
            else
                snprintf(err, sizeof(err), "-c %s: expected 1 to %u connections", optarg,
                         BENCH_MAX_CONNECTIONS);
            break;
        case 't':
            if (parse_count(optarg, 1, BENCH_MAX_THREADS, &v) == 0)
                o->threads = (unsigned)v;
            else
                snprintf(err, sizeof(err), "-t %s: expected 1 to %u threads", optarg,
                         BENCH_MAX_THREADS);
            threads_set = 1;
            break;
        case OPT_STREAMS:
            if (parse_count(optarg, 1, BENCH_MAX_STREAMS, &v) == 0)
                o->streams = (unsigned)v;
            else
                snprintf(err, sizeof(err), "--streams %s: expected 1 to %u", optarg,
                         BENCH_MAX_STREAMS);
            streams_set = 1;
            break;
        case 'R': {
            char *end;
            errno = 0;
            o->rate = strtod(optarg, &end);
            if (errno || end == optarg || *end || !isfinite(o->rate) || o->rate <= 0 ||
                o->rate > 1e9)
                snprintf(err, sizeof(err), "-R %s: expected requests per second, > 0", optarg);
            break;
        }
        case 'n':
            if (parse_count(optarg, 1, UINT64_MAX / 2, &o->max_requests) != 0)
                snprintf(err, sizeof(err), "-n %s: expected a number of requests >= 1", optarg);
            break;
        case OPT_HTTP:
            if (strcmp(optarg, "auto") == 0)
                o->http = BENCH_HTTP_AUTO;
            else if (strcmp(optarg, "http1") == 0 || strcmp(optarg, "http1.1") == 0)
                o->http = BENCH_HTTP_1;
            else if (strcmp(optarg, "http2") == 0)
                o->http = BENCH_HTTP_2;
            else if (strcmp(optarg, "http3") == 0)
                o->http = BENCH_HTTP_3;
            else
                snprintf(err, sizeof(err), "--http %s: expected auto, http1, http2 or http3",
                         optarg);
            break;
        case 'H': parse_header(o, optarg, err, sizeof(err)); break;
        case 'X': {
            size_t n = 0;
            while (optarg[n] && is_tchar((unsigned char)optarg[n]))
                n++;
            if (n == 0 || optarg[n] || n > 32)
                snprintf(err, sizeof(err), "-X '%s': expected a method such as GET or POST",
                         optarg);
            o->method = optarg;
            break;
        }
        case OPT_BODY: o->body_file = optarg; break;
        case OPT_CACERT: o->cacert = optarg; break;
        case OPT_CONNECT: o->connect_to = optarg; break;
        case OPT_JSON: o->json = 1; break;
        case 'h': usage(stdout); return 1;
        case ':': snprintf(err, sizeof(err), "%s needs a value", argv[optind - 1]); break;
        default:
            snprintf(err, sizeof(err), "unknown option '%s'",
                     optopt ? (char[]){'-', (char)optopt, 0} : argv[optind - 1]);
            break;
        }
    }
    if (!err[0]) {
        if (optind >= argc)
            snprintf(err, sizeof(err), "a URL is required");
        else if (optind + 1 < argc)
            snprintf(err, sizeof(err), "unexpected argument '%s' (one URL only)", argv[optind + 1]);
        else if (parse_url(o, argv[optind], err, sizeof(err)) == 0)
            o->url = argv[optind];
    }
    if (!err[0] && o->http == BENCH_HTTP_3) {
        fprintf(stderr, "heliosd bench: HTTP/3 is not built: heliosd has no QUIC stack yet; use "
                        "--http auto, http1 or http2\n");
        return 2;
    }
    if (!err[0] && streams_set && o->streams > 1 && o->http == BENCH_HTTP_1)
        snprintf(err, sizeof(err),
                 "--streams applies to HTTP/2 (--http http1 sends one request "
                 "at a time per connection)");
    if (!err[0] && !threads_set) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        o->threads = cpus < 1 ? 1 : (unsigned)(cpus > BENCH_MAX_THREADS ? BENCH_MAX_THREADS : cpus);
        if (o->threads > o->connections)
            o->threads = o->connections;
    }
    if (!err[0] && o->threads > o->connections)
        snprintf(err, sizeof(err), "-t %u is more threads than connections (-c %u)", o->threads,
                 o->connections);
    if (!err[0] && o->max_requests && !o->duration_set)
        o->duration_s = 30; /* -n: the default duration is only a cap */
    if (err[0]) {
        fprintf(stderr, "heliosd bench: %s\n", err);
        usage(stderr);
        return 2;
    }
    if (o->method == NULL)
        o->method = o->body_file ? "POST" : "GET";
    return 0;
}

/* ------------------------------------------------------------------ */
/* setup                                                               */

static int resolve(bench_run *r, char *err, size_t errlen)
{
    char host[256], port[8];
    const bench_opts *o = &r->o;
    if (o->connect_to) {
        if (split_hostport(o->connect_to, strlen(o->connect_to), host, sizeof(host), port,
                           sizeof(port), o->port) != 0) {
            snprintf(err, errlen, "--connect %s: expected HOST:PORT", o->connect_to);
            return 2;
        }
    } else {
        snprintf(host, sizeof(host), "%s", o->host);
        snprintf(port, sizeof(port), "%s", o->port);
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return 1;
    }
    memcpy(&r->addr, res->ai_addr, res->ai_addrlen);
    r->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    char text[INET6_ADDRSTRLEN] = "?";
    const void *a = r->addr.ss_family == AF_INET6
                        ? (const void *)&((struct sockaddr_in6 *)&r->addr)->sin6_addr
                        : (const void *)&((struct sockaddr_in *)&r->addr)->sin_addr;
    inet_ntop(r->addr.ss_family, a, text, sizeof(text));
    snprintf(r->addr_text, sizeof(r->addr_text),
             r->addr.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s", text, port);
    return 0;
}

static int read_body(bench_run *r, char *err, size_t errlen)
{
    const char *path = r->o.body_file;
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (f == NULL || fstat(fileno(f), &st) != 0) {
        snprintf(err, errlen, "--body-file %s: %s", path, strerror(errno));
        if (f)
            fclose(f);
        return -1;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > BENCH_BODY_MAX) {
        snprintf(err, errlen, "--body-file %s: a regular file of at most %u MiB is expected", path,
                 BENCH_BODY_MAX >> 20);
        fclose(f);
        return -1;
    }
    r->body_len = (size_t)st.st_size;
    r->body = malloc(r->body_len + 1);
    if (r->body == NULL || fread(r->body, 1, r->body_len, f) != r->body_len) {
        snprintf(err, errlen, "--body-file %s: cannot read it", path);
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

/* The whole HTTP/1.1 request, written as it is by every connection. */
static int build_h1(bench_run *r, char *err, size_t errlen)
{
    const bench_opts *o = &r->o;
    int has_host = 0;
    size_t cap = strlen(o->method) + strlen(o->path) + strlen(o->authority) + 64 + r->body_len;
    for (unsigned i = 0; i < o->nheaders; i++) {
        cap += o->headers[i].name_len + o->headers[i].value_len + 4;
        if (o->headers[i].name_len == 4 && strncasecmp(o->headers[i].name, "host", 4) == 0)
            has_host = 1;
    }
    r->h1_req = malloc(cap);
    if (r->h1_req == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t n = (size_t)snprintf(r->h1_req, cap, "%s %s HTTP/1.1\r\n", o->method, o->path);
    if (!has_host)
        n += (size_t)snprintf(r->h1_req + n, cap - n, "Host: %s\r\n", o->authority);
    for (unsigned i = 0; i < o->nheaders; i++)
        n +=
            (size_t)snprintf(r->h1_req + n, cap - n, "%.*s: %.*s\r\n", (int)o->headers[i].name_len,
                             o->headers[i].name, (int)o->headers[i].value_len, o->headers[i].value);
    if (o->body_file)
        n += (size_t)snprintf(r->h1_req + n, cap - n, "Content-Length: %zu\r\n", r->body_len);
    n += (size_t)snprintf(r->h1_req + n, cap - n, "\r\n");
    if (r->body_len)
        memcpy(r->h1_req + n, r->body, r->body_len);
    r->h1_req_len = n + r->body_len;
    return 0;
}

static int setup_tls(bench_run *r, char *err, size_t errlen)
{
    const bench_opts *o = &r->o;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create a TLS context");
        return -1;
    }
    r->ssl_ctx = ctx;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* a server that closes without close_notify ends the stream like EOF */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    static const unsigned char alpn_auto[] = "\x02h2\x08http/1.1";
    static const unsigned char alpn_h1[] = "\x08http/1.1";
    static const unsigned char alpn_h2[] = "\x02h2";
    int bad = o->http == BENCH_HTTP_1 ? SSL_CTX_set_alpn_protos(ctx, alpn_h1, sizeof(alpn_h1) - 1)
              : o->http == BENCH_HTTP_2
                  ? SSL_CTX_set_alpn_protos(ctx, alpn_h2, sizeof(alpn_h2) - 1)
                  : SSL_CTX_set_alpn_protos(ctx, alpn_auto, sizeof(alpn_auto) - 1);
    if (bad) {
        snprintf(err, errlen, "cannot set ALPN");
        return -1;
    }
    if (o->cacert) {
        if (SSL_CTX_load_verify_locations(ctx, o->cacert, NULL) != 1) {
            unsigned long e = ERR_get_error();
            snprintf(err, errlen, "--cacert %s: %s", o->cacert,
                     e ? ERR_reason_error_string(e) : "cannot load it");
            return -1;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return 0;
}

static int setup(bench_run *r, char *err, size_t errlen)
{
    int rc = resolve(r, err, errlen);
    if (rc)
        return rc;
    r->head = strcmp(r->o.method, "HEAD") == 0;
    if (r->o.body_file && read_body(r, err, errlen) != 0)
        return 1;
    if (build_h1(r, err, errlen) != 0 || bench_h2_setup(r, err, errlen) != 0)
        return 1;
    if (r->o.tls && setup_tls(r, err, errlen) != 0)
        return 1;
    return 0;
}

static void teardown(bench_run *r)
{
    for (unsigned i = 0; r->threads && i < r->nthreads; i++)
        bench_thread_free(&r->threads[i]);
    free(r->threads);
    free(r->o.path);
    free(r->body);
    free(r->h1_req);
    free(r->h2_nv);
    free(r->h2_names);
    if (r->h2_cbs)
        nghttp2_session_callbacks_del(r->h2_cbs);
    if (r->ssl_ctx)
        SSL_CTX_free(r->ssl_ctx);
}

/* ------------------------------------------------------------------ */
/* the run                                                             */

typedef struct bench_main {
    bench_run *run;
    ev_signal sigint, sigterm;
    ev_async wake;
    ev_timer measure, progress;
    struct rusage ru0;
    int measuring, interrupted, progress_shown;
    uint64_t last_done, last_ns;
} bench_main;

static void main_signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    bench_main *m = w->data;
    if (atomic_exchange(&m->run->stop, 1))
        return;
    m->interrupted = 1;
    for (unsigned i = 0; i < m->run->nthreads; i++)
        ev_async_send(m->run->threads[i].loop, &m->run->threads[i].wake);
}

static void main_wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)revents;
    bench_main *m = w->data;
    for (unsigned i = 0; i < m->run->nthreads; i++)
        if (!atomic_load(&m->run->threads[i].finished))
            return;
    ev_break(loop, EVBREAK_ALL);
}

static void main_measure_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    bench_main *m = w->data;
    getrusage(RUSAGE_SELF, &m->ru0);
    m->measuring = 1;
}

static void main_progress_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    bench_main *m = w->data;
    const bench_run *r = m->run;
    uint64_t done = 0, errs = 0, now = bench_now_ns();
    for (unsigned i = 0; i < r->nthreads; i++) {
        done += atomic_load_explicit(&r->threads[i].live_done, memory_order_relaxed);
        errs += atomic_load_explicit(&r->threads[i].live_err, memory_order_relaxed);
    }
    double dt = (double)(now - m->last_ns) / 1e9;
    double at = (double)(now - r->start_ns) / 1e9;
    printf("\r\033[K%7.1fs %s %10.0f req/s  %llu responses  %llu errors", at,
           now < r->measure_ns ? "warm-up  " : "measuring", dt > 0 ? (done - m->last_done) / dt : 0,
           (unsigned long long)done, (unsigned long long)errs);
    fflush(stdout);
    m->progress_shown = 1;
    m->last_done = done;
    m->last_ns = now;
}

static double tv_s(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static int start_threads(bench_run *r, char *err, size_t errlen)
{
    const bench_opts *o = &r->o;
    r->nthreads = o->threads;
    size_t size = sizeof(bench_thread) * r->nthreads;
    r->threads = aligned_alloc(_Alignof(bench_thread), size);
    if (r->threads == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memset(r->threads, 0, size);
    unsigned first = 0;
    for (unsigned i = 0; i < r->nthreads; i++) {
        unsigned n = o->connections / r->nthreads + (i < o->connections % r->nthreads);
        uint64_t budget = UINT64_MAX;
        if (o->max_requests)
            budget = o->max_requests / r->nthreads + (i < o->max_requests % r->nthreads);
        if (bench_thread_setup(&r->threads[i], r, i, first, n, budget) != 0) {
            r->nthreads = i + 1; /* teardown frees what was made */
            snprintf(err, errlen, "out of memory (or file descriptors) for %u connections",
                     o->connections);
            return -1;
        }
        first += n;
    }
    r->start_ns = bench_now_ns();
    r->measure_ns = r->start_ns + (uint64_t)(o->warmup_s * 1e9);
    r->end_ns = r->measure_ns + (uint64_t)(o->duration_s * 1e9);
    if (o->rate > 0) {
        r->slot_ns = 1e9 / o->rate;
        r->interval_ns = (uint64_t)(r->slot_ns * o->connections);
        if (r->interval_ns == 0)
            r->interval_ns = 1;
    }
    /* the load threads take no signal: Ctrl-C is the main loop's */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    for (unsigned i = 0; i < r->nthreads; i++) {
        int rc = pthread_create(&r->threads[i].tid, NULL, bench_thread_main, &r->threads[i]);
        if (rc != 0) {
            snprintf(err, errlen, "cannot start a thread: %s", strerror(rc));
            atomic_store(&r->stop, 1);
            for (unsigned k = 0; k < i; k++) {
                ev_async_send(r->threads[k].loop, &r->threads[k].wake);
                pthread_join(r->threads[k].tid, NULL);
            }
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            return -1;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return 0;
}

static int run_and_report(bench_run *r, char *err, size_t errlen)
{
    const bench_opts *o = &r->o;
    struct ev_loop *loop = ev_default_loop(0);
    if (loop == NULL) {
        snprintf(err, errlen, "cannot create the main event loop");
        return -1;
    }
    bench_main m = {.run = r};
    r->main_loop = loop;
    r->main_wake = &m.wake;
    ev_async_init(&m.wake, main_wake_cb);
    m.wake.data = &m;
    ev_async_start(loop, &m.wake);
    ev_signal_init(&m.sigint, main_signal_cb, SIGINT);
    ev_signal_init(&m.sigterm, main_signal_cb, SIGTERM);
    m.sigint.data = m.sigterm.data = &m;
    ev_signal_start(loop, &m.sigint);
    ev_signal_start(loop, &m.sigterm);
    if (o->warmup_s <= 0) {
        getrusage(RUSAGE_SELF, &m.ru0);
        m.measuring = 1;
    }
    if (start_threads(r, err, errlen) != 0) {
        ev_loop_destroy(loop);
        return -1;
    }
    if (o->warmup_s > 0) {
        ev_timer_init(&m.measure, main_measure_cb, o->warmup_s, 0);
        m.measure.data = &m;
        ev_timer_start(loop, &m.measure);
    }
    if (!o->json && isatty(STDOUT_FILENO)) {
        m.last_ns = r->start_ns;
        ev_timer_init(&m.progress, main_progress_cb, 1, 1);
        m.progress.data = &m;
        ev_timer_start(loop, &m.progress);
    }
    ev_run(loop, 0);
    for (unsigned i = 0; i < r->nthreads; i++)
        pthread_join(r->threads[i].tid, NULL);
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    ev_timer_stop(loop, &m.measure);
    ev_timer_stop(loop, &m.progress);
    ev_signal_stop(loop, &m.sigint);
    ev_signal_stop(loop, &m.sigterm);
    ev_async_stop(loop, &m.wake);
    if (m.progress_shown) {
        printf("\r\033[K");
        fflush(stdout);
    }

    /* merge */
    bench_stats st = {0};
    bench_hist *lat = malloc(sizeof(*lat)), *lat_co = malloc(sizeof(*lat_co));
    if (lat == NULL || lat_co == NULL) {
        free(lat);
        free(lat_co);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    bench_hist_init(lat);
    bench_hist_init(lat_co);
    const char *errmsg[BENCH_ERR_COUNT] = {0};
    uint64_t finish = 0;
    for (unsigned i = 0; i < r->nthreads; i++) {
        const bench_thread *t = &r->threads[i];
        st.requests += t->st.requests;
        st.warmup_requests += t->st.warmup_requests;
        st.unfinished += t->st.unfinished;
        st.bytes += t->st.bytes;
        for (int k = 0; k < 6; k++)
            st.status[k] += t->st.status[k];
        for (int k = 0; k < BENCH_ERR_COUNT; k++) {
            st.errors[k] += t->st.errors[k];
            if (errmsg[k] == NULL && t->errmsg[k][0])
                errmsg[k] = t->errmsg[k];
        }
        st.opened += t->st.opened;
        st.proto_h1 += t->st.proto_h1;
        st.proto_h2 += t->st.proto_h2;
        if (t->st.finish_ns > finish)
            finish = t->st.finish_ns;
        bench_hist_merge(lat, &t->lat);
        bench_hist_merge(lat_co, &t->lat_co);
    }
    uint64_t wend = finish < r->end_ns ? finish : r->end_ns;
    double window = wend > r->measure_ns ? (double)(wend - r->measure_ns) / 1e9 : 0;
    double user = 0, sys = 0;
    if (m.measuring) {
        user = tv_s(ru1.ru_utime) - tv_s(m.ru0.ru_utime);
        sys = tv_s(ru1.ru_stime) - tv_s(m.ru0.ru_stime);
    }
    if (o->json)
        bench_report_json(r, &st, lat, o->rate > 0 ? lat_co : NULL, window, user, sys,
                          m.interrupted, errmsg);
    else
        bench_report_text(r, &st, lat, o->rate > 0 ? lat_co : NULL, window, user, sys,
                          m.interrupted, errmsg);
    fflush(stdout);
    free(lat);
    free(lat_co);
    ev_loop_destroy(loop);
    return 0;
}

static int bench_command(const helios_host_api *api, int argc, char **argv)
{
    (void)api;
    bench_run *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        fprintf(stderr, "heliosd bench: out of memory\n");
        return 1;
    }
    int rc = parse_opts(&r->o, argc, argv);
    if (rc != 0) {
        free(r->o.path);
        free(r);
        return rc == 1 ? 0 : 2;
    }
    char err[512] = "";
    /* a peer that closes while we write must not kill the process */
    struct sigaction ign = {.sa_handler = SIG_IGN}, oldpipe;
    sigaction(SIGPIPE, &ign, &oldpipe);
    rc = setup(r, err, sizeof(err));
    if (rc == 0 && run_and_report(r, err, sizeof(err)) != 0)
        rc = 1;
    if (rc != 0)
        fprintf(stderr, "heliosd bench: %s\n", err);
    teardown(r);
    free(r);
    sigaction(SIGPIPE, &oldpipe, NULL);
    return rc;
}

/* ------------------------------------------------------------------ */
/* descriptor                                                          */

static const helios_command bench_commands[] = {
    {"bench", "HTTP load generator: closed or open loop, h1/h2/TLS, HDR latency percentiles",
     bench_command},
    {NULL, NULL, NULL},
};

static const helios_module bench_module = {
    HELIOS_MODULE_HEADER("bench", BENCH_VERSION),
    .commands = bench_commands, /* `heliosd bench URL ...`: nothing to configure */
};

HELIOS_MODULE_ENTRY(const helios_host_api *api)
{
    (void)api;
    return &bench_module;
}
