#!/usr/bin/env bash
# `workers: 1` against `workers: auto` (one worker per online CPU), in one
# run: a static response and a proxied one (hx_backend, 1 thread), wrk
# -t2 -cCONNS, alternating rounds, nothing pinned (with auto the workers
# need every CPU; wrk and the backend share them, as they would with any
# load generator on the same machine). Reports the median req/s.
#
# Usage: bench/workers.sh           (see bench/README.md)
# Env:   DURATION=5s CONNS=64 ROUNDS=3 BUILD_DIR=build
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
BUILD_DIR=${BUILD_DIR:-$root/build}

use_build_dir
need_exec "$HELIOSD" "$BACKEND"
need_tools wrk curl
refuse_sanitizer_build
bench_setup heliosd-workers
private_heliosd

read -r port_backend port_one port_auto < <(free_ports 3)
start_backend backend "" "$port_backend" --name bench --threads 1
declare -A port=([1]=$port_one [auto]=$port_auto)
for n in 1 auto; do
    static_proxy_conf "$n" "${port[$n]}" "$port_backend" >"$tmp/w$n.yaml"
    start_heliosd "w$n" "" "$tmp/w$n.yaml"
done
for n in 1 auto; do
    wait_http_ok "http://127.0.0.1:${port[$n]}/static" || die "workers $n: no 200: $(tail -5 "$tmp/w$n.log")"
done
cpus=$(nproc)
echo "# workers: 1 vs auto ($cpus CPUs), wrk -t2 -c$CONNS -d$DURATION, $ROUNDS rounds" >&2
results=$tmp/results
: >"$results"
for r in $(seq "$ROUNDS"); do
    for path in /static /; do
        for n in 1 auto; do
            rps=$(timeout $(($(to_seconds "$DURATION") + 30)) wrk -t2 -c"$CONNS" -d"$DURATION" \
                "http://127.0.0.1:${port[$n]}$path" 2>/dev/null | wrk_rps)
            printf '%s\t%s\t%s\n' "$path" "$n" "$rps" >>"$results"
            printf 'round %s  %-8s workers %-5s %10s req/s\n' "$r" "$path" "$n" "$rps" >&2
        done
    done
done
echo
echo "| route | workers: 1 req/s | workers: auto ($cpus) req/s | auto / 1 |"
echo "|---|---:|---:|---:|"
for path in /static /; do
    # shellcheck disable=SC2046
    one=$(median $(awk -F'\t' -v p="$path" '$1 == p && $2 == "1" {print $3}' "$results"))
    # shellcheck disable=SC2046
    auto=$(median $(awk -F'\t' -v p="$path" '$1 == p && $2 == "auto" {print $3}' "$results"))
    name=static
    [ "$path" = / ] && name=proxy
    echo "| $name | $one | $auto | $(ratio "$auto" "$one" 2) |"
done
