#!/bin/sh
# Installs every build and test dependency of heliosd on Debian 12 (run as root).
# Idempotent and quick when there is nothing to do: when dpkg already has every
# package, apt-get is not run at all (packaging/demo.sh and packaging/test.sh
# call this first, so either can be the first command on a fresh machine).
set -eu

BUILD="build-essential cmake pkg-config git ca-certificates
 libev-dev node-llhttp libnghttp2-dev libssl-dev libjansson-dev libyaml-dev
 zlib1g-dev libjwt-dev libmicrohttpd-dev libhiredis-dev libsystemd-dev liburing-dev"
# CI builds with clang too, and builds, checks and installs the Debian
# packages (packaging/deb-test.sh); systemd brings systemd-analyze.
PACKAGE="clang-14 libfuzzer-14-dev debhelper lintian fakeroot systemd"
# The build itself fetches the pinned QuickJS sources (npm package qjsc) from
# registry.npmjs.org with CMake and checks their sha512 (modules/js). Node.js
# is for bench/js.sh (the JS handler against node's http). A machine that
# already has node and npm (e.g. from NodeSource, whose nodejs conflicts with
# Debian's npm) keeps them.
FETCH=""
command -v node >/dev/null 2>&1 || FETCH="$FETCH nodejs"
command -v npm >/dev/null 2>&1 || FETCH="$FETCH npm"
TEST="python3 python3-pytest python3-h2 python3-websockets
 python3-prometheus-client python3-yaml python3-jwt python3-cryptography python3-grpcio
 python3-protobuf openssl redis-server curl valgrind procps iproute2"
BENCH="wrk nginx-light haproxy nghttp2-client"
ALL="$BUILD $PACKAGE $FETCH $TEST $BENCH"

# dpkg-query prints one status per package it knows; a package it does not
# know at all makes it exit 1 (and prints nothing for it).
missing() {
    # shellcheck disable=SC2086
    dpkg-query -W -f='${Package} ${Status}\n' $ALL 2>/dev/null |
        awk '$NF == "installed" { have[$1] = 1 }
             END { n = split(want, w, " "); for (i = 1; i <= n; i++) if (!(w[i] in have)) print w[i] }' \
            want="$(echo $ALL)"
}
need=$(missing)
if [ -z "$need" ]; then
    echo "install-deps.sh: every dependency is installed"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-deps.sh: missing:" $need >&2
    echo "install-deps.sh: run as root (apt-get needs it)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $ALL
