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

/*
 * Offered by the metrics module (from its first config_new for the rest of
 * the process: the module is never unloaded) so that modules which see
 * backend events the core does not count can have them exported:
 * health_active's probes, health_passive's ejections. The counts live in
 * the metrics module's process-wide storage, keyed by upstream and backend
 * name, so they survive reloads. Producers look the pointer up when an
 * event happens (events are rare; export_get takes a mutex) and skip it
 * when NULL (no metrics module).
 */
#define HELIOS_EXPORT_BACKEND_EVENTS "metrics.backend_events"

enum {
    HELIOS_BACKEND_EVENT_PROBE_OK = 0,   /* an active probe passed */
    HELIOS_BACKEND_EVENT_PROBE_FAIL = 1, /* an active probe failed */
    HELIOS_BACKEND_EVENT_EJECTION = 2,   /* passive health marked it down */
    HELIOS_BACKEND_EVENT_COUNT = 3,
};

typedef struct helios_backend_events {
    uint32_t size; /* sizeof(helios_backend_events) of the provider */
    /* Counts one event of KIND for backend BACKEND of UPSTREAM (strings
     * copied); SECONDS is a probe's duration (ignored for ejections).
     * Any thread; short mutex. */
    void (*event)(int kind, const char *upstream, const char *backend, double seconds);
} helios_backend_events;
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
