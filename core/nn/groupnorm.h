/*
 * groupnorm.h — GroupNorm (Wu & He, "Group Normalization", ECCV 2018; PyTorch's
 * nn.GroupNorm(G, C, eps, affine=True)), optionally fused with a ReLU: the normalisation
 * inside the COD model's experts.
 *
 * Why not batch norm inside an expert (ml_batchnorm2d_*, conv.h). The BN kernels compute
 * correctly for any batch an expert gets (N = images x HW per channel, > 1 even for one
 * 64x64 image), but the statistics are a poor fit for a routed expert:
 *   - An expert's batch is the few images routed to it (top-2 of 6 experts at B = 16: about
 *     5 on average, sometimes 1 or 0), so its batch mean and variance are noisy, and they
 *     change with the routing: the output for one image depends on which OTHER images the
 *     router sent along with it — a coupling between samples that the router itself drives.
 *   - The routed subsets are biased by design (the router groups similar images), and the
 *     running statistics an expert uses at evaluation are an EMA over only the steps in
 *     which it got images, each with a different, routing-dependent mixture; when routing
 *     shifts (warm-up, intervention, growth) train and eval statistics disagree.
 *   - With data-parallel training each rank would see yet smaller per-expert batches, and
 *     BN would need its statistics all-reduced per expert.
 * GroupNorm normalises each image over groups of C/G channels and all pixels: no batch
 * statistics, no running statistics, the same computation in training and evaluation, and an
 * image's output independent of the rest of the batch (tests/check_seg.c checks exactly
 * that, and that BN fails it). The model should use GroupNorm in the experts (G = 8 for
 * C = 64: groups of 8 channels, the paper's robust range; G = C/4 ... C/16 works) and may
 * keep BN in the shared backbone and decoder, which see the whole batch.
 * G = 1 is LayerNorm over (C, H, W); G = C is InstanceNorm (affine).
 *
 * Free functions over raw float buffers (llm.c style); backward ACCUMULATES into dx, dgamma,
 * dbeta (each may be NULL). Every pointer is borrowed. Per (image, group) one thread, fixed
 * orders: bitwise identical results for any thread count.
 */
#ifndef MOELAB_GROUPNORM_H
#define MOELAB_GROUPNORM_H

/* ML_OK when C channels split into G groups (G >= 1, C % G == 0); else ML_ERR with a message
 * naming what. */
int ml_groupnorm_check(const char *what, int C, int G);

/*
 * y = gamma_c (x - mean_g) rstd_g + beta_c, then ReLU if relu != 0, with mean_g and the
 * BIASED variance var_g over the C/G channels and HW pixels of group g of each image, and
 * rstd_g = 1 / sqrt(var_g + eps) (PyTorch default eps 1e-5). Saves mean and rstd.
 */
void ml_groupnorm_forward(float *y,            // (B, C, HW)
                          float *mean,         // (B, G) out, saved for backward
                          float *rstd,         // (B, G) out, saved for backward
                          const float *x,      // (B, C, HW)
                          const float *gamma,  // (C)
                          const float *beta,   // (C)
                          int B, int C, int HW, int G, float eps, int relu);
/*
 * With xh = (x - mean) rstd, g = dy (masked by y > 0 under relu), and per group N = C/G HW,
 * h = gamma_c g:
 *   dbeta_c += sum_{b, pixels} g,   dgamma_c += sum_{b, pixels} g xh,
 *   dx += rstd (h - mean_group(h) - xh mean_group(h xh)).
 * y is needed only when relu != 0 (may be NULL otherwise).
 */
void ml_groupnorm_backward(float *dx,            // (B, C, HW) or NULL
                           float *dgamma,        // (C) or NULL
                           float *dbeta,         // (C) or NULL
                           const float *dy,      // (B, C, HW)
                           const float *y,       // (B, C, HW), or NULL if !relu
                           const float *x,       // (B, C, HW)
                           const float *mean,    // (B, G) from forward
                           const float *rstd,    // (B, G) from forward
                           const float *gamma,   // (C)
                           int B, int C, int HW, int G, int relu);

#endif
