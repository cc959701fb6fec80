"""Handler request bodies and subrequests (host API 1.1), through the test
module tests/modules/subreq.c (a handler that reads the client's body and
calls upstreams with api->subreq_*), the real heliosd and real backends.

The JavaScript module's fetch() and Request.text() sit on exactly this API;
these tests pin down the core's side on its own.
"""
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    MODULE_DIR,
    SOURCE_DIR,
    free_port,
    http_request,
    make_config,
    upstream_conf,
)

TEST_MODULE_DIR = Path(os.environ.get("HELIOS_TEST_MODULE_DIR") or SOURCE_DIR / "build" / "test-modules")


@pytest.fixture
def module_dir(tmp_path):
    so = TEST_MODULE_DIR / "subreq.so"
    if not so.exists():
        pytest.fail(f"test module not built: {so}")
    d = tmp_path / "modules"
    d.mkdir()
    for m in MODULE_DIR.glob("*.so"):
        (d / m.name).symlink_to(m.resolve())
    (d / "subreq.so").symlink_to(so.resolve())
    return d


@pytest.fixture
def sub(heliosd, module_dir):
    def make(config):
        return heliosd(config, extra_args=("-m", str(module_dir)))

    return make


def config(port, ups, own=None, workers=1, **top):
    route = {"name": "sub", "match": {"prefix": "/"}, "handler": "subreq"}
    if own:
        route["upstream"] = own
    return make_config(port, [route], ups, workers=workers, **top)


def lines(body):
    return body.decode().splitlines()


def parse(line):
    name, status, backend, length, total = line.split()
    return name, int(status), backend, int(length), int(total)


def test_two_upstreams_are_called_at_once_and_answer(sub, backends):
    a, b = backends("a", "b")
    h = sub(config(free_port(), {"ua": upstream_conf(a), "ub": upstream_conf(b)}))
    status, _, body = http_request(h.port, "/x?to=ua,ub&path=/slow%3Fms%3D300")
    assert status == 200, body
    got = [parse(l) for l in lines(body)]
    assert [(n, s, be) for n, s, be, _, _ in got] == [("ua", 200, "a"), ("ub", 200, "b")]
    # both at once: 2 x 300 ms in well under 600 ms
    t0 = time.monotonic()
    status, _, body = http_request(h.port, "/x?to=ua,ub&path=/slow%3Fms%3D400")
    took = time.monotonic() - t0
    assert status == 200
    assert took < 0.75, f"subrequests ran one after the other ({took:.2f}s)"


def test_route_own_upstream_and_headers_and_body_bytes(sub, backends):
    a = backends("a")
    h = sub(config(free_port(), {"own": upstream_conf(a)}, own="own"))
    status, _, body = http_request(h.port, "/x?to=-&path=/headers&hdr=1")
    assert status == 200, body
    name, st, be, length, _ = parse(lines(body)[0])
    assert (name, st, be) == ("-", 200, "a")
    assert length > 0
    # the header the module added reached the backend: /headers echoes them
    status, _, echoed = http_request(a.port, "/headers", headers={"X-Sub": "yes"})
    assert b"X-Sub" in echoed or b"x-sub" in echoed.lower()


@pytest.mark.parametrize("size", [0, 1, 70000, 3 * 1024 * 1024])
def test_client_body_is_read_and_forwarded(sub, backends, size):
    a = backends("a")
    h = sub(config(free_port(), {"ua": upstream_conf(a)}))
    payload = bytes((i * 7) % 251 for i in range(size))
    status, _, body = http_request(h.port, "/x?to=ua&path=/echo&method=POST&body=1",
                                   method="POST", body=payload)
    assert status == 200, body
    out = lines(body)
    name, st, be, length, total = parse(out[0])
    assert (name, st, be) == ("ua", 200, "a")
    assert length == size and total == sum(payload)
    assert out[1] == f"body {size}"


def test_chunked_client_body_is_read(sub, backends):
    a = backends("a")
    h = sub(config(free_port(), {"ua": upstream_conf(a)}))
    s = socket.create_connection(("127.0.0.1", h.port), timeout=10)
    s.sendall(b"POST /x?to=ua&path=/echo&method=POST&body=1 HTTP/1.1\r\nHost: t\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    for piece in (b"hello ", b"chunked ", b"world"):
        time.sleep(0.05)
        s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    s.sendall(b"0\r\n\r\n")
    data = b""
    while b"body 19" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert b" 200 OK" in data.split(b"\r\n")[0]
    assert b"ua 200 a 19 " in data and b"body 19" in data


def test_failures_reach_the_module_as_errors(sub, backends):
    a = backends("a")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_addr = f"127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    h = sub(config(free_port(), {"ua": upstream_conf(a),
                       "dead": {"backends": [{"name": "d", "address": dead_addr}]}}))
    status, _, body = http_request(h.port, "/x?to=dead,ua,nosuch&path=/")
    assert status == 200, body
    out = lines(body)
    assert out[0].startswith("dead error 502 ")
    assert parse(out[1])[:3] == ("ua", 200, "a")
    assert out[2].startswith("nosuch refused no upstream named 'nosuch'")
    # a bad target and a route without an upstream are refused, not sent
    status, _, body = http_request(h.port, "/x?to=-")
    assert lines(body) == ["- refused no upstream given and the route has none"]


def test_cancel_in_on_head_and_backend_connections_are_reused(sub, backends):
    a = backends("a")
    h = sub(config(free_port(), {"ua": upstream_conf(a)}))
    status, _, body = http_request(h.port, "/x?to=ua&path=/bytes/200000&cancel=head")
    assert status == 200 and lines(body) == ["ua cancelled"]
    a.reset_stats()
    for _ in range(30):
        status, _, body = http_request(h.port, "/x?to=ua,ua&path=/")
        assert status == 200 and all(parse(l)[1] == 200 for l in lines(body))
    st = a.stats()
    assert st["requests"] == 60
    assert st["connections"] <= 4, f"pool not used: {st}"


def test_client_gone_mid_subrequest_cancels_it_and_on_done_runs(sub, backends):
    a = backends("a")
    h = sub(config(free_port(), {"ua": upstream_conf(a)}))
    _, _, before = http_request(h.port, "/_subreq/done")
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", h.port))
        s.sendall(b"GET /x?to=ua,ua&path=/slow%3Fms%3D2000 HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)
        s.close()
    time.sleep(0.3)
    _, _, after = http_request(h.port, "/_subreq/done")
    # each abandoned request ran on_done (plus the first /_subreq/done)
    assert int(after) - int(before) >= 6
    status, _, body = http_request(h.port, "/x?to=ua&path=/")
    assert status == 200 and parse(lines(body)[0])[1] == 200


def test_concurrent_subrequests_under_load_on_two_workers(sub, backends):
    a, b = backends("a", "b")
    h = sub(config(free_port(), {"ua": upstream_conf(a, b)}, workers=2))
    errors = []

    def run():
        for _ in range(40):
            try:
                status, _, body = http_request(h.port, "/x?to=ua,ua,ua&path=/")
                if status != 200 or len(lines(body)) != 3 or any(
                        parse(l)[1] != 200 for l in lines(body)):
                    errors.append((status, body))
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]


def test_reload_with_subrequests_in_flight(sub, backends):
    a = backends("a")
    h = sub(config(free_port(), {"ua": upstream_conf(a)}))
    results = []

    def slow():
        results.append(http_request(h.port, "/x?to=ua&path=/slow%3Fms%3D600"))

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    h.reload()
    t.join(10)
    status, _, body = results[0]
    assert status == 200 and parse(lines(body)[0])[1] == 200
