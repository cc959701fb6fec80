/*
 * bench_h2.c - HTTP/2 on one connection (nghttp2): h2c with prior
 * knowledge on http://, h2 chosen by ALPN on https://. Up to --streams
 * requests share the connection (no more than the server's
 * SETTINGS_MAX_CONCURRENT_STREAMS).
 *
 * The session is driven with mem_recv/mem_send: bytes read go to
 * nghttp2_session_mem_recv, frames it wants sent are gathered in the
 * connection's output buffer and written together. Callbacks only record
 * (status, end of the response) and account a stream when nghttp2 closes
 * it. The request headers are built once per run (no copy: they outlive
 * every session). A stream without a complete response in --timeout is
 * reset (RST_STREAM CANCEL); the connection goes on.
 *
 * nghttp2 allocates per stream (stream objects, header blocks); its
 * allocator is a per-thread free list by size class, so a steady run
 * reuses memory instead of calling malloc per request.
 */
#include <stdlib.h>
#include <string.h>

#include "bench_internal.h"

/* ------------------------------------------------------------------ */
/* the pooled allocator                                                */

/* 16 bytes ahead of each block: its size class (or BIG with its size) */
typedef struct pool_hdr {
    uint32_t cls;
    uint32_t pad;
    uint64_t size; /* BIG only */
} pool_hdr;
#define POOL_BIG 0xffu
#define POOL_MIN 64u

static unsigned pool_class(size_t size)
{
    unsigned k = 0;
    while (k < BENCH_POOL_CLASSES && ((size_t)POOL_MIN << k) < size)
        k++;
    return k < BENCH_POOL_CLASSES ? k : POOL_BIG;
}

static void *pool_malloc(size_t size, void *user)
{
    bench_pool *p = user;
    unsigned k = pool_class(size);
    pool_hdr *h;
    if (k == POOL_BIG) {
        if (size > SIZE_MAX - sizeof(pool_hdr))
            return NULL;
        h = malloc(sizeof(pool_hdr) + size);
        if (h == NULL)
            return NULL;
        h->size = size;
    } else if (p->free[k] != NULL) {
        void *blk = p->free[k];
        memcpy(&p->free[k], blk, sizeof(void *));
        h = (pool_hdr *)blk - 1;
    } else {
        h = malloc(sizeof(pool_hdr) + ((size_t)POOL_MIN << k));
        if (h == NULL)
            return NULL;
    }
    h->cls = k;
    return h + 1;
}

static void pool_free(void *ptr, void *user)
{
    bench_pool *p = user;
    if (ptr == NULL)
        return;
    pool_hdr *h = (pool_hdr *)ptr - 1;
    if (h->cls == POOL_BIG) {
        free(h);
        return;
    }
    memcpy(ptr, &p->free[h->cls], sizeof(void *));
    p->free[h->cls] = ptr;
}

static void *pool_calloc(size_t n, size_t size, void *user)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *ptr = pool_malloc(n * size, user);
    if (ptr)
        memset(ptr, 0, n * size);
    return ptr;
}

static void *pool_realloc(void *ptr, size_t size, void *user)
{
    if (ptr == NULL)
        return pool_malloc(size, user);
    if (size == 0) {
        pool_free(ptr, user);
        return NULL;
    }
    pool_hdr *h = (pool_hdr *)ptr - 1;
    size_t cap = h->cls == POOL_BIG ? h->size : (size_t)POOL_MIN << h->cls;
    if (size <= cap)
        return ptr;
    void *q = pool_malloc(size, user);
    if (q == NULL)
        return NULL;
    memcpy(q, ptr, cap);
    pool_free(ptr, user);
    return q;
}

void bench_pool_init(bench_thread *t)
{
    memset(&t->pool, 0, sizeof(t->pool));
    t->mem = (nghttp2_mem){.mem_user_data = &t->pool,
                           .malloc = pool_malloc,
                           .free = pool_free,
                           .calloc = pool_calloc,
                           .realloc = pool_realloc};
}

void bench_pool_free(bench_thread *t)
{
    for (unsigned k = 0; k < BENCH_POOL_CLASSES; k++) {
        void *blk = t->pool.free[k];
        while (blk != NULL) {
            void *next;
            memcpy(&next, blk, sizeof(void *));
            free((pool_hdr *)blk - 1);
            blk = next;
        }
        t->pool.free[k] = NULL;
    }
}

/* ------------------------------------------------------------------ */
/* callbacks                                                           */

static bench_slot *stream_slot(nghttp2_session *session, int32_t id)
{
    bench_slot *s = nghttp2_session_get_stream_user_data(session, id);
    return s && s->busy && s->stream_id == id ? s : NULL;
}

static int h2_on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *user)
{
    (void)flags;
    (void)user;
    if (frame->hd.type != NGHTTP2_HEADERS || namelen != 7 || memcmp(name, ":status", 7) != 0)
        return 0;
    bench_slot *s = stream_slot(session, frame->hd.stream_id);
    if (s == NULL)
        return 0;
    int status = 0;
    for (size_t i = 0; i < valuelen && i < 3; i++)
        status = status * 10 + (value[i] - '0');
    s->status = valuelen == 3 ? status : 0;
    return 0;
}

static int h2_on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user)
{
    bench_conn *c = user;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        c->h2_dead = 1; /* no new streams; reconnect once these are done */
        return 0;
    }
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        bench_slot *s = stream_slot(session, frame->hd.stream_id);
        if (s)
            s->done = 1;
    }
    return 0;
}

static int h2_on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *user)
{
    bench_conn *c = user;
    bench_slot *s = stream_slot(session, id);
    if (s == NULL)
        return 0;
    if (s->timed_out) { /* counted when it timed out */
        s->busy = 0;
        c->inflight--;
        c->t->inflight--;
        return 0;
    }
    if (s->done && s->status >= 200) {
        bench_slot_done(c, s);
        return 0;
    }
    bench_conn_error_msg(c, BENCH_ERR_RESET, "stream reset by the server: %s",
                         nghttp2_http2_strerror(error_code));
    bench_slot_failed(c, s, BENCH_ERR_RESET);
    return 0;
}

static ssize_t h2_body_read(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *data_flags, nghttp2_data_source *source, void *user)
{
    (void)session;
    (void)id;
    bench_conn *c = user;
    bench_slot *s = source->ptr;
    const bench_run *r = c->t->run;
    size_t n = r->body_len - s->body_off;
    if (n > length)
        n = length;
    memcpy(buf, r->body + s->body_off, n);
    s->body_off += n;
    if (s->body_off == r->body_len)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* A connection error nghttp2 found in what the server sent (nghttp2 calls
 * this for connection errors only): bench_h2_on_io ends the connection as
 * a parse error. */
static int h2_on_error(nghttp2_session *session, int code, const char *msg, size_t len, void *user)
{
    (void)session;
    bench_conn *c = user;
    if (code != 0) {
        bench_conn_error_msg(c, BENCH_ERR_PARSE, "HTTP/2: %.*s", (int)len, msg);
        c->h2_err = 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* the session                                                         */

/* The callbacks, and the request headers: :method, :scheme, :authority,
 * :path, then the -H headers (names in lower case; Host becomes :authority,
 * connection-specific ones are left out), then content-length when there
 * is a body. */
int bench_h2_setup(bench_run *r, char *err, size_t errlen)
{
    if (nghttp2_session_callbacks_new(&r->h2_cbs) != 0) {
        snprintf(err, errlen, "cannot set up nghttp2 (out of memory)");
        return -1;
    }
    nghttp2_session_callbacks_set_on_header_callback(r->h2_cbs, h2_on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(r->h2_cbs, h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(r->h2_cbs, h2_on_stream_close);
    nghttp2_session_callbacks_set_error_callback2(r->h2_cbs, h2_on_error);
    const bench_opts *o = &r->o;
    size_t names = 1;
    for (unsigned i = 0; i < o->nheaders; i++)
        names += o->headers[i].name_len;
    r->h2_nv = calloc(o->nheaders + 5, sizeof(nghttp2_nv));
    r->h2_names = malloc(names);
    if (r->h2_nv == NULL || r->h2_names == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    const char *authority = o->authority;
    size_t authority_len = strlen(authority);
    for (unsigned i = 0; i < o->nheaders; i++)
        if (o->headers[i].name_len == 4 && strncasecmp(o->headers[i].name, "host", 4) == 0) {
            authority = o->headers[i].value;
            authority_len = o->headers[i].value_len;
        }
    size_t n = 0, used = 0;
    uint8_t fl = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
#define NV(n_, nl_, v_, vl_)                                                                       \
    r->h2_nv[n++] = (nghttp2_nv){(uint8_t *)(n_), (uint8_t *)(v_), (nl_), (vl_), fl}
    NV(":method", 7, o->method, strlen(o->method));
    NV(":scheme", 7, o->tls ? "https" : "http", o->tls ? 5u : 4u);
    NV(":authority", 10, authority, authority_len);
    NV(":path", 5, o->path, strlen(o->path));
    static const char *const skip[] = {
        "host",    "connection", "keep-alive", "proxy-connection", "transfer-encoding",
        "upgrade", "te"};
    for (unsigned i = 0; i < o->nheaders; i++) {
        const bench_header *h = &o->headers[i];
        int drop = 0;
        for (size_t k = 0; k < sizeof(skip) / sizeof(skip[0]); k++)
            if (strlen(skip[k]) == h->name_len && strncasecmp(h->name, skip[k], h->name_len) == 0)
                drop = 1;
        if (drop)
            continue;
        char *lower = r->h2_names + used;
        used += h->name_len;
        for (size_t k = 0; k < h->name_len; k++)
            lower[k] =
                (char)((h->name[k] >= 'A' && h->name[k] <= 'Z') ? h->name[k] + 32 : h->name[k]);
        NV(lower, h->name_len, h->value, h->value_len);
    }
    if (r->body_len || (o->body_file && !r->head)) {
        int k = snprintf(r->h2_clen, sizeof(r->h2_clen), "%zu", r->body_len);
        NV("content-length", 14, r->h2_clen, (size_t)k);
    }
#undef NV
    r->h2_nvlen = n;
    return 0;
}

int bench_h2_start(bench_conn *c)
{
    if (nghttp2_session_client_new3(&c->h2, c->t->run->h2_cbs, c, NULL, &c->t->mem) != 0)
        return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 24},
    };
    if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2) != 0 ||
        nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 1 << 30) != 0)
        return -1;
    c->olen = c->ooff = c->pendlen = 0;
    c->pend = NULL;
    c->h2_dead = 0;
    return 0; /* the preface and SETTINGS go out with conn_pump's flush */
}

void bench_h2_close(bench_conn *c)
{
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
}

int bench_h2_issue(bench_conn *c, bench_slot *s)
{
    const bench_run *r = c->t->run;
    nghttp2_data_provider body = {.source.ptr = s, .read_callback = h2_body_read};
    int32_t id =
        nghttp2_submit_request(c->h2, NULL, r->h2_nv, r->h2_nvlen, r->body_len ? &body : NULL, s);
    if (id < 0) {
        c->h2_dead = 1; /* out of stream ids, or going away: a new connection */
        return -1;
    }
    s->stream_id = id;
    return 0;
}

void bench_h2_cancel(bench_conn *c, bench_slot *s)
{
    nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->stream_id, NGHTTP2_CANCEL);
}

/* Gathers what nghttp2 wants sent into obuf and writes it. 0, or -1 when
 * the connection failed. */
int bench_h2_flush(bench_conn *c)
{
    for (;;) {
        while (c->olen < BENCH_H2_OBUF) {
            if (c->pendlen == 0) {
                ssize_t n = nghttp2_session_mem_send(c->h2, &c->pend);
                if (n < 0) {
                    bench_conn_error_msg(c, BENCH_ERR_PARSE, "HTTP/2: %s",
                                         nghttp2_strerror((int)n));
                    bench_conn_fail(c, BENCH_ERR_PARSE, NULL);
                    return -1;
                }
                if (n == 0)
                    break;
                c->pendlen = (size_t)n;
            }
            size_t k = BENCH_H2_OBUF - c->olen;
            if (k > c->pendlen)
                k = c->pendlen;
            memcpy(c->obuf + c->olen, c->pend, k);
            c->olen += k;
            c->pend += k;
            c->pendlen -= k;
        }
        if (c->olen == c->ooff)
            return 0;
        ssize_t n = bench_io_write(c, c->obuf + c->ooff, c->olen - c->ooff);
        if (n == BENCH_IO_AGAIN) {
            if (c->ooff > 0) { /* room for more frames next time */
                memmove(c->obuf, c->obuf + c->ooff, c->olen - c->ooff);
                c->olen -= c->ooff;
                c->ooff = 0;
            }
            return 0;
        }
        if (n <= 0) {
            bench_conn_fail(c, BENCH_ERR_WRITE, c->t->ioerr);
            return -1;
        }
        c->ooff += (size_t)n;
        if (c->ooff == c->olen)
            c->olen = c->ooff = 0;
    }
}

void bench_h2_on_io(bench_conn *c, int revents)
{
    (void)revents;
    int i;
    for (i = 0; i < BENCH_READS_PER_WAKEUP; i++) {
        ssize_t n = bench_io_read(c, c->rbuf, BENCH_RBUF);
        if (n == BENCH_IO_AGAIN)
            break;
        if (n == 0 || n < 0) {
            if (c->inflight == 0 && n == 0) {
                bench_conn_close_quietly(c);
                return;
            }
            bench_conn_fail(c, BENCH_ERR_READ,
                            n == 0 ? "the server closed the connection with streams open"
                                   : c->t->ioerr);
            return;
        }
        bench_conn_count_read(c, (size_t)n);
        ssize_t rv = nghttp2_session_mem_recv(c->h2, (const uint8_t *)c->rbuf, (size_t)n);
        if (rv < 0) {
            bench_conn_error_msg(c, BENCH_ERR_PARSE, "HTTP/2: %s", nghttp2_strerror((int)rv));
            bench_conn_fail(c, BENCH_ERR_PARSE, NULL);
            return;
        }
        if (c->h2_err) {
            /* a protocol error: what is in flight is lost; the server is
             * not told (it is probably not speaking HTTP/2 at all) */
            bench_conn_fail(c, BENCH_ERR_PARSE, NULL);
            return;
        }
    }
    if (i == BENCH_READS_PER_WAKEUP) /* more to read: after the others */
        ev_feed_event(c->t->loop, &c->io, EV_READ);
    if (bench_h2_flush(c) != 0)
        return;
    if (!nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2)) {
        bench_conn_close_quietly(c);
        return;
    }
    if (c->h2_dead && c->inflight == 0)
        bench_conn_close_quietly(c);
}
