/*
 * moe.h — one Mixture-of-Experts layer: a router plugin and N residual-MLP experts.
 *
 *   expert_e(z) = z + W2_e · relu(W1_e · z + b1_e) + b2_e        W1 (H, D), W2 (D, H)
 *   y[b] = sum over dispatch triples (b, e, g) of g · expert_e(z[b]);  y[b] = z[b] if b has none
 *
 * The router plugin maps z (B, D) to probabilities (B, N) and dispatch triples; the samples
 * routed to one expert go through it as one GEMM per expert layer (gathered rows). The
 * layer's tensors live in the model's blocks: "moe<L>.expert<e>.{w1,b1,w2,b2}" and the
 * router's "moe<L>.router.<name>" in the parameter block, router state in the state block
 * (L = layer + 1: layers count from 1 wherever users see them; experts from 0).
 *
 * Losses add their gradients into dlogits/dprob (and, through eval_v2, dgate_loss) between
 * forward and backward (the buffers are zeroed by forward). Growth is two-phase because the blocks are shared by all layers:
 * ml_moe_grow_declare(), then the owner commits the blocks, then ml_moe_grow_finish().
 *
 * Ownership: ml_moe_new returns an owned layer (ml_moe_free); the blocks are borrowed.
 */
#ifndef MOELAB_MOE_H
#define MOELAB_MOE_H

#include <stdint.h>
#include "base/common.h"
#include "nn/params.h"
#include "plugin/router_host.h"

/* Experts one MoE layer may hold, however it grows (config, add_experts, a checkpoint). */
#define ML_MOE_MAX_EXPERTS 4096

typedef struct ml_moe {
    int layer;                      /* from 0 */
    int D, H, N;                    /* width, expert hidden width, experts (= router.N) */
    ml_router_inst router;          /* the router plugin, hosted (plugin/router_host.h) */
    ml_params *P, *S;               /* borrowed: trainable and state blocks */
    int *hw1, *hb1, *hw2, *hb2;     /* (N) tensor handles */

    /* the last forward; buffers sized for cap_B samples and N experts */
    int cap_B, cap_N;
    int B, training;
    const float *x;                 /* (B, D) borrowed until backward */
    int32_t *order;                 /* (K) triples sorted by expert */
    int32_t *estart;                /* (N + 1) */
    int32_t *cursor;                /* (N) */
    float *xg, *hg, *yg;            /* (K, D), (K, H), (K, D) gathered, in order[] */
    float *dlogits, *dprob;         /* (B, N) losses accumulate here */
    float *dgate_loss;              /* (K) losses' gradient wrt the gates (ABI 1.1 eval_v2) */
    float *dgate, *dyg, *dhg, *dxg; /* (K), (K, D), (K, H), (K, D) */
    float *grad_mag, *load;         /* (N) */
    const int32_t *label;           /* (B) borrowed, or NULL */
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
/* Dispatched samples of the last forward that had no expert (passed through). */
static inline int ml_moe_dropped(const ml_moe *m) { return m->router.n_dropped; }

#endif
