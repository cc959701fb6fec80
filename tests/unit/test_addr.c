/*
 * test_addr.c - listen/backend address parsing and CIDR ranges.
 */
#define _POSIX_C_SOURCE 200809L

#include "base/addr.h"
#include "hx_test.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

/* ---- helpers ---- */

static unsigned port_of(const hx_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return 0;
}

/* Parses S, which must be valid, and checks it prints back as EXPECT. */
static void check_addr(const char *s, int family, const char *expect, unsigned port)
{
    hx_addr a;
    char err[200] = "", buf[80];
    int rc = hx_addr_parse(s, 0, &a, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "  \"%s\": %s\n", s, err);
    HX_CHECK_INT_EQ(rc, 0);
    HX_CHECK_INT_EQ(a.ss.ss_family, family);
    HX_CHECK_UINT_EQ(a.len,
                     family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    HX_CHECK_UINT_EQ(port_of(&a), port);
    HX_CHECK_STR_EQ(hx_addr_str(&a, buf, sizeof(buf)), expect);
    HX_CHECK_STR_EQ(err, "");
}

/* Parses S, which must be refused with a reason containing WHY. */
static void check_bad_addr(const char *s, int resolve, const char *why)
{
    hx_addr a;
    char err[200] = "";
    memset(&a, 0x5a, sizeof(a));
    int rc = hx_addr_parse(s, resolve, &a, err, sizeof(err));
    if (rc != -1)
        fprintf(stderr, "  accepted \"%s\"\n", s ? s : "(null)");
    HX_CHECK_INT_EQ(rc, -1);
    HX_CHECK_STR_CONTAINS(err, why);
    HX_CHECK_UINT_EQ(a.len, 0);
}

/* A socket address for an IP literal, v6 without brackets. */
static hx_addr ip(const char *literal)
{
    char s[80];
    hx_addr a;
    snprintf(s, sizeof(s), strchr(literal, ':') ? "[%s]:1" : "%s:1", literal);
    if (hx_addr_parse(s, 0, &a, NULL, 0) != 0)
        fprintf(stderr, "  test helper cannot parse %s\n", literal);
    return a;
}

static int match(const hx_cidr *c, const char *literal)
{
    hx_addr a = ip(literal);
    return hx_cidr_match(c, (const struct sockaddr *)&a.ss);
}

static hx_cidr cidr(const char *s)
{
    hx_cidr c;
    char err[200];
    if (hx_cidr_parse(s, &c, err, sizeof(err)) != 0)
        fprintf(stderr, "  cidr \"%s\": %s\n", s, err);
    return c;
}

/* ---- hx_addr_parse ---- */

HX_TEST(addr_parses_ipv4_ipv6_and_wildcards)
{
    check_addr("1.2.3.4:80", AF_INET, "1.2.3.4:80", 80);
    check_addr("127.0.0.1:65535", AF_INET, "127.0.0.1:65535", 65535);
    check_addr("10.0.0.1:1", AF_INET, "10.0.0.1:1", 1);
    check_addr("*:8080", AF_INET, "0.0.0.0:8080", 8080);
    check_addr(":8080", AF_INET, "0.0.0.0:8080", 8080);
    check_addr("0.0.0.0:443", AF_INET, "0.0.0.0:443", 443);
    check_addr("[::1]:443", AF_INET6, "[::1]:443", 443);
    check_addr("[::]:80", AF_INET6, "[::]:80", 80);
    check_addr("[2001:db8::1]:8443", AF_INET6, "[2001:db8::1]:8443", 8443);
    check_addr("[::ffff:1.2.3.4]:80", AF_INET6, "[::ffff:1.2.3.4]:80", 80);
    check_addr("[fe80::1%2]:80", AF_INET6, "[fe80::1%2]:80", 80);
    check_addr("1.2.3.4:0080", AF_INET, "1.2.3.4:80", 80);

    hx_addr a;
    HX_CHECK_INT_EQ(hx_addr_parse("[::]:80", 0, &a, NULL, 0), 0);
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a.ss;
    HX_CHECK(memcmp(&sin6->sin6_addr, &in6addr_any, sizeof(in6addr_any)) == 0);
    HX_CHECK_INT_EQ(hx_addr_parse("*:80", 0, &a, NULL, 0), 0);
    HX_CHECK_UINT_EQ(((const struct sockaddr_in *)&a.ss)->sin_addr.s_addr, htonl(INADDR_ANY));
}

HX_TEST(addr_parses_ipv6_zone_by_interface_name)
{
    unsigned lo = if_nametoindex("lo");
    HX_CHECK(lo != 0); /* every Linux host and container has a loopback */
    hx_addr a;
    char err[200] = "";
    HX_CHECK_INT_EQ(hx_addr_parse("[fe80::1%lo]:80", 0, &a, err, sizeof(err)), 0);
    HX_CHECK_UINT_EQ(((const struct sockaddr_in6 *)&a.ss)->sin6_scope_id, lo);
    check_bad_addr("[fe80::1%nosuchif0]:80", 0, "unknown network interface 'nosuchif0'");
    check_bad_addr("[fe80::1%]:80", 0, "unknown network interface ''");
}

HX_TEST(addr_refuses_bad_forms_with_a_reason)
{
    check_bad_addr("", 0, "empty address");
    check_bad_addr(NULL, 0, "empty address");
    check_bad_addr("1.2.3.4", 0, "missing port in '1.2.3.4'");
    check_bad_addr("1.2.3.4:", 0, "missing port");
    check_bad_addr("[::1]", 0, "missing port in '[::1]'");
    check_bad_addr("[::1]:", 0, "missing port");
    check_bad_addr("1.2.3.4:0", 0, "port out of range in '1.2.3.4:0' (expected 1-65535)");
    check_bad_addr(":65536", 0, "port out of range");
    check_bad_addr("1.2.3.4:99999999999999999999", 0, "port out of range");
    check_bad_addr("[::1]:0", 0, "port out of range");
    check_bad_addr("1.2.3.4:http", 0, "invalid port 'http'");
    check_bad_addr("1.2.3.4:-1", 0, "invalid port '-1'");
    check_bad_addr("1.2.3.4:+80", 0, "invalid port");
    check_bad_addr("1.2.3.4:80 ", 0, "invalid port");
    check_bad_addr("::1:80", 0, "IPv6 addresses need brackets");
    check_bad_addr("::1", 0, "IPv6 addresses need brackets");
    check_bad_addr("[::1]80", 0, "expected ':' and a port after ']'");
    check_bad_addr("[::1:80", 0, "missing ']'");
    check_bad_addr("[1.2.3.4]:80", 0, "invalid IPv6 address '1.2.3.4'");
    check_bad_addr("[]:80", 0, "invalid IPv6 address");
    check_bad_addr("[::g]:80", 0, "invalid IPv6 address '::g'");
    check_bad_addr("256.1.1.1:80", 0, "'256.1.1.1' is not an IP address");
    check_bad_addr("1.2.3:80", 0, "'1.2.3' is not an IP address"); /* inet_aton would take it */
    check_bad_addr("127.1:80", 0, "is not an IP address");
    check_bad_addr("localhost:80", 0, "host names are not resolved here");
    check_bad_addr("**:80", 0, "is not an IP address");
}

HX_TEST(addr_resolves_names_only_when_asked)
{
    hx_addr a;
    char err[200] = "", buf[80];
    HX_CHECK_INT_EQ(hx_addr_parse("localhost:8080", 1, &a, err, sizeof(err)), 0);
    HX_CHECK_STR_EQ(err, "");
    HX_CHECK_UINT_EQ(port_of(&a), 8080);
    hx_addr_ip_str((const struct sockaddr *)&a.ss, buf, sizeof(buf));
    HX_CHECK(strcmp(buf, "127.0.0.1") == 0 || strcmp(buf, "::1") == 0);
    HX_CHECK(a.len == sizeof(struct sockaddr_in) || a.len == sizeof(struct sockaddr_in6));

    /* Numeric forms never reach the resolver. */
    check_addr("1.2.3.4:80", AF_INET, "1.2.3.4:80", 80);
    HX_CHECK_INT_EQ(hx_addr_parse("1.2.3.4:81", 1, &a, err, sizeof(err)), 0);
    HX_CHECK_STR_EQ(hx_addr_str(&a, buf, sizeof(buf)), "1.2.3.4:81");

    /* .invalid is reserved and never resolves (RFC 6761). */
    check_bad_addr("no-such-host.invalid:80", 1, "cannot resolve host 'no-such-host.invalid': ");
    check_bad_addr("localhost:0", 1, "port out of range");
    check_bad_addr("localhost", 1, "missing port");
}

/* The dotted-quad formatter (no inet_ntop) agrees with inet_ntop on every
 * octet value in every position. */
HX_TEST(addr_ip_str_ipv4_matches_inet_ntop)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    unsigned char *b = (unsigned char *)&sin.sin_addr;
    char got[HX_IP_STRLEN], want[INET_ADDRSTRLEN];
    for (unsigned v = 0; v < 256; v++) {
        for (int pos = 0; pos < 4; pos++) {
            memset(b, (int)(255 - v), 4);
            b[pos] = (unsigned char)v;
            hx_addr_ip_str((const struct sockaddr *)&sin, got, sizeof(got));
            inet_ntop(AF_INET, &sin.sin_addr, want, sizeof(want));
            HX_CHECK_STR_EQ(got, want);
        }
    }
    memset(b, 255, 4);
    HX_CHECK_STR_EQ(hx_addr_ip_str((const struct sockaddr *)&sin, got, 16), "255.255.255.255");
    HX_CHECK_STR_EQ(hx_addr_ip_str((const struct sockaddr *)&sin, got, 15), "255.255.255.25");
    HX_CHECK_STR_EQ(hx_addr_ip_str((const struct sockaddr *)&sin, got, 1), "");
}

HX_TEST(addr_error_buffer_may_be_small_or_absent)
{
    hx_addr a;
    char tiny[8];
    memset(tiny, 'x', sizeof(tiny));
    HX_CHECK_INT_EQ(hx_addr_parse("1.2.3.4", 0, &a, tiny, sizeof(tiny)), -1);
    HX_CHECK_STR_EQ(tiny, "missing");
    HX_CHECK_INT_EQ(hx_addr_parse("1.2.3.4", 0, &a, NULL, 0), -1);
    HX_CHECK_INT_EQ(hx_addr_parse("1.2.3.4", 0, &a, tiny, 0), -1);
}

HX_TEST(addr_str_and_ip_str_print_every_family)
{
    char buf[80];
    hx_addr a = ip("::ffff:10.1.2.3");
    HX_CHECK_STR_EQ(hx_addr_ip_str((const struct sockaddr *)&a.ss, buf, sizeof(buf)),
                    "::ffff:10.1.2.3");
    a = ip("192.168.0.1");
    HX_CHECK_STR_EQ(hx_addr_ip_str((const struct sockaddr *)&a.ss, buf, sizeof(buf)),
                    "192.168.0.1");
    a = ip("2001:db8::1");
    HX_CHECK_STR_EQ(hx_addr_ip_str((const struct sockaddr *)&a.ss, buf, sizeof(buf)),
                    "2001:db8::1");

    /* A short buffer truncates; size 0 leaves it alone. */
    char small[6];
    a = ip("192.168.0.1");
    HX_CHECK_STR_EQ(hx_addr_str(&a, small, sizeof(small)), "192.1");
    HX_CHECK_STR_EQ(hx_addr_ip_str((const struct sockaddr *)&a.ss, small, sizeof(small)), "192.1");
    small[0] = 'Q';
    hx_addr_str(&a, small, 0);
    HX_CHECK(small[0] == 'Q');

    struct sockaddr_un un;
    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    HX_CHECK_STR_EQ(hx_addr_ip_str((const struct sockaddr *)&un, buf, sizeof(buf)),
                    "(address family 1)");
    HX_CHECK_STR_EQ(hx_addr_ip_str(NULL, buf, sizeof(buf)), "(none)");
}

/* ---- CIDR ---- */

HX_TEST(cidr_parses_prefixes_and_zeroes_host_bits)
{
    hx_cidr c = cidr("10.0.0.0/8");
    HX_CHECK_INT_EQ(c.family, AF_INET);
    HX_CHECK_UINT_EQ(c.prefix, 8);
    HX_CHECK(memcmp(c.net, "\x0a\x00\x00\x00", 4) == 0);

    c = cidr("10.31.255.255/12");
    HX_CHECK_UINT_EQ(c.prefix, 12);
    HX_CHECK(memcmp(c.net, "\x0a\x10\x00\x00", 4) == 0);

    c = cidr("192.168.1.77");
    HX_CHECK_INT_EQ(c.family, AF_INET);
    HX_CHECK_UINT_EQ(c.prefix, 32);
    HX_CHECK(memcmp(c.net, "\xc0\xa8\x01\x4d", 4) == 0);

    c = cidr("0.0.0.0/0");
    HX_CHECK_UINT_EQ(c.prefix, 0);

    c = cidr("::1");
    HX_CHECK_INT_EQ(c.family, AF_INET6);
    HX_CHECK_UINT_EQ(c.prefix, 128);
    HX_CHECK_UINT_EQ(c.net[15], 1);

    c = cidr("2001:db8::ff/121");
    HX_CHECK_INT_EQ(c.family, AF_INET6);
    HX_CHECK_UINT_EQ(c.prefix, 121);
    HX_CHECK_UINT_EQ(c.net[15], 0x80);
    HX_CHECK_UINT_EQ(c.net[0], 0x20);
    HX_CHECK_UINT_EQ(c.net[1], 0x01);

    c = cidr("::/0");
    HX_CHECK_INT_EQ(c.family, AF_INET6);
    HX_CHECK_UINT_EQ(c.prefix, 0);

    c = cidr("10.0.0.0/008");
    HX_CHECK_UINT_EQ(c.prefix, 8);
}

HX_TEST(cidr_refuses_bad_forms_with_a_reason)
{
    static const struct {
        const char *s, *why;
    } bad[] = {
        {"", "empty network"},
        {"10.0.0.0/33", "prefix length 33 out of range in '10.0.0.0/33' (expected 0-32)"},
        {"::/129", "prefix length 129 out of range in '::/129' (expected 0-128)"},
        {"10.0.0.0/", "invalid prefix length '' in '10.0.0.0/' (expected 0-32)"},
        {"10.0.0.0/-1", "invalid prefix length '-1'"},
        {"10.0.0.0/8x", "invalid prefix length '8x'"},
        {"10.0.0.0/0008", "invalid prefix length '0008'"},
        {"10.0.0.0/8/9", "invalid prefix length '8/9'"},
        {"/8", "invalid network '/8'"},
        {"10.0.0/8", "invalid address '10.0.0' in '10.0.0/8'"},
        {"example.com/8", "invalid address 'example.com'"},
        {"[::1]/128", "invalid address '[::1]'"},
        {"1.2.3.4 /32", "invalid address '1.2.3.4 '"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        hx_cidr c;
        char err[200] = "";
        memset(&c, 0x5a, sizeof(c));
        HX_CHECK_INT_EQ(hx_cidr_parse(bad[i].s, &c, err, sizeof(err)), -1);
        HX_CHECK_STR_CONTAINS(err, bad[i].why);
        HX_CHECK_INT_EQ(c.family, 0);
    }
    hx_cidr c;
    HX_CHECK_INT_EQ(hx_cidr_parse(NULL, &c, NULL, 0), -1);
}

HX_TEST(cidr_matches_ipv4)
{
    hx_cidr c = cidr("10.0.0.0/8");
    HX_CHECK(match(&c, "10.0.0.0"));
    HX_CHECK(match(&c, "10.255.1.1"));
    HX_CHECK(!match(&c, "11.0.0.1"));
    HX_CHECK(!match(&c, "9.255.255.255"));

    c = cidr("10.16.0.0/12");
    HX_CHECK(match(&c, "10.16.0.0"));
    HX_CHECK(match(&c, "10.31.255.255"));
    HX_CHECK(!match(&c, "10.32.0.0"));
    HX_CHECK(!match(&c, "10.15.255.255"));

    c = cidr("192.168.1.77");
    HX_CHECK(match(&c, "192.168.1.77"));
    HX_CHECK(!match(&c, "192.168.1.76"));

    c = cidr("0.0.0.0/0");
    HX_CHECK(match(&c, "1.2.3.4"));
    HX_CHECK(match(&c, "255.255.255.255"));
    HX_CHECK(!match(&c, "::1")); /* an IPv4 range never holds a plain IPv6 peer */
}

HX_TEST(cidr_matches_ipv6)
{
    hx_cidr c = cidr("2001:db8::/32");
    HX_CHECK(match(&c, "2001:db8::1"));
    HX_CHECK(match(&c, "2001:db8:ffff:ffff::1"));
    HX_CHECK(!match(&c, "2001:db9::1"));
    HX_CHECK(!match(&c, "1.2.3.4"));

    c = cidr("::1/128");
    HX_CHECK(match(&c, "::1"));
    HX_CHECK(!match(&c, "::2"));
    HX_CHECK(!match(&c, "0.0.0.1"));

    c = cidr("fe80::/10");
    HX_CHECK(match(&c, "febf::1"));
    HX_CHECK(!match(&c, "fec0::1"));

    c = cidr("2001:db8::80/121");
    HX_CHECK(match(&c, "2001:db8::ff"));
    HX_CHECK(!match(&c, "2001:db8::7f"));
}

HX_TEST(cidr_matches_v4_mapped_ipv6_both_ways)
{
    /* A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d. */
    hx_cidr v4 = cidr("10.0.0.0/8");
    HX_CHECK(match(&v4, "::ffff:10.1.2.3"));
    HX_CHECK(!match(&v4, "::ffff:11.1.2.3"));
    HX_CHECK(!match(&v4, "::10.1.2.3")); /* IPv4-compatible is not mapped */
    HX_CHECK(!match(&v4, "64:ff9b::a01:203"));

    hx_cidr all4 = cidr("0.0.0.0/0");
    HX_CHECK(match(&all4, "::ffff:8.8.8.8"));

    hx_cidr mapped = cidr("::ffff:10.0.0.0/104");
    HX_CHECK_INT_EQ(mapped.family, AF_INET6);
    HX_CHECK(match(&mapped, "10.1.2.3"));
    HX_CHECK(match(&mapped, "::ffff:10.1.2.3"));
    HX_CHECK(!match(&mapped, "11.1.2.3"));

    hx_cidr all6 = cidr("::/0");
    HX_CHECK(match(&all6, "1.2.3.4"));
    HX_CHECK(match(&all6, "2001:db8::1"));

    hx_cidr host = cidr("192.0.2.1");
    HX_CHECK(match(&host, "::ffff:192.0.2.1"));
    HX_CHECK(!match(&host, "::ffff:192.0.2.2"));
}

HX_TEST(cidr_match_ignores_other_families_and_null)
{
    hx_cidr c = cidr("0.0.0.0/0");
    struct sockaddr_un un;
    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    HX_CHECK_INT_EQ(hx_cidr_match(&c, (const struct sockaddr *)&un), 0);
    HX_CHECK_INT_EQ(hx_cidr_match(&c, NULL), 0);
    hx_addr a = ip("1.2.3.4");
    HX_CHECK_INT_EQ(hx_cidr_match(NULL, (const struct sockaddr *)&a.ss), 0);
    HX_CHECK_INT_EQ(hx_cidr_match(&c, (const struct sockaddr *)&a.ss), 1);
}

int main(void)
{
    HX_RUN(addr_parses_ipv4_ipv6_and_wildcards);
    HX_RUN(addr_parses_ipv6_zone_by_interface_name);
    HX_RUN(addr_refuses_bad_forms_with_a_reason);
    HX_RUN(addr_resolves_names_only_when_asked);
    HX_RUN(addr_ip_str_ipv4_matches_inet_ntop);
    HX_RUN(addr_error_buffer_may_be_small_or_absent);
    HX_RUN(addr_str_and_ip_str_print_every_family);
    HX_RUN(cidr_parses_prefixes_and_zeroes_host_bits);
    HX_RUN(cidr_refuses_bad_forms_with_a_reason);
    HX_RUN(cidr_matches_ipv4);
    HX_RUN(cidr_matches_ipv6);
    HX_RUN(cidr_matches_v4_mapped_ipv6_both_ways);
    HX_RUN(cidr_match_ignores_other_families_and_null);
    return hx_test_summary();
}
