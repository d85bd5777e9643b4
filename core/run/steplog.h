/*
 * steplog.h — what a run records between epochs, for runs whose interesting part happens
 * inside one (progressive growth in a single pass):
 *
 *   - steps.csv (results.log_every_steps: N > 0): one row every N optimizer steps with the
 *     window's mean losses, the loss coefficients, and per MoE layer its experts, active
 *     experts, CV and normalised entropy over the window's batches;
 *   - routing_steps.csv (with it): per layer and expert, utilisation and importance over
 *     the window;
 *   - new-expert share (always): every expert added to a layer is watched for its first
 *     health.new_expert_steps training steps; then its share of the dispatched slots over
 *     those steps, relative to the fair share 1/N (N the layer's experts at the window's
 *     end), becomes a `new_expert_share` event and, per epoch, the metrics column
 *     moe<L>_new_expert_share (the mean of the ratios of the watches that ended in it).
 *     1 is a new expert taking its fair share; near 0 is starvation, the SRNN seed's worry.
 *
 * Columns and formulas: docs/results.md. The state lives in the experiment
 * (ml_experiment.steplog) and goes into every checkpoint (ml_steplog_to_text), so a resumed
 * run writes the same rows as one never interrupted.
 */
#ifndef MOELAB_STEPLOG_H
#define MOELAB_STEPLOG_H

#include <stdint.h>
#include "model/health.h"
#include "moelab/plugin.h"

typedef struct ml_experiment ml_experiment;

typedef struct ml_watch {
    int layer, expert;     /* from 0 */
    int64_t added_step;    /* optimizer steps done when it was added */
    int steps;             /* training steps watched so far */
    int64_t slots, total;  /* its dispatched slots, and the layer's, over them */
} ml_watch;

#define ML_STEPLOG_MAX_LAYERS 64

typedef struct ml_steplog {
    int every;                  /* results.log_every_steps (0: no steps.csv) */
    int watch_steps;            /* health.new_expert_steps */
    int L;
    ml_health_acc **win;        /* (L) routing of the window (every > 0) */
    int win_steps;              /* steps in the window */
    int64_t win_used;           /* samples of its applied steps */
    double loss_sum, task_sum, aux_sum[16]; /* sums of per-sample-weighted losses */
    int n_watch, cap_watch;
    ml_watch *watch;
    double done_sum[ML_STEPLOG_MAX_LAYERS]; /* ratios of watches ended this epoch, per layer */
    int done_n[ML_STEPLOG_MAX_LAYERS];
} ml_steplog;

int ml_steplog_init(ml_experiment *e);
void ml_steplog_free(ml_steplog *s);
/* A training step's routing record of layer l (before the step's losses). */
int ml_steplog_route(ml_experiment *e, int l, const ml_routing_record *r, int n_dropped);
/* After each training step: its losses (applied = 0 for a skipped step), then rows when
   the window is full. */
int ml_steplog_step(ml_experiment *e, int applied, int B, double loss, double task, const double *aux);
/* Layer l grew from old_n to new_n experts; watch = 1 (experts added by training, not by
   loading a checkpoint): watch the new ones. */
int ml_steplog_grow(ml_experiment *e, int l, int old_n, int new_n, int watch);
/* Experts of layer l were removed, kept[0..nkeep) stay (ascending old ids): the window
   keeps their counts, watches follow their new numbers, a removed expert's watch ends
   without an event. */
int ml_steplog_keep(ml_experiment *e, int l, const int *kept, int nkeep);
/* The epoch's columns (moe<L>_new_expert_share), at its end. */
int ml_steplog_epoch_end(ml_experiment *e);
/* At the end of the run: watches still open become events marked partial. */
int ml_steplog_finish(ml_experiment *e);
/* State for checkpoints (owned text), its check against layers of N[l] experts, and back
   (for the model's current experts; on error nothing changes). */
char *ml_steplog_to_text(const ml_experiment *e);
int ml_steplog_check_text(const ml_experiment *e, const int *N, const char *text);
int ml_steplog_from_text(ml_experiment *e, const char *text);

#endif
