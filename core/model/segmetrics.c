/* segmetrics.c — segmentation metrics of the COD field (see segmetrics.h, docs/metrics.md
 * "Segmentation metrics"). Every formula names the reference function it follows. */
#include "model/segmetrics.h"
#include "base/common.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* numpy's np.spacing(1) and Matlab's eps: the references' guard in every denominator */
#define SEG_EPS 2.220446049250313e-16
#define SEG_MAX_SIDE 32767 /* squared distances and pixel indices stay in int32 */
#define NT ML_SEGM_THRESHOLDS

ml_segm_opts ml_segm_opts_default(void) {
    ml_segm_opts o = {0};
    return o;
}

/* ------------------------------------------------------------------ workspace */

/* Scratch of one image: grown to the largest image seen, reused by an accumulator. */
typedef struct seg_ws {
    size_t cap;       /* pixels */
    int cap_line;     /* max(H, W) + 1 */
    double *p;        /* (H, W) P in double, rescaled when opts.minmax */
    uint8_t *g;       /* (H, W) 1 where G > 0.5 */
    int32_t *nearest; /* (H, W) nearest foreground pixel (EDT) */
    int32_t *d2;      /* (H, W) squared distance to it */
    int32_t *colrow;  /* (H, W) EDT pass 1: nearest foreground row in the pixel's column */
    double *et;       /* (H, W) the error at the nearest foreground pixel */
    int32_t *v;       /* (max(H, W) + 1) EDT lower envelope: sites */
    int64_t *zn, *zd; /* (max(H, W) + 1) its boundaries, as fractions zn/zd (zd > 0) */
} seg_ws;

static void ws_free(seg_ws *w) {
    if (!w) return;
    free(w->p);
    free(w->g);
    free(w->nearest);
    free(w->d2);
    free(w->colrow);
    free(w->et);
    free(w->v);
    free(w->zn);
    free(w->zd);
    memset(w, 0, sizeof *w);
}

/* Makes room for an H x W image; 0 when out of memory (no message: also called on
 * OpenMP threads, and the last error is one global). */
static int ws_grow(seg_ws *w, int H, int W) {
    size_t n = (size_t)H * (size_t)W;
    int line = (H > W ? H : W) + 1;
    if (n <= w->cap && line <= w->cap_line) return 1;
    if (n < w->cap) n = w->cap;
    if (line < w->cap_line) line = w->cap_line;
    ws_free(w);
    w->p = malloc(n * sizeof *w->p);
    w->g = malloc(n * sizeof *w->g);
    w->nearest = malloc(n * sizeof *w->nearest);
    w->d2 = malloc(n * sizeof *w->d2);
    w->colrow = malloc(n * sizeof *w->colrow);
    w->et = malloc(n * sizeof *w->et);
    w->v = malloc((size_t)line * sizeof *w->v);
    w->zn = malloc((size_t)line * sizeof *w->zn);
    w->zd = malloc((size_t)line * sizeof *w->zd);
    if (!w->p || !w->g || !w->nearest || !w->d2 || !w->colrow || !w->et || !w->v || !w->zn || !w->zd) {
        ws_free(w);
        return 0;
    }
    w->cap = n;
    w->cap_line = line;
    return 1;
}

static int ws_reserve(seg_ws *w, int H, int W) {
    return ws_grow(w, H, W) ? ML_OK : ml_errorf("segmetrics: out of memory for the scratch of a %dx%d image", H, W);
}

/* ------------------------------------------------------------------ checks */

static int check_size(int H, int W) {
    if (H < 1 || W < 1 || H > SEG_MAX_SIDE || W > SEG_MAX_SIDE)
        return ml_errorf("segmetrics: map is %dx%d, expected H and W in [1, %d]", H, W, SEG_MAX_SIDE);
    return ML_OK;
}

/* P and G in [0, 1], finite. The message names the map, the pixel and the value. */
static int check_maps(const float *P, const float *G, int H, int W) {
    if (!P || !G) return ml_errorf("segmetrics: %s is NULL", !P ? "the prediction P" : "the ground truth G");
    const size_t n = (size_t)H * (size_t)W;
    for (size_t i = 0; i < n; i++) {
        const float p = P[i], g = G[i];
        if (!(p >= 0.0f && p <= 1.0f))
            return ml_errorf("segmetrics: P at row %zu, column %zu of the %dx%d map is %g, expected a "
                             "probability in [0, 1]; hint: pass the sigmoid of the mask logits, not the logits",
                             i / (size_t)W, i % (size_t)W, H, W, (double)p);
        if (!(g >= 0.0f && g <= 1.0f))
            return ml_errorf("segmetrics: G at row %zu, column %zu of the %dx%d mask is %g, expected a mask "
                             "in [0, 1] (foreground where > 0.5); hint: divide 0/255 masks by 255",
                             i / (size_t)W, i % (size_t)W, H, W, (double)g);
    }
    return ML_OK;
}

/* ------------------------------------------------------------------ distance transform */

/*
 * Exact EDT with the nearest pixel, in two separable passes.
 * Pass 1, per column: the nearest foreground row of every pixel in its own column (two
 * sweeps; equal distances above and below go to the row above).
 * Pass 2, per row i: the nearest foreground pixel minimises f(c) + (j - c)^2 over the
 * columns c, f(c) the squared vertical distance of pass 1 — the lower envelope of
 * parabolas of Felzenszwalb & Huttenlocher ("Distance Transforms of Sampled Functions",
 * Theory of Computing 8, 2012), with the intersections kept as exact fractions. At an
 * intersection the earlier (left) parabola is kept, so ties go to the smallest column,
 * and within a column to the smallest row: what scipy's distance_transform_edt (Maurer's
 * algorithm, used by PySODMetrics) returns; tests/fixtures/segmetrics/reference.py
 * --check-edt compares the rule with scipy on random masks.
 */
static void edt_core(const uint8_t *fg, int H, int W, int32_t *nearest, int32_t *d2, int32_t *colrow,
                     int32_t *v, int64_t *zn, int64_t *zd) {
    /* pass 1, down: the last foreground row at or above; v holds it per column */
    for (int c = 0; c < W; c++) v[c] = -1;
    for (int i = 0; i < H; i++)
        for (int c = 0; c < W; c++) {
            size_t k = (size_t)i * (size_t)W + (size_t)c;
            if (fg[k]) v[c] = i;
            colrow[k] = v[c];
        }
    /* pass 1, up: the next foreground row at or below; the nearer wins, ties go up */
    for (int c = 0; c < W; c++) v[c] = -1;
    for (int i = H - 1; i >= 0; i--)
        for (int c = 0; c < W; c++) {
            size_t k = (size_t)i * (size_t)W + (size_t)c;
            if (fg[k]) v[c] = i;
            int up = colrow[k], down = v[c];
            if (down >= 0 && (up < 0 || down - i < i - up)) colrow[k] = down;
        }
    /* pass 2 */
    for (int i = 0; i < H; i++) {
        const int32_t *cr = colrow + (size_t)i * (size_t)W;
        int k = -1;
        for (int c = 0; c < W; c++) {
            if (cr[c] < 0) continue;
            const int64_t hc = (int64_t)(i - cr[c]) * (i - cr[c]) + (int64_t)c * c;
            int64_t num = 0, den = 1;
            while (k >= 0) {
                const int q = v[k];
                num = hc - ((int64_t)(i - cr[q]) * (i - cr[q]) + (int64_t)q * q);
                den = 2 * (int64_t)(c - q); /* > 0: the new parabola wins right of num/den */
                /* v[k] is the minimum only at or before its start zn/zd: drop it when the
                   new one already wins there (num/den <= zn/zd), keep it on a tie */
                if (k > 0 && num * zd[k] <= zn[k] * den) {
                    k--;
                    continue;
                }
                break;
            }
            k++;
            v[k] = c;
            zn[k] = num;
            zd[k] = den;
        }
        int32_t *ni = nearest ? nearest + (size_t)i * (size_t)W : NULL;
        int32_t *di = d2 ? d2 + (size_t)i * (size_t)W : NULL;
        if (k < 0) { /* no foreground anywhere */
            for (int j = 0; j < W; j++) {
                if (ni) ni[j] = -1;
                if (di) di[j] = INT32_MAX;
            }
            continue;
        }
        int m = 0;
        for (int j = 0; j < W; j++) {
            /* advance while the next parabola starts strictly before j: a tie stays left */
            while (m < k && zn[m + 1] < (int64_t)j * zd[m + 1]) m++;
            const int c = v[m], r = cr[c];
            if (ni) ni[j] = r * W + c;
            if (di) di[j] = (i - r) * (i - r) + (j - c) * (j - c);
        }
    }
}

int ml_segm_edt(const uint8_t *fg, int H, int W, int32_t *nearest, int32_t *d2) {
    if (!fg) return ml_errorf("segmetrics: edt: the mask is NULL");
    if (check_size(H, W) != ML_OK) return ml_error_prefix("edt");
    seg_ws w = {0};
    if (ws_reserve(&w, H, W) != ML_OK) return ML_ERR;
    edt_core(fg, H, W, nearest, d2, w.colrow, w.v, w.zn, w.zd);
    ws_free(&w);
    return ML_OK;
}

/* ------------------------------------------------------------------ S-measure */

/* Mean and sample variance (n - 1; 0 for one value, as Matlab's var) of a strided set,
 * from deviations to the first value, so that a constant set has variance exactly 0. */
typedef struct seg_stat {
    double mean, var;
} seg_stat;

/* S_object's per-side score: 2x / (x^2 + 1 + sigma + eps), x and sigma (the standard
 * deviation, ddof 1) of P on the foreground (fg = 1) or of 1 - P on the background.
 * PySODMetrics Smeasure.s_object; Matlab S_object.m Object(). */
static double s_object_side(const double *p, const uint8_t *g, size_t n, int fg) {
    size_t cnt = 0;
    double sum = 0, first = 0, dsum = 0;
    for (size_t i = 0; i < n; i++) {
        if (g[i] != fg) continue;
        double x = fg ? p[i] : 1.0 - p[i];
        if (!cnt) first = x;
        sum += x;
        dsum += x - first;
        cnt++;
    }
    double mean = sum / (double)cnt, dmean = dsum / (double)cnt, ss = 0;
    for (size_t i = 0; i < n; i++) {
        if (g[i] != fg) continue;
        double d = ((fg ? p[i] : 1.0 - p[i]) - first) - dmean;
        ss += d * d;
    }
    /* numpy's std(ddof=1) of one value is NaN (and S then 0); Matlab's std is 0 */
    double sigma = cnt > 1 ? sqrt(ss / (double)(cnt - 1)) : 0.0;
    return 2 * mean / (mean * mean + 1 + sigma + SEG_EPS);
}

/* The SSIM-like score of one quadrant, rows [r0, r1) x columns [c0, c1): Smeasure.ssim,
 * S_region.m ssim(). Empty quadrants are skipped by the caller (weight 0). */
static double s_region_ssim(const double *p, const uint8_t *g, int W, int r0, int r1, int c0, int c1) {
    const double n = (double)(r1 - r0) * (double)(c1 - c0);
    const double p0 = p[(size_t)r0 * W + c0], g0 = g[(size_t)r0 * W + c0];
    double sp = 0, sg = 0, dp = 0, dg = 0;
    for (int i = r0; i < r1; i++)
        for (int j = c0; j < c1; j++) {
            size_t k = (size_t)i * W + j;
            sp += p[k];
            sg += g[k];
            dp += p[k] - p0;
            dg += g[k] - g0;
        }
    const double x = sp / n, y = sg / n, mdp = dp / n, mdg = dg / n;
    double sxx = 0, syy = 0, sxy = 0;
    for (int i = r0; i < r1; i++)
        for (int j = c0; j < c1; j++) {
            size_t k = (size_t)i * W + j;
            double a = (p[k] - p0) - mdp, b = (g[k] - g0) - mdg;
            sxx += a * a;
            syy += b * b;
            sxy += a * b;
        }
    /* N - 1 as the references; one pixel: 0 (Matlab's var/cov), not numpy's 0/0 */
    const double dn = n > 1 ? n - 1 : 1;
    const double sigma_x = sxx / dn, sigma_y = syy / dn, sigma_xy = sxy / dn;
    const double alpha = 4 * x * y * sigma_xy;
    const double beta = (x * x + y * y) * (sigma_x + sigma_y);
    if (alpha != 0) return alpha / (beta + SEG_EPS);
    return beta == 0 ? 1.0 : 0.0;
}

/* S_region: four quadrants split at the GT centroid, each weighted by its area.
 * PySODMetrics Smeasure.region/centroid/divide_with_xy; S_region.m. X and Y count the
 * columns and rows of the left and top quadrants: Matlab's 1-based round() of the
 * centroid, halves away from zero (PySODMetrics: np.round, halves to even, plus 1). */
static double s_region(const double *p, const uint8_t *g, int H, int W, int64_t nfg, int64_t sum_col1,
                       int64_t sum_row1) {
    const int X = (int)round((double)sum_col1 / (double)nfg);
    const int Y = (int)round((double)sum_row1 / (double)nfg);
    const double area = (double)H * (double)W;
    const double w1 = (double)X * Y / area;
    const double w2 = (double)Y * (W - X) / area;
    const double w3 = (double)(H - Y) * X / area;
    const double w4 = 1 - w1 - w2 - w3;
    /* X in [1, W], Y in [1, H]: the top-left quadrant is never empty; the others are when
       the centroid is on the last column or row (PySODMetrics: NaN, then S = 0) */
    double s = w1 * s_region_ssim(p, g, W, 0, Y, 0, X);
    if (X < W) s += w2 * s_region_ssim(p, g, W, 0, Y, X, W);
    if (Y < H) s += w3 * s_region_ssim(p, g, W, Y, H, 0, X);
    if (X < W && Y < H) s += w4 * s_region_ssim(p, g, W, Y, H, X, W);
    return s;
}

/* ------------------------------------------------------------------ E-measure */

/* f(phi) with phi = 2ab / (a^2 + b^2 + eps): one cell of the enhanced alignment matrix. */
static double e_cell(double a, double b) {
    double phi = 2 * (a * b) / (a * a + b * b + SEG_EPS);
    return (phi + 1) * (phi + 1) / 4;
}

/* The enhanced-alignment sum of a binarised map over the image, from its counts: the
 * matrix takes one value per (prediction, GT) combination. PySODMetrics
 * Emeasure.cal_em_with_threshold / generate_parts_numel_combinations; Enhancedmeasure.m.
 * fg_fg: predicted foreground on GT foreground; fg_bg: predicted foreground on GT background. */
static double e_sum(int64_t N, int64_t gt_fg, int64_t fg_fg, int64_t fg_bg) {
    const int64_t pred_fg = fg_fg + fg_bg, pred_bg = N - pred_fg;
    if (gt_fg == 0) return (double)pred_bg; /* GT all background: 1 - FM */
    if (gt_fg == N) return (double)pred_fg; /* GT all foreground: FM */
    const int64_t bg_fg = gt_fg - fg_fg, bg_bg = pred_bg - bg_fg;
    const double mp = (double)pred_fg / (double)N, mg = (double)gt_fg / (double)N;
    const double pf = 1 - mp, pb = 0 - mp, gf = 1 - mg, gb = 0 - mg;
    return e_cell(pf, gf) * (double)fg_fg + e_cell(pf, gb) * (double)fg_bg + e_cell(pb, gf) * (double)bg_fg +
           e_cell(pb, gb) * (double)bg_bg;
}

/* ------------------------------------------------------------------ weighted F */

/* fspecial('gaussian', 7, 5): PySODMetrics WeightedFmeasure.matlab_style_gauss2D. */
static void gauss7(double K[7][7]) {
    double sum = 0, mx = 0;
    for (int a = 0; a < 7; a++)
        for (int b = 0; b < 7; b++) {
            double x = b - 3, y = a - 3;
            K[a][b] = exp(-(x * x + y * y) / (2.0 * 5 * 5));
            if (K[a][b] > mx) mx = K[a][b];
        }
    for (int a = 0; a < 7; a++)
        for (int b = 0; b < 7; b++) {
            if (K[a][b] < SEG_EPS * mx) K[a][b] = 0;
            sum += K[a][b];
        }
    for (int a = 0; a < 7; a++)
        for (int b = 0; b < 7; b++) K[a][b] /= sum;
}

/* Margolin et al.'s weighted F (beta^2 = 1) of an image with foreground:
 * PySODMetrics WeightedFmeasure.cal_wfm; original_WFb.m. */
static double wfm(seg_ws *w, int H, int W, int64_t nfg) {
    const size_t n = (size_t)H * (size_t)W;
    const double *p = w->p;
    const uint8_t *g = w->g;
    edt_core(g, H, W, w->nearest, w->d2, w->colrow, w->v, w->zn, w->zd);
    /* E = |P - G|; Et = E at the nearest foreground pixel ("to deal correctly with the
       edges of the foreground region") */
    for (size_t i = 0; i < n; i++) w->et[i] = fabs(p[w->nearest[i]] - 1.0);
    double K[7][7];
    gauss7(K);
    const double lambda = log(0.5) / 5; /* B = 2 - exp(log(1 - 0.5)/5 · Dst) */
    double ew_fg = 0, ew_bg = 0;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) {
            const size_t k = (size_t)i * W + j;
            const double e = fabs(p[k] - (double)g[k]);
            if (!g[k]) {
                ew_bg += e * (2 - exp(lambda * sqrt((double)w->d2[k])));
                continue;
            }
            /* EA = imfilter(Et, K), zero outside the image; needed on the foreground only */
            double ea = 0;
            for (int a = -3; a <= 3; a++) {
                const int ii = i + a;
                if (ii < 0 || ii >= H) continue;
                const double *row = w->et + (size_t)ii * W;
                for (int b = -3; b <= 3; b++) {
                    const int jj = j + b;
                    if (jj >= 0 && jj < W) ea += K[a + 3][b + 3] * row[jj];
                }
            }
            ew_fg += ea < e ? ea : e; /* MIN_E_EA, importance B = 1 */
        }
    const double tpw = (double)nfg - ew_fg, fpw = ew_bg;
    const double R = 1 - ew_fg / (double)nfg; /* weighted recall */
    const double P = tpw / (tpw + fpw + SEG_EPS);
    return 2 * R * P / (R + P + SEG_EPS);
}

/* ------------------------------------------------------------------ one image */

/* All metrics of a checked image, with scratch w (reserved for H x W). */
static void image_metrics(seg_ws *w, const float *P, const float *G, int H, int W, const ml_segm_opts *o,
                          ml_segm *out) {
    const size_t n = (size_t)H * (size_t)W;
    const int64_t N = (int64_t)n;
    double *p = w->p;
    uint8_t *g = w->g;
    for (size_t i = 0; i < n; i++) p[i] = P[i];
    if (o->minmax) { /* prepare_data: (P - min) / (max - min) unless constant */
        double lo = p[0], hi = p[0];
        for (size_t i = 1; i < n; i++) {
            if (p[i] < lo) lo = p[i];
            if (p[i] > hi) hi = p[i];
        }
        if (hi != lo)
            for (size_t i = 0; i < n; i++) p[i] = (p[i] - lo) / (hi - lo);
    }
    int64_t nfg = 0, sum_col1 = 0, sum_row1 = 0, tp = 0, fp = 0, fn = 0;
    int64_t hist_fg[NT] = {0}, hist_bg[NT] = {0};
    double sum_p = 0, sum_ae = 0;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) {
            const size_t k = (size_t)i * W + j;
            const int gk = G[k] > 0.5f;
            const double pk = p[k];
            g[k] = (uint8_t)gk;
            sum_p += pk;
            sum_ae += fabs(pk - (double)gk);
            /* (pred * 255).astype(np.uint8): truncation, 0..255 for P in [0, 1] */
            const int q = (int)(pk * 255.0);
            const int b = pk >= 0.5;
            if (gk) {
                nfg++;
                sum_col1 += j + 1;
                sum_row1 += i + 1;
                hist_fg[q]++;
                tp += b;
                fn += !b;
            } else {
                hist_bg[q]++;
                fp += b;
            }
        }
    memset(out, 0, sizeof *out);
    out->images = 1;

    /* IoU and Dice at 0.5 (P >= 0.5, i.e. logit >= 0); both empty: a perfect answer */
    out->iou = tp + fp + fn ? (double)tp / (double)(tp + fp + fn) : 1.0;
    out->dice = 2 * tp + fp + fn ? 2.0 * (double)tp / (double)(2 * tp + fp + fn) : 1.0;
    out->mae = sum_ae / (double)N; /* MAE.cal_mae */

    /* S-measure, Smeasure.cal_sm / StructureMeasure.m, alpha = 0.5 */
    const double mean_p = sum_p / (double)N;
    if (nfg == 0) {
        out->s_measure = 1 - mean_p;
        out->s_object = out->s_region = NAN;
    } else if (nfg == N) {
        out->s_measure = mean_p;
        out->s_object = out->s_region = NAN;
    } else {
        const double u = (double)nfg / (double)N;
        out->s_object = u * s_object_side(p, g, n, 1) + (1 - u) * s_object_side(p, g, n, 0);
        out->s_region = s_region(p, g, H, W, nfg, sum_col1, sum_row1);
        const double s = 0.5 * out->s_object + (1 - 0.5) * out->s_region;
        out->s_measure = s > 0 ? s : 0;
    }

    /* E-measure at the 256 thresholds: floor(255·P) >= t, counted from the top
       (Emeasure.cal_em_with_cumsumhistogram), divided by H·W (the paper; the code: H·W - 1 + eps) */
    int64_t cf = 0, cb = 0;
    double esum = 0, emax = 0;
    for (int t = NT - 1; t >= 0; t--) {
        cf += hist_fg[t];
        cb += hist_bg[t];
        out->e_curve[t] = e_sum(N, nfg, cf, cb) / (double)N;
    }
    for (int t = 0; t < NT; t++) {
        esum += out->e_curve[t];
        if (out->e_curve[t] > emax) emax = out->e_curve[t];
    }
    out->e_mean = esum / NT;
    out->e_max = emax;
    /* adaptive: P >= min(2·mean(P), 1) (Emeasure.cal_adaptive_em, utils.get_adaptive_threshold) */
    double thr = 2 * mean_p;
    if (thr > 1) thr = 1;
    int64_t af = 0, ab = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] >= thr) {
            if (g[i]) af++;
            else ab++;
        }
    out->e_adaptive = e_sum(N, nfg, af, ab) / (double)N;

    /* weighted F; an empty GT scores 0 (WeightedFmeasure.step) */
    out->wfm = nfg ? wfm(w, H, W, nfg) : 0.0;
}

int ml_segm_image(const float *P, const float *G, int H, int W, const ml_segm_opts *opts, ml_segm *out) {
    if (!out) return ml_errorf("segmetrics: out is NULL");
    memset(out, 0, sizeof *out);
    if (check_size(H, W) != ML_OK || check_maps(P, G, H, W) != ML_OK) return ML_ERR;
    ml_segm_opts o = opts ? *opts : ml_segm_opts_default();
    seg_ws w = {0};
    if (ws_reserve(&w, H, W) != ML_OK) return ML_ERR;
    image_metrics(&w, P, G, H, W, &o, out);
    ws_free(&w);
    return ML_OK;
}

/* ------------------------------------------------------------------ accumulator */

struct ml_segm_acc {
    ml_segm_opts opts;
    int64_t images;
    int64_t images_so;  /* images with s_object / s_region defined */
    double iou, dice, mae, sm, so, sr, e_adp, wfm; /* sums over images */
    double curve[NT];   /* summed E curves */
    seg_ws ws;
};

ml_segm_acc *ml_segm_acc_new(const ml_segm_opts *opts) {
    ml_segm_acc *a = ml_calloc(1, sizeof *a);
    if (!a) return NULL;
    a->opts = opts ? *opts : ml_segm_opts_default();
    a->opts.minmax = a->opts.minmax != 0;
    return a;
}

void ml_segm_acc_free(ml_segm_acc *a) {
    if (!a) return;
    ws_free(&a->ws);
    free(a);
}

void ml_segm_acc_reset(ml_segm_acc *a) {
    if (!a) return;
    a->images = a->images_so = 0;
    a->iou = a->dice = a->mae = a->sm = a->so = a->sr = a->e_adp = a->wfm = 0;
    memset(a->curve, 0, sizeof a->curve);
}

int64_t ml_segm_acc_images(const ml_segm_acc *a) { return a ? a->images : 0; }

void ml_segm_acc_add_values(ml_segm_acc *a, const ml_segm *m) {
    if (!a || !m) return;
    a->images++;
    a->iou += m->iou;
    a->dice += m->dice;
    a->mae += m->mae;
    a->sm += m->s_measure;
    a->e_adp += m->e_adaptive;
    a->wfm += m->wfm;
    if (!isnan(m->s_object)) {
        a->images_so++;
        a->so += m->s_object;
        a->sr += m->s_region;
    }
    for (int t = 0; t < NT; t++) a->curve[t] += m->e_curve[t];
}

int ml_segm_acc_add(ml_segm_acc *a, const float *P, const float *G, int H, int W, ml_segm *img) {
    if (!a) return ml_errorf("segmetrics: accumulator is NULL");
    if (check_size(H, W) != ML_OK || check_maps(P, G, H, W) != ML_OK) return ML_ERR;
    if (ws_reserve(&a->ws, H, W) != ML_OK) return ML_ERR;
    ml_segm m;
    image_metrics(&a->ws, P, G, H, W, &a->opts, &m);
    ml_segm_acc_add_values(a, &m);
    if (img) *img = m;
    return ML_OK;
}

int ml_segm_acc_add_batch(ml_segm_acc *a, const float *P, const float *G, int B, int H, int W,
                          ml_segm *per_image) {
    if (!a) return ml_errorf("segmetrics: accumulator is NULL");
    if (B < 0) return ml_errorf("segmetrics: batch of %d images, expected 0 or more", B);
    if (B == 0) return ML_OK;
    if (check_size(H, W) != ML_OK) return ML_ERR;
    if (!P || !G) return check_maps(P, G, H, W);
    const size_t n = (size_t)H * (size_t)W;
    for (int b = 0; b < B; b++)
        if (check_maps(P + (size_t)b * n, G + (size_t)b * n, H, W) != ML_OK)
            return ml_error_prefix("image %d of the batch", b);
    ml_segm *res = per_image ? per_image : malloc((size_t)B * sizeof *res);
    if (!res) return ml_errorf("segmetrics: out of memory for %d results", B);
    int failed = 0;
    const ml_segm_opts o = a->opts;
#pragma omp parallel if (B > 1)
    {
        seg_ws w = {0};
        const int ok = ws_grow(&w, H, W);
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int b = 0; b < B; b++)
            if (ok) image_metrics(&w, P + (size_t)b * n, G + (size_t)b * n, H, W, &o, &res[b]);
        ws_free(&w);
    }
    if (!failed)
        for (int b = 0; b < B; b++) ml_segm_acc_add_values(a, &res[b]); /* in order: thread-count independent */
    if (res != per_image) free(res);
    if (failed) return ml_errorf("segmetrics: out of memory for the scratch of a %dx%d image", H, W);
    return ML_OK;
}

int ml_segm_compute(const ml_segm_acc *a, ml_segm *out) {
    if (!out) return ml_errorf("segmetrics: compute: out is NULL");
    memset(out, 0, sizeof *out);
    if (!a) return ml_errorf("segmetrics: compute: accumulator is NULL");
    if (a->images == 0) return ml_errorf("segmetrics: compute: no image was added");
    const double n = (double)a->images;
    out->images = a->images;
    out->iou = a->iou / n;
    out->dice = a->dice / n;
    out->mae = a->mae / n;
    out->s_measure = a->sm / n;
    out->s_object = a->images_so ? a->so / (double)a->images_so : NAN;
    out->s_region = a->images_so ? a->sr / (double)a->images_so : NAN;
    out->e_adaptive = a->e_adp / n;
    out->wfm = a->wfm / n;
    /* the toolboxes average the curves over the images, then take the mean and the max */
    double esum = 0, emax = 0;
    for (int t = 0; t < NT; t++) {
        out->e_curve[t] = a->curve[t] / n;
        esum += out->e_curve[t];
        if (out->e_curve[t] > emax) emax = out->e_curve[t];
    }
    out->e_mean = esum / NT;
    out->e_max = emax;
    return ML_OK;
}

/* ------------------------------------------------------------------ checkpoint text */

#define SEG_TEXT_TAG "segm1"
#define SEG_TEXT_SUMS 8

/* "segm1 minmax images images_so iou dice mae sm so sr e_adp wfm curve[256]", doubles as
 * C99 hex floats (%a), so that a resumed validation adds to exactly the same sums. */
char *ml_segm_acc_to_text(const ml_segm_acc *a) {
    if (!a) {
        ml_errorf("segmetrics: to_text: accumulator is NULL");
        return NULL;
    }
    const size_t cap = 96 + (size_t)(SEG_TEXT_SUMS + NT) * 28;
    char *s = ml_calloc(cap, 1);
    if (!s) return NULL;
    size_t len = (size_t)snprintf(s, cap, SEG_TEXT_TAG " %d %" PRId64 " %" PRId64, a->opts.minmax, a->images,
                                  a->images_so);
    const double sums[SEG_TEXT_SUMS] = {a->iou, a->dice, a->mae, a->sm, a->so, a->sr, a->e_adp, a->wfm};
    for (int i = 0; i < SEG_TEXT_SUMS; i++) len += (size_t)snprintf(s + len, cap - len, " %a", sums[i]);
    for (int t = 0; t < NT; t++) len += (size_t)snprintf(s + len, cap - len, " %a", a->curve[t]);
    return s;
}

static int next_i64(const char **p, int64_t *v) {
    char *end;
    errno = 0;
    long long x = strtoll(*p, &end, 10);
    if (end == *p || errno || x < 0 || (*end && *end != ' ')) return 0;
    *v = x;
    *p = end;
    return 1;
}

static int next_f64(const char **p, double *v) {
    char *end;
    double x = strtod(*p, &end);
    if (end == *p || !isfinite(x) || (*end && *end != ' ')) return 0;
    *v = x;
    *p = end;
    return 1;
}

int ml_segm_acc_from_text(ml_segm_acc *a, const char *text) {
    if (!a || !text) return ml_errorf("segmetrics state: %s is NULL", !a ? "the accumulator" : "the text");
    const size_t tl = strlen(SEG_TEXT_TAG);
    if (strncmp(text, SEG_TEXT_TAG, tl) != 0 || text[tl] != ' ')
        return ml_errorf("segmetrics state: expected text starting with '" SEG_TEXT_TAG " '");
    const char *p = text + tl;
    int64_t minmax, images, images_so;
    if (!next_i64(&p, &minmax) || !next_i64(&p, &images) || !next_i64(&p, &images_so) || minmax > 1 ||
        images_so > images)
        return ml_errorf("segmetrics state: bad header (minmax, images, images with S terms)");
    if (minmax != a->opts.minmax)
        return ml_errorf("segmetrics state: written with minmax=%d, the accumulator has minmax=%d",
                         (int)minmax, a->opts.minmax);
    double sums[SEG_TEXT_SUMS], curve[NT];
    int ok = 1;
    for (int i = 0; ok && i < SEG_TEXT_SUMS; i++) ok = next_f64(&p, &sums[i]);
    for (int t = 0; ok && t < NT; t++) ok = next_f64(&p, &curve[t]);
    if (!ok || *p)
        return ml_errorf("segmetrics state: expected %d sums and %d curve values after the header",
                         SEG_TEXT_SUMS, NT);
    a->images = images;
    a->images_so = images_so;
    a->iou = sums[0];
    a->dice = sums[1];
    a->mae = sums[2];
    a->sm = sums[3];
    a->so = sums[4];
    a->sr = sums[5];
    a->e_adp = sums[6];
    a->wfm = sums[7];
    memcpy(a->curve, curve, sizeof curve);
    return ML_OK;
}
