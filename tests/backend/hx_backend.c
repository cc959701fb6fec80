/*
 * hx_backend.c - a fast, scriptable HTTP/1.1 origin server: the demo backend
 * heliosd proxies to, the origin of the integration tests, and the backend of
 * the nginx/HAProxy comparison benchmarks. README.md beside this file lists
 * the endpoints and how to build it.
 *
 * Threads: each thread runs its own libev loop and owns its own
 * SO_REUSEPORT listening sockets, so the kernel spreads connections and no
 * connection is ever touched by two threads. Only the /stats counters are
 * shared, as per-thread atomics summed on read.
 *
 * Memory: a connection owns fixed buffers (read, write, request target),
 * allocated once at accept and recycled through a per-thread free list.
 * Requests allocate nothing; /headers alone gets a header store the first
 * time a connection asks for it. Bodies never sit in memory: /bytes and /die
 * send slices of one read-only pattern table, /echo copies each piece of the
 * request body to the write buffer only when that buffer has room for it.
 *
 * Ordering: llhttp is paused at the end of every request (and at the end of
 * the head for /echo and Expect requests). The paused step runs only when the
 * write buffer has room for a whole small response, and a response that takes
 * time (a large /bytes body, /slow, /hang) keeps the parser paused until it is
 * done. Pipelined requests are thus answered strictly in order, and a client
 * that stops reading throttles the parser instead of growing a buffer.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* Per-connection caps. The sizes keep a connection below glibc's mmap
 * threshold (128 KiB), so an accept that misses the free list is a plain heap
 * allocation rather than an mmap. */
#define HXB_RBUF_SIZE (32 * 1024)     /* bytes read ahead (pipelining) */
#define HXB_WBUF_SIZE (32 * 1024)     /* response heads and small bodies */
#define HXB_URL_MAX 8192              /* request target, else 414 */
#define HXB_HDR_BYTES_MAX (64 * 1024) /* header names + values, else 431 */
#define HXB_HDR_COUNT_MAX 256         /* header fields, else 431 */

#define HXB_NAME_MAX 64
#define HXB_LISTEN_MAX 16
#define HXB_THREADS_MAX 256
#define HXB_FREE_CONNS_MAX 256 /* recycled connections kept per thread */

/* Room in the write buffer that any single head, 100 Continue or small body
 * (hello, status, stats, sink, errors) fits in; checked before each is made. */
#define HXB_SMALL_RESP 1024
/* /echo feeds the parser at most (room - slack) bytes: a chunked body's
 * framing we write back is never longer than the framing read, except for
 * one chunk-size line and CRLF split across two reads. */
#define HXB_ECHO_ROOM 512
#define HXB_ECHO_SLACK 64

#define HXB_PATTERN_MOD 251
#define HXB_PATTERN_WINDOW (64 * 1024) /* largest slice sent per write */
#define HXB_CHUNK_MAX (64 * 1024)      /* chunk size for mode=chunked */
#define HXB_WRITE_BUDGET (1024 * 1024) /* bytes per connection per wakeup */
#define HXB_BYTES_MAX (1ULL << 40)
#define HXB_MS_MAX 86400000ULL /* one day */
#define HXB_DIE_LENGTH 1000000
#define HXB_LINGER_SECONDS 2.0
#define HXB_ACCEPT_BACKOFF_SECONDS 0.1

typedef enum hxb_route {
    HXB_RT_HELLO,
    HXB_RT_ECHO,
    HXB_RT_HEADERS,
    HXB_RT_BYTES,
    HXB_RT_SINK,
    HXB_RT_SLOW,
    HXB_RT_STATUS,
    HXB_RT_DIE,
    HXB_RT_RESET,
    HXB_RT_HANG,
    HXB_RT_CLOSE,
    HXB_RT_STATS,
    HXB_RT_STATS_RESET,
} hxb_route;

/* What the parser paused for; runs once the write buffer has room. */
typedef enum hxb_pending {
    HXB_PEND_NONE,
    HXB_PEND_HEAD,  /* head of /echo or of an Expect request parsed */
    HXB_PEND_MSG,   /* a request is complete: answer it */
    HXB_PEND_ERROR, /* the request is malformed: answer 4xx and close */
} hxb_pending;

/* How the connection ends once its last response is out. */
typedef enum hxb_close {
    HXB_CLOSE_NONE,
    HXB_CLOSE_GRACEFUL, /* shutdown(SHUT_WR), drain input, then close */
    HXB_CLOSE_ABRUPT,   /* close(): /die, or the peer already sent EOF */
    HXB_CLOSE_RESET,    /* SO_LINGER 0 then close(): the peer sees RST */
} hxb_close;

/* A response still being produced after the parser moved on. */
typedef enum hxb_body {
    HXB_BODY_NONE,
    HXB_BODY_PATTERN, /* /bytes, /die: slices of g_pattern */
    HXB_BODY_BUF,     /* /headers: the JSON in the header store */
    HXB_BODY_SLOW,    /* /slow: waiting on the connection timer */
    HXB_BODY_HANG,    /* /hang: never */
} hxb_body;

enum { HXB_FRAME_LENGTH, HXB_FRAME_CHUNKED, HXB_FRAME_NONE };

typedef struct hxb_worker hxb_worker;
typedef struct hxb_conn hxb_conn;

typedef struct hxb_hdr {
    uint32_t name_off, name_len, val_off, val_len;
} hxb_hdr;

/* Request headers as received, kept for /headers only. */
typedef struct hxb_hstore {
    uint32_t used;  /* bytes of bytes[] in use */
    uint32_t count; /* completed fields; h[count] is the one being read */
    hxb_hdr h[HXB_HDR_COUNT_MAX];
    char bytes[HXB_HDR_BYTES_MAX];
    char *json; /* response body, grown on demand, freed with the store */
    size_t json_cap;
} hxb_hstore;

/* The request being parsed; zeroed at each message start. */
typedef struct hxb_req {
    uint8_t route;
    uint8_t method;
    uint8_t http_major, http_minor;
    bool is_head, keep_alive, chunked, has_body;
    bool expect;     /* Expect: 100-continue */
    bool in_field;   /* the last header callback was for a name */
    bool head_done;  /* later header callbacks are trailers */
    bool cur_expect; /* the field being read is Expect */
    bool name_ok, val_ok;
    bool echo_body;    /* body bytes go back out through the write buffer */
    bool echo_chunked; /* ... with the request's chunk framing */
    bool head_sent;    /* a final response head for this request is written */
    uint16_t name_len, val_len;
    uint16_t bad_status; /* 414/431/500 found by a callback */
    uint32_t url_len, path_off, path_len, query_off, query_len;
    uint32_t hdr_bytes, hdr_count;
    uint64_t content_length;
    uint64_t chunk_size;
    uint64_t sink_bytes;
    uint32_t sink_sum;
    const char *error_reason;
} hxb_req;

typedef struct hxb_resp {
    uint8_t kind;       /* hxb_body */
    bool chunked;       /* pattern: frame as chunks */
    bool need_crlf;     /* pattern: a chunk's data ended, CRLF not yet out */
    bool terminate;     /* pattern: send the last chunk (not for /die) */
    bool slow_split;    /* slow: body_ms given */
    uint8_t slow_phase; /* slow: 0 waiting for head, 1 waiting for body */
    uint64_t remaining; /* pattern: body bytes not yet sent */
    uint64_t off;       /* pattern: body bytes sent; buf: bytes sent */
    uint64_t chunk_left;
    size_t buf_len;
    uint64_t body_ms;
} hxb_resp;

struct hxb_conn {
    hxb_worker *w;
    hxb_conn *prev, *next; /* worker's live list, or its free list */
    int fd;
    uint8_t pending;    /* hxb_pending */
    uint8_t close_mode; /* hxb_close */
    bool peer_eof, dead, lingering, want_write, blocked;
    ev_io rio, wio;
    ev_timer timer; /* /slow, then the lingering close */
    llhttp_t parser;
    hxb_req req;
    hxb_resp resp;
    hxb_hstore *hs;
    size_t rpos, rlen; /* rbuf[rpos, rlen) is read but not parsed */
    size_t woff, wlen; /* wbuf[woff, wlen) is not yet sent */
    char url[HXB_URL_MAX];
    char rbuf[HXB_RBUF_SIZE];
    char wbuf[HXB_WBUF_SIZE];
};

_Static_assert(sizeof(hxb_conn) < 128 * 1024, "hxb_conn should stay below the mmap threshold");

/* Owned by one thread, read by all through the atomics. */
typedef struct hxb_stats {
    _Atomic uint64_t connections; /* accepted since start or /stats/reset */
    _Atomic uint64_t requests;    /* answered, not counting /stats* */
    _Atomic int64_t active;       /* open now; /stats/reset leaves it */
} hxb_stats;

struct hxb_worker {
    hxb_stats stats; /* first: the worker is allocated 64-byte aligned */
    struct ev_loop *loop;
    pthread_t thread;
    int nlisten;
    int lfd[HXB_LISTEN_MAX];
    ev_io accept_io[HXB_LISTEN_MAX];
    ev_timer accept_backoff; /* re-enables accept after EMFILE and friends */
    ev_async stop;
    hxb_conn *live;
    hxb_conn *free_list;
    unsigned nfree;
};

typedef struct hxb_listen {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[INET6_ADDRSTRLEN + 16];
} hxb_listen;

/* Set once in main before any thread starts, read-only afterwards. */
static const char *g_name = "backend";
static size_t g_name_len = 7;
static hxb_worker **g_workers;
static int g_nworkers;
static llhttp_settings_t g_settings;
/* Byte i is i % 251; a body byte at offset o is g_pattern[o % 251 + k]. */
static unsigned char g_pattern[HXB_PATTERN_WINDOW + HXB_PATTERN_MOD];

static void conn_drive(hxb_conn *c);

/* ---- small helpers ------------------------------------------------------ */

static bool parse_u64(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static const char *reason_phrase(unsigned status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* Case-insensitive streaming comparison of header bytes against a lower-case
 * WANT; *ok stays true while all bytes fed so far match. Trailing blanks after
 * a full match are accepted (a value may carry them). */
static void ci_feed(const char *want, uint16_t *seen, bool *ok, const char *at, size_t n)
{
    size_t wlen = strlen(want);

    for (size_t i = 0; i < n && *ok; i++) {
        unsigned char ch = (unsigned char)at[i];
        if (*seen >= wlen) {
            *ok = ch == ' ' || ch == '\t';
            continue;
        }
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch - 'A' + 'a');
        if (ch != (unsigned char)want[*seen])
            *ok = false;
        else
            (*seen)++;
    }
}

static bool ci_done(const char *want, uint16_t seen, bool ok)
{
    return ok && seen == strlen(want);
}

/* ---- write buffer ------------------------------------------------------- */

static inline size_t wb_room(const hxb_conn *c)
{
    return HXB_WBUF_SIZE - c->wlen;
}

static bool wb_reserve(hxb_conn *c, size_t need)
{
    if (wb_room(c) >= need)
        return true;
    if (c->woff > 0) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
    }
    return wb_room(c) >= need;
}

static void wb_put(hxb_conn *c, const void *p, size_t n)
{
    /* Every caller reserved room first; running out means a cap above is
     * wrong, and dropping the connection beats writing past the buffer. */
    if (n > wb_room(c)) {
        c->dead = true;
        return;
    }
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += n;
}

#define WB_LIT(c, s) wb_put((c), (s), sizeof(s) - 1)

static void wb_str(hxb_conn *c, const char *s)
{
    wb_put(c, s, strlen(s));
}

static void wb_u64(hxb_conn *c, uint64_t v)
{
    char t[20];
    size_t i = sizeof t;

    do {
        t[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    wb_put(c, t + i, sizeof t - i);
}

static void wb_hex(hxb_conn *c, uint64_t v)
{
    char t[16];
    size_t i = sizeof t;

    do {
        t[--i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v != 0);
    wb_put(c, t + i, sizeof t - i);
}

/* ---- responses ---------------------------------------------------------- */

static void put_head(hxb_conn *c, unsigned status, const char *ctype, int framing, uint64_t length)
{
    WB_LIT(c, "HTTP/1.1 ");
    wb_u64(c, status);
    WB_LIT(c, " ");
    wb_str(c, reason_phrase(status));
    if (ctype != NULL) {
        WB_LIT(c, "\r\nContent-Type: ");
        wb_str(c, ctype);
    }
    WB_LIT(c, "\r\nX-Backend: ");
    wb_put(c, g_name, g_name_len);
    if (framing == HXB_FRAME_LENGTH) {
        WB_LIT(c, "\r\nContent-Length: ");
        wb_u64(c, length);
    } else if (framing == HXB_FRAME_CHUNKED) {
        WB_LIT(c, "\r\nTransfer-Encoding: chunked");
    }
    if (c->close_mode != HXB_CLOSE_NONE || !c->req.keep_alive)
        WB_LIT(c, "\r\nConnection: close");
    else if (c->req.http_major == 1 && c->req.http_minor == 0)
        WB_LIT(c, "\r\nConnection: keep-alive");
    WB_LIT(c, "\r\n\r\n");
    c->req.head_sent = true;
}

static void respond_body(hxb_conn *c, unsigned status, const char *ctype, const char *body,
                         size_t len)
{
    put_head(c, status, ctype, HXB_FRAME_LENGTH, len);
    if (!c->req.is_head)
        wb_put(c, body, len);
}

static size_t hello_len(void)
{
    return sizeof("hello from \n") - 1 + g_name_len;
}

static void put_hello_body(hxb_conn *c)
{
    WB_LIT(c, "hello from ");
    wb_put(c, g_name, g_name_len);
    WB_LIT(c, "\n");
}

static void respond_hello(hxb_conn *c)
{
    put_head(c, 200, "text/plain", HXB_FRAME_LENGTH, hello_len());
    if (!c->req.is_head)
        put_hello_body(c);
}

/* HTTP/1.0 clients cannot parse chunked framing; they get a body that ends
 * with the connection instead. */
static bool can_chunk(const hxb_conn *c)
{
    return c->req.http_major > 1 || (c->req.http_major == 1 && c->req.http_minor >= 1);
}

static void respond_bad_query(hxb_conn *c, const char *msg)
{
    respond_body(c, 400, "text/plain", msg, strlen(msg));
}

/* Finds KEY in the query string ("a=1&b=2"); a key without '=' has an empty
 * value. No percent-decoding: every value we accept is digits or a word. */
static bool qparam(const hxb_conn *c, const char *key, const char **val, size_t *vlen)
{
    const char *q = c->url + c->req.query_off;
    size_t n = c->req.query_len, klen = strlen(key);

    for (size_t i = 0; i <= n;) {
        size_t j = i;
        while (j < n && q[j] != '&')
            j++;
        size_t seg = j - i;
        if (seg >= klen && memcmp(q + i, key, klen) == 0 && (seg == klen || q[i + klen] == '=')) {
            size_t skip = seg == klen ? klen : klen + 1;
            *val = q + i + skip;
            *vlen = seg - skip;
            return true;
        }
        i = j + 1;
    }
    return false;
}

/* 1 when KEY is present and a number <= MAX, 0 when absent, -1 when bad. */
static int qparam_u64(const hxb_conn *c, const char *key, uint64_t max, uint64_t *out)
{
    const char *v;
    size_t vlen;

    if (!qparam(c, key, &v, &vlen))
        return 0;
    return parse_u64(v, vlen, max, out) ? 1 : -1;
}

static bool qparam_is(const hxb_conn *c, const char *key, const char *word)
{
    const char *v;
    size_t vlen;

    return qparam(c, key, &v, &vlen) && vlen == strlen(word) && memcmp(v, word, vlen) == 0;
}

/* mode=length (default), mode=chunked, or mode=close when ALLOW_CLOSE;
 * returns the HXB_FRAME_* or -1. */
static int qparam_mode(const hxb_conn *c, bool allow_close)
{
    const char *v;
    size_t vlen;

    if (!qparam(c, "mode", &v, &vlen) || qparam_is(c, "mode", "length"))
        return HXB_FRAME_LENGTH;
    if (qparam_is(c, "mode", "chunked"))
        return HXB_FRAME_CHUNKED;
    if (allow_close && qparam_is(c, "mode", "close"))
        return HXB_FRAME_NONE;
    return -1;
}

static void start_pattern(hxb_conn *c, uint64_t n, bool chunked, bool terminate)
{
    c->resp.kind = HXB_BODY_PATTERN;
    c->resp.remaining = n;
    c->resp.off = 0;
    c->resp.chunk_left = 0;
    c->resp.chunked = chunked;
    c->resp.need_crlf = false;
    c->resp.terminate = terminate;
}

static void respond_bytes(hxb_conn *c)
{
    const char *p = c->url + c->req.path_off;
    size_t plen = c->req.path_len, pre = sizeof("/bytes/") - 1;
    uint64_t n;
    int frame = qparam_mode(c, true);

    if (!parse_u64(p + pre, plen - pre, HXB_BYTES_MAX, &n)) {
        respond_bad_query(c, "/bytes/N: N must be a decimal number from 0 to 1099511627776\n");
        return;
    }
    if (frame < 0) {
        respond_bad_query(c, "/bytes/N: mode must be length, chunked or close\n");
        return;
    }
    if (frame == HXB_FRAME_CHUNKED && !can_chunk(c))
        frame = HXB_FRAME_NONE;
    if (frame == HXB_FRAME_NONE)
        c->close_mode = HXB_CLOSE_GRACEFUL;
    put_head(c, 200, "application/octet-stream", frame, n);
    if (!c->req.is_head && (n > 0 || frame == HXB_FRAME_CHUNKED))
        start_pattern(c, n, frame == HXB_FRAME_CHUNKED, true);
}

static void respond_die(hxb_conn *c)
{
    uint64_t after = 0;
    int frame = qparam_mode(c, false);

    if (qparam_u64(c, "after", HXB_DIE_LENGTH, &after) < 0) {
        respond_bad_query(c, "/die: after must be a decimal number from 0 to 1000000\n");
        return;
    }
    if (frame < 0) {
        respond_bad_query(c, "/die: mode must be length or chunked\n");
        return;
    }
    if (frame == HXB_FRAME_CHUNKED && !can_chunk(c))
        frame = HXB_FRAME_LENGTH;
    /* The head promises a normal response (keep-alive, full length); the
     * point is that the body then stops short. */
    put_head(c, 200, "application/octet-stream", frame, HXB_DIE_LENGTH);
    c->close_mode = HXB_CLOSE_ABRUPT;
    if (!c->req.is_head && after > 0)
        start_pattern(c, after, frame == HXB_FRAME_CHUNKED, false);
}

static void respond_status(hxb_conn *c)
{
    const char *p = c->url + c->req.path_off;
    size_t plen = c->req.path_len, pre = sizeof("/status/") - 1;
    uint64_t n;
    char body[64];

    if (!parse_u64(p + pre, plen - pre, 999, &n) || n < 200 || n > 599) {
        respond_bad_query(c, "/status/N: N must be from 200 to 599\n");
        return;
    }
    if (n == 204 || n == 304) {
        put_head(c, (unsigned)n, NULL, HXB_FRAME_NONE, 0);
        return;
    }
    if (n == 205) {
        put_head(c, 205, NULL, HXB_FRAME_LENGTH, 0);
        return;
    }
    int len = snprintf(body, sizeof body, "%u %s\n", (unsigned)n, reason_phrase((unsigned)n));
    respond_body(c, (unsigned)n, "text/plain", body, (size_t)len);
}

static void timer_start(hxb_conn *c, double seconds)
{
    struct ev_loop *loop = c->w->loop;

    ev_timer_stop(loop, &c->timer);
    /* The loop's clock is from the start of this iteration; without the
     * update a busy iteration would make /slow answer early. */
    ev_now_update(loop);
    ev_timer_set(&c->timer, seconds, 0.);
    ev_timer_start(loop, &c->timer);
}

/* Advances /slow by one step: head (maybe with body), then body. */
static void slow_fire(hxb_conn *c)
{
    hxb_resp *s = &c->resp;

    if (s->slow_phase == 0) {
        put_head(c, 200, "text/plain", HXB_FRAME_LENGTH, hello_len());
        if (c->req.is_head) {
            s->kind = HXB_BODY_NONE;
            return;
        }
        if (s->slow_split && s->body_ms > 0) {
            s->slow_phase = 1;
            timer_start(c, (double)s->body_ms / 1000.);
            return;
        }
    }
    put_hello_body(c);
    s->kind = HXB_BODY_NONE;
}

static void respond_slow(hxb_conn *c)
{
    uint64_t ms = 0, body_ms = 0;
    int a = qparam_u64(c, "ms", HXB_MS_MAX, &ms);
    int b = qparam_u64(c, "body_ms", HXB_MS_MAX, &body_ms);

    if (a < 0 || b < 0) {
        respond_bad_query(c, "/slow: ms and body_ms must be decimal milliseconds up to 86400000\n");
        return;
    }
    c->resp.kind = HXB_BODY_SLOW;
    c->resp.slow_phase = 0;
    c->resp.slow_split = b > 0;
    c->resp.body_ms = body_ms;
    if (ms > 0)
        timer_start(c, (double)ms / 1000.);
    else
        slow_fire(c);
}

static void respond_stats(hxb_conn *c, bool reset)
{
    uint64_t conns = 0, reqs = 0;
    int64_t active = 0;
    char body[128 + HXB_NAME_MAX];

    for (int i = 0; i < g_nworkers; i++) {
        hxb_stats *s = &g_workers[i]->stats;
        if (reset) {
            atomic_store_explicit(&s->connections, 0, memory_order_relaxed);
            atomic_store_explicit(&s->requests, 0, memory_order_relaxed);
        }
        conns += atomic_load_explicit(&s->connections, memory_order_relaxed);
        reqs += atomic_load_explicit(&s->requests, memory_order_relaxed);
        active += atomic_load_explicit(&s->active, memory_order_relaxed);
    }
    /* The name was checked at startup to need no JSON escaping. */
    int len =
        snprintf(body, sizeof body,
                 "{\"name\":\"%s\",\"connections\":%llu,\"requests\":%llu,\"active\":%lld}\n",
                 g_name, (unsigned long long)conns, (unsigned long long)reqs, (long long)active);
    respond_body(c, 200, "application/json", body, (size_t)len);
}

static void respond_sink(hxb_conn *c)
{
    char body[96];
    int len = snprintf(body, sizeof body, "{\"bytes\":%llu,\"sum\":%lu}\n",
                       (unsigned long long)c->req.sink_bytes, (unsigned long)c->req.sink_sum);

    respond_body(c, 200, "application/json", body, (size_t)len);
}

/* Writes S as a JSON string. Bytes outside printable ASCII become \u00XX,
 * i.e. the value reads as Latin-1: always valid JSON, and the raw bytes come
 * back with s.encode("latin-1"). */
static char *json_str(char *o, const char *s, size_t n)
{
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            *o++ = '\\';
            *o++ = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            memcpy(o, "\\u00", 4);
            o[4] = "0123456789abcdef"[ch >> 4];
            o[5] = "0123456789abcdef"[ch & 15];
            o += 6;
        } else {
            *o++ = (char)ch;
        }
    }
    *o++ = '"';
    return o;
}

static char *json_lit(char *o, const char *s)
{
    size_t n = strlen(s);

    memcpy(o, s, n);
    return o + n;
}

static void respond_headers(hxb_conn *c)
{
    hxb_hstore *hs = c->hs;
    hxb_req *r = &c->req;
    const char *method = llhttp_method_name((llhttp_method_t)r->method);
    size_t mlen = strlen(method);
    /* Worst case every byte becomes \u00XX. */
    size_t need = 6 * (mlen + r->url_len + hs->used) + 8 * (size_t)hs->count + 96;

    if (need > hs->json_cap) {
        char *p = realloc(hs->json, need);
        if (p == NULL) {
            respond_bad_query(c, "out of memory building /headers\n");
            return;
        }
        hs->json = p;
        hs->json_cap = need;
    }
    char *o = hs->json;
    o = json_lit(o, "{\"method\":");
    o = json_str(o, method, mlen);
    o = json_lit(o, ",\"target\":");
    o = json_str(o, c->url, r->url_len);
    o = json_lit(o, ",\"version\":\"");
    *o++ = (char)('0' + r->http_major % 10);
    *o++ = '.';
    *o++ = (char)('0' + r->http_minor % 10);
    o = json_lit(o, "\",\"headers\":[");
    for (uint32_t i = 0; i < hs->count; i++) {
        const hxb_hdr *h = &hs->h[i];
        if (i > 0)
            *o++ = ',';
        *o++ = '[';
        o = json_str(o, hs->bytes + h->name_off, h->name_len);
        *o++ = ',';
        o = json_str(o, hs->bytes + h->val_off, h->val_len);
        *o++ = ']';
    }
    o = json_lit(o, "]}\n");

    size_t len = (size_t)(o - hs->json);
    put_head(c, 200, "application/json", HXB_FRAME_LENGTH, len);
    if (!r->is_head && len > 0) {
        c->resp.kind = HXB_BODY_BUF;
        c->resp.off = 0;
        c->resp.buf_len = len;
    }
}

/* HXB_PEND_HEAD: the head of /echo, or of /sink with Expect, is parsed. */
static void head_ready(hxb_conn *c)
{
    hxb_req *r = &c->req;

    if (r->expect && r->has_body && r->http_major == 1 && r->http_minor >= 1)
        WB_LIT(c, "HTTP/1.1 100 Continue\r\n\r\n");
    if (r->route == HXB_RT_ECHO) {
        int frame = HXB_FRAME_LENGTH;
        if (r->chunked && can_chunk(c)) {
            frame = HXB_FRAME_CHUNKED;
        } else if (r->chunked) {
            frame = HXB_FRAME_NONE;
            r->keep_alive = false; /* the close ends the body */
        }
        put_head(c, 200, "application/octet-stream", frame, r->content_length);
        r->echo_body = !r->is_head;
        r->echo_chunked = r->echo_body && frame == HXB_FRAME_CHUNKED;
    }
}

/* HXB_PEND_MSG: the request is complete; write or start its response. */
static void respond(hxb_conn *c)
{
    hxb_req *r = &c->req;

    if (r->route != HXB_RT_STATS && r->route != HXB_RT_STATS_RESET)
        atomic_fetch_add_explicit(&c->w->stats.requests, 1, memory_order_relaxed);
    if (!r->keep_alive)
        c->close_mode = HXB_CLOSE_GRACEFUL;

    switch ((hxb_route)r->route) {
    case HXB_RT_HELLO: respond_hello(c); break;
    case HXB_RT_ECHO:
        if (r->echo_chunked)
            WB_LIT(c, "0\r\n\r\n");
        break;
    case HXB_RT_HEADERS: respond_headers(c); break;
    case HXB_RT_BYTES: respond_bytes(c); break;
    case HXB_RT_SINK: respond_sink(c); break;
    case HXB_RT_SLOW: respond_slow(c); break;
    case HXB_RT_STATUS: respond_status(c); break;
    case HXB_RT_DIE: respond_die(c); break;
    case HXB_RT_RESET: c->close_mode = HXB_CLOSE_RESET; break;
    case HXB_RT_HANG: c->resp.kind = HXB_BODY_HANG; break;
    case HXB_RT_CLOSE:
        c->close_mode = HXB_CLOSE_GRACEFUL;
        respond_hello(c);
        break;
    case HXB_RT_STATS: respond_stats(c, false); break;
    case HXB_RT_STATS_RESET: respond_stats(c, true); break;
    }
    /* Bytes that arrive before the next message begins must not look like
     * they belong to this one. */
    r->echo_body = r->echo_chunked = false;
    r->head_sent = false;
}

/* HXB_PEND_ERROR: the request cannot be parsed or exceeds a cap. */
static void respond_error(hxb_conn *c)
{
    hxb_req *r = &c->req;
    unsigned status = r->bad_status ? r->bad_status : 400;
    char body[320];

    if (r->head_sent) {
        /* Mid-/echo: the response is already under way, only closing
         * tells the client something went wrong. */
        c->close_mode = HXB_CLOSE_ABRUPT;
        return;
    }
    c->close_mode = HXB_CLOSE_GRACEFUL;
    int len = snprintf(body, sizeof body, "%u %s: %.200s\n", status, reason_phrase(status),
                       r->error_reason ? r->error_reason : "malformed request");
    respond_body(c, status, "text/plain", body, (size_t)len);
}

/* ---- llhttp callbacks: record, never respond ---------------------------- */

static hxb_route route_of(const char *p, size_t n)
{
#define HXB_IS(lit) (n == sizeof(lit) - 1 && memcmp(p, lit, n) == 0)
#define HXB_PREFIX(lit) (n >= sizeof(lit) - 1 && memcmp(p, lit, sizeof(lit) - 1) == 0)
    if (n < 4 || p[0] != '/')
        return HXB_RT_HELLO;
    if (HXB_IS("/echo"))
        return HXB_RT_ECHO;
    if (HXB_IS("/headers"))
        return HXB_RT_HEADERS;
    if (HXB_PREFIX("/bytes/"))
        return HXB_RT_BYTES;
    if (HXB_IS("/sink"))
        return HXB_RT_SINK;
    if (HXB_IS("/slow"))
        return HXB_RT_SLOW;
    if (HXB_PREFIX("/status/"))
        return HXB_RT_STATUS;
    if (HXB_IS("/die"))
        return HXB_RT_DIE;
    if (HXB_IS("/reset"))
        return HXB_RT_RESET;
    if (HXB_IS("/hang"))
        return HXB_RT_HANG;
    if (HXB_IS("/close"))
        return HXB_RT_CLOSE;
    if (HXB_IS("/stats"))
        return HXB_RT_STATS;
    if (HXB_IS("/stats/reset"))
        return HXB_RT_STATS_RESET;
    return HXB_RT_HELLO;
#undef HXB_IS
#undef HXB_PREFIX
}

static int fail(llhttp_t *p, unsigned status, const char *why)
{
    hxb_conn *c = p->data;

    c->req.bad_status = (uint16_t)status;
    llhttp_set_error_reason(p, why);
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
    hxb_conn *c = p->data;

    memset(&c->req, 0, sizeof c->req);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    hxb_conn *c = p->data;

    if (n > HXB_URL_MAX - c->req.url_len)
        return fail(p, 414, "request target longer than 8192 bytes");
    memcpy(c->url + c->req.url_len, at, n);
    c->req.url_len += (uint32_t)n;
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    hxb_conn *c = p->data;
    hxb_req *r = &c->req;
    const char *u = c->url;
    size_t n = r->url_len, start = 0;

    /* Absolute form ("http://host/path") reaches us from forward proxies. */
    if (n >= 7 && strncasecmp(u, "http://", 7) == 0)
        start = 7;
    else if (n >= 8 && strncasecmp(u, "https://", 8) == 0)
        start = 8;
    if (start > 0)
        while (start < n && u[start] != '/' && u[start] != '?')
            start++;
    size_t q = start;
    while (q < n && u[q] != '?')
        q++;
    r->path_off = (uint32_t)start;
    r->path_len = (uint32_t)(q - start);
    r->query_off = (uint32_t)(q < n ? q + 1 : n);
    r->query_len = (uint32_t)(n - r->query_off);
    r->route = (uint8_t)route_of(u + start, q - start);

    if (r->route == HXB_RT_HEADERS) {
        if (c->hs == NULL) {
            c->hs = malloc(sizeof *c->hs);
            if (c->hs == NULL)
                return fail(p, 500, "out of memory for the /headers store");
            c->hs->json = NULL;
            c->hs->json_cap = 0;
        }
        c->hs->used = 0;
        c->hs->count = 0;
    }
    return 0;
}

static int count_header_bytes(llhttp_t *p, size_t n)
{
    hxb_conn *c = p->data;

    if (n > HXB_HDR_BYTES_MAX - c->req.hdr_bytes)
        return fail(p, 431, "header names and values exceed 65536 bytes");
    c->req.hdr_bytes += (uint32_t)n;
    return 0;
}

static bool storing_headers(const hxb_conn *c)
{
    return c->req.route == HXB_RT_HEADERS && !c->req.head_done;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    hxb_conn *c = p->data;
    hxb_req *r = &c->req;

    if (count_header_bytes(p, n) != 0)
        return HPE_USER;
    if (r->head_done)
        return 0; /* a trailer: counted, otherwise ignored */
    if (!r->in_field) {
        if (r->hdr_count == HXB_HDR_COUNT_MAX)
            return fail(p, 431, "more than 256 header fields");
        r->hdr_count++;
        r->in_field = true;
        r->name_len = 0;
        r->name_ok = true;
        if (storing_headers(c)) {
            c->hs->h[c->hs->count].name_off = c->hs->used;
            c->hs->h[c->hs->count].name_len = 0;
        }
    }
    ci_feed("expect", &r->name_len, &r->name_ok, at, n);
    if (storing_headers(c)) {
        memcpy(c->hs->bytes + c->hs->used, at, n);
        c->hs->used += (uint32_t)n;
        c->hs->h[c->hs->count].name_len += (uint32_t)n;
    }
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    hxb_conn *c = p->data;
    hxb_req *r = &c->req;

    r->in_field = false;
    if (r->head_done)
        return 0;
    r->cur_expect = ci_done("expect", r->name_len, r->name_ok);
    r->val_len = 0;
    r->val_ok = true;
    if (storing_headers(c)) {
        /* A field with an empty value gets no on_header_value call. */
        c->hs->h[c->hs->count].val_off = c->hs->used;
        c->hs->h[c->hs->count].val_len = 0;
    }
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    hxb_conn *c = p->data;
    hxb_req *r = &c->req;

    if (count_header_bytes(p, n) != 0)
        return HPE_USER;
    if (r->head_done)
        return 0;
    if (r->cur_expect)
        ci_feed("100-continue", &r->val_len, &r->val_ok, at, n);
    if (storing_headers(c)) {
        memcpy(c->hs->bytes + c->hs->used, at, n);
        c->hs->used += (uint32_t)n;
        c->hs->h[c->hs->count].val_len += (uint32_t)n;
    }
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    hxb_conn *c = p->data;
    hxb_req *r = &c->req;

    r->in_field = false;
    if (r->head_done)
        return 0;
    if (r->cur_expect && ci_done("100-continue", r->val_len, r->val_ok))
        r->expect = true;
    r->cur_expect = false;
    if (storing_headers(c))
        c->hs->count++;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    hxb_conn *c = p->data;
    hxb_req *r = &c->req;

    r->head_done = true;
    r->method = p->method;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    r->is_head = p->method == HTTP_HEAD;
    /* No upgrade or CONNECT tunnel here: answer, then close. */
    r->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
    r->chunked = (p->flags & F_CHUNKED) != 0;
    r->content_length = (!r->chunked && (p->flags & F_CONTENT_LENGTH)) ? p->content_length : 0;
    r->has_body = r->chunked || r->content_length > 0;
    if (r->route == HXB_RT_ECHO || (r->route == HXB_RT_SINK && r->expect)) {
        c->pending = HXB_PEND_HEAD;
        return HPE_PAUSED;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    hxb_conn *c = p->data;
    hxb_req *r = &c->req;

    if (r->echo_body) {
        wb_put(c, at, n); /* room guaranteed: conn_parse fed at most that */
    } else if (r->route == HXB_RT_SINK) {
        const unsigned char *b = (const unsigned char *)at;
        uint32_t sum = r->sink_sum;
        for (size_t i = 0; i < n; i++)
            sum += b[i];
        r->sink_sum = sum;
        r->sink_bytes += n;
    }
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    hxb_conn *c = p->data;

    c->req.chunk_size = p->content_length;
    if (c->req.echo_chunked && c->req.chunk_size > 0) {
        wb_hex(c, c->req.chunk_size);
        WB_LIT(c, "\r\n");
    }
    return 0;
}

static int on_chunk_complete(llhttp_t *p)
{
    hxb_conn *c = p->data;

    if (c->req.echo_chunked && c->req.chunk_size > 0)
        WB_LIT(c, "\r\n");
    c->req.chunk_size = 0;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    hxb_conn *c = p->data;

    c->pending = HXB_PEND_MSG;
    return HPE_PAUSED;
}

/* ---- connection --------------------------------------------------------- */

static void conn_free(hxb_conn *c)
{
    hxb_worker *w = c->w;

    ev_io_stop(w->loop, &c->rio);
    ev_io_stop(w->loop, &c->wio);
    ev_timer_stop(w->loop, &c->timer);
    close(c->fd);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->live = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    atomic_fetch_sub_explicit(&w->stats.active, 1, memory_order_relaxed);
    if (c->hs != NULL) {
        free(c->hs->json);
        free(c->hs);
        c->hs = NULL;
    }
    if (w->nfree < HXB_FREE_CONNS_MAX) {
        c->next = w->free_list;
        w->free_list = c;
        w->nfree++;
    } else {
        free(c);
    }
}

/* Runs the parser and the paused steps until input runs out, the write
 * buffer is too full, or a response that takes time is under way. */
static void conn_parse(hxb_conn *c)
{
    c->blocked = false;
    while (!c->dead && c->close_mode == HXB_CLOSE_NONE && c->resp.kind == HXB_BODY_NONE) {
        if (c->pending != HXB_PEND_NONE) {
            if (!wb_reserve(c, HXB_SMALL_RESP)) {
                c->blocked = true;
                return;
            }
            hxb_pending what = (hxb_pending)c->pending;
            c->pending = HXB_PEND_NONE;
            if (what == HXB_PEND_ERROR) {
                respond_error(c);
                return;
            }
            llhttp_resume(&c->parser);
            if (what == HXB_PEND_HEAD)
                head_ready(c);
            else
                respond(c);
            continue;
        }
        size_t n = c->rlen - c->rpos;
        if (n == 0)
            return;
        if (c->req.echo_body) {
            if (!wb_reserve(c, HXB_ECHO_ROOM)) {
                c->blocked = true;
                return;
            }
            size_t room = wb_room(c) - HXB_ECHO_SLACK;
            if (n > room)
                n = room;
        }
        llhttp_errno_t e = llhttp_execute(&c->parser, c->rbuf + c->rpos, n);
        if (e == HPE_OK) {
            c->rpos += n;
        } else if (e == HPE_PAUSED) {
            c->rpos = (size_t)(llhttp_get_error_pos(&c->parser) - c->rbuf);
        } else if (e == HPE_PAUSED_UPGRADE) {
            /* Not reached: upgrades are answered with Connection: close. */
            c->close_mode = HXB_CLOSE_GRACEFUL;
        } else {
            c->req.error_reason = llhttp_get_error_reason(&c->parser);
            c->pending = HXB_PEND_ERROR;
            c->rpos = c->rlen;
        }
    }
}

/* Appends chunk framing for a pattern body; ends a finished response. */
static void resp_produce(hxb_conn *c)
{
    hxb_resp *s = &c->resp;

    if (s->kind == HXB_BODY_BUF) {
        if (s->off == s->buf_len)
            s->kind = HXB_BODY_NONE;
        return;
    }
    if (s->kind != HXB_BODY_PATTERN || s->chunk_left > 0)
        return;
    if (!wb_reserve(c, 32))
        return; /* the buffer is flushed first, then we come back */
    if (s->need_crlf) {
        WB_LIT(c, "\r\n");
        s->need_crlf = false;
    }
    if (s->remaining > 0) {
        s->chunk_left = s->remaining;
        if (s->chunked) {
            if (s->chunk_left > HXB_CHUNK_MAX)
                s->chunk_left = HXB_CHUNK_MAX;
            wb_hex(c, s->chunk_left);
            WB_LIT(c, "\r\n");
        }
        return;
    }
    if (s->chunked && s->terminate)
        WB_LIT(c, "0\r\n\r\n");
    s->kind = HXB_BODY_NONE;
}

static size_t resp_slice(hxb_conn *c, struct iovec *iov)
{
    hxb_resp *s = &c->resp;

    if (s->kind == HXB_BODY_PATTERN && s->chunk_left > 0) {
        size_t n = s->chunk_left > HXB_PATTERN_WINDOW ? HXB_PATTERN_WINDOW : (size_t)s->chunk_left;
        iov->iov_base = g_pattern + s->off % HXB_PATTERN_MOD;
        iov->iov_len = n;
        return n;
    }
    if (s->kind == HXB_BODY_BUF && s->off < s->buf_len) {
        iov->iov_base = c->hs->json + s->off;
        iov->iov_len = s->buf_len - s->off;
        return iov->iov_len;
    }
    return 0;
}

static void resp_advance(hxb_conn *c, size_t n)
{
    hxb_resp *s = &c->resp;

    s->off += n;
    if (s->kind == HXB_BODY_PATTERN) {
        s->remaining -= n;
        s->chunk_left -= n;
        if (s->chunk_left == 0 && s->chunked)
            s->need_crlf = true;
    }
}

/* Sends the write buffer, then the response body, until the socket is full
 * or the per-wakeup budget is spent (one big download must not starve the
 * other connections of this thread). */
static void conn_flush(hxb_conn *c)
{
    size_t budget = HXB_WRITE_BUDGET;

    c->want_write = false;
    while (!c->dead) {
        struct iovec iov[2];
        int n = 0;

        resp_produce(c);
        size_t head = c->wlen - c->woff;
        if (head > 0) {
            iov[n].iov_base = c->wbuf + c->woff;
            iov[n++].iov_len = head;
        }
        size_t body = resp_slice(c, &iov[n]);
        if (body > 0)
            n++;
        if (n == 0)
            return;
        size_t total = head + body;

        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t k = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                c->want_write = true;
            else
                c->dead = true; /* EPIPE, ECONNRESET: the client is gone */
            return;
        }
        size_t sent = (size_t)k;
        if (sent >= head) {
            c->woff = c->wlen = 0;
            resp_advance(c, sent - head);
        } else {
            c->woff += sent;
        }
        if (sent < total || sent >= budget) {
            c->want_write = true;
            return;
        }
        budget -= sent;
    }
}

static void conn_close(hxb_conn *c)
{
    struct ev_loop *loop = c->w->loop;

    switch ((hxb_close)c->close_mode) {
    case HXB_CLOSE_RESET: {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        conn_free(c);
        return;
    }
    case HXB_CLOSE_GRACEFUL:
        if (!c->peer_eof) {
            /* Closing with unread input would send RST, which can destroy
             * the response still in flight: half-close and drain instead. */
            shutdown(c->fd, SHUT_WR);
            c->lingering = true;
            ev_io_stop(loop, &c->wio);
            ev_io_start(loop, &c->rio);
            timer_start(c, HXB_LINGER_SECONDS);
            return;
        }
        conn_free(c);
        return;
    case HXB_CLOSE_NONE:
    case HXB_CLOSE_ABRUPT: conn_free(c); return;
    }
}

static void set_watch(struct ev_loop *loop, ev_io *io, bool on)
{
    if (on && !ev_is_active(io))
        ev_io_start(loop, io);
    else if (!on && ev_is_active(io))
        ev_io_stop(loop, io);
}

/* Decides, after any event, whether the connection ends and what to wait for. */
static void conn_settle(hxb_conn *c)
{
    if (c->dead || (c->peer_eof && c->resp.kind == HXB_BODY_HANG)) {
        conn_free(c);
        return;
    }
    bool idle = c->resp.kind == HXB_BODY_NONE && c->pending == HXB_PEND_NONE;
    if (c->peer_eof && c->close_mode == HXB_CLOSE_NONE && idle && c->rpos == c->rlen)
        c->close_mode = HXB_CLOSE_ABRUPT; /* nothing more can come */
    if (c->close_mode != HXB_CLOSE_NONE && idle && c->woff == c->wlen) {
        conn_close(c);
        return;
    }
    bool want_read =
        !c->peer_eof && c->close_mode == HXB_CLOSE_NONE && (c->rlen < HXB_RBUF_SIZE || c->rpos > 0);
    set_watch(c->w->loop, &c->rio, want_read);
    set_watch(c->w->loop, &c->wio, c->want_write);
}

static void conn_drive(hxb_conn *c)
{
    for (;;) {
        conn_parse(c);
        if (c->dead)
            break;
        bool blocked = c->blocked;
        bool had_resp = c->resp.kind != HXB_BODY_NONE;
        conn_flush(c);
        if (c->dead)
            break;
        bool resp_done = had_resp && c->resp.kind == HXB_BODY_NONE;
        bool drained = c->woff == c->wlen;
        if (!resp_done && !(blocked && drained))
            break;
    }
    conn_settle(c);
}

static void read_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    hxb_conn *c = io->data;
    (void)loop;
    (void)revents;

    if (c->lingering) {
        ssize_t n = read(c->fd, c->rbuf, sizeof c->rbuf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            conn_free(c);
        return;
    }
    if (c->rpos == c->rlen) {
        c->rpos = c->rlen = 0;
    } else if (c->rlen == HXB_RBUF_SIZE && c->rpos > 0) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    if (c->rlen < HXB_RBUF_SIZE) {
        ssize_t n = read(c->fd, c->rbuf + c->rlen, HXB_RBUF_SIZE - c->rlen);
        if (n > 0) {
            c->rlen += (size_t)n;
        } else if (n == 0) {
            c->peer_eof = true;
        } else if (errno != EAGAIN && errno != EINTR) {
            conn_free(c);
            return;
        }
    }
    conn_drive(c);
}

static void write_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    conn_drive(io->data);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    hxb_conn *c = t->data;
    (void)loop;
    (void)revents;

    if (c->lingering) {
        conn_free(c);
        return;
    }
    if (c->resp.kind == HXB_BODY_SLOW)
        slow_fire(c);
    conn_drive(c);
}

static hxb_conn *conn_new(hxb_worker *w, int fd)
{
    hxb_conn *c = w->free_list;

    if (c != NULL) {
        w->free_list = c->next;
        w->nfree--;
    } else if ((c = malloc(sizeof *c)) == NULL) {
        return NULL;
    }
    c->w = w;
    c->fd = fd;
    c->pending = HXB_PEND_NONE;
    c->close_mode = HXB_CLOSE_NONE;
    c->peer_eof = c->dead = c->lingering = c->want_write = c->blocked = false;
    c->hs = NULL;
    c->rpos = c->rlen = c->woff = c->wlen = 0;
    memset(&c->req, 0, sizeof c->req);
    memset(&c->resp, 0, sizeof c->resp);
    llhttp_init(&c->parser, HTTP_REQUEST, &g_settings);
    c->parser.data = c;
    ev_io_init(&c->rio, read_cb, fd, EV_READ);
    c->rio.data = c;
    ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
    c->wio.data = c;
    ev_init(&c->timer, timer_cb);
    c->timer.data = c;

    c->prev = NULL;
    c->next = w->live;
    if (w->live != NULL)
        w->live->prev = c;
    w->live = c;
    atomic_fetch_add_explicit(&w->stats.connections, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&w->stats.active, 1, memory_order_relaxed);
    ev_io_start(w->loop, &c->rio);
    return c;
}

/* ---- worker ------------------------------------------------------------- */

static void accept_enable(hxb_worker *w, bool on)
{
    for (int i = 0; i < w->nlisten; i++)
        set_watch(w->loop, &w->accept_io[i], on);
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    hxb_worker *w = io->data;
    (void)revents;

    for (int i = 0; i < 64; i++) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            fprintf(stderr, "hx_backend %s: accept: %s; pausing accept for %.0f ms%s\n", g_name,
                    strerror(errno), HXB_ACCEPT_BACKOFF_SECONDS * 1000,
                    errno == EMFILE || errno == ENFILE ? " (raise ulimit -n?)" : "");
            accept_enable(w, false);
            ev_timer_set(&w->accept_backoff, HXB_ACCEPT_BACKOFF_SECONDS, 0.);
            ev_timer_start(loop, &w->accept_backoff);
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (conn_new(w, fd) == NULL)
            close(fd);
    }
}

static void accept_backoff_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    accept_enable(t->data, true);
}

static void stop_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    hxb_worker *w = a->data;
    (void)revents;

    accept_enable(w, false);
    ev_timer_stop(loop, &w->accept_backoff);
    while (w->live != NULL)
        conn_free(w->live);
    while (w->free_list != NULL) {
        hxb_conn *c = w->free_list;
        w->free_list = c->next;
        free(c);
    }
    w->nfree = 0;
    ev_async_stop(loop, a);
    ev_break(loop, EVBREAK_ALL);
}

static void *worker_main(void *arg)
{
    hxb_worker *w = arg;

    ev_run(w->loop, 0);
    return NULL;
}

/* ---- startup ------------------------------------------------------------ */

static void addr_text(const struct sockaddr_storage *ss, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        snprintf(buf, size, "[%s]:%u", ip, ntohs(a->sin6_port));
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        snprintf(buf, size, "%s:%u", ip, ntohs(a->sin_port));
    }
}

static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
}

static uint16_t get_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

/* "127.0.0.1:9001" or "[::1]:9001"; port 0 picks a free port. */
static int parse_listen(const char *s, hxb_listen *l, char *err, size_t errlen)
{
    char host[INET6_ADDRSTRLEN];
    const char *port, *hend;
    int family;
    uint64_t pnum;

    memset(l, 0, sizeof *l);
    if (s[0] == '[') {
        hend = strchr(s, ']');
        if (hend == NULL || hend[1] != ':') {
            snprintf(err, errlen, "--listen '%s': expected [IPv6]:PORT", s);
            return -1;
        }
        s++;
        port = hend + 2;
        family = AF_INET6;
    } else {
        hend = strrchr(s, ':');
        if (hend == NULL) {
            snprintf(err, errlen, "--listen '%s': expected IPv4:PORT or [IPv6]:PORT", s);
            return -1;
        }
        port = hend + 1;
        family = AF_INET;
    }
    if ((size_t)(hend - s) >= sizeof host) {
        snprintf(err, errlen, "--listen: address too long");
        return -1;
    }
    memcpy(host, s, (size_t)(hend - s));
    host[hend - s] = '\0';
    if (!parse_u64(port, strlen(port), 65535, &pnum)) {
        snprintf(err, errlen, "--listen '%s': port must be 0..65535", port);
        return -1;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&l->ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)pnum);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
            snprintf(err, errlen, "--listen: '%s' is not a numeric IPv6 address", host);
            return -1;
        }
        l->len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&l->ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)pnum);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
            snprintf(err, errlen, "--listen: '%s' is not a numeric IPv4 address", host);
            return -1;
        }
        l->len = sizeof *a;
    }
    addr_text(&l->ss, l->text, sizeof l->text);
    return 0;
}

static int open_listener(hxb_listen *l, bool reuseport, bool do_listen, char *err, size_t errlen)
{
    int one = 1;
    int fd = socket(l->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        snprintf(err, errlen, "socket for %s: %s", l->text, strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        snprintf(err, errlen, "SO_REUSEPORT on %s: %s", l->text, strerror(errno));
        close(fd);
        return -1;
    }
    if (l->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&l->ss, l->len) != 0) {
        snprintf(err, errlen, "cannot bind %s: %s%s", l->text, strerror(errno),
                 errno == EADDRINUSE ? " (another backend still running?)" : "");
        close(fd);
        return -1;
    }
    if (do_listen && listen(fd, 4096) != 0) {
        snprintf(err, errlen, "listen on %s: %s", l->text, strerror(errno));
        close(fd);
        return -1;
    }
    if (get_port(&l->ss) == 0) {
        struct sockaddr_storage got;
        socklen_t glen = sizeof got;
        getsockname(fd, (struct sockaddr *)&got, &glen);
        set_port(&l->ss, get_port(&got));
        addr_text(&l->ss, l->text, sizeof l->text);
    }
    return fd;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: hx_backend --listen ADDR:PORT [--listen ...] [--name NAME] [--threads N]\n"
               "  ADDR is IPv4 (127.0.0.1:9001) or bracketed IPv6 ([::1]:9001); port 0 picks one.\n"
               "  Prints 'ready' on stdout once listening; SIGTERM/SIGINT exit 0.\n");
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > HXB_NAME_MAX || s[0] == ' ' || s[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e || s[i] == '"' || s[i] == '\\')
            return false;
    return true;
}

static const char opt_missing[] = "";

/* Returns the value of "--opt VALUE" or "--opt=VALUE", advancing *I;
 * NULL when argv[*i] is another option, opt_missing when the value is. */
static const char *opt_value(int argc, char **argv, int *i, const char *opt)
{
    size_t n = strlen(opt);

    if (strncmp(argv[*i], opt, n) != 0)
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] != '\0')
        return NULL;
    if (*i + 1 >= argc)
        return opt_missing;
    return argv[++*i];
}

static void init_settings(void)
{
    llhttp_settings_init(&g_settings);
    g_settings.on_message_begin = on_message_begin;
    g_settings.on_url = on_url;
    g_settings.on_url_complete = on_url_complete;
    g_settings.on_header_field = on_header_field;
    g_settings.on_header_field_complete = on_header_field_complete;
    g_settings.on_header_value = on_header_value;
    g_settings.on_header_value_complete = on_header_value_complete;
    g_settings.on_headers_complete = on_headers_complete;
    g_settings.on_body = on_body;
    g_settings.on_chunk_header = on_chunk_header;
    g_settings.on_chunk_complete = on_chunk_complete;
    g_settings.on_message_complete = on_message_complete;
}

int main(int argc, char **argv)
{
    hxb_listen listens[HXB_LISTEN_MAX];
    int nlisten = 0;
    uint64_t threads = 1;
    char err[256];

    for (int i = 1; i < argc; i++) {
        static const char *const opts[] = {"--listen", "--name", "--threads"};
        const char *v = NULL;
        size_t which = 0;

        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        while (which < sizeof opts / sizeof opts[0] &&
               (v = opt_value(argc, argv, &i, opts[which])) == NULL)
            which++;
        if (v == NULL) {
            fprintf(stderr, "hx_backend: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
        if (v == opt_missing) {
            fprintf(stderr, "hx_backend: %s needs a value\n", opts[which]);
            return 2;
        }
        if (which == 0) {
            if (nlisten == HXB_LISTEN_MAX) {
                fprintf(stderr, "hx_backend: at most %d --listen\n", HXB_LISTEN_MAX);
                return 2;
            }
            if (parse_listen(v, &listens[nlisten], err, sizeof err) != 0) {
                fprintf(stderr, "hx_backend: %s\n", err);
                return 2;
            }
            nlisten++;
        } else if (which == 1) {
            if (!name_ok(v)) {
                fprintf(stderr,
                        "hx_backend: --name must be 1..%d printable ASCII characters, "
                        "without quotes, backslashes or edge spaces\n",
                        HXB_NAME_MAX);
                return 2;
            }
            g_name = v;
            g_name_len = strlen(v);
        } else if (!parse_u64(v, strlen(v), HXB_THREADS_MAX, &threads) || threads == 0) {
            fprintf(stderr, "hx_backend: --threads must be 1..%d\n", HXB_THREADS_MAX);
            return 2;
        }
    }
    if (nlisten == 0) {
        usage(stderr);
        return 2;
    }

    for (size_t i = 0; i < sizeof g_pattern; i++)
        g_pattern[i] = (unsigned char)(i % HXB_PATTERN_MOD);
    init_settings();
    signal(SIGPIPE, SIG_IGN);

    g_nworkers = (int)threads;
    g_workers = calloc((size_t)g_nworkers, sizeof *g_workers);
    if (g_workers == NULL) {
        fprintf(stderr, "hx_backend: out of memory\n");
        return 1;
    }
    for (int t = 0; t < g_nworkers; t++) {
        size_t size = (sizeof(hxb_worker) + 63) / 64 * 64;
        hxb_worker *w = aligned_alloc(64, size);
        if (w == NULL) {
            fprintf(stderr, "hx_backend: out of memory\n");
            return 1;
        }
        memset(w, 0, sizeof *w);
        w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
        if (w->loop == NULL) {
            fprintf(stderr, "hx_backend: cannot create an event loop\n");
            return 1;
        }
        g_workers[t] = w;
    }

    /* SO_REUSEPORT would let us share a port with a stale backend from an
     * earlier test run and silently split its traffic; a plain bind first
     * makes that an error. */
    for (int l = 0; l < nlisten; l++) {
        if (get_port(&listens[l].ss) != 0) {
            int probe = open_listener(&listens[l], false, false, err, sizeof err);
            if (probe < 0) {
                fprintf(stderr, "hx_backend: %s\n", err);
                return 1;
            }
            close(probe);
        }
        for (int t = 0; t < g_nworkers; t++) {
            hxb_worker *w = g_workers[t];
            int fd = open_listener(&listens[l], true, true, err, sizeof err);
            if (fd < 0) {
                fprintf(stderr, "hx_backend: %s\n", err);
                return 1;
            }
            w->lfd[w->nlisten] = fd;
            ev_io_init(&w->accept_io[w->nlisten], accept_cb, fd, EV_READ);
            w->accept_io[w->nlisten].data = w;
            ev_io_start(w->loop, &w->accept_io[w->nlisten]);
            w->nlisten++;
        }
        fprintf(stderr, "hx_backend %s: listening on %s (%d thread%s)\n", g_name, listens[l].text,
                g_nworkers, g_nworkers == 1 ? "" : "s");
    }

    /* Workers inherit the mask: only this thread takes SIGTERM/SIGINT. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    for (int t = 0; t < g_nworkers; t++) {
        hxb_worker *w = g_workers[t];
        ev_init(&w->accept_backoff, accept_backoff_cb);
        w->accept_backoff.data = w;
        ev_async_init(&w->stop, stop_cb);
        w->stop.data = w;
        ev_async_start(w->loop, &w->stop);
        int rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc != 0) {
            fprintf(stderr, "hx_backend: pthread_create: %s\n", strerror(rc));
            return 1;
        }
    }
    fputs("ready\n", stdout);
    fflush(stdout);

    int sig = 0;
    sigwait(&sigs, &sig);
    for (int t = 0; t < g_nworkers; t++)
        ev_async_send(g_workers[t]->loop, &g_workers[t]->stop);
    for (int t = 0; t < g_nworkers; t++) {
        hxb_worker *w = g_workers[t];
        pthread_join(w->thread, NULL);
        for (int i = 0; i < w->nlisten; i++)
            close(w->lfd[i]);
        ev_loop_destroy(w->loop);
        free(w);
    }
    free(g_workers);
    return 0;
}
