/*
 * rate_limit.c - a filter that admits at most `rate` requests per second per
 * key, with bursts of up to `burst`, and answers 429 beyond that.
 *
 * The token bucket is kept in its GCRA form (one "theoretical arrival time"
 * per key instead of a token count and a refill time): a request is admitted
 * when the bucket's TAT, pushed one emission interval T = 1/rate further, is
 * not more than burst * T ahead of now. Same admissions as a token bucket of
 * size `burst` refilled at `rate`, with half the state and no float math.
 *
 * Local mode: one table per instance in the (shared) config, used by every
 * worker, so the limit is global to the process. The table is set-
 * associative: a key hashes to one 128-byte set of 7 entries guarded by that
 * set's own spinlock. Two workers only contend when they touch the same set
 * at the same moment, and each set is its own pair of cache lines, so there
 * is no lock everybody bounces. A full set evicts the entry with the
 * smallest TAT: the bucket closest to full, and one that carries no
 * information at all once its TAT is in the past (an absent key and a full
 * bucket behave alike). Memory is fixed: max_keys entries per table, and a
 * reload keeps the table of a policy whose zone, key and max_keys stay
 * (see rl_table), so a client being limited is still limited after it.
 *
 * Shared mode (`redis:`): the same algorithm runs as a Lua script inside
 * Redis (EVALSHA, EVAL when the script cache was flushed), on Redis' clock,
 * so several heliosd instances enforce one limit. Each worker owns one
 * hiredis async connection on its libev loop; the request PAUSEs until the
 * reply, a per-request timer or a connection error, and then `on_error`
 * decides: allow (fail open) or deny (503). Nothing blocks a worker. A
 * generation's requests wait for its first connection (start, reload)
 * rather than taking on_error for the moment after each reload.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ev.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <hiredis/adapters/libev.h>
#pragma GCC diagnostic pop

#include <helios.h>
#include <helios/util/reqkey.h>

#define RL_NAME "rate_limit"
#define RL_WAYS 7                    /* entries per set: 7 * 16 + 8 = 120 <= 128 bytes */
#define RL_KEY_ROUTE 100             /* our own key kind next to HELIOS_REQKEY_* */
#define RL_REDIS_PREFIX "helios:rl:" /* every Redis key we touch starts with this */
#define RL_BACKOFF_MIN_MS 100
#define RL_BACKOFF_MAX_MS 5000
#define RL_LOG_EVERY_MS 1000 /* at most one error line per worker and second */
/* An entry's TAT carries, in its top byte, which rate (emission interval)
 * it is counted in: a table kept across a reload is used by generations
 * with different rates at once. Microseconds of CLOCK_MONOTONIC fit in the
 * low 56 bits for 2283 years. */
#define RL_TAG_SHIFT 56
#define RL_TAT_MASK ((UINT64_C(1) << RL_TAG_SHIFT) - 1)
#define RL_RATES 256 /* distinct rates of one table in use at once */

static const helios_host_api *api;

/* ---- configuration ---- */

static const char *const rl_keys[] = {
    "rate", "burst", "key", "ipv4_prefix", "ipv6_prefix", "max_keys", "redis", "zone", NULL,
};
static const char *const rl_redis_keys[] = {"address", "timeout", "on_error", NULL};

/* One key: 16 bytes. key 0 means empty (a real hash of 0 is stored as 1). */
typedef struct rl_entry {
    uint64_t key;
    uint64_t tat_us; /* theoretical arrival time, microseconds (CLOCK_MONOTONIC),
                      * and the rate's tag in the top byte (RL_TAG_SHIFT) */
} rl_entry;

typedef struct rl_set {
    alignas(64) atomic_flag lock;
    rl_entry e[RL_WAYS];
} rl_set;

/*
 * Local mode's table, kept across reloads (nginx keeps a limit_req_zone
 * whose name and size are unchanged). Its identity is what gives its
 * entries their meaning: the zone name, the key expression (kind, header
 * or cookie name, address prefixes) and its size (max_keys). rate and
 * burst are not part of it: each entry is tagged with the rate it is
 * counted in, and a configuration with another rate converts what the
 * client owes, in requests, to its own rate when it first touches the
 * entry, capped at its burst (rl_rescale): the new rate and burst apply to
 * the kept buckets from then on, as nginx applies a new rate to a kept
 * zone's excess.
 *
 * Tables live in a registry of this file (the .so is never unloaded,
 * D4); config_new and config_free run on the main thread (D5). A new
 * generation's instance with the same identity as one of the running
 * generation's tables uses that very table: both generations' workers
 * then update the same entries under the same per-set spinlocks until the
 * old generation drains, so nothing counted in between is lost and no
 * copy is made. Several instances of one identity in a configuration are
 * matched in order (the first new one takes the first old one's table).
 */
typedef struct rl_table {
    struct rl_table *next; /* registry, in creation order */
    char *zone;
    helios_reqkey key;
    int ipv4_prefix, ipv6_prefix;
    size_t nsets;
    rl_set *sets;
    unsigned refs; /* configs that use it */
    uint64_t mark; /* build sequence of the newest config that uses it */
    /* rate tags: the emission interval of each, and how many configs use
     * it; set on the main thread before a worker can see the config */
    _Atomic uint64_t tag_t_us[RL_RATES];
    unsigned tag_refs[RL_RATES];
    unsigned tag_next; /* where the search for a free tag starts (round robin) */
} rl_table;

typedef struct rl_config {
    double rate;       /* requests per second */
    long long burst;   /* bucket size */
    uint64_t t_us;     /* emission interval 1e6 / rate, at least 1 us */
    uint64_t cap_us;   /* burst * t_us: how far the TAT may run ahead */
    helios_reqkey key; /* kind and header/cookie name; kind RL_KEY_ROUTE for route */
    int ipv4_prefix;   /* bits of an IPv4 client address that form the key */
    int ipv6_prefix;   /* same for IPv6 */
    const char *zone;  /* part of the Redis key: instances sharing a limit share it */
    /* local mode */
    size_t nsets;
    rl_set *sets;       /* = table->sets, copied for the request path */
    rl_table *table;    /* shared with other generations' configs (registry) */
    uint64_t tag;       /* this config's rate tag, shifted into place */
    uint64_t mark;      /* build sequence that made this config */
    uint64_t prev_mark; /* the table's mark before this config took it over */
    /* shared mode */
    int redis; /* 1 when `redis:` is configured */
    char redis_host[256];
    int redis_port;
    uint64_t timeout_ms;
    int fail_open; /* on_error: allow */
} rl_config;

static int rl_parse_double(const helios_conf *conf, const char *key, double *out)
{
    const char *s;
    const helios_conf *n = api->conf_get(conf, key);
    if (n == NULL || (s = api->conf_scalar(n)) == NULL) {
        api->conf_error(n ? n : conf, "%s is required: a number of requests per second", key);
        return -1;
    }
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v > 0) || v > 1e7) {
        api->conf_error(n, "\"%s\" is not a number of requests per second in (0, 1e7]", s);
        return -1;
    }
    *out = v;
    return 0;
}

/* "127.0.0.1:6379", "[::1]:6379" or "localhost:6379". */
static int rl_parse_address(rl_config *cfg, const helios_conf *n, const char *s)
{
    const char *colon = strrchr(s, ':');
    const char *host = s;
    size_t hl = colon ? (size_t)(colon - s) : 0;
    if (colon && s[0] == '[' && hl >= 2 && s[hl - 1] == ']') {
        host = s + 1;
        hl -= 2;
    }
    char *end;
    long port = colon ? strtol(colon + 1, &end, 10) : 0;
    if (!colon || hl == 0 || hl >= sizeof(cfg->redis_host) || *end != '\0' || port < 1 ||
        port > 65535) {
        api->conf_error(n, "\"%s\" is not HOST:PORT (e.g. 127.0.0.1:6379)", s);
        return -1;
    }
    char name[256];
    memcpy(name, host, hl);
    name[hl] = '\0';
    /* Resolved here, on the main thread: hiredis' connect would otherwise
     * run getaddrinfo (possibly a DNS query) on a worker at every reconnect. */
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int gai = getaddrinfo(name, NULL, &hints, &ai);
    if (gai != 0 || ai == NULL) {
        api->conf_error(n, "cannot resolve \"%s\": %s", name, gai_strerror(gai));
        return -1;
    }
    const void *a = ai->ai_family == AF_INET6
                        ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                        : (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
    inet_ntop(ai->ai_family, a, cfg->redis_host, sizeof(cfg->redis_host));
    freeaddrinfo(ai);
    cfg->redis_port = (int)port;
    return 0;
}

static int rl_parse_redis(rl_config *cfg, const helios_conf *r)
{
    if (api->conf_kind(r) != HELIOS_CONF_MAP) {
        api->conf_error(r, "redis must be a map: {address: HOST:PORT, timeout: 50ms, "
                           "on_error: allow|deny}");
        return -1;
    }
    if (api->conf_check_keys(r, rl_redis_keys) > 0)
        return -1;
    const char *addr, *on_error;
    int bad = 0;
    if (api->conf_str(r, "address", "127.0.0.1:6379", &addr) < 0 ||
        rl_parse_address(cfg, api->conf_get(r, "address") ? api->conf_get(r, "address") : r, addr) <
            0)
        bad = 1;
    if (api->conf_duration_ms(r, "timeout", 50, &cfg->timeout_ms) < 0)
        bad = 1;
    else if (cfg->timeout_ms == 0) {
        api->conf_error(api->conf_get(r, "timeout"), "timeout must be at least 1ms");
        bad = 1;
    }
    if (api->conf_str(r, "on_error", "allow", &on_error) < 0) {
        bad = 1;
    } else if (strcmp(on_error, "allow") == 0 || strcmp(on_error, "deny") == 0) {
        cfg->fail_open = on_error[0] == 'a';
    } else {
        api->conf_error(api->conf_get(r, "on_error"),
                        "\"%s\" is not allow (fail open) or deny (503)", on_error);
        bad = 1;
    }
    cfg->redis = 1;
    return bad ? -1 : 0;
}

static pthread_mutex_t rl_tables_lock = PTHREAD_MUTEX_INITIALIZER;
static rl_table *rl_tables;

/*
 * Which configuration build is this? 0 for the first one (generation() is
 * 0 while it is built), else the number of successful reloads after it
 * succeeds: reloads + 1. So the running generation was built with
 * sequence `reloads`, and only its tables may be taken over; a table only
 * a draining older generation still uses (its policy was removed) is
 * never revived: a removed then re-added policy starts fresh.
 */
static void rl_build_seq(uint64_t *building, uint64_t *running)
{
    helios_core_stats st = {.size = sizeof(st)};
    if (!HELIOS_API_HAS(api, generation) || !HELIOS_API_HAS(api, core_stats) ||
        api->generation() == 0 || api->core_stats(&st) != 0) {
        *building = 0;
        *running = UINT64_MAX; /* nothing to take over */
        return;
    }
    *building = st.reloads + 1;
    *running = st.reloads;
}

static int rl_same_identity(const rl_table *t, const rl_config *cfg, size_t nsets)
{
    return t->nsets == nsets && t->key.kind == cfg->key.kind &&
           strcmp(t->key.name, cfg->key.name) == 0 && strcmp(t->zone, cfg->zone) == 0 &&
           t->ipv4_prefix == cfg->ipv4_prefix && t->ipv6_prefix == cfg->ipv6_prefix;
}

static void rl_key_text(const helios_reqkey *k, char *buf, size_t len)
{
    const char *kind = k->kind == RL_KEY_ROUTE           ? "route"
                       : k->kind == HELIOS_REQKEY_PATH   ? "path"
                       : k->kind == HELIOS_REQKEY_HEADER ? "header:"
                       : k->kind == HELIOS_REQKEY_COOKIE ? "cookie:"
                                                         : "client";
    snprintf(buf, len, "%s%s", kind, k->name);
}

/* Gives CFG the tag of its rate in T (registry lock held). Returns 0, or -1
 * when RL_RATES other rates are in use by live configurations. A tag that
 * no config uses any more is given out again as late as possible; an
 * entry still carrying it by then is read with the new tag's rate (and
 * clamped to the policy's burst), which at worst misjudges one stale
 * bucket once. */
static int rl_tag_get(rl_table *t, rl_config *cfg)
{
    unsigned tag = RL_RATES;
    for (unsigned i = 0; i < RL_RATES && tag == RL_RATES; i++)
        if (atomic_load(&t->tag_t_us[i]) == cfg->t_us) /* in use, or its entries' rate */
            tag = i;
    for (unsigned k = 0; k < RL_RATES && tag == RL_RATES; k++) {
        unsigned i = (t->tag_next + k) % RL_RATES;
        if (t->tag_refs[i] == 0) {
            tag = i;
            atomic_store(&t->tag_t_us[i], cfg->t_us);
            t->tag_next = (i + 1) % RL_RATES;
        }
    }
    if (tag == RL_RATES)
        return -1;
    t->tag_refs[tag]++;
    cfg->tag = (uint64_t)tag << RL_TAG_SHIFT;
    return 0;
}

/* Takes over the running generation's table of CFG's identity, or makes a
 * new one. Returns 0, or -1 when out of memory. */
static int rl_table_get(rl_config *cfg, size_t nsets)
{
    uint64_t building, running;
    rl_build_seq(&building, &running);
    pthread_mutex_lock(&rl_tables_lock);
    rl_table *t = NULL;
    for (rl_table *it = rl_tables; it != NULL && t == NULL; it = it->next)
        if (it->mark == running && rl_same_identity(it, cfg, nsets))
            t = it;
    cfg->mark = building;
    if (t != NULL && rl_tag_get(t, cfg) < 0) {
        pthread_mutex_unlock(&rl_tables_lock);
        api->log(HELIOS_LOG_WARN, RL_NAME,
                 "zone %s: %d other rates still in use by draining configurations: "
                 "buckets start full",
                 cfg->zone, RL_RATES);
        t = NULL;
        pthread_mutex_lock(&rl_tables_lock);
    }
    if (t != NULL) {
        cfg->prev_mark = t->mark;
        t->mark = building;
        t->refs++;
        pthread_mutex_unlock(&rl_tables_lock);
        cfg->table = t;
        cfg->sets = t->sets;
        api->log(HELIOS_LOG_INFO, RL_NAME, "zone %s: buckets kept across the reload", cfg->zone);
        return 0;
    }
    pthread_mutex_unlock(&rl_tables_lock);
    if (building != 0) {
        char key[HELIOS_REQKEY_NAME_MAX + 16];
        rl_key_text(&cfg->key, key, sizeof(key));
        api->log(HELIOS_LOG_INFO, RL_NAME,
                 "zone %s: new buckets (the running configuration has no local limiter of this "
                 "zone with key %s, prefixes /%d and /%d and max_keys %zu)",
                 cfg->zone, key, cfg->ipv4_prefix, cfg->ipv6_prefix, nsets * RL_WAYS);
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -1;
    t->sets = aligned_alloc(64, nsets * sizeof(rl_set));
    if (t->sets == NULL) {
        free(t);
        return -1;
    }
    memset(t->sets, 0, nsets * sizeof(rl_set));
    for (size_t i = 0; i < nsets; i++)
        atomic_flag_clear(&t->sets[i].lock);
    t->nsets = nsets;
    t->key = cfg->key;
    t->ipv4_prefix = cfg->ipv4_prefix;
    t->ipv6_prefix = cfg->ipv6_prefix;
    t->refs = 1;
    t->mark = building;
    rl_tag_get(t, cfg); /* a new table has every tag free */
    t->zone = strdup(cfg->zone);
    if (t->zone == NULL) {
        free(t->sets);
        free(t);
        return -1;
    }
    cfg->prev_mark = UINT64_MAX;
    cfg->table = t;
    cfg->sets = t->sets;
    pthread_mutex_lock(&rl_tables_lock);
    rl_table **tail;
    for (tail = &rl_tables; *tail != NULL; tail = &(*tail)->next)
        ;
    *tail = t;
    pthread_mutex_unlock(&rl_tables_lock);
    return 0;
}

/* CFG is gone: the table goes with its last config. A config of a build
 * that failed gives the table back to the running generation. */
static void rl_table_put(rl_config *cfg)
{
    rl_table *t = cfg->table, *dead = NULL;
    if (t == NULL)
        return;
    pthread_mutex_lock(&rl_tables_lock);
    if (t->mark == cfg->mark)
        t->mark = cfg->prev_mark;
    t->tag_refs[cfg->tag >> RL_TAG_SHIFT]--;
    if (--t->refs == 0) {
        for (rl_table **pp = &rl_tables; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == t) {
                *pp = t->next;
                break;
            }
        }
        dead = t;
    }
    pthread_mutex_unlock(&rl_tables_lock);
    if (dead != NULL) {
        free(dead->zone);
        free(dead->sets);
        free(dead);
    }
}

static void rl_config_free(void *p)
{
    rl_config *cfg = p;
    if (cfg == NULL)
        return;
    rl_table_put(cfg);
    free(cfg);
}

static int rl_config_new(const helios_conf *conf, void **out)
{
    if (api->conf_kind(conf) != HELIOS_CONF_MAP) {
        api->conf_error(conf, "rate_limit needs a config: {rate: N, burst: N}");
        return -1;
    }
    if (api->conf_check_keys(conf, rl_keys) > 0)
        return -1;
    rl_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL) {
        api->conf_error(conf, "out of memory");
        return -1;
    }
    int bad = 0;
    long long v4, v6, max_keys;
    if (rl_parse_double(conf, "rate", &cfg->rate) < 0)
        bad = 1;
    if (api->conf_int(conf, "burst", bad ? 1 : (long long)ceil(cfg->rate), 1, 1000000000,
                      &cfg->burst) < 0)
        bad = 1;
    if (api->conf_int(conf, "ipv4_prefix", 32, 0, 32, &v4) < 0 ||
        api->conf_int(conf, "ipv6_prefix", 64, 0, 128, &v6) < 0 ||
        api->conf_int(conf, "max_keys", 100000, 1, 100000000, &max_keys) < 0 ||
        api->conf_str(conf, "zone", "default", &cfg->zone) < 0)
        bad = 1;
    const char *key;
    if (api->conf_str(conf, "key", "client", &key) < 0)
        bad = 1;
    else if (strcmp(key, "route") == 0)
        cfg->key.kind = RL_KEY_ROUTE;
    else if (helios_reqkey_parse(api, conf, &cfg->key) < 0)
        bad = 1;
    const helios_conf *redis = api->conf_get(conf, "redis");
    if (redis != NULL && rl_parse_redis(cfg, redis) < 0)
        bad = 1;
    if (bad) {
        rl_config_free(cfg);
        return -1;
    }
    cfg->ipv4_prefix = (int)v4;
    cfg->ipv6_prefix = (int)v6;
    cfg->t_us = (uint64_t)llround(1e6 / cfg->rate);
    if (cfg->t_us == 0)
        cfg->t_us = 1;
    cfg->cap_us = cfg->t_us * (uint64_t)cfg->burst;
    if (!cfg->redis) {
        cfg->nsets = ((size_t)max_keys + RL_WAYS - 1) / RL_WAYS;
        if (rl_table_get(cfg, cfg->nsets) < 0) {
            api->conf_error(api->conf_get(conf, "max_keys") ? api->conf_get(conf, "max_keys")
                                                            : conf,
                            "cannot allocate %zu bytes", cfg->nsets * sizeof(rl_set));
            rl_config_free(cfg);
            return -1;
        }
    }
    *out = cfg;
    return 0;
}

/* ---- keys ---- */

/* The client address cut to its prefix, hashed with its family. */
static uint64_t rl_client_hash(const rl_config *cfg, helios_request *r)
{
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    const struct sockaddr *sa = api->req_client(r);
    unsigned char b[17] = {0};
    const unsigned char *a = NULL;
    int bits = 0;
    if (sa != NULL && sa->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, sa, sizeof(in));
        memcpy(b + 1, &in.sin_addr, 4);
        b[0] = 4;
        bits = cfg->ipv4_prefix;
    } else if (sa != NULL && sa->sa_family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, sa, sizeof(in6));
        a = in6.sin6_addr.s6_addr;
        if (memcmp(a, v4mapped, sizeof(v4mapped)) == 0) {
            memcpy(b + 1, a + 12, 4);
            b[0] = 4;
            bits = cfg->ipv4_prefix;
        } else {
            memcpy(b + 1, a, 16);
            b[0] = 6;
            bits = cfg->ipv6_prefix;
        }
    } else {
        return helios_hash_bytes("", 0, 0);
    }
    size_t len = b[0] == 4 ? 4 : 16;
    for (size_t i = 0; i < len; i++) {
        int keep = bits - (int)i * 8;
        if (keep <= 0)
            b[1 + i] = 0;
        else if (keep < 8)
            b[1 + i] &= (unsigned char)(0xff << (8 - keep));
    }
    return helios_hash_bytes(b, 1 + len, 0);
}

static uint64_t rl_key_hash(const rl_config *cfg, helios_request *r)
{
    helios_buf v = {NULL, 0};
    switch (cfg->key.kind) {
    case RL_KEY_ROUTE: {
        const char *name = api->req_route(r);
        return helios_hash_bytes(name, strlen(name), 1);
    }
    case HELIOS_REQKEY_PATH: v = api->req_path(r); return helios_hash_bytes(v.ptr, v.len, 2);
    case HELIOS_REQKEY_HEADER: v = api->req_header(r, cfg->key.name); break;
    case HELIOS_REQKEY_COOKIE: v = helios_reqkey_cookie(api, r, &cfg->key); break;
    default: break;
    }
    if (v.ptr != NULL && v.len > 0)
        return helios_hash_bytes(v.ptr, v.len, 3);
    return rl_client_hash(cfg, r); /* absent header/cookie: limit per client */
}

/* ---- the decision and its headers ---- */

/* What the client is told; filled by the local table or the Redis script. */
typedef struct rl_verdict {
    int allowed;
    long long remaining; /* requests admitted right now */
    uint64_t reset_us;   /* until the bucket is full again */
    uint64_t retry_us;   /* until the next request would be admitted (denied only) */
} rl_verdict;

static uint64_t rl_ceil_s(uint64_t us)
{
    return (us + 999999) / 1000000;
}

/*
 * Stacked limiters (a global one and a route's): the client is told about
 * one policy, the most restrictive, as the IETF RateLimit headers draft
 * asks: the limiter that refused, else the one with the fewest requests
 * remaining (on a tie, the longer reset). Each instance folds its verdict
 * into the request variable `rate_limit_policy` ("LIMIT REMAINING RESET
 * DENIED"), and every instance writes the headers from that variable, so
 * whichever runs last writes the same tightest values.
 */
#define RL_POLICY_VAR "rate_limit_policy"

typedef struct rl_policy {
    long long limit, remaining;
    unsigned long long reset_s;
    int denied;
} rl_policy;

static int rl_policy_get(helios_request *r, rl_policy *p)
{
    if (!HELIOS_API_HAS(api, req_var_get))
        return -1;
    helios_buf b = api->req_var_get(r, RL_POLICY_VAR);
    char s[96];
    if (b.ptr == NULL || b.len >= sizeof(s))
        return -1;
    memcpy(s, b.ptr, b.len);
    s[b.len] = '\0';
    return sscanf(s, "%lld %lld %llu %d", &p->limit, &p->remaining, &p->reset_s, &p->denied) == 4
               ? 0
               : -1;
}

/* Folds this instance's verdict into the request's tightest policy. */
static void rl_policy_note(const rl_config *cfg, helios_request *r, const rl_verdict *v)
{
    if (!HELIOS_API_HAS(api, req_var_set))
        return;
    rl_policy cur, me = {cfg->burst, v->remaining, rl_ceil_s(v->reset_us), !v->allowed};
    if (rl_policy_get(r, &cur) == 0 && !me.denied &&
        (cur.denied || cur.remaining < me.remaining ||
         (cur.remaining == me.remaining && cur.reset_s >= me.reset_s)))
        return; /* the one already there is at least as tight */
    char buf[96];
    snprintf(buf, sizeof(buf), "%lld %lld %llu %d", me.limit, me.remaining, me.reset_s, me.denied);
    api->req_var_set(r, RL_POLICY_VAR, buf);
}

static void rl_set_headers(const rl_config *cfg, helios_request *r, const rl_verdict *v)
{
    rl_policy p = {cfg->burst, v->remaining, rl_ceil_s(v->reset_us), !v->allowed};
    rl_policy_get(r, &p); /* the tightest of the stack, when there is one */
    char buf[32];
    snprintf(buf, sizeof(buf), "%lld", p.limit);
    api->resp_header_set(r, "RateLimit-Limit", buf);
    snprintf(buf, sizeof(buf), "%lld", p.remaining);
    api->resp_header_set(r, "RateLimit-Remaining", buf);
    snprintf(buf, sizeof(buf), "%llu", p.reset_s);
    api->resp_header_set(r, "RateLimit-Reset", buf);
}

static int rl_deny(const rl_config *cfg, helios_request *r, const rl_verdict *v)
{
    char buf[32];
    uint64_t s = rl_ceil_s(v->retry_us);
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)(s ? s : 1));
    api->resp_header_set(r, "Retry-After", buf);
    rl_policy_note(cfg, r, v);
    rl_set_headers(cfg, r, v);
    /* metrics and log modules count refusals by this variable (ABI 1.1) */
    if (HELIOS_API_HAS(api, req_var_set))
        api->req_var_set(r, "rate_limit", "limited");
    static const char body[] = "429 Too Many Requests\n";
    if (api->respond(r, 429, "text/plain; charset=utf-8", body, sizeof(body) - 1) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

/*
 * A TAT counted at another rate (a reload changed it; the table was kept):
 * the requests the client owes carry over, as nginx carries a zone's
 * excess: DEBT microseconds at the other emission interval are
 * DEBT / T_other requests, which cost that many of our intervals.
 */
static uint64_t rl_rescale(const rl_config *cfg, uint64_t raw, uint64_t now)
{
    uint64_t tat = raw & RL_TAT_MASK;
    if (tat <= now)
        return tat; /* a full bucket is full at any rate */
    uint64_t other =
        atomic_load_explicit(&cfg->table->tag_t_us[raw >> RL_TAG_SHIFT], memory_order_relaxed);
    if (other == 0)
        return tat;
    double debt = (double)(tat - now) * (double)cfg->t_us / (double)other;
    return debt >= (double)cfg->cap_us ? now + cfg->cap_us : now + (uint64_t)debt;
}

/* GCRA step of local mode (the Lua script mirrors it for shared mode).
 * *TAT carries the tag of the rate it was counted at. */
static void rl_gcra(const rl_config *cfg, uint64_t *tat, uint64_t now, rl_verdict *v)
{
    uint64_t t = *tat & RL_TAT_MASK;
    if ((*tat & ~RL_TAT_MASK) != cfg->tag) {
        /* converted once, from then on it drains at our rate */
        t = rl_rescale(cfg, *tat, now);
        *tat = t | cfg->tag;
    }
    uint64_t base = t > now ? t : now;
    if (base - now > cfg->cap_us)
        base = now + cfg->cap_us; /* owed more than this policy's burst: empty */
    uint64_t next = base + cfg->t_us;
    if (next - now <= cfg->cap_us) {
        *tat = next | cfg->tag;
        v->allowed = 1;
        v->remaining = (long long)((cfg->cap_us - (next - now)) / cfg->t_us);
        v->reset_us = next - now;
        v->retry_us = 0;
    } else {
        v->allowed = 0;
        v->remaining = 0;
        v->reset_us = base - now;
        v->retry_us = next - now - cfg->cap_us;
    }
}

static uint64_t rl_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Local mode: find or claim KEY's entry in its set and apply one request. */
static void rl_local(rl_config *cfg, uint64_t key, rl_verdict *v)
{
    if (key == 0)
        key = 1;
    rl_set *s = &cfg->sets[key % cfg->nsets];
    uint64_t now = rl_now_us(); /* read outside the lock: a syscall-free vDSO call */
    while (atomic_flag_test_and_set_explicit(&s->lock, memory_order_acquire))
        ;
    rl_entry *e = NULL, *victim = &s->e[0];
    for (int i = 0; i < RL_WAYS; i++) {
        if (s->e[i].key == key) {
            e = &s->e[i];
            break;
        }
        if (s->e[i].key == 0 ||
            (victim->key != 0 && (s->e[i].tat_us & RL_TAT_MASK) < (victim->tat_us & RL_TAT_MASK)))
            victim = &s->e[i];
    }
    if (e == NULL) {
        /* New key: replace an empty slot, else the fullest bucket. */
        e = victim;
        e->key = key;
        e->tat_us = cfg->tag; /* TAT 0: a full bucket */
    }
    rl_gcra(cfg, &e->tat_us, now, v);
    atomic_flag_clear_explicit(&s->lock, memory_order_release);
}

/* ---- shared mode: per-worker Redis connection ---- */

/*
 * KEYS[1] the bucket; ARGV[1] emission interval (us); ARGV[2] burst * interval.
 * Returns {allowed, remaining, reset_us, retry_us}. Redis' own TIME is the
 * clock, so instances on different hosts agree. Keys expire once full.
 */
static const char rl_lua[] = "local t = redis.call('TIME')\n"
                             "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
                             "local T = tonumber(ARGV[1])\n"
                             "local cap = tonumber(ARGV[2])\n"
                             "local tat = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
                             "local base = tat\n"
                             "if base < now then base = now end\n"
                             "if base - now > cap then base = now + cap end\n"
                             "local nxt = base + T\n"
                             "if nxt - now <= cap then\n"
                             "  redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX',\n"
                             "             math.floor((nxt - now) / 1000) + 1)\n"
                             "  return {1, math.floor((cap - (nxt - now)) / T), nxt - now, 0}\n"
                             "end\n"
                             "return {0, 0, base - now, nxt - now - cap}\n";

typedef struct rl_worker {
    rl_config *cfg;
    helios_worker *w;
    struct ev_loop *loop;
    redisAsyncContext *ac; /* NULL while disconnected */
    int connected;
    int closing;    /* worker_fini: callbacks must not resume */
    char sha[41];   /* from SCRIPT LOAD; "" until known */
    ev_timer retry; /* reconnect after backoff */
    uint64_t backoff_ms;
    uint64_t last_log_ms;
    unsigned long suppressed; /* error lines not written since last_log_ms */
    int ever_connected;       /* 0 during the generation's first connect */
    struct rl_req *waiting;   /* requests waiting for that first connect */
} rl_worker;

/* Per-request record. In shared mode it lives outside the request arena
 * (malloc) because a Redis reply may arrive after the request ended; it is
 * freed when both on_log has run (done) and Redis has answered. */
typedef struct rl_req {
    rl_verdict v;
    int have_verdict;            /* add RateLimit-* to the response */
    int heap;                    /* malloc'd (shared mode) */
    int done;                    /* on_log ran: the request must not be touched */
    int in_redis;                /* a command with this record as privdata is pending */
    int settled;                 /* resumed already (reply, timeout or error) */
    int busy;                    /* rl_finish is answering: on_log must not free */
    int used_eval;               /* the script text was sent (EVAL), no more fallback */
    struct rl_req *next_waiting; /* in ws->waiting (in_redis is set meanwhile) */
    uint64_t key;
    helios_request *req;
    rl_worker *ws;
    helios_timer *timer;
} rl_req;

static void rl_log_error(rl_worker *ws, const char *what, const char *detail)
{
    uint64_t now = api->now_ms(ws->w);
    if (ws->last_log_ms != 0 && now - ws->last_log_ms < RL_LOG_EVERY_MS) {
        ws->suppressed++;
        return;
    }
    api->log(HELIOS_LOG_ERROR, RL_NAME,
             "redis %s:%d: %s: %s; applying on_error: %s (%lu similar lines suppressed)",
             ws->cfg->redis_host, ws->cfg->redis_port, what, detail ? detail : "",
             ws->cfg->fail_open ? "allow" : "deny", ws->suppressed);
    ws->last_log_ms = now;
    ws->suppressed = 0;
}

static void rl_connect(rl_worker *ws);

static void rl_retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    rl_connect(t->data);
}

static void rl_schedule_reconnect(rl_worker *ws)
{
    if (ws->closing)
        return;
    ev_timer_stop(ws->loop, &ws->retry);
    ev_timer_set(&ws->retry, (double)ws->backoff_ms / 1000.0, 0.);
    ev_timer_start(ws->loop, &ws->retry);
    ws->backoff_ms =
        ws->backoff_ms * 2 > RL_BACKOFF_MAX_MS ? RL_BACKOFF_MAX_MS : ws->backoff_ms * 2;
}

static void rl_script_loaded(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    rl_worker *ws = priv;
    redisReply *rp = reply;
    if (rp != NULL && rp->type == REDIS_REPLY_STRING && rp->len == 40) {
        memcpy(ws->sha, rp->str, 40);
        ws->sha[40] = '\0';
    }
}

static void rl_finish(rl_req *rr, int error, const char *what, const char *detail);
static int rl_send(rl_req *rr);
static void rl_req_release(rl_req *rr);

/* The generation's first connect ended: the requests that waited for it
 * are sent, or get on_error. Called with ws->connected set or not. */
static void rl_flush_waiting(rl_worker *ws, const char *err)
{
    rl_req *rr = NULL;
    while (ws->waiting != NULL) { /* pushed in front: reverse, oldest first */
        rl_req *w = ws->waiting;
        ws->waiting = w->next_waiting;
        w->next_waiting = rr;
        rr = w;
    }
    while (rr != NULL) {
        rl_req *next = rr->next_waiting;
        rr->next_waiting = NULL;
        rr->in_redis = 0;
        if (rr->done || rr->settled)
            rl_req_release(rr); /* ended, or timed out, while waiting */
        else if (err != NULL)
            rl_finish(rr, 1, "connect failed", err);
        else if (rl_send(rr) != 0)
            rl_finish(rr, 1, "send failed", ws->ac ? ws->ac->errstr : "");
        rr = next;
    }
}

static void rl_connected(const redisAsyncContext *ac, int status)
{
    rl_worker *ws = ac->data;
    if (ws == NULL)
        return; /* worker_fini detached it */
    ws->ever_connected = 1;
    if (status != REDIS_OK) {
        rl_log_error(ws, "connect failed", ac->errstr);
        ws->ac = NULL; /* hiredis frees it after this callback */
        ws->connected = 0;
        rl_flush_waiting(ws, ac->errstr);
        rl_schedule_reconnect(ws);
        return;
    }
    ws->connected = 1;
    ws->backoff_ms = RL_BACKOFF_MIN_MS;
    api->log(HELIOS_LOG_INFO, RL_NAME, "worker %u connected to redis %s:%d",
             api->worker_index(ws->w), ws->cfg->redis_host, ws->cfg->redis_port);
    redisAsyncCommand(ws->ac, rl_script_loaded, ws, "SCRIPT LOAD %s", rl_lua);
    rl_flush_waiting(ws, NULL); /* EVAL: the SHA is not known yet */
}

static void rl_disconnected(const redisAsyncContext *ac, int status)
{
    rl_worker *ws = ac->data;
    if (ws == NULL)
        return; /* worker_fini detached it */
    ws->ac = NULL;
    ws->connected = 0;
    ws->sha[0] = '\0';
    if (ws->closing)
        return;
    rl_log_error(ws, "connection lost", status == REDIS_OK ? "closed" : ac->errstr);
    rl_schedule_reconnect(ws);
}

static void rl_connect(rl_worker *ws)
{
    redisAsyncContext *ac = redisAsyncConnect(ws->cfg->redis_host, ws->cfg->redis_port);
    if (ac == NULL || ac->err) {
        rl_log_error(ws, "connect failed", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        rl_schedule_reconnect(ws);
        return;
    }
    ac->data = ws;
    ws->ac = ac;
    redisLibevAttach(ws->loop, ac);
    redisAsyncSetConnectCallback(ac, rl_connected);
    redisAsyncSetDisconnectCallback(ac, rl_disconnected);
}

static int rl_worker_init(void *p, helios_worker *w, void **wstate)
{
    rl_config *cfg = p;
    if (!cfg->redis)
        return 0; /* local mode keeps everything in cfg */
    rl_worker *ws = calloc(1, sizeof(*ws));
    if (ws == NULL) {
        api->log(HELIOS_LOG_ERROR, RL_NAME, "out of memory allocating worker state");
        return -1;
    }
    ws->cfg = cfg;
    ws->w = w;
    ws->loop = api->worker_ev_loop(w);
    ws->backoff_ms = RL_BACKOFF_MIN_MS;
    ev_timer_init(&ws->retry, rl_retry_cb, 0., 0.);
    ws->retry.data = ws;
    rl_connect(ws); /* asynchronous: requests before it completes apply on_error */
    *wstate = ws;
    return 0;
}

static void rl_worker_fini(void *cfg, helios_worker *w, void *wstate)
{
    (void)cfg;
    (void)w;
    rl_worker *ws = wstate;
    if (ws == NULL)
        return;
    ws->closing = 1;
    ev_timer_stop(ws->loop, &ws->retry);
    if (ws->ac != NULL) {
        /* fini may run inside a hiredis callback (the generation's last
         * request ended in rl_reply): hiredis then frees the context, and
         * calls rl_disconnected, only after that callback returns, when
         * WS is gone. Detached, the late callback does nothing. */
        ws->ac->data = NULL;
        redisAsyncFree(ws->ac); /* pending callbacks run with a NULL reply */
    }
    /* requests of this generation have all ended: waiting ones are done */
    for (rl_req *rr = ws->waiting, *next; rr != NULL; rr = next) {
        next = rr->next_waiting;
        rr->in_redis = 0;
        rl_req_release(rr);
    }
    free(ws);
}

/* ---- shared mode: one request ---- */

static void rl_req_release(rl_req *rr)
{
    if (rr->done && !rr->in_redis && !rr->busy)
        free(rr);
}

/* Redis could not decide: allow or 503 as configured. */
static int rl_on_error(rl_req *rr, const char *what, const char *detail)
{
    rl_log_error(rr->ws, what, detail);
    if (rr->ws->cfg->fail_open)
        return HELIOS_CONTINUE;
    static const char body[] = "503 Service Unavailable (rate limiter unavailable)\n";
    if (api->respond(rr->req, 503, "text/plain; charset=utf-8", body, sizeof(body) - 1) != 0)
        return HELIOS_ERROR;
    return HELIOS_RESPONDED;
}

/*
 * Ends the pause exactly once, and never after on_log. Answering 429 or 503
 * may finish the request on the spot, running on_log (which marks RR done);
 * BUSY keeps RR allocated across that, and resume is then skipped: the core
 * does not support resuming a finished request.
 */
static void rl_finish(rl_req *rr, int error, const char *what, const char *detail)
{
    rr->settled = 1;
    if (rr->timer != NULL) {
        api->timer_cancel(rr->timer);
        rr->timer = NULL;
    }
    rr->busy = 1;
    int status = error           ? rl_on_error(rr, what, detail)
                 : rr->v.allowed ? HELIOS_CONTINUE
                                 : rl_deny(rr->ws->cfg, rr->req, &rr->v);
    rr->busy = 0;
    if (rr->done) {
        rl_req_release(rr);
        return;
    }
    api->resume(rr->req, status); /* may run on_log, which frees RR */
}

static int rl_send(rl_req *rr);

static void rl_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    rl_req *rr = priv;
    redisReply *rp = reply;
    rr->in_redis = 0;
    if (rr->done || rr->settled || rr->ws->closing) {
        rl_req_release(rr);
        return;
    }
    if (rp == NULL) {
        rl_finish(rr, 1, "no reply", "connection closed");
        return;
    }
    if (rp->type == REDIS_REPLY_ERROR && !rr->used_eval && strncmp(rp->str, "NOSCRIPT", 8) == 0) {
        rr->ws->sha[0] = '\0'; /* script cache flushed: send the text */
        if (rl_send(rr) == 0)
            return;
        rl_finish(rr, 1, "EVAL failed", "cannot send");
        return;
    }
    if (rp->type != REDIS_REPLY_ARRAY || rp->elements != 4) {
        rl_finish(rr, 1, "unexpected reply",
                  rp->type == REDIS_REPLY_ERROR ? rp->str : "not an array of 4");
        return;
    }
    for (size_t i = 0; i < 4; i++) {
        if (rp->element[i]->type != REDIS_REPLY_INTEGER) {
            rl_finish(rr, 1, "unexpected reply", "not integers");
            return;
        }
    }
    rl_verdict *v = &rr->v;
    v->allowed = rp->element[0]->integer == 1;
    v->remaining = rp->element[1]->integer;
    v->reset_us = rp->element[2]->integer > 0 ? (uint64_t)rp->element[2]->integer : 0;
    v->retry_us = rp->element[3]->integer > 0 ? (uint64_t)rp->element[3]->integer : 0;
    rr->have_verdict = 1;
    if (v->allowed)
        rl_policy_note(rr->ws->cfg, rr->req, v);
    rl_finish(rr, 0, NULL, NULL);
}

static void rl_timeout(void *arg)
{
    rl_req *rr = arg;
    rr->timer = NULL; /* fired timers are freed by the core */
    if (rr->done || rr->settled)
        return;
    char ms[32];
    snprintf(ms, sizeof(ms), "no answer within %llums",
             (unsigned long long)rr->ws->cfg->timeout_ms);
    rl_finish(rr, 1, "timeout", ms);
}

/* Sends the script for RR's key. Returns 0, or -1 when nothing was sent. */
static int rl_send(rl_req *rr)
{
    rl_worker *ws = rr->ws;
    rl_config *cfg = ws->cfg;
    char key[160], t[24], cap[24];
    snprintf(key, sizeof(key), RL_REDIS_PREFIX "%s:%016llx", cfg->zone,
             (unsigned long long)rr->key);
    snprintf(t, sizeof(t), "%llu", (unsigned long long)cfg->t_us);
    snprintf(cap, sizeof(cap), "%llu", (unsigned long long)cfg->cap_us);
    int rc;
    if (ws->sha[0] != '\0') {
        rc = redisAsyncCommand(ws->ac, rl_reply, rr, "EVALSHA %s 1 %s %s %s", ws->sha, key, t, cap);
    } else {
        rr->used_eval = 1;
        rc = redisAsyncCommand(ws->ac, rl_reply, rr, "EVAL %s 1 %s %s %s", rl_lua, key, t, cap);
    }
    if (rc != REDIS_OK)
        return -1;
    rr->in_redis = 1;
    return 0;
}

static int rl_shared(helios_ctx *c, rl_config *cfg, uint64_t key)
{
    rl_worker *ws = c->wstate;
    rl_req *rr = calloc(1, sizeof(*rr));
    if (rr == NULL)
        return HELIOS_ERROR;
    rr->heap = 1;
    rr->key = key;
    rr->req = c->req;
    rr->ws = ws;
    *c->rstate = rr;
    if (ws->ac != NULL && !ws->connected && !ws->ever_connected) {
        /* The generation's first connect (start, reload) is under way:
         * wait for it, up to timeout, instead of letting on_error admit
         * everyone for the moment after each reload. */
        rr->in_redis = 1;
        rr->next_waiting = ws->waiting;
        ws->waiting = rr;
        rr->timer = api->timer_add(c->worker, cfg->timeout_ms, rl_timeout, rr);
        return HELIOS_PAUSE;
    }
    if (ws->ac == NULL || !ws->connected) {
        rr->settled = 1;
        return rl_on_error(rr, "not connected", "reconnecting");
    }
    if (rl_send(rr) != 0) {
        rr->settled = 1;
        return rl_on_error(rr, "send failed", ws->ac ? ws->ac->errstr : "");
    }
    rr->timer = api->timer_add(c->worker, cfg->timeout_ms, rl_timeout, rr);
    return HELIOS_PAUSE;
}

/* ---- hooks ---- */

static int rl_on_request_headers(helios_ctx *c)
{
    rl_config *cfg = c->cfg;
    uint64_t key = rl_key_hash(cfg, c->req);
    if (cfg->redis)
        return rl_shared(c, cfg, key);
    rl_req *rr = api->req_alloc(c->req, sizeof(*rr));
    if (rr == NULL)
        return HELIOS_ERROR;
    memset(rr, 0, sizeof(*rr));
    rl_local(cfg, key, &rr->v);
    rr->have_verdict = 1;
    *c->rstate = rr;
    if (rr->v.allowed)
        rl_policy_note(cfg, c->req, &rr->v);
    return rr->v.allowed ? HELIOS_CONTINUE : rl_deny(cfg, c->req, &rr->v);
}

static int rl_on_response_headers(helios_ctx *c)
{
    rl_req *rr = *c->rstate;
    if (rr != NULL && rr->have_verdict)
        rl_set_headers(c->cfg, c->req, &rr->v);
    return HELIOS_CONTINUE;
}

static void rl_on_log(helios_ctx *c)
{
    rl_req *rr = *c->rstate;
    if (rr == NULL || !rr->heap)
        return; /* local mode: in the request arena */
    rr->done = 1;
    if (rr->timer != NULL) {
        api->timer_cancel(rr->timer);
        rr->timer = NULL;
    }
    *c->rstate = NULL;
    rl_req_release(rr); /* or, if Redis still owes a reply, rl_reply frees it */
}

/* ---- module descriptor ---- */

static const helios_filter_hooks rl_filter_hooks = {
    .size = sizeof(helios_filter_hooks),
    .on_request_headers = rl_on_request_headers, /* decide; 429, or PAUSE for Redis */
    .on_request_body = NULL,
    .on_response_headers = rl_on_response_headers, /* RateLimit-* on admitted responses */
    .on_response_body = NULL,
    .on_log = rl_on_log, /* marks the record done; frees it unless Redis owes a reply */
};

static const helios_module rl_module = {
    /* magic, ABI version, descriptor size, name, version, build signature */
    HELIOS_MODULE_HEADER(RL_NAME, "0.1.0"),
    .config_new = rl_config_new, /* limits, key, and the local table (max_keys) */
    .config_free = rl_config_free,
    .worker_init = rl_worker_init, /* shared mode: the worker's Redis connection */
    .worker_fini = rl_worker_fini,
    .filter = &rl_filter_hooks, /* in `modules:` or a route's `filters:` */
    .handler = NULL,
    .balancer = NULL,
    .service = NULL,
    .health = NULL,
};

HELIOS_MODULE_ENTRY(const helios_host_api *host)
{
    api = host;
    return &rl_module;
}
