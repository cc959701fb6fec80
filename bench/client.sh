#!/usr/bin/env bash
# The load generators side by side: `heliosd bench` against wrk (HTTP/1.1)
# and against h2load (h2c), on the same target in the same run, in
# alternating rounds. For each pair it prints the median req/s of both
# clients, the median of their per-round ratios, and each client's own CPU
# per request: user + system time of the client process (bash `time`)
# divided by the requests it completed.
#
# Targets, pinned to SERVER_CPU and idle but when measured:
#   slow      hx_backend's /slow?ms=10: every response takes 10 ms, so
#             CONNS connections make at most CONNS/10ms req/s whatever the
#             client (the target's latency sets the rate)
#   gzip      heliosd gzipping a 64 KiB body from hx_backend for each request
#             (Accept-Encoding: gzip): far more CPU per request than either
#             client, so the server's CPU sets the rate
#   proxy     heliosd (workers: 1, keep-alive upstream) in front of
#             hx_backend, both on SERVER_CPU: more CPU per request than
#             either client, so the server's CPU sets the rate when it gets
#             that CPU; HTTP/1.1, and h2c into heliosd for the h2 pair
#   backend   hx_backend alone: cheaper per request than the clients, so the
#             client is the bottleneck and the req/s compare the clients
# Where the target sets the rate, heliosd bench and the other client must
# agree within 10 % ("within 10 %?"); a CPU-bound target counts only when
# it was at least 90 % busy in the rounds of both clients (on a shared
# machine other processes may take its CPU, and then an HTTP/1.1 target
# also waits for a client that is not scheduled).
# Clients: pinned to LOAD_CPU, one thread, CONNS connections, DURATION s,
# HTTP/1.1 requests with Accept-Encoding: gzip (only the gzip target
# compresses), no warm-up for either (wrk has none; h2load gets
# --warm-up-time=0). The target CPU and other load columns say what the
# bottleneck was.
#
# Usage: bench/client.sh
# Env:   DURATION=5 ROUNDS=3 CONNS=50 STREAMS=10 SERVER_CPU=0 LOAD_CPU=1
#        BUILD_DIR=build OUT_DIR=bench/results H2=1 (0: skip the h2 pair)
# Everything runs on 127.0.0.1 and is bounded; processes are stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
STREAMS=${STREAMS:-10}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
OUT_DIR=${OUT_DIR:-$here/results}
H2=${H2:-1}

use_build_dir
need_exec "$HELIOSD" "$BACKEND"
need_files "$MODULES/bench.so" "$MODULES/round_robin.so" "$MODULES/gzip.so"
need_tools wrk taskset curl python3 timeout
[ "$H2" = 0 ] || need_tools h2load
refuse_sanitizer_build
dur_s=$(to_seconds "$DURATION")

bench_setup heliosd-client-bench
private_heliosd
read -r p_backend p_heliosd < <(free_ports 2)

cat >"$tmp/heliosd.yaml" <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$p_heliosd}]
upstreams:
  app:
    backends: [{address: 127.0.0.1:$p_backend}]
    keepalive: {max_idle: 64, idle_timeout: 60s}
routes:
  - match: {prefix: /bytes/}
    filters: [{module: gzip, config: {types: ["*"], level: 6}}]
    upstream: app
  - {match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: "off"}
EOF
start_backend backend "$SERVER_CPU" "$p_backend" --name bench --threads 1
start_heliosd heliosd "$SERVER_CPU" "$tmp/heliosd.yaml"
wait_http_ok "http://127.0.0.1:$p_heliosd/" || die "heliosd does not answer (last status $last_code)"
hz_ticks() { echo $(($(proc_ticks "${pid[backend]}") + $(proc_ticks "${pid[heliosd]}"))); }

# run CLIENT PROTO URL OUT: one run; OUT gets "req/s requests client_cpu_s
# target_cpu_% other_%" (the target: heliosd and hx_backend together; other:
# what anything else used of the two CPUs, as in proxy.sh)
run() {
    local client=$1 proto=$2 url=$3 out=$4 t0 t1 TIMEFORMAT='%3U %3S'
    t0=$(hz_ticks)
    local c0 l0 c1 l1
    c0=$(cpu_ticks "$SERVER_CPU")
    l0=$(cpu_ticks "$LOAD_CPU")
    { time {
        case $client.$proto in
        wrk.h1) timeout $((dur_s + 30)) taskset -c "$LOAD_CPU" \
            wrk -t1 -c"$CONNS" -d"${dur_s}s" -H 'Accept-Encoding: gzip' "$url" >"$out.raw" 2>&1 & ;;
        h2load.h2) timeout $((dur_s + 30)) taskset -c "$LOAD_CPU" \
            h2load -c "$CONNS" -m "$STREAMS" -D "$dur_s" --warm-up-time=0 "$url" >"$out.raw" 2>&1 & ;;
        heliosd.h1) hb_report "$dur_s" "$url" --http http1 -H 'Accept-Encoding: gzip' >"$out.raw" & ;;
        heliosd.h2) hb_report "$dur_s" "$url" --http http2 --streams "$STREAMS" >"$out.raw" & ;;
        esac
        bench_child=$!
        wait "$bench_child" || true
    }; } 2>"$out.time"
    bench_child=
    t1=$(hz_ticks)
    c1=$(cpu_ticks "$SERVER_CPU")
    l1=$(cpu_ticks "$LOAD_CPU")
    local cpu rps reqs
    cpu=$(awk '{ print $1 + $2 }' "$out.time")
    case $client in
    wrk)
        rps=$(wrk_rps <"$out.raw")
        reqs=$(awk '/requests in/ { print $1 }' "$out.raw")
        ;;
    h2load)
        rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out.raw")
        reqs=$(awk '/^requests:/ { print $8 }' "$out.raw")
        ;;
    heliosd)
        rps=$(json_get requests_per_s <"$out.raw")
        reqs=$(json_get requests <"$out.raw")
        ;;
    esac
    echo "$c0 $c1 $l0 $l1" | awk -v rps="${rps:-0}" -v n="${reqs:-0}" -v cpu="$cpu" \
        -v t="$((t1 - t0))" -v hz="$clk" -v wall="$dur_s" '{
        # busy and total ticks of each CPU; the others: busy minus ours
        ts = $4 - $2; tl = $8 - $6
        os = ts > 0 ? 100 * (($3 - $1) - t) / ts : 0
        ol = tl > 0 ? 100 * (($7 - $5) - cpu * hz) / tl : 0
        printf "%.0f %d %.3f %.0f %d/%d\n", rps, n, cpu, 100 * t / hz / wall,
            os < 0 ? 0 : os, ol < 0 ? 0 : ol }' >"$out"
}

# protocol, target, path, what should limit the rate, the other client.
# latency: the target's response time; cpu: the target's CPU, when it gets
# one (checked: at least 90 % busy); client: the client's CPU.
pairs=("h1 slow /slow?ms=10 latency wrk" "h1 gzip /bytes/65536 cpu wrk" "h1 proxy / cpu wrk"
    "h1 backend / client wrk")
[ "$H2" = 0 ] || pairs+=("h2 proxy / cpu h2load")

echo "# client cross-check: ${dur_s}s rounds x $ROUNDS, -c$CONNS, 1 client thread on CPU $LOAD_CPU," \
     "targets on CPU $SERVER_CPU; h2: $STREAMS streams per connection" >&2
results=$tmp/results
: >"$results"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$ROUNDS"); do
    for pr in "${pairs[@]}"; do
        read -r proto tgt path _ a <<<"$pr"
        b=heliosd
        port=$p_backend
        [ "$tgt" = proxy ] || [ "$tgt" = gzip ] && port=$p_heliosd
        # alternate which client goes first
        order="$a $b"
        [ $((r % 2)) = 0 ] && order="$b $a"
        for c in $order; do
            out=$tmp/$proto.$tgt.$c.$r
            run "$c" "$proto" "http://127.0.0.1:$port$path" "$out"
            read -r rps n cpu tcpu other <"$out"
            printf 'round %s %-3s %-8s %-8s %8s req/s %9s requests  client %6.3f s CPU  target CPU %s%%  other load %s%%\n' \
                "$r" "$proto" "$tgt" "$c" "$rps" "$n" "$cpu" "$tcpu" "$other" >&2
            echo "$proto $tgt $c $r $rps $n $cpu $tcpu $other" >>"$results"
        done
    done
done

md=$(results_path client md)
{
    echo "# bench/client.sh $(date -u '+%F %T UTC'), commit $(bench_commit)"
    echo
    echo "- ${dur_s}s rounds x $ROUNDS, -c$CONNS, one client thread pinned to CPU $LOAD_CPU; targets pinned to CPU $SERVER_CPU; h2c with $STREAMS streams per connection"
    echo "- machine: $(nproc) CPUs, load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "- $("$HELIOSD" -V | first_line); $(wrk -v 2>&1 | first_line | cut -d' ' -f1-2); $(h2load --version 2>/dev/null | first_line)"
    echo
    echo "| protocol | target | client | req/s (median) | heliosd bench / other (median of rounds) | within 10 %? | client CPU us/req (median) | target CPU % |"
    echo "|---|---|---|---:|---:|---|---:|---:|"
    for pr in "${pairs[@]}"; do
        read -r proto tgt _ bound a <<<"$pr"
        for c in "$a" heliosd; do
            mapfile -t rs < <(awk -v p="$proto" -v t="$tgt" -v c="$c" '$1 == p && $2 == t && $3 == c { print $5 }' "$results")
            mapfile -t us < <(awk -v p="$proto" -v t="$tgt" -v c="$c" '$1 == p && $2 == t && $3 == c && $6 > 0 { printf "%.3f\n", $7 * 1e6 / $6 }' "$results")
            mapfile -t tc < <(awk -v p="$proto" -v t="$tgt" -v c="$c" '$1 == p && $2 == t && $3 == c { print $8 }' "$results")
            m=$(median "${rs[@]}")
            if [ "$c" = heliosd ]; then
                # the median of the per-round ratios: both clients of a round
                # ran back to back, so the machine's drift cancels better
                # than in a ratio of medians
                mapfile -t rr < <(awk -v p="$proto" -v t="$tgt" -v a="$a" '
                    $1 == p && $2 == t && $3 == a { o[$4] = $5 }
                    $1 == p && $2 == t && $3 == "heliosd" { h[$4] = $5 }
                    END { for (r in h) if (o[r] > 0) printf "%.4f\n", h[r] / o[r] }' "$results")
                rt=$(printf '%.3f' "$(median "${rr[@]}")")
                ok=$(awk -v x="$rt" 'BEGIN { print (x >= 0.9 && x <= 1.1) ? "yes" : "NO" }')
                [ "$bound" = client ] && ok="n/a: client-bound"
                # a CPU-bound target that did not get its CPU (other
                # processes on it) was not what limited the rate
                if [ "$bound" = cpu ] &&
                    awk -v a="$(median "${tc[@]}")" -v b="$tc_other" 'BEGIN { exit !(a < 90 || b < 90) }'; then
                    ok="n/a: target CPU < 90 %"
                fi
            else
                tc_other=$(median "${tc[@]}")
                rt=""
                ok=""
            fi
            printf '| %s | %s | %s | %.0f | %s | %s | %.2f | %.0f |\n' "$proto" "$tgt" \
                "$([ "$c" = heliosd ] && echo "heliosd bench" || echo "$c")" "$m" "$rt" "$ok" \
                "$(median "${us[@]}")" "$(median "${tc[@]}")"
        done
    done
    echo
    echo "Per round (protocol, target, client, round, req/s, requests, client CPU s, target CPU %,"
    echo "other load % on the target CPU / the client CPU):"
    echo
    echo '```'
    cat "$results"
    echo '```'
} | tee "$md"
echo "wrote $md" >&2
