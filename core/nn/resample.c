/* resample.c — global average pool and integer-factor upsampling (resample.h). */
#include "nn/resample.h"

#include <stdlib.h>
#include <string.h>

#include "base/common.h"

/* Tensors of at least this many floats are split over OpenMP threads. */
#define PAR_MIN_FLOATS ((size_t)1 << 15)
#define LANES 16

int ml_upsample_check(const char *what, int s) {
    if (s < 1) return ml_errorf("%s: upsampling factor must be an integer >= 1, got %d", what, s);
    return ML_OK;
}

void ml_global_avgpool_forward(float *y, const float *x, int B, int C, int HW) {
    const size_t np = (size_t)B * C, n = (size_t)HW;
    const float inv = 1.0f / (float)HW;
#pragma omp parallel for schedule(static) if (np * n >= PAR_MIN_FLOATS)
    for (size_t p = 0; p < np; p++) {
        const float *xp = x + p * n;
        float acc[LANES] = {0};
        size_t j = 0;
        for (; j + LANES <= n; j += LANES)
#pragma omp simd
            for (int l = 0; l < LANES; l++) acc[l] += xp[j + l];
        for (int l = 0; j < n; j++, l++) acc[l] += xp[j];
        float s = 0;
        for (int l = 0; l < LANES; l++) s += acc[l];
        y[p] = s * inv;
    }
}

void ml_global_avgpool_backward(float *dx, const float *dy, int B, int C, int HW) {
    const size_t np = (size_t)B * C, n = (size_t)HW;
    const float inv = 1.0f / (float)HW;
#pragma omp parallel for schedule(static) if (np * n >= PAR_MIN_FLOATS)
    for (size_t p = 0; p < np; p++) {
        const float g = dy[p] * inv;
        float *d = dx + p * n;
#pragma omp simd
        for (size_t j = 0; j < n; j++) d[j] += g;
    }
}

/* ------------------------------------------------------------------------------------ */
/* bilinear */

/* Per output index d < n s of one axis of length n: i0, i1 and the weight l1 of i1, with
 * PyTorch's roundings (UpSampleKernel.cpp, float tensors): scale = (float)(1.0 / s), as
 * F.interpolate passes scale_factor; src = scale * (d + 0.5) - 0.5 evaluated in double (the
 * index is an int64 plus 0.5) and stored as float. */
static void lin_table(int *i0, int *i1, float *l1, int n, int s) {
    const float scale = (float)(1.0 / s);
    for (int d = 0; d < n * s; d++) {
        float src = (float)((double)scale * ((double)d + 0.5) - 0.5);
        if (src < 0) src = 0;
        int a = (int)src; /* floor: src >= 0 */
        if (a > n - 1) a = n - 1;
        i0[d] = a;
        i1[d] = a < n - 1 ? a + 1 : a;
        l1[d] = src - (float)a;
    }
}

typedef struct lin_tables {
    int *iy0, *iy1, *ix0, *ix1;
    float *ly, *lx;
    void *block;
} lin_tables;

static lin_tables lin_tables_new(int H, int W, int s) {
    const size_t Ho = (size_t)H * s, Wo = (size_t)W * s;
    lin_tables t;
    t.block = malloc((2 * Ho + 2 * Wo) * sizeof(int) + (Ho + Wo) * sizeof(float));
    if (!t.block) abort(); /* no way to report from inside a kernel */
    t.iy0 = t.block;
    t.iy1 = t.iy0 + Ho;
    t.ix0 = t.iy1 + Ho;
    t.ix1 = t.ix0 + Wo;
    t.ly = (float *)(t.ix1 + Wo);
    t.lx = t.ly + Ho;
    lin_table(t.iy0, t.iy1, t.ly, H, s);
    lin_table(t.ix0, t.ix1, t.lx, W, s);
    return t;
}

void ml_upsample_bilinear_forward(float *y, const float *x, int B, int C, int H, int W, int s) {
    const int Ho = H * s, Wo = W * s;
    const size_t HW = (size_t)H * W, HWo = (size_t)Ho * Wo, np = (size_t)B * C;
    lin_tables t = lin_tables_new(H, W, s);
#pragma omp parallel for schedule(static) if (np * HWo >= PAR_MIN_FLOATS)
    for (size_t p = 0; p < np; p++) {
        const float *xp = x + p * HW;
        float *yp = y + p * HWo;
        for (int oy = 0; oy < Ho; oy++) {
            const float *r0 = xp + (size_t)t.iy0[oy] * W, *r1 = xp + (size_t)t.iy1[oy] * W;
            const float h1 = t.ly[oy], h0 = 1.0f - h1;
            float *o = yp + (size_t)oy * Wo;
#pragma omp simd
            for (int ox = 0; ox < Wo; ox++) {
                const int j0 = t.ix0[ox], j1 = t.ix1[ox];
                const float w1 = t.lx[ox], w0 = 1.0f - w1;
                o[ox] = h0 * (w0 * r0[j0] + w1 * r0[j1]) + h1 * (w0 * r1[j0] + w1 * r1[j1]);
            }
        }
    }
    free(t.block);
}

/* per output row: its horizontal adjoint into a row of W (scatter), then the two input
 * rows it came from take their vertical shares */
void ml_upsample_bilinear_backward(float *dx, const float *dy, int B, int C, int H, int W, int s) {
    const int Ho = H * s, Wo = W * s;
    const size_t HW = (size_t)H * W, HWo = (size_t)Ho * Wo, np = (size_t)B * C;
    lin_tables t = lin_tables_new(H, W, s);
#pragma omp parallel if (np * HWo >= PAR_MIN_FLOATS)
    {
        float *row = malloc(sizeof(float) * (size_t)W);
        if (!row) abort();
#pragma omp for schedule(static)
        for (size_t p = 0; p < np; p++) {
            const float *g = dy + p * HWo;
            float *d = dx + p * HW;
            for (int oy = 0; oy < Ho; oy++) {
                const float *gr = g + (size_t)oy * Wo;
                memset(row, 0, sizeof(float) * (size_t)W);
                for (int ox = 0; ox < Wo; ox++) {
                    const float w1 = t.lx[ox];
                    row[t.ix0[ox]] += (1.0f - w1) * gr[ox];
                    row[t.ix1[ox]] += w1 * gr[ox];
                }
                const float h1 = t.ly[oy], h0 = 1.0f - h1;
                float *d0 = d + (size_t)t.iy0[oy] * W, *d1 = d + (size_t)t.iy1[oy] * W;
                for (int ix = 0; ix < W; ix++) d0[ix] += h0 * row[ix];
                for (int ix = 0; ix < W; ix++) d1[ix] += h1 * row[ix];
            }
        }
        free(row);
    }
    free(t.block);
}

/* ------------------------------------------------------------------------------------ */
/* nearest */

void ml_upsample_nearest_forward(float *y, const float *x, int B, int C, int H, int W, int s) {
    const int Wo = W * s;
    const size_t HW = (size_t)H * W, HWo = HW * s * s, np = (size_t)B * C;
#pragma omp parallel for schedule(static) if (np * HWo >= PAR_MIN_FLOATS)
    for (size_t p = 0; p < np; p++) {
        const float *xp = x + p * HW;
        float *yp = y + p * HWo;
        for (int iy = 0; iy < H; iy++) {
            float *o = yp + (size_t)iy * s * Wo;
            const float *r = xp + (size_t)iy * W;
            for (int ox = 0; ox < Wo; ox++) o[ox] = r[ox / s];
            for (int q = 1; q < s; q++) memcpy(o + (size_t)q * Wo, o, sizeof(float) * (size_t)Wo);
        }
    }
}

void ml_upsample_nearest_backward(float *dx, const float *dy, int B, int C, int H, int W, int s) {
    const int Wo = W * s;
    const size_t HW = (size_t)H * W, HWo = HW * s * s, np = (size_t)B * C;
#pragma omp parallel for schedule(static) if (np * HWo >= PAR_MIN_FLOATS)
    for (size_t p = 0; p < np; p++) {
        const float *g = dy + p * HWo;
        float *d = dx + p * HW;
        for (int iy = 0; iy < H; iy++) {
            float *dr = d + (size_t)iy * W;
            for (int q = 0; q < s; q++) {
                const float *gr = g + ((size_t)iy * s + q) * Wo;
                for (int ix = 0; ix < W; ix++) {
                    float acc = 0;
                    for (int u = 0; u < s; u++) acc += gr[ix * s + u];
                    dr[ix] += acc;
                }
            }
        }
    }
}
