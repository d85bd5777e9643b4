/*
 * resample.h — kernels that change the spatial size of NCHW feature maps: the global
 * average pool that feeds the per-image router, and the decoder's upsampling (bilinear and
 * nearest, by an integer factor).
 *
 * Free functions over raw float buffers plus sizes (llm.c style), forward and backward side
 * by side; backward functions ACCUMULATE (+=) into their gradient outputs. Every pointer is
 * borrowed; outputs never alias inputs. Planes (image, channel) are split over OpenMP
 * threads when the tensor is large enough, each plane computed by one thread in a fixed
 * order: results are bitwise identical for any thread count.
 */
#ifndef MOELAB_RESAMPLE_H
#define MOELAB_RESAMPLE_H

#include <stddef.h>

/* ML_OK when s is a usable upsampling factor (>= 1); else ML_ERR with a message naming
 * what and the value. */
int ml_upsample_check(const char *what, int s);

/* y[b, c] = mean of x[b, c] over its HW pixels (PyTorch's F.adaptive_avg_pool2d(x, 1)
 * flattened); the sum is taken in 16 float partials, then in order. */
void ml_global_avgpool_forward(float *y,         // (B, C)
                               const float *x,   // (B, C, H, W), HW = H W
                               int B, int C, int HW);
/* dx[b, c, :] += dy[b, c] / HW */
void ml_global_avgpool_backward(float *dx,         // (B, C, H, W)
                                const float *dy,   // (B, C)
                                int B, int C, int HW);

/*
 * Bilinear upsampling by an integer factor s, exactly PyTorch's
 * F.interpolate(x, scale_factor=s, mode='bilinear', align_corners=False) (and
 * nn.Upsample(scale_factor=s, mode='bilinear')). Per axis, output index d reads
 *   src = (d + 0.5) / s - 0.5, clamped below at 0 (PyTorch's area_pixel_compute_source_index),
 *   i0 = floor(src), i1 = min(i0 + 1, n - 1), l1 = src - i0, l0 = 1 - l1,
 * and y = l0y (l0x x[i0y][i0x] + l1x x[i0y][i1x]) + l1y (l0x x[i1y][i0x] + l1x x[i1y][i1x]).
 * So the border output pixels copy the border input pixels, and for s = 2 the inner ones mix
 * neighbours 3:1 (weights 0.75 / 0.25). Source: the PyTorch docs of
 * torch.nn.functional.interpolate and aten/src/ATen/native/UpSample.h.
 */
void ml_upsample_bilinear_forward(float *y,         // (B, C, s H, s W)
                                  const float *x,   // (B, C, H, W)
                                  int B, int C, int H, int W, int s);
/* the adjoint: every dy pixel adds its four weighted shares to dx */
void ml_upsample_bilinear_backward(float *dx,         // (B, C, H, W)
                                   const float *dy,   // (B, C, s H, s W)
                                   int B, int C, int H, int W, int s);

/* Nearest upsampling by an integer factor s: y[oy][ox] = x[oy / s][ox / s], PyTorch's
 * F.interpolate(x, scale_factor=s, mode='nearest') for integer s. */
void ml_upsample_nearest_forward(float *y,         // (B, C, s H, s W)
                                 const float *x,   // (B, C, H, W)
                                 int B, int C, int H, int W, int s);
/* dx[iy][ix] += the sum of dy over its s x s block */
void ml_upsample_nearest_backward(float *dx,         // (B, C, H, W)
                                  const float *dy,   // (B, C, s H, s W)
                                  int B, int C, int H, int W, int s);

#endif
