/*
 * runtime.h - the top layer's own wiring. Lower layers never name a
 * function of a higher one (docs/architecture.md, "Layers"); where they
 * must reach up, they call through a table the runtime fills in here:
 * the host API for modules (config/), the worker's hooks into connections
 * and pools (event/), and the proxy's entry points (http/).
 */
#ifndef HX_RUNTIME_H
#define HX_RUNTIME_H

#include <helios.h>

/* The host API table given to every module. */
extern const helios_host_api hx_host_api;

/* Main thread, once, before any module loads or worker starts. */
void hx_runtime_wire(void);

#endif
