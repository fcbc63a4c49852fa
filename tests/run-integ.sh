#!/usr/bin/env bash
# Run every tests/integ/test-*.sh (or those named in $TESTS) against the
# build in variant dir $1; exit code 77 means skipped.  Logs go to
# $variant/integ-logs/.  Prints one closing line "N passed, N failed, N skipped".
set -u
variant=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
export CORFS="$top/$variant/corfs" TOOLS="$top/$variant/tests/tools" TOP="$top"
# Known leaks in libraries (not ours) for the ASan build.
export LSAN_OPTIONS="suppressions=$top/tests/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
logs="$top/$variant/integ-logs"; mkdir -p "$logs"
pass=0 fail=0 skip=0 failed=()
tests=${TESTS:-$(ls "$top"/tests/integ/test-*.sh)}
for t in $tests; do
  [ -f "$t" ] || t="$top/tests/integ/$t"
  name=$(basename "$t" .sh)
  start=$(date +%s)
  timeout -k 10 ${TEST_TIMEOUT:-600} bash "$t" > "$logs/$name.log" 2>&1; rc=$?
  secs=$(( $(date +%s) - start ))
  case $rc in
    0)  pass=$((pass+1)); echo "PASS: $name (${secs}s)";;
    77) skip=$((skip+1)); echo "SKIP: $name: $(grep -m1 '^SKIP:' "$logs/$name.log" | cut -c7-)";;
    *)  fail=$((fail+1)); failed+=("$name"); echo "FAIL: $name (exit $rc, ${secs}s)"
        tail -n 40 "$logs/$name.log" | sed 's/^/    /';;
  esac
done
echo "integration: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
