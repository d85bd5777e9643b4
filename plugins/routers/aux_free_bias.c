/*
 * aux_free_bias — DeepSeek-V3 auxiliary-loss-free load balancing.
 *
 * Source: DeepSeek-AI, "DeepSeek-V3 Technical Report", arXiv 2412.19437 (2024),
 * section 2.1.2 "DeepSeekMoE with Auxiliary-Loss-Free Load Balancing", eq. 12-16:
 *
 *   s_i = sigmoid(x W^T)_i                                (affinity, eq. 15; option score)
 *   selected = TopK over i of (s_i + b_i), k experts      (eq. 16: the bias only selects)
 *   gate_i = s_i / Σ_{j selected} s_j  for i selected     (eq. 13: the gates use s, not s + b)
 *   after each training step: b_i += γ · sign(mean_j load_j − load_i)     (γ = update_rate)
 *
 * The bias b is a state tensor ("bias", reported to routing.csv), changed only by the
 * ML_EV_AFTER_BACKWARD event from the step's per-expert dispatch counts: overloaded
 * experts lose γ, underloaded ones gain γ. It never enters the gates or the gradient.
 * The paper's affinity has no bias term, so W is the only parameter. With score = softmax
 * the affinities are softmax(x W^T) (DeepSeek-V2's choice) and the same rule applies.
 *
 * prob = s normalised over all experts (s / Σ_j s_j; for softmax scores s itself), so
 * rows sum to 1 as the ABI requires; logits = x W^T. For numerical safety both the gates
 * and prob are computed as softmaxes of log s (= log sigmoid(z)): identical values, and no
 * 0/0 when every affinity underflows.
 *
 * Growth: a new expert's bias starts at the mean of the existing biases, neither favoured
 * nor penalised relative to the average expert (DeepSeek-V3 does not grow; this is ours).
 */
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { OPT_K, OPT_RATE, OPT_SCORE, NUM_OPTS };
enum { SCORE_SIGMOID, SCORE_SOFTMAX };

static const ml_option options[NUM_OPTS] = {
    [OPT_K] = {"k", ML_OPT_INT, "2", 1, 64, NULL,
               "experts per sample (clipped to the number of experts)"},
    [OPT_RATE] = {"update_rate", ML_OPT_FLOAT, "0.001", 0, 1, NULL,
                  "bias update speed gamma: b_i += gamma * sign(mean load - load_i) per step"},
    [OPT_SCORE] = {"score", ML_OPT_ENUM, "sigmoid", 1, 0, "sigmoid|softmax",
                   "affinity function: sigmoid (DeepSeek-V3) or softmax"},
};

enum { P_W, NUM_PARAMS };
enum { S_BIAS, NUM_STATES };

typedef struct afb {
    const ml_host *host;
    int D, k, score;
    float rate;
    ml_aux_buf ls; /* (N) forward: log affinities of one sample */
    ml_aux_buf sb; /* (N) forward: affinity + bias of one sample */
    ml_aux_buf dz; /* (B, N) backward: dL/dlogits */
    ml_aux_buf dp; /* (B, N) backward: dL/dprob */
} afb;

/* --------------------------------------------------------------------- api */

static void *afb_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->dim < 1 || init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX,
                 "aux_free_bias: needs dim >= 1 and num_experts >= 1, got %d and %d", init->dim,
                 init->num_experts);
        return NULL;
    }
    if (o[OPT_K].i < 1 || o[OPT_K].i > 64) {
        snprintf(err, ML_ERR_MAX, "aux_free_bias: option k must be in [1, 64], got %lld",
                 (long long)o[OPT_K].i);
        return NULL;
    }
    if (o[OPT_SCORE].i != SCORE_SIGMOID && o[OPT_SCORE].i != SCORE_SOFTMAX) {
        snprintf(err, ML_ERR_MAX, "aux_free_bias: option score must be sigmoid|softmax");
        return NULL;
    }
    afb *s = ml_aux_new(host, sizeof *s, "aux_free_bias", err);
    if (!s) return NULL;
    s->host = host;
    s->D = init->dim;
    s->k = (int)o[OPT_K].i;
    s->rate = (float)o[OPT_RATE].f;
    s->score = (int)o[OPT_SCORE].i;
    return s;
}

static void afb_destroy(void *self) {
    afb *s = self;
    if (!s) return;
    const ml_host *h = s->host;
    ml_aux_buf_free(h, &s->ls);
    ml_aux_buf_free(h, &s->sb);
    ml_aux_buf_free(h, &s->dz);
    ml_aux_buf_free(h, &s->dp);
    h->free(s);
}

static int afb_params(void *self, ml_tensor_decl *out, int cap) {
    afb *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = ml_aux_linear_decl("w", s->D, s->D);
    return NUM_PARAMS;
}

static int afb_states(void *self, ml_tensor_decl *out, int cap) {
    (void)self;
    if (cap < NUM_STATES) return -1;
    out[S_BIAS] = (ml_tensor_decl){"bias", 1, 0, 1, ML_INIT_ZEROS, 0, 0, 1};
    return NUM_STATES;
}

static int afb_forward(void *self, ml_route *r, char *err) {
    afb *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (D != s->D || N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX,
                 "aux_free_bias: forward with B=%d D=%d N=%d, router was made for D=%d", B, D, N,
                 s->D);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    float *ls = ml_aux_buf_get(h, &s->ls, (size_t)N * sizeof(float));
    float *sb = ml_aux_buf_get(h, &s->sb, (size_t)N * sizeof(float));
    if (!ls || !sb) {
        snprintf(err, ML_ERR_MAX, "aux_free_bias: out of memory for N=%d", N);
        return -1;
    }
    const float *bias = r->state[S_BIAS];
    ml_aux_linear(h, r->x, r->param[P_W], NULL, B, D, N, r->logits);
    int k = s->k < N ? s->k : N;
    int32_t sel[64];
    float gs[64];
    for (int b = 0; b < B; b++) {
        const float *zb = r->logits + (size_t)b * N;
        float *pb = r->prob + (size_t)b * N;
        if (s->score == SCORE_SIGMOID) {
            for (int n = 0; n < N; n++) {
                ls[n] = ml_aux_log_sigmoid(zb[n]);
                sb[n] = ml_aux_sigmoid(zb[n]) + bias[n];
            }
            ml_aux_softmax(ls, pb, 1, N); /* s / Σ s */
        } else {
            /* log softmax differs from z by a constant, which both softmaxes below ignore */
            memcpy(ls, zb, (size_t)N * sizeof(float));
            ml_aux_softmax(zb, pb, 1, N);
            for (int n = 0; n < N; n++) sb[n] = pb[n] + bias[n];
        }
        ml_aux_topk(sb, N, k, sel);
        ml_aux_topk_gates(ls, sel, k, gs); /* s_i / Σ_selected s_j */
        for (int j = 0; j < k; j++) ml_aux_dispatch(r, b, sel[j], gs[j]);
    }
    return 0;
}

static int afb_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    afb *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N, k = s->k < N ? s->k : N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = ml_aux_buf_get(h, &s->dz, bn * sizeof(float));
    float *dp = ml_aux_buf_get(h, &s->dp, bn * sizeof(float));
    if (!dz || !dp) {
        snprintf(err, ML_ERR_MAX, "aux_free_bias: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    /* First dL/d(log s) into dz: prob and the gates are softmaxes of log s (the gates over
       the k selected, k triples per sample); dlogits joins after the chain rule below. */
    ml_route_grad gs = *g;
    gs.dlogits = NULL;
    ml_aux_softmax_router_bwd(r, &gs, k, dz, dp);
    /* Then to z: d log sigmoid(z)/dz = sigmoid(−z); for softmax scores log s = z + const. */
    if (s->score == SCORE_SIGMOID)
        for (size_t i = 0; i < bn; i++) dz[i] *= ml_aux_sigmoid(-r->logits[i]);
    if (g->dlogits)
        for (size_t i = 0; i < bn; i++) dz[i] += g->dlogits[i];
    ml_aux_linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], NULL, g->dx);
    return 0;
}

static int afb_event(void *self, const ml_router_event *ev, char *err) {
    afb *s = self;
    int N = ev->num_experts;
    float *bias = ev->state[S_BIAS];
    if (ev->kind == ML_EV_EXPERTS_ADDED) {
        int old = ev->old_num_experts;
        if (old < 1 || old >= N) return 0;
        double mean = 0;
        for (int n = 0; n < old; n++) mean += bias[n];
        mean /= old;
        for (int n = old; n < N; n++) bias[n] = (float)mean;
        return 0;
    }
    if (ev->kind != ML_EV_AFTER_BACKWARD) return 0;
    if (!ev->load) {
        snprintf(err, ML_ERR_MAX, "aux_free_bias: AFTER_BACKWARD event without load");
        return -1;
    }
    double mean = 0;
    for (int n = 0; n < N; n++) mean += ev->load[n];
    mean /= N;
    for (int n = 0; n < N; n++) {
        double d = mean - ev->load[n];
        bias[n] += d > 0 ? s->rate : d < 0 ? -s->rate : 0.0f;
    }
    return 0;
}

static const ml_router_api api = {
    sizeof(ml_router_api), afb_create, afb_destroy, afb_params, afb_states,
    afb_forward, afb_backward, afb_event,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "aux_free_bias",
    "1.0",
    "DeepSeek-V3 auxiliary-loss-free balancing: top-k of sigmoid score + bias, bias nudged toward under-loaded experts",
    options,
    NUM_OPTS,
    &api,
};
