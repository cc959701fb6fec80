"""The metrics of issue 17, each checked against real traffic through
prometheus_client's parser: the exact `code` label (404, 413, 429 told
apart, the class beside it), per-backend duration and time-to-first-byte
histograms, active probe results and durations (health_active), passive
ejections (health_passive), circuit breaker transitions, panic mode
(panic_threshold), the standard process_* metrics; the series carry on
across a reload; and every metric the Grafana dashboard in docs/ queries
is in a real scrape."""

import json
import os
import re
import signal
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    SOURCE_DIR,
    free_port,
    http_request,
    make_config,
    proxy_route,
    static_route,
    wait_for,
)

DASHBOARD = Path(SOURCE_DIR) / "docs" / "grafana-dashboard.json"


class Scrape:
    def __init__(self, text):
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = {}
        for f in self.families.values():
            for s in f.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def get(self, name, **labels):
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def total(self, name, **labels):
        return sum(v for (n, lbl), v in self.samples.items()
                   if n == name and all(dict(lbl).get(k) == x for k, x in labels.items()))


def scrape(mport):
    st, _, body = http_request(mport, "/metrics")
    assert st == 200
    return Scrape(body.decode())


def hist_count(s, name, **labels):
    """_count of one histogram, after checking its buckets are cumulative
    and end with +Inf = _count."""
    buckets = sorted(((float(dict(lbl)["le"]), v) for (n, lbl), v in s.samples.items()
                      if n == name + "_bucket" and all(dict(lbl).get(k) == x
                                                       for k, x in labels.items())))
    assert buckets, f"no {name} buckets for {labels}"
    vals = [v for _, v in buckets]
    assert vals == sorted(vals) and buckets[-1][0] == float("inf")
    count = s.get(name + "_count", **labels)
    assert count == vals[-1]
    assert s.get(name + "_sum", **labels) is not None
    return count


def start_all(heliosd, backends):
    good = backends("good")
    flaky = backends("flaky")
    dead = free_port()
    port, mport = free_port(), free_port()
    cfg = make_config(
        port,
        [
            proxy_route("app", "app", match={"prefix": "/app/"}),
            proxy_route("flaky", "flaky", match={"prefix": "/status/"}),
            proxy_route("pan", "pan", match={"prefix": "/pan/"}),
            dict(static_route("limited", "ok\n", match={"prefix": "/limited"}),
                 filters=[{"module": "rate_limit", "config": {"rate": 0.01, "burst": 1}}]),
            static_route("static", "s\n", match={"prefix": "/static"}),
        ],
        {
            "app": {"balancer": "round_robin",
                    "backends": [{"name": "good", "address": good.address}]},
            "flaky": {"balancer": "round_robin",
                      "backends": [{"name": "flaky", "address": flaky.address}]},
            "pan": {"balancer": "round_robin", "panic_threshold": 60,
                    "backends": [{"name": "live", "address": good.address},
                                 {"name": "dead", "address": f"127.0.0.1:{dead}"}]},
        },
        limits={"max_request_body": "1k"},
        modules=[
            {"module": "metrics", "config": {"listen": f"127.0.0.1:{mport}"}},
            {"module": "health_active",
             "config": {"type": "tcp", "interval": "200ms", "timeout": "500ms", "fall": 1,
                        "rise": 1, "upstreams": ["pan"]}},
            {"module": "health_passive", "config": {"failures": 2, "statuses": [503],
                                                    "unhealthy_timeout": "60s"}},
            {"module": "circuit_breaker", "config": {"failures": 2, "statuses": [503],
                                                     "open_timeout": "60s"}},
        ],
    )
    return heliosd(cfg), cfg, port, mport


def test_operability_metrics_match_the_traffic(heliosd, backends):
    h, cfg, port, mport = start_all(heliosd, backends)
    for _ in range(5):
        assert http_request(port, "/app/x")[0] == 200
    assert http_request(port, "/app/nf", headers={"X": "y"})[0] == 200
    for _ in range(3):
        assert http_request(port, "/nowhere")[0] == 404
    assert http_request(port, "/app/big", method="POST", body=b"x" * 4096)[0] == 413
    assert http_request(port, "/limited")[0] == 200
    assert http_request(port, "/limited")[0] == 429
    for _ in range(2):
        assert http_request(port, "/status/503")[0] == 503
    # the probes mark `dead` down: below 60 % healthy, `pan` is in panic
    s = wait_for(lambda: (lambda x: x if x.total("helios_health_probes_total", backend="dead",
                                                 result="failure") >= 2 else None)(scrape(mport)),
                 10, what="failed probes of the dead backend")
    for _ in range(4):
        http_request(port, "/pan/x")
    s = scrape(mport)

    # exact codes, class beside them
    def code(route, upstream, c, k):
        return s.get("helios_http_requests_total", route=route, upstream=upstream, code=c,
                     **{"class": k})
    assert code("app", "app", "200", "2xx") == 6
    assert code("", "", "404", "4xx") == 3
    assert code("", "", "413", "4xx") == 1  # refused before routing
    assert code("limited", "", "429", "4xx") == 1 and code("limited", "", "200", "2xx") == 1
    assert code("flaky", "flaky", "503", "5xx") == 2

    # per-backend latency: one observation per proxied request to the backend
    assert hist_count(s, "helios_backend_duration_seconds", upstream="app", backend="good") == 6
    assert hist_count(s, "helios_backend_ttfb_seconds", upstream="app", backend="good") == 6
    assert hist_count(s, "helios_backend_ttfb_seconds", upstream="flaky", backend="flaky") == 2
    ttfb = s.get("helios_backend_ttfb_seconds_sum", upstream="app", backend="good")
    dur = s.get("helios_backend_duration_seconds_sum", upstream="app", backend="good")
    assert 0 < ttfb <= dur + 1e-6

    # probes: results and a duration per probe
    ok = s.get("helios_health_probes_total", upstream="pan", backend="live", result="success")
    bad = s.get("helios_health_probes_total", upstream="pan", backend="dead", result="failure")
    assert ok >= 1 and bad >= 2
    assert s.get("helios_health_probes_total", upstream="pan", backend="live",
                 result="failure") == 0
    assert hist_count(s, "helios_health_probe_duration_seconds", upstream="pan",
                      backend="live") == s.total("helios_health_probes_total", upstream="pan",
                                                 backend="live")
    # health_passive ejected `flaky` after 2 503s; the breaker opened on them
    assert s.get("helios_backend_ejections_total", upstream="flaky", backend="flaky") == 1
    assert s.get("helios_backend_breaker_transitions_total", upstream="flaky", backend="flaky",
                 to="open") == 1
    assert s.get("helios_backend_breaker_transitions_total", upstream="app", backend="good",
                 to="open") == 0
    # panic mode
    assert s.get("helios_upstream_panic", upstream="pan") == 1
    assert s.get("helios_upstream_panic_entries_total", upstream="pan") == 1
    assert s.get("helios_upstream_panic", upstream="app") == 0
    # process metrics, Prometheus conventions
    for name, kind in (("process_cpu_seconds", "counter"), ("process_resident_memory_bytes", "gauge"),
                       ("process_open_fds", "gauge"), ("process_start_time_seconds", "gauge"),
                       ("process_max_fds", "gauge"), ("process_virtual_memory_bytes", "gauge")):
        assert s.families[name].type == kind, name
    assert s.get("process_cpu_seconds_total") > 0
    with open(f"/proc/{h.pid}/status") as f:
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    assert abs(s.get("process_resident_memory_bytes") - rss_kb * 1024) < 64 * 1024 * 1024
    nfds = len(os.listdir(f"/proc/{h.pid}/fd"))
    assert abs(s.get("process_open_fds") - nfds) <= 4
    assert abs(s.get("process_start_time_seconds") - time.time()) < 600

    # a reload: the series of backends that persist carry on
    before = s
    mark = h.err_mark()
    h.reload()
    h.wait_stderr(r"generation 2 is live", since=mark, timeout=20)
    assert http_request(port, "/app/y")[0] == 200
    s = wait_for(lambda: (lambda x: x if x.get("helios_config_generation") == 2 else None)(
        scrape(mport)), 10, what="generation 2 scrape")
    assert code_after(s, "app", "app", "200", "2xx") == 7
    assert hist_count(s, "helios_backend_ttfb_seconds", upstream="app", backend="good") == 7
    assert s.get("helios_backend_requests_total", upstream="app", backend="good") >= \
        before.get("helios_backend_requests_total", upstream="app", backend="good") + 1
    assert s.get("helios_backend_breaker_transitions_total", upstream="flaky", backend="flaky",
                 to="open") >= 1
    assert s.get("helios_upstream_panic_entries_total", upstream="pan") >= 1
    assert s.get("helios_health_probes_total", upstream="pan", backend="live",
                 result="success") >= ok
    assert s.get("helios_backend_ejections_total", upstream="flaky", backend="flaky") >= 1


def code_after(s, route, upstream, c, k):
    return s.get("helios_http_requests_total", route=route, upstream=upstream, code=c,
                 **{"class": k})


def dashboard_metrics():
    """Every metric name the dashboard's queries use."""
    d = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                exprs.append(t["expr"])
            walk(p.get("panels", []))
    walk(d["panels"])
    funcs = {"rate", "irate", "increase", "sum", "by", "histogram_quantile", "max", "min",
             "avg", "time", "count", "le", "without", "on", "ignoring", "topk", "clamp_min",
             "delta", "deriv", "abs", "or", "and", "unless", "bool", "offset", "changes",
             "resets", "label_replace", "vector", "scalar"}
    names = set()
    for e in exprs:
        e = re.sub(r'\{[^}]*\}', "", e)        # label matchers
        e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)  # grouping labels
        e = re.sub(r'"[^"]*"', "", e)          # strings
        e = re.sub(r'\[[^\]]*\]', "", e)       # ranges
        for tok in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
            if tok not in funcs and not tok.startswith("$"):
                names.add(tok)
    return exprs, names


def test_grafana_dashboard_queries_only_metrics_heliosd_exports(heliosd, backends):
    exprs, names = dashboard_metrics()
    assert len(exprs) >= 10 and names
    h, cfg, port, mport = start_all(heliosd, backends)
    http_request(port, "/app/x")
    http_request(port, "/status/503")
    wait_for(lambda: scrape(mport).total("helios_health_probes_total") > 0, 10, what="probes")
    s = scrape(mport)
    exported = set()
    for f in s.families.values():
        exported.add(f.name)
        for smp in f.samples:
            exported.add(smp.name)
    missing = sorted(n for n in names if n not in exported)
    assert not missing, f"dashboard queries metrics heliosd does not export: {missing}"
