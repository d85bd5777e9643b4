#!/bin/sh
# Runs several configs, N at a time (default 2, one per core), each with 1 BLAS thread,
# then prints a summary table.    tools/sweep.sh [-j N] CONFIG... [-- key=value ...]
set -e
J=2
[ "$1" = "-j" ] && { J="$2"; shift 2; }
CONFIGS=""; OVERRIDES=""
while [ $# -gt 0 ]; do
    [ "$1" = "--" ] && { shift; OVERRIDES="$*"; break; }
    CONFIGS="$CONFIGS $1"; shift
done
BUILD="${BUILD:-build}"
LOGDIR=$(mktemp -d)
echo "$CONFIGS" | tr ' ' '\n' | grep . | xargs -P "$J" -I{} sh -c \
    "$BUILD/moelab run {} train.threads=1 $OVERRIDES > $LOGDIR/\$(basename {}).log 2>&1 || echo 'sweep: {} failed, see $LOGDIR/'\$(basename {})'.log'"
grep -h "results in" "$LOGDIR"/*.log | sed 's/.*results in //' > "$LOGDIR/dirs"
python3 tools/summarize.py $(cat "$LOGDIR/dirs")
