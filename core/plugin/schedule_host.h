/*
 * schedule_host.h — the growth-schedule plugin instance, hosted: creating it, asking it for
 * each layer's initial experts and, during training, how many experts to add where and
 * (ABI 1.2) which to remove, with the progress record and (ABI 1.1) every layer's routing
 * health. A 1.2 schedule may also keep per-layer state tensors (in the state block, as
 * "moe<L>.schedule.<name>", checkpointed; per-expert ones follow the layer's experts) and
 * watch every training step's routing (observe).
 *
 * Its answers are checked: initial experts in 1..max_experts; additions >= 0; removals
 * naming existing experts, none twice, never all of a layer; and the layer's size after the
 * removals and additions within max_experts.
 *
 * Ownership: embedded by its owner; ml_schedule_inst_release frees what it holds (safe on a
 * zeroed or half-initialised one). The state block is borrowed: the owner commits it after
 * ml_schedule_inst_declare_states, grow_declare and keep_rows.
 * Errors: ML_ERR with "schedule 'name' (file): <what>".
 */
#ifndef MOELAB_SCHEDULE_HOST_H
#define MOELAB_SCHEDULE_HOST_H

#include "base/common.h"
#include "nn/params.h"
#include "plugin/tensors.h"

typedef struct ml_schedule_inst {
    const ml_plugin *plugin;       /* the host's view, borrowed */
    const ml_schedule_api *api;
    const char *file;
    void *self;
    int num_layers;
    int max_experts;               /* the cap every layer must stay within */
    ml_optval opt[ML_MAX_OPTIONS];
    void *opt_packed;
    ml_tensor_set *state;          /* (num_layers) per-layer state (ABI 1.2), or NULL: none */
} ml_schedule_inst;

int ml_schedule_inst_init(ml_schedule_inst *si, const ml_plugin *p, const ml_optval *opt, int num_layers,
                          int max_experts);
void ml_schedule_inst_release(ml_schedule_inst *si);
/* The experts layer l starts with, given the config's `experts`; checked in 1..max_experts. */
int ml_schedule_inst_initial(ml_schedule_inst *si, int layer, int configured, int *out);
/*
 * Declares the schedule's state tensors (ABI 1.2 states()) for every layer in S, layer l
 * with num_experts[l] experts; returns how many tensors each layer got (0: none, S untouched)
 * or ML_ERR. The owner commits S when it is more than 0.
 */
int ml_schedule_inst_declare_states(ml_schedule_inst *si, ml_params *S, const int *num_experts);
/* Layer l grows to N experts / keeps the experts kept[0..nkeep) (ml_tensor_set_keep_rows). */
int ml_schedule_inst_grow_declare(ml_schedule_inst *si, int layer, int N);
int ml_schedule_inst_keep_rows(ml_schedule_inst *si, int layer, const int *kept, int nkeep);
/* The state set of layer l, or NULL. */
const ml_tensor_set *ml_schedule_inst_state(const ml_schedule_inst *si, int layer);
/* One training step's routing of layer l (ABI 1.2 observe; nothing for older schedules). */
int ml_schedule_inst_observe(ml_schedule_inst *si, int layer, int epoch, int64_t step, const ml_routing_record *r,
                             int n_dropped);
/*
 * p is filled by the caller except size. add (L) receives how many experts to add to each
 * layer; remove[l] (room for p->num_experts[l] ids) and n_remove (L) the experts to remove
 * (ids before the decision; always none for a schedule without decide_v2). Everything is
 * checked (see the top of this file); on error nothing is written.
 */
int ml_schedule_inst_decide(ml_schedule_inst *si, const ml_progress *p, int *add, int *const *remove, int *n_remove);

#endif
