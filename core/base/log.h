/*
 * log.h - the error log: one line per event, any thread.
 *
 * Each line is formatted into a stack buffer and written with one write(2),
 * so lines from different threads never interleave.
 */
#ifndef HX_LOG_H
#define HX_LOG_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <helios/types.h>

/* Sets the level (HELIOS_LOG_*) and target (NULL = stderr). Main thread.
 * Returns 0, or -1 if PATH cannot be opened (errno set). */
int hx_log_open(int level, const char *path);
/* Reopens the current file (SIGUSR1); no-op for stderr. */
int hx_log_reopen(void);
void hx_log_close(void);
/* While ON, error lines also go to stderr when the log is a file: heliosd
 * turns it on until it has started, so the reason a start failed reaches
 * the terminal or the journal, not only the file. Main thread. */
void hx_log_errors_to_stderr(int on);
int hx_log_enabled(int level);
/* ON: one JSON object per line (logging.error_log_format: json) with
 * time, level, module, request_id, connection_id and message. */
void hx_log_set_json(int on);
/*
 * The request a thread is working on, for the JSON lines' request_id and
 * connection_id: push when entering a request's code, pop when leaving.
 * Pushes nest; the outermost request is the one logged. RID (LEN bytes,
 * may be NULL) is copied (at most 128 bytes).
 */
void hx_log_ctx_push(uint64_t conn_id, const char *rid, size_t len);
void hx_log_ctx_pop(void);
/* The JSON switch and the thread's push depth, for callers on hot paths:
 * push only when hx_log_json is set, pop only when hx_log_depth > 0 (a
 * switch flipped by a reload between the two costs at most a moment of
 * missing ids, never a stale context). */
extern _Atomic int hx_log_json;
extern _Thread_local unsigned hx_log_depth;

void hx_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void hx_vlog(int level, const char *module, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#define hx_error(...) hx_log(HELIOS_LOG_ERROR, __VA_ARGS__)
#define hx_warn(...) hx_log(HELIOS_LOG_WARN, __VA_ARGS__)
#define hx_info(...) hx_log(HELIOS_LOG_INFO, __VA_ARGS__)
#define hx_debug(...)                                                                     \
    do {                                                                                  \
        if (hx_log_enabled(HELIOS_LOG_DEBUG))                                             \
            hx_log(HELIOS_LOG_DEBUG, __VA_ARGS__);                                        \
    } while (0)

#endif
