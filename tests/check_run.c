/* check_run.c — the `moelab` command end to end: config errors and exit codes, script
 * errors, growth, checkpoints, the sandbox, an out-of-tree plugin, determinism, and a real
 * Fashion-MNIST run whose validation loss must fall by 30%. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "base/json.h"
#include "base/sha256.h"
#include "base/version.h"

static char out[1 << 16];

/* Runs a shell command, captures stdout+stderr into `out`, returns the exit status. */
static int run(const char *fmt, const char *a, const char *b) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    char full[4200];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#define MOELAB "%s/moelab"
#define SYNTH "tests/fixtures/run/synth.yaml"

static void assert_contains(const char *needle) { ck_assert_msg(strstr(out, needle) != NULL, "expected '%s' in:\n%s", needle, out); }

START_TEST(config_errors_exit_2_and_run_nothing) {
    const char *tmp = tu_tmpdir("cfg");
    int rc = run(MOELAB " run tests/fixtures/run/bad_unknown_key.yaml results.dir=%s", tu_build(), tmp);
    ck_assert_int_eq(rc, 2);
    assert_contains("bad_unknown_key.yaml:7:3: unknown key 'epoch' in 'train' (did you mean 'epochs'?)");
    rc = run(MOELAB " run tests/fixtures/run/bad_plugin.yaml results.dir=%s", tu_build(), tmp);
    ck_assert_int_eq(rc, 2);
    assert_contains("bad_plugin.yaml:7:9");
    assert_contains("no_such_router");
    rc = run(MOELAB " run tests/fixtures/run/bad_option.yaml results.dir=%s", tu_build(), tmp);
    ck_assert_int_eq(rc, 2);
    assert_contains("bad_option.yaml:8:6");
    rc = run(MOELAB " run " SYNTH " train.epochs=zero results.dir=%s", tu_build(), tmp);
    ck_assert_int_eq(rc, 2);
    assert_contains("override 'train.epochs=zero'");
    rc = run(MOELAB " run tests/fixtures/run/missing.yaml%s", tu_build(), "");
    ck_assert_int_eq(rc, 2);
    assert_contains("missing.yaml: cannot open");
    rc = run(MOELAB " run " SYNTH " script=tests/fixtures/run/syntax_error.lua results.dir=%s", tu_build(), tmp);
    ck_assert_int_eq(rc, 2);
    assert_contains("syntax_error.lua:3:");
    /* nothing was run: no run directory was created */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s/test-synth", tmp);
    struct stat st;
    ck_assert_int_ne(stat(cmd, &st), 0);
}
END_TEST

START_TEST(runtime_error_keeps_results) {
    const char *tmp = tu_tmpdir("rt");
    int rc = run(MOELAB " run " SYNTH " script=tests/fixtures/run/runtime_error.lua results.run_id=r results.dir=%s", tu_build(), tmp);
    ck_assert_int_eq(rc, 1);
    assert_contains("runtime_error.lua:3: deliberate failure at epoch 1");
    assert_contains("stack traceback:");
    assert_contains("runtime_error.lua:7:");
    char path[512];
    snprintf(path, sizeof path, "%s/test-synth/r/summary.json", tmp);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    ck_assert_ptr_nonnull(strstr(buf, "\"status\":\"error\""));
    snprintf(path, sizeof path, "%s/test-synth/r/metrics.csv", tmp);
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    int lines = 0;
    while (fgets(buf, sizeof buf, f)) lines++;
    fclose(f);
    ck_assert_int_eq(lines, 2); /* header + the epoch that finished */
}
END_TEST

START_TEST(growth_mid_training) {
    int rc = run(MOELAB " run " SYNTH " script=tests/fixtures/run/growth.lua%s", tu_build(), "");
    ck_assert_msg(rc == 0, "%s", out);
}
END_TEST

START_TEST(checkpoint_round_trip) {
    int rc = run(MOELAB " run " SYNTH " script=tests/fixtures/run/checkpoint.lua%s", tu_build(), "");
    ck_assert_msg(rc == 0, "%s", out);
}
END_TEST

START_TEST(sandbox) {
    int rc = run(MOELAB " run " SYNTH " script=tests/fixtures/run/sandbox.lua train.epochs=1%s", tu_build(), "");
    ck_assert_msg(rc == 0, "%s", out);
}
END_TEST

START_TEST(standalone_lua) {
    int rc = run(MOELAB " lua tests/fixtures/run/standalone.lua%s", tu_build(), "");
    ck_assert_msg(rc == 0, "%s", out);
    assert_contains("standalone ok");
}
END_TEST

START_TEST(default_script_and_schedule) {
    /* train.lua with progressive growth 2 -> 4 experts and the warm-up, on synthetic data */
    const char *tmp = tu_tmpdir("sched");
    int rc = run(MOELAB " run " SYNTH " schedule.name=progressive schedule.start=2 schedule.every_images=1500 "
                 "schedule.max=4 results.run_id=s results.dir=%s", tu_build(), tmp);
    ck_assert_msg(rc == 0, "%s", out);
    char path[512], buf[1 << 14];
    snprintf(path, sizeof path, "%s/test-synth/s/events.jsonl", tmp);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    ck_assert_msg(strstr(buf, "\"kind\":\"experts_added\"") != NULL, "%s", buf);
    ck_assert_ptr_nonnull(strstr(buf, "\"to\":4"));
    const char *files[] = {"config.yaml", "metrics.csv", "routing.csv", "summary.json", "checkpoints/best.safetensors",
                           "checkpoints/last.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/test-synth/s/%s", tmp, files[i]);
        struct stat st;
        ck_assert_msg(stat(path, &st) == 0 && st.st_size > 0, "missing %s", path);
    }
}
END_TEST

/* train.lua's intervention: on collapse, double the coefficient and resume from best */
START_TEST(collapse_intervention) {
    char tmp[256], path[512], buf[1 << 15];
    snprintf(tmp, sizeof tmp, "%s", tu_tmpdir("coll"));
    /* collapse_entropy 1.0 makes every epoch count as collapsed */
    int rc = run(MOELAB " run " SYNTH " health.collapse_entropy=1.0 params.on_collapse=raise_coef "
                 "params.warmup_loss=load_balance results.run_id=c results.dir=%s", tu_build(), tmp);
    ck_assert_msg(rc == 0, "%s", out);
    assert_contains("has collapsed");
    snprintf(path, sizeof path, "%s/test-synth/c/events.jsonl", tmp);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    ck_assert_msg(strstr(buf, "\"kind\":\"collapse\"") != NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "\"kind\":\"intervention\"") != NULL, "%s", buf);
    ck_assert_msg(strstr(buf, "\"kind\":\"checkpoint_loaded\",\"tag\":\"best\"") != NULL, "%s", buf);
    /* the coefficient was raised: at epoch 3 the warm-up gives 1e-5 + 3/20 (5e-4 - 1e-5) = 8.35e-5
       without the intervention, and 1.59e-4 once coef_max has doubled */
    snprintf(path, sizeof path, "%s/test-synth/c/summary.json", tmp);
    f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    const char *c = strstr(buf, "\"coef_load_balance\":");
    ck_assert_ptr_nonnull(c);
    ck_assert_double_gt(atof(c + strlen("\"coef_load_balance\":")), 1.5e-4);
}
END_TEST

static void loss_column(const char *dir, const char *exp, char *dst, size_t n) {
    char path[512], line[8192];
    snprintf(path, sizeof path, "%s/%s/d/metrics.csv", dir, exp);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    dst[0] = 0;
    while (fgets(line, sizeof line, f)) { /* columns 4 and 5: loss, task_loss (column 3 is seconds) */
        char *c = line;
        for (int k = 0; k < 3 && c; k++) c = strchr(c, ',') ? strchr(c, ',') + 1 : NULL;
        if (!c) continue;
        char *end = strchr(c, ',');
        end = end ? strchr(end + 1, ',') : NULL;
        if (end) *end = 0;
        strncat(dst, c, n - strlen(dst) - 2);
        strcat(dst, ";");
    }
    fclose(f);
}

/* Two runs of one config: every tensor of the last and best checkpoints (weights, Adam
 * moments, router and loss state) bit for bit, and the same routing.csv. */
static void same_state(const char *d1, const char *d2, const char *exp) {
    static const char *files[] = {"checkpoints/last.safetensors", "checkpoints/best.safetensors"};
    for (size_t i = 0; i < 2; i++) {
        char pa[512], pb[512];
        snprintf(pa, sizeof pa, "%s/%s/d/%s", d1, exp, files[i]);
        snprintf(pb, sizeof pb, "%s/%s/d/%s", d2, exp, files[i]);
        size_t na = 0, nb = 0;
        char *ta = tu_tensor_bytes(pa, &na), *tb = tu_tensor_bytes(pb, &nb);
        ck_assert_msg(ta && tb, "cannot read %s or %s", pa, pb);
        ck_assert_msg(na == nb && na > 1000 && memcmp(ta, tb, na) == 0, "tensors of %s and %s differ", pa, pb);
        free(ta);
        free(tb);
    }
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/%s/d/routing.csv", d1, exp);
    snprintf(pb, sizeof pb, "%s/%s/d/routing.csv", d2, exp);
    char *ra = tu_slurp(pa, NULL), *rb = tu_slurp(pb, NULL);
    ck_assert_msg(ra && rb && strlen(ra) > 100 && strcmp(ra, rb) == 0, "routing.csv of the two runs differ");
    free(ra);
    free(rb);
}

/* Two runs of one config: the same loss columns of metrics.csv (more than a few characters
   of them), then same_state. */
static void same_run(const char *d1, const char *d2, const char *exp) {
    char a[4096], b[4096];
    loss_column(d1, exp, a, sizeof a);
    loss_column(d2, exp, b, sizeof b);
    ck_assert_str_eq(a, b);
    ck_assert_int_gt((int)strlen(a), 20);
    same_state(d1, d2, exp);
}

START_TEST(determinism) {
    const char *d1 = tu_tmpdir("det1");
    char d1s[256];
    snprintf(d1s, sizeof d1s, "%s", d1);
    int rc = run(MOELAB " run " SYNTH " results.run_id=d results.dir=%s", tu_build(), d1s);
    ck_assert_msg(rc == 0, "%s", out);
    const char *d2 = tu_tmpdir("det2");
    rc = run(MOELAB " run " SYNTH " results.run_id=d results.dir=%s", tu_build(), d2);
    ck_assert_msg(rc == 0, "%s", out);
    same_run(d1s, d2, "test-synth");
}
END_TEST

/* the convolutional model with 2 threads: bitwise identical loss sequence */
START_TEST(determinism_srnn_two_threads) {
    char d1[256];
    snprintf(d1, sizeof d1, "%s", tu_tmpdir("sdet1"));
    int rc = run(MOELAB " run tests/fixtures/run/srnn_small.yaml results.run_id=d results.dir=%s", tu_build(), d1);
    ck_assert_msg(rc == 0, "%s", out);
    const char *d2 = tu_tmpdir("sdet2");
    rc = run(MOELAB " run tests/fixtures/run/srnn_small.yaml results.run_id=d results.dir=%s", tu_build(), d2);
    ck_assert_msg(rc == 0, "%s", out);
    same_run(d1, d2, "test-srnn");
}
END_TEST

/* Many experts, lazy (optim.idle_experts), on 1 and on 2 threads: the same losses, weights,
   moments and routing bit for bit. 160 experts x batch 32 takes the routers' row loops onto
   the threads (plugin_aux.h, Threads: 4 096 elements and more), the experts' loop shares the
   used experts among them; gates that are probabilities and renormalised ones. */
START_TEST(determinism_many_experts_lazy_threads) {
    for (int renorm = 0; renorm <= 1; renorm++) {
        char d1[256], d2[256];
        snprintf(d1, sizeof d1, "%s", tu_tmpdir("ldet1"));
        snprintf(d2, sizeof d2, "%s", tu_tmpdir("ldet2"));
        const char *dirs[2] = {d1, d2};
        for (int t = 0; t < 2; t++) {
            char args[512];
            snprintf(args, sizeof args, " model.experts=160 optim.idle_experts=lazy train.epochs=2 train.threads=%d "
                     "router.renormalize=%s results.run_id=d results.dir=%s", t + 1, renorm ? "true" : "false", dirs[t]);
            int rc = run(MOELAB " run " SYNTH "%s", tu_build(), args);
            ck_assert_msg(rc == 0, "%s", out);
        }
        same_run(d1, d2, "test-synth");
    }
}
END_TEST

START_TEST(out_of_tree_plugin_by_yaml) {
    const char *tmp = tu_tmpdir("oot");
    int rc = run("cc -O2 -shared -fPIC -fvisibility=hidden -I core/include tests/fixtures/out_of_tree/my_router.c -o %s/my_router.so%s", tmp, "");
    ck_assert_msg(rc == 0, "%s", out);
    char cfg[512];
    snprintf(cfg, sizeof cfg, "%s/exp.yaml", tmp);
    FILE *f = fopen(cfg, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "base: %s/tests/fixtures/run/synth.yaml\nrouter:\n  name: %s/my_router.so\n  temperature: 2.0\ntrain:\n  epochs: 1\n",
            getcwd(cfg + 256, 256), tmp);
    fclose(f);
    snprintf(cfg, sizeof cfg, "%s/exp.yaml", tmp);
    rc = run(MOELAB " run %s", tu_build(), cfg);
    ck_assert_msg(rc == 0, "%s", out);
    /* and by name through plugin_path */
    f = fopen(cfg, "a");
    fprintf(f, "plugin_path: [%s]\n", tmp);
    fclose(f);
    rc = run(MOELAB " run %s router.name=my_router", tu_build(), cfg);
    ck_assert_msg(rc == 0, "%s", out);
    rc = run(MOELAB " plugin-test %s/my_router.so", tu_build(), tmp);
    ck_assert_msg(rc == 0, "%s", out);
}
END_TEST

START_TEST(plugin_commands) {
    int rc = run(MOELAB " plugins%s", tu_build(), "");
    ck_assert_int_eq(rc, 0);
    assert_contains("softmax_topk");
    assert_contains("renormalize");
    assert_contains("progressive");
    rc = run(MOELAB " plugin-test %s/tests/plugins/broken_grad.so", tu_build(), tu_build());
    ck_assert_int_eq(rc, 1);
    assert_contains("FAIL gradient");
    rc = run(MOELAB " plugin-test %s/plugins/noisy_topk.so", tu_build(), tu_build());
    ck_assert_msg(rc == 0, "%s", out);
}
END_TEST

/* A signal during setup (building a big model can take minutes) ends the process at once:
 * there is nothing to save yet. Before, the flag was only read by the training loop. */
START_TEST(sigterm_during_setup) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s/moelab run " SYNTH " results.dir=/tmp/moelab-test-setup-sig model.moe_layers=64 model.experts=4096 "
             "model.latent=1 model.hidden=1 model.expert_hidden=1 >/dev/null 2>&1 & p=$!; sleep 1; kill -TERM $p; "
             "sleep 2; if kill -0 $p 2>/dev/null; then kill -KILL $p; echo STILL-RUNNING; fi; wait $p; echo \"exit $?\"",
             tu_build());
    int rc = run("%s%s", cmd, "");
    ck_assert_int_eq(rc, 0);
    ck_assert_msg(strstr(out, "STILL-RUNNING") == NULL, "still running 2 s after SIGTERM:\n%s", out);
    assert_contains("exit 143");
    rc = run("rm -rf /tmp/moelab-test-setup-sig%s%s", "", "");
}
END_TEST

/* A corrupt interrupt checkpoint stops --resume with the reason, instead of silently
 * falling back to 'last'; --from last then continues. */
START_TEST(corrupt_interrupt_checkpoint_named) {
    const char *tmp = tu_tmpdir("ckbad");
    char dir[512], ck[600];
    snprintf(dir, sizeof dir, "%s/test-synth/r", tmp);
    snprintf(ck, sizeof ck, "%s/checkpoints/interrupt.safetensors", dir);
    int rc = run("MOELAB_TEST_INTERRUPT_AT_STEP=90 %s/moelab run " SYNTH " results.dir=%s results.run_id=r", tu_build(), tmp);
    ck_assert_msg(rc == 130, "%s", out);
    FILE *f = fopen(ck, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, -100, SEEK_END), 0);
    int c = fgetc(f);
    ck_assert_int_eq(fseek(f, -100, SEEK_END), 0);
    fputc(c ^ 0xff, f);
    fclose(f);
    rc = run("%s/moelab run --resume %s", tu_build(), dir);
    ck_assert_msg(rc == 1, "%s", out);
    assert_contains("checkpoints/interrupt.safetensors cannot be used");
    assert_contains("checksum mismatch");
    rc = run("%s/moelab run --resume %s --from last", tu_build(), dir);
    ck_assert_msg(rc == 0, "%s", out);
    run("rm -rf %s%s", tmp, "");
}
END_TEST

/* Every subcommand answers --help on stdout with exit 0, and runs nothing. */
START_TEST(every_subcommand_has_help) {
    const char *cmds[] = {"run", "plugins", "plugin-test", "bench", "lua", "version", "sweep"};
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++) {
        char want[64];
        snprintf(want, sizeof want, "usage: moelab %s", cmds[i]);
        int rc = run(MOELAB " %s --help 2>/dev/null", tu_build(), cmds[i]);
        ck_assert_msg(rc == 0, "moelab %s --help: exit %d\n%s", cmds[i], rc, out);
        assert_contains(want);
    }
    ck_assert_int_eq(run(MOELAB " --help%s", tu_build(), ""), 0);
    assert_contains("moelab COMMAND --help");
}
END_TEST

START_TEST(fashion_mnist_end_to_end) {
    struct stat st;
    if (stat("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", &st) != 0) {
        ck_abort_msg("Fashion-MNIST is missing; make test installs dataset-fashion-mnist");
    }
    int rc = run(MOELAB " run tests/fixtures/run/fashion.yaml%s", tu_build(), "");
    ck_assert_msg(rc == 0, "%s", out);
}
END_TEST

/* `moelab plugin-test` passes on every built-in plugin */
START_TEST(plugin_test_every_builtin) {
    char cmd[512], path[512];
    snprintf(cmd, sizeof cmd, "ls %s/plugins/*.so", tu_build());
    FILE *ls = popen(cmd, "r");
    ck_assert_ptr_nonnull(ls);
    int n = 0;
    while (fgets(path, sizeof path, ls)) {
        path[strcspn(path, "\n")] = 0;
        int rc = run(MOELAB " plugin-test %s", tu_build(), path);
        ck_assert_msg(rc == 0, "%s:\n%s", path, out);
        n++;
    }
    pclose(ls);
    ck_assert_int_ge(n, 15);
}
END_TEST

/* every config shipped in configs/ validates and builds (data, model, plugins) */
START_TEST(shipped_configs_build) {
    FILE *ls = popen("find configs -name '*.yaml' | sort", "r");
    ck_assert_ptr_nonnull(ls);
    char path[512], tmp[256];
    snprintf(tmp, sizeof tmp, "%s", tu_tmpdir("cfgs"));
    int n = 0;
    while (fgets(path, sizeof path, ls)) {
        path[strcspn(path, "\n")] = 0;
        char args[1024];
        snprintf(args, sizeof args, "%s script=tests/fixtures/run/noop.lua results.dir=%s", path, tmp);
        int rc = run(MOELAB " run %s", tu_build(), args);
        ck_assert_msg(rc == 0, "%s:\n%s", path, out);
        n++;
    }
    pclose(ls);
    ck_assert_int_ge(n, 10);
}
END_TEST

/* summary.json ties the result to what made it: seed, overrides, group, times, and the
   provenance (version, commit, command, config, plugins with their sha256, threads, BLAS);
   a resume keeps the start's and adds itself to "resumes". --print-config prints the
   resolved config. SHA-256 itself is checked against FIPS 180-4's examples. */
static const ml_jv *member(const ml_jv *v, const char *k) {
    const ml_jv *m = ml_jv_get(v, k);
    ck_assert_msg(m != NULL, "summary.json lacks '%s'", k);
    return m;
}

START_TEST(provenance_in_summary) {
    ml_sha256 h;
    unsigned char d[32];
    char hex[65];
    ml_sha256_init(&h);
    ml_sha256_update(&h, "abc", 3);
    ml_sha256_final(&h, d);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ml_sha256_init(&h);
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    for (size_t i = 0; i < strlen(two); i++) ml_sha256_update(&h, two + i, 1); /* byte by byte */
    ml_sha256_final(&h, d);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    ck_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");

    char dir[256];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("prov"));
    int rc = run(MOELAB " run " SYNTH " results.dir=%s results.run_id=p train.seed=7 router.k=1 train.epochs=2", tu_build(),
                 dir);
    ck_assert_msg(rc == 0, "%s", out);
    char path[600];
    snprintf(path, sizeof path, "%s/test-synth/p/summary.json", dir);
    char *text = tu_slurp(path, NULL);
    ck_assert_ptr_nonnull(text);
    ml_jv *v = ml_jv_parse(text, strlen(text));
    ck_assert_ptr_nonnull(v);
    ck_assert_int_eq(member(v, "seed")->i, 7);
    ck_assert_int_eq(member(v, "overrides")->n, 5);
    ck_assert_str_eq(member(v, "group")->str, "router.k=1 train.epochs=2");
    ck_assert_int_eq((int)strlen(member(v, "started")->str), 20);
    ck_assert_int_eq((int)strlen(member(v, "ended")->str), 20);
    const ml_jv *p = member(v, "provenance");
    ck_assert_str_eq(member(p, "moelab")->str, ML_VERSION);
    const char *commit = member(p, "commit")->str;
    ck_assert_msg(strlen(commit) >= 40 || !strcmp(commit, "unknown"), "commit '%s'", commit);
    ck_assert_ptr_nonnull(strstr(member(p, "command")->str, " run " SYNTH " results.dir="));
    ck_assert_int_eq(member(p, "config")->str[0], '/');
    ck_assert_int_eq(member(p, "threads")->i, 1);
    ck_assert_ptr_nonnull(member(p, "blas")->str);
    const ml_jv *pl = member(p, "plugins");
    ck_assert_int_eq(pl->n, 3); /* softmax_topk, load_balance, fixed */
    for (int i = 0; i < pl->n; i++) {
        const char *f = member(&pl->items[i], "path")->str;
        ck_assert_int_eq(ml_sha256_file(f, hex), ML_OK);
        ck_assert_str_eq(member(&pl->items[i], "sha256")->str, hex);
        ck_assert_str_eq(member(&pl->items[i], "abi")->str, "1.2");
    }
    ck_assert_int_eq(run("sha256sum %s | cut -c1-64", member(&pl->items[0], "path")->str, ""), 0);
    ck_assert_int_eq(strncmp(out, member(&pl->items[0], "sha256")->str, 64), 0);
    ml_jv_free(v);
    free(text);
    /* a resume keeps the start's provenance and lists itself */
    char cmd[1200], cwd[512];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    snprintf(cmd, sizeof cmd, "MOELAB_TEST_INTERRUPT_AT_STEP=60 %s/moelab run " SYNTH " results.dir=%s results.run_id=q "
             "train.epochs=2", tu_build(), dir);
    rc = run("%s%s", cmd, "");
    ck_assert_int_eq(rc, 130);
    snprintf(cmd, sizeof cmd, "cd /tmp && %s/%s/moelab run --resume %s/test-synth/q", cwd, tu_build(), dir);
    rc = run("%s%s", cmd, "");
    ck_assert_msg(rc == 0, "%s", out);
    snprintf(path, sizeof path, "%s/test-synth/q/summary.json", dir);
    text = tu_slurp(path, NULL);
    v = ml_jv_parse(text, strlen(text));
    ck_assert_ptr_nonnull(v);
    ck_assert_str_eq(member(v, "group")->str, "train.epochs=2");
    ck_assert_ptr_nonnull(strstr(member(member(v, "provenance"), "command")->str, " results.run_id=q "));
    const ml_jv *rs = member(v, "resumes");
    ck_assert_int_eq(rs->n, 1);
    ck_assert_str_eq(member(&rs->items[0], "from")->str, "interrupt");
    ck_assert_ptr_nonnull(strstr(member(&rs->items[0], "command")->str, "--resume"));
    ml_jv_free(v);
    free(text);
    /* --print-config */
    rc = run(MOELAB " run " SYNTH " router.k=1 --print-config%s", tu_build(), "");
    ck_assert_msg(rc == 0, "%s", out);
    assert_contains("experiment: \"test-synth\"\nscript: \"/");
    assert_contains("  k: 1\n");
    rc = run(MOELAB " run " SYNTH " router.k=100 --print-config%s", tu_build(), "");
    ck_assert_int_eq(rc, 2);
    assert_contains("router.k must be in [1, 64], got 100");
    tu_rm_rf(dir);
}
END_TEST

/* Progress: one line per epoch with task and validation loss, experts and active experts per
   layer and the ETA; growth printed as it happens; --quiet prints none of it. */
START_TEST(progress_lines) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("progress"));
    int rc = run(MOELAB " run " SYNTH " results.dir=%s schedule.name=progressive schedule.start=2 "
                 "schedule.every_images=1000 schedule.max=4", tu_build(), dir);
    ck_assert_msg(rc == 0, "%s", out);
    assert_contains("epoch 1/3: task ");
    assert_contains(", val ");
    assert_contains(" | moe1 ");
    assert_contains("/4 active");
    assert_contains("(new experts ");
    assert_contains(", ETA ");
    assert_contains("epoch 3/3: task ");
    assert_contains(": experts_added {\"layer\":1,\"added\":1,\"from\":2,\"to\":3,");
    rc = run(MOELAB " run " SYNTH " results.dir=%s --quiet", tu_build(), dir);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_msg(!strstr(out, "epoch 1"), "--quiet printed progress:\n%s", out);
    assert_contains("moelab: done; results in ");
    tu_rm_rf(dir);
}
END_TEST

/* PNG width and height from its IHDR, or 0 when the file is not a PNG. */
static int png_size(const char *path, int *w, int *h) {
    unsigned char b[24];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(b, 1, sizeof b, f);
    fclose(f);
    if (n < 24 || memcmp(b, "\x89PNG\r\n\x1a\n", 8) || memcmp(b + 12, "IHDR", 4)) return 0;
    *w = b[16] << 24 | b[17] << 16 | b[18] << 8 | b[19];
    *h = b[20] << 24 | b[21] << 16 | b[22] << 8 | b[23];
    return 1;
}

/* The camouflage segmentation MoE end to end: metrics columns, predictions (real PNGs of the
   image size, per-image metrics with the experts each layer chose), the habitat x expert
   table, the seed's rule beside moelab's signals; then staged training: a second run's
   encoder initialised from the first run's checkpoint by name. */
START_TEST(cod_segmentation_run) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir("cod"));
    int rc = run(MOELAB " run tests/fixtures/run/cod_small.yaml results.dir=%s results.run_id=a", tu_build(), dir);
    ck_assert_msg(rc == 0, "%s", out);
    assert_contains("epoch 2/2: task ");
    assert_contains(", IoU ");
    char p[700];
    snprintf(p, sizeof p, "%s/test-cod/a/metrics.csv", dir);
    char *m = tu_slurp(p, NULL);
    ck_assert_ptr_nonnull(m);
    const char *cols[] = {"val_iou", "val_dice", "val_mae", "val_s", "val_e_mean", "val_e_max", "val_e_adaptive",
                          "val_wf", "moe4_active", "val_moe1_nmi", "seed_rule", "collapsed_layers", "best_val_iou"};
    for (size_t i = 0; i < sizeof cols / sizeof *cols; i++)
        ck_assert_msg(strstr(m, cols[i]), "metrics.csv lacks %s:\n%.300s", cols[i], m);
    free(m);
    for (int i = 0; i < 2; i++) {
        const char *what[] = {"image", "gt", "pred"};
        for (int k = 0; k < 3; k++) {
            int w = 0, h = 0;
            snprintf(p, sizeof p, "%s/test-cod/a/predictions/%04d_%s.png", dir, i, what[k]);
            ck_assert_msg(png_size(p, &w, &h) && w == 32 && h == 32, "%s is not a 32x32 PNG", p);
        }
    }
    snprintf(p, sizeof p, "%s/test-cod/a/predictions/0002_pred.png", dir);
    ck_assert_int_ne(access(p, F_OK), 0); /* seg.predictions: 2 */
    snprintf(p, sizeof p, "%s/test-cod/a/predictions/metrics.csv", dir);
    m = tu_slurp(p, NULL);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(strstr(m, "epoch,image,index,label,label_name,iou,dice,mae,s,e_mean,e_adaptive,wf,moe1_experts,"));
    int lines = 0;
    for (const char *q = m; *q; q++) lines += *q == '\n';
    ck_assert_int_eq(lines, 33); /* the header and every validation image */
    free(m);
    snprintf(p, sizeof p, "%s/test-cod/a/routing_labels.csv", dir);
    m = tu_slurp(p, NULL);
    ck_assert_ptr_nonnull(m);
    ck_assert_ptr_nonnull(strstr(m, "epoch,split,layer,label,label_name,expert,slots,share\n"));
    ck_assert_ptr_nonnull(strstr(m, ",val,4,2,underwater,2,"));
    free(m);
    /* staged: the encoder of run a initialises run b */
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "%s/moelab run tests/fixtures/run/cod_small.yaml results.dir=%s results.run_id=b "
             "train.epochs=1 'model.init_match=enc.*' model.init_from=%s/test-cod/a/checkpoints/last.safetensors",
             tu_build(), dir, dir);
    rc = run("%s%s", cmd, "");
    ck_assert_msg(strstr(out, "moelab: done"), "%s", out);
    snprintf(p, sizeof p, "%s/test-cod/b/events.jsonl", dir);
    m = tu_slurp(p, NULL);
    ck_assert_ptr_nonnull(m);
    ck_assert_msg(strstr(m, "\"kind\":\"init_from\"") && strstr(m, "\"tensors\":16"), "%s", m);
    free(m);
    rc = run(MOELAB " run tests/fixtures/run/cod_small.yaml results.dir=%s model.init_from=nothing.safetensors", tu_build(),
             dir);
    ck_assert_int_eq(rc, 2);
    assert_contains("model.init_from: 'nothing.safetensors' not found");
    /* a dataset without masks cannot train it */
    rc = run(MOELAB " run tests/fixtures/run/cod_small.yaml results.dir=%s data.dataset=synthetic", tu_build(), dir);
    ck_assert_int_ne(rc, 0);
    assert_contains("it needs a dataset with masks");
    tu_rm_rf(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("run");
    TCase *t = tcase_create("run");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, config_errors_exit_2_and_run_nothing);
    tcase_add_test(t, runtime_error_keeps_results);
    tcase_add_test(t, growth_mid_training);
    tcase_add_test(t, checkpoint_round_trip);
    tcase_add_test(t, sandbox);
    tcase_add_test(t, standalone_lua);
    tcase_add_test(t, default_script_and_schedule);
    tcase_add_test(t, determinism);
    tcase_add_test(t, determinism_srnn_two_threads);
    tcase_add_test(t, determinism_many_experts_lazy_threads);
    tcase_add_test(t, out_of_tree_plugin_by_yaml);
    tcase_add_test(t, plugin_commands);
    tcase_add_test(t, every_subcommand_has_help);
    tcase_add_test(t, provenance_in_summary);
    tcase_add_test(t, progress_lines);
    tcase_add_test(t, cod_segmentation_run);
    tcase_add_test(t, sigterm_during_setup);
    tcase_add_test(t, corrupt_interrupt_checkpoint_named);
    tcase_add_test(t, fashion_mnist_end_to_end);
    tcase_add_test(t, shipped_configs_build);
    tcase_add_test(t, plugin_test_every_builtin);
    tcase_add_test(t, collapse_intervention);
    suite_add_tcase(s, t);
    return tu_run(s);
}
