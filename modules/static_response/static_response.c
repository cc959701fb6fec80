/*
 * static_response.c - a handler that answers every request of its route with
 * one fixed response: status, headers and body taken from the configuration.
 *
 * The response is serialised once per configuration generation, in
 * config_new, with api->prepared_new; a request then costs a single
 * api->respond_prepared call with no formatting and no allocation. A body
 * read from body_file is therefore a snapshot: edit the file, then reload.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <helios.h>
#include <helios/util/http.h>

#define SR_NAME "static_response"
#define SR_DEFAULT_CONTENT_TYPE "text/plain; charset=utf-8"
/* The whole body is held in memory per generation; larger files belong
 * behind a file server, not in a fixed response. */
#define SR_BODY_FILE_MAX (16u * 1024 * 1024)
#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const sr_keys[] = {
    "status", "headers", "body", "body_file", "content_type", NULL,
};

/*
 * Header names the operator may not set: the core writes framing and Date
 * itself, connection-specific headers are forbidden in HTTP/2 (RFC 9113
 * 8.2.2), and Content-Type has its own key. A static copy would duplicate or
 * contradict what the core sends.
 */
static const char *const sr_reserved_headers[] = {
    "content-length",   "transfer-encoding", "connection", "keep-alive",
    "proxy-connection", "upgrade",           "date",       NULL,
};

typedef struct sr_config {
    helios_prepared *resp; /* status line, headers and body; immutable */
} sr_config;

/* CR and LF would split the header (response splitting). A NUL cannot reach
 * us: scalars come NUL-terminated, so one would end the value early. */
static int sr_value_ok(const char *v)
{
    return strpbrk(v, "\r\n") == NULL;
}

/* Statuses that must not carry content (RFC 9110 15.3.5, 15.3.6, 15.4.5). */
static int sr_status_has_no_body(long long status)
{
    return status == 204 || status == 205 || status == 304;
}

/* Checks header I of the `headers:` map. Returns 0 if valid. */
static int sr_check_header(const helios_conf *hdrs, size_t i)
{
    const char *name = api->conf_key_at(hdrs, i);
    const helios_conf *vn = api->conf_at(hdrs, i);
    const char *value = api->conf_scalar(vn);
    int bad = 0;

    /* Errors are reported at the value node: its key path names the header. */
    if (name == NULL || !helios_http_is_token(name)) {
        api->conf_error(vn, "invalid header name '%s': use letters, digits and !#$%%&'*+-.^_`|~",
                        name ? name : "");
        bad = 1;
    } else if (helios_http_name_eq(name, "content-type")) {
        api->conf_error(vn, "set Content-Type with the content_type key, not under headers");
        bad = 1;
    } else {
        for (const char *const *r = sr_reserved_headers; *r; r++) {
            if (helios_http_name_eq(name, *r)) {
                api->conf_error(vn, "header '%s' is managed by heliosd and cannot be set here",
                                name);
                bad = 1;
                break;
            }
        }
    }
    if (value == NULL) {
        api->conf_error(vn, "the value of header '%s' must be a string", name ? name : "");
        bad = 1;
    } else if (!sr_value_ok(value)) {
        api->conf_error(vn, "the value of header '%s' contains a line break (CR or LF)",
                        name ? name : "");
        bad = 1;
    }
    return bad ? -1 : 0;
}

/*
 * Reads the regular file PATH whole into a malloc'd buffer (*OUT, *LEN).
 * Returns 0, or -1 with the reason in ERR.
 */
static int sr_read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    /* O_NONBLOCK so a FIFO cannot stall config loading; it is then refused
     * below as not a regular file. It does not affect regular files. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        snprintf(err, errlen, "%s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "not a regular file");
        close(fd);
        return -1;
    }
    if (st.st_size > (off_t)SR_BODY_FILE_MAX) {
        snprintf(err, errlen, "%lld bytes, over the %u MiB limit", (long long)st.st_size,
                 SR_BODY_FILE_MAX >> 20);
        close(fd);
        return -1;
    }

    /* One spare byte tells us whether the file grew after fstat. */
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return -1;
    }
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s", strerror(errno));
            free(buf);
            close(fd);
            return -1;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n == cap) {
        snprintf(err, errlen, "the file changed while it was read; reload again");
        free(buf);
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

/*
 * Reads body_file (node FN, text PATH) into *BODY. Returns 0, or -1 after
 * reporting an error that names the file.
 */
static int sr_load_body_file(const helios_conf *fn, const char *path, char **body, size_t *len)
{
    char resolved[PATH_MAX], err[256];
    if (api->conf_path(fn, path, resolved, sizeof(resolved)) != 0) {
        api->conf_error(fn, "body_file path '%s' is too long", path);
        return -1;
    }
    if (sr_read_file(resolved, body, len, err, sizeof(err)) != 0) {
        api->conf_error(fn, "cannot use body_file '%s': %s", resolved, err);
        return -1;
    }
    return 0;
}

/* Builds the prepared response. Returns NULL after reporting at AT, or in
 * the error log when the instance has no `config:` node to point at. */
static helios_prepared *sr_prepare(const helios_conf *at, int status, const char *content_type,
                                   const helios_conf *hdrs, size_t nhdrs, const char *body,
                                   size_t len)
{
    size_t npairs = nhdrs + (content_type ? 1 : 0);
    const char **pairs = NULL;
    char err[256];

    if (npairs > 0 && (pairs = malloc(2 * npairs * sizeof(*pairs))) == NULL) {
        snprintf(err, sizeof(err), "out of memory");
    } else {
        size_t k = 0;
        if (content_type) {
            pairs[k++] = "Content-Type";
            pairs[k++] = content_type;
        }
        for (size_t i = 0; i < nhdrs; i++) {
            pairs[k++] = api->conf_key_at(hdrs, i);
            pairs[k++] = api->conf_scalar(api->conf_at(hdrs, i));
        }
        helios_prepared *p = api->prepared_new(status, pairs, npairs, body, len, err, sizeof(err));
        free(pairs);
        if (p != NULL)
            return p;
    }
    if (at != NULL)
        api->conf_error(at, "cannot build the response: %s", err);
    else
        api->log(HELIOS_LOG_ERROR, SR_NAME, "cannot build the response: %s", err);
    return NULL;
}

static int sr_config_new(const helios_conf *conf, void **cfg)
{
    int kind = api->conf_kind(conf);
    if (kind == HELIOS_CONF_NULL) {
        conf = NULL; /* `config: ~` is the same as no config */
    } else if (kind != HELIOS_CONF_MAP) {
        api->conf_error(conf, "expected a map with status, headers, body or body_file, "
                              "content_type");
        return -1;
    }

    int bad = api->conf_check_keys(conf, sr_keys) > 0;

    long long status = 200;
    int status_ok = api->conf_int(conf, "status", 200, 100, 599, &status) >= 0;
    if (!status_ok) {
        bad = 1;
    } else if (status < 200) {
        api->conf_error(api->conf_get(conf, "status"),
                        "status %lld is interim (1xx) and cannot be a final response; "
                        "use 200..599",
                        status);
        bad = 1;
    }

    const char *body = NULL, *body_file = NULL, *content_type = NULL;
    int has_body = api->conf_str(conf, "body", NULL, &body);
    int has_file = api->conf_str(conf, "body_file", NULL, &body_file);
    int has_type = api->conf_str(conf, "content_type", NULL, &content_type);
    if (has_body < 0 || has_file < 0 || has_type < 0)
        bad = 1;
    if (has_body == 1 && has_file == 1) {
        api->conf_error(api->conf_get(conf, "body_file"), "set either body or body_file, not both");
        bad = 1;
    }
    if ((has_body == 1 || has_file == 1) && status_ok && sr_status_has_no_body(status)) {
        api->conf_error(api->conf_get(conf, has_body == 1 ? "body" : "body_file"),
                        "a %lld response has no body; remove body/body_file or change status",
                        status);
        bad = 1;
    }
    if (has_type == 1 && !sr_value_ok(content_type)) {
        api->conf_error(api->conf_get(conf, "content_type"),
                        "content_type contains a line break (CR or LF)");
        bad = 1;
    }

    const helios_conf *hdrs = api->conf_get(conf, "headers");
    size_t nhdrs = 0;
    if (api->conf_kind(hdrs) == HELIOS_CONF_MAP) {
        nhdrs = api->conf_len(hdrs);
        for (size_t i = 0; i < nhdrs; i++)
            if (sr_check_header(hdrs, i) != 0)
                bad = 1;
    } else if (api->conf_kind(hdrs) != HELIOS_CONF_NULL) {
        api->conf_error(hdrs, "expected a map of header name: value");
        bad = 1;
    }

    /* Read the file even when other keys are wrong, so one run reports
     * every problem. */
    char *file_body = NULL;
    size_t len = body ? strlen(body) : 0;
    if (has_file == 1 &&
        sr_load_body_file(api->conf_get(conf, "body_file"), body_file, &file_body, &len) != 0)
        bad = 1;
    if (bad) {
        free(file_body);
        return -1;
    }

    /* An explicit empty content_type means "send no Content-Type". */
    if (has_type == 1 && content_type[0] == '\0')
        content_type = NULL;
    else if (has_type != 1)
        content_type = (has_body == 1 || has_file == 1) ? SR_DEFAULT_CONTENT_TYPE : NULL;

    helios_prepared *resp =
        sr_prepare(conf, (int)status, content_type, hdrs, nhdrs, file_body ? file_body : body, len);
    free(file_body); /* prepared_new copied it */
    if (resp == NULL)
        return -1;

    sr_config *c = malloc(sizeof(*c));
    if (c == NULL) {
        api->prepared_free(resp);
        api->log(HELIOS_LOG_ERROR, SR_NAME, "out of memory");
        return -1;
    }
    c->resp = resp;
    *cfg = c;
    return 0;
}

static void sr_config_free(void *cfg)
{
    sr_config *c = cfg;
    api->prepared_free(c->resp);
    free(c);
}

/* ---- hooks ---- */

static int sr_handle(helios_ctx *c)
{
    const sr_config *cfg = c->cfg;
    /* -1 only if a response already started, which a handler cannot mend. */
    if (api->respond_prepared(c->req, cfg->resp) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

/* ---- module descriptor ---- */

static const helios_handler_hooks sr_handler_hooks = {
    .size = sizeof(helios_handler_hooks),
    .handle = sr_handle, /* every request: send the prepared response */
};

static const helios_module sr_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(SR_NAME, "0.1.0"),
    .config_new = sr_config_new,   /* validate keys, read body_file, build the response */
    .config_free = sr_config_free, /* free the prepared response */
    .worker_init = NULL,           /* no per-worker state: the response is immutable */
    .worker_fini = NULL,
    .filter = NULL,
    .handler = &sr_handler_hooks, /* used as a route's `handler:` */
    .balancer = NULL,
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &sr_module;
}
