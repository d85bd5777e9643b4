/*
 * runs.h — the finished runs of a study, found from directories and put into groups, for
 * the commands that read results back (`moelab summarize`, `moelab plot`).
 *
 * Finding: each directory given is a sweep directory (its sweep.yaml lists the runs), a
 * run directory (it has summary.json or config.yaml), or a directory holding such
 * directories (searched three levels down, e.g. results/ or results/demo/). A run reached
 * twice counts once. A run's state comes from its own summary.json (ml_sweep_dir_state).
 *
 * Grouping: runs that differ only in their seed form a group. Each run's resolved
 * config.yaml is flattened to dotted keys (maps by key, lists by index: losses.0.coef; a
 * list whose length differs between the runs is one key, written as flow YAML:
 * losses=[] vs losses=[{name: load_balance, coef: 0.01}]). The keys whose values differ
 * between the runs tell the groups apart; keys that cannot change what a run computes
 * are left out of that comparison (ML_RUNS_NOT_SETTINGS: the seed, the thread count, the
 * experiment's name, where results go, the sweep and launcher sections, the Lua sandbox's
 * limits). Grouping by chosen keys instead (--by) may use any key, those included.
 *
 * Ownership: ml_runs_find returns an owned set (ml_runs_free); every string and table in
 * it belongs to it.
 */
#ifndef MOELAB_RUNS_H
#define MOELAB_RUNS_H

#include <stddef.h>
#include <stdio.h>
#include "study/table.h"

/* Keys (and key prefixes) that do not take part in telling groups apart. */
#define ML_RUNS_NOT_SETTINGS "train.seed, train.threads, experiment, results.*, sweep.*, launcher.*, lua.*"

typedef struct ml_run {
    char *dir;          /* the run directory as reached: the argument, or argument/child */
    int state;          /* ML_RUN_* (study/sweep.h) */
    char *seed;         /* train.seed of its config.yaml ("?" when it has none) */
    int n_kv;
    char **key, **val;  /* (n_kv) its config, flattened (above) */
    int group;          /* index into the set's groups */
    ml_table *metrics;  /* its metrics.csv */
} ml_run;

typedef struct ml_run_group {
    char *label;        /* "router.k=1 losses.0.coef=0.1"; "all runs" when no key differs */
    char **val;         /* (n_keys) its value of each key; "(unset)" when its configs lack it */
    int n_runs;
    int *run;           /* (n_runs) indices into the set's runs, in the order found */
} ml_run_group;

typedef struct ml_runset {
    int n_runs;
    ml_run *run;        /* the runs to study */
    int n_left_out;
    char **left_out;    /* "DIR (state)": unfinished runs not studied (include_unfinished 0) */
    int n_keys;
    char **keys;        /* the keys that tell the groups apart */
    int n_groups;
    ml_run_group *group;
} ml_runset;

typedef struct ml_runs_opts {
    int include_unfinished; /* study runs whose status is not ok too */
    const char *who;        /* prefix of the notes, e.g. "moelab summarize" */
    FILE *log;              /* notes (a run that cannot be read, and why); NULL: none */
} ml_runs_opts;

/*
 * Finds the runs under dirs[0..n) and reads each one's config.yaml and metrics.csv. A run
 * whose files cannot be read is left out with a note naming the file. Fails (NULL, message
 * set) only when a directory given cannot be read. The runs are then in one group; call
 * ml_runs_group to group them.
 */
ml_runset *ml_runs_find(const char *const *dirs, int n, const ml_runs_opts *o);
void ml_runs_free(ml_runset *s);

/*
 * Groups the runs: by the keys in by[0..n_by) (a key also selects the keys below it:
 * `losses` means every losses.* key), or, with n_by 0, by the keys whose values differ.
 * Fails when a key of by is in no run's config (message with a hint).
 */
int ml_runs_group(ml_runset *s, const char *const *by, int n_by);

/* The value of key in run r's config, or NULL. */
const char *ml_run_value(const ml_run *r, const char *key);

/* ----------------------------------------------------- which epoch's values */

enum { ML_AT_LAST = 0, ML_AT_BEST = 1, ML_AT_EPOCH = 2 };

typedef struct ml_at {
    int kind;          /* ML_AT_* */
    long epoch;        /* ML_AT_EPOCH */
    char by[128];      /* ML_AT_BEST: the column judged, default val_loss */
    int maximize;      /* ML_AT_BEST: the highest value is best (COL:max) */
} ml_at;

/* Parses --at (NULL: last) and --best-by (NULL: val_loss, lowest); a --best-by alone means
   --at best. Fails with a message on anything else. */
int ml_at_parse(const char *at, const char *best_by, ml_at *out);
/* "the last epoch", "the best epoch by val_loss (lowest)", "epoch 5". */
const char *ml_at_describe(const ml_at *at, char *buf, size_t n);
/* The row of a metrics table that at chooses, or -1 with the reason in why[n]. */
int ml_at_row(const ml_table *t, const ml_at *at, char *why, size_t n);

/* Command-line option `name VALUE` or `name=VALUE` at argv[*i]: the value, advancing *i past
   what it used; NULL when argv[*i] is another option or the value is missing (*missing 1). */
const char *ml_runs_opt(int argc, char **argv, int *i, const char *name, int *missing);

/* Splits a comma-separated list into owned strings (empty items dropped); *n items.
   Free with ml_runs_free_list. NULL on out of memory. */
char **ml_runs_split(const char *list, int *n);
void ml_runs_free_list(char **v, int n);

#endif
