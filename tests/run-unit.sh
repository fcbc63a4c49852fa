#!/usr/bin/env bash
# Run the criterion unit tests given as arguments; print one closing line.
set -u
pass=0 fail=0
for t in "$@"; do
  echo "== $t"
  out=$("$t" --verbose=0 2>&1); rc=$?
  echo "$out" | tail -n 20
  # criterion's synthesis line: "[====] Synthesis: Tested: N | Passing: N | Failing: N | Crashing: N"
  syn=$(echo "$out" | grep 'Synthesis:' | tail -n1)
  p=$(echo "$syn" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
  f=$(echo "$syn" | sed -n 's/.*Failing: \([0-9]*\).*/\1/p')
  c=$(echo "$syn" | sed -n 's/.*Crashing: \([0-9]*\).*/\1/p')
  pass=$((pass + ${p:-0})); fail=$((fail + ${f:-0} + ${c:-0}))
  if [ $rc -ne 0 ] && [ "${f:-0}" = 0 ] && [ "${c:-0}" = 0 ]; then fail=$((fail + 1)); fi
done
echo "unit: $pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
