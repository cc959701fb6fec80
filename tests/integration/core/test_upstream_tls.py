"""TLS to upstreams: verification against a CA file, SNI
and the name checked on the certificate, an optional client certificate,
and keep-alive reuse of TLS connections.

The TLS backend is a second heliosd terminating TLS in front of hx_backend:
real components on both sides.
"""
import re

import pytest

from conftest import free_port, http_request, make_ca, make_cert, make_config, proxy_route, upstream_conf


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("uppki")
    ca = make_ca(d, "up-ca")
    other = make_ca(d, "other-ca")
    return {
        "dir": d,
        "ca": ca[1],
        "other_ca": other[1],
        "server": make_cert(d, ca, "backend.internal", ["backend.internal"]),
        "client": make_cert(d, ca, "edge-proxy", None, client=True),
    }


def tls_backend(heliosd, backend, pki, client_auth=False, name="tlsback"):
    """heliosd #2: TLS on a port, proxying to hx_backend."""
    port = free_port()
    tls = {"certificates": [{"cert": str(pki["server"][0]), "key": str(pki["server"][1])}]}
    if client_auth:
        tls["client_auth"] = {"ca": str(pki["ca"]), "required": True}
    route = proxy_route("app", "app")
    route["filters"] = [{"module": "headers", "config": {"request": {"set": {
        "X-Seen-SNI": "$tls_sni", "X-Seen-Client": "$tls_client_subject",
        "X-Seen-TLS": "$tls_version"}}}}]
    cfg = make_config(port, [route], {"app": upstream_conf(backend)},
                      listeners=[{"address": f"127.0.0.1:{port}", "tls": tls}])
    return heliosd(cfg, name=name), port


def edge(heliosd, back_port, tls, name="edge", **up):
    port = free_port()
    cfg = make_config(port, [proxy_route("app", "app")], {"app": {
        "backends": [{"name": "t", "address": f"127.0.0.1:{back_port}"}], "tls": tls, **up}})
    return heliosd(cfg, name=name)


def seen(body):
    import json
    return dict(json.loads(body)["headers"])


def test_verified_tls_with_sni_and_connection_reuse(heliosd, backend, pki):
    back, bport = tls_backend(heliosd, backend, pki)
    e = edge(heliosd, bport, {"ca": str(pki["ca"]), "sni": "backend.internal"})
    backend.reset_stats()
    for _ in range(20):
        status, _, body = http_request(e.port, "/headers")
        assert status == 200, body
    got = seen(body)
    assert got["X-Seen-SNI"] == "backend.internal"
    assert got["X-Seen-TLS"] in ("TLSv1.3", "TLSv1.2")
    # the edge kept its TLS connection to the TLS backend alive: the
    # backend heliosd saw one client connection for the 20 requests
    status, _, big = http_request(e.port, "/bytes/2000000")
    assert status == 200 and len(big) == 2000000
    back_log = back.stderr()
    assert "TLS handshake failed" not in back_log


def test_wrong_ca_or_wrong_name_is_a_502_with_a_clear_log(heliosd, backend, pki):
    _, bport = tls_backend(heliosd, backend, pki)
    e = edge(heliosd, bport, {"ca": str(pki["other_ca"]), "sni": "backend.internal"}, name="e1")
    status, _, _ = http_request(e.port, "/")
    assert status == 502
    e.wait_stderr(r"TLS handshake with 127\.0\.0\.1:\d+ failed: .*certificate verify failed")
    e2 = edge(heliosd, bport, {"ca": str(pki["ca"]), "sni": "other.name"}, name="e2")
    status, _, _ = http_request(e2.port, "/")
    assert status == 502
    e2.wait_stderr(r"TLS handshake with .* failed: .*(hostname mismatch|certificate verify failed)")
    # verify: false accepts it (and says nothing about the name)
    e3 = edge(heliosd, bport, {"verify": False}, name="e3")
    assert http_request(e3.port, "/")[0] == 200


def test_client_certificate_to_an_mtls_backend(heliosd, backend, pki):
    _, bport = tls_backend(heliosd, backend, pki, client_auth=True)
    without = edge(heliosd, bport, {"ca": str(pki["ca"]), "sni": "backend.internal"}, name="e1")
    assert http_request(without.port, "/")[0] == 502
    with_cert = edge(heliosd, bport, {"ca": str(pki["ca"]), "sni": "backend.internal",
                                     "cert": str(pki["client"][0]), "key": str(pki["client"][1])},
                     name="e2")
    status, _, body = http_request(with_cert.port, "/headers")
    assert status == 200
    assert seen(body)["X-Seen-Client"] == "/CN=edge-proxy"


def test_plain_backend_behind_a_tls_upstream_fails_cleanly(heliosd, backend, pki):
    e = edge(heliosd, backend.port, {"verify": False}, name="e1")
    status, _, _ = http_request(e.port, "/")
    assert status == 502
    e.wait_stderr(r"TLS handshake with .* failed")
    assert e.alive()


def test_upstream_tls_config_errors(tmp_path, pki, check_config):
    def check(tls, expect):
        cfg = make_config(free_port(), [proxy_route("app", "app")], {"app": {
            "backends": [{"name": "t", "address": "127.0.0.1:9"}], "tls": tls}})
        p = check_config(cfg, "c.yaml")
        assert p.returncode == 1 and re.search(expect, p.stderr), p.stderr

    check({"ca": str(tmp_path / "nope.pem")}, r"tls\.ca: CA file .*nope\.pem: No such file")
    check({"cert": str(pki["client"][0])}, r"needs both \"cert\" and \"key\"")
    check({"cert": str(pki["client"][0]), "key": str(pki["server"][1])}, r"does not match")
    check({"bogus": 1}, r"unknown key \"bogus\"")
    check("yes please", r"expected a map")
