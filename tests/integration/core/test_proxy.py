"""Proxying: round robin, upstream keep-alive pools and safe reuse, hop-by-hop
headers, X-Forwarded-* / Forwarded, and the error mapping of upstream
failures (404 / 502 refused / 502 reset; 504 is in test_timeouts.py).

503 ("no usable backend") cannot be produced from the configuration alone
yet: draining or marking a backend down needs the admin API or a health
module, which come in later issues. An upstream whose only backend refuses
connections is a 502 (refused), tested here."""

import json
import re
import threading

from conftest import (
    RawConn,
    curl,
    free_port,
    http_request,
    make_config,
    proxy_config,
    proxy_route,
    request_bytes,
    upstream_conf,
    wait_for,
)
import http.client


def headers_seen(port, headers, path="/headers", host="front.example:8080"):
    """Sends a request with HEADERS (list of pairs) through heliosd to the
    backend's /headers; returns (parsed JSON, {lower name: [values]})."""
    with RawConn(port) as c:
        c.send(request_bytes("GET", path, host=host, headers=headers))
        r = c.read_response()
    assert r.status == 200, r
    doc = json.loads(r.body)
    got = {}
    for k, v in doc["headers"]:
        got.setdefault(k.lower(), []).append(v)
    return doc, got


def test_round_robin_alternates_between_two_backends(heliosd, backends):
    a, b = backends("a", "b")
    port = free_port()
    h = heliosd(proxy_config(port, a, b))
    seen = []
    with RawConn(h.port) as c:
        for _ in range(10):
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            assert r.status == 200
            seen.append(r.header("X-Backend"))
    assert seen.count("a") == 5 and seen.count("b") == 5, seen
    assert all(x != y for x, y in zip(seen, seen[1:])), f"not alternating: {seen}"
    for name, bk in (("a", a), ("b", b)):
        assert bk.stats()["requests"] >= 5


def test_round_robin_across_client_connections(heliosd, backends):
    a, b = backends("a", "b")
    h = heliosd(proxy_config(free_port(), a, b))
    seen = [h.get("/")[1]["x-backend"] for _ in range(8)]
    assert seen.count("a") == 4 and seen.count("b") == 4, seen


def test_upstream_connections_are_reused(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend))
    before = backend.stats()
    with RawConn(h.port) as c:
        for i in range(50):
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            assert r.status == 200 and r.body == b"hello from a\n", i
    after = backend.stats()
    # Each /stats call is one connection of its own: subtract ours.
    used = after["connections"] - before["connections"] - 1
    assert after["requests"] - before["requests"] >= 50
    assert used <= 2, f"50 keep-alive requests used {used} upstream connections"


def test_upstream_connections_are_reused_across_client_connections(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend))
    before = backend.stats()
    for _ in range(20):
        p = curl("-o", "/dev/null", "-w", "%{http_code}", h.url("/"))
        assert p.stdout == b"200"
    after = backend.stats()
    used = after["connections"] - before["connections"] - 1
    assert used <= 2, f"20 sequential curl requests used {used} upstream connections"


def test_backend_closing_after_response_is_retried_transparently(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend))
    with RawConn(h.port) as c:
        for i in range(20):
            path = "/close" if i % 2 == 0 else "/"
            c.send(request_bytes("GET", path))
            r = c.read_response()
            assert r is not None, f"client connection closed at request {i}"
            assert r.status == 200, f"request {i} ({path}) got {r.status}"


def test_pooled_connection_killed_by_backend_restart_is_retried(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend))
    with RawConn(h.port) as c:
        for i in range(3):
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            assert r.status == 200  # leaves an idle pooled connection
            backend.restart()  # kills it under heliosd's feet
            c.send(request_bytes("GET", "/"))
            r = c.read_response()
            assert r is not None and r.status == 200, f"round {i}: stale pooled connection not retried: {r}"
            assert r.body == b"hello from a\n"


def test_hop_by_hop_headers_are_not_forwarded(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend))
    sent = [
        ("Connection", "keep-alive, X-Custom-Hop"),
        ("Keep-Alive", "timeout=300"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Upgrade", "foo/1"),
        ("X-Custom-Hop", "secret"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("X-End-To-End", "yes"),
    ]
    doc, got = headers_seen(h.port, sent)
    for name in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "x-custom-hop"):
        assert name not in got, f"hop-by-hop header {name} was forwarded: {got[name]}"
    for v in got.get("connection", []):
        assert v.lower() in ("keep-alive", "close"), f"Connection forwarded as {v!r}"
    assert got["x-end-to-end"] == ["yes"]


def test_request_target_method_and_body_are_forwarded(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend))
    doc, got = headers_seen(h.port, [("X-A", "1"), ("X-A", "2")], path="/headers?x=1&y=%20z")
    assert doc["method"] == "GET"
    assert doc["target"] == "/headers?x=1&y=%20z"
    assert got["x-a"] == ["1", "2"] or got["x-a"] == ["1, 2"]
    status, _, body = http_request(h.port, "/echo", method="PUT", body=b"payload" * 1000)
    assert status == 200 and body == b"payload" * 1000


def test_x_forwarded_for_is_set_from_client(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, trusted_proxies=["10.0.0.0/8"]))
    doc, got = headers_seen(h.port, [])
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    # The Host the client asked for; with or without its port (conventions differ).
    assert got["x-forwarded-host"] in (["front.example:8080"], ["front.example"])
    fwd = got["forwarded"]
    assert len(fwd) == 1
    f = fwd[0].lower()
    assert re.search(r'(^|;|,)\s*for="?127\.0\.0\.1"?', f), f
    assert re.search(r'host="?front\.example(:8080)?"?(;|,|$)', f), f
    assert re.search(r"proto=http\b", f), f


def test_x_forwarded_for_from_untrusted_peer_is_replaced(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, trusted_proxies=["10.0.0.0/8"]))
    doc, got = headers_seen(
        h.port,
        [
            ("X-Forwarded-For", "1.2.3.4"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.example"),
            ("Forwarded", "for=1.2.3.4;proto=https"),
        ],
    )
    assert got["x-forwarded-for"] == ["127.0.0.1"]
    assert got["x-forwarded-proto"] == ["http"]
    # The Host the client asked for; with or without its port (conventions differ).
    assert got["x-forwarded-host"] in (["front.example:8080"], ["front.example"])
    joined = ",".join(got["forwarded"])
    assert "1.2.3.4" not in joined and "https" not in joined, joined


def test_x_forwarded_for_from_trusted_peer_is_appended(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, trusted_proxies=["127.0.0.1/32"]))
    doc, got = headers_seen(h.port, [("X-Forwarded-For", "1.2.3.4, 5.6.7.8")])
    xff = ", ".join(got["x-forwarded-for"])
    assert re.fullmatch(r"1\.2\.3\.4,\s*5\.6\.7\.8,\s*127\.0\.0\.1", xff), xff


def test_error_unroutable_is_404(heliosd, backend):
    port = free_port()
    h = heliosd(make_config(port, [proxy_route("api", "app", match={"prefix": "/api/"})], {"app": upstream_conf(backend)}))
    mark = h.err_mark()
    status, _, body = h.get("/other")
    assert status == 404
    assert 0 < len(body) < 4096
    h.wait_stderr(r"route", since=mark)


def test_error_connection_refused_is_502(heliosd):
    dead = free_port()  # nothing listens there
    h = heliosd(proxy_config(free_port(), {"name": "dead", "address": f"127.0.0.1:{dead}"}))
    mark = h.err_mark()
    status, _, body = h.get("/")
    assert status == 502
    assert 0 < len(body) < 4096
    h.wait_stderr(r"refused", since=mark)
    # and keeps answering
    assert h.get("/")[0] == 502


def test_error_backend_reset_is_502(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend))
    mark = h.err_mark()
    status, _, body = h.get("/reset")
    assert status == 502
    assert 0 < len(body) < 4096
    h.wait_stderr(r"reset|closed|prematurely", since=mark)
    assert h.get("/")[0] == 200


def test_error_response_keeps_client_connection_usable(heliosd, backend):
    dead = free_port()
    port = free_port()
    cfg = make_config(
        port,
        [proxy_route("dead", "dead", match={"prefix": "/dead/"}), proxy_route("app", "app")],
        {"dead": upstream_conf({"name": "d", "address": f"127.0.0.1:{dead}"}), "app": upstream_conf(backend)},
    )
    h = heliosd(cfg)
    with RawConn(h.port) as c:
        c.send(request_bytes("GET", "/dead/x"))
        r = c.read_response()
        assert r.status == 502 and r.complete
        if not c.eof and (r.header("Connection") or "").lower() != "close":
            c.send(request_bytes("GET", "/"))
            r2 = c.read_response()
            assert r2 is not None and r2.status == 200


def test_one_refusing_backend_does_not_fail_requests_forever(heliosd, backend):
    """With a live and a refusing backend, a GET that hits the dead one may
    be retried on the other; at least the live one keeps serving."""
    dead = free_port()
    h = heliosd(proxy_config(free_port(), backend, {"name": "dead", "address": f"127.0.0.1:{dead}"}))
    statuses = [h.get("/")[0] for _ in range(10)]
    assert statuses.count(200) >= 5, statuses
    assert set(statuses) <= {200, 502}, statuses


def test_concurrent_clients_all_get_their_own_response(heliosd, backends):
    a, b = backends("a", "b")
    h = heliosd(proxy_config(free_port(), a, b))
    errors = []

    def worker(i):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30)
            for j in range(20):
                body = f"client {i} request {j}".encode()
                conn.request("POST", "/echo", body=body)
                r = conn.getresponse()
                got = r.read()
                if r.status != 200 or got != body:
                    errors.append((i, j, r.status, got))
            conn.close()
        except Exception as e:  # noqa: BLE001
            errors.append((i, repr(e)))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)
    assert errors == []


def test_idle_pooled_connection_is_closed_after_idle_timeout(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, upstream_extra={"keepalive": {"max_idle": 8, "idle_timeout": "1s"}}))
    assert h.get("/")[0] == 200
    # `active` counts open connections, our /stats one included.
    wait_for(lambda: backend.stats()["active"] == 1, 15, what="heliosd to close its idle upstream connection")
    assert h.get("/")[0] == 200  # and a new one is opened when needed


def test_max_idle_zero_disables_pooling(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, upstream_extra={"keepalive": {"max_idle": 0}}))
    before = backend.stats()["connections"]
    with RawConn(h.port) as c:
        for _ in range(5):
            c.send(request_bytes("GET", "/"))
            assert c.read_response().status == 200
    # 5 upstream connections + our second /stats connection.
    assert backend.stats()["connections"] - before == 6


def test_max_idle_caps_the_pool(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, upstream_extra={"keepalive": {"max_idle": 2, "idle_timeout": "60s"}}))
    results = []

    def one():
        results.append(http_request(h.port, "/slow?ms=500")[0])

    ts = [threading.Thread(target=one) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert results == [200] * 6
    # Six upstream connections were needed at once; at most two stay idle.
    wait_for(lambda: backend.stats()["active"] <= 1 + 2, 15, what="the pool to shrink to max_idle")
