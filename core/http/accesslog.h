/*
 * accesslog.h - one line per request, text or JSON.
 *
 * Lines are written by the worker with one write(2) to a file opened with
 * O_APPEND (or stdout). Page-cache writes of one short line do not block on
 * disk I/O in practice; a dedicated writer thread is the access_log module's
 * job for operators who need hard guarantees.
 */
#ifndef HX_ACCESSLOG_H
#define HX_ACCESSLOG_H

#include "http/conn.h"

int hx_accesslog_open(const hx_logging *cfg); /* main thread */
int hx_accesslog_reopen(void);                /* SIGUSR1 */
void hx_accesslog_close(void);
void hx_accesslog_write(const hx_req *r);

/* Longest access log line; the JSON schema's caps keep a line under it. */
#define HX_ACCESSLOG_LINE_MAX 8192

/* The facts api->req_stats hands to modules, all fields (worker thread).
 * The core's access log uses the same function, so both logs agree. */
void hx_req_stats_fill(const hx_req *r, helios_req_stats *s);
/* The request's id for logs: request variable `request_id` (the
 * request_id module), else the X-Request-ID header; ptr NULL if neither. */
helios_buf hx_req_log_id(const hx_req *r);
/* Now as "2024-06-11T10:00:00.123Z" (UTC, milliseconds). */
void hx_access_entry_time(char *ts, size_t size);

#endif
