/*
 * helios/util/http.h - small HTTP syntax checks modules need when they
 * validate configuration (header names, cookie names, media types), and
 * hex digits (percent-encoding).
 *
 * Header-only and not part of the ABI: every function is static inline and
 * nothing crosses the module boundary.
 */
#ifndef HELIOS_UTIL_HTTP_H
#define HELIOS_UTIL_HTTP_H

#include <string.h>

/* RFC 9110 tchar: what header names, cookie names and tokens are made of. */
static inline int helios_http_is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return 1;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* 1 when the NUL-terminated S is a non-empty token (a valid header name). */
static inline int helios_http_is_token(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (!helios_http_is_tchar((unsigned char)*s))
            return 0;
    return 1;
}

/* Value of the hex digit C (as in %XX), or -1. */
static inline int helios_http_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Header-name equality: ASCII case-insensitive, independent of the locale. */
static inline int helios_http_name_eq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        unsigned char x = (unsigned char)*a, y = (unsigned char)*b;
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y - 'A' + 'a');
        if (x != y)
            return 0;
    }
    return *a == *b;
}

#endif
