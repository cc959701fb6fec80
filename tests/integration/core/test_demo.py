"""The README's first command: packaging/demo.sh starts two demo backends
and heliosd on the shipped conf.d/ (http://127.0.0.1:8080, metrics on 9100,
the admin API on 9091), and prints an admin token and the commands to try.

Every command of the README's "try these" block (between the try:begin and
try:end markers) is read out of README.md and run here, in order, with the
token demo.sh printed, so the README and this test cannot drift apart: a
command added to the README without a check here, or a check whose command
left the README, fails the test.

The dependency install and the build are skipped (SKIP_DEPS/SKIP_BUILD):
CI has just done both; everything else is the script as a newcomer runs it.
"""

import json
import os
import re
import signal
import stat
import subprocess

from conftest import SOURCE_DIR, port_accepts, wait_for

DEMO_PORTS = (8080, 9001, 9002, 9091, 9100)
REQUEST_ID = r"[0-9a-f]{32}"


def readme_commands():
    text = (SOURCE_DIR / "README.md").read_text()
    m = re.search(r"<!-- try:begin -->\s*```sh\n(.*?)```\s*<!-- try:end -->", text, re.S)
    assert m, "README.md lacks the try:begin/try:end block"
    lines = [ln.strip() for ln in m.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def headers_of(out):
    """Header lines of a response curl printed (-i, -I or -D -), lower-cased names."""
    head = out.split("\r\n\r\n", 1)[0]
    return {k.strip().lower(): v.strip() for k, v in
            (ln.split(":", 1) for ln in head.split("\r\n")[1:] if ":" in ln)}


def check_hello(out):
    assert out.startswith("HTTP/1.1 200"), out
    assert out.endswith("Hello from heliosd!\n"), out
    h = headers_of(out)
    assert re.fullmatch(REQUEST_ID, h["x-request-id"]), h          # request_id
    assert h["ratelimit-limit"] == "200", h                          # rate_limit
    assert h["x-content-type-options"] == "nosniff", h               # headers


def check_round_robin(out):
    assert sorted(out.splitlines()) == ["hello from demo-a"] * 2 + ["hello from demo-b"] * 2, out


def check_backend_headers(out):
    got = {k.lower(): v for k, v in json.loads(out)["headers"]}
    assert got["x-forwarded-for"] == "127.0.0.1", got
    assert got["x-real-ip"] == "127.0.0.1", got                      # headers
    assert re.fullmatch(REQUEST_ID, got["x-request-id"]), got        # request_id
    assert "traceparent" in got, got


def check_gzip(out):
    h = headers_of(out)
    assert out.startswith("HTTP/1.1 200"), out
    assert h.get("content-encoding") == "gzip", out


def check_js(out):
    assert out == "Hello from Helios!\n", out


def check_js_fetch(out):
    merged = json.loads(out)
    assert sorted(merged["answers"]) == ["hello from demo-a", "hello from demo-b"], merged


def check_h2(out):
    assert out.startswith("HTTP/2 200"), out
    assert re.fullmatch(REQUEST_ID, headers_of(out)["x-request-id"]), out


def check_size_limit(out):
    assert out == "413\n", out


def check_metrics(out):
    assert sorted(out.splitlines()) == [
        'helios_backend_up{upstream="demo",backend="demo-a"} 1',
        'helios_backend_up{upstream="demo",backend="demo-b"} 1',
    ], out


def check_list_backends(out):
    (up,) = json.loads(out)["upstreams"]
    assert up["name"] == "demo" and up["balancer"] == "round_robin", up
    assert [(b["name"], b["healthy"], b["breaker"]) for b in up["backends"]] == [
        ("demo-a", True, "closed"), ("demo-b", True, "closed")], up


def check_drained(out):
    b = json.loads(out)["backend"]
    assert b["name"] == "demo-b" and b["draining"] is True, b


def check_only_a(out):
    assert out.splitlines() == ["hello from demo-a"] * 4, out


def check_undrained(out):
    b = json.loads(out)["backend"]
    assert b["name"] == "demo-b" and b["draining"] is False, b


def check_strategy(out):
    assert json.loads(out) == {"upstream": "demo", "strategy": "ip_hash"}, out


def check_sticky(out):
    lines = out.splitlines()
    assert len(lines) == 4 and len(set(lines)) == 1, out
    assert lines[0] in ("hello from demo-a", "hello from demo-b"), out


def check_rate_limit(out):
    counts = {code: int(n) for n, code in (ln.split() for ln in out.splitlines())}
    assert set(counts) == {"200", "429"}, out
    assert counts["200"] >= 200 and counts["200"] + counts["429"] == 500, out


# (what the command must look like, what its output must be), in README order
CHECKS = [
    (r"curl -i http://127\.0\.0\.1:8080/hello", check_hello),
    (r'curl -s "http://127\.0\.0\.1:8080/\?\[1-4\]"', check_round_robin),
    (r"curl http://127\.0\.0\.1:8080/headers", check_backend_headers),
    (r"curl .*--compressed .*/headers", check_gzip),
    (r"curl http://127\.0\.0\.1:8080/js ", check_js),
    (r"curl http://127\.0\.0\.1:8080/js/backends", check_js_fetch),
    (r"curl .*--http2-prior-knowledge", check_h2),
    (r"head -c 2000000 .*\| curl .*/sink", check_size_limit),
    (r"curl .*:9100/metrics", check_metrics),
    (r"curl .*Bearer \$TOKEN.*:9091/v1/backends ", check_list_backends),
    (r"curl .*Bearer \$TOKEN.*-X POST .*/v1/backends/demo/demo-b/drain", check_drained),
    (r'curl -s "http://127\.0\.0\.1:8080/\?\[1-4\]"', check_only_a),
    (r"curl .*Bearer \$TOKEN.*-X POST .*/v1/backends/demo/demo-b/undrain", check_undrained),
    (r"curl .*Bearer \$TOKEN.*-X POST .*/v1/strategy .*ip_hash", check_strategy),
    (r'curl -s "http://127\.0\.0\.1:8080/\?\[1-4\]"', check_sticky),
    (r"curl .*%\{http_code\}.*/hello\?\[1-500\]", check_rate_limit),
]


def test_readme_commands_all_have_a_check():
    cmds = readme_commands()
    assert len(cmds) == len(CHECKS), "\n".join(cmds)
    for cmd, (rx, _) in zip(cmds, CHECKS):
        assert re.match(rx, cmd), f"README command {cmd!r} is not the one this test checks ({rx})"


def test_demo_script_serves_every_readme_command(tmp_path):
    busy = [p for p in DEMO_PORTS if port_accepts(p)]
    assert not busy, f"demo ports already in use on this machine: {busy}"
    env = dict(os.environ, SKIP_DEPS="1", SKIP_BUILD="1",
               BUILD_DIR=os.environ.get("HELIOS_BUILD_DIR", str(SOURCE_DIR / "build")))
    logpath = tmp_path / "demo.log"
    log = open(logpath, "wb")
    proc = subprocess.Popen(["sh", str(SOURCE_DIR / "packaging/demo.sh")], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: all(port_accepts(p) for p in DEMO_PORTS), 60,
                 what="demo backends, heliosd, metrics and admin API to listen")
        started = logpath.read_text(errors="replace")
        # the secret demo.sh made is readable by its owner only, as admin_api requires
        secret = SOURCE_DIR / "conf.d/admin.secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        m = re.search(r"^export TOKEN=(\S+)$", started, re.M)
        assert m, started
        run_env = dict(os.environ, TOKEN=m.group(1))
        # the commands to try are printed too, exactly as the README has them
        for cmd in readme_commands():
            assert cmd in started, f"demo.sh does not print {cmd!r}"
        for cmd, (_, check) in zip(readme_commands(), CHECKS):
            p = subprocess.run(["sh", "-c", cmd], env=run_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60)
            assert p.returncode == 0, (cmd, p.stderr)
            out = p.stdout.decode(errors="replace")
            try:
                check(out)
            except AssertionError as e:
                raise AssertionError(f"README command: {cmd}\n{e}") from e
        # the access_log module wrote a readable line per request, with its id
        line = re.compile(r'^\S+ 127\.0\.0\.1 "GET /js HTTP/1\.1" 200 .* route=js .*'
                          r'x-request-id="' + REQUEST_ID + '"$', re.M)
        wait_for(lambda: line.search(logpath.read_text(errors="replace")), 10,
                 what="the access log line of GET /js")
        running = logpath.read_text(errors="replace")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    wait_for(lambda: not any(port_accepts(p) for p in DEMO_PORTS), 30,
             what="demo processes to stop")
    text = logpath.read_text(errors="replace")
    assert "configuration OK" in text, text[-3000:]
    assert re.search(r"\[info\] heliosd \S+ started", running), running
    # a clean start, then every README command: not one warning or error line
    bad = [ln for ln in running.splitlines()
           if re.search(r"\[(warn|error)\]|warning|error:", ln, re.I)]
    assert not bad, "\n".join(bad)
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error"):
        assert marker not in text, text[-3000:]
