/*
 * add_header.c - an example third-party heliosd module.
 *
 * A filter that sets one configurable response header on every response
 * that passes through it, and, when `ping_path` is configured, answers
 * `GET <ping_path>` itself with a fixed body (a liveness probe that never
 * reaches the upstream).
 *
 * It uses nothing but the installed SDK (<helios.h>): build it with the
 * Makefile (pkg-config) or the CMakeLists.txt (find_package) next to it.
 */
#include <stdlib.h>
#include <string.h>

#include <helios.h>
#include <helios/util/http.h>

#define AH_NAME "add_header"
#define AH_PING_BODY "pong\n"

/*
 * The host API table. Given once, on the main thread, before any other
 * call into the module, and valid until the module is unloaded; reading it
 * from worker threads afterwards needs no locking.
 */
static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const ah_keys[] = {"name", "value", "ping_path", NULL};

/* One per configured instance; shared read-only by all workers. */
typedef struct ah_config {
    char *name;      /* header name, validated as an HTTP token */
    char *value;     /* header value, without CR/LF */
    char *ping_path; /* NULL when ping_path is not set */
} ah_config;

/* strdup is POSIX, not C17; this keeps the example free of feature macros. */
static char *ah_strdup(const char *s)
{
    size_t len = strlen(s) + 1;
    char *p = malloc(len);
    return p ? memcpy(p, s, len) : NULL;
}

static void ah_config_free(void *cfg)
{
    ah_config *c = cfg;
    free(c->name);
    free(c->value);
    free(c->ping_path);
    free(c);
}

/*
 * Strings from the conf_* getters belong to the configuration tree, so we
 * keep copies: the instance config must not depend on the tree's lifetime.
 */
static int ah_config_new(const helios_conf *conf, void **cfg)
{
    int kind = api->conf_kind(conf);
    if (kind != HELIOS_CONF_MAP) {
        /* No `config:` node to point at when it is absent: say it in the
         * log; the core then reports the instance as rejected. */
        if (kind == HELIOS_CONF_NULL)
            api->log(HELIOS_LOG_ERROR, AH_NAME, "needs a config: with name and value");
        else
            api->conf_error(conf, "expected a map with name, value and optional ping_path");
        return -1;
    }

    int bad = api->conf_check_keys(conf, ah_keys) > 0;

    const char *name, *value, *ping_path;
    int rn = api->conf_str(conf, "name", NULL, &name);
    int rv = api->conf_str(conf, "value", NULL, &value);
    int rp = api->conf_str(conf, "ping_path", NULL, &ping_path);
    if (rn < 0 || rv < 0 || rp < 0)
        bad = 1;

    if (rn == 0) {
        api->conf_error(conf, "missing required key 'name' (the response header to set)");
        bad = 1;
    } else if (rn == 1 && !helios_http_is_token(name)) {
        api->conf_error(api->conf_get(conf, "name"),
                        "'%s' is not a valid header name: use letters, digits and "
                        "!#$%%&'*+-.^_`|~",
                        name);
        bad = 1;
    }
    if (rv == 0) {
        api->conf_error(conf, "missing required key 'value' (the header's value)");
        bad = 1;
    } else if (rv == 1 && strpbrk(value, "\r\n") != NULL) {
        /* A line break would let the value start a new header line. */
        api->conf_error(api->conf_get(conf, "value"), "value must not contain CR or LF");
        bad = 1;
    }
    if (rp == 1 && ping_path[0] != '/') {
        api->conf_error(api->conf_get(conf, "ping_path"),
                        "ping_path must start with '/' (got '%s')", ping_path);
        bad = 1;
    }
    if (bad)
        return -1;

    ah_config *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->name = ah_strdup(name)) == NULL || (c->value = ah_strdup(value)) == NULL ||
        (rp == 1 && (c->ping_path = ah_strdup(ping_path)) == NULL)) {
        if (c)
            ah_config_free(c);
        api->log(HELIOS_LOG_ERROR, AH_NAME, "out of memory");
        return -1;
    }
    *cfg = c;
    return 0;
}

/* ---- hooks ---- */

static int ah_buf_eq(helios_buf b, const char *s)
{
    size_t len = strlen(s);
    return b.ptr != NULL && b.len == len && memcmp(b.ptr, s, len) == 0;
}

/* Request filter: answer the ping ourselves, let everything else through. */
static int ah_on_request_headers(helios_ctx *c)
{
    const ah_config *cfg = c->cfg;
    if (cfg->ping_path == NULL || !ah_buf_eq(api->req_method(c->req), "GET") ||
        !ah_buf_eq(api->req_path(c->req), cfg->ping_path))
        return HELIOS_CONTINUE;
    /* respond() copies the body, so a string literal is fine. */
    if (api->respond(c->req, 200, "text/plain; charset=utf-8", AH_PING_BODY,
                     sizeof(AH_PING_BODY) - 1) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

/* Response filter: set the header, replacing any of the same name. */
static int ah_on_response_headers(helios_ctx *c)
{
    const ah_config *cfg = c->cfg;
    /* Name and value were validated at load, so a refusal here is a core
     * surprise; a missing cosmetic header is not worth failing the
     * response over. */
    if (api->resp_header_set(c->req, cfg->name, cfg->value) != 0)
        api->log(HELIOS_LOG_WARN, AH_NAME, "could not set response header %s", cfg->name);
    return HELIOS_CONTINUE;
}

/* ---- module descriptor ---- */

static const helios_filter_hooks ah_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = ah_on_request_headers,   /* GET ping_path -> fixed answer */
    .on_request_body = NULL,                       /* bodies pass untouched */
    .on_response_headers = ah_on_response_headers, /* set the configured header */
    .on_response_body = NULL,
    .on_log = NULL, /* no per-request state to release */
};

static const helios_module ah_module = {
    /* magic, ABI version, descriptor size, name (= file name without .so),
     * version, build signature: what the loader checks before anything else */
    HELIOS_MODULE_HEADER(AH_NAME, "1.0.0"),
    .config_new = ah_config_new,   /* per instance and generation, main thread */
    .config_free = ah_config_free, /* when the generation is gone */
    .worker_init = NULL,           /* no per-worker state */
    .worker_fini = NULL,
    .filter = &ah_filter_hooks, /* in `modules:` or a route's `filters:` */
    .handler = NULL,
    .balancer = NULL,
    .service = NULL,
    .health = NULL,
};

/* The one exported symbol: keep the host API, hand over the descriptor. */
HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &ah_module;
}
