/*
 * addr.c - socket addresses and CIDR ranges as they appear in configuration.
 *
 * Numeric forms are parsed strictly with inet_pton (no "127.1" or hex
 * shorthands that inet_aton would accept); host names go through getaddrinfo
 * only when the caller allows it, because that may block.
 */
#define _POSIX_C_SOURCE 200809L

#include "base/addr.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum {
    HOST_MAX = 256, /* a DNS name is at most 253 bytes */
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int is_digits(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return 0;
    }
    return 1;
}

static int parse_port(const char *s, const char *whole, in_port_t *port, char *err, size_t errlen)
{
    if (*s == '\0')
        return fail(err, errlen, "missing port in '%s' (expected host:port, port 1-65535)", whole);
    if (!is_digits(s))
        return fail(err, errlen, "invalid port '%s' in '%s' (expected a number from 1 to 65535)", s,
                    whole);
    unsigned long v = 0;
    for (const char *p = s; *p && v <= 65535; p++)
        v = v * 10 + (unsigned long)(*p - '0');
    if (v == 0 || v > 65535)
        return fail(err, errlen, "port out of range in '%s' (expected 1-65535)", whole);
    *port = htons((in_port_t)v);
    return 0;
}

/* "fe80::1%eth0" or "fe80::1%2": the zone is an interface name or index. */
static int parse_ip6(const char *host, struct sockaddr_in6 *sin6, char *err, size_t errlen)
{
    char buf[HOST_MAX];
    const char *zone = strchr(host, '%');
    size_t len = zone != NULL ? (size_t)(zone - host) : strlen(host);
    if (len >= sizeof(buf))
        return fail(err, errlen, "invalid IPv6 address '%s'", host);
    memcpy(buf, host, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) != 1)
        return fail(err, errlen, "invalid IPv6 address '%s'", host);
    if (zone != NULL) {
        zone++;
        if (is_digits(zone) && strlen(zone) < 10) {
            unsigned long v = 0;
            for (const char *p = zone; *p; p++)
                v = v * 10 + (unsigned long)(*p - '0');
            sin6->sin6_scope_id = (uint32_t)v;
        } else {
            sin6->sin6_scope_id = *zone != '\0' ? if_nametoindex(zone) : 0;
            if (sin6->sin6_scope_id == 0)
                return fail(err, errlen, "unknown network interface '%s' in '%s'", zone, host);
        }
    }
    sin6->sin6_family = AF_INET6;
    return 0;
}

static int resolve_host(const char *host, hx_addr *out, char *err, size_t errlen)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0)
        return fail(err, errlen, "cannot resolve host '%s': %s", host, gai_strerror(rc));
    const struct addrinfo *ai = res;
    while (ai != NULL && ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
        ai = ai->ai_next;
    if (ai == NULL || ai->ai_addrlen > sizeof(out->ss)) {
        freeaddrinfo(res);
        return fail(err, errlen, "cannot resolve host '%s': no IPv4 or IPv6 address", host);
    }
    memcpy(&out->ss, ai->ai_addr, ai->ai_addrlen);
    out->len = ai->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int addr_parse(const char *s, int resolve, hx_addr *out, char *err, size_t errlen)
{
    char host[HOST_MAX];
    const char *port_str;
    in_port_t port;

    if (s == NULL || *s == '\0')
        return fail(err, errlen,
                    "empty address (expected host:port, e.g. 127.0.0.1:8080 or "
                    "[::1]:8080)");

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL)
            return fail(err, errlen, "missing ']' after the IPv6 address in '%s'", s);
        if (close[1] == '\0')
            return fail(err, errlen, "missing port in '%s' (expected [address]:port)", s);
        if (close[1] != ':')
            return fail(err, errlen, "expected ':' and a port after ']' in '%s'", s);
        size_t len = (size_t)(close - s - 1);
        if (len >= sizeof(host))
            return fail(err, errlen, "invalid IPv6 address in '%s'", s);
        memcpy(host, s + 1, len);
        host[len] = '\0';
        port_str = close + 2;
        if (parse_port(port_str, s, &port, err, errlen) < 0)
            return -1;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
        if (parse_ip6(host, sin6, err, errlen) < 0)
            return -1;
        sin6->sin6_port = port;
        out->len = sizeof(*sin6);
        return 0;
    }

    const char *colon = strrchr(s, ':');
    if (colon == NULL)
        return fail(err, errlen, "missing port in '%s' (expected host:port)", s);
    size_t len = (size_t)(colon - s);
    if (memchr(s, ':', len) != NULL)
        return fail(err, errlen,
                    "IPv6 addresses need brackets: write '[address]:port', e.g. '[::1]:80', "
                    "not '%s'",
                    s);
    if (len >= sizeof(host))
        return fail(err, errlen, "host name too long in '%s'", s);
    memcpy(host, s, len);
    host[len] = '\0';
    port_str = colon + 1;
    if (parse_port(port_str, s, &port, err, errlen) < 0)
        return -1;

    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    if (host[0] == '\0' || strcmp(host, "*") == 0) {
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        out->len = sizeof(*sin);
    } else if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        out->len = sizeof(*sin);
    } else if (!resolve) {
        return fail(err, errlen,
                    "'%s' is not an IP address (expected an IPv4 address, [IPv6] address or '*'; "
                    "host names are not resolved here)",
                    host);
    } else if (resolve_host(host, out, err, errlen) < 0) {
        return -1;
    }

    if (out->ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&out->ss)->sin6_port = port;
    else
        sin->sin_port = port;
    return 0;
}

/* *OUT is all zero after a failure, never half filled. */
int hx_addr_parse(const char *s, int resolve, hx_addr *out, char *err, size_t errlen)
{
    hx_addr a;
    memset(&a, 0, sizeof(a));
    memset(out, 0, sizeof(*out));
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (addr_parse(s, resolve, &a, err, errlen) < 0)
        return -1;
    *out = a;
    return 0;
}

/* Dotted quad without inet_ntop's and snprintf's generality: this runs
 * for every proxied request (X-Forwarded-For, Forwarded) and access-log
 * line, since connections no longer keep the formatted peer (D54). */
static size_t ip4_str(const unsigned char *b, char *out)
{
    char *o = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = b[i];
        if (v >= 100) {
            *o++ = (char)('0' + v / 100);
            v %= 100;
            *o++ = (char)('0' + v / 10);
        } else if (v >= 10) {
            *o++ = (char)('0' + v / 10);
        }
        *o++ = (char)('0' + v % 10);
        *o++ = '.';
    }
    o[-1] = '\0';
    return (size_t)(o - 1 - out);
}

const char *hx_addr_ip_str(const struct sockaddr *sa, char *buf, size_t size)
{
    char ip[HX_IP_STRLEN];
    if (size == 0)
        return buf;
    if (sa == NULL) {
        snprintf(buf, size, "(none)");
    } else if (sa->sa_family == AF_INET) {
        size_t n = ip4_str((const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr, ip);
        if (n >= size)
            n = size - 1;
        memcpy(buf, ip, n);
        buf[n] = '\0';
    } else if (sa->sa_family == AF_INET6 &&
               inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof(ip))) {
        snprintf(buf, size, "%s", ip);
    } else {
        snprintf(buf, size, "(address family %d)", (int)sa->sa_family);
    }
    return buf;
}

const char *hx_addr_str(const hx_addr *a, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN + 16];
    if (size == 0)
        return buf;
    const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
    hx_addr_ip_str(sa, ip, sizeof(ip));
    if (sa->sa_family == AF_INET) {
        snprintf(buf, size, "%s:%u", ip,
                 (unsigned)ntohs(((const struct sockaddr_in *)sa)->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        if (sin6->sin6_scope_id != 0)
            snprintf(buf, size, "[%s%%%u]:%u", ip, (unsigned)sin6->sin6_scope_id,
                     (unsigned)ntohs(sin6->sin6_port));
        else
            snprintf(buf, size, "[%s]:%u", ip, (unsigned)ntohs(sin6->sin6_port));
    } else {
        snprintf(buf, size, "%s", ip);
    }
    return buf;
}

static int cidr_parse(const char *s, hx_cidr *out, char *err, size_t errlen)
{
    char ip[INET6_ADDRSTRLEN + 1];
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (s == NULL || *s == '\0')
        return fail(err, errlen,
                    "empty network (expected an address or address/prefix, e.g. "
                    "10.0.0.0/8 or ::1/128)");

    const char *slash = strchr(s, '/');
    size_t len = slash != NULL ? (size_t)(slash - s) : strlen(s);
    if (len == 0 || len >= sizeof(ip))
        return fail(err, errlen, "invalid network '%s' (expected e.g. 10.0.0.0/8 or fd00::/8)", s);
    memcpy(ip, s, len);
    ip[len] = '\0';

    unsigned max;
    if (inet_pton(AF_INET, ip, out->net) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, ip, out->net) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return fail(err, errlen,
                    "invalid address '%s' in '%s' (expected e.g. 10.0.0.0/8 or fd00::/8)", ip, s);
    }

    out->prefix = max;
    if (slash != NULL) {
        const char *p = slash + 1;
        if (!is_digits(p) || strlen(p) > 3)
            return fail(err, errlen, "invalid prefix length '%s' in '%s' (expected 0-%u)", p, s,
                        max);
        unsigned v = 0;
        for (; *p; p++)
            v = v * 10 + (unsigned)(*p - '0');
        if (v > max)
            return fail(err, errlen, "prefix length %u out of range in '%s' (expected 0-%u)", v, s,
                        max);
        out->prefix = v;
    }

    /* Host bits are dropped so matching compares network bytes only. */
    for (unsigned bit = out->prefix; bit < max; bit++)
        out->net[bit / 8] &= (unsigned char)~(0x80u >> (bit % 8));
    return 0;
}

/* *OUT is all zero after a failure, never half filled. */
int hx_cidr_parse(const char *s, hx_cidr *out, char *err, size_t errlen)
{
    hx_cidr c;
    memset(&c, 0, sizeof(c));
    memset(out, 0, sizeof(*out));
    if (cidr_parse(s, &c, err, errlen) < 0)
        return -1;
    *out = c;
    return 0;
}

static const unsigned char v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

int hx_cidr_match(const hx_cidr *c, const struct sockaddr *sa)
{
    unsigned char ip[16];
    int family;
    if (c == NULL || sa == NULL)
        return 0;

    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        if (c->family == AF_INET6) {
            /* Compare an IPv4 peer as ::ffff:a.b.c.d against IPv6 ranges. */
            memcpy(ip, v4_mapped_prefix, 12);
            memcpy(ip + 12, &sin->sin_addr, 4);
            family = AF_INET6;
        } else {
            memcpy(ip, &sin->sin_addr, 4);
            family = AF_INET;
        }
    } else if (sa->sa_family == AF_INET6) {
        const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        if (c->family == AF_INET && memcmp(b, v4_mapped_prefix, 12) == 0) {
            /* A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d. */
            memcpy(ip, b + 12, 4);
            family = AF_INET;
        } else {
            memcpy(ip, b, 16);
            family = AF_INET6;
        }
    } else {
        return 0;
    }
    if (family != c->family)
        return 0;

    unsigned whole = c->prefix / 8, rest = c->prefix % 8;
    if (memcmp(ip, c->net, whole) != 0)
        return 0;
    if (rest == 0)
        return 1;
    unsigned char mask = (unsigned char)(0xFFu << (8 - rest));
    return (ip[whole] & mask) == c->net[whole];
}
