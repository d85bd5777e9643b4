/*
 * net_cod.c — the camouflaged-object segmentation network of the router-anti-collapse seed
 * (model.type: cod; issue 10, docs/cod.md), with an MoE layer at each of its four scales:
 *
 *   encoder   s_l = ReLU(BN(conv 3x3 stride 2 (e_{l-1})))      e_0 = x (B, 3, H, W)
 *             e_l = MoE_l(s_l)   (l = 1..4: H/2 ... H/16; channels model.channels)
 *             each MoE layer routes every image by its globally average-pooled features
 *             (B, C_l) through the ordinary router plugin and runs the selected experts
 *             (model/cod_experts.h) on the image's whole feature map, combined by the gates
 *   decoder   d_3 = ReLU(BN(conv 3x3 [up2(e_4), e_3]))   (U-Net: skips from the MoE outputs)
 *             d_2 = ReLU(BN(conv 3x3 [up2(d_3), e_2]))
 *             d_1 = ReLU(BN(conv 3x3 [up2(d_2), e_1]))
 *             logit = conv 3x3 (up2(d_1)) -> (B, 1, H, W)
 *   up2 = bilinear x2 (PyTorch's interpolate, align_corners=False). BN: batch statistics in
 *   training, running ones in evaluation (momentum 0.1, eps 1e-5), as in the SRNN encoder.
 * bench/torch_cod_ref.py is the same network in PyTorch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/cod_experts.h"
#include "model/moe.h"
#include "model/net.h"
#include "nn/conv.h"
#include "nn/ops.h"
#include "nn/resample.h"

#define NS 4 /* scales */
#define BN_MOMENTUM 0.1f
#define BN_EPS 1e-5f

typedef struct cod {
    ml_params *P, *S;
    int C, H, W;
    int ch[NS];
    ml_cod_expert_cfg ecfg[NS];
    int cap_B, B, trained;
    const ml_comm *comm;              /* borrowed: B is a part of a batch of Bg split over it, or NULL */
    int Bg;
    /* handles: encoder stages, decoder blocks (3), output conv */
    int ew[NS], eb[NS], eg[NS], ebt[NS], erm[NS], erv[NS];
    int dw[NS - 1], db[NS - 1], dg[NS - 1], dbt[NS - 1], drm[NS - 1], drv[NS - 1];
    int ow, ob;
    /* shapes for the current batch */
    ml_conv_shape es[NS], ds[NS - 1], os;
    int dcin[NS - 1];                 /* decoder block j (j = 0: scale 3): input channels */
    /* activations */
    const float *x;
    float *pre[NS], *s[NS], *e[NS];   /* stage conv output, after BN + ReLU, after MoE */
    float *mean[NS], *rstd[NS];
    float *up[NS - 1];                /* up2 of the deeper map (the conv reads [up, skip] in place) */
    float *dpre[NS - 1], *d[NS - 1];  /* decoder conv output, after BN + ReLU */
    float *dmean[NS - 1], *drstd[NS - 1];
    float *oup;                       /* up2(d_1) (B, ch0, H, W) */
    /* gradients */
    float *gs[NS], *ge[NS], *gpre;    /* d/ds_l, d/de_l, scratch for pre-BN */
    float *gup[NS - 1], *gd[NS - 1], *goup;
    float *ws;
} cod;

static void free_acts(cod *n) {
    for (int l = 0; l < NS; l++) {
        free(n->pre[l]), free(n->s[l]), free(n->e[l]), free(n->mean[l]), free(n->rstd[l]);
        free(n->gs[l]), free(n->ge[l]);
        n->pre[l] = n->s[l] = n->e[l] = n->mean[l] = n->rstd[l] = n->gs[l] = n->ge[l] = NULL;
    }
    for (int j = 0; j < NS - 1; j++) {
        free(n->up[j]), free(n->dpre[j]), free(n->d[j]), free(n->dmean[j]), free(n->drstd[j]);
        free(n->gup[j]), free(n->gd[j]);
        n->up[j] = n->dpre[j] = n->d[j] = n->dmean[j] = n->drstd[j] = NULL;
        n->gup[j] = n->gd[j] = NULL;
    }
    free(n->oup), free(n->goup), free(n->gpre), free(n->ws);
    n->oup = n->goup = n->gpre = n->ws = NULL;
    n->cap_B = 0;
}

static void cod_free(void *net) {
    cod *n = net;
    if (!n) return;
    free_acts(n);
    free(n);
}

static int declare(ml_params *P, const char *name, const char *field, int ndim, const int *shape, ml_init init,
                   float value, int fan_in, int *h) {
    char s[ML_TENSOR_NAME_MAX];
    snprintf(s, sizeof s, "%s.%s", name, field);
    *h = ml_params_declare(P, s, ndim, shape, init, value, fan_in);
    return *h < 0 ? ML_ERR : ML_OK;
}

/* conv (O, C, k, k) + bias, PyTorch's init; then BN gamma/beta (P) and running stats (S). */
static int conv_bn(cod *n, const char *name, int O, int C, int k, int *w, int *b, int *g, int *bt, int *rm, int *rv) {
    int sw[4] = {O, C, k, k}, sb[1] = {O};
    char bn[48];
    snprintf(bn, sizeof bn, "%s.bn", name);
    return declare(n->P, name, "w", 4, sw, ML_INIT_UNIFORM_FANIN, 0, C * k * k, w) ||
           declare(n->P, name, "b", 1, sb, ML_INIT_UNIFORM_FANIN, 0, C * k * k, b) ||
           declare(n->P, bn, "gamma", 1, sb, ML_INIT_CONST, 1.0f, 0, g) ||
           declare(n->P, bn, "beta", 1, sb, ML_INIT_ZEROS, 0, 0, bt) ||
           declare(n->S, bn, "running_mean", 1, sb, ML_INIT_ZEROS, 0, 0, rm) ||
           declare(n->S, bn, "running_var", 1, sb, ML_INIT_CONST, 1.0f, 0, rv);
}

static void *cod_create(const ml_net_shape *s, ml_params *P, ml_params *S) {
    if (s->n_channels != NS || !s->channels) {
        ml_errorf("cod: model.channels has %d entries, expected %d (one per scale)", s->n_channels, NS);
        return NULL;
    }
    if (s->C < 1 || s->H < 16 || s->W < 16 || s->H % 16 || s->W % 16) {
        ml_errorf("cod: image %dx%dx%d: height and width must be positive multiples of 16 (4 stride-2 stages)",
                  s->H, s->W, s->C);
        return NULL;
    }
    for (int l = 0; l < NS; l++)
        if (s->channels[l] < 4 || s->channels[l] % 4) {
            ml_errorf("cod: model.channels[%d] = %d, expected a multiple of 4 (experts split it in 4 branches)", l,
                      s->channels[l]);
            return NULL;
        }
    if (s->n_kinds < 1 || s->n_kinds > ML_COD_MAX_KINDS) {
        ml_errorf("cod: model.expert_kinds has %d entries, expected 1 to %d", s->n_kinds, ML_COD_MAX_KINDS);
        return NULL;
    }
    cod *n = ml_calloc(1, sizeof *n);
    if (!n) return NULL;
    n->P = P, n->S = S, n->C = s->C, n->H = s->H, n->W = s->W;
    memcpy(n->ch, s->channels, sizeof n->ch);
    int kinds[ML_COD_MAX_KINDS];
    for (int i = 0; i < s->n_kinds; i++)
        if ((kinds[i] = ml_cod_kind_parse(s->expert_kinds[i])) < 0) {
            ml_errorf("cod: model.expert_kinds[%d] is '%s', expected texture, frequency, edge or contrast", i,
                      s->expert_kinds[i]);
            free(n);
            return NULL;
        }
    char name[32];
    int cin = n->C, H = n->H, W = n->W;
    for (int l = 0; l < NS; l++) {
        snprintf(name, sizeof name, "enc.stage%d", l + 1);
        if (conv_bn(n, name, n->ch[l], cin, 3, &n->ew[l], &n->eb[l], &n->eg[l], &n->ebt[l], &n->erm[l], &n->erv[l]))
            goto fail;
        H /= 2, W /= 2;
        ml_cod_expert_cfg *c = &n->ecfg[l];
        c->C = n->ch[l], c->H = H, c->W = W, c->n_kinds = s->n_kinds;
        memcpy(c->kinds, kinds, (size_t)s->n_kinds * sizeof(int));
        cin = n->ch[l];
    }
    /* decoder block j (j = 0, 1, 2) makes scale 3 - j: [up2 of the deeper map, e_{3-j}] */
    int cdeep = n->ch[NS - 1];
    for (int j = 0; j < NS - 1; j++) {
        int l = NS - 2 - j;
        n->dcin[j] = cdeep + n->ch[l];
        snprintf(name, sizeof name, "dec.block%d", j + 1);
        if (conv_bn(n, name, n->ch[l], n->dcin[j], 3, &n->dw[j], &n->db[j], &n->dg[j], &n->dbt[j], &n->drm[j],
                    &n->drv[j]))
            goto fail;
        cdeep = n->ch[l];
    }
    int sw[4] = {1, n->ch[0], 3, 3}, sb[1] = {1};
    if (declare(P, "dec.out", "w", 4, sw, ML_INIT_UNIFORM_FANIN, 0, n->ch[0] * 9, &n->ow) ||
        declare(P, "dec.out", "b", 1, sb, ML_INIT_UNIFORM_FANIN, 0, n->ch[0] * 9, &n->ob))
        goto fail;
    return n;
fail:
    ml_error_prefix("cod");
    cod_free(n);
    return NULL;
}

static int cod_spatial(void *net, int l, int *C, int *HW, const ml_expert_kind **kind, const void **kcfg) {
    cod *n = net;
    if (l < 0 || l >= NS) return -1;
    *C = n->ch[l];
    *HW = n->ecfg[l].H * n->ecfg[l].W;
    *kind = &ml_expert_cod;
    *kcfg = &n->ecfg[l];
    return 0;
}

static int shapes(cod *n, int B) {
    int cin = n->C, H = n->H, W = n->W;
    for (int l = 0; l < NS; l++) {
        if (ml_conv2d_shape(&n->es[l], B, cin, H, W, n->ch[l], 3, 2, 1, ML_CONV_ACT_NONE)) return ML_ERR;
        cin = n->ch[l], H /= 2, W /= 2;
    }
    for (int j = 0; j < NS - 1; j++) {
        int l = NS - 2 - j;
        if (ml_conv2d_shape(&n->ds[j], B, n->dcin[j], n->ecfg[l].H, n->ecfg[l].W, n->ch[l], 3, 1, 1, ML_CONV_ACT_NONE))
            return ML_ERR;
        if (n->ds[j].direct == 1) /* the two-input conv (ml_conv2d_forward_cat): not all direct */
            n->ds[j].direct = 0;
    }
    if (ml_conv2d_shape(&n->os, B, n->ch[0], n->H, n->W, 1, 3, 1, 1, ML_CONV_ACT_NONE)) return ML_ERR;
    n->os.write_dx = 1; /* goup gets only this gradient */
    return ML_OK;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static int cod_reserve(void *net, int B) {
    cod *n = net;
    if (B <= n->cap_B) return shapes(n, B);
    free_acts(n);
    if (shapes(n, B)) return ML_ERR;
    size_t ws = ml_conv_workspace_floats(&n->os), big = 0;
    int ok = 1;
    for (int l = 0; l < NS && ok; l++) {
        size_t sz = ml_conv_out_size(&n->es[l]);
        ws = max_sz(ws, ml_conv_workspace_floats(&n->es[l]));
        big = max_sz(big, sz);
        ok = (n->pre[l] = ml_alloc_floats(sz)) && (n->s[l] = ml_alloc_floats(sz)) && (n->e[l] = ml_alloc_floats(sz)) &&
             (n->gs[l] = ml_alloc_floats(sz)) && (n->ge[l] = ml_alloc_floats(sz)) &&
             (n->mean[l] = ml_alloc_floats((size_t)n->ch[l])) && (n->rstd[l] = ml_alloc_floats((size_t)n->ch[l]));
    }
    for (int j = 0; j < NS - 1 && ok; j++) {
        int l = NS - 2 - j, HW = n->ecfg[l].H * n->ecfg[l].W;
        size_t upsz = (size_t)B * (n->dcin[j] - n->ch[l]) * HW, outsz = ml_conv_out_size(&n->ds[j]);
        ws = max_sz(ws, ml_conv_workspace_floats(&n->ds[j]));
        big = max_sz(big, outsz);
        ok = (n->up[j] = ml_alloc_floats(upsz)) && (n->dpre[j] = ml_alloc_floats(outsz)) &&
             (n->d[j] = ml_alloc_floats(outsz)) && (n->gup[j] = ml_alloc_floats(upsz)) &&
             (n->gd[j] = ml_alloc_floats(outsz)) && (n->dmean[j] = ml_alloc_floats((size_t)n->ch[l])) &&
             (n->drstd[j] = ml_alloc_floats((size_t)n->ch[l]));
    }
    size_t osz = (size_t)B * n->ch[0] * n->H * n->W;
    ok = ok && (n->oup = ml_alloc_floats(osz)) && (n->goup = ml_alloc_floats(osz)) && (n->gpre = ml_alloc_floats(big)) &&
         (n->ws = ml_alloc_floats(ws));
    if (!ok) {
        free_acts(n);
        return ml_errorf("cod: out of memory for a batch of %d", B);
    }
    n->cap_B = B;
    return ML_OK;
}

#define PW(h) ml_params_data(n->P, n->h)
#define PG(h) ml_params_grad(n->P, n->h)
#define SW(h) ml_params_data(n->S, n->h)

/* conv -> BN (batch stats in training, running in eval; the whole batch's when split) ->
   ReLU; the conv's input is x, or [x, xb] (x holds the first Ca channels) when xb is not NULL */
static int conv_bn_forward(cod *n, const ml_conv_shape *s, float *pre, float *y, float *mean, float *rstd,
                           const float *x, const float *xb, int Ca, int w, int b, int g, int bt, int rm, int rv,
                           int training) {
    if (xb)
        ml_conv2d_forward_cat(s, Ca, pre, x, xb, ml_params_data(n->P, w), ml_params_data(n->P, b), n->ws);
    else
        ml_conv2d_forward(s, pre, x, ml_params_data(n->P, w), ml_params_data(n->P, b), n->ws);
    const int HW = s->Ho * s->Wo;
    if (training)
        return ml_batchnorm2d_forward_train_part(n->comm, y, mean, rstd, ml_params_data(n->S, rm),
                                                 ml_params_data(n->S, rv), pre, ml_params_data(n->P, g),
                                                 ml_params_data(n->P, bt), s->B, s->O, HW, BN_MOMENTUM, BN_EPS, 1);
    ml_batchnorm2d_forward_eval(y, pre, ml_params_data(n->P, g), ml_params_data(n->P, bt), ml_params_data(n->S, rm),
                                ml_params_data(n->S, rv), s->B, s->O, HW, BN_EPS, 1);
    return ML_OK;
}

/* the backward of conv_bn_forward: dy -> parameter gradients, dx += (dx may be NULL), and
   dxb += with a second input xb */
static int conv_bn_backward(cod *n, const ml_conv_shape *s, float *dx, float *dxb, const float *dy, const float *pre,
                            const float *mean, const float *rstd, const float *x, const float *xb,
                            int Ca, int w, int b, int g, int bt) {
    const int HW = s->Ho * s->Wo;
    /* gpre is written (each plane zeroed in cache before it is added to) */
    if (ml_batchnorm2d_relu_backward_part_set(n->comm, n->gpre, ml_params_grad(n->P, g), ml_params_grad(n->P, bt),
                                              dy, pre, mean, rstd, ml_params_data(n->P, g),
                                              ml_params_data(n->P, bt), s->B, s->O, HW))
        return ML_ERR;
    if (xb)
        ml_conv2d_backward_cat(s, Ca, dx, dxb, ml_params_grad(n->P, w), ml_params_grad(n->P, b), n->gpre, NULL, x,
                               xb, ml_params_data(n->P, w), n->ws);
    else
        ml_conv2d_backward(s, dx, ml_params_grad(n->P, w), ml_params_grad(n->P, b), n->gpre, NULL, x,
                           ml_params_data(n->P, w), n->ws);
    return ML_OK;
}

static int cod_forward(void *net, ml_moe *const *moe, const float *x, int B, int training, const int32_t *ids,
                       const int32_t *labels, int num_classes, float *out) {
    cod *n = net;
    if (B < 1) return ml_errorf("cod: batch size %d, expected >= 1", B);
    const int Bg = n->comm ? n->Bg : B;
    if (training && Bg < 2) return ml_errorf("cod: batch norm in training needs a batch >= 2, got %d", Bg);
    if (cod_reserve(n, B)) return ML_ERR;
    n->x = x;
    n->B = B;
    n->trained = training;
    const float *in = x;
    for (int l = 0; l < NS; l++) {
        if (conv_bn_forward(n, &n->es[l], n->pre[l], n->s[l], n->mean[l], n->rstd[l], in, NULL, 0, n->ew[l],
                            n->eb[l], n->eg[l], n->ebt[l], n->erm[l], n->erv[l], training))
            return ml_error_prefix("cod: encoder stage %d", l + 1);
        if (ml_moe_forward(moe[l], n->s[l], n->e[l], B, training, ids, labels, num_classes)) return ML_ERR;
        in = n->e[l];
    }
    const float *deep = n->e[NS - 1];
    for (int j = 0; j < NS - 1; j++) {
        int l = NS - 2 - j, h = n->ecfg[l].H, w = n->ecfg[l].W, cd = n->dcin[j] - n->ch[l];
        ml_upsample_bilinear_forward(n->up[j], deep, B, cd, h / 2, w / 2, 2);
        if (conv_bn_forward(n, &n->ds[j], n->dpre[j], n->d[j], n->dmean[j], n->drstd[j], n->up[j], n->e[l], cd,
                            n->dw[j], n->db[j], n->dg[j], n->dbt[j], n->drm[j], n->drv[j], training))
            return ml_error_prefix("cod: decoder block %d", j + 1);
        deep = n->d[j];
    }
    ml_upsample_bilinear_forward(n->oup, deep, B, n->ch[0], n->H / 2, n->W / 2, 2);
    ml_conv2d_forward(&n->os, out, n->oup, PW(ow), PW(ob), n->ws);
    return ML_OK;
}

static int cod_backward(void *net, ml_moe *const *moe, const float *dout) {
    cod *n = net;
    if (!n->trained) return ml_errorf("cod: backward needs a training forward first");
    const int B = n->B;
    /* decoder: every buffer below gets its gradient written or zeroed first */
    ml_conv2d_backward(&n->os, n->goup, PG(ow), PG(ob), dout, NULL, n->oup, PW(ow), n->ws);
    for (int l = 0; l < NS; l++) ml_zero(n->ge[l], ml_conv_out_size(&n->es[l]));
    /* the last block made d_1, which the output conv saw through up2 */
    ml_zero(n->gd[NS - 2], ml_conv_out_size(&n->ds[NS - 2]));
    ml_upsample_bilinear_backward(n->gd[NS - 2], n->goup, B, n->ch[0], n->H / 2, n->W / 2, 2);
    /* block j: back through its conv + BN, the concat (the skip's part goes to e_l), and up2 of
       the deeper map (d of block j - 1, or e_4 for the first block) */
    for (int j = NS - 2; j >= 0; j--) {
        int l = NS - 2 - j, h = n->ecfg[l].H, w = n->ecfg[l].W, cd = n->dcin[j] - n->ch[l];
        ml_zero(n->gup[j], (size_t)B * cd * h * w);
        if (conv_bn_backward(n, &n->ds[j], n->gup[j], n->ge[l], n->gd[j], n->dpre[j], n->dmean[j],
                             n->drstd[j], n->up[j], n->e[l], cd, n->dw[j], n->db[j], n->dg[j], n->dbt[j]))
            return ml_error_prefix("cod: backward of decoder block %d", j + 1);
        /* up2 of the deeper map: d_{j-1} of the block before, or e_4 */
        float *gdeeper = j > 0 ? n->gd[j - 1] : n->ge[NS - 1];
        if (j > 0) ml_zero(gdeeper, ml_conv_out_size(&n->ds[j - 1]));
        ml_upsample_bilinear_backward(gdeeper, n->gup[j], B, cd, h / 2, w / 2, 2);
    }
    /* encoder, deepest first: e_l's gradient is complete once stage l + 1 has added its part */
    for (int l = NS - 1; l >= 0; l--) {
        ml_zero(n->gs[l], ml_conv_out_size(&n->es[l]));
        if (ml_moe_backward(moe[l], n->ge[l], n->gs[l])) return ML_ERR;
        if (conv_bn_backward(n, &n->es[l], l > 0 ? n->ge[l - 1] : NULL, NULL, n->gs[l], n->pre[l],
                             n->mean[l], n->rstd[l], l > 0 ? n->e[l - 1] : n->x, NULL, 0, n->ew[l], n->eb[l],
                             n->eg[l], n->ebt[l]))
            return ml_error_prefix("cod: backward of encoder stage %d", l + 1);
    }
    return ML_OK;
}

static double cod_flops(void *net) {
    cod *n = net;
    double macs = 0;
    int H = n->H, W = n->W, cin = n->C;
    for (int l = 0; l < NS; l++) {
        H /= 2, W /= 2;
        macs += (double)cin * n->ch[l] * 9 * H * W;
        cin = n->ch[l];
    }
    for (int j = 0; j < NS - 1; j++) {
        int l = NS - 2 - j;
        macs += (double)n->dcin[j] * n->ch[l] * 9 * n->ecfg[l].H * n->ecfg[l].W;
    }
    macs += (double)n->ch[0] * 9 * n->H * n->W;
    return 6.0 * macs; /* 2 flops a MAC, backward twice forward (the first conv's dx is not needed; ignored) */
}

static void cod_set_part(void *net, const ml_comm *comm, int Bg) {
    cod *n = net;
    n->comm = comm;
    n->Bg = Bg;
}

const ml_net_ops ml_net_cod = {.type = "cod",
                               .create = cod_create,
                               .free = cod_free,
                               .reserve = cod_reserve,
                               .flops_per_sample = cod_flops,
                               .spatial = cod_spatial,
                               .out_per_pixel = 1,
                               .forward = cod_forward,
                               .backward = cod_backward,
                               .set_part = cod_set_part};
