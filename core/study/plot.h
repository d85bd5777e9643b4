/*
 * plot.h — `moelab plot`: PNG plots of a run or a study, drawn by gnuplot. For each plot
 * moelab writes a data file and a gnuplot script into DIR/plots/ (kept, so a researcher
 * can change a label or a range and run `gnuplot NAME.gp` there again), then runs gnuplot
 * on it as a child process (fork/exec, no shell; stderr kept for the error message).
 *
 * A run directory gets (docs/studies.md, "Plots"):
 *     loss.png                task loss and each balancing loss, training and validation
 *     routing.png             active experts, normalised entropy and mutual information
 *                             per MoE layer over epochs (validation dashed)
 *     heatmap_moe<L>.png      expert utilisation, expert x epoch (routing.csv), with the
 *                             growth, collapse and intervention events of events.jsonl;
 *                             experts not present yet are blank
 *     heatmap_steps_moe<L>.png  the same, expert x step, from routing_steps.csv when present
 *     steps.png               losses and active experts over steps, from steps.csv when present
 * A study (a sweep directory, or a directory of runs) gets, per group of runs that
 * differ only in the seed (runs.h):
 *     curve_<metric>.png      the mean curve of a metric over epochs with its 95% CI band
 *     compare_<metric>_<at>.png  the metric at the last or best epoch, mean and 95% CI per group
 *
 * Ownership: nothing is returned that must be freed.
 */
#ifndef MOELAB_PLOT_H
#define MOELAB_PLOT_H

#include <stdio.h>
#include "study/runs.h"

typedef struct ml_plot_opts {
    int width, height;       /* pixels of every PNG (default 1000 x 600) */
    const char *metric;      /* study plots: the metrics.csv column (default val_loss) */
    ml_at at;                /* the comparison plot's epoch (default last) */
    const char *const *by;   /* study plots: group by these keys (n_by 0: by the configs) */
    int n_by;
    int include_unfinished;  /* study plots: keep runs whose status is not ok */
    int runs;                /* study plots: also plot each run of the study */
    FILE *out;               /* each PNG written is named here, one per line (NULL: quiet) */
} ml_plot_opts;

/* The path of the gnuplot binary on $PATH into out, or ML_ERR with "gnuplot not found:
   install gnuplot-nox (tools/install-deps.sh)". */
int ml_plot_find_gnuplot(char *out, size_t n);

/*
 * Runs gnuplot on script (a file name in dir) with dir as the working directory. ML_ERR
 * when gnuplot cannot start or fails: the message names the script and holds gnuplot's
 * stderr (its lines joined).
 */
int ml_plot_gnuplot(const char *gnuplot, const char *dir, const char *script);

/* Every plot of the run in run_dir (into run_dir/plots/). Returns the number of plots
   that failed (each one's error on stderr), or -1 when the run cannot be plotted at all
   (its metrics.csv is missing or has no rows; message set). */
int ml_plot_run(const char *gnuplot, const char *run_dir, const ml_plot_opts *o);

/* The study plots of dir (a sweep directory or a directory of runs, into dir/plots/), and
   with o->runs each run's own. Returns failures as ml_plot_run. */
int ml_plot_study(const char *gnuplot, const char *dir, const ml_plot_opts *o);

/* `moelab plot ARGS`: returns the exit status (0 every plot written, 1 a plot failed or
   nothing could be plotted, 2 a bad command line). */
int ml_plot_main(int argc, char **argv);

#endif
