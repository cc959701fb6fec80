/*
 * helios/types.h - versions, return codes, buffers and opaque handles.
 *
 * Part of the heliosd plugin ABI. Versioning rules:
 *   - ABI major: anything removed, reordered or resized. The core refuses a
 *     module built for another major.
 *   - ABI minor: appended host functions, hooks or fields. A module built for
 *     a newer minor than the core is refused; an older one loads.
 * tests/unit/test_abi_hash.c hashes these headers and fails when they change
 * without a bump here (and an updated hash in that test).
 */
#ifndef HELIOS_TYPES_H
#define HELIOS_TYPES_H

#include <stddef.h>
#include <stdint.h>

#define HELIOS_ABI_MAJOR 1
#define HELIOS_ABI_MINOR 3

/* "HLOS": first field of every module descriptor. */
#define HELIOS_MODULE_MAGIC 0x484c4f53u

/*
 * Build signature: what must match between core and module besides the ABI
 * version because it changes struct layout or allocator behaviour. Compared
 * as a string; the core prints both on a mismatch.
 */
#if defined(__SANITIZE_ADDRESS__)
#define HELIOS__SIG_SAN "asan"
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HELIOS__SIG_SAN "asan"
#endif
#endif
#ifndef HELIOS__SIG_SAN
#define HELIOS__SIG_SAN "nosan"
#endif
#if UINTPTR_MAX == 0xffffffffffffffffu
#define HELIOS__SIG_PTR "lp64"
#else
#define HELIOS__SIG_PTR "ilp32"
#endif
#define HELIOS_BUILD_SIGNATURE HELIOS__SIG_PTR "-openssl3-" HELIOS__SIG_SAN

/*
 * Hook return codes. Any other value is treated as HELIOS_ERROR and logged.
 *   CONTINUE   go on with the next filter / phase.
 *   RESPONDED  the module produced the response (e.g. api->respond); the
 *              remaining request filters and the handler are skipped.
 *   PAUSE      the module will call api->resume(req, status) later, on the
 *              request's worker thread (use api->post from other threads).
 *   ERROR      internal failure: the client gets 500 (or the connection is
 *              closed if the response has started), and a log line.
 */
enum {
    HELIOS_CONTINUE = 0,
    HELIOS_RESPONDED = 1,
    HELIOS_PAUSE = 2,
    HELIOS_ERROR = 3,
};

/* Log levels for api->log. */
enum {
    HELIOS_LOG_ERROR = 0,
    HELIOS_LOG_WARN = 1,
    HELIOS_LOG_INFO = 2,
    HELIOS_LOG_DEBUG = 3,
};

/* YAML node kinds returned by api->conf_kind. */
enum {
    HELIOS_CONF_NULL = 0,
    HELIOS_CONF_SCALAR = 1,
    HELIOS_CONF_MAP = 2,
    HELIOS_CONF_SEQ = 3,
};

/* A byte range; not NUL-terminated unless stated. Returned by the core it
 * is borrowed: the function returning it says for how long. */
typedef struct helios_buf {
    const char *ptr;
    size_t len;
} helios_buf;

/*
 * Opaque handles; modules only ever hold pointers and use accessors. The
 * core owns all of them except where a module creates one (timer, prepared
 * response, subrequest). How long each stays valid:
 *   helios_conf      read-only YAML node: as long as its generation
 *   helios_request   one HTTP exchange: on its worker, from its first hook
 *                    until on_log / on_done return
 *   helios_worker    one worker thread and loop: as long as the process
 *   helios_backend   one upstream server: as long as its generation, also
 *                    after it was removed at run time
 *   helios_backends  an upstream's backend list, immutable: as long as its
 *                    generation (a runtime change publishes a new list)
 *   helios_tried     backends tried by this request: during pick only
 *   helios_timer     a one-shot worker timer: until it fires (the core
 *                    frees it then) or timer_cancel
 *   helios_prepared  a pre-serialised response: the module's, until
 *                    prepared_free, which it calls in config_free
 *   helios_subreq    a module's own upstream request (1.1): from
 *                    subreq_new until its final callback returns,
 *                    subreq_cancel, or the end of its parent request
 */
typedef struct helios_conf helios_conf;
typedef struct helios_request helios_request;
typedef struct helios_worker helios_worker;
typedef struct helios_backend helios_backend;
typedef struct helios_backends helios_backends;
typedef struct helios_tried helios_tried;
typedef struct helios_timer helios_timer;
typedef struct helios_prepared helios_prepared;
typedef struct helios_subreq helios_subreq;

/* Callbacks of a subrequest (ABI 1.1, api->subreq_send); all on the
 * subrequest's worker, never from inside an API call. The core keeps a
 * pointer to this table, not a copy: it must stay valid until the final
 * callback (make it static const). Any callback may be NULL. */
typedef struct helios_subreq_cb {
    uint32_t size; /* sizeof(helios_subreq_cb) the module was built with */
    /* The response head arrived: api->subreq_status / subreq_header_* work. */
    void (*on_head)(void *arg, helios_subreq *s);
    /* A piece of the response body (borrowed for the call); LAST on the
     * final one, after which the subrequest is freed. */
    void (*on_body)(void *arg, helios_subreq *s, helios_buf chunk, int last);
    /* The subrequest failed before or during the response (no usable
     * backend 503, connect failure or reset 502, timeout 504, response
     * cut off 502, out of memory 500). STATUS is what a proxied request
     * would have answered; REASON is borrowed for the call; the
     * subrequest is freed after the call. */
    void (*on_error)(void *arg, helios_subreq *s, int status, const char *reason);
} helios_subreq_cb;

/* Facts about a finished (or finishing) request, for log modules
 * (api->req_stats). Strings are borrowed until the end of the request. */
typedef struct helios_req_stats {
    uint32_t size;         /* set by the caller: sizeof(helios_req_stats); the
                            * core fills the fields that size covers */
    int status;            /* response status, 0 if none was sent */
    int aborted;           /* the response could not be completed */
    uint64_t bytes_in;     /* request body bytes received */
    uint64_t bytes_out;    /* response body bytes sent */
    uint64_t start_ms;     /* worker clock (now_ms: Unix time in ms) when
                            * the request began */
    uint64_t duration_ms;  /* from start until the call (in on_log: the end) */
    const char *upstream;  /* "addr:port" of the last backend tried, or "" */
    int64_t upstream_ms;   /* time spent on upstream attempts, -1 if none */
    unsigned attempts;     /* upstream attempts, 0 if not proxied */
    const char *protocol;  /* "HTTP/1.0" / "HTTP/1.1" / "HTTP/2" */
    /* appended in ABI 1.1 (filled when the caller's size covers them) */
    uint64_t duration_us;  /* duration_ms in microseconds */
    int64_t upstream_us;   /* upstream_ms in microseconds, -1 if none */
    const char *upstream_name; /* name of the route's upstream, or "" */
    const char *backend_name;  /* name of the last backend tried, or "" */
    /* ==== appended in ABI 1.3 (stats) ==== */
    int64_t upstream_ttfb_us; /* first upstream attempt's start to the response
                               * head from the backend, -1 if none arrived */
    int backend_health;       /* last backend tried: 1 up, 0 down, -1 none */
    int backend_breaker;      /* its breaker: 0 closed, 1 open, 2 half-open,
                               * -1 none */
    uint64_t connection_id;   /* the client connection's id, unique in the
                               * process (1, 2, ...); 0 for a subrequest */
    const char *tls_version;  /* "TLSv1.3", or NULL without TLS */
    const char *tls_cipher;   /* cipher name, or NULL without TLS */
} helios_req_stats;

/* Process-wide counters (ABI 1.1, api->core_stats): summed over workers at
 * the time of the call; each worker updates its own copy without locks, so
 * the sum is a consistent-enough snapshot, never torn per field. */
typedef struct helios_core_stats {
    uint32_t size;                 /* set by the caller: sizeof(helios_core_stats) */
    uint32_t generation;           /* id of the running configuration generation */
    uint32_t workers;              /* worker threads */
    const char *version;           /* heliosd version string (static) */
    uint64_t start_time;           /* Unix time (seconds) heliosd started */
    uint64_t reloads;              /* successful reloads (SIGHUP or ctl_reload) */
    uint64_t reload_failures;      /* refused reloads (the old generation stayed) */
    uint64_t connections_accepted; /* client connections accepted, total */
    uint64_t connections_active;   /* client connections open now */
    uint64_t connections_refused;  /* closed at accept: per-worker cap (503) */
    uint64_t requests;             /* requests finished (logged), total */
    uint64_t requests_active;      /* requests routed and not yet finished */
    uint64_t bytes_in;             /* request body bytes received, total */
    uint64_t bytes_out;            /* response body bytes sent, total */
} helios_core_stats;

/* TLS facts of a request's connection (ABI 1.1, api->req_tls). Strings are
 * borrowed until the end of the request. */
typedef struct helios_tls_info {
    uint32_t size;              /* set by the caller: sizeof(helios_tls_info) */
    const char *version;        /* "TLSv1.3" */
    const char *cipher;         /* "TLS_AES_256_GCM_SHA384" */
    const char *sni;            /* server name the client asked for, or NULL */
    const char *alpn;           /* "h2", "http/1.1", or NULL */
    const char *client_subject; /* client certificate subject in OpenSSL's
                                 * one-line form, cut at 511 bytes; or NULL */
    int client_verified;        /* 1: a client certificate was presented and verified */
} helios_tls_info;

/* Kinds a module implements (helios_module_info.kinds). */
enum {
    HELIOS_KIND_FILTER = 1u << 0,
    HELIOS_KIND_HANDLER = 1u << 1,
    HELIOS_KIND_BALANCER = 1u << 2,
    HELIOS_KIND_SERVICE = 1u << 3,
    HELIOS_KIND_HEALTH = 1u << 4,
};

/* One loaded module (ABI 1.1, api->ctl_modules_walk). The struct is valid
 * during the callback only; its strings live as long as the process. */
typedef struct helios_module_info {
    uint32_t size;       /* sizeof(helios_module_info) as the core built it */
    const char *name;
    const char *version; /* the module's own version */
    const char *path;    /* the .so file it was loaded from */
    uint16_t abi_major;  /* the ABI the module was built for */
    uint16_t abi_minor;
    unsigned kinds;      /* HELIOS_KIND_* bits */
    unsigned instances;  /* instances in the running generation (balancers
                          * switched in at run time included) */
} helios_module_info;

/*
 * Context passed to every per-request hook. Owned by the core, valid only
 * during the call; fields may be appended in later minors (check size).
 */
typedef struct helios_ctx {
    uint32_t size;          /* sizeof(helios_ctx) as the core built it */
    void *cfg;              /* this instance's config, from config_new */
    void *wstate;           /* this instance's state on this worker (what
                             * worker_init stored, else NULL) */
    void **rstate;          /* this instance's per-request slot (starts NULL;
                             * the module frees what it points to outside the
                             * arena in on_log / on_done). NULL in a balancer's
                             * pick, which has no per-request slot */
    helios_request *req;    /* the request */
    helios_worker *worker;  /* the request's worker */
} helios_ctx;

/* ==== appended in ABI 1.3 (module contracts) ==== */

/*
 * A request reference (api->req_ref): a number, not a pointer, that names
 * one request for as long as it lives and nothing after. Safe to keep in a
 * timer, a post or another thread's state: api->req_from_ref and
 * api->resume_ref turn it back into the request, or tell that it ended,
 * without reading the request's memory (which the connection's next
 * request may already use). 0 is never a valid reference.
 */
typedef uint64_t helios_req_ref;

/*
 * One upstream attempt as it ended (helios_balancer_hooks.on_attempt_end).
 * Valid during the call only; fields may be appended (check size).
 */
typedef struct helios_attempt {
    uint32_t size;             /* sizeof(helios_attempt) as the core built it */
    helios_backend *backend;   /* the backend the attempt went to */
    size_t index;              /* its index in the list pick was given */
    int outcome;               /* HELIOS_OUTCOME_* (module.h), CANCELLED included */
    int status;                /* response status seen, or 0 */
    int64_t first_byte_us;     /* from the pick to the first response byte,
                                * -1 when none arrived */
    int64_t last_byte_us;      /* from the pick to the end of the attempt
                                * (the last response byte, or the failure) */
    unsigned attempt;          /* 1 = the request's first try */
} helios_attempt;

#endif
