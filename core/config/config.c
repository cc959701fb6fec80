/*
 * config.c - turns the YAML tree into a validated generation.
 *
 * The validator never stops at the first problem: an operator running
 * `heliosd -t` should see every mistake in one go. Each check reports on the
 * most precise node it has (the value, not its parent) so the message reads
 * "file:line:col: key.path: what is wrong and what is expected", then goes on
 * with a default so later checks still run. Only a tree with zero errors
 * becomes a generation.
 *
 * Module instances are created in declaration order (global `modules:`,
 * each upstream's balancer, then each route's handler and filters) so slot
 * numbers are stable for a given file and config_new errors come out in the
 * order they appear in the file.
 */
#include "config/config.h"

#include "base/httputil.h"
#include "config/tls.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bounds from the configuration reference. */
#define WORKERS_MAX 256
#define MAX_CONNECTIONS_MAX 10000000LL
#define BACKLOG_MAX 65535LL
#define WEIGHT_MAX 10000LL
#define MAX_IDLE_MAX 100000LL
#define MAX_HEADERS_MAX 10000LL

#define KiB 1024ull
#define MiB (1024ull * 1024ull)

typedef struct build {
    hx_conf_tree *tree;
    hx_gen *gen;
    hx_modreg *reg;
    const hx_conf_node *upstreams_map; /* to tell "unknown" from "declared but broken" */
    size_t instances_cap;
    int oom;
} build;

static unsigned next_gen_id;

/* ---- small helpers ---- */

static void note_oom(build *b)
{
    if (!b->oom)
        hx_conf_error_plain(b->tree, "out of memory while building the configuration");
    b->oom = 1;
}

static void *b_calloc(build *b, size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        note_oom(b);
    return p;
}

static char *b_strdup(build *b, const char *s)
{
    char *p = strdup(s);
    if (!p)
        note_oom(b);
    return p;
}

static int is_absent(const hx_conf_node *n)
{
    return n == NULL || n->kind == HX_CONF_NULL;
}

/* Same wording as conf.c's getters: "expected X, got a map". */
static const char *a_kind(hx_conf_kind k)
{
    switch (k) {
    case HX_CONF_NULL:
        return "an empty value";
    case HX_CONF_SCALAR:
        return "a scalar";
    case HX_CONF_MAP:
        return "a map";
    case HX_CONF_SEQ:
        return "a sequence";
    }
    return "an unknown kind of node";
}

static void wrong_kind(const hx_conf_node *n, const char *expected)
{
    hx_conf_error(n, "expected %s, got %s", expected, a_kind(n->kind));
}

/*
 * An optional map section: NULL when absent or null (callers then use
 * defaults: the typed getters accept a NULL map). A non-map is an error.
 * Unknown keys are reported here so every section is checked the same way.
 */
static const hx_conf_node *opt_map(const hx_conf_node *parent, const char *key,
                                   const char *const *allowed)
{
    const hx_conf_node *n = hx_conf_get(parent, key);
    if (is_absent(n))
        return NULL;
    if (n->kind != HX_CONF_MAP) {
        wrong_kind(n, "a map");
        return NULL;
    }
    hx_conf_check_keys(n, allowed);
    return n;
}

/* An item that must be a map (a list entry); null counts as an empty map. */
static int item_map(const hx_conf_node *n, const char *const *allowed)
{
    if (n->kind == HX_CONF_NULL)
        return 0;
    if (n->kind != HX_CONF_MAP) {
        wrong_kind(n, "a map");
        return -1;
    }
    hx_conf_check_keys(n, allowed);
    return 0;
}

/* A required sequence with at least one item. WHAT describes one item. */
static const hx_conf_node *req_seq(const hx_conf_node *parent, const char *key,
                                   const char *what)
{
    const hx_conf_node *n = hx_conf_get(parent, key);
    if (is_absent(n)) {
        hx_conf_error(parent, "missing required key \"%s\": expected a list of %s", key, what);
        return NULL;
    }
    if (n->kind != HX_CONF_SEQ) {
        wrong_kind(n, "a sequence (list)");
        return NULL;
    }
    if (n->n == 0) {
        hx_conf_error(n, "must not be empty: expected a list of %s", what);
        return NULL;
    }
    return n;
}

/* A required non-empty scalar child; reported on PARENT when missing. */
static const hx_conf_node *req_scalar(const hx_conf_node *parent, const char *key,
                                      const char *expected)
{
    const hx_conf_node *n = hx_conf_get(parent, key);
    if (is_absent(n)) {
        hx_conf_error(parent, "missing required key \"%s\": expected %s", key, expected);
        return NULL;
    }
    if (n->kind != HX_CONF_SCALAR) {
        wrong_kind(n, "a string");
        return NULL;
    }
    if (n->scalar_len == 0) {
        hx_conf_error(n, "must not be empty: expected %s", expected);
        return NULL;
    }
    return n;
}

/* An optional scalar child; NULL when absent, or after an error. */
static const hx_conf_node *opt_scalar(const hx_conf_node *parent, const char *key,
                                      const char *expected)
{
    const hx_conf_node *n = hx_conf_get(parent, key);
    if (is_absent(n))
        return NULL;
    if (n->kind != HX_CONF_SCALAR) {
        wrong_kind(n, "a string");
        return NULL;
    }
    if (n->scalar_len == 0) {
        hx_conf_error(n, "must not be empty: expected %s", expected);
        return NULL;
    }
    return n;
}

/* One of CHOICES (case-insensitive). Returns the index, DEF when absent, -1
 * after an error. */
static int get_enum(const hx_conf_node *map, const char *key, const char *const *choices,
                    int def)
{
    const hx_conf_node *n = opt_scalar(map, key, "a value");
    if (!n)
        return hx_conf_get(map, key) && !is_absent(hx_conf_get(map, key)) ? -1 : def;
    char list[128] = "";
    for (int i = 0; choices[i]; i++) {
        if (strcasecmp(n->scalar, choices[i]) == 0)
            return i;
        size_t len = strlen(list);
        snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", choices[i]);
    }
    const char *hint = hx_conf_closest(n->scalar, choices);
    if (hint)
        hx_conf_error(n, "invalid value '%s' (did you mean '%s'?): expected one of %s", n->scalar,
                      hint, list);
    else
        hx_conf_error(n, "invalid value '%s': expected one of %s", n->scalar, list);
    return -1;
}

/* A size with bounds; the getter checks the syntax, we check the range. */
static void get_size(const hx_conf_node *map, const char *key, uint64_t def, uint64_t min,
                     uint64_t max, const char *range, uint64_t *out)
{
    if (hx_conf_size(map, key, def, out) == 1 && (*out < min || *out > max)) {
        hx_conf_error(hx_conf_get(map, key), "size %s is out of range: expected %s",
                      hx_conf_get(map, key)->scalar, range);
        *out = def;
    }
}

static int addr_equal(const hx_addr *a, const hx_addr *b)
{
    const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
    const struct sockaddr *sb = (const struct sockaddr *)&b->ss;
    if (sa->sa_family != sb->sa_family)
        return 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)sa, *y = (const void *)sb;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)sa, *y = (const void *)sb;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0 &&
               x->sin6_scope_id == y->sin6_scope_id;
    }
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

static int parse_address(const hx_conf_node *n, hx_addr *out)
{
    char err[256];
    if (hx_addr_parse(n->scalar, 1, out, err, sizeof err) != 0) {
        hx_conf_error(n, "invalid address: %s", err); /* ERR names the value */
        return -1;
    }
    return 0;
}

/* ---- module instances ---- */

static int push_instance(build *b, hx_instance *inst)
{
    hx_gen *g = b->gen;
    if (g->ninstances == b->instances_cap) {
        size_t cap = b->instances_cap ? b->instances_cap * 2 : 8;
        hx_instance **v = realloc(g->instances, cap * sizeof *v);
        if (!v) {
            note_oom(b);
            hx_instance_free(inst);
            return -1;
        }
        g->instances = v;
        b->instances_cap = cap;
    }
    g->instances[g->ninstances++] = inst;
    return 0;
}

/* A module reference node (scalar or {module:, config:}); errors are
 * recorded by the loader. The slot is the next free index. */
static hx_instance *new_instance(build *b, const hx_conf_node *node, hx_kind kind)
{
    hx_instance *inst =
        hx_instance_new(b->reg, b->gen->module_dir, node, kind, (unsigned)b->gen->ninstances);
    if (inst && push_instance(b, inst) != 0)
        return NULL;
    return inst;
}

static hx_instance *new_instance_named(build *b, const char *name, const hx_conf_node *at,
                                       hx_kind kind)
{
    hx_instance *inst = hx_instance_new_named(b->reg, b->gen->module_dir, name, at, kind,
                                              (unsigned)b->gen->ninstances);
    if (inst && push_instance(b, inst) != 0)
        return NULL;
    return inst;
}

/* ---- top level scalars ---- */

static void parse_io(build *b, const hx_conf_node *root)
{
    const hx_conf_node *n = hx_conf_get(root, "io");
    b->gen->io_uring = 0;
    if (is_absent(n))
        return;
    if (n->kind == HX_CONF_SCALAR && strcmp(n->scalar, "epoll") == 0)
        return;
    if (n->kind == HX_CONF_SCALAR && strcmp(n->scalar, "uring") == 0) {
        b->gen->io_uring = 1;
        return;
    }
    if (n->kind == HX_CONF_SCALAR)
        hx_conf_error(n, "invalid value '%s': expected \"epoll\" or \"uring\"", n->scalar);
    else
        hx_conf_error(n, "expected \"epoll\" or \"uring\", got %s", a_kind(n->kind));
}

static void parse_workers(build *b, const hx_conf_node *root)
{
    const hx_conf_node *n = hx_conf_get(root, "workers");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned autov = ncpu < 1 ? 1 : ncpu > WORKERS_MAX ? WORKERS_MAX : (unsigned)ncpu;

    b->gen->workers = autov;
    if (is_absent(n))
        return;
    if (n->kind == HX_CONF_SCALAR && strcmp(n->scalar, "auto") == 0)
        return;
    const char *s = n->kind == HX_CONF_SCALAR ? n->scalar : NULL;
    if (s && *s && strspn(s, "0123456789") == strlen(s)) {
        errno = 0;
        unsigned long v = strtoul(s, NULL, 10);
        if (errno == 0 && v >= 1 && v <= WORKERS_MAX) {
            b->gen->workers = (unsigned)v;
            return;
        }
    }
    if (s)
        hx_conf_error(n, "invalid value '%s': expected \"auto\" or an integer 1..%d", s,
                      WORKERS_MAX);
    else
        hx_conf_error(n, "expected \"auto\" or an integer 1..%d, got %s", WORKERS_MAX,
                      a_kind(n->kind));
}

/* Makes a relative directory absolute so a later chdir cannot change what
 * it means. */
static char *absolute_dir(build *b, const char *base, size_t baselen, const char *rel)
{
    char cwd[PATH_MAX];
    const char *pre = "";
    size_t prelen = 0;

    if (rel[0] != '/' && (baselen == 0 || base[0] != '/')) {
        if (getcwd(cwd, sizeof cwd)) {
            pre = cwd;
            prelen = strlen(cwd);
        }
    }
    size_t len = prelen + 1 + baselen + 1 + strlen(rel) + 1;
    char *out = b_calloc(b, len, 1);
    if (!out)
        return NULL;
    if (rel[0] == '/')
        snprintf(out, len, "%s", rel);
    else if (baselen && prelen)
        snprintf(out, len, "%s/%.*s/%s", pre, (int)baselen, base, rel);
    else if (baselen)
        snprintf(out, len, "%.*s/%s", (int)baselen, base, rel);
    else if (prelen)
        snprintf(out, len, "%s/%s", pre, rel);
    else
        snprintf(out, len, "%s", rel);
    return out;
}

/* N's scalar made absolute: a relative path is relative to the directory
 * of the file that names it, like module_path. */
static char *file_relative(build *b, const hx_conf_node *n)
{
    const char *slash = strrchr(n->file, '/');
    size_t baselen = slash ? (size_t)(slash - n->file) : 0;
    if (slash == n->file)
        baselen = 1; /* file in "/" */
    return absolute_dir(b, n->file, baselen, n->scalar);
}

/* One directory of a `module_path` list, made absolute and checked;
 * appended to the ':'-separated search list in *LIST (b_calloc'd). */
static void module_dir_add(build *b, const hx_conf_node *item, char **list)
{
    if (item->kind != HX_CONF_SCALAR || item->scalar_len == 0) {
        hx_conf_error(item, "expected a directory (a non-empty string)");
        return;
    }
    if (strchr(item->scalar, ':')) {
        hx_conf_error(item, "a module directory in a list cannot contain ':'");
        return;
    }
    char *dir = file_relative(b, item);
    struct stat st;
    if (dir == NULL)
        return;
    size_t dl = strlen(dir), ll = strlen(*list);
    int dup = 0;
    for (const char *p = *list; p && *p;) { /* a directory listed twice is searched once */
        const char *e = strchr(p, ':');
        size_t pl = e ? (size_t)(e - p) : strlen(p);
        dup |= pl == dl && memcmp(p, dir, dl) == 0;
        p = e ? e + 1 : NULL;
    }
    char *out = NULL;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        hx_conf_error(item, "module directory '%s' does not exist or is not a directory", dir);
    else if (!dup && (out = b_calloc(b, ll + 1 + dl + 1, 1)) != NULL) {
        memcpy(out, *list, ll);
        out[ll] = ':';
        memcpy(out + ll + 1, dir, dl);
        free(*list);
        *list = out;
    }
    free(dir);
}

/*
 * Where modules are looked up: gen->module_dir, one directory or several
 * joined by ':' (module_loader.c searches them in order, first match
 * wins). A `module_path` list keeps the built-in directory (or -m) first,
 * so the modules heliosd ships cannot be shadowed, and adds its entries
 * after it: third-party modules need no symlinks next to the shipped ones.
 * A scalar `module_path` replaces the built-in directory, as it always has.
 */
static void parse_module_dir(build *b, const hx_conf_node *root, const char *override,
                             const char *def)
{
    const hx_conf_node *seq = hx_conf_get(root, "module_path");
    if (seq && seq->kind == HX_CONF_SEQ) {
        char *list = override && *override ? absolute_dir(b, NULL, 0, override)
                                           : absolute_dir(b, NULL, 0, def ? def : ".");
        if (seq->n == 0)
            hx_conf_error(seq, "must not be empty: expected a directory or a list of them");
        for (size_t i = 0; i < seq->n && list; i++)
            module_dir_add(b, seq->items[i], &list);
        b->gen->module_dir = list;
        return;
    }
    const hx_conf_node *n = opt_scalar(root, "module_path", "a directory");
    if (override && *override) {
        b->gen->module_dir = absolute_dir(b, NULL, 0, override);
        return;
    }
    if (n) {
        /* Relative to the file it was written in, not to the cwd: the
         * same config must work whoever starts the daemon from where. */
        b->gen->module_dir = file_relative(b, n);
        struct stat st;
        if (b->gen->module_dir &&
            (stat(b->gen->module_dir, &st) != 0 || !S_ISDIR(st.st_mode)))
            hx_conf_error(n, "module directory '%s' does not exist or is not a directory",
                          b->gen->module_dir);
        return;
    }
    b->gen->module_dir = absolute_dir(b, NULL, 0, def ? def : ".");
}

/* ---- process: user, group, pid_file, state_file ---- */

static void parse_process(build *b, const hx_conf_node *root)
{
    hx_process_conf *p = &b->gen->process;
    const hx_conf_node *u = opt_scalar(root, "user", "a user name or uid");
    const hx_conf_node *g = opt_scalar(root, "group", "a group name or gid");
    const hx_conf_node *f = opt_scalar(root, "pid_file", "a file path");
    const hx_conf_node *sf = opt_scalar(root, "state_file", "a file path or off");
    char buf[4096];
    if (u) {
        struct passwd pw, *res = NULL;
        getpwnam_r(u->scalar, &pw, buf, sizeof(buf), &res);
        if (res == NULL && strspn(u->scalar, "0123456789") == strlen(u->scalar) && *u->scalar)
            getpwuid_r((uid_t)strtoul(u->scalar, NULL, 10), &pw, buf, sizeof(buf), &res);
        if (res == NULL) {
            hx_conf_error(u, "no such user '%s' (getent passwd %s)", u->scalar, u->scalar);
        } else {
            p->user = b_strdup(b, res->pw_name);
            p->uid = res->pw_uid;
            p->gid = res->pw_gid;
        }
    }
    if (g) {
        struct group gr, *res = NULL;
        getgrnam_r(g->scalar, &gr, buf, sizeof(buf), &res);
        if (res == NULL && strspn(g->scalar, "0123456789") == strlen(g->scalar) && *g->scalar)
            getgrgid_r((gid_t)strtoul(g->scalar, NULL, 10), &gr, buf, sizeof(buf), &res);
        if (res == NULL) {
            hx_conf_error(g, "no such group '%s' (getent group %s)", g->scalar, g->scalar);
        } else {
            p->group = b_strdup(b, res->gr_name);
            p->gid = res->gr_gid;
        }
    }
    if (f) {
        if (f->scalar[0] == '\0')
            hx_conf_error(f, "expected a file path, got an empty string");
        else
            p->pid_file = file_relative(b, f);
    }
    if (sf && strcmp(sf->scalar, "off") == 0)
        p->state_off = 1;
    else if (sf && sf->scalar[sf->scalar_len - 1] == '/')
        hx_conf_error(sf, "expected a file path, got a directory ('%s'); e.g. %sstate.json",
                      sf->scalar, sf->scalar);
    else if (sf)
        p->state_file = file_relative(b, sf);
}

/* ---- global modules ---- */

static void parse_modules(build *b, const hx_conf_node *root)
{
    const hx_conf_node *n = hx_conf_get(root, "modules");
    if (is_absent(n))
        return;
    if (n->kind != HX_CONF_SEQ) {
        wrong_kind(n, "a sequence (list) of module references");
        return;
    }
    b->gen->global = b_calloc(b, n->n, sizeof *b->gen->global);
    if (!b->gen->global)
        return;
    for (size_t i = 0; i < n->n; i++) {
        hx_instance *inst = new_instance(b, n->items[i], HX_KIND_ANY);
        if (inst)
            b->gen->global[b->gen->nglobal++] = inst;
    }
}

/* ---- listeners ---- */

static void parse_listeners(build *b, const hx_conf_node *root)
{
    static const char *const keys[] = {"name", "address", "max_connections", "backlog",
                                       "tls",  "h2c",     "dispatch",        NULL};
    /* in HX_DISPATCH_* order */
    static const char *const policies[] = {"reuseport", "round_robin", "least_loaded",
                                           "power_of_two", NULL};
    const hx_conf_node *seq = req_seq(root, "listeners", "{address: HOST:PORT}");
    if (!seq)
        return;
    hx_gen *g = b->gen;
    g->listeners = b_calloc(b, seq->n, sizeof *g->listeners);
    if (!g->listeners)
        return;

    for (size_t i = 0; i < seq->n; i++) {
        const hx_conf_node *ln = seq->items[i];
        hx_listener_conf *l = &g->listeners[g->nlisteners];
        long long v = 0;
        int ok = 1;

        if (ln->kind == HX_CONF_NULL) {
            hx_conf_error(ln, "empty listener: expected {address: HOST:PORT}");
            continue;
        }
        if (item_map(ln, keys) != 0)
            continue;
        l->node = ln;

        const hx_conf_node *name = opt_scalar(ln, "name", "a listener name");
        if (!name && hx_conf_get(ln, "name") && !is_absent(hx_conf_get(ln, "name")))
            ok = 0;

        const hx_conf_node *addr = req_scalar(ln, "address", "HOST:PORT, e.g. 127.0.0.1:8080");
        if (!addr || parse_address(addr, &l->addr) != 0) {
            ok = 0;
        } else {
            for (size_t j = 0; j < g->nlisteners; j++) {
                if (addr_equal(&g->listeners[j].addr, &l->addr)) {
                    hx_conf_error(addr,
                                  "duplicate listener address '%s': listener '%s' (line %u) "
                                  "already listens there",
                                  addr->scalar, g->listeners[j].name, g->listeners[j].node->line);
                    ok = 0;
                    break;
                }
            }
        }

        if (hx_conf_int(ln, "max_connections", 10000, 1, MAX_CONNECTIONS_MAX, &v) < 0)
            ok = 0;
        l->max_connections = (unsigned)v;
        if (hx_conf_int(ln, "backlog", 511, 1, BACKLOG_MAX, &v) < 0)
            ok = 0;
        l->backlog = (int)v;

        if (hx_conf_bool(ln, "h2c", 1, &l->h2c) < 0)
            ok = 0;
        if ((l->dispatch = get_enum(ln, "dispatch", policies, HX_DISPATCH_DEFAULT)) < 0)
            ok = 0;
        const hx_conf_node *tn = hx_conf_get(ln, "tls");
        if (!is_absent(tn)) {
            l->tls = hx_tls_new(tn);
            if (l->tls == NULL)
                ok = 0;
        }

        char defname[32];
        snprintf(defname, sizeof defname, "listener%zu", i);
        const char *nm = name ? name->scalar : defname;
        for (size_t j = 0; j < g->nlisteners && ok; j++) {
            if (strcmp(g->listeners[j].name, nm) == 0) {
                hx_conf_error(name ? name : ln,
                              "duplicate listener name '%s' (first at line %u): names must be "
                              "unique",
                              nm, g->listeners[j].node->line);
                ok = 0;
            }
        }
        if (!ok) {
            hx_tls_free(l->tls);
            l->tls = NULL;
            continue;
        }
        l->name = b_strdup(b, nm);
        l->address = b_strdup(b, addr->scalar);
        if (!l->name || !l->address) {
            free(l->name);
            free(l->address);
            hx_tls_free(l->tls);
            l->tls = NULL;
            return;
        }
        g->nlisteners++;
    }
}

/* ---- http2 ---- */

static void parse_http2(build *b, const hx_conf_node *root)
{
    static const char *const keys[] = {"max_concurrent_streams", "initial_window_size",
                                       "header_table_size", "max_control_frames", "max_resets",
                                       "max_continuations", "settings_timeout", NULL};
    hx_h2_conf *h = &b->gen->http2;
    const hx_conf_node *n = opt_map(root, "http2", keys);
    long long v;
    uint64_t sz;
    if (hx_conf_int(n, "max_concurrent_streams", 128, 1, 10000, &v) >= 0)
        h->max_concurrent_streams = (uint32_t)v;
    if (hx_conf_size(n, "initial_window_size", 256 * 1024, &sz) >= 0) {
        if (sz < 65535 || sz > 0x7fffffff)
            hx_conf_error(hx_conf_get(n, "initial_window_size"),
                          "must be between 64k and 2g - 1");
        h->initial_window_size = (uint32_t)(sz > 0x7fffffff ? 0x7fffffff : sz);
    }
    if (hx_conf_size(n, "header_table_size", 4096, &sz) >= 0) {
        if (sz > 65536)
            hx_conf_error(hx_conf_get(n, "header_table_size"), "must be at most 64k");
        h->header_table_size = (uint32_t)sz;
    }
    if (hx_conf_int(n, "max_control_frames", 1000, 10, 1000000, &v) >= 0)
        h->max_control_frames = (unsigned)v;
    if (hx_conf_int(n, "max_resets", 100, 1, 100000, &v) >= 0)
        h->max_resets = (unsigned)v;
    if (hx_conf_int(n, "max_continuations", 16, 1, 1000, &v) >= 0)
        h->max_continuations = (unsigned)v;
    uint64_t ms;
    if (hx_conf_duration_ms(n, "settings_timeout", 10000, &ms) >= 0)
        h->settings_timeout_ms = ms ? ms : 10000;
}

/* ---- trusted_proxies ---- */

static void parse_trusted(build *b, const hx_conf_node *root)
{
    const hx_conf_node *n = hx_conf_get(root, "trusted_proxies");
    if (is_absent(n))
        return;
    if (n->kind != HX_CONF_SEQ) {
        wrong_kind(n, "a sequence (list) of CIDRs like 10.0.0.0/8");
        return;
    }
    b->gen->trusted = b_calloc(b, n->n, sizeof *b->gen->trusted);
    if (!b->gen->trusted)
        return;
    for (size_t i = 0; i < n->n; i++) {
        const hx_conf_node *it = n->items[i];
        char err[256];
        if (it->kind != HX_CONF_SCALAR) {
            wrong_kind(it, "a CIDR like 10.0.0.0/8");
            continue;
        }
        if (hx_cidr_parse(it->scalar, &b->gen->trusted[b->gen->ntrusted], err, sizeof err) !=
            0) {
            hx_conf_error(it, "invalid trusted proxy: %s", err);
            continue;
        }
        b->gen->ntrusted++;
    }
}

/* ---- timeouts, limits, logging ---- */

static void parse_timeouts(build *b, const hx_conf_node *root)
{
    static const char *const keys[] = {"client_header", "client_body", "keepalive",
                                       "client_write",  "request",     "shutdown",
                                       "tunnel_idle",   NULL};
    const hx_conf_node *m = opt_map(root, "timeouts", keys);
    hx_timeouts *t = &b->gen->timeouts;
    hx_conf_duration_ms(m, "client_header", 10000, &t->client_header_ms);
    hx_conf_duration_ms(m, "client_body", 60000, &t->client_body_ms);
    hx_conf_duration_ms(m, "keepalive", 75000, &t->keepalive_ms);
    hx_conf_duration_ms(m, "client_write", 60000, &t->client_write_ms);
    hx_conf_duration_ms(m, "request", 0, &t->request_ms);
    hx_conf_duration_ms(m, "shutdown", 30000, &t->shutdown_ms);
    hx_conf_duration_ms(m, "tunnel_idle", 3600000, &t->tunnel_idle_ms);
    if (t->tunnel_idle_ms == 0) {
        hx_conf_error(hx_conf_get(m, "tunnel_idle"),
                      "timeouts.tunnel_idle must be more than 0 (an idle tunnel is closed "
                      "after it; default 1h)");
    }
}

static void parse_limits(build *b, const hx_conf_node *root)
{
    static const char *const keys[] = {
        "max_request_line", "max_header_size", "max_headers", "max_body_buffer",
        "max_request_body", "max_held_body",   NULL};
    const hx_conf_node *m = opt_map(root, "limits", keys);
    hx_limits *l = &b->gen->limits;
    long long v = 100;

    get_size(m, "max_request_line", 8 * KiB, 256, 1 * MiB, "256..1m", &l->max_request_line);
    get_size(m, "max_header_size", 32 * KiB, 1 * KiB, 1 * MiB, "1k..1m", &l->max_header_size);
    hx_conf_int(m, "max_headers", 100, 1, MAX_HEADERS_MAX, &v);
    l->max_headers = (unsigned)v;
    get_size(m, "max_body_buffer", 64 * KiB, 4 * KiB, 16 * MiB, "4k..16m", &l->max_body_buffer);
    get_size(m, "max_request_body", 1024 * MiB, 0, (uint64_t)1 << 50, "0 (no limit)..1p",
             &l->max_request_body);
    get_size(m, "max_held_body", 1 * MiB, 1 * KiB, 1024 * MiB, "1k..1g", &l->max_held_body);
}

static void parse_logging(build *b, const hx_conf_node *root)
{
    static const char *const keys[] = {"level",      "error_log",         "error_log_format",
                                       "access_log", "access_log_format", NULL};
    static const char *const levels[] = {"error", "warn", "info", "debug", NULL};
    static const char *const formats[] = {"text", "json", NULL};
    const hx_conf_node *m = opt_map(root, "logging", keys);
    hx_logging *lg = &b->gen->logging;
    int v;

    /* The table is in HELIOS_LOG_* order. */
    v = get_enum(m, "level", levels, HELIOS_LOG_INFO);
    lg->level = v < 0 ? HELIOS_LOG_INFO : v;
    v = get_enum(m, "access_log_format", formats, HX_LOG_FMT_TEXT);
    lg->access_format = v < 0 ? HX_LOG_FMT_TEXT : v;
    v = get_enum(m, "error_log_format", formats, HX_LOG_FMT_TEXT);
    lg->error_format = v < 0 ? HX_LOG_FMT_TEXT : v;

    const hx_conf_node *n = opt_scalar(m, "error_log", "\"stderr\" or a file path");
    if (n && strcmp(n->scalar, "stderr") != 0)
        lg->error_log = b_strdup(b, n->scalar);

    lg->access_enabled = 1;
    n = opt_scalar(m, "access_log", "\"off\", \"stdout\" or a file path");
    if (n && strcmp(n->scalar, "off") == 0)
        lg->access_enabled = 0;
    else if (n && strcmp(n->scalar, "stdout") != 0)
        lg->access_log = b_strdup(b, n->scalar);
}

/* ---- upstreams ---- */

static int valid_upstream_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '.' && *s != '-')
            return 0;
    return 1;
}

static void backends_free(hx_backends *bs)
{
    if (!bs)
        return;
    for (size_t i = 0; i < bs->n; i++) {
        free(bs->v[i]->name);
        free(bs->v[i]->address);
        free(bs->v[i]->pools);
        free(bs->v[i]);
    }
    free(bs->v);
    free(bs);
}

static hx_backends *parse_backends(build *b, const hx_conf_node *un)
{
    static const char *const keys[] = {"name", "address", "weight", NULL};
    const hx_conf_node *seq = req_seq(un, "backends", "{address: HOST:PORT}");
    if (!seq)
        return NULL;
    hx_backends *bs = b_calloc(b, 1, sizeof *bs);
    if (!bs)
        return NULL;
    bs->v = b_calloc(b, seq->n, sizeof *bs->v);
    if (!bs->v) {
        free(bs);
        return NULL;
    }

    int failed = 0;
    for (size_t i = 0; i < seq->n; i++) {
        const hx_conf_node *bn = seq->items[i];
        hx_addr addr;
        long long weight = 1;
        int ok = 1;

        if (bn->kind == HX_CONF_NULL) {
            hx_conf_error(bn, "empty backend: expected {address: HOST:PORT}");
            failed = 1;
            continue;
        }
        if (item_map(bn, keys) != 0) {
            failed = 1;
            continue;
        }
        const hx_conf_node *name = opt_scalar(bn, "name", "a backend name");
        if (!name && !is_absent(hx_conf_get(bn, "name")))
            ok = 0;
        const hx_conf_node *an = req_scalar(bn, "address", "HOST:PORT, e.g. 127.0.0.1:9001");
        if (!an || parse_address(an, &addr) != 0)
            ok = 0;
        if (hx_conf_int(bn, "weight", 1, 1, WEIGHT_MAX, &weight) < 0)
            ok = 0;
        if (!ok) {
            failed = 1;
            continue;
        }

        const char *nm = name ? name->scalar : an->scalar;
        for (size_t j = 0; j < bs->n; j++) {
            if (strcmp(bs->v[j]->name, nm) == 0) {
                hx_conf_error(name ? name : an,
                              "duplicate backend name '%s' (first at line %u): names must be "
                              "unique within an upstream; set 'name:' to tell them apart",
                              nm, bs->v[j]->node->line);
                ok = 0;
                break;
            }
        }
        if (!ok) {
            failed = 1;
            continue;
        }

        hx_backend *be = b_calloc(b, 1, sizeof *be);
        char buf[INET6_ADDRSTRLEN + 16];
        if (!be)
            break;
        be->name = b_strdup(b, nm);
        be->address = b_strdup(b, hx_addr_str(&addr, buf, sizeof buf));
        if (!be->name || !be->address) {
            free(be->name);
            free(be->address);
            free(be);
            break;
        }
        be->addr = addr;
        be->index = (unsigned)bs->n;
        atomic_init(&be->weight, (uint32_t)weight);
        atomic_init(&be->inflight, 0);
        atomic_init(&be->healthy, 1);
        atomic_init(&be->draining, 0);
        atomic_init(&be->requests, 0);
        atomic_init(&be->failures, 0);
        be->node = bn;
        bs->v[bs->n++] = be;
    }
    if (failed || b->oom) {
        backends_free(bs);
        return NULL;
    }
    return bs;
}

static void upstream_free(hx_upstream *u)
{
    if (!u)
        return;
    /* The balancer is owned by gen->instances; runtime changes left their
     * replaced lists, removed backends and switched balancers here. */
    backends_free(atomic_load(&u->backends));
    for (size_t i = 0; i < u->nretired; i++) {
        free(u->retired[i]->v);
        free(u->retired[i]);
    }
    free(u->retired);
    for (size_t i = 0; i < u->nremoved; i++) {
        free(u->removed[i]->name);
        free(u->removed[i]->address);
        free(u->removed[i]->pools);
        free(u->removed[i]);
    }
    free(u->removed);
    for (size_t i = 0; i < u->nswitched; i++)
        hx_instance_free(u->switched[i]);
    free(u->switched);
    hx_tls_client_free(u->tls);
    free(u->name);
    free(u);
}

static hx_upstream *parse_upstream(build *b, const char *name, const hx_conf_node *un)
{
    static const char *const keys[] = {"balancer", "backends", "keepalive",   "timeouts",
                                       "retries",  "protocol", "tls",         "max_tunnels",
                                       "request_buffering", "panic_threshold", NULL};
    static const char *const re_keys[] = {"tries", "on", "per_try_timeout", "budget_percent",
                                          "budget_min", NULL};
    static const char *const ka_keys[] = {"max_idle", "idle_timeout", NULL};
    static const char *const to_keys[] = {"connect", "read", "send", NULL};
    int ok = 1;

    if (!valid_upstream_name(name)) {
        hx_conf_error(un, "invalid upstream name '%s': use only letters, digits, '_', '.' and '-'",
                      name);
        ok = 0;
    }
    if (un->kind != HX_CONF_MAP && un->kind != HX_CONF_NULL) {
        wrong_kind(un, "a map with 'backends:'");
        return NULL;
    }
    if (un->kind == HX_CONF_MAP)
        hx_conf_check_keys(un, keys);

    hx_upstream *u = b_calloc(b, 1, sizeof *u);
    if (!u)
        return NULL;
    u->node = un;
    u->name = b_strdup(b, name);

    const hx_conf_node *bal = hx_conf_get(un, "balancer");
    if (is_absent(bal))
        u->balancer = new_instance_named(b, "round_robin", un, HX_KIND_BALANCER);
    else
        u->balancer = new_instance(b, bal, HX_KIND_BALANCER);
    if (!u->balancer)
        ok = 0;

    hx_backends *bs = parse_backends(b, un);
    if (!bs)
        ok = 0;
    atomic_init(&u->backends, bs);

    const hx_conf_node *ka = opt_map(un, "keepalive", ka_keys);
    long long max_idle = 32;
    if (hx_conf_int(ka, "max_idle", 32, 0, MAX_IDLE_MAX, &max_idle) < 0)
        ok = 0;
    u->keepalive_max_idle = (unsigned)max_idle;
    if (hx_conf_duration_ms(ka, "idle_timeout", 60000, &u->keepalive_idle_ms) < 0)
        ok = 0;

    const hx_conf_node *to = opt_map(un, "timeouts", to_keys);
    if (hx_conf_duration_ms(to, "connect", 5000, &u->connect_timeout_ms) < 0 ||
        hx_conf_duration_ms(to, "read", 60000, &u->read_timeout_ms) < 0 ||
        hx_conf_duration_ms(to, "send", 60000, &u->send_timeout_ms) < 0)
        ok = 0;

    long long max_tunnels = 0;
    if (hx_conf_int(un->kind == HX_CONF_MAP ? un : NULL, "max_tunnels", 0, 0, 10000000,
                    &max_tunnels) < 0)
        ok = 0;
    u->max_tunnels = (unsigned)max_tunnels;
    get_size(un->kind == HX_CONF_MAP ? un : NULL, "request_buffering", 64 * KiB, 0, 16 * MiB,
             "0 (stream every body)..16m", &u->request_buffering);
    long long panic = 0;
    if (hx_conf_int(un->kind == HX_CONF_MAP ? un : NULL, "panic_threshold", 0, 0, 100, &panic) < 0)
        ok = 0;
    u->panic_threshold = (unsigned)panic;

    const hx_conf_node *re = opt_map(un, "retries", re_keys);
    long long tries = 3, pct = 20, bmin = 3;
    if (hx_conf_int(re, "tries", 3, 1, 10, &tries) < 0 ||
        hx_conf_duration_ms(re, "per_try_timeout", 0, &u->per_try_timeout_ms) < 0 ||
        hx_conf_int(re, "budget_percent", 20, 0, 100, &pct) < 0 ||
        hx_conf_int(re, "budget_min", 3, 0, 1000, &bmin) < 0)
        ok = 0;
    u->retry_tries = (unsigned)tries;
    u->retry_budget_percent = (unsigned)pct;
    u->retry_budget_min = (unsigned)bmin;
    atomic_init(&u->retry_balance, (int64_t)bmin * 1000);
    u->retry_on = HX_RETRY_CONNECT | HX_RETRY_RESET | HX_RETRY_TIMEOUT;
    const hx_conf_node *on = hx_conf_get(re, "on");
    if (!is_absent(on)) {
        static const struct {
            const char *name;
            unsigned bit;
        } conds[] = {{"connect_failure", HX_RETRY_CONNECT}, {"reset", HX_RETRY_RESET},
                     {"timeout", HX_RETRY_TIMEOUT},         {"502", HX_RETRY_502},
                     {"503", HX_RETRY_503},                 {"504", HX_RETRY_504}};
        if (on->kind != HX_CONF_SEQ) {
            wrong_kind(on, "a list of: connect_failure, reset, timeout, 502, 503, 504");
            ok = 0;
        } else {
            u->retry_on = 0;
            for (size_t i = 0; i < on->n; i++) {
                const hx_conf_node *it = on->items[i];
                size_t k = 0;
                for (; k < sizeof(conds) / sizeof(conds[0]); k++)
                    if (it->kind == HX_CONF_SCALAR && strcmp(it->scalar, conds[k].name) == 0)
                        break;
                if (k == sizeof(conds) / sizeof(conds[0])) {
                    hx_conf_error(it, "unknown retry condition '%s' (expected connect_failure, "
                                      "reset, timeout, 502, 503 or 504)",
                                  it->kind == HX_CONF_SCALAR ? it->scalar : "?");
                    ok = 0;
                } else {
                    u->retry_on |= conds[k].bit;
                }
            }
        }
    }

    /* protocol: http1 (default) or h2 (h2c, or h2 over TLS with `tls:`) */
    static const char *const protos[] = {"http1", "h2", NULL};
    int proto = get_enum(un, "protocol", protos, 0);
    if (proto < 0)
        ok = 0;
    u->protocol = proto == 1 ? HX_PROTO_H2 : HX_PROTO_HTTP1;
    const hx_conf_node *tn = hx_conf_get(un, "tls");
    if (!is_absent(tn)) {
        u->tls = hx_tls_client_new(tn, u->protocol == HX_PROTO_H2);
        if (u->tls == NULL)
            ok = 0;
    }

    if (!ok || !u->name) {
        upstream_free(u);
        return NULL;
    }
    return u;
}

static void parse_upstreams(build *b, const hx_conf_node *root)
{
    const hx_conf_node *m = hx_conf_get(root, "upstreams");
    if (is_absent(m))
        return;
    if (m->kind != HX_CONF_MAP) {
        wrong_kind(m, "a map of upstream name to {backends: [...]}");
        return;
    }
    b->upstreams_map = m;
    b->gen->upstreams = b_calloc(b, m->n, sizeof *b->gen->upstreams);
    if (!b->gen->upstreams)
        return;
    for (size_t i = 0; i < m->n; i++) {
        hx_upstream *u = parse_upstream(b, m->keys[i], m->items[i]);
        if (u) {
            u->index = (unsigned)b->gen->nupstreams;
            b->gen->upstreams[b->gen->nupstreams++] = u;
        }
    }
}

/* ---- routes ---- */

/* Host names are matched case-insensitively, so they are stored lower-case;
 * a leading "*." matches any subdomain (not the bare domain). */
static int parse_host(build *b, const hx_conf_node *n, hx_route *r)
{
    const char *s = n->scalar;
    const char *h = s;

    if (strncmp(s, "*.", 2) == 0) {
        r->host_wildcard = 1;
        h = s + 1; /* keep the dot: ".example.com" */
        if (h[1] == '\0') {
            hx_conf_error(n, "invalid host '%s': expected a domain after '*.', as in "
                             "*.example.com",
                          s);
            return -1;
        }
    }
    if (h[0] == '[') {
        const char *close = strchr(h, ']');
        if (close && close[1] == ':') {
            hx_conf_error(n, "host '%s' must not include a port: routes match the host name "
                             "only; write '%.*s'",
                          s, (int)(close - h + 1), h);
            return -1;
        }
        if (!close || close[1] != '\0' || close == h + 1 ||
            strspn(h + 1, "0123456789abcdefABCDEF:.") != (size_t)(close - h - 1)) {
            hx_conf_error(n, "invalid host '%s': expected a host name like example.com, "
                             "*.example.com or an IPv6 literal like [::1]",
                          s);
            return -1;
        }
    } else {
        const char *colon = strchr(h, ':');
        if (colon) {
            hx_conf_error(n, "host '%s' must not include a port: routes match the host name "
                             "only; write '%.*s'",
                          s, (int)(colon - s), s);
            return -1;
        }
        for (const char *p = h; *p; p++) {
            if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_') {
                hx_conf_error(n, "invalid host '%s': expected a host name like example.com or "
                                 "*.example.com ('*' only as the whole first label)",
                              s);
                return -1;
            }
        }
    }
    r->host = b_strdup(b, h);
    if (!r->host)
        return -1;
    for (char *p = r->host; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return 0;
}

static int parse_path(build *b, const hx_conf_node *n, hx_route *r, int kind)
{
    const char *s = n->scalar;
    if (s[0] != '/') {
        hx_conf_error(n, "'%s' must start with '/', e.g. /%s", s, s);
        return -1;
    }
    for (const char *p = s; *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == 0x7f || *p == '?' || *p == '#') {
            hx_conf_error(n, "invalid path '%s': no whitespace, control characters, '?' or "
                             "'#' (the query is not part of the match)",
                          s);
            return -1;
        }
    }
    r->path_kind = kind;
    r->path = b_strdup(b, s);
    r->path_len = strlen(s);
    return r->path ? 0 : -1;
}

static int parse_methods(build *b, const hx_conf_node *n, hx_route *r)
{
    /* A single scalar is accepted as a one-item list: "methods: GET". */
    size_t count = n->kind == HX_CONF_SEQ ? n->n : 1;
    const hx_conf_node *const *items =
        n->kind == HX_CONF_SEQ ? (const hx_conf_node *const *)n->items : &n;
    int ok = 1;

    if (n->kind != HX_CONF_SEQ && n->kind != HX_CONF_SCALAR) {
        wrong_kind(n, "a list of methods like [GET, HEAD]");
        return -1;
    }
    if (count == 0) {
        hx_conf_error(n, "must not be empty: expected a list of methods like [GET, HEAD], or "
                         "no \"methods\" key to match any method");
        return -1;
    }
    size_t nm = 0;
    r->methods = b_calloc(b, count + 1, sizeof *r->methods);
    if (!r->methods)
        return -1;
    for (size_t i = 0; i < count; i++) {
        const hx_conf_node *it = items[i];
        if (it->kind != HX_CONF_SCALAR) {
            wrong_kind(it, "a method name like GET");
            ok = 0;
            continue;
        }
        int valid = it->scalar_len > 0;
        for (const char *p = it->scalar; *p && valid; p++)
            valid = hx_tchar[(unsigned char)*p];
        if (!valid) {
            hx_conf_error(it, "invalid method '%s': expected a token like GET or POST",
                          it->scalar);
            ok = 0;
            continue;
        }
        char *m = b_strdup(b, it->scalar);
        if (!m)
            return -1;
        for (char *p = m; *p; p++)
            *p = (char)toupper((unsigned char)*p);
        r->methods[nm++] = m; /* packed: the list ends at the first NULL */
    }
    return ok ? 0 : -1;
}

static int parse_match(build *b, const hx_conf_node *rn, hx_route *r)
{
    static const char *const keys[] = {"host", "path", "prefix", "methods", NULL};
    const hx_conf_node *m = opt_map(rn, "match", keys);
    int ok = 1;
    if (!m)
        return is_absent(hx_conf_get(rn, "match")) ? 0 : -1;

    const hx_conf_node *host = opt_scalar(m, "host", "a host name like example.com");
    if (!host && !is_absent(hx_conf_get(m, "host")))
        ok = 0;
    if (host && parse_host(b, host, r) != 0)
        ok = 0;

    const hx_conf_node *path = opt_scalar(m, "path", "a path like /health");
    const hx_conf_node *prefix = opt_scalar(m, "prefix", "a path prefix like /api/");
    if ((!path && !is_absent(hx_conf_get(m, "path"))) ||
        (!prefix && !is_absent(hx_conf_get(m, "prefix"))))
        ok = 0;
    if (path && prefix) {
        const hx_conf_node *later = prefix->line > path->line ||
                                            (prefix->line == path->line && prefix->col > path->col)
                                        ? prefix
                                        : path;
        hx_conf_error(later, "'path' and 'prefix' cannot both be set: use 'path' for an exact "
                             "match or 'prefix' for a prefix match");
        ok = 0;
    } else if (path) {
        if (parse_path(b, path, r, HX_PATH_EXACT) != 0)
            ok = 0;
    } else if (prefix) {
        if (parse_path(b, prefix, r, HX_PATH_PREFIX) != 0)
            ok = 0;
    }

    const hx_conf_node *methods = hx_conf_get(m, "methods");
    if (!is_absent(methods) && parse_methods(b, methods, r) != 0)
        ok = 0;
    return ok ? 0 : -1;
}

/* "a, b, c" (truncated) for "did you mean" style messages. */
static void upstream_names(const build *b, char *buf, size_t size)
{
    const hx_conf_node *m = b->upstreams_map;
    buf[0] = '\0';
    if (!m || m->n == 0) {
        snprintf(buf, size, "none are defined (add it under 'upstreams:')");
        return;
    }
    size_t len = (size_t)snprintf(buf, size, "defined upstreams: ");
    for (size_t i = 0; i < m->n && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%s", i ? ", " : "", m->keys[i]);
}

static void route_free(hx_route *r)
{
    free(r->name);
    free(r->host);
    free(r->path);
    if (r->methods)
        for (char **m = r->methods; *m; m++)
            free(*m);
    free(r->methods);
    free(r->filters); /* the instances are owned by gen->instances */
}

static int parse_route(build *b, const hx_conf_node *rn, size_t idx, hx_route *r)
{
    static const char *const keys[] = {"name", "match", "upstream", "handler", "filters", NULL};
    hx_gen *g = b->gen;
    int ok = 1;

    if (rn->kind == HX_CONF_NULL) {
        hx_conf_error(rn, "empty route: expected a map with 'upstream:' or 'handler:'");
        return -1;
    }
    if (item_map(rn, keys) != 0)
        return -1;
    r->node = rn;

    const hx_conf_node *name = opt_scalar(rn, "name", "a route name");
    if (!name && !is_absent(hx_conf_get(rn, "name")))
        ok = 0;
    if (name) {
        for (size_t j = 0; j < idx; j++) {
            if (g->routes[j].name && strcmp(g->routes[j].name, name->scalar) == 0) {
                hx_conf_error(name, "duplicate route name '%s' (first at line %u): names must "
                                    "be unique",
                              name->scalar, g->routes[j].node->line);
                ok = 0;
                break;
            }
        }
        r->name = b_strdup(b, name->scalar);
    }

    if (parse_match(b, rn, r) != 0)
        ok = 0;

    const hx_conf_node *up = hx_conf_get(rn, "upstream");
    const hx_conf_node *hd = hx_conf_get(rn, "handler");
    if (is_absent(up))
        up = NULL;
    if (is_absent(hd))
        hd = NULL;
    /* With both, the handler answers and the upstream is where its
     * subrequests go by default (api->subreq_new with no upstream name). */
    if (!up && !hd) {
        hx_conf_error(rn, "missing 'upstream' or 'handler': a route needs one of them");
        ok = 0;
    }

    if (up) {
        if (up->kind != HX_CONF_SCALAR) {
            wrong_kind(up, "an upstream name");
            ok = 0;
        } else {
            r->upstream = hx_gen_upstream(g, up->scalar);
            if (!r->upstream) {
                /* Declared but invalid: its own errors already say why. */
                if (!hx_conf_get(b->upstreams_map, up->scalar)) {
                    char names[256];
                    upstream_names(b, names, sizeof names);
                    hx_conf_error(up, "unknown upstream '%s'; %s", up->scalar, names);
                }
                ok = 0;
            }
        }
    }
    /* Instances are created even after errors above so module config errors
     * show up in the same run. */
    if (hd) {
        r->handler = new_instance(b, hd, HX_KIND_HANDLER);
        if (!r->handler)
            ok = 0;
    }

    const hx_conf_node *fl = hx_conf_get(rn, "filters");
    size_t nown = 0;
    if (!is_absent(fl) && fl->kind != HX_CONF_SEQ) {
        wrong_kind(fl, "a sequence (list) of filter modules");
        ok = 0;
    } else if (!is_absent(fl)) {
        nown = fl->n;
    }
    r->filters = b_calloc(b, g->nglobal + nown, sizeof *r->filters);
    if (!r->filters)
        return -1;
    for (size_t i = 0; i < g->nglobal; i++)
        if (g->global[i]->mod->filter)
            r->filters[r->nfilters++] = g->global[i];
    for (size_t i = 0; i < nown; i++) {
        hx_instance *inst = new_instance(b, fl->items[i], HX_KIND_FILTER);
        if (inst)
            r->filters[r->nfilters++] = inst;
        else
            ok = 0;
    }
    return ok && !b->oom ? 0 : -1;
}

static void parse_routes(build *b, const hx_conf_node *root)
{
    const hx_conf_node *seq =
        req_seq(root, "routes", "{match: ..., upstream: NAME} or {handler: MODULE}");
    if (!seq)
        return;
    hx_gen *g = b->gen;
    g->routes = b_calloc(b, seq->n, sizeof *g->routes);
    if (!g->routes)
        return;
    /* Failed routes stay in the array (so later duplicate-name checks see
     * them); the generation is discarded anyway when any error exists. */
    for (size_t i = 0; i < seq->n; i++) {
        parse_route(b, seq->items[i], i, &g->routes[i]);
        g->nroutes++;
    }
}

/* ---- generation ---- */

static void (*gen_free_hook)(hx_gen *g);

void hx_gen_set_free_hook(void (*fn)(hx_gen *g))
{
    gen_free_hook = fn;
}

static void gen_free(hx_gen *g, int free_tree)
{
    if (!g)
        return;
    /* Module configs first: they may still point into the tree. */
    for (size_t i = 0; i < g->ninstances; i++)
        hx_instance_free(g->instances[i]);
    free(g->instances);
    free(g->global);
    for (size_t i = 0; i < g->nroutes; i++)
        route_free(&g->routes[i]);
    free(g->routes);
    for (size_t i = 0; i < g->nupstreams; i++)
        upstream_free(g->upstreams[i]);
    free(g->upstreams);
    for (size_t i = 0; i < g->nlisteners; i++) {
        free(g->listeners[i].name);
        free(g->listeners[i].address);
        hx_tls_free(g->listeners[i].tls);
    }
    free(g->listeners);
    free(g->trusted);
    free(g->logging.error_log);
    free(g->logging.access_log);
    free(g->module_dir);
    free(g->process.user);
    free(g->process.group);
    free(g->process.pid_file);
    free(g->process.state_file);
    if (free_tree)
        hx_conf_tree_free(g->tree);
    free(g);
}

static void validate(build *b, const char *path, const char *override, const char *def)
{
    static const char *const keys[] = {"workers",  "module_path",     "modules", "listeners",
                                       "trusted_proxies", "timeouts", "limits",  "upstreams",
                                       "routes",   "logging",         "http2",   "user",
                                       "group",    "pid_file",        "state_file", "io", NULL};
    const hx_conf_node *root = hx_conf_root(b->tree);

    if (!root || root->kind == HX_CONF_NULL) {
        hx_conf_error_plain(b->tree, "%s: the configuration is empty: at least 'listeners:' and "
                                     "'routes:' are required",
                            path);
        return;
    }
    if (root->kind != HX_CONF_MAP) {
        wrong_kind(root, "a map of top-level settings (listeners:, routes:, ...)");
        return;
    }
    hx_conf_check_keys(root, keys);

    /* Sections in the order the reference documents them, so errors come
     * out roughly in file order; instance slots follow declaration order
     * (modules, upstreams, routes) as the file comment says. */
    parse_workers(b, root);
    parse_io(b, root);
    parse_module_dir(b, root, override, def);
    if (!b->gen->module_dir)
        return;
    parse_modules(b, root);
    parse_listeners(b, root);
    parse_http2(b, root);
    parse_trusted(b, root);
    parse_timeouts(b, root);
    parse_limits(b, root);
    parse_upstreams(b, root);
    parse_routes(b, root);
    parse_logging(b, root);
    parse_process(b, root);
}

hx_gen *hx_gen_build(const char *path, const char *module_dir_override,
                     const char *default_module_dir, hx_modreg *reg, hx_conf_tree **tree)
{
    build b = {.reg = reg};

    *tree = NULL;
    b.tree = hx_conf_tree_new();
    if (!b.tree)
        return NULL; /* nothing to report into: the caller says "out of memory" */
    b.gen = calloc(1, sizeof *b.gen);
    if (!b.gen) {
        note_oom(&b);
        *tree = b.tree;
        return NULL;
    }
    b.gen->tree = b.tree;
    atomic_init(&b.gen->refs, 1);

    /* A tree with syntax errors is partial: checking it would only add
     * noise after the real problem. */
    if (hx_conf_load(b.tree, path) == 0)
        validate(&b, path, module_dir_override, default_module_dir);
    else if (hx_conf_error_count(b.tree) == 0)
        hx_conf_error_plain(b.tree, "%s: cannot load the configuration", path);

    if (hx_conf_error_count(b.tree) > 0 || b.oom) {
        gen_free(b.gen, 0);
        *tree = b.tree;
        return NULL;
    }
    b.gen->id = ++next_gen_id;
    return b.gen;
}

void hx_gen_ref(hx_gen *g)
{
    atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
}

void hx_gen_unref(hx_gen *g)
{
    if (!g)
        return;
    /* acq_rel: every worker's last use happens-before the free. */
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1) {
        if (gen_free_hook)
            gen_free_hook(g);
        gen_free(g, 1);
    }
}

hx_upstream *hx_gen_upstream(const hx_gen *g, const char *name)
{
    for (size_t i = 0; i < g->nupstreams; i++)
        if (strcmp(g->upstreams[i]->name, name) == 0)
            return g->upstreams[i];
    return NULL;
}

char *hx_config_pid_file(const char *path, char *err, size_t errlen)
{
    build b = {0};
    char *out = NULL;
    b.tree = hx_conf_tree_new();
    if (b.tree == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    const hx_conf_node *root = NULL, *f = NULL;
    if (hx_conf_load(b.tree, path) != 0) {
        snprintf(err, errlen, "%s", hx_conf_error_count(b.tree) ? hx_conf_error_at(b.tree, 0)
                                                                   : "cannot load the configuration");
    } else if ((root = hx_conf_root(b.tree)) == NULL || root->kind != HX_CONF_MAP ||
               (f = hx_conf_get(root, "pid_file")) == NULL || f->kind != HX_CONF_SCALAR ||
               f->scalar[0] == '\0') {
        snprintf(err, errlen, "%s sets no pid_file: the running heliosd cannot be found", path);
    } else if ((out = file_relative(&b, f)) == NULL) {
        snprintf(err, errlen, "out of memory");
    }
    hx_conf_tree_free(b.tree);
    return out;
}
