/*
 * summarize.h — `moelab summarize`: one table over a study's runs, per group of runs that
 * differ only in the seed (runs.h) and per metrics.csv column, with n, the mean, the sample
 * standard deviation and the 95% confidence interval of the mean (stats.h). The values are
 * each run's metrics.csv row at the last epoch, at its best epoch (lowest val_loss, or any
 * column, lowest or highest), or at a given epoch. docs/studies.md shows the output.
 *
 * A value is missing when the run has no such column, the cell is empty, text or not
 * finite (nan, inf), or the run has no row for the epoch asked: it is not counted in n,
 * and the notes (ml_summary_notes) say which runs lack what.
 *
 * Ownership: ml_summary_new returns an owned summary (ml_summary_free) that borrows the
 * run set, which must outlive it.
 */
#ifndef MOELAB_SUMMARIZE_H
#define MOELAB_SUMMARIZE_H

#include <stdio.h>
#include "study/runs.h"
#include "study/stats.h"

enum { ML_SUMMARY_MARKDOWN = 0, ML_SUMMARY_CSV = 1, ML_SUMMARY_JSON = 2 };

#define ML_SUMMARY_LEVEL 0.95 /* the confidence level of the intervals */

typedef struct ml_summary {
    const ml_runset *set;  /* borrowed */
    ml_at at;
    int n_cols;
    char **col;            /* (n_cols) metrics.csv columns */
    int *row;              /* (n_runs) the metrics row each run's values come from; -1: none */
    double *epoch;         /* (n_runs) the epoch of that row (NaN: none, or no epoch column) */
    char **row_why;        /* (n_runs) why a run has no row (NULL when it has one) */
    double *value;         /* (n_runs, n_cols) each run's value; NaN when missing */
    const char **why;      /* (n_runs, n_cols) why a value is missing: "no such column",
                              "empty", "nan", "inf", "text"; NULL when present or no row */
    ml_stats_desc *cell;   /* (n_groups, n_cols) */
} ml_summary;

/*
 * The default columns of a run set (owned list, ml_runs_free_list): val_loss (task_loss
 * when no run has val_loss) and, for each MoE layer L that some run has, moe<L>_active,
 * moe<L>_cv, moe<L>_mutual_info and moe<L>_collapsed, each when some run has it.
 */
char **ml_summary_default_cols(const ml_runset *set, int *n);

/* Computes the table of cols[0..n_cols) over set's groups at at. */
ml_summary *ml_summary_new(const ml_runset *set, const char *const *cols, int n_cols, const ml_at *at);
void ml_summary_free(ml_summary *s);

/* Writes the table as Markdown, CSV or JSON (ML_SUMMARY_*); ML_ERR on a write error. */
int ml_summary_write(const ml_summary *s, int format, FILE *out);
/* Writes one line per missing value kind and column, naming the runs, to err with prefix who. */
void ml_summary_notes(const ml_summary *s, const char *who, FILE *err);

/* `moelab summarize ARGS`: returns the exit status (0 done, 1 nothing could be summarised,
   2 a bad command line). */
int ml_summarize_main(int argc, char **argv);

/* After `moelab sweep`: the default Markdown table of the sweep in dir on out, when any of
   its runs finished; problems go to stderr and change nothing else. */
void ml_summarize_sweep(const char *dir, FILE *out);

#endif
