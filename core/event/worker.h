/*
 * worker.h - worker threads: one libev loop each, its own SO_REUSEPORT
 * listening sockets, connections, upstream pools and module state.
 *
 * Nothing here is shared between workers except through atomics on
 * generation and backend state, and the post queue (a mutex, off the
 * request path: it carries reloads, admin changes and module posts).
 */
#ifndef HX_WORKER_H
#define HX_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <sys/socket.h>

#include "base/blockcache.h"
#include "config/config.h"

typedef struct hx_worker hx_worker;
typedef struct hx_conn hx_conn;

/* A worker's view of one generation: its module state for every instance.
 * Requests and connections hold references; when the last one goes and the
 * worker moved on, worker_fini runs and the generation reference drops. */
typedef struct hx_wgen {
    hx_gen *gen;
    hx_worker *w;
    void **wstates; /* [gen->ninstances] */
    long refs;      /* worker-local */
    int current;
    const char *broken; /* a module's worker_init failed: 503 on this view */
    /* Balancer per upstream as this worker sees it: the configured one
     * until a runtime switch reaches this worker (control.c). */
    hx_instance **bal; /* [gen->nupstreams] */
    void **bal_ws;
    struct hx_wextra {
        hx_instance *inst;
        void *ws;
    } *extra; /* switched-in balancers' worker states, finalised with the view */
    size_t nextra;
    struct hx_wgen *next; /* worker's list of draining views */
} hx_wgen;

/* One listening socket of one worker. */
typedef struct hx_lsock {
    ev_io io;
    int fd;
    char *key; /* normalised address: listeners are matched by it on reload */
    hx_listener_conf conf; /* copied: the generation may go first */
    unsigned nconns;
    hx_worker *w;
    struct hx_lsock *next;
} hx_lsock;

typedef struct hx_task {
    void (*fn)(void *arg);
    void *arg;
    struct hx_task *next;
} hx_task;

/* Counters one worker keeps for api->core_stats: written only by the
 * worker (relaxed load + store, no read-modify-write), read by anyone. On
 * their own cache lines so a reader never bounces a worker's hot line. */
typedef struct hx_wstats {
    _Atomic uint64_t accepted, active, refused;
    _Atomic uint64_t requests, requests_active;
    _Atomic uint64_t bytes_in, bytes_out;
} hx_wstats;

#define HX_STAT_ADD(w, field, n)                                                          \
    atomic_store_explicit(&(w)->stats.field,                                              \
                          atomic_load_explicit(&(w)->stats.field, memory_order_relaxed) + \
                              (uint64_t)(n),                                              \
                          memory_order_relaxed)

struct hx_worker {
    _Alignas(64) hx_wstats stats;
    char stats_pad_[64];
    /* Connections other workers handed to this one (listener `dispatch:`)
     * and it has not taken yet: counted in its load so a burst of accepts
     * does not all pick the same worker. Written by any worker; on a line
     * of its own so the counters above stay the owner's. */
    _Alignas(64) _Atomic unsigned handoffs_pending;
    char handoff_pad_[60];
    unsigned id;
    struct ev_loop *loop;
    pthread_t thread;
    int started;
    int uring; /* io: uring and this worker's ring runs (event/uring.h) */

    ev_async async; /* wakes the loop for posted tasks */
    pthread_mutex_t qlock;
    hx_task *qhead, *qtail;
    int closed; /* no more posts accepted */

    hx_wgen *wgen;     /* current */
    hx_wgen *draining; /* older views still referenced */
    hx_lsock *lsocks;

    hx_conn *conns; /* every client connection, for shutdown */
    unsigned nconns;
    /* memory idle HTTP/1.x connections gave back (http1.c) */
    hx_blockcache conn_bufs;  /* I/O buffers */
    hx_blockcache conn_small; /* request-line and header-name/value buffers */
    hx_blockcache conn_reqs;  /* requests with their first arena block */
    int stopping;
    ev_timer stop_timer;

    /* per-second Date header cache */
    ev_tstamp date_at;
    char date[40];

    /* Request references (api->req_ref, http/request.c): slot I names a
     * live request while refs[I].gen matches the reference; a request's end
     * bumps gen and frees the slot, so a late reference misses without
     * reading the request. Worker-local; freed when the worker ends. */
    struct hx_refslot {
        void *req;     /* the hx_req, NULL while free */
        uint32_t gen;  /* bumped at every release */
        uint32_t next; /* free list: next free slot + 1, 0 ends */
    } *refs;
    uint32_t nrefs, caprefs; /* slots in use or freed; allocated */
    uint32_t free_ref;       /* free list head + 1, 0 when empty */

    /* ABI object for this worker (helios_worker is this struct) */
};

/* The process-wide state owned by the main thread. */
typedef struct hx_server {
    struct ev_loop *loop; /* main loop: signals, gen frees, services */
    hx_modreg modreg;
    hx_gen *gen; /* running generation */
    const char *conf_path;
    const char *module_override;
    const char *default_module_dir;
    hx_worker *workers;
    unsigned nworkers;
    ev_async gc_async; /* workers hand back generation refs */
    pthread_mutex_t gc_lock;
    hx_gen **gc_list;
    size_t gc_n, gc_cap;
    int stopping;
    unsigned reloads, reload_failures;
    uint64_t start_time; /* Unix seconds */
    _Atomic uint32_t gen_id; /* running generation, readable from any thread */
    /* ctl_reload: a service thread asks main to reload and waits */
    pthread_t main_thread;
    ev_async reload_async;
    pthread_mutex_t reload_lock;
    pthread_cond_t reload_cond;
    int reload_wanted, reload_done, reload_rc;
    int services_switching; /* main is stopping/starting services after a reload */
    uint32_t reload_gen;
    char reload_err[2048];
} hx_server;

extern hx_server hx_srv;

/*
 * What a worker calls in the layers above it (http/, proxy/): the runtime
 * fills these in before the workers start, so event/ names no function of
 * a higher layer. All run on the worker's thread (backend_init on main).
 */
typedef struct hx_worker_hooks {
    /* A new client connection on LS (http/conn.h). */
    void (*accept)(hx_lsock *ls, int fd, const struct sockaddr *sa, socklen_t salen);
    /* Graceful stop: W's idle connections close now, busy ones when done. */
    void (*conns_shutdown)(hx_worker *w);
    /* After the workers stopped (main thread): W's connections go now. */
    void (*conns_kill)(hx_worker *w);
    /* Per-worker upstream pools of a backend (proxy/upstream.h). */
    int (*backend_init)(hx_backend *b, unsigned nworkers);
    /* W lets go of generation G: close its pools of G's backends. */
    void (*gen_close)(hx_worker *w, hx_gen *g);
} hx_worker_hooks;

/* Main thread, before hx_workers_start. */
void hx_worker_set_hooks(const hx_worker_hooks *h);

/* Main thread, once: the process-wide state on the main LOOP. */
void hx_server_init_main(struct ev_loop *loop);

/* Main thread: starts N workers on generation G with its listening sockets
 * (opened by hx_listeners_open). Returns 0 or -1 with a log line. */
int hx_workers_start(hx_gen *g);
/* Main thread: hands G to every worker (reload). Listening sockets for new
 * addresses are opened first; on failure returns -1 and nothing changes. */
int hx_workers_switch(hx_gen *g);
/* Main thread: graceful stop; blocks until workers exit or TIMEOUT passes. */
void hx_workers_stop(uint64_t timeout_ms);

/* Tests and fuzzing (tests/fuzz): the calling thread runs W (zeroed, with
 * its loop) on G for the rest of the process, with no thread and no
 * listening socket of its own: W gets G's worker view (module worker
 * states) and hx_worker_self() is W. Connections come in through the
 * accept hook on the caller's hx_lsock. 0, or -1 when out of memory. */
int hx_worker_attach(hx_worker *w, hx_gen *g);

/*
 * Binary upgrade: listening sockets handed from one heliosd to the next.
 * The text is "ADDR=FD,FD,...;ADDR=..." (one FD per worker, ADDR as
 * hx_addr_str writes it), passed in the HELIOS_LISTEN_FDS environment
 * variable like nginx's NGINX variable.
 */
/* Main thread, before hx_workers_start: sockets to use instead of opening
 * new ones for these addresses. Returns how many were taken (descriptors
 * that are not listening sockets are ignored). */
int hx_listeners_inherit(const char *text);
/* Main thread, after hx_workers_start: closes inherited sockets the
 * configuration did not use. */
void hx_listeners_inherited_close(void);
/* Main thread: the running listening sockets as that text, and their
 * descriptors in FDS (at most MAXFDS). Returns the number of descriptors,
 * or -1 when BUF or FDS is too small. */
int hx_listeners_export(char *buf, size_t len, int *fds, size_t maxfds);

/* Any thread: runs FN(ARG) on W. 0, or -1 if W no longer takes tasks. */
int hx_worker_post(hx_worker *w, void (*fn)(void *), void *arg);
/* Worker thread: the worker running this thread, or NULL. */
hx_worker *hx_worker_self(void);

void hx_wgen_ref(hx_wgen *v);
void hx_wgen_unref(hx_wgen *v);
/* Worker thread: runs RT's worker_init for V and makes RT upstream I's
 * balancer in V (a runtime switch, or one made before V's generation went
 * live); on failure the balancer V had stays (logged). */
void hx_wgen_adopt_balancer(hx_wgen *v, size_t i, hx_instance *rt);

/* Drops a generation reference from any thread; the free happens on main. */
void hx_gen_release(hx_gen *g);

/* "Tue, 24 Nov 2026 10:00:00 GMT" for the worker's current second. */
const char *hx_worker_date(hx_worker *w);

/* A conn left; lets a stopping worker finish. */
void hx_worker_conn_gone(hx_worker *w);

#endif
