#!/usr/bin/env python3
"""Turn the runs of bench/callgrind.sh into per-request tables.

Input (environment): CG_RESULTS, a TSV of "tool proxy requests run-dir" rows
(tool is callgrind or strace); CG_N1, CG_N2, CG_WARMUP; CG_MD, the markdown
file to write; CG_CMD and CG_VERSIONS, descriptive text. Every per-request
figure is (value of the N2 run - value of the N1 run) / (N2 - N1), which
cancels startup, configuration, warm-up and shutdown.
"""
import collections
import datetime
import os
import re
import sys

TOP = 15


def annotate_functions(path):
    """Self Ir per function name from `callgrind_annotate` output. Inlined parts
    of one function show up under several source files; they are summed."""
    cost = collections.Counter()
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return cost
    for line in lines:
        m = re.match(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[[^\]]*\])?$", line)
        if not m or m.group(2) == "PROGRAM TOTALS":
            continue
        fn = m.group(2).rsplit(":", 1)[-1]
        cost[fn] += int(m.group(1).replace(",", ""))
    return cost


def strace_counts(path):
    """Calls per syscall from an `strace -c` summary."""
    calls = collections.Counter()
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and re.fullmatch(r"[\d.]+", f[0]) and f[-1] != "total":
            calls[f[-1]] += int(f[3])
    return calls


def markdown(header, rows, left=("proxy", "function", "syscall")):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if h in left else "---:" for h in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def main():
    n1, n2 = int(os.environ["CG_N1"]), int(os.environ["CG_N2"])
    warm = int(os.environ.get("CG_WARMUP", "0"))
    dn = n2 - n1
    runs = collections.defaultdict(dict)  # (tool, proxy) -> {n: dir}
    order = []
    for line in open(os.environ["CG_RESULTS"]):
        tool, proxy, n, d = line.rstrip("\n").split("\t")
        runs[(tool, proxy)][int(n)] = d
        if proxy not in order:
            order.append(proxy)

    out = []

    # Instructions per request.
    ir = {}
    rows = []
    for p in order:
        d = runs.get(("callgrind", p))
        if not d:
            continue
        t1 = int(open(os.path.join(d[n1], "total")).read())
        t2 = int(open(os.path.join(d[n2], "total")).read())
        per = (t2 - t1) / dn
        ir[p] = per
        fixed = t1 - per * (n1 + warm)
        rows.append([p, "{:,}".format(t1), "{:,}".format(t2), "{:,.0f}".format(per),
                     "{:,.0f}".format(fixed)])
    base = ir.get("nginx")
    for r in rows:
        r.append("%.3fx" % (ir[r[0]] / base) if base else "n/a")
    out += ["## Instructions (Ir) per proxied request", "",
            markdown(["proxy", "Ir, %d+%d requests" % (warm, n1),
                      "Ir, %d+%d requests" % (warm, n2), "Ir per request",
                      "startup+shutdown Ir (extrapolated)", "Ir/request vs nginx"], rows), ""]

    # Syscalls per request.
    sc = {}
    for p in order:
        d = runs.get(("strace", p))
        if d:
            c1, c2 = strace_counts(os.path.join(d[n1], "strace.txt")), \
                strace_counts(os.path.join(d[n2], "strace.txt"))
            sc[p] = {k: (c2[k] - c1[k]) / dn for k in set(c1) | set(c2)}
    if sc:
        names = sorted({k for p in sc for k, v in sc[p].items() if abs(v) >= 0.05},
                       key=lambda k: -max(sc[p].get(k, 0) for p in sc))
        srows = [[p, "%.2f" % sum(sc[p].values())] + ["%.2f" % sc[p].get(k, 0) for k in names]
                 for p in sc]
        out += ["## System calls per proxied request (strace -f -c, same N1/N2 difference)", "",
                markdown(["proxy", "syscalls/request"] + names, srows), ""]

    # Where the instructions go.
    for p in order:
        d = runs.get(("callgrind", p))
        if not d:
            continue
        f1 = annotate_functions(os.path.join(d[n1], "annotate.txt"))
        f2 = annotate_functions(os.path.join(d[n2], "annotate.txt"))
        diff = {k: (f2[k] - f1[k]) / dn for k in set(f1) | set(f2)}
        top = sorted(diff.items(), key=lambda kv: -kv[1])[:TOP]
        frows = [["`%s`" % k, "{:,.0f}".format(v), "%.1f%%" % (100 * v / ir[p])] for k, v in top]
        out += ["### %s: top %d functions by self Ir per request" % (p, TOP), "",
                markdown(["function", "Ir/request", "share"], frows, left=("function",)), ""]

    body = "\n".join(out)
    print(body)

    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    now = datetime.datetime.now().astimezone()
    doc = ["# Instructions per request (callgrind), %s" % now.strftime("%Y-%m-%d %H:%M %Z"), "",
           "- command: `%s`" % os.environ.get("CG_CMD", ""),
           "- machine: %d CPUs, %s" % (os.cpu_count(), cpu),
           "- versions: %s" % os.environ.get("CG_VERSIONS", ""),
           "- per request = (run with %d+%d requests - run with %d+%d requests) / %d, "
           "one request at a time over one keep-alive connection" % (warm, n2, warm, n1, dn),
           "", body]
    with open(os.environ["CG_MD"], "w") as f:
        f.write("\n".join(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
