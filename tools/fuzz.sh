#!/bin/sh
# Runs each libFuzzer target built by `make fuzz` for SECONDS on its seed corpus.
#   tools/fuzz.sh BUILD SECONDS TARGET...
# New corpus entries go to BUILD/corpus/<target>/ (never the source tree); every crash,
# leak, timeout or out-of-memory input is copied to tests/fuzz/crashes/<target>/, where
# check_fuzz replays it in `make test`. After a finding the target is restarted for the
# rest of its time, so one bug does not end the campaign. Prints one summary line per
# target (executions from -print_final_stats) and exits 1 when anything was found.
BUILD="$1"; SECONDS_PER="$2"; shift 2
found=0
for t in "$@"; do
    bin="$BUILD/fuzz/fuzz_$t"
    corpus="$BUILD/corpus/$t"; art="$BUILD/artifacts/$t/"; log="$BUILD/logs/$t.log"
    mkdir -p "$corpus" "$art" "$(dirname "$log")" "tests/fuzz/crashes/$t"
    : > "$log"
    start=$(date +%s); execs=0; runs=0; crashes=0
    while :; do
        left=$((SECONDS_PER - ($(date +%s) - start)))
        [ "$left" -gt 0 ] || break
        runs=$((runs + 1))
        dict=""; [ -f "tests/fuzz/$t.dict" ] && dict="-dict=tests/fuzz/$t.dict"
        # stdin from /dev/null: a config whose base: names /dev/stdin must not wait for a tty
        "$bin" $dict -max_total_time="$left" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
            -max_len=65536 -artifact_prefix="$art" "$corpus" "tests/fuzz/corpus/$t" \
            < /dev/null >> "$log" 2>&1
        rc=$?
        n=$(grep -a 'stat::number_of_executed_units' "$log" | tail -n 1 | sed 's/.*: *//')
        execs=$((execs + ${n:-0}))
        # an empty stat line would count the previous run twice: drop it from the log
        sed -i 's/stat::number_of_executed_units/stat::counted_executed_units/' "$log"
        for f in "$art"*; do
            [ -f "$f" ] || continue
            crashes=$((crashes + 1))
            cp "$f" "tests/fuzz/crashes/$t/" && rm -f "$f"
            echo "fuzz $t: finding $(basename "$f") -> tests/fuzz/crashes/$t/"
        done
        [ "$rc" -eq 0 ] && break
        # a non-zero exit without an artifact (a build or option problem) would loop
        [ "$crashes" -eq 0 ] && [ "$rc" -ne 0 ] && { tail -n 20 "$log"; found=1; break; }
    done
    echo "fuzz $t: ${execs} executions in ${SECONDS_PER} s, ${runs} run(s), ${crashes} finding(s); corpus $(ls "$corpus" | wc -l) files; log $log"
    [ "$crashes" -eq 0 ] || found=1
done
exit "$found"
