/*
 * loss_host.h — one balancing-loss plugin instance for one MoE layer, hosted: the only code
 * in moelab that creates a loss, keeps its state tensors and evaluates it (the training
 * loop, `moelab plugin-test`, Lua's moelab.loss and the bench all go through it).
 *
 * The host creates one instance per (configured loss, MoE layer), telling it the layer
 * (ABI 1.1), so a loss may keep per-layer state: tensors it declares through states() live
 * in the state block as "<prefix><name>" ("moe0.loss1.window"), are checkpointed, and grow
 * with the layer's experts. A loss that defines eval_v2 (ABI 1.1) can also give the
 * gradient with respect to the dispatch gates; for a 1.0 loss that gradient is zero.
 *
 * Ownership: embedded by its owner; ml_loss_inst_release frees what it holds (safe on a
 * zeroed or half-initialised one). The state block is borrowed; the owner commits it after
 * init and grow_declare.
 *
 * Errors: ML_ERR with "loss 'name' (file): <call> (layer L): <what>" (layer from 1).
 */
#ifndef MOELAB_LOSS_HOST_H
#define MOELAB_LOSS_HOST_H

#include "base/common.h"
#include "nn/params.h"
#include "plugin/tensors.h"

typedef struct ml_loss_inst {
    const ml_plugin *plugin;       /* the host's view, borrowed */
    const ml_loss_api *api;
    const char *file;
    void *self;
    int layer, num_layers;         /* layer from 0 */
    ml_optval opt[ML_MAX_OPTIONS];
    void *opt_packed;              /* at the plugin's sizeof(ml_optval), owned */
    ml_tensor_set state;           /* in the borrowed state block */
} ml_loss_inst;

/* opt NULL = the defaults. S may be NULL only for a loss without state tensors. */
int ml_loss_inst_init(ml_loss_inst *li, const ml_plugin *p, const ml_optval *opt, int layer, int num_layers,
                      int N, ml_params *S, const char *prefix);
void ml_loss_inst_release(ml_loss_inst *li);

/*
 * Evaluates the loss on r (B, N, logits, prob, dispatch, labels; layer, training, step and
 * state are filled in here). *value = the loss before its coefficient, checked finite.
 * Gradients, each NULL when not wanted: scale * d/dlogits and d/dprob are added into
 * (B, N) buffers, scale * d/dgate into a (K) buffer (only a loss with eval_v2 adds there).
 */
int ml_loss_inst_eval(ml_loss_inst *li, const ml_routing_record *r, float scale, float *dlogits, float *dprob,
                      float *dgate, double *value);
/* 1 when the loss can give gradients with respect to the gates (it defines eval_v2). */
int ml_loss_inst_has_gate_grad(const ml_loss_inst *li);
/* Grows per-expert state tensors to N rows at the block's next commit. */
int ml_loss_inst_grow_declare(ml_loss_inst *li, int N);

#endif
