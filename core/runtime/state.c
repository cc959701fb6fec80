/*
 * state.c - admin changes that survive reloads and restarts (state_file:).
 *
 * The state is the difference between what the admin API did and what the
 * configuration files say, per upstream: a balancer switch, and per backend
 * one entry (added, removed, or weight/drain set). Each successful ctl_*
 * call updates it and rewrites the file atomically (temporary file, fsync,
 * rename, fsync of the directory), so a crash leaves the old or the new
 * file, never a torn one. Every generation gets the entries re-applied
 * before its workers take it, so no request sees the files' values first.
 *
 * An entry the new files make impossible (its upstream is gone, an added
 * name is now in the files, a changed backend is gone) is logged, kept
 * and marked with why; it applies again when the files allow it, and only
 * DELETE /v1/state/... (forget) drops it. Runs under the control lock.
 */
#include "runtime/state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <helios/util/exports.h>

#include "base/buf.h"
#include "base/log.h"
#include "config/conf.h"
#include "event/worker.h"
#include "runtime/control.h"
#include "runtime/runtime.h"

#ifndef HX_STATE_DIR
#define HX_STATE_DIR "/var/lib/helios"
#endif
#define STATE_NAME "state.json"
#define STATE_MAX_BYTES (16u << 20) /* a bigger file is refused: not ours */

enum { ST_ADD = 1, ST_REMOVE, ST_SET };

typedef struct st_backend {
    char *name;
    int change;     /* ST_* */
    char *address;  /* ST_ADD */
    uint32_t weight;
    int has_weight; /* always for ST_ADD */
    int drain;
    int has_drain;  /* always for ST_ADD */
    int replaces;   /* ST_ADD: the files' backend of that name was removed first */
    char *conflict; /* why the running generation could not apply it, or NULL */
} st_backend;

typedef struct st_upstream {
    char *name;
    char *strategy; /* balancer module, or NULL: the files' */
    char *strategy_conflict;
    char *conflict; /* the upstream is not in the running generation */
    st_backend *b;
    size_t nb;
} st_upstream;

static struct {
    st_upstream *u;
    size_t nu;
    char *path;        /* where it persists; NULL: `state_file: off` */
    char *write_error; /* the last write's failure, or NULL */
    int started;       /* the file was read at start */
} st;

/* ---- small helpers ---- */

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void set_str(char **dst, const char *s)
{
    free(*dst);
    *dst = dup_or_null(s);
}

static st_upstream *su_find(const char *name, int create)
{
    for (size_t i = 0; i < st.nu; i++)
        if (strcmp(st.u[i].name, name) == 0)
            return &st.u[i];
    if (!create)
        return NULL;
    st_upstream *v = realloc(st.u, (st.nu + 1) * sizeof(*v));
    if (v == NULL)
        return NULL;
    st.u = v;
    st_upstream *su = &st.u[st.nu];
    memset(su, 0, sizeof(*su));
    if ((su->name = strdup(name)) == NULL)
        return NULL;
    st.nu++;
    return su;
}

static void be_clear(st_backend *e)
{
    free(e->name);
    free(e->address);
    free(e->conflict);
    memset(e, 0, sizeof(*e));
}

static st_backend *be_find(st_upstream *su, const char *name)
{
    for (size_t i = 0; su && i < su->nb; i++)
        if (strcmp(su->b[i].name, name) == 0)
            return &su->b[i];
    return NULL;
}

static st_backend *be_new(st_upstream *su, const char *name)
{
    st_backend *v = realloc(su->b, (su->nb + 1) * sizeof(*v));
    if (v == NULL)
        return NULL;
    su->b = v;
    st_backend *e = &su->b[su->nb];
    memset(e, 0, sizeof(*e));
    if ((e->name = strdup(name)) == NULL)
        return NULL;
    su->nb++;
    return e;
}

static void be_drop(st_upstream *su, st_backend *e)
{
    size_t i = (size_t)(e - su->b);
    be_clear(e);
    memmove(&su->b[i], &su->b[i + 1], (su->nb - i - 1) * sizeof(*e));
    su->nb--;
}

/* Drops SU when it holds nothing any more. */
static void su_prune(st_upstream *su)
{
    if (su->strategy || su->nb)
        return;
    size_t i = (size_t)(su - st.u);
    free(su->name);
    free(su->strategy_conflict);
    free(su->conflict);
    free(su->b);
    memmove(&st.u[i], &st.u[i + 1], (st.nu - i - 1) * sizeof(*su));
    st.nu--;
}

static hx_backend *running(const hx_upstream *u, const char *name)
{
    hx_backends *bs = atomic_load(&u->backends);
    for (size_t i = 0; i < bs->n; i++)
        if (strcmp(bs->v[i]->name, name) == 0)
            return bs->v[i];
    return NULL;
}

/* The backend NAME as U's configuration files define it: 1 with its
 * normalised address and weight, 0 when the files have none by that name. */
static int file_backend(const hx_upstream *u, const char *name, char *addr, size_t alen,
                        uint32_t *weight)
{
    const hx_conf_node *seq = hx_conf_get(u->node, "backends");
    for (size_t i = 0; seq && seq->kind == HX_CONF_SEQ && i < seq->n; i++) {
        const hx_conf_node *bn = seq->items[i], *nn = hx_conf_get(bn, "name"),
                           *an = hx_conf_get(bn, "address"), *wn = hx_conf_get(bn, "weight");
        if (an == NULL || an->kind != HX_CONF_SCALAR)
            continue;
        const char *nm = nn && nn->kind == HX_CONF_SCALAR ? nn->scalar : an->scalar;
        if (strcmp(nm, name) != 0)
            continue;
        hx_addr a;
        char aerr[256];
        long long w = 1;
        if (hx_addr_parse(an->scalar, 1, &a, aerr, sizeof(aerr)) != 0 ||
            (wn && hx_conf_node_int(wn, 1, 10000, &w) < 0))
            return 0; /* validated when the generation was built: not reached */
        hx_addr_str(&a, addr, alen);
        *weight = (uint32_t)w;
        return 1;
    }
    return 0;
}

/* ---- the file ---- */

/* A growing text (the core's hx_buf) that remembers running out of memory,
 * so the writers below need no checks of their own. */
typedef struct sbuf {
    hx_buf b;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (!b->oom && hx_buf_append(&b->b, s, n) != 0)
        b->oom = 1;
}

static void sb_fmt(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_fmt(sbuf *b, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* S as a JSON string (UTF-8 passes through; the YAML reader takes it back). */
static void sb_str(sbuf *b, const char *s)
{
    if (s == NULL) {
        sb_put(b, "null", 4);
        return;
    }
    sb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') {
            char esc[2] = {'\\', (char)*c};
            sb_put(b, esc, 2);
        } else if (*c < 0x20 || *c == 0x7f) {
            sb_fmt(b, "\\u%04x", *c);
        } else {
            sb_put(b, (const char *)c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static void sb_key(sbuf *b, int *first, const char *key)
{
    sb_put(b, *first ? "" : ", ", *first ? 0 : 2);
    *first = 0;
    sb_str(b, key);
    sb_put(b, ": ", 2);
}

static const char *change_name(int c)
{
    return c == ST_ADD ? "add" : c == ST_REMOVE ? "remove" : "set";
}

/* The state as JSON; STATUS adds where it persists and the conflicts. */
static void render(sbuf *b, int status)
{
    sb_put(b, "{", 1);
    int f = 1;
    sb_key(b, &f, "version");
    sb_put(b, "1", 1);
    if (status) {
        sb_key(b, &f, "file");
        sb_str(b, st.path);
        sb_key(b, &f, "persisted");
        sb_put(b, st.path && !st.write_error ? "true" : "false",
               st.path && !st.write_error ? 4 : 5);
        sb_key(b, &f, "write_error");
        sb_str(b, st.write_error);
    }
    sb_key(b, &f, "upstreams");
    sb_put(b, "{", 1);
    int fu = 1;
    for (size_t i = 0; i < st.nu; i++) {
        const st_upstream *su = &st.u[i];
        sb_key(b, &fu, su->name);
        sb_put(b, "{", 1);
        int g = 1;
        if (status) {
            sb_key(b, &g, "conflict");
            sb_str(b, su->conflict);
        }
        if (su->strategy || status) {
            sb_key(b, &g, "strategy");
            sb_str(b, su->strategy);
        }
        if (status) {
            sb_key(b, &g, "strategy_conflict");
            sb_str(b, su->strategy_conflict);
        }
        sb_key(b, &g, "backends");
        sb_put(b, "{", 1);
        int fb = 1;
        for (size_t k = 0; k < su->nb; k++) {
            const st_backend *e = &su->b[k];
            sb_key(b, &fb, e->name);
            sb_put(b, "{", 1);
            int h = 1;
            sb_key(b, &h, "change");
            sb_str(b, change_name(e->change));
            if (e->change == ST_ADD) {
                sb_key(b, &h, "address");
                sb_str(b, e->address);
                sb_key(b, &h, "replaces");
                sb_put(b, e->replaces ? "true" : "false", e->replaces ? 4 : 5);
            }
            if (e->has_weight) {
                sb_key(b, &h, "weight");
                sb_fmt(b, "%u", e->weight);
            }
            if (e->has_drain) {
                sb_key(b, &h, "drain");
                sb_put(b, e->drain ? "true" : "false", e->drain ? 4 : 5);
            }
            if (status) {
                sb_key(b, &h, "conflict");
                sb_str(b, e->conflict);
            }
            sb_put(b, "}", 1);
        }
        sb_put(b, "}}", 2);
    }
    sb_put(b, "}}\n", 3);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* The directory of PATH into DIR ("." when it names none). */
static void dir_of(const char *path, char *dir, size_t size)
{
    snprintf(dir, size, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(dir, size, ".");
}

/* Writes the state to st.path: temporary file, fsync, rename, fsync of the
 * directory. A failure is logged (once per distinct reason) and shown by
 * GET /v1/state; the change itself stays applied. */
static void save(void)
{
    if (st.path == NULL)
        return;
    sbuf b = {0};
    render(&b, 0);
    char tmp[4096], why[8400] = "";
    snprintf(tmp, sizeof(tmp), "%s.tmp", st.path);
    int fd = b.oom ? -1 : open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (b.oom)
        snprintf(why, sizeof(why), "out of memory");
    else if (fd < 0)
        snprintf(why, sizeof(why), "cannot create %s: %s", tmp, strerror(errno));
    else if (write_all(fd, b.b.data, b.b.len) != 0 || fsync(fd) != 0)
        snprintf(why, sizeof(why), "cannot write %s: %s", tmp, strerror(errno));
    if (fd >= 0 && close(fd) != 0 && !why[0])
        snprintf(why, sizeof(why), "cannot write %s: %s", tmp, strerror(errno));
    if (!why[0] && rename(tmp, st.path) != 0)
        snprintf(why, sizeof(why), "cannot rename %s to %s: %s", tmp, st.path, strerror(errno));
    if (why[0] && fd >= 0)
        unlink(tmp);
    free(b.b.data);
    if (!why[0]) {
        char dir[4096];
        dir_of(st.path, dir, sizeof(dir));
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        if (st.write_error)
            hx_info("state file %s written again: admin changes persist", st.path);
        set_str(&st.write_error, NULL);
        return;
    }
    if (st.write_error == NULL || strcmp(st.write_error, why) != 0)
        hx_error("state file: %s; admin changes apply but do not survive a restart "
                 "(state_file: in the configuration, StateDirectory= in the unit)",
                 why);
    set_str(&st.write_error, why);
}

/* Where G says the state persists: `state_file:`, else $STATE_DIRECTORY
 * (systemd's StateDirectory=; its first entry), else HX_STATE_DIR. */
static char *state_path(const hx_gen *g)
{
    if (g->process.state_off)
        return NULL;
    if (g->process.state_file)
        return strdup(g->process.state_file);
    const char *dir = getenv("STATE_DIRECTORY");
    size_t n = dir ? strcspn(dir, ":") : 0;
    char buf[4096];
    if (n > 0)
        snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, dir, STATE_NAME);
    else
        snprintf(buf, sizeof(buf), "%s/%s", HX_STATE_DIR, STATE_NAME);
    return strdup(buf);
}

/* Parses one backend entry; -1 after an error recorded in the tree. */
static int load_backend(st_upstream *su, const char *name, const hx_conf_node *n)
{
    static const char *const keys[] = {"change",   "address", "replaces", "weight",
                                       "drain",    "conflict", NULL};
    if (n->kind != HX_CONF_MAP) {
        hx_conf_error(n, "expected a map with 'change:'");
        return -1;
    }
    if (hx_conf_check_keys(n, keys) != 0)
        return -1;
    const char *change = NULL, *address = NULL;
    long long w = 0;
    int replaces = 0, drain = 0;
    int hw, hd;
    if (hx_conf_str_req(n, "change", &change) < 0 || hx_conf_str(n, "address", NULL, &address) < 0 ||
        hx_conf_bool(n, "replaces", 0, &replaces) < 0 ||
        (hw = hx_conf_int(n, "weight", 1, 1, 10000, &w)) < 0 ||
        (hd = hx_conf_bool(n, "drain", 0, &drain)) < 0)
        return -1;
    int c = strcmp(change, "add") == 0      ? ST_ADD
            : strcmp(change, "remove") == 0 ? ST_REMOVE
            : strcmp(change, "set") == 0    ? ST_SET
                                            : 0;
    if (c == 0) {
        hx_conf_error(hx_conf_get(n, "change"), "expected add, remove or set, got '%s'", change);
        return -1;
    }
    if (c == ST_ADD && address == NULL) {
        hx_conf_error(n, "an added backend needs 'address:'");
        return -1;
    }
    if (be_find(su, name)) {
        hx_conf_error(n, "backend '%s' appears twice", name);
        return -1;
    }
    st_backend *e = be_new(su, name);
    if (e == NULL || (c == ST_ADD && (e->address = strdup(address)) == NULL)) {
        hx_conf_error(n, "out of memory");
        return -1;
    }
    e->change = c;
    e->replaces = c == ST_ADD && replaces;
    e->has_weight = c == ST_ADD || (c == ST_SET && hw == 1);
    e->weight = (uint32_t)w;
    e->has_drain = c == ST_ADD || (c == ST_SET && hd == 1);
    e->drain = drain;
    return 0;
}

/* Reads st.path at start: 0 (a missing file is an empty state), or -1 with
 * the errors in ERR. */
static int load(char *err, size_t errlen)
{
    int fd = open(st.path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "state file %s: %s", st.path, strerror(errno));
        return -1;
    }
    sbuf b = {0};
    char chunk[8192];
    ssize_t k;
    while ((k = read(fd, chunk, sizeof(chunk))) > 0 && b.b.len < STATE_MAX_BYTES)
        sb_put(&b, chunk, (size_t)k);
    int rerr = k < 0 ? errno : 0;
    close(fd);
    if (rerr || b.oom || b.b.len >= STATE_MAX_BYTES) {
        snprintf(err, errlen, "state file %s: %s", st.path,
                 rerr ? strerror(rerr) : b.oom ? "out of memory" : "larger than 16 MiB");
        free(b.b.data);
        return -1;
    }
    hx_conf_tree *t = hx_conf_tree_new();
    int rc = t ? hx_conf_load_string(t, st.path, b.b.data ? b.b.data : "", b.b.len) : -1;
    free(b.b.data);
    const hx_conf_node *root = t ? hx_conf_root(t) : NULL;
    if (rc == 0 && root && root->kind != HX_CONF_NULL) {
        static const char *const top[] = {"version", "upstreams", NULL};
        static const char *const ukeys[] = {"strategy", "backends", NULL};
        long long version = 0;
        const hx_conf_node *ups = hx_conf_get(root, "upstreams");
        if (root->kind != HX_CONF_MAP)
            hx_conf_error(root, "expected a map with 'version:' and 'upstreams:'");
        else if (hx_conf_check_keys(root, top) == 0 &&
                 hx_conf_int(root, "version", 1, 1, 1, &version) >= 0 && ups &&
                 ups->kind != HX_CONF_NULL && ups->kind != HX_CONF_MAP)
            hx_conf_error(ups, "expected a map of upstream names");
        for (size_t i = 0; hx_conf_error_count(t) == 0 && ups && ups->kind == HX_CONF_MAP &&
                           i < ups->n;
             i++) {
            const hx_conf_node *un = ups->items[i], *bs = hx_conf_get(un, "backends");
            const char *strategy = NULL;
            st_upstream *su = su_find(ups->keys[i], 1);
            if (su == NULL) {
                hx_conf_error(un, "out of memory");
                break;
            }
            if (un->kind != HX_CONF_MAP || hx_conf_check_keys(un, ukeys) != 0 ||
                hx_conf_str(un, "strategy", NULL, &strategy) < 0) {
                if (un->kind != HX_CONF_MAP)
                    hx_conf_error(un, "expected a map with 'strategy:' and 'backends:'");
                break;
            }
            su->strategy = dup_or_null(strategy);
            if (bs && bs->kind != HX_CONF_NULL && bs->kind != HX_CONF_MAP) {
                hx_conf_error(bs, "expected a map of backend names");
                break;
            }
            for (size_t j = 0; bs && bs->kind == HX_CONF_MAP && j < bs->n; j++)
                if (load_backend(su, bs->keys[j], bs->items[j]) != 0)
                    break;
            su_prune(su);
        }
    }
    size_t n = t ? hx_conf_error_count(t) : 1;
    if (n > 0) {
        snprintf(err, errlen, "%s (fix or remove the state file; it holds the admin changes "
                              "heliosd re-applies on top of the configuration)",
                 t ? hx_conf_error_at(t, 0) : "out of memory");
        while (st.nu > 0) {
            st_upstream *su = &st.u[st.nu - 1];
            while (su->nb)
                be_drop(su, &su->b[su->nb - 1]);
            su->strategy = (free(su->strategy), NULL);
            su_prune(su);
        }
    }
    hx_conf_tree_free(t);
    return n > 0 ? -1 : 0;
}

/* ---- re-applying on a new generation ---- */

static void conflict(char **slot, const char *upstream, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void conflict(char **slot, const char *upstream, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    hx_warn("upstream %s: admin change not applied: %s (it stays in the state file; "
            "GET /v1/state shows it, DELETE /v1/state/%s/... drops it)",
            upstream, buf, upstream);
    set_str(slot, buf);
}

static void apply_backend(hx_gen *g, hx_upstream *u, st_backend *e)
{
    char err[512];
    hx_backend *cur = running(u, e->name);
    set_str(&e->conflict, NULL);
    switch (e->change) {
    case ST_ADD:
        if (cur && !e->replaces) {
            conflict(&e->conflict, u->name,
                     "backend '%s' was added at runtime but the configuration now defines it "
                     "(%s)",
                     e->name, cur->address);
            return;
        }
        if ((cur && hx_ctl_do_remove(g, u, e->name, err, sizeof(err)) != 0) ||
            hx_ctl_do_add(g, u, e->name, e->address, e->weight, err, sizeof(err)) != 0 ||
            (e->drain && hx_ctl_do_drain(u, e->name, 1, err, sizeof(err)) != 0))
            conflict(&e->conflict, u->name, "adding backend '%s': %s", e->name, err);
        return;
    case ST_REMOVE:
        if (cur == NULL)
            conflict(&e->conflict, u->name,
                     "backend '%s' was removed at runtime but the configuration no longer "
                     "defines it: nothing to remove",
                     e->name);
        else if (hx_ctl_do_remove(g, u, e->name, err, sizeof(err)) != 0)
            conflict(&e->conflict, u->name, "removing backend '%s': %s", e->name, err);
        return;
    default:
        if (cur == NULL)
            conflict(&e->conflict, u->name,
                     "backend '%s' had its weight or drain set at runtime but the "
                     "configuration no longer defines it",
                     e->name);
        else if ((e->has_weight && hx_ctl_do_weight(u, e->name, e->weight, err, sizeof(err))) ||
                 (e->has_drain && hx_ctl_do_drain(u, e->name, e->drain, err, sizeof(err))))
            conflict(&e->conflict, u->name, "backend '%s': %s", e->name, err);
    }
}

/* The counters a reload carries, in hx_backend.handed_at order. */
enum { N_COUNTERS = 6 };

static _Atomic uint64_t *counter(hx_backend *b, int i)
{
    switch (i) {
    case 0: return &b->requests;
    case 1: return &b->failures;
    case 2: return &b->retries;
    default: return &b->breaker_transitions[i - 3];
    }
}

/* Counters follow the metric series, whose labels are upstream and
 * backend name (D71): G's backend continues OLD's of the same upstream and
 * name, its address changed or not, and so does an upstream's panic count.
 * OLD keeps counting its requests in flight (and all of them until the
 * workers switch), so it remembers what it handed over and
 * hx_state_gen_freed adds the rest when OLD ends: nothing counted is lost.
 *
 * Verdicts follow the address too: a backend with the same upstream, name
 * and address keeps them, unhealthy stays unhealthy, and an open or
 * half-open breaker is half-open (its open timer ended with OLD's module:
 * trial requests decide now). The verdicts are marked carried until a
 * module of G confirms or changes them; hx_state_expire_carried lifts the
 * ones still unconfirmed after HX_CARRY_GRACE_S, so a verdict whose module
 * is gone cannot keep a backend out for good. */
static void carry_over(hx_gen *g, hx_gen *old)
{
    /* a refused reload may have marked OLD already: hand over afresh */
    for (size_t i = 0; old && i < old->nupstreams; i++) {
        hx_upstream *ou = old->upstreams[i];
        hx_backends *obs = atomic_load(&ou->backends);
        ou->panic_handed = 0;
        for (size_t k = 0; k < obs->n; k++)
            obs->v[k]->handed = 0;
        for (size_t k = 0; k < ou->nremoved; k++)
            ou->removed[k]->handed = 0;
    }
    for (size_t i = 0; old && i < g->nupstreams; i++) {
        hx_upstream *u = g->upstreams[i], *ou = hx_gen_upstream(old, u->name);
        if (ou == NULL)
            continue;
        ou->panic_handed_at = atomic_load(&ou->panic_entries);
        ou->panic_handed = 1;
        atomic_store(&u->panic_entries, ou->panic_handed_at);
        /* still in panic: the next pick continues it, not a new entry */
        atomic_store(&u->panicking, atomic_load(&ou->panicking));
        hx_backends *bs = atomic_load(&u->backends);
        for (size_t k = 0; k < bs->n; k++) {
            hx_backend *b = bs->v[k], *ob = running(ou, b->name);
            if (ob == NULL)
                continue;
            for (int c = 0; c < N_COUNTERS; c++) {
                ob->handed_at[c] = atomic_load(counter(ob, c));
                atomic_store(counter(b, c), ob->handed_at[c]);
            }
            ob->handed = 1;
            if (strcmp(ob->address, b->address) != 0)
                continue;
            int carried = 0;
            if (!atomic_load(&ob->healthy)) {
                atomic_store(&b->healthy, 0);
                carried |= HX_CARRIED_HEALTH;
            }
            if (atomic_load(&ob->breaker) != HELIOS_BREAKER_CLOSED) {
                uint32_t trials = atomic_load(&ob->breaker_max_trials);
                atomic_store(&b->breaker_max_trials, trials ? trials : 1);
                atomic_store(&b->breaker, HELIOS_BREAKER_HALF_OPEN);
                carried |= HX_CARRIED_BREAKER;
            }
            atomic_store(&b->carried, carried);
            if (carried)
                hx_info("upstream %s: backend %s (%s) keeps its verdict across the reload:%s%s",
                        u->name, b->name, b->address,
                        carried & HX_CARRIED_HEALTH ? " unhealthy" : "",
                        carried & HX_CARRIED_BREAKER ? " breaker half-open" : "");
        }
    }
}

void hx_state_gen_freed(hx_gen *old)
{
    hx_gen *cur = hx_srv.gen;
    if (cur == NULL || cur == old)
        return;
    for (size_t i = 0; i < old->nupstreams; i++) {
        hx_upstream *ou = old->upstreams[i], *u = hx_gen_upstream(cur, ou->name);
        hx_backends *obs = atomic_load(&ou->backends);
        if (u == NULL || obs == NULL)
            continue; /* gone: its series stop */
        if (ou->panic_handed)
            atomic_fetch_add(&u->panic_entries,
                             atomic_load(&ou->panic_entries) - ou->panic_handed_at);
        for (size_t k = 0; k < obs->n; k++) {
            hx_backend *ob = obs->v[k], *b = ob->handed ? running(u, ob->name) : NULL;
            for (int c = 0; b && c < N_COUNTERS; c++) {
                uint64_t late = atomic_load(counter(ob, c)) - ob->handed_at[c];
                if (late)
                    atomic_fetch_add(counter(b, c), late);
            }
        }
    }
}

void hx_state_expire_carried(hx_gen *g)
{
    for (size_t i = 0; i < g->nupstreams; i++) {
        hx_upstream *u = g->upstreams[i];
        hx_backends *bs = atomic_load(&u->backends);
        for (size_t k = 0; k < bs->n; k++) {
            hx_backend *b = bs->v[k];
            int c = atomic_exchange(&b->carried, 0);
            if ((c & HX_CARRIED_HEALTH) && !atomic_exchange(&b->healthy, 1))
                hx_warn("upstream %s: backend %s (%s) is healthy again: its unhealthy verdict "
                        "from before the reload was not confirmed within %d s",
                        u->name, b->name, b->address, HX_CARRY_GRACE_S);
            if ((c & HX_CARRIED_BREAKER) &&
                atomic_exchange(&b->breaker, HELIOS_BREAKER_CLOSED) != HELIOS_BREAKER_CLOSED)
                hx_warn("upstream %s: backend %s (%s): circuit breaker closed: its state from "
                        "before the reload was not confirmed within %d s",
                        u->name, b->name, b->address, HX_CARRY_GRACE_S);
        }
    }
}

int hx_state_apply(hx_gen *g, hx_gen *old, char *err, size_t errlen)
{
    char *path = state_path(g);
    if (!st.started) {
        st.started = 1;
        st.path = path;
        if (path && load(err, errlen) != 0)
            return -1;
        if (path && st.nu)
            hx_info("state file %s: re-applying %zu upstream%s' admin changes", path, st.nu,
                    st.nu == 1 ? "" : "s");
    } else if (!(path == NULL ? st.path == NULL : st.path && strcmp(path, st.path) == 0)) {
        hx_info("state file is now %s; the admin changes in effect move there",
                path ? path : "off (admin changes last until heliosd stops)");
        free(st.path);
        st.path = path;
        set_str(&st.write_error, NULL);
        save();
    } else {
        free(path);
    }
    for (size_t i = 0; i < st.nu; i++) {
        st_upstream *su = &st.u[i];
        hx_upstream *u = hx_gen_upstream(g, su->name);
        set_str(&su->conflict, NULL);
        set_str(&su->strategy_conflict, NULL);
        if (u == NULL) {
            conflict(&su->conflict, su->name,
                     "the configuration no longer defines upstream '%s'; its changes wait "
                     "for it to come back",
                     su->name);
            continue;
        }
        char e[512];
        if (su->strategy && hx_ctl_do_balancer(g, u, su->strategy, e, sizeof(e)) != 0)
            conflict(&su->strategy_conflict, u->name, "strategy %s: %s", su->strategy, e);
        for (size_t k = 0; k < su->nb; k++)
            apply_backend(g, u, &su->b[k]);
    }
    carry_over(g, old);
    return 0;
}

/* ---- heliosd -t ---- */

int hx_state_check(hx_gen *g, char *summary, size_t size)
{
    char err[1024];
    if (g->process.state_off) {
        snprintf(summary, size, "state file: off (admin changes last until heliosd stops)");
        return 0;
    }
    /* G never goes live: applying to it touches no file and no worker */
    hx_ctl_lock();
    int rc = hx_state_apply(g, NULL, err, sizeof(err));
    hx_ctl_unlock();
    if (rc != 0) {
        fprintf(stderr, "heliosd: %s; heliosd would not start\n", err);
        return -1;
    }
    size_t changes = 0, conflicts = 0;
    for (size_t i = 0; i < st.nu; i++) {
        const st_upstream *su = &st.u[i];
        changes += su->nb + (su->strategy != NULL);
        if (su->conflict) { /* the upstream is gone: none of it applies */
            conflicts += su->nb + (su->strategy != NULL);
            continue;
        }
        conflicts += su->strategy_conflict != NULL;
        for (size_t k = 0; k < su->nb; k++)
            conflicts += su->b[k].conflict != NULL;
    }
    if (conflicts)
        fprintf(stderr,
                "heliosd: warning: state_file: %s: %zu of %zu admin change%s would not apply "
                "with this configuration (listed above); heliosd starts, keeps them in the file "
                "and shows them in GET /v1/state\n",
                st.path, conflicts, changes, changes == 1 ? "" : "s");
    char dir[4096];
    dir_of(st.path, dir, sizeof(dir));
    if (access(dir, W_OK | X_OK) != 0) {
        int e = errno;
        fprintf(stderr,
                "heliosd: warning: state_file: %s: cannot create files in %s: %s; heliosd "
                "starts, but admin changes will not survive a restart (create the directory "
                "for the service's user, StateDirectory= in the unit, or set state_file:)\n",
                st.path, dir, strerror(e));
    }
    snprintf(summary, size, "state file: %s (%zu admin change%s to re-apply)", st.path, changes,
             changes == 1 ? "" : "s");
    return 0;
}

/* ---- changes from the ctl_* calls (live generation) ---- */

/* NAME's entry in U for a new change: a conflicted one is superseded. */
static st_backend *entry(st_upstream *su, const char *name)
{
    st_backend *e = be_find(su, name);
    if (e && e->conflict) {
        hx_info("upstream %s: a new change to backend %s replaces the one that could not "
                "apply (%s)",
                su->name, name, e->conflict);
        be_drop(su, e);
        e = NULL;
    }
    return e;
}

static void oom_note(const char *what)
{
    hx_error("state: out of memory recording %s; it is applied but not persisted", what);
}

void hx_state_note_add(hx_upstream *u, const char *name, uint32_t weight)
{
    hx_backend *b = running(u, name);
    st_upstream *su = su_find(u->name, 1);
    if (b == NULL || su == NULL)
        return oom_note("an added backend");
    st_backend *e = entry(su, name);
    char faddr[80];
    uint32_t fw = 1;
    if (e && e->change == ST_REMOVE && file_backend(u, name, faddr, sizeof(faddr), &fw) &&
        strcmp(faddr, b->address) == 0) {
        /* the files' backend is back: only a weight of its own remains */
        e->change = ST_SET;
        e->has_weight = weight != fw;
        e->weight = weight;
        e->has_drain = 0;
        if (!e->has_weight)
            be_drop(su, e);
    } else {
        int replaces = e != NULL; /* a removal of the files' backend was recorded */
        if (e == NULL && (e = be_new(su, name)) == NULL)
            return oom_note("an added backend");
        set_str(&e->address, b->address);
        e->change = ST_ADD;
        e->replaces = replaces;
        e->weight = weight;
        e->has_weight = e->has_drain = 1;
        e->drain = 0;
    }
    su_prune(su);
    save();
}

void hx_state_note_remove(hx_upstream *u, const char *name)
{
    st_upstream *su = su_find(u->name, 1);
    if (su == NULL)
        return oom_note("a removal");
    st_backend *e = entry(su, name);
    if (e && e->change == ST_ADD && !e->replaces) {
        be_drop(su, e); /* added at runtime, gone again: the files' view */
    } else {
        if (e == NULL && (e = be_new(su, name)) == NULL)
            return oom_note("a removal");
        set_str(&e->address, NULL);
        e->change = ST_REMOVE;
        e->replaces = e->has_weight = e->has_drain = 0;
    }
    su_prune(su);
    save();
}

/* A weight or drain change: on an added backend it updates the entry; on
 * the files' backend it is recorded only while it differs from the files. */
static void note_set(hx_upstream *u, const char *name, int is_weight, uint32_t value)
{
    st_upstream *su = su_find(u->name, 1);
    if (su == NULL)
        return oom_note("a change");
    st_backend *e = entry(su, name);
    char faddr[80];
    uint32_t fw = 1;
    if (e == NULL || e->change != ST_ADD)
        file_backend(u, name, faddr, sizeof(faddr), &fw);
    uint32_t file_value = is_weight ? fw : 0;
    if (e == NULL) {
        if (value == file_value) {
            su_prune(su);
            return save();
        }
        if ((e = be_new(su, name)) == NULL)
            return oom_note("a change");
        e->change = ST_SET;
    }
    if (is_weight) {
        e->weight = value;
        e->has_weight = e->change == ST_ADD || value != file_value;
    } else {
        e->drain = (int)value;
        e->has_drain = e->change == ST_ADD || value != file_value;
    }
    if (e->change == ST_SET && !e->has_weight && !e->has_drain)
        be_drop(su, e);
    su_prune(su);
    save();
}

void hx_state_note_weight(hx_upstream *u, const char *name, uint32_t weight)
{
    note_set(u, name, 1, weight);
}

void hx_state_note_drain(hx_upstream *u, const char *name, int drain)
{
    note_set(u, name, 0, drain ? 1 : 0);
}

void hx_state_note_balancer(hx_upstream *u, const char *module)
{
    st_upstream *su = su_find(u->name, 1);
    if (su == NULL)
        return oom_note("a strategy");
    set_str(&su->strategy, strcmp(module, u->balancer->mod->name) == 0 ? NULL : module);
    set_str(&su->strategy_conflict, NULL);
    su_prune(su);
    save();
}

/* ---- forgetting: back to what the files say ---- */

/* Undoes E on the live generation when it was applied there. */
static int revert_backend(hx_upstream *u, st_backend *e, char *err, size_t errlen)
{
    if (u == NULL || e->conflict)
        return 0; /* never applied: nothing to undo */
    hx_gen *g = hx_srv.gen;
    hx_backend *cur = running(u, e->name);
    char faddr[80];
    uint32_t fw = 1;
    int in_file = file_backend(u, e->name, faddr, sizeof(faddr), &fw);
    if (e->change == ST_ADD && cur && hx_ctl_do_remove(g, u, e->name, err, errlen) != 0)
        return -1;
    if (e->change != ST_SET && in_file && running(u, e->name) == NULL)
        return hx_ctl_do_add(g, u, e->name, faddr, fw, err, errlen);
    if (e->change == ST_SET && cur &&
        ((e->has_weight && hx_ctl_do_weight(u, e->name, fw, err, errlen) != 0) ||
         (e->has_drain && hx_ctl_do_drain(u, e->name, 0, err, errlen) != 0)))
        return -1;
    return 0;
}

static int forget_upstream(st_upstream *su, int what, const char *backend, char *err,
                           size_t errlen)
{
    hx_upstream *u = hx_srv.gen ? hx_gen_upstream(hx_srv.gen, su->name) : NULL;
    if (what != HELIOS_STATE_BACKEND && su->strategy) {
        if (u && !su->strategy_conflict &&
            hx_ctl_do_balancer(hx_srv.gen, u, u->balancer->mod->name, err, errlen) != 0)
            return -1;
        set_str(&su->strategy, NULL);
        set_str(&su->strategy_conflict, NULL);
        hx_info("upstream %s: persisted strategy dropped; the configuration's is back",
                su->name);
    }
    for (size_t k = su->nb; what != HELIOS_STATE_STRATEGY && k-- > 0;) {
        st_backend *e = &su->b[k];
        if (backend && strcmp(e->name, backend) != 0)
            continue;
        if (revert_backend(u, e, err, errlen) != 0)
            return -1;
        hx_info("upstream %s: persisted change to backend %s dropped; the configuration's "
                "view is back",
                su->name, e->name);
        be_drop(su, e);
    }
    return 0;
}

static int state_forget(void *ctx, int what, const char *upstream, const char *backend,
                        char *err, size_t errlen)
{
    (void)ctx;
    hx_ctl_lock();
    int rc = 1;
    snprintf(err, errlen, "no persisted change matches");
    if (what == HELIOS_STATE_ALL) {
        rc = st.nu ? 0 : 1;
        for (size_t i = st.nu; rc == 0 && i-- > 0;) {
            rc = forget_upstream(&st.u[i], what, NULL, err, errlen);
            su_prune(&st.u[i]);
        }
    } else {
        st_upstream *su = upstream ? su_find(upstream, 0) : NULL;
        if (su == NULL)
            snprintf(err, errlen, "no persisted change to upstream '%s'",
                     upstream ? upstream : "(null)");
        else if (what == HELIOS_STATE_STRATEGY && su->strategy == NULL)
            snprintf(err, errlen, "no persisted strategy for upstream '%s'", upstream);
        else if (what == HELIOS_STATE_BACKEND && (backend == NULL || !be_find(su, backend)))
            snprintf(err, errlen, "no persisted change to backend '%s' of upstream '%s'",
                     backend ? backend : "(null)", upstream);
        else if (what < HELIOS_STATE_UPSTREAM || what > HELIOS_STATE_BACKEND)
            snprintf(err, errlen, "unknown kind of change %d", what);
        else {
            rc = forget_upstream(su, what, backend, err, errlen);
            su_prune(su);
        }
    }
    if (rc == 0)
        save();
    hx_ctl_unlock();
    return rc;
}

static int state_render(void *ctx, char **out, size_t *len)
{
    (void)ctx;
    sbuf b = {0};
    hx_ctl_lock();
    render(&b, 1);
    hx_ctl_unlock();
    if (b.oom) {
        free(b.b.data);
        return -1;
    }
    *out = b.b.data;
    *len = b.b.len;
    return 0;
}

static helios_runtime_state_export state_export = {
    .size = sizeof(helios_runtime_state_export),
    .render = state_render,
    .forget = state_forget,
};

void hx_state_export_init(void)
{
    hx_host_api.export_set(HELIOS_EXPORT_RUNTIME_STATE, &state_export);
}
