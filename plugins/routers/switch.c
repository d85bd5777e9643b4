/*
 * switch — Switch Transformer routing: top-1 with a per-expert capacity.
 *
 * Source: W. Fedus, B. Zoph, N. Shazeer, "Switch Transformers: Scaling to Trillion
 * Parameter Models with Simple and Efficient Sparsity", JMLR 2022 (arXiv 2101.03961, 2021),
 * section 2.1 "Simplifying Sparse Routing" and section 2.2 "Efficient Sparse Routing":
 *
 *   p(x) = softmax(x W^T + b)                  (router probabilities, eq. 1)
 *   e(x) = argmax_i p_i(x);  gate = p_e(x)(x)  (top-1, the output is scaled by the gate, eq. 2)
 *   capacity = floor(capacity_factor · B / N)  (expert capacity, eq. 3, tokens per batch = B)
 *
 * Samples are assigned in batch order; once an expert holds `capacity` samples, later
 * samples that chose it overflow: they get no triple (their representation passes through
 * the residual connection, as in the paper) and count in n_dropped. The capacity is at
 * least 1 (moelab's guard: the formula gives 0 when B < N / capacity_factor), so a small
 * batch is never dropped completely. With eval_capacity = false evaluation runs without a
 * capacity limit.
 *
 * Router metric: overload = max_i demand_i / capacity, demand_i = the samples whose argmax
 * is expert i (dropped ones included), in every forward that applies a capacity. 1/capacity
 * · B/N at perfect balance (1/capacity_factor when B/N divides), B/capacity at collapse;
 * above 1 the busiest expert drops samples (docs/metrics.md).
 *
 * logits = x W^T + b, prob = p. Backward: dgate adds into dprob at the chosen entry, then
 * the softmax Jacobian gives dlogits, then W, b and x.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { OPT_CF, OPT_EVAL_CAP, NUM_OPTS };

static const ml_option options[NUM_OPTS] = {
    [OPT_CF] = {"capacity_factor", ML_OPT_FLOAT, "1.25", 0, 100, NULL,
                "expert capacity = floor(capacity_factor * B / N), at least 1; in (0, 100]"},
    [OPT_EVAL_CAP] = {"eval_capacity", ML_OPT_BOOL, "true", 1, 0, NULL,
                      "apply the capacity in evaluation too (else evaluation drops nothing)"},
};

enum { P_W, P_B, NUM_PARAMS };

typedef struct sw {
    const ml_host *host;
    int D, eval_capacity;
    double cf;
    ml_aux_buf count; /* (2N) forward: samples held by each expert, then samples that chose it */
    ml_aux_buf dz;    /* (B, N) backward: dL/dlogits */
    ml_aux_buf dp;    /* (B, N) backward: dL/dprob including the gates */
} sw;

/* --------------------------------------------------------------------- api */

static void *sw_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->dim < 1 || init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX, "switch: needs dim >= 1 and num_experts >= 1, got %d and %d",
                 init->dim, init->num_experts);
        return NULL;
    }
    if (!(o[OPT_CF].f > 0 && o[OPT_CF].f <= 100)) {
        snprintf(err, ML_ERR_MAX, "switch: option capacity_factor must be in (0, 100], got %g",
                 o[OPT_CF].f);
        return NULL;
    }
    sw *s = ml_aux_new(host, sizeof *s, "switch", err);
    if (!s) return NULL;
    s->host = host;
    s->D = init->dim;
    s->cf = o[OPT_CF].f;
    s->eval_capacity = (int)o[OPT_EVAL_CAP].i;
    return s;
}

static void sw_destroy(void *self) {
    sw *s = self;
    if (!s) return;
    const ml_host *h = s->host;
    ml_aux_buf_free(h, &s->count);
    ml_aux_buf_free(h, &s->dz);
    ml_aux_buf_free(h, &s->dp);
    h->free(s);
}

static int sw_params(void *self, ml_tensor_decl *out, int cap) {
    sw *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = ml_aux_linear_decl("w", s->D, s->D);
    out[P_B] = ml_aux_linear_decl("b", 1, s->D);
    return NUM_PARAMS;
}

static int sw_states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int sw_forward(void *self, ml_route *r, char *err) {
    sw *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (D != s->D || N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX, "switch: forward with B=%d D=%d N=%d, router was made for D=%d",
                 B, D, N, s->D);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    int *count = ml_aux_buf_get(h, &s->count, 2 * (size_t)N * sizeof(int)), *demand = count + N;
    if (!count) {
        snprintf(err, ML_ERR_MAX, "switch: out of memory for N=%d", N);
        return -1;
    }
    memset(count, 0, 2 * (size_t)N * sizeof(int));
    int capacity = B;
    if (r->training || s->eval_capacity) {
        double c = floor(s->cf * B / N);
        capacity = c < 1 ? 1 : c > B ? B : (int)c;
    }
    ml_aux_linear(h, r->x, r->param[P_W], r->param[P_B], B, D, N, r->logits);
    ml_aux_softmax(r->logits, r->prob, B, N);
    for (int b = 0; b < B; b++) {
        int e = ml_aux_argmax(r->logits + (size_t)b * N, N);
        demand[e]++;
        if (count[e] >= capacity) {
            r->n_dropped++;
            continue;
        }
        count[e]++;
        ml_aux_dispatch(r, b, e, r->prob[(size_t)b * N + e]);
    }
    if (r->training || s->eval_capacity) {
        int most = 0;
        for (int e = 0; e < N; e++) most = demand[e] > most ? demand[e] : most;
        r->metric(r->metric_ctx, "overload", (double)most / capacity);
    }
    return 0;
}

static int sw_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    sw *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = ml_aux_buf_get(h, &s->dz, bn * sizeof(float));
    float *dp = ml_aux_buf_get(h, &s->dp, bn * sizeof(float));
    if (!dz || !dp) {
        snprintf(err, ML_ERR_MAX, "switch: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    ml_aux_softmax_router_bwd(r, g, 0, dz, dp);
    ml_aux_linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], r->grad[P_B], g->dx);
    return 0;
}

static const ml_router_api api = {
    sizeof(ml_router_api), sw_create, sw_destroy, sw_params, sw_states,
    sw_forward, sw_backward, NULL,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "switch",
    "1.0",
    "Fedus et al. 2021 Switch Transformer: top-1, gate = prob, capacity overflow is dropped",
    options,
    NUM_OPTS,
    &api,
};
