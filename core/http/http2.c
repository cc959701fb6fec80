/*
 * http2.c - HTTP/2 on client connections (nghttp2): over TLS via ALPN "h2"
 * and in clear text with prior knowledge (h2c).
 *
 * Each stream is an hx_req like an HTTP/1.1 request: routing, filters,
 * handlers, balancers and pools never know the difference. What differs is
 * where bytes come from and go to:
 *   - request bodies: DATA frames are kept per stream and handed on (and
 *     only then acknowledged with WINDOW_UPDATE, nghttp2_session_consume)
 *     when the request can take them, so flow control is the backpressure;
 *   - responses: hx_resp_begin / hx_resp_body (request.c) call
 *     h2_resp_head / h2_resp_data (through hx_h2_ops), which queue per stream and resume
 *     the stream's DATA; frames are serialised into the connection's output
 *     buffer at flush, at most about 256 KiB ahead of the socket;
 *   - the end: a stream is finished (logged and freed) only at the
 *     connection's outermost conn_leave, never under a caller's feet.
 *
 * Defenses: max concurrent streams, header list size (431), HPACK table
 * size, nghttp2's rapid-reset limiter plus our own count of streams reset
 * by the client, a cap on CONTINUATION frames per header block, a cap on
 * control frames (PING, SETTINGS, PRIORITY, RST_STREAM, WINDOW_UPDATE) per
 * second, a SETTINGS acknowledgement timeout and an idle timeout. A
 * connection that breaks a rule gets GOAWAY and is closed; others go on.
 */
#include "http/http2.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/log.h"
#include "http/subreq.h"

#define H2_OUT_AHEAD (256 * 1024) /* serialised frames queued beyond the socket */
#define H2_GAPS 8                 /* ranges of skipped client stream ids remembered */

typedef struct hx_h2_stream {
    int32_t id;
    hx_req *r;
    hx_h2 *h;
    hx_buf in;          /* request body received, not yet handed on */
    int in_last;        /* END_STREAM received */
    int in_delivered_last;
    size_t hdr_bytes;
    int too_large;      /* header list over the limit: 431 */
    int bad;            /* malformed request: 400 */
    int started;        /* hx_req_start ran */
    int pushing;        /* inside stream_push_body */
    hx_buf out;         /* response body waiting for DATA frames */
    int out_last;       /* the whole body is in `out` */
    int out_eof;        /* END_STREAM (or the trailers) handed to nghttp2 */
    int deferred;
    int submitted;      /* response HEADERS submitted */
    int closed;         /* nghttp2 closed the stream */
    uint32_t close_code;
    struct hx_h2_stream *next, *prev;
} hx_h2_stream;

struct hx_h2 {
    nghttp2_session *s;
    hx_conn *c;
    hx_h2_stream *streams; /* open ones, and closed ones awaiting the reap */
    unsigned nstreams;
    int reap_pending;
    /* defenses */
    ev_tstamp win_start;
    unsigned ctrl_frames, resets;
    int32_t cont_stream;
    unsigned cont_count;
    ev_tstamp settings_sent;
    int settings_acked;
    int goaway_sent;
    const char *kill_reason;
    /* client stream ids: the highest opened, and the last ranges skipped */
    int64_t last_opened;
    struct {
        int64_t lo, hi;
    } gaps[H2_GAPS];
    unsigned ngaps;
    /* limits (from the generation at connection start) */
    unsigned max_ctrl_per_s, max_resets_per_s, max_continuations;
    size_t max_header_list;
};

static hx_h2_stream *S(hx_req *r) { return r->h2s; }

/* ------------------------------------------------------------------ */
/* misbehaviour                                                        */

static void h2_kill(hx_h2 *h, uint32_t code, const char *why)
{
    if (h->kill_reason)
        return;
    h->kill_reason = why;
    hx_info("%s: HTTP/2: %s: sending GOAWAY and closing", HX_CONN_PEER(h->c), why);
    nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->s),
                          code, (const uint8_t *)why, strlen(why));
    h->goaway_sent = 1;
    h->c->close_after = 1;
}

static void h2_window(hx_h2 *h)
{
    ev_tstamp now = ev_now(h->c->w->loop);
    if (now - h->win_start >= 1.0) {
        h->win_start = now;
        h->ctrl_frames = 0;
        h->resets = 0;
    }
}

/* ------------------------------------------------------------------ */
/* streams                                                             */

static void stream_unlink(hx_h2 *h, hx_h2_stream *st)
{
    if (st->prev)
        st->prev->next = st->next;
    else
        h->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
}

static void stream_free(hx_h2_stream *st)
{
    hx_buf_free(&st->in);
    hx_buf_free(&st->out);
    free(st);
}

/* Finishes a closed stream's request: logged, freed. Only from the reap. */
static void stream_finish(hx_h2 *h, hx_h2_stream *st)
{
    hx_req *r = st->r;
    st->r = NULL;
    if (r) {
        if (!r->resp_done) {
            r->aborted = 1;
            if (r->error_reason == NULL)
                r->error_reason = "stream reset by the client";
        }
        hx_proxy->detach(r);
        if (st->started || r->status)
            hx_req_log(r);
        r->h2s = NULL;
        hx_req_release(r);
    }
    stream_unlink(h, st);
    h->nstreams--;
    stream_free(st);
}

void hx_h2_reap(hx_conn *c)
{
    hx_h2 *h = c->h2;
    if (h == NULL || !h->reap_pending)
        return;
    h->reap_pending = 0;
    for (hx_h2_stream *st = h->streams, *next; st; st = next) {
        next = st->next;
        if (st->closed)
            stream_finish(h, st);
    }
}

/* ------------------------------------------------------------------ */
/* request bodies                                                      */

static int stream_takes_body(hx_req *r)
{
    if (r->phase == HX_PH_DONE || r->phase == HX_PH_RESPONDING)
        return 1; /* dropped, but still acknowledged */
    return hx_req_takes_body(r);
}

static void stream_push_body_loop(hx_h2_stream *st, hx_h2 *h, hx_req *r);

/* Hands buffered body bytes on while the request takes them. */
static void stream_push_body(hx_h2_stream *st)
{
    hx_h2 *h = st->h;
    hx_req *r = st->r;
    if (st->pushing)
        return; /* re-entered from the delivery below: the loop goes on */
    st->pushing = 1;
    stream_push_body_loop(st, h, r);
    st->pushing = 0;
}

static void stream_push_body_loop(hx_h2_stream *st, hx_h2 *h, hx_req *r)
{
    while (r && st->started && !st->in_delivered_last &&
           (hx_buf_size(&st->in) > 0 || st->in_last)) {
        if (!stream_takes_body(r))
            return;
        size_t n = hx_buf_size(&st->in);
        if (n > 65536)
            n = 65536;
        int last = st->in_last && n == hx_buf_size(&st->in);
        const char *p = hx_buf_head(&st->in);
        if (last)
            st->in_delivered_last = 1;
        if (hx_req_body_in(r, p, n, last) != 0) {
            hx_buf_consume(&st->in, n);
            nghttp2_submit_rst_stream(h->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
            return;
        }
        hx_buf_consume(&st->in, n);
        if (n)
            nghttp2_session_consume(h->s, st->id, n);
        r = st->r;
    }
}

static void h2_body_wanted(hx_req *r)
{
    if (S(r))
        stream_push_body(S(r));
}

/* ------------------------------------------------------------------ */
/* responses                                                           */

/* The response's trailers (from an HTTP/2 backend: gRPC's grpc-status)
 * as a HEADERS frame ending the stream. */
static int submit_trailers(nghttp2_session *s, hx_h2_stream *st)
{
    hx_req *r = st->r;
    nghttp2_nv *nv = hx_arena_alloc(&r->arena, r->trailers.n * sizeof(*nv));
    if (nv == NULL)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < r->trailers.n; i++) {
        hx_hdr *t = &r->trailers.v[i];
        if (!hx_hdr_name_valid(t->name.ptr, t->name.len) ||
            !hx_hdr_value_valid(t->value.ptr, t->value.len))
            continue;
        nv[n++] = (nghttp2_nv){(uint8_t *)t->name.ptr, (uint8_t *)t->value.ptr, t->name.len,
                               t->value.len, NGHTTP2_NV_FLAG_NONE};
    }
    return nghttp2_submit_trailer(s, st->id, nv, n) == 0 ? 0 : -1;
}

static ssize_t data_read_cb(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *flags, nghttp2_data_source *src, void *user)
{
    (void)s;
    (void)id;
    (void)user;
    hx_h2_stream *st = src->ptr;
    size_t n = hx_buf_size(&st->out);
    if (n > length)
        n = length;
    if (n)
        memcpy(buf, hx_buf_head(&st->out), n);
    hx_buf_consume(&st->out, n);
    if (hx_buf_size(&st->out) == 0 && st->out_last) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        st->out_eof = 1;
        hx_buf_shrink(&st->out, 0);
        if (st->r && st->r->trailers.n && submit_trailers(s, st) == 0)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM; /* the trailers end it */
        /* answered before the client finished its body: tell it to stop */
        if (!st->in_last)
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    } else if (n == 0) {
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    hx_req *r = st->r;
    if (r && hx_buf_size(&st->out) < 65536)
        hx_req_drained(r);
    return (ssize_t)n;
}

static int is_h1_only_header(const helios_buf *n)
{
    static const char *const names[] = {"connection", "keep-alive", "proxy-connection",
                                        "transfer-encoding", "upgrade", "te", "trailer", NULL};
    for (int i = 0; names[i]; i++)
        if (strlen(names[i]) == n->len && strncasecmp(names[i], n->ptr, n->len) == 0)
            return 1;
    return 0;
}

static int h2_resp_head(hx_req *r)
{
    hx_h2_stream *st = S(r);
    hx_h2 *h = st->h;
    size_t cap = r->rhdrs.n + 3;
    nghttp2_nv *nv = hx_arena_alloc(&r->arena, cap * sizeof(*nv));
    if (nv == NULL)
        return -1;
    char status[4];
    snprintf(status, sizeof(status), "%03d", r->status);
    size_t n = 0;
    nv[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < r->rhdrs.n; i++) {
        hx_hdr *hd = &r->rhdrs.v[i];
        if (is_h1_only_header(&hd->name))
            continue;
        if (!hx_hdr_name_valid(hd->name.ptr, hd->name.len) ||
            !hx_hdr_value_valid(hd->value.ptr, hd->value.len))
            continue;
        /* HTTP/2 field names are lower case */
        char *lname = hx_arena_alloc(&r->arena, hd->name.len + 1);
        if (lname == NULL)
            return -1;
        for (size_t k = 0; k < hd->name.len; k++) {
            char ch = hd->name.ptr[k];
            lname[k] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
        nv[n++] = (nghttp2_nv){(uint8_t *)lname, (uint8_t *)hd->value.ptr, hd->name.len,
                               hd->value.len, NGHTTP2_NV_FLAG_NONE};
    }
    if (r->add_date) {
        const char *d = hx_worker_date(r->w); /* nghttp2 copies it */
        nv[n++] = (nghttp2_nv){(uint8_t *)"date", (uint8_t *)d, 4, strlen(d),
                               NGHTTP2_NV_FLAG_NONE};
    }
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = data_read_cb};
    int rv = nghttp2_submit_response(h->s, st->id, nv, n, r->resp_no_body ? NULL : &prd);
    if (rv != 0) {
        hx_warn("HTTP/2 stream %d: cannot submit the response: %s", st->id,
                nghttp2_strerror(rv));
        return -1;
    }
    st->submitted = 1;
    if (r->resp_no_body) {
        st->out_last = st->out_eof = 1;
        if (!st->in_last)
            nghttp2_submit_rst_stream(h->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int h2_resp_data(hx_req *r, const char *p, size_t n, int last)
{
    hx_h2_stream *st = S(r);
    if (n && hx_buf_append(&st->out, p, n) != 0)
        return -1;
    if (last)
        st->out_last = 1;
    if (st->deferred && (n || last)) {
        st->deferred = 0;
        nghttp2_session_resume_data(st->h->s, st->id);
    }
    return 0;
}

static size_t h2_pending(const hx_req *r)
{
    const hx_h2_stream *st = r->h2s;
    return st ? hx_buf_size(&st->out) : 0;
}

static void h2_resp_abort(hx_req *r)
{
    hx_h2_stream *st = S(r);
    if (st && !st->closed)
        nghttp2_submit_rst_stream(st->h->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
}

/* A body chunk from the request layer; the end goes with the trailers. */
static int h2_write_body(hx_req *r, const char *p, size_t n, int last)
{
    if (n && h2_resp_data(r, p, n, 0) != 0) {
        hx_resp_abort(r, "out of memory");
        return -1;
    }
    if (last)
        h2_resp_data(r, NULL, 0, 1);
    return 0;
}

/* HTTP/2 streams as the request layer sees them (request.h). */
const hx_req_ops hx_h2_ops = {
    .name = "HTTP/2",
    .write_head = h2_resp_head,
    .write_body = h2_write_body,
    .abort = h2_resp_abort,
    .no_reuse = NULL, /* a stream is reset, the connection goes on */
    .fail = NULL,
    .body_wanted = h2_body_wanted,
    .pending = h2_pending,
    .enter = hx_conn_req_enter,
    .leave = hx_conn_req_leave,
};

/* ------------------------------------------------------------------ */
/* nghttp2 callbacks                                                   */

/*
 * RFC 9113 5.1.1: a new stream's id is above every id the client opened,
 * and the ids it skipped are closed. nghttp2 ignores a HEADERS frame below
 * its highest id when it no longer holds that stream: it cannot tell an id
 * the client skipped (a connection error) from a stream closed and
 * forgotten, whose late trailers are no error. So the skipped ranges are
 * remembered here (the last H2_GAPS of them; clients count up by two, so
 * there are rarely any) and a HEADERS frame in one is a PROTOCOL_ERROR
 * (h2spec 5.1.1/2). Returns 1 for such a frame.
 */
static int h2_headers_on_skipped_id(hx_h2 *h, int32_t id)
{
    if (id <= 0 || (id & 1) == 0)
        return 0; /* stream 0 and even ids: nghttp2's own checks */
    if (id > h->last_opened) {
        if (id > h->last_opened + 2) {
            if (h->ngaps == H2_GAPS) {
                memmove(&h->gaps[0], &h->gaps[1], sizeof(h->gaps[0]) * (H2_GAPS - 1));
                h->ngaps--;
            }
            h->gaps[h->ngaps].lo = h->last_opened + 2;
            h->gaps[h->ngaps].hi = id - 2;
            h->ngaps++;
        }
        h->last_opened = id;
        return 0;
    }
    for (unsigned i = 0; i < h->ngaps; i++)
        if (id >= h->gaps[i].lo && id <= h->gaps[i].hi)
            return 1;
    return 0;
}

static int on_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *user)
{
    (void)s;
    hx_h2 *h = user;
    h2_window(h);
    switch (hd->type) {
    /* WINDOW_UPDATE is not counted: a reader acknowledges every DATA frame
     * with two of them, and they cost no answer */
    case NGHTTP2_PING:
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PRIORITY:
    case NGHTTP2_RST_STREAM:
        if (++h->ctrl_frames > h->max_ctrl_per_s) {
            h2_kill(h, NGHTTP2_ENHANCE_YOUR_CALM, "control frame flood");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    case NGHTTP2_HEADERS:
        if (h2_headers_on_skipped_id(h, hd->stream_id)) {
            h2_kill(h, NGHTTP2_PROTOCOL_ERROR,
                    "HEADERS opening a stream id lower than one already opened");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        h->cont_stream = hd->stream_id;
        h->cont_count = 0;
        break;
    case NGHTTP2_CONTINUATION:
        if (++h->cont_count > h->max_continuations) {
            h2_kill(h, NGHTTP2_ENHANCE_YOUR_CALM, "CONTINUATION flood");
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    hx_h2 *h = user;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (h->goaway_sent)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    hx_h2_stream *st = calloc(1, sizeof(*st));
    hx_req *r = st ? hx_req_alloc(&hx_h2_ops, h->c->w, h->c) : NULL;
    if (r == NULL) {
        free(st);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    memcpy(&r->client, &h->c->peer, sizeof(h->c->peer));
    r->https = h->c->ssl != NULL;
    st->id = f->hd.stream_id;
    st->h = h;
    st->r = r;
    r->h2s = st;
    r->http_major = 2;
    r->http_minor = 0;
    r->keepalive = 1;
    st->next = h->streams;
    if (h->streams)
        h->streams->prev = st;
    h->streams = st;
    h->nstreams++;
    nghttp2_session_set_stream_user_data(s, st->id, st);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user)
{
    (void)flags;
    (void)user;
    hx_h2_stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st == NULL || st->r == NULL)
        return 0;
    hx_req *r = st->r;
    if (st->started)
        return 0; /* request trailers: not forwarded */
    st->hdr_bytes += namelen + valuelen + 32;
    if (st->hdr_bytes > st->h->max_header_list) {
        st->too_large = 1;
        return 0;
    }
    if (st->too_large)
        return 0;
    const char *n = (const char *)name, *v = (const char *)value;
    if (namelen > 0 && n[0] == ':') {
        char *copy = hx_arena_strndup(&r->arena, v, valuelen);
        if (copy == NULL)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        helios_buf b = {copy, valuelen};
        if (namelen == 7 && memcmp(n, ":method", 7) == 0)
            r->method = b;
        else if (namelen == 5 && memcmp(n, ":path", 5) == 0)
            r->target = b;
        else if (namelen == 10 && memcmp(n, ":authority", 10) == 0) {
            r->authority = b; /* checked against host by the request layer */
        } else if (namelen == 9 && memcmp(n, ":protocol", 9) == 0)
            st->bad = 1; /* extended CONNECT is not offered */
        return 0;
    }
    if (namelen == 4 && memcmp(n, "host", 4) == 0 && hx_hdrs_get(&r->hdrs, "host").ptr)
        st->bad = 1; /* more than one host field */
    if (namelen == 14 && memcmp(n, "content-length", 14) == 0) {
        int64_t cl = 0;
        for (size_t i = 0; i < valuelen && cl >= 0; i++)
            cl = v[i] >= '0' && v[i] <= '9' && cl < (INT64_MAX - 9) / 10 ? cl * 10 + (v[i] - '0')
                                                                         : -1;
        if (valuelen == 0 || cl < 0)
            st->bad = 1;
        r->content_length = cl;
        /* kept like any header, so filters see it as on HTTP/1.1; both
         * upstream serialisers write their own framing, never this one */
    }
    /* cookies may come split (RFC 9113 8.2.3): joined at the end */
    if (hx_hdrs_add(&r->arena, &r->hdrs, n, namelen, v, valuelen) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static void join_cookies(hx_req *r)
{
    size_t count = 0, total = 0;
    for (size_t i = 0; i < r->hdrs.n; i++)
        if (r->hdrs.v[i].name.len == 6 && memcmp(r->hdrs.v[i].name.ptr, "cookie", 6) == 0) {
            count++;
            total += r->hdrs.v[i].value.len + 2;
        }
    if (count < 2)
        return;
    char *buf = hx_arena_alloc(&r->arena, total);
    if (buf == NULL)
        return;
    size_t o = 0;
    for (size_t i = 0; i < r->hdrs.n; i++)
        if (r->hdrs.v[i].name.len == 6 && memcmp(r->hdrs.v[i].name.ptr, "cookie", 6) == 0) {
            if (o) {
                buf[o++] = ';';
                buf[o++] = ' ';
            }
            memcpy(buf + o, r->hdrs.v[i].value.ptr, r->hdrs.v[i].value.len);
            o += r->hdrs.v[i].value.len;
        }
    hx_hdrs_remove(&r->hdrs, "cookie");
    hx_hdrs_add(&r->arena, &r->hdrs, "cookie", 6, buf, o);
}

static void stream_start(hx_h2 *h, hx_h2_stream *st, int end_stream)
{
    hx_req *r = st->r;
    st->started = 1;
    st->in_last = end_stream;
    r->body_done = end_stream;
    r->has_body = !end_stream;
    r->chunked = !end_stream && r->content_length < 0;
    if (r->method.ptr)
        r->method_id = hx_method_id(r->method.ptr, r->method.len);
    r->is_head = r->method_id == HTTP_HEAD;
    join_cookies(r);
    if (st->too_large) {
        hx_req_error(r, 431, "HTTP/2 header list too large");
        return;
    }
    uint64_t max = r->gen->limits.max_request_body;
    if (max && r->content_length >= 0 && (uint64_t)r->content_length > max) {
        hx_req_error(r, 413, "request body larger than limits.max_request_body");
        return;
    }
    if (st->bad || r->method.ptr == NULL || r->target.ptr == NULL || r->method_id == HTTP_CONNECT) {
        hx_req_error(r, 400, "malformed HTTP/2 request");
        return;
    }
    (void)h;
    hx_req_start(r);
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *user)
{
    hx_h2 *h = user;
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        if (f->hd.flags & NGHTTP2_FLAG_ACK)
            h->settings_acked = 1;
        return 0;
    case NGHTTP2_HEADERS: {
        hx_h2_stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (st == NULL || st->r == NULL)
            return 0;
        int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
        if (!st->started) {
            if (f->headers.cat == NGHTTP2_HCAT_REQUEST)
                stream_start(h, st, end);
        } else if (end) {
            st->in_last = 1; /* trailers end the body */
            stream_push_body(st);
        }
        return 0;
    }
    case NGHTTP2_DATA: {
        hx_h2_stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (st && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            st->in_last = 1;
            stream_push_body(st);
        }
        return 0;
    }
    default:
        return 0;
    }
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    (void)flags;
    (void)user;
    hx_h2_stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st == NULL || st->r == NULL) {
        nghttp2_session_consume(s, id, len);
        return 0;
    }
    if (hx_buf_append(&st->in, data, len) != 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    stream_push_body(st);
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *user)
{
    hx_h2 *h = user;
    hx_h2_stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(s, id, NULL);
    st->closed = 1;
    st->close_code = code;
    h->reap_pending = 1;
    if (st->r && !st->r->resp_done) {
        /* the client gave up on it (or we reset it) */
        h2_window(h);
        if (code != NGHTTP2_NO_ERROR && ++h->resets > h->max_resets_per_s)
            h2_kill(h, NGHTTP2_ENHANCE_YOUR_CALM, "too many streams reset (rapid reset)");
        hx_proxy->detach(st->r);
    }
    return 0;
}

static int on_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int err, void *user)
{
    (void)s;
    (void)f;
    hx_h2 *h = user;
    hx_debug("%s: HTTP/2 invalid frame: %s", HX_CONN_PEER(h->c), nghttp2_strerror(err));
    return 0;
}

/* ------------------------------------------------------------------ */
/* connection                                                          */

int hx_h2_start(hx_conn *c, const uint8_t *settings_payload, size_t len)
{
    (void)settings_payload;
    (void)len;
    const hx_gen *g = c->w->wgen->gen;
    const hx_h2_conf *hc = &g->http2;
    hx_h2 *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    h->c = c;
    h->last_opened = -1; /* the first client stream is 1 */
    h->max_ctrl_per_s = hc->max_control_frames;
    h->max_resets_per_s = hc->max_resets;
    h->max_continuations = hc->max_continuations;
    h->max_header_list = g->limits.max_header_size + g->limits.max_request_line;
    h->win_start = ev_now(c->w->loop);

    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) {
        free(h);
        return -1;
    }
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, hc->header_table_size);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_stream_reset_rate_limit(opt, hc->max_resets * 2, hc->max_resets);
    nghttp2_option_set_max_continuations(opt, hc->max_continuations);
    int rv = nghttp2_session_server_new2(&h->s, cb, h, opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    if (rv != 0) {
        free(h);
        return -1;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, hc->max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, hc->initial_window_size},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)h->max_header_list},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, hc->header_table_size},
    };
    nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    /* a bigger connection window than the 64 KiB default: streams share it */
    nghttp2_session_set_local_window_size(h->s, NGHTTP2_FLAG_NONE, 0,
                                          (int32_t)(hc->initial_window_size * 4 > (1u << 30)
                                                        ? (1u << 30)
                                                        : hc->initial_window_size * 4));
    h->settings_sent = ev_now(c->w->loop);
    c->h2 = h;
    return 0;
}

/* Feeds the input buffer to nghttp2. */
void hx_h2_input(hx_conn *c)
{
    hx_h2 *h = c->h2;
    size_t avail = hx_buf_size(&c->in);
    if (avail == 0 || h->kill_reason)
        return;
    ssize_t n = nghttp2_session_mem_recv(h->s, (const uint8_t *)hx_buf_head(&c->in), avail);
    if (n < 0) {
        /* a connection error: GOAWAY with the closest code, then close */
        if (n == NGHTTP2_ERR_FLOODED)
            h2_kill(h, NGHTTP2_ENHANCE_YOUR_CALM, "flood (nghttp2)");
        else if (n == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS)
            h2_kill(h, NGHTTP2_ENHANCE_YOUR_CALM, "CONTINUATION flood");
        else if (n == NGHTTP2_ERR_HEADER_COMP)
            h2_kill(h, NGHTTP2_COMPRESSION_ERROR, nghttp2_strerror((int)n));
        else
            h2_kill(h, NGHTTP2_PROTOCOL_ERROR, nghttp2_strerror((int)n));
        hx_buf_reset(&c->in);
        return;
    }
    hx_buf_consume(&c->in, (size_t)n);
    c->last_io = ev_now(c->w->loop);
}

/* Serialises pending frames into the connection's output. Returns -1
 * when the session failed. */
int hx_h2_pump(hx_conn *c)
{
    hx_h2 *h = c->h2;
    while (hx_buf_size(&c->out) < H2_OUT_AHEAD) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h->s, &data);
        if (n < 0) {
            hx_info("%s: HTTP/2 send: %s", HX_CONN_PEER(c), nghttp2_strerror((int)n));
            return -1;
        }
        if (n == 0)
            break;
        if (hx_buf_append(&c->out, data, (size_t)n) != 0)
            return -1;
    }
    return 0;
}

/* 1 when the connection has nothing more to do and may close. */
int hx_h2_done(hx_conn *c)
{
    hx_h2 *h = c->h2;
    if (h->kill_reason)
        return !nghttp2_session_want_write(h->s) || hx_buf_size(&c->out) > H2_OUT_AHEAD;
    if (h->goaway_sent && h->nstreams == 0)
        return !nghttp2_session_want_write(h->s); /* idle or shutting down */
    return !nghttp2_session_want_read(h->s) && !nghttp2_session_want_write(h->s);
}

int hx_h2_wants_read(hx_conn *c)
{
    hx_h2 *h = c->h2;
    return !h->kill_reason && nghttp2_session_want_read(h->s) &&
           hx_buf_size(&c->out) < 4 * H2_OUT_AHEAD;
}

int hx_h2_wants_write(hx_conn *c) { return c->h2 && nghttp2_session_want_write(c->h2->s); }

int hx_h2_killed(hx_conn *c) { return c->h2 && (c->h2->kill_reason != NULL || c->h2->goaway_sent); }

unsigned hx_h2_active_streams(hx_conn *c) { return c->h2 ? c->h2->nstreams : 0; }

/* Timers: NULL when nothing is due (*NEXT: the earliest deadline), else
 * why the connection ends; with ACT the GOAWAY is queued too, without it
 * the check only reads (conn_update_timer). */
const char *hx_h2_check_timeouts(hx_conn *c, ev_tstamp now, ev_tstamp *next, int act)
{
    hx_h2 *h = c->h2;
    const hx_gen *g = c->w->wgen->gen;
    if (!h->settings_acked) {
        ev_tstamp at = h->settings_sent + g->http2.settings_timeout_ms / 1000.0;
        if (now >= at) {
            if (act)
                h2_kill(h, NGHTTP2_SETTINGS_TIMEOUT, "SETTINGS not acknowledged in time");
            return "settings timeout";
        }
        if (*next == 0 || at < *next)
            *next = at;
    }
    if (h->nstreams == 0) {
        ev_tstamp at = c->last_io + g->timeouts.keepalive_ms / 1000.0;
        if (now >= at) {
            if (act && !h->goaway_sent)
                nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE,
                                      nghttp2_session_get_last_proc_stream_id(h->s),
                                      NGHTTP2_NO_ERROR, NULL, 0);
            if (act)
                h->goaway_sent = 1;
            return "idle";
        }
        if (*next == 0 || at < *next)
            *next = at;
    }
    return NULL;
}

/* Graceful stop: no new streams; those open finish. */
void hx_h2_shutdown(hx_conn *c)
{
    hx_h2 *h = c->h2;
    if (h->goaway_sent)
        return;
    nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->s),
                          NGHTTP2_NO_ERROR, NULL, 0);
    h->goaway_sent = 1;
}

/* The connection is going away: every stream's request ends. */
void hx_h2_free(hx_conn *c)
{
    hx_h2 *h = c->h2;
    if (h == NULL)
        return;
    while (h->streams) {
        h->streams->closed = 1;
        stream_finish(h, h->streams);
    }
    nghttp2_session_del(h->s);
    free(h);
    c->h2 = NULL;
}

/* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": 1 complete, 0 a prefix of it so far,
 * -1 something else. */
int hx_h2_preface(const char *p, size_t n)
{
    static const char pre[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    size_t m = n < sizeof(pre) - 1 ? n : sizeof(pre) - 1;
    if (memcmp(p, pre, m) != 0)
        return -1;
    return m == sizeof(pre) - 1 ? 1 : 0;
}
