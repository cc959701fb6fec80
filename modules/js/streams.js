/*
 * streams.js - WHATWG Streams (ReadableStream, WritableStream,
 * TransformStream, their readers, writers and controllers, pipeTo,
 * pipeThrough, tee, async iteration, queuing strategies), Workers'
 * IdentityTransformStream and FixedLengthStream, TextEncoderStream and
 * TextDecoderStream, and the bodies made of streams:
 *   - `request.body`: the incoming body, piece by piece as heliosd reads it
 *     (hx.bodyStream);
 *   - a fetch() response's `body`: the upstream's body piece by piece (the
 *     sink given to hx.fetch);
 *   - `new Response(stream)`: sent piece by piece as the stream gives it,
 *     at the client's pace (hx.respondBegin / respondBody / respondWait,
 *     host API 1.3);
 *   - a stream as a fetch() body: read to the end (at most max_body) and
 *     then sent whole (README.md, "Limits and gaps").
 * A stream fed by heliosd queues what its reader has not taken yet up to a
 * high watermark, then pauses heliosd's reading (hx.bodyPause,
 * hx.fetchPause) until the reader pulls again: a body of any size passes
 * in bounded memory.
 *
 * Called by js_runtime.c with `hx` and prelude.js's `lib`. The algorithms
 * follow the standard's structure (queues with sizes, pull on demand,
 * backpressure through desiredSize and the writer's `ready`), simplified
 * where nothing observable changes: byte streams are default streams of
 * Uint8Array chunks with a byob reader that copies.
 */
(function (hx, lib) {
'use strict';
const { define, DOMException, INSPECT, extractors, streamHooks } = lib;

function defer() {
    let resolve, reject;
    const promise = new Promise((a, b) => { resolve = a; reject = b; });
    promise.catch(() => {}); /* handled by whoever awaits it */
    return { promise, resolve, reject };
}

function strategyOf(s, dflt) {
    s = s || {};
    const hwm = s.highWaterMark === undefined ? dflt : Number(s.highWaterMark);
    if (!(hwm >= 0)) throw new RangeError('highWaterMark must be a number >= 0');
    const size = s.size === undefined ? () => 1 : s.size;
    if (typeof size !== 'function') throw new TypeError('size must be a function');
    return { hwm, size };
}

function call(obj, name, args) {
    const f = obj[name];
    if (f === undefined) return Promise.resolve();
    if (typeof f !== 'function') return Promise.reject(new TypeError(name + ' is not a function'));
    try {
        return Promise.resolve(f.apply(obj, args));
    } catch (e) {
        return Promise.reject(e);
    }
}

/* ---- ReadableStream ---- */

class ReadableStreamDefaultController {
    constructor() { throw new TypeError('Illegal constructor'); }
    get desiredSize() { return desiredSize(this._s); }
    enqueue(chunk) {
        const s = this._s;
        if (s._closeRequested || s._state !== 'readable') throw new TypeError('enqueue: the stream is closed or errored');
        if (s._bytes && !ArrayBuffer.isView(chunk)) throw new TypeError('enqueue: a byte stream takes ArrayBuffer views');
        if (s._bytes && !(chunk instanceof Uint8Array)) chunk = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        const r = s._reader;
        if (r && r._reqs.length && s._queue.length === 0) {
            r._reqs.shift().resolve({ value: chunk, done: false });
        } else {
            let size;
            try { size = s._bytes ? chunk.byteLength : Number(s._strategy.size(chunk)); } catch (e) { rsError(s, e); throw e; }
            if (!(size >= 0) || size === Infinity) {
                const e = new RangeError('chunk size must be a finite number >= 0');
                rsError(s, e);
                throw e;
            }
            s._queue.push({ v: chunk, size });
            s._queueSize += size;
        }
        pullIfNeeded(s);
    }
    close() {
        const s = this._s;
        if (s._closeRequested || s._state !== 'readable') throw new TypeError('close: the stream is already closed or errored');
        s._closeRequested = true;
        if (s._queue.length === 0) rsClose(s);
    }
    error(e) { if (this._s._state === 'readable') rsError(this._s, e); }
    get byobRequest() { return null; }
}
define('ReadableStreamDefaultController', ReadableStreamDefaultController);
define('ReadableByteStreamController', ReadableStreamDefaultController);

function desiredSize(s) {
    if (s._state === 'errored') return null;
    if (s._state === 'closed') return 0;
    return s._strategy.hwm - s._queueSize;
}

function pullIfNeeded(s) {
    if (!s._started || s._state !== 'readable' || s._closeRequested) return;
    const wanted = (s._reader && s._reader._reqs.length > 0) || desiredSize(s) > 0;
    if (!wanted) return;
    if (s._pulling) { s._pullAgain = true; return; }
    s._pulling = true;
    call(s._source, 'pull', [s._ctrl]).then(() => {
        s._pulling = false;
        if (s._pullAgain) { s._pullAgain = false; pullIfNeeded(s); }
    }, (e) => rsError(s, e));
}

function rsClose(s) {
    if (s._state !== 'readable') return;
    s._state = 'closed';
    const r = s._reader;
    if (r) {
        for (const q of r._reqs.splice(0)) q.resolve({ value: undefined, done: true });
        r._closed.resolve();
    }
}

function rsError(s, e) {
    if (s._state !== 'readable') return;
    s._state = 'errored';
    s._stored = e;
    s._queue = [];
    s._queueSize = 0;
    const r = s._reader;
    if (r) {
        for (const q of r._reqs.splice(0)) q.reject(e);
        r._closed.reject(e);
    }
}

function rsCancel(s, reason) {
    s._disturbed = true;
    if (s._state === 'closed') return Promise.resolve();
    if (s._state === 'errored') return Promise.reject(s._stored);
    s._queue = [];
    s._queueSize = 0;
    rsClose(s);
    return call(s._source, 'cancel', [reason]).then(() => undefined);
}

function rsRead(s) {
    s._disturbed = true;
    if (s._state === 'closed') return Promise.resolve({ value: undefined, done: true });
    if (s._state === 'errored') return Promise.reject(s._stored);
    if (s._queue.length) {
        const q = s._queue.shift();
        s._queueSize -= q.size;
        if (s._queue.length === 0) s._queueSize = 0;
        if (s._closeRequested && s._queue.length === 0) rsClose(s);
        else pullIfNeeded(s);
        return Promise.resolve({ value: q.v, done: false });
    }
    const d = defer();
    s._reader._reqs.push(d);
    pullIfNeeded(s);
    return d.promise;
}

class ReadableStreamDefaultReader {
    constructor(stream) {
        if (!(stream instanceof ReadableStream)) throw new TypeError('ReadableStreamDefaultReader: expected a ReadableStream');
        if (stream._reader) throw new TypeError('the stream is locked to another reader');
        this._s = stream;
        this._reqs = [];
        this._closed = defer();
        stream._reader = this;
        if (stream._state === 'closed') this._closed.resolve();
        else if (stream._state === 'errored') this._closed.reject(stream._stored);
    }
    get closed() { return this._closed.promise; }
    read() {
        if (!this._s) return Promise.reject(new TypeError('read: the reader was released'));
        return rsRead(this._s);
    }
    cancel(reason) {
        if (!this._s) return Promise.reject(new TypeError('cancel: the reader was released'));
        return rsCancel(this._s, reason);
    }
    releaseLock() {
        const s = this._s;
        if (!s) return;
        const e = new TypeError('the reader was released');
        for (const q of this._reqs.splice(0)) q.reject(e);
        if (s._state === 'readable') this._closed.reject(e);
        else { this._closed = defer(); this._closed.reject(e); }
        s._reader = null;
        this._s = null;
    }
}
define('ReadableStreamDefaultReader', ReadableStreamDefaultReader);

/* A byob reader on a byte stream: read(view) fills VIEW from the next
 * chunk (the rest of a larger chunk stays queued). */
class ReadableStreamBYOBReader extends ReadableStreamDefaultReader {
    constructor(stream) {
        if (!(stream instanceof ReadableStream) || !stream._bytes)
            throw new TypeError('a byob reader needs a byte stream (type: "bytes")');
        super(stream);
    }
    read(view) {
        if (!ArrayBuffer.isView(view) || view.byteLength === 0)
            return Promise.reject(new TypeError('read: expected a non-empty ArrayBuffer view'));
        const s = this._s;
        if (!s) return Promise.reject(new TypeError('read: the reader was released'));
        const Ctor = view.constructor, per = Ctor.BYTES_PER_ELEMENT || 1;
        return rsRead(s).then(({ value, done }) => {
            const out = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
            if (done) return { value: new Ctor(view.buffer, view.byteOffset, 0), done: true };
            const n = Math.min(out.length - (out.length % per), value.length);
            out.set(value.subarray(0, n));
            if (n < value.length) {
                const rest = value.subarray(n);
                s._queue.unshift({ v: rest, size: rest.length });
                s._queueSize += rest.length;
                if (s._state === 'closed') { s._state = 'readable'; s._closeRequested = true; }
            }
            return { value: new Ctor(view.buffer, view.byteOffset, n / per), done: false };
        });
    }
}
define('ReadableStreamBYOBReader', ReadableStreamBYOBReader);

class ReadableStream {
    constructor(source, strategy) {
        source = source === undefined || source === null ? {} : source;
        this._bytes = source.type === 'bytes';
        if (source.type !== undefined && !this._bytes) throw new RangeError('unknown stream type ' + JSON.stringify(source.type));
        this._strategy = this._bytes ? { hwm: strategyOf(strategy, 0).hwm, size: (c) => c.byteLength }
            : strategyOf(strategy, 1);
        this._source = source;
        this._state = 'readable';
        this._reader = null;
        this._queue = [];
        this._queueSize = 0;
        this._closeRequested = false;
        this._disturbed = false;
        this._started = false;
        this._pulling = false;
        this._pullAgain = false;
        const c = Object.create(ReadableStreamDefaultController.prototype);
        c._s = this;
        this._ctrl = c;
        call(source, 'start', [c]).then(() => { this._started = true; pullIfNeeded(this); }, (e) => rsError(this, e));
    }
    static from(iterable) {
        const it = iterable[Symbol.asyncIterator] ? iterable[Symbol.asyncIterator]() : iterable[Symbol.iterator]();
        return new ReadableStream({
            async pull(c) {
                const { value, done } = await it.next();
                if (done) c.close();
                else c.enqueue(await value);
            },
            cancel(reason) { return typeof it.return === 'function' ? it.return(reason) : undefined; },
        }, { highWaterMark: 0 });
    }
    get locked() { return this._reader !== null; }
    cancel(reason) {
        if (this.locked) return Promise.reject(new TypeError('cancel: the stream is locked'));
        return rsCancel(this, reason);
    }
    getReader(options) {
        const mode = options && options.mode;
        if (mode === 'byob') return new ReadableStreamBYOBReader(this);
        if (mode !== undefined) throw new RangeError('getReader: unknown mode ' + JSON.stringify(mode));
        return new ReadableStreamDefaultReader(this);
    }
    tee() {
        const reader = this.getReader();
        let canceled = 0, reasons = [];
        const cancelled = defer();
        const branches = [];
        let reading = false;
        const pull = () => {
            if (reading) return Promise.resolve();
            reading = true;
            return reader.read().then(({ value, done }) => {
                reading = false;
                for (const b of branches) {
                    if (b._state !== 'readable' || b._closeRequested) continue;
                    if (done) b._ctrl.close();
                    else b._ctrl.enqueue(value);
                }
                if (done) cancelled.resolve(); /* nothing left to cancel */
            }, (e) => {
                reading = false;
                for (const b of branches) rsError(b, e);
                cancelled.resolve();
            });
        };
        const cancel = (i) => (reason) => {
            canceled++;
            reasons[i] = reason;
            if (canceled === 2) reader.cancel(reasons).then(cancelled.resolve, cancelled.reject);
            return cancelled.promise;
        };
        for (let i = 0; i < 2; i++)
            branches.push(new ReadableStream({ type: this._bytes ? 'bytes' : undefined, pull, cancel: cancel(i) },
                this._bytes ? undefined : { highWaterMark: 0 }));
        reader.closed.catch((e) => { for (const b of branches) rsError(b, e); });
        return branches;
    }
    pipeTo(dest, options) { return pipe(this, dest, options || {}); }
    pipeThrough(pair, options) {
        if (!pair || !(pair.writable instanceof WritableStream) || !(pair.readable instanceof ReadableStream))
            throw new TypeError('pipeThrough: expected {writable, readable}');
        pipe(this, pair.writable, options || {}).catch(() => {});
        return pair.readable;
    }
    values(options) { return iterate(this, !!(options && options.preventCancel)); }
    [Symbol.asyncIterator](options) { return this.values(options); }
    get [Symbol.toStringTag]() { return 'ReadableStream'; }
    [INSPECT]() { return 'ReadableStream { locked: ' + this.locked + ', state: \'' + this._state + '\' }'; }
}
define('ReadableStream', ReadableStream);

async function* iterate(stream, preventCancel) {
    const reader = stream.getReader();
    let finished = false;
    try {
        for (;;) {
            const { value, done } = await reader.read();
            if (done) { finished = true; return; }
            yield value;
        }
    } finally {
        if (!finished && !preventCancel) await reader.cancel();
        reader.releaseLock();
    }
}

async function pipe(source, dest, o) {
    if (!(dest instanceof WritableStream)) throw new TypeError('pipeTo: expected a WritableStream');
    if (source.locked || dest.locked) throw new TypeError('pipeTo: a stream is locked');
    const reader = source.getReader();
    const writer = dest.getWriter();
    const signal = o.signal;
    let aborted = null;
    const onAbort = () => { aborted = signal.reason === undefined ? new DOMException('aborted', 'AbortError') : signal.reason; };
    if (signal) {
        if (signal.aborted) onAbort();
        else if (typeof signal.addEventListener === 'function') signal.addEventListener('abort', onAbort);
    }
    try {
        for (;;) {
            if (aborted) throw aborted;
            await writer.ready;
            let r;
            try {
                r = await reader.read();
            } catch (e) {
                if (!o.preventAbort) await writer.abort(e).catch(() => {});
                throw e;
            }
            if (r.done) {
                if (!o.preventClose) await writer.close();
                return;
            }
            writer.write(r.value).catch(() => {});
            if (dest._state === 'errored' || dest._state === 'erroring') throw dest._stored;
        }
    } catch (e) {
        if (dest._state === 'errored' || dest._state === 'erroring' || e === aborted) {
            if (!o.preventCancel) await reader.cancel(e).catch(() => {});
            if (e === aborted && !o.preventAbort) await writer.abort(e).catch(() => {});
        }
        throw e;
    } finally {
        if (signal && typeof signal.removeEventListener === 'function') signal.removeEventListener('abort', onAbort);
        reader.releaseLock();
        writer.releaseLock();
    }
}

/* ---- WritableStream ---- */

class WritableStreamDefaultController {
    constructor() { throw new TypeError('Illegal constructor'); }
    error(e) { if (this._s._state === 'writable') wsStartErroring(this._s, e); }
    get signal() { return undefined; }
}
define('WritableStreamDefaultController', WritableStreamDefaultController);

const CLOSE = {};

function wsDesired(s) { return s._strategy.hwm - s._queueSize; }

function wsBackpressure(s) {
    const w = s._writer;
    const bp = s._state === 'writable' && !s._closeRequested && wsDesired(s) <= 0;
    if (w && bp !== s._bp) {
        if (bp) w._ready = defer();
        else w._ready.resolve();
    }
    s._bp = bp;
}

function wsStartErroring(s, e) {
    if (s._state !== 'writable') return;
    s._state = 'erroring';
    s._stored = e;
    if (s._writer && !s._bp) { s._writer._ready = defer(); s._writer._ready.reject(e); }
    else if (s._writer) s._writer._ready.reject(e);
    if (!s._inFlight && s._started) wsFinishErroring(s);
}

function wsFinishErroring(s) {
    s._state = 'errored';
    const e = s._stored;
    for (const q of s._queue.splice(0)) if (q.d) q.d.reject(e);
    s._queueSize = 0;
    if (s._closeD) s._closeD.reject(e);
    if (s._writer) s._writer._closed.reject(e);
    const a = s._abortD;
    if (a) call(s._sink, 'abort', [a.reason]).then(() => a.resolve(), (x) => a.reject(x));
}

function wsAdvance(s) {
    if (!s._started || s._inFlight) return;
    if (s._state === 'erroring') { wsFinishErroring(s); return; }
    if (s._state !== 'writable' || s._queue.length === 0) return;
    const q = s._queue[0];
    s._inFlight = true;
    if (q.v === CLOSE) {
        s._queue.shift();
        call(s._sink, 'close', []).then(() => {
            s._inFlight = false;
            s._state = 'closed';
            s._closeD.resolve();
            if (s._writer) s._writer._closed.resolve();
        }, (e) => {
            s._inFlight = false;
            s._state = 'writable';
            wsStartErroring(s, e);
            wsFinishErroring(s);
        });
        return;
    }
    call(s._sink, 'write', [q.v, s._ctrl]).then(() => {
        s._inFlight = false;
        s._queue.shift();
        s._queueSize -= q.size;
        if (s._queue.length === 0) s._queueSize = 0;
        q.d.resolve();
        wsBackpressure(s);
        wsAdvance(s);
    }, (e) => {
        s._inFlight = false;
        s._queue.shift();
        q.d.reject(e);
        if (s._state === 'writable') wsStartErroring(s, e);
        if (s._state === 'erroring') wsFinishErroring(s);
    });
}

function wsWrite(s, chunk) {
    if (s._state === 'errored' || s._state === 'erroring') return Promise.reject(s._stored);
    if (s._closeRequested || s._state === 'closed') return Promise.reject(new TypeError('write: the stream is closing or closed'));
    let size;
    try { size = Number(s._strategy.size(chunk)); } catch (e) { wsStartErroring(s, e); return Promise.reject(e); }
    const d = defer();
    s._queue.push({ v: chunk, size, d });
    s._queueSize += size;
    wsBackpressure(s);
    wsAdvance(s);
    return d.promise;
}

function wsClose(s) {
    if (s._state === 'closed' || s._state === 'errored' || s._closeRequested)
        return Promise.reject(new TypeError('close: the stream is closed, closing or errored'));
    s._closeRequested = true;
    s._closeD = defer();
    if (s._writer && s._bp && s._state === 'writable') s._writer._ready.resolve();
    s._queue.push({ v: CLOSE, size: 0 });
    wsAdvance(s);
    return s._closeD.promise;
}

function wsAbort(s, reason) {
    if (s._state === 'closed' || s._state === 'errored') return Promise.resolve();
    if (s._abortD) return s._abortD.promise;
    s._abortD = defer();
    s._abortD.reason = reason;
    const p = s._abortD.promise;
    wsStartErroring(s, reason === undefined ? new DOMException('aborted', 'AbortError') : reason);
    return p;
}

class WritableStreamDefaultWriter {
    constructor(stream) {
        if (!(stream instanceof WritableStream)) throw new TypeError('WritableStreamDefaultWriter: expected a WritableStream');
        if (stream._writer) throw new TypeError('the stream is locked to another writer');
        this._s = stream;
        stream._writer = this;
        this._closed = defer();
        this._ready = defer();
        if (stream._state === 'writable') {
            if (stream._bp && !stream._closeRequested) { /* pending */ } else this._ready.resolve();
        } else if (stream._state === 'closed') {
            this._ready.resolve();
            this._closed.resolve();
        } else {
            this._ready.reject(stream._stored);
            this._closed.reject(stream._stored);
        }
    }
    get closed() { return this._closed.promise; }
    get ready() { return this._ready.promise; }
    get desiredSize() {
        const s = this._s;
        if (!s) throw new TypeError('desiredSize: the writer was released');
        if (s._state === 'errored' || s._state === 'erroring') return null;
        if (s._state === 'closed') return 0;
        return wsDesired(s);
    }
    write(chunk) { return this._s ? wsWrite(this._s, chunk) : Promise.reject(new TypeError('write: the writer was released')); }
    close() { return this._s ? wsClose(this._s) : Promise.reject(new TypeError('close: the writer was released')); }
    abort(reason) { return this._s ? wsAbort(this._s, reason) : Promise.reject(new TypeError('abort: the writer was released')); }
    releaseLock() {
        const s = this._s;
        if (!s) return;
        const e = new TypeError('the writer was released');
        this._ready = defer();
        this._ready.reject(e);
        if (s._state === 'writable' || s._state === 'erroring') this._closed.reject(e);
        else { this._closed = defer(); this._closed.reject(e); }
        s._writer = null;
        this._s = null;
    }
}
define('WritableStreamDefaultWriter', WritableStreamDefaultWriter);

class WritableStream {
    constructor(sink, strategy) {
        sink = sink === undefined || sink === null ? {} : sink;
        if (sink.type !== undefined) throw new RangeError('WritableStream: type is not supported');
        this._sink = sink;
        this._strategy = strategyOf(strategy, 1);
        this._state = 'writable';
        this._writer = null;
        this._queue = [];
        this._queueSize = 0;
        this._inFlight = false;
        this._closeRequested = false;
        this._started = false;
        this._bp = false;
        const c = Object.create(WritableStreamDefaultController.prototype);
        c._s = this;
        this._ctrl = c;
        wsBackpressure(this);
        call(sink, 'start', [c]).then(() => { this._started = true; wsAdvance(this); },
            (e) => { this._started = true; wsStartErroring(this, e); wsFinishErroring(this); });
    }
    get locked() { return this._writer !== null; }
    getWriter() { return new WritableStreamDefaultWriter(this); }
    abort(reason) { return this.locked ? Promise.reject(new TypeError('abort: the stream is locked')) : wsAbort(this, reason); }
    close() { return this.locked ? Promise.reject(new TypeError('close: the stream is locked')) : wsClose(this); }
    get [Symbol.toStringTag]() { return 'WritableStream'; }
    [INSPECT]() { return 'WritableStream { locked: ' + this.locked + ', state: \'' + this._state + '\' }'; }
}
define('WritableStream', WritableStream);

/* ---- TransformStream ---- */

class TransformStreamDefaultController {
    constructor() { throw new TypeError('Illegal constructor'); }
    get desiredSize() { return desiredSize(this._t._readable); }
    enqueue(chunk) {
        const t = this._t, r = t._readable;
        if (r._state !== 'readable' || r._closeRequested) throw new TypeError('enqueue: the readable side is closed');
        r._ctrl.enqueue(chunk);
        if (desiredSize(r) <= 0) tsBackpressure(t, true);
    }
    error(e) { tsError(this._t, e); }
    terminate() {
        const t = this._t;
        if (t._readable._state === 'readable' && !t._readable._closeRequested) t._readable._ctrl.close();
        const e = new TypeError('the TransformStream was terminated');
        if (t._writable._state === 'writable') wsStartErroring(t._writable, e);
    }
}
define('TransformStreamDefaultController', TransformStreamDefaultController);

function tsBackpressure(t, on) {
    if (t._bp === on) return;
    if (on) t._bpD = defer();
    else t._bpD.resolve();
    t._bp = on;
}

function tsError(t, e) {
    rsError(t._readable, e);
    if (t._writable._state === 'writable') wsStartErroring(t._writable, e);
    if (t._bp) tsBackpressure(t, false);
}

class TransformStream {
    constructor(transformer, writableStrategy, readableStrategy) {
        transformer = transformer === undefined || transformer === null ? {} : transformer;
        const c = Object.create(TransformStreamDefaultController.prototype);
        c._t = this;
        this._bp = false;
        const startD = defer();
        const transform = (chunk) => {
            if (typeof transformer.transform === 'function') return call(transformer, 'transform', [chunk, c]);
            try { c.enqueue(chunk); return Promise.resolve(); } catch (e) { return Promise.reject(e); }
        };
        const t = this;
        this._readable = new ReadableStream({
            start: () => startD.promise,
            pull: () => { tsBackpressure(t, false); return Promise.resolve(); },
            cancel: (reason) => {
                if (t._writable._state === 'writable') wsStartErroring(t._writable, reason === undefined ? new TypeError('the readable side was cancelled') : reason);
                return call(transformer, 'cancel', [reason]);
            },
        }, readableStrategy === undefined ? { highWaterMark: 0 } : readableStrategy);
        this._writable = new WritableStream({
            start: () => startD.promise,
            write: (chunk) => {
                const go = () => {
                    if (t._writable._state === 'erroring') return Promise.reject(t._writable._stored);
                    return transform(chunk).catch((e) => { tsError(t, e); throw e; });
                };
                return t._bp ? t._bpD.promise.then(go) : go();
            },
            close: () => call(transformer, 'flush', [c]).then(() => {
                if (t._readable._state === 'errored') throw t._readable._stored;
                if (t._readable._state === 'readable' && !t._readable._closeRequested) t._readable._ctrl.close();
            }, (e) => { tsError(t, e); throw e; }),
            abort: (reason) => { tsError(t, reason); return call(transformer, 'cancel', [reason]); },
        }, writableStrategy);
        tsBackpressure(this, true);
        call(transformer, 'start', [c]).then(startD.resolve, (e) => { tsError(t, e); startD.reject(e); });
    }
    get readable() { return this._readable; }
    get writable() { return this._writable; }
    get [Symbol.toStringTag]() { return 'TransformStream'; }
}
define('TransformStream', TransformStream);

/* Workers' byte pass-through streams */
function byteChunk(chunk) {
    if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
    if (ArrayBuffer.isView(chunk)) return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    throw new TypeError('this stream takes ArrayBuffer or ArrayBufferView chunks');
}

class IdentityTransformStream extends TransformStream {
    constructor(options) {
        super({ transform: (chunk, c) => c.enqueue(byteChunk(chunk)) }, undefined,
            { highWaterMark: options && options.highWaterMark !== undefined ? options.highWaterMark : 0 });
    }
}
define('IdentityTransformStream', IdentityTransformStream);

class FixedLengthStream extends TransformStream {
    constructor(length) {
        const n = Number(length);
        if (!(n >= 0) || n !== Math.floor(n)) throw new TypeError('FixedLengthStream: the length must be an integer >= 0');
        let seen = 0;
        super({
            transform(chunk, c) {
                const b = byteChunk(chunk);
                seen += b.byteLength;
                if (seen > n) throw new TypeError('FixedLengthStream: more than ' + n + ' bytes were written');
                c.enqueue(b);
            },
            flush() {
                if (seen !== n) throw new TypeError('FixedLengthStream: ' + seen + ' bytes were written, not ' + n);
            },
        });
        this._length = n;
        this.readable._length = n; /* sent as the response's Content-Length */
    }
}
define('FixedLengthStream', FixedLengthStream);

class TextEncoderStream extends TransformStream {
    constructor() {
        let pending = '';
        super({
            transform(chunk, c) {
                let s = pending + String(chunk);
                pending = '';
                const last = s.charCodeAt(s.length - 1);
                if (last >= 0xd800 && last <= 0xdbff) { pending = s.slice(-1); s = s.slice(0, -1); }
                if (s) c.enqueue(new Uint8Array(hx.encode(s)));
            },
            flush(c) { if (pending) c.enqueue(new Uint8Array([0xef, 0xbf, 0xbd])); },
        });
    }
    get encoding() { return 'utf-8'; }
}
define('TextEncoderStream', TextEncoderStream);

/* Bytes of an incomplete UTF-8 sequence at the end of B (0..3) */
function utf8Tail(b) {
    for (let k = 1; k <= Math.min(3, b.length); k++) {
        const c = b[b.length - k];
        if ((c & 0xc0) === 0x80) continue;
        const need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return need > k ? k : 0;
    }
    return 0;
}

class TextDecoderStream extends TransformStream {
    constructor(label, options) {
        const dec = new TextDecoder(label, options);
        let rest = new Uint8Array(0), first = true;
        super({
            transform(chunk, c) {
                const b = byteChunk(chunk);
                const all = new Uint8Array(rest.length + b.length);
                all.set(rest);
                all.set(b, rest.length);
                const keep = utf8Tail(all);
                rest = all.slice(all.length - keep);
                const s = hx.decode(all.subarray(0, all.length - keep), dec.fatal, dec.ignoreBOM || !first);
                first = false;
                if (s) c.enqueue(s);
            },
            flush(c) { if (rest.length) c.enqueue(hx.decode(rest, dec.fatal, true)); },
        });
        this._dec = dec;
    }
    get encoding() { return 'utf-8'; }
    get fatal() { return this._dec.fatal; }
    get ignoreBOM() { return this._dec.ignoreBOM; }
}
define('TextDecoderStream', TextDecoderStream);

class CountQueuingStrategy {
    constructor(init) { this.highWaterMark = Number(init.highWaterMark); }
    size() { return 1; }
}
define('CountQueuingStrategy', CountQueuingStrategy);

class ByteLengthQueuingStrategy {
    constructor(init) { this.highWaterMark = Number(init.highWaterMark); }
    size(chunk) { return chunk.byteLength; }
}
define('ByteLengthQueuingStrategy', ByteLengthQueuingStrategy);

/* ---- bodies ---- */

/* What a stream heliosd feeds queues before heliosd stops reading its
 * source (the high watermark of request.body and a fetch() body). */
const SINK_HWM = 128 * 1024;

/* A byte stream heliosd feeds through SINK(chunk, done, message); CANCEL
 * runs when its reader cancels it, PAUSE(true) when its queue reaches
 * SINK_HWM (heliosd stops reading the client or the upstream: what is
 * already read still arrives, about one read), PAUSE(false) when its reader
 * wants more. Whatever the reader does, more than max_body queued (or 4
 * MiB, when larger) errors the stream. */
function sinkStream(what, cancel, pause, length) {
    let ctrl, dead = false, paused = false;
    const cap = Math.max(hx.maxBody, 4 * 1048576);
    const stream = new ReadableStream({
        type: 'bytes',
        start(c) { ctrl = c; },
        pull() {
            if (paused && !dead) {
                paused = false;
                pause(false);
            }
        },
        cancel() { dead = true; cancel(); },
    }, { highWaterMark: SINK_HWM });
    if (length !== undefined) stream._length = length;
    const sink = (chunk, done, msg) => {
        if (dead) return;
        if (msg !== undefined) {
            dead = true;
            ctrl.error(new TypeError(msg));
            return;
        }
        if (chunk) {
            ctrl.enqueue(new Uint8Array(chunk));
            if (!done && !paused && ctrl.desiredSize <= 0) {
                paused = true;
                pause(true);
            }
            if (ctrl.desiredSize < -cap) {
                dead = true;
                ctrl.error(new TypeError(what + ': over max_body (' + cap + ' bytes) arrived and was not read'));
                cancel();
                return;
            }
        }
        if (done) {
            dead = true;
            ctrl.close();
        }
    };
    return { stream, sink };
}

function bytesStream(b) {
    const u = typeof b === 'string' ? new Uint8Array(hx.encode(b)) : new Uint8Array(b);
    return new ReadableStream({
        type: 'bytes',
        start(c) {
            if (u.length) c.enqueue(u);
            c.close();
        },
    });
}

function incomingStream(tok) {
    const { stream, sink } = sinkStream('the request body', () => {}, (p) => hx.bodyPause(tok, p));
    try {
        hx.bodyStream(tok, sink);
    } catch (_) {
        /* already read whole (text(), arrayBuffer()...): the same bytes */
        hx.body(tok).then((b) => { if (b.byteLength) sink(b, false); sink(null, true); },
            (e) => sink(null, true, e.message));
    }
    return stream;
}

function chunkBytes(v) {
    if (v instanceof Uint8Array) return v;
    if (v instanceof ArrayBuffer) return new Uint8Array(v);
    if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    if (typeof v === 'string') return new Uint8Array(hx.encode(v));
    throw new TypeError('a body stream must give ArrayBuffer or ArrayBufferView chunks');
}

/* The whole stream, at most MAX bytes -> ArrayBuffer */
async function readAll(stream, max) {
    const reader = stream.getReader();
    const parts = [];
    let n = 0;
    for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const b = chunkBytes(value);
        n += b.byteLength;
        if (n > max) {
            reader.cancel().catch(() => {});
            throw new TypeError('the body is over max_body (' + max + ' bytes)');
        }
        parts.push(b);
    }
    reader.releaseLock();
    if (parts.length === 1 && parts[0].byteOffset === 0 && parts[0].byteLength === parts[0].buffer.byteLength)
        return parts[0].buffer;
    const all = new Uint8Array(n);
    let o = 0;
    for (const p of parts) {
        all.set(p, o);
        o += p.byteLength;
    }
    return all.buffer;
}

/* Sends STREAM as the body of the response to TOK at the client's pace.
 * The first chunk is awaited before the head goes out, so a stream that
 * fails at once (or is empty) still gets a plain 500 (or a plain empty
 * response); after the head a failure cuts the response off. */
async function respond(tok, status, pairs, ct, stream) {
    const reader = stream.getReader();
    let r = await reader.read();
    if (r.done) {
        hx.respond(tok, status, pairs, null, ct);
        return;
    }
    /* a known length (a fetch() body passed on untouched, a
     * FixedLengthStream) is sent as Content-Length; heliosd checks it */
    const length = stream._length === undefined ? -1 : stream._length;
    if (!hx.respondBegin(tok, status, pairs, ct, length)) {
        reader.cancel().catch(() => {});
        return;
    }
    try {
        for (;;) {
            const st = r.done ? hx.respondBody(tok, null, true) : hx.respondBody(tok, chunkBytes(r.value), false);
            if (r.done) return;
            if (st < 0) {
                reader.cancel().catch(() => {});
                return;
            }
            if (st === 1) await new Promise((resolve) => hx.respondWait(tok, resolve));
            r = await reader.read();
        }
    } catch (e) {
        const m = e instanceof Error ? e.name + ': ' + e.message : String(e);
        hx.respondAbort(tok, 'the response body stream failed: ' + m);
        reader.cancel(e).catch(() => {});
    }
}

Object.assign(streamHooks, {
    respond,
    isStream: (x) => x instanceof ReadableStream,
    disturbed: (s) => s._disturbed,
    fromSource: (b, tok) => (b === undefined ? incomingStream(tok) : bytesStream(b)),
    readAll,
    tee: (s) => s.tee(),
    sinkStream,
});

extractors.push((body) => {
    if (!(body instanceof ReadableStream)) return undefined;
    if (body.locked || body._disturbed) throw new TypeError('the body stream is locked or already read');
    return [body, null];
});
})
