/*
 * http2.h - HTTP/2 client connections (see http2.c).
 */
#ifndef HX_HTTP2_H
#define HX_HTTP2_H

#include <stdint.h>

#include "http/conn.h"

typedef struct hx_h2 hx_h2;

int hx_h2_start(hx_conn *c, const uint8_t *settings_payload, size_t len);
void hx_h2_input(hx_conn *c);
int hx_h2_pump(hx_conn *c);
int hx_h2_done(hx_conn *c);
/* We sent GOAWAY (a broken rule, idle, shutdown): close with a linger. */
int hx_h2_killed(hx_conn *c);
int hx_h2_wants_read(hx_conn *c);
int hx_h2_wants_write(hx_conn *c);
void hx_h2_reap(hx_conn *c);
void hx_h2_shutdown(hx_conn *c);
void hx_h2_free(hx_conn *c);
unsigned hx_h2_active_streams(hx_conn *c);
const char *hx_h2_check_timeouts(hx_conn *c, ev_tstamp now, ev_tstamp *next, int act);
int hx_h2_preface(const char *p, size_t n);

/* HTTP/2 streams as the request layer sees them. */
extern const hx_req_ops hx_h2_ops;

#endif
