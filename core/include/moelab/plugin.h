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
 * moelab/plugin_aux.h has optional inline helpers (softmax, top-k, their backward, option
 * lookup by name); plugin.h is the only header a plugin must include.
 *
 * Versioning (as SQLite's sqlite3_api_routines and Redis's module API):
 *   - ML_ABI_MAJOR must equal the host's; ML_ABI_MINOR must be <= the host's: a plugin
 *     built against ABI 1.0 loads into every 1.x host, forever (tests/check_abi.c keeps the
 *     frozen 1.0 and 1.1 headers and plugins built against them).
 *   - Structs only ever grow at the end; each minor version says what it added ("1.1:").
 *     Structs the plugin gives the host (the descriptor, the api tables) start with `size`,
 *     the sizeof() the plugin was compiled with: the host reads a field only when `size`
 *     covers it and uses the field's default (NULL, 0) otherwise. Structs the host gives
 *     the plugin always hold every field of the plugin's minor version, since the host's
 *     minor is at least the plugin's.
 *   - Arrays of structs that can grow are read at the element size the plugin was built
 *     with: the descriptor's option_size, optval_size and decl_size (ML_PLUGIN_HEADER fills
 *     them). The host passes option values (ml_optval arrays) laid out at the plugin's
 *     optval_size, and reads tensor declarations at its decl_size, so a plugin indexes them
 *     as plain C arrays. Arrays of host structs that may grow are passed as arrays of
 *     pointers (ml_progress.health).
 *   - Fields that hold an enumeration are fixed-width integers (int32_t); the enum types
 *     name their values.
 *
 * Threads (the contract every host keeps):
 *   - The host never makes two calls on the same instance (`self`) at the same time; each
 *     call returns before the next on that instance starts. Calls on different instances
 *     (there is one router instance and one instance of each loss per MoE layer) may run
 *     at the same time on different threads, so a plugin keeps all mutable state in its
 *     instance, never in globals; its descriptor and option table are read-only data.
 *   - create and destroy may run on any thread, but never concurrently with another call
 *     on the same instance.
 *   - Host functions are thread-safe. The ml_rng a call receives belongs to that instance:
 *     do not keep it or share it. host->sgemm runs on the host's thread pool (sized by the
 *     config's train.threads); a plugin does not start threads of its own. A plugin built
 *     with OpenMP (-fopenmp: the host's own runtime, libgomp) may share a call's loops among
 *     that pool's threads, when the call is not made inside a parallel region
 *     (omp_in_parallel() is 0), as moelab/plugin_aux.h does for large calls; its results
 *     must not depend on the thread count. No ABI change: a plugin built without OpenMP
 *     runs every loop on the calling thread, as before.
 *   - With MPI data parallelism every rank holds its own instances and sees the rank's
 *     part of the batch; what the routing math needs across the batch reaches the plugin
 *     already reduced where this header says so.
 *
 * Ownership: everything the host passes is borrowed for the duration of the call, except
 * where a comment says otherwise. A plugin's `create` returns an object the host later
 * passes to `destroy`. Errors: a function that can fail returns 0 on success or -1 after
 * writing a one-line message (no trailing newline) into `err`, a buffer of ML_ERR_MAX bytes.
 *
 * Shapes use the letters of the rest of moelab: B samples in the batch, D features of the
 * MoE layer's input, N experts, K dispatch slots (n_disp, at most B*N), L MoE layers.
 * Layers are numbered from 0 here (init->layer); the user-facing numbering (metrics.csv,
 * Lua, checkpoints) is the same index + 1.
 */
#ifndef MOELAB_PLUGIN_H
#define MOELAB_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#define ML_ABI_MAJOR 1
#define ML_ABI_MINOR 2
#define ML_ERR_MAX 256

/* What a router may declare: at most this many parameter tensors and as many state
   tensors; a loss at most this many state tensors. The host refuses more. */
#define ML_MAX_TENSORS 32
/* Options a plugin may declare. */
#define ML_MAX_OPTIONS 64

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

/* 1.1: ml_option.flags */
#define ML_OPTF_RUNTIME 1u /* may be changed while the plugin runs (Lua `router:set{...}`);
                              the router is told through ML_EV_OPTIONS_CHANGED */

/*
 * One option a plugin accepts. The table is static data of the plugin. Values are read by
 * the rules of YAML configs, whichever way they come (YAML, the command line, Lua): an int
 * is written as digits ("2", not "2.0"), a bool as true/false, an enum as one of choices.
 */
typedef struct ml_option {
    const char *name;    /* key under the plugin's section in YAML */
    int32_t type;        /* ml_opt_type */
    const char *def;     /* default, as YAML text ("2", "0.5", "true", "mean") */
    double min, max;     /* inclusive range for INT/FLOAT; no range when min > max */
    const char *choices; /* ENUM only: "none|max|mean" */
    const char *doc;     /* one line, shown by `moelab plugins` */
    /* 1.1 */
    uint32_t flags;      /* ML_OPTF_* */
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

/*
 * 1.1: a named scalar a router reports (ml_route.metric during a forward, ml_router_event
 * .metric at EPOCH_END). name: 1..32 characters of [a-z0-9_]. The host writes it to
 * metrics.csv as moe<layer>_<name> (layer from 1): values reported in training forwards
 * are averaged over the epoch's training steps, those of evaluation forwards over the
 * evaluation batches (column val_moe<layer>_<name>), those at EPOCH_END written as is.
 */
typedef void (*ml_metric_fn)(void *ctx, const char *name, double value);

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
 * Its full name in checkpoints is "moe<layer>.router.<name>" for a router and
 * "moe<layer>.loss<i>.<name>" for the i-th loss of the config (both from 0).
 */
typedef struct ml_tensor_decl {
    const char *name;   /* 1..47 characters of [A-Za-z0-9_.] */
    int32_t per_expert; /* 1: leading dimension is N */
    int32_t rows;       /* when !per_expert */
    int32_t cols;
    int32_t init;       /* ml_init */
    float init_value;
    int32_t fan_in;     /* for ML_INIT_UNIFORM_FANIN */
    int32_t report;     /* state only: 1 to write the per-expert value to routing.csv */
} ml_tensor_decl;

/* ----------------------------------------------------------------------- routers */

typedef struct ml_router_init {
    uint32_t size;
    int32_t layer;         /* index of the MoE layer, from 0 */
    int32_t dim;           /* D */
    int32_t num_experts;   /* N at creation */
    const ml_optval *opt;  /* in option-table order */
    uint64_t seed;
} ml_router_init;

/*
 * One forward call. The host fills the inputs; the router fills the outputs.
 * prob is the router's differentiable distribution over experts (rows sum to 1): what
 * balancing losses and routing health read. The dispatch list says which expert each
 * sample goes to and with what gate: out[b] = sum over triples (b,e,g) of g * expert_e(x[b]),
 * and out[b] = x[b] when b has no triple (dropped: it passes through the residual).
 * Every (sample, expert) pair appears at most once, so n_disp <= B*N; n_dropped is the
 * number of samples without a triple. The host checks all of it after every forward.
 */
typedef struct ml_route {
    uint32_t size;
    /* in */
    int32_t B, D, N;
    int32_t training;           /* 1 in training steps, 0 in evaluation */
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
    int32_t n_disp;
    int32_t n_dropped;          /* samples with no triple */
    /* 1.1, in */
    int32_t layer;              /* as init->layer */
    ml_metric_fn metric;        /* report a named scalar of this forward (never NULL) */
    void *metric_ctx;           /* pass to metric */
} ml_route;

/*
 * Gradients flowing back into a router after a forward with the same ml_route (the host
 * passes the ml_route of that forward, training flag included). dgate holds the experts'
 * gradient and, since 1.1, what losses add with respect to the gates (ml_loss_eval.dgate).
 */
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
    ML_EV_EPOCH_END = 3,
    /* 1.1: options marked ML_OPTF_RUNTIME were changed (Lua router:set{...}); `opt` holds
       every option's new value, `changed` which ones differ. Return -1 with a message to
       refuse the change: the host then keeps the old values. Only sent to plugins built
       against 1.1 or later, and only for options the plugin flagged ML_OPTF_RUNTIME. */
    ML_EV_OPTIONS_CHANGED = 4,
    /* 1.2: experts were removed and the others renumbered compactly: the expert numbered j
       now was expert kept[j] before (kept ascending, num_experts entries; old_num_experts
       is N before). The host has already kept the rows of the kept experts in every
       per-expert tensor the router declared (params and state, Adam moments too), in the
       new order; the event is for what a plugin keeps itself. It cannot refuse: an error
       ends the run. Only sent to plugins built against 1.2 or later; for 1.0 and 1.1
       plugins the host's compaction of their declared tensors is all that happens. */
    ML_EV_EXPERTS_REMOVED = 5
} ml_event_kind;

typedef struct ml_router_event {
    uint32_t size;
    int32_t kind;             /* ml_event_kind; a plugin ignores kinds it does not know */
    int32_t num_experts;      /* N now */
    int32_t old_num_experts;  /* EXPERTS_ADDED: N before */
    const float *grad_mag;    /* AFTER_BACKWARD: (N) mean |dL/dtheta| over each expert's parameters */
    const float *load;        /* AFTER_BACKWARD: (N) triples dispatched to each expert in the step */
    const float *const *param;
    float *const *state;
    int32_t epoch;
    int64_t step;
    /* 1.1 */
    const ml_optval *opt;     /* OPTIONS_CHANGED: (num_options) the new values; else the current */
    const uint8_t *changed;   /* OPTIONS_CHANGED: (num_options) 1 where a value changed; else NULL */
    ml_metric_fn metric;      /* EPOCH_END: report epoch-level scalars (never NULL) */
    void *metric_ctx;
    /* 1.2 */
    const int32_t *kept;      /* EXPERTS_REMOVED: (num_experts) old id of each expert now; else NULL */
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

/*
 * The host creates one instance of each configured loss per MoE layer (since 1.1; a 1.0
 * host shared one instance across layers), so an instance may keep per-layer state.
 */
typedef struct ml_loss_init {
    uint32_t size;
    const ml_optval *opt;
    /* 1.1 */
    int32_t layer;      /* the MoE layer this instance serves, from 0 */
    int32_t num_layers; /* L */
    int32_t num_experts;/* N at creation */
} ml_loss_init;

/* What a balancing loss sees of one MoE layer's forward. */
typedef struct ml_routing_record {
    uint32_t size;
    int32_t B, N;
    const float *logits;        /* (B, N) */
    const float *prob;          /* (B, N) */
    const int32_t *disp_sample; /* (K) */
    const int32_t *disp_expert; /* (K) */
    const float *disp_gate;     /* (K) */
    int32_t n_disp;
    const int32_t *label;       /* (B) class labels, or NULL when the data has none */
    int32_t num_classes;
    /* 1.1 */
    int32_t layer;              /* from 0 */
    int32_t training;           /* 1 in training steps (state may advance), 0 in evaluation */
    int64_t step;               /* training steps done before this one */
    float *const *state;        /* the loss's state tensors (states()), declaration order */
} ml_routing_record;

/* 1.1: the in/out of eval_v2. */
typedef struct ml_loss_eval {
    uint32_t size;
    float scale;    /* multiply every gradient by this (the loss coefficient) */
    float *dlogits; /* (B, N) add scale * d(value)/d(logits), or NULL: not wanted */
    float *dprob;   /* (B, N) add scale * d(value)/d(prob), or NULL */
    float *dgate;   /* (K) add scale * d(value)/d(disp_gate[t]), or NULL: the router's backward
                       carries it through its gate computation (renormalised top-k, ...) */
    double value;   /* out: the loss (before its coefficient) */
} ml_loss_eval;

typedef struct ml_loss_api {
    uint32_t size;
    void *(*create)(const ml_host *host, const ml_loss_init *init, char *err);
    void (*destroy)(void *self);
    /*
     * *value = the loss (before its coefficient). When dlogits / dprob are not NULL, adds
     * scale * d(value)/d(logits) and scale * d(value)/d(prob) into them, (B, N) each.
     * A loss that defines eval_v2 may leave eval NULL (then only 1.1 hosts load it).
     */
    int (*eval)(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err);
    /* 1.1 */
    /* State tensors to keep per layer (window statistics, ...), checkpointed; may be NULL. */
    int (*states)(void *self, ml_tensor_decl *out, int cap);
    /* As eval, with the gradient with respect to the dispatch gates too. When not NULL the
       host calls it instead of eval. */
    int (*eval_v2)(void *self, const ml_routing_record *r, ml_loss_eval *io, char *err);
} ml_loss_api;

/* ---------------------------------------------------------------- growth schedule */

typedef struct ml_schedule_init {
    uint32_t size;
    int32_t num_layers;
    const ml_optval *opt;
} ml_schedule_init;

/*
 * 1.1: routing health of one MoE layer over a window (docs/metrics.md defines each field,
 * with its value at balance and at collapse).
 */
typedef struct ml_layer_health {
    uint32_t size;
    int32_t layer;                /* from 0 */
    int32_t num_experts;          /* N */
    int32_t epoch;                /* the epoch the window belongs to, from 1 */
    int64_t samples;              /* samples in the window (0: no data yet, fields are 0) */
    int64_t slots;                /* dispatched (sample, expert) slots */
    const double *utilisation;    /* (N) share of dispatched slots */
    const double *importance;     /* (N) mean probability */
    double cv;                    /* std / mean of utilisation */
    double marginal_entropy_norm; /* H(utilisation) / log N */
    double effective_experts;     /* exp(H(utilisation)) */
    double slots_per_sample;      /* slots / samples that got a slot (k of top-k) */
    double mean_sample_entropy;   /* mean H(p_b), nats */
    double mutual_info;           /* I(x; expert), nats */
    double max_load_ratio;        /* N * max(utilisation) - 1 */
    double dropped_share;         /* samples without a slot / samples */
    double load_balance;          /* N * sum utilisation_i importance_i */
    int32_t active, dead, collapsed;
} ml_layer_health;

typedef struct ml_progress {
    uint32_t size;
    int64_t images_seen;     /* training images processed so far */
    int64_t step;
    int32_t epoch;           /* from 1 */
    int32_t num_layers;
    const int *num_experts;  /* (L) */
    int64_t epoch_images;    /* training images in one epoch */
    /* 1.1 */
    const ml_layer_health *const *health;      /* (L) the current epoch so far */
    const ml_layer_health *const *last_health; /* (L) the last completed epoch; NULL before it */
} ml_progress;

/*
 * 1.2: one MoE layer's routing in one training step, for schedules that watch it
 * (ml_schedule_api.observe). Called after every training step, for every layer, before the
 * step's decide (a decide called from the step hook sees the step observed).
 */
typedef struct ml_schedule_obs {
    uint32_t size;
    int32_t layer;                    /* from 0 */
    int32_t num_experts;              /* N */
    int32_t epoch;                    /* from 1 */
    int64_t step;                     /* training steps done, this one included */
    const ml_routing_record *route;   /* the step's forward of this layer: prob (B, N), dispatch */
    int32_t n_dropped;                /* samples of the step without a dispatch triple */
    float *const *state;              /* this layer's state tensors (states()), declaration order */
} ml_schedule_obs;

/*
 * 1.2: what decide_v2 answers, per layer: experts to add and experts to remove. Removals
 * name experts by their ids before this decision and are carried out first (the others are
 * renumbered compactly), then the additions. The host checks every id (in 0..N-1, none twice,
 * at least one expert left) and the layer's size after both (at most 4096).
 */
typedef struct ml_schedule_decision {
    uint32_t size;
    int32_t num_layers;               /* L */
    int32_t *add;                     /* (L) experts to add; zero on entry */
    int32_t *const *remove;           /* (L) ids to remove; remove[l] has room for num_experts[l] ids */
    int32_t *n_remove;                /* (L) ids written to remove[l]; zero on entry */
    float *const *const *state;       /* (L) each layer's state tensors (states()); decide may write them */
} ml_schedule_decision;

typedef struct ml_schedule_api {
    uint32_t size;
    void *(*create)(const ml_host *host, const ml_schedule_init *init, char *err);
    void (*destroy)(void *self);
    /* Experts layer `layer` starts with, given the model config's `experts`. */
    int (*initial_experts)(void *self, int layer, int configured);
    /* How many experts to add to each layer now; add is (L), zero on entry. A schedule that
       defines decide_v2 may leave decide NULL (then only 1.2 hosts load it). */
    int (*decide)(void *self, const ml_progress *p, int *add, char *err);
    /* 1.2 */
    /* State tensors to keep per MoE layer, checkpointed, may be NULL. Per-expert ones grow
       with the layer (new rows by their init) and keep the kept experts' rows when experts
       are removed. Named "moe<layer>.schedule.<name>" (layer from 1). */
    int (*states)(void *self, ml_tensor_decl *out, int cap);
    /* Each training step's routing of each layer; may be NULL. */
    int (*observe)(void *self, const ml_schedule_obs *o, char *err);
    /* As decide, with removals too; when not NULL the host calls it instead of decide. */
    int (*decide_v2)(void *self, const ml_progress *p, ml_schedule_decision *d, char *err);
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
    int32_t kind;             /* ml_plugin_kind */
    const char *name;         /* as named in YAML */
    const char *version;      /* the plugin's own version, free text */
    const char *doc;          /* one line */
    const ml_option *options;
    int32_t num_options;
    const void *api;          /* ml_router_api / ml_loss_api / ml_schedule_api by kind */
    /* 1.1: the element sizes the plugin was built with (ML_PLUGIN_HEADER fills them) */
    uint32_t option_size;     /* sizeof(ml_option) */
    uint32_t optval_size;     /* sizeof(ml_optval) */
    uint32_t decl_size;       /* sizeof(ml_tensor_decl) */
} ml_plugin;

/*
 * The first fields of every descriptor: `ML_PLUGIN_EXPORT = { ML_PLUGIN_HEADER(kind),
 * .name = ..., ... };`. Designated, with .kind last, so that positional initialisers
 * after it still fill .name, .version, ... as with ABI 1.0.
 */
#define ML_PLUGIN_HEADER(k)                                                                  \
    .size = sizeof(ml_plugin), .option_size = sizeof(ml_option),                             \
    .optval_size = sizeof(ml_optval), .decl_size = sizeof(ml_tensor_decl),                   \
    .abi_major = ML_ABI_MAJOR, .abi_minor = ML_ABI_MINOR, .kind = (k)

#endif
