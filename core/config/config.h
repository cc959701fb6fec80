/*
 * config.h - a configuration generation: the validated, immutable result of
 * reading the config directory, with its module instances created.
 *
 * Built on the main thread (startup, SIGHUP). Only a generation that
 * validated completely replaces the running one. Workers take a reference
 * for every connection and request that starts in it; the generation (and
 * every module config in it) is freed when the last reference goes.
 */
#ifndef HX_CONFIG_H
#define HX_CONFIG_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/addr.h"
#include "config/conf.h"
#include "config/module_loader.h"

typedef struct hx_backend {
    char *name;
    char *address; /* as written, normalised: "127.0.0.1:9001" */
    hx_addr addr;
    unsigned index;        /* position in its upstream's list */
    _Atomic uint32_t weight;
    _Atomic uint32_t inflight; /* across workers */
    _Atomic int healthy;       /* 1 unless a health module says otherwise */
    _Atomic int draining;      /* set by the admin API: no new requests */
    _Atomic uint64_t requests; /* totals, relaxed */
    _Atomic uint64_t failures;
    _Atomic int removed;       /* taken out at runtime: never pooled again */
    _Atomic int breaker;       /* HELIOS_BREAKER_*, set by a breaker module */
    _Atomic uint32_t breaker_max_trials;
    _Atomic uint32_t trials;   /* half-open attempts in flight */
    _Atomic uint64_t breaker_transitions[3];
    _Atomic uint64_t retries;  /* attempts after the first, sent here */
    _Atomic uint32_t tunnels;  /* open WebSocket tunnels, across workers (tunnel.c) */
    /* HX_CARRIED_* bits: a verdict copied from the previous generation that
     * no module of this one has confirmed yet (runtime/state.c) */
    _Atomic int carried;
    const hx_conf_node *node;
    /* keep-alive pools, one per worker, set up by the core when the
     * generation starts (upstream.c); config.c leaves it NULL */
    struct hx_pool *pools;
    /* The counters above as handed to the next generation's backend of the
     * same upstream and name (runtime/state.c, main thread): what this one
     * counts later is added there when this generation is freed. */
    int handed;
    uint64_t handed_at[6]; /* requests, failures, retries, transitions[3] */
} hx_backend;

/* An immutable list; replaced as a whole on runtime changes. */
enum { HX_CARRIED_HEALTH = 1, HX_CARRIED_BREAKER = 2 };

typedef struct hx_backends {
    size_t n;
    hx_backend **v;
} hx_backends;

typedef struct hx_upstream {
    char *name;
    unsigned index;
    hx_instance *balancer;          /* from the configuration */
    hx_instance *_Atomic balancer_rt; /* set by a runtime switch, else NULL */
    hx_backends *_Atomic backends;
    /* Runtime changes keep what they replace until the generation ends, so
     * a worker holding an older list or instance never sees freed memory.
     * Guarded by the control lock (control.c). */
    hx_backends **retired;  /* old lists: arrays only, backends shared */
    size_t nretired;
    hx_backend **removed;   /* backends no longer in the current list */
    size_t nremoved;
    hx_instance **switched; /* balancer instances created at runtime */
    size_t nswitched;
    /* keep-alive pool, per worker and backend */
    unsigned keepalive_max_idle;
    uint64_t keepalive_idle_ms;
    uint64_t connect_timeout_ms;
    uint64_t read_timeout_ms; /* between bytes from the upstream */
    uint64_t send_timeout_ms; /* between bytes to the upstream */
    unsigned max_tunnels;     /* open tunnels per backend, 0 = unlimited */
    uint64_t request_buffering; /* bodies up to this are read whole first, 0 = stream */
    unsigned panic_threshold;   /* % of healthy backends below which health is ignored */
    _Atomic int panicking;           /* the last pick was in panic mode */
    _Atomic uint64_t panic_entries;  /* times panic mode began (metrics) */
    /* retries (upstream.c) */
    unsigned retry_tries;      /* attempts in all, first included */
    unsigned retry_on;         /* HX_RETRY_* bits */
    uint64_t per_try_timeout_ms; /* waiting for a response head; 0 = read */
    unsigned retry_budget_percent;
    unsigned retry_budget_min;
    _Atomic int64_t retry_balance; /* milli-retries available (budget) */
    int protocol;              /* HX_PROTO_* */
    struct hx_uptls *tls;      /* TLS to the backends, or NULL */
    const hx_conf_node *node;
    /* panic_entries as handed to the next generation (as hx_backend.handed;
     * main thread, runtime/state.c) */
    int panic_handed;
    uint64_t panic_handed_at;
} hx_upstream;

enum { HX_PROTO_HTTP1 = 0, HX_PROTO_H2 = 1 };

enum {
    HX_RETRY_CONNECT = 1u << 0, /* connect failed: nothing was sent */
    HX_RETRY_RESET = 1u << 1,   /* reset/closed before any response byte */
    HX_RETRY_TIMEOUT = 1u << 2, /* no response head within the per-try timeout */
    HX_RETRY_502 = 1u << 3,
    HX_RETRY_503 = 1u << 4,
    HX_RETRY_504 = 1u << 5,
};

enum { HX_PATH_ANY = 0, HX_PATH_EXACT, HX_PATH_PREFIX };

typedef struct hx_route {
    char *name;
    /* host: NULL = any; "*.example.com" stored as suffix ".example.com" */
    char *host;
    int host_wildcard;
    int path_kind;
    char *path;
    size_t path_len;
    char **methods; /* NULL = any; else NULL-terminated, upper-case */
    hx_upstream *upstream;    /* proxy target; with a handler: its subrequests' default */
    hx_instance *handler;     /* answers the route when set */
    hx_instance **filters;    /* global chain then the route's own */
    size_t nfilters;
    const hx_conf_node *node;
} hx_route;

/* HTTP/2 settings and defenses (top-level `http2:`). */
typedef struct hx_h2_conf {
    uint32_t max_concurrent_streams;
    uint32_t initial_window_size;
    uint32_t header_table_size;
    unsigned max_control_frames; /* per second, per connection */
    unsigned max_resets;         /* streams reset by the client, per second */
    unsigned max_continuations;  /* CONTINUATION frames per header block */
    uint64_t settings_timeout_ms;
} hx_h2_conf;

typedef struct hx_listener_conf {
    char *name;
    char *address; /* as written */
    hx_addr addr;
    unsigned max_connections; /* per worker */
    int backlog;
    struct hx_tls *tls;       /* TLS termination, or NULL (owned by the generation) */
    int h2c;                  /* HTTP/2 with prior knowledge on a clear-text listener */
    int dispatch;             /* HX_DISPATCH_*: which worker serves an accepted connection */
    const hx_conf_node *node;
} hx_listener_conf;

/* Listener `dispatch:` (event/worker.c, docs/decisions.md D62). REUSEPORT:
 * the worker whose SO_REUSEPORT socket the kernel picked serves it; the
 * others: that worker hands the descriptor to the chosen one. */
enum {
    HX_DISPATCH_REUSEPORT = 0,
    HX_DISPATCH_ROUND_ROBIN,
    HX_DISPATCH_LEAST_LOADED,
    HX_DISPATCH_POWER_OF_TWO,
};
#define HX_DISPATCH_DEFAULT HX_DISPATCH_REUSEPORT

typedef struct hx_timeouts {
    uint64_t client_header_ms; /* whole request head (slowloris) */
    uint64_t client_body_ms;   /* between request body reads */
    uint64_t keepalive_ms;     /* idle between requests */
    uint64_t client_write_ms;  /* between progress writing to client */
    uint64_t request_ms;       /* whole request, 0 = off */
    uint64_t shutdown_ms;      /* graceful stop */
    uint64_t tunnel_idle_ms;   /* a tunnel with no byte either way is closed */
} hx_timeouts;

typedef struct hx_limits {
    uint64_t max_request_line;  /* 414 above */
    uint64_t max_header_size;   /* 431 above (all header lines) */
    unsigned max_headers;       /* 431 above */
    uint64_t max_body_buffer;   /* per-direction buffering before backpressure */
    uint64_t max_request_body;  /* 413 above; 0 = no limit */
    uint64_t max_held_body;     /* cap of a filter's req_body_hold (413 above) */
} hx_limits;

enum { HX_LOG_FMT_TEXT = 0, HX_LOG_FMT_JSON = 1 };

typedef struct hx_logging {
    int level;             /* HELIOS_LOG_* */
    char *error_log;       /* NULL = stderr */
    int error_format;      /* HX_LOG_FMT_* */
    int access_enabled;
    char *access_log;      /* NULL = stdout */
    int access_format;     /* HX_LOG_FMT_* */
} hx_logging;

/* Process settings: read at start, a reload keeps the first ones (main.c). */
typedef struct hx_process_conf {
    char *user;     /* `user:` as written; NULL: keep the starting user */
    char *group;    /* `group:`; NULL: the user's primary group */
    uid_t uid;      /* resolved when user is set */
    gid_t gid;      /* resolved when user or group is set */
    char *pid_file; /* absolute; NULL: none */
    /* `state_file:`: where admin changes persist (runtime/state.c); absolute,
     * NULL: the default location; state_off: `state_file: off` */
    char *state_file;
    int state_off;
} hx_process_conf;

typedef struct hx_gen {
    unsigned id;
    _Atomic long refs;
    hx_conf_tree *tree;
    unsigned workers;
    int io_uring; /* io: uring (D75); fixed at start, like workers */
    char *module_dir; /* effective: -m, else module_path, else default */

    hx_instance **instances; /* every instance; slot = index */
    size_t ninstances;
    hx_instance **global; /* the `modules:` chain, in order */
    size_t nglobal;

    hx_listener_conf *listeners;
    size_t nlisteners;
    hx_upstream **upstreams;
    size_t nupstreams;
    hx_route *routes;
    size_t nroutes;

    hx_cidr *trusted;
    size_t ntrusted;

    hx_timeouts timeouts;
    hx_limits limits;
    hx_h2_conf http2;
    hx_logging logging;
    hx_process_conf process;
} hx_gen;

/*
 * Reads PATH (directory or file), validates it and creates every module
 * instance. MODULE_DIR_OVERRIDE (-m) wins over `module_path`, which wins
 * over DEFAULT_MODULE_DIR. Returns NULL when anything is wrong; then *TREE
 * holds the error list (caller frees the tree). On success the generation
 * owns the tree and *TREE is NULL. refs starts at 1.
 */
hx_gen *hx_gen_build(const char *path, const char *module_dir_override,
                     const char *default_module_dir, hx_modreg *reg, hx_conf_tree **tree);

void hx_gen_ref(hx_gen *g);
/* Drops a reference; the last one frees the generation (main thread only:
 * workers hand their last reference back through the main loop). */
void hx_gen_unref(hx_gen *g);

/* FN runs on the main thread as a generation is freed, before its parts
 * go: the runtime adds to the running generation what the old one counted
 * after a reload handed its counters over (runtime/state.c). Set once by
 * hx_runtime_wire. */
void hx_gen_set_free_hook(void (*fn)(hx_gen *g));

hx_upstream *hx_gen_upstream(const hx_gen *g, const char *name);

/* The pid_file the configuration at PATH names, absolute (a relative one
 * is relative to the file that names it), without building a generation:
 * for `heliosd -s`. Returns a malloc'ed path, or NULL with the reason in
 * ERR (no pid_file, or the configuration cannot be read). */
char *hx_config_pid_file(const char *path, char *err, size_t errlen);

#endif
