/*
 * helios/host.h - what the core gives a module: one function table.
 *
 * The table is append-only. A module built against a newer SDK than the
 * running core must test HELIOS_API_HAS(api, fn) before calling an entry
 * that a later minor appended (the core refuses modules of a newer minor, so
 * this only matters for modules that opt into degrading gracefully).
 *
 * Threads: "main" means the main thread (config, services); "worker" means
 * the worker that owns the request/timer in question. Functions taking a
 * helios_request must only be called on that request's worker, and only
 * while the request is alive (between the first hook and on_log). Strings
 * and buffers returned are borrowed: valid until the next call that changes
 * the same object, or the end of the request, whichever comes first.
 */
#ifndef HELIOS_HOST_H
#define HELIOS_HOST_H

#include <stdarg.h>
#include <stdint.h>
#include <sys/socket.h>

#include "types.h"

#define HELIOS_API_HAS(api, fn)                                                    \
    ((api)->size >= offsetof(helios_host_api, fn) + sizeof((api)->fn) && (api)->fn != NULL)

struct helios_host_api {
    uint32_t size;      /* sizeof(helios_host_api) of the running core */
    uint16_t abi_major; /* the running core's ABI version */
    uint16_t abi_minor;

    /* ---- logging (any thread) ---- */

    /* One line to the error log, prefixed with level and MODULE. */
    void (*log)(int level, const char *module, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /* ---- configuration (main thread, inside config_new) ---- */

    /* HELIOS_CONF_*; NULL node gives HELIOS_CONF_NULL. */
    int (*conf_kind)(const helios_conf *n);
    /* Child of a map by key, or NULL. */
    const helios_conf *(*conf_get)(const helios_conf *map, const char *key);
    /* Number of items of a sequence or pairs of a map; 0 otherwise. */
    size_t (*conf_len)(const helios_conf *n);
    /* I-th item of a sequence or I-th value of a map, or NULL. */
    const helios_conf *(*conf_at)(const helios_conf *n, size_t i);
    /* I-th key of a map, or NULL. */
    const char *(*conf_key_at)(const helios_conf *map, size_t i);
    /* Text of a scalar (NUL-terminated; the loader refuses NUL bytes in
     * YAML values), or NULL when N is not a scalar. Strings returned by the
     * conf_* functions live as long as the generation: a module may keep
     * them in its config without copying. A NULL map is an empty map for
     * every conf_* lookup and getter. */
    const char *(*conf_scalar)(const helios_conf *n);
    /* Records "file:line:col: key.path: message" for N (main thread). Use
     * for every rejection in config_new, then return -1. A NULL N means
     * the instance's own `module:` entry (useful when `config:` is absent). */
    void (*conf_error)(const helios_conf *n, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
    /* Records one error per key of MAP not listed in ALLOWED (NULL-ended).
     * Returns the number of errors. A NULL MAP has no keys. */
    int (*conf_check_keys)(const helios_conf *map, const char *const *allowed);
    /* Typed getters on MAP's KEY: 1 = present and valid, 0 = absent (DEF
     * stored), -1 = invalid (error already recorded). */
    int (*conf_str)(const helios_conf *map, const char *key, const char *def, const char **out);
    int (*conf_int)(const helios_conf *map, const char *key, long long def, long long min,
                    long long max, long long *out);
    int (*conf_bool)(const helios_conf *map, const char *key, int def, int *out);
    int (*conf_duration_ms)(const helios_conf *map, const char *key, uint64_t def, uint64_t *out);
    int (*conf_size)(const helios_conf *map, const char *key, uint64_t def, uint64_t *out);
    /* Resolves PATH (from config) relative to the directory of the file N
     * was written in; absolute paths are returned as is. Writes into BUF;
     * returns 0, or -1 if it does not fit. */
    int (*conf_path)(const helios_conf *n, const char *path, char *buf, size_t size);

    /* ---- request: read (worker) ---- */

    helios_buf (*req_method)(helios_request *r);
    /* Raw request target as received ("/a/%2e%2e/b?x=1"). */
    helios_buf (*req_target)(helios_request *r);
    /* Percent-decoded, dot-segment-normalised path used for routing. */
    helios_buf (*req_path)(helios_request *r);
    /* Query string without '?', possibly empty. */
    helios_buf (*req_query)(helios_request *r);
    /* Host (from Host or :authority), without port; may be empty. */
    helios_buf (*req_host)(helios_request *r);
    /* "HTTP/1.0", "HTTP/1.1" or "HTTP/2". */
    const char *(*req_protocol)(helios_request *r);
    /* The peer's address (the TCP peer, not X-Forwarded-For). */
    const struct sockaddr *(*req_peer)(helios_request *r);
    /* The client address after applying trusted_proxies to
     * X-Forwarded-For; equals req_peer when the peer is not trusted. */
    const struct sockaddr *(*req_client)(helios_request *r);
    /* Name of the matched route ("" when unnamed). */
    const char *(*req_route)(helios_request *r);
    /* First value of request header NAME (case-insensitive); ptr is NULL
     * when absent. */
    helios_buf (*req_header)(helios_request *r, const char *name);
    size_t (*req_header_count)(helios_request *r);
    int (*req_header_at)(helios_request *r, size_t i, helios_buf *name, helios_buf *value);

    /* ---- request: change (worker, before the request goes upstream) ---- */

    /* Replace all NAME headers with one; add one more; remove all. Values
     * with CR, LF or NUL and invalid names are refused (-1); set and add
     * return 0, remove the number of headers removed (0 or more). */
    int (*req_header_set)(helios_request *r, const char *name, const char *value);
    int (*req_header_add)(helios_request *r, const char *name, const char *value);
    int (*req_header_remove)(helios_request *r, const char *name);

    /* ---- response (worker) ---- */

    /* Status of the response being produced, 0 before the head is known. */
    int (*resp_status)(helios_request *r);
    int (*resp_set_status)(helios_request *r, int status);
    helios_buf (*resp_header)(helios_request *r, const char *name);
    int (*resp_header_set)(helios_request *r, const char *name, const char *value);
    int (*resp_header_add)(helios_request *r, const char *name, const char *value);
    int (*resp_header_remove)(helios_request *r, const char *name);
    /* A complete response: status, optional Content-Type, body (copied).
     * Extra headers may be added with resp_header_* before this call.
     * Returns 0, or -1 if a response has already started. */
    int (*respond)(helios_request *r, int status, const char *content_type, const void *body,
                   size_t len);
    /* Builds an immutable pre-serialised response once (main thread, in
     * config_new): HEADERS is NAME, VALUE pairs (NHEADERS pairs). Header
     * strings and body are copied. Returns NULL and a message in ERR on
     * invalid input. respond/respond_prepared send no body to HEAD. */
    helios_prepared *(*prepared_new)(int status, const char *const *headers, size_t nheaders,
                                     const void *body, size_t len, char *err, size_t errlen);
    void (*prepared_free)(helios_prepared *p);
    /* Sends a prepared response (the core adds Date and connection framing). */
    int (*respond_prepared)(helios_request *r, const helios_prepared *p);

    /* ---- memory and flow (worker) ---- */

    /* Memory freed with the request in one go (after on_log). Never NULL
     * for sizes up to 1 MiB; NULL above that. */
    void *(*req_alloc)(helios_request *r, size_t size);
    /* Continues a request that a hook PAUSEd, with that hook's real result
     * (CONTINUE, RESPONDED or ERROR). A resume on a finished request is a
     * no-op; safe to call from within the paused hook's callbacks. */
    void (*resume)(helios_request *r, int status);
    /* Runs FN(ARG) on worker W's thread soon. Any thread. Returns 0, -1 if
     * the worker is stopping (FN is then not called). */
    int (*post)(helios_worker *w, void (*fn)(void *arg), void *arg);
    /* One-shot timer on worker W (worker thread only). */
    helios_timer *(*timer_add)(helios_worker *w, uint64_t ms, void (*fn)(void *arg), void *arg);
    /* Cancels a timer that has not fired; a fired timer is already freed
     * and must not be cancelled. */
    void (*timer_cancel)(helios_timer *t);
    /* Worker of a request; index 0..n-1 of a worker; number of workers. */
    helios_worker *(*req_worker)(helios_request *r);
    unsigned (*worker_index)(helios_worker *w);
    unsigned (*worker_count)(void);
    /* Milliseconds of the worker's cached loop clock (monotonic). */
    uint64_t (*now_ms)(helios_worker *w);

    /* ---- backends (worker: from pick(); otherwise any thread) ---- */

    size_t (*backends_count)(const helios_backends *s);
    helios_backend *(*backends_at)(const helios_backends *s, size_t i);
    const char *(*backend_name)(const helios_backend *b);
    /* "127.0.0.1:9001" / "[::1]:9001". */
    const char *(*backend_address)(const helios_backend *b);
    const struct sockaddr *(*backend_sockaddr)(const helios_backend *b);
    uint32_t (*backend_weight)(const helios_backend *b);
    /* 1 when the backend may take new requests: healthy, not drained, its
     * breaker not open. */
    int (*backend_usable)(const helios_backend *b);
    /* Requests in flight to B across all workers (atomic, relaxed). */
    uint32_t (*backend_inflight)(const helios_backend *b);
    /* Marks B healthy (1) or not (0); from any thread (atomic). Logged when
     * it changes. */
    void (*backend_set_healthy)(helios_backend *b, int healthy, const char *why);
    int (*backend_healthy)(const helios_backend *b);
    /* 1 if index I of the backend list was already tried by this request;
     * a NULL T means nothing was tried. */
    int (*tried_has)(const helios_tried *t, size_t i);

    /* ---- control plane (any thread; typically a service thread such as
     * the admin API). Calls may block (name resolution, a lock shared with
     * reloads), so keep them off request hot paths. They are serialised
     * with each other and with reloads, act on the running generation, take
     * effect for requests that start afterwards, and never disturb
     * requests in flight. Names, not handles, so nothing dangles across a
     * reload. Each returns 0, or -1 with a message in ERR (which may be
     * NULL): an unknown upstream or backend, a duplicate name, a bad
     * address, or a balancer module that does not load or rejects its
     * configuration. A runtime change lasts until the next reload or
     * restart, which rebuild everything from the configuration files. ---- */

    /* Appends a backend (ADDRESS as in the configuration; WEIGHT 1..10000). */
    int (*ctl_backend_add)(const char *upstream, const char *name, const char *address,
                           uint32_t weight, char *err, size_t errlen);
    /* Removes a backend: no new requests; those in flight complete. */
    int (*ctl_backend_remove)(const char *upstream, const char *name, char *err, size_t errlen);
    /* Changes a backend's weight (1..10000). */
    int (*ctl_backend_weight)(const char *upstream, const char *name, uint32_t weight, char *err,
                              size_t errlen);
    /* Drains (1) or undrains (0) a backend: a drained backend is not
     * usable for new requests; requests in flight complete. */
    int (*ctl_backend_drain)(const char *upstream, const char *name, int drain, char *err,
                             size_t errlen);
    /* Switches the upstream to balancer module MODULE with no `config:`.
     * Every worker moves to it at its next loop iteration; requests keep
     * the backend they already have. */
    int (*ctl_balancer_set)(const char *upstream, const char *module, char *err, size_t errlen);

    /* A JSON-free snapshot of one upstream for reporting: calls FN once per
     * backend with its state, under the control lock (do not call ctl_*
     * from FN). Returns the number of backends, or -1 if unknown. */
    long (*ctl_backends_walk)(const char *upstream,
                              void (*fn)(void *arg, const helios_backend *b), void *arg);
    /* Name of the balancer module an upstream uses now, or NULL. */
    const char *(*ctl_balancer_name)(const char *upstream);
    /* Number of upstreams in the running generation; the I-th name copied
     * into BUF (0, or -1 when I is out of range or BUF too small). */
    size_t (*ctl_upstreams_count)(void);
    int (*ctl_upstream_name)(size_t i, char *buf, size_t size);
    /* Draining flag and totals of a backend (atomic, relaxed). */
    int (*backend_draining)(const helios_backend *b);
    uint64_t (*backend_requests)(const helios_backend *b);
    uint64_t (*backend_failures)(const helios_backend *b);

    /* ---- circuit breaking (any thread, atomic) ----
     * A breaker module sets a backend's state; the core enforces it: an
     * OPEN backend is not usable; a HALF_OPEN one admits at most
     * MAX_TRIALS requests at a time (the core counts them at pick time and
     * releases a trial when its attempt ends). Each change of state is
     * counted per target state and logged. */
    void (*backend_set_breaker)(helios_backend *b, int state, uint32_t max_trials);
    int (*backend_breaker)(const helios_backend *b); /* HELIOS_BREAKER_* */
    /* Number of transitions into STATE since the generation started. */
    uint64_t (*backend_breaker_transitions)(const helios_backend *b, int state);
    /* Retries the core made to B (attempts after the first), total. */
    uint64_t (*backend_retries)(const helios_backend *b);
    /* The attempt number of the request (1 = first try). */
    unsigned (*req_attempts)(helios_request *r);

    /* ---- request facts for logging (worker; typically in on_log) ---- */

    /* Fills OUT (the module sets out->size = sizeof(*out) first; the core
     * fills only what both know). Strings are borrowed like header values. */
    int (*req_stats)(helios_request *r, helios_req_stats *out);
    /* The worker's libev loop (struct ev_loop *), for modules that drive
     * their own I/O on it (e.g. an async Redis client). Watchers started on
     * it must be stopped in worker_fini. */
    void *(*worker_ev_loop)(helios_worker *w);

    /* ==== appended in ABI 1.1 ==== */

    /* ---- operations (any thread unless stated) ---- */

    /* Id of the running configuration generation (1 at startup, +1 for
     * every successful reload). */
    uint32_t (*generation)(void);
    /* Fills OUT (caller sets out->size first) with process-wide counters,
     * summed over workers. Returns 0. */
    int (*core_stats)(helios_core_stats *out);
    /* Reloads the configuration as SIGHUP does and waits for the outcome.
     * Not on the main thread or a worker (it would wait for itself): call
     * it from a service's own thread. Returns 0 with the new generation id
     * in *GEN (may be NULL), or -1 with the reasons (one per line, as the
     * error log has them) in ERR. The caller's own service instance is
     * stopped right after (it belongs to the old generation) and the new
     * generation's instance started: stop() must let a request that is
     * being answered finish. A call made while another reload is replacing
     * the services returns 0 with that reload's generation at once (it was
     * built from the same files), so it never waits for a main thread that
     * is stopping the caller. */
    int (*ctl_reload)(uint32_t *gen, char *err, size_t errlen);
    /* Calls FN once per module loaded by the running generation, in load
     * order, under the control lock. Returns the number of modules. */
    long (*ctl_modules_walk)(void (*fn)(void *arg, const helios_module_info *m), void *arg);
    /* Calls FN with the root map of the running generation's merged
     * configuration (walk it with conf_*), under the control lock: the
     * nodes stay valid during the call only. Returns 0, -1 if none. */
    int (*ctl_config_walk)(void (*fn)(void *arg, const helios_conf *root), void *arg);

    /* ---- request variables (worker) ----
     * Small named strings a module leaves on a request for others to read
     * (e.g. rate_limit sets "rate_limit" to "limited" when it refuses a
     * request; metrics and log modules read it). Names are case-sensitive;
     * both strings are copied into the request. Set replaces, a NULL VALUE
     * removes. Get returns a borrowed buffer, ptr NULL when unset. */
    int (*req_var_set)(helios_request *r, const char *name, const char *value);
    helios_buf (*req_var_get)(helios_request *r, const char *name);
    /* Name of the route's `upstream:` (for a route with a handler: the
     * handler's default subrequest target), or "" when it has none
     * (worker). */
    const char *(*req_upstream)(helios_request *r);

    /* ---- exports between modules (any thread) ----
     * A process-wide registry of named pointers one module offers another
     * (e.g. metrics offers "metrics.prometheus" for admin_api to serve on
     * its listener). What the pointer points to is a contract between those
     * modules (see helios/util/ for the shipped ones). Set it in a service's
     * start() and clear it (NULL) in stop(): a pointer stays usable by
     * other services until the generation that set it ends. Set replaces. */
    int (*export_set)(const char *name, void *ptr);
    void *(*export_get)(const char *name);

    /* ---- handlers: the request body (worker) ----
     * A handler asks for the request body once, from handle() or later
     * while paused. ON_DATA(ARG, CHUNK, LAST, ERROR) then runs on the worker
     * for each piece as it arrives (CHUNK borrowed for the call), the last
     * call with LAST set (CHUNK may be empty). ERROR non-zero means the body
     * cannot be completed (client gone, timeout, bad framing): no more
     * calls follow. A request without a body gets one call, LAST and empty,
     * from the worker loop (never from inside req_body_read). Returns 0, or
     * -1 when the body was already requested or the request is not a
     * handler's. The body is read at the pace ON_DATA returns: the module
     * decides how much to keep. */
    int (*req_body_read)(helios_request *r,
                         void (*on_data)(void *arg, helios_buf chunk, int last, int error),
                         void *arg);

    /* ---- subrequests: a module's own requests to upstreams (worker) ----
     * Go through the upstream's balancer, retries and keep-alive pools
     * like proxied requests. Build with subreq_new, add headers, then
     * subreq_send with the whole body. Callbacks run on the worker, never
     * from inside subreq_send. After on_error, or on_body with LAST, the
     * subrequest is freed by the core; before that, subreq_cancel frees it
     * (no callback after). A subrequest made with a PARENT request is
     * cancelled by the core when the parent ends (after on_done / on_log).
     * With PARENT NULL (e.g. work left for after the response) it lives
     * until it ends, bounded by the upstream's timeouts, and keeps its
     * generation (and so the module's worker state) alive meanwhile.
     * UPSTREAM NULL means the parent route's `upstream:`. Subrequests are
     * not access-logged and get no X-Forwarded-* headers: the module adds
     * what it wants. */
    helios_subreq *(*subreq_new)(helios_worker *w, helios_request *parent, const char *upstream,
                                 const char *method, const char *target, char *err,
                                 size_t errlen);
    /* Host header defaults to the parent's host or the backend's address.
     * Hop-by-hop headers are refused (-1) as are invalid names/values. */
    int (*subreq_header_add)(helios_subreq *s, const char *name, const char *value);
    /* Starts the subrequest; BODY (copied) may be NULL with LEN 0. Returns
     * 0, or -1 (nothing will be called back; the subrequest is freed). */
    int (*subreq_send)(helios_subreq *s, const void *body, size_t len,
                       const helios_subreq_cb *cb, void *arg);
    /* Response status and headers, valid from on_head until freed. */
    int (*subreq_status)(helios_subreq *s);
    size_t (*subreq_header_count)(helios_subreq *s);
    int (*subreq_header_at)(helios_subreq *s, size_t i, helios_buf *name, helios_buf *value);
    void (*subreq_cancel)(helios_subreq *s);

    /* ---- TLS (worker) ----
     * Fills OUT (caller sets out->size first) for a request that came over
     * TLS and returns 0; returns -1 for a plain-text connection. */
    int (*req_tls)(helios_request *r, helios_tls_info *out);
};

enum {
    HELIOS_BREAKER_CLOSED = 0,
    HELIOS_BREAKER_OPEN = 1,
    HELIOS_BREAKER_HALF_OPEN = 2,
};

#endif
