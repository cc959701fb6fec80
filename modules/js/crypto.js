/*
 * crypto.js - `crypto`: getRandomValues, randomUUID and crypto.subtle
 * (WebCrypto) on OpenSSL, plus Cloudflare's crypto.subtle.timingSafeEqual.
 *
 * Called by js_runtime.c with `hx` (the OpenSSL natives are in js_crypto.c)
 * and prelude.js's `lib`. Algorithms: digest SHA-1/256/384/512 (and MD5, as
 * Workers have it); HMAC; AES-GCM; ECDSA on P-256; Ed25519 (also under
 * Workers' older name NODE-ED25519). Key formats: raw, jwk, spki, pkcs8
 * (as each algorithm allows). The natives are synchronous, so every
 * promise is settled when it is returned.
 *
 * A CryptoKey's material lives in a WeakMap this file alone can read: bytes
 * for HMAC and AES keys, a native key object (EVP_PKEY) for the others.
 */
(function (hx, lib) {
'use strict';
const { define, DOMException, INSPECT, wrap, quote } = lib;

const HEX = [];
for (let i = 0; i < 256; i++) HEX.push((i + 256).toString(16).slice(1));

/* ---- helpers ---- */

function err(message, name) { return new DOMException(message, name); }

function bytes(v, what) {
    if (v instanceof ArrayBuffer) return new Uint8Array(v);
    if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    throw new TypeError(what + ': expected an ArrayBuffer or a view of one');
}

function copy(v, what) { return bytes(v, what).slice().buffer; }

const b64u = (b) => hx.b64enc(b, true);
function unb64u(s, what) {
    if (typeof s !== 'string') throw err('JWK: ' + what + ' is missing', 'DataError');
    const b = hx.b64dec(s, true);
    if (b === null) throw err('JWK: ' + what + ' is not base64url', 'DataError');
    return b;
}

const HASHES = { 'SHA-1': 'SHA-1', 'SHA-256': 'SHA-256', 'SHA-384': 'SHA-384', 'SHA-512': 'SHA-512', MD5: 'MD5' };
const NAMES = { HMAC: 'HMAC', 'AES-GCM': 'AES-GCM', ECDSA: 'ECDSA', ED25519: 'Ed25519', 'NODE-ED25519': 'NODE-ED25519' };

function algName(a) {
    if (typeof a === 'string') return a;
    if (a !== null && typeof a === 'object' && typeof a.name === 'string') return a.name;
    throw new TypeError('algorithm: expected a name or an object with a name');
}

function hashName(h, what) {
    if (h === undefined) throw new TypeError(what + ': the hash is required');
    const n = HASHES[algName(h).toUpperCase()];
    if (!n || n === 'MD5') throw err(what + ': unsupported hash ' + JSON.stringify(algName(h)), 'NotSupportedError');
    return n;
}

/* The canonical algorithm name of A, for operations on keys. */
function keyAlg(a) {
    const n = NAMES[algName(a).toUpperCase()];
    if (!n) throw err('Unrecognized or unsupported algorithm: ' + JSON.stringify(algName(a)), 'NotSupportedError');
    return n;
}

const isEd = (n) => n === 'Ed25519' || n === 'NODE-ED25519';

function settle(fn) {
    try {
        return Promise.resolve(fn());
    } catch (e) {
        return Promise.reject(e);
    }
}

/* ---- CryptoKey ---- */

const slots = new WeakMap(); /* CryptoKey -> {type, extractable, algorithm, usages, secret?, pkey?} */

class CryptoKey {
    constructor() { throw new TypeError('Illegal constructor'); }
    get type() { return slot(this).type; }
    get extractable() { return slot(this).extractable; }
    get algorithm() { return slot(this).algorithm; }
    get usages() { return slot(this).usages.slice(); }
    get [Symbol.toStringTag]() { return 'CryptoKey'; }
    [INSPECT](d, o, insp) {
        const s = slot(this);
        return wrap('CryptoKey', ['type: ' + quote(s.type), 'extractable: ' + s.extractable,
            'algorithm: ' + insp(s.algorithm), 'usages: ' + insp(s.usages)], '{', '}');
    }
}
define('CryptoKey', CryptoKey);

function slot(k) {
    const s = slots.get(k);
    if (!s) throw new TypeError('not a CryptoKey');
    return s;
}

const ALLOWED = {
    HMAC: { secret: ['sign', 'verify'] },
    'AES-GCM': { secret: ['encrypt', 'decrypt', 'wrapKey', 'unwrapKey'] },
    ECDSA: { public: ['verify'], private: ['sign'] },
    Ed25519: { public: ['verify'], private: ['sign'] },
    'NODE-ED25519': { public: ['verify'], private: ['sign'] },
};

function makeKey(type, extractable, algorithm, usages, material) {
    usages = Array.from(usages || []).map(String);
    const allowed = ALLOWED[algorithm.name][type];
    for (const u of usages)
        if (!allowed.includes(u))
            throw err('usage ' + JSON.stringify(u) + ' is not allowed for a ' + algorithm.name + ' ' + type + ' key',
                'SyntaxError');
    if (type !== 'public' && usages.length === 0)
        throw err('a ' + type + ' key needs at least one usage', 'SyntaxError');
    const k = Object.create(CryptoKey.prototype);
    slots.set(k, Object.assign({ type, extractable: !!extractable, algorithm, usages: [...new Set(usages)] }, material));
    return k;
}

function useKey(key, name, usage) {
    const s = slot(key);
    if (s.algorithm.name !== name)
        throw err('the key is for ' + s.algorithm.name + ', not ' + name, 'InvalidAccessError');
    if (!s.usages.includes(usage))
        throw err('the key may not be used to ' + usage, 'InvalidAccessError');
    return s;
}

/* ---- import / export ---- */

const HMAC_JWK_ALG = { 'SHA-1': 'HS1', 'SHA-256': 'HS256', 'SHA-384': 'HS384', 'SHA-512': 'HS512' };

function checkJwk(jwk, kty, extractable, usages) {
    if (jwk === null || typeof jwk !== 'object') throw new TypeError('importKey: a JWK must be an object');
    if (jwk.kty !== kty) throw err('JWK: kty must be ' + JSON.stringify(kty), 'DataError');
    if (jwk.ext === false && extractable) throw err('JWK: ext is false but the key is to be extractable', 'DataError');
    if (Array.isArray(jwk.key_ops))
        for (const u of usages || [])
            if (!jwk.key_ops.includes(u)) throw err('JWK: key_ops does not allow ' + JSON.stringify(u), 'DataError');
}

function importSecret(format, data, name, a, extractable, usages) {
    let raw;
    if (format === 'raw') raw = copy(data, 'importKey');
    else if (format === 'jwk') {
        checkJwk(data, 'oct', extractable, usages);
        raw = unb64u(data.k, 'k');
    } else throw err('importKey: a ' + name + ' key cannot be imported as ' + format, 'NotSupportedError');
    if (name === 'HMAC') {
        const hash = hashName(a.hash, 'HMAC');
        if (format === 'jwk' && data.alg !== undefined && data.alg !== HMAC_JWK_ALG[hash])
            throw err('JWK: alg ' + JSON.stringify(data.alg) + ' does not match ' + hash, 'DataError');
        if (raw.byteLength === 0) throw err('HMAC: the key is empty', 'DataError');
        let length = raw.byteLength * 8;
        if (a.length !== undefined) {
            if (a.length > length || a.length <= length - 8) throw err('HMAC: length does not match the key', 'DataError');
            length = a.length;
        }
        return makeKey('secret', extractable, { name, hash: { name: hash }, length }, usages, { secret: raw });
    }
    if (![16, 24, 32].includes(raw.byteLength)) throw err('AES-GCM: the key must be 128, 192 or 256 bits', 'DataError');
    if (format === 'jwk' && data.alg !== undefined && data.alg !== 'A' + raw.byteLength * 8 + 'GCM')
        throw err('JWK: alg ' + JSON.stringify(data.alg) + ' does not match the key', 'DataError');
    return makeKey('secret', extractable, { name, length: raw.byteLength * 8 }, usages, { secret: raw });
}

function importAsym(format, data, name, a, extractable, usages) {
    let pkey, type;
    const ec = name === 'ECDSA';
    if (ec && a.namedCurve !== 'P-256')
        throw err('ECDSA: only the P-256 curve is supported, not ' + JSON.stringify(a.namedCurve), 'NotSupportedError');
    try {
        if (format === 'raw') {
            type = 'public';
            pkey = ec ? hx.ecImport(bytes(data, 'importKey'), null) : hx.edImport(bytes(data, 'importKey'), false);
        } else if (format === 'spki' || format === 'pkcs8') {
            type = format === 'spki' ? 'public' : 'private';
            pkey = hx.derImport(format === 'pkcs8', bytes(data, 'importKey'));
        } else if (format === 'jwk') {
            checkJwk(data, ec ? 'EC' : 'OKP', extractable, usages);
            type = data.d === undefined ? 'public' : 'private';
            if (ec) {
                if (data.crv !== 'P-256') throw err('JWK: crv must be "P-256"', 'DataError');
                const x = new Uint8Array(unb64u(data.x, 'x')), y = new Uint8Array(unb64u(data.y, 'y'));
                if (x.length !== 32 || y.length !== 32) throw err('JWK: x and y must be 32 bytes', 'DataError');
                const pt = new Uint8Array(65);
                pt[0] = 4;
                pt.set(x, 1);
                pt.set(y, 33);
                pkey = hx.ecImport(pt, type === 'private' ? unb64u(data.d, 'd') : null);
            } else {
                if (data.crv !== 'Ed25519') throw err('JWK: crv must be "Ed25519"', 'DataError');
                const x = unb64u(data.x, 'x');
                pkey = hx.edImport(type === 'private' ? unb64u(data.d, 'd') : x, type === 'private');
                if (type === 'private' && hx.b64enc(hx.keyRaw(pkey)[0], true) !== data.x)
                    throw err('JWK: x is not the public key of d', 'DataError');
            }
        } else {
            throw err('importKey: unknown format ' + JSON.stringify(format), 'NotSupportedError');
        }
    } catch (e) {
        if (e instanceof DOMException) throw e;
        throw err('importKey: ' + e.message, 'DataError');
    }
    const info = hx.keyInfo(pkey);
    if (ec ? info[0] !== 'EC' || info[1] !== 'P-256' : info[0] !== 'ED25519')
        throw err('importKey: the key is not a ' + (ec ? 'P-256' : 'Ed25519') + ' key', 'DataError');
    const algorithm = ec ? { name, namedCurve: 'P-256' } : name === 'NODE-ED25519' ?
        { name, namedCurve: 'NODE-ED25519' } : { name };
    return makeKey(type, extractable, algorithm, usages, { pkey });
}

function importKey(format, data, a, extractable, usages) {
    const name = keyAlg(a);
    a = typeof a === 'string' ? { name: a } : a;
    if (name === 'HMAC' || name === 'AES-GCM') return importSecret(format, data, name, a, extractable, usages);
    return importAsym(format, data, name, a, extractable, usages);
}

function exportKey(format, key) {
    const s = slot(key);
    if (!s.extractable) throw err('the key is not extractable', 'InvalidAccessError');
    const name = s.algorithm.name;
    const ops = { key_ops: s.usages.slice(), ext: true };
    if (s.secret) {
        if (format === 'raw') return s.secret.slice(0);
        if (format === 'jwk') {
            const alg = name === 'HMAC' ? HMAC_JWK_ALG[s.algorithm.hash.name] : 'A' + s.secret.byteLength * 8 + 'GCM';
            return Object.assign({ kty: 'oct', k: b64u(s.secret), alg }, ops);
        }
        throw err('exportKey: a ' + name + ' key cannot be exported as ' + format, 'NotSupportedError');
    }
    const [pub, priv] = hx.keyRaw(s.pkey);
    switch (format) {
    case 'raw':
        if (s.type !== 'public') throw err('exportKey: only a public key exports as raw', 'InvalidAccessError');
        return pub;
    case 'spki':
    case 'pkcs8':
        if ((format === 'spki') !== (s.type === 'public'))
            throw err('exportKey: a ' + s.type + ' key does not export as ' + format, 'InvalidAccessError');
        return hx.derExport(s.pkey, format === 'pkcs8');
    case 'jwk': {
        let j;
        if (name === 'ECDSA') {
            const p = new Uint8Array(pub);
            j = { kty: 'EC', crv: 'P-256', x: b64u(p.subarray(1, 33)), y: b64u(p.subarray(33, 65)) };
        } else {
            j = { kty: 'OKP', crv: 'Ed25519', x: b64u(pub) };
        }
        if (s.type === 'private') j.d = b64u(priv);
        return Object.assign(j, ops);
    }
    }
    throw err('exportKey: unknown format ' + JSON.stringify(format), 'NotSupportedError');
}

function generateKey(a, extractable, usages) {
    const name = keyAlg(a);
    a = typeof a === 'string' ? { name: a } : a;
    if (name === 'HMAC') {
        const hash = hashName(a.hash, 'HMAC');
        const length = a.length === undefined ? (hash === 'SHA-384' || hash === 'SHA-512' ? 1024 : 512) : Number(a.length);
        if (!(length > 0) || length % 8) throw err('HMAC: length must be a positive multiple of 8', 'OperationError');
        const raw = hx.random(new Uint8Array(length / 8)).buffer;
        return makeKey('secret', extractable, { name, hash: { name: hash }, length }, usages, { secret: raw });
    }
    if (name === 'AES-GCM') {
        if (![128, 192, 256].includes(a.length)) throw err('AES-GCM: length must be 128, 192 or 256', 'OperationError');
        const raw = hx.random(new Uint8Array(a.length / 8)).buffer;
        return makeKey('secret', extractable, { name, length: a.length }, usages, { secret: raw });
    }
    if (name === 'ECDSA' && a.namedCurve !== 'P-256')
        throw err('ECDSA: only the P-256 curve is supported', 'NotSupportedError');
    const pkey = hx.keygen(name === 'ECDSA' ? 'EC' : 'ED25519');
    const algorithm = name === 'ECDSA' ? { name, namedCurve: 'P-256' } : name === 'NODE-ED25519' ?
        { name, namedCurve: 'NODE-ED25519' } : { name };
    usages = Array.from(usages || []);
    const pubUsages = usages.filter(u => u === 'verify');
    const privUsages = usages.filter(u => u !== 'verify');
    const publicKey = makeKey('public', true, algorithm,
        pubUsages, { pkey: hx.derImport(false, hx.derExport(pkey, false)) });
    const privateKey = makeKey('private', extractable, algorithm, privUsages, { pkey });
    return { publicKey, privateKey };
}

/* ---- operations ---- */

function sign(a, key, data) {
    const name = keyAlg(a);
    const s = useKey(key, name, 'sign');
    if (name === 'HMAC') return hx.hmac(s.algorithm.hash.name, s.secret, bytes(data, 'sign'));
    if (name === 'ECDSA') return hx.sign(s.pkey, hashName(a.hash, 'ECDSA'), bytes(data, 'sign'));
    return hx.sign(s.pkey, null, bytes(data, 'sign'));
}

function verify(a, key, signature, data) {
    const name = keyAlg(a);
    const s = useKey(key, name, 'verify');
    const sig = bytes(signature, 'verify'), msg = bytes(data, 'verify');
    if (name === 'HMAC') {
        const mac = hx.hmac(s.algorithm.hash.name, s.secret, msg);
        return mac.byteLength === sig.byteLength && hx.tse(mac, sig);
    }
    return hx.verify(s.pkey, name === 'ECDSA' ? hashName(a.hash, 'ECDSA') : null, sig, msg);
}

const GCM_TAGS = [32, 64, 96, 104, 112, 120, 128];

function aesGcm(encrypt, a, key, data) {
    const name = keyAlg(a);
    if (name !== 'AES-GCM') throw err(algName(a) + ' cannot ' + (encrypt ? 'encrypt' : 'decrypt'), 'NotSupportedError');
    const s = useKey(key, name, encrypt ? 'encrypt' : 'decrypt');
    if (a.iv === undefined) throw new TypeError('AES-GCM: iv is required');
    const iv = bytes(a.iv, 'AES-GCM iv');
    const tag = a.tagLength === undefined ? 128 : Number(a.tagLength);
    if (!GCM_TAGS.includes(tag)) throw err('AES-GCM: tagLength must be one of ' + GCM_TAGS.join(', '), 'OperationError');
    if (iv.byteLength === 0) throw err('AES-GCM: the iv is empty', 'OperationError');
    const aad = a.additionalData === undefined ? null : bytes(a.additionalData, 'AES-GCM additionalData');
    const out = hx.aesgcm(encrypt, s.secret, iv, aad, tag / 8, bytes(data, encrypt ? 'encrypt' : 'decrypt'));
    if (out === null) throw err('AES-GCM: the data could not be authenticated', 'OperationError');
    return out;
}

function digest(a, data) {
    const n = HASHES[algName(a).toUpperCase()];
    if (!n) throw err('digest: unsupported algorithm ' + JSON.stringify(algName(a)), 'NotSupportedError');
    return hx.digest(n, bytes(data, 'digest'));
}

class SubtleCrypto {
    constructor() { throw new TypeError('Illegal constructor'); }
    digest(a, data) { return settle(() => digest(a, data)); }
    importKey(format, data, a, extractable, usages) {
        return settle(() => importKey(format, data, a, extractable, usages));
    }
    exportKey(format, key) { return settle(() => exportKey(format, key)); }
    generateKey(a, extractable, usages) { return settle(() => generateKey(a, extractable, usages)); }
    sign(a, key, data) { return settle(() => sign(a, key, data)); }
    verify(a, key, signature, data) { return settle(() => verify(a, key, signature, data)); }
    encrypt(a, key, data) { return settle(() => aesGcm(true, a, key, data)); }
    decrypt(a, key, data) { return settle(() => aesGcm(false, a, key, data)); }
    /* Cloudflare's extension: synchronous, and the lengths must match */
    timingSafeEqual(a, b) { return hx.tse(bytes(a, 'timingSafeEqual'), bytes(b, 'timingSafeEqual')); }
    get [Symbol.toStringTag]() { return 'SubtleCrypto'; }
}
define('SubtleCrypto', SubtleCrypto);
const subtle = Object.create(SubtleCrypto.prototype);

class Crypto {
    constructor() { throw new TypeError('Illegal constructor'); }
    get subtle() { return subtle; }
    getRandomValues(view) {
        if (!ArrayBuffer.isView(view) || view instanceof Float32Array || view instanceof Float64Array ||
            view instanceof DataView)
            throw new TypeError('getRandomValues: expected an integer typed array');
        if (view.byteLength > 65536)
            throw new DOMException('getRandomValues: at most 65536 bytes', 'QuotaExceededError');
        hx.random(view);
        return view;
    }
    randomUUID() {
        const b = hx.random(new Uint8Array(16));
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        return HEX[b[0]] + HEX[b[1]] + HEX[b[2]] + HEX[b[3]] + '-' + HEX[b[4]] + HEX[b[5]] + '-' +
            HEX[b[6]] + HEX[b[7]] + '-' + HEX[b[8]] + HEX[b[9]] + '-' + HEX[b[10]] + HEX[b[11]] +
            HEX[b[12]] + HEX[b[13]] + HEX[b[14]] + HEX[b[15]];
    }
    get [Symbol.toStringTag]() { return 'Crypto'; }
}
define('Crypto', Crypto);
define('crypto', Object.create(Crypto.prototype));
})
