/*
 * health.h — routing health of one MoE layer over a window (usually an epoch).
 *
 * An ml_health_acc accumulates the routing records of the window's batches: dispatched
 * slots per expert, summed probabilities, summed per-sample entropies, dropped samples
 * and, when the data has class labels, the (label, top-1 expert) contingency table.
 * ml_health_compute() turns the counts into the metrics of docs/metrics.md, which also
 * says which of them signal collapse and why the Switch load-balance value does not.
 *
 * The top-1 expert of a sample is the argmax of its probability row (lowest index on
 * ties), whatever the dispatch did with it. Entropies are in nats, with 0·log 0 = 0.
 * Each probability row is normalised to sum 1 (in double) before it is counted.
 *
 * Ownership: ml_health_acc_new() returns an owned accumulator (ml_health_acc_free);
 * ml_health_compute() fills an ml_health whose arrays it owns (ml_health_free). Both
 * frees accept NULL. Records passed to ml_health_acc_add() are borrowed for the call.
 */
#ifndef MOELAB_HEALTH_H
#define MOELAB_HEALTH_H

#include <stdint.h>
#include "moelab/plugin.h"

typedef struct ml_health_acc ml_health_acc;

/* num_classes 0 = unlabelled (nmi_label is then NaN). NULL on bad arguments / no memory. */
ml_health_acc *ml_health_acc_new(int num_experts, int num_classes);
void ml_health_acc_free(ml_health_acc *a);
/* Grows to num_experts: counts kept, the new experts start at 0. Shrinking is an error. */
int ml_health_acc_resize(ml_health_acc *a, int num_experts);
int ml_health_acc_num_experts(const ml_health_acc *a);
/* Experts were removed: the counts of kept[0..nkeep) (ascending old ids) become those of
   experts 0..nkeep-1; the removed experts' counts leave the window, its samples and
   per-sample entropies stay. */
int ml_health_acc_keep(ml_health_acc *a, const int *kept, int nkeep);
void ml_health_acc_reset(ml_health_acc *a);
/*
 * Accumulates one batch. r->N larger than the accumulator's N grows it (experts added
 * mid-window); dispatch triples naming an expert out of range and labels outside
 * [0, num_classes) are skipped. r->label may be NULL (the batch adds nothing to NMI).
 * n_dropped: samples of the batch that had no dispatch triple.
 */
void ml_health_acc_add(ml_health_acc *a, const ml_routing_record *r, int n_dropped);

typedef struct ml_health_cfg {
    double active_threshold;         /* active: utilisation >= active_threshold / N; 0.1 */
    double collapse_active_fraction; /* collapsed when active < this · N; 0.5 */
    double collapse_entropy;         /* collapsed when marginal_entropy_norm < this; 0.5 */
    double collapse_margin;          /* collapsed when effective_experts <= k + this (k =
                                        slots_per_sample < N - this); 0.5 */
} ml_health_cfg;

/* The defaults above. */
ml_health_cfg ml_health_cfg_default(void);

typedef struct ml_health {
    int num_experts;               /* N */
    double *utilisation;           /* (N) share of dispatched slots, sums to 1 (0s if none) */
    double *importance;            /* (N) mean probability over the window's samples */
    double cv;                     /* population std / mean of utilisation; NaN if no slots */
    int active;                    /* experts with utilisation >= active_threshold / N */
    int dead;                      /* experts with zero dispatched slots */
    double marginal_entropy_norm;  /* H(utilisation) / log N; 1 when N == 1 */
    double effective_experts;      /* exp(H(utilisation)): N balanced, k at top-k collapse; 0 if no slots */
    double effective_norm;         /* effective_experts / N: 1 balanced, k/N at top-k collapse */
    double max_share;              /* max utilisation: 1/N balanced, 1/k at top-k collapse */
    double kl_uniform;             /* KL(u || uniform) = log N - H(u), nats: 0 balanced, log(N/k) collapsed */
    double slots_per_sample;       /* slots / routed samples: the k of top-k (0 if none routed) */
    int window_experts;            /* experts the layer had when the window began (N without growth):
                                      the collapse rules compare against this many */
    double mean_sample_entropy;    /* mean over samples of H(p_b), nats */
    double mutual_info;            /* I(x; expert) = H(importance) - mean H(p_b), nats, >= 0 */
    double max_load_ratio;         /* max(u)/mean(u) - 1 = N·max(u) - 1; NaN if no slots */
    double dropped_share;          /* dropped samples / samples */
    double nmi_label;              /* 2·I(Y;E) / (H(Y) + H(E)), E = top-1 expert; NaN unlabelled */
    double load_balance;           /* Switch N·Σ utilisation_i·importance_i over the window */
    int collapsed;                 /* no slots, active < fraction·N, marginal_entropy_norm <
                                      collapse_entropy, or effective_experts <= k + margin < N */
    int64_t samples;               /* samples accumulated */
    int64_t slots;                 /* dispatched (sample, expert) slots accumulated */
    int64_t labelled;              /* samples that counted towards nmi_label */
} ml_health;

/* The (label, top-1 expert) counts of the window: *joint (C, N) row-major, borrowed until
   the accumulator changes; ML_ERR when the accumulator has no labels (C = 0). */
int ml_health_acc_joint(const ml_health_acc *a, const int64_t **joint, int *C, int *N);

/* The accumulator as one line of text (for checkpoints; owned, free()), and back: the
 * text must be for the accumulator's N and num_classes; on error *a is unchanged. */
char *ml_health_acc_to_text(const ml_health_acc *a);
int ml_health_acc_from_text(ml_health_acc *a, const char *text);

/* cfg NULL = defaults. On failure *out is left freeable (arrays NULL). */
int ml_health_compute(const ml_health_acc *a, const ml_health_cfg *cfg, ml_health *out);
void ml_health_free(ml_health *h); /* frees the arrays, not h; NULL-safe */

#endif
