/*
 * moe.h — one Mixture-of-Experts layer: a router plugin and N experts of one kind.
 *
 *   y[b] = sum over dispatch triples (b, e, g) of g · (x[b] + f_e(x[b]));  y[b] = x[b] if b has none
 *
 * Each sample is a row of `width` floats (a latent vector, or a whole C×H×W feature map).
 * The router plugin sees each sample's router input — the row itself, or (spatial layers)
 * its global average pool over H×W, (B, C) — and maps it to probabilities (B, N) and
 * dispatch triples. The samples routed to one expert are gathered into contiguous rows and
 * go through the expert at once; gradients flow to the router through the gates, and to
 * the input both through the experts and through the router input (the pool's backward).
 *
 * What an expert computes is its kind (ml_expert_kind): the residual MLP of the SRNN seed
 * (ml_expert_mlp: f(z) = W2·relu(W1·z + b1) + b2), or the convolutional blocks of the
 * segmentation model (model/cod_experts.h). The layer's tensors live in the model's blocks:
 * "moe<L>.expert<e>.<name>" for experts and "moe<L>.router.<name>" for the router in the
 * parameter block, router state in the state block (L = layer + 1: layers count from 1
 * wherever users see them; experts from 0).
 *
 * Losses add their gradients into dlogits/dprob (and, through eval_v2, dgate_loss) between
 * forward and backward (the buffers are zeroed by forward). Growth is two-phase because the
 * blocks are shared by all layers: ml_moe_grow_declare(), then the owner commits the
 * blocks, (ml_moe_init_experts() to start the new experts from others,) then
 * ml_moe_grow_finish(). Removal likewise: ml_moe_remove_declare() takes the removed experts'
 * tensors out of the blocks and renames the kept ones to their new numbers (expert
 * kept[j] becomes expert j: "moe1.expert3.w1" may become "moe1.expert2.w1"), the owner
 * commits, then ml_moe_remove_finish() tells the router.
 *
 * Variants: experts of one kind may differ in structure (the segmentation kinds: a texture
 * expert has other tensors than an edge expert). The layer keeps each expert's variant; a
 * kind with variants says which one an expert created at index e takes by default
 * (default_variant), growth may give new experts another (a copy takes its source's), and
 * removal keeps each kept expert's own. Kinds without variants leave default_variant NULL.
 *
 * Ownership: ml_moe_new returns an owned layer (ml_moe_free); the blocks are borrowed.
 */
#ifndef MOELAB_MOE_H
#define MOELAB_MOE_H

#include <stdint.h>
#include "base/comm.h"
#include "base/common.h"
#include "nn/params.h"
#include "plugin/router_host.h"

/* Experts one MoE layer may hold, however it grows (config, add_experts, a checkpoint). */
#define ML_MOE_MAX_EXPERTS 4096

typedef struct ml_moe ml_moe;

/* Tensors one expert may have. */
#define ML_EXPERT_MAX_TENSORS 32

/* An expert's |grad| sums that its backward computed while it wrote the gradients: bit i of
   `known` set when s[i] is tensor i's (describe order) sum of |g| in double, in 8 interleaved
   partial sums (element j in sum j mod 8) added ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 +
   s7)) — grad_mag's sum (moe.c), the same bits, so it need not read the tensor again. */
typedef struct ml_expert_abs {
    uint32_t known;
    double s[ML_EXPERT_MAX_TENSORS];
} ml_expert_abs;

/* One tensor of an expert, as its kind describes it (moe.c declares it in the block). */
typedef struct ml_expert_tensor {
    char name[48];              /* "w1": the block name is "moe<L>.expert<e>.<name>" */
    int ndim, shape[ML_MAX_DIMS];
    ml_init init;
    float init_value;
    int fan_in;
    /* The expert's intermediate units (drop_upcycle re-initialises a sampled share of them):
       the slices of this tensor along unit_axis are units unit_offset .. unit_offset +
       shape[unit_axis] - 1 of the expert's `units` units. units 0: the tensor has none.
       MLP: H hidden units, rows of w1 and b1, columns of w2. */
    int units, unit_axis, unit_offset;
} ml_expert_tensor;

/*
 * A kind of expert. `st` is the kind's state for one layer (create'd with the layer).
 * Rows are gathered samples of the layer's width; forward writes f_e(x) for rows
 * [0, n) of xg into yg; backward adds d/dx into dxg (zeroed by the layer) and accumulates
 * the expert's parameter gradients (through ml_moe_param / ml_moe_grad). Both may keep
 * activations in st between the calls, indexed by the rows' position r0 in the layer's
 * gather order (rows [r0, r0 + n)), which is the same in forward and backward.
 */
typedef struct ml_expert_kind {
    const char *name;
    void *(*create)(ml_moe *m, const void *cfg);
    void (*free)(void *st);
    /* The i-th tensor of expert e into *t: 0, or -1 when i is past its last. The same
       answer every time: checkpoints and growth rely on it. */
    int (*describe)(void *st, const ml_moe *m, int e, int i, ml_expert_tensor *t);
    int (*reserve)(void *st, ml_moe *m, int K);   /* activations for K gathered rows (each forward: grow) */
    int (*forward)(void *st, ml_moe *m, int e, int r0, int n, const float *xg, float *yg, int training);
    /* next: the expert whose backward this thread runs after this one, -1: none or not known
       (its weights and gradients may be prefetched). sums (NULL: not wanted): where the kind
       may leave the |grad| sums of tensors it summed while writing them (ml_expert_abs) */
    int (*backward)(void *st, ml_moe *m, int e, int r0, int n, const float *xg, const float *dyg, float *dxg,
                    int next, ml_expert_abs *sums);
    /* useful FLOPs of forward + backward for one row of expert e (bench), or NULL */
    double (*flops)(void *st, const ml_moe *m, int e);
    /* The variant of an expert created at index e (see Variants above), or NULL: one variant.
       describe, forward and backward read an expert's variant with ml_moe_variant. */
    int (*default_variant)(void *st, const ml_moe *m, int e);
    /* 1: forward and backward of different experts may run at once on the OpenMP threads (they
       touch only their own rows, tensors and activations, call no OpenMP themselves, and
       never fail); the layer then shares the used experts among the threads. 0: one by one. */
    int parallel;
    /* 1: backward deals with the expert's stale gradients itself (ml_tensor.grad_stale: a
       step's first backward of the expert overwrites them instead of accumulating, or zeroes
       them first with ml_moe_zero_stale) and clears the flags; 0: the layer zeroes them
       before it calls backward. */
    int own_stale;
} ml_expert_kind;

/* The residual MLP of the SRNN seed: cfg is an int *, the hidden width H. */
extern const ml_expert_kind ml_expert_mlp;

struct ml_moe {
    int layer;                      /* from 0 */
    int D;                          /* width of a row: floats per sample */
    int R;                          /* router input width: D, or C for spatial layers */
    int C, HW;                      /* spatial layers: rows are (C, H·W); else C = D, HW = 1 */
    int N;                          /* experts (= router.N) */
    ml_router_inst router;          /* the router plugin, hosted (plugin/router_host.h) */
    ml_params *P, *S;               /* borrowed: trainable and state blocks */
    const ml_expert_kind *kind;
    void *kst;                      /* the kind's state */
    int (*th)[ML_EXPERT_MAX_TENSORS]; /* (N) each expert's tensor handles in P, describe order */
    int *nt;                        /* (N) tensors of each expert */
    int *var;                       /* (ML_MOE_MAX_EXPERTS) each expert's variant; past N: what
                                       the next expert at that index takes */

    /* the last forward; buffers sized for cap_B samples and N experts */
    int cap_B, cap_N;
    int B, training;
    const float *x;                 /* (B, D) borrowed until backward */
    float *rin, *drin;              /* (B, R) router input and its gradient (spatial only) */
    int32_t *order;                 /* (K) triples sorted by expert */
    int32_t *estart;                /* (N + 1) */
    int32_t *cursor;                /* (N) */
    int32_t *bslot, *bstart;        /* (K), (B + 1): the slots of sample b, in slot order, are
                                       bslot[bstart[b] .. bstart[b + 1]) */
    float *xg, *yg;                 /* (K, D) gathered rows and their f_e, in order[] */
    float *dlogits, *dprob;         /* (B, N) losses accumulate here */
    float *dgate_loss;              /* (K) losses' gradient wrt the gates (ABI 1.1 eval_v2) */
    float *dgate, *dyg, *dxg;       /* (K), (K, D), (K, D) */
    float *grad_mag, *load;         /* (N) */
    int32_t *used;                  /* (N) the last forward: the experts with rows here, ascending */
    int n_used;
    const int32_t *label;           /* (B) borrowed, or NULL */
    int num_classes;

    /* a batch split over processes (ml_moe_set_part); comm NULL: the whole batch is here */
    const ml_comm *comm;            /* borrowed */
    int part_B;                     /* the global batch of the next split forwards */
    int Bl, off;                    /* the last forward: this process's rows [off, off + Bl) of B */
    int K;                          /* the last forward: the triples of this process's rows */
    float *gin, *dgin;              /* (B, R) the whole batch's router input, its gradient (split) */
    int after_pending;              /* a split backward's AFTER_BACKWARD awaits ml_moe_after_backward */
};

/*
 * Creates the router (options in the plugin's order) and declares every tensor.
 * ml_moe_new: residual-MLP experts on rows of D floats (the router sees the row), H hidden.
 * ml_moe_new_spatial: rows are (C, HW) feature maps, the router sees their mean over HW
 * (B, C), experts of `kind` (cfg passed to kind->create).
 */
ml_moe *ml_moe_new(int layer, int D, int H, int N, const ml_plugin *router, const ml_optval *opt,
                   ml_params *P, ml_params *S, uint64_t seed);
ml_moe *ml_moe_new_spatial(int layer, int C, int HW, int N, const ml_expert_kind *kind, const void *kind_cfg,
                           const ml_plugin *router, const ml_optval *opt, ml_params *P, ml_params *S,
                           uint64_t seed);
void ml_moe_free(ml_moe *m);

/* Expert e's i-th tensor (describe order): values and gradients in the block. */
static inline float *ml_moe_param(const ml_moe *m, int e, int i) { return ml_params_data(m->P, m->th[e][i]); }
static inline float *ml_moe_grad(const ml_moe *m, int e, int i) { return ml_params_grad(m->P, m->th[e][i]); }
/* Zeroes expert e's stale gradients (ml_tensor.grad_stale) and clears the flags. */
void ml_moe_zero_stale(const ml_moe *m, int e);
/* The i-th tensor of expert e as its kind describes it (also for experts not yet made:
   checkpoint loading asks for those a checkpoint has beyond N): 0, or -1 past the last. */
int ml_moe_expert_tensor(const ml_moe *m, int e, int i, ml_expert_tensor *t);

/* x (B, D) -> y (B, D). sample_id (B) and label (B, may be NULL) are borrowed until backward. */
int ml_moe_forward(ml_moe *m, const float *x, float *y, int B, int training,
                   const int32_t *sample_id, const int32_t *label, int num_classes);
/*
 * Data parallelism (run/dist.h): the forwards from now on compute one process's part of a
 * global batch of B rows split over comm's processes (base/comm.h): ml_moe_forward's x, y
 * and its B are this process's rows, sample_id and label the whole batch's (B). Every
 * process gathers the router inputs and routes the whole batch, so the router, its events,
 * the losses and health see exactly what one process sees on the whole batch, and runs
 * only its own rows' triples through the experts. The backward sums the gates' gradient
 * over the processes; the router's parameter gradients come out whole on every process
 * (the caller must not sum them again), the experts' as this process's part, so the
 * AFTER_BACKWARD event waits for ml_moe_after_backward, which the caller sends once the
 * gradients are summed. comm NULL or of one process: the whole batch (the default).
 */
int ml_moe_set_part(ml_moe *m, const ml_comm *comm, int B);
/* Sends a split backward's AFTER_BACKWARD (ml_moe_set_part); a no-op otherwise. */
int ml_moe_after_backward(ml_moe *m);
/* The forward's routing record, for losses and health. */
void ml_moe_record(const ml_moe *m, ml_routing_record *r);
/* dy (B, D) -> dx (B, D) accumulated; parameter gradients accumulated; then the router's
 * AFTER_BACKWARD event with each expert's mean |grad| and load (a split batch: later,
 * ml_moe_after_backward). */
int ml_moe_backward(ml_moe *m, const float *dy, float *dx);

/* Variant of expert e (0 for kinds without variants), and whether the kind has variants. */
static inline int ml_moe_variant(const ml_moe *m, int e) { return m->var[e]; }
static inline int ml_moe_has_variants(const ml_moe *m) { return m->kind->default_variant != NULL; }
/* 1 when v is a variant of this layer's kind (one its default_variant gives; 0 without variants). */
int ml_moe_variant_ok(const ml_moe *m, int v);
/* The i-th tensor of expert e as it would be with variant v (v < 0: its own). */
int ml_moe_expert_tensor_as(const ml_moe *m, int e, int v, int i, ml_expert_tensor *t);

/* Declares n_new experts; variant (n_new, may be NULL) gives each one's variant (< 0: the
   kind's default for its index). */
int ml_moe_grow_declare(ml_moe *m, int n_new, const int *variant);
int ml_moe_grow_finish(ml_moe *m, int old_n);

/* How new experts start (docs/lua-api.md, add_experts). */
typedef enum ml_expert_init {
    ML_EXPERT_INIT_RANDOM = 0,      /* every tensor by its own init (the kind's describe) */
    ML_EXPERT_INIT_COPY = 1,        /* a copy of a source expert (sparse upcycling) */
    ML_EXPERT_INIT_DROP_UPCYCLE = 2 /* a copy, then a share of its units re-initialised */
} ml_expert_init;

typedef struct ml_moe_init {
    ml_expert_init method;
    const int *source;   /* (n) the expert each new one copies (COPY, DROP_UPCYCLE) */
    double noise;        /* Gaussian noise added to copied values, std = noise * std of the tensor */
    double ratio;        /* DROP_UPCYCLE: share of the units re-initialised, in [0, 1] */
    double router_noise; /* the router's per-expert parameter rows are copied from the source's
                            with Gaussian noise of std router_noise * std of the tensor */
    ml_rng *rng;         /* noise and sampling */
} ml_moe_init;

/*
 * Starts experts first .. first+n-1 (declared and committed, before grow_finish) as `in`
 * says: COPY copies every tensor of the source (values; Adam moments stay zero and step
 * counts 0) and adds the noise; DROP_UPCYCLE then samples floor(ratio * U) of the U units
 * and re-initialises them in every tensor that has them from N(mean, std^2) of the source
 * tensor's values (Nakamura et al. 2025). Sources must have the new experts' variants.
 * RANDOM does nothing (the commit initialised them).
 */
int ml_moe_init_experts(ml_moe *m, int first, int n, const ml_moe_init *in);
/* Units re-initialised per expert by DROP_UPCYCLE with this ratio, and U (0: none). */
int ml_moe_drop_units(const ml_moe *m, int e, double ratio, int *units);

/*
 * Removes experts: the layer keeps kept[0..nkeep) (ascending old ids, 1 <= nkeep <= N), the
 * expert numbered j afterwards being kept[j]. The removed experts' tensors leave the
 * parameter block; the kept ones are renamed to their new numbers; the router's per-expert
 * tensors keep the kept rows (ml_router_inst_remove_declare). The blocks must be committed
 * before and are committed by the owner after, before ml_moe_remove_finish.
 */
int ml_moe_remove_declare(ml_moe *m, const int *kept, int nkeep);
int ml_moe_remove_finish(ml_moe *m, const int *kept, int old_n);
int ml_moe_epoch_end(ml_moe *m, int epoch);

/* Router state tensors the plugin asked to report per expert (e.g. saturation). */
int ml_moe_reported_state(ml_moe *m, const char **names, const float **values, int cap);
/* Dispatched samples of the last forward that had no expert (passed through). */
static inline int ml_moe_dropped(const ml_moe *m) { return m->router.n_dropped; }

#endif
