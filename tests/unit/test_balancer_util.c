/*
 * test_balancer_util.c - the SDK's helios/util/balancer.h, driven through
 * the core's real host API (hx_host_api) over real backend lists and a real
 * request's tried bitmap, the way a balancer's pick() sees them.
 *
 * The scan is what every shipped balancer's pick() ends in, so the property
 * that matters most is tested exhaustively on small lists: the scan never
 * answers with a tried or unusable backend while a candidate exists, and
 * answers -1 exactly when none does.
 */
#define _POSIX_C_SOURCE 200809L

#include "config/config.h"
#include "config/module_loader.h"
#include "http/request.h"
#include "runtime/runtime.h"

#include "hx_test.h"

#include <helios/util/balancer.h>

#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXB 12

static const helios_host_api *api = &hx_host_api;

/* ---- a backend list and a request ---- */

static hx_backend store[MAXB];

typedef struct fixture {
    hx_backends bs;
    hx_backend *v[MAXB];
    uint8_t tried[MAXB];
    hx_req req; /* only its tried bitmap is read; last: it ends in a flexible array */
} fixture;

/* N usable backends, nothing tried. */
static void fixture_init(fixture *f, size_t n)
{
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < MAXB; i++) {
        hx_backend *b = &store[i];
        b->index = (unsigned)i;
        atomic_store(&b->weight, 1);
        atomic_store(&b->healthy, 1);
        atomic_store(&b->draining, 0);
        atomic_store(&b->breaker, HELIOS_BREAKER_CLOSED);
        f->v[i] = b;
    }
    f->bs.n = n;
    f->bs.v = f->v;
    f->req.tried = f->tried;
    f->req.tried_n = n;
}

static const helios_backends *B(const fixture *f)
{
    return (const helios_backends *)&f->bs;
}

static const helios_tried *T(const fixture *f)
{
    return (const helios_tried *)&f->req;
}

static int scan(const fixture *f, size_t start)
{
    return helios_balancer_scan(api, B(f), f->bs.n, T(f), start);
}

/* ---- the scan ---- */

HX_TEST(scan_starts_at_the_start_index_and_wraps_around)
{
    fixture f;
    fixture_init(&f, 5);
    for (size_t s = 0; s < 5; s++)
        HX_CHECK_INT_EQ(scan(&f, s), (int)s);
    HX_CHECK_INT_EQ(scan(&f, 7), 2); /* a position kept from a longer list: modulo n */
    atomic_store(&store[3].healthy, 0);
    atomic_store(&store[4].healthy, 0);
    HX_CHECK_INT_EQ(scan(&f, 3), 0); /* 3 and 4 unusable: wraps to 0 */
    f.tried[0] = 1;
    HX_CHECK_INT_EQ(scan(&f, 3), 1); /* ... past a tried 0 */
}

HX_TEST(scan_skips_every_kind_of_unusable_backend)
{
    fixture f;
    fixture_init(&f, 5);
    atomic_store(&store[0].healthy, 0);                   /* a health module said so */
    atomic_store(&store[1].draining, 1);                  /* drained */
    atomic_store(&store[2].breaker, HELIOS_BREAKER_OPEN); /* breaker open */
    atomic_store(&store[3].breaker, HELIOS_BREAKER_HALF_OPEN);
    atomic_store(&store[3].breaker_max_trials, 1);
    atomic_store(&store[3].trials, 1); /* half-open, its trial slot taken */
    HX_CHECK_INT_EQ(scan(&f, 0), 4);
    atomic_store(&store[3].trials, 0); /* a free trial slot: usable */
    HX_CHECK_INT_EQ(scan(&f, 0), 3);
}

HX_TEST(scan_skips_tried_backends)
{
    fixture f;
    fixture_init(&f, 4);
    f.tried[1] = f.tried[2] = 1;
    HX_CHECK_INT_EQ(scan(&f, 1), 3);
    f.tried[3] = 1;
    HX_CHECK_INT_EQ(scan(&f, 1), 0);
    /* a NULL tried set has nothing in it (a first attempt, as api->tried_has says) */
    HX_CHECK_INT_EQ(helios_balancer_scan(api, B(&f), 4, NULL, 1), 1);
}

HX_TEST(scan_returns_minus_one_when_every_usable_backend_was_tried)
{
    fixture f;
    fixture_init(&f, 4);
    atomic_store(&store[2].draining, 1);
    f.tried[0] = f.tried[1] = f.tried[3] = 1; /* every usable one */
    for (size_t s = 0; s < 4; s++)
        HX_CHECK_INT_EQ(scan(&f, s), -1);
    HX_CHECK_UINT_EQ(helios_balancer_count(api, B(&f), 4, T(&f)), 0);
    HX_CHECK_INT_EQ(helios_balancer_nth(api, B(&f), 4, T(&f), 0), -1);
    fixture_init(&f, 0); /* an empty list */
    HX_CHECK_INT_EQ(scan(&f, 0), -1);
    HX_CHECK_INT_EQ(scan(&f, 3), -1);
}

/*
 * Every combination of usable/unusable and tried/untried over lists of 1 to
 * 6 backends, from every start: the scan answers with the first candidate
 * in walk order (computed here from the backends' fields, not through the
 * API), so never with a tried backend while an untried usable one exists;
 * -1 exactly when there is none. scan_next, count and nth agree with it.
 */
HX_TEST(scan_never_returns_a_tried_backend_while_an_untried_usable_one_exists)
{
    fixture f;
    unsigned cases = 0;
    for (size_t n = 1; n <= 6; n++) {
        for (unsigned mask = 0; mask < (1u << (2 * n)); mask++) {
            fixture_init(&f, n);
            int cand[MAXB], ncand = 0;
            for (size_t i = 0; i < n; i++) {
                unsigned bits = mask >> (2 * i);
                atomic_store(&store[i].healthy, (int)(bits & 1u));
                f.tried[i] = (uint8_t)((bits >> 1) & 1u);
                if ((bits & 1u) && !f.tried[i])
                    cand[ncand++] = (int)i;
            }
            /* starts of n and more: a position kept from a longer list */
            for (size_t start = 0; start < 2 * n; start++) {
                cases++;
                int want = -1;
                for (size_t k = 0; k < n && want < 0; k++) {
                    size_t i = (start + k) % n;
                    if (atomic_load(&store[i].healthy) && !f.tried[i])
                        want = (int)i;
                }
                int got = scan(&f, start);
                if (got != want) {
                    HX_FAILED_("n=%zu mask=%#x start=%zu: scan gave %d, want %d", n, mask, start,
                               got, want);
                    return;
                }
                /* the walk from START visits each candidate once, then -1 */
                int seen = 0;
                for (int i = got; i >= 0;
                     i = helios_balancer_scan_next(api, B(&f), n, T(&f), start, i)) {
                    if (!helios_balancer_candidate(api, B(&f), T(&f), (size_t)i) || seen == ncand) {
                        HX_FAILED_("n=%zu mask=%#x start=%zu: the walk gave %d", n, mask, start, i);
                        return;
                    }
                    seen++;
                }
                HX_CHECK_INT_EQ(seen, ncand);
            }
            HX_CHECK_UINT_EQ(helios_balancer_count(api, B(&f), n, T(&f)), (size_t)ncand);
            for (int r = 0; r <= ncand; r++)
                HX_CHECK_INT_EQ(helios_balancer_nth(api, B(&f), n, T(&f), (size_t)r),
                                r < ncand ? cand[r] : -1);
        }
    }
    printf("  %u lists x starts checked\n", cases);
}

HX_TEST(scan_next_walks_in_order_from_the_start)
{
    fixture f;
    fixture_init(&f, 6);
    f.tried[1] = 1;
    atomic_store(&store[4].draining, 1);
    int order[6], k = 0;
    for (int i = scan(&f, 3); i >= 0 && k < 6;
         i = helios_balancer_scan_next(api, B(&f), 6, T(&f), 3, i))
        order[k++] = i;
    HX_CHECK_INT_EQ(k, 4);
    static const int want[4] = {3, 5, 0, 2};
    for (int i = 0; i < 4 && i < k; i++)
        HX_CHECK_INT_EQ(order[i], want[i]);
}

HX_TEST(size_is_the_backend_count)
{
    fixture f;
    fixture_init(&f, 7);
    HX_CHECK_UINT_EQ(helios_balancer_size(api, B(&f)), 7);
    fixture_init(&f, 0);
    HX_CHECK_UINT_EQ(helios_balancer_size(api, B(&f)), 0);
}

/* ---- configuration ---- */

/* Runs helios_balancer_config_none on the `config:` of YAML; returns its
 * answer and the first located error (or "") in ERR. */
static int config_none(const char *yaml, char *err, size_t errlen)
{
    hx_conf_tree *t = hx_conf_tree_new();
    int rc = -2;
    err[0] = '\0';
    if (hx_conf_load_string(t, "balancer.yaml", yaml, strlen(yaml)) == 0) {
        void *cfg = (void *)&rc; /* must stay untouched */
        const hx_conf_node *node = hx_conf_get(hx_conf_root(t), "config");
        rc = helios_balancer_config_none(api, (const helios_conf *)node, &cfg);
        if (cfg != (void *)&rc)
            HX_FAILED_("%s: config_none wrote *cfg", yaml);
        if (hx_conf_error_count(t) > 0)
            snprintf(err, errlen, "%s", hx_conf_error_at(t, 0));
        if ((rc != 0) != (hx_conf_error_count(t) > 0))
            HX_FAILED_("%s: returned %d with %zu errors", yaml, rc, hx_conf_error_count(t));
    }
    hx_conf_tree_free(t);
    return rc;
}

HX_TEST(config_none_accepts_nothing_and_refuses_any_key_where_it_is)
{
    char err[512];
    HX_CHECK_INT_EQ(config_none("module: x\n", err, sizeof(err)), 0); /* no config: */
    HX_CHECK_INT_EQ(config_none("module: x\nconfig:\n", err, sizeof(err)), 0);
    HX_CHECK_INT_EQ(config_none("module: x\nconfig: {}\n", err, sizeof(err)), 0);
    HX_CHECK_INT_EQ(config_none("module: x\nconfig: {key: client}\n", err, sizeof(err)), -1);
    HX_CHECK_STR_CONTAINS(err, "balancer.yaml:2:");
    HX_CHECK_STR_CONTAINS(err, "key");
    printf("  refused: %s\n", err);
    HX_CHECK_INT_EQ(config_none("module: x\nconfig: 5\n", err, sizeof(err)), -1);
}

/* ---- per-worker state ---- */

typedef struct lines_state {
    alignas(HELIOS_BALANCER_CACHE_LINE) size_t next;
    unsigned char pad[70]; /* spills into a second line */
} lines_state;

HX_TEST(worker_state_is_zeroed_and_on_its_own_cache_lines)
{
    for (int k = 0; k < 8; k++) {
        lines_state *st = helios_balancer_wstate_new(api, "test", sizeof(lines_state));
        HX_CHECK(st != NULL);
        if (st == NULL)
            return;
        HX_CHECK_UINT_EQ((uintptr_t)st % HELIOS_BALANCER_CACHE_LINE, 0);
        HX_CHECK_UINT_EQ(st->next, 0);
        for (size_t i = 0; i < sizeof(st->pad); i++)
            HX_CHECK_UINT_EQ(st->pad[i], 0);
        /* the whole rounded-up size is ours (ASan would catch an overrun) */
        memset(st, 0xab, 2 * HELIOS_BALANCER_CACHE_LINE);
        helios_balancer_worker_fini(NULL, NULL, st);
    }
    unsigned char *one = helios_balancer_alloc_lines(0); /* still a whole line */
    HX_CHECK(one != NULL);
    if (one != NULL)
        memset(one, 1, HELIOS_BALANCER_CACHE_LINE);
    free(one);
}

HX_TEST(worker_state_that_cannot_be_allocated_is_null)
{
    HX_CHECK(helios_balancer_alloc_lines(SIZE_MAX) == NULL);
    HX_CHECK(helios_balancer_alloc_lines(SIZE_MAX - 10) == NULL);
#ifndef __SANITIZE_ADDRESS__ /* ASan aborts on an impossible size instead of failing */
    fprintf(stderr, "  (an out-of-memory error for module \"test\" is expected next)\n");
    HX_CHECK(helios_balancer_wstate_new(api, "test", (size_t)1 << 62) == NULL);
#endif
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    HX_RUN(scan_starts_at_the_start_index_and_wraps_around);
    HX_RUN(scan_skips_every_kind_of_unusable_backend);
    HX_RUN(scan_skips_tried_backends);
    HX_RUN(scan_returns_minus_one_when_every_usable_backend_was_tried);
    HX_RUN(scan_never_returns_a_tried_backend_while_an_untried_usable_one_exists);
    HX_RUN(scan_next_walks_in_order_from_the_start);
    HX_RUN(size_is_the_backend_count);
    HX_RUN(config_none_accepts_nothing_and_refuses_any_key_where_it_is);
    HX_RUN(worker_state_is_zeroed_and_on_its_own_cache_lines);
    HX_RUN(worker_state_that_cannot_be_allocated_is_null);
    return hx_test_summary();
}
