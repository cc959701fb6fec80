"""Access log: one line per request, text or JSON, to stdout or to a file
that SIGUSR1 reopens.

Text format:
  TIME CLIENT "METHOD PATH PROTO" STATUS BYTES_IN BYTES_OUT DURATION_MS
      route=NAME upstream=ADDR upstream_ms=N
JSON keys: time, client, method, path, protocol, status, bytes_in,
bytes_out, duration_ms, route, upstream, upstream_ms.

For a request that no upstream served (a module answered, or 404) the
upstream fields are "-" (text) or null/"" (JSON); the tests accept either.
Each test ends with a request for a unique marker path and polls for its
line, so no fixed sleeps are needed and "exactly N lines" can be checked."""

import json
import os
import re
import signal
import uuid

import pytest

from conftest import (
    RawConn,
    free_port,
    http_request,
    make_config,
    proxy_route,
    request_bytes,
    static_route,
    upstream_conf,
    wait_for,
)

TEXT_RX = re.compile(
    r'^(?P<time>\S.*?) (?P<client>\S+) "(?P<method>[A-Z]+) (?P<path>\S+) (?P<protocol>HTTP/\d\.\d)" '
    r"(?P<status>\d{3}) (?P<bytes_in>\d+) (?P<bytes_out>\d+) (?P<duration_ms>\d+(?:\.\d+)?) "
    r"route=(?P<route>\S*) upstream=(?P<upstream>\S*) upstream_ms=(?P<upstream_ms>\S*) "
    r"tries=(?P<tries>\d+) backend=(?P<backend>up|down|-) breaker=(?P<breaker>closed|open|half-open|-)"
    r" tls=(?P<tls>\S+) cipher=(?P<cipher>\S+) worker=(?P<worker>\d+)(?: aborted)?$"
)
JSON_KEYS = {
    "time", "client", "method", "path", "protocol", "status", "bytes_in", "bytes_out",
    "duration_ms", "route", "upstream", "upstream_ms", "tries", "backend_health", "breaker",
    "tls", "cipher", "worker",
}
NONE_VALUES = (None, "", "-")


def routes():
    return [
        static_route("hello", "hi\n", match={"path": "/hello"}),
        proxy_route("bytes", "app", match={"prefix": "/bytes/"}),
        proxy_route("echo", "app", match={"path": "/echo"}),
        proxy_route("slow", "app", match={"path": "/slow"}),
        static_route("marker", "m\n", match={"prefix": "/marker/"}),
    ]


def start(heliosd, backend, fmt="text", access_log="stdout"):
    port = free_port()
    logging = {"level": "info", "error_log": "stderr", "access_log": access_log, "access_log_format": fmt}
    h = heliosd(make_config(port, routes(), {"app": upstream_conf(backend)}, logging=logging))
    h.fmt = fmt
    return h


def parse(h, text):
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if h.fmt == "json":
            out.append(json.loads(line))
        else:
            m = TEXT_RX.match(line)
            assert m, f"access log line does not match the text format: {line!r}"
            out.append(m.groupdict())
    return out


def mark_and_wait(h, read=None):
    """Requests a unique marker path and waits for its log line; returns
    all parsed lines so far."""
    read = read or h.stdout
    marker = f"/marker/{uuid.uuid4().hex}"
    assert http_request(h.port, marker)[0] == 200
    wait_for(lambda: marker in read(), 15, what=f"access log line for {marker}")
    lines = parse(h, read())
    assert lines[-1]["path"] == marker, "the marker line is not the last line"
    return lines


def by_path(lines, path):
    found = [x for x in lines if x["path"] == path]
    assert len(found) == 1, f"expected one line for {path}, got {found}"
    return found[0]


def num(v):
    return float(v)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_one_line_per_request_with_all_fields(heliosd, backend, fmt):
    h = start(heliosd, backend, fmt)
    with RawConn(h.port) as c:  # several requests on one keep-alive connection
        c.send(request_bytes("GET", "/hello"))
        assert c.read_response().status == 200
        c.send(request_bytes("GET", "/bytes/12345"))
        assert c.read_response().status == 200
        c.send(request_bytes("POST", "/echo", headers=[("Content-Length", "1000")], body=b"e" * 1000))
        assert c.read_response().body == b"e" * 1000
        c.send(request_bytes("GET", "/nope"))
        assert c.read_response().status == 404
    lines = mark_and_wait(h)
    assert len(lines) == 5, f"expected exactly 5 lines, got {len(lines)}: {lines}"
    if fmt == "json":
        for x in lines:
            assert JSON_KEYS <= set(x), f"missing keys {JSON_KEYS - set(x)} in {x}"
            assert isinstance(x["status"], int)
            for k in ("bytes_in", "bytes_out", "duration_ms"):
                assert isinstance(x[k], (int, float)), (k, x)

    hello = by_path(lines, "/hello")
    assert hello["method"] == "GET" and int(hello["status"]) == 200
    assert hello["protocol"] == "HTTP/1.1"
    assert hello["client"].startswith("127.0.0.1"), hello["client"]
    assert hello["route"] == "hello"
    assert hello["upstream"] in NONE_VALUES
    assert num(hello["bytes_out"]) >= 3

    b = by_path(lines, "/bytes/12345")
    assert int(b["status"]) == 200
    assert b["route"] == "bytes"
    assert b["upstream"] == backend.address
    assert 12345 <= num(b["bytes_out"]) < 12345 + 4096
    assert b["upstream_ms"] not in NONE_VALUES and num(b["upstream_ms"]) >= 0

    e = by_path(lines, "/echo")
    assert e["method"] == "POST" and e["route"] == "echo"
    assert num(e["bytes_in"]) >= 1000

    nope = by_path(lines, "/nope")
    assert int(nope["status"]) == 404
    assert nope["upstream"] in NONE_VALUES
    for x in lines:
        assert num(x["duration_ms"]) >= 0
        assert x["time"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_duration_and_upstream_time(heliosd, backend, fmt):
    h = start(heliosd, backend, fmt)
    assert http_request(h.port, "/slow?ms=300")[0] == 200
    lines = mark_and_wait(h)
    slow = [x for x in lines if x["path"].startswith("/slow")]
    assert len(slow) == 1
    assert 250 <= num(slow[0]["duration_ms"]) < 30000
    assert 250 <= num(slow[0]["upstream_ms"]) <= num(slow[0]["duration_ms"]) + 1


def test_pipelined_requests_logged_in_order(heliosd, backend):
    h = start(heliosd, backend, "json")
    paths = ["/bytes/1", "/hello", "/bytes/2", "/nope"]
    with RawConn(h.port) as c:
        c.send(b"".join(request_bytes("GET", p) for p in paths))
        for _ in paths:
            assert c.read_response() is not None
    lines = mark_and_wait(h)
    assert [x["path"] for x in lines[:-1]] == paths


def test_json_escapes_hostile_path(heliosd, backend):
    h = start(heliosd, backend, "json")
    hostile = '/nope/%22%5C%0A"\\x'
    with RawConn(h.port) as c:
        c.send(request_bytes("GET", hostile))
        r = c.read_response()
    assert r is None or r.status in (400, 404)
    lines = mark_and_wait(h)  # every line still parses as JSON
    assert len(lines) in (1, 2)


def test_sigusr1_reopens_access_log_file(heliosd, backend, tmp_path):
    path = tmp_path / "access.log"
    h = start(heliosd, backend, "text", access_log=str(path))

    def read():
        try:
            return path.read_text()
        except FileNotFoundError:
            return ""

    assert http_request(h.port, "/hello")[0] == 200
    lines = mark_and_wait(h, read)
    assert [x["path"] for x in lines][0] == "/hello"
    assert "/hello" not in h.stdout(), "access log also went to stdout"

    rotated = tmp_path / "access.log.1"
    os.rename(path, rotated)
    mark = h.err_mark()
    h.signal(signal.SIGUSR1)
    # The new file exists as soon as it is opened, a moment before heliosd
    # switches to it; its log line says the switch is done.
    h.wait_stderr(r"log files reopened", since=mark, timeout=15)
    assert path.exists()
    lines = mark_and_wait(h, read)
    assert lines[-1]["path"].startswith("/marker/")
    old = rotated.read_text()
    assert "/hello" in old
    assert "/hello" not in read()
    assert h.alive()
