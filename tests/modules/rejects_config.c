/*
 * rejects_config.c - a test module that accepts its configuration only when
 * `answer` is 42, so tests can check that a module's located config error
 * reaches the operator (heliosd -t, failed reload) and that the core's
 * generation survives a rejected reload.
 *
 * It is both a filter (no hooks) and a handler, so it fits in `modules:`,
 * a route's `filters:` or `handler:`. As a handler it answers 200 "42\n".
 */
#include <string.h>

#include <helios.h>

#define RC_BODY "42\n"

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const rc_keys[] = {"answer", NULL};

/* Accepts {answer: 42}; nothing to keep, so *cfg stays NULL. */
static int rc_config_new(const helios_conf *conf, void **cfg)
{
    (void)cfg;
    int kind = api->conf_kind(conf);
    if (kind == HELIOS_CONF_NULL) {
        /* No node to attach the error to; the core reports the instance
         * as having rejected its configuration. */
        api->log(HELIOS_LOG_ERROR, "rejects_config", "answer must be 42");
        return -1;
    }
    if (kind != HELIOS_CONF_MAP) {
        api->conf_error(conf, "answer must be 42");
        return -1;
    }
    if (api->conf_check_keys(conf, rc_keys) > 0)
        return -1;
    /* Compared as text, so every wrong answer (41, "forty-two", a map)
     * gets the same message for tests to match. */
    const helios_conf *answer = api->conf_get(conf, "answer");
    const char *text = api->conf_scalar(answer);
    if (text == NULL || strcmp(text, "42") != 0) {
        api->conf_error(answer ? answer : conf, "answer must be 42");
        return -1;
    }
    return 0;
}

/* ---- hooks ---- */

static int rc_handle(helios_ctx *c)
{
    if (api->respond(c->req, 200, "text/plain", RC_BODY, sizeof(RC_BODY) - 1) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

/* ---- module descriptor ---- */

static const helios_filter_hooks rc_filter_hooks = {
    .size = sizeof(helios_filter_hooks), /* every hook NULL: passes everything */
};

static const helios_handler_hooks rc_handler_hooks = {
    .size = sizeof(helios_handler_hooks),
    .handle = rc_handle, /* 200 "42\n" */
};

static const helios_module rc_module = {
    HELIOS_MODULE_HEADER("rejects_config", "0.0.0"),
    .config_new = rc_config_new, /* the point of this module */
    .filter = &rc_filter_hooks,
    .handler = &rc_handler_hooks,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &rc_module;
}
