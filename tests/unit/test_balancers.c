/*
 * test_balancers.c - the load-balancing modules' pick functions, loaded from
 * the build's module directory with the real loader and driven the way
 * core/proxy/upstream.c drives them: a helios_ctx per pick, the request (an
 * hx_req) as the tried set, the immutable backend list, and
 * backends_changed before a replaced list is used.
 *
 * The core calls backends_changed only for runtime changes (control.c), not
 * for the list a generation starts with, and a weight change is a plain
 * atomic store with no call at all; these tests do the same, so a module
 * that relies on more than the core gives fails here.
 *
 * Measured numbers (remapping fractions) are printed on stdout: they are
 * part of the acceptance.
 */
#define _POSIX_C_SOURCE 200809L

#include "config/config.h"
#include "http/conn.h"
#include "config/module_loader.h"
#include "runtime/runtime.h"
#include "event/worker.h"

#include "hx_test.h"

#include <arpa/inet.h>
#include <ev.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXB 64        /* backends a test list can hold */
#define REQ_ARENA 4096 /* first arena block of a test request */

/* ---- strategies under test ---- */

typedef struct strategy {
    const char *module;
    int hash; /* 1: hashes a key (sticky) */
} strategy;

static const strategy strategies[] = {
    {"round_robin", 0},
    {"weighted_round_robin", 0},
    {"least_connections", 0},
    {"power_of_two", 0},
    {"ip_hash", 1},
    {"ip_hash_consistent", 1},
    {"maglev", 1},
};
#define NSTRATEGIES (sizeof(strategies) / sizeof(strategies[0]))

static const char *const hash_modules[] = {"ip_hash", "ip_hash_consistent", "maglev"};
#define NHASH (sizeof(hash_modules) / sizeof(hash_modules[0]))

/* ---- the process around the modules: registry, one worker ---- */

static hx_modreg reg;
static hx_worker worker; /* id 0 */

static void process_init(void)
{
    worker.id = 0;
    worker.loop = ev_loop_new(EVFLAG_AUTO); /* api->now_ms reads it */
    hx_srv.workers = &worker;
    hx_srv.nworkers = 1; /* api->worker_count */
}

/* ---- one balancer instance ---- */

typedef struct bal {
    const char *module;
    hx_conf_tree *tree;
    hx_instance *inst;
    void *ws;
} bal;

static void print_errors(const hx_conf_tree *t)
{
    for (size_t i = 0; i < hx_conf_error_count(t); i++)
        fprintf(stderr, "    %s\n", hx_conf_error_at(t, i));
}

/* Creates an instance of MODULE with CONFIG (a YAML flow map, or NULL) the
 * way an upstream's `balancer:` does, and its worker state for worker 0.
 * A module that is not built or refuses is a failed check. */
static int bal_open(bal *b, const char *module, const char *config)
{
    char yaml[512];
    snprintf(yaml, sizeof(yaml), "module: %s\n%s%s\n", module, config ? "config: " : "",
             config ? config : "");
    memset(b, 0, sizeof(*b));
    b->module = module;
    b->tree = hx_conf_tree_new();
    if (hx_conf_load_string(b->tree, "balancer.yaml", yaml, strlen(yaml)) != 0) {
        HX_FAILED_("%s: test YAML did not load", module);
        print_errors(b->tree);
        return -1;
    }
    b->inst =
        hx_instance_new(&reg, HELIOS_BUILD_MODULE_DIR, hx_conf_root(b->tree), HX_KIND_BALANCER, 0);
    if (b->inst == NULL) {
        HX_FAILED_("%s (config %s): no instance (module not built in %s, or refused)", module,
                   config ? config : "none", HELIOS_BUILD_MODULE_DIR);
        print_errors(b->tree);
        return -1;
    }
    const helios_module *d = b->inst->mod->desc;
    if (d->worker_init && d->worker_init(b->inst->cfg, (helios_worker *)&worker, &b->ws) != 0) {
        HX_FAILED_("%s: worker_init failed", module);
        hx_instance_free(b->inst);
        b->inst = NULL;
        return -1;
    }
    return 0;
}

static void bal_close(bal *b)
{
    if (b->inst) {
        const helios_module *d = b->inst->mod->desc;
        if (d->worker_fini)
            d->worker_fini(b->inst->cfg, (helios_worker *)&worker, b->ws);
        hx_instance_free(b->inst);
    }
    hx_conf_tree_free(b->tree);
    memset(b, 0, sizeof(*b));
}

/* 1 when MODULE refuses CONFIG with at least one located error. */
static int bal_refuses(const char *module, const char *config)
{
    char yaml[512];
    snprintf(yaml, sizeof(yaml), "module: %s\nconfig: %s\n", module, config);
    hx_conf_tree *t = hx_conf_tree_new();
    int refused = 0;
    if (hx_conf_load_string(t, "balancer.yaml", yaml, strlen(yaml)) == 0) {
        hx_instance *inst =
            hx_instance_new(&reg, HELIOS_BUILD_MODULE_DIR, hx_conf_root(t), HX_KIND_BALANCER, 0);
        refused = inst == NULL && hx_conf_error_count(t) > 0;
        if (refused)
            printf("  %s refuses %s: %s\n", module, config, hx_conf_error_at(t, 0));
        hx_instance_free(inst);
    }
    hx_conf_tree_free(t);
    return refused;
}

/* ---- backends ---- */

static hx_backend store[MAXB]; /* every backend any list points to */

static void store_init(void)
{
    for (unsigned i = 0; i < MAXB; i++) {
        hx_backend *b = &store[i];
        char name[16], addr[32], err[128];
        snprintf(name, sizeof(name), "b%u", i);
        snprintf(addr, sizeof(addr), "127.0.0.1:%u", 9000 + i);
        b->name = strdup(name);
        b->address = strdup(addr);
        if (hx_addr_parse(addr, 0, &b->addr, err, sizeof(err)) != 0)
            fprintf(stderr, "test setup: %s: %s\n", addr, err);
        b->index = i;
        atomic_init(&b->weight, 1);
        atomic_init(&b->inflight, 0);
        atomic_init(&b->healthy, 1);
        atomic_init(&b->draining, 0);
        atomic_init(&b->requests, 0);
        atomic_init(&b->failures, 0);
        atomic_init(&b->removed, 0);
    }
}

static void store_reset(void)
{
    for (unsigned i = 0; i < MAXB; i++) {
        atomic_store(&store[i].weight, 1);
        atomic_store(&store[i].inflight, 0);
        atomic_store(&store[i].healthy, 1);
        atomic_store(&store[i].draining, 0);
    }
}

static void store_free(void)
{
    for (unsigned i = 0; i < MAXB; i++) {
        free(store[i].name);
        free(store[i].address);
    }
}

/* A backend list: what upstream->backends points to. */
typedef struct blist {
    hx_backends bs;
    hx_backend *v[MAXB];
} blist;

/* The list store[0..N) in order. */
static void blist_first(blist *l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        l->v[i] = &store[i];
    l->bs.n = n;
    l->bs.v = l->v;
}

/* L without the backend at position IDX (what control.c publishes). */
static void blist_without(blist *dst, const blist *src, size_t idx)
{
    size_t k = 0;
    for (size_t i = 0; i < src->bs.n; i++)
        if (i != idx)
            dst->v[k++] = src->v[i];
    dst->bs.n = k;
    dst->bs.v = dst->v;
}

/* Tells B's instance about a replaced list, as control.c's publish does. */
static int bal_changed(bal *b, const blist *l)
{
    const helios_balancer_hooks *h = b->inst->mod->balancer;
    if (h->backends_changed == NULL)
        return 0;
    int rc = h->backends_changed(b->inst->cfg, (const helios_backends *)&l->bs);
    if (rc != 0)
        HX_FAILED_("%s: backends_changed refused a list of %zu", b->module, l->bs.n);
    return rc;
}

/* ---- a request ---- */

static hx_req *req_new(void)
{
    hx_req *r = calloc(1, sizeof(hx_req) + sizeof(hx_arena_block) + REQ_ARENA);
    hx_conn *c = calloc(1, sizeof(hx_conn));
    if (r == NULL || c == NULL) {
        fprintf(stderr, "test setup: out of memory\n");
        exit(2);
    }
    hx_arena_init(&r->arena, r->first, REQ_ARENA);
    r->conn = c;
    r->w = &worker;
    return r;
}

static void req_free(hx_req *r)
{
    hx_arena_reset(&r->arena);
    free(r->conn);
    free(r);
}

static void req_set_client(hx_req *r, const struct sockaddr *sa, socklen_t len)
{
    memset(&r->client, 0, sizeof(r->client));
    memcpy(&r->client, sa, len);
    memcpy(&r->conn->peer, sa, len);
}

static void req_client_v4(hx_req *r, uint32_t ip)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(40000)};
    sin.sin_addr.s_addr = htonl(ip);
    req_set_client(r, (struct sockaddr *)&sin, sizeof(sin));
}

static void req_client_v6(hx_req *r, uint32_t low)
{
    struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_port = htons(40000)};
    inet_pton(AF_INET6, "2001:db8::", &s6.sin6_addr);
    s6.sin6_addr.s6_addr[8] = (uint8_t)(low >> 24); /* vary the /64 too */
    s6.sin6_addr.s6_addr[12] = (uint8_t)(low >> 24);
    s6.sin6_addr.s6_addr[13] = (uint8_t)(low >> 16);
    s6.sin6_addr.s6_addr[14] = (uint8_t)(low >> 8);
    s6.sin6_addr.s6_addr[15] = (uint8_t)low;
    s6.sin6_addr.s6_addr[7] = (uint8_t)(low >> 16);
    s6.sin6_addr.s6_addr[6] = (uint8_t)(low >> 8);
    req_set_client(r, (struct sockaddr *)&s6, sizeof(s6));
}

/* A fresh request: no headers, path "/", client 192.0.2.1, nothing tried. */
static void req_reset(hx_req *r)
{
    hx_arena_reset(&r->arena);
    memset(&r->hdrs, 0, sizeof(r->hdrs));
    r->tried = NULL;
    r->tried_n = 0;
    r->path = (helios_buf){"/", 1};
    req_client_v4(r, 0xc0000201u);
}

static void req_add_header(hx_req *r, const char *name, const char *value)
{
    if (hx_hdrs_add(&r->arena, &r->hdrs, name, strlen(name), value, strlen(value)) != 0)
        HX_FAILED_("test setup: cannot add header %s", name);
}

static void req_set_path(hx_req *r, const char *path)
{
    char *p = hx_arena_strndup(&r->arena, path, strlen(path));
    r->path = (helios_buf){p, strlen(path)};
}

/* Marks positions of L as tried by R (the core's bitmap, one byte each). */
static void req_tried(hx_req *r, const blist *l, const size_t *idx, size_t n)
{
    r->tried = hx_arena_alloc(&r->arena, l->bs.n ? l->bs.n : 1);
    memset(r->tried, 0, l->bs.n);
    r->tried_n = l->bs.n;
    for (size_t i = 0; i < n; i++)
        r->tried[idx[i]] = 1;
}

/* One pick exactly as core/proxy/upstream.c makes it. */
static int pick(bal *b, const blist *l, hx_req *r)
{
    helios_ctx ctx = {.size = sizeof(ctx),
                      .cfg = b->inst->cfg,
                      .wstate = b->ws,
                      .rstate = NULL,
                      .req = (helios_request *)r,
                      .worker = (helios_worker *)&worker};
    int idx = b->inst->mod->balancer->pick(&ctx, (const helios_backends *)&l->bs,
                                           (const helios_tried *)r);
    if (idx < -1 || idx >= (int)l->bs.n) {
        HX_FAILED_("%s: pick returned %d for a list of %zu", b->module, idx, l->bs.n);
        return -1;
    }
    return idx;
}

/* ---- keys for the hash strategies ---- */

enum key_kind { KEY_CLIENT, KEY_CLIENT_V6, KEY_HEADER, KEY_COOKIE, KEY_PATH, NKEYS };

static const char *const key_config[NKEYS] = {
    "{key: client}",         "{key: client}", "{key: \"header:X-User\"}",
    "{key: \"cookie:sid\"}", "{key: path}",
};
static const char *const key_label[NKEYS] = {"client IPv4", "client IPv6", "header X-User",
                                             "cookie sid", "path"};

/* A client address with a distinct /24 per I (nginx's ip_hash hashes only
 * the first three octets of IPv4). Starts at 11.0.0.0. */
static uint32_t key_ipv4(uint32_t i)
{
    return 0x0b000000u + i * 256u + (i % 251u) + 1u;
}

/* Sets request R up so that key number I of KIND is what a hash module sees.
 * The other request properties vary too (client, path) where they are not
 * the key, so a module hashing the wrong thing is not sticky. */
static void req_key(hx_req *r, enum key_kind kind, uint32_t i, uint32_t noise)
{
    char v[96];
    req_reset(r);
    switch (kind) {
    case KEY_CLIENT: req_client_v4(r, key_ipv4(i)); break;
    case KEY_CLIENT_V6: req_client_v6(r, i * 2654435761u); break;
    case KEY_HEADER:
        req_client_v4(r, key_ipv4(noise));
        snprintf(v, sizeof(v), "user-%u", i);
        req_add_header(r, "Accept", "*/*");
        req_add_header(r, "X-User", v);
        break;
    case KEY_COOKIE:
        req_client_v4(r, key_ipv4(noise));
        snprintf(v, sizeof(v), "theme=dark; sid=s%08x; lang=en", i * 2654435761u);
        req_add_header(r, "Cookie", v);
        break;
    case KEY_PATH:
        req_client_v4(r, key_ipv4(noise));
        snprintf(v, sizeof(v), "/items/%u/detail", i);
        req_set_path(r, v);
        break;
    default: break;
    }
}

/* ---- nginx's smooth weighted round robin, for the reference sequence ---- */

/* ngx_http_upstream_get_peer: every peer gains its weight, the largest
 * current weight wins (first on ties) and loses the total. */
static void nginx_swrr(const int *w, size_t n, size_t picks, char *out)
{
    int cur[MAXB] = {0}, total = 0;
    for (size_t i = 0; i < n; i++)
        total += w[i];
    for (size_t k = 0; k < picks; k++) {
        size_t best = n;
        for (size_t i = 0; i < n; i++) {
            cur[i] += w[i];
            if (best == n || cur[i] > cur[best])
                best = i;
        }
        cur[best] -= total;
        out[k] = (char)('a' + best);
    }
    out[picks] = '\0';
}

/* ================================================================== */
/* exact sequences                                                     */

HX_TEST(round_robin_visits_backends_in_order)
{
    bal b;
    if (bal_open(&b, "round_robin", NULL) != 0)
        return;
    blist l;
    blist_first(&l, 3);
    hx_req *r = req_new();
    int seq[6];
    for (int k = 0; k < 6; k++) {
        req_reset(r);
        seq[k] = pick(&b, &l, r);
    }
    printf("  round_robin, 3 backends: %d %d %d %d %d %d\n", seq[0], seq[1], seq[2], seq[3], seq[4],
           seq[5]);
    static const int want[6] = {0, 1, 2, 0, 1, 2};
    for (int k = 0; k < 6; k++)
        HX_CHECK_INT_EQ(seq[k], want[k]);
    req_free(r);
    bal_close(&b);
}

HX_TEST(weighted_round_robin_5_2_1_is_nginx_smooth_sequence)
{
    static const int w[3] = {5, 2, 1};
    char ref[25], got[25];
    nginx_swrr(w, 3, 24, ref);
    /* By hand: current weights (5,2,1)->a (-3,2,1); (2,4,2)->b (2,-4,2);
     * (7,-2,3)->a (-1,-2,3); (4,0,4)->a (-4,0,4); (1,2,5)->c (1,2,-3);
     * (6,4,-2)->a (-2,4,-2); (3,6,-1)->b (3,-2,-1); (8,0,0)->a (0,0,0). */
    HX_CHECK_STR_EQ(ref, "abaacabaabaacabaabaacaba");

    bal b;
    if (bal_open(&b, "weighted_round_robin", NULL) != 0)
        return;
    blist l;
    blist_first(&l, 3);
    for (int i = 0; i < 3; i++)
        atomic_store(&store[i].weight, (uint32_t)w[i]);
    hx_req *r = req_new();
    for (int k = 0; k < 24; k++) {
        req_reset(r);
        int idx = pick(&b, &l, r);
        got[k] = idx >= 0 ? (char)('a' + idx) : '-';
    }
    got[24] = '\0';
    printf("  weighted_round_robin 5/2/1: %s (nginx: %s)\n", got, ref);
    HX_CHECK_STR_EQ(got, ref);

    /* Re-weighting is an atomic store on the backend, with no
     * backends_changed (control.c): the next picks must follow it. */
    for (int i = 0; i < 3; i++)
        atomic_store(&store[i].weight, 1);
    int count[3] = {0};
    for (int k = 0; k < 30; k++) {
        req_reset(r);
        int idx = pick(&b, &l, r);
        if (idx >= 0)
            count[idx]++;
    }
    printf("  after re-weighting to 1/1/1, 30 picks: %d %d %d\n", count[0], count[1], count[2]);
    for (int i = 0; i < 3; i++)
        HX_CHECK(count[i] >= 9 && count[i] <= 11);
    store_reset();
    req_free(r);
    bal_close(&b);
}

HX_TEST(weighted_round_robin_never_bursts_to_the_heavy_backend)
{
    static const int w[4] = {10, 1, 1, 1};
    bal b;
    if (bal_open(&b, "weighted_round_robin", NULL) != 0)
        return;
    blist l;
    blist_first(&l, 4);
    for (int i = 0; i < 4; i++)
        atomic_store(&store[i].weight, (uint32_t)w[i]);
    hx_req *r = req_new();
    char ref[131], got[131];
    nginx_swrr(w, 4, 130, ref);
    int run = 0, longest = 0, count[4] = {0};
    for (int k = 0; k < 130; k++) {
        req_reset(r);
        int idx = pick(&b, &l, r);
        got[k] = idx >= 0 ? (char)('a' + idx) : '-';
        if (idx >= 0)
            count[idx]++;
        run = idx == 0 ? run + 1 : 0;
        longest = run > longest ? run : longest;
    }
    got[130] = '\0';
    printf("  weighted_round_robin 10/1/1/1: %.26s... longest run of the heavy one %d\n", got,
           longest);
    HX_CHECK_STR_EQ(got, ref);
    HX_CHECK_INT_EQ(count[0], 100);
    /* nginx's own longest run here (3 at the end of one period, 3 at the
     * start of the next); a naive weighted round robin sends 10 in a row */
    HX_CHECK(longest <= 6);
    store_reset();
    req_free(r);
    bal_close(&b);
}

/* ================================================================== */
/* common behaviour of every strategy                                  */

HX_TEST(unusable_backends_are_skipped_by_every_strategy)
{
    hx_req *r = req_new();
    for (size_t s = 0; s < NSTRATEGIES; s++) {
        bal b;
        if (bal_open(&b, strategies[s].module, NULL) != 0)
            continue;
        blist l;
        blist_first(&l, 6);
        atomic_store(&store[1].healthy, 0);  /* a health module said so */
        atomic_store(&store[2].draining, 1); /* drained */
        atomic_store(&store[4].healthy, 0);
        int count[6] = {0}, bad = 0;
        for (uint32_t k = 0; k < 600; k++) {
            req_key(r, KEY_CLIENT, k, k);
            int idx = pick(&b, &l, r);
            if (idx < 0 || idx == 1 || idx == 2 || idx == 4)
                bad++;
            else
                count[idx]++;
        }
        printf("  %-20s 1,2,4 unusable, 600 picks: %d %d %d %d %d %d\n", strategies[s].module,
               count[0], count[1], count[2], count[3], count[4], count[5]);
        if (bad)
            HX_FAILED_("%s: %d of 600 picks were unusable backends or -1", strategies[s].module,
                       bad);
        /* every usable one still gets traffic */
        HX_CHECK(count[0] > 0 && count[3] > 0 && count[5] > 0);
        store_reset();
        bal_close(&b);
    }
    req_free(r);
}

HX_TEST(tried_backends_are_avoided_when_others_are_usable)
{
    hx_req *r = req_new();
    for (size_t s = 0; s < NSTRATEGIES; s++) {
        bal b;
        if (bal_open(&b, strategies[s].module, NULL) != 0)
            continue;
        blist l;
        blist_first(&l, 4);
        int again = 0, not_last = 0;
        for (uint32_t k = 0; k < 200; k++) {
            /* first attempt, then a retry with that one tried */
            req_key(r, KEY_CLIENT, k, k);
            int first = pick(&b, &l, r);
            if (first < 0) {
                again++;
                continue;
            }
            size_t t = (size_t)first;
            req_tried(r, &l, &t, 1);
            int second = pick(&b, &l, r);
            if (second < 0 || second == first)
                again++;
            /* three tried: only one untried usable backend is left */
            size_t three[3], n3 = 0;
            for (size_t i = 0; i < 4; i++)
                if (i != k % 4)
                    three[n3++] = i;
            req_key(r, KEY_CLIENT, k, k);
            req_tried(r, &l, three, 3);
            if (pick(&b, &l, r) != (int)(k % 4))
                not_last++;
        }
        if (again)
            HX_FAILED_("%s: %d of 200 retries got the tried backend again (or none)",
                       strategies[s].module, again);
        if (not_last)
            HX_FAILED_("%s: %d of 200 retries with 3 of 4 tried missed the untried one",
                       strategies[s].module, not_last);

        /* every usable one tried: -1, never a tried one as a last resort
         * (module.h: the core would not use it) */
        atomic_store(&store[3].draining, 1);
        size_t all[3] = {0, 1, 2};
        req_reset(r);
        req_tried(r, &l, all, 3);
        int idx = pick(&b, &l, r);
        if (idx != -1)
            HX_FAILED_("%s: every usable backend tried, pick gave %d instead of -1",
                       strategies[s].module, idx);
        store_reset();
        bal_close(&b);
    }
    req_free(r);
}

/*
 * The pick contract (module.h), for every strategy, over random states of
 * lists of 1 to 8 backends: the answer is a candidate (usable and not
 * tried) whenever one exists, and -1 exactly when none does.
 */
HX_TEST(every_strategy_picks_an_untried_usable_backend_or_minus_one)
{
    hx_req *r = req_new();
    uint64_t rng = 0x243f6a8885a308d3u; /* fixed: a failure reproduces */
    for (size_t s = 0; s < NSTRATEGIES; s++) {
        bal b;
        if (bal_open(&b, strategies[s].module, NULL) != 0)
            continue;
        static blist lists[8]; /* one list per length: the core never reuses a list's address */
        int wrong = 0, none = 0, picks = 0;
        for (size_t n = 1; n <= 8; n++) {
            blist *l = &lists[n - 1];
            blist_first(l, n);
            for (uint32_t k = 0; k < 300; k++) {
                size_t tried[8], ntried = 0;
                int usable[8], any = 0;
                for (size_t i = 0; i < n; i++) {
                    rng = rng * 6364136223846793005u + 1442695040888963407u;
                    unsigned bits = (unsigned)(rng >> 59);
                    int healthy = (bits & 3u) != 0, drained = (bits & 0x1cu) == 0x1cu;
                    atomic_store(&store[i].healthy, healthy); /* 3 in 4 */
                    atomic_store(&store[i].draining, drained);
                    usable[i] = healthy && !drained;
                    if ((bits & 0x10u) != 0)
                        tried[ntried++] = i;
                    else
                        any |= usable[i];
                }
                req_key(r, KEY_CLIENT, k, k);
                req_tried(r, l, tried, ntried);
                int idx = pick(&b, l, r);
                picks++;
                none += !any;
                if (any ? idx < 0 || r->tried[idx] || !usable[idx] : idx != -1)
                    wrong++;
            }
        }
        printf("  %-20s %d random picks (%d with no candidate): %d not a candidate\n",
               strategies[s].module, picks, none, wrong);
        HX_CHECK_INT_EQ(wrong, 0);
        HX_CHECK(none > 0 && none < picks); /* both cases were exercised */
        store_reset();
        bal_close(&b);
    }
    req_free(r);
}

HX_TEST(pick_returns_minus_one_when_no_backend_is_usable)
{
    hx_req *r = req_new();
    for (size_t s = 0; s < NSTRATEGIES; s++) {
        bal b;
        if (bal_open(&b, strategies[s].module, NULL) != 0)
            continue;
        blist l;
        blist_first(&l, 3);
        atomic_store(&store[0].healthy, 0);
        atomic_store(&store[1].draining, 1);
        atomic_store(&store[2].healthy, 0);
        atomic_store(&store[2].draining, 1);
        int wrong = 0;
        for (uint32_t k = 0; k < 50; k++) {
            req_key(r, KEY_CLIENT, k, k);
            if (pick(&b, &l, r) != -1)
                wrong++;
        }
        if (wrong)
            HX_FAILED_("%s: %d of 50 picks with nothing usable did not return -1",
                       strategies[s].module, wrong);
        store_reset();
        /* an empty list (every backend removed at runtime) */
        blist empty;
        blist_first(&empty, 0);
        if (bal_changed(&b, &empty) == 0) {
            req_reset(r);
            HX_CHECK_INT_EQ(pick(&b, &empty, r), -1);
        }
        bal_close(&b);
    }
    req_free(r);
}

HX_TEST(every_strategy_refuses_unknown_config_keys)
{
    for (size_t s = 0; s < NSTRATEGIES; s++)
        if (!bal_refuses(strategies[s].module, "{no_such_key: 1}"))
            HX_FAILED_("%s accepted an unknown key", strategies[s].module);
    for (size_t s = 0; s < NHASH; s++) {
        if (!bal_refuses(hash_modules[s], "{key: bogus}"))
            HX_FAILED_("%s accepted key: bogus", hash_modules[s]);
        if (!bal_refuses(hash_modules[s], "{key: \"header:\"}"))
            HX_FAILED_("%s accepted key: header: with no name", hash_modules[s]);
        if (!bal_refuses(hash_modules[s], "{key: \"cookie:\"}"))
            HX_FAILED_("%s accepted key: cookie: with no name", hash_modules[s]);
    }
    HX_CHECK(bal_refuses("maglev", "{table_size: 65536}")); /* not prime */
    HX_CHECK(bal_refuses("maglev", "{table_size: 7}"));     /* too small */
    HX_CHECK(bal_refuses("maglev", "{table_size: many}"));
}

/* ================================================================== */
/* least_connections and power_of_two                                  */

HX_TEST(least_connections_prefers_fewer_in_flight)
{
    bal b;
    if (bal_open(&b, "least_connections", NULL) != 0)
        return;
    blist l;
    blist_first(&l, 3);
    hx_req *r = req_new();
    atomic_store(&store[0].inflight, 5);
    atomic_store(&store[1].inflight, 1);
    atomic_store(&store[2].inflight, 3);
    for (int k = 0; k < 20; k++) {
        req_reset(r);
        HX_CHECK_INT_EQ(pick(&b, &l, r), 1);
    }
    /* the least loaded is tried: the next least */
    size_t t = 1;
    req_reset(r);
    req_tried(r, &l, &t, 1);
    HX_CHECK_INT_EQ(pick(&b, &l, r), 2);
    store_reset();
    req_free(r);
    bal_close(&b);
}

HX_TEST(least_connections_is_weight_aware)
{
    bal b;
    if (bal_open(&b, "least_connections", NULL) != 0)
        return;
    blist l;
    blist_first(&l, 2);
    hx_req *r = req_new();
    /* 2 in flight on weight 4 is less loaded than 1 on weight 1 */
    atomic_store(&store[0].weight, 1);
    atomic_store(&store[1].weight, 4);
    atomic_store(&store[0].inflight, 1);
    atomic_store(&store[1].inflight, 2);
    req_reset(r);
    HX_CHECK_INT_EQ(pick(&b, &l, r), 1);
    /* requests that never finish: in-flight counts end up in the ratio of
     * the weights (1:3) */
    atomic_store(&store[1].weight, 3);
    atomic_store(&store[0].inflight, 0);
    atomic_store(&store[1].inflight, 0);
    int count[2] = {0};
    for (int k = 0; k < 40; k++) {
        req_reset(r);
        int idx = pick(&b, &l, r);
        if (idx >= 0) {
            count[idx]++;
            atomic_fetch_add(&store[idx].inflight, 1);
        }
    }
    printf("  least_connections weights 1/3, 40 requests held: %d %d\n", count[0], count[1]);
    HX_CHECK(count[1] >= 28 && count[1] <= 32);
    store_reset();
    req_free(r);
    bal_close(&b);
}

HX_TEST(least_connections_ties_do_not_always_go_to_the_first)
{
    bal b;
    if (bal_open(&b, "least_connections", NULL) != 0)
        return;
    blist l;
    blist_first(&l, 3);
    hx_req *r = req_new();
    /* nothing in flight anywhere, ever (requests finish between picks) */
    int count[3] = {0};
    for (int k = 0; k < 300; k++) {
        req_reset(r);
        int idx = pick(&b, &l, r);
        if (idx >= 0)
            count[idx]++;
    }
    printf("  least_connections all tied, 300 picks: %d %d %d\n", count[0], count[1], count[2]);
    for (int i = 0; i < 3; i++)
        HX_CHECK(count[i] >= 50);
    req_free(r);
    bal_close(&b);
}

HX_TEST(power_of_two_never_picks_the_more_loaded_of_two)
{
    bal b;
    if (bal_open(&b, "power_of_two", NULL) != 0)
        return;
    blist l;
    blist_first(&l, 2);
    hx_req *r = req_new();
    for (int loaded = 0; loaded < 2; loaded++) {
        atomic_store(&store[loaded].inflight, 10);
        atomic_store(&store[!loaded].inflight, 0);
        int wrong = 0;
        for (int k = 0; k < 1000; k++) {
            req_reset(r);
            if (pick(&b, &l, r) != !loaded)
                wrong++;
        }
        if (wrong)
            HX_FAILED_("%d of 1000 picks went to backend %d with 10 in flight vs 0", wrong, loaded);
    }
    /* with three, the most loaded never wins either: any pair holds a less
     * loaded one */
    blist three; /* a new list object, as the core publishes one */
    blist_first(&three, 3);
    if (bal_changed(&b, &three) == 0) {
        atomic_store(&store[0].inflight, 1);
        atomic_store(&store[1].inflight, 9);
        atomic_store(&store[2].inflight, 2);
        int count[3] = {0};
        for (int k = 0; k < 3000; k++) {
            req_reset(r);
            int idx = pick(&b, &three, r);
            if (idx >= 0)
                count[idx]++;
        }
        printf("  power_of_two in flight 1/9/2, 3000 picks: %d %d %d\n", count[0], count[1],
               count[2]);
        HX_CHECK_INT_EQ(count[1], 0);
        /* the pair {0,2} is drawn about a third of the time and 0 wins it,
         * so 0 gets about 2/3, 2 about 1/3 */
        HX_CHECK(count[0] > 1700 && count[2] > 700);
    }
    store_reset();
    req_free(r);
    bal_close(&b);
}

/* ================================================================== */
/* hash strategies                                                     */

HX_TEST(hash_strategies_are_sticky_for_every_key_kind)
{
    hx_req *r = req_new();
    for (size_t s = 0; s < NHASH; s++) {
        for (int kind = 0; kind < NKEYS; kind++) {
            bal b;
            if (bal_open(&b, hash_modules[s], key_config[kind]) != 0)
                continue;
            blist l;
            blist_first(&l, 5);
            static int first[1000];
            int count[5] = {0}, moved = 0;
            for (uint32_t k = 0; k < 1000; k++) {
                req_key(r, kind, k, k);
                first[k] = pick(&b, &l, r);
                if (first[k] >= 0)
                    count[first[k]]++;
            }
            /* the same keys again, in another order, with other noise */
            for (uint32_t j = 0; j < 1000; j++) {
                uint32_t k = (j * 7919u) % 1000u;
                req_key(r, kind, k, k + 5000);
                if (pick(&b, &l, r) != first[k])
                    moved++;
            }
            printf("  %-18s %-13s 1000 keys on 5: %3d %3d %3d %3d %3d, %d not sticky\n",
                   hash_modules[s], key_label[kind], count[0], count[1], count[2], count[3],
                   count[4], moved);
            if (moved)
                HX_FAILED_("%s key %s: %d of 1000 keys changed backend", hash_modules[s],
                           key_label[kind], moved);
            for (int i = 0; i < 5; i++)
                if (count[i] < 100)
                    HX_FAILED_("%s key %s: backend %d got %d of 1000 keys (want >= 100)",
                               hash_modules[s], key_label[kind], i, count[i]);
            bal_close(&b);
        }
    }
    req_free(r);
}

/* Documented in each hash module's README: a request without the header or
 * cookie (or with an empty value) hashes its client address instead, and an
 * IPv4-mapped IPv6 client hashes like the IPv4 address. */
HX_TEST(hash_key_fallbacks_follow_the_client_address)
{
    hx_req *r = req_new();
    for (size_t s = 0; s < NHASH; s++) {
        bal by_client, by_header, by_cookie;
        if (bal_open(&by_client, hash_modules[s], "{key: client}") != 0)
            continue;
        if (bal_open(&by_header, hash_modules[s], key_config[KEY_HEADER]) != 0 ||
            bal_open(&by_cookie, hash_modules[s], key_config[KEY_COOKIE]) != 0) {
            bal_close(&by_client);
            continue;
        }
        blist l;
        blist_first(&l, 7);
        int differ = 0, mapped = 0;
        for (uint32_t k = 0; k < 500; k++) {
            req_key(r, KEY_CLIENT, k, 0);
            int want = pick(&by_client, &l, r);
            /* no X-User header, no sid cookie (another cookie), empty X-User */
            differ += pick(&by_header, &l, r) != want;
            req_add_header(r, "Cookie", "theme=dark");
            differ += pick(&by_cookie, &l, r) != want;
            req_add_header(r, "X-User", "");
            differ += pick(&by_header, &l, r) != want;
            /* the same address, IPv4-mapped */
            struct sockaddr_in6 s6 = {.sin6_family = AF_INET6};
            uint32_t ip = htonl(key_ipv4(k));
            s6.sin6_addr.s6_addr[10] = s6.sin6_addr.s6_addr[11] = 0xff;
            memcpy(&s6.sin6_addr.s6_addr[12], &ip, 4);
            req_set_client(r, (struct sockaddr *)&s6, sizeof(s6));
            mapped += pick(&by_client, &l, r) != want;
        }
        if (differ)
            HX_FAILED_("%s: %d of 1500 requests without the key did not follow the client",
                       hash_modules[s], differ);
        if (mapped)
            HX_FAILED_("%s: %d of 500 IPv4-mapped clients hashed unlike their IPv4 address",
                       hash_modules[s], mapped);
        bal_close(&by_cookie);
        bal_close(&by_header);
        bal_close(&by_client);
    }
    req_free(r);
}

/* Fraction of N keys whose backend (by identity) differs between list A
 * and list B; *TO_NEW counts moved keys that landed on NEWB. */
static double remap_fraction(bal *b, const blist *a, const blist *bl, uint32_t n,
                             const hx_backend *newb, uint32_t *to_new, uint32_t *nmoved)
{
    hx_req *r = req_new();
    uint8_t *before = malloc(n);
    for (uint32_t k = 0; k < n; k++) {
        req_key(r, KEY_CLIENT, k, 0);
        int idx = pick(b, a, r);
        before[k] = (uint8_t)(idx < 0 ? 255 : a->v[idx]->index);
    }
    bal_changed(b, bl);
    uint32_t moved = 0, landed = 0;
    for (uint32_t k = 0; k < n; k++) {
        req_key(r, KEY_CLIENT, k, 0);
        int idx = pick(b, bl, r);
        unsigned now = idx < 0 ? 255 : bl->v[idx]->index;
        if (now != before[k]) {
            moved++;
            if (newb && now == newb->index)
                landed++;
        }
    }
    free(before);
    req_free(r);
    if (to_new)
        *to_new = landed;
    if (nmoved)
        *nmoved = moved;
    return (double)moved / n;
}

HX_TEST(remapping_from_10_to_11_backends)
{
    const uint32_t keys = 100000;
    printf("  remapping when growing from 10 to 11 backends, %u client addresses "
           "(ideal 1/11 = %.4f):\n",
           keys, 1.0 / 11);
    for (size_t s = 0; s < NHASH; s++) {
        bal b;
        if (bal_open(&b, hash_modules[s], NULL) != 0)
            continue;
        blist ten, eleven;
        blist_first(&ten, 10);
        blist_first(&eleven, 11);
        uint32_t landed, moved;
        double f = remap_fraction(&b, &ten, &eleven, keys, &store[10], &landed, &moved);
        printf("    %-18s moved %.4f (%u keys), %u of them to the new backend\n", hash_modules[s],
               f, moved, landed);
        if (strcmp(hash_modules[s], "ip_hash") == 0) {
            HX_CHECK(f > 0.5);
        } else {
            HX_CHECK(f >= 0.06 && f <= 0.14);
            /* consistent: a key moves to the newcomer. Jump hash does so
             * exactly; Maglev's table shifts a few slots between old
             * backends too (the paper's "minimal", not zero, disruption). */
            if (strcmp(hash_modules[s], "maglev") == 0)
                HX_CHECK(landed >= moved - moved / 20);
            else
                HX_CHECK_UINT_EQ(landed, moved);
        }
        bal_close(&b);
    }
}

HX_TEST(maglev_removing_one_of_10_moves_only_its_keys)
{
    bal b;
    if (bal_open(&b, "maglev", NULL) != 0)
        return;
    const uint32_t keys = 100000;
    blist ten, nine;
    blist_first(&ten, 10);
    blist_without(&nine, &ten, 4);
    hx_req *r = req_new();
    uint8_t *before = malloc(keys);
    uint32_t on_removed = 0, others = 0, kept = 0;
    for (uint32_t k = 0; k < keys; k++) {
        req_key(r, KEY_CLIENT, k, 0);
        int idx = pick(&b, &ten, r);
        before[k] = (uint8_t)(idx < 0 ? 255 : ten.v[idx]->index);
    }
    bal_changed(&b, &nine);
    for (uint32_t k = 0; k < keys; k++) {
        req_key(r, KEY_CLIENT, k, 0);
        int idx = pick(&b, &nine, r);
        unsigned now = idx < 0 ? 255 : nine.v[idx]->index;
        if (before[k] == 4) {
            on_removed++;
        } else {
            others++;
            kept += now == before[k];
        }
    }
    double share = (double)on_removed / keys, keep = (double)kept / (others ? others : 1);
    printf("  maglev, backend 4 of 10 removed: it had %.4f of %u keys; %.4f of the others "
           "kept their backend\n",
           share, keys, keep);
    HX_CHECK(share >= 0.07 && share <= 0.13);
    HX_CHECK(keep >= 0.97);
    free(before);
    req_free(r);
    bal_close(&b);
}

/*
 * An unusable backend (unhealthy, drained): the hash strategies fall back
 * deterministically, and only that backend's keys move. For the jump hash
 * this is its documented answer to removal too: jump buckets are list
 * positions, so only the last can go without reshuffling (measured below).
 */
HX_TEST(hash_fallback_for_an_unusable_backend_moves_only_its_keys)
{
    const uint32_t keys = 100000;
    hx_req *r = req_new();
    for (size_t s = 0; s < NHASH; s++) {
        bal b;
        if (bal_open(&b, hash_modules[s], NULL) != 0)
            continue;
        blist ten;
        blist_first(&ten, 10);
        uint8_t *before = malloc(keys);
        for (uint32_t k = 0; k < keys; k++) {
            req_key(r, KEY_CLIENT, k, 0);
            int idx = pick(&b, &ten, r);
            before[k] = (uint8_t)(idx < 0 ? 255 : idx);
        }
        atomic_store(&store[4].draining, 1);
        uint32_t on4 = 0, others = 0, kept = 0, again = 0, dest[10] = {0};
        for (uint32_t k = 0; k < keys; k++) {
            req_key(r, KEY_CLIENT, k, 0);
            int idx = pick(&b, &ten, r);
            if (idx == 4 || idx < 0) {
                HX_FAILED_("%s: key %u went to %d, backend 4 is drained", hash_modules[s], k, idx);
                break;
            }
            if (before[k] == 4) {
                on4++;
                dest[idx]++;
                /* deterministic: the same key falls back to the same place */
                req_key(r, KEY_CLIENT, k, 7);
                again += pick(&b, &ten, r) != idx;
            } else {
                others++;
                kept += (uint8_t)idx == before[k];
            }
        }
        int spread = 0;
        for (int i = 0; i < 10; i++)
            spread += dest[i] > on4 / 50;
        double keep = (double)kept / (others ? others : 1);
        printf("  %-18s backend 4 of 10 drained: %.4f of keys were on it, now spread over %d "
               "backends; %.5f of the others kept theirs\n",
               hash_modules[s], (double)on4 / keys, spread, keep);
        HX_CHECK_INT_EQ(again, 0);
        if (strcmp(hash_modules[s], "ip_hash") != 0) {
            HX_CHECK(keep >= (strcmp(hash_modules[s], "maglev") == 0 ? 0.97 : 1.0));
            HX_CHECK(spread >= 5); /* not all onto one neighbour */
        }
        store_reset();
        free(before);
        bal_close(&b);
    }
    req_free(r);
}

/* Share of 100000 client keys per backend of L under B. */
static void key_shares(bal *b, const blist *l, uint32_t keys, uint32_t *count)
{
    hx_req *r = req_new();
    memset(count, 0, l->bs.n * sizeof(*count));
    for (uint32_t k = 0; k < keys; k++) {
        req_key(r, KEY_CLIENT, k, 0);
        int idx = pick(b, l, r);
        if (idx >= 0)
            count[idx]++;
    }
    req_free(r);
}

HX_TEST(maglev_shares_follow_weights)
{
    bal b;
    if (bal_open(&b, "maglev", NULL) != 0)
        return;
    blist two;
    blist_first(&two, 2);
    atomic_store(&store[0].weight, 1);
    atomic_store(&store[1].weight, 3);
    uint32_t count[2];
    key_shares(&b, &two, 100000, count);
    printf("  maglev weights 1/3, 100000 keys: %u %u\n", count[0], count[1]);
    HX_CHECK(count[1] > 72000 && count[1] < 78000);
    store_reset();
    bal_close(&b);
}

/*
 * The control plane changes a weight with an atomic store on the backend
 * (control.c: no new list, no backends_changed call, although host.h lists
 * "weight change" among the reasons for backends_changed). A balancer that
 * derives a table from the weights must notice the change by itself.
 */
HX_TEST(maglev_follows_a_runtime_weight_change)
{
    bal b;
    if (bal_open(&b, "maglev", NULL) != 0)
        return;
    blist two;
    blist_first(&two, 2);
    uint32_t count[2];
    key_shares(&b, &two, 100000, count);
    printf("  maglev weights 1/1: %u %u\n", count[0], count[1]);
    HX_CHECK(count[1] > 47000 && count[1] < 53000);
    atomic_store(&store[1].weight, 3); /* what hx_ctl_backend_weight does */
    key_shares(&b, &two, 100000, count);
    printf("  maglev after a runtime weight change to 1/3: %u %u\n", count[0], count[1]);
    HX_CHECK(count[1] > 72000 && count[1] < 78000);
    store_reset();
    bal_close(&b);
}

HX_TEST(jump_hash_removing_the_last_of_11_moves_only_its_keys)
{
    bal b;
    if (bal_open(&b, "ip_hash_consistent", NULL) != 0)
        return;
    blist ten, eleven, middle;
    blist_first(&ten, 10);
    blist_first(&eleven, 11);
    bal_changed(&b, &eleven);
    uint32_t moved, landed;
    /* 11 -> 10: the reverse of growing; keys of the last bucket move */
    double f = remap_fraction(&b, &eleven, &ten, 100000, NULL, &landed, &moved);
    printf("  ip_hash_consistent 11 -> 10 (last removed): moved %.4f\n", f);
    HX_CHECK(f >= 0.06 && f <= 0.14);
    /* removing a middle one reshuffles list positions: measured, not bounded */
    blist_without(&middle, &ten, 4);
    f = remap_fraction(&b, &ten, &middle, 100000, NULL, &landed, &moved);
    printf("  ip_hash_consistent 10 -> 9 (backend 4 removed from the list): moved %.4f\n", f);
    bal_close(&b);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    hx_runtime_wire();
    process_init();
    store_init();
    HX_RUN(round_robin_visits_backends_in_order);
    HX_RUN(weighted_round_robin_5_2_1_is_nginx_smooth_sequence);
    HX_RUN(weighted_round_robin_never_bursts_to_the_heavy_backend);
    HX_RUN(unusable_backends_are_skipped_by_every_strategy);
    HX_RUN(tried_backends_are_avoided_when_others_are_usable);
    HX_RUN(every_strategy_picks_an_untried_usable_backend_or_minus_one);
    HX_RUN(pick_returns_minus_one_when_no_backend_is_usable);
    HX_RUN(every_strategy_refuses_unknown_config_keys);
    HX_RUN(least_connections_prefers_fewer_in_flight);
    HX_RUN(least_connections_is_weight_aware);
    HX_RUN(least_connections_ties_do_not_always_go_to_the_first);
    HX_RUN(power_of_two_never_picks_the_more_loaded_of_two);
    HX_RUN(hash_strategies_are_sticky_for_every_key_kind);
    HX_RUN(hash_key_fallbacks_follow_the_client_address);
    HX_RUN(remapping_from_10_to_11_backends);
    HX_RUN(maglev_removing_one_of_10_moves_only_its_keys);
    HX_RUN(hash_fallback_for_an_unusable_backend_moves_only_its_keys);
    HX_RUN(maglev_shares_follow_weights);
    HX_RUN(maglev_follows_a_runtime_weight_change);
    HX_RUN(jump_hash_removing_the_last_of_11_moves_only_its_keys);
    store_free();
    ev_loop_destroy(worker.loop);
    return hx_test_summary();
}
