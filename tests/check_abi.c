/*
 * check_abi.c — the ABI promise (core/include/moelab/plugin.h, "Versioning"): plugins built
 * against the frozen ABI 1.0 header (tests/abi/1.0) load into today's host, pass
 * plugin-test and train; the run is bitwise the same as with the same sources built against
 * today's header. Also: the host's record of the 1.0 struct sizes matches the frozen
 * header, smaller api tables and descriptors get defaults, and one tensor limit holds for
 * plugin-test and a real run alike.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "io/safetensors.h"
#include "plugin/loader.h"
#include "plugin/plugintest.h"
#include "testutil.h"

static const char *const abi10[] = {"topk_v1_0", "balance_v1_0", "progressive_v1_0"};

static const char *so(const char *dir, const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/tests/%s/%s.so", tu_build(), dir, name);
    return buf[k];
}

typedef struct abi_size {
    const char *name;
    size_t size;
} abi_size;

START_TEST(sizes_of_1_0_match_the_frozen_header) {
    void *h = dlopen(so("abi/1.0", "sizes"), RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(h != NULL, "%s", dlerror());
    const abi_size *s = dlsym(h, "moelab_abi_1_0_sizes");
    ck_assert_ptr_nonnull(s);
    int n = 0;
    for (; s[n].name; n++)
        ck_assert_msg(ml_abi_size_1_0(s[n].name) == s[n].size, "%s: the frozen 1.0 header says %zu bytes, the host "
                      "believes %zu", s[n].name, s[n].size, ml_abi_size_1_0(s[n].name));
    ck_assert_int_ge(n, 13);
    /* 1.1 grew some of them: the host must not have confused the two */
    ck_assert_uint_gt(sizeof(ml_option), ml_abi_size_1_0("ml_option"));
    ck_assert_uint_gt(sizeof(ml_plugin), ml_abi_size_1_0("ml_plugin"));
    ck_assert_uint_gt(sizeof(ml_loss_api), ml_abi_size_1_0("ml_loss_api"));
    dlclose(h);
}
END_TEST

START_TEST(plugins_of_1_0_load_with_defaults) {
    const char *dir = tu_path("%s/plugins", tu_build());
    ml_plugins_set_path(&dir, 1);
    for (int i = 0; i < 3; i++) {
        const ml_plugin *p = ml_plugin_load(0, so("abi/1.0", abi10[i]));
        ck_assert_msg(p != NULL, "%s", ml_error());
        ck_assert_int_eq(p->abi_minor, 0);
        ck_assert_uint_eq(p->size, sizeof(ml_plugin)); /* the host's view, normalised */
        ck_assert_uint_eq(*(const uint32_t *)p->api, (uint32_t)(p->kind == ML_PLUGIN_ROUTER ? sizeof(ml_router_api)
                                                           : p->kind == ML_PLUGIN_LOSS ? sizeof(ml_loss_api)
                                                                                       : sizeof(ml_schedule_api)));
        if (p->kind == ML_PLUGIN_LOSS) {
            const ml_loss_api *a = p->api;
            ck_assert_ptr_null(a->states); /* absent in 1.0: defaults */
            ck_assert_ptr_null(a->eval_v2);
            ck_assert_ptr_nonnull(a->eval);
        }
        for (int o = 0; o < p->num_options; o++) ck_assert_uint_eq(p->options[o].flags, 0);
        ck_assert_str_eq(p->name, abi10[i]);
    }
    ml_plugins_unload_all();
}
END_TEST

START_TEST(plugins_of_1_0_pass_plugin_test) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    int failed = ml_plugin_conformance(so("abi/1.0", abi10[_i]), f);
    fclose(f);
    ck_assert_msg(failed == 0, "%s", text);
    ck_assert_ptr_nonnull(strstr(text, "abi 1.0"));
    free(text);
    ml_plugins_unload_all();
}
END_TEST

/* metrics.csv without its wall-clock column */
static char *metrics_without_time(const char *run) {
    char *t = tu_slurp(tu_path("%s/metrics.csv", run), NULL);
    ck_assert_ptr_nonnull(t);
    /* find the index of "seconds" in the header and blank that cell in every row */
    char *out = calloc(strlen(t) + 1, 1);
    int col = -1, c = 0;
    const char *p = t;
    for (const char *q = t; *q && *q != '\n'; q++) {
        if (!strncmp(q, "seconds", 7) && (q == t || q[-1] == ',') && (q[7] == ',' || q[7] == '\n')) col = c;
        if (*q == ',') c++;
    }
    ck_assert_int_ge(col, 0);
    char *o = out;
    c = 0;
    for (; *p; p++) {
        if (*p == '\n') c = 0, *o++ = '\n';
        else if (*p == ',') c++, *o++ = ',';
        else if (c != col) *o++ = *p;
    }
    free(t);
    return out;
}

/* Trains with the three plugins of one build (dir) and returns the run directory. */
static const char *train_with(const char *root, const char *dir, const char *id) {
    int rc = tu_sh("%s/moelab run tests/fixtures/run/synth.yaml results.dir=%s results.run_id=%s train.epochs=2 "
                   "router.name=%s losses.0.name=%s schedule.name=%s schedule.start=2 schedule.every_images=1500 "
                   "schedule.max=5",
                   tu_build(), root, id, so(dir, abi10[0]), so(dir, abi10[1]), so(dir, abi10[2]));
    ck_assert_msg(rc == 0, "run with the %s builds failed (%d):\n%s", dir, rc, tu_out);
    static char run[512];
    snprintf(run, sizeof run, "%s/test-synth/%s", root, id);
    return run;
}

START_TEST(plugins_of_1_0_train_as_today) {
    const char *root = tu_tmpdir("abi");
    ck_assert_ptr_nonnull(root);
    char a[512], b[512];
    snprintf(a, sizeof a, "%s", train_with(root, "abi/1.0", "a"));
    snprintf(b, sizeof b, "%s", train_with(root, "abi/now", "b"));
    /* the schedule grew the layer: the 1.0 schedule really ran */
    char *events = tu_slurp(tu_path("%s/events.jsonl", a), NULL);
    ck_assert_ptr_nonnull(strstr(events, "\"experts_added\""));
    free(events);
    char *ma = metrics_without_time(a), *mb = metrics_without_time(b);
    ck_assert_msg(!strcmp(ma, mb), "metrics differ:\n%s\n---\n%s", ma, mb);
    free(ma), free(mb);
    char *ra = tu_slurp(tu_path("%s/routing.csv", a), NULL), *rb = tu_slurp(tu_path("%s/routing.csv", b), NULL);
    ck_assert_str_eq(ra, rb);
    free(ra), free(rb);
    ml_st_file *fa = ml_st_open(tu_path("%s/checkpoints/last.safetensors", a));
    ml_st_file *fb = ml_st_open(tu_path("%s/checkpoints/last.safetensors", b));
    ck_assert_msg(fa && fb, "%s", ml_error());
    ck_assert_int_eq(ml_st_count(fa), ml_st_count(fb));
    for (int i = 0; i < ml_st_count(fa); i++) {
        const char *name = ml_st_name(fa, i);
        int na, nb;
        int64_t sa[4], sb[4];
        const float *xa = ml_st_get(fa, name, &na, sa), *xb = ml_st_get(fb, name, &nb, sb);
        ck_assert_msg(xb != NULL, "%s missing", name);
        ck_assert_int_eq(na, nb);
        int64_t n = 1;
        for (int d = 0; d < na; d++) {
            ck_assert_int_eq(sa[d], sb[d]);
            n *= sa[d];
        }
        ck_assert_msg(!memcmp(xa, xb, (size_t)n * sizeof(float)), "tensor %s differs", name);
    }
    ml_st_close(fa);
    ml_st_close(fb);
    tu_rm_rf(root);
}
END_TEST

/* One limit of tensors for plugin-test and a run: 20 state tensors pass both, 33 neither. */
START_TEST(one_tensor_limit_for_plugin_test_and_runs) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    ck_assert_int_eq(ml_plugin_conformance(so("plugins", "states20_router"), f), 0);
    fclose(f);
    free(text);
    f = open_memstream(&text, &len);
    ck_assert_int_ne(ml_plugin_conformance(so("plugins", "states33_router"), f), 0);
    fclose(f);
    ck_assert_msg(strstr(text, "states() returned 33 declarations, expected 0..32"), "%s", text);
    free(text);
    ml_plugins_unload_all();
    const char *root = tu_tmpdir("abi-lim");
    int rc = tu_sh("%s/moelab run tests/fixtures/run/synth.yaml results.dir=%s train.epochs=1 router.name=%s",
                   tu_build(), root, so("plugins", "states20_router"));
    ck_assert_msg(rc == 0, "20 state tensors: %s", tu_out);
    rc = tu_sh("%s/moelab run tests/fixtures/run/synth.yaml results.dir=%s train.epochs=1 router.name=%s", tu_build(),
               root, so("plugins", "states33_router"));
    ck_assert_msg(rc != 0 && strstr(tu_out, "states() returned 33 declarations, expected 0..32"), "33: %s", tu_out);
    tu_rm_rf(root);
}
END_TEST

/* ABI 1.1 in a run: router metrics land in metrics.csv, each layer's loss instance keeps its
   own state tensor (checkpointed as moe<L>.loss0.f_ema), the schedule reads health. */
START_TEST(abi_1_1_entry_points_in_a_run) {
    const char *root = tu_tmpdir("abi11");
    const char *b = tu_build();
    int rc = tu_sh("%s/moelab run tests/fixtures/run/synth.yaml results.dir=%s results.run_id=r train.epochs=3 "
                   "model.moe_layers=2 router.name=%s losses.0.name=%s schedule.name=%s schedule.below=2.0 schedule.max=5",
                   b, root, so("plugins", "good_router"), so("plugins", "window_loss"), so("plugins", "health_schedule"));
    ck_assert_msg(rc == 0, "%s", tu_out);
    char run[512];
    snprintf(run, sizeof run, "%s/test-synth/r", root);
    char *metrics = tu_slurp(tu_path("%s/metrics.csv", run), NULL);
    ck_assert_msg(strstr(metrics, "moe1_gate_mean") && strstr(metrics, "moe2_gate_mean") &&
                  strstr(metrics, "val_moe1_gate_mean"), "%s", metrics);
    free(metrics);
    /* the schedule saw epoch 1's routing and grew each layer once, at the start of epoch 2
       (4 -> 5, its max); never in epoch 1, which has no last_health */
    char *ev = tu_slurp(tu_path("%s/events.jsonl", run), NULL);
    int added = 0;
    for (char *line = strtok(ev, "\n"); line; line = strtok(NULL, "\n"))
        if (strstr(line, "\"experts_added\"")) {
            added++;
            ck_assert_msg(!strncmp(line, "{\"epoch\":2,", 11), "grown outside epoch 2: %s", line);
            ck_assert_ptr_nonnull(strstr(line, "\"reason\":\"health_schedule\""));
        }
    ck_assert_msg(added == 2, "%d experts_added events:\n%s", added, ev);
    free(ev);
    ml_st_file *f = ml_st_open(tu_path("%s/checkpoints/last.safetensors", run));
    ck_assert_msg(f != NULL, "%s", ml_error());
    int nd;
    int64_t sh[4];
    const float *f1 = ml_st_get(f, "moe1.loss0.f_ema", &nd, sh), *f2 = ml_st_get(f, "moe2.loss0.f_ema", &nd, sh);
    ck_assert_msg(f1 && f2, "loss state tensors missing");
    ck_assert_int_eq(sh[0], 5);
    double s1 = 0, s2 = 0;
    int same = 1;
    for (int i = 0; i < 5; i++) s1 += f1[i], s2 += f2[i], same &= f1[i] == f2[i];
    ck_assert_msg(!same, "both layers' loss state is the same: one instance served both");
    ck_assert_msg(fabs(s1 - 1) < 0.3 && fabs(s2 - 1) < 0.3, "EMA of shares: sums %g %g", s1, s2);
    ml_st_close(f);
    tu_rm_rf(root);
}
END_TEST

/* ---------------------------------------------------------------- ABI 1.1 */

START_TEST(sizes_of_1_1_match_the_frozen_header) {
    void *h = dlopen(so("abi/1.1", "sizes"), RTLD_NOW | RTLD_LOCAL);
    ck_assert_msg(h != NULL, "%s", dlerror());
    const abi_size *s = dlsym(h, "moelab_abi_1_1_sizes");
    ck_assert_ptr_nonnull(s);
    int n = 0;
    for (; s[n].name; n++)
        ck_assert_msg(ml_abi_size_1_1(s[n].name) == s[n].size, "%s: the frozen 1.1 header says %zu bytes, the host "
                      "believes %zu", s[n].name, s[n].size, ml_abi_size_1_1(s[n].name));
    ck_assert_int_ge(n, 15);
    /* 1.2 grew these: the host must not have confused the two */
    ck_assert_uint_gt(sizeof(ml_schedule_api), ml_abi_size_1_1("ml_schedule_api"));
    ck_assert_uint_gt(sizeof(ml_router_event), ml_abi_size_1_1("ml_router_event"));
    dlclose(h);
}
END_TEST

/* A 1.1 router (per-expert parameters and state) and a 1.1 schedule pass plugin-test on
   today's host; the router's removal check passes with the host keeping its rows. */
START_TEST(plugins_of_1_1_pass_plugin_test) {
    static const char *const names[] = {"counting_v1_1", "grow_v1_1"};
    for (int i = 0; i < 2; i++) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        int failed = ml_plugin_conformance(so("abi/1.1", names[i]), f);
        fclose(f);
        ck_assert_msg(failed == 0, "%s", text);
        ck_assert_ptr_nonnull(strstr(text, "abi 1.1"));
        if (i == 0) {
            ck_assert_msg(strstr(text, "PASS experts removed (N 6 -> 4, experts 1 and 4)"), "%s", text);
            ck_assert_msg(strstr(text, "built before ABI 1.2: not told"), "%s", text);
        }
        free(text);
    }
    ml_plugins_unload_all();
}
END_TEST

/* A run with the 1.1 router and schedule while a script removes experts: it trains on, the
   router's per-expert tensors follow the layer (shape checked in the last checkpoint). */
START_TEST(plugins_of_1_1_train_through_removals) {
    const char *root = tu_tmpdir("abi11rm");
    int rc = tu_sh("%s/moelab run tests/fixtures/run/synth.yaml results.dir=%s results.run_id=r train.epochs=3 "
                   "router.name=%s schedule.name=%s script=tests/fixtures/abi/remove.lua",
                   tu_build(), root, so("abi/1.1", "counting_v1_1"), so("abi/1.1", "grow_v1_1"));
    ck_assert_msg(rc == 0, "%s", tu_out);
    ck_assert_msg(strstr(tu_out, "experts at the end: "), "%s", tu_out);
    char run[512];
    snprintf(run, sizeof run, "%s/test-synth/r", root);
    char *ev = tu_slurp(tu_path("%s/events.jsonl", run), NULL);
    ck_assert_msg(strstr(ev, "\"kind\":\"experts_removed\",\"layer\":1,\"removed\":[1],\"from\":4,\"to\":3,\"kept\":[0,2,3]"),
                  "%s", ev);
    ck_assert_msg(strstr(ev, "\"reason\":\"grow_v1_1\""), "the 1.1 schedule never grew:\n%s", ev);
    free(ev);
    int n = 0;
    const char *p = strstr(tu_out, "experts at the end: ");
    sscanf(p + 20, "%d", &n);
    ml_st_file *f = ml_st_open(tu_path("%s/checkpoints/last.safetensors", run));
    ck_assert_msg(f != NULL, "%s", ml_error());
    int nd;
    int64_t sh[4];
    const float *c = ml_st_get(f, "moe1.router.count", &nd, sh), *w = ml_st_get(f, "moe1.router.w", &nd, sh);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(sh[0], n);
    ml_st_get(f, "moe1.router.count", &nd, sh);
    ck_assert_int_eq(sh[0], n);
    ml_st_close(f);
    tu_rm_rf(root);
}
END_TEST

static Suite *abi_suite(void) {
    Suite *s = suite_create("abi");
    TCase *t = tcase_create("abi");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, sizes_of_1_0_match_the_frozen_header);
    tcase_add_test(t, plugins_of_1_0_load_with_defaults);
    tcase_add_loop_test(t, plugins_of_1_0_pass_plugin_test, 0, 3);
    tcase_add_test(t, plugins_of_1_0_train_as_today);
    tcase_add_test(t, one_tensor_limit_for_plugin_test_and_runs);
    tcase_add_test(t, abi_1_1_entry_points_in_a_run);
    tcase_add_test(t, sizes_of_1_1_match_the_frozen_header);
    tcase_add_test(t, plugins_of_1_1_pass_plugin_test);
    tcase_add_test(t, plugins_of_1_1_train_through_removals);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return tu_run(abi_suite()); }
