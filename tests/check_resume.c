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

#include "run/checkpoint.h"
#include "base/json.h"
#include "io/safetensors.h"
#include "testutil.h"

#define SYNTH "tests/fixtures/run/synth.yaml"

static char out[1 << 16];

/* Runs a shell command (stdout+stderr into `out`), returns the exit status. */
static int sh(const char *fmt, ...) ML_PRINTF(1, 2);
static int sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd - 8, fmt, ap);
    va_end(ap);
    strcat(cmd, " 2>&1");
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void assert_out(const char *needle) { ck_assert_msg(strstr(out, needle) != NULL, "expected '%s' in:\n%s", needle, out); }

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

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
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
        if (!strcmp(md->keys[i], "checksum") || !strcmp(md->keys[i], "checksum_covers")) continue;
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

/* "moe1.x" -> "moe0.x" (also after "optim.m." / "optim.v."): names as format 2 wrote them */
static void to_v2_name(const char *name, char *dst, size_t cap) {
    size_t pre = !strncmp(name, "optim.m.", 8) || !strncmp(name, "optim.v.", 8) ? 8 : 0;
    int l, n = 0;
    if (sscanf(name + pre, "moe%d.%n", &l, &n) == 1 && n) snprintf(dst, cap, "%.*smoe%d.%s", (int)pre, name, l - 1, name + pre + n);
    else snprintf(dst, cap, "%s", name);
}

/* A checkpoint of format version 2 (layers counted from 0 in its names) loads into the
   same tensors: old runs' checkpoints keep working after the renumbering. */
START_TEST(format_2_checkpoints_load) {
    const char *tmp = tu_tmpdir("ckv2");
    char dir[256], v3[512], v2[512];
    snprintf(dir, sizeof dir, "%s", tmp);
    ml_experiment *e = new_exp(dir, NULL);
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "v3"), ML_OK);
    snprintf(v3, sizeof v3, "%s/test-synth/r/checkpoints/v3.safetensors", dir);
    snprintf(v2, sizeof v2, "%s/v2.safetensors", dir);
    ml_st_file *f = ml_st_open(v3);
    ck_assert_msg(f != NULL, "%s", ml_error());
    ck_assert_str_eq(ml_st_meta(f, "format_version"), "3");
    ck_assert_ptr_nonnull(ml_st_get(f, "moe1.expert0.w1", NULL, NULL));
    ck_assert_ptr_nonnull(ml_st_meta(f, "rng.moe1"));
    /* downgrade: names, rng.moe<l>, optim_steps, the version */
    int n = ml_st_count(f);
    ml_st_tensor *t = calloc((size_t)n, sizeof *t);
    char (*names)[128] = calloc((size_t)n, 128);
    for (int i = 0; i < n; i++) {
        int nd;
        int64_t sh[4];
        to_v2_name(ml_st_name(f, i), names[i], 128);
        t[i].name = names[i];
        t[i].data = ml_st_get(f, ml_st_name(f, i), &nd, sh);
        t[i].ndim = nd;
        for (int d = 0; d < nd; d++) t[i].shape[d] = sh[d];
    }
    size_t len;
    char *raw = slurp(v3, &len);
    uint64_t hn;
    memcpy(&hn, raw, 8);
    ml_jv *h = ml_jv_parse(raw + 8, (size_t)hn);
    const ml_jv *md = ml_jv_get(h, "__metadata__");
    const char *keys[256], *vals[256];
    char steps[1 << 14] = "";
    int nm = 0;
    for (int i = 0; i < md->n; i++) {
        const char *k = md->keys[i], *v = md->items[i].str;
        if (!strcmp(k, "checksum") || !strcmp(k, "checksum_covers")) continue;
        if (!strcmp(k, "format_version")) v = "2";
        if (!strcmp(k, "rng.moe1")) k = "rng.moe0";
        if (!strcmp(k, "optim_steps")) {
            for (const char *p = v; *p;) {
                const char *end = strchr(p, ';'), *eq = strchr(p, '=');
                char nmb[128], old[128];
                snprintf(nmb, sizeof nmb, "%.*s", (int)(eq - p), p);
                to_v2_name(nmb, old, sizeof old);
                size_t used = strlen(steps);
                snprintf(steps + used, sizeof steps - used, "%s%s=%.*s", used ? ";" : "", old,
                         (int)(end ? end - eq - 1 : (long)strlen(eq + 1)), eq + 1);
                if (!end) break;
                p = end + 1;
            }
            v = steps;
        }
        keys[nm] = k;
        vals[nm++] = v;
    }
    ck_assert_msg(ml_st_write(v2, t, n, keys, vals, nm) == ML_OK, "%s", ml_error());
    ml_jv_free(h);
    free(raw);
    free(t);
    free(names);
    ml_st_close(f);
    /* the model moves on, then the version-2 file takes it back exactly */
    ml_model *m = e->model;
    float *p0 = snapshot(m), *v0 = malloc(m->P.total * sizeof(float));
    memcpy(v0, m->P.v, m->P.total * sizeof(float));
    ml_rng r0 = m->moe[0]->router.rng;
    int64_t s0 = m->P.t[0].step;
    ml_epoch_stats st;
    ck_assert_msg(ml_exp_train_epoch(e, NULL, NULL, &st) == ML_OK, "%s", ml_error());
    ck_assert(memcmp(p0, m->P.data, m->P.total * sizeof(float)) != 0);
    int ep;
    int64_t stp;
    ck_assert_msg(ml_exp_load_checkpoint(e, v2, &ep, &stp) == ML_OK, "%s", ml_error());
    ck_assert(memcmp(p0, m->P.data, m->P.total * sizeof(float)) == 0);
    ck_assert(memcmp(v0, m->P.v, m->P.total * sizeof(float)) == 0);
    ck_assert(memcmp(&r0, &m->moe[0]->router.rng, sizeof r0) == 0);
    ck_assert_int_eq(m->P.t[0].step, s0);
    free(p0), free(v0);
    ml_exp_free(e);
    tu_rm_rf(dir);
}
END_TEST

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
        {"rng.moe1", "0000000000000000000000000000000000000000000000000000000000000000", "metadata 'rng.moe1'"},
        {"rng.moe1", NULL, "metadata 'rng.moe1' is missing"},
        {"format", "other", "metadata 'format' is 'other'"},
        {"format_version", "999", "checkpoint format version '999', this moelab reads versions 2 and 3"},
        {"format_version", "1", "format version 1 (an older moelab) is not supported"},
        {"experts", "4,4", "2 MoE layers, the model has 1"},
        {"experts", "0", "metadata 'experts' is '0'"},
        {"experts", "x", "metadata 'experts' is 'x'"},
        {"experts", "5000", "metadata 'experts' is '5000'"}, /* past ML_MOE_MAX_EXPERTS */
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
    rewrite(good, bad, NULL, NULL, "moe1.expert1.w1");
    refused(e, bad, "tensor 'moe1.expert1.w1' holds non-finite values");
    rewrite(good, bad, NULL, NULL, "optim.v.moe1.expert0.b2");
    refused(e, bad, "tensor 'optim.v.moe1.expert0.b2' holds non-finite values");
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
    int h = ml_params_find(&m->P, "moe1.expert2.w2");
    ck_assert_int_ge(h, 0);
    float keep = ml_params_data(&m->P, h)[5];
    ml_params_data(&m->P, h)[5] = NAN;
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "last"), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "tensor 'moe1.expert2.w2' holds non-finite values") != NULL, "%s", ml_error());
    ml_params_data(&m->P, h)[5] = keep;
    m->P.v[m->P.t[h].off + 1] = INFINITY; /* the moments too */
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "last"), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "'optim.v.moe1.expert2.w2'") != NULL, "%s", ml_error());
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
    ml_rng want = e->model->moe[8]->router.rng, want0 = e->model->init_rng;
    ml_rng_u64(&e->model->moe[8]->router.rng);
    ml_rng_u64(&e->model->init_rng);
    int ep;
    int64_t st;
    ck_assert_msg(ml_exp_load_checkpoint(e, "a", &ep, &st) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(memcmp(&want, &e->model->moe[8]->router.rng, sizeof want), 0);
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
    int h0 = ml_params_find(&m->P, "moe1.expert0.w1");
    size_t n0 = m->P.t[h0].n;
    float *e0 = malloc(n0 * sizeof(float));
    memcpy(e0, ml_params_data(&m->P, h0), n0 * sizeof(float));
    free(pre);
    ck_assert_int_eq(ml_exp_add_experts(e, 0, 2, "test"), ML_OK);
    ml_epoch_stats es;
    ck_assert_int_eq(ml_exp_train_epoch(e, NULL, NULL, &es), ML_OK);
    int h5 = ml_params_find(&m->P, "moe1.expert5.w1");
    ck_assert_int_ge(h5, 0);
    size_t n5 = m->P.t[h5].n;
    float *e5 = malloc(n5 * sizeof(float)), *e5m = malloc(n5 * sizeof(float));
    memcpy(e5, ml_params_data(&m->P, h5), n5 * sizeof(float));
    memcpy(e5m, m->P.m + m->P.t[h5].off, n5 * sizeof(float));
    int64_t step5 = m->P.t[h5].step;
    int hr = -1;
    for (int i = 0; i < m->P.count; i++)
        if (strncmp(m->P.t[i].name, "moe1.router.", 12) == 0 && m->P.t[i].shape[0] == 6) hr = i;
    ck_assert_int_ge(hr, 0);
    size_t row = m->P.t[hr].n / 6;
    float *rrows = malloc(2 * row * sizeof(float));
    memcpy(rrows, ml_params_data(&m->P, hr) + 4 * row, 2 * row * sizeof(float));
    int ep;
    int64_t st;
    ck_assert_msg(ml_exp_load_checkpoint(e, "pre", &ep, &st) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(m->moe[0]->N, 6);
    h0 = ml_params_find(&m->P, "moe1.expert0.w1");
    h5 = ml_params_find(&m->P, "moe1.expert5.w1");
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


/* The values of tensor name (a copy). */
static float *values(const ml_model *m, const char *name, size_t *n) {
    int h = ml_params_find(&m->P, name);
    ck_assert_msg(h >= 0, "no tensor %s", name);
    float *v = malloc(m->P.t[h].n * sizeof(float));
    memcpy(v, ml_params_data(&m->P, h), m->P.t[h].n * sizeof(float));
    if (n) *n = m->P.t[h].n;
    return v;
}

static void holds(const ml_model *m, const char *name, const float *v) {
    int h = ml_params_find(&m->P, name);
    ck_assert_msg(h >= 0, "no tensor %s", name);
    ck_assert_msg(!memcmp(ml_params_data(&m->P, h), v, m->P.t[h].n * sizeof(float)), "%s differs", name);
}

/* Checkpoints across a removal: one taken after it (fewer experts) loads into experts
   0..M-1 of a layer that has grown since, the newer experts staying as they are; one taken
   before it (more experts) grows the layer back and loads every expert; expert tensors load
   by their names, which are the numbers of the checkpoint's time. */
START_TEST(checkpoints_across_a_removal_load) {
    const char *tmp = tu_tmpdir("ckrm");
    char dir[256];
    snprintf(dir, sizeof dir, "%s", tmp);
    ml_experiment *e = new_exp(dir, NULL);
    ml_model *m = e->model;
    ml_epoch_stats es;
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "before"), ML_OK);
    float *b1 = values(m, "moe1.expert1.w1", NULL), *b2 = values(m, "moe1.expert2.w1", NULL);
    const int one = 1;
    ck_assert_msg(ml_exp_remove_experts(e, 0, &one, 1, "test") == ML_OK, "%s", ml_error());
    ck_assert_int_eq(m->moe[0]->N, 3);
    holds(m, "moe1.expert1.w1", b2); /* old expert 2 is expert 1 now */
    ck_assert_int_eq(ml_exp_train_epoch(e, NULL, NULL, &es), ML_OK);
    ck_assert_int_eq(ml_exp_save_checkpoint(e, "after"), ML_OK);
    float *a0 = values(m, "moe1.expert0.w1", NULL), *a2 = values(m, "moe1.expert2.w1", NULL);
    ck_assert_int_eq(ml_exp_add_experts(e, 0, 2, "test"), ML_OK);
    ck_assert_int_eq(ml_exp_train_epoch(e, NULL, NULL, &es), ML_OK);
    float *n4 = values(m, "moe1.expert4.w1", NULL);
    int ep;
    int64_t st;
    /* fewer experts in the file: 0..2 loaded, 3 and 4 kept */
    ck_assert_msg(ml_exp_load_checkpoint(e, "after", &ep, &st) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(m->moe[0]->N, 5);
    holds(m, "moe1.expert0.w1", a0);
    holds(m, "moe1.expert2.w1", a2);
    holds(m, "moe1.expert4.w1", n4);
    /* more experts in the file than a layer shrunk since: it grows to them, all loaded */
    static const int gone[3] = {0, 2, 4};
    ck_assert_msg(ml_exp_remove_experts(e, 0, gone, 3, "test") == ML_OK, "%s", ml_error());
    ck_assert_int_eq(m->moe[0]->N, 2);
    ck_assert_msg(ml_exp_load_checkpoint(e, "before", &ep, &st) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(m->moe[0]->N, 4);
    holds(m, "moe1.expert1.w1", b1);
    holds(m, "moe1.expert2.w1", b2);
    int hr = ml_params_find(&m->P, "moe1.router.w");
    ck_assert_int_eq(m->P.t[hr].shape[0], 4);
    ck_assert_int_eq(ml_exp_train_epoch(e, NULL, NULL, &es), ML_OK);
    free(b1), free(b2), free(a0), free(a2), free(n4);
    ml_exp_free(e);
}
END_TEST

/* ------------------------------------------------------------- resume, end to end */

/* metadata of a safetensors file as a parsed JSON object (owned) and the data section */
static ml_jv *st_header(const char *path, char **data, size_t *dlen) {
    size_t len;
    char *raw = slurp(path, &len);
    uint64_t hn;
    memcpy(&hn, raw, 8);
    ml_jv *h = ml_jv_parse(raw + 8, (size_t)hn);
    ck_assert_ptr_nonnull(h);
    *dlen = len - 8 - (size_t)hn;
    *data = malloc(*dlen + 1);
    memcpy(*data, raw + 8 + hn, *dlen);
    free(raw);
    return h;
}

/* Same tensors bit for bit, same metadata except the keys that record the events file's
 * size (the resumed run has its "resumed" event), the wall clock, and the checksum. */
static void same_checkpoint(const char *a, const char *b) {
    char *da, *db;
    size_t na, nb;
    ml_jv *ha = st_header(a, &da, &na), *hb = st_header(b, &db, &nb);
    ck_assert_msg(na == nb && memcmp(da, db, na) == 0, "tensor data of %s and %s differ", a, b);
    ck_assert_int_eq(ha->n, hb->n);
    for (int i = 0; i < ha->n; i++) {
        if (!strcmp(ha->keys[i], "__metadata__")) continue;
        const ml_jv *x = ml_jv_get(hb, ha->keys[i]);
        ck_assert_msg(x != NULL, "%s missing in %s", ha->keys[i], b);
    }
    const ml_jv *ma = ml_jv_get(ha, "__metadata__"), *mb = ml_jv_get(hb, "__metadata__");
    ck_assert_int_eq(ma->n, mb->n);
    for (int i = 0; i < ma->n; i++) {
        const char *k = ma->keys[i];
        if (!strcmp(k, "checksum") || !strcmp(k, "run.events_bytes") || !strcmp(k, "run.clock")) continue;
        const ml_jv *v = ml_jv_get(mb, k);
        ck_assert_msg(v && !strcmp(v->str, ma->items[i].str), "metadata '%s' differs:\n%.900s\n%.900s", k,
                      ma->items[i].str, v ? v->str : "(missing)");
    }
    ml_jv_free(ha);
    ml_jv_free(hb);
    free(da);
    free(db);
}

/* metrics.csv without the wall-clock column (seconds) */
static char *metrics_no_clock(const char *path) {
    char *t = slurp(path, NULL);
    char *o = calloc(strlen(t) + 1, 1);
    int col = -1;
    {   /* find "seconds" in the header */
        int c = 0;
        for (char *p = t; *p && *p != '\n'; c++) {
            char *end = p + strcspn(p, ",\n");
            if ((size_t)(end - p) == 7 && !strncmp(p, "seconds", 7)) col = c;
            p = *end == ',' ? end + 1 : end;
        }
    }
    ck_assert_int_ge(col, 0);
    char *q = o;
    int c = 0;
    for (char *p = t; *p; p++) {
        if (*p == '\n') {
            *q++ = '\n';
            c = 0;
            continue;
        }
        if (*p == ',') {
            c++;
            if (c != col && !(col == 0 && c == 1)) *q++ = ',';
            continue;
        }
        if (c != col) *q++ = *p;
    }
    free(t);
    return o;
}

/* events.jsonl without the lines an interruption adds: "resumed" and the interrupt
 * checkpoint's checkpoint_saved */
static char *events_no_resume(const char *path) {
    char *t = slurp(path, NULL), *o = calloc(strlen(t) + 1, 1), *q = o;
    for (char *line = t; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line + 1) : strlen(line);
        if (nl) *nl = 0;
        int drop = strstr(line, "\"kind\":\"resumed\"") || strstr(line, "\"tag\":\"interrupt\"");
        if (nl) *nl = '\n';
        if (!drop) {
            memcpy(q, line, n);
            q += n;
        }
        line += n;
    }
    free(t);
    return o;
}

static void same_file_text(char *a, char *b, const char *what) {
    ck_assert_msg(strcmp(a, b) == 0, "%s differ:\n--- straight\n%s\n--- resumed\n%s", what, a, b);
    free(a);
    free(b);
}

static void same_runs(const char *straight, const char *resumed) {
    char a[512], b[512];
    const char *ck[] = {"checkpoints/last.safetensors", "checkpoints/best.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof a, "%s/%s", straight, ck[i]);
        snprintf(b, sizeof b, "%s/%s", resumed, ck[i]);
        same_checkpoint(a, b);
    }
    snprintf(a, sizeof a, "%s/metrics.csv", straight);
    snprintf(b, sizeof b, "%s/metrics.csv", resumed);
    same_file_text(metrics_no_clock(a), metrics_no_clock(b), "metrics.csv rows");
    snprintf(a, sizeof a, "%s/routing.csv", straight);
    snprintf(b, sizeof b, "%s/routing.csv", resumed);
    same_file_text(slurp(a, NULL), slurp(b, NULL), "routing.csv");
    const char *steps[] = {"steps.csv", "routing_steps.csv"};
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof a, "%s/%s", straight, steps[i]);
        snprintf(b, sizeof b, "%s/%s", resumed, steps[i]);
        if (exists(a) || exists(b)) same_file_text(slurp(a, NULL), slurp(b, NULL), steps[i]);
    }
    snprintf(a, sizeof a, "%s/events.jsonl", straight);
    snprintf(b, sizeof b, "%s/events.jsonl", resumed);
    same_file_text(slurp(a, NULL), events_no_resume(b), "events.jsonl (without the resumed and interrupt-checkpoint events)");
    snprintf(b, sizeof b, "%s/summary.json", resumed);
    char *s = slurp(b, NULL);
    ck_assert_msg(strstr(s, "\"status\":\"ok\"") != NULL, "%s", s);
    free(s);
}

/* 4 epochs straight, then the same run stopped at `stop_step` and resumed: same results.
 * Both runs use the same run directory path (the straight one is moved away first), so
 * their configs, and the checkpoints' config hashes, are the same. */
static void equivalence_of(const char *config, const char *tag, const char *args, int stop_step, int stop_epoch) {
    const char *tmp = tu_tmpdir(tag);
    char dir[256], run[512], straight[512];
    snprintf(dir, sizeof dir, "%s", tmp);
    snprintf(run, sizeof run, "%s/test-synth/r", dir);
    snprintf(straight, sizeof straight, "%s/straight", dir);
    const char *b = tu_build();
    int rc = sh("%s/moelab run %s train.epochs=4 %s results.dir=%s results.run_id=r", b, config, args, dir);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_int_eq(rename(run, straight), 0);
    rc = sh("MOELAB_TEST_INTERRUPT_AT_STEP=%d %s/moelab run %s train.epochs=4 %s results.dir=%s results.run_id=r",
            stop_step, b, config, args, dir);
    ck_assert_msg(rc == 130, "exit %d: %s", rc, out);
    char line[1024];
    snprintf(line, sizeof line, "moelab: interrupted at epoch %d step %d; resume with: moelab run --resume %s\n", stop_epoch,
             stop_step, run);
    assert_out(line);
    ck_assert_msg(!strstr(out, "traceback"), "%s", out);
    char p[600];
    snprintf(p, sizeof p, "%s/checkpoints/interrupt.safetensors", run);
    ck_assert(exists(p));
    snprintf(p, sizeof p, "%s/summary.json", run);
    char *s = slurp(p, NULL);
    ck_assert_msg(strstr(s, "\"status\":\"interrupted\"") != NULL, "%s", s);
    free(s);
    rc = sh("%s/moelab run --resume %s", b, run);
    ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
    assert_out("from checkpoint 'interrupt'");
    same_runs(straight, run);
}

static void equivalence(const char *tag, const char *args, int stop_step, int stop_epoch) {
    equivalence_of(SYNTH, tag, args, stop_step, stop_epoch);
}

/* The camouflage segmentation MoE (scripts/cod.lua, warm-up and the monitor in exp.state),
   stopped in epoch 3 and resumed: the same checkpoints, metrics, routing, habitat table and
   per-image predictions as the run never interrupted. */
START_TEST(resume_segmentation_is_exact) {
    const char *tmp = tu_tmpdir("eqcod");
    char dir[256], run[512], straight[512];
    snprintf(dir, sizeof dir, "%s", tmp);
    snprintf(run, sizeof run, "%s/test-cod/r", dir);
    snprintf(straight, sizeof straight, "%s/straight", dir);
    const char *b = tu_build();
    const char *cfg = "tests/fixtures/run/cod_small.yaml train.epochs=3 seg.predictions=1";
    int rc = sh("%s/moelab run %s results.dir=%s results.run_id=r", b, cfg, dir);
    ck_assert_msg(rc == 0, "%s", out);
    ck_assert_int_eq(rename(run, straight), 0);
    rc = sh("MOELAB_TEST_INTERRUPT_AT_STEP=19 %s/moelab run %s results.dir=%s results.run_id=r", b, cfg, dir);
    ck_assert_msg(rc == 130, "exit %d: %s", rc, out);
    rc = sh("%s/moelab run --resume %s", b, run);
    ck_assert_msg(rc == 0, "exit %d: %s", rc, out);
    same_runs(straight, run);
    const char *files[] = {"routing_labels.csv", "predictions/metrics.csv"};
    for (int i = 0; i < 2; i++) {
        char a[600], c[600];
        snprintf(a, sizeof a, "%s/%s", straight, files[i]);
        snprintf(c, sizeof c, "%s/%s", run, files[i]);
        same_file_text(slurp(a, NULL), slurp(c, NULL), files[i]);
    }
}
END_TEST

START_TEST(resume_mid_epoch_is_exact) {
    /* 48 steps per epoch: step 70 is in the middle of epoch 2 */
    equivalence("eq", "", 70, 2);
}
END_TEST

START_TEST(resume_between_expert_additions_is_exact) {
    /* experts 2 -> 3 at 1500 images (step 47), -> 4 at 3000 (step 94); stopped at step 70, in
       the middle of a steps.csv window (every 8 steps) and of the new expert's 30-step watch */
    equivalence("eqgrow", "schedule.name=progressive schedule.start=2 schedule.every_images=1500 schedule.max=4 "
                "results.log_every_steps=8 health.new_expert_steps=30", 70, 2);
}
END_TEST

/* ABI 1.1 state in the run: per-layer loss state tensors, a schedule reading routing health
   (this epoch's and the last one's) and a router reporting metrics, two MoE layers; stopped
   mid-epoch 2 after the schedule grew both layers, resumed: the same results. */
START_TEST(resume_with_abi_1_1_state_is_exact) {
    char args[1024];
    const char *b = tu_build();
    snprintf(args, sizeof args, "model.moe_layers=2 router.name=%s/tests/plugins/good_router.so "
             "losses.0.name=%s/tests/plugins/window_loss.so schedule.name=%s/tests/plugins/health_schedule.so "
             "schedule.below=2.0 schedule.max=6", b, b, b);
    equivalence("eqabi11", args, 70, 2);
}
END_TEST

/* The methods of issue 11 that keep state: relu's λ (router state, adapted every step) and
   global_load_balance's window of per-expert counts (loss state that grows with the layer),
   in two MoE layers that grow 2 -> 3 -> 4; stopped mid-epoch 2 and resumed: the same results. */
START_TEST(resume_with_relu_and_global_balance_is_exact) {
    equivalence("eqmethods", "model.moe_layers=2 router.name=relu router.k=1.5 losses.0.name=global_load_balance "
                "losses.0.window=5 losses.0.coef=0.01 schedule.name=progressive schedule.start=2 "
                "schedule.every_images=1500 schedule.max=4", 70, 2);
}
END_TEST

/* What a script changes while the run goes — exp.optim's lr and weight_decay, a group's lr,
   a frozen group and a frozen pattern, noisy_topk's noise and k — changed in on_step before
   the interrupt (step 70) and after it: the resumed run ends bit for bit as the straight one,
   so all of it was in the interrupt checkpoint and set again. */
START_TEST(resume_after_script_changes_is_exact) {
    equivalence("eqscript",
                "script=tests/fixtures/resume/optim.lua router.name=noisy_topk optim.name=adamw "
                "\"optim.groups=[{name: backbone, match: 'enc.*'}, {name: experts, match: 'moe1.expert*'}]\"",
                70, 2);
}
END_TEST

/* Experts added (random by the schedule, copy, drop_upcycle) and removed (by the schedule
   and by the script, from the middle of the layer, renumbering the rest) while the run goes,
   with a schedule that keeps state (dynmoe: idle counts, a recording window) and a frozen
   expert renamed by a removal; stopped at step 70, after a removal and inside a recording
   window, and resumed: the same checkpoints, byte for byte, and the same files. */
START_TEST(resume_across_additions_and_removals_is_exact) {
    equivalence("eqremove",
                "script=tests/fixtures/resume/growth.lua schedule.name=dynmoe schedule.window=8 schedule.interval=16 "
                "schedule.mass_threshold=0.9 schedule.max=8 router.k=1 growth.init=drop_upcycle growth.router_noise=0.05 "
                "results.log_every_steps=8 health.new_expert_steps=30",
                70, 2);
}
END_TEST

/* The segmentation model, whose experts differ in kind (texture, frequency, edge, contrast):
   expert 0 of a layer removed (so the resumed layer, made with a texture expert 0, must be
   rebuilt as the checkpoint's kinds say), a drop-upcycled and two copied experts put at
   numbers where the kind list has other kinds, two experts removed from another layer;
   stopped at step 10 and resumed: the same checkpoints and files. */
START_TEST(resume_of_segmentation_experts_is_exact) {
    equivalence_of("tests/fixtures/resume/cod.yaml", "eqcod", "script=tests/fixtures/resume/cod.lua", 10, 2);
}
END_TEST

/* optim.idle_experts: lazy (8 experts, top-1: most are idle in a step), AdamW with weight
   decay: stopped mid-epoch 2 and resumed, the same results — the per-tensor step counts that
   lazy's bias correction reads are in the checkpoint. */
START_TEST(resume_lazy_is_exact) {
    equivalence("eqlazy", "optim.idle_experts=lazy model.experts=8 router.k=1 optim.name=adamw optim.weight_decay=0.01",
                70, 2);
}
END_TEST

/* lazy with experts added (random, copy, drop_upcycle) and removed while the run goes (the
   eqremove run above): the same results after a resume. */
START_TEST(resume_lazy_across_additions_and_removals_is_exact) {
    equivalence("eqlazyremove",
                "script=tests/fixtures/resume/growth.lua schedule.name=dynmoe schedule.window=8 schedule.interval=16 "
                "schedule.mass_threshold=0.9 schedule.max=8 router.k=1 growth.init=drop_upcycle growth.router_noise=0.05 "
                "results.log_every_steps=8 health.new_expert_steps=30 optim.idle_experts=lazy",
                70, 2);
}
END_TEST

/* The tensors of a checkpoint, the data section only. */
static char *ckpt_data(const char *run, size_t *n) {
    char p[700], *d;
    snprintf(p, sizeof p, "%.600s/checkpoints/last.safetensors", run);
    ml_jv_free(st_header(p, &d, n));
    return d;
}

/* lazy is dense when every expert gets samples every step (2 experts, top-2): the same
   weights and moments bit for bit, the same metrics; with 8 experts at top-1 it is not. */
START_TEST(lazy_is_dense_when_every_expert_is_used) {
    const char *tmp = tu_tmpdir("lazydense");
    const char *b = tu_build();
    const char *runs[4] = {"d2", "l2", "d8", "l8"};
    for (int i = 0; i < 4; i++) {
        int rc = sh("%s/moelab run " SYNTH " train.epochs=2 model.experts=%s router.k=%s optim.idle_experts=%s "
                    "results.dir=%s results.run_id=%s",
                    b, i < 2 ? "2" : "8", i < 2 ? "2" : "1", i % 2 ? "lazy" : "dense", tmp, runs[i]);
        ck_assert_msg(rc == 0, "%s", out);
    }
    char a[600], c[600];
    size_t na, nc;
    snprintf(a, sizeof a, "%s/test-synth/d2", tmp);
    snprintf(c, sizeof c, "%s/test-synth/l2", tmp);
    char *da = ckpt_data(a, &na), *dc = ckpt_data(c, &nc);
    ck_assert_msg(na == nc && memcmp(da, dc, na) == 0, "2 experts at top-2: lazy and dense weights differ");
    free(da), free(dc);
    char ma[700], mc[700];
    snprintf(ma, sizeof ma, "%s/metrics.csv", a);
    snprintf(mc, sizeof mc, "%s/metrics.csv", c);
    same_file_text(metrics_no_clock(ma), metrics_no_clock(mc), "metrics.csv rows (dense, lazy)");
    snprintf(a, sizeof a, "%s/test-synth/d8", tmp);
    snprintf(c, sizeof c, "%s/test-synth/l8", tmp);
    da = ckpt_data(a, &na), dc = ckpt_data(c, &nc);
    ck_assert_msg(na == nc && memcmp(da, dc, na) != 0, "8 experts at top-1: lazy should differ from dense");
    free(da), free(dc);
}
END_TEST

START_TEST(resume_at_epoch_end_and_from_last) {
    /* stopped at the last step of epoch 1, then once more at step 150 (epoch 4); resume
       from "last" with --from: the epoch after it is trained again, the same way */
    const char *tmp = tu_tmpdir("eqlast");
    char dir[256], run[512], straight[512];
    snprintf(dir, sizeof dir, "%s", tmp);
    snprintf(run, sizeof run, "%s/test-synth/r", dir);
    snprintf(straight, sizeof straight, "%s/straight", dir);
    const char *b = tu_build();
    ck_assert_int_eq(sh("%s/moelab run " SYNTH " train.epochs=4 results.dir=%s results.run_id=r", b, dir), 0);
    ck_assert_int_eq(rename(run, straight), 0);
    int rc = sh("MOELAB_TEST_INTERRUPT_AT_STEP=48 %s/moelab run " SYNTH " train.epochs=4 results.dir=%s results.run_id=r", b, dir);
    ck_assert_msg(rc == 130, "%s", out);
    rc = sh("MOELAB_TEST_INTERRUPT_AT_STEP=150 %s/moelab run --resume %s", b, run);
    ck_assert_msg(rc == 130, "%s", out);
    assert_out("interrupted at epoch 4 step 150");
    rc = sh("%s/moelab run --resume %s --from last", b, run);
    ck_assert_msg(rc == 0, "%s", out);
    assert_out("from checkpoint 'last'");
    same_runs(straight, run);
}
END_TEST

START_TEST(script_state_round_trip) {
    const char *tmp = tu_tmpdir("state");
    char run[512];
    snprintf(run, sizeof run, "%s/test-synth/r", tmp);
    const char *b = tu_build();
    int rc = sh("MOELAB_TEST_INTERRUPT_AT_STEP=10 %s/moelab run " SYNTH " script=tests/fixtures/resume/state.lua "
                "results.dir=%s results.run_id=r",
                b, tmp);
    ck_assert_msg(rc == 130, "%s", out);
    rc = sh("%s/moelab run --resume %s", b, run);
    ck_assert_msg(rc == 0, "%s", out);
    assert_out("state ok");
}
END_TEST

/* A real SIGINT to a running child: exit 130, one line, summary "interrupted". */
START_TEST(sigint_stops_cleanly) {
    const char *tmp = tu_tmpdir("sig");
    char dir[256], run[512], log[600], metrics[600];
    snprintf(dir, sizeof dir, "%s", tmp);
    snprintf(run, sizeof run, "%s/test-synth/r", dir);
    snprintf(log, sizeof log, "%s/stderr.txt", dir);
    snprintf(metrics, sizeof metrics, "%s/metrics.csv", run);
    char ov1[300];
    snprintf(ov1, sizeof ov1, "results.dir=%s", dir);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        FILE *f = freopen(log, "w", stderr);
        (void)f;
        char exe[512];
        snprintf(exe, sizeof exe, "%s/moelab", tu_build());
        /* a long run on more data: most of its time is spent inside exp:train_epoch */
        execl(exe, exe, "run", SYNTH, "train.epochs=5000", "data.synthetic_samples=8192", "data.val_images=64", ov1,
              "results.run_id=r", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 3000 && !exists(metrics); i++) usleep(10000); /* the first epoch is done */
    ck_assert(exists(metrics));
    usleep(20000);
    kill(pid, SIGINT);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 130);
    char *err = slurp(log, NULL);
    ck_assert_msg(strstr(err, "moelab: interrupted at epoch ") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "; resume with: moelab run --resume ") != NULL, "%s", err);
    ck_assert_msg(!strstr(err, "traceback"), "%s", err);
    /* the checkpoint exists unless the signal came outside train_epoch, which the line says */
    char p[600];
    snprintf(p, sizeof p, "%s/checkpoints/interrupt.safetensors", run);
    ck_assert_msg(exists(p) || strstr(err, "no interrupt checkpoint"), "%s", err);
    free(err);
    snprintf(p, sizeof p, "%s/summary.json", run);
    char *s = slurp(p, NULL);
    ck_assert_msg(strstr(s, "\"status\":\"interrupted\"") != NULL, "%s", s);
    free(s);
}
END_TEST

START_TEST(resume_refusals) {
    const char *tmp = tu_tmpdir("refuse");
    char dir[256], run[512];
    snprintf(dir, sizeof dir, "%s", tmp);
    snprintf(run, sizeof run, "%s/test-synth/r", dir);
    const char *b = tu_build();
    /* not a run directory */
    int rc = sh("%s/moelab run --resume %s", b, dir);
    ck_assert_int_eq(rc, 2);
    assert_out("is not a moelab run directory");
    rc = sh("%s/moelab run --resume %s/nonexistent", b, dir);
    ck_assert_int_eq(rc, 2);
    /* a finished run */
    ck_assert_int_eq(sh("%s/moelab run " SYNTH " train.epochs=1 results.dir=%s results.run_id=r", b, dir), 0);
    rc = sh("%s/moelab run --resume %s", b, run);
    ck_assert_int_eq(rc, 2);
    assert_out("nothing to resume");
    /* overrides are not allowed, an unknown tag is refused */
    rc = sh("%s/moelab run --resume %s train.epochs=9", b, run);
    ck_assert_int_eq(rc, 2);
    char p[600];
    snprintf(p, sizeof p, "%s/summary.json", run);
    unlink(p);
    rc = sh("%s/moelab run --resume %s --from nosuch", b, run);
    ck_assert_int_eq(rc, 2);
    assert_out("no checkpoint 'nosuch'");
    /* a run without any checkpoint */
    snprintf(p, sizeof p, "%s/checkpoints/last.safetensors", run);
    unlink(p);
    snprintf(p, sizeof p, "%s/checkpoints/best.safetensors", run);
    unlink(p);
    rc = sh("%s/moelab run --resume %s", b, run);
    ck_assert_int_eq(rc, 2);
    assert_out("no checkpoint to resume from");
}
END_TEST

/* train.lua's raise_coef intervention loads "best" after experts were added since: the
 * run goes on with the newer experts instead of failing. */
START_TEST(intervention_after_growth) {
    const char *tmp = tu_tmpdir("interv");
    int rc = sh("%s/moelab run " SYNTH " health.collapse_entropy=1.0 params.on_collapse=raise_coef "
                "schedule.name=progressive schedule.start=2 schedule.every_images=1500 schedule.max=4 "
                "results.dir=%s results.run_id=r",
                tu_build(), tmp);
    ck_assert_msg(rc == 0, "%s", out);
    char p[512];
    snprintf(p, sizeof p, "%s/test-synth/r/events.jsonl", tmp);
    char *ev = slurp(p, NULL);
    ck_assert_msg(strstr(ev, "\"kind\":\"checkpoint_loaded\",\"tag\":\"best\"") != NULL, "%s", ev);
    ck_assert_msg(strstr(ev, "\"to\":4") != NULL, "%s", ev);
    free(ev);
    snprintf(p, sizeof p, "%s/test-synth/r/summary.json", tmp);
    char *s = slurp(p, NULL);
    ck_assert_msg(strstr(s, "\"experts\":[4]") != NULL, "%s", s);
    free(s);
}
END_TEST

/* Hostile run state in an interrupt checkpoint: --resume refuses it, naming the key, and
 * changes no result file. */
START_TEST(resume_validates_run_state) {
    const char *tmp = tu_tmpdir("runmeta");
    char run[512], ck[600], saved[600], p[600];
    snprintf(run, sizeof run, "%s/test-synth/r", tmp);
    snprintf(ck, sizeof ck, "%s/checkpoints/interrupt.safetensors", run);
    snprintf(saved, sizeof saved, "%s/good.safetensors", run);
    const char *b = tu_build();
    int rc = sh("MOELAB_TEST_INTERRUPT_AT_STEP=60 %s/moelab run " SYNTH " results.dir=%s results.run_id=r", b, tmp);
    ck_assert_msg(rc == 130, "%s", out);
    ck_assert_int_eq(rename(ck, saved), 0);
    static const struct { const char *key, *value, *needle; } cases[] = {
        {"run.position", "-1", "metadata 'run.position' is '-1'"},
        {"run.position", "999999", "metadata 'run.position' is '999999', expected an integer in [0, 1536]"},
        {"run.in_epoch", "2", "metadata 'run.in_epoch' is '2'"},
        {"run.coefs", "nan", "metadata 'run.coefs' is 'nan'"},
        {"run.coefs", "-0x1p+0", "coefficients >= 0"},
        {"run.loss_sum", "1e400", "metadata 'run.loss_sum'"},
        {"run.health1", "4 4 1 2", "metadata 'run.health1'"},
        {"run.health1", NULL, "metadata 'run.health1' is missing"},
        {"run.lasthealth1", NULL, "metadata 'run.lasthealth1' is missing"},
        {"run.rmetrics1", "gate_mean=0x1p-1", "metadata 'run.rmetrics1'"},
        {"run.have_last", "2", "metadata 'run.have_last'"},
        {"run.row", "{\"a\":1}", "metadata 'run.row' is not a metrics row"},
        {"run.clock", "x", "metadata 'run.clock' is 'x'"},
        {"run.script_state", "[1]", "metadata 'run.script_state' is not a JSON object"},
        {"run.moe_steps", "1,2", "metadata 'run.moe_steps' is '1,2'"},
        {"run.events_bytes", "99999999", "cannot cut events.jsonl back to 99999999 bytes"},
        {"run.metrics_rows", "7", "cannot cut metrics.csv back to 7 rows: it has 1"},
        {"run.optim", "lr=0,beta1=0.9,beta2=0.999,eps=1e-08,weight_decay=0,momentum=0", "metadata 'run.optim' is 'lr=0,"},
        {"run.optim", "lr=0.1,beta1=0.9", "metadata 'run.optim' is 'lr=0.1,beta1=0.9', expected lr=,beta1="},
        {"run.optim", "beta1=0.9,lr=0.1,beta2=0.999,eps=1e-08,weight_decay=0,momentum=0", "metadata 'run.optim'"},
        {"run.optim", "lr=0.1,beta1=1,beta2=0.999,eps=1e-08,weight_decay=0,momentum=0", "metadata 'run.optim'"},
        {"run.groups", "{\"g\":{\"lr\":null,\"weight_decay\":null,\"frozen\":false}}",
         "metadata 'run.groups' does not hold the config's 0 parameter groups"},
        {"run.frozen", "enc.fc1.w;nosuch", "metadata 'run.frozen' names tensor 'nosuch'"},
        {"run.frozen", "moe1.expert9.w1", "metadata 'run.frozen' names tensor 'moe1.expert9.w1'"},
        {"run.frozen", "enc.fc1.w;", "metadata 'run.frozen'"},
        {"run.router1", "kk=1", "metadata 'run.router1': router 'softmax_topk' has no option 'kk'"},
        {"run.router1", "k=100", "metadata 'run.router1': option 'k': must be in [1, 64], got 100"},
        {"run.router1", "k", "metadata 'run.router1' is 'k', expected 'option=value' pairs"},
    };
    size_t nm, ne;
    snprintf(p, sizeof p, "%s/metrics.csv", run);
    char *m0 = slurp(p, &nm);
    snprintf(p, sizeof p, "%s/events.jsonl", run);
    char *e0 = slurp(p, &ne);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rewrite(saved, ck, cases[i].key, cases[i].value, NULL);
        rc = sh("%s/moelab run --resume %s", b, run);
        ck_assert_msg(rc == 1, "%s=%s: exit %d: %s", cases[i].key, cases[i].value, rc, out);
        assert_out(cases[i].needle);
        size_t n;
        snprintf(p, sizeof p, "%s/metrics.csv", run);
        char *m1 = slurp(p, &n);
        ck_assert_msg(n == nm && !memcmp(m0, m1, n), "metrics.csv changed by a refused resume (%s)", cases[i].key);
        free(m1);
        snprintf(p, sizeof p, "%s/events.jsonl", run);
        char *e1 = slurp(p, &n);
        ck_assert_msg(n == ne && !memcmp(e0, e1, n), "events.jsonl changed by a refused resume (%s)", cases[i].key);
        free(e1);
    }
    free(m0);
    free(e0);
    /* a format-3 checkpoint from before the script settings were saved resumes with the
       config's (nothing could change them then) */
    char t1[600], t2[600], t3[600];
    snprintf(t1, sizeof t1, "%s/t1.safetensors", run);
    snprintf(t2, sizeof t2, "%s/t2.safetensors", run);
    snprintf(t3, sizeof t3, "%s/t3.safetensors", run);
    rewrite(saved, t1, "run.optim", NULL, NULL);
    rewrite(t1, t2, "run.groups", NULL, NULL);
    rewrite(t2, t3, "run.frozen", NULL, NULL);
    rewrite(t3, ck, "run.router1", NULL, NULL);
    ml_st_file *f = ml_st_open(ck);
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_null(ml_st_meta(f, "run.optim"));
    ck_assert_ptr_null(ml_st_meta(f, "run.router1"));
    ml_st_close(f);
    rc = sh("%s/moelab run --resume %s", b, run);
    ck_assert_msg(rc == 0, "%s", out);
}
END_TEST

/* A router option the plugin does not flag as settable at run time cannot come back from a
   checkpoint with another value than the config's. */
START_TEST(resume_refuses_fixed_router_options) {
    const char *tmp = tu_tmpdir("runfix");
    char run[512], ck[600], saved[600];
    snprintf(run, sizeof run, "%s/test-synth/r", tmp);
    snprintf(ck, sizeof ck, "%s/checkpoints/interrupt.safetensors", run);
    snprintf(saved, sizeof saved, "%s/good.safetensors", run);
    const char *b = tu_build();
    int rc = sh("MOELAB_TEST_INTERRUPT_AT_STEP=20 %s/moelab run " SYNTH " router.name=switch results.dir=%s results.run_id=r",
                b, tmp);
    ck_assert_msg(rc == 130, "%s", out);
    ck_assert_int_eq(rename(ck, saved), 0);
    rewrite(saved, ck, "run.router1", "capacity_factor=2;eval_capacity=true", NULL);
    rc = sh("%s/moelab run --resume %s", b, run);
    ck_assert_msg(rc == 1, "exit %d: %s", rc, out);
    assert_out("metadata 'run.router1': option 'capacity_factor' is 2, not the config's value, and router 'switch' "
               "cannot change it while it runs");
    rewrite(saved, ck, "run.router1", "capacity_factor=1.25;eval_capacity=true", NULL); /* the config's: fine */
    rc = sh("%s/moelab run --resume %s", b, run);
    ck_assert_msg(rc == 0, "%s", out);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("resume");
    TCase *c = tcase_create("integrity");
    tcase_set_timeout(c, 60);
    tcase_add_test(c, metadata_is_validated);
    tcase_add_test(c, format_2_checkpoints_load);
    tcase_add_test(c, nonfinite_checkpoint_refused);
    tcase_add_test(c, nonfinite_weights_never_saved);
    tcase_add_test(c, rng_of_every_layer_saved);
    tcase_add_test(c, older_checkpoint_keeps_newer_experts);
    tcase_add_test(c, checkpoints_across_a_removal_load);
    suite_add_tcase(s, c);
    c = tcase_create("resume");
    tcase_set_timeout(c, 120);
    tcase_add_test(c, resume_mid_epoch_is_exact);
    tcase_add_test(c, resume_segmentation_is_exact);
    tcase_add_test(c, resume_between_expert_additions_is_exact);
    tcase_add_test(c, resume_with_abi_1_1_state_is_exact);
    tcase_add_test(c, resume_with_relu_and_global_balance_is_exact);
    tcase_add_test(c, resume_after_script_changes_is_exact);
    tcase_add_test(c, resume_at_epoch_end_and_from_last);
    tcase_add_test(c, resume_across_additions_and_removals_is_exact);
    tcase_add_test(c, resume_of_segmentation_experts_is_exact);
    tcase_add_test(c, resume_lazy_is_exact);
    tcase_add_test(c, resume_lazy_across_additions_and_removals_is_exact);
    tcase_add_test(c, lazy_is_dense_when_every_expert_is_used);
    tcase_add_test(c, script_state_round_trip);
    tcase_add_test(c, sigint_stops_cleanly);
    tcase_add_test(c, resume_refusals);
    tcase_add_test(c, intervention_after_growth);
    tcase_add_test(c, resume_validates_run_state);
    tcase_add_test(c, resume_refuses_fixed_router_options);
    suite_add_tcase(s, c);
    return s;
}

int main(void) { return tu_run(suite()); }
