"""The processes a test drives: hx_backend (Backend) and heliosd (Heliosd)."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers.clients import http_request
from helpers.config import to_yaml, with_test_io
from helpers.env import (
    HELIOSD,
    HX_BACKEND,
    MODULE_DIR,
    SANITIZER_MARKERS,
    START_TIMEOUT,
    STARTED_RX,
    STOP_TIMEOUT,
)
from helpers.ports import free_port, port_accepts
from helpers.wait import wait_for


class Backend:
    """One hx_backend process on 127.0.0.1."""

    def __init__(self, name, workdir, port=None, host="127.0.0.1"):
        self.name = name
        self.host = host
        self.port = port or free_port(host)
        self.workdir = Path(workdir)
        self.proc = None
        self.stdout_lines = []
        self.errfile = self.workdir / f"backend-{name}.stderr"
        self._reader = None

    @property
    def address(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self):
        if not HX_BACKEND.exists():
            pytest.fail(f"test backend not built: {HX_BACKEND}")
        err = open(self.errfile, "ab")
        self.proc = subprocess.Popen(
            [str(HX_BACKEND), "--listen", self.address, "--name", self.name],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        err.close()
        ready = threading.Event()
        saw_ready = []
        lines = self.stdout_lines
        proc = self.proc

        def reader():
            # Keeps draining stdout so the backend never blocks on a full pipe.
            for line in proc.stdout:
                lines.append(line.decode("utf-8", "replace").rstrip("\n"))
                if "ready" in lines[-1]:
                    saw_ready.append(True)
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=reader, daemon=True)
        self._reader.start()
        if not ready.wait(START_TIMEOUT) or not saw_ready or proc.poll() is not None:
            self.kill()
            raise AssertionError(
                f"backend {self.name} did not print 'ready' on {self.address}: "
                f"stdout={self.stdout_lines!r} stderr={self.errfile.read_text(errors='replace')[-2000:]!r}"
            )
        wait_for(lambda: port_accepts(self.port, self.host), START_TIMEOUT, what=f"backend {self.name} to accept")
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()

    def restart(self):
        """Kills the process (its connections die with it) and starts a new
        one on the same port."""
        self.kill()
        # The port may take a moment to be bindable again; retry a few times.
        last = None
        for _ in range(20):
            try:
                return self.start()
            except AssertionError as e:
                last = e
                time.sleep(0.2)
        raise last

    def stats(self):
        status, _, body = http_request(self.port, "/stats", host=self.host)
        assert status == 200, f"backend /stats answered {status}"
        return json.loads(body)

    def reset_stats(self):
        http_request(self.port, "/stats/reset", host=self.host)


class Heliosd:
    """One heliosd process. stdout (access log) and stderr (error log) go to
    files under the test's tmp_path."""

    def __init__(self, workdir, config, port=None, name="heliosd"):
        self.dir = Path(workdir) / name
        self.confdir = self.dir / "conf.d"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.conffile = self.confdir / "heliosd.yaml"
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        self.state_dir = self.dir / "state"
        self.proc = None
        self.rc = None
        self.expected_rc = 0  # what teardown accepts
        self.port = port
        self.write_config(config)

    # config --------------------------------------------------------------

    def write_config(self, config):
        text = config if isinstance(config, str) else to_yaml(with_test_io(config))
        if self.port is None and not isinstance(config, str):
            addr = config["listeners"][0]["address"]
            self.port = int(addr.rsplit(":", 1)[1])
        tmp = self.conffile.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.conffile)  # atomic: a reload never sees half a file
        self.config_text = text

    # process -------------------------------------------------------------

    @property
    def pid(self):
        return self.proc.pid

    def start(self, wait=True, extra_args=()):
        if not HELIOSD.exists():
            pytest.fail(f"heliosd not built: {HELIOSD}")
        self._start_mark = self.err_mark()
        out = open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        # persisted admin changes (state_file's default follows systemd's
        # $STATE_DIRECTORY): one directory per instance, kept across restarts
        self.state_dir.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [str(HELIOSD), "-c", str(self.confdir), "-m", str(MODULE_DIR), *extra_args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "STATE_DIRECTORY": str(self.state_dir)},
        )
        out.close()
        err.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, port=None, host="127.0.0.1"):
        port = port or self.port
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"heliosd exited with {self.proc.returncode} during start-up; stderr:\n{self.stderr()[-4000:]}"
                )
            if port_accepts(port, host, timeout=1.0):
                self._wait_started()
                self._require_test_io()
                return
            time.sleep(0.05)
        raise AssertionError(f"heliosd did not accept on {host}:{port} within {START_TIMEOUT}s; stderr:\n{self.stderr()[-4000:]}")

    def _wait_started(self, grace=3.0):
        """Listeners accept a little before the main thread handles
        signals; the "started" log line (level info) marks the end of the
        start-up. Without that line (quieter log level), wait GRACE s."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if STARTED_RX.search(self.stderr()[self._start_mark :]) or self.proc.poll() is not None:
                return
            time.sleep(0.02)

    def _require_test_io(self):
        """In the integration.uring.* variants (HELIOS_TEST_IO=uring) the
        test is about the ring: where this kernel refuses one, heliosd falls
        back to epoll (D75), and the test is reported as skipped with the
        reason (ctest shows the entry as skipped), never as passed on epoll."""
        if os.environ.get("HELIOS_TEST_IO") != "uring":
            return
        m = re.search(r"io: uring: cannot [^\n]*", self.stderr())
        if m:
            pytest.skip(f"io_uring unavailable here: {m.group(0)}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        assert self.alive(), f"heliosd is not running (rc={self.proc.returncode}); stderr:\n{self.stderr()[-3000:]}"
        self.proc.send_signal(sig)

    def reload(self, config=None):
        """Writes CONFIG (if given) and sends SIGHUP. Callers poll for the
        effect: a reload is asynchronous."""
        if config is not None:
            self.write_config(config)
        self.signal(signal.SIGHUP)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.rc

    def stop(self, sig=None, timeout=STOP_TIMEOUT):
        """Sends SIG (SIGTERM) and waits; returns the exit code. Kills and
        fails when the process does not exit within TIMEOUT."""
        sig = sig if sig is not None else signal.SIGTERM
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.rc = "killed"
            raise AssertionError(f"heliosd did not exit within {timeout}s of signal {sig}")
        return rc

    # logs ----------------------------------------------------------------

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def err_mark(self):
        return len(self.stderr())

    def wait_stderr(self, pattern, since=0, timeout=10.0, flags=re.I):
        """Polls the error log until PATTERN (regex) appears after offset
        SINCE; returns the match."""
        rx = re.compile(pattern, flags)
        return wait_for(
            lambda: rx.search(self.stderr()[since:]),
            timeout,
            what=f"error log to match {pattern!r} (log tail: {self.stderr()[-1500:]!r})",
        )

    def check_sane(self):
        """Teardown checks: no crash, no sanitizer report."""
        problems = []
        text = self.stderr()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                i = text.index(marker)
                problems.append(f"stderr contains {marker!r}:\n{text[max(0, i - 500): i + 3000]}")
        if self.rc not in (None, "killed") and self.expected_rc is not None and self.rc != self.expected_rc:
            problems.append(f"heliosd exited with {self.rc} (expected {self.expected_rc}); stderr tail:\n{text[-3000:]}")
        return problems

    # client shortcuts ----------------------------------------------------

    def get(self, path, **kw):
        return http_request(self.port, path, **kw)

    def url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"
