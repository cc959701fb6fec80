/*
 * control.c - runtime changes to upstreams (the host API's ctl_* calls).
 *
 * Nothing here is on the request path. One mutex serialises control calls
 * with each other and with reloads; workers never take it. Changes publish
 * new immutable objects with atomic stores (a new backend list, a flag on a
 * backend) or reach workers through their post queue (a balancer switch), so
 * a worker always sees either the old or the new state, never a torn one.
 * Whatever a change replaces stays allocated until the generation ends.
 */
#include "runtime/control.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/log.h"
#include "proxy/upstream.h"
#include "event/worker.h"
#include "runtime/state.h"

static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;

void hx_ctl_lock(void) { pthread_mutex_lock(&ctl_lock); }
void hx_ctl_unlock(void) { pthread_mutex_unlock(&ctl_lock); }

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static hx_upstream *find_upstream(const char *name, char *err, size_t errlen)
{
    if (hx_srv.gen == NULL) {
        fail(err, errlen, "heliosd is not running a configuration");
        return NULL;
    }
    hx_upstream *u = name ? hx_gen_upstream(hx_srv.gen, name) : NULL;
    if (u == NULL)
        fail(err, errlen, "no upstream named '%s'", name ? name : "(null)");
    return u;
}

static hx_backend *find_backend(hx_backends *bs, const char *name, size_t *idx)
{
    for (size_t i = 0; bs && i < bs->n; i++)
        if (strcmp(bs->v[i]->name, name) == 0) {
            if (idx)
                *idx = i;
            return bs->v[i];
        }
    return NULL;
}

static int push(void *arrp, size_t *n, void *item)
{
    void ***arr = arrp;
    void **v = realloc(*arr, (*n + 1) * sizeof(void *));
    if (v == NULL)
        return -1;
    v[(*n)++] = item;
    *arr = v;
    return 0;
}

/* Publishes NEW as U's list; the old one is retired, not freed. */
static int publish(hx_upstream *u, hx_backends *nb, char *err, size_t errlen)
{
    hx_backends *old = atomic_load(&u->backends);
    if (push(&u->retired, &u->nretired, old) != 0) {
        free(nb->v);
        free(nb);
        return fail(err, errlen, "out of memory");
    }
    const hx_instance *bal = atomic_load(&u->balancer_rt);
    if (bal == NULL)
        bal = u->balancer;
    if (bal->mod->balancer->backends_changed &&
        bal->mod->balancer->backends_changed(bal->cfg, (const helios_backends *)nb) != 0) {
        u->nretired--;
        free(nb->v);
        free(nb);
        return fail(err, errlen, "balancer %s refused the new backend list", bal->mod->name);
    }
    atomic_store(&u->backends, nb);
    return 0;
}

static hx_backends *copy_list(const hx_backends *bs, size_t extra)
{
    hx_backends *nb = calloc(1, sizeof(*nb));
    if (nb == NULL)
        return NULL;
    nb->v = calloc(bs->n + extra + 1, sizeof(hx_backend *));
    if (nb->v == NULL) {
        free(nb);
        return NULL;
    }
    memcpy(nb->v, bs->v, bs->n * sizeof(hx_backend *));
    nb->n = bs->n;
    return nb;
}

/* ---- the primitives: caller holds the lock; U belongs to G ---- */

static int live(const hx_gen *g) { return g == hx_srv.gen; }

int hx_ctl_do_add(hx_gen *g, hx_upstream *u, const char *name, const char *address,
                  uint32_t weight, char *err, size_t errlen)
{
    hx_backends *bs = atomic_load(&u->backends);
    if (name == NULL || *name == '\0' || strlen(name) > 255)
        return fail(err, errlen, "a backend needs a name of 1 to 255 characters");
    if (find_backend(bs, name, NULL))
        return fail(err, errlen, "upstream '%s' already has a backend named '%s'", u->name, name);
    if (weight < 1 || weight > 10000)
        return fail(err, errlen, "weight %u is not between 1 and 10000", weight);
    hx_addr addr;
    char aerr[256];
    if (address == NULL || hx_addr_parse(address, 1, &addr, aerr, sizeof(aerr)) != 0)
        return fail(err, errlen, "address '%s': %s", address ? address : "(null)",
                    address ? aerr : "missing");
    hx_backend *b = calloc(1, sizeof(*b));
    char abuf[80];
    if (b == NULL || (b->name = strdup(name)) == NULL ||
        (b->address = strdup(hx_addr_str(&addr, abuf, sizeof(abuf)))) == NULL ||
        /* a generation not yet live gets its pools when workers take it */
        (live(g) && hx_backend_pools_init(b, hx_srv.nworkers) != 0)) {
        if (b) {
            free(b->name);
            free(b->address);
            free(b);
        }
        return fail(err, errlen, "out of memory");
    }
    b->addr = addr;
    b->index = (unsigned)bs->n;
    atomic_init(&b->weight, weight);
    atomic_init(&b->healthy, 1);
    hx_backends *nb = copy_list(bs, 1);
    if (nb == NULL)
        fail(err, errlen, "out of memory");
    else
        nb->v[nb->n++] = b;
    if (nb == NULL || publish(u, nb, err, errlen) != 0) {
        free(b->pools);
        free(b->name);
        free(b->address);
        free(b);
        return -1;
    }
    hx_info("upstream %s: backend %s (%s, weight %u) added", u->name, name, b->address, weight);
    return 0;
}

typedef struct drain_msg {
    hx_worker *w;
    hx_gen *gen;
    hx_backend *b;
} drain_msg;

/* Worker: idle pooled connections to a removed backend go now. */
static void drain_task(void *arg)
{
    drain_msg *m = arg;
    hx_pool_drain_backend(m->w, m->b);
    hx_gen_release(m->gen);
    free(m);
}

int hx_ctl_do_remove(hx_gen *g, hx_upstream *u, const char *name, char *err, size_t errlen)
{
    hx_backends *bs = atomic_load(&u->backends);
    size_t idx;
    hx_backend *b = name ? find_backend(bs, name, &idx) : NULL;
    if (b == NULL)
        return fail(err, errlen, "upstream '%s' has no backend named '%s'", u->name,
                    name ? name : "(null)");
    hx_backends *nb = copy_list(bs, 0);
    if (nb == NULL || push(&u->removed, &u->nremoved, b) != 0) {
        if (nb) {
            free(nb->v);
            free(nb);
        }
        return fail(err, errlen, "out of memory");
    }
    memmove(&nb->v[idx], &nb->v[idx + 1], (nb->n - idx - 1) * sizeof(hx_backend *));
    nb->n--;
    atomic_store(&b->removed, 1);
    if (publish(u, nb, err, errlen) != 0) {
        u->nremoved--;
        atomic_store(&b->removed, 0);
        return -1;
    }
    /* a generation not yet live has no worker pools to drain */
    for (unsigned i = 0; live(g) && i < hx_srv.nworkers; i++) {
        drain_msg *m = malloc(sizeof(*m));
        if (m == NULL)
            continue;
        *m = (drain_msg){&hx_srv.workers[i], g, b};
        hx_gen_ref(g);
        if (hx_worker_post(m->w, drain_task, m) != 0) {
            hx_gen_unref(m->gen);
            free(m);
        }
    }
    hx_info("upstream %s: backend %s (%s) removed; %u request(s) in flight finish", u->name,
            name, b->address, atomic_load(&b->inflight));
    return 0;
}

int hx_ctl_do_weight(hx_upstream *u, const char *name, uint32_t weight, char *err,
                     size_t errlen)
{
    hx_backend *b = name ? find_backend(atomic_load(&u->backends), name, NULL) : NULL;
    if (b == NULL)
        return fail(err, errlen, "upstream '%s' has no backend named '%s'", u->name,
                    name ? name : "(null)");
    if (weight < 1 || weight > 10000)
        return fail(err, errlen, "weight %u is not between 1 and 10000", weight);
    atomic_store(&b->weight, weight);
    hx_info("upstream %s: backend %s weight %u", u->name, name, weight);
    return 0;
}

int hx_ctl_do_drain(hx_upstream *u, const char *name, int drain, char *err, size_t errlen)
{
    hx_backend *b = name ? find_backend(atomic_load(&u->backends), name, NULL) : NULL;
    if (b == NULL)
        return fail(err, errlen, "upstream '%s' has no backend named '%s'", u->name,
                    name ? name : "(null)");
    atomic_store(&b->draining, drain ? 1 : 0);
    hx_info("upstream %s: backend %s %s", u->name, name, drain ? "draining" : "undrained");
    return 0;
}

typedef struct switch_bal_msg {
    hx_worker *w;
    hx_gen *gen;
    unsigned upstream;
    hx_instance *inst;
} switch_bal_msg;

/* Worker: adopt the new balancer for this generation's upstream. */
static void switch_bal_task(void *arg)
{
    switch_bal_msg *m = arg;
    hx_worker *w = m->w;
    hx_wgen *v = w->wgen;
    if (v && v->gen == m->gen)
        hx_wgen_adopt_balancer(v, m->upstream, m->inst);
    hx_gen_release(m->gen);
    free(m);
}

int hx_ctl_do_balancer(hx_gen *g, hx_upstream *u, const char *module, char *err, size_t errlen)
{
    if (module == NULL || *module == '\0')
        return fail(err, errlen, "no balancer module named");
    size_t before = hx_conf_error_count(g->tree);
    hx_instance *inst = hx_instance_new_named(&hx_srv.modreg, g->module_dir, module, u->node,
                                              HX_KIND_BALANCER, (unsigned)-1);
    if (inst == NULL) {
        size_t n = hx_conf_error_count(g->tree);
        return fail(err, errlen, "%s",
                    n > before ? hx_conf_error_at(g->tree, n - 1) : "cannot create the balancer");
    }
    if (push(&u->switched, &u->nswitched, inst) != 0) {
        hx_instance_free(inst);
        return fail(err, errlen, "out of memory");
    }
    if (inst->mod->balancer->backends_changed &&
        inst->mod->balancer->backends_changed(inst->cfg, (const helios_backends *)atomic_load(
                                                             &u->backends)) != 0)
        /* the instance stays in `switched`, freed with the generation */
        return fail(err, errlen, "balancer %s refused the backend list", module);
    atomic_store(&u->balancer_rt, inst);
    /* a generation not yet live: its workers take balancer_rt when they
     * attach (worker.c) */
    for (unsigned i = 0; live(g) && i < hx_srv.nworkers; i++) {
        switch_bal_msg *m = malloc(sizeof(*m));
        if (m == NULL)
            continue;
        *m = (switch_bal_msg){&hx_srv.workers[i], g, u->index, inst};
        hx_gen_ref(g);
        if (hx_worker_post(m->w, switch_bal_task, m) != 0) {
            hx_gen_unref(g);
            free(m);
        }
    }
    hx_info("upstream %s: balancer switched to %s", u->name, module);
    return 0;
}

/* ---- the host API's ctl_* calls: the live generation, persisted ---- */

int hx_ctl_backend_add(const char *upstream, const char *name, const char *address,
                       uint32_t weight, char *err, size_t errlen)
{
    hx_ctl_lock();
    hx_upstream *u = find_upstream(upstream, err, errlen);
    int rc = u ? hx_ctl_do_add(hx_srv.gen, u, name, address, weight, err, errlen) : -1;
    if (rc == 0)
        hx_state_note_add(u, name, weight);
    hx_ctl_unlock();
    return rc;
}

int hx_ctl_backend_remove(const char *upstream, const char *name, char *err, size_t errlen)
{
    hx_ctl_lock();
    hx_upstream *u = find_upstream(upstream, err, errlen);
    int rc = u ? hx_ctl_do_remove(hx_srv.gen, u, name, err, errlen) : -1;
    if (rc == 0)
        hx_state_note_remove(u, name);
    hx_ctl_unlock();
    return rc;
}

int hx_ctl_backend_weight(const char *upstream, const char *name, uint32_t weight, char *err,
                          size_t errlen)
{
    hx_ctl_lock();
    hx_upstream *u = find_upstream(upstream, err, errlen);
    int rc = u ? hx_ctl_do_weight(u, name, weight, err, errlen) : -1;
    if (rc == 0)
        hx_state_note_weight(u, name, weight);
    hx_ctl_unlock();
    return rc;
}

int hx_ctl_backend_drain(const char *upstream, const char *name, int drain, char *err,
                         size_t errlen)
{
    hx_ctl_lock();
    hx_upstream *u = find_upstream(upstream, err, errlen);
    int rc = u ? hx_ctl_do_drain(u, name, drain, err, errlen) : -1;
    if (rc == 0)
        hx_state_note_drain(u, name, drain);
    hx_ctl_unlock();
    return rc;
}

int hx_ctl_balancer_set(const char *upstream, const char *module, char *err, size_t errlen)
{
    hx_ctl_lock();
    hx_upstream *u = find_upstream(upstream, err, errlen);
    int rc = u ? hx_ctl_do_balancer(hx_srv.gen, u, module, err, errlen) : -1;
    if (rc == 0)
        hx_state_note_balancer(u, module);
    hx_ctl_unlock();
    return rc;
}

long hx_ctl_backends_walk(const char *upstream, void (*fn)(void *, const helios_backend *),
                          void *arg)
{
    hx_ctl_lock();
    long n = -1;
    hx_upstream *u = find_upstream(upstream, NULL, 0);
    if (u) {
        hx_backends *bs = atomic_load(&u->backends);
        n = (long)bs->n;
        for (size_t i = 0; fn && i < bs->n; i++)
            fn(arg, (const helios_backend *)bs->v[i]);
    }
    hx_ctl_unlock();
    return n;
}

const char *hx_ctl_balancer_name(const char *upstream)
{
    hx_ctl_lock();
    const char *name = NULL;
    hx_upstream *u = find_upstream(upstream, NULL, 0);
    if (u) {
        const hx_instance *bal = atomic_load(&u->balancer_rt);
        name = (bal ? bal : u->balancer)->mod->name; /* module names live for the process */
    }
    hx_ctl_unlock();
    return name;
}

int hx_ctl_upstream_panic(const char *upstream, uint64_t *entries)
{
    hx_ctl_lock();
    int rc = -1;
    hx_upstream *u = find_upstream(upstream, NULL, 0);
    if (u) {
        rc = atomic_load_explicit(&u->panicking, memory_order_relaxed) != 0;
        if (entries)
            *entries = atomic_load_explicit(&u->panic_entries, memory_order_relaxed);
    }
    hx_ctl_unlock();
    return rc;
}

size_t hx_ctl_upstreams_count(void)
{
    hx_ctl_lock();
    size_t n = hx_srv.gen ? hx_srv.gen->nupstreams : 0;
    hx_ctl_unlock();
    return n;
}

int hx_ctl_upstream_name(size_t i, char *buf, size_t size)
{
    hx_ctl_lock();
    int rc = -1;
    if (hx_srv.gen && i < hx_srv.gen->nupstreams && buf &&
        (size_t)snprintf(buf, size, "%s", hx_srv.gen->upstreams[i]->name) < size)
        rc = 0;
    hx_ctl_unlock();
    return rc;
}

long hx_ctl_modules_walk(void (*fn)(void *, const helios_module_info *), void *arg)
{
    hx_ctl_lock();
    hx_gen *g = hx_srv.gen;
    long n = 0;
    for (hx_module *m = hx_srv.modreg.head; g && m; m = m->next) {
        helios_module_info info = {
            .size = sizeof(info),
            .name = m->name,
            .version = m->desc->version ? m->desc->version : "",
            .path = m->path,
            .abi_major = m->desc->abi_major,
            .abi_minor = m->desc->abi_minor,
        };
        info.kinds = (m->filter ? HELIOS_KIND_FILTER : 0u) | (m->handler ? HELIOS_KIND_HANDLER : 0u) |
                     (m->balancer ? HELIOS_KIND_BALANCER : 0u) |
                     (m->service ? HELIOS_KIND_SERVICE : 0u) | (m->health ? HELIOS_KIND_HEALTH : 0u);
        for (size_t i = 0; i < g->ninstances; i++)
            if (g->instances[i]->mod == m)
                info.instances++;
        for (size_t i = 0; i < g->nupstreams; i++)
            for (size_t k = 0; k < g->upstreams[i]->nswitched; k++)
                if (g->upstreams[i]->switched[k]->mod == m)
                    info.instances++;
        if (info.instances == 0)
            continue; /* loaded for an older generation only */
        n++;
        if (fn)
            fn(arg, &info);
    }
    hx_ctl_unlock();
    return n;
}

int hx_ctl_config_walk(void (*fn)(void *, const helios_conf *), void *arg)
{
    hx_ctl_lock();
    int rc = -1;
    if (hx_srv.gen && hx_srv.gen->tree) {
        rc = 0;
        if (fn)
            fn(arg, (const helios_conf *)hx_conf_root(hx_srv.gen->tree));
    }
    hx_ctl_unlock();
    return rc;
}

int (*hx_ctl_reload_impl)(uint32_t *gen, char *err, size_t errlen);

int hx_ctl_reload(uint32_t *gen, char *err, size_t errlen)
{
    if (hx_ctl_reload_impl == NULL)
        return fail(err, errlen, "reload is not available in this process");
    return hx_ctl_reload_impl(gen, err, errlen);
}
