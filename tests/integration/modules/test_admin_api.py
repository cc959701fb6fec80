"""admin_api: the REST admin API (libmicrohttpd, jansson, libjwt) on its own
listener, driven with the real curl binary.

Covers every endpoint and status (400/401/404/405/409/413), backends
add/remove/drain/weight, the strategy switch, /v1/reload (the answer
reaches the client, the new instance takes the port), config redaction,
modules, the audit log, and what operators rely on: traffic reaches
an added backend, removing a backend lets in-flight requests finish, and a
bounded load run across strategy switches and add/remove has zero failures.
Tokens are minted with Debian's python3-jwt (PyJWT), and once with the
openssl one-liner from docs/admin-api.md.
"""

import json
import os
import re
import subprocess
import threading
import time
from collections import Counter

import jwt
import pytest
import yaml

from conftest import (
    HELIOSD,
    MODULE_DIR,
    SOURCE_DIR,
    curl,
    free_port,
    make_config,
    proxy_route,
    run_config_check,
    static_route,
    upstream_conf,
    wait_for,
    write_config_file,
)

SECRET = "s3cret-for-tests-only"


# ---------------------------------------------------------------- helpers


def write_secret(tmp_path, value=SECRET, mode=0o600):
    p = tmp_path / "admin.secret"
    p.write_text(value + "\n")
    os.chmod(p, mode)
    return p


def mint(scope="read write", secret=SECRET, ttl=600, **claims):
    now = int(time.time())
    payload = {"sub": "tester", "iat": now, "exp": now + ttl}
    if scope is not None:
        payload["scope"] = scope
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def admin_module(port, secret_path, host="127.0.0.1", **extra):
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    cfg = {"listen": listen, "auth": {"algorithm": "HS256", "secret_file": str(secret_path)}}
    cfg.update(extra)
    return {"module": "admin_api", "config": cfg}


class Admin:
    """curl against the admin listener; returns (status, headers, parsed JSON or text)."""

    def __init__(self, port, token=None, host="127.0.0.1"):
        self.base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.token = token

    def call(self, method, path, body=None, token="default", raw=None, headers=()):
        args = ["-i", "-X", method]
        tok = self.token if token == "default" else token
        if tok:
            args += ["-H", f"Authorization: Bearer {tok}"]
        for h in headers:
            args += ["-H", h]
        if body is not None or raw is not None:
            data = raw if raw is not None else json.dumps(body)
            args += ["-H", "Content-Type: application/json", "--data-binary", data]
        p = curl(*args, self.base + path, timeout=30)
        assert p.returncode == 0, f"curl failed ({p.returncode}): {p.stderr}"
        return parse_http(p.stdout)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body=body, **kw)


def parse_http(data):
    while True:
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status == 100:
            data = rest
            continue
        break
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = rest
    if headers.get("content-type", "").startswith("application/json"):
        body = json.loads(rest)
    return status, headers, body


def assert_error(resp, status, fragment=None):
    st, hdrs, body = resp
    assert st == status, f"expected {status}, got {st}: {body}"
    assert hdrs["content-type"].startswith("application/json")
    assert body["error"]["status"] == status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if fragment:
        assert fragment in body["error"]["message"], body


def proxied(port, n, path="/"):
    """N sequential requests through heliosd with curl; X-Backend counts."""
    seen = Counter()
    for _ in range(n):
        p = curl("-s", "-o", "/dev/null", "-D", "-", f"http://127.0.0.1:{port}{path}", timeout=20)
        m = re.search(rb"(?im)^X-Backend:\s*(\S+)", p.stdout)
        st = re.match(rb"HTTP/\S+ (\d+)", p.stdout)
        seen[(int(st.group(1)) if st else 0, m.group(1).decode() if m else None)] += 1
    return seen


def backends_of(adm, upstream="app"):
    st, _, body = adm.get(f"/v1/backends?upstream={upstream}")
    assert st == 200, body
    return {b["name"]: b for b in body["upstreams"][0]["backends"]}


@pytest.fixture
def setup(tmp_path, heliosd, backends):
    """heliosd proxying / to upstream app (a, b), admin API with HS256."""

    def make(names=("a", "b"), workers=2, admin_extra=None, top=None, upstream_extra=None):
        bks = backends(*names)
        bks = bks if isinstance(bks, list) else [bks]
        port, aport = free_port(), free_port()
        secret = write_secret(tmp_path)
        cfg = make_config(
            port,
            [proxy_route("app", "app")],
            {"app": upstream_conf(*bks, **(upstream_extra or {}))},
            workers=workers,
            modules=[admin_module(aport, secret, **(admin_extra or {}))],
            **(top or {}),
        )
        h = heliosd(cfg)
        adm = Admin(aport, mint())
        wait_for(lambda: adm.get("/v1/health", token=None)[0] == 200, what="admin API up")
        return h, adm, bks, port

    return make


# ---------------------------------------------------------------- read endpoints


def test_health_public_and_versioned(setup):
    h, adm, _, _ = setup()
    st, hdrs, body = adm.get("/v1/health", token=None)
    assert st == 200 and hdrs["content-type"] == "application/json"
    assert body["status"] == "ok" and body["generation"] == 1
    assert re.match(r"\d+\.\d+", body["version"]) and body["uptime_s"] >= 0
    assert body["workers"] == 2
    # HEAD works on GET endpoints, without a body
    p = curl("-s", "-I", adm.base + "/v1/health")
    assert p.stdout.startswith(b"HTTP/1.1 200")


def test_backends_listing(setup):
    h, adm, (a, b), port = setup()
    proxied(port, 4)
    st, _, body = adm.get("/v1/backends")
    assert st == 200 and body["generation"] == 1
    (up,) = body["upstreams"]
    assert up["name"] == "app" and up["balancer"] == "round_robin"
    got = {x["name"]: x for x in up["backends"]}
    assert set(got) == {"a", "b"}
    assert got["a"]["address"] == a.address and got["a"]["weight"] == 1
    for x in got.values():
        assert x["healthy"] is True and x["draining"] is False and x["breaker"] == "closed"
        assert x["inflight"] == 0 and x["failures"] == 0 and x["retries"] == 0
    assert got["a"]["requests"] + got["b"]["requests"] == 4
    assert_error(adm.get("/v1/backends?upstream=nope"), 404, "nope")


def test_metrics_breakers_modules(setup):
    h, adm, _, port = setup()
    seen = proxied(port, 6)
    assert sum(n for (st, _), n in seen.items() if st == 200) == 6
    st, _, m = adm.get("/v1/metrics")
    assert st == 200
    core = m["core"]
    assert core["generation"] == 1 and core["workers"] == 2 and core["reloads"] == 0
    assert core["requests"] >= 6 and core["connections_accepted"] >= 6
    (u,) = m["upstreams"]
    assert u["name"] == "app" and u["backends"] == 2 and u["usable_backends"] == 2
    assert u["requests"] == 6 and u["failures"] == 0

    st, _, cb = adm.get("/v1/circuit-breakers")
    assert st == 200
    (u,) = cb["upstreams"]
    assert {x["name"] for x in u["backends"]} == {"a", "b"}
    for x in u["backends"]:
        assert x["state"] == "closed"
        assert set(x["transitions"]) == {"closed", "open", "half_open"}
        assert x["transitions"]["open"] == 0

    st, _, mods = adm.get("/v1/modules")
    out = subprocess.run([str(HELIOSD), "-V"], stdout=subprocess.PIPE, text=True,
                         timeout=10).stdout
    abi = re.search(r"plugin ABI (\d+\.\d+)", out).group(1)
    assert st == 200 and mods["core_abi"] == abi
    by = {x["name"]: x for x in mods["modules"]}
    assert by["admin_api"]["kinds"] == ["service"] and by["admin_api"]["abi"] == abi
    assert by["admin_api"]["instances"] == 1 and by["admin_api"]["version"]
    assert by["admin_api"]["path"].endswith("admin_api.so")
    assert by["round_robin"]["kinds"] == ["balancer"]


def test_config_redacts_secrets(setup):
    hdrs = {
        "X-Upstream-Token": "tok-VISIBLE1",
        "X-Db-Password": "pw-VISIBLE2",
        "X-Passwd": "pw-VISIBLE3",
        "X-Client-Credential": "cred-VISIBLE4",
        "private_key": "pk-VISIBLE5",
        "keys": "k-VISIBLE6",
        "api_keys": "ak-VISIBLE7",
        "X-Plain": "plain-value",
    }
    h, adm, _, _ = setup()
    # reconfigure with a headers filter carrying secret-looking names
    cfg = yaml.safe_load(h.config_text)
    cfg["modules"].append({"module": "headers", "config": {"request": {"set": hdrs}}})
    h.write_config(cfg)
    st, _, body = adm.post("/v1/reload")
    assert st == 200, body
    wait_for(lambda: adm.get("/v1/health", token=None)[0] == 200, what="admin back after reload")
    st, _, body = adm.get("/v1/config")
    assert st == 200
    text = json.dumps(body)
    assert "VISIBLE" not in text and SECRET not in text
    mods = body["config"]["modules"]
    admin = next(m for m in mods if m["module"] == "admin_api")
    assert admin["config"]["auth"]["secret_file"] == "[redacted]"
    assert admin["config"]["auth"]["algorithm"] == "HS256"
    got = next(m for m in mods if m["module"] == "headers")["config"]["request"]["set"]
    for k in hdrs:
        assert got[k] == ("plain-value" if k == "X-Plain" else "[redacted]"), k
    # scalars stay strings as written in YAML
    assert body["config"]["workers"] == "2"
    assert body["config"]["upstreams"]["app"]["balancer"] == "round_robin"


# ---------------------------------------------------------------- changes


def test_add_backend_gets_traffic(setup, backends):
    h, adm, (a,), port = setup(names=("a",))
    c = backends("c")
    assert {be for (_, be) in proxied(port, 6)} == {"a"}
    st, _, body = adm.post("/v1/backends", {"upstream": "app", "name": "c", "address": c.address, "weight": 1})
    assert st == 201, body
    assert body["backend"]["name"] == "c" and body["backend"]["address"] == c.address
    seen = proxied(port, 20)
    assert seen[(200, "a")] >= 5 and seen[(200, "c")] >= 5, seen
    assert sum(seen.values()) == seen[(200, "a")] + seen[(200, "c")]
    assert set(backends_of(adm)) == {"a", "c"}
    # duplicate name -> 409; unknown upstream -> 404
    assert_error(adm.post("/v1/backends", {"upstream": "app", "name": "c", "address": c.address}), 409, "c")
    assert_error(adm.post("/v1/backends", {"upstream": "zzz", "name": "d", "address": c.address}), 404, "zzz")


def test_add_validation_400(setup):
    h, adm, (a, b), _ = setup()
    ok = {"upstream": "app", "name": "n", "address": "127.0.0.1:1", "weight": 2}
    for bad in (
        {**ok, "weight": 0},
        {**ok, "weight": 10001},
        {**ok, "weight": "5"},
        {**ok, "weight": 1.5},
        {k: v for k, v in ok.items() if k != "name"},
        {k: v for k, v in ok.items() if k != "address"},
        {**ok, "upstream": 7},
        {**ok, "name": ""},
        {**ok, "address": "not an address"},
        [1, 2],
    ):
        assert_error(adm.post("/v1/backends", bad), 400)
    assert_error(adm.post("/v1/backends", raw="{not json"), 400, "not valid JSON")
    assert_error(adm.post("/v1/backends", raw='{"a":1,"a":2}'), 400)
    assert_error(adm.post("/v1/backends", raw=""), 400)
    assert set(backends_of(adm)) == {"a", "b"}


def test_remove_drain_weight_and_aliases(setup, backends):
    h, adm, (a, b), port = setup()
    # drain a: only b gets traffic
    st, _, body = adm.post("/v1/backends/app/a/drain")
    assert st == 200 and body["backend"]["draining"] is True and body["backend"]["usable"] is False
    assert {be for (_, be) in proxied(port, 6)} == {"b"}
    # undrain both ways
    st, _, body = adm.post("/v1/backends/app/a/undrain")
    assert st == 200 and body["backend"]["draining"] is False
    adm.post("/v1/backends/app/a/drain", {"drain": True})
    assert backends_of(adm)["a"]["draining"] is True
    st, _, body = adm.post("/v1/backends/app/a/drain", {"drain": False})
    assert st == 200 and body["backend"]["draining"] is False
    assert {be for (_, be) in proxied(port, 6)} == {"a", "b"}
    assert_error(adm.post("/v1/backends/app/a/drain", {"drain": "yes"}), 400)
    assert_error(adm.post("/v1/backends/app/zz/drain"), 404, "zz")
    assert_error(adm.post("/v1/backends/nope/a/drain"), 404, "nope")
    assert_error(adm.post("/v1/backends/app/a/explode"), 404)

    # weight
    st, _, body = adm.call("PATCH", "/v1/backends/app/a", {"weight": 7})
    assert st == 200 and body["backend"]["weight"] == 7
    assert backends_of(adm)["a"]["weight"] == 7
    assert_error(adm.call("PATCH", "/v1/backends/app/a", {"weight": 0}), 400)
    assert_error(adm.call("PATCH", "/v1/backends/app/a", {}), 400)
    assert_error(adm.call("PATCH", "/v1/backends/app/zz", {"weight": 2}), 404)

    # aliases: add and remove with a body
    c = backends("c")
    st, _, _ = adm.post("/v1/backends/add", {"upstream": "app", "name": "c", "address": c.address, "weight": 3})
    assert st == 201 and backends_of(adm)["c"]["weight"] == 3
    st, _, body = adm.post("/v1/backends/remove", {"upstream": "app", "name": "c"})
    assert st == 200 and body["removed"]["name"] == "c"
    assert "c" not in backends_of(adm)
    assert_error(adm.post("/v1/backends/remove", {"upstream": "app", "name": "c"}), 404)
    assert_error(adm.post("/v1/backends/remove", {"upstream": "app"}), 400)

    # DELETE
    st, _, body = adm.call("DELETE", "/v1/backends/app/b")
    assert st == 200 and body["removed"]["name"] == "b"
    assert set(backends_of(adm)) == {"a"}
    assert {be for (_, be) in proxied(port, 4)} == {"a"}
    assert_error(adm.call("DELETE", "/v1/backends/app/b"), 404)
    assert_error(adm.call("DELETE", "/v1/backends/nope/a"), 404)


def test_strategy_switch(setup):
    h, adm, _, port = setup()
    st, _, body = adm.post("/v1/strategy", {"upstream": "app", "strategy": "least_connections"})
    assert st == 200 and body == {"upstream": "app", "strategy": "least_connections"}
    assert adm.get("/v1/backends")[2]["upstreams"][0]["balancer"] == "least_connections"
    assert sum(n for (s, _), n in proxied(port, 6).items() if s == 200) == 6
    assert_error(adm.post("/v1/strategy", {"upstream": "nope", "strategy": "round_robin"}), 404)
    assert_error(adm.post("/v1/strategy", {"upstream": "app", "strategy": "../evil"}), 400)
    assert_error(adm.post("/v1/strategy", {"upstream": "app", "strategy": "no_such_balancer"}), 400)
    assert_error(adm.post("/v1/strategy", {"upstream": "app", "strategy": "static_response"}), 400)
    assert_error(adm.post("/v1/strategy", {"upstream": "app"}), 400)
    assert adm.get("/v1/backends")[2]["upstreams"][0]["balancer"] == "least_connections"


def test_remove_with_requests_in_flight(setup):
    h, adm, (a, b), port = setup()
    results = []

    def slow():
        p = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/slow?ms=800", timeout=20)
        results.append(p.stdout.decode())

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: backends_of(adm)["a"]["inflight"] > 0 and backends_of(adm)["b"]["inflight"] > 0,
             timeout=5, what="slow requests in flight on both backends")
    st, _, body = adm.call("DELETE", "/v1/backends/app/a")
    assert st == 200, body
    for t in threads:
        t.join(30)
    assert results == ["200"] * 4
    assert {be for (_, be) in proxied(port, 4)} == {"b"}


def test_changes_under_load_zero_failures(setup, backends):
    h, adm, (a, b), port = setup()
    c = backends("c")
    total, nthreads = 480, 4  # 120 requests of >= 5 ms each per thread
    codes = Counter()
    lock = threading.Lock()
    def client():
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        for _ in range(total // nthreads):
            try:
                conn.request("GET", "/slow?ms=5")
                r = conn.getresponse()
                r.read()
                st = r.status
            except Exception as e:  # noqa: BLE001 - counted as a failure
                st = repr(e)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            with lock:
                codes[st] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(nthreads)]
    for t in threads:
        t.start()
    changes = 0
    strategies = ["least_connections", "power_of_two", "weighted_round_robin", "round_robin"]
    i = 0
    while any(t.is_alive() for t in threads) and i < 40:
        assert adm.post("/v1/strategy", {"upstream": "app", "strategy": strategies[i % 4]})[0] == 200
        assert adm.post("/v1/backends", {"upstream": "app", "name": "c", "address": c.address})[0] == 201
        assert adm.call("PATCH", "/v1/backends/app/a", {"weight": 1 + i % 5})[0] == 200
        assert adm.call("DELETE", "/v1/backends/app/c")[0] == 200
        changes += 4
        i += 1
    for t in threads:
        t.join(60)
    print(f"load: {total} requests, {changes} changes made meanwhile, codes {dict(codes)}")
    assert sum(codes.values()) == total
    assert codes == Counter({200: total}), codes
    assert changes >= 8, "the load finished before any change was made"


# ---------------------------------------------------------------- statuses


def test_404_405_413(setup):
    h, adm, _, _ = setup(admin_extra={"max_body": 1024})
    assert_error(adm.get("/v1/nothing"), 404)
    assert_error(adm.get("/"), 404)
    # an unknown path without a token is 401, not 404 (no probing)
    assert adm.get("/v1/nothing", token=None)[0] == 401
    st, hdrs, body = adm.call("PUT", "/v1/backends")
    assert_error((st, hdrs, body), 405)
    assert hdrs["allow"] == "GET, HEAD, POST"
    st, hdrs, _ = adm.call("GET", "/v1/reload")
    assert st == 405 and hdrs["allow"] == "POST"
    st, hdrs, _ = adm.call("POST", "/v1/health")
    assert st == 405 and hdrs["allow"] == "GET, HEAD"
    # Content-Length over max_body: refused from the head
    big = json.dumps({"upstream": "app", "name": "x" * 2000, "address": "127.0.0.1:1"})
    assert_error(adm.post("/v1/backends", raw=big), 413)
    # chunked (no Content-Length): refused as the body streams in
    assert_error(adm.post("/v1/backends", raw=big, headers=("Transfer-Encoding: chunked",)), 413)
    # just under the cap is fine (a 400 for the bad address, not a 413)
    ok = json.dumps({"upstream": "app", "name": "x" * 200, "address": "bad"})
    assert_error(adm.post("/v1/backends", raw=ok), 400)


def test_audit_log(setup, tmp_path):
    audit = tmp_path / "audit.log"
    h, adm, (a, b), _ = setup(admin_extra={"audit_log": str(audit)})
    adm.call("PATCH", "/v1/backends/app/a", {"weight": 4})
    adm.call("DELETE", "/v1/backends/app/zz")
    adm.get("/v1/backends")  # reads are not audited
    lines = audit.read_text().splitlines()
    assert len(lines) == 2, lines
    assert re.search(r'sub="tester" ip=127\.0\.0\.1 PATCH /v1/backends/app/a body=\{"weight":4\} status=200', lines[0])
    assert "DELETE /v1/backends/app/zz body=- status=404" in lines[1]
    h.wait_stderr(r'admin_api: audit: sub="tester" ip=127\.0\.0\.1 PATCH /v1/backends/app/a')


# ---------------------------------------------------------------- reload


def test_reload_endpoint(setup, tmp_path):
    import http.client

    h, adm, (a, b), port = setup()
    assert adm.call("DELETE", "/v1/backends/app/b")[0] == 200
    # an idle keep-alive connection must not hold the old instance up
    idle = http.client.HTTPConnection("127.0.0.1", int(adm.base.rsplit(":", 1)[1]), timeout=10)
    idle.request("GET", "/v1/health")
    assert idle.getresponse().read()
    t0 = time.monotonic()
    st, _, body = adm.post("/v1/reload")
    assert st == 200 and body == {"generation": 2, "previous": 1}
    wait_for(lambda: adm.get("/v1/health", token=None)[0] == 200, what="new admin instance")
    swap = time.monotonic() - t0
    print(f"reload with an idle keep-alive admin connection: {swap * 1000:.0f} ms to serve again")
    assert swap < 3.0
    idle.close()
    # the new instance took the port; the persisted removal is applied again
    # (test_admin_state.py covers the state file)
    wait_for(lambda: adm.get("/v1/health", token=None)[2].get("generation") == 2, what="generation 2")
    assert set(backends_of(adm)) == {"a"}
    h.wait_stderr(r"admin_api: listening on .* \(generation 2\)")
    # a broken configuration: 422 with the errors, generation 2 stays
    bad = h.config_text.replace("balancer: round_robin", "balancer: no_such_module")
    assert bad != h.config_text
    good = h.config_text
    h.write_config(bad)
    st, _, body = adm.post("/v1/reload")
    assert st == 422, body
    errs = body["error"]["errors"]
    assert isinstance(errs, list) and errs and any("no_such_module" in e for e in errs)
    assert body["error"]["generation"] == 2
    assert adm.get("/v1/health", token=None)[2]["generation"] == 2
    h.write_config(good)
    # SIGHUP while admin requests run: they keep working on the new instance
    stop = threading.Event()
    codes = Counter()

    def poll():
        while not stop.is_set():
            p = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                     f"Authorization: Bearer {adm.token}", adm.base + "/v1/backends", timeout=10)
            codes[p.stdout.decode() or f"curl{p.returncode}"] += 1

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    h.reload()
    wait_for(lambda: adm.get("/v1/health", token=None)[2].get("generation") == 3, what="generation 3")
    time.sleep(0.3)
    stop.set()
    t.join(30)
    # the listening socket is handed over (D76): every request got a 200,
    # none found the port closed for the instant of the swap (curl 7)
    assert codes["200"] > 0 and set(codes) == {"200"}, codes
    assert h.alive()


def test_concurrent_reloads_answer(setup):
    """Three reloads on three connections opened beforehand (so all reach
    the old instance): one reloads, the others are refused with 503 or
    reload again; nobody hangs, heliosd stays up."""
    import http.client

    h, adm, _, _ = setup()
    port = int(adm.base.rsplit(":", 1)[1])
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(3)]
    for c in conns:
        c.connect()
    out = []

    def go(c):
        c.request("POST", "/v1/reload", headers={"Authorization": f"Bearer {adm.token}"})
        r = c.getresponse()
        out.append((r.status, json.loads(r.read())))
        c.close()

    ts = [threading.Thread(target=go, args=(c,)) for c in conns]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert len(out) == 3, out
    assert all(s in (200, 503) for s, _ in out) and any(s == 200 for s, _ in out), out
    for s, body in out:
        if s == 503:
            assert "retry" in body["error"]["message"]
    wait_for(lambda: adm.get("/v1/health", token=None)[0] == 200, what="admin API after reloads")
    gen = adm.get("/v1/health", token=None)[2]["generation"]
    assert gen == 1 + sum(1 for s, _ in out if s == 200)
    assert h.alive()


# ---------------------------------------------------------------- /metrics


def test_prometheus_metrics_on_admin_listener(setup, heliosd, tmp_path):
    h, adm, _, port = setup()
    assert_error(adm.get("/metrics"), 404, "metrics")
    if not (MODULE_DIR / "metrics.so").exists():
        pytest.skip("metrics module not built")
    cfg = yaml.safe_load(h.config_text)
    cfg["modules"].append({"module": "metrics", "config": {"listen": "admin"}})
    h.write_config(cfg)
    assert adm.post("/v1/reload")[0] == 200
    wait_for(lambda: adm.get("/v1/health", token=None)[0] == 200, what="admin after reload")
    proxied(port, 3)
    assert adm.get("/metrics", token=None)[0] == 401  # metrics_auth defaults to true
    st, hdrs, text = adm.get("/metrics")
    assert st == 200 and hdrs["content-type"].startswith("text/plain; version=0.0.4")
    from prometheus_client.parser import text_string_to_metric_families

    fams = list(text_string_to_metric_families(text.decode()))
    assert fams, text[:300]


def test_metrics_auth_false_makes_metrics_public(setup):
    h, adm, _, _ = setup(admin_extra={"metrics_auth": False})
    # public now: no 401 even without a token (404 while no metrics module)
    assert adm.get("/metrics", token=None)[0] == 404
    assert adm.get("/v1/metrics", token=None)[0] == 401


# ---------------------------------------------------------------- docs


def doc_one_liner():
    text = (SOURCE_DIR / "docs" / "admin-api.md").read_text()
    m = re.search(r"<!-- mint-token:begin -->\s*```(?:sh|bash)?\n(.*?)```\s*<!-- mint-token:end -->", text, re.S)
    assert m, "docs/admin-api.md lacks the mint-token block"
    cmd = m.group(1).strip()
    assert "python" not in cmd
    return cmd


def test_documented_one_liner_mints_a_working_token(setup, tmp_path):
    h, adm, _, _ = setup()
    cmd = doc_one_liner()
    p = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "SECRET_FILE": str(tmp_path / "admin.secret")})
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    assert token.count(".") == 2
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["scope"] == "read write" and claims["exp"] > time.time()
    st, _, body = adm.get("/v1/backends", token=token)
    assert st == 200, body
    assert adm.post("/v1/backends/app/a/drain", token=token)[0] == 200


# ---------------------------------------------------------------- config


def assert_config_refused(tmp_path, admin_cfg, *expect):
    port = free_port()
    cfg = make_config(port, [static_route("s", "x")], modules=[{"module": "admin_api", "config": admin_cfg}])
    p = run_config_check(write_config_file(tmp_path, cfg, "bad.yaml"))
    assert p.returncode == 1, p.stderr
    for e in expect:
        assert re.search(e, p.stderr), (e, p.stderr)
    return p.stderr


def test_config_errors(tmp_path):
    secret = write_secret(tmp_path)
    auth = {"algorithm": "HS256", "secret_file": str(secret)}
    assert_config_refused(tmp_path, {"listen": "127.0.0.1:1", "bogus": 1, "auth": auth}, r"bogus")
    assert_config_refused(tmp_path, {"listen": "127.0.0.1:1"}, r"auth is required")
    assert_config_refused(tmp_path, {"listen": "localhost:99", "auth": auth}, r"listen 'localhost:99'")
    assert_config_refused(tmp_path, {"listen": "127.0.0.1:70000", "auth": auth}, r"listen")
    assert_config_refused(tmp_path, {"listen": "[::1]9", "auth": auth}, r"listen")
    assert_config_refused(tmp_path, {"auth": auth, "allow": ["10.0.0.0/33"]}, r"prefix length")
    assert_config_refused(tmp_path, {"auth": auth, "deny": ["nope"]}, r"'nope' is not an IPv4 or IPv6")
    assert_config_refused(tmp_path, {"auth": auth, "max_body": 0}, r"max_body")
    assert_config_refused(tmp_path, {"auth": auth, "metrics_auth": "maybe"}, r"metrics_auth")
    assert_config_refused(tmp_path, {"auth": "yes"}, r"auth must be `none` or a map")
    assert_config_refused(tmp_path, {"auth": {"algorithm": "HS512", "secret_file": str(secret)}}, r"HS512")
    assert_config_refused(tmp_path, {"auth": {"algorithm": "HS256"}}, r"needs secret_file")
    assert_config_refused(tmp_path, {"auth": {"algorithm": "RS256", "secret_file": str(secret)}}, r"secret_file is not used")
    assert_config_refused(tmp_path, {"auth": {**auth, "extra": 1}}, r"extra")


def test_bind_failure_is_clear(tmp_path, heliosd):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    taken = s.getsockname()[1]
    try:
        port = free_port()
        cfg = make_config(port, [static_route("s", "x")],
                          modules=[admin_module(taken, write_secret(tmp_path))])
        h = heliosd(cfg, start=False)
        h.expected_rc = 1
        h.start(wait=False)
        assert h.wait_exit(30) == 1  # a service that cannot start stops startup
        h.wait_stderr(rf"admin_api: cannot listen on 127\.0\.0\.1:{taken}: .*in use")
        h.wait_stderr(r"module admin_api: service failed to start")
        h.wait_stderr(r"not starting: a module service failed to start")
    finally:
        s.close()


def test_ipv6_listener(tmp_path, heliosd):
    from conftest import ipv6_available

    if not ipv6_available():
        pytest.skip("no IPv6 loopback")
    aport, port = free_port("::1"), free_port()
    cfg = make_config(port, [static_route("s", "x")], modules=[admin_module(aport, write_secret(tmp_path), host="::1")])
    heliosd(cfg)
    adm = Admin(aport, mint(), host="::1")
    wait_for(lambda: adm.get("/v1/health", token=None)[0] == 200, what="admin on [::1]")
    assert adm.get("/v1/modules")[0] == 200
