/*
 * model.h — an MoE autoencoder: encoder -> MoE layers -> decoder, trained on MSE.
 *
 * The model owns its parameter block P (trainable: values, gradients, Adam moments) and
 * state block S (router state, batch-norm running statistics), the encoder/decoder of its
 * type (net.h) and its MoE layers. Forward leaves the reconstruction in xhat and the task
 * loss in task_loss; callers add balancing-loss gradients into each layer's dlogits/dprob,
 * then call backward. ml_model_add_experts grows one layer mid-training.
 */
#ifndef MOELAB_MODEL_H
#define MOELAB_MODEL_H

#include "model/moe.h"
#include "model/net.h"
#include "nn/params.h"

typedef struct ml_model_cfg {
    const char *type;          /* "mlp" | "srnn" */
    int C, H, W;               /* input images */
    int latent, hidden, expert_hidden;
    int experts;               /* per layer at start */
    int moe_layers;
    const int *channels; int n_channels;
    const ml_plugin *router;
    const ml_optval *router_opt;
    uint64_t seed;
} ml_model_cfg;

typedef struct ml_model {
    ml_params P, S;
    const ml_net_ops *ops;
    void *net;
    int L;
    ml_moe **moe;              /* (L) */
    int D, Din, cap_B, B;
    float **z;                 /* (L + 1) latents (B, D): z[0] from the encoder */
    float **dz;                /* (L + 1) their gradients */
    float *xhat, *dxhat;       /* (B, Din) */
    const float *x;            /* (B, Din) borrowed input */
    double task_loss;
    ml_rng init_rng;           /* initialises tensors, also those added by growth */
} ml_model;

ml_model *ml_model_new(const ml_model_cfg *cfg, const int *experts_per_layer);
void ml_model_free(ml_model *m);
/* x (B, C, H, W) in [0, 1]; ids and labels (B) borrowed until backward (labels may be NULL). */
int ml_model_forward(ml_model *m, const float *x, int B, int training, const int32_t *ids,
                     const int32_t *labels, int num_classes);
/* Gradients of task loss (scaled by 1) plus whatever losses put in the MoE layers. */
int ml_model_backward(ml_model *m);
int ml_model_add_experts(ml_model *m, int layer, int n);
/* The same in two halves, for owners that keep more per-expert tensors in the blocks (loss
   state): begin declares the growth, the owner declares its own, end commits the blocks
   and tells the router (EXPERTS_ADDED). */
int ml_model_grow_begin(ml_model *m, int layer, int n);
int ml_model_grow_end(ml_model *m, int layer, int old_n);
/* useful FLOPs of one training step per sample, excluding the MoE layers */
double ml_model_net_flops(const ml_model *m);

#endif
