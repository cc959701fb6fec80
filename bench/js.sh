#!/usr/bin/env bash
# JS handlers: req/s of "hello world" from
#   - heliosd, js module (a Workers-style addEventListener handler), with
#     the static-response probe off (`probe: false`: JavaScript runs for
#     every request),
#   - heliosd, js module, the same handler probed (the default: served as a
#     static response, no JavaScript per request),
#   - heliosd, static_response module (same body),
#   - nginx `return 200 "Hello from Helios!"`,
#   - Node.js (`node`) running an equivalent http.createServer hello world,
# each server a single process/worker pinned to one core (SERVER_CPU), wrk
# pinned to another (LOAD_CPU), in one run: ROUNDS rounds, the servers
# alternating inside each round; prints the medians and the ratios to the
# js handler. Targets: js >= node, js >= 0.8 x nginx (probe off), probed js
# at static_response's rate. With BASE_BUILD_DIR (another build tree,
# e.g. of an earlier commit), the js handler of that build runs in the same
# rounds too: what a change to the module costs the hello path.
#
# Usage: bench/js.sh
# Env:   DURATION=10s CONNS=50 ROUNDS=3 SERVER_CPU=0 LOAD_CPU=1 BUILD_DIR=build
#        NGINX=/usr/sbin/nginx NODE=node BASE_BUILD_DIR=
#        CLIENT=wrk (or heliosd: heliosd bench from the build's bench module)
# Everything runs on 127.0.0.1 and is bounded; processes are stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

DURATION=${DURATION:-10s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BUILD_DIR=${BUILD_DIR:-$root/build}
NGINX=${NGINX:-/usr/sbin/nginx}
NODE=${NODE:-node}

use_build_dir
need_exec "$HELIOSD"
for m in js static_response; do need_files "$MODULES/$m.so"; done
need_tools taskset curl python3 "$NGINX" "$NODE"
client_check
refuse_sanitizer_build

bench_setup heliosd-js-bench
BODY='Hello from Helios!'
printf '%s' "$BODY" >"$tmp/hello.body"
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
heliosd_conf "$p_js" "{module: js, config: {script: $tmp/hello.js, probe: false}}" >"$tmp/js/heliosd.yaml"
start_heliosd js "$SERVER_CPU" "$tmp/js"

p_probed=$(free_port)
mkdir -p "$tmp/probed"
heliosd_conf "$p_probed" "{module: js, config: {script: $tmp/hello.js}}" >"$tmp/probed/heliosd.yaml"
start_heliosd probed "$SERVER_CPU" "$tmp/probed"

p_base=
if [ -n "${BASE_BUILD_DIR:-}" ]; then
    need_exec "$BASE_BUILD_DIR/heliosd"
    need_files "$BASE_BUILD_DIR/modules/js.so"
    p_base=$(free_port)
    mkdir -p "$tmp/base"
    heliosd_conf "$p_base" "{module: js, config: {script: $tmp/hello.js, probe: false}}" >"$tmp/base/heliosd.yaml"
    # a build from before the probe has no `probe` key (and no probe)
    "$BASE_BUILD_DIR/heliosd" -t -c "$tmp/base" -m "$BASE_BUILD_DIR/modules" >/dev/null 2>&1 ||
        heliosd_conf "$p_base" "{module: js, config: {script: $tmp/hello.js}}" >"$tmp/base/heliosd.yaml"
    bench_start base "$SERVER_CPU" "$BASE_BUILD_DIR/heliosd" -c "$tmp/base" -m "$BASE_BUILD_DIR/modules"
fi

p_static=$(free_port)
mkdir -p "$tmp/static"
heliosd_conf "$p_static" "{module: static_response, config: {body: \"$BODY\", content_type: \"text/plain;charset=UTF-8\"}}" \
    >"$tmp/static/heliosd.yaml"
start_heliosd static "$SERVER_CPU" "$tmp/static"

p_nginx=$(free_port)
mkdir -p "$tmp/nginx"
{
    nginx_conf_head "$tmp/nginx" 1024
    cat <<EOF
    server {
        listen 127.0.0.1:$p_nginx;
        default_type "text/plain;charset=UTF-8";
        location / { return 200 "$BODY"; }
    }
}
EOF
} >"$tmp/nginx/nginx.conf"
start_nginx nginx "$SERVER_CPU" "$tmp/nginx/nginx.conf" "$tmp/nginx"

p_node=$(free_port)
cat >"$tmp/hello_node.js" <<EOF
const http = require('http');
http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain;charset=UTF-8' });
  res.end('$BODY');
}).listen($p_node, '127.0.0.1');
EOF
bench_start node "$SERVER_CPU" "$NODE" "$tmp/hello_node.js"

for p in "$p_js" "$p_probed" "$p_static" "$p_nginx" "$p_node" $p_base; do
    wait_http_ok "http://127.0.0.1:$p/" "$tmp/hello.body" ||
        die "nothing answers 200 '$BODY' on port $p (last status $last_code)"
done

rps() { client_rps "$DURATION" "http://127.0.0.1:$1/"; } # $1 port -> req/s

echo "# hello world, one core each (server CPU $SERVER_CPU, $(client_name) CPU $LOAD_CPU):" \
     "$ROUNDS rounds of $(client_desc URL)"
echo "# $("$NODE" --version | sed 's/^/node /'), $("$NGINX" -v 2>&1 | sed 's/.*: //')"
js=() pr=() st=() ng=() nd=() bs=() jc=() bc=()
for r in $(seq "$ROUNDS"); do
    read -r a ca < <(wrk_cpu_round "$DURATION" "http://127.0.0.1:$p_js/" "${pid[js]}")
    b=$(rps "$p_static"); c=$(rps "$p_nginx"); d=$(rps "$p_node"); f=$(rps "$p_probed")
    js+=("$a"); pr+=("$f"); st+=("$b"); ng+=("$c"); nd+=("$d"); jc+=("$ca")
    e= ce=
    if [ -n "$p_base" ]; then
        read -r e ce < <(wrk_cpu_round "$DURATION" "http://127.0.0.1:$p_base/" "${pid[base]}")
        bs+=("$e"); bc+=("$ce")
    fi
    echo "round $r: js $a (${ca} µs CPU/req), js probed $f, static_response $b, nginx $c, node $d${e:+, js (base build) $e (${ce} µs CPU/req)} req/s"
done
mj=$(median "${js[@]}"); mp=$(median "${pr[@]}"); ms=$(median "${st[@]}"); mg=$(median "${ng[@]}"); mn=$(median "${nd[@]}")
echo
echo "| server (1 core) | req/s (median) | js / server |"
echo "|---|---:|---:|"
echo "| heliosd + js (QuickJS), probe off | $mj | 1.00 |"
echo "| heliosd + js, probed (static) | $mp | $(ratio "$mj" "$mp" 2) |"
echo "| heliosd + static_response | $ms | $(ratio "$mj" "$ms" 2) |"
echo "| nginx return 200 | $mg | $(ratio "$mj" "$mg" 2) |"
echo "| node http | $mn | $(ratio "$mj" "$mn" 2) |"
if [ -n "$p_base" ]; then
    mb=$(median "${bs[@]}")
    echo "| heliosd + js, $BASE_BUILD_DIR | $mb | $(ratio "$mj" "$mb" 2) |"
    echo
    echo "heliosd CPU per request (median): js $(median "${jc[@]}") µs, js of $BASE_BUILD_DIR $(median "${bc[@]}") µs"
fi
echo
echo "js (probe off) / nginx: $(ratio "$mj" "$mg" 2) (target >= 0.80); js probed / static_response: $(ratio "$mp" "$ms" 2)"
if awk -v a="$mj" -v b="$mn" 'BEGIN{exit !(a >= b)}'; then
    echo "target js >= node: met"
else
    echo "target js >= node: NOT met"
fi
