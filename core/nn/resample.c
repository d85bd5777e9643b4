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

/*
 * Tables of one call: per output row oy the two input rows and their weights, per output
 * column ox the two input columns and weights, and for the adjoint, per input column j, the
 * list of (ox, weight) that read it (CSR: entries jbeg[j] .. jbeg[j + 1]).
 */
typedef struct lin_tables {
    int *iy0, *iy1, *ix0, *ix1;  /* (Ho), (Ho), (Wo), (Wo) */
    float *ly, *lx, *lx0;        /* l1 of rows (Ho), l1 of columns (Wo), 1 - l1 of columns (Wo) */
    int *jbeg, *jox;             /* (W + 1), (2 Wo) */
    float *jw;                   /* (2 Wo) */
    void *block;
} lin_tables;

static lin_tables lin_tables_new(int H, int W, int s) {
    const size_t Ho = (size_t)H * s, Wo = (size_t)W * s;
    lin_tables t;
    t.block = malloc((2 * Ho + 2 * Wo + (size_t)W + 1 + 2 * Wo) * sizeof(int) +
                     (Ho + 2 * Wo + 2 * Wo) * sizeof(float));
    if (!t.block) abort(); /* no way to report from inside a kernel */
    t.iy0 = t.block;
    t.iy1 = t.iy0 + Ho;
    t.ix0 = t.iy1 + Ho;
    t.ix1 = t.ix0 + Wo;
    t.jbeg = t.ix1 + Wo;
    t.jox = t.jbeg + W + 1;
    t.ly = (float *)(t.jox + 2 * Wo);
    t.lx = t.ly + Ho;
    t.lx0 = t.lx + Wo;
    t.jw = t.lx0 + Wo;
    lin_table(t.iy0, t.iy1, t.ly, H, s);
    lin_table(t.ix0, t.ix1, t.lx, W, s);
    for (size_t ox = 0; ox < Wo; ox++) t.lx0[ox] = 1.0f - t.lx[ox];
    /* the adjoint's lists, in ox order within each column */
    for (int j = 0; j <= W; j++) t.jbeg[j] = 0;
    for (size_t ox = 0; ox < Wo; ox++) t.jbeg[t.ix0[ox] + 1]++, t.jbeg[t.ix1[ox] + 1]++;
    for (int j = 0; j < W; j++) t.jbeg[j + 1] += t.jbeg[j];
    int *fill = malloc(sizeof(int) * (size_t)W);
    if (!fill) abort();
    for (int j = 0; j < W; j++) fill[j] = t.jbeg[j];
    for (size_t ox = 0; ox < Wo; ox++) {
        int e = fill[t.ix0[ox]]++;
        t.jox[e] = (int)ox, t.jw[e] = t.lx0[ox];
        e = fill[t.ix1[ox]]++;
        t.jox[e] = (int)ox, t.jw[e] = t.lx[ox];
    }
    free(fill);
    return t;
}

/* Separable, in PyTorch's order: each input row interpolated along x once,
 *   Th[i][ox] = l0x x[i][i0x] + l1x x[i][i1x],
 * then every output row a blend of two of those, y[oy] = l0y Th[i0y] + l1y Th[i1y]
 * (the same expression, so the same roundings without FMA contraction). */
void ml_upsample_bilinear_forward(float *y, const float *x, int B, int C, int H, int W, int s) {
    const int Ho = H * s, Wo = W * s;
    const size_t HW = (size_t)H * W, HWo = (size_t)Ho * Wo, np = (size_t)B * C;
    lin_tables t = lin_tables_new(H, W, s);
#pragma omp parallel if (np * HWo >= PAR_MIN_FLOATS)
    {
        float *Th = malloc(sizeof(float) * (size_t)H * Wo);
        if (!Th) abort();
#pragma omp for schedule(static)
        for (size_t p = 0; p < np; p++) {
            const float *xp = x + p * HW;
            float *yp = y + p * HWo;
            for (int i = 0; i < H; i++) {
                const float *r = xp + (size_t)i * W;
                float *o = Th + (size_t)i * Wo;
                for (int ox = 0; ox < Wo; ox++) o[ox] = t.lx0[ox] * r[t.ix0[ox]] + t.lx[ox] * r[t.ix1[ox]];
            }
            for (int oy = 0; oy < Ho; oy++) {
                const float *a = Th + (size_t)t.iy0[oy] * Wo, *b = Th + (size_t)t.iy1[oy] * Wo;
                const float h1 = t.ly[oy], h0 = 1.0f - h1;
                float *o = yp + (size_t)oy * Wo;
#pragma omp simd
                for (int ox = 0; ox < Wo; ox++) o[ox] = h0 * a[ox] + h1 * b[ox];
            }
        }
        free(Th);
    }
    free(t.block);
}

/* The adjoint, rows first: Tv[i] = sum over the output rows that read input row i of their
 * weight times the dy row (whole-row vector adds), then per input column j the gather over
 * its list, dx[i][j] += sum w Tv[i][ox]: no scatter, no store-to-load chain. */
void ml_upsample_bilinear_backward(float *dx, const float *dy, int B, int C, int H, int W, int s) {
    const int Ho = H * s, Wo = W * s;
    const size_t HW = (size_t)H * W, HWo = (size_t)Ho * Wo, np = (size_t)B * C;
    lin_tables t = lin_tables_new(H, W, s);
#pragma omp parallel if (np * HWo >= PAR_MIN_FLOATS)
    {
        float *Tv = malloc(sizeof(float) * (size_t)H * Wo);
        if (!Tv) abort();
#pragma omp for schedule(static)
        for (size_t p = 0; p < np; p++) {
            const float *g = dy + p * HWo;
            float *d = dx + p * HW;
            memset(Tv, 0, sizeof(float) * (size_t)H * Wo);
            for (int oy = 0; oy < Ho; oy++) {
                const float *gr = g + (size_t)oy * Wo;
                const float h1 = t.ly[oy], h0 = 1.0f - h1;
                float *a = Tv + (size_t)t.iy0[oy] * Wo, *b = Tv + (size_t)t.iy1[oy] * Wo;
#pragma omp simd
                for (int ox = 0; ox < Wo; ox++) a[ox] += h0 * gr[ox];
#pragma omp simd
                for (int ox = 0; ox < Wo; ox++) b[ox] += h1 * gr[ox];
            }
            for (int i = 0; i < H; i++) {
                const float *r = Tv + (size_t)i * Wo;
                float *dr = d + (size_t)i * W;
                for (int j = 0; j < W; j++) {
                    float acc = 0;
                    for (int e = t.jbeg[j]; e < t.jbeg[j + 1]; e++) acc += t.jw[e] * r[t.jox[e]];
                    dr[j] += acc;
                }
            }
        }
        free(Tv);
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
            for (int ix = 0; ix < W; ix++)
                for (int u = 0; u < s; u++) o[ix * s + u] = r[ix];
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
