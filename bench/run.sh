#!/bin/sh
# make bench: moelab's SRNN training step beside PyTorch's (../shared/bench/torch_srnn_ref.py)
# and the camouflage segmentation step beside bench/torch_cod_ref.py (64x64x3, batch 16),
# on this machine, in one invocation: BENCH_ROUNDS (3) interleaved rounds of each engine at
# 1 and 2 threads. Prints every line, then moelab's best over PyTorch's best per image
# size, and whether each target of docs/PERFORMANCE.md is met (the efficiency target
# from moelab's fastest 64x64x3 run and the peak measured in that same process). The SRNN
# targets are issue 12's: >= 3.5x PyTorch at 64x64x3, >= 4x at 32x32x1, >= 60% of the peak.
# Expert scaling (issue 12): the demo's MLP MoE model (moelab bench --model mlp, batch 64,
# top-2, 2 threads) at 4, 16, 64 and 256 experts, moelab with optim.idle_experts dense and
# lazy beside bench/torch_mlp_moe_ref.py (the per-expert loop, dense and lazy, and the batched
# variant), BENCH_MLP_STEPS (100) steps each, in the same interleaved rounds; targets: lazy at
# 256 experts >= 60% of lazy at 4, dense >= 2x PyTorch's best variant at every N.
# Then bench/busy.sh (busy machines) and bench/mpi.sh (data parallelism, 1 rank against 2).
set -e
BUILD="${1:-build}"
MOELAB_BENCH=1 MOELAB_MPI=1 sh tools/install-deps.sh
REF="${MOELAB_TORCH_REF:-../shared/bench/torch_srnn_ref.py}"
[ -f "$REF" ] || { echo "bench: $REF not found (the shared PyTorch peer)"; exit 1; }
STEPS="${BENCH_STEPS:-10}"
MLP_STEPS="${BENCH_MLP_STEPS:-100}"
# The expert-scaling rows run with moelab's own wait policy (docs/PERFORMANCE.md, "Busy
# machines": passive when other processes are busy at its start, a short spin otherwise).
ROUNDS="${BENCH_ROUNDS:-3}"   # interleaved rounds: this VM's speed drifts by +-30% within minutes
OUT=$(mktemp)
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for size in 64x64x3 32x32x1; do
        for t in 1 2; do
            "$BUILD/moelab" bench --image $size --batch 64 --experts 16 --top-k 2 --steps "$STEPS" --threads $t | tee -a "$OUT"
            /usr/bin/python3 "$REF" --image $size --batch 64 --experts 16 --top-k 2 --steps "$STEPS" --threads $t | tee -a "$OUT"
        done
    done
    for t in 1 2; do
        "$BUILD/moelab" bench --model cod --image 64x64x3 --batch 16 --experts 6 --top-k 2 --steps "$STEPS" --threads $t | tee -a "$OUT"
        /usr/bin/python3 bench/torch_cod_ref.py --image 64x64x3 --batch 16 --experts 6 --top-k 2 --steps "$STEPS" --threads $t | tee -a "$OUT"
    done
    for n in 4 16 64 256; do
        for idle in dense lazy; do
            "$BUILD/moelab" bench --model mlp --batch 64 --experts $n --top-k 2 --idle-experts $idle --steps "$MLP_STEPS" --threads 2 | tee -a "$OUT"
        done
        for v in "loop --idle-experts dense" "loop --idle-experts lazy" "batched --idle-experts dense"; do
            /usr/bin/python3 bench/torch_mlp_moe_ref.py --batch 64 --experts $n --top-k 2 --variant $v --steps "$MLP_STEPS" --threads 2 | tee -a "$OUT"
        done
    done
    r=$((r + 1))
done
awk '
function field(line, key,   n, i, kv) {
    n = split(line, kv, " ")
    for (i = 1; i <= n; i++) if (index(kv[i], key "=") == 1) return substr(kv[i], length(key) + 2)
    return ""
}
/^cod_step / {
    v = field($0, "img_per_s") + 0
    if (v > cml) cml = v
    if (crss == "" || field($0, "peak_rss_mb") + 0 > crss) crss = field($0, "peak_rss_mb") + 0
}
/^torch_cod_step / {
    v = field($0, "img_per_s") + 0
    if (v > cpt) cpt = v
    if (cprss == "" || field($0, "peak_rss_mb") + 0 < cprss) cprss = field($0, "peak_rss_mb") + 0
}
/^mlp_step / {
    n = field($0, "experts") + 0; i = field($0, "idle"); v = field($0, "img_per_s") + 0
    if (v > mlp[n, i]) mlp[n, i] = v
    mlpn[n] = 1
}
/^torch_mlp_step / {
    n = field($0, "experts") + 0; v = field($0, "img_per_s") + 0
    if (field($0, "idle") == "dense" && v > tmlp[n]) { tmlp[n] = v; tvar[n] = field($0, "variant") }
    if (field($0, "idle") == "lazy" && v > tmlpl[n]) tmlpl[n] = v
}
/^srnn_step / {
    s = field($0, "image"); v = field($0, "img_per_s") + 0
    if (v > ml[s]) { ml[s] = v; gf[s] = field($0, "gflops") + 0; pk[s] = field($0, "sgemm_peak_gflops") + 0 }
    if (rss[s] == "" || field($0, "peak_rss_mb") + 0 > rss[s]) rss[s] = field($0, "peak_rss_mb") + 0
}
/^torch_srnn_step / {
    s = field($0, "image"); v = field($0, "img_per_s") + 0
    if (v > pt[s]) pt[s] = v
    if (prss[s] == "" || field($0, "peak_rss_mb") + 0 < prss[s]) prss[s] = field($0, "peak_rss_mb") + 0
}
END {
    ok = 1
    for (s in ml) {
        r = pt[s] > 0 ? ml[s] / pt[s] : 0
        need = (s == "64x64x3") ? 3.5 : 4.0   # issue 12 section 4 (the first targets were 2.5 and 2.0)
        printf "ratio image=%s moelab_img_per_s=%.1f torch_img_per_s=%.1f speedup=%.2f target=%.1f %s\n", s, ml[s], pt[s], r, need, (r >= need ? "MET" : "MISSED")
        if (r < need) ok = 0
        printf "rss image=%s moelab_peak_rss_mb=%d torch_peak_rss_mb=%d %s\n", s, rss[s], prss[s], (rss[s] <= prss[s] ? "MET" : "MISSED")
        if (rss[s] > prss[s]) ok = 0
        if (s == "64x64x3") {
            f = pk[s] > 0 ? gf[s] / pk[s] : 0
            printf "efficiency image=%s gflops=%.1f sgemm_peak_gflops=%.1f fraction=%.2f target=0.60 %s\n", s, gf[s], pk[s], f, (f >= 0.6 ? "MET" : "MISSED")
            if (f < 0.6) ok = 0
        }
    }
    r = cpt > 0 ? cml / cpt : 0
    printf "ratio model=cod image=64x64x3 moelab_img_per_s=%.1f torch_img_per_s=%.1f speedup=%.2f target=2.5 %s\n", cml, cpt, r, (r >= 2.5 ? "MET" : "MISSED")
    if (r < 2.5) ok = 0
    printf "rss model=cod image=64x64x3 moelab_peak_rss_mb=%d torch_peak_rss_mb=%d %s\n", crss, cprss, (crss <= cprss ? "MET" : "MISSED")
    if (crss > cprss) ok = 0
    for (n = 1; n <= 256; n *= 2) {
        if (!(n in mlpn)) continue
        r = tmlp[n] > 0 ? mlp[n, "dense"] / tmlp[n] : 0
        printf "experts n=%d moelab_dense_img_per_s=%.1f moelab_lazy_img_per_s=%.1f torch_dense_img_per_s=%.1f torch_variant=%s torch_lazy_img_per_s=%.1f dense_speedup=%.2f target=2.0 %s\n", n, mlp[n, "dense"], mlp[n, "lazy"], tmlp[n], tvar[n], tmlpl[n], r, (r >= 2.0 ? "MET" : "MISSED")
        if (r < 2.0) ok = 0
    }
    if ((4 in mlpn) && (256 in mlpn)) {
        f = mlp[4, "lazy"] > 0 ? mlp[256, "lazy"] / mlp[4, "lazy"] : 0
        printf "experts scaling lazy n=256 img_per_s=%.1f n=4 img_per_s=%.1f fraction=%.2f target=0.60 %s\n", mlp[256, "lazy"], mlp[4, "lazy"], f, (f >= 0.6 ? "MET" : "MISSED")
        if (f < 0.6) ok = 0
        f = mlp[4, "dense"] > 0 ? mlp[256, "dense"] / mlp[4, "dense"] : 0
        printf "experts scaling dense n=256 img_per_s=%.1f n=4 img_per_s=%.1f fraction=%.2f (no target)\n", mlp[256, "dense"], mlp[4, "dense"], f
    }
    print (ok ? "bench: all targets met" : "bench: some targets missed")
}' "$OUT"
rm -f "$OUT"
# busy machines (issue 12): the demo's model quiet and beside one competing process
sh bench/busy.sh "$BUILD" || echo "bench: some busy-machine targets missed"
# data parallelism (issue 12): the demo's model on 1 rank and on 2 (mpirun), equal threads
sh bench/mpi.sh "$BUILD" || echo "bench: the MPI target missed"
