"""Request-smuggling and parsing defenses, one raw-socket test per case.

For every malformed request heliosd must answer with the stated status,
close the connection (the framing of whatever follows cannot be trusted),
and never forward anything to the backend."""

import subprocess

import pytest

from conftest import (
    HELIOSD,
    MODULE_DIR,
    RawConn,
    free_port,
    make_config,
    parse_responses,
    proxy_route,
    raw,
    static_route,
    upstream_conf,
)

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture
def proxy(heliosd, backend):
    port = free_port()
    cfg = make_config(
        port,
        [static_route("hello", "hi\n", match={"path": "/hello"}), proxy_route("app", "app")],
        {"app": upstream_conf(backend)},
    )
    h = heliosd(cfg)
    h.backend = backend
    return h


def stats_baseline(backend):
    """(requests so far, how much one /stats call adds to that count)."""
    s0 = backend.stats()["requests"]
    s1 = backend.stats()["requests"]
    return s1, s1 - s0


def assert_rejected(proxy, request, status, forwarded_ok=False):
    """Sends REQUEST (+ a smuggled request behind it) on one connection and
    checks: exactly one response, with STATUS, then the connection closes;
    the backend saw nothing."""
    before, per_stats = stats_baseline(proxy.backend)
    with RawConn(proxy.port, timeout=10) as c:
        c.send(request + SMUGGLED)
        r = c.read_response()
        assert r is not None, "connection closed without a response"
        assert r.status == status, f"expected {status}, got {r.status} {r.reason}"
        assert c.wait_closed(10), "connection left open after a request whose framing cannot be trusted"
        rest = bytes(c.buf)
    assert b"HTTP/1." not in rest, f"a second response followed: {rest[:200]!r}"
    after = proxy.backend.stats()["requests"]
    assert after - before == per_stats, "the malformed request (or the smuggled one) reached the backend"


def test_content_length_with_transfer_encoding_is_400_and_closed(proxy):
    req = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert_rejected(proxy, req, 400)


def test_transfer_encoding_with_content_length_after_it_is_400(proxy):
    req = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n"
    )
    assert_rejected(proxy, req, 400)


def test_transfer_encoding_gzip_is_501(proxy):
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc"
    assert_rejected(proxy, req, 501)


def test_transfer_encoding_identity_is_501(proxy):
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n"
    assert_rejected(proxy, req, 501)


def test_chunked_not_last_is_rejected(proxy):
    # "chunked, gzip": the body is not delimited by chunked at all.
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
    before, per_stats = stats_baseline(proxy.backend)
    with RawConn(proxy.port, timeout=10) as c:
        c.send(req + SMUGGLED)
        r = c.read_response()
        assert r is not None and r.status in (400, 501)
        assert c.wait_closed(10)
    assert proxy.backend.stats()["requests"] - before == per_stats


def test_two_different_content_lengths_are_400(proxy):
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"
    assert_rejected(proxy, req, 400)


def test_content_length_list_with_different_values_is_400(proxy):
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nabcdef"
    assert_rejected(proxy, req, 400)


def test_content_length_with_sign_is_400(proxy):
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nabcde"
    assert_rejected(proxy, req, 400)


def test_obs_fold_is_400(proxy):
    req = b"GET / HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_obs_fold_of_transfer_encoding_is_400(proxy):
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding:\r\n chunked\r\n\r\nabc"
    assert_rejected(proxy, req, 400)


def test_bare_lf_line_endings_are_400(proxy):
    req = b"GET / HTTP/1.1\nHost: t\nX-A: b\n\n"
    assert_rejected(proxy, req, 400)


def test_bare_lf_inside_header_section_is_400(proxy):
    req = b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\nX-B: c\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_bare_cr_in_header_value_is_400(proxy):
    req = b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\rX-B: c\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_nul_in_header_value_is_400(proxy):
    req = b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\x00c\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_space_in_header_name_is_400(proxy):
    req = b"GET / HTTP/1.1\r\nHost: t\r\nX Bad: c\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_space_before_colon_is_400(proxy):
    # "Transfer-Encoding : chunked" is the classic CL.TE smuggling vector.
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding : chunked\r\n\r\nabc"
    assert_rejected(proxy, req, 400)


def test_invalid_character_in_header_name_is_400(proxy):
    req = b"GET / HTTP/1.1\r\nHost: t\r\nX(bad): c\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_empty_header_name_is_400(proxy):
    req = b"GET / HTTP/1.1\r\nHost: t\r\n: c\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_control_character_in_header_value_is_400(proxy):
    req = b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\x01c\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_invalid_chunk_size_is_400(proxy):
    req = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    before, per_stats = stats_baseline(proxy.backend)
    with RawConn(proxy.port, timeout=10) as c:
        c.send(req + SMUGGLED)
        # heliosd may already have started forwarding the request head when
        # the bad chunk arrives; then the client sees a 400 or a close, and
        # in both cases nothing after it may be processed.
        r = c.read_response()
        assert r is None or r.status in (400, 502)
        assert c.wait_closed(10)
        assert b"HTTP/1." not in bytes(c.buf)
    # The smuggled request never reaches the backend (at most the bad one,
    # whose head may have been forwarded before the bad chunk arrived).
    assert proxy.backend.stats()["requests"] - before <= per_stats + 1


def test_missing_host_in_http11_is_400(proxy):
    # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host.
    req = b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_duplicate_host_is_400(proxy):
    req = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert_rejected(proxy, req, 400)


def test_garbage_request_line_is_400(proxy):
    data = raw(proxy.port, b"\x16\x03\x01\x00\xa5hello\r\n\r\n", timeout=10)
    rs = parse_responses(data)
    assert len(rs) <= 1
    if rs:
        assert rs[0].status == 400


def test_good_request_after_rejections_still_served(proxy):
    raw(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\nX-A: b\x00\r\n\r\n", timeout=5)
    status, _, body = proxy.get("/hello")
    assert status == 200 and body == b"hi\n"


def test_crlf_in_configured_response_header_is_never_emitted(check_config):
    """A header value with CR/LF in the config must be refused at load time
    (or at least never reach the wire)."""
    port = free_port()
    cfg = make_config(
        port,
        [static_route("x", "x", headers={"X-Inject": "a\r\nX-Injected: 1"})],
    )
    p = check_config(cfg, "c.yaml")
    d = p.path.parent
    if p.returncode == 0:
        # Accepted: then start it and make sure the bytes never appear.
        proc = subprocess.Popen([str(HELIOSD), "-c", str(d), "-m", str(MODULE_DIR)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            from conftest import wait_for, port_accepts

            wait_for(lambda: port_accepts(port), 20, what="heliosd to listen")
            data = raw(port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", timeout=10)
            assert b"\r\nX-Injected" not in data
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    else:
        assert p.returncode == 1
        assert "c.yaml" in p.stderr, p.stderr
