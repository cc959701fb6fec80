/*
 * tls.c - TLS termination contexts (see tls.h).
 *
 * Session tickets: one process-wide ring of three keys (current, previous,
 * the one before), rotated every `session_ticket_rotation` (1 h by
 * default). A ticket sealed with a key still in the ring resumes; one
 * sealed with the previous keys is renewed, and so is every TLS 1.3
 * ticket (a TLS 1.3 ticket is used once). Every worker and every SNI
 * context shares the ring, so a client resumes whichever worker it lands
 * on. The keys never leave memory.
 */
#include "config/tls.h"

#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/log.h"

/* ------------------------------------------------------------------ */
/* session ticket keys                                                 */

typedef struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    time_t born;
    int set;
} ticket_key;

static pthread_mutex_t tk_lock = PTHREAD_MUTEX_INITIALIZER;
static ticket_key tk_ring[3];

/* Each SSL_CTX points back to its hx_tls (the rotation interval lives
 * there: a configuration that is only checked, or fails, changes
 * nothing in the running process). */
static int tls_ex_index = -1;
static pthread_once_t tls_ex_once = PTHREAD_ONCE_INIT;
static void tls_ex_init(void) { tls_ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL); }

/* AES-256-CBC fetched once: EVP_aes_256_cbc() would make every ticket
 * sealed or opened look the cipher up again in the provider store. */
static EVP_CIPHER *tk_cipher;
static pthread_once_t tk_cipher_once = PTHREAD_ONCE_INIT;
static void tk_cipher_init(void) { tk_cipher = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL); }

static int tk_fresh(ticket_key *k)
{
    if (RAND_bytes(k->name, sizeof(k->name)) != 1 || RAND_bytes(k->aes, sizeof(k->aes)) != 1 ||
        RAND_bytes(k->hmac, sizeof(k->hmac)) != 1)
        return -1;
    k->born = time(NULL);
    k->set = 1;
    return 0;
}

/* Under tk_lock: rotate when the current key is older than ROTATION s. */
static int tk_rotate_locked(unsigned rotation)
{
    time_t now = time(NULL);
    if (tk_ring[0].set && now - tk_ring[0].born < (time_t)rotation)
        return 0;
    ticket_key k;
    if (tk_fresh(&k) != 0)
        return -1;
    tk_ring[2] = tk_ring[1];
    tk_ring[1] = tk_ring[0];
    tk_ring[0] = k;
    return 0;
}

static int ticket_cb(SSL *s, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *ctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    const hx_tls *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(s), tls_ex_index);
    unsigned rotation = t && t->ticket_rotation ? t->ticket_rotation : 3600;
    ticket_key k;
    int renew = 0;
    pthread_mutex_lock(&tk_lock);
    if (tk_rotate_locked(rotation) != 0) {
        pthread_mutex_unlock(&tk_lock);
        return -1;
    }
    if (enc) {
        k = tk_ring[0];
    } else {
        int found = -1;
        for (int i = 0; i < 3; i++)
            if (tk_ring[i].set && memcmp(key_name, tk_ring[i].name, 16) == 0) {
                found = i;
                break;
            }
        if (found < 0) {
            pthread_mutex_unlock(&tk_lock);
            return 0; /* unknown key: full handshake */
        }
        k = tk_ring[found];
        renew = found > 0;
    }
    pthread_mutex_unlock(&tk_lock);

    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac, sizeof(k.hmac)),
        OSSL_PARAM_construct_end(),
    };
    OSSL_PARAM dparams[2] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    pthread_once(&tk_cipher_once, tk_cipher_init);
    if (tk_cipher == NULL)
        return -1;
    if (enc) {
        memcpy(key_name, k.name, 16);
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(tk_cipher)) != 1)
            return -1;
        if (EVP_EncryptInit_ex2(ctx, tk_cipher, k.aes, iv, NULL) != 1)
            return -1;
    } else if (EVP_DecryptInit_ex2(ctx, tk_cipher, k.aes, iv, NULL) != 1) {
        return -1;
    }
    if (EVP_MAC_CTX_set_params(hctx, dparams) != 1 || EVP_MAC_init(hctx, NULL, 0, params) != 1)
        return -1;
    /* TLS 1.3: a new ticket on every resumption. Clients use a 1.3 ticket
     * once (RFC 8446 C.4; OpenSSL's client does), and OpenSSL issues none
     * when this returns 1, so a returning client alternated between a
     * resumed and a full handshake (D65). */
    if (!enc && SSL_version(s) == TLS1_3_VERSION)
        renew = 1;
    return enc ? 1 : (renew ? 2 : 1);
}

/* ------------------------------------------------------------------ */
/* helpers                                                             */

static void ossl_error(const hx_conf_node *n, const char *what, const char *file)
{
    unsigned long e = ERR_peek_last_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    if (file)
        hx_conf_error(n, "%s %s: %s", what, file, e ? buf : "unknown OpenSSL error");
    else
        hx_conf_error(n, "%s: %s", what, e ? buf : "unknown OpenSSL error");
}

/* PATH relative to the directory of the file N was written in. */
static void conf_rel_path(const hx_conf_node *n, const char *path, char *out, size_t size)
{
    if (path[0] == '/' || n->file == NULL) {
        snprintf(out, size, "%s", path);
        return;
    }
    const char *slash = strrchr(n->file, '/');
    if (slash)
        snprintf(out, size, "%.*s/%s", (int)(slash - n->file), n->file, path);
    else
        snprintf(out, size, "%s", path);
}

/* A readable file, or an error naming it. */
static int readable(const hx_conf_node *n, const char *what, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        hx_conf_error(n, "%s %s: %s", what, path, strerror(errno));
        return 0;
    }
    fclose(f);
    return 1;
}

static const hx_conf_node *scalar_at(const hx_conf_node *map, const char *key)
{
    const hx_conf_node *v = hx_conf_get(map, key);
    if (v == NULL || v->kind == HX_CONF_NULL)
        return NULL;
    if (v->kind != HX_CONF_SCALAR || v->scalar_len == 0) {
        hx_conf_error(v, "expected a non-empty string");
        return NULL;
    }
    return v;
}

static int proto_version(const char *s)
{
    if (strcasecmp(s, "TLSv1.2") == 0 || strcmp(s, "1.2") == 0)
        return TLS1_2_VERSION;
    if (strcasecmp(s, "TLSv1.3") == 0 || strcmp(s, "1.3") == 0)
        return TLS1_3_VERSION;
    return 0;
}

static int add_name(hx_tls_cert *c, const char *name, size_t len)
{
    char **v = realloc(c->names, (c->nnames + 1) * sizeof(char *));
    if (v == NULL)
        return -1;
    c->names = v;
    char *s = strndup(name, len);
    if (s == NULL)
        return -1;
    for (char *p = s; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p + 32);
    c->names[c->nnames++] = s;
    return 0;
}

/* DNS names of the certificate: subjectAltName, else the CN. */
static int cert_names(hx_tls_cert *c, X509 *x)
{
    GENERAL_NAMES *sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    if (sans) {
        for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
            if (g->type != GEN_DNS)
                continue;
            const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
            int l = ASN1_STRING_length(g->d.dNSName);
            if (l > 0 && add_name(c, (const char *)d, (size_t)l) != 0) {
                GENERAL_NAMES_free(sans);
                return -1;
            }
        }
        GENERAL_NAMES_free(sans);
    }
    if (c->nnames == 0) {
        char cn[256];
        int l = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn,
                                          sizeof(cn));
        if (l > 0 && add_name(c, cn, (size_t)l) != 0)
            return -1;
    }
    return 0;
}

static int name_matches(const char *pattern, const char *host)
{
    if (strcasecmp(pattern, host) == 0)
        return 1;
    if (pattern[0] == '*' && pattern[1] == '.') {
        /* one label: *.example.com matches a.example.com, not a.b.example.com */
        const char *dot = strchr(host, '.');
        return dot && dot != host && strcasecmp(dot, pattern + 1) == 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* callbacks                                                           */

static int sni_cb(SSL *ssl, int *al, void *arg)
{
    (void)al;
    hx_tls *t = arg;
    const char *host = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (host == NULL || t->ncerts < 2)
        return SSL_TLSEXT_ERR_OK;
    /* exact names first, then wildcards, in configuration order */
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < t->ncerts; i++)
            for (size_t j = 0; j < t->certs[i].nnames; j++) {
                const char *p = t->certs[i].names[j];
                if ((p[0] == '*') != pass)
                    continue;
                if (name_matches(p, host)) {
                    if (i > 0)
                        SSL_set_SSL_CTX(ssl, t->certs[i].ctx);
                    return SSL_TLSEXT_ERR_OK;
                }
            }
    return SSL_TLSEXT_ERR_OK; /* the default certificate */
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    hx_tls *t = arg;
    /* server preference: h2 when both sides have it */
    static const unsigned char h2[] = "h2", h11[] = "http/1.1";
    for (int want = 0; want < 2; want++) {
        if ((want == 0 && !t->alpn_h2) || (want == 1 && !t->alpn_http11))
            continue;
        const unsigned char *w = want == 0 ? h2 : h11;
        size_t wl = want == 0 ? 2 : 8;
        for (unsigned int i = 0; i < inlen;) {
            unsigned l = in[i];
            if (i + 1 + l > inlen)
                break;
            if (l == wl && memcmp(in + i + 1, w, wl) == 0) {
                *out = in + i + 1;
                *outlen = (unsigned char)l;
                return SSL_TLSEXT_ERR_OK;
            }
            i += 1 + l;
        }
    }
    return SSL_TLSEXT_ERR_NOACK; /* no overlap: carry on without ALPN */
}

/* ------------------------------------------------------------------ */
/* building                                                            */

typedef struct tls_opts {
    int min_version, max_version;
    const char *ciphers, *ciphersuites, *groups;
    int tickets;
    const char *ca_file;
} tls_opts;

static SSL_CTX *ctx_new(hx_tls *t, const tls_opts *o, const hx_conf_node *n)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ossl_error(n, "cannot create a TLS context", NULL);
        return NULL;
    }
    int ok = 1;
    SSL_CTX_set_min_proto_version(ctx, o->min_version);
    SSL_CTX_set_max_proto_version(ctx, o->max_version);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION | (t->ktls ? SSL_OP_ENABLE_KTLS : 0) |
                                 (o->tickets ? 0 : SSL_OP_NO_TICKET));
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* One read(2) takes what the socket holds (a ClientHello, the client's
     * CCS + Finished + first request) instead of two per record (header,
     * then body). The bytes it reads ahead sit in OpenSSL, where epoll
     * cannot see them: the transport's readers check SSL_has_pending
     * (transport.h). kTLS receives in the kernel and wants no read-ahead. */
    if (!t->ktls)
        SSL_CTX_set_read_ahead(ctx, 1);
    /* stateless resumption only: nothing to share between workers */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"heliosd", 7);
    if (o->tickets)
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    if (o->ciphers && SSL_CTX_set_cipher_list(ctx, o->ciphers) != 1) {
        ossl_error(hx_conf_get(n, "ciphers"), "invalid TLS 1.2 cipher list", NULL);
        ok = 0;
    }
    if (o->ciphersuites && SSL_CTX_set_ciphersuites(ctx, o->ciphersuites) != 1) {
        ossl_error(hx_conf_get(n, "ciphersuites"), "invalid TLS 1.3 cipher suites", NULL);
        ok = 0;
    }
    if (o->groups && SSL_CTX_set1_groups_list(ctx, o->groups) != 1) {
        ossl_error(hx_conf_get(n, "groups"), "invalid groups (curves) list", NULL);
        ok = 0;
    }
    pthread_once(&tls_ex_once, tls_ex_init);
    SSL_CTX_set_ex_data(ctx, tls_ex_index, t);
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, t);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, t);
    if (o->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL) != 1) {
            ossl_error(hx_conf_get(hx_conf_get(n, "client_auth"), "ca"),
                       "cannot load client CA file", o->ca_file);
            ok = 0;
        } else {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_file);
            if (names)
                SSL_CTX_set_client_CA_list(ctx, names);
            SSL_CTX_set_verify(ctx,
                               SSL_VERIFY_PEER |
                                   (t->client_auth == 2 ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                               NULL);
            SSL_CTX_set_verify_depth(ctx, 8);
        }
    }
    if (!ok) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static const char *const tls_keys[] = {"certificates", "protocols", "ciphers", "ciphersuites",
                                       "groups", "alpn", "session_tickets",
                                       "session_ticket_rotation", "client_auth", "ktls", NULL};

hx_tls *hx_tls_new(const hx_conf_node *n)
{
    if (n == NULL || n->kind != HX_CONF_MAP) {
        hx_conf_error(n, "expected a map with at least 'certificates:'");
        return NULL;
    }
    if (hx_conf_check_keys(n, tls_keys) > 0)
        return NULL;
    hx_tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    int ok = 1;
    tls_opts o = {.min_version = TLS1_2_VERSION, .max_version = TLS1_3_VERSION};

    /* protocols: a list (or one) of TLSv1.2 / TLSv1.3 */
    const hx_conf_node *pv = hx_conf_get(n, "protocols");
    if (pv && pv->kind != HX_CONF_NULL) {
        int lo = 0, hi = 0;
        size_t cnt = pv->kind == HX_CONF_SEQ ? pv->n : 1;
        for (size_t i = 0; i < cnt; i++) {
            const hx_conf_node *it = pv->kind == HX_CONF_SEQ ? pv->items[i] : pv;
            int v = it->kind == HX_CONF_SCALAR ? proto_version(it->scalar) : 0;
            if (v == 0) {
                hx_conf_error(it, "unknown TLS protocol version: expected TLSv1.2 or TLSv1.3");
                ok = 0;
                continue;
            }
            lo = lo == 0 || v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        if (lo) {
            o.min_version = lo;
            o.max_version = hi;
        }
    }
    const hx_conf_node *v;
    if ((v = scalar_at(n, "ciphers")))
        o.ciphers = v->scalar;
    if ((v = scalar_at(n, "ciphersuites")))
        o.ciphersuites = v->scalar;
    if ((v = scalar_at(n, "groups")))
        o.groups = v->scalar;
    if (hx_conf_bool(n, "session_tickets", 1, &o.tickets) < 0)
        ok = 0;
    uint64_t rot = 3600000;
    if (hx_conf_duration_ms(n, "session_ticket_rotation", 3600000, &rot) < 0)
        ok = 0;
    else if (rot < 1000) {
        hx_conf_error(hx_conf_get(n, "session_ticket_rotation"), "must be at least 1s");
        ok = 0;
    } else {
        t->ticket_rotation = (unsigned)(rot / 1000);
    }
    if (hx_conf_bool(n, "ktls", 0, &t->ktls) < 0)
        ok = 0;

    /* ALPN: [h2, http/1.1] by default */
    const hx_conf_node *al = hx_conf_get(n, "alpn");
    if (al && al->kind != HX_CONF_NULL) {
        size_t cnt = al->kind == HX_CONF_SEQ ? al->n : 1;
        for (size_t i = 0; i < cnt; i++) {
            const hx_conf_node *it = al->kind == HX_CONF_SEQ ? al->items[i] : al;
            if (it->kind == HX_CONF_SCALAR && strcmp(it->scalar, "h2") == 0) {
                if (!HX_HAVE_H2) {
                    hx_conf_error(it, "h2 is not available in this build");
                    ok = 0;
                }
                t->alpn_h2 = 1;
            } else if (it->kind == HX_CONF_SCALAR && strcmp(it->scalar, "http/1.1") == 0) {
                t->alpn_http11 = 1;
            } else {
                hx_conf_error(it, "unknown ALPN protocol: expected h2 or http/1.1");
                ok = 0;
            }
        }
    } else {
        t->alpn_h2 = HX_TLS_DEFAULT_H2;
        t->alpn_http11 = 1;
    }

    /* client_auth: {ca: FILE, required: true} */
    char ca_path[4096];
    const hx_conf_node *ca = hx_conf_get(n, "client_auth");
    if (ca && ca->kind != HX_CONF_NULL) {
        static const char *const ca_keys[] = {"ca", "required", NULL};
        if (ca->kind != HX_CONF_MAP) {
            hx_conf_error(ca, "expected a map: {ca: FILE, required: true|false}");
            ok = 0;
        } else if (hx_conf_check_keys(ca, ca_keys) > 0) {
            ok = 0;
        } else {
            const hx_conf_node *cf = scalar_at(ca, "ca");
            int req = 1;
            if (hx_conf_bool(ca, "required", 1, &req) < 0)
                ok = 0;
            if (cf == NULL) {
                hx_conf_error(ca, "missing required key \"ca\": the CA file client "
                                  "certificates are verified against");
                ok = 0;
            } else {
                conf_rel_path(cf, cf->scalar, ca_path, sizeof(ca_path));
                if (readable(cf, "client CA file", ca_path))
                    o.ca_file = ca_path;
                else
                    ok = 0;
            }
            t->client_auth = req ? 2 : 1;
        }
    }

    const hx_conf_node *cs = hx_conf_get(n, "certificates");
    if (cs == NULL || cs->kind != HX_CONF_SEQ || cs->n == 0) {
        hx_conf_error(cs ? cs : n, "expected a non-empty list of {cert: FILE, key: FILE}");
        ok = 0;
    }
    if (!ok) {
        hx_tls_free(t);
        return NULL;
    }
    t->certs = calloc(cs->n, sizeof(*t->certs));
    if (t->certs == NULL) {
        hx_tls_free(t);
        return NULL;
    }
    static const char *const cert_keys[] = {"cert", "key", "names", NULL};
    for (size_t i = 0; i < cs->n; i++) {
        const hx_conf_node *cn = cs->items[i];
        if (cn->kind != HX_CONF_MAP) {
            hx_conf_error(cn, "expected a map: {cert: FILE, key: FILE}");
            ok = 0;
            continue;
        }
        if (hx_conf_check_keys(cn, cert_keys) > 0) {
            ok = 0;
            continue;
        }
        const hx_conf_node *cf = scalar_at(cn, "cert"), *kf = scalar_at(cn, "key");
        if (!cf || !kf) {
            hx_conf_error(cn, "missing \"%s\": a certificate needs both cert and key files",
                          !cf ? "cert" : "key");
            ok = 0;
            continue;
        }
        char cpath[4096], kpath[4096];
        conf_rel_path(cf, cf->scalar, cpath, sizeof(cpath));
        conf_rel_path(kf, kf->scalar, kpath, sizeof(kpath));
        if (!readable(cf, "certificate file", cpath) || !readable(kf, "key file", kpath)) {
            ok = 0;
            continue;
        }
        hx_tls_cert *c = &t->certs[t->ncerts];
        c->ctx = ctx_new(t, &o, n);
        if (c->ctx == NULL) {
            ok = 0;
            break; /* the same options fail for every certificate */
        }
        t->ncerts++;
        c->cert_file = strdup(cpath);
        if (SSL_CTX_use_certificate_chain_file(c->ctx, cpath) != 1) {
            ossl_error(cf, "cannot load certificate file", cpath);
            ok = 0;
            continue;
        }
        if (SSL_CTX_use_PrivateKey_file(c->ctx, kpath, SSL_FILETYPE_PEM) != 1) {
            if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
                ERR_clear_error();
                hx_conf_error(kf, "key file %s does not match certificate file %s", kpath,
                              cpath);
            } else {
                ossl_error(kf, "cannot load key file", kpath);
            }
            ok = 0;
            continue;
        }
        if (SSL_CTX_check_private_key(c->ctx) != 1) {
            ERR_clear_error();
            hx_conf_error(kf, "key file %s does not match certificate file %s", kpath, cpath);
            ok = 0;
            continue;
        }
        const hx_conf_node *nm = hx_conf_get(cn, "names");
        if (nm && nm->kind == HX_CONF_SEQ) {
            for (size_t j = 0; j < nm->n; j++)
                if (nm->items[j]->kind == HX_CONF_SCALAR)
                    add_name(c, nm->items[j]->scalar, nm->items[j]->scalar_len);
        } else if (nm && nm->kind != HX_CONF_NULL) {
            hx_conf_error(nm, "expected a list of host names");
            ok = 0;
        } else if (cert_names(c, SSL_CTX_get0_certificate(c->ctx)) != 0) {
            ok = 0;
        }
    }
    if (!ok) {
        hx_tls_free(t);
        return NULL;
    }
    return t;
}

void hx_tls_free(hx_tls *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->ncerts; i++) {
        SSL_CTX_free(t->certs[i].ctx);
        for (size_t j = 0; j < t->certs[i].nnames; j++)
            free(t->certs[i].names[j]);
        free(t->certs[i].names);
        free(t->certs[i].cert_file);
    }
    free(t->certs);
    free(t);
}

SSL *hx_tls_accept(hx_tls *t, int fd)
{
    SSL *ssl = SSL_new(t->certs[0].ctx);
    if (ssl == NULL)
        return NULL;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

int hx_tls_alpn_is_h2(SSL *ssl)
{
    const unsigned char *p = NULL;
    unsigned int l = 0;
    SSL_get0_alpn_selected(ssl, &p, &l);
    return l == 2 && memcmp(p, "h2", 2) == 0;
}

const char *hx_tls_version(SSL *ssl) { return SSL_get_version(ssl); }
const char *hx_tls_cipher(SSL *ssl) { return SSL_get_cipher_name(ssl); }
const char *hx_tls_sni(SSL *ssl) { return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name); }

int hx_tls_client_subject(SSL *ssl, char *buf, size_t size)
{
    X509 *x = SSL_get0_peer_certificate(ssl);
    if (x == NULL || size == 0)
        return -1;
    X509_NAME_oneline(X509_get_subject_name(x), buf, (int)size);
    return 0;
}

int hx_tls_client_verified(SSL *ssl)
{
    return SSL_get0_peer_certificate(ssl) != NULL && SSL_get_verify_result(ssl) == X509_V_OK;
}

int hx_tls_ktls_active(SSL *ssl)
{
    return BIO_get_ktls_send(SSL_get_wbio(ssl)) ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* TLS to upstreams                                                    */

static const char *const uptls_keys[] = {"ca", "verify", "sni", "verify_name", "cert", "key",
                                         "ciphers", NULL};

hx_uptls *hx_tls_client_new(const hx_conf_node *n, int h2)
{
    const hx_conf_node *m = NULL;
    if (n && n->kind == HX_CONF_MAP) {
        if (hx_conf_check_keys(n, uptls_keys) > 0)
            return NULL;
        m = n;
    } else {
        /* `tls: true` verifies against the system's CA store */
        static const char *const yes[] = {"true", "yes", "on", NULL};
        static const char *const no[] = {"false", "no", "off", NULL};
        int on = -1;
        for (int i = 0; n && n->kind == HX_CONF_SCALAR && !n->quoted && yes[i]; i++) {
            if (strcasecmp(n->scalar, yes[i]) == 0)
                on = 1;
            else if (strcasecmp(n->scalar, no[i]) == 0)
                on = 0;
        }
        if (on != 1) {
            hx_conf_error(n, on == 0 ? "tls: false is not needed: leave the key out for plain TCP"
                                     : "expected a map, e.g. {ca: ca.pem, sni: "
                                       "api.example.com}, or true");
            return NULL;
        }
    }
    hx_uptls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->h2 = h2;
    int ok = 1;
    if (hx_conf_bool(m, "verify", 1, &t->verify) < 0)
        ok = 0;
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (t->ctx == NULL) {
        ossl_error(n, "cannot create a TLS context", NULL);
        hx_tls_client_free(t);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(t->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    static const unsigned char alpn_h2[] = {2, 'h', '2'};
    static const unsigned char alpn_h11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    if (h2)
        SSL_CTX_set_alpn_protos(t->ctx, alpn_h2, sizeof(alpn_h2));
    else
        SSL_CTX_set_alpn_protos(t->ctx, alpn_h11, sizeof(alpn_h11));
    const hx_conf_node *v;
    char path[4096];
    if ((v = scalar_at(m, "ca"))) {
        conf_rel_path(v, v->scalar, path, sizeof(path));
        if (!readable(v, "CA file", path)) {
            ok = 0;
        } else if (SSL_CTX_load_verify_locations(t->ctx, path, NULL) != 1) {
            ossl_error(v, "cannot load CA file", path);
            ok = 0;
        }
    } else if (SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        ERR_clear_error();
    }
    if (t->verify)
        SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    if ((v = scalar_at(m, "sni")))
        t->sni = strdup(v->scalar);
    if ((v = scalar_at(m, "verify_name")))
        t->verify_name = strdup(v->scalar);
    else if (t->sni)
        t->verify_name = strdup(t->sni);
    if (t->verify && t->verify_name == NULL)
        hx_warn("%s:%u: upstream tls verifies the certificate chain but no name (set sni or "
                "verify_name to check the backend's name too)",
                n->file ? n->file : "?", n->line);
    const hx_conf_node *cf = scalar_at(m, "cert"), *kf = scalar_at(m, "key");
    if ((cf != NULL) != (kf != NULL)) {
        hx_conf_error(m, "a client certificate needs both \"cert\" and \"key\"");
        ok = 0;
    } else if (cf) {
        char kpath[4096];
        conf_rel_path(cf, cf->scalar, path, sizeof(path));
        conf_rel_path(kf, kf->scalar, kpath, sizeof(kpath));
        if (!readable(cf, "certificate file", path) || !readable(kf, "key file", kpath)) {
            ok = 0;
        } else if (SSL_CTX_use_certificate_chain_file(t->ctx, path) != 1) {
            ossl_error(cf, "cannot load certificate file", path);
            ok = 0;
        } else if (SSL_CTX_use_PrivateKey_file(t->ctx, kpath, SSL_FILETYPE_PEM) != 1 ||
                   SSL_CTX_check_private_key(t->ctx) != 1) {
            ERR_clear_error();
            hx_conf_error(kf, "key file %s does not match certificate file %s", kpath, path);
            ok = 0;
        }
    }
    if ((v = scalar_at(m, "ciphers")) && SSL_CTX_set_cipher_list(t->ctx, v->scalar) != 1) {
        ossl_error(v, "invalid TLS 1.2 cipher list", NULL);
        ok = 0;
    }
    if (!ok) {
        hx_tls_client_free(t);
        return NULL;
    }
    return t;
}

void hx_tls_client_free(hx_uptls *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    free(t->sni);
    free(t->verify_name);
    free(t);
}

SSL *hx_tls_connect(hx_uptls *t, int fd)
{
    SSL *ssl = SSL_new(t->ctx);
    if (ssl == NULL)
        return NULL;
    if (SSL_set_fd(ssl, fd) != 1)
        goto fail;
    if (t->sni && SSL_set_tlsext_host_name(ssl, t->sni) != 1)
        goto fail;
    if (t->verify && t->verify_name && SSL_set1_host(ssl, t->verify_name) != 1)
        goto fail;
    SSL_set_connect_state(ssl);
    return ssl;
fail:
    ERR_clear_error();
    SSL_free(ssl);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* I/O with send(2)/recv(2) conventions                                */

ssize_t hx_tls_send(SSL *ssl, const void *p, size_t n)
{
    size_t w = 0;
    ERR_clear_error();
    int rc = SSL_write_ex(ssl, p, n, &w);
    if (rc == 1)
        return (ssize_t)w;
    int e = SSL_get_error(ssl, rc);
    ERR_clear_error();
    errno = e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? EAGAIN : EPIPE;
    return -1;
}

ssize_t hx_tls_recv(SSL *ssl, void *p, size_t n, int *want_write)
{
    size_t r = 0;
    ERR_clear_error();
    int rc = SSL_read_ex(ssl, p, n, &r);
    if (rc == 1)
        return (ssize_t)r;
    int e = SSL_get_error(ssl, rc);
    ERR_clear_error();
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    if (e == SSL_ERROR_WANT_WRITE && want_write)
        *want_write = 1; /* a TLS message of its own goes out first (a key update) */
    errno = e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? EAGAIN : ECONNRESET;
    return -1;
}
