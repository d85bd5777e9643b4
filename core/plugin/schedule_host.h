/*
 * schedule_host.h — the growth-schedule plugin instance, hosted: creating it, asking it for
 * each layer's initial experts and, during training, how many experts to add where, with
 * the progress record and (ABI 1.1) every layer's routing health. Its answers are checked:
 * initial experts in 1..ML_MOE_MAX_EXPERTS-style caps given by the caller, additions >= 0
 * and within the cap.
 *
 * Ownership: embedded by its owner; ml_schedule_inst_release frees what it holds.
 * Errors: ML_ERR with "schedule 'name' (file): <what>".
 */
#ifndef MOELAB_SCHEDULE_HOST_H
#define MOELAB_SCHEDULE_HOST_H

#include "base/common.h"

typedef struct ml_schedule_inst {
    const ml_plugin *plugin;       /* the host's view, borrowed */
    const ml_schedule_api *api;
    const char *file;
    void *self;
    int num_layers;
    int max_experts;               /* the cap every layer must stay within */
    ml_optval opt[ML_MAX_OPTIONS];
    void *opt_packed;
} ml_schedule_inst;

int ml_schedule_inst_init(ml_schedule_inst *si, const ml_plugin *p, const ml_optval *opt, int num_layers,
                          int max_experts);
void ml_schedule_inst_release(ml_schedule_inst *si);
/* The experts layer l starts with, given the config's `experts`; checked in 1..max_experts. */
int ml_schedule_inst_initial(ml_schedule_inst *si, int layer, int configured, int *out);
/*
 * add (L) receives how many experts to add to each layer. p is filled by the caller except
 * size; each add is checked >= 0 and num_experts + add <= max_experts.
 */
int ml_schedule_inst_decide(ml_schedule_inst *si, const ml_progress *p, int *add);

#endif
