"""The js module runs published-style Cloudflare Workers code (issue 20):
the bugs such code hit, and the Web APIs it uses (self, structuredClone,
setInterval, node:buffer). Real heliosd, real js.so, real hx_backend
origins; the scripts are written here in the style of the Workers
documentation's examples."""

import json
import os
import re
import signal
import subprocess
import time

from conftest import (
    HELIOSD,
    MODULE_DIR,
    free_port,
    make_config,
    port_accepts,
    static_route,
    upstream_conf,
    wait_for,
)
from test_js_api import get_json, js_route, start_js


# ---------------------------------------------------------------- bugs


def test_a_request_as_init_keeps_its_body(heliosd, tmp_path, backends):
    a = backends("a")
    src = """
export default {
  async fetch(request) {
    const p = new URL(request.url).pathname;
    if (p === '/new-request') return fetch(new Request('http://app/echo', request));
    if (p === '/fetch-init') return fetch('http://app/echo', request);
    if (p === '/clone') return fetch('http://app/echo', request.clone());
    return new Response('?', { status: 404 });
  },
};
"""
    h = start_js(heliosd, tmp_path, src, upstreams={"app": upstream_conf(a)})
    for path in ("/new-request", "/fetch-init", "/clone"):
        status, headers, body = h.get(path, method="POST", body=b"payload-" + path.encode())
        assert (status, body) == (200, b"payload-" + path.encode()), path
        assert headers["content-length"] == str(len(body))


def test_a_fetch_started_in_wait_until_before_the_response_settles(heliosd, tmp_path, backends):
    logs = backends("logs-1")
    src = """
export default {
  async fetch(request, env, ctx) {
    const n = new URL(request.url).searchParams.get('n');
    ctx.waitUntil(fetch('http://logs/echo', { method: 'POST', body: 'logged-' + n })
      .then((r) => r.text())
      .then((t) => console.log('waituntil-result ' + t)));
    return new Response('answered');
  },
};
"""
    h = start_js(heliosd, tmp_path, src, upstreams={"logs": upstream_conf(logs)})
    for n in range(3):
        assert h.get(f"/?n={n}")[:3:2] == (200, b"answered")
    for n in range(3):
        h.wait_stderr(rf"waituntil-result logged-{n}\b", timeout=10)
    assert logs.stats()["requests"] >= 3
    assert "still pending" not in h.stderr()


def test_console_log_prints_the_content_of_built_ins(heliosd, tmp_path):
    src = r"""
addEventListener('fetch', (event) => {
  const o = { a: 1, s: 'x', nested: { deep: { deeper: { deepest: 1 } } }, list: [1, 'two', null, undefined] };
  o.self = o;
  console.log('map', new Map([['k', 1], ['j', { v: true }]]));
  console.log('set', new Set([1, 'b']));
  console.log('obj', o);
  console.log('misc', new Uint8Array([1, 2, 255]), new Date(0), /a+b/gi, Symbol('s'), function named() {},
              class K {}, -0, [undefined, , 3]);
  console.log('headers', new Headers({ 'X-A': '1' }), new URL('http://example.com/p?q=1'));
  console.log('fmt %s=%i %d %j %%', 'n', 42.5, 7, { j: 1 }, 'rest');
  event.respondWith(new Response('ok'));
});
"""
    h = start_js(heliosd, tmp_path, src)
    assert h.get("/")[0] == 200
    h.wait_stderr(r"console: map Map\(2\) \{ 'k' => 1, 'j' => \{ v: true \} \}")
    h.wait_stderr(r"console: set Set\(2\) \{ 1, 'b' \}")
    h.wait_stderr(r"console: obj <ref \*1> \{ a: 1, s: 'x', nested: \{ deep: \{ deeper: \[Object\] \} \}, "
                  r"list: \[ 1, 'two', null, undefined \], self: \[Circular \*1\] \}")
    h.wait_stderr(r"console: misc Uint8Array\(3\) \[ 1, 2, 255 \] 1970-01-01T00:00:00.000Z /a\+b/gi "
                  r"Symbol\(s\) \[Function: named\] \[class K\] -0 \[ undefined, <1 empty item>, 3 \]")
    h.wait_stderr(r"console: headers Headers\(1\) \{ 'x-a' => '1' \} URL \{ href: 'http://example.com/p\?q=1'")
    h.wait_stderr(r"console: fmt n=42 7 \{\"j\":1\} % rest")


def start_relative(tmp_path, yaml_text, script_name, script_text):
    """heliosd started the way a user does it in the config's directory:
    `heliosd -c config.yaml` with relative paths."""
    d = tmp_path / "site"
    d.mkdir()
    (d / script_name).write_text(script_text)
    (d / "config.yaml").write_text(yaml_text)
    err = open(tmp_path / "stderr.log", "wb")
    proc = subprocess.Popen([str(HELIOSD), "-c", "config.yaml", "-m", str(MODULE_DIR)], cwd=d,
                            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    err.close()
    return proc


def relative_yaml(port, script):
    return f"""
listeners:
  - address: 127.0.0.1:{port}
workers: 1
routes:
  - name: js
    match: {{prefix: /}}
    handler: {{module: js, config: {{script: {script}}}}}
"""


def stop_proc(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_an_es_module_script_loads_with_a_relative_config_path(tmp_path):
    from conftest import http_request

    port = free_port()
    proc = start_relative(tmp_path, relative_yaml(port, "worker.js"), "worker.js",
                          "export default { fetch() { return new Response('module ok'); } };\n")
    try:
        wait_for(lambda: port_accepts(port) or proc.poll() is not None, 20, what="heliosd to listen")
        assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
        status, _, body = http_request(port, "/")
        assert (status, body) == (200, b"module ok"), (tmp_path / "stderr.log").read_text()
    finally:
        stop_proc(proc)
    assert "could not load module" not in (tmp_path / "stderr.log").read_text()


def test_a_script_that_fails_to_load_is_a_startup_error(tmp_path, check_config):
    port = free_port()
    proc = start_relative(tmp_path, relative_yaml(port, "worker.js"), "worker.js",
                          "import { helper } from './helper.js';\n"
                          "export default { fetch() { return new Response(helper()); } };\n")
    try:
        rc = proc.wait(timeout=30)
    finally:
        stop_proc(proc)
    log = (tmp_path / "stderr.log").read_text()
    assert rc != 0, log
    assert "helper.js" in log and "imports are not supported" in log
    assert not re.search(r"\bstarted\b", log), log


def test_heliosd_t_reports_top_level_script_errors(tmp_path, check_config):
    script = tmp_path / "top.js"
    script.write_text("const table = {};\ntable.missing.key = 1;\n"
                      "addEventListener('fetch', (e) => e.respondWith(new Response('x')));\n")
    port = free_port()
    proc = check_config(make_config(port, [js_route(script)]))
    assert proc.returncode == 1, proc.stderr
    assert re.search(re.escape(str(script)) + r": the script's top level failed: TypeError: "
                     r"cannot set property 'key' of undefined", proc.stderr), proc.stderr
    assert f"{script}:2" in proc.stderr  # the stack, with file:line


def test_a_js_route_that_fails_to_initialise_answers_503_on_that_route_only(heliosd, tmp_path, backends,
                                                                          monkeypatch):
    a = backends("a")
    broken = tmp_path / "broken.js"
    broken.write_text("addEventListener('fetch', (e) => e.respondWith(new Response('never')));")
    good = tmp_path / "good.js"
    good.write_text("addEventListener('fetch', (e) => e.respondWith(new Response('good js')));")
    port = free_port()
    routes = [
        js_route(broken, name="broken", match={"prefix": "/broken"}),
        js_route(good, name="good", match={"prefix": "/good"}),
        static_route("static", "static ok", match={"prefix": "/static"}),
        {"name": "proxied", "match": {"prefix": "/"}, "upstream": "app"},
    ]
    # A script that passes the configuration check fails on the workers
    # only when its top level is not deterministic (or a worker runs out of
    # memory); the module's fault hook makes that happen on demand.
    monkeypatch.setenv("HELIOS_JS_TEST_FAIL_INIT", "broken.js")
    h = heliosd(make_config(port, routes, {"app": upstream_conf(a)}, workers=2))
    for _ in range(6):  # both workers
        status, _, body = h.get("/broken")
        assert status == 503, body
        assert h.get("/good")[:3:2] == (200, b"good js")
        assert h.get("/static")[:3:2] == (200, b"static ok")
        assert h.get("/other")[:3:2] == (200, b"hello from a\n")
    h.wait_stderr(r"\[error\].*broken\.js: the script could not be initialised on worker \d, "
                  r"its routes answer 503: Error: fault injected")


def test_fetch_to_a_named_upstream_sends_the_urls_host(heliosd, tmp_path, backends):
    a = backends("api")
    src = """
export default {
  async fetch(request) {
    const p = new URL(request.url).pathname;
    let r;
    if (p === '/named') r = await fetch('https://api.example.com/headers');
    else if (p === '/port') r = await fetch('http://api.example.com:8443/headers');
    else if (p === '/copy') r = await fetch(new Request('http://api.example.com/headers', request));
    else r = await fetch(request);  // the route's own upstream: the client's Host
    const seen = await r.json();
    return Response.json(seen.headers.filter(([k]) => k.toLowerCase() === 'host').map(([, v]) => v));
  },
};
"""
    h = start_js(heliosd, tmp_path, src, upstreams={"api.example.com": upstream_conf(a)},
                 route_upstream="api.example.com")
    assert get_json(h, "/named") == ["api.example.com"]
    assert get_json(h, "/port") == ["api.example.com:8443"]
    assert get_json(h, "/copy", headers={"Host": "client.example"}) == ["api.example.com"]
    assert get_json(h, "/headers", headers={"Host": "client.example"}) == ["client.example"]


def test_errors_name_the_missing_method_and_the_stack_starts_with_the_message(heliosd, tmp_path):
    src = """
export default {
  async fetch(request) {
    const out = {};
    try { request.jsonn(); } catch (e) { out.method = e.message; out.name = e.name; }
    try { const o = { n: 1 }; o.n(); } catch (e) { out.number = e.message; }
    const e = new RangeError('out of range: 7');
    out.stack = e.stack.split('\\n').slice(0, 2);
    class AppError extends Error {}
    AppError.prototype.name = 'AppError';
    out.custom = new AppError('custom').stack.split('\\n')[0];
    out.empty = new Error().stack.split('\\n')[0];
    try { null.x; } catch (e) { out.engine = e.stack.split('\\n')[0]; }
    return Response.json(out);
  },
};
"""
    h = start_js(heliosd, tmp_path, src)
    got = get_json(h, "/")
    assert got["method"] == "jsonn is not a function (it is undefined)"
    assert got["name"] == "TypeError"
    assert got["number"] == "n is not a function (it is a number)"
    assert got["stack"][0] == "RangeError: out of range: 7"
    assert re.match(r"    at fetch \(.*app\.js:\d+\)", got["stack"][1]), got["stack"]
    assert got["custom"] == "AppError: custom"
    assert got["empty"] == "Error"
    assert got["engine"] == "TypeError: cannot read property 'x' of null"


# ---------------------------------------------------------------- self, structuredClone, intervals, Buffer


def test_self_structured_clone_set_interval_and_performance(heliosd, tmp_path):
    src = """
self.addEventListener('fetch', (event) => event.respondWith(handle()));
async function handle() {
  const src = { d: new Date(5), m: new Map([['k', new Set([1])]]), u8: new Uint8Array([1, 2]),
                re: /x+/g, nested: { a: [1, { b: 2 }] }, err: new RangeError('bad') };
  src.self = src;
  src.again = src.nested;
  const c = structuredClone(src);
  const errs = [];
  for (const bad of [{ f() {} }, Symbol('s'), new Request('http://x/')]) {
    try { structuredClone(bad); errs.push('cloned'); } catch (e) { errs.push(e.name); }
  }
  const ticks = [];
  await new Promise((resolve) => {
    const id = setInterval((x) => { ticks.push(x); if (ticks.length === 3) { clearInterval(id); resolve(); } }, 10, 't');
  });
  let n = 0;
  const id2 = setInterval(() => n++, 5);
  clearTimeout(id2);  // one id pool
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, 40));
  const waited = performance.now() - t0;
  return Response.json({
    selfIsGlobal: self === globalThis, cycle: c !== src && c.self === c, shared: c.again === c.nested,
    date: c.d instanceof Date && c.d.getTime(), map: c.m.get('k').has(1) && c.m !== src.m,
    u8: Array.from(c.u8), copied: c.u8.buffer !== src.u8.buffer, re: c.re.source + '/' + c.re.flags,
    nested: c.nested, err: [c.err instanceof RangeError, c.err.message], errs, ticks, cleared: n,
    // a 40 ms timer is armed from the loop's cached time, and a busy (ASan, CI)
    // machine skews the two clocks read here: bounds that still catch a timer
    // that does not wait, or an origin in the wrong unit or epoch
    perf: waited >= 30 && waited < 5000 && Math.abs(performance.timeOrigin + performance.now() - Date.now()) < 1000,
  });
}
"""
    h = start_js(heliosd, tmp_path, src)
    got = get_json(h, "/")
    assert got == {
        "selfIsGlobal": True, "cycle": True, "shared": True, "date": 5, "map": True, "u8": [1, 2],
        "copied": True, "re": "x+/g", "nested": {"a": [1, {"b": 2}]}, "err": [True, "bad"],
        "errs": ["DataCloneError", "DataCloneError", "DataCloneError"], "ticks": ["t", "t", "t"], "cleared": 0,
        "perf": True,
    }


def test_an_interval_stops_when_its_request_ends(heliosd, tmp_path):
    src = """
addEventListener('fetch', (event) => {
  setInterval(() => console.log('interval-tick'), 20);
  event.respondWith(new Response('done'));
});
"""
    h = start_js(heliosd, tmp_path, src)
    assert h.get("/")[2] == b"done"
    time.sleep(0.3)
    assert h.stderr().count("interval-tick") <= 1


def test_node_buffer_module(heliosd, tmp_path):
    import base64

    src = r"""
import { Buffer } from 'node:buffer';
import buffer from 'node:buffer';
export default {
  async fetch(request) {
    const body = Buffer.from(await request.arrayBuffer());
    const b = Buffer.from('héllo wörld', 'utf8');
    const shared = Buffer.from('abc');
    shared.subarray(0, 1)[0] = 65;
    return Response.json({
      sameClass: buffer.Buffer === Buffer, isUint8Array: b instanceof Uint8Array,
      utf8: b.toString(), base64: b.toString('base64'), hex: b.toString('hex'),
      b64url: Buffer.from([251, 255, 191]).toString('base64url'),
      fromB64: Buffer.from('aGVsbG8gd29ybGQ=', 'base64').toString(),
      fromB64url: Array.from(Buffer.from('-_-_', 'base64url')),
      fromHex: Array.from(Buffer.from('00ff10', 'hex')),
      concat: Buffer.concat([Buffer.from('ab'), Buffer.from([0x63]), new Uint8Array([100])]).toString(),
      concatCut: Buffer.concat([Buffer.from('abc'), Buffer.from('def')], 4).toString(),
      byteLength: [Buffer.byteLength('héllo'), Buffer.byteLength('aGVsbG8=', 'base64'), Buffer.byteLength(new ArrayBuffer(7))],
      equals: [Buffer.from('x').equals(Buffer.from('x')), Buffer.from('x').equals(Buffer.from('xy'))],
      sub: b.subarray(1, 3).toString('hex'), subIsBuffer: Buffer.isBuffer(b.subarray(1)), shared: shared.toString(),
      isBuffer: [Buffer.isBuffer(b), Buffer.isBuffer(new Uint8Array(1))],
      slice: b.slice(0, 2).toString('latin1'),
      body: body.toString('base64'), json: JSON.stringify(Buffer.from([1, 2])),
      alloc: Buffer.alloc(5, 'ab').toString(), latin1: Buffer.from('\xe9t\xe9', 'latin1').toString('hex'),
      range: b.toString('utf8', 0, 1), compare: Buffer.compare(Buffer.from('a'), Buffer.from('b')),
      fromArray: Buffer.from([1, 256, -1]).toString('hex'),
    });
  },
};
"""
    h = start_js(heliosd, tmp_path, src)
    body = bytes(range(256)) * 3
    status, _, data = h.get("/", method="POST", body=body)
    assert status == 200, data
    got = json.loads(data)
    text = "héllo wörld".encode()
    assert got == {
        "sameClass": True, "isUint8Array": True,
        "utf8": "héllo wörld", "base64": base64.b64encode(text).decode(), "hex": text.hex(),
        "b64url": base64.urlsafe_b64encode(bytes([251, 255, 191])).decode().rstrip("="),
        "fromB64": "hello world", "fromB64url": list(base64.urlsafe_b64decode("-_-_")),
        "fromHex": [0, 255, 16], "concat": "abcd", "concatCut": "abcd",
        "byteLength": [6, 5, 7], "equals": [True, False],
        "sub": text[1:3].hex(), "subIsBuffer": True, "shared": "Abc", "isBuffer": [True, False],
        "slice": text[:2].decode("latin-1"),
        "body": base64.b64encode(body).decode(), "json": '{"type":"Buffer","data":[1,2]}',
        "alloc": "ababa", "latin1": "e974e9", "range": "h", "compare": -1, "fromArray": "0100ff",
    }
