"""Passive health checks (health_passive) and the circuit breaker
(circuit_breaker), against real backends that can be told to fail.

hx_backend has no "fail every path" mode, so the failing backend is a tiny
threaded HTTP server in this file (FlakyBackend): its mode is switched by the
test (ok / fail with 500 / slow), and it counts requests and the most it
handled at once. The healthy backends are real hx_backend processes.
"""

import re
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import (
    RawConn,
    free_port,
    http_request,
    make_config,
    proxy_route,
    run_config_check,
    upstream_conf,
    wait_for,
    write_config_file,
)


class FlakyBackend:
    """An HTTP/1.1 server on 127.0.0.1 whose behaviour the test switches:
    "ok" answers 200, "fail" answers 500, "slow" answers 200 after SLOW s."""

    def __init__(self, name, slow=1.0):
        self.name = name
        self.mode = "ok"
        self.slow = slow
        self.requests = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with owner._lock:
                    owner.requests += 1
                    owner.active += 1
                    owner.max_active = max(owner.max_active, owner.active)
                    mode = owner.mode
                try:
                    if mode == "slow":
                        time.sleep(owner.slow)
                    status = 500 if mode == "fail" else 200
                    body = f"{owner.name} {mode}\n".encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with owner._lock:
                        owner.active -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def reset_counts(self):
        with self._lock:
            self.requests = 0
            self.max_active = self.active


@pytest.fixture
def flaky():
    started = []

    def make(name, **kw):
        f = FlakyBackend(name, **kw).start()
        started.append(f)
        return f

    yield make
    for f in started:
        f.stop()


def global_module(name, config):
    return {"module": name, "config": config}


def config_with(port, bks, modules, workers=1):
    return make_config(
        port,
        [proxy_route("app", "app")],
        {"app": upstream_conf(*bks)},
        workers=workers,
        modules=modules,
    )


def get_status(port, path="/"):
    status, _, _ = http_request(port, path)
    return status


# --------------------------------------------------------------------------
# health_passive


# With 2 workers the failures of one backend are counted across workers.
@pytest.mark.parametrize("workers", [1, 2])
def test_passive_ejects_backend_answering_500_and_readmits_it_after_timeout(heliosd, backends, flaky, workers):
    bad = flaky("bad")
    bad.mode = "fail"
    good = backends("good")
    port = free_port()
    h = heliosd(
        config_with(
            port,
            [{"name": "bad", "address": bad.address}, good],
            [global_module("health_passive", {"failures": 3, "window": "10s", "unhealthy_timeout": "2s", "statuses": [500]})],
            workers=workers,
        )
    )

    # Round robin alternates, so the bad backend sees its 3 failures quickly.
    for _ in range(20):
        get_status(port)
        if bad.requests >= 3:
            break
    h.wait_stderr(r"backend bad \(127\.0\.0\.1:\d+\) is now unhealthy: passive: 3 failures in 10s", timeout=5)
    assert bad.requests == 3, "ejected after exactly `failures` failed attempts"

    # Out: every request goes to the good backend.
    statuses = [get_status(port) for _ in range(20)]
    assert statuses == [200] * 20
    assert bad.requests == 3, "no traffic reaches an ejected backend"

    # The backend recovers; after unhealthy_timeout it is let back in.
    bad.mode = "ok"
    t0 = time.monotonic()
    h.wait_stderr(r"backend bad \(127\.0\.0\.1:\d+\) is now healthy", timeout=10)
    assert time.monotonic() - t0 < 6
    wait_for(lambda: get_status(port) == 200 and bad.requests > 3, timeout=10, what="traffic back on bad")
    for _ in range(10):
        assert get_status(port) == 200
    assert bad.requests >= 6


def test_passive_ignores_statuses_not_listed(heliosd, flaky):
    bad = flaky("bad")
    bad.mode = "fail"  # 500, not in the default [502, 503, 504]
    port = free_port()
    h = heliosd(
        config_with(
            port,
            [{"name": "bad", "address": bad.address}],
            [global_module("health_passive", {"failures": 2})],
        )
    )
    for _ in range(10):
        assert get_status(port) == 500
    assert bad.requests == 10
    assert "is now unhealthy" not in h.stderr()


# --------------------------------------------------------------------------
# circuit_breaker


BREAKER_RX = r"backend {name} \(127\.0\.0\.1:\d+\): circuit breaker {frm} -> {to}"


@pytest.mark.parametrize("workers", [1, 2])
def test_breaker_opens_admits_max_requests_trials_and_closes(heliosd, flaky, workers):
    fb = flaky("fb", slow=1.0)
    fb.mode = "fail"
    port = free_port()
    h = heliosd(
        config_with(
            port,
            [{"name": "fb", "address": fb.address}],
            [
                global_module(
                    "circuit_breaker",
                    {
                        "failures": 3,
                        "interval": "10s",
                        "open_timeout": "1s",
                        "max_requests": 2,
                        "success_threshold": 2,
                        "statuses": [500],
                    },
                )
            ],
            workers=workers,
        )
    )

    # closed -> open after exactly 3 failures; then the backend gets nothing.
    assert [get_status(port) for _ in range(3)] == [500] * 3
    h.wait_stderr(BREAKER_RX.format(name="fb", frm="closed", to="open"), timeout=5)
    assert get_status(port) == 503
    assert fb.requests == 3

    # A failed trial sends it back to open.
    mark = h.err_mark()
    h.wait_stderr(BREAKER_RX.format(name="fb", frm="open", to="half-open"), since=mark, timeout=5)
    assert get_status(port) == 500
    h.wait_stderr(BREAKER_RX.format(name="fb", frm="half-open", to="open"), since=mark, timeout=5)
    assert fb.requests == 4

    # Half-open again: 6 concurrent clients, a slow healthy backend. Exactly
    # max_requests trials reach it at once; the others are refused with 503.
    fb.mode = "slow"
    mark = h.err_mark()
    h.wait_stderr(BREAKER_RX.format(name="fb", frm="open", to="half-open"), since=mark, timeout=5)
    fb.reset_counts()
    results = []

    def client():
        results.append(get_status(port))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert fb.max_active == 2, f"{fb.max_active} concurrent trials, expected max_requests=2"
    assert fb.requests == 2
    assert sorted(results) == [200, 200, 503, 503, 503, 503]

    # Both trials succeeded: success_threshold 2 closes it; traffic flows.
    h.wait_stderr(BREAKER_RX.format(name="fb", frm="half-open", to="closed"), since=mark, timeout=5)
    fb.mode = "ok"
    assert [get_status(port) for _ in range(5)] == [200] * 5


def test_breaker_opens_on_failure_ratio_with_min_requests(heliosd, flaky):
    fb = flaky("fb")
    port = free_port()
    h = heliosd(
        config_with(
            port,
            [{"name": "fb", "address": fb.address}],
            [
                global_module(
                    "circuit_breaker",
                    {"failures": 0, "failure_ratio": 0.5, "min_requests": 6, "interval": "10s", "statuses": [500]},
                )
            ],
        )
    )
    for _ in range(3):
        assert get_status(port) == 200
    fb.mode = "fail"
    # 3 ok + 2 failed = 5 attempts: below min_requests.
    assert [get_status(port) for _ in range(2)] == [500, 500]
    assert "circuit breaker" not in h.stderr()
    # 6 attempts, 3 failed: ratio 0.5 reached.
    assert get_status(port) == 500
    h.wait_stderr(BREAKER_RX.format(name="fb", frm="closed", to="open"), timeout=5)
    assert get_status(port) == 503


def test_all_breakers_open_gives_fast_503_with_retry_after(heliosd):
    dead = [{"name": f"dead{i}", "address": f"127.0.0.1:{free_port()}"} for i in range(2)]
    port = free_port()
    h = heliosd(
        config_with(
            port,
            dead,
            [global_module("circuit_breaker", {"failures": 2, "open_timeout": "60s"})],
        )
    )
    # Connect failures (retried on the other backend) open both breakers.
    for _ in range(10):
        get_status(port)
        text = h.stderr()
        if all(re.search(BREAKER_RX.format(name=d["name"], frm="closed", to="open"), text) for d in dead):
            break
    for d in dead:
        h.wait_stderr(BREAKER_RX.format(name=d["name"], frm="closed", to="open"), timeout=5)

    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    times = []
    conn = RawConn(port)
    try:
        for _ in range(20):
            t0 = time.perf_counter()
            conn.send(req)
            r = conn.read_response()
            times.append(time.perf_counter() - t0)
            assert r is not None and r.status == 503
            assert r.header("Retry-After") is not None
            if r.header("Connection", "").lower() == "close":
                conn.close()
                conn = RawConn(port)
    finally:
        conn.close()
    median_ms = statistics.median(times) * 1000
    print(f"median 503 latency {median_ms:.3f} ms")
    assert median_ms < 5, f"median 503 latency {median_ms:.2f} ms"


# --------------------------------------------------------------------------
# configuration errors


def _check(tmp_path, modules):
    cfg = make_config(
        free_port(),
        [proxy_route("app", "app")],
        {"app": {"backends": [{"address": "127.0.0.1:9"}]}},
        modules=modules,
    )
    p = run_config_check(write_config_file(tmp_path / "conf", cfg).parent)
    return p.returncode, p.stderr


def test_config_errors_are_located(tmp_path):
    rc, err = _check(
        tmp_path,
        [
            global_module("health_passive", {"failures": 0, "window": "0s", "statuses": [500, 404], "bogus": 1}),
            global_module("circuit_breaker", {"failure_ratio": 1.5, "max_requests": 0, "statuses": "500"}),
            global_module("circuit_breaker", {"failures": 0}),
        ],
    )
    assert rc != 0
    loc = r"heliosd\.yaml:\d+:\d+: "
    for pattern in (
        loc + r"modules\[0\]\S*failures\S*: .*between 1 and 65535",
        loc + r"modules\[0\]\S*window\S*: must be greater than 0",
        loc + r"modules\[0\]\S*statuses\[1\]\S*: expected a status code between 500 and 599, got \"404\"",
        loc + r"modules\[0\]\S*bogus",
        loc + r"modules\[1\]\S*failure_ratio\S*: expected a number between 0 and 1",
        loc + r"modules\[1\]\S*max_requests\S*: ",
        loc + r"modules\[1\]\S*statuses\S*: expected a list of 5xx status codes",
        loc + r"modules\[2\]\S*failures\S*: the breaker could never open",
    ):
        assert re.search(pattern, err), f"no line matching {pattern!r} in:\n{err}"


def test_valid_config_passes_check(tmp_path):
    rc, err = _check(
        tmp_path,
        [
            global_module("health_passive", {"failures": 5, "window": "10s", "unhealthy_timeout": "30s", "statuses": [500, 502]}),
            global_module("circuit_breaker", None),
        ],
    )
    assert rc == 0, err


# --------------------------------------------------------------------------
# panic threshold


def start_three_with_passive(heliosd, backends, **upstream):
    bks = [backends(n) for n in ("a", "b", "c")]
    port = free_port()
    h = heliosd(make_config(
        port, [proxy_route("app", "app")], {"app": upstream_conf(*bks, **upstream)},
        modules=[global_module("health_passive", {"failures": 3, "window": "10s",
                                                  "unhealthy_timeout": "30s", "statuses": [503]})]))
    # One path answers 503 on every backend: passive health, which cannot
    # tell a path from a backend, ejects all three.
    for _ in range(30):
        get_status(port, "/status/503")
    for n in ("a", "b", "c"):
        h.wait_stderr(rf"backend {n} \(127\.0\.0\.1:\d+\) is now unhealthy", timeout=5)
    return h, port


def test_without_a_panic_threshold_one_bad_path_takes_the_upstream_down(heliosd, backends):
    h, port = start_three_with_passive(heliosd, backends)
    assert get_status(port, "/") == 503


def test_panic_threshold_keeps_serving_when_health_ejects_every_backend(heliosd, backends):
    h, port = start_three_with_passive(heliosd, backends, panic_threshold=50)
    statuses = [get_status(port, "/") for _ in range(12)]
    assert statuses == [200] * 12, statuses
    h.wait_stderr(r"upstream app: panic mode: 0 of 3 backends healthy, below panic_threshold 50%",
                  timeout=5)


def test_panic_threshold_is_a_located_config_error_out_of_range(check_config, backends):
    cfg = make_config(free_port(), [proxy_route("app", "app")],
                      {"app": upstream_conf(backends("a"), panic_threshold=150)})
    rc, _, err = check_config(cfg)
    assert rc == 1 and "panic_threshold" in err


# --------------------------------------------------------------------------
# verdicts across a reload (runtime/state.c, docs/decisions.md D48)

BREAKER_CFG = {"failures": 3, "interval": "10s", "open_timeout": "60s", "max_requests": 1,
               "success_threshold": 1, "statuses": [500]}


def test_an_open_breaker_is_half_open_after_a_reload_and_its_trial_decides(heliosd, flaky):
    fb = flaky("fb")
    fb.mode = "fail"
    port = free_port()
    cfg = config_with(port, [{"name": "fb", "address": fb.address}],
                      [global_module("circuit_breaker", BREAKER_CFG)], workers=2)
    h = heliosd(cfg)
    assert [get_status(port) for _ in range(3)] == [500] * 3
    h.wait_stderr(BREAKER_RX.format(name="fb", frm="closed", to="open"), timeout=5)
    assert get_status(port) == 503
    mark = h.err_mark()
    h.reload()
    h.wait_stderr(r"backend fb \(127\.0\.0\.1:\d+\) keeps its verdict across the reload: "
                  r"breaker half-open", since=mark, timeout=10)
    h.wait_stderr(r"generation 2 is live", since=mark, timeout=10)
    # one trial reaches it; the new generation's breaker judges it: open again
    assert get_status(port) == 500
    h.wait_stderr(BREAKER_RX.format(name="fb", frm="half-open", to="open"), since=mark, timeout=5)
    assert get_status(port) == 503
    assert fb.requests == 4
    # and a successful trial after another reload closes it
    fb.mode = "ok"
    mark = h.err_mark()
    h.reload()
    h.wait_stderr(r"generation 3 is live", since=mark, timeout=10)
    assert get_status(port) == 200
    h.wait_stderr(BREAKER_RX.format(name="fb", frm="half-open", to="closed"), since=mark, timeout=5)
    assert [get_status(port) for _ in range(4)] == [200] * 4


def test_verdicts_no_module_confirms_are_lifted_after_the_grace(heliosd, backends, flaky):
    bad = flaky("bad")
    bad.mode = "fail"
    good = backends("good")
    port = free_port()
    passive = {"failures": 2, "window": "10s", "unhealthy_timeout": "60s", "statuses": [500]}
    breaker = {**BREAKER_CFG, "failures": 2}
    bks = [{"name": "bad", "address": bad.address}, good]
    h = heliosd(config_with(port, bks, [global_module("health_passive", passive),
                                        global_module("circuit_breaker", breaker)]))
    for _ in range(10):
        get_status(port)
        if bad.requests >= 2:
            break
    h.wait_stderr(r"backend bad \(127\.0\.0\.1:\d+\) is now unhealthy", timeout=5)
    h.wait_stderr(BREAKER_RX.format(name="bad", frm="closed", to="open"), timeout=5)
    before = bad.requests
    # the new files have neither module: nothing will confirm the verdicts
    mark = h.err_mark()
    bad.mode = "ok"
    t0 = time.monotonic()
    h.reload(config_with(port, bks, []))
    h.wait_stderr(r"backend bad \(127\.0\.0\.1:\d+\) keeps its verdict across the reload: "
                  r"unhealthy breaker half-open", since=mark, timeout=10)
    h.wait_stderr(r"generation 2 is live", since=mark, timeout=10)
    assert [get_status(port) for _ in range(6)] == [200] * 6
    assert bad.requests == before, "still out right after the reload"
    h.wait_stderr(r"backend bad \(127\.0\.0\.1:\d+\) is healthy again: its unhealthy verdict "
                  r"from before the reload was not confirmed within 10 s", since=mark, timeout=20)
    h.wait_stderr(r"backend bad \(127\.0\.0\.1:\d+\): circuit breaker closed: its state from "
                  r"before the reload was not confirmed", since=mark, timeout=5)
    assert time.monotonic() - t0 >= 9
    wait_for(lambda: get_status(port) == 200 and bad.requests > before, timeout=10,
             what="traffic back on bad")
