"""The plugin SDK works out of tree: `cmake --install --component sdk`
gives public headers, a pkg-config file and a CMake package and nothing of
the core; the add_header example builds from a copy against that install
alone, with its Makefile (pkg-config) and with CMake (find_package); and
the result loads into heliosd and does what its README says.

A module must be built with the same sanitizer flags as heliosd (they are
part of the build signature). The tests build the example to match the
heliosd under test, and check the refusal of a mismatched one."""

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import (
    HELIOSD,
    MODULE_DIR,
    SOURCE_DIR,
    curl,
    free_port,
    is_sanitizer_build,
    make_config,
    run_config_check,
    static_route,
    write_config_file,
)

BUILD_DIR = Path(os.environ.get("HELIOS_BUILD_DIR") or SOURCE_DIR / "build")
EXAMPLE = SOURCE_DIR / "plugins-sdk" / "examples" / "add_header"
SAN_FLAGS = "-fsanitize=address,undefined"
STEP_TIMEOUT = 50  # each tool invocation; every test stays well under 60 s

ADD_HEADER = {
    "module": "add_header",
    "config": {"name": "X-Served-By", "value": "edge-1", "ping_path": "/_ping"},
}


def sanitizer_heliosd():
    return os.environ.get("HELIOS_SANITIZE", "").lower() in ("1", "on", "true") or is_sanitizer_build()


def module_cflags(sanitize):
    return f"-O2 -g {SAN_FLAGS}" if sanitize else "-O2 -g"


def under(path, root):
    """True when PATH, resolved, is ROOT or inside it."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def clean_env(**extra):
    """The environment minus everything that could add include paths or
    packages behind the test's back."""
    env = dict(os.environ)
    for var in (
        "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH", "PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR",
        "CMAKE_PREFIX_PATH", "CFLAGS", "CPPFLAGS", "LDFLAGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL",
        "HeliosPlugin_DIR", "ASAN_OPTIONS",
    ):
        env.pop(var, None)
    env.update(extra)
    return env


def run(cmd, cwd=None, env=None, what=None):
    """Runs CMD; fails with its output when it does not exit 0. Returns the
    combined stdout+stderr text (compile commands and -H output)."""
    p = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=STEP_TIMEOUT,
    )
    shown = " ".join(map(str, cmd))
    assert p.returncode == 0, f"{what or cmd[0]} failed ({p.returncode}): {shown}\n{p.stdout[-6000:]}"
    return p.stdout


def need_tool(name):
    if shutil.which(name) is None:
        pytest.fail(f"{name} not installed (packaging/install-deps.sh installs it)")


@pytest.fixture(scope="module")
def sdk(tmp_path_factory):
    """The SDK installed from HELIOS_BUILD_DIR into a fresh prefix."""
    need_tool("cmake")
    if not (BUILD_DIR / "CMakeCache.txt").exists():
        pytest.fail(f"no configured build tree at {BUILD_DIR}")
    prefix = tmp_path_factory.mktemp("sdk-prefix")
    run(["cmake", "--install", BUILD_DIR, "--prefix", prefix, "--component", "sdk"], what="cmake --install")
    return prefix


def pc_dir(prefix):
    found = sorted(prefix.glob("lib*/pkgconfig/helios-plugin.pc"))
    assert len(found) == 1, f"expected one lib*/pkgconfig/helios-plugin.pc under {prefix}, got {found}"
    return found[0].parent


def copy_example(tmp_path):
    dst = tmp_path / "add_header"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("build", "*.so", "*.o"))
    return dst


def include_flags(tokens):
    """Directories named by -I/-isystem/-iquote/-idirafter in TOKENS."""
    dirs = []
    for i, t in enumerate(tokens):
        for flag in ("-isystem", "-iquote", "-idirafter", "-I"):
            if t == flag and i + 1 < len(tokens):
                dirs.append(tokens[i + 1])
                break
            if t.startswith(flag) and len(t) > len(flag):
                dirs.append(t[len(flag):])
                break
    return dirs


def check_build_log(log, prefix):
    """The compile command puts only PREFIX on the include path, and the
    -H header trace shows every SDK header read from PREFIX and nothing
    read from the heliosd source tree (core/ above all)."""
    core = SOURCE_DIR / "core"
    commands = []
    for ln in log.splitlines():
        if ln.startswith("."):  # -H trace
            continue
        try:
            toks = shlex.split(ln)
        except ValueError:
            continue
        if "-o" in toks and any(t.endswith("/add_header.c") or t == "add_header.c" for t in toks):
            commands.append(toks)
    assert commands, f"no compile command for add_header.c in the build log:\n{log[-4000:]}"
    for toks in commands:
        cmd = " ".join(toks)
        for d in include_flags(toks):
            assert not under(d, core), f"core/ on the include path: {d!r} in\n{cmd}"
            assert not under(d, SOURCE_DIR), f"heliosd source tree on the include path: {d!r} in\n{cmd}"
            assert under(d, prefix), f"include path outside the SDK prefix {prefix}: {d!r} in\n{cmd}"

    headers = [m.group(1) for m in re.finditer(r"^\.+ (\S.*)$", log, re.M)]
    assert headers, f"no -H header trace in the build log:\n{log[-4000:]}"
    from_tree = sorted({h for h in headers if under(h, SOURCE_DIR)})
    assert not from_tree, f"headers read from the heliosd source tree: {from_tree}"
    sdk_headers = {h for h in headers if re.search(r"/helios(\.h|/[^/]+\.h)$", h)}
    assert any(h.endswith("/helios.h") for h in sdk_headers), f"no helios.h in -H trace: {sorted(set(headers))}"
    outside = sorted(h for h in sdk_headers if not under(h, prefix / "include"))
    assert not outside, f"SDK headers read from outside {prefix}/include: {outside}"


def check_exports(so):
    """Hidden visibility: the entry point is the only exported function."""
    if shutil.which("nm") is None:
        return
    out = run(["nm", "-D", "--defined-only", so], what="nm")
    funcs = {ln.split()[-1] for ln in out.splitlines() if re.match(r"^\S+\s+[TW]\s", ln)}
    assert funcs == {"helios_module_init"}, f"{so} exports {sorted(funcs)}"


def build_with_make(tmp_path, prefix, sanitize):
    need_tool("make")
    need_tool("pkg-config")
    src = copy_example(tmp_path)
    env = clean_env(PKG_CONFIG_PATH=str(pc_dir(prefix)))
    log = run(["make", f"CFLAGS={module_cflags(sanitize)} -H"], cwd=src, env=env, what="make")
    check_build_log(log, prefix)
    return src / "add_header.so"


def build_with_cmake(tmp_path, prefix, sanitize):
    need_tool("cmake")
    src = copy_example(tmp_path)
    bdir = tmp_path / "cmake-build"
    flags = f"{SAN_FLAGS} -H" if sanitize else "-H"
    run(
        [
            "cmake", "-S", src, "-B", bdir,
            f"-DCMAKE_PREFIX_PATH={prefix}",
            f"-DCMAKE_C_FLAGS={flags}",
            "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF",
        ],
        what="cmake configure",
    )
    cache = (bdir / "CMakeCache.txt").read_text()
    m = re.search(r"^HeliosPlugin_DIR:PATH=(.*)$", cache, re.M)
    assert m and under(m.group(1), prefix), f"HeliosPlugin found outside {prefix}: {m and m.group(1)}"
    log = run(["cmake", "--build", bdir, "--verbose"], what="cmake --build")
    check_build_log(log, prefix)
    found = sorted(bdir.rglob("add_header.so"))
    assert found, f"no add_header.so under {bdir}:\n{log[-3000:]}"
    return found[0]


def module_dir_with(tmp_path, so):
    """A module directory holding SO plus links to heliosd's own modules
    (static_response for the route)."""
    d = tmp_path / "modules"
    d.mkdir()
    shutil.copy2(so, d / "add_header.so")
    for m in MODULE_DIR.glob("*.so"):
        (d / m.name).symlink_to(m.resolve())
    return d


def check_loads_and_serves(heliosd, moddir):
    port = free_port()
    cfg = make_config(
        port,
        [
            # The handler sets the same header: add_header must replace it.
            static_route("origin", "from origin\n", match={"prefix": "/origin"},
                         headers={"X-Served-By": "origin"}),
            static_route("root", "hello\n"),
        ],
        modules=[ADD_HEADER],
    )
    # The fixture passes -m HELIOS_MODULE_DIR first; the last -m wins.
    h = heliosd(cfg, extra_args=("-m", str(moddir)))
    assert re.search(r"loaded module add_header 1\.0\.0 \(ABI \d+\.\d+\) from " + re.escape(str(moddir)),
                     h.stderr()), h.stderr()

    def get(path):
        r = curl("-i", h.url(path), timeout=20)
        assert r.returncode == 0, r.stderr
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        return lines[0], [ln.split(":", 1)[1].strip() for ln in lines[1:]
                          if ln.lower().startswith("x-served-by:")], body

    status, served_by, body = get("/")
    assert " 200 " in f"{status} ", status
    assert served_by == ["edge-1"], served_by
    assert body == b"hello\n"

    status, served_by, body = get("/origin")
    assert " 200 " in f"{status} ", status
    assert served_by == ["edge-1"], f"header not replaced: {served_by}"
    assert body == b"from origin\n"

    status, _, body = get("/_ping")
    assert " 200 " in f"{status} ", status
    assert body == b"pong\n", body


def check_config_refused(tmp_path, moddir):
    """heliosd -t on a config naming add_header: (returncode, stderr)."""
    text = (
        f"listeners:\n  - address: 127.0.0.1:{free_port()}\n"
        "modules:\n"
        "  - module: add_header\n"
        "    config: {name: X-Served-By, value: edge-1}\n"
        "routes:\n"
        "  - handler: static_response\n"
    )
    cfg = write_config_file(tmp_path, text, "refused.yaml")
    return run_config_check(cfg, module_dir=moddir, env=clean_env(), timeout=STEP_TIMEOUT), cfg


@pytest.fixture(autouse=True)
def _need_heliosd():
    if not HELIOSD.exists():
        pytest.fail(f"heliosd not built: {HELIOSD}")


# --------------------------------------------------------------------------
# the install tree


def test_sdk_install_holds_public_headers_and_build_files_only(sdk):
    src_inc = SOURCE_DIR / "plugins-sdk" / "include"
    assert (sdk / "include" / "helios.h").read_bytes() == (src_inc / "helios.h").read_bytes()
    public = sorted(p.name for p in (src_inc / "helios").glob("*.h"))
    installed = sorted(p.name for p in (sdk / "include" / "helios").glob("*.h"))
    assert installed and installed == public, f"installed {installed}, SDK has {public}"
    for name in public:
        assert (sdk / "include" / "helios" / name).read_bytes() == (src_inc / "helios" / name).read_bytes()
    # and every header-only helper (helios/util/*.h), byte for byte
    for src in (src_inc / "helios" / "util").glob("*.h"):
        inst = sdk / "include" / "helios" / "util" / src.name
        assert inst.is_file() and inst.read_bytes() == src.read_bytes(), f"{src.name} not installed"

    pc = pc_dir(sdk) / "helios-plugin.pc"
    major, minor = re.search(
        r"HELIOS_ABI_MAJOR (\d+).*HELIOS_ABI_MINOR (\d+)",
        (src_inc / "helios" / "types.h").read_text(), re.S).groups()
    assert f"plugin ABI {major}.{minor}" in pc.read_text(), pc.read_text()

    cmake_dirs = sorted(sdk.glob("lib*/cmake/HeliosPlugin"))
    assert len(cmake_dirs) == 1, cmake_dirs
    cmake_files = {p.name for p in cmake_dirs[0].glob("*.cmake")}
    for need in ("HeliosPluginConfig.cmake", "HeliosPluginConfigVersion.cmake", "HeliosModule.cmake"):
        assert need in cmake_files, f"{need} missing from {cmake_dirs[0]}: {sorted(cmake_files)}"

    # Nothing of the core: no core header under any name, no header outside
    # include/helios{.h,/}, and no path back into the source or build tree.
    core_headers = {p.name for p in (SOURCE_DIR / "core").glob("*.h")}
    allowed = {Path("include/helios.h")} | {Path("include/helios") / n for n in public}
    # header-only helpers (not ABI) ship under helios/util/
    allowed |= {Path("include") / p.relative_to(src_inc)
                for p in (src_inc / "helios" / "util").glob("*.h")}
    for f in sdk.rglob("*"):
        if not f.is_file():
            continue
        rel = f.relative_to(sdk)
        assert f.name not in core_headers or rel in allowed, f"core header installed: {rel}"
        if f.suffix in (".h", ".hpp", ".hh"):
            assert rel in allowed, f"non-public header installed: {rel}"
        if f.suffix in (".pc", ".cmake"):
            text = f.read_text()
            for tree in (SOURCE_DIR, BUILD_DIR):
                assert str(tree.resolve()) not in text, f"{rel} refers to {tree}:\n{text}"


def test_pkg_config_points_only_into_the_install_prefix(sdk):
    need_tool("pkg-config")
    env = clean_env(PKG_CONFIG_PATH=str(pc_dir(sdk)))
    cflags = run(["pkg-config", "--cflags", "helios-plugin"], env=env).split()
    incs = [t[2:] for t in cflags if t.startswith("-I")]
    assert incs, f"no -I in {cflags}"
    for d in incs:
        assert under(d, sdk / "include"), f"pkg-config --cflags points outside {sdk}: {d}"
    others = [t for t in cflags if t.startswith("-") and not t.startswith("-I")]
    assert all(not t.startswith(("-isystem", "-idirafter", "-iquote")) for t in others), cflags
    assert "-fPIC" in cflags and "-fvisibility=hidden" in cflags, cflags


# --------------------------------------------------------------------------
# building the example and loading it


def test_example_built_with_make_and_pkg_config_loads_and_serves(sdk, tmp_path, heliosd):
    so = build_with_make(tmp_path, sdk, sanitizer_heliosd())
    check_exports(so)
    check_loads_and_serves(heliosd, module_dir_with(tmp_path, so))


def test_example_built_with_cmake_find_package_loads_and_serves(sdk, tmp_path, heliosd):
    so = build_with_cmake(tmp_path, sdk, sanitizer_heliosd())
    check_exports(so)
    check_loads_and_serves(heliosd, module_dir_with(tmp_path, so))


# --------------------------------------------------------------------------
# a module built with other sanitizer flags than heliosd


@pytest.mark.skipif(not sanitizer_heliosd(), reason="heliosd is not a sanitizer build")
def test_plain_module_is_refused_by_sanitizer_heliosd(sdk, tmp_path):
    so = build_with_make(tmp_path, sdk, sanitize=False)
    moddir = module_dir_with(tmp_path, so)
    p, cfg = check_config_refused(tmp_path, moddir)
    assert p.returncode == 1, f"exit {p.returncode}; stderr:\n{p.stderr}"
    expect = (
        f"{cfg}:4:13: modules[0].module: {moddir}/add_header.so: build signature "
        "'lp64-openssl3-nosan' does not match heliosd's 'lp64-openssl3-asan'"
    )
    assert expect in p.stderr, p.stderr


@pytest.mark.skipif(sanitizer_heliosd(), reason="heliosd is a sanitizer build")
def test_sanitizer_module_is_refused_by_plain_heliosd(sdk, tmp_path):
    """ASan code cannot run in a process without the ASan runtime (libasan
    would abort the process inside dlopen), so the loader reads the module's
    DT_NEEDED first and refuses it with a message naming the file."""
    so = build_with_make(tmp_path, sdk, sanitize=True)
    moddir = module_dir_with(tmp_path, so)
    p, cfg = check_config_refused(tmp_path, moddir)
    path = f"{moddir}/add_header.so"
    assert p.returncode == 1, f"exit {p.returncode}; stderr:\n{p.stderr}"
    located = f"{cfg}:4:13: modules[0].module: {path}: "
    assert located in p.stderr, p.stderr
    assert (
        f"{located}built with a sanitizer runtime (libasan.so" in p.stderr
        and "this heliosd is not (build signature 'lp64-openssl3-nosan')" in p.stderr
    ), p.stderr
