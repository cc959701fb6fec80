"""admin_api authentication and authorization: every negative case of the
issue, with real tokens (Debian's python3-jwt and python3-cryptography) sent
by the curl binary.

HS256 with a secret file, RS256 and ES256 with public keys generated here;
the IP allow/deny lists on IPv4 and on an [::1] listener; and the config
checks on the secret file (world-readable, missing, empty).
"""

import base64
import hashlib
import hmac
import json
import os
import re
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import (
    curl,
    free_port,
    ipv6_available,
    make_config,
    run_config_check,
    static_route,
    wait_for,
    write_config_file,
)

SECRET = "another-test-secret"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(scope="read write", ttl=600, **extra):
    now = int(time.time())
    c = {"sub": "auth-test", "iat": now, "exp": now + ttl}
    if scope is not None:
        c["scope"] = scope
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def hs256(payload, secret=SECRET, header=None):
    """A token built by hand (PyJWT refuses some of the bad ones we need)."""
    h = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    p = b64url(json.dumps(payload).encode())
    key = secret if isinstance(secret, bytes) else secret.encode()
    sig = hmac.new(key, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url(sig)}"


def call(base, path, token=None, method="GET", body=None, authz=None):
    args = ["-i", "-X", method]
    if authz is not None:
        args += ["-H", f"Authorization: {authz}"]
    elif token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    p = curl(*args, base + path, timeout=20)
    assert p.returncode == 0, p.stderr
    head, _, rest = p.stdout.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    hdrs = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, json.loads(rest) if rest else None


def start(heliosd, tmp_path, auth, host="127.0.0.1", **extra):
    aport = free_port(host)
    listen = f"[{host}]:{aport}" if ":" in host else f"{host}:{aport}"
    cfg = make_config(free_port(), [static_route("s", "x")],
                      modules=[{"module": "admin_api", "config": {"listen": listen, "auth": auth, **extra}}])
    h = heliosd(cfg)
    base = f"http://[{host}]:{aport}" if ":" in host else f"http://{host}:{aport}"
    wait_for(lambda: curl("-s", "-o", "/dev/null", base + "/v1/health").returncode == 0, what="admin up")
    return h, base


def secret_file(tmp_path, mode=0o600, value=SECRET):
    p = tmp_path / "hs.secret"
    p.write_text(value + "\n")
    os.chmod(p, mode)
    return p


@pytest.fixture
def hs(heliosd, tmp_path):
    """An HS256 admin API with issuer and audience."""
    auth = {"algorithm": "HS256", "secret_file": str(secret_file(tmp_path)), "issuer": "ops-ca",
            "audience": "heliosd-admin", "leeway": "30s"}
    return start(heliosd, tmp_path, auth)


def good(**kw):
    base = {"iss": "ops-ca", "aud": "heliosd-admin"}
    base.update(kw)
    return claims(**base)


def assert_401(resp, fragment=None):
    st, hdrs, body = resp
    assert st == 401, (st, body)
    assert hdrs["www-authenticate"].startswith('Bearer realm="heliosd-admin"'), hdrs
    assert body["error"]["status"] == 401
    if fragment:
        assert fragment in body["error"]["message"], body
        assert 'error="invalid_token"' in hdrs["www-authenticate"]


# ---------------------------------------------------------------- HS256


def test_valid_tokens_accepted(hs):
    h, base = hs
    assert call(base, "/v1/backends", jwt.encode(good(), SECRET, algorithm="HS256"))[0] == 200
    # aud as an array containing ours; scope as an array
    t = jwt.encode(good(aud=["other", "heliosd-admin"], scope=["read", "write"]), SECRET, algorithm="HS256")
    assert call(base, "/v1/modules", t)[0] == 200
    # inside the leeway: expired 10 s ago, nbf 10 s ahead
    now = int(time.time())
    assert call(base, "/v1/config", hs256(good(exp=now - 10)))[0] == 200
    assert call(base, "/v1/config", hs256(good(nbf=now + 10)))[0] == 200


def test_no_token_and_malformed(hs):
    h, base = hs
    st, hdrs, body = call(base, "/v1/backends")
    assert st == 401 and hdrs["www-authenticate"] == 'Bearer realm="heliosd-admin"'
    assert_401(call(base, "/v1/backends", authz="Basic dXNlcjpwYXNz"), "not a Bearer token")
    assert_401(call(base, "/v1/backends", authz="Bearer "), None)
    assert_401(call(base, "/v1/backends", "not-a-jwt"), "compact serialization")
    assert_401(call(base, "/v1/backends", "a.b.c.d"), "compact serialization")
    assert_401(call(base, "/v1/backends", "%%%.e30.sig"), "base64url")
    assert_401(call(base, "/v1/backends", b64url(b"[1,2]") + ".e30.sig"), "base64url")
    good_tok = hs256(good())
    assert_401(call(base, "/v1/backends", good_tok.rsplit(".", 1)[0] + "."), "no signature")
    # health stays public
    assert call(base, "/v1/health")[0] == 200


def test_expired_and_not_yet_valid(hs):
    h, base = hs
    now = int(time.time())
    assert_401(call(base, "/v1/backends", hs256(good(exp=now - 120))), "expired")
    assert_401(call(base, "/v1/backends", hs256(good(nbf=now + 120))), "not valid yet")
    assert_401(call(base, "/v1/backends", hs256(good(exp=None))), "no exp")
    assert_401(call(base, "/v1/backends", hs256(good(exp="tomorrow"))), "exp")


def test_wrong_signature_and_alg_none(hs):
    h, base = hs
    assert_401(call(base, "/v1/backends", hs256(good(), secret="not-the-secret")), "signature")
    # payload changed after signing
    t = hs256(good(scope="read"))
    hdr, _, sig = t.split(".")
    forged = f"{hdr}.{b64url(json.dumps(good(scope='read write')).encode())}.{sig}"
    assert_401(call(base, "/v1/backends", forged), "signature")
    # alg none, with and without a signature part
    none_hdr = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    p = b64url(json.dumps(good()).encode())
    assert_401(call(base, "/v1/backends", f"{none_hdr}.{p}."), "algorithm")
    assert_401(call(base, "/v1/backends", f"{none_hdr}.{p}.c2ln"), "algorithm")
    assert_401(call(base, "/v1/backends", jwt.encode(good(), None, algorithm="none")), "algorithm")
    # another HMAC algorithm with the right secret
    assert_401(call(base, "/v1/backends", jwt.encode(good(), SECRET, algorithm="HS512")), "algorithm")
    # no alg at all
    assert_401(call(base, "/v1/backends", hs256(good(), header={"typ": "JWT"})), "algorithm")


def test_wrong_issuer_and_audience(hs):
    h, base = hs
    assert_401(call(base, "/v1/backends", hs256(good(iss="evil-ca"))), "issuer")
    assert_401(call(base, "/v1/backends", hs256(good(iss=None))), "issuer")
    assert_401(call(base, "/v1/backends", hs256(good(aud="someone-else"))), "audience")
    assert_401(call(base, "/v1/backends", hs256(good(aud=["a", "b"]))), "audience")
    assert_401(call(base, "/v1/backends", hs256(good(aud=None))), "audience")


def test_read_only_token_on_write_endpoints(hs):
    h, base = hs
    ro = hs256(good(scope="read"))
    assert call(base, "/v1/backends", ro)[0] == 200
    for method, path, body in (
        ("POST", "/v1/reload", None),
        ("POST", "/v1/strategy", {"upstream": "x", "strategy": "round_robin"}),
        ("POST", "/v1/backends", {"upstream": "x", "name": "n", "address": "127.0.0.1:1"}),
        ("DELETE", "/v1/backends/x/n", None),
        ("PATCH", "/v1/backends/x/n", {"weight": 2}),
        ("POST", "/v1/backends/x/n/drain", None),
    ):
        st, hdrs, b = call(base, path, ro, method=method, body=body)
        assert st == 403 and b["error"]["status"] == 403 and "write" in b["error"]["message"], (path, st, b)
        assert 'error="insufficient_scope"' in hdrs.get("www-authenticate", "")
    # no scope at all: not even reads; unknown scopes grant nothing
    assert call(base, "/v1/backends", hs256(good(scope=None)))[0] == 403
    assert call(base, "/v1/backends", hs256(good(scope="admin everything")))[0] == 403
    # write implies read
    assert call(base, "/v1/backends", hs256(good(scope="write")))[0] == 200
    h.wait_stderr(r'audit: sub="auth-test" ip=127\.0\.0\.1 POST /v1/reload body=- status=403')


# ---------------------------------------------------------------- RS256 / ES256


def pem_pub(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_rs256_and_algorithm_confusion(heliosd, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = pem_pub(key)
    (tmp_path / "rs.pub").write_bytes(pub)
    h, base = start(heliosd, tmp_path, {"algorithm": "RS256", "public_key_file": str(tmp_path / "rs.pub")})
    assert call(base, "/v1/backends", jwt.encode(claims(), key, algorithm="RS256"))[0] == 200
    # HS256 token to an RS256 config: with some secret, and with the public key as HMAC secret
    assert_401(call(base, "/v1/backends", hs256(claims())), "algorithm")
    assert_401(call(base, "/v1/backends", hs256(claims(), secret=pub)), "algorithm")
    # the same confusion with the header claiming RS256 but an HMAC signature
    confused = hs256(claims(), secret=pub, header={"alg": "RS256", "typ": "JWT"})
    assert_401(call(base, "/v1/backends", confused), "signature")
    # another RSA key
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_401(call(base, "/v1/backends", jwt.encode(claims(), other, algorithm="RS256")), "signature")
    assert_401(call(base, "/v1/backends", jwt.encode(claims(), key, algorithm="RS512")), "algorithm")


def test_es256(heliosd, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pub").write_bytes(pem_pub(key))
    h, base = start(heliosd, tmp_path, {"algorithm": "ES256", "public_key_file": str(tmp_path / "ec.pub")})
    assert call(base, "/v1/backends", jwt.encode(claims(), key, algorithm="ES256"))[0] == 200
    other = ec.generate_private_key(ec.SECP256R1())
    assert_401(call(base, "/v1/backends", jwt.encode(claims(), other, algorithm="ES256")), "signature")
    assert_401(call(base, "/v1/backends", hs256(claims())), "algorithm")


# ---------------------------------------------------------------- IP lists


def test_denied_ipv4_cidr(heliosd, tmp_path):
    auth = {"algorithm": "HS256", "secret_file": str(secret_file(tmp_path))}
    tok = hs256(claims())
    h, base = start(heliosd, tmp_path, auth, deny=["10.0.0.0/8", "127.0.0.0/8"])
    for path in ("/v1/health", "/v1/backends"):
        st, _, body = call(base, path, tok)
        assert st == 403 and "not allowed" in body["error"]["message"]
    # a refused IP never gets as far as the token check: no 401 either
    assert call(base, "/v1/backends")[0] == 403


def test_allow_list_ipv4(heliosd, tmp_path):
    auth = {"algorithm": "HS256", "secret_file": str(secret_file(tmp_path))}
    tok = hs256(claims())
    _, base = start(heliosd, tmp_path, auth, allow=["10.0.0.0/8"])
    assert call(base, "/v1/health")[0] == 403
    # allowed, but a narrower deny wins
    _, base2 = start(heliosd, tmp_path, auth, allow=["127.0.0.0/8"], deny=["127.0.0.1/32"])
    assert call(base2, "/v1/backends", tok)[0] == 403
    _, base3 = start(heliosd, tmp_path, auth, allow=["127.0.0.0/8"], deny=["127.0.0.2"])
    assert call(base3, "/v1/backends", tok)[0] == 200


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
def test_denied_ipv6_cidr(heliosd, tmp_path):
    auth = {"algorithm": "HS256", "secret_file": str(secret_file(tmp_path))}
    tok = hs256(claims())
    _, base = start(heliosd, tmp_path, auth, host="::1", deny=["::1/128"])
    assert call(base, "/v1/health")[0] == 403
    assert call(base, "/v1/backends", tok)[0] == 403
    _, base2 = start(heliosd, tmp_path, auth, host="::1", allow=["fd00::/8"])
    assert call(base2, "/v1/backends", tok)[0] == 403
    _, base3 = start(heliosd, tmp_path, auth, host="::1", allow=["::/0"], deny=["127.0.0.0/8"])
    assert call(base3, "/v1/backends", tok)[0] == 200


# ---------------------------------------------------------------- config-time checks


def check(tmp_path, auth, *patterns):
    cfg = make_config(free_port(), [static_route("s", "x")],
                      modules=[{"module": "admin_api", "config": {"listen": f"127.0.0.1:{free_port()}", "auth": auth}}])
    p = run_config_check(write_config_file(tmp_path, cfg, "t.yaml"))
    assert p.returncode == 1, p.stderr
    for pat in patterns:
        assert re.search(pat, p.stderr), (pat, p.stderr)


def test_world_readable_secret_refused(tmp_path, heliosd, check_config):
    f = secret_file(tmp_path, mode=0o644)
    check(tmp_path, {"algorithm": "HS256", "secret_file": str(f)}, re.escape(str(f)) + r" is readable by other users")
    # and heliosd refuses to start with it
    cfg = make_config(free_port(), [static_route("s", "x")],
                      modules=[{"module": "admin_api", "config": {"listen": f"127.0.0.1:{free_port()}",
                                                                  "auth": {"algorithm": "HS256", "secret_file": str(f)}}}])
    h = heliosd(cfg, start=False)
    h.expected_rc = None
    h.start(wait=False)
    assert h.wait_exit(30) not in (0, None)
    assert "readable by other users" in h.stderr()
    # group-readable is fine
    os.chmod(f, 0o640)
    p = check_config(cfg, "ok.yaml")
    assert p.returncode == 0, p.stderr


def test_missing_or_empty_key_files(tmp_path):
    check(tmp_path, {"algorithm": "HS256", "secret_file": str(tmp_path / "nope")}, r"cannot (read|open) .*nope")
    empty = secret_file(tmp_path, value="")
    check(tmp_path, {"algorithm": "HS256", "secret_file": str(empty)}, r"is empty")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    check(tmp_path, {"algorithm": "RS256", "public_key_file": str(junk)}, r"not a PEM public key")
    eck = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pub").write_bytes(pem_pub(eck))
    check(tmp_path, {"algorithm": "RS256", "public_key_file": str(tmp_path / "ec.pub")}, r"not an RSA key")


def test_auth_none_is_explicit(heliosd, tmp_path):
    h, base = start(heliosd, tmp_path, "none")
    assert call(base, "/v1/backends")[0] == 200
    h.wait_stderr(r"\[warn\] admin_api: auth: none")
