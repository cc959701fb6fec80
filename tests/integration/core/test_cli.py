"""The command line: -V, -t, a missing config path, a listener that cannot
bind, and clean stops on SIGINT/SIGTERM. (Broken configurations in detail
are covered by test_config_errors.py.)"""

import re
import signal
import socket
import subprocess

import pytest

from conftest import HELIOSD, MODULE_DIR, SOURCE_DIR, free_port, make_config, static_route, to_yaml


def run(*args, timeout=30):
    if not HELIOSD.exists():
        pytest.fail(f"heliosd not built: {HELIOSD}")
    return subprocess.run(
        [str(HELIOSD), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout
    )


def write(tmp_path, cfg, name="c.yaml"):
    d = tmp_path / "conf"
    d.mkdir(exist_ok=True)
    (d / name).write_text(cfg if isinstance(cfg, str) else to_yaml(cfg))
    return d


def test_version_prints_version_abi_and_libraries():
    p = run("-V")
    assert p.returncode == 0, p.stderr
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert re.search(r"heliosd\D*\d+\.\d+\.\d+", out, re.I), out
    assert re.search(r"ABI\D*\d+\.\d+", out), out
    low = out.lower()
    for lib in ("libev", "openssl", "nghttp2", "yaml", "llhttp", "zlib"):
        assert lib in low, f"-V does not mention {lib}:\n{out}"


def test_check_shipped_conf_d_is_valid():
    conf = SOURCE_DIR / "conf.d"
    assert conf.is_dir(), f"no shipped configuration at {conf}"
    p = run("-t", "-c", str(conf), "-m", str(MODULE_DIR))
    assert p.returncode == 0, (p.stdout + p.stderr).decode(errors="replace")
    assert b"AddressSanitizer" not in p.stderr


def test_check_valid_config_exits_0_without_listening(tmp_path):
    port = free_port()
    d = write(tmp_path, make_config(port, [static_route("x", "x\n")]))
    p = run("-t", "-c", str(d), "-m", str(MODULE_DIR))
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    # -t validates only: nothing was bound.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_check_invalid_config_exits_1_naming_the_place(tmp_path):
    port = free_port()
    text = to_yaml(make_config(port, [static_route("x", "x\n")])) + "not_a_real_key: 1\n"
    d = write(tmp_path, text)
    p = run("-t", "-c", str(d), "-m", str(MODULE_DIR))
    assert p.returncode == 1
    err = (p.stdout + p.stderr).decode(errors="replace")
    assert re.search(r"c\.yaml:\d+:\d+", err), err
    assert "not_a_real_key" in err


def test_config_file_instead_of_directory(tmp_path):
    port = free_port()
    d = write(tmp_path, make_config(port, [static_route("x", "x\n")]))
    p = run("-t", "-c", str(d / "c.yaml"), "-m", str(MODULE_DIR))
    assert p.returncode == 0, p.stderr.decode(errors="replace")


def test_missing_config_path_errors_clearly(tmp_path):
    missing = tmp_path / "does-not-exist"
    p = run("-c", str(missing), "-m", str(MODULE_DIR), timeout=20)
    assert p.returncode != 0
    err = p.stderr.decode(errors="replace")
    assert str(missing) in err, err
    assert re.search(r"no such file|not found|cannot open|does not exist", err, re.I), err


def test_unknown_option_is_an_error():
    p = run("--definitely-not-an-option", timeout=20)
    assert p.returncode != 0
    assert p.stderr.strip() != b""


def test_listener_address_in_use_fails_clearly(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        d = write(tmp_path, make_config(port, [static_route("x", "x\n")]))
        p = run("-c", str(d), "-m", str(MODULE_DIR), timeout=30)
    assert p.returncode != 0
    err = p.stderr.decode(errors="replace")
    assert f"127.0.0.1:{port}" in err, err
    assert re.search(r"in use|bind", err, re.I), err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly(heliosd, sig):
    port = free_port()
    h = heliosd(make_config(port, [static_route("x", "x\n")]))
    assert h.get("/")[2] == b"x\n"
    assert h.stop(sig=sig, timeout=30) == 0
    # Nothing listens any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
