/*
 * gzip.c - a filter that compresses response bodies with gzip, streaming.
 *
 * Decided once per response, in on_response_headers: the client must accept
 * gzip (Accept-Encoding, q-values honoured), the response must have a body
 * that is not already encoded nor a range, its media type must be listed and
 * its length (when known) at least min_length. The headers are then
 * rewritten (Content-Encoding, Vary, no Content-Length, weak ETag) and each
 * body chunk goes through one zlib deflate stream as it arrives: nothing is
 * ever buffered whole. The output of a chunk lands in one per-request buffer
 * that the filter owns and reuses, sized with deflateBound for that chunk.
 *
 * Memory: per compressed response, the zlib state (about 270 KiB for
 * windowBits 15, memLevel 8) and the output buffer (about the size of the
 * largest input chunk). Both live outside the request arena and are released
 * in on_log, which runs for aborted requests too.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <zlib.h>

#include <helios.h>
#include <helios/util/http.h>

#define GZ_NAME "gzip"
#define GZ_DEFAULT_MIN_LENGTH 256
#define GZ_DEFAULT_LEVEL 6
/* windowBits 15 plus 16: zlib writes the gzip header and trailer. */
#define GZ_WINDOW_BITS (15 + 16)
#define GZ_MEM_LEVEL 8
/* Upper bound of the `types` list, so matching stays a short scan. */
#define GZ_TYPES_MAX 64

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const gz_keys[] = {"types", "min_length", "level", NULL};

static const char *const gz_default_types[] = {
    "text/html",        "text/plain",    "text/css", "application/javascript",
    "application/json", "image/svg+xml", NULL,
};

typedef struct gz_config {
    /* Media types to compress, as written in the config (compared without
     * regard to case); "*" matches any type. Strings live as long as the
     * generation, so they are not copied. */
    const char **types;
    size_t ntypes;
    int any_type;        /* `types` contains "*" */
    uint64_t min_length; /* smaller responses with a Content-Length pass */
    int level;           /* zlib level 1..9 */
} gz_config;

/* "type/subtype" made of tokens, or "*" for any type. */
static int gz_media_type_ok(const char *s)
{
    if (strcmp(s, "*") == 0)
        return 1;
    const char *slash = strchr(s, '/');
    if (slash == NULL || slash == s || slash[1] == '\0')
        return 0;
    for (const char *p = s; *p; p++)
        if (p != slash && !helios_http_is_tchar((unsigned char)*p))
            return 0;
    return 1;
}

/* Reads `types`. Returns 0, or -1 after reporting each bad item. */
static int gz_parse_types(const helios_conf *conf, gz_config *c)
{
    const helios_conf *tn = api->conf_get(conf, "types");
    int kind = api->conf_kind(tn);
    if (kind == HELIOS_CONF_NULL) {
        c->types = (const char **)gz_default_types;
        c->ntypes = sizeof(gz_default_types) / sizeof(gz_default_types[0]) - 1;
        return 0;
    }
    if (kind != HELIOS_CONF_SEQ) {
        api->conf_error(tn, "expected a list of media types, e.g. [text/html, application/json]");
        return -1;
    }
    size_t n = api->conf_len(tn);
    if (n > GZ_TYPES_MAX) {
        api->conf_error(tn, "%zu media types, at most %d are allowed", n, GZ_TYPES_MAX);
        return -1;
    }
    c->types = calloc(n + 1, sizeof(*c->types));
    if (c->types == NULL) {
        api->conf_error(tn, "out of memory");
        return -1;
    }
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        const helios_conf *item = api->conf_at(tn, i);
        const char *s = api->conf_scalar(item);
        if (s == NULL || !gz_media_type_ok(s)) {
            api->conf_error(item,
                            "'%s' is not a media type: write type/subtype without parameters "
                            "(e.g. text/html), or * for every type",
                            s ? s : "(not a string)");
            bad = 1;
            continue;
        }
        if (strcmp(s, "*") == 0)
            c->any_type = 1;
        c->types[c->ntypes++] = s;
    }
    return bad ? -1 : 0;
}

static void gz_config_free(void *cfg)
{
    gz_config *c = cfg;
    if (c == NULL)
        return;
    if (c->types != (const char **)gz_default_types)
        free(c->types);
    free(c);
}

static int gz_config_new(const helios_conf *conf, void **cfg)
{
    int kind = api->conf_kind(conf);
    if (kind == HELIOS_CONF_NULL) {
        conf = NULL; /* no `config:`: every default */
    } else if (kind != HELIOS_CONF_MAP) {
        api->conf_error(conf, "expected a map with types, min_length, level");
        return -1;
    }

    gz_config *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        api->conf_error(conf, "out of memory");
        return -1;
    }
    int bad = api->conf_check_keys(conf, gz_keys) > 0;
    long long level = GZ_DEFAULT_LEVEL;
    if (api->conf_int(conf, "level", GZ_DEFAULT_LEVEL, 1, 9, &level) < 0)
        bad = 1;
    c->level = (int)level;
    if (api->conf_size(conf, "min_length", GZ_DEFAULT_MIN_LENGTH, &c->min_length) < 0)
        bad = 1;
    if (gz_parse_types(conf, c) != 0)
        bad = 1;
    if (bad) {
        gz_config_free(c);
        return -1;
    }
    *cfg = c;
    return 0;
}

/* ---- header parsing ---- */

static int gz_is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static int gz_token_eq(const char *p, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(p, lit, n) == 0;
}

/*
 * RFC 9110 12.4.2 qvalue ("0", "0.5", "1.000"), in thousandths; -1 when
 * malformed.
 */
static int gz_parse_q(const char *p, size_t n)
{
    if (n == 0 || (p[0] != '0' && p[0] != '1'))
        return -1;
    int q = (p[0] - '0') * 1000;
    if (n == 1)
        return q;
    if (p[1] != '.' || n > 5)
        return -1;
    int scale = 100;
    for (size_t i = 2; i < n; i++, scale /= 10) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        q += (p[i] - '0') * scale;
    }
    return q <= 1000 ? q : -1;
}

/*
 * Scans one Accept-Encoding value and records the q of "gzip" (or its alias
 * "x-gzip") in *GZIP_Q and of "*" in *STAR_Q, each only when listed (they
 * start at -1). An element with a malformed q counts as q=0: refusing to
 * compress is the safe reading of a header we do not understand.
 */
static void gz_scan_accept(const char *p, const char *e, int *gzip_q, int *star_q)
{
    while (p < e) {
        while (p < e && (gz_is_ows(*p) || *p == ','))
            p++;
        const char *tok = p;
        while (p < e && *p != ',' && *p != ';' && !gz_is_ows(*p))
            p++;
        size_t toklen = (size_t)(p - tok);
        int q = 1000;
        /* parameters: only q matters */
        while (p < e && *p != ',') {
            while (p < e && gz_is_ows(*p))
                p++;
            if (p >= e || *p == ',')
                break;
            if (*p != ';') { /* junk after the token */
                q = 0;
                while (p < e && *p != ',')
                    p++;
                break;
            }
            p++;
            while (p < e && gz_is_ows(*p))
                p++;
            const char *pn = p;
            while (p < e && *p != '=' && *p != ';' && *p != ',' && !gz_is_ows(*p))
                p++;
            size_t pnlen = (size_t)(p - pn);
            while (p < e && gz_is_ows(*p))
                p++;
            const char *pv = p, *pve = p;
            if (p < e && *p == '=') {
                p++;
                while (p < e && gz_is_ows(*p))
                    p++;
                pv = p;
                while (p < e && *p != ';' && *p != ',' && !gz_is_ows(*p))
                    p++;
                pve = p;
            }
            if (pnlen == 1 && (pn[0] == 'q' || pn[0] == 'Q')) {
                int v = gz_parse_q(pv, (size_t)(pve - pv));
                q = v < 0 ? 0 : v;
            }
        }
        if (toklen == 0)
            continue;
        int *slot = NULL;
        if (gz_token_eq(tok, toklen, "gzip") || gz_token_eq(tok, toklen, "x-gzip"))
            slot = gzip_q;
        else if (toklen == 1 && tok[0] == '*')
            slot = star_q;
        if (slot != NULL && q > *slot)
            *slot = q;
    }
}

/* 1 when every Accept-Encoding header of the request, together, makes
 * gzip acceptable: listed with q > 0, or not listed and `*` has q > 0. */
static int gz_client_accepts(helios_request *r)
{
    int gzip_q = -1, star_q = -1, seen = 0;
    size_t n = api->req_header_count(r);
    for (size_t i = 0; i < n; i++) {
        helios_buf name, value;
        if (api->req_header_at(r, i, &name, &value) != 0)
            continue;
        if (!gz_token_eq(name.ptr, name.len, "accept-encoding"))
            continue;
        seen = 1;
        gz_scan_accept(value.ptr, value.ptr + value.len, &gzip_q, &star_q);
    }
    if (!seen)
        return 0; /* no header: identity is what the client surely reads */
    if (gzip_q >= 0)
        return gzip_q > 0;
    return star_q > 0;
}

/* 1 when the media type of CT (before any ';') is in the list. */
static int gz_type_listed(const gz_config *cfg, helios_buf ct)
{
    if (cfg->any_type)
        return 1;
    if (ct.ptr == NULL)
        return 0;
    const char *p = ct.ptr, *e = ct.ptr + ct.len;
    while (p < e && gz_is_ows(*p))
        p++;
    const char *s = p;
    while (p < e && *p != ';')
        p++;
    while (p > s && gz_is_ows(p[-1]))
        p--;
    for (size_t i = 0; i < cfg->ntypes; i++)
        if (gz_token_eq(s, (size_t)(p - s), cfg->types[i]))
            return 1;
    return 0;
}

/* 1 when the comma-separated header value V lists TOKEN (or "*" when STAR
 * is set). */
static int gz_list_has(helios_buf v, const char *token, int star)
{
    const char *p = v.ptr, *e = v.ptr + v.len;
    while (p < e) {
        while (p < e && (gz_is_ows(*p) || *p == ','))
            p++;
        const char *s = p;
        while (p < e && *p != ',')
            p++;
        const char *t = p;
        while (t > s && gz_is_ows(t[-1]))
            t--;
        if (gz_token_eq(s, (size_t)(t - s), token) || (star && t - s == 1 && *s == '*'))
            return 1;
    }
    return 0;
}

/* Content-Length as a number, or -1 when absent or not a plain decimal. */
static int64_t gz_content_length(helios_request *r)
{
    helios_buf cl = api->resp_header(r, "content-length");
    if (cl.ptr == NULL || cl.len == 0 || cl.len > 18)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < cl.len; i++) {
        if (cl.ptr[i] < '0' || cl.ptr[i] > '9')
            return -1;
        v = v * 10 + (cl.ptr[i] - '0');
    }
    return v;
}

/* ---- per-request state ---- */

typedef struct gz_req {
    z_stream zs;  /* zlib state; valid once `inited` */
    int inited;   /* deflateInit2 succeeded: deflateEnd is owed */
    int finished; /* Z_STREAM_END reached */
    char *out;    /* malloc'd output of the last chunk */
    size_t cap;   /* its size */
} gz_req;

/* Whether this response is one we may and want to compress. */
static int gz_wanted(const gz_config *cfg, helios_request *r)
{
    helios_buf m = api->req_method(r);
    if (gz_token_eq(m.ptr, m.len, "HEAD"))
        return 0;
    int status = api->resp_status(r);
    /* no content (1xx, 204, 304) or a part of a representation (206) */
    if (status < 200 || status == 204 || status == 304 || status == 206)
        return 0;
    if (api->req_header(r, "range").ptr != NULL)
        return 0;
    if (api->resp_header(r, "content-range").ptr != NULL)
        return 0;
    if (api->resp_header(r, "content-encoding").ptr != NULL)
        return 0;
    /* RFC 9110 7.7: intermediaries must not change the content coding. */
    helios_buf cc = api->resp_header(r, "cache-control");
    if (cc.ptr != NULL && gz_list_has(cc, "no-transform", 0))
        return 0;
    if (!gz_type_listed(cfg, api->resp_header(r, "content-type")))
        return 0;
    int64_t len = gz_content_length(r);
    if (len >= 0 && (uint64_t)len < cfg->min_length)
        return 0;
    return gz_client_accepts(r);
}

/* Rewrites the head for a gzip body. Returns 0, or -1 if the core refused
 * a header change. */
static int gz_rewrite_headers(helios_request *r)
{
    if (api->resp_header_set(r, "Content-Encoding", "gzip") < 0 ||
        api->resp_header_remove(r, "Content-Length") < 0)
        return -1;

    /* Caches must key on Accept-Encoding. An added line is the same as
     * appending to the existing Vary (RFC 9110 5.3) and keeps any other
     * Vary lines, which resp_header (first value only) cannot show. */
    helios_buf vary = api->resp_header(r, "vary");
    if (vary.ptr == NULL) {
        if (api->resp_header_set(r, "Vary", "Accept-Encoding") < 0)
            return -1;
    } else if (!gz_list_has(vary, "accept-encoding", 1)) {
        if (api->resp_header_add(r, "Vary", "Accept-Encoding") < 0)
            return -1;
    }

    /* The gzip bytes differ from the identity ones, so a strong validator
     * no longer holds; a weak one still says "same content" (as nginx). */
    helios_buf etag = api->resp_header(r, "etag");
    if (etag.ptr != NULL && etag.len >= 2 && etag.ptr[0] == '"') {
        char *weak = api->req_alloc(r, etag.len + 3);
        if (weak == NULL)
            return -1;
        memcpy(weak, "W/", 2);
        memcpy(weak + 2, etag.ptr, etag.len);
        weak[etag.len + 2] = '\0';
        if (api->resp_header_set(r, "ETag", weak) < 0)
            return -1;
    }
    return 0;
}

/* ---- hooks ---- */

static int gz_on_response_headers(helios_ctx *c)
{
    const gz_config *cfg = c->cfg;
    gz_req *st = *c->rstate;
    if (st != NULL) {
        /* a second head for the same request: start over */
        if (st->inited)
            deflateEnd(&st->zs);
        st->inited = st->finished = 0;
        *c->rstate = NULL;
        free(st->out);
        st->out = NULL;
        st->cap = 0;
    }
    if (!gz_wanted(cfg, c->req))
        return HELIOS_CONTINUE;

    st = api->req_alloc(c->req, sizeof(*st));
    if (st == NULL) {
        api->log(HELIOS_LOG_WARN, GZ_NAME, "out of request memory: response sent uncompressed");
        return HELIOS_CONTINUE;
    }
    if (gz_rewrite_headers(c->req) != 0) {
        api->log(HELIOS_LOG_ERROR, GZ_NAME, "cannot rewrite the response headers");
        return HELIOS_ERROR;
    }
    /* deflateInit2 waits for the first body chunk: if a filter earlier in
     * the chain fails its on_response_headers, the core answers 500 without
     * filters and on_log would not see a stream to end. */
    *c->rstate = st;
    return HELIOS_CONTINUE;
}

/* Makes the output buffer at least NEED bytes, keeping the first KEEP. */
static int gz_reserve(gz_req *st, size_t need, size_t keep)
{
    if (st->cap >= need)
        return 0;
    char *p;
    if (keep == 0) {
        free(st->out); /* nothing to keep: avoid realloc's copy */
        st->out = NULL;
        st->cap = 0;
        p = malloc(need);
    } else {
        p = realloc(st->out, need);
    }
    if (p == NULL)
        return -1;
    st->out = p;
    st->cap = need;
    return 0;
}

static int gz_on_response_body(helios_ctx *c, helios_buf *chunk, int last)
{
    const gz_config *cfg = c->cfg;
    gz_req *st = *c->rstate;
    if (st == NULL)
        return HELIOS_CONTINUE;
    if (st->finished) { /* nothing may follow the gzip trailer */
        chunk->ptr = NULL;
        chunk->len = 0;
        return HELIOS_CONTINUE;
    }
    if (!st->inited) {
        if (deflateInit2(&st->zs, cfg->level, Z_DEFLATED, GZ_WINDOW_BITS, GZ_MEM_LEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            api->log(HELIOS_LOG_ERROR, GZ_NAME, "deflateInit2 failed: %s",
                     st->zs.msg ? st->zs.msg : "out of memory");
            return HELIOS_ERROR;
        }
        st->inited = 1;
    }
    if (chunk->len == 0 && !last)
        return HELIOS_CONTINUE;

    /* deflateBound covers this chunk's compressed size plus the gzip
     * wrapper; data zlib held back from earlier chunks can exceed it,
     * which the loop below handles by growing. */
    uLong bound = deflateBound(&st->zs, (uLong)chunk->len);
    if (gz_reserve(st, (size_t)bound, 0) != 0)
        goto oom;

    st->zs.next_in = (Bytef *)(uintptr_t)chunk->ptr;
    st->zs.avail_in = (uInt)chunk->len;
    int flush = last ? Z_FINISH : Z_NO_FLUSH;
    size_t produced = 0;
    for (;;) {
        st->zs.next_out = (Bytef *)st->out + produced;
        st->zs.avail_out = (uInt)(st->cap - produced);
        int rc = deflate(&st->zs, flush);
        produced = st->cap - st->zs.avail_out;
        if (rc == Z_STREAM_END) {
            st->finished = 1;
            break;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            api->log(HELIOS_LOG_ERROR, GZ_NAME, "deflate failed (%d)", rc);
            return HELIOS_ERROR;
        }
        if (st->zs.avail_out != 0 && (flush == Z_NO_FLUSH || rc == Z_BUF_ERROR) &&
            st->zs.avail_in == 0)
            break; /* all input taken, zlib keeps the rest for later */
        if (st->zs.avail_out == 0 && gz_reserve(st, st->cap * 2, produced) != 0)
            goto oom;
    }
    chunk->ptr = st->out;
    chunk->len = produced;
    return HELIOS_CONTINUE;
oom:
    api->log(HELIOS_LOG_ERROR, GZ_NAME, "out of memory for a %zu byte output buffer",
             (size_t)bound);
    return HELIOS_ERROR;
}

static void gz_on_log(helios_ctx *c)
{
    gz_req *st = *c->rstate;
    if (st == NULL)
        return;
    if (st->inited)
        deflateEnd(&st->zs);
    st->inited = 0;
    free(st->out);
    st->out = NULL;
}

/* ---- module descriptor ---- */

static const helios_filter_hooks gz_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = NULL,
    .on_request_body = NULL,
    .on_response_headers = gz_on_response_headers, /* decide, rewrite the head */
    .on_response_body = gz_on_response_body,       /* deflate each chunk as it passes */
    .on_log = gz_on_log,                           /* deflateEnd, free the output buffer */
};

static const helios_module gz_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(GZ_NAME, "0.1.0"),
    .config_new = gz_config_new,   /* types, min_length, level */
    .config_free = gz_config_free, /* the copied type list */
    .worker_init = NULL,           /* no per-worker state: all of it is per response */
    .worker_fini = NULL,
    .filter = &gz_filter_hooks, /* in `modules:` or a route's `filters:` */
    .handler = NULL,
    .balancer = NULL,
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &gz_module;
}
