/*
 * ctl.c - a test-only handler that drives the host API's control plane from
 * HTTP, so integration tests can change upstreams at runtime before the
 * admin API exists. Route `/_ctl/` to it (`handler: ctl`) and call:
 *
 *   GET /_ctl/add?upstream=U&name=N&address=A[&weight=W]   ctl_backend_add
 *   GET /_ctl/remove?upstream=U&name=N                      ctl_backend_remove
 *   GET /_ctl/weight?upstream=U&name=N&weight=W             ctl_backend_weight
 *   GET /_ctl/drain?upstream=U&name=N&on=1|0                ctl_backend_drain
 *   GET /_ctl/health?upstream=U&name=N&on=1|0               backend_set_healthy
 *   GET /_ctl/balancer?upstream=U&module=M                  ctl_balancer_set
 *   GET /_ctl/list?upstream=U                               ctl_backends_walk
 *
 * Changes answer 200 "ok\n"; list answers 200 with JSON
 * {"upstream":U,"balancer":M,"backends":[{"name","address","weight",
 * "healthy","draining","usable","inflight","requests","failures"},...]}
 * (ctl_backends_walk, in list order). Anything refused answers 400 with
 * the core's message (or ours for a malformed query) and a newline.
 *
 * The control calls may block (they share a lock with reloads), which is
 * fine for a test module and why a real one would run them on a service
 * thread. Never ship this: it lets any client reconfigure the proxy.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <helios.h>

#define CTL_NAME "ctl"
#define CTL_PREFIX "/_ctl/"
#define CTL_ERR_MAX 512
#define CTL_FIELD_MAX 1024 /* one decoded query value */

static const helios_host_api *api;

/* ---- query string ---- */

static int ctl_hex(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Decodes %XX and '+' of P[0..N) into OUT (NUL-terminated). Returns 0, or
 * -1 when it does not fit, a %-escape is malformed, or it decodes to NUL. */
static int ctl_decode(const char *p, size_t n, char *out, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)p[i];
        if (ch == '+') {
            ch = ' ';
        } else if (ch == '%') {
            int hi = i + 2 < n ? ctl_hex((unsigned char)p[i + 1]) : -1;
            int lo = i + 2 < n ? ctl_hex((unsigned char)p[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return -1;
            ch = hi * 16 + lo;
            i += 2;
        }
        if (ch == 0 || o + 1 >= size)
            return -1;
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    return 0;
}

/*
 * The decoded value of KEY in the request's query, in request memory, or
 * NULL when absent. *BAD is set when the value is present but malformed.
 */
static const char *ctl_arg(helios_request *r, const char *key, int *bad)
{
    helios_buf q = api->req_query(r);
    if (q.ptr == NULL)
        return NULL;
    size_t klen = strlen(key);
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p != NULL && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(stop - p));
        const char *kend = eq ? eq : stop;
        if ((size_t)(kend - p) == klen && memcmp(p, key, klen) == 0) {
            const char *v = eq ? eq + 1 : stop;
            size_t vlen = (size_t)(stop - v);
            /* decoding never lengthens; a longer value fails to fit */
            size_t cap = vlen + 1 < CTL_FIELD_MAX ? vlen + 1 : CTL_FIELD_MAX;
            char *out = api->req_alloc(r, cap);
            if (out == NULL || ctl_decode(v, vlen, out, cap) != 0) {
                *bad = 1;
                return NULL;
            }
            return out;
        }
        p = amp ? amp + 1 : NULL;
    }
    return NULL;
}

/* ---- responses ---- */

static int ctl_reply(helios_ctx *c, int status, const char *body)
{
    if (api->respond(c->req, status, "text/plain", body, strlen(body)) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

static int ctl_fail(helios_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int ctl_fail(helios_ctx *c, const char *fmt, ...)
{
    char msg[CTL_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg) - 1, fmt, ap);
    va_end(ap);
    strcat(msg, "\n");
    return ctl_reply(c, 400, msg);
}

/* Parses a decimal in [MIN, MAX]; 0 ok, -1 otherwise. */
static int ctl_number(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*end != '\0' || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* ---- list: JSON of one upstream ---- */

typedef struct ctl_json {
    char *p;
    size_t len, cap;
    int oom;
    size_t count;
} ctl_json;

static void ctl_put(ctl_json *j, const char *s, size_t n)
{
    if (j->oom)
        return;
    if (j->len + n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 1024;
        while (cap < j->len + n + 1)
            cap *= 2;
        char *np = realloc(j->p, cap);
        if (np == NULL) {
            j->oom = 1;
            return;
        }
        j->p = np;
        j->cap = cap;
    }
    memcpy(j->p + j->len, s, n);
    j->len += n;
    j->p[j->len] = '\0';
}

static void ctl_puts(ctl_json *j, const char *s)
{
    ctl_put(j, s, strlen(s));
}

/* A JSON string; control bytes, quotes and backslashes escaped. */
static void ctl_put_str(ctl_json *j, const char *s)
{
    ctl_put(j, "\"", 1);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == '"' || ch == '\\') {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", ch);
            ctl_puts(j, esc);
        } else {
            ctl_put(j, s, 1);
        }
    }
    ctl_put(j, "\"", 1);
}

/* Runs under the core's control lock: reads only, no ctl_* calls. */
static void ctl_list_one(void *arg, const helios_backend *b)
{
    ctl_json *j = arg;
    char num[200];
    ctl_puts(j, j->count++ ? ",{\"name\":" : "{\"name\":");
    ctl_put_str(j, api->backend_name(b));
    ctl_puts(j, ",\"address\":");
    ctl_put_str(j, api->backend_address(b));
    snprintf(num, sizeof(num),
             ",\"weight\":%u,\"healthy\":%s,\"draining\":%s,\"usable\":%s,\"inflight\":%u,"
             "\"requests\":%llu,\"failures\":%llu}",
             api->backend_weight(b), api->backend_healthy(b) ? "true" : "false",
             api->backend_draining(b) ? "true" : "false", api->backend_usable(b) ? "true" : "false",
             api->backend_inflight(b), (unsigned long long)api->backend_requests(b),
             (unsigned long long)api->backend_failures(b));
    ctl_puts(j, num);
}

static int ctl_list(helios_ctx *c, const char *upstream)
{
    ctl_json j = {0};
    const char *bal = api->ctl_balancer_name(upstream);
    if (bal == NULL)
        return ctl_fail(c, "no upstream named '%s'", upstream);
    ctl_puts(&j, "{\"upstream\":");
    ctl_put_str(&j, upstream);
    ctl_puts(&j, ",\"balancer\":");
    ctl_put_str(&j, bal);
    ctl_puts(&j, ",\"backends\":[");
    long n = api->ctl_backends_walk(upstream, ctl_list_one, &j);
    ctl_puts(&j, "]}\n");
    int rc;
    if (n < 0) {
        rc = ctl_fail(c, "no upstream named '%s'", upstream); /* removed by a reload meanwhile */
    } else if (j.oom) {
        rc = HELIOS_ERROR;
    } else {
        rc = api->respond(c->req, 200, "application/json", j.p, j.len) == 0 ? HELIOS_RESPONDED
                                                                            : HELIOS_ERROR;
    }
    free(j.p);
    return rc;
}

/* ---- health: what a health module would do, through the same handle ---- */

typedef struct ctl_find {
    const char *name;
    const helios_backend *found;
} ctl_find;

static void ctl_find_one(void *arg, const helios_backend *b)
{
    ctl_find *f = arg;
    if (strcmp(api->backend_name(b), f->name) == 0)
        f->found = b;
}

/* ---- the handler ---- */

static int ctl_handle(helios_ctx *c)
{
    helios_request *r = c->req;
    helios_buf path = api->req_path(r);
    size_t plen = strlen(CTL_PREFIX);
    if (path.len < plen || memcmp(path.ptr, CTL_PREFIX, plen) != 0)
        return ctl_fail(c, "control calls live under %s", CTL_PREFIX);
    char op[32];
    size_t olen = path.len - plen;
    if (olen == 0 || olen >= sizeof(op))
        return ctl_fail(c, "unknown control call '%.*s'", (int)olen, path.ptr + plen);
    memcpy(op, path.ptr + plen, olen);
    op[olen] = '\0';

    static const char *const ops[] = {"add",    "remove",   "weight", "drain",
                                      "health", "balancer", "list",   NULL};
    const char *const *known = ops;
    while (*known && strcmp(*known, op) != 0)
        known++;
    if (*known == NULL)
        return ctl_fail(c,
                        "unknown control call '%s' (add, remove, weight, drain, health, "
                        "balancer, list)",
                        op);

    int bad = 0;
    const char *upstream = ctl_arg(r, "upstream", &bad);
    const char *name = ctl_arg(r, "name", &bad);
    const char *address = ctl_arg(r, "address", &bad);
    const char *weight_s = ctl_arg(r, "weight", &bad);
    const char *on_s = ctl_arg(r, "on", &bad);
    const char *module = ctl_arg(r, "module", &bad);
    if (bad)
        return ctl_fail(c, "malformed query string (bad %%-escape, NUL, or a value over %d bytes)",
                        CTL_FIELD_MAX - 1);
    if (upstream == NULL)
        return ctl_fail(c, "missing upstream=");

    char err[CTL_ERR_MAX] = "";
    unsigned long weight = 1, on = 0;
    int rc = -1;
    if (strcmp(op, "list") == 0)
        return ctl_list(c, upstream);
    if (strcmp(op, "balancer") == 0) {
        if (module == NULL)
            return ctl_fail(c, "missing module=");
        rc = api->ctl_balancer_set(upstream, module, err, sizeof(err));
    } else {
        if (name == NULL)
            return ctl_fail(c, "missing name=");
        if (strcmp(op, "add") == 0) {
            if (address == NULL)
                return ctl_fail(c, "missing address=");
            /* the core checks the range; we only need a number */
            if (weight_s && ctl_number(weight_s, 0, 0xffffffffUL, &weight) != 0)
                return ctl_fail(c, "weight '%s' is not a number", weight_s);
            rc = api->ctl_backend_add(upstream, name, address, (uint32_t)weight, err, sizeof(err));
        } else if (strcmp(op, "remove") == 0) {
            rc = api->ctl_backend_remove(upstream, name, err, sizeof(err));
        } else if (strcmp(op, "weight") == 0) {
            if (weight_s == NULL || ctl_number(weight_s, 0, 0xffffffffUL, &weight) != 0)
                return ctl_fail(c, "weight= must be a number");
            rc = api->ctl_backend_weight(upstream, name, (uint32_t)weight, err, sizeof(err));
        } else { /* drain or health */
            if (on_s == NULL || ctl_number(on_s, 0, 1, &on) != 0)
                return ctl_fail(c, "on= must be 0 or 1");
            if (strcmp(op, "drain") == 0) {
                rc = api->ctl_backend_drain(upstream, name, (int)on, err, sizeof(err));
            } else {
                ctl_find f = {name, NULL};
                if (api->ctl_backends_walk(upstream, ctl_find_one, &f) < 0)
                    return ctl_fail(c, "no upstream named '%s'", upstream);
                if (f.found == NULL)
                    return ctl_fail(c, "upstream '%s' has no backend named '%s'", upstream, name);
                /* The handle stays valid until its generation ends
                 * (control.c keeps removed backends); a reload racing
                 * this call is not a concern for a test module. */
                api->backend_set_healthy((helios_backend *)f.found, (int)on, "set by /_ctl/health");
                rc = 0;
            }
        }
    }
    if (rc != 0)
        return ctl_fail(c, "%s", err[0] ? err : "refused");
    return ctl_reply(c, 200, "ok\n");
}

/* ---- module descriptor ---- */

static const helios_handler_hooks ctl_handler_hooks = {
    .size = sizeof(helios_handler_hooks),
    .handle = ctl_handle, /* one control call per request, answered at once */
};

static const helios_module ctl_module = {
    HELIOS_MODULE_HEADER(CTL_NAME, "0.0.0"),
    .config_new = NULL, /* no keys */
    .handler = &ctl_handler_hooks,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &ctl_module;
}
