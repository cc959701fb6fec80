"""Retries and the retry budget.

A retry needs: nothing shown to the client yet, tries left, a replayable
request (a connect failure always, and free of budget; otherwise an
idempotent method with no body byte sent) and a budget token (each request
deposits budget_percent % of a token, each non-connect retry spends one,
budget_min tokens at start).

Most tests use ScriptedBackend, a tiny threaded HTTP/1.1 server written
here: it fails the same way for every path (a status, a reset, a hang) and
counts accepted connections and requests per method, so the number of
upstream attempts is measured exactly, not inferred from logs.
"""

import re
import socket
import struct
import threading
import time
from collections import Counter

import pytest

from conftest import (
    free_port,
    http_request,
    make_config,
    proxy_route,
    upstream_conf,
    wait_for,
)

LOGGING = {"level": "info", "error_log": "stderr", "access_log": "stdout", "access_log_format": "text"}


class ScriptedBackend:
    """An HTTP/1.1 origin on 127.0.0.1 whose every answer follows MODE:
    "ok" (200), an int N (status N), "reset" (RST after reading the whole
    request) or "hang" (no answer; waits for the peer to close). Keeps
    connections alive. .connections, .requests and .methods count what
    reached it; a request is counted once its head and body were read."""

    def __init__(self, name, mode="ok"):
        self.name = name
        self.mode = mode
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.methods = Counter()
        self._stop = threading.Event()
        self._conns = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._t = threading.Thread(target=self._accept_loop, daemon=True)
        self._t.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def conf(self):
        return {"name": self.name, "address": self.address}

    def stop(self):
        self._stop.set()
        self._t.join(timeout=5)
        self.sock.close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _recv(self, c, buf):
        """Appends to BUF; False on EOF, error or stop."""
        while not self._stop.is_set():
            try:
                b = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return False
            if not b:
                return False
            buf += b
            return True
        return False

    def _serve(self, c):
        c.settimeout(0.2)
        buf = bytearray()
        try:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    if not self._recv(c, buf):
                        return
                end = buf.index(b"\r\n\r\n") + 4
                head = bytes(buf[:end]).decode("latin-1")
                del buf[:end]
                method = head.split(" ", 1)[0]
                m = re.search(r"(?im)^content-length:\s*(\d+)\s*$", head)
                length = int(m.group(1)) if m else 0
                while len(buf) < length:
                    if not self._recv(c, buf):
                        return
                del buf[:length]
                with self.lock:
                    self.requests += 1
                    self.methods[method] += 1
                mode = self.mode
                if mode == "reset":
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if mode == "hang":
                    while self._recv(c, buf):
                        pass
                    return
                status = 200 if mode == "ok" else int(mode)
                body = f"{status} from {self.name}\n".encode()
                c.sendall(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
                    f"X-Backend: {self.name}\r\n\r\n".encode()
                    + body
                )
        finally:
            try:
                c.close()
            except OSError:
                pass


@pytest.fixture
def scripted():
    """Factory: scripted("a", mode) starts a ScriptedBackend; all are
    stopped at teardown."""
    started = []

    def make(name, mode="ok"):
        b = ScriptedBackend(name, mode)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


def start_proxy(heliosd, bks, retries, **extra):
    port = free_port()
    ups = {"app": upstream_conf(*[b.conf() if isinstance(b, ScriptedBackend) else b for b in bks],
                                retries=retries, **extra)}
    return heliosd(make_config(port, [proxy_route("app", "app")], ups, logging=LOGGING))


def access_lines(h, n, timeout=10.0):
    """The first N access-log lines (waits until they are written)."""
    wait_for(lambda: len(h.stdout().splitlines()) >= n, timeout, what=f"{n} access log lines")
    return h.stdout().splitlines()[:n]


# --------------------------------------------------------------------------


def test_killing_one_of_three_backends_under_load_shows_no_client_errors(heliosd, backends):
    a, b, c = backends("a", "b", "c")
    h = start_proxy(heliosd, [a, b, c], {"tries": 3})
    results = Counter()
    errors = []
    lock = threading.Lock()
    deadline = time.monotonic() + 5.0

    def load():
        n = 0
        while time.monotonic() < deadline and n < 5000:
            n += 1
            try:
                status, _, _ = http_request(h.port, f"/load/{n}", timeout=10)
            except Exception as e:  # noqa: BLE001 - reported below
                status = repr(e)
            with lock:
                results[status] += 1
                if status != 200 and len(errors) < 10:
                    errors.append(status)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(results.values()) >= 50, 10, what="some load before the kill")
    mark = h.err_mark()
    with lock:
        before_kill = sum(results.values())
    b.kill()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "load threads did not finish"
    total = sum(results.values())
    assert total >= 100, f"too little load to mean anything: {results}"
    assert results[200] == total, f"client-visible errors after killing b: {errors} ({results})"
    survivors = a.stats()["requests"] + c.stats()["requests"]
    assert survivors >= total - before_kill, "requests after the kill did not all reach a or c"
    assert re.search(r"connect to 127\.0\.0\.1:%d failed.*retrying" % b.port, h.stderr()[mark:]), (
        "no connect-failure failover in the error log: the kill was never exercised"
    )


def test_503_is_retried_on_another_backend_when_enabled(heliosd, scripted):
    bad, good = scripted("bad", 503), scripted("good")
    h = start_proxy(heliosd, [bad, good], {"on": [503], "budget_percent": 100})
    n = 10
    for i in range(n):
        status, headers, body = http_request(h.port, f"/r/{i}")
        assert status == 200, f"request {i}: {status} {body!r}"
        assert headers.get("x-backend") == "good"
    assert bad.requests > 0, "the 503 backend was never tried: nothing proves a retry"
    assert good.requests == n
    lines = access_lines(h, n)
    tries = [int(re.search(r"\btries=(\d+)", line).group(1)) for line in lines]
    assert tries.count(2) == bad.requests, f"tries in the access log {tries} vs {bad.requests} retries"
    assert set(tries) <= {1, 2}


def test_reset_before_response_retries_an_idempotent_get(heliosd, scripted):
    bad, good = scripted("bad", "reset"), scripted("good")
    h = start_proxy(heliosd, [bad, good], {"budget_percent": 100})
    n = 6
    for i in range(n):
        status, headers, body = http_request(h.port, f"/g/{i}")
        assert status == 200, f"GET {i}: {status} {body!r}"
        assert headers.get("x-backend") == "good"
    assert bad.methods["GET"] > 0, "the resetting backend was never tried"
    assert good.methods["GET"] == n
    assert any(re.search(r"\btries=2\b", line) for line in access_lines(h, n))


def test_post_whose_body_was_sent_is_never_retried(heliosd, scripted):
    bad, good = scripted("bad", "reset"), scripted("good")
    # Everything retryable is on and the budget is generous: only the
    # method and the sent body may stop the retry.
    h = start_proxy(
        heliosd, [bad, good], {"tries": 3, "on": ["connect_failure", "reset", "timeout", 502, 503, 504],
                               "budget_percent": 100, "budget_min": 100}
    )
    n = 6
    statuses = Counter()
    for i in range(n):
        status, _, _ = http_request(h.port, f"/p/{i}", method="POST", body=b"x" * 1000,
                                    headers={"Content-Type": "application/octet-stream"})
        statuses[status] += 1
    assert statuses[502] >= 1, f"no POST reached the resetting backend: {statuses}"
    assert set(statuses) <= {200, 502}, statuses
    # every POST reached exactly one backend: the reset ones went nowhere else
    assert bad.methods["POST"] == statuses[502], (bad.methods, statuses)
    assert good.methods["POST"] == statuses[200], (good.methods, statuses)
    assert bad.methods["POST"] + good.methods["POST"] == n


def test_retry_budget_bounds_upstream_attempts_when_every_backend_fails(heliosd, scripted):
    bks = [scripted(name, 503) for name in ("a", "b", "c")]
    h = start_proxy(heliosd, bks, {"tries": 3, "on": [503], "budget_percent": 20, "budget_min": 3})
    r = 100
    statuses = Counter()
    for i in range(r):
        status, _, _ = http_request(h.port, f"/b/{i}")
        statuses[status] += 1
    attempts = sum(b.requests for b in bks)
    assert statuses == Counter({503: r}), statuses
    assert attempts > r, f"no retry happened at all ({attempts} attempts for {r} requests)"
    assert attempts <= r * 1.2 + 3, f"{attempts} upstream attempts for {r} requests exceeds the budget"
    tries = [int(re.search(r"\btries=(\d+)", line).group(1)) for line in access_lines(h, r)]
    assert sum(tries) == attempts, "access-log tries disagree with the backends' counters"


def test_last_503_reaches_the_client_when_fewer_backends_than_tries(heliosd, scripted):
    bks = [scripted(name, 503) for name in ("a", "b")]
    h = start_proxy(heliosd, bks, {"tries": 3, "on": [503], "budget_min": 10})
    status, headers, body = http_request(h.port, "/x")
    assert sum(b.requests for b in bks) == 2
    assert status == 503 and headers.get("x-backend") in ("a", "b"), (
        f"every backend answered 503 but the client got {status} {body!r}; error log:\n{h.stderr()[-1500:]}"
    )


def test_per_try_timeout_moves_on_to_another_backend(heliosd, scripted):
    slow, good = scripted("slow", "hang"), scripted("good")
    h = start_proxy(heliosd, [slow, good],
                    {"tries": 2, "on": ["timeout"], "per_try_timeout": "300ms", "budget_percent": 100})
    for i in range(4):
        t0 = time.monotonic()
        status, headers, _ = http_request(h.port, f"/t/{i}", timeout=10)
        took = time.monotonic() - t0
        assert status == 200 and headers.get("x-backend") == "good", status
        assert took < 2.0, f"request {i} took {took:.2f}s"
    assert slow.requests > 0, "the hanging backend was never tried"


def test_tries_1_passes_the_503_through(heliosd, scripted):
    bad, good = scripted("bad", 503), scripted("good")
    h = start_proxy(heliosd, [bad, good], {"tries": 1, "on": [503]})
    n = 4
    statuses = Counter(http_request(h.port, f"/n/{i}")[0] for i in range(n))
    assert statuses[503] >= 1, f"the 503 backend's answer never reached a client: {statuses}"
    assert statuses[503] == bad.requests and statuses[200] == good.requests
    assert bad.requests + good.requests == n, "a request was sent upstream twice"


@pytest.mark.parametrize(
    "retries,where",
    [
        ({"on": ["bogus"]}, "retries.on[0]"),
        ({"on": ["reset", 500]}, "retries.on[1]"),
        ({"tries": 0}, "retries.tries"),
        ({"tries": 11}, "retries.tries"),
    ],
    ids=["unknown-condition", "unknown-status", "tries-0", "tries-11"],
)
def test_bad_retries_config_is_a_located_error(check_config, retries, where):
    cfg = make_config(
        free_port(),
        [proxy_route("app", "app")],
        {"app": upstream_conf({"name": "a", "address": "127.0.0.1:1"}, retries=retries)},
    )
    p = check_config(cfg, "h.yaml")
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert re.search(rf"{re.escape(str(p.path))}:\d+:\d+: .*{re.escape(where)}", p.stderr), p.stderr


# ---- request buffering: a body held whole can be sent again ----


def test_a_buffered_put_body_is_replayed_on_another_backend_after_a_reset(heliosd, scripted):
    """PUT is idempotent; its 1000-byte body fits request_buffering (64k by
    default), so heliosd holds it whole and a reset before the answer sends
    it again to the other backend."""
    bad, good = scripted("bad", "reset"), scripted("good")
    h = start_proxy(heliosd, [bad, good], {"budget_percent": 100, "budget_min": 100})
    n = 6
    for i in range(n):
        status, headers, _ = http_request(h.port, f"/u/{i}", method="PUT", body=b"y" * 1000)
        assert status == 200, f"PUT {i}: {status}"
        assert headers.get("x-backend") == "good"
    assert bad.methods["PUT"] > 0, "the resetting backend was never tried: nothing proves a replay"
    assert good.methods["PUT"] == n


def test_without_buffering_a_put_whose_body_was_sent_is_not_retried(heliosd, scripted):
    bad, good = scripted("bad", "reset"), scripted("good")
    h = start_proxy(heliosd, [bad, good], {"budget_percent": 100, "budget_min": 100},
                    request_buffering=0)
    statuses = Counter()
    for i in range(6):
        status, _, _ = http_request(h.port, f"/u/{i}", method="PUT", body=b"y" * 1000)
        statuses[status] += 1
    assert statuses[502] >= 1 and bad.methods["PUT"] == statuses[502], (statuses, bad.methods)
