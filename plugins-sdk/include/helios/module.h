/*
 * helios/module.h - what a module gives the core: one descriptor, with
 * lifecycle hooks and one hook table per kind it implements.
 *
 * A module is a shared object exporting exactly one symbol:
 *
 *     const helios_module *helios_module_init(const helios_host_api *api);
 *
 * called once, on the main thread, right after dlopen(RTLD_NOW|RTLD_LOCAL).
 * Keep API in a static; it stays valid until the module is unloaded. Return
 * the descriptor (static storage), or NULL to refuse loading (log why first).
 *
 * Instances: every place the configuration names a module (the global
 * `modules:` chain, a route's `filters:` or `handler:`, an upstream's
 * `balancer:`) is one instance, with its own config_new/config_free and its
 * own per-worker state. A module's .so is loaded once however many instances
 * it has.
 */
#ifndef HELIOS_MODULE_H
#define HELIOS_MODULE_H

#include "types.h"

typedef struct helios_host_api helios_host_api;

/*
 * Filter kind: runs around the handler. Request hooks run in chain order
 * (global `modules:` first, then the route's `filters:`); response hooks in
 * reverse order. Any hook may be NULL. All run on the request's worker.
 */
typedef struct helios_filter_hooks {
    uint32_t size; /* sizeof(helios_filter_hooks) the module was built with */
    /* The request head is complete and routed. May read and change request
     * headers, respond (RESPONDED), or PAUSE. */
    int (*on_request_headers)(helios_ctx *c);
    /* A chunk of the request body (LAST set on the final call, which may
     * carry an empty chunk). The filter may replace *CHUNK with bytes it owns
     * that stay valid until its next call or the end of the request. It may
     * also refuse the request: call api->respond (while no response has
     * started) and return RESPONDED; the upstream exchange, if any, is
     * dropped and the client connection closes after the response, since
     * the rest of the body is not read. */
    int (*on_request_body)(helios_ctx *c, helios_buf *chunk, int last);
    /* The response head is known (from the upstream or a handler). May read
     * and change status and headers. RESPONDED and PAUSE are not allowed
     * here (treated as ERROR). */
    int (*on_response_headers)(helios_ctx *c);
    /* A chunk of the response body; same replacement contract as above.
     * A filter that changes the body's length must remove Content-Length
     * in on_response_headers (the core then re-frames, chunked or by
     * close); otherwise the response is cut off as inconsistent. When any
     * filter has on_request_body, the request body goes upstream chunked. */
    int (*on_response_body)(helios_ctx *c, helios_buf *chunk, int last);
    /* After the response is finished or the request aborted; for logging
     * and releasing what the per-request state holds outside the request
     * arena. Never fails. */
    void (*on_log)(helios_ctx *c);
} helios_filter_hooks;

/* Handler kind: produces the response of a route (`handler:`). */
typedef struct helios_handler_hooks {
    uint32_t size;
    /* Must answer (api->respond*, then RESPONDED) or PAUSE and answer later
     * before resuming. CONTINUE is treated as ERROR. */
    int (*handle)(helios_ctx *c);
    /* ABI 1.1 (read only when size covers it): after the response is
     * finished or the request aborted, like a filter's on_log; the place to
     * cancel timers and posts the handler still has for this request. The
     * request is gone afterwards: never resume it or call the API on it
     * (its subrequests are cancelled by the core). May be NULL. */
    void (*on_done)(helios_ctx *c);
} helios_handler_hooks;

/*
 * Balancer kind: an upstream's `balancer:`. One instance per upstream; its
 * cfg is shared by all workers (use atomics for shared counters), wstate is
 * per worker. helios/util/balancer.h has the candidate scan, a config_new
 * for balancers without settings and per-worker state helpers.
 */
typedef struct helios_balancer_hooks {
    uint32_t size;
    /* Chooses the backend for one upstream attempt: called on the request's
     * worker once before every attempt (the first and each retry), and
     * again for the same attempt, with the refused backend now in TRIED, if
     * the core cannot admit the pick (a half-open breaker whose trial slots
     * just filled).
     * Must return the index in BACKENDS of a candidate, a backend for which
     * api->backend_usable() is 1 and api->tried_has(TRIED, index) is 0; or
     * -1 when there is no candidate. Never a tried backend as a last resort:
     * the core does not send a request to a backend twice.
     * The core checks the answer: -1 or an index out of range ends the
     * request (503 before any attempt, 502 after); a tried or unusable
     * index (a bug, or a backend that became unusable meanwhile) is replaced
     * by the first candidate in list order, or ends the request likewise
     * when there is none. BACKENDS is immutable during the call. */
    int (*pick)(helios_ctx *c, const helios_backends *backends, const helios_tried *tried);
    /* The backend list of this upstream was replaced (a backend added or
     * removed at runtime); called on the control thread before any worker
     * sees the new list, with the new list. Weight, drain and health changes
     * do not replace the list: read them on every pick. Workers may still
     * pick from an older list for a while; lists are never freed or reused
     * before the generation ends, so comparing list pointers is a safe way
     * to notice a change in per-worker state. May be NULL. Non-zero refuses
     * the change. */
    int (*backends_changed)(void *cfg, const helios_backends *backends);

    /* ==== appended in ABI 1.3 (module contracts) ==== */

    /* One attempt this balancer picked the backend for has ended, on the
     * request's worker: exactly once per try, right after the global
     * health modules' on_upstream_result for it (same outcome and
     * status), or with HELIOS_OUTCOME_CANCELLED when the attempt ended
     * without a result (see "When the upstream hooks fire" below). A may
     * be read during the call only. C->rstate is the per-attempt slot pick
     * saw. The request may already be past on_log (CANCELLED): read it
     * only. May be NULL. Read only when size covers it.
     *
     * Per-attempt slot: for a module built for ABI 1.3 or later, pick's
     * C->rstate points to a slot (NULL at every pick) that the same
     * attempt's on_attempt_end sees again; keep a small value or arena
     * memory (api->req_alloc) there. Modules built for 1.0..1.2 still get
     * a NULL rstate in pick. */
    void (*on_attempt_end)(helios_ctx *c, const helios_attempt *a);
} helios_balancer_hooks;

/* Service kind: owns something on the main thread (e.g. an admin server). */
typedef struct helios_service_hooks {
    uint32_t size;
    /* After workers started; main thread. Non-zero = failure (log why, and
     * undo what was done: stop() is not called after a failed start): at
     * startup heliosd then stops and exits 1; after a reload the new
     * generation runs without this service and the error is logged. */
    int (*start)(void *cfg);
    /* Before workers stop; main thread. Must join its own threads. */
    void (*stop)(void *cfg);
} helios_service_hooks;

/* Health kind: observes upstream outcomes and marks backends up/down. */
typedef struct helios_health_hooks {
    uint32_t size;
    /* After every upstream attempt, on the request's worker. OUTCOME is one
     * of the HELIOS_OUTCOME_* codes; STATUS the response status or 0. */
    void (*on_upstream_result)(helios_ctx *c, helios_backend *b, int outcome, int status);
} helios_health_hooks;

enum {
    HELIOS_OUTCOME_OK = 0,
    HELIOS_OUTCOME_CONNECT_FAILED = 1,
    HELIOS_OUTCOME_RESET = 2,
    HELIOS_OUTCOME_TIMEOUT = 3,
    HELIOS_OUTCOME_BAD_RESPONSE = 4,
};

/* ==== appended in ABI 1.3 (module contracts) ==== */

/* Outcome given to on_attempt_end only (never to on_upstream_result): the
 * attempt ended without a result of its own: the request ended first
 * (client gone, request timeout, a filter answered), or the backend's 101
 * turned it into a WebSocket tunnel (status 101). */
enum { HELIOS_OUTCOME_CANCELLED = 5 };

/*
 * When the upstream hooks fire (the contract since 1.0, spelled out in 1.3).
 * One attempt = one try of one request on one backend:
 *   pick               before the attempt (again for the same attempt when
 *                      the core could not admit the pick).
 *   on_upstream_result (health, every global health instance) once per
 *                      attempt that reached a result: OK when the response
 *                      is complete (after its last byte, not at its head)
 *                      and the connection goes back to the pool, STATUS the
 *                      response status; a 502/503/504 head the core retries
 *                      is reported OK with that status when it drops it; a
 *                      failure (CONNECT_FAILED, RESET, TIMEOUT,
 *                      BAD_RESPONSE) when it happens, STATUS 0. A stale
 *                      pooled connection replayed on the same backend is
 *                      reported (RESET or CONNECT_FAILED) and its replay is
 *                      reported again: two results, one pick. An attempt
 *                      that the request abandons (client gone, timeout of
 *                      the whole request, a filter answering) or that
 *                      becomes a tunnel is not reported.
 *   on_attempt_end     (the balancer that picked, 1.3) right after every
 *                      on_upstream_result of its attempts, and with
 *                      CANCELLED for an attempt that ended unreported.
 * Then the response (or the next attempt's pick) goes on; filters' on_log
 * and a handler's on_done come after the last attempt's result (a
 * CANCELLED on_attempt_end may come after them).
 */

/*
 * A command-line command a module adds to heliosd (since ABI 1.2):
 * `heliosd NAME [ARGS...]` runs RUN. The js module's `compile` is one.
 *
 * heliosd looks a command it does not know itself up in the modules of the
 * module directory (`-m DIR` among the arguments, else the built-in one):
 * it loads each .so there in lexical order with the same checks as for a
 * configuration, and runs the first whose table lists NAME. Nothing else
 * happens in that process: no configuration is read, config_new and
 * worker_init are never called, there are no workers and no generation.
 *
 * RUN is called once, on the main thread, after helios_module_init. API is
 * the table helios_module_init received; of it only log may be used (it
 * writes warnings and errors to stderr). Write the command's own output
 * to stdout and stderr. ARGV[0] is NAME, ARGV[1..ARGC-1] the arguments
 * after it without the `-m DIR` pair heliosd took, and ARGV[ARGC] is NULL.
 * The strings and the array belong to heliosd and stay valid until RUN
 * returns; RUN may reorder the array (getopt does) but frees nothing.
 * The return value is heliosd's exit status: 0 success, 1 failure, 2 a
 * usage error; a value outside 0..125 exits 1.
 */
typedef struct helios_command {
    const char *name;    /* [a-z0-9_-]+; NULL ends the table */
    const char *summary; /* one line for heliosd's list of commands, or NULL */
    int (*run)(const helios_host_api *api, int argc, char **argv);
} helios_command;

/*
 * The descriptor. Fill the header with HELIOS_MODULE_HEADER(name, version).
 * Fields after `build_sig` may be appended in later minors; the core reads
 * only what struct_size covers.
 */
typedef struct helios_module {
    uint32_t magic;       /* HELIOS_MODULE_MAGIC */
    uint16_t abi_major;   /* HELIOS_ABI_MAJOR the module was built with */
    uint16_t abi_minor;   /* HELIOS_ABI_MINOR the module was built with */
    uint32_t struct_size; /* sizeof(helios_module) the module was built with */
    const char *name;     /* must equal the file name without ".so" */
    const char *version;  /* the module's own version, free-form */
    const char *build_sig; /* HELIOS_BUILD_SIGNATURE */

    /* Parses one instance's `config:` node (NULL when absent), on the main
     * thread or, for a balancer switched in at runtime (ctl_balancer_set),
     * on the thread making that call; never two at once. On success stores the instance config in *CFG and returns 0.
     * On failure reports each problem with api->conf_error (which records
     * file:line:col and key path) and returns -1. Runs again for every
     * configuration generation (reload). May be NULL: the instance accepts
     * no keys. */
    int (*config_new)(const helios_conf *conf, void **cfg);
    /* Frees what config_new made, on the main thread, once no worker uses
     * the generation any more. May be NULL. */
    void (*config_free)(void *cfg);
    /* Per worker and instance, on that worker's thread before it serves
     * requests of the generation; *WSTATE starts NULL. Non-zero = failure:
     * logged, and that worker answers 503 instead of serving the generation
     * (worker_fini is not called for the failed instance). May be NULL. */
    int (*worker_init)(void *cfg, helios_worker *w, void **wstate);
    /* Undoes worker_init, on the worker's thread. May be NULL. */
    void (*worker_fini)(void *cfg, helios_worker *w, void *wstate);

    /* One table per kind implemented; NULL for the others. */
    const helios_filter_hooks *filter;
    const helios_handler_hooks *handler;
    const helios_balancer_hooks *balancer;
    const helios_service_hooks *service;
    const helios_health_hooks *health;

    /* Since ABI 1.2, read only when struct_size covers it: the module's
     * command-line commands, an array in static storage ended by an entry
     * whose name is NULL; NULL for none. See helios_command. */
    const helios_command *commands;
} helios_module;

#define HELIOS_MODULE_HEADER(name_, version_)                                        \
    .magic = HELIOS_MODULE_MAGIC, .abi_major = HELIOS_ABI_MAJOR,                     \
    .abi_minor = HELIOS_ABI_MINOR, .struct_size = sizeof(helios_module), .name = name_, \
    .version = version_, .build_sig = HELIOS_BUILD_SIGNATURE

/* The entry symbol. Exported with default visibility whatever the flags. */
#define HELIOS_MODULE_ENTRY                                                           \
    __attribute__((visibility("default"))) const helios_module *helios_module_init(     \
        const helios_host_api *api);                                                  \
    __attribute__((visibility("default"))) const helios_module *helios_module_init

#endif
