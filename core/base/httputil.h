/*
 * httputil.h - HTTP facts every protocol shares: header lists, the RFC 9110
 * token and field-value tables, hop-by-hop rules, reason phrases and Host
 * parsing. Pure functions over buffers and an arena: no connection, no
 * request, no protocol. HTTP/1.1, HTTP/2, subrequests, the proxy and the
 * host API all use these, so a rule is written once.
 */
#ifndef HX_HTTPUTIL_H
#define HX_HTTPUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <helios.h>

#include "base/arena.h"

typedef struct hx_hdr {
    helios_buf name;
    helios_buf value;
} hx_hdr;

/* A header list; the entries and strings live in the arena given to add. */
typedef struct hx_hdrs {
    hx_hdr *v;
    size_t n, cap;
} hx_hdrs;

/* Appends a copy of NAME: VALUE (both copied into A). 0, or -1 out of memory. */
int hx_hdrs_add(hx_arena *a, hx_hdrs *h, const char *name, size_t nlen, const char *value,
                size_t vlen);
/* The first value of NAME..NAME+N (case-insensitive), or {NULL, 0}. */
helios_buf hx_hdrs_getn(const hx_hdrs *h, const char *name, size_t n);
/* The same for a NUL-terminated NAME; inlined, so a literal's strlen folds
 * to a constant. */
static inline helios_buf hx_hdrs_get(const hx_hdrs *h, const char *name)
{
    return hx_hdrs_getn(h, name, strlen(name));
}
/* Removes every NAME; returns how many went. */
int hx_hdrs_remove(hx_hdrs *h, const char *name);
/* 1 when a Connection header in H lists NAME (RFC 9110 7.6.1). */
int hx_hdrs_connection_lists(const hx_hdrs *h, const char *name, size_t n);

/* 0x20 in every byte of W that is an ASCII letter of either case, for
 * bytes below 0x80 (no carry crosses a byte then). */
static inline uint64_t hx_letters8(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ull;
    uint64_t f = w | 0x20 * ones; /* fold: letters are 'a'..'z' now */
    return ((f + (0x80 - 'a') * ones) & ~(f + (0x80 - 'z' - 1) * ones) & 0x80 * ones) >> 2;
}

/* ASCII case-insensitive equality of A and B, N bytes each: what
 * strncasecmp does in the C locale for strings without NUL (header names,
 * tokens), without the call. Eight bytes at a time while both are ASCII:
 * the bytes may differ only in bit 0x20, and only where they are letters. */
static inline int hx_ascii_ieq(const char *a, const char *b, size_t n)
{
    const uint64_t high = 0x8080808080808080ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if ((x | y) & high)
            break; /* a byte above 0x7f: byte by byte below */
        if ((x ^ y) & ~hx_letters8(x))
            return 0;
    }
    if (i + 4 <= n) {
        uint32_t x, y;
        memcpy(&x, a + i, 4);
        memcpy(&y, b + i, 4);
        if (!((x | y) & 0x80808080u)) {
            if ((x ^ y) & ~(uint32_t)hx_letters8(x))
                return 0;
            i += 4;
        }
    }
    for (; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x == y)
            continue;
        if ((unsigned char)((x | 0x20) - 'a') > 'z' - 'a' || (x | 0x20) != (y | 0x20))
            return 0;
    }
    return 1;
}

/* 1 when A..A+N is LOWER (a lower-case literal of length LN), ignoring
 * case. Eight bytes at a time: a letter of LOWER matches either case, any
 * other byte only itself (LOWER is a literal, so its letter mask folds to
 * a constant). */
static inline int hx_name_is(const char *a, size_t n, const char *lower, size_t ln)
{
    if (n != ln)
        return 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, l;
        memcpy(&x, a + i, 8);
        memcpy(&l, lower + i, 8);
        if ((x | hx_letters8(l)) != l)
            return 0;
    }
    if (i + 4 <= n) { /* "host", "date", the rest of "content-length" */
        uint32_t x, l;
        memcpy(&x, a + i, 4);
        memcpy(&l, lower + i, 4);
        if ((x | (uint32_t)hx_letters8(l)) != l)
            return 0;
        i += 4;
    }
    for (; i < n; i++) {
        unsigned char x = (unsigned char)a[i];
        if ((x >= 'A' && x <= 'Z' ? x | 0x20 : x) != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

/* RFC 9110 tchar: what methods, header names and other tokens are made of. */
extern const unsigned char hx_tchar[256];
/* Bytes a field value may hold (RFC 9110 5.5): HTAB, SP, VCHAR, obs-text;
 * no other control byte, no DEL. */
extern const unsigned char hx_vchar[256];

/* 1 when every byte of P..P+N is in TAB. Four bytes a step, and no early
 * exit: the verdict is the same, with a quarter of the branches. Inlined:
 * every header of every response is checked with it. */
static inline int hx_all_in(const unsigned char *tab, const char *p, size_t n)
{
    const unsigned char *u = (const unsigned char *)p;
    unsigned ok = 1;
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        ok &= tab[u[i]] & tab[u[i + 1]] & tab[u[i + 2]] & tab[u[i + 3]];
    for (; i < n; i++)
        ok &= tab[u[i]];
    return ok;
}

/* 1 when P..P+N is a non-empty token. */
static inline int hx_token_valid(const char *p, size_t n)
{
    return n > 0 && hx_all_in(hx_tchar, p, n);
}

/* Header names are tokens; values have no CTL but HTAB (no CR, LF, NUL). */
static inline int hx_hdr_name_valid(const char *p, size_t n) { return hx_token_valid(p, n); }
static inline int hx_hdr_value_valid(const char *p, size_t n) { return hx_all_in(hx_vchar, p, n); }

/* 1 for the hop-by-hop headers a proxy never forwards (RFC 9110 7.6.1).
 * Every header of every proxied message is checked here: the length picks
 * the one or two candidates, so most names cost a switch and nothing more. */
static inline int hx_is_hop_header(const char *name, size_t n)
{
    switch (n) {
    case 2: return hx_name_is(name, n, "te", 2);
    case 7: return hx_name_is(name, n, "trailer", 7) || hx_name_is(name, n, "upgrade", 7);
    case 10: return hx_name_is(name, n, "connection", 10) || hx_name_is(name, n, "keep-alive", 10);
    case 16: return hx_name_is(name, n, "proxy-connection", 16);
    case 17: return hx_name_is(name, n, "transfer-encoding", 17);
    case 18: return hx_name_is(name, n, "proxy-authenticate", 18);
    default: return 0;
    }
}
/* 1 when the comma-separated list V names TOKEN (case-insensitive); items
 * may carry a "/version" suffix (Upgrade: websocket/13). */
int hx_list_has_token(helios_buf v, const char *token, size_t tlen);

/* The llhttp method id (HTTP_GET, ...) of M..M+N, or -1 for another token. */
int hx_method_id(const char *m, size_t n);

/* "Not Found" for 404; a class name for unknown codes. Never NULL. */
const char *hx_reason(int status);

/*
 * Host (or :authority, or an absolute-form target's authority) H..H+N,
 * parsed and normalised once (RFC 3986 3.2.2, RFC 9110 7.2): the host
 * lower-cased, one trailing dot of a name dropped ("Example.COM." and
 * "example.com" are one host), IPv6 literals kept in brackets and checked,
 * copied into A (NUL-terminated) and stored in *HOST; the port, if one is
 * given, in *PORT (0 when absent or empty). Returns 0, or -1 when malformed:
 * a character a host name cannot hold (space, '/', '\\', '@', '_'... only
 * unreserved, sub-delims and %XX are allowed), a bad IPv6 literal, a port
 * that is not 1..65535.
 */
int hx_host_parse(hx_arena *a, const char *h, size_t n, helios_buf *host, unsigned *port);

#endif
