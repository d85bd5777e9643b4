/*
 * optim.h — the optimizers (SGD with momentum, Adam, AdamW) over an ml_params block, with
 * parameter groups and frozen tensors.
 *
 * Adam follows Kingma & Ba (2015) as torch.optim.Adam implements it, weight decay as an
 * L2 term added to the gradient (torch's `weight_decay`); AdamW is torch.optim.AdamW,
 * decoupled weight decay (Loshchilov & Hutter 2019): p <- p - lr*wd*p, then the Adam
 * update without decay. SGD adds wd*p to the gradient too. Each tensor keeps its own step
 * count for bias correction, as torch does per parameter, so experts added mid-training
 * start their Adam moments from zero with a fresh bias correction.
 *
 * One step is a loop over the tensors and, inside, one tight loop over each tensor's
 * elements. A tensor's settings come from its group (ml_tensor.group, -1: the base
 * settings): the first group whose pattern (base/glob.h) matches the tensor's name when
 * ml_optim_place first sees it. A group's lr or weight_decay may be NAN: it then follows
 * the base value. A frozen tensor (ml_tensor.frozen) is left exactly as it is: no update,
 * no decay, its moments and step count unchanged (torch's requires_grad = False).
 *
 * Idle experts (optim.idle_experts). ML_OPTIM_IDLE_DENSE (the default) updates every tensor
 * every step, as torch.optim does when every parameter has a gradient (zero for an expert that
 * received no samples: its moments decay and its weights still move by the momentum, and weight
 * decay applies). ML_OPTIM_IDLE_LAZY leaves the tensors the MoE layer marked idle
 * (ml_tensor.idle: an expert that received no samples in this step) exactly as they are:
 * weights, moments and step count, as torch.optim.SparseAdam leaves the rows without a
 * gradient, and as torch.optim.Adam/AdamW skip parameters whose .grad is None. Bias correction
 * then uses the tensor's own step count (the steps in which its expert was used), not the
 * global one: the moments are averages over exactly those updates, so 1 - beta^t_e unbiases
 * them (SparseAdam's single count per table is the global one for its rows; a per-expert
 * module in torch has its own, as here). Weight decay (L2 or decoupled) and SGD's momentum
 * apply only in the steps that update the tensor. Everything else (routers, the nets) is
 * updated every step in both modes.
 *
 * Ownership: ml_optim is a plain value embedded by its owner; nothing to free.
 */
#ifndef MOELAB_OPTIM_H
#define MOELAB_OPTIM_H

#include <stdint.h>
#include "nn/params.h"

typedef enum { ML_OPTIM_ADAM = 0, ML_OPTIM_SGD = 1, ML_OPTIM_ADAMW = 2 } ml_optim_kind;
typedef enum { ML_OPTIM_IDLE_DENSE = 0, ML_OPTIM_IDLE_LAZY = 1 } ml_optim_idle;

#define ML_OPTIM_MAX_GROUPS 32
#define ML_OPTIM_GROUP_NAME_MAX 64 /* bytes, NUL included */

typedef struct ml_optim_group {
    char name[ML_OPTIM_GROUP_NAME_MAX];
    char match[128];    /* the glob on tensor names (ML_GLOB_MAX bytes at most) */
    float lr;           /* NAN: the base lr */
    float weight_decay; /* NAN: the base weight_decay */
    int frozen;         /* tensors that join the group start frozen */
} ml_optim_group;

typedef struct ml_optim {
    ml_optim_kind kind;
    float lr, beta1, beta2, eps, weight_decay, momentum;
    int64_t t; /* optimizer steps taken */
    int n_groups;
    ml_optim_group group[ML_OPTIM_MAX_GROUPS];
    ml_optim_idle idle; /* what a step does with the tensors of idle experts (see above) */
} ml_optim;

/* "adam", "adamw", "sgd" -> kind; -1 for anything else. And back. */
int ml_optim_kind_from_name(const char *name);
const char *ml_optim_kind_name(ml_optim_kind kind);
/* "dense", "lazy" -> ml_optim_idle; -1 for anything else. And back. */
int ml_optim_idle_from_name(const char *name);
const char *ml_optim_idle_name(ml_optim_idle idle);

/* Appends a group; ML_ERR on a bad or duplicate name, a bad pattern, or too many groups.
   name: 1..63 letters, digits, '_' or '-'. */
int ml_optim_add_group(ml_optim *o, const char *name, const char *match, float lr, float weight_decay, int frozen);
/* The group's index, or -1. */
int ml_optim_find_group(const ml_optim *o, const char *name);
/* Gives each tensor ml_optim_place has not seen yet its group and that group's frozen flag
   (tensors declared since the last call: a new model, experts added). */
void ml_optim_place(const ml_optim *o, ml_params *p);
/* Tensor h was renamed (experts renumbered after a removal): it joins the group its new
   name matches; its frozen flag, moments and step count stay as they are. */
void ml_optim_regroup(const ml_optim *o, ml_params *p, int h);
/*
 * Freezes (frozen = 1) or unfreezes the tensors of group g, and sets the group's own flag
 * so that tensors joining it later follow; or, g < 0, the tensors whose names match
 * pattern (those that exist now). Returns how many tensors matched; *changed (may be
 * NULL) receives how many of them changed state.
 */
int ml_optim_set_frozen(ml_optim *o, ml_params *p, int g, const char *pattern, int frozen, int *changed);
/* The settings a tensor is updated with. */
float ml_optim_tensor_lr(const ml_optim *o, const ml_tensor *t);
float ml_optim_tensor_wd(const ml_optim *o, const ml_tensor *t);

/* One step over every tensor (lazy: but the idle ones). The element loops are shared by the
   threads in chunks; each element's arithmetic is the same whatever the thread count. */
void ml_optim_step(ml_optim *o, ml_params *p);

#endif
