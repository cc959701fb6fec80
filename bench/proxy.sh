#!/usr/bin/env bash
# Throughput and latency of heliosd, nginx and HAProxy as HTTP/1.1 reverse
# proxies in front of the same hx_backend, measured with wrk (or with
# `heliosd bench`: CLIENT=heliosd) in one run.
#
# Each proxy runs one worker/thread pinned to PROXY_CPU, with keep-alive to the
# upstream and access logging off. The backend and wrk share LOAD_CPU, so the
# proxy is the only thing on its core. The three proxies are measured in
# alternating rounds (heliosd, nginx, haproxy, heliosd, ...) so slow drift of
# the machine hits all of them alike; the table reports the median of rounds.
#
# Usage: bench/proxy.sh            (see bench/README.md)
# Env:   DURATION=10s CONNS=50 ROUNDS=3 WARMUP=2s THREADS=1 REQ_PATH=/
#        PROXY_CPU=0 LOAD_CPU=1 BUILD_DIR=build NGINX=/usr/sbin/nginx
#        HAPROXY=/usr/sbin/haproxy OUT_DIR=bench/results
#        MAX_OTHER_LOAD=10 RETRIES=2 IDLE_WAIT=60 (see "Other work" below)
#        CLIENT=wrk (or heliosd: heliosd bench from the build's bench module)
#        HELIOSD_URING=1: heliosd twice, `io: epoll` (heliosd) and `io: uring`
#        (heliosd-uring, D75), in the same rounds
#        LAYOUT=issue: hx_backend on PROXY_CPU with the proxy, the client alone
#        on LOAD_CPU (issue 18's setup; the other-load check then counts the
#        backend as other load on PROXY_CPU: use MAX_OTHER_LOAD=100)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}
REQ_PATH=${REQ_PATH:-/}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
NGINX=${NGINX:-/usr/sbin/nginx}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
OUT_DIR=${OUT_DIR:-$here/results}
MAX_OTHER_LOAD=${MAX_OTHER_LOAD:-10}
RETRIES=${RETRIES:-2}
IDLE_WAIT=${IDLE_WAIT:-60}
WRK_THREADS=$THREADS

use_build_dir
PROXIES=(heliosd nginx haproxy)
[ "${HELIOSD_URING:-0}" = 0 ] || PROXIES=(heliosd heliosd-uring nginx haproxy)
LAYOUT=${LAYOUT:-split}
case $LAYOUT in
split) BACKEND_CPU=$LOAD_CPU ;;
issue) BACKEND_CPU=$PROXY_CPU ;;
*) die "LAYOUT must be split or issue" ;;
esac

need_exec "$HELIOSD" "$BACKEND" "$NGINX" "$HAPROXY"
need_tools taskset curl python3 timeout
client_check
[ "$ROUNDS" -ge 1 ] || die "ROUNDS must be >= 1"
dur_s=$(to_seconds "$DURATION")
warm_s=$(to_seconds "$WARMUP")

heliosd_build=$(bench_heliosd_build "$HELIOSD")
bench_setup heliosd-bench
private_heliosd

read -r port_backend port_heliosd port_nginx port_haproxy port_uring < <(free_ports 5)
declare -A port=([heliosd]=$port_heliosd [nginx]=$port_nginx [haproxy]=$port_haproxy
    [heliosd-uring]=$port_uring)

# --- configurations -------------------------------------------------------

cat >"$tmp/heliosd.yaml" <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$port_heliosd}]
upstreams:
  app:
    backends: [{address: 127.0.0.1:$port_backend}]
    keepalive: {max_idle: 64, idle_timeout: 60s}
routes:
  - {match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: off}
EOF
sed -e "s/127.0.0.1:$port_heliosd/127.0.0.1:$port_uring/" -e '1a io: uring' \
    "$tmp/heliosd.yaml" >"$tmp/heliosd-uring.yaml"

# keepalive_requests is raised on both sides because heliosd and HAProxy have
# no per-connection request cap; nginx's default (1000) would make it alone
# reconnect every 1000 requests.
{
    nginx_conf_head "$tmp/nginx" 4096
    cat <<EOF
    keepalive_timeout 75s;
    upstream b {
        server 127.0.0.1:$port_backend;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$port_nginx;
        location / {
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$tmp/nginx.conf"

cat >"$tmp/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 75s
frontend fe
    bind 127.0.0.1:$port_haproxy
    default_backend be
backend be
    server s1 127.0.0.1:$port_backend
EOF

# --- processes ------------------------------------------------------------

start_backend backend "$BACKEND_CPU" "$port_backend" --name bench --threads 1
start_heliosd heliosd "$PROXY_CPU" "$tmp/heliosd.yaml"
[ "${HELIOSD_URING:-0}" = 0 ] || start_heliosd heliosd-uring "$PROXY_CPU" "$tmp/heliosd-uring.yaml"
start_nginx nginx "$PROXY_CPU" "$tmp/nginx.conf" "$tmp/nginx"
bench_start haproxy "$PROXY_CPU" "$HAPROXY" -db -f "$tmp/haproxy.cfg"

url() { echo "http://127.0.0.1:${port[$1]}$REQ_PATH"; }

expected=$tmp/expected.body
curl -sS --max-time 5 -o "$expected" "http://127.0.0.1:$port_backend$REQ_PATH" \
    || die "backend does not answer $REQ_PATH"

# Each proxy must answer 200 with exactly the backend's body before it is measured.
for p in "${PROXIES[@]}"; do
    wait_http_ok "$(url "$p")" "$expected" ||
        die "$p did not return 200 with the backend's body on $(url "$p") (last status $last_code); log: $(tail -5 "$tmp/$p.log")"
done

# --- measurement ----------------------------------------------------------

# Snapshot for one round: proxy ticks, backend ticks, "busy total" for the
# proxy CPU and for the load CPU, then the proxy's system ticks.
snapshot() {
    echo "$(proc_ticks "$1") $(proc_ticks "${pid[backend]}") $(cpu_ticks "$PROXY_CPU")" \
        "$(cpu_ticks "$LOAD_CPU") $(proc_sys_ticks "$1")"
}

# other_load BEFORE AFTER WRK_CPU_SECONDS: percent of each CPU used by anything
# but the proxy (CPU PROXY_CPU) or hx_backend and wrk (CPU LOAD_CPU) between two
# snapshots; prints "proxy-cpu-% load-cpu-%".
other_load() {
    echo "$1 $2 $3" | awk -v clk="$clk" '{
        t0 = $11 - $4; t1 = $13 - $6
        o0 = t0 > 0 ? 100 * (($10 - $3) - ($8 - $1)) / t0 : 0
        o1 = t1 > 0 ? 100 * (($12 - $5) - ($9 - $2) - $15 * clk) / t1 : 0
        printf "%d %d\n", (o0 < 0 ? 0 : o0), (o1 < 0 ? 0 : o1) }'
}

# wrk_run PROXY SECONDS OUTFILE: the client's report (wrk) or JSON (heliosd
# bench) goes to OUTFILE, its CPU seconds (user + system) to OUTFILE.cpu.
# bench/latency.lua adds p99.9 (wrk --latency stops at p99).
wrk_run() { client_timed "$3" "$2" "$(url "$1")" --latency -s "$here/latency.lua"; }

# Other work on the machine distorts everything: wait for quiet first, and
# repeat a round during which something else took more than MAX_OTHER_LOAD %
# of either CPU (at most RETRIES times; discarded rounds are still reported).
if wait_idle; then
    preflight="$idle_state in the second before the run"
else
    preflight="$idle_state in the second before the run (still busy after waiting ${IDLE_WAIT}s)"
    echo "!! the machine is not idle ($idle_state); results will be noisy" >&2
fi
echo "# $preflight" >&2

echo "# heliosd/nginx/haproxy via $(client_name) -t$THREADS -c$CONNS -d$DURATION, path $REQ_PATH, $ROUNDS rounds" >&2
declare -A dead=()
results=$tmp/results.tsv
: >"$results"
for p in "${PROXIES[@]}"; do wrk_run "$p" "$warm_s" "$tmp/$p.warmup"; done
for r in $(seq "$ROUNDS"); do
    for p in "${PROXIES[@]}"; do
        [ -n "${dead[$p]:-}" ] && continue
        for attempt in $(seq 0 "$RETRIES"); do
            out=$tmp/$p.round$r.$attempt
            before=$(snapshot "${pid[$p]}")
            wrk_run "$p" "$dur_s" "$out"
            after=$(snapshot "${pid[$p]}")
            read -r other0 other1 < <(other_load "$before" "$after" "$(cat "$out.cpu")")
            status=ok
            if ! kill -0 "${pid[$p]}" 2>/dev/null; then
                dead[$p]=1
                status=died
                echo "!! $p exited during round $r; log tail:" >&2
                tail -20 "$tmp/$p.log" >&2
            elif [ "$other0" -gt "$MAX_OTHER_LOAD" ] || [ "$other1" -gt "$MAX_OTHER_LOAD" ]; then
                status=loaded
                [ "$attempt" -lt "$RETRIES" ] && status=discarded
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$r" "$status" "$out" "$before" "$after" \
                "$(cat "$out.cpu")" "$other0 $other1" >>"$results"
            awk -v p="$p" -v r="$r" -v s="$status" -v o="other load $other0%/$other1%" \
                '/Requests\/sec/ {printf "round %s %-8s %10s req/s  %s  %s\n", r, p, $2, o, s}' "$out" >&2
            [ "$status" = discarded ] || break
            wait_idle || true
        done
    done
done

# Proxies that logged anything at warn level or above during the run.
logs_note=$tmp/logs.md
: >"$logs_note"
for p in "${PROXIES[@]}"; do
    if [ -s "$tmp/$p.log" ]; then
        n=$(grep -cv '^\s*$' "$tmp/$p.log" || true)
        { echo; echo "$p log ($n lines, last 10):"; echo '```'; tail -10 "$tmp/$p.log"; echo '```'; } >>"$logs_note"
    fi
done

md=$(results_path proxy md)

export BENCH_PREFLIGHT=$preflight BENCH_MAX_OTHER_LOAD=$MAX_OTHER_LOAD
export BENCH_CLK_TCK=$clk
export BENCH_RESULTS=$results BENCH_MD=$md BENCH_LOGS=$logs_note
export BENCH_CMD="HELIOSD_URING=${HELIOSD_URING:-0} LAYOUT=$LAYOUT CLIENT=$CLIENT DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS WARMUP=$WARMUP THREADS=$THREADS REQ_PATH=$REQ_PATH MAX_OTHER_LOAD=$MAX_OTHER_LOAD RETRIES=$RETRIES bench/proxy.sh"
BENCH_WRK=$(client_desc "http://127.0.0.1:PORT$REQ_PATH")
export BENCH_WRK
export BENCH_PINNING="proxy on CPU $PROXY_CPU; hx_backend (1 thread) on CPU $BACKEND_CPU; $(client_name) on CPU $LOAD_CPU"
BENCH_VERSIONS="$("$HELIOSD" -V 2>&1 | first_line) ($heliosd_build); $("$NGINX" -v 2>&1); $("$HAPROXY" -v 2>&1 | first_line | cut -d' ' -f1-3)"
export BENCH_VERSIONS
python3 "$here/wrk_table.py"
echo "wrote $md" >&2
