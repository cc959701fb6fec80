"""heliosd as a service (issue 16): long options and --help; a pid file and
`heliosd -s reload|reopen|stop` through it; fatal start-up errors on stderr
even with a log file; `-t` checking that the log files can be opened; the
privilege drop (`user:`/`group:`) after binding, keeping only
CAP_NET_BIND_SERVICE; the bind EACCES hint."""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import (
    HELIOSD,
    Heliosd,
    MODULE_DIR,
    curl,
    free_port,
    http_request,
    make_config,
    static_route,
    to_yaml,
    wait_for,
)


def run(*args, timeout=30, **kw):
    return subprocess.run([str(HELIOSD), *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, **kw)


def write(tmp_path, cfg):
    d = tmp_path / "conf"
    d.mkdir(exist_ok=True)
    (d / "c.yaml").write_text(cfg if isinstance(cfg, str) else to_yaml(cfg))
    return d


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root): the privilege drop and the bind "
                    "permission are root's business")


def test_long_options_and_help(tmp_path):
    p = run("--help")
    assert p.returncode == 0
    for opt in ("--config", "--test", "--version", "--signal", "--module-dir", "--help"):
        assert opt in p.stdout, p.stdout
    assert run("--version").stdout.startswith("heliosd ")
    d = write(tmp_path, make_config(free_port(), [static_route("x", "x\n")]))
    p = run("--test", "--config", d, "--module-dir", MODULE_DIR)
    assert p.returncode == 0 and p.stdout.startswith(f"configuration OK: {d}"), p.stderr
    p = run("--config=" + str(d), "--no-such-option")
    assert p.returncode == 2 and "usage:" in p.stderr


def test_pid_file_and_signal_commands(heliosd, tmp_path):
    port = free_port()
    pid_file = tmp_path / "run" / "heliosd.pid"
    pid_file.parent.mkdir()
    h = heliosd(make_config(port, [static_route("x", "x\n")], pid_file=str(pid_file)))
    assert pid_file.read_text() == f"{h.pid}\n"
    conf = ["-c", h.confdir]

    mark = h.err_mark()
    p = run("-s", "reload", *conf)
    assert p.returncode == 0, p.stderr
    h.wait_stderr(r"configuration generation 2 is live", since=mark)

    mark = h.err_mark()
    assert run("--signal", "reopen", *conf).returncode == 0
    h.wait_stderr(r"log files reopened", since=mark)
    assert h.get("/")[2] == b"x\n"

    assert run("-s", "stop", *conf).returncode == 0
    assert h.wait_exit() == 0
    assert not pid_file.exists(), "the pid file outlived heliosd"

    p = run("-s", "reload", *conf)
    assert p.returncode == 1
    assert f"pid_file {pid_file}: No such file or directory (is heliosd running?)" in p.stderr


def test_signal_without_pid_file_or_with_a_bad_action(tmp_path):
    d = write(tmp_path, make_config(free_port(), [static_route("x", "x\n")]))
    p = run("-s", "reload", "-c", d)
    assert p.returncode == 1 and "sets no pid_file" in p.stderr, p.stderr
    p = run("-s", "restart", "-c", d)
    assert p.returncode == 2 and "expected reload, stop, reopen or upgrade" in p.stderr


def test_start_failure_reaches_stderr_with_a_log_file(tmp_path):
    log = tmp_path / "error.log"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        d = write(tmp_path, make_config(port, [static_route("x", "x\n")],
                                        logging={"level": "info", "error_log": str(log)}))
        p = run("-c", d, "-m", MODULE_DIR)
    assert p.returncode == 1
    assert f"bind 127.0.0.1:{port}: Address already in use" in p.stderr, p.stderr
    assert f"bind 127.0.0.1:{port}: Address already in use" in log.read_text()


def test_check_refuses_log_files_that_cannot_be_opened(tmp_path):
    port = free_port()
    for key in ("error_log", "access_log"):
        bad = tmp_path / "no-such-dir" / f"{key}.log"
        d = write(tmp_path, make_config(port, [static_route("x", "x\n")],
                                        logging={key: str(bad)}))
        p = run("-t", "-c", d, "-m", MODULE_DIR)
        assert p.returncode == 1, p.stdout
        assert f"heliosd: logging.{key}: {bad}: cannot create it in" in p.stderr, p.stderr
    # a directory that exists: fine, and -t creates nothing
    ok = tmp_path / "error.log"
    d = write(tmp_path, make_config(port, [static_route("x", "x\n")],
                                    logging={"error_log": str(ok)}))
    p = run("-t", "-c", d, "-m", MODULE_DIR)
    assert p.returncode == 0, p.stderr
    assert not ok.exists()


def test_unknown_user_is_a_configuration_error(tmp_path):
    d = write(tmp_path, make_config(free_port(), [static_route("x", "x\n")],
                                    user="no-such-user-hx", group="no-such-group-hx"))
    p = run("-t", "-c", d, "-m", MODULE_DIR)
    assert p.returncode == 1
    assert "user: no such user 'no-such-user-hx'" in p.stderr, p.stderr
    assert "group: no such group 'no-such-group-hx'" in p.stderr, p.stderr


def privileged_port():
    for port in range(990, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024 on 127.0.0.1")


def proc_status(pid):
    text = open(f"/proc/{pid}/status").read()
    return {k: v.strip() for k, v in (ln.split(":", 1) for ln in text.splitlines() if ":" in ln)}


def accessible_by_nobody(path):
    """The build tree must be reachable by `nobody` to run heliosd as it."""
    p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "test", "-x", str(path)], timeout=10)
    return p.returncode == 0


@pytest.fixture
def shared_dir():
    """A directory user nobody can read (pytest's tmp_path is root's only)."""
    d = tempfile.mkdtemp(prefix="hx-daemon-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_privilege_drop_after_binding_keeps_only_net_bind_service(shared_dir):
    need_root()
    nobody = pwd.getpwnam("nobody")
    port = privileged_port()
    cfg = make_config(port, [static_route("x", "x\n")], user="nobody", group="nogroup")
    h = Heliosd(shared_dir, cfg)
    for d in (h.dir, h.confdir):
        os.chmod(d, 0o755)
    h.conffile.chmod(0o644)
    h.start()
    try:
        check_dropped(h, nobody, port, cfg)
        assert h.stop() == 0
    finally:
        if h.alive():
            h.proc.kill()
            h.proc.wait(timeout=10)
    assert not h.check_sane(), h.check_sane()


def check_dropped(h, nobody, port, cfg):
    st = proc_status(h.pid)
    assert st["Uid"].split() == [str(nobody.pw_uid)] * 4, st["Uid"]
    assert st["Gid"].split()[0] != "0", st["Gid"]
    assert int(st["CapEff"], 16) == 1 << 10, st["CapEff"]  # CAP_NET_BIND_SERVICE only
    h.wait_stderr(r"running as user nobody \(uid \d+\), group gid \d+, with CAP_NET_BIND_SERVICE")
    assert http_request(port, "/")[2] == b"x\n"
    # a reload may still bind a new port below 1024
    port2 = privileged_port()
    if port2 == port:
        pytest.skip("a single free privileged port")
    cfg["listeners"].append({"address": f"127.0.0.1:{port2}"})
    mark = h.err_mark()
    h.reload(cfg)
    h.wait_stderr(r"configuration generation 2 is live", since=mark)
    assert http_request(port2, "/")[2] == b"x\n"


def test_bind_permission_error_names_the_capability(shared_dir):
    need_root()
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if not accessible_by_nobody(HELIOSD) or not accessible_by_nobody(MODULE_DIR):
        pytest.skip(f"{HELIOSD} is not reachable by user nobody")
    port = privileged_port()
    d = write(shared_dir, make_config(port, [static_route("x", "x\n")]))
    os.chmod(d, 0o755)
    (d / "c.yaml").chmod(0o644)
    p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                        "--inh-caps=-all", str(HELIOSD), "-c", str(d), "-m", str(MODULE_DIR)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert p.returncode == 1
    assert re.search(rf"bind 127\.0\.0\.1:{port}: Permission denied \(a port below 1024 needs "
                     r"root or CAP_NET_BIND_SERVICE", p.stderr), p.stderr


def test_sd_notify_ready_reloading_stopping(heliosd, tmp_path):
    """Under systemd (Type=notify), heliosd says READY=1 once it serves,
    RELOADING=1 then READY=1 around a reload, STOPPING=1 when it stops."""
    if "systemd notify: yes" not in run("-V").stdout:
        pytest.skip("heliosd built without libsystemd: no sd_notify to test")
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    old = os.environ.get("NOTIFY_SOCKET")
    os.environ["NOTIFY_SOCKET"] = path
    try:
        h = heliosd(make_config(free_port(), [static_route("x", "x\n")]))
    finally:
        if old is None:
            del os.environ["NOTIFY_SOCKET"]
        else:
            os.environ["NOTIFY_SOCKET"] = old

    def next_message():
        return sock.recv(4096).decode()

    try:
        m = next_message()
        assert "READY=1" in m and f"MAINPID={h.pid}" in m, m
        h.reload()
        assert "RELOADING=1" in next_message()
        assert "READY=1" in next_message()
        h.signal(signal.SIGTERM)
        assert "STOPPING=1" in next_message()
        assert h.wait_exit() == 0
    finally:
        sock.close()
