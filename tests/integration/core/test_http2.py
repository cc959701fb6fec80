"""HTTP/2 downstream: h2c with prior knowledge and h2 over
TLS through ALPN, streams multiplexed onto the HTTP/1.1 upstream pools,
bodies streamed both ways with flow control as backpressure, and the
defenses against misbehaving clients (rapid reset, stream floods, oversized
headers, CONTINUATION flood, PING/SETTINGS floods, SETTINGS timeout), each
while a well-behaved client keeps being served.

Clients: curl (--http2, --http2-prior-knowledge), nghttp (nghttp2-client),
and hand-written frames (with hpack from python3-h2) for the misbehaving
ones.
"""
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest
from hpack import Encoder

from conftest import (
    curl,
    free_port,
    make_ca,
    make_cert,
    make_config,
    proxy_route,
    rss_kb,
    static_route,
    upstream_conf,
    wait_for,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def settings(**kv):
    ids = {"header_table_size": 1, "enable_push": 2, "max_concurrent_streams": 3,
           "initial_window_size": 4, "max_frame_size": 5, "max_header_list_size": 6}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in kv.items()))


class RawH2:
    """A hand-driven HTTP/2 client connection: frames out, frames in."""

    def __init__(self, port, ack_settings=True, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.enc = Encoder()
        self.buf = b""
        self.sock.sendall(PREFACE + settings())
        self.ack_settings = ack_settings

    def send(self, data):
        self.sock.sendall(data)

    def headers_block(self, path="/", method="GET", extra=()):
        return self.enc.encode([(":method", method), (":scheme", "http"), (":path", path),
                                (":authority", "t"), *extra])

    def request(self, sid, path="/", end=True, extra=()):
        self.send(frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid,
                        self.headers_block(path, extra=extra)))

    def read_frame(self):
        while len(self.buf) < 9:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        n = int.from_bytes(self.buf[:3], "big")
        while len(self.buf) < 9 + n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        ftype, flags = self.buf[3], self.buf[4]
        sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload = self.buf[9:9 + n]
        self.buf = self.buf[9 + n:]
        if ftype == SETTINGS and not flags & ACK and self.ack_settings:
            self.send(frame(SETTINGS, ACK, 0))
        return ftype, flags, sid, payload

    def frames_until_closed(self, limit=100000):
        """Every frame until the server closes (or resets) the connection."""
        out = []
        try:
            for _ in range(limit):
                f = self.read_frame()
                if f is None:
                    break
                out.append(f)
        except (ConnectionResetError, socket.timeout):
            pass
        return out

    def close(self):
        self.sock.close()


def goaway_code(frames):
    for ftype, _, _, payload in frames:
        if ftype == GOAWAY:
            return int.from_bytes(payload[4:8], "big")
    return None


def h2c(port, path="/", *args):
    return curl("--http2-prior-knowledge", "-D", "-", f"http://127.0.0.1:{port}{path}", *args)


def status_of(p):
    m = re.match(rb"HTTP/(\S+) (\d+)", p.stdout)
    return (m.group(1).decode(), int(m.group(2))) if m else (None, None)


def well_behaved(port):
    p = h2c(port, "/")
    assert p.returncode == 0 and status_of(p) == ("2", 200), p.stderr


@pytest.fixture
def h2(heliosd, backends):
    def make(workers=1, http2=None, routes=None, tls=None, h2c_on=True, **top):
        a, b = backends("a", "b")
        port = free_port()
        listener = {"address": f"127.0.0.1:{port}"}
        if tls:
            listener["tls"] = tls
        if not h2c_on:
            listener["h2c"] = False
        cfg = make_config(port, routes or [
            static_route("static", "hello static\n", match={"path": "/static"}),
            proxy_route("app", "app"),
        ], {"app": upstream_conf(a, b)}, workers=workers, listeners=[listener], **top)
        if http2:
            cfg["http2"] = http2
        h = heliosd(cfg)
        h.a, h.b = a, b
        return h

    return make


# --------------------------------------------------------------------------
# the data path


def test_h2c_prior_knowledge_get_head_post_and_local_answers(h2):
    h = h2()
    p = h2c(h.port, "/headers")
    assert status_of(p) == ("2", 200)
    body = p.stdout.split(b"\r\n\r\n", 1)[1]
    sent = dict(json.loads(body)["headers"])
    assert sent["Host"] == f"127.0.0.1:{h.port}"  # :authority becomes Host upstream
    assert "x-backend:" in p.stdout.decode().lower()
    p = h2c(h.port, "/static")
    assert status_of(p) == ("2", 200) and p.stdout.endswith(b"hello static\n")
    p = curl("--http2-prior-knowledge", "-I", f"http://127.0.0.1:{h.port}/bytes/1000")
    assert status_of(p) == ("2", 200) and b"content-length: 1000" in p.stdout.lower()
    data = os.urandom(3 * 1024 * 1024 + 17)
    p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary", "@-",
                        f"http://127.0.0.1:{h.port}/echo"], input=data, capture_output=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout == data
    p = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{size_download}",
             f"http://127.0.0.1:{h.port}/bytes/20000000")
    assert p.stdout.decode() == "2 20000000"


def test_h2_over_tls_with_alpn_and_http11_fallback(h2, tmp_path):
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, ca, "h2.test", ["h2.test"])
    h = h2(tls={"certificates": [{"cert": str(cert), "key": str(key)}]})
    common = ["--resolve", f"h2.test:{h.port}:127.0.0.1", "--cacert", str(ca[1]), "-o", "/dev/null",
              "-w", "%{http_version} %{http_code}"]
    assert curl("--http2", *common, f"https://h2.test:{h.port}/").stdout == b"2 200"
    assert curl("--http1.1", *common, f"https://h2.test:{h.port}/").stdout == b"1.1 200"
    p = subprocess.run(["nghttp", "-n", "-v", f"https://127.0.0.1:{h.port}/bytes/100000"],
                       capture_output=True, text=True, timeout=30)
    assert "recv HEADERS frame" in p.stdout and ":status: 200" in p.stdout, p.stdout[-2000:]
    # a listener with h2 taken off ALPN speaks HTTP/1.1 only
    h11 = h2(tls={"certificates": [{"cert": str(cert), "key": str(key)}], "alpn": ["http/1.1"]})
    common[1] = f"h2.test:{h11.port}:127.0.0.1"
    assert curl("--http2", *common, f"https://h2.test:{h11.port}/").stdout == b"1.1 200"


def test_streams_are_multiplexed_and_share_the_upstream_pools(h2):
    h = h2()
    h.a.reset_stats()
    h.b.reset_stats()
    urls = [f"http://127.0.0.1:{h.port}/slow?ms=400&i={i}" for i in range(20)]
    t0 = time.monotonic()
    p = subprocess.run(["nghttp", "-n", "-s", *urls], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    assert took < 2.5, f"20 x 400 ms streams took {took:.1f}s: not concurrent"
    sa, sb = h.a.stats(), h.b.stats()
    assert sa["requests"] + sb["requests"] == 20
    # then the pool is reused: another burst opens no new upstream connections
    conns = sa["connections"] + sb["connections"]
    subprocess.run(["nghttp", "-n", *urls[:10]], capture_output=True, timeout=60, check=True)
    sa, sb = h.a.stats(), h.b.stats()
    # (each stats() call is one connection of its own)
    assert sa["connections"] + sb["connections"] == conns + 2


def test_access_log_routing_and_filters_are_the_same_for_h2(h2, tmp_path):
    log = tmp_path / "access.json"
    routes = [dict(proxy_route("app", "app"), filters=[
        {"module": "headers", "config": {"response": {"set": {"X-Proto-Seen": "$route"}}}}])]
    h = h2(routes=routes, logging={"level": "info", "access_log": str(log),
                                   "access_log_format": "json"})
    p = h2c(h.port, "/x")
    assert b"x-proto-seen: app" in p.stdout.lower()
    wait_for(lambda: log.exists() and log.read_text().strip(), timeout=5)
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["protocol"] == "HTTP/2" and rec["status"] == 200 and rec["route"] == "app"


def test_flow_control_backpressure_on_a_slow_reader(h2, small_quarantine):
    """A client with a 64 KiB window that acknowledges slowly: heliosd
    buffers a bounded amount and the backend is paused, not drained into
    memory (under ASan with a small quarantine: buffers freed and taken
    again as the stream pauses and resumes would otherwise count)."""
    h = h2()
    c = RawH2(h.port)
    c.request(1, "/bytes/60000000")
    base = rss_kb(h.pid)
    got, peak, end = 0, 0, False
    t0 = time.monotonic()
    while not end and time.monotonic() - t0 < 120:
        f = c.read_frame()
        assert f is not None
        ftype, flags, sid, payload = f
        if ftype == DATA:
            got += len(payload)
            end = bool(flags & END_STREAM)
            if got % (4 * 1024 * 1024) < len(payload):
                time.sleep(0.05)  # slow reader
                peak = max(peak, rss_kb(h.pid) - base)
            # window updates only for what was read
            if payload:
                c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload))) +
                       frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", len(payload))))
    c.close()
    assert got == 60000000
    assert peak < 32 * 1024, f"RSS grew by {peak} KiB"


def test_graceful_stop_lets_streams_finish(h2):
    h = h2()
    out = {}

    def slow():
        out["p"] = h2c(h.port, "/slow?ms=800")

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    h.signal(signal.SIGTERM)
    t.join(20)
    assert status_of(out["p"]) == ("2", 200)


def test_h2c_can_be_turned_off(h2):
    h = h2(h2c_on=False)
    p = h2c(h.port, "/")
    assert p.returncode != 0 or status_of(p)[1] != 200


# --------------------------------------------------------------------------
# misbehaving clients: each gets GOAWAY/close, others keep being served


def test_rapid_reset_gets_goaway(h2):
    h = h2(http2={"max_resets": 50})
    c = RawH2(h.port)
    burst = b""
    for i in range(400):
        sid = 1 + 2 * i
        burst += frame(HEADERS, END_HEADERS | END_STREAM, sid, c.headers_block("/slow?ms=1000"))
        burst += frame(RST_STREAM, 0, sid, struct.pack(">I", 8))  # CANCEL
    c.send(burst)
    frames = c.frames_until_closed()
    c.close()
    assert goaway_code(frames) == 11, frames[-3:]  # ENHANCE_YOUR_CALM
    well_behaved(h.port)
    h.wait_stderr(r"rapid reset|flood")


def test_stream_flood_beyond_max_concurrent_streams_is_refused(h2):
    """Up to the advertised limit streams are served; a client that opens
    more after acknowledging the limit breaks RFC 9113 5.1.2 and gets its
    extra streams refused or, as nghttp2 does it, GOAWAY PROTOCOL_ERROR."""
    h = h2(http2={"max_concurrent_streams": 10})
    c = RawH2(h.port)
    for ftype, flags, sid, payload in iter(c.read_frame, None):
        if ftype == SETTINGS and not flags & ACK:
            break  # read_frame acknowledged it: the limit now binds
    c.send(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i,
                          c.headers_block("/slow?ms=200")) for i in range(10)))
    done = set()
    while len(done) < 10:
        ftype, flags, sid, _ = c.read_frame()
        if ftype == DATA and flags & END_STREAM:
            done.add(sid)
    c.send(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, 21 + 2 * i,
                          c.headers_block("/slow?ms=500")) for i in range(30)))
    frames = c.frames_until_closed(limit=200)
    c.close()
    refused = sum(1 for f in frames if f[0] == RST_STREAM and int.from_bytes(f[3], "big") == 7)
    assert goaway_code(frames) == 1 or refused >= 20, [f[0] for f in frames]
    well_behaved(h.port)


def test_oversized_headers_get_431(h2):
    h = h2()
    c = RawH2(h.port)
    big = [("x-big", "v" * 70000)]
    block = c.headers_block("/", extra=big)
    # split into HEADERS + CONTINUATIONs of 16 KiB (the default max frame size)
    parts = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    out = frame(HEADERS, END_STREAM | (END_HEADERS if len(parts) == 1 else 0), 1, parts[0])
    for i, part in enumerate(parts[1:]):
        out += frame(CONTINUATION, END_HEADERS if i == len(parts) - 2 else 0, 1, part)
    c.send(out)
    status = None
    from hpack import Decoder
    dec = Decoder()
    dec.max_allowed_table_size = 65536
    for _ in range(50):
        f = c.read_frame()
        if f is None:
            break
        if f[0] == HEADERS and f[2] == 1:
            status = dict(dec.decode(f[3]))[":status"]
            break
        if f[0] in (RST_STREAM, GOAWAY):
            status = f"frame {f[0]}"
            break
    c.close()
    assert status in ("431", "frame 3", "frame 7"), status
    well_behaved(h.port)


def test_continuation_flood_gets_goaway(h2):
    h = h2()
    c = RawH2(h.port)
    c.send(frame(HEADERS, 0, 1, c.headers_block("/")))
    try:
        for _ in range(2000):
            c.send(frame(CONTINUATION, 0, 1, b"\x00" * 8))
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = c.frames_until_closed()
    c.close()
    code = goaway_code(frames)
    assert code in (11, 1, 9), frames[-3:]  # ENHANCE_YOUR_CALM / PROTOCOL / COMPRESSION
    well_behaved(h.port)


@pytest.mark.parametrize("kind", ["ping", "settings"])
def test_control_frame_floods_get_goaway(h2, kind):
    h = h2(http2={"max_control_frames": 200})
    c = RawH2(h.port)
    one = frame(PING, 0, 0, b"12345678") if kind == "ping" else settings(initial_window_size=65535)
    try:
        c.send(one * 5000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = c.frames_until_closed()
    c.close()
    assert goaway_code(frames) == 11, [f[0] for f in frames][-5:]
    well_behaved(h.port)


def test_settings_not_acknowledged_times_out(h2):
    h = h2(http2={"settings_timeout": "1s"})
    c = RawH2(h.port, ack_settings=False)
    t0 = time.monotonic()
    frames = c.frames_until_closed()
    took = time.monotonic() - t0
    c.close()
    assert goaway_code(frames) == 4, frames  # SETTINGS_TIMEOUT
    assert 0.8 < took < 5
    well_behaved(h.port)


def test_idle_connection_gets_goaway(h2):
    h = h2(timeouts={"keepalive": "1s"})
    c = RawH2(h.port)
    c.request(1, "/")
    t0 = time.monotonic()
    frames = c.frames_until_closed()
    c.close()
    assert any(f[0] == HEADERS for f in frames)
    assert goaway_code(frames) == 0
    assert time.monotonic() - t0 < 5


def test_garbage_after_the_preface_closes_only_that_connection(h2):
    h = h2()
    c = RawH2(h.port)
    c.send(b"\xff" * 100)
    c.frames_until_closed()
    c.close()
    well_behaved(h.port)
    assert h.alive()


def test_many_clients_and_streams_at_once(h2):
    h = h2(workers=2)
    errors = []

    def run():
        p = subprocess.run(["nghttp", "-n", "-s", *[f"http://127.0.0.1:{h.port}/bytes/{1000 * i}"
                                                   for i in range(1, 31)]],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            errors.append(p.stderr[-500:])

    ts = [threading.Thread(target=run) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(90)
    assert not errors, errors[:2]

