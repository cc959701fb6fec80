#!/bin/sh
# Configures and builds heliosd into BUILD_DIR (default build/), warnings as
# errors (-DHELIOS_WERROR=ON, as CI and developers build).
#   SANITIZE=1        ASan+UBSan build (default dir build-asan/)
#   BUILD_TYPE=T      CMake build type (default RelWithDebInfo)
#   TESTS=OFF         do not build the unit tests and test programs
#   CC=clang-14       another compiler (use another BUILD_DIR too)
set -eu
cd "$(dirname "$0")/.."
if [ "${SANITIZE:-0}" = 1 ]; then
    dir=${BUILD_DIR:-build-asan}
    san=ON
else
    dir=${BUILD_DIR:-build}
    san=OFF
fi
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" -DHELIOS_SANITIZE=$san \
    -DHELIOS_WERROR=ON -DHELIOS_TESTS="${TESTS:-ON}" >/dev/null
cmake --build "$dir" -j"$(nproc)"
echo "$dir"
