/*
 * ip_hash_consistent.c - sticky balancing with Jump Consistent Hash (Lamping
 * and Veach, 2014, arXiv:1406.2294) over the backend list in the order
 * given.
 *
 * Growing the list from n to n+1 backends at the end moves only the keys
 * that the new backend takes, 1/(n+1) of them; shrinking from the end moves
 * only the removed backend's keys. Jump hash numbers backends by position,
 * so removing one from the middle shifts the ones after it and moves more:
 * drain such a backend rather than remove it (a drained backend is only
 * skipped, which moves only its keys, below).
 *
 * Every key has a fixed, deterministic sequence of candidates: candidate 0 is
 * jump(h0, n), candidate k is jump(hk, n) with hk = mix(h(k-1) + golden).
 * A request goes to its first candidate that is usable and not yet tried.
 * So when a backend becomes unusable, exactly the keys it served move (each
 * to its next candidate, spread evenly over the others) and come back when
 * it recovers; keys on healthy backends stay put. Nothing is kept per
 * worker; weights are ignored.
 */
#define _POSIX_C_SOURCE 200809L /* netinet/in.h types with -std=c17 */

#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <helios.h>

#define JCH_NAME "ip_hash_consistent"
/* Candidates tried before the last-resort step (see jch_pick). With half of
 * the backends down, all of them miss with probability 2^-32. */
#define JCH_CANDIDATES 32
/* 2^64 / golden ratio: steps the candidate key (as in splitmix64). */
#define JCH_GOLDEN 0x9e3779b97f4a7c15u

static const helios_host_api *api;

/* ---- configuration ---- */

/* The `key` setting. This part, and "the request key" below, are the same
 * in ip_hash.c, ip_hash_consistent.c and maglev.c (only the prefix differs):
 * modules share no code, and the three must agree on what a key is, so that
 * switching an upstream's strategy keeps the same notion of "the same
 * client". Change all three together. */
enum {
    JCH_KEY_CLIENT, /* api->req_client(): the address after trusted_proxies */
    JCH_KEY_HEADER, /* a request header's first value */
    JCH_KEY_COOKIE, /* one cookie of the Cookie header(s) */
    JCH_KEY_PATH,   /* api->req_path(): decoded, normalised, no query */
};

/* Longest header or cookie name accepted after "header:" / "cookie:". */
#define JCH_KEY_NAME_MAX 128

typedef struct jch_key {
    int kind;                        /* JCH_KEY_* */
    size_t name_len;                 /* of NAME; 0 unless header or cookie */
    char name[JCH_KEY_NAME_MAX + 1]; /* header or cookie name, NUL-terminated */
} jch_key;

/* RFC 9110 tchar: header names and cookie names (RFC 6265) are tokens. */
static int jch_is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return 1;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* Reads `key` from CONF into KEY. Returns 0, or -1 after a located error. */
static int jch_key_parse(const helios_conf *conf, jch_key *key)
{
    const char *s;
    memset(key, 0, sizeof(*key));
    if (api->conf_str(conf, "key", "client", &s) < 0)
        return -1;
    if (strcmp(s, "client") == 0) {
        key->kind = JCH_KEY_CLIENT;
        return 0;
    }
    if (strcmp(s, "path") == 0) {
        key->kind = JCH_KEY_PATH;
        return 0;
    }
    const char *name = NULL;
    if (strncmp(s, "header:", 7) == 0) {
        key->kind = JCH_KEY_HEADER;
        name = s + 7;
    } else if (strncmp(s, "cookie:", 7) == 0) {
        key->kind = JCH_KEY_COOKIE;
        name = s + 7;
    } else {
        api->conf_error(api->conf_get(conf, "key"),
                        "\"%s\" is not one of client, path, header:NAME, cookie:NAME", s);
        return -1;
    }
    size_t len = strlen(name);
    if (len == 0 || len > JCH_KEY_NAME_MAX) {
        api->conf_error(api->conf_get(conf, "key"),
                        "\"%s\": the name after ':' must have 1 to %d characters", s,
                        JCH_KEY_NAME_MAX);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (!jch_is_tchar((unsigned char)name[i])) {
            api->conf_error(api->conf_get(conf, "key"),
                            "\"%s\": '%c' is not allowed in a header or cookie name", s, name[i]);
            return -1;
        }
    }
    memcpy(key->name, name, len + 1);
    key->name_len = len;
    return 0;
}

static const char *const jch_keys[] = {"key", NULL};

typedef struct jch_config {
    jch_key key; /* what a request is hashed on */
} jch_config;

static int jch_config_new(const helios_conf *conf, void **cfg)
{
    int bad = api->conf_check_keys(conf, jch_keys) > 0;
    jch_key key;
    if (jch_key_parse(conf, &key) != 0)
        bad = 1;
    if (bad)
        return -1;
    jch_config *c = malloc(sizeof(*c));
    if (c == NULL) {
        api->log(HELIOS_LOG_ERROR, JCH_NAME, "out of memory allocating the configuration");
        return -1;
    }
    c->key = key;
    *cfg = c;
    return 0;
}

static void jch_config_free(void *cfg)
{
    free(cfg);
}

/* ---- the request key (same in the three hash balancers, see above) ---- */

/* MurmurHash3's 64-bit finalizer: every input bit affects every output bit,
 * which the FNV loop alone does not give for short keys. */
static uint64_t jch_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdu;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53u;
    h ^= h >> 33;
    return h;
}

/* FNV-1a over LEN bytes, then the finalizer. Keys are short (an address, a
 * cookie value), so a byte loop costs little and reads simply. */
static uint64_t jch_hash(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325u ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3u;
    }
    return jch_mix(h ^ len);
}

static int jch_is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/*
 * Looks for cookie KEY->name in one Cookie header value ("a=1; b=2").
 * Cookie names are case-sensitive (RFC 6265 5.4). Returns 1 when the name is
 * there, with its value (spaces trimmed, surrounding double quotes removed,
 * possibly empty) in *OUT; 0 when it is not.
 */
static int jch_cookie_in(helios_buf header, const jch_key *key, helios_buf *out)
{
    const char *p = header.ptr, *end = header.ptr + header.len;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *pair_end = semi != NULL ? semi : end;
        while (p < pair_end && jch_is_ows(*p))
            p++;
        const char *eq = memchr(p, '=', (size_t)(pair_end - p));
        if (eq != NULL) {
            const char *name_end = eq;
            while (name_end > p && jch_is_ows(name_end[-1]))
                name_end--;
            if ((size_t)(name_end - p) == key->name_len &&
                memcmp(p, key->name, key->name_len) == 0) {
                const char *v = eq + 1, *v_end = pair_end;
                while (v < v_end && jch_is_ows(*v))
                    v++;
                while (v_end > v && jch_is_ows(v_end[-1]))
                    v_end--;
                if (v_end - v >= 2 && *v == '"' && v_end[-1] == '"') {
                    v++;
                    v_end--;
                }
                out->ptr = v;
                out->len = (size_t)(v_end - v);
                return 1;
            }
        }
        p = pair_end + (pair_end < end); /* past the ';' */
    }
    return 0;
}

static int jch_is_cookie_header(helios_buf name)
{
    static const char lower[] = "cookie";
    if (name.len != sizeof(lower) - 1)
        return 0;
    for (size_t i = 0; i < name.len; i++) {
        unsigned char ch = (unsigned char)name.ptr[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch - 'A' + 'a');
        if (ch != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

/*
 * The value of cookie KEY->name, or {NULL, 0}. The first occurrence wins,
 * across every Cookie header in order (HTTP/2 clients may send one per
 * cookie). The walk over all headers only happens when a Cookie header
 * exists at all.
 */
static helios_buf jch_cookie(helios_request *r, const jch_key *key)
{
    helios_buf found = {NULL, 0};
    if (api->req_header(r, "cookie").ptr == NULL)
        return found;
    size_t n = api->req_header_count(r);
    for (size_t i = 0; i < n; i++) {
        helios_buf name, value;
        if (api->req_header_at(r, i, &name, &value) != 0)
            break;
        if (jch_is_cookie_header(name) && jch_cookie_in(value, key, &found))
            return found;
    }
    return found;
}

/*
 * Hash of the client address: the 4 bytes of an IPv4 address (also when it
 * arrives IPv4-mapped on a dual-stack listener, so both forms hash alike) or
 * the 16 bytes of an IPv6 address (scope id ignored). The whole address,
 * not nginx's first three octets: clients sharing a /24 are not sent to one
 * backend. Anything else (no address) hashes as the empty key.
 */
static uint64_t jch_client_hash(helios_request *r)
{
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    const struct sockaddr *sa = api->req_client(r);
    if (sa != NULL && sa->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, sa, sizeof(in));
        return jch_hash(&in.sin_addr, 4, 0);
    }
    if (sa != NULL && sa->sa_family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, sa, sizeof(in6));
        const unsigned char *a = in6.sin6_addr.s6_addr;
        if (memcmp(a, v4mapped, sizeof(v4mapped)) == 0)
            return jch_hash(a + 12, 4, 0);
        return jch_hash(a, 16, 0);
    }
    return jch_hash("", 0, 0);
}

/*
 * The 64-bit hash of this request's key. A header or cookie that is absent,
 * or present with an empty value, falls back to the client address, so
 * requests without the key still stick (per client) instead of all landing
 * on one backend.
 */
static uint64_t jch_key_hash(helios_request *r, const jch_key *key)
{
    helios_buf v = {NULL, 0};
    switch (key->kind) {
    case JCH_KEY_PATH: v = api->req_path(r); return jch_hash(v.ptr, v.len, 0);
    case JCH_KEY_HEADER: v = api->req_header(r, key->name); break;
    case JCH_KEY_COOKIE: v = jch_cookie(r, key); break;
    default: break;
    }
    if (v.ptr != NULL && v.len > 0)
        return jch_hash(v.ptr, v.len, 0);
    return jch_client_hash(r);
}

/* ---- hooks ---- */

/*
 * Jump Consistent Hash, exactly as published: the bucket in [0, N) for KEY.
 * O(ln N) steps, no memory. Going from N to N+1 buckets changes the result
 * for 1/(N+1) of the keys, all of which move to bucket N.
 */
static int jch_jump(uint64_t key, int n)
{
    int64_t b = -1, j = 0;
    while (j < n) {
        b = j;
        key = key * 2862933555777941757u + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (int)b;
}

/* 2 = usable and not tried by this request, 1 = usable but tried, 0 = not
 * usable. */
static int jch_state(const helios_backends *backends, const helios_tried *tried, size_t i)
{
    if (!api->backend_usable(api->backends_at(backends, i)))
        return 0;
    return api->tried_has(tried, i) ? 1 : 2;
}

/*
 * The first usable, untried candidate of the key's sequence (see the top of
 * the file). If the first JCH_CANDIDATES candidates all miss (most backends
 * down or tried), the last resort is jump(next key, m) over the m usable
 * untried backends in list order: still deterministic, but it moves keys
 * whenever that set changes. When every usable backend was already tried,
 * the first usable candidate (else the first usable backend in the list) is
 * returned and the core decides about the retry; -1 when none is usable.
 */
static int jch_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    const jch_config *cfg = c->cfg;
    size_t n = api->backends_count(backends);
    if (n == 0)
        return -1;
    if (n > INT_MAX)
        n = INT_MAX; /* pick() answers with an int index */

    uint64_t h = jch_key_hash(c->req, &cfg->key);
    size_t fallback = n; /* first usable but tried backend seen */
    for (int k = 0; k < JCH_CANDIDATES; k++) {
        size_t i = (size_t)jch_jump(h, (int)n);
        int st = jch_state(backends, tried, i);
        if (st == 2)
            return (int)i;
        if (st == 1 && fallback == n)
            fallback = i;
        h = jch_mix(h + JCH_GOLDEN);
    }

    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int st = jch_state(backends, tried, i);
        if (st == 2)
            m++;
        else if (st == 1 && fallback == n)
            fallback = i;
    }
    if (m == 0)
        return fallback == n ? -1 : (int)fallback;
    size_t want = (size_t)jch_jump(h, (int)m);
    for (size_t i = 0; i < n; i++)
        if (jch_state(backends, tried, i) == 2 && want-- == 0)
            return (int)i;
    return -1; /* not reached: the list is immutable during pick() */
}

/* ---- module descriptor ---- */

static const helios_balancer_hooks jch_balancer_hooks = {
    .size = sizeof(helios_balancer_hooks),
    .pick = jch_pick,         /* every upstream attempt, on the request's worker */
    .backends_changed = NULL, /* nothing cached per backend: pick() reads the new list */
};

static const helios_module jch_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(JCH_NAME, "0.1.0"),
    .config_new = jch_config_new, /* `key` */
    .config_free = jch_config_free,
    .worker_init = NULL, /* no per-worker state: the choice is a pure function */
    .worker_fini = NULL,
    .filter = NULL,
    .handler = NULL,
    .balancer = &jch_balancer_hooks, /* used as an upstream's `balancer:` */
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &jch_module;
}
