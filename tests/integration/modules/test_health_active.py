"""health_active: periodic HTTP/TCP probes mark backends down and back up.

Every test drives real hx_backend processes and reads the core's transition
lines from heliosd's stderr: `backend NAME (ADDR) is now unhealthy` / `is now
healthy`.
"""

import re
import threading
import time

from conftest import (
    SANITIZER_MARKERS,
    free_port,
    http_request,
    make_config,
    proxy_route,
    upstream_conf,
    wait_for,
)

INTERVAL = 0.2
TIMEOUT = 0.2
FALL = 2
RISE = 2


def health(**cfg):
    base = {"interval": "200ms", "timeout": "200ms", "fall": FALL, "rise": RISE, "path": "/"}
    base.update(cfg)
    return {"module": "health_active", "config": base}


def down_rx(name):
    return re.compile(rf"backend {re.escape(name)} \([^)]*\) is now unhealthy")


def up_rx(name):
    return re.compile(rf"backend {re.escape(name)} \([^)]*\) is now healthy")


def poll_stderr(h, rx, since, timeout):
    """Tight poll (20 ms) so the returned time is a fair measure of when the
    line appeared. Returns time.monotonic() at the first sighting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rx.search(h.stderr()[since:]):
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"no {rx.pattern!r} within {timeout}s; log tail:\n{h.stderr()[-3000:]}")


class Load:
    """A bounded load of GETs from a few threads; records every outcome."""

    def __init__(self, port, threads=3, max_seconds=20.0):
        self.port = port
        self.results = []  # (monotonic time, status or exception repr, X-Backend)
        self.lock = threading.Lock()
        self.stop_evt = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self.stop_evt.is_set() and time.monotonic() < self.deadline:
            try:
                status, headers, _ = http_request(self.port, "/", timeout=10)
                rec = (time.monotonic(), status, headers.get("x-backend"))
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                rec = (time.monotonic(), repr(e), None)
            with self.lock:
                self.results.append(rec)
            time.sleep(0.005)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_evt.set()
        for t in self.threads:
            t.join(timeout=15)

    def snapshot(self):
        with self.lock:
            return list(self.results)


def test_killed_backend_is_marked_down_in_time_and_readmitted_without_client_errors(backends, heliosd):
    a, b, c = backends("a", "b", "c")
    port = free_port()
    cfg = make_config(
        port,
        [proxy_route("app", "app")],
        {"app": upstream_conf(a, b, c)},
        modules=[health()],
    )
    h = heliosd(cfg)
    h.wait_stderr(r"health_active.*probing 1 upstream", timeout=10)

    with Load(port) as load:
        wait_for(lambda: len(load.snapshot()) >= 30, 10, what="some load before the kill")
        mark = h.err_mark()
        b.kill()
        t_kill = time.monotonic()
        t_down = poll_stderr(h, down_rx("b"), mark, timeout=10)
        detect = t_down - t_kill
        bound = INTERVAL * FALL + TIMEOUT + 1.5
        assert detect <= bound, f"marked down {detect:.2f}s after the kill (bound {bound:.2f}s)"

        mark = h.err_mark()
        b.restart()
        t_restart = time.monotonic()
        poll_stderr(h, up_rx("b"), mark, timeout=10)
        t_up = time.monotonic()
        # at least RISE probes must have reached the new process
        assert t_up - t_restart >= INTERVAL * (RISE - 1) * 0.5
        wait_for(
            lambda: any(r[2] == "b" and r[0] > t_up for r in load.snapshot()),
            10,
            what="traffic to the readmitted backend",
        )
        # keep the load going for the bounded ~6 s in total
        remaining = 6.0 - (time.monotonic() - load.snapshot()[0][0])
        if remaining > 0:
            time.sleep(remaining)

    results = load.snapshot()
    errors = [r for r in results if r[1] != 200]
    assert not errors, f"{len(errors)} client-visible errors of {len(results)}: {errors[:5]}"
    assert len(results) > 50
    assert {r[2] for r in results} >= {"a", "b", "c"}


def test_body_contains_mismatch_marks_down_and_match_stays_up(backends, heliosd):
    good, bad = backends("good", "bad")
    port = free_port()
    cfg = make_config(
        port,
        [proxy_route("g", "ug", {"prefix": "/g"}), proxy_route("b", "ub", {"prefix": "/"})],
        {"ug": upstream_conf(good), "ub": upstream_conf(bad)},
        modules=[
            health(upstreams=["ug"], body_contains="hello from good"),
            health(upstreams=["ub"], body_contains="this text is not in the body"),
        ],
    )
    h = heliosd(cfg)
    m = h.wait_stderr(r"backend bad \([^)]*\) is now unhealthy[^\n]*", timeout=10)
    assert "body does not contain" in m.group(0)
    wait_for(lambda: good.stats()["requests"] >= 5, 10, what="several probes of the good backend")
    assert not down_rx("good").search(h.stderr())
    status, _, _ = h.get("/")
    assert status == 503  # the only backend of ub is down


def test_expected_status_ranges_decide_health(backends, heliosd):
    ok, notok = backends("ok", "notok")
    port = free_port()
    cfg = make_config(
        port,
        [proxy_route("o", "uo", {"prefix": "/o"}), proxy_route("n", "un", {"prefix": "/"})],
        {"uo": upstream_conf(ok), "un": upstream_conf(notok)},
        modules=[
            health(upstreams=["uo"], path="/status/503", expected_status=[200, "500-503"]),
            health(upstreams=["un"], path="/status/404", expected_status=["200-399"]),
        ],
    )
    h = heliosd(cfg)
    m = h.wait_stderr(r"backend notok \([^)]*\) is now unhealthy[^\n]*", timeout=10)
    assert "status 404" in m.group(0)
    wait_for(lambda: ok.stats()["requests"] >= 5, 10, what="several probes of the ok backend")
    assert not down_rx("ok").search(h.stderr())


def test_tcp_probe_marks_down_on_refused_connect_and_up_after_restart(backends, heliosd):
    a, b = backends("a", "b")
    port = free_port()
    cfg = make_config(
        port,
        [proxy_route("app", "app")],
        {"app": upstream_conf(a, b)},
        modules=[{"module": "health_active",
                  "config": {"type": "tcp", "interval": "200ms", "timeout": "200ms",
                             "fall": FALL, "rise": RISE}}],
    )
    h = heliosd(cfg)
    h.wait_stderr(r"health_active.*probing 1 upstream.*tcp", timeout=10)
    mark = h.err_mark()
    b.kill()
    m = h.wait_stderr(r"backend b \([^)]*\) is now unhealthy[^\n]*", since=mark, timeout=10)
    assert "connect" in m.group(0)
    # tcp probes send nothing: with b down every request lands on a
    for _ in range(5):
        status, headers, _ = h.get("/")
        assert status == 200 and headers.get("x-backend") == "a"
    mark = h.err_mark()
    b.restart()
    h.wait_stderr(r"backend b \([^)]*\) is now healthy", since=mark, timeout=10)
    assert b.stats()["requests"] == 0  # plain connects, no HTTP requests
    wait_for(lambda: h.get("/")[1].get("x-backend") == "b", 10, what="traffic to b again")


def test_hanging_backend_fails_by_timeout(backends, heliosd):
    a = backends("a")
    port = free_port()
    cfg = make_config(
        port,
        [proxy_route("app", "app")],
        {"app": upstream_conf(a)},
        modules=[health(path="/hang")],
    )
    h = heliosd(cfg)
    m = h.wait_stderr(r"backend a \([^)]*\) is now unhealthy[^\n]*", timeout=10)
    assert "timed out" in m.group(0)


def test_bad_config_keys_are_located_errors(check_config):
    port = free_port()
    cfg = make_config(
        port,
        [{"name": "s", "match": {"prefix": "/"},
          "handler": {"module": "static_response", "config": {"status": 200, "body": "x"}}}],
        modules=[
            {"module": "health_active",
             "config": {"intervall": "1s", "type": "udp", "expected_status": ["600"],
                        "rise": 0, "path": "no-slash", "jitter": "150%"}},
            {"module": "health_active",
             "config": {"type": "tcp", "body_contains": "x", "timeout": "soon"}},
        ],
    )
    rc, _, err = check_config(cfg)
    assert rc != 0, err
    for marker in SANITIZER_MARKERS:
        assert marker not in err
    expected = [
        r"heliosd\.yaml:\d+:\d+: .*intervall",
        r"heliosd\.yaml:\d+:\d+: .*type.*expected http or tcp, got udp",
        r"heliosd\.yaml:\d+:\d+: .*expected_status.*600",
        r"heliosd\.yaml:\d+:\d+: .*rise",
        r"heliosd\.yaml:\d+:\d+: .*path.*starting with '/'",
        r"heliosd\.yaml:\d+:\d+: .*jitter.*percentage",
        r"heliosd\.yaml:\d+:\d+: .*body_contains.*only used with type: http",
        r"heliosd\.yaml:\d+:\d+: .*timeout.*duration",
    ]
    for rx in expected:
        assert re.search(rx, err), f"no line matching {rx!r} in:\n{err}"


def test_unknown_upstream_stops_startup(backends, heliosd):
    """A service that cannot start (here: probes for an upstream that does
    not exist) stops heliosd at startup with the module's message."""
    a = backends("a")
    port = free_port()
    cfg = make_config(
        port,
        [proxy_route("app", "app")],
        {"app": upstream_conf(a)},
        modules=[health(upstreams=["nosuch"])],
    )
    h = heliosd(cfg, start=False)
    h.expected_rc = 1
    h.start(wait=False)
    assert h.wait_exit(30) == 1
    assert "no upstream named nosuch" in h.stderr()
    assert "not starting: a module service failed to start" in h.stderr()


def test_a_down_backend_stays_down_across_a_reload_and_comes_back_when_probes_pass(backends, heliosd):
    """The core keeps the unhealthy verdict across a reload (D48); the new
    generation's checker confirms it with its first failed probe, so the
    core's grace (10 s) does not let the backend back in."""
    a, b = backends("a", "b")
    port = free_port()
    cfg = make_config(port, [proxy_route("app", "app")], {"app": upstream_conf(a, b)},
                      modules=[health()])
    h = heliosd(cfg)
    mark = h.err_mark()
    b.kill()
    h.wait_stderr(r"backend b \([^)]*\) is now unhealthy", since=mark, timeout=10)
    mark = h.err_mark()
    h.reload()
    h.wait_stderr(r"backend b \([^)]*\) keeps its verdict across the reload: unhealthy",
                  since=mark, timeout=10)
    h.wait_stderr(r"generation 2 is live", since=mark, timeout=10)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 11.5:  # past the core's grace
        status, headers, _ = h.get("/")
        assert status == 200 and headers.get("x-backend") == "a"
        time.sleep(0.25)
    assert "is healthy again" not in h.stderr()[mark:]
    b.restart()
    h.wait_stderr(r"backend b \([^)]*\) is now healthy", since=mark, timeout=10)
    wait_for(lambda: h.get("/")[1].get("x-backend") == "b", 10, what="traffic to b again")
