"""The command line: -V, -t, a missing config path, a listener that cannot
bind, clean stops on SIGINT/SIGTERM, and commands modules register
(`heliosd compile`, ABI 1.2). (Broken configurations in detail are covered
by test_config_errors.py.)"""

import re
import shutil
import signal
import socket
import subprocess

import pytest

from conftest import (
    HELIOSD,
    MODULE_DIR,
    SOURCE_DIR,
    TEST_MODULE_DIR,
    free_port,
    make_config,
    static_route,
    to_yaml,
)


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


def test_check_shipped_conf_d_is_valid(tmp_path):
    src = SOURCE_DIR / "conf.d"
    assert src.is_dir(), f"no shipped configuration at {src}"
    # a copy with the admin secret demo.sh (or the package's postinst) makes
    conf = tmp_path / "conf.d"
    shutil.copytree(src, conf, ignore=shutil.ignore_patterns("admin.secret"))
    (conf / "admin.secret").write_text("0123456789abcdef0123456789abcdef\n")
    (conf / "admin.secret").chmod(0o600)
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


# ---------------------------------------------------------------- module commands


def need_test_modules():
    if not (TEST_MODULE_DIR / "cmd.so").exists():
        pytest.fail(f"test modules not built in {TEST_MODULE_DIR}")


def test_compile_is_the_js_modules_command(tmp_path):
    src = tmp_path / "app.js"
    src.write_text("export default { fetch() { return new Response('hi'); } };\n")
    # -m may come anywhere after the command; the rest goes to the command
    p = run("compile", str(src), "-m", str(MODULE_DIR), "-o", str(tmp_path / "app.qjsbc"))
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert (tmp_path / "app.qjsbc").read_bytes().startswith(b"HXJSBC\x01\n")
    assert b"app.qjsbc: " in p.stdout
    p = run("compile", "-m", str(MODULE_DIR), str(src), "--bogus")
    assert p.returncode == 2
    assert b"heliosd compile: unexpected argument '--bogus'" in p.stderr


def test_js_module_exports_only_its_entry():
    """`compile` is reached through the descriptor, not a private symbol."""
    nm = subprocess.run(["nm", "-D", "--defined-only", str(MODULE_DIR / "js.so")],
                        stdout=subprocess.PIPE, text=True, timeout=30)
    assert nm.returncode == 0
    names = {ln.split()[-1] for ln in nm.stdout.splitlines() if ln.strip()}
    names = {n for n in names if not n.startswith("_")}
    assert names == {"helios_module_init"}, names


def test_unknown_command_exits_2_listing_the_module_commands():
    p = run("no-such-command", "-m", str(MODULE_DIR))
    assert p.returncode == 2
    err = p.stderr.decode(errors="replace")
    assert "heliosd: unknown command 'no-such-command'" in err, err
    assert f"commands of the modules in {MODULE_DIR}:" in err, err
    assert re.search(r"^  compile +compile a js module script .*\(module js\)$", err, re.M), err
    assert p.stdout == b""


def test_module_command_gets_its_arguments_without_m():
    need_test_modules()
    p = run("cmd-echo", "a", "-m", str(TEST_MODULE_DIR), "b c", "")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert p.stdout.decode().splitlines() == [
        "argc=4", "argv[0]=cmd-echo", "argv[1]=a", "argv[2]=b c", "argv[3]=",
    ]
    # api->log works in a command and goes to stderr
    assert b"warning from a command" in p.stderr


@pytest.mark.parametrize("code,expected", [("0", 0), ("7", 7), ("125", 125), ("126", 1),
                                           ("300", 1), ("-1", 1)])
def test_module_command_return_value_is_the_exit_status(code, expected):
    need_test_modules()
    p = run("cmd-exit", code, "-m", str(TEST_MODULE_DIR))
    assert p.returncode == expected, p.stderr.decode(errors="replace")


def test_unknown_command_lists_what_loaded_and_why_others_did_not():
    """The test directory holds cmd (two commands), abi10 (a 1.0 module
    whose `commands` lies past its struct_size) and broken modules."""
    need_test_modules()
    p = run("abi10-cmd", "-m", str(TEST_MODULE_DIR))
    assert p.returncode == 2
    err = p.stderr.decode(errors="replace")
    assert "unknown command 'abi10-cmd'" in err, err
    listed = re.findall(r"^  (\S+) +.*\(module (\w+)\)$", err, re.M)
    assert listed == [("cmd-echo", "cmd"), ("cmd-exit", "cmd")], err
    assert "modules that could not be loaded:" in err, err
    assert f"{TEST_MODULE_DIR}/bad_magic.so: not a heliosd module descriptor" in err, err
    assert f"{TEST_MODULE_DIR}/newer_minor.so: built for plugin ABI" in err, err


def test_command_with_a_missing_module_directory(tmp_path):
    p = run("compile", "-m", str(tmp_path / "nope"), "x.js")
    assert p.returncode == 1
    assert f"-m {tmp_path / 'nope'}: not a directory".encode() in p.stderr
