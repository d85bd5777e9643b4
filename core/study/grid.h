/*
 * grid.h — a study's plan: the list of runs a sweep makes, each an ordinary `moelab run`
 * of one config with its own `key=value` overrides.
 *
 * The plan comes from two places (docs/studies.md):
 *   - the config's `sweep:` section: `grid:` (a map of key -> list of values, whose
 *     Cartesian product gives points, in the order written, the last key varying fastest)
 *     and `runs:` (a list of maps key -> value, one point each, for designs that are not a
 *     grid), grid points first;
 *   - the command line: `key=v1,v2,...` and `key=range(a,b[,step])` axes, crossed with
 *     every point of the section (the command line's axes vary slowest), and `key=v`
 *     overrides applied to every run. A command-line axis replaces a `grid:` key of the
 *     same name.
 * Values are YAML, as in `moelab run` overrides: `losses=[]`, `router.name=saturation`.
 * Commas split values only outside brackets, braces, parentheses and quotes, so
 * `losses=[],[{name: z_loss}]` has two values and `params.tag="a,b"` one.
 * range(a, b[, step]) is Python's (and Hydra's): a, a+step, ... while < b (> b for a
 * negative step); integers when a, b and step are, else reals.
 *
 * Ownership: ml_grid_new returns an owned plan (ml_grid_free); every string in it is owned
 * by it.
 */
#ifndef MOELAB_GRID_H
#define MOELAB_GRID_H

#include <stdint.h>
#include "io/config.h"

#define ML_GRID_MAX_RUNS 100000
#define ML_GRID_MAX_AXES 64

typedef struct ml_grid_run {
    int n;          /* overrides */
    char **over;    /* "key=value", the keys in plan order, each key once */
} ml_grid_run;

typedef struct ml_grid {
    int n_axes;     /* keys that take more than one value across the plan */
    char **axis;    /* their names, in plan order */
    int n_fixed;    /* command-line key=value overrides applied to every run */
    char **fixed;
    int n_runs;
    ml_grid_run *run;
} ml_grid;

/*
 * Builds the plan from the config (its `sweep:` section may be absent) and the command
 * line's arguments (each "key=..." ; anything else is an error). Checks the section's shape
 * with file:line:col messages; does not load any run's config (ml_grid_check_runs does).
 */
ml_grid *ml_grid_new(const ml_config *cfg, const char *const *args, int n_args);
void ml_grid_free(ml_grid *g);

/* Splits "v1,v2,..." (or range(...)) into owned values; *n their count. Exposed for tests. */
char **ml_grid_split_values(const char *text, int *n);

/* The value of key in a run's overrides, or NULL. */
const char *ml_grid_run_value(const ml_grid_run *r, const char *key);

/* 64-bit FNV-1a over the plan (fixed overrides and every run's overrides, in order). */
uint64_t ml_grid_hash(const ml_grid *g);

#endif
