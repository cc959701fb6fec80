"""`heliosd -t` on broken and valid configurations.

Every broken configuration under tests/configs/bad/ (one file each) and
tests/configs/bad-merge/ (one directory of fragments each) starts with one or
more lines

    # expect: FILE:LINE:COL: key.path: ... message fragment

Each one must match a line of stderr: the parts separated by " ... " must
appear on that line in that order, so both the location prefix and the
message are checked. Files under tests/configs/good/ (and directories there,
which are merged) must validate. heliosd runs from the repository root.
"""

import re

import pytest

from conftest import SANITIZER_MARKERS, SOURCE_DIR

CONFIGS = SOURCE_DIR / "tests" / "configs"
EXPECT_RE = re.compile(r"^#\s*expect:\s*(.+?)\s*$")


def _yaml_files(path):
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    return [path]


def _cases(*dirs):
    """One case per *.yaml file or per directory of fragments, sorted by name."""
    out = []
    for d in dirs:
        base = CONFIGS / d
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir() or p.suffix in (".yaml", ".yml"):
                out.append(pytest.param(p, id=f"{d}/{p.name}"))
    return out


def _expectations(path):
    """The `# expect:` lines of the leading comment block of each file."""
    found = []
    for f in _yaml_files(path):
        for line in f.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            m = EXPECT_RE.match(line)
            if m:
                found.append(m.group(1))
    return found


def _line_matches(line, expectation):
    pos = 0
    for part in expectation.split(" ... "):
        i = line.find(part, pos)
        if i < 0:
            return False
        pos = i + len(part)
    return True


def _assert_no_sanitizer_report(proc):
    for marker in SANITIZER_MARKERS:
        assert marker not in proc.stderr, f"sanitizer report in stderr:\n{proc.stderr}"


@pytest.mark.parametrize("path", _cases("bad", "bad-merge"))
def test_broken_config_is_rejected_with_located_errors(path, check_config):
    expectations = _expectations(path)
    assert expectations, f"{path}: no '# expect:' line in the leading comment"

    proc = check_config(path, cwd=SOURCE_DIR)

    _assert_no_sanitizer_report(proc)
    assert proc.returncode == 1, (
        f"exit code {proc.returncode}, expected 1\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "configuration OK" not in proc.stdout
    lines = proc.stderr.splitlines()
    for e in expectations:
        assert any(_line_matches(l, e) for l in lines), (
            f"no stderr line matches {e!r}\nstderr:\n{proc.stderr}"
        )


@pytest.mark.parametrize("path", _cases("good"))
def test_valid_config_passes(path, check_config):
    proc = check_config(path, cwd=SOURCE_DIR)

    _assert_no_sanitizer_report(proc)
    assert proc.returncode == 0, (
        f"exit code {proc.returncode}, expected 0\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "configuration OK" in proc.stdout + proc.stderr
