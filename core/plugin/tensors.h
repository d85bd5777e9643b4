/*
 * tensors.h — the tensors a plugin asks the host to keep (ml_tensor_decl): reading the
 * declarations at the plugin's element size, checking them, and keeping them as a set of
 * named tensors in one of the model's blocks (parameters: values, gradients, optimizer
 * moments; state: values only) under a prefix such as "moe0.router.". The router and loss
 * hosts hold one set per block; per-expert tensors grow with the layer.
 *
 * Ownership: an ml_tensor_set is embedded by its owner; the block is borrowed. Pointers in
 * data[] and grad[] are valid until the block's next commit: call ml_tensor_set_bind first.
 */
#ifndef MOELAB_TENSORS_H
#define MOELAB_TENSORS_H

#include "base/common.h"
#include "nn/params.h"

#define ML_DECL_NAME_MAX 48 /* bytes of a declared name, NUL included */

/*
 * Asks the plugin for its declarations: calls fn(self, buf, ML_MAX_TENSORS) with a buffer
 * laid out at the plugin's sizeof(ml_tensor_decl), copies what it wrote into out (host
 * layout) and checks it (ml_tensor_decls_check). what: "params" or "states", for messages
 * and crash reports. Returns the count, or ML_ERR with "router 'x' (file): params(): ...".
 */
int ml_tensor_decls_read(const ml_plugin *p, const char *what, int (*fn)(void *, ml_tensor_decl *, int),
                         void *self, ml_tensor_decl *out);
/* Names 1..47 printable characters without blanks, quotes or backslashes and unique; rows
   and cols >= 1 with rows * cols <= 2^28; a known init (UNIFORM_FANIN with fan_in >= 1). */
int ml_tensor_decls_check(const ml_tensor_decl *d, int n, const char *what);
/* Rows of a declaration for N experts. */
int ml_tensor_decl_rows(const ml_tensor_decl *d, int num_experts);

typedef struct ml_tensor_set {
    ml_params *blk;                                 /* borrowed */
    int n;
    ml_tensor_decl decl[ML_MAX_TENSORS];            /* names point into name[] */
    char name[ML_MAX_TENSORS][ML_DECL_NAME_MAX];
    int handle[ML_MAX_TENSORS];                     /* in blk */
    float *data[ML_MAX_TENSORS];                    /* (rows, cols), bound */
    float *grad[ML_MAX_TENSORS];                    /* trainable blocks only, bound */
} ml_tensor_set;

/* Declares n tensors "<prefix><name>" in blk, per-expert ones with N rows (initialised by
   the block's next commit). */
int ml_tensor_set_declare(ml_tensor_set *s, ml_params *blk, const char *prefix, const ml_tensor_decl *d,
                          int n, int N);
/* Points data[] and grad[] at the tensors (after any commit of the block). */
void ml_tensor_set_bind(ml_tensor_set *s);
/* Grows every per-expert tensor to N rows; takes effect at the block's next commit. */
int ml_tensor_set_grow(ml_tensor_set *s, int N);
/* Experts were removed: every per-expert tensor keeps the rows kept[0..nkeep) (ascending old
   ids), in that order (ml_params_shrink_rows; the block must be committed). */
int ml_tensor_set_keep_rows(ml_tensor_set *s, const int *kept, int nkeep);
/* 1 when the set holds a per-expert tensor. */
int ml_tensor_set_has_per_expert(const ml_tensor_set *s);

#endif
