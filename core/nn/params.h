/*
 * params.h — named tensors laid out in one contiguous block.
 *
 * A model's trainable parameters live in one ml_params block (trainable = 1): values,
 * gradients and the optimizer's two moment buffers share one layout, so zeroing gradients
 * is one memset, an optimizer step one loop, a checkpoint one header plus blobs. Router
 * state and batch-norm running statistics live in a second block (trainable = 0) with
 * values only.
 *
 * Tensors are declared by name, then ml_params_commit() lays the block out. Declaring
 * more tensors or growing a tensor's leading dimension and committing again re-lays the
 * block out by name: old values (and moments) are copied, new elements initialised, their
 * moments zero. Handles (the int returned by declare) stay valid across commits; pointers
 * do not, so code re-reads ml_params_data() after any commit.
 *
 * Removing experts shrinks a block: ml_params_remove() takes a tensor out (its handle stays
 * taken, by a tombstone that holds no values and no name, so every other handle stays
 * valid), ml_params_rename() gives a kept tensor its new name, ml_params_shrink_rows()
 * keeps chosen rows of a tensor (values, gradients and moments alike). The next commit
 * lays out what is left.
 *
 * Layout order: tensors are laid out in the order of their `seq`, which declaration
 * assigns increasingly, so the layout is declaration order until ml_params_reorder()
 * changes it (a resumed run takes the order of the checkpoint it continues, which
 * removals and additions may have made differ from a fresh declaration order). After a
 * commit, p->order lists the live tensors' handles in layout order: code that writes
 * tensors out (checkpoints, name listings) walks it; code that treats each tensor alone
 * may walk the handles and skip the removed ones.
 *
 * Ownership: ml_params is embedded by its owner; ml_params_free releases the buffers.
 */
#ifndef MOELAB_PARAMS_H
#define MOELAB_PARAMS_H

#include <stddef.h>
#include "base/common.h"

#define ML_TENSOR_NAME_MAX 96
#define ML_MAX_DIMS 4

typedef struct ml_tensor {
    char name[ML_TENSOR_NAME_MAX];
    int ndim;
    int shape[ML_MAX_DIMS];
    size_t n;          /* elements */
    size_t off;        /* offset in the block, in floats; 16-float aligned */
    ml_init init;
    float init_value;
    int fan_in;
    size_t committed;  /* elements holding values from an earlier commit */
    int64_t step;      /* optimizer steps this tensor has taken (Adam bias correction, as torch keeps per parameter) */
    /* set by the optimizer (nn/optim.h) */
    int16_t group;     /* its parameter group, -1: the base settings */
    uint8_t frozen;    /* 1: the optimizer leaves it exactly as it is */
    uint8_t placed;    /* ml_optim_place has given it its group */
    uint8_t removed;   /* ml_params_remove: a tombstone (no name, no values) keeping its handle */
    /* set by the MoE layer's training forward (model/moe.h): 1 for the tensors of an expert that
       received no samples, whose gradient the backward leaves at zero; a lazy optimizer step
       (optim.idle_experts: lazy) leaves them as they are. 0 for every other tensor. */
    uint8_t idle;
    /* set by the MoE layer's backward (model/moe.h) once an expert's gradient is final for the
       step: 1 when it checked that every element is finite (while it summed |grad| for the
       router), so ml_params_grad_finite_used need not read it again; cleared by the training
       forward, before the backward writes the gradient. */
    uint8_t grad_finite;
    /* The MoE layer zeroes its experts' gradients itself, each in the step that writes it,
       while it is in cache (model/moe.h): for a tensor marked zero_later (the layer marks its
       experts'), ml_params_zero_grad_used marks grad_stale instead of writing zeros. A stale
       gradient reads as zero but holds an earlier step's values: the expert's backward
       overwrites it (or zeroes it first), a split batch's forward zeroes those of experts with
       rows on other processes only, and an idle expert's stays stale. Every reader takes a
       stale gradient as zero: the optimizer (a dense step updates the tensor with a zero
       gradient, without reading it), the finiteness checks (they skip it). */
    uint8_t zero_later;
    uint8_t grad_stale;
    int64_t seq;       /* layout position: tensors are laid out by increasing seq */
} ml_tensor;

typedef struct ml_params {
    int trainable;
    int count, cap;
    ml_tensor *t;      /* (count) */
    size_t total;      /* floats in each block */
    float *data;       /* (total) */
    float *grad;       /* (total), trainable only */
    float *m, *v;      /* (total) optimizer moments, trainable only */
    int64_t next_seq;  /* seq of the next declaration */
    int *order;        /* (n_live) live handles in layout order, as of the last commit */
    int n_live;
} ml_params;

void ml_params_init(ml_params *p, int trainable);
void ml_params_free(ml_params *p);
/* Declares a tensor; returns its handle, or ML_ERR (duplicate name, bad shape). */
int ml_params_declare(ml_params *p, const char *name, int ndim, const int *shape,
                      ml_init init, float init_value, int fan_in);
/* Changes the leading dimension of a tensor (growth); takes effect at the next commit. */
int ml_params_grow(ml_params *p, int h, int dim0);
/* The handle of the live tensor of that name, or -1. */
int ml_params_find(const ml_params *p, const char *name);
/* Takes tensor h out of the block at the next commit; its handle is never reused. */
int ml_params_remove(ml_params *p, int h);
/* Renames live tensor h; ML_ERR when another live tensor has that name. */
int ml_params_rename(ml_params *p, int h, const char *name);
/*
 * Keeps rows keep[0..nkeep) of committed tensor h (rows along dimension 0, ascending and
 * distinct, 1 <= nkeep <= rows), in that order, in values, gradients and moments at once;
 * dimension 0 becomes nkeep. The next commit re-lays the block out.
 */
int ml_params_shrink_rows(ml_params *p, int h, const int *keep, int nkeep);
/* Lays out the live tensors handles[0..n) first, in that order, then the others in their
   current order; takes effect at the next commit. Removed or repeated handles: ML_ERR. */
int ml_params_reorder(ml_params *p, const int *handles, int n);
/* Lays out the blocks; copies old values, initialises new elements from rng. */
int ml_params_commit(ml_params *p, ml_rng *rng);
void ml_params_zero_grad(ml_params *p);
/*
 * Zeroes the gradients of the tensors not marked idle (ml_tensor.idle), in runs of adjacent
 * tensors (layout order, padding included); those marked zero_later are marked grad_stale
 * instead (zero to every reader; the MoE layer's backward overwrites them). Exact as
 * ml_params_zero_grad when the idle tensors' gradients are zero (or stale) already — which
 * holds when the idle flags are those of the last training forward, whose backward wrote only
 * the other tensors' gradients, and every gradient was zero before it: the training step
 * zeroes with this before its forward.
 */
void ml_params_zero_grad_used(ml_params *p);
/* 1 when every gradient in the block is finite: one vectorised pass over p->grad (run
 * before each optimizer step; grad_stale tensors count as zero). 1 for a block without
 * gradients. */
int ml_params_grad_finite(const ml_params *p);
/* The same over the tensors not marked idle (their gradients are zero: see above) and not
   marked grad_finite (checked already). */
int ml_params_grad_finite_used(const ml_params *p);
/* The handle of the first tensor (declaration order) holding a non-finite gradient, or
 * -1; *count (may be NULL) receives how many tensors hold one. The slow path after
 * ml_params_grad_finite said no. */
int ml_params_grad_first_nonfinite(const ml_params *p, int *count);

static inline float *ml_params_data(const ml_params *p, int h) { return p->data + p->t[h].off; }
static inline float *ml_params_grad(const ml_params *p, int h) { return p->grad + p->t[h].off; }
static inline size_t ml_params_numel(const ml_params *p) {
    size_t n = 0;
    for (int i = 0; i < p->count; i++) n += p->t[i].removed ? 0 : p->t[i].n;
    return n;
}

/* Initialises x[0..n) per init kind. */
void ml_init_fill(float *x, size_t n, ml_init init, float value, int fan_in, ml_rng *rng);

/* 1 when none of x[0..n) is Inf or NaN (a vectorised test of the exponent bits) */
int ml_span_finite(const float *x, size_t n);

#endif
