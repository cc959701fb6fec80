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

#endif
