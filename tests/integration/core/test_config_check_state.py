"""`heliosd -t` and the state file (state_file:, D72): it reads the file a
start would read and applies it to the checked configuration, touching
nothing on disk. A file heliosd could not start with (malformed, not
readable) fails the check (exit 1); admin changes the configuration makes
impossible and a directory heliosd cannot write are warnings (exit 0: heliosd
starts, as it would). Each message names the file and says what happens."""

import json
import os

from conftest import free_port, make_config, proxy_route, upstream_conf


def cfg_with(state_file=None):
    top = {"state_file": str(state_file)} if state_file is not None else {}
    ups = {"app": upstream_conf({"name": "a", "address": "127.0.0.1:9001"},
                                {"name": "b", "address": "127.0.0.1:9002"})}
    return make_config(free_port(), [proxy_route("app", "app")], ups, **top)


def snapshot(d):
    """Names, sizes, contents and mtimes under D: what -t must not change."""
    out = {}
    for root, dirs, files in os.walk(d):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            body = open(p, "rb").read() if os.path.isfile(p) else None
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns, body)
    return out


def test_no_state_file_yet_is_fine(check_config, tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    r = check_config(cfg_with(), env={**os.environ, "STATE_DIRECTORY": str(d)})
    assert r.returncode == 0, r.output
    assert r.stdout.startswith("configuration OK")
    assert f"state file: {d}/state.json (0 admin changes to re-apply)" in r.stdout
    assert "warning" not in r.stderr, r.stderr
    assert not list(d.iterdir())  # nothing created


def test_changes_that_apply_are_counted(check_config, tmp_path):
    f = tmp_path / "st" / "state.json"
    f.parent.mkdir()
    f.write_text(json.dumps({"version": 1, "upstreams": {"app": {
        "strategy": "maglev",
        "backends": {"a": {"change": "set", "weight": 5},
                     "c": {"change": "add", "address": "127.0.0.1:9003", "weight": 1,
                           "drain": False}}}}}))
    before = snapshot(tmp_path / "st")
    r = check_config(cfg_with(f))
    assert r.returncode == 0, r.output
    assert f"state file: {f} (3 admin changes to re-apply)" in r.stdout
    assert "warning" not in r.stderr and "not applied" not in r.stderr, r.stderr
    assert snapshot(tmp_path / "st") == before


def test_malformed_state_file_fails_the_check(check_config, tmp_path):
    f = tmp_path / "st" / "state.json"
    f.parent.mkdir()
    f.write_text('{"version": 1, "upstreams": {"app": {"bogus": 1}}}')
    before = snapshot(tmp_path / "st")
    r = check_config(cfg_with(f))
    assert r.returncode == 1, r.output
    assert "configuration OK" not in r.stdout
    assert str(f) in r.stderr and "bogus" in r.stderr, r.stderr
    assert "fix or remove the state file" in r.stderr and "heliosd would not start" in r.stderr
    assert snapshot(tmp_path / "st") == before

    f.write_text('{"version": 1,')  # torn
    r = check_config(cfg_with(f))
    assert r.returncode == 1 and "YAML syntax error" in r.stderr, r.output
    f.write_text('{"version": 2, "upstreams": {}}')  # a format this heliosd does not know
    r = check_config(cfg_with(f))
    assert r.returncode == 1 and "version" in r.stderr, r.output


def test_unreadable_state_file_fails_the_check(check_config, tmp_path):
    # a directory where the file should be: read() fails as it would at start
    # (a file without read permission cannot be made unreadable to root,
    # which runs these tests in CI)
    f = tmp_path / "st" / "state.json"
    f.mkdir(parents=True)
    r = check_config(cfg_with(f))
    assert r.returncode == 1, r.output
    assert f"state file {f}: Is a directory" in r.stderr and "would not start" in r.stderr
    if os.geteuid() != 0:
        g = tmp_path / "st2" / "state.json"
        g.parent.mkdir()
        g.write_text("{}")
        g.chmod(0)
        r = check_config(cfg_with(g))
        assert r.returncode == 1 and "Permission denied" in r.stderr, r.output


def test_changes_for_upstreams_and_backends_gone_are_warnings(check_config, tmp_path):
    f = tmp_path / "st" / "state.json"
    f.parent.mkdir()
    f.write_text(json.dumps({"version": 1, "upstreams": {
        "app": {"backends": {
            "a": {"change": "set", "drain": True},          # applies
            "zz": {"change": "set", "weight": 3},           # no such backend any more
            "b": {"change": "add", "address": "127.0.0.1:9009", "weight": 1, "drain": False},
            "y": {"change": "remove"}}},                    # nothing to remove
        "gone": {"strategy": "maglev",
                 "backends": {"q": {"change": "add", "address": "127.0.0.1:1", "weight": 1,
                                    "drain": False}}}}}))
    before = snapshot(tmp_path / "st")
    r = check_config(cfg_with(f))
    assert r.returncode == 0, r.output
    assert r.stdout.startswith("configuration OK")
    err = r.stderr
    assert "backend 'zz' had its weight or drain set at runtime but the configuration no " \
           "longer defines it" in err, err
    assert "backend 'b' was added at runtime but the configuration now defines it" in err
    assert "backend 'y' was removed at runtime but the configuration no longer defines it" in err
    assert "the configuration no longer defines upstream 'gone'" in err
    assert f"warning: state_file: {f}: 5 of 6 admin changes would not apply" in err, err
    assert "heliosd starts, keeps them in the file" in err
    assert snapshot(tmp_path / "st") == before  # -t keeps them too: nothing rewritten


def test_state_directory_heliosd_cannot_write_is_a_warning(check_config, tmp_path):
    missing = tmp_path / "no-such-dir" / "state.json"
    r = check_config(cfg_with(missing))
    assert r.returncode == 0, r.output
    assert (f"warning: state_file: {missing}: cannot create files in {missing.parent}: "
            "No such file or directory") in r.stderr, r.stderr
    assert "admin changes will not survive a restart" in r.stderr
    assert not missing.parent.exists()

    # a file where the directory should be: a start fails to read the state
    # (ENOTDIR is not "no file yet"), so the check fails too
    afile = tmp_path / "plain"
    afile.write_text("x")
    r = check_config(cfg_with(afile / "state.json"))
    assert r.returncode == 1, r.output
    assert f"state file {afile}/state.json: Not a directory; heliosd would not start" in r.stderr

    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        r = check_config(cfg_with(ro / "state.json"))
        assert r.returncode == 0 and "Permission denied" in r.stderr, r.output


def test_state_file_off_is_reported(check_config):
    r = check_config({**cfg_with(), "state_file": "off"})
    assert r.returncode == 0, r.output
    assert "state file: off (admin changes last until heliosd stops)" in r.stdout
    assert "warning" not in r.stderr
