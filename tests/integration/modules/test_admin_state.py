"""admin_api + the core's state file: admin changes survive SIGHUP,
ctl_reload and restart; changes the new files make impossible are reported
and kept; DELETE /v1/state/... puts the files' values back; counters of
backends that persist carry over a reload; the seed product's three calls
(no upstream, http:// addresses, {"strategy": NAME}) work from curl.
"""

import json
import re

import pytest

from conftest import free_port, make_config, proxy_route, static_route, upstream_conf, wait_for
from test_admin_api import Admin, admin_module, assert_error, mint, proxied, write_secret


@pytest.fixture
def state_setup(tmp_path, heliosd, backends):
    """heliosd proxying to upstream app (a, b, c known, a and b in the file)."""

    def make(names=("a", "b"), extra_upstreams=None, admin_extra=None, top=None):
        bks = backends(*names)
        bks = bks if isinstance(bks, list) else [bks]
        port, aport = free_port(), free_port()
        secret = write_secret(tmp_path)

        def config(file_bks, ups_extra=None, **more):
            ups = {"app": upstream_conf(*file_bks)}
            ups.update(ups_extra or {})
            return make_config(port, [proxy_route("app", "app")], ups, workers=2,
                               modules=[admin_module(aport, secret, **(admin_extra or {}))],
                               **{**(top or {}), **more})

        h = heliosd(config(bks[:2], extra_upstreams))
        adm = Admin(aport, mint())
        wait_for(lambda: adm.get("/v1/health", token=None)[0] == 200, what="admin API up")
        return h, adm, bks, port, config

    return make


def running(adm, upstream="app"):
    st, _, body = adm.get("/v1/config")
    assert st == 200, body
    (up,) = [u for u in body["running"]["upstreams"] if u["name"] == upstream]
    return up, {b["name"]: b for b in up["backends"]}, body


def wait_generation(adm, gen):
    def ok():
        try:
            st, _, b = adm.get("/v1/health", token=None)
            return st == 200 and b["generation"] >= gen
        except AssertionError:
            return False

    wait_for(ok, what=f"generation {gen}")


def test_changes_survive_sighup_reload_and_restart(state_setup):
    h, adm, (a, b, c), port, config = state_setup(("a", "b", "c"))
    # the seed product's calls: no upstream, http:// address, {"strategy"}
    st, _, body = adm.post("/v1/backends/add", {"name": "c", "address": f"http://{c.address}",
                                                "weight": 3})
    assert st == 201 and body["upstream"] == "app" and body["backend"]["address"] == c.address
    assert adm.post("/v1/backends/app/b/drain")[0] == 200
    assert adm.call("PATCH", "/v1/backends/app/a", {"weight": 5})[0] == 200
    st, _, body = adm.post("/v1/strategy", {"strategy": "weighted_round_robin"})
    assert st == 200 and body == {"upstream": "app", "strategy": "weighted_round_robin"}

    def check(gen):
        up, bs, body = running(adm)
        assert body["generation"] == gen
        assert up["balancer"] == "weighted_round_robin" and up["balancer_source"] == "admin"
        assert set(bs) == {"a", "b", "c"}
        assert bs["c"]["source"] == "admin" and bs["c"]["weight"] == 3
        assert bs["a"]["source"] == "file" and bs["a"]["weight"] == 5
        assert bs["a"]["admin_changed"] == ["weight"]
        assert bs["b"]["draining"] is True and bs["b"]["admin_changed"] == ["drain"]
        st_ = body["state"]
        assert st_["persisted"] is True and st_["write_error"] is None
        assert st_["file"] == str(h.state_dir / "state.json")
        # traffic follows the running state: b drained, c serving
        seen = proxied(port, 16)
        assert seen[(200, "b")] == 0 and seen[(200, "c")] > 0 and seen[(200, "a")] > 0
        assert sum(n for (s, _), n in seen.items() if s != 200) == 0

    check(1)
    saved = json.loads((h.state_dir / "state.json").read_text())
    assert saved["upstreams"]["app"]["backends"]["c"] == {
        "change": "add", "address": c.address, "replaces": False, "weight": 3, "drain": False}
    assert not list(h.state_dir.glob("*.tmp")), "the temporary file must be renamed away"

    h.reload()
    wait_generation(adm, 2)
    check(2)
    # ctl_reload (POST /v1/reload) too
    st, _, body = adm.post("/v1/reload")
    assert st == 200, body
    wait_generation(adm, 3)
    check(3)
    # restart: the state file is read before the first request
    h.stop()
    h.start()
    wait_for(lambda: adm.get("/v1/health", token=None)[0] == 200, what="admin API up again")
    check(1)
    assert "re-applying 1 upstream" in h.stderr()


def test_removal_survives_and_delete_puts_the_file_back(state_setup):
    h, adm, (a, b), port, config = state_setup()
    st, _, body = adm.post("/v1/backends/remove", {"name": "b"})
    assert st == 200 and body["removed"]["name"] == "b"
    h.reload()
    wait_generation(adm, 2)
    up, bs, body = running(adm)
    assert set(bs) == {"a"}
    assert body["state"]["upstreams"]["app"]["backends"]["b"]["change"] == "remove"
    # DELETE the persisted removal: b is back at once, and after a reload
    st, _, body = adm.call("DELETE", "/v1/state/app/backends/b")
    assert st == 200 and body["state"]["upstreams"] == {}
    assert set(running(adm)[1]) == {"a", "b"}
    h.reload()
    wait_generation(adm, 3)
    assert set(running(adm)[1]) == {"a", "b"}
    seen = proxied(port, 8)
    assert seen[(200, "b")] > 0
    assert_error(adm.call("DELETE", "/v1/state/app/backends/b"), 404, "no persisted change")
    assert_error(adm.call("DELETE", "/v1/state/nope"), 404, "nope")


def test_delete_strategy_weight_and_all(state_setup):
    h, adm, (a, b), port, config = state_setup()
    assert adm.post("/v1/strategy", {"upstream": "app", "strategy": "least_connections"})[0] == 200
    assert adm.call("PATCH", "/v1/backends/app/b", {"weight": 7})[0] == 200
    st, _, s = adm.get("/v1/state")
    assert st == 200 and s["upstreams"]["app"]["strategy"] == "least_connections"
    st, _, body = adm.call("DELETE", "/v1/state/app/strategy")
    assert st == 200 and body["state"]["upstreams"]["app"]["strategy"] is None
    up, bs, _ = running(adm)
    assert up["balancer"] == "round_robin" and up["balancer_source"] == "file"
    assert bs["b"]["weight"] == 7
    assert adm.call("DELETE", "/v1/state")[0] == 200
    assert running(adm)[1]["b"]["weight"] == 1
    assert json.loads((h.state_dir / "state.json").read_text())["upstreams"] == {}
    # setting the file's own value back records nothing
    assert adm.call("PATCH", "/v1/backends/app/b", {"weight": 1})[0] == 200
    assert adm.get("/v1/state")[2]["upstreams"] == {}
    assert_error(adm.call("DELETE", "/v1/state"), 404)


def test_conflicts_are_reported_and_kept(state_setup):
    h, adm, (a, b, c), port, config = state_setup(("a", "b", "c"))
    assert adm.post("/v1/backends", {"upstream": "app", "name": "c", "address": c.address})[0] == 201
    assert adm.post("/v1/backends/app/a/drain")[0] == 200
    # the files now define c themselves and drop a
    mark = h.err_mark()
    h.reload(config([b, c]))
    wait_generation(adm, 2)
    h.wait_stderr(r"admin change not applied: backend 'c' was added at runtime but the "
                  r"configuration now defines it", since=mark)
    h.wait_stderr(r"admin change not applied: backend 'a' had its weight or drain set", since=mark)
    _, bs, body = running(adm)
    assert set(bs) == {"b", "c"} and bs["c"]["source"] == "file"
    entries = body["state"]["upstreams"]["app"]["backends"]
    assert "now defines it" in entries["c"]["conflict"]
    assert "no longer defines it" in entries["a"]["conflict"]
    # kept in the file; back in force once the files allow it again
    assert set(json.loads((h.state_dir / "state.json").read_text())["upstreams"]["app"]
               ["backends"]) == {"a", "c"}
    h.reload(config([a, b]))
    wait_generation(adm, 3)
    _, bs, body = running(adm)
    assert set(bs) == {"a", "b", "c"} and bs["c"]["source"] == "admin"
    assert bs["a"]["draining"] is True
    assert body["state"]["upstreams"]["app"]["backends"]["a"]["conflict"] is None


def test_upstream_gone_is_reported(state_setup, backends):
    h, adm, (a, b), port, config = state_setup()
    (x,) = [backends("x")]
    h.reload(config([a, b], {"other": upstream_conf(x)}))
    wait_generation(adm, 2)
    assert adm.post("/v1/strategy", {"upstream": "other", "strategy": "least_connections"})[0] == 200
    h.reload(config([a, b]))
    wait_generation(adm, 3)
    h.wait_stderr(r"no longer defines upstream 'other'")
    s = adm.get("/v1/state")[2]
    assert "no longer defines upstream" in s["upstreams"]["other"]["conflict"]
    assert s["upstreams"]["other"]["strategy"] == "least_connections"
    assert adm.call("DELETE", "/v1/state/other")[0] == 200
    assert adm.get("/v1/state")[2]["upstreams"] == {}


def test_counters_carry_over_a_reload(state_setup):
    h, adm, (a, b), port, config = state_setup()
    proxied(port, 10)
    _, bs, _ = running(adm)
    before = bs["a"]["requests"] + bs["b"]["requests"]
    assert before == 10
    h.reload()
    wait_generation(adm, 2)
    _, bs, _ = running(adm)
    assert bs["a"]["requests"] + bs["b"]["requests"] == 10
    # counting goes on from there
    proxied(port, 2)
    _, bs, _ = running(adm)
    assert bs["a"]["requests"] + bs["b"]["requests"] == 12


def test_seed_calls_need_an_upstream_when_several(state_setup, backends):
    x = backends("x")
    h, adm, (a, b), port, config = state_setup(extra_upstreams={"other": upstream_conf(x)})
    before = running(adm)[1]
    assert_error(adm.post("/v1/backends/add", {"name": "z", "address": "127.0.0.1:1"}), 400,
                 "'upstream' is required")
    assert_error(adm.post("/v1/backends/remove", {"name": "a"}), 400, "'upstream' is required")
    assert_error(adm.post("/v1/strategy", {"strategy": "maglev"}), 400, "'upstream' is required")
    for bad in ("https://127.0.0.1:9", "http://127.0.0.1:9/path", "http://u@127.0.0.1:9", "http://"):
        assert_error(adm.post("/v1/backends/add", {"upstream": "app", "name": "z", "address": bad}),
                     400, "address")
    assert set(running(adm)[1]) == set(before)
    assert adm.get("/v1/state")[2]["upstreams"] == {}


def test_default_upstream(state_setup, backends):
    x = backends("x")
    h, adm, (a, b), port, config = state_setup(extra_upstreams={"other": upstream_conf(x)},
                                               admin_extra={"default_upstream": "other"})
    st, _, body = adm.post("/v1/strategy", {"strategy": "least_connections"})
    assert st == 200 and body["upstream"] == "other"


def test_corrupt_state_file_refuses_to_start(state_setup):
    h, adm, _, _, _ = state_setup()
    h.stop()
    (h.state_dir / "state.json").write_text('{"version": 1, "upstreams": {"app": {"bogus": 1}}}')
    h.expected_rc = 1
    h.start(wait=False)
    assert h.wait_exit(20) == 1
    assert re.search(r"not starting: .*state\.json.*bogus.*fix or remove the state file",
                     h.stderr())


def test_state_file_off(state_setup):
    h, adm, (a, b), port, config = state_setup(top={"state_file": "off"})
    assert adm.post("/v1/backends/app/b/drain")[0] == 200
    s = adm.get("/v1/state")[2]
    assert s["file"] is None and s["persisted"] is False
    h.reload()
    wait_generation(adm, 2)
    assert running(adm)[1]["b"]["draining"] is True  # kept in memory across reloads
    assert not (h.state_dir / "state.json").exists()


def test_a_failed_write_is_reported_and_the_change_applies(state_setup, tmp_path):
    missing = tmp_path / "no-such-dir" / "state.json"
    h, adm, (a, b), port, config = state_setup(top={"state_file": str(missing)})
    st, _, body = adm.call("PATCH", "/v1/backends/app/a", {"weight": 3})
    assert st == 200 and body["backend"]["weight"] == 3
    s = adm.get("/v1/state")[2]
    assert s["persisted"] is False and "cannot create" in s["write_error"]
    assert s["upstreams"]["app"]["backends"]["a"]["weight"] == 3
    h.wait_stderr(r"state file: cannot create .*no-such-dir.*admin changes apply but do not "
                  r"survive a restart")
    # the directory appears: the next change writes everything
    missing.parent.mkdir()
    assert adm.post("/v1/backends/app/b/drain")[0] == 200
    s = adm.get("/v1/state")[2]
    assert s["persisted"] is True and s["write_error"] is None
    saved = json.loads(missing.read_text())["upstreams"]["app"]["backends"]
    assert saved["a"]["weight"] == 3 and saved["b"]["drain"] is True


def test_state_file_key_is_checked(check_config):
    cfg = make_config(free_port(), [static_route("r", "ok")], state_file="somewhere/")
    rc, out, err = check_config(cfg)
    assert rc == 1 and "state_file" in err and "got a directory" in err, err
    rc, out, err = check_config({**cfg, "state_file": "off"})
    assert rc == 0, err
