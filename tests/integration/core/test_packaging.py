"""Packaging: the dependency step every README command starts with."""

import subprocess
import time

from conftest import SOURCE_DIR


def test_install_deps_returns_at_once_when_every_package_is_there():
    """packaging/test.sh and demo.sh run install-deps.sh first; on a machine
    that has everything (CI, after the first run) it must not reach apt-get."""
    t0 = time.monotonic()
    p = subprocess.run(["sh", str(SOURCE_DIR / "packaging/install-deps.sh")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    took = time.monotonic() - t0
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out
    assert out == "install-deps.sh: every dependency is installed\n", out
    assert took < 5, f"install-deps.sh took {took:.1f} s with nothing to install"
