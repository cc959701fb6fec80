"""TLS termination: certificates by SNI with a default,
TLS 1.2 and 1.3, ciphers and groups, ALPN, session resumption with rotating
ticket keys shared by every worker, client certificates (mTLS) with the
subject visible to modules, certificate reload on SIGHUP without dropping
connections, and clear config errors for unreadable or mismatched files.

Real clients: curl, `openssl s_client`, Python's ssl module. Certificates are
made by the openssl CLI for each test session under a private test CA.
"""
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    curl,
    free_port,
    make_ca,
    make_cert,
    make_config,
    proxy_route,
    run_config_check,
    upstream_conf,
    wait_for,
    write_config_file,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "test-ca")
    rogue = make_ca(d, "rogue-ca")
    certs = {
        "default": make_cert(d, ca, "default.test", ["default.test"]),
        "a": make_cert(d, ca, "a.test", ["a.test", "*.wild.test"]),
        "b": make_cert(d, ca, "b.test", ["b.test"]),
        "client": make_cert(d, ca, "client1", None, client=True),
        "rogue_client": make_cert(d, rogue, "intruder", None, client=True),
    }
    return {"dir": d, "ca": ca[1], **certs}


def tls_block(pki, **extra):
    t = {"certificates": [
        {"cert": str(pki["default"][0]), "key": str(pki["default"][1])},
        {"cert": str(pki["a"][0]), "key": str(pki["a"][1])},
        {"cert": str(pki["b"][0]), "key": str(pki["b"][1])},
    ]}
    t.update(extra)
    return t


def tls_config(port, pki, backend, workers=1, access_json=None, filters=None, **tls_extra):
    route = proxy_route("app", "app")
    if filters:
        route["filters"] = filters
    cfg = make_config(port, [route], {"app": upstream_conf(backend)}, workers=workers,
                      listeners=[{"address": f"127.0.0.1:{port}", "tls": tls_block(pki, **tls_extra)}])
    if access_json:
        cfg["logging"] = {"level": "info", "access_log": str(access_json), "access_log_format": "json"}
    return cfg


def s_client(port, *args, data=b"", timeout=20):
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                       input=data, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def peer_cn(port, servername=None, extra=()):
    args = ["-servername", servername] if servername else ["-noservername"]
    rc, out = s_client(port, *args, *extra)
    m = re.search(r"subject=.*?CN\s*=\s*([^\s,/]+)", out)
    return m.group(1) if m else None


def sent_headers(p):
    """Headers the backend received, from hx_backend's /headers JSON."""
    return dict(json.loads(p.stdout.decode().split("\r\n\r\n", 1)[1])["headers"])


def https(port, path="/", host="a.test", ca=None, extra=()):
    p = curl("--resolve", f"{host}:{port}:127.0.0.1", "--cacert", str(ca),
             "-D", "-", f"https://{host}:{port}{path}", *extra)
    return p


# --------------------------------------------------------------------------


def test_https_proxies_and_tells_the_backend_it_was_https(heliosd, backend, pki, tmp_path):
    port = free_port()
    log = tmp_path / "access.json"
    h = heliosd(tls_config(port, pki, backend, access_json=log))
    p = https(port, "/headers", ca=pki["ca"])
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert re.match(r"HTTP/(1\.1|2) 200", out), out[:200]  # curl takes h2 by ALPN
    assert "x-backend: a" in out.lower()
    # hx_backend's /headers answers the request headers it got as JSON
    got = dict(json.loads(out.split("\r\n\r\n", 1)[1])["headers"])
    assert got["X-Forwarded-Proto"] == "https"
    assert got["Forwarded"] == 'for=127.0.0.1;host="a.test";proto=https'

    # the access log records the TLS version and cipher
    wait_for(lambda: log.exists() and log.read_text().strip(), timeout=5)
    rec = json.loads(log.read_text().strip().splitlines()[-1])
    assert rec["tls"] in ("TLSv1.3", "TLSv1.2") and rec["cipher"] not in ("", "-")
    # plain text to the TLS port: the connection closes, the server lives on
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        data = s.recv(100)
    except ConnectionResetError:
        data = b""
    s.close()
    assert not data.startswith(b"HTTP/")
    assert https(port, "/", ca=pki["ca"]).returncode == 0


def test_sni_picks_the_certificate_with_a_default(heliosd, backend, pki):
    port = free_port()
    heliosd(tls_config(port, pki, backend))
    assert peer_cn(port, "a.test") == "a.test"
    assert peer_cn(port, "b.test") == "b.test"
    assert peer_cn(port, "x.wild.test") == "a.test"       # *.wild.test
    assert peer_cn(port, "x.y.wild.test") == "default.test"  # one label only
    assert peer_cn(port, "unknown.test") == "default.test"
    assert peer_cn(port, None) == "default.test"
    assert peer_cn(port, "B.TEST") == "b.test"


def test_protocol_versions_and_ciphers(heliosd, backend, pki, tmp_path):
    port = free_port()
    heliosd(tls_config(port, pki, backend, protocols=["TLSv1.3"]))
    rc, out = s_client(port, "-servername", "a.test", "-tls1_2")
    assert rc != 0 or "Cipher is (NONE)" in out, out[-800:]
    rc, out = s_client(port, "-servername", "a.test", "-tls1_3")
    assert rc == 0 and "TLSv1.3" in out, out[-800:]

    port2 = free_port()
    log = tmp_path / "a2.json"
    heliosd(tls_config(port2, pki, backend, access_json=log, protocols=["TLSv1.2"],
                       ciphers="ECDHE-ECDSA-AES128-GCM-SHA256", groups="P-256"))
    p = https(port2, "/", ca=pki["ca"])
    assert p.returncode == 0, p.stderr
    wait_for(lambda: log.exists() and log.read_text().strip(), timeout=5)
    rec = json.loads(log.read_text().strip().splitlines()[-1])
    assert rec["tls"] == "TLSv1.2" and rec["cipher"] == "ECDHE-ECDSA-AES128-GCM-SHA256", rec
    rc, out = s_client(port2, "-servername", "a.test", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384")
    assert rc != 0 or "Cipher is (NONE)" in out


def test_alpn_offers_h2_and_http11(heliosd, backend, pki):
    port = free_port()
    heliosd(tls_config(port, pki, backend))
    rc, out = s_client(port, "-servername", "a.test", "-alpn", "http/1.1")
    assert "ALPN protocol: http/1.1" in out, out[-800:]
    rc, out = s_client(port, "-servername", "a.test", "-alpn", "h2,http/1.1")
    assert "ALPN protocol: h2" in out, out[-800:]
    rc, out = s_client(port, "-servername", "a.test", "-alpn", "spdy/3")
    assert "No ALPN negotiated" in out


_CTX = {}


def resumed(port, ca, sess=None, tls13=True):
    # a session resumes only through the SSLContext that made it
    key = (str(ca), tls13)
    if key not in _CTX:
        ctx = ssl.create_default_context(cafile=str(ca))
        if not tls13:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        _CTX[key] = ctx
    ctx = _CTX[key]
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw, server_hostname="a.test", session=sess)
    s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    out = (s.session_reused, s.session)
    s.close()
    return out


@pytest.mark.parametrize("tls13", [True, False], ids=["tls1.3", "tls1.2"])
def test_session_resumption_across_workers(heliosd, backend, pki, tls13):
    port = free_port()
    heliosd(tls_config(port, pki, backend, workers=3))
    reused, sess = resumed(port, pki["ca"], tls13=tls13)
    assert not reused
    hits = 0
    for _ in range(8):  # SO_REUSEPORT spreads these over the workers
        r, _ = resumed(port, pki["ca"], sess, tls13=tls13)
        hits += r
    assert hits == 8


def test_ticket_keys_rotate(heliosd, backend, pki):
    port = free_port()
    heliosd(tls_config(port, pki, backend, session_ticket_rotation="1s"))
    _, sess = resumed(port, pki["ca"])
    time.sleep(1.2)
    r, _ = resumed(port, pki["ca"], sess)  # the previous key still opens it
    assert r
    time.sleep(4.0)  # three rotations later it is gone
    resumed(port, pki["ca"])  # a handshake rotates lazily
    time.sleep(1.2)
    resumed(port, pki["ca"])
    time.sleep(1.2)
    r, _ = resumed(port, pki["ca"], sess)
    assert not r


def test_tickets_can_be_turned_off(heliosd, backend, pki):
    port = free_port()
    heliosd(tls_config(port, pki, backend, session_tickets=False))
    _, sess = resumed(port, pki["ca"], tls13=False)
    r, _ = resumed(port, pki["ca"], sess, tls13=False)
    assert not r


def test_mtls_required_accepts_verified_clients_and_shows_the_subject(heliosd, backend, pki):
    port = free_port()
    filters = [{"module": "headers", "config": {"request": {"set": {
        "X-Client-Subject": "$tls_client_subject", "X-Client-Verified": "$tls_client_verified",
        "X-TLS": "$tls_version $tls_sni $scheme"}}}}]
    heliosd(tls_config(port, pki, backend, filters=filters,
                       client_auth={"ca": str(pki["ca"]), "required": True}))
    ok = https(port, "/headers", ca=pki["ca"],
               extra=("--cert", str(pki["client"][0]), "--key", str(pki["client"][1])))
    assert ok.returncode == 0, ok.stderr
    got = sent_headers(ok)
    assert got["X-Client-Subject"] == "/CN=client1"
    assert got["X-Client-Verified"] == "1"
    assert re.fullmatch(r"TLSv1\.[23] a\.test https", got["X-TLS"]), got
    none = https(port, "/", ca=pki["ca"])
    assert none.returncode != 0
    rogue = https(port, "/", ca=pki["ca"],
                  extra=("--cert", str(pki["rogue_client"][0]), "--key", str(pki["rogue_client"][1])))
    assert rogue.returncode != 0


def test_mtls_optional_lets_anonymous_clients_in(heliosd, backend, pki):
    port = free_port()
    filters = [{"module": "headers", "config": {"request": {"set": {
        "X-Client-Verified": "$tls_client_verified"}}}}]
    heliosd(tls_config(port, pki, backend, filters=filters,
                       client_auth={"ca": str(pki["ca"]), "required": False}))
    p = https(port, "/headers", ca=pki["ca"])
    assert p.returncode == 0, p.stderr
    assert sent_headers(p)["X-Client-Verified"] == "0"


def fingerprint(port, servername="a.test"):
    rc, out = s_client(port, "-servername", servername, "-showcerts")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
    assert m, out[-500:]
    p = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"],
                       input=m.group(0).encode(), capture_output=True)
    return p.stdout.decode().strip()


def test_certificates_reload_on_sighup_without_dropping_connections(heliosd, backend, pki, tmp_path):
    d = tmp_path / "live"
    d.mkdir()
    ca = (pki["dir"] / "test-ca.key", pki["ca"])
    cert, key = make_cert(d, ca, "a.test", ["a.test"], serial=1001)
    port = free_port()
    cfg = make_config(port, [proxy_route("app", "app")], {"app": upstream_conf(backend)},
                      listeners=[{"address": f"127.0.0.1:{port}", "tls": {
                          "certificates": [{"cert": str(cert), "key": str(key)}]}}])
    h = heliosd(cfg)
    before = fingerprint(port)
    # a long download over TLS, read slowly, across the reload
    size = 40 * 1024 * 1024
    result = {}

    def download():
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                            server_hostname="a.test")
        s.sendall(f"GET /bytes/{size} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".encode())
        got = 0
        head = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            if not head:
                head = chunk[:200]
            got += len(chunk)
            time.sleep(0.002)
        result["got"], result["head"] = got, head
        s.close()

    t = threading.Thread(target=download)
    t.start()
    time.sleep(0.3)
    # new certificate and key under the same names (mode kept)
    new_cert, new_key = make_cert(d, ca, "a.test.new", ["a.test"], serial=2002)
    os.replace(new_cert, cert)
    os.replace(new_key, key)
    mark = h.err_mark()
    h.reload()
    h.wait_stderr(r"generation 2 is live", since=mark)
    after = fingerprint(port)
    assert after != before
    t.join(120)
    assert result["head"].startswith(b"HTTP/1.1 200"), result
    assert result["got"] > size, result  # the whole body (plus the head) arrived
    assert https(port, "/", ca=pki["ca"]).returncode == 0


def assert_config_refused(tmp_path, tls, expect):
    port = free_port()
    cfg = make_config(port, [proxy_route("app", "app")],
                      {"app": {"backends": [{"name": "x", "address": "127.0.0.1:9"}]}},
                      listeners=[{"address": f"127.0.0.1:{port}", "tls": tls}])
    p = run_config_check(write_config_file(tmp_path, cfg, "bad.yaml"))
    assert p.returncode == 1, p.output
    assert re.search(expect, p.stderr), p.stderr
    return p.stderr


def test_bad_certificate_files_are_config_errors_naming_the_file(tmp_path, pki):
    missing = tmp_path / "nope.pem"
    assert_config_refused(tmp_path, {"certificates": [{"cert": str(missing), "key": str(pki["a"][1])}]},
                          rf"certificates\[0\]\.cert: certificate file {re.escape(str(missing))}: No such file")
    unreadable = tmp_path / "secret.key"
    unreadable.write_bytes(Path(pki["a"][1]).read_bytes())
    os.chmod(unreadable, 0)
    if os.geteuid() != 0:  # root reads anything
        assert_config_refused(tmp_path, {"certificates": [{"cert": str(pki["a"][0]), "key": str(unreadable)}]},
                              r"key file .*secret\.key: Permission denied")
    assert_config_refused(tmp_path, {"certificates": [{"cert": str(pki["a"][0]), "key": str(pki["b"][1])}]},
                          rf"key file {re.escape(str(pki['b'][1]))} does not match certificate file "
                          rf"{re.escape(str(pki['a'][0]))}")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert_config_refused(tmp_path, {"certificates": [{"cert": str(garbage), "key": str(pki["a"][1])}]},
                          rf"cannot load certificate file {re.escape(str(garbage))}")
    assert_config_refused(tmp_path, {"certificates": [{"cert": str(pki["a"][0]), "key": str(pki["a"][1])}],
                                     "ciphers": "NOT-A-CIPHER"}, r"tls\.ciphers: invalid TLS 1\.2 cipher list")
    assert_config_refused(tmp_path, {"certificates": [{"cert": str(pki["a"][0]), "key": str(pki["a"][1])}],
                                     "protocols": ["SSLv3"]}, r"unknown TLS protocol version")
    assert_config_refused(tmp_path, {"certificates": []}, r"non-empty list")
    assert_config_refused(tmp_path, {"certificates": [{"cert": str(pki["a"][0]), "key": str(pki["a"][1])}],
                                     "client_auth": {"required": True}}, r"missing required key \"ca\"")
    assert_config_refused(tmp_path, {"certificates": [{"cert": str(pki["a"][0]), "key": str(pki["a"][1])}],
                                     "bogus": 1}, r"unknown key \"bogus\"")


def test_invalid_certificate_on_reload_keeps_the_old_one(heliosd, backend, pki, tmp_path):
    port = free_port()
    h = heliosd(tls_config(port, pki, backend))
    before = fingerprint(port)
    bad = tls_config(port, pki, backend)
    bad["listeners"][0]["tls"]["certificates"][1]["key"] = str(pki["b"][1])
    mark = h.err_mark()
    h.reload(bad)
    h.wait_stderr(r"reload failed", since=mark)
    assert "does not match certificate file" in h.stderr()[mark:]
    assert fingerprint(port) == before
    assert https(port, "/", ca=pki["ca"]).returncode == 0


def test_ktls_option_serves(heliosd, backend, pki):
    port = free_port()
    heliosd(tls_config(port, pki, backend, ktls=True))
    p = https(port, "/bytes/300000", ca=pki["ca"])
    assert p.returncode == 0 and len(p.stdout) > 300000


def test_many_handshakes_and_aborted_handshakes(heliosd, backend, pki):
    port = free_port()
    h = heliosd(tls_config(port, pki, backend, workers=2))
    # half a ClientHello, then gone; and a connection that never speaks
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(40))
        s.close()
    idle = socket.create_connection(("127.0.0.1", port), timeout=5)
    errors = []

    def worker():
        for _ in range(25):
            try:
                r, _ = resumed(port, pki["ca"])
            except Exception as e:  # noqa: BLE001 - collected below
                errors.append(repr(e))

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    idle.close()
    assert not errors, errors[:3]
    assert h.alive()
