/*
 * metrics.c - Prometheus metrics: counts every finished request (filter
 * kind, on_log) and serves the text exposition format 0.0.4 (service kind),
 * on its own libmicrohttpd listener or through admin_api's.
 *
 * This file: the configuration and the descriptor. metrics_internal.h
 * lists the other files; metrics_collect.c states the hot-path and
 * lifetime rules.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics_internal.h"

const helios_host_api *mx_api;

const double mx_default_buckets[MX_PROBE_NB] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                            0.1,    0.25,  0.5,    1,     2.5,  5,     10};

/* ---- configuration ---- */

static const char *const mx_keys[] = {"listen", "path", "buckets", NULL};

/* "1.2.3.4:80" or "[::1]:80" into SS. Returns 0, -1 when malformed. */
static int mx_parse_listen(const char *s, struct sockaddr_storage *ss)
{
    char host[64];
    const char *colon;
    size_t hl;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return -1;
        hl = (size_t)(close - s - 1);
        if (hl == 0 || hl >= sizeof(host))
            return -1;
        memcpy(host, s + 1, hl);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -1;
        hl = (size_t)(colon - s);
        if (hl == 0 || hl >= sizeof(host))
            return -1;
        memcpy(host, s, hl);
    }
    host[hl] = '\0';
    const char *ps = colon + 1;
    if (*ps == '\0' || strspn(ps, "0123456789") != strlen(ps) || strlen(ps) > 5)
        return -1;
    long port = strtol(ps, NULL, 10);
    if (port < 1 || port > 65535)
        return -1;
    memset(ss, 0, sizeof(*ss));
    if (s[0] == '[') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            return -1;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return -1;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
    }
    return 0;
}

/* `buckets:` into LE and NB. Returns 0, -1 after recording errors. */
static int mx_parse_buckets(const helios_conf *conf, double *le, size_t *nb)
{
    const helios_conf *n = mx_api->conf_get(conf, "buckets");
    if (n == NULL) {
        *nb = sizeof(mx_default_buckets) / sizeof(mx_default_buckets[0]);
        memcpy(le, mx_default_buckets, sizeof(mx_default_buckets));
        return 0;
    }
    if (mx_api->conf_kind(n) != HELIOS_CONF_SEQ) {
        mx_api->conf_error(n,
                           "must be a list of bucket upper bounds in seconds, e.g. [0.01, 0.1, 1]");
        return -1;
    }
    size_t len = mx_api->conf_len(n);
    if (len == 0 || len > MX_MAX_BUCKETS) {
        mx_api->conf_error(n, "must list 1 to %d bucket bounds (+Inf is implicit), got %zu",
                           MX_MAX_BUCKETS, len);
        return -1;
    }
    int bad = 0;
    double prev = 0; /* the last valid bound, compared when nprev > 0 */
    size_t nprev = 0;
    for (size_t i = 0; i < len; i++) {
        const helios_conf *item = mx_api->conf_at(n, i);
        const char *s = mx_api->conf_scalar(item);
        char *end = NULL;
        double v = 0;
        if (s != NULL && *s != '\0') {
            errno = 0;
            v = strtod(s, &end);
        }
        if (s == NULL || *s == '\0' || end == NULL || *end != '\0' || errno != 0 || !isfinite(v)) {
            mx_api->conf_error(item, "not a number of seconds: bucket bounds are finite numbers "
                                     "(+Inf is implicit)");
            bad = 1;
            continue;
        }
        if (v <= 0) {
            mx_api->conf_error(item, "bucket bound %g must be greater than 0", v);
            bad = 1;
            continue;
        }
        if (nprev > 0 && v <= prev) {
            mx_api->conf_error(item, "bucket bounds must increase strictly: %g after %g", v, prev);
            bad = 1;
        }
        prev = v;
        nprev++;
        le[i] = v;
    }
    *nb = len;
    return bad ? -1 : 0;
}

static void mx_config_free(void *cfg)
{
    mx_config *c = cfg;
    if (c == NULL)
        return;
    mx_listen_unclaim(c);
    mx_store_put(c->store);
    free(c->path);
    free(c);
}

static int mx_config_new(const helios_conf *conf, void **cfg)
{
    int bad = mx_api->conf_check_keys(conf, mx_keys) > 0;
    const char *listen = NULL, *path = NULL;
    int listen_ok = mx_api->conf_str(conf, "listen", MX_LISTEN_DEFAULT, &listen) >= 0;
    int path_ok = mx_api->conf_str(conf, "path", "/metrics", &path) >= 0;
    if (!listen_ok || !path_ok)
        bad = 1; /* the getter reported it */
    mx_config *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        mx_api->log(HELIOS_LOG_ERROR, MX_NAME, "out of memory");
        return -1;
    }
    if (!listen_ok) {
        /* reported */
    } else if (strcmp(listen, "admin") == 0) {
        c->admin = 1;
    } else if (strlen(listen) >= sizeof(c->listen) || mx_parse_listen(listen, &c->addr) != 0) {
        mx_api->conf_error(mx_api->conf_get(conf, "listen"),
                           "expected IPV4:PORT, [IPV6]:PORT (numeric addresses) or `admin`");
        bad = 1;
    } else {
        snprintf(c->listen, sizeof(c->listen), "%s", listen);
    }
    if (path_ok && (path[0] != '/' || strpbrk(path, " ?#") != NULL)) {
        mx_api->conf_error(mx_api->conf_get(conf, "path"),
                           "must be an absolute path starting with '/' (no spaces, '?' or '#')");
        bad = 1;
    }
    double le[MX_MAX_BUCKETS];
    size_t nb = 0;
    if (mx_parse_buckets(conf, le, &nb) != 0)
        bad = 1;
    if (bad) {
        free(c);
        return -1;
    }
    mx_events_publish();
    c->path = strdup(path);
    c->store = mx_store_get(le, nb);
    if (c->path == NULL || c->store == NULL) {
        mx_api->log(HELIOS_LOG_ERROR, MX_NAME, "out of memory");
        mx_config_free(c);
        return -1;
    }
    mx_listen_claim(c);
    *cfg = c;
    return 0;
}

/* ---- module descriptor ---- */

static const helios_filter_hooks mx_filter = {
    .size = sizeof(helios_filter_hooks),
    .on_log = mx_on_log,
};

static const helios_service_hooks mx_service = {
    .size = sizeof(helios_service_hooks),
    .start = mx_start,
    .stop = mx_stop,
};

static const helios_module mx_module = {
    HELIOS_MODULE_HEADER(MX_NAME, MX_VERSION),
    .config_new = mx_config_new,
    .config_free = mx_config_free,
    .worker_init = mx_worker_init,
    .worker_fini = mx_worker_fini,
    .filter = &mx_filter,
    .service = &mx_service,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    mx_api = host;
    return &mx_module;
}
