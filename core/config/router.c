/*
 * router.c - what a request is matched on must be what the backend will
 * understand: decode and normalise first, so "/a/%2e%2e/admin" and
 * "//admin" meet the rule written for "/admin".
 */
#include "config/router.h"

#include <string.h>
#include <strings.h>

#include <helios/util/http.h>

long hx_path_normalize(const char *in, size_t len, char *out)
{
    if (len == 0 || in[0] != '/')
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '%') {
            if (i + 2 >= len)
                return -1;
            int h = helios_http_hexval(in[i + 1]), l = helios_http_hexval(in[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            c = (unsigned char)(h * 16 + l);
            i += 2;
            if (c == 0)
                return -1;
            if (c == '/') { /* keep encoded: a literal in a segment */
                out[o++] = '%';
                out[o++] = '2';
                out[o++] = 'F';
                continue;
            }
        }
        if (c < 0x20 || c == 0x7f)
            return -1;
        out[o++] = (char)c;
        /* after each completed segment boundary, resolve dot segments */
        if (c == '/') {
            /* merge "//" */
            if (o >= 2 && out[o - 2] == '/') {
                o--;
                continue;
            }
            /* ".../." + "/" -> ".../" */
            if (o >= 3 && out[o - 2] == '.' && out[o - 3] == '/') {
                o -= 2;
                continue;
            }
            /* ".../seg/../" -> ".../" */
            if (o >= 4 && out[o - 2] == '.' && out[o - 3] == '.' && out[o - 4] == '/') {
                o -= 3; /* now ends with "/" before ".." */
                if (o > 1) {
                    o--; /* drop that slash */
                    while (o > 0 && out[o - 1] != '/')
                        o--;
                }
                continue;
            }
        }
    }
    /* trailing "/." or "/.." */
    if (o >= 2 && out[o - 1] == '.' && out[o - 2] == '/') {
        o -= 1;
    } else if (o >= 3 && out[o - 1] == '.' && out[o - 2] == '.' && out[o - 3] == '/') {
        o -= 2; /* ends with "/" */
        if (o > 1) {
            o--;
            while (o > 0 && out[o - 1] != '/')
                o--;
        }
    }
    if (o == 0)
        out[o++] = '/';
    out[o] = '\0';
    return (long)o;
}

static int host_match(const hx_route *rt, const char *host, size_t hlen)
{
    if (rt->host == NULL)
        return 1;
    size_t n = strlen(rt->host);
    if (!rt->host_wildcard)
        return n == hlen && strncasecmp(rt->host, host, hlen) == 0;
    /* ".example.com": one or more labels before it, never the bare domain */
    return hlen > n && strncasecmp(host + hlen - n, rt->host, n) == 0;
}

static int method_match(const hx_route *rt, const char *m, size_t mlen)
{
    if (rt->methods == NULL)
        return 1;
    for (char **p = rt->methods; *p; p++)
        if (strlen(*p) == mlen && memcmp(*p, m, mlen) == 0)
            return 1;
    return 0;
}

const hx_route *hx_route_match(const hx_gen *g, const char *host, size_t hlen, const char *path,
                               size_t plen, const char *method, size_t mlen)
{
    for (size_t i = 0; i < g->nroutes; i++) {
        const hx_route *rt = &g->routes[i];
        switch (rt->path_kind) {
        case HX_PATH_EXACT:
            if (plen != rt->path_len || memcmp(path, rt->path, plen) != 0)
                continue;
            break;
        case HX_PATH_PREFIX:
            if (plen < rt->path_len || memcmp(path, rt->path, rt->path_len) != 0)
                continue;
            break;
        default: break;
        }
        if (host_match(rt, host, hlen) && method_match(rt, method, mlen))
            return rt;
    }
    return NULL;
}
