#!/usr/bin/env bash
# Smoke test of the fuzz harnesses (tests/fuzz, scripts/fuzz): builds them
# itself (scons fuzz=1 into build-fuzz/: clang with libFuzzer, ASan and
# UBSan; incremental, so only a fresh machine pays the full build) and runs
# every one FUZZ_SMOKE_SECONDS (default 2) from its seed corpus, one at a
# time.  Fails on a build error, any crash, hang, leak or failed check, or
# a harness that executed nothing.  Skips only when clang's fuzzer runtime
# cannot be had (scripts/install-deps installs it).
. "$(dirname "$0")/../functions.sh"

top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${FUZZ_SMOKE_SECONDS:-2}
start=$(date +%s)
set +e
# FUZZ_TIMEOUT: one input that long is a hang; generous for a loaded runner.
FUZZ_WORK=$T/fuzz FUZZ_TIMEOUT=20 FUZZ_RUNS= FUZZ_HARNESSES= \
  "$top/scripts/fuzz" "$secs" > "$T/fuzz.out" 2>&1
rc=$?
set -e
cat "$T/fuzz.out"
[ $rc -eq 77 ] && skip "clang cannot build libFuzzer harnesses: $(tail -n 1 "$T/fuzz.out")"
[ $rc -eq 0 ] || fail "scripts/fuzz exited $rc (artifacts in build-fuzz/artifacts/)"
n=0
for src in "$top"/tests/fuzz/fuzz-*.c; do
  h=$(basename "$src" .c); h=${h#fuzz-}
  n=$((n + 1))
  execs=$(awk -v h="$h" '$1 == h { print $2 }' "$T/fuzz.out")
  [ -n "$execs" ] || fail "harness $h did not run"
  [ "$execs" -gt 0 ] || fail "harness $h executed no input"
done
echo "PASS: $n harnesses ran $secs s each without a crash, hang or leak" \
     "($(( $(date +%s) - start )) s with the build)"
