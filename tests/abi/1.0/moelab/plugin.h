/* FROZEN: moelab/plugin.h of ABI 1.0, as shipped (see tests/abi/README). Never edit. */
/*
 * moelab/plugin.h — the one header a moelab plugin includes.
 *
 * A plugin is a shared object that exports exactly one symbol, `moelab_plugin`, an
 * ml_plugin descriptor: its kind (router, loss or growth schedule), its name, the ABI
 * version it was built against, the options it accepts and a table of functions.
 * The host passes every plugin an ml_host table (allocation, logging, RNG, BLAS), so a
 * plugin links nothing from moelab and can be compiled outside the tree with
 *
 *     cc -O2 -shared -fPIC -fvisibility=hidden -I<moelab>/core/include my_router.c -o my_router.so
 *
 * Versioning (as SQLite's sqlite3_api_routines and Redis's module API):
 *   - ML_ABI_MAJOR must equal the host's; ML_ABI_MINOR must be <= the host's.
 *   - Structs only ever grow at the end. Each starts with `size`, the sizeof() the other
 *     side was compiled with; a field past `size` is absent and is never read.
 *
 * Ownership: everything the host passes is borrowed for the duration of the call, except
 * where a comment says otherwise. A plugin's `create` returns an object the host later
 * passes to `destroy`. Errors: a function that can fail returns 0 on success or -1 after
 * writing a one-line message (no trailing newline) into `err`, a buffer of ML_ERR_MAX bytes.
 *
 * Shapes use the letters of the rest of moelab: B samples in the batch, D features of the
 * MoE layer's input, N experts, K dispatch slots (n_disp, at most B*N).
 */
#ifndef MOELAB_PLUGIN_H
#define MOELAB_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define ML_ABI_MAJOR 1
#define ML_ABI_MINOR 0
#define ML_ERR_MAX 256

#if defined(__GNUC__)
#define ML_EXPORT __attribute__((visibility("default")))
#else
#define ML_EXPORT
#endif

/* The symbol every plugin exports; define it with ML_PLUGIN_EXPORT. */
#define ML_PLUGIN_SYMBOL "moelab_plugin"
#define ML_PLUGIN_EXPORT ML_EXPORT const ml_plugin moelab_plugin

/* ------------------------------------------------------------------------ options */

typedef enum ml_opt_type {
    ML_OPT_INT = 1,   /* integer; min/max inclusive */
    ML_OPT_FLOAT = 2, /* real; min/max inclusive */
    ML_OPT_BOOL = 3,  /* true/false */
    ML_OPT_ENUM = 4   /* one word out of `choices`, "a|b|c" */
} ml_opt_type;

/* One option a plugin accepts. The table is static data of the plugin. */
typedef struct ml_option {
    const char *name;    /* key under the plugin's section in YAML */
    ml_opt_type type;
    const char *def;     /* default, as YAML text ("2", "0.5", "true", "mean") */
    double min, max;     /* inclusive range for INT/FLOAT; no range when min > max */
    const char *choices; /* ENUM only: "none|max|mean" */
    const char *doc;     /* one line, shown by `moelab plugins` */
} ml_option;

/* A resolved option value; the host passes an array in option-table order. */
typedef struct ml_optval {
    int64_t i;     /* INT value; BOOL 0/1; ENUM index into choices */
    double f;      /* FLOAT value (also set for INT) */
    const char *s; /* ENUM choice name; NULL otherwise */
} ml_optval;

/* ------------------------------------------------------------------- host table */

typedef struct ml_rng { uint64_t s[4]; } ml_rng; /* xoshiro256** state; use host->rng_* */

enum { ML_LOG_DEBUG = 0, ML_LOG_INFO = 1, ML_LOG_WARN = 2 };

typedef struct ml_host {
    uint32_t size; /* sizeof(ml_host) in the host */
    uint16_t abi_major, abi_minor;
    void *(*alloc)(size_t nbytes);   /* zero-filled; NULL when out of memory */
    void (*free)(void *p);           /* free(NULL) is a no-op */
    void (*log)(int level, const char *fmt, ...);
    uint64_t (*rng_u64)(ml_rng *r);
    double (*rng_uniform)(ml_rng *r); /* [0, 1) */
    double (*rng_normal)(ml_rng *r);  /* N(0, 1) */
    /* Row-major C = alpha*op(A)*op(B) + beta*C through cblas_sgemm; trans 0/1. */
    void (*sgemm)(int trans_a, int trans_b, int m, int n, int k, float alpha,
                  const float *a, int lda, const float *b, int ldb, float beta,
                  float *c, int ldc);
} ml_host;

/* --------------------------------------------------------- tensors a plugin owns */

typedef enum ml_init {
    ML_INIT_ZEROS = 0,
    ML_INIT_CONST = 1,       /* every element = init_value */
    ML_INIT_NORMAL = 2,      /* N(0, init_value^2) */
    ML_INIT_UNIFORM_FANIN = 3 /* U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's nn.Linear */
} ml_init;

/*
 * A tensor the plugin asks the host to keep. Trainable parameters live in the model's
 * parameter block (the optimizer updates them, checkpoints save them); state tensors
 * (EMAs, biases not trained by gradient) live in the state block and are checkpointed.
 * A per-expert tensor has shape (N, cols) and grows with N: old rows are kept, new rows
 * are initialised by `init` before the EXPERTS_ADDED event. Otherwise shape (rows, cols).
 * Its full name in checkpoints is "moe<layer>.router.<name>".
 */
typedef struct ml_tensor_decl {
    const char *name;
    int per_expert; /* 1: leading dimension is N */
    int rows;       /* when !per_expert */
    int cols;
    ml_init init;
    float init_value;
    int fan_in;     /* for ML_INIT_UNIFORM_FANIN */
    int report;     /* state only: 1 to write the per-expert value to routing.csv */
} ml_tensor_decl;

/* ----------------------------------------------------------------------- routers */

typedef struct ml_router_init {
    uint32_t size;
    int layer;             /* index of the MoE layer, from 0 */
    int dim;               /* D */
    int num_experts;       /* N at creation */
    const ml_optval *opt;  /* in option-table order */
    uint64_t seed;
} ml_router_init;

/*
 * One forward call. The host fills the inputs; the router fills the outputs.
 * prob is the router's differentiable distribution over experts (rows sum to 1): what
 * balancing losses and routing health read. The dispatch list says which expert each
 * sample goes to and with what gate: out[b] = sum over triples (b,e,g) of g * expert_e(x[b]),
 * and out[b] = x[b] when b has no triple (dropped: it passes through the residual).
 * Every (sample, expert) pair appears at most once, so n_disp <= B*N.
 */
typedef struct ml_route {
    uint32_t size;
    /* in */
    int B, D, N;
    int training;               /* 1 in training steps, 0 in evaluation */
    const float *x;             /* (B, D) */
    const int32_t *sample_id;   /* (B) dataset index of each sample */
    const float *const *param;  /* trainable tensors, in declaration order */
    float *const *grad;         /* their gradients; backward accumulates (+=) */
    float *const *state;        /* state tensors, in declaration order */
    ml_rng *rng;                /* for noise and random routing; deterministic by seed */
    int64_t step;
    /* out */
    float *logits;              /* (B, N) pre-softmax scores (z-loss reads these) */
    float *prob;                /* (B, N) */
    int32_t *disp_sample;       /* (K) */
    int32_t *disp_expert;       /* (K) */
    float *disp_gate;           /* (K) */
    int n_disp;
    int n_dropped;              /* samples with no triple */
} ml_route;

/* Gradients flowing back into a router after a forward with the same ml_route. */
typedef struct ml_route_grad {
    uint32_t size;
    const float *dgate;   /* (K) dL/dgate of each triple */
    const float *dlogits; /* (B, N) dL/dlogits from losses, or NULL */
    const float *dprob;   /* (B, N) dL/dprob from losses, or NULL */
    float *dx;            /* (B, D) accumulate (+=) */
} ml_route_grad;

typedef enum ml_event_kind {
    ML_EV_AFTER_BACKWARD = 1, /* every training step, before the optimizer step */
    ML_EV_EXPERTS_ADDED = 2,  /* tensors already grown and new rows initialised */
    ML_EV_EPOCH_END = 3
} ml_event_kind;

typedef struct ml_router_event {
    uint32_t size;
    ml_event_kind kind;
    int num_experts;          /* N now */
    int old_num_experts;      /* EXPERTS_ADDED: N before */
    const float *grad_mag;    /* AFTER_BACKWARD: (N) mean |dL/dtheta| over each expert's parameters */
    const float *load;        /* AFTER_BACKWARD: (N) triples dispatched to each expert in the step */
    const float *const *param;
    float *const *state;
    int epoch;
    int64_t step;
} ml_router_event;

typedef struct ml_router_api {
    uint32_t size;
    void *(*create)(const ml_host *host, const ml_router_init *init, char *err);
    void (*destroy)(void *self);
    /* Tensors to keep; write at most cap declarations, return how many (or -1). */
    int (*params)(void *self, ml_tensor_decl *out, int cap);
    int (*states)(void *self, ml_tensor_decl *out, int cap);
    int (*forward)(void *self, ml_route *r, char *err);
    int (*backward)(void *self, const ml_route *r, const ml_route_grad *g, char *err);
    int (*event)(void *self, const ml_router_event *ev, char *err); /* may be NULL */
} ml_router_api;

/* ------------------------------------------------------------------------ losses */

typedef struct ml_loss_init {
    uint32_t size;
    const ml_optval *opt;
} ml_loss_init;

/* What a balancing loss sees of one MoE layer's forward. */
typedef struct ml_routing_record {
    uint32_t size;
    int B, N;
    const float *logits;        /* (B, N) */
    const float *prob;          /* (B, N) */
    const int32_t *disp_sample; /* (K) */
    const int32_t *disp_expert; /* (K) */
    const float *disp_gate;     /* (K) */
    int n_disp;
    const int32_t *label;       /* (B) class labels, or NULL when the data has none */
    int num_classes;
} ml_routing_record;

typedef struct ml_loss_api {
    uint32_t size;
    void *(*create)(const ml_host *host, const ml_loss_init *init, char *err);
    void (*destroy)(void *self);
    /*
     * *value = the loss (before its coefficient). When dlogits / dprob are not NULL, adds
     * scale * d(value)/d(logits) and scale * d(value)/d(prob) into them, (B, N) each.
     */
    int (*eval)(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err);
} ml_loss_api;

/* ---------------------------------------------------------------- growth schedule */

typedef struct ml_schedule_init {
    uint32_t size;
    int num_layers;
    const ml_optval *opt;
} ml_schedule_init;

typedef struct ml_progress {
    uint32_t size;
    int64_t images_seen;     /* training images processed so far */
    int64_t step;
    int epoch;               /* from 1 */
    int num_layers;
    const int *num_experts;  /* (L) */
    int64_t epoch_images;    /* training images in one epoch */
} ml_progress;

typedef struct ml_schedule_api {
    uint32_t size;
    void *(*create)(const ml_host *host, const ml_schedule_init *init, char *err);
    void (*destroy)(void *self);
    /* Experts layer `layer` starts with, given the model config's `experts`. */
    int (*initial_experts)(void *self, int layer, int configured);
    /* How many experts to add to each layer now; add is (L), zero on entry. */
    int (*decide)(void *self, const ml_progress *p, int *add, char *err);
} ml_schedule_api;

/* -------------------------------------------------------------------- descriptor */

typedef enum ml_plugin_kind {
    ML_PLUGIN_ROUTER = 1,
    ML_PLUGIN_LOSS = 2,
    ML_PLUGIN_SCHEDULE = 3
} ml_plugin_kind;

typedef struct ml_plugin {
    uint32_t size;            /* sizeof(ml_plugin) in the plugin */
    uint16_t abi_major, abi_minor;
    ml_plugin_kind kind;
    const char *name;         /* as named in YAML */
    const char *version;      /* the plugin's own version, free text */
    const char *doc;          /* one line */
    const ml_option *options;
    int num_options;
    const void *api;          /* ml_router_api / ml_loss_api / ml_schedule_api by kind */
} ml_plugin;

/* The first fields of every descriptor: ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER), */
#define ML_PLUGIN_HEADER(kind) sizeof(ml_plugin), ML_ABI_MAJOR, ML_ABI_MINOR, (kind)

#endif
