"""The js module: Workers-style handlers on QuickJS, through the
real heliosd binary, the real js.so and real hx_backend origins.

Each test writes a script, configures a route with `handler: {module: js}`
and checks what a real client receives (and, for console.*, what heliosd
logs)."""

import json
import re
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    HELIOSD,
    MODULE_DIR,
    SOURCE_DIR,
    free_port,
    http_request,
    make_config,
    upstream_conf,
    wait_for,
)

EXAMPLES = SOURCE_DIR / "modules" / "js" / "examples"

HELLO = "addEventListener('fetch', (event) => { event.respondWith(new Response('Hello from Helios!')); });"


def js_handler(script, **cfg):
    c = {"script": str(script)}
    c.update(cfg)
    return {"module": "js", "config": c}


def js_route(script, name="js", match=None, upstream=None, **cfg):
    r = {"name": name, "match": match or {"prefix": "/"}, "handler": js_handler(script, **cfg)}
    if upstream:
        r["upstream"] = upstream
    return r


def start_js(heliosd, tmp_path, source, upstreams=None, route_upstream=None, workers=1, **cfg):
    script = tmp_path / "app.js"
    script.write_text(source)
    port = free_port()
    conf = make_config(port, [js_route(script, upstream=route_upstream, **cfg)], upstreams, workers=workers)
    return heliosd(conf)


def get_json(h, path, **kw):
    status, headers, body = h.get(path, **kw)
    assert status == 200, (status, body)
    return json.loads(body)


# ---------------------------------------------------------------- basics


def test_exact_hello_handler_from_the_issue(heliosd, tmp_path):
    h = start_js(heliosd, tmp_path, HELLO)
    status, headers, body = h.get("/anything?x=1")
    assert status == 200
    assert body == b"Hello from Helios!"
    assert headers["content-type"] == "text/plain;charset=UTF-8"
    assert headers["content-length"] == "18"
    # the same runtime serves many requests (no VM per request)
    for _ in range(20):
        assert h.get("/")[2] == b"Hello from Helios!"


def test_es_module_async_fetch_gets_request_env_and_ctx(heliosd, tmp_path):
    src = """
export default {
  async fetch(request, env, ctx) {
    await null;
    const u = new URL(request.url);
    return Response.json({
      method: request.method, path: u.pathname, q: u.searchParams.get('q'),
      ua: request.headers.get('x-test'), env: env.GREETING, keys: Object.keys(env).sort(),
      hasWaitUntil: typeof ctx.waitUntil,
    }, { status: 201, headers: { 'X-Mode': 'module' } });
  },
};
"""
    h = start_js(heliosd, tmp_path, src, env={"GREETING": "hi there", "OTHER": "2"})
    status, headers, body = h.get("/p/a?q=%C3%A9t%C3%A9", headers={"X-Test": "v1"})
    assert status == 201
    assert headers["content-type"] == "application/json"
    assert headers["x-mode"] == "module"
    assert json.loads(body) == {
        "method": "GET", "path": "/p/a", "q": "été", "ua": "v1", "env": "hi there",
        "keys": ["GREETING", "OTHER"], "hasWaitUntil": "function",
    }


def test_request_body_is_streamed_to_text_json_and_arraybuffer(heliosd, tmp_path):
    src = """
addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
async function handle(request) {
  const u = new URL(request.url);
  if (u.pathname === '/json') {
    const data = await request.json();
    return Response.json({ got: data, method: request.method });
  }
  if (u.pathname === '/text') return new Response('[' + (await request.text()) + ']');
  const buf = await request.arrayBuffer();
  const b = new Uint8Array(buf);
  let sum = 0;
  for (let i = 0; i < b.length; i++) sum = (sum + b[i]) % 1000003;
  return Response.json({ length: b.length, sum });
}
"""
    h = start_js(heliosd, tmp_path, src, max_body="2MiB", cpu_limit="5s")
    status, _, body = h.get("/json", method="POST", body=json.dumps({"a": [1, 2], "b": "ü"}).encode(),
                            headers={"Content-Type": "application/json"})
    assert status == 200
    assert json.loads(body) == {"got": {"a": [1, 2], "b": "ü"}, "method": "POST"}
    status, _, body = h.get("/text", method="PUT", body="héllo".encode())
    assert (status, body.decode()) == (200, "[héllo]")
    big = bytes((i * 7) % 256 for i in range(700_000))
    status, _, body = h.get("/bin", method="POST", body=big)
    assert status == 200
    assert json.loads(body) == {"length": len(big), "sum": sum(big) % 1000003}
    # over max_body: the body promise rejects, the handler fails -> 500
    status, _, body = h.get("/bin", method="POST", body=b"x" * (2 * 1024 * 1024 + 10))
    assert status == 500
    h.wait_stderr(r"over max_body")


def test_response_forms_status_headers_binary_redirect(heliosd, tmp_path):
    src = """
addEventListener('fetch', (event) => {
  const p = new URL(event.request.url).pathname;
  let r;
  if (p === '/ab') r = new Response(new Uint8Array([104, 105, 0, 255]).buffer, { headers: { 'content-type': 'application/octet-stream' } });
  else if (p === '/view') r = new Response(new Uint8Array([1, 2, 3, 4, 5]).subarray(1, 4));
  else if (p === '/redirect') r = Response.redirect('http://example.test/new?x=1', 301);
  else if (p === '/redirect-default') r = Response.redirect('http://example.test/');
  else if (p === '/json') r = Response.json({ ok: true, n: [1, 2] }, { status: 202 });
  else if (p === '/empty') r = new Response(null, { status: 204, headers: { 'X-Empty': '1' } });
  else {
    const headers = new Headers({ 'X-One': '1' });
    headers.append('Set-Cookie', 'a=1');
    headers.append('Set-Cookie', 'b=2');
    r = new Response('teapot', { status: 418, statusText: 'I am a teapot', headers });
  }
  event.respondWith(r);
});
"""
    h = start_js(heliosd, tmp_path, src)
    status, headers, body = h.get("/ab")
    assert (status, body, headers["content-type"]) == (200, b"hi\x00\xff", "application/octet-stream")
    status, headers, body = h.get("/view")
    assert (status, body) == (200, b"\x02\x03\x04")
    assert "content-type" not in headers
    status, headers, body = h.get("/redirect")
    assert (status, headers["location"]) == (301, "http://example.test/new?x=1")
    status, headers, _ = h.get("/redirect-default")
    assert (status, headers["location"]) == (302, "http://example.test/")
    status, headers, body = h.get("/json")
    assert (status, json.loads(body), headers["content-type"]) == (202, {"ok": True, "n": [1, 2]}, "application/json")
    status, headers, body = h.get("/empty")
    assert (status, body, headers["x-empty"]) == (204, b"", "1")
    status, headers, body = h.get("/other")
    assert (status, body, headers["x-one"]) == (418, b"teapot", "1")
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    conn.request("GET", "/other")
    resp = conn.getresponse()
    resp.read()
    assert resp.msg.get_all("Set-Cookie") == ["a=1", "b=2"]
    conn.close()


def test_headers_url_and_searchparams(heliosd, tmp_path):
    src = r"""
addEventListener('fetch', (event) => {
  const h = new Headers([['Content-Type', 'text/x'], ['X-A', '1']]);
  h.append('x-a', '2');
  h.set('X-B', ' padded ');
  const hd = new Headers(h);
  hd.delete('content-type');
  let bad = false;
  try { h.set('bad name', 'v'); } catch (e) { bad = e instanceof TypeError; }
  const u = new URL('HTTP://User:Pw@Example.COM:80/a/./b/../c d?x=1&y=a+b#frag');
  const rel = new URL('../up?z=%20', 'http://h.test/p/q/r');
  const sp = new URLSearchParams('a=1&b=2&a=3');
  sp.append('c', 'x y&z');
  sp.delete('b');
  const u2 = new URL('http://h.test/s');
  u2.searchParams.set('k', 'v 1');
  u2.pathname = '/t';
  const obj = new URLSearchParams({ one: '1', two: 'é' });
  event.respondWith(Response.json({
    getA: h.get('X-A'), getB: h.get('x-b'), has: h.has('CONTENT-TYPE'), entries: [...h],
    copy: [...hd.keys()], bad,
    href: u.href, host: u.host, hostname: u.hostname, port: u.port, path: u.pathname,
    search: u.search, hash: u.hash, origin: u.origin, user: u.username, x: u.searchParams.get('y'),
    rel: rel.href, sp: sp.toString(), all: sp.getAll('a'), u2: u2.href, obj: obj.toString(),
    canParse: [URL.canParse('nope'), URL.canParse('https://ok.test')],
    reqUrl: event.request.url,
  }));
});
"""
    h = start_js(heliosd, tmp_path, src)
    got = get_json(h, "/r?q=1")
    assert got["getA"] == "1, 2"
    assert got["getB"] == "padded"
    assert got["has"] is True
    assert got["entries"] == [["content-type", "text/x"], ["x-a", "1, 2"], ["x-b", "padded"]]
    assert got["copy"] == ["x-a", "x-b"]
    assert got["bad"] is True
    assert got["href"] == "http://User:Pw@example.com/a/c%20d?x=1&y=a+b#frag"
    assert (got["host"], got["hostname"], got["port"]) == ("example.com", "example.com", "")
    assert (got["path"], got["search"], got["hash"]) == ("/a/c%20d", "?x=1&y=a+b", "#frag")
    assert (got["origin"], got["user"], got["x"]) == ("http://example.com", "User", "a b")
    assert got["rel"] == "http://h.test/p/up?z=%20"
    assert got["sp"] == "a=1&a=3&c=x+y%26z"
    assert got["all"] == ["1", "3"]
    assert got["u2"] == "http://h.test/t?k=v+1"
    assert got["obj"] == "one=1&two=%C3%A9"
    assert got["canParse"] == [False, True]
    assert got["reqUrl"] == f"http://127.0.0.1:{h.port}/r?q=1"


def test_text_encoding_base64_and_crypto(heliosd, tmp_path):
    src = r"""
addEventListener('fetch', (event) => {
  const enc = new TextEncoder().encode('héllo €😀');
  const dec = new TextDecoder().decode(enc);
  const lossy = new TextDecoder().decode(new Uint8Array([0x61, 0xff, 0x62]));
  let fatal = null;
  try { new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array([0xc3])); } catch (e) { fatal = e.name; }
  let btoaErr = null;
  try { btoa('€'); } catch (e) { btoaErr = e.name; }
  const rnd = crypto.getRandomValues(new Uint32Array(8));
  event.respondWith(Response.json({
    bytes: Array.from(enc), dec, lossy, fatal,
    b64: btoa('hello\x00\xff'), back: Array.from(atob('aGVsbG8A/w=='), c => c.charCodeAt(0)), btoaErr,
    uuid: crypto.randomUUID(), distinct: new Set(rnd).size,
  }));
});
"""
    h = start_js(heliosd, tmp_path, src)
    a = get_json(h, "/")
    b = get_json(h, "/")
    assert bytes(a["bytes"]) == "héllo €😀".encode()
    assert a["dec"] == "héllo €😀"
    assert a["lossy"] == "a\ufffdb"
    assert a["fatal"] == "TypeError"
    assert a["b64"] == "aGVsbG8A/w=="
    assert a["back"] == [104, 101, 108, 108, 111, 0, 255]
    assert a["btoaErr"] == "InvalidCharacterError"
    rx = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert rx.match(a["uuid"]) and rx.match(b["uuid"]) and a["uuid"] != b["uuid"]
    assert a["distinct"] >= 7  # 8 random 32-bit values


def test_console_goes_to_the_error_log(heliosd, tmp_path):
    src = """
addEventListener('fetch', (event) => {
  console.log('marker-log', { n: 1 });
  console.warn('marker-warn');
  console.error('marker-error', new Error('explained'));
  event.respondWith(new Response('ok'));
});
"""
    h = start_js(heliosd, tmp_path, src)
    assert h.get("/")[0] == 200
    h.wait_stderr(r"\[info\].*console: marker-log \{ n: 1 \}")
    h.wait_stderr(r"\[warn\].*console: marker-warn")
    h.wait_stderr(r"\[error\].*console: marker-error Error: explained")


def test_set_timeout_and_clear_timeout_run_on_the_worker_loop(heliosd, tmp_path):
    src = """
export default {
  async fetch() {
    const order = [];
    const t0 = Date.now();
    const cancelled = setTimeout(() => order.push('cancelled'), 20);
    clearTimeout(cancelled);
    await new Promise((resolve) => setTimeout(() => { order.push('late'); resolve(); }, 80));
    await new Promise((resolve) => setTimeout((a, b) => { order.push(a + b); resolve(); }, 0, 'x', 'y'));
    return Response.json({ order, waited: Date.now() - t0 });
  },
};
"""
    h = start_js(heliosd, tmp_path, src)
    got = get_json(h, "/")
    assert got["order"] == ["late", "xy"]
    assert got["waited"] >= 75
    # a handler waiting on a timer does not block the worker: two at once
    results = []

    def one():
        t = time.monotonic()
        results.append((get_json(h, "/")["order"], time.monotonic() - t))

    ts = [threading.Thread(target=one) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert len(results) == 4 and all(r[0] == ["late", "xy"] for r in results)


def test_timers_are_cancelled_when_the_request_ends(heliosd, tmp_path):
    src = """
addEventListener('fetch', (event) => {
  setTimeout(() => console.log('timer-after-end-fired'), 300);
  event.respondWith(new Response('quick'));
});
"""
    h = start_js(heliosd, tmp_path, src)
    assert h.get("/")[2] == b"quick"
    time.sleep(0.8)
    assert "timer-after-end-fired" not in h.stderr()


def test_wait_until_work_continues_after_the_response(heliosd, tmp_path, backends):
    a = backends("a")
    src = """
export default {
  async fetch(request, env, ctx) {
    ctx.waitUntil((async () => {
      await new Promise((r) => setTimeout(r, 200));
      const resp = await fetch('http://logs/stats');
      const s = await resp.json();
      console.log('waituntil-done backend=' + s.name);
    })());
    return new Response('answered');
  },
};
"""
    h = start_js(heliosd, tmp_path, src, upstreams={"logs": upstream_conf(a)})
    t = time.monotonic()
    status, _, body = h.get("/")
    assert (status, body) == (200, b"answered")
    assert time.monotonic() - t < 0.2 or "waituntil-done" not in h.stderr()
    h.wait_stderr(r"waituntil-done backend=a", timeout=10)


# ---------------------------------------------------------------- fetch


def test_async_handler_merges_json_from_two_upstreams(heliosd, tmp_path, backends):
    users, orders = backends("users-1", "orders-1")
    src = """
export default {
  async fetch(request) {
    const [u, o] = await Promise.all([
      fetch('http://users/headers?id=7').then((r) => r.json()),
      fetch('http://orders/stats').then((r) => r.json()),
    ]);
    return Response.json({ usersTarget: u.target, usersMethod: u.method, ordersBackend: o.name });
  },
};
"""
    h = start_js(heliosd, tmp_path, src, upstreams={"users": upstream_conf(users), "orders": upstream_conf(orders)})
    for _ in range(3):
        got = get_json(h, "/merge")
        assert got == {"usersTarget": "/headers?id=7", "usersMethod": "GET", "ordersBackend": "orders-1"}
    assert users.stats()["requests"] >= 3


def test_fetch_response_status_headers_body_and_post(heliosd, tmp_path, backends):
    a = backends("a")
    src = """
export default {
  async fetch(request) {
    const p = new URL(request.url).pathname;
    if (p === '/status') {
      const r = await fetch('http://app/status/404');
      return Response.json({ status: r.status, ok: r.ok, backend: r.headers.get('x-backend'), text: await r.text() });
    }
    if (p === '/post') {
      const r = await fetch('http://app/echo', { method: 'POST', body: JSON.stringify({ k: 'v' }),
                                                 headers: { 'Content-Type': 'application/json' } });
      return Response.json({ echoed: await r.json(), status: r.status });
    }
    if (p === '/unknown') {
      try { await fetch('http://nosuchupstream/'); } catch (e) { return new Response('caught: ' + e.message); }
    }
    return new Response('?');
  },
};
"""
    h = start_js(heliosd, tmp_path, src, upstreams={"app": upstream_conf(a)})
    got = get_json(h, "/status")
    assert got["status"] == 404 and got["ok"] is False and got["backend"] == "a"
    got = get_json(h, "/post")
    assert got == {"echoed": {"k": "v"}, "status": 200}
    status, _, body = h.get("/unknown")
    assert status == 200 and b"no upstream named 'nosuchupstream'" in body


def test_fetch_of_an_unreachable_backend_rejects(heliosd, tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    src = """
export default {
  async fetch() {
    try { await fetch('http://down/'); return new Response('no error'); }
    catch (e) { return new Response(e.name + ': ' + e.message, { status: 502 }); }
  },
};
"""
    h = start_js(heliosd, tmp_path, src, upstreams={"down": upstream_conf({"name": "d", "address": dead})})
    status, _, body = h.get("/")
    assert status == 502
    assert body.startswith(b"TypeError: fetch failed: 50")


def test_middleware_fetch_of_the_request_goes_to_the_routes_upstream(heliosd, tmp_path, backends):
    a = backends("origin")
    script = EXAMPLES / "header_rewrite.js"
    port = free_port()
    conf = make_config(port, [js_route(script, upstream="app")], {"app": upstream_conf(a)})
    h = heliosd(conf)
    status, headers, body = h.get("/headers?x=1", headers={"X-Internal-Secret": "s3cr3t", "X-Keep": "k"})
    assert status == 200, body
    assert headers["x-backend"] == "origin"
    assert headers["x-rewritten"] == "yes"
    seen = json.loads(body)
    assert seen["target"] == "/headers?x=1"
    names = {k.lower(): v for k, v in seen["headers"]}
    assert names.get("x-edge") == "helios-js"
    assert names.get("x-keep") == "k"
    assert "x-internal-secret" not in names
    # a POST body goes through too
    status, _, body = h.get("/echo", method="POST", body=b"payload-123")
    assert (status, body) == (200, b"payload-123")


def test_no_respond_with_passes_the_request_to_the_upstream(heliosd, tmp_path, backends):
    a = backends("origin")
    src = "addEventListener('fetch', (event) => { console.log('saw ' + event.request.method); });"
    h = start_js(heliosd, tmp_path, src, upstreams={"app": upstream_conf(a)}, route_upstream="app")
    status, headers, body = h.get("/")
    assert (status, body, headers["x-backend"]) == (200, b"hello from origin\n", "origin")


# ---------------------------------------------------------------- examples


def test_example_hello(heliosd):
    port = free_port()
    h = heliosd(make_config(port, [js_route(EXAMPLES / "hello.js")]))
    assert h.get("/")[:1] == (200,) and h.get("/")[2] == b"Hello from Helios!"


def test_example_json_api(heliosd):
    port = free_port()
    h = heliosd(make_config(port, [js_route(EXAMPLES / "json_api.js", env={"SERVICE_NAME": "inventory"})]))
    status, _, body = h.get("/items/apple", method="PUT", body=json.dumps({"qty": 3}).encode())
    assert status == 201 and json.loads(body) == {"id": "apple", "stored": {"qty": 3}}
    assert get_json(h, "/items/apple") == {"id": "apple", "value": {"qty": 3}}
    assert get_json(h, "/items") == {"service": "inventory", "items": ["apple"]}
    status, _, body = h.get("/items/pear")
    assert status == 404 and json.loads(body)["error"] == "not found"


def test_example_ab_routing_by_cookie(heliosd, backends):
    stable, beta = backends("stable-1", "beta-1")
    port = free_port()
    h = heliosd(make_config(port, [js_route(EXAMPLES / "ab_cookie.js")],
                            {"stable": upstream_conf(stable), "beta": upstream_conf(beta)}))
    for group, backend in (("a", "stable-1"), ("b", "beta-1")):
        for _ in range(3):
            status, headers, body = h.get("/x", headers={"Cookie": f"theme=dark; ab={group}"})
            assert status == 200
            assert headers["x-backend"] == backend and headers["x-ab-group"] == group
            assert "set-cookie" not in headers
    groups = set()
    for _ in range(30):
        status, headers, _ = h.get("/")
        assert status == 200
        g = headers["x-ab-group"]
        assert headers["set-cookie"] == f"ab={g}; Path=/; Max-Age=86400"
        assert headers["x-backend"] == ("beta-1" if g == "b" else "stable-1")
        groups.add(g)
    assert groups == {"a", "b"}


# ---------------------------------------------------------------- filter mode


def test_filter_mode_on_request_and_on_response(heliosd, tmp_path, backends):
    a = backends("origin")
    script = tmp_path / "filter.js"
    script.write_text("""
function onRequest(request, env) {
  if (new URL(request.url).pathname === '/blocked') return new Response('blocked by ' + env.WHO, { status: 403 });
  request.headers.set('X-Filtered', 'yes');
  request.headers.delete('X-Drop');
}
function onResponse(response) {
  response.headers.set('X-Filter-Saw', String(response.status));
  if (response.status === 404) response.status = 410;
}
""")
    port = free_port()
    route = {"name": "p", "match": {"prefix": "/"}, "upstream": "app",
             "filters": [{"module": "js", "config": {"script": str(script), "env": {"WHO": "js"}}}]}
    h = heliosd(make_config(port, [route], {"app": upstream_conf(a)}))
    status, headers, body = h.get("/headers", headers={"X-Drop": "1"})
    assert status == 200 and headers["x-filter-saw"] == "200"
    names = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert names.get("x-filtered") == "yes" and "x-drop" not in names
    status, _, body = h.get("/blocked")
    assert (status, body) == (403, b"blocked by js")
    status, headers, _ = h.get("/status/404")
    assert status == 410 and headers["x-filter-saw"] == "404"


# ---------------------------------------------------------------- compile, reload


def test_compile_round_trip(heliosd, tmp_path, check_config):
    import subprocess

    src = tmp_path / "app.js"
    src.write_text("export default { fetch() { return new Response('from bytecode'); } };\n")
    out = tmp_path / "app.qjsbc"
    proc = subprocess.run([str(HELIOSD), "compile", "-m", str(MODULE_DIR), str(src), "-o", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data.startswith(b"HXJSBC\x01\n")
    assert b"from bytecode" in data
    src.write_text("export default { fetch() { return new Response('from source'); } };\n")
    port = free_port()
    h = heliosd(make_config(port, [js_route(out)]))
    assert h.get("/")[2] == b"from bytecode"
    # a syntax error is reported with file:line and a non-zero exit
    bad = tmp_path / "bad.js"
    bad.write_text("addEventListener('fetch', (e) => {\n  e.respondWith(new Response('x');\n});\n")
    proc = subprocess.run([str(HELIOSD), "compile", "-m", str(MODULE_DIR), str(bad), "-o", str(tmp_path / "b.qjsbc")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{bad}:2:" in proc.stderr
    assert not (tmp_path / "b.qjsbc").exists()
    # a corrupt .qjsbc is a config error, not a crash
    (tmp_path / "junk.qjsbc").write_bytes(b"HXJSBC\x01\nnope")
    port = free_port()
    conf = make_config(port, [js_route(tmp_path / "junk.qjsbc")])
    h2 = heliosd(conf, start=False)
    proc = check_config(h2.confdir)
    assert proc.returncode == 1 and "junk.qjsbc" in proc.stderr


def test_syntax_error_is_a_config_error_with_file_and_line(heliosd, tmp_path, check_config):
    bad = tmp_path / "broken.js"
    bad.write_text("// line 1\nconst x = 1;\nconst y = ;\nconst z = 2;\n")
    port = free_port()
    h = heliosd(make_config(port, [js_route(bad)]), start=False)
    proc = check_config(h.confdir)
    assert proc.returncode == 1
    assert re.search(re.escape(str(bad)) + r":3: SyntaxError", proc.stderr), proc.stderr
    # unknown keys and a missing script are refused too
    conf = make_config(port, [js_route(tmp_path / "missing.js", bogus=1)])
    h.write_config(conf)
    proc = check_config(h.confdir)
    assert proc.returncode == 1
    assert "bogus" in proc.stderr and "missing.js" in proc.stderr


def test_reload_swaps_the_script_without_dropping_requests(heliosd, tmp_path):
    script = tmp_path / "app.js"
    script.write_text("addEventListener('fetch', (e) => e.respondWith(new Response('v1')));")
    port = free_port()
    conf = make_config(port, [js_route(script)], workers=2)
    h = heliosd(conf)
    assert h.get("/")[2] == b"v1"
    results, errors = [], []
    stop = threading.Event()

    def load():
        import http.client

        n = 0
        while not stop.is_set() and n < 3000:
            n += 1
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                for _ in range(10):
                    conn.request("GET", "/")
                    r = conn.getresponse()
                    results.append((r.status, r.read()))
                conn.close()
            except Exception as e:  # noqa: BLE001 - counted as a failure
                errors.append(repr(e))

    ts = [threading.Thread(target=load) for _ in range(3)]
    for t in ts:
        t.start()
    try:
        for i in range(2, 5):
            time.sleep(0.3)
            script.write_text(f"addEventListener('fetch', (e) => e.respondWith(new Response('v{i}')));")
            h.reload()
            wait_for(lambda i=i: h.get("/")[2] == f"v{i}".encode(), 15, what=f"v{i} after reload")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in ts:
            t.join(60)
    assert not errors, errors[:5]
    assert len(results) > 100
    bad = [r for r in results if r[0] != 200 or r[1] not in (b"v1", b"v2", b"v3", b"v4")]
    assert not bad, bad[:5]
    assert results[-1][1] == b"v4"
