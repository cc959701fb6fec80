#!/usr/bin/env bash
# The floor of a proxied keep-alive request on this machine (issue 18, D70):
# heliosd, nginx and HAProxy (mode http) next to proxies that do no HTTP
# work at all: HAProxy in mode tcp and bench/floor_proxy.c, a bare TCP relay
# (one backend connection per client connection, bytes copied both ways) in
# its epoll and its io_uring form. All in front of the same hx_backend, in
# alternating rounds, through bench/proxy.sh (same pinning, other-load
# check, retries and medians), with a counted run per proxy for system calls
# and context switches per request (perf stat).
#
# What to read: "proxy CPU us/req" of floor-epoll and floor-uring is the
# least any proxy can spend per request here (recv + send on each side and
# the event machinery, nothing else); "nginx CPU / this" is the most req/s a
# core spent on that proxy alone could give relative to nginx. If the relays
# cannot reach a ratio, no HTTP proxy can.
#
# Usage: bench/floor.sh            (see bench/README.md)
# Env:   LAYOUT=issue (wrk alone on LOAD_CPU, proxy and hx_backend on
#        PROXY_CPU: issue 18's setup; split: the proxy alone) CONNS=64
#        PROXIES="heliosd nginx haproxy haproxy-tcp floor-epoll floor-uring"
#        and everything bench/proxy.sh reads (DURATION, ROUNDS, WARMUP,
#        COUNT_DURATION, PROXY_CPU, LOAD_CPU, MAX_OTHER_LOAD, RETRIES, ...)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
export LAYOUT=${LAYOUT:-issue}
export CONNS=${CONNS:-64}
export PROXIES=${PROXIES:-heliosd nginx haproxy haproxy-tcp floor-epoll floor-uring}
export SYSCALLS=${SYSCALLS:-1}
export RESULT_NAME=${RESULT_NAME:-floor-$LAYOUT}
export BENCH_TITLE=${BENCH_TITLE:-Floor of a proxied request (bench/floor.sh)}
exec "$here/proxy.sh"
