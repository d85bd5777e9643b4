/*
 * expert_choice — Expert Choice routing: each expert picks its top-C samples.
 *
 * Source: Y. Zhou, T. Lei, H. Liu, N. Du, Y. Huang, V. Zhao, A. Dai, Z. Chen, Q. Le,
 * J. Laudon, "Mixture-of-Experts with Expert Choice Routing", NeurIPS 2022, section 3
 * (method), "Expert Choice Routing":
 *
 *   S = softmax(x W^T)               (B, N), softmax over experts per sample (the paper's S = Softmax(X·Wg))
 *   G, I = TopK(S^T, C)              each expert e takes the C samples with the largest S[:, e]
 *   C = round(capacity_factor · B · k / N), clipped to [1, B]     (the paper's k = n·c/e)
 *   gate of (b, e) = S[b, e] for every chosen pair
 *
 * The paper's per-expert capacity k = n·c/e (n tokens, e experts, c the capacity factor:
 * how many experts a token uses on average) is C here with n = B, e = N and
 * c = capacity_factor · k: the option capacity_factor is the paper's c only at k = 1;
 * otherwise it is c / k, the capacity relative to top-k routing (defaults 1.0 and k = 2
 * give the paper's c = 2, its EC-CF2).
 *
 * The paper's gating matrix has no bias, so neither does this router. A sample can be
 * chosen by several experts (gates need not sum to 1) or by none: such a sample gets no
 * triple and is counted in n_dropped (it passes through the residual). Ties in S[:, e]
 * go to the lower sample index. Every expert gets exactly C samples, so the load is
 * perfectly balanced by construction; the selection depends on the whole batch, so
 * evaluation with other batch sizes routes a sample differently (the paper's caveat about
 * auto-regressive decoding).
 *
 * Router metric: overload = max_i demand_i / C, demand_i = the samples whose largest S is
 * expert i (their first choice, as token-choice routing would send them). Expert choice
 * never overloads an expert (each takes exactly C); this says how far the samples'
 * preferences are from the balance it imposes: 1/(capacity_factor·k) when first choices are
 * balanced (B/N each), B/C when every sample prefers one expert (docs/metrics.md).
 *
 * logits = x W^T, prob = S. Triples come grouped by expert, samples ascending.
 * Backward: dgate adds into dS at the chosen entries, then the softmax Jacobian per sample.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { OPT_CF, OPT_K, NUM_OPTS };

static const ml_option options[NUM_OPTS] = {
    [OPT_CF] = {"capacity_factor", ML_OPT_FLOAT, "1.0", 0, 100, NULL,
                "C = round(capacity_factor * B * k / N) samples per expert; in (0, 100]"},
    [OPT_K] = {"k", ML_OPT_INT, "2", 1, 64, NULL,
               "average number of experts per sample in the capacity formula"},
};

enum { P_W, NUM_PARAMS };

typedef struct ec {
    const ml_host *host;
    int D, k;
    double cf;
    ml_aux_buf idx, tmp; /* (B) forward: sample order by score */
    ml_aux_buf chosen;   /* (B) forward: chosen by the current expert */
    ml_aux_buf covered;  /* (B) forward: chosen by any expert */
    ml_aux_buf demand;   /* (N) forward: samples whose first choice is each expert */
    ml_aux_buf dz;       /* (B, N) backward: dL/dlogits */
    ml_aux_buf dp;       /* (B, N) backward: dL/dS */
} ec;

/* ------------------------------------------------------------------ helpers */

/* Sorts idx[0..n) by key[idx * stride] descending; stable, so ties keep idx order. */
static void sort_desc(int *idx, int *tmp, int n, const float *key, int stride) {
    for (int w = 1; w < n; w *= 2) {
        for (int lo = 0; lo < n; lo += 2 * w) {
            int mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int i = lo, j = mid, o = lo;
            while (i < mid && j < hi)
                tmp[o++] = key[(size_t)idx[j] * stride] > key[(size_t)idx[i] * stride] ? idx[j++]
                                                                                       : idx[i++];
            while (i < mid) tmp[o++] = idx[i++];
            while (j < hi) tmp[o++] = idx[j++];
        }
        memcpy(idx, tmp, (size_t)n * sizeof *idx);
    }
}

/* --------------------------------------------------------------------- api */

static void *ec_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->dim < 1 || init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX,
                 "expert_choice: needs dim >= 1 and num_experts >= 1, got %d and %d", init->dim,
                 init->num_experts);
        return NULL;
    }
    if (!(o[OPT_CF].f > 0 && o[OPT_CF].f <= 100)) {
        snprintf(err, ML_ERR_MAX,
                 "expert_choice: option capacity_factor must be in (0, 100], got %g", o[OPT_CF].f);
        return NULL;
    }
    if (o[OPT_K].i < 1 || o[OPT_K].i > 64) {
        snprintf(err, ML_ERR_MAX, "expert_choice: option k must be in [1, 64], got %lld",
                 (long long)o[OPT_K].i);
        return NULL;
    }
    ec *s = ml_aux_new(host, sizeof *s, "expert_choice", err);
    if (!s) return NULL;
    s->host = host;
    s->D = init->dim;
    s->cf = o[OPT_CF].f;
    s->k = (int)o[OPT_K].i;
    return s;
}

static void ec_destroy(void *self) {
    ec *s = self;
    if (!s) return;
    const ml_host *h = s->host;
    ml_aux_buf_free(h, &s->idx);
    ml_aux_buf_free(h, &s->tmp);
    ml_aux_buf_free(h, &s->chosen);
    ml_aux_buf_free(h, &s->covered);
    ml_aux_buf_free(h, &s->demand);
    ml_aux_buf_free(h, &s->dz);
    ml_aux_buf_free(h, &s->dp);
    h->free(s);
}

static int ec_params(void *self, ml_tensor_decl *out, int cap) {
    ec *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = ml_aux_linear_decl("w", s->D, s->D);
    return NUM_PARAMS;
}

static int ec_states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int ec_forward(void *self, ml_route *r, char *err) {
    ec *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (D != s->D || N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX,
                 "expert_choice: forward with B=%d D=%d N=%d, router was made for D=%d", B, D, N,
                 s->D);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    int *idx = ml_aux_buf_get(h, &s->idx, (size_t)B * sizeof(int));
    int *tmp = ml_aux_buf_get(h, &s->tmp, (size_t)B * sizeof(int));
    uint8_t *chosen = ml_aux_buf_get(h, &s->chosen, (size_t)B);
    uint8_t *covered = ml_aux_buf_get(h, &s->covered, (size_t)B);
    if (!idx || !tmp || !chosen || !covered) {
        snprintf(err, ML_ERR_MAX, "expert_choice: out of memory for B=%d", B);
        return -1;
    }
    double c = floor(s->cf * B * s->k / N + 0.5);
    int C = c < 1 ? 1 : c > B ? B : (int)c;
    float *S = r->prob;
    ml_aux_linear(h, r->x, r->param[P_W], NULL, B, D, N, r->logits);
    ml_aux_softmax(r->logits, S, B, N);
    memset(covered, 0, (size_t)B);
    for (int e = 0; e < N; e++) {
        for (int b = 0; b < B; b++) idx[b] = b;
        sort_desc(idx, tmp, B, S + e, N);
        memset(chosen, 0, (size_t)B);
        for (int j = 0; j < C; j++) chosen[idx[j]] = 1;
        for (int b = 0; b < B; b++) {
            if (!chosen[b]) continue;
            covered[b] = 1;
            ml_aux_dispatch(r, b, e, S[(size_t)b * N + e]);
        }
    }
    for (int b = 0; b < B; b++) r->n_dropped += !covered[b];
    int *demand = ml_aux_buf_get(h, &s->demand, (size_t)N * sizeof(int)), most = 0;
    if (!demand) {
        snprintf(err, ML_ERR_MAX, "expert_choice: out of memory for N=%d", N);
        return -1;
    }
    memset(demand, 0, (size_t)N * sizeof(int));
    for (int b = 0; b < B; b++) {
        int e = ml_aux_argmax(S + (size_t)b * N, N);
        most = ++demand[e] > most ? demand[e] : most;
    }
    r->metric(r->metric_ctx, "overload", (double)most / C);
    return 0;
}

static int ec_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    ec *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = ml_aux_buf_get(h, &s->dz, bn * sizeof(float));
    float *dp = ml_aux_buf_get(h, &s->dp, bn * sizeof(float));
    if (!dz || !dp) {
        snprintf(err, ML_ERR_MAX, "expert_choice: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    ml_aux_softmax_router_bwd(r, g, 0, dz, dp);
    ml_aux_linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], NULL, g->dx);
    return 0;
}

static const ml_router_api api = {
    sizeof(ml_router_api), ec_create, ec_destroy, ec_params, ec_states,
    ec_forward, ec_backward, NULL,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "expert_choice",
    "1.0",
    "Zhou et al. 2022 expert choice: each expert takes its top-C samples by softmax score",
    options,
    NUM_OPTS,
    &api,
};
