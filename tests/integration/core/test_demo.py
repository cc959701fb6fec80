"""The README's first command: packaging/demo.sh starts two demo backends
and heliosd on the shipped conf.d/, serving http://127.0.0.1:8080.

The dependency install and the build are skipped (SKIP_DEPS/SKIP_BUILD):
CI has just done both; everything else is the script as a newcomer runs it.
"""

import json
import os
import signal
import subprocess

from conftest import SOURCE_DIR, curl, port_accepts, wait_for

DEMO_PORTS = (8080, 9001, 9002, 9100)


def test_demo_script_serves_static_and_proxied_responses(tmp_path):
    busy = [p for p in DEMO_PORTS if port_accepts(p)]
    assert not busy, f"demo ports already in use on this machine: {busy}"
    env = dict(os.environ, SKIP_DEPS="1", SKIP_BUILD="1",
               BUILD_DIR=os.environ.get("HELIOS_BUILD_DIR", str(SOURCE_DIR / "build")))
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen(["sh", str(SOURCE_DIR / "packaging/demo.sh")], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: all(port_accepts(p) for p in DEMO_PORTS), 60,
                 what="demo backends and heliosd to listen")
        hello = curl("-si", "http://127.0.0.1:8080/hello")
        assert hello.stdout.startswith(b"HTTP/1.1 200")
        assert b"Hello from heliosd!" in hello.stdout
        assert b"X-Served-By: heliosd" in hello.stdout
        seen = {curl("-s", "http://127.0.0.1:8080/").stdout for _ in range(6)}
        assert seen == {b"hello from demo-a\n", b"hello from demo-b\n"}, seen
        headers = curl("-s", "http://127.0.0.1:8080/headers").stdout
        assert b"X-Forwarded-For" in headers
        # the JavaScript route, its fetch() to the demo upstream, HTTP/2, metrics
        assert curl("-s", "http://127.0.0.1:8080/js").stdout == b"Hello from Helios!\n"
        merged = json.loads(curl("-s", "http://127.0.0.1:8080/js/backends").stdout)
        assert sorted(merged["answers"]) == ["hello from demo-a", "hello from demo-b"], merged
        h2 = curl("-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version}",
                  "http://127.0.0.1:8080/")
        assert h2.stdout == b"2"
        metrics = curl("-s", "http://127.0.0.1:9100/metrics").stdout.decode()
        assert "helios_build_info" in metrics and "helios_requests_total" in metrics
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
    text = (tmp_path / "demo.log").read_text(errors="replace")
    assert "configuration OK" in text, text[-3000:]
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error"):
        assert marker not in text, text[-3000:]
