/* plot.c — `moelab plot`: data files and gnuplot scripts in DIR/plots/, drawn by gnuplot
 * (plot.h). One function per plot; each writes <name>.dat and <name>.gp and runs gnuplot. */
#include "study/plot.h"
#include "study/stats.h"
#include "study/summarize.h"
#include "study/sweep.h"
#include "base/common.h"
#include "base/file.h"
#include "base/json.h"
#include "base/strbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define WHO "moelab plot"
#define MAX_BINS 600       /* columns of a per-step heatmap */
#define MAX_EXPERTS 4096   /* ML_MOE_MAX_EXPERTS */

/* ------------------------------------------------------------------ gnuplot */

int ml_plot_find_gnuplot(char *out, size_t n) {
    const char *path = getenv("PATH");
    if (!path || !*path) path = "/usr/local/bin:/usr/bin:/bin";
    for (const char *p = path; *p;) {
        size_t k = strcspn(p, ":");
        if ((size_t)snprintf(out, n, "%.*s/gnuplot", (int)k, k ? p : ".") < n && access(out, X_OK) == 0) return ML_OK;
        p += k;
        if (*p == ':') p++;
    }
    return ml_errorf("gnuplot not found: install gnuplot-nox (tools/install-deps.sh)");
}

int ml_plot_gnuplot(const char *gnuplot, const char *dir, const char *script) {
    int fds[2];
    if (pipe(fds)) return ml_errorf("gnuplot: pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return ml_errorf("gnuplot: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) {
            dup2(null, 0);
            dup2(null, 1);
        }
        dup2(fds[1], 2);
        close(fds[0]);
        if (chdir(dir) == 0) execl(gnuplot, "gnuplot", script, (char *)NULL);
        dprintf(2, "cannot run %s in %s: %s\n", gnuplot, dir, strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    ml_strbuf err = {0};
    char buf[4096];
    ssize_t k;
    while ((k = read(fds[0], buf, sizeof buf)) != 0) {
        if (k < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (err.len < 8192) ml_strbuf_put(&err, buf, (size_t)k);
    }
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    int rc = ML_OK;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        /* gnuplot's message, on one line */
        char *e = err.buf ? err.buf : (char *)"";
        for (char *c = e; *c; c++)
            if (*c == '\n' || *c == '\r') *c = ' ';
        while (*e == ' ') e++;
        size_t n = strlen(e);
        while (n && e[n - 1] == ' ') e[--n] = 0;
        if (WIFEXITED(st))
            rc = ml_errorf("gnuplot failed on %s/%s (exit %d): %s", dir, script, WEXITSTATUS(st), *e ? e : "(no message)");
        else
            rc = ml_errorf("gnuplot failed on %s/%s (signal %d): %s", dir, script, WTERMSIG(st), e);
    }
    ml_strbuf_free(&err);
    return rc;
}

/* ------------------------------------------------------------------ plotter */

typedef struct plotter {
    const ml_plot_opts *o;
    const char *gnuplot;
    char dir[ML_PATH_MAX];   /* .../plots */
    char title[256];         /* what the plots are of: the last two path components */
    int failed;
} plotter;

/* The last two components of path ("demo/20250314-091500"), for titles. */
static void last_two(const char *path, char *out, size_t n) {
    size_t len = strlen(path), i;
    while (len > 1 && path[len - 1] == '/') len--;
    int seen = 0;
    for (i = len; i > 0; i--)
        if (path[i - 1] == '/' && ++seen == 2) break;
    snprintf(out, n, "%.*s", (int)(len - i), path + i);
}

static int pl_open(plotter *p, const char *gnuplot, const char *base, const ml_plot_opts *o) {
    memset(p, 0, sizeof *p);
    p->o = o;
    p->gnuplot = gnuplot;
    if ((size_t)snprintf(p->dir, sizeof p->dir, "%s/plots", base) >= sizeof p->dir)
        return ml_errorf("%s: path too long", base);
    if (ml_mkdir_p(p->dir)) return ML_ERR;
    char abs[PATH_MAX];
    last_two(realpath(base, abs) ? abs : base, p->title, sizeof p->title);
    return ML_OK;
}

/* Writes <name>.dat and <name>.gp, runs gnuplot, names the PNG on o->out. */
static void pl_draw(plotter *p, const char *name, const ml_strbuf *dat, const ml_strbuf *gp) {
    char path[ML_PATH_MAX + 64];
    int rc = ML_OK;
    if (dat->oom || gp->oom) rc = ml_errorf("%s: out of memory", name);
    if (!rc) {
        snprintf(path, sizeof path, "%s/%s.dat", p->dir, name);
        rc = ml_write_file_atomic(path, dat->buf ? dat->buf : "", dat->len);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s/%s.gp", p->dir, name);
        rc = ml_write_file_atomic(path, gp->buf ? gp->buf : "", gp->len);
    }
    if (!rc) {
        snprintf(path, sizeof path, "%s.gp", name);
        rc = ml_plot_gnuplot(p->gnuplot, p->dir, path);
    }
    if (rc) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        p->failed++;
    } else if (p->o->out) {
        fprintf(p->o->out, "%s/%s.png\n", p->dir, name);
    }
}

/* A gnuplot string: single-quoted, '' for a quote, no newlines. */
static void gp_str(ml_strbuf *g, const char *s) {
    ml_strbuf_puts(g, "'");
    for (; *s; s++) {
        if (*s == '\'') ml_strbuf_puts(g, "''");
        else if (*s == '\n' || *s == '\r') ml_strbuf_puts(g, " ");
        else ml_strbuf_put(g, s, 1);
    }
    ml_strbuf_puts(g, "'");
}

static void gp_head(ml_strbuf *g, const plotter *p, const char *name, const char *about) {
    ml_strbuf_printf(g,
                     "# %s\n"
                     "# Written by `moelab plot` from %s.dat; change it and run `gnuplot %s.gp` in this directory.\n"
                     "set terminal pngcairo size %d,%d noenhanced font 'Sans,11'\n"
                     "set output '%s.png'\n"
                     "set grid lc rgb '#e0e0e0'\n"
                     "set key top right opaque box lc rgb '#cccccc'\n"
                     "set border lc rgb '#404040'\n",
                     about, name, name, p->o->width, p->o->height, name);
}

static void dat_num(ml_strbuf *b, double v) {
    if (isfinite(v)) ml_strbuf_printf(b, "%.9g", v);
    else ml_strbuf_puts(b, "NaN");
}

/* A file name from a column name: letters, digits, '_', '-', '.'; the rest become '_'. */
static void safe_name(char *out, size_t n, const char *s) {
    size_t i = 0;
    for (; *s && i + 1 < n; s++, i++)
        out[i] = (char)((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_' ||
                                *s == '-' || *s == '.'
                            ? *s
                            : '_');
    out[i] = 0;
}

/* Integer ticks on an epoch axis from lo to hi (about ten of them). */
static void gp_epoch_tics(ml_strbuf *g, double lo, double hi) {
    if (!(hi >= lo) || hi - lo > 1e7) return;
    double step = ceil((hi - lo) / 10);
    ml_strbuf_printf(g, "set xtics %g\nset mxtics 1\n", step < 1 ? 1 : step);
}

/* The finite range of column col (lo > hi when it has no finite value). */
static void col_range(const ml_table *t, int col, double *lo, double *hi) {
    *lo = INFINITY;
    *hi = -INFINITY;
    for (int r = 0; r < t->nrows; r++) {
        double v = col >= 0 ? ml_table_num(t, r, col) : r + 1;
        if (!isfinite(v)) continue;
        if (v < *lo) *lo = v;
        if (v > *hi) *hi = v;
    }
}

/* ------------------------------------------------------------ line panels */

typedef struct series {
    int col;          /* metrics column */
    char title[160];
    int color;        /* gnuplot linetype 1..8 */
    int dash;         /* 1 solid, 2 dashed, 3 dotted */
} series;

/* 1 when the values of the series are all positive and span more than a factor of 30:
   a log-scale y shows them better. */
static int wants_log(const ml_table *t, const series *s, int n) {
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++)
        for (int r = 0; r < t->nrows; r++) {
            double v = ml_table_num(t, r, s[i].col);
            if (!isfinite(v)) continue;
            if (v <= 0) return 0;
            if (v < lo) lo = v;
            if (v > hi) hi = v;
        }
    return lo < hi && hi / lo > 30;
}

/* 1 when some row of column col holds a finite value. */
static int has_values(const ml_table *t, int col) {
    for (int r = 0; col >= 0 && r < t->nrows; r++)
        if (isfinite(ml_table_num(t, r, col))) return 1;
    return 0;
}

/* Appends a series for column name when it has values. */
static int add_series(series *s, int n, int cap, const ml_table *t, const char *name, const char *title, int color,
                      int dash) {
    int c = ml_table_col(t, name);
    if (n >= cap || !has_values(t, c)) return n;
    s[n].col = c;
    snprintf(s[n].title, sizeof s[n].title, "%s", title);
    s[n].color = (color - 1) % 8 + 1;
    s[n].dash = dash;
    return n + 1;
}

/*
 * The data of a line plot: x (column xcol of t, or the row number) and every column of t
 * the series use, in the table's order, as `<name>.dat` columns 1 + i (header commented).
 * Series are plotted by their table column, so map[col] gives the data column.
 */
static void dat_table(ml_strbuf *b, const ml_table *t, int xcol, const char *xname, const series *s, int n, int *map) {
    for (int c = 0; c < t->ncols; c++) map[c] = 0;
    int k = 1;
    ml_strbuf_printf(b, "# %s", xname);
    for (int c = 0; c < t->ncols; c++)
        for (int i = 0; i < n; i++)
            if (s[i].col == c) {
                map[c] = ++k;
                ml_strbuf_printf(b, "\t%s", t->cols[c]);
                break;
            }
    ml_strbuf_puts(b, "\n");
    for (int r = 0; r < t->nrows; r++) {
        dat_num(b, xcol >= 0 ? ml_table_num(t, r, xcol) : r + 1);
        for (int c = 0; c < t->ncols; c++)
            if (map[c]) {
                ml_strbuf_puts(b, "\t");
                dat_num(b, ml_table_num(t, r, c));
            }
        ml_strbuf_puts(b, "\n");
    }
}

/* One panel: title, axes and a line per series. */
static void gp_panel(ml_strbuf *g, const char *dat, const char *title, const char *xlabel, const char *ylabel,
                     const ml_table *t, const series *s, int n, const int *map, int points) {
    ml_strbuf_puts(g, "set title ");
    gp_str(g, title);
    ml_strbuf_puts(g, "\nset xlabel ");
    gp_str(g, xlabel);
    ml_strbuf_puts(g, "\nset ylabel ");
    gp_str(g, ylabel);
    ml_strbuf_puts(g, wants_log(t, s, n) ? "\nset logscale y\n" : "\nunset logscale y\n");
    ml_strbuf_puts(g, "plot ");
    for (int i = 0; i < n; i++) {
        ml_strbuf_printf(g, "%s'%s.dat' using 1:%d with %s lt %d dt %d lw 2%s title ", i ? ", \\\n     " : "", dat,
                         map[s[i].col], points ? "linespoints" : "lines", s[i].color, s[i].dash,
                         points ? " pt 7 ps 0.6" : "");
        gp_str(g, s[i].title);
    }
    ml_strbuf_puts(g, "\n");
}

/* The aux (balancing) losses of a table: the <name> of every coef_<name> column. */
static int aux_names(const ml_table *t, char names[][128], int cap) {
    int n = 0;
    for (int c = 0; c < t->ncols && n < cap; c++)
        if (!strncmp(t->cols[c], "coef_", 5) && t->cols[c][5]) snprintf(names[n++], 128, "%s", t->cols[c] + 5);
    return n;
}

/* ------------------------------------------------------------------ run plots */

/* loss.png: the task loss (training, validation) and each balancing loss. */
static void plot_losses(plotter *p, const ml_table *m) {
    series task[4], aux[32];
    int nt = 0, na = 0;
    char names[16][128], t1[160], t2[160];
    int n_aux = aux_names(m, names, 16);
    int have_task = ml_table_col(m, "task_loss") >= 0;
    nt = add_series(task, nt, 4, m, have_task ? "task_loss" : "loss", have_task ? "task loss (training)" : "loss (training)",
                    1, 1);
    nt = add_series(task, nt, 4, m, "val_loss", "task loss (validation)", 2, 2);
    if (have_task && n_aux) nt = add_series(task, nt, 4, m, "loss", "total loss (training)", 3, 3);
    for (int i = 0; i < n_aux; i++) {
        snprintf(t1, sizeof t1, "%.120s (training)", names[i]);
        snprintf(t2, sizeof t2, "%.120s (validation)", names[i]);
        char val[160];
        snprintf(val, sizeof val, "val_%.120s", names[i]);
        na = add_series(aux, na, 32, m, names[i], t1, i + 1, 1);
        na = add_series(aux, na, 32, m, val, t2, i + 1, 2);
    }
    if (!nt && !na) {
        fprintf(stderr, WHO ": %s: metrics.csv has no loss column with values (task_loss, loss, val_loss): loss.png "
                        "not drawn\n", p->title);
        p->failed++;
        return;
    }
    int all_n = nt + na, *map = ml_calloc((size_t)m->ncols + 1, sizeof *map);
    if (!map) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        p->failed++;
        return;
    }
    series all[36];
    memcpy(all, task, (size_t)nt * sizeof *all);
    memcpy(all + nt, aux, (size_t)na * sizeof *all);
    int xcol = ml_table_col(m, "epoch");
    ml_strbuf dat = {0}, g = {0};
    dat_table(&dat, m, xcol, "epoch", all, all_n, map);
    gp_head(&g, p, "loss", "Losses per epoch: the task loss and each balancing loss, training and validation.");
    double x0, x1;
    col_range(m, xcol, &x0, &x1);
    gp_epoch_tics(&g, x0, x1);
    if (nt && na) {
        ml_strbuf_puts(&g, "set key below noopaque nobox font ',10' samplen 2 height 1\n");
        ml_strbuf_puts(&g, "set multiplot layout 1,2 title ");
        gp_str(&g, p->title);
        ml_strbuf_puts(&g, "\n");
    }
    const char *xl = xcol >= 0 ? "epoch" : "row";
    if (nt) gp_panel(&g, "loss", nt && na ? "task loss" : p->title, xl, "loss", m, task, nt, map, 1);
    if (na) gp_panel(&g, "loss", "balancing losses (values before their coefficients)", xl, "loss", m, aux, na, map, 1);
    if (nt && na) ml_strbuf_puts(&g, "unset multiplot\n");
    pl_draw(p, "loss", &dat, &g);
    ml_strbuf_free(&dat);
    ml_strbuf_free(&g);
    free(map);
}

/* The MoE layers a table has columns for: 1..L where moe<L>_<any of names> exists. */
static int moe_layers(const ml_table *t, const char *prefix) {
    int max = 0;
    size_t pl = strlen(prefix);
    for (int c = 0; c < t->ncols; c++) {
        const char *s = t->cols[c];
        if (strncmp(s, prefix, pl)) continue;
        int L, k = 0;
        if (sscanf(s + pl, "moe%d_%n", &L, &k) == 1 && k > 0 && L > max && L < 1000) max = L;
    }
    return max;
}

/* routing.png: active experts, normalised marginal entropy and mutual information per layer. */
static void plot_routing(plotter *p, const ml_table *m) {
    int layers = moe_layers(m, "");
    if (!layers) return; /* a model without MoE layers: nothing to show */
    series act[64], ent[64], mi[64];
    int na = 0, ne = 0, nm = 0;
    for (int L = 1; L <= layers && L <= 16; L++) {
        char col[64], title[160];
#define ADD(arr, n, fmt, tfmt, dash)                                  \
    snprintf(col, sizeof col, fmt, L);                                \
    snprintf(title, sizeof title, tfmt, L);                           \
    n = add_series(arr, n, 64, m, col, title, L, dash)
        ADD(act, na, "moe%d_active", "layer %d active (training)", 1);
        ADD(act, na, "val_moe%d_active", "layer %d active (validation)", 2);
        ADD(act, na, "moe%d_experts", "layer %d experts", 3);
        ADD(ent, ne, "moe%d_entropy_norm", "layer %d (training)", 1);
        ADD(ent, ne, "val_moe%d_entropy_norm", "layer %d (validation)", 2);
        ADD(mi, nm, "moe%d_mutual_info", "layer %d (training)", 1);
        ADD(mi, nm, "val_moe%d_mutual_info", "layer %d (validation)", 2);
#undef ADD
    }
    if (!na && !ne && !nm) return;
    series all[192];
    memcpy(all, act, (size_t)na * sizeof *all);
    memcpy(all + na, ent, (size_t)ne * sizeof *all);
    memcpy(all + na + ne, mi, (size_t)nm * sizeof *all);
    int *map = ml_calloc((size_t)m->ncols + 1, sizeof *map);
    if (!map) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        p->failed++;
        return;
    }
    int xcol = ml_table_col(m, "epoch");
    const char *xl = xcol >= 0 ? "epoch" : "row";
    ml_strbuf dat = {0}, g = {0};
    dat_table(&dat, m, xcol, "epoch", all, na + ne + nm, map);
    gp_head(&g, p, "routing",
            "Routing health per MoE layer and epoch (docs/metrics.md): active experts, H(u)/log N, I(x; expert).");
    double x0, x1;
    col_range(m, xcol, &x0, &x1);
    gp_epoch_tics(&g, x0, x1);
    ml_strbuf_printf(&g, "set multiplot layout 1,%d title ", (na > 0) + (ne > 0) + (nm > 0));
    gp_str(&g, p->title);
    ml_strbuf_puts(&g, "\nset key below noopaque nobox font ',10' samplen 2 height 1\n");
    if (na) {
        ml_strbuf_puts(&g, "set yrange [0:*]\n");
        gp_panel(&g, "routing", "active experts", xl, "experts", m, act, na, map, 1);
    }
    if (ne) {
        ml_strbuf_puts(&g, "set yrange [0:1.05]\n");
        gp_panel(&g, "routing", "balance: normalised entropy H(u)/log N", xl, "H(u) / log N", m, ent, ne, map, 1);
    }
    if (nm) {
        ml_strbuf_puts(&g, "set yrange [0:*]\n");
        gp_panel(&g, "routing", "specialisation: I(x; expert)", xl, "nats", m, mi, nm, map, 1);
    }
    ml_strbuf_puts(&g, "unset multiplot\n");
    pl_draw(p, "routing", &dat, &g);
    ml_strbuf_free(&dat);
    ml_strbuf_free(&g);
    free(map);
}

/* steps.png: from steps.csv, the losses and the active experts over steps. */
static void plot_steps(plotter *p, const ml_table *s) {
    series loss[4], aux[16], act[32];
    int nl = 0, na = 0, ne = 0;
    char names[16][128];
    nl = add_series(loss, nl, 4, s, "task_loss", "task loss", 1, 1);
    nl = add_series(loss, nl, 4, s, "loss", "total loss", 3, 3);
    int n_aux = aux_names(s, names, 16);
    for (int i = 0; i < n_aux; i++) na = add_series(aux, na, 16, s, names[i], names[i], i + 1, 1);
    int layers = moe_layers(s, "");
    for (int L = 1; L <= layers && L <= 16; L++) {
        char col[64], title[96];
        snprintf(col, sizeof col, "moe%d_active", L);
        snprintf(title, sizeof title, "layer %d active", L);
        ne = add_series(act, ne, 32, s, col, title, L, 1);
        snprintf(col, sizeof col, "moe%d_experts", L);
        snprintf(title, sizeof title, "layer %d experts", L);
        ne = add_series(act, ne, 32, s, col, title, L, 3);
    }
    int panels = (nl > 0) + (na > 0) + (ne > 0);
    if (!panels) {
        fprintf(stderr, WHO ": %s: steps.csv has no loss or expert column with values: steps.png not drawn\n", p->title);
        p->failed++;
        return;
    }
    series all[52];
    memcpy(all, loss, (size_t)nl * sizeof *all);
    memcpy(all + nl, aux, (size_t)na * sizeof *all);
    memcpy(all + nl + na, act, (size_t)ne * sizeof *all);
    int *map = ml_calloc((size_t)s->ncols + 1, sizeof *map);
    if (!map) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        p->failed++;
        return;
    }
    int xcol = ml_table_col(s, "step");
    ml_strbuf dat = {0}, g = {0};
    dat_table(&dat, s, xcol, "step", all, nl + na + ne, map);
    gp_head(&g, p, "steps", "Per logged step (steps.csv): losses, balancing losses, active experts.");
    ml_strbuf_printf(&g, "set multiplot layout 1,%d title ", panels);
    gp_str(&g, p->title);
    ml_strbuf_puts(&g, "\nset key below noopaque nobox font ',10' samplen 2 height 1\n");
    const char *xl = xcol >= 0 ? "step" : "row";
    if (nl) gp_panel(&g, "steps", "loss", xl, "loss", s, loss, nl, map, 0);
    if (na) gp_panel(&g, "steps", "balancing losses", xl, "loss", s, aux, na, map, 0);
    if (ne) {
        ml_strbuf_puts(&g, "set yrange [0:*]\n");
        gp_panel(&g, "steps", "experts", xl, "experts", s, act, ne, map, 0);
    }
    ml_strbuf_puts(&g, "unset multiplot\n");
    pl_draw(p, "steps", &dat, &g);
    ml_strbuf_free(&dat);
    ml_strbuf_free(&g);
    free(map);
}

/* ------------------------------------------------------------------ heatmaps */

typedef struct event {
    char kind;        /* 'g' experts added, 'c' collapse, 'i' intervention */
    int layer;        /* 1.., 0 when the event names none */
    double epoch, step, images;
    char text[48];
} event;

/* The growth, collapse and intervention events of run_dir/events.jsonl (none when the file
   is missing; a line that does not parse is skipped). Owned array, *n events. */
static event *read_events(const char *run_dir, int *n) {
    *n = 0;
    char path[ML_PATH_MAX + 32], *text = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/events.jsonl", run_dir);
    if (access(path, F_OK) != 0 || ml_read_file(path, (size_t)1 << 28, &text, &len)) {
        ml_error_clear();
        return NULL;
    }
    event *ev = NULL;
    int cap = 0;
    for (char *line = text; line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        size_t k = nl ? (size_t)(nl - line) : (size_t)(text + len - line);
        ml_jv *v = k ? ml_jv_parse(line, k) : NULL;
        line += k + 1;
        const ml_jv *kind = v ? ml_jv_get(v, "kind") : NULL;
        char c = 0;
        if (kind && kind->type == ML_JV_STR)
            c = !strcmp(kind->str, "experts_added") ? 'g'
                : !strcmp(kind->str, "collapse")   ? 'c'
                : !strcmp(kind->str, "intervention") ? 'i'
                                                     : 0;
        if (!c) {
            ml_jv_free(v);
            continue;
        }
        if (*n == cap) {
            cap = cap ? 2 * cap : 32;
            event *e = realloc(ev, (size_t)cap * sizeof *e);
            if (!e) {
                ml_jv_free(v);
                break;
            }
            ev = e;
        }
        event *e = &ev[(*n)++];
        memset(e, 0, sizeof *e);
        e->kind = c;
        const ml_jv *x;
#define NUM(key) ((x = ml_jv_get(v, key)) && x->type == ML_JV_NUM ? x->num : NAN)
        e->epoch = NUM("epoch");
        e->step = NUM("step");
        e->images = NUM("images_seen");
        double layer = NUM("layer"), added = NUM("added"), to = NUM("to");
#undef NUM
        e->layer = isfinite(layer) ? (int)layer : 0;
        if (c == 'g' && isfinite(added) && isfinite(to)) snprintf(e->text, sizeof e->text, "+%g → %g", added, to);
        else snprintf(e->text, sizeof e->text, "%s", c == 'g' ? "experts added" : c == 'c' ? "collapse" : "intervention");
        ml_jv_free(v);
    }
    free(text);
    return ev;
}

/*
 * Where an event goes on an epoch axis whose cells are centred on the epochs: growth at
 * the point of the epoch its images_seen falls in (the boundary between epochs e and e+1
 * is e + 0.5), collapse on the epoch it was seen in, an intervention after it.
 */
static double event_epoch_x(const event *e, const ml_table *m) {
    if (e->kind == 'c') return e->epoch;
    if (e->kind == 'i') return e->epoch + 0.5;
    int ce = ml_table_col(m, "epoch"), ci = ml_table_col(m, "images_seen");
    if (ce >= 0 && ci >= 0 && isfinite(e->images)) {
        double prev = 0;
        for (int r = 0; r < m->nrows; r++) {
            double ep = ml_table_num(m, r, ce), im = ml_table_num(m, r, ci);
            if (!isfinite(ep) || !isfinite(im)) continue;
            if (e->images <= im && im > prev) return ep - 0.5 + (e->images - prev) / (im - prev);
            prev = im;
        }
    }
    return e->epoch - 0.5;
}

/*
 * Draws a heatmap: values (nx, ne) over x positions xs (evenly spaced) and experts 0..ne-1,
 * NaN cells blank, with events as vertical lines.
 */
static void draw_heatmap(plotter *p, const char *name, const char *title, const char *xlabel, const double *xs, int nx,
                         int ne, const double *val, const double *ev_x, const event *ev, int n_ev) {
    int epochs = !strcmp(xlabel, "epoch");
    ml_strbuf dat = {0}, g = {0};
    ml_strbuf_printf(&dat, "# %s\texpert\tutilisation (NaN: the expert did not exist yet)\n", xlabel);
    for (int i = 0; i < nx; i++) {
        for (int k = 0; k < ne; k++) {
            dat_num(&dat, xs[i]);
            ml_strbuf_printf(&dat, "\t%d\t", k);
            dat_num(&dat, val[(size_t)i * ne + k]);
            ml_strbuf_puts(&dat, "\n");
        }
        ml_strbuf_puts(&dat, "\n");
    }
    double dx = nx > 1 ? (xs[nx - 1] - xs[0]) / (nx - 1) : 1, x0 = xs[0] - dx / 2, x1 = xs[nx - 1] + dx / 2;
    for (int i = 0; i < n_ev; i++) { /* an event at the very end still gets room for its label */
        if (ev_x[i] - 0.02 * (x1 - x0) < x0) x0 = ev_x[i] - 0.02 * (x1 - x0);
        if (ev_x[i] + 0.02 * (x1 - x0) > x1) x1 = ev_x[i] + 0.02 * (x1 - x0);
    }
    gp_head(&g, p, name,
            "Expert utilisation (share of the layer's dispatched slots) over time; blank cells: the expert did "
            "not exist yet. Dashed lines: experts added (green), collapse (red), intervention (orange).");
    ml_strbuf_puts(&g, "set title ");
    gp_str(&g, title);
    ml_strbuf_puts(&g, "\nset xlabel ");
    gp_str(&g, xlabel);
    ml_strbuf_printf(&g,
                     "\nset ylabel 'expert'\nset cblabel 'utilisation'\nunset key\nunset grid\n"
                     "set palette defined (0 '#440154', 0.25 '#3b528b', 0.5 '#21908d', 0.75 '#5dc963', 1 '#fde725')\n"
                     "set cbrange [0:*]\n"
                     "set xrange [%.9g:%.9g]\nset yrange [-0.5:%d.5]\n%s"
                     "set object 1 rectangle from graph 0,0 to graph 1,1 behind fc rgb '#f0f0f0' fs solid noborder\n"
                     "set style textbox opaque fc rgb 'white' noborder margins 1,1\n",
                     x0, x1, ne - 1, ne <= 24 ? "set ytics 1\n" : "");
    if (epochs) gp_epoch_tics(&g, xs[0], xs[nx - 1]);
    for (int i = 0; i < n_ev; i++) {
        const char *color = ev[i].kind == 'g' ? "#2ca02c" : ev[i].kind == 'c' ? "#d62728" : "#ff7f0e";
        ml_strbuf_printf(&g, "set arrow from %.9g, graph 0 to %.9g, graph 0.8 nohead front lc rgb '%s' dt 2 lw 2\n", ev_x[i],
                         ev_x[i], color);
        ml_strbuf_puts(&g, "set label ");
        gp_str(&g, ev[i].text);
        ml_strbuf_printf(&g, " at %.9g, graph 0.98 rotate by 90 right front boxed tc rgb '%s' font ',9'\n", ev_x[i],
                         color);
    }
    /* `with image` needs a 2 x 2 grid at least; boxes draw any grid */
    if (nx >= 2 && ne >= 2)
        ml_strbuf_printf(&g, "plot '%s.dat' using 1:2:3 with image\n", name);
    else
        ml_strbuf_printf(&g, "plot '%s.dat' using 1:2:(%.9g):(0.5):3 with boxxyerror fs solid 1.0 noborder lc palette\n",
                         name, dx / 2);
    pl_draw(p, name, &dat, &g);
    ml_strbuf_free(&dat);
    ml_strbuf_free(&g);
}

/* heatmap_moe<L>.png: expert x epoch from routing.csv. */
static void plot_heatmap_epochs(plotter *p, const ml_table *r, int L, const ml_table *m, const event *ev, int n_ev) {
    int ce = ml_table_col(r, "epoch"), cl = ml_table_col(r, "layer"), cx = ml_table_col(r, "expert"),
        cu = ml_table_col(r, "utilisation");
    double e0 = INFINITY, e1 = -INFINITY;
    int ne = 0;
    for (int i = 0; i < r->nrows; i++) {
        double e = ml_table_num(r, i, ce), k = ml_table_num(r, i, cx);
        if (ml_table_num(r, i, cl) != L || !isfinite(e) || !(k >= 0 && k < MAX_EXPERTS)) continue;
        if (e < e0) e0 = e;
        if (e > e1) e1 = e;
        if ((int)k + 1 > ne) ne = (int)k + 1;
    }
    if (!ne || e1 - e0 > 1e6) return;
    int nx = (int)(e1 - e0) + 1;
    double *xs = ml_calloc((size_t)nx, sizeof *xs), *val = ml_calloc((size_t)nx * ne, sizeof *val);
    double *ex = ml_calloc((size_t)n_ev + 1, sizeof *ex);
    event *mine = ml_calloc((size_t)n_ev + 1, sizeof *mine);
    if (xs && val && ex && mine) {
        for (int i = 0; i < nx; i++) xs[i] = e0 + i;
        for (size_t i = 0; i < (size_t)nx * ne; i++) val[i] = NAN;
        for (int i = 0; i < r->nrows; i++) {
            double e = ml_table_num(r, i, ce), k = ml_table_num(r, i, cx);
            if (ml_table_num(r, i, cl) != L || !isfinite(e) || !(k >= 0 && k < MAX_EXPERTS)) continue;
            val[(size_t)(e - e0) * ne + (size_t)k] = ml_table_num(r, i, cu);
        }
        int n = 0;
        for (int i = 0; i < n_ev; i++)
            if (ev[i].layer == 0 || ev[i].layer == L) {
                mine[n] = ev[i];
                ex[n++] = event_epoch_x(&ev[i], m);
            }
        char name[64], title[300];
        snprintf(name, sizeof name, "heatmap_moe%d", L);
        snprintf(title, sizeof title, "%.200s: layer %d expert utilisation per epoch (routing.csv)", p->title, L);
        draw_heatmap(p, name, title, "epoch", xs, nx, ne, val, ex, mine, n);
    }
    free(xs);
    free(val);
    free(ex);
    free(mine);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* heatmap_steps_moe<L>.png: expert x step from routing_steps.csv, averaged into at most
   MAX_BINS evenly spaced columns (one per logged step when they are that few and even). */
static void plot_heatmap_steps(plotter *p, const ml_table *r, int L, const event *ev, int n_ev) {
    int cs = ml_table_col(r, "step"), cl = ml_table_col(r, "layer"), cx = ml_table_col(r, "expert"),
        cu = ml_table_col(r, "utilisation");
    int ne = 0, ns = 0;
    double *steps = ml_calloc((size_t)r->nrows + 1, sizeof *steps);
    if (!steps) return;
    for (int i = 0; i < r->nrows; i++) {
        double s = ml_table_num(r, i, cs), k = ml_table_num(r, i, cx);
        if (ml_table_num(r, i, cl) != L || !isfinite(s) || !(k >= 0 && k < MAX_EXPERTS)) continue;
        steps[ns++] = s;
        if ((int)k + 1 > ne) ne = (int)k + 1;
    }
    qsort(steps, (size_t)ns, sizeof *steps, cmp_double);
    int distinct = 0;
    for (int i = 0; i < ns; i++)
        if (!i || steps[i] != steps[i - 1]) steps[distinct++] = steps[i];
    if (!ne || !distinct) {
        free(steps);
        return;
    }
    int nx = distinct < MAX_BINS ? distinct : MAX_BINS;
    double s0 = steps[0], s1 = steps[distinct - 1], w = nx > 1 ? (s1 - s0) / (nx - 1) : 1;
    if (w <= 0) w = 1;
    double *xs = ml_calloc((size_t)nx, sizeof *xs), *sum = ml_calloc((size_t)nx * ne, sizeof *sum);
    int *cnt = ml_calloc((size_t)nx * ne, sizeof *cnt);
    double *ex = ml_calloc((size_t)n_ev + 1, sizeof *ex);
    event *mine = ml_calloc((size_t)n_ev + 1, sizeof *mine);
    if (xs && sum && cnt && ex && mine) {
        for (int i = 0; i < nx; i++) xs[i] = s0 + i * w;
        for (int i = 0; i < r->nrows; i++) {
            double s = ml_table_num(r, i, cs), k = ml_table_num(r, i, cx), u = ml_table_num(r, i, cu);
            if (ml_table_num(r, i, cl) != L || !isfinite(s) || !(k >= 0 && k < MAX_EXPERTS) || !isfinite(u)) continue;
            long b = lround((s - s0) / w);
            if (b < 0) b = 0;
            if (b >= nx) b = nx - 1;
            sum[(size_t)b * ne + (size_t)k] += u;
            cnt[(size_t)b * ne + (size_t)k]++;
        }
        for (size_t i = 0; i < (size_t)nx * ne; i++) sum[i] = cnt[i] ? sum[i] / cnt[i] : NAN;
        int n = 0;
        for (int i = 0; i < n_ev; i++)
            if ((ev[i].layer == 0 || ev[i].layer == L) && isfinite(ev[i].step)) {
                mine[n] = ev[i];
                ex[n++] = ev[i].step;
            }
        char name[64], title[300];
        snprintf(name, sizeof name, "heatmap_steps_moe%d", L);
        snprintf(title, sizeof title, "%.200s: layer %d expert utilisation per step (routing_steps.csv%s)", p->title, L,
                 distinct > nx ? ", averaged into bins" : "");
        draw_heatmap(p, name, title, "step", xs, nx, ne, sum, ex, mine, n);
    }
    free(steps);
    free(xs);
    free(sum);
    free(cnt);
    free(ex);
    free(mine);
}

/* The layers a routing table has rows for (1..max). */
static int routing_layers(const ml_table *r) {
    int cl = ml_table_col(r, "layer"), max = 0;
    for (int i = 0; cl >= 0 && i < r->nrows; i++) {
        double l = ml_table_num(r, i, cl);
        if (l >= 1 && l < 1000 && (int)l > max) max = (int)l;
    }
    return max;
}

/* A routing table (routing.csv or routing_steps.csv) if the run has one and it has the
   columns a heatmap needs; NULL (with a line on stderr when it is unreadable) otherwise. */
static ml_table *load_routing(plotter *p, const char *run_dir, const char *file, const char *xcol) {
    char path[ML_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", run_dir, file);
    if (access(path, F_OK) != 0) return NULL;
    ml_table *t = ml_table_load(path);
    if (!t) {
        fprintf(stderr, WHO ": %s (its heatmaps not drawn)\n", ml_error());
        p->failed++;
        return NULL;
    }
    const char *need[] = {xcol, "layer", "expert", "utilisation"};
    for (int i = 0; i < 4; i++)
        if (ml_table_col(t, need[i]) < 0) {
            fprintf(stderr, WHO ": %s: no column '%s' (its heatmaps not drawn)\n", path, need[i]);
            p->failed++;
            ml_table_free(t);
            return NULL;
        }
    return t;
}

int ml_plot_run(const char *gnuplot, const char *run_dir, const ml_plot_opts *o) {
    char path[ML_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.csv", run_dir);
    if (access(path, F_OK) != 0)
        return ml_errorf("%s: no such file (%s is not a run directory, or its run has not finished an epoch)", path,
                         run_dir),
               -1;
    ml_table *m = ml_table_load(path);
    if (!m) return -1;
    if (m->nrows == 0) {
        ml_table_free(m);
        return ml_errorf("%s: no rows yet (the run has not finished an epoch): nothing to plot", path), -1;
    }
    plotter p;
    if (pl_open(&p, gnuplot, run_dir, o)) {
        ml_table_free(m);
        return -1;
    }
    plot_losses(&p, m);
    plot_routing(&p, m);
    int n_ev = 0;
    event *ev = read_events(run_dir, &n_ev);
    ml_table *r = load_routing(&p, run_dir, "routing.csv", "epoch");
    for (int L = 1; r && L <= routing_layers(r); L++) plot_heatmap_epochs(&p, r, L, m, ev, n_ev);
    ml_table_free(r);
    r = load_routing(&p, run_dir, "routing_steps.csv", "step");
    for (int L = 1; r && L <= routing_layers(r); L++) plot_heatmap_steps(&p, r, L, ev, n_ev);
    ml_table_free(r);
    snprintf(path, sizeof path, "%s/steps.csv", run_dir);
    if (access(path, F_OK) == 0) {
        ml_table *s = ml_table_load(path);
        if (!s) {
            fprintf(stderr, WHO ": %s (steps.png not drawn)\n", ml_error());
            p.failed++;
        } else if (s->nrows) {
            plot_steps(&p, s);
        }
        ml_table_free(s);
    }
    free(ev);
    ml_table_free(m);
    return p.failed;
}

/* ------------------------------------------------------------------ study plots */

/*
 * A group as a legend or an axis shows it, cut to n characters: "key=value ..." (keys 1)
 * or its values alone, "value, value" (keys 0), leaving out keys its runs do not have
 * (a router option of another router); "all runs" when no key tells groups apart.
 */
static void group_text(char *out, size_t n, const ml_runset *set, int g, int keys) {
    ml_strbuf b = {0};
    for (int k = 0; k < set->n_keys; k++) {
        const char *v = set->group[g].val[k];
        if (!strcmp(v, "(unset)")) continue;
        if (b.len) ml_strbuf_puts(&b, keys ? " " : ", ");
        if (keys) ml_strbuf_printf(&b, "%s=", set->keys[k]);
        ml_strbuf_puts(&b, v);
    }
    const char *t = b.buf && b.len ? b.buf : set->n_keys ? "(defaults)" : "all runs";
    if (strlen(t) < n) snprintf(out, n, "%s", t);
    else snprintf(out, n, "%.*s...", (int)n - 4, t);
    ml_strbuf_free(&b);
}

/* curve_<metric>.png: per group, the mean of metric over epochs with its 95% CI band. */
static void plot_curve(plotter *p, const ml_runset *set, const char *metric) {
    ml_strbuf dat = {0}, g = {0};
    char name[200], safe[160], title[400];
    safe_name(safe, sizeof safe, metric);
    snprintf(name, sizeof name, "curve_%s", safe);
    double *x = ml_calloc((size_t)set->n_runs + 1, sizeof *x);
    int *blocks = ml_calloc((size_t)set->n_groups + 1, sizeof *blocks), n_blocks = 0, all_pos = 1;
    double e_lo = INFINITY, e_hi = -INFINITY;
    if (!x || !blocks) goto out;
    for (int gi = 0; gi < set->n_groups; gi++) {
        const ml_run_group *G = &set->group[gi];
        /* the epochs any run of the group has a value at */
        double e0 = INFINITY, e1 = -INFINITY;
        for (int i = 0; i < G->n_runs; i++) {
            const ml_table *t = set->run[G->run[i]].metrics;
            int ce = ml_table_col(t, "epoch"), cm = ml_table_col(t, metric);
            for (int r = 0; cm >= 0 && ce >= 0 && r < t->nrows; r++)
                if (isfinite(ml_table_num(t, r, cm)) && isfinite(ml_table_num(t, r, ce))) {
                    double e = ml_table_num(t, r, ce);
                    if (e < e0) e0 = e;
                    if (e > e1) e1 = e;
                }
        }
        if (e0 > e1 || e1 - e0 > 1e6) continue;
        if (e0 < e_lo) e_lo = e0;
        if (e1 > e_hi) e_hi = e1;
        ml_strbuf_printf(&dat, "%s# group %d: %s\n# epoch\tmean\tci_lo\tci_hi\tn\n", n_blocks ? "\n\n" : "", gi + 1,
                         G->label);
        for (double e = e0; e <= e1; e++) {
            for (int i = 0; i < G->n_runs; i++) {
                const ml_table *t = set->run[G->run[i]].metrics;
                int ce = ml_table_col(t, "epoch"), cm = ml_table_col(t, metric);
                x[i] = NAN;
                for (int r = 0; cm >= 0 && ce >= 0 && r < t->nrows; r++)
                    if (ml_table_num(t, r, ce) == e) x[i] = ml_table_num(t, r, cm);
            }
            ml_stats_desc d;
            ml_stats_describe(x, G->n_runs, ML_SUMMARY_LEVEL, &d);
            if (!d.n) continue;
            if (!(d.mean > 0) || (d.n > 1 && !(d.ci_lo > 0))) all_pos = 0;
            ml_strbuf_printf(&dat, "%g\t", e);
            dat_num(&dat, d.mean);
            ml_strbuf_puts(&dat, "\t");
            dat_num(&dat, d.n > 1 ? d.ci_lo : d.mean); /* one run: a band of width 0 */
            ml_strbuf_puts(&dat, "\t");
            dat_num(&dat, d.n > 1 ? d.ci_hi : d.mean);
            ml_strbuf_printf(&dat, "\t%d\n", d.n);
        }
        blocks[n_blocks++] = gi;
    }
    if (!n_blocks) {
        fprintf(stderr, WHO ": %s: no run has values of '%s' by epoch: %s.png not drawn\n", p->title, metric, name);
        p->failed++;
        goto out;
    }
    /* log scale when the means span a factor above 30 and everything is positive */
    double lo = INFINITY, hi = -INFINITY;
    for (int gi = 0; gi < set->n_groups; gi++)
        for (int i = 0; i < set->group[gi].n_runs; i++) {
            const ml_table *t = set->run[set->group[gi].run[i]].metrics;
            int cm = ml_table_col(t, metric);
            for (int r = 0; cm >= 0 && r < t->nrows; r++) {
                double v = ml_table_num(t, r, cm);
                if (isfinite(v) && v < lo) lo = v;
                if (isfinite(v) && v > hi) hi = v;
            }
        }
    int logy = all_pos && lo > 0 && hi / lo > 30;
    gp_head(&g, p, name,
            "Mean over the runs of each group (runs that differ only in the seed) per epoch, with the 95% confidence "
            "interval of the mean (Student's t) as a band.");
    snprintf(title, sizeof title, "%s: %s per epoch, mean and 95%% CI over seeds", p->title, metric);
    ml_strbuf_puts(&g, "set title ");
    gp_str(&g, title);
    ml_strbuf_puts(&g, "\nset xlabel 'epoch'\nset ylabel ");
    gp_str(&g, metric);
    ml_strbuf_printf(&g, "\n%s\nset style fill transparent solid 0.2 noborder\n"
                         "set key below noopaque nobox font ',10' samplen 2 height 1\n", logy ? "set logscale y" : "");
    gp_epoch_tics(&g, e_lo, e_hi);
    ml_strbuf_puts(&g, "plot ");
    for (int b = 0; b < n_blocks; b++) {
        const ml_run_group *G = &set->group[blocks[b]];
        char label[120], legend[160];
        group_text(label, sizeof label, set, blocks[b], 1);
        snprintf(legend, sizeof legend, "%s (%d run%s)", label, G->n_runs, G->n_runs == 1 ? "" : "s");
        ml_strbuf_printf(&g,
                         "%s'%s.dat' index %d using 1:3:4 with filledcurves lt %d notitle, \\\n"
                         "     '%s.dat' index %d using 1:2 with linespoints lt %d lw 2 pt 7 ps 0.6 title ",
                         b ? ", \\\n     " : "", name, b, b % 8 + 1, name, b, b % 8 + 1);
        gp_str(&g, legend);
    }
    ml_strbuf_puts(&g, "\n");
    pl_draw(p, name, &dat, &g);
out:
    free(x);
    free(blocks);
    ml_strbuf_free(&dat);
    ml_strbuf_free(&g);
}

/* compare_<metric>_<at>.png: per group, metric at the chosen epoch, mean and 95% CI. */
static void plot_compare(plotter *p, const ml_runset *set, const char *metric, const ml_at *at) {
    const char *cols[] = {metric};
    ml_summary *s = ml_summary_new(set, cols, 1, at);
    if (!s) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        p->failed++;
        return;
    }
    char name[256], safe[160], when[64], title[600], desc[256];
    safe_name(safe, sizeof safe, metric);
    if (at->kind == ML_AT_EPOCH) snprintf(when, sizeof when, "epoch%ld", at->epoch);
    else snprintf(when, sizeof when, "%s", at->kind == ML_AT_BEST ? "best" : "last");
    snprintf(name, sizeof name, "compare_%s_%s", safe, when);
    ml_strbuf dat = {0}, g = {0};
    ml_strbuf_puts(&dat, "# group\tmean\tci_lo\tci_hi\tn\tlabel\n");
    int drawn = 0, longest = 0;
    for (int gi = 0; gi < set->n_groups; gi++) {
        const ml_stats_desc *d = &s->cell[gi];
        char label[100];
        group_text(label, sizeof label, set, gi, 0);
        for (char *c = label; *c; c++)
            if (*c == '"') *c = '\'';
        if ((int)strlen(label) > longest) longest = (int)strlen(label);
        ml_strbuf_printf(&dat, "%d\t", gi);
        dat_num(&dat, d->mean);
        ml_strbuf_puts(&dat, "\t");
        dat_num(&dat, d->n > 1 ? d->ci_lo : d->mean);
        ml_strbuf_puts(&dat, "\t");
        dat_num(&dat, d->n > 1 ? d->ci_hi : d->mean);
        ml_strbuf_printf(&dat, "\t%d\t\"%s\"\n", d->n, label);
        drawn += d->n > 0;
    }
    ml_summary_notes(s, WHO, stderr);
    if (!drawn) {
        fprintf(stderr, WHO ": %s: no run has a value of '%s' at %s: %s.png not drawn\n", p->title, metric,
                ml_at_describe(at, desc, sizeof desc), name);
        p->failed++;
        goto out;
    }
    gp_head(&g, p, name,
            "Per group (runs that differ only in the seed): the mean at the chosen epoch and the 95% confidence "
            "interval of the mean (Student's t); groups of one run show the value without a bar.");
    snprintf(title, sizeof title, "%s: %s at %s, mean and 95%% CI over seeds", p->title, metric,
             ml_at_describe(at, desc, sizeof desc));
    ml_strbuf_puts(&g, "set title ");
    gp_str(&g, title);
    ml_strbuf_puts(&g, "\nset ylabel ");
    gp_str(&g, metric);
    /* the axis names the keys, each tic gives a group's values */
    ml_strbuf xl = {0};
    for (int k = 0; k < set->n_keys; k++) ml_strbuf_printf(&xl, "%s%s", k ? ", " : "", set->keys[k]);
    /* vertical bars with horizontal tic labels when they fit (about 7 pixels a character);
       else the groups go down the y axis, each label on one line at the left (slanted
       labels of many long groups squeeze the plot to a strip) */
    int across = set->n_groups * (longest + 2) * 7 <= p->o->width * 8 / 10;
    if (across) {
        ml_strbuf_puts(&g, "\nset ylabel ");
        gp_str(&g, metric);
        ml_strbuf_puts(&g, "\nset xlabel ");
        gp_str(&g, xl.buf ? xl.buf : "group");
        ml_strbuf_printf(&g,
                         "\nset xtics nomirror\nunset key\nset xrange [-0.5:%d.5]\n"
                         "set offsets 0, 0, graph 0.1, graph 0.1\n"
                         "plot '%s.dat' using 1:2:3:4:xticlabels(6) with yerrorbars lt 1 lw 2 pt 7 ps 1.2, \\\n"
                         "     '%s.dat' using 1:2:(sprintf('n=%%d', $5)) with labels left offset 1.2,0 tc rgb '#555555'\n",
                         set->n_groups - 1, name, name);
    } else {
        ml_strbuf_puts(&g, "\nunset title\nset label 1 ");
        gp_str(&g, title); /* from the left edge: centred on the plot it would run off the right */
        ml_strbuf_puts(&g, " at screen 0.01, screen 0.97 left\nset xlabel ");
        gp_str(&g, metric);
        ml_strbuf_puts(&g, "\nset label 2 ");
        gp_str(&g, xl.buf ? xl.buf : "group"); /* what each tic label lists */
        ml_strbuf_printf(&g,
                         " at screen 0.01, screen 0.92 left font ',9' tc rgb '#555555'\nset tmargin 4"
                         "\nset ytics nomirror font ',9'\nset lmargin %d\nunset key\nset yrange [%d.5:-0.5]\n"
                         "set offsets graph 0.1, graph 0.1, 0, 0\nset grid xtics\n"
                         "plot '%s.dat' using 2:1:3:4:yticlabels(6) with xerrorbars lt 1 lw 2 pt 7 ps 1.0, \\\n"
                         "     '%s.dat' using 4:1:(sprintf(' n=%%d', $5)) with labels left tc rgb '#555555' font ',9'\n",
                         longest * 2 / 3 + 4, set->n_groups - 1, name, name); /* font 9: 2/3 of a default character */
    }
    ml_strbuf_free(&xl);
    pl_draw(p, name, &dat, &g);
out:
    ml_summary_free(s);
    ml_strbuf_free(&dat);
    ml_strbuf_free(&g);
}

int ml_plot_study(const char *gnuplot, const char *dir, const ml_plot_opts *o) {
    ml_runs_opts ro = {o->include_unfinished, WHO, stderr};
    ml_runset *set = ml_runs_find(&dir, 1, &ro);
    if (!set) return -1;
    int rc = 0;
    if (set->n_left_out)
        fprintf(stderr, WHO ": %s: left out %d unfinished run%s (--include-unfinished keeps them)\n", dir,
                set->n_left_out, set->n_left_out == 1 ? "" : "s");
    const char *metric = o->metric ? o->metric : "val_loss";
    int have = 0;
    for (int r = 0; r < set->n_runs && !have; r++) have = ml_table_col(set->run[r].metrics, metric) >= 0;
    if (!set->n_runs) rc = (ml_errorf("%s: no finished run to plot", dir), -1);
    else if (!have) rc = (ml_errorf("%s: '%s' is in no run's metrics.csv (choose one with --metric)", dir, metric), -1);
    else if (o->n_by && ml_runs_group(set, o->by, o->n_by)) rc = -1;
    if (rc) {
        ml_runs_free(set);
        return rc;
    }
    plotter p;
    if (pl_open(&p, gnuplot, dir, o)) {
        ml_runs_free(set);
        return -1;
    }
    plot_curve(&p, set, metric);
    plot_compare(&p, set, metric, &o->at);
    rc = p.failed;
    for (int r = 0; o->runs && r < set->n_runs; r++) {
        int f = ml_plot_run(gnuplot, set->run[r].dir, o);
        if (f < 0) fprintf(stderr, WHO ": %s\n", ml_error());
        rc += f < 0 ? 1 : f;
    }
    ml_runs_free(set);
    return rc;
}

/* ------------------------------------------------------------------ the command */

static int is_run_dir(const char *dir) {
    char p[ML_PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/sweep.yaml", dir);
    if (access(p, F_OK) == 0) return 0;
    static const char *const files[] = {"metrics.csv", "summary.json", "config.yaml"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        if (access(p, F_OK) == 0) return 1;
    }
    return 0;
}

static int usage_error(const char *msg, const char *arg) {
    fprintf(stderr, WHO ": ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, " (moelab plot --help)\n");
    return ML_EXIT_USAGE;
}

int ml_plot_main(int argc, char **argv) {
    ml_plot_opts o = {1000, 600, NULL, {0}, NULL, 0, 0, 0, stdout};
    const char *at = NULL, *best_by = NULL, *by = NULL, *size = NULL, *v;
    const char **dirs = ml_calloc((size_t)argc + 1, sizeof *dirs);
    char **byv = NULL;
    int n_dirs = 0, n_byv = 0, rc = ML_EXIT_USAGE;
    if (!dirs) return ML_EXIT_RUNTIME;
    for (int i = 0; i < argc; i++) {
        int missing = 0;
        if ((v = ml_runs_opt(argc, argv, &i, "--metric", &missing))) o.metric = v;
        else if ((v = ml_runs_opt(argc, argv, &i, "--at", &missing))) at = v;
        else if ((v = ml_runs_opt(argc, argv, &i, "--best-by", &missing))) best_by = v;
        else if ((v = ml_runs_opt(argc, argv, &i, "--by", &missing))) by = v;
        else if ((v = ml_runs_opt(argc, argv, &i, "--size", &missing))) size = v;
        else if (missing) {
            usage_error("%s needs a value", argv[i]);
            goto out;
        } else if (!strcmp(argv[i], "--runs")) o.runs = 1;
        else if (!strcmp(argv[i], "--include-unfinished")) o.include_unfinished = 1;
        else if (argv[i][0] == '-' && argv[i][1]) {
            usage_error("unknown option '%s'", argv[i]);
            goto out;
        } else dirs[n_dirs++] = argv[i];
    }
    if (!n_dirs) {
        fputs("usage: moelab plot RUN_OR_SWEEP_DIR... [--metric COL] [--at last|best|epoch=N] [--best-by COL[:max]]\n"
              "                   [--by KEY,...] [--size WxH] [--runs] [--include-unfinished]\n",
              stderr);
        goto out;
    }
    if (size) {
        char *x;
        long w = strtol(size, &x, 10), h = *x == 'x' ? strtol(x + 1, &x, 10) : 0;
        if (*x || w < 200 || h < 150 || w > 10000 || h > 10000) {
            usage_error("--size '%s': expected WxH in pixels, e.g. 1000x600 (200x150 to 10000x10000)", size);
            goto out;
        }
        o.width = (int)w;
        o.height = (int)h;
    }
    if (ml_at_parse(at, best_by, &o.at)) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        goto out;
    }
    if (by) {
        if (!(byv = ml_runs_split(by, &n_byv)) || !n_byv) {
            usage_error("--by '%s': expected KEY1,KEY2,...", by);
            goto out;
        }
        o.by = (const char *const *)byv;
        o.n_by = n_byv;
    }
    for (int i = 0; i < n_dirs; i++)
        if (!ml_is_dir(dirs[i])) {
            fprintf(stderr, WHO ": %s: %s\n", dirs[i], access(dirs[i], F_OK) ? strerror(errno) : "not a directory");
            goto out;
        }
    char gnuplot[ML_PATH_MAX];
    if (ml_plot_find_gnuplot(gnuplot, sizeof gnuplot)) {
        fprintf(stderr, WHO ": %s\n", ml_error());
        rc = ML_EXIT_RUNTIME;
        goto out;
    }
    int failed = 0;
    for (int i = 0; i < n_dirs; i++) {
        int f = is_run_dir(dirs[i]) ? ml_plot_run(gnuplot, dirs[i], &o) : ml_plot_study(gnuplot, dirs[i], &o);
        if (f < 0) fprintf(stderr, WHO ": %s\n", ml_error());
        failed += f < 0 ? 1 : f;
    }
    rc = failed ? ML_EXIT_RUNTIME : 0;
out:
    ml_runs_free_list(byv, n_byv);
    free(dirs);
    return rc;
}
