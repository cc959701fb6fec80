/*
 * test_httputil.c - base/httputil.c: header lists, the token and
 * field-value tables, hop-by-hop and Connection-listed headers, list
 * tokens, method ids, reason phrases and Host parsing. These are what
 * HTTP/1.1, HTTP/2, subrequests, the proxy and the host API share, so a
 * wrong answer here is wrong on every protocol.
 */
#include "hx_test.h"

#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/arena.h"
#include "base/buf.h"
#include "base/httputil.h"

static hx_arena arena;
static hx_arena_block *first;

static void arena_fresh(void)
{
    if (first == NULL) {
        first = malloc(sizeof(*first) + 256);
        hx_arena_init(&arena, first, 256);
    }
    hx_arena_reset(&arena);
}

static helios_buf B(const char *s) { return (helios_buf){s, strlen(s)}; }

HX_TEST(header_list_add_get_remove_is_case_insensitive_and_keeps_order)
{
    arena_fresh();
    hx_hdrs h = {0};
    for (int i = 0; i < 40; i++) /* grows past the first 16 entries */
        HX_CHECK_INT_EQ(hx_hdrs_add(&arena, &h, "X-N", 3, "v", 1), 0);
    HX_CHECK_INT_EQ(hx_hdrs_add(&arena, &h, "Content-Type", 12, "text/plain", 10), 0);
    HX_CHECK_INT_EQ(hx_hdrs_add(&arena, &h, "content-type", 12, "second", 6), 0);
    HX_CHECK_UINT_EQ(h.n, 42);
    helios_buf v = hx_hdrs_get(&h, "CONTENT-TYPE");
    HX_CHECK(v.ptr != NULL && v.len == 10 && memcmp(v.ptr, "text/plain", 10) == 0);
    HX_CHECK(hx_hdrs_get(&h, "absent").ptr == NULL);
    HX_CHECK_INT_EQ(hx_hdrs_remove(&h, "x-n"), 40);
    HX_CHECK_UINT_EQ(h.n, 2);
    HX_CHECK(memcmp(h.v[1].value.ptr, "second", 6) == 0);
    HX_CHECK_INT_EQ(hx_hdrs_remove(&h, "x-n"), 0);
}

HX_TEST(header_names_are_tokens_and_values_have_no_control_bytes)
{
    HX_CHECK(hx_hdr_name_valid("X-Request-ID", 12));
    HX_CHECK(hx_hdr_name_valid("!#$%&'*+-.^_`|~09azAZ", 21));
    HX_CHECK(!hx_hdr_name_valid("", 0));
    HX_CHECK(!hx_hdr_name_valid("Bad Name", 8));
    HX_CHECK(!hx_hdr_name_valid("Bad:Name", 8));
    HX_CHECK(!hx_hdr_name_valid("caf\xc3\xa9", 5));
    HX_CHECK(!hx_hdr_name_valid("a\0b", 3));
    HX_CHECK(hx_hdr_value_valid("tab\tand space ok, caf\xc3\xa9", 23));
    HX_CHECK(hx_hdr_value_valid("", 0));
    HX_CHECK(!hx_hdr_value_valid("split\r\nX-Evil: 1", 16));
    HX_CHECK(!hx_hdr_value_valid("lf\nonly", 7));
    HX_CHECK(!hx_hdr_value_valid("nul\0", 4));
    HX_CHECK(!hx_hdr_value_valid("del\x7f", 4));
    HX_CHECK(hx_token_valid("GET", 3));
    HX_CHECK(!hx_token_valid("GE T", 4));
    HX_CHECK(!hx_token_valid("", 0));
}

HX_TEST(hop_by_hop_headers_and_connection_listed_ones_are_recognised)
{
    const char *hop[] = {"Connection", "keep-alive", "Proxy-Connection", "Transfer-Encoding",
                         "TE", "Trailer", "Upgrade", "Proxy-Authenticate"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        HX_CHECK(hx_is_hop_header(hop[i], strlen(hop[i])));
    HX_CHECK(!hx_is_hop_header("Content-Length", 14));
    HX_CHECK(!hx_is_hop_header("Te-X", 4));

    arena_fresh();
    hx_hdrs h = {0};
    hx_hdrs_add(&arena, &h, "Connection", 10, "keep-alive, X-Private ,\tx-other", 31);
    hx_hdrs_add(&arena, &h, "connection", 10, "close", 5);
    HX_CHECK(hx_hdrs_connection_lists(&h, "x-private", 9));
    HX_CHECK(hx_hdrs_connection_lists(&h, "X-OTHER", 7));
    HX_CHECK(hx_hdrs_connection_lists(&h, "close", 5)); /* a second Connection header */
    HX_CHECK(!hx_hdrs_connection_lists(&h, "x-priv", 6));
    HX_CHECK(!hx_hdrs_connection_lists(&h, "X-Private-Longer", 16));
}

/* The inline compares replaced strncasecmp on the hot path (issue 18): they
 * must answer as it does in the C locale for every pair of bytes. */
HX_TEST(inline_case_insensitive_compares_agree_with_strncasecmp_on_every_byte_pair)
{
    for (int x = 1; x < 256; x++)
        for (int y = 1; y < 256; y++) {
            char a[2] = {(char)x, 0}, b[2] = {(char)y, 0};
            int want = strncasecmp(a, b, 1) == 0;
            if (hx_ascii_ieq(a, b, 1) != want)
                HX_FAILED_("hx_ascii_ieq(0x%02x, 0x%02x) != strncasecmp", x, y);
            char lo = (char)(y >= 'A' && y <= 'Z' ? y + 32 : y);
            if (hx_name_is(a, 1, &lo, 1) != (strncasecmp(a, &lo, 1) == 0))
                HX_FAILED_("hx_name_is(0x%02x, 0x%02x) != strncasecmp", x, (unsigned char)lo);
        }
    /* the eight-bytes-at-a-time path: every byte value at every position
     * of a 17-byte name, against both case forms */
    const char *lits[][2] = {{"te", "TE"},
                             {"host", "hOST"},
                             {"expect", "Expect"},
                             {"keep-alive", "Keep-Alive"},
                             {"content-length", "Content-LENGTH"},
                             {"transfer-encoding", "Transfer-ENCODING"}};
    for (size_t t = 0; t < sizeof(lits) / sizeof(lits[0]); t++) {
        const char *lit = lits[t][0], *mixed = lits[t][1];
        size_t n = strlen(lit);
        for (size_t k = 0; k < n; k++)
            for (int x = 1; x < 256; x++) {
                char a[32];
                memcpy(a, mixed, n + 1);
                a[k] = (char)x;
                int want = strncasecmp(a, lit, n) == 0;
                if (hx_name_is(a, n, lit, n) != want || hx_ascii_ieq(a, lit, n) != want ||
                    hx_ascii_ieq(lit, a, n) != want || hx_ascii_ieq(a, mixed, n) != want)
                    HX_FAILED_("'%s', byte 0x%02x at %zu: compares disagree with strncasecmp",
                               lit, x, k);
            }
    }
    HX_CHECK(hx_ascii_ieq("Content-Length", "cONTENT-lENGTH", 14));
    HX_CHECK(!hx_ascii_ieq("Content-Length", "Content_Length", 14));
    HX_CHECK(hx_name_is("Transfer-Encoding", 17, "transfer-encoding", 17));
    HX_CHECK(!hx_name_is("Transfer-Encoding", 17, "transfer-encodinh", 17));
    HX_CHECK(!hx_name_is("host", 4, "hos", 3));
    /* every name of the same length as a hop-by-hop one, one byte off */
    const char *hop[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                         "te", "trailer", "upgrade", "proxy-authenticate"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++) {
        char m[32];
        size_t n = strlen(hop[i]);
        for (size_t k = 0; k < n; k++) {
            memcpy(m, hop[i], n);
            m[k] = (char)(m[k] ^ 0x01);
            if (hx_is_hop_header(m, n))
                HX_FAILED_("'%.*s' taken for a hop-by-hop header", (int)n, m);
        }
    }
}

HX_TEST(list_tokens_ignore_case_spaces_and_version_suffixes)
{
    HX_CHECK(hx_list_has_token(B("websocket"), "websocket", 9));
    HX_CHECK(hx_list_has_token(B("h2c, WebSocket/13"), "websocket", 9));
    HX_CHECK(hx_list_has_token(B(" ,websocket ,"), "websocket", 9));
    HX_CHECK(!hx_list_has_token(B("websockets"), "websocket", 9));
    HX_CHECK(!hx_list_has_token(B("foo/websocket"), "websocket", 9));
    HX_CHECK(!hx_list_has_token((helios_buf){NULL, 0}, "websocket", 9));
}

HX_TEST(method_ids_are_llhttps_and_other_tokens_are_minus_one)
{
    HX_CHECK_INT_EQ(hx_method_id("GET", 3), HTTP_GET);
    HX_CHECK_INT_EQ(hx_method_id("HEAD", 4), HTTP_HEAD);
    HX_CHECK_INT_EQ(hx_method_id("PATCH", 5), HTTP_PATCH);
    HX_CHECK_INT_EQ(hx_method_id("CONNECT", 7), HTTP_CONNECT);
    HX_CHECK_INT_EQ(hx_method_id("get", 3), -1); /* methods are case-sensitive */
    HX_CHECK_INT_EQ(hx_method_id("GETX", 3), HTTP_GET); /* the length decides */
    HX_CHECK_INT_EQ(hx_method_id("PURGE", 5), -1);
}

HX_TEST(reason_phrases_and_classes_for_unknown_codes)
{
    HX_CHECK_STR_EQ(hx_reason(200), "OK");
    HX_CHECK_STR_EQ(hx_reason(404), "Not Found");
    HX_CHECK_STR_EQ(hx_reason(413), "Content Too Large");
    HX_CHECK_STR_EQ(hx_reason(431), "Request Header Fields Too Large");
    HX_CHECK_STR_EQ(hx_reason(599), "Server Error");
    HX_CHECK_STR_EQ(hx_reason(499), "Client Error");
    HX_CHECK_STR_EQ(hx_reason(299), "OK");
    HX_CHECK_STR_EQ(hx_reason(103), "Informational");
}

static unsigned last_port;

static const char *host(const char *in)
{
    helios_buf out = {0};
    last_port = 12345;
    if (hx_host_parse(&arena, in, strlen(in), &out, &last_port) != 0)
        return NULL;
    HX_CHECK_UINT_EQ(strlen(out.ptr), out.len);
    return out.ptr;
}

HX_TEST(host_is_normalised_once_case_port_trailing_dot_brackets)
{
    arena_fresh();
    HX_CHECK_STR_EQ(host("Example.COM"), "example.com");
    HX_CHECK_UINT_EQ(last_port, 0);
    HX_CHECK_STR_EQ(host("example.com:8080"), "example.com");
    HX_CHECK_UINT_EQ(last_port, 8080);
    HX_CHECK_STR_EQ(host("admin.example."), "admin.example");
    HX_CHECK_STR_EQ(host("ADMIN.example.:443"), "admin.example");
    HX_CHECK_UINT_EQ(last_port, 443);
    HX_CHECK_STR_EQ(host("example.com:"), "example.com"); /* empty port */
    HX_CHECK_UINT_EQ(last_port, 0);
    HX_CHECK_STR_EQ(host("[::1]:443"), "[::1]");
    HX_CHECK_STR_EQ(host("[2001:DB8::1]"), "[2001:db8::1]");
    HX_CHECK_STR_EQ(host("[::ffff:127.0.0.1]"), "[::ffff:127.0.0.1]");
    HX_CHECK_STR_EQ(host("127.0.0.1"), "127.0.0.1");
    HX_CHECK_STR_EQ(host("xn--bcher-kva.example"), "xn--bcher-kva.example");
    HX_CHECK_STR_EQ(host("a%2Db.example"), "a%2db.example");
    HX_CHECK_STR_EQ(host(""), "");
}

HX_TEST(malformed_hosts_are_refused)
{
    arena_fresh();
    const char *bad[] = {"example.com:80x", "example.com:0", "example.com:65536",
                         "example.com:123456", "[::1", "[::1]x", "[zz::1]", "[1.2.3.4]",
                         "[v1.fe]", "evil.com/x", "user@evil.com", "a\\b", "sp ace",
                         "ctl\x01", "tab\there", "quote\"d", "<x>", "a%2", "a%zz", ".",
                         "caf\xc3\xa9.example"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (host(bad[i]) != NULL)
            HX_FAILED_("accepted malformed host '%s'", bad[i]);
}

HX_TEST(field_value_bytes_are_htab_sp_vchar_and_obs_text)
{
    for (int c = 0; c < 256; c++) {
        int want = !((c < 0x20 && c != '\t') || c == 0x7f);
        char b = (char)c;
        if (hx_vchar[c] != want || hx_hdr_value_valid(&b, 1) != want)
            HX_FAILED_("value byte 0x%02x: table %d, want %d", c, hx_vchar[c], want);
    }
}

/* hx_copy (buf.h) writes every head piece: exactly N bytes, whatever N. */
HX_TEST(short_copies_write_exactly_n_bytes)
{
    char src[64], dst[80];
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (char)('A' + i % 50);
    for (size_t n = 0; n <= 40; n++) {
        memset(dst, '#', sizeof(dst));
        hx_copy(dst + 8, src + 3, n);
        for (size_t i = 0; i < sizeof(dst); i++) {
            char want = i >= 8 && i < 8 + n ? src[3 + i - 8] : '#';
            if (dst[i] != want)
                HX_FAILED_("hx_copy of %zu bytes: byte %zu is '%c', want '%c'", n, i, dst[i], want);
        }
    }
}

HX_TEST(host_name_bytes_are_exactly_rfc3986_reg_name_ones)
{
    for (int c = 1; c < 256; c++) {
        int want = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   strchr("-._~!$&'()*+,;=", c) != NULL;
        /* the byte in a short host (byte by byte) and in a long one (the
         * four-bytes-a-step path) */
        char in[4] = {'a', (char)c, 'b', 0}, lin[13] = "ABCDEFGHIJKL";
        lin[6] = (char)c;
        arena_fresh();
        helios_buf out;
        unsigned port;
        int got = hx_host_parse(&arena, in, 3, &out, &port) == 0;
        int lgot = hx_host_parse(&arena, lin, 12, &out, &port) == 0;
        if (c != '%' && c != ':' && c != '[' && lgot != got)
            HX_FAILED_("host byte 0x%02x: long host accepted %d, short %d", c, lgot, got);
        if (lgot && c != '.' && (out.len != 12 || memcmp(out.ptr, "abcdef", 6) != 0 ||
                                 memcmp(out.ptr + 7, "hijkl", 5) != 0))
            HX_FAILED_("host byte 0x%02x: long host normalised to '%.*s'", c, (int)out.len,
                       out.ptr);
        if (c == '%' || c == ':' || c == '[')
            continue; /* pct-encoding, the port, IPv6: their own checks */
        if (got != want)
            HX_FAILED_("host byte 0x%02x: accepted %d, want %d", c, got, want);
    }
}

int main(void)
{
    HX_RUN(header_list_add_get_remove_is_case_insensitive_and_keeps_order);
    HX_RUN(header_names_are_tokens_and_values_have_no_control_bytes);
    HX_RUN(hop_by_hop_headers_and_connection_listed_ones_are_recognised);
    HX_RUN(inline_case_insensitive_compares_agree_with_strncasecmp_on_every_byte_pair);
    HX_RUN(list_tokens_ignore_case_spaces_and_version_suffixes);
    HX_RUN(method_ids_are_llhttps_and_other_tokens_are_minus_one);
    HX_RUN(reason_phrases_and_classes_for_unknown_codes);
    HX_RUN(host_is_normalised_once_case_port_trailing_dot_brackets);
    HX_RUN(malformed_hosts_are_refused);
    HX_RUN(host_name_bytes_are_exactly_rfc3986_reg_name_ones);
    HX_RUN(short_copies_write_exactly_n_bytes);
    HX_RUN(field_value_bytes_are_htab_sp_vchar_and_obs_text);
    hx_arena_reset(&arena);
    free(first);
    return hx_test_summary();
}
