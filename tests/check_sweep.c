/* check_sweep.c — studies: the plan (values, ranges, the config's sweep: section, the
 * command line winning), the sweep directory and manifest, the local launcher (workers,
 * failures that do not stop the others, exit statuses), re-running a sweep (finished runs
 * kept, interrupted ones resumed to the same bits, failed ones redone), --status, --task,
 * --dry-run and --help. */
#include <sys/stat.h>
#include <unistd.h>

#include "study/grid.h"
#include "study/sweep.h"
#include "base/common.h"
#include "testutil.h"

#define SYNTH "tests/fixtures/run/synth.yaml"
#define MOELAB "%s/moelab"

static void assert_out(const char *needle) {
    ck_assert_msg(strstr(tu_out, needle) != NULL, "expected '%s' in:\n%s", needle, tu_out);
}

static void values_are(const char *text, int n, const char *const *want) {
    int k;
    char **v = ml_grid_split_values(text, &k);
    ck_assert_msg(v != NULL, "%s: %s", text, ml_error());
    ck_assert_msg(k == n, "%s: %d values, expected %d", text, k, n);
    for (int i = 0; i < n; i++) {
        ck_assert_str_eq(v[i], want[i]);
        free(v[i]);
    }
    free(v);
}

START_TEST(values_split_outside_brackets_and_quotes) {
    values_are("1,2,3", 3, (const char *[]){"1", "2", "3"});
    values_are("saturation", 1, (const char *[]){"saturation"});
    values_are("[],[{name: z_loss, coef: 0.1}]", 2, (const char *[]){"[]", "[{name: z_loss, coef: 0.1}]"});
    values_are("\"a,b\",c", 2, (const char *[]){"\"a,b\"", "c"});
    values_are("'x, y'", 1, (const char *[]){"'x, y'"});
    values_are("\"q\\\",r\",s", 2, (const char *[]){"\"q\\\",r\"", "s"});
    values_are("", 1, (const char *[]){""});
    values_are("range(1,4)", 3, (const char *[]){"1", "2", "3"});
    values_are("range(0, 10, 4)", 3, (const char *[]){"0", "4", "8"});
    values_are("range(5,1,-2)", 2, (const char *[]){"5", "3"});
    values_are("range(0,0.35,0.1)", 4, (const char *[]){"0.0", "0.1", "0.2", "0.3"});
    values_are("range(1e-3, 3e-3, 1e-3)", 2, (const char *[]){"0.001", "0.002"});
    int k;
    ck_assert_ptr_null(ml_grid_split_values("range(1,1)", &k));
    ck_assert_ptr_nonnull(strstr(ml_error(), "is empty"));
    ck_assert_ptr_null(ml_grid_split_values("range(1,5,0)", &k));
    ck_assert_ptr_nonnull(strstr(ml_error(), "step is 0"));
    ck_assert_ptr_null(ml_grid_split_values("range(a,5)", &k));
    ck_assert_ptr_null(ml_grid_split_values("range(0,1000000)", &k));
    ck_assert_ptr_null(ml_grid_split_values("\"open,", &k));
    ck_assert_ptr_nonnull(strstr(ml_error(), "not closed"));
}
END_TEST

static const char *write_cfg(const char *dir, const char *name, const char *text) {
    const char *p = tu_path("%s/", dir);
    static char path[512];
    snprintf(path, sizeof path, "%s%s", p, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static void run_is(const ml_grid *g, int i, const char *want) {
    char got[1024] = "";
    for (int j = 0; j < g->run[i].n; j++) {
        strcat(got, j ? " " : "");
        strcat(got, g->run[i].over[j]);
    }
    ck_assert_msg(!strcmp(got, want), "run %d: '%s', expected '%s'", i, got, want);
}

START_TEST(plan_from_section_and_command_line) {
    const char *dir = tu_tmpdir("swplan");
    char base[512];
    snprintf(base, sizeof base, "%s/%s", getcwd((char[512]){0}, 512), SYNTH);
    char text[2048];
    snprintf(text, sizeof text,
             "base: %s\n"
             "sweep:\n"
             "  grid:\n"
             "    router.k: [1, 2]\n"
             "    losses: [[], [{name: z_loss, coef: 0.5}]]\n"
             "  runs:\n"
             "    - {router.name: hash, model.experts: 8}\n",
             base);
    const char *path = write_cfg(dir, "s.yaml", text);
    ml_config *c = ml_config_load(path, NULL, 0, NULL, NULL);
    ck_assert_msg(c != NULL, "%s", ml_error());
    ml_grid *g = ml_grid_new(c, NULL, 0);
    ck_assert_msg(g != NULL, "%s", ml_error());
    ck_assert_int_eq(g->n_runs, 5);
    run_is(g, 0, "router.k=1 losses=[]");
    run_is(g, 1, "router.k=1 losses=[{name: z_loss, coef: 0.5}]");
    run_is(g, 3, "router.k=2 losses=[{name: z_loss, coef: 0.5}]");
    run_is(g, 4, "router.name=hash model.experts=8");
    ck_assert_int_eq(g->n_axes, 4);
    ml_grid_free(g);
    /* the command line's axes vary slowest and replace the section's; key=v is fixed */
    const char *args[] = {"train.seed=1,2", "router.k=3", "train.epochs=1"};
    g = ml_grid_new(c, args, 3);
    ck_assert_msg(g != NULL, "%s", ml_error());
    ck_assert_int_eq(g->n_runs, 6);
    run_is(g, 0, "losses=[] train.seed=1 router.k=3 train.epochs=1");
    run_is(g, 2, "router.name=hash model.experts=8 train.seed=1 router.k=3 train.epochs=1");
    run_is(g, 3, "losses=[] train.seed=2 router.k=3 train.epochs=1");
    ck_assert_int_eq(g->n_fixed, 2);
    ml_grid_free(g);
    /* mistakes */
    const char *bad1[] = {"no_equals"};
    ck_assert_ptr_null(ml_grid_new(c, bad1, 1));
    ck_assert_ptr_nonnull(strstr(ml_error(), "expected key.path=value"));
    const char *bad2[] = {"a.b=1,2", "a.b=3"};
    ck_assert_ptr_null(ml_grid_new(c, bad2, 2));
    ck_assert_ptr_nonnull(strstr(ml_error(), "given twice"));
    ml_config_free(c);
    snprintf(text, sizeof text, "base: %s\nsweep:\n  gird:\n    router.k: [1, 2]\n", base);
    path = write_cfg(dir, "t.yaml", text);
    c = ml_config_load(path, NULL, 0, NULL, NULL);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_null(ml_grid_new(c, NULL, 0));
    ck_assert_msg(strstr(ml_error(), "t.yaml:3:3: unknown key 'gird' in sweep"), "%s", ml_error());
    ml_config_free(c);
    tu_rm_rf(dir);
}
END_TEST

/* The tensors of two checkpoints are the same bits. */
static void same_tensors(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *ta = tu_tensor_bytes(a, &na), *tb = tu_tensor_bytes(b, &nb);
    ck_assert_msg(ta && tb, "cannot read %s or %s", a, b);
    ck_assert_msg(na == nb && memcmp(ta, tb, na) == 0, "%s and %s differ", a, b);
    free(ta);
    free(tb);
}

START_TEST(local_sweep_end_to_end) {
    const char *dir = tu_tmpdir("swrun");
    char res[600];
    snprintf(res, sizeof res, "%s", dir);
    /* a bad grid value starts nothing */
    int rc = tu_sh(MOELAB " sweep " SYNTH " router.k=1,100 results.dir=%s", tu_build(), res);
    ck_assert_int_eq(rc, 2);
    assert_out("sweep: run 1 (router.k=100 ");
    assert_out("router.k must be in [1, 64], got 100");
    ck_assert_int_ne(access(tu_path("%s/test-synth/sweeps", res), F_OK), 0);
    /* 2 x 2, two workers */
    rc = tu_sh(MOELAB " sweep " SYNTH " router.k=1,2 train.seed=1,2 train.epochs=2 results.dir=%s --jobs 2 --name s1",
               tu_build(), res);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("4 runs, 4 to do, 2 at a time with 1 thread each");
    assert_out("] 003 ok in");
    assert_out("4 of 4 runs finished");
    char sw[700];
    snprintf(sw, sizeof sw, "%s/test-synth/sweeps/s1", res);
    ml_sweep *s = ml_sweep_open(sw);
    ck_assert_msg(s != NULL, "%s", ml_error());
    ck_assert_int_eq(s->n_runs, 4);
    ck_assert_str_eq(s->run[2].group, "router.k=2");
    ck_assert_str_eq(s->run[2].seed, "1");
    ck_assert_str_eq(s->run[3].label, "router.k=2 train.seed=2");
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(s->run[i].state, ML_RUN_OK);
        ck_assert_int_eq(s->run[i].attempts, 1);
    }
    ml_sweep_free(s);
    /* each run is an ordinary run: its config has the overrides and its own directory */
    char *cfg = tu_slurp(tu_path("%s/002/config.yaml", sw), NULL);
    ck_assert_ptr_nonnull(cfg);
    ck_assert_ptr_nonnull(strstr(cfg, "seed: 1"));
    ck_assert_ptr_nonnull(strstr(cfg, "threads: 1"));
    ck_assert_ptr_nonnull(strstr(cfg, "/s1/002"));
    free(cfg);
    /* the same command again: nothing to do */
    rc = tu_sh(MOELAB " sweep " SYNTH " router.k=1,2 train.seed=1,2 train.epochs=2 results.dir=%s --jobs 2 --name s1",
               tu_build(), res);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("4 runs, 0 to do");
    /* the same name with another grid is refused */
    rc = tu_sh(MOELAB " sweep " SYNTH " router.k=1,2 train.seed=1,3 train.epochs=2 results.dir=%s --name s1", tu_build(),
               res);
    ck_assert_int_eq(rc, 2);
    assert_out("holds another sweep");
    /* --status */
    rc = tu_sh(MOELAB " sweep --status %s", tu_build(), sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("001    ok");
    assert_out("4 runs: 4 ok");
    tu_rm_rf(dir);
}
END_TEST

/* Every run interrupted at step 40 (the test hook), then the same command again: the runs
   resume from their interrupt checkpoints and end with the same bits as a sweep never
   interrupted. */
START_TEST(interrupted_sweep_resumes_exactly) {
    const char *dir = tu_tmpdir("swint");
    char res[600];
    snprintf(res, sizeof res, "%s", dir);
    const char *cmd = MOELAB " sweep " SYNTH " router.k=1,2 train.epochs=2 results.dir=%s --jobs 2 --name %s";
    char c1[1024], c2[1024];
    snprintf(c1, sizeof c1, cmd, tu_build(), res, "straight");
    snprintf(c2, sizeof c2, cmd, tu_build(), res, "cut");
    int rc = tu_sh("%s", c1);
    ck_assert_msg(rc == 0, "%s", tu_out);
    rc = tu_sh("MOELAB_TEST_INTERRUPT_AT_STEP=40 %s", c2);
    ck_assert_msg(rc == 1, "%s", tu_out);
    assert_out("interrupted in");
    assert_out("0 of 2 runs finished");
    rc = tu_sh("%s", c2);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("2 runs, 2 to do");
    for (int i = 0; i < 2; i++) {
        char a[800], b[800];
        snprintf(a, sizeof a, "%s/test-synth/sweeps/straight/00%d/checkpoints/last.safetensors", res, i);
        snprintf(b, sizeof b, "%s/test-synth/sweeps/cut/00%d/checkpoints/last.safetensors", res, i);
        same_tensors(a, b);
    }
    char *log = tu_slurp(tu_path("%s/test-synth/sweeps/cut/logs/001.log", res), NULL);
    ck_assert_ptr_nonnull(log);
    ck_assert_ptr_nonnull(strstr(log, "attempt 2: "));
    ck_assert_ptr_nonnull(strstr(log, " run --resume "));
    free(log);
    tu_rm_rf(dir);
}
END_TEST

/* One run fails (its script raises for one grid value): the others finish, the exit status
   is 1 and the summary names the failed run; re-running redoes only it, keeping the failed
   directory beside. --task runs one run in-process. */
START_TEST(failures_do_not_stop_the_others) {
    const char *dir = tu_tmpdir("swfail");
    char res[600];
    snprintf(res, sizeof res, "%s", dir);
    const char *script = tu_path("%s/fail.lua", res);
    FILE *f = fopen(script, "w");
    ck_assert_ptr_nonnull(f);
    fputs("if exp.config.params.fail == 1 then error('deliberate failure') end\n"
          "exp:train_epoch()\nexp:save_checkpoint('last')\n",
          f);
    fclose(f);
    int rc = tu_sh(MOELAB " sweep " SYNTH " params.fail=0,1,2 script=%s results.dir=%s --name f --jobs 2", tu_build(),
                   script, res);
    ck_assert_msg(rc == 1, "%s", tu_out);
    assert_out("] 001 failed in");
    assert_out("deliberate failure");
    assert_out("2 of 3 runs finished");
    assert_out("001 failed (exit 1) params.fail=1");
    char sw[700];
    snprintf(sw, sizeof sw, "%s/test-synth/sweeps/f", res);
    rc = tu_sh(MOELAB " sweep --status %s", tu_build(), sw);
    ck_assert_int_eq(rc, 1);
    assert_out("001    failed");
    /* fix the script, run again: only 001 runs; the failed attempt is kept */
    f = fopen(script, "w");
    fputs("exp:train_epoch()\nexp:save_checkpoint('last')\n", f);
    fclose(f);
    rc = tu_sh(MOELAB " sweep --resume %s", tu_build(), sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("3 runs, 1 to do");
    ck_assert_int_eq(access(tu_path("%s/001.attempt-1/summary.json", sw), F_OK), 0);
    ck_assert_int_eq(ml_sweep_dir_state(tu_path("%s/001", sw)), ML_RUN_OK);
    /* --task on a finished run does nothing; on a fresh index it runs it here */
    rc = tu_sh(MOELAB " sweep --task %s 2", tu_build(), sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("has finished; nothing to do");
    rc = tu_sh("mv %s/002 %s/002.old && " MOELAB " sweep --task %s 2", sw, sw, tu_build(), sw);
    ck_assert_msg(rc == 0, "%s", tu_out);
    ck_assert_int_eq(ml_sweep_dir_state(tu_path("%s/002", sw)), ML_RUN_OK);
    rc = tu_sh(MOELAB " sweep --task %s 3", tu_build(), sw);
    ck_assert_int_eq(rc, 2);
    assert_out("expected a run index in 0..2");
    tu_rm_rf(dir);
}
END_TEST

START_TEST(command_line_and_help) {
    int rc = tu_sh(MOELAB " sweep --help", tu_build());
    ck_assert_int_eq(rc, 0);
    assert_out("usage: moelab sweep CONFIG");
    assert_out("--launcher");
    rc = tu_sh(MOELAB " sweep", tu_build());
    ck_assert_int_eq(rc, 2);
    rc = tu_sh(MOELAB " sweep " SYNTH " --bogus", tu_build());
    ck_assert_int_eq(rc, 2);
    assert_out("unknown option '--bogus'");
    rc = tu_sh(MOELAB " sweep " SYNTH " --jobs 0", tu_build());
    ck_assert_int_eq(rc, 2);
    rc = tu_sh(MOELAB " sweep --status /nonexistent", tu_build());
    ck_assert_int_eq(rc, 2);
    assert_out("/nonexistent");
    rc = tu_sh(MOELAB " sweep " SYNTH " results.run_dir=/tmp/x router.k=1,2", tu_build());
    ck_assert_int_eq(rc, 2);
    assert_out("sets each run's directory itself");
    /* --dry-run creates nothing and works from another directory */
    const char *dir = tu_tmpdir("swdry");
    char here[512];
    ck_assert_ptr_nonnull(getcwd(here, sizeof here));
    rc = tu_sh("cd /tmp && %s/%s/moelab sweep " SYNTH " router.k=1,2 --dry-run", here, tu_build());
    ck_assert_int_eq(rc, 2); /* a relative config from /tmp: not there */
    assert_out(SYNTH);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cd /tmp && %s/%s/moelab sweep %s/" SYNTH " router.k=1,2 'train.seed=range(1,4)' results.dir=%s --dry-run",
             here, tu_build(), here, dir);
    rc = tu_sh("%s", cmd);
    ck_assert_msg(rc == 0, "%s", tu_out);
    assert_out("6 runs");
    assert_out("005 router.k=2 train.seed=3");
    ck_assert_int_ne(access(tu_path("%s/test-synth", dir), F_OK), 0);
    tu_rm_rf(dir);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("sweep");
    TCase *t = tcase_create("sweep");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, values_split_outside_brackets_and_quotes);
    tcase_add_test(t, plan_from_section_and_command_line);
    tcase_add_test(t, local_sweep_end_to_end);
    tcase_add_test(t, interrupted_sweep_resumes_exactly);
    tcase_add_test(t, failures_do_not_stop_the_others);
    tcase_add_test(t, command_line_and_help);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return tu_run(suite()); }
