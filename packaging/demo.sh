#!/bin/sh
# One command from a fresh Debian 12 machine to a running demo:
# installs dependencies (as root), builds, starts two demo backends and
# heliosd on the shipped conf.d/ (http://127.0.0.1:8080), and prints a token
# for the admin API and the commands to try (README.md). Ctrl-C stops all.
#   SKIP_DEPS=1               do not run install-deps.sh
#   SKIP_BUILD=1 BUILD_DIR=D  use an existing build in D (tests do this)
set -eu
cd "$(dirname "$0")/.."
if [ "${SKIP_DEPS:-0}" != 1 ]; then
    # root installs what is missing; anyone else is told what is missing
    sh packaging/install-deps.sh || [ "$(id -u)" != 0 ]
fi
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    dir=${BUILD_DIR:?SKIP_BUILD needs BUILD_DIR}
else
    dir=$(sh packaging/build.sh | tail -n 1)
fi
pids=""
# admin API changes persist in $STATE_DIRECTORY/state.json (state_file:):
# for the demo a directory of this run's own, so changes survive a reload
# (kill -HUP) but every demo starts from conf.d/ as the README describes
own_state=""
if [ -z "${STATE_DIRECTORY:-}" ]; then
    STATE_DIRECTORY=$(mktemp -d "${TMPDIR:-/tmp}/helios-demo.XXXXXX")
    own_state=$STATE_DIRECTORY
fi
cleanup() {
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill $pids 2>/dev/null
    wait 2>/dev/null || true
    [ -z "$own_state" ] || rm -rf "$own_state"
}
trap cleanup EXIT INT TERM
for spec in demo-a:9001 demo-b:9002; do
    "$dir/hx_backend" --listen "127.0.0.1:${spec#*:}" --name "${spec%%:*}" >/dev/null &
    pids="$pids $!"
done
# The admin API's secret (conf.d/40-admin.yaml): made once, readable only by
# its owner, as admin_api requires; the token printed below is signed with it.
if [ ! -s conf.d/admin.secret ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >conf.d/admin.secret)
fi
token=$(sh packaging/admin-token.sh conf.d/admin.secret 86400)
STATE_DIRECTORY=$STATE_DIRECTORY "$dir/heliosd" -t -c conf.d
echo
echo "heliosd demo on http://127.0.0.1:8080 (README.md, \"Two commands\"). Admin API token, valid 24 h:"
echo
echo "export TOKEN=$token"
echo
echo "Then try (Ctrl-C stops the demo):"
sed -n '/<!-- try:begin -->/,/<!-- try:end -->/p' README.md | grep -v '^<!--' | grep -v '^```'
echo
STATE_DIRECTORY=$STATE_DIRECTORY "$dir/heliosd" -c conf.d &
pids="$pids $!"
wait $!
