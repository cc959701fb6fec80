/*
 * prelude.js - the Web API subset of the js module, in JavaScript.
 *
 * Evaluated once per worker runtime before the user's script, first of the
 * embedded files (modules/js/CMakeLists.txt lists them). It is a function
 * expression: js_runtime.c calls it with `hx`, the object of native helpers
 * (js_natives in js_web.c, js_crypto_natives in js_crypto.c), and keeps
 * the object it returns ({dispatch, filterRequest, filterResponse, ...});
 * its `lib` member is passed to the files after it. Nothing here is
 * reachable from user code except the globals it defines on purpose.
 */
(function (hx) {
'use strict';
const G = globalThis;

/* ---- small helpers ---- */

function define(name, value) {
    Object.defineProperty(G, name, { value, writable: true, configurable: true, enumerable: false });
}

function errorText(e) {
    if (e instanceof Error) {
        /* the stack starts with "Name: message" (quickjs_patch.cmake) */
        const head = e.message ? e.name + ': ' + e.message : e.name;
        const st = typeof e.stack === 'string' ? e.stack.replace(/\n$/, '') : '';
        if (st.startsWith(head)) return st;
        return st ? head + '\n' + st.replace(/^[^\n]*\n/, '') : head;
    }
    try {
        return 'uncaught value: ' + (typeof e === 'string' ? e : JSON.stringify(e));
    } catch (_) {
        return 'uncaught value: ' + String(e);
    }
}

const DOM_CODES = { IndexSizeError: 1, NotFoundError: 8, NotSupportedError: 9, InvalidStateError: 11,
    SyntaxError: 12, InvalidAccessError: 15, TypeMismatchError: 17, SecurityError: 18, NetworkError: 19,
    AbortError: 20, QuotaExceededError: 22, TimeoutError: 23, DataCloneError: 25, InvalidCharacterError: 5 };

class DOMException extends Error {
    constructor(message, name) {
        super(message === undefined ? '' : String(message));
        this.name = name === undefined ? 'Error' : String(name);
        /* the stack's first line was made before the name was set */
        if (typeof this.stack === 'string')
            this.stack = this.stack.replace(/^[^\n]*/, this.message ? this.name + ': ' + this.message : this.name);
    }
    get code() { return DOM_CODES[this.name] || 0; }
}
define('DOMException', DOMException);

/* Body init -> [string | ArrayBuffer | ReadableStream | null, implied
 * Content-Type or null]. Files after this one (formdata.js, streams.js)
 * add converters for their types to `extractors`. */
const extractors = [];
const TEXT_PLAIN = 'text/plain;charset=UTF-8';
function extractBody(body) {
    if (body === null || body === undefined) return [null, null];
    if (typeof body === 'string') return [body, TEXT_PLAIN];
    if (body instanceof ArrayBuffer) return [body.slice(0), null];
    if (ArrayBuffer.isView(body))
        return [body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength), null];
    if (body instanceof URLSearchParams) return [body.toString(), 'application/x-www-form-urlencoded;charset=UTF-8'];
    for (const x of extractors) {
        const r = x(body);
        if (r !== undefined) return r;
    }
    return [String(body), 'text/plain;charset=UTF-8'];
}

function bodyText(b) {
    if (b === null || b === undefined) return '';
    return typeof b === 'string' ? b : hx.decode(b, false, false);
}

function bodyBuffer(b) {
    if (b === null || b === undefined) return new ArrayBuffer(0);
    return typeof b === 'string' ? hx.encode(b) : b.slice(0);
}

/* ---- console -> heliosd's error log, formatted the way node and workerd
 * print values (util.inspect: one line, depth 2) ---- */

const INSPECT = Symbol.for('nodejs.util.inspect.custom');
const IDENT_RX = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
const TYPED_ARRAYS = [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array,
    Uint32Array, Float32Array, Float64Array];

function quote(s) {
    const q = s.includes("'") && !s.includes('"') ? '"' : "'";
    return q + s.replace(/[\\\n\r\t\b\f\v\0]/g, c => ({ '\\': '\\\\', '\n': '\\n', '\r': '\\r',
        '\t': '\\t', '\b': '\\b', '\f': '\\f', '\v': '\\v', '\0': '\\0' })[c])
        .replace(q === "'" ? /'/g : /"/g, '\\' + q) + q;
}

function ctorName(o) {
    try {
        const p = Object.getPrototypeOf(o);
        if (p === null) return null;
        const c = p.constructor;
        return typeof c === 'function' && c.name ? c.name : '';
    } catch (_) {
        return '';
    }
}

/* Scripts run from bytecode, without their source: a class is told by its
 * read-only `prototype` (the globals it could be confused with, Map or
 * Response, are named on globalThis), async and generator functions by
 * their prototype's constructor. */
function fnText(f) {
    const name = f.name ? String(f.name) : '';
    const d = Object.getOwnPropertyDescriptor(f, 'prototype');
    if (d && !d.writable && !(name && G[name] === f)) return '[class ' + (name || '(anonymous)') + ']';
    let kind = ctorName(f);
    if (kind !== 'AsyncFunction' && kind !== 'GeneratorFunction' && kind !== 'AsyncGeneratorFunction')
        kind = 'Function';
    return '[' + kind + (name ? ': ' + name : ' (anonymous)') + ']';
}

function inspect(v, opts) {
    const st = { depth: opts && opts.depth !== undefined ? opts.depth : 2, seen: [], refs: new Map() };
    return inspectValue(v, st, 0);
}

function inspectKey(k) {
    if (typeof k === 'symbol') return '[' + k.toString() + ']';
    return IDENT_RX.test(k) ? k : quote(k);
}

function inspectProps(o, st, level, skipIndices) {
    const out = [];
    for (const k of Reflect.ownKeys(o)) {
        const d = Object.getOwnPropertyDescriptor(o, k);
        if (!d || (!d.enumerable && typeof k !== 'symbol') || (typeof k === 'symbol' && !d.enumerable)) continue;
        if (skipIndices && typeof k === 'string' && /^(0|[1-9][0-9]*)$/.test(k)) continue;
        let val;
        if (d.get || d.set) val = d.get && d.set ? '[Getter/Setter]' : d.get ? '[Getter]' : '[Setter]';
        else val = inspectValue(d.value, st, level + 1);
        out.push(inspectKey(k) + ': ' + val);
    }
    return out;
}

function wrap(prefix, items, open, close) {
    const body = items.length ? open + ' ' + items.join(', ') + ' ' + close : open + close;
    return prefix ? prefix + ' ' + body : body;
}

function inspectValue(v, st, level) {
    switch (typeof v) {
    case 'string': return quote(v);
    case 'number': return Object.is(v, -0) ? '-0' : String(v);
    case 'bigint': return String(v) + 'n';
    case 'boolean': return String(v);
    case 'undefined': return 'undefined';
    case 'symbol': return v.toString();
    case 'function': {
        const props = inspectProps(v, st, level, false).filter(p => !/^(prototype|length|name):/.test(p));
        return props.length ? wrap(fnText(v), props, '{', '}') : fnText(v);
    }
    }
    if (v === null) return 'null';
    if (st.seen.includes(v)) {
        if (!st.refs.has(v)) st.refs.set(v, st.refs.size + 1);
        return '[Circular *' + st.refs.get(v) + ']';
    }
    if (typeof v[INSPECT] === 'function') {
        const r = v[INSPECT](st.depth - level, { depth: st.depth - level },
            (x, o) => inspectValue(x, st, level + 1));
        return typeof r === 'string' ? r : inspectValue(r, st, level);
    }
    const name = ctorName(v);
    if (v instanceof Error) return errorText(v);
    if (v instanceof Date) return isNaN(v.getTime()) ? 'Invalid Date' : v.toISOString();
    if (v instanceof RegExp) return v.toString();
    if (v instanceof String) return '[String: ' + quote(String(v)) + ']';
    if (v instanceof Number) return '[Number: ' + inspectValue(Number(v), st, level) + ']';
    if (v instanceof Boolean) return '[Boolean: ' + String(Boolean(v.valueOf())) + ']';
    if (v instanceof Promise) return 'Promise { <unknown> }';
    if (v instanceof WeakMap || v instanceof WeakSet) return name + ' { <items unknown> }';
    const isArray = Array.isArray(v);
    const typed = ArrayBuffer.isView(v) && !(v instanceof DataView);
    if (level > st.depth) {
        if (isArray) return '[Array]';
        return '[' + (name || 'Object') + ']';
    }
    st.seen.push(v);
    let out;
    try {
        if (isArray || typed) {
            const items = [];
            let holes = 0;
            const n = Math.min(v.length, 100);
            const flush = () => {
                if (holes) items.push('<' + holes + ' empty item' + (holes > 1 ? 's' : '') + '>');
                holes = 0;
            };
            for (let i = 0; i < n; i++) {
                if (isArray && !(i in v)) { holes++; continue; }
                flush();
                items.push(inspectValue(v[i], st, level + 1));
            }
            flush();
            if (v.length > n) items.push('... ' + (v.length - n) + ' more item' + (v.length - n > 1 ? 's' : ''));
            if (isArray) items.push(...inspectProps(v, st, level, true));
            const prefix = isArray ? (name === 'Array' ? '' : name + '(' + v.length + ')')
                : name + '(' + v.length + ')';
            out = wrap(prefix, items, '[', ']');
        } else if (v instanceof Map) {
            const items = [];
            for (const [k, x] of v) items.push(inspectValue(k, st, level + 1) + ' => ' + inspectValue(x, st, level + 1));
            out = wrap(name + '(' + v.size + ')', items, '{', '}');
        } else if (v instanceof Set) {
            const items = [];
            for (const x of v) items.push(inspectValue(x, st, level + 1));
            out = wrap(name + '(' + v.size + ')', items, '{', '}');
        } else if (v instanceof ArrayBuffer) {
            const b = new Uint8Array(v, 0, Math.min(v.byteLength, 50));
            let hex = Array.from(b, x => (x + 256).toString(16).slice(1)).join(' ');
            if (v.byteLength > 50) hex += ' ... ' + (v.byteLength - 50) + ' more bytes';
            out = 'ArrayBuffer { [Uint8Contents]: <' + hex + '>, byteLength: ' + v.byteLength + ' }';
        } else if (v instanceof DataView) {
            out = 'DataView { byteLength: ' + v.byteLength + ', byteOffset: ' + v.byteOffset +
                ', buffer: ' + inspectValue(v.buffer, st, level + 1) + ' }';
        } else {
            const prefix = name === null ? '[Object: null prototype]' : name === 'Object' ? '' : name;
            const tag = v[Symbol.toStringTag];
            const p2 = typeof tag === 'string' && tag !== name ? (prefix ? prefix + ' ' : 'Object ') + '[' + tag + ']' : prefix;
            out = wrap(p2, inspectProps(v, st, level, false), '{', '}');
        }
    } finally {
        st.seen.pop();
    }
    if (st.refs.has(v)) out = '<ref *' + st.refs.get(v) + '> ' + out;
    return out;
}

function fmt(args) {
    let out = '';
    let i = 0;
    if (typeof args[0] === 'string' && args[0].includes('%') && args.length > 1) {
        const f = args[0];
        i = 1;
        for (let k = 0; k < f.length; k++) {
            const c = f[k];
            if (c !== '%' || k + 1 >= f.length) { out += c; continue; }
            const d = f[++k];
            if (d === '%') { out += '%'; continue; }
            if (!'sdifjoOc'.includes(d) || i >= args.length) { out += '%' + d; continue; }
            const a = args[i++];
            if (d === 's') out += typeof a === 'string' ? a : typeof a === 'object' && a !== null ? inspect(a, { depth: 1 }) : String(a);
            else if (d === 'd') out += typeof a === 'object' ? 'NaN' : inspectValue(Number(a), null, 0);
            else if (d === 'i') out += String(parseInt(a, 10));
            else if (d === 'f') out += String(parseFloat(a));
            else if (d === 'j') { try { out += JSON.stringify(a); } catch (_) { out += '[Circular]'; } }
            else if (d === 'o' || d === 'O') out += inspect(a, { depth: d === 'o' ? 4 : 2 });
            /* %c: CSS, ignored */
        }
    }
    for (; i < args.length; i++) {
        const a = args[i];
        if (out !== '' || i > 0) out += ' ';
        out += typeof a === 'string' ? a : inspect(a);
    }
    return out;
}
const LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3;
define('console', {
    log: (...a) => hx.log(LOG_INFO, fmt(a)),
    info: (...a) => hx.log(LOG_INFO, fmt(a)),
    debug: (...a) => hx.log(LOG_DEBUG, fmt(a)),
    trace: (...a) => hx.log(LOG_DEBUG, fmt(a)),
    warn: (...a) => hx.log(LOG_WARN, fmt(a)),
    error: (...a) => hx.log(LOG_ERROR, fmt(a)),
});

/* ---- Headers ---- */

const TOKEN_RX = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const BAD_VALUE_RX = /[\r\n\0]/;

function hname(k) {
    k = String(k);
    if (!TOKEN_RX.test(k)) throw new TypeError('invalid header name: ' + JSON.stringify(k));
    return k.toLowerCase();
}

function hvalue(v) {
    v = String(v).replace(/^[\t ]+|[\t ]+$/g, '');
    if (BAD_VALUE_RX.test(v)) throw new TypeError('invalid header value (CR, LF or NUL)');
    return v;
}

class Headers {
    constructor(init) {
        this._l = []; /* [lower-case name, value] pairs, in order */
        if (init === undefined || init === null) return;
        if (init instanceof Headers) {
            for (const p of init._l) this._l.push([p[0], p[1]]);
        } else if (typeof init[Symbol.iterator] === 'function') {
            for (const p of init) {
                const a = Array.from(p);
                if (a.length !== 2) throw new TypeError('a header pair must have two items');
                this.append(a[0], a[1]);
            }
        } else if (typeof init === 'object') {
            for (const k of Object.keys(init)) this.append(k, init[k]);
        } else {
            throw new TypeError('Headers: expected an object, an array of pairs or Headers');
        }
    }
    static _flat(flat) { /* from the native side: [name, value, name, value...] */
        const h = new Headers();
        for (let i = 0; i + 1 < flat.length; i += 2) h._l.push([flat[i].toLowerCase(), flat[i + 1]]);
        return h;
    }
    append(k, v) { this._l.push([hname(k), hvalue(v)]); }
    set(k, v) {
        k = hname(k);
        v = hvalue(v);
        const out = [];
        let done = false;
        for (const p of this._l) {
            if (p[0] !== k) out.push(p);
            else if (!done) { out.push([k, v]); done = true; }
        }
        if (!done) out.push([k, v]);
        this._l = out;
    }
    get(k) {
        k = String(k).toLowerCase();
        let v = null;
        for (const p of this._l)
            if (p[0] === k) v = v === null ? p[1] : v + ', ' + p[1];
        return v;
    }
    getSetCookie() { return this._l.filter(p => p[0] === 'set-cookie').map(p => p[1]); }
    has(k) {
        k = String(k).toLowerCase();
        return this._l.some(p => p[0] === k);
    }
    delete(k) {
        k = String(k).toLowerCase();
        this._l = this._l.filter(p => p[0] !== k);
    }
    forEach(cb, thisArg) {
        for (const [k, v] of this.entries()) cb.call(thisArg, v, k, this);
    }
    *entries() {
        const names = [...new Set(this._l.map(p => p[0]))].sort();
        for (const n of names) {
            if (n === 'set-cookie') {
                for (const v of this.getSetCookie()) yield [n, v];
            } else {
                yield [n, this.get(n)];
            }
        }
    }
    *keys() { for (const [k] of this.entries()) yield k; }
    *values() { for (const [, v] of this.entries()) yield v; }
    [Symbol.iterator]() { return this.entries(); }
    get [Symbol.toStringTag]() { return 'Headers'; }
    [INSPECT]() {
        const items = [...this.entries()].map(([k, v]) => quote(k) + ' => ' + quote(v));
        return wrap('Headers(' + items.length + ')', items, '{', '}');
    }
}
define('Headers', Headers);

/* ---- URLSearchParams ---- */

function formDecode(s) {
    s = s.replace(/\+/g, ' ');
    try { return decodeURIComponent(s); } catch (_) { return s; }
}

function formEncode(s) {
    return encodeURIComponent(s).replace(/[!'()~]/g, c => '%' + c.charCodeAt(0).toString(16).toUpperCase())
        .replace(/%20/g, '+');
}

function parseQuery(q) {
    const out = [];
    if (q.startsWith('?')) q = q.slice(1);
    for (const part of q.split('&')) {
        if (part === '') continue;
        const i = part.indexOf('=');
        out.push(i < 0 ? [formDecode(part), ''] : [formDecode(part.slice(0, i)), formDecode(part.slice(i + 1))]);
    }
    return out;
}

class URLSearchParams {
    constructor(init) {
        this._l = [];
        this._url = null;
        if (init === undefined || init === null) return;
        if (init instanceof URLSearchParams) this._l = init._l.map(p => [p[0], p[1]]);
        else if (typeof init === 'string') this._l = parseQuery(init);
        else if (typeof init[Symbol.iterator] === 'function')
            for (const p of init) {
                const a = Array.from(p);
                if (a.length !== 2) throw new TypeError('a search parameter pair must have two items');
                this._l.push([String(a[0]), String(a[1])]);
            }
        else if (typeof init === 'object') for (const k of Object.keys(init)) this._l.push([k, String(init[k])]);
        else this._l = parseQuery(String(init));
    }
    _sync() { if (this._url) this._url._q = this.toString(); }
    get size() { return this._l.length; }
    append(k, v) { this._l.push([String(k), String(v)]); this._sync(); }
    delete(k) { k = String(k); this._l = this._l.filter(p => p[0] !== k); this._sync(); }
    get(k) { k = String(k); const p = this._l.find(p => p[0] === k); return p ? p[1] : null; }
    getAll(k) { k = String(k); return this._l.filter(p => p[0] === k).map(p => p[1]); }
    has(k) { k = String(k); return this._l.some(p => p[0] === k); }
    set(k, v) {
        k = String(k);
        v = String(v);
        const i = this._l.findIndex(p => p[0] === k);
        if (i < 0) this._l.push([k, v]);
        else {
            this._l[i] = [k, v];
            this._l = this._l.filter((p, j) => j <= i || p[0] !== k);
        }
        this._sync();
    }
    sort() {
        this._l = this._l.map((p, i) => [p, i]).sort((a, b) => (a[0][0] < b[0][0] ? -1 : a[0][0] > b[0][0] ? 1 : a[1] - b[1])).map(x => x[0]);
        this._sync();
    }
    forEach(cb, thisArg) { for (const [k, v] of this._l) cb.call(thisArg, v, k, this); }
    *entries() { for (const p of this._l) yield [p[0], p[1]]; }
    *keys() { for (const p of this._l) yield p[0]; }
    *values() { for (const p of this._l) yield p[1]; }
    [Symbol.iterator]() { return this.entries(); }
    toString() { return this._l.map(p => formEncode(p[0]) + '=' + formEncode(p[1])).join('&'); }
    [INSPECT]() { return wrap('URLSearchParams', this._l.map(p => quote(p[0]) + ' => ' + quote(p[1])), '{', '}'); }
}
define('URLSearchParams', URLSearchParams);

/* ---- URL (special schemes with an authority: http, https, ws, wss, ...) ---- */

const URL_RX = /^([a-zA-Z][a-zA-Z0-9+.\-]*):\/\/(?:([^@\/?#]*)@)?(\[[0-9a-fA-F:.]*\]|[^\/?#:]*)(?::(\d*))?([^?#]*)(\?[^#]*)?(#.*)?$/;
const DEFAULT_PORTS = { 'http:': '80', 'https:': '443', 'ws:': '80', 'wss:': '443' };

function encodePart(s, extra) {
    return s.replace(extra, c => encodeURIComponent(c));
}

function normalizePath(p) {
    const out = [];
    const segs = p.split('/');
    for (let i = 1; i < segs.length; i++) {
        const s = segs[i];
        if (s === '..' || s.toLowerCase() === '%2e%2e') {
            if (out.length) out.pop();
            if (i === segs.length - 1) out.push('');
        } else if (s === '.' || s.toLowerCase() === '%2e') {
            if (i === segs.length - 1) out.push('');
        } else out.push(s);
    }
    return '/' + out.join('/');
}

class URL {
    constructor(url, base) {
        url = String(url).replace(/^[\x00-\x20]+|[\x00-\x20]+$/g, '').replace(/[\t\n\r]/g, '');
        let m = URL_RX.exec(url);
        if (!m && base !== undefined) {
            const b = base instanceof URL ? base : new URL(base);
            let abs;
            if (url.startsWith('//')) abs = b.protocol + url;
            else if (url.startsWith('/')) abs = b.origin + url;
            else if (url.startsWith('?')) abs = b.origin + b.pathname + url;
            else if (url.startsWith('#')) abs = b.origin + b.pathname + b.search + url;
            else if (url === '') abs = b.origin + b.pathname + b.search;
            else abs = b.origin + b.pathname.replace(/[^/]*$/, '') + url;
            m = URL_RX.exec(abs);
        }
        if (!m) throw new TypeError('Invalid URL: ' + JSON.stringify(url));
        this._set(m);
    }
    _set(m) {
        this.protocol = m[1].toLowerCase() + ':';
        const cred = m[2] === undefined ? '' : m[2];
        const ci = cred.indexOf(':');
        this.username = ci < 0 ? cred : cred.slice(0, ci);
        this.password = ci < 0 ? '' : cred.slice(ci + 1);
        this.hostname = m[3].toLowerCase();
        if (this.hostname === '') throw new TypeError('Invalid URL: empty host');
        this._port = m[4] === undefined || m[4] === DEFAULT_PORTS[this.protocol] ? '' : String(Number(m[4]));
        this._path = normalizePath(encodePart(m[5] || '/', /[\x00-\x20"<>`{}\x7f-\uffff]/g));
        const q = m[6] === undefined ? '' : m[6].slice(1);
        this._q = encodePart(q, /[\x00-\x20"#<>\x7f-\uffff]/g);
        this._hash = m[7] === undefined || m[7] === '#' ? '' : m[7];
        this._sp = null;
    }
    get port() { return this._port; }
    set port(v) { v = String(v); this._port = v === DEFAULT_PORTS[this.protocol] ? '' : v; }
    get host() { return this.hostname + (this._port ? ':' + this._port : ''); }
    set host(v) {
        const m = /^(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(String(v));
        if (m) { this.hostname = m[1].toLowerCase(); if (m[2] !== undefined) this.port = m[2]; }
    }
    get origin() { return this.protocol + '//' + this.host; }
    get pathname() { return this._path; }
    set pathname(v) { v = String(v); this._path = normalizePath(encodePart(v.startsWith('/') ? v : '/' + v, /[\x00-\x20"<>`{}?#\x7f-\uffff]/g)); }
    get search() { return this._q ? '?' + this._q : ''; }
    set search(v) {
        v = String(v);
        this._q = encodePart(v.startsWith('?') ? v.slice(1) : v, /[\x00-\x20"#<>\x7f-\uffff]/g);
        if (this._sp) this._sp._l = parseQuery(this._q);
    }
    get searchParams() {
        if (!this._sp) { this._sp = new URLSearchParams(this._q); this._sp._url = this; }
        return this._sp;
    }
    get hash() { return this._hash; }
    set hash(v) { v = String(v); this._hash = v === '' || v === '#' ? '' : v.startsWith('#') ? v : '#' + v; }
    get href() {
        const cred = this.username || this.password
            ? this.username + (this.password ? ':' + this.password : '') + '@' : '';
        return this.protocol + '//' + cred + this.host + this._path + this.search + this._hash;
    }
    set href(v) {
        const m = URL_RX.exec(String(v));
        if (!m) throw new TypeError('Invalid URL: ' + JSON.stringify(String(v)));
        this._set(m);
    }
    toString() { return this.href; }
    toJSON() { return this.href; }
    [INSPECT](d, o, insp) {
        const f = ['href', 'origin', 'protocol', 'username', 'password', 'host', 'hostname', 'port',
            'pathname', 'search'].map(k => k + ': ' + quote(this[k]));
        f.push('searchParams: ' + insp(this.searchParams), 'hash: ' + quote(this.hash));
        return wrap('URL', f, '{', '}');
    }
    static canParse(u, b) { try { new URL(u, b); return true; } catch (_) { return false; } }
}
define('URL', URL);

/* ---- TextEncoder / TextDecoder, atob / btoa ---- */

class TextEncoder {
    get encoding() { return 'utf-8'; }
    encode(s) { return new Uint8Array(hx.encode(s === undefined ? '' : String(s))); }
}
define('TextEncoder', TextEncoder);

class TextDecoder {
    constructor(label, opts) {
        const l = label === undefined ? 'utf-8' : String(label).trim().toLowerCase();
        if (l !== 'utf-8' && l !== 'utf8' && l !== 'unicode-1-1-utf-8')
            throw new RangeError('TextDecoder: only utf-8 is supported, not ' + JSON.stringify(l));
        this.fatal = !!(opts && opts.fatal);
        this.ignoreBOM = !!(opts && opts.ignoreBOM);
    }
    get encoding() { return 'utf-8'; }
    decode(buf) {
        if (buf === undefined || buf === null) return '';
        if (!(buf instanceof ArrayBuffer) && !ArrayBuffer.isView(buf))
            throw new TypeError('TextDecoder.decode: expected an ArrayBuffer or a view of one');
        return hx.decode(buf, this.fatal, this.ignoreBOM);
    }
}
define('TextDecoder', TextDecoder);

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_INV = (() => { const t = {}; for (let i = 0; i < 64; i++) t[B64[i]] = i; return t; })();

define('btoa', function btoa(s) {
    s = String(s);
    let out = '';
    for (let i = 0; i < s.length; i += 3) {
        const a = s.charCodeAt(i), b = s.charCodeAt(i + 1), c = s.charCodeAt(i + 2);
        if (a > 255 || b > 255 || c > 255)
            throw new DOMException('btoa: the string has characters outside Latin-1', 'InvalidCharacterError');
        const n = (a << 16) | ((b || 0) << 8) | (c || 0);
        out += B64[n >> 18] + B64[(n >> 12) & 63] +
            (i + 1 < s.length ? B64[(n >> 6) & 63] : '=') + (i + 2 < s.length ? B64[n & 63] : '=');
    }
    return out;
});

define('atob', function atob(s) {
    s = String(s).replace(/[\t\n\f\r ]/g, '');
    if (s.length % 4 === 0) s = s.replace(/==?$/, '');
    if (s.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(s))
        throw new DOMException('atob: the string is not valid base64', 'InvalidCharacterError');
    let out = '';
    for (let i = 0; i < s.length; i += 4) {
        const n = (B64_INV[s[i]] << 18) | (B64_INV[s[i + 1]] << 12) |
            ((B64_INV[s[i + 2]] || 0) << 6) | (B64_INV[s[i + 3]] || 0);
        out += String.fromCharCode(n >> 16);
        if (i + 2 < s.length) out += String.fromCharCode((n >> 8) & 255);
        if (i + 3 < s.length) out += String.fromCharCode(n & 255);
    }
    return out;
});

/* ---- timers (request-scoped, on the worker's loop) ---- */

define('setTimeout', function setTimeout(fn, ms, ...args) {
    if (typeof fn !== 'function') throw new TypeError('setTimeout: the callback must be a function');
    ms = Number(ms);
    if (!(ms > 0)) ms = 0;
    return hx.setTimeout(args.length ? () => fn(...args) : fn, Math.min(ms, 2147483647));
});
define('clearTimeout', function clearTimeout(id) {
    if (typeof id === 'number') hx.clearTimeout(id);
});
define('setInterval', function setInterval(fn, ms, ...args) {
    if (typeof fn !== 'function') throw new TypeError('setInterval: the callback must be a function');
    ms = Number(ms);
    if (!(ms > 0)) ms = 0;
    return hx.setTimeout(args.length ? () => fn(...args) : fn, Math.min(ms, 2147483647), true);
});
/* one pool of ids, as in HTML: either clears either */
define('clearInterval', function clearInterval(id) {
    if (typeof id === 'number') hx.clearTimeout(id);
});
define('queueMicrotask', function queueMicrotask(fn) {
    if (typeof fn !== 'function') throw new TypeError('queueMicrotask: the callback must be a function');
    Promise.resolve().then(fn);
});

/* ---- self, performance, structuredClone ---- */

define('self', G);

const timeOrigin = Date.now(), monoOrigin = hx.now();
define('performance', Object.freeze({
    get timeOrigin() { return timeOrigin; },
    now() { return hx.now() - monoOrigin; },
}));

/* The structured clone algorithm for what a worker can hold: primitives,
 * plain objects and arrays (own enumerable properties; prototypes are not
 * kept), Date, RegExp, Map, Set, ArrayBuffer and views, Error objects,
 * boxed primitives, Blob and File; cycles and shared references are kept.
 * Functions, symbols and other platform objects throw DataCloneError.
 * `transfer` is accepted and ignored (everything is copied). */
const CLONE_ERRORS = { Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError };
function cloneValue(v, memo) {
    if (typeof v === 'symbol') throw new DOMException('structuredClone: a Symbol cannot be cloned', 'DataCloneError');
    if (typeof v === 'function') throw new DOMException('structuredClone: a function cannot be cloned', 'DataCloneError');
    if (typeof v !== 'object' || v === null) return v;
    if (memo.has(v)) return memo.get(v);
    let out;
    const set = (o) => { memo.set(v, o); return o; };
    if (v instanceof Boolean) return set(new Boolean(v.valueOf()));
    if (v instanceof Number) return set(new Number(v.valueOf()));
    if (v instanceof String) return set(new String(v.valueOf()));
    if (v instanceof Date) return set(new Date(v.getTime()));
    if (v instanceof RegExp) return set(new RegExp(v.source, v.flags));
    if (v instanceof ArrayBuffer) return set(v.slice(0));
    if (ArrayBuffer.isView(v)) {
        const buf = cloneValue(v.buffer, memo);
        if (v instanceof DataView) return set(new DataView(buf, v.byteOffset, v.byteLength));
        return set(new v.constructor(buf, v.byteOffset, v.length));
    }
    if (typeof G.Blob === 'function' && v instanceof G.Blob) return set(v._clone());
    if (v instanceof Map) {
        out = set(new Map());
        for (const [k, x] of v) out.set(cloneValue(k, memo), cloneValue(x, memo));
        return out;
    }
    if (v instanceof Set) {
        out = set(new Set());
        for (const x of v) out.add(cloneValue(x, memo));
        return out;
    }
    if (v instanceof Error) {
        const C = CLONE_ERRORS[v.name] || Error;
        out = set(new C(v.message));
        if (v.stack !== undefined) out.stack = String(v.stack);
        if ('cause' in v) out.cause = cloneValue(v.cause, memo);
        return out;
    }
    if (Array.isArray(v)) {
        out = set(new Array(v.length));
    } else {
        const proto = Object.getPrototypeOf(v);
        if (proto !== Object.prototype && proto !== null &&
            (v instanceof Promise || v instanceof WeakMap || v instanceof WeakSet ||
             v instanceof Request || v instanceof Response || v instanceof Headers))
            throw new DOMException('structuredClone: ' + ctorName(v) + ' objects cannot be cloned', 'DataCloneError');
        out = set({});
    }
    for (const k of Object.keys(v)) out[k] = cloneValue(v[k], memo);
    return out;
}
define('structuredClone', function structuredClone(value, options) {
    if (arguments.length === 0) throw new TypeError('structuredClone: a value is required');
    return cloneValue(value, new Map());
});

/* ---- Buffer (node:buffer): a Uint8Array with node's common methods ---- */

function normEnc(enc) {
    const e = enc === undefined ? 'utf8' : String(enc).toLowerCase();
    switch (e) {
    case 'utf8': case 'utf-8': return 'utf8';
    case 'hex': return 'hex';
    case 'base64': return 'base64';
    case 'base64url': return 'base64url';
    case 'latin1': case 'binary': return 'latin1';
    case 'ascii': return 'ascii';
    case 'utf16le': case 'utf-16le': case 'ucs2': case 'ucs-2': return 'utf16le';
    }
    throw new TypeError('Unknown encoding: ' + enc);
}

function encodeString(str, enc) {
    switch (normEnc(enc)) {
    case 'utf8': return hx.encode(str);
    case 'hex': return hx.hexdec(str);
    case 'base64': case 'base64url': return hx.b64dec(str, false);
    case 'utf16le': {
        const b = new Uint8Array(str.length * 2);
        for (let i = 0; i < str.length; i++) { const c = str.charCodeAt(i); b[2 * i] = c & 255; b[2 * i + 1] = c >> 8; }
        return b.buffer;
    }
    default: { /* latin1, ascii */
        const b = new Uint8Array(str.length);
        for (let i = 0; i < str.length; i++) b[i] = str.charCodeAt(i) & 255;
        return b.buffer;
    }
    }
}

class Buffer extends Uint8Array {
    static from(v, a, b) {
        if (typeof v === 'string') return new Buffer(encodeString(v, a));
        if (v instanceof ArrayBuffer) return new Buffer(v, a === undefined ? 0 : a, b === undefined ? v.byteLength - (a || 0) : b);
        if (ArrayBuffer.isView(v)) return new Buffer(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
        if (v !== null && typeof v === 'object') {
            if (v.type === 'Buffer' && Array.isArray(v.data)) return new Buffer(v.data);
            if (typeof v[Symbol.iterator] === 'function' || typeof v.length === 'number') return new Buffer(Array.from(v));
        }
        throw new TypeError('Buffer.from: expected a string, an ArrayBuffer, a typed array or an array');
    }
    static alloc(n, fill, enc) {
        const b = new Buffer(n);
        if (fill !== undefined) b.fill(fill, 0, n, enc);
        return b;
    }
    static allocUnsafe(n) { return new Buffer(n); }
    static isBuffer(b) { return b instanceof Buffer; }
    static isEncoding(e) { try { normEnc(e); return true; } catch (_) { return false; } }
    static byteLength(v, enc) {
        if (typeof v === 'string') return encodeString(v, enc).byteLength;
        if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return v.byteLength;
        throw new TypeError('Buffer.byteLength: expected a string, an ArrayBuffer or a view');
    }
    static concat(list, total) {
        if (!Array.isArray(list)) throw new TypeError('Buffer.concat: expected an array');
        if (total === undefined) total = list.reduce((n, b) => n + b.length, 0);
        const out = Buffer.alloc(total);
        let o = 0;
        for (const b of list) {
            if (o >= total) break;
            const u = b instanceof Uint8Array ? b : new Uint8Array(b);
            out.set(u.subarray(0, total - o), o);
            o += Math.min(u.length, total - o);
        }
        return out;
    }
    static compare(a, b) {
        const n = Math.min(a.length, b.length);
        for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
        return a.length < b.length ? -1 : a.length > b.length ? 1 : 0;
    }
    toString(enc, start, end) {
        start = start === undefined ? 0 : Math.max(0, start | 0);
        end = end === undefined ? this.length : Math.min(this.length, end | 0);
        const v = start === 0 && end === this.length ? this : this.subarray(start, end);
        switch (normEnc(enc)) {
        case 'utf8': return hx.decode(v, false, true);
        case 'hex': return hx.hexenc(v);
        case 'base64': return hx.b64enc(v, false);
        case 'base64url': return hx.b64enc(v, true);
        case 'latin1': return hx.latin1(v);
        case 'ascii': return hx.latin1(Uint8Array.from(v, x => x & 127));
        case 'utf16le': {
            let s = '';
            for (let i = 0; i + 1 < v.length; i += 2) s += String.fromCharCode(v[i] | (v[i + 1] << 8));
            return s;
        }
        }
    }
    toJSON() { return { type: 'Buffer', data: Array.from(this) }; }
    equals(o) {
        if (!(o instanceof Uint8Array)) throw new TypeError('Buffer.equals: expected a Buffer or Uint8Array');
        return Buffer.compare(this, o) === 0;
    }
    compare(o) { return Buffer.compare(this, o); }
    slice(s, e) { return this.subarray(s, e); } /* node: a view, not a copy */
    write(str, offset, length, enc) {
        if (typeof offset === 'string') { enc = offset; offset = 0; length = undefined; }
        else if (typeof length === 'string') { enc = length; length = undefined; }
        offset = offset === undefined ? 0 : offset;
        const b = new Uint8Array(encodeString(String(str), enc));
        const n = Math.min(b.length, this.length - offset, length === undefined ? Infinity : length);
        this.set(b.subarray(0, n), offset);
        return n;
    }
    fill(v, start, end, enc) {
        if (typeof start === 'string') { enc = start; start = 0; end = this.length; }
        start = start === undefined ? 0 : start;
        end = end === undefined ? this.length : end;
        if (typeof v === 'string') {
            const b = new Uint8Array(encodeString(v, enc));
            if (b.length === 0) return super.fill(0, start, end);
            for (let i = start, j = 0; i < end; i++, j = (j + 1) % b.length) this[i] = b[j];
            return this;
        }
        return super.fill(typeof v === 'number' ? v & 255 : v ? 1 : 0, start, end);
    }
    copy(target, tStart, sStart, sEnd) {
        tStart = tStart || 0;
        sStart = sStart || 0;
        sEnd = sEnd === undefined ? this.length : sEnd;
        const n = Math.max(0, Math.min(sEnd - sStart, target.length - tStart));
        target.set(this.subarray(sStart, sStart + n), tStart);
        return n;
    }
    readUInt8(o = 0) { return this[o]; }
    readUInt16BE(o = 0) { return new DataView(this.buffer, this.byteOffset).getUint16(o); }
    readUInt32BE(o = 0) { return new DataView(this.buffer, this.byteOffset).getUint32(o); }
    readUInt16LE(o = 0) { return new DataView(this.buffer, this.byteOffset).getUint16(o, true); }
    readUInt32LE(o = 0) { return new DataView(this.buffer, this.byteOffset).getUint32(o, true); }
    writeUInt8(v, o = 0) { this[o] = v; return o + 1; }
    writeUInt16BE(v, o = 0) { new DataView(this.buffer, this.byteOffset).setUint16(o, v); return o + 2; }
    writeUInt32BE(v, o = 0) { new DataView(this.buffer, this.byteOffset).setUint32(o, v); return o + 4; }
    [INSPECT]() {
        const hex = Array.from(this.subarray(0, 50), x => (x + 256).toString(16).slice(1)).join(' ');
        return '<Buffer' + (hex ? ' ' + hex : '') + (this.length > 50 ? ' ... ' + (this.length - 50) + ' more bytes' : '') + '>';
    }
}
Buffer.poolSize = 8192;
Object.defineProperty(Buffer.prototype, 'parent', { get() { return this.buffer; } });

/* ---- Request / Response ---- */

const NORMALIZED_METHODS = ['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT', 'PATCH'];

/*
 * The body of a Request or Response. Slots: _b, the source (null: no body;
 * a string or ArrayBuffer; undefined with _t: the incoming request's body,
 * read from heliosd; a ReadableStream once streams.js made one), _ct (the
 * Content-Type the body implies) and _used. Reading methods consume it once
 * (as in the Fetch standard); a stream body is read up to max_body.
 */
const streamHooks = { isStream: () => false, fromSource: null, readAll: null, tee: null, disturbed: () => false };

class Body {
    get bodyUsed() { return !!this._used || (streamHooks.isStream(this._b) && streamHooks.disturbed(this._b)); }
    /* a ReadableStream of the body (made on first use), or null */
    get body() {
        if (this._b === null || (this._b === undefined && !this._t)) return null;
        if (!streamHooks.isStream(this._b)) {
            if (streamHooks.fromSource === null) throw new TypeError('streams are not available');
            this._b = streamHooks.fromSource(this._b, this._t);
        }
        return this._b;
    }
    /* -> Promise<string | ArrayBuffer | null>, once */
    _consume() {
        if (this.bodyUsed)
            return Promise.reject(new TypeError('Body has already been used. It can only be used once. ' +
                'Use tee() first if you need to read it twice.'));
        this._used = true;
        const b = this._b;
        if (b === undefined) return this._t ? hx.body(this._t) : Promise.resolve(null);
        if (streamHooks.isStream(b)) return streamHooks.readAll(b, hx.maxBody);
        return Promise.resolve(b);
    }
    /* -> Promise<string | ArrayBuffer | null>: the bytes fetch() sends. A
     * buffered body is still there after it was read, so sending it is
     * allowed (scripts log a body, then pass the request on); a stream is
     * consumed. */
    _sendable() {
        if (streamHooks.isStream(this._b)) return this._consume();
        if (this._b === undefined) return this._t ? hx.body(this._t) : Promise.resolve(null);
        return Promise.resolve(this._b);
    }
    /* the source for a copy of this body (clone(), or a Request init) */
    _share() {
        if (this.bodyUsed) throw new TypeError('Body has already been used: it cannot be cloned');
        if (!streamHooks.isStream(this._b)) return this._b;
        const [a, b] = streamHooks.tee(this._b);
        this._b = a;
        return b;
    }
    text() { return this._consume().then(bodyText); }
    json() { return this.text().then(JSON.parse); }
    arrayBuffer() { return this._consume().then(bodyBuffer); }
    bytes() { return this.arrayBuffer().then((b) => new Uint8Array(b)); }
}

class Request {
    constructor(input, init) {
        init = init || {};
        this._t = null; /* token of the incoming request this one derives from */
        this._b = undefined; /* own body; undefined: the incoming body (if _t) */
        this._ct = null;
        this._used = false;
        if (input instanceof Request) {
            this._url = input.url;
            this._m = input.method;
            this._h = new Headers(input.headers);
            this._t = input._t;
            this._b = input._share();
        } else {
            this._url = new URL(String(input)).href;
            this._m = 'GET';
            this._h = null;
        }
        if (init instanceof Request) {
            /* new Request(url, request): the request's method, headers and
             * body (its `body` is not a plain init member) */
            this._m = init.method;
            this._h = new Headers(init.headers);
            this._t = init._t;
            this._b = init._share();
            init = {};
        }
        if (init.method !== undefined) {
            const m = String(init.method);
            if (!TOKEN_RX.test(m)) throw new TypeError('invalid method: ' + JSON.stringify(m));
            this._m = NORMALIZED_METHODS.includes(m.toUpperCase()) ? m.toUpperCase() : m;
        }
        if (init.headers !== undefined) this._h = new Headers(init.headers);
        if (init.body !== undefined) {
            if (this._m === 'GET' || this._m === 'HEAD') {
                if (init.body !== null) throw new TypeError('a GET or HEAD request cannot have a body');
            }
            const x = extractBody(init.body);
            this._b = x[0];
            this._ct = x[1];
            if (this._ct !== null && !this.headers.has('content-type')) this._h.set('content-type', this._ct);
        }
    }
    static _incoming(tok) {
        /* one own property; the rest are the prototype's defaults (below) */
        const r = Object.create(Request.prototype);
        r._t = tok;
        return r;
    }
    get url() { return this._url === undefined ? (this._url = hx.url(this._t)) : this._url; }
    get method() { return this._m === undefined ? (this._m = hx.method(this._t)) : this._m; }
    get headers() {
        if (this._h === null) this._h = this._t ? Headers._flat(hx.headers(this._t)) : new Headers();
        return this._h;
    }
    get redirect() { return 'manual'; }
    get signal() { return undefined; }
    get cf() { return undefined; }
    clone() { return new Request(this); }
    [INSPECT](d, o, insp) {
        return wrap('Request', ['method: ' + quote(this.method), 'url: ' + quote(this.url),
            'headers: ' + insp(this.headers), 'bodyUsed: ' + this.bodyUsed], '{', '}');
    }
}
define('Request', Request);
for (const [k, v] of [['_t', null], ['_url', undefined], ['_m', undefined], ['_h', null], ['_b', undefined],
    ['_ct', null]])
    Object.defineProperty(Request.prototype, k, { value: v, writable: true, configurable: true });

const NULL_BODY_STATUS = [101, 204, 205, 304];

class Response {
    constructor(body, init) {
        /* Only what differs from the prototype's defaults (below) becomes
         * an own property: `new Response('text')` adds two (status, _b),
         * which fit the object's first property array (no resize). */
        let status = 200;
        if (init !== undefined && init !== null) {
            if (init.status !== undefined) {
                status = Number(init.status);
                if (!(status >= 200 && status <= 599) || status !== Math.floor(status))
                    throw new RangeError('Response: status must be an integer from 200 to 599, not ' + init.status);
            }
            if (init.statusText !== undefined) this.statusText = String(init.statusText);
            if (init.headers !== undefined) this._hi = init.headers;
        }
        this.status = status;
        if (typeof body === 'string') { /* the common case: _ct is the prototype's TEXT_PLAIN */
            this._b = body;
        } else {
            const x = extractBody(body);
            this._b = x[0];
            this._ct = x[1];
        }
        if (status !== 200 && this._b !== null && NULL_BODY_STATUS.includes(status))
            throw new TypeError('Response: a ' + status + ' response cannot have a body');
    }
    get type() { return 'default'; }
    get ok() { return this.status >= 200 && this.status < 300; }
    get headers() {
        if (this._h === null) {
            this._h = new Headers(this._hi);
            if (this._ct !== null && !this._h.has('content-type')) this._h.set('content-type', this._ct);
        }
        return this._h;
    }
    [INSPECT](d, o, insp) {
        return wrap('Response', ['status: ' + this.status, 'statusText: ' + quote(this.statusText),
            'headers: ' + insp(this.headers), 'ok: ' + this.ok, 'redirected: ' + this.redirected,
            'url: ' + quote(this.url), 'bodyUsed: ' + this.bodyUsed], '{', '}');
    }
    clone() {
        const r = new Response(null, this);
        r._b = this._share();
        r._ct = this._ct;
        r.url = this.url;
        r.redirected = this.redirected;
        return r;
    }
    static json(data, init) {
        init = init || {};
        const body = JSON.stringify(data);
        if (body === undefined) throw new TypeError('Response.json: the value cannot be serialised');
        const h = new Headers(init.headers);
        if (!h.has('content-type')) h.set('content-type', 'application/json');
        return new Response(body, { status: init.status, statusText: init.statusText, headers: h });
    }
    static redirect(url, status) {
        status = status === undefined ? 302 : Number(status);
        if (![301, 302, 303, 307, 308].includes(status))
            throw new RangeError('Response.redirect: status must be 301, 302, 303, 307 or 308');
        let loc = String(url);
        try { loc = new URL(loc).href; } catch (_) { /* relative: sent as given */ }
        return new Response(null, { status, headers: { location: loc } });
    }
    static error() {
        const r = new Response(null, { status: 500 });
        return r;
    }
}
define('Response', Response);
/* defaults read through the prototype until an instance sets its own */
for (const [k, v] of [['statusText', ''], ['_hi', undefined], ['_h', null], ['_ct', TEXT_PLAIN],
    ['url', ''], ['redirected', false]])
    Object.defineProperty(Response.prototype, k, { value: v, writable: true, configurable: true });

/* Body's members on both (a mixin, as in the Fetch standard: no super()
 * call on the hot path of `new Response(...)`) */
for (const C of [Request, Response])
    for (const k of Object.getOwnPropertyNames(Body.prototype))
        if (k !== 'constructor')
            Object.defineProperty(C.prototype, k, Object.getOwnPropertyDescriptor(Body.prototype, k));

/* Headers of a Response as the native side wants them: [[name, value]...]
 * or null (then the body's own Content-Type, r._ct, is passed apart: no
 * Headers object for `new Response('text')`). */
function headerPairs(r) {
    if (r._h !== null) return r._h._l;
    if (r._hi === undefined || r._hi === null) return null;
    return r.headers._l;
}

/* ---- fetch ---- */

define('fetch', function fetch(input, init) {
    let req;
    try {
        req = input instanceof Request && init === undefined ? input : new Request(input, init);
    } catch (e) {
        return Promise.reject(e);
    }
    const u = new URL(req.url);
    /* the response body arrives through a sink into a stream (streams.js) */
    let id = 0;
    const body = streamHooks.sinkStream('fetch ' + u.href + ': the response body', () => hx.fetchCancel(id),
        (p) => hx.fetchPause(id, p));
    const send = (b) => {
        const [p, i] = hx.fetch(req._t, u.hostname, req.method, u.pathname + u.search,
            req._h === null && req._t === null ? null : req.headers._l, b === undefined ? null : b,
            u.host, body.sink, u.protocol, init !== undefined && init !== null && init.redirect === 'follow');
        id = i;
        return p;
    };
    const p = req.method === 'GET' || req.method === 'HEAD' ? send(null) : req._sendable().then(send);
    return p.then(r => {
        const resp = Object.create(Response.prototype);
        resp.status = r[0];
        resp.statusText = r[1];
        resp._hi = undefined;
        resp._h = Headers._flat(r[2]);
        resp._b = req.method === 'HEAD' || NULL_BODY_STATUS.includes(r[0]) ? null : body.stream;
        const cl = resp._h.get('content-length');
        if (resp._b !== null && cl !== null && /^[0-9]{1,15}$/.test(cl)) body.stream._length = Number(cl);
        resp._ct = null;
        resp.url = u.href;
        resp.redirected = false;
        return resp;
    });
});

/* ---- dispatch: addEventListener('fetch') or export default { fetch } ---- */

const listeners = [];

class FetchEvent {
    /* two own properties (no resize of the property array): the request
     * is made when first asked for, into the prototype's _q (null) */
    constructor(request, tok) {
        this._tok = tok;
        this._r = undefined;
        if (request !== null) this._q = request;
    }
    get type() { return 'fetch'; }
    get request() { return this._q === null ? (this._q = Request._incoming(this._tok)) : this._q; }
    respondWith(r) {
        if (this._r !== undefined) throw new DOMException('respondWith was already called', 'InvalidStateError');
        this._r = r;
    }
    waitUntil(p) { waitUntil(this._tok, p); }
    passThroughOnException() {}
}
Object.defineProperty(FetchEvent.prototype, '_q', { value: null, writable: true, configurable: true });

/* the `ctx` of `export default { fetch(request, env, ctx) }`: methods on
 * the prototype, not two closures per request */
class ExecutionContext {
    constructor(tok) { this._tok = tok; }
    waitUntil(p) { waitUntil(this._tok, p); }
    passThroughOnException() {}
}

define('addEventListener', function addEventListener(type, fn) {
    if (typeof fn !== 'function') throw new TypeError('addEventListener: the listener must be a function');
    if (type === 'fetch') listeners.push(fn);
});
define('removeEventListener', function removeEventListener(type, fn) {
    const i = listeners.indexOf(fn);
    if (type === 'fetch' && i >= 0) listeners.splice(i, 1);
});

function waitUntil(tok, p) {
    hx.waitBegin(tok);
    Promise.resolve(p).then(() => hx.waitEnd(tok), e => {
        hx.log(LOG_ERROR, 'a waitUntil promise was rejected: ' + errorText(e));
        hx.waitEnd(tok);
    });
}

function finish(tok, r) {
    if (!(r instanceof Response)) {
        hx.fail(tok, new TypeError('the handler produced ' + (r === null ? 'null' : typeof r) +
            ', not a Response'));
        return;
    }
    sendResponse(tok, r);
}

/* R is a Response */
function sendResponse(tok, r) {
    try {
        if (typeof r._b === 'object' && r._b !== null && !(r._b instanceof ArrayBuffer)) {
            if (streamHooks.isStream(r._b)) {
                /* a stream: sent as it comes, at the client's pace */
                if (r.bodyUsed) throw new TypeError('Body has already been used: it cannot be sent');
                r._used = true;
                streamHooks.respond(tok, r.status, headerPairs(r), r._ct, r._b).catch(e => hx.fail(tok, e));
                return;
            }
            r._consume().then(b => hx.respond(tok, r.status, headerPairs(r), b, r._ct)).catch(e => hx.fail(tok, e));
            return;
        }
        /* heliosd's default for a string body is text/plain: no string to pass */
        hx.respond(tok, r.status, headerPairs(r), r._b, r._ct === TEXT_PLAIN ? null : r._ct);
    } catch (e) {
        hx.fail(tok, e);
    }
}

function dispatch(tok, env) {
    const mod = G.__helios_default;
    let result;
    if (mod !== undefined && mod !== null && typeof mod.fetch === 'function') {
        result = mod.fetch(Request._incoming(tok), env, new ExecutionContext(tok));
    } else if (listeners.length) {
        const ev = new FetchEvent(null, tok);
        for (let i = 0; i < listeners.length; i++) {
            listeners[i].call(G, ev);
            if (ev._r !== undefined) break;
        }
        /* no respondWith: pass the request to the route's upstream */
        result = ev._r === undefined ? G.fetch(ev.request) : ev._r;
    } else {
        throw new Error('the script has no fetch handler: call addEventListener("fetch", ...) ' +
            'or export default { fetch(request, env, ctx) { ... } }');
    }
    if (result instanceof Response) {
        sendResponse(tok, result);
        return;
    }
    Promise.resolve(result).then(r => finish(tok, r), e => hx.fail(tok, e));
}

/* ---- the static-response probe (js_runtime.c js_probe; README "Static-response probe") ----
 * Called once per worker runtime, before its first request: a GET
 * http://localhost/ and then a POST http://localhost/other. OUT.result is
 * {ct, body} when both answered the same 200 with no header other than the
 * Content-Type their body implies and a body held whole, and the handler
 * neither read its request (a handler that routes on the path or reads a
 * header is not static, whatever these two answers are) nor called
 * waitUntil (work after the response); otherwise it stays null. OUT.done
 * tells the caller that the probe settled. */
function probeOne(env, req, seen) {
    /* any property read on the request marks the handler as dynamic */
    const p = new Proxy(req, {
        get(t, k) {
            seen.request = true;
            const v = Reflect.get(t, k, t);
            return typeof v === 'function' ? v.bind(t) : v;
        },
    });
    const wait = () => { seen.wait = true; };
    const mod = G.__helios_default;
    if (mod !== undefined && mod !== null && typeof mod.fetch === 'function')
        return mod.fetch(p, env, { waitUntil: wait, passThroughOnException() {} });
    const ev = new FetchEvent(p, null);
    ev.waitUntil = wait;
    for (const l of listeners) {
        l.call(G, ev);
        if (ev._r !== undefined) break;
    }
    return ev._r; /* undefined (passed upstream): not static */
}

function probeStatic(r) {
    if (!(r instanceof Response) || r.status !== 200) return null;
    if (r._b !== null && typeof r._b !== 'string' && !(r._b instanceof ArrayBuffer)) return null;
    const pairs = headerPairs(r);
    if (pairs !== null && pairs.some(([n, v]) => n !== 'content-type' || v !== r._ct)) return null;
    return { ct: r._ct, body: r._b === null ? '' : r._b };
}

function sameBody(a, b) {
    if (typeof a === 'string' || typeof b === 'string') return a === b;
    if (a.byteLength !== b.byteLength) return false;
    const x = new Uint8Array(a), y = new Uint8Array(b);
    return x.every((v, i) => v === y[i]);
}

function probe(env) {
    const out = { done: false, result: null };
    const mod = G.__helios_default;
    if (!listeners.length && !(mod !== undefined && mod !== null && typeof mod.fetch === 'function')) {
        out.done = true;
        return out;
    }
    const seen = { request: false, wait: false };
    const run = (method, url) => new Promise(res => res(probeOne(env, new Request(url, { method }), seen)));
    run('GET', 'http://localhost/').then(a => run('POST', 'http://localhost/other').then(b => {
        const x = probeStatic(a), y = probeStatic(b);
        if (x !== null && y !== null && x.ct === y.ct && sameBody(x.body, y.body) && !seen.request && !seen.wait)
            out.result = x;
    })).catch(() => {}).finally(() => { out.done = true; });
    return out;
}

/* ---- filter mode: onRequest(request, env) / onResponse(response, env) ---- */

function filterRequest(tok, env) {
    const f = G.onRequest;
    if (typeof f !== 'function') { hx.pass(tok, null); return; }
    const req = Request._incoming(tok);
    const done = r => {
        if (r instanceof Response) finish(tok, r);
        else if (r instanceof Request) hx.pass(tok, r._h === null ? null : r._h._l);
        else hx.pass(tok, req._h === null ? null : req._h._l);
    };
    const result = f(req, env);
    if (result instanceof Response || result instanceof Request || result === undefined) {
        done(result);
        return;
    }
    Promise.resolve(result).then(done, e => hx.fail(tok, e));
}

/* The response headers, live (filter mode): reads and writes go straight
 * to the response heliosd is about to send. */
class ResponseHeaders {
    constructor(tok) { this._t = tok; }
    get(k) { return hx.rh(this._t, 0, String(k).toLowerCase()); }
    has(k) { return this.get(k) !== null; }
    set(k, v) { hx.rh(this._t, 1, hname(k), hvalue(v)); }
    append(k, v) { hx.rh(this._t, 2, hname(k), hvalue(v)); }
    delete(k) { hx.rh(this._t, 3, String(k).toLowerCase()); }
}

function filterResponse(tok, env, status) {
    const f = G.onResponse;
    if (typeof f !== 'function') return status;
    const resp = { status, headers: new ResponseHeaders(tok) };
    const r = f(resp, env);
    if (r !== undefined && r !== null && typeof r.then === 'function')
        throw new TypeError('onResponse must be synchronous (it returned a promise)');
    return r !== undefined && r !== null && typeof r.status === 'number' ? r.status : resp.status;
}

/* what the other embedded files (crypto.js...) build on */
const lib = { define, DOMException, INSPECT, quote, wrap, inspect, ctorName, extractors, bodyText, bodyBuffer,
    streamHooks, Request, Response, Headers, formDecode, parseQuery };

return { dispatch, filterRequest, filterResponse, errorText, Buffer, probe, lib };
})
