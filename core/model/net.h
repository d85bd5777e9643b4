/*
 * net.h — the encoder/decoder contract an autoencoder model type implements.
 *
 * moelab's models are MoE autoencoders: encode x (B, C, H, W) to a latent z (B, D), pass
 * z through the MoE layers, decode back to x̂. A model type (mlp, srnn) provides an
 * ml_net: its tensors are declared in the model's blocks at creation, activations are
 * kept between forward and backward, backward accumulates parameter gradients. The
 * decoder may read what the encoder kept (U-Net skips). The model owns the net.
 */
#ifndef MOELAB_NET_H
#define MOELAB_NET_H

#include "base/common.h"
#include "nn/params.h"

typedef struct ml_net_shape {
    int C, H, W;   /* input image */
    int latent;    /* D */
    int hidden;    /* mlp hidden width */
    const int *channels; int n_channels; /* srnn encoder channels */
} ml_net_shape;

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
} ml_net_ops;

extern const ml_net_ops ml_net_mlp;
extern const ml_net_ops ml_net_srnn;

#endif
