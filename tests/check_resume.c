/* check_resume.c — checkpoints that are verified and never damaged, and runs that resume
 * exactly: metadata validation (hand-made hostile checkpoints), non-finite weights refused
 * on save and on load, every RNG stream saved, loading a checkpoint older than the growth,
 * SIGINT/SIGTERM handling, and `moelab run --resume` giving the same final checkpoint and
 * metrics as an uninterrupted run (with and without progressive growth). */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "json.h"
#include "safetensors.h"
#include "testutil.h"

#define SYNTH "tests/fixtures/run/synth.yaml"

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    ck_assert_int_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return b;
}

/* ------------------------------------------------------- in-process experiment */

static ml_experiment *new_exp(const char *dir, const char *extra) {
    setenv("MOELAB_PLUGIN_PATH", tu_path("%s/plugins", tu_build()), 1);
    char o1[512], o2[512];
    snprintf(o1, sizeof o1, "results.dir=%s", dir);
    snprintf(o2, sizeof o2, "%s", extra ? extra : "train.epochs=1");
    const char *ov[] = {o1, "results.run_id=r", o2};
    int code;
    ml_experiment *e = ml_exp_new(SYNTH, ov, 3, &code);
    ck_assert_msg(e != NULL, "%s", ml_error());
    ck_assert_int_eq(ml_exp_open_results(e), ML_OK);
    ml_epoch_stats st;
    ck_assert_msg(ml_exp_train_epoch(e, NULL, NULL, &st) == ML_OK, "%s", ml_error());
    return e;
}

/* Copies src to dst with metadata `key` set to value (NULL: removed) and, when nan_tensor
 * is given, a NaN written into that tensor. */
static void rewrite(const char *src, const char *dst, const char *key, const char *value, const char *nan_tensor) {
    ml_st_file *f = ml_st_open(src);
    ck_assert_msg(f != NULL, "%s", ml_error());
    size_t len;
    char *raw = slurp(src, &len);
    uint64_t hn;
    memcpy(&hn, raw, 8);
    ml_jv *h = ml_jv_parse(raw + 8, (size_t)hn);
    ck_assert_ptr_nonnull(h);
    const ml_jv *md = ml_jv_get(h, "__metadata__");
    ck_assert_ptr_nonnull(md);
    const char *keys[256], *vals[256];
    int nm = 0, seen = 0;
    for (int i = 0; i < md->n; i++) {
        if (!strcmp(md->keys[i], "checksum")) continue;
        if (!strcmp(md->keys[i], key ? key : "")) {
            seen = 1;
            if (!value) continue;
            keys[nm] = md->keys[i];
            vals[nm++] = value;
            continue;
        }
        keys[nm] = md->keys[i];
        vals[nm++] = md->items[i].str;
    }
    if (key && !seen && value) {
        keys[nm] = key;
        vals[nm++] = value;
    }
    int n = ml_st_count(f);
    ml_st_tensor *t = calloc((size_t)n, sizeof *t);
    float *poisoned = NULL;
    for (int i = 0; i < n; i++) {
        int nd;
        int64_t sh4[4];
        t[i].name = ml_st_name(f, i);
        t[i].data = ml_st_get(f, t[i].name, &nd, sh4);
        t[i].ndim = nd;
        size_t cnt = 1;
        for (int d = 0; d < nd; d++) {
            t[i].shape[d] = sh4[d];
            cnt *= (size_t)sh4[d];
        }
        if (nan_tensor && !strcmp(t[i].name, nan_tensor)) {
            poisoned = malloc(cnt * sizeof(float));
            memcpy(poisoned, t[i].data, cnt * sizeof(float));
            poisoned[cnt / 2] = NAN;
            t[i].data = poisoned;
        }
    }
    ck_assert_msg(ml_st_write(dst, t, n, keys, vals, nm) == ML_OK, "%s", ml_error());
    free(poisoned);
    free(t);
    ml_jv_free(h);
    free(raw);
    ml_st_close(f);
}

static float *snapshot(const ml_model *m) {
    float *s = malloc(m->P.total * sizeof(float));
    memcpy(s, m->P.data, m->P.total * sizeof(float));
    return s;
}

/* load must fail with `needle` in the message, and leave the model untouched */
static void refused(ml_experiment *e, const char *path, const char *needle) {
    float *before = snapshot(e->model);
    int64_t t = e->opt.t;
    int ep;
    int64_t st;
    ck_assert_msg(ml_exp_load_checkpoint(e, path, &ep, &st) == ML_ERR, "%s loaded (expected: %s)", path, needle);
    ck_assert_msg(strstr(ml_error(), needle) != NULL, "expected '%s' in '%s'", needle, ml_error());
    ck_assert_msg(strstr(ml_error(), path) != NULL, "the message must name the file: '%s'", ml_error());
    ck_assert_int_eq(memcmp(before, e->model->P.data, e->model->P.total * sizeof(float)), 0);
    ck_assert_int_eq(t, e->opt.t);
    free(before);
}

START_TEST(metadata_is_validated) {
    const char *tmp = tu_tmpdir("ckmeta");
    char dir[256], good[512], bad[512];
    snprintf(dir, sizeof dir, "%s", tmp);
    ml_experiment *e = new_exp(dir, NULL);
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "good"), ML_OK);
    snprintf(good, sizeof good, "%s/test-synth/r/checkpoints/good.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    static const struct { const char *key, *value, *needle; } cases[] = {
        {"step", "-3", "metadata 'step' is '-3', expected an integer >= 0"},
        {"step", "12abc", "metadata 'step' is '12abc', expected an integer >= 0"},
        {"epoch", " 1", "metadata 'epoch' is ' 1'"},
        {"images_seen", "", "metadata 'images_seen' is ''"},
        {"optim_t", "99999999999999999999", "metadata 'optim_t' is '99999999999999999999'"},
        {"optim_t", NULL, "metadata 'optim_t' is missing"},
        {"rng.init", "zz", "metadata 'rng.init' is 'zz', expected 64 hexadecimal digits"},
        {"rng.moe0", "0000000000000000000000000000000000000000000000000000000000000000", "metadata 'rng.moe0'"},
        {"rng.moe0", NULL, "metadata 'rng.moe0' is missing"},
        {"format", "other", "metadata 'format' is 'other'"},
        {"format_version", "999", "checkpoint format version '999', this moelab reads version 2"},
        {"format_version", "1", "format version 1 (an older moelab) is not supported"},
        {"experts", "4,4", "2 MoE layers, the model has 1"},
        {"experts", "0", "metadata 'experts' is '0'"},
        {"experts", "x", "metadata 'experts' is 'x'"},
        {"optim_steps", "a=1;b", "metadata 'optim_steps'"},
        {"optim_steps", "nosuch=3", "names tensor 'nosuch'"},
        {"config_hash", "nothex", "metadata 'config_hash' is 'nothex', expected 16 hexadecimal digits"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rewrite(good, bad, cases[i].key, cases[i].value, NULL);
        refused(e, bad, cases[i].needle);
    }
    /* the good one still loads */
    int ep;
    int64_t st;
    ck_assert_msg(ml_exp_load_checkpoint(e, good, &ep, &st) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(ep, 1);
    ml_exp_free(e);
}
END_TEST

START_TEST(nonfinite_checkpoint_refused) {
    const char *tmp = tu_tmpdir("cknan");
    char dir[256], good[512], bad[512];
    snprintf(dir, sizeof dir, "%s", tmp);
    ml_experiment *e = new_exp(dir, NULL);
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "good"), ML_OK);
    snprintf(good, sizeof good, "%s/test-synth/r/checkpoints/good.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    rewrite(good, bad, NULL, NULL, "moe0.expert1.w1");
    refused(e, bad, "tensor 'moe0.expert1.w1' holds non-finite values");
    rewrite(good, bad, NULL, NULL, "optim.v.moe0.expert0.b2");
    refused(e, bad, "tensor 'optim.v.moe0.expert0.b2' holds non-finite values");
    ml_exp_free(e);
}
END_TEST

START_TEST(nonfinite_weights_never_saved) {
    const char *tmp = tu_tmpdir("cksave");
    char dir[256], last[512];
    snprintf(dir, sizeof dir, "%s", tmp);
    ml_experiment *e = new_exp(dir, NULL);
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "last"), ML_OK);
    snprintf(last, sizeof last, "%s/test-synth/r/checkpoints/last.safetensors", dir);
    size_t n0, n1;
    char *before = slurp(last, &n0);
    ml_model *m = e->model;
    int h = ml_params_find(&m->P, "moe0.expert2.w2");
    ck_assert_int_ge(h, 0);
    float keep = ml_params_data(&m->P, h)[5];
    ml_params_data(&m->P, h)[5] = NAN;
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "last"), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "tensor 'moe0.expert2.w2' holds non-finite values") != NULL, "%s", ml_error());
    ml_params_data(&m->P, h)[5] = keep;
    m->P.v[m->P.t[h].off + 1] = INFINITY; /* the moments too */
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "last"), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "'optim.v.moe0.expert2.w2'") != NULL, "%s", ml_error());
    char *after = slurp(last, &n1);
    ck_assert_int_eq(n0, n1);
    ck_assert_int_eq(memcmp(before, after, n0), 0); /* the good file is untouched */
    free(before);
    free(after);
    ml_exp_free(e);
}
END_TEST

START_TEST(rng_of_every_layer_saved) {
    const char *tmp = tu_tmpdir("ckrng");
    char dir[256];
    snprintf(dir, sizeof dir, "%s", tmp);
    ml_experiment *e = new_exp(dir, "model.moe_layers=9");
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "a"), ML_OK);
    ml_rng want = e->model->moe[8]->rng, want0 = e->model->init_rng;
    ml_rng_u64(&e->model->moe[8]->rng);
    ml_rng_u64(&e->model->init_rng);
    int ep;
    int64_t st;
    ck_assert_msg(ml_exp_load_checkpoint(e, "a", &ep, &st) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(memcmp(&want, &e->model->moe[8]->rng, sizeof want), 0);
    ck_assert_int_eq(memcmp(&want0, &e->model->init_rng, sizeof want0), 0);
    ml_exp_free(e);
}
END_TEST

/* A checkpoint taken before experts were added loads into the matching experts; the newer
 * ones keep their parameters, moments and router rows. */
START_TEST(older_checkpoint_keeps_newer_experts) {
    const char *tmp = tu_tmpdir("ckold");
    char dir[256];
    snprintf(dir, sizeof dir, "%s", tmp);
    ml_experiment *e = new_exp(dir, NULL);
    ml_model *m = e->model;
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "pre"), ML_OK);
    float *pre = snapshot(m);
    int h0 = ml_params_find(&m->P, "moe0.expert0.w1");
    size_t n0 = m->P.t[h0].n;
    float *e0 = malloc(n0 * sizeof(float));
    memcpy(e0, ml_params_data(&m->P, h0), n0 * sizeof(float));
    free(pre);
    ck_assert_int_eq(ml_exp_add_experts(e, 0, 2, "test"), ML_OK);
    ml_epoch_stats es;
    ck_assert_int_eq(ml_exp_train_epoch(e, NULL, NULL, &es), ML_OK);
    int h5 = ml_params_find(&m->P, "moe0.expert5.w1");
    ck_assert_int_ge(h5, 0);
    size_t n5 = m->P.t[h5].n;
    float *e5 = malloc(n5 * sizeof(float)), *e5m = malloc(n5 * sizeof(float));
    memcpy(e5, ml_params_data(&m->P, h5), n5 * sizeof(float));
    memcpy(e5m, m->P.m + m->P.t[h5].off, n5 * sizeof(float));
    int64_t step5 = m->P.t[h5].step;
    int hr = -1;
    for (int i = 0; i < m->P.count; i++)
        if (strncmp(m->P.t[i].name, "moe0.router.", 12) == 0 && m->P.t[i].shape[0] == 6) hr = i;
    ck_assert_int_ge(hr, 0);
    size_t row = m->P.t[hr].n / 6;
    float *rrows = malloc(2 * row * sizeof(float));
    memcpy(rrows, ml_params_data(&m->P, hr) + 4 * row, 2 * row * sizeof(float));
    int ep;
    int64_t st;
    ck_assert_msg(ml_exp_load_checkpoint(e, "pre", &ep, &st) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(m->moe[0]->N, 6);
    h0 = ml_params_find(&m->P, "moe0.expert0.w1");
    h5 = ml_params_find(&m->P, "moe0.expert5.w1");
    ck_assert_int_eq(memcmp(e0, ml_params_data(&m->P, h0), n0 * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(e5, ml_params_data(&m->P, h5), n5 * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(e5m, m->P.m + m->P.t[h5].off, n5 * sizeof(float)), 0);
    ck_assert_int_eq(m->P.t[h5].step, step5);
    ck_assert_int_eq(memcmp(rrows, ml_params_data(&m->P, hr) + 4 * row, 2 * row * sizeof(float)), 0);
    /* and training goes on with 6 experts */
    ck_assert_int_eq(ml_exp_train_epoch(e, NULL, NULL, &es), ML_OK);
    free(e0);
    free(e5);
    free(e5m);
    free(rrows);
    ml_exp_free(e);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("resume");
    TCase *c = tcase_create("integrity");
    tcase_set_timeout(c, 60);
    tcase_add_test(c, metadata_is_validated);
    tcase_add_test(c, nonfinite_checkpoint_refused);
    tcase_add_test(c, nonfinite_weights_never_saved);
    tcase_add_test(c, rng_of_every_layer_saved);
    tcase_add_test(c, older_checkpoint_keeps_newer_experts);
    suite_add_tcase(s, c);
    return s;
}

int main(void) { return tu_run(suite()); }
