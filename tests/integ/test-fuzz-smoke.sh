#!/usr/bin/env bash
# Smoke test of the fuzz harnesses (tests/fuzz, scripts/fuzz): builds them
# (build-fuzz/, clang with libFuzzer, ASan and UBSan) and runs every one a
# few seconds from its seed corpus; fails on any crash, hang, leak or
# failed check, or on a harness that executed nothing.  Skips only when
# clang's fuzzer runtime cannot be installed (scripts/install-deps has it).
. "$(dirname "$0")/../functions.sh"

top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${FUZZ_SMOKE_SECONDS:-2}
set +e
FUZZ_WORK=$T/fuzz FUZZ_TIMEOUT=20 "$top/scripts/fuzz" "$secs" > "$T/fuzz.out" 2>&1
rc=$?
set -e
cat "$T/fuzz.out"
[ $rc -eq 77 ] && skip "clang cannot build libFuzzer harnesses: $(tail -n 1 "$T/fuzz.out")"
[ $rc -eq 0 ] || fail "scripts/fuzz exited $rc"
n=$(ls "$top"/tests/fuzz/fuzz-*.c | wc -l)
got=$(awk '$1 != "harness" && $1 != "total" && $2 > 0' "$T/fuzz.out" | wc -l)
[ "$got" -eq "$n" ] || fail "$got of $n harnesses reported executions"
echo "PASS: $n harnesses ran $secs s each without a crash, hang or leak"
