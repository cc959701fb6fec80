#!/usr/bin/env bash
# Cost of the load-balancing strategies:
#
#  1. nanoseconds per pick() of every balancer module at 3, 30 and 300
#     backends: bench/pick.c, compiled here with gcc against the build tree's
#     core library (the real loader loads the real modules);
#  2. end-to-end req/s through heliosd for every strategy, and the ratio to
#     round_robin: one heliosd per strategy (1 worker, the same 3 backends),
#     measured with wrk in alternating rounds like bench/proxy.sh (each
#     round starts one strategy later than the one before).
#
# Every wrk request carries an X-Forwarded-For cycling over 1024 client
# addresses and 127.0.0.1 is a trusted proxy, so the hash strategies spread
# over the three backends as real clients would, and every strategy does the
# same header work.
#
# Usage: bench/strategies.sh          (see bench/README.md)
# Env:   DURATION=10s CONNS=50 ROUNDS=3 WARMUP=2s PICK_MS=200 PICK_ROUNDS=7
#        PROXY_CPU=0 LOAD_CPU=1 BUILD_DIR=build OUT_DIR=bench/results
#        MAX_OTHER_LOAD=10 RETRIES=2 IDLE_WAIT=60 (as in proxy.sh: a round
#        during which something else used more than MAX_OTHER_LOAD % of a
#        CPU is repeated, at most RETRIES times, and reported)
#        SKIP_E2E=1 (pick only) SKIP_PICK=1 (end-to-end only)
#        STRATEGIES="round_robin maglev" (a subset; round_robin is required)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
PICK_MS=${PICK_MS:-200}
PICK_ROUNDS=${PICK_ROUNDS:-7}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
OUT_DIR=${OUT_DIR:-$here/results}
MAX_OTHER_LOAD=${MAX_OTHER_LOAD:-10}
RETRIES=${RETRIES:-2}
IDLE_WAIT=${IDLE_WAIT:-60}
SKIP_E2E=${SKIP_E2E:-0}
SKIP_PICK=${SKIP_PICK:-0}

# STRATEGIES="round_robin maglev" bench/strategies.sh compares a subset
# (round_robin must be in it: it is the reference).
read -r -a STRATEGIES <<<"${STRATEGIES:-round_robin weighted_round_robin least_connections \
power_of_two ip_hash ip_hash_consistent maglev}"
use_build_dir
[[ " ${STRATEGIES[*]} " == *" round_robin "* ]] || die "STRATEGIES must include round_robin"

need_exec "$HELIOSD" "$BACKEND"
need_files "$BUILD_DIR/core/libhxcore.a" "$BUILD_DIR/libhx_llhttp.a"
for s in "${STRATEGIES[@]}"; do need_files "$MODULES/$s.so"; done
need_tools gcc pkg-config wrk taskset curl python3 timeout
refuse_sanitizer_build
build_type=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null || true)
dur_s=$(to_seconds "$DURATION")
warm_s=$(to_seconds "$WARMUP")

bench_setup heliosd-strategies

report=$tmp/report.md
{
    echo "machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | first_line)"
    echo "kernel: $(uname -r); gcc $(gcc -dumpversion); $(wrk --version 2>&1 | first_line | cut -d' ' -f1-2)"
    echo "heliosd: $HELIOSD ($build_type, built $(date -u -r "$HELIOSD" '+%Y-%m-%d %H:%M:%S UTC')), tree at" \
        "commit $(bench_commit) plus" \
        "$(git -C "$root" status --porcelain 2>/dev/null | wc -l) uncommitted paths"
    echo
} >"$report"

# --- 1. ns per pick --------------------------------------------------------

if [ "$SKIP_PICK" != 1 ]; then
    # The same compile definitions, include paths and libraries as the unit
    # tests that link hxcore (core/CMakeLists.txt).
    pick_cmd=(gcc -std=c17 -O2 -g -Wall -Wextra -Werror -D_GNU_SOURCE
        -I"$root/core" -I"$root/plugins-sdk/include" -isystem /usr/share/include/llhttp
        "$here/pick.c" "$BUILD_DIR/core/libhxcore.a" "$BUILD_DIR/libhx_llhttp.a"
        $(pkg-config --libs yaml-0.1 openssl libnghttp2 zlib) -lev -lpthread -ldl -lm
        -o "$tmp/pick")
    "${pick_cmd[@]}" || die "bench/pick.c did not compile"
    echo "# ns per pick: taskset -c $PROXY_CPU pick $MODULES $PICK_MS $PICK_ROUNDS" >&2
    {
        echo "### ns per pick"
        echo
        echo "Median of $PICK_ROUNDS runs of >= $PICK_MS ms each, one thread pinned to CPU $PROXY_CPU;"
        echo "1024 requests with distinct client addresses cycled; in-flight counts 0..7."
        echo
        taskset -c "$PROXY_CPU" "$tmp/pick" "$MODULES" "$PICK_MS" "$PICK_ROUNDS"
        echo
    } | tee -a "$report"
fi

# --- 2. end-to-end req/s ----------------------------------------------------

if [ "$SKIP_E2E" != 1 ]; then
    read -r -a ports < <(free_ports $((${#STRATEGIES[@]} + 3)))
    bports=("${ports[@]:0:3}")
    backend_pids=()
    for i in 0 1 2; do
        start_backend "backend$i" "$LOAD_CPU" "${bports[$i]}" --name "b$i" --threads 1
        backend_pids+=("${pid[backend$i]}")
    done

    declare -A port
    k=3
    for s in "${STRATEGIES[@]}"; do
        port[$s]=${ports[$k]}
        k=$((k + 1))
        mkdir -p "$tmp/$s"
        cat >"$tmp/$s/heliosd.yaml" <<EOF
workers: 1
listeners: [{address: 127.0.0.1:${port[$s]}}]
trusted_proxies: [127.0.0.1/32]
upstreams:
  app:
    balancer: $s
    backends:
      - {name: b0, address: 127.0.0.1:${bports[0]}}
      - {name: b1, address: 127.0.0.1:${bports[1]}}
      - {name: b2, address: 127.0.0.1:${bports[2]}}
    keepalive: {max_idle: 64, idle_timeout: 60s}
routes:
  - {match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: off}
EOF
        start_heliosd "$s" "$PROXY_CPU" "$tmp/$s/heliosd.yaml"
    done

    # wrk: 1024 prepared requests, each with its own X-Forwarded-For.
    cat >"$tmp/xff.lua" <<'EOF'
local reqs, n = {}, 0
init = function(args)
  for i = 1, 1024 do
    reqs[i] = wrk.format("GET", "/", {["X-Forwarded-For"] =
      string.format("10.%d.%d.%d", (i * 7) % 256, math.floor(i / 256), i % 256)})
  end
end
request = function()
  n = n % 1024 + 1
  return reqs[n]
end
EOF

    for s in "${STRATEGIES[@]}"; do
        wait_http_ok "http://127.0.0.1:${port[$s]}/" ||
            die "heliosd with $s does not answer 200: $(tail -5 "$tmp/$s.log")"
    done

    backend_ticks() { local t=0 p; for p in "${backend_pids[@]}"; do t=$((t + $(proc_ticks "$p"))); done; echo $t; }

    # wrk_run STRATEGY SECONDS OUT: wrk's report in OUT, its CPU seconds in OUT.cpu.
    wrk_run() { wrk_timed "$3" "$2" "http://127.0.0.1:${port[$1]}/" --latency -s "$tmp/xff.lua"; }

    echo "# end-to-end: wrk -t1 -c$CONNS -d$DURATION, $ROUNDS rounds, alternating strategies" >&2
    wait_idle || echo "!! the machine is not idle; results will be noisy" >&2
    for s in "${STRATEGIES[@]}"; do wrk_run "$s" "$warm_s" "$tmp/$s.warmup"; done
    rows=$tmp/rows.tsv
    : >"$rows"
    nstrat=${#STRATEGIES[@]}
    for r in $(seq "$ROUNDS"); do
        # each round starts one strategy later: none is always first
        for k in $(seq 0 $((nstrat - 1))); do
            s=${STRATEGIES[$(((k + r - 1) % nstrat))]}
            for attempt in $(seq 0 "$RETRIES"); do
                out=$tmp/$s.round$r.$attempt
                b_h=$(proc_ticks "${pid[$s]}"); b_b=$(backend_ticks)
                read -r b_pb b_pt < <(cpu_ticks "$PROXY_CPU"); read -r b_lb b_lt < <(cpu_ticks "$LOAD_CPU")
                wrk_run "$s" "$dur_s" "$out"
                a_h=$(proc_ticks "${pid[$s]}"); a_b=$(backend_ticks)
                read -r a_pb a_pt < <(cpu_ticks "$PROXY_CPU"); read -r a_lb a_lt < <(cpu_ticks "$LOAD_CPU")
                kill -0 "${pid[$s]}" 2>/dev/null || die "heliosd with $s exited: $(tail -20 "$tmp/$s.log")"
                # other load, %: the proxy CPU minus heliosd; the load CPU minus backends and wrk
                read -r o0 o1 < <(awk -v h=$((a_h - b_h)) -v b=$((a_b - b_b)) -v w="$(cat "$out.cpu")" \
                    -v clk="$clk" -v pb=$((a_pb - b_pb)) -v pt=$((a_pt - b_pt)) \
                    -v lb=$((a_lb - b_lb)) -v lt=$((a_lt - b_lt)) 'BEGIN {
                        o0 = pt > 0 ? 100 * (pb - h) / pt : 0; o1 = lt > 0 ? 100 * (lb - b - w * clk) / lt : 0
                        printf "%d %d\n", (o0 < 0 ? 0 : o0), (o1 < 0 ? 0 : o1) }')
                status=ok
                if [ "$o0" -gt "$MAX_OTHER_LOAD" ] || [ "$o1" -gt "$MAX_OTHER_LOAD" ]; then
                    status=loaded
                    [ "$attempt" -lt "$RETRIES" ] && status=discarded
                fi
                printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$r" "$out" "$((a_h - b_h))" "$o0 $o1" \
                    "$status" >>"$rows"
                awk -v s="$s" -v r="$r" -v o="other load $o0%/$o1%" -v st="$status" \
                    '/Requests\/sec/ {printf "round %s %-22s %10s req/s  %s  %s\n", r, s, $2, o, st}' "$out" >&2
                [ "$status" = discarded ] || break
                wait_idle || true
            done
        done
    done

    python3 - "$rows" "$clk" "$dur_s" "$CONNS" "$ROUNDS" "$MAX_OTHER_LOAD" <<'EOF' | tee -a "$report"
import re, statistics, sys
rows, clk, dur, conns, rounds, maxo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
data, order, discarded = {}, [], []
for line in open(rows):
    s, r, out, hticks, other, status = line.rstrip("\n").split("\t")
    text = open(out).read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    n = re.search(r"(\d+) requests in", text)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", text, re.M)
    errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    errs += sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    rps = float(m.group(1)) if m else 0.0
    if status == "discarded":
        discarded.append(f"{s} round {r}: {rps:.0f} req/s, other load {other.replace(' ', '/')} %")
        continue
    reqs = int(n.group(1)) if n else 0
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    d = data.setdefault(s, {"rps": [], "us": [], "cpu": [], "other": [], "p99": [], "errors": 0, "loaded": 0})
    if s not in order:
        order.append(s)
    d["rps"].append(rps)
    d["us"].append(int(hticks) / clk * 1e6 / reqs if reqs else float("nan"))
    d["cpu"].append(100.0 * int(hticks) / clk / dur)
    d["other"].append(other.replace(" ", "/"))
    d["p99"].append(float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"))
    d["errors"] += errs
    d["loaded"] += status == "loaded"
med = {s: statistics.median(d["rps"]) for s, d in data.items()}
us = {s: statistics.median(d["us"]) for s, d in data.items()}
base, base_us = med["round_robin"], us["round_robin"]
print(f"### end-to-end through heliosd (1 worker, 3 backends, wrk -t1 -c{conns}, {rounds} rounds of {dur} s)")
print()
print("| strategy | req/s (median) | vs round_robin | p99 ms | heliosd CPU % | CPU us/req | vs round_robin | errors | req/s per round | other load % (proxy/load CPU) per round |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
for s in order:
    d = data[s]
    print(f"| {s} | {med[s]:.0f} | {100 * med[s] / base:.1f} % | {statistics.median(d['p99']):.2f} | "
          f"{statistics.median(d['cpu']):.0f} | {us[s]:.2f} | {100 * us[s] / base_us:.1f} % | "
          f"{d['errors']} | {' / '.join(f'{x:.0f}' for x in d['rps'])} | {' '.join(d['other'])} |")
print()
loaded = sum(d["loaded"] for d in data.values())
if loaded:
    print(f"{loaded} kept round(s) still had more than {maxo} % other load after every retry.")
if discarded:
    print(f"Discarded (other load above {maxo} %, repeated): " + "; ".join(discarded) + ".")
print()
EOF
fi

md=$(results_path strategies md)
{
    echo "# bench/strategies.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`STRATEGIES=\"${STRATEGIES[*]}\" DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS WARMUP=$WARMUP PICK_MS=$PICK_MS PICK_ROUNDS=$PICK_ROUNDS PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU MAX_OTHER_LOAD=$MAX_OTHER_LOAD RETRIES=$RETRIES bench/strategies.sh\`"
    echo
    cat "$report"
} >"$md"
echo "# written to $md" >&2
