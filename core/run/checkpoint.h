/*
 * checkpoint.h — a run's checkpoints (checkpoints/<tag>.safetensors) and resuming a run.
 *
 * A checkpoint holds the model (parameters, Adam moments, router state and batch-norm
 * statistics, one tensor each) and, as string metadata, everything else a run needs to
 * continue exactly: counters, per-tensor optimizer steps, every RNG stream, the experts per
 * layer, and the "run.*" keys (position in the epoch's data order, the partial epoch's
 * sums and routing-health counts, loss coefficients, best validation loss, the pending
 * metrics row, the sizes of the results files, the script's exp.state as JSON). The keys
 * are listed in docs/lua-api.md ("Checkpoints and resuming"). Nothing in a checkpoint
 * depends on the wall clock, so the same training gives the same bytes.
 *
 * Saving refuses non-finite values (the file on disk stays as it was). Loading reads and
 * validates the whole file — every metadata field, every tensor shape, every value finite —
 * before it changes anything, so a bad file leaves the run untouched. Errors name the file
 * and the field: "ckpt.safetensors: metadata 'step' is '-3', expected an integer >= 0".
 *
 * Format version 2 (this moelab). Version 1 files (moelab before the reliability work)
 * are refused with a message saying so: they lack the run state and the RNG streams of
 * layers past the seventh.
 */
#ifndef MOELAB_CHECKPOINT_H
#define MOELAB_CHECKPOINT_H

#include "run/experiment.h"

/* 3: layers count from 1 in tensor names and rng.moe<l> (2, read too: from 0) */
#define ML_CKPT_FORMAT_VERSION "3"

/* checkpoints/<tag>.safetensors; tag: "best", "last" or a name of [A-Za-z0-9_.-] */
int ml_exp_save_checkpoint(ml_experiment *e, const char *tag);

/*
 * exp:load_checkpoint: restores weights, Adam moments and per-tensor steps, optimizer t,
 * router state and the RNG streams from checkpoints/<tag>.safetensors (or a path when tag
 * has a '/'). Layers grow to the checkpoint's experts. A layer that has more experts than
 * the checkpoint (experts were added after it was taken) keeps its newer experts as they
 * are (parameters, moments, steps, and their rows of the router's tensors); the others are
 * loaded. Counters, coefficients and the script state are not touched (see resume).
 * *epoch and *step: the checkpoint's.
 */
int ml_exp_load_checkpoint(ml_experiment *e, const char *tag, int *epoch, int64_t *step);

/*
 * Saves "interrupt" for ml_exp_interrupted and returns ML_ERR with the message
 * "interrupted at epoch E step S". Called by the training loop after a step (mid-epoch)
 * or at the start of an epoch.
 */
int ml_exp_interrupt(ml_experiment *e);

/*
 * Continues the run in run_dir (whose config.yaml built e): reopens its results, loads
 * checkpoint from_tag (NULL: "interrupt" when it exists and is at least as far as "last",
 * else "last"), restores the full run state, cuts metrics.csv/routing.csv/events.jsonl
 * back to what they held when the checkpoint was taken and appends a "resumed" event.
 * Sets e->resumed. *exit_code: ML_EXIT_USAGE when there is nothing to resume from.
 */
int ml_exp_resume(ml_experiment *e, const char *run_dir, const char *from_tag, int *exit_code);

/* Index of the first non-finite value of x[0..n), or -1. One pass, for checkpoints. */
long ml_ckpt_first_nonfinite(const float *x, size_t n);

#endif
