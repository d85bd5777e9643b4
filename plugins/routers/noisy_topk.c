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
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin.h"

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

/* A scratch buffer that only grows. */
typedef struct buf {
    void *p;
    size_t cap; /* bytes */
} buf;

typedef struct noisy {
    const ml_host *host;
    int D, k, noise;
    buf eps;    /* (B, N) ε drawn in the last training forward */
    buf sig;    /* (B, N) sigmoid(x W_noise) = softplus' at the last training forward */
    buf dh;     /* (B, N) backward: dL/dH */
    buf rowsum; /* (B) backward: Σ_sel G dgate per sample */
    buf mark;   /* (N) top-k marks */
} noisy;

/* ------------------------------------------------------------------ helpers */

/* b->p grown to at least n bytes (contents not kept when it grows); NULL when out of memory. */
static void *need(const ml_host *h, buf *b, size_t n) {
    if (n > b->cap) {
        void *q = h->alloc(n);
        if (!q) return NULL;
        h->free(b->p);
        b->p = q;
        b->cap = n;
    }
    return b->p;
}

static float softplus(float v) { return v > 0 ? v + log1pf(expf(-v)) : log1pf(expf(v)); }

static float sigmoid(float v) {
    if (v >= 0) return 1.0f / (1.0f + expf(-v));
    float e = expf(v);
    return e / (1.0f + e);
}

/* p = softmax(z) over n entries, max subtracted first. */
static void softmax_row(const float *z, float *p, int n) {
    float m = z[0];
    for (int i = 1; i < n; i++)
        if (z[i] > m) m = z[i];
    double s = 0;
    for (int i = 0; i < n; i++) s += p[i] = expf(z[i] - m);
    float inv = (float)(1.0 / s);
    for (int i = 0; i < n; i++) p[i] *= inv;
}

/* sel[0..k) = indices of the k largest z, largest first; ties go to the lower index. */
static void topk_row(const float *z, int n, int k, int *sel, uint8_t *mark) {
    memset(mark, 0, (size_t)n);
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!mark[i] && (best < 0 || z[i] > z[best])) best = i;
        mark[best] = 1;
        sel[j] = best;
    }
}

/* z (B, N) = x (B, D) · w (N, D)^T */
static void linear_fwd(const ml_host *h, const float *x, const float *w, int B, int D, int N,
                       float *z) {
    h->sgemm(0, 1, B, N, D, 1.0f, x, D, w, D, 0.0f, z, N);
}

/* gw (N, D) += dz^T x;  dx (B, D) += dz w */
static void linear_bwd(const ml_host *h, const float *x, const float *w, const float *dz,
                       int B, int D, int N, float *gw, float *dx) {
    if (gw) h->sgemm(1, 0, N, D, B, 1.0f, dz, N, x, D, 1.0f, gw, D);
    if (dx) h->sgemm(0, 0, B, D, N, 1.0f, dz, N, w, D, 1.0f, dx, D);
}

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
    noisy *s = host->alloc(sizeof *s);
    if (!s) {
        snprintf(err, ML_ERR_MAX, "noisy_topk: out of memory");
        return NULL;
    }
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
    h->free(s->eps.p);
    h->free(s->sig.p);
    h->free(s->dh.p);
    h->free(s->rowsum.p);
    h->free(s->mark.p);
    h->free(s);
}

static int nt_params(void *self, ml_tensor_decl *out, int cap) {
    noisy *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W_GATE] = (ml_tensor_decl){"w_gate", 1, 0, s->D, ML_INIT_UNIFORM_FANIN, 0, s->D, 0};
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
    float *eps = need(h, &s->eps, bn * sizeof(float));
    float *sig = need(h, &s->sig, bn * sizeof(float));
    uint8_t *mark = need(h, &s->mark, (size_t)N);
    if (!eps || !sig || !mark) {
        snprintf(err, ML_ERR_MAX, "noisy_topk: out of memory for B=%d N=%d", B, N);
        return -1;
    }
    float *H = r->logits;
    linear_fwd(h, r->x, r->param[P_W_GATE], B, D, N, H);
    if (r->training && s->noise) {
        linear_fwd(h, r->x, r->param[P_W_NOISE], B, D, N, sig);
        for (size_t i = 0; i < bn; i++) {
            float raw = sig[i];
            float e = (float)h->rng_normal(r->rng);
            eps[i] = e;
            sig[i] = sigmoid(raw);
            H[i] += e * softplus(raw);
        }
    }
    int k = s->k < N ? s->k : N;
    int sel[64];
    float hs[64], gs[64];
    for (int b = 0; b < B; b++) {
        const float *hb = H + (size_t)b * N;
        softmax_row(hb, r->prob + (size_t)b * N, N);
        topk_row(hb, N, k, sel, mark);
        for (int j = 0; j < k; j++) hs[j] = hb[sel[j]];
        softmax_row(hs, gs, k);
        for (int j = 0; j < k; j++) {
            r->disp_sample[r->n_disp] = b;
            r->disp_expert[r->n_disp] = sel[j];
            r->disp_gate[r->n_disp] = gs[j];
            r->n_disp++;
        }
    }
    return 0;
}

static int nt_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    noisy *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dh = need(h, &s->dh, bn * sizeof(float));
    float *rowsum = need(h, &s->rowsum, (size_t)B * sizeof(float));
    if (!dh || !rowsum) {
        snprintf(err, ML_ERR_MAX, "noisy_topk: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    if (g->dlogits) memcpy(dh, g->dlogits, bn * sizeof(float));
    else memset(dh, 0, bn * sizeof(float));
    if (g->dprob) {
        for (int b = 0; b < B; b++) {
            const float *p = r->prob + (size_t)b * N, *dp = g->dprob + (size_t)b * N;
            float *d = dh + (size_t)b * N;
            double dot = 0;
            for (int i = 0; i < N; i++) dot += (double)p[i] * dp[i];
            for (int i = 0; i < N; i++) d[i] += p[i] * (dp[i] - (float)dot);
        }
    }
    if (g->dgate) {
        memset(rowsum, 0, (size_t)B * sizeof(float));
        for (int t = 0; t < r->n_disp; t++)
            rowsum[r->disp_sample[t]] += r->disp_gate[t] * g->dgate[t];
        for (int t = 0; t < r->n_disp; t++) {
            int b = r->disp_sample[t];
            dh[(size_t)b * N + r->disp_expert[t]] +=
                r->disp_gate[t] * (g->dgate[t] - rowsum[b]);
        }
    }
    linear_bwd(h, r->x, r->param[P_W_GATE], dh, B, D, N, r->grad[P_W_GATE], g->dx);
    if (r->training && s->noise) {
        /* dL/d(x W_noise) = dH · ε · softplus'; reuse dh in place. */
        const float *eps = s->eps.p, *sig = s->sig.p;
        for (size_t i = 0; i < bn; i++) dh[i] *= eps[i] * sig[i];
        linear_bwd(h, r->x, r->param[P_W_NOISE], dh, B, D, N, r->grad[P_W_NOISE], g->dx);
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
