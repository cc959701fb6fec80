/*
 * headers.c - a filter that sets, adds and removes request and response
 * headers, with a few variables expanded per request.
 *
 * Values are compiled once per configuration generation into a list of
 * literal and variable pieces, so a request only measures, allocates once
 * from the request arena and copies. Values that could split a header line
 * (CR, LF) are refused when the configuration is loaded, never at request
 * time; a variable's own bytes come from parsed request state, and the core
 * refuses any value with CR/LF/NUL anyway.
 *
 * Request headers are changed in on_request_headers: that is the last
 * moment they can be, since the request may go upstream right after.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include <helios.h>
#include <helios/util/http.h>

#define HD_NAME "headers"
#define HD_DEFAULT_ID_HEADER "X-Request-ID"

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const hd_keys[] = {"request", "response", "request_id_header", NULL};
static const char *const hd_phase_keys[] = {"set", "add", "remove", NULL};

/*
 * Framing and hop-by-hop headers belong to the core: touching them would
 * desynchronise the message from its framing (request smuggling, cut
 * responses) or be dropped at the next hop anyway.
 */
static const char *const hd_reserved[] = {
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    NULL,
};

enum {
    HD_LIT,
    HD_CLIENT_IP,
    HD_HOST,
    HD_REQUEST_ID,
    HD_UPSTREAM,
    HD_ROUTE,
    HD_SCHEME,
    HD_TLS_VERSION,
    HD_TLS_CIPHER,
    HD_TLS_SNI,
    HD_TLS_CLIENT_SUBJECT,
    HD_TLS_CLIENT_VERIFIED,
    HD_LAST = HD_TLS_CLIENT_VERIFIED
};

static const char *const hd_var_names[] = {
    [HD_CLIENT_IP] = "client_ip",
    [HD_HOST] = "host",
    [HD_REQUEST_ID] = "request_id",
    [HD_UPSTREAM] = "upstream",
    [HD_ROUTE] = "route",
    [HD_SCHEME] = "scheme",
    [HD_TLS_VERSION] = "tls_version",
    [HD_TLS_CIPHER] = "tls_cipher",
    [HD_TLS_SNI] = "tls_sni",
    [HD_TLS_CLIENT_SUBJECT] = "tls_client_subject",
    [HD_TLS_CLIENT_VERIFIED] = "tls_client_verified",
};

/* One piece of a value: literal bytes (pointing into the config text) or a
 * variable. */
typedef struct hd_piece {
    int kind;
    const char *lit;
    size_t len;
} hd_piece;

typedef struct hd_value {
    hd_piece *pieces;
    size_t npieces;
    size_t lit_len; /* sum of the literal pieces */
    int has_vars;
    const char *constant; /* the text itself when nothing needs expanding */
} hd_value;

typedef struct hd_op {
    const char *name;
    hd_value value; /* unused for remove */
} hd_op;

typedef struct hd_phase {
    hd_op *remove, *set, *add;
    size_t nremove, nset, nadd;
} hd_phase;

typedef struct hd_config {
    hd_phase request, response;
    const char *id_header; /* where $request_id is read */
} hd_config;

static int hd_is_ident(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_';
}

/* Checks a configured header name; reports at N and returns -1 if bad. */
static int hd_check_name(const helios_conf *n, const char *name)
{
    if (name == NULL || !helios_http_is_token(name)) {
        api->conf_error(n, "invalid header name '%s': use letters, digits and !#$%%&'*+-.^_`|~",
                        name ? name : "");
        return -1;
    }
    for (const char *const *r = hd_reserved; *r; r++) {
        if (helios_http_name_eq(name, *r)) {
            api->conf_error(n, "header '%s' is managed by heliosd and cannot be changed here",
                            name);
            return -1;
        }
    }
    return 0;
}

static int hd_add_piece(hd_value *v, int kind, const char *lit, size_t len)
{
    hd_piece *p = realloc(v->pieces, (v->npieces + 1) * sizeof(*p));
    if (p == NULL)
        return -1;
    v->pieces = p;
    p[v->npieces++] = (hd_piece){kind, lit, len};
    if (kind == HD_LIT)
        v->lit_len += len;
    else
        v->has_vars = 1;
    return 0;
}

/*
 * Compiles TEXT: `$name` or `${name}` is a variable, `$$` a literal `$`, a
 * `$` not followed by a name is literal. An unknown name is an error (a
 * typo would otherwise ship a literal "$reqest_id" to every backend).
 */
static int hd_compile(const helios_conf *n, const char *text, hd_value *v)
{
    memset(v, 0, sizeof(*v));
    if (strpbrk(text, "\r\n") != NULL) {
        api->conf_error(n, "the value contains a line break (CR or LF), which would split "
                           "the header; remove it");
        return -1;
    }
    const char *p = text, *lit = text;
    while (*p) {
        if (*p != '$') {
            p++;
            continue;
        }
        if (p[1] == '$') {
            /* keep the first '$' as literal, skip the second */
            if (hd_add_piece(v, HD_LIT, lit, (size_t)(p + 1 - lit)) != 0)
                goto oom;
            p += 2;
            lit = p;
            continue;
        }
        int braced = p[1] == '{';
        const char *s = p + 1 + braced, *e = s;
        while (hd_is_ident((unsigned char)*e))
            e++;
        if (e == s || (braced && *e != '}')) {
            if (braced) {
                api->conf_error(n, "unterminated or empty '${' in the value");
                return -1;
            }
            p++; /* a lone '$' */
            continue;
        }
        int kind = -1;
        for (int k = HD_CLIENT_IP; k <= HD_LAST; k++)
            if ((size_t)(e - s) == strlen(hd_var_names[k]) &&
                strncmp(s, hd_var_names[k], (size_t)(e - s)) == 0)
                kind = k;
        if (kind < 0) {
            api->conf_error(n,
                            "unknown variable '$%.*s': use $client_ip, $host, $request_id, "
                            "$upstream, $route, $scheme, $tls_version, $tls_cipher, "
                            "$tls_sni, $tls_client_subject or $tls_client_verified ($$ for "
                            "a literal $)",
                            (int)(e - s), s);
            return -1;
        }
        if (p > lit && hd_add_piece(v, HD_LIT, lit, (size_t)(p - lit)) != 0)
            goto oom;
        if (hd_add_piece(v, kind, NULL, 0) != 0)
            goto oom;
        p = e + braced;
        lit = p;
    }
    if (p > lit && hd_add_piece(v, HD_LIT, lit, (size_t)(p - lit)) != 0)
        goto oom;
    if (!v->has_vars && strstr(text, "$$") == NULL)
        v->constant = text;
    return 0;
oom:
    api->conf_error(n, "out of memory");
    return -1;
}

/* Values of `add` may be one string or a list of strings (several lines). */
static int hd_parse_map(const helios_conf *map, int allow_list, hd_op **out, size_t *nout)
{
    int kind = api->conf_kind(map);
    if (kind == HELIOS_CONF_NULL)
        return 0;
    if (kind != HELIOS_CONF_MAP) {
        api->conf_error(map, "expected a map of header name: value");
        return -1;
    }
    size_t n = api->conf_len(map), total = 0;
    for (size_t i = 0; i < n; i++) {
        const helios_conf *vn = api->conf_at(map, i);
        total += (allow_list && api->conf_kind(vn) == HELIOS_CONF_SEQ) ? api->conf_len(vn) : 1;
    }
    if (total == 0)
        return 0;
    hd_op *ops = calloc(total, sizeof(*ops));
    if (ops == NULL) {
        api->conf_error(map, "out of memory");
        return -1;
    }
    *out = ops;
    int bad = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = api->conf_key_at(map, i);
        const helios_conf *vn = api->conf_at(map, i);
        if (hd_check_name(vn, name) != 0)
            bad = 1;
        size_t m = 1;
        int is_list = allow_list && api->conf_kind(vn) == HELIOS_CONF_SEQ;
        if (is_list)
            m = api->conf_len(vn);
        for (size_t j = 0; j < m; j++) {
            const helios_conf *item = is_list ? api->conf_at(vn, j) : vn;
            const char *text = api->conf_scalar(item);
            if (text == NULL) {
                api->conf_error(item, "the value of header '%s' must be a string%s",
                                name ? name : "", allow_list ? " or a list of strings" : "");
                bad = 1;
                k++;
                continue;
            }
            ops[k].name = name;
            if (hd_compile(item, text, &ops[k].value) != 0)
                bad = 1;
            k++;
        }
    }
    *nout = k;
    return bad ? -1 : 0;
}

static int hd_parse_remove(const helios_conf *seq, hd_op **out, size_t *nout)
{
    int kind = api->conf_kind(seq);
    if (kind == HELIOS_CONF_NULL)
        return 0;
    if (kind != HELIOS_CONF_SEQ) {
        api->conf_error(seq, "expected a list of header names");
        return -1;
    }
    size_t n = api->conf_len(seq);
    if (n == 0)
        return 0;
    hd_op *ops = calloc(n, sizeof(*ops));
    if (ops == NULL) {
        api->conf_error(seq, "out of memory");
        return -1;
    }
    *out = ops;
    *nout = n;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const helios_conf *item = api->conf_at(seq, i);
        ops[i].name = api->conf_scalar(item);
        if (hd_check_name(item, ops[i].name) != 0)
            bad = 1;
    }
    return bad ? -1 : 0;
}

static int hd_parse_phase(const helios_conf *conf, const char *key, hd_phase *ph)
{
    const helios_conf *n = api->conf_get(conf, key);
    int kind = api->conf_kind(n);
    if (kind == HELIOS_CONF_NULL)
        return 0;
    if (kind != HELIOS_CONF_MAP) {
        api->conf_error(n, "expected a map with set, add and/or remove");
        return -1;
    }
    int bad = api->conf_check_keys(n, hd_phase_keys) > 0;
    /* Parse all three even after an error, so one run reports every problem. */
    if (hd_parse_map(api->conf_get(n, "set"), 0, &ph->set, &ph->nset) != 0)
        bad = 1;
    if (hd_parse_map(api->conf_get(n, "add"), 1, &ph->add, &ph->nadd) != 0)
        bad = 1;
    if (hd_parse_remove(api->conf_get(n, "remove"), &ph->remove, &ph->nremove) != 0)
        bad = 1;
    return bad ? -1 : 0;
}

static void hd_free_ops(hd_op *ops, size_t n)
{
    for (size_t i = 0; ops && i < n; i++)
        free(ops[i].value.pieces);
    free(ops);
}

static void hd_config_free(void *cfg)
{
    hd_config *c = cfg;
    hd_phase *phases[] = {&c->request, &c->response};
    for (size_t i = 0; i < 2; i++) {
        hd_free_ops(phases[i]->set, phases[i]->nset);
        hd_free_ops(phases[i]->add, phases[i]->nadd);
        hd_free_ops(phases[i]->remove, phases[i]->nremove);
    }
    free(c);
}

static int hd_config_new(const helios_conf *conf, void **cfg)
{
    int kind = api->conf_kind(conf);
    if (kind == HELIOS_CONF_NULL) {
        conf = NULL;
    } else if (kind != HELIOS_CONF_MAP) {
        api->conf_error(conf, "expected a map with request and/or response");
        return -1;
    }
    hd_config *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        api->log(HELIOS_LOG_ERROR, HD_NAME, "out of memory");
        return -1;
    }
    int bad = api->conf_check_keys(conf, hd_keys) > 0;
    if (hd_parse_phase(conf, "request", &c->request) != 0)
        bad = 1;
    if (hd_parse_phase(conf, "response", &c->response) != 0)
        bad = 1;
    if (api->conf_str(conf, "request_id_header", HD_DEFAULT_ID_HEADER, &c->id_header) < 0)
        bad = 1;
    else if (hd_check_name(api->conf_get(conf, "request_id_header"), c->id_header) != 0)
        bad = 1;
    if (bad) {
        hd_config_free(c);
        return -1;
    }
    *cfg = c;
    return 0;
}

/* ---- expansion ---- */

/* The variables of one request, looked up once per phase and only if some
 * value uses them. */
typedef struct hd_vars {
    helios_buf v[HD_LAST + 1];
    char ip[INET6_ADDRSTRLEN];
} hd_vars;

static void hd_vars_load(helios_ctx *c, int response, hd_vars *vars)
{
    const hd_config *cfg = c->cfg;
    helios_request *r = c->req;
    memset(vars, 0, sizeof(*vars));

    const struct sockaddr *sa = api->req_client(r);
    if (sa && sa->sa_family == AF_INET &&
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, vars->ip, sizeof(vars->ip)))
        vars->v[HD_CLIENT_IP] = (helios_buf){vars->ip, strlen(vars->ip)};
    else if (sa && sa->sa_family == AF_INET6 &&
             inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, vars->ip,
                       sizeof(vars->ip)))
        vars->v[HD_CLIENT_IP] = (helios_buf){vars->ip, strlen(vars->ip)};

    vars->v[HD_HOST] = api->req_host(r);
    vars->v[HD_REQUEST_ID] = api->req_header(r, cfg->id_header);
    const char *route = api->req_route(r);
    vars->v[HD_ROUTE] = (helios_buf){route ? route : "", route ? strlen(route) : 0};
    if (response) {
        helios_req_stats st = {.size = sizeof(st)};
        if (api->req_stats(r, &st) == 0 && st.upstream)
            vars->v[HD_UPSTREAM] = (helios_buf){st.upstream, strlen(st.upstream)};
    }
    helios_tls_info tls = {.size = sizeof(tls)};
    if (HELIOS_API_HAS(api, req_tls) && api->req_tls(r, &tls) == 0) {
        vars->v[HD_SCHEME] = (helios_buf){"https", 5};
        const char *t[] = {tls.version, tls.cipher, tls.sni, tls.client_subject,
                           tls.client_verified ? "1" : "0"};
        for (int k = 0; k < 5; k++)
            if (t[k])
                vars->v[HD_TLS_VERSION + k] = (helios_buf){t[k], strlen(t[k])};
    } else {
        vars->v[HD_SCHEME] = (helios_buf){"http", 4};
    }
    for (int k = 0; k <= HD_LAST; k++)
        if (vars->v[k].ptr == NULL)
            vars->v[k] = (helios_buf){"", 0};
}

/* V expanded into the request arena (NUL-terminated), or NULL when out of
 * memory or over the arena's 1 MiB allocation cap. */
static const char *hd_expand(helios_request *r, const hd_value *v, const hd_vars *vars)
{
    size_t len = v->lit_len;
    for (size_t i = 0; i < v->npieces; i++)
        if (v->pieces[i].kind != HD_LIT)
            len += vars->v[v->pieces[i].kind].len;
    char *out = api->req_alloc(r, len + 1), *p = out;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < v->npieces; i++) {
        const hd_piece *pc = &v->pieces[i];
        const char *src = pc->kind == HD_LIT ? pc->lit : vars->v[pc->kind].ptr;
        size_t n = pc->kind == HD_LIT ? pc->len : vars->v[pc->kind].len;
        memcpy(p, src, n);
        p += n;
    }
    *p = '\0';
    return out;
}

/* Remove, then set, then add: so `remove: [X]` plus `add: {X: ...}` replaces
 * every X with the configured ones. */
static int hd_apply(helios_ctx *c, const hd_phase *ph, int response)
{
    helios_request *r = c->req;
    int (*set)(helios_request *, const char *, const char *) =
        response ? api->resp_header_set : api->req_header_set;
    int (*add)(helios_request *, const char *, const char *) =
        response ? api->resp_header_add : api->req_header_add;
    int (*rm)(helios_request *, const char *) =
        response ? api->resp_header_remove : api->req_header_remove;
    hd_vars vars = {0};
    int loaded = 0;

    for (size_t i = 0; i < ph->nremove; i++)
        rm(r, ph->remove[i].name);
    for (int pass = 0; pass < 2; pass++) {
        const hd_op *ops = pass == 0 ? ph->set : ph->add;
        size_t n = pass == 0 ? ph->nset : ph->nadd;
        for (size_t i = 0; i < n; i++) {
            const hd_value *v = &ops[i].value;
            const char *text;
            if (v->constant) {
                text = v->constant;
            } else {
                if (v->has_vars && !loaded) {
                    hd_vars_load(c, response, &vars);
                    loaded = 1;
                }
                if ((text = hd_expand(r, v, &vars)) == NULL) {
                    api->log(HELIOS_LOG_ERROR, HD_NAME, "cannot expand header '%s': out of memory",
                             ops[i].name);
                    return HELIOS_ERROR;
                }
            }
            if ((pass == 0 ? set : add)(r, ops[i].name, text) != 0)
                /* only a variable can bring a refused byte; skip that header
                 * rather than fail the whole request */
                api->log(HELIOS_LOG_WARN, HD_NAME, "header '%s' refused by the core; not %s",
                         ops[i].name, pass == 0 ? "set" : "added");
        }
    }
    return HELIOS_CONTINUE;
}

/* ---- hooks ---- */

static int hd_on_request_headers(helios_ctx *c)
{
    const hd_config *cfg = c->cfg;
    return hd_apply(c, &cfg->request, 0);
}

static int hd_on_response_headers(helios_ctx *c)
{
    const hd_config *cfg = c->cfg;
    return hd_apply(c, &cfg->response, 1);
}

/* ---- module descriptor ---- */

static const helios_filter_hooks hd_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = hd_on_request_headers,   /* request remove/set/add */
    .on_request_body = NULL,                       /* bodies pass untouched */
    .on_response_headers = hd_on_response_headers, /* response remove/set/add */
    .on_response_body = NULL,
    .on_log = NULL, /* everything lives in the request arena */
};

static const helios_module hd_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(HD_NAME, "0.1.0"),
    .config_new = hd_config_new,   /* validate names, compile values */
    .config_free = hd_config_free, /* free the compiled values */
    .worker_init = NULL,           /* no per-worker state: config is immutable */
    .worker_fini = NULL,
    .filter = &hd_filter_hooks, /* in `modules:` or a route's `filters:` */
    .handler = NULL,
    .balancer = NULL,
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &hd_module;
}
