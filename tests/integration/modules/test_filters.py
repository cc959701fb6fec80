"""The headers, request_id and size_limit filter modules, through the real
binary, a real hx_backend and real clients."""

import json
import re

from conftest import (
    RawConn,
    curl,
    free_port,
    http_request,
    make_config,
    pattern_ok,
    pattern_sum,
    proxy_route,
    request_bytes,
    run_config_check,
    upstream_conf,
    write_config_file,
)

HEX32 = re.compile(r"^[0-9a-f]{32}$")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def filters_config(port, backend, modules):
    return make_config(
        port,
        [proxy_route("app", "app")],
        {"app": upstream_conf(backend)},
        modules=modules,
    )


def start(heliosd, backend, *modules):
    port = free_port()
    return heliosd(filters_config(port, backend, list(modules)))


def seen_headers(h, headers=None, path="/headers"):
    """(status, response headers, [(name, value)] the backend received)."""
    status, rh, body = http_request(h.port, path, headers=headers or {})
    assert status == 200, body
    return status, rh, json.loads(body)["headers"]


def values(pairs, name):
    return [v for k, v in pairs if k.lower() == name.lower()]


def raw_get(h, path, headers=()):
    with RawConn(h.port) as c:
        c.send(request_bytes("GET", path, headers=headers))
        return c.read_response()


def check(tmp_path, config):
    p = run_config_check(write_config_file(tmp_path / "conf", config, "c.yaml").parent)
    return p.returncode, p.output


# --------------------------------------------------------------------------
# headers


def test_headers_set_add_remove_on_request(heliosd, backend):
    h = start(
        heliosd,
        backend,
        {
            "module": "headers",
            "config": {
                "request": {
                    "set": {"X-Set": "new"},
                    "add": {"X-Add": ["one", "two"], "X-Single": "s"},
                    "remove": ["X-Drop"],
                }
            },
        },
    )
    _, _, got = seen_headers(h, {"X-Set": "old", "X-Drop": "secret", "X-Add": "client"})
    assert values(got, "X-Set") == ["new"]
    assert values(got, "X-Drop") == []
    assert values(got, "X-Add") == ["client", "one", "two"]
    assert values(got, "X-Single") == ["s"]


def test_headers_set_add_remove_on_response(heliosd, backend):
    h = start(
        heliosd,
        backend,
        {
            "module": "headers",
            "config": {
                "response": {
                    "set": {"X-Served-By": "edge"},
                    "add": {"X-Multi": ["a", "b"]},
                    "remove": ["X-Backend"],
                }
            },
        },
    )
    r = raw_get(h, "/")
    assert r.status == 200 and r.body == b"hello from a\n"
    assert r.header_all("X-Backend") == []
    assert r.header_all("X-Served-By") == ["edge"]
    assert r.header_all("X-Multi") == ["a", "b"]


def test_headers_variables_expand_per_phase(heliosd, backend):
    value = "ip=$client_ip host=$host id=$request_id up=$upstream route=${route}! $$5"
    h = start(
        heliosd,
        backend,
        {
            "module": "headers",
            "config": {"request": {"set": {"X-Vars": value}}, "response": {"set": {"X-Vars": value}}},
        },
    )
    r = raw_get(h, "/headers", headers=[("X-Request-ID", "abc-123")])
    assert r.status == 200
    got = json.loads(r.body)["headers"]
    # $upstream is not known before the upstream is picked: empty
    assert values(got, "X-Vars") == ["ip=127.0.0.1 host=t id=abc-123 up= route=app! $5"]
    assert r.header_all("X-Vars") == [
        f"ip=127.0.0.1 host=t id=abc-123 up={backend.address} route=app! $5"
    ]


def test_headers_request_id_variable_sees_request_id_module(heliosd, backend):
    # chain order: request_id runs first, so $request_id is its id
    h = start(
        heliosd,
        backend,
        {"module": "request_id"},
        {"module": "headers", "config": {"request": {"set": {"X-Copy": "$request_id"}}}},
    )
    _, rh, got = seen_headers(h)
    rid = values(got, "X-Request-ID")
    assert len(rid) == 1 and HEX32.match(rid[0])
    assert values(got, "X-Copy") == rid
    assert rh["x-request-id"] == rid[0]


def test_headers_value_with_line_break_is_rejected_at_config_time(tmp_path, backend):
    cfg = filters_config(
        free_port(),
        backend,
        [{"module": "headers", "config": {"response": {"set": {"X-Evil": "a\r\nSet-Cookie: x=1"}}}}],
    )
    rc, out = check(tmp_path, cfg)
    assert rc == 1, out
    assert re.search(r"c\.yaml:\d+:\d+", out), out
    assert "X-Evil" in out and "line break" in out, out


def test_headers_bad_name_unknown_variable_and_framing_header_are_rejected(tmp_path, backend):
    cfg = filters_config(
        free_port(),
        backend,
        [
            {
                "module": "headers",
                "config": {
                    "request": {"set": {"Bad Name": "x", "X-Typo": "$reqest_id"}, "remove": ["Content-Length"]},
                },
            }
        ],
    )
    rc, out = check(tmp_path, cfg)
    assert rc == 1, out
    assert "invalid header name 'Bad Name'" in out, out
    assert "unknown variable '$reqest_id'" in out, out
    assert "Content-Length" in out, out
    assert len(re.findall(r"c\.yaml:\d+:\d+", out)) >= 3, out


# --------------------------------------------------------------------------
# request_id


def test_request_id_generated_passed_upstream_and_returned(heliosd, backend):
    h = start(heliosd, backend, {"module": "request_id"})
    ids = set()
    for _ in range(5):
        _, rh, got = seen_headers(h)
        sent = values(got, "X-Request-ID")
        assert len(sent) == 1 and HEX32.match(sent[0]), sent
        assert rh["x-request-id"] == sent[0]
        ids.add(sent[0])
    assert len(ids) == 5


def test_request_id_kept_from_trusted_peer(heliosd, backend):
    h = start(heliosd, backend, {"module": "request_id", "config": {"trusted": ["127.0.0.0/8"]}})
    _, rh, got = seen_headers(h, {"X-Request-ID": "from-the-edge-42"})
    assert values(got, "X-Request-ID") == ["from-the-edge-42"]
    assert rh["x-request-id"] == "from-the-edge-42"


def test_request_id_replaced_from_untrusted_peer(heliosd, backend):
    h = start(heliosd, backend, {"module": "request_id", "config": {"trusted": ["10.0.0.0/8", "::1"]}})
    _, rh, got = seen_headers(h, {"X-Request-ID": "forged"})
    sent = values(got, "X-Request-ID")
    assert len(sent) == 1 and HEX32.match(sent[0]), sent
    assert rh["x-request-id"] == sent[0]


def test_request_id_custom_header_and_trust_incoming_true(heliosd, backend):
    h = start(
        heliosd,
        backend,
        {"module": "request_id", "config": {"header": "X-Trace-Id", "trust_incoming": True}},
    )
    _, rh, got = seen_headers(h, {"X-Trace-Id": "kept"})
    assert values(got, "X-Trace-Id") == ["kept"]
    assert rh["x-trace-id"] == "kept"
    assert "x-request-id" not in rh


def test_request_id_bad_config_is_located(tmp_path, backend):
    cfg = filters_config(
        free_port(),
        backend,
        [{"module": "request_id", "config": {"trusted": ["10.0.0.0/33"], "traceparent": "maybe"}}],
    )
    rc, out = check(tmp_path, cfg)
    assert rc == 1, out
    assert "10.0.0.0/33" in out and "maybe" in out, out


def test_traceparent_propagated_with_new_parent_id(heliosd, backend):
    h = start(heliosd, backend, {"module": "request_id"})
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    _, _, got = seen_headers(h, {"traceparent": f"00-{trace}-{parent}-00", "tracestate": "congo=t61rcWkgMzE"})
    tp = values(got, "traceparent")
    assert len(tp) == 1, got
    m = TRACEPARENT.match(tp[0])
    assert m, tp
    assert m.group(1) == trace
    assert m.group(2) != parent and m.group(2) != "0" * 16
    assert m.group(3) == "00"
    assert values(got, "tracestate") == ["congo=t61rcWkgMzE"]


def test_traceparent_started_when_absent(heliosd, backend):
    h = start(heliosd, backend, {"module": "request_id"})
    _, _, got = seen_headers(h)
    tp = values(got, "traceparent")
    assert len(tp) == 1 and TRACEPARENT.match(tp[0]), got
    assert TRACEPARENT.match(tp[0]).group(3) == "01"


def test_invalid_traceparent_replaced_and_tracestate_dropped(heliosd, backend):
    h = start(heliosd, backend, {"module": "request_id"})
    bad = [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "garbage",
    ]
    for value in bad:
        _, _, got = seen_headers(h, {"traceparent": value, "tracestate": "a=b"})
        tp = values(got, "traceparent")
        assert len(tp) == 1, (value, got)
        m = TRACEPARENT.match(tp[0])
        assert m and m.group(1) != "4bf92f3577b34da6a3ce929d0e0e4736", (value, tp)
        assert m.group(3) == "01"
        assert values(got, "tracestate") == [], (value, got)


def test_traceparent_start_mode_ignores_incoming_and_off_leaves_it(heliosd, backend):
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    h = start(heliosd, backend, {"module": "request_id", "config": {"traceparent": "start"}})
    _, _, got = seen_headers(h, {"traceparent": incoming})
    m = TRACEPARENT.match(values(got, "traceparent")[0])
    assert m and m.group(1) != "4bf92f3577b34da6a3ce929d0e0e4736"

    h2 = start(heliosd, backend, {"module": "request_id", "config": {"traceparent": "off"}})
    _, _, got = seen_headers(h2, {"traceparent": incoming})
    assert values(got, "traceparent") == [incoming]
    _, _, got = seen_headers(h2)
    assert values(got, "traceparent") == []


# --------------------------------------------------------------------------
# size_limit


def size_limited(heliosd, backend, **cfg):
    return start(heliosd, backend, {"module": "size_limit", "config": cfg})


def test_content_length_over_limit_gets_413_before_the_backend_sees_it(heliosd, backend):
    h = size_limited(heliosd, backend, max_request_body=1000)
    backend.reset_stats()
    with RawConn(h.port) as c:
        c.send(request_bytes("POST", "/sink", headers=[("Content-Length", "1001")]))
        r = c.read_response()
        assert r.status == 413, r
        assert b"1000" in r.body
    assert backend.stats()["requests"] == 0


def test_body_under_the_limit_passes(heliosd, backend):
    h = size_limited(heliosd, backend, max_request_body=100000)
    body = bytes(i % 251 for i in range(100000))
    status, _, data = http_request(h.port, "/sink", method="POST", body=body,
                                   headers={"Content-Length": str(len(body))})
    assert status == 200
    assert json.loads(data) == {"bytes": 100000, "sum": pattern_sum(100000)}
    # chunked, exactly at the limit
    with RawConn(h.port) as c:
        head = request_bytes("POST", "/sink", headers=[("Transfer-Encoding", "chunked")])
        c.send(head + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and json.loads(r.body)["bytes"] == 100000


def test_chunked_body_over_limit_gets_413_and_connection_closes(heliosd, backend):
    h = size_limited(heliosd, backend, max_request_body=10000)
    with RawConn(h.port) as c:
        c.send(request_bytes("POST", "/sink", headers=[("Transfer-Encoding", "chunked")]))
        chunk = b"x" * 4000
        for _ in range(3):
            c.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        r = c.read_response()
        assert r.status == 413, r
        assert c.wait_closed(10.0), "connection stayed open after a 413 mid-body"
    # the proxy is still healthy
    status, _, _ = http_request(h.port, "/")
    assert status == 200


def test_response_body_over_limit_is_truncated(heliosd, backend):
    h = size_limited(heliosd, backend, max_response_body=100000)
    for mode in ("length", "chunked"):
        p = curl("-o", "-", h.url(f"/bytes/1000000?mode={mode}"), timeout=30)
        assert p.returncode in (18, 56), (mode, p.returncode, p.stderr)
        assert len(p.stdout) <= 100000, (mode, len(p.stdout))
        assert pattern_ok(p.stdout), mode
    # under the limit: whole
    p = curl("-o", "-", h.url("/bytes/100000?mode=chunked"), timeout=30)
    assert p.returncode == 0, p.stderr
    assert len(p.stdout) == 100000 and pattern_ok(p.stdout)
    h.wait_stderr(r"max_response_body")


def test_chunked_body_over_limit_after_response_started_closes_connection(heliosd, backend):
    # /echo answers while the body streams: the head is out before the limit
    # is crossed, so no 413 is possible; the exchange is cut instead.
    # (request_buffering 0: a small body would otherwise be read whole
    # before the backend sees the request, and the 413 would come first.)
    port = free_port()
    h = heliosd(make_config(port, [proxy_route("app", "app")],
                            {"app": upstream_conf(backend, request_buffering=0)},
                            modules=[{"module": "size_limit", "config": {"max_request_body": 10000}}]))
    with RawConn(h.port) as c:
        c.send(request_bytes("POST", "/echo", headers=[("Transfer-Encoding", "chunked")]))
        chunk = b"y" * 4000
        c.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        head = c.read_head()
        assert head.status == 200
        for _ in range(2):
            try:
                c.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:
                break
        assert c.wait_closed(10.0), "connection stayed open after the limit was crossed"
        assert b"0\r\n\r\n" not in bytes(c.buf), "the response was completed"
    status, _, _ = http_request(h.port, "/")
    assert status == 200


def test_local_413_carries_the_request_id(heliosd, backend):
    h = start(
        heliosd,
        backend,
        {"module": "request_id"},
        {"module": "size_limit", "config": {"max_request_body": "1k"}},
    )
    with RawConn(h.port) as c:
        c.send(request_bytes("POST", "/sink", headers=[("Content-Length", "2048")]))
        r = c.read_response()
    assert r.status == 413
    assert HEX32.match(r.header("X-Request-ID", "")), r.headers


def test_headers_as_route_filter_applies_to_its_route_only(heliosd, backend):
    port = free_port()
    tagged = proxy_route("tagged", "app", match={"prefix": "/headers"})
    tagged["filters"] = [
        {
            "module": "headers",
            "config": {"request": {"set": {"X-Route": "$route"}}, "response": {"set": {"X-Route": "$route"}}},
        }
    ]
    cfg = make_config(
        port,
        [tagged, proxy_route("plain", "app", match={"prefix": "/"})],
        {"app": upstream_conf(backend)},
    )
    h = heliosd(cfg)
    _, rh, got = seen_headers(h)
    assert values(got, "X-Route") == ["tagged"]
    assert rh["x-route"] == "tagged"
    r = raw_get(h, "/other")
    assert r.status == 200 and r.header("X-Route") is None
