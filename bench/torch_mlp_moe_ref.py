#!/usr/bin/env python3
"""PyTorch peer for moelab's MLP MoE training-step benchmark (CPU): `moelab bench --model mlp`.

The demo's model (configs/demo.yaml, model.type mlp: core/model/net_mlp.c, core/model/moe.c):
  encoder  Linear(784, 256) + ReLU + Linear(256, 64) = z            (28x28x1 images, flattened)
  MoE      router Linear(64, E), softmax, top-k (k=2), gates renormalised to sum 1;
           y = sum_k g_k (z + f_e(z)) (= z + sum_k g_k f_e(z)); E residual-MLP experts
           f_e(z) = Linear(128, 64)(ReLU(Linear(64, 128)(z)))
  decoder  Linear(64, 256) + ReLU + Linear(256, 784) + sigmoid
  loss     MSE(x_hat, x) + 0.01 * E * sum_i f_i * P_i   (Switch load balance; f_i: share of the
           dispatched slots, P_i: mean probability)
  step     forward, backward, Adam(lr 1e-3); random images in [0, 1), a fresh batch each step
           from a pool of 16; two warm-up steps
Variants (--variant):
  loop     the experts as nn.ModuleList, one loop over them, each on the samples routed to it
           (experts without samples skipped), as MoE code in PyTorch is usually written
  batched  the experts' weights stacked, (E, 128, 64) ...; each dispatched slot gathers its
           expert's weights and all slots go through torch.bmm at once
Idle experts (--idle-experts), what Adam does with the experts a step did not use:
  dense    every parameter updated every step (moelab's optim.idle_experts: dense): every
           .grad exists from the start and zero_grad keeps it (set_to_none=False), so an idle
           expert's zero gradient still decays its moments and moves its weights
  lazy     (loop only) zero_grad(set_to_none=True): an idle expert's .grad is None and
           torch.optim.Adam skips it, its state and step count untouched (optim.idle_experts: lazy)
Needs Debian's python3-torch; run it with /usr/bin/python3. OMP_WAIT_POLICY=PASSIVE is set
below unless the environment sets it (as ../shared/bench/torch_srnn_ref.py does).
Prints one line:
  torch_mlp_step batch=B experts=E top_k=K idle=dense|lazy variant=loop|batched threads=T
                 img_per_s=X ms_per_step=Y peak_rss_mb=M
"""
import argparse, os, resource, time

# Active OpenMP spinning halves PyTorch's speed on a 2-core machine; passive waiting is its best setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch, torch.nn as nn, torch.nn.functional as F

DIN, HID, LAT, EH = 784, 256, 64, 128


class Expert(nn.Module):
    def __init__(s):
        super().__init__()
        s.fc1, s.fc2 = nn.Linear(LAT, EH), nn.Linear(EH, LAT)

    def forward(s, z):
        return s.fc2(F.relu(s.fc1(z)))


class LoopMoE(nn.Module):
    def __init__(s, E, k):
        super().__init__()
        s.k = k
        s.router = nn.Linear(LAT, E)
        s.experts = nn.ModuleList([Expert() for _ in range(E)])

    def forward(s, z):
        p = s.router(z).softmax(-1)
        g, idx = p.topk(s.k, -1)
        g = g / g.sum(-1, keepdim=True)
        out = torch.zeros_like(z)
        for e, ex in enumerate(s.experts):
            hit = idx == e
            rows = hit.any(-1).nonzero().squeeze(-1)
            if rows.numel():
                ge = (g[rows] * hit[rows]).sum(-1, keepdim=True)
                out = out.index_add(0, rows, ge * ex(z[rows]))
        return z + out, p, idx


class BatchedMoE(nn.Module):
    def __init__(s, E, k):
        super().__init__()
        s.k = k
        s.router = nn.Linear(LAT, E)
        b1, b2 = 1 / LAT ** 0.5, 1 / EH ** 0.5  # nn.Linear's init bounds
        s.w1 = nn.Parameter(torch.empty(E, EH, LAT).uniform_(-b1, b1))
        s.b1 = nn.Parameter(torch.empty(E, EH).uniform_(-b1, b1))
        s.w2 = nn.Parameter(torch.empty(E, LAT, EH).uniform_(-b2, b2))
        s.b2 = nn.Parameter(torch.empty(E, LAT).uniform_(-b2, b2))

    def forward(s, z):
        p = s.router(z).softmax(-1)
        g, idx = p.topk(s.k, -1)
        g = g / g.sum(-1, keepdim=True)
        e = idx.flatten()                                     # (B*k) slot -> expert
        zs = z.repeat_interleave(s.k, 0)                      # (B*k, 64)
        h = F.relu(torch.bmm(s.w1[e], zs.unsqueeze(-1)).squeeze(-1) + s.b1[e])
        f = torch.bmm(s.w2[e], h.unsqueeze(-1)).squeeze(-1) + s.b2[e]
        out = (g.flatten().unsqueeze(-1) * f).view(z.shape[0], s.k, LAT).sum(1)
        return z + out, p, idx


class MlpMoE(nn.Module):
    def __init__(s, E, k, variant):
        super().__init__()
        s.enc = nn.Sequential(nn.Linear(DIN, HID), nn.ReLU(), nn.Linear(HID, LAT))
        s.moe = (LoopMoE if variant == "loop" else BatchedMoE)(E, k)
        s.dec = nn.Sequential(nn.Linear(LAT, HID), nn.ReLU(), nn.Linear(HID, DIN))

    def forward(s, x):
        y, p, idx = s.moe(s.enc(x))
        return torch.sigmoid(s.dec(y)), p, idx


def load_balance(p, idx):
    E = p.shape[1]
    f = torch.bincount(idx.flatten(), minlength=E).to(p.dtype) / idx.numel()
    return E * (f * p.mean(0)).sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--idle-experts", choices=("dense", "lazy"), default="dense")
    ap.add_argument("--variant", choices=("loop", "batched"), default="loop")
    a = ap.parse_args()
    if a.variant == "batched" and a.idle_experts == "lazy":
        ap.error("--variant batched stacks the experts' weights: only --idle-experts dense")
    B, lazy = a.batch, a.idle_experts == "lazy"
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = MlpMoE(a.experts, a.top_k, a.variant)
    if not lazy:  # every parameter has a gradient from the start: Adam updates all of them each step
        for q in model.parameters():
            q.grad = torch.zeros_like(q)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xs = torch.rand(16, B, DIN)

    def step(i):
        x = xs[i % 16]
        xh, p, idx = model(x)
        loss = F.mse_loss(xh, x) + 0.01 * load_balance(p, idx)
        opt.zero_grad(set_to_none=lazy)
        loss.backward()
        opt.step()

    for i in range(2):
        step(i)
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i + 2)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch_mlp_step batch={B} experts={a.experts} top_k={a.top_k} idle={a.idle_experts} variant={a.variant} "
          f"threads={a.threads} img_per_s={a.steps * B / dt:.1f} ms_per_step={dt / a.steps * 1e3:.3f} "
          f"peak_rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
