"""Binary upgrade on SIGUSR2 (issue 16, item 6): the running heliosd starts
its binary again with its listening sockets (HELIOS_LISTEN_FDS); the new one
takes over (and rebinds the service listeners the old one frees), the old
one stops accepting, finishes what it has in flight and exits. A bounded
load across the upgrade sees no failed request."""

import http.client
import os
import signal
import threading
import time

from conftest import (
    curl,
    free_port,
    make_config,
    proxy_route,
    upstream_conf,
    wait_for,
)

LOAD_SECONDS = 5.0
CLIENTS = 4


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def one_request(port, path="/"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def new_pid(pid_file, old):
    """The pid the new heliosd writes once it serves (the old one may exit first)."""
    def read():
        try:
            pid = int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid != old else None
    return wait_for(read, 30, what="the new heliosd's pid in the pid file")


def upgrade_config(port, backend, metrics_port, pid_file):
    cfg = make_config(port, [proxy_route("app", "app")], {"app": upstream_conf(backend)},
                      workers=2, pid_file=str(pid_file))
    cfg["modules"] = [{"module": "metrics", "config": {"listen": f"127.0.0.1:{metrics_port}"}}]
    return cfg


def test_upgrade_under_load_drops_no_request(heliosd, backend, tmp_path):
    port, metrics_port = free_port(), free_port()
    pid_file = tmp_path / "heliosd.pid"
    h = heliosd(upgrade_config(port, backend, metrics_port, pid_file))
    old = h.pid
    assert pid_file.read_text() == f"{old}\n"

    results = {"ok": 0, "failed": []}
    lock = threading.Lock()
    stop = time.monotonic() + LOAD_SECONDS

    def client():
        while time.monotonic() < stop:
            try:
                status, body = one_request(port)
                good = status == 200 and body.startswith(b"hello from")
                err = None if good else f"{status} {body[:80]!r}"
            except Exception as e:  # noqa: BLE001 - every failure is counted
                err = repr(e)
            with lock:
                if err:
                    results["failed"].append(err)
                else:
                    results["ok"] += 1

    slow = {}

    def slow_request():
        # in flight on the old heliosd when it hands over: it must complete
        try:
            slow["answer"] = one_request(port, "/slow?ms=2500")
        except Exception as e:  # noqa: BLE001
            slow["answer"] = repr(e)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    s = threading.Thread(target=slow_request)
    s.start()
    time.sleep(0.3)
    mark = h.err_mark()
    h.signal(signal.SIGUSR2)
    # the old one exits once the slow request is answered; the new one serves
    assert h.wait_exit(timeout=30) == 0, h.stderr()[-3000:]
    for t in threads + [s]:
        t.join(timeout=60)
    new = new_pid(pid_file, old)
    try:
        assert new != old and pid_alive(new)
        log = h.stderr()[mark:]
        assert "binary upgrade: started" in log, log
        assert f"binary upgrade: pid {new} took over" in log, log
        assert "took over the listening sockets" in log, log
        assert isinstance(slow["answer"], tuple) and slow["answer"][0] == 200, slow
        assert results["ok"] > 50, results["ok"]
        assert results["failed"] == [], (len(results["failed"]), results["failed"][:5])
        # the new one serves the proxy and its metrics service rebound the port
        assert one_request(port)[0] == 200
        wait_for(lambda: curl("-s", f"http://127.0.0.1:{metrics_port}/metrics").stdout
                 .find(b"helios_build_info") >= 0, 10, what="metrics on the new heliosd")
    finally:
        os.kill(new, signal.SIGTERM)
        wait_for(lambda: not pid_alive(new), 30, what="the new heliosd to stop")
    assert not pid_file.exists()


def test_failed_upgrade_keeps_the_old_one_serving(heliosd, backend, tmp_path):
    port, metrics_port = free_port(), free_port()
    pid_file = tmp_path / "heliosd.pid"
    cfg = upgrade_config(port, backend, metrics_port, pid_file)
    h = heliosd(cfg)
    # the new binary reads the configuration as it is now: broken
    h.write_config(h.config_text + "no_such_key: 1\n")
    mark = h.err_mark()
    h.signal(signal.SIGUSR2)
    h.wait_stderr(r"binary upgrade failed: the new heliosd \(pid \d+\) exited with status 1 "
                  r"before taking over; this one \(pid %d\) keeps serving" % h.pid, since=mark,
                  timeout=30)
    assert h.alive() and pid_file.read_text() == f"{h.pid}\n"
    assert one_request(port)[0] == 200
    assert b"helios_build_info" in curl("-s", f"http://127.0.0.1:{metrics_port}/metrics").stdout
    # and a later upgrade is possible again
    h.write_config(cfg)
    h.signal(signal.SIGUSR2)
    assert h.wait_exit(timeout=30) == 0, h.stderr()[-3000:]
    new = new_pid(pid_file, h.pid)
    try:
        assert new != h.pid and one_request(port)[0] == 200
    finally:
        os.kill(new, signal.SIGTERM)
        wait_for(lambda: not pid_alive(new), 30, what="the new heliosd to stop")
