"""Timeouts, with 1 s settings so the tests stay short: client header
(slowloris), client body, keep-alive idle, client write, upstream connect,
upstream read, whole request. Bounds are generous (a loaded 2-core CI
machine): a 1 s timeout must fire within 10 s, and not before ~0.5 s.

Upstream connect timeout on loopback: a listening socket with backlog 0
whose accept queue is already full makes the kernel drop further SYNs, so a
connect() hangs just as it would towards a dead host. If the kernel does not
behave that way the test skips (it says so)."""

import re
import socket
import time

import pytest

from conftest import (
    RawConn,
    free_port,
    parse_responses,
    proxy_config,
    request_bytes,
)

SHORT = {"client_header": "1s", "client_body": "1s", "keepalive": "1s", "client_write": "1s"}
UPSTREAM_SHORT = {"connect": "1s", "read": "1s", "send": "1s"}
FIRE_WITHIN = 10.0
NOT_BEFORE = 0.5
TIMEOUT_RX = r"time(d)?[ _-]?out"


@pytest.fixture
def proxy(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, timeouts=SHORT, upstream_extra={"timeouts": UPSTREAM_SHORT}))
    h.backend = backend
    return h


def closed_after(c, start):
    """Waits for the server to close C; returns seconds since START."""
    assert c.wait_closed(FIRE_WITHIN + 5), "server never closed the connection"
    return time.monotonic() - start


def check_408_or_nothing(c):
    data = bytes(c.buf)
    if data:
        assert data.startswith(b"HTTP/1.1 408"), data[:200]


def test_client_header_timeout_slowloris(proxy):
    with RawConn(proxy.port, timeout=30) as c:
        start = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        # Keep trickling header lines: each one is progress, but the whole
        # head must arrive within client_header.
        for i in range(40):
            try:
                c.send(b"X-Drip-%d: x\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                break
            if c.wait_closed(0.25):
                break
        elapsed = closed_after(c, start)
        check_408_or_nothing(c)
    assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed


def test_client_header_timeout_partial_head(proxy):
    with RawConn(proxy.port, timeout=30) as c:
        start = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-A:")
        elapsed = closed_after(c, start)
        check_408_or_nothing(c)
    assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed


def test_connection_without_any_request_is_closed(proxy):
    with RawConn(proxy.port, timeout=30) as c:
        start = time.monotonic()
        elapsed = closed_after(c, start)
        assert bytes(c.buf) in (b"",) or bytes(c.buf).startswith(b"HTTP/1.1 408")
    assert elapsed <= FIRE_WITHIN


def test_client_body_timeout(proxy):
    # /sink answers only after the whole body: nothing may look like success.
    with RawConn(proxy.port, timeout=30) as c:
        c.send(request_bytes("POST", "/sink", headers=[("Content-Length", "100")]) + b"0123456789")
        start = time.monotonic()
        elapsed = closed_after(c, start)
        data = bytes(c.buf)
        if data:
            assert re.match(rb"HTTP/1.1 (408|400|502|504)", data), data[:200]
    assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed


def test_client_body_timeout_chunked(proxy):
    with RawConn(proxy.port, timeout=30) as c:
        c.send(request_bytes("POST", "/sink", headers=[("Transfer-Encoding", "chunked")]) + b"5\r\nabc")
        start = time.monotonic()
        elapsed = closed_after(c, start)
        data = bytes(c.buf)
        if data:
            assert re.match(rb"HTTP/1.1 (408|400|502|504)", data), data[:200]
    assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_client_body_timeout_mid_streamed_response(proxy, framing):
    # /echo starts answering while the body streams in; when the client
    # stalls, the response that already began must end visibly incomplete.
    if framing == "length":
        req = request_bytes("POST", "/echo", headers=[("Content-Length", "100")]) + b"0123456789"
    else:
        req = request_bytes("POST", "/echo", headers=[("Transfer-Encoding", "chunked")]) + b"5\r\nabc"
    with RawConn(proxy.port, timeout=30) as c:
        c.send(req)
        start = time.monotonic()
        elapsed = closed_after(c, start)
        rs = parse_responses(bytes(c.buf))
        assert len(rs) <= 1
        if rs and rs[0].status == 200:
            assert not rs[0].complete, "a response cut by the client body timeout looked complete"
    assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed


def test_keepalive_idle_connection_is_closed(proxy):
    with RawConn(proxy.port, timeout=30) as c:
        c.send(request_bytes("GET", "/"))
        r = c.read_response()
        assert r.status == 200
        start = time.monotonic()
        elapsed = closed_after(c, start)
        left = bytes(c.buf)
        assert left == b"" or left.startswith(b"HTTP/1.1 408"), left[:200]
    assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed


def test_upstream_read_timeout_is_504(proxy):
    mark = proxy.err_mark()
    start = time.monotonic()
    with RawConn(proxy.port, timeout=30) as c:
        c.send(request_bytes("GET", "/hang"))
        r = c.read_response(timeout=30)
    elapsed = time.monotonic() - start
    assert r is not None and r.status == 504
    assert 0 < len(r.body) < 4096
    assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed
    proxy.wait_stderr(TIMEOUT_RX, since=mark)


def test_upstream_read_timeout_not_hit_by_fast_enough_backend(proxy):
    status, _, _ = proxy.get("/slow?ms=200")
    assert status == 200


class FullBacklog:
    """A listening socket whose accept queue is full: new SYNs are dropped."""

    def __enter__(self):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(0)
        self.port = self.ls.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", self.port))
            self.fillers.append(s)
        time.sleep(0.2)  # let the handshakes of the fillers settle
        self.hangs = False
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.8)
        try:
            probe.connect(("127.0.0.1", self.port))
        except socket.timeout:
            self.hangs = True
        except OSError:
            pass
        finally:
            probe.close()
        return self

    def __exit__(self, *exc):
        for s in self.fillers:
            s.close()
        self.ls.close()


def test_upstream_connect_timeout_is_504(heliosd):
    with FullBacklog() as fb:
        if not fb.hangs:
            pytest.skip("cannot produce a hanging connect() on loopback here (full accept queue did not drop SYNs)")
        h = heliosd(
            proxy_config(
                free_port(),
                {"name": "blackhole", "address": f"127.0.0.1:{fb.port}"},
                upstream_extra={"timeouts": {"connect": "1s", "read": "30s", "send": "30s"}},
            )
        )
        mark = h.err_mark()
        start = time.monotonic()
        with RawConn(h.port, timeout=30) as c:
            c.send(request_bytes("GET", "/"))
            r = c.read_response(timeout=30)
        elapsed = time.monotonic() - start
        assert r is not None and r.status == 504, r
        assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed
        h.wait_stderr(TIMEOUT_RX, since=mark)
        h.wait_stderr(r"connect", since=mark)


def test_whole_request_timeout(heliosd, backend):
    h = heliosd(
        proxy_config(
            free_port(),
            backend,
            timeouts={"request": "1s"},
            upstream_extra={"timeouts": {"connect": "5s", "read": "30s", "send": "30s"}},
        )
    )
    mark = h.err_mark()
    start = time.monotonic()
    with RawConn(h.port, timeout=30) as c:
        c.send(request_bytes("GET", "/hang"))
        r = c.read_response(timeout=30)
        elapsed = time.monotonic() - start
        assert r is None or r.status in (408, 503, 504), r
        if r is None:
            assert c.eof
    assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed
    h.wait_stderr(TIMEOUT_RX, since=mark)
    # A request that finishes in time is unaffected.
    assert h.get("/slow?ms=100")[0] == 200


def test_whole_request_timeout_covers_slow_backend(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, timeouts={"request": "1s"},
                             upstream_extra={"timeouts": {"read": "30s"}}))
    start = time.monotonic()
    with RawConn(h.port, timeout=30) as c:
        c.send(request_bytes("GET", "/slow?ms=6000"))
        r = c.read_response(timeout=30)
    elapsed = time.monotonic() - start
    assert r is None or r.status in (408, 503, 504), r
    assert elapsed < 5.5, f"request timeout of 1s did not cut a 6s backend ({elapsed:.1f}s)"


def test_client_write_timeout_drops_stalled_reader(proxy):
    n = 200_000_000
    with RawConn(proxy.port, timeout=30, rcvbuf=4096) as c:
        c.send(request_bytes("GET", f"/bytes/{n}"))
        head = c.read_head(timeout=30)
        assert head is not None and head.status == 200
        # Read nothing for a while: heliosd cannot make progress writing.
        time.sleep(5)
        total = len(c.buf)
        c.buf.clear()
        deadline = time.monotonic() + 30
        eof = False
        while time.monotonic() < deadline:
            try:
                c.sock.settimeout(5)
                b = c.sock.recv(1 << 20)
            except socket.timeout:
                break
            except ConnectionResetError:
                eof = True
                break
            if not b:
                eof = True
                break
            total += len(b)
        assert eof, "connection still open after client_write timeout"
        assert total < n, "stalled client got the whole body: no client_write timeout"
    assert proxy.get("/")[0] == 200


def test_short_client_timeouts_do_not_cut_a_slow_upstream_response(heliosd, backend):
    # client_header/body/keepalive are about the client; while heliosd waits
    # on the upstream (read timeout 10s) they must not fire.
    h = heliosd(proxy_config(free_port(), backend, timeouts=SHORT,
                             upstream_extra={"timeouts": {"read": "10s"}}))
    with RawConn(h.port, timeout=30) as c:
        c.send(request_bytes("GET", "/slow?ms=2500"))
        r = c.read_response(timeout=30)
        assert r is not None and r.status == 200, r
        c.send(request_bytes("GET", "/"))
        r = c.read_response()
        assert r is not None and r.status == 200


def test_keepalive_timeout_still_closes_after_a_response_longer_than_it(heliosd, backend):
    # While a request is served the client timer is left armed (issue 18:
    # no stop and start per request); its early firing during a 2.5 s
    # response must neither cut the response nor leave the connection
    # without its keep-alive deadline afterwards.
    h = heliosd(proxy_config(free_port(), backend, timeouts=SHORT,
                             upstream_extra={"timeouts": {"read": "10s"}}))
    with RawConn(h.port, timeout=30) as c:
        for path in ("/", "/slow?ms=2500", "/"):
            c.send(request_bytes("GET", path))
            r = c.read_response(timeout=30)
            assert r is not None and r.status == 200, (path, r)
        start = time.monotonic()
        elapsed = closed_after(c, start)
        assert bytes(c.buf) == b"" or bytes(c.buf).startswith(b"HTTP/1.1 408")
    assert NOT_BEFORE <= elapsed <= FIRE_WITHIN, elapsed


def test_client_body_timeout_is_between_reads_not_total(heliosd, backend):
    h = heliosd(proxy_config(free_port(), backend, timeouts=SHORT))
    n = 10
    with RawConn(h.port, timeout=30) as c:
        c.send(request_bytes("POST", "/sink", headers=[("Content-Length", str(n * 100))]))
        for _ in range(n):  # ~2.5 s in all, never 1 s without progress
            c.send(bytes(100))
            time.sleep(0.25)
        r = c.read_response(timeout=30)
    assert r is not None and r.status == 200
    assert b'"bytes":1000' in r.body
