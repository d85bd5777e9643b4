/*
 * cod_experts.h — the experts of the camouflaged-object segmentation MoE (model.type: cod;
 * /work/shared/seeds/router-anti-collapse.md, issue 10): residual convolutional blocks of
 * four kinds, applied to whole feature maps (C, H, W) of the images routed to them.
 *
 * Every expert: four parallel branches of C/4 channels (each a convolution + bias + ReLU),
 * concatenated to C channels, a 1x1 fusion convolution, GroupNorm and ReLU:
 *     f(x) = relu(GN(W_fuse · [b0, b1, b2, b3] + c)),     the MoE layer adds x (moe.h)
 *   texture    b0..b3 = conv 3x3, 5x5, 7x7, 1x1 of x (multi-scale texture filters);
 *   frequency  low = A3 x, mid = A3 x - A5 x, high = x - A3 x (box averages, nn/filter.h),
 *              b0..b2 = conv 3x3 of low, mid, high; b3 = conv 1x1 of x;
 *   edge       fixed depthwise Sobel-x, Sobel-y and Laplacian of each channel, b0..b2 =
 *              conv 1x1 of each; b3 = conv 1x1 of x;
 *   contrast   local contrast normalisation (x - local mean) / local std over 3x3, 5x5 and
 *              7x7 windows (nn/filter.h), b0..b2 = conv 3x3 of each; b3 = conv 1x1 of x.
 * GroupNorm, not batch norm, because an expert sees only the few images routed to it
 * (nn/groupnorm.h says why), in groups of 8 channels (G = C/8; one group when C < 8), the
 * range Wu & He found robust.
 *
 * Tensors of expert e (describe order), "moe<L>.expert<e>.<kind>.<name>": b0.w b0.b b1.w
 * b1.b b2.w b2.b b3.w b3.b (branch convs, (C/4, C, k, k)), fuse.w fuse.b ((C, C, 1, 1)),
 * gn.gamma gn.beta ((C)). Initialised as PyTorch's Conv2d (U(±1/sqrt(fan_in))) and
 * GroupNorm (1, 0).
 *
 * The kind of expert e is kinds[e % n_kinds] of the config, so the experts a layer grows
 * by (add_experts, a checkpoint with more) continue the list's cycle.
 */
#ifndef MOELAB_COD_EXPERTS_H
#define MOELAB_COD_EXPERTS_H

#include "model/moe.h"

enum { ML_COD_TEXTURE = 0, ML_COD_FREQUENCY = 1, ML_COD_EDGE = 2, ML_COD_CONTRAST = 3, ML_COD_KINDS = 4 };

#define ML_COD_MAX_KINDS 64

/* A layer's experts: feature maps of C channels (C % 4 == 0), H x W pixels. */
typedef struct ml_cod_expert_cfg {
    int C, H, W;
    int n_kinds;
    int kinds[ML_COD_MAX_KINDS]; /* ML_COD_* of expert e % n_kinds */
} ml_cod_expert_cfg;

extern const ml_expert_kind ml_expert_cod;

/* "texture" -> ML_COD_TEXTURE, ...; -1 for an unknown name. */
int ml_cod_kind_parse(const char *name);
const char *ml_cod_kind_name(int kind);

#endif
