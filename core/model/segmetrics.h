/*
 * segmetrics.h — validation metrics of a binary segmentation, as the camouflaged-object-
 * detection (COD) field reports them: IoU and Dice at 0.5, MAE, S-measure, E-measure
 * (mean, max and adaptive) and the weighted F-measure, per image and as the mean over a
 * set of images.
 *
 * Inputs: one predicted map P (H, W) with values in [0, 1] (the sigmoid of the mask
 * logits) and one ground truth G (H, W) in [0, 1], foreground where G > 0.5 (the
 * toolboxes' "gt > 128" on 8-bit masks). Both row-major floats, computed in double.
 * A value outside [0, 1], NaN or infinity in either map is an error (the message names
 * the map, the pixel and the value) — never clamped: a map out of range is a bug upstream
 * (logits passed for probabilities, 0/255 masks).
 *
 * The formulas follow PySODMetrics (github.com/lartpang/PySODMetrics,
 * py_sod_metrics/sod_metrics.py; utils.py for the adaptive threshold) and Fan et al.'s
 * Matlab code (DengPingFan/CODToolbox Onekey_Evaluation_Code/OnekeyEvaluationCode/:
 * main.m, StructureMeasure.m, S_object.m, S_region.m, Enhancedmeasure.m, original_WFb.m;
 * S_region.m also in DengPingFan/S-measure), formula by formula, with their epsilon 2^-52:
 *
 *   iou, dice      P >= 0.5 against G; both empty: 1 (not in PySODMetrics' sod_metrics)
 *   mae            mean |P - G|                                   MAE.cal_mae
 *   s_measure      0.5·S_object + 0.5·S_region, at least 0         Smeasure.cal_sm
 *   e_curve[t]     E of P binarised at floor(255·P) >= t           Emeasure.cal_em_with_cumsumhistogram
 *   e_adaptive     E of P >= min(2·mean(P), 1)                     Emeasure.cal_adaptive_em
 *   wfm            weighted F, beta^2 = 1                          WeightedFmeasure.cal_wfm
 *
 * and differ from PySODMetrics where it returns NaN, a value out of range or disagrees
 * with the Matlab original (docs/metrics.md, "Segmentation metrics", says why for each):
 *   - the E-measure divides by H·W (the paper's Eq. 6), not H·W - 1 + eps: a perfect map
 *     scores 1, not H·W/(H·W - 1), and a 1x1 image is defined;
 *   - the S-measure centroid rounds halves away from zero on 1-based coordinates, as
 *     Matlab's round(); PySODMetrics' np.round rounds halves to even;
 *   - a standard deviation or (co)variance of a single pixel is 0 (Matlab's std/var/cov),
 *     not NaN (numpy's ddof=1), and an empty quadrant (GT centroid on the last row or
 *     column) has weight 0 and is skipped instead of making S NaN (then 0 in PySODMetrics);
 *   - a region of constant P has variance exactly 0 (deviations from its first value), so
 *     the region SSIM's "alpha = beta = 0" case is not decided by float rounding.
 * The binarisations (>= at 0.5, the adaptive and the 256 thresholds) and the empty-GT
 * conventions (wfm = 0, E and S special cases) are PySODMetrics'.
 *
 * With opts.minmax each P is first rescaled to [0, 1] by its own min and max (unless
 * constant), as the toolboxes do on saved maps (PySODMetrics prepare_data, Matlab
 * mapminmax): for numbers comparable with published tables. Off by default.
 *
 * Ownership: ml_segm_acc_new() returns an owned accumulator (ml_segm_acc_free, NULL-safe);
 * ml_segm_acc_to_text() returns an owned string (free()). Maps are borrowed for the call.
 * ml_segm_image() and ml_segm_edt() are reentrant; an accumulator is not (one thread at a
 * time; ml_segm_acc_add_batch parallelises inside with OpenMP and adds in image order, so
 * results do not depend on the thread count).
 */
#ifndef MOELAB_SEGMETRICS_H
#define MOELAB_SEGMETRICS_H

#include <stdint.h>

#define ML_SEGM_THRESHOLDS 256 /* e_curve: thresholds t/255, t = 0..255 */

typedef struct ml_segm_opts {
    int minmax; /* 1: rescale each P by its min and max first (the toolboxes); default 0 */
} ml_segm_opts;

ml_segm_opts ml_segm_opts_default(void);

/* The metrics of one image, or the mean over the images of an accumulator. */
typedef struct ml_segm {
    int64_t images;     /* 1 for one image; images accumulated */
    double iou;         /* |B ∩ G| / |B ∪ G|, B = P >= 0.5; 1 when both are empty */
    double dice;        /* 2|B ∩ G| / (|B| + |G|); 1 when both are empty */
    double mae;         /* mean |P - G| */
    double s_measure;   /* max(0, 0.5·s_object + 0.5·s_region); 1 - mean P (G empty), mean P (G full) */
    double s_object;    /* object-aware term (NaN when G is empty or full: not used) */
    double s_region;    /* region-aware term (NaN when G is empty or full: not used) */
    double e_mean;      /* mean of e_curve over the 256 thresholds */
    double e_max;       /* max of e_curve (of the mean curve, for a set of images) */
    double e_adaptive;  /* E at the threshold min(2·mean(P), 1) */
    double wfm;         /* weighted F-measure (beta^2 = 1); 0 when G is empty */
    double e_curve[ML_SEGM_THRESHOLDS]; /* (256) E at floor(255·P) >= t; the mean curve for a set */
} ml_segm;

/* All metrics of one image. Errors (bad sizes, NULL, a value out of [0, 1], NaN) leave
 * a message and *out zeroed. opts NULL = defaults. */
int ml_segm_image(const float *P, const float *G, int H, int W, const ml_segm_opts *opts, ml_segm *out);

typedef struct ml_segm_acc ml_segm_acc;

/* opts NULL = defaults (kept by the accumulator). NULL when out of memory. */
ml_segm_acc *ml_segm_acc_new(const ml_segm_opts *opts);
void ml_segm_acc_free(ml_segm_acc *a);
void ml_segm_acc_reset(ml_segm_acc *a);
int64_t ml_segm_acc_images(const ml_segm_acc *a);
/* Adds one image; img (may be NULL) receives its own metrics, for a per-image CSV. On
 * error nothing is added. */
int ml_segm_acc_add(ml_segm_acc *a, const float *P, const float *G, int H, int W, ml_segm *img);
/* Adds B images (B, H, W), computed in parallel (OpenMP) and added in order; per_image
 * (may be NULL) receives B results. Every map is checked first: on error nothing is added
 * and the message names the image. */
int ml_segm_acc_add_batch(ml_segm_acc *a, const float *P, const float *G, int B, int H, int W,
                          ml_segm *per_image);
/* Adds the values of one image computed by ml_segm_image (e.g. on another thread). */
void ml_segm_acc_add_values(ml_segm_acc *a, const ml_segm *img);
/* The mean over the accumulated images (e_curve the mean curve, e_max its maximum, as
 * the toolboxes do). With no image: an error, *out zeroed. s_object and s_region are the
 * means over the images where they were defined (NaN if none). */
int ml_segm_compute(const ml_segm_acc *a, ml_segm *out);

/* The accumulator as one line of text (hex floats: a resumed validation adds to exactly
 * the same sums; owned, free()), and back. On error *a is unchanged. */
char *ml_segm_acc_to_text(const ml_segm_acc *a);
int ml_segm_acc_from_text(ml_segm_acc *a, const char *text);

/*
 * Exact Euclidean distance transform with the nearest-pixel index (the weighted
 * F-measure's bwdist): for every pixel of fg (H, W) (nonzero = foreground), nearest[i] is
 * the row-major index of the nearest foreground pixel and d2[i] the squared distance to
 * it (0 on foreground). Ties go to the pixel of the smallest column, then the smallest
 * row — what scipy.ndimage.distance_transform_edt(return_indices=True) returns. Linear
 * time (Felzenszwalb & Huttenlocher's lower envelope, exact in integers). With no
 * foreground pixel, nearest is -1 and d2 INT32_MAX everywhere. Either output may be NULL.
 * ML_OK, or an error for bad sizes / no memory.
 */
int ml_segm_edt(const uint8_t *fg, int H, int W, int32_t *nearest, int32_t *d2);

#endif
