"""Routing: host (exact, wildcard), path (exact, prefix), method, first match
wins, 404 when nothing matches, and path normalisation before matching.

Normalisation contract these tests pin down:
  * percent-encoded unreserved characters are decoded for matching
    (`/%61dmin/` is `/admin/`, `%2e%2e` is `..`);
  * dot segments are removed after decoding (`/public/%2e%2e/admin/x` is
    `/admin/x`; `..` above the root stays at the root);
  * `%2F` is NOT turned into a path separator: `/admin%2Fx` is one segment
    named "admin/x", so it does not match the prefix `/admin/`.
"""

import pytest

from conftest import RawConn, free_port, make_config, proxy_route, request_bytes, static_route, upstream_conf


@pytest.fixture
def router(heliosd, backend):
    port = free_port()
    routes = [
        static_route("admin-guard", "denied\n", match={"prefix": "/admin/"}, status=403),
        static_route("exact-host", "exact-host\n", match={"host": "exact.test"}),
        static_route("wild-host", "wild-host\n", match={"host": "*.example.com"}),
        static_route("exact-path", "exact-path\n", match={"path": "/exact"}),
        static_route("post-only", "post-only\n", match={"prefix": "/m/", "methods": ["POST", "PUT"]}),
        static_route("get-m", "get-m\n", match={"prefix": "/m/get", "methods": ["GET"]}),
        static_route("first", "first\n", match={"prefix": "/dup/"}),
        static_route("second", "second\n", match={"prefix": "/dup/"}),
        static_route("host-and-path", "host-and-path\n", match={"host": "api.test", "prefix": "/v1/"}),
        proxy_route("api", "app", match={"prefix": "/api/"}),
        static_route("public", "public\n", match={"prefix": "/public/"}),
        static_route("pub-root", "pub-root\n", match={"path": "/"}),
    ]
    return heliosd(make_config(port, routes, {"app": upstream_conf(backend)}))


def send(h, path, host="t", method="GET", body=b""):
    headers = [("Content-Length", str(len(body)))] if method in ("POST", "PUT") else []
    with RawConn(h.port) as c:
        c.send(request_bytes(method, path, host=host, headers=headers, body=body))
        r = c.read_response(method=method)
    assert r is not None, f"no response for {method} {path} Host: {host}"
    return r


@pytest.mark.parametrize(
    "host,expected",
    [
        ("exact.test", b"exact-host\n"),
        ("EXACT.test", b"exact-host\n"),  # host names are case-insensitive
        ("exact.test:8080", b"exact-host\n"),  # the port is not part of the name
        ("a.example.com", b"wild-host\n"),
        ("www.Example.COM", b"wild-host\n"),
        ("a.example.com:1234", b"wild-host\n"),
    ],
)
def test_host_match(router, host, expected):
    r = send(router, "/anything", host=host)
    assert (r.status, r.body) == (200, expected)


@pytest.mark.parametrize("host", ["exact.test.evil", "notexact.test", "example.com", "a.example.com.evil", "aexample.com"])
def test_host_non_match_falls_through(router, host):
    r = send(router, "/anything", host=host)
    assert r.status == 404, (host, r.body)


def test_exact_path(router):
    assert send(router, "/exact").body == b"exact-path\n"
    assert send(router, "/exact?q=1").body == b"exact-path\n"  # the query is not part of the path
    assert send(router, "/exact/").status == 404
    assert send(router, "/exactly").status == 404


def test_prefix_path(router):
    r = send(router, "/public/x/y")
    assert (r.status, r.body) == (200, b"public\n")
    assert send(router, "/publicx").status == 404
    assert send(router, "/").body == b"pub-root\n"


def test_method_match(router):
    assert send(router, "/m/x", method="POST", body=b"abc").body == b"post-only\n"
    assert send(router, "/m/x", method="PUT", body=b"abc").body == b"post-only\n"
    assert send(router, "/m/x", method="DELETE").status == 404
    r = send(router, "/m/get")
    assert (r.status, r.body) == (200, b"get-m\n")


def test_first_matching_route_wins(router):
    assert send(router, "/dup/x").body == b"first\n"


def test_host_and_path_must_both_match(router):
    assert send(router, "/v1/x", host="api.test").body == b"host-and-path\n"
    assert send(router, "/v2/x", host="api.test").status == 404
    assert send(router, "/v1/x", host="other.test").status == 404


def test_route_to_upstream(router):
    r = send(router, "/api/whatever")
    assert r.header("X-Backend") == "a"


def test_no_match_is_404_with_small_body(router):
    mark = router.err_mark()
    r = send(router, "/nothing/here")
    assert r.status == 404
    assert 0 < len(r.body) < 4096
    # The connection stays usable after a 404.
    with RawConn(router.port) as c:
        c.send(request_bytes("GET", "/nothing") + request_bytes("GET", "/public/ok"))
        assert c.read_response().status == 404
        assert c.read_response().body == b"public\n"
    router.wait_stderr(r"route", since=mark)


@pytest.mark.parametrize(
    "path",
    [
        "/admin/x",
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/public/%2E%2E/admin/x",
        "/public/.%2e/admin/x",
        "/./admin/x",
        "/public/./../admin/x",
        "/%61dmin/x",
        "/admin/x/../../admin/y",
        "/admin/./x",
        "/api/../admin/x",  # must not reach the upstream route either
    ],
)
def test_guarded_prefix_cannot_be_bypassed(router, path):
    r = send(router, path)
    assert (r.status, r.body) == (403, b"denied\n"), f"{path} slipped past the /admin/ guard: {r.status} {r.body!r}"


@pytest.mark.parametrize("path", ["/../admin/x", "/%2e%2e/admin/x", "/../../admin/x"])
def test_dot_dot_above_root_cannot_bypass(router, path):
    r = send(router, path)
    # Either rejected outright, or clamped at the root and caught by the guard.
    assert r.status in (400, 403), (path, r.status, r.body)


def test_encoded_slash_is_not_a_separator(router):
    # "/admin%2Fx" is a single segment "admin/x": it does not match /admin/,
    # and it is not the /public/ route either, so nothing matches.
    r = send(router, "/admin%2Fx")
    assert r.status == 404, r.body
    r = send(router, "/public/a%2F..%2F..%2Fadmin/x")
    assert (r.status, r.body) == (200, b"public\n")


def test_dot_segments_then_public(router):
    assert send(router, "/admin/../public/x").body == b"public\n"
