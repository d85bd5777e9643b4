/*
 * check_routers.c — the router plugins in plugins/routers/, loaded from
 * <build>/plugins/<name>.so and driven through the router host a run uses
 * (plugin/router_host.h): tensors from the plugin's declarations, forward (checked by the
 * host), backward, events, growth.
 *
 * Every router: finite-difference gradients of L = Σ_triples gate·c + Σ prob·d + Σ logits·f
 * (+ the router's own regulariser where it adds one in backward: relu's L1) with respect to
 * x and every parameter (MOELAB_TEST_VERBOSE=1 prints each case's worst error); dispatch validity over batch sizes and expert
 * counts; bitwise determinism; growth 4 → 7 experts; no NaN/Inf at logits of ±1e4; no
 * leaked host allocations; one softmax: every softmax router gives bitwise the probabilities
 * of moelab/plugin_aux.h for the same logits. Then what is particular to each router.
 */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "moelab/plugin_aux.h"
#include "nn/gradcheck.h"
#include "plugin/loader.h"
#include "plugin/options.h"
#include "plugin/router_host.h"
#include "plugin/loss_host.h"
#include "testutil.h"

/* --------------------------------------------------------------- the harness */

/*
 * A router hosted by the router host (plugin/router_host.h) in blocks of its own, as the
 * MoE layer hosts it. After each call rt_sync points the fields the tests read (param,
 * grad, state, pd, sd, logits, prob, gate, sample, expert, n_disp, n_dropped) at the
 * host's; the tests may write the tensors through them.
 */
typedef struct rt {
    const ml_plugin *pl;
    const ml_router_api *api;
    ml_optval opt[ML_MAX_OPTIONS];
    ml_params P, S;
    ml_router_inst ri;
    int live;
    int B, D, N;
    int np, ns;
    const ml_tensor_decl *pd, *sd;
    float *param[ML_MAX_TENSORS], *grad[ML_MAX_TENSORS], *state[ML_MAX_TENSORS];
    float *x, *dx;                        /* (B, D) */
    int32_t *sid;                         /* (B) */
    float *logits, *prob, *gate;          /* the host's, after a forward */
    int32_t *sample, *expert;
    ml_rng init_rng;
    uint64_t fwd_seed;
    int reseed;   /* re-seed the route's RNG with fwd_seed before every forward */
    int training;
    int n_disp, n_dropped;
    long allocs0; /* host allocations alive before the router was created */
} rt;

static const char *router_names[] = {"noisy_topk", "saturation", "switch", "expert_choice", "aux_free_bias",
                                     "hash",       "random",     "softmax_topk", "sinkhorn", "top_p",
                                     "relu",       "cosine"};
#define NUM_ROUTERS ((int)(sizeof router_names / sizeof *router_names))

static void rt_open(rt *t, const char *name) {
    memset(t, 0, sizeof *t);
    char path[1024];
    snprintf(path, sizeof path, "%s/plugins/%s.so", tu_build(), name);
    t->pl = ml_plugin_load(ML_PLUGIN_ROUTER, path);
    ck_assert_msg(t->pl != NULL, "%s", ml_error());
    t->api = t->pl->api;
    ck_assert_int_eq(ml_option_defaults(t->pl, t->opt), ML_OK);
}

/* Sets option `name` from its YAML text. */
static void rt_opt(rt *t, const char *name, const char *val) {
    int i = ml_option_find(t->pl, name);
    ck_assert_msg(i >= 0, "%s has no option %s", t->pl->name, name);
    ck_assert_msg(ml_option_parse(&t->pl->options[i], val, 0, &t->opt[i]) == ML_OK, "%s=%s: %s", name, val,
                  ml_error());
}

static int decl_rows(const ml_tensor_decl *d, int N) { return ml_tensor_decl_rows(d, N); }

static void rt_sync(rt *t) {
    ml_router_inst *ri = &t->ri;
    ml_tensor_set_bind(&ri->param);
    ml_tensor_set_bind(&ri->state);
    t->N = ri->N;
    t->np = ri->param.n, t->ns = ri->state.n;
    t->pd = ri->param.decl, t->sd = ri->state.decl;
    for (int i = 0; i < t->np; i++) t->param[i] = ri->param.data[i], t->grad[i] = ri->param.grad[i];
    for (int i = 0; i < t->ns; i++) t->state[i] = ri->state.data[i];
    t->logits = ri->logits, t->prob = ri->prob, t->gate = ri->disp_gate;
    t->sample = ri->disp_sample, t->expert = ri->disp_expert;
    t->n_disp = ri->n_disp, t->n_dropped = ri->n_dropped;
}

/* Replaces x by a batch of B rows (values from seed). */
static void rt_set_batch(rt *t, int B, unsigned seed) {
    free(t->x), free(t->dx), free(t->sid);
    t->B = B;
    t->x = calloc((size_t)B * t->D + 1, sizeof(float));
    t->dx = calloc((size_t)B * t->D + 1, sizeof(float));
    t->sid = calloc((size_t)B + 1, sizeof(int32_t));
    tu_fill(t->x, (size_t)B * t->D, seed, -1, 1);
    for (int b = 0; b < B; b++) t->sid[b] = 1000 + b;
}

static void rt_create(rt *t, int B, int D, int N, uint64_t seed) {
    t->D = D;
    ml_rng_seed(&t->init_rng, seed);
    t->fwd_seed = seed ^ 0x5eedULL;
    t->training = 1;
    t->allocs0 = ml_host_live_allocs();
    ml_params_init(&t->P, 1);
    ml_params_init(&t->S, 0);
    t->live = 1;
    ck_assert_msg(ml_router_inst_init(&t->ri, t->pl, t->opt, 0, D, N, seed, t->fwd_seed, &t->P, &t->S, "") == ML_OK &&
                      ml_params_commit(&t->P, &t->init_rng) == ML_OK && ml_params_commit(&t->S, &t->init_rng) == ML_OK,
                  "%s", ml_error());
    rt_set_batch(t, B, 7);
    rt_sync(t);
}

static int rt_try_forward(rt *t) {
    if (t->reseed) ml_rng_seed(&t->ri.rng, t->fwd_seed);
    int rc = ml_router_inst_forward(&t->ri, t->x, t->B, t->training, t->sid);
    rt_sync(t);
    return rc;
}

static void rt_forward(rt *t) { ck_assert_msg(rt_try_forward(t) == ML_OK, "%s", ml_error()); }

static void rt_zero_grads(rt *t) {
    ml_params_zero_grad(&t->P);
    memset(t->dx, 0, (size_t)t->B * t->D * sizeof(float));
}

static void rt_backward(rt *t, const float *dgate, const float *dlogits, const float *dprob) {
    ck_assert_msg(ml_router_inst_backward(&t->ri, dgate, dlogits, dprob, t->dx) == ML_OK, "%s", ml_error());
    rt_sync(t);
}

static void rt_after_backward(rt *t, const float *grad_mag, const float *load) {
    ck_assert_msg(ml_router_inst_after_backward(&t->ri, grad_mag, load) == ML_OK, "%s", ml_error());
    rt_sync(t);
}

/* Grows to N experts as a run does: declare, commit (new rows initialised), EXPERTS_ADDED. */
static void rt_grow(rt *t, int N) {
    int old = t->ri.N;
    ck_assert_msg(ml_router_inst_grow_declare(&t->ri, N - old) == ML_OK && ml_params_commit(&t->P, &t->init_rng) == ML_OK &&
                      ml_params_commit(&t->S, &t->init_rng) == ML_OK && ml_router_inst_grow_finish(&t->ri, old) == ML_OK,
                  "%s", ml_error());
    rt_sync(t);
}

static void rt_close(rt *t) {
    if (t->live) ml_router_inst_release(&t->ri);
    t->live = 0;
    ck_assert_msg(ml_host_live_allocs() == t->allocs0, "%s leaks %ld host allocations", t->pl->name,
                  ml_host_live_allocs() - t->allocs0);
    ml_params_free(&t->P);
    ml_params_free(&t->S);
    free(t->x), free(t->dx), free(t->sid);
}

static int all_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return 0;
    return 1;
}

/* The ABI's promises about one forward's outputs. */
static void check_dispatch(const rt *t) {
    int B = t->B, N = t->N;
    const char *nm = t->pl->name;
    ck_assert_msg(t->n_disp >= 0 && t->n_disp <= B * N, "%s: n_disp %d with B=%d N=%d", nm,
                  t->n_disp, B, N);
    uint8_t *seen = calloc((size_t)B * N + 1, 1), *has = calloc((size_t)B + 1, 1);
    for (int i = 0; i < t->n_disp; i++) {
        int b = t->sample[i], e = t->expert[i];
        ck_assert_msg(b >= 0 && b < B && e >= 0 && e < N, "%s: triple %d = (%d, %d), B=%d N=%d",
                      nm, i, b, e, B, N);
        ck_assert_msg(!seen[(size_t)b * N + e], "%s: pair (%d, %d) twice", nm, b, e);
        seen[(size_t)b * N + e] = 1;
        has[b] = 1;
        ck_assert_msg(isfinite(t->gate[i]) && t->gate[i] >= 0, "%s: gate %g", nm, t->gate[i]);
    }
    int dropped = 0;
    for (int b = 0; b < B; b++) dropped += !has[b];
    ck_assert_msg(t->n_dropped == dropped, "%s: n_dropped %d, samples without triple %d", nm,
                  t->n_dropped, dropped);
    ck_assert_msg(all_finite(t->logits, (size_t)B * N), "%s: logits not finite", nm);
    for (int b = 0; b < B; b++) {
        double s = 0;
        for (int e = 0; e < N; e++) {
            float p = t->prob[(size_t)b * N + e];
            ck_assert_msg(isfinite(p) && p >= 0, "%s: prob[%d,%d] = %g", nm, b, e, p);
            s += p;
        }
        ck_assert_msg(fabs(s - 1) < 1e-4, "%s: prob row %d sums to %g", nm, b, s);
    }
    free(seen), free(has);
}

/* ------------------------------------------------------------ gradient check */

/* A term a router adds to the loss itself, in its own backward (relu's L1 regulariser),
   computed here independently from the route; NULL for most routers. */
typedef double (*rt_extra_fn)(const rt *t);

typedef struct gc {
    rt *t;
    const float *c, *d, *f; /* (B, N) weights of gates, prob, logits in L */
    int n_disp;
    int32_t *s0, *e0; /* the dispatch of the reference forward */
    rt_extra_fn extra;
} gc;

/* ml_gc_fn: L = sum gate*c + sum prob*d + sum logits*f (+ extra); NaN when the selection
   flipped (a discrete change, not a gradient; gradcheck.h skips the step). */
static double gc_loss(void *ctx) {
    gc *g = ctx;
    rt *t = g->t;
    rt_forward(t);
    if (t->n_disp != g->n_disp || memcmp(t->sample, g->s0, (size_t)g->n_disp * 4) ||
        memcmp(t->expert, g->e0, (size_t)g->n_disp * 4))
        return NAN;
    size_t bn = (size_t)t->B * t->N;
    double L = 0;
    for (int i = 0; i < t->n_disp; i++)
        L += (double)t->gate[i] * g->c[(size_t)t->sample[i] * t->N + t->expert[i]];
    for (size_t i = 0; i < bn; i++) L += (double)t->prob[i] * g->d[i] + (double)t->logits[i] * g->f[i];
    if (g->extra) L += g->extra(t);
    return L;
}

/* Worst gradient error over x and every parameter, by the one policy (nn/gradcheck.h). */
static double rt_gradcheck_extra(rt *t, unsigned seed, rt_extra_fn extra) {
    size_t bn = (size_t)t->B * t->N;
    float *c = malloc(bn * 4), *d = malloc(bn * 4), *f = malloc(bn * 4), *dg = malloc(bn * 4 + 4);
    tu_fill(c, bn, seed, -1, 1);
    tu_fill(d, bn, seed + 1, -1, 1);
    tu_fill(f, bn, seed + 2, -0.5f, 0.5f);
    t->reseed = 1;
    rt_forward(t);
    check_dispatch(t);
    gc g = {t, c, d, f, t->n_disp, malloc(bn * 4 + 4), malloc(bn * 4 + 4), extra};
    memcpy(g.s0, t->sample, (size_t)t->n_disp * 4);
    memcpy(g.e0, t->expert, (size_t)t->n_disp * 4);
    for (int i = 0; i < t->n_disp; i++) dg[i] = c[(size_t)t->sample[i] * t->N + t->expert[i]];
    rt_zero_grads(t);
    rt_backward(t, dg, f, d);
    float *ana[ML_MAX_TENSORS + 1], *val[ML_MAX_TENSORS + 1];
    size_t len[ML_MAX_TENSORS + 1];
    int nt = 0;
    ana[nt] = malloc((size_t)t->B * t->D * 4);
    memcpy(ana[nt], t->dx, (size_t)t->B * t->D * 4);
    val[nt] = t->x, len[nt] = (size_t)t->B * t->D, nt++;
    for (int i = 0; i < t->np; i++) {
        len[nt] = (size_t)decl_rows(&t->pd[i], t->N) * t->pd[i].cols;
        ana[nt] = malloc(len[nt] * 4);
        memcpy(ana[nt], t->grad[i], len[nt] * 4);
        val[nt] = t->param[i], nt++;
    }
    double scale = 0, worst = 0;
    for (int j = 0; j < nt; j++) scale = fmax(scale, ml_gc_scale(ana[j], len[j]));
    for (int j = 0; j < nt; j++) {
        ml_gc_result r;
        ml_gradcheck(NULL, gc_loss, &g, val[j], len[j], ana[j], scale, &r);
        ck_assert_msg(r.checked > 0, "%s: selection flips under every finite-difference step", t->pl->name);
        if (r.worst > worst) worst = r.worst;
        if (r.worst > ml_gc_default().tol)
            fprintf(stderr, "%s: tensor %d (0 = x) gradient error %g at %zu: %g vs %g\n", t->pl->name, j, r.worst,
                    r.index, r.analytic, r.numeric);
        free(ana[j]);
    }
    free(c), free(d), free(f), free(dg), free(g.s0), free(g.e0);
    t->reseed = 0;
    return worst;
}

/* An option's current value in t (the option must exist). */
static const ml_optval *rt_optval(const rt *t, const char *name) {
    int i = ml_option_find(t->pl, name);
    ck_assert_msg(i >= 0, "%s has no option %s", t->pl->name, name);
    return &t->opt[i];
}

/*
 * relu's regulariser, from ReMoE's formula (not from the plugin): λ (state "lambda") times
 * (1/B) Σ over dispatched pairs of w_e · gate, w_e = N c_e / (k B) (balance) or 1; training
 * forwards only.
 */
static double relu_l1(const rt *t) {
    if (!t->training) return 0;
    double k = rt_optval(t, "k")->f, lam = t->state[0][0], c[64] = {0}, L = 0;
    int balance = (int)rt_optval(t, "balance")->i;
    for (int i = 0; i < t->n_disp; i++) c[t->expert[i]] += 1;
    for (int i = 0; i < t->n_disp; i++)
        L += (balance ? t->N * c[t->expert[i]] / (k * t->B) : 1.0) * t->gate[i];
    return lam * L / t->B;
}

/* ------------------------------------------------------------------- tests */

START_TEST(test_descriptors) {
    for (int i = 0; i < NUM_ROUTERS; i++) {
        rt t;
        rt_open(&t, router_names[i]);
        ck_assert_str_eq(t.pl->name, router_names[i]);
        ck_assert_int_eq(t.pl->abi_major, ML_ABI_MAJOR);
        ck_assert_int_le(t.pl->abi_minor, ML_ABI_MINOR);
        ck_assert_uint_eq(t.pl->size, sizeof(ml_plugin));
        ck_assert_uint_eq(t.api->size, sizeof(ml_router_api));
        ck_assert_ptr_nonnull(t.pl->doc);
        for (int o = 0; o < t.pl->num_options; o++) ck_assert_ptr_nonnull(t.pl->options[o].doc);
        rt_create(&t, 4, 3, 4, 1);
        rt_close(&t);
    }
}
END_TEST

/* Router, options as name=value pairs, training. */
typedef struct gcase {
    const char *name;
    const char *opt[3][2];
    int training;
    rt_extra_fn extra; /* a term the router adds in its own backward */
} gcase;

static const gcase gcases[] = {
    {"noisy_topk", {{"k", "2"}}, 1, NULL},
    {"noisy_topk", {{"k", "3"}}, 0, NULL},
    {"noisy_topk", {{"k", "1"}, {"noise", "false"}}, 1, NULL},
    {"saturation", {{"k", "2"}}, 1, NULL},
    {"saturation", {{"k", "2"}, {"renormalize", "false"}}, 1, NULL},
    {"switch", {{"capacity_factor", "1.25"}}, 1, NULL},
    {"switch", {{"capacity_factor", "0.5"}}, 1, NULL}, /* with drops */
    {"expert_choice", {{"k", "2"}}, 1, NULL},
    {"expert_choice", {{"k", "1"}, {"capacity_factor", "0.5"}}, 1, NULL},
    {"aux_free_bias", {{"k", "2"}}, 1, NULL},
    {"aux_free_bias", {{"k", "3"}, {"score", "softmax"}}, 1, NULL},
    {"hash", {{"k", "2"}}, 1, NULL},
    {"random", {{"k", "2"}}, 1, NULL},
    {"sinkhorn", {{"k", "1"}}, 1, NULL},                      /* sigmoid gates, balanced */
    {"sinkhorn", {{"k", "2"}}, 1, NULL},                      /* softmax gates, balanced */
    {"sinkhorn", {{"k", "1"}, {"gate", "softmax"}}, 1, NULL},
    {"sinkhorn", {{"k", "2"}, {"gate", "sigmoid"}}, 0, NULL}, /* greedy evaluation */
    {"sinkhorn", {{"k", "2"}, {"eval", "balanced"}}, 0, NULL},
    {"top_p", {{"p", "0.4"}}, 1, NULL},
    {"top_p", {{"p", "0.8"}, {"renormalize", "true"}}, 1, NULL},
    {"top_p", {{"p", "0.9"}, {"max_k", "2"}, {"renormalize", "true"}}, 0, NULL},
    {"relu", {{"k", "2"}}, 1, relu_l1}, /* λ from the state: the L1 term included */
    {"relu", {{"k", "1"}, {"balance", "false"}}, 1, relu_l1},
    {"relu", {{"k", "2"}}, 0, relu_l1}, /* evaluation: no regulariser */
    {"cosine", {{"k", "1"}}, 1, NULL},
    {"cosine", {{"k", "2"}, {"renormalize", "true"}, {"dim", "3"}}, 1, NULL},
    {"cosine", {{"k", "3"}, {"dim", "8"}}, 0, NULL},
};

START_TEST(test_gradcheck) {
    const gcase *gcs = &gcases[_i];
    rt t;
    rt_open(&t, gcs->name);
    for (int i = 0; i < 3 && gcs->opt[i][0]; i++) rt_opt(&t, gcs->opt[i][0], gcs->opt[i][1]);
    rt_create(&t, 6, 5, 5, 11 + (uint64_t)_i);
    t.training = gcs->training;
    /* states away from their initial values, so that they matter */
    for (int i = 0; i < t.ns; i++)
        tu_fill(t.state[i], (size_t)decl_rows(&t.sd[i], t.N) * t.sd[i].cols, 3, 0, 1);
    double err = rt_gradcheck_extra(&t, 100 + (unsigned)_i, gcs->extra);
    ck_assert_msg(err <= ml_gc_default().tol, "%s (case %d): gradient error %g", gcs->name, _i, err);
    if (getenv("MOELAB_TEST_VERBOSE"))
        fprintf(stderr, "gradcheck %s (case %d, %s): worst error %.3g\n", gcs->name, _i,
                gcs->training ? "training" : "evaluation", err);
    /* the switch case with capacity 0.5 must actually drop */
    if (!strcmp(gcs->name, "switch") && !strcmp(gcs->opt[0][1], "0.5")) {
        rt_forward(&t);
        ck_assert_int_gt(t.n_dropped, 0);
    }
    rt_close(&t);
}
END_TEST

START_TEST(test_dispatch_valid) {
    static const int Bs[] = {1, 3, 17, 64}, Ns[] = {1, 2, 5, 8}; /* the host never routes 0 samples */
    for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++) {
        rt t;
        rt_open(&t, router_names[_i]);
        rt_create(&t, 1, 6, Ns[ni], 5 + ni);
        for (size_t bi = 0; bi < sizeof Bs / sizeof *Bs; bi++)
            for (int tr = 0; tr < 2; tr++) {
                rt_set_batch(&t, Bs[bi], 9 + (unsigned)bi);
                t.training = tr;
                rt_forward(&t);
                check_dispatch(&t);
                /* backward with dgate only, then with dprob and dlogits only */
                float *dg = calloc((size_t)t.n_disp + 1, 4);
                tu_fill(dg, (size_t)t.n_disp, 3, -1, 1);
                rt_zero_grads(&t);
                rt_backward(&t, dg, NULL, NULL);
                memset(dg, 0, ((size_t)t.n_disp + 1) * 4); /* the host always passes dgate */
                rt_backward(&t, dg, t.prob, t.prob);
                ck_assert(all_finite(t.dx, (size_t)t.B * t.D));
                free(dg);
            }
        rt_close(&t);
    }
}
END_TEST

/* Runs two forward+backward steps and returns a digest-free copy of everything. */
typedef struct snap {
    float *logits, *prob, *gate, *dx, *grad0;
    int32_t *sample, *expert;
    int n_disp, n_dropped;
} snap;

static void run_for_snap(rt *t, snap *s) {
    size_t bn = (size_t)t->B * t->N;
    for (int step = 0; step < 2; step++) {
        rt_forward(t);
        float *dg = calloc((size_t)t->n_disp + 1, 4);
        tu_fill(dg, (size_t)t->n_disp, 3, -1, 1);
        rt_zero_grads(t);
        rt_backward(t, dg, t->prob, t->logits);
        free(dg);
    }
    s->logits = malloc(bn * 4), s->prob = malloc(bn * 4), s->gate = malloc(bn * 4);
    s->sample = malloc(bn * 4), s->expert = malloc(bn * 4);
    s->dx = malloc((size_t)t->B * t->D * 4);
    memcpy(s->logits, t->logits, bn * 4), memcpy(s->prob, t->prob, bn * 4);
    memcpy(s->gate, t->gate, bn * 4), memcpy(s->sample, t->sample, bn * 4);
    memcpy(s->expert, t->expert, bn * 4), memcpy(s->dx, t->dx, (size_t)t->B * t->D * 4);
    size_t n0 = t->np ? (size_t)decl_rows(&t->pd[0], t->N) * t->pd[0].cols : 0;
    s->grad0 = malloc(n0 * 4 + 4);
    if (n0) memcpy(s->grad0, t->grad[0], n0 * 4);
    s->n_disp = t->n_disp, s->n_dropped = t->n_dropped;
}

START_TEST(test_determinism) {
    snap s[2];
    size_t bn = 0, bd = 0, n0 = 0;
    for (int k = 0; k < 2; k++) {
        rt t;
        rt_open(&t, router_names[_i]);
        rt_create(&t, 24, 7, 6, 42);
        run_for_snap(&t, &s[k]);
        bn = (size_t)t.B * t.N, bd = (size_t)t.B * t.D;
        n0 = t.np ? (size_t)decl_rows(&t.pd[0], t.N) * t.pd[0].cols : 0;
        rt_close(&t);
    }
    ck_assert_int_eq(s[0].n_disp, s[1].n_disp);
    ck_assert_int_eq(s[0].n_dropped, s[1].n_dropped);
    ck_assert(!memcmp(s[0].logits, s[1].logits, bn * 4));
    ck_assert(!memcmp(s[0].prob, s[1].prob, bn * 4));
    ck_assert(!memcmp(s[0].gate, s[1].gate, (size_t)s[0].n_disp * 4));
    ck_assert(!memcmp(s[0].sample, s[1].sample, (size_t)s[0].n_disp * 4));
    ck_assert(!memcmp(s[0].expert, s[1].expert, (size_t)s[0].n_disp * 4));
    ck_assert(!memcmp(s[0].dx, s[1].dx, bd * 4));
    ck_assert(!memcmp(s[0].grad0, s[1].grad0, n0 * 4));
    for (int k = 0; k < 2; k++) {
        free(s[k].logits), free(s[k].prob), free(s[k].gate), free(s[k].sample);
        free(s[k].expert), free(s[k].dx), free(s[k].grad0);
    }
}
END_TEST

START_TEST(test_growth) {
    rt t;
    rt_open(&t, router_names[_i]);
    rt_create(&t, 40, 6, 4, 3);
    rt_forward(&t);
    check_dispatch(&t);
    float *load = calloc(8, 4), *gm = calloc(8, 4);
    for (int i = 0; i < t.n_disp; i++) load[t.expert[i]] += 1;
    for (int n = 0; n < 4; n++) gm[n] = 0.1f * (float)(n + 1);
    rt_after_backward(&t, gm, load);
    rt_grow(&t, 7);
    ck_assert_int_eq(t.N, 7);
    int hit_new = 0;
    for (int step = 0; step < 3; step++) {
        t.training = step < 2;
        rt_forward(&t);
        check_dispatch(&t);
        float *dg = calloc((size_t)t.n_disp + 1, 4);
        tu_fill(dg, (size_t)t.n_disp, 5, -1, 1);
        rt_zero_grads(&t);
        rt_backward(&t, dg, t.logits, t.prob);
        ck_assert(all_finite(t.dx, (size_t)t.B * t.D));
        for (int i = 0; i < t.np; i++)
            ck_assert(all_finite(t.grad[i], (size_t)decl_rows(&t.pd[i], 7) * t.pd[i].cols));
        memset(load, 0, 8 * 4);
        for (int i = 0; i < t.n_disp; i++) load[t.expert[i]] += 1, hit_new |= t.expert[i] >= 4;
        for (int n = 0; n < 7; n++) gm[n] = 0.05f * (float)(n + 1);
        if (t.training) rt_after_backward(&t, gm, load);
        free(dg);
    }
    ck_assert_msg(hit_new, "%s: no sample reached the 3 new experts", t.pl->name);
    free(load), free(gm);
    rt_close(&t);
}
END_TEST

START_TEST(test_extreme_logits) {
    rt t;
    rt_open(&t, router_names[_i]);
    rt_create(&t, 16, 8, 5, 9);
    for (int i = 0; i < t.np; i++) {
        size_t n = (size_t)decl_rows(&t.pd[i], t.N) * t.pd[i].cols;
        tu_fill(t.param[i], n, 17 + (unsigned)i, -1, 1);
        for (size_t j = 0; j < n; j++) t.param[i][j] *= 1e4f;
    }
    for (int tr = 0; tr < 2; tr++) {
        t.training = tr;
        rt_forward(&t);
        check_dispatch(&t);
        float *dg = calloc((size_t)t.n_disp + 1, 4);
        tu_fill(dg, (size_t)t.n_disp, 5, -1, 1);
        rt_zero_grads(&t);
        rt_backward(&t, dg, t.prob, t.prob);
        ck_assert_msg(all_finite(t.dx, (size_t)t.B * t.D), "%s: dx not finite", t.pl->name);
        for (int i = 0; i < t.np; i++)
            ck_assert_msg(all_finite(t.grad[i], (size_t)decl_rows(&t.pd[i], t.N) * t.pd[i].cols),
                          "%s: gradient %d not finite", t.pl->name, i);
        free(dg);
    }
    rt_close(&t);
}
END_TEST

/* The routers whose prob is a softmax of their logits, with options that make the logits
   x W^T (+ b = 0): same W, same x, so the same logits and, from the one softmax of
   plugin_aux.h, bitwise the same probabilities. */
static const struct { const char *name, *opt, *val; } softmax_routers[] = {
    {"softmax_topk", NULL, NULL},   {"switch", NULL, NULL},
    {"saturation", "capacity_bias", "0"}, {"expert_choice", NULL, NULL},
    {"noisy_topk", NULL, NULL},     {"aux_free_bias", "score", "softmax"},
    {"sinkhorn", NULL, NULL},       {"top_p", NULL, NULL},
};

START_TEST(test_one_softmax) {
    enum { B = 16, D = 6, N = 6 };
    int nr = (int)(sizeof softmax_routers / sizeof *softmax_routers);
    float w[N * D], z0[B * N], p0[B * N], want[B * N];
    tu_fill(w, N * D, 77, -1.5f, 1.5f);
    for (int i = 0; i < nr; i++) {
        rt t;
        rt_open(&t, softmax_routers[i].name);
        if (softmax_routers[i].opt) rt_opt(&t, softmax_routers[i].opt, softmax_routers[i].val);
        rt_create(&t, B, D, N, 5);
        memcpy(t.param[0], w, sizeof w);
        for (int j = 1; j < t.np; j++) /* b, or noisy_topk's w_noise (unused in evaluation) */
            memset(t.param[j], 0, (size_t)decl_rows(&t.pd[j], N) * t.pd[j].cols * sizeof(float));
        t.training = 0;
        rt_forward(&t);
        if (i == 0) {
            memcpy(z0, t.logits, sizeof z0), memcpy(p0, t.prob, sizeof p0);
            ml_aux_softmax(z0, want, B, N);
            ck_assert_msg(!memcmp(p0, want, sizeof want), "softmax_topk: prob is not plugin_aux.h's softmax");
        }
        for (int j = 0; j < B * N; j++) {
            ck_assert_msg(t.logits[j] == z0[j], "%s: logit %d is %.9g, softmax_topk's %.9g", t.pl->name, j,
                          t.logits[j], z0[j]);
            ck_assert_msg(!memcmp(&t.prob[j], &p0[j], sizeof *p0), "%s: prob %d is %.9g, softmax_topk's %.9g",
                          t.pl->name, j, t.prob[j], p0[j]);
        }
        rt_close(&t);
    }
}
END_TEST

/* ---------------------------------------------------------- router-specific */

/* Every sample prefers expert 2: capacity floor(1.25 * 16 / 4) = 5, 11 overflow. */
START_TEST(test_switch_capacity) {
    rt t;
    rt_open(&t, "switch");
    rt_create(&t, 16, 4, 4, 1);
    memset(t.param[1], 0, 4 * sizeof(float));
    t.param[1][2] = 5.0f; /* bias toward expert 2 */
    for (int step = 0; step < 2; step++) {
        t.training = step == 0;
        rt_forward(&t);
        check_dispatch(&t);
        ck_assert_int_eq(t.n_disp, 5);
        ck_assert_int_eq(t.n_dropped, 11);
        for (int i = 0; i < 5; i++) {
            ck_assert_int_eq(t.sample[i], i); /* batch order */
            ck_assert_int_eq(t.expert[i], 2);
            ck_assert_float_eq(t.gate[i], t.prob[(size_t)i * 4 + 2]);
        }
    }
    rt_close(&t);

    /* eval_capacity = false: evaluation keeps everything, training still drops */
    rt_open(&t, "switch");
    rt_opt(&t, "eval_capacity", "false");
    rt_opt(&t, "capacity_factor", "0.1"); /* floor(0.4) → at least 1 */
    rt_create(&t, 16, 4, 4, 1);
    memset(t.param[1], 0, 4 * sizeof(float));
    t.param[1][2] = 5.0f;
    t.training = 0;
    rt_forward(&t);
    ck_assert_int_eq(t.n_disp, 16);
    ck_assert_int_eq(t.n_dropped, 0);
    t.training = 1;
    rt_forward(&t);
    ck_assert_int_eq(t.n_disp, 1);
    ck_assert_int_eq(t.n_dropped, 15);
    rt_close(&t);
}
END_TEST

START_TEST(test_expert_choice_capacity) {
    static const struct { int B, N, k; const char *cf; int C; } cs[] = {
        {16, 4, 2, "1.0", 8}, {10, 4, 1, "1.0", 3}, /* round(2.5) = 3 */
        {7, 3, 2, "1.0", 5},  {5, 8, 1, "0.1", 1},  /* clipped up to 1 */
        {6, 2, 2, "4.0", 6},                        /* clipped down to B */
    };
    for (size_t c = 0; c < sizeof cs / sizeof *cs; c++) {
        rt t;
        char k[8];
        snprintf(k, sizeof k, "%d", cs[c].k);
        rt_open(&t, "expert_choice");
        rt_opt(&t, "k", k);
        rt_opt(&t, "capacity_factor", cs[c].cf);
        rt_create(&t, cs[c].B, 5, cs[c].N, 7 + c);
        rt_forward(&t);
        check_dispatch(&t);
        int per[16] = {0};
        for (int i = 0; i < t.n_disp; i++) per[t.expert[i]]++;
        for (int e = 0; e < t.N; e++)
            ck_assert_msg(per[e] == cs[c].C, "case %zu: expert %d has %d samples, C = %d", c, e,
                          per[e], cs[c].C);
        /* each expert's chosen samples are its top-C by S[:, e]; gate = S */
        for (int i = 0; i < t.n_disp; i++) {
            int b = t.sample[i], e = t.expert[i];
            ck_assert_float_eq(t.gate[i], t.prob[(size_t)b * t.N + e]);
            int better = 0;
            for (int o = 0; o < t.B; o++)
                better += t.prob[(size_t)o * t.N + e] > t.prob[(size_t)b * t.N + e];
            ck_assert_int_lt(better, cs[c].C);
        }
        rt_close(&t);
    }
}
END_TEST

static float sigm(float z) { return 1.0f / (1.0f + expf(-z)); }

START_TEST(test_aux_free_bias) {
    rt t;
    rt_open(&t, "aux_free_bias");
    rt_opt(&t, "update_rate", "0.01");
    rt_create(&t, 64, 6, 4, 5);
    /* the update rule: overloaded down, underloaded up, at mean unchanged */
    float load[4] = {40, 10, 25, 25}, *bias = t.state[0];
    rt_after_backward(&t, NULL, load);
    ck_assert_float_eq_tol(bias[0], -0.01f, 1e-7);
    ck_assert_float_eq_tol(bias[1], 0.01f, 1e-7);
    ck_assert_float_eq(bias[2], 0.0f);
    ck_assert_float_eq(bias[3], 0.0f);

    /* a huge bias forces selection, yet gates are s / Σ s over the selected: no bias */
    bias[0] = bias[1] = bias[2] = 0;
    bias[3] = 10.0f;
    rt_forward(&t);
    check_dispatch(&t);
    for (int b = 0; b < t.B; b++) {
        int i0 = 2 * b, i1 = 2 * b + 1;
        ck_assert(t.expert[i0] == 3 || t.expert[i1] == 3);
        float s0 = sigm(t.logits[(size_t)b * 4 + t.expert[i0]]);
        float s1 = sigm(t.logits[(size_t)b * 4 + t.expert[i1]]);
        ck_assert_float_eq_tol(t.gate[i0], s0 / (s0 + s1), 1e-5);
        ck_assert_float_eq_tol(t.gate[i1], s1 / (s0 + s1), 1e-5);
    }

    /* the bias moves toward under-loaded experts until the load evens out */
    bias[3] = 0;
    memset(t.param[0], 0, 4 * 6 * sizeof(float));
    for (int d = 0; d < 6; d++) t.param[0][0 * 6 + d] = 0.8f, t.param[0][1 * 6 + d] = 0.7f;
    rt_set_batch(&t, 64, 21);
    for (size_t i = 0; i < 64 * 6; i++) t.x[i] = 0.5f + 0.5f * t.x[i]; /* x > 0: 0, 1 win */
    /* sign updates with a fixed step end in a small limit cycle: judge the average */
    double avg[4] = {0};
    for (int step = 0; step < 400; step++) {
        rt_forward(&t);
        float ld[4] = {0};
        for (int i = 0; i < t.n_disp; i++) ld[t.expert[i]] += 1;
        if (step == 0) ck_assert(ld[0] == 64 && ld[1] == 64); /* experts 0 and 1 take all */
        for (int e = 0; e < 4 && step >= 300; e++) avg[e] += ld[e] / 100.0;
        rt_after_backward(&t, NULL, ld);
    }
    for (int e = 0; e < 4; e++)
        ck_assert_msg(avg[e] > 24 && avg[e] < 40, "expert %d: mean load %g of 128 slots", e, avg[e]);
    ck_assert(bias[2] > bias[0] && bias[3] > bias[1]);

    /* growth: new experts start at the mean bias */
    double mean = (bias[0] + bias[1] + bias[2] + bias[3]) / 4.0;
    rt_grow(&t, 6);
    bias = t.state[0];
    ck_assert_float_eq_tol(bias[4], (float)mean, 1e-6);
    ck_assert_float_eq_tol(bias[5], (float)mean, 1e-6);
    rt_close(&t);
}
END_TEST

START_TEST(test_saturation_ema) {
    static const char *norms[] = {"none", "max", "mean"};
    for (int m = 0; m < 3; m++) {
        rt t;
        rt_open(&t, "saturation");
        rt_opt(&t, "norm", norms[m]);
        rt_opt(&t, "saturation_ema", "0.8");
        rt_opt(&t, "capacity_bias", "0.7");
        rt_create(&t, 8, 5, 4, 2);
        float *sat = t.state[0];
        for (int n = 0; n < 4; n++) ck_assert_float_eq(sat[n], 0.5f);
        double ref[4] = {0.5, 0.5, 0.5, 0.5};
        const float gms[3][4] = {{1e-4f, 3e-4f, 0, 2e-4f}, {2.0f, 1.0f, 4.0f, 1.0f},
                                 {0, 0, 0, 0}};
        for (int step = 0; step < 3; step++) {
            const float *g = gms[step];
            double mx = 0, mean = 0;
            for (int n = 0; n < 4; n++) mx = g[n] > mx ? g[n] : mx, mean += g[n] / 4.0;
            double div = m == 0 ? 1 : m == 1 ? mx : mean;
            for (int n = 0; n < 4; n++)
                ref[n] = 0.8 * ref[n] + 0.2 * (div > 0 ? g[n] / div : 0);
            rt_after_backward(&t, g, NULL);
            for (int n = 0; n < 4; n++)
                ck_assert_msg(fabs(sat[n] - ref[n]) < 1e-6, "norm %s step %d expert %d: %g vs %g",
                              norms[m], step, n, sat[n], ref[n]);
        }
        /* logits = x W^T + b + β (1 − s) */
        rt_forward(&t);
        for (int b = 0; b < t.B; b++)
            for (int n = 0; n < 4; n++) {
                double z = t.param[1][n] + 0.7 * (1 - sat[n]);
                for (int d = 0; d < 5; d++) z += (double)t.x[b * 5 + d] * t.param[0][n * 5 + d];
                ck_assert_msg(fabs(t.logits[b * 4 + n] - z) < 1e-5, "logit %g vs %g",
                              t.logits[b * 4 + n], z);
            }
        /* new experts start at 0.5 */
        rt_grow(&t, 6);
        sat = t.state[0];
        ck_assert_float_eq(sat[4], 0.5f);
        ck_assert_float_eq(sat[5], 0.5f);
        ck_assert_msg(fabs(sat[0] - ref[0]) < 1e-6, "old saturation kept");
        rt_close(&t);
    }
}
END_TEST

/* With norm = none and realistic magnitudes every bias converges to ≈ β: uniform. */
START_TEST(test_saturation_none_is_inert) {
    rt t;
    rt_open(&t, "saturation");
    rt_create(&t, 4, 3, 4, 2);
    const float g[4] = {1e-4f, 5e-4f, 2e-4f, 1e-5f};
    for (int step = 0; step < 200; step++) rt_after_backward(&t, g, NULL);
    for (int n = 0; n < 4; n++) ck_assert_float_lt(t.state[0][n], 1e-3f);
    rt_close(&t);
}
END_TEST

static uint64_t ref_splitmix64(uint64_t x) {
    uint64_t z = x + 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

START_TEST(test_hash) {
    rt t;
    rt_open(&t, "hash");
    rt_create(&t, 4000, 3, 8, 1);
    for (int b = 0; b < 4000; b++) t.sid[b] = b;
    rt_forward(&t);
    check_dispatch(&t);
    ck_assert_int_eq(t.n_disp, 4000);
    ck_assert_int_eq(t.np, 0);
    ck_assert_int_eq(t.ns, 0);
    int cnt[8] = {0};
    int32_t *first = malloc(4000 * 4);
    for (int i = 0; i < 4000; i++) {
        ck_assert_int_eq(t.sample[i], i);
        ck_assert_int_eq(t.expert[i], (int)(ref_splitmix64((uint64_t)i) % 8));
        ck_assert_float_eq(t.gate[i], 1.0f);
        ck_assert_float_eq(t.prob[(size_t)i * 8 + t.expert[i]], 1.0f);
        cnt[t.expert[i]]++;
        first[i] = t.expert[i];
    }
    for (int e = 0; e < 8; e++) ck_assert_msg(abs(cnt[e] - 500) < 75, "expert %d: %d", e, cnt[e]);
    /* stable: other x, other call, evaluation → same experts */
    tu_fill(t.x, 4000 * 3, 99, -5, 5);
    t.training = 0;
    rt_forward(&t);
    for (int i = 0; i < 4000; i++) ck_assert_int_eq(t.expert[i], first[i]);
    rt_zero_grads(&t);
    rt_backward(&t, t.gate, t.prob, t.prob);
    for (int i = 0; i < 4000 * 3; i++) ck_assert_float_eq(t.dx[i], 0.0f);
    free(first);
    rt_close(&t);

    /* k = 3: distinct experts with gate 1/3, the first one the k = 1 expert */
    rt_open(&t, "hash");
    rt_opt(&t, "k", "3");
    rt_create(&t, 200, 3, 5, 1);
    rt_forward(&t);
    check_dispatch(&t);
    ck_assert_int_eq(t.n_disp, 600);
    for (int i = 0; i < 600; i++) ck_assert_float_eq_tol(t.gate[i], 1.0f / 3, 1e-7);
    for (int b = 0; b < 200; b++)
        ck_assert_int_eq(t.expert[3 * b], (int)(ref_splitmix64((uint64_t)t.sid[b]) % 5));
    rt_close(&t);
}
END_TEST

START_TEST(test_random) {
    rt t;
    rt_open(&t, "random");
    rt_opt(&t, "k", "2");
    rt_create(&t, 8000, 3, 8, 4);
    rt_forward(&t);
    check_dispatch(&t);
    ck_assert_int_eq(t.n_disp, 16000);
    int cnt[8] = {0};
    int32_t *first = malloc(16000 * 4);
    for (int i = 0; i < 16000; i++) {
        cnt[t.expert[i]]++;
        ck_assert_float_eq(t.gate[i], 0.5f);
        first[i] = t.expert[i];
    }
    for (int i = 0; i < 8000 * 8; i++) ck_assert_float_eq(t.prob[i], 0.125f);
    for (int e = 0; e < 8; e++) ck_assert_msg(abs(cnt[e] - 2000) < 150, "expert %d: %d", e, cnt[e]);
    /* the next call draws anew */
    rt_forward(&t);
    int same = 0;
    for (int i = 0; i < 16000; i++) same += t.expert[i] == first[i];
    ck_assert_int_lt(same, 16000 / 2);
    /* k is clipped to N */
    free(first);
    rt_close(&t);
    rt_open(&t, "random");
    rt_opt(&t, "k", "5");
    rt_create(&t, 10, 3, 3, 4);
    rt_forward(&t);
    check_dispatch(&t);
    ck_assert_int_eq(t.n_disp, 30);
    rt_close(&t);
}
END_TEST

START_TEST(test_noisy_topk) {
    rt t;
    rt_open(&t, "noisy_topk");
    rt_create(&t, 12, 5, 6, 8);
    /* evaluation: H = x W_g exactly, and the RNG is not touched */
    t.training = 0;
    ml_rng before = t.ri.rng;
    rt_forward(&t);
    ck_assert(!memcmp(&before, &t.ri.rng, sizeof before));
    float *clean = malloc(12 * 6 * 4);
    for (int b = 0; b < 12; b++)
        for (int n = 0; n < 6; n++) {
            double z = 0;
            for (int d = 0; d < 5; d++) z += (double)t.x[b * 5 + d] * t.param[0][n * 5 + d];
            clean[b * 6 + n] = (float)z;
            ck_assert_float_eq_tol(t.logits[b * 6 + n], z, 1e-5);
        }
    /* gates: softmax over the top 2 of H, summing to 1 */
    for (int b = 0; b < 12; b++) {
        ck_assert_int_eq(t.sample[2 * b], b);
        ck_assert_float_eq_tol(t.gate[2 * b] + t.gate[2 * b + 1], 1.0f, 1e-6);
        ck_assert(t.gate[2 * b] >= t.gate[2 * b + 1]);
    }
    /* training: noise with scale softplus(0) = ln 2 while W_noise = 0 */
    t.training = 1;
    rt_forward(&t);
    double ss = 0;
    for (int i = 0; i < 72; i++) ss += pow(t.logits[i] - clean[i], 2);
    double sd = sqrt(ss / 72);
    ck_assert_msg(sd > 0.4 && sd < 1.0, "noise sd %g, expected about ln 2", sd);
    rt_close(&t);
    /* noise = false: training is noiseless too */
    rt_open(&t, "noisy_topk");
    rt_opt(&t, "noise", "false");
    rt_create(&t, 12, 5, 6, 8);
    rt_forward(&t);
    for (int i = 0; i < 72; i++) ck_assert_float_eq_tol(t.logits[i], clean[i], 1e-5);
    free(clean);
    rt_close(&t);
}
END_TEST

START_TEST(test_bad_options) {
    static const struct { const char *router, *opt, *val; } bad[] = {
        {"saturation", "saturation_ema", "1"},
        {"switch", "capacity_factor", "0"},
        {"expert_choice", "capacity_factor", "0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rt t;
        rt_open(&t, bad[i].router);
        rt_opt(&t, bad[i].opt, bad[i].val);
        long before = ml_host_live_allocs();
        ml_params P, S;
        ml_params_init(&P, 1);
        ml_params_init(&S, 0);
        ml_router_inst ri;
        ck_assert_int_eq(ml_router_inst_init(&ri, t.pl, t.opt, 0, 4, 4, 1, 1, &P, &S, ""), ML_ERR);
        ck_assert_msg(strstr(ml_error(), bad[i].opt) != NULL, "message names the option: %s", ml_error());
        ml_router_inst_release(&ri);
        ml_params_free(&P);
        ml_params_free(&S);
        ck_assert_int_eq(ml_host_live_allocs(), before);
    }
}
END_TEST

/* ------------------------------------------ a loss of the gates, through the router */

/* importance_cv2 (ABI 1.1 eval_v2) gives d/dgate; the router's backward carries it through
   its renormalised top-k gates, so the gradient of CV(importance)^2 with respect to the
   router's weights and input is exact (the 1.0 eval's dprob shortcut is not: cosine
   0.82-0.995, and non-zero at k = 1 where every renormalised gate is 1). */
typedef struct gl {
    rt *t;
    ml_loss_inst *li;
    int n_disp;
    int32_t *s0, *e0;
} gl;

static double gl_loss(void *ctx) {
    gl *g = ctx;
    rt *t = g->t;
    rt_forward(t);
    if (t->n_disp != g->n_disp || memcmp(t->sample, g->s0, (size_t)g->n_disp * 4) ||
        memcmp(t->expert, g->e0, (size_t)g->n_disp * 4))
        return NAN;
    ml_routing_record rec;
    ml_router_inst_record(&t->ri, &rec);
    double v = 0;
    ck_assert_msg(ml_loss_inst_eval(g->li, &rec, 1.0f, NULL, NULL, NULL, &v) == ML_OK, "%s", ml_error());
    return v;
}

static double gate_loss_check(int k, double *cosine_v1) {
    rt t;
    rt_open(&t, "softmax_topk");
    char kk[8];
    snprintf(kk, sizeof kk, "%d", k);
    rt_opt(&t, "k", kk);
    rt_opt(&t, "renormalize", "true");
    rt_create(&t, 32, 6, 5, 11);
    const ml_plugin *lp = ml_plugin_load(ML_PLUGIN_LOSS, tu_path("%s/plugins/importance_cv2.so", tu_build()));
    ck_assert_msg(lp != NULL, "%s", ml_error());
    ml_loss_inst li = {0};
    ck_assert_msg(ml_loss_inst_init(&li, lp, NULL, 0, 1, t.N, NULL, "") == ML_OK, "%s", ml_error());
    ck_assert(ml_loss_inst_has_gate_grad(&li));
    rt_forward(&t);
    size_t bn = (size_t)t.B * t.N;
    float *dgate = calloc(bn + 1, 4), *dprob = calloc(bn + 1, 4), *dprob1 = calloc(bn + 1, 4);
    ml_routing_record rec;
    ml_router_inst_record(&t.ri, &rec);
    double v;
    ck_assert(ml_loss_inst_eval(&li, &rec, 1.0f, NULL, dprob, dgate, &v) == ML_OK);
    gl g = {&t, &li, t.n_disp, malloc(bn * 4 + 4), malloc(bn * 4 + 4)};
    memcpy(g.s0, t.sample, (size_t)t.n_disp * 4);
    memcpy(g.e0, t.expert, (size_t)t.n_disp * 4);
    rt_zero_grads(&t);
    rt_backward(&t, dgate, NULL, dprob);
    size_t nw = (size_t)t.N * t.D;
    float *aw = malloc(nw * 4), *ax = malloc((size_t)t.B * t.D * 4);
    memcpy(aw, t.grad[0], nw * 4);
    memcpy(ax, t.dx, (size_t)t.B * t.D * 4);
    /* the 1.0 shortcut: dprob only, through eval (what a 1.0 host would call) */
    rt_forward(&t);
    ml_router_inst_record(&t.ri, &rec);
    double v1;
    ck_assert(li.api->eval(li.self, &rec, &v1, 1.0f, NULL, dprob1, (char[ML_ERR_MAX]){0}) == 0);
    rt_zero_grads(&t);
    rt_backward(&t, NULL, NULL, dprob1);
    double dot = 0, na = 0, nb = 0;
    for (size_t i = 0; i < nw; i++) dot += (double)aw[i] * t.grad[0][i], na += (double)aw[i] * aw[i], nb += (double)t.grad[0][i] * t.grad[0][i];
    *cosine_v1 = na > 0 && nb > 0 ? dot / sqrt(na * nb) : (na == 0 && nb == 0 ? 1 : 0);
    double scale = fmax(ml_gc_scale(aw, nw), ml_gc_scale(ax, (size_t)t.B * t.D)), worst = 0;
    ml_gc_result r;
    t.reseed = 1;
    ml_gradcheck(NULL, gl_loss, &g, t.param[0], nw, aw, scale, &r);
    ck_assert(r.checked > 0);
    worst = fmax(worst, r.worst);
    ml_gradcheck(NULL, gl_loss, &g, t.x, (size_t)t.B * t.D, ax, scale, &r);
    ck_assert(r.checked > 0);
    worst = fmax(worst, r.worst);
    if (k == 1) { /* every gate is 1: no gradient at all */
        for (size_t i = 0; i < nw; i++) ck_assert_msg(aw[i] == 0, "k=1: dW[%zu] = %g", i, aw[i]);
        ck_assert_msg(nb > 0, "k=1: the 1.0 shortcut is expected to be (wrongly) non-zero");
    }
    ml_loss_inst_release(&li);
    free(dgate), free(dprob), free(dprob1), free(aw), free(ax), free(g.s0), free(g.e0);
    rt_close(&t);
    return worst;
}

START_TEST(test_gate_loss_exact) {
    double cos2, cos1;
    double w2 = gate_loss_check(2, &cos2), w1 = gate_loss_check(1, &cos1);
    ck_assert_msg(w2 <= ml_gc_default().tol, "k=2: gradient error %g", w2);
    ck_assert_msg(w1 <= ml_gc_default().tol, "k=1: gradient error %g", w1);
    ck_assert_msg(cos2 < 0.9999, "k=2: the 1.0 shortcut agrees with the exact gradient (cosine %g)", cos2);
}
END_TEST

/* ------------------------------------------------- the methods of issue 11 */

/* x = the identity (B = D rows), so logits[b, n] = W[n, b]: the test writes the logits. */
static void rt_identity_logits(rt *t, const float *logits) {
    ck_assert_int_eq(t->B, t->D);
    memset(t->x, 0, (size_t)t->B * t->D * sizeof(float));
    for (int b = 0; b < t->B; b++) t->x[(size_t)b * t->D + b] = 1;
    for (int b = 0; b < t->B; b++)
        for (int n = 0; n < t->N; n++) t->param[0][(size_t)n * t->D + b] = logits[(size_t)b * t->N + n];
}

/* The value the router reported for metric `name` in window w (train 0, eval 1), or NaN. */
static double rt_metric(const rt *t, int w, const char *name) {
    const char *names[ML_ROUTER_MAX_METRICS];
    double vals[ML_ROUTER_MAX_METRICS];
    int n = ml_router_inst_metrics(&t->ri, w, names, vals, ML_ROUTER_MAX_METRICS);
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], name)) return vals[i];
    return NAN;
}

/* The overload metric: every sample prefers one expert. switch: B = 16, N = 4, capacity
 * floor(1.25 · 16 / 4) = 5: overload 16 / 5 in training and in evaluation (eval_capacity),
 * none without a capacity. expert_choice: k = 2, capacity_factor 1, C = 16 · 2 / 4 = 8:
 * 16 / 8 = 2 (each expert still takes exactly 8). */
START_TEST(test_overload) {
    rt t;
    rt_open(&t, "switch");
    rt_create(&t, 16, 4, 4, 1);
    memset(t.param[1], 0, 4 * sizeof(float));
    t.param[1][2] = 5.0f;
    rt_forward(&t);
    t.training = 0;
    rt_forward(&t);
    ck_assert_double_eq_tol(rt_metric(&t, ML_METRIC_TRAIN, "overload"), 16.0 / 5, 1e-12);
    ck_assert_double_eq_tol(rt_metric(&t, ML_METRIC_EVAL, "overload"), 16.0 / 5, 1e-12);
    rt_close(&t);

    rt_open(&t, "switch");
    rt_opt(&t, "eval_capacity", "false");
    rt_create(&t, 16, 4, 4, 1);
    t.training = 0;
    rt_forward(&t);
    ck_assert(isnan(rt_metric(&t, ML_METRIC_EVAL, "overload"))); /* no capacity, no overload */
    rt_close(&t);

    rt_open(&t, "expert_choice");
    rt_opt(&t, "k", "2");
    rt_opt(&t, "capacity_factor", "1.0");
    rt_create(&t, 16, 4, 4, 2);
    for (int i = 0; i < 16 * 4; i++) t.x[i] = fabsf(t.x[i]) + 0.1f; /* logits of expert 1: 5 · sum x > 0 */
    for (int e = 0; e < 4; e++)
        for (int d = 0; d < 4; d++) t.param[0][e * 4 + d] = e == 1 ? 5.0f : 0.0f;
    rt_forward(&t);
    check_dispatch(&t);
    ck_assert_double_eq_tol(rt_metric(&t, ML_METRIC_TRAIN, "overload"), 2.0, 1e-12);
    rt_close(&t);
}
END_TEST

/*
 * Sinkhorn by hand. Two samples, two experts, logits (2, 1) and (1.5, 0): both prefer expert
 * 0. The Sinkhorn limit has rows and columns of mass 1/2 and keeps the cross ratio
 * ρ = C00 C11 / (C01 C10) = e^{2 + 0 − 1 − 1.5} = e^{−1/2}, so P = [[q, 1/2 − q], [1/2 − q, q]]
 * with q / (1/2 − q) = √ρ: q = √ρ / (2 (1 + √ρ)) = 0.2189 < 1/4. Balanced: sample 0 goes to
 * expert 1 and sample 1 (the stronger preference for expert 0) to expert 0; greedy: both to
 * expert 0. Gates: sigmoid of the raw logit (k = 1, Megatron-Core's activation). The same
 * with every logit + 100, where Megatron-Core's exp overflows a float (the row shift).
 */
START_TEST(test_sinkhorn_hand) {
    static const float z[4] = {2, 1, 1.5f, 0};
    for (int shift = 0; shift <= 100; shift += 100) {
        rt t;
        rt_open(&t, "sinkhorn");
        rt_opt(&t, "tol", "1e-9");
        rt_create(&t, 2, 2, 2, 3);
        float zs[4];
        for (int i = 0; i < 4; i++) zs[i] = z[i] + (float)shift;
        rt_identity_logits(&t, zs);
        rt_forward(&t);
        check_dispatch(&t);
        ck_assert_int_eq(t.n_disp, 2);
        ck_assert_int_eq(t.expert[0], 1);
        ck_assert_int_eq(t.expert[1], 0);
        ck_assert_float_eq_tol(t.gate[0], sigm(zs[1]), 1e-6);
        ck_assert_float_eq_tol(t.gate[1], sigm(zs[2]), 1e-6);
        double it = rt_metric(&t, ML_METRIC_TRAIN, "sinkhorn_iters");
        ck_assert_msg(it >= 1 && it <= 100, "iterations %g", it);
        t.training = 0; /* greedy evaluation: top-1 of sigmoid(logits) */
        rt_forward(&t);
        ck_assert_int_eq(t.expert[0], 0);
        ck_assert_int_eq(t.expert[1], 0);
        ck_assert_float_eq_tol(t.gate[0], sigm(zs[0]), 1e-6);
        rt_close(&t);
        rt_open(&t, "sinkhorn");
        rt_opt(&t, "eval", "balanced");
        rt_create(&t, 2, 2, 2, 3);
        rt_identity_logits(&t, zs);
        t.training = 0;
        rt_forward(&t);
        ck_assert_int_eq(t.expert[0], 1);
        ck_assert_int_eq(t.expert[1], 0);
        rt_close(&t);
    }
}
END_TEST

/* Megatron-Core's sinkhorn as written (no row shift), in double: P of z (B, N). */
static void ref_sinkhorn(const float *z, int B, int N, double tol, double *P) {
    double d0[64], d1[64], old[64], e = 1e9;
    for (int b = 0; b < B; b++) d0[b] = 1;
    for (int i = 0; i < N; i++) d1[i] = old[i] = 1;
    /* Megatron's loop has no cap; near its fixed point the change can stall above a tight
       tol in floating point, so the reference stops where the plugin's `iters` does */
    for (int it = 0; e > tol && it < 10000; it++) {
        for (int b = 0; b < B; b++) {
            double s = 0;
            for (int i = 0; i < N; i++) s += d1[i] * exp(z[b * N + i]);
            d0[b] = (1.0 / B) / (s + 1e-8);
        }
        e = 0;
        for (int i = 0; i < N; i++) {
            double s = 0;
            for (int b = 0; b < B; b++) s += d0[b] * exp(z[b * N + i]);
            d1[i] = (1.0 / N) / (s + 1e-8);
            e += fabs(old[i] - d1[i]) / N;
            old[i] = d1[i];
        }
    }
    for (int b = 0; b < B; b++)
        for (int i = 0; i < N; i++) P[b * N + i] = d0[b] * exp(z[b * N + i]) * d1[i];
}

/* The assignment is the top-k of Megatron-Core's P, and it balances a batch that greedy
   routing sends to one expert. */
START_TEST(test_sinkhorn_balances) {
    enum { B = 48, N = 4, D = 6 };
    for (int k = 1; k <= 2; k++) {
        rt t;
        rt_open(&t, "sinkhorn");
        rt_opt(&t, "k", k == 1 ? "1" : "2");
        rt_opt(&t, "tol", "1e-7");
        rt_opt(&t, "iters", "10000");
        rt_create(&t, B, D, N, 9);
        rt_set_batch(&t, B, 31);
        for (int b = 0; b < B; b++) t.x[(size_t)b * D] = 3; /* a constant feature ... */
        t.param[0][0] += 2;                                  /* ... that expert 0 likes */
        t.training = 0;
        rt_forward(&t);
        int greedy[N] = {0};
        for (int i = 0; i < t.n_disp; i++) greedy[t.expert[i]]++;
        ck_assert_msg(greedy[0] == B, "greedy routing sends %d of %d samples to expert 0", greedy[0], B);
        t.training = 1;
        rt_forward(&t);
        check_dispatch(&t);
        double P[B * N];
        ref_sinkhorn(t.logits, B, N, 1e-7, P);
        int load[N] = {0};
        for (int b = 0; b < B; b++)
            for (int j = 0; j < k; j++) {
                int e = t.expert[b * k + j];
                load[e]++;
                int better = 0; /* e is among the k largest of P[b, :] */
                for (int i = 0; i < N; i++) better += P[b * N + i] > P[b * N + e] + 1e-9;
                ck_assert_msg(better < k, "sample %d: expert %d is not in the top %d of P", b, e, k);
                float want = k == 1 ? sigm(t.logits[b * N + e]) : t.prob[b * N + e];
                ck_assert_float_eq_tol(t.gate[b * k + j], want, 1e-6);
            }
        /* P's rows have mass 1/B and its columns 1/N; the top-k of its rows is near, not
           exactly, balanced */
        for (int e = 0; e < N; e++)
            ck_assert_msg(2 * load[e] >= B * k / N && 2 * load[e] <= 3 * B * k / N, "k=%d: expert %d has %d slots of %d",
                          k, e, load[e], B * k);
        rt_close(&t);
    }
}
END_TEST

/* Top-p by hand: probabilities (.5, .3, .15, .05) in one row and (.05, .15, .3, .5) in the
   other; the fewest experts whose mass reaches p, capped by max_k. */
START_TEST(test_top_p_hand) {
    static const float pr[2][4] = {{.5f, .3f, .15f, .05f}, {.05f, .15f, .3f, .5f}};
    static const struct { const char *p, *max_k; int t; } cs[] = {
        {"0.4", "0", 1}, {"0.49", "0", 1}, {"0.6", "0", 2}, {"0.79", "0", 2}, {"0.9", "0", 3},
        {"0.96", "0", 4}, {"1", "0", 4}, {"0.9", "2", 2}, {"0", "0", 1},
    };
    float z[8];
    for (int b = 0; b < 2; b++)
        for (int n = 0; n < 4; n++) z[b * 4 + n] = logf(pr[b][n]);
    for (size_t c = 0; c < sizeof cs / sizeof *cs; c++)
        for (int renorm = 0; renorm < 2; renorm++) {
            rt t;
            rt_open(&t, "top_p");
            rt_opt(&t, "p", cs[c].p);
            rt_opt(&t, "max_k", cs[c].max_k);
            rt_opt(&t, "renormalize", renorm ? "true" : "false");
            rt_create(&t, 4, 4, 4, 5);
            rt_set_batch(&t, 4, 1);
            float zz[16];
            for (int i = 0; i < 16; i++) zz[i] = z[i % 8];
            rt_identity_logits(&t, zz);
            rt_forward(&t);
            check_dispatch(&t);
            ck_assert_int_eq(t.n_disp, 4 * cs[c].t);
            double mass = 0;
            for (int j = 0; j < cs[c].t; j++) mass += pr[0][j];
            for (int b = 0; b < 4; b++)
                for (int j = 0; j < cs[c].t; j++) {
                    int i = b * cs[c].t + j, e = b % 2 ? 3 - j : j; /* most probable first */
                    ck_assert_int_eq(t.sample[i], b);
                    ck_assert_int_eq(t.expert[i], e);
                    double want = renorm ? pr[b % 2][e] / mass : pr[b % 2][e];
                    ck_assert_msg(fabs(t.gate[i] - want) < 1e-6, "p=%s renorm %d: gate %g, expected %g", cs[c].p,
                                  renorm, t.gate[i], want);
                }
            ck_assert_double_eq_tol(rt_metric(&t, ML_METRIC_TRAIN, "experts_per_sample"), cs[c].t, 1e-12);
            rt_close(&t);
        }
}
END_TEST

/* ReMoE by hand: gates ReLU(logits), prob the normalised gates, an all-negative row dropped
   with a uniform prob row; the regulariser's value with and without the load weights. */
START_TEST(test_relu_hand) {
    static const float z[16] = {1, -2, 0.5f, 0, /* experts 0 and 2 */
                                -1, -1, -1, -1, /* none: dropped */
                                3, -1, -1, -1,  /* expert 0 */
                                0, 0, 0, 2};    /* expert 3 */
    for (int balance = 0; balance < 2; balance++) {
        rt t;
        rt_open(&t, "relu");
        rt_opt(&t, "balance", balance ? "true" : "false");
        rt_create(&t, 4, 4, 4, 2);
        rt_identity_logits(&t, z);
        rt_forward(&t);
        check_dispatch(&t);
        ck_assert_int_eq(t.n_disp, 4);
        ck_assert_int_eq(t.n_dropped, 1);
        static const int ws[4] = {0, 0, 2, 3}, we[4] = {0, 2, 0, 3};
        static const float wg[4] = {1, 0.5f, 3, 2};
        for (int i = 0; i < 4; i++) {
            ck_assert_int_eq(t.sample[i], ws[i]);
            ck_assert_int_eq(t.expert[i], we[i]);
            ck_assert_float_eq(t.gate[i], wg[i]);
        }
        static const float wp[16] = {2 / 3.f, 0, 1 / 3.f, 0, .25f, .25f, .25f, .25f, 1, 0, 0, 0, 0, 0, 0, 1};
        for (int i = 0; i < 16; i++) ck_assert_float_eq_tol(t.prob[i], wp[i], 1e-7);
        /* counts c = (2, 0, 1, 1), k = 2, B = 4: w = N c / (k B) = (1, 0, .5, .5);
           L1 = (1·1 + .5·.5 + 1·3 + .5·2) / 4 = 1.3125 with the weights, (1 + .5 + 3 + 2) / 4 without */
        ck_assert_double_eq_tol(rt_metric(&t, ML_METRIC_TRAIN, "l1_reg"), balance ? 1.3125 : 1.625, 1e-7);
        ck_assert_double_eq_tol(rt_metric(&t, ML_METRIC_TRAIN, "experts_per_sample"), 1.0, 1e-12);
        ck_assert_double_eq_tol(rt_metric(&t, ML_METRIC_TRAIN, "l1_lambda"), 1e-8, 1e-15);
        /* the regulariser's gradient at the dispatched pairs only: dgate = 0, λ = 0.8:
           dz[b, e] = λ w_e / B, so dW[e, b] (x = I) */
        t.state[0][0] = 0.8f;
        rt_forward(&t);
        float dg[4] = {0};
        rt_zero_grads(&t);
        rt_backward(&t, dg, NULL, NULL);
        static const double w1[4] = {1, 0, .5, .5};
        for (int e = 0; e < 4; e++)
            for (int b = 0; b < 4; b++) {
                int hit = 0;
                for (int i = 0; i < 4; i++) hit |= ws[i] == b && we[i] == e;
                double want = hit ? 0.8 * (balance ? w1[e] : 1.0) / 4 : 0;
                ck_assert_msg(fabs(t.grad[0][e * 4 + b] - want) < 1e-7, "balance %d: dW[%d, %d] = %g, expected %g",
                              balance, e, b, t.grad[0][e * 4 + b], want);
            }
        /* evaluation forwards add no regulariser */
        t.training = 0;
        rt_forward(&t);
        rt_zero_grads(&t);
        rt_backward(&t, dg, NULL, NULL);
        for (int i = 0; i < 16; i++) ck_assert_float_eq(t.grad[0][i], 0);
        rt_close(&t);
    }
}
END_TEST

/* λ ← λ α^{sign(active − k)}: up while too dense, down while too sparse, still at k, and
   never to 0 nor past 1e30. */
START_TEST(test_relu_lambda_rule) {
    rt t;
    rt_open(&t, "relu");
    rt_opt(&t, "alpha", "1.5");
    rt_opt(&t, "k", "1");
    rt_create(&t, 4, 4, 4, 2);
    float z[16];
    float *lam = t.state[0];
    ck_assert_float_eq(lam[0], 1e-8f);
    static const struct { int active; double factor; } cs[] = {{2, 1.5}, {1, 1.0}, {0, 1 / 1.5}, {4, 1.5}};
    for (size_t c = 0; c < sizeof cs / sizeof *cs; c++) {
        /* every sample uses the first `active` experts */
        for (int b = 0; b < 4; b++)
            for (int n = 0; n < 4; n++) z[b * 4 + n] = n < cs[c].active ? 1.0f : -1.0f;
        rt_identity_logits(&t, z);
        double before = lam[0];
        rt_forward(&t);
        ck_assert_double_eq_tol(rt_metric(&t, ML_METRIC_TRAIN, "experts_per_sample"), cs[c].active, 1e-12);
        rt_after_backward(&t, NULL, NULL);
        ck_assert_msg(fabs(lam[0] - before * cs[c].factor) < 1e-6 * before, "active %d: lambda %g -> %g",
                      cs[c].active, before, lam[0]);
        ml_router_inst_metrics_reset(&t.ri, ML_METRIC_TRAIN);
    }
    /* an AFTER_BACKWARD with no training forward before it changes nothing */
    double v = lam[0];
    t.training = 0;
    rt_forward(&t);
    rt_after_backward(&t, NULL, NULL);
    ck_assert_float_eq(lam[0], (float)v);
    /* the floor and the ceiling */
    t.training = 1;
    for (int b = 0; b < 16; b++) z[b] = -1;
    rt_identity_logits(&t, z);
    lam[0] = 1e-38f;
    for (int i = 0; i < 5; i++) rt_forward(&t), rt_after_backward(&t, NULL, NULL);
    ck_assert(lam[0] > 0 && lam[0] == FLT_MIN);
    for (int b = 0; b < 16; b++) z[b] = 1;
    rt_identity_logits(&t, z);
    lam[0] = 1e30f;
    rt_forward(&t), rt_after_backward(&t, NULL, NULL);
    ck_assert_float_eq(lam[0], 1e30f);
    rt_close(&t);
}
END_TEST

/*
 * The controller end to end: an SGD loop where the task gradient wants every gate larger
 * (dL/dgate = −0.05, denser routing) and the router's own L1 term, with λ adapted each step,
 * pushes back. Starting from about N/2 = 4 active experts, the mean settles near k = 2. The
 * inputs are non-negative (post-ReLU-like): for inputs symmetric about 0 a router without
 * bias cannot go below N/2 active experts, since the sign of x·w_e does not depend on the
 * scale of w_e and half of a symmetric distribution lies on each side of any hyperplane
 * through 0.
 */
START_TEST(test_relu_controls_sparsity) {
    enum { B = 64, D = 8, N = 8 };
    rt t;
    rt_open(&t, "relu");
    rt_opt(&t, "k", "2");
    rt_create(&t, B, D, N, 12);
    double first = 0, late = 0;
    int nlate = 0;
    for (int step = 0; step < 900; step++) {
        rt_set_batch(&t, B, 1000 + (unsigned)step);
        for (int i = 0; i < B * D; i++) t.x[i] = 0.5f * (t.x[i] + 1);
        rt_forward(&t);
        if (step == 0) first = (double)t.n_disp / B;
        if (step >= 700) late += (double)t.n_disp / B, nlate++;
        float *dg = malloc(((size_t)t.n_disp + 1) * sizeof(float));
        for (int i = 0; i < t.n_disp; i++) dg[i] = -0.05f;
        rt_zero_grads(&t);
        rt_backward(&t, dg, NULL, NULL);
        for (int i = 0; i < N * D; i++) t.param[0][i] -= 0.05f * t.grad[0][i];
        rt_after_backward(&t, NULL, NULL);
        free(dg);
    }
    late /= nlate;
    ck_assert_msg(first > 2.5, "initial active experts %g (ReLU of a random linear map: about N/2)", first);
    ck_assert_msg(late > 1.6 && late < 2.4, "active experts over the last 200 steps: %g, target 2 (lambda %g)",
                  late, t.state[0][0]);
    rt_close(&t);
}
END_TEST

/* X-MoE by hand: W_p = I (dim = D = 2), embeddings (1, 0), (0, 2), (−1, −1): x = (3, 4)
   gives cosines (0.6, 0.8, −0.98995) over τ = 0.07; scaling x or an embedding changes
   nothing; τ below 1e-4 is floored and receives no gradient; x = 0 stays finite. */
START_TEST(test_cosine_hand) {
    rt t;
    rt_open(&t, "cosine");
    rt_opt(&t, "dim", "2");
    rt_create(&t, 2, 2, 3, 4);
    ck_assert_int_eq(t.np, 3);
    ck_assert_float_eq(t.param[2][0], 0.07f);
    static const float wp[4] = {1, 0, 0, 1}, emb[6] = {1, 0, 0, 2, -1, -1};
    memcpy(t.param[0], wp, sizeof wp);
    memcpy(t.param[1], emb, sizeof emb);
    static const float x[4] = {3, 4, -30, -40};
    memcpy(t.x, x, sizeof x);
    rt_forward(&t);
    check_dispatch(&t);
    const double c[3] = {0.6, 0.8, -1.4 / sqrt(2.0)};
    for (int n = 0; n < 3; n++) {
        ck_assert_double_eq_tol(t.logits[n], c[n] / 0.07, 1e-4);
        ck_assert_double_eq_tol(t.logits[3 + n], -c[n] / 0.07, 1e-4);
    }
    ck_assert_int_eq(t.n_disp, 2);
    ck_assert_int_eq(t.expert[0], 1);
    ck_assert_int_eq(t.expert[1], 2);
    ck_assert_float_eq(t.gate[0], t.prob[1]);
    ck_assert_double_eq_tol(rt_metric(&t, ML_METRIC_TRAIN, "temperature"), 0.07, 1e-7);
    float z0[6];
    memcpy(z0, t.logits, sizeof z0);
    for (int i = 0; i < 4; i++) t.x[i] *= 7;
    for (int i = 0; i < 2; i++) t.param[1][2 + i] *= 0.01f;
    rt_forward(&t);
    for (int i = 0; i < 6; i++) ck_assert_float_eq_tol(t.logits[i], z0[i], 1e-4);
    /* τ under the floor: logits = cos / 1e-4, finite; no gradient reaches τ */
    t.param[2][0] = -3;
    rt_forward(&t);
    check_dispatch(&t);
    ck_assert_double_eq_tol(t.logits[1], 0.8 / 1e-4, 1);
    float dg[2] = {1, 1};
    rt_zero_grads(&t);
    rt_backward(&t, dg, t.prob, t.prob);
    ck_assert_float_eq(t.grad[2][0], 0);
    ck_assert(all_finite(t.dx, 4) && all_finite(t.grad[0], 4) && all_finite(t.grad[1], 6));
    /* x = 0: û = u / ε = 0, every cosine 0, uniform prob; the gradient stays finite */
    t.param[2][0] = 0.07f;
    memset(t.x, 0, 4 * sizeof(float));
    rt_forward(&t);
    check_dispatch(&t);
    for (int i = 0; i < 6; i++) ck_assert_float_eq_tol(t.prob[i], 1 / 3.f, 1e-6);
    rt_zero_grads(&t);
    rt_backward(&t, dg, t.prob, t.prob);
    ck_assert(all_finite(t.dx, 4) && all_finite(t.grad[0], 4) && all_finite(t.grad[2], 1));
    rt_close(&t);
}
END_TEST

static Suite *routers_suite(void) {
    Suite *s = suite_create("routers");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_descriptors);
    tcase_add_loop_test(tc, test_gradcheck, 0, (int)(sizeof gcases / sizeof *gcases));
    tcase_add_loop_test(tc, test_dispatch_valid, 0, NUM_ROUTERS);
    tcase_add_loop_test(tc, test_determinism, 0, NUM_ROUTERS);
    tcase_add_loop_test(tc, test_growth, 0, NUM_ROUTERS);
    tcase_add_loop_test(tc, test_extreme_logits, 0, NUM_ROUTERS);
    tcase_add_test(tc, test_one_softmax);
    tcase_add_test(tc, test_gate_loss_exact);
    tcase_add_test(tc, test_switch_capacity);
    tcase_add_test(tc, test_expert_choice_capacity);
    tcase_add_test(tc, test_aux_free_bias);
    tcase_add_test(tc, test_saturation_ema);
    tcase_add_test(tc, test_saturation_none_is_inert);
    tcase_add_test(tc, test_hash);
    tcase_add_test(tc, test_random);
    tcase_add_test(tc, test_noisy_topk);
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_overload);
    tcase_add_test(tc, test_sinkhorn_hand);
    tcase_add_test(tc, test_sinkhorn_balances);
    tcase_add_test(tc, test_top_p_hand);
    tcase_add_test(tc, test_relu_hand);
    tcase_add_test(tc, test_relu_lambda_rule);
    tcase_add_test(tc, test_relu_controls_sparsity);
    tcase_add_test(tc, test_cosine_hand);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(routers_suite()); }
