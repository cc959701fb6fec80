/*
 * fuzz_admin.c - the admin API's request path without libmicrohttpd: the
 * JWT bearer check (modules/admin_api/admin_auth.c: header and alg check
 * before libjwt, signature, exp/nbf/iss/aud, scopes), the route table and
 * the JSON endpoints (admin_routes.c) through aa_req_check and aa_req_run
 * (admin_http.c), compiled from the module's sources. The host API is a
 * stand-in: one upstream "app" whose backends live in an array here, so
 * add/remove/patch/drain/weight act on something and reads see it.
 *
 * Input: "METHOD PATH\n", then the Authorization line, then the body.
 * An Authorization line that starts with "sign:" is "sign:HEADER.PAYLOAD"
 * with HEADER and PAYLOAD as plain JSON text: the harness base64url-encodes
 * and signs them with the configured HS256 secret, so the fuzzer reaches
 * the claims checks behind the signature.
 * Checked: a status in 200..599; a JSON reply that serialises (or a text
 * reply); 2xx only for a token that verifies with the scope the route needs
 * (or a public route); every allocation freed.
 */
#include <arpa/inet.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <string.h>

#include "admin_api.h"
#include "fuzz.h"

#define FZ_SECRET "fuzz-secret-0123456789abcdef0123"
#define FZ_MAX_BACKENDS 8

/* ---- the stand-in host API ---- */

typedef struct fz_backend {
    char name[64];
    char address[64];
    uint32_t weight;
    int draining;
} fz_backend;

static fz_backend backends[FZ_MAX_BACKENDS];
static size_t nbackends;

static void reset_backends(void)
{
    memset(backends, 0, sizeof(backends));
    nbackends = 2;
    strcpy(backends[0].name, "a");
    strcpy(backends[0].address, "127.0.0.1:8001");
    backends[0].weight = 1;
    strcpy(backends[1].name, "b");
    strcpy(backends[1].address, "127.0.0.1:8002");
    backends[1].weight = 5;
}

static const fz_backend *B(const helios_backend *b)
{
    return (const fz_backend *)b;
}

static void h_log(int level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void h_log(int level, const char *module, const char *fmt, ...)
{
    (void)level;
    (void)module;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap); /* formatted, as the core does, then dropped */
    va_end(ap);
}

static int is_app(const char *u)
{
    return u && strcmp(u, "app") == 0;
}

static fz_backend *find(const char *name)
{
    for (size_t i = 0; i < nbackends; i++)
        if (name && strcmp(backends[i].name, name) == 0)
            return &backends[i];
    return NULL;
}

static int refuse(char *err, size_t errlen, const char *why)
{
    snprintf(err, errlen, "%s", why);
    return -1;
}

static int h_add(const char *u, const char *name, const char *address, uint32_t weight, char *err,
                 size_t errlen)
{
    if (!is_app(u))
        return refuse(err, errlen, "no such upstream");
    if (find(name) || nbackends == FZ_MAX_BACKENDS || !name || !address || strlen(name) >= 64 ||
        strlen(address) >= 64 || weight < 1 || weight > 10000)
        return refuse(err, errlen, "refused");
    fz_backend *b = &backends[nbackends++];
    snprintf(b->name, sizeof(b->name), "%s", name);
    snprintf(b->address, sizeof(b->address), "%s", address);
    b->weight = weight;
    return 0;
}

static int h_remove(const char *u, const char *name, char *err, size_t errlen)
{
    fz_backend *b = is_app(u) ? find(name) : NULL;
    if (b == NULL)
        return refuse(err, errlen, "no such backend");
    memmove(b, b + 1, (size_t)(&backends[nbackends] - (b + 1)) * sizeof(*b));
    nbackends--;
    return 0;
}

static int h_weight(const char *u, const char *name, uint32_t w, char *err, size_t errlen)
{
    fz_backend *b = is_app(u) ? find(name) : NULL;
    if (b == NULL || w < 1 || w > 10000)
        return refuse(err, errlen, "refused");
    b->weight = w;
    return 0;
}

static int h_drain(const char *u, const char *name, int on, char *err, size_t errlen)
{
    fz_backend *b = is_app(u) ? find(name) : NULL;
    if (b == NULL)
        return refuse(err, errlen, "no such backend");
    b->draining = on;
    return 0;
}

static int h_balancer_set(const char *u, const char *module, char *err, size_t errlen)
{
    if (!is_app(u) || !module || (strcmp(module, "round_robin") && strcmp(module, "maglev")))
        return refuse(err, errlen, "refused");
    return 0;
}

static long h_walk(const char *u, void (*fn)(void *, const helios_backend *), void *arg)
{
    if (!is_app(u))
        return -1;
    for (size_t i = 0; fn && i < nbackends; i++)
        fn(arg, (const helios_backend *)&backends[i]);
    return (long)nbackends;
}

static const char *h_balancer_name(const char *u)
{
    return is_app(u) ? "round_robin" : NULL;
}
static size_t h_upstreams_count(void)
{
    return 1;
}

static int h_upstream_name(size_t i, char *buf, size_t size)
{
    if (i != 0 || buf == NULL || size < 4)
        return -1;
    strcpy(buf, "app");
    return 0;
}

static const char *h_bname(const helios_backend *b)
{
    return B(b)->name;
}
static const char *h_baddr(const helios_backend *b)
{
    return B(b)->address;
}
static uint32_t h_bweight(const helios_backend *b)
{
    return B(b)->weight;
}
static int h_busable(const helios_backend *b)
{
    return !B(b)->draining;
}
static int h_bhealthy(const helios_backend *b)
{
    return !B(b)->draining;
}
static int h_bdraining(const helios_backend *b)
{
    return B(b)->draining;
}
static uint32_t h_binflight(const helios_backend *b)
{
    return (uint32_t)(B(b) - backends);
}
static uint64_t h_bcount(const helios_backend *b)
{
    return 1000u * B(b)->weight;
}
static int h_bbreaker(const helios_backend *b)
{
    return B(b)->draining ? 1 : 0;
}

static uint64_t h_btransitions(const helios_backend *b, int state)
{
    return (uint64_t)state + B(b)->weight;
}

static uint32_t h_generation(void)
{
    return 7;
}

static int h_core_stats(helios_core_stats *out)
{
    if (out == NULL || out->size < sizeof(*out))
        return -1;
    *out = (helios_core_stats){.size = sizeof(*out),
                               .generation = 7,
                               .workers = 2,
                               .version = "fuzz",
                               .requests = 12345,
                               .bytes_out = 678};
    return 0;
}

static int h_reload(uint32_t *gen, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    if (gen)
        *gen = 8;
    return 0;
}

static long h_modules_walk(void (*fn)(void *, const helios_module_info *), void *arg)
{
    (void)fn;
    (void)arg;
    return 0;
}

static int h_config_walk(void (*fn)(void *, const helios_conf *), void *arg)
{
    (void)fn;
    (void)arg;
    return -1; /* "no configuration" */
}

static void *h_export_get(const char *name)
{
    (void)name;
    return NULL;
}

static helios_host_api host = {
    .size = sizeof(helios_host_api),
    .abi_major = HELIOS_ABI_MAJOR,
    .abi_minor = HELIOS_ABI_MINOR,
    .log = h_log,
    .backend_name = h_bname,
    .backend_address = h_baddr,
    .backend_weight = h_bweight,
    .backend_usable = h_busable,
    .backend_healthy = h_bhealthy,
    .backend_inflight = h_binflight,
    .ctl_backend_add = h_add,
    .ctl_backend_remove = h_remove,
    .ctl_backend_weight = h_weight,
    .ctl_backend_drain = h_drain,
    .ctl_balancer_set = h_balancer_set,
    .ctl_backends_walk = h_walk,
    .ctl_balancer_name = h_balancer_name,
    .ctl_upstreams_count = h_upstreams_count,
    .ctl_upstream_name = h_upstream_name,
    .backend_draining = h_bdraining,
    .backend_requests = h_bcount,
    .backend_failures = h_bcount,
    .backend_breaker = h_bbreaker,
    .backend_breaker_transitions = h_btransitions,
    .backend_retries = h_bcount,
    .generation = h_generation,
    .core_stats = h_core_stats,
    .ctl_reload = h_reload,
    .ctl_modules_walk = h_modules_walk,
    .ctl_config_walk = h_config_walk,
    .export_get = h_export_get,
};

const helios_host_api *aa_api = &host;

/* ---- tokens ---- */

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = tab[v >> 6 & 63];
        if (i + 2 < n)
            out[o++] = tab[v & 63];
    }
    out[o] = '\0';
    return o;
}

/* "Bearer " + base64url(header) "." base64url(payload) "." HS256 signature,
 * from "HEADER.PAYLOAD" (split at the first '.' outside nothing: the
 * first '.'), malloc'd. */
static char *signed_token(const char *spec)
{
    const char *dot = strchr(spec, '.');
    if (dot == NULL)
        dot = spec + strlen(spec);
    size_t hl = (size_t)(dot - spec), pl = *dot ? strlen(dot + 1) : 0;
    char *out = malloc(7 + (hl + pl) * 2 + 64);
    if (out == NULL)
        return NULL;
    char *p = out + 7;
    memcpy(out, "Bearer ", 7);
    p += b64url((const uint8_t *)spec, hl, p);
    *p++ = '.';
    p += b64url((const uint8_t *)(*dot ? dot + 1 : dot), pl, p);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    HMAC(EVP_sha256(), FZ_SECRET, (int)strlen(FZ_SECRET), (const uint8_t *)out + 7,
         (size_t)(p - (out + 7)), mac, &maclen);
    *p++ = '.';
    b64url(mac, maclen, p);
    return out;
}

/* ---- the harness ---- */

static char *line(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
    const uint8_t *e = nl ? nl : end;
    char *s = strndup((const char *)*p, (size_t)(e - *p));
    *p = nl ? nl + 1 : end;
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static aa_config cfg;
    if (cfg.auth.mode == 0) {
        cfg.auth.mode = AA_AUTH_JWT;
        cfg.auth.algorithm = "HS256";
        cfg.auth.alg = JWT_ALG_HS256;
        cfg.auth.key = (unsigned char *)FZ_SECRET;
        cfg.auth.keylen = strlen(FZ_SECRET);
        cfg.auth.audience = "heliosd-admin";
        cfg.auth.leeway_s = 30;
        cfg.auth.scope_claim = "scope";
        cfg.max_body = 4096;
        cfg.audit_fd = -1;
    }
    reset_backends();
    const uint8_t *p = data, *end = data + size;
    char *reqline = line(&p, end);
    char *authz = line(&p, end);
    FZ_CHECK(reqline && authz, "out of memory");
    char *sp = strchr(reqline, ' ');
    const char *method = reqline, *path = sp ? sp + 1 : "/";
    if (sp)
        *sp = '\0';
    char *token = NULL;
    if (strncmp(authz, "sign:", 5) == 0)
        token = signed_token(authz + 5);
    const char *authorization = token ? token : (authz[0] ? authz : NULL);

    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    aa_req q = {.cfg = &cfg, .method = method, .path = path, .status = 500};
    aa_match m;
    memset(&m, 0, sizeof(m));
    char www[512] = "";
    char cl[32];
    snprintf(cl, sizeof(cl), "%zu", (size_t)(end - p));
    int answered =
        aa_req_check(&q, &m, (struct sockaddr *)&peer, authorization, cl, www, sizeof(www));
    if (!answered)
        aa_req_run(&q, &m, (const char *)p, (size_t)(end - p));

    FZ_CHECK(q.status >= 200 && q.status <= 599, "status %d", q.status);
    if (q.status < 300 && !m.is_public && !m.is_metrics)
        FZ_CHECK(q.who.scopes & (m.write ? AA_SCOPE_WRITE : AA_SCOPE_READ),
                 "%d for %s %s without the scope", q.status, method, path);
    if (q.status == 401)
        FZ_CHECK(www[0] != '\0', "a 401 without WWW-Authenticate");
    if (q.text == NULL) {
        FZ_CHECK(q.reply != NULL || q.status == 204, "no reply for %d", q.status);
        char *txt = q.reply ? json_dumps(q.reply, JSON_COMPACT) : NULL;
        FZ_CHECK(q.reply == NULL || txt != NULL, "a reply that does not serialise");
        free(txt);
    }
    json_decref(q.body);
    json_decref(q.reply);
    free(q.text);
    free(token);
    free(authz);
    free(reqline);
    return 0;
}
