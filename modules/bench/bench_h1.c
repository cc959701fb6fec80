/*
 * bench_h1.c - HTTP/1.1 on one connection: one request at a time
 * (keep-alive, no pipelining, like wrk), the response parsed by llhttp.
 *
 * The request is the run's prebuilt bytes (head and body), written from an
 * offset; nothing is formatted per request. llhttp's callbacks only record:
 * the status, keep-alive, the completion (bench_slot_done); the connection
 * is closed or the next request sent after llhttp_execute has returned.
 * An interim 1xx response is skipped; a response that arrives with no
 * request out, or bytes after the response, are parse errors.
 */
#include <string.h>

#include "bench_internal.h"

static int h1_on_message_begin(llhttp_t *p)
{
    bench_conn *c = p->data;
    if (!c->slots[0].busy) {
        llhttp_set_error_reason(p, "a response arrived with no request out");
        return HPE_USER;
    }
    return HPE_OK;
}

static int h1_on_headers_complete(llhttp_t *p)
{
    bench_conn *c = p->data;
    c->slots[0].status = llhttp_get_status_code(p);
    /* 1: the response has no body (a response to HEAD) */
    return c->t->run->head ? 1 : 0;
}

static int h1_on_message_complete(llhttp_t *p)
{
    bench_conn *c = p->data;
    int status = llhttp_get_status_code(p);
    if (status >= 100 && status < 200 && status != 101)
        return HPE_OK; /* interim; the final response follows */
    c->keep_alive = llhttp_should_keep_alive(p) && status != 101;
    c->slots[0].status = status;
    c->h1_complete = 1; /* h1_feed acts on it once llhttp has returned */
    bench_slot_done(c, &c->slots[0]);
    return HPE_OK;
}

static const llhttp_settings_t h1_settings = {
    .on_message_begin = h1_on_message_begin,
    .on_headers_complete = h1_on_headers_complete,
    .on_message_complete = h1_on_message_complete,
};

void bench_h1_start(bench_conn *c)
{
    llhttp_init(&c->parser, HTTP_RESPONSE, &h1_settings);
    c->parser.data = c;
    c->keep_alive = 1;
    c->h1_complete = 0;
    c->writing = 0;
}

/* Writes what is left of the request. 0, or -1 when the connection failed. */
int bench_h1_flush(bench_conn *c)
{
    const bench_run *r = c->t->run;
    while (c->writing) {
        ssize_t n = bench_io_write(c, r->h1_req + c->wsent, r->h1_req_len - c->wsent);
        if (n == BENCH_IO_AGAIN)
            return 0;
        if (n <= 0) {
            bench_conn_fail(c, BENCH_ERR_WRITE, c->t->ioerr);
            return -1;
        }
        c->wsent += (size_t)n;
        if (c->wsent == r->h1_req_len)
            c->writing = 0;
    }
    return 0;
}

int bench_h1_issue(bench_conn *c, bench_slot *s)
{
    (void)s;
    c->wsent = 0;
    c->writing = 1;
    bench_h1_flush(c);
    return 0;
}

/* After a complete response: the next request, or a new connection. */
static void h1_after_response(bench_conn *c)
{
    c->h1_complete = 0;
    /* a response that came before the whole request was written (an early
     * 413, say) leaves a half-sent request: that connection is done */
    if (!c->keep_alive || c->writing)
        bench_conn_close_quietly(c);
}

static int h1_feed(bench_conn *c, const char *data, size_t len)
{
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err != HPE_OK) {
        const char *why = llhttp_get_error_reason(&c->parser);
        bench_conn_error_msg(c, BENCH_ERR_PARSE, "malformed response: %s",
                             why && *why ? why : llhttp_errno_name(err));
        bench_conn_fail(c, BENCH_ERR_PARSE, NULL);
        return -1;
    }
    if (c->h1_complete) {
        h1_after_response(c);
        return c->state == BENCH_C_READY ? 0 : -1;
    }
    return 0;
}

static void h1_eof(bench_conn *c)
{
    if (c->slots[0].busy && llhttp_message_needs_eof(&c->parser)) {
        /* a response delimited by the end of the connection */
        if (llhttp_finish(&c->parser) == HPE_OK && c->h1_complete) {
            c->keep_alive = 0;
            h1_after_response(c);
            return;
        }
    }
    if (c->slots[0].busy) {
        bench_conn_fail(c, BENCH_ERR_READ,
                        "the server closed the connection before the response was complete");
        return;
    }
    bench_conn_close_quietly(c);
}

void bench_h1_on_io(bench_conn *c, int revents)
{
    (void)revents;
    if (c->writing && bench_h1_flush(c) != 0)
        return;
    for (int i = 0; i < BENCH_READS_PER_WAKEUP; i++) {
        ssize_t n = bench_io_read(c, c->rbuf, BENCH_RBUF);
        if (n == BENCH_IO_AGAIN)
            return;
        if (n == 0) {
            h1_eof(c);
            return;
        }
        if (n < 0) {
            if (c->slots[0].busy)
                bench_conn_fail(c, BENCH_ERR_READ, c->t->ioerr);
            else
                bench_conn_close_quietly(c);
            return;
        }
        bench_conn_count_read(c, (size_t)n);
        if (h1_feed(c, c->rbuf, (size_t)n) != 0)
            return;
        if (!c->slots[0].busy)
            return; /* complete: conn_pump sends the next request */
    }
    /* more to read than one wakeup takes: come back after the others */
    ev_feed_event(c->t->loop, &c->io, EV_READ);
}
