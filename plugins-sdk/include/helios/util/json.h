/*
 * helios/util/json.h - JSON log lines: string escaping and the access log's
 * one schema, shared by the core's access log (core/http/accesslog.c) and
 * the access_log module so the two cannot drift apart. Header-only.
 *
 * Escaping: well-formed UTF-8 passes through as UTF-8; `"` and `\` are
 * escaped, control bytes (and DEL) become \u00XX; a byte that is not part
 * of well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at
 * most U+10FFFF) is written as the six characters `\\xHH`, which a JSON
 * reader decodes to the text `\xHH`: the line stays valid JSON and valid
 * UTF-8, and the byte's value stays readable. A value longer than its cap
 * is cut before the escape that would cross it, never inside one.
 *
 * The schema (docs/logging.md has the table): every field is always
 * present, in this order, `null` when the request has no such value.
 */
#ifndef HELIOS_UTIL_JSON_H
#define HELIOS_UTIL_JSON_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <helios/types.h>

/* An output buffer that never overflows: writes past cap are cut and
 * counted in `over`. */
typedef struct helios_jbuf {
    char *p;
    size_t len, cap;
    int over; /* something did not fit */
} helios_jbuf;

static inline void helios_jbuf_put(helios_jbuf *o, const char *s, size_t n)
{
    if (n > o->cap - o->len) {
        n = o->cap - o->len;
        o->over = 1;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static inline void helios_jbuf_puts(helios_jbuf *o, const char *s)
{
    helios_jbuf_put(o, s, strlen(s));
}

static inline void helios_jbuf_u64(helios_jbuf *o, uint64_t v)
{
    char d[24];
    size_t i = sizeof(d);
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    helios_jbuf_put(o, d + i, sizeof(d) - i);
}

/* Length of the well-formed UTF-8 sequence at S (N bytes left), 0 if the
 * first byte does not start one. */
static inline size_t helios_utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k;
    unsigned lo = 0x80, hi = 0xbf;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        k = 2;
    else if (c >= 0xe0 && c <= 0xef)
        k = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        k = 4;
    else
        return 0;
    if (c == 0xe0)
        lo = 0xa0; /* overlong */
    else if (c == 0xed)
        hi = 0x9f; /* surrogates */
    else if (c == 0xf0)
        lo = 0x90; /* overlong */
    else if (c == 0xf4)
        hi = 0x8f; /* above U+10FFFF */
    if (n < k || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < k; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return k;
}

/* The contents of a JSON string (no quotes) for S[0..N), at most MAX output
 * bytes. */
static inline void helios_json_escape(helios_jbuf *o, const char *s, size_t n, size_t max)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t start = o->len;
    for (size_t i = 0; i < n;) {
        unsigned char ch = u[i];
        char e[8];
        size_t k = 0, take = 1;
        if (ch == '"' || ch == '\\') {
            e[k++] = '\\';
            e[k++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            memcpy(e, "\\u00", 4);
            e[4] = hex[ch >> 4];
            e[5] = hex[ch & 15];
            k = 6;
        } else if (ch < 0x80) {
            e[k++] = (char)ch;
        } else if ((take = helios_utf8_len(u + i, n - i)) > 0) {
            memcpy(e, s + i, take);
            k = take;
        } else {
            take = 1;
            memcpy(e, "\\\\x", 3);
            e[3] = hex[ch >> 4];
            e[4] = hex[ch & 15];
            k = 5;
        }
        if (o->len - start + k > max)
            return; /* the value's cap: cut here */
        if (o->cap - o->len < k) {
            o->over = 1; /* the line's cap */
            return;
        }
        helios_jbuf_put(o, e, k);
        i += take;
    }
}

/* A JSON string value with its quotes, or null when S is NULL. */
static inline void helios_json_str(helios_jbuf *o, const char *s, size_t n, size_t max)
{
    if (s == NULL) {
        helios_jbuf_puts(o, "null");
        return;
    }
    helios_jbuf_puts(o, "\"");
    helios_json_escape(o, s, n, max);
    helios_jbuf_puts(o, "\"");
}

/* Same, for a NUL-terminated string; NULL and "" are null. */
static inline void helios_json_cstr(helios_jbuf *o, const char *s, size_t max)
{
    helios_json_str(o, s && *s ? s : NULL, s ? strlen(s) : 0, max);
}

/* ---- the access log schema ---- */

#define HELIOS_ACCESS_PATH_MAX 4096 /* escaped bytes kept of the request target */

/* One request's log entry. Strings may be NULL (written as null); the
 * numbers say which value means "none". */
typedef struct helios_access_entry {
    const char *time;       /* RFC 3339 UTC with milliseconds */
    helios_buf request_id;  /* request variable `request_id`, else X-Request-ID */
    uint64_t connection_id; /* 0: none */
    const char *client;     /* client address (after trusted_proxies) */
    helios_buf method;      /* ptr NULL: none (request line not read) */
    helios_buf path;        /* the request target as received */
    const char *protocol;
    int status; /* 0: no response was sent */
    uint64_t bytes_in, bytes_out;
    uint64_t duration_ms;
    const char *route;        /* route name; NULL or "": none */
    const char *upstream;     /* "addr:port" of the last backend tried */
    const char *backend;      /* its name */
    int64_t upstream_ms;      /* -1: not proxied */
    int64_t upstream_ttfb_ms; /* -1: no response head from a backend */
    unsigned tries;
    int backend_health; /* 1 up, 0 down, -1 none */
    int breaker;        /* 0 closed, 1 open, 2 half-open, -1 none */
    const char *tls;    /* TLS version */
    const char *cipher;
    int aborted;
    int worker; /* index of the worker that served it (0..workers-1) */
} helios_access_entry;

static inline void helios_json_i64_or_null(helios_jbuf *o, int64_t v)
{
    if (v < 0)
        helios_jbuf_puts(o, "null");
    else
        helios_jbuf_u64(o, (uint64_t)v);
}

/* Writes the entry as a JSON object without its closing brace, so the
 * caller may append fields of its own (`,"headers":{...}`); then
 * helios_access_json_end. */
static inline void helios_access_json_begin(helios_jbuf *o, const helios_access_entry *e)
{
    static const char *const brk[] = {"closed", "open", "half-open"};
    helios_jbuf_puts(o, "{\"time\":");
    helios_json_cstr(o, e->time, 64);
    helios_jbuf_puts(o, ",\"request_id\":");
    helios_json_str(o, e->request_id.ptr, e->request_id.len, 256);
    helios_jbuf_puts(o, ",\"connection_id\":");
    helios_json_i64_or_null(o, e->connection_id ? (int64_t)e->connection_id : -1);
    helios_jbuf_puts(o, ",\"client\":");
    helios_json_cstr(o, e->client, 64);
    helios_jbuf_puts(o, ",\"method\":");
    helios_json_str(o, e->method.ptr, e->method.len, 64);
    helios_jbuf_puts(o, ",\"path\":");
    helios_json_str(o, e->path.ptr, e->path.len, HELIOS_ACCESS_PATH_MAX);
    helios_jbuf_puts(o, ",\"protocol\":");
    helios_json_cstr(o, e->protocol, 16);
    helios_jbuf_puts(o, ",\"status\":");
    helios_json_i64_or_null(o, e->status > 0 ? e->status : -1);
    helios_jbuf_puts(o, ",\"bytes_in\":");
    helios_jbuf_u64(o, e->bytes_in);
    helios_jbuf_puts(o, ",\"bytes_out\":");
    helios_jbuf_u64(o, e->bytes_out);
    helios_jbuf_puts(o, ",\"duration_ms\":");
    helios_jbuf_u64(o, e->duration_ms);
    helios_jbuf_puts(o, ",\"route\":");
    helios_json_cstr(o, e->route, 256);
    helios_jbuf_puts(o, ",\"upstream\":");
    helios_json_cstr(o, e->upstream, 128);
    helios_jbuf_puts(o, ",\"backend\":");
    helios_json_cstr(o, e->backend, 256);
    helios_jbuf_puts(o, ",\"upstream_ms\":");
    helios_json_i64_or_null(o, e->upstream_ms);
    helios_jbuf_puts(o, ",\"upstream_ttfb_ms\":");
    helios_json_i64_or_null(o, e->upstream_ttfb_ms);
    helios_jbuf_puts(o, ",\"tries\":");
    helios_jbuf_u64(o, e->tries);
    helios_jbuf_puts(o, ",\"backend_health\":");
    helios_jbuf_puts(o, e->backend_health < 0 ? "null" : e->backend_health ? "\"up\"" : "\"down\"");
    helios_jbuf_puts(o, ",\"breaker\":");
    if (e->breaker >= 0 && e->breaker <= 2) {
        helios_jbuf_puts(o, "\"");
        helios_jbuf_puts(o, brk[e->breaker]);
        helios_jbuf_puts(o, "\"");
    } else {
        helios_jbuf_puts(o, "null");
    }
    helios_jbuf_puts(o, ",\"tls\":");
    helios_json_cstr(o, e->tls, 32);
    helios_jbuf_puts(o, ",\"cipher\":");
    helios_json_cstr(o, e->cipher, 128);
    helios_jbuf_puts(o, ",\"worker\":");
    helios_jbuf_u64(o, (uint64_t)(e->worker > 0 ? e->worker : 0));
    helios_jbuf_puts(o, ",\"aborted\":");
    helios_jbuf_puts(o, e->aborted ? "true" : "false");
}

/* Closes the object and ends the line. O's cap must leave room for
 * "}\n"; a line that did not fit is replaced by a short valid one. */
static inline void helios_access_json_end(helios_jbuf *o, const helios_access_entry *e)
{
    if (o->over || o->cap - o->len < 1) {
        o->len = 0;
        o->over = 0;
        helios_jbuf_puts(o, "{\"time\":");
        helios_json_cstr(o, e->time, 64);
        helios_jbuf_puts(o, ",\"truncated\":true");
    }
    helios_jbuf_puts(o, "}");
    o->p[o->len++] = '\n'; /* the caller's cap excludes this byte */
}

#endif
