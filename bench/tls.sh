#!/usr/bin/env bash
# TLS termination: heliosd and nginx, each terminating TLS (one worker
# pinned to PROXY_CPU) in front of the same hx_backend, measured in one run
# with alternating rounds:
#   - h2load over TLS with ALPN h2 (CONNS connections x STREAMS streams);
#   - wrk over TLS (HTTP/1.1, keep-alive).
# Both use the same ECDSA P-256 certificate, TLS 1.3, and keep-alive to the
# backend; access logs off. Prints req/s per round, the medians and the
# ratio heliosd / nginx, and writes them to OUT_DIR/tls-<time>.txt.
#
# Usage: bench/tls.sh
# Env:   DURATION=10 (seconds) ROUNDS=3 CONNS=50 STREAMS=10 PROXY_CPU=0 LOAD_CPU=1
#        BUILD_DIR=build NGINX=/usr/sbin/nginx OUT_DIR=bench/results
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
STREAMS=${STREAMS:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
NGINX=${NGINX:-/usr/sbin/nginx}
OUT_DIR=${OUT_DIR:-$here/results}

die() { echo "tls.sh: $*" >&2; exit 1; }
for bin in "$BUILD_DIR/heliosd" "$BUILD_DIR/hx_backend" "$NGINX"; do
    [ -x "$bin" ] || die "$bin is not executable (build first: sh packaging/build.sh)"
done
for tool in h2load wrk openssl taskset curl python3; do
    command -v "$tool" >/dev/null || die "'$tool' not found"
done

tmp=$(mktemp -d /tmp/heliosd-tls-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

read -r pb ph pn < <(python3 -c '
import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

cp "$BUILD_DIR/heliosd" "$tmp/heliosd"
mkdir -p "$tmp/modules" && cp "$BUILD_DIR"/modules/*.so "$tmp/modules/"

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

mkdir -p "$tmp/nginx"
cat >"$tmp/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid $tmp/nginx/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/cb;
    proxy_temp_path $tmp/nginx/p;
    fastcgi_temp_path $tmp/nginx/f;
    uwsgi_temp_path $tmp/nginx/u;
    scgi_temp_path $tmp/nginx/s;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
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

taskset -c "$LOAD_CPU" "$BUILD_DIR/hx_backend" --listen "127.0.0.1:$pb" --name b >/dev/null &
pids+=($!)
taskset -c "$PROXY_CPU" "$tmp/heliosd" -c "$tmp/heliosd.yaml" -m "$tmp/modules" 2>"$tmp/heliosd.err" &
pids+=($!)
taskset -c "$PROXY_CPU" "$NGINX" -c "$tmp/nginx.conf" -p "$tmp/nginx" 2>"$tmp/nginx.err" &
pids+=($!)
for p in $ph $pn; do
    for _ in $(seq 100); do
        curl -sk -o /dev/null "https://127.0.0.1:$p/" && break
        sleep 0.1
    done
    curl -sk -o /dev/null "https://127.0.0.1:$p/" || die "server on $p did not come up"
done

h2() { # port -> req/s
    taskset -c "$LOAD_CPU" h2load -c "$CONNS" -m "$STREAMS" -D "$DURATION" --warm-up-time=1 \
        "https://127.0.0.1:$1/" 2>/dev/null | awk '/^finished in/ {gsub(",","",$4); print $4}'
}
h1() {
    taskset -c "$LOAD_CPU" wrk -t1 -c "$CONNS" -d "${DURATION}s" "https://127.0.0.1:$1/" 2>/dev/null |
        awk '/^Requests\/sec/ {print $2}'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

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

mkdir -p "$OUT_DIR"
out="$OUT_DIR/tls-$(date -u +%Y%m%d-%H%M%S).txt"
{
    echo "# bench/tls.sh $(date -u '+%F %T UTC'), commit $(git -C "$root" rev-parse --short HEAD)"
    echo "# ${DURATION}s x $ROUNDS rounds, $CONNS connections, h2load $STREAMS streams each; TLS 1.3 P-256"
    printf "%-22s %12s %12s %8s\n" "client" "heliosd" "nginx" "ratio"
    for mode in h2 h1; do
        hv=$(echo ${res[$mode.heliosd]} | tr ' ' '\n' | median)
        nv=$(echo ${res[$mode.nginx]} | tr ' ' '\n' | median)
        label="h2load (h2 over TLS)"; [ $mode = h1 ] && label="wrk (HTTP/1.1 TLS)"
        printf "%-22s %12.0f %12.0f %8.2f\n" "$label" "$hv" "$nv" "$(echo "$hv $nv" | awk '{print ($2>0)?$1/$2:0}')"
    done
} | tee "$out"
