/*
 * admin_api.c - the admin REST API module: configuration, service
 * lifecycle and the module descriptor. The HTTP side is admin_http.c.
 *
 * Config (all optional but auth):
 *   listen: "127.0.0.1:9091" | "[::1]:9091"
 *   auth: none | {algorithm, secret_file | public_key_file, issuer,
 *                 audience, leeway, scope_claim}
 *   allow: [CIDR...]   deny: [CIDR...]
 *   max_body: 64k   audit_log: FILE   metrics_auth: true
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jwt.h>

#include "admin_api.h"

const helios_host_api *aa_api;

/* ---- configuration ---- */

static int parse_listen(aa_config *c, const helios_conf *node, const char *text)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon;
    const char *h = text;
    size_t hlen;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            goto bad;
        h = text + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            goto bad;
        hlen = (size_t)(colon - text);
    }
    if (hlen == 0 || hlen >= sizeof(host))
        goto bad;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || errno || port < 1 || port > 65535)
        goto bad;
    memset(&c->listen, 0, sizeof(c->listen));
    struct sockaddr_in *v4 = (struct sockaddr_in *)&c->listen;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&c->listen;
    if (text[0] != '[' && inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        c->listen_len = sizeof(*v4);
    } else if (text[0] == '[' && inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        c->listen_len = sizeof(*v6);
    } else {
        goto bad;
    }
    snprintf(c->listen_text, sizeof(c->listen_text), "%s", text);
    return 0;
bad:
    aa_api->conf_error(node, "listen '%s' must be IPV4:PORT or [IPV6]:PORT with a numeric address "
                             "and a port of 1..65535",
                       text);
    return -1;
}

static int parse_acl(const helios_conf *conf, const char *key, aa_acl *out)
{
    const helios_conf *n = aa_api->conf_get(conf, key);
    if (n == NULL)
        return 0;
    if (aa_api->conf_kind(n) != HELIOS_CONF_SEQ) {
        aa_api->conf_error(n, "%s must be a list of addresses or CIDRs", key);
        return -1;
    }
    size_t len = aa_api->conf_len(n);
    out->v = calloc(len ? len : 1, sizeof(aa_cidr));
    if (out->v == NULL) {
        aa_api->conf_error(n, "out of memory");
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < len; i++) {
        const helios_conf *item = aa_api->conf_at(n, i);
        char err[160];
        if (aa_cidr_parse(aa_api->conf_scalar(item), &out->v[out->n], err, sizeof(err)) != 0) {
            aa_api->conf_error(item, "%s", err);
            rc = -1;
            continue;
        }
        out->n++;
    }
    return rc;
}

static int alg_of(const char *name)
{
    if (strcmp(name, "HS256") == 0)
        return JWT_ALG_HS256;
    if (strcmp(name, "RS256") == 0)
        return JWT_ALG_RS256;
    if (strcmp(name, "ES256") == 0)
        return JWT_ALG_ES256;
    return -1;
}

static int parse_auth_key(aa_auth *a, const helios_conf *m)
{
    int hmac = a->alg == JWT_ALG_HS256;
    const char *want = hmac ? "secret_file" : "public_key_file";
    const char *other = hmac ? "public_key_file" : "secret_file";
    if (aa_api->conf_get(m, other) != NULL) {
        aa_api->conf_error(aa_api->conf_get(m, other), "%s is not used with algorithm %s (use %s)",
                           other, a->algorithm, want);
        return -1;
    }
    const helios_conf *kn = aa_api->conf_get(m, want);
    const char *file = NULL;
    if (aa_api->conf_str(m, want, NULL, &file) != 1 || file == NULL || file[0] == '\0') {
        aa_api->conf_error(kn ? kn : m, "auth: algorithm %s needs %s", a->algorithm, want);
        return -1;
    }
    char path[4096], err[512];
    if (aa_api->conf_path(kn, file, path, sizeof(path)) != 0) {
        aa_api->conf_error(kn, "%s: path too long", want);
        return -1;
    }
    if (aa_auth_load_key(a, path, err, sizeof(err)) != 0) {
        aa_api->conf_error(kn, "%s: %s", want, err);
        return -1;
    }
    return 0;
}

static int parse_auth(aa_config *c, const helios_conf *conf)
{
    static const char *const keys[] = {"algorithm", "secret_file", "public_key_file", "issuer",
                                       "audience",  "leeway",      "scope_claim",     NULL};
    aa_auth *a = &c->auth;
    const helios_conf *m = aa_api->conf_get(conf, "auth");
    if (m == NULL) {
        aa_api->conf_error(conf, "auth is required: a map with algorithm and a key file, or "
                                 "`auth: none` to run without authentication");
        return -1;
    }
    if (aa_api->conf_kind(m) == HELIOS_CONF_SCALAR) {
        if (strcmp(aa_api->conf_scalar(m), "none") != 0) {
            aa_api->conf_error(m, "auth must be `none` or a map");
            return -1;
        }
        a->mode = AA_AUTH_NONE;
        return 0;
    }
    if (aa_api->conf_kind(m) != HELIOS_CONF_MAP) {
        aa_api->conf_error(m, "auth must be `none` or a map");
        return -1;
    }
    a->mode = AA_AUTH_JWT;
    int rc = aa_api->conf_check_keys(m, keys) ? -1 : 0;
    const char *alg = NULL;
    if (aa_api->conf_str(m, "algorithm", NULL, &alg) != 1 || alg == NULL) {
        aa_api->conf_error(aa_api->conf_get(m, "algorithm") ? aa_api->conf_get(m, "algorithm") : m,
                           "auth.algorithm is required: HS256, RS256 or ES256");
        return -1;
    }
    if ((a->alg = alg_of(alg)) < 0) {
        aa_api->conf_error(aa_api->conf_get(m, "algorithm"),
                           "algorithm '%s' is not supported: HS256, RS256 or ES256", alg);
        return -1;
    }
    a->algorithm = alg;
    uint64_t leeway_ms = 30000;
    if (aa_api->conf_str(m, "issuer", NULL, &a->issuer) < 0 ||
        aa_api->conf_str(m, "audience", NULL, &a->audience) < 0 ||
        aa_api->conf_str(m, "scope_claim", "scope", &a->scope_claim) < 0 ||
        aa_api->conf_duration_ms(m, "leeway", 30000, &leeway_ms) < 0)
        rc = -1;
    if (leeway_ms > 3600000) {
        aa_api->conf_error(aa_api->conf_get(m, "leeway"), "leeway must be at most 1h");
        rc = -1;
    }
    a->leeway_s = leeway_ms / 1000;
    if (parse_auth_key(a, m) != 0)
        rc = -1;
    return rc;
}

static int parse_audit(aa_config *c, const helios_conf *conf)
{
    const char *file = NULL;
    int got = aa_api->conf_str(conf, "audit_log", NULL, &file);
    if (got < 0)
        return -1;
    if (got == 0 || file == NULL)
        return 0;
    char path[4096];
    if (file[0] == '\0' ||
        aa_api->conf_path(aa_api->conf_get(conf, "audit_log"), file, path, sizeof(path)) != 0) {
        aa_api->conf_error(aa_api->conf_get(conf, "audit_log"), "audit_log: bad path");
        return -1;
    }
    c->audit_path = strdup(path);
    return c->audit_path ? 0 : -1;
}

static void aa_config_free(void *cfg)
{
    aa_config *c = cfg;
    if (c == NULL)
        return;
    aa_listen_unclaim(c);
    free(c->auth.key);
    free(c->allow.v);
    free(c->deny.v);
    free(c->audit_path);
    pthread_mutex_destroy(&c->reload_lock);
    pthread_mutex_destroy(&c->audit_lock);
    pthread_mutex_destroy(&c->quiesce_lock);
    free(c);
}

static int aa_config_new(const helios_conf *conf, void **out)
{
    static const char *const keys[] = {"listen",   "auth",      "allow",        "deny",
                                       "max_body", "audit_log", "metrics_auth",
                                       "default_upstream", NULL};
    if (conf != NULL && aa_api->conf_kind(conf) != HELIOS_CONF_MAP) {
        aa_api->conf_error(conf, "admin_api config must be a map");
        return -1;
    }
    aa_config *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        aa_api->conf_error(conf, "out of memory");
        return -1;
    }
    pthread_mutex_init(&c->reload_lock, NULL);
    pthread_mutex_init(&c->audit_lock, NULL);
    pthread_mutex_init(&c->quiesce_lock, NULL);
    c->audit_fd = -1;
    int rc = aa_api->conf_check_keys(conf, keys) ? -1 : 0;
    const char *listen = NULL;
    if (aa_api->conf_str(conf, "listen", AA_DEFAULT_LISTEN, &listen) < 0 ||
        parse_listen(c, aa_api->conf_get(conf, "listen"), listen) != 0)
        rc = -1;
    if (parse_auth(c, conf) != 0)
        rc = -1;
    if (parse_acl(conf, "allow", &c->allow) != 0 || parse_acl(conf, "deny", &c->deny) != 0)
        rc = -1;
    if (aa_api->conf_size(conf, "max_body", AA_DEFAULT_MAX_BODY, &c->max_body) < 0)
        rc = -1;
    else if (c->max_body < 1 || c->max_body > AA_MAX_BODY_LIMIT) {
        aa_api->conf_error(aa_api->conf_get(conf, "max_body"), "max_body must be 1..16m");
        rc = -1;
    }
    if (aa_api->conf_bool(conf, "metrics_auth", 1, &c->metrics_auth) < 0 ||
        aa_api->conf_str(conf, "default_upstream", NULL, &c->default_upstream) < 0)
        rc = -1;
    if (parse_audit(c, conf) != 0)
        rc = -1;
    if (rc != 0) {
        aa_config_free(c);
        return -1;
    }
    aa_listen_claim(c);
    *out = c;
    return 0;
}

/* ---- service ---- */

static int aa_start(void *cfg)
{
    aa_config *c = cfg;
    atomic_store(&c->stopping, 0);
    atomic_store(&c->active, 0);
    atomic_store(&c->fresh, 0);
    c->quiesced = 0;
    c->gen = aa_api->generation();
    if (c->audit_path) {
        c->audit_fd = open(c->audit_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (c->audit_fd < 0) {
            aa_http_drop_kept(c);
            aa_api->log(HELIOS_LOG_ERROR, AA_NAME, "cannot open audit_log %s: %s", c->audit_path,
                        strerror(errno));
            return -1;
        }
    }
    if (c->auth.mode == AA_AUTH_NONE)
        aa_api->log(HELIOS_LOG_WARN, AA_NAME,
                    "auth: none - the admin API on %s accepts every request without a token",
                    c->listen_text);
    if (aa_http_start(c) != 0) {
        if (c->audit_fd >= 0)
            close(c->audit_fd);
        c->audit_fd = -1;
        return -1;
    }
    aa_api->log(HELIOS_LOG_INFO, AA_NAME, "listening on %s (generation %u)", c->listen_text,
                aa_api->generation());
    return 0;
}

static void aa_stop(void *cfg)
{
    aa_config *c = cfg;
    aa_http_stop(c);
    if (c->audit_fd >= 0)
        close(c->audit_fd);
    c->audit_fd = -1;
}

/* ---- module descriptor ---- */

static const helios_service_hooks aa_service_hooks = {
    .size = sizeof(helios_service_hooks),
    .start = aa_start, /* main thread: opens the audit log, starts libmicrohttpd */
    .stop = aa_stop,   /* main thread: stops accepting, lets answers finish, joins */
};

static const helios_module aa_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(AA_NAME, AA_VERSION),
    .config_new = aa_config_new, /* listener, auth, IP lists, body cap, audit log */
    .config_free = aa_config_free,
    .worker_init = NULL, /* nothing per worker: the API runs on its own threads */
    .worker_fini = NULL,
    .filter = NULL,
    .handler = NULL,
    .balancer = NULL,
    .service = &aa_service_hooks, /* listed in the global `modules:` */
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    if (host->abi_major != HELIOS_ABI_MAJOR || host->abi_minor < 1 ||
        !HELIOS_API_HAS(host, export_get)) {
        host->log(HELIOS_LOG_ERROR, AA_NAME, "needs a heliosd with plugin ABI 1.1 or newer");
        return NULL;
    }
    aa_api = host;
    return &aa_module;
}
