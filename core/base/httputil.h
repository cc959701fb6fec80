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
/* The first value of NAME (a NUL-terminated, case-insensitive name), or {NULL, 0}. */
helios_buf hx_hdrs_get(const hx_hdrs *h, const char *name);
/* Removes every NAME; returns how many went. */
int hx_hdrs_remove(hx_hdrs *h, const char *name);
/* 1 when a Connection header in H lists NAME (RFC 9110 7.6.1). */
int hx_hdrs_connection_lists(const hx_hdrs *h, const char *name, size_t n);

/* RFC 9110 tchar: what methods, header names and other tokens are made of. */
extern const unsigned char hx_tchar[256];
/* 1 when P..P+N is a non-empty token. */
int hx_token_valid(const char *p, size_t n);
/* Header names are tokens; values have no CTL but HTAB (no CR, LF, NUL). */
int hx_hdr_name_valid(const char *p, size_t n);
int hx_hdr_value_valid(const char *p, size_t n);
/* 1 for the hop-by-hop headers a proxy never forwards (RFC 9110 7.6.1). */
int hx_is_hop_header(const char *name, size_t n);
/* 1 when the comma-separated list V names TOKEN (case-insensitive); items
 * may carry a "/version" suffix (Upgrade: websocket/13). */
int hx_list_has_token(helios_buf v, const char *token, size_t tlen);

/* The llhttp method id (HTTP_GET, ...) of M..M+N, or -1 for another token. */
int hx_method_id(const char *m, size_t n);

/* "Not Found" for 404; a class name for unknown codes. Never NULL. */
const char *hx_reason(int status);

/*
 * Host (or :authority) H..H+N parsed and normalised: host without its port,
 * lower-cased, copied into A (NUL-terminated) and stored in *OUT. Brackets
 * of an IPv6 literal are kept. Returns 0, or -1 when malformed (a bad port,
 * an unclosed bracket, control characters, '/', '\\' or '@').
 */
int hx_host_parse(hx_arena *a, const char *h, size_t n, helios_buf *out);

#endif
