"""Reload (SIGHUP) and graceful shutdown (SIGTERM).

A reload builds a new generation; an invalid one is rejected with its errors
logged and the old one keeps serving; in-flight requests finish on the
generation they started in; listeners present in both are kept. SIGTERM stops
accepting, lets in-flight requests finish, then exits 0.

"Zero failed requests" in the load tests means: every request sent gets a
complete 2xx answer. A keep-alive connection that the server closes while
idle (no request bytes in flight) is legal HTTP/1.1; the python load test
retries such a request once on a new connection and counts it separately,
the wrk test counts it as a socket error (wrk does), so that test is
stricter."""

import http.client
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (
    RawConn,
    free_port,
    http_request,
    listening_inodes,
    make_config,
    pattern_ok,
    port_accepts,
    proxy_route,
    request_bytes,
    static_route,
    upstream_conf,
    wait_for,
)


def config(port, bk, body="v1\n", listeners=None, **top):
    return make_config(
        port,
        [static_route("v", body, match={"path": "/v"}), proxy_route("app", "app")],
        {"app": upstream_conf(bk)},
        listeners=listeners,
        **top,
    )


def body_of(h, path="/v"):
    return h.get(path)[2]


def refused(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def test_sighup_with_valid_config_switches_behaviour(heliosd, backend):
    port = free_port()
    h = heliosd(config(port, backend))
    assert body_of(h) == b"v1\n"
    h.reload(config(port, backend, body="v2\n"))
    wait_for(lambda: body_of(h) == b"v2\n", 15, what="the reloaded body")
    assert h.get("/")[2] == b"hello from a\n"
    assert h.alive()


def test_sighup_with_invalid_config_keeps_old_one(heliosd, backend):
    port = free_port()
    h = heliosd(config(port, backend))
    good = h.config_text
    mark = h.err_mark()
    h.reload(good + "bogus_top_level_key: 1\n")
    # The error names the file (file:line:col) and the key.
    h.wait_stderr(r"heliosd\.yaml:\d+:\d+.*bogus_top_level_key", since=mark, timeout=15)
    assert h.alive()
    for _ in range(5):
        assert body_of(h) == b"v1\n"
    # A later valid reload still works.
    h.reload(config(port, backend, body="v3\n"))
    wait_for(lambda: body_of(h) == b"v3\n", 15, what="the reloaded body")


def test_sighup_as_soon_as_listener_accepts_is_not_fatal(heliosd, backend):
    """An operator (or a config-management tool) may reload right after the
    port opens: that SIGHUP must never take the default action (terminate).
    Races are probabilistic, so try a few starts."""
    for i in range(8):
        port = free_port()
        h = heliosd(config(port, backend), start=False, name=f"early{i}")
        h.start(wait=False)
        deadline = time.monotonic() + 30
        while not port_accepts(port, timeout=1.0):
            assert h.alive(), f"start-up failed: {h.stderr()[-2000:]}"
            assert time.monotonic() < deadline, "heliosd never accepted"
            time.sleep(0.001)
        h.proc.send_signal(signal.SIGHUP)
        h._wait_started()
        if h.wait_exit(0.5) is not None:
            h.expected_rc = None  # reported here, not again at teardown
            pytest.fail(f"start {i}: a SIGHUP as soon as the port accepted killed heliosd "
                        f"(exit {h.rc}); stderr:\n{h.stderr()[-1500:]}")
        wait_for(lambda: body_of(h) == b"v1\n", 15, what="heliosd to serve after an early SIGHUP")
        assert h.stop() == 0


def test_sighup_with_yaml_syntax_error_keeps_old_one(heliosd, backend):
    port = free_port()
    h = heliosd(config(port, backend))
    mark = h.err_mark()
    h.reload("routes: [\n  - name: x\n    match: {path: /\n")
    h.wait_stderr(r"heliosd\.yaml:\d+", since=mark, timeout=15)
    assert h.alive()
    assert body_of(h) == b"v1\n"


def test_sighup_with_unknown_module_keeps_old_one(heliosd, backend):
    port = free_port()
    h = heliosd(config(port, backend))
    bad = make_config(port, [{"name": "x", "match": {"prefix": "/"}, "handler": {"module": "no_such_module_xyz", "config": {}}}])
    mark = h.err_mark()
    h.reload(bad)
    h.wait_stderr(r"no_such_module_xyz", since=mark, timeout=15)
    assert h.alive()
    assert body_of(h) == b"v1\n"


def test_reload_adds_and_removes_a_listener(heliosd, backend):
    p1, p2 = free_port(), free_port()
    h = heliosd(config(p1, backend))
    assert refused(p2)
    kept = listening_inodes(p1)
    assert kept
    both = [{"address": f"127.0.0.1:{p1}"}, {"address": f"127.0.0.1:{p2}"}]
    h.reload(config(p1, backend, listeners=both))
    wait_for(lambda: port_accepts(p2), 15, what="the new listener")
    assert http_request(p2, "/v")[2] == b"v1\n"
    # The kept listener never stopped accepting; an old keep-alive client
    # connection still works too.
    with RawConn(p1) as c:
        c.send(request_bytes("GET", "/v"))
        assert c.read_response().body == b"v1\n"
        h.reload(config(p1, backend, body="v2\n", listeners=[{"address": f"127.0.0.1:{p1}"}]))
        wait_for(lambda: refused(p2), 15, what="the removed listener to close")
        try:
            c.send(request_bytes("GET", "/v"))
            r = c.read_response()
        except (BrokenPipeError, ConnectionResetError):
            r = None
        assert r is None or r.body in (b"v1\n", b"v2\n")
    assert body_of(h) == b"v2\n"
    assert listening_inodes(p1) == kept, "the listener present in every generation was re-created"


def test_long_download_completes_across_reload(heliosd, backends):
    a, b = backends("a", "b")
    port = free_port()
    h = heliosd(config(port, a))
    n = 200_000_000
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", f"/bytes/{n}")
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("X-Backend") == "a"
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        total = 0
        reloaded = False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            k = r.readinto(mv)
            if not k:
                break
            assert pattern_ok(bytes(mv[:k]), total), f"corrupt data near offset {total}"
            total += k
            if not reloaded and total >= 10_000_000:
                # New generation: other backend, other static body.
                h.reload(config(port, b, body="v2\n"))
                wait_for(lambda: h.get("/")[1].get("x-backend") == "b", 20, what="the reload to take effect")
                assert body_of(h) == b"v2\n"
                reloaded = True
            elif total < 60_000_000:
                time.sleep(0.002)  # a slow reader at first
        assert reloaded
        assert total == n, f"download cut at {total} of {n} bytes by the reload"
    finally:
        conn.close()
    assert h.alive()


def reload_n_times(h, port, backend, reloads, interval):
    """Alternates the static body v2/v1; after each SIGHUP, waits until the
    new body is served, so every one of the reloads provably took effect."""
    for k in range(reloads):
        t0 = time.monotonic()
        want = b"v2\n" if k % 2 == 0 else b"v1\n"
        h.reload(config(port, backend, body=want.decode()))
        wait_for(lambda: body_of(h) == want, 15, what=f"reload {k + 1} to take effect")
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))


def load_with_reloads(h, port, backend, seconds=10.0, reloads=20, threads=4):
    stop = threading.Event()
    lock = threading.Lock()
    stats = {"ok": 0, "failed": [], "stale_retries": 0}
    ok_bodies = {b"hello from a\n", b"v1\n", b"v2\n"}

    def one(conn, path):
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()

    def worker(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        fresh = True
        j = 0
        while not stop.is_set():
            path = "/v" if (i + j) % 2 else "/"
            j += 1
            try:
                status, body = one(conn, path)
                fresh = False
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                if fresh:
                    with lock:
                        stats["failed"].append(f"{path}: {e!r} on a fresh connection")
                    continue
                with lock:
                    stats["stale_retries"] += 1
                try:
                    status, body = one(conn, path)
                    fresh = False
                except Exception as e2:  # noqa: BLE001
                    with lock:
                        stats["failed"].append(f"{path}: retry failed {e2!r}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    fresh = True
                    continue
            except Exception as e:  # noqa: BLE001
                with lock:
                    stats["failed"].append(f"{path}: {e!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                fresh = True
                continue
            with lock:
                if status == 200 and body in ok_bodies:
                    stats["ok"] += 1
                else:
                    stats["failed"].append(f"{path}: {status} {body[:80]!r}")
        conn.close()

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in ts:
        t.start()
    interval = seconds / (reloads + 1)
    try:
        reload_n_times(h, port, backend, reloads, interval)
        time.sleep(interval)
    finally:
        stop.set()
        for t in ts:
            t.join(40)
    assert not any(t.is_alive() for t in ts), "a load thread hung"
    return stats


def test_20_reloads_under_load_lose_no_request(heliosd, backend):
    port = free_port()
    h = heliosd(config(port, backend))
    stats = load_with_reloads(h, port, backend)
    print(f"load with reloads: {stats['ok']} ok, {stats['stale_retries']} stale keep-alive retries")
    assert stats["failed"] == [], f"{len(stats['failed'])} failed: {stats['failed'][:10]}"
    assert stats["ok"] >= 200, f"load too light to mean anything: {stats}"
    assert h.alive()
    # The last reload (k=19 -> v1) is the one in force.
    wait_for(lambda: body_of(h) == b"v1\n", 15, what="the final generation")


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
def test_20_reloads_under_wrk_have_no_errors(heliosd, backend):
    port = free_port()
    h = heliosd(config(port, backend))
    wrk = subprocess.Popen(
        ["wrk", "-t2", "-c16", "-d12s", "--timeout", "10s", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(0.5)
        reload_n_times(h, port, backend, 20, 0.4)
        out, _ = wrk.communicate(timeout=60)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    text = out.decode(errors="replace")
    assert wrk.returncode == 0, text
    m = re.search(r"(\d+) requests in", text)
    assert m and int(m.group(1)) >= 200, text
    assert "Non-2xx" not in text, text
    assert "Socket errors" not in text, text
    assert h.alive()


def test_sigterm_with_request_in_flight_completes_it_and_exits_0(heliosd, backend):
    port = free_port()
    h = heliosd(config(port, backend))
    base = backend.stats()["active"]
    result = {}

    def client():
        try:
            result["r"] = http_request(port, "/slow?ms=3000", timeout=30)
        except Exception as e:  # noqa: BLE001
            result["e"] = e

    t = threading.Thread(target=client, daemon=True)
    t.start()
    wait_for(lambda: backend.stats()["active"] > base, 10, what="the slow request to reach the backend")
    h.signal(signal.SIGTERM)
    # New connections are refused while the old request is still running.
    wait_for(lambda: refused(port), 2.5, what="the listener to close after SIGTERM")
    assert t.is_alive(), "the in-flight request ended before the listener closed"
    assert h.alive(), "heliosd exited before its in-flight request finished"
    t.join(30)
    assert "e" not in result, f"in-flight request failed: {result.get('e')!r}"
    status, headers, body = result["r"]
    assert status == 200
    assert h.wait_exit(30) == 0


def test_sigterm_with_idle_keepalive_connection_exits_promptly(heliosd, backend):
    port = free_port()
    h = heliosd(config(port, backend, timeouts={"keepalive": "75s", "shutdown": "30s"}))
    with RawConn(port) as c:
        c.send(request_bytes("GET", "/v"))
        assert c.read_response().status == 200
        start = time.monotonic()
        h.signal(signal.SIGTERM)
        rc = h.wait_exit(20)
        assert rc == 0, f"exit {rc}"
        assert time.monotonic() - start < 15, "an idle keep-alive connection held up the shutdown"
        assert c.wait_closed(5)


def test_sigterm_shutdown_timeout_bounds_hung_requests(heliosd, backend):
    port = free_port()
    cfg = make_config(
        port,
        [proxy_route("app", "app")],
        {"app": upstream_conf(backend, timeouts={"read": "60s"})},
        timeouts={"shutdown": "1s"},
    )
    h = heliosd(cfg)
    base = backend.stats()["active"]
    with RawConn(port, timeout=30) as c:
        c.send(request_bytes("GET", "/hang"))
        wait_for(lambda: backend.stats()["active"] > base, 10, what="the hung request to reach the backend")
        start = time.monotonic()
        h.signal(signal.SIGTERM)
        rc = h.wait_exit(20)
        elapsed = time.monotonic() - start
        assert rc == 0, f"exit {rc}"
        assert elapsed < 10, f"shutdown: 1s, but exit took {elapsed:.1f}s"
        assert c.wait_closed(5)
        data = bytes(c.buf)
        assert data == b"" or re.match(rb"HTTP/1.1 (503|504)", data), data[:200]
