"""Packaging: the dependency step every README command starts with; the
systemd unit and the Debian package's configuration (packaging/deb-test.sh
builds, installs, runs and purges the packages themselves in CI)."""

import shutil
import subprocess
import time

import pytest

from conftest import HELIOSD, MODULE_DIR, SOURCE_DIR


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


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    """packaging/debian/heliosd.service, pointed at the binary under test
    (verify checks that ExecStart exists), has no error or warning."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd): the unit is NOT "
                    "verified here; packaging/deb-test.sh verifies the installed one")
    unit = (SOURCE_DIR / "packaging/debian/heliosd.service").read_text()
    assert "ExecStart=/usr/sbin/heliosd " in unit
    for key in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "User=helios",
                "AmbientCapabilities=CAP_NET_BIND_SERVICE", "LimitNOFILE=",
                "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                "RuntimeDirectory=helios", "LogsDirectory=helios"):
        assert f"\n{key}" in unit, key
    (tmp_path / "heliosd.service").write_text(unit.replace("/usr/sbin/heliosd", str(HELIOSD)))
    p = subprocess.run([tool, "verify", "--man=no", str(tmp_path / "heliosd.service")],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "", p.stdout


def test_package_configuration_is_valid(tmp_path):
    """The Debian package's /etc/helios: conf.d with packaging/debian's
    00-server.yaml (port 80, /var/log/helios, pid file, user helios); checked
    here with the user, paths and port made local."""
    conf = tmp_path / "helios"
    shutil.copytree(SOURCE_DIR / "conf.d", conf, ignore=shutil.ignore_patterns("admin.secret"))
    server = (SOURCE_DIR / "packaging/debian/00-server.yaml").read_text()
    for key in ('address: "*:80"', "user: helios", "pid_file: /run/helios/heliosd.pid",
                "error_log: /var/log/helios/error.log", "path: /var/log/helios/access.log"):
        assert key in server, key
    server = (server.replace("/var/log/helios", str(tmp_path)).replace("/run/helios", str(tmp_path))
              .replace("user: helios", "user: root").replace("group: helios", "group: root"))
    (conf / "00-server.yaml").write_text(server)
    (conf / "admin.secret").write_text("00112233445566778899aabbccddeeff")
    (conf / "admin.secret").chmod(0o600)
    p = subprocess.run([str(HELIOSD), "-t", "-c", str(conf), "-m", str(MODULE_DIR)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert p.returncode == 0, p.stdout
    assert "(1 listener, 4 routes, 1 upstream," in p.stdout, p.stdout
