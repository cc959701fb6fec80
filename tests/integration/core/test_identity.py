"""One request identity: what heliosd routes on is what it forwards.

A reverse proxy is a security boundary: a route guarding a host must not be
reachable with another spelling of the request's host, and the upstream must
receive exactly the host that was routed. RFC 9112 3.2.2: an absolute-form
target's authority replaces Host. RFC 9113 8.3.1: :authority and host that
disagree make a malformed request. Each vector here got past heliosd before
the request layer normalised the host once (request.c, req_identity).
"""

import json
import socket

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, ResponseReceived, StreamEnded, StreamReset

from conftest import RawConn, free_port, make_config, proxy_route, static_route, upstream_conf


@pytest.fixture
def guarded(heliosd, backend):
    """admin.example is guarded by a route that answers 403 itself; every
    other host is proxied to the backend, which shows what it received."""
    port = free_port()
    routes = [
        static_route("admin-guard", "guarded\n", match={"host": "admin.example"}, status=403),
        proxy_route("public", "app", match={"prefix": "/"}),
    ]
    h = heliosd(make_config(port, routes, {"app": upstream_conf(backend)}))
    h.backend = backend
    return h


def send_raw(h, head):
    with RawConn(h.port, timeout=10) as c:
        c.send(head)
        r = c.read_response()
    assert r is not None, f"no response to {head!r}"
    return r


def forwarded_host(r):
    """The Host header the backend's /headers saw (None when there was none)."""
    assert r.status == 200, (r.status, r.body[:200])
    got = json.loads(r.body)
    hosts = [v for n, v in got["headers"] if n.lower() == "host"]
    assert len(hosts) <= 1, f"the backend received several Host headers: {hosts}"
    return hosts[0] if hosts else None


def test_absolute_form_authority_replaces_host_for_routing_and_upstream(guarded):
    r = send_raw(guarded, b"GET http://public.example/headers HTTP/1.1\r\nHost: admin.example\r\n\r\n")
    # routed as public.example (the absolute-form authority wins) ...
    assert r.status == 200
    # ... and forwarded as public.example: the backend never sees admin.example
    assert forwarded_host(r) == "public.example"


def test_absolute_form_naming_the_guarded_host_is_guarded(guarded):
    r = send_raw(guarded, b"GET http://ADMIN.example./x HTTP/1.1\r\nHost: public.example\r\n\r\n")
    assert r.status == 403 and r.body == b"guarded\n"


@pytest.mark.parametrize("host", [b"admin.example", b"ADMIN.Example", b"admin.example.",
                                  b"Admin.Example.:80", b"admin.example:8080"])
def test_every_spelling_of_the_guarded_host_is_guarded(guarded, host):
    r = send_raw(guarded, b"GET /headers HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert r.status == 403, f"Host: {host!r} got past the guard: {r.status} {r.body[:100]!r}"


@pytest.mark.parametrize("sent,forwarded", [
    (b"Public.EXAMPLE.", "public.example"),  # case and the trailing dot go
    (b"public.example:80", "public.example"),  # the default port goes
    (b"public.example:8080", "public.example:8080"),  # another port stays
    (b"[::1]:8080", "[::1]:8080"),
])
def test_the_upstream_receives_exactly_the_routed_host(guarded, sent, forwarded):
    r = send_raw(guarded, b"GET /headers HTTP/1.1\r\nHost: " + sent + b"\r\n\r\n")
    assert forwarded_host(r) == forwarded


@pytest.mark.parametrize("host", [b"a b.example", b"evil.example/x", b"user@evil.example",
                                  b"evil.example:80x", b"evil.example:99999", b"[zz::1]",
                                  b"exa<mple", b"\"quoted\"", b"."])
def test_invalid_host_syntax_is_400(guarded, host):
    s0 = guarded.backend.stats()["requests"]
    before = guarded.backend.stats()["requests"]
    per_stats = before - s0
    with RawConn(guarded.port, timeout=10) as c:
        c.send(b"GET /headers HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
        r = c.read_response()
    assert r is not None and r.status == 400, f"Host: {host!r} -> {r and r.status}"
    assert guarded.backend.stats()["requests"] == before + per_stats, "the request reached the backend"


def test_invalid_absolute_form_authority_is_400(guarded):
    r = send_raw(guarded, b"GET http://a%zz/x HTTP/1.1\r\nHost: public.example\r\n\r\n")
    assert r.status == 400


def test_missing_host_in_http11_is_400_and_http10_is_served(guarded):
    assert send_raw(guarded, b"GET /headers HTTP/1.1\r\n\r\n").status == 400
    r = send_raw(guarded, b"GET /headers HTTP/1.0\r\n\r\n")
    assert r.status == 200


# ---- HTTP/2 ----

def h2_request(port, headers, timeout=10):
    """Sends one request with HEADERS exactly as given (no validation by the
    client library); returns (status or None, reset or GOAWAY seen, body)."""
    cfg = H2Configuration(client_side=True, validate_outbound_headers=False,
                          normalize_outbound_headers=False, validate_inbound_headers=False)
    conn = H2Connection(config=cfg)
    conn.initiate_connection()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(conn.data_to_send())
        conn.send_headers(1, headers, end_stream=True)
        s.sendall(conn.data_to_send())
        status, body, ended = None, b"", False
        for _ in range(200):
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, StreamEnded):
                    ended = True
                elif isinstance(ev, (StreamReset, ConnectionTerminated)):
                    ended = True
                elif hasattr(ev, "data") and getattr(ev, "stream_id", 0) == 1:
                    body += ev.data
                    conn.acknowledge_received_data(len(ev.data), 1)
            s.sendall(conn.data_to_send())
            if ended:
                break
        return status, body
    finally:
        s.close()


def test_h2_authority_and_host_that_disagree_are_400(guarded):
    status, _ = h2_request(guarded.port, [(":method", "GET"), (":scheme", "http"),
                                          (":path", "/headers"), (":authority", "public.example"),
                                          ("host", "admin.example")])
    assert status == 400


def test_h2_authority_and_host_that_agree_are_served_as_one_host(guarded):
    status, body = h2_request(guarded.port, [(":method", "GET"), (":scheme", "http"),
                                             (":path", "/headers"), (":authority", "Public.Example"),
                                             ("host", "public.example.:80")])
    assert status == 200
    hosts = [v for n, v in json.loads(body)["headers"] if n.lower() == "host"]
    assert hosts == ["public.example"]


@pytest.mark.parametrize("authority", ["admin.example", "ADMIN.example", "admin.example."])
def test_h2_authority_spellings_of_the_guarded_host_are_guarded(guarded, authority):
    status, _ = h2_request(guarded.port, [(":method", "GET"), (":scheme", "http"),
                                          (":path", "/headers"), (":authority", authority)])
    assert status == 403


def test_h2_host_alone_is_the_identity(guarded):
    status, _ = h2_request(guarded.port, [(":method", "GET"), (":scheme", "http"),
                                          (":path", "/headers"), ("host", "Admin.Example.")])
    assert status == 403
