/*
 * filter.h — per-channel spatial filters that keep the image size, the building blocks of
 * the COD model's experts (docs/architecture.md; seeds/router-anti-collapse.md):
 *   - average pooling, k x k window, stride 1, 'same' padding (the frequency expert's
 *     low-pass, and the local statistics of contrast normalisation);
 *   - the frequency expert's three bands from two box filters;
 *   - depthwise convolution with a channel multiplier, and the fixed Sobel-x, Sobel-y and
 *     Laplacian kernels of the edge expert;
 *   - local contrast normalisation (the contrast expert).
 * Free functions over raw NCHW float buffers plus sizes (llm.c style), forward and backward
 * side by side. Backward functions ACCUMULATE (+=) into their gradient outputs, any of
 * which may be NULL when not wanted. Every pointer is borrowed; outputs never alias inputs
 * unless a function says so.
 *
 * Window sizes k are odd (k = 2r + 1 >= 1, the window centred on its pixel, padding r on
 * every side); ml_window_check() gives the message for a config value that is not.
 *
 * Borders: every average here divides by the number of window pixels INSIDE the image,
 * not by k^2 (PyTorch's F.avg_pool2d(x, k, stride=1, padding=k//2, count_include_pad=False);
 * PyTorch's default, count_include_pad=True, divides by k^2 and so treats the zero padding as
 * image). Chosen for the bands and the contrast statistics: with valid counts a constant
 * image has low band = the constant, mid = high = 0 and local variance 0 at EVERY pixel;
 * dividing by k^2 would scale the low band of a constant by (r+1)/k along the border and
 * ((r+1)/k)^2 in the corners (2/3 and 4/9 for 3x3) and paint a frame of spurious
 * high-frequency energy and contrast around every image, which the experts would learn as
 * an 'edge' of the image, not of the object. (The depthwise convolution is a learned/fixed linear filter, not an
 * average: it pads with zeros like PyTorch's Conv2d(padding=k//2).)
 *
 * Cost: averages are separable box filters, O(HW) per channel for any k: a horizontal pass
 * (k <= 15: the k taps of a zero-padded row summed in SIMD lanes, k/16 vector adds per
 * pixel; larger k: a running sum) and a vertical running sum of rows (2 vector adds per
 * pixel); one plane at a time so that every pass runs in L1/L2. Images x channels are split
 * over OpenMP threads when the tensor is large enough (small ones stay on one thread);
 * every plane is computed by one thread in a fixed order, so results are bitwise identical
 * for any thread count. Kernels that need per-thread scratch allocate it inside (one block
 * per thread per call) and abort() if that fails, as conv.c's direct kernels do.
 */
#ifndef MOELAB_FILTER_H
#define MOELAB_FILTER_H

#include <stddef.h>

/* ML_OK when k is a usable window size (odd, >= 1); else ML_ERR with a message that names
 * what (e.g. "lcn window") and the value. */
int ml_window_check(const char *what, int k);

/* ------------------------------------------------------------------------------------ */
/* average pooling: y = A_k x, A_k the k x k mean over the window's in-image pixels */

/* y may equal x (in place). */
void ml_avgpool_forward(float *y,         // (B, C, H, W)
                        const float *x,   // (B, C, H, W)
                        int B, int C, int H, int W, int k);
/* dx += A_k^T dy: the box sum of dy / count (A_k = D^-1 S with S the symmetric box sum
 * and D the diagonal of counts, so A_k^T = S D^-1). */
void ml_avgpool_backward(float *dx,         // (B, C, H, W)
                         const float *dy,   // (B, C, H, W)
                         int B, int C, int H, int W, int k);

/* ------------------------------------------------------------------------------------ */
/* frequency bands (the frequency expert): with A the averages above, k1 < k2 (the seed:
 * 3 and 5),
 *   low = A_k1 x,   mid = A_k1 x - A_k2 x (a difference of boxes: band-pass),
 *   high = x - A_k1 x.
 * Any output may be NULL (not computed). */
void ml_freqbands_forward(float *low,       // (B, C, H, W) or NULL
                          float *mid,       // (B, C, H, W) or NULL
                          float *high,      // (B, C, H, W) or NULL
                          const float *x,   // (B, C, H, W)
                          int B, int C, int H, int W, int k1, int k2);
/* dx += A1^T (dlow + dmid - dhigh) + dhigh - A2^T dmid; any band gradient may be NULL
 * (zero). */
void ml_freqbands_backward(float *dx,           // (B, C, H, W)
                           const float *dlow,   // (B, C, H, W) or NULL
                           const float *dmid,   // (B, C, H, W) or NULL
                           const float *dhigh,  // (B, C, H, W) or NULL
                           int B, int C, int H, int W, int k1, int k2);

/* ------------------------------------------------------------------------------------ */
/*
 * Depthwise convolution, stride 1, zero padding k/2 ('same'), channel multiplier m:
 *   y[b, c m + j] = b[c m + j] + sum_{ky, kx} w[c m + j, ky, kx] x[b, c, y + ky - k/2, x + kx - k/2]
 * i.e. PyTorch's Conv2d(C, C m, k, padding=k//2, groups=C), whose weight (C m, 1, k, k) is w
 * here; cross-correlation, like every conv of moelab. Sums use fused multiply-adds.
 */
void ml_dwconv_forward(float *y,         // (B, C m, H, W)
                       const float *x,   // (B, C, H, W)
                       const float *w,   // (C m, k, k)
                       const float *b,   // (C m) or NULL
                       int B, int C, int H, int W, int m, int k);
/* dx, dw, db accumulate and may each be NULL (fixed filters: dw = db = NULL). */
void ml_dwconv_backward(float *dx,         // (B, C, H, W) or NULL
                        float *dw,         // (C m, k, k) or NULL
                        float *db,         // (C m) or NULL
                        const float *dy,   // (B, C m, H, W)
                        const float *x,    // (B, C, H, W)
                        const float *w,    // (C m, k, k)
                        int B, int C, int H, int W, int m, int k);

/*
 * The edge expert's fixed 3 x 3 kernels, row-major [ky][kx], y pointing down, for
 * cross-correlation (above):
 *   Sobel-x  = 1/8 [-1 0 1; -2 0 2; -1 0 1]     (d/dx: +1 for a ramp rising by 1 per column)
 *   Sobel-y  = 1/8 [-1 -2 -1; 0 0 0; 1 2 1]     (d/dy: +1 for a ramp rising by 1 per row)
 *   Laplacian =    [0 1 0; 1 -4 1; 0 1 0]       (the 5-point d2/dx2 + d2/dy2: 4 on x^2 + y^2)
 * The 1/8 makes Sobel a derivative estimate in units of the input per pixel (the sum of
 * its positive taps times the 2-pixel baseline), so the three responses have comparable
 * scale; the 1x1 conv and the norm that follow each filter make any fixed scale learnable
 * anyway. Inside the image a linear ramp a x + b y + c gives exactly a, b and 0; in the
 * outermost pixels the zero padding adds a response to the image border itself.
 */
extern const float ml_kernel_sobel_x[9];
extern const float ml_kernel_sobel_y[9];
extern const float ml_kernel_laplacian[9];
/* w (3C, 3, 3) for ml_dwconv_*(..., m = 3, k = 3): channel c gets Sobel-x, Sobel-y,
 * Laplacian as outputs 3c, 3c + 1, 3c + 2. */
void ml_dwconv_edge_weights(float *w,   // (3 C, 3, 3) out
                            int C);

/* ------------------------------------------------------------------------------------ */
/*
 * Local contrast normalisation, per channel over a k x k window (the contrast expert):
 *   mu = A_k x,  s2 = A_k(x^2) - mu^2  (the window's biased variance),  r = 1/sqrt(s2 + eps),
 *   y = (x - mu) r,
 * A_k the in-image averages above, so mu and s2 are the mean and variance of exactly the
 * in-image pixels of each window. (The subtractive-then-divisive normalisation of Jarrett
 * et al., "What is the best multi-stage architecture for object recognition?", ICCV 2009,
 * and of Pinto et al. 2008, with the box window and the plain window variance of the issue;
 * Jarrett's divisive step uses A(v^2), v = x - A x, and max(c, sigma) instead of + eps.)
 * eps is in units of x^2: it bounds r by 1/sqrt(eps) where the window is flat, which is also
 * the largest factor a gradient is multiplied by; 1e-4 for unit-scale features is a
 * reasonable start (1e-5, BN's, lets a flat patch amplify by 316).
 * Numerics: the moments are taken of x minus its plane mean (which changes neither mu - x
 * nor s2, because A_k averages: A_k 1 = 1), so A(x^2) - mu^2 does not cancel away a large
 * common offset; s2 is clamped at 0 against rounding.
 * Forward saves mean = mu and rstd = r (per pixel) for backward.
 */
void ml_lcn_forward(float *y,         // (B, C, H, W)
                    float *mean,      // (B, C, H, W) out, saved for backward
                    float *rstd,      // (B, C, H, W) out, saved for backward
                    const float *x,   // (B, C, H, W)
                    int B, int C, int H, int W, int k, float eps);
/*
 * Backward. With g = dL/dy, a = g r, b = a y r = g (x - mu) r^3 (all per pixel):
 *   dL/dr = g (x - mu),  dL/ds2 = -1/2 g (x - mu) r^3 = -b/2,
 *   dL/dmu (direct and through s2 = A(x^2) - mu^2) = -a + 2 mu b/2 = -a + mu b,
 *   dL/d(A(x^2)) = -b/2,
 * and back through mu = A x and A(x^2) (adjoint A^T, and d(x^2) = 2 x):
 *   dx = a + A^T(-a + mu b) + 2 x A^T(-b/2)
 *      = a - A^T(a - mu b) - x A^T(b).
 * Two adjoint box filters per plane. As in forward, x and mu enter as x - m and mu - m
 * (m the plane mean): the expression is unchanged by any common shift, because the sum of
 * its x and mu terms is, and y depends on x only through x - m (so no gradient flows into m).
 */
void ml_lcn_backward(float *dx,           // (B, C, H, W)
                     const float *dy,     // (B, C, H, W)
                     const float *y,      // (B, C, H, W) forward output
                     const float *x,      // (B, C, H, W)
                     const float *mean,   // (B, C, H, W) from forward
                     const float *rstd,   // (B, C, H, W) from forward
                     int B, int C, int H, int W, int k);

#endif
