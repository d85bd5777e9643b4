/*
 * model.h — an MoE network and its task loss: an autoencoder (encoder -> MoE layers on
 * the latent -> decoder, MSE reconstruction; mlp, srnn) or a segmentation net (MoE layers
 * on feature maps at several scales, a mask logit per pixel; cod), trained on
 * w_bce·BCE-with-logits + w_iou·soft IoU + w_dice·soft Dice against a binary mask.
 *
 * The model owns its parameter block P (trainable: values, gradients, Adam moments) and
 * state block S (router state, batch-norm running statistics), the net of its type (net.h)
 * and its MoE layers. Forward leaves the output in out (the reconstruction, or the mask
 * logits) and the task loss in task_loss; callers add balancing-loss gradients into each
 * layer's dlogits/dprob, then call backward. ml_model_add_experts grows one layer
 * mid-training.
 */
#ifndef MOELAB_MODEL_H
#define MOELAB_MODEL_H

#include "model/moe.h"
#include "model/net.h"
#include "nn/params.h"

typedef struct ml_model_cfg {
    const char *type;          /* "mlp" | "srnn" | "cod" */
    int C, H, W;               /* input images */
    int latent, hidden, expert_hidden;
    int experts;               /* per layer at start */
    int moe_layers;
    const int *channels; int n_channels;
    const ml_plugin *router;
    const ml_optval *router_opt;
    uint64_t seed;
    /* cod */
    const char *const *expert_kinds; int n_kinds;
    float w_bce, w_iou, w_dice; /* task loss weights (segmentation) */
} ml_model_cfg;

typedef struct ml_model {
    ml_params P, S;
    const ml_net_ops *ops;
    void *net;
    int L;
    ml_moe **moe;              /* (L) */
    int D, Din, cap_B, B;
    int seg;                   /* a segmentation net (ops->forward): out is mask logits */
    int Dout;                  /* floats of out per sample: Din, or H·W mask logits */
    float w_bce, w_iou, w_dice;
    float **z;                 /* (L + 1) latents (B, D): z[0] from the encoder (autoencoders) */
    float **dz;                /* (L + 1) their gradients */
    float *xhat, *dxhat;       /* (B, Dout) the output and its gradient */
    const float *x;            /* (B, Din) borrowed input */
    const float *target;       /* (B, Dout) borrowed: x for autoencoders, the mask for seg */
    double task_loss;
    double loss_bce, loss_iou, loss_dice; /* seg: the task loss's parts, each before its weight */
    ml_rng init_rng;           /* initialises tensors, also those added by growth */
    /* the last forward, when split over processes (ml_model_forward_part); else NULL */
    const ml_comm *comm;       /* borrowed */
    int Bg;                    /* the whole batch; B is this process's part */
} ml_model;

ml_model *ml_model_new(const ml_model_cfg *cfg, const int *experts_per_layer);
void ml_model_free(ml_model *m);
/* x (B, C, H, W) in [0, 1]; target (B, Dout): NULL for an autoencoder (x itself), the mask
   (B, 1, H, W) in {0, 1} for a segmentation net; ids and labels (B) borrowed until backward
   (labels may be NULL). */
int ml_model_forward(ml_model *m, const float *x, const float *target, int B, int training, const int32_t *ids,
                     const int32_t *labels, int num_classes);
/*
 * Data parallelism (run/dist.h): x, target, ids and labels are the whole batch (B), of which
 * this process computes its part (base/comm.h, ml_part_off); the MoE layers route the whole
 * batch on every process (ml_moe_set_part). task_loss (and the seg parts) is the whole
 * batch's, summed over the processes. The backward then leaves the whole batch's gradients
 * in P on every process (one sum over the gradient block; the routers' count once) and
 * sends the routers' AFTER_BACKWARD. Batch norm (srnn, cod) is synchronised: its statistics
 * are the whole batch's (ml_batchnorm2d_forward_train_part), so the running statistics agree
 * on every process; such nets need a batch of at least one sample per process. comm NULL
 * or of one process is ml_model_forward.
 */
int ml_model_forward_part(ml_model *m, const ml_comm *comm, const float *x, const float *target, int B,
                          int training, const int32_t *ids, const int32_t *labels, int num_classes);
/* Gradients of task loss (scaled by 1) plus whatever losses put in the MoE layers. */
int ml_model_backward(ml_model *m);
int ml_model_add_experts(ml_model *m, int layer, int n);
/* The same in two halves, for owners that keep more per-expert tensors in the blocks (loss
   state): begin declares the growth (variant: ml_moe_grow_declare), the owner declares its
   own, end commits the blocks and tells the router (EXPERTS_ADDED). An owner that starts
   the new experts from others (ml_moe_init_experts) commits first (grow_commit), then
   calls end, whose commit then has nothing new to lay out. */
int ml_model_grow_begin(ml_model *m, int layer, int n, const int *variant);
int ml_model_grow_commit(ml_model *m);
int ml_model_grow_end(ml_model *m, int layer, int old_n);
/* Removal in two halves likewise (ml_moe_remove_declare): begin takes the experts out and
   renames the kept ones, the owner drops its own per-expert rows, end commits the blocks and
   tells the router (EXPERTS_REMOVED). */
int ml_model_remove_begin(ml_model *m, int layer, const int *kept, int nkeep);
int ml_model_remove_end(ml_model *m, int layer, const int *kept, int old_n);
/* useful FLOPs of one training step per sample, excluding the MoE layers */
double ml_model_net_flops(const ml_model *m);

#endif
