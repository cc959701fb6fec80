/*
 * maglev.c - sticky balancing with Maglev's lookup table (Eisenbud et al.,
 * "Maglev: A Fast and Reliable Software Network Load Balancer", NSDI 2016,
 * section 3.4).
 *
 * Each worker keeps a table of M slots (M prime, `table_size`) filled with
 * backend indexes; a request goes to the backend in slot hash(key) % M. The
 * table is built from the backends' NAMES (offset and skip of each one's
 * permutation of the slots come from two hashes of its name), visiting the
 * backends sorted by name, so it depends only on the set of names and
 * weights, not on list order: adding an eleventh backend to ten moves about
 * 1/11 of the keys, removing one moves mostly its own keys, wherever it sat
 * in the list. Weights are honoured: a backend takes turns in the fill in
 * proportion to its weight (as Envoy does), so it owns that share of slots.
 *
 * The table is rebuilt on the worker, in pick(), when the backend list
 * pointer differs from the one it was built for (a runtime add or remove
 * publishes a new list) or when a backend's weight differs from the one it
 * was built with (the core changes weights in place; each pick compares
 * one backend's weight, in turn). A slot whose backend is unusable or
 * already tried by this request sends the request on along the table, with
 * a stride derived from the key, to the first slot whose backend is usable
 * and untried: deterministic, and only that backend's keys move.
 */
#define _POSIX_C_SOURCE 200809L /* netinet/in.h types with -std=c17 */

#include <netinet/in.h>
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <helios.h>
#include <helios/util/balancer.h>
#include <helios/util/reqkey.h>

#define MG_NAME "maglev"
#define MG_TABLE_DEFAULT 65537
#define MG_TABLE_MIN 251
#define MG_TABLE_MAX 1048573 /* largest prime below 2^20 */
/* Slots hold 16-bit backend indexes; 0xffff marks an empty slot while
 * building. Longer lists fall back to plain modulo hashing (logged). */
#define MG_EMPTY 0xffffu
#define MG_MAX_BACKENDS 65535u
/* Seeds of the two name hashes (offset, skip); any distinct constants. */
#define MG_SEED_OFFSET 0x6d61676c65763031u
#define MG_SEED_SKIP 0x6d61676c65763032u

static const helios_host_api *api;

/* ---- configuration ---- */

/* The `key` setting and the request key come from the SDK's
 * helios/util/reqkey.h, shared with the other hash balancers so that
 * switching strategies keeps the same notion of "the same client". */
static const char *const mg_keys[] = {"key", "table_size", NULL};

typedef struct mg_config {
    helios_reqkey key; /* what a request is hashed on */
    uint32_t m;        /* table_size: slots per table, prime */
} mg_config;

static int mg_is_prime(long long v)
{
    if (v < 2)
        return 0;
    for (long long d = 2; d * d <= v; d++)
        if (v % d == 0)
            return 0;
    return 1;
}

static int mg_config_new(const helios_conf *conf, void **cfg)
{
    int bad = api->conf_check_keys(conf, mg_keys) > 0;
    helios_reqkey key;
    if (helios_reqkey_parse(api, conf, &key) != 0)
        bad = 1;
    long long m;
    int got = api->conf_int(conf, "table_size", MG_TABLE_DEFAULT, MG_TABLE_MIN, MG_TABLE_MAX, &m);
    if (got < 0) {
        bad = 1;
    } else if (!mg_is_prime(m)) {
        /* Offsets and skips only make full permutations of a prime-sized
         * table; name the neighbours so the fix is one edit. */
        long long below = m - 1, above = m + 1;
        while (below > MG_TABLE_MIN && !mg_is_prime(below))
            below--;
        while (above < MG_TABLE_MAX && !mg_is_prime(above))
            above++;
        api->conf_error(api->conf_get(conf, "table_size"),
                        "%lld is not prime; use a prime such as %lld or %lld (default %d)", m,
                        below, above, MG_TABLE_DEFAULT);
        bad = 1;
    }
    if (bad)
        return -1;
    mg_config *c = malloc(sizeof(*c));
    if (c == NULL) {
        api->log(HELIOS_LOG_ERROR, MG_NAME, "out of memory allocating the configuration");
        return -1;
    }
    c->key = key;
    c->m = (uint32_t)m;
    *cfg = c;
    return 0;
}

static void mg_config_free(void *cfg)
{
    free(cfg);
}

/* ---- per-worker state ---- */

/* What a worker remembers of one backend of the list its table describes. */
typedef struct mg_seen {
    uint32_t weight;         /* when the table was built */
    unsigned char candidate; /* scratch for the fallback walk (mg_walk) */
} mg_seen;

typedef struct mg_worker {
    /* The list TABLE was built for; compared, never read. */
    alignas(HELIOS_BALANCER_CACHE_LINE) const helios_backends *list;
    size_t n;        /* backends in LIST */
    int built;       /* 0: the build failed, pick() hashes modulo n */
    uint16_t *table; /* cfg->m slots, each an index in LIST */
    mg_seen *seen;   /* n entries */
    size_t seen_cap;
    size_t check;    /* backend whose weight the next pick compares */
    unsigned worker; /* index of this worker: only worker 0 logs warnings */
} mg_worker;

static int mg_worker_init(void *cfg, helios_worker *w, void **wstate)
{
    const mg_config *c = cfg;
    mg_worker *st = helios_balancer_wstate_new(api, MG_NAME, sizeof(mg_worker));
    if (st == NULL)
        return -1;
    uint16_t *table = malloc((size_t)c->m * sizeof(uint16_t));
    if (table == NULL) {
        free(st);
        api->log(HELIOS_LOG_ERROR, MG_NAME, "out of memory allocating a %u-slot table",
                 (unsigned)c->m);
        return -1;
    }
    st->table = table;
    st->worker = api->worker_index(w);
    *wstate = st;
    return 0;
}

static void mg_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    mg_worker *st = wstate;
    free(st->table);
    free(st->seen);
    helios_balancer_worker_fini(cfg, w, st);
}

/* ---- table ---- */

/* One backend while the table is built. */
typedef struct mg_entry {
    const char *name;
    uint32_t index;  /* in the list */
    uint32_t weight; /* 1..10000 */
    uint32_t skip;   /* step of its permutation, 1..M-1 */
    uint32_t pos;    /* next slot of its permutation to try */
    uint64_t target; /* fill turn it next waits for, scaled by the largest weight */
} mg_entry;

static int mg_entry_cmp(const void *a, const void *b)
{
    const mg_entry *x = a, *y = b;
    int d = strcmp(x->name, y->name);
    if (d != 0)
        return d;
    return (x->index > y->index) - (x->index < y->index);
}

/*
 * Fills TABLE for the N backends of LIST (the paper's Populate, with
 * weights). Backends take turns in name order; in turn t a backend of
 * weight w places one entry when t * w >= its target, then its target grows
 * by the largest weight, so the heaviest places every turn and one of half
 * its weight every other turn. Placing walks the backend's own permutation
 * (offset, offset + skip, ... mod M) to its first free slot. Every backend
 * places in turn 1, so each owns at least one slot when N <= M. Weights
 * come from SEEN. Returns 0, or -1 when out of memory.
 */
static int mg_fill(uint16_t *table, uint32_t m, const helios_backends *list, size_t n,
                   const mg_seen *seen)
{
    mg_entry *e = malloc(n * sizeof(*e));
    if (e == NULL)
        return -1;
    uint32_t max_weight = 1;
    for (size_t i = 0; i < n; i++) {
        const helios_backend *b = api->backends_at(list, i);
        const char *name = api->backend_name(b);
        size_t len = name != NULL ? strlen(name) : 0;
        e[i].name = name != NULL ? name : "";
        e[i].index = (uint32_t)i;
        e[i].weight = seen[i].weight;
        e[i].pos = (uint32_t)(helios_hash_bytes(e[i].name, len, MG_SEED_OFFSET) % m);
        e[i].skip = (uint32_t)(helios_hash_bytes(e[i].name, len, MG_SEED_SKIP) % (m - 1) + 1);
        e[i].target = 0;
        if (e[i].weight > max_weight)
            max_weight = e[i].weight;
    }
    qsort(e, n, sizeof(*e), mg_entry_cmp);

    memset(table, 0xff, (size_t)m * sizeof(*table)); /* all MG_EMPTY */
    uint32_t filled = 0;
    for (uint64_t turn = 1; filled < m; turn++) {
        for (size_t k = 0; k < n && filled < m; k++) {
            if (turn * e[k].weight < e[k].target)
                continue;
            e[k].target += max_weight;
            uint32_t p = e[k].pos;
            while (table[p] != MG_EMPTY) {
                p += e[k].skip;
                if (p >= m)
                    p -= m;
            }
            table[p] = (uint16_t)e[k].index;
            p += e[k].skip;
            e[k].pos = p >= m ? p - m : p;
            filled++;
        }
    }
    free(e);
    return 0;
}

/* Makes ST's table describe LIST and its current weights. On failure
 * ST->built is 0 and pick() hashes modulo n until the list changes again. */
static void mg_rebuild(mg_worker *st, const mg_config *cfg, const helios_backends *list, size_t n)
{
    st->list = list;
    st->n = n;
    st->built = 0;
    st->check = 0;
    if (n > st->seen_cap) {
        mg_seen *s = realloc(st->seen, n * sizeof(*s));
        if (s == NULL) {
            api->log(HELIOS_LOG_ERROR, MG_NAME, "out of memory for %zu backends", n);
            return;
        }
        st->seen = s;
        st->seen_cap = n;
    }
    if (n > MG_MAX_BACKENDS) {
        if (st->worker == 0)
            api->log(HELIOS_LOG_ERROR, MG_NAME,
                     "%zu backends, more than %u: using modulo hashing instead of the table", n,
                     MG_MAX_BACKENDS);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t w = api->backend_weight(api->backends_at(list, i));
        st->seen[i].weight = w > 0 ? w : 1;
    }
    if (mg_fill(st->table, cfg->m, list, n, st->seen) != 0) {
        api->log(HELIOS_LOG_ERROR, MG_NAME,
                 "out of memory building the table: using modulo hashing until the next change");
        return;
    }
    st->built = 1;
    if (st->worker == 0 && (uint64_t)n * 100 > cfg->m)
        api->log(HELIOS_LOG_WARN, MG_NAME,
                 "%zu backends share %u slots: below 100 slots per backend, a backend "
                 "change moves noticeably more than its share of keys; set table_size to a "
                 "prime above %zu",
                 n, (unsigned)cfg->m, n * 100);
}

/*
 * 1 when the table no longer fits the backends: another list (the core
 * never reuses a list's address; comparing the count too is a cheap guard),
 * or a weight that differs from the one the table was built with (the core
 * changes weights in place, with no new list and no backends_changed call).
 * One weight is compared per pick, in turn, so the check costs O(1) and a
 * change is noticed within n picks on each worker.
 */
static int mg_stale(mg_worker *st, const helios_backends *backends, size_t n)
{
    if (backends != st->list || n != st->n)
        return 1;
    if (!st->built)
        return 0;
    size_t i = st->check;
    st->check = i + 1 < st->n ? i + 1 : 0;
    uint32_t w = api->backend_weight(api->backends_at(backends, i));
    return (w > 0 ? w : 1) != st->seen[i].weight;
}

/* ---- hooks ---- */

/*
 * The slow path, when the backend of SLOT is not a candidate (unusable, or
 * tried by this request): walks the table from SLOT with a stride taken
 * from the key (1..M-1; M is prime, so the walk visits every slot) to the
 * first slot whose backend is a candidate. A stride of 1 would send all of
 * a failed backend's keys to the backends that happen to follow its slots,
 * unevenly; a per-key stride spreads them like the rest of the table. The
 * candidates are marked once first, so the walk costs table reads only.
 * -1 when there is no candidate.
 */
static int mg_walk(mg_worker *st, uint32_t m, const helios_backends *backends,
                   const helios_tried *tried, uint32_t slot, uint64_t h)
{
    size_t n = st->n;
    for (size_t i = 0; i < n; i++)
        st->seen[i].candidate = 0;
    int first = helios_balancer_scan(api, backends, n, tried, 0);
    if (first < 0)
        return -1;
    for (int i = first; i >= 0; i = helios_balancer_scan_next(api, backends, n, tried, 0, i))
        st->seen[i].candidate = 1;
    uint32_t stride = (uint32_t)(helios_hash_mix(h) % (m - 1) + 1);
    for (uint32_t k = 0; k < m; k++) {
        if (st->seen[st->table[slot]].candidate)
            return st->table[slot];
        slot += stride;
        if (slot >= m)
            slot -= m;
    }
    return first; /* only when more backends than slots left the candidates slotless */
}

static int mg_pick(helios_ctx *c, const helios_backends *backends, const helios_tried *tried)
{
    const mg_config *cfg = c->cfg;
    mg_worker *st = c->wstate;
    size_t n = helios_balancer_size(api, backends);
    if (n == 0)
        return -1;
    if (mg_stale(st, backends, n))
        mg_rebuild(st, cfg, backends, n);

    uint64_t h = helios_reqkey_hash(api, c->req, &cfg->key);
    if (!st->built) /* the table could not be built: hash % n, then the list */
        return helios_balancer_scan(api, backends, n, tried, (size_t)(h % n));
    uint32_t slot = (uint32_t)(h % cfg->m);
    size_t i = st->table[slot];
    if (helios_balancer_candidate(api, backends, tried, i))
        return (int)i;
    return mg_walk(st, cfg->m, backends, tried, slot, h);
}

/* ---- module descriptor ---- */

static const helios_balancer_hooks mg_balancer_hooks = {
    .size = sizeof(helios_balancer_hooks),
    .pick = mg_pick,          /* every upstream attempt, on the request's worker */
    .backends_changed = NULL, /* each worker rebuilds its own table when it sees the change */
};

static const helios_module mg_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(MG_NAME, "0.1.0"),
    .config_new = mg_config_new, /* `key`, `table_size` */
    .config_free = mg_config_free,
    .worker_init = mg_worker_init, /* the worker's lookup table */
    .worker_fini = mg_worker_fini,
    .filter = NULL,
    .handler = NULL,
    .balancer = &mg_balancer_hooks, /* used as an upstream's `balancer:` */
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &mg_module;
}
