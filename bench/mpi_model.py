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
Compute: the per-rank batch over one node's measured throughput (2 cores, docs/PERFORMANCE.md),
plus the replicated routing: every rank runs the routers forward and backward on the whole
global batch (G x D x N multiply-adds, x3 for the backward) at ROUTER_GFLOPS, work that does
not shrink as R grows.
Links (bandwidth, latency per message): 10 GbE over TCP (10 Gb/s, 25 us), 25 GbE (25 Gb/s,
10 us), 100 Gb/s InfiniBand EDR (100 Gb/s, 2 us); --latency-us overrides every link's.

  python3 bench/mpi_model.py [--latency-us US] [--batch-per-rank 64 | --global-batch 4096]
"""
import argparse
import math

MODELS = {
    # name: parameters, router input widths (one per MoE layer), experts N, top-k, one node's
    # img/s (2 threads)
    "MLP demo (configs/demo.yaml)": dict(P=502_100, D=[64], N=4, k=2, img_s=34_000),
    "SRNN 32x32x1, 16 experts (configs/srnn/fixed16.yaml)": dict(P=3_118_449, D=[128], N=16, k=2, img_s=1_213),
    "COD 64x64x3, 6 experts (configs/cod/demo.yaml)": dict(P=1_774_000, D=[32, 64, 128, 256], N=6, k=2, img_s=22),
}
LINKS = [("10 GbE", 10, 25.0), ("25 GbE", 25, 10.0), ("100 Gb/s IB", 100, 2.0)]
ROUTER_GFLOPS = 20.0  # small (G x D) x (D x N) products: far below the sgemm peak
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
    # the rank's own part, plus the routers on the whole batch (the rank's own share of which
    # is already in img_s)
    replicated = (G - b) * sum(m["D"]) * m["N"] * 2 * 3 / (ROUTER_GFLOPS * 1e9)
    compute = b / m["img_s"] + replicated
    grads = allreduce(4 * m["P"], R, bw, lat)
    routing = sum(allgather(4 * G * d, R, bw, lat) + allreduce(4 * G * m["k"], R, bw, lat) for d in m["D"])
    scalars = allreduce(32, R, bw, lat) + allreduce(4, R, bw, lat)
    return compute, grads, routing + scalars, replicated


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-us", type=float, default=0, help="one latency for every link (default: each link's)")
    ap.add_argument("--batch-per-rank", type=int, default=64)
    ap.add_argument("--global-batch", type=int, default=0,
                    help="a fixed global batch split over the ranks (strong scaling) instead of --batch-per-rank")
    a = ap.parse_args()
    b = a.batch_per_rank
    what = f"global batch {a.global_batch} split over R ranks" if a.global_batch else f"per-rank batch {b} (global batch {b} x R)"
    print(f"{what}, no overlap; efficiency = one node's step time for its part / the step time\n")
    for name, m in MODELS.items():
        print(f"## {name}: {m['P']:,} parameters, gradient allreduce {4 * m['P'] / 1e6:.2f} MB per step, "
              f"router inputs {4 * sum(m['D'])} bytes per sample, compute {1e3 * b / m['img_s']:.2f} ms per step of {b}")
        print("| link | R | step ms | compute ms (replicated routing) | gradients ms | routing + scalars ms | efficiency | speedup |")
        print("|---|---|---|---|---|---|---|---|")
        for link, gbit, lat_us in LINKS:
            bw = gbit * 1e9 / 8
            lat = (a.latency_us or lat_us) * 1e-6
            last_ok = 1
            for R in (2, 4, 8, 16, 32, 64):
                c, g, r, rep = step(m, R, b, bw, lat, a.global_batch)
                t = c + g + r
                own = c - rep
                eff = own / t
                if eff >= 0.5:
                    last_ok = R
                print(f"| {link} | {R} | {1e3 * t:.2f} | {1e3 * c:.2f} ({1e3 * rep:.3f}) | {1e3 * g:.2f} | {1e3 * r:.3f} | "
                      f"{eff:.2f} | {R * eff:.1f}x |")
            # the R where the overheads equal the useful compute (efficiency 50%), over powers of two
            print(f"| {link} | largest R with efficiency >= 0.5 (of 2..64): {last_ok} | | | | | | |")
        print()


if __name__ == "__main__":
    main()
