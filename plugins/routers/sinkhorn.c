/*
 * sinkhorn — balanced assignment by Sinkhorn normalisation (BASE layers / S-BASE).
 *
 * Sources: M. Lewis, S. Bhosale, T. Dettmers, N. Goyal, L. Zettlemoyer, "BASE Layers:
 * Simplifying Training of Large, Sparse Models", ICML 2021 (balanced assignment of tokens to
 * experts in training, greedy top-1 at test time); A. Clark et al., "Unified Scaling Laws for
 * Routed Language Models", ICML 2022, section 2 and appendix: S-BASE, BASE's linear
 * assignment replaced by a few Sinkhorn iterations. The numerics follow Megatron-Core,
 * megatron/core/transformer/moe/moe_utils.py `sinkhorn` and router.py
 * `TopKRouter.sinkhorn_load_balancing`:
 *
 *   logits = x Wᵀ                                           (B, N), no bias
 *   C = exp(logits)
 *   repeat (at most `iters` times, until mean_i |d1_i − d1_i,old| ≤ tol):
 *       d0_b = (1/B) / (Σ_i d1_i C_bi + ε)                   (rows toward mass 1/B)
 *       d1_i = (1/N) / (Σ_b d0_b C_bi + ε)                   (columns toward mass 1/N)
 *   P = diag(d0) C diag(d1)                                 ε = 1e-8, d0 = d1 = 1 at start
 *   training:   experts(b) = top-k of P[b, :]                (the balanced assignment)
 *   evaluation: experts(b) = top-k of act(logits[b, :])      (eval: greedy, BASE's test rule)
 *               or top-k of P[b, :]                          (eval: balanced)
 *   gate(b, e) = act(logits)[b, e]                           (not P: P decides, act weighs)
 *   act = sigmoid when k = 1, softmax over the N experts when k > 1 (option gate: auto, as
 *         Megatron-Core's _sinkhorn_activation), or either one forced.
 *
 * The assignment is discrete and P carries no gradient (Megatron computes it under
 * torch.no_grad): gradients reach W and x only through the gates and prob.
 *
 * Numerics. Megatron exponentiates the raw logits, which overflows for logits above ~88;
 * here C_bi = exp(logits_bi − max_j logits_bj). Scaling row b by a constant r_b is absorbed
 * by d0_b (d0_b → d0_b / r_b), so the iterates of d1 and the matrix P are the same up to
 * the ε guard, which only exists to avoid a division by zero. Everything runs in double.
 *
 * prob = softmax(logits) in every mode (the distribution losses and routing health read);
 * with gate: softmax the gates are prob at the chosen experts. Router metrics:
 * sinkhorn_iters and sinkhorn_error (training forwards, and evaluation with eval: balanced).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { OPT_K, OPT_ITERS, OPT_TOL, OPT_GATE, OPT_EVAL, NUM_OPTS };
enum { GATE_AUTO, GATE_SOFTMAX, GATE_SIGMOID };
enum { EVAL_GREEDY, EVAL_BALANCED };

static const ml_option options[NUM_OPTS] = {
    [OPT_K] = {"k", ML_OPT_INT, "1", 1, 64, NULL,
               "experts per sample (clipped to the number of experts); S-BASE and BASE use 1"},
    [OPT_ITERS] = {"iters", ML_OPT_INT, "100", 1, 10000, NULL,
                   "at most this many Sinkhorn iterations per forward"},
    [OPT_TOL] = {"tol", ML_OPT_FLOAT, "0.0001", 0, 1, NULL,
                 "stop when mean |change of the column scaling d1| <= tol (Megatron-Core: 1e-4)"},
    [OPT_GATE] = {"gate", ML_OPT_ENUM, "auto", 1, 0, "auto|softmax|sigmoid",
                  "gate activation of the raw logits: auto = sigmoid at k=1, softmax at k>1 (Megatron-Core)"},
    [OPT_EVAL] = {"eval", ML_OPT_ENUM, "greedy", 1, 0, "greedy|balanced",
                  "evaluation: top-k of the gate activation (BASE), or the Sinkhorn assignment as in training"},
};

#define SK_EPS 1e-8

enum { P_W, NUM_PARAMS };

typedef struct sk {
    const ml_host *host;
    int D, k, iters, gate, eval;
    double tol;
    ml_aux_buf cost; /* (B, N) double: C, then P */
    ml_aux_buf d0;   /* (B) double */
    ml_aux_buf d1;   /* (2N) double: d1 and the previous d1 */
    ml_aux_buf act;  /* (N) float: the gate activation of one sample */
    ml_aux_buf dz;   /* (B, N) backward: dL/dlogits */
    ml_aux_buf dp;   /* (B, N) backward: dL/dprob */
} sk;

/* the activation the gates use for k experts per sample */
static int gate_kind(const sk *s, int k) {
    if (s->gate != GATE_AUTO) return s->gate;
    return k == 1 ? GATE_SIGMOID : GATE_SOFTMAX;
}

/*
 * P (B, N) = diag(d0) C diag(d1) by Megatron-Core's iteration, from the logits z, into
 * cost. Returns the iterations run; *err gets the last mean |d1 − d1_old|.
 */
static int sinkhorn(sk *s, const float *z, int B, int N, double *P, double *d0, double *d1, double *err) {
    for (int b = 0; b < B; b++) {
        const float *zb = z + (size_t)b * N;
        double m = zb[0];
        for (int i = 1; i < N; i++) m = zb[i] > m ? zb[i] : m;
        for (int i = 0; i < N; i++) P[(size_t)b * N + i] = exp((double)zb[i] - m);
    }
    double *old = d1 + N;
    for (int b = 0; b < B; b++) d0[b] = 1;
    for (int i = 0; i < N; i++) d1[i] = old[i] = 1;
    int it = 0;
    double e = 1e9;
    while (e > s->tol && it < s->iters) {
        for (int b = 0; b < B; b++) {
            const double *c = P + (size_t)b * N;
            double t = 0;
            for (int i = 0; i < N; i++) t += d1[i] * c[i];
            d0[b] = (1.0 / B) / (t + SK_EPS);
        }
        for (int i = 0; i < N; i++) d1[i] = 0;
        for (int b = 0; b < B; b++) {
            const double *c = P + (size_t)b * N;
            for (int i = 0; i < N; i++) d1[i] += d0[b] * c[i];
        }
        e = 0;
        for (int i = 0; i < N; i++) {
            d1[i] = (1.0 / N) / (d1[i] + SK_EPS);
            e += fabs(old[i] - d1[i]);
            old[i] = d1[i];
        }
        e /= N;
        it++;
    }
    for (int b = 0; b < B; b++)
        for (int i = 0; i < N; i++) P[(size_t)b * N + i] *= d0[b] * d1[i];
    *err = e;
    return it;
}

/* sel (k) = the k largest entries of row p (n) in double, largest first, ties to the
   lower index (as ml_aux_topk, for double rows). */
static void topk_double(const double *p, int n, int k, int32_t *sel) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            int after_prev = 1;
            if (j > 0) {
                int q = sel[j - 1];
                after_prev = p[q] > p[i] || (p[q] == p[i] && q < i);
            }
            if (after_prev && (best < 0 || p[i] > p[best])) best = i;
        }
        sel[j] = best;
    }
}

/* --------------------------------------------------------------------- api */

static void *sk_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->dim < 1 || init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX, "sinkhorn: needs dim >= 1 and num_experts >= 1, got %d and %d", init->dim,
                 init->num_experts);
        return NULL;
    }
    if (o[OPT_K].i < 1 || o[OPT_K].i > 64) {
        snprintf(err, ML_ERR_MAX, "sinkhorn: option k must be in [1, 64], got %lld", (long long)o[OPT_K].i);
        return NULL;
    }
    if (o[OPT_ITERS].i < 1) {
        snprintf(err, ML_ERR_MAX, "sinkhorn: option iters must be >= 1, got %lld", (long long)o[OPT_ITERS].i);
        return NULL;
    }
    if (!(o[OPT_TOL].f >= 0)) {
        snprintf(err, ML_ERR_MAX, "sinkhorn: option tol must be >= 0, got %g", o[OPT_TOL].f);
        return NULL;
    }
    sk *s = ml_aux_new(host, sizeof *s, "sinkhorn", err);
    if (!s) return NULL;
    s->host = host;
    s->D = init->dim;
    s->k = (int)o[OPT_K].i;
    s->iters = (int)o[OPT_ITERS].i;
    s->tol = o[OPT_TOL].f;
    s->gate = (int)o[OPT_GATE].i;
    s->eval = (int)o[OPT_EVAL].i;
    return s;
}

static void sk_destroy(void *self) {
    sk *s = self;
    if (!s) return;
    const ml_host *h = s->host;
    ml_aux_buf_free(h, &s->cost);
    ml_aux_buf_free(h, &s->d0);
    ml_aux_buf_free(h, &s->d1);
    ml_aux_buf_free(h, &s->act);
    ml_aux_buf_free(h, &s->dz);
    ml_aux_buf_free(h, &s->dp);
    h->free(s);
}

static int sk_params(void *self, ml_tensor_decl *out, int cap) {
    sk *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = ml_aux_linear_decl("w", s->D, s->D);
    return NUM_PARAMS;
}

static int sk_states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int sk_forward(void *self, ml_route *r, char *err) {
    sk *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (D != s->D || N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX, "sinkhorn: forward with B=%d D=%d N=%d, router was made for D=%d", B, D, N, s->D);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    int k = s->k < N ? s->k : N, balanced = r->training || s->eval == EVAL_BALANCED;
    size_t bn = (size_t)B * (size_t)N;
    double *P = balanced ? ml_aux_buf_get(h, &s->cost, bn * sizeof(double)) : NULL;
    double *d0 = balanced ? ml_aux_buf_get(h, &s->d0, (size_t)B * sizeof(double)) : NULL;
    double *d1 = balanced ? ml_aux_buf_get(h, &s->d1, 2 * (size_t)N * sizeof(double)) : NULL;
    float *act = ml_aux_buf_get(h, &s->act, (size_t)N * sizeof(float));
    if (!act || (balanced && (!P || !d0 || !d1))) {
        snprintf(err, ML_ERR_MAX, "sinkhorn: out of memory for B=%d N=%d", B, N);
        return -1;
    }
    ml_aux_linear(h, r->x, r->param[P_W], NULL, B, D, N, r->logits);
    ml_aux_softmax(r->logits, r->prob, B, N);
    if (balanced) {
        double e;
        int it = sinkhorn(s, r->logits, B, N, P, d0, d1, &e);
        r->metric(r->metric_ctx, "sinkhorn_iters", it);
        r->metric(r->metric_ctx, "sinkhorn_error", e);
    }
    int sigmoid = gate_kind(s, k) == GATE_SIGMOID;
    int32_t sel[64];
    for (int b = 0; b < B; b++) {
        const float *zb = r->logits + (size_t)b * N, *pb = r->prob + (size_t)b * N;
        for (int i = 0; i < N; i++) act[i] = sigmoid ? ml_aux_sigmoid(zb[i]) : pb[i];
        if (balanced) topk_double(P + (size_t)b * N, N, k, sel);
        else ml_aux_topk(zb, N, k, sel); /* sigmoid and softmax both rank as the logits do */
        for (int j = 0; j < k; j++) ml_aux_dispatch(r, b, sel[j], act[sel[j]]);
    }
    return 0;
}

static int sk_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    sk *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N, k = s->k < N ? s->k : N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = ml_aux_buf_get(h, &s->dz, bn * sizeof(float));
    float *dp = ml_aux_buf_get(h, &s->dp, bn * sizeof(float));
    if (!dz || !dp) {
        snprintf(err, ML_ERR_MAX, "sinkhorn: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    if (gate_kind(s, k) == GATE_SOFTMAX) {
        /* gates are prob at the chosen pairs: one softmax Jacobian for both */
        ml_aux_softmax_router_bwd(r, g, 0, dz, dp);
    } else {
        ml_route_grad ng = *g;
        ng.dgate = NULL;
        ml_aux_softmax_router_bwd(r, &ng, 0, dz, dp);
        /* gate = σ(z): dz += dgate σ (1 − σ) */
        for (int t = 0; g->dgate && t < r->n_disp; t++) {
            size_t i = (size_t)r->disp_sample[t] * N + r->disp_expert[t];
            float sg = r->disp_gate[t];
            dz[i] += g->dgate[t] * sg * (1.0f - sg);
        }
    }
    ml_aux_linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], NULL, g->dx);
    return 0;
}

static const ml_router_api api = {
    sizeof(ml_router_api), sk_create, sk_destroy, sk_params, sk_states, sk_forward, sk_backward, NULL,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "sinkhorn",
    "1.0",
    "S-BASE balanced assignment: top-k of the Sinkhorn-normalised exp(logits) in training, gates sigmoid/softmax of the logits (Clark et al. 2022; Megatron-Core)",
    options,
    NUM_OPTS,
    &api,
};
