/*
 * channels.h — moving channel blocks of NCHW tensors: a slice of channels, and the
 * concatenation of any number of tensors along channels (an expert's parallel branches,
 * each C/4 channels, concatenated before the 1x1 fusion conv). The two-input concatenation of
 * the U-Net skip is ml_concat_channels_* in conv.h; ml_channels_concat_* with two inputs
 * computes the same.
 *
 * Free functions over raw float buffers (llm.c style); backward ACCUMULATES into its
 * gradient outputs. Every pointer is borrowed; outputs never alias inputs. HW = H W.
 */
#ifndef MOELAB_CHANNELS_H
#define MOELAB_CHANNELS_H

/* y = x[:, off : off + n] */
void ml_channels_slice_forward(float *y,         // (B, n, HW)
                               const float *x,   // (B, C, HW)
                               int B, int C, int off, int n, int HW);
/* dx[:, off : off + n] += dy */
void ml_channels_slice_backward(float *dx,         // (B, C, HW)
                                const float *dy,   // (B, n, HW)
                                int B, int C, int off, int n, int HW);

/* y = [xs[0], ..., xs[k-1]] along channels; xs[i] holds cs[i] channels; Cy = sum cs[i]. */
void ml_channels_concat_forward(float *y,                  // (B, Cy, HW)
                                const float *const *xs,    // k x (B, cs[i], HW)
                                const int *cs,             // (k)
                                int k, int B, int HW);
/* dxs[i] += dy[:, channels of input i]; any dxs[i] may be NULL (no gradient wanted). */
void ml_channels_concat_backward(float *const *dxs,   // k x (B, cs[i], HW), entries may be NULL
                                 const float *dy,     // (B, Cy, HW)
                                 const int *cs,       // (k)
                                 int k, int B, int HW);

#endif
