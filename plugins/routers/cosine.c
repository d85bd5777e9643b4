/*
 * cosine — X-MoE routing: cosine similarity in a low-dimensional space with a learnable
 * temperature, against representation collapse.
 *
 * Source: Z. Chi, L. Dong, S. Huang, D. Dai, S. Ma, B. Patra, S. Singhal, P. Bajaj, X. Song,
 * X.-L. Mao, H. Huang, F. Wei, "On the Representation Collapse of Sparse Mixture of
 * Experts", NeurIPS 2022 (arXiv 2204.09179), section 3 ("Routing algorithm": dimension
 * reduction, L2 normalisation, gating with a learnable temperature). Reference code: the
 * authors' fairseq gate (`Top1Gate` with `wg_reduction`, `_cosine`, `gating_t` initialised
 * to 0.07 and `_get_gating_temperature`):
 *
 *   u = W_p x                                   (dim) per sample, W_p (dim, D), no bias
 *   û = u / max(‖u‖, ε),   ê_i = e_i / max(‖e_i‖, ε)       ε = 1e-4 (F.normalize's eps)
 *   logits_i = ⟨û, ê_i⟩ / τ',   τ' = max(τ, 1e-4)          τ learnable, initialised 0.07
 *   prob = softmax(logits);   experts = top-k of logits;   gate = prob (or renormalised)
 *
 * The temperature is floored at 1e-4 as the reference does (it returns the constant 1e-4
 * when τ falls below it, so no gradient reaches τ there); the paper projects to 16
 * dimensions (option dim). The expert embeddings e (N, dim) are a per-expert parameter and
 * grow with the layer. The reference initialises them orthogonally; moelab draws them from
 * N(0, 1/dim) (rows of norm ≈ 1; only their direction enters the logits). W_p is
 * initialised as nn.Linear.
 *
 * Backward, with ds = dL/dlogits from the softmax router backward (gates, prob, dlogits):
 *   dτ  = −Σ ds ⊙ logits / τ'   (0 when τ < 1e-4)
 *   dc  = ds / τ'                dû = dc Ê,  dÊ = dcᵀ Û
 *   normalisation v̂ = v / ‖v‖:   dv = (dv̂ − v̂ ⟨v̂, dv̂⟩) / ‖v‖    (dv = dv̂ / ε where ‖v‖ ≤ ε)
 *   dW_p += duᵀ x,  dx += du W_p,  de_i += the normalisation's backward of dê_i
 *
 * Router metric: temperature (τ' in the training forwards).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { OPT_K, OPT_RENORM, OPT_DIM, OPT_TAU, NUM_OPTS };

static const ml_option options[NUM_OPTS] = {
    [OPT_K] = {"k", ML_OPT_INT, "1", 1, 64, NULL, "experts per sample (clipped to N); X-MoE uses top-1",
               ML_OPTF_RUNTIME},
    [OPT_RENORM] = {"renormalize", ML_OPT_BOOL, "false", 0, -1, NULL,
                    "divide the top-k gates by their sum (else gate = prob)", ML_OPTF_RUNTIME},
    [OPT_DIM] = {"dim", ML_OPT_INT, "16", 1, 4096, NULL,
                 "dimension of the routing space (the paper's 16)"},
    [OPT_TAU] = {"tau_init", ML_OPT_FLOAT, "0.07", 0.0001, 100, NULL,
                 "initial temperature (the paper's 0.07); learned, floored at 1e-4"},
};

#define NORM_EPS 1e-4
#define TAU_MIN 1e-4f

enum { P_PROJ, P_EMB, P_TAU, NUM_PARAMS };

typedef struct cosr {
    const ml_host *host;
    int D, dim, k, renorm;
    float tau0;
    /* the last forward, for backward */
    ml_aux_buf u;     /* (B, dim) W_p x */
    ml_aux_buf uh;    /* (B, dim) û */
    ml_aux_buf un;    /* (B) double: max(‖u‖, ε) */
    ml_aux_buf eh;    /* (N, dim) ê */
    ml_aux_buf en;    /* (N) double: max(‖e‖, ε) */
    /* backward scratch */
    ml_aux_buf ds;    /* (B, N) dL/dlogits, then dL/dc */
    ml_aux_buf dp;    /* (B, N) dL/dprob */
    ml_aux_buf duh;   /* (B, dim) dL/dû, then dL/du */
    ml_aux_buf deh;   /* (N, dim) dL/dê */
} cosr;

/* v̂ (n, m) = v / max(‖v‖, ε) row by row; the divisors into nrm (n). */
static void normalize_rows(const float *v, float *vh, double *nrm, int n, int m) {
    for (int i = 0; i < n; i++) {
        const float *r = v + (size_t)i * m;
        double s = 0;
        for (int j = 0; j < m; j++) s += (double)r[j] * r[j];
        double d = sqrt(s);
        nrm[i] = d > NORM_EPS ? d : NORM_EPS;
        for (int j = 0; j < m; j++) vh[(size_t)i * m + j] = (float)(r[j] / nrm[i]);
    }
}

/* dv (n, m) += the backward of normalize_rows given v̂, the divisors and dv̂. */
static void normalize_rows_bwd(const float *vh, const double *nrm, const float *dvh, float *dv, int n, int m) {
    for (int i = 0; i < n; i++) {
        const float *h = vh + (size_t)i * m, *dh = dvh + (size_t)i * m;
        double dot = 0;
        int scaled = nrm[i] > NORM_EPS; /* at the floor v̂ = v / ε, a linear map */
        if (scaled)
            for (int j = 0; j < m; j++) dot += (double)h[j] * dh[j];
        for (int j = 0; j < m; j++) dv[(size_t)i * m + j] += (float)((dh[j] - h[j] * dot) / nrm[i]);
    }
}

/* --------------------------------------------------------------------- api */

static void *co_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->dim < 1 || init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX, "cosine: needs dim >= 1 and num_experts >= 1, got %d and %d", init->dim,
                 init->num_experts);
        return NULL;
    }
    if (o[OPT_K].i < 1 || o[OPT_K].i > 64) {
        snprintf(err, ML_ERR_MAX, "cosine: option k must be in [1, 64], got %lld", (long long)o[OPT_K].i);
        return NULL;
    }
    if (o[OPT_DIM].i < 1 || o[OPT_DIM].i > 4096) {
        snprintf(err, ML_ERR_MAX, "cosine: option dim must be in [1, 4096], got %lld", (long long)o[OPT_DIM].i);
        return NULL;
    }
    if (!(o[OPT_TAU].f >= TAU_MIN)) {
        snprintf(err, ML_ERR_MAX, "cosine: option tau_init must be >= 1e-4, got %g", o[OPT_TAU].f);
        return NULL;
    }
    cosr *s = ml_aux_new(host, sizeof *s, "cosine", err);
    if (!s) return NULL;
    s->host = host;
    s->D = init->dim;
    s->dim = (int)o[OPT_DIM].i;
    s->k = (int)o[OPT_K].i;
    s->renorm = (int)o[OPT_RENORM].i;
    s->tau0 = (float)o[OPT_TAU].f;
    return s;
}

static void co_destroy(void *self) {
    cosr *s = self;
    if (!s) return;
    const ml_host *h = s->host;
    ml_aux_buf *bufs[] = {&s->u, &s->uh, &s->un, &s->eh, &s->en, &s->ds, &s->dp, &s->duh, &s->deh};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) ml_aux_buf_free(h, bufs[i]);
    h->free(s);
}

static int co_params(void *self, ml_tensor_decl *out, int cap) {
    cosr *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_PROJ] = (ml_tensor_decl){"w_proj", 0, s->dim, s->D, ML_INIT_UNIFORM_FANIN, 0, s->D, 0};
    out[P_EMB] = (ml_tensor_decl){"emb", 1, 0, s->dim, ML_INIT_NORMAL, (float)(1.0 / sqrt((double)s->dim)), 0, 0};
    out[P_TAU] = (ml_tensor_decl){"tau", 0, 1, 1, ML_INIT_CONST, s->tau0, 0, 0};
    return NUM_PARAMS;
}

static int co_states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static float tau_eff(const ml_route *r) {
    float t = r->param[P_TAU][0];
    return t >= TAU_MIN ? t : TAU_MIN; /* NaN too goes to the floor */
}

static int co_forward(void *self, ml_route *r, char *err) {
    cosr *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N, M = s->dim;
    if (D != s->D || N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX, "cosine: forward with B=%d D=%d N=%d, router was made for D=%d", B, D, N, s->D);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    float *u = ml_aux_buf_get(h, &s->u, (size_t)B * M * sizeof(float));
    float *uh = ml_aux_buf_get(h, &s->uh, (size_t)B * M * sizeof(float));
    double *un = ml_aux_buf_get(h, &s->un, (size_t)B * sizeof(double));
    float *eh = ml_aux_buf_get(h, &s->eh, (size_t)N * M * sizeof(float));
    double *en = ml_aux_buf_get(h, &s->en, (size_t)N * sizeof(double));
    if (!u || !uh || !un || !eh || !en) {
        snprintf(err, ML_ERR_MAX, "cosine: out of memory for B=%d N=%d dim=%d", B, N, M);
        return -1;
    }
    ml_aux_linear(h, r->x, r->param[P_PROJ], NULL, B, D, M, u);
    normalize_rows(u, uh, un, B, M);
    normalize_rows(r->param[P_EMB], eh, en, N, M);
    ml_aux_linear(h, uh, eh, NULL, B, M, N, r->logits); /* cosines */
    float tau = tau_eff(r);
    size_t bn = (size_t)B * N;
    for (size_t i = 0; i < bn; i++) r->logits[i] /= tau;
    ml_aux_softmax(r->logits, r->prob, B, N);
    int k = s->k < N ? s->k : N;
    int32_t sel[64];
    float g[64];
    for (int b = 0; b < B; b++) {
        const float *z = r->logits + (size_t)b * N, *p = r->prob + (size_t)b * N;
        ml_aux_topk(z, N, k, sel);
        if (s->renorm) ml_aux_topk_gates(z, sel, k, g);
        for (int j = 0; j < k; j++) ml_aux_dispatch(r, b, sel[j], s->renorm ? g[j] : p[sel[j]]);
    }
    if (r->training) r->metric(r->metric_ctx, "temperature", tau);
    return 0;
}

static int co_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    cosr *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N, M = s->dim, k = s->k < N ? s->k : N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *ds = ml_aux_buf_get(h, &s->ds, bn * sizeof(float));
    float *dp = ml_aux_buf_get(h, &s->dp, bn * sizeof(float));
    float *duh = ml_aux_buf_get(h, &s->duh, (size_t)B * M * sizeof(float));
    float *deh = ml_aux_buf_get(h, &s->deh, (size_t)N * M * sizeof(float));
    if (!ds || !dp || !duh || !deh) {
        snprintf(err, ML_ERR_MAX, "cosine: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    ml_aux_softmax_router_bwd(r, g, s->renorm ? k : 0, ds, dp);
    float tau = tau_eff(r);
    if (r->param[P_TAU][0] >= TAU_MIN) {
        double dt = 0;
        for (size_t i = 0; i < bn; i++) dt += (double)ds[i] * r->logits[i];
        r->grad[P_TAU][0] += (float)(-dt / tau);
    }
    for (size_t i = 0; i < bn; i++) ds[i] /= tau; /* dL/dc */
    memset(duh, 0, (size_t)B * M * sizeof(float));
    memset(deh, 0, (size_t)N * M * sizeof(float));
    /* c = Û Êᵀ: dÊ += dcᵀ Û, dÛ += dc Ê */
    ml_aux_linear_bwd(h, s->uh.p, s->eh.p, ds, B, M, N, deh, NULL, duh);
    normalize_rows_bwd(s->eh.p, s->en.p, deh, r->grad[P_EMB], N, M);
    /* dU from dÛ, into u's buffer: backward needs only û and ‖u‖, and the next forward
       recomputes u */
    float *du = s->u.p;
    memset(du, 0, (size_t)B * M * sizeof(float));
    normalize_rows_bwd(s->uh.p, s->un.p, duh, du, B, M);
    ml_aux_linear_bwd(h, r->x, r->param[P_PROJ], du, B, D, M, r->grad[P_PROJ], NULL, g->dx);
    return 0;
}

static int co_event(void *self, const ml_router_event *ev, char *err) {
    cosr *s = self;
    (void)err;
    if (ev->kind == ML_EV_OPTIONS_CHANGED) {
        s->k = (int)ev->opt[OPT_K].i;
        s->renorm = (int)ev->opt[OPT_RENORM].i;
    }
    return 0;
}

static const ml_router_api api = {
    sizeof(ml_router_api), co_create, co_destroy, co_params, co_states, co_forward, co_backward, co_event,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "cosine",
    "1.0",
    "X-MoE: cosine similarity of the projected input and expert embeddings over a learnable temperature, softmax, top-k (Chi et al. 2022)",
    options,
    NUM_OPTS,
    &api,
};
