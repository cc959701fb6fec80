#!/usr/bin/env bash
# TLS termination: heliosd and nginx, each terminating TLS (one worker
# pinned to PROXY_CPU) in front of the same hx_backend, measured in one run
# with alternating rounds:
#   - h2load over TLS with ALPN h2 (CONNS connections x STREAMS streams);
#   - wrk over TLS (HTTP/1.1, keep-alive).
# With CLIENT=heliosd, `heliosd bench` does both: --http http2 --streams
# STREAMS, then --http http1 (TLS 1.3, ALPN, no certificate check, as the
# other two).
# Both use the same ECDSA P-256 certificate, TLS 1.3, and keep-alive to the
# backend; access logs off. Prints req/s per round, the medians and the
# ratio heliosd / nginx, and writes them to OUT_DIR/tls-<time>.txt.
#
# Usage: bench/tls.sh
# Env:   DURATION=10 (seconds) ROUNDS=3 CONNS=50 STREAMS=10 PROXY_CPU=0 LOAD_CPU=1
#        BUILD_DIR=build NGINX=/usr/sbin/nginx OUT_DIR=bench/results
#        CLIENT=wrk (h2load and wrk; or heliosd: heliosd bench for both)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
STREAMS=${STREAMS:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
NGINX=${NGINX:-/usr/sbin/nginx}
OUT_DIR=${OUT_DIR:-$here/results}

use_build_dir
need_exec "$HELIOSD" "$BACKEND" "$NGINX"
need_tools openssl taskset curl python3
client_check
[ "$CLIENT" = heliosd ] || need_tools h2load

bench_setup heliosd-tls-bench
private_heliosd
read -r pb ph pn < <(free_ports 3)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

cat >"$tmp/heliosd.yaml" <<EOF
workers: 1
listeners:
  - address: 127.0.0.1:$ph
    tls:
      certificates: [{cert: $tmp/cert.pem, key: $tmp/key.pem}]
      protocols: [TLSv1.3]
upstreams:
  app:
    backends: [{address: 127.0.0.1:$pb}]
    keepalive: {max_idle: 128, idle_timeout: 60s}
routes:
  - {match: {prefix: /}, upstream: app}
logging: {level: warn, access_log: off}
EOF

{
    nginx_conf_head "$tmp/nginx" 4096
    cat <<EOF
    upstream b { server 127.0.0.1:$pb; keepalive 128; }
    server {
        listen 127.0.0.1:$pn ssl http2;
        ssl_certificate $tmp/cert.pem;
        ssl_certificate_key $tmp/key.pem;
        ssl_protocols TLSv1.3;
        location / {
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$tmp/nginx.conf"

start_backend backend "$LOAD_CPU" "$pb" --name b
start_heliosd heliosd "$PROXY_CPU" "$tmp/heliosd.yaml"
start_nginx nginx "$PROXY_CPU" "$tmp/nginx.conf" "$tmp/nginx"
for p in $ph $pn; do wait_http "https://127.0.0.1:$p/" -k; done

h2() { # port -> req/s
    if [ "$CLIENT" = heliosd ]; then
        hb_report "$DURATION" "https://127.0.0.1:$1/" --http http2 --streams "$STREAMS" --warmup 1 |
            json_get requests_per_s
        return
    fi
    taskset -c "$LOAD_CPU" h2load -c "$CONNS" -m "$STREAMS" -D "$DURATION" --warm-up-time=1 \
        "https://127.0.0.1:$1/" 2>/dev/null | awk '/^finished in/ {gsub(",","",$4); print $4}'
}
h1() {
    if [ "$CLIENT" = heliosd ]; then
        hb_report "$DURATION" "https://127.0.0.1:$1/" --http http1 | json_get requests_per_s
        return
    fi
    wrk_report "${DURATION}s" "https://127.0.0.1:$1/" | wrk_rps
}

declare -A res
for r in $(seq "$ROUNDS"); do
    for mode in h2 h1; do
        for srv in heliosd nginx; do
            port=$ph; [ $srv = nginx ] && port=$pn
            v=$($mode "$port")
            echo "round $r $mode $srv ${v:-0} req/s"
            res[$mode.$srv]="${res[$mode.$srv]:-} ${v:-0}"
        done
    done
done

out=$(results_path tls txt)
{
    echo "# bench/tls.sh $(date -u '+%F %T UTC'), commit $(bench_commit)"
    echo "# ${DURATION}s x $ROUNDS rounds, $CONNS connections, h2 with $STREAMS streams each; TLS 1.3 P-256; client $(client_name)"
    printf "%-22s %12s %12s %8s\n" "client" "heliosd" "nginx" "ratio"
    for mode in h2 h1; do
        # shellcheck disable=SC2086 # a list of numbers
        hv=$(median ${res[$mode.heliosd]})
        # shellcheck disable=SC2086
        nv=$(median ${res[$mode.nginx]})
        label="h2load (h2 over TLS)"; [ $mode = h1 ] && label="wrk (HTTP/1.1 TLS)"
        if [ "$CLIENT" = heliosd ]; then
            label="heliosd bench (h2)"; [ $mode = h1 ] && label="heliosd bench (h1 TLS)"
        fi
        printf "%-22s %12.0f %12.0f %8.2f\n" "$label" "$hv" "$nv" "$(ratio "$hv" "$nv" 2)"
    done
} | tee "$out"
