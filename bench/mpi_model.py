#!/usr/bin/env python3
"""Data parallelism on paper (docs/PERFORMANCE.md, "Data parallelism (MPI)"): the step time
of `mpirun -np R moelab run` on R nodes, from what one step sends and computes.

Per step, what moelab's data parallelism communicates (core/model/moe.c, model.c):
  - one allreduce of the gradient block: 4 x P bytes (P parameters);
  - per MoE layer, an allgather of the router inputs of the whole global batch G
    (G x D floats, D the latent width) and an allreduce of the gates' gradients (G x k
    floats);
  - two scalar allreduces (the task loss, the interrupt flag), latency only.
Cost model, no overlap of communication with compute (moelab sums the gradients after the
backward): ring allreduce 2(R-1)/R x bytes / bandwidth + 2(R-1) x latency; ring allgather
(R-1)/R x bytes / bandwidth + (R-1) x latency; messages under 64 KiB by recursive doubling,
log2(R) x latency (+ bytes / bandwidth per step), as MPI libraries choose for small ones.
Compute: the per-rank batch over one node's measured throughput (2 cores, docs/PERFORMANCE.md).

  python3 bench/mpi_model.py [--latency-us 10] [--batch-per-rank 64 | --global-batch 4096]
"""
import argparse
import math

MODELS = {
    # name: parameters, MoE layers, router input width D, top-k, one node's img/s (2 threads)
    "MLP demo (configs/demo.yaml)": dict(P=502_100, L=1, D=64, k=2, img_s=34_000),
    "SRNN 32x32x1, 16 experts (configs/srnn/fixed16.yaml)": dict(P=3_118_449, L=1, D=128, k=2, img_s=1_213),
}
LINKS_GBIT = [10, 25, 100]
SMALL = 64 * 1024


def allreduce(nbytes, R, bw, lat):
    if R == 1:
        return 0.0
    if nbytes < SMALL:
        steps = math.ceil(math.log2(R))
        return steps * (lat + nbytes / bw)
    return 2 * (R - 1) / R * nbytes / bw + 2 * (R - 1) * lat


def allgather(nbytes_total, R, bw, lat):
    if R == 1:
        return 0.0
    if nbytes_total < SMALL:
        steps = math.ceil(math.log2(R))
        return steps * lat + (R - 1) / R * nbytes_total / bw
    return (R - 1) / R * nbytes_total / bw + (R - 1) * lat


def step(m, R, b, bw, lat, G=0):
    if G:
        b = G / R
    G = b * R
    compute = b / m["img_s"]
    grads = allreduce(4 * m["P"], R, bw, lat)
    routing = m["L"] * (allgather(4 * G * m["D"], R, bw, lat) + allreduce(4 * G * m["k"], R, bw, lat))
    scalars = allreduce(32, R, bw, lat) + allreduce(4, R, bw, lat)
    return compute, grads, routing + scalars


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-us", type=float, default=10.0)
    ap.add_argument("--batch-per-rank", type=int, default=64)
    ap.add_argument("--global-batch", type=int, default=0,
                    help="a fixed global batch split over the ranks (strong scaling) instead of --batch-per-rank")
    a = ap.parse_args()
    lat = a.latency_us * 1e-6
    b = a.batch_per_rank
    if a.global_batch:
        print(f"global batch {a.global_batch} split over R ranks, latency {a.latency_us:g} us per message, no overlap\n")
    else:
        print(f"per-rank batch {b} (global batch {b} x R), latency {a.latency_us:g} us per message, no overlap\n")
    for name, m in MODELS.items():
        print(f"## {name}: {m['P']:,} parameters, gradient allreduce {4 * m['P'] / 1e6:.2f} MB, "
              f"compute {1e3 * b / m['img_s']:.2f} ms per step of {b}")
        print("| link | R | step ms | compute ms | gradients ms | routing + scalars ms | efficiency | speedup |")
        print("|---|---|---|---|---|---|---|---|")
        for gbit in LINKS_GBIT:
            bw = gbit * 1e9 / 8
            last_ok = 1
            for R in (2, 4, 8, 16, 32, 64):
                c, g, r = step(m, R, b, bw, lat, a.global_batch)
                t = c + g + r
                eff = c / t
                if eff >= 0.5:
                    last_ok = R
                print(f"| {gbit} Gb/s | {R} | {1e3 * t:.2f} | {1e3 * c:.2f} | {1e3 * g:.2f} | {1e3 * r:.3f} | "
                      f"{eff:.2f} | {R * eff:.1f}x |")
            # the R where communication equals compute (efficiency 50%), scanning powers of two
            print(f"| {gbit} Gb/s | largest R with efficiency >= 0.5 (of 2..64): {last_ok} | | | | | | |")
        print()


if __name__ == "__main__":
    main()
