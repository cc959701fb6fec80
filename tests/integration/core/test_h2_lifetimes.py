"""Lifetime regressions for HTTP/2 (both sides), subrequests and the
lingering close, found in review: a use-after-free when a pump closed an
upstream connection, a shared upstream connection stalling after client
resets (held flow-control window), and a lingering connection holding up
graceful stop. Run under the ASan build too: the fixture teardown fails on
any sanitizer report.
"""
import signal
import socket
import struct
import threading
import time

from conftest import free_port, http_request, make_config, proxy_route
from test_grpc import calls, grpc_server  # noqa: F401 - fixture
from test_http2 import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    RST_STREAM,
    RawH2,
    frame,
    h2,  # noqa: F401 - fixture
    well_behaved,
)
from test_subrequests import module_dir, sub  # noqa: F401 - fixtures

import grpc


def _read_until_goaway(c, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = c.read_frame()
        if f is None:
            return False
        if f[0] == GOAWAY:
            return True
    return False


def _flood_into_linger(port):
    """A PING flood: heliosd's own rule (h2_kill) sends GOAWAY
    ENHANCE_YOUR_CALM and closes with a lingering close."""
    c = RawH2(port)
    c.send(frame(PING, 0, 0, b"12345678") * 100)
    assert _read_until_goaway(c)
    return c


# --------------------------------------------------------------------------
# http1.c conn_linger + hx_conn_shutdown / conn_update_timer


def test_lingering_h2_connection_does_not_hold_graceful_stop(h2):
    """A connection in its lingering close (after GOAWAY for a protocol
    error) must close within its 2 s linger even when a graceful stop
    arrives meanwhile. hx_conn_shutdown runs conn_leave on it, and
    conn_update_timer finds nothing to time (no h2, no request, state
    ACTIVE) and stops c->timer, which is the linger timer: the worker then
    waits the whole `timeouts.shutdown` for a client that never closes."""
    h = h2(timeouts={"shutdown": "20s"}, http2={"max_control_frames": 20})
    c = _flood_into_linger(h.port)
    h.wait_stderr(r"ping flood|control frame flood")
    # the client keeps its socket open and silent, as a stuck peer would
    t0 = time.monotonic()
    h.signal(signal.SIGTERM)
    rc = h.wait_exit(timeout=25)
    took = time.monotonic() - t0
    c.close()
    assert rc == 0
    assert took < 8, f"graceful stop waited {took:.1f}s for a lingering connection"


def test_lingering_connection_closes_by_itself(h2):
    """Probe: without a stop, the linger ends after ~2 s (the server
    closes), and the worker serves others meanwhile."""
    h = h2(http2={"max_control_frames": 20})
    c = _flood_into_linger(h.port)
    well_behaved(h.port)
    t0 = time.monotonic()
    c.sock.settimeout(10)
    try:
        while c.sock.recv(65536):
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    assert time.monotonic() - t0 < 6
    c.close()


# --------------------------------------------------------------------------
# http2.c streams proxied to h2 upstreams (h2up.c): resets, detaching


def _grpc_proxy(heliosd, port_backend, **top):
    port = free_port()
    up = {"protocol": "h2", "backends": [{"name": "g", "address": f"127.0.0.1:{port_backend}"}]}
    cfg = make_config(port, [proxy_route("grpc", "grpc")], {"grpc": up}, **top)
    return heliosd(cfg)


def _grpc_msg(b):
    return b"\x00" + struct.pack(">I", len(b)) + b


def test_h2_client_resets_streams_mid_response_from_h2_upstream(heliosd, grpc_server):  # noqa: F811
    """BUG (h2up.c conn_read_cb, ~line 849): conn_pump(c) can close and free
    the upstream connection (conn_update: "HTTP/2 session ended" /
    "drained", or conn_flush failing), then `if (c->state == H2C_READY)`
    reads freed memory. ASan: heap-use-after-free in conn_read_cb (with
    the committed code). With the work-in-progress conn_pump fix the UAF
    is gone but the last unary call then hangs (DEADLINE_EXCEEDED): the
    shared upstream connection stops moving, most likely because response
    DATA held back as st->unconsumed is never acknowledged
    (nghttp2_session_consume) when the stream is detached, so the
    connection-level window leaks with every reset stream.
    Client streams reset at every stage (before the upstream
    answers, mid-body, with body still unsent) while the upstream is an
    HTTP/2 connection shared by all of them: the upstream streams are
    cancelled, the shared connection survives, nothing is used after the
    client stream is reaped."""
    srv = grpc_server()
    h = _grpc_proxy(heliosd, srv.port)
    extra = [("content-type", "application/grpc"), ("te", "trailers")]
    for round_ in range(3):
        c = RawH2(h.port)
        sid = 1
        for i in range(20):
            # server streaming, 64 x 64 KiB: reset after a few frames
            c.send(frame(HEADERS, END_HEADERS, sid,
                         c.enc.encode([(":method", "POST"), (":scheme", "http"),
                                       (":path", "/test.Echo/Count"), (":authority", "t"),
                                       *extra])))
            c.send(frame(DATA, END_STREAM, sid, _grpc_msg(b"64,65536")))
            if i % 3 == 0:
                c.send(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
            sid += 2
            # a bidi call whose body never ends, reset at once
            c.send(frame(HEADERS, END_HEADERS, sid,
                         c.enc.encode([(":method", "POST"), (":scheme", "http"),
                                       (":path", "/test.Echo/Chat"), (":authority", "t"),
                                       *extra])))
            c.send(frame(DATA, 0, sid, _grpc_msg(b"x" * 1000)))
            c.send(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
            sid += 2
        # read a little, then drop the connection with streams open
        try:
            for _ in range(30):
                if c.read_frame() is None:
                    break
        except OSError:
            pass
        c.close()
    # the shared upstream connection still works
    with grpc.insecure_channel(f"127.0.0.1:{h.port}") as ch:
        assert calls(ch)["unary"](b"abc", timeout=10) == b"cba"


def test_h2_upstream_killed_with_streams_in_flight_then_recovers(heliosd, grpc_server):  # noqa: F811
    """Probe: the backend process dies with many streams open on the shared
    connection (conn_close fails every open stream from inside the read
    callback; the client side may retry or answer)."""
    srv = grpc_server()
    h = _grpc_proxy(heliosd, srv.port)
    errors = []

    def run():
        try:
            with grpc.insecure_channel(f"127.0.0.1:{h.port}") as ch:
                try:
                    list(calls(ch)["count"](b"200,65536", timeout=15))
                except grpc.RpcError:
                    pass
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=run) for _ in range(6)]
    for t in ts:
        t.start()
    time.sleep(0.5)
    srv.proc.kill()
    srv.proc.wait(5)
    for t in ts:
        t.join(30)
    assert not errors
    assert h.alive()


# --------------------------------------------------------------------------
# subreq.c: cancel from a callback on an HTTP/2 upstream


def test_subrequest_cancelled_in_on_head_on_h2_upstream(sub, grpc_server):  # noqa: F811
    """Probe: api->subreq_cancel inside on_head when the subrequest runs on
    a shared HTTP/2 upstream connection (h2up on_frame_recv: the stream is
    detached inside nghttp2's callback, the subrequest freed at the
    bracket's end; the `end && st->r` check must see the detach)."""
    srv = grpc_server()
    port = free_port()
    ups = {"g": {"protocol": "h2",
                 "backends": [{"name": "g", "address": f"127.0.0.1:{srv.port}"}]}}
    route = {"name": "sub", "match": {"prefix": "/"}, "handler": "subreq"}
    h = sub(make_config(port, [route], ups))
    for _ in range(10):
        status, _, body = http_request(h.port, "/x?to=g,g,g&cancel=head&path=/test.Echo/Unary")
        assert status == 200, body
        assert body.decode().splitlines() == ["g cancelled"] * 3
    for _ in range(5):
        status, _, body = http_request(h.port, "/x?to=g,g&path=/test.Echo/Unary")
        assert status == 200, body
