/*
 * net.h — the encoder/decoder contract an autoencoder model type implements.
 *
 * Two families. MoE autoencoders (mlp, srnn): encode x (B, C, H, W) to a latent z (B, D),
 * pass z through the MoE layers, decode back to x̂. Segmentation nets (cod): the net runs
 * the whole image-to-mask network itself and calls the MoE layers it places at several
 * scales (spatial layers, model/moe.h), giving a mask logit per pixel. A model type
 * provides an ml_net: its tensors are declared in the model's blocks at creation,
 * activations are kept between forward and backward, backward accumulates parameter
 * gradients. The model owns the net.
 */
#ifndef MOELAB_NET_H
#define MOELAB_NET_H

#include "base/comm.h"
#include "base/common.h"
#include "nn/params.h"

typedef struct ml_net_shape {
    int C, H, W;   /* input image */
    int latent;    /* D */
    int hidden;    /* mlp hidden width */
    const int *channels; int n_channels; /* srnn / cod encoder channels */
    /* cod: the kind of each expert ("texture", "frequency", "edge", "contrast"); experts
       past the list (growth) take kinds[e % n_kinds] */
    const char *const *expert_kinds; int n_kinds;
} ml_net_shape;

typedef struct ml_moe ml_moe;
typedef struct ml_expert_kind ml_expert_kind;

typedef struct ml_net_ops {
    const char *type;
    /* declares tensors in P (trainable) and S (state); returns the net or NULL */
    void *(*create)(const ml_net_shape *s, ml_params *P, ml_params *S);
    void (*free)(void *net);
    int (*reserve)(void *net, int B);                                      /* activations for B */
    int (*encode)(void *net, const float *x, int B, int training, float *z);      /* z (B, D) */
    int (*decode)(void *net, const float *z, int B, int training, float *xhat);   /* xhat like x */
    int (*decode_backward)(void *net, const float *dxhat, float *dz);     /* dz (B, D) += */
    int (*encode_backward)(void *net, const float *dz);
    /* useful floating-point operations of one forward+backward per sample (for bench) */
    double (*flops_per_sample)(void *net);
    /* Nets with batch statistics (batch norm) set it; NULL for the others (mlp). The next
       forward and its backward see this process's part of a global batch of Bg images split
       over comm (base/comm.h), and normalise by the whole batch's statistics (collective:
       every process of comm calls them); comm NULL: the batch is whole (Bg = B). The model
       calls it before every forward (ml_model_forward_part). */
    void (*set_part)(void *net, const ml_comm *comm, int Bg);

    /*
     * Nets that place their MoE layers inside themselves (the segmentation net, cod) set
     * these and leave encode/decode/decode_backward/encode_backward NULL; autoencoders leave
     * them NULL (the model runs encode -> its MoE layers on the latent -> decode).
     * spatial: how many MoE layers the net has, and for layer l the feature map it routes,
     *   (C, HW), and the expert kind with its config (a pointer the net keeps alive);
     * forward: x (B, C, H, W) -> out (B, out_size), calling ml_moe_forward(moe[l], ...)
     *   where the layers sit (ids, labels: as ml_moe_forward takes them);
     * backward: dout (B, out_size) -> parameter gradients, through ml_moe_backward.
     */
    int (*spatial)(void *net, int l, int *C, int *HW, const ml_expert_kind **kind, const void **kind_cfg);
    int out_per_pixel;             /* out_size = out_per_pixel * H * W (cod: 1 mask logit) */
    int (*forward)(void *net, ml_moe *const *moe, const float *x, int B, int training, const int32_t *ids,
                   const int32_t *labels, int num_classes, float *out);
    int (*backward)(void *net, ml_moe *const *moe, const float *dout);
} ml_net_ops;

extern const ml_net_ops ml_net_mlp;
extern const ml_net_ops ml_net_srnn;
extern const ml_net_ops ml_net_cod;

#endif
