#!/bin/sh
# Installs every build and test dependency of heliosd on Debian 12 (run as root).
# Idempotent: re-running only installs what is missing.
set -eu

if [ "$(id -u)" != 0 ]; then
    echo "install-deps.sh: run as root (apt-get needs it)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

BUILD="build-essential cmake pkg-config git ca-certificates
 libev-dev node-llhttp libnghttp2-dev libssl-dev libjansson-dev libyaml-dev
 zlib1g-dev libjwt-dev libmicrohttpd-dev libhiredis-dev
 clang-14 libfuzzer-14-dev"
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

apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $BUILD $FETCH $TEST $BENCH
