/*
 * conv.h — the convolution kernels of the SRNN model: conv2d, transposed conv2d,
 * batch norm 2d (optionally fused with ReLU) and U-Net channel concatenation, forward and
 * backward side by side, over raw NCHW float buffers (llm.c style).
 *
 * Convolutions are lowered to a few large cblas_sgemm calls: the batch is folded into the
 * GEMM's N dimension in chunks of images (im2col / col2im per chunk), so even the 4x4
 * layers deep in the network run as big GEMMs. Large kernel-4 stride-2 transposed convs
 * use the sub-pixel form (all 4 output phases from one input window, no overlapping
 * scatter) with Winograd F(3x3, 2x2) tiles (16 small GEMMs, each thread on its own images),
 * and stride-1 convs with few output channels direct register-blocked loops. OpenBLAS (its
 * OpenMP build) threads the GEMMs and OpenMP the data movement, in one thread pool; every
 * reduction has a fixed order, so results are bitwise identical for the same thread count.
 *
 * Ownership: every pointer is borrowed. Parameters (w, b, gamma, beta), their gradients
 * and the running statistics live in the model's blocks; activations and the saved batch
 * statistics (mean, rstd) belong to the step; the workspace belongs to the caller, who
 * sizes it with ml_conv_workspace_floats() (one workspace, sized to the largest layer, may
 * be shared by all layers of a model, never by two calls running at once).
 * Backward functions ACCUMULATE (+=) into dx, dw, db, dgamma, dbeta; any of these may be
 * NULL when that gradient is not wanted (e.g. dx of the first layer). Two exceptions, for
 * buffers that get only one gradient: conv2d writes dx when the shape's write_dx is set, and
 * the two-input transposed conv (ml_convt2d_backward_cat) always writes its dxa, dxb.
 */
#ifndef MOELAB_CONV_H
#define MOELAB_CONV_H

#include <stddef.h>

#include "base/comm.h"
#include "base/common.h"

/* Activation fused into a convolution's forward output (and undone in its backward). */
typedef enum ml_conv_act {
    ML_CONV_ACT_NONE = 0,
    ML_CONV_ACT_RELU = 1,
    ML_CONV_ACT_SIGMOID = 2,
} ml_conv_act;

/*
 * The shape of one conv or transposed-conv layer, filled by ml_conv2d_shape() or
 * ml_convt2d_shape(); treat it as read-only afterwards.
 *   conv2d:  x (B, C, H, W), w (O, C, k, k), b (O) -> y (B, O, Ho, Wo),
 *            Ho = (H + 2 pad - k) / stride + 1
 *   convt2d: x (B, C, H, W), w (C, O, k, k) (PyTorch ConvTranspose2d layout), b (O)
 *            -> y (B, O, Ho, Wo), Ho = (H - 1) stride - 2 pad + k
 */
typedef struct ml_conv_shape {
    int B, C, H, W;       /* input */
    int O, k, stride, pad;
    int Ho, Wo;           /* output */
    int transposed;       /* 1 for convt2d */
    ml_conv_act act;      /* applied to y after the bias */
    int chunk;            /* images per GEMM (batch folded into N); set by the shape functions,
                             a caller may lower it (never below 1) */
    int direct;           /* 1: computed by direct loops, not GEMMs (stride-1 conv2d with few
                             output channels, where im2col would cost more than the math);
                             2: the forward by direct loops, the backward on GEMMs (stride 1,
                             up to 64 output channels, 16- to 32-wide rows);
                             3: 3x3 stride 2 on up to 16 input channels (the encoders' first
                             conv): forward, dw and db by direct loops, dx on GEMMs;
                             4: 3x3 stride 2 on 17 to 32 input channels (the encoders' second
                             conv): the forward by 3's loops, the backward on GEMMs */
    int subpixel;         /* convt2d with kernel 4, stride 2, padding 1: 1 computed in the
                             sub-pixel form, 2 in its Winograd F(3x3, 2x2) form (see conv.c);
                             set by ml_convt2d_shape (2 from 8 x 8 inputs up), a caller may
                             change it before sizing the workspace (0: the general GEMM +
                             col2im path) */
    int write_dx;         /* conv2d: 0 (set by the shape function): backward accumulates into
                             dx; a caller may set 1: backward writes dx, which then needs no
                             zeroing */
    int team;             /* convt2d: the threads the workspace is sized for (OpenMP's maximum
                             when the shape was filled); the sub-pixel Winograd form (subpixel
                             2) runs on at most this many. A caller may lower it (never below
                             1), e.g. to the value a workspace was sized with */
} ml_conv_shape;

/* Fill s for a conv2d / transposed conv2d; ML_ERR with a message on a bad shape. */
int ml_conv2d_shape(ml_conv_shape *s, int B, int C, int H, int W, int O, int k, int stride,
                    int pad, ml_conv_act act);
int ml_convt2d_shape(ml_conv_shape *s, int B, int C, int H, int W, int O, int k, int stride,
                     int pad, ml_conv_act act);

/* Floats of workspace that forward and backward of this layer need. */
size_t ml_conv_workspace_floats(const ml_conv_shape *s);
/* Elements of x and y: B*C*H*W and B*O*Ho*Wo. */
size_t ml_conv_in_size(const ml_conv_shape *s);
size_t ml_conv_out_size(const ml_conv_shape *s);
/* Elements of w: O*C*k*k for both kinds. */
size_t ml_conv_weight_size(const ml_conv_shape *s);

/* y = act(conv2d(x, w) + b); b may be NULL (no bias). */
void ml_conv2d_forward(const ml_conv_shape *s,
                       float *y,         // (B, O, Ho, Wo)
                       const float *x,   // (B, C, H, W)
                       const float *w,   // (O, C, k, k)
                       const float *b,   // (O) or NULL
                       float *ws);       // ml_conv_workspace_floats(s)
/* dy is the gradient w.r.t. y (after act); y is the forward output, needed unless act is
 * NONE (may then be NULL). dx, dw, db accumulate and may each be NULL. */
void ml_conv2d_backward(const ml_conv_shape *s,
                        float *dx,        // (B, C, H, W) or NULL
                        float *dw,        // (O, C, k, k) or NULL
                        float *db,        // (O) or NULL
                        const float *dy,  // (B, O, Ho, Wo)
                        const float *y,   // (B, O, Ho, Wo), or NULL if act is NONE
                        const float *x,   // (B, C, H, W)
                        const float *w,   // (O, C, k, k)
                        float *ws);

/* y = act(conv_transpose2d(x, w) + b), PyTorch's ConvTranspose2d (output_padding 0). */
void ml_convt2d_forward(const ml_conv_shape *s,
                        float *y,         // (B, O, Ho, Wo)
                        const float *x,   // (B, C, H, W)
                        const float *w,   // (C, O, k, k)
                        const float *b,   // (O) or NULL
                        float *ws);
void ml_convt2d_backward(const ml_conv_shape *s,
                         float *dx,        // (B, C, H, W) or NULL
                         float *dw,        // (C, O, k, k) or NULL
                         float *db,        // (O) or NULL
                         const float *dy,  // (B, O, Ho, Wo)
                         const float *y,   // (B, O, Ho, Wo), or NULL if act is NONE
                         const float *x,   // (B, C, H, W)
                         const float *w,   // (C, O, k, k)
                         float *ws);

/*
 * The U-Net decoder's transposed conv on the channel concatenation [xa, xb] without building
 * it: s->C = Ca + Cb input channels, xa holds channels [0, Ca), xb the other Cb (the skip),
 * both read in place. Backward WRITES (=, not +=) dxa and dxb, so they need no zeroing
 * (both NULL: no input gradient), and accumulates dw and db as ml_convt2d_backward does.
 * 0 < Ca < s->C.
 */
void ml_convt2d_forward_cat(const ml_conv_shape *s, int Ca,
                            float *y,          // (B, O, Ho, Wo)
                            const float *xa,   // (B, Ca, H, W)
                            const float *xb,   // (B, C - Ca, H, W)
                            const float *w,    // (C, O, k, k)
                            const float *b,    // (O) or NULL
                            float *ws);
void ml_convt2d_backward_cat(const ml_conv_shape *s, int Ca,
                             float *dxa,        // (B, Ca, H, W) written, or NULL
                             float *dxb,        // (B, C - Ca, H, W) written, or NULL
                             float *dw,         // (C, O, k, k) or NULL
                             float *db,         // (O) or NULL
                             const float *dy,   // (B, O, Ho, Wo)
                             const float *y,    // (B, O, Ho, Wo), or NULL if act is NONE
                             const float *xa,   // (B, Ca, H, W)
                             const float *xb,   // (B, C - Ca, H, W)
                             const float *w,    // (C, O, k, k)
                             float *ws);

/*
 * ml_convt2d_forward_cat followed by ml_conv2d_forward(next, ny, y, nw, nb): next, a
 * stride-1 conv2d on the direct kernel (next->direct) with the same map size, runs on each
 * chunk of y as soon as it is written, by the thread that wrote it, while it is in cache (the
 * SRNN's output conv, 32 -> 3 channels at 64 x 64: y is 32 MB at batch 64). y is still
 * written. The same bits as the two calls. Only when ml_convt2d_fuses_next_forward(s, next)
 * (the Winograd form, subpixel 2). ML_OK, or ML_ERR out of memory (a few KB for next's
 * weights).
 */
int ml_convt2d_fuses_next_forward(const ml_conv_shape *s, const ml_conv_shape *next);
int ml_convt2d_forward_cat_next(const ml_conv_shape *s, int Ca,
                                float *y,                 // (B, O, Ho, Wo)
                                const float *xa,          // (B, Ca, H, W)
                                const float *xb,          // (B, C - Ca, H, W)
                                const float *w,           // (C, O, k, k)
                                const float *b,           // (O) or NULL
                                const ml_conv_shape *next,
                                float *ny,                // (B, next O, Ho, Wo)
                                const float *nw,          // (next O, O, next k, next k)
                                const float *nb,          // (next O) or NULL
                                float *ws);

/*
 * ml_convt2d_backward_cat when the layer's output y feeds only a stride-1 conv2d `next` with
 * few output channels and the same map size (the SRNN's output conv, 32 -> 3 channels): the
 * layer's output gradient, next's input gradient, is not given but computed plane by plane
 * inside this layer's gather from next's output gradient ndy and output ny, and never stored
 * (at 64 x 64, batch 64 it is 32 MB, and next's own dx kernel, 3 channels in, is load bound).
 * With ndw, next's dw is accumulated here too, from each plane of y (next's input) while it
 * is in cache for the gather (else next's own backward reads all of y once more, 32 MB); then
 * call ml_conv2d_backward(next, NULL, NULL, ndb, ...) for next's db alone; or, with ndw NULL,
 * ml_conv2d_backward(next, NULL, ndw, ndb, ...) for both. Only when ml_convt2d_fuses_next(s,
 * next) (the Winograd form, subpixel 2; next->O <= ML_CONV_NEXT_MAX_O, next->k <=
 * ML_CONV_NEXT_MAX_K). Its sums run in another order than next's dx and dw kernels: the
 * results differ from the unfused pair's by rounding (ndw's also with the thread count: each
 * thread sums its own images' part).
 */
#define ML_CONV_NEXT_MAX_O 4
#define ML_CONV_NEXT_MAX_K 7
int ml_convt2d_fuses_next(const ml_conv_shape *s, const ml_conv_shape *next);
void ml_convt2d_backward_cat_next(const ml_conv_shape *s, int Ca,
                                  float *dxa,              // (B, Ca, H, W) written, or NULL
                                  float *dxb,              // (B, C - Ca, H, W) written, or NULL
                                  float *dw,               // (C, O, k, k) or NULL
                                  float *db,               // (O) or NULL
                                  const ml_conv_shape *next,
                                  const float *ndy,        // (B, next O, Ho, Wo)
                                  const float *ny,         // (B, next O, Ho, Wo), or NULL if next's act is NONE
                                  const float *nw,         // (next O, O, next k, next k)
                                  float *ndw,              // (next O, O, next k, next k) or NULL
                                  const float *y,          // (B, O, Ho, Wo); NULL only if act is NONE and ndw NULL
                                  const float *xa,         // (B, Ca, H, W)
                                  const float *xb,         // (B, C - Ca, H, W)
                                  const float *w,          // (C, O, k, k)
                                  float *ws);

/*
 * conv2d on the channel concatenation [xa, xb] without building it, as the transposed conv
 * above: s->C = Ca + Cb input channels, read in place (the U-Net decoder's [up2(deeper),
 * skip]). Backward accumulates into dxa and dxb (both or neither NULL), or writes them when
 * s->write_dx is set, and accumulates dw, db as ml_conv2d_backward does. s->direct must not
 * be 1 (a caller may clear it before sizing the workspace); 2, a direct forward, is fine.
 * 0 < Ca < s->C.
 */
void ml_conv2d_forward_cat(const ml_conv_shape *s, int Ca,
                           float *y,          // (B, O, Ho, Wo)
                           const float *xa,   // (B, Ca, H, W)
                           const float *xb,   // (B, C - Ca, H, W)
                           const float *w,    // (O, C, k, k)
                           const float *b,    // (O) or NULL
                           float *ws);
void ml_conv2d_backward_cat(const ml_conv_shape *s, int Ca,
                            float *dxa,        // (B, Ca, H, W) or NULL
                            float *dxb,        // (B, C - Ca, H, W) or NULL
                            float *dw,         // (O, C, k, k) or NULL
                            float *db,         // (O) or NULL
                            const float *dy,   // (B, O, Ho, Wo)
                            const float *y,    // (B, O, Ho, Wo), or NULL if act is NONE
                            const float *xa,   // (B, Ca, H, W)
                            const float *xb,   // (B, C - Ca, H, W)
                            const float *w,    // (O, C, k, k)
                            float *ws);

/*
 * n stride-1 convolutions of one input with odd kernels and padding k / 2, each with O output
 * channels and the same activation (the COD texture expert's 3x3, 5x5, 7x7 and 1x1 branches):
 * y_j = act(conv2d(x, w_j) + b_j). When they run on the GEMM path, forward and the weight
 * gradients share one column matrix whose rows are ordered by tap ring (the centre tap, then
 * the ring at distance 1, 2, ..., channels inner), so the taps of a k x k kernel are its first
 * k k C rows: ring r is multiplied once, by the weights of every branch that reaches it
 * stacked (M = O x those branches). The multiply-adds are those of the n convolutions, while
 * im2col and the GEMMs' packing move kmax^2 C rows per pixel instead of the sum of k_j^2 C
 * (49 C instead of 84 C for the texture expert). The input gradient runs per branch (conv2d's
 * dx as a convolution). When a branch is on the direct path (few output channels), every
 * branch runs as its own conv2d.
 */
#define ML_MCONV_MAX 4   /* branches */
#define ML_MCONV_MAX_K 7 /* largest kernel */
typedef struct ml_mconv_shape {
    int B, C, H, W, O, n;
    int k[ML_MCONV_MAX];          /* odd, <= ML_MCONV_MAX_K, in the caller's branch order */
    ml_conv_act act;
    int chunk;                    /* images per GEMM */
    int rings;                    /* 1: the shared ring-ordered column matrix; 0: per branch */
    ml_conv_shape br[ML_MCONV_MAX]; /* each branch as a conv2d (the per-branch path, dx) */
} ml_mconv_shape;

/* Fill s; ML_ERR with a message on a bad shape. */
int ml_mconv_shape_init(ml_mconv_shape *s, int B, int C, int H, int W, int O, int n, const int *k,
                        ml_conv_act act);
size_t ml_mconv_workspace_floats(const ml_mconv_shape *s);
/* y[j] (B, O, H, W) = act(conv2d(x, w[j]) + b[j]) for j < n; b[j] may be NULL. */
void ml_mconv_forward(const ml_mconv_shape *s, float *const *y, const float *x,
                      const float *const *w, const float *const *b, float *ws);
/* The n convolutions' backward: dx (or NULL) accumulates the branches' input gradients;
 * dw[j], db[j] accumulate (dw or db NULL: none). y[j] as in ml_conv2d_backward. */
void ml_mconv_backward(const ml_mconv_shape *s, float *dx, float *const *dw, float *const *db,
                       const float *const *dy, const float *const *y, const float *x,
                       const float *const *w, float *ws);

/*
 * BatchNorm2d with PyTorch's semantics. Training: normalise with the batch mean and the
 * biased batch variance, then running = (1 - momentum) running + momentum batch, with the
 * UNBIASED variance (N/(N-1)) for running_var; saves mean and rstd = 1/sqrt(var + eps) for
 * backward. running_mean/running_var may be NULL (not tracked). Eval: normalise with the
 * running statistics. relu != 0 fuses a ReLU after the affine map; backward then needs y.
 * PyTorch defaults: momentum 0.1, eps 1e-5. N = B*HW per channel, must be > 1 in training.
 */
void ml_batchnorm2d_forward_train(float *y,             // (B, C, HW)
                                  float *mean,          // (C) out, saved for backward
                                  float *rstd,          // (C) out, saved for backward
                                  float *running_mean,  // (C) in/out or NULL
                                  float *running_var,   // (C) in/out or NULL
                                  const float *x,       // (B, C, HW)
                                  const float *gamma,   // (C)
                                  const float *beta,    // (C)
                                  int B, int C, int HW, float momentum, float eps, int relu);
void ml_batchnorm2d_forward_eval(float *y,                  // (B, C, HW)
                                 const float *x,            // (B, C, HW)
                                 const float *gamma,        // (C)
                                 const float *beta,         // (C)
                                 const float *running_mean, // (C)
                                 const float *running_var,  // (C)
                                 int B, int C, int HW, float eps, int relu);
/* Backward of forward_train; dx, dgamma, dbeta accumulate and may be NULL; y only if relu. */
void ml_batchnorm2d_backward(float *dx,            // (B, C, HW) or NULL
                             float *dgamma,        // (C) or NULL
                             float *dbeta,         // (C) or NULL
                             const float *dy,      // (B, C, HW)
                             const float *y,       // (B, C, HW), or NULL if !relu
                             const float *x,       // (B, C, HW)
                             const float *mean,    // (C) from forward_train
                             const float *rstd,    // (C) from forward_train
                             const float *gamma,   // (C)
                             int B, int C, int HW, int relu);
/*
 * Synchronised batch norm (PyTorch's SyncBatchNorm) for a batch split over comm's processes
 * (base/comm.h): x is this process's B images; the mean and variance are the whole batch's
 * (the per-channel sums and the count summed over the processes), so every process
 * normalises with, saves and adds into its running statistics what one process computes on
 * the whole batch. Backward likewise: dx from the whole batch's sums of g and g xh, while
 * dgamma and dbeta get this process's part only (the caller sums gradients over the
 * processes). Collective: every process calls, with the same C (B may differ, even be 0).
 * comm NULL or of one process: exactly forward_train / backward. ML_OK or ML_ERR.
 */
int ml_batchnorm2d_forward_train_part(const ml_comm *comm, float *y, float *mean, float *rstd,
                                      float *running_mean, float *running_var, const float *x,
                                      const float *gamma, const float *beta, int B, int C, int HW,
                                      float momentum, float eps, int relu);
int ml_batchnorm2d_backward_part(const ml_comm *comm, float *dx, float *dgamma, float *dbeta,
                                 const float *dy, const float *y, const float *x, const float *mean,
                                 const float *rstd, const float *gamma, int B, int C, int HW, int relu);
/* The same with dx written, not added to (dx must not be NULL): bitwise what zeroing dx and
 * then ml_batchnorm2d_backward_part give, without the separate pass over dx (each plane is
 * zeroed in cache just before it is added to). */
int ml_batchnorm2d_backward_part_set(const ml_comm *comm, float *dx, float *dgamma, float *dbeta,
                                     const float *dy, const float *y, const float *x, const float *mean,
                                     const float *rstd, const float *gamma, int B, int C, int HW,
                                     int relu);
/* ml_batchnorm2d_backward_part_set with relu, without y: the ReLU's mask is recomputed from x
 * (x gamma rstd + (beta - mean gamma rstd) > 0, the floats forward_train computed y from), so
 * the same bits as passing y, with one stream less to read. beta: the forward's. */
int ml_batchnorm2d_relu_backward_part_set(const ml_comm *comm, float *dx, float *dgamma, float *dbeta,
                                          const float *dy, const float *x, const float *mean, const float *rstd,
                                          const float *gamma, const float *beta, int B, int C, int HW);

/* y = [a, b] along channels (U-Net skip); backward splits dy, accumulating into da, db
 * (either may be NULL). */
void ml_concat_channels_forward(float *y,        // (B, Ca + Cb, HW)
                                const float *a,  // (B, Ca, HW)
                                const float *b,  // (B, Cb, HW)
                                int B, int Ca, int Cb, int HW);
void ml_concat_channels_backward(float *da,        // (B, Ca, HW) or NULL
                                 float *db,        // (B, Cb, HW) or NULL
                                 const float *dy,  // (B, Ca + Cb, HW)
                                 int B, int Ca, int Cb, int HW);

#endif
