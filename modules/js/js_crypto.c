/*
 * js_crypto.c - the OpenSSL natives behind prelude.js's crypto.subtle.
 *
 * prelude.js does the WebCrypto part (algorithm names and parameters, key
 * usages, CryptoKey objects, JWK, errors as DOMExceptions); these natives
 * only compute, on byte strings and on one kind of object: a "pkey", an
 * EVP_PKEY (an ECDSA P-256 or Ed25519 key) owned by a JS object and freed
 * by its finalizer. HMAC and AES keys are plain bytes held by the prelude.
 *
 * All of it is synchronous: the WebCrypto promises are resolved at once.
 * Every native returns a value or throws a TypeError naming the failure;
 * an AES-GCM tag mismatch returns null (the prelude throws OperationError).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include "js_internal.h"

static JSClassID js_pkey_class_id;

static void js_pkey_finalizer(JSRuntime *rt, JSValue val)
{
    (void)rt;
    EVP_PKEY *k = JS_GetOpaque(val, js_pkey_class_id);
    EVP_PKEY_free(k);
}

static JSClassDef js_pkey_class = {
    .class_name = "HeliosKeyMaterial",
    .finalizer = js_pkey_finalizer,
};

void js_crypto_class_init(void)
{
    if (js_pkey_class_id == 0)
        JS_NewClassID(&js_pkey_class_id);
}

int js_crypto_runtime_init(JSRuntime *rt)
{
    return JS_NewClass(rt, js_pkey_class_id, &js_pkey_class);
}

/* Wraps K (owned) in a JS object. */
static JSValue js_pkey_new(JSContext *ctx, EVP_PKEY *k)
{
    JSValue o = JS_NewObjectClass(ctx, (int)js_pkey_class_id);
    if (JS_IsException(o)) {
        EVP_PKEY_free(k);
        return o;
    }
    JS_SetOpaque(o, k);
    return o;
}

static EVP_PKEY *js_pkey_get(JSContext *ctx, JSValueConst v)
{
    EVP_PKEY *k = JS_GetOpaque(v, js_pkey_class_id);
    if (k == NULL)
        JS_ThrowTypeError(ctx, "not a key");
    return k;
}

/* OpenSSL 3 looks an algorithm up by name on every use of EVP_sha256()
 * and HMAC(); fetching each once per process halves a small HMAC. The
 * fetched objects are reference counted and safe to share between
 * threads. */
static const char *const js_md_names[][2] = {
    {"SHA-1", "SHA1"},       {"SHA-256", "SHA2-256"}, {"SHA-384", "SHA2-384"},
    {"SHA-512", "SHA2-512"}, {"MD5", "MD5"},
};
#define JS_NMD (sizeof(js_md_names) / sizeof(js_md_names[0]))
static EVP_MD *js_mds[JS_NMD];
static EVP_MAC *js_hmac;
static pthread_once_t js_fetch_once = PTHREAD_ONCE_INIT;

static void js_fetch_algorithms(void)
{
    for (size_t i = 0; i < JS_NMD; i++)
        js_mds[i] = EVP_MD_fetch(NULL, js_md_names[i][1], NULL);
    js_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
}

static const EVP_MD *js_md(const char *name)
{
    pthread_once(&js_fetch_once, js_fetch_algorithms);
    for (size_t i = 0; i < JS_NMD; i++)
        if (strcmp(name, js_md_names[i][0]) == 0)
            return js_mds[i];
    return NULL;
}

/* The digest named by V ("SHA-256"...), or NULL with an exception. */
static const EVP_MD *js_md_arg(JSContext *ctx, JSValueConst v)
{
    const char *n = JS_ToCString(ctx, v);
    if (n == NULL)
        return NULL;
    const EVP_MD *md = js_md(n);
    if (md == NULL)
        JS_ThrowTypeError(ctx, "unsupported hash '%s'", n);
    JS_FreeCString(ctx, n);
    return md;
}

/* Bytes of a BufferSource argument (strings refused). */
static int js_buf_arg(JSContext *ctx, JSValueConst v, const uint8_t **p, size_t *len)
{
    const char *hold;
    if (js_bytes(ctx, v, &hold, p, len) != 0)
        return -1;
    if (hold) {
        JS_FreeCString(ctx, hold);
        JS_ThrowTypeError(ctx, "expected an ArrayBuffer or a view of one");
        return -1;
    }
    return 0;
}

static JSValue js_openssl_error(JSContext *ctx, const char *what)
{
    return JS_ThrowTypeError(ctx, "%s failed", what);
}

/* ---- digest, HMAC, AES-GCM, comparison ---- */

/* hx.digest(name, data) -> ArrayBuffer */
static JSValue nat_digest(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    const EVP_MD *md = js_md_arg(ctx, argv[0]);
    const uint8_t *p;
    size_t len;
    if (md == NULL || js_buf_arg(ctx, argv[1], &p, &len) != 0)
        return JS_EXCEPTION;
    uint8_t out[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    if (EVP_Digest(p, len, out, &n, md, NULL) != 1)
        return js_openssl_error(ctx, "digest");
    return JS_NewArrayBufferCopy(ctx, out, n);
}

/* hx.hmac(hash, key, data) -> ArrayBuffer */
static JSValue nat_hmac(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    const EVP_MD *md = js_md_arg(ctx, argv[0]);
    const uint8_t *k, *p;
    size_t klen, len;
    if (md == NULL || js_buf_arg(ctx, argv[1], &k, &klen) != 0 ||
        js_buf_arg(ctx, argv[2], &p, &len) != 0)
        return JS_EXCEPTION;
    uint8_t out[EVP_MAX_MD_SIZE];
    size_t n = 0;
    static const uint8_t empty[1];
    OSSL_PARAM params[2] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)EVP_MD_get0_name(md), 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC_CTX *mc = js_hmac ? EVP_MAC_CTX_new(js_hmac) : NULL;
    int ok = mc && EVP_MAC_init(mc, klen ? k : empty, klen, params) == 1 &&
             EVP_MAC_update(mc, len ? p : empty, len) == 1 &&
             EVP_MAC_final(mc, out, &n, sizeof(out)) == 1;
    EVP_MAC_CTX_free(mc);
    if (!ok)
        return js_openssl_error(ctx, "HMAC");
    return JS_NewArrayBufferCopy(ctx, out, n);
}

/* hx.aesgcm(encrypt, key, iv, aad|null, tagBytes, data) -> ArrayBuffer
 * (ciphertext then tag), or null when decryption fails to authenticate */
static JSValue nat_aesgcm(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    int enc = JS_ToBool(ctx, argv[0]);
    const uint8_t *k, *iv, *aad = NULL, *p;
    size_t klen, ivlen, aadlen = 0, len;
    int tag;
    if (js_buf_arg(ctx, argv[1], &k, &klen) != 0 || js_buf_arg(ctx, argv[2], &iv, &ivlen) != 0 ||
        (!JS_IsNull(argv[3]) && js_buf_arg(ctx, argv[3], &aad, &aadlen) != 0) ||
        JS_ToInt32(ctx, &tag, argv[4]) != 0 || js_buf_arg(ctx, argv[5], &p, &len) != 0)
        return JS_EXCEPTION;
    const EVP_CIPHER *c = klen == 16   ? EVP_aes_128_gcm()
                          : klen == 24 ? EVP_aes_192_gcm()
                          : klen == 32 ? EVP_aes_256_gcm()
                                       : NULL;
    if (c == NULL || ivlen == 0 || ivlen > 1024 || tag < 4 || tag > 16)
        return JS_ThrowTypeError(ctx, "AES-GCM: bad key, iv or tag length");
    if (!enc && len < (size_t)tag)
        return JS_NULL;
    size_t body = enc ? len : len - (size_t)tag;
    uint8_t *out = malloc(body + (size_t)tag + 16);
    EVP_CIPHER_CTX *cx = EVP_CIPHER_CTX_new();
    JSValue ret = JS_UNDEFINED;
    int n = 0, fin = 0, ok = out != NULL && cx != NULL;
    ok = ok && EVP_CipherInit_ex(cx, c, NULL, NULL, NULL, enc) == 1 &&
         EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_IVLEN, (int)ivlen, NULL) == 1 &&
         EVP_CipherInit_ex(cx, NULL, NULL, k, iv, enc) == 1;
    if (ok && aadlen)
        ok = EVP_CipherUpdate(cx, NULL, &n, aad, (int)aadlen) == 1;
    if (ok && body)
        ok = EVP_CipherUpdate(cx, out, &n, p, (int)body) == 1;
    else
        n = 0;
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_SET_TAG, tag, (void *)(p + body)) == 1;
    if (ok) {
        if (EVP_CipherFinal_ex(cx, out + n, &fin) != 1) {
            ret = enc ? js_openssl_error(ctx, "AES-GCM") : JS_NULL;
        } else if (enc) {
            ok = EVP_CIPHER_CTX_ctrl(cx, EVP_CTRL_GCM_GET_TAG, tag, out + n + fin) == 1;
            ret = ok ? JS_NewArrayBufferCopy(ctx, out, (size_t)(n + fin + tag))
                     : js_openssl_error(ctx, "AES-GCM");
        } else {
            ret = JS_NewArrayBufferCopy(ctx, out, (size_t)(n + fin));
        }
    } else {
        ret = out == NULL ? JS_ThrowOutOfMemory(ctx) : js_openssl_error(ctx, "AES-GCM");
    }
    EVP_CIPHER_CTX_free(cx);
    free(out);
    return ret;
}

/* hx.tse(a, b) -> bool: constant-time equality of two same-length buffers */
static JSValue nat_timing_safe_equal(JSContext *ctx, JSValueConst this_val, int argc,
                                     JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    const uint8_t *a, *b;
    size_t alen, blen;
    if (js_buf_arg(ctx, argv[0], &a, &alen) != 0 || js_buf_arg(ctx, argv[1], &b, &blen) != 0)
        return JS_EXCEPTION;
    if (alen != blen)
        return JS_ThrowTypeError(ctx, "timingSafeEqual: the inputs have different lengths");
    return JS_NewBool(ctx, alen == 0 || CRYPTO_memcmp(a, b, alen) == 0);
}

/* ---- asymmetric keys: ECDSA P-256, Ed25519 ---- */

/* hx.ecImport(point, d|null) -> pkey: P-256 from an SEC1 point (04||x||y or
 * compressed) and, for a private key, the scalar D (32 bytes) */
static JSValue nat_ec_import(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    const uint8_t *pt, *d = NULL;
    size_t ptlen, dlen = 0;
    if (js_buf_arg(ctx, argv[0], &pt, &ptlen) != 0 ||
        (!JS_IsNull(argv[1]) && js_buf_arg(ctx, argv[1], &d, &dlen) != 0))
        return JS_EXCEPTION;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    BIGNUM *bn = d ? BN_bin2bn(d, (int)dlen, NULL) : NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *k = NULL;
    int ok = bld && pc && (d == NULL || bn) &&
             OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "P-256", 0) &&
             OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, ptlen) &&
             (bn == NULL || OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, bn)) &&
             (params = OSSL_PARAM_BLD_to_param(bld)) != NULL && EVP_PKEY_fromdata_init(pc) == 1 &&
             EVP_PKEY_fromdata(pc, &k, d ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) == 1;
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_clear_free(bn);
    EVP_PKEY_CTX_free(pc);
    if (ok && d) {
        /* the public point must belong to the private scalar */
        EVP_PKEY_CTX *chk = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL);
        ok = chk && EVP_PKEY_pairwise_check(chk) == 1;
        EVP_PKEY_CTX_free(chk);
    } else if (ok) {
        EVP_PKEY_CTX *chk = EVP_PKEY_CTX_new_from_pkey(NULL, k, NULL);
        ok = chk && EVP_PKEY_public_check(chk) == 1;
        EVP_PKEY_CTX_free(chk);
    }
    if (!ok) {
        EVP_PKEY_free(k);
        return JS_ThrowTypeError(ctx, "not a valid P-256 key");
    }
    return js_pkey_new(ctx, k);
}

/* hx.edImport(bytes, private) -> pkey: Ed25519 from its 32 raw bytes */
static JSValue nat_ed_import(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    const uint8_t *p;
    size_t len;
    if (js_buf_arg(ctx, argv[0], &p, &len) != 0)
        return JS_EXCEPTION;
    if (len != 32)
        return JS_ThrowTypeError(ctx, "an Ed25519 key is 32 bytes, not %zu", len);
    EVP_PKEY *k = JS_ToBool(ctx, argv[1])
                      ? EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, p, len)
                      : EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, p, len);
    if (k == NULL)
        return JS_ThrowTypeError(ctx, "not a valid Ed25519 key");
    return js_pkey_new(ctx, k);
}

/* hx.derImport(pkcs8, der) -> pkey (a SubjectPublicKeyInfo, or a PKCS#8
 * PrivateKeyInfo when PKCS8) */
static JSValue nat_der_import(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    const uint8_t *p;
    size_t len;
    if (js_buf_arg(ctx, argv[1], &p, &len) != 0)
        return JS_EXCEPTION;
    const unsigned char *q = p;
    EVP_PKEY *k = JS_ToBool(ctx, argv[0]) ? d2i_AutoPrivateKey(NULL, &q, (long)len)
                                          : d2i_PUBKEY(NULL, &q, (long)len);
    if (k == NULL || q != p + len) {
        EVP_PKEY_free(k);
        return JS_ThrowTypeError(ctx, "not a valid DER key");
    }
    return js_pkey_new(ctx, k);
}

/* hx.derExport(pkey, pkcs8) -> ArrayBuffer */
static JSValue nat_der_export(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    EVP_PKEY *k = js_pkey_get(ctx, argv[0]);
    if (k == NULL)
        return JS_EXCEPTION;
    unsigned char *der = NULL;
    int n;
    if (JS_ToBool(ctx, argv[1])) {
        PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(k);
        n = p8 ? i2d_PKCS8_PRIV_KEY_INFO(p8, &der) : -1;
        PKCS8_PRIV_KEY_INFO_free(p8);
    } else {
        n = i2d_PUBKEY(k, &der);
    }
    if (n <= 0)
        return js_openssl_error(ctx, "key export");
    JSValue v = JS_NewArrayBufferCopy(ctx, der, (size_t)n);
    OPENSSL_free(der);
    return v;
}

/* hx.keyInfo(pkey) -> ["EC" | "ED25519", curve | null, hasPrivate] */
static JSValue nat_key_info(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    EVP_PKEY *k = js_pkey_get(ctx, argv[0]);
    if (k == NULL)
        return JS_EXCEPTION;
    JSValue a = JS_NewArray(ctx);
    const char *type = EVP_PKEY_is_a(k, "EC") ? "EC" : EVP_PKEY_is_a(k, "ED25519") ? "ED25519" : "";
    char curve[64] = "";
    if (strcmp(type, "EC") == 0)
        EVP_PKEY_get_utf8_string_param(k, OSSL_PKEY_PARAM_GROUP_NAME, curve, sizeof(curve), NULL);
    BIGNUM *priv = NULL;
    uint8_t raw[64];
    size_t rawlen = sizeof(raw);
    int has_priv = strcmp(type, "EC") == 0
                       ? EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_PRIV_KEY, &priv) == 1
                       : EVP_PKEY_get_raw_private_key(k, raw, &rawlen) == 1;
    BN_clear_free(priv);
    OPENSSL_cleanse(raw, sizeof(raw));
    JS_SetPropertyUint32(ctx, a, 0, JS_NewString(ctx, type));
    /* OpenSSL names P-256 "prime256v1" */
    JS_SetPropertyUint32(
        ctx, a, 1,
        curve[0] ? JS_NewString(ctx, strcmp(curve, "prime256v1") == 0 ? "P-256" : curve) : JS_NULL);
    JS_SetPropertyUint32(ctx, a, 2, JS_NewBool(ctx, has_priv));
    return a;
}

/* hx.keyRaw(pkey) -> [public, private|null]: EC: the uncompressed point and
 * the 32-byte scalar; Ed25519: the raw 32-byte keys */
static JSValue nat_key_raw(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    EVP_PKEY *k = js_pkey_get(ctx, argv[0]);
    if (k == NULL)
        return JS_EXCEPTION;
    uint8_t pub[133], priv[66];
    size_t publen = sizeof(pub), privlen = 0;
    int ok;
    if (EVP_PKEY_is_a(k, "EC")) {
        ok = EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pub,
                                             sizeof(pub), &publen) == 1;
        BIGNUM *bn = NULL;
        if (ok && EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_PRIV_KEY, &bn) == 1) {
            privlen = 32;
            ok = BN_bn2binpad(bn, priv, (int)privlen) == (int)privlen;
        }
        BN_clear_free(bn);
    } else {
        ok = EVP_PKEY_get_raw_public_key(k, pub, &publen) == 1;
        size_t n = sizeof(priv);
        if (ok && EVP_PKEY_get_raw_private_key(k, priv, &n) == 1)
            privlen = n;
    }
    if (!ok)
        return js_openssl_error(ctx, "key export");
    JSValue a = JS_NewArray(ctx);
    JS_SetPropertyUint32(ctx, a, 0, JS_NewArrayBufferCopy(ctx, pub, publen));
    JS_SetPropertyUint32(ctx, a, 1, privlen ? JS_NewArrayBufferCopy(ctx, priv, privlen) : JS_NULL);
    OPENSSL_cleanse(priv, sizeof(priv));
    return a;
}

/* hx.keygen(type) -> pkey: "EC" (P-256) or "ED25519" */
static JSValue nat_keygen(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    const char *t = JS_ToCString(ctx, argv[0]);
    if (t == NULL)
        return JS_EXCEPTION;
    EVP_PKEY *k = strcmp(t, "EC") == 0 ? EVP_EC_gen("P-256") : EVP_PKEY_Q_keygen(NULL, NULL, t);
    JS_FreeCString(ctx, t);
    if (k == NULL)
        return js_openssl_error(ctx, "key generation");
    return js_pkey_new(ctx, k);
}

/* P-256 signatures are r||s (IEEE P1363, 64 bytes) in WebCrypto and DER
 * in OpenSSL. */
#define JS_P256_N 32

static int js_sig_from_der(const uint8_t *der, size_t len, uint8_t out[2 * JS_P256_N])
{
    const unsigned char *q = der;
    ECDSA_SIG *s = d2i_ECDSA_SIG(NULL, &q, (long)len);
    const BIGNUM *r, *sv;
    int ok = s != NULL;
    if (ok) {
        ECDSA_SIG_get0(s, &r, &sv);
        ok = BN_bn2binpad(r, out, JS_P256_N) == JS_P256_N &&
             BN_bn2binpad(sv, out + JS_P256_N, JS_P256_N) == JS_P256_N;
    }
    ECDSA_SIG_free(s);
    return ok ? 0 : -1;
}

/* DER of r||s in a malloc'd buffer, or NULL */
static unsigned char *js_sig_to_der(const uint8_t *rs, size_t len, int *derlen)
{
    if (len != 2 * JS_P256_N)
        return NULL;
    ECDSA_SIG *s = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(rs, JS_P256_N, NULL), *sv = BN_bin2bn(rs + JS_P256_N, JS_P256_N, NULL);
    unsigned char *der = NULL;
    if (s && r && sv && ECDSA_SIG_set0(s, r, sv) == 1) {
        r = sv = NULL; /* owned by s */
        *derlen = i2d_ECDSA_SIG(s, &der);
        if (*derlen <= 0)
            der = NULL;
    }
    BN_free(r);
    BN_free(sv);
    ECDSA_SIG_free(s);
    return der;
}

/* hx.sign(pkey, hash|null, data) -> ArrayBuffer (Ed25519 takes no hash) */
static JSValue nat_sign(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    EVP_PKEY *k = js_pkey_get(ctx, argv[0]);
    const EVP_MD *md = NULL;
    const uint8_t *p;
    size_t len;
    if (k == NULL || (!JS_IsNull(argv[1]) && (md = js_md_arg(ctx, argv[1])) == NULL) ||
        js_buf_arg(ctx, argv[2], &p, &len) != 0)
        return JS_EXCEPTION;
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    uint8_t sig[160];
    size_t siglen = sizeof(sig);
    int ok = mc && EVP_DigestSignInit(mc, NULL, md, NULL, k) == 1 &&
             EVP_DigestSign(mc, sig, &siglen, p, len) == 1;
    EVP_MD_CTX_free(mc);
    if (!ok)
        return js_openssl_error(ctx, "sign");
    if (EVP_PKEY_is_a(k, "EC")) {
        uint8_t rs[2 * JS_P256_N];
        if (js_sig_from_der(sig, siglen, rs) != 0)
            return js_openssl_error(ctx, "sign");
        return JS_NewArrayBufferCopy(ctx, rs, sizeof(rs));
    }
    return JS_NewArrayBufferCopy(ctx, sig, siglen);
}

/* hx.verify(pkey, hash|null, signature, data) -> bool */
static JSValue nat_verify(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    (void)argc;
    EVP_PKEY *k = js_pkey_get(ctx, argv[0]);
    const EVP_MD *md = NULL;
    const uint8_t *sig, *p;
    size_t siglen, len;
    if (k == NULL || (!JS_IsNull(argv[1]) && (md = js_md_arg(ctx, argv[1])) == NULL) ||
        js_buf_arg(ctx, argv[2], &sig, &siglen) != 0 || js_buf_arg(ctx, argv[3], &p, &len) != 0)
        return JS_EXCEPTION;
    unsigned char *der = NULL;
    int derlen = 0;
    if (EVP_PKEY_is_a(k, "EC")) {
        der = js_sig_to_der(sig, siglen, &derlen);
        if (der == NULL)
            return JS_FALSE; /* not r||s of P-256: cannot verify */
        sig = der;
        siglen = (size_t)derlen;
    }
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    int ok = mc && EVP_DigestVerifyInit(mc, NULL, md, NULL, k) == 1 &&
             EVP_DigestVerify(mc, sig, siglen, p, len) == 1;
    EVP_MD_CTX_free(mc);
    OPENSSL_free(der);
    return JS_NewBool(ctx, ok);
}

static const JSCFunctionListEntry js_crypto_natives[] = {
    JS_CFUNC_DEF("digest", 2, nat_digest),        JS_CFUNC_DEF("hmac", 3, nat_hmac),
    JS_CFUNC_DEF("aesgcm", 6, nat_aesgcm),        JS_CFUNC_DEF("tse", 2, nat_timing_safe_equal),
    JS_CFUNC_DEF("ecImport", 2, nat_ec_import),   JS_CFUNC_DEF("edImport", 2, nat_ed_import),
    JS_CFUNC_DEF("derImport", 2, nat_der_import), JS_CFUNC_DEF("derExport", 2, nat_der_export),
    JS_CFUNC_DEF("keyInfo", 1, nat_key_info),     JS_CFUNC_DEF("keyRaw", 1, nat_key_raw),
    JS_CFUNC_DEF("keygen", 1, nat_keygen),        JS_CFUNC_DEF("sign", 3, nat_sign),
    JS_CFUNC_DEF("verify", 4, nat_verify),
};

void js_crypto_natives_install(JSContext *ctx, JSValueConst hx)
{
    JS_SetPropertyFunctionList(ctx, hx, js_crypto_natives,
                               sizeof(js_crypto_natives) / sizeof(js_crypto_natives[0]));
}
