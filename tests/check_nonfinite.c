/*
 * check_nonfinite.c — train.nonfinite: the gradient-block check (params), and end to end
 * with the nan_grad test plugin: `stop` fails the epoch naming the step and the first
 * tensor and never applies the update (the last checkpoint stays finite); `skip_step`
 * drops the update, counts it in metrics.csv (`skipped_steps`) and logs a `nonfinite_step`
 * event. synth.yaml has 1536 training samples in batches of 32: 48 steps per epoch.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "base/common.h"
#include "nn/params.h"
#include "io/safetensors.h"

static char out[1 << 16];

/* Runs moelab with the synthetic fixture and extra arguments; output into `out`. */
static int run_synth(const char *dir, const char *args) {
    char cwd[512], cmd[4096];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    snprintf(cmd, sizeof cmd,
             "%s/moelab run tests/fixtures/run/synth.yaml 'plugin_path=[%s/%s/tests/plugins]' "
             "results.dir=%s results.run_id=r %s 2>&1",
             tu_build(), cwd, tu_build(), dir, args);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *slurp(const char *dir, const char *name) {
    static char buf[1 << 16];
    char path[1024];
    snprintf(path, sizeof path, "%s/test-synth/r/%s", dir, name);
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s missing", path);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* Every value of every tensor in the checkpoint is finite; returns the tensor count. */
static int assert_checkpoint_finite(const char *dir, const char *tag) {
    char path[1024];
    snprintf(path, sizeof path, "%s/test-synth/r/checkpoints/%s.safetensors", dir, tag);
    ml_st_file *f = ml_st_open(path);
    ck_assert_msg(f != NULL, "%s", ml_error());
    int n = ml_st_count(f);
    for (int i = 0; i < n; i++) {
        int ndim;
        int64_t shape[ML_ST_MAX_DIMS], k = 1;
        const float *x = ml_st_get(f, ml_st_name(f, i), &ndim, shape);
        ck_assert_ptr_nonnull(x);
        for (int d = 0; d < ndim; d++) k *= shape[d];
        for (int64_t j = 0; j < k; j++)
            ck_assert_msg(isfinite(x[j]), "%s: %s[%lld] = %g", path, ml_st_name(f, i), (long long)j, x[j]);
    }
    ml_st_close(f);
    return n;
}

/* ------------------------------------------------------------------ the block check --- */

START_TEST(t_grad_finite_block) {
    ml_params p;
    ml_params_init(&p, 1);
    int a = ml_params_declare(&p, "a", 1, (int[]){37}, ML_INIT_ZEROS, 0, 1);
    int b = ml_params_declare(&p, "b", 2, (int[]){5, 3}, ML_INIT_ZEROS, 0, 1);
    int c = ml_params_declare(&p, "c", 1, (int[]){100}, ML_INIT_ZEROS, 0, 1);
    ck_assert_int_ge(c, 0);
    ml_rng rng;
    ml_rng_seed(&rng, 1);
    ck_assert_int_eq(ml_params_commit(&p, &rng), ML_OK);
    ml_params_zero_grad(&p);
    int k = -1;
    ck_assert_int_eq(ml_params_grad_finite(&p), 1);
    ck_assert_int_eq(ml_params_grad_first_nonfinite(&p, &k), -1);
    ck_assert_int_eq(k, 0);
    /* each kind of non-finite value, in the last element of a tensor (the loop's tail) */
    const float bad[] = {NAN, INFINITY, -INFINITY, -NAN};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ml_params_zero_grad(&p);
        ml_params_grad(&p, c)[99] = bad[i];
        ck_assert_int_eq(ml_params_grad_finite(&p), 0);
        ck_assert_int_eq(ml_params_grad_first_nonfinite(&p, &k), c);
        ck_assert_int_eq(k, 1);
    }
    /* the first in declaration order is named, all are counted; large finite values pass */
    ml_params_zero_grad(&p);
    ml_params_grad(&p, a)[0] = 3.4e38f;
    ml_params_grad(&p, a)[36] = -3.4e38f;
    ml_params_grad(&p, c)[0] = 1e-45f;
    ck_assert_int_eq(ml_params_grad_finite(&p), 1);
    ml_params_grad(&p, c)[50] = NAN;
    ml_params_grad(&p, b)[14] = INFINITY;
    ck_assert_int_eq(ml_params_grad_finite(&p), 0);
    ck_assert_int_eq(ml_params_grad_first_nonfinite(&p, &k), b);
    ck_assert_int_eq(k, 2);
    ml_params_free(&p);
}
END_TEST

/* --------------------------------------------------------------------- end to end --- */

/* stop (the default): a NaN gradient at the last step of epoch 2 fails the run there; on
 * today's main the update was applied and epoch 2's last.safetensors was full of NaN. */
START_TEST(t_stop_names_step_and_tensor) {
    const char *dir = tu_tmpdir("nf-stop");
    int rc = run_synth(dir, "'losses=[{name: nan_grad, coef: 1, at_step: 96}]'");
    ck_assert_msg(rc == 1, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "epoch 2 step 96: non-finite gradient in tensor '") &&
                      strstr(out, "' (first of ") && strstr(out, "train.nonfinite: skip_step"),
                  "%s", out);
    /* last.safetensors is epoch 1's: loadable and finite */
    ck_assert_int_gt(assert_checkpoint_finite(dir, "last"), 0);
    const char *m = slurp(dir, "metrics.csv");
    ck_assert_msg(strstr(m, "\n1,") && !strstr(m, "\n2,"), "%s", m);
    ck_assert_ptr_null(strstr(m, "skipped_steps")); /* the column belongs to skip_step */
}
END_TEST

/* The cell of column `name` in data row `row` (0-based) of a metrics.csv text. */
static double cell(const char *m, const char *name, int row) {
    const char *col = strstr(m, name);
    ck_assert_msg(col != NULL, "no column %s in\n%s", name, m);
    if (*name == ',') col++; /* ",loss," names the column loss exactly */
    int idx = 0;
    for (const char *q = m; q < col; q++) idx += *q == ',';
    const char *line = strchr(m, '\n');
    for (int r = 0; r < row; r++) line = strchr(line + 1, '\n');
    ck_assert_ptr_nonnull(line);
    const char *f = line + 1;
    for (int i = 0; i < idx; i++) f = strchr(f, ',') + 1;
    return strtod(f, NULL);
}

/* A skipped step before an interrupt stays counted after --resume (the partial epoch's
 * skipped count and applied-sample count are in the interrupt checkpoint). */
START_TEST(t_skip_step_survives_resume) {
    char straight[256], resumed[256], run[400], cmd[1024];
    snprintf(straight, sizeof straight, "%s", tu_tmpdir("nf-straight"));
    snprintf(resumed, sizeof resumed, "%s", tu_tmpdir("nf-resumed"));
    const char *args = "train.epochs=2 train.nonfinite=skip_step 'losses=[{name: nan_grad, coef: 1, at_step: 60}]'";
    ck_assert_msg(run_synth(straight, args) == 0, "%s", out);
    setenv("MOELAB_TEST_INTERRUPT_AT_STEP", "70", 1);
    int rc = run_synth(resumed, args);
    unsetenv("MOELAB_TEST_INTERRUPT_AT_STEP");
    ck_assert_msg(rc == 130, "exit %d: %s", rc, out);
    snprintf(run, sizeof run, "%s/test-synth/r", resumed);
    snprintf(cmd, sizeof cmd, "%s/moelab run --resume %s >/dev/null 2>&1", tu_build(), run);
    rc = system(cmd);
    ck_assert_msg(WIFEXITED(rc) && WEXITSTATUS(rc) == 0, "resume failed: %d", rc);
    static char a[1 << 16];
    snprintf(a, sizeof a, "%s", slurp(straight, "metrics.csv"));
    const char *b = slurp(resumed, "metrics.csv");
    ck_assert(cell(a, "skipped_steps", 1) == 1);
    ck_assert(cell(b, "skipped_steps", 1) == 1);
    ck_assert(cell(a, ",loss,", 1) == cell(b, ",loss,", 1));
    ck_assert(cell(a, "task_loss", 1) == cell(b, "task_loss", 1));
}
END_TEST

START_TEST(t_skip_step_counts_and_continues) {
    const char *dir = tu_tmpdir("nf-skip");
    int rc = run_synth(dir, "train.nonfinite=skip_step "
                            "'losses=[{name: nan_grad, coef: 1, at_step: 60}]'");
    ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "epoch 2 step 60: non-finite gradient in tensor '") &&
                      strstr(out, "update skipped (train.nonfinite: skip_step)"),
                  "%s", out);
    assert_checkpoint_finite(dir, "last");
    assert_checkpoint_finite(dir, "best");
    /* skipped_steps: 0, 1, 0 */
    const char *m = slurp(dir, "metrics.csv");
    const char *col = strstr(m, "skipped_steps");
    ck_assert_msg(col != NULL, "%s", m);
    int idx = 0;
    for (const char *q = m; q < col; q++) idx += *q == ',';
    int want[3] = {0, 1, 0}, row = 0;
    for (const char *line = strchr(m, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
        const char *f = line + 1;
        for (int i = 0; i < idx; i++) f = strchr(f, ',') + 1;
        ck_assert_int_lt(row, 3);
        ck_assert_int_eq(atoi(f), want[row]);
        row++;
    }
    ck_assert_int_eq(row, 3);
    /* the loss of epoch 2 averages the applied steps only: a number, not nan */
    const char *rows = strchr(m, '\n');
    ck_assert_msg(!strstr(rows, ",nan") && !strstr(rows, ",-nan") && !strstr(rows, ",inf"), "%s", m);
    const char *ev = slurp(dir, "events.jsonl");
    ck_assert_msg(strstr(ev, "\"kind\":\"nonfinite_step\",\"skipped_step\":60,"
                             "\"reason\":\"gradient\"") &&
                      strstr(ev, "\"tensor\":\""),
                  "%s", ev);
}
END_TEST

/* A loss that overflows is the existing check's case: stop keeps its message, skip_step
 * skips the step (no backward, no update) with reason "loss". */
START_TEST(t_nonfinite_loss) {
    const char *dir = tu_tmpdir("nf-loss");
    int rc = run_synth(dir, "train.epochs=1 "
                            "'losses=[{name: nan_grad, coef: 10, at_step: 5, mode: loss}]'");
    ck_assert_msg(rc == 1, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "epoch 1 step 5: the loss is inf (diverged)"), "%s", out);
    dir = tu_tmpdir("nf-loss2");
    rc = run_synth(dir, "train.epochs=1 train.nonfinite=skip_step "
                        "'losses=[{name: nan_grad, coef: 10, at_step: 5, mode: loss}]'");
    ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "epoch 1 step 5: non-finite loss; update skipped"), "%s", out);
    const char *ev = slurp(dir, "events.jsonl");
    ck_assert_msg(strstr(ev, "\"skipped_step\":5,\"reason\":\"loss\",\"loss\":null,"
                             "\"tensor\":null,\"tensors\":0"),
                  "%s", ev);
    assert_checkpoint_finite(dir, "last");
}
END_TEST

START_TEST(t_config_values) {
    const char *dir = tu_tmpdir("nf-cfg");
    int rc = run_synth(dir, "train.nonfinite=ignore");
    ck_assert_int_eq(rc, 2);
    ck_assert_msg(strstr(out, "train.nonfinite") && strstr(out, "stop") && strstr(out, "skip_step"),
                  "%s", out);
}
END_TEST

int main(void) {
    Suite *s = suite_create("nonfinite");
    TCase *unit = tcase_create("block");
    tcase_add_test(unit, t_grad_finite_block);
    suite_add_tcase(s, unit);
    TCase *run = tcase_create("run");
    tcase_set_timeout(run, 120);
    tcase_add_test(run, t_stop_names_step_and_tensor);
    tcase_add_test(run, t_skip_step_counts_and_continues);
    tcase_add_test(run, t_skip_step_survives_resume);
    tcase_add_test(run, t_nonfinite_loss);
    tcase_add_test(run, t_config_values);
    suite_add_tcase(s, run);
    return tu_run(s);
}
