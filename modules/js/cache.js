/*
 * cache.js - the Cache API as Workers have it: `caches.default`,
 * `await caches.open(name)`, and a Cache's `put`, `match`, `delete`.
 *
 * Called by js_runtime.c with `hx` (the store is js_cache.c: per worker
 * and js instance, `cache_size` bytes, least recently used first out) and
 * prelude.js's `lib`. This file holds the HTTP rules, those of a shared
 * cache:
 *   - only GET requests, keyed by URL (without the fragment); `Vary` other
 *     than `*` is ignored, as Workers do;
 *   - a response is stored for `s-maxage`, else `max-age`, else until
 *     `Expires` (from `Date`); one with none of them, or with `no-store`,
 *     `no-cache`, `private` or a `Set-Cookie` header, is not stored;
 *   - put() refuses (TypeError) a non-GET request, a 206 response, `Vary: *`
 *     and a used body; it reads the body whole (at most max_body);
 *   - match() answers 304 to a request whose If-None-Match has the stored
 *     ETag (or whose If-Modified-Since is not before Last-Modified), and
 *     sets `Age`.
 */
(function (hx, lib) {
'use strict';
const { define, INSPECT, Request, Response, Headers } = lib;

function keyOf(request) {
    const r = request instanceof Request ? request : new Request(request);
    const u = new URL(r.url);
    u.hash = '';
    return { url: u.href, method: r.method, req: r };
}

function directives(value) {
    const m = new Map();
    if (value === null) return m;
    for (const part of value.split(',')) {
        const i = part.indexOf('=');
        const name = (i < 0 ? part : part.slice(0, i)).trim().toLowerCase();
        if (!name) continue;
        m.set(name, i < 0 ? true : part.slice(i + 1).trim().replace(/^"(.*)"$/, '$1'));
    }
    return m;
}

function seconds(v) {
    const n = Number(v);
    return typeof v === 'string' && /^\d+$/.test(v.trim()) && Number.isFinite(n) ? n : null;
}

/* How long RESPONSE may be served from the cache, in ms (0: not stored). */
function freshness(response) {
    const h = response.headers;
    const cc = directives(h.get('cache-control'));
    if (cc.has('no-store') || cc.has('no-cache') || cc.has('private') || h.has('set-cookie')) return 0;
    for (const d of ['s-maxage', 'max-age']) {
        if (!cc.has(d)) continue;
        const s = seconds(cc.get(d));
        if (s !== null) return s * 1000;
    }
    const exp = h.get('expires');
    if (exp === null) return 0;
    const t = Date.parse(exp), d = h.has('date') ? Date.parse(h.get('date')) : NaN;
    if (isNaN(t)) return 0;
    return Math.max(0, t - (isNaN(d) ? Date.now() : d));
}

function notModified(req, headers) {
    const inm = req.headers.get('if-none-match');
    const etag = headers.get('etag');
    if (inm !== null && etag !== null) {
        const weak = (t) => t.trim().replace(/^W\//, '');
        return inm.trim() === '*' || inm.split(',').some((t) => weak(t) === weak(etag));
    }
    const ims = req.headers.get('if-modified-since'), lm = headers.get('last-modified');
    if (inm === null && ims !== null && lm !== null) {
        const a = Date.parse(ims), b = Date.parse(lm);
        return !isNaN(a) && !isNaN(b) && b <= a;
    }
    return false;
}

class Cache {
    constructor() { throw new TypeError('Illegal constructor'); }
    async put(request, response) {
        const k = keyOf(request);
        if (k.method !== 'GET') throw new TypeError('Cache.put: only GET requests can be cached, not ' + k.method);
        if (!(response instanceof Response)) throw new TypeError('Cache.put: expected a Response');
        if (response.status === 206) throw new TypeError('Cache.put: a partial (206) response cannot be cached');
        const vary = response.headers.get('vary');
        if (vary !== null && vary.split(',').some((v) => v.trim() === '*'))
            throw new TypeError('Cache.put: a response with "Vary: *" cannot be cached');
        if (response.bodyUsed) throw new TypeError('Cache.put: the response body has already been used');
        const ttl = freshness(response);
        const body = await response.arrayBuffer();
        if (ttl > 0) hx.cachePut(this._ns, k.url, response.status, response.headers._l, body, ttl);
    }
    async match(request, options) {
        const k = keyOf(request);
        if (k.method !== 'GET' && !(options && options.ignoreMethod)) return undefined;
        const hit = hx.cacheMatch(this._ns, k.url);
        if (hit === null) return undefined;
        const headers = Headers._flat(hit[1]);
        headers.set('age', String(hit[3]));
        if (notModified(k.req, headers)) return new Response(null, { status: 304, headers });
        return new Response(hit[2], { status: hit[0], headers });
    }
    async delete(request, options) {
        const k = keyOf(request);
        if (k.method !== 'GET' && !(options && options.ignoreMethod)) return false;
        return hx.cacheDelete(this._ns, k.url);
    }
    get [Symbol.toStringTag]() { return 'Cache'; }
}
define('Cache', Cache);

function makeCache(ns) {
    const c = Object.create(Cache.prototype);
    Object.defineProperty(c, '_ns', { value: ns });
    return c;
}

const byName = new Map();
const dflt = makeCache('');

class CacheStorage {
    constructor() { throw new TypeError('Illegal constructor'); }
    get default() { return dflt; }
    async open(name) {
        name = String(name);
        if (!byName.has(name)) byName.set(name, makeCache('n:' + name));
        return byName.get(name);
    }
    get [Symbol.toStringTag]() { return 'CacheStorage'; }
    [INSPECT]() {
        const [entries, used, size] = hx.cacheStats();
        return 'CacheStorage { entries: ' + entries + ', bytes: ' + used + ', cache_size: ' + size + ' }';
    }
}
define('CacheStorage', CacheStorage);
define('caches', Object.create(CacheStorage.prototype));
})
