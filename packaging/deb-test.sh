#!/bin/sh
# CI (as root, on its own machine): builds the Debian packages, installs them
# with apt-get, runs the packaged heliosd as the helios user with the
# packaged configuration (through systemd when it runs, else directly, with
# the unit's user and capability), checks a page, the metrics, an admin API
# call signed with the secret postinst made, -s reload and stop, then purges
# and checks nothing is left. Bounded: each wait has a deadline.
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "deb-test.sh: run as root (it installs and purges packages)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
out=$(pwd)/build-deb
log=$(mktemp -d)
pid=""

fail() {
    echo "deb-test.sh: FAILED: $*" >&2
    for f in "$log"/heliosd.out /var/log/helios/error.log; do
        [ -f "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
    done
    exit 1
}
# waits up to $1 seconds for the command that follows to succeed
until_ok() {
    n=$(($1 * 10))
    shift
    while ! "$@" >/dev/null 2>&1; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        sleep 0.1
    done
}
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null
    if dpkg-query -W -f='${Status}' heliosd 2>/dev/null | grep -q installed; then
        apt-get purge -y -q heliosd heliosd-dev >/dev/null 2>&1 || true
    fi
    rm -rf "$log"
}
trap cleanup EXIT

for port in 80 9091 9100; do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        fail "port $port is already in use on this machine"
    fi
done

echo "--- build (dpkg-buildpackage -b) and lintian"
timeout 900 sh packaging/deb-build.sh "$out"

echo "--- apt-get install ./heliosd_*.deb ./heliosd-dev_*.deb"
timeout 300 apt-get install -y -q "$out"/heliosd_*.deb "$out"/heliosd-dev_*.deb >"$log/apt.log" 2>&1 ||
    { cat "$log/apt.log"; fail "apt-get install"; }
getent passwd helios >/dev/null || fail "postinst made no helios user"
[ "$(stat -c '%U %a' /etc/helios/admin.secret)" = "helios 600" ] ||
    fail "/etc/helios/admin.secret is $(stat -c '%U %a' /etc/helios/admin.secret), not helios 600"
grep -q "^/etc/helios/00-server.yaml$" /var/lib/dpkg/info/heliosd.conffiles ||
    fail "/etc/helios is not made of conffiles"
[ -f /usr/share/man/man8/heliosd.8.gz ] && [ -f /etc/logrotate.d/heliosd ] || fail "man page or logrotate file missing"
pkg-config --exists helios-plugin || fail "heliosd-dev: no helios-plugin.pc"
[ -f "$(pkg-config --variable=moduledir helios-plugin)/round_robin.so" ] ||
    fail "pkg-config moduledir is not where the modules are"
unit=/lib/systemd/system/heliosd.service
systemd-analyze verify --man=no "$unit" || fail "systemd-analyze verify $unit"
runuser -u helios -- /usr/sbin/heliosd -t >"$log/check.out" 2>&1 ||
    { cat "$log/check.out"; fail "heliosd -t on /etc/helios as helios"; }

if [ "$(systemctl is-system-running 2>/dev/null || true)" = running ] ||
    [ "$(systemctl is-system-running 2>/dev/null || true)" = degraded ]; then
    echo "--- systemd runs here: systemctl restart heliosd"
    systemctl restart heliosd || fail "systemctl restart heliosd"
    pid=$(systemctl show -P MainPID heliosd)
    via=systemd
else
    echo "--- no systemd here ($(systemctl is-system-running 2>&1 || true)): heliosd as helios, with the unit's capability"
    install -d -o helios -g helios -m 0755 /run/helios # RuntimeDirectory=
    setpriv --reuid=helios --regid=helios --init-groups --inh-caps=+net_bind_service \
        --ambient-caps=+net_bind_service /usr/sbin/heliosd -c /etc/helios >"$log/heliosd.out" 2>&1 &
    pid=$!
    via=direct
fi
until_ok 30 curl -fs -o /dev/null http://127.0.0.1/ || fail "nothing on port 80 after 30 s"
until_ok 10 curl -fs -o /dev/null http://127.0.0.1:9091/v1/health || fail "no admin API"
[ "$(ps -o user= -p "$pid" | tr -d ' ')" = helios ] || fail "heliosd does not run as helios"

echo "--- a page, the metrics, the admin API"
curl -fsS http://127.0.0.1/ | grep -q "heliosd is running" || fail "no welcome page on port 80"
curl -fsS http://127.0.0.1/hello | grep -q "Hello from heliosd" || fail "no /hello"
curl -fsS http://127.0.0.1:9100/metrics | grep -q '^helios_build_info' || fail "no metrics"
token=$(/usr/share/helios/admin-token.sh /etc/helios/admin.secret 600)
curl -fsS -H "Authorization: Bearer $token" http://127.0.0.1:9091/v1/backends |
    grep -q '"name": "demo"' || fail "admin API call with the generated secret"
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9091/v1/backends)
[ "$code" = 401 ] || fail "admin API without a token answered $code"
until_ok 5 grep -q 'GET / HTTP/1.1" 200' /var/log/helios/access.log || fail "no access log line"

echo "--- heliosd -s reload, stop ($via)"
/usr/sbin/heliosd -s reload || fail "heliosd -s reload"
until_ok 10 grep -q "configuration generation 2 is live" /var/log/helios/error.log ||
    fail "no reload after heliosd -s reload"
if [ "$via" = systemd ]; then
    systemctl stop heliosd || fail "systemctl stop heliosd"
else
    /usr/sbin/heliosd -s stop || fail "heliosd -s stop"
    until_ok 45 sh -c "! kill -0 $pid" || fail "heliosd did not stop"
    wait "$pid" || fail "heliosd exited with $?"
fi
pid=""
# (warnings are expected: the demo upstream's backends do not exist here)
if grep '\[error\]' /var/log/helios/error.log; then
    fail "errors in the packaged heliosd's log"
fi

echo "--- apt-get purge"
timeout 300 apt-get purge -y -q heliosd heliosd-dev >"$log/apt.log" 2>&1 ||
    { cat "$log/apt.log"; fail "apt-get purge"; }
for f in /etc/helios /var/log/helios /usr/sbin/heliosd /usr/share/helios \
    /lib/systemd/system/heliosd.service /etc/logrotate.d/heliosd; do
    [ ! -e "$f" ] || fail "$f is left after purge"
done
echo "deb-test.sh: packages built, installed, served as helios ($via), purged: OK"
