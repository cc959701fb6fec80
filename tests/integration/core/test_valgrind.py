"""heliosd under valgrind memcheck: real traffic (proxied, static, errors,
a reload, keep-alive and aborted connections), then a clean SIGTERM stop;
valgrind must report no leak and no memory error.

Only the normal build can run under valgrind; the ASan build checks leaks
with LeakSanitizer at every heliosd exit in every other test instead.
"""

import re
import signal
import subprocess

import pytest

from conftest import (
    HELIOSD,
    MODULE_DIR,
    curl,
    free_port,
    is_sanitizer_build,
    make_config,
    port_accepts,
    proxy_route,
    raw,
    static_route,
    to_yaml,
    upstream_conf,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    is_sanitizer_build(), reason="valgrind cannot run an ASan binary; LeakSanitizer covers it"
)


def test_no_leak_after_traffic_reload_and_clean_shutdown(tmp_path, backends):
    a, b = backends("a", "b")
    port = free_port()
    cfg = make_config(
        port,
        [
            static_route("static", "static body\n", match={"path": "/static"}),
            proxy_route("app", "app"),
        ],
        {"app": upstream_conf(a, b)},
        workers=2,
    )
    confdir = tmp_path / "conf"
    confdir.mkdir()
    (confdir / "heliosd.yaml").write_text(to_yaml(cfg))
    log = tmp_path / "valgrind.log"
    proc = subprocess.Popen(
        [
            "valgrind",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect,possible",
            "--errors-for-leak-kinds=definite,indirect,possible",
            "--error-exitcode=99",
            f"--log-file={log}",
            str(HELIOSD),
            "-c",
            str(confdir),
            "-m",
            str(MODULE_DIR),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: port_accepts(port), 120, what="heliosd under valgrind to listen")
        base = f"http://127.0.0.1:{port}"
        for _ in range(20):
            assert curl("-s", f"{base}/").stdout.startswith(b"hello from")
        assert curl("-s", f"{base}/static").stdout == b"static body\n"
        assert curl("-s", "--data-binary", "x" * 100000, f"{base}/echo").stdout == b"x" * 100000
        # malformed request and a connection cut mid-request
        assert raw(port, b"GET / HTTP/1.1\r\nHost: t\r\n bad fold\r\n\r\n").startswith(
            b"HTTP/1.1 400"
        )
        raw(port, b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc", timeout=1)
        # a reload: the old generation must be freed too
        cfg["routes"][0] = static_route("static", "v2\n", match={"path": "/static"})
        (confdir / "heliosd.yaml").write_text(to_yaml(cfg))
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: curl("-s", f"{base}/static").stdout == b"v2\n", 60, what="reloaded body"
        )
        for _ in range(5):
            assert curl("-s", f"{base}/").stdout.startswith(b"hello from")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = log.read_text()
    assert rc == 0, f"heliosd under valgrind exited {rc}:\n{report[-4000:]}"
    assert "ERROR SUMMARY: 0 errors" in report, report[-4000:]
    m = re.search(r"definitely lost: ([\d,]+) bytes", report)
    assert m is None or m.group(1) == "0", report[-4000:]
    assert "All heap blocks were freed" in report or "definitely lost: 0 bytes" in report, report[
        -4000:
    ]
