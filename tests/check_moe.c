/* check_moe.c — the MoE layer: finite-difference gradients through router plugins and
 * experts, dropped samples, growth keeping values. */
#include <stdlib.h>
#include <string.h>

#include "model/moe.h"
#include "model/cod_experts.h"
#include "nn/optim.h"
#include "nn/gradcheck.h"
#include "plugin/loader.h"
#include "plugin/options.h"
#include <math.h>
#include <stdint.h>
#include "testutil.h"

enum { B = 6, D = 4, H = 5 };

typedef struct ctx {
    ml_moe *m;
    ml_params P, S;
    float z[B * 16], c[B * 16]; /* room for spatial rows (SC * SHW) */
    int32_t ids[B];
} ctx;

static const ml_plugin *router(const char *name) {
    const char *dir = tu_path("%s/plugins", tu_build());
    ml_plugins_set_path(&dir, 1);
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_ROUTER, name);
    ck_assert_msg(p != NULL, "%s", ml_error());
    return p;
}

static void setup(ctx *k, const char *name, int N, const char *opt_name, const char *opt_val) {
    memset(k, 0, sizeof *k);
    const ml_plugin *p = router(name);
    ml_optval opt[16];
    ck_assert_int_eq(ml_option_defaults(p, opt), ML_OK);
    for (int i = 0; opt_name && i < p->num_options; i++)
        if (!strcmp(p->options[i].name, opt_name)) ck_assert_int_eq(ml_option_parse(&p->options[i], opt_val, 0, &opt[i]), ML_OK);
    ml_params_init(&k->P, 1);
    ml_params_init(&k->S, 0);
    k->m = ml_moe_new(0, D, H, N, p, opt, &k->P, &k->S, 7);
    ck_assert_msg(k->m != NULL, "%s", ml_error());
    ml_rng rng;
    ml_rng_seed(&rng, 3);
    ck_assert_int_eq(ml_params_commit(&k->P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&k->S, &rng), ML_OK);
    tu_fill(k->z, B * D, 11, -1, 1);
    tu_fill(k->c, B * D, 12, -1, 1);
    for (int b = 0; b < B; b++) k->ids[b] = b;
}

static void teardown(ctx *k) {
    ml_moe_free(k->m);
    ml_params_free(&k->P);
    ml_params_free(&k->S);
}

/* L = sum c * moe(z), evaluated with training = 0 so no state changes between calls */
static double loss(void *p) {
    ctx *k = p;
    float y[B * 16];
    ck_assert_int_eq(ml_moe_forward(k->m, k->z, y, B, 0, k->ids, NULL, 0), ML_OK);
    double s = 0;
    for (int i = 0; i < B * k->m->D; i++) s += (double)k->c[i] * y[i];
    return s;
}

/* ml_gc_fn: the loss, or NaN when the perturbation changed the dispatch (a top-k flip is a
   discontinuity, not a gradient error; gradcheck.h skips such steps). */
typedef struct fd_ctx {
    ctx *k;
    int K;
    int32_t base[B * 16];
} fd_ctx;

static double fd_loss(void *p) {
    fd_ctx *f = p;
    double v = loss(f->k);
    const ml_router_inst *ri = &f->k->m->router;
    if (ri->n_disp != f->K || memcmp(f->base, ri->disp_expert, (size_t)f->K * sizeof(int32_t))) return NAN;
    return v;
}

static double moe_gradcheck(ctx *k, float *x, const float *analytic, size_t n, double scale) {
    fd_ctx f = {k, 0, {0}};
    loss(k);
    f.K = k->m->router.n_disp;
    memcpy(f.base, k->m->router.disp_expert, (size_t)f.K * sizeof(int32_t));
    ml_gc_result r;
    ml_gradcheck(NULL, fd_loss, &f, x, n, analytic, scale, &r);
    ck_assert_int_gt(r.checked, 0);
    return r.worst;
}

static void check_router_grads(const char *name, int N, const char *opt, const char *val) {
    ctx k;
    setup(&k, name, N, opt, val);
    float y[B * D], dz[B * D] = {0};
    ck_assert_int_eq(ml_moe_forward(k.m, k.z, y, B, 0, k.ids, NULL, 0), ML_OK);
    ml_params_zero_grad(&k.P);
    ck_assert_int_eq(ml_moe_backward(k.m, k.c, dz), ML_OK);
    float *g = malloc(k.P.total * sizeof(float));
    memcpy(g, k.P.grad, k.P.total * sizeof(float));
    double scale = fmax(ml_gc_scale(dz, B * D), ml_gc_scale(g, k.P.total));
    double ex = moe_gradcheck(&k, k.z, dz, B * D, scale);
    ck_assert_msg(ex <= ml_gc_default().tol, "router %s: dz gradient error %g", name, ex);
    for (int t = 0; t < k.P.count; t++) {
        double err = moe_gradcheck(&k, ml_params_data(&k.P, t), g + k.P.t[t].off, k.P.t[t].n, scale);
        ck_assert_msg(err <= ml_gc_default().tol, "router %s: tensor %s gradient error %g", name, k.P.t[t].name, err);
    }
    free(g);
    teardown(&k);
}

START_TEST(gradients_softmax_topk) { check_router_grads("softmax_topk", 3, "k", "2"); }
END_TEST
START_TEST(gradients_softmax_top1_no_renorm) { check_router_grads("softmax_topk", 4, "renormalize", "false"); }
END_TEST
START_TEST(gradients_switch_with_drops) { check_router_grads("switch", 3, "capacity_factor", "0.5"); }
END_TEST
START_TEST(gradients_expert_choice) { check_router_grads("expert_choice", 3, NULL, NULL); }
END_TEST

/* ------------------------------------------------------------ spatial layers */

/* A test expert kind on (C, HW) rows: f(x)[o, p] = tanh(sum_c W[o, c] x[c, p] + b[o]). */
enum { SC = 3, SHW = 4 };
typedef struct pix_kind {
    float *a; /* (K, C, HW) tanh outputs */
    int cap;
} pix_kind;

static void *pix_create(ml_moe *m, const void *cfg) {
    (void)m, (void)cfg;
    return calloc(1, sizeof(pix_kind));
}
static void pix_free(void *st) {
    pix_kind *k = st;
    if (k) free(k->a);
    free(k);
}
static int pix_describe(void *st, const ml_moe *m, int e, int i, ml_expert_tensor *t) {
    (void)st, (void)e;
    if (i > 1) return -1;
    snprintf(t->name, sizeof t->name, "%s", i ? "b" : "w");
    t->ndim = i ? 1 : 2;
    t->shape[0] = m->C;
    t->shape[1] = i ? 0 : m->C;
    t->init = ML_INIT_UNIFORM_FANIN;
    t->fan_in = m->C;
    return 0;
}
static int pix_reserve(void *st, ml_moe *m, int K) {
    pix_kind *k = st;
    if (K <= k->cap) return ML_OK;
    free(k->a);
    k->a = calloc((size_t)K * m->D, sizeof(float));
    k->cap = K;
    return k->a ? ML_OK : ML_ERR;
}
static int pix_forward(void *st, ml_moe *m, int e, int r0, int n, const float *xg, float *yg, int training) {
    pix_kind *k = st;
    (void)training;
    const float *W = ml_moe_param(m, e, 0), *b = ml_moe_param(m, e, 1);
    for (int r = 0; r < n; r++)
        for (int o = 0; o < m->C; o++)
            for (int q = 0; q < m->HW; q++) {
                double s = b[o];
                for (int c = 0; c < m->C; c++) s += W[o * m->C + c] * xg[(size_t)r * m->D + c * m->HW + q];
                float v = tanhf((float)s);
                yg[(size_t)r * m->D + o * m->HW + q] = v;
                k->a[((size_t)r0 + r) * m->D + o * m->HW + q] = v;
            }
    return ML_OK;
}
static int pix_backward(void *st, ml_moe *m, int e, int r0, int n, const float *xg, const float *dyg, float *dxg,
                        int next, ml_expert_abs *sums) {
    (void)next, (void)sums; /* no prefetch, no sums of its own: grad_mag sums its tensors */
    pix_kind *k = st;
    const float *W = ml_moe_param(m, e, 0);
    float *dW = ml_moe_grad(m, e, 0), *db = ml_moe_grad(m, e, 1);
    for (int r = 0; r < n; r++)
        for (int o = 0; o < m->C; o++)
            for (int q = 0; q < m->HW; q++) {
                size_t i = (size_t)r * m->D + o * m->HW + q;
                float a = k->a[((size_t)r0 + r) * m->D + o * m->HW + q];
                float g = dyg[i] * (1 - a * a);
                db[o] += g;
                for (int c = 0; c < m->C; c++) {
                    dW[o * m->C + c] += g * xg[(size_t)r * m->D + c * m->HW + q];
                    dxg[(size_t)r * m->D + c * m->HW + q] += g * W[o * m->C + c];
                }
            }
    return ML_OK;
}
static const ml_expert_kind pix = {"pix", pix_create, pix_free, pix_describe, pix_reserve, pix_forward, pix_backward, NULL, NULL, 0, 0};

/* The router sees each map's channel means; gradients reach the input through the experts,
   the gates and the pool, and the experts' and router's parameters: finite differences. */
START_TEST(spatial_layer_gradients) {
    ctx k;
    memset(&k, 0, sizeof k);
    const ml_plugin *p = router("softmax_topk");
    ml_optval opt[16];
    ck_assert_int_eq(ml_option_defaults(p, opt), ML_OK);
    ml_params_init(&k.P, 1);
    ml_params_init(&k.S, 0);
    k.m = ml_moe_new_spatial(0, SC, SHW, 3, &pix, NULL, p, opt, &k.P, &k.S, 7);
    ck_assert_msg(k.m != NULL, "%s", ml_error());
    ck_assert_int_eq(k.m->D, SC * SHW);
    ck_assert_int_eq(k.m->R, SC);
    ml_rng rng;
    ml_rng_seed(&rng, 3);
    ck_assert_int_eq(ml_params_commit(&k.P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&k.S, &rng), ML_OK);
    ck_assert_int_ge(ml_params_find(&k.P, "moe1.expert2.w"), 0);
    tu_fill(k.z, B * SC * SHW, 11, -1, 1);
    tu_fill(k.c, B * SC * SHW, 12, -1, 1);
    for (int b = 0; b < B; b++) k.ids[b] = b;
    float y[B * SC * SHW], dz[B * SC * SHW] = {0};
    ck_assert_int_eq(ml_moe_forward(k.m, k.z, y, B, 0, k.ids, NULL, 0), ML_OK);
    /* the router's input is the channel means */
    for (int c = 0; c < SC; c++) {
        double mean = 0;
        for (int q = 0; q < SHW; q++) mean += k.z[c * SHW + q] / SHW;
        ck_assert_double_eq_tol(k.m->rin[c], mean, 1e-6);
    }
    ml_params_zero_grad(&k.P);
    ck_assert_int_eq(ml_moe_backward(k.m, k.c, dz), ML_OK);
    float *g = malloc(k.P.total * sizeof(float));
    memcpy(g, k.P.grad, k.P.total * sizeof(float));
    double scale = fmax(ml_gc_scale(dz, B * SC * SHW), ml_gc_scale(g, k.P.total));
    double ex = moe_gradcheck(&k, k.z, dz, B * SC * SHW, scale);
    ck_assert_msg(ex <= ml_gc_default().tol, "spatial: dx gradient error %g", ex);
    for (int t = 0; t < k.P.count; t++) {
        double err = moe_gradcheck(&k, ml_params_data(&k.P, t), g + k.P.t[t].off, k.P.t[t].n, scale);
        ck_assert_msg(err <= ml_gc_default().tol, "spatial: tensor %s gradient error %g", k.P.t[t].name, err);
    }
    free(g);
    teardown(&k);
}
END_TEST

START_TEST(dropped_samples_pass_through) {
    ctx k;
    setup(&k, "switch", 3, "capacity_factor", "0.01"); /* capacity 1 per expert: at most 3 of 6 kept */
    float y[B * D];
    ck_assert_int_eq(ml_moe_forward(k.m, k.z, y, B, 1, k.ids, NULL, 0), ML_OK);
    ck_assert_int_ge(k.m->router.n_dropped, 3);
    int seen = 0;
    for (int b = 0; b < B; b++)
        if (!k.m->router.hits[b]) {
            seen++;
            ck_assert_int_eq(memcmp(y + b * D, k.z + b * D, D * sizeof(float)), 0);
        }
    ck_assert_int_eq(seen, k.m->router.n_dropped);
    teardown(&k);
}
END_TEST

START_TEST(growth_keeps_old_experts) {
    ctx k;
    setup(&k, "softmax_topk", 3, NULL, NULL);
    float *w_old = malloc(k.P.total * sizeof(float));
    memcpy(w_old, k.P.data, k.P.total * sizeof(float));
    ml_params old = k.P; /* only the table is read below */
    ml_tensor *t_old = malloc((size_t)old.count * sizeof *t_old);
    memcpy(t_old, old.t, (size_t)old.count * sizeof *t_old);
    int n_old = old.count;
    ck_assert_int_eq(ml_moe_grow_declare(k.m, 2, NULL), ML_OK);
    ml_rng rng;
    ml_rng_seed(&rng, 9);
    ck_assert_int_eq(ml_params_commit(&k.P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&k.S, &rng), ML_OK);
    ck_assert_int_eq(ml_moe_grow_finish(k.m, 3), ML_OK);
    ck_assert_int_eq(k.m->N, 5);
    for (int i = 0; i < n_old; i++) {
        int h = ml_params_find(&k.P, t_old[i].name);
        ck_assert_int_ge(h, 0);
        /* old values are a prefix of the (possibly grown) tensor */
        ck_assert_int_eq(memcmp(ml_params_data(&k.P, h), w_old + t_old[i].off, t_old[i].n * sizeof(float)), 0);
    }
    ck_assert_int_ge(ml_params_find(&k.P, "moe1.expert4.w2"), 0);
    ck_assert_int_eq(k.P.t[ml_params_find(&k.P, "moe1.router.w")].shape[0], 5);
    float y[B * D], dz[B * D] = {0};
    ck_assert_int_eq(ml_moe_forward(k.m, k.z, y, B, 1, k.ids, NULL, 0), ML_OK);
    ck_assert_int_eq(ml_moe_backward(k.m, k.c, dz), ML_OK);
    for (int i = 0; i < B * D; i++) ck_assert(isfinite(dz[i]));
    free(w_old);
    free(t_old);
    teardown(&k);
}
END_TEST


/* ------------------------------------------------------ removal and new experts */

/* A copy of a tensor's values, Adam moments and step count. */
typedef struct tsnap {
    float *v, *m, *w;
    size_t n;
    int64_t step;
} tsnap;

static tsnap snap_of(const ml_params *P, const char *name) {
    int h = ml_params_find(P, name);
    ck_assert_msg(h >= 0, "no tensor %s", name);
    const ml_tensor *t = &P->t[h];
    tsnap s = {malloc(t->n * sizeof(float)), NULL, NULL, t->n, t->step};
    memcpy(s.v, P->data + t->off, t->n * sizeof(float));
    if (P->m) {
        s.m = malloc(t->n * sizeof(float)), s.w = malloc(t->n * sizeof(float));
        memcpy(s.m, P->m + t->off, t->n * sizeof(float));
        memcpy(s.w, P->v + t->off, t->n * sizeof(float));
    }
    return s;
}

static void snap_free(tsnap *s) { free(s->v), free(s->m), free(s->w); }

/* Tensor name holds exactly the snapshot (row offset `row` of rows of `cols`, when given). */
static void same_as(const ml_params *P, const char *name, const tsnap *s, size_t from, size_t n) {
    int h = ml_params_find(P, name);
    ck_assert_msg(h >= 0, "no tensor %s", name);
    const ml_tensor *t = &P->t[h];
    if (!n) n = s->n;
    ck_assert_msg(memcmp(P->data + t->off, s->v + from, n * sizeof(float)) == 0, "%s: values differ", name);
    if (P->m) {
        ck_assert_msg(memcmp(P->m + t->off, s->m + from, n * sizeof(float)) == 0, "%s: first moments differ", name);
        ck_assert_msg(memcmp(P->v + t->off, s->w + from, n * sizeof(float)) == 0, "%s: second moments differ", name);
        ck_assert_int_eq(t->step, s->step);
    }
}

/* Two Adam steps, so moments and step counts hold something to keep. */
static void train_two_steps(ctx *k) {
    ml_optim o = {.kind = ML_OPTIM_ADAM, .lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f};
    ml_optim_place(&o, &k->P);
    for (int it = 0; it < 2; it++) {
        float y[B * 16], dz[B * 16] = {0};
        ml_params_zero_grad(&k->P);
        ck_assert_int_eq(ml_moe_forward(k->m, k->z, y, B, 1, k->ids, NULL, 0), ML_OK);
        ck_assert_int_eq(ml_moe_backward(k->m, k->c, dz), ML_OK);
        ml_optim_step(&o, &k->P);
    }
}

static const char *const mlp_parts[4] = {"w1", "b1", "w2", "b2"};

/* Removing experts 1 and 3 of 5: experts 0, 2, 4 become 0, 1, 2 with their values, Adam
   moments and step counts exactly; the router's per-expert rows (parameters, moments and
   state) follow; the removed experts' tensors are gone; training goes on. */
START_TEST(removal_keeps_the_others_exactly) {
    ctx k;
    setup(&k, "saturation", 5, NULL, NULL); /* per-expert router parameters and state */
    train_two_steps(&k);
    tsnap ex[5][4];
    char name[96];
    for (int e = 0; e < 5; e++)
        for (int i = 0; i < 4; i++) {
            snprintf(name, sizeof name, "moe1.expert%d.%s", e, mlp_parts[i]);
            ex[e][i] = snap_of(&k.P, name);
        }
    tsnap rw = snap_of(&k.P, "moe1.router.w"), rs = snap_of(&k.S, "moe1.router.saturation");
    size_t wcols = rw.n / 5;
    int live = k.P.n_live;
    static const int kept[3] = {0, 2, 4};
    ck_assert_int_eq(ml_moe_remove_declare(k.m, kept, 3), ML_OK);
    ml_rng rng;
    ml_rng_seed(&rng, 5);
    ck_assert_int_eq(ml_params_commit(&k.P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&k.S, &rng), ML_OK);
    ck_assert_int_eq(ml_moe_remove_finish(k.m, kept, 5), ML_OK);
    ck_assert_int_eq(k.m->N, 3);
    ck_assert_int_eq(k.m->router.N, 3);
    ck_assert_int_eq(k.P.n_live, live - 2 * 4);
    for (int j = 0; j < 3; j++)
        for (int i = 0; i < 4; i++) {
            snprintf(name, sizeof name, "moe1.expert%d.%s", j, mlp_parts[i]);
            same_as(&k.P, name, &ex[kept[j]][i], 0, 0);
            ck_assert_int_eq(ml_params_find(&k.P, name), k.m->th[j][i]);
        }
    for (int e = 3; e < 5; e++) {
        snprintf(name, sizeof name, "moe1.expert%d.w1", e);
        ck_assert_int_lt(ml_params_find(&k.P, name), 0);
    }
    /* router rows: w (N, D) with its moments, and the saturation state */
    int hw = ml_params_find(&k.P, "moe1.router.w"), hs = ml_params_find(&k.S, "moe1.router.saturation");
    ck_assert_int_eq(k.P.t[hw].shape[0], 3);
    for (int j = 0; j < 3; j++) {
        const ml_tensor *t = &k.P.t[hw];
        ck_assert_int_eq(memcmp(k.P.data + t->off + j * wcols, rw.v + kept[j] * wcols, wcols * sizeof(float)), 0);
        ck_assert_int_eq(memcmp(k.P.m + t->off + j * wcols, rw.m + kept[j] * wcols, wcols * sizeof(float)), 0);
        ck_assert_float_eq(ml_params_data(&k.S, hs)[j], rs.v[kept[j]]);
    }
    /* and it trains on with three experts */
    train_two_steps(&k);
    for (int i = 0; i < k.P.count; i++)
        if (!k.P.t[i].removed)
            for (size_t x = 0; x < k.P.t[i].n; x++) ck_assert(isfinite(ml_params_data(&k.P, i)[x]));
    for (int e = 0; e < 5; e++)
        for (int i = 0; i < 4; i++) snap_free(&ex[e][i]);
    snap_free(&rw), snap_free(&rs);
    teardown(&k);
}
END_TEST

/* Grows a layer by n experts started by `in` (as ml_exp_add_experts does). */
static void grow_with(ctx *k, int n, ml_moe_init *in) {
    int old = k->m->N;
    ml_rng rng;
    ml_rng_seed(&rng, 21);
    in->rng = &rng;
    ck_assert_int_eq(ml_moe_grow_declare(k->m, n, NULL), ML_OK);
    ck_assert_int_eq(ml_params_commit(&k->P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&k->S, &rng), ML_OK);
    ck_assert_msg(ml_moe_init_experts(k->m, old, n, in) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(ml_moe_grow_finish(k->m, old), ML_OK);
}

/* copy (sparse upcycling): the new experts equal their source, their Adam moments are zero
   and their step counts 0; the router rows are the source's (router_noise 0) */
START_TEST(copy_equals_the_source) {
    ctx k;
    setup(&k, "softmax_topk", 3, NULL, NULL);
    train_two_steps(&k);
    const int src[2] = {1, 1};
    ml_moe_init in = {ML_EXPERT_INIT_COPY, src, 0, 0.5, 0, NULL};
    grow_with(&k, 2, &in);
    ck_assert_int_eq(k.m->N, 5);
    char name[96];
    for (int j = 3; j < 5; j++)
        for (int i = 0; i < 4; i++) {
            snprintf(name, sizeof name, "moe1.expert%d.%s", j, mlp_parts[i]);
            int h = ml_params_find(&k.P, name);
            ck_assert_int_eq(memcmp(ml_params_data(&k.P, h), ml_moe_param(k.m, 1, i), k.P.t[h].n * sizeof(float)), 0);
            for (size_t x = 0; x < k.P.t[h].n; x++) ck_assert(k.P.m[k.P.t[h].off + x] == 0 && k.P.v[k.P.t[h].off + x] == 0);
            ck_assert_int_eq(k.P.t[h].step, 0);
        }
    int hw = ml_params_find(&k.P, "moe1.router.w");
    size_t cols = k.P.t[hw].n / 5;
    const float *w = ml_params_data(&k.P, hw);
    ck_assert_int_eq(memcmp(w + 3 * cols, w + 1 * cols, cols * sizeof(float)), 0);
    /* noise: the copies differ from the source by about noise x its std */
    const int src2[1] = {0};
    ml_moe_init noisy = {ML_EXPERT_INIT_COPY, src2, 0.1, 0.5, 0.01, NULL};
    grow_with(&k, 1, &noisy);
    const float *a = ml_moe_param(k.m, 5, 0), *b = ml_moe_param(k.m, 0, 0);
    double d2 = 0, s2 = 0, mu = 0;
    size_t n = (size_t)H * D;
    for (size_t x = 0; x < n; x++) mu += b[x] / (double)n;
    for (size_t x = 0; x < n; x++) d2 += (double)(a[x] - b[x]) * (a[x] - b[x]), s2 += (b[x] - mu) * (b[x] - mu);
    double ratio = sqrt(d2 / s2);
    ck_assert_msg(ratio > 0.03 && ratio < 0.3, "noise 0.1 gave a relative difference of %g", ratio);
    teardown(&k);
}
END_TEST

/* drop_upcycle: floor(r H) hidden units re-initialised — the same units in w1's rows, b1
   and w2's columns — from N(mean, std) of the source tensor; every other value a copy */
START_TEST(drop_upcycle_reinitialises_exactly_the_share) {
    enum { HB = 40 };
    ctx k;
    memset(&k, 0, sizeof k);
    const ml_plugin *p = router("softmax_topk");
    ml_optval opt[16];
    ck_assert_int_eq(ml_option_defaults(p, opt), ML_OK);
    ml_params_init(&k.P, 1);
    ml_params_init(&k.S, 0);
    k.m = ml_moe_new(0, D, HB, 2, p, opt, &k.P, &k.S, 7);
    ck_assert_ptr_nonnull(k.m);
    ml_rng rng;
    ml_rng_seed(&rng, 3);
    ck_assert_int_eq(ml_params_commit(&k.P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&k.S, &rng), ML_OK);
    int U = 0;
    ck_assert_int_eq(ml_moe_drop_units(k.m, 0, 0.25, &U), 10);
    ck_assert_int_eq(U, HB);
    const int src[2] = {1, 1};
    ml_moe_init in = {ML_EXPERT_INIT_DROP_UPCYCLE, src, 0, 0.25, 0, NULL};
    grow_with(&k, 2, &in);
    int sets[2][HB];
    for (int j = 0; j < 2; j++) {
        const int e = 2 + j;
        const float *w1 = ml_moe_param(k.m, e, 0), *b1 = ml_moe_param(k.m, e, 1), *w2 = ml_moe_param(k.m, e, 2);
        const float *s1 = ml_moe_param(k.m, 1, 0), *sb = ml_moe_param(k.m, 1, 1), *s2 = ml_moe_param(k.m, 1, 2);
        int dropped = 0;
        for (int u = 0; u < HB; u++) {
            int row = memcmp(w1 + u * D, s1 + u * D, D * sizeof(float)) != 0;
            int all = 1;
            for (int d = 0; d < D; d++) all &= w1[u * D + d] != s1[u * D + d];
            ck_assert_msg(!row || all, "unit %d: a row of w1 is re-initialised whole or not at all", u);
            ck_assert_int_eq(row, b1[u] != sb[u]);
            for (int d = 0; d < D; d++) ck_assert_int_eq(row, w2[d * HB + u] != s2[d * HB + u]);
            sets[j][u] = row;
            dropped += row;
        }
        ck_assert_int_eq(dropped, 10);
        ck_assert_int_eq(memcmp(ml_moe_param(k.m, e, 3), ml_moe_param(k.m, 1, 3), D * sizeof(float)), 0); /* b2 */
    }
    ck_assert_msg(memcmp(sets[0], sets[1], sizeof sets[0]) != 0, "each new expert samples its own units");
    /* the re-initialised values follow the source's statistics (w1 ~ U(+-1/sqrt(D)): sd 0.289) */
    double s = 0, q = 0;
    int n = 0;
    for (int u = 0; u < HB; u++)
        if (sets[0][u])
            for (int d = 0; d < D; d++) {
                double v = ml_moe_param(k.m, 2, 0)[u * D + d];
                s += v, q += v * v, n++;
            }
    double sd = sqrt(q / n - (s / n) * (s / n));
    ck_assert_msg(sd > 0.12 && sd < 0.5, "re-initialised w1 values have sd %g", sd);
    teardown(&k);
}
END_TEST


/* The segmentation kinds: an expert keeps its kind (texture, frequency, ...) when removal
   renumbers it and a copy takes its source's; drop_upcycle samples the branches' output
   channels and re-initialises them in the branch convs and the fusion's input columns. */
START_TEST(cod_experts_keep_their_kind) {
    enum { C = 8, HH = 4, HW = 16, q = C / 4 };
    ml_cod_expert_cfg cfg = {C, HH, HH, 4, {ML_COD_TEXTURE, ML_COD_FREQUENCY, ML_COD_EDGE, ML_COD_CONTRAST}};
    const ml_plugin *p = router("softmax_topk");
    ml_optval opt[16];
    ck_assert_int_eq(ml_option_defaults(p, opt), ML_OK);
    ml_params P, S;
    ml_params_init(&P, 1);
    ml_params_init(&S, 0);
    ml_moe *m = ml_moe_new_spatial(0, C, HW, 5, &ml_expert_cod, &cfg, p, opt, &P, &S, 7);
    ck_assert_msg(m != NULL, "%s", ml_error());
    ml_rng rng;
    ml_rng_seed(&rng, 3);
    ck_assert_int_eq(ml_params_commit(&P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&S, &rng), ML_OK);
    ck_assert_int_ge(ml_params_find(&P, "moe1.expert1.frequency.b0.w"), 0);
    tsnap edge = snap_of(&P, "moe1.expert2.edge.b1.w");
    static const int kept[4] = {0, 2, 3, 4};
    ck_assert_int_eq(ml_moe_remove_declare(m, kept, 4), ML_OK);
    ck_assert_int_eq(ml_params_commit(&P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&S, &rng), ML_OK);
    ck_assert_int_eq(ml_moe_remove_finish(m, kept, 5), ML_OK);
    ck_assert_int_eq(ml_moe_variant(m, 1), ML_COD_EDGE);
    ck_assert_int_lt(ml_params_find(&P, "moe1.expert1.frequency.b0.w"), 0);
    same_as(&P, "moe1.expert1.edge.b1.w", &edge, 0, 0);
    ck_assert_int_ge(ml_params_find(&P, "moe1.expert3.texture.fuse.w"), 0);
    /* a copy of expert 1 (edge) at index 4, where the list would put a texture expert */
    int var = ml_moe_variant(m, 1), src = 1;
    ck_assert_int_eq(ml_moe_grow_declare(m, 1, &var), ML_OK);
    ck_assert_int_eq(ml_params_commit(&P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&S, &rng), ML_OK);
    ml_moe_init in = {ML_EXPERT_INIT_COPY, &src, 0, 0.5, 0, &rng};
    ck_assert_msg(ml_moe_init_experts(m, 4, 1, &in) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(ml_moe_grow_finish(m, 4), ML_OK);
    int h4 = ml_params_find(&P, "moe1.expert4.edge.b1.w"); /* the copy's values (its moments are zero) */
    ck_assert_int_ge(h4, 0);
    ck_assert_int_eq(memcmp(ml_params_data(&P, h4), edge.v, edge.n * sizeof(float)), 0);
    /* drop_upcycle of expert 0 (texture): half of the C branch channels */
    int var0 = ml_moe_variant(m, 0), src0 = 0;
    ck_assert_int_eq(ml_moe_grow_declare(m, 1, &var0), ML_OK);
    ck_assert_int_eq(ml_params_commit(&P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&S, &rng), ML_OK);
    ml_moe_init du = {ML_EXPERT_INIT_DROP_UPCYCLE, &src0, 0, 0.5, 0, &rng};
    ck_assert_msg(ml_moe_init_experts(m, 5, 1, &du) == ML_OK, "%s", ml_error());
    ck_assert_int_eq(ml_moe_grow_finish(m, 5), ML_OK);
    int changed = 0;
    for (int j = 0; j < 4; j++) { /* branch j's weights (q, C, k, k): output channel u is unit j*q + u */
        ml_expert_tensor t;
        ck_assert_int_eq(ml_moe_expert_tensor(m, 5, 2 * j, &t), 0);
        size_t per = (size_t)t.shape[1] * t.shape[2] * t.shape[3];
        const float *a = ml_moe_param(m, 5, 2 * j), *b = ml_moe_param(m, 0, 2 * j);
        const float *fa = ml_moe_param(m, 5, 8), *fb = ml_moe_param(m, 0, 8); /* fuse.w (C, C, 1, 1) */
        for (int u = 0; u < q; u++) {
            int row = memcmp(a + u * per, b + u * per, per * sizeof(float)) != 0;
            int col = 0;
            for (int o = 0; o < C; o++) col |= fa[o * C + j * q + u] != fb[o * C + j * q + u];
            ck_assert_int_eq(row, col);
            changed += row;
        }
    }
    ck_assert_int_eq(changed, C / 2);
    float x[2 * C * HW], y[2 * C * HW], dx[2 * C * HW] = {0}, c[2 * C * HW];
    tu_fill(x, 2 * C * HW, 1, -1, 1);
    tu_fill(c, 2 * C * HW, 2, -1, 1);
    int32_t ids[2] = {0, 1};
    ck_assert_int_eq(ml_moe_forward(m, x, y, 2, 1, ids, NULL, 0), ML_OK);
    ck_assert_int_eq(ml_moe_backward(m, c, dx), ML_OK);
    snap_free(&edge);
    ml_moe_free(m);
    ml_params_free(&P);
    ml_params_free(&S);
}
END_TEST

/* A batch whose routing slots (B x N) exceed what the ABI's int counts is refused with a
 * message before anything is allocated (it used to overflow an int in the checks). */
START_TEST(routing_slots_bounded) {
    ctx k;
    setup(&k, "softmax_topk", 3, NULL, NULL);
    int big = INT32_MAX / 3 + 1;
    ck_assert_int_eq(ml_moe_forward(k.m, k.z, NULL, big, 0, k.ids, NULL, 0), ML_ERR);
    ck_assert_msg(strstr(ml_error(), "routing slots, more than 2^31-1") != NULL, "%s", ml_error());
    teardown(&k);
}
END_TEST

/* A training forward marks the tensors of the experts that got no samples idle (and only
   those); an evaluation forward leaves the marks; the backward leaves idle experts' gradients
   at zero, and zeroing only the used tensors then zeroes the whole block. */
START_TEST(idle_experts_marked) {
    ctx k;
    setup(&k, "switch", 8, NULL, NULL); /* top-1 over 8 experts for 6 samples: some idle */
    float y[B * D], dz[B * D] = {0};
    tu_fill(k.P.grad, k.P.total, 5, -1, 1); /* stale gradients everywhere */
    ml_params_zero_grad(&k.P);
    ck_assert_int_eq(ml_moe_forward(k.m, k.z, y, B, 1, k.ids, NULL, 0), ML_OK);
    int idle = 0;
    for (int e = 0; e < k.m->N; e++) {
        int got = k.m->estart[e + 1] > k.m->estart[e];
        idle += !got;
        for (int i = 0; i < k.m->nt[e]; i++) ck_assert_int_eq(k.P.t[k.m->th[e][i]].idle, !got);
    }
    ck_assert_int_ge(idle, 2);
    for (int h = 0; h < k.P.count; h++)
        if (!strstr(k.P.t[h].name, ".expert")) ck_assert_int_eq(k.P.t[h].idle, 0);
    ck_assert_int_eq(ml_moe_backward(k.m, k.c, dz), ML_OK);
    for (int e = 0; e < k.m->N; e++) {
        if (k.m->estart[e + 1] > k.m->estart[e]) continue;
        ck_assert_float_eq(k.m->grad_mag[e], 0.0f);
        for (int i = 0; i < k.m->nt[e]; i++)
            for (size_t j = 0; j < k.P.t[k.m->th[e][i]].n; j++) ck_assert_float_eq(ml_moe_grad(k.m, e, i)[j], 0.0f);
    }
    ck_assert(ml_params_grad_finite_used(&k.P));
    /* an evaluation forward marks nothing */
    uint8_t before[256];
    ck_assert_int_le(k.P.count, 256);
    for (int h = 0; h < k.P.count; h++) before[h] = k.P.t[h].idle;
    ck_assert_int_eq(ml_moe_forward(k.m, k.c, y, B, 0, k.ids, NULL, 0), ML_OK);
    for (int h = 0; h < k.P.count; h++) ck_assert_int_eq(k.P.t[h].idle, before[h]);
    /* zeroing the used tensors zeroes the whole block, but for the used experts' gradients,
       which it leaves to the layer (stale: zeroed by its next forward or backward) */
    ml_params_zero_grad_used(&k.P);
    for (int h = 0; h < k.P.count; h++) {
        const ml_tensor *t = &k.P.t[h];
        ck_assert_int_eq(t->grad_stale, strstr(t->name, ".expert") && !t->idle);
        if (!t->grad_stale)
            for (size_t j = 0; j < t->n; j++) ck_assert_float_eq(k.P.grad[t->off + j], 0.0f);
    }
    teardown(&k);
}
END_TEST

/* The experts' gradients the training step leaves to the layer (ml_tensor.zero_later): a step
   after one whose gradients were garbage (NaN, as a skipped non-finite step leaves them) gives
   exactly the gradients of a step from an all-zero block, whichever experts the two steps use
   (an idle expert's stale gradient counting as zero); the finiteness checks see stale
   gradients as zero; the backward marks each used expert's tensors grad_finite, and leaves
   none of them stale. */
START_TEST(stale_expert_gradients) {
    ctx k;
    setup(&k, "switch", 8, NULL, NULL);
    float y[B * D], dz[B * D] = {0};
    const size_t total = k.P.total;
    float *ref = malloc(total * sizeof(float));
    ck_assert_ptr_nonnull(ref);
    /* the reference: the second step's input from zeroed gradients */
    ml_params_zero_grad(&k.P);
    ck_assert_int_eq(ml_moe_forward(k.m, k.c, y, B, 1, k.ids, NULL, 0), ML_OK);
    ck_assert_int_eq(ml_moe_backward(k.m, k.z, dz), ML_OK);
    memcpy(ref, k.P.grad, total * sizeof(float));
    for (int e = 0; e < k.m->N; e++)
        for (int i = 0; i < k.m->nt[e]; i++) {
            const ml_tensor *t = &k.P.t[k.m->th[e][i]];
            ck_assert_int_eq(t->grad_finite, !t->idle);
        }
    /* a first step on another input, whose used experts' gradients turn to NaN */
    ml_params_zero_grad(&k.P);
    ck_assert_int_eq(ml_moe_forward(k.m, k.z, y, B, 1, k.ids, NULL, 0), ML_OK);
    ck_assert_int_eq(ml_moe_backward(k.m, k.c, dz), ML_OK);
    int first[8] = {0}, differ = 0;
    for (int e = 0; e < k.m->N; e++) {
        first[e] = k.m->estart[e + 1] > k.m->estart[e];
        for (int i = 0; first[e] && i < k.m->nt[e]; i++)
            for (size_t j = 0; j < k.P.t[k.m->th[e][i]].n; j++) ml_moe_grad(k.m, e, i)[j] = NAN;
    }
    ck_assert(!ml_params_grad_finite(&k.P));
    ml_params_zero_grad_used(&k.P);
    ck_assert(ml_params_grad_finite(&k.P));
    ck_assert(ml_params_grad_finite_used(&k.P));
    ck_assert_int_eq(ml_params_grad_first_nonfinite(&k.P, NULL), -1);
    /* the second step */
    ck_assert_int_eq(ml_moe_forward(k.m, k.c, y, B, 1, k.ids, NULL, 0), ML_OK);
    int stale_idle = 0;
    for (int e = 0; e < k.m->N; e++) {
        const int got = k.m->estart[e + 1] > k.m->estart[e];
        differ += got != first[e];
        stale_idle += !got && first[e];
        for (int i = 0; !got && i < k.m->nt[e]; i++) /* idle now: stale when used before, else zero */
            ck_assert_int_eq(k.P.t[k.m->th[e][i]].grad_stale, first[e]);
    }
    ck_assert_int_gt(differ, 0); /* some expert used in one step only */
    ck_assert_int_gt(stale_idle, 0);
    ck_assert_int_eq(ml_moe_backward(k.m, k.z, dz), ML_OK);
    for (int h = 0; h < k.P.count; h++) {
        const ml_tensor *t = &k.P.t[h];
        ck_assert(!t->grad_stale || t->idle);
        for (size_t j = 0; j < t->n; j++) {
            if (t->grad_stale) ck_assert_float_eq(ref[t->off + j], 0.0f);
            else ck_assert_mem_eq(&k.P.grad[t->off + j], &ref[t->off + j], sizeof(float));
        }
    }
    ck_assert(ml_params_grad_finite_used(&k.P));
    ck_assert(ml_params_grad_finite(&k.P));
    free(ref);
    teardown(&k);
}
END_TEST

int main(void) {
    Suite *s = suite_create("moe");
    TCase *t = tcase_create("moe");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, gradients_softmax_topk);
    tcase_add_test(t, gradients_softmax_top1_no_renorm);
    tcase_add_test(t, gradients_switch_with_drops);
    tcase_add_test(t, spatial_layer_gradients);
    tcase_add_test(t, gradients_expert_choice);
    tcase_add_test(t, dropped_samples_pass_through);
    tcase_add_test(t, growth_keeps_old_experts);
    tcase_add_test(t, routing_slots_bounded);
    tcase_add_test(t, removal_keeps_the_others_exactly);
    tcase_add_test(t, copy_equals_the_source);
    tcase_add_test(t, drop_upcycle_reinitialises_exactly_the_share);
    tcase_add_test(t, cod_experts_keep_their_kind);
    tcase_add_test(t, idle_experts_marked);
    tcase_add_test(t, stale_expert_gradients);
    suite_add_tcase(s, t);
    return tu_run(s);
}
