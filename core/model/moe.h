/*
 * moe.h — one Mixture-of-Experts layer: a router plugin and N residual-MLP experts.
 *
 *   expert_e(z) = z + W2_e · relu(W1_e · z + b1_e) + b2_e        W1 (H, D), W2 (D, H)
 *   y[b] = sum over dispatch triples (b, e, g) of g · expert_e(z[b]);  y[b] = z[b] if b has none
 *
 * The router plugin maps z (B, D) to probabilities (B, N) and dispatch triples; the samples
 * routed to one expert go through it as one GEMM per expert layer (gathered rows). The
 * layer's tensors live in the model's blocks: "moe<L>.expert<e>.{w1,b1,w2,b2}" and the
 * router's "moe<L>.router.<name>" in the parameter block, router state in the state block.
 *
 * Losses add their gradients into dlogits/dprob between forward and backward (the buffers
 * are zeroed by forward). Growth is two-phase because the blocks are shared by all layers:
 * ml_moe_grow_declare(), then the owner commits the blocks, then ml_moe_grow_finish().
 *
 * Ownership: ml_moe_new returns an owned layer (ml_moe_free); the blocks are borrowed.
 */
#ifndef MOELAB_MOE_H
#define MOELAB_MOE_H

#include <stdint.h>
#include "base/common.h"
#include "nn/params.h"

#define ML_MOE_MAX_RTENSORS 16
/* Experts one MoE layer may hold, however it grows (config, add_experts, a checkpoint). */
#define ML_MOE_MAX_EXPERTS 4096

typedef struct ml_moe {
    int layer;
    int D, H, N;                    /* width, expert hidden width, experts */
    const ml_plugin *plugin;        /* borrowed; plugins are never unloaded mid-run */
    const char *file;               /* the plugin's file (borrowed), for errors and crash reports */
    const ml_router_api *api;
    void *router;
    ml_params *P, *S;               /* borrowed: trainable and state blocks */
    int *hw1, *hb1, *hw2, *hb2;     /* (N) tensor handles */
    int n_rp, n_rs;
    int rp[ML_MOE_MAX_RTENSORS], rs[ML_MOE_MAX_RTENSORS];
    ml_tensor_decl rs_decl[ML_MOE_MAX_RTENSORS];
    char rs_name[ML_MOE_MAX_RTENSORS][64];
    const float *rp_ptr[ML_MOE_MAX_RTENSORS];
    float *rg_ptr[ML_MOE_MAX_RTENSORS], *rs_ptr[ML_MOE_MAX_RTENSORS];
    ml_rng rng;
    int64_t step;
    int epoch;

    /* the last forward; buffers sized for cap_B samples and N experts */
    int cap_B, cap_N;
    int B, training;
    const float *x;                 /* (B, D) borrowed until backward */
    float *logits, *prob;           /* (B, N) */
    int32_t *ds, *de;               /* (K) dispatch sample, expert */
    float *dg;                      /* (K) gates */
    int n_disp, n_dropped;
    int32_t *order;                 /* (K) triples sorted by expert */
    int32_t *estart;                /* (N + 1) */
    int32_t *cursor;                /* (N) */
    int32_t *hits;                  /* (B) triples per sample */
    uint64_t *pairs;                /* (B*N bits) (sample, expert) pairs seen in this dispatch */
    float *xg, *hg, *yg;            /* (K, D), (K, H), (K, D) gathered, in order[] */
    float *dlogits, *dprob;         /* (B, N) losses accumulate here */
    float *dgate, *dyg, *dhg, *dxg; /* (K), (K, D), (K, H), (K, D) */
    float *grad_mag, *load;         /* (N) */
    const int32_t *label;           /* (B) borrowed, or NULL */
    const int32_t *sample_id;       /* (B) borrowed until backward */
    int num_classes;
} ml_moe;

/* Creates the router (options in the plugin's order) and declares every tensor. */
ml_moe *ml_moe_new(int layer, int D, int H, int N, const ml_plugin *router, const ml_optval *opt,
                   ml_params *P, ml_params *S, uint64_t seed);
void ml_moe_free(ml_moe *m);

/* z (B, D) -> y (B, D). sample_id (B) and label (B, may be NULL) are borrowed until backward. */
int ml_moe_forward(ml_moe *m, const float *z, float *y, int B, int training,
                   const int32_t *sample_id, const int32_t *label, int num_classes);
/* The forward's routing record, for losses and health. */
void ml_moe_record(const ml_moe *m, ml_routing_record *r);
/* dy (B, D) -> dz (B, D) accumulated; parameter gradients accumulated; then the router's
 * AFTER_BACKWARD event with each expert's mean |grad| and load. */
int ml_moe_backward(ml_moe *m, const float *dy, float *dz);

int ml_moe_grow_declare(ml_moe *m, int n_new);
int ml_moe_grow_finish(ml_moe *m, int old_n);
int ml_moe_epoch_end(ml_moe *m, int epoch);

/* Router state tensors the plugin asked to report per expert (e.g. saturation). */
int ml_moe_reported_state(ml_moe *m, const char **names, const float **values, int cap);

#endif
