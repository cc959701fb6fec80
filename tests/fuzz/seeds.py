#!/usr/bin/python3
"""Writes the hand-made seeds of corpus/http2/ (binary HTTP/2 frames, HPACK
from python3-h2's hpack) and corpus/admin/ (signed-token requests). The
other corpora are plain text files edited by hand. Re-running rewrites the
seed-*.bin files only; inputs added by fuzzing (crash-*, regression-*) stay."""
import os
import struct

from hpack import Encoder

HERE = os.path.dirname(os.path.abspath(__file__))
DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WUPD, CONT = range(10)


def frame(t, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload


def req(enc, path="/", method="GET", authority="t", extra=()):
    return enc.encode([(":method", method), (":scheme", "http"), (":path", path),
                       (":authority", authority), *extra])


def h2_seeds():
    s = {}
    e = Encoder()
    ack = frame(SETTINGS, 1, 0)
    s["get"] = ack + frame(HEADERS, 5, 1, req(e, "/static"))
    e = Encoder()
    s["two-streams"] = ack + frame(HEADERS, 5, 1, req(e, "/static")) + frame(HEADERS, 5, 3, req(e, "/x"))
    e = Encoder()
    s["post-body"] = ack + frame(HEADERS, 4, 1, req(e, "/small", "POST", extra=[("content-length", "5")])) \
        + frame(DATA, 0, 1, b"hel") + frame(DATA, 1, 1, b"lo")
    e = Encoder()
    s["post-too-big"] = ack + frame(HEADERS, 4, 1, req(e, "/small", "PUT")) + frame(DATA, 1, 1, b"x" * 300)
    e = Encoder()
    block = req(e, "/static", extra=[("x-long", "v" * 200)])
    s["continuation"] = ack + frame(HEADERS, 1, 1, block[:20]) + frame(CONT, 0, 1, block[20:60]) \
        + frame(CONT, 4, 1, block[60:])
    e = Encoder()
    s["vars-host"] = ack + frame(HEADERS, 5, 1, req(e, "/", authority="vars.test",
                                                  extra=[("x-request-id", "abc")]))
    e = Encoder()
    s["trailers"] = ack + frame(HEADERS, 4, 1, req(e, "/small", "POST")) + frame(DATA, 0, 1, b"ab") \
        + frame(HEADERS, 5, 1, e.encode([("x-t", "1")]))
    e = Encoder()
    s["rst"] = ack + frame(HEADERS, 4, 1, req(e, "/static", "POST")) + frame(RST, 0, 1, struct.pack(">I", 8))
    s["ping-window"] = ack + frame(PING, 0, 0, b"12345678") + frame(WUPD, 0, 0, struct.pack(">I", 1000)) \
        + frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 16))
    s["settings"] = frame(SETTINGS, 0, 0, struct.pack(">HIHIHI", 1, 0, 4, 1 << 20, 5, 32768)) + ack
    e = Encoder()
    s["goaway"] = ack + frame(HEADERS, 5, 1, req(e)) + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0))
    e = Encoder()
    s["lower-stream-id"] = ack + frame(HEADERS, 5, 5, req(e)) + frame(HEADERS, 5, 3, req(e))
    e = Encoder()
    s["padded"] = ack + frame(HEADERS, 0x5 | 0x8, 1, bytes([3]) + req(e, "/static") + b"\0\0\0")
    e = Encoder()
    s["head"] = ack + frame(HEADERS, 5, 1, req(e, "/static", "HEAD"))
    return {f"seed-{k}.bin": b"\x00" + v for k, v in s.items()}


def admin_seeds():
    now_hdr = '{"alg":"HS256","typ":"JWT"}'
    tok = 'sign:' + now_hdr + '.{"sub":"ops","aud":"heliosd-admin","exp":4102444800,"scope":"%s"}'
    rd, wr = tok % "read", tok % "read write"
    return {
        "seed-health.txt": "GET /v1/health\n\n",
        "seed-upstreams.txt": f"GET /v1/backends\n{rd}\n",
        "seed-backends.txt": f"GET /v1/backends?upstream=app\n{rd}\n",
        "seed-add.txt": f'POST /v1/backends\n{wr}\n{{"upstream":"app","name":"c","address":"127.0.0.1:8003","weight":3}}',
        "seed-patch.txt": f'PATCH /v1/backends/app/a\n{wr}\n{{"weight":7}}',
        "seed-delete.txt": f"DELETE /v1/backends/app/b\n{wr}\n",
        "seed-drain.txt": f"POST /v1/backends/app/a/drain\n{wr}\n",
        "seed-strategy.txt": f'POST /v1/strategy\n{wr}\n{{"upstream":"app","strategy":"maglev"}}',
        "seed-metrics.txt": f"GET /v1/metrics\n{rd}\n",
        "seed-prometheus.txt": "GET /metrics\n\n",
        "seed-reload.txt": f"POST /v1/reload\n{wr}\n",
        "seed-read-scope-write.txt": f"DELETE /v1/backends/app/a\n{rd}\n",
        "seed-expired.txt": "GET /v1/backends\nsign:" + now_hdr + '.{"sub":"x","aud":"heliosd-admin","exp":1}\n',
        "seed-alg-none.txt": "GET /v1/backends\nBearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.\n",
        "seed-wrong-method.txt": f"PUT /v1/health\n{rd}\n",
        "seed-bad-json.txt": f'POST /v1/backends\n{wr}\n{{"name":',
        "seed-dup-keys.txt": f'POST /v1/backends/remove\n{wr}\n{{"upstream":"app","name":"a","name":"b"}}',
        "seed-config.txt": f"GET /v1/config\n{rd}\n",
        "seed-modules.txt": f"GET /v1/modules\n{rd}\n",
        "seed-breakers.txt": f"GET /v1/circuit-breakers\n{rd}\n",
    }


def write(sub, files):
    d = os.path.join(HERE, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())


if __name__ == "__main__":
    write("http2", h2_seeds())
    write("admin", admin_seeds())
