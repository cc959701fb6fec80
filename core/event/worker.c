/*
 * worker.c - worker threads, their listening sockets, generation switches
 * and the post queue.
 *
 * Listening sockets are opened by the main thread (so a reload that cannot
 * bind fails before anything changes) and handed to workers, one
 * SO_REUSEPORT socket per listener per worker: the kernel spreads accepts,
 * no worker ever waits on another.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "event/worker.h"
#include "event/uring.h"

#include "base/log.h"

hx_server hx_srv;

static _Thread_local hx_worker *self;
static hx_worker_hooks hooks;

void hx_worker_set_hooks(const hx_worker_hooks *h) { hooks = *h; }

hx_worker *hx_worker_self(void) { return self; }

/* ------------------------------------------------------------------ */
/* post queue                                                          */

int hx_worker_post(hx_worker *w, void (*fn)(void *), void *arg)
{
    hx_task *t = malloc(sizeof(*t));
    if (t == NULL)
        return -1;
    t->fn = fn;
    t->arg = arg;
    t->next = NULL;
    pthread_mutex_lock(&w->qlock);
    if (w->closed) {
        pthread_mutex_unlock(&w->qlock);
        free(t);
        return -1;
    }
    if (w->qtail)
        w->qtail->next = t;
    else
        w->qhead = t;
    w->qtail = t;
    pthread_mutex_unlock(&w->qlock);
    ev_async_send(w->loop, &w->async);
    return 0;
}

static void async_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    hx_worker *w = a->data;
    pthread_mutex_lock(&w->qlock);
    hx_task *t = w->qhead;
    w->qhead = w->qtail = NULL;
    pthread_mutex_unlock(&w->qlock);
    while (t) {
        hx_task *next = t->next;
        t->fn(t->arg);
        free(t);
        t = next;
    }
}

/* ------------------------------------------------------------------ */
/* generations                                                         */

static void gc_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)a;
    (void)revents;
    pthread_mutex_lock(&hx_srv.gc_lock);
    hx_gen **list = hx_srv.gc_list;
    size_t n = hx_srv.gc_n;
    hx_srv.gc_list = NULL;
    hx_srv.gc_n = hx_srv.gc_cap = 0;
    pthread_mutex_unlock(&hx_srv.gc_lock);
    for (size_t i = 0; i < n; i++)
        hx_gen_unref(list[i]);
    free(list);
}

void hx_gen_release(hx_gen *g)
{
    /* module config_free must run on the main thread: always hand over */
    pthread_mutex_lock(&hx_srv.gc_lock);
    if (hx_srv.gc_n == hx_srv.gc_cap) {
        size_t cap = hx_srv.gc_cap ? hx_srv.gc_cap * 2 : 8;
        hx_gen **v = realloc(hx_srv.gc_list, cap * sizeof(*v));
        if (v == NULL) {
            pthread_mutex_unlock(&hx_srv.gc_lock);
            hx_error("out of memory releasing generation %u (leaked)", g->id);
            return;
        }
        hx_srv.gc_list = v;
        hx_srv.gc_cap = cap;
    }
    hx_srv.gc_list[hx_srv.gc_n++] = g;
    pthread_mutex_unlock(&hx_srv.gc_lock);
    ev_async_send(hx_srv.loop, &hx_srv.gc_async);
}

static void wgen_fini(hx_wgen *v)
{
    hx_gen *g = v->gen;
    hx_worker *w = v->w;
    for (size_t i = g->ninstances; i-- > 0;) {
        const hx_instance *inst = g->instances[i];
        if (inst->mod->desc->worker_fini && v->wstates[i] != (void *)-1)
            inst->mod->desc->worker_fini(inst->cfg, (helios_worker *)w, v->wstates[i]);
    }
    for (size_t i = v->nextra; i-- > 0;) {
        hx_instance *inst = v->extra[i].inst;
        if (inst->mod->desc->worker_fini)
            inst->mod->desc->worker_fini(inst->cfg, (helios_worker *)w, v->extra[i].ws);
    }
    free(v->extra);
    free(v->bal);
    free(v->bal_ws);
    hooks.gen_close(w, g);
    hx_wgen **pp = &w->draining;
    while (*pp && *pp != v)
        pp = &(*pp)->next;
    if (*pp)
        *pp = v->next;
    free(v->wstates);
    free(v);
    hx_gen_release(g);
}

void hx_wgen_ref(hx_wgen *v) { v->refs++; }

void hx_wgen_unref(hx_wgen *v)
{
    if (--v->refs == 0 && !v->current)
        wgen_fini(v);
}

void hx_wgen_adopt_balancer(hx_wgen *v, size_t i, hx_instance *rt)
{
    void *ws = NULL;
    if (rt->mod->desc->worker_init &&
        rt->mod->desc->worker_init(rt->cfg, (helios_worker *)v->w, &ws) != 0) {
        hx_error("worker %u: balancer %s: worker_init failed; keeping %s", v->w->id,
                 rt->mod->name, v->bal[i]->mod->name);
        return;
    }
    struct hx_wextra *e = realloc(v->extra, (v->nextra + 1) * sizeof(*e));
    if (e == NULL) {
        if (rt->mod->desc->worker_fini)
            rt->mod->desc->worker_fini(rt->cfg, (helios_worker *)v->w, ws);
        return;
    }
    v->extra = e;
    v->extra[v->nextra++] = (struct hx_wextra){rt, ws};
    v->bal[i] = rt;
    v->bal_ws[i] = ws;
}

static hx_wgen *wgen_new(hx_worker *w, hx_gen *g)
{
    hx_wgen *v = calloc(1, sizeof(*v));
    if (v == NULL)
        return NULL;
    v->gen = g;
    v->w = w;
    v->wstates = calloc(g->ninstances + 1, sizeof(void *));
    v->bal = calloc(g->nupstreams + 1, sizeof(*v->bal));
    v->bal_ws = calloc(g->nupstreams + 1, sizeof(*v->bal_ws));
    if (v->wstates == NULL || v->bal == NULL || v->bal_ws == NULL) {
        free(v->wstates);
        free(v->bal);
        free(v->bal_ws);
        free(v);
        return NULL;
    }
    for (size_t i = 0; i < g->ninstances; i++) {
        const hx_instance *inst = g->instances[i];
        if (inst->mod->desc->worker_init &&
            inst->mod->desc->worker_init(inst->cfg, (helios_worker *)w, &v->wstates[i]) != 0) {
            hx_error("worker %u: module %s: worker_init failed; this worker answers 503 "
                     "for generation %u",
                     w->id, inst->mod->name, g->id);
            v->wstates[i] = (void *)-1; /* no worker_fini for it */
            v->broken = inst->mod->name;
        }
    }
    for (size_t i = 0; i < g->nupstreams; i++) {
        v->bal[i] = g->upstreams[i]->balancer;
        v->bal_ws[i] = v->wstates[v->bal[i]->slot];
        /* a balancer switched in before the generation went live (persisted
         * admin changes, runtime/state.c): this worker's state for it */
        hx_instance *rt = atomic_load(&g->upstreams[i]->balancer_rt);
        if (rt != NULL)
            hx_wgen_adopt_balancer(v, i, rt);
    }
    return v;
}

int hx_worker_attach(hx_worker *w, hx_gen *g)
{
    hx_wgen *v = wgen_new(w, g);
    if (v == NULL)
        return -1;
    hx_gen_ref(g);
    v->current = 1;
    w->wgen = v;
    self = w;
    return 0;
}

/* ------------------------------------------------------------------ */
/* listening sockets                                                   */

typedef struct hx_lfd {
    char *key;
    hx_listener_conf conf;
    int *fds; /* per worker */
    struct hx_lfd *next;
} hx_lfd;

static hx_lfd *listen_set;

static int open_listener(const hx_listener_conf *lc, char *err, size_t errlen)
{
    const hx_addr *a = &lc->addr;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (a->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0) {
        int e = errno;
        snprintf(err, errlen, "bind %s: %s%s", lc->address, strerror(e),
                 e == EACCES ? " (a port below 1024 needs root or CAP_NET_BIND_SERVICE: start "
                               "heliosd as root with user: in the configuration, or give it the "
                               "capability, as the systemd unit does)"
                             : "");
        close(fd);
        return -1;
    }
    if (listen(fd, lc->backlog > 0 ? lc->backlog : 511) != 0) {
        snprintf(err, errlen, "listen %s: %s", lc->address, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static hx_lfd *lfd_find(hx_lfd *set, const char *key)
{
    for (hx_lfd *l = set; l; l = l->next)
        if (strcmp(l->key, key) == 0)
            return l;
    return NULL;
}

static void lfd_free(hx_lfd *l, int close_fds)
{
    if (close_fds)
        for (unsigned i = 0; i < hx_srv.nworkers; i++)
            if (l->fds[i] >= 0)
                close(l->fds[i]);
    free(l->key);
    free(l->fds);
    free(l);
}

/* Sockets handed over by the heliosd this one replaces (binary upgrade). */
typedef struct hx_inherited {
    char *key;
    int *fds;
    unsigned n, used;
    struct hx_inherited *next;
} hx_inherited;

static hx_inherited *inherited;

static int is_listening_socket(int fd)
{
    int on = 0;
    socklen_t len = sizeof(on);
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on;
}

int hx_listeners_inherit(const char *text)
{
    int taken = 0;
    while (text && *text) {
        const char *end = strchr(text, ';'), *eq = strchr(text, '=');
        if (end == NULL)
            end = text + strlen(text);
        if (eq == NULL || eq > end)
            break;
        hx_inherited *h = calloc(1, sizeof(*h));
        if (h == NULL || (h->key = strndup(text, (size_t)(eq - text))) == NULL ||
            (h->fds = calloc((size_t)(end - eq), sizeof(int))) == NULL) {
            if (h)
                free(h->key);
            free(h);
            break;
        }
        for (const char *p = eq + 1; p < end;) {
            char *next;
            long fd = strtol(p, &next, 10);
            if (next == p)
                break;
            if (fd >= 0 && fd < INT_MAX && is_listening_socket((int)fd)) {
                fcntl((int)fd, F_SETFD, FD_CLOEXEC);
                h->fds[h->n++] = (int)fd;
                taken++;
            }
            p = *next == ',' ? next + 1 : next;
        }
        h->next = inherited;
        inherited = h;
        text = *end ? end + 1 : end;
    }
    return taken;
}

/* The next unused inherited socket for KEY, or -1. */
static int inherited_take(const char *key)
{
    for (hx_inherited *h = inherited; h; h = h->next)
        if (strcmp(h->key, key) == 0 && h->used < h->n)
            return h->fds[h->used++];
    return -1;
}

void hx_listeners_inherited_close(void)
{
    while (inherited) {
        hx_inherited *h = inherited;
        inherited = h->next;
        if (h->used < h->n)
            hx_warn("binary upgrade: %u inherited socket(s) for %s not used by this "
                    "configuration: closed (connections queued on them are lost)",
                    h->n - h->used, h->key);
        for (unsigned i = h->used; i < h->n; i++)
            close(h->fds[i]);
        free(h->key);
        free(h->fds);
        free(h);
    }
}

int hx_listeners_export(char *buf, size_t len, int *fds, size_t maxfds)
{
    size_t used = 0, n = 0;
    buf[0] = '\0';
    for (hx_lfd *l = listen_set; l; l = l->next) {
        int k = snprintf(buf + used, len - used, "%s%s=", used ? ";" : "", l->key);
        if (k < 0 || (size_t)k >= len - used)
            return -1;
        used += (size_t)k;
        for (unsigned w = 0; w < hx_srv.nworkers; w++) {
            if (n == maxfds)
                return -1;
            fds[n++] = l->fds[w];
            k = snprintf(buf + used, len - used, "%s%d", w ? "," : "", l->fds[w]);
            if (k < 0 || (size_t)k >= len - used)
                return -1;
            used += (size_t)k;
        }
    }
    return (int)n;
}

/* Opens what G needs that is not open yet (or takes it from the heliosd
 * this one replaces). New set in *OUT; 0 or -1. */
static int listeners_prepare(hx_gen *g, hx_lfd **out)
{
    hx_lfd *set = NULL;
    for (size_t i = 0; i < g->nlisteners; i++) {
        const hx_listener_conf *lc = &g->listeners[i];
        char key[80];
        hx_addr_str(&lc->addr, key, sizeof(key));
        hx_lfd *old = lfd_find(listen_set, key);
        hx_lfd *l = calloc(1, sizeof(*l));
        if (l == NULL)
            goto fail;
        l->key = strdup(key);
        l->fds = malloc(hx_srv.nworkers * sizeof(int));
        l->conf = *lc;
        l->next = set;
        set = l;
        if (l->key == NULL || l->fds == NULL)
            goto fail;
        for (unsigned w = 0; w < hx_srv.nworkers; w++) {
            if (old) {
                l->fds[w] = old->fds[w];
                continue;
            }
            if ((l->fds[w] = inherited_take(key)) >= 0)
                continue;
            char err[512];
            l->fds[w] = open_listener(lc, err, sizeof(err));
            if (l->fds[w] < 0) {
                hx_error("listener %s: %s", lc->name ? lc->name : key, err);
                for (unsigned k = w + 1; k < hx_srv.nworkers; k++)
                    l->fds[k] = -1;
                goto fail;
            }
        }
    }
    *out = set;
    return 0;
fail:
    while (set) {
        hx_lfd *next = set->next;
        /* close only sockets opened here, not those shared with the old set */
        int shared = lfd_find(listen_set, set->key) != NULL;
        lfd_free(set, !shared);
        set = next;
    }
    return -1;
}

/* ------------------------------------------------------------------ */
/* accepting                                                           */

/* A complete 503, then close: the client learns why, nothing is read. */
static void refuse(int fd)
{
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                               "Content-Length: 24\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                               "503 Service Unavailable\n";
    ssize_t n = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
    close(fd);
}

/* LS's worker (this thread) serves FD, or refuses it at the cap. */
static void accept_here(hx_lsock *ls, int fd, const struct sockaddr *sa, socklen_t len)
{
    if (ls->nconns >= ls->conf.max_connections || ls->w->stopping) {
        refuse(fd);
        HX_STAT_ADD(ls->w, refused, 1);
        hx_warn("listener %s: connection refused: %u connections on worker %u (max %u)", ls->key,
                ls->nconns, ls->w->id, ls->conf.max_connections);
        return;
    }
    hooks.accept(ls, fd, sa, len);
}

/*
 * Dispatch policies other than reuseport (D62): the worker that accepted
 * picks the worker that serves and, when that is another one, hands it the
 * descriptor through its post queue. A worker's load is its open client
 * connections plus those handed to it and not yet taken.
 */
static _Atomic unsigned rr_next;

static unsigned worker_load(hx_worker *w)
{
    return (unsigned)atomic_load_explicit(&w->stats.active, memory_order_relaxed) +
           atomic_load_explicit(&w->handoffs_pending, memory_order_relaxed);
}

static hx_worker *pick_worker(hx_lsock *ls)
{
    static _Thread_local uint32_t rnd;
    unsigned n = hx_srv.nworkers;
    hx_worker *ws = hx_srv.workers, *me = ls->w;
    switch (ls->conf.dispatch) {
    case HX_DISPATCH_ROUND_ROBIN:
        return &ws[atomic_fetch_add_explicit(&rr_next, 1, memory_order_relaxed) % n];
    case HX_DISPATCH_LEAST_LOADED: {
        /* on a tie, this worker: no hand-off for nothing */
        hx_worker *best = me;
        unsigned best_load = worker_load(me);
        for (unsigned i = 0; i < n; i++) {
            unsigned l = worker_load(&ws[i]);
            if (l < best_load) {
                best = &ws[i];
                best_load = l;
            }
        }
        return best;
    }
    case HX_DISPATCH_POWER_OF_TWO: {
        if (rnd == 0)
            rnd = (me->id + 1) * 2654435761u ^ (uint32_t)time(NULL);
        /* xorshift32: two distinct workers, the less loaded; this one on a tie */
        rnd ^= rnd << 13;
        rnd ^= rnd >> 17;
        rnd ^= rnd << 5;
        unsigned a = rnd % n, b = (rnd / n) % (n - 1);
        if (b >= a)
            b++;
        unsigned la = worker_load(&ws[a]), lb = worker_load(&ws[b]);
        if (la == lb && (&ws[b] == me))
            return me;
        return lb < la ? &ws[b] : &ws[a];
    }
    default: return me;
    }
}

typedef struct handoff_msg {
    hx_worker *to;
    int fd;
    socklen_t len;
    struct sockaddr_storage ss;
    char key[80]; /* the listener, as hx_lsock.key */
} handoff_msg;

/* Worker thread of M->to: serve a connection another worker accepted. */
static void handoff_task(void *arg)
{
    handoff_msg *m = arg;
    hx_worker *w = m->to;
    hx_lsock *ls = w->lsocks;
    while (ls && (ls->fd < 0 || strcmp(ls->key, m->key) != 0))
        ls = ls->next;
    if (ls)
        accept_here(ls, m->fd, (const struct sockaddr *)&m->ss, m->len);
    else
        refuse(m->fd); /* stopping, or a reload closed the listener meanwhile */
    atomic_fetch_sub_explicit(&w->handoffs_pending, 1, memory_order_relaxed);
    free(m);
}

/* 0 when TO took FD, -1 when this worker must serve it. */
static int handoff(hx_worker *to, hx_lsock *ls, int fd, const struct sockaddr_storage *ss,
                   socklen_t len)
{
    handoff_msg *m = malloc(sizeof(*m));
    if (m == NULL)
        return -1;
    m->to = to;
    m->fd = fd;
    m->len = len;
    memcpy(&m->ss, ss, len);
    snprintf(m->key, sizeof(m->key), "%s", ls->key);
    atomic_fetch_add_explicit(&to->handoffs_pending, 1, memory_order_relaxed);
    if (hx_worker_post(to, handoff_task, m) != 0) {
        atomic_fetch_sub_explicit(&to->handoffs_pending, 1, memory_order_relaxed);
        free(m);
        return -1;
    }
    return 0;
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    hx_lsock *ls = io->data;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(ls->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE)
                hx_error("accept on %s: %s", ls->key, strerror(errno));
            return;
        }
        if (ls->conf.dispatch != HX_DISPATCH_REUSEPORT && hx_srv.nworkers > 1 && !ls->w->stopping) {
            hx_worker *to = pick_worker(ls);
            if (to != ls->w && handoff(to, ls, fd, &ss, len) == 0)
                continue;
        }
        accept_here(ls, fd, (struct sockaddr *)&ss, len);
    }
}

typedef struct switch_msg {
    hx_worker *w;
    hx_gen *gen;
    int nfds;
    int *fds;
    hx_listener_conf *confs;
    char **keys;
} switch_msg;

static void lsock_stop(hx_worker *w, hx_lsock *ls, int close_fd)
{
    ev_io_stop(w->loop, &ls->io);
    if (close_fd)
        close(ls->fd);
    ls->fd = -1;
}

static void free_lsock(hx_lsock *ls)
{
    free(ls->key);
    free(ls);
}

/* Worker thread: adopt a generation and its listening sockets. */
static void switch_task(void *arg)
{
    switch_msg *m = arg;
    hx_worker *w = m->w;
    hx_wgen *v = wgen_new(w, m->gen);
    if (v == NULL) {
        hx_error("worker %u: out of memory switching to generation %u", w->id, m->gen->id);
        hx_gen_release(m->gen);
    } else {
        v->current = 1;
        hx_wgen *old = w->wgen;
        w->wgen = v;
        if (old) {
            old->current = 0;
            if (old->refs == 0) {
                old->next = NULL;
                wgen_fini(old);
            } else {
                old->next = w->draining;
                w->draining = old;
            }
        }
    }
    /* listeners: keep the ones still wanted, close the rest, start new */
    hx_lsock **pp = &w->lsocks;
    while (*pp) {
        hx_lsock *ls = *pp;
        int keep = -1;
        for (int i = 0; i < m->nfds; i++)
            if (m->fds[i] == ls->fd)
                keep = i;
        if (keep < 0) {
            lsock_stop(w, ls, 1);
            /* connections still point at it: it is freed with the worker */
            ls->conf.max_connections = 0;
            pp = &ls->next;
            continue;
        }
        ls->conf = m->confs[keep];
        m->fds[keep] = -1; /* handled */
        pp = &ls->next;
    }
    for (int i = 0; i < m->nfds; i++) {
        if (m->fds[i] < 0)
            continue;
        hx_lsock *ls = calloc(1, sizeof(*ls));
        if (ls == NULL) {
            close(m->fds[i]);
            continue;
        }
        ls->fd = m->fds[i];
        ls->key = m->keys[i];
        m->keys[i] = NULL;
        ls->conf = m->confs[i];
        ls->w = w;
        ev_io_init(&ls->io, accept_cb, ls->fd, EV_READ);
        ls->io.data = ls;
        if (!w->stopping)
            ev_io_start(w->loop, &ls->io);
        ls->next = w->lsocks;
        w->lsocks = ls;
    }
    for (int i = 0; i < m->nfds; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->fds);
    free(m->confs);
    free(m);
}

/* Main thread: send G and the listening set to every worker. */
static int dispatch(hx_gen *g, hx_lfd *set)
{
    for (unsigned i = 0; i < hx_srv.nworkers; i++) {
        hx_worker *w = &hx_srv.workers[i];
        switch_msg *m = calloc(1, sizeof(*m));
        size_t n = 0;
        for (hx_lfd *l = set; l; l = l->next)
            n++;
        if (m == NULL)
            return -1;
        m->w = w;
        m->gen = g;
        m->nfds = (int)n;
        m->fds = calloc(n + 1, sizeof(int));
        m->confs = calloc(n + 1, sizeof(hx_listener_conf));
        m->keys = calloc(n + 1, sizeof(char *));
        int k = 0;
        for (hx_lfd *l = set; l; l = l->next, k++) {
            m->fds[k] = l->fds[i];
            m->confs[k] = l->conf;
            m->confs[k].name = NULL; /* strings belong to the generation */
            m->confs[k].address = NULL;
            m->keys[k] = strdup(l->key);
        }
        hx_gen_ref(g);
        if (hx_worker_post(w, switch_task, m) != 0) {
            hx_gen_unref(g);
            free(m->fds);
            free(m->confs);
            for (int j = 0; j < k; j++)
                free(m->keys[j]);
            free(m->keys);
            free(m);
        }
    }
    return 0;
}

static void setup_pools(hx_gen *g)
{
    for (size_t i = 0; i < g->nupstreams; i++) {
        hx_backends *bs = atomic_load(&g->upstreams[i]->backends);
        for (size_t j = 0; bs && j < bs->n; j++)
            hooks.backend_init(bs->v[j], hx_srv.nworkers);
    }
}

/* ------------------------------------------------------------------ */
/* threads                                                             */

static int want_uring; /* io: uring at start (a reload keeps the start's) */

static void *worker_main(void *arg)
{
    hx_worker *w = arg;
    self = w;
    /* "heliosd-w0", ...: per-thread CPU by name in top -H and the benchmarks */
    char name[16];
    snprintf(name, sizeof(name), "heliosd-w%u", w->id % 100000u);
    pthread_setname_np(pthread_self(), name);
    if (want_uring)
        w->uring = hx_uring_start(w->loop, w->id) == 0;
    ev_run(w->loop, 0);
    if (w->uring)
        hx_uring_stop();
    w->uring = 0;
    return NULL;
}

int hx_workers_start(hx_gen *g)
{
    hx_lfd *set;
    hx_srv.nworkers = g->workers;
    want_uring = g->io_uring;
    /* aligned: each worker's counters sit on cache lines of their own */
    hx_srv.workers = aligned_alloc(_Alignof(hx_worker), g->workers * sizeof(hx_worker));
    if (hx_srv.workers == NULL)
        return -1;
    memset(hx_srv.workers, 0, g->workers * sizeof(hx_worker));
    if (listeners_prepare(g, &set) != 0)
        return -1;
    setup_pools(g);
    for (unsigned i = 0; i < g->workers; i++) {
        hx_worker *w = &hx_srv.workers[i];
        w->id = i;
        w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
        if (w->loop == NULL) {
            hx_error("cannot create event loop for worker %u", i);
            return -1;
        }
        pthread_mutex_init(&w->qlock, NULL);
        ev_async_init(&w->async, async_cb);
        w->async.data = w;
        ev_async_start(w->loop, &w->async);
    }
    if (dispatch(g, set) != 0)
        return -1;
    listen_set = set;
    for (unsigned i = 0; i < g->workers; i++) {
        hx_worker *w = &hx_srv.workers[i];
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            hx_error("cannot start worker thread %u", i);
            return -1;
        }
        w->started = 1;
    }
    return 0;
}

int hx_workers_switch(hx_gen *g)
{
    if (g->workers != hx_srv.nworkers)
        hx_warn("workers: %u in the new configuration; a reload keeps %u (restart to change)",
                g->workers, hx_srv.nworkers);
    if (g->io_uring != want_uring)
        hx_warn("io: %s in the new configuration; a reload keeps %s (restart to change)",
                g->io_uring ? "uring" : "epoll", want_uring ? "uring" : "epoll");
    hx_lfd *set;
    if (listeners_prepare(g, &set) != 0)
        return -1;
    setup_pools(g);
    dispatch(g, set);
    /* sockets not carried over are closed by the workers (their lsock);
     * here only the bookkeeping goes */
    hx_lfd *old = listen_set;
    while (old) {
        hx_lfd *next = old->next;
        lfd_free(old, 0);
        old = next;
    }
    listen_set = set;
    return 0;
}

static void maybe_exit(hx_worker *w)
{
    if (w->stopping && w->conns == NULL)
        ev_break(w->loop, EVBREAK_ALL);
}

void hx_worker_conn_gone(hx_worker *w) { maybe_exit(w); }

static void stop_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    hx_worker *w = t->data;
    hx_warn("worker %u: shutdown timeout, closing %u connection(s)", w->id, w->nconns);
    ev_break(loop, EVBREAK_ALL);
}

typedef struct stop_msg {
    hx_worker *w;
    uint64_t timeout_ms;
} stop_msg;

static void stop_task(void *arg)
{
    stop_msg *m = arg;
    hx_worker *w = m->w;
    w->stopping = 1;
    for (hx_lsock *ls = w->lsocks; ls; ls = ls->next)
        if (ls->fd >= 0)
            lsock_stop(w, ls, 1);
    ev_timer_init(&w->stop_timer, stop_timeout_cb, m->timeout_ms / 1000.0, 0.);
    w->stop_timer.data = w;
    ev_timer_start(w->loop, &w->stop_timer);
    ev_unref(w->loop); /* the stop timer alone must not keep the loop up */
    hooks.conns_shutdown(w);
    free(m);
    maybe_exit(w);
}

void hx_workers_stop(uint64_t timeout_ms)
{
    if (hx_srv.workers == NULL)
        return;
    /* a start that failed early (a listener could not bind) left workers
     * without a loop: only those that got one have anything to undo */
    for (unsigned i = 0; i < hx_srv.nworkers; i++) {
        if (hx_srv.workers[i].loop == NULL)
            continue;
        stop_msg *m = malloc(sizeof(*m));
        if (m == NULL)
            continue;
        m->w = &hx_srv.workers[i];
        m->timeout_ms = timeout_ms;
        if (hx_worker_post(m->w, stop_task, m) != 0)
            free(m);
    }
    for (unsigned i = 0; i < hx_srv.nworkers; i++) {
        hx_worker *w = &hx_srv.workers[i];
        if (!w->started)
            continue;
        pthread_join(w->thread, NULL);
        w->started = 0;
    }
    /* Threads are gone: tear down what they owned, on this thread. */
    for (unsigned i = 0; i < hx_srv.nworkers; i++) {
        hx_worker *w = &hx_srv.workers[i];
        if (w->loop == NULL)
            continue;
        self = w;
        pthread_mutex_lock(&w->qlock);
        w->closed = 1;
        hx_task *t = w->qhead;
        w->qhead = w->qtail = NULL;
        pthread_mutex_unlock(&w->qlock);
        while (t) { /* run late tasks so their payloads are freed */
            hx_task *next = t->next;
            t->fn(t->arg);
            free(t);
            t = next;
        }
        hooks.conns_kill(w);
        if (w->wgen) {
            hx_wgen *v = w->wgen;
            w->wgen = NULL;
            v->current = 0;
            if (v->refs == 0)
                wgen_fini(v);
        }
        while (w->draining) {
            hx_wgen *v = w->draining;
            w->draining = v->next;
            v->refs = 0;
            v->next = NULL;
            wgen_fini(v);
        }
        while (w->lsocks) {
            hx_lsock *ls = w->lsocks;
            w->lsocks = ls->next;
            if (ls->fd >= 0)
                close(ls->fd);
            free_lsock(ls);
        }
        ev_async_stop(w->loop, &w->async);
        ev_timer_stop(w->loop, &w->stop_timer);
        ev_loop_destroy(w->loop);
        hx_blockcache_drain(&w->conn_bufs);
        hx_blockcache_drain(&w->conn_small);
        hx_blockcache_drain(&w->conn_reqs);
        pthread_mutex_destroy(&w->qlock);
        free(w->refs);
        w->refs = NULL;
        self = NULL;
    }
    while (listen_set) {
        hx_lfd *next = listen_set->next;
        lfd_free(listen_set, 0);
        listen_set = next;
    }
    free(hx_srv.workers);
    hx_srv.workers = NULL;
    hx_srv.nworkers = 0;
    /* generations handed back by workers */
    gc_cb(hx_srv.loop, &hx_srv.gc_async, 0);
}

void hx_server_init_main(struct ev_loop *loop)
{
    hx_srv.loop = loop;
    pthread_mutex_init(&hx_srv.gc_lock, NULL);
    ev_async_init(&hx_srv.gc_async, gc_cb);
    ev_async_start(loop, &hx_srv.gc_async);
}

const char *hx_worker_date(hx_worker *w)
{
    ev_tstamp now = ev_now(w->loop);
    if ((time_t)now != (time_t)w->date_at || w->date[0] == '\0') {
        time_t t = (time_t)now;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(w->date, sizeof(w->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        w->date_at = now;
    }
    return w->date;
}
