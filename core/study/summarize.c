/* summarize.c — `moelab summarize`: mean ± sd and the 95% interval per group and column
 * (summarize.h), as Markdown, CSV or JSON. */
#include "study/summarize.h"
#include "study/sweep.h"
#include "base/common.h"
#include "base/file.h"
#include "base/strbuf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ columns */

/* 1 when some run's metrics.csv has column name. */
static int any_has(const ml_runset *set, const char *name) {
    for (int r = 0; r < set->n_runs; r++)
        if (ml_table_col(set->run[r].metrics, name) >= 0) return 1;
    return 0;
}

/* The layer L of a column named moe<L>_active, or 0. */
static int active_layer(const char *name) {
    int L, n = 0;
    if (sscanf(name, "moe%d_active%n", &L, &n) == 1 && n > 0 && name[n] == 0 && L > 0) return L;
    return 0;
}

char **ml_summary_default_cols(const ml_runset *set, int *n) {
    *n = 0;
    int max_layer = 0;
    for (int r = 0; r < set->n_runs; r++)
        for (int c = 0; c < set->run[r].metrics->ncols; c++) {
            int L = active_layer(set->run[r].metrics->cols[c]);
            if (L > max_layer && L < 100000) max_layer = L;
        }
    char **v = ml_calloc(4 * (size_t)max_layer + 2, sizeof *v);
    if (!v) return NULL;
    const char *loss = any_has(set, "val_loss") ? "val_loss" : any_has(set, "task_loss") ? "task_loss" : NULL;
    if (loss && !(v[(*n)++] = ml_strdup(loss))) goto fail;
    static const char *const per_layer[] = {"active", "cv", "mutual_info", "collapsed"};
    for (int L = 1; L <= max_layer; L++)
        for (int k = 0; k < 4; k++) {
            char name[64];
            snprintf(name, sizeof name, "moe%d_%s", L, per_layer[k]);
            if (any_has(set, name) && !(v[(*n)++] = ml_strdup(name))) goto fail;
        }
    return v;
fail:
    ml_runs_free_list(v, *n);
    return NULL;
}

/* ------------------------------------------------------------------ the table */

void ml_summary_free(ml_summary *s) {
    if (!s) return;
    ml_runs_free_list(s->col, s->n_cols);
    if (s->row_why) ml_runs_free_list(s->row_why, s->set->n_runs);
    free(s->row);
    free(s->epoch);
    free(s->value);
    free((void *)s->why);
    free(s->cell);
    free(s);
}

ml_summary *ml_summary_new(const ml_runset *set, const char *const *cols, int n_cols, const ml_at *at) {
    ml_summary *s = ml_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->set = set;
    s->at = *at;
    size_t R = (size_t)set->n_runs + 1, C = (size_t)n_cols + 1;
    s->col = ml_calloc(C, sizeof *s->col);
    s->row = ml_calloc(R, sizeof *s->row);
    s->epoch = ml_calloc(R, sizeof *s->epoch);
    s->row_why = ml_calloc(R, sizeof *s->row_why);
    s->value = ml_calloc(R * C, sizeof *s->value);
    s->why = ml_calloc(R * C, sizeof *s->why);
    s->cell = ml_calloc(((size_t)set->n_groups + 1) * C, sizeof *s->cell);
    if (!s->col || !s->row || !s->epoch || !s->row_why || !s->value || !s->why || !s->cell) goto fail;
    for (int c = 0; c < n_cols; c++) {
        if (!(s->col[c] = ml_strdup(cols[c]))) goto fail;
        s->n_cols++;
    }
    for (int r = 0; r < set->n_runs; r++) {
        const ml_table *t = set->run[r].metrics;
        char why[256];
        int row = ml_at_row(t, at, why, sizeof why);
        s->row[r] = row;
        s->epoch[r] = row >= 0 ? ml_table_num(t, row, ml_table_col(t, "epoch")) : NAN;
        if (row < 0 && !(s->row_why[r] = ml_strdup(why))) goto fail;
        for (int c = 0; c < n_cols; c++) {
            double *v = &s->value[(size_t)r * n_cols + c];
            const char **w = &s->why[(size_t)r * n_cols + c];
            *v = NAN;
            if (row < 0) continue;
            int k = ml_table_col(t, cols[c]);
            int kind = ml_table_kind(t, row, k);
            double x = ml_table_num(t, row, k);
            if (k < 0) *w = "no such column";
            else if (kind == ML_CELL_EMPTY) *w = "empty";
            else if (kind == ML_CELL_TEXT) *w = "text";
            else if (isnan(x)) *w = "nan";
            else if (isinf(x)) *w = "inf";
            else *v = x;
        }
    }
    double *x = ml_calloc(R, sizeof *x);
    if (!x) goto fail;
    for (int g = 0; g < set->n_groups; g++)
        for (int c = 0; c < n_cols; c++) {
            const ml_run_group *G = &set->group[g];
            for (int i = 0; i < G->n_runs; i++) x[i] = s->value[(size_t)G->run[i] * n_cols + c];
            ml_stats_describe(x, G->n_runs, ML_SUMMARY_LEVEL, &s->cell[(size_t)g * n_cols + c]);
        }
    free(x);
    return s;
fail:
    ml_summary_free(s);
    return NULL;
}

/* ------------------------------------------------------------------ notes */

#define NOTE_RUNS 6 /* runs named in one note line; the rest are counted */

void ml_summary_notes(const ml_summary *s, const char *who, FILE *err) {
    const ml_runset *set = s->set;
    for (int r = 0; r < set->n_runs; r++)
        if (s->row_why[r]) fprintf(err, "%s: %s: %s: no values from this run\n", who, set->run[r].dir, s->row_why[r]);
    static const char *const kinds[] = {"no such column", "empty", "text", "nan", "inf"};
    static const char *const says[] = {"not in metrics.csv", "empty cell", "text, not a number", "nan", "inf"};
    for (int c = 0; c < s->n_cols; c++)
        for (int k = 0; k < 5; k++) {
            int n = 0;
            for (int r = 0; r < set->n_runs; r++) {
                const char *w = s->why[(size_t)r * s->n_cols + c];
                if (!w || strcmp(w, kinds[k])) continue;
                if (n == 0) fprintf(err, "%s: %s: %s in", who, s->col[c], says[k]);
                if (n < NOTE_RUNS) {
                    fprintf(err, "%s %s", n ? "," : "", set->run[r].dir);
                    if (k > 0 && isfinite(s->epoch[r])) fprintf(err, " (epoch %g)", s->epoch[r]);
                }
                n++;
            }
            if (n > NOTE_RUNS) fprintf(err, " and %d more", n - NOTE_RUNS);
            if (n) fprintf(err, " (%d run%s not counted)\n", n, n == 1 ? "" : "s");
        }
    /* the same seed twice in a group: the runs are repeats, not independent samples */
    int repeats = 0;
    for (int g = 0; g < set->n_groups; g++) {
        const ml_run_group *G = &set->group[g];
        int found = 0;
        for (int i = 0; i < G->n_runs && !found; i++)
            for (int j = 0; j < i && !found; j++) {
                const ml_run *a = &set->run[G->run[j]], *b = &set->run[G->run[i]];
                if (strcmp(a->seed, b->seed)) continue;
                found = 1;
                if (repeats++ < NOTE_RUNS)
                    fprintf(err, "%s: warning: group %.120s%s: %s and %s have the same seed %s: repeats of one run "
                                 "are not independent samples\n",
                            who, G->label, strlen(G->label) > 120 ? "..." : "", a->dir, b->dir, a->seed);
            }
    }
    if (repeats > NOTE_RUNS) fprintf(err, "%s: warning: %d more groups repeat a seed\n", who, repeats - NOTE_RUNS);
}

/* ------------------------------------------------------------------ writers */

static void md_text(ml_strbuf *b, const char *t) {
    for (; *t; t++) {
        if (*t == '|') ml_strbuf_puts(b, "\\|");
        else if (*t == '\n') ml_strbuf_puts(b, " ");
        else ml_strbuf_put(b, t, 1);
    }
}

static void seeds(ml_strbuf *b, const ml_runset *set, const ml_run_group *G, const char *sep) {
    for (int i = 0; i < G->n_runs; i++) ml_strbuf_printf(b, "%s%s", i ? sep : "", set->run[G->run[i]].seed);
}

/* The epochs the values come from: "epoch 5", "epochs 3 to 5", or "" when unknown. */
static void epochs_used(const ml_summary *s, char *out, size_t n) {
    double lo = INFINITY, hi = -INFINITY;
    for (int r = 0; r < s->set->n_runs; r++)
        if (isfinite(s->epoch[r])) {
            if (s->epoch[r] < lo) lo = s->epoch[r];
            if (s->epoch[r] > hi) hi = s->epoch[r];
        }
    if (lo > hi) snprintf(out, n, "%s", "");
    else if (lo == hi) snprintf(out, n, " (epoch %g)", lo);
    else snprintf(out, n, " (epochs %g to %g, by run)", lo, hi);
}

/*
 * A cell as a reader wants it: the sd rounded to two significant digits and the mean and
 * interval to the same decimal place (0.0115 ± 0.0024 [0.0056, 0.0174]); four significant
 * digits when there is no spread to round to, or the numbers are huge.
 */
static void md_cell(ml_strbuf *b, const ml_stats_desc *d) {
    if (d->n == 0) {
        ml_strbuf_puts(b, "– (n=0)");
        return;
    }
    if (d->n == 1) {
        ml_strbuf_printf(b, "%.4g (n=1, no CI)", d->mean);
        return;
    }
    int dec = d->sd > 0 ? 1 - (int)floor(log10(d->sd)) : -1;
    if (dec < 0 || dec > 10 || fabs(d->mean) >= 1e7 || fabs(d->ci_lo) >= 1e7 || fabs(d->ci_hi) >= 1e7)
        ml_strbuf_printf(b, "%.4g ± %.2g [%.4g, %.4g] (n=%d)", d->mean, d->sd, d->ci_lo, d->ci_hi, d->n);
    else
        ml_strbuf_printf(b, "%.*f ± %.*f [%.*f, %.*f] (n=%d)", dec, d->mean, dec, d->sd, dec, d->ci_lo, dec, d->ci_hi,
                         d->n);
}

static void write_markdown(const ml_summary *s, ml_strbuf *b) {
    const ml_runset *set = s->set;
    char at[256], ep[96];
    ml_at_describe(&s->at, at, sizeof at);
    epochs_used(s, ep, sizeof ep);
    ml_strbuf_printf(b, "%d run%s in %d group%s (", set->n_runs, set->n_runs == 1 ? "" : "s", set->n_groups,
                     set->n_groups == 1 ? "" : "s");
    if (set->n_keys && set->n_groups > 1) ml_strbuf_puts(b, "runs that differ only in the seed form a group");
    else if (!set->n_keys) ml_strbuf_puts(b, "no setting differs between the runs");
    else ml_strbuf_puts(b, "one setting for all");
    ml_strbuf_printf(b, "); values at %s%s. Each cell: mean ± sd [%g%% CI of the mean, Student's t] (n runs).\n\n",
                     at, ep, 100 * ML_SUMMARY_LEVEL);
    ml_strbuf_puts(b, "|");
    if (!set->n_keys) ml_strbuf_puts(b, " group |");
    for (int k = 0; k < set->n_keys; k++) {
        ml_strbuf_puts(b, " ");
        md_text(b, set->keys[k]);
        ml_strbuf_puts(b, " |");
    }
    ml_strbuf_puts(b, " seeds |");
    for (int c = 0; c < s->n_cols; c++) {
        ml_strbuf_puts(b, " ");
        md_text(b, s->col[c]);
        ml_strbuf_puts(b, " |");
    }
    ml_strbuf_puts(b, "\n|");
    for (int k = 0; k < (set->n_keys ? set->n_keys : 1) + 1 + s->n_cols; k++) ml_strbuf_puts(b, "---|");
    ml_strbuf_puts(b, "\n");
    for (int g = 0; g < set->n_groups; g++) {
        const ml_run_group *G = &set->group[g];
        ml_strbuf_puts(b, "|");
        if (!set->n_keys) ml_strbuf_puts(b, " all runs |");
        for (int k = 0; k < set->n_keys; k++) {
            ml_strbuf_puts(b, " ");
            md_text(b, G->val[k]);
            ml_strbuf_puts(b, " |");
        }
        ml_strbuf_puts(b, " ");
        ml_strbuf seed = {0};
        seeds(&seed, set, G, ", ");
        md_text(b, seed.buf ? seed.buf : "");
        ml_strbuf_free(&seed);
        ml_strbuf_puts(b, " |");
        for (int c = 0; c < s->n_cols; c++) {
            ml_strbuf_puts(b, " ");
            md_cell(b, &s->cell[(size_t)g * s->n_cols + c]);
            ml_strbuf_puts(b, " |");
        }
        ml_strbuf_puts(b, "\n");
    }
}

static void csv_text(ml_strbuf *b, const char *t) {
    if (!strpbrk(t, ",\"\r\n")) {
        ml_strbuf_puts(b, t);
        return;
    }
    ml_strbuf_puts(b, "\"");
    for (; *t; t++) {
        if (*t == '"') ml_strbuf_puts(b, "\"\"");
        else ml_strbuf_put(b, t, 1);
    }
    ml_strbuf_puts(b, "\"");
}

/* A number that reads back to the same double; empty (CSV) or null (JSON) when not finite. */
static void num(ml_strbuf *b, double v, const char *none) {
    if (isfinite(v)) ml_strbuf_printf(b, "%.17g", v);
    else ml_strbuf_puts(b, none);
}

static void write_csv(const ml_summary *s, ml_strbuf *b) {
    const ml_runset *set = s->set;
    ml_strbuf_puts(b, "group,col,n,mean,sd,ci_lo,ci_hi,runs,seeds");
    for (int k = 0; k < set->n_keys; k++) {
        ml_strbuf_puts(b, ",");
        csv_text(b, set->keys[k]);
    }
    ml_strbuf_puts(b, "\n");
    for (int g = 0; g < set->n_groups; g++) {
        const ml_run_group *G = &set->group[g];
        for (int c = 0; c < s->n_cols; c++) {
            const ml_stats_desc *d = &s->cell[(size_t)g * s->n_cols + c];
            csv_text(b, G->label);
            ml_strbuf_puts(b, ",");
            csv_text(b, s->col[c]);
            ml_strbuf_printf(b, ",%d,", d->n);
            num(b, d->mean, "");
            ml_strbuf_puts(b, ",");
            num(b, d->sd, "");
            ml_strbuf_puts(b, ",");
            num(b, d->ci_lo, "");
            ml_strbuf_puts(b, ",");
            num(b, d->ci_hi, "");
            ml_strbuf_printf(b, ",%d,", G->n_runs);
            ml_strbuf seed = {0};
            seeds(&seed, set, G, " ");
            csv_text(b, seed.buf ? seed.buf : "");
            ml_strbuf_free(&seed);
            for (int k = 0; k < set->n_keys; k++) {
                ml_strbuf_puts(b, ",");
                csv_text(b, G->val[k]);
            }
            ml_strbuf_puts(b, "\n");
        }
    }
}

static void write_json(const ml_summary *s, ml_strbuf *b) {
    const ml_runset *set = s->set;
    static const char *const kinds[] = {"last", "best", "epoch"};
    ml_strbuf_printf(b, "{\"level\":%g,\"at\":{\"kind\":\"%s\"", ML_SUMMARY_LEVEL, kinds[s->at.kind]);
    if (s->at.kind == ML_AT_EPOCH) ml_strbuf_printf(b, ",\"epoch\":%ld", s->at.epoch);
    if (s->at.kind == ML_AT_BEST) {
        ml_strbuf_puts(b, ",\"by\":");
        ml_strbuf_json_string(b, s->at.by);
        ml_strbuf_printf(b, ",\"maximize\":%s", s->at.maximize ? "true" : "false");
    }
    ml_strbuf_puts(b, "},\"keys\":[");
    for (int k = 0; k < set->n_keys; k++) {
        if (k) ml_strbuf_puts(b, ",");
        ml_strbuf_json_string(b, set->keys[k]);
    }
    ml_strbuf_puts(b, "],\"columns\":[");
    for (int c = 0; c < s->n_cols; c++) {
        if (c) ml_strbuf_puts(b, ",");
        ml_strbuf_json_string(b, s->col[c]);
    }
    ml_strbuf_puts(b, "],\"groups\":[");
    for (int g = 0; g < set->n_groups; g++) {
        const ml_run_group *G = &set->group[g];
        ml_strbuf_puts(b, g ? ",\n{\"group\":" : "\n{\"group\":");
        ml_strbuf_json_string(b, G->label);
        ml_strbuf_puts(b, ",\"keys\":{");
        for (int k = 0; k < set->n_keys; k++) {
            if (k) ml_strbuf_puts(b, ",");
            ml_strbuf_json_string(b, set->keys[k]);
            ml_strbuf_puts(b, ":");
            ml_strbuf_json_string(b, G->val[k]);
        }
        ml_strbuf_puts(b, "},\"stats\":{");
        for (int c = 0; c < s->n_cols; c++) {
            const ml_stats_desc *d = &s->cell[(size_t)g * s->n_cols + c];
            if (c) ml_strbuf_puts(b, ",");
            ml_strbuf_json_string(b, s->col[c]);
            ml_strbuf_printf(b, ":{\"n\":%d,\"mean\":", d->n);
            num(b, d->mean, "null");
            ml_strbuf_puts(b, ",\"sd\":");
            num(b, d->sd, "null");
            ml_strbuf_puts(b, ",\"ci_lo\":");
            num(b, d->ci_lo, "null");
            ml_strbuf_puts(b, ",\"ci_hi\":");
            num(b, d->ci_hi, "null");
            ml_strbuf_puts(b, "}");
        }
        ml_strbuf_puts(b, "},\"runs\":[");
        for (int i = 0; i < G->n_runs; i++) {
            int r = G->run[i];
            const ml_run *run = &set->run[r];
            ml_strbuf_puts(b, i ? ",{\"dir\":" : "{\"dir\":");
            ml_strbuf_json_string(b, run->dir);
            ml_strbuf_puts(b, ",\"seed\":");
            ml_strbuf_json_string(b, run->seed);
            ml_strbuf_puts(b, ",\"status\":");
            ml_strbuf_json_string(b, ml_run_state_name(run->state));
            ml_strbuf_puts(b, ",\"epoch\":");
            num(b, s->epoch[r], "null");
            ml_strbuf_puts(b, ",\"values\":{");
            for (int c = 0; c < s->n_cols; c++) {
                if (c) ml_strbuf_puts(b, ",");
                ml_strbuf_json_string(b, s->col[c]);
                ml_strbuf_puts(b, ":");
                num(b, s->value[(size_t)r * s->n_cols + c], "null");
            }
            ml_strbuf_puts(b, "}}");
        }
        ml_strbuf_puts(b, "]}");
    }
    ml_strbuf_puts(b, "],\"left_out\":[");
    for (int i = 0; i < set->n_left_out; i++) {
        if (i) ml_strbuf_puts(b, ",");
        ml_strbuf_json_string(b, set->left_out[i]);
    }
    ml_strbuf_puts(b, "]}\n");
}

int ml_summary_write(const ml_summary *s, int format, FILE *out) {
    ml_strbuf b = {0};
    if (format == ML_SUMMARY_CSV) write_csv(s, &b);
    else if (format == ML_SUMMARY_JSON) write_json(s, &b);
    else write_markdown(s, &b);
    if (b.oom) return ml_errorf("summarize: out of memory");
    int rc = fwrite(b.buf, 1, b.len, out) == b.len && fflush(out) == 0 ? ML_OK : ml_errorf("summarize: write error");
    ml_strbuf_free(&b);
    return rc;
}

/* ------------------------------------------------------------------ the command */

#define WHO "moelab summarize"

/* Edit distance of a and b (for "did you mean"), capped at 64 characters each. */
static int distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 64 || lb > 64) return 1 << 20;
    int d[65][65];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int x = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < x) x = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < x) x = d[i][j - 1] + 1;
            d[i][j] = x;
        }
    return d[la][lb];
}

/* A column no run has: the message names the nearest one some run has. */
static void no_such_column(const ml_runset *set, const char *what, const char *col) {
    const char *best = NULL;
    int bd = 1 << 30;
    for (int r = 0; r < set->n_runs; r++)
        for (int c = 0; c < set->run[r].metrics->ncols; c++) {
            int d = distance(col, set->run[r].metrics->cols[c]);
            if (d < bd) bd = d, best = set->run[r].metrics->cols[c];
        }
    if (best && bd <= (int)strlen(col) / 2 + 1)
        fprintf(stderr, WHO ": %s '%s': in no run's metrics.csv (did you mean '%s'?)\n", what, col, best);
    else
        fprintf(stderr, WHO ": %s '%s': in no run's metrics.csv (docs/results.md lists its columns)\n", what, col);
}

static const char *const usage_text =
    "usage: moelab summarize DIR... [--cols C1,C2,...] [--at last|best|epoch=N] [--best-by COL[:max]]\n"
    "                        [--by KEY1,KEY2,...] [--format markdown|csv|json] [--include-unfinished]\n";

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, WHO ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (moelab summarize --help)\n");
    return ML_EXIT_USAGE;
}

int ml_summarize_main(int argc, char **argv) {
    const char *cols = NULL, *at = NULL, *best_by = NULL, *by = NULL, *format = "markdown", *v;
    int include = 0, n_dirs = 0, rc = ML_EXIT_USAGE;
    const char **dirs = ml_calloc((size_t)argc + 1, sizeof *dirs);
    char **colv = NULL, **byv = NULL;
    int n_colv = 0, n_byv = 0;
    ml_runset *set = NULL;
    ml_summary *sum = NULL;
    if (!dirs) return ML_EXIT_RUNTIME;
    for (int i = 0; i < argc; i++) {
        int missing = 0;
        if ((v = ml_runs_opt(argc, argv, &i, "--cols", &missing))) cols = v;
        else if ((v = ml_runs_opt(argc, argv, &i, "--at", &missing))) at = v;
        else if ((v = ml_runs_opt(argc, argv, &i, "--best-by", &missing))) best_by = v;
        else if ((v = ml_runs_opt(argc, argv, &i, "--by", &missing))) by = v;
        else if ((v = ml_runs_opt(argc, argv, &i, "--format", &missing))) format = v;
        else if (missing) {
            usage_error("%s needs a value", argv[i]);
            goto out;
        } else if (!strcmp(argv[i], "--include-unfinished")) include = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            usage_error("unknown option '%s'", argv[i]);
            goto out;
        } else dirs[n_dirs++] = argv[i];
    }
    int fmt = !strcmp(format, "markdown") || !strcmp(format, "md") ? ML_SUMMARY_MARKDOWN
              : !strcmp(format, "csv")                             ? ML_SUMMARY_CSV
              : !strcmp(format, "json")                            ? ML_SUMMARY_JSON
                                                                   : -1;
    if (fmt < 0) {
        usage_error("--format '%s': expected markdown, csv or json", format);
        goto out;
    }
    if (!n_dirs) {
        fputs(usage_text, stderr);
        goto out;
    }
    ml_at a;
    if (ml_at_parse(at, best_by, &a)) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        goto out;
    }
    ml_runs_opts o = {include, WHO, stderr};
    if (!(set = ml_runs_find(dirs, n_dirs, &o))) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        goto out;
    }
    if (set->n_left_out) {
        fprintf(stderr, WHO ": left out %d unfinished run%s (--include-unfinished keeps them):", set->n_left_out,
                set->n_left_out == 1 ? "" : "s");
        for (int i = 0; i < set->n_left_out && i < 10; i++) fprintf(stderr, "%s %s", i ? "," : "", set->left_out[i]);
        if (set->n_left_out > 10) fprintf(stderr, " and %d more", set->n_left_out - 10);
        fputc('\n', stderr);
    }
    if (set->n_runs == 0) {
        fprintf(stderr, WHO ": nothing to summarise: no %srun could be read\n", include ? "" : "finished ");
        rc = ML_EXIT_RUNTIME;
        goto out;
    }
    if (by) {
        if (!(byv = ml_runs_split(by, &n_byv))) goto oom;
        if (!n_byv) {
            usage_error("--by '%s': expected KEY1,KEY2,...", by);
            goto out;
        }
        if (ml_runs_group(set, (const char *const *)byv, n_byv)) {
            fprintf(stderr, WHO ": %s\n", ml_error());
            goto out;
        }
    }
    if (a.kind == ML_AT_BEST && !any_has(set, a.by)) {
        no_such_column(set, "--best-by", a.by);
        goto out;
    }
    if (cols) {
        if (!(colv = ml_runs_split(cols, &n_colv))) goto oom;
        if (!n_colv) {
            usage_error("--cols '%s': expected C1,C2,...", cols);
            goto out;
        }
        for (int c = 0; c < n_colv; c++)
            if (!any_has(set, colv[c])) {
                no_such_column(set, "--cols", colv[c]);
                goto out;
            }
    } else if (!(colv = ml_summary_default_cols(set, &n_colv))) {
        goto oom;
    }
    if (!n_colv) {
        fprintf(stderr, WHO ": no column to summarise: the runs' metrics.csv have neither val_loss, task_loss nor "
                        "moe<L>_ columns (name them with --cols)\n");
        rc = ML_EXIT_RUNTIME;
        goto out;
    }
    if (!(sum = ml_summary_new(set, (const char *const *)colv, n_colv, &a))) goto oom;
    ml_summary_notes(sum, WHO, stderr);
    if (ml_summary_write(sum, fmt, stdout)) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        rc = ML_EXIT_RUNTIME;
        goto out;
    }
    rc = 0;
    goto out;
oom:
    fprintf(stderr, WHO ": %s\n", ml_error());
    rc = ML_EXIT_RUNTIME;
out:
    ml_summary_free(sum);
    ml_runs_free(set);
    ml_runs_free_list(colv, n_colv);
    ml_runs_free_list(byv, n_byv);
    free(dirs);
    return rc;
}

void ml_summarize_sweep(const char *dir, FILE *out) {
    ml_runs_opts o = {0, "moelab sweep", stderr};
    ml_runset *set = ml_runs_find(&dir, 1, &o);
    int n = 0;
    char **cols = set && set->n_runs ? ml_summary_default_cols(set, &n) : NULL;
    ml_at a;
    ml_at_parse(NULL, NULL, &a);
    ml_summary *sum = cols && n ? ml_summary_new(set, (const char *const *)cols, n, &a) : NULL;
    if (sum) {
        fputc('\n', out);
        ml_summary_write(sum, ML_SUMMARY_MARKDOWN, out);
        ml_summary_notes(sum, "moelab sweep", stderr);
    } else if (!set || (set->n_runs && !cols)) {
        fprintf(stderr, "moelab sweep: no summary: %s\n", ml_error());
    }
    ml_summary_free(sum);
    ml_runs_free_list(cols, n);
    ml_runs_free(set);
}
