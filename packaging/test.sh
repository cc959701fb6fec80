#!/bin/sh
# The whole test suite: builds (if needed) and runs ctest, which runs the C
# unit tests and the pytest integration tests against the real binary.
#   packaging/test.sh              normal build (build/)
#   packaging/test.sh --sanitize   ASan+UBSan build (build-asan/)
#   packaging/test.sh --fuzz       libFuzzer build (build-fuzz/), each harness
#                                  for a bounded time (packaging/fuzz.sh)
# Extra arguments after -- go to ctest (e.g. -- -R proxy).
#   SKIP_DEPS=1   do not run install-deps.sh (it returns at once when every
#                 package is there, so this is rarely needed)
set -eu
cd "$(dirname "$0")/.."
if [ "${SKIP_DEPS:-0}" != 1 ]; then
    # root installs what is missing; anyone else is told what is missing
    sh packaging/install-deps.sh || [ "$(id -u)" != 0 ]
fi
if [ "${1:-}" = "--fuzz" ]; then
    # a fixed seed: a CI run explores the same way each time, so it fails
    # on a change, not on luck (bench/fuzz.sh explores with random seeds)
    FUZZ_SEED=${FUZZ_SEED:-1} exec sh packaging/fuzz.sh
fi
san=0
if [ "${1:-}" = "--sanitize" ]; then
    san=1
    shift
fi
[ "${1:-}" = "--" ] && shift
dir=$(SANITIZE=$san sh packaging/build.sh | tail -n 1)
if [ "$san" = 1 ]; then
    # detect_leaks: LeakSanitizer runs at exit of every heliosd the tests start
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
fi
cd "$dir"
ctest --output-on-failure -j"$(nproc)" "$@"
