/*
 * addr.h - socket addresses and CIDR ranges as they appear in configuration.
 */
#ifndef HX_ADDR_H
#define HX_ADDR_H

#include <netinet/in.h>
#include <stddef.h>
#include <sys/socket.h>

typedef struct hx_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} hx_addr;

typedef struct hx_cidr {
    int family;            /* AF_INET or AF_INET6 */
    unsigned char net[16]; /* network bytes, host bits zeroed */
    unsigned prefix;       /* 0..32 or 0..128 */
} hx_cidr;

/*
 * Parses "1.2.3.4:80", "[::1]:80", "*:80" / ":80" (all IPv4 addresses),
 * "[::]:80" and, when RESOLVE is set, "name:80" (getaddrinfo, first result,
 * done at config load, never on a worker). Port 1..65535 is required.
 * Returns 0, or -1 with a reason in ERR ("missing port", "port out of
 * range", "cannot resolve host 'x': ...").
 */
int hx_addr_parse(const char *s, int resolve, hx_addr *out, char *err, size_t errlen);

/* "1.2.3.4:80" or "[::1]:80" into BUF; returns BUF. */
const char *hx_addr_str(const hx_addr *a, char *buf, size_t size);
/* Only the IP part: "1.2.3.4" or "::1". HX_IP_STRLEN bytes hold any. */
#define HX_IP_STRLEN 48
const char *hx_addr_ip_str(const struct sockaddr *sa, char *buf, size_t size);

/* "10.0.0.0/8", "::1/128", a bare address means a host route. */
int hx_cidr_parse(const char *s, hx_cidr *out, char *err, size_t errlen);
/* 1 when SA (AF_INET, AF_INET6, or v4-mapped v6) lies in C. */
int hx_cidr_match(const hx_cidr *c, const struct sockaddr *sa);

#endif
