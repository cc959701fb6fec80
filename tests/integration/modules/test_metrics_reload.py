"""Counters across configuration reloads (issue 17's follow-up, D71).

Every counter heliosd exports must carry on across a reload (SIGHUP, the
admin API's POST /v1/reload) for an identity that stays: same route, same
upstream and backend name, the process-wide ones. The check is generic:
two heliosd with the same configuration get the same traffic; one is
reloaded between the last scrape and the next one, the other is not; then
every counter and every histogram's _count and +Inf bucket of the first
must equal the second's (only helios_reloads_total differs, by the
reloads). Scrapes parse with prometheus_client. A last test reloads while
slow requests are in flight: no counter ever goes down, and once the
traffic is over the backend and route counters equal what the client saw
answered (what old generations counted after handing over is added when
they end).
"""

import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, http_request, make_config, proxy_route, static_route, wait_for
from test_admin_api import Admin, admin_module, mint, write_secret

# counters that move without traffic, or by the reload itself
MOVING = {"process_cpu_seconds_total", "helios_reloads_total"}


def scrape(mport):
    st, _, body = http_request(mport, "/metrics")
    assert st == 200, body
    counters, gen = {}, None
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            if s.name == "helios_config_generation":
                gen = s.value
            if fam.type == "counter" and s.name not in MOVING:
                counters[key] = s.value
            elif fam.type == "histogram" and (s.name.endswith("_count") or
                                              s.labels.get("le") == "+Inf"):
                counters[key] = s.value
    return counters, gen


def scrape_gen(mport, gen):
    """A scrape of generation GEN. The metrics listener keeps its socket
    across a reload (D76): a scrape is never refused, only maybe answered
    by the previous generation for an instant."""
    def ok():
        c, g = scrape(mport)
        return c if g == gen else None
    return wait_for(ok, 20, what=f"a scrape of generation {gen}")


def config(port, mport, aport, secret, slow, two, flaky, extra_routes=(), two_addr=None,
           breaker=True):
    modules = [
        {"module": "metrics", "config": {"listen": f"127.0.0.1:{mport}"}},
        admin_module(aport, secret),
    ]
    if breaker:
        modules.append({"module": "circuit_breaker",
                        "config": {"failures": 3, "statuses": [503], "open_timeout": "60s"}})
    return make_config(
        port,
        [
            proxy_route("one", "one", match={"prefix": "/slow"}),
            proxy_route("two", "two", match={"prefix": "/two"}),
            proxy_route("flaky", "flaky", match={"prefix": "/status/"}),
            dict(static_route("limited", "ok\n", match={"prefix": "/limited"}),
                 filters=[{"module": "rate_limit", "config": {"rate": 0.01, "burst": 2}}]),
            static_route("static", "s\n", match={"prefix": "/static"}),
            *extra_routes,
        ],
        {
            "one": {"balancer": "round_robin", "timeouts": {"read": "250ms"},
                    "backends": [{"name": "s", "address": slow.address}]},
            "two": {"balancer": "round_robin",
                    "backends": [{"name": "t", "address": two_addr or two.address}]},
            "flaky": {"balancer": "round_robin",
                      "backends": [{"name": "f", "address": flaky.address}]},
        },
        workers=2,
        modules=modules,
    )


def traffic(port, rounds, stateful=True):
    """A fixed mix: proxied 200s, 503s that open a breaker, a rate limiter's
    429s, local answers, an unrouted 404 and a body. STATEFUL=False leaves
    out the breaker and the limiter, whose state a reload changes on
    purpose (a breaker carried over is half-open; a limiter's buckets are
    kept, D73, but a reloaded instance refills them on its own timing),
    so that the two instances still see the same."""
    for _ in range(rounds):
        assert http_request(port, "/slow?ms=0")[0] == 200
        assert http_request(port, "/two", method="POST", body=b"x" * 100)[0] == 200
        if stateful:
            assert http_request(port, "/status/503")[0] == 503
            assert http_request(port, "/limited")[0] in (200, 429)
        assert http_request(port, "/static")[0] == 200
        assert http_request(port, "/nowhere")[0] == 404


def pair(tmp_path, heliosd, backends, n=2, **kw):
    """N heliosd with the same configuration (own ports), same backends."""
    slow, two, flaky, other = backends("slow", "two", "flaky", "other")
    secret = write_secret(tmp_path)
    out = []
    for _ in range(n):
        port, mport, aport = free_port(), free_port(), free_port()
        cfg = config(port, mport, aport, secret, slow, two, flaky, **kw)
        out.append(dict(h=heliosd(cfg), cfg=cfg, port=port, mport=mport,
                        adm=Admin(aport, mint()), mk=lambda port=port, mport=mport, aport=aport,
                        **kw: config(port, mport, aport, secret, slow, two, flaky, **kw)))
    for x in out:
        wait_for(lambda: x["adm"].get("/v1/health", token=None)[0] == 200, what="admin API up")
    return out, other


def assert_same_counters(got, ref, what):
    missing = sorted(set(ref) - set(got))
    assert not missing, f"{what}: series gone after the reload: {missing[:5]}"
    diff = {k: (got[k], ref[k]) for k in ref if got[k] != ref[k]}
    assert not diff, f"{what}: counters differ from the instance not reloaded (got, want): {diff}"


def run_round(x, y, reload_x, gen_x, gen_y, rounds=3, stateful=True):
    traffic(x["port"], rounds, stateful)
    traffic(y["port"], rounds, stateful)
    reload_x()
    cx, cy = scrape_gen(x["mport"], gen_x), scrape_gen(y["mport"], gen_y)
    return cx, cy


def test_counters_survive_sighup_and_admin_reload_exactly(tmp_path, heliosd, backends):
    (x, y), _ = pair(tmp_path, heliosd, backends)
    traffic(x["port"], 4)
    traffic(y["port"], 4)
    bx, by = scrape_gen(x["mport"], 1), scrape_gen(y["mport"], 1)
    assert_same_counters(bx, by, "before any reload")
    assert bx[("helios_backend_requests_total", (("backend", "s"), ("upstream", "one")))] == 4
    assert bx[("helios_backend_breaker_transitions_total",
               (("backend", "f"), ("to", "open"), ("upstream", "flaky")))] == 1

    # more traffic, then SIGHUP with no scrape in between
    mark = x["h"].err_mark()
    cx, cy = run_round(x, y, lambda: x["h"].reload(), 2, 1)
    x["h"].wait_stderr(r"generation 2 is live", since=mark, timeout=20)
    assert_same_counters(cx, cy, "after SIGHUP")
    key = ("helios_http_requests_total",
           (("class", "2xx"), ("code", "200"), ("route", "one"), ("upstream", "one")))
    assert cx[key] == bx[key] + 3

    # the admin API's reload, also with a route added (unrelated change)
    def admin_reload():
        x["h"].write_config(x["mk"](extra_routes=[static_route("new", "n\n",
                                                               match={"prefix": "/new"})]))
        st, _, body = x["adm"].post("/v1/reload")
        assert st == 200 and body["generation"] == 3, body
    cx, cy = run_round(x, y, admin_reload, 3, 1, stateful=False)
    assert_same_counters(cx, cy, "after POST /v1/reload adding a route")
    assert cx[key] == bx[key] + 6
    # the reloads themselves are counted, and only they differ
    st, _, body = http_request(x["mport"], "/metrics")
    assert "helios_reloads_total 2" in body.decode()


def test_backend_counters_follow_the_name_when_the_address_changes(tmp_path, heliosd, backends):
    (x, y), other = pair(tmp_path, heliosd, backends)
    traffic(x["port"], 2)
    traffic(y["port"], 2)
    scrape_gen(x["mport"], 1)
    # backend t of upstream two moves to another address: same series
    mark = x["h"].err_mark()
    cx, cy = run_round(x, y, lambda: x["h"].reload(x["mk"](two_addr=other.address)), 2, 1)
    x["h"].wait_stderr(r"generation 2 is live", since=mark, timeout=20)
    assert_same_counters(cx, cy, "after moving backend t")
    assert cx[("helios_backend_requests_total", (("backend", "t"), ("upstream", "two")))] == 5
    # and it counts on at the new address
    assert http_request(x["port"], "/two")[0] == 200
    c, _ = scrape(x["mport"])
    assert c[("helios_backend_requests_total", (("backend", "t"), ("upstream", "two")))] == 6


def test_reloads_during_traffic_never_lower_a_counter(tmp_path, heliosd, backends):
    # no breaker here: the timeouts below must not open one
    (x,), _ = pair(tmp_path, heliosd, backends, n=1, breaker=False)
    answered = []
    errors = []
    deadline = time.monotonic() + 30

    def client(k):
        for i in range(12):  # bounded in count and in time
            if time.monotonic() > deadline:
                return
            # every other one outlives upstream one's 250 ms read timeout:
            # a failure counted when the attempt ends, after the reload
            ms = 400 if (i + k) % 2 else 100
            try:
                st = http_request(x["port"], f"/slow?ms={ms}")[0]
            except OSError as e:
                errors.append(e)
                continue
            answered.append(st)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    last, gen = scrape(x["mport"])[0], 1
    for _ in range(3):
        time.sleep(0.3)
        mark = x["h"].err_mark()
        x["h"].reload()
        gen += 1
        x["h"].wait_stderr(rf"generation {gen} is live", since=mark, timeout=20)
        now = scrape_gen(x["mport"], gen)
        lower = {k: (last[k], now.get(k)) for k in last if now.get(k, -1) < last[k]}
        assert not lower, f"counters went down across reload {gen}: {lower}"
        last = now
    for t in threads:
        t.join(60)
    assert not errors, errors
    # (a 100 ms answer may time out too on a very busy machine: counted as such)
    assert set(answered) <= {200, 504} and 504 in answered, answered
    n, failed = len(answered), answered.count(504)
    # what old generations counted after handing over is added when they
    # end (their last request done): wait for that, then exact totals
    lbl = (("backend", "s"), ("upstream", "one"))

    def settled():
        c, _ = scrape(x["mport"])
        return c if (c.get(("helios_backend_requests_total", lbl)) == n and
                     c.get(("helios_backend_failures_total", lbl)) == failed) else None
    final = wait_for(settled, 15, what=f"backend s: {n} requests, {failed} failures")
    for code, cls, want in (("200", "2xx", n - failed), ("504", "5xx", failed)):
        assert final[("helios_http_requests_total", (("class", cls), ("code", code),
                                                     ("route", "one"), ("upstream", "one")))] == want
    lower = {k: (last[k], final.get(k)) for k in last if final.get(k, -1) < last[k]}
    assert not lower, lower
