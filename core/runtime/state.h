/*
 * state.h - admin changes persisted across reloads and restarts.
 *
 * Every call expects the control lock held (control.c), except
 * hx_state_export_init which runs once on the main thread before any
 * service starts.
 */
#ifndef HX_STATE_H
#define HX_STATE_H

#include "config/config.h"

/* Offers the state to modules (helios/util/exports.h,
 * HELIOS_EXPORT_RUNTIME_STATE). */
void hx_state_export_init(void);

/* Re-applies the persisted changes to G before it goes live and carries the
 * counters of backends that OLD (NULL at start) also has. At start (first
 * call) the state file is read: -1 with ERR filled when it cannot be read
 * or is malformed (heliosd does not start). A change G makes impossible is
 * logged and kept, marked with why, never dropped. */
int hx_state_apply(hx_gen *g, hx_gen *old, char *err, size_t errlen);

/* Main thread, HX_CARRY_GRACE_S after G went live (no lock needed: atomics
 * only): health and breaker verdicts carried over from the previous
 * generation that no module of G has confirmed since are lifted. */
#define HX_CARRY_GRACE_S 10
void hx_state_expire_carried(hx_gen *g);

/* A ctl_* call changed the live generation's upstream U: record it and
 * write the state file. */
void hx_state_note_add(hx_upstream *u, const char *name, uint32_t weight);
void hx_state_note_remove(hx_upstream *u, const char *name);
void hx_state_note_weight(hx_upstream *u, const char *name, uint32_t weight);
void hx_state_note_drain(hx_upstream *u, const char *name, int drain);
void hx_state_note_balancer(hx_upstream *u, const char *module);

#endif
