"""`heliosd bench` (modules/bench): the load generator, run as a module
command against real servers on 127.0.0.1: hx_backend (which counts what it
answers, /stats), heliosd (HTTP/1.1, h2c, h2 and HTTP/1.1 over TLS with ALPN
and SNI), and small Python servers for what neither does (a backend that
stalls 1 s every 100 requests, one that answers garbage, one that records
the request).

Every run is bounded by -n or -d and a subprocess timeout; most take well
under a second. The histogram's error bound is checked in C against exact
percentiles (tests/unit/test_bench_hist.c).
"""

import json
import os
import pty
import select
import signal
import socket
import socketserver
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import (
    HELIOSD,
    MODULE_DIR,
    SANITIZER_MARKERS,
    free_port,
    is_sanitizer_build,
    make_ca,
    make_cert,
    make_config,
    proxy_route,
    upstream_conf,
    wait_for,
)

RUN_TIMEOUT = 60


def bench_cmd(url, *args):
    return [str(HELIOSD), "bench", "-m", str(MODULE_DIR), url, *map(str, args)]


def check_clean(p):
    for marker in SANITIZER_MARKERS:
        assert marker not in p.stderr, p.stderr


def bench(url, *args, expect_rc=0):
    """Runs heliosd bench --json; returns the parsed document."""
    p = subprocess.run(bench_cmd(url, "--json", *args), capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    check_clean(p)
    assert p.returncode == expect_rc, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout)


def bench_text(url, *args):
    p = subprocess.run(bench_cmd(url, *args), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    check_clean(p)
    return p


# ---------------------------------------------------------------------------
# Python servers


class PyBackend:
    """A threaded HTTP/1.1 server that counts requests, keeps the last one,
    and may stall: request number k (from 1) sleeps STALL s when
    k % every == at."""

    def __init__(self, stall=0.0, every=100, at=50, reply=None):
        self.count = 0
        self.last = None
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with owner.lock:
                    owner.count += 1
                    k = owner.count
                    owner.last = (self.command, self.path,
                                  {k.lower(): v for k, v in self.headers.items()}, body)
                if stall and k % every == at:
                    time.sleep(stall)
                # one write: a head and a body in two would meet Nagle and
                # the client's delayed ACK (40 ms per request)
                self.wfile.write(reply or b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")

            do_GET = do_POST = do_PUT = handle_one

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pybackend():
    made = []

    def make(**kw):
        b = PyBackend(**kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


# ---------------------------------------------------------------------------
# counts


@pytest.mark.parametrize("conns,threads,n", [(1, 1, 500), (8, 2, 2000), (5, 3, 1001)])
def test_request_counts_are_exact_against_a_counting_backend(backend, conns, threads, n):
    backend.reset_stats()
    d = bench(f"http://127.0.0.1:{backend.port}/", "-n", n, "-c", conns, "-t", threads,
              "--warmup", 0)
    assert d["requests"] == n
    assert d["status"]["2xx"] == n
    assert d["errors"]["total"] == 0 and d["unfinished"] == 0
    assert d["options"]["connections"] == conns and d["options"]["threads"] == threads
    assert d["connections"]["http1"] == d["connections"]["opened"] <= conns
    s = backend.stats()
    assert s["requests"] == n
    # keep-alive: one connection each (used or not), plus the one asking /stats
    assert s["connections"] == conns + 1


def test_warm_up_is_sent_but_not_counted(backend):
    backend.reset_stats()
    d = bench(f"http://127.0.0.1:{backend.port}/", "-d", "0.6", "--warmup", "0.4", "-c", 4,
              "-t", 2)
    assert d["warmup"]["requests"] > 0 and d["requests"] > 0
    assert 0.55 <= d["duration_s"] <= 0.65
    answered = backend.stats()["requests"]
    sent = d["requests"] + d["warmup"]["requests"]
    # an unfinished request (cut off by the end) may or may not have been answered
    assert sent <= answered <= sent + d["unfinished"], (d, answered)
    assert d["requests_per_s"] == pytest.approx(d["requests"] / d["duration_s"], rel=1e-3)


def test_a_fixed_budget_with_warm_up_counts_only_measured_requests(backend):
    backend.reset_stats()
    d = bench(f"http://127.0.0.1:{backend.port}/", "-n", 300, "--warmup", "0.3", "-c", 3, "-t", 1)
    assert d["requests"] == 300 and d["warmup"]["requests"] > 0
    assert backend.stats()["requests"] == 300 + d["warmup"]["requests"]


# ---------------------------------------------------------------------------
# status classes and errors


def test_status_classes_are_counted(backend):
    for path, key in (("/status/503", "5xx"), ("/status/404", "4xx"), ("/status/301", "3xx"),
                      ("/status/204", "2xx")):
        d = bench(f"http://127.0.0.1:{backend.port}{path}", "-n", 40, "-c", 2, "-t", 1,
                  "--warmup", 0)
        assert d["status"][key] == 40, (path, d["status"])
        assert sum(d["status"].values()) == 40
        assert d["requests"] == 40 and d["errors"]["total"] == 0  # a status is not an error


def test_a_closed_port_gives_connect_errors():
    port = free_port()  # nothing listens there
    d = bench(f"http://127.0.0.1:{port}/", "-d", "0.5", "--warmup", 0, "-c", 2, "-t", 1)
    assert d["requests"] == 0
    assert d["errors"]["connect"] > 0 and d["errors"]["total"] == d["errors"]["connect"]
    assert "refused" in d["error_messages"]["connect"].lower()
    # a pause after each failed connect: no busy loop on a closed port
    assert d["errors"]["connect"] < 2 * 0.5 / 0.01 + 10


def test_timeouts_truncated_and_reset_responses_are_errors_of_their_kind(backend):
    d = bench(f"http://127.0.0.1:{backend.port}/hang", "-d", "0.8", "--warmup", 0, "-c", 2,
              "-t", 1, "--timeout", "0.25")
    assert d["errors"]["timeout"] >= 2 and d["requests"] == 0
    # the server closes in the middle of each body: every request fails once
    d = bench(f"http://127.0.0.1:{backend.port}/die?after=10", "-n", 30, "--warmup", 0, "-c", 3,
              "-t", 1)
    assert d["errors"]["read"] == 30 and d["requests"] == 0 and d["errors"]["total"] == 30
    assert "before the response was complete" in d["error_messages"]["read"]
    d = bench(f"http://127.0.0.1:{backend.port}/reset", "-n", 20, "--warmup", 0, "-c", 2, "-t", 1)
    assert d["errors"]["read"] == 20 and d["requests"] == 0


def test_a_malformed_response_is_a_parse_error(pybackend):
    b = pybackend(reply=b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    d = bench(f"http://127.0.0.1:{b.port}/", "-n", 10, "--warmup", 0, "-c", 1, "-t", 1)
    assert d["errors"]["parse"] == 10 and d["requests"] == 0
    assert "malformed response" in d["error_messages"]["parse"]


def test_h2_against_an_http1_only_server_is_a_parse_error(backend):
    d = bench(f"http://127.0.0.1:{backend.port}/", "--http", "http2", "-d", "0.3", "--warmup", 0,
              "-c", 1, "-t", 1)
    assert d["requests"] == 0 and d["errors"]["parse"] > 0
    assert "SETTINGS" in d["error_messages"]["parse"]


# ---------------------------------------------------------------------------
# HTTP/1.1 and HTTP/2 against heliosd


@pytest.fixture
def proxied(heliosd, backend):
    port = free_port()
    h = heliosd(make_config(port, [proxy_route("app", "app")], {"app": upstream_conf(backend)}))
    backend.reset_stats()
    return h, backend


def test_h1_and_h2c_through_heliosd(proxied):
    h, backend = proxied
    url = f"http://127.0.0.1:{h.port}/"
    d1 = bench(url, "--http", "http1", "-n", 400, "-c", 4, "-t", 2, "--warmup", 0)
    assert d1["requests"] == 400 and d1["connections"]["http1"] >= 1
    assert d1["connections"]["http2"] == 0
    d2 = bench(url, "--http", "http2", "--streams", 8, "-n", 600, "-c", 3, "-t", 1,
               "--warmup", 0)
    assert d2["requests"] == 600 and d2["status"]["2xx"] == 600
    assert d2["connections"]["http2"] == d2["connections"]["opened"] >= 1
    assert d2["connections"]["http1"] == 0 and d2["errors"]["total"] == 0
    # auto on http:// is HTTP/1.1
    d3 = bench(url, "-n", 50, "-c", 1, "-t", 1, "--warmup", 0)
    assert d3["connections"]["http1"] == 1 and d3["connections"]["http2"] == 0
    assert backend.stats()["requests"] == 1050


def test_body_method_and_headers_reach_the_server_on_h1_and_h2(heliosd, pybackend, tmp_path):
    b = pybackend()
    port = free_port()
    h = heliosd(make_config(port, [proxy_route("app", "app")],
                            {"app": upstream_conf({"name": "py", "address": f"127.0.0.1:{b.port}"})}))
    body = tmp_path / "body.bin"
    body.write_bytes(b"x" * 70000 + b"end")
    for mode in ("http1", "http2"):
        d = bench(f"http://127.0.0.1:{port}/up?q=1", "--http", mode, "-n", 5, "-c", 1, "-t", 1,
                  "--warmup", 0, "--body-file", body, "-X", "PUT", "-H", "X-Bench: yes",
                  "-H", "Host: named.test")
        assert d["requests"] == 5 and d["status"]["2xx"] == 5
        assert d["options"]["method"] == "PUT" and d["options"]["body_bytes"] == 70003
        method, path, headers, got = b.last
        assert (method, path) == ("PUT", "/up?q=1"), mode
        assert headers.get("x-bench") == "yes" and headers.get("host") == "named.test", mode
        assert got == b"x" * 70000 + b"end", mode
    assert b.count == 10


def tls_heliosd(heliosd, backend, tmp_path, alpn=None):
    ca = make_ca(tmp_path, "ca")
    a = make_cert(tmp_path, ca, "a.test", ["a.test"])
    b = make_cert(tmp_path, ca, "b.test", ["b.test"])
    port = free_port()
    tls = {"certificates": [{"cert": str(a[0]), "key": str(a[1])},
                            {"cert": str(b[0]), "key": str(b[1])}]}
    if alpn:
        tls["alpn"] = alpn
    cfg = make_config(port, [proxy_route("app", "app")], {"app": upstream_conf(backend)},
                      listeners=[{"address": f"127.0.0.1:{port}", "tls": tls}])
    return heliosd(cfg), ca


def test_h2_and_h1_over_tls_by_alpn_with_sni_and_verification(heliosd, backend, tmp_path):
    h, ca = tls_heliosd(heliosd, backend, tmp_path)
    common = ["--connect", f"127.0.0.1:{h.port}", "--cacert", ca[1], "--warmup", 0, "-c", 2,
              "-t", 1]
    # b.test is heliosd's second certificate: it verifies only if SNI chose it
    url = f"https://b.test:{h.port}/"
    d = bench(url, "-n", 300, *common)
    assert d["requests"] == 300 and d["errors"]["total"] == 0
    assert d["connections"]["http2"] == d["connections"]["opened"] >= 1  # auto picks h2 by ALPN
    d = bench(url, "-n", 200, "--http", "http1", *common)
    assert d["requests"] == 200 and d["connections"]["http1"] >= 1
    assert d["connections"]["http2"] == 0
    d = bench(url, "-n", 200, "--http", "http2", "--streams", 4, *common)
    assert d["requests"] == 200 and d["connections"]["http2"] >= 1
    # a name the server has no certificate for fails verification
    d = bench(f"https://c.test:{h.port}/", "-d", "0.3", *common)
    assert d["requests"] == 0 and d["errors"]["tls"] > 0
    assert "mismatch" in d["error_messages"]["tls"]
    # without --cacert nothing is verified (wrk and h2load do not verify either)
    d = bench(f"https://127.0.0.1:{h.port}/", "-n", 50, "--warmup", 0, "-c", 1, "-t", 1)
    assert d["requests"] == 50


def test_http2_is_refused_when_the_server_does_not_select_it_by_alpn(heliosd, backend, tmp_path):
    h, ca = tls_heliosd(heliosd, backend, tmp_path, alpn=["http/1.1"])
    url = f"https://127.0.0.1:{h.port}/"
    d = bench(url, "--http", "http2", "-d", "0.3", "--warmup", 0, "-c", 1, "-t", 1)
    assert d["requests"] == 0 and d["errors"]["tls"] > 0
    assert "did not select h2" in d["error_messages"]["tls"]
    d = bench(url, "-n", 30, "--warmup", 0, "-c", 1, "-t", 1)  # auto falls back to HTTP/1.1
    assert d["requests"] == 30 and d["connections"]["http1"] == 1


# ---------------------------------------------------------------------------
# the JSON document

LATENCY_KEYS = ["count", "min", "mean", "stdev", "p50", "p90", "p99", "p99_9", "p99_99", "max"]
SCHEMA = {
    "tool": str,
    "version": str,
    "options": {
        "url": str, "duration_s": (int, float), "warmup_s": (int, float), "connections": int,
        "threads": int, "rate": (int, float, type(None)), "requests": (int, type(None)),
        "http": str, "streams": int, "method": str, "headers": list, "body_bytes": int,
        "timeout_s": (int, float), "cacert": (str, type(None)), "connect": (str, type(None)),
    },
    "mode": str,
    "interrupted": bool,
    "duration_s": (int, float),
    "requests": int,
    "requests_per_s": (int, float),
    "bytes": int,
    "bytes_per_s": (int, float),
    "unfinished": int,
    "warmup": {"duration_s": (int, float), "requests": int},
    "connections": {"opened": int, "http1": int, "http2": int},
    "status": {k: int for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other")},
    "errors": {k: int for k in ("connect", "tls", "timeout", "read", "write", "parse", "reset",
                                "total")},
    "error_messages": dict,
    "latency_ms": {"relative_error": float, "uncorrected": {k: (int, float) for k in LATENCY_KEYS},
                   "corrected": None},
    "cpu": {"user_s": (int, float), "sys_s": (int, float), "us_per_request": (int, float)},
}


def check_schema(doc, schema, path="$"):
    assert isinstance(doc, dict), path
    assert set(doc) == set(schema), (path, sorted(set(doc) ^ set(schema)))
    for k, want in schema.items():
        if isinstance(want, dict):
            check_schema(doc[k], want, f"{path}.{k}")
        elif want is None:
            continue  # checked by the caller
        else:
            assert isinstance(doc[k], want) and not (want is int and isinstance(doc[k], bool)), \
                (f"{path}.{k}", doc[k])


def test_json_has_every_figure_with_stable_keys_and_types(backend):
    url = f"http://127.0.0.1:{backend.port}/"
    d = bench(url, "-n", 300, "-c", 2, "-t", 1, "--warmup", 0, "-H", "X-A: 1")
    check_schema(d, SCHEMA)
    assert d["tool"] == "heliosd bench" and d["mode"] == "closed" and d["interrupted"] is False
    assert d["options"]["headers"] == ["X-A: 1"] and d["options"]["url"] == url
    assert d["options"]["rate"] is None and d["options"]["requests"] == 300
    assert d["latency_ms"]["corrected"] is None  # closed loop: no schedule to correct against
    lat = d["latency_ms"]["uncorrected"]
    assert lat["count"] == 300
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= \
        lat["p99_99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert d["latency_ms"]["relative_error"] == pytest.approx(1 / 256, abs=1e-6)
    assert d["bytes"] > 300 * 13 and d["cpu"]["us_per_request"] > 0
    # open loop: both latencies, with the same keys
    d = bench(url, "-n", 100, "-R", 1000, "-c", 2, "-t", 1, "--warmup", 0)
    assert d["mode"] == "open" and d["options"]["rate"] == 1000
    assert set(d["latency_ms"]["corrected"]) == set(LATENCY_KEYS)
    assert d["latency_ms"]["corrected"]["count"] == d["latency_ms"]["uncorrected"]["count"] == 100


# ---------------------------------------------------------------------------
# open loop and coordinated omission


def test_open_loop_corrected_p99_shows_a_stall_the_uncorrected_one_hides(pybackend):
    # request k stalls 1 s when k % 100 == 50: 2 of 200 requests are slow,
    # so the uncorrected p99 (the 198th of 200) is a fast one; on the
    # schedule (100/s on one connection) every request due during a stall
    # waits for it, and the corrected percentiles show that.
    b = pybackend(stall=1.0, every=100, at=50)
    t0 = time.monotonic()
    d = bench(f"http://127.0.0.1:{b.port}/", "-R", 100, "-n", 200, "-c", 1, "-t", 1,
              "--warmup", 0)
    assert time.monotonic() - t0 < 15
    assert d["requests"] == 200 and b.count == 200
    co, un = d["latency_ms"]["corrected"], d["latency_ms"]["uncorrected"]
    assert un["max"] >= 1000 and co["max"] >= 1000  # both saw the stalls
    assert co["p99"] >= 800, co
    assert un["p99"] < 300, un  # a fast request; generous for a loaded or sanitizer machine
    assert co["p99"] > 3 * un["p99"] and co["p50"] > 5 * un["p50"]
    # the same server in a closed loop hides it too, and has nothing to correct
    d = bench(f"http://127.0.0.1:{b.port}/", "-n", 100, "-c", 1, "-t", 1, "--warmup", 0)
    assert d["latency_ms"]["corrected"] is None


def test_open_loop_keeps_the_rate(backend):
    backend.reset_stats()
    d = bench(f"http://127.0.0.1:{backend.port}/", "-R", 400, "-d", 1, "--warmup", 0, "-c", 4,
              "-t", 2)
    assert 340 <= d["requests"] <= 410, d["requests"]
    assert d["latency_ms"]["corrected"]["p50"] < 50


# ---------------------------------------------------------------------------
# the command line: Ctrl-C, progress line, HTTP/3, usage


def test_ctrl_c_prints_what_was_measured_so_far_and_exits_0(backend):
    p = subprocess.Popen(bench_cmd(f"http://127.0.0.1:{backend.port}/", "--json", "-d", 30,
                                   "--warmup", "0.2", "-c", 2, "-t", 1),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: backend.stats()["requests"] > 1000, 20, what="load to reach the backend")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    d = json.loads(out)
    assert d["interrupted"] is True and d["requests"] > 0
    assert 0 < d["duration_s"] < 20


def test_progress_line_only_on_a_terminal(backend):
    url = f"http://127.0.0.1:{backend.port}/"
    p = bench_text(url, "-d", "1.3", "--warmup", 0, "-c", 1, "-t", 1)
    assert p.returncode == 0 and "\r" not in p.stdout and "\x1b" not in p.stdout
    assert "requests" in p.stdout and "latency ms" in p.stdout
    # on a terminal: a live line every second, erased before the report
    master, slave = pty.openpty()
    proc = subprocess.Popen(bench_cmd(url, "-d", "1.3", "--warmup", 0, "-c", 1, "-t", 1),
                            stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 1)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=20)
    os.close(master)
    assert proc.returncode == 0
    assert b"\r\x1b[K" in out and b"req/s" in out and b"measuring" in out
    # and never with --json
    master, slave = pty.openpty()
    proc = subprocess.Popen(bench_cmd(url, "--json", "-n", 100, "--warmup", 0, "-c", 1, "-t", 1),
                            stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    proc.wait(timeout=RUN_TIMEOUT)
    out = b""
    while select.select([master], [], [], 0.2)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    json.loads(out.decode().replace("\r\n", "\n"))


def test_http3_answers_not_built_with_exit_2():
    p = bench_text("https://127.0.0.1:1/", "--http", "http3")
    assert p.returncode == 2
    assert "HTTP/3 is not built" in p.stderr


@pytest.mark.parametrize("args,rc,msg", [
    ([], 2, "a URL is required"),
    (["ftp://x/"], 2, "must start with http:// or https://"),
    (["http://127.0.0.1:1/", "-c", "2", "-t", "3"], 2, "more threads than connections"),
    (["http://127.0.0.1:1/", "--streams", "4", "--http", "http1"], 2, "applies to HTTP/2"),
    (["http://127.0.0.1:1/", "-d", "soon"], 2, "expected a duration"),
    (["http://127.0.0.1:1/", "-H", "NoColon"], 2, "expected 'Name: value'"),
    (["http://127.0.0.1:1/", "-H", "Content-Length: 3"], 2, "--body-file"),
    (["http://127.0.0.1:1/", "--frobnicate"], 2, "unknown option"),
    (["http://no-such-host.invalid/", "-n", "1"], 1, "cannot resolve"),
    (["http://127.0.0.1:1/", "--body-file", "/nonexistent/x"], 1, "No such file"),
])
def test_usage_and_setup_errors_exit_2_and_1(args, rc, msg):
    p = subprocess.run([str(HELIOSD), "bench", "-m", str(MODULE_DIR), *args], capture_output=True,
                       text=True, timeout=RUN_TIMEOUT)
    assert p.returncode == rc, (p.returncode, p.stderr)
    assert msg in p.stderr
    check_clean(p)


def test_help_lists_every_option_and_heliosd_lists_the_command():
    p = subprocess.run([str(HELIOSD), "bench", "-m", str(MODULE_DIR), "--help"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert p.returncode == 0
    for opt in ("--duration", "--warmup", "--connections", "--threads", "--rate", "--requests",
                "--http", "--streams", "--header", "--method", "--body-file", "--timeout",
                "--cacert", "--connect", "--json"):
        assert opt in p.stdout
    p = subprocess.run([str(HELIOSD), "no-such-command", "-m", str(MODULE_DIR)],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert p.returncode == 2 and "bench" in p.stderr and "(module bench)" in p.stderr


# ---------------------------------------------------------------------------
# no allocation per request


@pytest.mark.skipif(is_sanitizer_build(), reason="valgrind cannot run an ASan binary")
@pytest.mark.parametrize("mode", ["http1", "http2"])
def test_no_allocation_per_request(proxied, tmp_path, mode):
    """The heap allocation count of a run does not grow with its requests:
    valgrind counts every malloc of 300 and of 3000 requests alike."""
    h, _ = proxied
    counts = []
    for n in (300, 3000):
        log = tmp_path / f"vg-{mode}-{n}.log"
        p = subprocess.run(["valgrind", f"--log-file={log}", *bench_cmd(
            f"http://127.0.0.1:{h.port}/", "--json", "--http", mode, "-n", n, "-c", 2, "-t", 1,
            "--warmup", 0, "--streams", 2 if mode == "http2" else 1)],
            capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["requests"] == n
        text = log.read_text()
        allocs = [int(line.split("heap usage:")[1].split("allocs")[0].replace(",", ""))
                  for line in text.splitlines() if "total heap usage" in line]
        assert allocs, text
        counts.append(allocs[-1])
    assert counts[1] - counts[0] <= 20, counts  # not 2700 more
