"""ABI 1.3 module contracts, driven by the test module tests/modules/contracts.c
(filter and balancer):

- req_body_length / req_has_body on HTTP/1.1, HTTP/2 and subrequests;
- hold until verified: the filter sees the body whole, may replace it, a
  handler reads the replacement, too large is 413 before the backend;
- per-attempt balancer hook and slot; a 1.2 balancer keeps 1.2 behaviour;
- late callbacks: a reference used after its request ended, and after the
  connection's next request took the same memory, is refused without
  touching it (the heliosd fixture fails the test on any sanitizer report,
  so under ASan this is the use-after-free check).

The test modules are found through a `module_path` list (the shipped
directory first, then TEST_MODULE_DIR): no symlinks."""

import json
import re
import time

import pytest

from conftest import (
    TEST_MODULE_DIR,
    curl,
    free_port,
    make_config,
    proxy_route,
    upstream_conf,
)
from helpers.clients import RawConn, request_bytes


def need_modules():
    for m in ("contracts", "subreq"):
        if not (TEST_MODULE_DIR / f"{m}.so").exists():
            pytest.fail(f"test module {m} not built in {TEST_MODULE_DIR}")


def start(heliosd, backend, balancer="round_robin", routes=None, **top):
    need_modules()
    port = free_port()
    routes = routes or [{**proxy_route("app", "app"), "filters": ["contracts"]}]
    cfg = make_config(port, routes, {"app": upstream_conf(backend, balancer=balancer)},
                      module_path=[str(TEST_MODULE_DIR)], **top)
    return heliosd(cfg)


def echoed(body):
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


def test_body_facts_on_http1_and_http2(heliosd, backend):
    h = start(heliosd, backend)
    cases = [
        ({"Content-Length": "0"}, b"", "POST", "0", "0"),
        ({}, b"abcde", "POST", "5", "1"),
        ({}, None, "GET", "0", "0"),
    ]
    for hdrs, body, method, length, has in cases:
        status, _, out = h.get("/headers", method=method, headers=hdrs, body=body)
        assert status == 200, out
        seen = echoed(out)
        assert (seen["x-body-length"], seen["x-has-body"]) == (length, has), (method, hdrs, seen)
    # chunked: length unknown
    with RawConn(h.port) as c:
        c.send(b"POST /headers HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\n\r\n")
        r = c.read_response()
        seen = echoed(bytes(r.body))
        assert (seen["x-body-length"], seen["x-has-body"]) == ("-1", "1"), seen
    # HTTP/2: END_STREAM on HEADERS, a content-length, and an upload whose
    # content-length curl was told to drop (length unknown)
    url = f"http://127.0.0.1:{h.port}/headers"
    for args, length, has in ((), "0", "0"), (("-d", "hello"), "5", "1"), \
            (("-H", "content-length:", "-H", "Transfer-Encoding:", "-T", "/dev/null"), "-1", "1"):
        p = curl("--http2-prior-knowledge", *args, url)
        assert p.returncode == 0, p.stderr
        seen = echoed(p.stdout)
        assert (seen["x-body-length"], seen["x-has-body"]) == (length, has), (args, seen)


def test_subrequest_body_facts_and_attempt_hook(heliosd, backend):
    """The contracts balancer sees the subrequest's body length in pick, and
    hears how each attempt ended, with its per-attempt slot intact."""
    routes = [{"name": "sub", "match": {"prefix": "/sub"}, "handler": "subreq",
               "upstream": "app"}]
    h = start(heliosd, backend, balancer="contracts", routes=routes)
    mark = h.err_mark()
    status, _, out = h.get("/sub?to=-&method=POST&path=/sink&body=1", method="POST",
                           body=b"seven!!")
    assert status == 200, out
    h.wait_stderr(r"contracts: pick: body_length=7 has_body=1", since=mark)
    m = h.wait_stderr(r"contracts: attempt 1: backend=a outcome=0 status=200 "
                      r"first_byte_us=(\d+) last_byte_us=(\d+) slot=ok", since=mark)
    assert 0 <= int(m.group(1)) <= int(m.group(2)), m.group(0)
    assert "BUG" not in h.stderr()


def test_attempt_hook_reports_failures_and_cancellations(heliosd, backends):
    a = backends("a")
    h = start(heliosd, a, balancer="contracts",
              routes=[proxy_route("app", "app")], timeouts={"request": "300ms"})
    mark = h.err_mark()
    assert h.get("/hang")[0] == 504
    # the request ended with its attempt in flight: CANCELLED (5)
    h.wait_stderr(r"contracts: attempt 1: backend=a outcome=5 status=0 first_byte_us=-1 "
                  r"last_byte_us=\d+ slot=ok", since=mark)
    # a response filter fails while the attempt is open: let go, CANCELLED
    h2 = start(heliosd, a, balancer="contracts")
    mark2 = h2.err_mark()
    assert h2.get("/bytes/100000?failresp=1")[0] == 500
    h2.wait_stderr(r"contracts: attempt 1: backend=a outcome=5 status=200 first_byte_us=\d+ "
                   r"last_byte_us=\d+ slot=ok", since=mark2)
    assert "BUG" not in h2.stderr()
    a.stop()
    mark = h.err_mark()
    assert h.get("/")[0] == 502
    h.wait_stderr(r"contracts: attempt 1: backend=a outcome=1 status=0 first_byte_us=-1 "
                  r"last_byte_us=\d+ slot=ok", since=mark)
    assert "BUG" not in h.stderr()


def backend_requests(b):
    from helpers.clients import http_request
    return json.loads(http_request(b.port, "/stats")[2])["requests"]


def test_hold_gives_the_whole_body_once_and_may_replace_it(heliosd, backend):
    h = start(heliosd, backend)
    mark = h.err_mark()
    # chunked in three pieces: the filter still sees one call, LAST set
    with RawConn(h.port) as c:
        c.send(b"POST /echo?hold=1&replace=1 HTTP/1.1\r\nHost: t\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        for piece in (b"abc", b"defg", b"hi"):
            c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.05)
        c.send(b"0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200 and bytes(r.body) == b"replaced:9", (r.status, r.body)
    h.wait_stderr(r"contracts: held body of 9 bytes", since=mark)
    # held and passed on unchanged, with a Content-Length upstream
    status, _, out = h.get("/headers?hold=1", method="POST", body=b"x" * 1000)
    assert status == 200
    seen = echoed(out)
    assert seen["content-length"] == "1000" and "transfer-encoding" not in seen, seen
    assert "BUG" not in h.stderr()


def test_hold_over_its_limit_is_413_and_the_backend_never_sees_it(heliosd, backend):
    h = start(heliosd, backend, limits={"max_held_body": "4k"})
    before = backend_requests(backend)
    # announced too large (the filter's own max), and found too large
    # (chunked, over limits.max_held_body)
    assert h.get("/echo?hold=1&max=100", method="POST", body=b"y" * 101)[0] == 413
    with RawConn(h.port) as c:
        c.send(b"POST /echo?hold=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.send(b"1000\r\n" + b"z" * 4096 + b"\r\n1\r\nz\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 413, r.status
    assert h.get("/echo?hold=1&max=100", method="POST", body=b"y" * 100)[0] == 200
    assert backend_requests(backend) == before + 1


def test_hold_on_a_handler_route_reads_the_replacement(heliosd, backend):
    routes = [{"name": "sub", "match": {"prefix": "/hold"}, "handler": "subreq",
               "upstream": "app", "filters": ["contracts"]}]
    h = start(heliosd, backend, routes=routes)
    status, _, out = h.get("/hold?hold=1&replace=1&to=&body=1", method="POST", body=b"0123456789")
    assert status == 200, out
    assert b"body 11" in out, out  # "replaced:10"


def test_late_references_are_refused_after_the_memory_is_reused(heliosd, backend):
    """/late/arm lets its request finish and keeps its reference; the next
    request on the same connection (same request memory, HTTP/1.1) is
    paused for 400 ms by /late/wait. At 150 ms the stale reference is used
    from a timer and from a post: refused both times, and the paused
    request is not resumed early by it."""
    h = start(heliosd, backend)
    mark = h.err_mark()
    with RawConn(h.port) as c:
        c.send(request_bytes("GET", "/late/arm"))
        assert c.read_response().status == 200
        t0 = time.monotonic()
        c.send(request_bytes("GET", "/late/wait"))
        r = c.read_response(timeout=10)
        took = time.monotonic() - t0
    assert r.status == 200
    assert took >= 0.35, f"resumed after {took:.3f}s: a stale reference reached it"
    h.wait_stderr(r"contracts: timer: stale ref refused", since=mark)
    h.wait_stderr(r"contracts: post: stale ref refused", since=mark)
    h.wait_stderr(r"contracts: own resume ok", since=mark)
    assert "BUG" not in h.stderr(), h.stderr()


def test_a_late_resume_of_a_request_that_timed_out_is_refused(heliosd, backend):
    """/late/wait resumes itself after 400 ms; the request timeout (200 ms)
    answers 504 and ends it first: the resume finds it gone."""
    h = start(heliosd, backend, timeouts={"request": "200ms"})
    mark = h.err_mark()
    assert h.get("/late/wait")[0] == 504
    h.wait_stderr(r"contracts: ended request refused", since=mark)
    assert h.get("/")[0] == 200
    assert "BUG" not in h.stderr(), h.stderr()
