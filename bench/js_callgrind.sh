#!/usr/bin/env bash
# Instructions per request of the js hello-world handler, counted by
# valgrind --tool=callgrind: a number the other jobs on a shared machine do
# not move, for comparing two builds of the js module (req/s there moves by
# 2x between rounds). heliosd (one worker) runs under callgrind; after
# WARMUP requests its counters are zeroed (callgrind_control -z), then N
# requests are sent one at a time over keep-alive (bench/ka_client.py) and
# the counters dumped, so start-up and the configuration check are not in
# the count. The static-response probe is off (`probe: false`): this counts
# the JavaScript path. With BASE_BUILD_DIR the same is done for that build
# tree.
#
# Usage: bench/js_callgrind.sh
# Env:   N=2000 WARMUP=300 BUILD_DIR=build BASE_BUILD_DIR=
#        REFERENCES=1: also the same handler probed, and static_response
# Everything runs on 127.0.0.1 and is bounded; processes are stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

N=${N:-2000}
WARMUP=${WARMUP:-300}
BUILD_DIR=${BUILD_DIR:-$root/build}

use_build_dir
need_exec "$HELIOSD"
need_files "$MODULES/js.so"
need_tools valgrind callgrind_control python3

bench_setup heliosd-js-callgrind
BODY='Hello from Helios!'
printf '%s' "$BODY" >"$tmp/hello.body"
cat >"$tmp/hello.js" <<'EOF'
addEventListener('fetch', (event) => { event.respondWith(new Response('Hello from Helios!')); });
EOF

# ir_per_request NAME BUILD [HANDLER] -> Ir per request (HANDLER: the
# route's handler in YAML flow style; default the js hello, probe off)
ir_per_request() {
    local name=$1 build=$2 port dir p f
    local handler=${3:-"{module: js, config: {script: $tmp/hello.js, probe: false}}"}
    port=$(free_port)
    dir=$tmp/$name
    mkdir -p "$dir"
    cat >"$dir/heliosd.yaml" <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$port}]
routes:
  - {match: {prefix: /}, handler: $handler}
logging: {level: warn, access_log: "off"}
EOF
    # a build from before the probe has no `probe` key (and no probe)
    "$build/heliosd" -t -c "$dir/heliosd.yaml" -m "$build/modules" >/dev/null 2>&1 ||
        sed -i 's/, probe: false//' "$dir/heliosd.yaml"
    bench_start "$name" "" valgrind --tool=callgrind --compress-strings=no \
        --callgrind-out-file="$dir/callgrind.out" "$build/heliosd" -c "$dir/heliosd.yaml" -m "$build/modules"
    p=${pid[$name]}
    bench_run python3 "$here/ka_client.py" --port "$port" --requests "$WARMUP" --expect-file "$tmp/hello.body" \
        >/dev/null || die "$name: warm-up requests failed; log: $(tail -5 "$tmp/$name.log")"
    callgrind_control -z "$p" >/dev/null 2>&1
    bench_run python3 "$here/ka_client.py" --port "$port" --requests "$N" --expect-file "$tmp/hello.body" \
        >/dev/null || die "$name: measured requests failed; log: $(tail -5 "$tmp/$name.log")"
    callgrind_control -d "$p" >/dev/null 2>&1
    kill -TERM "$p"
    wait_exit "$p" 60 || die "$name did not exit within 60 s"
    # the dump after the zeroing is the largest numbered part
    f=$(ls -S "$dir"/callgrind.out.* | first_line)
    awk -v n="$N" '{printf "%.0f\n", $1 / n}' <<<"$(callgrind_total "$f")"
}

echo "# js hello handler: instructions per request (callgrind), $WARMUP warm-up + $N measured requests"
echo "| build | Ir per request |"
echo "|---|---:|"
a=$(ir_per_request js "$BUILD_DIR")
echo "| $BUILD_DIR | $a |"
if [ -n "${REFERENCES:-}" ]; then
    pr=$(ir_per_request probed "$BUILD_DIR" "{module: js, config: {script: $tmp/hello.js}}")
    echo "| $BUILD_DIR, js probed (the default) | $pr |"
    st=$(ir_per_request static "$BUILD_DIR" \
        "{module: static_response, config: {body: \"$BODY\", content_type: \"text/plain;charset=UTF-8\"}}")
    echo "| $BUILD_DIR, static_response | $st |"
fi
if [ -n "${BASE_BUILD_DIR:-}" ]; then
    need_exec "$BASE_BUILD_DIR/heliosd"
    b=$(ir_per_request base "$BASE_BUILD_DIR")
    echo "| $BASE_BUILD_DIR | $b |"
    echo
    echo "ratio: $(ratio "$a" "$b" 3)"
fi
