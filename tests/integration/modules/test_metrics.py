"""The metrics module: Prometheus text format 0.0.4 served
by the real heliosd on its own listener, parsed with Debian's
python3-prometheus-client, and compared with the traffic each test sent.

The module is both a filter (its on_log counts every finished request: it
sits in the global `modules:` chain) and a service (libmicrohttpd on its own
listener). Backend state changes go through the test-only `ctl` handler
(tests/modules/ctl.c), as in test_balancers.py.
"""

import http.client
import os
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    HELIOSD,
    IO_TIMEOUT,
    MODULE_DIR,
    SOURCE_DIR,
    free_port,
    http_request,
    ipv6_available,
    make_config,
    proxy_route,
    run_config_check,
    static_route,
    upstream_conf,
    wait_for,
    write_config_file,
)

TEST_MODULE_DIR = Path(os.environ.get("HELIOS_TEST_MODULE_DIR") or SOURCE_DIR / "build" / "test-modules")
DEFAULT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]


# --------------------------------------------------------------------------
# helpers


@pytest.fixture
def module_dir(tmp_path):
    """The shipped modules (metrics among them) plus the test-only ctl.so."""
    if not (MODULE_DIR / "metrics.so").exists():
        pytest.fail(f"metrics module not built: {MODULE_DIR / 'metrics.so'}")
    ctl = TEST_MODULE_DIR / "ctl.so"
    if not ctl.exists():
        pytest.fail(f"test module not built: {ctl}")
    d = tmp_path / "modules"
    d.mkdir()
    for m in MODULE_DIR.glob("*.so"):
        (d / m.name).symlink_to(m.resolve())
    (d / "ctl.so").symlink_to(ctl.resolve())
    return d


@pytest.fixture
def hd(heliosd, module_dir):
    def make(config, **kw):
        return heliosd(config, extra_args=("-m", str(module_dir)), **kw)

    return make


def metrics_module(mport, host="127.0.0.1", **extra):
    listen = f"[{host}]:{mport}" if ":" in host else f"{host}:{mport}"
    return {"module": "metrics", "config": {"listen": listen, **extra}}


def config(port, mport, routes, upstreams=None, workers=1, modules=(), **top):
    cfg = make_config(port, routes, upstreams, workers=workers, **top)
    cfg["modules"] = [metrics_module(mport), *modules]
    return cfg


def fetch(mport, path="/metrics", host="127.0.0.1", method="GET"):
    """(status, headers, text) from the metrics listener."""
    conn = http.client.HTTPConnection(host, mport, timeout=IO_TIMEOUT)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()


class Scrape:
    """One parsed exposition: families by name and samples by (name, labels)."""

    def __init__(self, text):
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {}
        for f in self.families.values():
            for s in f.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in self.samples, f"duplicate sample {key}"
                self.samples[key] = s.value

    def get(self, name, **labels):
        """The value of the sample with exactly these labels, or None."""
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def val(self, name, **labels):
        v = self.get(name, **labels)
        assert v is not None, f"no sample {name}{labels} in:\n{self.text}"
        return v

    def total(self, name, **labels):
        """Sum over every sample of NAME whose labels include LABELS."""
        out = 0
        for (n, lbl), v in self.samples.items():
            d = dict(lbl)
            if n == name and all(d.get(k) == val for k, val in labels.items()):
                out += v
        return out


def scrape(mport, host="127.0.0.1", path="/metrics"):
    status, headers, text = fetch(mport, path, host)
    assert status == 200, text
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    return Scrape(text)


def check_histogram(s, name, label, value, buckets=DEFAULT_BUCKETS):
    """Cumulative, one bucket per bound plus +Inf (= _count); returns _count."""
    les = [float(b) for b in buckets] + [float("inf")]
    counts = []
    for (n, lbl), v in s.samples.items():
        d = dict(lbl)
        if n == name + "_bucket" and d.get(label) == value:
            counts.append((float(d["le"]), v))
    counts.sort()
    assert [le for le, _ in counts] == les, counts
    values = [v for _, v in counts]
    assert values == sorted(values), f"buckets not cumulative: {counts}"
    count = s.val(name + "_count", **{label: value})
    assert values[-1] == count
    return count


def run_check(tmp_path, module_dir, modules_yaml):
    """heliosd -t on a config whose `modules:` is MODULES_YAML: (rc, stderr)."""
    cfg = write_config_file(
        tmp_path / "check",
        f"listeners:\n  - address: 127.0.0.1:{free_port()}\n"
        f"modules:\n{modules_yaml}"
        "routes:\n  - handler: static_response\n",
    )
    p = run_config_check(cfg.parent, module_dir=module_dir)
    return p.returncode, p.stderr, cfg


def get_n(port, path, n, **kw):
    """N requests, each on a fresh connection; returns the statuses and
    total response body bytes."""
    statuses, nbytes = [], 0
    for _ in range(n):
        st, _, body = http_request(port, path, **kw)
        statuses.append(st)
        nbytes += len(body)
    return statuses, nbytes


# --------------------------------------------------------------------------
# counters match the traffic


def test_counters_histograms_and_bytes_match_the_traffic(hd, backends):
    b = backends("b1")
    port, mport = free_port(), free_port()
    routes = [
        proxy_route("echo", "app", {"prefix": "/echo"}),
        proxy_route("errors", "app", {"prefix": "/status/"}),
        static_route("static", "hi\n", {"prefix": "/static"}),
    ]
    hd(config(port, mport, routes, {"app": upstream_conf(b)}))

    before = scrape(mport)
    assert before.val("helios_requests_total") == 0
    # the fixture's readiness probe connected without sending a request
    accepted0 = wait_for(lambda: scrape(mport).val("helios_connections_accepted_total"))

    n_echo, n_500, n_404, n_static, n_unrouted = 7, 4, 3, 2, 5
    sent = received = 0
    for i in range(n_echo):
        body = bytes(100 + i) * 1
        st, _, data = http_request(port, "/echo", method="POST", body=body)
        assert st == 200 and data == body
        sent += len(body)
        received += len(data)
    statuses, nb = get_n(port, "/status/500", n_500)
    assert statuses == [500] * n_500
    received_err = nb
    statuses, nb = get_n(port, "/status/404", n_404)
    assert statuses == [404] * n_404
    received_err += nb
    statuses, nb_static = get_n(port, "/static", n_static)
    assert statuses == [200] * n_static
    statuses, nb_unrouted = get_n(port, "/nowhere", n_unrouted)
    assert statuses == [404] * n_unrouted

    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == 21 else None)(scrape(mport)),
                 timeout=10, what="all 21 requests counted")
    total = n_echo + n_500 + n_404 + n_static + n_unrouted
    assert s.val("helios_requests_total") == total
    # requests by route, upstream and status class
    assert s.total("helios_http_requests_total", route="echo", upstream="app", **{"class": "2xx"}) == n_echo
    assert s.total("helios_http_requests_total", route="errors", upstream="app", **{"class": "5xx"}) == n_500
    assert s.total("helios_http_requests_total", route="errors", upstream="app", **{"class": "4xx"}) == n_404
    assert s.total("helios_http_requests_total", route="static", upstream="", **{"class": "2xx"}) == n_static
    assert s.total("helios_http_requests_total", route="echo", upstream="app", **{"class": "5xx"}) == 0
    # exact statuses in `code`, the class beside it
    assert s.val("helios_http_requests_total", route="errors", upstream="app", code="404",
                 **{"class": "4xx"}) == n_404
    # requests no route matched are counted too (route and upstream "")
    assert s.total("helios_http_requests_total") == total
    assert s.val("helios_http_requests_total", route="", upstream="", code="404",
                 **{"class": "4xx"}) == n_unrouted
    # latency histograms: _count equals the requests of the route / upstream
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", "echo") == n_echo
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", "errors") == n_500 + n_404
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", "static") == n_static
    assert check_histogram(s, "helios_upstream_duration_seconds", "upstream", "app") == n_echo + n_500 + n_404
    assert s.get("helios_upstream_duration_seconds_count", upstream="") is None
    assert 0 < s.val("helios_http_request_duration_seconds_sum", route="echo") < 10 * n_echo
    # bytes: what the client sent and received
    assert s.val("helios_http_request_body_bytes_total", route="echo", upstream="app") == sent
    assert s.val("helios_http_response_body_bytes_total", route="echo", upstream="app") == received
    assert s.val("helios_http_response_body_bytes_total", route="errors", upstream="app") == received_err
    assert s.val("helios_http_response_body_bytes_total", route="static", upstream="") == nb_static
    assert s.val("helios_request_body_bytes_total") == sent
    assert s.val("helios_response_body_bytes_total") == received + received_err + nb_static + nb_unrouted
    # one connection per request (http_request opens a fresh one); the
    # scrapes go to the metrics listener and are not counted
    assert s.val("helios_connections_accepted_total") == accepted0 + total
    wait_for(lambda: scrape(mport).val("helios_connections_active") == 0, what="connections closed")
    assert s.val("helios_requests_in_flight") == 0
    assert s.val("helios_connections_refused_total") == 0
    # per backend, walked at scrape time
    assert s.val("helios_backend_requests_total", upstream="app", backend="b1") == n_echo + n_500 + n_404
    assert s.val("helios_backend_up", upstream="app", backend="b1") == 1
    assert s.val("helios_backend_weight", upstream="app", backend="b1") == 1
    assert s.val("helios_backend_in_flight", upstream="app", backend="b1") == 0
    assert s.val("helios_metrics_dropped_total") == 0


def test_families_have_help_type_and_the_format_header(hd, backends):
    b = backends("b1")
    port, mport = free_port(), free_port()
    hd(config(port, mport, [proxy_route("app", "app")], {"app": upstream_conf(b)}))
    assert http_request(port, "/")[0] == 200
    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == 1 else None)(scrape(mport)))
    types = {}
    helps = set()
    for line in s.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            assert name not in types, f"TYPE twice for {name}"
            types[name] = typ
        elif line.startswith("# HELP "):
            helps.add(line.split(" ", 3)[2])
    assert set(types) == helps
    assert types["helios_http_requests_total"] == "counter"
    assert types["helios_http_request_duration_seconds"] == "histogram"
    assert types["helios_upstream_duration_seconds"] == "histogram"
    assert types["helios_connections_active"] == "gauge"
    assert types["helios_backend_breaker_state"] == "gauge"
    # every sample belongs to a family announced before it
    seen = set()
    for line in s.text.splitlines():
        if line.startswith("# TYPE "):
            seen.add(line.split()[2])
        elif line and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert any(name == f or (name.startswith(f) and name[len(f):] in ("_bucket", "_sum", "_count"))
                       for f in seen), line
    assert s.families["helios_http_requests"].type == "counter"
    assert s.families["helios_http_request_duration_seconds"].type == "histogram"


def test_build_info_start_time_and_generation(hd, backends):
    b = backends("b1")
    port, mport = free_port(), free_port()
    t0 = time.time()
    hd(config(port, mport, [proxy_route("app", "app")], {"app": upstream_conf(b)}))
    s = scrape(mport)
    out = subprocess.run([str(HELIOSD), "-V"], stdout=subprocess.PIPE, text=True,
                         timeout=10).stdout
    version, abi = out.split()[1], re.search(r"plugin ABI (\d+\.\d+)", out).group(1)
    assert s.val("helios_build_info", version=version, abi=abi) == 1
    assert t0 - 5 <= s.val("helios_process_start_time_seconds") <= time.time() + 1
    assert s.val("helios_config_generation") == 1
    assert s.val("helios_workers") == 1


def test_sums_over_several_workers_under_concurrent_load(hd, backends):
    b = backends("b1")
    port, mport = free_port(), free_port()
    routes = [proxy_route("a", "app", {"prefix": "/echo"}), proxy_route("e", "app", {"prefix": "/status/"})]
    hd(config(port, mport, routes, {"app": upstream_conf(b)}, workers=3))
    # the fixture's readiness probe: one connection, accepted by some worker
    accepted0 = wait_for(lambda: scrape(mport).val("helios_connections_accepted_total"))
    threads, per_thread, body = 6, 40, b"x" * 333
    errors = []
    statuses = [[] for _ in range(threads)]

    def client(i):
        try:
            for k in range(per_thread):
                # a new connection each time so the kernel spreads them over workers
                if k % 4 == 3:
                    st = http_request(port, "/status/503")[0]
                else:
                    st, _, data = http_request(port, "/echo", method="POST", body=body)
                    assert data == body
                statuses[i].append(st)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    # scrapes while the load runs: lock-free reads, yet every counter only
    # grows and each histogram stays self-consistent
    seen, done = [], threading.Event()

    def scraper():
        for _ in range(2000):
            if done.is_set():
                break
            try:
                x = scrape(mport)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
                break
            cnt = x.get("helios_http_request_duration_seconds_count", route="a") or 0
            inf = x.get("helios_http_request_duration_seconds_bucket", route="a", le="+Inf") or 0
            seen.append((x.total("helios_http_requests_total"), cnt, inf))
            time.sleep(0.01)

    sc = threading.Thread(target=scraper)
    sc.start()
    ts = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    done.set()
    sc.join(timeout=30)
    assert not errors, errors
    assert len(seen) >= 2
    assert all(cnt == inf for _, cnt, inf in seen), seen
    totals = [t for t, _, _ in seen]
    assert totals == sorted(totals), totals
    n = threads * per_thread
    n_ok = sum(st.count(200) for st in statuses)
    n_503 = sum(st.count(503) for st in statuses)
    assert n_ok + n_503 == n and n_503 == n // 4
    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == n else None)(scrape(mport)),
                 timeout=15, what="every request counted")
    assert s.val("helios_workers") == 3
    assert s.total("helios_http_requests_total", route="a", upstream="app", **{"class": "2xx"}) == n_ok
    assert s.total("helios_http_requests_total", route="e", upstream="app", **{"class": "5xx"}) == n_503
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", "a") == n_ok
    assert check_histogram(s, "helios_upstream_duration_seconds", "upstream", "app") == n
    assert s.val("helios_http_request_body_bytes_total", route="a", upstream="app") == n_ok * len(body)
    assert s.val("helios_http_response_body_bytes_total", route="a", upstream="app") == n_ok * len(body)
    assert s.val("helios_connections_accepted_total") == accepted0 + n


def test_rate_limited_count_equals_the_429s_the_client_saw(hd, backends):
    b = backends("b1")
    port, mport = free_port(), free_port()
    rl = {"module": "rate_limit", "config": {"rate": 1, "burst": 5}}
    hd(config(port, mport, [proxy_route("app", "app")], {"app": upstream_conf(b)}, modules=[rl]))
    statuses, _ = get_n(port, "/", 20)
    n429 = statuses.count(429)
    assert n429 >= 10 and statuses.count(200) + n429 == 20, statuses
    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == 20 else None)(scrape(mport)))
    assert s.val("helios_http_rate_limited_total", route="app", upstream="app") == n429
    assert s.total("helios_http_requests_total", route="app", upstream="app", **{"class": "4xx"}) == n429
    assert s.total("helios_http_requests_total", route="app", upstream="app", **{"class": "2xx"}) == 20 - n429


def test_retries_are_counted_per_route_and_per_backend(hd, backends):
    b = backends("live")
    dead = {"name": "dead", "address": f"127.0.0.1:{free_port()}"}
    port, mport = free_port(), free_port()
    up = upstream_conf(dead, b, retries={"tries": 2, "on": ["connect_failure"]})
    hd(config(port, mport, [proxy_route("app", "app")], {"app": up}))
    statuses, _ = get_n(port, "/", 10)
    assert statuses == [200] * 10
    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == 10 else None)(scrape(mport)))
    retries = s.val("helios_http_retries_total", route="app", upstream="app")
    assert retries >= 1
    assert retries == s.total("helios_backend_retries_total", upstream="app")
    assert s.val("helios_backend_failures_total", upstream="app", backend="dead") == retries
    assert s.val("helios_backend_requests_total", upstream="app", backend="live") == 10


def test_backend_gauges_follow_health_and_drain(hd, backends):
    b1, b2 = backends("b1", "b2")
    port, mport = free_port(), free_port()
    routes = [{"name": "ctl", "match": {"prefix": "/_ctl/"}, "handler": "ctl"}, proxy_route("app", "app")]
    hd(config(port, mport, routes, {"app": upstream_conf(b1, b2)}))

    def gauges(name):
        s = scrape(mport)
        return (s.val(name, upstream="app", backend="b1"), s.val(name, upstream="app", backend="b2"))

    assert gauges("helios_backend_up") == (1, 1)
    assert gauges("helios_backend_usable") == (1, 1)
    assert http_request(port, "/_ctl/health?upstream=app&name=b1&on=0")[0] == 200
    assert gauges("helios_backend_up") == (0, 1)
    assert gauges("helios_backend_usable") == (0, 1)
    assert http_request(port, "/_ctl/drain?upstream=app&name=b2&on=1")[0] == 200
    assert gauges("helios_backend_draining") == (0, 1)
    assert gauges("helios_backend_usable") == (0, 0)
    assert http_request(port, "/_ctl/health?upstream=app&name=b1&on=1")[0] == 200
    assert http_request(port, "/_ctl/weight?upstream=app&name=b1&weight=7")[0] == 200
    assert gauges("helios_backend_up") == (1, 1)
    assert gauges("helios_backend_weight") == (7, 1)
    assert gauges("helios_backend_breaker_state") == (0, 0)


def test_reload_counts_and_counters_survive_it(hd, backends):
    b = backends("b1")
    port, mport = free_port(), free_port()
    cfg = config(port, mport, [proxy_route("app", "app")], {"app": upstream_conf(b)}, workers=2)
    h = hd(cfg)
    statuses, _ = get_n(port, "/", 6)
    assert statuses == [200] * 6
    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == 6 else None)(scrape(mport)))
    assert s.val("helios_reloads_total") == 0

    mark = h.err_mark()
    h.reload()
    h.wait_stderr(r"generation 2 is live", since=mark, timeout=20)
    s = wait_for(lambda: (lambda x: x if x.get("helios_config_generation") == 2 else None)(scrape(mport)),
                 timeout=10, what="the new generation's scrape")
    assert s.val("helios_reloads_total") == 1
    assert s.val("helios_reload_failures_total") == 0
    # same buckets: the counters carry on, no reset
    assert s.total("helios_http_requests_total", route="app", upstream="app", **{"class": "2xx"}) == 6
    get_n(port, "/", 3)
    s = wait_for(lambda: (lambda x: x if x.total("helios_http_requests_total", route="app", upstream="app",
                                                      **{"class": "2xx"}) == 9 else None)(scrape(mport)))
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", "app") == 9

    # a refused reload is counted too, and the running one stays
    mark = h.err_mark()
    bad = dict(cfg)
    bad["modules"] = [metrics_module(mport, buckets=[1, 0.5])]
    h.reload(bad)
    h.wait_stderr(r"reload failed", since=mark, timeout=20)
    s = scrape(mport)
    assert s.val("helios_reload_failures_total") == 1
    assert s.val("helios_config_generation") == 2

    # new buckets: a new histogram shape, which restarts the histograms
    # only; the counters carry on
    get_n(port, "/", 1)  # not scraped before the reload: still counted
    mark = h.err_mark()
    newb = dict(cfg)
    newb["modules"] = [metrics_module(mport, buckets=[0.5, 1])]
    h.reload(newb)
    h.wait_stderr(r"generation 3 is live", since=mark, timeout=20)
    s = wait_for(lambda: (lambda x: x if x.get("helios_config_generation") == 3 else None)(scrape(mport)))
    assert s.total("helios_http_requests_total", route="app", upstream="app", **{"class": "2xx"}) == 10
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", "app", [0.5, 1]) == 0
    get_n(port, "/", 2)
    s = wait_for(lambda: (lambda x: x if x.total("helios_http_requests_total", route="app", upstream="app",
                                                      **{"class": "2xx"}) == 12 else None)(scrape(mport)))
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", "app", [0.5, 1]) == 2

    assert s.val("helios_reloads_total") == 2


def test_custom_buckets_and_path(hd, backends):
    b = backends("b1")
    port, mport = free_port(), free_port()
    cfg = make_config(port, [proxy_route("app", "app")], {"app": upstream_conf(b)})
    cfg["modules"] = [metrics_module(mport, buckets=[0.05, 0.3, 2], path="/prom")]
    hd(cfg)
    assert http_request(port, "/slow?ms=120")[0] == 200
    assert http_request(port, "/")[0] == 200
    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == 2 else None)(scrape(mport, path="/prom")))
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", "app", [0.05, 0.3, 2]) == 2
    assert s.val("helios_http_request_duration_seconds_bucket", route="app", le="0.05") == 1
    assert s.val("helios_http_request_duration_seconds_bucket", route="app", le="0.3") == 2
    assert s.val("helios_upstream_duration_seconds_bucket", upstream="app", le="0.05") == 1
    assert 0.12 <= s.val("helios_http_request_duration_seconds_sum", route="app") < 5
    assert fetch(mport, "/metrics")[0] == 404
    assert fetch(mport, "/prom", method="POST")[0] == 405
    st, headers, text = fetch(mport, "/prom", method="HEAD")
    assert st == 200 and text == ""


def test_label_values_are_escaped(hd, backends):
    b = backends("b1")
    port, mport = free_port(), free_port()
    weird = 'we"ird\\na\nme'
    hd(config(port, mport, [proxy_route(weird, "app")], {"app": upstream_conf(b)}))
    assert http_request(port, "/")[0] == 200
    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == 1 else None)(scrape(mport)))
    assert 'route="we\\"ird\\\\na\\nme"' in s.text
    assert s.total("helios_http_requests_total", route=weird, upstream="app", **{"class": "2xx"}) == 1
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", weird) == 1


def test_ipv6_listener(hd, backends):
    if not ipv6_available():
        pytest.skip("no IPv6 loopback")
    b = backends("b1")
    port, mport = free_port(), free_port("::1")
    cfg = make_config(port, [proxy_route("app", "app")], {"app": upstream_conf(b)})
    cfg["modules"] = [metrics_module(mport, host="::1")]
    hd(cfg)
    assert http_request(port, "/")[0] == 200
    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == 1 else None)(scrape(mport, host="::1")))
    assert s.total("helios_http_requests_total", route="app", upstream="app", **{"class": "2xx"}) == 1
    out = subprocess.run(["curl", "-sS", "-g", f"http://[::1]:{mport}/metrics"], stdout=subprocess.PIPE,
                         timeout=30, text=True).stdout
    assert Scrape(out).val("helios_requests_total") == 1


def test_listen_port_in_use_stops_startup_with_a_clear_message(hd, backends):
    """A service that cannot start at startup stops heliosd (exit 1), like
    a listener that cannot bind; the module's message names the address
    and the reason."""
    b = backends("b1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        mport = busy.getsockname()[1]
        port = free_port()
        h = hd(config(port, mport, [proxy_route("app", "app")], {"app": upstream_conf(b)}),
               start=False)
        h.expected_rc = 1
        h.start(wait=False)
        assert h.wait_exit(30) == 1
        err = h.stderr()
        assert re.search(rf"metrics: cannot listen on 127\.0\.0\.1:{mport}: Address already in use", err), err
        assert "not starting: a module service failed to start" in err


@pytest.mark.parametrize(
    "conf, where, message",
    [
        ("{listen: 'localhost:9100'}", "listen", "numeric addresses"),
        ("{listen: '127.0.0.1'}", "listen", "IPV4:PORT"),
        ("{listen: '127.0.0.1:70000'}", "listen", "IPV4:PORT"),
        ("{listen: '[::1:9100'}", "listen", "IPV4:PORT"),
        ("{listen: [127.0.0.1:9100]}", "listen", "expected a string"),
        ("{buckets: [1, x, 0.5]}", "buckets[2]", "must increase strictly: 0.5 after 1"),
        ("{buckets: [0.1, 0.05]}", "buckets", "must increase strictly"),
        ("{buckets: [-1, 1]}", "buckets", "greater than 0"),
        ("{buckets: [0, 1]}", "buckets", "greater than 0"),
        ("{buckets: []}", "buckets", "1 to 64"),
        ("{buckets: [0.1, fast]}", "buckets", "not a number"),
        ("{buckets: 0.1}", "buckets", "must be a list"),
        ("{path: metrics}", "path", "starting with '/'"),
        ("{listen: '127.0.0.1:9100', colour: blue}", "colour", "colour"),
    ],
)
def test_bad_config_is_refused_with_a_located_error(tmp_path, module_dir, conf, where, message):
    rc, err, cfg = run_check(tmp_path, module_dir, f"  - module: metrics\n    config: {conf}\n")
    assert rc == 1, err
    assert f"{cfg}:5:" in err and where in err and message in err, err


def test_admin_listen_offers_the_text_to_admin_api(hd, backends, module_dir):
    if not (MODULE_DIR / "admin_api.so").exists():
        pytest.skip("admin_api module not built: `listen: admin` needs it")
    b = backends("b1")
    port, aport = free_port(), free_port()
    cfg = make_config(port, [proxy_route("app", "app")], {"app": upstream_conf(b)})
    cfg["modules"] = [
        {"module": "metrics", "config": {"listen": "admin"}},
        {"module": "admin_api", "config": {"listen": f"127.0.0.1:{aport}", "auth": "none"}},
    ]
    h = hd(cfg)
    assert http_request(port, "/")[0] == 200
    h.wait_stderr(r"offered to admin_api")

    def admin_scrape():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{aport}/metrics", timeout=IO_TIMEOUT) as r:
                return Scrape(r.read().decode())
        except urllib.error.HTTPError as e:
            return Scrape(e.read().decode()) if e.code == 200 else None

    s = wait_for(lambda: (lambda x: x if x and x.get("helios_requests_total") == 1 else None)(admin_scrape()),
                 timeout=10, what="admin_api serving /metrics")
    assert s.total("helios_http_requests_total", route="app", upstream="app", **{"class": "2xx"}) == 1


def test_request_abandoned_before_a_response_counts_as_code_none(hd, backends):
    b = backends("b1")
    port, mport = free_port(), free_port()
    hd(config(port, mport, [proxy_route("app", "app")], {"app": upstream_conf(b)}))
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as s:
        s.sendall(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: scrape(mport).val("helios_requests_in_flight") == 1, what="the request in flight")
        assert scrape(mport).val("helios_backend_in_flight", upstream="app", backend="b1") == 1
        # close with RST: the client is gone, not half-closed
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # a scrape is not one atomic snapshot: the worker counts the status, then
    # observes the duration, so wait until the histogram has it too
    s = wait_for(lambda: (lambda x: x if x.get("helios_requests_total") == 1 and
                          x.get("helios_http_request_duration_seconds_count", route="app") == 1
                          else None)(scrape(mport)),
                 timeout=15, what="the abandoned request logged")
    assert s.total("helios_http_requests_total", route="app", upstream="app", code="none") == 1
    assert s.val("helios_requests_in_flight") == 0
    assert check_histogram(s, "helios_http_request_duration_seconds", "route", "app") == 1
