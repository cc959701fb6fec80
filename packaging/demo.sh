#!/bin/sh
# One command from a fresh Debian 12 machine to a running demo:
# installs dependencies (as root), builds, starts two demo backends and
# heliosd on the shipped conf.d/ (http://127.0.0.1:8080). Ctrl-C stops all.
#   SKIP_DEPS=1               do not run install-deps.sh
#   SKIP_BUILD=1 BUILD_DIR=D  use an existing build in D (tests do this)
set -eu
cd "$(dirname "$0")/.."
if [ "${SKIP_DEPS:-0}" = 1 ]; then
    :
elif [ "$(id -u)" = 0 ]; then
    sh packaging/install-deps.sh
else
    echo "demo.sh: not root, skipping dependency install (run packaging/install-deps.sh as root)"
fi
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    dir=${BUILD_DIR:?SKIP_BUILD needs BUILD_DIR}
else
    dir=$(sh packaging/build.sh | tail -n 1)
fi
pids=""
cleanup() {
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill $pids 2>/dev/null
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
for spec in demo-a:9001 demo-b:9002; do
    "$dir/hx_backend" --listen "127.0.0.1:${spec#*:}" --name "${spec%%:*}" >/dev/null &
    pids="$pids $!"
done
"$dir/heliosd" -t -c conf.d
cat <<MSG

heliosd demo on http://127.0.0.1:8080 — try:
  curl -i http://127.0.0.1:8080/hello      (static_response module)
  curl http://127.0.0.1:8080/              (proxied, round robin over demo-a/demo-b)
  curl http://127.0.0.1:8080/headers       (what the backend received)
  curl http://127.0.0.1:8080/js            (a JavaScript handler, conf.d/scripts/hello.js)
  curl http://127.0.0.1:8080/js/backends   (JavaScript fetch() to both backends, merged)
  curl --http2-prior-knowledge http://127.0.0.1:8080/   (HTTP/2, h2c)
  curl http://127.0.0.1:9100/metrics       (Prometheus metrics)
Ctrl-C to stop.

MSG
"$dir/heliosd" -c conf.d &
pids="$pids $!"
wait $!
