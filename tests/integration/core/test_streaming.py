"""Bodies stream both ways with bounded memory; response framing (length,
chunked, close-delimited) is carried correctly; a backend dying mid-response
never turns into a response that looks complete."""

import http.client
import json
import time

import pytest

from conftest import (
    SINK_CHUNK,
    RawConn,
    RssSampler,
    curl,
    free_port,
    is_sanitizer_build,
    pattern_ok,
    pattern_sum,
    proxy_config,
    request_bytes,
    rss_kb,
)

GIB = 1 << 30
RSS_LIMIT_KB = 64 * 1024
ASAN_QUARANTINE_KB = 256 * 1024


@pytest.fixture
def proxy(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, upstream_extra={"timeouts": {"read": "60s", "send": "60s"}}))
    h.backend = backend
    return h


def download(port, path, timeout=60):
    """GETs PATH, verifying every byte against the /bytes pattern as it
    arrives. Returns (status, headers, byte count)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        total = 0
        while True:
            n = r.readinto(mv)
            if not n:
                break
            assert pattern_ok(bytes(mv[:n]), total), f"corrupt byte within [{total}, {total + n})"
            total += n
        return r.status, {k.lower(): v for k, v in r.getheaders()}, total
    finally:
        conn.close()


def upload_to_sink(port, n, timeout=60):
    """POSTs N pattern bytes with Content-Length to /sink; returns the
    parsed response."""
    with RawConn(port, timeout=timeout) as c:
        c.send(request_bytes("POST", "/sink", headers=[("Content-Length", str(n))]))
        left = n
        while left > 0:
            part = SINK_CHUNK if left >= len(SINK_CHUNK) else SINK_CHUNK[:left]
            c.send(part)
            left -= len(part)
        r = c.read_response(timeout=timeout)
    assert r is not None, "connection closed instead of a /sink response"
    return r


def warm_up(h):
    """Lets heliosd allocate its steady-state buffers before the baseline."""
    for _ in range(3):
        download(h.port, "/bytes/4000000")
        upload_to_sink(h.port, 4_000_000)


def check_rss(h, sampler, baseline):
    growth = sampler.max - baseline
    print(f"RSS baseline {baseline} KiB, peak {sampler.max} KiB, growth {growth} KiB, {sampler.samples} samples")
    assert sampler.samples > 5, "RSS was not sampled during the transfer"
    limit = RSS_LIMIT_KB
    if is_sanitizer_build():
        # ASan keeps up to 256 MiB of freed memory in quarantine: the 64 MiB
        # acceptance figure is for the normal build; here only catch a
        # transfer that is buffered whole.
        limit += ASAN_QUARANTINE_KB
    assert growth < limit, f"heliosd RSS grew by {growth} KiB (limit {limit} KiB)"


@pytest.mark.big
def test_1gib_download_streams_with_bounded_memory(proxy):
    warm_up(proxy)
    baseline = rss_kb(proxy.pid)
    t0 = time.monotonic()
    with RssSampler(proxy.pid) as s:
        status, headers, total = download(proxy.port, f"/bytes/{GIB}?mode=length", timeout=60)
    elapsed = time.monotonic() - t0
    assert status == 200
    assert total == GIB, f"got {total} of {GIB} bytes in {elapsed:.1f}s"
    check_rss(proxy, s, baseline)


@pytest.mark.big
def test_1gib_upload_streams_with_bounded_memory(proxy):
    warm_up(proxy)
    baseline = rss_kb(proxy.pid)
    with RssSampler(proxy.pid) as s:
        r = upload_to_sink(proxy.port, GIB, timeout=60)
    assert r.status == 200, r
    got = json.loads(r.body)
    assert got["bytes"] == GIB
    assert got["sum"] == pattern_sum(GIB)
    check_rss(proxy, s, baseline)


def test_chunked_download_is_carried(proxy):
    status, headers, total = download(proxy.port, "/bytes/30000000?mode=chunked")
    assert status == 200 and total == 30_000_000


def test_chunked_upload_64mib(proxy):
    n = 64 << 20
    with RawConn(proxy.port, timeout=60) as c:
        c.send(request_bytes("POST", "/sink", headers=[("Transfer-Encoding", "chunked")]))
        left = n
        while left > 0:
            part = SINK_CHUNK if left >= len(SINK_CHUNK) else SINK_CHUNK[:left]
            c.send(b"%x\r\n" % len(part) + part + b"\r\n")
            left -= len(part)
        c.send(b"0\r\n\r\n")
        r = c.read_response(timeout=60)
    assert r.status == 200
    got = json.loads(r.body)
    assert got == {"bytes": n, "sum": pattern_sum(n)} or (got["bytes"], got["sum"]) == (n, pattern_sum(n))


@pytest.mark.parametrize("n", [0, 1, 250, 251, 65536, 1_000_003])
def test_length_framed_response_is_carried(proxy, n):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", f"/bytes/{n}?mode=length"))
        r = c.read_response()
        assert r.status == 200 and r.complete
        assert r.framing == "length" and int(r.header("Content-Length")) == n
        assert len(r.body) == n and pattern_ok(r.body)
        c.send(request_bytes("GET", "/"))  # the connection is still in sync
        assert c.read_response().body == b"hello from a\n"


@pytest.mark.parametrize("n", [0, 1, 65536, 1_000_003])
def test_chunked_response_is_carried(proxy, n):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", f"/bytes/{n}?mode=chunked"))
        r = c.read_response()
        assert r.status == 200 and r.complete
        assert r.framing in ("chunked", "length"), r.framing
        assert len(r.body) == n and pattern_ok(r.body)
        c.send(request_bytes("GET", "/"))
        assert c.read_response().body == b"hello from a\n"


@pytest.mark.parametrize("n", [0, 1, 65536, 1_000_003])
def test_close_delimited_response_is_carried(proxy, n):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", f"/bytes/{n}?mode=close"))
        r = c.read_response()
        assert r.status == 200 and r.complete
        assert len(r.body) == n and pattern_ok(r.body)
        if r.framing == "close":
            assert c.eof
        else:
            # Re-framed as chunked for a keep-alive client: must terminate
            # properly and leave the connection in sync.
            assert r.framing == "chunked", r.framing
            c.send(request_bytes("GET", "/"))
            assert c.read_response().body == b"hello from a\n"


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_status_keeps_connection_in_sync(proxy, status):
    with RawConn(proxy.port) as c:
        c.send(request_bytes("GET", f"/status/{status}") + request_bytes("GET", "/"))
        r = c.read_response()
        assert r.status == status
        r2 = c.read_response()
        assert r2 is not None and r2.body == b"hello from a\n"


def test_backend_dying_mid_response_curl_sees_partial_transfer(proxy):
    p = curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}", proxy.url("/die?after=5000"), timeout=30)
    assert p.returncode == 18, f"curl exit {p.returncode} (18 = partial file): {p.stderr!r}"
    code, size = p.stdout.decode().split()
    assert code == "200"
    assert int(size) < 1_000_000


def test_backend_dying_mid_chunked_response_curl_sees_partial_transfer(proxy):
    p = curl("-o", "/dev/null", proxy.url("/die?after=5000&mode=chunked"), timeout=30)
    assert p.returncode == 18, f"curl exit {p.returncode} (18 = partial file): {p.stderr!r}"


@pytest.mark.parametrize("mode", ["", "&mode=chunked"])
def test_backend_dying_mid_response_closes_client_connection(proxy, mode):
    with RawConn(proxy.port, timeout=30) as c:
        c.send(request_bytes("GET", f"/die?after=20000{mode}"))
        r = c.read_response(timeout=30)
        assert r is not None
        if r.status == 200:
            assert not r.complete, f"truncated upstream response looked complete to the client ({r})"
            assert len(r.body) < 1_000_000
        else:
            assert r.status == 502
        assert c.eof or c.wait_closed(10), "client connection left open after a truncated response"
    # heliosd does not reuse the broken upstream connection.
    assert proxy.get("/")[0] == 200


def test_backend_dying_before_any_body_byte(proxy):
    with RawConn(proxy.port, timeout=30) as c:
        c.send(request_bytes("GET", "/die?after=0"))
        r = c.read_response(timeout=30)
        if r is not None and r.status == 200:
            assert not r.complete
        elif r is not None:
            assert r.status == 502
        assert c.eof or c.wait_closed(10)


def test_slow_reader_gets_everything(proxy):
    """Backpressure: a client that reads slowly still gets every byte."""
    n = 20_000_000
    with RawConn(proxy.port, timeout=60, rcvbuf=65536) as c:
        c.send(request_bytes("GET", f"/bytes/{n}"))
        head = c.read_head()
        assert head.status == 200
        got = bytearray(c.buf)
        c.buf.clear()
        c.sock.settimeout(60)
        deadline = time.monotonic() + 90
        while len(got) < n and time.monotonic() < deadline:
            b = c.sock.recv(1 << 20)
            if not b:
                break
            got += b
            if len(got) < 4_000_000:
                time.sleep(0.01)  # slow at first, so heliosd must hold back
        assert len(got) == n
        assert pattern_ok(bytes(got))
    # Memory stayed bounded while the client was slow.
    assert rss_kb(proxy.pid) < 512 * 1024 or is_sanitizer_build()
