/* check_cod.c — the camouflage segmentation net (model.type cod, core/model/net_cod.c) and
 * its experts (core/model/cod_experts.c): finite-difference gradients of each expert kind
 * through the MoE layer (d/dx and every parameter), of the whole net on its task loss (every
 * parameter, batch norm in training), and the forward against PyTorch's model of
 * bench/torch_cod_ref.py: the same weights give the same routing, mask logits and losses.
 *
 * The PyTorch numbers below were printed by tests/fixtures/cod/torch_cod_check.py (Debian's
 * python3-torch 1.13); make test does not run it. To regenerate them:
 *   make check-build
 *   build/tests/check_cod --export /tmp/cod_ref.safetensors   # moelab's weights, input, outputs
 *   /usr/bin/python3 tests/fixtures/cod/torch_cod_check.py /tmp/cod_ref.safetensors
 * and paste the block it prints over the one in test_torch_forward. The script also
 * compares every logit and every parameter gradient, which this test does not hold. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "io/safetensors.h"
#include "model/cod_experts.h"
#include "model/model.h"
#include "model/moe.h"
#include "nn/conv.h"
#include "nn/filter.h"
#include "nn/gradcheck.h"
#include "plugin/loader.h"
#include "plugin/loss_host.h"
#include "plugin/options.h"
#include "testutil.h"

static const ml_plugin *load_router(void) {
    const char *dir = tu_path("%s/plugins", tu_build());
    ml_plugins_set_path(&dir, 1);
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_ROUTER, "softmax_topk");
    ck_assert_msg(p != NULL, "%s", ml_error());
    return p;
}

/* softmax_topk's options with k set */
static void router_opts(const ml_plugin *p, ml_optval *opt, int k) {
    ck_assert_int_eq(ml_option_defaults(p, opt), ML_OK);
    char v[16];
    snprintf(v, sizeof v, "%d", k);
    for (int i = 0; i < p->num_options; i++)
        if (!strcmp(p->options[i].name, "k")) ck_assert_int_eq(ml_option_parse(&p->options[i], v, 0, &opt[i]), ML_OK);
}

/* ------------------------------------------------ each expert kind through the MoE layer */

/* B images of C x H x W (C = 16: 4-channel branches, GroupNorm with 2 groups), 3 experts of
 * one kind, top-2. H != W so that a transposed index would show. */
enum { KB = 4, KC = 16, KH = 6, KW = 5, KN = 3, KD = KC * KH * KW, KQ = KC / 4, KHW = KH * KW };
/* ReLU units of one forward: K = 2 B rows, each with 4 branches of q channels and C outputs */
enum { KUNITS = 2 * KB * (4 * KQ * KHW + KD) };

typedef struct kctx {
    ml_moe *m;
    ml_params P, S;
    ml_cod_expert_cfg cfg;
    float z[KB * KD], c[KB * KD], y[KB * KD];
    int32_t ids[KB];
    int K;
    int32_t base[KB * KN];
    uint8_t relu0[KUNITS], relu[KUNITS];
    float t[3][2 * KB * KD], tm[2 * KB * KD], tr[2 * KB * KD], pre[2 * KB * KD], *ws;
} kctx;

/* L = sum c * moe(z) */
static double kind_loss(kctx *k) {
    ck_assert_int_eq(ml_moe_forward(k->m, k->z, k->y, KB, 0, k->ids, NULL, 0), ML_OK);
    double s = 0;
    for (int i = 0; i < KB * KD; i++) s += (double)k->c[i] * k->y[i];
    return s;
}

/*
 * The state of every ReLU of the layer's last forward (1: active), in gather order: each
 * routed row's four branch convolutions (their pre-activations recomputed here from the
 * expert's weights and the kind's transforms as cod_experts.h describes them: A3/A5 bands,
 * Sobel/Laplacian, LCN 3/5/7 with eps 1e-4) and its output relu(GN(.)) (the layer's yg).
 */
static void relu_states(kctx *k, uint8_t *out) {
    static const int bk[ML_COD_KINDS][4] = {{3, 5, 7, 1}, {3, 3, 3, 1}, {1, 1, 1, 1}, {3, 3, 3, 1}};
    static const float *const edge[3] = {ml_kernel_sobel_x, ml_kernel_sobel_y, ml_kernel_laplacian};
    const ml_moe *m = k->m;
    const int kind = k->cfg.kinds[0];
    size_t u = 0;
    for (int e = 0; e < KN; e++) {
        const int r0 = m->estart[e], n = m->estart[e + 1] - r0;
        if (!n) continue;
        const float *xg = m->xg + (size_t)r0 * KD, *in[4] = {xg, xg, xg, xg};
        if (kind == ML_COD_FREQUENCY) {
            ml_freqbands_forward(k->t[0], k->t[1], k->t[2], xg, n, KC, KH, KW, 3, 5);
        } else if (kind == ML_COD_EDGE) {
            float w[KC * 9];
            for (int i = 0; i < 3; i++) {
                for (int ch = 0; ch < KC; ch++) memcpy(w + ch * 9, edge[i], sizeof(float) * 9);
                ml_dwconv_forward(k->t[i], xg, w, NULL, n, KC, KH, KW, 1, 3);
            }
        } else if (kind == ML_COD_CONTRAST) {
            for (int i = 0; i < 3; i++) ml_lcn_forward(k->t[i], k->tm, k->tr, xg, n, KC, KH, KW, 3 + 2 * i, 1e-4f);
        }
        if (kind != ML_COD_TEXTURE) in[0] = k->t[0], in[1] = k->t[1], in[2] = k->t[2];
        for (int j = 0; j < 4; j++) {
            ml_conv_shape s;
            const int kk = bk[kind][j];
            ck_assert_int_eq(ml_conv2d_shape(&s, n, KC, KH, KW, KQ, kk, 1, kk / 2, ML_CONV_ACT_NONE), ML_OK);
            ml_conv2d_forward(&s, k->pre, in[j], ml_moe_param(m, e, 2 * j), ml_moe_param(m, e, 2 * j + 1), k->ws);
            for (int i = 0; i < n * KQ * KHW; i++) out[u++] = k->pre[i] > 0;
        }
    }
    for (int i = 0; i < k->K * KD; i++) out[u++] = m->yg[i] > 0;
    ck_assert_uint_eq(u, KUNITS);
}

/* ml_gc_fn: the loss, or NaN when the step changed a discrete choice of the forward: the
 * dispatch (a top-k flip), or the state of a ReLU (a kink: the derivative jumps there). Both
 * are points where a difference quotient is not comparable with the derivative (gradcheck.h
 * skips such steps). A layer of this size has so many ReLU units near zero that a step of
 * 1e-2 crosses some kink in most entries, and one of 1.6e-4 in several of 96 (measured:
 * 1 to 8 entries per tensor otherwise); skipping those keeps the policy's tolerance and no
 * outlier, for every entry that is compared. */
static double kind_fd(void *p) {
    kctx *k = p;
    double v = kind_loss(k);
    const ml_router_inst *ri = &k->m->router;
    if (ri->n_disp != k->K || memcmp(k->base, ri->disp_expert, (size_t)k->K * sizeof(int32_t))) return NAN;
    relu_states(k, k->relu);
    if (memcmp(k->relu, k->relu0, KUNITS)) return NAN;
    return v;
}

static void check_kind(int kind) {
    kctx *k = calloc(1, sizeof *k);
    ck_assert_ptr_nonnull(k);
    const ml_plugin *p = load_router();
    ml_optval opt[ML_MAX_OPTIONS];
    router_opts(p, opt, 2);
    ml_params_init(&k->P, 1);
    ml_params_init(&k->S, 0);
    k->cfg = (ml_cod_expert_cfg){.C = KC, .H = KH, .W = KW, .n_kinds = 1, .kinds = {kind}};
    k->m = ml_moe_new_spatial(0, KC, KHW, KN, &ml_expert_cod, &k->cfg, p, opt, &k->P, &k->S, 5);
    ck_assert_msg(k->m != NULL, "%s", ml_error());
    ml_rng rng;
    ml_rng_seed(&rng, 3);
    ck_assert_int_eq(ml_params_commit(&k->P, &rng), ML_OK);
    ck_assert_int_eq(ml_params_commit(&k->S, &rng), ML_OK);
    ml_conv_shape big;
    ck_assert_int_eq(ml_conv2d_shape(&big, 2 * KB, KC, KH, KW, KQ, 7, 1, 3, ML_CONV_ACT_NONE), ML_OK);
    k->ws = malloc(ml_conv_workspace_floats(&big) * sizeof(float));
    ck_assert_ptr_nonnull(k->ws);
    /* the kind's tensors, by name */
    char name[96];
    snprintf(name, sizeof name, "moe1.expert2.%s.b2.w", ml_cod_kind_name(kind));
    ck_assert_msg(ml_params_find(&k->P, name) >= 0, "%s missing", name);
    /* inputs: positive and negative values, channel means that differ per image so the
       router is not at a tie; weights of the loss in [-1, 1] */
    tu_fill(k->z, KB * KD, 21 + kind, -1, 1);
    for (int b = 0; b < KB; b++)
        for (int ch = 0; ch < KC; ch++)
            for (int i = 0; i < KHW; i++) k->z[((size_t)b * KC + ch) * KHW + i] += 0.5f * sinf(1.7f * b + ch);
    tu_fill(k->c, KB * KD, 22 + kind, -1, 1);
    for (int b = 0; b < KB; b++) k->ids[b] = b;

    float *dz = calloc(KB * KD, sizeof(float)), *g = malloc(k->P.total * sizeof(float));
    ck_assert(dz && g);
    kind_loss(k);
    const ml_router_inst *ri = &k->m->router;
    k->K = ri->n_disp;
    ck_assert_int_eq(k->K, 2 * KB);
    memcpy(k->base, ri->disp_expert, (size_t)k->K * sizeof(int32_t));
    for (int e = 0; e < KN; e++) /* every expert has images, so each gradient is a real one */
        ck_assert_msg(ri->per_expert[e] > 0, "%s: expert %d got no image", ml_cod_kind_name(kind), e);
    relu_states(k, k->relu0);
    int active = 0;
    for (int i = 0; i < KUNITS; i++) active += k->relu0[i];
    ck_assert(active > KUNITS / 4 && active < KUNITS * 3 / 4); /* both sides of the kinks are exercised */
    ml_params_zero_grad(&k->P);
    ck_assert_int_eq(ml_moe_backward(k->m, k->c, dz), ML_OK);
    memcpy(g, k->P.grad, k->P.total * sizeof(float));
    const double scale = fmax(ml_gc_scale(dz, KB * KD), ml_gc_scale(g, k->P.total));
    /* the policy of the end-to-end checks of ReLU nets in float (check_srnn, gradcheck.h):
       one entry in eight of a tensor, one in 25 of the whole check, may be off */
    ml_gc_policy pol = ml_gc_default();
    pol.max_outliers = pol.max_entries / 8;
    ml_gc_result r;
    int ok = ml_gradcheck(&pol, kind_fd, k, k->z, KB * KD, dz, scale, &r);
    ck_assert_msg(ok, "%s: d/dx: %d of %d points off (%d skipped), worst %g (at %zu: %g vs %g)",
                  ml_cod_kind_name(kind), r.outliers, r.checked, r.skipped, r.worst, r.index, r.analytic, r.numeric);
    int checked = r.checked, skipped = r.skipped, off = r.outliers;
    for (int t = 0; t < k->P.count; t++) {
        const ml_tensor *T = &k->P.t[t];
        ck_assert_msg(ml_gc_scale(g + T->off, T->n) > 0, "%s has a zero gradient", T->name);
        ok = ml_gradcheck(&pol, kind_fd, k, ml_params_data(&k->P, t), T->n, g + T->off, scale, &r);
        ck_assert_msg(ok, "%s: %s: %d of %d points off (%d skipped), worst %g (at %zu: %g vs %g)",
                      ml_cod_kind_name(kind), T->name, r.outliers, r.checked, r.skipped, r.worst, r.index, r.analytic,
                      r.numeric);
        checked += r.checked, skipped += r.skipped, off += r.outliers;
    }
    ck_assert_msg(off * 25 <= checked, "%s: %d of %d points off", ml_cod_kind_name(kind), off, checked);
    printf("cod expert %-9s: d/dx and %d tensors: %d entries compared, %d off (above 1e-2), %d skipped (a ReLU or "
           "the routing flipped at every step)\n",
           ml_cod_kind_name(kind), k->P.count, checked, off, skipped);
    free(dz);
    free(g);
    free(k->ws);
    ml_moe_free(k->m);
    ml_params_free(&k->P);
    ml_params_free(&k->S);
    free(k);
}

START_TEST(test_texture_gradients) { check_kind(ML_COD_TEXTURE); }
END_TEST
START_TEST(test_frequency_gradients) { check_kind(ML_COD_FREQUENCY); }
END_TEST
START_TEST(test_edge_gradients) { check_kind(ML_COD_EDGE); }
END_TEST
START_TEST(test_contrast_gradients) { check_kind(ML_COD_CONTRAST); }
END_TEST

/* ------------------------------------------------------------------ the whole net */

typedef struct net_ctx {
    ml_model *m;
    float *x, *mask;
    int32_t *ids;
    int B;
    /* the dispatch of the analytic forward, per layer */
    int K[4];
    int32_t *base[4];
} net_ctx;

static const char *const four_kinds[4] = {"texture", "frequency", "edge", "contrast"};
static const char *const six_kinds[6] = {"texture", "frequency", "edge", "contrast", "texture", "frequency"};

static void net_open(net_ctx *n, int C, int H, int W, const int *ch, int E, const char *const *kinds, int n_kinds,
                     int B, uint64_t seed) {
    memset(n, 0, sizeof *n);
    const ml_plugin *p = load_router();
    static ml_optval opt[ML_MAX_OPTIONS]; /* borrowed by the model for its lifetime */
    router_opts(p, opt, 2);
    ml_model_cfg mc = {.type = "cod", .C = C, .H = H, .W = W, .channels = ch, .n_channels = 4, .experts = E,
                       .router = p, .router_opt = opt, .seed = seed, .expert_kinds = kinds, .n_kinds = n_kinds,
                       .w_bce = 1, .w_iou = 1, .w_dice = 0};
    n->m = ml_model_new(&mc, NULL);
    ck_assert_msg(n->m != NULL, "%s", ml_error());
    ck_assert_int_eq(n->m->L, 4);
    n->B = B;
    const size_t nx = (size_t)B * C * H * W, nm = (size_t)B * H * W;
    n->x = malloc(nx * sizeof(float));
    n->mask = malloc(nm * sizeof(float));
    n->ids = malloc((size_t)B * sizeof(int32_t));
    ck_assert(n->x && n->mask && n->ids);
    /* images in [0, 1] of different colour per image, so that pooled features (and so the
       routing) differ between images */
    tu_fill(n->x, nx, 31, 0, 0.5f);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < H * W; i++) n->x[((size_t)b * C + c) * H * W + i] += 0.25f + 0.25f * sinf(2.1f * b + 1.3f * c);
    tu_fill(n->mask, nm, 32, 0, 1);
    /* a blob-like mask: a disc per image, with some noise (not a constant target) */
    for (int b = 0; b < B; b++)
        for (int yy = 0; yy < H; yy++)
            for (int xx = 0; xx < W; xx++) {
                float dy = (float)yy - H * (0.3f + 0.1f * b), dx = (float)xx - W * 0.5f;
                float *t = &n->mask[((size_t)b * H + yy) * W + xx];
                *t = (dx * dx + dy * dy < 0.1f * H * W) != (*t < 0.1f) ? 1.0f : 0.0f;
            }
    for (int b = 0; b < B; b++) n->ids[b] = b;
}

static void net_close(net_ctx *n) {
    for (int l = 0; l < 4; l++) free(n->base[l]);
    ml_model_free(n->m);
    free(n->x);
    free(n->mask);
    free(n->ids);
}

static void net_forward(net_ctx *n) {
    ck_assert_msg(ml_model_forward(n->m, n->x, n->mask, n->B, 1, n->ids, NULL, 0) == ML_OK, "%s", ml_error());
}

/* ml_gc_fn: the task loss (BN with batch statistics), NaN when any layer's dispatch changed */
static double net_fd(void *p) {
    net_ctx *n = p;
    net_forward(n);
    for (int l = 0; l < 4; l++) {
        const ml_router_inst *ri = &n->m->moe[l]->router;
        if (ri->n_disp != n->K[l] || memcmp(n->base[l], ri->disp_expert, (size_t)n->K[l] * sizeof(int32_t))) return NAN;
    }
    return n->m->task_loss;
}

/* Every tensor of a tiny net (16x16 images, channels 4, 8, 8, 8, one expert of each kind,
 * top-2, a batch of 4), a few entries each, on BCE + soft IoU, by the one policy with
 * check_srnn's allowance for an end-to-end check of a deep ReLU net in float: an entry with
 * a ReLU kink closer than every step is told from a wrong gradient by its one-sided
 * differences (policy kinks, nn/gradcheck.h) and counted apart; besides those, one entry of
 * eight may stay off (curvature or float noise at every step); at most a quarter of a
 * tensor's entries off in all, kinks included, and 1 in 25 over the whole check. (The
 * -O1 build of make asan, with the direct stride-2 convs in the encoder, puts two entries
 * of moe1.expert0.texture.b1.w next to a kink: -0.0013167 against a central difference of
 * -0.00135921 at best, while the one-sided quotients on the side without the kink give
 * -0.00131677 and -0.00131306 at h = 1e-2 and 2.5e-3, and the two sides differ by 23%.)
 * Batch norm
 * runs in training mode, so every evaluation recomputes the batch statistics as the analytic
 * gradient assumes. The convolutions that feed batch norm (encoder stages, decoder blocks)
 * have biases that BN removes: their gradient must be 0.
 * The point: the initial weights, except the shifts of every batch norm and GroupNorm
 * (beta, initially 0) drawn from [1.5, 2.5], so that those ReLUs sit mostly on their active
 * side, as after some training. At beta = 0 half of the units that follow a normalisation sit
 * near the kink: some lie within 1e-5 of it, and the differences of every step then
 * average the slopes on both sides (measured: up to 7 of 9 entries of a tensor off, at a
 * plateau of the difference quotient over h = 5e-5 ... 5e-4). The gradients there are right:
 * PyTorch's autograd gives the same ones to 5e-5 (torch_cod_check.py on this net). */
START_TEST(test_net_gradients) {
    static const int ch[4] = {4, 8, 8, 8};
    net_ctx n;
    net_open(&n, 3, 16, 16, ch, 4, four_kinds, 4, 4, 11);
    ml_params *P = &n.m->P;
    for (int t = 0; t < P->count; t++) {
        const size_t len = strlen(P->t[t].name);
        if (len > 5 && !strcmp(P->t[t].name + len - 5, ".beta"))
            tu_fill(ml_params_data(P, t), P->t[t].n, 50 + t, 1.5f, 2.5f);
    }
    net_forward(&n);
    for (int l = 0; l < 4; l++) {
        const ml_router_inst *ri = &n.m->moe[l]->router;
        n.K[l] = ri->n_disp;
        n.base[l] = malloc((size_t)ri->n_disp * sizeof(int32_t));
        memcpy(n.base[l], ri->disp_expert, (size_t)ri->n_disp * sizeof(int32_t));
    }
    ck_assert(isfinite(n.m->task_loss) && n.m->task_loss > 0);
    ml_params_zero_grad(P);
    ck_assert_int_eq(ml_model_backward(n.m), ML_OK);
    float *g = malloc(P->total * sizeof(float));
    memcpy(g, P->grad, P->total * sizeof(float));
    const double scale = ml_gc_scale(g, P->total);
    /* at init the images' pooled features are alike, and 4 images go to 10 of the 16
       experts: the check covers every kind (expert e of a layer is four_kinds[e]) */
    int bad_all = 0, kinks = 0, checked = 0, zero = 0, tensors = 0, idle = 0, busy = 0, kinds = 0;
    for (int l = 0; l < 4; l++)
        for (int e = 0; e < n.m->moe[l]->N; e++)
            if (n.m->moe[l]->router.per_expert[e] > 0) busy++, kinds |= 1 << e;
    ck_assert_msg(kinds == 15, "the experts that got images are of kinds %#x, not every kind", kinds);
    double worst = 0;
    for (int t = 0; t < P->count; t++) {
        const ml_tensor *T = &P->t[t];
        const double gmax = ml_gc_scale(g + T->off, T->n);
        if ((!strncmp(T->name, "enc.stage", 9) || !strncmp(T->name, "dec.block", 9)) && !strcmp(T->name + 10, ".b")) {
            ck_assert_msg(gmax < 1e-4 * scale, "%s: gradient %g through batch norm, expected 0", T->name, gmax);
            zero++;
            continue;
        }
        /* an expert that got no image has a zero gradient; every other tensor has one */
        int l, e;
        if (sscanf(T->name, "moe%d.expert%d.", &l, &e) == 2 && !n.m->moe[l - 1]->router.per_expert[e]) {
            ck_assert_msg(gmax == 0, "%s: gradient %g, but expert %d of layer %d got no image", T->name, gmax, e, l);
            idle++;
            continue;
        }
        /* maps of layers 3 and 4 are 2x2 and 1x1: there a 3x3 and a 5x5 mean are the same
           (the frequency band is 0), Sobel and local contrast give 0: such weights have a
           true gradient of 0, which the difference quotients check */
        if (sscanf(T->name, "moe%d.", &l) != 1 || l <= 2) ck_assert_msg(gmax > 0, "%s has a zero gradient", T->name);
        ml_gc_policy pol = ml_gc_default();
        pol.max_entries = T->n < 8 ? (int)T->n : 8;
        pol.max_outliers = pol.max_entries >= 4;
        pol.kinks = 1;
        ml_gc_result r;
        int ok = ml_gradcheck(&pol, net_fd, &n, ml_params_data(P, t), T->n, g + T->off, scale, &r);
        ck_assert_msg(ok, "%s: %d of %d points off, worst relative error %g (at %zu: %g vs %g)", T->name, r.outliers,
                      r.checked, r.worst, r.index, r.analytic, r.numeric);
        ck_assert_msg((r.outliers + r.kinks) * 4 <= r.checked, "%s: %d of %d points off, %d of them at a kink", T->name,
                      r.outliers + r.kinks, r.checked, r.kinks);
        bad_all += r.outliers + r.kinks;
        kinks += r.kinks;
        checked += r.checked;
        tensors++;
        if (!r.outliers) worst = fmax(worst, r.worst);
    }
    ck_assert_int_eq(zero, 7); /* 4 encoder stages, 3 decoder blocks */
    ck_assert_msg(bad_all * 25 <= checked, "%d of %d points off", bad_all, checked);
    printf("cod net: %d tensors, %d entries compared, %d off (above 1e-2; %d of them at a kink), worst error of the "
           "tensors without one %.2e; %d of 16 experts got images (%d tensors of the others: gradient 0)\n", tensors,
           checked, bad_all, kinks, worst, busy, idle);
    free(g);
    net_close(&n);
}
END_TEST

/* ---------------------------------------------------------------- against PyTorch */

/* The net of the PyTorch comparison: 32x32x3 images, channels 8, 16, 8, 16 (GroupNorm with 1
 * and 2 groups), the default six experts (texture, frequency, edge, contrast, texture,
 * frequency), top-2, a batch of 4, and bench/torch_cod_ref.py's loss: BCE + soft IoU + 0.01
 * x the load-balance loss of each layer. */
enum { TB = 4, TC = 3, TH = 32, TW = 32, TE = 6 };
static const int torch_ch[4] = {8, 16, 8, 16};

static void torch_open(net_ctx *n) { net_open(n, TC, TH, TW, torch_ch, TE, six_kinds, 6, TB, 5); }

/* forward, and the load-balance loss of each layer into lb (gradients added at 0.01) */
static void torch_forward(net_ctx *n, double lb[4]) {
    const char *dir = tu_path("%s/plugins", tu_build());
    ml_plugins_set_path(&dir, 1);
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_LOSS, "load_balance");
    ck_assert_msg(p != NULL, "%s", ml_error());
    net_forward(n);
    for (int l = 0; l < 4; l++) {
        ml_moe *q = n->m->moe[l];
        ml_loss_inst li;
        memset(&li, 0, sizeof li);
        ck_assert_int_eq(ml_loss_inst_init(&li, p, NULL, l, 4, q->N, &n->m->S, "moe.loss0."), ML_OK);
        ml_routing_record rec;
        ml_moe_record(q, &rec);
        ck_assert_int_eq(ml_loss_inst_eval(&li, &rec, 0.01f, q->dlogits, q->dprob, q->dgate_loss, &lb[l]), ML_OK);
        ml_loss_inst_release(&li);
    }
}

/* the two experts of image b at layer l, in dispatch order (the more probable first) */
static void route_of(const ml_moe *q, int b, int out[2]) {
    const ml_router_inst *ri = &q->router;
    int j = 0;
    for (int t = 0; t < ri->n_disp && j < 2; t++)
        if (ri->disp_sample[t] == b) out[j++] = ri->disp_expert[t];
    ck_assert_int_eq(j, 2);
}

/* `check_cod --export FILE`: the comparison net's initial weights (P and S blocks by name),
 * input and mask, and what moelab computes from them — mask logits, losses, routing and
 * the gradient of every parameter — for tests/fixtures/cod/torch_cod_check.py. */
static int export_reference(const char *path) {
    net_ctx n;
    torch_open(&n);
    ml_params *P = &n.m->P, *S = &n.m->S;
    const int nt = 2 * P->count + S->count + 8;
    ml_st_tensor *t = calloc((size_t)nt, sizeof *t);
    char (*names)[ML_TENSOR_NAME_MAX + 8] = calloc((size_t)nt, sizeof *names);
    float *w0 = malloc(P->total * sizeof(float)), *s0 = malloc(S->total * sizeof(float));
    ck_assert(t && names && w0 && s0);
    memcpy(w0, P->data, P->total * sizeof(float)); /* the forward changes S (running stats) */
    memcpy(s0, S->data, S->total * sizeof(float));
    double lb[4];
    torch_forward(&n, lb);
    ml_params_zero_grad(P);
    ck_assert_int_eq(ml_model_backward(n.m), ML_OK);
    int k = 0;
    for (int i = 0; i < P->count + S->count; i++) {
        const ml_params *B = i < P->count ? P : S;
        const ml_tensor *T = &B->t[i < P->count ? i : i - P->count];
        t[k].name = T->name;
        t[k].ndim = T->ndim;
        for (int d = 0; d < T->ndim; d++) t[k].shape[d] = T->shape[d];
        t[k].data = (i < P->count ? w0 : s0) + T->off;
        k++;
    }
    for (int i = 0; i < P->count; i++) {
        snprintf(names[k], sizeof names[k], "grad.%s", P->t[i].name);
        t[k] = (ml_st_tensor){.name = names[k], .ndim = P->t[i].ndim, .data = P->grad + P->t[i].off};
        for (int d = 0; d < P->t[i].ndim; d++) t[k].shape[d] = P->t[i].shape[d];
        k++;
    }
    t[k++] = (ml_st_tensor){"input.x", 4, {TB, TC, TH, TW}, n.x};
    t[k++] = (ml_st_tensor){"input.mask", 4, {TB, 1, TH, TW}, n.mask};
    t[k++] = (ml_st_tensor){"moelab.logits", 4, {TB, 1, TH, TW}, n.m->xhat};
    float loss[7] = {(float)n.m->task_loss, (float)n.m->loss_bce, (float)n.m->loss_iou,
                     (float)lb[0], (float)lb[1], (float)lb[2], (float)lb[3]};
    t[k++] = (ml_st_tensor){"moelab.loss", 1, {7}, loss};
    float route[4][TB * 2];
    for (int l = 0; l < 4; l++) {
        for (int b = 0; b < TB; b++) {
            int r[2];
            route_of(n.m->moe[l], b, r);
            route[l][2 * b] = (float)r[0], route[l][2 * b + 1] = (float)r[1];
        }
        snprintf(names[k], sizeof names[k], "moelab.route%d", l + 1);
        t[k++] = (ml_st_tensor){names[k - 1], 2, {TB, 2}, route[l]};
    }
    const char *keys[] = {"image", "batch", "channels", "experts", "top_k", "expert_kinds", "loss"};
    const char *vals[] = {"32x32x3", "4", "8,16,8,16", "6", "2", "texture,frequency,edge,contrast,texture,frequency",
                          "bce + iou + 0.01 * sum of the layers' load_balance; moelab.loss = [total task, bce, iou, lb1..lb4]"};
    int rc = ml_st_write(path, t, k, keys, vals, 7);
    if (rc) fprintf(stderr, "check_cod: %s\n", ml_error());
    else printf("check_cod: wrote %s (%d tensors)\n", path, k);
    free(t);
    free(names);
    free(w0);
    free(s0);
    net_close(&n);
    return rc ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* Same weights, same input: PyTorch's model routes every image of every layer to the same
 * two experts, and gives the same mask logits and losses (float32 both; the tolerance is
 * about 30x the largest difference torch_cod_check.py measured over all 4096 logits). */
START_TEST(test_torch_forward) {
    /* ---- printed by tests/fixtures/cod/torch_cod_check.py ---- */
    static const int ref_route[4][TB][2] = {{{0, 5}, {0, 2}, {0, 2}, {0, 5}}, {{3, 2}, {5, 3}, {3, 5}, {3, 2}}, {{0, 1}, {1, 0}, {1, 0}, {0, 1}}, {{3, 5}, {0, 5}, {5, 0}, {3, 2}}};
    static const int ref_pix[16] = {2481, 866, 3347, 1732, 117, 2598, 983, 3464, 1849, 234, 2715, 1100, 3581, 1966, 351, 2832};
    static const double ref_logit[16] = {-0.0456776544, -0.469005644, 0.0400903076, -0.72238189, -0.0354186147, -0.379790127, -0.0336208716, -0.125165924, -1.01448715, -0.0889802352, -0.251209766, -0.280448318, -0.250994146, -0.969319642, 0.00714430958, -0.0995570719};
    static const double ref_sum[TB] = {-139.724284, -577.407357, -207.027888, -125.21576};
    static const double ref_bce = 0.661833704, ref_iou = 0.753611684;
    static const double ref_lb[4] = {1.36740303, 1.25366807, 1.32300603, 1.08172798};
    static const double ref_tol = 4.7e-05;
    /* ---- end ---- */
    net_ctx n;
    torch_open(&n);
    double lb[4];
    torch_forward(&n, lb);
    for (int l = 0; l < 4; l++)
        for (int b = 0; b < TB; b++) {
            int r[2];
            route_of(n.m->moe[l], b, r);
            ck_assert_msg(r[0] == ref_route[l][b][0] && r[1] == ref_route[l][b][1],
                          "layer %d image %d: moelab routes to %d, %d; PyTorch to %d, %d", l + 1, b, r[0], r[1],
                          ref_route[l][b][0], ref_route[l][b][1]);
        }
    const float *z = n.m->xhat;
    for (int i = 0; i < (int)(sizeof ref_pix / sizeof *ref_pix); i++)
        ck_assert_msg(fabs(z[ref_pix[i]] - ref_logit[i]) <= ref_tol, "logit %d: moelab %.7g, PyTorch %.7g", ref_pix[i],
                      z[ref_pix[i]], ref_logit[i]);
    for (int b = 0; b < TB; b++) {
        double s = 0;
        for (int i = 0; i < TH * TW; i++) s += z[(size_t)b * TH * TW + i];
        ck_assert_msg(fabs(s - ref_sum[b]) <= ref_tol * TH * TW / 32, "image %d: sum of logits %.7g, PyTorch %.7g", b, s,
                      ref_sum[b]);
    }
    ck_assert_msg(fabs(n.m->loss_bce - ref_bce) <= ref_tol, "bce %.9g, PyTorch %.9g", n.m->loss_bce, ref_bce);
    ck_assert_msg(fabs(n.m->loss_iou - ref_iou) <= ref_tol, "soft IoU %.9g, PyTorch %.9g", n.m->loss_iou, ref_iou);
    for (int l = 0; l < 4; l++)
        ck_assert_msg(fabs(lb[l] - ref_lb[l]) <= ref_tol, "layer %d load balance %.9g, PyTorch %.9g", l + 1, lb[l],
                      ref_lb[l]);
    net_close(&n);
}
END_TEST

static const char *export_path;
START_TEST(test_export) { ck_assert_int_eq(export_reference(export_path), EXIT_SUCCESS); }
END_TEST

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--export")) { /* as a test of its own: the helpers assert */
        export_path = argv[2];
        Suite *s = suite_create("cod-export");
        TCase *tc = tcase_create("export");
        tcase_set_timeout(tc, 600); /* gradient checks of a deep net: minutes under ASan on a busy machine */
        tcase_add_test(tc, test_export);
        suite_add_tcase(s, tc);
        return tu_run(s);
    }
    Suite *s = suite_create("cod");
    TCase *tc = tcase_create("cod");
    tcase_set_timeout(tc, 600); /* gradient checks of a deep net: minutes under ASan on a busy machine */
    tcase_add_test(tc, test_texture_gradients);
    tcase_add_test(tc, test_frequency_gradients);
    tcase_add_test(tc, test_edge_gradients);
    tcase_add_test(tc, test_contrast_gradients);
    tcase_add_test(tc, test_net_gradients);
    tcase_add_test(tc, test_torch_forward);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
