/*
 * router_host.h — one router plugin instance, hosted: the only code in moelab that creates
 * a router, reads its tensor declarations and keeps its tensors in a block, calls its
 * forward, backward and events, checks what it returns, and grows it. The MoE layer
 * (model/moe.c), `moelab plugin-test`, Lua's moelab.router and the tests all go through
 * it, so they agree on every limit and every check.
 *
 * After each forward the host checks everything it reads (check_route in router_host.c):
 * n_disp in 0..B*N, n_dropped equal to the samples without a triple, every triple inside
 * (B, N) with a finite gate >= 0 and no (sample, expert) pair twice, prob finite in [0, 1]
 * (1e-6 slack) with rows summing to 1 (1e-3), logits finite. A forward that fails the check
 * is not kept: backward then refuses.
 *
 * Ownership: an ml_router_inst is embedded by its owner; ml_router_inst_init fills it and
 * ml_router_inst_release frees what it holds (safe on a zeroed or half-initialised one).
 * The blocks P and S are borrowed: the owner commits them (ml_params_commit) after init
 * and after grow_declare, before the next call. Pointers into the last forward (logits,
 * prob, disp_*) stay valid until the next forward, grow_declare or release.
 *
 * Errors: ML_ERR with "router 'name' (file): <call> (layer L): <what>" (layer from 1).
 */
#ifndef MOELAB_ROUTER_HOST_H
#define MOELAB_ROUTER_HOST_H

#include <stdint.h>
#include "base/common.h"
#include "nn/params.h"
#include "plugin/tensors.h"

#define ML_ROUTER_MAX_METRICS 32
#define ML_METRIC_NAME_MAX 33 /* bytes, NUL included */

/* Which window a router metric belongs to. */
enum { ML_METRIC_TRAIN = 0, ML_METRIC_EVAL = 1, ML_METRIC_EPOCH = 2 };

typedef struct ml_router_metric {
    char name[ML_METRIC_NAME_MAX];
    double sum[3];    /* per window: train and eval sums; epoch: the last value */
    int64_t count[3]; /* reports per window */
} ml_router_metric;

typedef struct ml_router_inst {
    const ml_plugin *plugin;     /* the host's view (loader.h), borrowed */
    const ml_router_api *api;
    const char *file;            /* where it was loaded from (or its name), for messages */
    void *self;
    int layer, D, N;             /* layer from 0 */
    ml_optval opt[ML_MAX_OPTIONS]; /* current option values, option-table order */
    void *opt_packed;            /* the same at the plugin's sizeof(ml_optval) (owned) */
    ml_tensor_set param, state;  /* in the borrowed blocks */
    ml_rng rng;                  /* the route's RNG */
    int64_t step;                /* AFTER_BACKWARD events sent */
    int epoch;                   /* as of the last EPOCH_END */

    /* the last forward; buffers for cap_B samples and cap_N experts */
    int cap_B, cap_N;
    int valid;                   /* the last forward passed the check */
    int B, training;
    const float *x;              /* (B, D) borrowed from the caller until backward */
    const int32_t *sample_id;    /* (B) borrowed */
    float *logits, *prob;        /* (B, N) */
    int32_t *disp_sample;        /* (K) */
    int32_t *disp_expert;        /* (K) */
    float *disp_gate;            /* (K) */
    int n_disp, n_dropped;
    int32_t *per_expert;         /* (N) triples of the forward per expert */
    int32_t *hits;               /* (B) triples per sample */
    uint64_t *pairs;             /* (B*N bits) pairs seen, for the duplicate check */

    /* metrics the plugin reported (plugin.h, ml_metric_fn) */
    int metric_window;           /* ML_METRIC_* of the call in progress */
    int n_metrics;
    ml_router_metric metric[ML_ROUTER_MAX_METRICS];
    char metric_err[160];        /* set when a report was refused; the call then fails */
} ml_router_inst;

/*
 * Creates the router (options in option-table order, host layout) and declares its tensors
 * in P (parameters) and S (state) as "<prefix><name>". create_seed goes to the plugin
 * (ml_router_init.seed), rng_seed seeds the route's RNG.
 */
int ml_router_inst_init(ml_router_inst *ri, const ml_plugin *p, const ml_optval *opt, int layer, int D, int N,
                        uint64_t create_seed, uint64_t rng_seed, ml_params *P, ml_params *S, const char *prefix);
void ml_router_inst_release(ml_router_inst *ri);

/* x (B, D) and sample_id (B) are borrowed until backward. */
int ml_router_inst_forward(ml_router_inst *ri, const float *x, int B, int training, const int32_t *sample_id);
/* The gradients of the last forward: dgate (n_disp), dlogits and dprob (B, N) or NULL;
   dx (B, D) and the parameter gradients accumulate. */
int ml_router_inst_backward(ml_router_inst *ri, const float *dgate, const float *dlogits, const float *dprob,
                            float *dx);
/* AFTER_BACKWARD with grad_mag and load (N); counts the step. */
int ml_router_inst_after_backward(ml_router_inst *ri, const float *grad_mag, const float *load);
int ml_router_inst_epoch_end(ml_router_inst *ri, int epoch);
/* Adds n experts: N grows, per-expert tensors grow at the blocks' next commit, the last
   forward is dropped. Then the owner commits and calls grow_finish (EXPERTS_ADDED). */
int ml_router_inst_grow_declare(ml_router_inst *ri, int n);
int ml_router_inst_grow_finish(ml_router_inst *ri, int old_n);
/*
 * Removes experts: the expert numbered j afterwards is kept[j] (ascending old ids, nkeep >=
 * 1). Every per-expert tensor keeps the kept experts' rows at once (the blocks must be
 * committed; the owner commits them again afterwards), N becomes nkeep, the last forward is
 * dropped. Then the owner commits and calls remove_finish: EXPERTS_REMOVED with kept, sent
 * to plugins built against ABI 1.2 or later only.
 */
int ml_router_inst_remove_declare(ml_router_inst *ri, const int *kept, int nkeep);
int ml_router_inst_remove_finish(ml_router_inst *ri, const int *kept, int old_n);
/*
 * Changes options at run time: opt holds every option's new value (validated by the
 * caller with ml_option_parse). Only options the plugin flags ML_OPTF_RUNTIME may differ,
 * and only a plugin built against ABI 1.1 or later is asked; it may refuse. On any error
 * nothing changes. A change drops the last forward (backward then refuses until the next
 * forward): its backward would mix the old options with the new.
 */
int ml_router_inst_set_options(ml_router_inst *ri, const ml_optval *opt);

/* The record of the last forward, for losses and health. */
void ml_router_inst_record(const ml_router_inst *ri, ml_routing_record *r);
/* Router state tensors the plugin asked to report per expert (report = 1, cols = 1). */
int ml_router_inst_reported_state(const ml_router_inst *ri, const char **names, const float **values, int cap);

/* The metrics of a window: names and values (train/eval: the mean of the reports since the
   last reset; epoch: the last value), only those reported; returns how many. */
int ml_router_inst_metrics(const ml_router_inst *ri, int window, const char **names, double *values, int cap);
void ml_router_inst_metrics_reset(ml_router_inst *ri, int window);
/* A window's sums and counts as text "name=<sum %a>:<count>;..." (owned, free()), and back
   (the window is reset first): checkpoints carry the epoch in progress. */
char *ml_router_inst_metrics_to_text(const ml_router_inst *ri, int window);
int ml_router_inst_metrics_from_text(ml_router_inst *ri, int window, const char *text);

#endif
