/*
 * hx_test.h - a minimal unit test harness, one header, no dependencies.
 *
 *     HX_TEST(parses_port) { HX_CHECK(parse("x:80") == 0); }
 *     int main(void) { HX_RUN(parses_port); return hx_test_summary(); }
 *
 * A test passes when every check in it holds; a failed check prints its file,
 * line and expression and the test goes on, so one run shows every failure.
 * hx_test_summary prints "N passed, N failed" (tests, not checks) alone on a
 * line and returns the exit status: nonzero if any test failed.
 */
#ifndef HX_TEST_H
#define HX_TEST_H

#include <stdio.h>
#include <string.h>

static const char *hx_test_name __attribute__((unused));
static int hx_test_checks_failed __attribute__((unused)); /* in the current test */
static int hx_tests_passed __attribute__((unused));
static int hx_tests_failed __attribute__((unused));

#define HX_TEST(name) static void name(void)

#define HX_RUN(name)                                                                               \
    do {                                                                                           \
        hx_test_name = #name;                                                                      \
        hx_test_checks_failed = 0;                                                                 \
        name();                                                                                    \
        if (hx_test_checks_failed) {                                                               \
            hx_tests_failed++;                                                                     \
            fprintf(stderr, "FAIL %s\n", #name);                                                   \
        } else {                                                                                   \
            hx_tests_passed++;                                                                     \
        }                                                                                          \
    } while (0)

#define HX_FAILED_(...)                                                                            \
    do {                                                                                           \
        hx_test_checks_failed++;                                                                   \
        fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, hx_test_name);                          \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
    } while (0)

#define HX_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond))                                                                               \
            HX_FAILED_("check failed: %s", #cond);                                                 \
    } while (0)

#define HX_CHECK_INT_EQ(actual, expected)                                                          \
    do {                                                                                           \
        long long hx_a_ = (long long)(actual), hx_e_ = (long long)(expected);                      \
        if (hx_a_ != hx_e_)                                                                        \
            HX_FAILED_("%s == %s: got %lld, expected %lld", #actual, #expected, hx_a_, hx_e_);     \
    } while (0)

#define HX_CHECK_UINT_EQ(actual, expected)                                                         \
    do {                                                                                           \
        unsigned long long hx_a_ = (unsigned long long)(actual);                                   \
        unsigned long long hx_e_ = (unsigned long long)(expected);                                 \
        if (hx_a_ != hx_e_)                                                                        \
            HX_FAILED_("%s == %s: got %llu, expected %llu", #actual, #expected, hx_a_, hx_e_);     \
    } while (0)

#define HX_CHECK_STR_EQ(actual, expected)                                                          \
    do {                                                                                           \
        const char *hx_a_ = (actual), *hx_e_ = (expected);                                         \
        if (hx_a_ == NULL || hx_e_ == NULL || strcmp(hx_a_, hx_e_) != 0)                           \
            HX_FAILED_("%s == %s: got \"%s\", expected \"%s\"", #actual, #expected,                \
                       hx_a_ ? hx_a_ : "(null)", hx_e_ ? hx_e_ : "(null)");                        \
    } while (0)

#define HX_CHECK_STR_CONTAINS(haystack, needle)                                                    \
    do {                                                                                           \
        const char *hx_h_ = (haystack), *hx_n_ = (needle);                                         \
        if (hx_h_ == NULL || strstr(hx_h_, hx_n_) == NULL)                                         \
            HX_FAILED_("%s contains %s: \"%s\" does not contain \"%s\"", #haystack, #needle,       \
                       hx_h_ ? hx_h_ : "(null)", hx_n_);                                           \
    } while (0)

static int hx_test_summary(void) __attribute__((unused));
static int hx_test_summary(void)
{
    printf("%d passed, %d failed\n", hx_tests_passed, hx_tests_failed);
    fflush(stdout);
    return hx_tests_failed != 0;
}

#endif
