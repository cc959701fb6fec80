/*
 * formdata.js - Blob, File and FormData, and the bodies made of them:
 * `new Response(formData)` / `new Request(url, {body: formData})` send
 * multipart/form-data, `new Response(blob)` the blob's bytes and type;
 * Request/Response `formData()` parse application/x-www-form-urlencoded
 * and multipart/form-data, and `blob()` reads the body into a Blob.
 *
 * Called by js_runtime.c with `hx` and prelude.js's `lib`. A Blob holds
 * its bytes in memory (one Uint8Array); a body parsed by formData() was
 * read whole first, so max_body bounds it (and its part count).
 */
(function (hx, lib) {
'use strict';
const { define, INSPECT, wrap, quote, extractors, Request, Response, parseQuery } = lib;

function utf8(s) { return new Uint8Array(hx.encode(String(s))); }

/* ---- Blob, File ---- */

const bytesOf = new WeakMap(); /* Blob -> Uint8Array (never exposed: slices copy) */

function partBytes(p) {
    if (p instanceof Blob) return bytesOf.get(p);
    if (p instanceof ArrayBuffer) return new Uint8Array(p);
    if (ArrayBuffer.isView(p)) return new Uint8Array(p.buffer, p.byteOffset, p.byteLength);
    return utf8(p);
}

function normType(t) {
    t = t === undefined ? '' : String(t);
    return /[^\x20-\x7e]/.test(t) ? '' : t.toLowerCase();
}

function join(list) {
    const all = new Uint8Array(list.reduce((a, b) => a + b.length, 0));
    let o = 0;
    for (const b of list) {
        all.set(b, o);
        o += b.length;
    }
    return all;
}

class Blob {
    constructor(parts, options) {
        bytesOf.set(this, join(parts === undefined ? [] : Array.from(parts, partBytes)));
        this._type = normType(options && options.type);
    }
    get size() { return bytesOf.get(this).length; }
    get type() { return this._type; }
    slice(start, end, type) {
        const b = bytesOf.get(this);
        const n = b.length;
        const rel = (x, d) => (x === undefined ? d : x < 0 ? Math.max(n + x, 0) : Math.min(x, n));
        const s = rel(start, 0), e = rel(end, n);
        const out = new Blob([], { type });
        bytesOf.set(out, b.slice(s, Math.max(s, e)));
        return out;
    }
    arrayBuffer() { return Promise.resolve(bytesOf.get(this).slice().buffer); }
    bytes() { return Promise.resolve(bytesOf.get(this).slice()); }
    text() { return Promise.resolve(hx.decode(bytesOf.get(this), false, false)); }
    stream() { return new Response(this).body; }
    _clone() {
        const c = this instanceof File ? new File([], this.name, { type: this.type, lastModified: this.lastModified })
            : new Blob([], { type: this.type });
        bytesOf.set(c, bytesOf.get(this).slice());
        return c;
    }
    get [Symbol.toStringTag]() { return 'Blob'; }
    [INSPECT]() { return wrap(this[Symbol.toStringTag], ['size: ' + this.size, 'type: ' + quote(this.type)], '{', '}'); }
}
define('Blob', Blob);

class File extends Blob {
    constructor(parts, name, options) {
        if (arguments.length < 2) throw new TypeError('File: a name is required');
        super(parts, options);
        this._name = String(name);
        const lm = options && options.lastModified;
        this._lm = lm === undefined ? Date.now() : Number(lm);
    }
    get name() { return this._name; }
    get lastModified() { return this._lm; }
    get [Symbol.toStringTag]() { return 'File'; }
    [INSPECT]() {
        return wrap('File', ['size: ' + this.size, 'type: ' + quote(this.type), 'name: ' + quote(this.name),
            'lastModified: ' + this.lastModified], '{', '}');
    }
}
define('File', File);

/* ---- FormData ---- */

function entryValue(value, filename) {
    if (value instanceof Blob) {
        if (!(value instanceof File) || filename !== undefined) {
            const f = new File([], filename === undefined ? (value instanceof File ? value.name : 'blob') : String(filename),
                { type: value.type, lastModified: value instanceof File ? value.lastModified : undefined });
            bytesOf.set(f, bytesOf.get(value));
            return f;
        }
        return value;
    }
    return String(value);
}

class FormData {
    constructor(form) {
        if (form !== undefined) throw new TypeError('FormData: there are no HTML forms here');
        this._l = [];
    }
    append(name, value, filename) { this._l.push([String(name), entryValue(value, filename)]); }
    set(name, value, filename) {
        name = String(name);
        const v = entryValue(value, filename);
        const i = this._l.findIndex((p) => p[0] === name);
        if (i < 0) this._l.push([name, v]);
        else this._l = this._l.filter((p, j) => j === i || p[0] !== name).map((p) => (p[0] === name ? [name, v] : p));
    }
    get(name) { name = String(name); const p = this._l.find((x) => x[0] === name); return p ? p[1] : null; }
    getAll(name) { name = String(name); return this._l.filter((p) => p[0] === name).map((p) => p[1]); }
    has(name) { name = String(name); return this._l.some((p) => p[0] === name); }
    delete(name) { name = String(name); this._l = this._l.filter((p) => p[0] !== name); }
    forEach(cb, thisArg) { for (const [k, v] of this._l) cb.call(thisArg, v, k, this); }
    *entries() { for (const p of this._l) yield [p[0], p[1]]; }
    *keys() { for (const p of this._l) yield p[0]; }
    *values() { for (const p of this._l) yield p[1]; }
    [Symbol.iterator]() { return this.entries(); }
    get [Symbol.toStringTag]() { return 'FormData'; }
    [INSPECT](d, o, insp) { return wrap('FormData', this._l.map((p) => quote(p[0]) + ' => ' + insp(p[1])), '{', '}'); }
}
define('FormData', FormData);

/* ---- bodies ---- */

/* multipart/form-data (RFC 7578, as the HTML standard writes it) */
function escapeName(s) { return s.replace(/\r/g, '%0D').replace(/\n/g, '%0A').replace(/"/g, '%22'); }

function serialize(fd) {
    const boundary = '----HeliosFormBoundary' + hx.hexenc(hx.random(new Uint8Array(12)));
    const parts = [];
    for (const [name, v] of fd._l) {
        let head = '--' + boundary + '\r\nContent-Disposition: form-data; name="' + escapeName(name) + '"';
        if (v instanceof File) {
            head += '; filename="' + escapeName(v.name) + '"\r\nContent-Type: ' +
                (v.type || 'application/octet-stream');
            parts.push(utf8(head + '\r\n\r\n'), bytesOf.get(v), utf8('\r\n'));
        } else {
            parts.push(utf8(head + '\r\n\r\n' + v.replace(/\r\n|\r|\n/g, '\r\n') + '\r\n'));
        }
    }
    parts.push(utf8('--' + boundary + '--\r\n'));
    return [join(parts).buffer, 'multipart/form-data; boundary=' + boundary];
}

extractors.push((body) => {
    if (body instanceof FormData) return serialize(body);
    if (body instanceof Blob) return [bytesOf.get(body).slice().buffer, body.type || null];
    return undefined;
});

function indexOf(hay, needle, from) {
    const first = needle[0];
    for (let i = hay.indexOf(first, from); i >= 0 && i + needle.length <= hay.length; i = hay.indexOf(first, i + 1)) {
        let k = 1;
        while (k < needle.length && hay[i + k] === needle[k]) k++;
        if (k === needle.length) return i;
    }
    return -1;
}

/* A parameter of a header value: name="quoted" or name=token */
function param(value, name) {
    const rx = new RegExp(';\\s*' + name + '\\s*=\\s*(?:"((?:[^"\\\\]|\\\\.)*)"|([^;\\s]*))', 'i');
    const m = rx.exec(value);
    if (!m) return null;
    return m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2];
}

function unescapeName(s) { return s.replace(/%0D/gi, '\r').replace(/%0A/gi, '\n').replace(/%22/g, '"'); }

function parseMultipart(buf, boundary) {
    const bad = (why) => new TypeError('formData(): invalid multipart/form-data body: ' + why);
    const b = new Uint8Array(buf);
    const delim = utf8('--' + boundary);
    const fd = new FormData();
    let pos = indexOf(b, delim, 0);
    if (pos < 0) throw bad('no boundary');
    for (;;) {
        pos += delim.length;
        if (b[pos] === 45 && b[pos + 1] === 45) return fd; /* "--": the end */
        if (b[pos] !== 13 || b[pos + 1] !== 10) throw bad('no CRLF after a boundary');
        pos += 2;
        const headEnd = indexOf(b, utf8('\r\n\r\n'), pos);
        if (headEnd < 0) throw bad('a part has no end of headers');
        const head = hx.decode(b.subarray(pos, headEnd), false, false);
        const next = indexOf(b, utf8('\r\n--' + boundary), headEnd + 4);
        if (next < 0) throw bad('a part is not closed');
        const data = b.subarray(headEnd + 4, next);
        let disp = null, type = '';
        for (const line of head.split('\r\n')) {
            const i = line.indexOf(':');
            if (i < 0) continue;
            const k = line.slice(0, i).trim().toLowerCase(), v = line.slice(i + 1).trim();
            if (k === 'content-disposition') disp = v;
            else if (k === 'content-type') type = v;
        }
        if (disp === null || !/^form-data\b/i.test(disp)) throw bad('a part is not form-data');
        const name = param(disp, 'name');
        if (name === null) throw bad('a part has no name');
        const filename = param(disp, 'filename');
        if (filename !== null) {
            const f = new File([], unescapeName(filename), { type });
            bytesOf.set(f, data.slice());
            fd.append(unescapeName(name), f);
        } else {
            fd.append(unescapeName(name), hx.decode(data, false, false));
        }
        pos = next + 2;
    }
}

function contentType(o) {
    const h = o.headers.get('content-type');
    return h === null ? '' : h;
}

function formData() {
    const ct = contentType(this);
    const mime = ct.split(';')[0].trim().toLowerCase();
    if (mime === 'multipart/form-data') {
        const boundary = param(ct, 'boundary');
        if (!boundary) return Promise.reject(new TypeError('formData(): the multipart Content-Type has no boundary'));
        return this.arrayBuffer().then((buf) => parseMultipart(buf, boundary));
    }
    if (mime === 'application/x-www-form-urlencoded') {
        return this.text().then((t) => {
            const fd = new FormData();
            for (const [k, v] of parseQuery(t)) fd.append(k, v);
            return fd;
        });
    }
    return Promise.reject(new TypeError('formData(): the Content-Type is ' + JSON.stringify(ct) +
        ', not multipart/form-data or application/x-www-form-urlencoded'));
}

function blob() {
    const type = contentType(this);
    return this.arrayBuffer().then((buf) => new Blob([buf], { type }));
}

for (const C of [Request, Response]) {
    Object.defineProperty(C.prototype, 'formData', { value: formData, writable: true, configurable: true });
    Object.defineProperty(C.prototype, 'blob', { value: blob, writable: true, configurable: true });
}
})
