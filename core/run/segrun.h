/*
 * segrun.h — what a segmentation run (model.type: cod) adds to each evaluation:
 *
 *   - the COD metrics of the validation set (model/segmetrics.h) as metrics.csv columns
 *     val_iou, val_dice, val_mae, val_s, val_e_mean, val_e_max, val_e_adaptive, val_wf;
 *   - predictions/: for the first seg.predictions validation images, the image, its ground
 *     truth and the predicted probability as PNGs (NNNN_image.png, NNNN_gt.png,
 *     NNNN_pred.png), and metrics.csv with every validation image's metrics, label and
 *     the experts each MoE layer sent it to — rewritten at each evaluation (the last one
 *     stays);
 *   - routing_labels.csv: per evaluation, layer, label (habitat) and expert, the share of the
 *     label's dispatch slots that went to the expert — the measured version of the seed's
 *     "forest -> [edge, texture]" (appended, one block per evaluation).
 * docs/results.md describes the files, docs/metrics.md the metrics.
 *
 * State lives in the experiment (ml_experiment.seg); an evaluation runs whole between two
 * training epochs, so nothing here goes into checkpoints.
 */
#ifndef MOELAB_SEGRUN_H
#define MOELAB_SEGRUN_H

#include <stddef.h>
#include <stdint.h>
#include "model/segmetrics.h"

typedef struct ml_experiment ml_experiment;

typedef struct ml_segrun {
    ml_segm_acc *acc;          /* the evaluation's images */
    int predictions;           /* seg.predictions: images written as PNG */
    int64_t seen;              /* images of this evaluation so far */
    float *prob;               /* (B, H W) sigmoid of the batch's logits */
    char *rows;                /* per-image metrics.csv text of this evaluation (owned) */
    size_t rows_len, rows_cap;
    int64_t *slots;            /* (L, C, Nmax) dispatch slots by layer, label, expert */
    int slots_C, slots_N;
    ml_segm last;              /* the means of the last evaluation */
} ml_segrun;

int ml_segrun_init(ml_experiment *e);
void ml_segrun_free(ml_experiment *e);
int ml_segrun_begin(ml_experiment *e);
/* One validation batch after the model's forward: x (B, C, H, W), mask (B, 1, H, W), labels
   (B) or NULL, ids (B). Reads the model's logits and each MoE layer's routing. */
int ml_segrun_batch(ml_experiment *e, int B, const float *x, const float *mask, const int32_t *labels,
                    const int32_t *ids);
/* The evaluation's columns and files. */
int ml_segrun_end(ml_experiment *e);

#endif
