/* filter.c — box filters (average pooling, frequency bands, local contrast normalisation)
 * and depthwise convolution, one plane at a time (filter.h). */
#include "nn/filter.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"

/* Tensors of at least this many floats are split over OpenMP threads; below, the fork and
 * join would cost more than the work. */
#define PAR_MIN_FLOATS ((size_t)1 << 15)
/* the horizontal box pass sums taps directly up to this window, then runs a sum */
#define HBOX_DIRECT_MAX 15
/* float partial sums per reduction: vectorisable without reassociation */
#define LANES 16

int ml_window_check(const char *what, int k) {
    if (k < 1 || k % 2 == 0)
        return ml_errorf("%s: window size must be odd and >= 1, got %d (hint: the window is "
                         "centred on its pixel, k = 2 r + 1)",
                         what, k);
    return ML_OK;
}

static void *scratch_alloc(size_t floats) {
    /* on the heap, not an OpenMP thread's stack; no way to report from inside a kernel */
    float *p = malloc(sizeof(float) * (floats ? floats : 1));
    if (!p) abort();
    return p;
}

/* sum of x[0..n) in LANES float partials, then the lanes in order (a fixed order) */
static double plane_sum(const float *x, size_t n) {
    float acc[LANES] = {0};
    size_t j = 0;
    for (; j + LANES <= n; j += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) acc[l] += x[j + l];
    for (int l = 0; j < n; j++, l++) acc[l] += x[j];
    double s = 0;
    for (int l = 0; l < LANES; l++) s += acc[l];
    return s;
}

/* ------------------------------------------------------------------------------------ */
/* box filters */

/* ic[i] = 1 / #{j in [i - r, i + r] : 0 <= j < n}: the in-image window length along one
 * axis; the 2D count is the product of the two axes' (the window is a rectangle). */
static void inv_counts(float *ic, int n, int r) {
    for (int i = 0; i < n; i++) {
        const int lo = i - r < 0 ? 0 : i - r, hi = i + r > n - 1 ? n - 1 : i + r;
        ic[i] = 1.0f / (float)(hi - lo + 1);
    }
}

/* The per-thread state of the box filter of one plane size: inverse counts and scratch. */
typedef struct box {
    int H, W, k;
    float *icy, *icx;  /* (H), (W) */
    float *T;          /* (H, W) horizontal sums */
    float *row;        /* (W + k - 1) zero-padded input row */
    float *acc;        /* (W) vertical running sum */
} box;

static size_t box_floats(int H, int W, int k) {
    return (size_t)H + (size_t)W + (size_t)H * W + (size_t)(W + k - 1) + (size_t)W;
}

/* lays out a box over f (box_floats(H, W, k) floats) and fills the counts */
static box box_init(float *f, int H, int W, int k) {
    box b = {H, W, k, f, f + H, NULL, NULL, NULL};
    b.T = b.icx + W;
    b.row = b.T + (size_t)H * W;
    b.acc = b.row + W + k - 1;
    inv_counts(b.icy, H, k / 2);
    inv_counts(b.icx, W, k / 2);
    return b;
}

/*
 * out = A in (transpose 0) or A^T in (transpose 1), written (accumulate 0) or added
 * (accumulate 1), for one (H, W) plane; A = D^-1 S, S the k x k box sum with zero padding
 * and D the in-image counts, so A in = S(in) / count and A^T in = S(in / count).
 * in is read completely (into T) before out is touched: out may equal in unless
 * accumulating.
 */
static void box_plane(const box *bx, float *out, const float *in, int transpose, int accumulate) {
    const int H = bx->H, W = bx->W, k = bx->k, r = k / 2;
    float *T = bx->T, *row = bx->row, *acc = bx->acc;
    const float *icx = bx->icx, *icy = bx->icy;
    for (int i = 0; i < r; i++) row[i] = row[W + r + i] = 0;
    /* horizontal: T[y][x] = sum of row[x .. x + k), row = in[y] padded by r zeros */
    for (int y = 0; y < H; y++) {
        const float *src = in + (size_t)y * W;
        float *t = T + (size_t)y * W;
        float *rr = row + r;
        if (transpose) {
            const float cy = icy[y];
#pragma omp simd
            for (int x = 0; x < W; x++) rr[x] = src[x] * icx[x] * cy;
        } else {
            memcpy(rr, src, sizeof(float) * (size_t)W);
        }
        if (k <= HBOX_DIRECT_MAX) {
            memcpy(t, row, sizeof(float) * (size_t)W);
            for (int tap = 1; tap < k; tap++) {
                const float *q = row + tap;
#pragma omp simd
                for (int x = 0; x < W; x++) t[x] += q[x];
            }
        } else {
            float s = 0;
            for (int j = 0; j < k; j++) s += row[j];
            t[0] = s;
            for (int x = 1; x < W; x++) {
                s += row[x + k - 1] - row[x - 1];
                t[x] = s;
            }
        }
    }
    /* vertical: acc = sum of T rows [y - r, y + r] inside the image, a running sum */
    memset(acc, 0, sizeof(float) * (size_t)W);
    for (int y = 0; y <= r && y < H; y++) {
        const float *t = T + (size_t)y * W;
#pragma omp simd
        for (int x = 0; x < W; x++) acc[x] += t[x];
    }
    for (int y = 0; y < H; y++) {
        float *o = out + (size_t)y * W;
        if (transpose) {
            if (accumulate)
#pragma omp simd
                for (int x = 0; x < W; x++) o[x] += acc[x];
            else
                memcpy(o, acc, sizeof(float) * (size_t)W);
        } else {
            const float cy = icy[y];
            if (accumulate)
#pragma omp simd
                for (int x = 0; x < W; x++) o[x] += acc[x] * (cy * icx[x]);
            else
#pragma omp simd
                for (int x = 0; x < W; x++) o[x] = acc[x] * (cy * icx[x]);
        }
        const int add = y + r + 1, sub = y - r;
        if (add < H) {
            const float *t = T + (size_t)add * W;
#pragma omp simd
            for (int x = 0; x < W; x++) acc[x] += t[x];
        }
        if (sub >= 0) {
            const float *t = T + (size_t)sub * W;
#pragma omp simd
            for (int x = 0; x < W; x++) acc[x] -= t[x];
        }
    }
}

void ml_avgpool_forward(float *y, const float *x, int B, int C, int H, int W, int k) {
    const size_t HW = (size_t)H * W, np = (size_t)B * C;
#pragma omp parallel if (np * HW >= PAR_MIN_FLOATS)
    {
        float *f = scratch_alloc(box_floats(H, W, k));
        const box bx = box_init(f, H, W, k);
#pragma omp for schedule(static)
        for (size_t p = 0; p < np; p++) box_plane(&bx, y + p * HW, x + p * HW, 0, 0);
        free(f);
    }
}

void ml_avgpool_backward(float *dx, const float *dy, int B, int C, int H, int W, int k) {
    const size_t HW = (size_t)H * W, np = (size_t)B * C;
#pragma omp parallel if (np * HW >= PAR_MIN_FLOATS)
    {
        float *f = scratch_alloc(box_floats(H, W, k));
        const box bx = box_init(f, H, W, k);
#pragma omp for schedule(static)
        for (size_t p = 0; p < np; p++) box_plane(&bx, dx + p * HW, dy + p * HW, 1, 1);
        free(f);
    }
}

/* ------------------------------------------------------------------------------------ */
/* frequency bands */

void ml_freqbands_forward(float *low, float *mid, float *high, const float *x, int B, int C,
                          int H, int W, int k1, int k2) {
    const size_t HW = (size_t)H * W, np = (size_t)B * C;
    if (!low && !mid && !high) return;
#pragma omp parallel if (np * HW >= PAR_MIN_FLOATS)
    {
        /* two planes (A1 x, A2 x) and the two boxes' scratch */
        const size_t b1 = box_floats(H, W, k1), b2 = box_floats(H, W, k2);
        float *f = scratch_alloc(2 * HW + b1 + b2);
        float *a1 = f, *a2 = f + HW;
        const box bx1 = box_init(f + 2 * HW, H, W, k1), bx2 = box_init(f + 2 * HW + b1, H, W, k2);
#pragma omp for schedule(static)
        for (size_t p = 0; p < np; p++) {
            const float *xp = x + p * HW;
            box_plane(&bx1, a1, xp, 0, 0);
            if (mid) box_plane(&bx2, a2, xp, 0, 0);
            if (low) memcpy(low + p * HW, a1, sizeof(float) * HW);
            if (mid) {
                float *o = mid + p * HW;
#pragma omp simd
                for (size_t j = 0; j < HW; j++) o[j] = a1[j] - a2[j];
            }
            if (high) {
                float *o = high + p * HW;
#pragma omp simd
                for (size_t j = 0; j < HW; j++) o[j] = xp[j] - a1[j];
            }
        }
        free(f);
    }
}

void ml_freqbands_backward(float *dx, const float *dlow, const float *dmid, const float *dhigh,
                           int B, int C, int H, int W, int k1, int k2) {
    const size_t HW = (size_t)H * W, np = (size_t)B * C;
    if (!dx || (!dlow && !dmid && !dhigh)) return;
#pragma omp parallel if (np * HW >= PAR_MIN_FLOATS)
    {
        const size_t b1 = box_floats(H, W, k1), b2 = box_floats(H, W, k2);
        float *f = scratch_alloc(2 * HW + b1 + b2);
        float *u = f, *v = f + HW;
        const box bx1 = box_init(f + 2 * HW, H, W, k1), bx2 = box_init(f + 2 * HW + b1, H, W, k2);
#pragma omp for schedule(static)
        for (size_t p = 0; p < np; p++) {
            const size_t off = p * HW;
            /* u = dlow + dmid - dhigh: what reaches A1 x (one loop per term present, each
             * vectorised; the sum in the order low, mid, high) */
            if (dlow)
                memcpy(u, dlow + off, sizeof(float) * HW);
            else
                memset(u, 0, sizeof(float) * HW);
            if (dmid) {
                const float *g = dmid + off;
#pragma omp simd
                for (size_t j = 0; j < HW; j++) u[j] += g[j];
            }
            if (dhigh) {
                const float *g = dhigh + off;
#pragma omp simd
                for (size_t j = 0; j < HW; j++) u[j] -= g[j];
            }
            box_plane(&bx1, u, u, 1, 0);
            float *d = dx + off;
            if (dmid) {
                box_plane(&bx2, v, dmid + off, 1, 0);
#pragma omp simd
                for (size_t j = 0; j < HW; j++) d[j] += u[j] - v[j];
            } else {
#pragma omp simd
                for (size_t j = 0; j < HW; j++) d[j] += u[j];
            }
            if (dhigh) {
                const float *g = dhigh + off;
#pragma omp simd
                for (size_t j = 0; j < HW; j++) d[j] += g[j];
            }
        }
        free(f);
    }
}

/* ------------------------------------------------------------------------------------ */
/* local contrast normalisation */

void ml_lcn_forward(float *y, float *mean, float *rstd, const float *x, int B, int C, int H,
                    int W, int k, float eps) {
    const size_t HW = (size_t)H * W, np = (size_t)B * C;
#pragma omp parallel if (np * HW >= PAR_MIN_FLOATS)
    {
        float *f = scratch_alloc(2 * HW + box_floats(H, W, k));
        float *xs = f, *sq = f + HW;
        const box bx = box_init(f + 2 * HW, H, W, k);
#pragma omp for schedule(static)
        for (size_t p = 0; p < np; p++) {
            const size_t off = p * HW;
            const float *xp = x + off;
            float *mu = mean + off, *rs = rstd + off, *yp = y + off;
            const float m = (float)(plane_sum(xp, HW) / (double)HW);
#pragma omp simd
            for (size_t j = 0; j < HW; j++) {
                xs[j] = xp[j] - m;
                sq[j] = xs[j] * xs[j];
            }
            box_plane(&bx, mu, xs, 0, 0); /* mu - m */
            box_plane(&bx, rs, sq, 0, 0); /* A((x - m)^2) */
#pragma omp simd
            for (size_t j = 0; j < HW; j++) {
                const float ms = mu[j];
                float v = rs[j] - ms * ms;
                v = v > 0 ? v : 0;
                const float r = 1.0f / sqrtf(v + eps);
                yp[j] = (xs[j] - ms) * r;
                mu[j] = ms + m;
                rs[j] = r;
            }
        }
        free(f);
    }
}

void ml_lcn_backward(float *dx, const float *dy, const float *y, const float *x,
                     const float *mean, const float *rstd, int B, int C, int H, int W, int k) {
    const size_t HW = (size_t)H * W, np = (size_t)B * C;
    if (!dx) return;
#pragma omp parallel if (np * HW >= PAR_MIN_FLOATS)
    {
        float *f = scratch_alloc(2 * HW + box_floats(H, W, k));
        float *u = f, *v = f + HW;
        const box bx = box_init(f + 2 * HW, H, W, k);
#pragma omp for schedule(static)
        for (size_t p = 0; p < np; p++) {
            const size_t off = p * HW;
            const float *g = dy + off, *yp = y + off, *xp = x + off, *mu = mean + off,
                        *rs = rstd + off;
            /* the plane mean forward subtracted, recomputed bitwise the same */
            const float m = (float)(plane_sum(xp, HW) / (double)HW);
#pragma omp simd
            for (size_t j = 0; j < HW; j++) {
                const float a = g[j] * rs[j], b = a * yp[j] * rs[j];
                u[j] = a - (mu[j] - m) * b;
                v[j] = b;
            }
            box_plane(&bx, u, u, 1, 0); /* A^T(a - mu b) */
            box_plane(&bx, v, v, 1, 0); /* A^T(b) */
            float *d = dx + off;
#pragma omp simd
            for (size_t j = 0; j < HW; j++) d[j] += g[j] * rs[j] - u[j] - (xp[j] - m) * v[j];
        }
        free(f);
    }
}

/* ------------------------------------------------------------------------------------ */
/* depthwise convolution */

const float ml_kernel_sobel_x[9] = {-0.125f, 0.0f, 0.125f, -0.25f, 0.0f, 0.25f, -0.125f, 0.0f, 0.125f};
const float ml_kernel_sobel_y[9] = {-0.125f, -0.25f, -0.125f, 0.0f, 0.0f, 0.0f, 0.125f, 0.25f, 0.125f};
const float ml_kernel_laplacian[9] = {0.0f, 1.0f, 0.0f, 1.0f, -4.0f, 1.0f, 0.0f, 1.0f, 0.0f};

void ml_dwconv_edge_weights(float *w, int C) {
    for (int c = 0; c < C; c++) {
        memcpy(w + (size_t)(3 * c) * 9, ml_kernel_sobel_x, sizeof ml_kernel_sobel_x);
        memcpy(w + (size_t)(3 * c + 1) * 9, ml_kernel_sobel_y, sizeof ml_kernel_sobel_y);
        memcpy(w + (size_t)(3 * c + 2) * 9, ml_kernel_laplacian, sizeof ml_kernel_laplacian);
    }
}

/*
 * The kernels run on the padded grid, so that every pass is one flat loop (a 64-wide row is
 * only a few SIMD vectors: per-row loops per tap would cost more than the arithmetic). A
 * plane is padded by p = k/2 zeros to Hp x Wp = (H + 2p) x (W + 2p); output (y, x) reads
 * xp[(y + ky) Wp + x + kx], so with q = y Wp + x, ONE loop over q < nq = (H - 1) Wp + W per
 * nonzero tap computes every output, plus 2p discarded values at the end of each row
 * (x >= W), which the extraction skips. The backward's dx is the same correlation of the
 * padded dy with the flipped kernel; dw_j[ky][kx] is the dot product over the same q of dy
 * (read from its padded plane at offset p Wp + p, whose margins supply the zeros where
 * x >= W) with xp shifted by ky Wp + kx.
 */

/* dst (H + 2p, W + 2p) = src (H, W) with p zeros on every side */
static void pad_plane(float *dst, const float *src, int H, int W, int p) {
    const int Wp = W + 2 * p;
    memset(dst, 0, sizeof(float) * (size_t)p * Wp);
    for (int y = 0; y < H; y++) {
        float *d = dst + (size_t)(y + p) * Wp;
        const float *s = src + (size_t)y * W;
        for (int i = 0; i < p; i++) d[i] = d[p + W + i] = 0;
#pragma omp simd
        for (int x = 0; x < W; x++) d[p + x] = s[x];
    }
    memset(dst + (size_t)(H + p) * Wp, 0, sizeof(float) * (size_t)p * Wp);
}

/* FMA contraction for the correlation loops (-std=c11 turns it off; without it the 3 x 3
 * loop issues separate multiplies and adds, twice the floating-point uops), as conv.c's
 * direct kernels do */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
/* Y[q] += sum over the nonzero taps of w (read flipped, w[k-1-ky][k-1-kx], when flip) of
 * w xp[q + ky Wp + kx], q < (H - 1) Wp + W. k = 3 (the edge filters) in one fused loop that
 * keeps the 9-tap sum in registers; other k tap by tap, one flat loop per nonzero tap. */
static void correlate_flat(float *Y, const float *xp, const float *w, int H, int W, int k, int flip) {
    const int Wp = W + k - 1;
    const size_t nq = (size_t)(H - 1) * Wp + W;
    if (k == 3) {
        float v[9];
        for (int t = 0; t < 9; t++) v[t] = flip ? w[8 - t] : w[t];
        const float *r0 = xp, *r1 = xp + Wp, *r2 = xp + 2 * (size_t)Wp;
#pragma omp simd
        for (size_t q = 0; q < nq; q++)
            Y[q] += v[0] * r0[q] + v[1] * r0[q + 1] + v[2] * r0[q + 2] + v[3] * r1[q] +
                    v[4] * r1[q + 1] + v[5] * r1[q + 2] + v[6] * r2[q] + v[7] * r2[q + 1] +
                    v[8] * r2[q + 2];
        return;
    }
    for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++) {
            const float wv = flip ? w[(k - 1 - ky) * k + (k - 1 - kx)] : w[ky * k + kx];
            if (wv == 0.0f) continue;
            const float *src = xp + (size_t)ky * Wp + kx;
#pragma omp simd
            for (size_t q = 0; q < nq; q++) Y[q] += wv * src[q];
        }
}

#pragma GCC pop_options

/* dst (H, W) = (accumulate: +=) the valid columns of Y (rows of Wp) */
static void extract(float *dst, const float *Y, int H, int W, int Wp, int accumulate) {
    for (int y = 0; y < H; y++) {
        float *d = dst + (size_t)y * W;
        const float *s = Y + (size_t)y * Wp;
        if (accumulate)
#pragma omp simd
            for (int x = 0; x < W; x++) d[x] += s[x];
        else
#pragma omp simd
            for (int x = 0; x < W; x++) d[x] = s[x];
    }
}

void ml_dwconv_forward(float *y, const float *x, const float *w, const float *b, int B, int C,
                       int H, int W, int m, int k) {
    const size_t HW = (size_t)H * W, np = (size_t)B * C, kk = (size_t)k * k;
    const int p = k / 2, Wp = W + 2 * p;
    const size_t nq = (size_t)(H - 1) * Wp + W;
#pragma omp parallel if (np * HW * (size_t)m >= PAR_MIN_FLOATS)
    {
        float *xp = scratch_alloc((size_t)(H + 2 * p) * Wp + (size_t)H * Wp);
        float *Y = xp + (size_t)(H + 2 * p) * Wp;
#pragma omp for schedule(static)
        for (size_t pl = 0; pl < np; pl++) {
            const size_t c = pl % (size_t)C;
            pad_plane(xp, x + pl * HW, H, W, p);
            for (int j = 0; j < m; j++) {
                const size_t o = c * m + j;
                const float bias = b ? b[o] : 0.0f;
                for (size_t q = 0; q < nq; q++) Y[q] = bias;
                correlate_flat(Y, xp, w + o * kk, H, W, k, 0);
                extract(y + (pl * m + j) * HW, Y, H, W, Wp, 0);
            }
        }
        free(xp);
    }
}

/* dw_j[ky][kx] (into tj, double) += sum_q g[q] xp[q + ky Wp + kx], in LANES float partials */
static void dw_dots(double *tj, const float *g, const float *xp, int H, int W, int k) {
    const int Wp = W + k - 1;
    const size_t nq = (size_t)(H - 1) * Wp + W;
    for (int ky = 0; ky < k; ky++)
        for (int kx = 0; kx < k; kx++) {
            const float *xr = xp + (size_t)ky * Wp + kx;
            float acc[LANES] = {0};
            size_t q = 0;
            for (; q + LANES <= nq; q += LANES)
#pragma omp simd
                for (int l = 0; l < LANES; l++) acc[l] += g[q + l] * xr[q + l];
            for (int l = 0; q < nq; q++, l++) acc[l] += g[q] * xr[q];
            double s = 0;
            for (int l = 0; l < LANES; l++) s += acc[l];
            tj[ky * k + kx] += s;
        }
}

/*
 * dx[iy][ix] += sum_j sum_{ky,kx} w_j[ky][kx] dy_j[iy + p - ky][ix + p - kx]: the
 * correlation of dy padded by p with the flipped kernel.
 * dw_j[ky][kx] += sum_{y,x} dy_j[y][x] xpad[y + ky][x + kx]; db_j += sum dy_j.
 * With dw or db: one channel per thread over all images (each thread owns its channel's
 * weight gradients: per plane in LANES float partials, over images in double, in order);
 * otherwise every (image, channel) plane is independent.
 */
void ml_dwconv_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int B, int C, int H, int W, int m, int k) {
    const size_t HW = (size_t)H * W, kk = (size_t)k * k;
    const int p = k / 2, Hp = H + 2 * p, Wp = W + 2 * p;
    const size_t np = (size_t)B * C, nq = (size_t)(H - 1) * Wp + W;
    if (!dx && !dw && !db) return;
    const int per_channel = dw || db;
#pragma omp parallel if (np * HW * (size_t)m >= PAR_MIN_FLOATS)
    {
        /* G: a padded dy plane; D: dx on the padded grid; xp: the padded x plane */
        float *G = scratch_alloc((size_t)2 * Hp * Wp + (size_t)H * Wp);
        float *xp = G + (size_t)Hp * Wp, *D = xp + (size_t)Hp * Wp;
        double *tot = per_channel ? malloc(sizeof(double) * (size_t)m * (kk + 1)) : NULL;
        if (per_channel && !tot) abort();
        if (per_channel) {
#pragma omp for schedule(static)
            for (int c = 0; c < C; c++) {
                for (size_t t = 0; t < (size_t)m * (kk + 1); t++) tot[t] = 0;
                for (int i = 0; i < B; i++) {
                    const size_t pl = (size_t)i * C + c;
                    if (dw) pad_plane(xp, x + pl * HW, H, W, p);
                    if (dx) memset(D, 0, sizeof(float) * nq);
                    for (int j = 0; j < m; j++) {
                        const size_t o = (size_t)c * m + j;
                        const float *g = dy + (pl * m + j) * HW;
                        double *tj = tot + (size_t)j * (kk + 1);
                        if (db) tj[kk] += plane_sum(g, HW);
                        if (!dx && !dw) continue;
                        pad_plane(G, g, H, W, p);
                        if (dx) correlate_flat(D, G, w + o * kk, H, W, k, 1);
                        if (dw) dw_dots(tj, G + (size_t)p * Wp + p, xp, H, W, k);
                    }
                    if (dx) extract(dx + pl * HW, D, H, W, Wp, 1);
                }
                for (int j = 0; j < m; j++) {
                    const size_t o = (size_t)c * m + j;
                    const double *tj = tot + (size_t)j * (kk + 1);
                    if (dw)
                        for (size_t t = 0; t < kk; t++) dw[o * kk + t] += (float)tj[t];
                    if (db) db[o] += (float)tj[kk];
                }
            }
        } else {
#pragma omp for schedule(static)
            for (size_t pl = 0; pl < np; pl++) {
                const size_t c = pl % (size_t)C;
                memset(D, 0, sizeof(float) * nq);
                for (int j = 0; j < m; j++) {
                    pad_plane(G, dy + (pl * m + j) * HW, H, W, p);
                    correlate_flat(D, G, w + (c * m + j) * kk, H, W, k, 1);
                }
                extract(dx + pl * HW, D, H, W, Wp, 1);
            }
        }
        free(G);
        free(tot);
    }
}
