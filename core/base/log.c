#include "base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int log_level = HELIOS_LOG_INFO;
static _Atomic int log_fd = STDERR_FILENO;
static char log_path[4096];

static const char *const level_names[] = {"error", "warn", "info", "debug"};

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
    /* Writers that loaded the old fd may still write a line to it; closing
     * right after the swap is fine because write(2) on a closed fd fails
     * harmlessly and the line is lost only in that race. */
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
    ssize_t w = write(atomic_load(&log_fd), line, (size_t)n);
    (void)w;
}

void hx_log(int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    hx_vlog(level, NULL, fmt, ap);
    va_end(ap);
}
