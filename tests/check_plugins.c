/* check_plugins.c — plugin loading, validation, the built-in plugins and plugin-test. */
#include <limits.h>
#include <unistd.h>

#include "base/common.h"
#include "moelab/plugin_aux.h"
#include "plugin/loader.h"
#include "plugin/loss_host.h"
#include "plugin/options.h"
#include "plugin/schedule_host.h"
#include "plugin/plugintest.h"
#include "testutil.h"

static void setup(void) {
    const char *dir = tu_path("%s/plugins", tu_build());
    ml_plugins_set_path(&dir, 1);
}

static void teardown(void) { ml_plugins_unload_all(); }

static const char *test_plugin(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/tests/plugins/%s.so", tu_build(), name);
    return buf[k];
}

#define ck_assert_error_has(s) ck_assert_msg(strstr(ml_error(), (s)) != NULL, \
                                             "error \"%s\" lacks \"%s\"", ml_error(), (s))

/* ------------------------------------------------------------------- loading */

static const struct { int kind; const char *name; } builtins[] = {
    {ML_PLUGIN_ROUTER, "softmax_topk"}, {ML_PLUGIN_LOSS, "load_balance"},
    {ML_PLUGIN_LOSS, "entropy"},        {ML_PLUGIN_LOSS, "importance_cv2"},
    {ML_PLUGIN_LOSS, "z_loss"},         {ML_PLUGIN_LOSS, "mutual_info"},
    {ML_PLUGIN_LOSS, "global_load_balance"},
    {ML_PLUGIN_SCHEDULE, "fixed"},      {ML_PLUGIN_SCHEDULE, "progressive"},
    {ML_PLUGIN_SCHEDULE, "dynmoe"},
};
#define NBUILTIN (int)(sizeof builtins / sizeof builtins[0])

START_TEST(load_builtin_by_name) {
    const ml_plugin *p = ml_plugin_load(builtins[_i].kind, builtins[_i].name);
    ck_assert_msg(p != NULL, "%s: %s", builtins[_i].name, ml_error());
    ck_assert_str_eq(p->name, builtins[_i].name);
    ck_assert_int_eq(p->kind, builtins[_i].kind);
    ck_assert_int_eq(p->abi_major, ML_ABI_MAJOR);
    char want[512];
    snprintf(want, sizeof want, "%s/plugins/%s.so", tu_build(), builtins[_i].name);
    ck_assert_str_eq(ml_plugin_file(p), want);
    ck_assert_ptr_eq(ml_plugin_load(builtins[_i].kind, builtins[_i].name), p);
    ck_assert_ptr_eq(ml_plugin_load(0, want), p); /* same file by path: same plugin */
}
END_TEST

START_TEST(load_by_path) {
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_ROUTER, test_plugin("good_router"));
    ck_assert_msg(p != NULL, "%s", ml_error());
    ck_assert_str_eq(p->name, "good_router");
    ck_assert_str_eq(ml_plugin_file(p), test_plugin("good_router"));
    ck_assert_ptr_null(ml_plugin_file(NULL));
}
END_TEST

START_TEST(missing_name_lists_dirs) {
    const char *dirs[] = {tu_path("%s/plugins", tu_build()), "/nonexistent/moelab-dir"};
    ml_plugins_set_path(dirs, 2);
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_ROUTER, "no_such_router"));
    ck_assert_error_has("no_such_router");
    ck_assert_error_has(dirs[0]);
    ck_assert_error_has("/nonexistent/moelab-dir");
    ck_assert_error_has("not found");
}
END_TEST

START_TEST(missing_path) {
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_ROUTER, "/nonexistent/dir/x.so"));
    ck_assert_error_has("/nonexistent/dir/x.so");
    ck_assert_error_has("not found");
    /* a bare x.so is ./x.so, never a system library lookup */
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_ROUTER, "libc.so"));
    ck_assert_error_has("./libc.so");
}
END_TEST

START_TEST(never_the_working_directory) {
    char cwd[PATH_MAX];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    ck_assert_int_eq(chdir(tu_path("%s/plugins", tu_build())), 0);
    ml_plugins_set_path(NULL, 0);
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_ROUTER, "softmax_topk");
    ck_assert_int_eq(chdir(cwd), 0);
    ck_assert_ptr_null(p);
    ck_assert_error_has("empty search path");
}
END_TEST

START_TEST(missing_symbol) {
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_ROUTER, test_plugin("no_symbol")));
    ck_assert_error_has("no_symbol.so");
    ck_assert_error_has("missing symbol `moelab_plugin`");
}
END_TEST

START_TEST(abi_major_mismatch) {
    char plugin[32], host[32];
    snprintf(plugin, sizeof plugin, "plugin abi %d.%d", ML_ABI_MAJOR + 1, ML_ABI_MINOR);
    snprintf(host, sizeof host, "host abi %d.%d", ML_ABI_MAJOR, ML_ABI_MINOR);
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_LOSS, test_plugin("abi_major")));
    ck_assert_error_has("abi_major.so");
    ck_assert_error_has(plugin);
    ck_assert_error_has(host);
    ck_assert_error_has("major versions differ");
}
END_TEST

START_TEST(abi_minor_mismatch) {
    char plugin[32], host[32];
    snprintf(plugin, sizeof plugin, "plugin abi %d.%d", ML_ABI_MAJOR, ML_ABI_MINOR + 1);
    snprintf(host, sizeof host, "host abi %d.%d", ML_ABI_MAJOR, ML_ABI_MINOR);
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_LOSS, test_plugin("abi_minor")));
    ck_assert_error_has("abi_minor.so");
    ck_assert_error_has(plugin);
    ck_assert_error_has(host);
    ck_assert_error_has("minor");
}
END_TEST

START_TEST(wrong_kind) {
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_ROUTER, test_plugin("wrong_kind")));
    ck_assert_error_has("wrong_kind.so");
    ck_assert_error_has("is a loss plugin, expected a router");
    /* loaded as what it is, then asked for as something else */
    ck_assert_ptr_nonnull(ml_plugin_load(ML_PLUGIN_LOSS, test_plugin("wrong_kind")));
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_SCHEDULE, test_plugin("wrong_kind")));
    ck_assert_error_has("is a loss plugin, expected a schedule");
}
END_TEST

START_TEST(bad_option_default) {
    ck_assert_ptr_null(ml_plugin_load(ML_PLUGIN_LOSS, test_plugin("bad_option")));
    ck_assert_error_has("bad_option.so");
    ck_assert_error_has("option k");
    ck_assert_error_has("\"99\"");
    ck_assert_error_has("[1, 64]");
}
END_TEST

START_TEST(unload_and_reload) {
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_ROUTER, "softmax_topk");
    ck_assert_ptr_nonnull(p);
    ml_plugins_unload_all();
    ck_assert_ptr_null(ml_plugin_file(p));
    p = ml_plugin_load(ML_PLUGIN_ROUTER, "softmax_topk");
    ck_assert_ptr_nonnull(p);
    ck_assert_str_eq(p->name, "softmax_topk");
}
END_TEST

typedef struct scan_log { int ok, bad; char names[2048], errors[4096]; } scan_log;

static void on_plugin(const ml_plugin *p, const char *file, void *ctx) {
    scan_log *l = ctx;
    (void)file;
    l->ok++;
    strncat(l->names, p->name, sizeof l->names - strlen(l->names) - 2);
    strcat(l->names, " ");
}

static void on_error(const char *file, const char *reason, void *ctx) {
    scan_log *l = ctx;
    l->bad++;
    size_t n = strlen(l->errors);
    snprintf(l->errors + n, sizeof l->errors - n, "%s: %s\n", file, reason);
}

START_TEST(scan_path) {
    const char *dirs[] = {tu_path("%s/plugins", tu_build()), tu_path("%s/tests/plugins", tu_build()),
                          tu_path("%s/plugins", tu_build())};
    ml_plugins_set_path(dirs, 3);
    scan_log l = {0};
    int n = ml_plugins_scan(on_plugin, on_error, &l);
    ck_assert_int_eq(n, l.ok);
    ck_assert_int_ge(l.ok, NBUILTIN + 3); /* + good_router, broken_grad, wrong_kind */
    for (int i = 0; i < NBUILTIN; i++) ck_assert_msg(strstr(l.names, builtins[i].name), "%s", l.names);
    ck_assert_ptr_nonnull(strstr(l.names, "good_router"));
    ck_assert_int_eq(l.bad, 4);
    ck_assert_msg(strstr(l.errors, "abi_major.so: plugin abi"), "%s", l.errors);
    ck_assert_msg(strstr(l.errors, "no_symbol.so: missing symbol"), "%s", l.errors);
    ck_assert_msg(strstr(l.errors, "bad_option.so: option k"), "%s", l.errors);
    ck_assert_msg(strstr(l.errors, "abi_minor.so"), "%s", l.errors);
    /* scanning again loads nothing new and reports the same */
    scan_log l2 = {0};
    ck_assert_int_eq(ml_plugins_scan(on_plugin, on_error, &l2), n);
}
END_TEST

START_TEST(print_listing) {
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_ROUTER, "softmax_topk");
    ck_assert_ptr_nonnull(p);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ml_plugin_print(p, ml_plugin_file(p), f);
    fclose(f);
    ck_assert_ptr_nonnull(strstr(buf, "softmax_topk"));
    ck_assert_ptr_nonnull(strstr(buf, "router"));
    ck_assert_ptr_nonnull(strstr(buf, "renormalize"));
    ck_assert_ptr_nonnull(strstr(buf, "default 2"));
    ck_assert_ptr_nonnull(strstr(buf, "[1, 64]"));
    free(buf);
}
END_TEST

START_TEST(default_path_env) {
    setenv("MOELAB_PLUGIN_PATH", "/a/one:/b/two", 1);
    const char *cfg = "/cfg/dir";
    ml_plugins_default_path(&cfg, 1);
    int n;
    const char *const *dirs = ml_plugins_path(&n);
    ck_assert_int_eq(n, 4);
    ck_assert_ptr_nonnull(strstr(dirs[0], "/plugins"));
    ck_assert_str_eq(dirs[1], "/cfg/dir");
    ck_assert_str_eq(dirs[2], "/a/one");
    ck_assert_str_eq(dirs[3], "/b/two");
    ml_plugins_add_path("/c");
    dirs = ml_plugins_path(&n);
    ck_assert_int_eq(n, 5);
    ck_assert_str_eq(dirs[4], "/c");
}
END_TEST

/* ------------------------------------------------------------------- options */

/* One set of scalar rules (base/scalar.h) for YAML, the command line and Lua: an int is
   digits only, a bool is true/false, a quoted value is a string. */
START_TEST(option_parse) {
    ml_option k = {"k", ML_OPT_INT, "2", 1, 64, NULL, "", 0};
    ml_optval v;
    ck_assert_int_eq(ml_option_parse(&k, "7", 0, &v), ML_OK);
    ck_assert_int_eq(v.i, 7);
    ck_assert_int_eq(ml_option_parse(&k, "1e1", 0, &v), ML_ERR);
    ck_assert_str_eq(ml_error(), "expected an integer, got '1e1' (hint: write integers without '.' or exponent)");
    ck_assert_int_eq(ml_option_parse(&k, "2.0", 0, &v), ML_ERR);
    ck_assert_int_eq(ml_option_parse(&k, "2", 1, &v), ML_ERR);
    ck_assert_str_eq(ml_error(), "expected an integer, got \"2\" (quoted, so a string)");
    ck_assert_int_eq(ml_option_parse(&k, "100", 0, &v), ML_ERR);
    ck_assert_str_eq(ml_error(), "must be in [1, 64], got 100");
    ck_assert_int_eq(ml_option_parse(&k, "2.5", 0, &v), ML_ERR);
    ck_assert_int_eq(ml_option_parse(&k, "two", 0, &v), ML_ERR);
    ml_option f = {"t", ML_OPT_FLOAT, "1", 0.01, 100, NULL, "", 0};
    ck_assert_int_eq(ml_option_parse(&f, "0.5", 0, &v), ML_OK);
    ck_assert_double_eq(v.f, 0.5);
    ck_assert_int_eq(ml_option_parse(&f, "2", 0, &v), ML_OK); /* an integer is a number */
    ck_assert_double_eq(v.f, 2);
    ck_assert_int_eq(ml_option_parse(&f, "1000", 0, &v), ML_ERR);
    ck_assert_int_eq(ml_option_parse(&f, "nan", 0, &v), ML_ERR);
    ck_assert_int_eq(ml_option_parse(&f, "0x10", 0, &v), ML_ERR);
    ml_option free_ = {"u", ML_OPT_FLOAT, "1", 1, 0, NULL, "", 0}; /* no range */
    ck_assert_int_eq(ml_option_parse(&free_, "-1e30", 0, &v), ML_OK);
    ck_assert_int_eq(ml_option_parse(&free_, "x", 0, &v), ML_ERR);
    ck_assert_str_eq(ml_error(), "expected a number, got 'x'");
    ml_option b = {"b", ML_OPT_BOOL, "true", 0, -1, NULL, "", 0};
    ck_assert_int_eq(ml_option_parse(&b, "false", 0, &v), ML_OK);
    ck_assert_int_eq(v.i, 0);
    ck_assert_int_eq(ml_option_parse(&b, "False", 0, &v), ML_ERR);
    ck_assert_int_eq(ml_option_parse(&b, "yes", 0, &v), ML_ERR);
    ck_assert_int_eq(ml_option_parse(&b, "true", 1, &v), ML_ERR);
    ck_assert_int_eq(ml_option_parse(&b, "maybe", 0, &v), ML_ERR);
    ck_assert_str_eq(ml_error(), "expected true or false, got 'maybe'");
    ml_option e = {"m", ML_OPT_ENUM, "mean", 0, -1, "none|max|mean", "", 0};
    ck_assert_int_eq(ml_option_parse(&e, "max", 0, &v), ML_OK);
    ck_assert_int_eq(v.i, 1);
    ck_assert_str_eq(v.s, "max");
    ck_assert_int_eq(ml_option_parse(&e, "ma", 0, &v), ML_ERR);
    ck_assert_str_eq(ml_error(), "expected one of none|max|mean, got 'ma'");
}
END_TEST

START_TEST(option_defaults) {
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_SCHEDULE, "progressive");
    ck_assert_ptr_nonnull(p);
    ml_optval v[6];
    ck_assert_int_eq(p->num_options, 6);
    ck_assert_int_eq(ml_option_defaults(p, v), ML_OK);
    ck_assert_int_eq(v[0].i, 2);
    ck_assert_int_eq(v[1].i, 7000);
    ck_assert_int_eq(v[2].i, 1);
    ck_assert_int_eq(v[3].i, 16);
    ck_assert_int_eq(ml_option_find(p, "max"), 3);
    ck_assert_int_eq(v[4].i, 0); /* prune_dead false */
    ck_assert_int_eq(v[5].i, 300);
    ck_assert_int_eq(ml_option_find(p, "nope"), -1);
    p = ml_plugin_load(ML_PLUGIN_LOSS, "entropy");
    ck_assert_int_eq(ml_option_defaults(p, v), ML_OK);
    ck_assert_str_eq(v[0].s, "per_sample");
}
END_TEST

/* -------------------------------------------------------------------- host */

START_TEST(host_table) {
    const ml_host *h = ml_host_table();
    ck_assert_int_eq(h->size, sizeof(ml_host));
    ck_assert_int_eq(h->abi_major, ML_ABI_MAJOR);
    unsigned char *m = h->alloc(100);
    for (int i = 0; i < 100; i++) ck_assert_int_eq(m[i], 0);
    h->free(m);
    h->free(NULL);
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1}, c[4] = {1, 1, 1, 1};
    /* (2x3) * (3x2) + C */
    h->sgemm(0, 0, 2, 2, 3, 1.0f, a, 3, b, 2, 1.0f, c, 2);
    ck_assert_float_eq(c[0], 1 + 1 + 0 + 3);
    ck_assert_float_eq(c[1], 1 + 0 + 2 + 3);
    ck_assert_float_eq(c[2], 1 + 4 + 0 + 6);
    ck_assert_float_eq(c[3], 1 + 0 + 5 + 6);
    ml_rng r1, r2;
    ml_rng_seed(&r1, 3), ml_rng_seed(&r2, 3);
    ck_assert_uint_eq(h->rng_u64(&r1), ml_rng_u64(&r2));
    double u = h->rng_uniform(&r1);
    ck_assert(u >= 0 && u < 1);
}
END_TEST

/* ------------------------------------------------------------------- losses */

typedef struct loss_case {
    ml_loss_inst li; /* the loss, hosted as a run hosts it */
    int B, N, C;
    float logits[64 * 8], prob[64 * 8], gate[64 * 8];
    int32_t ds[64 * 8], de[64 * 8], label[64];
    int n_disp, labels;
    int32_t first[64]; /* guard_first: each row's argmax of prob at the reference point */
    int guard_first;
} loss_case;

static void loss_new(loss_case *c, const char *name, const char *opt_name, const char *opt_value) {
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_LOSS, name);
    ck_assert_msg(p != NULL, "%s", ml_error());
    ml_optval v[ML_MAX_OPTIONS];
    ck_assert_int_eq(ml_option_defaults(p, v), ML_OK);
    if (opt_name) {
        int i = ml_option_find(p, opt_name);
        ck_assert_int_ge(i, 0);
        ck_assert_int_eq(ml_option_parse(&p->options[i], opt_value, 0, &v[i]), ML_OK);
    }
    ck_assert_msg(ml_loss_inst_init(&c->li, p, v, 0, 1, 8, NULL, "") == ML_OK, "%s", ml_error());
}

static void loss_free(loss_case *c) { ml_loss_inst_release(&c->li); }

static double loss_value(loss_case *c, float *dl, float *dp) {
    /* gates follow prob at dispatched pairs: a loss of the gates is then one of prob */
    for (int t = 0; t < c->n_disp; t++) c->gate[t] = c->prob[c->ds[t] * c->N + c->de[t]];
    ml_routing_record r;
    memset(&r, 0, sizeof r);
    r.size = sizeof r, r.B = c->B, r.N = c->N, r.logits = c->logits, r.prob = c->prob;
    r.disp_sample = c->ds, r.disp_expert = c->de, r.disp_gate = c->gate, r.n_disp = c->n_disp;
    r.label = c->labels ? c->label : NULL, r.num_classes = c->C;
    double v = NAN;
    float dg[64 * 8] = {0};
    ck_assert_msg(ml_loss_inst_eval(&c->li, &r, 1.0f, dl, dp, dp ? dg : NULL, &v) == ML_OK, "%s", ml_error());
    /* a loss of the gates (eval_v2): here gate = prob at the pair, so d/dprob += d/dgate */
    for (int t = 0; dp && t < c->n_disp; t++) dp[c->ds[t] * c->N + c->de[t]] += dg[t];
    return v;
}

/* ml_gc_fn of the loss; NaN (not comparable) where a discrete choice the loss counts — the
   first choice argmax prob[b, :] — differs from the reference point's. */
static double loss_fn(void *ctx) {
    loss_case *c = ctx;
    for (int b = 0; c->guard_first && b < c->B; b++)
        if (ml_aux_argmax(c->prob + b * c->N, c->N) != c->first[b]) return NAN;
    return loss_value(c, NULL, NULL);
}

/* B samples, uniform prob, sample b to experts (k*b + j) % N: a perfectly even dispatch. */
static void case_uniform(loss_case *c, int B, int N, int k) {
    memset(c, 0, offsetof(loss_case, logits));
    c->B = B, c->N = N, c->C = N, c->n_disp = 0;
    for (int i = 0; i < B * N; i++) c->prob[i] = 1.0f / N, c->logits[i] = 0;
    for (int b = 0; b < B; b++) {
        c->label[b] = b % N;
        for (int j = 0; j < k; j++) c->ds[c->n_disp] = b, c->de[c->n_disp++] = (k * b + j) % N;
    }
}

/* One-hot prob on expert e(b); dispatch top-1. */
static void case_onehot(loss_case *c, int B, int N, int collapse) {
    case_uniform(c, B, N, 1);
    for (int b = 0; b < B; b++) {
        int e = collapse ? 0 : b % N;
        for (int i = 0; i < N; i++) c->prob[b * N + i] = i == e ? 1.0f : 0.0f;
        c->de[b] = e;
    }
}

static void case_random(loss_case *c, int B, int N, unsigned seed) {
    case_uniform(c, B, N, 2);
    tu_fill(c->logits, (size_t)B * N, seed, -2, 2);
    for (int b = 0; b < B; b++) {
        double m = -1e30, s = 0;
        for (int i = 0; i < N; i++) m = fmax(m, c->logits[b * N + i]);
        for (int i = 0; i < N; i++) s += exp(c->logits[b * N + i] - m);
        for (int i = 0; i < N; i++) c->prob[b * N + i] = (float)(exp(c->logits[b * N + i] - m) / s);
        c->label[b] = (b * 7) % 3;
    }
    c->C = 3;
    /* dispatch: the two largest probabilities */
    for (int b = 0; b < B; b++) {
        const float *p = c->prob + b * N;
        int e0 = 0, e1 = -1;
        for (int i = 1; i < N; i++) if (p[i] > p[e0]) e0 = i;
        for (int i = 0; i < N; i++) if (i != e0 && (e1 < 0 || p[i] > p[e1])) e1 = i;
        c->de[2 * b] = e0, c->de[2 * b + 1] = e1;
    }
}

static void loss_gradcheck(loss_case *c) {
    float dl[64 * 8] = {0}, dp[64 * 8] = {0};
    for (int b = 0; b < c->B; b++) c->first[b] = ml_aux_argmax(c->prob + b * c->N, c->N);
    loss_value(c, dl, dp);
    size_t n = (size_t)c->B * c->N;
    double e1 = tu_gradcheck(loss_fn, c, c->prob, dp, n, 64, 1e-3);
    double e2 = tu_gradcheck(loss_fn, c, c->logits, dl, n, 64, 1e-3);
    ck_assert_msg(e1 <= TU_GC_TOL, "gradient wrt prob: relative error %g", e1);
    ck_assert_msg(e2 <= TU_GC_TOL, "gradient wrt logits: relative error %g", e2);
}

static const struct { const char *name, *opt, *val; } loss_variants[] = {
    {"load_balance", NULL, NULL}, {"entropy", NULL, NULL},      {"entropy", "mode", "marginal"},
    {"importance_cv2", NULL, NULL}, {"z_loss", NULL, NULL},     {"mutual_info", NULL, NULL},
    {"mutual_info", "conditional", "true"}, {"load_balance", "count", "first_choice"},
    {"entropy", "goal", "lower"},   {"load_balance", "group", "4"}, {"load_balance", "group", "3"},
    {"load_balance", "group", "1"},
};

START_TEST(loss_fd_gradient) {
    loss_case c;
    case_random(&c, 16, 4, 3);
    loss_new(&c, loss_variants[_i].name, loss_variants[_i].opt, loss_variants[_i].val);
    c.guard_first = loss_variants[_i].val && !strcmp(loss_variants[_i].val, "first_choice");
    c.labels = 1;
    loss_gradcheck(&c);
    c.labels = 0;
    loss_gradcheck(&c);
    loss_free(&c);
}
END_TEST

#define LOSS_AT(c, name, opt, val, setup_call, expect)                         \
    do {                                                                      \
        loss_case *c_ = (c);                                                  \
        setup_call;                                                           \
        loss_new(c_, name, opt, val);                                         \
        double v_ = loss_value(c_, NULL, NULL);                               \
        ck_assert_msg(fabs(v_ - (expect)) < 1e-5, "%s(%s=%s) = %.9g, expected %.9g", name, \
                      opt ? opt : "", val ? val : "", v_, (double)(expect));  \
        loss_free(c_);                                                        \
    } while (0)

START_TEST(loss_hand_values) {
    static loss_case c;
    /* load_balance: 1 at perfect balance, N at total collapse */
    LOSS_AT(&c, "load_balance", NULL, NULL, case_uniform(&c, 8, 4, 2), 1.0);
    LOSS_AT(&c, "load_balance", NULL, NULL, case_onehot(&c, 8, 4, 1), 4.0);
    LOSS_AT(&c, "load_balance", "count", "first_choice", case_onehot(&c, 8, 4, 0), 1.0);
    LOSS_AT(&c, "load_balance", "count", "first_choice", case_onehot(&c, 8, 4, 1), 4.0);
    /* entropy: -log N at uniform; 0 on one-hot rows; marginal -log N on even one-hot */
    LOSS_AT(&c, "entropy", NULL, NULL, case_uniform(&c, 8, 4, 2), -log(4.0));
    LOSS_AT(&c, "entropy", NULL, NULL, case_onehot(&c, 8, 4, 0), 0.0);
    LOSS_AT(&c, "entropy", "mode", "marginal", case_onehot(&c, 8, 4, 0), -log(4.0));
    LOSS_AT(&c, "entropy", "mode", "marginal", case_onehot(&c, 8, 4, 1), 0.0);
    /* goal lower: +H, Huang et al.'s dynamic loss: log N at uniform, 0 on one-hot rows */
    LOSS_AT(&c, "entropy", "goal", "lower", case_uniform(&c, 8, 4, 2), log(4.0));
    LOSS_AT(&c, "entropy", "goal", "lower", case_onehot(&c, 8, 4, 0), 0.0);
    /* importance CV^2: 0 balanced; all 4 gate units on one expert of 4: var 3, mean 1 */
    LOSS_AT(&c, "importance_cv2", NULL, NULL, case_uniform(&c, 8, 4, 2), 0.0);
    LOSS_AT(&c, "importance_cv2", NULL, NULL, case_onehot(&c, 4, 4, 1), 3.0);
    /* mutual information: 0 at uniform, -log N when one-hot rows spread evenly */
    LOSS_AT(&c, "mutual_info", NULL, NULL, case_uniform(&c, 8, 4, 1), 0.0);
    LOSS_AT(&c, "mutual_info", NULL, NULL, case_onehot(&c, 8, 4, 0), -log(4.0));
    LOSS_AT(&c, "mutual_info", NULL, NULL, case_onehot(&c, 8, 4, 1), 0.0);
    /* conditional: class b%4 -> expert b%4 gives H(E) - H(E|Y) = log 4 - 0 */
    LOSS_AT(&c, "mutual_info", "conditional", "true", (case_onehot(&c, 8, 4, 0), c.labels = 1),
            -log(4.0));
    /* soft rows that are the same for every class: H(E|Y) = H(E), value 0 ... */
    LOSS_AT(&c, "mutual_info", "conditional", "true", (case_uniform(&c, 8, 4, 1), c.labels = 1),
            0.0);
    /* ... and without labels the conditional form falls back to -I(x; E) */
    LOSS_AT(&c, "mutual_info", "conditional", "true", (case_onehot(&c, 8, 4, 0), c.labels = 0),
            -log(4.0));
}
END_TEST

/*
 * load_balance's two counts. B = 4, N = 4, top-2 dispatch; prob rows (first choice):
 *   b0 .7 .2 .1 0 (0)   b1 .6 .1 .3 0 (0)   b2 .1 .5 0 .4 (1)   b3 .4 .4 .1 .1 (0: a tie)
 * P = (.45, .3, .125, .125). all_slots: triples 0 1 | 0 2 | 1 3 | 0 1, f = (3, 3, 1, 1) / 8,
 * value 4 (.375 .45 + .375 .3 + 2 .125 .125) = 1.25. first_choice: f = (3, 1, 0, 0) / 4,
 * value 4 (.75 .45 + .25 .3) = 1.65, gradient N f_i / B = f_i in every row; with only two
 * samples dispatched (the others dropped) first_choice is unchanged and all_slots counts
 * the two triples, f = (.5, .5, 0, 0), value 1.5.
 */
START_TEST(load_balance_counts) {
    static loss_case c;
    static const float prob[16] = {.7f, .2f, .1f, 0, .6f, .1f, .3f, 0, .1f, .5f, 0, .4f, .4f, .4f, .1f, .1f};
    static const int32_t top2[8] = {0, 1, 0, 2, 1, 3, 0, 1};
    static const char *const counts[2] = {"all_slots", "first_choice"};
    static const double full[2] = {1.25, 1.65}, dropped[2] = {1.5, 1.65};
    for (int m = 0; m < 2; m++) {
        case_uniform(&c, 4, 4, 2);
        memcpy(c.prob, prob, sizeof prob);
        memcpy(c.de, top2, sizeof top2);
        loss_new(&c, "load_balance", "count", counts[m]);
        float dl[16] = {0}, dp[16] = {0};
        double v = loss_value(&c, dl, dp);
        ck_assert_msg(fabs(v - full[m]) < 1e-6, "count %s: %.9g, expected %g", counts[m], v, full[m]);
        static const float f_first[4] = {.75f, .25f, 0, 0}, f_all[4] = {.375f, .375f, .125f, .125f};
        for (int i = 0; i < 16; i++) {
            ck_assert_float_eq_tol(dp[i], m ? f_first[i % 4] : f_all[i % 4], 1e-7f);
            ck_assert_float_eq(dl[i], 0);
        }
        /* samples 1 and 3 dropped: triples (0, 0) and (2, 1) only */
        c.n_disp = 2;
        c.ds[0] = 0, c.de[0] = 0, c.ds[1] = 2, c.de[1] = 1;
        v = loss_value(&c, NULL, NULL);
        ck_assert_msg(fabs(v - dropped[m]) < 1e-6, "count %s, two dropped: %.9g, expected %g", counts[m], v,
                      dropped[m]);
        loss_free(&c);
    }
    /* top-1 without drops: the counts agree */
    for (int m = 0; m < 2; m++) {
        case_random(&c, 16, 4, 7);
        for (int b = 0; b < 16; b++)
            c.ds[b] = b, c.de[b] = ml_aux_argmax(c.prob + b * 4, 4);
        c.n_disp = 16;
        loss_new(&c, "load_balance", "count", counts[m]);
        double v = loss_value(&c, NULL, NULL);
        loss_free(&c);
        static double v0;
        if (m == 0) v0 = v;
        else ck_assert_msg(fabs(v - v0) < 1e-12, "top-1: all_slots %.17g, first_choice %.17g", v0, v);
    }
}
END_TEST

/*
 * load_balance per group of rows (DeepSeek's sequence-wise form). B = 4, N = 2, top-1:
 *   b0 (.9 .1) → 0   b1 (.2 .8) → 1   b2 (.7 .3) → 0   b3 (.6 .4) → 0
 * batch (group 0, 4, 100): f = (.75, .25), P = (.6, .4): 2 (.45 + .1) = 1.1
 * group 2: {b0 b1} f = (.5, .5), P = (.55, .45): 1.0; {b2 b3} f = (1, 0), P = (.65, .35): 1.3;
 *          mean 1.15; d/dprob = N f^g / (|g| n_groups): (.25, .25) and (.5, 0)
 * group 3: {b0 b1 b2} f = (2/3, 1/3), P = (.6, .4): 2 (.4 + .4/3) = 16/15; {b3} (1, 0), (.6, .4):
 *          1.2; mean 17/15
 * group 1: each row N · p(its expert): 2 (.9 + .8 + .7 + .6) / 4 = 1.5 — the confidence of
 *          each sample on its own expert, no balancing across samples at all
 */
START_TEST(load_balance_groups) {
    static loss_case c;
    static const float prob[8] = {.9f, .1f, .2f, .8f, .7f, .3f, .6f, .4f};
    static const int32_t top1[4] = {0, 1, 0, 0};
    static const struct { const char *group; double v; } cs[] = {
        {"0", 1.1}, {"4", 1.1}, {"100", 1.1}, {"2", 1.15}, {"3", 17.0 / 15}, {"1", 1.5},
    };
    for (size_t k = 0; k < sizeof cs / sizeof *cs; k++)
        for (int m = 0; m < 2; m++) { /* top-1 without drops: both counts agree */
            case_uniform(&c, 4, 2, 1);
            memcpy(c.prob, prob, sizeof prob);
            memcpy(c.de, top1, sizeof top1);
            loss_new(&c, "load_balance", "group", cs[k].group);
            if (m) { /* the other count, with the same group */
                const ml_plugin *p = c.li.plugin;
                ml_optval v[ML_MAX_OPTIONS];
                ck_assert_int_eq(ml_option_defaults(p, v), ML_OK);
                ck_assert_int_eq(ml_option_parse(&p->options[ml_option_find(p, "group")], cs[k].group, 0,
                                                 &v[ml_option_find(p, "group")]), ML_OK);
                ck_assert_int_eq(ml_option_parse(&p->options[ml_option_find(p, "count")], "first_choice", 0,
                                                 &v[ml_option_find(p, "count")]), ML_OK);
                loss_free(&c);
                ck_assert_msg(ml_loss_inst_init(&c.li, p, v, 0, 1, 2, NULL, "") == ML_OK, "%s", ml_error());
            }
            float dl[8] = {0}, dp[8] = {0};
            double v = loss_value(&c, dl, dp);
            ck_assert_msg(fabs(v - cs[k].v) < 1e-6, "group %s count %d: %.9g, expected %.9g", cs[k].group, m, v,
                          cs[k].v);
            if (!strcmp(cs[k].group, "2")) {
                static const float want[8] = {.25f, .25f, .25f, .25f, .5f, 0, .5f, 0};
                for (int i = 0; i < 8; i++) ck_assert_float_eq_tol(dp[i], want[i], 1e-7f);
            }
            loss_free(&c);
        }
}
END_TEST

/* global_load_balance, hosted with a state block as a run hosts it. */
typedef struct glb {
    ml_params S;
    ml_loss_inst li;
    ml_rng rng;
} glb;

static void glb_new(glb *g, const char *window, const char *count, int N) {
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_LOSS, "global_load_balance");
    ck_assert_msg(p != NULL, "%s", ml_error());
    ml_optval v[ML_MAX_OPTIONS];
    ck_assert_int_eq(ml_option_defaults(p, v), ML_OK);
    ck_assert_int_eq(ml_option_parse(&p->options[ml_option_find(p, "window")], window, 0,
                                     &v[ml_option_find(p, "window")]), ML_OK);
    ck_assert_int_eq(ml_option_parse(&p->options[ml_option_find(p, "count")], count, 0,
                                     &v[ml_option_find(p, "count")]), ML_OK);
    ml_params_init(&g->S, 0);
    ml_rng_seed(&g->rng, 1);
    ck_assert_msg(ml_loss_inst_init(&g->li, p, v, 0, 1, N, &g->S, "moe1.loss0.") == ML_OK &&
                      ml_params_commit(&g->S, &g->rng) == ML_OK,
                  "%s", ml_error());
}

static void glb_free(glb *g) {
    ml_loss_inst_release(&g->li);
    ml_params_free(&g->S);
}

/* The loss of case c at training step `step` (training: the window advances). */
static double glb_eval(glb *g, loss_case *c, int64_t step, int training, float *dp) {
    for (int t = 0; t < c->n_disp; t++) c->gate[t] = c->prob[c->ds[t] * c->N + c->de[t]];
    ml_routing_record r;
    memset(&r, 0, sizeof r);
    r.size = sizeof r, r.B = c->B, r.N = c->N, r.logits = c->logits, r.prob = c->prob;
    r.disp_sample = c->ds, r.disp_expert = c->de, r.disp_gate = c->gate, r.n_disp = c->n_disp;
    r.training = training, r.step = step;
    double v = NAN;
    ck_assert_msg(ml_loss_inst_eval(&g->li, &r, 1.0f, NULL, dp, NULL, &v) == ML_OK, "%s", ml_error());
    return v;
}

/* B = 4 samples, N = 2, top-1 with one-hot prob: `n0` samples on expert 0, the rest on 1. */
static void case_split(loss_case *c, int n0) {
    case_uniform(c, 4, 2, 1);
    for (int b = 0; b < 4; b++) {
        int e = b < n0 ? 0 : 1;
        c->de[b] = e;
        c->prob[b * 2] = e == 0, c->prob[b * 2 + 1] = e == 1;
    }
}

/*
 * Window 3 over steps with (expert 0, expert 1) counts (3, 1), (1, 3), (2, 2), (4, 0):
 *   step 0: f = (3, 1)/4,                P = (.75, .25): 2 (.5625 + .0625) = 1.25
 *   step 1: f = (4, 4)/8 = (.5, .5):     1.0          step 2: f = (6, 6)/12: 1.0
 *   step 3: window = steps 1..3, f = (7, 5)/12, P = (1, 0): 2 · 7/12 = 7/6
 * An evaluation afterwards (training 0, step 4) with counts (0, 4): its batch takes step 1's
 * slot, f = (6, 6)/12, P = (0, 1): 1.0, and the state is unchanged. d/dprob = N f_i / B.
 */
START_TEST(global_load_balance_window) {
    static loss_case c;
    glb g;
    glb_new(&g, "3", "all_slots", 2);
    static const int n0[4] = {3, 1, 2, 4};
    static const double want[4] = {1.25, 1.0, 1.0, 7.0 / 6};
    static const double f0[4] = {.75, .5, .5, 7.0 / 12};
    float *saved = NULL;
    for (int st = 0; st < 4; st++) {
        case_split(&c, n0[st]);
        float dp[8] = {0};
        double v = glb_eval(&g, &c, st, 1, dp);
        ck_assert_msg(fabs(v - want[st]) < 1e-6, "step %d: %.9g, expected %.9g", st, v, want[st]);
        for (int b = 0; b < 4; b++) {
            ck_assert_float_eq_tol(dp[b * 2], (float)(2 * f0[st] / 4), 1e-7f);
            ck_assert_float_eq_tol(dp[b * 2 + 1], (float)(2 * (1 - f0[st]) / 4), 1e-7f);
        }
        if (st == 2) { /* what a checkpoint keeps */
            saved = malloc(g.S.total * sizeof(float));
            memcpy(saved, g.S.data, g.S.total * sizeof(float));
        }
    }
    float *before = malloc(g.S.total * sizeof(float));
    memcpy(before, g.S.data, g.S.total * sizeof(float));
    case_split(&c, 0);
    ck_assert_double_eq_tol(glb_eval(&g, &c, 4, 0, NULL), 1.0, 1e-6);
    ck_assert(!memcmp(before, g.S.data, g.S.total * sizeof(float)));
    /* the same step evaluated twice in training overwrites its slot: no double count */
    case_split(&c, 4);
    double v1 = glb_eval(&g, &c, 3, 1, NULL), v2 = glb_eval(&g, &c, 3, 1, NULL);
    ck_assert_double_eq(v1, v2);
    ck_assert_double_eq_tol(v1, 7.0 / 6, 1e-6);
    glb_free(&g);

    /* resume: a fresh instance given the state after step 2 continues as the first */
    glb_new(&g, "3", "all_slots", 2);
    ck_assert_int_eq(g.li.state.n, 2); /* counts (N, W) and totals (1, W) */
    ck_assert_int_eq(ml_tensor_decl_rows(&g.li.state.decl[0], 2), 2);
    ck_assert_int_eq(g.li.state.decl[0].cols, 3);
    ck_assert_int_eq(ml_tensor_decl_rows(&g.li.state.decl[1], 2), 1);
    memcpy(g.S.data, saved, g.S.total * sizeof(float));
    case_split(&c, 4);
    ck_assert_double_eq_tol(glb_eval(&g, &c, 3, 1, NULL), 7.0 / 6, 1e-6);
    glb_free(&g);
    free(saved), free(before);
}
END_TEST

/* window = 1 is load_balance, step after step, with both counts; and the gradient checks by
   finite differences with a window whose f differs from the batch's own. */
static loss_case *gfd_case;
static glb *gfd_glb;
static double gfd_fn(void *ctx) {
    (void)ctx;
    return glb_eval(gfd_glb, gfd_case, 7, 0, NULL);
}

START_TEST(global_load_balance_matches) {
    static loss_case c, d;
    static const char *counts[2] = {"all_slots", "first_choice"};
    for (int m = 0; m < 2; m++) {
        glb g;
        glb_new(&g, "1", counts[m], 4);
        loss_new(&d, "load_balance", "count", counts[m]);
        for (int st = 0; st < 5; st++) {
            case_random(&c, 16, 4, 40 + (unsigned)st);
            memcpy(&d.B, &c.B, sizeof c - offsetof(loss_case, B));
            float dp1[64] = {0}, dp2[64] = {0}, dl[64] = {0};
            double v1 = glb_eval(&g, &c, st, 1, dp1), v2 = loss_value(&d, dl, dp2);
            ck_assert_msg(fabs(v1 - v2) < 1e-9, "count %s step %d: %.12g vs load_balance %.12g", counts[m], st, v1, v2);
            for (int i = 0; i < 64; i++) ck_assert_float_eq_tol(dp1[i], dp2[i], 1e-7f);
        }
        loss_free(&d);
        glb_free(&g);
    }
    /* finite differences at a point where the window's f is not the batch's */
    glb g;
    glb_new(&g, "4", "all_slots", 4);
    for (int st = 0; st < 3; st++) {
        case_random(&c, 16, 4, 60 + (unsigned)st);
        glb_eval(&g, &c, st, 1, NULL);
    }
    case_random(&c, 16, 4, 77);
    float dp[64] = {0};
    glb_eval(&g, &c, 7, 0, dp);
    gfd_case = &c, gfd_glb = &g;
    double e = tu_gradcheck(gfd_fn, NULL, c.prob, dp, 64, 64, 1e-3);
    ck_assert_msg(e <= TU_GC_TOL, "gradient wrt prob: relative error %g", e);
    glb_free(&g);
}
END_TEST

/* growth: the per-expert counts keep their rows, an added expert starts at zero counts */
START_TEST(global_load_balance_growth) {
    static loss_case c;
    glb g;
    glb_new(&g, "2", "all_slots", 2);
    case_split(&c, 3);
    glb_eval(&g, &c, 0, 1, NULL);
    ck_assert_int_eq(ml_loss_inst_grow_declare(&g.li, 3), ML_OK);
    ck_assert_int_eq(ml_params_commit(&g.S, &g.rng), ML_OK);
    ml_tensor_set_bind(&g.li.state);
    const float *counts = g.li.state.data[0], *totals = g.li.state.data[1];
    static const float want[6] = {3, 0, 1, 0, 0, 0};
    for (int i = 0; i < 6; i++) ck_assert_float_eq(counts[i], want[i]);
    ck_assert_float_eq(totals[0], 4);
    /* step 1 on 3 experts: sample 3 on the new expert; f = (3 + 2, 1 + 1, 1) / 8 */
    case_uniform(&c, 4, 3, 1);
    static const int32_t de[4] = {0, 0, 1, 2};
    memcpy(c.de, de, sizeof de);
    for (int b = 0; b < 4; b++)
        for (int e = 0; e < 3; e++) c.prob[b * 3 + e] = e == de[b];
    /* P = (.5, .25, .25): 3 (5/8 .5 + 2/8 .25 + 1/8 .25) = 3 · 13/32 */
    ck_assert_double_eq_tol(glb_eval(&g, &c, 1, 1, NULL), 39.0 / 32, 1e-6);
    glb_free(&g);
}
END_TEST

START_TEST(z_loss_known) {
    static loss_case c;
    case_uniform(&c, 2, 2, 1);
    /* rows (0, 0) and (log 3, 0): logsumexp log 2 and log 4 */
    c.logits[0] = 0, c.logits[1] = 0, c.logits[2] = (float)log(3.0), c.logits[3] = 0;
    loss_new(&c, "z_loss", NULL, NULL);
    double want = (log(2.0) * log(2.0) + log(4.0) * log(4.0)) / 2;
    float dl[4] = {0}, dp[4] = {0};
    double v = loss_value(&c, dl, dp);
    ck_assert_double_eq_tol(v, want, 1e-6);
    /* d/dz = 2/B lse softmax: row 0: log 2 * 0.5 each */
    ck_assert_float_eq_tol(dl[0], (float)(log(2.0) * 0.5), 1e-6f);
    ck_assert_float_eq_tol(dl[2], (float)(log(4.0) * 0.75), 1e-6f);
    ck_assert_float_eq(dp[0], 0);
    /* large logits stay finite */
    c.logits[0] = 1e4f, c.logits[1] = -1e4f;
    v = loss_value(&c, dl, dp);
    ck_assert(isfinite(v) && v > 1e7);
    loss_free(&c);
}
END_TEST

/* ---------------------------------------------------------------- schedules */

static void sched_new(ml_schedule_inst *si, const char *name, const char *const *kv, int n) {
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_SCHEDULE, name);
    ck_assert_msg(p != NULL, "%s", ml_error());
    ml_optval v[ML_MAX_OPTIONS];
    ck_assert_int_eq(ml_option_defaults(p, v), ML_OK);
    for (int i = 0; i < n; i++) {
        int k = ml_option_find(p, kv[2 * i]);
        ck_assert_int_ge(k, 0);
        ck_assert_int_eq(ml_option_parse(&p->options[k], kv[2 * i + 1], 0, &v[k]), ML_OK);
    }
    ck_assert_msg(ml_schedule_inst_init(si, p, v, 2, 4096) == ML_OK, "%s", ml_error());
}

static void decide(ml_schedule_inst *si, int64_t images, int n0, int n1, int want0, int want1) {
    int ne[2] = {n0, n1}, add[2] = {0, 0}, nrem[2], r0[64], r1[64], *rem[2] = {r0, r1};
    ml_progress p = {sizeof p, images, images / 64, 1, 2, ne, 60000, NULL, NULL};
    ck_assert_msg(ml_schedule_inst_decide(si, &p, add, rem, nrem) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(nrem[0] + nrem[1], 0);
    ck_assert_msg(add[0] == want0 && add[1] == want1, "at %lld images with (%d, %d): add "
                  "(%d, %d), expected (%d, %d)", (long long)images, n0, n1, add[0], add[1],
                  want0, want1);
}

static int initial(ml_schedule_inst *si, int layer, int configured) {
    int n = 0;
    ck_assert_msg(ml_schedule_inst_initial(si, layer, configured, &n) == ML_OK, "%s", ml_error());
    return n;
}

START_TEST(progressive_arithmetic) {
    ml_schedule_inst s;
    sched_new(&s, "progressive", NULL, 0); /* start 2, every 7000, add 1, max 16 */
    ck_assert_int_eq(initial(&s, 0, 8), 2);
    decide(&s, 0, 2, 2, 0, 0);
    decide(&s, 6999, 2, 2, 0, 0);
    decide(&s, 7000, 2, 2, 1, 1);
    decide(&s, 35000, 3, 2, 4, 5);    /* target 2 + 5 = 7 */
    decide(&s, 1000000000, 20, 3, 0, 13); /* capped at 16; never negative */
    ml_schedule_inst_release(&s);
    const char *kv[] = {"start", "4", "every_images", "100", "add", "3", "max", "10"};
    sched_new(&s, "progressive", kv, 4);
    ck_assert_int_eq(initial(&s, 1, 2), 4);
    decide(&s, 199, 4, 4, 3, 3);      /* 4 + 1*3 = 7 */
    decide(&s, 200, 7, 4, 3, 6);      /* 4 + 2*3 = 10 */
    decide(&s, 100000, 10, 10, 0, 0);
    ml_schedule_inst_release(&s);
    sched_new(&s, "fixed", NULL, 0);
    ck_assert_int_eq(initial(&s, 0, 5), 5);
    decide(&s, 1000000, 5, 5, 0, 0);
    ml_schedule_inst_release(&s);
}
END_TEST

/* ABI 1.2 schedules: state per layer, every step's routing observed, removals decided. */
typedef struct sched_rig {
    ml_schedule_inst si;
    ml_params S;
    int ne[2];
} sched_rig;

static void rig_new(sched_rig *g, const char *name, const char *const *kv, int n, int n0, int n1) {
    memset(g, 0, sizeof *g);
    sched_new(&g->si, name, kv, n);
    ml_params_init(&g->S, 0);
    g->ne[0] = n0, g->ne[1] = n1;
    ck_assert_int_ge(ml_schedule_inst_declare_states(&g->si, &g->S, g->ne), 0);
    ml_rng r;
    ml_rng_seed(&r, 1);
    ck_assert_int_eq(ml_params_commit(&g->S, &r), ML_OK);
}

static void rig_free(sched_rig *g) {
    ml_schedule_inst_release(&g->si);
    ml_params_free(&g->S);
}

/* One step of layer l: 4 samples, sample b to expert use[b] (-1: dropped) with probability
   mass[b] there, the rest spread evenly. */
static void rig_observe(sched_rig *g, int l, int64_t step, const int *use, const float *mass) {
    int N = g->ne[l];
    float prob[4 * 16], dg[4];
    int32_t ds[4], de[4];
    ml_routing_record r = {sizeof r, 4, N, prob, prob, ds, de, dg, 0, NULL, 0, l, 1, step - 1, NULL};
    int dropped = 0;
    for (int b = 0; b < 4; b++) {
        for (int e = 0; e < N; e++) prob[b * N + e] = use[b] >= 0 ? (1 - mass[b]) / (N - 1) : 1.0f / N;
        if (use[b] < 0) {
            dropped++;
            continue;
        }
        prob[b * N + use[b]] = mass[b];
        ds[r.n_disp] = b, de[r.n_disp] = use[b], dg[r.n_disp] = mass[b];
        r.n_disp++;
    }
    ck_assert_msg(ml_schedule_inst_observe(&g->si, l, 1, step, &r, dropped) == ML_OK, "%s", ml_error());
}

/* decide at `step`: returns the adds; removals into rem0/rem1 (n in *n0, *n1) */
static void rig_decide(sched_rig *g, int64_t step, int *add, int *r0, int *n0, int *r1, int *n1) {
    int nrem[2], *rem[2] = {r0, r1};
    ml_progress p = {sizeof p, step * 64, step, 1, 2, g->ne, 60000, NULL, NULL};
    ck_assert_msg(ml_schedule_inst_decide(&g->si, &p, add, rem, nrem) == ML_OK, "%s", ml_error());
    *n0 = nrem[0], *n1 = nrem[1];
}

/* dynmoe on hand-made routing: an expert without a slot through the recording window is
   removed, one expert is added where samples went unserved in it (low probability mass on
   their experts, or no expert at all), nothing outside decision steps, once per step. */
START_TEST(dynmoe_decisions) {
    sched_rig g;
    const char *kv[] = {"window", "4", "interval", "8", "max", "5"};
    rig_new(&g, "dynmoe", kv, 3, 4, 3);
    const int use0[4] = {0, 1, 2, 0}, use1[4] = {0, 1, 2, 1};
    const float sure[4] = {0.9f, 0.9f, 0.9f, 0.9f}, unsure[4] = {0.9f, 0.2f, 0.9f, 0.9f};
    for (int64_t st = 1; st <= 8; st++) {
        rig_observe(&g, 0, st, use0, sure);                 /* layer 1: expert 3 never used */
        rig_observe(&g, 1, st, use1, st == 2 ? unsure : sure); /* layer 2: one unsure sample, before the window */
    }
    int add[2], r0[8], r1[8], n0, n1;
    rig_decide(&g, 7, add, r0, &n0, r1, &n1); /* not a decision step */
    ck_assert(add[0] == 0 && add[1] == 0 && n0 == 0 && n1 == 0);
    rig_decide(&g, 8, add, r0, &n0, r1, &n1);
    ck_assert_int_eq(n0, 1);
    ck_assert_int_eq(r0[0], 3);
    ck_assert_msg(add[0] == 0 && add[1] == 0 && n1 == 0, "the unsure sample of step 2 was outside the window");
    rig_decide(&g, 8, add, r0, &n0, r1, &n1); /* asked again in the same step */
    ck_assert(add[0] == 0 && add[1] == 0 && n0 == 0 && n1 == 0);
    /* carry the removal out as a run does: the state rows follow */
    static const int kept[3] = {0, 1, 2};
    ck_assert_int_eq(ml_schedule_inst_keep_rows(&g.si, 0, kept, 3), ML_OK);
    g.ne[0] = 3;
    ml_rng r;
    ml_rng_seed(&r, 2);
    ck_assert_int_eq(ml_params_commit(&g.S, &r), ML_OK);
    for (int64_t st = 9; st <= 16; st++) {
        rig_observe(&g, 0, st, use0, st == 14 ? unsure : sure); /* inside the window [13, 16] */
        const int drop1[4] = {0, -1, 2, 1};
        rig_observe(&g, 1, st, st == 15 ? drop1 : use1, sure);
    }
    rig_decide(&g, 16, add, r0, &n0, r1, &n1);
    ck_assert_msg(add[0] == 1 && add[1] == 1 && n0 == 0 && n1 == 0, "add (%d, %d), remove (%d, %d)", add[0], add[1], n0, n1);
    rig_free(&g);
    /* signal dropped: only samples without an expert count; min keeps experts */
    const char *kv2[] = {"window", "4", "interval", "4", "signal", "dropped", "min", "3"};
    rig_new(&g, "dynmoe", kv2, 4, 4, 4);
    const int one[4] = {0, 0, 0, 0}, drop[4] = {0, -1, 0, 0};
    for (int64_t st = 1; st <= 4; st++) {
        rig_observe(&g, 0, st, one, unsure); /* unsure, but served: not unserved here */
        rig_observe(&g, 1, st, st == 3 ? drop : one, sure);
    }
    rig_decide(&g, 4, add, r0, &n0, r1, &n1);
    ck_assert_int_eq(add[0], 0);
    ck_assert_int_eq(add[1], 1);
    ck_assert_msg(n0 == 1 && n1 == 1, "min 3 of 4: one removal each, got %d and %d", n0, n1);
    ck_assert_int_eq(r0[0], 3); /* the most idle first; ties: the higher id */
    rig_free(&g);
}
END_TEST

/* prune_dead: progressive removes an expert dead for dead_window steps and refills the
   layer to its target with a new one; fixed removes it and stays smaller. */
START_TEST(prune_dead_decisions) {
    const char *kv[] = {"prune_dead", "true", "dead_window", "3", "start", "4", "max", "4"};
    const int use[4] = {0, 1, 2, 0}; /* expert 3 of layer 1 dead; layer 2 all used (N = 3) */
    const float sure[4] = {0.9f, 0.9f, 0.9f, 0.9f};
    for (int which = 0; which < 2; which++) {
        sched_rig g;
        rig_new(&g, which ? "fixed" : "progressive", kv, which ? 2 : 4, 4, 3);
        int add[2], r0[8], r1[8], n0, n1;
        for (int64_t st = 1; st <= 2; st++) {
            rig_observe(&g, 0, st, use, sure);
            rig_observe(&g, 1, st, use, sure);
        }
        rig_decide(&g, 2, add, r0, &n0, r1, &n1);
        ck_assert_int_eq(n0, 0); /* idle 2 < 3 */
        rig_observe(&g, 0, 3, use, sure);
        rig_observe(&g, 1, 3, use, sure);
        rig_decide(&g, 3, add, r0, &n0, r1, &n1);
        ck_assert_int_eq(n0, 1);
        ck_assert_int_eq(r0[0], 3);
        ck_assert_int_eq(n1, 0);
        ck_assert_int_eq(add[0], which ? 0 : 1); /* progressive refills to its target of 4 */
        ck_assert_int_eq(add[1], which ? 0 : 1);
        rig_free(&g);
    }
}
END_TEST

/* ------------------------------------------------------------- plugin-test */

static int conformance(const char *path, char **text) {
    size_t len = 0;
    FILE *f = open_memstream(text, &len);
    int r = ml_plugin_conformance(path, f);
    fclose(f);
    return r;
}

START_TEST(conformance_builtins) {
    char *text = NULL;
    char path[512];
    snprintf(path, sizeof path, "%s/plugins/%s.so", tu_build(), builtins[_i].name);
    int r = conformance(path, &text);
    ck_assert_msg(r == 0, "%s: %d failed\n%s", builtins[_i].name, r, text);
    ck_assert_ptr_nonnull(strstr(text, "plugin-test: "));
    ck_assert_ptr_nonnull(strstr(text, " passed, 0 failed"));
    free(text);
}
END_TEST

START_TEST(conformance_good_and_broken) {
    char *text = NULL;
    int r = conformance(test_plugin("good_router"), &text);
    ck_assert_msg(r == 0, "%s", text);
    free(text);
    r = conformance(test_plugin("broken_grad"), &text);
    ck_assert_msg(r > 0, "%s", text);
    ck_assert_msg(strstr(text, "FAIL gradient dx: ") != NULL, "%s", text);
    ck_assert_msg(strstr(text, "finite differences") != NULL, "%s", text);
    ck_assert_msg(strstr(text, "PASS determinism") != NULL, "%s", text);
    free(text);
    r = conformance(test_plugin("abi_major"), &text);
    ck_assert_int_eq(r, -1);
    ck_assert_msg(strstr(text, "major versions differ") != NULL, "%s", text);
    free(text);
}
END_TEST

START_TEST(out_of_tree_router) {
    const char *dir = tu_tmpdir("oot");
    ck_assert_ptr_nonnull(dir);
    char so[512], cmd[1024];
    snprintf(so, sizeof so, "%s/my_router.so", dir);
    snprintf(cmd, sizeof cmd, "cc -O2 -shared -fPIC -fvisibility=hidden -I core/include "
             "tests/fixtures/out_of_tree/my_router.c -o %s", so);
    ck_assert_msg(system(cmd) == 0, "failed: %s", cmd);
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_ROUTER, so);
    ck_assert_msg(p != NULL, "%s", ml_error());
    ck_assert_str_eq(p->name, "my_router");
    char *text = NULL;
    int r = conformance(so, &text);
    ck_assert_msg(r == 0, "%s", text);
    free(text);
    /* by name through the search path, as `plugin_path: [dir]` in a config */
    ml_plugins_unload_all();
    ml_plugins_add_path(dir);
    p = ml_plugin_load(ML_PLUGIN_ROUTER, "my_router");
    ck_assert_msg(p != NULL, "%s", ml_error());
    unlink(so);
    rmdir(dir);
}
END_TEST

static Suite *plugins_suite(void) {
    Suite *s = suite_create("plugins");
    TCase *t = tcase_create("load");
    tcase_add_checked_fixture(t, setup, teardown);
    tcase_add_loop_test(t, load_builtin_by_name, 0, NBUILTIN);
    tcase_add_test(t, load_by_path);
    tcase_add_test(t, missing_name_lists_dirs);
    tcase_add_test(t, missing_path);
    tcase_add_test(t, never_the_working_directory);
    tcase_add_test(t, missing_symbol);
    tcase_add_test(t, abi_major_mismatch);
    tcase_add_test(t, abi_minor_mismatch);
    tcase_add_test(t, wrong_kind);
    tcase_add_test(t, bad_option_default);
    tcase_add_test(t, unload_and_reload);
    tcase_add_test(t, scan_path);
    tcase_add_test(t, print_listing);
    tcase_add_test(t, default_path_env);
    tcase_add_test(t, option_parse);
    tcase_add_test(t, option_defaults);
    tcase_add_test(t, host_table);
    suite_add_tcase(s, t);

    TCase *l = tcase_create("builtins");
    tcase_add_checked_fixture(l, setup, teardown);
    tcase_add_loop_test(l, loss_fd_gradient, 0, (int)(sizeof loss_variants / sizeof loss_variants[0]));
    tcase_add_test(l, loss_hand_values);
    tcase_add_test(l, load_balance_counts);
    tcase_add_test(l, z_loss_known);
    tcase_add_test(l, load_balance_groups);
    tcase_add_test(l, global_load_balance_window);
    tcase_add_test(l, global_load_balance_matches);
    tcase_add_test(l, global_load_balance_growth);
    tcase_add_test(l, progressive_arithmetic);
    tcase_add_test(l, dynmoe_decisions);
    tcase_add_test(l, prune_dead_decisions);
    suite_add_tcase(s, l);

    TCase *c = tcase_create("conformance");
    tcase_add_checked_fixture(c, setup, teardown);
    tcase_set_timeout(c, 60);
    tcase_add_loop_test(c, conformance_builtins, 0, NBUILTIN);
    tcase_add_test(c, conformance_good_and_broken);
    tcase_add_test(c, out_of_tree_router);
    suite_add_tcase(s, c);
    return s;
}

int main(void) { return tu_run(plugins_suite()); }
