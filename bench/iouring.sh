#!/usr/bin/env bash
# libev's io_uring backend against epoll, in one run: the same heliosd binary
# started twice, with LIBEV_FLAGS=4 (EVBACKEND_EPOLL) and LIBEV_FLAGS=128
# (EVBACKEND_IOURING; libev reads LIBEV_FLAGS because heliosd creates its
# loops without EVFLAG_NOENV). Both serve a static response and a proxied one
# (hx_backend behind), with keep-alive and with one connection per request
# (Connection: close), in alternating rounds; the table gives the median
# req/s and the heliosd CPU time per request (less sensitive to other load
# on a shared machine than req/s).
#
# Then, when liburing is installed (liburing-dev), the same comparison for
# bench/uring_spike.c, built here: a bare accept + recv + send HTTP server in
# its epoll form and in its io_uring form (multishot accept, multishot recv
# into provided buffers, submissions batched per loop pass): what io_uring
# can give the data path itself, without libev in between.
#
# Usage: bench/iouring.sh           (see bench/README.md)
# Env:   DURATION=5s CONNS=50 ROUNDS=3 PROXY_CPU=0 LOAD_CPU=1 BUILD_DIR=build
#        SPIKE=1 (0 skips the uring_spike part)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-5s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
SPIKE=${SPIKE:-1}

use_build_dir
need_exec "$HELIOSD" "$BACKEND"
need_tools wrk taskset curl
refuse_sanitizer_build
bench_setup heliosd-iouring
private_heliosd

read -r port_backend port_epoll port_uring < <(free_ports 3)
start_backend backend "$LOAD_CPU" "$port_backend" --name bench --threads 1
declare -A port=([epoll]=$port_epoll [io_uring]=$port_uring)
declare -A flags=([epoll]=4 [io_uring]=128)
for b in epoll io_uring; do
    static_proxy_conf 1 "${port[$b]}" "$port_backend" >"$tmp/$b.yaml"
    bench_start "$b" "$PROXY_CPU" env LIBEV_FLAGS="${flags[$b]}" "$HELIOSD" -c "$tmp/$b.yaml" -m "$MODULES"
done
for b in epoll io_uring; do
    wait_http_ok "http://127.0.0.1:${port[$b]}/static" || die "$b: no 200 on /static: $(tail -5 "$tmp/$b.log")"
    wait_http_ok "http://127.0.0.1:${port[$b]}/" || die "$b: no 200 on /: $(tail -5 "$tmp/$b.log")"
done
# the backend each one really uses (libev falls back silently when a backend
# is unavailable): io_uring shows as an io_uring instance among its fds
uring_fds=$(find "/proc/${pid[io_uring]}/fd" -lname 'anon_inode:\[io_uring\]' 2>/dev/null | wc -l)
[ "$uring_fds" -gt 0 ] || die "heliosd with LIBEV_FLAGS=128 has no io_uring instance: libev fell back"

# table FILE A B CASE...: one row per CASE from FILE's "case side req/s us"
# lines: the medians of sides A and B, and their ratio.
table() {
    local f=$1 a=$2 b=$3 c ar br au bu
    shift 3
    for c; do
        # shellcheck disable=SC2046
        ar=$(median $(awk -F'\t' -v c="$c" -v s="$a" '$1 == c && $2 == s {print $3}' "$f"))
        # shellcheck disable=SC2046
        br=$(median $(awk -F'\t' -v c="$c" -v s="$b" '$1 == c && $2 == s {print $3}' "$f"))
        # shellcheck disable=SC2046
        au=$(median $(awk -F'\t' -v c="$c" -v s="$a" '$1 == c && $2 == s {print $4}' "$f"))
        # shellcheck disable=SC2046
        bu=$(median $(awk -F'\t' -v c="$c" -v s="$b" '$1 == c && $2 == s {print $4}' "$f"))
        echo "| $c | $ar | $br | $(ratio "$br" "$ar") | $au | $bu |"
    done
}

echo "# epoll vs io_uring (libev), wrk -c$CONNS -d$DURATION, $ROUNDS rounds, heliosd on CPU $PROXY_CPU" >&2
results=$tmp/results
declare -A died=()
: >"$results"
cases=("static keep-alive" "static close" "proxy keep-alive" "proxy close")
for r in $(seq "$ROUNDS"); do
    for c in "${cases[@]}"; do
        path=/static
        [ "${c%% *}" = proxy ] && path=/
        hdr=()
        [ "${c##* }" = close ] && hdr=(-H "Connection: close")
        for b in epoll io_uring; do
            if ! alive "${pid[$b]}"; then
                [ -n "${died[$b]:-}" ] || echo "!! heliosd with $b exited: $(tail -2 "$tmp/$b.log")" >&2
                died[$b]=1
                continue
            fi
            read -r rps us < <(wrk_cpu_round "$DURATION" "http://127.0.0.1:${port[$b]}$path" "${pid[$b]}" \
                "${hdr[@]}")
            printf '%s\t%s\t%s\t%s\n' "$c" "$b" "$rps" "$us" >>"$results"
            printf 'round %s  %-18s %-9s %10s req/s  %6s us/req\n' "$r" "$c" "$b" "$rps" "$us" >&2
        done
    done
done

echo
echo "| case | epoll req/s | io_uring req/s | io_uring / epoll | epoll CPU us/req | io_uring CPU us/req |"
echo "|---|---:|---:|---:|---:|---:|"
table "$results" epoll io_uring "${cases[@]}"
for b in epoll io_uring; do
    [ -z "${died[$b]:-}" ] || echo "heliosd with $b exited during the run (its figures are from the rounds before): $(grep -v '^\s*$' "$tmp/$b.log" | tail -1)"
done

[ "$SPIKE" = 1 ] || exit 0
if ! gcc -O2 -std=gnu17 -o "$tmp/uring_spike" "$here/uring_spike.c" -luring 2>"$tmp/spike.cc"; then
    echo
    echo "uring_spike not built (liburing-dev missing?): $(head -3 "$tmp/spike.cc")"
    exit 0
fi
read -r port_se port_su < <(free_ports 2)
declare -A sport=([epoll]=$port_se [uring]=$port_su)
for m in epoll uring; do
    bench_start "spike_$m" "$PROXY_CPU" "$tmp/uring_spike" --mode "$m" --port "${sport[$m]}"
    wait_ready "spike_$m"
done
spike=$tmp/spike
: >"$spike"
for r in $(seq "$ROUNDS"); do
    for c in keep-alive close; do
        hdr=()
        [ "$c" = close ] && hdr=(-H "Connection: close")
        for m in epoll uring; do
            read -r rps us < <(wrk_cpu_round "$DURATION" "http://127.0.0.1:${sport[$m]}/" "${pid[spike_$m]}" \
                "${hdr[@]}")
            printf '%s\t%s\t%s\t%s\n' "$c" "$m" "$rps" "$us" >>"$spike"
            printf 'round %s  spike %-10s %-6s %10s req/s  %6s us/req\n' "$r" "$c" "$m" "$rps" "$us" >&2
        done
    done
done
echo
echo "| uring_spike | epoll req/s | io_uring req/s | io_uring / epoll | epoll CPU us/req | io_uring CPU us/req |"
echo "|---|---:|---:|---:|---:|---:|"
table "$spike" epoll uring keep-alive close
