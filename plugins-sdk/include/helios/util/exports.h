/*
 * helios/util/exports.h - contracts for pointers that shipped modules offer
 * each other through api->export_set / api->export_get (ABI 1.1).
 *
 * Not part of the versioned ABI: these are agreements between modules,
 * checked through the size field.
 */
#ifndef HELIOS_UTIL_EXPORTS_H
#define HELIOS_UTIL_EXPORTS_H

#include <stddef.h>
#include <stdint.h>

/* Offered by the metrics module (service start .. stop) when its
 * `listen: admin` asks admin_api to serve /metrics on the admin listener. */
#define HELIOS_EXPORT_PROMETHEUS "metrics.prometheus"

typedef struct helios_prometheus_export {
    uint32_t size; /* sizeof(helios_prometheus_export) of the provider */
    void *ctx;
    /* Renders the Prometheus text exposition (format 0.0.4) into a buffer
     * from malloc (*OUT, *LEN); the caller frees it. Any thread, any number
     * at once. Returns 0, or -1 on failure (out of memory). */
    int (*render)(void *ctx, char **out, size_t *len);
} helios_prometheus_export;

/* Offered by the core itself (from startup to exit): the admin changes it
 * persists across reloads and restarts (state_file:), for admin_api. */
#define HELIOS_EXPORT_RUNTIME_STATE "core.runtime_state"

/* What helios_runtime_state_export.forget drops. */
enum {
    HELIOS_STATE_ALL = 0,      /* every persisted change */
    HELIOS_STATE_UPSTREAM = 1, /* every change to UPSTREAM */
    HELIOS_STATE_STRATEGY = 2, /* UPSTREAM's balancer switch */
    HELIOS_STATE_BACKEND = 3,  /* the changes to UPSTREAM's backend BACKEND */
};

typedef struct helios_runtime_state_export {
    uint32_t size; /* sizeof(helios_runtime_state_export) of the provider */
    void *ctx;
    /* The persisted changes as a JSON document (docs/admin-api.md, GET
     * /v1/state) in a buffer from malloc (*OUT, *LEN); the caller frees it.
     * Any thread but a worker. Returns 0, or -1 (out of memory). */
    int (*render)(void *ctx, char **out, size_t *len);
    /* Drops the changes WHAT names and puts back what the configuration
     * files say for them, on the running generation. Any thread but a
     * worker or main. Returns 0; 1 when nothing matched (ERR says what);
     * -1 when putting back failed (ERR says why; the change stays). */
    int (*forget)(void *ctx, int what, const char *upstream, const char *backend, char *err,
                  size_t errlen);
} helios_runtime_state_export;

#endif
