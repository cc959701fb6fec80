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

#endif
