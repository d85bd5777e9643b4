/*
 * net_srnn.c — the SRNN convolutional U-Net autoencoder (bench/torch_srnn_ref.py):
 *   encoder  4 x [Conv2d(3x3, s2, p1) + BatchNorm2d + ReLU], C -> ch0 -> ch1 -> ch2 -> ch3,
 *            flatten, Linear(ch3 h w -> D) = z; the 4 block outputs are the skips
 *   decoder  Linear(D -> ch3 h w) viewed as (ch3, h, w), then 4 x [ConvTranspose2d(4x4, s2, p1)
 *            + ReLU] on [x, skip] (skips in reverse order), then Conv2d(ch0 -> C, 3x3, p1) +
 *            sigmoid; h = H/16, w = W/16.
 * The MoE layers sit between encode and decode (model.c). The skip gradients the decoder
 * produces stay here until encode_backward adds the encoder's own.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/conv.h"
#include "model/net.h"
#include "nn/ops.h"

#define NB 4 /* encoder / decoder blocks */
#define BN_MOMENTUM 0.1f
#define BN_EPS 1e-5f

typedef struct srnn {
    ml_params *P, *S;
    int C, H, W, D, h, w;
    int ch[NB];
    int cap_B, B, trained;        /* trained: the last forward was a training forward */
    const ml_comm *comm;          /* borrowed: B is a part of a batch of Bg split over it, or NULL */
    int Bg;
    /* handles */
    int ew[NB], eb[NB], gam[NB], bet[NB], rmean[NB], rvar[NB]; /* enc convs, bn (rmean/rvar in S) */
    int efw, efb, dfw, dfb;                                    /* enc.fc, dec.fc */
    int uw[NB], ub[NB], ow, ob;                                /* dec.up*, dec.out */
    /* per-call shapes (for the current B) */
    ml_conv_shape es[NB], us[NB], os;
    int ucin[NB], ucx[NB];        /* up block j: input channels (x part + skip part), x part */
    /* activations (cap_B) */
    const float *x;               /* (B, C, H, W) borrowed */
    float *pre[NB];               /* (B, ch_l, H_l, W_l) conv output before BN */
    float *skip[NB];              /* (B, ch_l, H_l, W_l) after BN + ReLU */
    float *mean[NB], *rstd[NB];   /* (ch_l) batch statistics */
    float *zin;                   /* (B, D) decoder input copy */
    float *t;                     /* (B, ch3 h w) dec.fc output */
    float *u[NB];                 /* (B, out_j, 2h_j, 2w_j) up block outputs (post-ReLU) */
    float *xhat;                  /* (B, C, H, W) borrowed output */
    /* gradients (cap_B) */
    float *dskip[NB];             /* like skip: from the decoder, then the encoder */
    float *du[NB];                /* like u */
    float *dt;                    /* like t */
    float *dpre;                  /* largest pre, scratch */
    float *ws;                    /* shared conv workspace */
    int team;                     /* the up blocks' team (ml_conv_shape) ws is sized for; 0: none */
} srnn;

static void free_acts(srnn *n) {
    for (int l = 0; l < NB; l++) {
        free(n->pre[l]);
        free(n->skip[l]);
        free(n->mean[l]);
        free(n->rstd[l]);
        free(n->u[l]);
        free(n->dskip[l]);
        free(n->du[l]);
        n->pre[l] = n->skip[l] = n->mean[l] = n->rstd[l] = n->u[l] = NULL;
        n->dskip[l] = n->du[l] = NULL;
    }
    free(n->zin);
    free(n->t);
    free(n->dt);
    free(n->dpre);
    free(n->ws);
    n->zin = n->t = n->dt = n->dpre = n->ws = NULL;
    n->cap_B = 0;
}

static void srnn_free(void *net) {
    srnn *n = net;
    if (!n) return;
    free_acts(n);
    free(n);
}

static int declare(ml_params *P, const char *name, const char *field, int ndim, const int *shape,
                   ml_init init, float value, int fan_in, int *h) {
    char s[ML_TENSOR_NAME_MAX];
    snprintf(s, sizeof s, "%s.%s", name, field);
    *h = ml_params_declare(P, s, ndim, shape, init, value, fan_in);
    return *h < 0 ? ML_ERR : ML_OK;
}

/* Conv2d weight (O, C, k, k) and bias (O); PyTorch's fan_in = C k k. */
static int conv_params(ml_params *P, const char *name, int O, int C, int k, int *w, int *b) {
    int sw[4] = {O, C, k, k}, sb[1] = {O};
    return declare(P, name, "w", 4, sw, ML_INIT_UNIFORM_FANIN, 0, C * k * k, w) ||
           declare(P, name, "b", 1, sb, ML_INIT_UNIFORM_FANIN, 0, C * k * k, b);
}

/* ConvTranspose2d weight (C, O, k, k) and bias (O); PyTorch computes fan_in from
 * weight.size(1) = O, so fan_in = O k k (not C k k). */
static int convt_params(ml_params *P, const char *name, int C, int O, int k, int *w, int *b) {
    int sw[4] = {C, O, k, k}, sb[1] = {O};
    return declare(P, name, "w", 4, sw, ML_INIT_UNIFORM_FANIN, 0, O * k * k, w) ||
           declare(P, name, "b", 1, sb, ML_INIT_UNIFORM_FANIN, 0, O * k * k, b);
}

static int linear_params(ml_params *P, const char *name, int out, int in, int *w, int *b) {
    int sw[2] = {out, in}, sb[1] = {out};
    return declare(P, name, "w", 2, sw, ML_INIT_UNIFORM_FANIN, 0, in, w) ||
           declare(P, name, "b", 1, sb, ML_INIT_UNIFORM_FANIN, 0, in, b);
}

static void *srnn_create(const ml_net_shape *s, ml_params *P, ml_params *S) {
    if (s->n_channels != NB || !s->channels) {
        ml_errorf("srnn: model.channels has %d entries, expected %d (one per encoder block)",
                  s->n_channels, NB);
        return NULL;
    }
    if (s->C < 1 || s->H < 16 || s->W < 16 || s->H % 16 || s->W % 16) {
        ml_errorf("srnn: image %dx%dx%d: height and width must be positive multiples of 16 "
                  "(4 stride-2 blocks)", s->H, s->W, s->C);
        return NULL;
    }
    if (s->latent < 1) {
        ml_errorf("srnn: latent size must be >= 1, got %d", s->latent);
        return NULL;
    }
    for (int l = 0; l < NB; l++)
        if (s->channels[l] < 1) {
            ml_errorf("srnn: model.channels[%d] = %d, expected >= 1", l, s->channels[l]);
            return NULL;
        }
    srnn *n = ml_calloc(1, sizeof *n);
    if (!n) return NULL;
    n->P = P;
    n->S = S;
    n->C = s->C;
    n->H = s->H;
    n->W = s->W;
    n->D = s->latent;
    n->h = s->H / 16;
    n->w = s->W / 16;
    memcpy(n->ch, s->channels, sizeof n->ch);
    const int *ch = n->ch;
    char name[32];
    int cin = n->C;
    for (int l = 0; l < NB; l++) {
        int sc[1] = {ch[l]};
        snprintf(name, sizeof name, "enc.conv%d", l + 1);
        if (conv_params(P, name, ch[l], cin, 3, &n->ew[l], &n->eb[l])) goto fail;
        snprintf(name, sizeof name, "enc.bn%d", l + 1);
        if (declare(P, name, "gamma", 1, sc, ML_INIT_CONST, 1.0f, 0, &n->gam[l]) ||
            declare(P, name, "beta", 1, sc, ML_INIT_ZEROS, 0, 0, &n->bet[l]) ||
            declare(S, name, "running_mean", 1, sc, ML_INIT_ZEROS, 0, 0, &n->rmean[l]) ||
            declare(S, name, "running_var", 1, sc, ML_INIT_CONST, 1.0f, 0, &n->rvar[l]))
            goto fail;
        cin = ch[l];
    }
    const int flat = ch[3] * n->h * n->w;
    if (linear_params(P, "enc.fc", n->D, flat, &n->efw, &n->efb) ||
        linear_params(P, "dec.fc", flat, n->D, &n->dfw, &n->dfb))
        goto fail;
    /* up block j: [x (ucx), skip l = 3 - j (ch[l])] -> out = ch[l - 1], or ch[0] for the last */
    int cx = ch[3];
    for (int j = 0; j < NB; j++) {
        const int l = NB - 1 - j, out = l > 0 ? ch[l - 1] : ch[0];
        n->ucx[j] = cx;
        n->ucin[j] = cx + ch[l];
        snprintf(name, sizeof name, "dec.up%d", j + 1);
        if (convt_params(P, name, n->ucin[j], out, 4, &n->uw[j], &n->ub[j])) goto fail;
        cx = out;
    }
    if (conv_params(P, "dec.out", n->C, ch[0], 3, &n->ow, &n->ob)) goto fail;
    return n;
fail:
    ml_error_prefix("srnn");
    srnn_free(n);
    return NULL;
}

/* Fills the per-layer shapes for batch B. */
static int shapes(srnn *n, int B) {
    int cin = n->C, H = n->H, W = n->W;
    for (int l = 0; l < NB; l++) {
        if (ml_conv2d_shape(&n->es[l], B, cin, H, W, n->ch[l], 3, 2, 1, ML_CONV_ACT_NONE))
            return ML_ERR;
        cin = n->ch[l];
        H /= 2;
        W /= 2;
    }
    for (int j = 0; j < NB; j++) {
        const int l = NB - 1 - j, out = l > 0 ? n->ch[l - 1] : n->ch[0];
        if (ml_convt2d_shape(&n->us[j], B, n->ucin[j], H, W, out, 4, 2, 1, ML_CONV_ACT_RELU))
            return ML_ERR;
        /* a smaller batch after the workspace was sized: no more threads than it holds parts
         * for (another experiment of the process may have raised OpenMP's count since) */
        if (n->team && n->us[j].team > n->team) n->us[j].team = n->team;
        H *= 2;
        W *= 2;
    }
    if (ml_conv2d_shape(&n->os, B, n->ch[0], n->H, n->W, n->C, 3, 1, 1, ML_CONV_ACT_SIGMOID))
        return ML_ERR;
    n->os.write_dx = 1; /* du[NB - 1] gets only this gradient */
    return ML_OK;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static int srnn_reserve(void *net, int B) {
    srnn *n = net;
    if (B <= n->cap_B) return ML_OK;
    free_acts(n);
    n->team = 0;
    if (shapes(n, B)) return ML_ERR;
    n->team = n->us[0].team;
    size_t ws = ml_conv_workspace_floats(&n->os), dpre = 0;
    for (int l = 0; l < NB; l++) {
        const size_t m = ml_conv_out_size(&n->es[l]);
        ws = max_sz(ws, ml_conv_workspace_floats(&n->es[l]));
        ws = max_sz(ws, ml_conv_workspace_floats(&n->us[l]));
        dpre = max_sz(dpre, m);
        n->pre[l] = ml_alloc_floats(m);
        n->skip[l] = ml_alloc_floats(m);
        n->dskip[l] = ml_alloc_floats(m);
        n->mean[l] = ml_alloc_floats((size_t)n->ch[l]);
        n->rstd[l] = ml_alloc_floats((size_t)n->ch[l]);
        n->u[l] = ml_alloc_floats(ml_conv_out_size(&n->us[l]));
        n->du[l] = ml_alloc_floats(ml_conv_out_size(&n->us[l]));
        if (!n->pre[l] || !n->skip[l] || !n->dskip[l] || !n->mean[l] || !n->rstd[l] ||
            !n->u[l] || !n->du[l])
            goto fail;
    }
    const size_t flat = (size_t)B * n->ch[3] * n->h * n->w;
    n->zin = ml_alloc_floats((size_t)B * n->D);
    n->t = ml_alloc_floats(flat);
    n->dt = ml_alloc_floats(flat);
    n->dpre = ml_alloc_floats(dpre);
    n->ws = ml_alloc_floats(ws);
    if (!n->zin || !n->t || !n->dt || !n->dpre || !n->ws) goto fail;
    n->cap_B = B;
    return ML_OK;
fail:
    free_acts(n);
    return ml_error_prefix("srnn: reserve for batch %d", B);
}

#define PW(h) ml_params_data(n->P, n->h)
#define PG(h) ml_params_grad(n->P, n->h)
#define SW(h) ml_params_data(n->S, n->h)

static int begin(srnn *n, int B, const char *op) {
    if (B < 1) return ml_errorf("srnn: %s: batch size %d, expected >= 1", op, B);
    if (srnn_reserve(n, B)) return ML_ERR;
    if (B != n->es[0].B && shapes(n, B)) return ML_ERR;
    return ML_OK;
}

static int srnn_encode(void *net, const float *x, int B, int training, float *z) {
    srnn *n = net;
    if (begin(n, B, "encode")) return ML_ERR;
    const int Bg = n->comm ? n->Bg : B;
    if (training && Bg < 2) return ml_errorf("srnn: encode: batch norm in training needs a batch >= 2, got %d", Bg);
    n->x = x;
    n->B = B;
    n->trained = training;
    const float *in = x;
    for (int l = 0; l < NB; l++) {
        const ml_conv_shape *s = &n->es[l];
        const int HW = s->Ho * s->Wo;
        ml_conv2d_forward(s, n->pre[l], in, PW(ew[l]), PW(eb[l]), n->ws);
        if (training) {
            if (ml_batchnorm2d_forward_train_part(n->comm, n->skip[l], n->mean[l], n->rstd[l],
                                                  SW(rmean[l]), SW(rvar[l]), n->pre[l], PW(gam[l]),
                                                  PW(bet[l]), B, s->O, HW, BN_MOMENTUM, BN_EPS, 1))
                return ml_error_prefix("srnn: encoder block %d", l + 1);
        } else
            ml_batchnorm2d_forward_eval(n->skip[l], n->pre[l], PW(gam[l]), PW(bet[l]),
                                        SW(rmean[l]), SW(rvar[l]), B, s->O, HW, BN_EPS, 1);
        in = n->skip[l];
    }
    ml_linear_forward(z, n->skip[3], PW(efw), PW(efb), B, n->ch[3] * n->h * n->w, n->D);
    return ML_OK;
}

static int srnn_decode(void *net, const float *z, int B, int training, float *xhat) {
    srnn *n = net;
    (void)training;
    if (B != n->B) return ml_errorf("srnn: decode: batch %d, but encode saw %d (the skips come from encode)", B, n->B);
    const int flat = n->ch[3] * n->h * n->w;
    memcpy(n->zin, z, sizeof(float) * (size_t)B * n->D);
    ml_linear_forward(n->t, z, PW(dfw), PW(dfb), B, n->D, flat);
    const float *xin = n->t;
    /* the last up block runs the output conv on each chunk of its output while it is in
     * cache (ml_convt2d_forward_cat_next) when it can: the same bits */
    const int fuse = ml_convt2d_fuses_next_forward(&n->us[NB - 1], &n->os);
    for (int j = 0; j < NB; j++) {
        const ml_conv_shape *s = &n->us[j];
        /* the up block reads [x, skip] in place: no concatenated copy */
        if (j == NB - 1 && fuse) {
            if (ml_convt2d_forward_cat_next(s, n->ucx[j], n->u[j], xin, n->skip[NB - 1 - j], PW(uw[j]), PW(ub[j]),
                                            &n->os, xhat, PW(ow), PW(ob), n->ws))
                return ml_error_prefix("srnn: decode");
        } else
            ml_convt2d_forward_cat(s, n->ucx[j], n->u[j], xin, n->skip[NB - 1 - j], PW(uw[j]),
                                   PW(ub[j]), n->ws);
        xin = n->u[j];
    }
    if (!fuse) ml_conv2d_forward(&n->os, xhat, n->u[NB - 1], PW(ow), PW(ob), n->ws);
    n->xhat = xhat;
    return ML_OK;
}

static int srnn_decode_backward(void *net, const float *dxhat, float *dz) {
    srnn *n = net;
    if (!n->trained) return ml_errorf("srnn: backward needs a training forward first");
    const int B = n->B;
    /* du, dt and the dskips get exactly one decoder gradient each, written (not added) by
     * the output conv (write_dx) and the up blocks (ml_convt2d_backward_cat), so nothing is
     * zeroed first; the encoder then accumulates into the dskips */
    /* the last up block computes the output conv's input gradient itself, plane by plane in
     * its gather, when it can (ml_convt2d_backward_cat_next): du[NB - 1] is not needed */
    /* and the output conv's dw, from each plane of its input u[NB - 1] in that gather: only
     * its db is left to its own backward then */
    const int fuse = ml_convt2d_fuses_next(&n->us[NB - 1], &n->os);
    ml_conv2d_backward(&n->os, fuse ? NULL : n->du[NB - 1], fuse ? NULL : PG(ow), PG(ob), dxhat, n->xhat,
                       n->u[NB - 1], PW(ow), n->ws);
    for (int j = NB - 1; j >= 0; j--) {
        const ml_conv_shape *s = &n->us[j];
        const float *xin = j > 0 ? n->u[j - 1] : n->t;
        float *dxa = j > 0 ? n->du[j - 1] : n->dt;
        if (j == NB - 1 && fuse)
            ml_convt2d_backward_cat_next(s, n->ucx[j], dxa, n->dskip[NB - 1 - j], PG(uw[j]),
                                         PG(ub[j]), &n->os, dxhat, n->xhat, PW(ow), PG(ow), n->u[j], xin,
                                         n->skip[NB - 1 - j], PW(uw[j]), n->ws);
        else
            ml_convt2d_backward_cat(s, n->ucx[j], dxa, n->dskip[NB - 1 - j], PG(uw[j]), PG(ub[j]),
                                    n->du[j], n->u[j], xin, n->skip[NB - 1 - j], PW(uw[j]), n->ws);
    }
    ml_linear_backward(dz, PG(dfw), PG(dfb), n->dt, n->zin, PW(dfw), B, n->D,
                       n->ch[3] * n->h * n->w);
    return ML_OK;
}

static int srnn_encode_backward(void *net, const float *dz) {
    srnn *n = net;
    if (!n->trained) return ml_errorf("srnn: backward needs a training forward first");
    const int B = n->B;
    ml_linear_backward(n->dskip[3], PG(efw), PG(efb), dz, n->skip[3], PW(efw), B,
                       n->ch[3] * n->h * n->w, n->D);
    for (int l = NB - 1; l >= 0; l--) {
        const ml_conv_shape *s = &n->es[l];
        const int HW = s->Ho * s->Wo;
        /* dpre is written (each plane zeroed in cache before it is added to) */
        if (ml_batchnorm2d_relu_backward_part_set(n->comm, n->dpre, PG(gam[l]), PG(bet[l]), n->dskip[l],
                                                  n->pre[l], n->mean[l], n->rstd[l], PW(gam[l]), PW(bet[l]),
                                                  B, s->O, HW))
            return ml_error_prefix("srnn: backward of encoder block %d", l + 1);
        ml_conv2d_backward(s, l > 0 ? n->dskip[l - 1] : NULL, PG(ew[l]), PG(eb[l]), n->dpre,
                           NULL, l > 0 ? n->skip[l - 1] : n->x, PW(ew[l]), n->ws);
    }
    return ML_OK;
}

/* Multiply-accumulates of one forward per sample, per layer kind. */
static double srnn_flops(void *net) {
    srnn *n = net;
    double first = 0, rest = 0;
    int cin = n->C, H = n->H, W = n->W;
    for (int l = 0; l < NB; l++) {
        H /= 2;
        W /= 2;
        const double macs = (double)n->ch[l] * cin * 9 * H * W;
        if (l == 0) first = macs;
        else rest += macs;
        cin = n->ch[l];
    }
    const double flat = (double)n->ch[3] * n->h * n->w;
    rest += 2 * flat * n->D; /* enc.fc, dec.fc */
    for (int j = 0; j < NB; j++) {
        const int l = NB - 1 - j, out = l > 0 ? n->ch[l - 1] : n->ch[0];
        rest += (double)n->ucin[j] * out * 16 * H * W; /* per input pixel */
        H *= 2;
        W *= 2;
    }
    rest += (double)n->C * n->ch[0] * 9 * n->H * n->W;
    /* 2 flops per MAC; backward = 2x forward, except the first conv (no input gradient) */
    return 2.0 * (2.0 * first + 3.0 * rest);
}

static void srnn_set_part(void *net, const ml_comm *comm, int Bg) {
    srnn *n = net;
    n->comm = comm;
    n->Bg = Bg;
}

const ml_net_ops ml_net_srnn = {.type = "srnn", .create = srnn_create, .free = srnn_free, .reserve = srnn_reserve,
                                .encode = srnn_encode, .decode = srnn_decode, .decode_backward = srnn_decode_backward,
                                .encode_backward = srnn_encode_backward, .flops_per_sample = srnn_flops,
                                .set_part = srnn_set_part};
