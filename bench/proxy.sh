#!/usr/bin/env bash
# Throughput and latency of heliosd, nginx and HAProxy as HTTP/1.1 reverse
# proxies in front of the same hx_backend, measured with wrk (or with
# `heliosd bench`: CLIENT=heliosd) in one run.
#
# Each proxy runs one worker/thread pinned to PROXY_CPU, with keep-alive to the
# upstream and access logging off. Where hx_backend runs is LAYOUT's choice:
#   split (the default)  hx_backend shares LOAD_CPU with wrk, so the proxy is
#                        the only thing on its core;
#   issue                wrk alone on LOAD_CPU, hx_backend on PROXY_CPU with
#                        the proxy (issue 18's "client on one core, proxy and
#                        backend on the other").
# The proxies are measured in alternating rounds (heliosd, nginx, haproxy,
# heliosd, ...) so slow drift of the machine hits all of them alike; the
# table reports the median of rounds.
#
# PROXIES picks which ones run, in that order (nginx is the reference of the
# ratio columns): heliosd, heliosd-uring (the same with `io: uring`, D75),
# nginx, haproxy (mode http), haproxy-tcp (HAProxy
# in mode tcp: no HTTP work), floor-epoll and floor-uring (bench/floor_proxy.c,
# built here: a TCP relay with no HTTP work, epoll or io_uring; needs
# liburing-dev). SYSCALLS=1 adds, after the timed rounds, one counted run
# per proxy (COUNT_DURATION long, not timed): system calls and context
# switches per request, from `perf stat` on the proxy's process.
# bench/floor.sh runs this script with all six and SYSCALLS=1.
#
# Usage: bench/proxy.sh            (see bench/README.md)
# Env:   DURATION=10s CONNS=50 ROUNDS=3 WARMUP=2s THREADS=1 REQ_PATH=/
#        PROXY_CPU=0 LOAD_CPU=1 LAYOUT=split BUILD_DIR=build
#        NGINX=/usr/sbin/nginx HAPROXY=/usr/sbin/haproxy OUT_DIR=bench/results
#        PROXIES="heliosd nginx haproxy" SYSCALLS=0 COUNT_DURATION=3s
#        MAX_OTHER_LOAD=10 RETRIES=2 IDLE_WAIT=60 (see "Other work" below)
#        CLIENT=wrk (or heliosd: heliosd bench from the build's bench module)
#        RESULT_NAME=proxy (the results file's prefix)
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
SYSCALLS=${SYSCALLS:-0}
COUNT_DURATION=${COUNT_DURATION:-3s}
RESULT_NAME=${RESULT_NAME:-proxy}
WRK_THREADS=$THREADS

use_build_dir
read -r -a PROXIES <<<"${PROXIES:-heliosd nginx haproxy}"
[ ${#PROXIES[@]} -ge 1 ] || die "PROXIES is empty"
declare -A want=()
for p in "${PROXIES[@]}"; do
    case $p in
    heliosd | heliosd-uring | nginx | haproxy | haproxy-tcp | floor-epoll | floor-uring) ;;
    *) die "PROXIES: unknown proxy '$p' (heliosd heliosd-uring nginx haproxy haproxy-tcp floor-epoll floor-uring)" ;;
    esac
    [ -z "${want[$p]:-}" ] || die "PROXIES names $p twice"
    want[$p]=1
done

need_exec "$HELIOSD" "$BACKEND"
[ -z "${want[nginx]:-}" ] || need_exec "$NGINX"
[ -z "${want[haproxy]:-}${want[haproxy-tcp]:-}" ] || need_exec "$HAPROXY"
[ -z "${want[floor-epoll]:-}${want[floor-uring]:-}" ] || need_tools cc
need_tools taskset curl python3 timeout
[ "$SYSCALLS" = 0 ] || need_tools perf
client_check
layout_check
[ "$ROUNDS" -ge 1 ] || die "ROUNDS must be >= 1"
dur_s=$(to_seconds "$DURATION")
warm_s=$(to_seconds "$WARMUP")
count_s=$(to_seconds "$COUNT_DURATION")

heliosd_build=$(bench_heliosd_build "$HELIOSD")
bench_setup heliosd-bench
private_heliosd

read -r port_backend port_heliosd port_nginx port_haproxy port_htcp port_fe port_fu port_hu < <(free_ports 8)
declare -A port=([heliosd]=$port_heliosd [nginx]=$port_nginx [haproxy]=$port_haproxy
    [haproxy-tcp]=$port_htcp [floor-epoll]=$port_fe [floor-uring]=$port_fu [heliosd-uring]=$port_hu)

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
sed -e "s/127.0.0.1:$port_heliosd/127.0.0.1:$port_hu/" -e '1a io: uring' \
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

# haproxy_cfg MODE PORT: HAProxy in MODE (http or tcp) on PORT.
haproxy_cfg() {
    cat <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode $1
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 75s
frontend fe
    bind 127.0.0.1:$2
    default_backend be
backend be
    server s1 127.0.0.1:$port_backend
EOF
}
haproxy_cfg http "$port_haproxy" >"$tmp/haproxy.cfg"
haproxy_cfg tcp "$port_htcp" >"$tmp/haproxy-tcp.cfg"

if [ -n "${want[floor-epoll]:-}${want[floor-uring]:-}" ]; then
    cc -O2 -std=gnu17 -o "$tmp/bin/floor_proxy" "$here/floor_proxy.c" -luring 2>"$tmp/floor.cc" ||
        die "bench/floor_proxy.c did not build (liburing-dev missing?): $(head -3 "$tmp/floor.cc")"
fi

# --- processes ------------------------------------------------------------

start_backend backend "$BACKEND_CPU" "$port_backend" --name bench --threads 1
for p in "${PROXIES[@]}"; do
    case $p in
    heliosd*) start_heliosd "$p" "$PROXY_CPU" "$tmp/$p.yaml" ;;
    nginx) start_nginx nginx "$PROXY_CPU" "$tmp/nginx.conf" "$tmp/nginx" ;;
    haproxy*) bench_start "$p" "$PROXY_CPU" "$HAPROXY" -db -f "$tmp/$p.cfg" ;;
    floor-*)
        bench_start "$p" "$PROXY_CPU" "$tmp/bin/floor_proxy" --mode "${p#floor-}" \
            --port "${port[$p]}" --backend "$port_backend"
        wait_ready "$p"
        ;;
    esac
done

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

# Snapshots for one round (round_snapshot, lib.sh) and the other load
# between them (other_load, lib.sh: which of our processes each CPU holds
# follows LAYOUT).
snapshot() { round_snapshot "$1" "${pid[backend]}"; }

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

echo "# $layout_desc" >&2
echo "# ${PROXIES[*]} via $(client_name) -t$THREADS -c$CONNS -d$DURATION, path $REQ_PATH, $ROUNDS rounds" >&2
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

# The counted run (SYSCALLS=1): per proxy, `perf stat` counts system calls
# (raw_syscalls:sys_enter) and context switches of the proxy's process while
# the client runs COUNT_DURATION; divided by the requests the client
# completed. perf's window opens before the client starts and closes after it
# ends, so an idle proxy's few calls around it are counted too.
counts=$tmp/counts.tsv
: >"$counts"
if [ "$SYSCALLS" != 0 ]; then
    for p in "${PROXIES[@]}"; do
        [ -n "${dead[$p]:-}" ] && continue
        wait_idle || true
        bench_start "count-$p" "" perf stat -x, -e raw_syscalls:sys_enter,context-switches \
            -p "${pid[$p]}" -o "$tmp/$p.perf" -- sleep $((count_s + 1))
        sleep 0.3
        bench_run wrk_report "${count_s}s" "$(url "$p")" >"$tmp/$p.count" || true
        wait_exit "${pid[count-$p]}" $((count_s + 10)) || die "perf stat on $p did not end"
        n=$(awk '/ requests in / {print $1}' "$tmp/$p.count")
        sc=$(awk -F, '$3 ~ /raw_syscalls:sys_enter/ {print $1}' "$tmp/$p.perf")
        cs=$(awk -F, '$3 ~ /context-switches/ {print $1}' "$tmp/$p.perf")
        if [ -n "$n" ] && [ -n "$sc" ] && [ -n "$cs" ]; then
            printf '%s\t%s\t%s\t%s\n' "$p" "$n" "$sc" "$cs" >>"$counts"
            echo "count $p: $sc system calls, $cs context switches, $n requests" >&2
        else
            echo "!! count $p: no figures (perf: $(tail -2 "$tmp/$p.perf" 2>/dev/null))" >&2
        fi
    done
fi

# Proxies that logged anything at warn level or above during the run.
logs_note=$tmp/logs.md
: >"$logs_note"
for p in "${PROXIES[@]}"; do
    if [ -s "$tmp/$p.log" ]; then
        n=$(grep -cv '^\s*$' "$tmp/$p.log" || true)
        { echo; echo "$p log ($n lines, last 10):"; echo '```'; tail -10 "$tmp/$p.log"; echo '```'; } >>"$logs_note"
    fi
done

md=$(results_path "$RESULT_NAME" md)

export BENCH_PREFLIGHT=$preflight BENCH_MAX_OTHER_LOAD=$MAX_OTHER_LOAD
export BENCH_CLK_TCK=$clk
export BENCH_RESULTS=$results BENCH_MD=$md BENCH_LOGS=$logs_note BENCH_COUNTS=$counts
export BENCH_PROXY_CPU=$PROXY_CPU BENCH_TITLE=${BENCH_TITLE:-Proxy benchmark}
export BENCH_CMD="CLIENT=$CLIENT LAYOUT=$LAYOUT PROXIES=\"${PROXIES[*]}\" SYSCALLS=$SYSCALLS DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS WARMUP=$WARMUP THREADS=$THREADS REQ_PATH=$REQ_PATH MAX_OTHER_LOAD=$MAX_OTHER_LOAD RETRIES=$RETRIES bench/proxy.sh"
BENCH_WRK=$(client_desc "http://127.0.0.1:PORT$REQ_PATH")
export BENCH_WRK
export BENCH_PINNING=$layout_desc
BENCH_VERSIONS="$("$HELIOSD" -V 2>&1 | first_line) ($heliosd_build)"
[ -z "${want[nginx]:-}" ] || BENCH_VERSIONS="$BENCH_VERSIONS; $("$NGINX" -v 2>&1)"
[ -z "${want[haproxy]:-}${want[haproxy-tcp]:-}" ] ||
    BENCH_VERSIONS="$BENCH_VERSIONS; $("$HAPROXY" -v 2>&1 | first_line | cut -d' ' -f1-3)"
[ -z "${want[floor-epoll]:-}${want[floor-uring]:-}" ] ||
    BENCH_VERSIONS="$BENCH_VERSIONS; floor_proxy (cc -O2, $(cc --version | first_line), liburing $(dpkg-query -W -f '${Version}' liburing-dev 2>/dev/null || echo '?'))"
export BENCH_VERSIONS
python3 "$here/wrk_table.py"
echo "wrote $md" >&2
