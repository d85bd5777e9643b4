/* check_conv.c — conv2d, transposed conv2d, batch norm and concat: hand-checked forward
 * cases, comparison with direct loops, finite-difference gradients, determinism. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "nn/conv.h"
#include "nn/ppgemm.h"
#include "testutil.h"

static float *fl(size_t n) {
    float *p = ml_alloc_floats(n);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* ---- direct reference implementations, double accumulation ---- */

static double act_ref(ml_conv_act a, double v) {
    if (a == ML_CONV_ACT_RELU) return v > 0 ? v : 0;
    if (a == ML_CONV_ACT_SIGMOID) return 1 / (1 + exp(-v));
    return v;
}

static void conv_ref(const ml_conv_shape *s, double *y, const float *x, const float *w,
                     const float *b) {
    for (int i = 0; i < s->B; i++)
        for (int o = 0; o < s->O; o++)
            for (int oy = 0; oy < s->Ho; oy++)
                for (int ox = 0; ox < s->Wo; ox++) {
                    double acc = b ? b[o] : 0;
                    for (int c = 0; c < s->C; c++)
                        for (int ky = 0; ky < s->k; ky++)
                            for (int kx = 0; kx < s->k; kx++) {
                                int iy = oy * s->stride - s->pad + ky;
                                int ix = ox * s->stride - s->pad + kx;
                                if (iy < 0 || iy >= s->H || ix < 0 || ix >= s->W) continue;
                                acc += (double)x[((i * s->C + c) * s->H + iy) * s->W + ix] *
                                       w[((o * s->C + c) * s->k + ky) * s->k + kx];
                            }
                    y[((i * s->O + o) * s->Ho + oy) * s->Wo + ox] = act_ref(s->act, acc);
                }
}

static void convt_ref(const ml_conv_shape *s, double *y, const float *x, const float *w,
                      const float *b) {
    size_t n = ml_conv_out_size(s);
    for (size_t j = 0; j < n; j++) y[j] = 0;
    for (int i = 0; i < s->B; i++)
        for (int c = 0; c < s->C; c++)
            for (int iy = 0; iy < s->H; iy++)
                for (int ix = 0; ix < s->W; ix++)
                    for (int o = 0; o < s->O; o++)
                        for (int ky = 0; ky < s->k; ky++)
                            for (int kx = 0; kx < s->k; kx++) {
                                int oy = iy * s->stride - s->pad + ky;
                                int ox = ix * s->stride - s->pad + kx;
                                if (oy < 0 || oy >= s->Ho || ox < 0 || ox >= s->Wo) continue;
                                y[((i * s->O + o) * s->Ho + oy) * s->Wo + ox] +=
                                    (double)x[((i * s->C + c) * s->H + iy) * s->W + ix] *
                                    w[((c * s->O + o) * s->k + ky) * s->k + kx];
                            }
    for (int i = 0; i < s->B; i++)
        for (int o = 0; o < s->O; o++)
            for (int j = 0; j < s->Ho * s->Wo; j++) {
                double *v = &y[(i * s->O + o) * s->Ho * s->Wo + j];
                *v = act_ref(s->act, *v + (b ? b[o] : 0));
            }
}

/* ---- hand-checked forward cases ---- */

START_TEST(test_conv2d_hand) {
    /* x = 1 2 3 / 4 5 6 / 7 8 9, 3x3 kernel of ones, bias 0.5, pad 1.
     * stride 2 -> 2x2 windows centred at (0,0),(0,2),(2,0),(2,2):
     *   1+2+4+5 = 12, 2+3+5+6 = 16, 4+5+7+8 = 24, 5+6+8+9 = 28, each + 0.5. */
    float x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w[9], b = 0.5f, y[9];
    for (int j = 0; j < 9; j++) w[j] = 1;
    ml_conv_shape s;
    ck_assert_int_eq(ml_conv2d_shape(&s, 1, 1, 3, 3, 1, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.Ho, 2);
    ck_assert_int_eq(s.Wo, 2);
    float *ws = fl(ml_conv_workspace_floats(&s));
    ml_conv2d_forward(&s, y, x, w, &b, ws);
    const float e1[4] = {12.5f, 16.5f, 24.5f, 28.5f};
    for (int j = 0; j < 4; j++) ck_assert_float_eq(y[j], e1[j]);
    /* cross-correlation, not convolution: w = 1 at (ky 1, kx 2) picks the right neighbour,
     * stride 1: y = 2 3 0 / 5 6 0 / 8 9 0 */
    memset(w, 0, sizeof w);
    w[5] = 1;
    ck_assert_int_eq(ml_conv2d_shape(&s, 1, 1, 3, 3, 1, 3, 1, 1, ML_CONV_ACT_NONE), ML_OK);
    free(ws);
    ws = fl(ml_conv_workspace_floats(&s));
    ml_conv2d_forward(&s, y, x, w, NULL, ws);
    const float e2[9] = {2, 3, 0, 5, 6, 0, 8, 9, 0};
    for (int j = 0; j < 9; j++) ck_assert_float_eq(y[j], e2[j]);
    free(ws);
}
END_TEST

START_TEST(test_convt2d_hand) {
    /* x = 1 2 / 3 4, 4x4 kernel, stride 2, pad 1 -> 4x4 output; output row oy gets input
     * rows iy with 0 <= oy + 1 - 2 iy < 4: oy 0 <- {0}, 1 <- {0,1}, 2 <- {0,1}, 3 <- {1},
     * the same for columns. Kernel of ones, bias 0:
     *   1  3  3 2 / 4 10 10 6 / 4 10 10 6 / 3 7 7 4 */
    float x[4] = {1, 2, 3, 4}, w[16], y[16];
    for (int j = 0; j < 16; j++) w[j] = 1;
    ml_conv_shape s;
    ck_assert_int_eq(ml_convt2d_shape(&s, 1, 1, 2, 2, 1, 4, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.Ho, 4);
    ck_assert_int_eq(s.Wo, 4);
    float *ws = fl(ml_conv_workspace_floats(&s));
    ml_convt2d_forward(&s, y, x, w, NULL, ws);
    const float e1[16] = {1, 3, 3, 2, 4, 10, 10, 6, 4, 10, 10, 6, 3, 7, 7, 4};
    for (int j = 0; j < 16; j++) ck_assert_float_eq(y[j], e1[j]);
    /* kernel tap (3, 3) alone: x[iy][ix] lands at (2 iy + 2, 2 ix + 2), so only x00 = 1
     * at (2, 2); with bias -1 and ReLU every other output is 0 and y(2,2) = 0 too; use
     * bias 0.25: y(2,2) = 1.25, else relu(0.25) = 0.25. */
    memset(w, 0, sizeof w);
    w[15] = 1;
    float b = 0.25f;
    ck_assert_int_eq(ml_convt2d_shape(&s, 1, 1, 2, 2, 1, 4, 2, 1, ML_CONV_ACT_RELU), ML_OK);
    ml_convt2d_forward(&s, y, x, w, &b, ws);
    for (int j = 0; j < 16; j++) ck_assert_float_eq(y[j], j == 2 * 4 + 2 ? 1.25f : 0.25f);
    free(ws);
}
END_TEST

START_TEST(test_concat_hand) {
    /* B 2, Ca 1, Cb 2, HW 2: y[i] = a[i] then b[i] */
    float a[4] = {1, 2, 3, 4}, b[8] = {10, 11, 12, 13, 20, 21, 22, 23}, y[12];
    ml_concat_channels_forward(y, a, b, 2, 1, 2, 2);
    const float e[12] = {1, 2, 10, 11, 12, 13, 3, 4, 20, 21, 22, 23};
    for (int j = 0; j < 12; j++) ck_assert_float_eq(y[j], e[j]);
    float da[4] = {1, 1, 1, 1}, db[8] = {0};
    ml_concat_channels_backward(da, db, e, 2, 1, 2, 2);
    for (int j = 0; j < 4; j++) ck_assert_float_eq(da[j], a[j] + 1);
    for (int j = 0; j < 8; j++) ck_assert_float_eq(db[j], b[j]);
    ml_concat_channels_backward(NULL, NULL, e, 2, 1, 2, 2); /* no-op */
}
END_TEST

/* ---- forward against direct loops, incl. chunking and odd shapes ---- */

/* sp: -1 keeps the shape function's choice of the sub-pixel convt2d path, 0 clears it, 1
 * forces it, 2 forces its Winograd form (kernel 4, stride 2, padding 1 only) */
struct fwd_case { int transposed, B, C, H, W, O, k, stride, pad, chunk; ml_conv_act act; int sp; };
static const struct fwd_case fwd_cases[] = {
    {0, 3, 3, 9, 7, 5, 3, 2, 1, 2, ML_CONV_ACT_NONE, -1},
    {0, 2, 4, 6, 6, 3, 3, 1, 1, 1, ML_CONV_ACT_SIGMOID, -1},
    {0, 5, 2, 8, 5, 4, 5, 3, 2, 2, ML_CONV_ACT_RELU, -1},
    {0, 2, 3, 5, 5, 2, 1, 1, 0, 0, ML_CONV_ACT_NONE, -1},
    {0, 3, 2, 5, 6, 17, 3, 1, 1, 2, ML_CONV_ACT_SIGMOID, -1}, /* stride 1 through the GEMM path */
    {0, 2, 3, 5, 6, 16, 3, 1, 1, 0, ML_CONV_ACT_SIGMOID, -1}, /* 16 channels of rows <= 16: direct */
    {0, 2, 5, 4, 17, 17, 3, 1, 1, 0, ML_CONV_ACT_SIGMOID, -1}, /* direct forward, GEMM backward */
    /* direct path with the wider channel block (more than 3 channels out of the kernel):
     * dx with 13 channels (two blocks and a padded one) over rows longer than one 64-float
     * register block; a forward with 7 output channels */
    {0, 2, 13, 4, 70, 3, 3, 1, 1, 0, ML_CONV_ACT_SIGMOID, -1},
    {0, 2, 2, 5, 9, 7, 3, 1, 1, 0, ML_CONV_ACT_NONE, -1},
    {0, 2, 3, 6, 20, 2, 5, 1, 2, 0, ML_CONV_ACT_NONE, -1}, /* kernel 5: tap blocks overrun it */
    /* rows of at most 32 and 16 floats (2 and 1 vectors per row, wider channel blocks): a
     * 7x7 forward with 5 channels (a padded block), dx with 19 channels (two blocks and a
     * padded one), dw on whole kernel rows; then dx with 21 channels of 12-float rows */
    {0, 2, 19, 6, 29, 5, 7, 1, 3, 0, ML_CONV_ACT_SIGMOID, -1},
    {0, 2, 21, 5, 12, 2, 3, 1, 1, 0, ML_CONV_ACT_NONE, -1},
    {0, 2, 3, 7, 9, 4, 4, 1, 1, 0, ML_CONV_ACT_NONE, -1}, /* kernel 4: dw's kx tiles of 3 overrun it */
    /* stride 2 through the padded stack plane: the window ends short of the input's last row
     * and column (no padding, 6 x 7); a plane too large for the stack (the row-by-row path) */
    {0, 2, 3, 6, 7, 4, 3, 2, 0, 0, ML_CONV_ACT_NONE, -1},
    {0, 1, 2, 73, 73, 2, 3, 2, 1, 0, ML_CONV_ACT_RELU, -1},
    /* the direct stride-2 path (direct 3, up to 16 input channels; the three cases above take
     * it too): rows of 23 (two vectors, the second ragged), one image of 17-wide rows, no
     * padding (15-wide rows, one vector), padding 2 on 36-wide rows (two row blocks) */
    {0, 2, 3, 37, 45, 7, 3, 2, 1, 0, ML_CONV_ACT_SIGMOID, -1},
    {0, 1, 1, 33, 33, 17, 3, 2, 1, 0, ML_CONV_ACT_RELU, -1},
    {0, 2, 4, 32, 32, 9, 3, 2, 0, 0, ML_CONV_ACT_NONE, -1},
    {0, 2, 3, 20, 70, 4, 3, 2, 2, 0, ML_CONV_ACT_RELU, -1},
    {1, 3, 6, 4, 3, 4, 4, 2, 1, 2, ML_CONV_ACT_RELU, 0},
    {1, 2, 3, 5, 4, 2, 3, 1, 1, 1, ML_CONV_ACT_NONE, -1},
    {1, 4, 2, 3, 3, 3, 5, 3, 1, 3, ML_CONV_ACT_SIGMOID, -1},
    {1, 2, 3, 3, 4, 2, 2, 2, 0, 0, ML_CONV_ACT_NONE, -1},
    /* sub-pixel convt2d: forced on small odd shapes with several chunks, and chosen by the
     * shape function at 32 x 32 */
    {1, 3, 6, 4, 3, 4, 4, 2, 1, 2, ML_CONV_ACT_RELU, 1},
    {1, 3, 5, 3, 5, 3, 4, 2, 1, 1, ML_CONV_ACT_SIGMOID, 1},
    {1, 2, 4, 2, 2, 5, 4, 2, 1, 0, ML_CONV_ACT_NONE, 1},
    {1, 2, 3, 32, 32, 2, 4, 2, 1, 1, ML_CONV_ACT_NONE, -1},
    /* its Winograd form: odd shapes whose window grid (H + 1 by W + 1) is not a multiple of
     * the 3 x 3 tiles, 1 x 1 and wide inputs, several chunks; and chosen by the shape
     * function at 16 x 16 */
    {1, 3, 6, 4, 3, 4, 4, 2, 1, 2, ML_CONV_ACT_RELU, 2},
    {1, 3, 5, 3, 5, 3, 4, 2, 1, 1, ML_CONV_ACT_SIGMOID, 2},
    {1, 2, 4, 2, 2, 5, 4, 2, 1, 0, ML_CONV_ACT_NONE, 2},
    {1, 2, 3, 1, 7, 2, 4, 2, 1, 1, ML_CONV_ACT_RELU, 2},
    {1, 3, 4, 8, 5, 3, 4, 2, 1, 2, ML_CONV_ACT_NONE, 2},
    {1, 2, 3, 16, 16, 2, 4, 2, 1, 1, ML_CONV_ACT_RELU, -1},
    /* rows of 16, 17 and 32 tiles (the transforms take 16 tiles per vector: a full block and
     * the last grid column alone; a block and one tile; two full blocks) */
    {1, 2, 3, 2, 45, 2, 4, 2, 1, 1, ML_CONV_ACT_SIGMOID, 2},
    {1, 2, 2, 4, 48, 3, 4, 2, 1, 0, ML_CONV_ACT_NONE, 2},
    {1, 1, 2, 2, 95, 2, 4, 2, 1, 0, ML_CONV_ACT_SIGMOID, 2},
    /* a chunk's images side by side (wg_geometry): chosen by the shape function at 8 x 8 with
     * its chunk (7 images, 21 tiles per grid row); chunks of 2 on 7-wide rows (a window
     * column between images that no tile of either needs), the last one of 1 image */
    {1, 7, 3, 8, 8, 2, 4, 2, 1, 0, ML_CONV_ACT_RELU, -1},
    {1, 5, 2, 4, 7, 3, 4, 2, 1, 2, ML_CONV_ACT_SIGMOID, 2},
};

static int make_shape(ml_conv_shape *s, const struct fwd_case *c) {
    int rc = c->transposed ? ml_convt2d_shape(s, c->B, c->C, c->H, c->W, c->O, c->k, c->stride,
                                              c->pad, c->act)
                           : ml_conv2d_shape(s, c->B, c->C, c->H, c->W, c->O, c->k, c->stride,
                                             c->pad, c->act);
    if (rc == ML_OK && c->chunk) s->chunk = c->chunk; /* a caller may lower the chunk */
    if (rc == ML_OK && c->sp >= 0) s->subpixel = c->sp;
    return rc;
}

START_TEST(test_forward_vs_direct) {
    const struct fwd_case *c = &fwd_cases[_i];
    ml_conv_shape s;
    ck_assert_int_eq(make_shape(&s, c), ML_OK);
    if (c->transposed && c->H == 32 && c->W == 32 && c->k == 4 && c->stride == 2 && c->pad == 1)
        ck_assert_int_eq(s.subpixel, 2); /* the shape function picks it for the SRNN's last block */
    if (c->transposed && (c->H == 16 || c->H == 8) && c->W == c->H && c->k == 4 && c->stride == 2 && c->pad == 1)
        ck_assert_int_eq(s.subpixel, 2);
    if (c->transposed && c->H == 8 && c->W == 8 && c->k == 4 && c->stride == 2 && c->pad == 1)
        ck_assert_int_eq(s.chunk, c->B); /* 8 images (72 tiles) per chunk, at most the batch */
    size_t nx = ml_conv_in_size(&s), ny = ml_conv_out_size(&s), nw = ml_conv_weight_size(&s);
    float *x = fl(nx), *w = fl(nw), *b = fl(s.O), *y = fl(ny);
    float *ws = fl(ml_conv_workspace_floats(&s));
    double *r = malloc(ny * sizeof *r);
    tu_fill(x, nx, 1, -1, 1);
    tu_fill(w, nw, 2, -1, 1);
    tu_fill(b, s.O, 3, -1, 1);
    if (c->transposed) {
        ml_convt2d_forward(&s, y, x, w, b, ws);
        convt_ref(&s, r, x, w, b);
    } else {
        ml_conv2d_forward(&s, y, x, w, b, ws);
        conv_ref(&s, r, x, w, b);
    }
    for (size_t j = 0; j < ny; j++) ck_assert_double_eq_tol(y[j], r[j], 1e-4);
    free(x), free(w), free(b), free(y), free(ws), free(r);
}
END_TEST

/* ---- finite-difference gradients: loss = sum(y * r) ---- */

struct gctx {
    ml_conv_shape s;
    float *x, *w, *b, *y, *r, *ws;
};

static double conv_loss(void *p) {
    struct gctx *g = p;
    if (g->s.transposed)
        ml_convt2d_forward(&g->s, g->y, g->x, g->w, g->b, g->ws);
    else
        ml_conv2d_forward(&g->s, g->y, g->x, g->w, g->b, g->ws);
    double l = 0;
    for (size_t j = 0; j < ml_conv_out_size(&g->s); j++) l += (double)g->y[j] * g->r[j];
    return l;
}

START_TEST(test_conv_gradcheck) {
    const struct fwd_case *c = &fwd_cases[_i];
    struct gctx g;
    ck_assert_int_eq(make_shape(&g.s, c), ML_OK);
    size_t nx = ml_conv_in_size(&g.s), ny = ml_conv_out_size(&g.s), nw = ml_conv_weight_size(&g.s);
    g.x = fl(nx), g.w = fl(nw), g.b = fl(g.s.O), g.y = fl(ny), g.r = fl(ny);
    g.ws = fl(ml_conv_workspace_floats(&g.s));
    tu_fill(g.x, nx, 11, -1, 1);
    tu_fill(g.w, nw, 12, -0.5f, 0.5f);
    tu_fill(g.b, g.s.O, 13, -0.5f, 0.5f);
    tu_fill(g.r, ny, 14, -1, 1);
    float *dx = fl(nx), *dw = fl(nw), *db = fl(g.s.O);
    /* start from non-zero gradients to check that backward accumulates */
    for (size_t j = 0; j < nx; j++) dx[j] = 1;
    for (size_t j = 0; j < nw; j++) dw[j] = 1;
    for (int j = 0; j < g.s.O; j++) db[j] = 1;
    conv_loss(&g); /* g.y = forward output */
    if (g.s.transposed)
        ml_convt2d_backward(&g.s, dx, dw, db, g.r, g.y, g.x, g.w, g.ws);
    else
        ml_conv2d_backward(&g.s, dx, dw, db, g.r, g.y, g.x, g.w, g.ws);
    for (size_t j = 0; j < nx; j++) dx[j] -= 1;
    for (size_t j = 0; j < nw; j++) dw[j] -= 1;
    for (int j = 0; j < g.s.O; j++) db[j] -= 1;
    /* the loss is linear in each argument without an activation, so a wide step costs
     * nothing there and keeps float rounding of y out of the difference quotient; ReLU
     * needs a narrow one so that few outputs cross its kink */
    double eps = c->act == ML_CONV_ACT_NONE ? 5e-2 : c->act == ML_CONV_ACT_RELU ? 1e-3 : 1e-2;
    double ex = tu_gradcheck(conv_loss, &g, g.x, dx, nx, 60, eps);
    double ew = tu_gradcheck(conv_loss, &g, g.w, dw, nw, 60, eps);
    double eb = tu_gradcheck(conv_loss, &g, g.b, db, g.s.O, 60, eps);
    ck_assert_msg(ex <= TU_GC_TOL && ew <= TU_GC_TOL && eb <= TU_GC_TOL, "case %d: dx %g dw %g db %g", _i, ex, ew,
                  eb);
    /* NULL gradients are skipped and leave the others unchanged */
    float *dw2 = fl(nw);
    conv_loss(&g);
    if (g.s.transposed)
        ml_convt2d_backward(&g.s, NULL, dw2, NULL, g.r, g.y, g.x, g.w, g.ws);
    else
        ml_conv2d_backward(&g.s, NULL, dw2, NULL, g.r, g.y, g.x, g.w, g.ws);
    for (size_t j = 0; j < nw; j++) ck_assert_float_eq_tol(dw2[j], dw[j], 1e-4);
    free(dw2);
    free(g.x), free(g.w), free(g.b), free(g.y), free(g.r), free(g.ws);
    free(dx), free(dw), free(db);
}
END_TEST

/* conv2d backward against reference loops on every element of dx and dw (the sampled
 * finite differences above can miss one bad channel block): the stride-1 cases of
 * fwd_cases, whatever path the shape function picks, with the act-free gradient r */
START_TEST(test_conv_backward_vs_ref) {
    const struct fwd_case *c = &fwd_cases[_i];
    if (c->transposed) return;
    ml_conv_shape s;
    ck_assert_int_eq(make_shape(&s, c), ML_OK);
    s.act = ML_CONV_ACT_NONE;
    const size_t nx = ml_conv_in_size(&s), ny = ml_conv_out_size(&s), nw = ml_conv_weight_size(&s);
    float *x = fl(nx), *w = fl(nw), *g = fl(ny), *dx = fl(nx), *dw = fl(nw);
    float *ws = fl(ml_conv_workspace_floats(&s));
    double *rx = calloc(nx, sizeof *rx), *rw = calloc(nw, sizeof *rw);
    tu_fill(x, nx, 81, -1, 1);
    tu_fill(w, nw, 82, -1, 1);
    tu_fill(g, ny, 83, -1, 1);
    for (size_t j = 0; j < nx; j++) dx[j] = 0.5f; /* backward accumulates */
    for (size_t j = 0; j < nw; j++) dw[j] = 0.5f;
    ml_conv2d_backward(&s, dx, dw, NULL, g, NULL, x, w, ws);
    const int k = s.k;
    for (int i = 0; i < s.B; i++)
        for (int o = 0; o < s.O; o++)
            for (int oy = 0; oy < s.Ho; oy++)
                for (int ox = 0; ox < s.Wo; ox++) {
                    const double gv = g[((i * s.O + o) * s.Ho + oy) * s.Wo + ox];
                    for (int ch = 0; ch < s.C; ch++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                int iy = oy * s.stride - s.pad + ky, ix = ox * s.stride - s.pad + kx;
                                if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) continue;
                                size_t xi = ((size_t)(i * s.C + ch) * s.H + iy) * s.W + ix;
                                size_t wi = ((size_t)(o * s.C + ch) * k + ky) * k + kx;
                                rx[xi] += gv * w[wi];
                                rw[wi] += gv * x[xi];
                            }
                }
    for (size_t j = 0; j < nx; j++) ck_assert_double_eq_tol(dx[j], 0.5 + rx[j], 1e-3);
    for (size_t j = 0; j < nw; j++) ck_assert_double_eq_tol(dw[j], 0.5 + rw[j], 1e-2);
    free(x), free(w), free(g), free(dx), free(dw), free(ws), free(rx), free(rw);
}
END_TEST

/* ---- batch norm ---- */

START_TEST(test_bn_running_stats) {
    /* B 2, C 1, HW 2, x = 1 2 | 3 4: mean 2.5, biased var 1.25, unbiased 5/3.
     * running from (0, 1): mean 0.1 * 2.5 = 0.25, var 0.9 + 0.1 * 5/3 = 1.0666667. */
    float x[4] = {1, 2, 3, 4}, y[4], mean, rstd, rm = 0, rv = 1, g = 2, b = 0.5f;
    ml_batchnorm2d_forward_train(y, &mean, &rstd, &rm, &rv, x, &g, &b, 2, 1, 2, 0.1f, 1e-5f, 0);
    ck_assert_float_eq_tol(mean, 2.5f, 1e-6);
    ck_assert_float_eq_tol(rstd, 1 / sqrtf(1.25f + 1e-5f), 1e-6);
    ck_assert_float_eq_tol(rm, 0.25f, 1e-6);
    ck_assert_float_eq_tol(rv, 0.9f + 0.1f * 5.0f / 3.0f, 1e-6);
    for (int j = 0; j < 4; j++)
        ck_assert_float_eq_tol(y[j], 2 * (x[j] - 2.5f) / sqrtf(1.25f + 1e-5f) + 0.5f, 1e-5);
    /* eval mode uses the running statistics, not the batch's */
    ml_batchnorm2d_forward_eval(y, x, &g, &b, &rm, &rv, 2, 1, 2, 1e-5f, 0);
    for (int j = 0; j < 4; j++)
        ck_assert_float_eq_tol(y[j], 2 * (x[j] - rm) / sqrtf(rv + 1e-5f) + 0.5f, 1e-5);
    /* fused relu */
    ml_batchnorm2d_forward_eval(y, x, &g, &b, &rm, &rv, 2, 1, 2, 1e-5f, 1);
    for (int j = 0; j < 4; j++)
        ck_assert_float_eq_tol(y[j], fmaxf(0, 2 * (x[j] - rm) / sqrtf(rv + 1e-5f) + 0.5f), 1e-5);
    /* train mode output has zero mean and (biased) unit variance before the affine map */
    float big[3 * 2 * 5], yb[3 * 2 * 5], m2[2], r2[2], g2[2] = {1, 1}, b2[2] = {0, 0};
    tu_fill(big, 30, 5, -3, 7);
    ml_batchnorm2d_forward_train(yb, m2, r2, NULL, NULL, big, g2, b2, 3, 2, 5, 0.1f, 1e-5f, 0);
    for (int c = 0; c < 2; c++) {
        double s = 0, ss = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 5; j++) {
                double v = yb[(i * 2 + c) * 5 + j];
                s += v;
                ss += v * v;
            }
        ck_assert_double_eq_tol(s / 15, 0, 1e-5);
        ck_assert_double_eq_tol(ss / 15, 1, 1e-3);
    }
}
END_TEST

struct bnctx {
    int B, C, HW, relu;
    float *x, *g, *b, *y, *r, *mean, *rstd;
};

static double bn_loss(void *p) {
    struct bnctx *c = p;
    ml_batchnorm2d_forward_train(c->y, c->mean, c->rstd, NULL, NULL, c->x, c->g, c->b, c->B, c->C,
                                 c->HW, 0.1f, 1e-5f, c->relu);
    double l = 0;
    for (int j = 0; j < c->B * c->C * c->HW; j++) l += (double)c->y[j] * c->r[j];
    return l;
}

START_TEST(test_bn_gradcheck) {
    struct bnctx c = {.B = 3, .C = 4, .HW = 6, .relu = _i};
    size_t n = (size_t)c.B * c.C * c.HW;
    c.x = fl(n), c.g = fl(c.C), c.b = fl(c.C), c.y = fl(n), c.r = fl(n);
    c.mean = fl(c.C), c.rstd = fl(c.C);
    tu_fill(c.x, n, 21, -2, 2);
    tu_fill(c.g, c.C, 22, 0.5f, 1.5f);
    tu_fill(c.b, c.C, 23, -0.5f, 0.5f);
    tu_fill(c.r, n, 24, -1, 1);
    float *dx = fl(n), *dg = fl(c.C), *db = fl(c.C);
    bn_loss(&c);
    ml_batchnorm2d_backward(dx, dg, db, c.r, c.y, c.x, c.mean, c.rstd, c.g, c.B, c.C, c.HW,
                            c.relu);
    double ex = tu_gradcheck(bn_loss, &c, c.x, dx, n, 72, 1e-3);
    double eg = tu_gradcheck(bn_loss, &c, c.g, dg, c.C, 4, 1e-3);
    double eb = tu_gradcheck(bn_loss, &c, c.b, db, c.C, 4, 1e-3);
    ck_assert_msg(ex <= TU_GC_TOL && eg <= TU_GC_TOL && eb <= TU_GC_TOL, "relu %d: dx %g dgamma %g dbeta %g",
                  c.relu, ex, eg, eb);
    free(c.x), free(c.g), free(c.b), free(c.y), free(c.r), free(c.mean), free(c.rstd);
    free(dx), free(dg), free(db);
}
END_TEST

/* ---- batch norm backward with dx written (ml_batchnorm2d_backward_part_set): the same bits
 * as zeroing dx and adding (ml_batchnorm2d_backward_part), whatever dx held before, on 1 and
 * 2 threads, with and without relu; dgamma and dbeta still accumulate; with relu also
 * ml_batchnorm2d_relu_backward_part_set (the mask from x and beta, no y) ---- */

START_TEST(test_bn_backward_set) {
    const int B = 3, C = 5, HW = 37, relu = _i, saved = omp_get_max_threads();
    const size_t n = (size_t)B * C * HW;
    float *x = fl(n), *y = fl(n), *dy = fl(n), *g = fl(C), *bt = fl(C), *mean = fl(C), *rstd = fl(C);
    tu_fill(x, n, 61, -2, 2);
    tu_fill(dy, n, 62, -1, 1);
    tu_fill(g, C, 63, 0.5f, 1.5f);
    tu_fill(bt, C, 64, -0.5f, 0.5f);
    ml_batchnorm2d_forward_train(y, mean, rstd, NULL, NULL, x, g, bt, B, C, HW, 0.1f, 1e-5f, relu);
    float *dx[5], *dg[5], *db[5];
    const int runs = relu ? 5 : 3;
    for (int r = 0; r < runs; r++) {
        dx[r] = fl(n), dg[r] = fl(C), db[r] = fl(C);
        tu_fill(dg[r], C, 65, -1, 1); /* accumulated into: the same start */
        tu_fill(db[r], C, 66, -1, 1);
        if (r == 0) {
            memset(dx[r], 0, n * sizeof(float));
            ck_assert_int_eq(ml_batchnorm2d_backward_part(NULL, dx[r], dg[r], db[r], dy, y, x, mean, rstd, g, B,
                                                          C, HW, relu),
                             ML_OK);
        } else if (r >= 3) {
            tu_fill(dx[r], n, 67 + r, -5, 5);
            omp_set_num_threads(r - 2);
            ck_assert_int_eq(ml_batchnorm2d_relu_backward_part_set(NULL, dx[r], dg[r], db[r], dy, x, mean, rstd, g,
                                                                   bt, B, C, HW),
                             ML_OK);
            omp_set_num_threads(saved);
        } else {
            tu_fill(dx[r], n, 67 + r, -5, 5); /* garbage, overwritten */
            omp_set_num_threads(r);
            ck_assert_int_eq(ml_batchnorm2d_backward_part_set(NULL, dx[r], dg[r], db[r], dy, y, x, mean, rstd, g,
                                                              B, C, HW, relu),
                             ML_OK);
            omp_set_num_threads(saved);
        }
    }
    for (int r = 1; r < runs; r++) {
        ck_assert(memcmp(dx[0], dx[r], n * sizeof(float)) == 0);
        ck_assert(memcmp(dg[0], dg[r], C * sizeof(float)) == 0);
        ck_assert(memcmp(db[0], db[r], C * sizeof(float)) == 0);
    }
    for (int r = 0; r < runs; r++) free(dx[r]), free(dg[r]), free(db[r]);
    free(x), free(y), free(dy), free(g), free(bt), free(mean), free(rstd);
}
END_TEST

/* ---- concat gradient ---- */

struct catctx { float *a, *b, *y, *r; };
static double cat_loss(void *p) {
    struct catctx *c = p;
    ml_concat_channels_forward(c->y, c->a, c->b, 2, 3, 2, 4);
    double l = 0;
    for (int j = 0; j < 2 * 5 * 4; j++) l += (double)c->y[j] * c->r[j];
    return l;
}

START_TEST(test_concat_gradcheck) {
    struct catctx c = {fl(24), fl(16), fl(40), fl(40)};
    tu_fill(c.a, 24, 31, -1, 1);
    tu_fill(c.b, 16, 32, -1, 1);
    tu_fill(c.r, 40, 33, -1, 1);
    float *da = fl(24), *db = fl(16);
    ml_concat_channels_backward(da, db, c.r, 2, 3, 2, 4);
    ck_assert(tu_gradcheck(cat_loss, &c, c.a, da, 24, 24, 1e-2) <= TU_GC_TOL);
    ck_assert(tu_gradcheck(cat_loss, &c, c.b, db, 16, 16, 1e-2) <= TU_GC_TOL);
    free(c.a), free(c.b), free(c.y), free(c.r), free(da), free(db);
}
END_TEST

/* ---- the two-input transposed conv (U-Net [x, skip] read in place) and write_dx ---- */

/* _i: 0 general path, 1 sub-pixel; both against concat + the one-input layer (the same
 * arithmetic: bitwise equal), with dxa and dxb overwritten, determinism, and finite
 * differences through xa and xb */
struct cctx { ml_conv_shape s; int Ca; float *xa, *xb, *w, *b, *y, *r, *ws; };
static double convt_cat_loss(void *p) {
    struct cctx *g = p;
    ml_convt2d_forward_cat(&g->s, g->Ca, g->y, g->xa, g->xb, g->w, g->b, g->ws);
    double l = 0;
    for (size_t j = 0; j < ml_conv_out_size(&g->s); j++) l += (double)g->y[j] * g->r[j];
    return l;
}

START_TEST(test_convt_cat) {
    struct cctx g;
    const int B = 3, Ca = 4, Cb = 3, H = 5, W = 6, HW = H * W;
    ck_assert_int_eq(ml_convt2d_shape(&g.s, B, Ca + Cb, H, W, 5, 4, 2, 1, ML_CONV_ACT_RELU), ML_OK);
    g.s.subpixel = _i;
    g.s.chunk = 2;
    g.Ca = Ca;
    const size_t na = (size_t)B * Ca * HW, nbb = (size_t)B * Cb * HW, nx = na + nbb;
    const size_t ny = ml_conv_out_size(&g.s), nw = ml_conv_weight_size(&g.s);
    g.xa = fl(na), g.xb = fl(nbb), g.w = fl(nw), g.b = fl(5), g.y = fl(ny), g.r = fl(ny);
    g.ws = fl(ml_conv_workspace_floats(&g.s));
    tu_fill(g.xa, na, 61, -1, 1);
    tu_fill(g.xb, nbb, 62, -1, 1);
    tu_fill(g.w, nw, 63, -0.5f, 0.5f);
    tu_fill(g.b, 5, 64, -0.5f, 0.5f);
    tu_fill(g.r, ny, 65, -1, 1);
    /* reference: the concatenated input through the one-input layer */
    float *x = fl(nx), *y1 = fl(ny), *dx = fl(nx), *dw1 = fl(nw), *db1 = fl(5);
    ml_concat_channels_forward(x, g.xa, g.xb, B, Ca, Cb, HW);
    memset(dx, 0, nx * sizeof(float));
    memset(dw1, 0, nw * sizeof(float));
    memset(db1, 0, 5 * sizeof(float));
    ml_convt2d_forward(&g.s, y1, x, g.w, g.b, g.ws);
    ml_convt2d_backward(&g.s, dx, dw1, db1, g.r, y1, x, g.w, g.ws);
    float *dxa[2], *dxb[2], *dw[2], *db[2];
    for (int rep = 0; rep < 2; rep++) {
        dxa[rep] = fl(na), dxb[rep] = fl(nbb), dw[rep] = fl(nw), db[rep] = fl(5);
        for (size_t j = 0; j < na; j++) dxa[rep][j] = 7; /* overwritten, not added to */
        for (size_t j = 0; j < nbb; j++) dxb[rep][j] = 7;
        memset(dw[rep], 0, nw * sizeof(float));
        memset(db[rep], 0, 5 * sizeof(float));
        convt_cat_loss(&g);
        ck_assert(memcmp(g.y, y1, ny * sizeof(float)) == 0);
        ml_convt2d_backward_cat(&g.s, Ca, dxa[rep], dxb[rep], dw[rep], db[rep], g.r, g.y, g.xa,
                                g.xb, g.w, g.ws);
    }
    for (int i = 0; i < B; i++)
        for (int j = 0; j < (Ca + Cb) * HW; j++) {
            const float ref = dx[(size_t)i * (Ca + Cb) * HW + j];
            const float got = j < Ca * HW ? dxa[0][(size_t)i * Ca * HW + j]
                                          : dxb[0][(size_t)i * Cb * HW + j - Ca * HW];
            ck_assert_float_eq(got, ref);
        }
    ck_assert(memcmp(dw[0], dw1, nw * sizeof(float)) == 0);
    ck_assert(memcmp(db[0], db1, 5 * sizeof(float)) == 0);
    /* deterministic */
    ck_assert(memcmp(dxa[0], dxa[1], na * sizeof(float)) == 0);
    ck_assert(memcmp(dxb[0], dxb[1], nbb * sizeof(float)) == 0);
    ck_assert(memcmp(dw[0], dw[1], nw * sizeof(float)) == 0);
    ck_assert(memcmp(db[0], db[1], 5 * sizeof(float)) == 0);
    /* finite differences through both inputs */
    double ea = tu_gradcheck(convt_cat_loss, &g, g.xa, dxa[0], na, 40, 1e-3);
    double eb = tu_gradcheck(convt_cat_loss, &g, g.xb, dxb[0], nbb, 40, 1e-3);
    ck_assert_msg(ea <= TU_GC_TOL && eb <= TU_GC_TOL, "path %d: dxa %g dxb %g", _i, ea, eb);
    for (int rep = 0; rep < 2; rep++) free(dxa[rep]), free(dxb[rep]), free(dw[rep]), free(db[rep]);
    free(x), free(y1), free(dx), free(dw1), free(db1);
    free(g.xa), free(g.xb), free(g.w), free(g.b), free(g.y), free(g.r), free(g.ws);
}
END_TEST

/* the two-input conv2d (the U-Net decoder's [up2(deeper), skip] read in place). _i: 0 the
 * stride-1 flipped-kernel dx (O <= C), 1 stride 2 (w^T dy + col2im), 2 a 1x1 kernel, 3 the
 * direct forward (17 channels of 17-wide rows) with the col2im dx (O > C); against
 * concat + the one-input GEMM path (the same arithmetic: bitwise equal), dxa and dxb
 * accumulated into and written (write_dx), finite differences through xa and xb */
static double conv_cat_loss(void *p) {
    struct cctx *g = p;
    ml_conv2d_forward_cat(&g->s, g->Ca, g->y, g->xa, g->xb, g->w, g->b, g->ws);
    double l = 0;
    for (size_t j = 0; j < ml_conv_out_size(&g->s); j++) l += (double)g->y[j] * g->r[j];
    return l;
}

START_TEST(test_conv_cat) {
    struct cctx g;
    const int B = 3, Ca = 4, Cb = 3, H = 6, W = _i == 3 ? 17 : 5, HW = H * W, O = _i == 3 ? 17 : 5;
    const int k = _i == 2 ? 1 : 3, stride = _i == 1 ? 2 : 1, pad = k / 2;
    ck_assert_int_eq(ml_conv2d_shape(&g.s, B, Ca + Cb, H, W, O, k, stride, pad, ML_CONV_ACT_RELU), ML_OK);
    if (_i == 3)
        ck_assert_int_eq(g.s.direct, 2); /* the direct forward, the GEMM backward */
    else
        g.s.direct = 0;
    g.s.chunk = 2;
    g.Ca = Ca;
    const size_t na = (size_t)B * Ca * HW, nbb = (size_t)B * Cb * HW, nx = na + nbb;
    const size_t ny = ml_conv_out_size(&g.s), nw = ml_conv_weight_size(&g.s);
    g.xa = fl(na), g.xb = fl(nbb), g.w = fl(nw), g.b = fl(O), g.y = fl(ny), g.r = fl(ny);
    g.ws = fl(ml_conv_workspace_floats(&g.s));
    tu_fill(g.xa, na, 81, -1, 1);
    tu_fill(g.xb, nbb, 82, -1, 1);
    tu_fill(g.w, nw, 83, -0.5f, 0.5f);
    tu_fill(g.b, O, 84, -0.5f, 0.5f);
    tu_fill(g.r, ny, 85, -1, 1);
    float *x = fl(nx), *y1 = fl(ny), *dx = fl(nx), *dw1 = fl(nw), *db1 = fl(O);
    ml_concat_channels_forward(x, g.xa, g.xb, B, Ca, Cb, HW);
    memset(dx, 0, nx * sizeof(float));
    memset(dw1, 0, nw * sizeof(float));
    memset(db1, 0, O * sizeof(float));
    ml_conv2d_forward(&g.s, y1, x, g.w, g.b, g.ws);
    ml_conv2d_backward(&g.s, dx, dw1, db1, g.r, y1, x, g.w, g.ws);
    float *dxa[2], *dxb[2], *dw[2], *db[2];
    for (int rep = 0; rep < 2; rep++) { /* rep 0 accumulates into zeros, rep 1 writes */
        dxa[rep] = fl(na), dxb[rep] = fl(nbb), dw[rep] = fl(nw), db[rep] = fl(O);
        for (size_t j = 0; j < na; j++) dxa[rep][j] = rep ? 7 : 0;
        for (size_t j = 0; j < nbb; j++) dxb[rep][j] = rep ? 7 : 0;
        memset(dw[rep], 0, nw * sizeof(float));
        memset(db[rep], 0, O * sizeof(float));
        g.s.write_dx = rep;
        conv_cat_loss(&g);
        ck_assert(memcmp(g.y, y1, ny * sizeof(float)) == 0);
        ml_conv2d_backward_cat(&g.s, Ca, dxa[rep], dxb[rep], dw[rep], db[rep], g.r, g.y, g.xa,
                               g.xb, g.w, g.ws);
    }
    g.s.write_dx = 0;
    for (int i = 0; i < B; i++)
        for (int j = 0; j < (Ca + Cb) * HW; j++) {
            const float ref = dx[(size_t)i * (Ca + Cb) * HW + j];
            const float got = j < Ca * HW ? dxa[0][(size_t)i * Ca * HW + j]
                                          : dxb[0][(size_t)i * Cb * HW + j - Ca * HW];
            ck_assert_float_eq(got, ref);
        }
    ck_assert(memcmp(dxa[0], dxa[1], na * sizeof(float)) == 0);
    ck_assert(memcmp(dxb[0], dxb[1], nbb * sizeof(float)) == 0);
    ck_assert(memcmp(dw[0], dw1, nw * sizeof(float)) == 0);
    ck_assert(memcmp(db[0], db1, O * sizeof(float)) == 0);
    ck_assert(memcmp(dw[0], dw[1], nw * sizeof(float)) == 0);
    double ea = tu_gradcheck(conv_cat_loss, &g, g.xa, dxa[0], na, 40, 1e-3);
    double eb = tu_gradcheck(conv_cat_loss, &g, g.xb, dxb[0], nbb, 40, 1e-3);
    ck_assert_msg(ea <= TU_GC_TOL && eb <= TU_GC_TOL, "case %d: dxa %g dxb %g", _i, ea, eb);
    for (int rep = 0; rep < 2; rep++) free(dxa[rep]), free(dxb[rep]), free(dw[rep]), free(db[rep]);
    free(x), free(y1), free(dx), free(dw1), free(db1);
    free(g.xa), free(g.xb), free(g.w), free(g.b), free(g.y), free(g.r), free(g.ws);
}
END_TEST

/* write_dx: conv2d backward writes dx (prefilled with garbage) exactly as accumulating into
 * zeros does. _i: 0 the direct stride-1 path, 1 the GEMM path (stride 2), 2 the GEMM path
 * at stride 1 (the flipped-kernel dx), 3 the direct stride-2 path */
START_TEST(test_conv_write_dx) {
    ml_conv_shape s;
    if (_i == 0) {
        ck_assert_int_eq(ml_conv2d_shape(&s, 3, 5, 7, 9, 3, 3, 1, 1, ML_CONV_ACT_SIGMOID), ML_OK);
        ck_assert_int_eq(s.direct, 1);
    } else if (_i == 1) {
        ck_assert_int_eq(ml_conv2d_shape(&s, 3, 5, 8, 9, 6, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
        ck_assert_int_eq(s.direct, 3); /* so few channels take the direct stride-2 path: */
        s.direct = 0;                  /* the GEMM path's col2im dx */
        s.chunk = 2;
    } else if (_i == 3) { /* the direct stride-2 path (direct 3), whose dx is the GEMM path's */
        ck_assert_int_eq(ml_conv2d_shape(&s, 3, 5, 8, 9, 6, 3, 2, 1, ML_CONV_ACT_RELU), ML_OK);
        ck_assert_int_eq(s.direct, 3);
        s.chunk = 2;
    } else { /* stride 1 on the GEMM path: dx as a convolution with the flipped kernel */
        ck_assert_int_eq(ml_conv2d_shape(&s, 3, 6, 7, 9, 4, 3, 1, 1, ML_CONV_ACT_RELU), ML_OK);
        s.direct = 0;
        s.chunk = 2;
    }
    const size_t nx = ml_conv_in_size(&s), ny = ml_conv_out_size(&s), nw = ml_conv_weight_size(&s);
    float *x = fl(nx), *w = fl(nw), *b = fl(s.O), *y = fl(ny), *dy = fl(ny);
    float *ws = fl(ml_conv_workspace_floats(&s)), *dx0 = fl(nx), *dx1 = fl(nx), *dx2 = fl(nx);
    tu_fill(x, nx, 71, -1, 1);
    tu_fill(w, nw, 72, -0.5f, 0.5f);
    tu_fill(b, s.O, 73, -0.5f, 0.5f);
    tu_fill(dy, ny, 74, -1, 1);
    ml_conv2d_forward(&s, y, x, w, b, ws);
    memset(dx0, 0, nx * sizeof(float));
    ml_conv2d_backward(&s, dx0, NULL, NULL, dy, y, x, w, ws);
    s.write_dx = 1;
    for (size_t j = 0; j < nx; j++) dx1[j] = dx2[j] = 7;
    ml_conv2d_backward(&s, dx1, NULL, NULL, dy, y, x, w, ws);
    ml_conv2d_backward(&s, dx2, NULL, NULL, dy, y, x, w, ws);
    for (size_t j = 0; j < nx; j++) ck_assert_float_eq(dx1[j], dx0[j]);
    ck_assert(memcmp(dx1, dx2, nx * sizeof(float)) == 0);
    free(x), free(w), free(b), free(y), free(dy), free(ws), free(dx0), free(dx1), free(dx2);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_bad_shapes) {
    ml_conv_shape s;
    ck_assert_int_eq(ml_conv2d_shape(&s, 1, 0, 8, 8, 4, 3, 1, 1, ML_CONV_ACT_NONE), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "conv2d"));
    ck_assert_int_eq(ml_conv2d_shape(&s, 1, 3, 2, 2, 4, 7, 1, 1, ML_CONV_ACT_NONE), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "smaller than"));
    ck_assert_int_eq(ml_convt2d_shape(&s, 1, 3, 8, 8, 4, 4, 0, 1, ML_CONV_ACT_NONE), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "stride"));
    ck_assert_int_eq(ml_convt2d_shape(&s, 1, 3, 8, 8, 4, 4, 2, 4, ML_CONV_ACT_NONE), ML_ERR);
    ck_assert_ptr_nonnull(strstr(ml_error(), "padding"));
}
END_TEST

/* ---- determinism on an SRNN-sized layer with several chunks ---- */

static void run_layer(const ml_conv_shape *s, float *y, float *dx, float *dw, float *db,
                      const float *x, const float *w, const float *b, const float *dy, float *ws) {
    memset(dx, 0, ml_conv_in_size(s) * sizeof(float));
    memset(dw, 0, ml_conv_weight_size(s) * sizeof(float));
    memset(db, 0, (size_t)s->O * sizeof(float));
    if (s->transposed) {
        ml_convt2d_forward(s, y, x, w, b, ws);
        ml_convt2d_backward(s, dx, dw, db, dy, y, x, w, ws);
    } else {
        ml_conv2d_forward(s, y, x, w, b, ws);
        ml_conv2d_backward(s, dx, dw, db, dy, y, x, w, ws);
    }
}

START_TEST(test_deterministic) {
    ml_conv_shape s;
    if (_i == 0)
        ck_assert_int_eq(ml_convt2d_shape(&s, 8, 64, 16, 16, 32, 4, 2, 1, ML_CONV_ACT_RELU), ML_OK);
    else if (_i == 2 || _i == 3) { /* the Winograd sub-pixel form, then the plain one */
        ck_assert_int_eq(ml_convt2d_shape(&s, 8, 32, 32, 32, 16, 4, 2, 1, ML_CONV_ACT_RELU), ML_OK);
        ck_assert_int_eq(s.subpixel, 2);
        if (_i == 3) s.subpixel = 1;
    } else
        ck_assert_int_eq(ml_conv2d_shape(&s, 8, 32, 32, 32, 64, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    s.chunk = 3;
    size_t nx = ml_conv_in_size(&s), ny = ml_conv_out_size(&s), nw = ml_conv_weight_size(&s);
    float *x = fl(nx), *w = fl(nw), *b = fl(s.O), *dy = fl(ny), *ws = fl(ml_conv_workspace_floats(&s));
    float *y[2], *dx[2], *dw[2], *db[2];
    tu_fill(x, nx, 41, -1, 1);
    tu_fill(w, nw, 42, -0.1f, 0.1f);
    tu_fill(b, s.O, 43, -0.1f, 0.1f);
    tu_fill(dy, ny, 44, -1, 1);
    for (int r = 0; r < 2; r++) {
        y[r] = fl(ny), dx[r] = fl(nx), dw[r] = fl(nw), db[r] = fl(s.O);
        run_layer(&s, y[r], dx[r], dw[r], db[r], x, w, b, dy, ws);
    }
    ck_assert(memcmp(y[0], y[1], ny * sizeof(float)) == 0);
    ck_assert(memcmp(dx[0], dx[1], nx * sizeof(float)) == 0);
    ck_assert(memcmp(dw[0], dw[1], nw * sizeof(float)) == 0);
    ck_assert(memcmp(db[0], db[1], s.O * sizeof(float)) == 0);
    for (int r = 0; r < 2; r++) free(y[r]), free(dx[r]), free(dw[r]), free(db[r]);
    free(x), free(w), free(b), free(dy), free(ws);
}
END_TEST

/* ---- the direct stride-1 kernel split over row blocks: images that do not share out
 * evenly among the threads (3 over 2, 1 over 2 or 3, 5 over 3) are split into row blocks;
 * y, dx, dw and db are the same bits as on one thread, and y matches the reference ---- */

START_TEST(test_direct_thread_split) {
    static const struct {
        int B, C, H, W, O, k, pad, nt;
    } cs[] = {
        {3, 4, 9, 20, 5, 3, 1, 2},   /* direct forward and backward, 3 images over 2 threads */
        {1, 3, 7, 12, 2, 5, 2, 2},   /* one image, 2 row blocks */
        {1, 19, 8, 33, 2, 3, 1, 3},  /* one image, 3 row blocks; dx of 19 channels */
        {5, 5, 17, 17, 17, 3, 1, 3}, /* 5 images over 3 threads; the direct forward alone (direct 2) */
        {3, 2, 1, 8, 3, 1, 0, 2},    /* one output row: no split */
    };
    const int c = _i, saved = omp_get_max_threads();
    ml_conv_shape s;
    ck_assert_int_eq(ml_conv2d_shape(&s, cs[c].B, cs[c].C, cs[c].H, cs[c].W, cs[c].O, cs[c].k, 1, cs[c].pad,
                                     ML_CONV_ACT_RELU),
                     ML_OK);
    ck_assert_int_ne(s.direct, 0);
    const size_t nx = ml_conv_in_size(&s), ny = ml_conv_out_size(&s), nw = ml_conv_weight_size(&s);
    float *x = fl(nx), *w = fl(nw), *b = fl(s.O), *dy = fl(ny), *ws = fl(ml_conv_workspace_floats(&s));
    float *y[2], *dx[2], *dw[2], *db[2];
    double *r = malloc(ny * sizeof *r);
    tu_fill(x, nx, 91, -1, 1);
    tu_fill(w, nw, 92, -0.5f, 0.5f);
    tu_fill(b, s.O, 93, -0.1f, 0.1f);
    tu_fill(dy, ny, 94, -1, 1);
    for (int t = 0; t < 2; t++) {
        y[t] = fl(ny), dx[t] = fl(nx), dw[t] = fl(nw), db[t] = fl(s.O);
        omp_set_num_threads(t ? cs[c].nt : 1);
        run_layer(&s, y[t], dx[t], dw[t], db[t], x, w, b, dy, ws);
    }
    omp_set_num_threads(saved);
    ck_assert(memcmp(y[0], y[1], ny * sizeof(float)) == 0);
    if (s.direct == 1) { /* direct 2's backward is GEMMs, whose sums OpenBLAS splits by threads */
        ck_assert(memcmp(dx[0], dx[1], nx * sizeof(float)) == 0);
        ck_assert(memcmp(dw[0], dw[1], nw * sizeof(float)) == 0);
        ck_assert(memcmp(db[0], db[1], s.O * sizeof(float)) == 0);
    }
    conv_ref(&s, r, x, w, b);
    for (size_t j = 0; j < ny; j++) ck_assert_double_eq_tol(y[1][j], r[j], 1e-4);
    for (int t = 0; t < 2; t++) free(y[t]), free(dx[t]), free(dw[t]), free(db[t]);
    free(x), free(w), free(b), free(dy), free(ws), free(r);
}
END_TEST

/* ---- the direct stride-2 paths (direct 3: 3x3, stride 2, up to 16 input channels, the
 * encoders' first conv; direct 4: its forward alone, up to 32, the second conv) against
 * reference loops: y, dw, db (and dx, which they leave to the GEMM path), on odd shapes; y,
 * dw and db the same bits on 1 and 2 threads (direct 4: y; its dw and db are OpenBLAS's) and
 * run to run (direct 3's dw and db are summed per image, then over the images in order); and a
 * planted error (one input pixel changed at the ragged end of the last row) that the
 * comparison must catch ---- */

struct s2_case { int B, C, H, W, O, pad; ml_conv_act act; };
static const struct s2_case s2_cases[] = {
    {3, 3, 64, 64, 32, 1, ML_CONV_ACT_NONE},    /* the SRNN's enc.conv1, 3 images */
    {2, 3, 9, 7, 5, 1, ML_CONV_ACT_RELU},       /* odd H and W */
    {2, 2, 37, 45, 7, 1, ML_CONV_ACT_SIGMOID},  /* rows of 23: a ragged second vector */
    {1, 1, 33, 33, 17, 1, ML_CONV_ACT_NONE},    /* one image, one channel, rows of 17 */
    {2, 4, 32, 32, 9, 0, ML_CONV_ACT_NONE},     /* no padding: rows of 15 */
    {2, 3, 20, 70, 4, 2, ML_CONV_ACT_RELU},     /* padding 2, rows of 36 (two row blocks) */
    {3, 16, 16, 16, 8, 1, ML_CONV_ACT_NONE},    /* the most channels it takes */
    {2, 2, 1, 5, 3, 1, ML_CONV_ACT_NONE},       /* one input row */
    {5, 3, 2, 2, 33, 1, ML_CONV_ACT_RELU},      /* 1 x 1 output, 5 images over 2 threads */
    /* direct 4: the same forward, the GEMM path's backward */
    {2, 32, 32, 32, 64, 1, ML_CONV_ACT_NONE},   /* the SRNN's enc.conv2, 2 images */
    {3, 17, 9, 23, 5, 1, ML_CONV_ACT_RELU},     /* the fewest channels it takes, ragged rows */
    {2, 24, 16, 16, 9, 0, ML_CONV_ACT_SIGMOID}, /* no padding: rows of 7 */
};

/* the largest |a - r| / (1 + |r|) over n */
static double max_rel_err(const float *a, const double *r, size_t n) {
    double e = 0;
    for (size_t j = 0; j < n; j++) {
        const double d = fabs(a[j] - r[j]) / (1 + fabs(r[j]));
        if (d > e) e = d;
    }
    return e;
}

START_TEST(test_s2_direct) {
    const struct s2_case *c = &s2_cases[_i];
    const int saved = omp_get_max_threads();
    ml_conv_shape s;
    ck_assert_int_eq(ml_conv2d_shape(&s, c->B, c->C, c->H, c->W, c->O, 3, 2, c->pad, c->act), ML_OK);
    ck_assert_int_eq(s.direct, c->C <= 16 ? 3 : 4);
    const size_t nx = ml_conv_in_size(&s), ny = ml_conv_out_size(&s), nw = ml_conv_weight_size(&s);
    float *x = fl(nx), *w = fl(nw), *b = fl(s.O), *dy = fl(ny), *ws = fl(ml_conv_workspace_floats(&s));
    float *y[3], *dx[3], *dw[3], *db[3];
    tu_fill(x, nx, 101, -1, 1);
    tu_fill(w, nw, 102, -0.5f, 0.5f);
    tu_fill(b, s.O, 103, -0.1f, 0.1f);
    tu_fill(dy, ny, 104, -1, 1);
    /* runs 0 and 2 on 1 thread, run 1 on 2 */
    for (int t = 0; t < 3; t++) {
        y[t] = fl(ny), dx[t] = fl(nx), dw[t] = fl(nw), db[t] = fl(s.O);
        omp_set_num_threads(t == 1 ? 2 : 1);
        run_layer(&s, y[t], dx[t], dw[t], db[t], x, w, b, dy, ws);
    }
    omp_set_num_threads(saved);
    /* direct 4's dw and db are OpenBLAS's, whose sums may split by threads: the same bits run
     * to run there */
    for (int t = s.direct == 4 ? 2 : 1; t < 3; t++) {
        ck_assert(memcmp(dw[t], dw[0], nw * sizeof(float)) == 0);
        ck_assert(memcmp(db[t], db[0], s.O * sizeof(float)) == 0);
    }
    for (int t = 1; t < 3; t++) ck_assert(memcmp(y[t], y[0], ny * sizeof(float)) == 0);
    ck_assert(memcmp(dx[2], dx[0], nx * sizeof(float)) == 0);
    /* the reference: y, then the pre-activation gradient g and the sums over it */
    double *ry = malloc(ny * sizeof *ry), *rx = calloc(nx, sizeof *rx), *rw = calloc(nw, sizeof *rw),
           *rb = calloc((size_t)s.O, sizeof *rb);
    conv_ref(&s, ry, x, w, b);
    for (int i = 0; i < s.B; i++)
        for (int o = 0; o < s.O; o++)
            for (int oy = 0; oy < s.Ho; oy++)
                for (int ox = 0; ox < s.Wo; ox++) {
                    const size_t yi = ((size_t)(i * s.O + o) * s.Ho + oy) * s.Wo + ox;
                    const double yv = ry[yi], d = dy[yi];
                    const double gv = s.act == ML_CONV_ACT_RELU ? (yv > 0 ? d : 0)
                                      : s.act == ML_CONV_ACT_SIGMOID ? d * yv * (1 - yv) : d;
                    rb[o] += gv;
                    for (int ch = 0; ch < s.C; ch++)
                        for (int ky = 0; ky < 3; ky++)
                            for (int kx = 0; kx < 3; kx++) {
                                const int iy = 2 * oy - s.pad + ky, ix = 2 * ox - s.pad + kx;
                                if (iy < 0 || iy >= s.H || ix < 0 || ix >= s.W) continue;
                                const size_t xi = ((size_t)(i * s.C + ch) * s.H + iy) * s.W + ix;
                                const size_t wi = ((size_t)(o * s.C + ch) * 3 + ky) * 3 + kx;
                                rx[xi] += gv * w[wi];
                                rw[wi] += gv * x[xi];
                            }
                }
    const double ey = max_rel_err(y[0], ry, ny), ex = max_rel_err(dx[0], rx, nx);
    const double ew = max_rel_err(dw[0], rw, nw), eb = max_rel_err(db[0], rb, (size_t)s.O);
    ck_assert_msg(ey < 1e-5 && ex < 1e-4 && ew < 1e-4 && eb < 1e-4, "case %d: y %g dx %g dw %g db %g", _i, ey,
                  ex, ew, eb);
    /* planted error: the last pixel of the last input row of the last image changed for the
     * kernel alone; y and dw must then miss the reference (where the window reaches it) */
    const int reached = (s.W - 1 + s.pad) / 2 < s.Wo && (s.H - 1 + s.pad) / 2 < s.Ho;
    x[nx - 1] += 0.5f;
    run_layer(&s, y[1], dx[1], dw[1], db[1], x, w, b, dy, ws);
    x[nx - 1] -= 0.5f;
    if (reached) {
        ck_assert(max_rel_err(y[1], ry, ny) > 1e-3);
        ck_assert(max_rel_err(dw[1], rw, nw) > 1e-3);
    }
    for (int t = 0; t < 3; t++) free(y[t]), free(dx[t]), free(dw[t]), free(db[t]);
    free(x), free(w), free(b), free(dy), free(ws), free(ry), free(rx), free(rw), free(rb);
}
END_TEST

/* which convs take the direct stride-2 paths: 3x3 stride 2 on up to 16 input channels (3),
 * up to 32 (4, the forward alone) */
START_TEST(test_s2_selection) {
    ml_conv_shape s;
    ck_assert_int_eq(ml_conv2d_shape(&s, 64, 3, 64, 64, 32, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.direct, 3); /* the SRNN's and the COD model's first conv */
    ck_assert_int_eq(ml_conv2d_shape(&s, 64, 1, 32, 32, 32, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.direct, 3); /* 32x32x1 */
    ck_assert_int_eq(ml_conv2d_shape(&s, 64, 16, 64, 64, 32, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.direct, 3);
    ck_assert_int_eq(ml_conv2d_shape(&s, 64, 17, 64, 64, 32, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.direct, 4); /* the direct forward alone */
    ck_assert_int_eq(ml_conv2d_shape(&s, 64, 32, 32, 32, 64, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.direct, 4); /* the encoders' second conv */
    ck_assert_int_eq(ml_conv2d_shape(&s, 64, 33, 32, 32, 64, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.direct, 0);
    ck_assert_int_eq(ml_conv2d_shape(&s, 64, 64, 16, 16, 128, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.direct, 0); /* the third */
    ck_assert_int_eq(ml_conv2d_shape(&s, 4, 3, 64, 64, 8, 5, 2, 2, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.direct, 0); /* 5x5 */
    ck_assert_int_eq(ml_conv2d_shape(&s, 4, 3, 64, 64, 8, 3, 3, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert_int_eq(s.direct, 0); /* stride 3 */
}
END_TEST

/* ---- the sub-pixel convt2d (plain and Winograd) against the general GEMM + col2im path: y,
 * dx, dw, db ---- */

START_TEST(test_subpixel_vs_general) {
    ml_conv_shape s[2];
    /* _i & 1: the activation; _i >> 1: 0 the plain sub-pixel form, 1 the Winograd form
     * (subpixel 2), 2 the Winograd form on one thread (team 1, its workspace sized so) */
    const ml_conv_act act = _i & 1 ? ML_CONV_ACT_RELU : ML_CONV_ACT_SIGMOID;
    const int mode = _i >> 1;
    for (int v = 0; v < 2; v++) {
        ck_assert_int_eq(ml_convt2d_shape(&s[v], 5, 7, 6, 9, 6, 4, 2, 1, act), ML_OK);
        s[v].subpixel = v ? (mode ? 2 : 1) : 0;
        s[v].chunk = 2;
        if (mode == 2) s[v].team = 1;
    }
    size_t nx = ml_conv_in_size(&s[0]), ny = ml_conv_out_size(&s[0]), nw = ml_conv_weight_size(&s[0]);
    float *x = fl(nx), *w = fl(nw), *b = fl(s[0].O), *dy = fl(ny);
    float *y[2], *dx[2], *dw[2], *db[2];
    tu_fill(x, nx, 51, -1, 1);
    tu_fill(w, nw, 52, -0.3f, 0.3f);
    tu_fill(b, s[0].O, 53, -0.3f, 0.3f);
    tu_fill(dy, ny, 54, -1, 1);
    for (int v = 0; v < 2; v++) {
        float *ws = fl(ml_conv_workspace_floats(&s[v]));
        y[v] = fl(ny), dx[v] = fl(nx), dw[v] = fl(nw), db[v] = fl(s[v].O);
        run_layer(&s[v], y[v], dx[v], dw[v], db[v], x, w, b, dy, ws);
        free(ws);
    }
    for (size_t j = 0; j < ny; j++) ck_assert_float_eq_tol(y[1][j], y[0][j], 1e-5);
    for (size_t j = 0; j < nx; j++) ck_assert_float_eq_tol(dx[1][j], dx[0][j], 1e-4);
    for (size_t j = 0; j < nw; j++) ck_assert_float_eq_tol(dw[1][j], dw[0][j], 1e-4);
    for (int j = 0; j < s[0].O; j++) ck_assert_float_eq_tol(db[1][j], db[0][j], 1e-4);
    for (int v = 0; v < 2; v++) free(y[v]), free(dx[v]), free(dw[v]), free(db[v]);
    free(x), free(w), free(b), free(dy);
}
END_TEST

/* ---- the Winograd form's transforms at the edges of their 16-tile vectors: rows of 1, 16,
 * 17 and 32 tiles (W = 2, 45, 48, 95), partial tile rows and columns, chunks of several
 * images side by side (grid rows of 18 and 20 tiles, a last chunk of another width), against
 * the general path; and on 1 and 2 threads: y, dx and db are the same bits (each chunk on one
 * thread), dw within rounding (the threads' dU are summed in thread order) ---- */

START_TEST(test_winograd_edges) {
    static const struct { int B, C, H, W, O; ml_conv_act act; int chunk; } cs[] = {
        {3, 3, 2, 45, 4, ML_CONV_ACT_RELU, 1},
        {3, 2, 4, 48, 3, ML_CONV_ACT_NONE, 1},
        {2, 2, 3, 95, 2, ML_CONV_ACT_SIGMOID, 1},
        {5, 3, 7, 2, 3, ML_CONV_ACT_RELU, 1},
        /* chunks of images side by side: 6 images of 8 x 8 (18 tiles per grid row, a block
         * of 16 and one of 2), then 1 image (another geometry on the same thread at 1
         * thread, on the second thread at 2); 4 images of 14-wide rows (5 tiles each, 20 per
         * grid row), 4 + 4 + 1; 3 images of 7-wide rows (an unused window column between
         * images) in chunks of 3 and 2 */
        {7, 3, 8, 8, 3, ML_CONV_ACT_RELU, 6},
        {9, 2, 3, 14, 2, ML_CONV_ACT_NONE, 4},
        {5, 2, 5, 7, 3, ML_CONV_ACT_SIGMOID, 3},
    };
    const int c = _i, saved = omp_get_max_threads();
    ml_conv_shape s[2];
    for (int v = 0; v < 2; v++) {
        ck_assert_int_eq(ml_convt2d_shape(&s[v], cs[c].B, cs[c].C, cs[c].H, cs[c].W, cs[c].O, 4, 2, 1, cs[c].act),
                         ML_OK);
        s[v].subpixel = v ? 2 : 0;
        s[v].chunk = v ? cs[c].chunk : cs[c].B; /* Winograd: chunks dealt to the threads in turn */
    }
    const size_t nx = ml_conv_in_size(&s[0]), ny = ml_conv_out_size(&s[0]), nw = ml_conv_weight_size(&s[0]);
    float *x = fl(nx), *w = fl(nw), *b = fl(s[0].O), *dy = fl(ny);
    float *y[3], *dx[3], *dw[3], *db[3];
    tu_fill(x, nx, 61, -1, 1);
    tu_fill(w, nw, 62, -0.3f, 0.3f);
    tu_fill(b, s[0].O, 63, -0.3f, 0.3f);
    tu_fill(dy, ny, 64, -1, 1);
    /* r 0: the general path; 1: Winograd on 1 thread; 2: Winograd on 2 threads */
    for (int r = 0; r < 3; r++) {
        const ml_conv_shape *sr = &s[r > 0];
        float *ws = fl(ml_conv_workspace_floats(sr));
        y[r] = fl(ny), dx[r] = fl(nx), dw[r] = fl(nw), db[r] = fl(sr->O);
        omp_set_num_threads(r == 2 ? 2 : 1);
        run_layer(sr, y[r], dx[r], dw[r], db[r], x, w, b, dy, ws);
        free(ws);
    }
    omp_set_num_threads(saved);
    for (size_t j = 0; j < ny; j++) ck_assert_float_eq_tol(y[1][j], y[0][j], 1e-5);
    for (size_t j = 0; j < nx; j++) ck_assert_float_eq_tol(dx[1][j], dx[0][j], 1e-4);
    for (size_t j = 0; j < nw; j++) ck_assert_float_eq_tol(dw[1][j], dw[0][j], 1e-4);
    for (int j = 0; j < s[0].O; j++) ck_assert_float_eq_tol(db[1][j], db[0][j], 1e-4);
    ck_assert(memcmp(y[1], y[2], ny * sizeof(float)) == 0);
    ck_assert(memcmp(dx[1], dx[2], nx * sizeof(float)) == 0);
    ck_assert(memcmp(db[1], db[2], (size_t)s[0].O * sizeof(float)) == 0);
    for (size_t j = 0; j < nw; j++) ck_assert_float_eq_tol(dw[2][j], dw[1][j], 1e-5);
    for (int r = 0; r < 3; r++) free(y[r]), free(dx[r]), free(dw[r]), free(db[r]);
    free(x), free(w), free(b), free(dy);
}
END_TEST

/* ---- the transposed conv's Winograd forward with the following conv run on each chunk of
 * its output (ml_convt2d_forward_cat_next): y and the following conv's output the same bits
 * as the two calls, on 1 and 2 threads; chunks that do not divide the batch, one thread's
 * team, more output channels than the backward fusion takes, 5x5 kernels ---- */

START_TEST(test_convt_next_forward) {
    static const struct { int B, Ca, Cb, H, W, O, NO, k, chunk, team; ml_conv_act nact; } cs[] = {
        {3, 4, 2, 5, 7, 5, 3, 3, 2, 0, ML_CONV_ACT_SIGMOID},
        {5, 2, 3, 3, 35, 4, 6, 5, 2, 0, ML_CONV_ACT_NONE},
        {2, 3, 2, 16, 16, 4, 1, 3, 0, 1, ML_CONV_ACT_SIGMOID},
        {4, 2, 1, 3, 47, 3, 2, 3, 1, 0, ML_CONV_ACT_RELU}, /* rows of 16 tiles */
    };
    const int B = cs[_i].B, Ca = cs[_i].Ca, Cb = cs[_i].Cb, H = cs[_i].H, W = cs[_i].W, O = cs[_i].O;
    const int saved = omp_get_max_threads();
    ml_conv_shape s, ns;
    ck_assert_int_eq(ml_convt2d_shape(&s, B, Ca + Cb, H, W, O, 4, 2, 1, ML_CONV_ACT_RELU), ML_OK);
    s.subpixel = 2;
    if (cs[_i].chunk) s.chunk = cs[_i].chunk;
    if (cs[_i].team) s.team = cs[_i].team;
    ck_assert_int_eq(ml_conv2d_shape(&ns, B, O, s.Ho, s.Wo, cs[_i].NO, cs[_i].k, 1, cs[_i].k / 2,
                                     cs[_i].nact), ML_OK);
    ck_assert(ml_convt2d_fuses_next_forward(&s, &ns));
    const size_t HW = (size_t)H * W, na = (size_t)B * Ca * HW, nbb = (size_t)B * Cb * HW;
    const size_t nu = ml_conv_out_size(&s), nn = ml_conv_out_size(&ns);
    const size_t nw = ml_conv_weight_size(&s), nnw = ml_conv_weight_size(&ns);
    size_t nws = ml_conv_workspace_floats(&s);
    if (ml_conv_workspace_floats(&ns) > nws) nws = ml_conv_workspace_floats(&ns);
    float *xa = fl(na), *xb = fl(nbb), *w = fl(nw), *b = fl(O), *nwt = fl(nnw), *nb = fl(ns.O), *ws = fl(nws);
    double *ref = malloc(nn * sizeof *ref);
    tu_fill(xa, na, 81, -1, 1);
    tu_fill(xb, nbb, 82, -1, 1);
    tu_fill(w, nw, 83, -0.5f, 0.5f);
    tu_fill(b, O, 84, -0.2f, 0.2f);
    tu_fill(nwt, nnw, 85, -0.5f, 0.5f);
    tu_fill(nb, ns.O, 86, -0.2f, 0.2f);
    /* v 0: the pair (1 thread); v 1, 2: fused on 1 and 2 threads; v 3: the pair on 2 threads */
    float *u[4], *yn[4];
    for (int v = 0; v < 4; v++) {
        u[v] = fl(nu), yn[v] = fl(nn);
        for (size_t j = 0; j < nn; j++) yn[v][j] = 7; /* written */
        omp_set_num_threads(v == 0 || v == 1 ? 1 : 2);
        if (v == 0 || v == 3) {
            ml_convt2d_forward_cat(&s, Ca, u[v], xa, xb, w, b, ws);
            ml_conv2d_forward(&ns, yn[v], u[v], nwt, nb, ws);
        } else
            ck_assert_int_eq(ml_convt2d_forward_cat_next(&s, Ca, u[v], xa, xb, w, b, &ns, yn[v], nwt, nb, ws), ML_OK);
        omp_set_num_threads(saved);
    }
    for (int v = 1; v < 4; v++) {
        ck_assert(memcmp(u[v], u[0], nu * sizeof(float)) == 0);
        ck_assert(memcmp(yn[v], yn[0], nn * sizeof(float)) == 0);
    }
    conv_ref(&ns, ref, u[0], nwt, nb); /* and the reference on y */
    for (size_t j = 0; j < nn; j++) ck_assert_double_eq_tol(yn[1][j], ref[j], 1e-4);
    /* not fused: the general path, a strided or a GEMM-path conv, another map size */
    ml_conv_shape t = s;
    t.subpixel = 0;
    ck_assert(!ml_convt2d_fuses_next_forward(&t, &ns));
    t = ns;
    t.direct = 0;
    ck_assert(!ml_convt2d_fuses_next_forward(&s, &t));
    ck_assert_int_eq(ml_conv2d_shape(&t, B, O, s.Ho, s.Wo, 2, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert(!ml_convt2d_fuses_next_forward(&s, &t));
    ck_assert_int_eq(ml_conv2d_shape(&t, B, O, s.Ho + 2, s.Wo, 2, 3, 1, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert(!ml_convt2d_fuses_next_forward(&s, &t));
    for (int v = 0; v < 4; v++) free(u[v]), free(yn[v]);
    free(xa), free(xb), free(w), free(b), free(nwt), free(nb), free(ws), free(ref);
}
END_TEST

/* the Winograd transposed conv with the following conv's input gradient computed in its
 * gather (ml_convt2d_backward_cat_next) against the pair run one after the other. _i: 0 a
 * 3x3 sigmoid conv on 14-wide rows (partial vectors), 1 a 5x5 conv without activation on
 * 70-wide rows (a 4-vector block and a partial one), 2 the SRNN's last block at 16 x 16 (the
 * shape function's choice) into 1 channel, on one thread (team 1), 3 a 3x3 sigmoid conv on
 * 94-wide rows, the transposed conv's rows 16 tiles. With next's dw in the gather too, that dw
 * against the pair's within 1e-5 of its largest entry (the same products summed in another
 * order), and everything else the same bits as without */
START_TEST(test_convt_next) {
    static const struct { int B, Ca, Cb, H, W, O, NO, k; ml_conv_act nact; } cs[] = {
        {3, 4, 2, 5, 7, 5, 3, 3, ML_CONV_ACT_SIGMOID},
        {2, 2, 3, 3, 35, 4, 2, 5, ML_CONV_ACT_NONE},
        {2, 3, 2, 16, 16, 4, 1, 3, ML_CONV_ACT_SIGMOID},
        {2, 2, 1, 3, 47, 3, 2, 3, ML_CONV_ACT_SIGMOID}, /* rows of 16 tiles */
    };
    const int B = cs[_i].B, Ca = cs[_i].Ca, Cb = cs[_i].Cb, H = cs[_i].H, W = cs[_i].W, O = cs[_i].O;
    ml_conv_shape s, ns;
    ck_assert_int_eq(ml_convt2d_shape(&s, B, Ca + Cb, H, W, O, 4, 2, 1, ML_CONV_ACT_RELU), ML_OK);
    if (_i != 2) {
        s.subpixel = 2;
        s.chunk = 2;
    } else {
        ck_assert_int_eq(s.subpixel, 2);
        s.team = 1;
    }
    ck_assert_int_eq(ml_conv2d_shape(&ns, B, O, s.Ho, s.Wo, cs[_i].NO, cs[_i].k, 1, cs[_i].k / 2,
                                     cs[_i].nact), ML_OK);
    ck_assert(ml_convt2d_fuses_next(&s, &ns));
    const size_t HW = (size_t)H * W, na = (size_t)B * Ca * HW, nbb = (size_t)B * Cb * HW;
    const size_t nu = ml_conv_out_size(&s), nn = ml_conv_out_size(&ns);
    const size_t nw = ml_conv_weight_size(&s), nnw = ml_conv_weight_size(&ns);
    size_t nws = ml_conv_workspace_floats(&s);
    if (ml_conv_workspace_floats(&ns) > nws) nws = ml_conv_workspace_floats(&ns);
    float *xa = fl(na), *xb = fl(nbb), *w = fl(nw), *b = fl(O), *u = fl(nu), *du = fl(nu);
    float *nwt = fl(nnw), *nb = fl(ns.O), *yn = fl(nn), *r = fl(nn), *ws = fl(nws);
    tu_fill(xa, na, 71, -1, 1);
    tu_fill(xb, nbb, 72, -1, 1);
    tu_fill(w, nw, 73, -0.5f, 0.5f);
    tu_fill(b, O, 74, -0.2f, 0.2f);
    tu_fill(nwt, nnw, 75, -0.5f, 0.5f);
    tu_fill(nb, ns.O, 76, -0.2f, 0.2f);
    tu_fill(r, nn, 77, -1, 1);
    ml_convt2d_forward_cat(&s, Ca, u, xa, xb, w, b, ws);
    ml_conv2d_forward(&ns, yn, u, nwt, nb, ws);
    /* v 0: the pair; v 1, 2: fused, twice; v 3, 4: fused with next's dw in the gather, twice */
    float *dxa[5], *dxb[5], *dw[5], *db[5], *ndw[5], *ndb[5];
    for (int v = 0; v < 5; v++) {
        dxa[v] = fl(na), dxb[v] = fl(nbb), dw[v] = fl(nw), db[v] = fl(O);
        ndw[v] = fl(nnw), ndb[v] = fl(ns.O);
        for (size_t j = 0; j < na; j++) dxa[v][j] = 7; /* written, not added to */
        for (size_t j = 0; j < nbb; j++) dxb[v][j] = 7;
        memset(dw[v], 0, nw * sizeof(float));
        memset(db[v], 0, (size_t)O * sizeof(float));
        memset(ndw[v], 0, nnw * sizeof(float));
        memset(ndb[v], 0, (size_t)ns.O * sizeof(float));
        if (v == 0) {
            memset(du, 0, nu * sizeof(float));
            ml_conv2d_backward(&ns, du, ndw[v], ndb[v], r, yn, u, nwt, ws);
            ml_convt2d_backward_cat(&s, Ca, dxa[v], dxb[v], dw[v], db[v], du, u, xa, xb, w, ws);
        } else {
            const int in = v >= 3; /* next's dw in the gather */
            ml_conv2d_backward(&ns, NULL, in ? NULL : ndw[v], ndb[v], r, yn, u, nwt, ws);
            ml_convt2d_backward_cat_next(&s, Ca, dxa[v], dxb[v], dw[v], db[v], &ns, r,
                                         ns.act == ML_CONV_ACT_NONE ? NULL : yn, nwt, in ? ndw[v] : NULL, u,
                                         xa, xb, w, ws);
        }
    }
    /* next's dw from the gather: the same sums in another order; the rest the same bits */
    double nmax = 0;
    for (size_t j = 0; j < nnw; j++) nmax = fmax(nmax, fabs(ndw[0][j]));
    for (size_t j = 0; j < nnw; j++) ck_assert_double_le(fabs(ndw[3][j] - ndw[0][j]), 1e-5 * nmax);
    ck_assert(memcmp(ndw[3], ndw[4], nnw * sizeof(float)) == 0);
    ck_assert(memcmp(ndb[3], ndb[0], (size_t)ns.O * sizeof(float)) == 0);
    for (int v = 3; v < 5; v++) {
        ck_assert(memcmp(dxa[v], dxa[1], na * sizeof(float)) == 0);
        ck_assert(memcmp(dxb[v], dxb[1], nbb * sizeof(float)) == 0);
        ck_assert(memcmp(dw[v], dw[1], nw * sizeof(float)) == 0);
        ck_assert(memcmp(db[v], db[1], (size_t)O * sizeof(float)) == 0);
    }
    ck_assert(memcmp(ndw[1], ndw[0], nnw * sizeof(float)) == 0);
    ck_assert(memcmp(ndb[1], ndb[0], (size_t)ns.O * sizeof(float)) == 0);
    for (size_t j = 0; j < na; j++) ck_assert_float_eq_tol(dxa[1][j], dxa[0][j], 1e-4);
    for (size_t j = 0; j < nbb; j++) ck_assert_float_eq_tol(dxb[1][j], dxb[0][j], 1e-4);
    for (size_t j = 0; j < nw; j++) ck_assert_float_eq_tol(dw[1][j], dw[0][j], 1e-4);
    for (int j = 0; j < O; j++) ck_assert_float_eq_tol(db[1][j], db[0][j], 1e-4);
    /* deterministic */
    ck_assert(memcmp(dxa[1], dxa[2], na * sizeof(float)) == 0);
    ck_assert(memcmp(dxb[1], dxb[2], nbb * sizeof(float)) == 0);
    ck_assert(memcmp(dw[1], dw[2], nw * sizeof(float)) == 0);
    ck_assert(memcmp(db[1], db[2], (size_t)O * sizeof(float)) == 0);
    /* not fused: the general path, another map size, too many channels */
    ml_conv_shape t = s;
    t.subpixel = 0;
    ck_assert(!ml_convt2d_fuses_next(&t, &ns));
    ck_assert_int_eq(ml_conv2d_shape(&t, B, O, s.Ho, s.Wo, 5, 3, 1, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert(!ml_convt2d_fuses_next(&s, &t));
    ck_assert_int_eq(ml_conv2d_shape(&t, B, O, s.Ho, s.Wo, 2, 3, 2, 1, ML_CONV_ACT_NONE), ML_OK);
    ck_assert(!ml_convt2d_fuses_next(&s, &t));
    for (int v = 0; v < 5; v++)
        free(dxa[v]), free(dxb[v]), free(dw[v]), free(db[v]), free(ndw[v]), free(ndb[v]);
    free(xa), free(xb), free(w), free(b), free(u), free(du), free(nwt), free(nb), free(yn), free(r), free(ws);
}
END_TEST

/* ---- several odd kernels on one input (ml_mconv_*): the ring-ordered shared column matrix
 * against the direct reference and the branches run as separate conv2d, and finite
 * differences. _i: 0 the texture expert's 3, 5, 7, 1 with ReLU over two chunks, 1 kernels 7
 * and 3 without activation, 2 few output channels (the branches run as conv2d) ---- */

struct mconv_case { int B, C, H, W, O, n, k[ML_MCONV_MAX], chunk, rings; ml_conv_act act; };
static const struct mconv_case mconv_cases[] = {
    {3, 3, 5, 6, 17, 4, {3, 5, 7, 1}, 2, 1, ML_CONV_ACT_RELU},
    {2, 4, 4, 4, 18, 2, {7, 3, 0, 0}, 0, 1, ML_CONV_ACT_NONE},
    {2, 3, 5, 6, 4, 4, {3, 5, 7, 1}, 0, 0, ML_CONV_ACT_SIGMOID},
};

struct mctx {
    ml_mconv_shape s;
    float *x, *w[ML_MCONV_MAX], *b[ML_MCONV_MAX], *y[ML_MCONV_MAX], *r[ML_MCONV_MAX], *ws;
};

static void mconv_make(struct mctx *g, const struct mconv_case *c, unsigned seed) {
    ck_assert_int_eq(ml_mconv_shape_init(&g->s, c->B, c->C, c->H, c->W, c->O, c->n, c->k, c->act), ML_OK);
    ck_assert_int_eq(g->s.rings, c->rings);
    if (c->chunk) g->s.chunk = c->chunk;
    const size_t nx = (size_t)c->B * c->C * c->H * c->W, ny = (size_t)c->B * c->O * c->H * c->W;
    g->x = fl(nx);
    tu_fill(g->x, nx, seed, -1, 1);
    for (int j = 0; j < c->n; j++) {
        const size_t nw = ml_conv_weight_size(&g->s.br[j]);
        g->w[j] = fl(nw), g->b[j] = fl(c->O), g->y[j] = fl(ny), g->r[j] = fl(ny);
        tu_fill(g->w[j], nw, seed + 10 + j, -0.5f, 0.5f);
        tu_fill(g->b[j], c->O, seed + 20 + j, -0.5f, 0.5f);
        tu_fill(g->r[j], ny, seed + 30 + j, -1, 1);
    }
    g->ws = fl(ml_mconv_workspace_floats(&g->s));
}

static void mconv_free(struct mctx *g) {
    for (int j = 0; j < g->s.n; j++) free(g->w[j]), free(g->b[j]), free(g->y[j]), free(g->r[j]);
    free(g->x), free(g->ws);
}

static double mconv_loss(void *p) {
    struct mctx *g = p;
    ml_mconv_forward(&g->s, g->y, g->x, (const float *const *)g->w, (const float *const *)g->b, g->ws);
    double l = 0;
    const size_t ny = ml_conv_out_size(&g->s.br[0]);
    for (int j = 0; j < g->s.n; j++)
        for (size_t q = 0; q < ny; q++) l += (double)g->y[j][q] * g->r[j][q];
    return l;
}

START_TEST(test_mconv_vs_branches) {
    const struct mconv_case *c = &mconv_cases[_i];
    struct mctx g;
    mconv_make(&g, c, 81);
    const size_t nx = ml_conv_in_size(&g.s.br[0]), ny = ml_conv_out_size(&g.s.br[0]);
    mconv_loss(&g);
    double *ref = malloc(ny * sizeof *ref);
    float *dx = fl(nx), *dx1 = fl(nx), *dw[ML_MCONV_MAX], *db[ML_MCONV_MAX];
    for (size_t q = 0; q < nx; q++) dx[q] = dx1[q] = 1; /* backward accumulates */
    size_t wsz = ml_mconv_workspace_floats(&g.s);
    for (int j = 0; j < c->n; j++) {
        conv_ref(&g.s.br[j], ref, g.x, g.w[j], g.b[j]);
        for (size_t q = 0; q < ny; q++) ck_assert_double_eq_tol(g.y[j][q], ref[q], 1e-4);
        const size_t nw = ml_conv_weight_size(&g.s.br[j]);
        dw[j] = fl(2 * nw), db[j] = fl(2 * c->O);
        for (size_t q = 0; q < 2 * nw; q++) dw[j][q] = 1;
        for (int q = 0; q < 2 * c->O; q++) db[j][q] = 1;
        if (ml_conv_workspace_floats(&g.s.br[j]) > wsz) wsz = ml_conv_workspace_floats(&g.s.br[j]);
    }
    ml_mconv_backward(&g.s, dx, dw, db, (const float *const *)g.r, (const float *const *)g.y, g.x,
                      (const float *const *)g.w, g.ws);
    /* the branches one by one, into the second halves of dw and db */
    float *ws1 = fl(wsz);
    for (int j = 0; j < c->n; j++)
        ml_conv2d_backward(&g.s.br[j], dx1, dw[j] + ml_conv_weight_size(&g.s.br[j]), db[j] + c->O, g.r[j], g.y[j],
                           g.x, g.w[j], ws1);
    for (size_t q = 0; q < nx; q++) ck_assert_float_eq_tol(dx[q], dx1[q], 1e-4f * (1 + fabsf(dx1[q])));
    for (int j = 0; j < c->n; j++) {
        const size_t nw = ml_conv_weight_size(&g.s.br[j]);
        for (size_t q = 0; q < nw; q++) ck_assert_float_eq_tol(dw[j][q], dw[j][nw + q], 1e-4f * (1 + fabsf(dw[j][nw + q])));
        for (int q = 0; q < c->O; q++) ck_assert_float_eq_tol(db[j][q], db[j][c->O + q], 1e-4f * (1 + fabsf(db[j][q])));
        free(dw[j]), free(db[j]);
    }
    free(ref), free(dx), free(dx1), free(ws1);
    mconv_free(&g);
}
END_TEST

START_TEST(test_mconv_gradcheck) {
    struct mconv_case c = mconv_cases[_i];
    if (c.act == ML_CONV_ACT_RELU) c.act = ML_CONV_ACT_SIGMOID; /* no kinks for the difference quotient */
    struct mctx g;
    mconv_make(&g, &c, 91);
    const size_t nx = ml_conv_in_size(&g.s.br[0]);
    float *dx = fl(nx), *dw[ML_MCONV_MAX], *db[ML_MCONV_MAX];
    for (int j = 0; j < c.n; j++) dw[j] = fl(ml_conv_weight_size(&g.s.br[j])), db[j] = fl(c.O);
    mconv_loss(&g);
    ml_mconv_backward(&g.s, dx, dw, db, (const float *const *)g.r, (const float *const *)g.y, g.x,
                      (const float *const *)g.w, g.ws);
    const double eps = c.act == ML_CONV_ACT_NONE ? 5e-2 : 1e-2;
    double e = tu_gradcheck(mconv_loss, &g, g.x, dx, nx, 30, eps);
    ck_assert_msg(e <= TU_GC_TOL, "case %d: dx %g", _i, e);
    for (int j = 0; j < c.n; j++) {
        double ew = tu_gradcheck(mconv_loss, &g, g.w[j], dw[j], ml_conv_weight_size(&g.s.br[j]), 12, eps);
        double eb = tu_gradcheck(mconv_loss, &g, g.b[j], db[j], c.O, 6, eps);
        ck_assert_msg(ew <= TU_GC_TOL && eb <= TU_GC_TOL, "case %d branch %d: dw %g db %g", _i, j, ew, eb);
        free(dw[j]), free(db[j]);
    }
    free(dx);
    mconv_free(&g);
}
END_TEST


/* ml_pp_gemm and ml_pp_gemm_rows (the Winograd GEMMs): the bits of a plain loop of fmaf over
 * k from 0, for shapes around their blocks (8 rows, 16-column vectors, 48-column blocks), with
 * and without adding to C, A packed from A and from A^T or read in place; columns past N
 * and rows past M untouched; and ml_pp_transpose, around its 16 x 16 blocks. */
START_TEST(test_ppgemm) {
    static const int Ms[] = {1, 7, 8, 9, 20, 64}, Ns[] = {1, 15, 16, 17, 47, 48, 49, 121}, Ks[] = {0, 1, 5, 64};
    int cases = 0;
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
        for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
            for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
                for (int trans = 0; trans < 2; trans++)
                    for (int add = 0; add < 2; add++) {
                        const int M = Ms[mi], N = Ns[ni], K = Ks[ki], ldb = (N + 15) / 16 * 16 + 3, ldc = N + 5;
                        const int lda = trans ? M + 2 : K + 2;
                        float *a = malloc(sizeof(float) * (size_t)(trans ? K : M) * lda + 4);
                        float *b = malloc(sizeof(float) * ((size_t)(K ? K : 1) * ldb + 16));
                        float *c = malloc(sizeof(float) * ((size_t)M + 1) * ldc), *r = malloc(sizeof(float) * ((size_t)M + 1) * ldc);
                        float *ap = malloc(sizeof(float) * (ml_pp_floats(M, K) + 1));
                        tu_fill(a, (size_t)(trans ? K : M) * lda, 90 + (unsigned)cases, -1, 1);
                        tu_fill(b, (size_t)(K ? K : 1) * ldb + 16, 91 + (unsigned)cases, -1, 1);
                        tu_fill(c, ((size_t)M + 1) * ldc, 92 + (unsigned)cases, -1, 1);
                        memcpy(r, c, sizeof(float) * ((size_t)M + 1) * ldc);
                        ml_pp_pack(ap, a, M, K, lda, trans);
                        ml_pp_gemm(M, N, K, ap, b, ldb, c, ldc, add);
                        for (int m = 0; m < M; m++)
                            for (int n = 0; n < N; n++) {
                                float acc = 0.0f;
                                for (int k = 0; k < K; k++)
                                    acc = fmaf(trans ? a[(size_t)k * lda + m] : a[(size_t)m * lda + k], b[(size_t)k * ldb + n], acc);
                                r[(size_t)m * ldc + n] = add ? r[(size_t)m * ldc + n] + acc : acc;
                            }
                        ck_assert_msg(!memcmp(c, r, sizeof(float) * ((size_t)M + 1) * ldc),
                                      "M %d N %d K %d trans %d add %d: not the bits of the fmaf loop", M, N, K, trans, add);
                        if (!trans) { /* A read in place, same bits; rows past M are not read */
                            tu_fill(c, ((size_t)M + 1) * ldc, 92 + (unsigned)cases, -1, 1);
                            ml_pp_gemm_rows(M, N, K, a, lda, b, ldb, c, ldc, add);
                            ck_assert_msg(!memcmp(c, r, sizeof(float) * ((size_t)M + 1) * ldc),
                                          "rows: M %d N %d K %d add %d: not the bits of the fmaf loop", M, N, K, add);
                        }
                        free(a), free(b), free(c), free(r), free(ap);
                        cases++;
                    }
    ck_assert_int_eq(cases, 6 * 8 * 4 * 4);
    for (int R = 1; R <= 40; R += 13)
        for (int C = 5; C <= 40; C += 11) { /* 16 x 16 blocks and edges; t's rows padded by 2 */
            const int lda = C + 3, ldt = R + 2;
            float *a = malloc(sizeof(float) * (size_t)R * lda), *t = malloc(sizeof(float) * (size_t)C * ldt);
            tu_fill(a, (size_t)R * lda, 98, -1, 1);
            for (int j = 0; j < C * ldt; j++) t[j] = 7.0f;
            ml_pp_transpose(t, ldt, a, R, C, lda);
            for (int j = 0; j < C; j++) {
                for (int i = 0; i < R; i++) ck_assert(t[j * ldt + i] == a[i * lda + j]);
                ck_assert(t[j * ldt + R] == 7.0f && t[j * ldt + R + 1] == 7.0f);
            }
            free(a), free(t);
        }
}
END_TEST

static Suite *conv_suite(void) {
    Suite *s = suite_create("conv");
    TCase *t = tcase_create("core");
    tcase_set_timeout(t, 30);
    int nf = (int)(sizeof fwd_cases / sizeof fwd_cases[0]);
    tcase_add_test(t, test_conv2d_hand);
    tcase_add_test(t, test_convt2d_hand);
    tcase_add_test(t, test_concat_hand);
    tcase_add_loop_test(t, test_forward_vs_direct, 0, nf);
    tcase_add_loop_test(t, test_conv_gradcheck, 0, nf);
    tcase_add_loop_test(t, test_conv_backward_vs_ref, 0, nf);
    tcase_add_test(t, test_bn_running_stats);
    tcase_add_loop_test(t, test_bn_gradcheck, 0, 2);
    tcase_add_loop_test(t, test_bn_backward_set, 0, 2);
    tcase_add_test(t, test_concat_gradcheck);
    tcase_add_loop_test(t, test_convt_cat, 0, 2);
    tcase_add_loop_test(t, test_conv_cat, 0, 4);
    tcase_add_loop_test(t, test_conv_write_dx, 0, 4);
    tcase_add_test(t, test_bad_shapes);
    tcase_add_loop_test(t, test_deterministic, 0, 4);
    tcase_add_loop_test(t, test_direct_thread_split, 0, 5);
    tcase_add_loop_test(t, test_s2_direct, 0, (int)(sizeof s2_cases / sizeof s2_cases[0]));
    tcase_add_test(t, test_s2_selection);
    tcase_add_test(t, test_ppgemm);
    tcase_add_loop_test(t, test_subpixel_vs_general, 0, 6);
    tcase_add_loop_test(t, test_winograd_edges, 0, 7);
    tcase_add_loop_test(t, test_convt_next, 0, 4);
    tcase_add_loop_test(t, test_convt_next_forward, 0, 4);
    tcase_add_loop_test(t, test_mconv_vs_branches, 0, 3);
    tcase_add_loop_test(t, test_mconv_gradcheck, 0, 3);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return tu_run(conv_suite()); }
