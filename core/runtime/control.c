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

int hx_ctl_backend_add(const char *upstream, const char *name, const char *address,
                       uint32_t weight, char *err, size_t errlen)
{
    hx_ctl_lock();
    int rc = -1;
    hx_upstream *u = find_upstream(upstream, err, errlen);
    if (u == NULL)
        goto out;
    hx_backends *bs = atomic_load(&u->backends);
    if (name == NULL || *name == '\0' || strlen(name) > 255) {
        fail(err, errlen, "a backend needs a name of 1 to 255 characters");
        goto out;
    }
    if (find_backend(bs, name, NULL)) {
        fail(err, errlen, "upstream '%s' already has a backend named '%s'", upstream, name);
        goto out;
    }
    if (weight < 1 || weight > 10000) {
        fail(err, errlen, "weight %u is not between 1 and 10000", weight);
        goto out;
    }
    hx_addr addr;
    char aerr[256];
    if (address == NULL || hx_addr_parse(address, 1, &addr, aerr, sizeof(aerr)) != 0) {
        fail(err, errlen, "address '%s': %s", address ? address : "(null)",
             address ? aerr : "missing");
        goto out;
    }
    hx_backend *b = calloc(1, sizeof(*b));
    char abuf[80];
    if (b == NULL || (b->name = strdup(name)) == NULL ||
        (b->address = strdup(hx_addr_str(&addr, abuf, sizeof(abuf)))) == NULL ||
        hx_backend_pools_init(b, hx_srv.nworkers) != 0) {
        if (b) {
            free(b->name);
            free(b->address);
            free(b);
        }
        fail(err, errlen, "out of memory");
        goto out;
    }
    b->addr = addr;
    b->index = (unsigned)bs->n;
    atomic_init(&b->weight, weight);
    atomic_init(&b->healthy, 1);
    hx_backends *nb = copy_list(bs, 1);
    if (nb == NULL) {
        free(b->pools);
        free(b->name);
        free(b->address);
        free(b);
        fail(err, errlen, "out of memory");
        goto out;
    }
    nb->v[nb->n++] = b;
    if (publish(u, nb, err, errlen) != 0) {
        free(b->pools);
        free(b->name);
        free(b->address);
        free(b);
        goto out;
    }
    hx_info("upstream %s: backend %s (%s, weight %u) added", upstream, name, b->address, weight);
    rc = 0;
out:
    hx_ctl_unlock();
    return rc;
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

int hx_ctl_backend_remove(const char *upstream, const char *name, char *err, size_t errlen)
{
    hx_ctl_lock();
    int rc = -1;
    hx_upstream *u = find_upstream(upstream, err, errlen);
    if (u == NULL)
        goto out;
    hx_backends *bs = atomic_load(&u->backends);
    size_t idx;
    hx_backend *b = name ? find_backend(bs, name, &idx) : NULL;
    if (b == NULL) {
        fail(err, errlen, "upstream '%s' has no backend named '%s'", upstream,
             name ? name : "(null)");
        goto out;
    }
    hx_backends *nb = copy_list(bs, 0);
    if (nb == NULL || push(&u->removed, &u->nremoved, b) != 0) {
        if (nb) {
            free(nb->v);
            free(nb);
        }
        fail(err, errlen, "out of memory");
        goto out;
    }
    memmove(&nb->v[idx], &nb->v[idx + 1], (nb->n - idx - 1) * sizeof(hx_backend *));
    nb->n--;
    atomic_store(&b->removed, 1);
    if (publish(u, nb, err, errlen) != 0) {
        u->nremoved--;
        atomic_store(&b->removed, 0);
        goto out;
    }
    for (unsigned i = 0; i < hx_srv.nworkers; i++) {
        drain_msg *m = malloc(sizeof(*m));
        if (m == NULL)
            continue;
        *m = (drain_msg){&hx_srv.workers[i], hx_srv.gen, b};
        hx_gen_ref(hx_srv.gen);
        if (hx_worker_post(m->w, drain_task, m) != 0) {
            hx_gen_unref(m->gen);
            free(m);
        }
    }
    hx_info("upstream %s: backend %s (%s) removed; %u request(s) in flight finish", upstream,
            name, b->address, atomic_load(&b->inflight));
    rc = 0;
out:
    hx_ctl_unlock();
    return rc;
}

static int with_backend(const char *upstream, const char *name, char *err, size_t errlen,
                        hx_backend **out)
{
    hx_upstream *u = find_upstream(upstream, err, errlen);
    if (u == NULL)
        return -1;
    *out = name ? find_backend(atomic_load(&u->backends), name, NULL) : NULL;
    if (*out == NULL)
        return fail(err, errlen, "upstream '%s' has no backend named '%s'", upstream,
                    name ? name : "(null)");
    return 0;
}

int hx_ctl_backend_weight(const char *upstream, const char *name, uint32_t weight, char *err,
                          size_t errlen)
{
    hx_ctl_lock();
    hx_backend *b;
    int rc = with_backend(upstream, name, err, errlen, &b);
    if (rc == 0 && (weight < 1 || weight > 10000))
        rc = fail(err, errlen, "weight %u is not between 1 and 10000", weight);
    if (rc == 0) {
        atomic_store(&b->weight, weight);
        hx_info("upstream %s: backend %s weight %u", upstream, name, weight);
    }
    hx_ctl_unlock();
    return rc;
}

int hx_ctl_backend_drain(const char *upstream, const char *name, int drain, char *err,
                         size_t errlen)
{
    hx_ctl_lock();
    hx_backend *b;
    int rc = with_backend(upstream, name, err, errlen, &b);
    if (rc == 0) {
        atomic_store(&b->draining, drain ? 1 : 0);
        hx_info("upstream %s: backend %s %s", upstream, name, drain ? "draining" : "undrained");
    }
    hx_ctl_unlock();
    return rc;
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
    if (v && v->gen == m->gen) {
        void *ws = NULL;
        hx_instance *inst = m->inst;
        int ok = 1;
        if (inst->mod->desc->worker_init &&
            inst->mod->desc->worker_init(inst->cfg, (helios_worker *)w, &ws) != 0) {
            hx_error("worker %u: balancer %s: worker_init failed; keeping %s", w->id,
                     inst->mod->name, v->bal[m->upstream]->mod->name);
            ok = 0;
        }
        struct hx_wextra *e = ok ? realloc(v->extra, (v->nextra + 1) * sizeof(*e)) : NULL;
        if (ok && e == NULL) {
            if (inst->mod->desc->worker_fini)
                inst->mod->desc->worker_fini(inst->cfg, (helios_worker *)w, ws);
        } else if (ok) {
            v->extra = e;
            v->extra[v->nextra++] = (struct hx_wextra){inst, ws};
            v->bal[m->upstream] = inst;
            v->bal_ws[m->upstream] = ws;
        }
    }
    hx_gen_release(m->gen);
    free(m);
}

int hx_ctl_balancer_set(const char *upstream, const char *module, char *err, size_t errlen)
{
    hx_ctl_lock();
    int rc = -1;
    hx_upstream *u = find_upstream(upstream, err, errlen);
    if (u == NULL)
        goto out;
    if (module == NULL || *module == '\0') {
        fail(err, errlen, "no balancer module named");
        goto out;
    }
    hx_gen *g = hx_srv.gen;
    size_t before = hx_conf_error_count(g->tree);
    hx_instance *inst = hx_instance_new_named(&hx_srv.modreg, g->module_dir, module, u->node,
                                              HX_KIND_BALANCER, (unsigned)-1);
    if (inst == NULL) {
        size_t n = hx_conf_error_count(g->tree);
        fail(err, errlen, "%s",
             n > before ? hx_conf_error_at(g->tree, n - 1) : "cannot create the balancer");
        goto out;
    }
    if (push(&u->switched, &u->nswitched, inst) != 0) {
        hx_instance_free(inst);
        fail(err, errlen, "out of memory");
        goto out;
    }
    if (inst->mod->balancer->backends_changed &&
        inst->mod->balancer->backends_changed(inst->cfg, (const helios_backends *)atomic_load(
                                                             &u->backends)) != 0) {
        fail(err, errlen, "balancer %s refused the backend list", module);
        goto out; /* instance stays in `switched`, freed with the generation */
    }
    atomic_store(&u->balancer_rt, inst);
    for (unsigned i = 0; i < hx_srv.nworkers; i++) {
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
    hx_info("upstream %s: balancer switched to %s", upstream, module);
    rc = 0;
out:
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
