/*
 * pick.c - nanoseconds per pick() of every load-balancing module, at 3, 30
 * and 300 backends. Built and run by bench/strategies.sh against the core
 * library of a build tree (libhxcore.a), so the modules are loaded by the
 * real loader and called exactly as core/proxy/upstream.c calls them: a
 * helios_ctx, the request as the tried set (a zeroed bitmap, as for a first
 * attempt), and the immutable backend list.
 *
 *     pick MODULE_DIR [MIN_MS] [ROUNDS]
 *
 * Each cell is the median of ROUNDS (default 7) timed runs of at least
 * MIN_MS (default 200) milliseconds each, after a warm-up. Picks cycle over
 * 1024 prepared requests with distinct client addresses, so the hash
 * strategies hash a different key each time (the key's bytes are in cache,
 * as they would be right after parsing). In-flight counts are fixed at
 * small pseudo-random values, so least_connections and power_of_two compare
 * real numbers rather than ties.
 *
 * Output: a markdown table on stdout, one row per strategy.
 */
#define _POSIX_C_SOURCE 200809L

#include "config/config.h"
#include "http/conn.h"
#include "base/log.h"
#include "config/module_loader.h"
#include "runtime/runtime.h"
#include "event/worker.h"

#include <arpa/inet.h>
#include <ev.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NREQ 1024 /* prepared requests, cycled (power of two) */
#define REQ_ARENA 4096
#define MAXB 300

static const char *const strategies[] = {
    "round_robin",
    "weighted_round_robin",
    "least_connections",
    "power_of_two",
    "ip_hash",
    "ip_hash_consistent",
    "maglev",
};
#define NSTRATEGIES (sizeof(strategies) / sizeof(strategies[0]))
static const size_t sizes[] = {3, 30, 300};
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static hx_modreg reg;
static hx_worker worker;
static hx_backend store[MAXB];
static hx_req *reqs[NREQ];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void setup(void)
{
    worker.loop = ev_loop_new(EVFLAG_AUTO);
    hx_srv.workers = &worker;
    hx_srv.nworkers = 1;
    uint32_t x = 12345;
    for (unsigned i = 0; i < MAXB; i++) {
        char name[16], addr[32], err[128];
        snprintf(name, sizeof(name), "backend-%u", i);
        snprintf(addr, sizeof(addr), "10.1.%u.%u:8080", i / 250, i % 250 + 1);
        store[i].name = strdup(name);
        store[i].address = strdup(addr);
        if (hx_addr_parse(addr, 0, &store[i].addr, err, sizeof(err)) != 0)
            fprintf(stderr, "pick: %s: %s\n", addr, err);
        store[i].index = i;
        x = x * 1103515245u + 12345u;
        atomic_init(&store[i].weight, 1);
        atomic_init(&store[i].inflight, (x >> 16) % 8);
        atomic_init(&store[i].healthy, 1);
    }
    for (unsigned k = 0; k < NREQ; k++) {
        hx_req *r = calloc(1, sizeof(hx_req) + sizeof(hx_arena_block) + REQ_ARENA);
        if (r == NULL)
            exit(1);
        hx_arena_init(&r->arena, r->first, REQ_ARENA);
        r->w = &worker;
        r->path = (helios_buf){"/", 1};
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(40000)};
        sin.sin_addr.s_addr = htonl(0x0b000000u + k * 7919u);
        memcpy(&r->client, &sin, sizeof(sin));
        r->tried = hx_arena_alloc(&r->arena, MAXB);
        memset(r->tried, 0, MAXB);
        reqs[k] = r;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median ns per pick of MODULE over the first N backends; -1 on failure. */
static double measure(const char *dir, const char *module, size_t n, unsigned min_ms,
                      unsigned rounds)
{
    char yaml[128];
    snprintf(yaml, sizeof(yaml), "module: %s\n", module);
    hx_conf_tree *t = hx_conf_tree_new();
    hx_instance *inst = NULL;
    if (hx_conf_load_string(t, "pick.yaml", yaml, strlen(yaml)) == 0)
        inst = hx_instance_new(&reg, dir, hx_conf_root(t), HX_KIND_BALANCER, 0);
    if (inst == NULL) {
        for (size_t i = 0; i < hx_conf_error_count(t); i++)
            fprintf(stderr, "pick: %s\n", hx_conf_error_at(t, i));
        hx_conf_tree_free(t);
        return -1;
    }
    void *ws = NULL;
    const helios_module *d = inst->mod->desc;
    if (d->worker_init && d->worker_init(inst->cfg, (helios_worker *)&worker, &ws) != 0) {
        hx_instance_free(inst);
        hx_conf_tree_free(t);
        return -1;
    }
    hx_backend *v[MAXB];
    for (size_t i = 0; i < n; i++)
        v[i] = &store[i];
    hx_backends list = {n, v};
    for (unsigned k = 0; k < NREQ; k++)
        reqs[k]->tried_n = n;

    int (*pick)(helios_ctx *, const helios_backends *, const helios_tried *) =
        inst->mod->balancer->pick;
    helios_ctx ctx = {
        .size = sizeof(ctx), .cfg = inst->cfg, .wstate = ws, .worker = (helios_worker *)&worker};
    unsigned long long sink = 0;
    /* warm-up: first-pick work (maglev builds its table) and caches */
    for (unsigned k = 0; k < 200000; k++) {
        ctx.req = (helios_request *)reqs[k & (NREQ - 1)];
        sink += (unsigned)pick(&ctx, (const helios_backends *)&list,
                               (const helios_tried *)reqs[k & (NREQ - 1)]);
    }
    double results[64];
    if (rounds > 64)
        rounds = 64;
    for (unsigned round = 0; round < rounds; round++) {
        uint64_t picks = 0, start = now_ns(), elapsed;
        do {
            for (unsigned k = 0; k < 65536; k++) {
                hx_req *r = reqs[k & (NREQ - 1)];
                ctx.req = (helios_request *)r;
                sink +=
                    (unsigned)pick(&ctx, (const helios_backends *)&list, (const helios_tried *)r);
            }
            picks += 65536;
            elapsed = now_ns() - start;
        } while (elapsed < (uint64_t)min_ms * 1000000u);
        results[round] = (double)elapsed / (double)picks;
    }
    qsort(results, rounds, sizeof(double), cmp_double);
    if (sink == 42) /* keeps the calls' results observable */
        fputc(' ', stderr);
    if (d->worker_fini)
        d->worker_fini(inst->cfg, (helios_worker *)&worker, ws);
    hx_instance_free(inst);
    hx_conf_tree_free(t);
    return results[rounds / 2];
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: pick MODULE_DIR [MIN_MS] [ROUNDS]\n");
        return 2;
    }
    const char *dir = argv[1];
    hx_runtime_wire();
    unsigned min_ms = argc > 2 ? (unsigned)atoi(argv[2]) : 200;
    unsigned rounds = argc > 3 ? (unsigned)atoi(argv[3]) : 7;
    if (min_ms == 0 || rounds == 0) {
        fprintf(stderr, "pick: MIN_MS and ROUNDS must be positive\n");
        return 2;
    }
    hx_log_open(HELIOS_LOG_WARN, NULL); /* no "loaded module" lines */
    setup();
    printf("| strategy | 3 backends | 30 backends | 300 backends |\n");
    printf("|---|---:|---:|---:|\n");
    int failed = 0;
    for (size_t s = 0; s < NSTRATEGIES; s++) {
        printf("| %s |", strategies[s]);
        for (size_t k = 0; k < NSIZES; k++) {
            double ns = measure(dir, strategies[s], sizes[k], min_ms, rounds);
            if (ns < 0) {
                printf(" failed |");
                failed = 1;
            } else {
                printf(" %.1f ns |", ns);
            }
            fflush(stdout);
        }
        printf("\n");
    }
    return failed;
}
