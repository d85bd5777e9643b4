#!/bin/sh
# Runs every Check suite given on the command line and closes with one summary line.
# Tests run from the repository root; MOELAB_BUILD tells them where the build is.
# With MOELAB_SANITIZER_LOGS set (make asan), any sanitizer report a suite or a process
# it spawned left in that directory fails the suite, and the report is printed.
BUILD="$1"; shift
export MOELAB_BUILD="$BUILD"
LOGS="${MOELAB_SANITIZER_LOGS:-}"
pass=0; fail=0; failed=""
for t in "$@"; do
    out=$("$t" 2>&1); rc=$?
    name=$(basename "$t")
    # GCC's UBSan runtime ignores log_path when linked with ASan and reports on stderr:
    # keep the suite's output whenever it holds a report (a spawned moelab's report ends
    # it with SIGABRT, which the suites see in its exit status).
    if [ -n "$LOGS" ] && echo "$out" | grep -qE 'runtime error:|ERROR: (Address|Leak|UndefinedBehavior)Sanitizer'; then
        echo "$out" > "$LOGS/$name.stderr"
    fi
    if [ -n "$LOGS" ] && [ -n "$(find "$LOGS" -maxdepth 1 -type f 2>/dev/null)" ]; then
        mkdir -p "$LOGS/$name"
        for f in "$LOGS"/*; do [ -f "$f" ] && mv "$f" "$LOGS/$name/"; done
        for f in "$LOGS/$name"/*; do
            echo "== $f"
            grep -E -A 40 'runtime error:|ERROR: (Address|Leak|UndefinedBehavior)Sanitizer' "$f" | head -n 60
        done
        echo "$name: sanitizer reports in $LOGS/$name/"
        fail=$((fail + 1)); failed="$failed $name"
    fi
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
