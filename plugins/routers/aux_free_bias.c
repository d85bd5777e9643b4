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
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin.h"

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

/* A scratch buffer that only grows. */
typedef struct buf {
    void *p;
    size_t cap; /* bytes */
} buf;

typedef struct afb {
    const ml_host *host;
    int D, k, score;
    float rate;
    buf ls;     /* (N) forward: log affinities of one sample */
    buf sb;     /* (N) forward: affinity + bias of one sample */
    buf mark;   /* (N) top-k marks */
    buf dz;     /* (B, N) backward: dL/dlogits */
    buf rowsum; /* (B) backward scratch */
} afb;

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

/* log sigmoid(v) = −softplus(−v), without overflow. */
static float log_sigmoid(float v) { return v < 0 ? v - log1pf(expf(v)) : -log1pf(expf(-v)); }

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
    afb *s = host->alloc(sizeof *s);
    if (!s) {
        snprintf(err, ML_ERR_MAX, "aux_free_bias: out of memory");
        return NULL;
    }
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
    h->free(s->ls.p);
    h->free(s->sb.p);
    h->free(s->mark.p);
    h->free(s->dz.p);
    h->free(s->rowsum.p);
    h->free(s);
}

static int afb_params(void *self, ml_tensor_decl *out, int cap) {
    afb *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = (ml_tensor_decl){"w", 1, 0, s->D, ML_INIT_UNIFORM_FANIN, 0, s->D, 0};
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
    float *ls = need(h, &s->ls, (size_t)N * sizeof(float));
    float *sb = need(h, &s->sb, (size_t)N * sizeof(float));
    uint8_t *mark = need(h, &s->mark, (size_t)N);
    if (!ls || !sb || !mark) {
        snprintf(err, ML_ERR_MAX, "aux_free_bias: out of memory for N=%d", N);
        return -1;
    }
    const float *bias = r->state[S_BIAS];
    linear_fwd(h, r->x, r->param[P_W], B, D, N, r->logits);
    int k = s->k < N ? s->k : N;
    int sel[64];
    float lsel[64], gs[64];
    for (int b = 0; b < B; b++) {
        const float *zb = r->logits + (size_t)b * N;
        float *pb = r->prob + (size_t)b * N;
        if (s->score == SCORE_SIGMOID) {
            for (int n = 0; n < N; n++) {
                ls[n] = log_sigmoid(zb[n]);
                sb[n] = sigmoid(zb[n]) + bias[n];
            }
            softmax_row(ls, pb, N); /* s / Σ s */
        } else {
            /* log softmax differs from z by a constant, which both softmaxes below ignore */
            memcpy(ls, zb, (size_t)N * sizeof(float));
            softmax_row(zb, pb, N);
            for (int n = 0; n < N; n++) sb[n] = pb[n] + bias[n];
        }
        topk_row(sb, N, k, sel, mark);
        for (int j = 0; j < k; j++) lsel[j] = ls[sel[j]];
        softmax_row(lsel, gs, k); /* s_i / Σ_selected s_j */
        for (int j = 0; j < k; j++) {
            r->disp_sample[r->n_disp] = b;
            r->disp_expert[r->n_disp] = sel[j];
            r->disp_gate[r->n_disp] = gs[j];
            r->n_disp++;
        }
    }
    return 0;
}

static int afb_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    afb *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = need(h, &s->dz, bn * sizeof(float));
    float *rowsum = need(h, &s->rowsum, (size_t)B * sizeof(float));
    if (!dz || !rowsum) {
        snprintf(err, ML_ERR_MAX, "aux_free_bias: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    /* First dL/d(log s) into dz, both prob and gates being softmaxes of log s. */
    memset(dz, 0, bn * sizeof(float));
    if (g->dprob)
        for (int b = 0; b < B; b++) {
            const float *p = r->prob + (size_t)b * N, *dp = g->dprob + (size_t)b * N;
            float *d = dz + (size_t)b * N;
            double dot = 0;
            for (int n = 0; n < N; n++) dot += (double)p[n] * dp[n];
            for (int n = 0; n < N; n++) d[n] += p[n] * (dp[n] - (float)dot);
        }
    if (g->dgate) {
        memset(rowsum, 0, (size_t)B * sizeof(float));
        for (int t = 0; t < r->n_disp; t++)
            rowsum[r->disp_sample[t]] += r->disp_gate[t] * g->dgate[t];
        for (int t = 0; t < r->n_disp; t++) {
            int b = r->disp_sample[t];
            dz[(size_t)b * N + r->disp_expert[t]] += r->disp_gate[t] * (g->dgate[t] - rowsum[b]);
        }
    }
    /* Then to z: d log sigmoid(z)/dz = sigmoid(−z); for softmax scores log s = z + const. */
    if (s->score == SCORE_SIGMOID)
        for (size_t i = 0; i < bn; i++) dz[i] *= sigmoid(-r->logits[i]);
    if (g->dlogits)
        for (size_t i = 0; i < bn; i++) dz[i] += g->dlogits[i];
    linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], g->dx);
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
