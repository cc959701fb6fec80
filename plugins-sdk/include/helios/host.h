/*
 * helios/host.h - what the core gives a module: one function table.
 *
 * The table is append-only. A module built against a newer SDK than the
 * running core must test HELIOS_API_HAS(api, fn) before calling an entry
 * that a later minor appended (the core refuses modules of a newer minor, so
 * this only matters for modules that opt into degrading gracefully).
 *
 * Topic index (entries in table order; "1.1" marks those appended in 1.1):
 *
 *   logging ............ log
 *   config accessors ... conf_kind conf_get conf_len conf_at conf_key_at
 *                        conf_scalar conf_error conf_check_keys conf_str
 *                        conf_int conf_bool conf_duration_ms conf_size
 *                        conf_path
 *   request head ....... read: req_method req_target req_path req_query
 *                        req_host req_protocol req_peer req_client req_route
 *                        req_header req_header_count req_header_at
 *                        req_upstream (1.1); change: req_header_set
 *                        req_header_add req_header_remove
 *   request variables .. req_var_set req_var_get (1.1)
 *   response ........... resp_status resp_set_status resp_header
 *                        resp_header_set resp_header_add resp_header_remove
 *                        respond prepared_new prepared_free respond_prepared
 *   request body ....... req_body_read (1.1, handlers; filters see the body
 *                        in on_request_body, module.h)
 *   memory, pause ...... req_alloc resume
 *   timers, posts ...... post timer_add timer_cancel now_ms
 *   workers ............ req_worker worker_index worker_count worker_ev_loop
 *   backends, balancing  backends_count backends_at backend_name
 *                        backend_address backend_sockaddr backend_weight
 *                        backend_usable backend_inflight backend_set_healthy
 *                        backend_healthy tried_has backend_draining
 *                        backend_requests backend_failures backend_retries
 *                        req_attempts
 *   circuit breaking ... backend_set_breaker backend_breaker
 *                        backend_breaker_transitions
 *   control plane ...... ctl_backend_add ctl_backend_remove ctl_backend_weight
 *                        ctl_backend_drain ctl_balancer_set ctl_backends_walk
 *                        ctl_balancer_name ctl_upstreams_count
 *                        ctl_upstream_name; ctl_reload ctl_modules_walk
 *                        ctl_config_walk (1.1)
 *   process, log facts . req_stats; generation core_stats (1.1)
 *   exports ............ export_set export_get (1.1)
 *   subrequests ........ subreq_new subreq_header_add subreq_send
 *                        subreq_status subreq_header_count subreq_header_at
 *                        subreq_cancel (1.1)
 *   TLS ................ req_tls (1.1)
 *
 * Appended in 1.3, in three blocks:
 *   request body ....... req_body_length req_has_body req_body_hold
 *   late callbacks ..... req_ref req_from_ref resume_ref
 *   streamed bodies .... respond_begin respond_body respond_abort
 *                        req_body_pause subreq_pause
 *   upstream state ..... ctl_upstream_panic
 *
 * Each entry's comment ends with [THREAD, since VERSION]. Threads:
 *   worker  the worker that owns the request, timer or W in question;
 *   config  inside config_new (the main thread, or the thread calling
 *           ctl_balancer_set);
 *   ctl     any thread but a worker: it may block (see "control plane");
 *   any     any thread, a module's own threads included.
 * A helios_request is alive on its worker from its first hook until on_log
 * (filters) and on_done (handlers) have returned; after that its memory may
 * already serve the next request of the connection, so no entry may be
 * called on it. Strings and buffers returned are borrowed: valid until the
 * next call that changes the same object, or the end of the request,
 * whichever comes first; a helios_buf is not NUL-terminated unless stated.
 * Strings a module passes in are copied. -1 means refused, nothing changed.
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

    /* ---- logging ---- */

    /* One line to the error log, prefixed with time, level and MODULE (may
     * be NULL). LEVEL is HELIOS_LOG_*: levels above the configured one are
     * dropped, a negative one counts as ERROR. CR/LF become spaces, the
     * line is cut at 2 KiB and written with one write(2), which a stalled
     * disk can make wait. [any, since 1.0] */
    void (*log)(int level, const char *module, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /* ---- configuration accessors ----
     * Nodes and their strings are read-only and live as long as the
     * generation they belong to (until after its config_free): a module may
     * keep them in its config without copying. Reading is safe on any
     * thread while the node lives; what records errors (conf_error,
     * conf_check_keys, the typed getters) belongs inside config_new. A NULL
     * map is an empty map for every lookup and getter. */

    /* HELIOS_CONF_*; a NULL node, and an unquoted empty, ~ or null value,
     * give HELIOS_CONF_NULL. [any, since 1.0] */
    int (*conf_kind)(const helios_conf *n);
    /* Child of a map by key (case-sensitive), or NULL when absent or MAP
     * is not a map. [any, since 1.0] */
    const helios_conf *(*conf_get)(const helios_conf *map, const char *key);
    /* Number of items of a sequence or pairs of a map; 0 otherwise.
     * [any, since 1.0] */
    size_t (*conf_len)(const helios_conf *n);
    /* I-th item of a sequence or I-th value of a map (file order), or
     * NULL. [any, since 1.0] */
    const helios_conf *(*conf_at)(const helios_conf *n, size_t i);
    /* I-th key of a map (NUL-terminated), or NULL. [any, since 1.0] */
    const char *(*conf_key_at)(const helios_conf *map, size_t i);
    /* Text of a scalar (NUL-terminated; the loader refuses NUL bytes in
     * YAML values), or NULL when N is not a scalar (a YAML null included).
     * [any, since 1.0] */
    const char *(*conf_scalar)(const helios_conf *n);
    /* Records "file:line:col: key.path: message" for N. Use for every
     * rejection in config_new, then return -1 (a -1 with nothing recorded
     * gets a generic "rejected its configuration"). A NULL N means the
     * instance's own `module:` entry (useful when `config:` is absent);
     * outside config_new a NULL N only reaches the error log.
     * [config, since 1.0] */
    void (*conf_error)(const helios_conf *n, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
    /* Records one error, with a did-you-mean, per key of MAP not listed in
     * ALLOWED (NULL-ended; NULL allows none). Returns the number of errors.
     * A NULL or YAML-null MAP has no keys; a MAP that is not a map is one
     * error ("expected a map"). [config, since 1.0] */
    int (*conf_check_keys)(const helios_conf *map, const char *const *allowed);
    /* Typed getters on MAP's KEY: 1 = present and valid, 0 = absent or YAML
     * null (DEF stored), -1 = invalid (error recorded at the value, DEF
     * stored). A MAP that is not a map reads as empty: check it with
     * conf_check_keys. str: any scalar, *OUT lives with the node; int:
     * decimal, MIN..MAX inclusive; bool: true/false, yes/no, on/off, any
     * case, unquoted; duration_ms: "250ms", "10s", "1h30m", "1d", "0"; size:
     * bytes, "64k", "16M", "1G" (powers of 1024). [config, since 1.0] */
    int (*conf_str)(const helios_conf *map, const char *key, const char *def, const char **out);
    /* See conf_str. [config, since 1.0] */
    int (*conf_int)(const helios_conf *map, const char *key, long long def, long long min,
                    long long max, long long *out);
    /* See conf_str. [config, since 1.0] */
    int (*conf_bool)(const helios_conf *map, const char *key, int def, int *out);
    /* See conf_str. [config, since 1.0] */
    int (*conf_duration_ms)(const helios_conf *map, const char *key, uint64_t def, uint64_t *out);
    /* See conf_str. [config, since 1.0] */
    int (*conf_size)(const helios_conf *map, const char *key, uint64_t def, uint64_t *out);
    /* Resolves PATH (from config) relative to the directory of the file N
     * was written in; an absolute PATH, or a NULL N, is copied as is.
     * Writes a NUL-terminated path into BUF; returns 0, or -1 when PATH or
     * BUF is NULL or the result does not fit. [any, since 1.0] */
    int (*conf_path)(const helios_conf *n, const char *path, char *buf, size_t size);

    /* ---- request head: read ----
     * Results live until the end of the request. A balancer's pick and a
     * health module's on_upstream_result may be handed a subrequest: it has
     * the headers its module added, protocol "HTTP/1.1", and its parent's
     * host, route name and client address (AF_UNSPEC without a parent). */

    /* Method as received ("GET"). [worker, since 1.0] */
    helios_buf (*req_method)(helios_request *r);
    /* Raw request target as received ("/a/%2e%2e/b?x=1"; HTTP/2: :path).
     * [worker, since 1.0] */
    helios_buf (*req_target)(helios_request *r);
    /* Percent-decoded (except %2F), dot-segment-normalised path used for
     * routing, without the query. [worker, since 1.0] */
    helios_buf (*req_path)(helios_request *r);
    /* Query string without '?', possibly empty. [worker, since 1.0] */
    helios_buf (*req_query)(helios_request *r);
    /* Host (from an absolute-form target, Host or :authority), lower-cased,
     * without port; may be empty. [worker, since 1.0] */
    helios_buf (*req_host)(helios_request *r);
    /* "HTTP/1.0", "HTTP/1.1" or "HTTP/2" (static). [worker, since 1.0] */
    const char *(*req_protocol)(helios_request *r);
    /* The peer's address (the TCP peer, not X-Forwarded-For).
     * [worker, since 1.0] */
    const struct sockaddr *(*req_peer)(helios_request *r);
    /* The client address after applying trusted_proxies to
     * X-Forwarded-For; equals req_peer when the peer is not trusted.
     * [worker, since 1.0] */
    const struct sockaddr *(*req_client)(helios_request *r);
    /* Name of the matched route ("" when unnamed). [worker, since 1.0] */
    const char *(*req_route)(helios_request *r);
    /* First value of request header NAME (case-insensitive); ptr is NULL
     * when absent. [worker, since 1.0] */
    helios_buf (*req_header)(helios_request *r, const char *name);
    /* Number of request header lines (HTTP/2 names arrive lower-case).
     * [worker, since 1.0] */
    size_t (*req_header_count)(helios_request *r);
    /* I-th header line, in received order (NAME or VALUE may be NULL): 0,
     * or -1 when I is out of range. [worker, since 1.0] */
    int (*req_header_at)(helios_request *r, size_t i, helios_buf *name, helios_buf *value);

    /* ---- request head: change ----
     * For request hooks, before the request goes upstream: each upstream
     * attempt serialises the head when it starts. While an HTTP/1.1
     * upstream connection carries the request these return -1; otherwise
     * (an HTTP/2 upstream, between attempts) a change succeeds but reaches
     * only later attempts. */

    /* Replaces all NAME headers with one. Invalid names, a NULL VALUE and
     * values with control bytes other than TAB (CR, LF, NUL) or DEL are
     * refused (-1). Returns 0 (-1 out of memory). [worker, since 1.0] */
    int (*req_header_set)(helios_request *r, const char *name, const char *value);
    /* Adds one more NAME header; as req_header_set. [worker, since 1.0] */
    int (*req_header_add)(helios_request *r, const char *name, const char *value);
    /* Removes all NAME headers: the number removed (0 or more), -1 for an
     * invalid name. [worker, since 1.0] */
    int (*req_header_remove)(helios_request *r, const char *name);

    /* ---- response ----
     * Status and header changes are refused (-1) once the response head has
     * been sent: make them before respond*, or in on_response_headers. */

    /* Status of the response being produced, 0 before the head is known.
     * [worker, since 1.0] */
    int (*resp_status)(helios_request *r);
    /* Sets the status: 0, or -1 outside 100..599 or once the head is sent.
     * [worker, since 1.0] */
    int (*resp_set_status)(helios_request *r, int status);
    /* First value of response header NAME (case-insensitive); ptr is NULL
     * when absent. [worker, since 1.0] */
    helios_buf (*resp_header)(helios_request *r, const char *name);
    /* As req_header_set, on the response. [worker, since 1.0] */
    int (*resp_header_set)(helios_request *r, const char *name, const char *value);
    /* As req_header_add, on the response. [worker, since 1.0] */
    int (*resp_header_add)(helios_request *r, const char *name, const char *value);
    /* As req_header_remove, on the response. [worker, since 1.0] */
    int (*resp_header_remove)(helios_request *r, const char *name);
    /* A complete response: status, optional Content-Type (replaces one
     * set before), body (copied). Extra headers may be added with
     * resp_header_* before this call; the core sets Content-Length, and
     * Date when absent. Returns 0, or -1 if a response has already started,
     * STATUS is outside 100..599 or CONTENT_TYPE is invalid.
     * [worker, since 1.0] */
    int (*respond)(helios_request *r, int status, const char *content_type, const void *body,
                   size_t len);
    /* Builds an immutable pre-serialised response once (typically in
     * config_new): HEADERS is NAME, VALUE pairs (NHEADERS pairs). Header
     * strings and body are copied; the module owns the result. Returns NULL
     * and a message in ERR (NULL only with ERRLEN 0) for a status outside
     * 100..599, an invalid header, or out of memory. respond and
     * respond_prepared send no body to HEAD. [any, since 1.0] */
    helios_prepared *(*prepared_new)(int status, const char *const *headers, size_t nheaders,
                                     const void *body, size_t len, char *err, size_t errlen);
    /* Frees P (NULL is a no-op). Requests that sent P point into it, so
     * free it only when none can be in flight: in config_free.
     * [any, since 1.0] */
    void (*prepared_free)(helios_prepared *p);
    /* Sends a prepared response (headers set before are kept; the core
     * adds Content-Length, Date and connection framing). P is not copied.
     * Returns 0, or -1 for a NULL P or a response already started.
     * [worker, since 1.0] */
    int (*respond_prepared)(helios_request *r, const helios_prepared *p);

    /* ---- memory and pause ---- */

    /* Zeroed memory freed with the request in one go (after on_log and
     * on_done). NULL above 1 MiB, or when out of memory.
     * [worker, since 1.0] */
    void *(*req_alloc)(helios_request *r, size_t size);
    /* Continues a request that a hook PAUSEd, with that hook's real result
     * (CONTINUE, RESPONDED after responding, or ERROR; CONTINUE from a
     * handler, and RESPONDED without a response, become 500). From a later
     * callback only (timer, post, subrequest, body), never inside the hook
     * before it returned PAUSE: that call is ignored and the request stays
     * paused. A resume of a request that is not paused is ignored, but the
     * check reads the request: after on_log / on_done it may touch freed or
     * reused memory, so cancel pending work there. The request may finish
     * (on_done, on_log) before resume returns. [worker, since 1.0] */
    void (*resume)(helios_request *r, int status);

    /* ---- timers and posts ----
     * The core ties neither to a request or a generation: cancel timers in
     * on_log / on_done / worker_fini, and let a posted FN check that what
     * ARG points to is still wanted. */

    /* Runs FN(ARG) on worker W's thread soon, in FIFO order with other
     * posts to W. Returns 0, or -1 (FN never runs) when out of memory or
     * once shutdown has closed W's queue; an FN accepted while W stops may
     * run on the main thread after W's loop ended. [any, since 1.0] */
    int (*post)(helios_worker *w, void (*fn)(void *arg), void *arg);
    /* One-shot timer: FN(ARG) on W after MS milliseconds. Call on W's
     * thread. NULL when W or FN is NULL or out of memory. The core frees
     * the timer just before calling FN. [worker, since 1.0] */
    helios_timer *(*timer_add)(helios_worker *w, uint64_t ms, void (*fn)(void *arg), void *arg);
    /* Cancels and frees a timer that has not fired (NULL is a no-op). A
     * fired timer is already freed, also inside its own FN, and must not be
     * cancelled. [worker, since 1.0] */
    void (*timer_cancel)(helios_timer *t);

    /* ---- workers ---- */

    /* Worker of a request. Workers live as long as the process.
     * [worker, since 1.0] */
    helios_worker *(*req_worker)(helios_request *r);
    /* Index of W, 0..worker_count()-1. [any, since 1.0] */
    unsigned (*worker_index)(helios_worker *w);
    /* Number of workers, fixed for the process (a reload keeps it).
     * [any, since 1.0] */
    unsigned (*worker_count)(void);
    /* Milliseconds of W's loop clock, cached when the loop iteration
     * began. Wall-clock time (Unix epoch, libev's ev_now), not monotonic:
     * it moves when the system clock is set. [worker, since 1.0] */
    uint64_t (*now_ms)(helios_worker *w);

    /* ---- backends ----
     * A backend list (helios_backends) is immutable; it and its backends
     * live until their generation ends, even after ctl_backend_remove, so a
     * module may keep them in its config or worker state. The getters read
     * relaxed atomics. Backend state (health, drain, breaker, counters)
     * belongs to the generation: after a reload every backend starts
     * afresh (healthy, undrained, CLOSED, zero counters). */

    /* Number of backends in S (0 for NULL). [any, since 1.0] */
    size_t (*backends_count)(const helios_backends *s);
    /* I-th backend of S, or NULL when I is out of range or S is NULL.
     * [any, since 1.0] */
    helios_backend *(*backends_at)(const helios_backends *s, size_t i);
    /* The backend's name from the configuration or ctl_backend_add.
     * [any, since 1.0] */
    const char *(*backend_name)(const helios_backend *b);
    /* "127.0.0.1:9001" / "[::1]:9001": always numeric (host names are
     * resolved when the backend is built). [any, since 1.0] */
    const char *(*backend_address)(const helios_backend *b);
    /* The same address as a sockaddr_in or sockaddr_in6. [any, since 1.0] */
    const struct sockaddr *(*backend_sockaddr)(const helios_backend *b);
    /* Weight, 1..10000; ctl_backend_weight changes it without telling the
     * balancer, so read it on every pick. [any, since 1.0] */
    uint32_t (*backend_weight)(const helios_backend *b);
    /* 1 when the backend may take new requests: healthy, not drained, its
     * breaker not OPEN and, when HALF_OPEN, a trial slot free.
     * [any, since 1.0] */
    int (*backend_usable)(const helios_backend *b);
    /* Attempts in flight to B across all workers. [any, since 1.0] */
    uint32_t (*backend_inflight)(const helios_backend *b);
    /* Marks B healthy (1) or not (0); logged as a warning, with WHY (may be
     * NULL, not kept), when it changes. [any, since 1.0] */
    void (*backend_set_healthy)(helios_backend *b, int healthy, const char *why);
    /* The health flag alone (see backend_usable). [any, since 1.0] */
    int (*backend_healthy)(const helios_backend *b);
    /* 1 if index I of the list passed to this pick was already tried by
     * this request; 0 for a NULL T or I out of range. T is valid during
     * pick only; when the list changed length since the previous attempt
     * (runtime add/remove) the set starts empty. [worker, since 1.0] */
    int (*tried_has)(const helios_tried *t, size_t i);

    /* ---- control plane (typically a service thread such as the admin
     * API). Calls may block (name resolution, a lock shared with reloads),
     * so keep them off workers. Never call them from config_new,
     * backends_changed or a ctl_*_walk callback: a reload or the calling
     * ctl_* holds the lock there, and it would deadlock. They are
     * serialised with each other and with reloads, act on the running
     * generation, take effect for requests that start afterwards, and
     * never disturb requests in flight. Names, not handles, so nothing
     * dangles across a reload. Each returns 0, or -1 with a message in ERR
     * (which may be NULL): no running configuration, an unknown upstream or
     * backend, a duplicate name, a bad address or weight, or a balancer
     * module that does not load or refuses its configuration or the backend
     * list. A runtime change lasts until the next reload or restart, which
     * rebuild everything from the configuration files. ---- */

    /* Appends backend NAME (1..255 bytes, unique in the upstream) with
     * ADDRESS as in the configuration (a host name is resolved here) and
     * WEIGHT 1..10000; it starts healthy, undrained, CLOSED. The balancer's
     * backends_changed sees the new list first. [ctl, since 1.0] */
    int (*ctl_backend_add)(const char *upstream, const char *name, const char *address,
                           uint32_t weight, char *err, size_t errlen);
    /* Removes a backend: no new requests; those in flight complete, and
     * idle pooled connections to it are closed. The backends after it move
     * down one index. [ctl, since 1.0] */
    int (*ctl_backend_remove)(const char *upstream, const char *name, char *err, size_t errlen);
    /* Changes a backend's weight (1..10000). No backends_changed call.
     * [ctl, since 1.0] */
    int (*ctl_backend_weight)(const char *upstream, const char *name, uint32_t weight, char *err,
                              size_t errlen);
    /* Drains (1) or undrains (0) a backend: a drained backend is not
     * usable for new requests; requests in flight complete.
     * [ctl, since 1.0] */
    int (*ctl_backend_drain)(const char *upstream, const char *name, int drain, char *err,
                             size_t errlen);
    /* Switches the upstream to balancer module MODULE with no `config:`
     * (its config_new gets NULL, on this thread), once its backends_changed
     * accepted the current list. Every worker moves to it when it next runs
     * its post queue (worker_init there; a worker whose worker_init fails
     * logs it and keeps the old balancer, although this returned 0);
     * requests keep the backend they already have. [ctl, since 1.0] */
    int (*ctl_balancer_set)(const char *upstream, const char *module, char *err, size_t errlen);

    /* A JSON-free snapshot of one upstream for reporting: calls FN once per
     * backend, in list order, under the control lock (do not call ctl_*
     * from FN); read B with the backend_* getters. Returns the number of
     * backends (FN may be NULL), or -1 if the upstream is unknown.
     * [ctl, since 1.0] */
    long (*ctl_backends_walk)(const char *upstream,
                              void (*fn)(void *arg, const helios_backend *b), void *arg);
    /* Name of the balancer module an upstream uses now, or NULL if the
     * upstream is unknown; the string lives as long as the process.
     * [ctl, since 1.0] */
    const char *(*ctl_balancer_name)(const char *upstream);
    /* Number of upstreams in the running generation (0 before it runs). A
     * reload between this and ctl_upstream_name may change the list.
     * [ctl, since 1.0] */
    size_t (*ctl_upstreams_count)(void);
    /* Copies the I-th upstream's name into BUF (NUL-terminated): 0, or -1
     * when I is out of range or BUF is NULL or too small. [ctl, since 1.0] */
    int (*ctl_upstream_name)(size_t i, char *buf, size_t size);
    /* 1 while B is drained. [any, since 1.0] */
    int (*backend_draining)(const helios_backend *b);
    /* Attempts sent to B, retries included, since the generation started.
     * [any, since 1.0] */
    uint64_t (*backend_requests)(const helios_backend *b);
    /* Attempts to B that ended with an outcome other than
     * HELIOS_OUTCOME_OK, total. [any, since 1.0] */
    uint64_t (*backend_failures)(const helios_backend *b);

    /* ---- circuit breaking (any thread, atomic) ----
     * A breaker module sets a backend's state; the core enforces it: an
     * OPEN backend is not usable; a HALF_OPEN one admits at most
     * MAX_TRIALS requests at a time (the core counts them at pick time and
     * releases a trial when its attempt ends). Each change of state is
     * counted per target state and logged. */

    /* Sets B's state (HELIOS_BREAKER_*; other values are ignored) and its
     * HALF_OPEN trial limit. [any, since 1.0] */
    void (*backend_set_breaker)(helios_backend *b, int state, uint32_t max_trials);
    /* B's state, HELIOS_BREAKER_*. [any, since 1.0] */
    int (*backend_breaker)(const helios_backend *b);
    /* Number of transitions into STATE since the generation started (0 for
     * an invalid STATE). [any, since 1.0] */
    uint64_t (*backend_breaker_transitions)(const helios_backend *b, int state);
    /* Retries the core made to B (attempts after a request's first),
     * total. A stale pooled connection replayed on the same backend is not
     * a retry. [any, since 1.0] */
    uint64_t (*backend_retries)(const helios_backend *b);
    /* Upstream attempts started for R: in pick, the number of earlier
     * attempts (0 = first pick); from then on the current attempt's number
     * (1 = first try); 0 when never proxied. [worker, since 1.0] */
    unsigned (*req_attempts)(helios_request *r);

    /* ---- request facts for logging (typically in on_log) ---- */

    /* Fills OUT (the module sets out->size = sizeof(*out) first; the core
     * fills only what both know). Strings are borrowed like header values.
     * Returns 0, or -1 when OUT is NULL or smaller than the ABI 1.0 struct.
     * [worker, since 1.0] */
    int (*req_stats)(helios_request *r, helios_req_stats *out);
    /* W's libev loop (struct ev_loop *), for modules that drive their own
     * I/O on it (e.g. an async Redis client), on W's thread only. Watchers
     * started on it must be stopped in worker_fini. [worker, since 1.0] */
    void *(*worker_ev_loop)(helios_worker *w);

    /* ==== appended in ABI 1.1 ==== */

    /* ---- operations ---- */

    /* Id of the running configuration generation: 1 at startup, higher
     * after every successful reload (a reload that could not open its
     * listeners uses up a number); 0 while the first configuration is
     * being built. [any, since 1.1] */
    uint32_t (*generation)(void);
    /* Fills OUT (caller sets out->size first) with process-wide counters,
     * summed over workers. Returns 0, or -1 when OUT is NULL or its size
     * is too small. [any, since 1.1] */
    int (*core_stats)(helios_core_stats *out);
    /* Reloads the configuration as SIGHUP does and waits for the outcome.
     * Not on the main thread or a worker (it would wait for itself: -1):
     * call it from a service's own thread; one caller at a time. Returns 0
     * with the new generation id in *GEN (may be NULL), or -1 with the
     * reasons (one per line, as the error log has them) in ERR (may be
     * NULL), also while heliosd stops. The caller's own service instance is
     * stopped right after (it belongs to the old generation) and the new
     * generation's instance started: stop() must let a request that is
     * being answered finish. A call made while another reload is replacing
     * the services returns 0 with that reload's generation at once (it was
     * built from the same files), so it never waits for a main thread that
     * is stopping the caller. [ctl but not main, since 1.1] */
    int (*ctl_reload)(uint32_t *gen, char *err, size_t errlen);
    /* Calls FN once per module that has an instance in the running
     * generation (balancers switched in at runtime included), in load
     * order, under the control lock (no ctl_* from FN). M is valid during
     * the call; its strings live as long as the process. Returns the number
     * of modules. [ctl, since 1.1] */
    long (*ctl_modules_walk)(void (*fn)(void *arg, const helios_module_info *m), void *arg);
    /* Calls FN with the root map of the running generation's merged
     * configuration (walk it with conf_*), under the control lock: the
     * nodes stay valid during the call only. Returns 0, -1 if none.
     * [ctl, since 1.1] */
    int (*ctl_config_walk)(void (*fn)(void *arg, const helios_conf *root), void *arg);

    /* ---- request variables ----
     * Small named strings a module leaves on a request for others to read
     * (e.g. rate_limit sets "rate_limit" to "limited" when it refuses a
     * request; metrics and log modules read it). Names are case-sensitive;
     * both strings are copied into the request. */

    /* Sets NAME to VALUE, replacing; a NULL VALUE removes (0 also when
     * unset). Returns 0, or -1 for a NULL or empty NAME or out of memory.
     * [worker, since 1.1] */
    int (*req_var_set)(helios_request *r, const char *name, const char *value);
    /* NAME's value (NUL-terminated), borrowed; ptr NULL when unset.
     * [worker, since 1.1] */
    helios_buf (*req_var_get)(helios_request *r, const char *name);
    /* Name of the route's `upstream:` (for a route with a handler: the
     * handler's default subrequest target; for a subrequest: its target),
     * or "" when it has none. [worker, since 1.1] */
    const char *(*req_upstream)(helios_request *r);

    /* ---- exports between modules ----
     * A process-wide registry of named pointers one module offers another
     * (e.g. metrics offers "metrics.prometheus" for admin_api to serve on
     * its listener). What the pointer points to is a contract between those
     * modules (see helios/util/ for the shipped ones). Set it in a service's
     * start() and clear it (NULL) in stop(). The core only stores the
     * pointer: the exporter keeps the object valid until its own
     * config_free, since a reader may have fetched it just before stop(). */

    /* Sets NAME (under 64 bytes) to PTR, replacing; a NULL PTR clears (0
     * also when unset). Returns 0, or -1 for a NULL or too long NAME or a
     * full table (32 names). [any, since 1.1] */
    int (*export_set)(const char *name, void *ptr);
    /* The pointer set for NAME, or NULL. [any, since 1.1] */
    void *(*export_get)(const char *name);

    /* ---- handlers: the request body ----
     * A handler asks for the request body once, from handle() or later
     * while paused, before it responds. ON_DATA(ARG, CHUNK, LAST, ERROR)
     * then runs on the worker for each piece as it arrives (CHUNK borrowed
     * for the call), the last call with LAST set (CHUNK may be empty).
     * ERROR non-zero means the body cannot be completed (client gone,
     * timeout, bad framing, or the request ended first: then before
     * on_done): no more calls follow. A request without a body gets one
     * call, LAST and empty, from the worker loop (never from inside
     * req_body_read). Returns 0, or -1 when ON_DATA is NULL, the body was
     * already requested, or the request is not in its handler's hands (a
     * filter, a subrequest, or after respond). The body is read at the pace
     * ON_DATA returns: the module decides how much to keep.
     * [worker, since 1.1] */
    int (*req_body_read)(helios_request *r,
                         void (*on_data)(void *arg, helios_buf chunk, int last, int error),
                         void *arg);

    /* ---- subrequests: a module's own requests to upstreams ----
     * Go through the upstream's balancer, retries and keep-alive pools
     * like proxied requests. Build with subreq_new, add headers, then
     * subreq_send with the whole body. Callbacks run on the worker, never
     * from inside subreq_send. After on_error, or on_body with LAST, the
     * subrequest is freed by the core when the callback returns; before
     * that, subreq_cancel frees it (no callback after). A subrequest made
     * with a PARENT request is cancelled by the core when the parent ends
     * (after on_done / on_log). With PARENT NULL (e.g. work left for after
     * the response) it lives until it ends, bounded by the upstream's
     * timeouts, and keeps its generation (and so the module's worker state)
     * alive meanwhile. Subrequests are not access-logged and get no
     * X-Forwarded-* headers: the module adds what it wants. */

    /* New subrequest METHOD (a token) TARGET (origin-form "/path?query") to
     * UPSTREAM, by name in PARENT's generation (the worker's current one
     * without PARENT); NULL means the parent route's `upstream:`. Call it
     * on W (PARENT's worker when given). NULL with a message in ERR (may be
     * NULL) on a wrong thread, bad method or target, unknown upstream or
     * out of memory. Send or cancel what it returns. [worker, since 1.1] */
    helios_subreq *(*subreq_new)(helios_worker *w, helios_request *parent, const char *upstream,
                                 const char *method, const char *target, char *err,
                                 size_t errlen);
    /* Adds a header before send. Host replaces the default (the parent's
     * host, else the backend's address). Refused (-1): after send, NULL or
     * invalid names/values, hop-by-hop headers and Content-Length (the core
     * frames the message). [worker, since 1.1] */
    int (*subreq_header_add)(helios_subreq *s, const char *name, const char *value);
    /* Starts the subrequest; BODY (copied) may be NULL with LEN 0. CB is not
     * copied: it must stay valid until the final callback (a static const
     * table), cb->size set; any callback may be NULL. Returns 0, or -1: a
     * first send refused (NULL CB, NULL BODY with LEN, out of memory) frees
     * the subrequest and nothing is called back; a second send changes
     * nothing. [worker, since 1.1] */
    int (*subreq_send)(helios_subreq *s, const void *body, size_t len,
                       const helios_subreq_cb *cb, void *arg);
    /* Response status, valid from on_head until freed; 0 before.
     * [worker, since 1.1] */
    int (*subreq_status)(helios_subreq *s);
    /* Number of response headers, 0 before on_head. [worker, since 1.1] */
    size_t (*subreq_header_count)(helios_subreq *s);
    /* I-th response header, borrowed until the subrequest is freed: 0, or
     * -1 when I is out of range. [worker, since 1.1] */
    int (*subreq_header_at)(helios_subreq *s, size_t i, helios_buf *name, helios_buf *value);
    /* Cancels and frees S; no callback after. NULL is a no-op; inside S's
     * own callback S is freed when it returns. Never after the final
     * callback or the parent's end: S is gone. [worker, since 1.1] */
    void (*subreq_cancel)(helios_subreq *s);

    /* ---- TLS ----
     * Fills OUT (caller sets out->size first) for a request that came over
     * TLS and returns 0; returns -1 for a plain-text connection, a
     * subrequest, or a NULL or too small OUT. [worker, since 1.1] */
    int (*req_tls)(helios_request *r, helios_tls_info *out);

    /* ==== appended in ABI 1.3 (module contracts) ==== */

    /* ---- request body facts ----
     * Every request, bodiless ones included, ends its body with exactly
     * one on_request_body(LAST) (module.h); these tell a filter in
     * on_request_headers what is coming. */

    /* The body's length: Content-Length (HTTP/1.1), the content-length
     * field (HTTP/2, also visible with req_header), a subrequest's body
     * length, or after req_body_hold the held body's length; 0 for a
     * request without a body (Content-Length: 0, END_STREAM on HEADERS,
     * no framing at all); -1 when unknown (chunked, HTTP/2 without
     * content-length). [worker, since 1.3] */
    int64_t (*req_body_length)(helios_request *r);
    /* 1 when body bytes may follow (a length above 0, or unknown), 0 when
     * the request has none. [worker, since 1.3] */
    int (*req_has_body)(helios_request *r);
    /* Hold until verified: from on_request_headers only, asks the core to
     * read the whole request body into memory before anything goes
     * upstream or to the handler. The body filters then get it in one
     * on_request_body call, LAST set, and may CONTINUE, refuse it
     * (respond, RESPONDED: the backend is never contacted) or replace it
     * (*CHUNK, any length: the upstream gets the new Content-Length; a
     * handler's req_body_read gets the replacement). The held size is at
     * most MAX bytes (0: the configured bound) and never more than
     * limits.max_held_body and limits.max_request_body; a body announced
     * or found larger gets 413 without the backend or handler ever seeing
     * the request. Several filters may hold: the smallest MAX wins. A
     * request without a body is not held (its LAST call comes as usual).
     * Returns 0, or -1 outside on_request_headers or for a subrequest.
     * [worker, since 1.3] */
    int (*req_body_hold)(helios_request *r, uint64_t max);

    /* ---- late callbacks: request references ----
     * resume(r) and anything else on a helios_request must not be called
     * after the request ended (its memory may serve the next one). A
     * timer, post or thread that may outlive the request keeps a
     * reference instead and turns it back into the request when it fires:
     * a request that ended is then a no-op that reads no request memory. */

    /* A reference to R, valid (on R's worker) until R ends; the same
     * value on every call for one request. 0 when out of memory.
     * [worker, since 1.3] */
    helios_req_ref (*req_ref)(helios_request *r);
    /* The request REF names, or NULL once it has ended (from the start of
     * its on_log / on_done on), for 0, or when called off the request's
     * worker. [worker, since 1.3] */
    helios_request *(*req_from_ref)(helios_req_ref ref);
    /* resume() for the request REF names: returns 0 after resuming it, or
     * -1, changing nothing, when it has ended, is not paused, or this is
     * not its worker (post there first). Never touches an ended request's
     * memory. [worker, since 1.3] */
    int (*resume_ref)(helios_req_ref ref, int status);

    /* ==== appended in ABI 1.3 (streamed bodies) ==== */

    /* ---- handlers: a streamed response ----
     * A response whose body the handler produces piece by piece (a
     * transform of the request body, a subrequest's body passed on): the
     * head first (respond_begin), then the body (respond_body) at the
     * client's pace. Flow control is by watermarks, as for proxied
     * responses: the core queues what the client has not taken yet; once
     * the queue reaches limits.max_body_buffer (the high watermark),
     * respond_body returns 1 and the module stops producing until ON_DRAIN
     * runs, after the queue fell back under it. The body is framed by the
     * client's protocol: chunked on HTTP/1.1, close-delimited on HTTP/1.0,
     * DATA frames on HTTP/2. Response filters see it as they see a proxied
     * response. The handler keeps reading the request body meanwhile if it
     * wants (req_body_read works until the last piece is sent). */

    /* Sends the response head: STATUS, optional Content-Type (replaces one
     * set before), the headers set with resp_header_* before this call
     * (a Content-Length among them is kept, and a body that ends short of
     * it or runs over aborts the response), Date when absent. ON_DRAIN(ARG)
     * (may be NULL) runs on the worker, from the loop, each time the
     * client's queue falls under the high watermark after respond_body
     * returned 1; never after on_done. Returns 0 (a response filter that
     * fails turns it into a 500 and later respond_body calls return -1),
     * or -1 if a response has already started, R is not in its handler's
     * hands (a filter, a subrequest), STATUS is outside 100..599 or
     * CONTENT_TYPE is invalid. HEAD, 204 and 304 send no body: the response
     * ends here, and the request may finish (on_done runs) before this
     * returns. [worker, since 1.3] */
    int (*respond_begin)(helios_request *r, int status, const char *content_type,
                         void (*on_drain)(void *arg), void *arg);
    /* Queues LEN bytes of body (copied; P may be NULL with LEN 0); LAST
     * ends the body. Returns 0: queued, send more; 1: queued, but the
     * client's queue is at or over the high watermark: wait for ON_DRAIN;
     * -1: nothing queued, no streamed response takes a body (none begun,
     * the last piece already given, HEAD/204/304, or it was aborted: the
     * client went away, a filter or a length check failed): stop
     * producing, on_done follows. The request may finish (on_done runs)
     * before a call with LAST, or one returning -1, returns; R is gone
     * then. [worker, since 1.3] */
    int (*respond_body)(helios_request *r, const void *p, size_t len, int last);
    /* The streamed response cannot be completed (the module's source
     * failed): the client sees it cut off (HTTP/1.1: the connection closes
     * without the last chunk; HTTP/2: RST_STREAM), WHY (copied, may be
     * NULL) goes to the error log with the request. A no-op when no
     * streamed response is under way. The request may finish (on_done
     * runs) before this returns. [worker, since 1.3] */
    void (*respond_abort)(helios_request *r, const char *why);

    /* ---- handlers: request body flow control ----
     * PAUSE 1 stops reading the request body from the client (the kernel's
     * buffers, then TCP or HTTP/2 flow control, push back on it); ON_DATA
     * of req_body_read may still get what was already read, at most about
     * limits.max_body_buffer. PAUSE 0 reads on (the next ON_DATA comes from
     * the loop, never from inside this call). The client_body timeout
     * runs only while heliosd reads from the client. Returns 0, or -1 when
     * the handler is not reading the body (req_body_read not called, or its last piece or an
     * error already delivered). [worker, since 1.3] */
    int (*req_body_pause)(helios_request *r, int pause);

    /* ---- subrequests: response flow control ----
     * PAUSE 1 stops reading S's response from the backend (HTTP/1.1: the
     * socket; HTTP/2: the stream's window is not replenished); on_body may
     * still get what was already read, about one read (64 KiB). PAUSE 0
     * reads on, from the loop. No upstream read timeout runs while paused:
     * the module bounds the pause (a timer, subreq_cancel). Returns 0, or
     * -1 for a NULL S, one not sent yet, or after its final callback.
     * [worker, since 1.3] */
    int (*subreq_pause)(helios_subreq *s, int pause);

    /* ==== appended in ABI 1.3 (stats) ==== */
    /* Panic mode of UPSTREAM (panic_threshold): returns 1 when its last
     * pick balanced over all backends because too few were healthy, 0
     * when not, -1 for no such upstream. *ENTRIES (if not NULL) gets the
     * times panic mode began in this generation. [ctl, since 1.3] */
    int (*ctl_upstream_panic)(const char *upstream, uint64_t *entries);
};

enum {
    HELIOS_BREAKER_CLOSED = 0,
    HELIOS_BREAKER_OPEN = 1,
    HELIOS_BREAKER_HALF_OPEN = 2,
};

#endif
