/*
 * test_router.c - path normalisation (hx_path_normalize) and route matching
 * (hx_route_match) on routes built by the real configuration loader from
 * YAML, as heliosd builds them: hx_gen_build on a file, with the build's
 * module directory (each upstream loads round_robin) and the runtime's host
 * API wired in.
 *
 * hx_route_match takes the host lower-case without a port and the path
 * already normalised; the last tests chain the two as the request layer
 * does, so a route guarding a prefix is checked against bypass spellings.
 */
#define _POSIX_C_SOURCE 200809L

#include "config/conf.h"
#include "config/config.h"
#include "config/module_loader.h"
#include "config/router.h"
#include "runtime/runtime.h"

#include "hx_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static hx_modreg reg;

/* ---- building routes from YAML ---- */

/* Every config gets the same listener and upstream; ROUTES is the text of
 * its `routes:` sequence. The listener is never bound (hx_gen_build only
 * validates it). */
#define CONFIG_HEAD                                                                                \
    "listeners: [{address: 127.0.0.1:18080}]\n"                                                    \
    "upstreams:\n"                                                                                 \
    "  app: {backends: [{address: 127.0.0.1:9}]}\n"                                                \
    "routes:\n"

/* The generation of CONFIG_HEAD + ROUTES; NULL (a failed check, with the
 * loader's errors printed) if it does not build. */
static hx_gen *build(const char *routes)
{
    char path[] = "/tmp/hx_test_router_XXXXXX.yaml";
    int fd = mkstemps(path, 5);
    if (fd < 0) {
        HX_FAILED_("mkstemps failed");
        return NULL;
    }
    FILE *f = fdopen(fd, "w");
    if (f == NULL) {
        close(fd);
        unlink(path);
        HX_FAILED_("fdopen failed");
        return NULL;
    }
    fputs(CONFIG_HEAD, f);
    fputs(routes, f);
    fclose(f);

    hx_conf_tree *tree = NULL;
    hx_gen *g = hx_gen_build(path, HELIOS_BUILD_MODULE_DIR, HELIOS_BUILD_MODULE_DIR, &reg, &tree);
    unlink(path);
    if (g == NULL) {
        HX_FAILED_("the test configuration did not build:");
        for (size_t i = 0; tree && i < hx_conf_error_count(tree); i++)
            fprintf(stderr, "    %s\n", hx_conf_error_at(tree, i));
        hx_conf_tree_free(tree);
    }
    return g;
}

/* Name of the route G picks for HOST, PATH and METHOD (all NUL-terminated
 * here), "404" when none matches, "-" for a matching route without a name. */
static const char *pick(const hx_gen *g, const char *host, const char *path, const char *method)
{
    if (g == NULL)
        return "(no generation)";
    const hx_route *rt =
        hx_route_match(g, host, strlen(host), path, strlen(path), method, strlen(method));
    return rt == NULL ? "404" : rt->name ? rt->name : "-";
}

#define CHECK_PICK(g, host, path, method, expected)                                                \
    do {                                                                                           \
        const char *hx_got_ = pick(g, host, path, method);                                         \
        if (strcmp(hx_got_, expected) != 0)                                                        \
            HX_FAILED_("%s %s (host \"%s\"): route %s, expected %s", method, path, host, hx_got_,  \
                       expected);                                                                  \
    } while (0)

/* ---- path normalisation ---- */

/* normalize(IN) into a buffer of exactly strlen(IN)+1 bytes (the documented
 * requirement, so a sanitizer build catches a write past it); returns the
 * result, or NULL when hx_path_normalize refused IN. */
static char *normalize(const char *in, long *len_out)
{
    size_t len = strlen(in);
    char *out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    long n = hx_path_normalize(in, len, out);
    *len_out = n;
    if (n < 0) {
        free(out);
        return NULL;
    }
    return out;
}

#define CHECK_NORM(in, expected)                                                                   \
    do {                                                                                           \
        long hx_n_;                                                                                \
        char *hx_out_ = normalize(in, &hx_n_);                                                     \
        if (hx_out_ == NULL)                                                                       \
            HX_FAILED_("normalize(\"%s\") refused the path, expected \"%s\"", in, expected);       \
        else if (strcmp(hx_out_, expected) != 0 || hx_n_ != (long)strlen(expected))                \
            HX_FAILED_("normalize(\"%s\") = \"%s\" (length %ld), expected \"%s\"", in, hx_out_,    \
                       hx_n_, expected);                                                           \
        free(hx_out_);                                                                             \
    } while (0)

#define CHECK_NORM_REFUSED(in, len)                                                                \
    do {                                                                                           \
        char hx_buf_[64];                                                                          \
        long hx_n_ = hx_path_normalize(in, len, hx_buf_);                                          \
        if (hx_n_ != -1)                                                                           \
            HX_FAILED_("normalize(%s) = %ld, expected -1 (refused)", #in, hx_n_);                  \
    } while (0)

HX_TEST(normalize_keeps_clean_paths)
{
    CHECK_NORM("/", "/");
    CHECK_NORM("/a", "/a");
    CHECK_NORM("/a/b/", "/a/b/");
    CHECK_NORM("/a/...", "/a/...");       /* three dots is a name */
    CHECK_NORM("/a/..b/.c", "/a/..b/.c"); /* so are dotted names */
}

HX_TEST(normalize_merges_repeated_slashes)
{
    CHECK_NORM("//", "/");
    CHECK_NORM("//admin", "/admin");
    CHECK_NORM("/a//b///c", "/a/b/c");
}

HX_TEST(normalize_removes_dot_segments)
{
    CHECK_NORM("/a/./b", "/a/b");
    CHECK_NORM("/a/.", "/a/");
    CHECK_NORM("/a/../b", "/b");
    CHECK_NORM("/a/b/..", "/a/");
    CHECK_NORM("/a/b/../../c", "/c");
    CHECK_NORM("/public/../admin/x", "/admin/x");
}

HX_TEST(normalize_never_climbs_above_the_root)
{
    CHECK_NORM("/..", "/");
    CHECK_NORM("/../admin", "/admin");
    CHECK_NORM("/../../a", "/a");
    CHECK_NORM("/a/../../../b", "/b");
    CHECK_NORM("/a/b/../../..", "/");
}

HX_TEST(normalize_decodes_percent_escapes_before_dot_segments)
{
    CHECK_NORM("/%61dmin/", "/admin/");
    CHECK_NORM("/%41%42", "/AB");
    CHECK_NORM("/%2e%2e/admin", "/admin");
    CHECK_NORM("/a/.%2E/b", "/b");
    CHECK_NORM("/caf%C3%A9/", "/caf\xc3\xa9/"); /* bytes >= 0x80 are fine */
}

HX_TEST(normalize_keeps_an_encoded_slash_inside_its_segment)
{
    /* %2F stays encoded (upper-case), so it neither splits a segment nor
     * lets ".." climb over it */
    CHECK_NORM("/a%2Fb", "/a%2Fb");
    CHECK_NORM("/a%2fb", "/a%2Fb");
    CHECK_NORM("/a%2F..%2Fb", "/a%2F..%2Fb");
    CHECK_NORM("/x/..%2Fadmin", "/x/..%2Fadmin");
}

HX_TEST(normalize_refuses_malformed_paths)
{
    CHECK_NORM_REFUSED("", 0);
    CHECK_NORM_REFUSED("a/b", 3);
    CHECK_NORM_REFUSED("*", 1);
    CHECK_NORM_REFUSED("/%", 2);
    CHECK_NORM_REFUSED("/%4", 3);
    CHECK_NORM_REFUSED("/%zz", 4);
    CHECK_NORM_REFUSED("/%4g", 4);
    CHECK_NORM_REFUSED("/a%00b", 6);
    CHECK_NORM_REFUSED("/a\x01", 3);
    CHECK_NORM_REFUSED("/a\x7f", 3);
    CHECK_NORM_REFUSED("/%0a", 4); /* a decoded control byte too */
    CHECK_NORM_REFUSED("/%7F", 4);
    CHECK_NORM_REFUSED("/a\0b", 4); /* a raw NUL inside the given length */
}

HX_TEST(normalize_reads_only_the_given_length)
{
    char out[8];
    HX_CHECK_INT_EQ(hx_path_normalize("/ab/../cd", 3, out), 3);
    HX_CHECK_STR_EQ(out, "/ab");
    /* an escape cut by the length is malformed, whatever follows it */
    HX_CHECK_INT_EQ(hx_path_normalize("/%41", 3, out), -1);
}

/* ---- matching ---- */

HX_TEST(exact_path_matches_only_itself)
{
    hx_gen *g = build("  - {name: health, match: {path: /health}, upstream: app}\n");
    CHECK_PICK(g, "", "/health", "GET", "health");
    CHECK_PICK(g, "", "/health/", "GET", "404");
    CHECK_PICK(g, "", "/healthz", "GET", "404");
    CHECK_PICK(g, "", "/healt", "GET", "404");
    CHECK_PICK(g, "", "/", "GET", "404");
    if (g)
        hx_gen_unref(g);
}

HX_TEST(prefix_is_a_plain_string_prefix)
{
    /* documented: "/api" also matches "/apix"; "/api/" is the directory */
    hx_gen *g = build("  - {name: dir, match: {prefix: /api/}, upstream: app}\n"
                      "  - {name: str, match: {prefix: /api}, upstream: app}\n");
    CHECK_PICK(g, "", "/api/", "GET", "dir");
    CHECK_PICK(g, "", "/api/v1/x", "GET", "dir");
    CHECK_PICK(g, "", "/api", "GET", "str");
    CHECK_PICK(g, "", "/apix", "GET", "str");
    CHECK_PICK(g, "", "/ap", "GET", "404");
    CHECK_PICK(g, "", "/API/", "GET", "404"); /* paths are compared byte for byte */
    if (g)
        hx_gen_unref(g);
}

HX_TEST(route_without_match_takes_everything)
{
    hx_gen *g = build("  - {name: only-get, match: {methods: [GET]}, upstream: app}\n"
                      "  - {name: all, upstream: app}\n");
    CHECK_PICK(g, "", "/", "GET", "only-get");
    CHECK_PICK(g, "any.test", "/x/y", "DELETE", "all");
    CHECK_PICK(g, "", "/", "BREW", "all");
    if (g)
        hx_gen_unref(g);
}

HX_TEST(first_matching_route_wins_in_file_order)
{
    hx_gen *g = build("  - {name: first, match: {prefix: /dup/}, upstream: app}\n"
                      "  - {name: second, match: {prefix: /dup/}, upstream: app}\n"
                      "  - {name: broad, match: {prefix: /}, upstream: app}\n"
                      "  - {name: shadowed, match: {path: /dup/x}, upstream: app}\n");
    CHECK_PICK(g, "", "/dup/x", "GET", "first");
    CHECK_PICK(g, "", "/other", "GET", "broad");
    /* a more specific route after a broader one is never reached */
    CHECK_PICK(g, "", "/dup/x", "POST", "first");
    if (g) {
        HX_CHECK_INT_EQ(g->nroutes, 4);
        HX_CHECK_STR_EQ(g->routes[3].name, "shadowed");
        hx_gen_unref(g);
    }
}

HX_TEST(exact_host_is_case_insensitive_and_whole)
{
    /* written in mixed case in the file, stored lower-case */
    hx_gen *g = build("  - {name: api, match: {host: API.Example.COM}, upstream: app}\n"
                      "  - {name: v6, match: {host: \"[::1]\"}, upstream: app}\n");
    if (g)
        HX_CHECK_STR_EQ(g->routes[0].host, "api.example.com");
    CHECK_PICK(g, "api.example.com", "/", "GET", "api");
    CHECK_PICK(g, "API.example.com", "/", "GET", "api");
    CHECK_PICK(g, "xapi.example.com", "/", "GET", "404");
    CHECK_PICK(g, "api.example.com.evil", "/", "GET", "404");
    CHECK_PICK(g, "example.com", "/", "GET", "404");
    CHECK_PICK(g, "", "/", "GET", "404"); /* no Host: only host-less routes */
    CHECK_PICK(g, "[::1]", "/", "GET", "v6");
    if (g)
        hx_gen_unref(g);
}

HX_TEST(wildcard_host_matches_subdomains_but_not_the_domain)
{
    hx_gen *g = build("  - {name: wild, match: {host: \"*.example.com\"}, upstream: app}\n"
                      "  - {name: rest, upstream: app}\n");
    if (g) {
        HX_CHECK_INT_EQ(g->routes[0].host_wildcard, 1);
        HX_CHECK_STR_EQ(g->routes[0].host, ".example.com");
    }
    CHECK_PICK(g, "a.example.com", "/", "GET", "wild");
    CHECK_PICK(g, "a.b.example.com", "/", "GET", "wild");
    CHECK_PICK(g, "A.EXAMPLE.COM", "/", "GET", "wild");
    CHECK_PICK(g, "example.com", "/", "GET", "rest");
    CHECK_PICK(g, "badexample.com", "/", "GET", "rest");
    CHECK_PICK(g, ".example.com", "/", "GET", "rest"); /* an empty label is not a subdomain */
    CHECK_PICK(g, "example.com.a", "/", "GET", "rest");
    if (g)
        hx_gen_unref(g);
}

HX_TEST(methods_are_matched_exactly)
{
    hx_gen *g = build("  - {name: rw, match: {methods: [get, POST]}, upstream: app}\n"
                      "  - {name: one, match: {methods: PUT}, upstream: app}\n");
    if (g) {
        HX_CHECK_STR_EQ(g->routes[0].methods[0], "GET"); /* stored upper-case */
        HX_CHECK_STR_EQ(g->routes[0].methods[1], "POST");
        HX_CHECK(g->routes[0].methods[2] == NULL);
    }
    CHECK_PICK(g, "", "/", "GET", "rw");
    CHECK_PICK(g, "", "/", "POST", "rw");
    CHECK_PICK(g, "", "/", "PUT", "one");
    CHECK_PICK(g, "", "/", "HEAD", "404"); /* GET does not imply HEAD */
    CHECK_PICK(g, "", "/", "get", "404");  /* request methods are case-sensitive */
    CHECK_PICK(g, "", "/", "GE", "404");
    CHECK_PICK(g, "", "/", "GETX", "404");
    if (g)
        hx_gen_unref(g);
}

HX_TEST(every_given_key_must_match)
{
    hx_gen *g = build("  - name: all-three\n"
                      "    match: {host: api.test, prefix: /v1/, methods: [POST]}\n"
                      "    upstream: app\n"
                      "  - {name: fallback, upstream: app}\n");
    CHECK_PICK(g, "api.test", "/v1/x", "POST", "all-three");
    CHECK_PICK(g, "web.test", "/v1/x", "POST", "fallback");
    CHECK_PICK(g, "api.test", "/v2/x", "POST", "fallback");
    CHECK_PICK(g, "api.test", "/v1/x", "GET", "fallback");
    if (g)
        hx_gen_unref(g);
}

HX_TEST(nothing_matches_is_null)
{
    hx_gen *g = build("  - {name: a, match: {path: /a}, upstream: app}\n");
    if (g) {
        HX_CHECK(hx_route_match(g, "", 0, "/b", 2, "GET", 3) == NULL);
        /* lengths are honoured: "/ab" cut to "/a" matches */
        HX_CHECK(hx_route_match(g, "", 0, "/ab", 2, "GET", 3) == &g->routes[0]);
        hx_gen_unref(g);
    }
}

/* ---- normalise, then match: what the request layer does ---- */

static const char *pick_raw(const hx_gen *g, const char *raw_path, const char *method)
{
    static char norm[256];
    long n = hx_path_normalize(raw_path, strlen(raw_path), norm);
    if (n < 0)
        return "400";
    return pick(g, "", norm, method);
}

HX_TEST(a_guarded_prefix_cannot_be_bypassed_by_spelling)
{
    hx_gen *g = build("  - {name: admin, match: {prefix: /admin/}, upstream: app}\n"
                      "  - {name: public, upstream: app}\n");
    static const char *const bypasses[] = {
        "/admin/x",           "//admin/x",
        "/./admin/x",         "/public/../admin/x",
        "/%61dmin/x",         "/%2e%2e/admin/x",
        "/a/b/../../admin/x", "/admin//x",
        "/../../admin/x",     "/public/%2E%2E/admin/x",
    };
    for (size_t i = 0; g && i < sizeof(bypasses) / sizeof(bypasses[0]); i++) {
        const char *got = pick_raw(g, bypasses[i], "GET");
        if (strcmp(got, "admin") != 0)
            HX_FAILED_("%s reached route %s, expected admin", bypasses[i], got);
    }
    /* an encoded slash is not a separator: "admin%2Fx" is one segment */
    if (g) {
        HX_CHECK_STR_EQ(pick_raw(g, "/admin%2Fx", "GET"), "public");
        HX_CHECK_STR_EQ(pick_raw(g, "/admin/%00", "GET"), "400");
        hx_gen_unref(g);
    }
}

int main(void)
{
    hx_runtime_wire(); /* the host API the loaded modules call, as heliosd wires it */
    HX_RUN(normalize_keeps_clean_paths);
    HX_RUN(normalize_merges_repeated_slashes);
    HX_RUN(normalize_removes_dot_segments);
    HX_RUN(normalize_never_climbs_above_the_root);
    HX_RUN(normalize_decodes_percent_escapes_before_dot_segments);
    HX_RUN(normalize_keeps_an_encoded_slash_inside_its_segment);
    HX_RUN(normalize_refuses_malformed_paths);
    HX_RUN(normalize_reads_only_the_given_length);
    HX_RUN(exact_path_matches_only_itself);
    HX_RUN(prefix_is_a_plain_string_prefix);
    HX_RUN(route_without_match_takes_everything);
    HX_RUN(first_matching_route_wins_in_file_order);
    HX_RUN(exact_host_is_case_insensitive_and_whole);
    HX_RUN(wildcard_host_matches_subdomains_but_not_the_domain);
    HX_RUN(methods_are_matched_exactly);
    HX_RUN(every_given_key_must_match);
    HX_RUN(nothing_matches_is_null);
    HX_RUN(a_guarded_prefix_cannot_be_bypassed_by_spelling);
    hx_modreg_free(&reg);
    return hx_test_summary();
}
