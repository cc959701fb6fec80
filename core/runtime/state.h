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
 * counters of backends and upstreams that OLD (NULL at start) also has. At start (first
 * call) the state file is read: -1 with ERR filled when it cannot be read
 * or is malformed (heliosd does not start). A change G makes impossible is
 * logged and kept, marked with why, never dropped. */
int hx_state_apply(hx_gen *g, hx_gen *old, char *err, size_t errlen);

/* Main thread, as generation OLD is freed (hx_gen_set_free_hook; no lock:
 * atomics and lists kept for the generation's life): what OLD's backends
 * and upstreams counted after handing their counters to the next
 * generation is added to the running generation's of the same names. */
void hx_state_gen_freed(hx_gen *old);

/* Main thread, HX_CARRY_GRACE_S after G went live (no lock needed: atomics
 * only): health and breaker verdicts carried over from the previous
 * generation that no module of G has confirmed since are lifted. */
#define HX_CARRY_GRACE_S 10
void hx_state_expire_carried(hx_gen *g);

/* heliosd -t: reads the state file G would use and applies it to G (never
 * live), as a start would, without writing anything. Prints on stderr
 * why heliosd would not start (unreadable or malformed file: -1) and
 * warnings (changes G makes impossible, a directory it cannot write: 0);
 * SUMMARY gets one line for stdout. Main thread, once; takes the lock. */
int hx_state_check(hx_gen *g, char *summary, size_t size);

/* A ctl_* call changed the live generation's upstream U: record it and
 * write the state file. */
void hx_state_note_add(hx_upstream *u, const char *name, uint32_t weight);
void hx_state_note_remove(hx_upstream *u, const char *name);
void hx_state_note_weight(hx_upstream *u, const char *name, uint32_t weight);
void hx_state_note_drain(hx_upstream *u, const char *name, int drain);
void hx_state_note_balancer(hx_upstream *u, const char *module);

#endif
