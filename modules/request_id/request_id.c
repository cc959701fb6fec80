/*
 * request_id.c - a filter that gives every request an id (X-Request-ID by
 * default), passes it upstream and returns it in the response, and takes
 * part in W3C Trace Context (`traceparent`, `tracestate`).
 *
 * An incoming id is kept only from peers the configuration trusts: anyone
 * else could pick ids that collide with real ones in the logs, or carry
 * junk into them. Ids come from a per-worker xoshiro256** generator seeded
 * with getrandom(): unique and unpredictable enough for correlation, cheap
 * (no syscall, no lock per request), but not a secret: never use them as
 * tokens.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* getrandom() */
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <helios.h>
#include <helios/util/http.h>

#define RI_NAME "request_id"
#define RI_DEFAULT_HEADER "X-Request-ID"
/* An incoming id longer than this, or with bytes outside visible ASCII, is
 * replaced even from a trusted peer: it goes into logs verbatim. */
#define RI_INCOMING_MAX 200
#define RI_ID_LEN 32 /* hex characters of a generated id (128 bits) */
/* "00-" 32 "-" 16 "-" 2 */
#define RI_TP_LEN 55

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const ri_keys[] = {"header", "trust_incoming", "trusted", "traceparent", NULL};

enum { RI_TRUST_NEVER, RI_TRUST_ALWAYS, RI_TRUST_LISTED };
enum { RI_TP_PROPAGATE, RI_TP_START, RI_TP_OFF };

typedef struct ri_cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned prefix;
    unsigned char addr[16]; /* network bytes, host bits cleared */
} ri_cidr;

typedef struct ri_config {
    const char *header;
    int trust;
    int traceparent;
    ri_cidr *trusted;
    size_t ntrusted;
} ri_config;

/* "10.0.0.0/8", "::1", "fd00::/8". Returns 0, or -1 (not reported). */
static int ri_parse_cidr(const char *text, ri_cidr *out)
{
    char buf[64];
    const char *slash = strchr(text, '/');
    size_t alen = slash ? (size_t)(slash - text) : strlen(text);
    if (alen == 0 || alen >= sizeof(buf))
        return -1;
    memcpy(buf, text, alen);
    buf[alen] = '\0';
    memset(out, 0, sizeof(*out));
    unsigned max;
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return -1;
    }
    out->prefix = max;
    if (slash) {
        const char *p = slash + 1;
        unsigned v = 0;
        if (*p == '\0')
            return -1;
        for (; *p; p++) {
            if (*p < '0' || *p > '9' || (v = v * 10 + (unsigned)(*p - '0')) > max)
                return -1;
        }
        out->prefix = v;
    }
    for (unsigned bit = out->prefix; bit < max; bit++)
        out->addr[bit / 8] &= (unsigned char)~(0x80u >> (bit % 8));
    return 0;
}

static int ri_config_new(const helios_conf *conf, void **cfg)
{
    int kind = api->conf_kind(conf);
    if (kind == HELIOS_CONF_NULL) {
        conf = NULL;
    } else if (kind != HELIOS_CONF_MAP) {
        api->conf_error(conf, "expected a map with header, trust_incoming, trusted, traceparent");
        return -1;
    }
    ri_config *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        api->log(HELIOS_LOG_ERROR, RI_NAME, "out of memory");
        return -1;
    }
    int bad = api->conf_check_keys(conf, ri_keys) > 0;

    if (api->conf_str(conf, "header", RI_DEFAULT_HEADER, &c->header) < 0) {
        bad = 1;
    } else if (!helios_http_is_token(c->header)) {
        api->conf_error(api->conf_get(conf, "header"),
                        "invalid header name '%s': use letters, digits and !#$%%&'*+-.^_`|~",
                        c->header);
        bad = 1;
    }

    const char *trust;
    if (api->conf_str(conf, "trust_incoming", "trusted_proxies", &trust) < 0) {
        bad = 1;
    } else if (strcmp(trust, "true") == 0) {
        c->trust = RI_TRUST_ALWAYS;
    } else if (strcmp(trust, "false") == 0) {
        c->trust = RI_TRUST_NEVER;
    } else if (strcmp(trust, "trusted_proxies") == 0) {
        c->trust = RI_TRUST_LISTED;
    } else {
        api->conf_error(api->conf_get(conf, "trust_incoming"),
                        "expected true, false or trusted_proxies, not '%s'", trust);
        bad = 1;
    }

    const char *tp;
    if (api->conf_str(conf, "traceparent", "propagate", &tp) < 0) {
        bad = 1;
    } else if (strcmp(tp, "propagate") == 0) {
        c->traceparent = RI_TP_PROPAGATE;
    } else if (strcmp(tp, "start") == 0) {
        c->traceparent = RI_TP_START;
    } else if (strcmp(tp, "off") == 0) {
        c->traceparent = RI_TP_OFF;
    } else {
        api->conf_error(api->conf_get(conf, "traceparent"),
                        "expected propagate, start or off, not '%s'", tp);
        bad = 1;
    }

    const helios_conf *list = api->conf_get(conf, "trusted");
    if (api->conf_kind(list) == HELIOS_CONF_SEQ) {
        size_t n = api->conf_len(list);
        if (n > 0 && (c->trusted = calloc(n, sizeof(*c->trusted))) == NULL) {
            api->conf_error(list, "out of memory");
            bad = 1;
            n = 0;
        }
        for (size_t i = 0; i < n; i++) {
            const helios_conf *item = api->conf_at(list, i);
            const char *text = api->conf_scalar(item);
            if (text == NULL || ri_parse_cidr(text, &c->trusted[c->ntrusted]) != 0) {
                api->conf_error(item,
                                "expected an address or CIDR (10.0.0.0/8, ::1, fd00::/8), "
                                "not '%s'",
                                text ? text : "(not a string)");
                bad = 1;
                continue;
            }
            c->ntrusted++;
        }
    } else if (api->conf_kind(list) != HELIOS_CONF_NULL) {
        api->conf_error(list, "expected a list of addresses or CIDRs");
        bad = 1;
    }
    if (!bad && c->ntrusted > 0 && c->trust != RI_TRUST_LISTED)
        api->log(HELIOS_LOG_WARN, RI_NAME,
                 "`trusted` is ignored unless trust_incoming is trusted_proxies");

    if (bad) {
        free(c->trusted);
        free(c);
        return -1;
    }
    *cfg = c;
    return 0;
}

static void ri_config_free(void *cfg)
{
    ri_config *c = cfg;
    free(c->trusted);
    free(c);
}

/* ---- per-worker generator ---- */

typedef struct ri_rng {
    uint64_t s[4];
} ri_rng;

static uint64_t ri_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman & Vigna): fast, 256-bit state, no bad seeds but 0. */
static uint64_t ri_next(ri_rng *g)
{
    uint64_t *s = g->s;
    uint64_t result = ri_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = ri_rotl(s[3], 45);
    return result;
}

static int ri_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    (void)cfg;
    (void)w;
    ri_rng *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return -1;
    size_t got = 0;
    while (got < sizeof(g->s)) {
        ssize_t n = getrandom((char *)g->s + got, sizeof(g->s) - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            api->log(HELIOS_LOG_ERROR, RI_NAME, "getrandom failed: %s", strerror(errno));
            free(g);
            return -1;
        }
        got += (size_t)n;
    }
    if ((g->s[0] | g->s[1] | g->s[2] | g->s[3]) == 0)
        g->s[0] = 1; /* the one state xoshiro cannot leave */
    *wstate = g;
    return 0;
}

static void ri_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    free(wstate);
}

static const char ri_hex[] = "0123456789abcdef";

/* N lowercase hex digits into OUT (N a multiple of 16), never all zero:
 * W3C forbids all-zero trace and parent ids. */
static void ri_hex_random(ri_rng *g, char *out, size_t n)
{
    for (;;) {
        int nonzero = 0;
        for (size_t i = 0; i < n; i += 16) {
            uint64_t v = ri_next(g);
            nonzero |= v != 0;
            for (int k = 15; k >= 0; k--, v >>= 4)
                out[i + (size_t)k] = ri_hex[v & 15];
        }
        if (nonzero)
            return;
    }
}

/* ---- helpers ---- */

static int ri_peer_trusted(const ri_config *cfg, const struct sockaddr *sa)
{
    if (cfg->trust == RI_TRUST_ALWAYS)
        return 1;
    if (cfg->trust == RI_TRUST_NEVER || sa == NULL)
        return 0;
    const unsigned char *a;
    int family = sa->sa_family;
    if (family == AF_INET) {
        a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
    } else if (family == AF_INET6) {
        a = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
        /* a v4 client on a dual-stack listener: match the v4 entries */
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, mapped, 12) == 0) {
            a += 12;
            family = AF_INET;
        }
    } else {
        return 0;
    }
    for (size_t i = 0; i < cfg->ntrusted; i++) {
        const ri_cidr *c = &cfg->trusted[i];
        if (c->family != family)
            continue;
        unsigned full = c->prefix / 8, rest = c->prefix % 8;
        if (memcmp(a, c->addr, full) != 0)
            continue;
        if (rest && ((a[full] ^ c->addr[full]) & (unsigned char)(0xff00u >> rest)) != 0)
            continue;
        return 1;
    }
    return 0;
}

static int ri_incoming_ok(helios_buf v)
{
    if (v.ptr == NULL || v.len == 0 || v.len > RI_INCOMING_MAX)
        return 0;
    for (size_t i = 0; i < v.len; i++)
        if ((unsigned char)v.ptr[i] <= 0x20 || (unsigned char)v.ptr[i] >= 0x7f)
            return 0;
    return 1;
}

static int ri_is_lhex(const char *p, size_t n, int *all_zero)
{
    *all_zero = 1;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return 0;
        if (ch != '0')
            *all_zero = 0;
    }
    return 1;
}

/*
 * W3C Trace Context level 1, section 3.2: version-traceid-parentid-flags,
 * lowercase hex. Version ff is invalid; version 00 has exactly 55 chars; a
 * later version may append fields after a '-', and we read its first four.
 */
static int ri_traceparent_ok(helios_buf v)
{
    int zero;
    if (v.ptr == NULL || v.len < RI_TP_LEN)
        return 0;
    const char *p = v.ptr;
    if (!ri_is_lhex(p, 2, &zero) || (p[0] == 'f' && p[1] == 'f'))
        return 0;
    int v00 = p[0] == '0' && p[1] == '0';
    if ((v00 && v.len != RI_TP_LEN) || (!v00 && v.len > RI_TP_LEN && p[RI_TP_LEN] != '-'))
        return 0;
    if (p[2] != '-' || p[35] != '-' || p[52] != '-')
        return 0;
    if (!ri_is_lhex(p + 3, 32, &zero) || zero)
        return 0;
    if (!ri_is_lhex(p + 36, 16, &zero) || zero)
        return 0;
    return ri_is_lhex(p + 53, 2, &zero);
}

/* ---- hooks ---- */

/* What the response phase needs: the id sent upstream. */
typedef struct ri_rstate {
    const char *id;
} ri_rstate;

static int ri_traceparent(helios_ctx *c, ri_rng *g)
{
    const ri_config *cfg = c->cfg;
    helios_request *r = c->req;
    char tp[RI_TP_LEN + 1];
    helios_buf in = api->req_header(r, "traceparent");

    if (cfg->traceparent == RI_TP_PROPAGATE && ri_traceparent_ok(in)) {
        /* same trace and flags, our own span as the parent; we speak
         * version 00 whatever version came in, and tracestate stays as is */
        memcpy(tp, "00-", 3);
        memcpy(tp + 3, in.ptr + 3, 33);
        ri_hex_random(g, tp + 36, 16);
        tp[52] = '-';
        memcpy(tp + 53, in.ptr + 53, 2);
    } else {
        memcpy(tp, "00-", 3);
        ri_hex_random(g, tp + 3, 32);
        tp[35] = '-';
        ri_hex_random(g, tp + 36, 16);
        memcpy(tp + 52, "-01", 3);
        /* tracestate belongs to the trace it came with (W3C 3.3); the
         * core returns how many it removed, or -1 */
        if (api->req_header_remove(r, "tracestate") < 0)
            return -1;
    }
    tp[RI_TP_LEN] = '\0';
    return api->req_header_set(r, "traceparent", tp);
}

static int ri_on_request_headers(helios_ctx *c)
{
    const ri_config *cfg = c->cfg;
    helios_request *r = c->req;
    ri_rng *g = c->wstate;
    ri_rstate *st = api->req_alloc(r, sizeof(*st));
    char *id;
    if (st == NULL)
        return HELIOS_ERROR;

    helios_buf in = api->req_header(r, cfg->header);
    if (ri_incoming_ok(in) && ri_peer_trusted(cfg, api->req_peer(r))) {
        /* copied: header values are borrowed until the headers change */
        if ((id = api->req_alloc(r, in.len + 1)) == NULL)
            return HELIOS_ERROR;
        memcpy(id, in.ptr, in.len);
        id[in.len] = '\0';
    } else {
        if ((id = api->req_alloc(r, RI_ID_LEN + 1)) == NULL)
            return HELIOS_ERROR;
        ri_hex_random(g, id, RI_ID_LEN);
        id[RI_ID_LEN] = '\0';
        if (api->req_header_set(r, cfg->header, id) != 0) {
            api->log(HELIOS_LOG_ERROR, RI_NAME, "cannot set %s (request already sent?)",
                     cfg->header);
            return HELIOS_ERROR;
        }
    }
    st->id = id;
    *c->rstate = st;

    if (cfg->traceparent != RI_TP_OFF && ri_traceparent(c, g) != 0) {
        api->log(HELIOS_LOG_ERROR, RI_NAME, "cannot set traceparent (request already sent?)");
        return HELIOS_ERROR;
    }
    return HELIOS_CONTINUE;
}

static int ri_on_response_headers(helios_ctx *c)
{
    const ri_config *cfg = c->cfg;
    const ri_rstate *st = *c->rstate;
    /* NULL when an earlier filter answered before our request hook ran:
     * there is no id to return then */
    if (st == NULL)
        return HELIOS_CONTINUE;
    return api->resp_header_set(c->req, cfg->header, st->id) == 0 ? HELIOS_CONTINUE : HELIOS_ERROR;
}

/* ---- module descriptor ---- */

static const helios_filter_hooks ri_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = ri_on_request_headers,   /* keep or make the id; traceparent */
    .on_request_body = NULL,                       /* bodies pass untouched */
    .on_response_headers = ri_on_response_headers, /* return the id to the client */
    .on_response_body = NULL,
    .on_log = NULL, /* state lives in the request arena */
};

static const helios_module ri_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(RI_NAME, "0.1.0"),
    .config_new = ri_config_new,   /* header, trust, trusted CIDRs, traceparent mode */
    .config_free = ri_config_free, /* free the CIDR list */
    .worker_init = ri_worker_init, /* seed this worker's generator from getrandom() */
    .worker_fini = ri_worker_fini, /* free it */
    .filter = &ri_filter_hooks,    /* in `modules:` or a route's `filters:` */
    .handler = NULL,
    .balancer = NULL,
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &ri_module;
}
