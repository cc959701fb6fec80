#!/usr/bin/env bash
# Listener dispatch policies (reuseport, round_robin, least_loaded,
# power_of_two) under skewed connection lifetimes: one heliosd per policy,
# 2 workers each, static responses (no backend), and for every round and
# policy two wrk clients at once:
#   - HEAVY keep-alive connections asking for a BIG-byte body back to back
#     (few, long-lived, most of the CPU);
#   - LIGHT connections of one small request each (`Connection: close`,
#     wrk reconnects), many and short-lived.
# The heavy client starts first so its connections are placed on idle
# workers, as long-lived clients usually are. Per round and policy it
# prints each worker thread's CPU share (from /proc: heliosd-w0, -w1), the
# imbalance (busier worker's CPU / the other's), both clients' req/s and
# p99, and the workers' CPU per request (us/req: less sensitive than req/s
# and p99 to the other load on a shared machine). Every round opens new connections, so reuseport's hash places the
# heavy ones anew. Summary: medians per policy, written to
# OUT_DIR/dispatch-<time>.txt.
#
# HEAVY=0 runs the light client alone: what a hand-off costs per connection.
#
# Usage: bench/dispatch.sh
# Env:   DURATION=8 (seconds) ROUNDS=5 HEAVY=4 LIGHT=32 BIG=32768 CPUS=0,1
#        BUILD_DIR=build OUT_DIR=bench/results POLICIES="reuseport round_robin
#        least_loaded power_of_two"
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
HEAVY=${HEAVY:-4}
LIGHT=${LIGHT:-32}
BIG=${BIG:-32768}
CPUS=${CPUS:-0,1}
BUILD_DIR=${BUILD_DIR:-$root/build}
OUT_DIR=${OUT_DIR:-$here/results}
POLICIES=${POLICIES:-reuseport round_robin least_loaded power_of_two}
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 120 ] || die "DURATION must be 1..120 seconds"
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || die "ROUNDS must be 1..20"
[ "$HEAVY" -ge 0 ] && [ "$LIGHT" -ge 1 ] || die "HEAVY must be >= 0 and LIGHT >= 1"

use_build_dir
need_exec "$HELIOSD"
refuse_sanitizer_build
need_tools wrk taskset curl python3

bench_setup heliosd-dispatch-bench
private_heliosd

head -c "$BIG" /dev/zero | tr '\0' x >"$tmp/big.txt"
declare -A port
for p in $POLICIES; do
    port[$p]=$(free_port)
    cat >"$tmp/$p.yaml" <<EOF
workers: 2
listeners:
  - {address: 127.0.0.1:${port[$p]}, dispatch: $p}
routes:
  - {match: {path: /big}, handler: {module: static_response, config: {body_file: $tmp/big.txt}}}
  - {match: {prefix: /}, handler: {module: static_response, config: {body: "hello\n"}}}
logging: {level: warn, access_log: off}
EOF
    start_heliosd "$p" "$CPUS" "$tmp/$p.yaml"
done
for p in $POLICIES; do wait_http_ok "http://127.0.0.1:${port[$p]}/"; done

# worker_ticks PID -> "TICKS_W0 TICKS_W1": user + system ticks per worker thread
worker_ticks() {
    local t0=0 t1=0 d comm v
    for d in /proc/"$1"/task/*; do
        comm=$(cat "$d/comm" 2>/dev/null) || continue
        v=$(sed 's/.*) //' "$d/stat" | awk '{print $12 + $13}')
        case $comm in
        heliosd-w0) t0=$v ;;
        heliosd-w1) t1=$v ;;
        esac
    done
    echo "$t0 $t1"
}

# a wrk --latency report -> "RPS P99_MS REQUESTS"
wrk_p99() {
    awk '/^Requests\/sec:/ {rps = $2}
         / requests in / {n = $1}
         $1 == "99%" {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
                      ms = (u == "us") ? v / 1000 : (u == "s") ? v * 1000 : v}
         END {printf "%.0f %.2f %d\n", rps, ms, n}' "$1"
}

round() { # policy round -> one result line
    local p=$1 h l a b w0 w1 n0 n1
    h=$tmp/$p.heavy.$2 l=$tmp/$p.light.$2
    read -r a b < <(worker_ticks "${pid[$p]}")
    if [ "$HEAVY" -gt 0 ]; then
        timeout $((DURATION + 30)) taskset -c "$CPUS" wrk -t1 -c"$HEAVY" -d"${DURATION}s" \
            --latency "http://127.0.0.1:${port[$p]}/big" >"$h" 2>&1 &
    else
        sleep "$DURATION" >"$h" & # no heavy client: the light one alone (hand-off cost)
    fi
    local hp=$!
    sleep 0.3
    timeout $((DURATION + 30)) taskset -c "$CPUS" wrk -t1 -c"$LIGHT" -d"$((DURATION - 1))s" \
        --latency -H "Connection: close" "http://127.0.0.1:${port[$p]}/" >"$l" 2>&1 &
    local lp=$!
    bench_child=$hp
    wait "$hp" || true
    bench_child=$lp
    wait "$lp" || true
    bench_child=
    read -r n0 n1 < <(worker_ticks "${pid[$p]}")
    w0=$((n0 - a)) w1=$((n1 - b))
    read -r hr h99 hn < <(wrk_p99 "$h")
    read -r lr l99 ln < <(wrk_p99 "$l")
    awk -v p="$p" -v r="$2" -v w0="$w0" -v w1="$w1" -v hr="$hr" -v h99="$h99" -v lr="$lr" \
        -v l99="$l99" -v n="$((hn + ln))" -v clk="$clk" 'BEGIN {
            t = w0 + w1; hi = w0 > w1 ? w0 : w1; lo = w0 > w1 ? w1 : w0
            printf "%-13s %2d %5.1f %5.1f %6.2f %8d %8.2f %8d %8.2f %6.1f\n", p, r,
                t ? 100 * w0 / t : 0, t ? 100 * w1 / t : 0, lo ? hi / lo : 99, hr, h99, lr, l99,
                n ? t * 1e6 / clk / n : 0 }'
}

hdr=$(printf "%-13s %2s %5s %5s %6s %8s %8s %8s %8s %6s" policy rd w0% w1% imbal heavy/s h_p99ms \
    light/s l_p99ms us/req)
echo "$hdr"
lines=()
for r in $(seq "$ROUNDS"); do
    # rotate the order so no policy always runs first (or last) in a round
    set -- $POLICIES
    for ((k = 0; k < (r - 1) % $#; k++)); do set -- "${@:2}" "$1"; done
    for p in "$@"; do
        line=$(round "$p" "$r")
        echo "$line"
        lines+=("$line")
    done
done

out=$(results_path dispatch txt)
{
    echo "# bench/dispatch.sh $(date -u '+%F %T UTC'), $(bench_heliosd_build "$BUILD_DIR/heliosd")"
    echo "# 2 workers; ${DURATION}s x $ROUNDS rounds; heavy: $HEAVY keep-alive conns GET /big ($BIG B);"
    echo "# light: $LIGHT conns, one GET / (6 B) each (Connection: close); all on CPUs $CPUS (shared machine)"
    echo "$hdr"
    printf '%s\n' "${lines[@]}"
    echo
    echo "# medians per policy (imbal = busier worker's CPU / the other's; us/req = both workers' CPU per request)"
    printf "%-13s %6s %8s %8s %8s %8s %6s\n" policy imbal heavy/s h_p99ms light/s l_p99ms us/req
    for p in $POLICIES; do
        printf '%s\n' "${lines[@]}" | awk -v p="$p" '$1 == p' >"$tmp/sel"
        col() { median $(awk -v c="$1" '{print $c}' "$tmp/sel"); }
        printf "%-13s %6.2f %8.0f %8.2f %8.0f %8.2f %6.1f\n" "$p" "$(col 5)" "$(col 6)" "$(col 7)" \
            "$(col 8)" "$(col 9)" "$(col 10)"
    done
} >"$out"
tail -n $(($(echo "$POLICIES" | wc -w) + 2)) "$out"
echo "written to $out"
