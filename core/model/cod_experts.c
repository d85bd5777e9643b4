/* cod_experts.c — texture, frequency, edge and contrast experts (cod_experts.h). */
#include "model/cod_experts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/channels.h"
#include "nn/conv.h"
#include "nn/filter.h"
#include "nn/groupnorm.h"
#include "nn/ops.h"

static const char *const kind_names[ML_COD_KINDS] = {"texture", "frequency", "edge", "contrast"};
/* branch kernel sizes by kind */
static const int branch_k[ML_COD_KINDS][4] = {{3, 5, 7, 1}, {3, 3, 3, 1}, {1, 1, 1, 1}, {3, 3, 3, 1}};
static const int lcn_k[3] = {3, 5, 7};  /* contrast windows */
#define FREQ_K1 3                        /* frequency bands: A3, A5 */
#define FREQ_K2 5
#define LCN_EPS 1e-4f                    /* nn/filter.h: a flat window amplifies at most 100x */
#define GN_EPS 1e-5f

int ml_cod_kind_parse(const char *name) {
    for (int k = 0; k < ML_COD_KINDS; k++)
        if (!strcmp(name, kind_names[k])) return k;
    return -1;
}

const char *ml_cod_kind_name(int kind) { return kind >= 0 && kind < ML_COD_KINDS ? kind_names[kind] : "?"; }

/* ---------------------------------------------------------------- state */

typedef struct cod_st {
    ml_cod_expert_cfg cfg;
    int C, q, G, H, W, HW;
    float *edge_w[3];          /* (C, 3, 3): the same fixed kernel for every channel */
    int cap_K;
    size_t row;                /* C·HW floats per row */
    /* activations (cap_K rows of C·HW, q·HW or G) */
    float *t[3];               /* frequency bands / edge maps / LCN outputs */
    float *tm[3], *tr[3];      /* LCN mean and rstd */
    float *br[4];              /* (K, q, HW) branch outputs after ReLU */
    float *cat, *pre, *out;    /* concat, fusion output, GN + ReLU output */
    float *gmean, *grstd;      /* (K, G) */
    /* backward scratch */
    float *dt[3], *dbr[4], *dcat, *dpre;
    float *ws;                 /* conv workspace */
    size_t ws_n;
} cod_st;

/* An expert's kind is its variant (moe.h): the list's kind for its index when it was made,
   its source's when it was copied, its own after removals renumber it. */
static int cod_default_variant(void *st, const ml_moe *m, int e) {
    const cod_st *k = st;
    (void)m;
    return k->cfg.kinds[e % k->cfg.n_kinds];
}

static void free_acts(cod_st *k) {
    float **p[] = {&k->t[0], &k->t[1], &k->t[2], &k->tm[0], &k->tm[1], &k->tm[2], &k->tr[0], &k->tr[1],
                   &k->tr[2], &k->br[0], &k->br[1], &k->br[2], &k->br[3], &k->cat, &k->pre, &k->out,
                   &k->gmean, &k->grstd, &k->dt[0], &k->dt[1], &k->dt[2], &k->dbr[0], &k->dbr[1], &k->dbr[2],
                   &k->dbr[3], &k->dcat, &k->dpre, &k->ws};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) {
        free(*p[i]);
        *p[i] = NULL;
    }
    k->cap_K = 0;
    k->ws_n = 0;
}

static void cod_free(void *st) {
    cod_st *k = st;
    if (!k) return;
    free_acts(k);
    for (int i = 0; i < 3; i++) free(k->edge_w[i]);
    free(k);
}

static void *cod_create(ml_moe *m, const void *cfgp) {
    const ml_cod_expert_cfg *cfg = cfgp;
    if (!cfg || cfg->C < 4 || cfg->C % 4 || cfg->H < 1 || cfg->W < 1 || cfg->n_kinds < 1 ||
        cfg->n_kinds > ML_COD_MAX_KINDS || (int64_t)cfg->C * cfg->H * cfg->W != m->D) {
        ml_errorf("cod experts: feature maps of %d channels (a multiple of 4) x %d x %d and 1..%d kinds expected",
                  cfg ? cfg->C : 0, cfg ? cfg->H : 0, cfg ? cfg->W : 0, ML_COD_MAX_KINDS);
        return NULL;
    }
    for (int i = 0; i < cfg->n_kinds; i++)
        if (cfg->kinds[i] < 0 || cfg->kinds[i] >= ML_COD_KINDS) {
            ml_errorf("cod experts: kind %d of the list is %d, not a known kind", i, cfg->kinds[i]);
            return NULL;
        }
    cod_st *k = ml_calloc(1, sizeof *k);
    if (!k) return NULL;
    k->cfg = *cfg;
    k->C = cfg->C;
    k->q = cfg->C / 4;
    k->G = cfg->C % 8 == 0 ? cfg->C / 8 : 1;
    k->H = cfg->H;
    k->W = cfg->W;
    k->HW = cfg->H * cfg->W;
    k->row = (size_t)k->C * k->HW;
    const float *fixed[3] = {ml_kernel_sobel_x, ml_kernel_sobel_y, ml_kernel_laplacian};
    for (int i = 0; i < 3; i++) {
        if (!(k->edge_w[i] = ml_alloc_floats((size_t)k->C * 9))) {
            cod_free(k);
            return NULL;
        }
        for (int c = 0; c < k->C; c++) memcpy(k->edge_w[i] + (size_t)c * 9, fixed[i], 9 * sizeof(float));
    }
    return k;
}

enum { T_B0W, T_B0B, T_B1W, T_B1B, T_B2W, T_B2B, T_B3W, T_B3B, T_FUSEW, T_FUSEB, T_GAMMA, T_BETA, T_COUNT };

static int cod_describe(void *st, const ml_moe *m, int e, int i, ml_expert_tensor *t) {
    const cod_st *k = st;
    if (i < 0 || i >= T_COUNT) return -1;
    const int kind = ml_moe_variant(m, e), C = k->C, q = k->q;
    static const char *const part[T_COUNT] = {"b0.w", "b0.b", "b1.w", "b1.b", "b2.w", "b2.b",
                                              "b3.w", "b3.b", "fuse.w", "fuse.b", "gn.gamma", "gn.beta"};
    snprintf(t->name, sizeof t->name, "%s.%s", kind_names[kind], part[i]);
    t->init = ML_INIT_UNIFORM_FANIN; /* PyTorch's Conv2d: U(±1/sqrt(C k k)), bias too */
    t->init_value = 0;
    if (i < T_FUSEW) {
        int kk = branch_k[kind][i / 2];
        t->fan_in = C * kk * kk;
        if (i % 2 == 0) t->ndim = 4, t->shape[0] = q, t->shape[1] = C, t->shape[2] = kk, t->shape[3] = kk;
        else t->ndim = 1, t->shape[0] = q;
        /* the units (drop_upcycle): the C output channels of the four branches, in the order
           the fusion reads them (branch j holds channels j*q .. j*q + q - 1) */
        t->units = C, t->unit_axis = 0, t->unit_offset = (i / 2) * q;
    } else if (i == T_FUSEW) {
        t->ndim = 4, t->shape[0] = C, t->shape[1] = C, t->shape[2] = 1, t->shape[3] = 1, t->fan_in = C;
        t->units = C, t->unit_axis = 1, t->unit_offset = 0; /* its input channels: the branches' outputs */
    } else if (i == T_FUSEB) {
        t->ndim = 1, t->shape[0] = C, t->fan_in = C;
    } else { /* GroupNorm: gamma 1, beta 0 */
        t->ndim = 1, t->shape[0] = C;
        t->init = i == T_GAMMA ? ML_INIT_CONST : ML_INIT_ZEROS;
        t->init_value = i == T_GAMMA ? 1.0f : 0.0f;
        t->fan_in = 0;
    }
    return 0;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/* The conv shape of branch j of `kind` (or the fusion, j = 4) for n images. */
static int shape_of(const cod_st *k, int kind, int j, int n, ml_conv_shape *s) {
    if (j == 4) return ml_conv2d_shape(s, n, k->C, k->H, k->W, k->C, 1, 1, 0, ML_CONV_ACT_NONE);
    int kk = branch_k[kind][j];
    return ml_conv2d_shape(s, n, k->C, k->H, k->W, k->q, kk, 1, kk / 2, ML_CONV_ACT_RELU);
}

/* The texture expert's four branches as one multi-kernel conv (conv.h: they share a
 * ring-ordered column matrix) for n images. */
static int texture_shape(const cod_st *k, int n, ml_mconv_shape *s) {
    return ml_mconv_shape_init(s, n, k->C, k->H, k->W, k->q, 4, branch_k[ML_COD_TEXTURE], ML_CONV_ACT_RELU);
}

static int cod_reserve(void *st, ml_moe *m, int K) {
    cod_st *k = st;
    (void)m;
    if (K <= k->cap_K) return ML_OK;
    free_acts(k);
    const size_t R = (size_t)K * k->row, Q = (size_t)K * k->q * k->HW, GK = (size_t)K * k->G;
    int ok = 1;
    for (int i = 0; i < 3 && ok; i++)
        ok = (k->t[i] = ml_alloc_floats(R)) && (k->tm[i] = ml_alloc_floats(R)) && (k->tr[i] = ml_alloc_floats(R)) &&
             (k->dt[i] = ml_alloc_floats(R));
    for (int i = 0; i < 4 && ok; i++) ok = (k->br[i] = ml_alloc_floats(Q)) && (k->dbr[i] = ml_alloc_floats(Q));
    ok = ok && (k->cat = ml_alloc_floats(R)) && (k->pre = ml_alloc_floats(R)) && (k->out = ml_alloc_floats(R)) &&
         (k->dcat = ml_alloc_floats(R)) && (k->dpre = ml_alloc_floats(R)) && (k->gmean = ml_alloc_floats(GK)) &&
         (k->grstd = ml_alloc_floats(GK));
    size_t ws = 0;
    for (int kind = 0; ok && kind < ML_COD_KINDS; kind++)
        for (int j = 0; j < 5; j++) {
            ml_conv_shape s;
            if (shape_of(k, kind, j, K, &s)) {
                free_acts(k);
                return ML_ERR;
            }
            ws = max_sz(ws, ml_conv_workspace_floats(&s));
        }
    ml_mconv_shape ts;
    if (ok && texture_shape(k, K, &ts)) {
        free_acts(k);
        return ML_ERR;
    }
    if (ok) ws = max_sz(ws, ml_mconv_workspace_floats(&ts));
    ok = ok && (k->ws = ml_alloc_floats(ws ? ws : 1));
    if (!ok) {
        free_acts(k);
        return ML_ERR;
    }
    k->ws_n = ws;
    k->cap_K = K;
    return ML_OK;
}

/* rows [r0, r0 + n) of a (K, c, HW) buffer */
static float *rows(float *buf, int r0, size_t per_row) { return buf + (size_t)r0 * per_row; }

static int cod_forward(void *st, ml_moe *m, int e, int r0, int n, const float *xg, float *yg, int training) {
    cod_st *k = st;
    (void)training;
    const int kind = ml_moe_variant(m, e), C = k->C, H = k->H, W = k->W, HW = k->HW, q = k->q;
    const size_t R = k->row, Q = (size_t)q * HW;
    float *t[3], *br[4];
    for (int i = 0; i < 3; i++) t[i] = rows(k->t[i], r0, R);
    for (int i = 0; i < 4; i++) br[i] = rows(k->br[i], r0, Q);
    /* the inputs of the branches: x itself, or the kind's fixed transforms of it */
    const float *in[4] = {xg, xg, xg, xg};
    if (kind == ML_COD_FREQUENCY) {
        ml_freqbands_forward(t[0], t[1], t[2], xg, n, C, H, W, FREQ_K1, FREQ_K2);
        in[0] = t[0], in[1] = t[1], in[2] = t[2];
    } else if (kind == ML_COD_EDGE) {
        for (int i = 0; i < 3; i++) {
            ml_dwconv_forward(t[i], xg, k->edge_w[i], NULL, n, C, H, W, 1, 3);
            in[i] = t[i];
        }
    } else if (kind == ML_COD_CONTRAST) {
        for (int i = 0; i < 3; i++) {
            ml_lcn_forward(t[i], rows(k->tm[i], r0, R), rows(k->tr[i], r0, R), xg, n, C, H, W, lcn_k[i], LCN_EPS);
            in[i] = t[i];
        }
    }
    if (kind == ML_COD_TEXTURE) {
        ml_mconv_shape ts;
        if (texture_shape(k, n, &ts)) return ML_ERR;
        const float *w[4], *b[4];
        for (int j = 0; j < 4; j++) w[j] = ml_moe_param(m, e, T_B0W + 2 * j), b[j] = ml_moe_param(m, e, T_B0B + 2 * j);
        ml_mconv_forward(&ts, br, xg, w, b, k->ws);
    } else
        for (int j = 0; j < 4; j++) {
            ml_conv_shape s;
            if (shape_of(k, kind, j, n, &s)) return ML_ERR;
            ml_conv2d_forward(&s, br[j], in[j], ml_moe_param(m, e, T_B0W + 2 * j), ml_moe_param(m, e, T_B0B + 2 * j),
                              k->ws);
        }
    const float *parts[4] = {br[0], br[1], br[2], br[3]};
    const int cs[4] = {q, q, q, q};
    float *cat = rows(k->cat, r0, R), *pre = rows(k->pre, r0, R), *out = rows(k->out, r0, R);
    ml_channels_concat_forward(cat, parts, cs, 4, n, HW);
    ml_conv_shape fs;
    if (shape_of(k, kind, 4, n, &fs)) return ML_ERR;
    ml_conv2d_forward(&fs, pre, cat, ml_moe_param(m, e, T_FUSEW), ml_moe_param(m, e, T_FUSEB), k->ws);
    ml_groupnorm_forward(out, rows(k->gmean, r0, (size_t)k->G), rows(k->grstd, r0, (size_t)k->G), pre,
                         ml_moe_param(m, e, T_GAMMA), ml_moe_param(m, e, T_BETA), n, C, HW, k->G, GN_EPS, 1);
    ml_copy(yg, out, (size_t)n * R);
    return ML_OK;
}

static int cod_backward(void *st, ml_moe *m, int e, int r0, int n, const float *xg, const float *dyg, float *dxg,
                        int next, ml_expert_abs *sums) {
    (void)next, (void)sums;
    cod_st *k = st;
    const int kind = ml_moe_variant(m, e), C = k->C, H = k->H, W = k->W, HW = k->HW, q = k->q;
    const size_t R = k->row, Q = (size_t)q * HW;
    float *pre = rows(k->pre, r0, R), *out = rows(k->out, r0, R), *cat = rows(k->cat, r0, R);
    float *dpre = rows(k->dpre, r0, R), *dcat = rows(k->dcat, r0, R);
    ml_zero(dpre, (size_t)n * R);
    ml_groupnorm_backward(dpre, ml_moe_grad(m, e, T_GAMMA), ml_moe_grad(m, e, T_BETA), dyg, out, pre,
                          rows(k->gmean, r0, (size_t)k->G), rows(k->grstd, r0, (size_t)k->G),
                          ml_moe_param(m, e, T_GAMMA), n, C, HW, k->G, 1);
    ml_conv_shape fs;
    if (shape_of(k, kind, 4, n, &fs)) return ML_ERR;
    fs.write_dx = 1; /* dcat gets only the fusion's gradient: written, no zeroing */
    ml_conv2d_backward(&fs, dcat, ml_moe_grad(m, e, T_FUSEW), ml_moe_grad(m, e, T_FUSEB), dpre, NULL, cat,
                       ml_moe_param(m, e, T_FUSEW), k->ws);
    float *dbr[4], *br[4], *t[3], *dt[3];
    for (int i = 0; i < 4; i++) {
        dbr[i] = rows(k->dbr[i], r0, Q);
        br[i] = rows(k->br[i], r0, Q);
    }
    for (int i = 0; i < 3; i++) {
        t[i] = rows(k->t[i], r0, R);
        dt[i] = rows(k->dt[i], r0, R);
    }
    /* each branch's gradient is its slice of dcat alone: copied, not zeroed and added */
#pragma omp parallel for schedule(static) if ((size_t)n * R > ((size_t)1 << 14))
    for (int bi = 0; bi < 4 * n; bi++)
        memcpy(dbr[bi % 4] + (size_t)(bi / 4) * Q, dcat + (size_t)(bi / 4) * R + (size_t)(bi % 4) * Q,
               sizeof(float) * Q);
    /* each branch's conv back to its input: x, or the fixed transform it came through */
    int transformed = kind != ML_COD_TEXTURE;
    if (!transformed) { /* the texture expert's branches share their column matrix */
        ml_mconv_shape ts;
        if (texture_shape(k, n, &ts)) return ML_ERR;
        const float *w[4];
        float *dw[4], *db[4];
        for (int j = 0; j < 4; j++) {
            w[j] = ml_moe_param(m, e, T_B0W + 2 * j);
            dw[j] = ml_moe_grad(m, e, T_B0W + 2 * j), db[j] = ml_moe_grad(m, e, T_B0B + 2 * j);
        }
        ml_mconv_backward(&ts, dxg, dw, db, (const float *const *)dbr, (const float *const *)br, xg, w, k->ws);
    }
    for (int j = 0; j < 4 && transformed; j++) {
        ml_conv_shape s;
        if (shape_of(k, kind, j, n, &s)) return ML_ERR;
        const int via = transformed && j < 3;
        const float *in = via ? t[j] : xg;
        float *din = via ? dt[j] : dxg;
        s.write_dx = via; /* a transform's gradient comes from this branch alone: written */
        ml_conv2d_backward(&s, din, ml_moe_grad(m, e, T_B0W + 2 * j), ml_moe_grad(m, e, T_B0B + 2 * j), dbr[j], br[j],
                           in, ml_moe_param(m, e, T_B0W + 2 * j), k->ws);
    }
    if (kind == ML_COD_FREQUENCY) {
        ml_freqbands_backward(dxg, dt[0], dt[1], dt[2], n, C, H, W, FREQ_K1, FREQ_K2);
    } else if (kind == ML_COD_EDGE) {
        for (int i = 0; i < 3; i++) ml_dwconv_backward(dxg, NULL, NULL, dt[i], xg, k->edge_w[i], n, C, H, W, 1, 3);
    } else if (kind == ML_COD_CONTRAST) {
        for (int i = 0; i < 3; i++)
            ml_lcn_backward(dxg, dt[i], t[i], xg, rows(k->tm[i], r0, R), rows(k->tr[i], r0, R), n, C, H, W, lcn_k[i]);
    }
    return ML_OK;
}

static double cod_flops(void *st, const ml_moe *m, int e) {
    const cod_st *k = st;
    (void)m;
    const int kind = ml_moe_variant(m, e);
    double macs = 0;
    for (int j = 0; j < 4; j++) macs += (double)k->C * k->q * branch_k[kind][j] * branch_k[kind][j];
    macs += (double)k->C * k->C; /* fusion */
    return 6.0 * macs * k->HW;    /* 2 flops per MAC, backward twice forward */
}

const ml_expert_kind ml_expert_cod = {"cod",        cod_create,   cod_free,  cod_describe,       cod_reserve,
                                      cod_forward, cod_backward, cod_flops, cod_default_variant, 0, 0};
