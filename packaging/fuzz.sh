#!/bin/sh
# Coverage-guided fuzzing with libFuzzer (tests/fuzz/README.md): builds the
# harnesses in build-fuzz/ (clang-14, ASan+UBSan, HELIOS_FUZZ=ON) and runs
# each for a bounded time over a copy of its seed corpus.
#   packaging/fuzz.sh                 build, then FUZZ_SECONDS (default 25) per harness
#   packaging/fuzz.sh --build-only    build only
#   FUZZ_SECONDS=60 FUZZ_HARNESSES="http1 http2" packaging/fuzz.sh
#   FUZZ_SEED=1 packaging/fuzz.sh     libFuzzer's -seed (default: a random one)
# A finding stops the run with libFuzzer's report; the input is kept in
# build-fuzz/fuzz/findings/<harness>/ (add it to tests/fuzz/corpus/<harness>/
# once fixed: ctest replays it from then on).
set -eu
cd "$(dirname "$0")/.."
dir=${BUILD_DIR:-build-fuzz}
CC=${CC:-clang-14}
export CC
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHELIOS_FUZZ=ON -DHELIOS_TESTS=OFF \
      -DHELIOS_WERROR=ON >/dev/null
cmake --build "$dir" -j"$(nproc)" --target fuzz
[ "${1:-}" = "--build-only" ] && exit 0

seconds=${FUZZ_SECONDS:-25}
harnesses=${FUZZ_HARNESSES:-"http1 http2 config admin headers"}
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
summary="$dir/fuzz/summary.tsv"     # harness, seconds, executions, exec/s, corpus, findings
mkdir -p "$dir/fuzz"
: >"$summary"
passed=0
failed=0
for h in $harnesses; do
    work="$dir/fuzz/work/$h"          # the corpus grows here, not in the repository
    findings="$dir/fuzz/findings/$h"
    rm -rf "$work"
    mkdir -p "$work" "$findings"
    cp tests/fuzz/corpus/"$h"/* "$work"/
    log="$dir/fuzz/$h.log"
    echo "=== fuzz $h: ${seconds}s"
    found=0
    "$dir/fuzz/fuzz_$h" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
        -max_len=8192 -print_final_stats=1 -artifact_prefix="$findings/" "$work" \
        >"$log" 2>&1 || found=1
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$h" "$seconds" "${execs:-0}" "${rate:-0}" \
        "$(ls "$work" | wc -l)" "$found" >>"$summary"
    if [ "$found" = 0 ]; then
        echo "fuzz $h: ${execs:-0} executions, ${rate:-0}/s, no finding"
        passed=$((passed + 1))
    else
        echo "fuzz $h: FINDING (log: $log, input in $findings/)" >&2
        tail -n 60 "$log" >&2
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" = 0 ]
