/*
 * admin_auth.c - who may use the admin API: IP allow/deny lists, then a JWT
 * bearer token.
 *
 * Tokens: exactly one algorithm is configured. The token's header is
 * decoded and its `alg` compared with it BEFORE libjwt sees the token, so
 * `alg: none` and algorithm confusion (an RS256 public key used as an
 * HS256 secret) never reach a verifier. After libjwt checks the signature
 * with the configured key, the claims are read here with jansson from the
 * same (now verified) payload: exp is required, nbf optional, both with a
 * leeway; iss and aud when configured; scopes from the scope claim.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "admin_api.h"

#define AA_KEY_FILE_MAX (64 * 1024)
#define AA_TOKEN_MAX 8192

/* ---- IP lists ---- */

int aa_cidr_parse(const char *text, aa_cidr *out, char *err, size_t errlen)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (text == NULL || strlen(text) >= sizeof(buf)) {
        snprintf(err, errlen, "'%s' is not an address or CIDR", text ? text : "");
        return -1;
    }
    strcpy(buf, text);
    char *slash = strchr(buf, '/');
    if (slash)
        *slash = '\0';
    memset(out, 0, sizeof(*out));
    unsigned max;
    if (inet_pton(AF_INET, buf, out->a) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, out->a) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        snprintf(err, errlen, "'%s' is not an IPv4 or IPv6 address or CIDR", text);
        return -1;
    }
    out->bits = max;
    if (slash) {
        char *end;
        errno = 0;
        unsigned long bits = strtoul(slash + 1, &end, 10);
        if (slash[1] < '0' || slash[1] > '9' || *end != '\0' || errno || bits > max) {
            snprintf(err, errlen, "'%s': the prefix length must be 0..%u", text, max);
            return -1;
        }
        out->bits = (unsigned)bits;
    }
    /* clear host bits so "10.1.2.3/8" means 10.0.0.0/8 */
    for (unsigned i = 0; i < max / 8; i++) {
        unsigned keep = out->bits > i * 8 ? out->bits - i * 8 : 0;
        if (keep < 8)
            out->a[i] &= (unsigned char)(0xff00u >> keep);
    }
    return 0;
}

static int cidr_has(const aa_cidr *c, int family, const unsigned char *a)
{
    if (c->family != family)
        return 0;
    unsigned full = c->bits / 8, rest = c->bits % 8;
    if (memcmp(c->a, a, full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    unsigned char mask = (unsigned char)(0xff00u >> rest);
    return (c->a[full] & mask) == (a[full] & mask);
}

static int acl_has(const aa_acl *l, int family, const unsigned char *a)
{
    for (size_t i = 0; i < l->n; i++)
        if (cidr_has(&l->v[i], family, a))
            return 1;
    return 0;
}

int aa_acl_permits(const aa_config *c, const struct sockaddr *sa)
{
    unsigned char a[16];
    int family;
    if (sa == NULL)
        return 0;
    if (sa->sa_family == AF_INET) {
        family = AF_INET;
        memcpy(a, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *v6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(v6)) {
            family = AF_INET;
            memcpy(a, &v6->s6_addr[12], 4);
        } else {
            family = AF_INET6;
            memcpy(a, v6->s6_addr, 16);
        }
    } else {
        return 0;
    }
    if (acl_has(&c->deny, family, a))
        return 0;
    return c->allow.n == 0 || acl_has(&c->allow, family, a);
}

/* ---- keys ---- */

static int read_small_file(const char *path, unsigned char **out, size_t *outlen, char *err,
                           size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_size > AA_KEY_FILE_MAX) {
        snprintf(err, errlen, "%s is larger than %d bytes", path, AA_KEY_FILE_MAX);
        close(fd);
        return -1;
    }
    unsigned char *buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        close(fd);
        return -1;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    close(fd);
    buf[got] = '\0';
    *out = buf;
    *outlen = got;
    return 0;
}

static int secret_mode_ok(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    if (st.st_mode & S_IROTH) {
        snprintf(err, errlen,
                 "%s is readable by other users (mode %04o): chmod o-r it (0600 or 0640)", path,
                 (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}

static int check_public_key(const aa_auth *a, const char *path, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(a->key, (int)a->keylen);
    EVP_PKEY *pk = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (pk == NULL) {
        snprintf(err, errlen, "%s is not a PEM public key (-----BEGIN PUBLIC KEY-----)", path);
        return -1;
    }
    int want = a->alg == JWT_ALG_RS256 ? EVP_PKEY_RSA : EVP_PKEY_EC;
    int have = EVP_PKEY_base_id(pk);
    EVP_PKEY_free(pk);
    if (have != want) {
        snprintf(err, errlen, "%s is not an %s key, as algorithm %s needs", path,
                 want == EVP_PKEY_RSA ? "RSA" : "EC", a->algorithm);
        return -1;
    }
    return 0;
}

int aa_auth_load_key(aa_auth *a, const char *path, char *err, size_t errlen)
{
    int hmac = a->alg == JWT_ALG_HS256;
    if (hmac && secret_mode_ok(path, err, errlen) != 0)
        return -1;
    if (read_small_file(path, &a->key, &a->keylen, err, errlen) != 0)
        return -1;
    if (hmac) {
        /* trailing newlines and spaces are not part of the secret, so a
         * file written by `echo` and `$(cat file)` in a shell agree */
        while (a->keylen > 0 && (a->key[a->keylen - 1] == '\n' || a->key[a->keylen - 1] == '\r' ||
                                 a->key[a->keylen - 1] == ' ' || a->key[a->keylen - 1] == '\t'))
            a->key[--a->keylen] = '\0';
        if (a->keylen == 0) {
            snprintf(err, errlen, "%s is empty: the HS256 secret must not be empty", path);
            return -1;
        }
        return 0;
    }
    if (a->keylen == 0) {
        snprintf(err, errlen, "%s is empty", path);
        return -1;
    }
    return check_public_key(a, path, err, errlen);
}

/* ---- base64url ---- */

static int b64val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

unsigned char *aa_b64url_decode(const char *s, size_t n, size_t *outlen)
{
    while (n > 0 && s[n - 1] == '=')
        n--;
    if (n % 4 == 1)
        return NULL;
    unsigned char *out = malloc(n * 3 / 4 + 3);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    out[o] = '\0';
    if (outlen)
        *outlen = o;
    return out;
}

static json_t *b64url_json(const char *s, size_t n)
{
    size_t len;
    unsigned char *raw = aa_b64url_decode(s, n, &len);
    if (raw == NULL)
        return NULL;
    json_t *j = json_loadb((const char *)raw, len, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* ---- claims ---- */

static int fail(char *why, size_t whylen, const char *msg)
{
    snprintf(why, whylen, "%s", msg);
    return -1;
}

/* exp (required) and nbf (optional), seconds since the epoch, with LEEWAY.
 * Compared as doubles: a JSON number can be far outside long long (1e30,
 * or an integer near LLONG_MAX plus the leeway), where a cast or the sum
 * would be undefined. */
static int check_times(const aa_auth *a, json_t *claims, char *why, size_t whylen)
{
    double now = (double)time(NULL), leeway = (double)a->leeway_s;
    json_t *exp = json_object_get(claims, "exp");
    if (exp == NULL)
        return fail(why, whylen, "the token has no exp claim");
    if (!json_is_number(exp))
        return fail(why, whylen, "the token's exp claim is not a number");
    if (json_number_value(exp) + leeway <= now)
        return fail(why, whylen, "the token has expired");
    json_t *nbf = json_object_get(claims, "nbf");
    if (nbf != NULL) {
        if (!json_is_number(nbf))
            return fail(why, whylen, "the token's nbf claim is not a number");
        if (json_number_value(nbf) - leeway > now)
            return fail(why, whylen, "the token is not valid yet (nbf)");
    }
    return 0;
}

static int check_iss_aud(const aa_auth *a, json_t *claims, char *why, size_t whylen)
{
    if (a->issuer) {
        json_t *iss = json_object_get(claims, "iss");
        if (!json_is_string(iss) || strcmp(json_string_value(iss), a->issuer) != 0)
            return fail(why, whylen, "the token's issuer (iss) is not accepted");
    }
    if (a->audience) {
        json_t *aud = json_object_get(claims, "aud");
        int ok = 0;
        if (json_is_string(aud)) {
            ok = strcmp(json_string_value(aud), a->audience) == 0;
        } else if (json_is_array(aud)) {
            size_t i;
            json_t *v;
            json_array_foreach(aud, i, v) if (json_is_string(v) &&
                                              strcmp(json_string_value(v), a->audience) == 0) ok = 1;
        }
        if (!ok)
            return fail(why, whylen, "the token's audience (aud) is not accepted");
    }
    return 0;
}

static unsigned scope_word(const char *w, size_t n)
{
    if (n == 4 && memcmp(w, "read", 4) == 0)
        return AA_SCOPE_READ;
    if (n == 5 && memcmp(w, "write", 5) == 0)
        return AA_SCOPE_WRITE | AA_SCOPE_READ; /* write implies read */
    return 0;
}

static unsigned scopes_of(const aa_auth *a, json_t *claims)
{
    json_t *s = json_object_get(claims, a->scope_claim);
    unsigned out = 0;
    if (json_is_string(s)) {
        const char *p = json_string_value(s);
        while (*p) {
            while (*p == ' ')
                p++;
            const char *w = p;
            while (*p && *p != ' ')
                p++;
            out |= scope_word(w, (size_t)(p - w));
        }
    } else if (json_is_array(s)) {
        size_t i;
        json_t *v;
        json_array_foreach(s, i, v) if (json_is_string(v)) out |=
            scope_word(json_string_value(v), strlen(json_string_value(v)));
    }
    return out;
}

/* ---- the token ---- */

/* Splits "h.p.s" and checks the header's alg against the configured one. */
static int check_header(const aa_auth *a, const char *tok, const char **dot1, const char **dot2,
                        char *why, size_t whylen)
{
    *dot1 = strchr(tok, '.');
    *dot2 = *dot1 ? strchr(*dot1 + 1, '.') : NULL;
    if (*dot1 == NULL || *dot2 == NULL || strchr(*dot2 + 1, '.') != NULL)
        return fail(why, whylen, "the token is not a JWS compact serialization (header.payload.signature)");
    json_t *h = b64url_json(tok, (size_t)(*dot1 - tok));
    if (h == NULL)
        return fail(why, whylen, "the token header is not base64url-encoded JSON");
    json_t *alg = json_object_get(h, "alg");
    int ok = json_is_string(alg) && strcmp(json_string_value(alg), a->algorithm) == 0;
    json_decref(h);
    if (!ok)
        return fail(why, whylen, "the token's algorithm is not the one configured");
    if ((*dot2)[1] == '\0')
        return fail(why, whylen, "the token has no signature");
    return 0;
}

int aa_auth_check(const aa_auth *a, const char *authorization, aa_principal *who, char *why,
                  size_t whylen)
{
    memset(who, 0, sizeof(*who));
    if (a->mode == AA_AUTH_NONE) {
        snprintf(who->sub, sizeof(who->sub), "anonymous");
        who->scopes = AA_SCOPE_READ | AA_SCOPE_WRITE;
        return 0;
    }
    if (authorization == NULL)
        return fail(why, whylen, "");
    if (strncasecmp(authorization, "Bearer ", 7) != 0)
        return fail(why, whylen, "the Authorization header is not a Bearer token");
    const char *tok = authorization + 7;
    while (*tok == ' ')
        tok++;
    size_t toklen = strlen(tok);
    while (toklen > 0 && tok[toklen - 1] == ' ')
        toklen--;
    if (toklen == 0 || toklen > AA_TOKEN_MAX)
        return fail(why, whylen, "the bearer token is empty or too long");
    char *t = strndup(tok, toklen);
    if (t == NULL)
        return fail(why, whylen, "out of memory");
    const char *d1, *d2;
    int rc = check_header(a, t, &d1, &d2, why, whylen);
    jwt_t *jwt = NULL;
    if (rc == 0 && (jwt_decode(&jwt, t, a->key, (int)a->keylen) != 0 || jwt == NULL ||
                    (int)jwt_get_alg(jwt) != a->alg))
        rc = fail(why, whylen, "the token's signature does not verify");
    json_t *claims = NULL;
    if (rc == 0 && (claims = b64url_json(d1 + 1, (size_t)(d2 - d1 - 1))) == NULL)
        rc = fail(why, whylen, "the token payload is not a JSON object");
    if (rc == 0)
        rc = check_times(a, claims, why, whylen);
    if (rc == 0)
        rc = check_iss_aud(a, claims, why, whylen);
    if (rc == 0) {
        json_t *sub = json_object_get(claims, "sub");
        snprintf(who->sub, sizeof(who->sub), "%s", json_is_string(sub) ? json_string_value(sub) : "-");
        /* the sub goes into log lines: keep it printable */
        for (char *p = who->sub; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '"')
                *p = '?';
        who->scopes = scopes_of(a, claims);
    }
    json_decref(claims);
    if (jwt)
        jwt_free(jwt);
    free(t);
    return rc;
}
