"""Hostile HTTP/2 and TLS input against the real binary: a deterministic
(seeded) mutation fuzzer, the HTTP/2 counterpart of test_fuzz_http1.py.

HTTP/2 (h2c, prior knowledge): about a dozen valid frame sequences (preface +
SETTINGS, HEADERS with and without CONTINUATION, DATA with END_STREAM,
several streams at once, WINDOW_UPDATE, PING, PRIORITY, RST_STREAM, GOAWAY,
padding, request trailers), for a proxied route (to hx_backend) and a
static_response route, are mutated a few times each. Frame-level mutations:
wrong lengths, wrong stream ids (0, even, closed, reserved bit), bad flags,
padding lengths past the payload, huge/zero/overflowing window increments,
zero-length frames of every type, HPACK garbage (bad indexes, table size
updates, huge string lengths, broken Huffman, malformed header lists), frames
on closed and idle streams, duplicated, dropped and reordered frames, broken
CONTINUATION chains, bad SETTINGS values, client PUSH_PROMISE, unknown types,
flow-control violations; then byte-level ones (bit flips, insertions,
deletions, truncation). Each case gets its own connection, sent in random
pieces, a third of them with a pause at a frame boundary so the damage lands
while earlier streams are being proxied or answered; the reply is read until
the server closes, a short timeout, or (mutated cases) a quiet spell.

Checked: heliosd stays alive; every frame it sends is well-formed HTTP/2
(header length vs payload, known type, flags, stream id rules, fixed payload
sizes, no frame past the agreed max frame size, CONTINUATION chains, every
header block decodes with HPACK and starts with a valid :status, nothing
after END_STREAM or RST_STREAM, no new stream above a GOAWAY's last id, no
frame cut off by a clean close); an unmutated seed gets its 200s; after each
batch curl --http2-prior-knowledge still gets 200 from the backend and from
the static route.

TLS: random bytes, truncated, fragmented and mutated ClientHellos, mutated
client Finished messages, and mutated HTTP/2 frame sequences after a real
handshake with ALPN h2, against a TLS listener; every reply must be
well-formed TLS records (or HTTP/2 frames inside TLS), and curl over TLS
(h2 and HTTP/1.1) must keep working in between and at the end.

The conftest teardown stops heliosd with SIGTERM and fails the test on a
non-zero exit or any sanitizer report in heliosd's stderr (CI runs this under
ASan too; HELIOS_SANITIZE=1 or an ASan binary only widens the timeouts and
time budgets: the counts are the same; about 30 s in all normally, 45 s
under ASan).

Set HELIOS_FUZZ_SEED to replay another seed, HELIOS_FUZZ_CASES /
HELIOS_FUZZ_TLS_CASES to change the counts. A failing case is written to the
test's tmp dir as case-N.bin (h2) or tls-case-N.bin (what was sent)."""

import os
import random
import re
import socket
import ssl
import struct
import time
from concurrent.futures import ThreadPoolExecutor

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

from conftest import (
    curl,
    free_port,
    is_sanitizer_build,
    make_ca,
    make_cert,
    make_config,
    proxy_route,
    static_route,
    upstream_conf,
)

SANITIZE = is_sanitizer_build()
SEED = int(os.environ.get("HELIOS_FUZZ_SEED", "20240612"))
CASES = int(os.environ.get("HELIOS_FUZZ_CASES", "1500"))
TLS_CASES = int(os.environ.get("HELIOS_FUZZ_TLS_CASES", "400"))
TIME_BUDGET = 80.0 if SANITIZE else 40.0  # seconds of sending (h2 part), whatever CASES says
TLS_TIME_BUDGET = 45.0 if SANITIZE else 30.0
READ_TIMEOUT = 2.0 if SANITIZE else 1.5  # per case, from the end of sending
QUIET = 0.5 if SANITIZE else 0.25  # a mutated case ends after this long without a byte
PARALLEL = 8  # connections in flight; each case still has its own
BATCH = 100  # cases between liveness checks
TLS_BATCH = 60

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20
RAW = -1  # a frame list item that is raw bytes (the preface)
STATUS_RX = re.compile(rb"^HTTP/1\.[01] [1-5]\d\d ")

# what the server may legally set, per frame type
ALLOWED_FLAGS = {DATA: END_STREAM | PADDED, HEADERS: END_STREAM | END_HEADERS | PADDED | PRIO,
                 PRIORITY: 0, RST_STREAM: 0, SETTINGS: ACK, PING: ACK, GOAWAY: 0,
                 WINDOW_UPDATE: 0, CONTINUATION: END_HEADERS}


# --------------------------------------------------------------------------
# frames and seeds


def F(ftype, flags, sid, payload=b"", length=None):
    """One frame as a mutable list: [type, flags, stream, payload, length
    override (None: the payload's)]. RAW items carry bytes as payload."""
    return [ftype, flags, sid, bytes(payload), length]


def serialize(frames):
    out = bytearray()
    for ftype, flags, sid, payload, length in frames:
        if ftype == RAW:
            out += payload
            continue
        n = len(payload) if length is None else length
        out += struct.pack(">I", n & 0xFFFFFF)[1:] + bytes([ftype & 0xFF, flags & 0xFF])
        out += struct.pack(">I", sid & 0xFFFFFFFF) + payload
    return bytes(out)


def settings_payload(**kv):
    ids = {"header_table_size": 1, "enable_push": 2, "max_concurrent_streams": 3,
           "initial_window_size": 4, "max_frame_size": 5, "max_header_list_size": 6}
    # iN=V: the setting with identifier N (unknown ones must be ignored)
    return b"".join(struct.pack(">HI", ids[k] if k in ids else int(k[1:]), v) for k, v in kv.items())


def req_headers(method, path, extra=(), authority="fuzz.test"):
    return [(":method", method), (":scheme", "http"), (":path", path), (":authority", authority),
            *extra]


def u32(v):
    return struct.pack(">I", v & 0xFFFFFFFF)


def seeds():
    """Valid sequences: (frames, stream ids that must get a 200 with
    END_STREAM when sent unmutated). One HPACK encoder per seed, as one
    connection would have."""
    out = []

    def start(**kv):
        return [F(RAW, 0, 0, PREFACE), F(SETTINGS, 0, 0, settings_payload(**kv))]

    # 0: a plain proxied GET
    e = Encoder()
    out.append((start() + [F(HEADERS, END_HEADERS | END_STREAM, 1, e.encode(req_headers("GET", "/")))],
                {1}))
    # 1: the static route, then the proxy on a second stream
    e = Encoder()
    out.append((start(enable_push=0) + [
        F(HEADERS, END_HEADERS | END_STREAM, 1, e.encode(req_headers("GET", "/static/x"))),
        F(HEADERS, END_HEADERS | END_STREAM, 3, e.encode(req_headers("GET", "/headers?q=1")))], {1, 3}))
    # 2: POST with content-length in two DATA frames
    e = Encoder()
    out.append((start() + [
        F(HEADERS, END_HEADERS, 1, e.encode(req_headers("POST", "/echo", [("content-length", "10")]))),
        F(DATA, 0, 1, b"hello"), F(DATA, END_STREAM, 1, b"world")], {1}))
    # 3: HEADERS + two CONTINUATIONs (a long header)
    e = Encoder()
    block = e.encode(req_headers("GET", "/headers", [("x-long", "v" * 6000), ("cookie", "a=1"),
                                                     ("cookie", "b=2")]))
    third = len(block) // 3
    out.append((start() + [
        F(HEADERS, END_STREAM, 1, block[:third]), F(CONTINUATION, 0, 1, block[third:2 * third]),
        F(CONTINUATION, END_HEADERS, 1, block[2 * third:])], {1}))
    # 4: several streams with control frames interleaved
    e = Encoder()
    out.append((start(initial_window_size=1 << 20) + [
        F(WINDOW_UPDATE, 0, 0, u32(1 << 20)),
        F(HEADERS, END_HEADERS | END_STREAM, 1, e.encode(req_headers("GET", "/bytes/20000"))),
        F(HEADERS, END_HEADERS, 3, e.encode(req_headers("POST", "/echo"))),
        F(PING, 0, 0, b"fuzzping"),
        F(PRIORITY, 0, 5, u32(3) + b"\x10"),
        F(DATA, 0, 3, b"x" * 1000),
        F(HEADERS, END_HEADERS | END_STREAM, 5, e.encode(req_headers("GET", "/static/y"))),
        F(WINDOW_UPDATE, 0, 1, u32(65536)),
        F(DATA, END_STREAM, 3, b"y" * 100),
        F(HEADERS, END_HEADERS | END_STREAM, 7, e.encode(req_headers("HEAD", "/bytes/100")))],
        {1, 3, 5, 7}))
    # 5: request trailers
    e = Encoder()
    out.append((start() + [
        F(HEADERS, END_HEADERS, 1, e.encode(req_headers("POST", "/echo", [("te", "trailers")]))),
        F(DATA, 0, 1, b"abc"),
        F(HEADERS, END_HEADERS | END_STREAM, 1, e.encode([("x-trailer", "t"), ("x-sum", "1")]))], {1}))
    # 6: a stream reset by the client, then another
    e = Encoder()
    out.append((start() + [
        F(HEADERS, END_HEADERS, 1, e.encode(req_headers("POST", "/echo", [("content-length", "100")]))),
        F(DATA, 0, 1, b"partial"),
        F(RST_STREAM, 0, 1, u32(8)),
        F(HEADERS, END_HEADERS | END_STREAM, 3, e.encode(req_headers("GET", "/")))], {3}))
    # 7: a request, then the client's GOAWAY
    e = Encoder()
    out.append((start() + [
        F(HEADERS, END_HEADERS | END_STREAM, 1, e.encode(req_headers("GET", "/headers"))),
        F(GOAWAY, 0, 0, u32(0) + u32(0) + b"bye")], {1}))
    # 8: padding and the PRIORITY flag on HEADERS, padded DATA
    e = Encoder()
    blk = e.encode(req_headers("POST", "/echo", [("content-length", "4")]))
    out.append((start() + [
        F(HEADERS, END_HEADERS | PADDED | PRIO, 1, b"\x05" + u32(0) + b"\x20" + blk + b"\0" * 5),
        F(DATA, END_STREAM | PADDED, 1, b"\x03abcd\0\0\0")], {1}))
    # 9: small windows opened by WINDOW_UPDATE, bigger frames allowed
    e = Encoder()
    out.append((start(initial_window_size=100, max_frame_size=20000, header_table_size=0) + [
        F(HEADERS, END_HEADERS | END_STREAM, 1, e.encode(req_headers("GET", "/bytes/5000"))),
        F(WINDOW_UPDATE, 0, 1, u32(100000)),
        F(WINDOW_UPDATE, 0, 0, u32(100000))], {1}))
    # 10: body without content-length in several DATA frames, empty last one
    e = Encoder()
    out.append((start() + [
        F(HEADERS, END_HEADERS, 1, e.encode(req_headers("PUT", "/echo", [("x-a", "1")]))),
        F(DATA, 0, 1, b"one,"), F(DATA, 0, 1, b"two,"), F(DATA, 0, 1, b"three"),
        F(DATA, END_STREAM, 1, b"")], {1}))
    # 11: SETTINGS ack from the client too (and PING ack), methods
    e = Encoder()
    out.append((start(max_concurrent_streams=10, max_header_list_size=65536) + [
        F(HEADERS, END_HEADERS | END_STREAM, 1, e.encode(req_headers("DELETE", "/echo"))),
        F(PING, ACK, 0, b"\0" * 8),
        F(HEADERS, END_HEADERS | END_STREAM, 3, e.encode(req_headers("OPTIONS", "/static/o"))),
        F(HEADERS, END_HEADERS | END_STREAM, 5, e.encode(req_headers("GET", "/status/200")))], {1, 3, 5}))
    # 12: a 100 KB upload in 16 KB DATA frames, echoed back through big windows
    e = Encoder()
    body = bytes(i % 251 for i in range(100000))
    out.append((start(initial_window_size=1 << 20) + [
        F(WINDOW_UPDATE, 0, 0, u32(1 << 20)),
        F(HEADERS, END_HEADERS, 1, e.encode(req_headers("POST", "/echo", [("content-length", "100000")])))]
        + [F(DATA, END_STREAM if k + 16384 >= len(body) else 0, 1, body[k : k + 16384])
           for k in range(0, len(body), 16384)], {1}))
    # 13: a slow stream, a big download stuck on flow control and then
    # cancelled, a local answer
    e = Encoder()
    out.append((start() + [
        F(HEADERS, END_HEADERS | END_STREAM, 1, e.encode(req_headers("GET", "/slow?ms=30"))),
        F(HEADERS, END_HEADERS | END_STREAM, 3, e.encode(req_headers("GET", "/bytes/300000"))),
        F(PING, 0, 0, b"\1" * 8),
        F(RST_STREAM, 0, 3, u32(8)),
        F(HEADERS, END_HEADERS | END_STREAM, 5, e.encode(req_headers("GET", "/static/z")))], {1, 5}))
    # 14: twenty streams at once, proxied and local
    e = Encoder()
    out.append((start() + [
        F(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * k,
          e.encode(req_headers("GET", f"/static/{k}" if k % 2 else f"/bytes/{100 * k}")))
        for k in range(20)], {1 + 2 * k for k in range(20)}))
    return out


# --------------------------------------------------------------------------
# mutations

NI = NeverIndexedHeaderTuple  # literal, never indexed: leaves the HPACK tables alone

BAD_HEADER_LISTS = [
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI("X-Upper", "1")],
    [NI("x-first", "1"), NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/")],
    [NI(":method", "GET"), NI(":method", "POST"), NI(":scheme", "http"), NI(":path", "/")],
    [NI(":method", "GET"), NI(":scheme", "http")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "no-slash")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI(":status", "200")],
    [NI(":method", "CONNECT"), NI(":authority", "a:1")],
    [NI(":method", "CONNECT"), NI(":protocol", "websocket"), NI(":scheme", "http"), NI(":path", "/")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI("connection", "keep-alive")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI("te", "gzip")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI("transfer-encoding", "chunked")],
    [NI(":method", "POST"), NI(":scheme", "http"), NI(":path", "/echo"), NI("content-length", "abc")],
    [NI(":method", "POST"), NI(":scheme", "http"), NI(":path", "/echo"), NI("content-length", "-1")],
    [NI(":method", "POST"), NI(":scheme", "http"), NI(":path", "/echo"),
     NI("content-length", "99999999999999999999999")],
    [NI(":method", "POST"), NI(":scheme", "http"), NI(":path", "/echo"), NI("content-length", "1"),
     NI("content-length", "2")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI(":authority", "a b@c:99999")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI(":authority", "")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI("host", "x"), NI(":authority", "y")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI("x-crlf", "a\r\nb: c")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI("x-nul", "a\0b")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI("bad name", "v")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI("", "empty name")],
    [NI(":method", "G E T"), NI(":scheme", "http"), NI(":path", "/")],
    [NI(":method", ""), NI(":scheme", ""), NI(":path", "/")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/%00/../../etc/passwd")],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/" + "a" * 20000)],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/headers"), NI("x-big", "v" * 70000)],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/headers")]
    + [NI(f"x-h{i}", "v") for i in range(400)],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/headers")]
    + [NI("cookie", f"c{i}=v") for i in range(200)],
    [NI(":method", "GET"), NI(":scheme", "http"), NI(":path", "/"), NI(":unknown", "x")],
    [NI("x-trailer", "only"), NI(":path", "/late")],
]

HPACK_EVIL = [
    b"\x3f\xe1\xff\xff\xff\x0f",  # dynamic table size update far above SETTINGS
    b"\x3f\xe1\x1f",  # table size update to 4096 ...
    b"\x82\x20",  # ... and one after a field (not allowed there)
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x0f",  # index overflowing any integer
    b"\x80",  # index 0
    b"\xbe",  # index 62: an empty dynamic table
    b"\xff\x80\x01",  # index 255
    b"\x40\x7f\xff\xff\xff\xff\x0f" + b"a" * 8,  # literal name with a huge length
    b"\x00\x85\xff\xff\xff\xff\xff",  # Huffman of EOS symbols
    b"\x00\x81\x00\x01a",  # Huffman padding not made of 1 bits
    b"\x00\x82\xff\xff\x01a",  # Huffman: EOS inside
    b"\x10\x00\x00",  # empty name, empty value
    b"\x40\x01:\x00",  # the name ":"
    b"\x0f\xff\xff\xff\xff\x0f\x00",  # indexed name beyond the table
    b"\x40\x03abc\x7f\x80\x80\x04" + b"x" * 10,  # literal value longer than the block
    b"\x40",  # a field cut after its first byte
    b"\x00\x03a",  # a name cut short
    b"\x40\x03abc\x83",  # a value length with no value
    b"\x3f",  # a table size update cut short
]

ODD_SETTINGS = [
    settings_payload(enable_push=2), settings_payload(initial_window_size=0x80000000),
    settings_payload(initial_window_size=0x7FFFFFFF), settings_payload(initial_window_size=0),
    settings_payload(max_frame_size=100), settings_payload(max_frame_size=1 << 24),
    settings_payload(max_frame_size=(1 << 24) - 1), settings_payload(header_table_size=0xFFFFFFFF),
    settings_payload(header_table_size=0), settings_payload(max_concurrent_streams=0),
    settings_payload(max_header_list_size=0), settings_payload(i9=1, i8=1, i0=5, i65535=7),
    settings_payload(i8=2), b"\x00\x04\x00\x00",  # not a multiple of 6
    settings_payload(initial_window_size=1) + settings_payload(initial_window_size=0x7FFFFFFF),
]

WINDOW_INCREMENTS = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x7FFFFFFF - 65535, 0x7FFFFFFE, 65536]


def frame_indexes(frames):
    return [i for i, f in enumerate(frames) if f[0] != RAW]


def stream_ids(frames):
    s = sorted({f[2] for f in frames if f[0] != RAW and f[2]})
    return s or [1]


def rand_control(rng, sids):
    """One odd frame, as a list."""
    sid = rng.choice(sids + [0, 2, 99, 0x7FFFFFFF])
    k = rng.randrange(18)
    if k == 0:
        return F(PING, rng.choice((0, ACK)), 0, bytes(rng.randrange(256) for _ in range(rng.choice((0, 7, 8, 9, 64)))))
    if k == 1:
        return F(PING, 0, rng.choice((1, 3)), b"12345678")
    if k == 2:
        return F(SETTINGS, 0, 0, rng.choice(ODD_SETTINGS))
    if k == 3:
        return F(SETTINGS, ACK, rng.choice((0, 0, 1)), rng.choice((b"", b"\0\1\0\0\0\0")))
    if k == 4:
        return F(SETTINGS, 0, 1, settings_payload())
    if k == 5:  # PRIORITY: self dependency, bad length, stream 0
        return F(PRIORITY, 0, sid, rng.choice((u32(sid) + b"\x10", u32(sid | 0x80000000) + b"\xff",
                                               b"\0\0\0\0", u32(1) + b"\x10\x00", b"")))
    if k == 6:
        return F(RST_STREAM, 0, sid, rng.choice((u32(0), u32(8), u32(0xFFFFFFFF), b"\0\0\0", u32(1) + b"x")))
    if k == 7:
        return F(GOAWAY, 0, rng.choice((0, 0, 1)), rng.choice((u32(0) + u32(0), u32(0x7FFFFFFF) + u32(2),
                                                            b"\0" * 7, u32(1) + u32(0) + b"d" * 3000)))
    if k == 8:
        return F(WINDOW_UPDATE, 0, rng.choice((0, sid)), u32(rng.choice(WINDOW_INCREMENTS)))
    if k == 9:
        return F(WINDOW_UPDATE, 0, rng.choice((0, sid)), rng.choice((b"", b"\0\0\1", u32(5) + b"\0")))
    if k == 10:  # a client may not push
        return F(PUSH_PROMISE, END_HEADERS, rng.choice(sids), u32(2) + Encoder().encode(req_headers("GET", "/p")))
    if k == 11:  # unknown types are to be ignored
        return F(rng.randrange(10, 256), rng.randrange(256), sid, bytes(rng.randrange(256) for _ in range(rng.randrange(20))))
    if k == 12:  # CONTINUATION out of nowhere
        return F(CONTINUATION, rng.choice((0, END_HEADERS)), sid, Encoder().encode([("x-c", "1")]))
    if k == 13:  # DATA on an idle or closed stream / stream 0
        return F(DATA, rng.choice((0, END_STREAM)), rng.choice((0, sid)), b"stray")
    if k == 14:  # HEADERS for a new stream with a garbage block
        return F(HEADERS, END_HEADERS | END_STREAM, rng.choice((sid, max(sids) + 2)), rng.choice(HPACK_EVIL))
    if k == 15:  # HEADERS with a bad header list on a new stream
        blk = Encoder().encode(rng.choice(BAD_HEADER_LISTS))
        return F(HEADERS, END_HEADERS | END_STREAM, max(sids) + 2, blk[:100000])
    if k == 16:  # zero-length frame of any type
        return F(rng.randrange(12), rng.choice((0, rng.randrange(256))), sid, b"")
    return F(HEADERS, END_HEADERS | END_STREAM, rng.choice((2, 0, 0x7FFFFFFF)),
             Encoder().encode(req_headers("GET", "/")))


def mutate_frames(rng, frames):
    fr = [list(f) for f in frames]
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        idx = frame_indexes(fr)
        if not idx:
            break
        # the client's first SETTINGS less often: damaged, it ends the
        # connection before any stream is looked at
        i = rng.choice(idx[1:] if len(idx) > 1 and rng.random() < 0.85 else idx)
        f = fr[i]
        op = rng.randrange(17)
        if op == 0:  # wrong length
            n = len(f[3])
            f[4] = rng.choice((0, max(0, n - 1), n + 1, n + rng.randint(2, 100), 0xFFFFFF, 16385, 16384,
                               rng.randrange(1 << 24)))
        elif op == 1:  # wrong stream id
            f[2] = rng.choice((0, 2, 4, f[2] + 2, max(f[2] - 2, 0), 0x7FFFFFFF, f[2] | 0x80000000, 1,
                               rng.randrange(1 << 31)))
        elif op == 2:  # bad flags
            f[1] = rng.randrange(256) if rng.random() < 0.5 else f[1] ^ rng.choice((END_STREAM, END_HEADERS, PADDED, PRIO))
        elif op == 3 and f[0] in (DATA, HEADERS):  # padding fields
            pad = min(255, rng.choice((0, 1, len(f[3]), len(f[3]) + 1, 255)))
            body = f[3] if not f[1] & PADDED else f[3][1:]
            f[1] |= PADDED
            f[3] = bytes([pad]) + body + b"\0" * rng.choice((0, pad, max(0, pad - 1), min(pad, 3)))
        elif op == 4:  # huge window increments, possibly twice (overflow)
            inc = F(WINDOW_UPDATE, 0, rng.choice((0, f[2], f[2] + 2)), u32(rng.choice(WINDOW_INCREMENTS)))
            fr[i + 1 : i + 1] = [inc] * rng.choice((1, 1, 2, 3))
        elif op == 5:  # zero-length frame (empty payload)
            f[3] = b""
            f[4] = None
        elif op == 6 and f[0] in (HEADERS, CONTINUATION):  # HPACK garbage
            evil = rng.choice(HPACK_EVIL) if rng.random() < 0.7 else bytes(
                rng.randrange(256) for _ in range(rng.randint(1, 40)))
            p = f[3]
            j = rng.randint(0, len(p))
            f[3] = rng.choice((evil + p, p[:j] + evil + p[j:], p + evil, evil))
        elif op == 7 and f[0] == HEADERS:  # a malformed header list instead
            blk = Encoder().encode(rng.choice(BAD_HEADER_LISTS))
            if len(blk) > 16000:  # keep it legal in size: HEADERS + CONTINUATIONs
                parts = [blk[k : k + 16000] for k in range(0, len(blk), 16000)][:20]
                f[3], f[1] = parts[0], f[1] & ~END_HEADERS
                fr[i + 1 : i + 1] = [F(CONTINUATION, END_HEADERS if k == len(parts) - 1 else 0, f[2], part)
                                     for k, part in enumerate(parts[1:], 1)]
            else:
                f[3] = blk
        elif op == 8:  # frames on closed streams: replay one at the end
            fr.append(list(f))
            if rng.random() < 0.5:
                fr.append(F(DATA, END_STREAM, f[2] or 1, b"late"))
        elif op == 9:  # duplicate
            fr[i + 1 : i + 1] = [list(f) for _ in range(rng.choice((1, 1, 2, 20)))]
        elif op == 10:  # drop
            del fr[i]
        elif op == 11:  # move
            g = fr.pop(i)
            idx = frame_indexes(fr) or [len(fr)]
            fr.insert(rng.choice(idx + [len(fr)]), g)
        elif op == 12:  # insert an odd frame anywhere after the preface (maybe inside a header block)
            j = rng.choice(idx + [len(fr)])
            fr.insert(j, rand_control(rng, stream_ids(fr)))
        elif op == 13 and f[0] == HEADERS:  # split into many CONTINUATIONs (maybe past the limit)
            p, pieces_n = f[3], rng.choice((2, 5, 17, 40))
            end = f[1] & END_HEADERS
            step = max(1, len(p) // pieces_n)
            chunks = [p[k : k + step] for k in range(0, len(p), step)] or [b""]
            f[3], f[1] = chunks[0], f[1] & ~END_HEADERS
            tail = [F(CONTINUATION, 0, f[2], c) for c in chunks[1:]] or [F(CONTINUATION, 0, f[2], b"")]
            tail[-1][1] = rng.choice((end, end, 0))
            fr[i + 1 : i + 1] = tail
        elif op == 14 and f[0] in (DATA, HEADERS):  # flow control violation / length mismatch
            if f[0] == DATA:
                f[3] = f[3] + b"z" * rng.choice((1, 1000, 70000, 300000))
            else:
                fr.insert(i + 1, F(DATA, 0, f[2], b"z" * rng.choice((1, 70000, 300000))))
        elif op == 15:  # reuse an old (lower) stream id for a new request
            fr.append(F(HEADERS, END_HEADERS | END_STREAM, rng.choice(stream_ids(fr)),
                        Encoder().encode([NI(k, v) for k, v in req_headers("GET", "/")])))
        else:  # an odd control frame at the end
            fr.append(rand_control(rng, stream_ids(fr)))
    return fr


def mutate_bytes(rng, data, keep):
    """Byte-level damage, mostly after the first KEEP bytes (the preface
    and the client's SETTINGS), sometimes after the preface, rarely
    anywhere."""
    r = rng.random()
    start = min(len(data), 0 if r < 0.04 else len(PREFACE) if r < 0.2 else keep)
    head, b = data[:start], bytearray(data[start:])
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        if op == 0 and b:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert random bytes
            i = rng.randint(0, len(b))
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 2 and b:  # delete
            i = rng.randrange(len(b))
            del b[i : i + rng.randint(1, 16)]
        elif op == 3 and b:  # truncate
            del b[rng.randrange(len(b)) :]
        elif op == 4 and b:  # overwrite with 0x00 / 0xff runs
            i = rng.randrange(len(b))
            b[i : i + 4] = rng.choice((b"\0", b"\xff")) * 4
        elif b:  # repeat a slice
            i = rng.randrange(len(b))
            j = min(len(b), i + rng.randint(1, 64))
            b[j:j] = bytes(b[i:j]) * rng.randint(2, 50)
    return head + bytes(b)


def pieces(rng, data):
    """Splits DATA into random-sized pieces (mostly whole, sometimes tiny)."""
    if rng.random() < 0.6:
        return [data]
    out, i = [], 0
    while i < len(data) and len(out) < 200:
        n = rng.choice((1, 2, 3, 9, 64, 512, 4096))
        out.append(data[i : i + n])
        i += n
    if i < len(data):
        out.append(data[i:])
    return out


class Case:
    """One h2 case: the bytes, the frames they came from, the streams that
    must get a 200 (unmutated seeds only), whether bytes were damaged after
    serialising, the case's generator (for piece sizes) and where to pause
    while sending: (offset, seconds) or None. Depends only on SEED and N:
    a seed replays exactly, in any thread order."""

    def __init__(self, base, n):
        rng = self.rng = random.Random(SEED * 1_000_003 + n)
        frames, expect = base[n % len(base)]
        keep = len(serialize(frames[:2]))  # preface + the client's SETTINGS
        self.expect, self.byte_mutated, self.pause = None, False, None
        if n < len(base):
            self.frames, self.data, self.expect = frames, serialize(frames), expect
            return
        r = rng.random()
        self.frames = mutate_frames(rng, frames) if r < 0.55 or r >= 0.8 else frames
        self.data = serialize(self.frames)
        if r >= 0.55:
            self.byte_mutated = True
            self.data = mutate_bytes(rng, self.data, keep)
        if rng.random() < 0.3:
            # stop for a moment at a frame boundary past the first HEADERS:
            # the damage then lands while streams are already being served
            # (proxied upstream, answering), not before
            ends, off = [], 0
            for f in self.frames:
                off += len(serialize([f]))
                if f[0] != RAW and off > keep:
                    ends.append(off)
            if len(ends) > 1:
                self.pause = (min(rng.choice(ends[1:]), len(self.data)),
                              rng.choice((0.005, 0.02, 0.05, 0.1)))


# --------------------------------------------------------------------------
# checking what the server sends


class ServerFrames:
    """An incremental, strict parser of what an HTTP/2 server sends."""

    def __init__(self, max_frame=16384):
        self.buf = bytearray()
        self.max_frame = max_frame
        self.frames = []
        self.problems = []
        self.dec = Decoder()
        self.dec.max_allowed_table_size = 1 << 32
        self.dec.max_header_list_size = 1 << 24
        self.block = None  # (sid, bytearray, flags of the HEADERS) while a header block is open
        self.streams = {}  # sid -> {"status": int|None, "end": bool, "data": bool}
        self.goaway_last = None
        self.settings_unacked = 0  # SETTINGS frames the client should acknowledge
        self.status = {}  # sid -> final status

    def bad(self, what):
        if len(self.problems) < 10:
            self.problems.append(what)

    def feed(self, data):
        self.buf += data
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], "big")
            if n > self.max_frame:
                self.bad(f"frame length {n} > max frame size {self.max_frame} (type {self.buf[3]})")
                self.buf.clear()  # cannot resynchronise
                return
            if len(self.buf) < 9 + n:
                return
            ftype, flags = self.buf[3], self.buf[4]
            raw_sid = int.from_bytes(self.buf[5:9], "big")
            payload = bytes(self.buf[9 : 9 + n])
            del self.buf[: 9 + n]
            self.frame(ftype, flags, raw_sid, payload)

    def finish(self, clean_eof):
        if clean_eof and self.buf:
            self.bad(f"connection closed inside a frame: {len(self.buf)} bytes left {bytes(self.buf[:20]).hex()}")

    def stream(self, sid):
        return self.streams.setdefault(sid, {"status": None, "end": False, "data": False, "final": False})

    def frame(self, ftype, flags, raw_sid, payload):
        sid = raw_sid & 0x7FFFFFFF
        self.frames.append((ftype, flags, sid, len(payload)))
        if not self.frames[1:] and ftype != SETTINGS:
            self.bad(f"first frame is type {ftype}, not SETTINGS")
        if raw_sid & 0x80000000:
            self.bad(f"reserved bit set in the stream id of a type {ftype} frame")
        if ftype not in ALLOWED_FLAGS:
            self.bad(f"server sent frame type {ftype}")
            return
        if flags & ~ALLOWED_FLAGS[ftype]:
            self.bad(f"type {ftype} frame with undefined flags {flags:#x}")
        if self.block is not None and (ftype != CONTINUATION or sid != self.block[0]):
            self.bad(f"type {ftype} frame on stream {sid} inside the header block of stream {self.block[0]}")
            self.block = None
        n = len(payload)
        if ftype in (SETTINGS, PING, GOAWAY):
            if sid != 0:
                self.bad(f"type {ftype} frame on stream {sid}")
        elif ftype != WINDOW_UPDATE and sid == 0:
            self.bad(f"type {ftype} frame on stream 0")
        elif sid and sid % 2 == 0:
            self.bad(f"type {ftype} frame on even stream {sid} (the server pushes nothing)")
        if ftype == SETTINGS:
            if flags & ACK and n:
                self.bad(f"SETTINGS ACK with {n} bytes")
            elif n % 6:
                self.bad(f"SETTINGS of {n} bytes")
            if not flags & ACK:
                self.settings_unacked += 1
        elif ftype == PING and n != 8:
            self.bad(f"PING of {n} bytes")
        elif ftype == GOAWAY:
            if n < 8:
                self.bad(f"GOAWAY of {n} bytes")
            else:
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                if self.goaway_last is not None and last > self.goaway_last:
                    self.bad(f"GOAWAY last stream id went up: {self.goaway_last} -> {last}")
                self.goaway_last = last
        elif ftype == RST_STREAM:
            if n != 4:
                self.bad(f"RST_STREAM of {n} bytes")
            self.stream(sid)["end"] = True
        elif ftype == WINDOW_UPDATE:
            if n != 4:
                self.bad(f"WINDOW_UPDATE of {n} bytes")
            elif int.from_bytes(payload, "big") & 0x7FFFFFFF == 0:
                self.bad(f"WINDOW_UPDATE with increment 0 on stream {sid}")
        elif ftype == PRIORITY and n != 5:
            self.bad(f"PRIORITY of {n} bytes")
        elif ftype == DATA:
            st = self.stream(sid)
            if st["end"]:
                self.bad(f"DATA on stream {sid} after END_STREAM/RST_STREAM")
            elif not st["final"]:
                self.bad(f"DATA on stream {sid} before a final response HEADERS")
            if flags & PADDED and (n < 1 or payload[0] >= n):
                self.bad(f"DATA with bad padding on stream {sid}")
            st["data"] = True
            if flags & END_STREAM:
                st["end"] = True
        elif ftype == HEADERS:
            st = self.stream(sid)
            if st["end"]:
                self.bad(f"HEADERS on stream {sid} after END_STREAM/RST_STREAM")
            if not st["final"] and st["status"] is None and self.goaway_last is not None and sid > self.goaway_last:
                self.bad(f"a response on stream {sid} after GOAWAY with last stream id {self.goaway_last}")
            p = payload
            if flags & PADDED:
                if not p or p[0] >= len(p):
                    self.bad(f"HEADERS with bad padding on stream {sid}")
                    return
                p = p[1 : len(p) - p[0]]
            if flags & PRIO:
                p = p[5:]
            self.block = (sid, bytearray(p), flags)
            if flags & END_HEADERS:
                self.header_block()
        elif ftype == CONTINUATION:
            if self.block is None:
                self.bad(f"CONTINUATION on stream {sid} without an open header block")
                return
            self.block[1].extend(payload)
            if flags & END_HEADERS:
                self.header_block()

    def header_block(self):
        sid, block, flags = self.block
        self.block = None
        st = self.stream(sid)
        try:
            fields = self.dec.decode(bytes(block), raw=True)
        except Exception as e:  # noqa: BLE001 - any HPACK error is a finding
            self.bad(f"HPACK error in the server's header block on stream {sid}: {e!r} ({bytes(block[:40]).hex()})")
            return
        names = [k for k, _ in fields]
        if st["final"]:  # trailers
            if not flags & END_STREAM:
                self.bad(f"trailers without END_STREAM on stream {sid}")
            if any(k.startswith(b":") for k in names):
                self.bad(f"pseudo-header in trailers on stream {sid}: {names}")
        else:
            if not fields or fields[0][0] != b":status" or not re.fullmatch(rb"[1-5]\d\d", fields[0][1]):
                self.bad(f"response HEADERS on stream {sid} without a valid leading :status: {fields[:3]}")
                return
            if names.count(b":status") != 1 or any(k.startswith(b":") for k in names[1:]):
                self.bad(f"odd pseudo-headers on stream {sid}: {names}")
            for k in names:
                if k != k.lower() or k in (b"connection", b"transfer-encoding", b"keep-alive", b"upgrade"):
                    self.bad(f"forbidden response header {k!r} on stream {sid}")
            code = int(fields[0][1])
            if code >= 200:
                st["final"] = True
                st["status"] = code
                self.status[sid] = code
            elif flags & END_STREAM:
                self.bad(f"1xx response ending stream {sid}")
        if flags & END_STREAM:
            st["end"] = True


def max_frame_for(frames, byte_mutated):
    """What the client said (or may have said) its max frame size is."""
    if byte_mutated:
        return (1 << 24) - 1
    m = 16384
    for f in frames:
        if f[0] == SETTINGS and not f[1] & ACK and f[2] == 0:
            p = f[3]
            for k in range(0, len(p) - len(p) % 6, 6):
                ident, val = struct.unpack(">HI", p[k : k + 6])
                if ident == 5 and 16384 <= val < (1 << 24):
                    m = max(m, val)
    return m


def exchange(sock, rng, data, parser, expect=None, allow_shut=True, pause=None):
    """Sends DATA in random pieces on SOCK (timeouts set), then reads until
    the peer closes, READ_TIMEOUT passes, or (mutated cases) QUIET passes
    without a byte, acknowledging the server's SETTINGS. Returns (bytes
    received, clean eof). PARSER is None for non-HTTP/2 answers."""
    got = bytearray()
    if pause:
        parts = [data[: pause[0]], None] + pieces(rng, data[pause[0] :])
    else:
        parts = pieces(rng, data)
    delay = len(parts) > 1 and rng.random() < 0.2
    sent_all = True
    for p in parts:
        if p is None:
            time.sleep(pause[1])
            continue
        try:
            sock.sendall(p)
        except (OSError, ssl.SSLError):
            sent_all = False
            break
        if delay:
            time.sleep(0.001)
    # (heliosd drops an HTTP/2 connection at EOF, streams and all: never
    # for a seed that must get its answers)
    if sent_all and allow_shut and not expect and rng.random() < 0.25:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    acked = 0
    clean = False
    deadline = time.monotonic() + READ_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(min(left, QUIET) if expect is None and got else left)
        try:
            b = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            if expect is None and got:
                break
            continue
        except (OSError, ssl.SSLError):
            break
        if not b:
            clean = True
            break
        got += b
        if parser is not None:
            parser.feed(b)
            while acked < parser.settings_unacked:
                acked += 1
                try:
                    sock.sendall(serialize([F(SETTINGS, ACK, 0)]))
                except (OSError, ssl.SSLError):
                    pass
            if expect and all(parser.stream(s)["end"] for s in expect):
                break
        if len(got) > 8 << 20:
            break
    return bytes(got), clean


def check_h2_reply(data_sent, expect, got, clean, parser, h2_only=False):
    """Problems with one case's reply (a list of strings). Without the
    preface, an h2c listener answers as HTTP/1.x; after ALPN h2 it is
    HTTP/2 whatever the client sends (H2_ONLY)."""
    if not h2_only and not data_sent.startswith(PREFACE):
        # not HTTP/2: heliosd answers (if at all) as HTTP/1.x
        if got and not STATUS_RX.match(got):
            return [f"non-h2 input got neither HTTP/1.x nor h2 frames: {got[:80]!r}"]
        return []
    parser.finish(clean)
    probs = list(parser.problems)
    if expect:
        for s in sorted(expect):
            if parser.status.get(s) != 200 or not parser.stream(s)["end"]:
                probs.append(f"valid seed: stream {s} got status {parser.status.get(s)}, "
                             f"ended={parser.stream(s)['end']}, frames={parser.frames[:30]}")
    return probs


# --------------------------------------------------------------------------
# the HTTP/2 test


def h2c_ok(port, path):
    p = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
             f"http://127.0.0.1:{port}{path}", timeout=20)
    return p.stdout == b"2 200", (p.stdout, p.stderr)


def h2_config(port, backend, **listener):
    return make_config(
        port,
        [
            static_route("static", "static body\n", match={"prefix": "/static/"}),
            proxy_route("app", "app"),
        ],
        {"app": upstream_conf(backend)},
        workers=2,
        listeners=[{"address": f"127.0.0.1:{port}", **listener}],
        # short timeouts: a case that leaves a stream half-sent must not
        # hold heliosd's attention for long
        timeouts={"client_header": "1s", "client_body": "1s", "keepalive": "1s"},
        http2={"settings_timeout": "2s"},
    )


def run_h2_case(port, base, n):
    c = Case(base, n)
    parser = ServerFrames(max_frame_for(c.frames, c.byte_mutated))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(READ_TIMEOUT)
    try:
        s.connect(("127.0.0.1", port))
        got, clean = exchange(s, c.rng, c.data, parser, c.expect, pause=c.pause)
    finally:
        s.close()
    return n, c.data, got, check_h2_reply(c.data, c.expect, got, clean, parser)


def test_mutated_h2_frames_never_crash_and_get_wellformed_frames(heliosd, backends, tmp_path):
    backend = backends("a")
    port = free_port()
    h = heliosd(h2_config(port, backend))
    base = seeds()

    start = time.monotonic()
    sent = answered = 0
    bad = []
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for first in range(0, CASES, BATCH):
            if time.monotonic() - start > TIME_BUDGET:
                break
            last = min(CASES, first + BATCH)
            for n, data, got, probs in pool.map(lambda k: run_h2_case(port, base, k), range(first, last)):
                sent += 1
                answered += bool(got)
                if probs:
                    (tmp_path / f"case-{n}.bin").write_bytes(data)
                    bad.append((n, probs[:3]))
            if not h.alive():
                for n in range(first, last):
                    (tmp_path / f"case-{n}.bin").write_bytes(Case(base, n).data)
                raise AssertionError(
                    f"heliosd died during cases {first}..{last - 1} (seed {SEED}); their bytes are "
                    f"in {tmp_path}/case-N.bin\n{h.stderr()[-3000:]}")
            for path in ("/", "/static/alive"):
                ok, why = h2c_ok(port, path)
                assert ok, f"after cases {first}..{last - 1} (seed {SEED}) curl h2c {path}: {why}"

    took = time.monotonic() - start
    print(f"h2 fuzz: seed {SEED}, {sent} cases, {answered} answered, {took:.1f}s")
    assert sent >= min(CASES, 300), f"only {sent} cases in {TIME_BUDGET}s"
    assert answered > sent // 2, f"only {answered} of {sent} cases got any answer"
    assert not bad, f"{len(bad)} cases got bad replies (seed {SEED}), first: {bad[:5]}"
    assert h.alive()
    for path in ("/echo", "/static/end", "/bytes/100000"):
        ok, why = h2c_ok(port, path)
        assert ok, f"at the end, curl h2c {path}: {why}"


# --------------------------------------------------------------------------
# TLS


def client_hello(rng, alpn=("h2", "http/1.1"), sni="h2.test", maxver=None):
    """A real ClientHello from Python's ssl (OpenSSL), with the random,
    session id and X25519 key share replaced by seeded bytes, so a seed
    replays the same bytes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if maxver:
        ctx.maximum_version = maxver
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    b = bytearray(out.read())
    rb = lambda k: bytes(rng.randrange(256) for _ in range(k))  # noqa: E731
    b[11:43] = rb(32)
    sl = b[43]
    b[44 : 44 + sl] = rb(sl)
    # walk to the extensions and reseed X25519 key shares
    p = 44 + sl
    p += 2 + int.from_bytes(b[p : p + 2], "big")  # cipher suites
    p += 1 + b[p]  # compression methods
    end = p + 2 + int.from_bytes(b[p : p + 2], "big")
    p += 2
    while p + 4 <= end:
        et, el = int.from_bytes(b[p : p + 2], "big"), int.from_bytes(b[p + 2 : p + 4], "big")
        if et == 0x33:
            q, qend = p + 6, p + 4 + el
            while q + 4 <= qend:
                g, kl = int.from_bytes(b[q : q + 2], "big"), int.from_bytes(b[q + 2 : q + 4], "big")
                if g == 0x1D and kl == 32:
                    b[q + 4 : q + 36] = rb(32)
                q += 4 + kl
        p += 4 + el
    return bytes(b)


def tls_records_problems(got):
    """What is wrong with a byte stream that should be TLS records."""
    p = 0
    while p + 5 <= len(got):
        ctype, major, ln = got[p], got[p + 1], int.from_bytes(got[p + 3 : p + 5], "big")
        if ctype not in (20, 21, 22, 23) or major != 3:
            return [f"not a TLS record at offset {p}: {got[p : p + 8].hex()}"]
        if ln > 16384 + 2048:
            return [f"TLS record of {ln} bytes at offset {p}"]
        p += 5 + ln
    return []


def mutate_hello(rng, hello):
    b = bytearray(hello)
    k = rng.randrange(8)
    if k == 0:  # random bytes, sometimes after a handshake record header
        junk = bytes(rng.randrange(256) for _ in range(rng.choice((1, 5, 40, 300, 2000))))
        return rng.choice((junk, b"\x16\x03\x01" + junk[:2] + junk, b"\x16\x03\x03\xff\xff" + junk))
    if k == 1:  # truncated
        return bytes(b[: rng.randrange(len(b))])
    if k == 2:  # fragmented into tiny records (valid, unusual), maybe with a bad one
        body, out = b[5:], bytearray()
        step = rng.choice((1, 2, 7, 100))
        for i in range(0, len(body), step):
            out += b"\x16\x03\x01" + struct.pack(">H", len(body[i : i + step])) + body[i : i + step]
        if rng.random() < 0.3:
            out[rng.randrange(len(out))] ^= 0xFF
        return bytes(out)
    if k == 3:  # a length field set wrong: record, handshake, session id, suites, extensions
        sl = b[43]
        spots = [(3, 2), (6, 3), (43, 1), (44 + sl, 2)]
        off, width = rng.choice(spots)
        val = rng.choice((0, 1, (1 << (8 * width)) - 1, int.from_bytes(b[off : off + width], "big") + rng.choice((-1, 1, 100))))
        b[off : off + width] = (val % (1 << (8 * width))).to_bytes(width, "big")
        return bytes(b)
    if k == 4:  # a record of another type / version
        b[0] = rng.choice((20, 21, 23, 24, 0x80, 0))
        if rng.random() < 0.5:
            b[1:3] = rng.choice((b"\x02\x00", b"\x03\x09", b"\xfe\xff"))
        return bytes(b)
    if k == 5:  # SSLv2-style hello
        return b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10" + bytes(rng.randrange(256) for _ in range(45))
    for _ in range(rng.randint(1, 6)):  # bit flips / byte changes past the headers
        i = rng.randrange(9, len(b))
        if rng.random() < 0.7:
            b[i] ^= 1 << rng.randrange(8)
        else:
            b[i] = rng.randrange(256)
    if k == 7 and rng.random() < 0.5:
        i = rng.randrange(9, len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 30)))
    return bytes(b)


def tls_handshake_tail_case(port, rng, ctx):
    """A real handshake whose second client flight (Finished, and in TLS
    1.2 the key exchange) is damaged. Returns (bytes sent, bytes got)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="h2.test")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = out.read()
    sent, got = bytearray(hello), bytearray()
    s = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
    try:
        s.sendall(hello)
        for _ in range(50):  # server flight pieces, bounded
            data = s.recv(65536)
            if not data:
                break
            got += data
            inc.write(data)
            done = False
            try:
                obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                break
            flight = out.read()
            if flight:
                b = bytearray(flight)
                for _ in range(rng.randint(1, 4)):
                    i = rng.randrange(len(b))
                    b[i] ^= 1 << rng.randrange(8)
                if rng.random() < 0.3:
                    b = b[: rng.randrange(len(b))]
                s.sendall(bytes(b))
                sent += b
                break
            if done:
                break
        deadline = time.monotonic() + READ_TIMEOUT
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            data = s.recv(65536)
            if not data:
                break
            got += data
    except OSError:  # timeouts, resets
        pass
    finally:
        s.close()
    return bytes(sent), bytes(got)


def run_tls_case(port, ca, base, hellos, n):
    """One TLS case: N picks the kind. Returns (n, sent, got, problems)."""
    rng = random.Random(SEED * 7_000_003 + n)
    kind = n % 10
    if kind < 6:  # mutated / random / truncated ClientHello
        data = mutate_hello(rng, hellos[rng.randrange(len(hellos))])
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(READ_TIMEOUT)
        try:
            s.connect(("127.0.0.1", port))
            got, _ = exchange(s, rng, data, None)
        finally:
            s.close()
        return n, data, got, tls_records_problems(got)
    if kind < 8:  # damaged second flight (client Finished)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        if kind == 7:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        sent, got = tls_handshake_tail_case(port, rng, ctx)
        return n, sent, got, tls_records_problems(got)
    # a real handshake with ALPN h2, then a mutated HTTP/2 case inside TLS
    c = Case(base, len(base) + rng.randrange(1 << 20))
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    raw_sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT * 2)
    try:
        s = ctx.wrap_socket(raw_sock, server_hostname="h2.test")
    except (OSError, ssl.SSLError) as e:
        raw_sock.close()
        return n, c.data, b"", [f"handshake with a valid client failed: {e!r}"]
    try:
        if s.selected_alpn_protocol() != "h2":
            return n, c.data, b"", [f"ALPN chose {s.selected_alpn_protocol()!r}, not h2"]
        parser = ServerFrames(max_frame_for(c.frames, c.byte_mutated))
        got, clean = exchange(s, rng, c.data, parser, None, allow_shut=False, pause=c.pause)
    finally:
        s.close()
    return n, c.data, got, check_h2_reply(c.data, None, got, clean, parser, h2_only=True)


def tls_curl_ok(port, ca, version):
    p = curl(version, "--resolve", f"h2.test:{port}:127.0.0.1", "--cacert", str(ca), "-o", "/dev/null",
             "-w", "%{http_version} %{http_code}", f"https://h2.test:{port}/", timeout=20)
    want = b"2 200" if version == "--http2" else b"1.1 200"
    return p.stdout == want, (p.stdout, p.stderr)


def test_mutated_tls_handshakes_never_crash(heliosd, backends, tmp_path):
    backend = backends("a")
    ca = make_ca(tmp_path, "fuzz-ca")
    cert, key = make_cert(tmp_path, ca, "h2.test", ["h2.test"])
    port = free_port()
    h = heliosd(h2_config(port, backend, tls={"certificates": [{"cert": str(cert), "key": str(key)}]}))
    base = seeds()
    hrng = random.Random(SEED)
    hellos = [client_hello(hrng), client_hello(hrng, alpn=None, sni=None),
              client_hello(hrng, maxver=ssl.TLSVersion.TLSv1_2),
              client_hello(hrng, alpn=("http/1.1", "h2", "x" * 200), sni=".".join(["x" * 60] * 4))]
    start = time.monotonic()
    sent = 0
    bad = []
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        for first in range(0, TLS_CASES, TLS_BATCH):
            if time.monotonic() - start > TLS_TIME_BUDGET:
                break
            last = min(TLS_CASES, first + TLS_BATCH)
            for n, data, got, probs in pool.map(lambda k: run_tls_case(port, ca[1], base, hellos, k),
                                                range(first, last)):
                sent += 1
                if probs:
                    (tmp_path / f"tls-case-{n}.bin").write_bytes(data)
                    bad.append((n, probs[:3]))
            assert h.alive(), (f"heliosd died during TLS cases {first}..{last - 1} (seed {SEED})\n"
                               f"{h.stderr()[-3000:]}")
            for version in ("--http2", "--http1.1"):
                ok, why = tls_curl_ok(port, ca[1], version)
                assert ok, f"after TLS cases {first}..{last - 1} (seed {SEED}) curl {version}: {why}"
    print(f"tls fuzz: seed {SEED}, {sent} cases, {time.monotonic() - start:.1f}s")
    assert sent >= min(TLS_CASES, 100), f"only {sent} TLS cases in {TLS_TIME_BUDGET}s"
    assert not bad, f"{len(bad)} TLS cases got bad replies (seed {SEED}), first: {bad[:5]}"
    assert h.alive()
    for version in ("--http2", "--http1.1"):
        ok, why = tls_curl_ok(port, ca[1], version)
        assert ok, f"at the end, curl {version}: {why}"
