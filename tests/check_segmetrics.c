/* check_segmetrics.c — segmentation metrics: hand-computed cases, PySODMetrics reference
 * values (tests/fixtures/segmetrics/reference.py), edge cases, the EDT against brute
 * force, the accumulator (mean, text round trip, batches) and the cost per image. */
#include "testutil.h"
#include "base/common.h"
#include "model/segmetrics.h"

#include <time.h>

#define TOL 1e-12

static ml_segm image(const float *P, const float *G, int H, int W) {
    ml_segm m;
    ck_assert_msg(ml_segm_image(P, G, H, W, NULL, &m) == ML_OK, "%s", ml_error());
    return m;
}

static void fill(float *x, int n, float v) {
    for (int i = 0; i < n; i++) x[i] = v;
}

/* G = 1 on rows [r0, r1] x columns [c0, c1] of an H x W mask. */
static void rect(float *G, int H, int W, int r0, int r1, int c0, int c1) {
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) G[i * W + j] = i >= r0 && i <= r1 && j >= c0 && j <= c1 ? 1.0f : 0.0f;
}

/* ------------------------------------------------------------------ hand-computed */

START_TEST(perfect_prediction) {
    /* P = G, a disc on 16x16. S: every term is 1 (x = 1, sigma = 0 on both sides; each
     * quadrant has x = y, sigma_x = sigma_y = sigma_xy, so alpha = beta). E: at t = 0 every
     * pixel is foreground (floor(255 P) >= 0), the prediction's mean is 1, its demeaned
     * value 0, phi = 0 and f(phi) = 1/4 everywhere: E(0) = 1/4; from t = 1 the binary map
     * is G: E = 1. Mean E = (1/4 + 255)/256, as PySODMetrics gives every perfect map. */
    enum { H = 16, W = 16 };
    float P[H * W], G[H * W];
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) G[i * W + j] = (i - 7) * (i - 7) + (j - 8) * (j - 8) <= 20 ? 1.0f : 0.0f;
    memcpy(P, G, sizeof P);
    ml_segm m = image(P, G, H, W);
    ck_assert_int_eq(m.images, 1);
    ck_assert_double_eq_tol(m.iou, 1, TOL);
    ck_assert_double_eq_tol(m.dice, 1, TOL);
    ck_assert_double_eq_tol(m.mae, 0, TOL);
    ck_assert_double_eq_tol(m.s_measure, 1, TOL);
    ck_assert_double_eq_tol(m.s_object, 1, TOL);
    ck_assert_double_eq_tol(m.s_region, 1, TOL);
    ck_assert_double_eq_tol(m.e_curve[0], 0.25, TOL);
    for (int t = 1; t < ML_SEGM_THRESHOLDS; t++) ck_assert_double_eq_tol(m.e_curve[t], 1, TOL);
    ck_assert_double_eq_tol(m.e_mean, (0.25 + 255) / 256, TOL);
    ck_assert_double_eq_tol(m.e_max, 1, TOL);
    ck_assert_double_eq_tol(m.e_adaptive, 1, TOL); /* thr = 2·mean(P) < 1: P >= thr is G */
    ck_assert_double_eq_tol(m.wfm, 1, TOL);        /* no error anywhere: R = P = 1 */
}
END_TEST

START_TEST(all_wrong) {
    /* P = 1 - G, G rows/columns 5..10 of 16x16 (at least 3 pixels from the border, so the
     * 7x7 window of every foreground pixel lies inside). IoU = Dice = 0, MAE = 1.
     * S_object: the foreground sees P = 0 and the background 1 - P = 0: both 0. Each
     * quadrant (split at X = Y = round(8.5) = 9) holds foreground and background; there
     * P = 1 - G gives sigma_xy = -sigma_y, alpha < 0: S_region < 0, S = max(0, .) = 0.
     * E: t = 0 all foreground: 1/4; t >= 1 the map is ~G, phi = -1, f = 0: E = 0.
     * Adaptive: mean P = 220/256, threshold min(2·0.86, 1) = 1, P >= 1 is ~G: 0.
     * Weighted F: E = 1 everywhere, so Et = 1 and EA = sum(K) = 1 on the foreground:
     * Ew = 1, TPw = 36 - 36 = 0, R = 0: F = 0 (up to rounding). */
    enum { H = 16, W = 16 };
    float P[H * W], G[H * W];
    rect(G, H, W, 5, 10, 5, 10);
    for (int i = 0; i < H * W; i++) P[i] = 1.0f - G[i];
    ml_segm m = image(P, G, H, W);
    ck_assert_double_eq_tol(m.iou, 0, TOL);
    ck_assert_double_eq_tol(m.dice, 0, TOL);
    ck_assert_double_eq_tol(m.mae, 1, TOL);
    ck_assert_double_eq_tol(m.s_object, 0, TOL);
    ck_assert(m.s_region < 0);
    ck_assert_double_eq_tol(m.s_measure, 0, TOL);
    ck_assert_double_eq_tol(m.e_curve[0], 0.25, TOL);
    ck_assert_double_eq_tol(m.e_curve[1], 0, TOL);
    ck_assert_double_eq_tol(m.e_mean, 0.25 / 256, TOL);
    ck_assert_double_eq_tol(m.e_max, 0.25, TOL);
    ck_assert_double_eq_tol(m.e_adaptive, 0, TOL);
    ck_assert_double_eq_tol(m.wfm, 0, TOL);
}
END_TEST

START_TEST(all_zero_prediction) {
    /* P = 0, G rows/columns 5..10 of 16x16: 36 foreground pixels, u = 36/256.
     * IoU = Dice = 0 (the union is G), MAE = 36/256.
     * S_object: foreground x = 0: 0; background 1 - P = 1, x = 1, sigma = 0: 2/(1+1) = 1;
     * S_object = (1 - u)·1 = 220/256. S_region: every quadrant is mixed and x = 0, so
     * alpha = 0, beta = y^2·sigma_y > 0: 0. S = 0.5·220/256 = 0.4296875.
     * E: t = 0 every pixel foreground (demeaned prediction 0): 1/4; t >= 1 none is
     * (demeaned prediction 0 again): 1/4. Adaptive: threshold min(2·0, 1) = 0, P >= 0 is
     * every pixel (PySODMetrics' >=): 1/4.
     * Weighted F: E = G, Et = 1 everywhere (the background takes its nearest foreground
     * pixel's error), EA = 1 on the foreground, Ew = 1, TPw = 0, R = 0: F = 0. */
    enum { H = 16, W = 16 };
    float P[H * W], G[H * W];
    rect(G, H, W, 5, 10, 5, 10);
    fill(P, H * W, 0.0f);
    ml_segm m = image(P, G, H, W);
    ck_assert_double_eq_tol(m.iou, 0, TOL);
    ck_assert_double_eq_tol(m.dice, 0, TOL);
    ck_assert_double_eq_tol(m.mae, 36.0 / 256, TOL);
    ck_assert_double_eq_tol(m.s_object, 220.0 / 256, TOL);
    ck_assert_double_eq_tol(m.s_region, 0, TOL);
    ck_assert_double_eq_tol(m.s_measure, 0.4296875, TOL);
    for (int t = 0; t < ML_SEGM_THRESHOLDS; t++) ck_assert_double_eq_tol(m.e_curve[t], 0.25, TOL);
    ck_assert_double_eq_tol(m.e_mean, 0.25, TOL);
    ck_assert_double_eq_tol(m.e_max, 0.25, TOL);
    ck_assert_double_eq_tol(m.e_adaptive, 0.25, TOL);
    ck_assert_double_eq_tol(m.wfm, 0, TOL);
}
END_TEST

/* 4x4 prediction of four levels, 4 pixels each (floats 0.2f, 0.6f, 0.9f: floor(255·P) is
 * 51, 153 and 229). */
static void four_levels(float *P) {
    static const float lv[4] = {0.0f, 0.2f, 0.6f, 0.9f};
    for (int i = 0; i < 16; i++) P[i] = lv[i % 4];
}

START_TEST(gt_all_zero) {
    /* G = 0. S = 1 - mean(P) = 1 - (0 + 0.2 + 0.6 + 0.9)/4 = 0.575.
     * E = (pixels predicted background) / 16 at each threshold: t = 0: 0; t = 1..51: 4/16;
     * t = 52..153: 8/16; t = 154..229: 12/16; t = 230..255: 1.
     * Mean = (51·0.25 + 102·0.5 + 76·0.75 + 26)/256 = 146.75/256. Adaptive: threshold
     * 2·0.425 = 0.85, background = the 12 pixels below it: 0.75.
     * Weighted F: 0 (PySODMetrics' value for an empty GT). P >= 0.5 on 8 pixels, none on
     * G: IoU = Dice = 0. MAE = mean(P) = 0.425. */
    float P[16], G[16];
    four_levels(P);
    fill(G, 16, 0.0f);
    ml_segm m = image(P, G, 4, 4);
    const double mean_p = ((double)0.2f + (double)0.6f + (double)0.9f) / 4;
    ck_assert_double_eq_tol(m.s_measure, 1 - mean_p, TOL);
    ck_assert(isnan(m.s_object) && isnan(m.s_region));
    ck_assert_double_eq_tol(m.e_curve[0], 0, TOL);
    ck_assert_double_eq_tol(m.e_curve[51], 0.25, TOL);
    ck_assert_double_eq_tol(m.e_curve[52], 0.5, TOL);
    ck_assert_double_eq_tol(m.e_curve[153], 0.5, TOL);
    ck_assert_double_eq_tol(m.e_curve[154], 0.75, TOL);
    ck_assert_double_eq_tol(m.e_curve[230], 1, TOL);
    ck_assert_double_eq_tol(m.e_mean, 146.75 / 256, TOL);
    ck_assert_double_eq_tol(m.e_max, 1, TOL);
    ck_assert_double_eq_tol(m.e_adaptive, 0.75, TOL);
    ck_assert_double_eq_tol(m.wfm, 0, TOL);
    ck_assert_double_eq_tol(m.iou, 0, TOL);
    ck_assert_double_eq_tol(m.dice, 0, TOL);
    ck_assert_double_eq_tol(m.mae, mean_p, TOL);

    /* Nothing predicted on an empty GT: IoU = Dice = 1 (both empty), S = 1, E = 1 from
     * t = 1 (E(0) = 0: floor(255·0) >= 0 makes every pixel foreground), F still 0. */
    fill(P, 16, 0.0f);
    m = image(P, G, 4, 4);
    ck_assert_double_eq_tol(m.iou, 1, TOL);
    ck_assert_double_eq_tol(m.dice, 1, TOL);
    ck_assert_double_eq_tol(m.s_measure, 1, TOL);
    ck_assert_double_eq_tol(m.e_mean, 255.0 / 256, TOL);
    ck_assert_double_eq_tol(m.wfm, 0, TOL);
}
END_TEST

START_TEST(gt_all_one) {
    /* G = 1, the same four levels. S = mean(P) = 0.425. E = (pixels predicted
     * foreground)/16: t = 0: 1; 1..51: 0.75; 52..153: 0.5; 154..229: 0.25; 230..: 0.
     * Mean = (1 + 51·0.75 + 102·0.5 + 76·0.25)/256 = 109.25/256; adaptive (>= 0.85): 0.25.
     * IoU = 8/16, Dice = 16/24, MAE = mean(1 - P) = 0.575. */
    float P[16], G[16];
    four_levels(P);
    fill(G, 16, 1.0f);
    ml_segm m = image(P, G, 4, 4);
    const double mean_p = ((double)0.2f + (double)0.6f + (double)0.9f) / 4;
    ck_assert_double_eq_tol(m.s_measure, mean_p, TOL);
    ck_assert_double_eq_tol(m.e_curve[0], 1, TOL);
    ck_assert_double_eq_tol(m.e_curve[1], 0.75, TOL);
    ck_assert_double_eq_tol(m.e_curve[229], 0.25, TOL);
    ck_assert_double_eq_tol(m.e_curve[255], 0, TOL);
    ck_assert_double_eq_tol(m.e_mean, 109.25 / 256, TOL);
    ck_assert_double_eq_tol(m.e_adaptive, 0.25, TOL);
    ck_assert_double_eq_tol(m.iou, 0.5, TOL);
    ck_assert_double_eq_tol(m.dice, 2.0 / 3, TOL);
    ck_assert_double_eq_tol(m.mae, 1 - mean_p, TOL);

    /* Weighted F with P = 0.5: E = 0.5 everywhere, no background (Dst = 0, Et = E).
     * EA = 0.5 · (the share of the 7x7 kernel inside the 4x4 image); the Gaussian is a
     * product g(a)g(b)/S^2 with g(a) = exp(-a^2/50), S = sum of g over -3..3, so the share
     * is c(i)·c(j): c = (g0+g1+g2+g3)/S in rows/columns 0 and 3 (offsets 0..3 or -3..0),
     * c = (g1+g0+g1+g2)/S in 1 and 2. EA < E everywhere: Ew = EA, mean(Ew) =
     * 0.5·((c_edge + c_mid)/2)^2, R = 1 - mean(Ew), FPw = 0 so P = TPw/(TPw + eps) = 1,
     * F = 2R/(R + 1). S = 0.5; E: floor(127.5) = 127, so t <= 127 all foreground (E = 1)
     * and above none (0): mean 0.5, adaptive threshold min(1, 1) = 1: none, 0. */
    fill(P, 16, 0.5f);
    m = image(P, G, 4, 4);
    const double g1 = exp(-1.0 / 50), g2 = exp(-4.0 / 50), g3 = exp(-9.0 / 50);
    const double S = 1 + 2 * g1 + 2 * g2 + 2 * g3;
    const double c_edge = (1 + g1 + g2 + g3) / S, c_mid = (1 + 2 * g1 + g2) / S;
    const double R = 1 - 0.5 * ((c_edge + c_mid) / 2) * ((c_edge + c_mid) / 2);
    ck_assert_double_eq_tol(m.wfm, 2 * R / (R + 1), 1e-12);
    ck_assert_double_eq_tol(m.s_measure, 0.5, TOL);
    ck_assert_double_eq_tol(m.e_mean, 0.5, TOL);
    ck_assert_double_eq_tol(m.e_max, 1, TOL);
    ck_assert_double_eq_tol(m.e_adaptive, 0, TOL);
    ck_assert_double_eq_tol(m.iou, 1, TOL);
}
END_TEST

START_TEST(worked_4x4) {
    /* G: the centre 2x2 of a 4x4 image (rows and columns 1..2); P = 0.75 there, 0.25 elsewhere.
     *   G = 0 0 0 0     P = .25 .25 .25 .25
     *       0 1 1 0         .25 .75 .75 .25
     *       0 1 1 0         .25 .75 .75 .25
     *       0 0 0 0         .25 .25 .25 .25
     * IoU = Dice = 1 (P >= 0.5 is G), MAE = 0.25.
     * S_object: foreground x = 0.75, sigma = 0: 1.5/(0.5625 + 1) = 0.96; background 1 - P
     * = 0.75: 0.96. S_object = 0.25·0.96 + 0.75·0.96 = 0.96.
     * S_region: centroid columns (2 + 3)/2 = 2.5 in 1-based coordinates, round -> X = 3,
     * and Y = 3. Quadrants: top-left 3x3 (weight 9/16), top-right 3x1 (3/16), bottom-left
     * 1x3 (3/16), bottom-right 1x1 (1/16).
     *   top-left: 4 of 9 foreground, y = 4/9; P = 0.25 + 0.5·G so x = 17/36,
     *   sigma_x = sigma_y/4, sigma_xy = sigma_y/2: alpha = 2xy·sigma_y,
     *   beta = 1.25(x^2 + y^2)·sigma_y, score = 1.6xy/(x^2 + y^2) = 1.6·272/545.
     *   top-right, bottom-left: G = 0 and P = 0.25 constant: alpha = beta = 0: 1.
     *   bottom-right: one pixel, variances 0 (Matlab): 1. (PySODMetrics: 0/0 = NaN, S = 0.)
     * S_region = 9/16·(1.6·272/545) + 7/16; S = 0.5·0.96 + 0.5·S_region.
     * E: floor(255·0.25) = 63, floor(255·0.75) = 191. t <= 63: all foreground, 1/4;
     * t = 64..191: the map is G, phi = 1 everywhere: 1; t >= 192: none, 1/4.
     * Mean = (64/4 + 128 + 64/4)/256 = 0.625, max 1; adaptive: mean P = 0.375, threshold
     * 0.75: G, 1.
     * Weighted F: E = 0.25 everywhere, so Et = 0.25 and EA = 0.25·C on the foreground, C
     * the kernel's share inside the image, the same for the four centre pixels (offsets
     * -1..2 or -2..1 on each axis): C = ((g0 + 2g1 + g2)/S)^2. Ew = EA < E there.
     * Background: 8 pixels at distance 1, 4 corners at sqrt 2: B(d) = 2 - 0.5^(d/5).
     * TPw = 4 - 4·0.25C, FPw = 0.25(8·B(1) + 4·B(sqrt 2)), R = 1 - 0.25C,
     * P = TPw/(TPw + FPw), F = 2RP/(R + P). */
    float P[16], G[16];
    rect(G, 4, 4, 1, 2, 1, 2);
    for (int i = 0; i < 16; i++) P[i] = G[i] > 0.5f ? 0.75f : 0.25f;
    ml_segm m = image(P, G, 4, 4);
    ck_assert_double_eq_tol(m.iou, 1, TOL);
    ck_assert_double_eq_tol(m.dice, 1, TOL);
    ck_assert_double_eq_tol(m.mae, 0.25, TOL);
    ck_assert_double_eq_tol(m.s_object, 0.96, TOL);
    const double s_region = 9.0 / 16 * (1.6 * 272 / 545) + 7.0 / 16;
    ck_assert_double_eq_tol(m.s_region, s_region, TOL);
    ck_assert_double_eq_tol(m.s_measure, 0.5 * 0.96 + 0.5 * s_region, TOL);
    ck_assert_double_eq_tol(m.e_curve[63], 0.25, TOL);
    ck_assert_double_eq_tol(m.e_curve[64], 1, TOL);
    ck_assert_double_eq_tol(m.e_curve[191], 1, TOL);
    ck_assert_double_eq_tol(m.e_curve[192], 0.25, TOL);
    ck_assert_double_eq_tol(m.e_mean, 0.625, TOL);
    ck_assert_double_eq_tol(m.e_max, 1, TOL);
    ck_assert_double_eq_tol(m.e_adaptive, 1, TOL);
    const double g1 = exp(-1.0 / 50), g2 = exp(-4.0 / 50), g3 = exp(-9.0 / 50);
    const double S = 1 + 2 * g1 + 2 * g2 + 2 * g3;
    const double C = ((1 + 2 * g1 + g2) / S) * ((1 + 2 * g1 + g2) / S);
    const double B1 = 2 - pow(0.5, 1.0 / 5), B2 = 2 - pow(0.5, sqrt(2.0) / 5);
    const double tpw = 4 - C, fpw = 0.25 * (8 * B1 + 4 * B2);
    const double R = 1 - 0.25 * C, Pw = tpw / (tpw + fpw);
    ck_assert_double_eq_tol(m.wfm, 2 * R * Pw / (R + Pw), 1e-12);
}
END_TEST

START_TEST(centroid_rounds_half_away) {
    /* G on rows 1..2, columns 0..1 of a 4x4 image; P = G except 0.5 at row 0, column 2.
     * The 1-based centroid is column 1.5, row 2.5: Matlab's round gives X = 2, Y = 3
     * (PySODMetrics: np.round(0.5) + 1 = 1 and np.round(1.5) + 1 = 3).
     *   top-left rows 0..2 x columns 0..1 (weight 6/16): P = G: 1
     *   top-right rows 0..2 x columns 2..3 (6/16): G = 0, P not constant: alpha = 0,
     *     beta > 0: 0
     *   bottom-left, bottom-right row 3 (2/16 each): P = G = 0: alpha = beta = 0: 1
     * S_region = 10/16. (With X = 1 the top-right quadrant would take column 1 of G.) */
    float P[16], G[16];
    rect(G, 4, 4, 1, 2, 0, 1);
    memcpy(P, G, sizeof P);
    P[0 * 4 + 2] = 0.5f;
    ml_segm m = image(P, G, 4, 4);
    /* X = 2, Y = 3: weights 6/16, 6/16, 2/16, 2/16; scores 1, 0, 1, 1 */
    ck_assert_double_eq_tol(m.s_region, 10.0 / 16, TOL);
}
END_TEST

START_TEST(minmax_option) {
    /* P in [0.2, 0.6] rescaled to [0, 1] by its min and max: the metrics equal those of
     * the rescaled map without the option; a constant map is left as it is. */
    enum { H = 8, W = 8 };
    float P[H * W], Q[H * W], G[H * W];
    rect(G, H, W, 2, 5, 3, 6);
    tu_fill(P, H * W, 3, 0.2f, 0.6f);
    float lo = P[0], hi = P[0];
    for (int i = 0; i < H * W; i++) {
        lo = P[i] < lo ? P[i] : lo;
        hi = P[i] > hi ? P[i] : hi;
    }
    for (int i = 0; i < H * W; i++) Q[i] = (float)(((double)P[i] - lo) / ((double)hi - lo));
    ml_segm_opts o = ml_segm_opts_default();
    ck_assert_int_eq(o.minmax, 0);
    o.minmax = 1;
    ml_segm a, b;
    ck_assert_int_eq(ml_segm_image(P, G, H, W, &o, &a), ML_OK);
    b = image(Q, G, H, W);
    ck_assert_double_eq_tol(a.mae, b.mae, 1e-7);
    ck_assert_double_eq_tol(a.s_measure, b.s_measure, 1e-6);
    ck_assert_double_eq_tol(a.wfm, b.wfm, 1e-6);
    ck_assert_double_eq_tol(a.iou, b.iou, TOL);
    fill(P, H * W, 0.3f);
    ck_assert_int_eq(ml_segm_image(P, G, H, W, &o, &a), ML_OK);
    ck_assert_double_eq_tol(a.mae, (0.3f * 48 + (1 - 0.3f) * 16) / 64, 1e-7);
}
END_TEST

/* ------------------------------------------------------------------ reference values */

enum { NOISE, DISC, SHIFTED, EDGE, THIN, QUANT, HALF, BLOCKS, ONE };

typedef struct ref_case {
    int kind, H, W;
    unsigned seed;
    int minmax;
} ref_case;

/* the same table as CASES in tests/fixtures/segmetrics/reference.py */
static const ref_case CASES[] = {
    {NOISE, 32, 32, 1, 0},  {DISC, 64, 64, 2, 0},  {SHIFTED, 64, 64, 3, 0}, {EDGE, 32, 32, 4, 0},
    {THIN, 32, 32, 5, 0},   {QUANT, 32, 32, 6, 0}, {HALF, 32, 32, 7, 0},    {BLOCKS, 64, 64, 8, 0},
    {DISC, 24, 40, 9, 1},   {NOISE, 1, 17, 10, 0}, {NOISE, 13, 1, 11, 0},   {ONE, 32, 32, 12, 0},
    {NOISE, 64, 64, 13, 1},
};
#define NCASES ((int)(sizeof CASES / sizeof CASES[0]))

typedef struct ref_values {
    double iou, dice, mae, s_measure, s_object, s_region, e_mean, e_max, e_adaptive, wfm;
    double curve[4]; /* e_curve at CURVE_T */
} ref_values;
static const int CURVE_T[4] = {1, 64, 128, 200};

/* generated by tests/fixtures/segmetrics/reference.py: moelab's variant of PySODMetrics */
static const ref_values REF[NCASES] = {
    /* 0: noise 32x32 seed 1 */
    {0.23929098966026588, 0.38617401668653156, 0.5011258900631219, 0.32262082648639373, 0.6499451340937563, -0.004703481120968883, 0.39367760152603587, 0.5770865106782512, 0.25, 0.44903469449756056,
     {0.24005494831406982, 0.29006932918900225, 0.46529715436004027, 0.5644906911844323}},
    /* 1: disc 64x64 seed 2 */
    {0.8358381502890173, 0.9105793450881612, 0.12292747862753828, 0.8616089968405161, 0.9100522290285689, 0.8131657646524633, 0.7130364805041204, 0.9681144392900094, 0.9275560564016867, 0.6712571660364514,
     {0.614941201862506, 0.8037104251648917, 0.9680942707055588, 0.5293707849277179}},
    /* 2: shifted 64x64 seed 3 */
    {0.7087155963302753, 0.8295302013422818, 0.11797488414524793, 0.8384716707056031, 0.9061716730357643, 0.770771668375442, 0.7204975270756242, 0.9442927268010244, 0.9187721067238249, 0.6727175408010729,
     {0.6962000566720848, 0.8611607328758613, 0.9348723834246837, 0.5418139322556019}},
    /* 3: edge 32x32 seed 4 */
    {1.0, 1.0, 0.14695404473610552, 0.5020609987134216, 0.9406952713523944, 0.06342672607444878, 0.6076477250138963, 0.9999999999985756, 0.9999999999985756, 0.053583331857877316,
     {0.005729010311840886, 0.3049235846101034, 0.9999999999985756, 0.5058049984181769}},
    /* 4: thin 32x32 seed 5 */
    {0.9148936170212766, 0.9555555555555556, 0.2583207603893243, 0.5270688889429569, 0.87541494604754, 0.17872283183837379, 0.4985430432799859, 0.9931477576990271, 0.9823697197899498, 0.15855355905370122,
     {0.21146207269557538, 0.2715410845980796, 0.9931477576990271, 0.6647298490186757}},
    /* 5: quant 32x32 seed 6 */
    {1.0, 1.0, 0.2537032764739706, 0.7970015967460414, 0.8779416268652556, 0.7160615666268273, 0.6078433961190635, 0.9999999999999993, 0.5428874301143776, 0.6677465106213908,
     {0.24451020391189635, 0.5404074518189184, 0.9999999999999993, 0.6302778856920533}},
    /* 6: half 32x32 seed 7 */
    {1.0, 1.0, 0.30557519349531503, 0.4579978667526697, 0.8701660496368618, 0.04582968386847752, 0.5003188511935448, 0.9999999999995524, 0.9320903813932685, 0.045300828695335665,
     {0.25, 0.23718125702307422, 0.9999999999995524, 0.749279995661197}},
    /* 7: blocks 64x64 seed 8 */
    {0.7787828947368421, 0.8756356911696718, 0.29174872992007295, 0.7185703232478782, 0.8719373233293274, 0.565203323166429, 0.5074495838368998, 0.9617582079543954, 0.4686999880805183, 0.526055153381924,
     {0.25, 0.5148246469829377, 0.9120022450497867, 0.2836841293495951}},
    /* 8: disc 24x40 seed 9 minmax */
    {0.8688524590163934, 0.9298245614035088, 0.07236854373550158, 0.8881291627743975, 0.934388897848966, 0.8418694276998289, 0.7436993084543779, 0.9864606779624382, 0.8500066539880183, 0.6934436248365398,
     {0.6837449325136048, 0.8725685009773788, 0.9864606779624382, 0.5938164702337048}},
    /* 9: noise 1x17 seed 10 */
    {0.3333333333333333, 0.5, 0.49356444793588977, 0.35326212696289133, 0.6633091924814789, 0.043215061444303746, 0.39645712777548164, 0.6473807486149269, 0.25, 0.6668925839661405,
     {0.25, 0.2345640258118807, 0.514734821935522, 0.5202604783542677}},
    /* 10: noise 13x1 seed 11 */
    {0.3333333333333333, 0.5, 0.38876278125322783, 0.47099150306192294, 0.7286458095326744, 0.21333719659117142, 0.48984095475211586, 0.853926437168587, 0.25, 0.5323991767632871,
     {0.25, 0.3618154577883471, 0.6346285453783043, 0.752018770484219}},
    /* 11: one 32x32 seed 12 */
    {1.0, 1.0, 0.10031759582966515, 0.4872975609113927, 0.9632241331935354, 0.011370988629250064, 0.6396377904501955, 0.9999999998836984, 0.9999999998836984, 0.0078127454496973,
     {0.1926193402069034, 0.9999999998836984, 0.9999999998836984, 0.25}},
    /* 12: noise 64x64 seed 13 minmax */
    {0.24267161410018553, 0.39056434756643776, 0.4998768563934006, 0.325558244161298, 0.649133301460834, 0.0019831868617619704, 0.4015338419189573, 0.5935828981099107, 0.2503744153879704, 0.43962243921033567,
     {0.24514929241521727, 0.28450144992527016, 0.4628015191811583, 0.5853569755402693}},
};
/* the set: the cases without minmax, mean over images, e_max of the mean curve */
static const ref_values REF_SET = {0.7403807195185766, 0.8143158918038366, 0.2709977348063163, 0.576086578124699, 0.841591217145196, 0.3105819391042016, 0.552268189229724, 0.8566161071304316, 0.6838523347623545, 0.4046684810113126,
    {0.29141062127044337, 0.49274527234061766, 0.8566161071304316, 0.5447028650314488}};

static double clamp01(double x) { return x < 0 ? 0 : (x > 1 ? 1 : x); }

/* reference.py make_case(): the same integer and double arithmetic, then one float cast */
static void make_case(const ref_case *c, float *P, float *G) {
    const int H = c->H, W = c->W, n = H * W;
    float *uf = malloc(sizeof(float) * (size_t)n), *vf = malloc(sizeof(float) * (size_t)n);
    ck_assert(uf && vf);
    tu_fill(uf, (size_t)n, c->seed, 0.0f, 1.0f); /* k / 2^24 exactly */
    tu_fill(vf, (size_t)n, c->seed + 1000, 0.0f, 1.0f);
    const int cy = H * 9 / 20, cx = W * 11 / 20, r = H / 4;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) {
            const int k = i * W + j;
            const double u = uf[k], v = vf[k];
            int g = 0;
            double p = 0;
            switch (c->kind) {
            case NOISE:
                g = u < 0.3;
                p = v;
                break;
            case DISC: {
                int d2 = (i - cy) * (i - cy) + (j - cx) * (j - cx);
                g = d2 <= r * r;
                double t = (double)(r * r - d2) / (double)(r * r);
                p = clamp01(0.5 + 0.4 * t + 0.3 * (v - 0.5));
                break;
            }
            case SHIFTED: {
                int d2 = (i - cy) * (i - cy) + (j - cx) * (j - cx);
                g = d2 <= r * r;
                int rr = (r - 1) * (r - 1), e2 = (i - cy - 2) * (i - cy - 2) + (j - cx + 3) * (j - cx + 3);
                double t = (double)(rr - e2) / (double)rr;
                double fp = i >= 2 && i <= 6 && j >= 2 && j <= 6 ? 0.35 : 0.0;
                p = clamp01(0.5 + 0.4 * t + 0.3 * (v - 0.5) + fp);
                break;
            }
            case EDGE:
                g = j == W - 1 && i >= H / 4 && i <= H / 2;
                p = 0.3 * v + (g ? 0.6 : 0.0);
                break;
            case THIN:
                g = i == j || (i == H / 2 && j >= W / 4 && j < 3 * W / 4);
                p = (g ? 0.45 : 0.0) + 0.5 * v;
                break;
            case QUANT: {
                g = (i / 4 + j / 4) % 3 == 0;
                int q = (int)(v * 256);
                q = g ? (q / 2 + 128 < 255 ? q / 2 + 128 : 255) : q / 2;
                p = q / 255.0;
                break;
            }
            case HALF:
                g = i >= 9 && i <= 12 && j >= 5 && j <= 8;
                p = clamp01((g ? 0.55 : 0.1) + 0.4 * v);
                break;
            case BLOCKS:
                g = (double)uf[(i / 8) * W + j / 8] < 0.4;
                p = clamp01(0.25 + (g ? 0.35 : 0.0) + 0.4 * (v - 0.5));
                break;
            case ONE:
                g = i == H / 3 && j == W / 2;
                p = 0.2 * v + (g ? 0.7 : 0.0);
                break;
            }
            P[k] = (float)p;
            G[k] = g ? 1.0f : 0.0f;
        }
    free(uf);
    free(vf);
}

static double worst_rel; /* the largest relative difference seen, printed at the end */

static void expect(const char *what, int n, double got, double want) {
    if (isnan(want)) {
        ck_assert_msg(isnan(got), "case %d %s: %.17g, expected NaN", n, what, got);
        return;
    }
    double rel = fabs(got - want) / (fabs(want) > 1e-3 ? fabs(want) : 1e-3);
    if (rel > worst_rel) worst_rel = rel;
    /* measured: 1e-15 (summation order; numpy sums pairwise) */
    ck_assert_msg(rel <= 1e-10, "case %d %s: %.17g, reference %.17g", n, what, got, want);
}

static void expect_all(int n, const ml_segm *m, const ref_values *r) {
    expect("iou", n, m->iou, r->iou);
    expect("dice", n, m->dice, r->dice);
    expect("mae", n, m->mae, r->mae);
    expect("s_measure", n, m->s_measure, r->s_measure);
    expect("s_object", n, m->s_object, r->s_object);
    expect("s_region", n, m->s_region, r->s_region);
    expect("e_mean", n, m->e_mean, r->e_mean);
    expect("e_max", n, m->e_max, r->e_max);
    expect("e_adaptive", n, m->e_adaptive, r->e_adaptive);
    expect("wfm", n, m->wfm, r->wfm);
    for (int k = 0; k < 4; k++) expect("e_curve", n, m->e_curve[CURVE_T[k]], r->curve[k]);
}

START_TEST(reference_values) {
    ml_segm_acc *set = ml_segm_acc_new(NULL);
    ck_assert_ptr_nonnull(set);
    for (int n = 0; n < NCASES; n++) {
        const ref_case *c = &CASES[n];
        float *P = malloc(sizeof(float) * (size_t)(c->H * c->W)), *G = malloc(sizeof(float) * (size_t)(c->H * c->W));
        ck_assert(P && G);
        make_case(c, P, G);
        ml_segm_opts o = {.minmax = c->minmax};
        ml_segm m;
        ck_assert_msg(ml_segm_image(P, G, c->H, c->W, &o, &m) == ML_OK, "%s", ml_error());
        expect_all(n, &m, &REF[n]);
        if (!c->minmax) {
            ml_segm a;
            ck_assert_int_eq(ml_segm_acc_add(set, P, G, c->H, c->W, &a), ML_OK);
            ck_assert_double_eq(a.wfm, m.wfm); /* the accumulator's scratch changes nothing */
            ck_assert_double_eq(a.s_measure, m.s_measure);
        }
        free(P);
        free(G);
    }
    ml_segm s;
    ck_assert_int_eq(ml_segm_compute(set, &s), ML_OK);
    ck_assert_int_eq(s.images, 11);
    expect_all(-1, &s, &REF_SET);
    ml_segm_acc_free(set);
    printf("segmetrics: %d reference cases, largest relative difference from reference.py %.2g\n", NCASES,
           worst_rel);
}
END_TEST

/* ------------------------------------------------------------------ edge cases */

START_TEST(thin_and_single_pixel_maps) {
    /* 1x1: G = P = 1 is a full GT (S = mean P = 1, E = 1 at every threshold: H·W = 1
     * divides, where PySODMetrics divides by eps), F = 1. G = P = 0: S = 1, E(0) = 0
     * (every pixel counts as foreground at t = 0) and 1 above, F = 0 (empty GT). */
    float one = 1.0f, zero = 0.0f;
    ml_segm m = image(&one, &one, 1, 1);
    ck_assert_double_eq_tol(m.s_measure, 1, TOL);
    ck_assert_double_eq_tol(m.e_mean, 1, TOL);
    ck_assert_double_eq_tol(m.e_adaptive, 1, TOL);
    ck_assert_double_eq_tol(m.wfm, 1, TOL);
    ck_assert_double_eq_tol(m.iou, 1, TOL);
    m = image(&zero, &zero, 1, 1);
    ck_assert_double_eq_tol(m.s_measure, 1, TOL);
    ck_assert_double_eq_tol(m.e_mean, 255.0 / 256, TOL);
    ck_assert_double_eq_tol(m.e_adaptive, 0, TOL); /* threshold 0: P >= 0 is foreground */
    ck_assert_double_eq_tol(m.wfm, 0, TOL);
    ck_assert_double_eq_tol(m.dice, 1, TOL);
    /* A perfect 1xW and Hx1 map: S, E max, F are 1; every value finite and in range. */
    float P[9], G[9];
    for (int i = 0; i < 9; i++) G[i] = P[i] = i >= 3 && i <= 5 ? 1.0f : 0.0f;
    for (int k = 0; k < 2; k++) {
        m = k ? image(P, G, 9, 1) : image(P, G, 1, 9);
        ck_assert_double_eq_tol(m.s_measure, 1, TOL);
        ck_assert_double_eq_tol(m.e_max, 1, TOL);
        ck_assert_double_eq_tol(m.wfm, 1, TOL);
    }
    /* The GT centroid on the last column: the right quadrants are empty (weight 0). */
    float P2[16], G2[16];
    rect(G2, 4, 4, 0, 3, 3, 3);
    memcpy(P2, G2, sizeof P2);
    m = image(P2, G2, 4, 4);
    ck_assert_double_eq_tol(m.s_measure, 1, TOL);
}
END_TEST

START_TEST(bad_inputs) {
    float P[12], G[12];
    fill(P, 12, 0.5f);
    rect(G, 3, 4, 1, 1, 1, 2);
    ml_segm m;
    P[6] = 1.5f;
    ck_assert_int_eq(ml_segm_image(P, G, 3, 4, NULL, &m), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "P at row 1, column 2") && strstr(ml_error(), "1.5") &&
                      strstr(ml_error(), "hint: pass the sigmoid"),
                  "%s", ml_error());
    P[6] = -0.25f;
    ck_assert_int_eq(ml_segm_image(P, G, 3, 4, NULL, &m), ML_ERR);
    P[6] = NAN;
    ck_assert_int_eq(ml_segm_image(P, G, 3, 4, NULL, &m), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "nan"), "%s", ml_error());
    P[6] = INFINITY;
    ck_assert_int_eq(ml_segm_image(P, G, 3, 4, NULL, &m), ML_ERR);
    P[6] = 0.5f;
    G[11] = 255.0f;
    ck_assert_int_eq(ml_segm_image(P, G, 3, 4, NULL, &m), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "G at row 2, column 3") && strstr(ml_error(), "divide 0/255 masks"), "%s",
                  ml_error());
    G[11] = NAN;
    ck_assert_int_eq(ml_segm_image(P, G, 3, 4, NULL, &m), ML_ERR);
    G[11] = 0.0f;
    ck_assert_int_eq(ml_segm_image(P, G, 0, 4, NULL, &m), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "0x4"), "%s", ml_error());
    ck_assert_int_eq(ml_segm_image(P, G, 3, -1, NULL, &m), ML_ERR);
    ck_assert_int_eq(ml_segm_image(NULL, G, 3, 4, NULL, &m), ML_ERR);
    ck_assert_int_eq(ml_segm_image(P, NULL, 3, 4, NULL, &m), ML_ERR);
    ck_assert_int_eq(ml_segm_image(P, G, 3, 4, NULL, NULL), ML_ERR);
    ck_assert_int_eq(ml_segm_image(P, G, 3, 4, NULL, &m), ML_OK);
    /* an accumulator adds nothing on error */
    ml_segm_acc *a = ml_segm_acc_new(NULL);
    P[0] = NAN;
    ck_assert_int_eq(ml_segm_acc_add(a, P, G, 3, 4, NULL), ML_ERR);
    ck_assert_int_eq(ml_segm_acc_images(a), 0);
    ck_assert_int_eq(ml_segm_compute(a, &m), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "no image"), "%s", ml_error());
    ml_segm_acc_free(a);
    ml_segm_acc_free(NULL);
}
END_TEST

/* ------------------------------------------------------------------ distance transform */

START_TEST(edt_matches_brute_force) {
    /* Random masks of many shapes and densities: nearest pixel and squared distance equal
     * the brute-force minimum with ties to the smallest column, then row (scipy's rule). */
    enum { MAXN = 23 * 23 };
    uint8_t fg[MAXN];
    int32_t near[MAXN], d2[MAXN];
    float r[MAXN];
    int checked = 0;
    for (unsigned trial = 0; trial < 400; trial++) {
        const int H = 1 + (int)(trial * 7 % 23), W = 1 + (int)(trial * 13 % 23);
        const float dens[4] = {0.02f, 0.1f, 0.3f, 0.7f};
        tu_fill(r, (size_t)(H * W), trial + 1, 0.0f, 1.0f);
        int any = 0;
        for (int i = 0; i < H * W; i++) {
            fg[i] = r[i] < dens[trial % 4];
            any |= fg[i];
        }
        ck_assert_int_eq(ml_segm_edt(fg, H, W, near, d2), ML_OK);
        for (int i = 0; i < H * W; i++) {
            if (!any) {
                ck_assert_int_eq(near[i], -1);
                ck_assert_int_eq(d2[i], INT32_MAX);
                continue;
            }
            int best = -1, bd = 0;
            const int y = i / W, x = i % W;
            for (int c = 0; c < W; c++) /* columns first, rows second: the first minimum wins */
                for (int rr = 0; rr < H; rr++) {
                    if (!fg[rr * W + c]) continue;
                    int d = (rr - y) * (rr - y) + (c - x) * (c - x);
                    if (best < 0 || d < bd) best = rr * W + c, bd = d;
                }
            ck_assert_msg(near[i] == best && d2[i] == bd, "%dx%d pixel %d: nearest %d (d2 %d), expected %d (d2 %d)",
                          H, W, i, near[i], d2[i], best, bd);
            checked++;
        }
    }
    ck_assert_int_gt(checked, 50000);
    /* one row, one column, errors */
    uint8_t line[5] = {1, 0, 0, 0, 1};
    ck_assert_int_eq(ml_segm_edt(line, 1, 5, near, d2), ML_OK);
    const int32_t want_near[5] = {0, 0, 0, 4, 4}, want_d2[5] = {0, 1, 4, 1, 0}; /* pixel 2: tie -> column 0 */
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(near[i], want_near[i]);
        ck_assert_int_eq(d2[i], want_d2[i]);
    }
    ck_assert_int_eq(ml_segm_edt(line, 5, 1, near, NULL), ML_OK);
    for (int i = 0; i < 5; i++) ck_assert_int_eq(near[i], want_near[i]); /* row 2: tie -> row 0 */
    ck_assert_int_eq(ml_segm_edt(line, 0, 5, near, d2), ML_ERR);
    ck_assert_int_eq(ml_segm_edt(NULL, 1, 5, near, d2), ML_ERR);
}
END_TEST

/* ------------------------------------------------------------------ accumulator */

static void same(const ml_segm *a, const ml_segm *b) {
    ck_assert_int_eq(a->images, b->images);
    ck_assert_double_eq(a->iou, b->iou);
    ck_assert_double_eq(a->dice, b->dice);
    ck_assert_double_eq(a->mae, b->mae);
    ck_assert_double_eq(a->s_measure, b->s_measure);
    ck_assert(a->s_object == b->s_object || (isnan(a->s_object) && isnan(b->s_object)));
    ck_assert(a->s_region == b->s_region || (isnan(a->s_region) && isnan(b->s_region)));
    ck_assert_double_eq(a->e_mean, b->e_mean);
    ck_assert_double_eq(a->e_max, b->e_max);
    ck_assert_double_eq(a->e_adaptive, b->e_adaptive);
    ck_assert_double_eq(a->wfm, b->wfm);
    for (int t = 0; t < ML_SEGM_THRESHOLDS; t++) ck_assert_double_eq(a->e_curve[t], b->e_curve[t]);
}

/* B images of 16x16: discs of varying radius and noise; images 0, 5, 10, ... have an
 * empty GT */
static void batch_maps(float *P, float *G, int B) {
    for (int b = 0; b < B; b++) {
        float *p = P + b * 256, *g = G + b * 256;
        tu_fill(p, 256, 100 + (unsigned)b, 0.0f, 0.5f);
        for (int i = 0; i < 256; i++) {
            int y = i / 16, x = i % 16;
            g[i] = (y - 8) * (y - 8) + (x - 7) * (x - 7) < (b % 5) * 6 ? 1.0f : 0.0f;
            if (g[i] > 0.5f) p[i] += 0.45f;
        }
    }
}

START_TEST(accumulator_mean_and_max) {
    enum { B = 7 };
    float P[B * 256], G[B * 256];
    batch_maps(P, G, B);
    ml_segm_acc *a = ml_segm_acc_new(NULL);
    ml_segm per[B], mean;
    for (int b = 0; b < B; b++) ck_assert_int_eq(ml_segm_acc_add(a, P + b * 256, G + b * 256, 16, 16, &per[b]), ML_OK);
    ck_assert_int_eq(ml_segm_acc_images(a), B);
    ck_assert_int_eq(ml_segm_compute(a, &mean), ML_OK);
    double iou = 0, sm = 0, wf = 0, em = 0, emax_mean = 0, so = 0;
    int nso = 0;
    for (int b = 0; b < B; b++) {
        iou += per[b].iou / B;
        sm += per[b].s_measure / B;
        wf += per[b].wfm / B;
        em += per[b].e_mean / B;
        emax_mean += per[b].e_max / B;
        if (!isnan(per[b].s_object)) so += per[b].s_object, nso++;
    }
    ck_assert_int_eq(nso, B - 2); /* images 0 and 5: empty GT, no S terms */
    ck_assert_double_eq_tol(mean.iou, iou, 1e-12);
    ck_assert_double_eq_tol(mean.s_measure, sm, 1e-12);
    ck_assert_double_eq_tol(mean.wfm, wf, 1e-12);
    ck_assert_double_eq_tol(mean.e_mean, em, 1e-12);
    ck_assert_double_eq_tol(mean.s_object, so / nso, 1e-12);
    /* e_max is the max of the mean curve, at most the mean of the per-image maxima */
    ck_assert(mean.e_max <= emax_mean + 1e-12);
    ck_assert(mean.e_max >= mean.e_mean);
    ml_segm_acc_reset(a);
    ck_assert_int_eq(ml_segm_acc_images(a), 0);
    ml_segm_acc_free(a);
}
END_TEST

START_TEST(accumulator_text_round_trip) {
    /* Interrupted after 3 images, resumed from the text: the same sums, bit for bit. */
    enum { B = 6 };
    float P[B * 256], G[B * 256];
    batch_maps(P, G, B);
    ml_segm_acc *a = ml_segm_acc_new(NULL), *b = ml_segm_acc_new(NULL);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(ml_segm_acc_add(a, P + i * 256, G + i * 256, 16, 16, NULL), ML_OK);
    char *txt = ml_segm_acc_to_text(a);
    ck_assert_ptr_nonnull(txt);
    ck_assert(strncmp(txt, "segm1 0 3 ", 10) == 0);
    ck_assert_int_eq(ml_segm_acc_from_text(b, txt), ML_OK);
    for (int i = 3; i < B; i++) {
        ck_assert_int_eq(ml_segm_acc_add(a, P + i * 256, G + i * 256, 16, 16, NULL), ML_OK);
        ck_assert_int_eq(ml_segm_acc_add(b, P + i * 256, G + i * 256, 16, 16, NULL), ML_OK);
    }
    ml_segm ma, mb;
    ck_assert_int_eq(ml_segm_compute(a, &ma), ML_OK);
    ck_assert_int_eq(ml_segm_compute(b, &mb), ML_OK);
    same(&ma, &mb);
    /* refusals leave the accumulator as it was */
    ck_assert_int_eq(ml_segm_acc_from_text(b, "segm1 0 3"), ML_ERR);
    ck_assert_int_eq(ml_segm_acc_from_text(b, "health 1 2"), ML_ERR);
    txt[strlen(txt) - 3] = 'x';
    ck_assert_int_eq(ml_segm_acc_from_text(b, txt), ML_ERR);
    ml_segm_opts o = {.minmax = 1};
    ml_segm_acc *c = ml_segm_acc_new(&o);
    free(txt);
    txt = ml_segm_acc_to_text(a);
    ck_assert_int_eq(ml_segm_acc_from_text(c, txt), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "minmax=0"), "%s", ml_error());
    ck_assert_int_eq(ml_segm_acc_images(b), B);
    ck_assert_int_eq(ml_segm_compute(b, &mb), ML_OK);
    same(&ma, &mb);
    free(txt);
    ml_segm_acc_free(a);
    ml_segm_acc_free(b);
    ml_segm_acc_free(c);
}
END_TEST

START_TEST(batch_equals_sequential) {
    enum { B = 9 };
    float P[B * 256], G[B * 256];
    batch_maps(P, G, B);
    ml_segm_acc *a = ml_segm_acc_new(NULL), *b = ml_segm_acc_new(NULL), *c = ml_segm_acc_new(NULL);
    ml_segm per_a[B], per_b[B], ma, mb, mc;
    for (int i = 0; i < B; i++) ck_assert_int_eq(ml_segm_acc_add(a, P + i * 256, G + i * 256, 16, 16, &per_a[i]), ML_OK);
    ck_assert_int_eq(ml_segm_acc_add_batch(b, P, G, B, 16, 16, per_b), ML_OK);
    for (int i = 0; i < B; i++) {
        ml_segm one;
        ck_assert_int_eq(ml_segm_image(P + i * 256, G + i * 256, 16, 16, NULL, &one), ML_OK);
        same(&per_a[i], &per_b[i]);
        same(&per_a[i], &one);
        ml_segm_acc_add_values(c, &one);
    }
    ck_assert_int_eq(ml_segm_compute(a, &ma), ML_OK);
    ck_assert_int_eq(ml_segm_compute(b, &mb), ML_OK);
    ck_assert_int_eq(ml_segm_compute(c, &mc), ML_OK);
    same(&ma, &mb);
    same(&ma, &mc);
    /* a bad map anywhere: nothing added, the message names the image */
    P[4 * 256 + 10] = NAN;
    ck_assert_int_eq(ml_segm_acc_add_batch(b, P, G, B, 16, 16, NULL), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "image 4 of the batch"), "%s", ml_error());
    ck_assert_int_eq(ml_segm_acc_images(b), B);
    ck_assert_int_eq(ml_segm_acc_add_batch(b, P, G, 0, 16, 16, NULL), ML_OK);
    ml_segm_acc_free(a);
    ml_segm_acc_free(b);
    ml_segm_acc_free(c);
}
END_TEST

/* ------------------------------------------------------------------ cost */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

START_TEST(cost_per_image) {
    /* Every metric of a 64x64 image (a soft, shifted disc with a false positive: about 12%
     * foreground) through one accumulator; the median of 7 rounds of 200 images, so that a
     * busy machine does not decide. Must be well under 1 ms. */
    const ref_case c = {SHIFTED, 64, 64, 3, 0};
    float P[64 * 64], G[64 * 64];
    make_case(&c, P, G);
    ml_segm_acc *a = ml_segm_acc_new(NULL);
    double t[7];
    for (int r = 0; r < 7; r++) {
        double t0 = now_s();
        for (int i = 0; i < 200; i++) ck_assert_int_eq(ml_segm_acc_add(a, P, G, 64, 64, NULL), ML_OK);
        t[r] = (now_s() - t0) / 200;
    }
    for (int i = 1; i < 7; i++) /* insertion sort */
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    /* a dense foreground costs more (the 7x7 filter runs on foreground pixels) */
    float Gf[64 * 64];
    fill(Gf, 64 * 64, 0.0f);
    rect(Gf, 64, 64, 4, 59, 4, 59);
    double t0 = now_s();
    for (int i = 0; i < 200; i++) ck_assert_int_eq(ml_segm_acc_add(a, P, Gf, 64, 64, NULL), ML_OK);
    double dense = (now_s() - t0) / 200;
    printf("segmetrics: %.1f us per 64x64 image (median of 7 x 200; fastest %.1f), %.1f us at 77%% foreground\n",
           t[3] * 1e6, t[0] * 1e6, dense * 1e6);
    /* the bound holds at native speed, not under the sanitizers or valgrind (make asan and
       make valgrind set these) */
    if (!getenv("MOELAB_SANITIZER_LOGS") && !getenv("MOELAB_UNDER_VALGRIND"))
        ck_assert_msg(t[3] < 1e-3, "%.1f us per 64x64 image", t[3] * 1e6);
    ml_segm_acc_free(a);
}
END_TEST

static Suite *segmetrics_suite(void) {
    Suite *s = suite_create("segmetrics");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, perfect_prediction);
    tcase_add_test(tc, all_wrong);
    tcase_add_test(tc, all_zero_prediction);
    tcase_add_test(tc, gt_all_zero);
    tcase_add_test(tc, gt_all_one);
    tcase_add_test(tc, worked_4x4);
    tcase_add_test(tc, centroid_rounds_half_away);
    tcase_add_test(tc, minmax_option);
    tcase_add_test(tc, reference_values);
    tcase_add_test(tc, thin_and_single_pixel_maps);
    tcase_add_test(tc, bad_inputs);
    tcase_add_test(tc, edt_matches_brute_force);
    tcase_add_test(tc, accumulator_mean_and_max);
    tcase_add_test(tc, accumulator_text_round_trip);
    tcase_add_test(tc, batch_equals_sequential);
    tcase_add_test(tc, cost_per_image);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(segmetrics_suite()); }
