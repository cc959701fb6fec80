/*
 * helios/util/reqkey.h - "which client is this?" for modules that key on a
 * request: hash balancers, rate limiters, caches.
 *
 * Header-only helpers built on the host API, not part of the ABI (nothing
 * here crosses the module boundary; every function is static inline and
 * takes the host API table). A configuration string selects the key:
 *
 *   client        the client address after trusted_proxies (default)
 *   header:NAME   a request header's first value
 *   cookie:NAME   one cookie of the Cookie header(s)
 *   path          the decoded, normalised path without the query
 *
 * A header or cookie that is absent or empty falls back to the client
 * address, so requests without the key still stick per client.
 */
#ifndef HELIOS_UTIL_REQKEY_H
#define HELIOS_UTIL_REQKEY_H

#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "../../helios.h"
#include "http.h"

enum {
    HELIOS_REQKEY_CLIENT, /* api->req_client(): the address after trusted_proxies */
    HELIOS_REQKEY_HEADER, /* a request header's first value */
    HELIOS_REQKEY_COOKIE, /* one cookie of the Cookie header(s) */
    HELIOS_REQKEY_PATH,   /* api->req_path(): decoded, normalised, no query */
};

/* Longest header or cookie name accepted after "header:" / "cookie:". */
#define HELIOS_REQKEY_NAME_MAX 128

typedef struct helios_reqkey {
    int kind;                              /* HELIOS_REQKEY_* */
    size_t name_len;                       /* of NAME; 0 unless header or cookie */
    char name[HELIOS_REQKEY_NAME_MAX + 1]; /* header or cookie name, NUL-terminated */
} helios_reqkey;

/* Reads `key` from CONF into KEY. Returns 0, or -1 after a located error. */
static inline int helios_reqkey_parse(const helios_host_api *api, const helios_conf *conf,
                                      helios_reqkey *key)
{
    const char *s;
    memset(key, 0, sizeof(*key));
    if (api->conf_str(conf, "key", "client", &s) < 0)
        return -1;
    if (strcmp(s, "client") == 0) {
        key->kind = HELIOS_REQKEY_CLIENT;
        return 0;
    }
    if (strcmp(s, "path") == 0) {
        key->kind = HELIOS_REQKEY_PATH;
        return 0;
    }
    const char *name = NULL;
    if (strncmp(s, "header:", 7) == 0) {
        key->kind = HELIOS_REQKEY_HEADER;
        name = s + 7;
    } else if (strncmp(s, "cookie:", 7) == 0) {
        key->kind = HELIOS_REQKEY_COOKIE;
        name = s + 7;
    } else {
        api->conf_error(api->conf_get(conf, "key"),
                        "\"%s\" is not one of client, path, header:NAME, cookie:NAME", s);
        return -1;
    }
    size_t len = strlen(name);
    if (len == 0 || len > HELIOS_REQKEY_NAME_MAX) {
        api->conf_error(api->conf_get(conf, "key"),
                        "\"%s\": the name after ':' must have 1 to %d characters", s,
                        HELIOS_REQKEY_NAME_MAX);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (!helios_http_is_tchar((unsigned char)name[i])) {
            api->conf_error(api->conf_get(conf, "key"),
                            "\"%s\": '%c' is not allowed in a header or cookie name", s, name[i]);
            return -1;
        }
    }
    memcpy(key->name, name, len + 1);
    key->name_len = len;
    return 0;
}

/* MurmurHash3's 64-bit finalizer: every input bit affects every output bit,
 * which the FNV loop alone does not give for short keys. */
static inline uint64_t helios_hash_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdu;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53u;
    h ^= h >> 33;
    return h;
}

/* FNV-1a over LEN bytes, then the finalizer. Keys are short (an address, a
 * cookie value), so a byte loop costs little and reads simply. */
static inline uint64_t helios_hash_bytes(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325u ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3u;
    }
    return helios_hash_mix(h ^ len);
}

static inline int helios_reqkey_is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/*
 * Looks for cookie KEY->name in one Cookie header value ("a=1; b=2").
 * Cookie names are case-sensitive (RFC 6265 5.4). Returns 1 when the name is
 * there, with its value (spaces trimmed, surrounding double quotes removed,
 * possibly empty) in *OUT; 0 when it is not.
 */
static inline int helios_reqkey_cookie_in(helios_buf header, const helios_reqkey *key,
                                          helios_buf *out)
{
    const char *p = header.ptr, *end = header.ptr + header.len;
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        const char *pair_end = semi != NULL ? semi : end;
        while (p < pair_end && helios_reqkey_is_ows(*p))
            p++;
        const char *eq = memchr(p, '=', (size_t)(pair_end - p));
        if (eq != NULL) {
            const char *name_end = eq;
            while (name_end > p && helios_reqkey_is_ows(name_end[-1]))
                name_end--;
            if ((size_t)(name_end - p) == key->name_len &&
                memcmp(p, key->name, key->name_len) == 0) {
                const char *v = eq + 1, *v_end = pair_end;
                while (v < v_end && helios_reqkey_is_ows(*v))
                    v++;
                while (v_end > v && helios_reqkey_is_ows(v_end[-1]))
                    v_end--;
                if (v_end - v >= 2 && *v == '"' && v_end[-1] == '"') {
                    v++;
                    v_end--;
                }
                out->ptr = v;
                out->len = (size_t)(v_end - v);
                return 1;
            }
        }
        p = pair_end + (pair_end < end); /* past the ';' */
    }
    return 0;
}

static inline int helios_reqkey_is_cookie_header(helios_buf name)
{
    static const char lower[] = "cookie";
    if (name.len != sizeof(lower) - 1)
        return 0;
    for (size_t i = 0; i < name.len; i++) {
        unsigned char ch = (unsigned char)name.ptr[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch - 'A' + 'a');
        if (ch != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

/*
 * The value of cookie KEY->name, or {NULL, 0}. The first occurrence wins,
 * across every Cookie header in order (HTTP/2 clients may send one per
 * cookie). The walk over all headers only happens when a Cookie header
 * exists at all.
 */
static inline helios_buf helios_reqkey_cookie(const helios_host_api *api, helios_request *r,
                                              const helios_reqkey *key)
{
    helios_buf found = {NULL, 0};
    if (api->req_header(r, "cookie").ptr == NULL)
        return found;
    size_t n = api->req_header_count(r);
    for (size_t i = 0; i < n; i++) {
        helios_buf name, value;
        if (api->req_header_at(r, i, &name, &value) != 0)
            break;
        if (helios_reqkey_is_cookie_header(name) && helios_reqkey_cookie_in(value, key, &found))
            return found;
    }
    return found;
}

/*
 * Hash of the client address: the 4 bytes of an IPv4 address (also when it
 * arrives IPv4-mapped on a dual-stack listener, so both forms hash alike) or
 * the 16 bytes of an IPv6 address (scope id ignored). The whole address,
 * not nginx's first three octets: clients sharing a /24 are not sent to one
 * backend. Anything else (no address) hashes as the empty key.
 */
static inline uint64_t helios_reqkey_client_hash(const helios_host_api *api, helios_request *r)
{
    static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    const struct sockaddr *sa = api->req_client(r);
    if (sa != NULL && sa->sa_family == AF_INET) {
        struct sockaddr_in in;
        memcpy(&in, sa, sizeof(in));
        return helios_hash_bytes(&in.sin_addr, 4, 0);
    }
    if (sa != NULL && sa->sa_family == AF_INET6) {
        struct sockaddr_in6 in6;
        memcpy(&in6, sa, sizeof(in6));
        const unsigned char *a = in6.sin6_addr.s6_addr;
        if (memcmp(a, v4mapped, sizeof(v4mapped)) == 0)
            return helios_hash_bytes(a + 12, 4, 0);
        return helios_hash_bytes(a, 16, 0);
    }
    return helios_hash_bytes("", 0, 0);
}

/*
 * The 64-bit hash of this request's key. A header or cookie that is absent,
 * or present with an empty value, falls back to the client address, so
 * requests without the key still stick (per client) instead of all landing
 * on one backend.
 */
static inline uint64_t helios_reqkey_hash(const helios_host_api *api, helios_request *r,
                                          const helios_reqkey *key)
{
    helios_buf v = {NULL, 0};
    switch (key->kind) {
    case HELIOS_REQKEY_PATH: v = api->req_path(r); return helios_hash_bytes(v.ptr, v.len, 0);
    case HELIOS_REQKEY_HEADER: v = api->req_header(r, key->name); break;
    case HELIOS_REQKEY_COOKIE: v = helios_reqkey_cookie(api, r, key); break;
    default: break;
    }
    if (v.ptr != NULL && v.len > 0)
        return helios_hash_bytes(v.ptr, v.len, 0);
    return helios_reqkey_client_hash(api, r);
}

#endif
