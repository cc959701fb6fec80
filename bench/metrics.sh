#!/usr/bin/env bash
# Cost of the metrics module: heliosd proxying to one hx_backend
# with no modules ("off") and with `modules: [metrics]` on its own listener
# ("on"), one worker each, same backend.
#
#  1. req/s: alternating wrk rounds (off, on, on, off, off, on, ...) in one run;
#     prints every round, both medians and the ratio on/off (target >= 0.97).
#     Also heliosd's CPU time per request in each round (/proc/PID/stat over
#     the requests wrk completed), which other load on a shared machine
#     disturbs less than req/s. A scrape afterwards checks that "on" counted.
#  2. instructions per request (CALLGRIND=1, the default): each instance
#     under valgrind --tool=callgrind for WARMUP+N1 and WARMUP+N2 keep-alive
#     requests (bench/ka_client.py); (Ir(N2) - Ir(N1)) / (N2 - N1) is the
#     cost of one proxied request, and on - off is what the module adds.
#     Unlike req/s on this shared machine, this number is not noisy.
#
# Usage: bench/metrics.sh
# Env:   DURATION=5s CONNS=50 ROUNDS=9 PROXY_CPU=0 LOAD_CPU=1 BUILD_DIR=build
#        MODULE_DIR=$BUILD_DIR/modules CALLGRIND=1 N1=500 N2=2500 WARMUP=100
# Everything runs on 127.0.0.1 and is bounded; processes are stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-9}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
MODULE_DIR=${MODULE_DIR:-$BUILD_DIR/modules}
CALLGRIND=${CALLGRIND:-1}
N1=${N1:-500}
N2=${N2:-2500}
WARMUP=${WARMUP:-100}

die() { echo "metrics.sh: $*" >&2; exit 1; }
[ -x "$BUILD_DIR/heliosd" ] || die "$BUILD_DIR/heliosd missing: build first"
[ -x "$BUILD_DIR/hx_backend" ] || die "$BUILD_DIR/hx_backend missing: build first"
[ -e "$MODULE_DIR/metrics.so" ] || die "metrics.so missing in $MODULE_DIR"
for tool in wrk curl python3 taskset; do command -v "$tool" >/dev/null || die "'$tool' not found"; done
[ "$CALLGRIND" = 0 ] || command -v valgrind >/dev/null || die "'valgrind' not found (or CALLGRIND=0)"
grep -q 'HELIOS_SANITIZE:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null &&
    die "$BUILD_DIR is a sanitizer build: its numbers mean nothing"

tmp=$(mktemp -d /tmp/heliosd-metrics.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy of the binary and modules: build/ may be rebuilt meanwhile.
mkdir -p "$tmp/bin/modules"
cp "$BUILD_DIR/heliosd" "$BUILD_DIR/hx_backend" "$tmp/bin/"
cp "$BUILD_DIR"/modules/*.so "$tmp/bin/modules/"
cp "$MODULE_DIR/metrics.so" "$tmp/bin/modules/"
HELIOSD=$tmp/bin/heliosd
BACKEND=$tmp/bin/hx_backend
echo "# heliosd: commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "binary built $(date -u -r "$BUILD_DIR/heliosd" '+%F %T UTC')," \
    "metrics.so built $(date -u -r "$MODULE_DIR/metrics.so" '+%F %T UTC')"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 200); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.05
    done
    die "nothing answers on port $1"
}

bport=$(free_port)
taskset -c "$LOAD_CPU" "$BACKEND" --listen "127.0.0.1:$bport" --name b >/dev/null &
pids+=($!)
wait_port "$bport"

write_config() { # $1 dir, $2 port, $3 metrics port or empty (off)
    mkdir -p "$1"
    {
        cat <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$2}]
upstreams:
  app:
    backends: [{address: 127.0.0.1:$bport}]
    keepalive: {max_idle: 64, idle_timeout: 60s}
routes:
  - {name: app, match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: "off"}
EOF
        [ -z "$3" ] || printf 'modules:\n  - {module: metrics, config: {listen: "127.0.0.1:%s"}}\n' "$3"
    } >"$1/heliosd.yaml"
}

p_off=$(free_port)
p_on=$(free_port)
m_on=$(free_port)
write_config "$tmp/off" "$p_off" ""
write_config "$tmp/on" "$p_on" "$m_on"
for v in off on; do
    port_var=p_$v
    taskset -c "$PROXY_CPU" "$HELIOSD" -c "$tmp/$v" -m "$tmp/bin/modules" 2>"$tmp/$v.err" &
    pids+=($!)
    eval "pid_$v=$!"
    wait_port "${!port_var}"
done

cpu_us() { # $1 pid -> user+sys microseconds so far
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.0f", ($14 + $15) * 1e6 / hz}' "/proc/$1/stat"
}
# round PORT PID -> "REQ_PER_S CPU_US_PER_REQUEST": wrk's req/s, and the
# heliosd CPU time the round cost divided by the requests wrk completed
# (less sensitive than req/s to other load on a shared machine)
round() {
    local c0 c1 out
    c0=$(cpu_us "$2")
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$1/" 2>/dev/null)
    c1=$(cpu_us "$2")
    awk -v c="$((c1 - c0))" '
        /^Requests\/sec:/ {rps = $2}
        / requests in / {n = $1}
        END {if (rps && n) printf "%s %.2f\n", rps, c / n}' <<<"$out"
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

echo "# req/s: $ROUNDS alternating rounds of wrk -t1 -c$CONNS -d$DURATION, heliosd on CPU $PROXY_CPU, wrk and backend on CPU $LOAD_CPU"
off=() on=() ratios=() cpu_off=() cpu_on=()
for r in $(seq "$ROUNDS"); do
    # which goes first alternates too, so neither always follows the other
    if [ $((r % 2)) = 1 ]; then
        read -r a ca <<<"$(round "$p_off" "$pid_off")"
        read -r b cb <<<"$(round "$p_on" "$pid_on")"
    else
        read -r b cb <<<"$(round "$p_on" "$pid_on")"
        read -r a ca <<<"$(round "$p_off" "$pid_off")"
    fi
    [ -n "$a" ] && [ -n "$b" ] || die "wrk gave no result in round $r"
    off+=("$a")
    on+=("$b")
    cpu_off+=("$ca")
    cpu_on+=("$cb")
    ratios+=("$(awk -v a="$b" -v b="$a" 'BEGIN{printf "%.3f", a/b}')")
    echo "round $r: off $a req/s ($ca us CPU/req), on $b req/s ($cb us CPU/req), ratio ${ratios[-1]}"
done
mo=$(median "${off[@]}")
mn=$(median "${on[@]}")
co=$(median "${cpu_off[@]}")
cn=$(median "${cpu_on[@]}")
echo
echo "| heliosd | req/s (median) | ratio | heliosd CPU us/request (median) | ratio |"
echo "|---|---:|---:|---:|---:|"
echo "| no modules | $mo | 1.000 | $co | 1.000 |"
echo "| metrics module | $mn | $(awk -v a="$mn" -v b="$mo" 'BEGIN{printf "%.3f", a/b}') | $cn | $(awk -v a="$cn" -v b="$co" 'BEGIN{printf "%.3f", a/b}') |"
echo "median of the per-round req/s ratios: $(median "${ratios[@]}")"

counted=$(curl -s "http://127.0.0.1:$m_on/metrics" |
    sed -n 's/^helios_http_requests_total{route="app",upstream="app",code="2xx"} //p')
echo "the metrics instance counted $counted 2xx requests"
[ -n "$counted" ] && [ "$counted" -gt 0 ] || die "the metrics instance counted nothing"

[ "$CALLGRIND" = 0 ] && exit 0

# ---- instructions per request under callgrind ----
measure() { # $1 off|on, $2 requests -> total Ir
    local dir=$tmp/cg-$1-$2 port mport pid ir
    port=$(free_port)
    mport=""
    [ "$1" = on ] && mport=$(free_port)
    write_config "$dir" "$port" "$mport"
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$HELIOSD" -c "$dir" -m "$tmp/bin/modules" >"$dir/log" 2>&1 &
    pid=$!
    pids+=("$pid")
    python3 "$here/ka_client.py" --port "$port" --requests "$WARMUP" >/dev/null ||
        die "callgrind $1: warm-up failed: $(tail -3 "$dir/log")"
    python3 "$here/ka_client.py" --port "$port" --requests "$2" >/dev/null ||
        die "callgrind $1: requests failed: $(tail -3 "$dir/log")"
    kill -TERM "$pid"
    for _ in $(seq 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "callgrind $1: heliosd did not stop"
    ir=$(sed -n 's/^summary: *//p; s/^totals: *//p' "$dir/callgrind.out" | head -1 | awk '{print $1}')
    [ -n "$ir" ] || die "callgrind $1: no totals in $dir/callgrind.out"
    echo "$ir"
}
echo
echo "# instructions per proxied request (callgrind, one keep-alive connection, (Ir(WARMUP+$N2) - Ir(WARMUP+$N1)) / $((N2 - N1)))"
echo "| heliosd | Ir/request |"
echo "|---|---:|"
declare -A per
for v in off on; do
    i1=$(measure "$v" "$N1")
    i2=$(measure "$v" "$N2")
    per[$v]=$(awk -v a="$i2" -v b="$i1" -v n=$((N2 - N1)) 'BEGIN{printf "%.0f", (a-b)/n}')
    echo "| $( [ "$v" = on ] && echo "metrics module" || echo "no modules") | ${per[$v]} |"
done
echo "| metrics cost | $((per[on] - per[off])) ($(awk -v a="${per[on]}" -v b="${per[off]}" 'BEGIN{printf "%.1f", (a-b)*100/b}') %) |"
