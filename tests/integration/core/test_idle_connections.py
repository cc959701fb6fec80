"""Idle keep-alive connections: between requests a connection gives its
buffers and request memory back (D54), and picks up correctly when the next
bytes come: pipelined requests, a large head in pieces, large bodies."""

import json
import socket
import time

import pytest

from conftest import (
    RawConn,
    free_port,
    is_sanitizer_build,
    make_config,
    pattern_bytes,
    pattern_sum,
    proxy_route,
    request_bytes,
    static_route,
    upstream_conf,
)
from helpers.procfs import rss_kb

CONNS = 400
# Before D54 an idle connection kept ~26 KB (16 KiB read buffer, 4 KiB write
# buffer, a spare request with its 4 KiB arena, three 4 KiB head buffers);
# now it keeps its 488-byte struct. The bound sits well between the two.
MAX_BYTES_PER_IDLE_CONN = 3072


@pytest.fixture
def server(heliosd, backend):
    port = free_port()
    cfg = make_config(
        port,
        [
            static_route("hello", "hi\n", match={"path": "/hello"}),
            proxy_route("app", "app"),
        ],
        {"app": upstream_conf(backend)},
        limits={"max_request_line": "8k", "max_header_size": "64k", "max_headers": 200},
    )
    return heliosd(cfg)


def open_served(port, n, paths):
    """N connections, each served one request (cycling through PATHS) and
    left open and idle."""
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(request_bytes("GET", paths[i % len(paths)]))
        conns.append(s)
    for s in conns:
        buf = b""
        while b"\r\n\r\n" not in buf or not (buf.endswith(b"hi\n") or buf.endswith(b"hello from a\n")):
            chunk = s.recv(4096)
            assert chunk, "closed before the answer"
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
    return conns


def settled_rss_kb(pid):
    """RSS once it stopped moving (bounded: 2 s)."""
    last = rss_kb(pid)
    for _ in range(20):
        time.sleep(0.1)
        now = rss_kb(pid)
        if now == last:
            return now
        last = now
    return last


@pytest.mark.skipif(is_sanitizer_build(), reason="ASan's allocator and quarantine make RSS meaningless")
def test_idle_connections_give_their_buffers_back(server):
    paths = ["/hello", "/"]  # a module's answer and a proxied one
    # warm-up: the worker's caches, libev's arrays and the allocator reach
    # their working size, so what follows measures only what idle
    # connections keep
    for s in open_served(server.port, CONNS, paths):
        s.close()
    time.sleep(0.3)
    before = settled_rss_kb(server.pid)
    conns = open_served(server.port, CONNS, paths)
    try:
        after = settled_rss_kb(server.pid)
        per_conn = (after - before) * 1024 / CONNS
        assert per_conn <= MAX_BYTES_PER_IDLE_CONN, (
            f"{CONNS} idle connections grew RSS by {after - before} KiB: {per_conn:.0f} bytes each"
        )
        # and every one of them still works
        for s in conns:
            s.sendall(request_bytes("GET", "/hello"))
        for s in conns:
            buf = b""
            while not buf.endswith(b"hi\n"):
                chunk = s.recv(4096)
                assert chunk, "an idle connection was closed"
                buf += chunk
            assert buf.startswith(b"HTTP/1.1 200")
    finally:
        for s in conns:
            s.close()


def idle():
    time.sleep(0.3)


def test_pipelined_requests_after_idling(server):
    with RawConn(server.port) as c:
        for rnd in range(3):
            c.send(
                request_bytes("GET", "/hello")
                + request_bytes("POST", "/echo", headers=[("Content-Length", "5")], body=b"abcde")
                + request_bytes("GET", "/bytes/20000")
                + request_bytes("GET", "/")
            )
            got = [c.read_response() for _ in range(4)]
            assert all(r is not None for r in got), f"round {rnd}: closed early"
            assert [r.status for r in got] == [200] * 4
            assert got[0].body == b"hi\n"
            assert got[1].body == b"abcde"
            assert got[2].body == pattern_bytes(0, 20000)
            assert got[3].body == b"hello from a\n"
            idle()
        assert not c.eof


def test_large_head_in_pieces_after_idling(server):
    # 40 headers of ~1 KiB: the head is bigger than one read buffer
    headers = [(f"X-Big-{i}", chr(ord("a") + i % 26) * 1000) for i in range(40)]
    head = request_bytes("GET", "/headers", headers=headers)
    assert len(head) > 40000
    with RawConn(server.port) as c:
        for rnd in range(2):
            c.send(request_bytes("GET", "/hello"))
            assert c.read_response().body == b"hi\n"
            idle()
            for off in range(0, len(head), 3000):
                c.send(head[off : off + 3000])
                time.sleep(0.01)
            r = c.read_response()
            assert r is not None and r.status == 200, f"round {rnd}: {r}"
            got = {k: v for k, v in json.loads(r.body)["headers"]}
            for name, value in headers:
                assert got.get(name) == value, f"round {rnd}: {name} lost or changed"
            idle()
        assert not c.eof


def test_large_bodies_after_idling(server):
    n = 3 * 1024 * 1024
    body = pattern_bytes(0, n)
    with RawConn(server.port, timeout=60) as c:
        c.send(request_bytes("GET", "/hello"))
        assert c.read_response().body == b"hi\n"
        idle()
        c.send(request_bytes("POST", "/sink", headers=[("Content-Length", str(n))]) + body)
        r = c.read_response(timeout=60)
        assert r is not None and r.status == 200
        assert json.loads(r.body) == {"bytes": n, "sum": pattern_sum(n)}
        idle()
        echo = body[:300000]
        c.send(request_bytes("POST", "/echo", headers=[("Content-Length", str(len(echo)))]) + echo)
        r = c.read_response(timeout=60)
        assert r is not None and r.status == 200 and r.body == echo
        idle()
        c.send(request_bytes("GET", "/bytes/1000000"))
        r = c.read_response(timeout=60)
        assert r is not None and r.status == 200 and r.body == pattern_bytes(0, 1000000)
        idle()
        c.send(request_bytes("GET", "/hello"))
        assert c.read_response().body == b"hi\n"
        assert not c.eof
