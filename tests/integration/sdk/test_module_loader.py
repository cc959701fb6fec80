"""The module loader refuses every broken module with a message that names
the file, where the configuration asked for it, and what was expected; and
a good module loads in a running heliosd, not only under -t.

The broken modules are built from tests/modules/*.c into
$HELIOS_TEST_MODULE_DIR; each breaks exactly one rule. Configurations are
written as literal YAML so every line:col asserted here can be read off the
text."""

import re
import struct
import subprocess

import pytest

from conftest import (
    HELIOSD,
    SOURCE_DIR,
    MODULE_DIR,
    TEST_MODULE_DIR,
    free_port,
    is_sanitizer_build,
    make_config,
    raw,
    run_config_check,
    write_config_file,
)


def abi_version():
    """(major, minor) from the SDK header, the one source of truth."""
    text = (SOURCE_DIR / "plugins-sdk" / "include" / "helios" / "types.h").read_text()
    major = int(re.search(r"#define HELIOS_ABI_MAJOR (\d+)", text).group(1))
    minor = int(re.search(r"#define HELIOS_ABI_MINOR (\d+)", text).group(1))
    return major, minor


def heliosd_signature():
    """What HELIOS_BUILD_SIGNATURE expands to in this heliosd, worked out
    independently of the binary's own report."""
    ptr = "lp64" if struct.calcsize("P") == 8 else "ilp32"
    return f"{ptr}-openssl3-{'asan' if is_sanitizer_build() else 'nosan'}"


MAJOR, MINOR = abi_version()


def module_path(name):
    return f"{TEST_MODULE_DIR}/{name}.so"


# Fragments each refusal must contain, in addition to "<file>:<line>:<col>:
# <key path>: " in front. The module file path starts every loader message
# except "not found", which names the module first.
REFUSALS = {
    "bad_magic": [
        f"{module_path('bad_magic')}: not a heliosd module descriptor "
        "(magic 0x4e4f5045, expected 0x484c4f53)",
    ],
    "bad_major": [
        f"{module_path('bad_major')}: built for plugin ABI {MAJOR + 1}.{MINOR}, "
        f"but this heliosd provides ABI {MAJOR}.{MINOR} (major versions must match)",
        "rebuild the module against this SDK",
    ],
    "newer_minor": [
        f"{module_path('newer_minor')}: built for plugin ABI {MAJOR}.{MINOR + 1}, "
        f"newer than this heliosd's ABI {MAJOR}.{MINOR}",
        "upgrade heliosd or rebuild the module",
    ],
    "bad_sig": [
        f"{module_path('bad_sig')}: build signature 'ilp32-gnutls-nosan' does not match "
        f"heliosd's '{heliosd_signature()}'",
    ],
    "no_entry": [
        f"{module_path('no_entry')}: no entry symbol 'helios_module_init'",
    ],
    "null_desc": [
        f"{module_path('null_desc')}: helios_module_init returned NULL",
        # The module's own log line, written before it refused.
        "null_desc: refusing to load (test module)",
    ],
    "no_such_module": [
        f"module 'no_such_module' not found: {module_path('no_such_module')}: "
        f"No such file or directory (module directory: {TEST_MODULE_DIR})",
    ],
}

# The route handler when the module under test sits in `modules:`: the only
# handler in the test module directory, configured so it loads.
GOOD_HANDLER = """\
routes:
  - handler:
      module: rejects_config
      config:
        answer: 42
"""


def config_text(port, name, where):
    """(YAML text, line, col, key path) of the reference to module NAME."""
    head = f"listeners:\n  - address: 127.0.0.1:{port}\n"
    if where == "handler":
        return head + f"routes:\n  - handler: {name}\n", 4, 14, "routes[0].handler"
    return head + f"modules:\n  - {name}\n" + GOOD_HANDLER, 4, 5, "modules[0]"


def check_config(tmp_path, text, name="heliosd.yaml", module_dir=TEST_MODULE_DIR):
    """Runs heliosd -t on TEXT; returns (CompletedProcess, config path)."""
    if not (TEST_MODULE_DIR / "rejects_config.so").exists():
        pytest.fail(f"test modules not built in {TEST_MODULE_DIR}")
    cfg = write_config_file(tmp_path, text, name)
    return run_config_check(cfg, module_dir=module_dir), cfg


def assert_one_error(p, cfg, located, fragments=()):
    """Exit 1; LOCATED ("line:col: key.path: message start") on one line
    prefixed with the config file; every fragment on that same line; and no
    other error reported."""
    out = p.stderr
    assert p.returncode == 1, f"exit {p.returncode}, expected 1; stderr:\n{out}\nstdout:\n{p.stdout}"
    prefix = f"{cfg}:{located}"
    lines = [ln for ln in out.splitlines() if ln.startswith(prefix)]
    assert lines, f"no line starting with {prefix!r} in stderr:\n{out}"
    for frag in fragments:
        assert frag in lines[0] or frag in out, f"{frag!r} missing from stderr:\n{out}"
    assert "configuration has 1 error" in out, f"expected exactly one error:\n{out}"


# --------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("where", ["handler", "modules"])
@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_broken_module_is_refused_with_file_and_reason(tmp_path, name, where):
    text, line, col, keypath = config_text(free_port(), name, where)
    p, cfg = check_config(tmp_path, text)
    first, *rest = REFUSALS[name]
    assert_one_error(p, cfg, f"{line}:{col}: {keypath}: {first}", rest)
    assert "configuration OK" not in p.stdout


def test_broken_modules_are_all_reported_in_one_run(tmp_path):
    """-t prints every refusal, not just the first."""
    names = sorted(REFUSALS)
    text = f"listeners:\n  - address: 127.0.0.1:{free_port()}\nmodules:\n"
    text += "".join(f"  - {n}\n" for n in names) + GOOD_HANDLER
    p, cfg = check_config(tmp_path, text)
    assert p.returncode == 1, p.stderr
    for i, n in enumerate(names):
        first = REFUSALS[n][0]
        assert f"{cfg}:{4 + i}:5: modules[{i}]: {first}" in p.stderr, p.stderr
    assert f"configuration has {len(names)} errors" in p.stderr, p.stderr


def test_rejected_module_config_is_located_at_the_offending_key(tmp_path):
    text = (
        f"listeners:\n  - address: 127.0.0.1:{free_port()}\n"
        "routes:\n"
        "  - handler:\n"
        "      module: rejects_config\n"
        "      config:\n"
        "        answer: 41\n"
    )
    p, cfg = check_config(tmp_path, text)
    # line 7 "        answer: 41": the value 41 starts at column 17.
    assert_one_error(p, cfg, "7:17: routes[0].handler.config.answer: answer must be 42")


def test_rejected_module_config_in_global_chain_is_located(tmp_path):
    text = (
        f"listeners:\n  - address: 127.0.0.1:{free_port()}\n"
        "modules:\n"
        "  - module: rejects_config\n"
        "    config:\n"
        "      answer: forty-two\n" + GOOD_HANDLER
    )
    p, cfg = check_config(tmp_path, text)
    assert_one_error(p, cfg, "6:15: modules[0].config.answer: answer must be 42")


def test_module_refusing_a_missing_config_is_reported_at_its_entry(tmp_path):
    """No `config:` node to point at: the module logs why, and the core
    reports the instance as rejected at its `handler:` entry."""
    text, line, col, keypath = config_text(free_port(), "rejects_config", "handler")
    p, cfg = check_config(tmp_path, text)
    assert_one_error(
        p,
        cfg,
        f"{line}:{col}: {keypath}: module 'rejects_config' rejected its configuration",
        ["rejects_config: answer must be 42"],
    )


def test_accepted_module_config_passes(tmp_path):
    text = (
        f"listeners:\n  - address: 127.0.0.1:{free_port()}\n"
        "modules:\n"
        "  - module: rejects_config\n"
        "    config:\n"
        "      answer: 42\n" + GOOD_HANDLER
    )
    p, cfg = check_config(tmp_path, text)
    assert p.returncode == 0, f"exit {p.returncode}; stderr:\n{p.stderr}"
    assert "configuration OK" in p.stdout, p.stdout
    assert "2 module instances" in p.stdout, p.stdout
    assert "error" not in p.stderr.lower(), p.stderr


# --------------------------------------------------------------------------
# a running heliosd


def test_module_loads_and_answers_in_running_heliosd(heliosd):
    if not (TEST_MODULE_DIR / "rejects_config.so").exists():
        pytest.fail(f"test modules not built in {TEST_MODULE_DIR}")
    port = free_port()
    cfg = make_config(
        port,
        [{"name": "answer", "match": {"prefix": "/"},
          "handler": {"module": "rejects_config", "config": {"answer": 42}}}],
        # A second instance of the same module, as a pass-through filter.
        modules=[{"module": "rejects_config", "config": {"answer": 42}}],
    )
    # The fixture passes -m HELIOS_MODULE_DIR first; the last -m wins.
    h = heliosd(cfg, extra_args=("-m", str(TEST_MODULE_DIR)))
    r = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", h.url("/anything")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=40,
    )
    assert r.returncode == 0, r.stderr
    body, _, status = r.stdout.decode().rpartition("\n")
    assert status == "200", r.stdout
    assert body == "42\n", repr(body)
    loaded = re.findall(
        rf"loaded module rejects_config 0\.0\.0 \(ABI {MAJOR}\.{MINOR}\) from "
        + re.escape(module_path("rejects_config")),
        h.stderr(),
    )
    # Two instances, one .so: loaded once.
    assert len(loaded) == 1, h.stderr()


def test_running_heliosd_refuses_to_start_with_broken_module(tmp_path):
    """Not only -t: a real start fails the same way, with the message in
    the error log."""
    if not HELIOSD.exists():
        pytest.fail(f"heliosd not built: {HELIOSD}")
    port = free_port()
    text, line, col, keypath = config_text(port, "bad_major", "handler")
    cfg = tmp_path / "heliosd.yaml"
    cfg.write_text(text)
    p = subprocess.run(
        [str(HELIOSD), "-c", str(cfg), "-m", str(TEST_MODULE_DIR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1, f"exit {p.returncode}; stderr:\n{p.stderr}"
    assert f"{cfg}:{line}:{col}: {keypath}: {REFUSALS['bad_major'][0]}" in p.stderr, p.stderr


def test_abi_1_0_module_loads_and_serves_in_a_newer_core(heliosd):
    """Older minors load: abi10 claims ABI 1.0 with the descriptor and
    handler table of that version (no `on_done`, no `commands`)."""
    if not (TEST_MODULE_DIR / "abi10.so").exists():
        pytest.fail(f"test modules not built in {TEST_MODULE_DIR}")
    assert MINOR >= 2, "abi10 probes fields appended up to ABI 1.2"
    port = free_port()
    cfg = make_config(port, [{"name": "old", "match": {"prefix": "/"}, "handler": "abi10"}])
    h = heliosd(cfg, extra_args=("-m", str(TEST_MODULE_DIR)))
    status, _, body = h.get("/")
    assert (status, body) == (200, b"abi 1.0\n")
    assert re.search(
        r"loaded module abi10 0\.0\.0 \(ABI 1\.0\) from " + re.escape(module_path("abi10")),
        h.stderr(),
    ), h.stderr()


def test_abi_1_1_module_keeps_its_contract(heliosd):
    """abi11 claims ABI 1.1 (descriptor without `commands`, a filter and a
    handler with on_done) and reads req_stats with the 1.1 struct size: the
    core writes nothing past it, calls on_done for every request, and gives
    its on_log routed requests only (a 404 and a 400 no route took reach
    on_log of modules built for 1.3 or later only)."""
    if not (TEST_MODULE_DIR / "abi11.so").exists():
        pytest.fail(f"test modules not built in {TEST_MODULE_DIR}")
    assert MINOR >= 3, "abi11 probes fields appended in ABI 1.3"
    port = free_port()
    cfg = make_config(port, [{"name": "old", "match": {"prefix": "/a"}, "handler": "abi11"}],
                      modules=[{"module": "abi11"}])
    h = heliosd(cfg, extra_args=("-m", str(TEST_MODULE_DIR)))
    for n in (0, 1):
        status, _, body = h.get("/a")
        assert (status, body) == (200, b"abi 1.1 %d\n" % n), body
    assert h.get("/elsewhere")[0] == 404
    assert raw(port, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n").startswith(b"HTTP/1.1 400")
    status, _, body = h.get("/a")
    assert (status, body) == (200, b"abi 1.1 2\n"), body
    assert re.search(r"loaded module abi11 0\.0\.0 \(ABI 1\.1\) from " +
                     re.escape(module_path("abi11")), h.stderr()), h.stderr()
    assert "BUG" not in h.stderr(), h.stderr()


def test_abi_1_2_balancer_loads_and_keeps_its_contract(heliosd, backend):
    """abi12 claims ABI 1.2 with the balancer table of that version (no
    on_attempt_end): it loads through a `module_path` list, balances, its
    pick gets no per-attempt slot and the hook past its table is never
    called (either would log "BUG")."""
    if not (TEST_MODULE_DIR / "abi12.so").exists():
        pytest.fail(f"test modules not built in {TEST_MODULE_DIR}")
    assert MINOR >= 3, "abi12 probes fields appended in ABI 1.3"
    port = free_port()
    cfg = make_config(port, [{"name": "app", "match": {"prefix": "/"}, "upstream": "app"}],
                      {"app": {"balancer": "abi12",
                               "backends": [{"name": "a", "address": backend.address}]}},
                      module_path=[str(TEST_MODULE_DIR)])
    h = heliosd(cfg)
    for _ in range(3):
        assert h.get("/")[0] == 200
    assert re.search(r"loaded module abi12 0\.0\.0 \(ABI 1\.2\) from " +
                     re.escape(module_path("abi12")), h.stderr()), h.stderr()
    assert "BUG" not in h.stderr(), h.stderr()


def test_module_path_list_is_searched_after_the_built_in_directory(tmp_path):
    """A `module_path` list adds directories after the built-in one (here
    -m), relative to the file; every entry is checked; a scalar keeps
    meaning "this directory instead"."""
    (tmp_path / "mods").mkdir()
    base = ("listeners: [{address: '127.0.0.1:1'}]\n"
            "routes:\n  - {match: {prefix: /}, handler: abi10}\n")
    # the test modules come from the list, round_robin and friends from -m
    p, _ = check_config(tmp_path / "ok", f"module_path: [{TEST_MODULE_DIR}, ../mods]\n" + base,
                        module_dir=MODULE_DIR)
    assert p.returncode == 0, p.stderr
    # not found anywhere: the message names every directory searched
    p, cfg = check_config(tmp_path / "nf", "module_path: [../mods]\n" + base,
                          module_dir=MODULE_DIR)
    assert p.returncode == 1
    assert "module 'abi10' not found" in p.stderr and "searched in order" in p.stderr, p.stderr
    assert f"{MODULE_DIR}:{tmp_path}/nf/../mods)" in p.stderr, p.stderr
    bad = {
        "module_path: [../nope]\n": ("1:15", "module directory", "does not exist"),
        "module_path: [a:b]\n": ("1:15", "cannot contain ':'", ""),
        "module_path: []\n": ("1:14", "must not be empty", ""),
        "module_path: [{x: 1}]\n": ("1:15", "expected a directory", ""),
    }
    for i, (head, (at, what, more)) in enumerate(bad.items()):
        p, cfg = check_config(tmp_path / f"bad{i}", head + base, module_dir=MODULE_DIR)
        assert p.returncode == 1, head
        assert f"{cfg}:{at}: module_path" in p.stderr and what in p.stderr and more in p.stderr, \
            (head, p.stderr)
