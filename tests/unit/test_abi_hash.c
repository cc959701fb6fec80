/*
 * test_abi_hash.c - the public plugin ABI headers cannot change without an
 * ABI version bump, and the descriptor prefix the loader reads before any
 * version check keeps its layout.
 *
 * The hash covers every byte of plugins-sdk/include/helios.h and
 * plugins-sdk/include/helios/ *.h (comments too: a header is documentation
 * of the ABI, and a reworded contract deserves a minor bump as much as an
 * appended field does). A change on purpose means: bump the version in
 * helios/types.h, then append the row this test prints to abi_history.
 */
#define _POSIX_C_SOURCE 200809L

#include <helios.h>

#include "hx_test.h"
#include "config/module_loader.h"
#include "runtime/runtime.h"

#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One row per released ABI version, oldest first; the last row is the ABI
 * the headers in this tree must describe. */
static const struct {
    unsigned major, minor;
    uint64_t hash;
} abi_history[] = {
    {1, 0, 0xb780c993dea05363u},
    {1, 1, 0x7b3b7d6a5a43a783u},
    /* 1.2: module commands; every host API entry documented (thread,
     * ownership, lifetime, since); the balancer pick contract */
    {1, 2, 0xebbe2388338574f1u},
    /* 1.3: module contracts (req_body_length, req_has_body,
     * req_body_hold, request references; on_attempt_end with
     * helios_attempt and the per-attempt slot; when the upstream hooks
     * fire); streamed bodies (respond_begin, respond_body, respond_abort,
     * req_body_pause, subreq_pause); stats (helios_req_stats gains
     * upstream TTFB, backend health and breaker, connection id, TLS
     * version and cipher; ctl_upstream_panic) */
    {1, 3, 0x80bc72086d696550u},
};
#define ABI_HISTORY_LEN (sizeof(abi_history) / sizeof(abi_history[0]))

/* ---- hashing ---- */

#define FNV64_OFFSET 0xcbf29ce484222325u
#define FNV64_PRIME 0x00000100000001b3u

static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= FNV64_PRIME;
    }
    return h;
}

/*
 * Hashes the name (relative to include/, with its NUL, so a rename or a
 * moved declaration counts) then the content with CRLF read as LF, so a
 * checkout with Windows line endings hashes the same. Returns 0, or -1 when
 * the file cannot be read.
 */
static int hash_file(uint64_t *h, const char *incdir, const char *relname)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", incdir, relname);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        HX_FAILED_("cannot open %s", path);
        return -1;
    }
    *h = fnv1a(*h, relname, strlen(relname) + 1);
    int c, pending_cr = 0;
    while ((c = fgetc(f)) != EOF) {
        if (pending_cr && c != '\n')
            *h = fnv1a(*h, "\r", 1);
        pending_cr = c == '\r';
        if (!pending_cr) {
            unsigned char b = (unsigned char)c;
            *h = fnv1a(*h, &b, 1);
        }
    }
    if (pending_cr)
        *h = fnv1a(*h, "\r", 1);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        HX_FAILED_("read error on %s", path);
        return -1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* helios.h, then helios/ *.h in byte order of their names (readdir order
 * depends on the file system). Returns 0 and the hash, or -1. */
static int hash_public_headers(uint64_t *out, size_t *nfiles)
{
    const char *incdir = HELIOS_SOURCE_DIR "/plugins-sdk/include";
    char subdir[4096];
    snprintf(subdir, sizeof(subdir), "%s/helios", incdir);

    char *names[64];
    size_t n = 0;
    DIR *d = opendir(subdir);
    if (d == NULL) {
        HX_FAILED_("cannot open %s", subdir);
        return -1;
    }
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 3 || strcmp(e->d_name + len - 2, ".h") != 0)
            continue;
        if (n == sizeof(names) / sizeof(names[0])) {
            HX_FAILED_("more than %zu headers in %s", n, subdir);
            rc = -1;
            break;
        }
        names[n] = malloc(len + sizeof("helios/"));
        if (names[n] == NULL) {
            HX_FAILED_("out of memory");
            rc = -1;
            break;
        }
        snprintf(names[n], len + sizeof("helios/"), "helios/%s", e->d_name);
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), cmp_str);

    uint64_t h = FNV64_OFFSET;
    if (rc == 0)
        rc = hash_file(&h, incdir, "helios.h");
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            rc = hash_file(&h, incdir, names[i]);
        free(names[i]);
    }
    *out = h;
    *nfiles = n + 1;
    return rc;
}

/* ---- tests ---- */

HX_TEST(abi_version_in_header_is_the_newest_recorded)
{
    HX_CHECK_UINT_EQ(HELIOS_ABI_MAJOR, abi_history[ABI_HISTORY_LEN - 1].major);
    HX_CHECK_UINT_EQ(HELIOS_ABI_MINOR, abi_history[ABI_HISTORY_LEN - 1].minor);
}

HX_TEST(abi_history_is_in_increasing_version_order)
{
    for (size_t i = 1; i < ABI_HISTORY_LEN; i++) {
        unsigned long a = abi_history[i - 1].major * 1000ul + abi_history[i - 1].minor;
        unsigned long b = abi_history[i].major * 1000ul + abi_history[i].minor;
        if (b <= a)
            HX_FAILED_("abi_history row %zu (%u.%u) does not come after %u.%u", i,
                       abi_history[i].major, abi_history[i].minor, abi_history[i - 1].major,
                       abi_history[i - 1].minor);
    }
}

HX_TEST(public_headers_match_the_hash_recorded_for_this_abi)
{
    uint64_t h;
    size_t nfiles;
    if (hash_public_headers(&h, &nfiles) != 0)
        return;
    /* helios.h, types.h, module.h, host.h at least: fewer means the
     * directory walk went wrong, not that the ABI shrank. */
    HX_CHECK(nfiles >= 4);
    if (h != abi_history[ABI_HISTORY_LEN - 1].hash)
        HX_FAILED_("public ABI headers changed without an ABI version bump: bump "
                   "HELIOS_ABI_MINOR (appended) or HELIOS_ABI_MAJOR (anything else) in "
                   "helios/types.h and record the new hash here: 0x%016llx "
                   "(row {%d, %d, 0x%016llxu} of abi_history in %s)",
                   (unsigned long long)h, HELIOS_ABI_MAJOR, HELIOS_ABI_MINOR, (unsigned long long)h,
                   __FILE__);
}

/*
 * The loader reads magic and the ABI version before it knows which ABI the
 * module was built for, so their offsets hold across majors; struct_size,
 * name, version and build_sig are read once the major matched, so they hold
 * within one. Later fields may only be appended within a major.
 */
HX_TEST(module_descriptor_prefix_has_a_fixed_layout)
{
    const size_t ptr = sizeof(void *);
    HX_CHECK_UINT_EQ(offsetof(helios_module, magic), 0);
    HX_CHECK_UINT_EQ(offsetof(helios_module, abi_major), 4);
    HX_CHECK_UINT_EQ(offsetof(helios_module, abi_minor), 6);
    HX_CHECK_UINT_EQ(offsetof(helios_module, struct_size), 8);
    /* The first pointer sits right after the 12 bytes above, aligned. */
    size_t name_off =
        (12 + _Alignof(const char *) - 1) / _Alignof(const char *) * _Alignof(const char *);
    HX_CHECK_UINT_EQ(offsetof(helios_module, name), name_off);
    HX_CHECK_UINT_EQ(offsetof(helios_module, version), name_off + ptr);
    HX_CHECK_UINT_EQ(offsetof(helios_module, build_sig), name_off + 2 * ptr);
#if UINTPTR_MAX == 0xffffffffffffffffu
    HX_CHECK_UINT_EQ(offsetof(helios_module, name), 16);
    HX_CHECK_UINT_EQ(offsetof(helios_module, build_sig), 32);
#endif
    HX_CHECK_UINT_EQ(sizeof(((helios_module *)0)->magic), 4);
    HX_CHECK_UINT_EQ(sizeof(((helios_module *)0)->abi_major), 2);
    HX_CHECK_UINT_EQ(sizeof(((helios_module *)0)->abi_minor), 2);
    HX_CHECK_UINT_EQ(sizeof(((helios_module *)0)->struct_size), 4);
    HX_CHECK_UINT_EQ(HELIOS_MODULE_MAGIC, 0x484c4f53u);
}

/* Every table a module or the core may append to starts with its size, so
 * the other side can tell what it covers. */
HX_TEST(appendable_tables_start_with_their_size)
{
    HX_CHECK_UINT_EQ(offsetof(helios_host_api, size), 0);
    HX_CHECK_UINT_EQ(sizeof(((helios_host_api *)0)->size), 4);
    HX_CHECK_UINT_EQ(offsetof(helios_host_api, abi_major), 4);
    HX_CHECK_UINT_EQ(offsetof(helios_host_api, abi_minor), 6);
    HX_CHECK_UINT_EQ(offsetof(helios_ctx, size), 0);
    HX_CHECK_UINT_EQ(offsetof(helios_filter_hooks, size), 0);
    HX_CHECK_UINT_EQ(offsetof(helios_handler_hooks, size), 0);
    HX_CHECK_UINT_EQ(offsetof(helios_balancer_hooks, size), 0);
    HX_CHECK_UINT_EQ(offsetof(helios_service_hooks, size), 0);
    HX_CHECK_UINT_EQ(offsetof(helios_health_hooks, size), 0);
}

/* The table the core hands to modules says what the header says. */
HX_TEST(core_host_api_reports_the_header_abi)
{
    HX_CHECK_UINT_EQ(hx_host_api.size, sizeof(helios_host_api));
    HX_CHECK_UINT_EQ(hx_host_api.abi_major, HELIOS_ABI_MAJOR);
    HX_CHECK_UINT_EQ(hx_host_api.abi_minor, HELIOS_ABI_MINOR);
}

int main(void)
{
    HX_RUN(abi_version_in_header_is_the_newest_recorded);
    HX_RUN(abi_history_is_in_increasing_version_order);
    HX_RUN(public_headers_match_the_hash_recorded_for_this_abi);
    HX_RUN(module_descriptor_prefix_has_a_fixed_layout);
    HX_RUN(appendable_tables_start_with_their_size);
    HX_RUN(core_host_api_reports_the_header_abi);
    return hx_test_summary();
}
