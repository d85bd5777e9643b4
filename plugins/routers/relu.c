/*
 * relu — ReMoE: ReLU routing with an adaptive L1 regulariser that steers the number of
 * active experts.
 *
 * Source: Z. Wang, J. Zhu, J. Chen, "ReMoE: Fully Differentiable Mixture-of-Experts with
 * ReLU Routing", ICLR 2025 (arXiv 2412.14711), section 3 (ReLU routing; "Controlling
 * sparsity via adaptive L1 regularization"; "Integrate load balancing into L1
 * regularization"). Reference code: the authors' Megatron-LM fork (thu-ml/ReMoE), router.py
 * `l1_reg_load_balancing` / `apply_l1_reg` (the regulariser is Megatron's
 * switch_load_balancing_loss_func applied to the ReLU gates) and the training loop's
 * coefficient update:
 *
 *   R = ReLU(x Wᵀ)                          (B, N), no bias; every expert with R > 0 is used
 *   out[b] = Σ_e R[b, e] · expert_e(x[b])   (the gates are R itself: no softmax, no top-k)
 *   L_reg = λ_t · (1/B) Σ_b Σ_e w_e R[b, e]
 *       w_e = 1                              (balance: false — the plain L1 norm)
 *       w_e = N · c_e / (k · B)              (balance: true, the default — c_e the samples
 *                                             routed to e; a constant, no gradient)
 *   after each training step (S_t: the step's share of zero gates):
 *       λ_{t+1} = λ_t · α^{sign((1 − k/N) − S_t)} = λ_t · α^{sign(active_t − k)}
 *       active_t = (dispatched pairs) / B, the mean number of experts per sample
 *
 * So λ grows while the samples use more than k experts on average, and shrinks while they
 * use fewer (the sign is the paper's: too dense means more regularisation). At active = k
 * exactly, sign 0 leaves λ unchanged (the paper's formula; a `<` test in some reimplementations
 * divides by α there). λ starts at lambda_init (the paper's 1e-8) and is router STATE
 * ("lambda", (1, 1)), so checkpoints and --resume continue the controller exactly; it is
 * kept in [FLT_MIN, 1e30] so that a long stretch of one sign can neither lose it to 0
 * (from which no multiplication returns) nor overflow it.
 *
 * Differences from the paper. ReMoE shares one λ across all MoE layers and measures S_t over
 * all of them; moelab's routers are per layer, so each layer has its own λ and controls its
 * own sparsity. The regulariser belongs to the router (it owns the gates): backward adds
 * dL_reg/dR = λ w_e / B at every dispatched pair, in training steps only, and the router
 * reports the value (not part of metrics.csv's loss column).
 *
 * prob, for losses and routing health: the normalised gates R[b, :] / Σ_e R[b, e]. A sample
 * whose gates are all 0 is routed to no expert (n_dropped; it passes through the residual,
 * as ReMoE's zero output would in a residual block) and its prob row is uniform, 1/N, with
 * no gradient. logits = x Wᵀ.
 *
 * Router metrics: experts_per_sample (training and evaluation forwards); l1_lambda (λ used
 * in the step) and l1_reg (the regulariser before λ) in training forwards.
 */
#include <float.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { OPT_K, OPT_ALPHA, OPT_LAMBDA, OPT_BALANCE, NUM_OPTS };

static const ml_option options[NUM_OPTS] = {
    [OPT_K] = {"k", ML_OPT_FLOAT, "2", 0.01, 4096, NULL,
               "target mean number of active experts per sample (the paper's k)", ML_OPTF_RUNTIME},
    [OPT_ALPHA] = {"alpha", ML_OPT_FLOAT, "1.2", 1, 10, NULL,
                   "multiplier of the lambda update per step (the paper's alpha; 1 keeps lambda fixed)",
                   ML_OPTF_RUNTIME},
    [OPT_LAMBDA] = {"lambda_init", ML_OPT_FLOAT, "1e-8", 1e-30, 1e6, NULL,
                    "initial L1 coefficient lambda_0 (the paper's 1e-8)"},
    [OPT_BALANCE] = {"balance", ML_OPT_BOOL, "true", 0, -1, NULL,
                     "weight each expert's L1 term by its load N*c_e/(k*B) (the paper's load-balancing L1)",
                     ML_OPTF_RUNTIME},
};

#define LAMBDA_MAX 1e30f

enum { P_W, NUM_PARAMS };
enum { S_LAMBDA, NUM_STATES };

typedef struct remoe {
    const ml_host *host;
    int D, balance;
    double k, alpha;
    float lambda0;
    /* the last training forward, for the AFTER_BACKWARD update that follows it */
    int64_t train_pairs, train_B;
    ml_aux_buf w;  /* (N) double: the L1 weights w_e */
    ml_aux_buf dz; /* (B, N) backward: dL/dR, then dL/dlogits */
} remoe;

static void set_options(remoe *s, const ml_optval *o) {
    s->k = o[OPT_K].f;
    s->alpha = o[OPT_ALPHA].f;
    s->balance = (int)o[OPT_BALANCE].i;
}

/* w (N) = the L1 weight of each expert for the route r (see the header). */
static void l1_weights(const remoe *s, const ml_route *r, double *w) {
    int N = r->N;
    if (!s->balance) {
        for (int e = 0; e < N; e++) w[e] = 1;
        return;
    }
    memset(w, 0, (size_t)N * sizeof *w);
    for (int t = 0; t < r->n_disp; t++) w[r->disp_expert[t]] += 1;
    double norm = s->k > 0 ? (double)N / (s->k * r->B) : 0;
    for (int e = 0; e < N; e++) w[e] *= norm;
}

/* --------------------------------------------------------------------- api */

static void *re_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->dim < 1 || init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX, "relu: needs dim >= 1 and num_experts >= 1, got %d and %d", init->dim,
                 init->num_experts);
        return NULL;
    }
    if (!(o[OPT_K].f > 0)) {
        snprintf(err, ML_ERR_MAX, "relu: option k must be > 0, got %g", o[OPT_K].f);
        return NULL;
    }
    if (!(o[OPT_ALPHA].f >= 1)) {
        snprintf(err, ML_ERR_MAX, "relu: option alpha must be >= 1, got %g", o[OPT_ALPHA].f);
        return NULL;
    }
    if (!(o[OPT_LAMBDA].f >= 1e-30 && o[OPT_LAMBDA].f <= LAMBDA_MAX)) {
        snprintf(err, ML_ERR_MAX, "relu: option lambda_init must be in [1e-30, 1e30], got %g", o[OPT_LAMBDA].f);
        return NULL;
    }
    remoe *s = ml_aux_new(host, sizeof *s, "relu", err);
    if (!s) return NULL;
    s->host = host;
    s->D = init->dim;
    s->lambda0 = (float)o[OPT_LAMBDA].f;
    set_options(s, o);
    return s;
}

static void re_destroy(void *self) {
    remoe *s = self;
    if (!s) return;
    ml_aux_buf_free(s->host, &s->w);
    ml_aux_buf_free(s->host, &s->dz);
    s->host->free(s);
}

static int re_params(void *self, ml_tensor_decl *out, int cap) {
    remoe *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = ml_aux_linear_decl("w", s->D, s->D);
    return NUM_PARAMS;
}

static int re_states(void *self, ml_tensor_decl *out, int cap) {
    remoe *s = self;
    if (cap < NUM_STATES) return -1;
    out[S_LAMBDA] = (ml_tensor_decl){"lambda", 0, 1, 1, ML_INIT_CONST, s->lambda0, 0, 0};
    return NUM_STATES;
}

static int re_forward(void *self, ml_route *r, char *err) {
    remoe *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (D != s->D || N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX, "relu: forward with B=%d D=%d N=%d, router was made for D=%d", B, D, N, s->D);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    ml_aux_linear(h, r->x, r->param[P_W], NULL, B, D, N, r->logits);
    for (int b = 0; b < B; b++) {
        const float *z = r->logits + (size_t)b * N;
        float *p = r->prob + (size_t)b * N;
        double sum = 0;
        for (int e = 0; e < N; e++) sum += z[e] > 0 ? z[e] : 0;
        if (!(sum > 0)) {
            for (int e = 0; e < N; e++) p[e] = 1.0f / N;
            r->n_dropped++;
            continue;
        }
        for (int e = 0; e < N; e++) {
            p[e] = z[e] > 0 ? (float)(z[e] / sum) : 0.0f;
            if (z[e] > 0) ml_aux_dispatch(r, b, e, z[e]);
        }
    }
    r->metric(r->metric_ctx, "experts_per_sample", (double)r->n_disp / B);
    if (r->training) {
        double *w = ml_aux_buf_get(h, &s->w, (size_t)N * sizeof(double));
        if (!w) {
            snprintf(err, ML_ERR_MAX, "relu: out of memory for N=%d", N);
            return -1;
        }
        l1_weights(s, r, w);
        double reg = 0;
        for (int t = 0; t < r->n_disp; t++) reg += w[r->disp_expert[t]] * r->disp_gate[t];
        r->metric(r->metric_ctx, "l1_reg", reg / B);
        r->metric(r->metric_ctx, "l1_lambda", r->state[S_LAMBDA][0]);
        s->train_pairs = r->n_disp;
        s->train_B = B;
    }
    return 0;
}

static int re_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    remoe *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = ml_aux_buf_get(h, &s->dz, bn * sizeof(float));
    double *w = ml_aux_buf_get(h, &s->w, (size_t)N * sizeof(double));
    if (!dz || !w) {
        snprintf(err, ML_ERR_MAX, "relu: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    /* dL/dR: the experts' gradient and the losses' at each dispatched pair, the L1
       regulariser's λ w_e / B there in training steps */
    memset(dz, 0, bn * sizeof(float));
    double lam = r->training ? r->state[S_LAMBDA][0] : 0;
    if (lam > 0) l1_weights(s, r, w);
    for (int t = 0; t < r->n_disp; t++) {
        size_t i = (size_t)r->disp_sample[t] * N + r->disp_expert[t];
        double d = g->dgate ? g->dgate[t] : 0;
        if (lam > 0) d += lam * w[r->disp_expert[t]] / B;
        dz[i] += (float)d;
    }
    /* prob = R / Σ R on rows with a positive gate: dR_e += (dp_e − ⟨p, dp⟩) / Σ R */
    for (int b = 0; g->dprob && b < B; b++) {
        const float *z = r->logits + (size_t)b * N, *p = r->prob + (size_t)b * N, *dp = g->dprob + (size_t)b * N;
        double sum = 0, dot = 0;
        for (int e = 0; e < N; e++) sum += z[e] > 0 ? z[e] : 0;
        if (!(sum > 0)) continue; /* uniform, constant */
        for (int e = 0; e < N; e++) dot += (double)p[e] * dp[e];
        for (int e = 0; e < N; e++)
            if (z[e] > 0) dz[(size_t)b * N + e] += (float)((dp[e] - dot) / sum);
    }
    /* through the ReLU (dR is only non-zero where z > 0), then dlogits */
    for (size_t i = 0; i < bn; i++) {
        if (!(r->logits[i] > 0)) dz[i] = 0;
        if (g->dlogits) dz[i] += g->dlogits[i];
    }
    ml_aux_linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], NULL, g->dx);
    return 0;
}

static int re_event(void *self, const ml_router_event *ev, char *err) {
    remoe *s = self;
    (void)err;
    if (ev->kind == ML_EV_OPTIONS_CHANGED) {
        set_options(s, ev->opt);
        return 0;
    }
    if (ev->kind != ML_EV_AFTER_BACKWARD || s->train_B <= 0) return 0;
    /* sign(active − k) with active = pairs / B: compare pairs with k·B */
    double target = s->k * (double)s->train_B, pairs = (double)s->train_pairs;
    float *lam = &ev->state[S_LAMBDA][0];
    double v = *lam;
    if (pairs > target) v *= s->alpha;
    else if (pairs < target) v /= s->alpha;
    *lam = (float)(v < FLT_MIN ? FLT_MIN : v > LAMBDA_MAX ? LAMBDA_MAX : v);
    s->train_B = 0; /* one update per training forward */
    return 0;
}

static const ml_router_api api = {
    sizeof(ml_router_api), re_create, re_destroy, re_params, re_states, re_forward, re_backward, re_event,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "relu",
    "1.0",
    "ReMoE: gates ReLU(x W^T), every positive gate dispatched; adaptive L1 (lambda *= alpha^sign(active-k)) steers the active experts to k (Wang et al. 2025)",
    options,
    NUM_OPTS,
    &api,
};
