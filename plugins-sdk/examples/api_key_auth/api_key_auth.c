/*
 * api_key_auth.c - an example third-party heliosd module: API-key
 * authentication.
 *
 * A request filter. Requests without a valid key get 401 with
 * `WWW-Authenticate: ApiKey realm="..."`; requests with one go on, with the
 * key header removed so the upstream never sees the secret (`strip`).
 * Keys come from a file read at load and at every reload; comparison takes
 * the same time whatever the first differing byte is.
 *
 * It uses nothing but the installed SDK (<helios.h>) and libc.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <helios.h>
#include <helios/util/http.h>

#define AK_NAME "api_key_auth"
#define AK_MAX_KEYS 10000  /* per keys file */
#define AK_MAX_KEY_LEN 256 /* bytes per key */
#define AK_LINE_MAX 1024   /* longest line read from the keys file */

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const ak_keys[] = {"keys_file", "header", "realm", "strip", NULL};

typedef struct ak_config {
    char *header;   /* request header carrying the key */
    int bearer;     /* header is Authorization: expect "Bearer <key>" */
    int strip;      /* remove the header before going upstream */
    char *www_auth; /* the WWW-Authenticate value of a 401 */
    size_t nkeys;
    char **keys; /* each NUL-terminated, no whitespace */
    size_t *key_lens;
} ak_config;

static int ak_ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a >= 'A' && *a <= 'Z' ? (char)(*a + 32) : *a;
        char y = *b >= 'A' && *b <= 'Z' ? (char)(*b + 32) : *b;
        if (x != y)
            return 0;
    }
    return *a == *b;
}

static char *ak_strndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static void ak_config_free(void *cfg)
{
    ak_config *c = cfg;
    for (size_t i = 0; i < c->nkeys; i++) {
        /* the keys are secrets: do not leave them in freed memory */
        volatile char *k = c->keys[i];
        for (size_t j = 0; j < c->key_lens[i]; j++)
            k[j] = 0;
        free(c->keys[i]);
    }
    free(c->keys);
    free(c->key_lens);
    free(c->header);
    free(c->www_auth);
    free(c);
}

/*
 * One key per line; blank lines and lines starting with '#' (after
 * leading blanks) are skipped; surrounding blanks are trimmed. A key is
 * visible ASCII without spaces, so it can travel in a header unchanged.
 * Every problem is reported on the keys_file node, naming FILE and line.
 */
static int ak_load_keys(const helios_conf *node, const char *file, ak_config *c)
{
    FILE *f = fopen(file, "r");
    if (f == NULL) {
        api->conf_error(node, "cannot read keys file %s: %s", file, strerror(errno));
        return -1;
    }
    char line[AK_LINE_MAX + 2];
    size_t cap = 0;
    int bad = 0;
    for (unsigned lineno = 1; fgets(line, sizeof(line), f) != NULL; lineno++) {
        size_t len = strlen(line);
        if (len > AK_LINE_MAX && line[len - 1] != '\n') {
            api->conf_error(node, "%s:%u: line longer than %d bytes", file, lineno, AK_LINE_MAX);
            bad = 1;
            break;
        }
        char *s = line, *e = line + len;
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (s == e || *s == '#')
            continue;
        size_t klen = (size_t)(e - s);
        int ok = klen <= AK_MAX_KEY_LEN;
        for (const char *p = s; ok && p < e; p++)
            ok = *p > 0x20 && *p < 0x7f;
        if (!ok) {
            api->conf_error(node,
                            "%s:%u: invalid key: at most %d visible ASCII characters, no spaces",
                            file, lineno, AK_MAX_KEY_LEN);
            bad = 1;
            continue;
        }
        if (c->nkeys == AK_MAX_KEYS) {
            api->conf_error(node, "%s: more than %d keys", file, AK_MAX_KEYS);
            bad = 1;
            break;
        }
        if (c->nkeys == cap) {
            cap = cap ? cap * 2 : 16;
            char **k = realloc(c->keys, cap * sizeof(*k));
            if (k)
                c->keys = k;
            size_t *l = realloc(c->key_lens, cap * sizeof(*l));
            if (l)
                c->key_lens = l;
            if (k == NULL || l == NULL)
                goto oom;
        }
        if ((c->keys[c->nkeys] = ak_strndup(s, klen)) == NULL)
            goto oom;
        c->key_lens[c->nkeys++] = klen;
    }
    if (ferror(f)) {
        api->conf_error(node, "reading keys file %s: %s", file, strerror(errno));
        bad = 1;
    }
    fclose(f);
    if (!bad && c->nkeys == 0) {
        api->conf_error(node, "keys file %s holds no keys (one per line; '#' starts a comment)",
                        file);
        bad = 1;
    }
    return bad ? -1 : 0;
oom:
    fclose(f);
    api->log(HELIOS_LOG_ERROR, AK_NAME, "out of memory reading %s", file);
    return -1;
}

static int ak_config_new(const helios_conf *conf, void **cfg)
{
    if (api->conf_kind(conf) != HELIOS_CONF_MAP) {
        if (api->conf_kind(conf) == HELIOS_CONF_NULL)
            api->conf_error(NULL, "api_key_auth needs a config: with keys_file");
        else
            api->conf_error(conf, "expected a map with keys_file, header, realm and strip");
        return -1;
    }
    int bad = api->conf_check_keys(conf, ak_keys) > 0;

    const char *keys_file, *header, *realm;
    int strip;
    int rk = api->conf_str(conf, "keys_file", NULL, &keys_file);
    int rh = api->conf_str(conf, "header", "X-API-Key", &header);
    int rr = api->conf_str(conf, "realm", "heliosd", &realm);
    int rs = api->conf_bool(conf, "strip", 1, &strip);
    if (rk < 0 || rh < 0 || rr < 0 || rs < 0)
        bad = 1;
    if (rk == 0) {
        api->conf_error(conf, "missing required key 'keys_file' (a file with one key per line)");
        bad = 1;
    }
    if (rh >= 0 && !helios_http_is_token(header)) {
        api->conf_error(api->conf_get(conf, "header"), "'%s' is not a valid header name", header);
        bad = 1;
    }
    if (rr >= 0 && (strpbrk(realm, "\"\\\r\n") != NULL || strlen(realm) > 200)) {
        /* it goes inside a quoted-string of a response header */
        api->conf_error(api->conf_get(conf, "realm"),
                        "realm must not contain quotes, backslashes, CR or LF (max 200 bytes)");
        bad = 1;
    }
    if (bad)
        return -1;

    ak_config *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -1;
    c->strip = strip;
    c->bearer = ak_ieq(header, "Authorization");
    size_t wl = strlen(realm) + sizeof("ApiKey realm=\"\"");
    c->header = ak_strndup(header, strlen(header));
    c->www_auth = malloc(wl);
    if (c->header == NULL || c->www_auth == NULL) {
        ak_config_free(c);
        return -1;
    }
    snprintf(c->www_auth, wl, "ApiKey realm=\"%s\"", realm);

    /* relative to the file the key was written in, like every path */
    const helios_conf *kn = api->conf_get(conf, "keys_file");
    char path[4096];
    if (api->conf_path(kn, keys_file, path, sizeof(path)) != 0) {
        api->conf_error(kn, "keys_file path too long");
        ak_config_free(c);
        return -1;
    }
    if (ak_load_keys(kn, path, c) != 0) {
        ak_config_free(c);
        return -1;
    }
    api->log(HELIOS_LOG_INFO, AK_NAME, "%zu keys loaded from %s", c->nkeys, path);
    *cfg = c;
    return 0;
}

/* ---- hooks ---- */

/*
 * Compares every byte of KEY whatever the candidate, so the time depends
 * only on the stored key's length, not on where they first differ.
 */
static int ak_ct_equal(const char *key, size_t klen, const char *cand, size_t clen)
{
    unsigned char diff = (unsigned char)(klen != clen);
    for (size_t i = 0; i < klen; i++) {
        unsigned char b = i < clen ? (unsigned char)cand[i] : 0;
        diff |= (unsigned char)key[i] ^ b;
    }
    return diff == 0;
}

/* Tries every key (no early exit): the time does not tell which matched. */
static int ak_valid(const ak_config *c, const char *cand, size_t clen)
{
    int found = 0;
    for (size_t i = 0; i < c->nkeys; i++)
        found |= ak_ct_equal(c->keys[i], c->key_lens[i], cand, clen);
    return found;
}

static int ak_refuse(helios_ctx *ctx, const char *body)
{
    const ak_config *c = ctx->cfg;
    if (api->resp_header_set(ctx->req, "WWW-Authenticate", c->www_auth) != 0)
        return HELIOS_ERROR;
    if (api->respond(ctx->req, 401, "text/plain; charset=utf-8", body, strlen(body)) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

static int ak_on_request_headers(helios_ctx *ctx)
{
    const ak_config *c = ctx->cfg;
    helios_buf v = api->req_header(ctx->req, c->header);
    if (v.ptr == NULL)
        return ak_refuse(ctx, "401 Unauthorized: API key required\n");

    const char *p = v.ptr, *e = v.ptr + v.len;
    if (c->bearer) {
        /* "Bearer" is case-insensitive (RFC 9110 auth-scheme) */
        static const char scheme[] = "bearer";
        size_t sl = sizeof(scheme) - 1;
        int ok = (size_t)(e - p) > sl && (p[sl] == ' ' || p[sl] == '\t');
        for (size_t i = 0; ok && i < sl; i++)
            ok = (p[i] | 0x20) == scheme[i];
        if (!ok)
            return ak_refuse(ctx, "401 Unauthorized: expected Authorization: Bearer <key>\n");
        p += sl;
    }
    while (p < e && (*p == ' ' || *p == '\t'))
        p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    if (!ak_valid(c, p, (size_t)(e - p)))
        return ak_refuse(ctx, "401 Unauthorized: invalid API key\n");

    /* the core returns how many it removed, or -1 when it refuses */
    if (c->strip && api->req_header_remove(ctx->req, c->header) < 0)
        return HELIOS_ERROR; /* never forward the secret by accident */
    return HELIOS_CONTINUE;
}

/* ---- module descriptor ---- */

static const helios_filter_hooks ak_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = ak_on_request_headers, /* check the key, 401 or strip it */
};

static const helios_module ak_module = {
    HELIOS_MODULE_HEADER(AK_NAME, "1.0.0"),
    .config_new = ak_config_new,   /* reads keys_file, per generation */
    .config_free = ak_config_free, /* wipes the keys */
    .filter = &ak_filter_hooks,    /* in `modules:` or a route's `filters:` */
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &ak_module;
}
