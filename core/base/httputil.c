/*
 * httputil.c - header lists, token tables, hop-by-hop rules, reason phrases
 * and Host parsing, shared by every protocol (see httputil.h).
 */
#include "base/httputil.h"

#include "base/buf.h"

#include <string.h>

#include <llhttp.h>

/* ---- header lists ---- */

int hx_hdrs_add(hx_arena *a, hx_hdrs *h, const char *name, size_t nlen, const char *value,
                size_t vlen)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        hx_hdr *v = hx_arena_alloc(a, cap * sizeof(*v));
        if (v == NULL)
            return -1;
        if (h->n)
            memcpy(v, h->v, h->n * sizeof(*v));
        h->v = v;
        h->cap = cap;
    }
    /* name and value in one allocation, each NUL-terminated */
    if (nlen > (size_t)-1 / 2 || vlen > (size_t)-1 / 2)
        return -1;
    char *nm = hx_arena_alloc(a, nlen + vlen + 2);
    if (nm == NULL)
        return -1;
    char *vl = nm + nlen + 1;
    hx_copy(nm, name, nlen);
    nm[nlen] = '\0';
    hx_copy(vl, value, vlen);
    vl[vlen] = '\0';
    h->v[h->n].name = (helios_buf){nm, nlen};
    h->v[h->n].value = (helios_buf){vl, vlen};
    h->n++;
    return 0;
}

helios_buf hx_hdrs_getn(const hx_hdrs *h, const char *name, size_t n)
{
    for (size_t i = 0; i < h->n; i++)
        if (h->v[i].name.len == n && hx_ascii_ieq(h->v[i].name.ptr, name, n))
            return h->v[i].value;
    return (helios_buf){NULL, 0};
}

int hx_hdrs_remove(hx_hdrs *h, const char *name)
{
    size_t n = strlen(name), o = 0;
    int removed = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (h->v[i].name.len == n && hx_ascii_ieq(h->v[i].name.ptr, name, n)) {
            removed++;
            continue;
        }
        h->v[o++] = h->v[i];
    }
    h->n = o;
    return removed;
}

int hx_list_has_token(helios_buf v, const char *token, size_t tlen)
{
    const char *p = v.ptr, *e = v.ptr + v.len;
    if (p == NULL)
        return 0;
    while (p < e) {
        while (p < e && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *s = p;
        while (p < e && *p != ',' && *p != ' ' && *p != '\t' && *p != '/')
            p++;
        if ((size_t)(p - s) == tlen && hx_ascii_ieq(s, token, tlen))
            return 1;
        while (p < e && *p != ',') /* whitespace, or a "/version" suffix */
            p++;
    }
    return 0;
}

int hx_hdrs_connection_lists(const hx_hdrs *h, const char *name, size_t n)
{
    for (size_t i = 0; i < h->n; i++) {
        const hx_hdr *c = &h->v[i];
        if (hx_name_is(c->name.ptr, c->name.len, "connection", 10) &&
            hx_list_has_token(c->value, name, n))
            return 1;
    }
    return 0;
}

/* ---- tokens and values ---- */

const unsigned char hx_tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0' ... '9'] = 1, ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1,
};

const unsigned char hx_vchar[256] = {['\t'] = 1, [0x20 ... 0x7e] = 1, [0x80 ... 0xff] = 1};



/* ---- methods and status ---- */

int hx_method_id(const char *m, size_t n)
{
    static const struct {
        const char *name;
        int id;
    } t[] = {{"GET", HTTP_GET},         {"HEAD", HTTP_HEAD},       {"POST", HTTP_POST},
             {"PUT", HTTP_PUT},         {"DELETE", HTTP_DELETE},   {"OPTIONS", HTTP_OPTIONS},
             {"TRACE", HTTP_TRACE},     {"PATCH", HTTP_PATCH},     {"CONNECT", HTTP_CONNECT}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (strlen(t[i].name) == n && memcmp(m, t[i].name, n) == 0)
            return t[i].id;
    return -1;
}

const char *hx_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status < 200 ? "Informational" : status < 300 ? "OK"
                  : status < 400 ? "Redirection" : status < 500 ? "Client Error"
                                                             : "Server Error";
    }
}

/* ---- Host ---- */

static int is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* reg-name = *( unreserved / pct-encoded / sub-delims ) (RFC 3986 3.2.2);
 * '_' is unreserved but no DNS name holds it, and it is kept here as the
 * URI grammar allows it. A table: every Host of every request is checked
 * byte by byte. */
static const unsigned char reg_name_tab[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1,
    ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1,
    ['0' ... '9'] = 1, ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1,
};

int hx_host_parse(hx_arena *a, const char *h, size_t n, helios_buf *host, unsigned *port)
{
    size_t end; /* end of the host part */
    if (n > 0 && h[0] == '[') {
        const char *rb = memchr(h, ']', n);
        if (rb == NULL)
            return -1;
        end = (size_t)(rb - h) + 1;
        if (end < n && h[end] != ':')
            return -1;
        int colons = 0;
        for (size_t i = 1; i + 1 < end; i++) {
            unsigned char c = (unsigned char)h[i];
            if (c == ':')
                colons++;
            else if (!is_hex(c) && c != '.')
                return -1; /* IPvFuture and zone ids are not accepted */
        }
        if (colons < 2 || end - 2 > 45)
            return -1;
    } else {
        const char *colon = memchr(h, ':', n);
        end = colon ? (size_t)(colon - h) : n;
        /* the usual host (no %XX) passes the table four bytes a step */
        for (size_t i = hx_all_in(reg_name_tab, h, end) ? end : 0; i < end; i++) {
            unsigned char c = (unsigned char)h[i];
            if (c == '%') {
                if (i + 2 >= end || !is_hex((unsigned char)h[i + 1]) ||
                    !is_hex((unsigned char)h[i + 2]))
                    return -1;
                i += 2;
            } else if (!reg_name_tab[c]) {
                return -1;
            }
        }
    }
    unsigned long pv = 0;
    if (end < n) { /* ":" port: digits, maybe none */
        if (n - end - 1 > 5)
            return -1;
        for (size_t i = end + 1; i < n; i++) {
            if (h[i] < '0' || h[i] > '9')
                return -1;
            pv = pv * 10 + (unsigned long)(h[i] - '0');
        }
        if (n - end - 1 > 0 && (pv == 0 || pv > 65535))
            return -1;
    }
    size_t len = end;
    if (len > 1 && h[0] != '[' && h[len - 1] == '.')
        len--; /* the absolute (rooted) form of a name is the same host */
    if (len == 1 && h[0] == '.')
        return -1;
    char *o = hx_arena_alloc(a, len + 1);
    if (o == NULL)
        return -1;
    /* lower-cased eight bytes a step: every byte is ASCII by now */
    const uint64_t ones = 0x0101010101010101ull;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, h + i, 8);
        w |= ((w + (0x80 - 'A') * ones) & ~(w + (0x80 - 'Z' - 1) * ones) & 0x80 * ones) >> 2;
        memcpy(o + i, &w, 8);
    }
    for (; i < len; i++) {
        unsigned char ch = (unsigned char)h[i];
        o[i] = (char)((ch >= 'A' && ch <= 'Z') ? ch + 32 : ch);
    }
    o[len] = '\0';
    host->ptr = o;
    host->len = len;
    if (port)
        *port = (unsigned)pv;
    return 0;
}
