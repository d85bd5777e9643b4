/* check_seg.c — the layers and losses of the segmentation MoE (nn/filter, nn/resample,
 * nn/groupnorm, nn/channels, nn/segloss): hand-computed and PyTorch forward cases, direct
 * reference loops, adjoint identities, finite-difference gradients by the one policy
 * (nn/gradcheck.h), thread-count determinism.
 * The PyTorch numbers below were printed by tests/fixtures/seg_reference.py with Debian's
 * python3-torch 1.13; each block names the line of that script it came from. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "nn/channels.h"
#include "nn/conv.h"
#include "nn/filter.h"
#include "nn/groupnorm.h"
#include "nn/resample.h"
#include "nn/segloss.h"
#include "testutil.h"

static float *fl(size_t n) {
    float *p = ml_alloc_floats(n);
    ck_assert_ptr_nonnull(p);
    return p;
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static void fill_const(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

/* ---- direct references, double accumulation ---- */

/* mean over the in-image pixels of the k x k window (count_include_pad=False) */
static void ref_avgpool(double *y, const float *x, int B, int C, int H, int W, int k) {
    const int r = k / 2;
    for (int p = 0; p < B * C; p++)
        for (int yy = 0; yy < H; yy++)
            for (int xx = 0; xx < W; xx++) {
                double s = 0;
                int n = 0;
                for (int u = yy - r; u <= yy + r; u++)
                    for (int v = xx - r; v <= xx + r; v++) {
                        if (u < 0 || u >= H || v < 0 || v >= W) continue;
                        s += x[((size_t)p * H + u) * W + v];
                        n++;
                    }
                y[((size_t)p * H + yy) * W + xx] = s / n;
            }
}

static void ref_dwconv(double *y, const float *x, const float *w, const float *b, int B, int C,
                       int H, int W, int m, int k) {
    const int p = k / 2;
    for (int i = 0; i < B; i++)
        for (int c = 0; c < C; c++)
            for (int j = 0; j < m; j++) {
                const int o = c * m + j;
                for (int yy = 0; yy < H; yy++)
                    for (int xx = 0; xx < W; xx++) {
                        double s = b ? b[o] : 0;
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                const int u = yy + ky - p, v = xx + kx - p;
                                if (u < 0 || u >= H || v < 0 || v >= W) continue;
                                s += (double)w[(o * k + ky) * k + kx] *
                                     x[(((size_t)i * C + c) * H + u) * W + v];
                            }
                        y[((((size_t)i * C * m) + o) * H + yy) * W + xx] = s;
                    }
            }
}

/* ---- average pooling ---- */

START_TEST(test_avgpool_hand) {
    /* x = 1..9 in a 3x3 image, k = 3: the centre averages all 9 (5); a corner its 4
     * in-image neighbours, (1+2+4+5)/4 = 3; an edge its 6, (1+2+3+4+5+6)/6 = 3.5. */
    float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, y[9];
    ml_avgpool_forward(y, x, 1, 1, 3, 3, 3);
    const float e[9] = {3, 3.5f, 4, 4.5f, 5, 5.5f, 6, 6.5f, 7};
    for (int j = 0; j < 9; j++) ck_assert_float_eq_tol(y[j], e[j], 1e-6);
    /* in place */
    ml_avgpool_forward(x, x, 1, 1, 3, 3, 3);
    for (int j = 0; j < 9; j++) ck_assert_float_eq_tol(x[j], e[j], 1e-6);
    /* PyTorch: F.avg_pool2d(x, k, 1, k // 2, count_include_pad=False) on the script's 4x5
     * x = arange(20) ** 1.5 / 10 (seg_reference.py, "avg_pool2d") */
    const float in[20] = {0, 0.100000001f, 0.282842696f, 0.519615233f, 0.800000012f, 1.11803401f,
                          1.4696939f, 1.85202599f, 2.26274157f, 2.70000005f, 3.1622777f, 3.6482873f,
                          4.15692186f, 4.68721676f, 5.23832035f, 5.80947495f, 6.4000001f,
                          7.00927973f, 7.63675308f, 8.28190804f};
    const float k3[20] = {0.671931982f, 0.803766072f, 1.08115327f, 1.40287101f, 1.5705893f,
                          1.58304882f, 1.75445366f, 2.10881591f, 2.49996471f, 2.70131564f,
                          3.60129452f, 3.84733295f, 4.34699059f, 4.86946297f, 5.13449001f,
                          4.75501013f, 5.03104019f, 5.58974314f, 6.16839981f, 6.46104956f};
    const float k5[20] = {1.75445366f, 1.93830454f, 2.13319826f, 2.30980515f, 2.49996471f,
                          2.91740322f, 3.13219786f, 3.35676956f, 3.56535053f, 3.78563499f,
                          2.91740322f, 3.13219786f, 3.35676956f, 3.56535053f, 3.78563499f,
                          3.84733295f, 4.10105896f, 4.36219597f, 4.61192894f, 4.86946297f};
    float out[20];
    ml_avgpool_forward(out, in, 1, 1, 4, 5, 3);
    for (int j = 0; j < 20; j++) ck_assert_float_eq_tol(out[j], k3[j], 2e-6);
    ml_avgpool_forward(out, in, 1, 1, 4, 5, 5);
    for (int j = 0; j < 20; j++) ck_assert_float_eq_tol(out[j], k5[j], 2e-6);
}
END_TEST

/* B, C, H, W, k: 1x1 windows, windows larger than the image, the running-sum horizontal
 * pass (k > 15), rows longer than one SIMD block */
struct pool_case { int B, C, H, W, k; };
static const struct pool_case pool_cases[] = {
    {2, 3, 7, 9, 3}, {1, 2, 5, 6, 5}, {2, 1, 4, 4, 7}, {1, 2, 3, 5, 9}, {1, 1, 6, 1, 3},
    {2, 2, 8, 5, 1}, {1, 2, 20, 37, 17}, {1, 1, 9, 40, 31}, {1, 3, 11, 70, 5}, {2, 1, 1, 1, 5},
    {1, 2, 2, 3, 7}, {1, 1, 1, 9, 3}, {1, 1, 2, 2, 31},
};
#define NPOOL ((int)(sizeof pool_cases / sizeof pool_cases[0]))

START_TEST(test_avgpool_vs_ref) {
    const struct pool_case *c = &pool_cases[_i];
    const size_t n = (size_t)c->B * c->C * c->H * c->W;
    float *x = fl(n), *y = fl(n);
    double *r = malloc(n * sizeof *r);
    tu_fill(x, n, 100 + _i, -1, 2);
    ml_avgpool_forward(y, x, c->B, c->C, c->H, c->W, c->k);
    ref_avgpool(r, x, c->B, c->C, c->H, c->W, c->k);
    for (size_t j = 0; j < n; j++) ck_assert_double_eq_tol(y[j], r[j], 2e-6);
    /* a constant stays that constant at every pixel, borders included */
    fill_const(x, n, 0.7f);
    ml_avgpool_forward(y, x, c->B, c->C, c->H, c->W, c->k);
    for (size_t j = 0; j < n; j++) ck_assert_float_eq_tol(y[j], 0.7f, 1e-6);
    free(x), free(y), free(r);
}
END_TEST

/* <A x, g> = <x, A^T g> for random x and g; backward accumulates */
START_TEST(test_avgpool_adjoint) {
    const struct pool_case *c = &pool_cases[_i];
    const size_t n = (size_t)c->B * c->C * c->H * c->W;
    float *x = fl(n), *g = fl(n), *ax = fl(n), *atg = fl(n);
    tu_fill(x, n, 200 + _i, -1, 1);
    tu_fill(g, n, 300 + _i, -1, 1);
    fill_const(atg, n, 0.5f);
    ml_avgpool_forward(ax, x, c->B, c->C, c->H, c->W, c->k);
    ml_avgpool_backward(atg, g, c->B, c->C, c->H, c->W, c->k);
    for (size_t j = 0; j < n; j++) atg[j] -= 0.5f;
    const double lhs = dot(ax, g, n), rhs = dot(x, atg, n);
    ck_assert_msg(fabs(lhs - rhs) <= 1e-5 * (1 + fabs(lhs)), "case %d: <Ax,g> %.9g <x,A'g> %.9g", _i,
                  lhs, rhs);
    free(x), free(g), free(ax), free(atg);
}
END_TEST

struct lin_ctx { /* L = sum r * op(x) for a linear op of one input */
    void (*fwd)(const struct lin_ctx *, float *y);
    int B, C, H, W, k, s;
    float *x, *y, *r;
    size_t ny;
};
static double lin_loss(void *p) {
    struct lin_ctx *c = p;
    c->fwd(c, c->y);
    return dot(c->y, c->r, c->ny);
}
static void avgpool_fwd(const struct lin_ctx *c, float *y) {
    ml_avgpool_forward(y, c->x, c->B, c->C, c->H, c->W, c->k);
}

START_TEST(test_avgpool_gradcheck) {
    const struct pool_case *pc = &pool_cases[_i];
    struct lin_ctx c = {avgpool_fwd, pc->B, pc->C, pc->H, pc->W, pc->k, 0, NULL, NULL, NULL, 0};
    const size_t n = (size_t)c.B * c.C * c.H * c.W;
    c.ny = n;
    c.x = fl(n), c.y = fl(n), c.r = fl(n);
    float *dx = fl(n);
    tu_fill(c.x, n, 400 + _i, -1, 1);
    tu_fill(c.r, n, 500 + _i, -1, 1);
    ml_avgpool_backward(dx, c.r, c.B, c.C, c.H, c.W, c.k);
    const double e = tu_gradcheck(lin_loss, &c, c.x, dx, n, 64, 5e-2);
    ck_assert_msg(e <= TU_GC_TOL, "case %d: dx error %g", _i, e);
    free(c.x), free(c.y), free(c.r), free(dx);
}
END_TEST

/* ---- frequency bands ---- */

START_TEST(test_freqbands_forward) {
    const int B = 2, C = 3, H = 7, W = 9;
    const size_t n = (size_t)B * C * H * W;
    float *x = fl(n), *lo = fl(n), *mi = fl(n), *hi = fl(n), *a3 = fl(n), *a5 = fl(n);
    /* a constant image: low = the constant, mid = high = 0 at every pixel, corners too
     * (dividing by k^2 would give 4/9 of it in a 3x3 corner and high = 5/9 of it) */
    fill_const(x, n, -1.25f);
    ml_freqbands_forward(lo, mi, hi, x, B, C, H, W, 3, 5);
    for (size_t j = 0; j < n; j++) {
        ck_assert_float_eq_tol(lo[j], -1.25f, 1e-6);
        ck_assert_float_eq_tol(mi[j], 0, 1e-6);
        ck_assert_float_eq_tol(hi[j], 0, 1e-6);
    }
    /* random: the bands are the compositions of the average pools; low + high = x */
    tu_fill(x, n, 7, -1, 1);
    ml_freqbands_forward(lo, mi, hi, x, B, C, H, W, 3, 5);
    ml_avgpool_forward(a3, x, B, C, H, W, 3);
    ml_avgpool_forward(a5, x, B, C, H, W, 5);
    for (size_t j = 0; j < n; j++) {
        ck_assert_float_eq_tol(lo[j], a3[j], 1e-6);
        ck_assert_float_eq_tol(mi[j], a3[j] - a5[j], 1e-6);
        ck_assert_float_eq_tol(hi[j], x[j] - a3[j], 1e-6);
        ck_assert_float_eq_tol(lo[j] + hi[j], x[j], 1e-6);
    }
    /* NULL outputs are skipped, the others unchanged */
    float *hi2 = fl(n);
    ml_freqbands_forward(NULL, NULL, hi2, x, B, C, H, W, 3, 5);
    for (size_t j = 0; j < n; j++) ck_assert_float_eq(hi2[j], hi[j]);
    free(x), free(lo), free(mi), free(hi), free(a3), free(a5), free(hi2);
}
END_TEST

struct fb_ctx { int B, C, H, W, k1, k2, mask; float *x, *b[3], *r[3]; };
static double fb_loss(void *p) {
    struct fb_ctx *c = p;
    const size_t n = (size_t)c->B * c->C * c->H * c->W;
    ml_freqbands_forward(c->mask & 1 ? c->b[0] : NULL, c->mask & 2 ? c->b[1] : NULL,
                         c->mask & 4 ? c->b[2] : NULL, c->x, c->B, c->C, c->H, c->W, c->k1, c->k2);
    double l = 0;
    for (int i = 0; i < 3; i++)
        if (c->mask & (1 << i)) l += dot(c->b[i], c->r[i], n);
    return l;
}

/* _i: which bands carry a gradient (1 low, 2 mid, 4 high), so the NULL cases are checked */
START_TEST(test_freqbands_gradcheck) {
    const int mask = _i + 1;
    struct fb_ctx c = {2, 2, 6, 11, 3, 5, mask, NULL, {NULL}, {NULL}};
    if (_i == 6) c.k1 = 1, c.k2 = 7; /* other windows, all bands */
    const size_t n = (size_t)c.B * c.C * c.H * c.W;
    c.x = fl(n);
    tu_fill(c.x, n, 600 + _i, -1, 1);
    for (int i = 0; i < 3; i++) {
        c.b[i] = fl(n), c.r[i] = fl(n);
        tu_fill(c.r[i], n, 610 + 3 * _i + i, -1, 1);
    }
    float *dx = fl(n);
    fill_const(dx, n, 1);
    ml_freqbands_backward(dx, mask & 1 ? c.r[0] : NULL, mask & 2 ? c.r[1] : NULL,
                          mask & 4 ? c.r[2] : NULL, c.B, c.C, c.H, c.W, c.k1, c.k2);
    for (size_t j = 0; j < n; j++) dx[j] -= 1;
    const double e = tu_gradcheck(fb_loss, &c, c.x, dx, n, 64, 5e-2);
    ck_assert_msg(e <= TU_GC_TOL, "bands %d: dx error %g", mask, e);
    for (int i = 0; i < 3; i++) free(c.b[i]), free(c.r[i]);
    free(c.x), free(dx);
}
END_TEST

/* ---- global average pool ---- */

static void gap_fwd(const struct lin_ctx *c, float *y) {
    ml_global_avgpool_forward(y, c->x, c->B, c->C, c->H * c->W);
}

START_TEST(test_global_avgpool) {
    /* B 2, C 2, HW 3: means 2, -1, 10, 0.5 */
    float x[12] = {1, 2, 3, -1, -2, 0, 10, 10, 10, 0, 0.5f, 1}, y[4];
    ml_global_avgpool_forward(y, x, 2, 2, 3);
    const float e[4] = {2, -1, 10, 0.5f};
    for (int j = 0; j < 4; j++) ck_assert_float_eq_tol(y[j], e[j], 1e-6);
    float dx[12];
    fill_const(dx, 12, 1);
    const float g[4] = {3, 6, -3, 0};
    ml_global_avgpool_backward(dx, g, 2, 2, 3);
    for (int j = 0; j < 12; j++) ck_assert_float_eq_tol(dx[j], 1 + g[j / 3] / 3, 1e-6);
    /* finite differences, with planes longer than the 16 partial sums */
    const int B = 3, C = 4, HW = 37;
    const size_t n = (size_t)B * C * HW, ny = (size_t)B * C;
    struct lin_ctx c = {gap_fwd, B, C, 1, HW, 0, 0, fl(n), fl(ny), fl(ny), ny};
    tu_fill(c.x, n, 41, -1, 1);
    tu_fill(c.r, ny, 42, -1, 1);
    float *d = fl(n);
    ml_global_avgpool_backward(d, c.r, B, C, HW);
    const double err = tu_gradcheck(lin_loss, &c, c.x, d, n, 96, 5e-2);
    ck_assert_msg(err <= TU_GC_TOL, "dx error %g", err);
    free(c.x), free(c.y), free(c.r), free(d);
}
END_TEST

/* ---- depthwise convolution ---- */

struct dw_case { int B, C, H, W, m, k, bias; };
static const struct dw_case dw_cases[] = {
    {2, 3, 6, 7, 1, 3, 1}, {1, 2, 5, 9, 3, 3, 0}, {2, 2, 8, 5, 2, 5, 1},
    {1, 3, 4, 4, 1, 1, 1}, {2, 1, 9, 35, 3, 3, 1}, {1, 2, 3, 3, 2, 7, 0},
};
#define NDW ((int)(sizeof dw_cases / sizeof dw_cases[0]))

START_TEST(test_dwconv_vs_ref) {
    const struct dw_case *c = &dw_cases[_i];
    const size_t nx = (size_t)c->B * c->C * c->H * c->W, ny = nx * c->m;
    const size_t nw = (size_t)c->C * c->m * c->k * c->k;
    float *x = fl(nx), *w = fl(nw), *b = fl((size_t)c->C * c->m), *y = fl(ny);
    double *r = malloc(ny * sizeof *r);
    tu_fill(x, nx, 700 + _i, -1, 1);
    tu_fill(w, nw, 710 + _i, -1, 1);
    tu_fill(b, (size_t)c->C * c->m, 720 + _i, -1, 1);
    ml_dwconv_forward(y, x, w, c->bias ? b : NULL, c->B, c->C, c->H, c->W, c->m, c->k);
    ref_dwconv(r, x, w, c->bias ? b : NULL, c->B, c->C, c->H, c->W, c->m, c->k);
    for (size_t j = 0; j < ny; j++) ck_assert_double_eq_tol(y[j], r[j], 1e-5);
    free(x), free(w), free(b), free(y), free(r);
}
END_TEST

struct dw_ctx { const struct dw_case *c; float *x, *w, *b, *y, *r; size_t ny; };
static double dw_loss(void *p) {
    struct dw_ctx *g = p;
    const struct dw_case *c = g->c;
    ml_dwconv_forward(g->y, g->x, g->w, c->bias ? g->b : NULL, c->B, c->C, c->H, c->W, c->m, c->k);
    return dot(g->y, g->r, g->ny);
}

START_TEST(test_dwconv_gradcheck) {
    const struct dw_case *c = &dw_cases[_i];
    const size_t nx = (size_t)c->B * c->C * c->H * c->W, ny = nx * c->m;
    const size_t nw = (size_t)c->C * c->m * c->k * c->k, nb = (size_t)c->C * c->m;
    struct dw_ctx g = {c, fl(nx), fl(nw), fl(nb), fl(ny), fl(ny), ny};
    tu_fill(g.x, nx, 730 + _i, -1, 1);
    tu_fill(g.w, nw, 740 + _i, -1, 1);
    tu_fill(g.b, nb, 750 + _i, -1, 1);
    tu_fill(g.r, ny, 760 + _i, -1, 1);
    float *dx = fl(nx), *dw = fl(nw), *db = fl(nb);
    fill_const(dx, nx, 1), fill_const(dw, nw, 1), fill_const(db, nb, 1); /* accumulates */
    ml_dwconv_backward(dx, dw, c->bias ? db : NULL, g.r, g.x, g.w, c->B, c->C, c->H, c->W, c->m, c->k);
    for (size_t j = 0; j < nx; j++) dx[j] -= 1;
    for (size_t j = 0; j < nw; j++) dw[j] -= 1;
    for (size_t j = 0; j < nb; j++) db[j] -= 1;
    const double ex = tu_gradcheck(dw_loss, &g, g.x, dx, nx, 64, 5e-2);
    const double ew = tu_gradcheck(dw_loss, &g, g.w, dw, nw, 64, 5e-2);
    const double eb = c->bias ? tu_gradcheck(dw_loss, &g, g.b, db, nb, 64, 5e-2) : 0;
    ck_assert_msg(ex <= TU_GC_TOL && ew <= TU_GC_TOL && eb <= TU_GC_TOL, "case %d: dx %g dw %g db %g",
                  _i, ex, ew, eb);
    /* dx alone (the fixed filters' path: one thread per plane, not per channel) is the same */
    float *dx2 = fl(nx);
    ml_dwconv_backward(dx2, NULL, NULL, g.r, g.x, g.w, c->B, c->C, c->H, c->W, c->m, c->k);
    for (size_t j = 0; j < nx; j++) ck_assert_float_eq_tol(dx2[j], dx[j], 1e-5);
    free(g.x), free(g.w), free(g.b), free(g.y), free(g.r), free(dx), free(dw), free(db), free(dx2);
}
END_TEST

START_TEST(test_edge_filters) {
    /* the layout of ml_dwconv_edge_weights: per channel Sobel-x, Sobel-y, Laplacian */
    const int C = 2, H = 6, W = 7;
    float w[2 * 3 * 9];
    ml_dwconv_edge_weights(w, C);
    for (int c = 0; c < C; c++)
        for (int t = 0; t < 9; t++) {
            ck_assert_float_eq(w[(3 * c) * 9 + t], ml_kernel_sobel_x[t]);
            ck_assert_float_eq(w[(3 * c + 1) * 9 + t], ml_kernel_sobel_y[t]);
            ck_assert_float_eq(w[(3 * c + 2) * 9 + t], ml_kernel_laplacian[t]);
        }
    /* channel 0: the ramp 2 x - 3 y + 0.5: inside, Sobel-x 2, Sobel-y -3, Laplacian 0;
     * channel 1: x^2 + y^2: Laplacian 4 inside (and Sobel-x 2 x, Sobel-y 2 y: the central
     * difference of a quadratic is exact) */
    float x[2 * 6 * 7], y[2 * 3 * 6 * 7];
    for (int yy = 0; yy < H; yy++)
        for (int xx = 0; xx < W; xx++) {
            x[yy * W + xx] = 2.0f * xx - 3.0f * yy + 0.5f;
            x[H * W + yy * W + xx] = (float)(xx * xx + yy * yy);
        }
    ml_dwconv_forward(y, x, w, NULL, 1, C, H, W, 3, 3);
    for (int yy = 1; yy < H - 1; yy++)
        for (int xx = 1; xx < W - 1; xx++) {
            const int q = yy * W + xx;
            ck_assert_float_eq_tol(y[0 * H * W + q], 2, 1e-5);
            ck_assert_float_eq_tol(y[1 * H * W + q], -3, 1e-5);
            ck_assert_float_eq_tol(y[2 * H * W + q], 0, 1e-5);
            ck_assert_float_eq_tol(y[3 * H * W + q], 2.0f * xx, 1e-5);
            ck_assert_float_eq_tol(y[4 * H * W + q], 2.0f * yy, 1e-5);
            ck_assert_float_eq_tol(y[5 * H * W + q], 4, 1e-5);
        }
    /* at the border the zero padding answers too: the ramp's left column (value 0.5 - 3y)
     * has Sobel-x = (sum of right neighbours 2.5 - 3(y-1), 2 (2.5 - 3y), 2.5 - 3(y+1)) / 8 */
    for (int yy = 1; yy < H - 1; yy++)
        ck_assert_float_eq_tol(y[yy * W], (4 * (2.5f - 3.0f * yy)) / 8, 1e-5);
}
END_TEST

/* ---- local contrast normalisation ---- */

static void ref_lcn(double *y, const float *x, int B, int C, int H, int W, int k, double eps) {
    const size_t n = (size_t)B * C * H * W;
    double *mu = malloc(n * sizeof *mu), *m2 = malloc(n * sizeof *m2);
    ref_avgpool(mu, x, B, C, H, W, k);
    /* the second moment in double from x directly */
    const int r = k / 2;
    for (int p = 0; p < B * C; p++)
        for (int yy = 0; yy < H; yy++)
            for (int xx = 0; xx < W; xx++) {
                double s = 0;
                int cnt = 0;
                for (int u = yy - r; u <= yy + r; u++)
                    for (int v = xx - r; v <= xx + r; v++) {
                        if (u < 0 || u >= H || v < 0 || v >= W) continue;
                        const double xv = x[((size_t)p * H + u) * W + v];
                        s += xv * xv;
                        cnt++;
                    }
                m2[((size_t)p * H + yy) * W + xx] = s / cnt;
            }
    for (size_t j = 0; j < n; j++) {
        const double v = fmax(m2[j] - mu[j] * mu[j], 0);
        y[j] = (x[j] - mu[j]) / sqrt(v + eps);
    }
    free(mu), free(m2);
}

START_TEST(test_lcn_torch) {
    /* PyTorch ops: mu = avg_pool2d(x, 3, 1, 1, count_include_pad=False), s2 = avg_pool(x*x) -
     * mu*mu, y = (x - mu) / sqrt(s2 + 1e-4); dx by autograd of sum(y * g), g = linspace(-1,
     * 1, 16) (seg_reference.py, "local contrast normalisation") */
    const float x[16] = {0.2f, 0.9f, 0.4f, 0.1f, 0.8f, 0.3f, 0.6f, 0.5f,
                         0.0f, 0.7f, 1.0f, 0.35f, 0.45f, 0.15f, 0.55f, 0.25f};
    const float ey[16] = {-1.1501714f, 1.43098652f, -0.267046899f, -1.60128164f, 0.948389173f,
                          -0.763258219f, 0.222359002f, 0.0303387865f, -1.40603554f, 0.648900807f,
                          2.0679431f, -0.807917953f, 0.461934417f, -0.976698756f, 0.173101276f,
                          -0.997514307f};
    const float edx[16] = {-1.60745692f, -1.03614831f, -1.20114541f, 0.423465014f, 0.455240965f,
                           1.31040871f, -0.517418623f, -0.0735998154f, -0.822244823f,
                           -0.887077689f, 0.80199337f, -0.327550888f, 1.05577922f, 0.872900486f,
                           0.742727757f, 0.810126781f};
    float y[16], mean[16], rstd[16], g[16], dx[16] = {0};
    for (int j = 0; j < 16; j++) g[j] = -1.0f + 2.0f * (float)j / 15.0f;
    ml_lcn_forward(y, mean, rstd, x, 1, 1, 4, 4, 3, 1e-4f);
    for (int j = 0; j < 16; j++) ck_assert_float_eq_tol(y[j], ey[j], 5e-5);
    ml_lcn_backward(dx, g, y, x, mean, rstd, 1, 1, 4, 4, 3);
    for (int j = 0; j < 16; j++) ck_assert_float_eq_tol(dx[j], edx[j], 2e-4);
}
END_TEST

START_TEST(test_lcn_properties) {
    /* an image periodic with period k in both directions: every interior window holds one
     * whole period, so mu and s2 are the same at every pixel whose window is inside, and
     * where the windows of a window are inside too (2r from the border) the output has zero
     * local mean and local variance s2 / (s2 + eps) ~ 1 */
    for (int k = 3; k <= 5; k += 2) {
        const int r = k / 2, H = 4 * k, W = 3 * k + 1, C = 2;
        const size_t n = (size_t)C * H * W;
        float tile[2 * 25], *x = fl(n), *y = fl(n), *mean = fl(n), *rstd = fl(n);
        float *ay = fl(n), *y2 = fl(n), *ay2 = fl(n);
        tu_fill(tile, (size_t)C * k * k, 900 + k, -1, 1);
        for (int c = 0; c < C; c++)
            for (int yy = 0; yy < H; yy++)
                for (int xx = 0; xx < W; xx++)
                    x[((size_t)c * H + yy) * W + xx] = tile[(c * k + yy % k) * k + xx % k];
        const float eps = 1e-6f;
        ml_lcn_forward(y, mean, rstd, x, 1, C, H, W, k, eps);
        for (size_t j = 0; j < n; j++) y2[j] = y[j] * y[j];
        ml_avgpool_forward(ay, y, 1, C, H, W, k);
        ml_avgpool_forward(ay2, y2, 1, C, H, W, k);
        for (int c = 0; c < C; c++) {
            /* the tile's variance (biased) */
            double s = 0, ss = 0;
            for (int t = 0; t < k * k; t++) s += tile[c * k * k + t], ss += (double)tile[c * k * k + t] * tile[c * k * k + t];
            const double var = ss / (k * k) - (s / (k * k)) * (s / (k * k));
            for (int yy = 2 * r; yy < H - 2 * r; yy++)
                for (int xx = 2 * r; xx < W - 2 * r; xx++) {
                    const size_t q = ((size_t)c * H + yy) * W + xx;
                    ck_assert_float_eq_tol(ay[q], 0, 1e-5);
                    ck_assert_double_eq_tol(ay2[q], var / (var + eps), 1e-4);
                    ck_assert_double_eq_tol(mean[q], s / (k * k), 1e-6);
                }
        }
        free(x), free(y), free(mean), free(rstd), free(ay), free(y2), free(ay2);
    }
    /* against double-precision loops; constant -> 0; a common offset of 1000 changes
     * nothing beyond the rounding of x itself (the moments are taken about the plane mean:
     * E[x^2] - mu^2 at 1e6 in float would have no digits left) */
    const int B = 2, C = 3, H = 9, W = 21, k = 5;
    const size_t n = (size_t)B * C * H * W;
    float *x = fl(n), *y = fl(n), *mean = fl(n), *rstd = fl(n), *y2 = fl(n);
    double *ry = malloc(n * sizeof *ry);
    tu_fill(x, n, 77, 0, 1);
    ml_lcn_forward(y, mean, rstd, x, B, C, H, W, k, 1e-4f);
    ref_lcn(ry, x, B, C, H, W, k, 1e-4);
    for (size_t j = 0; j < n; j++) ck_assert_double_eq_tol(y[j], ry[j], 1e-4);
    for (size_t j = 0; j < n; j++) x[j] += 1000.0f;
    ml_lcn_forward(y2, mean, rstd, x, B, C, H, W, k, 1e-4f);
    for (size_t j = 0; j < n; j++) ck_assert_float_eq_tol(y2[j], y[j], 2e-3);
    fill_const(x, n, 3.5f);
    ml_lcn_forward(y, mean, rstd, x, B, C, H, W, k, 1e-4f);
    for (size_t j = 0; j < n; j++) {
        ck_assert_float_eq_tol(y[j], 0, 1e-6);
        ck_assert_float_eq_tol(mean[j], 3.5f, 1e-6);
    }
    free(x), free(y), free(mean), free(rstd), free(y2), free(ry);
}
END_TEST

struct lcn_ctx { int B, C, H, W, k; float eps; float *x, *y, *mean, *rstd, *r; };
static double lcn_loss(void *p) {
    struct lcn_ctx *c = p;
    ml_lcn_forward(c->y, c->mean, c->rstd, c->x, c->B, c->C, c->H, c->W, c->k, c->eps);
    return dot(c->y, c->r, (size_t)c->B * c->C * c->H * c->W);
}

/* B, C, H, W, k */
static const int lcn_cases[][5] = {{2, 2, 5, 6, 3}, {1, 3, 7, 9, 5}, {1, 1, 6, 20, 3}, {2, 1, 4, 5, 7}};

START_TEST(test_lcn_gradcheck) {
    const int *cs = lcn_cases[_i];
    struct lcn_ctx c = {cs[0], cs[1], cs[2], cs[3], cs[4], 1e-3f, NULL, NULL, NULL, NULL, NULL};
    const size_t n = (size_t)c.B * c.C * c.H * c.W;
    c.x = fl(n), c.y = fl(n), c.mean = fl(n), c.rstd = fl(n), c.r = fl(n);
    tu_fill(c.x, n, 950 + _i, -1, 1);
    tu_fill(c.r, n, 960 + _i, -1, 1);
    float *dx = fl(n);
    fill_const(dx, n, 1);
    lcn_loss(&c);
    ml_lcn_backward(dx, c.r, c.y, c.x, c.mean, c.rstd, c.B, c.C, c.H, c.W, c.k);
    for (size_t j = 0; j < n; j++) dx[j] -= 1;
    /* the policy's default first step: at 1e-3 the float forward's round-off (~1e-6 of a
     * loss of ~100) is 3e-4 of a difference quotient, above 1% of the small entries; the
     * backward itself agrees with central differences of the double-precision ref_lcn to
     * 5e-7 on every entry of these cases */
    const double e = tu_gradcheck(lcn_loss, &c, c.x, dx, n, 96, 1e-2);
    ck_assert_msg(e <= TU_GC_TOL, "case %d: dx error %g", _i, e);
    free(c.x), free(c.y), free(c.mean), free(c.rstd), free(c.r), free(dx);
}
END_TEST

/* ---- upsampling ---- */

START_TEST(test_upsample_torch) {
    /* 2x2 -> 4x4 by hand (and PyTorch's F.interpolate(x, scale_factor=2, mode='bilinear',
     * align_corners=False), seg_reference.py "bilinear x2"): output index d reads
     * src = (d + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (i0 = 1 = i1 at the
     * edge), so rows and columns are x0, 3/4 x0 + 1/4 x1, 1/4 x0 + 3/4 x1, x1:
     *   row 0 (1 2) -> 1 1.25 1.75 2, row 1 (3 4) -> 3 3.25 3.75 4, rows mixed 3:1, 1:3 */
    const float x2[4] = {1, 2, 3, 4};
    const float e2[16] = {1, 1.25f, 1.75f, 2, 1.5f, 1.75f, 2.25f, 2.5f,
                          2.5f, 2.75f, 3.25f, 3.5f, 3, 3.25f, 3.75f, 4};
    float y2[16];
    ml_upsample_bilinear_forward(y2, x2, 1, 1, 2, 2, 2);
    for (int j = 0; j < 16; j++) ck_assert_float_eq(y2[j], e2[j]);
    /* x3 on a 2x3 image, PyTorch's numbers (seg_reference.py "bilinear x3") with its float
     * roundings of 1/3 (the 1.49e-08 where the exact value is 0) */
    const float x3[6] = {0, 1, 4, 2, -1, 3};
    const float e3[54] = {0, 1.49011612e-08f, 0.333333373f, 0.666666687f, 1.00000012f, 2, 3.00000024f, 4, 4,
                          2.98023224e-08f, 4.47034836e-08f, 0.333333373f, 0.666666687f, 1.00000012f,
                          2.00000024f, 3.00000024f, 4, 4, 0.666666746f, 0.666666746f, 0.555555582f,
                          0.444444418f, 0.333333373f, 1.44444454f, 2.55555582f, 3.66666651f,
                          3.66666651f, 1.33333337f, 1.33333337f, 0.777777672f, 0.222222149f,
                          -0.333333194f, 0.888889015f, 2.1111114f, 3.33333325f, 3.33333325f, 2, 2,
                          0.999999821f, -5.96046448e-08f, -0.999999821f, 0.333333492f, 1.66666687f,
                          3, 2.99999976f, 2, 2, 0.999999881f, -4.47034836e-08f, -0.999999762f,
                          0.333333492f, 1.66666698f, 3, 3};
    float y3[54];
    ml_upsample_bilinear_forward(y3, x3, 1, 1, 2, 3, 3);
    for (int j = 0; j < 54; j++) ck_assert_float_eq_tol(y3[j], e3[j], 5e-7);
    /* nearest x2: each pixel becomes a 2x2 block */
    float yn[16];
    ml_upsample_nearest_forward(yn, x2, 1, 1, 2, 2, 2);
    const float en[16] = {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4};
    for (int j = 0; j < 16; j++) ck_assert_float_eq(yn[j], en[j]);
    /* factor 1 is the identity for both */
    float y1[6];
    ml_upsample_bilinear_forward(y1, x3, 1, 1, 2, 3, 1);
    for (int j = 0; j < 6; j++) ck_assert_float_eq(y1[j], x3[j]);
    ml_upsample_nearest_forward(y1, x3, 1, 1, 2, 3, 1);
    for (int j = 0; j < 6; j++) ck_assert_float_eq(y1[j], x3[j]);
}
END_TEST

/* B, C, H, W, s, bilinear */
static const int up_cases[][6] = {
    {2, 3, 4, 5, 2, 1}, {1, 2, 3, 7, 3, 1}, {2, 1, 1, 4, 2, 1}, {1, 2, 5, 3, 4, 1}, {1, 1, 9, 33, 2, 1},
    {2, 3, 4, 5, 2, 0}, {1, 2, 3, 7, 3, 0}, {1, 1, 9, 33, 2, 0},
};
#define NUP ((int)(sizeof up_cases / sizeof up_cases[0]))

static void up_fwd(const struct lin_ctx *c, float *y) {
    if (c->k)
        ml_upsample_bilinear_forward(y, c->x, c->B, c->C, c->H, c->W, c->s);
    else
        ml_upsample_nearest_forward(y, c->x, c->B, c->C, c->H, c->W, c->s);
}

START_TEST(test_upsample_gradcheck) {
    const int *u = up_cases[_i];
    struct lin_ctx c = {up_fwd, u[0], u[1], u[2], u[3], u[5], u[4], NULL, NULL, NULL, 0};
    const size_t nx = (size_t)c.B * c.C * c.H * c.W;
    c.ny = nx * c.s * c.s;
    c.x = fl(nx), c.y = fl(c.ny), c.r = fl(c.ny);
    tu_fill(c.x, nx, 1000 + _i, -1, 1);
    tu_fill(c.r, c.ny, 1010 + _i, -1, 1);
    float *dx = fl(nx);
    fill_const(dx, nx, 1);
    if (c.k)
        ml_upsample_bilinear_backward(dx, c.r, c.B, c.C, c.H, c.W, c.s);
    else
        ml_upsample_nearest_backward(dx, c.r, c.B, c.C, c.H, c.W, c.s);
    for (size_t j = 0; j < nx; j++) dx[j] -= 1;
    const double e = tu_gradcheck(lin_loss, &c, c.x, dx, nx, 64, 5e-2);
    ck_assert_msg(e <= TU_GC_TOL, "case %d: dx error %g", _i, e);
    /* the adjoint identity over every entry: <U x, r> = <x, U^T r> */
    lin_loss(&c);
    const double lhs = dot(c.y, c.r, c.ny), rhs = dot(c.x, dx, nx);
    ck_assert_msg(fabs(lhs - rhs) <= 1e-5 * (1 + fabs(lhs)), "case %d: %.9g vs %.9g", _i, lhs, rhs);
    /* a constant upsamples to that constant (the weights of every output sum to 1) */
    fill_const(c.x, nx, -2.5f);
    up_fwd(&c, c.y);
    for (size_t j = 0; j < c.ny; j++) ck_assert_float_eq_tol(c.y[j], -2.5f, 1e-6);
    free(c.x), free(c.y), free(c.r), free(dx);
}
END_TEST

/* ---- group norm ---- */

START_TEST(test_groupnorm_torch) {
    /* nn.GroupNorm(2, 4) with weight (1, 2, 0.5, -1), bias (0, 0.1, -0.2, 0.3), eps 1e-5,
     * on a 1x4x2x2 input (seg_reference.py "GroupNorm") */
    const float x[16] = {0.5f, -1.0f, 2.0f, 0.0f, 1.0f, 3.0f, -2.0f, 0.25f,
                         4.0f, 4.5f, 3.0f, 5.0f, -1.0f, 0.0f, 1.0f, 2.0f};
    const float gm[4] = {1, 2, 0.5f, -1}, bt[4] = {0, 0.1f, -0.2f, 0.3f};
    const float e[16] = {0.0210958719f, -0.991505861f, 1.03369761f, -0.316438049f, 0.81725961f,
                         3.51753092f, -3.23314738f, -0.195342153f, 0.212513864f, 0.334740162f,
                         -0.0319387615f, 0.45696649f, 1.91949844f, 1.43059325f, 0.941688001f,
                         0.45278275f};
    float y[16], mean[2], rstd[2];
    ml_groupnorm_forward(y, mean, rstd, x, gm, bt, 1, 4, 4, 2, 1e-5f, 0);
    for (int j = 0; j < 16; j++) ck_assert_float_eq_tol(y[j], e[j], 1e-5);
    /* fused ReLU */
    ml_groupnorm_forward(y, mean, rstd, x, gm, bt, 1, 4, 4, 2, 1e-5f, 1);
    for (int j = 0; j < 16; j++) ck_assert_float_eq_tol(y[j], e[j] > 0 ? e[j] : 0, 1e-5);
}
END_TEST

struct gn_ctx { int B, C, HW, G, relu; float *x, *g, *b, *y, *mean, *rstd, *r; };
static double gn_loss(void *p) {
    struct gn_ctx *c = p;
    ml_groupnorm_forward(c->y, c->mean, c->rstd, c->x, c->g, c->b, c->B, c->C, c->HW, c->G, 1e-5f, c->relu);
    return dot(c->y, c->r, (size_t)c->B * c->C * c->HW);
}

/* B, C, HW, G, relu */
static const int gn_cases[][5] = {{3, 4, 6, 2, 0}, {3, 4, 6, 2, 1}, {2, 6, 35, 3, 0}, {2, 3, 5, 1, 1},
                                  {1, 4, 9, 4, 0}};

START_TEST(test_groupnorm_gradcheck) {
    const int *gc = gn_cases[_i];
    struct gn_ctx c = {gc[0], gc[1], gc[2], gc[3], gc[4], NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    const size_t n = (size_t)c.B * c.C * c.HW;
    c.x = fl(n), c.g = fl(c.C), c.b = fl(c.C), c.y = fl(n), c.r = fl(n);
    c.mean = fl((size_t)c.B * c.G), c.rstd = fl((size_t)c.B * c.G);
    tu_fill(c.x, n, 1100 + _i, -2, 2);
    tu_fill(c.g, c.C, 1110 + _i, 0.5f, 1.5f);
    tu_fill(c.b, c.C, 1120 + _i, -0.5f, 0.5f);
    tu_fill(c.r, n, 1130 + _i, -1, 1);
    float *dx = fl(n), *dg = fl(c.C), *db = fl(c.C);
    fill_const(dx, n, 1), fill_const(dg, c.C, 1), fill_const(db, c.C, 1);
    gn_loss(&c);
    ml_groupnorm_backward(dx, dg, db, c.r, c.y, c.x, c.mean, c.rstd, c.g, c.B, c.C, c.HW, c.G, c.relu);
    for (size_t j = 0; j < n; j++) dx[j] -= 1;
    for (int j = 0; j < c.C; j++) dg[j] -= 1, db[j] -= 1;
    const double ex = tu_gradcheck(gn_loss, &c, c.x, dx, n, 72, 1e-3);
    const double eg = tu_gradcheck(gn_loss, &c, c.g, dg, c.C, 8, 1e-3);
    const double eb = tu_gradcheck(gn_loss, &c, c.b, db, c.C, 8, 1e-3);
    ck_assert_msg(ex <= TU_GC_TOL && eg <= TU_GC_TOL && eb <= TU_GC_TOL,
                  "case %d: dx %g dgamma %g dbeta %g", _i, ex, eg, eb);
    free(c.x), free(c.g), free(c.b), free(c.y), free(c.r), free(c.mean), free(c.rstd);
    free(dx), free(dg), free(db);
}
END_TEST

/* GroupNorm with one group per channel on one image normalises exactly what BatchNorm does
 * on a batch of that one image; and the reason the experts use GroupNorm: an image's GN
 * output does not depend on the other images an expert was sent, its BN output does. */
START_TEST(test_groupnorm_vs_batchnorm) {
    const int B = 3, C = 4, HW = 10;
    const size_t n = (size_t)B * C * HW, n1 = (size_t)C * HW;
    float *x = fl(n), *g = fl(C), *b = fl(C), *y = fl(n), *y1 = fl(n1), *yb = fl(n1);
    float mean[12], rstd[12], bm[4], br[4];
    tu_fill(x, n, 1200, -2, 3);
    tu_fill(g, C, 1201, 0.5f, 1.5f);
    tu_fill(b, C, 1202, -0.5f, 0.5f);
    ml_groupnorm_forward(y1, mean, rstd, x, g, b, 1, C, HW, C, 1e-5f, 0);
    ml_batchnorm2d_forward_train(yb, bm, br, NULL, NULL, x, g, b, 1, C, HW, 0.1f, 1e-5f, 0);
    for (size_t j = 0; j < n1; j++) ck_assert_float_eq_tol(y1[j], yb[j], 1e-5);
    /* image 0 alone, and image 0 in a batch of 3: GN the same, BN not */
    ml_groupnorm_forward(y, mean, rstd, x, g, b, B, C, HW, 2, 1e-5f, 0);
    ml_groupnorm_forward(y1, mean, rstd, x, g, b, 1, C, HW, 2, 1e-5f, 0);
    for (size_t j = 0; j < n1; j++) ck_assert_float_eq(y[j], y1[j]);
    float *ybn = fl(n);
    ml_batchnorm2d_forward_train(ybn, bm, br, NULL, NULL, x, g, b, B, C, HW, 0.1f, 1e-5f, 0);
    double diff = 0;
    for (size_t j = 0; j < n1; j++) diff = fmax(diff, fabs(ybn[j] - yb[j]));
    ck_assert_double_gt(diff, 1e-2);
    free(x), free(g), free(b), free(y), free(y1), free(yb), free(ybn);
}
END_TEST

/* ---- channels ---- */

START_TEST(test_channels) {
    /* B 2, C 3, HW 2: slice channels [1, 3) */
    const float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    float y[8];
    ml_channels_slice_forward(y, x, 2, 3, 1, 2, 2);
    const float e[8] = {3, 4, 5, 6, 9, 10, 11, 12};
    for (int j = 0; j < 8; j++) ck_assert_float_eq(y[j], e[j]);
    float dx[12];
    fill_const(dx, 12, 1);
    ml_channels_slice_backward(dx, e, 2, 3, 1, 2, 2);
    const float ed[12] = {1, 1, 4, 5, 6, 7, 1, 1, 10, 11, 12, 13};
    for (int j = 0; j < 12; j++) ck_assert_float_eq(dx[j], ed[j]);
    /* 3-way concat of 1, 2 and 1 channels; with two inputs it is conv.h's concat */
    const float a[4] = {1, 2, 3, 4}, b[8] = {10, 11, 12, 13, 20, 21, 22, 23}, c[4] = {-1, -2, -3, -4};
    const float *xs[3] = {a, b, c};
    const int cs[3] = {1, 2, 1};
    float yc[16], ya[12];
    ml_channels_concat_forward(yc, xs, cs, 3, 2, 2);
    const float ec[16] = {1, 2, 10, 11, 12, 13, -1, -2, 3, 4, 20, 21, 22, 23, -3, -4};
    for (int j = 0; j < 16; j++) ck_assert_float_eq(yc[j], ec[j]);
    ml_channels_concat_forward(yc, xs, cs, 2, 2, 2);
    ml_concat_channels_forward(ya, a, b, 2, 1, 2, 2);
    for (int j = 0; j < 12; j++) ck_assert_float_eq(yc[j], ya[j]);
    /* backward: splits and accumulates; a NULL entry is skipped */
    float da[4] = {1, 1, 1, 1}, dc[4] = {0};
    float *dxs[3] = {da, NULL, dc};
    ml_channels_concat_backward(dxs, ec, cs, 3, 2, 2);
    for (int j = 0; j < 4; j++) ck_assert_float_eq(da[j], a[j] + 1);
    for (int j = 0; j < 4; j++) ck_assert_float_eq(dc[j], c[j]);
}
END_TEST

/* ---- losses ---- */

START_TEST(test_bce_torch) {
    /* F.binary_cross_entropy_with_logits(z, t) (mean) and its autograd gradient
     * (seg_reference.py "BCE with logits"); z = +-100 must neither overflow nor lose the
     * 100 that a wrong-sided confident logit costs */
    const float z[8] = {-100, -3, -0.5f, 0, 0.5f, 3, 100, 20};
    const float t[8] = {0, 1, 0.3f, 1, 0, 0.7f, 0, 1};
    const float eg[8] = {0, -0.119071767f, 0.00969258323f, -0.0625f, 0.077807419f, 0.0315717682f,
                         0.125f, 0};
    const double l = ml_bce_logits_forward(z, t, NULL, 1, 8);
    ck_assert_double_eq_tol(l, 13.2860593796, 2e-6); /* PyTorch's sum is float32 */
    float dz[8] = {0};
    ml_bce_logits_backward(dz, z, t, NULL, 1, 8, 1.0f);
    for (int j = 0; j < 8; j++) ck_assert_float_eq_tol(dz[j], eg[j], 1e-7);
    /* the same 8 pixels as B 2 x N 4: still the mean over all 8 */
    ck_assert_double_eq_tol(ml_bce_logits_forward(z, t, NULL, 2, 4), l, 1e-9);
    /* unit weights are the unweighted loss; scale scales the gradient */
    float w[8];
    fill_const(w, 8, 1);
    ck_assert_double_eq_tol(ml_bce_logits_forward(z, t, w, 2, 4), l, 1e-9);
    float dz2[8] = {0};
    ml_bce_logits_backward(dz2, z, t, w, 2, 4, 0.5f);
    for (int j = 0; j < 8; j++) ck_assert_float_eq_tol(dz2[j], 0.5f * eg[j], 1e-7);
}
END_TEST

START_TEST(test_iou_dice_hand) {
    /* z = 0: p = 1/2 everywhere; t = 1 0 1 1: I = 1.5, P = 2, T = 3, U = 3.5.
     * IoU, s = 1: 1 - 2.5 / 4.5 = 4/9; Dice, s = 1: 1 - 4 / 6 = 1/3.
     * Gradient of IoU at a t = 1 pixel: [(I+s)(1-t) - (U+s) t] / (U+s)^2 p(1-p)
     * = -4.5 / 20.25 / 4 = -1/18; at t = 0: 2.5 / 20.25 / 4 = 10/324. */
    const float z[4] = {0, 0, 0, 0}, t[4] = {1, 0, 1, 1};
    ck_assert_double_eq_tol(ml_soft_iou_forward(z, t, NULL, 1, 4, 1.0f), 4.0 / 9, 1e-7);
    ck_assert_double_eq_tol(ml_soft_dice_forward(z, t, NULL, 1, 4, 1.0f), 1.0 / 3, 1e-7);
    float dz[4] = {0};
    ml_soft_iou_backward(dz, z, t, NULL, 1, 4, 1.0f, 1.0f);
    ck_assert_float_eq_tol(dz[0], -1.0f / 18, 1e-7);
    ck_assert_float_eq_tol(dz[1], 10.0f / 324, 1e-7);
    /* Dice: [(2I+s) - 2 t (P+T+s)] / (P+T+s)^2 p(1-p): t = 1: (4 - 12)/36/4 = -1/18,
     * t = 0: 4/36/4 = 1/36 */
    float dd[4] = {0};
    ml_soft_dice_backward(dd, z, t, NULL, 1, 4, 1.0f, 1.0f);
    ck_assert_float_eq_tol(dd[0], -1.0f / 18, 1e-7);
    ck_assert_float_eq_tol(dd[1], 1.0f / 36, 1e-7);
    /* a confident correct prediction costs ~0; an empty mask predicted empty too (the
     * smoothing), a confident wrong one ~1; the mean is over images */
    const float zc[8] = {20, -20, 20, 20, -20, -20, -20, -20}, tc[8] = {1, 0, 1, 1, 0, 0, 0, 0};
    ck_assert_double_lt(ml_soft_iou_forward(zc, tc, NULL, 2, 4, 1.0f), 1e-6);
    ck_assert_double_lt(ml_soft_dice_forward(zc, tc, NULL, 2, 4, 1.0f), 1e-6);
    const float zw[4] = {-20, 20, -20, -20};
    ck_assert_double_gt(ml_soft_iou_forward(zw, t, NULL, 1, 4, 1e-3f), 0.999);
}
END_TEST

struct loss_ctx { int kind, B, N; float smooth; float *z, *t, *w; };
static double seg_loss(void *p) {
    struct loss_ctx *c = p;
    if (c->kind == 0) return ml_bce_logits_forward(c->z, c->t, c->w, c->B, c->N);
    if (c->kind == 1) return ml_soft_iou_forward(c->z, c->t, c->w, c->B, c->N, c->smooth);
    return ml_soft_dice_forward(c->z, c->t, c->w, c->B, c->N, c->smooth);
}

/* _i: loss kind (BCE, IoU, Dice) x weights (none, random); soft and hard targets */
START_TEST(test_losses_gradcheck) {
    const int kind = _i % 3, weighted = _i / 3;
    struct loss_ctx c = {kind, 3, 50, 1.0f, fl(150), fl(150), weighted ? fl(150) : NULL};
    tu_fill(c.z, 150, 1300 + _i, -3, 3);
    tu_fill(c.t, 150, 1310 + _i, 0, 1);
    for (int j = 0; j < 100; j++) c.t[j] = c.t[j] > 0.5f ? 1.0f : 0.0f; /* hard, then soft */
    if (c.w) tu_fill(c.w, 150, 1320 + _i, 1, 6);
    float *dz = fl(150);
    fill_const(dz, 150, 1);
    const float scale = 0.75f;
    if (kind == 0) ml_bce_logits_backward(dz, c.z, c.t, c.w, c.B, c.N, scale);
    if (kind == 1) ml_soft_iou_backward(dz, c.z, c.t, c.w, c.B, c.N, c.smooth, scale);
    if (kind == 2) ml_soft_dice_backward(dz, c.z, c.t, c.w, c.B, c.N, c.smooth, scale);
    for (int j = 0; j < 150; j++) dz[j] = (dz[j] - 1) / scale;
    const double e = tu_gradcheck(seg_loss, &c, c.z, dz, 150, 150, 1e-2);
    ck_assert_msg(e <= TU_GC_TOL, "loss %d weighted %d: dz error %g", kind, weighted, e);
    free(c.z), free(c.t), free(c.w), free(dz);
}
END_TEST

/* ---- argument checks ---- */

START_TEST(test_checks) {
    ck_assert_int_eq(ml_window_check("lcn window", 3), ML_OK);
    ck_assert_int_eq(ml_window_check("lcn window", 4), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "lcn window"));
    ck_assert_ptr_nonnull(strstr(ml_error(), "got 4"));
    ck_assert_int_eq(ml_window_check("pool", 0), ML_ERR);
    ck_assert_int_eq(ml_groupnorm_check("expert norm", 64, 8), ML_OK);
    ck_assert_int_eq(ml_groupnorm_check("expert norm", 64, 6), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "64 channels do not split into 6 groups"));
    ck_assert_int_eq(ml_groupnorm_check("expert norm", 64, 0), ML_ERR);
    ck_assert_int_eq(ml_upsample_check("decoder", 2), ML_OK);
    ck_assert_int_eq(ml_upsample_check("decoder", 0), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "decoder"));
}
END_TEST

/* ---- the same bits for 1 and 2 threads (tensors above the threading threshold) ---- */

START_TEST(test_threads_bitwise) {
    const int B = 2, C = 8, H = 48, W = 48, m = 3, G = 4;
    const size_t n = (size_t)B * C * H * W, nw = (size_t)C * m * 9;
    float *x = fl(n), *g3 = fl(n * m), *w = fl(nw), *gm = fl(C), *bt = fl(C), *g4 = fl(n * 4);
    tu_fill(x, n, 1400, -1, 1);
    tu_fill(g3, n * m, 1401, -1, 1);
    tu_fill(g4, n * 4, 1402, -1, 1);
    tu_fill(w, nw, 1403, -1, 1);
    tu_fill(gm, C, 1404, 0.5f, 1.5f);
    tu_fill(bt, C, 1405, -0.5f, 0.5f);
    float *out[2][10];
    for (int v = 0; v < 2; v++) {
        omp_set_num_threads(v + 1);
        float **o = out[v];
        o[0] = fl(n), o[1] = fl(n), o[2] = fl(n), o[3] = fl(n), o[4] = fl(n * m), o[5] = fl(n);
        o[6] = fl(nw), o[7] = fl(n * 4), o[8] = fl(n), o[9] = fl(n);
        float *mean = fl(n), *rstd = fl(n), gmean[8], grstd[8];
        ml_avgpool_forward(o[0], x, B, C, H, W, 5);
        ml_avgpool_backward(o[1], x, B, C, H, W, 5);
        ml_lcn_forward(o[2], mean, rstd, x, B, C, H, W, 3, 1e-4f);
        ml_lcn_backward(o[3], x, o[2], x, mean, rstd, B, C, H, W, 3);
        ml_dwconv_forward(o[4], x, w, NULL, B, C, H, W, m, 3);
        ml_dwconv_backward(o[5], o[6], NULL, g3, x, w, B, C, H, W, m, 3);
        ml_upsample_bilinear_forward(o[7], x, B, C, H, W, 2);
        ml_upsample_bilinear_backward(o[8], g4, B, C, H, W, 2);
        ml_groupnorm_forward(o[9], gmean, grstd, x, gm, bt, B, C, H * W, G, 1e-5f, 1);
        free(mean), free(rstd);
    }
    omp_set_num_threads(2);
    const size_t sz[10] = {n, n, n, n, n * m, n, nw, n * 4, n, n};
    for (int i = 0; i < 10; i++) {
        ck_assert_msg(memcmp(out[0][i], out[1][i], sz[i] * sizeof(float)) == 0, "output %d differs", i);
        free(out[0][i]), free(out[1][i]);
    }
    free(x), free(g3), free(w), free(gm), free(bt), free(g4);
}
END_TEST

static Suite *seg_suite(void) {
    Suite *s = suite_create("seg");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, test_avgpool_hand);
    tcase_add_loop_test(t, test_avgpool_vs_ref, 0, NPOOL);
    tcase_add_loop_test(t, test_avgpool_adjoint, 0, NPOOL);
    tcase_add_loop_test(t, test_avgpool_gradcheck, 0, NPOOL);
    tcase_add_test(t, test_freqbands_forward);
    tcase_add_loop_test(t, test_freqbands_gradcheck, 0, 7);
    tcase_add_test(t, test_global_avgpool);
    tcase_add_loop_test(t, test_dwconv_vs_ref, 0, NDW);
    tcase_add_loop_test(t, test_dwconv_gradcheck, 0, NDW);
    tcase_add_test(t, test_edge_filters);
    tcase_add_test(t, test_lcn_torch);
    tcase_add_test(t, test_lcn_properties);
    tcase_add_loop_test(t, test_lcn_gradcheck, 0, (int)(sizeof lcn_cases / sizeof lcn_cases[0]));
    tcase_add_test(t, test_upsample_torch);
    tcase_add_loop_test(t, test_upsample_gradcheck, 0, NUP);
    tcase_add_test(t, test_groupnorm_torch);
    tcase_add_loop_test(t, test_groupnorm_gradcheck, 0, (int)(sizeof gn_cases / sizeof gn_cases[0]));
    tcase_add_test(t, test_groupnorm_vs_batchnorm);
    tcase_add_test(t, test_channels);
    tcase_add_test(t, test_bce_torch);
    tcase_add_test(t, test_iou_dice_hand);
    tcase_add_loop_test(t, test_losses_gradcheck, 0, 6);
    tcase_add_test(t, test_checks);
    tcase_add_test(t, test_threads_bitwise);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return tu_run(seg_suite()); }
