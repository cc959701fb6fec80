/*
 * control.h - runtime changes to the running generation (host API ctl_*).
 * Any thread; serialised by one mutex that reloads also hold.
 */
#ifndef HX_CONTROL_H
#define HX_CONTROL_H

#include <helios.h>

#include "config/config.h"

void hx_ctl_lock(void);
void hx_ctl_unlock(void);

int hx_ctl_backend_add(const char *upstream, const char *name, const char *address,
                       uint32_t weight, char *err, size_t errlen);
int hx_ctl_backend_remove(const char *upstream, const char *name, char *err, size_t errlen);
int hx_ctl_backend_weight(const char *upstream, const char *name, uint32_t weight, char *err,
                          size_t errlen);
int hx_ctl_backend_drain(const char *upstream, const char *name, int drain, char *err,
                         size_t errlen);
int hx_ctl_balancer_set(const char *upstream, const char *module, char *err, size_t errlen);
/* The primitives under the calls above, without the lock and without
 * touching the persisted state (runtime/state.c re-applies with them). The
 * caller holds the lock; U belongs to G; when G is not the live generation
 * yet, no worker is told (its workers pick the result up when they attach). */
int hx_ctl_do_add(hx_gen *g, hx_upstream *u, const char *name, const char *address,
                  uint32_t weight, char *err, size_t errlen);
int hx_ctl_do_remove(hx_gen *g, hx_upstream *u, const char *name, char *err, size_t errlen);
int hx_ctl_do_weight(hx_upstream *u, const char *name, uint32_t weight, char *err,
                     size_t errlen);
int hx_ctl_do_drain(hx_upstream *u, const char *name, int drain, char *err, size_t errlen);
int hx_ctl_do_balancer(hx_gen *g, hx_upstream *u, const char *module, char *err, size_t errlen);

long hx_ctl_backends_walk(const char *upstream, void (*fn)(void *, const helios_backend *),
                          void *arg);
const char *hx_ctl_balancer_name(const char *upstream);
size_t hx_ctl_upstreams_count(void);
int hx_ctl_upstream_panic(const char *upstream, uint64_t *entries);
int hx_ctl_upstream_name(size_t i, char *buf, size_t size);

long hx_ctl_modules_walk(void (*fn)(void *, const helios_module_info *), void *arg);
int hx_ctl_config_walk(void (*fn)(void *, const helios_conf *), void *arg);
/* Reload on request of a service thread; main.c provides the implementation
 * (unit tests link the core without it). */
int hx_ctl_reload(uint32_t *gen, char *err, size_t errlen);
extern int (*hx_ctl_reload_impl)(uint32_t *gen, char *err, size_t errlen);

#endif
