"""The pytest fixtures every test file can use (registered by conftest.py)."""

import itertools
import os
from pathlib import Path

import pytest

from helpers.config import run_config_check, write_config_file
from helpers.env import is_sanitizer_build
from helpers.processes import Backend, Heliosd


@pytest.fixture
def backends(tmp_path):
    """Factory: backends("a", "b") starts and returns Backend objects; all are
    stopped at teardown."""
    started = []

    def make(*names):
        out = []
        for name in names:
            b = Backend(name, tmp_path)
            started.append(b)
            out.append(b.start())
        return out[0] if len(out) == 1 else out

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def backend(backends):
    return backends("a")


@pytest.fixture
def heliosd(tmp_path):
    """Factory: heliosd(config) writes CONFIG (dict or YAML text; give port=
    with text) and starts heliosd, waiting until the listener accepts.
    Teardown stops every instance with SIGTERM and fails on a crash, a
    non-zero exit or a sanitizer report."""
    instances = []

    def make(config, port=None, start=True, name=None, extra_args=()):
        h = Heliosd(tmp_path, config, port=port, name=name or f"heliosd{len(instances)}")
        instances.append(h)
        if start:
            h.start(extra_args=extra_args)
        return h

    yield make
    problems = []
    for h in instances:
        if h.proc is None:
            continue
        if h.proc.poll() is None:
            try:
                h.stop()
            except AssertionError as e:
                problems.append(str(e))
        elif h.rc is None:
            h.rc = h.proc.returncode
        if isinstance(h.rc, int) and h.rc < 0 and h.expected_rc is not None:
            problems.append(f"heliosd died from signal {-h.rc}")
        problems += h.check_sane()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def check_config(tmp_path):
    """Factory: `rc, out, err = check_config(config)` runs `heliosd -t` on
    CONFIG and returns a ConfigCheck (which also has .path and .output).
    CONFIG is a dict or YAML text, written as NAME (heliosd.yaml) in a new
    directory under tmp_path, or the Path of an existing file or directory,
    checked where it is. Keywords go to run_config_check: module_dir, env,
    timeout, cwd."""
    counter = itertools.count()

    def check(config, name="heliosd.yaml", **kw):
        if isinstance(config, Path):
            path = config
        else:
            path = write_config_file(tmp_path / f"check{next(counter)}", config, name)
        return run_config_check(path, **kw)

    return check


@pytest.fixture
def small_quarantine(monkeypatch):
    """Under ASan, freed memory waits in a 256 MiB quarantine before it is
    reused, and RSS counts it: a transfer that copies each byte a few times
    would pass any bound there. A 4 MiB quarantine keeps the RSS bound a
    measure of heliosd's own buffering (heliosd inherits the environment)."""
    if is_sanitizer_build():
        cur = os.environ.get("ASAN_OPTIONS", "")
        monkeypatch.setenv("ASAN_OPTIONS", (cur + ":" if cur else "") + "quarantine_size_mb=4")
