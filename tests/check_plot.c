/* check_plot.c — `moelab plot`: real PNGs (signature, IHDR width and height as asked) for a
 * run, a run that grew experts (blank heatmap cells before an expert exists, growth
 * events marked; per-step files), and a sweep (mean curves with CI bands, the comparison);
 * the data files and gnuplot scripts kept beside them and runnable again; clear errors for
 * a missing or empty metrics.csv, a missing or failing gnuplot, and bad command lines. */
#include <sys/stat.h>
#include <unistd.h>

#include "base/common.h"
#include "base/strbuf.h"
#include "testutil.h"

#define SYNTH "tests/fixtures/run/synth.yaml"
#define MOELAB "%s/moelab"

static void assert_out(const char *needle) {
    ck_assert_msg(strstr(tu_out, needle) != NULL, "expected '%s' in:\n%s", needle, tu_out);
}

/* path is a PNG of w x h pixels: the 8-byte signature, then the IHDR chunk's big-endian
   width and height. */
static void png_is(const char *path, unsigned w, unsigned h) {
    size_t n = 0;
    unsigned char *b = (unsigned char *)tu_slurp(path, &n);
    ck_assert_msg(b != NULL, "%s: not written", path);
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    ck_assert_msg(n > 33 && memcmp(b, sig, 8) == 0, "%s: not a PNG (%zu bytes)", path, n);
    ck_assert_msg(memcmp(b + 12, "IHDR", 4) == 0, "%s: no IHDR chunk first", path);
    unsigned pw = (unsigned)b[16] << 24 | (unsigned)b[17] << 16 | (unsigned)b[18] << 8 | b[19];
    unsigned ph = (unsigned)b[20] << 24 | (unsigned)b[21] << 16 | (unsigned)b[22] << 8 | b[23];
    ck_assert_msg(pw == w && ph == h, "%s: %u x %u pixels, expected %u x %u", path, pw, ph, w, h);
    ck_assert_msg(n > 2000, "%s: only %zu bytes: an empty image?", path, n);
    free(b);
}

static int exists(const char *path) { return access(path, F_OK) == 0; }

static char g_res[600], g_sw[800], g_grow[800]; /* results, a sweep, a run that grew */
static char g_setup[1 << 16];
static int g_setup_rc = -1;

/* Writes text to dir/name. */
static void put(const char *dir, const char *name, const char *text) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* steps.csv and routing_steps.csv as the training loop writes them (a step every 8, the
   layer growing from 2 experts by one every 32 steps). */
static void write_step_files(const char *dir) {
    ml_strbuf s = {0}, r = {0};
    ml_strbuf_puts(&s, "step,epoch,images_seen,loss,task_loss,load_balance,coef_load_balance,moe1_experts,moe1_active\n");
    ml_strbuf_puts(&r, "step,epoch,layer,expert,utilisation,importance\n");
    for (int step = 8; step <= 192; step += 8) {
        int n = 2 + step / 32, epoch = 1 + step / 48;
        if (n > 8) n = 8;
        double task = 0.05 / (1 + step / 40.0);
        ml_strbuf_printf(&s, "%d,%d,%d,%.6g,%.6g,%.6g,0.01,%d,%d\n", step, epoch, step * 32, task * 1.01, task,
                         1 + 0.1 * (step % 3), n, n - (step % 2));
        for (int k = 0; k < n; k++) ml_strbuf_printf(&r, "%d,%d,1,%d,%.6g,%.6g\n", step, epoch, k, 1.0 / n, 1.0 / n);
    }
    put(dir, "steps.csv", s.buf);
    put(dir, "routing_steps.csv", r.buf);
    ml_strbuf_free(&s);
    ml_strbuf_free(&r);
}

/* Once for the suite (unchecked fixture, in the parent process): a 2 x 2 sweep and a run
   that grows its layer from 2 to 6 experts. */
static void setup(void) {
    const char *dir = tu_tmpdir("plot");
    if (!dir) return;
    snprintf(g_res, sizeof g_res, "%s", dir);
    g_setup_rc = tu_sh("(" MOELAB " sweep " SYNTH " router.k=1,2 train.seed=1,2 train.epochs=3 results.dir=%s --jobs 2 --name s"
                       " && " MOELAB " run " SYNTH " schedule.name=progressive schedule.start=2 schedule.every_images=1000"
                       " schedule.max=6 train.epochs=4 results.dir=%s results.run_id=grow)",
                       tu_build(), g_res, tu_build(), g_res);
    snprintf(g_setup, sizeof g_setup, "%s", tu_out);
    snprintf(g_sw, sizeof g_sw, "%s/test-synth/sweeps/s", g_res);
    snprintf(g_grow, sizeof g_grow, "%s/test-synth/grow", g_res);
    write_step_files(g_grow);
}

static void teardown(void) {
    if (g_res[0]) tu_rm_rf(g_res);
}

static void need_setup(void) { ck_assert_msg(g_setup_rc == 0, "setup failed:\n%s", g_setup); }

START_TEST(run_plots_are_pngs_of_the_size_asked) {
    need_setup();
    char run[900];
    snprintf(run, sizeof run, "%s/000", g_sw);
    int rc = tu_sh(MOELAB " plot %s", tu_build(), run);
    ck_assert_msg(rc == 0, "%s", tu_out);
    const char *pngs[] = {"loss", "routing", "heatmap_moe1"};
    for (int i = 0; i < 3; i++) {
        char p[1000];
        snprintf(p, sizeof p, "%s/plots/%s.png", run, pngs[i]);
        png_is(p, 1000, 600);
        assert_out(p); /* named on stdout */
        /* the data and the script are kept, and the script runs again as it is */
        snprintf(p, sizeof p, "%s/plots/%s.gp", run, pngs[i]);
        ck_assert(exists(p));
        snprintf(p, sizeof p, "%s/plots/%s.dat", run, pngs[i]);
        ck_assert(exists(p));
    }
    ck_assert(!exists(tu_path("%s/plots/steps.png", run))); /* no steps.csv in this run */
    rc = tu_sh("cd %s/plots && rm loss.png && gnuplot loss.gp", run);
    ck_assert_msg(rc == 0, "%s", tu_out);
    png_is(tu_path("%s/plots/loss.png", run), 1000, 600);
    /* another size */
    rc = tu_sh(MOELAB " plot %s --size 640x480", tu_build(), run);
    ck_assert_msg(rc == 0, "%s", tu_out);
    png_is(tu_path("%s/plots/routing.png", run), 640, 480);
    png_is(tu_path("%s/plots/heatmap_moe1.png", run), 640, 480);
    /* the loss plot has the task loss and the balancing loss, training and validation */
    char *gp = tu_slurp(tu_path("%s/plots/loss.gp", run), NULL);
    ck_assert_ptr_nonnull(gp);
    ck_assert_ptr_nonnull(strstr(gp, "set terminal pngcairo size 640,480"));
    ck_assert_ptr_nonnull(strstr(gp, "title 'task loss (validation)'"));
    ck_assert_ptr_nonnull(strstr(gp, "title 'load_balance (training)'"));
    ck_assert_ptr_nonnull(strstr(gp, "title 'load_balance (validation)'"));
    free(gp);
}
END_TEST

/* The number of times needle occurs in text. */
static int count(const char *text, const char *needle) {
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

START_TEST(grown_run_heatmaps_and_step_plots) {
    need_setup();
    int rc = tu_sh(MOELAB " plot %s", tu_build(), g_grow);
    ck_assert_msg(rc == 0, "%s", tu_out);
    const char *pngs[] = {"loss", "routing", "heatmap_moe1", "heatmap_steps_moe1", "steps"};
    for (int i = 0; i < 5; i++) {
        char p[1000];
        snprintf(p, sizeof p, "%s/plots/%s.png", g_grow, pngs[i]);
        png_is(p, 1000, 600);
    }
    /* 2 -> 6 experts, one every 1000 images (1536 an epoch): experts not there yet are blank
       (NaN) cells, experts there have numbers */
    char *dat = tu_slurp(tu_path("%s/plots/heatmap_moe1.dat", g_grow), NULL);
    ck_assert_ptr_nonnull(dat);
    ck_assert_ptr_nonnull(strstr(dat, "\n1\t2\t0"));   /* added in epoch 1 */
    ck_assert_ptr_nonnull(strstr(dat, "\n1\t3\tNaN\n"));
    ck_assert_ptr_nonnull(strstr(dat, "\n1\t5\tNaN\n"));
    ck_assert_ptr_nonnull(strstr(dat, "\n2\t4\t0"));
    ck_assert_ptr_null(strstr(dat, "\n4\t5\tNaN"));
    free(dat);
    /* each growth event is a line and a label */
    char *gp = tu_slurp(tu_path("%s/plots/heatmap_moe1.gp", g_grow), NULL);
    ck_assert_ptr_nonnull(gp);
    ck_assert_int_eq(count(gp, "set label '+1 → "), 4);
    ck_assert_ptr_nonnull(strstr(gp, "set label '+1 → 3'"));
    ck_assert_int_ge(count(gp, "set arrow from "), 4);
    ck_assert_ptr_nonnull(strstr(gp, "with image"));
    free(gp);
    /* per step: the layer's experts at step 8 are 0 and 1 */
    dat = tu_slurp(tu_path("%s/plots/heatmap_steps_moe1.dat", g_grow), NULL);
    ck_assert_ptr_nonnull(dat);
    ck_assert_ptr_nonnull(strstr(dat, "8\t1\t0.5\n"));
    ck_assert_ptr_nonnull(strstr(dat, "8\t2\tNaN\n"));
    ck_assert_ptr_nonnull(strstr(dat, "192\t7\t0.125\n"));
    free(dat);
    gp = tu_slurp(tu_path("%s/plots/steps.gp", g_grow), NULL);
    ck_assert_ptr_nonnull(gp);
    ck_assert_ptr_nonnull(strstr(gp, "title 'task loss'"));
    ck_assert_ptr_nonnull(strstr(gp, "title 'load_balance'"));
    ck_assert_ptr_nonnull(strstr(gp, "title 'layer 1 experts'"));
    free(gp);
}
END_TEST

START_TEST(sweep_plots) {
    need_setup();
    int rc = tu_sh(MOELAB " plot %s", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    png_is(tu_path("%s/plots/curve_val_loss.png", g_sw), 1000, 600);
    png_is(tu_path("%s/plots/compare_val_loss_last.png", g_sw), 1000, 600);
    ck_assert(!exists(tu_path("%s/003/plots", g_sw))); /* the runs' own plots only with --runs */
    /* the curve: one block per group with the mean and the interval per epoch */
    char *dat = tu_slurp(tu_path("%s/plots/curve_val_loss.dat", g_sw), NULL);
    ck_assert_ptr_nonnull(dat);
    ck_assert_ptr_nonnull(strstr(dat, "# group 1: router.k=1\n# epoch\tmean\tci_lo\tci_hi\tn\n1\t"));
    ck_assert_ptr_nonnull(strstr(dat, "# group 2: router.k=2"));
    ck_assert_ptr_nonnull(strstr(dat, "\t2\n3\t")); /* n = 2 at epoch 2, then epoch 3 */
    free(dat);
    char *gp = tu_slurp(tu_path("%s/plots/curve_val_loss.gp", g_sw), NULL);
    ck_assert_ptr_nonnull(gp);
    ck_assert_ptr_nonnull(strstr(gp, "with filledcurves"));
    ck_assert_ptr_nonnull(strstr(gp, "title 'router.k=2 (2 runs)'"));
    free(gp);
    /* --metric, --at best, --runs */
    rc = tu_sh(MOELAB " plot %s --metric moe1_cv --at best --runs --size 800x500", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    png_is(tu_path("%s/plots/curve_moe1_cv.png", g_sw), 800, 500);
    png_is(tu_path("%s/plots/compare_moe1_cv_best.png", g_sw), 800, 500);
    png_is(tu_path("%s/003/plots/heatmap_moe1.png", g_sw), 800, 500);
    char *cmp = tu_slurp(tu_path("%s/plots/compare_moe1_cv_best.dat", g_sw), NULL);
    ck_assert_ptr_nonnull(cmp);
    ck_assert_ptr_nonnull(strstr(cmp, "\t2\t\"1\"\n")); /* n = 2; the tic shows the value */
    free(cmp);
    gp = tu_slurp(tu_path("%s/plots/compare_moe1_cv_best.gp", g_sw), NULL);
    ck_assert_ptr_nonnull(gp);
    ck_assert_ptr_nonnull(strstr(gp, "set xlabel 'router.k'"));
    ck_assert_ptr_nonnull(strstr(gp, "with yerrorbars"));
    free(gp);
    /* --by train.seed groups the other way */
    rc = tu_sh(MOELAB " plot %s --by train.seed", tu_build(), g_sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    gp = tu_slurp(tu_path("%s/plots/curve_val_loss.gp", g_sw), NULL);
    ck_assert_ptr_nonnull(strstr(gp, "title 'train.seed=1 (2 runs)'"));
    free(gp);
    rc = tu_sh(MOELAB " plot %s --metric no_such_column", tu_build(), g_sw);
    ck_assert_int_eq(rc, 1);
    assert_out("'no_such_column' is in no run's metrics.csv");
}
END_TEST

START_TEST(errors) {
    need_setup();
    int rc = tu_sh(MOELAB " plot --help", tu_build());
    ck_assert_int_eq(rc, 0);
    assert_out("usage: moelab plot RUN_OR_SWEEP_DIR...");
    rc = tu_sh(MOELAB " plot", tu_build());
    ck_assert_int_eq(rc, 2);
    rc = tu_sh(MOELAB " plot /nonexistent/run", tu_build());
    ck_assert_int_eq(rc, 2);
    assert_out("moelab plot: /nonexistent/run: No such file or directory");
    rc = tu_sh(MOELAB " plot %s --size 10x10", tu_build(), g_grow);
    ck_assert_int_eq(rc, 2);
    assert_out("--size '10x10': expected WxH");
    rc = tu_sh(MOELAB " plot %s --colour", tu_build(), g_grow);
    ck_assert_int_eq(rc, 2);
    assert_out("unknown option '--colour'");
    /* a run directory without metrics.csv, with an empty one, with only its header */
    const char *tmp = tu_tmpdir("plotbad");
    char bad[300];
    snprintf(bad, sizeof bad, "%s", tmp);
    rc = tu_sh("cp -r %s %s/r && rm %s/r/metrics.csv && " MOELAB " plot %s/r", g_grow, bad, bad, tu_build(), bad);
    ck_assert_int_eq(rc, 1);
    assert_out("/r/metrics.csv: no such file (");
    assert_out("is not a run directory, or its run has not finished an epoch)");
    rc = tu_sh(": > %s/r/metrics.csv && " MOELAB " plot %s/r", bad, tu_build(), bad);
    ck_assert_int_eq(rc, 1);
    assert_out("/r/metrics.csv: empty file (no header)");
    rc = tu_sh("head -n 1 %s/metrics.csv > %s/r/metrics.csv && " MOELAB " plot %s/r", g_grow, bad, tu_build(), bad);
    ck_assert_int_eq(rc, 1);
    assert_out("/r/metrics.csv: no rows yet (the run has not finished an epoch): nothing to plot");
    /* gnuplot missing; gnuplot failing (its stderr in the message) */
    rc = tu_sh("PATH=/nonexistent %s/%s/moelab plot %s", getcwd((char[512]){0}, 512), tu_build(), g_grow);
    ck_assert_int_eq(rc, 1);
    assert_out("moelab plot: gnuplot not found: install gnuplot-nox (tools/install-deps.sh)");
    put(bad, "gnuplot", "#!/bin/sh\necho \"$1\", line 3: unknown or ambiguous terminal type >&2\nexit 1\n");
    rc = tu_sh("chmod +x %s/gnuplot && PATH=%s:$PATH " MOELAB " plot %s", bad, bad, tu_build(), g_grow);
    ck_assert_int_eq(rc, 1);
    assert_out("gnuplot failed on ");
    assert_out("/plots/loss.gp (exit 1): loss.gp, line 3: unknown or ambiguous terminal type");
    /* a study with nothing finished in it */
    rc = tu_sh("mkdir -p %s/empty && " MOELAB " plot %s/empty", bad, tu_build(), bad);
    ck_assert_int_eq(rc, 1);
    assert_out("no finished run to plot");
    tu_rm_rf(bad);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("plot");
    TCase *t = tcase_create("plot");
    tcase_set_timeout(t, 300);
    tcase_add_unchecked_fixture(t, setup, teardown);
    tcase_add_test(t, run_plots_are_pngs_of_the_size_asked);
    tcase_add_test(t, grown_run_heatmaps_and_step_plots);
    tcase_add_test(t, sweep_plots);
    tcase_add_test(t, errors);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return tu_run(suite()); }
