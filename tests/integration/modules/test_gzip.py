"""The gzip filter: streamed compression whose output gunzips to the
backend's bytes exactly, for every size and framing; bounded memory on a
1 GiB response; Accept-Encoding q-values; responses it must leave alone;
the headers it rewrites; located configuration errors."""

import gzip
import http.client
import re
import time
import zlib

import pytest

from conftest import (
    RssSampler,
    free_port,
    is_sanitizer_build,
    make_config,
    pattern_bytes,
    pattern_ok,
    proxy_route,
    rss_kb,
    upstream_conf,
)

GIB = 1 << 30
MIB = 1 << 20
RSS_LIMIT_KB = 64 * 1024
ASAN_QUARANTINE_KB = 256 * 1024

SIZES = [0, 1, 255, 256, 4095, 65536, MIB + 7, 10 * MIB]


def gzip_module(**config):
    return {"module": "gzip", "config": config} if config else {"module": "gzip"}


def static_handler(body=None, status=200, headers=None, content_type=None):
    cfg = {"status": status}
    if body is not None:
        cfg["body"] = body
    if headers:
        cfg["headers"] = headers
    if content_type is not None:
        cfg["content_type"] = content_type
    return {"module": "static_response", "config": cfg}


def route(name, prefix, handler):
    return {"name": name, "match": {"prefix": prefix}, "handler": handler}


def start(heliosd, backend, modules, routes=()):
    """heliosd with the global MODULES chain, ROUTES (static handlers) and
    everything else proxied to BACKEND."""
    cfg = make_config(
        free_port(),
        [*routes, proxy_route("app", "app")],
        {"app": upstream_conf(backend, timeouts={"read": "60s", "send": "60s"})},
        modules=modules,
    )
    return heliosd(cfg)


def fetch(port, path, accept="gzip", method="GET", headers=None, timeout=60):
    """One request; returns (status, [(name, value)], raw body bytes)."""
    hdrs = dict(headers or {})
    if accept is not None:
        hdrs["Accept-Encoding"] = accept
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        # skip_accept_encoding: http.client would otherwise add "identity"
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        return r.status, r.getheaders(), body
    finally:
        conn.close()


def hdr(headers, name):
    vals = [v for k, v in headers if k.lower() == name.lower()]
    return ", ".join(vals) if vals else None


def is_gzipped(headers):
    return (hdr(headers, "content-encoding") or "").lower() == "gzip"


# ---------------------------------------------------------------------------
# byte-for-byte


@pytest.mark.parametrize("mode", ["length", "chunked", "close"])
def test_gunzipped_body_equals_backend_bytes_for_every_size(heliosd, backend, mode):
    h = start(heliosd, backend, [gzip_module(types=["application/octet-stream"], min_length=0)])
    for n in SIZES:
        status, headers, body = fetch(h.port, f"/bytes/{n}?mode={mode}")
        what = f"/bytes/{n}?mode={mode}"
        assert status == 200, what
        assert is_gzipped(headers), f"{what}: not compressed: {headers}"
        assert hdr(headers, "content-length") is None, f"{what}: Content-Length kept"
        assert "accept-encoding" in (hdr(headers, "vary") or "").lower(), what
        plain = gzip.decompress(body)
        assert len(plain) == n, f"{what}: {len(plain)} bytes after gunzip"
        assert plain == pattern_bytes(0, n), f"{what}: gunzipped bytes differ from the backend's"
        if n >= 4095:
            assert len(body) < n // 4, f"{what}: {len(body)} bytes compressed, hardly smaller"


def test_http10_client_gets_close_delimited_gzip(heliosd, backend):
    h = start(heliosd, backend, [gzip_module(types=["application/octet-stream"])])
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=30)
    conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
    try:
        conn.putrequest("GET", "/bytes/100000?mode=chunked", skip_accept_encoding=True)
        conn.putheader("Accept-Encoding", "gzip")
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        headers = r.getheaders()
    finally:
        conn.close()
    assert is_gzipped(headers)
    assert hdr(headers, "transfer-encoding") is None
    assert gzip.decompress(body) == pattern_bytes(0, 100000)


def test_static_response_body_is_compressed(heliosd, backend):
    text = "hello gzip " * 500
    h = start(heliosd, backend, [gzip_module()], [route("s", "/s", static_handler(text))])
    status, headers, body = fetch(h.port, "/s")
    assert status == 200 and is_gzipped(headers)
    assert gzip.decompress(body).decode() == text


# ---------------------------------------------------------------------------
# bounded memory


def check_rss(sampler, baseline):
    growth = sampler.max - baseline
    print(f"RSS baseline {baseline} KiB, peak {sampler.max} KiB, growth {growth} KiB, {sampler.samples} samples")
    assert sampler.samples > 5, "RSS was not sampled during the transfer"
    limit = RSS_LIMIT_KB + (ASAN_QUARANTINE_KB if is_sanitizer_build() else 0)
    assert growth < limit, f"heliosd RSS grew by {growth} KiB (limit {limit} KiB)"


def stream_gunzip(port, path, timeout=120):
    """GETs PATH with gzip and decompresses as it arrives, checking every
    byte against the /bytes pattern without keeping it. Returns (headers,
    compressed bytes, plain bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.putheader("Accept-Encoding", "gzip")
        conn.endheaders()
        r = conn.getresponse()
        headers = r.getheaders()
        d = zlib.decompressobj(16 + 15)
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        packed = plain = 0
        while True:
            n = r.readinto(mv)
            if not n:
                break
            packed += n
            # bounded output per call so a 1 GiB body never sits in memory
            data = d.decompress(bytes(mv[:n]), 4 * MIB)
            while True:
                assert pattern_ok(data, plain), f"corrupt byte within [{plain}, {plain + len(data)})"
                plain += len(data)
                if not d.unconsumed_tail:
                    break
                data = d.decompress(d.unconsumed_tail, 4 * MIB)
        tail = d.flush()
        assert pattern_ok(tail, plain)
        plain += len(tail)
        assert d.eof, "gzip stream did not end (no trailer)"
        return headers, packed, plain
    finally:
        conn.close()


@pytest.mark.big
def test_1gib_response_is_compressed_with_bounded_memory(heliosd, backend):
    h = start(heliosd, backend, [gzip_module(types=["application/octet-stream"])])
    for _ in range(3):  # steady-state buffers before the baseline
        stream_gunzip(h.port, "/bytes/4000000?mode=chunked")
    baseline = rss_kb(h.pid)
    t0 = time.monotonic()
    with RssSampler(h.pid) as s:
        headers, packed, plain = stream_gunzip(h.port, f"/bytes/{GIB}?mode=length")
    elapsed = time.monotonic() - t0
    print(f"1 GiB gzipped to {packed} bytes in {elapsed:.1f}s")
    assert is_gzipped(headers)
    assert plain == GIB, f"got {plain} of {GIB} bytes in {elapsed:.1f}s"
    check_rss(s, baseline)


# ---------------------------------------------------------------------------
# Accept-Encoding


@pytest.mark.parametrize(
    "accept, compressed",
    [
        (None, False),
        ("", False),
        ("gzip", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=0.001", True),
        ("gzip ; Q=1.0", True),
        ("identity", False),
        ("identity;q=1, br", False),
        ("*", True),
        ("*;q=0", False),
        ("br, *;q=0.5", True),
        ("gzip;q=0, *", False),
        ("*;q=0, gzip", True),
        ("identity, *;q=0", False),
        ("deflate, gzip;q=0.5, br", True),
        ("gzip;q=1.5", False),
        ("gzip;q=abc", False),
        ("gzipx, gzi", False),
    ],
)
def test_accept_encoding_q_values(heliosd, backend, accept, compressed):
    h = start(heliosd, backend, [gzip_module(types=["application/octet-stream"])])
    status, headers, body = fetch(h.port, "/bytes/5000", accept=accept)
    assert status == 200
    assert is_gzipped(headers) == compressed, f"Accept-Encoding {accept!r}: {headers}"
    plain = gzip.decompress(body) if compressed else body
    assert plain == pattern_bytes(0, 5000)
    if not compressed:
        assert hdr(headers, "content-length") == "5000"


# ---------------------------------------------------------------------------
# left alone


def test_responses_that_must_stay_untouched(heliosd, backend):
    text = "x" * 4000
    h = start(
        heliosd,
        backend,
        [gzip_module(types=["application/octet-stream", "text/plain"])],
        [
            route("br", "/br", static_handler(text, headers={"Content-Encoding": "br"})),
            route(
                "partial",
                "/partial",
                static_handler(text, status=206, headers={"Content-Range": "bytes 0-3999/8000"}),
            ),
            route("range200", "/range200", static_handler(text, headers={"Content-Range": "bytes */4000"})),
            route("notransform", "/nt", static_handler(text, headers={"Cache-Control": "public, no-transform"})),
            route("png", "/png", static_handler(text, content_type="image/png")),
            route("notype", "/notype", static_handler(text, content_type="")),
        ],
    )
    for path in ["/br", "/partial", "/range200", "/nt", "/png", "/notype"]:
        status, headers, body = fetch(h.port, path)
        enc = hdr(headers, "content-encoding")
        assert enc in (None, "br"), f"{path}: {headers}"
        assert body == text.encode(), path
        assert hdr(headers, "content-length") == "4000", path
        assert "accept-encoding" not in (hdr(headers, "vary") or "").lower(), path

    # HEAD: the head is the identity one, Content-Length kept
    status, headers, body = fetch(h.port, "/bytes/100000", method="HEAD")
    assert status == 200 and body == b""
    assert hdr(headers, "content-encoding") is None
    assert hdr(headers, "content-length") == "100000"

    for code in (204, 304):
        status, headers, body = fetch(h.port, f"/status/{code}")
        assert status == code and body == b""
        assert hdr(headers, "content-encoding") is None, f"{code}: {headers}"

    # a Range request goes through as the backend answered it
    status, headers, body = fetch(h.port, "/bytes/100000", headers={"Range": "bytes=0-9"})
    assert hdr(headers, "content-encoding") is None
    assert body == pattern_bytes(0, 100000)

    # below min_length with a known length: identity; unknown length: gzip
    status, headers, body = fetch(h.port, "/bytes/255?mode=length")
    assert hdr(headers, "content-encoding") is None and body == pattern_bytes(0, 255)
    status, headers, body = fetch(h.port, "/bytes/256?mode=length")
    assert is_gzipped(headers) and gzip.decompress(body) == pattern_bytes(0, 256)
    status, headers, body = fetch(h.port, "/bytes/10?mode=chunked")
    assert is_gzipped(headers) and gzip.decompress(body) == pattern_bytes(0, 10)


# ---------------------------------------------------------------------------
# rewritten headers


def test_headers_are_rewritten(heliosd, backend):
    text = "hello " * 1000
    h = start(
        heliosd,
        backend,
        [gzip_module()],
        [
            route("etag", "/etag", static_handler(text, headers={"ETag": '"v1"', "Vary": "Origin"})),
            route("weak", "/weak", static_handler(text, headers={"ETag": 'W/"v2"', "Vary": "accept-encoding"})),
            route("star", "/star", static_handler(text, headers={"Vary": "*"})),
            route("html", "/html", static_handler(text, content_type="TEXT/HTML ; charset=utf-8")),
        ],
    )
    status, headers, body = fetch(h.port, "/etag")
    assert is_gzipped(headers) and gzip.decompress(body) == text.encode()
    assert hdr(headers, "content-length") is None
    assert hdr(headers, "transfer-encoding") == "chunked"
    assert hdr(headers, "etag") == 'W/"v1"'
    vary = [v.strip().lower() for v in hdr(headers, "vary").split(",")]
    assert vary == ["origin", "accept-encoding"], headers

    status, headers, body = fetch(h.port, "/weak")
    assert is_gzipped(headers)
    assert hdr(headers, "etag") == 'W/"v2"'
    assert hdr(headers, "vary") == "accept-encoding"

    status, headers, body = fetch(h.port, "/star")
    assert is_gzipped(headers)
    assert hdr(headers, "vary") == "*"

    status, headers, body = fetch(h.port, "/html")
    assert is_gzipped(headers), "media type match must ignore case, spaces and parameters"
    assert hdr(headers, "vary") == "Accept-Encoding"
    assert gzip.decompress(body) == text.encode()

    # the backend's default text/plain hello is under min_length: untouched
    status, headers, body = fetch(h.port, "/")
    assert hdr(headers, "content-encoding") is None and body.startswith(b"hello from")


def test_per_route_filter_and_level(heliosd, backend):
    cfg = make_config(
        free_port(),
        [
            {
                "name": "z",
                "match": {"prefix": "/bytes/"},
                "upstream": "app",
                "filters": [gzip_module(types=["*"], level=1)],
            },
            proxy_route("app", "app"),
        ],
        {"app": upstream_conf(backend)},
    )
    h = heliosd(cfg)
    status, headers, body = fetch(h.port, "/bytes/300000?mode=chunked")
    assert is_gzipped(headers) and gzip.decompress(body) == pattern_bytes(0, 300000)
    status, headers, body = fetch(h.port, "/headers")  # other route: no filter
    assert hdr(headers, "content-encoding") is None


# ---------------------------------------------------------------------------
# configuration errors


def config_with(modules):
    return make_config(
        free_port(),
        [proxy_route("app", "app")],
        {"app": {"backends": [{"address": "127.0.0.1:9"}]}},
        modules=modules,
    )


def test_config_errors_are_located(check_config):
    rc, _, err = check_config(
        config_with(
            [
                gzip_module(level=0, min_length="lots", types=["text/html", "text", "a/b; charset=x"], bogus=1),
                gzip_module(types="text/html"),
                gzip_module(level=10),
            ]
        )
    )
    assert rc != 0
    loc = r"heliosd\.yaml:\d+:\d+: "
    for rx in [
        loc + r".*level",
        loc + r".*min_length",
        loc + r".*'text' is not a media type",
        loc + r".*'a/b; charset=x' is not a media type",
        loc + r".*bogus",
        loc + r".*types.*expected a list",
    ]:
        assert re.search(rx, err), f"missing {rx!r} in:\n{err}"
    assert len(re.findall(loc + r".*level", err)) >= 2, err


def test_valid_config_passes(check_config):
    rc, _, err = check_config(
        config_with(
            [gzip_module(), gzip_module(types=["*"], min_length="1k", level=9), {"module": "gzip", "config": None}]
        )
    )
    assert rc == 0, err
