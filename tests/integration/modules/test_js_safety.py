"""The js module's limits: a runaway loop, a 1 GiB
allocation, deep recursion and a thrown error each give 500 with a log line
(the stack in the log, never in the response), while a well-behaved
request on the same worker (`workers: 1`) is still answered promptly."""

import re
import threading
import time

from conftest import free_port, make_config

SCRIPT = r"""
addEventListener('fetch', (event) => event.respondWith(handle(event.request)));
function recurse(n) { return recurse(n + 1) + 1; }
async function handle(request) {
  const p = new URL(request.url).pathname;
  if (p === '/loop') { for (;;) {} }
  if (p === '/loop-catch') { try { for (;;) {} } catch (e) { return new Response('caught the limit'); } }
  if (p === '/async-loop') { await new Promise((r) => setTimeout(r, 10)); for (;;) {} }
  if (p === '/alloc') { const b = new ArrayBuffer(1024 * 1024 * 1024); return new Response('got ' + b.byteLength); }
  if (p === '/grow') { const a = []; for (;;) a.push('x'.repeat(1000) + a.length); }
  if (p === '/throw') { throw new Error('secret-detail-42'); }
  if (p === '/reject') { await null; return Promise.reject(new TypeError('rejected-detail-43')); }
  if (p === '/recurse') { return new Response(String(recurse(0))); }
  if (p === '/not-a-response') { return { status: 200 }; }
  return new Response('fine');
}
"""


def start(heliosd, tmp_path, **cfg):
    script = tmp_path / "app.js"
    script.write_text(SCRIPT)
    c = {"script": str(script), "cpu_limit": "200ms", "memory_limit": "32MiB"}
    c.update(cfg)
    port = free_port()
    route = {"name": "js", "match": {"prefix": "/"}, "handler": {"module": "js", "config": c}}
    return heliosd(make_config(port, [route], workers=1))


def bad_and_good_together(h, bad_path):
    """Sends BAD_PATH and, while it runs, a good request on another
    connection. Returns (bad result, good result, good latency)."""
    out = {}

    def bad():
        out["bad"] = h.get(bad_path, timeout=30)

    t = threading.Thread(target=bad)
    t.start()
    time.sleep(0.02)
    t0 = time.monotonic()
    good = h.get("/", timeout=30)
    lat = time.monotonic() - t0
    t.join(60)
    return out["bad"], good, lat


def check_500(result):
    status, headers, body = result
    assert status == 500, (status, body)
    assert body == b"Internal Server Error\n"


def test_infinite_loop_gives_500_and_does_not_stall_the_worker(heliosd, tmp_path):
    h = start(heliosd, tmp_path)
    bad, good, lat = bad_and_good_together(h, "/loop")
    check_500(bad)
    assert good[0] == 200 and good[2] == b"fine"
    assert lat < 5.0  # waited at most for the 200 ms limit (generous for CI/ASan)
    h.wait_stderr(r"cpu_limit of 200 ms exceeded in the handler \(route 'js', GET /loop\)")
    # try/catch cannot swallow the interrupt
    check_500(h.get("/loop-catch"))
    # nor can a loop after an await (a promise job)
    bad, good, lat = bad_and_good_together(h, "/async-loop")
    check_500(bad)
    assert good[2] == b"fine"
    # the runtime keeps serving afterwards
    for _ in range(5):
        assert h.get("/")[2] == b"fine"


def test_one_gib_allocation_gives_500_and_the_runtime_survives(heliosd, tmp_path):
    h = start(heliosd, tmp_path)
    bad, good, _ = bad_and_good_together(h, "/alloc")
    check_500(bad)
    assert good[2] == b"fine"
    h.wait_stderr(r"uncaught exception in the handler \(route 'js', GET /alloc\).*(out of memory|RangeError)")
    # growing the heap step by step hits memory_limit (or the CPU limit) too
    check_500(h.get("/grow"))
    for _ in range(5):
        assert h.get("/")[2] == b"fine"


def test_thrown_error_gives_500_with_the_stack_only_in_the_log(heliosd, tmp_path):
    h = start(heliosd, tmp_path)
    bad, good, _ = bad_and_good_together(h, "/throw")
    check_500(bad)
    assert b"secret-detail-42" not in bad[2]
    assert good[2] == b"fine"
    m = h.wait_stderr(r"uncaught exception in the handler \(route 'js', GET /throw\): Error: secret-detail-42")
    tail = h.stderr()[m.start():]
    assert "at handle (" in tail and "app.js:" in tail  # the stack, with file:line
    check_500(h.get("/reject"))
    h.wait_stderr(r"TypeError: rejected-detail-43")
    check_500(h.get("/recurse"))
    h.wait_stderr(r"(stack overflow|InternalError)")
    check_500(h.get("/not-a-response"))
    h.wait_stderr(r"not a Response")
    assert h.get("/")[2] == b"fine"


def test_a_broken_top_level_script_stops_the_start(heliosd, tmp_path):
    """The top level runs once at configuration time (as `heliosd -t`
    does): heliosd refuses to start instead of answering 503."""
    script = tmp_path / "top.js"
    script.write_text("throw new Error('top-level-boom');\n")
    port = free_port()
    route = {"name": "js", "match": {"prefix": "/"}, "handler": {"module": "js", "config": {"script": str(script)}}}
    h = heliosd(make_config(port, [route], workers=1), start=False)
    h.expected_rc = 1
    h.start(wait=False)
    assert h.wait_exit(30) == 1
    assert re.search(r"top\.js: the script's top level failed: Error: top-level-boom", h.stderr())
    assert "started" not in h.stderr()
    # an endless top level is stopped by its startup budget, and reported
    script.write_text("for (;;) {}\n")
    h.start(wait=False)
    assert h.wait_exit(30) == 1
    assert "interrupted after its startup budget of 2000 ms" in h.stderr()


def test_limits_are_validated(heliosd, tmp_path, check_config):
    script = tmp_path / "ok.js"
    script.write_text("addEventListener('fetch', (e) => e.respondWith(new Response('x')));")
    port = free_port()
    cfg = {"script": str(script), "memory_limit": "10KiB", "cpu_limit": "0ms", "env": {"A": ["list"]}}
    route = {"name": "js", "match": {"prefix": "/"}, "handler": {"module": "js", "config": cfg}}
    h = heliosd(make_config(port, [route]), start=False)
    proc = check_config(h.confdir)
    assert proc.returncode == 1
    assert "memory_limit must be at least 1MiB" in proc.stderr
    assert "env values must be strings" in proc.stderr
