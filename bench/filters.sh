#!/usr/bin/env bash
# Cost of the traffic filter chain:
#
#  1. req/s through heliosd with no filter modules vs the full chain with
#     gzip off (request_id, headers, size_limit, rate_limit with a limit far
#     above the load, access_log to a file), one worker, alternating wrk
#     rounds in one run; prints both medians and the ratio (target >= 0.85);
#  2. gzip cost per MiB: CPU seconds heliosd spends serving SIZE_MIB of a
#     compressible body with and without Accept-Encoding: gzip (read from
#     /proc/PID/stat), divided by SIZE_MIB.
#
# Usage: bench/filters.sh
# Env:   DURATION=10s CONNS=50 ROUNDS=3 SIZE_MIB=256 PROXY_CPU=0 LOAD_CPU=1
#        BUILD_DIR=build
# Everything runs on 127.0.0.1 and is bounded; processes are stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
SIZE_MIB=${SIZE_MIB:-256}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}

use_build_dir
need_exec "$HELIOSD" "$BACKEND"
for m in request_id headers size_limit rate_limit access_log gzip; do need_files "$MODULES/$m.so"; done
need_tools wrk taskset curl python3
refuse_sanitizer_build

bench_setup heliosd-filters
bport=$(free_port)
start_backend backend "$LOAD_CPU" "$bport" --name b

common() { # $1 port
    cat <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$1}]
upstreams:
  app:
    backends: [{address: 127.0.0.1:$bport}]
    keepalive: {max_idle: 64, idle_timeout: 60s}
routes:
  - {match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: "off"}
EOF
}

start() { # $1 name, $2 port, $3 extra yaml
    mkdir -p "$tmp/$1"
    { common "$2"; printf '%s\n' "$3"; } >"$tmp/$1/heliosd.yaml"
    start_heliosd "$1" "$PROXY_CPU" "$tmp/$1"
    wait_http "http://127.0.0.1:$2/"
}

p_none=$(free_port)
p_chain=$(free_port)
p_gzip=$(free_port)
start none "$p_none" ""
start chain "$p_chain" "modules:
  - {module: request_id}
  - {module: headers, config: {request: {set: {X-Client: \"\$client_ip\"}}, response: {set: {X-Route: \"\$route\"}}}}
  - {module: size_limit, config: {max_request_body: 1m}}
  - {module: rate_limit, config: {rate: 10000000, burst: 10000000}}
  - {module: access_log, config: {path: $tmp/access.log, format: text}}"
start gzip "$p_gzip" "modules:
  - {module: gzip, config: {types: [application/octet-stream, text/plain], level: 6}}"

rps() { wrk_report "$DURATION" "http://127.0.0.1:$1/" | wrk_rps; } # $1 port -> req/s

echo "# filter chain: $ROUNDS alternating rounds of wrk -t1 -c$CONNS -d$DURATION"
none=() chain=()
for r in $(seq "$ROUNDS"); do
    a=$(rps "$p_none"); b=$(rps "$p_chain")
    none+=("$a"); chain+=("$b")
    echo "round $r: none $a req/s, full chain $b req/s"
done
mn=$(median "${none[@]}")
mc=$(median "${chain[@]}")
echo
echo "| heliosd | req/s (median) | ratio |"
echo "|---|---:|---:|"
echo "| no filter modules | $mn | 1.000 |"
echo "| request_id, headers, size_limit, rate_limit, access_log | $mc | $(ratio "$mc" "$mn") |"

bytes=$((SIZE_MIB * 1048576))
gz_run() { # $1 accept-encoding header or empty -> cpu seconds
    local before after
    before=$(proc_ticks "${pid[gzip]}")
    if [ -n "$1" ]; then
        curl -s -H "Accept-Encoding: $1" -o /dev/null "http://127.0.0.1:$p_gzip/bytes/$bytes"
    else
        curl -s -o /dev/null "http://127.0.0.1:$p_gzip/bytes/$bytes"
    fi
    after=$(proc_ticks "${pid[gzip]}")
    awk -v a="$after" -v b="$before" -v hz="$clk" 'BEGIN{printf "%.3f", (a - b) / hz}'
}
plain=$(gz_run "")
gz=$(gz_run "gzip")
echo
echo "# gzip: $SIZE_MIB MiB of /bytes (a repeating 251-byte pattern: highly compressible)"
echo "| transfer | heliosd CPU s | CPU ms per MiB |"
echo "|---|---:|---:|"
echo "| identity | $plain | $(awk -v c="$plain" -v m="$SIZE_MIB" 'BEGIN{printf "%.2f", c*1000/m}') |"
echo "| gzip level 6 | $gz | $(awk -v c="$gz" -v m="$SIZE_MIB" 'BEGIN{printf "%.2f", c*1000/m}') |"
echo "| gzip cost | | $(awk -v g="$gz" -v p="$plain" -v m="$SIZE_MIB" 'BEGIN{printf "%.2f", (g-p)*1000/m}') |"
