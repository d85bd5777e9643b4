/* channels.c — channel slices and n-way channel concatenation (channels.h). */
#include "nn/channels.h"

#include <stddef.h>
#include <string.h>

#define PAR_MIN_FLOATS ((size_t)1 << 15)

void ml_channels_slice_forward(float *y, const float *x, int B, int C, int off, int n, int HW) {
    const size_t blk = (size_t)n * HW;
#pragma omp parallel for schedule(static) if ((size_t)B * blk >= PAR_MIN_FLOATS)
    for (int b = 0; b < B; b++)
        memcpy(y + (size_t)b * blk, x + ((size_t)b * C + off) * HW, sizeof(float) * blk);
}

void ml_channels_slice_backward(float *dx, const float *dy, int B, int C, int off, int n, int HW) {
    const size_t blk = (size_t)n * HW;
#pragma omp parallel for schedule(static) if ((size_t)B * blk >= PAR_MIN_FLOATS)
    for (int b = 0; b < B; b++) {
        float *d = dx + ((size_t)b * C + off) * HW;
        const float *g = dy + (size_t)b * blk;
#pragma omp simd
        for (size_t j = 0; j < blk; j++) d[j] += g[j];
    }
}

static int total_channels(const int *cs, int k) {
    int C = 0;
    for (int i = 0; i < k; i++) C += cs[i];
    return C;
}

void ml_channels_concat_forward(float *y, const float *const *xs, const int *cs, int k, int B,
                                int HW) {
    const int Cy = total_channels(cs, k);
#pragma omp parallel for schedule(static) if ((size_t)B * Cy * HW >= PAR_MIN_FLOATS)
    for (int b = 0; b < B; b++) {
        float *dst = y + (size_t)b * Cy * HW;
        for (int i = 0; i < k; i++) {
            const size_t blk = (size_t)cs[i] * HW;
            memcpy(dst, xs[i] + (size_t)b * blk, sizeof(float) * blk);
            dst += blk;
        }
    }
}

void ml_channels_concat_backward(float *const *dxs, const float *dy, const int *cs, int k, int B,
                                 int HW) {
    const int Cy = total_channels(cs, k);
#pragma omp parallel for schedule(static) if ((size_t)B * Cy * HW >= PAR_MIN_FLOATS)
    for (int b = 0; b < B; b++) {
        const float *src = dy + (size_t)b * Cy * HW;
        for (int i = 0; i < k; i++) {
            const size_t blk = (size_t)cs[i] * HW;
            if (dxs[i]) {
                float *d = dxs[i] + (size_t)b * blk;
#pragma omp simd
                for (size_t j = 0; j < blk; j++) d[j] += src[j];
            }
            src += blk;
        }
    }
}
