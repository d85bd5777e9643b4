/*
 * noisy_topk — noisy top-k gating.
 *
 * Source: N. Shazeer, A. Mirhoseini, K. Maziarz, A. Davis, Q. Le, G. Hinton, J. Dean,
 * "Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer",
 * ICLR 2017, section 2.1 "The Gating Network", paragraph "Noisy Top-K Gating",
 * eq. 3-5:
 *
 *   H(x)_i = (x W_g)_i + ε_i · softplus((x W_noise)_i),   ε_i ~ N(0, 1)      (eq. 4)
 *   KeepTopK(v, k)_i = v_i if v_i is among the top k of v, else −∞          (eq. 5)
 *   G(x) = softmax(KeepTopK(H(x), k))                                         (eq. 3)
 *
 * The noise term is added only in training steps (and only when option `noise` is on);
 * in evaluation H = x W_g. The paper has no bias term, so neither does this router.
 * W_g starts as PyTorch's nn.Linear (U(±1/sqrt(D))); W_noise starts at zero, as in the
 * paper's appendix A, so the initial noise scale is softplus(0) = ln 2.
 *
 * What the host sees: logits = H (including the noise in training), prob = softmax(H)
 * over all N experts (the dense distribution the sparse gates are cut from; the balancing
 * losses read it), one triple per selected expert with gate G(x)_i. No sample is dropped.
 *
 * Backward: the gates are a softmax over the selected entries of H, so
 * dH_j = G_j (dgate_j − Σ_sel G dgate); dprob goes through the dense softmax Jacobian and
 * dlogits adds directly. dH flows to W_g and x, and, through the ε drawn in the forward
 * and softplus' = sigmoid, to W_noise and x.
 */
#include <stdio.h>

#include "moelab/plugin_aux.h"

enum { OPT_K, OPT_NOISE, NUM_OPTS };

/* both may change while the router runs (Lua exp.moe[i].router:set{noise = false}):
   nt_event takes the new values, and the next forward uses them */
static const ml_option options[NUM_OPTS] = {
    [OPT_K] = {"k", ML_OPT_INT, "2", 1, 64, NULL,
               "experts per sample (clipped to the number of experts)", ML_OPTF_RUNTIME},
    [OPT_NOISE] = {"noise", ML_OPT_BOOL, "true", 1, 0, NULL,
                   "add eps*softplus(x W_noise) to the logits in training steps", ML_OPTF_RUNTIME},
};

enum { P_W_GATE, P_W_NOISE, NUM_PARAMS };

typedef struct noisy {
    const ml_host *host;
    int D, k, noise;
    ml_aux_buf eps; /* (B, N) ε drawn in the last training forward */
    ml_aux_buf sig; /* (B, N) sigmoid(x W_noise) = softplus' at the last training forward */
    ml_aux_buf dh;  /* (B, N) backward: dL/dH */
    ml_aux_buf dp;  /* (B, N) backward: dL/dprob */
} noisy;

/* --------------------------------------------------------------------- api */

static void *nt_create(const ml_host *host, const ml_router_init *init, char *err) {
    if (init->dim < 1 || init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX, "noisy_topk: needs dim >= 1 and num_experts >= 1, got %d and %d",
                 init->dim, init->num_experts);
        return NULL;
    }
    int k = (int)init->opt[OPT_K].i;
    if (k < 1 || k > 64) {
        snprintf(err, ML_ERR_MAX, "noisy_topk: option k must be in [1, 64], got %d", k);
        return NULL;
    }
    noisy *s = ml_aux_new(host, sizeof *s, "noisy_topk", err);
    if (!s) return NULL;
    s->host = host;
    s->D = init->dim;
    s->k = k;
    s->noise = (int)init->opt[OPT_NOISE].i;
    return s;
}

static void nt_destroy(void *self) {
    noisy *s = self;
    if (!s) return;
    const ml_host *h = s->host;
    ml_aux_buf_free(h, &s->eps);
    ml_aux_buf_free(h, &s->sig);
    ml_aux_buf_free(h, &s->dh);
    ml_aux_buf_free(h, &s->dp);
    h->free(s);
}

static int nt_params(void *self, ml_tensor_decl *out, int cap) {
    noisy *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W_GATE] = ml_aux_linear_decl("w_gate", s->D, s->D);
    out[P_W_NOISE] = (ml_tensor_decl){"w_noise", 1, 0, s->D, ML_INIT_ZEROS, 0, s->D, 0};
    return NUM_PARAMS;
}

static int nt_states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int nt_forward(void *self, ml_route *r, char *err) {
    noisy *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (D != s->D || N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX, "noisy_topk: forward with B=%d D=%d N=%d, router was made for D=%d",
                 B, D, N, s->D);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *eps = ml_aux_buf_get(h, &s->eps, bn * sizeof(float));
    float *sig = ml_aux_buf_get(h, &s->sig, bn * sizeof(float));
    if (!eps || !sig) {
        snprintf(err, ML_ERR_MAX, "noisy_topk: out of memory for B=%d N=%d", B, N);
        return -1;
    }
    float *H = r->logits;
    ml_aux_linear(h, r->x, r->param[P_W_GATE], NULL, B, D, N, H);
    if (r->training && s->noise) {
        ml_aux_linear(h, r->x, r->param[P_W_NOISE], NULL, B, D, N, sig);
        for (size_t i = 0; i < bn; i++) {
            float raw = sig[i];
            float e = (float)h->rng_normal(r->rng);
            eps[i] = e;
            sig[i] = ml_aux_sigmoid(raw);
            H[i] += e * ml_aux_softplus(raw);
        }
    }
    int k = s->k < N ? s->k : N;
    int32_t sel[64];
    float gs[64];
    ml_aux_softmax(H, r->prob, B, N);
    for (int b = 0; b < B; b++) {
        const float *hb = H + (size_t)b * N;
        ml_aux_topk(hb, N, k, sel);
        ml_aux_topk_gates(hb, sel, k, gs); /* G = softmax(KeepTopK(H, k)) */
        for (int j = 0; j < k; j++) ml_aux_dispatch(r, b, sel[j], gs[j]);
    }
    return 0;
}

static int nt_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    noisy *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N, k = s->k < N ? s->k : N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dh = ml_aux_buf_get(h, &s->dh, bn * sizeof(float));
    float *dp = ml_aux_buf_get(h, &s->dp, bn * sizeof(float));
    if (!dh || !dp) {
        snprintf(err, ML_ERR_MAX, "noisy_topk: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    /* prob = softmax(H) and G = softmax over the selected H (k triples per sample) */
    ml_aux_softmax_router_bwd(r, g, k, dh, dp);
    ml_aux_linear_bwd(h, r->x, r->param[P_W_GATE], dh, B, D, N, r->grad[P_W_GATE], NULL, g->dx);
    if (r->training && s->noise) {
        /* dL/d(x W_noise) = dH · ε · softplus'; reuse dh in place. */
        const float *eps = s->eps.p, *sig = s->sig.p;
        for (size_t i = 0; i < bn; i++) dh[i] *= eps[i] * sig[i];
        ml_aux_linear_bwd(h, r->x, r->param[P_W_NOISE], dh, B, D, N, r->grad[P_W_NOISE], NULL,
                          g->dx);
    }
    return 0;
}

static int nt_event(void *self, const ml_router_event *ev, char *err) {
    noisy *s = self;
    (void)err;
    if (ev->kind == ML_EV_OPTIONS_CHANGED) {
        s->k = (int)ev->opt[OPT_K].i;
        s->noise = (int)ev->opt[OPT_NOISE].i;
    }
    return 0;
}

static const ml_router_api api = {
    sizeof(ml_router_api), nt_create, nt_destroy, nt_params, nt_states,
    nt_forward, nt_backward, nt_event,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "noisy_topk",
    "1.0",
    "Shazeer et al. 2017 noisy top-k gating: softmax over the top k of x W_g + eps*softplus(x W_noise)",
    options,
    NUM_OPTS,
    &api,
};
