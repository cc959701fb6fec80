#!/usr/bin/env python3
"""Summarise the client outputs collected by bench/proxy.sh into tables
(wrk's reports, or heliosd bench's JSON with CLIENT=heliosd).

Input (environment): BENCH_RESULTS, a TSV with one row per wrk run: proxy,
round, status (ok, loaded, discarded, died), wrk output file, CPU snapshots
before and after, wrk CPU seconds, other load on the two CPUs; BENCH_MD, the
markdown file to write; BENCH_LOGS, proxy log excerpts to append;
BENCH_CLK_TCK, BENCH_MAX_OTHER_LOAD; BENCH_CMD, BENCH_WRK, BENCH_PINNING,
BENCH_VERSIONS, BENCH_PREFLIGHT and BENCH_TITLE, descriptive text; BENCH_PROXY_CPU, the
proxies' CPU; BENCH_COUNTS (optional), a TSV of the counted runs: proxy,
requests, system calls, context switches. Prints an aligned table and the
markdown to stdout.
"""
import datetime
import json
import os
import platform
import re
import statistics
import sys

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def latency_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None


def parse_bench_json(text, r):
    """heliosd bench --json (CLIENT=heliosd): the same figures as wrk's."""
    try:
        d = json.loads(text)
    except ValueError:
        return r
    lat = d["latency_ms"]["uncorrected"]
    st = d["status"]
    r.update(rps=d["requests_per_s"], p50=lat["p50"], p99=lat["p99"], p999=lat.get("p99_9"),
             non2xx=st["1xx"] + st["4xx"] + st["5xx"] + st["other"],
             sockerr=d["errors"]["total"], requests=d["requests"])
    return r


def parse_wrk(path):
    """Return req/s, p50 and p99 (ms), non-2xx/3xx count and socket errors,
    from wrk's report or from heliosd bench's JSON."""
    r = {"rps": None, "p50": None, "p99": None, "p999": None, "non2xx": 0, "sockerr": 0, "requests": 0}
    try:
        text = open(path).read()
    except OSError:
        return r
    if text.lstrip().startswith("{"):
        return parse_bench_json(text, r)
    for line in text.splitlines():
        s = line.split()
        if line.startswith("Requests/sec:"):
            r["rps"] = float(s[1])
        elif len(s) == 2 and s[0] in ("50%", "99%"):
            r["p" + s[0][:-1]] = latency_ms(s[1])
        elif line.startswith("Tail:"):  # bench/latency.lua
            tail = dict(kv.split("=") for kv in s[1:])
            r["p999"] = int(tail["p99.9"]) / 1000.0
        elif "Non-2xx or 3xx responses:" in line:
            r["non2xx"] = int(s[-1])
        elif line.strip().startswith("Socket errors:"):
            r["sockerr"] = sum(int(n) for n in re.findall(r"\d+", line))
        elif re.match(r"\s*\d+ requests in", line):
            r["requests"] = int(s[0])
    return r


def cpu_usage(before, after, requests):
    """CPU figures for one round from "proxy_ticks backend_ticks busy0 total0
    busy1 total1 proxy_sys_ticks" snapshots taken just before and after wrk ran."""
    b = [int(x) for x in before.split()]
    a = [int(x) for x in after.split()]
    clk = int(os.environ.get("BENCH_CLK_TCK", "100"))
    proxy = a[0] - b[0]
    wall0 = max(a[3] - b[3], 1)
    wall1 = max(a[5] - b[5], 1)
    per_req = (lambda ticks: 1e6 * ticks / clk / requests) if requests else (lambda ticks: None)
    return {
        "proxy_cpu": 100.0 * proxy / wall0 if a[0] else None,
        "cpu_us_req": per_req(proxy) if a[0] else None,
        "sys_us_req": per_req(a[6] - b[6]) if a[0] else None,
        "backend_us_req": per_req(a[1] - b[1]) if a[1] else None,
        "core0_us_req": per_req(a[2] - b[2]),
        "cpu1": 100.0 * (a[4] - b[4]) / wall1,
    }


def read_counts():
    """proxy -> (system calls per request, context switches per request)."""
    out = {}
    path = os.environ.get("BENCH_COUNTS")
    if path and os.path.exists(path):
        for line in open(path):
            proxy, n, calls, switches = line.split()
            if int(n) > 0:
                out[proxy] = (int(calls) / int(n), int(switches) / int(n))
    return out


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def main():
    rows = {}
    order = []
    for line in open(os.environ["BENCH_RESULTS"]):
        proxy, rnd, status, path, before, after, _wrk_cpu, other = \
            line.rstrip("\n").split("\t")
        if proxy not in rows:
            rows[proxy] = []
            order.append(proxy)
        res = parse_wrk(path)
        res["round"] = int(rnd)
        res["status"] = status
        res["died"] = status == "died"
        res.update(cpu_usage(before, after, res["requests"]))
        res["other_cpu0"], res["other_cpu1"] = (int(x) for x in other.split())
        rows[proxy].append(res)

    def med(proxy, key):
        vals = [x[key] for x in rows[proxy] if x[key] is not None and x["status"] in ("ok", "loaded")]
        return statistics.median(vals) if vals else None

    base = med("nginx", "rps") if "nginx" in rows else None
    base_cpu = med("nginx", "cpu_us_req") if "nginx" in rows else None
    counts = read_counts()
    summary = []
    for p in order:
        rps = med(p, "rps")
        problems = []
        if any(x["non2xx"] for x in rows[p]):
            problems.append("%d non-2xx/3xx" % sum(x["non2xx"] for x in rows[p]))
        if any(x["sockerr"] for x in rows[p]):
            problems.append("%d socket errors" % sum(x["sockerr"] for x in rows[p]))
        if any(x["died"] for x in rows[p]):
            problems.append("EXITED during run")
        cpu = med(p, "cpu_us_req")
        summary.append({
            "proxy": p,
            "backend_us_req": med(p, "backend_us_req"),
            "core0_us_req": med(p, "core0_us_req"),
            "ceiling": base_cpu / cpu if base_cpu and cpu else None,
            "counts": counts.get(p),
            "rps": rps,
            "p50": med(p, "p50"),
            "p99": med(p, "p99"),
            "p999": med(p, "p999"),
            "ratio": rps / base if rps and base else None,
            "proxy_cpu": med(p, "proxy_cpu"),
            "cpu_us_req": cpu,
            "sys_us_req": med(p, "sys_us_req"),
            "errors": ", ".join(problems) if problems else "0",
        })

    core = "CPU %s busy us/req" % os.environ.get("BENCH_PROXY_CPU", "0")
    header = ["proxy", "req/s (median)", "p50 ms", "p99 ms", "p99.9 ms", "req/s vs nginx",
              "proxy CPU %", "proxy CPU us/req", "of which kernel", "nginx CPU / this",
              "backend us/req", core]
    if counts:
        header += ["syscalls/req", "ctx switches/req"]
    header.append("errors")

    def summary_row(s):
        row = [s["proxy"], fmt(s["rps"], ".0f"), fmt(s["p50"], ".3f"), fmt(s["p99"], ".3f"),
               fmt(s["p999"], ".3f"), fmt(s["ratio"], ".3f") + ("x" if s["ratio"] else ""),
               fmt(s["proxy_cpu"], ".0f"), fmt(s["cpu_us_req"], ".2f"), fmt(s["sys_us_req"], ".2f"),
               fmt(s["ceiling"], ".3f") + ("x" if s["ceiling"] else ""),
               fmt(s["backend_us_req"], ".2f"), fmt(s["core0_us_req"], ".2f")]
        if counts:
            c = s["counts"]
            row += [fmt(c[0] if c else None, ".2f"), fmt(c[1] if c else None, ".3f")]
        return row + [s["errors"]]
    table = [summary_row(s) for s in summary]
    rheader = ["round", "proxy", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "proxy CPU %",
               "proxy CPU us/req", "of which kernel", "load CPU busy %", "other load % (proxy CPU / load CPU)",
               "non-2xx", "socket errors", "used"]
    used = {"ok": "yes", "discarded": "no: other load, repeated",
            "loaded": "yes, despite other load (retries exhausted)",
            "died": "no: proxy exited"}
    rtable = [[str(x["round"]), p, fmt(x["rps"], ".0f"), fmt(x["p50"], ".3f"),
               fmt(x["p99"], ".3f"), fmt(x["p999"], ".3f"), fmt(x["proxy_cpu"], ".0f"), fmt(x["cpu_us_req"], ".2f"),
               fmt(x["sys_us_req"], ".2f"), fmt(x["cpu1"], ".0f"), "%d / %d" % (x["other_cpu0"], x["other_cpu1"]),
               str(x["non2xx"]), str(x["sockerr"]), used.get(x["status"], x["status"])]
              for p in order for x in rows[p]]
    rtable.sort(key=lambda r: int(r[0]))

    def plain(header, table):
        widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
        out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
        return "\n".join(out)

    def markdown(header, table, left):
        out = ["| " + " | ".join(header) + " |",
               "|" + "|".join("---" if h in left else "---:" for h in header) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in table]
        return "\n".join(out)

    left = ("proxy", "errors", "used")
    print(plain(header, table))
    print()
    print(plain(rheader, rtable))
    print()
    md_table = markdown(header, table, left)
    md_rounds = markdown(rheader, rtable, left)
    print(md_table)
    print()
    print(md_rounds)

    now = datetime.datetime.now().astimezone()
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = ["?"]
    doc = [
        "# %s, %s" % (os.environ.get("BENCH_TITLE", "Proxy benchmark"), now.strftime("%Y-%m-%d %H:%M %Z")),
        "",
        "- command: `%s`" % os.environ.get("BENCH_CMD", ""),
        "- load generator: `%s`" % os.environ.get("BENCH_WRK", ""),
        "- pinning: %s" % os.environ.get("BENCH_PINNING", ""),
        "- machine: %d CPUs, %s; load average at end %s" % (os.cpu_count(), cpu_model(), " ".join(load)),
        "- versions: %s" % os.environ.get("BENCH_VERSIONS", ""),
        "- idle check: %s" % os.environ.get("BENCH_PREFLIGHT", "n/a"),
        "- every column is the median over rounds; p50/p99/p99.9 are the client's per-round latency",
        "  percentiles; proxy CPU is the proxy process's user+system time over wall time;",
        "  \"other load\" is CPU time used on each core by anything but the benchmark's own",
        "  processes there (the proxy, hx_backend where the layout puts it, the client); a round with more than",
        "  MAX_OTHER_LOAD % of either is repeated (up to RETRIES times) and not used;",
        "  \"nginx CPU / this\" is nginx's proxy CPU per request over this proxy's (how many",
        "  times nginx's req/s a core spent on this proxy alone would give); \"%s\" is all" % core,
        "  the time that core was busy, per request (the proxy, plus hx_backend in",
        "  LAYOUT=issue, plus other load)%s" % (
            "; syscalls and context switches per request come from a separate counted run"
            " (perf stat on the proxy's process, not timed)" if counts else ""),
        "",
        md_table,
        "",
    ]
    limit = int(os.environ.get("BENCH_MAX_OTHER_LOAD", "10"))
    worst = max((max(x["other_cpu0"], x["other_cpu1"]) for p in order for x in rows[p]
                 if x["status"] in ("ok", "loaded")), default=0)
    if worst > limit:
        note = ("**Warning: in a round that was kept, other processes used %d%% of a "
                "benchmark CPU (limit %d%%); these numbers measure the machine's other load "
                "as much as the proxies. Rerun on an idle machine before drawing "
                "conclusions.**" % (worst, limit))
        print()
        print(note)
        doc += [note, ""]
    doc += [
        "Per round:",
        "",
        md_rounds,
        "",
    ]
    logs = os.environ.get("BENCH_LOGS")
    if logs and os.path.exists(logs):
        text = open(logs).read()
        if text.strip():
            doc += ["## Proxy logs", text]
    with open(os.environ["BENCH_MD"], "w") as f:
        f.write("\n".join(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
