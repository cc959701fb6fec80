#!/bin/sh
# Long libFuzzer run of every harness in tests/fuzz (packaging/fuzz.sh with
# a longer budget), niced, then a table for bench/RESULTS.md:
#   SECONDS_PER_HARNESS=600 bench/fuzz.sh     (600 s each is the default)
# The build and the grown corpora are in build-fuzz/fuzz/; findings in
# build-fuzz/fuzz/findings/<harness>/ (exit status 1 if any).
set -eu
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_HARNESS:-600}
rc=0
FUZZ_SECONDS=$secs nice -n 19 sh packaging/fuzz.sh || rc=$?
summary=build-fuzz/fuzz/summary.tsv
echo
echo "| harness | seconds | executions | exec/s | corpus files | findings |"
echo "|---|---:|---:|---:|---:|---:|"
awk -F'\t' '{ printf "| %s | %s | %\047d | %\047d | %s | %s |\n", $1, $2, $3, $4, $5, $6;
              n += $3; f += $6; s += $2 }
            END { printf "| **total** | %s | %\047d | | | %d |\n", s, n, f }' "$summary"
exit $rc
