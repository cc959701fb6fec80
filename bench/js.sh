#!/usr/bin/env bash
# JS handlers: req/s of "hello world" from
#   - heliosd, js module (a Workers-style addEventListener handler),
#   - heliosd, static_response module (same body),
#   - nginx `return 200 "Hello from Helios!"`,
#   - Node.js (`node`) running an equivalent http.createServer hello world,
# each server a single process/worker pinned to one core (SERVER_CPU), wrk
# pinned to another (LOAD_CPU), in one run: ROUNDS rounds, the servers
# alternating inside each round; prints the medians and the ratios to the
# js handler. Target: js >= node.
#
# Usage: bench/js.sh
# Env:   DURATION=10s CONNS=50 ROUNDS=3 SERVER_CPU=0 LOAD_CPU=1 BUILD_DIR=build
#        NGINX=/usr/sbin/nginx NODE=node
# Everything runs on 127.0.0.1 and is bounded; processes are stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
NGINX=${NGINX:-/usr/sbin/nginx}
NODE=${NODE:-node}
HELIOSD=$BUILD_DIR/heliosd

die() { echo "js.sh: $*" >&2; exit 1; }
[ -x "$HELIOSD" ] || die "$HELIOSD missing: build first"
for m in js static_response; do
    [ -e "$BUILD_DIR/modules/$m.so" ] || die "module $m.so missing in $BUILD_DIR/modules"
done
command -v wrk >/dev/null || die "wrk not installed"
command -v "$NGINX" >/dev/null || die "nginx not found ($NGINX)"
command -v "$NODE" >/dev/null || die "node not found ($NODE)"
grep -q 'HELIOS_SANITIZE:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null &&
    die "$BUILD_DIR is a sanitizer build: its numbers mean nothing"

tmp=$(mktemp -d /tmp/heliosd-js-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.3
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_body() { # $1 port: until it answers the hello body
    for _ in $(seq 200); do
        [ "$(curl -s "http://127.0.0.1:$1/" 2>/dev/null)" = "Hello from Helios!" ] && return 0
        sleep 0.05
    done
    die "nothing answers 'Hello from Helios!' on port $1"
}

BODY='Hello from Helios!'
cat >"$tmp/hello.js" <<'EOF'
addEventListener('fetch', (event) => { event.respondWith(new Response('Hello from Helios!')); });
EOF

heliosd_conf() { # $1 port, $2 handler yaml
    cat <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$1}]
routes:
  - {match: {prefix: /}, handler: $2}
logging: {level: warn, access_log: "off"}
EOF
}

p_js=$(free_port)
mkdir -p "$tmp/js"
heliosd_conf "$p_js" "{module: js, config: {script: $tmp/hello.js}}" >"$tmp/js/heliosd.yaml"
taskset -c "$SERVER_CPU" "$HELIOSD" -c "$tmp/js" -m "$BUILD_DIR/modules" 2>"$tmp/js.err" &
pids+=($!)

p_static=$(free_port)
mkdir -p "$tmp/static"
heliosd_conf "$p_static" "{module: static_response, config: {body: \"$BODY\", content_type: \"text/plain;charset=UTF-8\"}}" \
    >"$tmp/static/heliosd.yaml"
taskset -c "$SERVER_CPU" "$HELIOSD" -c "$tmp/static" -m "$BUILD_DIR/modules" 2>"$tmp/static.err" &
pids+=($!)

p_nginx=$(free_port)
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid $tmp/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/client_body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$p_nginx;
        default_type "text/plain;charset=UTF-8";
        location / { return 200 "$BODY"; }
    }
}
EOF
taskset -c "$SERVER_CPU" "$NGINX" -e stderr -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" 2>"$tmp/nginx.err" &
pids+=($!)

p_node=$(free_port)
cat >"$tmp/hello_node.js" <<EOF
const http = require('http');
http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain;charset=UTF-8' });
  res.end('$BODY');
}).listen($p_node, '127.0.0.1');
EOF
taskset -c "$SERVER_CPU" "$NODE" "$tmp/hello_node.js" 2>"$tmp/node.err" &
pids+=($!)

for p in "$p_js" "$p_static" "$p_nginx" "$p_node"; do wait_body "$p"; done

rps() { # $1 port -> req/s
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$1/" 2>/dev/null |
        sed -n 's/^Requests\/sec:[[:space:]]*//p'
}
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

echo "# hello world, one core each (server CPU $SERVER_CPU, wrk CPU $LOAD_CPU):" \
     "$ROUNDS rounds of wrk -t1 -c$CONNS -d$DURATION"
echo "# $("$NODE" --version | sed 's/^/node /'), $("$NGINX" -v 2>&1 | sed 's/.*: //')"
js=() st=() ng=() nd=()
for r in $(seq "$ROUNDS"); do
    a=$(rps "$p_js"); b=$(rps "$p_static"); c=$(rps "$p_nginx"); d=$(rps "$p_node")
    js+=("$a"); st+=("$b"); ng+=("$c"); nd+=("$d")
    echo "round $r: js $a, static_response $b, nginx $c, node $d req/s"
done
mj=$(median "${js[@]}"); ms=$(median "${st[@]}"); mg=$(median "${ng[@]}"); mn=$(median "${nd[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
echo
echo "| server (1 core) | req/s (median) | js / server |"
echo "|---|---:|---:|"
echo "| heliosd + js (QuickJS) | $mj | 1.00 |"
echo "| heliosd + static_response | $ms | $(ratio "$mj" "$ms") |"
echo "| nginx return 200 | $mg | $(ratio "$mj" "$mg") |"
echo "| node http | $mn | $(ratio "$mj" "$mn") |"
if awk -v a="$mj" -v b="$mn" 'BEGIN{exit !(a >= b)}'; then
    echo "target js >= node: met"
else
    echo "target js >= node: NOT met"
fi
