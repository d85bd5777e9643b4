/*
 * segloss.h — task losses on mask logits for binary segmentation (the COD model's decoder
 * output): binary cross-entropy with logits, soft IoU and soft Dice, each with optional
 * per-pixel weights.
 *
 * Shapes: z (logits) and t (targets in [0, 1], soft targets allowed) are (B, N), N the
 * pixels of one image's mask (H W, or C H W for a multi-channel mask); wt, when given, is
 * (B, N) of weights >= 0 with a positive sum per image. p = sigmoid(z).
 * Every loss is a mean over the B images of a per-image value; _forward returns it (summed
 * in double), _backward ACCUMULATES scale * dloss/dz into dz (scale: the caller's weight of
 * this loss, e.g. 1 for BCE + 1 for IoU). Combining losses is the caller's sum.
 *
 * With per-pixel weights these are the "structure loss" of F3Net (Wei et al., AAAI 2020)
 * that PraNet and SINet-v2 train COD models with: wt = 1 + 5 |avgpool_31(t) - t| (with
 * ml_avgpool_forward(..., k = 31), which divides by the in-image count; their PyTorch code's
 * F.avg_pool2d(..., 31, 1, 15) counts the padding, so their weights grow near the image
 * border where the mask touches it), loss = wBCE + wIoU with smooth 1.
 */
#ifndef MOELAB_SEGLOSS_H
#define MOELAB_SEGLOSS_H

/*
 * Binary cross-entropy on logits, numerically stable for any z:
 *   l(z, t) = max(z, 0) - z t + log(1 + exp(-|z|))     (= -t log p - (1 - t) log(1 - p)),
 * dl/dz = p - t. Without weights: the mean over all B N pixels, exactly PyTorch's
 * F.binary_cross_entropy_with_logits(z, t) (reduction 'mean'); with weights: per image
 * sum(wt l) / sum(wt), then the mean over images (F3Net's wBCE; wt = 1 gives the former).
 */
double ml_bce_logits_forward(const float *z,    // (B, N)
                             const float *t,    // (B, N)
                             const float *wt,   // (B, N) or NULL
                             int B, int N);
void ml_bce_logits_backward(float *dz,         // (B, N)
                            const float *z,    // (B, N)
                            const float *t,    // (B, N)
                            const float *wt,   // (B, N) or NULL
                            int B, int N, float scale);

/*
 * Soft IoU (Jaccard) loss, per image with I = sum wt p t, P = sum wt p, T = sum wt t
 * (wt = 1 when NULL) and U = P + T - I (the soft union):
 *   L_b = 1 - (I + s) / (U + s),     loss = mean_b L_b;
 *   dL_b/dp_j = wt_j [(I + s)(1 - t_j) - (U + s) t_j] / (U + s)^2,  dp/dz = p (1 - p).
 * smooth s (> 0; 1 is the common choice, in pixel-count units): an empty target predicted
 * empty gives L -> 0 instead of 0/0, and small objects are not dominated by single pixels.
 */
double ml_soft_iou_forward(const float *z, const float *t, const float *wt, int B, int N,
                           float smooth);
void ml_soft_iou_backward(float *dz,         // (B, N)
                          const float *z,    // (B, N)
                          const float *t,    // (B, N)
                          const float *wt,   // (B, N) or NULL
                          int B, int N, float smooth, float scale);

/*
 * Soft Dice loss, per image (I, P, T as above):
 *   L_b = 1 - (2 I + s) / (P + T + s),   loss = mean_b L_b;
 *   dL_b/dp_j = wt_j [(2 I + s) - 2 t_j (P + T + s)] / (P + T + s)^2.
 */
double ml_soft_dice_forward(const float *z, const float *t, const float *wt, int B, int N,
                            float smooth);
void ml_soft_dice_backward(float *dz,         // (B, N)
                           const float *z,    // (B, N)
                           const float *t,    // (B, N)
                           const float *wt,   // (B, N) or NULL
                           int B, int N, float smooth, float scale);

#endif
