"""The js module's commands for JavaScript developers, through the real
heliosd binary: `heliosd serve app.js` (no YAML), `heliosd exec script.js`,
`heliosd build`, and the static-response probe (README "Static-response
probe")."""

import json
import signal
import subprocess
import time

import pytest

from conftest import (
    HELIOSD,
    MODULE_DIR,
    SOURCE_DIR,
    curl,
    free_port,
    http_request,
    make_ca,
    make_cert,
    make_config,
    port_accepts,
    wait_for,
)

HELLO = SOURCE_DIR / "examples" / "hello.js"


class Served:
    """One `heliosd serve` process; stopped (SIGTERM) at teardown."""

    def __init__(self, tmp_path, script, *args):
        self.port = free_port()
        self.err = tmp_path / f"serve-{self.port}.err"
        self.out = tmp_path / f"serve-{self.port}.out"
        with open(self.err, "wb") as e, open(self.out, "wb") as o:
            self.proc = subprocess.Popen(
                [str(HELIOSD), "serve", "-m", str(MODULE_DIR), str(script), "--port", str(self.port),
                 "--ip", "127.0.0.1", "--workers", "1", *args],
                stdout=o, stderr=e, stdin=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is not None or port_accepts(self.port), timeout=30,
                 what="heliosd serve to listen")
        assert self.proc.poll() is None, self.stderr()
        wait_for(lambda: "started" in self.stderr(), timeout=10, what="the started line")

    def stderr(self):
        return self.err.read_text(errors="replace")

    def get(self, path="/", **kw):
        return http_request(self.port, path, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail("heliosd serve did not stop on SIGTERM")


@pytest.fixture
def serve(tmp_path):
    started = []

    def make(script, *args):
        s = Served(tmp_path, script, *args)
        started.append(s)
        return s

    yield make
    for s in started:
        assert s.stop() == 0, s.stderr()[-3000:]


def run(*args, timeout=60):
    return subprocess.run([str(HELIOSD), *args[:1], "-m", str(MODULE_DIR), *args[1:]],
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- serve

def test_serve_answers_hello_with_no_yaml(serve):
    s = serve(HELLO)
    status, headers, body = s.get("/any/path")
    assert (status, body) == (200, b"Hello from Helios!")
    assert headers.get("content-type") == "text/plain;charset=UTF-8"


def test_serve_alt_svc_is_on_every_response(serve, tmp_path):
    script = tmp_path / "app.js"
    script.write_text("export default { fetch(r) { return new Response('x', {status: r.url.endsWith('/404') ? 404 : 200}); } };")
    # --no-probe: GET / and POST /other answer the same 200, the probe would cache it
    s = serve(script, "--alt-svc", 'h3=":443"; ma=86400', "--no-probe")
    for path, want in (("/", 200), ("/404", 404)):
        status, headers, _ = s.get(path)
        assert status == want
        assert headers.get("alt-svc") == 'h3=":443"; ma=86400'


def test_serve_tls_answers_over_h2(serve, tmp_path):
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, ca, "localhost", ["localhost"])
    s = serve(HELLO, "--cert", str(cert), "--key", str(key), "--alt-svc", 'h2=":443"')
    r = curl("-s", "--http2", "--cacert", str(ca[1]), "-D", "-", "-o", str(tmp_path / "body"),
             "--resolve", f"localhost:{s.port}:127.0.0.1", f"https://localhost:{s.port}/")
    assert r.returncode == 0, r.stderr
    head = r.stdout.decode()
    assert head.startswith("HTTP/2 200"), head
    assert "alt-svc: h2=\":443\"" in head.lower()
    assert (tmp_path / "body").read_bytes() == b"Hello from Helios!"


def test_serve_sighup_reloads_the_script(serve, tmp_path):
    script = tmp_path / "app.js"
    script.write_text("addEventListener('fetch', e => e.respondWith(new Response('one')));")
    s = serve(script)
    assert s.get("/")[2] == b"one"
    script.write_text("addEventListener('fetch', e => e.respondWith(new Response('two')));")
    s.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: s.get("/")[2] == b"two", timeout=20, what="the reloaded script")


def test_serve_script_mode_has_no_module_resolution(tmp_path):
    script = tmp_path / "app.js"
    script.write_text("export default { fetch() { return new Response('m'); } };")
    auto = run("serve", str(script), "--print-config")
    assert auto.returncode == 0 and "mode: script" not in auto.stdout
    plain = run("serve", str(script), "-s", "--print-config")
    assert plain.returncode == 0 and "mode: script" in plain.stdout
    # the configuration check compiles it as a classic script: `export` is a syntax error
    conf = tmp_path / "serve.yaml"
    conf.write_text(plain.stdout)
    t = subprocess.run([str(HELIOSD), "-t", "-c", str(conf), "-m", str(MODULE_DIR)],
                       capture_output=True, text=True, timeout=60)
    assert t.returncode == 1 and "SyntaxError" in t.stderr, t.stderr


def test_serve_print_config_is_a_valid_configuration(tmp_path):
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, ca, "localhost", ["localhost"])
    r = run("serve", str(HELLO), "--port", "8443", "--ip", "::1", "--workers", "2",
            "--cert", str(cert), "--key", str(key), "--alt-svc", 'h3=":443"',
            "--shutdown-timeout", "5", "--no-probe", "--policy", "round-robin", "--print-config")
    assert r.returncode == 0, r.stderr
    for line in ('address: "[::1]:8443"', "workers: 2", "shutdown: 5s", "probe: false",
                 "dispatch: round_robin", "alpn: [h2, http/1.1]", 'Alt-Svc: "h3=\\":443\\""'):
        assert line in r.stdout, r.stdout
    conf = tmp_path / "serve.yaml"
    conf.write_text(r.stdout)
    t = subprocess.run([str(HELIOSD), "-t", "-c", str(conf), "-m", str(MODULE_DIR)],
                       capture_output=True, text=True, timeout=60)
    assert t.returncode == 0, t.stderr


@pytest.mark.parametrize("args,msg", [
    ([], "which script"),
    (["--port", "0"], "--port 0"),
    (["--port", "x"], "--port x"),
    (["--workers", "0"], "--workers 0"),
    (["--cert", "c.pem"], "--cert and --key go together"),
    (["--policy", "random"], "--policy random"),
    (["--shutdown-timeout", "-1"], "--shutdown-timeout"),
    (["--alt-svc", ""], "--alt-svc"),
    (["--bogus"], "'--bogus'"),
])
def test_serve_refuses_bad_arguments(args, msg):
    script = [str(HELLO)] if args else []
    r = run("serve", *script, *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert msg in r.stderr, r.stderr


def test_serve_missing_script_is_an_error(tmp_path):
    r = run("serve", str(tmp_path / "nope.js"))
    assert r.returncode == 1 and "nope.js" in r.stderr and "No such file" in r.stderr


def test_help_lists_serve_and_exec():
    h = subprocess.run([str(HELIOSD), "-h"], capture_output=True, text=True, timeout=30)
    assert "heliosd serve" in h.stdout and "heliosd exec" in h.stdout
    s = run("serve", "--help")
    assert s.returncode == 0 and "--alt-svc" in s.stdout and "--shutdown-timeout" in s.stdout


# ---------------------------------------------------------------- exec

def test_exec_fetches_from_a_local_server_and_prints(serve, tmp_path):
    s = serve(HELLO)
    script = tmp_path / "get.js"
    script.write_text(f"""
console.log('start');
setTimeout(() => console.log('timer'), 30);
const r = fetch('http://127.0.0.1:{s.port}/hi', {{ method: 'POST', body: 'x', headers: {{ 'x-a': '1' }} }});
r.then(async (res) => {{
  console.log(res.status, res.headers.get('content-type'), await res.text());
  console.warn('to stderr');
}});
""")
    r = run("exec", str(script))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["start", "200 text/plain;charset=UTF-8 Hello from Helios!", "timer"]
    assert r.stderr.strip() == "to stderr"


def test_exec_exits_1_with_the_stack_on_a_throw(tmp_path):
    script = tmp_path / "throw.js"
    script.write_text("console.log('before');\nfunction deep() { throw new Error('boom'); }\n"
                      "setTimeout(() => { deep(); console.log('not reached'); }, 1);\n")
    r = run("exec", str(script))
    assert r.returncode == 1
    assert r.stdout == "before\n"
    assert "Error: boom" in r.stderr and "at deep" in r.stderr and "not reached" not in r.stdout


def test_exec_top_level_throw_and_unhandled_rejection_exit_1(tmp_path):
    top = tmp_path / "top.js"
    top.write_text("null.x;\n")
    r = run("exec", str(top))
    assert r.returncode == 1 and "TypeError" in r.stderr
    rej = tmp_path / "rej.js"
    rej.write_text("async function g() { await null; throw new RangeError('late'); }\ng();\n")
    r = run("exec", str(rej))
    assert r.returncode == 1 and "Uncaught (in promise): RangeError: late" in r.stderr
    handled = tmp_path / "handled.js"
    handled.write_text("Promise.reject(new Error('x')).catch(e => console.log('caught', e.message));\n")
    r = run("exec", str(handled))
    assert (r.returncode, r.stdout) == (0, "caught x\n"), r.stderr


def test_exec_fetch_errors_reject(tmp_path):
    port = free_port()
    script = tmp_path / "err.js"
    script.write_text(f"""
fetch('http://127.0.0.1:{port}/').catch(e => console.log(e.name, e.message.includes('Connection refused')));
fetch('ftp://x/').catch(e => console.log(e.name, e.message));
""")
    r = run("exec", str(script))
    assert r.returncode == 0, r.stderr
    # the bad scheme rejects at once, the refused connection when the loop sends it
    assert r.stdout.splitlines() == ["TypeError fetch(): only http: and https: URLs (not ftp:)", "TypeError true"]


def test_exec_https_verifies_against_the_system_cas(serve, tmp_path):
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, ca, "localhost", ["localhost"])
    s = serve(HELLO, "--cert", str(cert), "--key", str(key))
    script = tmp_path / "tls.js"
    script.write_text(f"fetch('https://localhost:{s.port}/').then(r => console.log('no'), e => console.log(e.message));\n")
    r = run("exec", str(script))
    assert r.returncode == 0, r.stderr
    # a private CA is not among the system's: the handshake is refused
    assert "certificate verification failed" in r.stdout, r.stdout


def test_exec_redirects_only_when_asked(tmp_path, serve):
    script = tmp_path / "redir.js"
    script.write_text("export default { fetch(r) { const u = new URL(r.url);"
                      " return u.pathname === '/a' ? Response.redirect(u.origin + '/b', 302) : new Response('at ' + u.pathname, {headers: {'x-h': '1'}}); } };")
    s = serve(script)
    client = tmp_path / "client.js"
    client.write_text(f"""(async () => {{
  const m = await fetch('http://127.0.0.1:{s.port}/a');
  console.log(m.status, m.headers.get('location'));
  const f = await fetch('http://127.0.0.1:{s.port}/a', {{ redirect: 'follow' }});
  console.log(f.status, await f.text());
}})();
""")
    r = run("exec", str(client))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"302 http://127.0.0.1:{s.port}/b", "200 at /b"]


def test_build_is_compile(tmp_path):
    script = tmp_path / "app.js"
    script.write_text("addEventListener('fetch', e => e.respondWith(new Response('bc')));")
    out = tmp_path / "app.qjsbc"
    r = run("build", str(script), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(b"HXJSBC")


# ---------------------------------------------------------------- probe

RECORDER = """
const seen = [];
export default { fetch(req) {
  seen.push(req.method + ' ' + req.url);
  console.log('ran ' + req.method + ' ' + req.url);
  return new Response(JSON.stringify(seen), { headers: { 'x-seen': String(seen.length) } });
} };
"""

# reads nothing from the request (that would make it dynamic): counts its runs
STATIC = """
let runs = 0;
addEventListener('fetch', (e) => {
  console.log('ran #' + ++runs);
  e.respondWith(new Response('static body'));
});
"""


def test_probe_sends_a_get_then_a_post_at_boot(serve, tmp_path):
    script = tmp_path / "rec.js"
    script.write_text(RECORDER)
    s = serve(script)
    status, headers, body = s.get("/seen")
    assert status == 200
    # a custom header: not cached, so the handler ran and shows the probe's two requests first
    assert json.loads(body) == ["GET http://localhost/", "POST http://localhost/other",
                                f"GET http://127.0.0.1:{s.port}/seen"]
    assert json.loads(s.get("/again")[2])[-1].endswith("/again")


def test_probe_caches_a_static_handler(serve, tmp_path):
    script = tmp_path / "static.js"
    script.write_text(STATIC)
    s = serve(script)
    for path in ("/", "/x", "/y?z"):
        status, headers, body = s.get(path)
        assert (status, body) == (200, b"static body")
        assert headers.get("content-type") == "text/plain;charset=UTF-8"
    status, _, body = s.get("/post", method="POST", body=b"abc")
    assert (status, body) == (200, b"static body")
    head = s.get("/", method="HEAD")
    assert head[0] == 200 and head[2] == b""
    wait_for(lambda: "ran #2" in s.stderr(), timeout=10, what="the probe's two requests")
    assert "ran #3" not in s.stderr()  # no JavaScript ran for the real requests


def test_probe_opt_out_per_route_and_in_serve(serve, tmp_path, heliosd):
    script = tmp_path / "static.js"
    script.write_text(STATIC)
    s = serve(script, "--no-probe")
    assert s.get("/x")[2] == b"static body"
    wait_for(lambda: "ran #1" in s.stderr(), timeout=10, what="the handler to run")
    assert s.get("/x")[2] == b"static body"
    wait_for(lambda: "ran #2" in s.stderr(), timeout=10, what="the handler to run")
    port = free_port()
    h = heliosd(make_config(port, [{"name": "js", "match": {"prefix": "/"},
                                    "handler": {"module": "js", "config": {"script": str(script), "probe": False}}}]))
    assert h.get("/y")[2] == b"static body"
    wait_for(lambda: "ran #1" in h.stderr(), timeout=10, what="the handler to run")
    assert "ran #2" not in h.stderr()


@pytest.mark.parametrize("handler,probes", [
    ("new Response('same', { headers: { 'cache-control': 'no-store' } })", 2),   # a custom header
    ("new Response(String(runs))", 2),                                          # the two answers differ
    ("new Response('same', { status: 201 })", 2),                               # not a 200
    ("new Response(new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode('s')); c.close(); } }))", 2),
    ("new Promise(r => setTimeout(() => r(new Response('late')), 1))", 1),      # timers throw: no POST after
    ("(ctx.waitUntil(Promise.resolve()), new Response('same'))", 2),             # work after the response
    ("new Response(req.headers.get('x-a') ? 'a' : 'same')", 2),                 # reads its request
])
def test_probe_does_not_cache(serve, tmp_path, handler, probes):
    script = tmp_path / "dyn.js"
    script.write_text("let runs = 0;\nexport default { fetch(req, env, ctx) { console.log('ran #' + ++runs); return "
                      + handler + "; } };")
    s = serve(script)
    # the worker logs the probe's runs as it starts (the log line may follow "started")
    wait_for(lambda: f"ran #{probes}" in s.stderr(), timeout=10, what="the probe's runs")
    status, _, _ = s.get("/real")
    assert status in (200, 201)
    wait_for(lambda: f"ran #{probes + 1}" in s.stderr(), timeout=10,
             what="the handler to run for the real request")


def test_probe_does_not_break_a_handler_that_routes_on_the_path(serve, tmp_path):
    script = tmp_path / "route.js"
    script.write_text("export default { fetch(req) { return new Response(new URL(req.url).pathname === '/api' ? 'api' : 'home'); } };")
    s = serve(script)
    assert s.get("/")[2] == b"home"
    assert s.get("/api")[2] == b"api"


def test_probe_cached_response_with_arraybuffer_and_json_content_type(serve, tmp_path):
    script = tmp_path / "bin.js"
    script.write_text("export default { fetch() { return new Response(new Uint8Array([0, 1, 2, 255])); } };")
    s = serve(script)
    status, headers, body = s.get("/")
    assert (status, body) == (200, bytes([0, 1, 2, 255]))
    assert "content-type" not in headers


def test_a_repeated_string_response_keeps_its_status_and_head(serve, tmp_path):
    """nat_respond prepares a response answered twice in a row with the same
    string: the status is part of what must match, HEAD gets no body, and a
    handler with a header still sends it."""
    script = tmp_path / "same.js"
    script.write_text("let n = 0;\nexport default { fetch(req) { n++;\n"
                      "  if (req.method === 'HEAD') return new Response('same');\n"
                      "  if (new URL(req.url).pathname === '/h') return new Response('same', {headers: {'x-n': String(n)}});\n"
                      "  return new Response('same', { status: n % 3 === 0 ? 404 : 200 }); } };")
    s = serve(script, "--no-probe")
    got = [s.get("/")[0:3:2] for _ in range(7)]
    assert got == [(200, b"same"), (200, b"same"), (404, b"same"), (200, b"same"), (200, b"same"),
                   (404, b"same"), (200, b"same")]
    head = s.get("/", method="HEAD")
    assert head[0] == 200 and head[2] == b"" and head[1].get("content-length") == "4"
    status, headers, body = s.get("/h")
    assert (status, body) == (200, b"same") and headers.get("x-n") == "9"


def test_serve_a_script_with_a_syntax_error_does_not_start(tmp_path):
    script = tmp_path / "bad.js"
    script.write_text("addEventListener('fetch', e => {\n  e.respondWith(new Response('x') });\n")
    r = run("serve", str(script), "--port", str(free_port()), "--ip", "127.0.0.1", timeout=60)
    assert r.returncode == 1
    assert f"{script}:2: SyntaxError" in r.stderr and "not starting" in r.stderr, r.stderr
