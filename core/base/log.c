#include "base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <helios/util/json.h>

static _Atomic int log_level = HELIOS_LOG_INFO;
static _Atomic int log_fd = STDERR_FILENO;
static char log_path[4096];
static _Atomic int errors_to_stderr;
_Atomic int hx_log_json;
_Thread_local unsigned hx_log_depth;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

static _Thread_local struct {
    uint64_t conn_id;
    size_t rid_len;
    int has_rid;
    char rid[128];
} ctx;

void hx_log_set_json(int on)
{
    atomic_store(&hx_log_json, on);
}

void hx_log_ctx_push(uint64_t conn_id, const char *rid, size_t len)
{
    if (hx_log_depth++ > 0)
        return;
    ctx.conn_id = conn_id;
    ctx.has_rid = rid != NULL;
    ctx.rid_len = rid == NULL ? 0 : len < sizeof(ctx.rid) ? len : sizeof(ctx.rid);
    if (rid != NULL)
        memcpy(ctx.rid, rid, ctx.rid_len);
}

void hx_log_ctx_pop(void)
{
    if (hx_log_depth > 0)
        hx_log_depth--;
}

/* The JSON form of a line: STAMP, LEVEL, MODULE (or NULL), MSG. */
static size_t json_line(char *out, size_t cap, const char *stamp, size_t slen, int level,
                        const char *module, const char *msg, size_t mlen)
{
    helios_jbuf o = {out, 0, cap - 1, 0};
    helios_jbuf_puts(&o, "{\"time\":");
    helios_json_str(&o, stamp, slen, 64);
    helios_jbuf_puts(&o, ",\"level\":\"");
    helios_jbuf_puts(&o, level_names[level]);
    helios_jbuf_puts(&o, "\",\"module\":");
    helios_json_cstr(&o, module, 64);
    helios_jbuf_puts(&o, ",\"request_id\":");
    helios_json_str(&o, hx_log_depth && ctx.has_rid ? ctx.rid : NULL, ctx.rid_len, 256);
    helios_jbuf_puts(&o, ",\"connection_id\":");
    if (hx_log_depth && ctx.conn_id)
        helios_jbuf_u64(&o, ctx.conn_id);
    else
        helios_jbuf_puts(&o, "null");
    helios_jbuf_puts(&o, ",\"message\":");
    helios_json_str(&o, msg, mlen, cap / 2);
    helios_jbuf_puts(&o, "}");
    out[o.len++] = '\n';
    return o.len;
}


/*
 * Repeated lines. A failing backend with no health module, or a client
 * sending the same bad request in a loop, would otherwise write one line
 * per request (158,000 in 20 s were seen). Per thread, a line identical to
 * the previous one (level, module and text; not the time) within
 * HX_LOG_REPEAT_WINDOW seconds is counted, not written; the count goes out
 * as "... last message repeated N times" before the next different line,
 * or with the same line once the window is over. No lock, no timer: the
 * state is the thread's own.
 */
#define HX_LOG_REPEAT_WINDOW 10

static _Thread_local struct {
    char body[2048]; /* the last line written, from the level on */
    size_t len;
    time_t since;        /* when that line was written */
    unsigned long count; /* identical lines not written since */
} last;

static void write_line(const char *p, size_t n)
{
    ssize_t w = write(atomic_load(&log_fd), p, n);
    (void)w;
}

/* Writes "<stamp> [level] last message repeated N times" for the lines
 * held back, if any. */
static void flush_repeats(const char *stamp, size_t slen)
{
    if (last.count == 0)
        return;
    char line[512];
    const char *lvl = last.body; /* "[level] ..." */
    if (atomic_load_explicit(&hx_log_json, memory_order_relaxed)) {
        int level = HELIOS_LOG_INFO;
        for (int i = 0; i < 4; i++)
            if (strncmp(lvl + 1, level_names[i], strlen(level_names[i])) == 0)
                level = i;
        char msg[64];
        int m = snprintf(msg, sizeof(msg), "last message repeated %lu times", last.count);
        write_line(line, json_line(line, sizeof(line), stamp, slen > 0 ? slen - 1 : 0, level,
                                   NULL, msg, (size_t)m));
        last.count = 0;
        return;
    }
    const char *end = memchr(lvl, ']', last.len);
    int ll = end ? (int)(end - lvl + 1) : 0;
    int n = snprintf(line, sizeof(line), "%.*s%.*s last message repeated %lu times\n",
                     (int)slen, stamp, ll, lvl, last.count);
    if (n > 0)
        write_line(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
    last.count = 0;
}

int hx_log_open(int level, const char *path)
{
    atomic_store(&log_level, level);
    if (path == NULL || strcmp(path, "stderr") == 0) {
        log_path[0] = '\0';
        int old = atomic_exchange(&log_fd, STDERR_FILENO);
        if (old != STDERR_FILENO)
            close(old);
        return 0;
    }
    if (strlen(path) >= sizeof(log_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    snprintf(log_path, sizeof(log_path), "%s", path);
    return hx_log_reopen();
}

int hx_log_reopen(void)
{
    if (log_path[0] == '\0')
        return 0;
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -1;
    /* Writers may hold the current descriptor number: put the new file
     * under that same number (dup2 is atomic), so no line can go to a
     * descriptor that was closed and reused meanwhile. */
    int cur = atomic_load(&log_fd);
    if (cur != STDERR_FILENO && dup2(fd, cur) == cur) {
        close(fd);
        return 0;
    }
    int old = atomic_exchange(&log_fd, fd);
    if (old != STDERR_FILENO)
        close(old);
    return 0;
}

void hx_log_close(void)
{
    int old = atomic_exchange(&log_fd, STDERR_FILENO);
    if (old != STDERR_FILENO)
        close(old);
    log_path[0] = '\0';
}

void hx_log_errors_to_stderr(int on)
{
    atomic_store(&errors_to_stderr, on);
}

int hx_log_enabled(int level)
{
    return level <= atomic_load_explicit(&log_level, memory_order_relaxed);
}

void hx_vlog(int level, const char *module, const char *fmt, va_list ap)
{
    if (!hx_log_enabled(level))
        return;
    if (level < HELIOS_LOG_ERROR || level > HELIOS_LOG_DEBUG)
        level = HELIOS_LOG_ERROR;

    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] %s%s",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], module ? module : "",
                     module ? ": " : "");
    if (n < 0)
        return;
    if ((size_t)n < sizeof(line)) {
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        if (m > 0)
            n += m;
    }
    if ((size_t)n >= sizeof(line) - 1)
        n = (int)sizeof(line) - 2;
    /* A log line is one line: neutralise embedded newlines from peers. */
    for (int i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';

    const char *body = strchr(line, '[');
    size_t stamp = body ? (size_t)(body - line) : 0, blen = (size_t)n - stamp;
    if (body && blen == last.len && memcmp(body, last.body, blen) == 0 &&
        ts.tv_sec - last.since < HX_LOG_REPEAT_WINDOW) {
        last.count++;
        return;
    }
    flush_repeats(line, stamp);
    if (body && blen <= sizeof(last.body)) {
        memcpy(last.body, body, blen);
        last.len = blen;
        last.since = ts.tv_sec;
    } else {
        last.len = 0;
    }
    if (atomic_load_explicit(&hx_log_json, memory_order_relaxed)) {
        /* the message starts after "[level] module: " */
        size_t skip = stamp + strlen(level_names[level]) + 3 + (module ? strlen(module) + 2 : 0);
        if (skip > (size_t)n - 1)
            skip = (size_t)n - 1;
        char jl[4096];
        size_t jn = json_line(jl, sizeof(jl), line, stamp > 0 ? stamp - 1 : 0, level, module,
                              line + skip, (size_t)n - 1 - skip);
        write_line(jl, jn);
    } else {
        write_line(line, (size_t)n);
    }
    if (level == HELIOS_LOG_ERROR && atomic_load(&errors_to_stderr) &&
        atomic_load(&log_fd) != STDERR_FILENO) {
        ssize_t w = write(STDERR_FILENO, line, (size_t)n);
        (void)w;
    }
}

void hx_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    hx_vlog(level, NULL, fmt, ap);
    va_end(ap);
}
