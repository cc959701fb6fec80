"""HTTP/1.1 server behaviour: keep-alive, pipelining, chunked request bodies,
Expect: 100-continue, HEAD, HTTP/1.0 clients, request-line and header limits."""

import time

import pytest

from conftest import (
    RawConn,
    curl,
    free_port,
    make_config,
    pattern_ok,
    pattern_sum,
    proxy_route,
    request_bytes,
    static_route,
    upstream_conf,
)
import json


@pytest.fixture
def proxy(heliosd, backend):
    port = free_port()
    cfg = make_config(
        port,
        [
            static_route("hello", "hi\n", match={"path": "/hello"}, headers={"X-Demo": "1"}),
            proxy_route("app", "app"),
        ],
        {"app": upstream_conf(backend)},
        limits={"max_request_line": "8k", "max_header_size": "32k", "max_headers": 100},
    )
    return heliosd(cfg)


def test_keepalive_serves_several_requests_on_one_connection(proxy):
    with RawConn(proxy.port) as c:
        for i in range(5):
            path = "/hello" if i % 2 == 0 else "/"
            c.send(request_bytes("GET", path))
            r = c.read_response()
            assert r is not None, f"connection closed before response {i}"
            assert r.status == 200
            assert r.complete
            assert (r.header("Connection") or "").lower() != "close"
            if path == "/hello":
                assert r.body == b"hi\n"
                assert r.header("X-Demo") == "1"
            else:
                assert r.body == b"hello from a\n"
        assert not c.eof


def test_request_head_split_anywhere_is_read_the_same(proxy):
    # The head validator checks runs of bytes four at a time and carries its
    # state across reads: a head arriving in pieces of any size is accepted,
    # and a control byte in a value refused, wherever the pieces end.
    head = (b"GET /hello?x=12345 HTTP/1.1\r\nHost: split.example\r\nX-Long-Value: "
            + b"v" * 37 + b"\r\nX-A: b\r\n\r\n")
    bad = head.replace(b"v" * 37, b"v" * 20 + b"\x01" + b"v" * 16)
    # the bad head is sent only up to the piece holding the bad byte: the
    # 400 comes then, and nothing is sent after the server closes
    for data, status, upto in ((head, 200, len(head)), (bad, 400, bad.index(b"\x01") + 1)):
        for size in (1, 3, 4, 5, 9):
            with RawConn(proxy.port) as c:
                for i in range(0, upto, size):
                    c.send(data[i:i + size])
                    time.sleep(0.002)
                r = c.read_response()
                assert r is not None and r.status == status, (size, status, r)
                if status == 200:
                    assert r.body == b"hi\n"


def test_curl_reuses_the_connection_for_two_urls(proxy):
    p = curl("-v", "-o", "/dev/null", "-o", "/dev/null", proxy.url("/hello"), proxy.url("/"))
    assert p.returncode == 0, p.stderr
    err = p.stderr.decode(errors="replace")
    assert "Re-using existing connection" in err or "Reusing existing connection" in err, err


def test_pipelined_requests_are_answered_in_order(proxy):
    # The first request is slow at the backend; the ones behind it are fast
    # (one is answered by a module, not the proxy): order must still hold.
    reqs = [
        ("GET", "/slow?ms=400"),
        ("GET", "/status/201"),
        ("GET", "/hello"),
        ("HEAD", "/bytes/10"),
        ("POST", "/echo"),
        ("GET", "/bytes/7"),
    ]
    data = b""
    for method, path in reqs:
        if method == "POST":
            data += request_bytes(method, path, headers=[("Content-Length", "5")], body=b"abcde")
        else:
            data += request_bytes(method, path)
    with RawConn(proxy.port) as c:
        c.send(data)  # all in one send
        got = []
        for method, _ in reqs:
            r = c.read_response(method=method)
            assert r is not None, f"closed after {len(got)} responses"
            got.append(r)
    assert [r.status for r in got] == [200, 201, 200, 200, 200, 200]
    assert got[2].body == b"hi\n"
    assert got[3].body == b""
    assert got[4].body == b"abcde"
    assert got[5].body == bytes(range(7))


def test_chunked_request_body_is_forwarded_whole(proxy):
    chunks = [b"hello ", b"chunked ", b"x" * 5000, b"world"]
    body = b"".join(b"%x\r\n%s\r\n" % (len(ch), ch) for ch in chunks) + b"0\r\n\r\n"
    with RawConn(proxy.port) as c:
        head = request_bytes("POST", "/echo", headers=[("Transfer-Encoding", "chunked")])
        c.send(head)
        c.send(body[:10])  # split across sends, mid chunk-size line
        c.send(body[10:])
        r = c.read_response()
    assert r.status == 200
    assert r.body == b"".join(chunks)


def test_chunked_upload_to_sink_counts_every_byte(proxy):
    n = 3_000_000
    from conftest import pattern_bytes

    data = pattern_bytes(0, n)
    with RawConn(proxy.port) as c:
        c.send(request_bytes("POST", "/sink", headers=[("Transfer-Encoding", "chunked")]))
        pos = 0
        size = 1
        while pos < n:  # chunk sizes 1, 3, 9, ... up to 64 KiB
            part = data[pos : pos + size]
            c.send(b"%x\r\n" % len(part) + part + b"\r\n")
            pos += len(part)
            size = min(size * 3, 65536)
        c.send(b"0\r\n\r\n")
        r = c.read_response(timeout=60)
    assert r.status == 200
    got = json.loads(r.body)
    assert got["bytes"] == n
    assert got["sum"] == pattern_sum(n)


def test_expect_100_continue_gets_interim_response_before_body(proxy):
    with RawConn(proxy.port) as c:
        c.send(
            request_bytes("POST", "/echo", headers=[("Content-Length", "11"), ("Expect", "100-continue")])
        )
        # Nothing of the body has been sent: the server must ask for it.
        head = c.read_until(b"\r\n\r\n", timeout=10)
        assert head is not None, "connection closed instead of 100 Continue"
        assert head.startswith(b"HTTP/1.1 100"), head
        c.send(b"hello world")
        r = c.read_response()
    assert r.status == 200
    assert r.body == b"hello world"


def test_expect_100_continue_with_curl(proxy):
    p = curl("-H", "Expect: 100-continue", "--expect100-timeout", "30", "--data-binary", "x" * 2000,
             "-v", proxy.url("/echo"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"x" * 2000
    assert b"HTTP/1.1 100" in p.stderr


def test_head_has_headers_but_no_body_and_keeps_framing(proxy):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("HEAD", "/bytes/1000"))
        r = c.read_response(method="HEAD")
        assert r.status == 200
        cl = r.header("Content-Length")
        assert cl in (None, "1000"), cl
        # Any body byte sent after a HEAD response would corrupt the next one.
        c.send(request_bytes("GET", "/hello"))
        r2 = c.read_response()
        assert r2.status == 200
        assert r2.body == b"hi\n"


def test_head_on_static_route(proxy):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("HEAD", "/hello") + request_bytes("GET", "/hello"))
        r = c.read_response(method="HEAD")
        assert r.status == 200
        assert r.header("Content-Length") in (None, "3")
        r2 = c.read_response()
        assert r2.body == b"hi\n"


def test_http10_client_without_keepalive_is_closed_after_response(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET /hello HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.version in ("HTTP/1.0", "HTTP/1.1")
        assert r.body == b"hi\n"
        assert c.wait_closed(10), "HTTP/1.0 connection without keep-alive was left open"


def test_http10_client_never_gets_chunked(proxy):
    # The backend answers chunked; a 1.0 client cannot parse that, so the
    # body must be framed by Content-Length or by closing the connection.
    with RawConn(proxy.port) as c:
        c.send(b"GET /bytes/20000?mode=chunked HTTP/1.0\r\nHost: t\r\n\r\n")
        r = c.read_response()
        assert r.status == 200
        assert r.header("Transfer-Encoding") is None
        assert r.framing in ("length", "close")
        assert len(r.body) == 20000 and pattern_ok(r.body)
        assert c.wait_closed(10)


def test_http10_keepalive_when_asked_is_framed_and_honoured(proxy):
    with RawConn(proxy.port) as c:
        c.send(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hi\n"
        if (r.header("Connection") or "").lower() == "keep-alive":
            # Promised to keep it open: a second request must work.
            assert r.framing == "length"
            c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r2 = c.read_response()
            assert r2 is not None and r2.status == 200 and r2.body == b"hello from a\n"
        else:
            assert c.wait_closed(10)


def test_request_line_too_long_gets_414(proxy):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", "/" + "a" * 10000))
        r = c.read_response()
    assert r is not None and r.status == 414


def test_request_line_below_limit_is_served(proxy):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", "/headers?" + "a" * 6000))
        r = c.read_response()
    assert r.status == 200
    assert json.loads(r.body)["target"] == "/headers?" + "a" * 6000


def test_header_section_too_large_gets_431(proxy):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", "/", headers=[("X-Big", "b" * 40000)]))
        r = c.read_response()
    assert r is not None and r.status == 431


def test_header_section_too_large_in_many_lines_gets_431(proxy):
    hdrs = [(f"X-H{i}", "v" * 1000) for i in range(40)]  # 40 KiB in 40 lines
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", "/", headers=hdrs))
        r = c.read_response()
    assert r is not None and r.status == 431


def test_too_many_headers_gets_431(proxy):
    hdrs = [(f"X-H{i}", "v") for i in range(150)]
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", "/", headers=hdrs))
        r = c.read_response()
    assert r is not None and r.status == 431


def test_ninety_headers_are_accepted_and_forwarded(proxy):
    hdrs = [(f"X-H{i}", f"v{i}") for i in range(90)]
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", "/headers", headers=hdrs))
        r = c.read_response()
    assert r.status == 200
    got = {k.lower(): v for k, v in json.loads(r.body)["headers"]}
    for k, v in hdrs:
        assert got.get(k.lower()) == v


def test_many_pipelined_requests_in_one_send(proxy):
    sizes = [(i * 7919) % 70000 for i in range(60)]
    reqs = []
    for i, n in enumerate(sizes):
        reqs.append("/hello" if i % 3 == 0 else f"/bytes/{n}?mode={'chunked' if i % 2 else 'length'}")
    with RawConn(proxy.port, timeout=60) as c:
        c.send(b"".join(request_bytes("GET", p) for p in reqs))
        for i, p in enumerate(reqs):
            r = c.read_response(timeout=60)
            assert r is not None, f"closed after {i} of {len(reqs)} pipelined responses"
            assert r.status == 200 and r.complete
            if p == "/hello":
                assert r.body == b"hi\n", i
            else:
                assert len(r.body) == sizes[i] and pattern_ok(r.body), (i, p, len(r.body))


def test_head_to_chunked_upstream_response_has_no_body(proxy):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("HEAD", "/bytes/5000?mode=chunked"))
        r = c.read_response(method="HEAD")
        assert r.status == 200
        c.send(request_bytes("GET", "/"))
        r2 = c.read_response()
        assert r2 is not None and r2.body == b"hello from a\n", "HEAD response left bytes behind"


def test_connection_close_from_client_is_honoured(proxy):
    for path in ("/hello", "/"):
        with RawConn(proxy.port) as c:
            c.send(request_bytes("GET", path, headers=[("Connection", "close")]))
            r = c.read_response()
            assert r.status == 200
            assert (r.header("Connection") or "").lower() == "close"
            assert c.wait_closed(10), f"{path}: connection left open after Connection: close"


def test_post_with_empty_body_and_get_with_body(proxy):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("POST", "/echo", headers=[("Content-Length", "0")]))
        r = c.read_response()
        assert r.status == 200 and r.body == b""
        c.send(request_bytes("GET", "/echo", headers=[("Content-Length", "4")], body=b"ping"))
        r = c.read_response()
        assert r.status == 200 and r.body == b"ping"
        c.send(request_bytes("GET", "/hello"))
        assert c.read_response().body == b"hi\n"
