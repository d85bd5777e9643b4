#!/bin/sh
# Runs every Check suite given on the command line and closes with one summary line.
# Tests run from the repository root; MOELAB_BUILD tells them where the build is.
BUILD="$1"; shift
export MOELAB_BUILD="$BUILD"
pass=0; fail=0; failed=""
for t in "$@"; do
    out=$("$t" 2>&1); rc=$?
    echo "$out" | grep -E '^[0-9]+%: Checks' | sed "s|^|$(basename "$t"): |"
    p=$(echo "$out" | sed -n 's/^[0-9]*%: Checks: \([0-9]*\), Failures: \([0-9]*\), Errors: \([0-9]*\).*/\1 \2 \3/p' | tail -n 1)
    if [ -z "$p" ]; then
        echo "$out" | tail -n 20; fail=$((fail + 1)); failed="$failed $(basename "$t")"; continue
    fi
    set -- $p "$@"
    n=$1; f=$(( $2 + $3 )); shift 3
    pass=$((pass + n - f)); fail=$((fail + f))
    if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
        echo "$out" | grep -v -E '^[0-9]+%: Checks' | grep -E ':[EF]:' | head -n 20
        failed="$failed $(basename "$t")"
        [ "$f" -eq 0 ] && fail=$((fail + 1))
    fi
done
echo "tests: $pass passed, $fail failed"
[ "$fail" -eq 0 ] || { echo "failing suites:$failed"; exit 1; }
