#!/usr/bin/env python3
"""PyTorch peer for moelab's cod training-step benchmark (CPU): `moelab bench --model cod`.

The camouflaged-object segmentation MoE of moelab (model.type cod: core/model/net_cod.c and
core/model/cod_experts.c), layer for layer, so that moelab and PyTorch time the same work:
  encoder  4 stages of Conv2d(3x3, stride 2, pad 1) + BatchNorm2d + ReLU, channels C->32->64->128->256,
           each followed by an MoE layer on its feature map
  MoE      router Linear(C_l -> E) on the globally average-pooled map (per image), softmax, top-k (k=2),
           gates renormalised to sum 1; y = x + sum_k g_k f_e(x) (= sum_k g_k (x + f_e(x)), moelab's form);
           E = 6 experts of kinds texture, frequency, edge, contrast, texture, frequency; every expert:
           four branches of C/4 channels, each conv + ReLU, concatenated, 1x1 fusion conv,
           GroupNorm(C/8 groups; 1 when C < 8, eps 1e-5), ReLU:
             texture    convs 3x3, 5x5, 7x7, 1x1 of x
             frequency  low = A3 x, mid = A3 x - A5 x, high = x - A3 x (A_k: avg_pool2d k, stride 1, pad k//2,
                        count_include_pad=False, as moelab's filters), convs 3x3 of each; conv 1x1 of x
             edge       fixed depthwise Sobel-x/8, Sobel-y/8, Laplacian (zero padding), conv 1x1 of each;
                        conv 1x1 of x
             contrast   local contrast normalisation (x - A_k x) / sqrt(A_k(x^2) - (A_k x)^2 + 1e-4) for
                        k = 3, 5, 7 (moments of x minus its plane mean, as moelab), conv 3x3 of each; conv 1x1 of x
           written as PyTorch MoE code usually is: one loop over the experts, each on the images routed to it
  decoder  U-Net: d = ReLU(BN(Conv3x3([up2(deeper), skip]))) at scales 3, 2, 1 (skips: the MoE outputs),
           logit = Conv3x3(up2(d_1)) -> (B, 1, H, W); up2 = bilinear x2, align_corners=False
  loss     BCE-with-logits + soft IoU (smooth 1, per image, mean) against the mask
           + 0.01 * sum over the 4 layers of the Switch load-balance loss E * sum_i f_i * P_i
           (f_i: share of the dispatched slots, P_i: mean probability)
  step     forward, backward, Adam(lr 1e-3); random images in [0, 1) and random binary masks
Needs Debian's python3-torch; run it with /usr/bin/python3. OMP_WAIT_POLICY=PASSIVE is set
below unless the environment sets it (as ../shared/bench/torch_srnn_ref.py does).
Prints one line:
  torch_cod_step image=HxWxC batch=B experts=E top_k=K threads=T img_per_s=X ms_per_step=Y peak_rss_mb=M
tests/fixtures/cod/torch_cod_check.py imports CodNet and seg_loss from here to check that this is
moelab's network (same weights -> same routing, mask logits, losses and gradients).
"""
import argparse, os, resource, time

# Active OpenMP spinning halves PyTorch's speed on a 2-core machine; passive waiting is its best setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch, torch.nn as nn, torch.nn.functional as F

KINDS = ("texture", "frequency", "edge", "contrast", "texture", "frequency")
BRANCH_K = {"texture": (3, 5, 7, 1), "frequency": (3, 3, 3, 1), "edge": (1, 1, 1, 1), "contrast": (3, 3, 3, 1)}
EDGE_KERNELS = (  # cross-correlation kernels, y down (core/nn/filter.h)
    [[-1 / 8, 0, 1 / 8], [-2 / 8, 0, 2 / 8], [-1 / 8, 0, 1 / 8]],
    [[-1 / 8, -2 / 8, -1 / 8], [0, 0, 0], [1 / 8, 2 / 8, 1 / 8]],
    [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
)
LCN_K, LCN_EPS = (3, 5, 7), 1e-4
FREQ_K1, FREQ_K2 = 3, 5


def box(x, k):
    return F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)


def lcn(x, k):
    xc = x - x.mean((2, 3), keepdim=True)
    mu = box(xc, k)
    s2 = (box(xc * xc, k) - mu * mu).clamp_min(0)
    return (xc - mu) * torch.rsqrt(s2 + LCN_EPS)


def up2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class Expert(nn.Module):
    def __init__(s, kind, C):
        super().__init__()
        s.kind, q = kind, C // 4
        s.branch = nn.ModuleList([nn.Conv2d(C, q, k, padding=k // 2) for k in BRANCH_K[kind]])
        s.fuse = nn.Conv2d(C, C, 1)
        s.gn = nn.GroupNorm(C // 8 if C % 8 == 0 else 1, C, eps=1e-5)
        if kind == "edge":
            s.register_buffer("edge_w", torch.tensor(EDGE_KERNELS).view(3, 1, 1, 3, 3).repeat(1, C, 1, 1, 1))

    def forward(s, x):
        if s.kind == "frequency":
            a1, a2 = box(x, FREQ_K1), box(x, FREQ_K2)
            ins = (a1, a1 - a2, x - a1, x)
        elif s.kind == "edge":
            ins = tuple(F.conv2d(x, w, padding=1, groups=x.shape[1]) for w in s.edge_w) + (x,)
        elif s.kind == "contrast":
            ins = tuple(lcn(x, k) for k in LCN_K) + (x,)
        else:
            ins = (x, x, x, x)
        h = torch.cat([F.relu(conv(i)) for conv, i in zip(s.branch, ins)], 1)
        return F.relu(s.gn(s.fuse(h)))


class MoE(nn.Module):
    """Per-image routing on the pooled map; returns y and the layer's routing record."""

    def __init__(s, C, E, k, kinds):
        super().__init__()
        s.k = k
        s.router = nn.Linear(C, E)
        s.experts = nn.ModuleList([Expert(kinds[e % len(kinds)], C) for e in range(E)])

    def forward(s, x):
        logits = s.router(x.mean((2, 3)))
        p = logits.softmax(-1)
        g, idx = p.topk(s.k, -1)
        g = g / g.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, ex in enumerate(s.experts):
            hit = idx == e
            rows = hit.any(-1).nonzero().squeeze(-1)
            if rows.numel():
                ge = (g[rows] * hit[rows]).sum(-1)
                out = out.index_add(0, rows, ge.view(-1, 1, 1, 1) * ex(x[rows]))
        return x + out, p, idx


def conv_bn(i, o, stride):
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.BatchNorm2d(o), nn.ReLU())


class CodNet(nn.Module):
    def __init__(s, C=3, channels=(32, 64, 128, 256), E=6, k=2, kinds=KINDS):
        super().__init__()
        cin, s.enc, s.moe = C, nn.ModuleList(), nn.ModuleList()
        for c in channels:
            s.enc.append(conv_bn(cin, c, 2))
            s.moe.append(MoE(c, E, k, kinds))
            cin = c
        s.dec, deep = nn.ModuleList(), channels[-1]
        for l in (2, 1, 0):
            s.dec.append(conv_bn(deep + channels[l], channels[l], 1))
            deep = channels[l]
        s.out = nn.Conv2d(channels[0], 1, 3, 1, 1)

    def forward(s, x):
        skips, routes = [], []
        for stage, moe in zip(s.enc, s.moe):
            x, p, idx = moe(stage(x))
            skips.append(x)
            routes.append((p, idx))
        d = skips[3]
        for block, l in zip(s.dec, (2, 1, 0)):
            d = block(torch.cat([up2(d), skips[l]], 1))
        return s.out(up2(d)), routes


def load_balance(p, idx):
    E = p.shape[1]
    f = torch.bincount(idx.flatten(), minlength=E).to(p.dtype) / idx.numel()
    return E * (f * p.mean(0)).sum()


def seg_loss(z, t, routes, lb_coef=0.01):
    """(total, bce, iou, load-balance sum): BCE + soft IoU (smooth 1) + lb_coef * sum of the layers' lb."""
    bce = F.binary_cross_entropy_with_logits(z, t)
    p = torch.sigmoid(z)
    inter = (p * t).sum((1, 2, 3))
    union = p.sum((1, 2, 3)) + t.sum((1, 2, 3)) - inter
    iou = (1 - (inter + 1) / (union + 1)).mean()
    lb = sum(load_balance(p_, i_) for p_, i_ in routes)
    return bce + iou + lb_coef * lb, bce, iou, lb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="64x64x3", help="HxWxC")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--experts", type=int, default=6)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    H, W, C = (int(v) for v in a.image.split("x"))
    B = a.batch
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = CodNet(C, (32, 64, 128, 256), a.experts, a.top_k)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(B, C, H, W)
    mask = (torch.rand(B, 1, H, W) < 0.5).float()

    def step():
        z, routes = model(x)
        loss = seg_loss(z, mask, routes)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch_cod_step image={H}x{W}x{C} batch={B} experts={a.experts} top_k={a.top_k} threads={a.threads} "
          f"img_per_s={a.steps * B / dt:.1f} ms_per_step={dt / a.steps * 1e3:.1f} peak_rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
