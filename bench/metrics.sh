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
. "$here/lib.sh"

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

need_exec "$BUILD_DIR/heliosd" "$BUILD_DIR/hx_backend"
need_files "$MODULE_DIR/metrics.so"
need_tools wrk curl python3 taskset
[ "$CALLGRIND" = 0 ] || command -v valgrind >/dev/null || die "'valgrind' not found (or CALLGRIND=0)"
refuse_sanitizer_build

bench_setup heliosd-metrics
private_heliosd
cp "$MODULE_DIR/metrics.so" "$MODULES/"
echo "# heliosd: commit $(bench_commit)," \
    "binary built $(date -u -r "$BUILD_DIR/heliosd" '+%F %T UTC')," \
    "metrics.so built $(date -u -r "$MODULE_DIR/metrics.so" '+%F %T UTC')"

bport=$(free_port)
start_backend backend "$LOAD_CPU" "$bport" --name b

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
    start_heliosd "$v" "$PROXY_CPU" "$tmp/$v"
    wait_http "http://127.0.0.1:${!port_var}/"
done
# round PORT PID -> "REQ_PER_S CPU_US_PER_REQUEST" (lib.sh's wrk_cpu_round)
round() { wrk_cpu_round "$DURATION" "http://127.0.0.1:$1/" "$2"; }

echo "# req/s: $ROUNDS alternating rounds of wrk -t1 -c$CONNS -d$DURATION, heliosd on CPU $PROXY_CPU, wrk and backend on CPU $LOAD_CPU"
off=() on=() ratios=() cpu_off=() cpu_on=()
for r in $(seq "$ROUNDS"); do
    # which goes first alternates too, so neither always follows the other
    if [ $((r % 2)) = 1 ]; then
        read -r a ca <<<"$(round "$p_off" "${pid[off]}")"
        read -r b cb <<<"$(round "$p_on" "${pid[on]}")"
    else
        read -r b cb <<<"$(round "$p_on" "${pid[on]}")"
        read -r a ca <<<"$(round "$p_off" "${pid[off]}")"
    fi
    [ -n "$a" ] && [ -n "$b" ] || die "wrk gave no result in round $r"
    off+=("$a")
    on+=("$b")
    cpu_off+=("$ca")
    cpu_on+=("$cb")
    ratios+=("$(ratio "$b" "$a")")
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
echo "| metrics module | $mn | $(ratio "$mn" "$mo") | $cn | $(ratio "$cn" "$co") |"
echo "median of the per-round req/s ratios: $(median "${ratios[@]}")"

counted=$(curl -s "http://127.0.0.1:$m_on/metrics" |
    sed -n 's/^helios_http_requests_total{route="app",upstream="app",code="200",class="2xx"} //p')
echo "the metrics instance counted $counted 2xx requests"
[ -n "$counted" ] && [ "$counted" -gt 0 ] || die "the metrics instance counted nothing"

[ "$CALLGRIND" = 0 ] && exit 0

# ---- instructions per request under callgrind ----
measure() { # $1 off|on, $2 requests -> total Ir
    local name=cg-$1-$2 port mport p ir
    local dir=$tmp/$name
    port=$(free_port)
    mport=""
    [ "$1" = on ] && mport=$(free_port)
    write_config "$dir" "$port" "$mport"
    bench_start "$name" "" valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
        "$HELIOSD" -c "$dir" -m "$MODULES"
    p=${pid[$name]}
    bench_run python3 "$here/ka_client.py" --port "$port" --requests "$WARMUP" >/dev/null ||
        die "callgrind $1: warm-up failed: $(tail -3 "$tmp/$name.log")"
    bench_run python3 "$here/ka_client.py" --port "$port" --requests "$2" >/dev/null ||
        die "callgrind $1: requests failed: $(tail -3 "$tmp/$name.log")"
    kill -TERM "$p"
    wait_exit "$p" 60 || die "callgrind $1: heliosd did not stop"
    ir=$(callgrind_total "$dir/callgrind.out")
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
