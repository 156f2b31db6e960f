#!/usr/bin/env bash
# Builds saec and runs the whole test suite: GoogleTest unit tests (ctest)
# and the lit regression tests (check-sae). Exits non-zero on any failure and
# ends with one line "tests: N passed, N failed, N skipped".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build.sh"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

status=0
echo "== unit tests (GoogleTest, ctest)"
ctest --test-dir "$root/build" --output-on-failure 2>&1 | tee "$logs/ctest" || status=1
echo "== regression tests (lit)"
cmake --build "$root/build" --target check-sae 2>&1 | tee "$logs/lit" || status=1

# ctest: "100% tests passed, 0 tests failed out of 119" and skipped tests.
ctotal=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$logs/ctest" | tail -1)
cfailed=$(sed -n 's/.*, \([0-9]*\) tests failed out of.*/\1/p' "$logs/ctest" | tail -1)
cskipped=$(grep -c '(Skipped)' "$logs/ctest" || true)
# lit: "  Passed: 56 (100.00%)", "  Failed: 1 (...)", "  Unsupported: 2 (...)".
count() { sed -n "s/^ *$1 *: *\([0-9]*\).*/\1/p" "$logs/lit" | tail -1; }
lpassed=$(count Passed); lfailed=$(count Failed); lunsup=$(count Unsupported)
ctotal=${ctotal:-0}; cfailed=${cfailed:-0}; cskipped=${cskipped:-0}
lpassed=${lpassed:-0}; lfailed=${lfailed:-0}; lunsup=${lunsup:-0}
passed=$((ctotal - cfailed - cskipped + lpassed))
failed=$((cfailed + lfailed))
skipped=$((cskipped + lunsup))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then
  failed=1 # a runner failed without reporting a test (e.g. a build error)
fi
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
