/*
 * bench_internal.h - shared between the bench module's files.
 *
 *   bench.c         the descriptor and its command table, options, the run:
 *                   threads, Ctrl-C, the progress line, merging
 *   bench_conn.c    one thread's event loop: connections (TCP, TLS), the
 *                   closed- and open-loop schedules, timeouts, accounting
 *   bench_h1.c      HTTP/1.1 on a connection (llhttp)
 *   bench_h2.c      HTTP/2 on a connection (nghttp2), its pooled allocator
 *   bench_report.c  the text report and the --json document
 *   bench_hist.c    the latency histogram
 *
 * Threads: options, setup and the report run on heliosd's main thread;
 * each bench_thread and its connections belong to its own thread and event
 * loop, which the main thread reads only after joining it (the progress
 * counters excepted: relaxed atomics).
 */
#ifndef HELIOS_BENCH_INTERNAL_H
#define HELIOS_BENCH_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <ev.h>
#include <llhttp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include "bench_hist.h"

#define BENCH_VERSION "0.1.0"
#define BENCH_RBUF (16u * 1024)     /* read buffer per connection */
#define BENCH_H2_OBUF (16u * 1024)  /* HTTP/2 output buffer per connection */
#define BENCH_READS_PER_WAKEUP 16   /* fairness between connections */
#define BENCH_MAX_HEADERS 64        /* -H options */
#define BENCH_MAX_STREAMS 1024      /* --streams */
#define BENCH_MAX_CONNECTIONS 50000 /* 32 KiB of buffers each */
#define BENCH_MAX_THREADS 256
#define BENCH_BODY_MAX (64u * 1024 * 1024) /* --body-file */
#define BENCH_SWEEP_S 0.05                 /* timeout check period */
#define BENCH_RETRY_S 0.01                 /* pause after a failed connect */

enum bench_http { BENCH_HTTP_AUTO, BENCH_HTTP_1, BENCH_HTTP_2, BENCH_HTTP_3 };

/* Errors by kind. connect and tls count failed connection attempts; the
 * others count requests that were sent and got no complete response, each
 * request once, under the kind that ended it. */
enum bench_err {
    BENCH_ERR_CONNECT, /* refused, unreachable, connect timeout */
    BENCH_ERR_TLS,     /* handshake failure, certificate, ALPN refused */
    BENCH_ERR_TIMEOUT, /* no complete response within --timeout */
    BENCH_ERR_READ,    /* reset, or closed before the response was complete */
    BENCH_ERR_WRITE,   /* the request could not be written */
    BENCH_ERR_PARSE,   /* malformed HTTP/1.1 response, HTTP/2 protocol error */
    BENCH_ERR_RESET,   /* HTTP/2 stream reset or refused by the server */
    BENCH_ERR_COUNT
};
extern const char *const bench_err_names[BENCH_ERR_COUNT];

typedef struct bench_header {
    const char *name, *value; /* value points into the -H argument */
    size_t name_len, value_len;
} bench_header;

/* What the command line asked for; immutable once the threads start. */
typedef struct bench_opts {
    const char *url;
    int tls;        /* https */
    char host[256]; /* from the URL, without brackets */
    char port[8];
    char authority[300];    /* host[:port] as written: Host and :authority */
    char *path;             /* path and query; "/" when the URL has none */
    const char *connect_to; /* --connect HOST:PORT, or NULL */
    double duration_s, warmup_s, timeout_s;
    double rate;           /* requests/s over all connections; 0: closed loop */
    uint64_t max_requests; /* -n; 0: none */
    unsigned connections, threads, streams;
    int http;         /* enum bench_http */
    int duration_set; /* -d given (with -n it is a cap) */
    const char *method;
    bench_header headers[BENCH_MAX_HEADERS];
    unsigned nheaders;
    const char *body_file;
    const char *cacert; /* verify the server against it; NULL: no verification */
    int json;
} bench_opts;

typedef struct bench_thread bench_thread;

/* The run: options plus what setup derived from them; read-only for the
 * threads (but `stop`). */
typedef struct bench_run {
    bench_opts o;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char addr_text[300]; /* the address connected to, for messages */
    SSL_CTX *ssl_ctx;    /* NULL for http:// */
    char *body;          /* --body-file content */
    size_t body_len;
    int head;     /* HEAD: responses have no body */
    char *h1_req; /* the whole HTTP/1.1 request, body included */
    size_t h1_req_len;
    nghttp2_nv *h2_nv; /* the HTTP/2 request headers */
    size_t h2_nvlen;
    char *h2_names; /* the -H names in lower case */
    nghttp2_session_callbacks *h2_cbs;
    char h2_clen[24];     /* content-length value */
    uint64_t start_ns;    /* CLOCK_MONOTONIC: threads start */
    uint64_t measure_ns;  /* warm-up ends, measurement starts */
    uint64_t end_ns;      /* measurement ends (with -n, at the latest) */
    uint64_t interval_ns; /* open loop: between two requests of one connection */
    double slot_ns;       /* open loop: 1e9 / rate, the global spacing */
    bench_thread *threads;
    unsigned nthreads;
    atomic_int stop; /* Ctrl-C */
    struct ev_loop *main_loop;
    ev_async *main_wake; /* a thread finished */
} bench_run;

/* One request in flight (an HTTP/2 stream or the HTTP/1.1 request). */
typedef struct bench_slot {
    uint64_t intended_ns; /* open loop: when the schedule wanted it sent */
    uint64_t sent_ns;
    int32_t stream_id;
    int status;
    uint8_t busy, measured, done, timed_out;
    size_t body_off; /* HTTP/2 request body sent so far */
} bench_slot;

enum bench_conn_state { BENCH_C_CLOSED, BENCH_C_CONNECTING, BENCH_C_HANDSHAKE, BENCH_C_READY };

typedef struct bench_conn {
    bench_thread *t;
    unsigned gindex; /* over all threads: the open-loop phase */
    int fd;
    SSL *ssl;
    int state;          /* enum bench_conn_state */
    int proto;          /* 1 or 2 once ready */
    int tls_want_write; /* the TLS layer needs the socket writable */
    ev_io io;
    ev_timer timer; /* open-loop schedule, or reconnect pause */
    uint64_t conn_start_ns;
    uint64_t next_due_ns; /* open loop */
    unsigned inflight, max_inflight;
    bench_slot *slots; /* max streams; allocated once */
    char *rbuf;        /* BENCH_RBUF; allocated once */
    /* HTTP/1.1 */
    llhttp_t parser;
    int keep_alive, h1_complete;
    size_t wsent; /* bytes of run->h1_req written */
    int writing;
    /* HTTP/2 */
    nghttp2_session *h2;
    char *obuf; /* BENCH_H2_OBUF; allocated once (for h2 only) */
    size_t olen, ooff;
    const uint8_t *pend; /* mem_send output not yet copied to obuf */
    size_t pendlen;
    int h2_dead; /* GOAWAY or no stream ids left: drain and reconnect */
    int h2_err;  /* nghttp2 reported an error in the server's frames */
} bench_conn;

typedef struct bench_stats {
    uint64_t requests;        /* measured complete responses */
    uint64_t warmup_requests; /* complete responses to requests sent during the warm-up */
    uint64_t unfinished;      /* measured requests still in flight at the end */
    uint64_t bytes;           /* read during the measurement (TLS: plaintext) */
    uint64_t status[6];       /* [1] 1xx .. [5] 5xx, [0] other */
    uint64_t errors[BENCH_ERR_COUNT];
    uint64_t opened; /* connections established */
    uint64_t proto_h1, proto_h2;
    uint64_t finish_ns;    /* when the thread stopped */
} bench_stats;

/* nghttp2's allocations go through per-thread free lists (bench_h2.c). */
#define BENCH_POOL_CLASSES 12 /* 64 B .. 128 KiB */
typedef struct bench_pool {
    void *free[BENCH_POOL_CLASSES];
} bench_pool;

struct bench_thread {
    bench_run *run;
    unsigned index;
    pthread_t tid;
    struct ev_loop *loop;
    ev_async wake;  /* Ctrl-C */
    ev_timer sweep; /* timeouts */
    ev_timer end;   /* measurement end */
    bench_conn *conns;
    unsigned nconns;
    uint64_t budget;   /* -n: measured requests this thread may still send */
    unsigned inflight; /* over its connections */
    int stopping;
    bench_hist lat;    /* from the actual send */
    bench_hist lat_co; /* from the intended send (open loop) */
    bench_stats st;
    char errmsg[BENCH_ERR_COUNT][160]; /* the first message of each kind */
    char ioerr[160];                   /* why the last bench_io_* call failed */
    bench_pool pool;
    nghttp2_mem mem;
    _Alignas(64) atomic_uint_least64_t live_done; /* progress line: every response */
    atomic_uint_least64_t live_err;
    atomic_int finished; /* set last, then run->main_wake is sent */
};

/* bench_conn.c */
uint64_t bench_now_ns(void);
int bench_thread_setup(bench_thread *t, bench_run *run, unsigned index, unsigned first_conn,
                       unsigned nconns, uint64_t budget);
void bench_thread_free(bench_thread *t);
void *bench_thread_main(void *arg);
/* Called by the protocol code. */
void bench_slot_done(bench_conn *c, bench_slot *s);
void bench_slot_failed(bench_conn *c, bench_slot *s, int kind);
void bench_conn_fail(bench_conn *c, int kind, const char *what);
void bench_conn_error_msg(bench_conn *c, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void bench_conn_update_events(bench_conn *c);
void bench_conn_close_quietly(bench_conn *c);
void bench_conn_count_read(bench_conn *c, size_t n);
/* Plain or TLS I/O: > 0 bytes, 0 end of stream, BENCH_IO_AGAIN, or
 * BENCH_IO_ERROR with the reason in c->t->ioerr. */
#define BENCH_IO_AGAIN (-1)
#define BENCH_IO_ERROR (-2)
ssize_t bench_io_read(bench_conn *c, void *buf, size_t len);
ssize_t bench_io_write(bench_conn *c, const void *buf, size_t len);

/* bench_h1.c */
void bench_h1_start(bench_conn *c);
int bench_h1_issue(bench_conn *c, bench_slot *s);
void bench_h1_on_io(bench_conn *c, int revents);
int bench_h1_flush(bench_conn *c);

/* bench_h2.c */
void bench_pool_init(bench_thread *t);
void bench_pool_free(bench_thread *t);
int bench_h2_start(bench_conn *c);
int bench_h2_issue(bench_conn *c, bench_slot *s);
void bench_h2_on_io(bench_conn *c, int revents);
int bench_h2_flush(bench_conn *c);
void bench_h2_cancel(bench_conn *c, bench_slot *s);
void bench_h2_close(bench_conn *c);
int bench_h2_setup(bench_run *run, char *err, size_t errlen);

/* bench_report.c */
void bench_report_text(const bench_run *run, const bench_stats *st, const bench_hist *lat,
                       const bench_hist *lat_co, double window_s, double user_s, double sys_s,
                       int interrupted, const char *const errmsg[BENCH_ERR_COUNT]);
void bench_report_json(const bench_run *run, const bench_stats *st, const bench_hist *lat,
                       const bench_hist *lat_co, double window_s, double user_s, double sys_s,
                       int interrupted, const char *const errmsg[BENCH_ERR_COUNT]);

#endif
