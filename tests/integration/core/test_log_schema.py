"""One log schema (docs/logging.md): the core's JSON access log and the
access_log module's JSON lines carry the same fields with the same values
for the same requests, refused ones included (400 before and after the
parser began a request, 404, 408, 413, 431, 429); UTF-8 in a path stays UTF-8
and an invalid byte is escaped as the text \\xHH; the JSON error log has
time, level, module, request_id, connection_id and message; the admin
API's audit log follows a rename like the other logs."""

import json
import os
import signal
import socket
import time
import urllib.request

from conftest import (
    RawConn,
    free_port,
    make_config,
    proxy_route,
    request_bytes,
    static_route,
    upstream_conf,
    wait_for,
)

FIELDS = [
    "time", "request_id", "connection_id", "client", "method", "path", "protocol", "status",
    "bytes_in", "bytes_out", "duration_ms", "route", "upstream", "backend", "upstream_ms",
    "upstream_ttfb_ms", "tries", "backend_health", "breaker", "tls", "cipher", "worker", "aborted",
]


def start(heliosd, backend, tmp_path, **extra):
    port = free_port()
    routes = [
        static_route("hello", "hi\n", match={"prefix": "/hello"}),
        proxy_route("app", "app", match={"prefix": "/app/"}),
        {
            "name": "limited",
            "match": {"prefix": "/limited"},
            "handler": {"module": "static_response", "config": {"status": 200, "body": "ok\n"}},
            "filters": [{"module": "rate_limit", "config": {"rate": 0.01, "burst": 1}}],
        },
    ]
    cfg = make_config(
        port,
        routes,
        {"app": upstream_conf(backend)},
        logging={
            "level": "info",
            "error_log": str(tmp_path / "error.json"),
            "error_log_format": "json",
            "access_log": str(tmp_path / "core.json"),
            "access_log_format": "json",
        },
        limits={"max_request_body": "1k", "max_header_size": "4k"},
        timeouts={"client_header": "1s"},
        modules=[
            {"module": "access_log",
             "config": {"format": "json", "path": str(tmp_path / "module.json")}},
        ],
        **extra,
    )
    return heliosd(cfg)


def lines(path):
    try:
        with open(path, "rb") as f:
            return [json.loads(ln.decode("utf-8")) for ln in f.read().split(b"\n") if ln]
    except FileNotFoundError:
        return []


def h2_get(port, path):
    """One HTTP/2 GET (prior knowledge) of PATH, raw bytes: HTTP/1.1 refuses
    a non-ASCII request target, HTTP/2 carries it. Returns the status."""
    import h2.config
    import h2.connection
    import h2.events

    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False))
    c.initiate_connection()
    c.send_headers(1, [(b":method", b"GET"), (b":path", path), (b":scheme", b"http"),
                       (b":authority", b"t")], end_stream=True)
    s.sendall(c.data_to_send())
    status, done, deadline = None, False, time.monotonic() + 5
    try:
        while not done and time.monotonic() < deadline:
            d = s.recv(65535)
            if not d:
                break
            for e in c.receive_data(d):
                if isinstance(e, h2.events.ResponseReceived):
                    status = int(dict(e.headers)[b":status"])
                if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
            s.sendall(c.data_to_send())
    finally:
        s.close()
    return status


def send_raw(port, data):
    with RawConn(port) as c:
        c.send(data)
        return c.read_response()


def test_core_and_module_json_logs_agree_field_by_field(heliosd, backend, tmp_path):
    h = start(heliosd, backend, tmp_path)
    port = h.port
    expect = []  # (status, path as logged or None)
    r = send_raw(port, request_bytes("GET", "/hello", headers=[("X-Request-ID", "rid-1")]))
    expect.append((200, "/hello"))
    assert r.status == 200
    r = send_raw(port, request_bytes("GET", "/app/x"))
    expect.append((200, "/app/x"))
    assert r.status == 200
    assert h2_get(port, "/hello/caf\u00e9/\u65e5\u672c".encode()) == 200
    expect.append((200, "/hello/caf\u00e9/\u65e5\u672c"))
    assert h2_get(port, b"/hello/bad\xff\xc3(") == 200
    expect.append((200, "/hello/bad\\xff\\xc3("))
    r = send_raw(port, request_bytes("GET", "/nowhere"))
    expect.append((404, "/nowhere"))
    assert r.status == 404
    # 400 after the request line parsed: a header without a colon
    r = send_raw(port, b"GET /hello/x HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n")
    assert r.status == 400
    expect.append((400, None))
    # 400 before the parser began a request: a bare LF in the first bytes
    r = send_raw(port, b"GET / HTTP/1.1\nHost: t\r\n\r\n")
    assert r.status == 400
    expect.append((400, None))
    r = send_raw(port, request_bytes("POST", "/app/big", headers=[("Content-Length", "4096")],
                                         body=b"x" * 4096))
    assert r.status == 413
    expect.append((413, "/app/big"))
    r = send_raw(port, request_bytes("GET", "/hello", headers=[("X-Big", "b" * 8192)]))
    assert r.status == 431
    expect.append((431, None))
    assert send_raw(port, request_bytes("GET", "/limited")).status == 200
    assert send_raw(port, request_bytes("GET", "/limited")).status == 429
    expect += [(200, "/limited"), (429, "/limited")]
    # a head that never completes: 408 after client_header
    with RawConn(port) as c:
        c.send(b"GET /hello/slow HTTP/1.1\r\nHost: t\r\n")
        assert c.read_response(timeout=10).status == 408
    expect.append((408, None))

    n = len(expect)
    core = wait_for(lambda: (lambda v: v if len(v) >= n else None)(lines(tmp_path / "core.json")),
                    10, what="core access log lines")
    mod = wait_for(lambda: (lambda v: v if len(v) >= n else None)(lines(tmp_path / "module.json")),
                   10, what="module access log lines")
    assert len(core) == n and len(mod) == n, (core, mod)
    for i, (a, b) in enumerate(zip(core, mod)):
        assert list(a.keys()) == FIELDS, a
        assert list(b.keys()) == FIELDS, b
        for k in FIELDS:
            if k == "time":
                continue
            assert a[k] == b[k], f"line {i} field {k}: core {a[k]!r} module {b[k]!r}"
        status, path = expect[i]
        assert a["status"] == status, (i, a)
        if path is not None:
            assert a["path"] == path, (i, a)
    # absent values are null, never "-" or -1
    assert core[0]["request_id"] == "rid-1"
    assert core[0]["upstream"] is None and core[0]["upstream_ms"] is None
    assert core[0]["tls"] is None and core[0]["backend_health"] is None
    assert core[1]["upstream"] == backend.address and core[1]["backend"] == backend.name
    assert core[1]["upstream_ttfb_ms"] is not None and core[1]["backend_health"] == "up"
    assert core[1]["breaker"] == "closed"
    assert core[4]["route"] is None
    assert core[6]["method"] is None and core[6]["path"] is None
    assert isinstance(core[0]["connection_id"], int) and core[0]["connection_id"] > 0
    assert core[0]["connection_id"] != core[1]["connection_id"]
    # the raw UTF-8 bytes are in the file, not \u escapes
    assert "caf\u00e9/\u65e5\u672c".encode() in (tmp_path / "core.json").read_bytes()
    assert "caf\u00e9/\u65e5\u672c".encode() in (tmp_path / "module.json").read_bytes()

    # the JSON error log: the 404's line names its request and connection
    errs = wait_for(lambda: (lambda v: v if any("no route matches" in e["message"] for e in v)
                             else None)(lines(tmp_path / "error.json")), 10, what="error log line")
    for e in errs:
        assert list(e.keys()) == ["time", "level", "module", "request_id", "connection_id",
                                  "message"], e
    nf = [e for e in errs if "no route matches" in e["message"]][0]
    assert nf["level"] == "info" and nf["connection_id"] == core[4]["connection_id"]
    started = [e for e in errs if e["module"] == "access_log" or e["module"] is None]
    assert started, errs


def test_json_error_log_carries_the_request_id(heliosd, backend, tmp_path):
    h = start(heliosd, backend, tmp_path)
    r = send_raw(h.port, request_bytes("GET", "/nowhere/x", headers=[("X-Request-ID", "abc-42")]))
    assert r.status == 404
    e = wait_for(lambda: next((e for e in lines(tmp_path / "error.json")
                               if "/nowhere/x" in e["message"]), None), 10, what="404 line")
    assert e["request_id"] == "abc-42" and isinstance(e["connection_id"], int)
    assert e["module"] is None and e["level"] == "info"


def test_audit_log_follows_a_rename_and_sigusr1(heliosd, backend, tmp_path):
    port = free_port()
    aport = free_port()
    audit = tmp_path / "audit.log"
    cfg = make_config(
        port,
        [proxy_route("app", "app")],
        {"app": upstream_conf(backend)},
        modules=[{"module": "admin_api",
                  "config": {"listen": f"127.0.0.1:{aport}", "auth": "none",
                             "audit_log": str(audit)}}],
    )
    h = heliosd(cfg)

    def drain(on):
        req = urllib.request.Request(
            f"http://127.0.0.1:{aport}/v1/backends/app/{backend.name}/drain", method="POST",
            data=json.dumps({"drain": on}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    drain(True)
    wait_for(lambda: audit.exists() and b"drain" in audit.read_bytes(), 10, what="audit line")
    os.rename(audit, tmp_path / "audit.log.1")
    h.signal(signal.SIGUSR1)
    drain(False)
    wait_for(lambda: audit.exists() and b"drain" in audit.read_bytes(), 10,
             what="audit line in the new file")
    assert (tmp_path / "audit.log.1").read_bytes().count(b"\n") == 1
