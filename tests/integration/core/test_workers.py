"""Workers, SO_REUSEPORT listeners, IPv6, and the per-worker connection cap."""

import json
import os
import re
import threading

import pytest

from conftest import (
    RawConn,
    free_port,
    http_request,
    ipv6_available,
    listening_sockets,
    make_config,
    proxy_route,
    request_bytes,
    static_route,
    thread_count,
    upstream_conf,
    wait_for,
)


def routes():
    return [static_route("hello", "hi\n", match={"path": "/hello"}), proxy_route("app", "app")]


def hammer(port, threads=16, per_thread=20, host="127.0.0.1"):
    errors = []

    def worker(i):
        for j in range(per_thread):
            try:
                path = "/hello" if j % 2 else "/"
                status, _, body = http_request(port, path, host=host, timeout=30)
                if status != 200 or body not in (b"hi\n", b"hello from a\n"):
                    errors.append((i, j, status, body))
            except Exception as e:  # noqa: BLE001
                errors.append((i, j, repr(e)))

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(90)
    assert not any(t.is_alive() for t in ts), "a client thread hung"
    return errors


def test_two_workers_serve_with_one_reuseport_socket_each(heliosd, backend):
    port = free_port()
    h = heliosd(make_config(port, routes(), {"app": upstream_conf(backend)}, workers=2))
    assert hammer(port) == []
    assert listening_sockets(port) == 2, "expected one SO_REUSEPORT listening socket per worker"
    assert thread_count(h.pid) >= 3, "expected the main thread plus two worker threads"


def test_workers_auto_uses_one_worker_per_core(heliosd, backend):
    port = free_port()
    heliosd(make_config(port, routes(), {"app": upstream_conf(backend)}, workers="auto"))
    assert hammer(port, threads=4, per_thread=10) == []
    cores = {os.cpu_count(), len(os.sched_getaffinity(0))}
    assert listening_sockets(port) in cores, f"{listening_sockets(port)} listening sockets for {cores} cores"


def test_many_concurrent_keepalive_connections(heliosd, backend):
    port = free_port()
    heliosd(make_config(port, routes(), {"app": upstream_conf(backend)}, workers=2))
    conns = [RawConn(port) for _ in range(100)]
    try:
        for c in conns:
            c.send(request_bytes("GET", "/"))
        for c in conns:
            r = c.read_response()
            assert r is not None and r.status == 200
        for c in conns:
            c.send(request_bytes("GET", "/hello"))
        for c in conns:
            assert c.read_response().body == b"hi\n"
    finally:
        for c in conns:
            c.close()


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 on loopback")
def test_ipv6_listener(heliosd, backend):
    p4, p6 = free_port(), free_port("::1")
    listeners = [{"address": f"127.0.0.1:{p4}"}, {"address": f"[::1]:{p6}"}]
    h = heliosd(make_config(p4, routes(), {"app": upstream_conf(backend)}, listeners=listeners))
    h.wait_ready(port=p6, host="::1")
    with RawConn(p6, host="::1") as c:
        c.send(request_bytes("GET", "/hello"))
        r = c.read_response()
        assert (r.status, r.body) == (200, b"hi\n")
        c.send(request_bytes("GET", "/headers", host="[::1]"))
        r = c.read_response()
    assert r.status == 200
    got = {k.lower(): v for k, v in json.loads(r.body)["headers"]}
    assert got["x-forwarded-for"] == "::1"
    assert re.search(r'for="\[::1\]"', got["forwarded"]), got["forwarded"]
    # The IPv4 listener works alongside.
    assert http_request(p4, "/hello")[2] == b"hi\n"


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 on loopback")
def test_ipv6_only_listener(heliosd, backend):
    p6 = free_port("::1")
    h = heliosd(
        make_config(p6, routes(), {"app": upstream_conf(backend)}, listeners=[{"address": f"[::1]:{p6}"}]),
        start=False,
    )
    h.port = p6
    h.start(wait=False)
    h.wait_ready(port=p6, host="::1")
    assert http_request(p6, "/", host="::1")[2] == b"hello from a\n"
    assert hammer(p6, threads=4, per_thread=5, host="::1") == []


def test_connection_cap_refuses_third_connection_cleanly(heliosd, backend):
    port = free_port()
    listeners = [{"address": f"127.0.0.1:{port}", "max_connections": 2}]
    heliosd(make_config(port, routes(), {"app": upstream_conf(backend)}, workers=1, listeners=listeners))

    def open_served():
        # Earlier probe connections may still count for a moment after
        # they closed: retry until a connection is really served.
        c = RawConn(port, timeout=5)
        try:
            c.send(request_bytes("GET", "/hello"))
            r = c.read_response()
            if r is not None and r.status == 200:
                return c
        except (OSError, TimeoutError):
            pass
        c.close()
        return None

    c1 = wait_for(open_served, 15, what="first connection served")
    c2 = wait_for(open_served, 15, what="second connection served")
    try:
        with RawConn(port, timeout=15) as c3:
            try:
                c3.send(request_bytes("GET", "/hello"))
            except (BrokenPipeError, ConnectionResetError):
                pass
            try:
                r = c3.read_response(timeout=10)
            except TimeoutError:
                pytest.fail("third connection neither served nor refused: it hangs in the backlog")
            assert r is None or r.status == 503, f"third connection was served: {r}"
            assert c3.eof or c3.wait_closed(10)
        # The first two still work.
        for c in (c1, c2):
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            assert r is not None and r.status == 200
        c1.close()

        # A slot is free again: a new connection is served.
        def new_ok():
            with RawConn(port, timeout=5) as c4:
                c4.send(request_bytes("GET", "/hello", headers=[("Connection", "close")]))
                r = c4.read_response()
                return r is not None and r.status == 200

        wait_for(new_ok, 15, what="a new connection to be served after one closed")
    finally:
        c1.close()
        c2.close()


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 on loopback")
def test_ipv6_backend(heliosd, tmp_path):
    from conftest import Backend

    b6 = Backend("six", tmp_path, host="::1").start()
    try:
        port = free_port()
        h = heliosd(make_config(port, routes(), {"app": upstream_conf(b6)}))
        status, headers, body = h.get("/")
        assert (status, body) == (200, b"hello from six\n")
        assert headers.get("x-backend") == "six"
        assert b6.stats()["requests"] >= 1
    finally:
        b6.stop()
