"""`cmake --install` into any prefix gives a tree that works as it is: the
installed heliosd finds its modules and its configuration under that prefix
(both compiled in relative to the binary), reports them with -V, and
`heliosd -t` passes on the installed configuration; the pkg-config file and
the CMake package name the same module directory."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import SOURCE_DIR

BUILD_DIR = Path(os.environ.get("HELIOS_BUILD_DIR") or SOURCE_DIR / "build")


def run(cmd, env=None, cwd=None):
    p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60, env=env, cwd=cwd)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}: exit {p.returncode}\n{p.stdout[-4000:]}"
    return p.stdout


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    if not (BUILD_DIR / "CMakeCache.txt").exists():
        pytest.fail(f"no configured build tree at {BUILD_DIR}")
    p = tmp_path_factory.mktemp("prefix")
    run(["cmake", "--install", BUILD_DIR, "--prefix", p])
    return p


def module_dir(prefix):
    found = sorted(prefix.glob("lib*/helios/modules"))
    assert len(found) == 1, found
    return found[0]


def test_install_puts_everything_under_the_prefix(prefix):
    mods = module_dir(prefix)
    shipped = sorted(d.name for d in (SOURCE_DIR / "modules").iterdir()
                     if (d / "CMakeLists.txt").exists())
    assert sorted(m.stem for m in mods.glob("*.so")) == shipped
    conf = prefix / "etc/helios"
    assert sorted(f.name for f in conf.glob("*.yaml")) == sorted(
        f.name for f in (SOURCE_DIR / "conf.d").glob("*.yaml"))
    assert (conf / "scripts/hello.js").read_bytes() == (
        SOURCE_DIR / "conf.d/scripts/hello.js").read_bytes()
    assert not (conf / "admin.secret").exists(), "a secret must never be installed"
    token = prefix / "share/helios/admin-token.sh"
    assert token.stat().st_mode & stat.S_IXUSR, token


def test_installed_heliosd_reports_and_uses_its_prefix(prefix):
    heliosd = prefix / "sbin/heliosd"
    out = run([heliosd, "-V"])
    assert f"module directory {module_dir(prefix).resolve()}\n" in out, out
    assert f"configuration {(prefix / 'etc/helios').resolve()}\n" in out, out

    # The shipped admin API needs its secret, which the package's postinst
    # (or demo.sh) makes; then -t passes with no -c and no -m at all.
    secret = prefix / "etc/helios/admin.secret"
    secret.write_text("00112233445566778899aabbccddeeff\n")
    secret.chmod(0o600)
    try:
        out = run([heliosd, "-t"])
    finally:
        secret.unlink()
    # The default state directory (/var/lib/helios) may be missing here:
    # -t then warns about it (D72) before the verdict, and nothing else.
    lines = out.splitlines()
    ok = [i for i, l in enumerate(lines)
          if l.startswith(f"configuration OK: {(prefix / 'etc/helios').resolve()}")]
    assert ok, out
    assert all("state_file" in l for l in lines[:ok[0]]), out


def test_pkg_config_and_cmake_package_name_the_module_directory(prefix, tmp_path):
    want = str(module_dir(prefix).resolve())
    pcdir = module_dir(prefix).parent.parent / "pkgconfig"
    env = dict(os.environ, PKG_CONFIG_PATH=str(pcdir))
    env.pop("PKG_CONFIG_LIBDIR", None)
    got = run(["pkg-config", "--variable=moduledir", "helios-plugin"], env=env).strip()
    assert os.path.realpath(got) == want, got

    proj = tmp_path / "probe"
    proj.mkdir()
    (proj / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(probe C)\n"
        "find_package(HeliosPlugin REQUIRED)\n"
        'message(STATUS "HELIOS_MODULE_DIR=${HELIOS_MODULE_DIR}")\n')
    out = run(["cmake", "-S", proj, "-B", proj / "b", f"-DCMAKE_PREFIX_PATH={prefix}"])
    line = [ln for ln in out.splitlines() if "HELIOS_MODULE_DIR=" in ln]
    assert line and os.path.realpath(line[0].split("=", 1)[1]) == want, out
    shutil.rmtree(proj / "b")
