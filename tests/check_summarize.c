/* check_summarize.c — `moelab summarize`: Student's t quantiles against tables and closed
 * forms, mean/sd/interval against hand-computed values, and the command on a real sweep
 * made with `moelab sweep` (groups from the configs, --by, --at last/best/epoch=N, CSV and
 * JSON read back and checked against each run's metrics.csv, unfinished runs left out,
 * loose runs grouped like the sweep's, errors and exit statuses). */
#include <sys/stat.h>
#include <unistd.h>

#include "base/common.h"
#include "base/json.h"
#include "study/runs.h"
#include "study/stats.h"
#include "study/table.h"
#include "testutil.h"

#define SYNTH "tests/fixtures/run/synth.yaml"
#define MOELAB "%s/moelab"

static void assert_out(const char *needle) {
    ck_assert_msg(strstr(tu_out, needle) != NULL, "expected '%s' in:\n%s", needle, tu_out);
}

static void near(double got, double want, double rel, const char *what) {
    ck_assert_msg(fabs(got - want) <= rel * fabs(want) + 1e-300, "%s: got %.15g, expected %.15g", what, got, want);
}

/* ----------------------------------------------------------------- statistics */

/*
 * P(|T| <= t) for integer df by the finite series of Abramowitz & Stegun 26.7.3 (odd df)
 * and 26.7.4 (even df), with theta = atan(t / sqrt(df)): a formula independent of the
 * incomplete beta function the module uses.
 */
static double t_two_sided_series(double t, int df) {
    double th = atan(t / sqrt((double)df)), c2 = cos(th) * cos(th), term = 1, sum = 1;
    if (df % 2 == 0) {
        for (int k = 2; k <= df - 2; k += 2) {
            term *= c2 * (k - 1) / k;
            sum += term;
        }
        return sin(th) * sum;
    }
    if (df == 1) return 2 * th / M_PI;
    for (int k = 3; k <= df - 2; k += 2) {
        term *= c2 * (k - 1) / k;
        sum += term;
    }
    return 2 / M_PI * (th + sin(th) * cos(th) * sum);
}

START_TEST(t_quantiles_match_tables_and_closed_forms) {
    /* the textbook table (4 decimals) */
    const double df[] = {1, 2, 4, 9, 29};
    const double t975[] = {12.7062, 4.3027, 2.7764, 2.2622, 2.0452};
    for (int i = 0; i < 5; i++) {
        double t = ml_stats_t_quantile(0.975, df[i]);
        ck_assert_msg(fabs(t - t975[i]) < 5e-5, "t(0.975, %g) = %.6f, expected %.4f", df[i], t, t975[i]);
    }
    ck_assert_msg(fabs(ml_stats_t_quantile(0.975, 1e6) - 1.95996) < 1e-5, "large df");
    ck_assert_msg(fabs(ml_stats_t_quantile(0.975, 1e9) - 1.959963987) < 1e-8, "huge df (expansion)");
    ck_assert_msg(fabs(ml_stats_t_quantile(0.975, INFINITY) - 1.959963984540054) < 1e-12, "normal");
    ck_assert_msg(fabs(ml_stats_t_quantile(0.995, 1) - 63.6567) < 5e-5, "t(0.995, 1)");
    ck_assert_msg(fabs(ml_stats_t_quantile(0.9995, 3) - 12.9240) < 5e-5, "t(0.9995, 3)");
    /* closed forms: df 1 is Cauchy, tan(pi (p - 1/2)) = -1/tan(pi p) (written with the tail
       probability, which keeps its digits far out); df 2 is (2p - 1) / sqrt(2 p (1 - p)) */
    const double ps[] = {0.001, 0.05, 0.3, 0.5, 0.6, 0.9, 0.975, 0.999999};
    for (int i = 0; i < 8; i++) {
        double p = ps[i], cauchy = p == 0.5 ? 0 : p < 0.5 ? -1 / tan(M_PI * p) : 1 / tan(M_PI * (1 - p));
        near(ml_stats_t_quantile(p, 1), cauchy, 1e-11, "df 1");
        near(ml_stats_t_quantile(p, 2), (2 * p - 1) / sqrt(2 * p * (1 - p)), 1e-11, "df 2");
    }
    /* the CDF inverts the quantile; symmetry */
    const double dfs[] = {1, 1.5, 3, 7, 30, 120, 1e5};
    for (int j = 0; j < 7; j++)
        for (int i = 0; i < 8; i++) {
            double t = ml_stats_t_quantile(ps[i], dfs[j]);
            double back = ml_stats_t_cdf(t, dfs[j]);
            ck_assert_msg(fabs(back - ps[i]) <= 1e-12 + 1e-10 * ps[i], "cdf(q(%g, df %g)) = %.15g", ps[i], dfs[j], back);
            near(ml_stats_t_quantile(1 - ps[i], dfs[j]), -t, 1e-9, "symmetry");
        }
    /* every integer df to 60 at the usual levels, against the A&S series */
    const double levels[] = {0.8, 0.9, 0.95, 0.975, 0.99, 0.995, 0.9995};
    for (int nu = 1; nu <= 60; nu++)
        for (int i = 0; i < 7; i++) {
            double t = ml_stats_t_quantile(levels[i], nu);
            double p = (1 + t_two_sided_series(t, nu)) / 2;
            ck_assert_msg(fabs(p - levels[i]) < 1e-13, "df %d: F(%.15g) = %.17g by the series, expected %g", nu, t, p,
                          levels[i]);
        }
    /* the incomplete beta: I_0.4(2, 3) = 0.5248 exactly; I_x(a, 1) = x^a; I_x(1, 1) = x */
    near(ml_stats_betainc(2, 3, 0.4), 0.5248, 1e-13, "I_0.4(2,3)");
    near(ml_stats_betainc(3.5, 1, 0.7), pow(0.7, 3.5), 1e-13, "I_x(a,1)");
    near(ml_stats_betainc(1, 1, 0.123), 0.123, 1e-13, "I_x(1,1)");
    /* arguments outside the domain */
    ck_assert(isnan(ml_stats_t_quantile(0, 3)));
    ck_assert(isnan(ml_stats_t_quantile(1, 3)));
    ck_assert(isnan(ml_stats_t_quantile(0.5, 0)));
    ck_assert(ml_stats_t_quantile(0.5, 4) == 0);
}
END_TEST

START_TEST(describe_against_hand_values) {
    ml_stats_desc d;
    /* {1,2,3,4}: mean 2.5, sum of squares 5, sd sqrt(5/3) = 1.2909944487358056,
       half-width t(0.975, 3) sd / 2 = 3.182446305284263 * 1.2909944487358056 / 2 */
    ml_stats_describe((const double[]){1, 2, 3, 4}, 4, 0.95, &d);
    ck_assert_int_eq(d.n, 4);
    near(d.mean, 2.5, 1e-15, "mean");
    near(d.sd, 1.2909944487358056, 1e-14, "sd");
    near(d.ci_lo, 0.445739743239121, 1e-12, "ci_lo");
    near(d.ci_hi, 4.5542602567608785, 1e-12, "ci_hi");
    /* {0.5, 0.25, 2}: mean 11/12, sd 0.9464847243000457, t(0.975, 2) = 4.302652729749462 */
    ml_stats_describe((const double[]){0.5, NAN, 0.25, INFINITY, 2.0}, 5, 0.95, &d);
    ck_assert_int_eq(d.n, 3); /* NaN and inf are not counted */
    near(d.mean, 11.0 / 12, 1e-15, "mean");
    near(d.sd, 0.9464847243000457, 1e-14, "sd");
    near(d.ci_lo, -1.4345317305626915, 1e-12, "ci_lo");
    near(d.ci_hi, 3.2678650638960245, 1e-12, "ci_hi");
    /* one value: a mean, no spread, no interval */
    ml_stats_describe((const double[]){7}, 1, 0.95, &d);
    ck_assert_int_eq(d.n, 1);
    ck_assert(d.mean == 7 && isnan(d.sd) && isnan(d.ci_lo) && isnan(d.ci_hi));
    ml_stats_describe((const double[]){NAN}, 1, 0.95, &d);
    ck_assert_int_eq(d.n, 0);
    ck_assert(isnan(d.mean));
    /* constant data: sd exactly 0; a large offset does not cost digits */
    ml_stats_describe((const double[]){0.1, 0.1, 0.1}, 3, 0.95, &d);
    ck_assert(d.sd == 0 && d.ci_lo == d.mean && d.ci_hi == d.mean);
    ml_stats_describe((const double[]){1e9 + 1, 1e9 + 2, 1e9 + 3}, 3, 0.95, &d);
    near(d.sd, 1, 1e-12, "sd with offset");
}
END_TEST

/* --------------------------------------------------------------- the command */

static char g_res[600], g_sw[800]; /* results dir, the sweep */
static char g_sweep_out[1 << 16];   /* what moelab sweep printed */
static int g_sweep_rc = -1;

/* A 2 x 3 sweep (router.k = 1, 2; seeds 1, 2, 3; 2 epochs), made once for the suite (an
   unchecked fixture: it runs in the parent process, before the forked tests). */
static void make_sweep(void) {
    const char *dir = tu_tmpdir("sum");
    if (!dir) return;
    snprintf(g_res, sizeof g_res, "%s", dir);
    g_sweep_rc = tu_sh(MOELAB " sweep " SYNTH " router.k=1,2 train.seed=1,2,3 train.epochs=2 results.dir=%s --jobs 2 --name s",
                       tu_build(), g_res);
    snprintf(g_sweep_out, sizeof g_sweep_out, "%s", tu_out);
    snprintf(g_sw, sizeof g_sw, "%s/test-synth/sweeps/s", g_res);
}

static void need_sweep(void) { ck_assert_msg(g_sweep_rc == 0, "the sweep failed:\n%s", g_sweep_out); }

START_TEST(sweep_prints_its_summary) {
    need_sweep();
    snprintf(tu_out, 1 << 16, "%s", g_sweep_out);
    /* moelab sweep prints the Markdown summary when its runs are done */
    assert_out("6 of 6 runs finished");
    assert_out("6 runs in 2 groups");
    assert_out("| router.k | seeds | val_loss | moe1_active | moe1_cv | moe1_mutual_info | moe1_collapsed |");
    assert_out("| 1 | 1, 2, 3 | ");
    assert_out("| 2 | 1, 2, 3 | ");
}
END_TEST

/* metrics.csv of run i of the sweep. */
static ml_table *metrics(int i) {
    char p[1000];
    snprintf(p, sizeof p, "%s/%03d/metrics.csv", g_sw, i);
    ml_table *t = ml_table_load(p);
    ck_assert_msg(t != NULL, "%s", ml_error());
    return t;
}

/* The row of t whose col is lowest. */
static int argmin(const ml_table *t, const char *col, int maximize) {
    int c = ml_table_col(t, col), best = -1;
    for (int r = 0; r < t->nrows; r++) {
        double v = ml_table_num(t, r, c);
        if (best < 0 || (maximize ? v > ml_table_num(t, best, c) : v < ml_table_num(t, best, c))) best = r;
    }
    return best;
}

/* mean, sd and interval of three values, computed here without the stats module: the t
   quantile for 2 degrees of freedom in closed form. */
static void expect3(const double *x, double *mean, double *sd, double *lo, double *hi) {
    *mean = (x[0] + x[1] + x[2]) / 3;
    double ss = 0;
    for (int i = 0; i < 3; i++) ss += (x[i] - *mean) * (x[i] - *mean);
    *sd = sqrt(ss / 2);
    double p = 0.975, t = (2 * p - 1) / sqrt(2 * p * (1 - p));
    *lo = *mean - t * *sd / sqrt(3.0);
    *hi = *mean + t * *sd / sqrt(3.0);
}

/* The CSV row of (group, col) in tu_out, split into cells (static storage). */
static char **csv_row(const char *group, const char *col, int *n) {
    static char line[4096];
    static char *cells[64];
    char want[256];
    snprintf(want, sizeof want, "%s,%s,", group, col);
    const char *p = strstr(tu_out, want);
    ck_assert_msg(p != NULL, "no CSV row %s in:\n%s", want, tu_out);
    size_t k = strcspn(p, "\n");
    memcpy(line, p, k);
    line[k] = 0;
    *n = 0;
    char *s = line;
    for (;;) {
        cells[(*n)++] = s;
        char *c = strchr(s, ',');
        if (!c) break;
        *c = 0;
        s = c + 1;
    }
    return cells;
}

/* Checks the CSV row of (group, col) against the values of runs a, b, c at rows (-1: last). */
static void check_csv_cell(const char *group, const char *col, const int *runs, const int *rows) {
    double x[3];
    for (int i = 0; i < 3; i++) {
        ml_table *t = metrics(runs[i]);
        int r = rows[i] < 0 ? t->nrows - 1 : rows[i];
        x[i] = ml_table_num(t, r, ml_table_col(t, col));
        ml_table_free(t);
    }
    double mean, sd, lo, hi;
    expect3(x, &mean, &sd, &lo, &hi);
    int n;
    char **c = csv_row(group, col, &n);
    ck_assert_int_ge(n, 9);
    ck_assert_str_eq(c[2], "3");
    near(strtod(c[3], NULL), mean, 1e-14, "mean");
    near(strtod(c[4], NULL), sd, 1e-12, "sd");
    near(strtod(c[5], NULL), lo, 1e-12, "ci_lo");
    near(strtod(c[6], NULL), hi, 1e-12, "ci_hi");
    ck_assert_str_eq(c[7], "3");
}

START_TEST(groups_of_a_sweep_csv_against_metrics) {
    need_sweep();
    int rc = tu_sh(MOELAB " summarize %s --format csv --cols val_loss,moe1_cv,moe1_active", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("group,col,n,mean,sd,ci_lo,ci_hi,runs,seeds,router.k\n");
    const int k1[] = {0, 1, 2}, k2[] = {3, 4, 5}, last[] = {-1, -1, -1};
    check_csv_cell("router.k=1", "val_loss", k1, last);
    check_csv_cell("router.k=2", "val_loss", k2, last);
    check_csv_cell("router.k=1", "moe1_cv", k1, last);
    check_csv_cell("router.k=2", "moe1_active", k2, last);
    int n;
    char **c = csv_row("router.k=2", "val_loss", &n);
    ck_assert_str_eq(c[8], "1 2 3"); /* the seeds */
    ck_assert_str_eq(c[9], "2");     /* the key's value */
    /* --at epoch=1 and --at best (lowest val_loss, or the highest moe1_mutual_info) */
    rc = tu_sh(MOELAB " summarize %s --format csv --cols val_loss,moe1_mutual_info --at epoch=1", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    const int first[] = {0, 0, 0};
    check_csv_cell("router.k=1", "val_loss", k1, first);
    check_csv_cell("router.k=2", "moe1_mutual_info", k2, first);
    int best[3], best_mi[3];
    for (int i = 0; i < 3; i++) {
        ml_table *t = metrics(k2[i]);
        best[i] = argmin(t, "val_loss", 0);
        best_mi[i] = argmin(t, "moe1_mutual_info", 1);
        ml_table_free(t);
    }
    rc = tu_sh(MOELAB " summarize %s --format csv --cols val_loss,moe1_cv --at best", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    check_csv_cell("router.k=2", "val_loss", k2, best);
    check_csv_cell("router.k=2", "moe1_cv", k2, best);
    rc = tu_sh(MOELAB " summarize %s --format csv --cols moe1_cv --best-by moe1_mutual_info:max", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    check_csv_cell("router.k=2", "moe1_cv", k2, best_mi);
    /* the Markdown table says where the values come from */
    rc = tu_sh(MOELAB " summarize %s --at best", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("values at the best epoch by val_loss (lowest)");
    assert_out("95% CI of the mean, Student's t");
    assert_out("(n=3) |");
}
END_TEST

START_TEST(by_keys_and_json_read_back) {
    need_sweep();
    /* --by train.seed: three groups of two (router.k 1 and 2) */
    int rc = tu_sh(MOELAB " summarize %s --by train.seed --cols val_loss --format csv", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("group,col,n,mean,sd,ci_lo,ci_hi,runs,seeds,train.seed\n");
    int n;
    char **c = csv_row("train.seed=2", "val_loss", &n);
    ck_assert_str_eq(c[2], "2");
    ck_assert_str_eq(c[8], "2 2");
    ml_table *a = metrics(1), *b = metrics(4);
    double va = ml_table_num(a, a->nrows - 1, ml_table_col(a, "val_loss"));
    double vb = ml_table_num(b, b->nrows - 1, ml_table_col(b, "val_loss"));
    ml_table_free(a);
    ml_table_free(b);
    near(strtod(c[3], NULL), (va + vb) / 2, 1e-14, "mean of two");
    near(strtod(c[4], NULL), fabs(va - vb) / sqrt(2.0), 1e-12, "sd of two");
    /* df 1: t = 12.706204736174696 */
    near(strtod(c[6], NULL), (va + vb) / 2 + 12.706204736174696 * fabs(va - vb) / sqrt(2.0) / sqrt(2.0), 1e-12, "ci_hi");
    /* the same seed twice in a group is flagged */
    assert_out("have the same seed 2: repeats of one run are not independent samples");
    /* --by a key no config has */
    rc = tu_sh(MOELAB " summarize %s --by router.kk", tu_build(), g_sw);
    ck_assert_int_eq(rc, 2);
    assert_out("--by 'router.kk': no run's config has this key");
    /* --by a section: its keys that split the runs */
    rc = tu_sh(MOELAB " summarize %s --by router --cols val_loss", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("| router.k | seeds | val_loss |");
    /* JSON parses and holds the groups, their statistics and every run's value */
    rc = tu_sh(MOELAB " summarize %s --format json --cols val_loss,moe1_active 2>/dev/null", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    ml_jv *v = ml_jv_parse(tu_out, strlen(tu_out));
    ck_assert_msg(v != NULL, "%s\n%s", ml_error(), tu_out);
    const ml_jv *groups = ml_jv_get(v, "groups");
    ck_assert(groups && groups->type == ML_JV_ARR && groups->n == 2);
    const ml_jv *g1 = &groups->items[1];
    ck_assert_str_eq(ml_jv_get(g1, "group")->str, "router.k=2");
    ck_assert_str_eq(ml_jv_get(ml_jv_get(g1, "keys"), "router.k")->str, "2");
    const ml_jv *st = ml_jv_get(ml_jv_get(g1, "stats"), "val_loss");
    ck_assert(st && ml_jv_get(st, "n")->num == 3);
    const ml_jv *runs = ml_jv_get(g1, "runs");
    ck_assert(runs && runs->n == 3);
    double sum = 0;
    static const char *const seeds[] = {"1", "2", "3"};
    for (int i = 0; i < 3; i++) {
        ck_assert_str_eq(ml_jv_get(&runs->items[i], "seed")->str, seeds[i]);
        ck_assert(ml_jv_get(&runs->items[i], "epoch")->num == 2);
        sum += ml_jv_get(ml_jv_get(&runs->items[i], "values"), "val_loss")->num;
    }
    near(ml_jv_get(st, "mean")->num, sum / 3, 1e-14, "json mean");
    ck_assert(ml_jv_get(st, "ci_lo")->type == ML_JV_NUM);
    ml_jv_free(v);
}
END_TEST

START_TEST(unfinished_loose_and_mixed_runs) {
    need_sweep();
    const char *tmp = tu_tmpdir("sumloose");
    char dir[300];
    snprintf(dir, sizeof dir, "%s", tmp);
    /* copies of the sweep's runs as loose run directories, one marked failed */
    int rc = tu_sh("mkdir -p %s/runs && for i in 0 1 2 3 4 5; do cp -r %s/00$i %s/runs/r$i; done && "
                   "sed -i 's/\"status\":\"ok\"/\"status\":\"error\"/' %s/runs/r5/summary.json",
                   dir, g_sw, dir, dir);
    ck_assert_msg(rc == 0, "%s", tu_out);
    rc = tu_sh(MOELAB " summarize %s/runs --format csv --cols val_loss", tu_build(), dir);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("left out 1 unfinished run (--include-unfinished keeps them):");
    assert_out("runs/r5 (failed)");
    int n;
    char **c = csv_row("router.k=1", "val_loss", &n); /* the same groups as the sweep's */
    ck_assert_str_eq(c[2], "3");
    c = csv_row("router.k=2", "val_loss", &n);
    ck_assert_str_eq(c[2], "2");
    ck_assert_str_eq(c[8], "1 2");
    rc = tu_sh(MOELAB " summarize %s/runs --format csv --cols val_loss --include-unfinished", tu_build(), dir);
    ck_assert_msg(rc == 0, "%s", tu_out);
    c = csv_row("router.k=2", "val_loss", &n);
    ck_assert_str_eq(c[2], "3");
    /* a sweep and some of its runs given again count each run once */
    rc = tu_sh(MOELAB " summarize %s %s/000 %s/003 --format csv --cols val_loss", tu_build(), g_sw, g_sw, g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    c = csv_row("router.k=1", "val_loss", &n);
    ck_assert_str_eq(c[2], "3");
    /* n=1: a mean without an interval */
    rc = tu_sh(MOELAB " summarize %s/runs/r0 %s/runs/r3", tu_build(), dir, dir);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("(n=1, no CI)");
    /* a run without metrics.csv: one line naming the file; a column some runs lack: n counts */
    rc = tu_sh("rm %s/runs/r1/metrics.csv && sed -i '1s/,moe1_cv,/,moe1_cv_renamed,/' %s/runs/r2/metrics.csv && "
               MOELAB " summarize %s/runs --format csv --cols val_loss,moe1_cv",
               dir, dir, tu_build(), dir);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("runs/r1/metrics.csv: cannot open: No such file or directory (run left out)");
    assert_out("moe1_cv: not in metrics.csv in ");
    assert_out("runs/r2 (1 run not counted)");
    c = csv_row("router.k=1", "moe1_cv", &n);
    ck_assert_str_eq(c[2], "1");
    ck_assert_str_eq(c[5], ""); /* no interval for one value */
    /* lists of different lengths are one key: losses=[] and losses=[{...}] */
    rc = tu_sh(MOELAB " sweep " SYNTH " 'losses=[],[{name: z_loss, coef: 0.5}]' train.epochs=1 results.dir=%s --name l",
               tu_build(), dir);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("| losses | seeds |");
    assert_out("| [] | 3 |");
    assert_out("| [{name: z_loss, coef: 0.5}] | 3 |");
    tu_rm_rf(dir);
}
END_TEST

START_TEST(errors_and_help) {
    need_sweep();
    int rc = tu_sh(MOELAB " summarize --help", tu_build());
    ck_assert_int_eq(rc, 0);
    assert_out("usage: moelab summarize DIR...");
    assert_out("--include-unfinished");
    rc = tu_sh(MOELAB " summarize", tu_build());
    ck_assert_int_eq(rc, 2);
    rc = tu_sh(MOELAB " summarize /nonexistent/dir", tu_build());
    ck_assert_int_eq(rc, 2);
    assert_out("moelab summarize: /nonexistent/dir: No such file or directory");
    rc = tu_sh(MOELAB " summarize %s --bogus", tu_build(), g_sw);
    ck_assert_int_eq(rc, 2);
    assert_out("unknown option '--bogus'");
    rc = tu_sh(MOELAB " summarize %s --cols val_los", tu_build(), g_sw);
    ck_assert_int_eq(rc, 2);
    assert_out("--cols 'val_los': in no run's metrics.csv (did you mean 'val_loss'?)");
    rc = tu_sh(MOELAB " summarize %s --at first", tu_build(), g_sw);
    ck_assert_int_eq(rc, 2);
    assert_out("--at 'first': expected last, best or epoch=N");
    rc = tu_sh(MOELAB " summarize %s --at last --best-by val_loss", tu_build(), g_sw);
    ck_assert_int_eq(rc, 2);
    rc = tu_sh(MOELAB " summarize %s --format xml", tu_build(), g_sw);
    ck_assert_int_eq(rc, 2);
    rc = tu_sh(MOELAB " summarize %s --cols", tu_build(), g_sw);
    ck_assert_int_eq(rc, 2);
    assert_out("--cols needs a value");
    /* an epoch no run has: every cell n=0, each run named */
    rc = tu_sh(MOELAB " summarize %s --at epoch=9 --cols val_loss", tu_build(), g_sw);
    ck_assert_int_eq(rc, 0);
    assert_out("– (n=0)");
    assert_out("/005: no epoch 9 in metrics.csv (epochs 1 to 2): no values from this run");
    /* nothing to summarise */
    const char *empty = tu_tmpdir("sumempty");
    rc = tu_sh(MOELAB " summarize %s", tu_build(), empty);
    ck_assert_int_eq(rc, 1);
    assert_out("no runs here");
    assert_out("nothing to summarise");
    tu_rm_rf(empty);
}
END_TEST

static void teardown(void) {
    if (g_res[0]) tu_rm_rf(g_res);
}

static Suite *suite(void) {
    Suite *s = suite_create("summarize");
    TCase *t = tcase_create("summarize");
    tcase_set_timeout(t, 300);
    tcase_add_unchecked_fixture(t, make_sweep, teardown);
    tcase_add_test(t, t_quantiles_match_tables_and_closed_forms);
    tcase_add_test(t, describe_against_hand_values);
    tcase_add_test(t, sweep_prints_its_summary);
    tcase_add_test(t, groups_of_a_sweep_csv_against_metrics);
    tcase_add_test(t, by_keys_and_json_read_back);
    tcase_add_test(t, unfinished_loose_and_mixed_runs);
    tcase_add_test(t, errors_and_help);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return tu_run(suite()); }
