#!/bin/sh
# Runs every Check suite given on the command line and closes with one summary line.
# Tests run from the repository root; MOELAB_BUILD tells them where the build is.
BUILD="$1"; shift
export MOELAB_BUILD="$BUILD"
pass=0; fail=0; failed=""
for t in "$@"; do
    out=$("$t" 2>&1); rc=$?
    name=$(basename "$t")
    line=$(echo "$out" | grep -E '^[0-9]+%: Checks' | tail -n 1)
    if [ -z "$line" ]; then
        echo "$out" | tail -n 20
        echo "$name: crashed or printed no Check summary (exit $rc)"
        fail=$((fail + 1)); failed="$failed $name"; continue
    fi
    echo "$name: $line"
    n=$(echo "$line" | sed -n 's/.*Checks: \([0-9]*\).*/\1/p')
    f=$(echo "$line" | sed -n 's/.*Failures: \([0-9]*\).*/\1/p')
    e=$(echo "$line" | sed -n 's/.*Errors: \([0-9]*\).*/\1/p')
    bad=$((f + e))
    pass=$((pass + n - bad)); fail=$((fail + bad))
    if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ]; then
        echo "$out" | grep -E ':[EF]:' | head -n 20
        failed="$failed $name"
        [ "$bad" -eq 0 ] && fail=$((fail + 1))
    fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] || { echo "failing suites:$failed"; exit 1; }
