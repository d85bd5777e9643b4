/*
 * experiment.h — one run: config -> data, model, router/loss/schedule plugins, optimizer,
 * run directory; then the operations a Lua script drives (train an epoch, evaluate, read
 * routing health, add experts, set loss coefficients, log, raise events, checkpoints).
 *
 * Building is all-or-nothing: ml_exp_new validates and builds everything before it creates
 * the run directory, so a bad config or plugin leaves no trace. Every file the run writes is
 * append-only or replaced atomically, so a failure never damages results already written.
 *
 * Ownership: ml_exp_new returns an owned experiment (ml_exp_free, which also flushes the
 * pending metrics row and writes summary.json).
 */
#ifndef MOELAB_EXPERIMENT_H
#define MOELAB_EXPERIMENT_H

#include <stdio.h>
#include "io/config.h"
#include "data/data.h"
#include "model/health.h"
#include "model/model.h"
#include "nn/optim.h"
#include "io/results.h"
#include "plugin/loss_host.h"
#include "plugin/schedule_host.h"
#include "run/steplog.h"
#include "run/segrun.h"

#define ML_MAX_LOSSES 16
#define ML_MAX_COLS 256

typedef struct ml_loss_slot {
    const ml_plugin *plugin;
    ml_loss_inst *inst;     /* (L) one instance per MoE layer (plugin/loss_host.h) */
    char name[64];          /* the plugin name, or name#2 when used twice */
    double coef;
} ml_loss_slot;

typedef struct ml_epoch_stats {
    int epoch;
    double loss, task_loss, seconds, img_per_s;
    int64_t images_seen, steps;
    int n_aux;
    char aux_name[ML_MAX_LOSSES][64];
    double aux_value[ML_MAX_LOSSES];
} ml_epoch_stats;

typedef struct ml_eval_stats {
    double loss;            /* validation reconstruction MSE */
    int n_aux;
    char aux_name[ML_MAX_LOSSES][64];
    double aux_value[ML_MAX_LOSSES];
    int64_t samples;
} ml_eval_stats;

/* Set by a signal handler (SIGINT, SIGTERM): training stops after the current step and saves
 * the checkpoint "interrupt" (or at the start of the next epoch when set outside training). */
extern volatile int ml_exp_interrupted;

/* Called after every optimizer step of train_epoch; return ML_ERR to stop the epoch. */
typedef int (*ml_step_hook)(void *ctx);
/* Serialises the script's own state (exp.state) for a checkpoint: *json is a malloc'd JSON
 * text, or NULL when there is none. Set by the Lua binding (core/lua/luaexp.c). */
typedef int (*ml_state_save_fn)(void *ctx, char **json);

/* The running sums of the epoch in progress, kept in the experiment (not on the stack of
 * ml_exp_train_epoch) so an interrupt checkpoint can carry them and a resumed epoch ends
 * with the same metrics row as an uninterrupted one. */
typedef struct ml_epoch_acc {
    int in_epoch;                  /* 1 between an epoch's first step and its end */
    int resume_pending;            /* a resumed checkpoint was taken mid-epoch: the next
                                      train_epoch continues it (runs the step hook first) */
    int hook_pending;              /* with resume_pending: the step hook of the last step
                                      had not run when the checkpoint was taken */
    int in_hook;                   /* the step hook is running */
    int interrupt_saved;           /* the epoch an interrupt stopped, once "interrupt" is saved;
                                      minus that epoch when saving it failed */
    int64_t position;              /* samples of the epoch order served (resume_pending) */
    double loss_sum, task_sum, aux_sum[ML_MAX_LOSSES]; /* over the applied steps */
    int64_t seen, steps;           /* samples and steps served, skipped ones included */
    int64_t used, skipped;         /* samples of the applied steps; steps skipped (train.nonfinite) */
} ml_epoch_acc;

typedef struct ml_experiment {
    ml_config *cfg;
    char experiment[128];
    ml_dataset train, val;
    ml_batcher *train_b, *val_b;
    ml_model *model;
    ml_optim opt;
    int n_losses;
    ml_loss_slot loss[ML_MAX_LOSSES];
    ml_schedule_inst sched;        /* the growth schedule (plugin/schedule_host.h) */
    ml_results *res;
    ml_health_cfg hcfg;
    ml_health_acc **acc, **vacc;   /* (L) training and validation accumulators */
    ml_health_acc **last_acc;      /* (L) the last completed training epoch's */
    int have_last;                 /* last_acc holds an epoch */
    int epoch;                     /* epochs started, from 1 */
    int64_t step, images_seen;
    int B;
    float *xb;
    int32_t *yb, *ids;
    double started;
    /* the metrics row of the current epoch, flushed when the next one starts or at the end */
    int n_cols;
    char *col_name[ML_MAX_COLS];
    double col_value[ML_MAX_COLS];
    int row_pending;
    int last_n;                    /* the last row written, for summary.json */
    char *last_name[ML_MAX_COLS];
    double last_value[ML_MAX_COLS];
    int progress_tty;              /* stderr is a terminal: a live bar */
    int quiet;                     /* moelab run --quiet: no progress, epoch or event lines */
    double epoch_seconds;          /* training time of the epochs this process ran, for the ETA */
    int timed_epochs;
    double best_val;               /* for summary.json */
    int best_epoch;
    char last_error[1024];
    int finished;                  /* set by ml_exp_finish: the Lua bindings refuse from then on */
    /* resume (core/run/checkpoint.c) */
    ml_epoch_acc ep;
    ml_state_save_fn state_save;   /* exp.state serialiser, or NULL */
    void *state_ctx;
    char *script_state;            /* exp.state JSON restored by a resume (owned), or NULL */
    int resumed;                   /* the run continues from a checkpoint (exp.resumed) */
    ml_steplog steplog;            /* steps.csv, routing_steps.csv, new-expert share (run/steplog.h) */
    ml_segrun seg;                 /* segmentation metrics and predictions (run/segrun.h) */
    float *mb;                     /* (B, 1, H, W) the batch's masks (segmentation) */
    int init_copied, init_matched; /* model.init_from: tensors taken, tensors that matched */
    /* provenance (run/provenance.h), owned */
    char *command;                 /* the command line that started this process */
    char *overrides;               /* JSON array of the run's command-line overrides */
    char *group;                   /* the overrides but the seed and bookkeeping, space-separated */
    char *prov;                    /* JSON object: summary.json's "provenance" */
    char *resumes;                 /* JSON array of the resumes, or NULL */
    char started_at[32];           /* when the run began (UTC, ISO 8601) */
    /* data parallelism (run/dist.h): every rank runs the script and computes its part of each
       training batch; rank 0 writes the run directory, the others a scratch copy of it */
    const ml_comm *comm;           /* the job's collectives, or NULL: one rank */
    int rank, ranks;
    char *scratch;                 /* ranks > 0: their private directory, removed at the end (owned) */
} ml_experiment;

/* The validated config of a run (plugins found on the search path the config extends),
 * as ml_exp_new loads it; owned (ml_config_free), or NULL with ml_error(). moelab sweep
 * checks every grid point with it before anything starts. */
ml_config *ml_exp_load_config(const char *config_path, const char *const *overrides, int n_overrides);
/* overrides: "a.b=value" strings. Returns NULL with ml_error(); *exit_code says whether the
 * failure was a config/usage error (ML_EXIT_USAGE) or a runtime one (ML_EXIT_RUNTIME). */
ml_experiment *ml_exp_new(const char *config_path, const char *const *overrides, int n_overrides,
                          int *exit_code);
void ml_exp_free(ml_experiment *e);
/* Creates the run directory and writes config.yaml; called once the script has compiled. */
int ml_exp_open_results(ml_experiment *e);
/* Ranks > 0 of a data-parallel job (run/dist.h) write into a private directory under $TMPDIR
   (or /tmp) instead of the run directory, removed by ml_exp_free: its path (created at the
   first call), or NULL with ml_error(). */
const char *ml_exp_scratch(ml_experiment *e);
const char *ml_exp_run_dir(const ml_experiment *e);

int ml_exp_train_epoch(ml_experiment *e, ml_step_hook hook, void *ctx, ml_epoch_stats *out);
int ml_exp_evaluate(ml_experiment *e, ml_eval_stats *out);
/* routing health of a layer (0-based) over the last training epoch (val = 0) or the last evaluate (val = 1) */
int ml_exp_health(ml_experiment *e, int layer, int val, ml_health *out);
/* How added experts start: the config's growth.* or add_experts' options (docs/lua-api.md). */
typedef struct ml_growth {
    ml_expert_init init;           /* random, copy, drop_upcycle */
    int source;                    /* the expert to copy; -1: the most loaded */
    double noise;                  /* copies: noise std / the tensor's std (0: exact copies) */
    double ratio;                  /* drop_upcycle: share of the units re-initialised */
    double router_noise;           /* the copied router rows: noise std / the tensor's std */
} ml_growth;

/* The config's growth.* (random when the config says nothing). */
void ml_exp_growth_defaults(const ml_experiment *e, ml_growth *g);
/* "random", "copy", "drop_upcycle" -> ml_expert_init; -1 for anything else. And back. */
int ml_growth_init_from_name(const char *name);
const char *ml_growth_init_name(ml_expert_init init);

/* Adds n randomly initialised experts to layer (from 0), with an experts_added event. */
int ml_exp_add_experts(ml_experiment *e, int layer, int n, const char *reason);
/* The same, the new experts starting as g says (NULL: random); the event names the way
   and the sources. */
int ml_exp_add_experts_with(ml_experiment *e, int layer, int n, const char *reason, const ml_growth *g);
/* Grows layer by n experts everywhere they live (model, loss and schedule state, health
   accumulators), without an event: add_experts and checkpoint loading use it. variant (n,
   may be NULL): each new expert's variant (ml_moe_grow_declare). */
int ml_exp_grow_layer(ml_experiment *e, int layer, int n, const int *variant);
/*
 * Removes experts ids[0..n) (any order, none twice, not all) from layer: everywhere they live
 * (model, optimizer moments and step counts, router and loss and schedule state, health
 * accumulators, watches); the others are renumbered compactly in their order. Records an
 * experts_removed event with the removed ids and `kept`, the old id of each expert now.
 */
int ml_exp_remove_experts(ml_experiment *e, int layer, const int *ids, int n, const char *reason);
/* The same without the event or the checks of ids: the layer keeps kept[0..nkeep)
   (ascending). Checkpoint loading uses it. */
int ml_exp_keep_experts(ml_experiment *e, int layer, const int *kept, int nkeep);
/* The layer (from 0) whose experts the rows of tensor h of blk follow (a per-expert router
   or loss tensor), or -1 for any other tensor. */
int ml_exp_growing_layer(const ml_experiment *e, const ml_params *blk, int h);
/* Changes the router options of layer (0-based) while the run goes: opt holds every option
   (option-table order); only options the plugin flags ML_OPTF_RUNTIME may differ
   (ml_router_inst_set_options). Records a router_options event with the values that
   changed and what they were; does nothing when nothing changes. */
int ml_exp_set_router_options(ml_experiment *e, int layer, const ml_optval *opt);
/* Asks the schedule plugin: add (L) receives the number of experts to add to each layer,
   remove[l] (room for the layer's N ids) and n_remove (L) the experts to remove (removals
   first, by the ids before the decision; plugin/schedule_host.h). */
int ml_exp_schedule_decide(ml_experiment *e, int *add, int *const *remove, int *n_remove);
int ml_exp_loss_index(const ml_experiment *e, const char *name);
/* a column of this epoch's metrics row (replaces a value of the same name) */
int ml_exp_log(ml_experiment *e, const char *name, double value);
int ml_exp_event(ml_experiment *e, const char *kind, const char *fields_json);
/* the same, with the fields built by ml_json_begin + ml_json_* (not yet ended) */
int ml_exp_event_json(ml_experiment *e, const char *kind, const ml_json *fields);
/* Checkpoints and resume: core/run/checkpoint.h. */
int ml_exp_finish(ml_experiment *e, const char *status);
/*
 * Rewrites summary.json atomically (docs/results.md) with this status ("running", "ok",
 * "error", "interrupted") and arms the crash handler with the "crashed" variant. Called
 * when the run directory opens, at the start and end of every epoch and by ml_exp_finish;
 * call it after reopening a run directory. ML_OK without a run directory.
 */
int ml_exp_write_summary(ml_experiment *e, const char *status);

#endif
