/*
 * hmac_verify.c - an example third-party heliosd module: a filter that
 * lets a request through only when it carries a valid HMAC-SHA256 of its
 * method, target and body, and that holds the request until it has
 * checked (ABI 1.3, api->req_body_hold).
 *
 *   X-Signature: hex(HMAC-SHA256(secret, METHOD "\n" TARGET "\n" BODY))
 *
 * on_request_headers: no signature, or one that is not 64 hex digits, is
 * answered 401 at once; otherwise the filter asks the core to hold the
 * body. Nothing goes upstream (or to a handler) before on_request_body has
 * seen the whole body, in one call with LAST set - also for a request
 * without a body (Content-Length: 0, an HTTP/2 HEADERS with END_STREAM),
 * whose LAST call carries an empty chunk. A wrong signature is answered
 * 401 there and the backend is never contacted; a body larger than
 * `max_body` (or the core's limits.max_held_body) is refused 413 by the
 * core, also before any backend sees the request.
 *
 * It uses the installed SDK (<helios.h>), libc and OpenSSL's libcrypto.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <helios.h>

#define HV_NAME "hmac_verify"
#define HV_SIG_LEN 32 /* SHA-256 */

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const hv_keys[] = {"secret", "header", "max_body", NULL};

typedef struct hv_config {
    const char *secret; /* lives with the configuration node */
    size_t secret_len;
    const char *header;
    uint64_t max_body; /* 0: the core's bound */
    EVP_MAC *mac;
} hv_config;

static void hv_config_free(void *p)
{
    hv_config *c = p;
    if (c == NULL)
        return;
    EVP_MAC_free(c->mac);
    free(c);
}

static int hv_config_new(const helios_conf *conf, void **cfg)
{
    hv_config *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        api->conf_error(NULL, "out of memory");
        return -1;
    }
    int bad = api->conf_check_keys(conf, hv_keys) != 0;
    int got = api->conf_str(conf, "secret", NULL, &c->secret);
    bad |= got < 0;
    if (got == 0) {
        api->conf_error(conf, "secret: required (the shared HMAC key, 16 bytes or more)");
        bad = 1;
    } else if (got > 0 && strlen(c->secret) < 16) {
        api->conf_error(api->conf_get(conf, "secret"), "too short: use 16 bytes or more");
        bad = 1;
    }
    bad |= api->conf_str(conf, "header", "X-Signature", &c->header) < 0;
    bad |= api->conf_size(conf, "max_body", 0, &c->max_body) < 0;
    if (!bad && (c->mac = EVP_MAC_fetch(NULL, "HMAC", NULL)) == NULL) {
        api->conf_error(NULL, "OpenSSL has no HMAC");
        bad = 1;
    }
    if (bad) {
        hv_config_free(c);
        return -1;
    }
    c->secret_len = strlen(c->secret);
    *cfg = c;
    return 0;
}

/* ---- helpers ---- */

static int hv_unhex(helios_buf h, unsigned char *out)
{
    if (h.len != 2 * HV_SIG_LEN)
        return -1;
    for (size_t i = 0; i < h.len; i++) {
        char ch = h.ptr[i];
        int v = ch >= '0' && ch <= '9'   ? ch - '0'
                : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                         : -1;
        if (v < 0)
            return -1;
        out[i / 2] = (unsigned char)(i % 2 ? out[i / 2] | v : v << 4);
    }
    return 0;
}

static int hv_refuse(helios_request *r)
{
    static const char body[] = "401 Unauthorized\n";
    if (api->respond(r, 401, "text/plain", body, sizeof(body) - 1) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

/* HMAC(secret, METHOD \n TARGET \n BODY) into OUT; 0, or -1. */
static int hv_mac(const hv_config *c, helios_request *r, helios_buf body, unsigned char *out)
{
    EVP_MAC_CTX *m = EVP_MAC_CTX_new(c->mac);
    if (m == NULL)
        return -1;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    helios_buf method = api->req_method(r), target = api->req_target(r);
    size_t len = 0;
    int ok = EVP_MAC_init(m, (const unsigned char *)c->secret, c->secret_len, params) &&
             EVP_MAC_update(m, (const unsigned char *)method.ptr, method.len) &&
             EVP_MAC_update(m, (const unsigned char *)"\n", 1) &&
             EVP_MAC_update(m, (const unsigned char *)target.ptr, target.len) &&
             EVP_MAC_update(m, (const unsigned char *)"\n", 1) &&
             EVP_MAC_update(m, (const unsigned char *)body.ptr, body.len) &&
             EVP_MAC_final(m, out, &len, HV_SIG_LEN) && len == HV_SIG_LEN;
    EVP_MAC_CTX_free(m);
    return ok ? 0 : -1;
}

/* ---- hooks ---- */

static int hv_request_headers(helios_ctx *c)
{
    const hv_config *cfg = c->cfg;
    unsigned char *want = api->req_alloc(c->req, HV_SIG_LEN);
    if (want == NULL)
        return HELIOS_ERROR;
    if (hv_unhex(api->req_header(c->req, cfg->header), want) != 0)
        return hv_refuse(c->req); /* absent or malformed: no need to read on */
    *c->rstate = want;            /* arena memory: nothing to free in on_log */
    /* hold: the backend gets nothing before on_request_body said yes */
    if (api->req_body_hold(c->req, cfg->max_body) != 0)
        return HELIOS_ERROR;
    return HELIOS_CONTINUE;
}

static int hv_request_body(helios_ctx *c, helios_buf *chunk, int last)
{
    const unsigned char *want = *c->rstate;
    if (want == NULL)
        return HELIOS_CONTINUE; /* refused in on_request_headers */
    if (!last) {
        api->log(HELIOS_LOG_ERROR, HV_NAME, "a held body arrived in pieces");
        return HELIOS_ERROR;
    }
    unsigned char got[HV_SIG_LEN];
    if (hv_mac(c->cfg, c->req, *chunk, got) != 0)
        return HELIOS_ERROR;
    if (CRYPTO_memcmp(got, want, HV_SIG_LEN) != 0)
        return hv_refuse(c->req);
    return HELIOS_CONTINUE;
}

static const helios_filter_hooks hv_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = hv_request_headers,
    .on_request_body = hv_request_body,
};

static const helios_module hv_module = {
    HELIOS_MODULE_HEADER(HV_NAME, "1.0.0"),
    .config_new = hv_config_new,
    .config_free = hv_config_free,
    .filter = &hv_hooks,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host; /* a core older than ABI 1.3 refuses this module */
    return &hv_module;
}
