#!/bin/sh
# Configures and builds heliosd into BUILD_DIR (default build/).
#   SANITIZE=1   ASan+UBSan build (default dir build-asan/)
set -eu
cd "$(dirname "$0")/.."
if [ "${SANITIZE:-0}" = 1 ]; then
    dir=${BUILD_DIR:-build-asan}
    san=ON
else
    dir=${BUILD_DIR:-build}
    san=OFF
fi
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHELIOS_SANITIZE=$san -DHELIOS_WERROR=ON >/dev/null
cmake --build "$dir" -j"$(nproc)"
echo "$dir"
