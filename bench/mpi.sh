#!/bin/sh
# Data parallelism, 1 rank against 2 on this machine (docs/PERFORMANCE.md, "Data parallelism
# (MPI)"): the demo's MLP model on a Fashion-MNIST subset, global batch 64, training
# throughput (images / training seconds of the last epoch, from metrics.csv) of
#   one process with 1 thread, one process with 2 threads (all cores), and
#   mpirun -np 2 (1 thread per rank: train.threads 0 shares the cores among the ranks),
# BENCH_ROUNDS (3) interleaved rounds, best of each. Prints one line per run, the ratios and
# the target (make bench, bench/run.sh): at equal total threads (2, this machine's cores),
# 2 ranks x 1 thread >= 0.80 x 1 rank x 2 threads -- on one machine data parallelism costs
# no more than its allreduce and the replicated routing (docs/PERFORMANCE.md). Exit 1 when
# missed or when this build has no MPI.
#   sh bench/mpi.sh [BUILD]      MPI_IMAGES (20000) MPI_EPOCHS (2) BENCH_ROUNDS (3)
set -e
BUILD="${1:-build}"
command -v mpirun >/dev/null || { echo "bench/mpi.sh: mpirun not found (Debian: openmpi-bin, libopenmpi-dev)"; exit 1; }
# a build without MPI refuses mpirun (run/dist.c): say so once instead of failing every round
ldd "$BUILD/moelab" 2>/dev/null | grep -q libmpi ||
    { echo "mpi ranks=2 MISSED ($BUILD/moelab was built without MPI: install libopenmpi-dev and rebuild)"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
IMAGES="${MPI_IMAGES:-20000}"
EPOCHS="${MPI_EPOCHS:-2}"
ROUNDS="${BENCH_ROUNDS:-3}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
MPIRUN="mpirun -np 2 --oversubscribe --bind-to none --mca btl self,vader"
ARGS="configs/demo.yaml data.train_images=$IMAGES data.val_images=1000 train.epochs=$EPOCHS --quiet"
# img/s of the last epoch's training (images / seconds in metrics.csv)
rate() {
    awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
             { n = $c["images_seen"] - prev; prev = $c["images_seen"]; s = $c["seconds"] }
             END { printf "%.0f", n / s }' "$(ls "$1"/demo/*/metrics.csv)"
}
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for mode in 1x1 1x2 2x1; do
        out="$TMP/$mode-$r"
        case $mode in
        1x1) "$BUILD/moelab" run $ARGS train.threads=1 results.dir="$out" 2>/dev/null ;;
        1x2) "$BUILD/moelab" run $ARGS train.threads=2 results.dir="$out" 2>/dev/null ;;
        2x1) $MPIRUN "$BUILD/moelab" run $ARGS train.threads=0 results.dir="$out" 2>/dev/null ;;
        esac
        echo "mpi_bench ranks_x_threads=$mode round=$r img_per_s=$(rate "$out") load=$(cut -d' ' -f1 /proc/loadavg)"
    done
    r=$((r + 1))
done | tee "$TMP/lines"
awk '{ split($2, m, "="); split($4, v, "="); if (v[2] > best[m[2]]) best[m[2]] = v[2] }
     END { if (!best["1x1"] || !best["1x2"] || !best["2x1"]) {
               print "mpi ranks=2 MISSED (a run failed: no throughput for every setting)"; exit 1 }
           printf "mpi_bench best img/s: 1 rank x 1 thread %d, 1 rank x 2 threads %d, 2 ranks x 1 thread %d\n",
                  best["1x1"], best["1x2"], best["2x1"];
           printf "mpi_bench 2 ranks / 1 rank at 1 thread = %.2fx, 2 ranks / 1 rank at 2 threads = %.2fx\n",
                  best["2x1"] / best["1x1"], best["2x1"] / best["1x2"];
           f = best["2x1"] / best["1x2"]
           printf "mpi model=demo ranks=2 threads_per_rank=1 img_per_s=%d one_rank_2_threads_img_per_s=%d ratio=%.2f target=0.80 %s (one rank, 1 thread: %d, %.2fx)\n",
                  best["2x1"], best["1x2"], f, (f >= 0.80 ? "MET" : "MISSED"), best["1x1"], best["2x1"] / best["1x1"]
           exit f >= 0.80 ? 0 : 1 }' "$TMP/lines"
