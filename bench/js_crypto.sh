#!/usr/bin/env bash
# crypto.subtle in a js handler: the cost of one call, as a script sees it
# (`await crypto.subtle.digest(...)`, `await crypto.subtle.sign('HMAC', ...)`,
# promise included). One heliosd worker pinned to SERVER_CPU runs a handler
# that makes N calls in batches of BATCH, timing each batch with
# performance.now(). On a shared machine a batch is often preempted, so the
# fastest batch is the cost (the median is printed too); ROUNDS requests
# per operation. `await null` in the same loop is the baseline: what the
# loop and the await cost alone.
#
# Usage: bench/js_crypto.sh
# Env:   N=20000 BATCH=200 ROUNDS=3 SERVER_CPU=0 BUILD_DIR=build
# Everything runs on 127.0.0.1 and is bounded; heliosd is stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

N=${N:-20000}
BATCH=${BATCH:-200}
ROUNDS=${ROUNDS:-3}
SERVER_CPU=${SERVER_CPU:-0}
BUILD_DIR=${BUILD_DIR:-$root/build}

use_build_dir
need_exec "$HELIOSD"
need_files "$MODULES/js.so"
need_tools taskset curl python3
refuse_sanitizer_build

bench_setup heliosd-js-crypto-bench
cat >"$tmp/crypto.js" <<'EOF'
const enc = new TextEncoder();
let hmacKey;
export default {
  async fetch(request) {
    const u = new URL(request.url);
    const n = Number(u.searchParams.get('n')), size = Number(u.searchParams.get('size'));
    const op = u.searchParams.get('op');
    const data = crypto.getRandomValues(new Uint8Array(Math.min(size, 65536)));
    if (!hmacKey)
      hmacKey = await crypto.subtle.importKey('raw', enc.encode('a 32-byte secret for the bench!!'),
                                              { name: 'HMAC', hash: 'SHA-256' }, false, ['sign', 'verify']);
    const mac = await crypto.subtle.sign('HMAC', hmacKey, data);
    const ops = {
      'await-null': () => null,
      'sha256': () => crypto.subtle.digest('SHA-256', data),
      'hmac-sha256-sign': () => crypto.subtle.sign('HMAC', hmacKey, data),
      'hmac-sha256-verify': () => crypto.subtle.verify('HMAC', hmacKey, mac, data),
    };
    const fn = ops[op], batch = Math.max(1, Number(u.searchParams.get('batch')));
    const per = [];
    for (let done = 0; done < n; done += batch) {
      const t0 = performance.now();
      for (let i = 0; i < batch; i++) await fn();
      per.push(((performance.now() - t0) * 1000) / batch);
    }
    per.sort((a, b) => a - b);
    return Response.json({ op, size, n, min: per[0], median: per[per.length >> 1] });
  },
};
EOF

port=$(free_port)
mkdir -p "$tmp/h"
cat >"$tmp/h/heliosd.yaml" <<EOF
workers: 1
listeners: [{address: 127.0.0.1:$port}]
routes:
  - {match: {prefix: /}, handler: {module: js, config: {script: $tmp/crypto.js, cpu_limit: 60s}}}
logging: {level: warn, access_log: "off"}
EOF
start_heliosd heliosd "$SERVER_CPU" "$tmp/h"
wait_http_ok "http://127.0.0.1:$port/?op=await-null&n=1&size=1&batch=1" ||
    die "heliosd does not answer on port $port (last status $last_code)"

# one request of N calls -> "fastest-batch median-batch" microseconds per call
us() { # $1 op, $2 size
    curl -sS --max-time 120 "http://127.0.0.1:$port/?op=$1&n=$N&size=$2&batch=$BATCH" |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print("%.2f %.2f" % (d["min"], d["median"]))'
}

echo "# crypto.subtle per call in a js handler (QuickJS + OpenSSL $(openssl version | cut -d' ' -f2)):" \
     "$ROUNDS requests of $N calls in batches of $BATCH, heliosd on CPU $SERVER_CPU"
echo "| operation | data | µs per call (fastest batch) | µs per call (median batch) |"
echo "|---|---:|---:|---:|"
for spec in await-null:0 sha256:64 sha256:1024 sha256:16384 hmac-sha256-sign:64 hmac-sha256-sign:1024 \
            hmac-sha256-verify:64; do
    op=${spec%%:*} size=${spec#*:}
    mins=() meds=()
    for _ in $(seq "$ROUNDS"); do
        read -r a b < <(us "$op" "$size")
        mins+=("$a") meds+=("$b")
    done
    best=$(printf '%s\n' "${mins[@]}" | sort -g | sed -n 1p)
    echo "| $op | $size B | $best | $(median "${meds[@]}") |"
done
