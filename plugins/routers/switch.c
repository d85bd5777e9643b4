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
 * logits = x W^T + b, prob = p. Backward: dgate adds into dprob at the chosen entry, then
 * the softmax Jacobian gives dlogits, then W, b and x.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin.h"

enum { OPT_CF, OPT_EVAL_CAP, NUM_OPTS };

static const ml_option options[NUM_OPTS] = {
    [OPT_CF] = {"capacity_factor", ML_OPT_FLOAT, "1.25", 0, 100, NULL,
                "expert capacity = floor(capacity_factor * B / N), at least 1; in (0, 100]"},
    [OPT_EVAL_CAP] = {"eval_capacity", ML_OPT_BOOL, "true", 1, 0, NULL,
                      "apply the capacity in evaluation too (else evaluation drops nothing)"},
};

enum { P_W, P_B, NUM_PARAMS };

/* A scratch buffer that only grows. */
typedef struct buf {
    void *p;
    size_t cap; /* bytes */
} buf;

typedef struct sw {
    const ml_host *host;
    int D, eval_capacity;
    double cf;
    buf count; /* (N) forward: samples held by each expert */
    buf dz;    /* (B, N) backward: dL/dlogits */
    buf dp;    /* (B, N) backward: dL/dprob including the gates */
} sw;

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

/* Index of the largest z; ties go to the lower index. */
static int argmax_row(const float *z, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (z[i] > z[best]) best = i;
    return best;
}

/* z (B, N) = x (B, D) · w (N, D)^T + b (N) */
static void linear_fwd(const ml_host *h, const float *x, const float *w, const float *bias,
                       int B, int D, int N, float *z) {
    h->sgemm(0, 1, B, N, D, 1.0f, x, D, w, D, 0.0f, z, N);
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) z[(size_t)b * N + n] += bias[n];
}

/* gw (N, D) += dz^T x;  gb (N) += Σ_b dz;  dx (B, D) += dz w */
static void linear_bwd(const ml_host *h, const float *x, const float *w, const float *dz,
                       int B, int D, int N, float *gw, float *gb, float *dx) {
    if (gw) h->sgemm(1, 0, N, D, B, 1.0f, dz, N, x, D, 1.0f, gw, D);
    if (gb)
        for (int b = 0; b < B; b++)
            for (int n = 0; n < N; n++) gb[n] += dz[(size_t)b * N + n];
    if (dx) h->sgemm(0, 0, B, D, N, 1.0f, dz, N, w, D, 1.0f, dx, D);
}

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
    sw *s = host->alloc(sizeof *s);
    if (!s) {
        snprintf(err, ML_ERR_MAX, "switch: out of memory");
        return NULL;
    }
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
    h->free(s->count.p);
    h->free(s->dz.p);
    h->free(s->dp.p);
    h->free(s);
}

static int sw_params(void *self, ml_tensor_decl *out, int cap) {
    sw *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = (ml_tensor_decl){"w", 1, 0, s->D, ML_INIT_UNIFORM_FANIN, 0, s->D, 0};
    out[P_B] = (ml_tensor_decl){"b", 1, 0, 1, ML_INIT_UNIFORM_FANIN, 0, s->D, 0};
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
    int *count = need(h, &s->count, (size_t)N * sizeof(int));
    if (!count) {
        snprintf(err, ML_ERR_MAX, "switch: out of memory for N=%d", N);
        return -1;
    }
    memset(count, 0, (size_t)N * sizeof(int));
    int capacity = B;
    if (r->training || s->eval_capacity) {
        double c = floor(s->cf * B / N);
        capacity = c < 1 ? 1 : c > B ? B : (int)c;
    }
    linear_fwd(h, r->x, r->param[P_W], r->param[P_B], B, D, N, r->logits);
    for (int b = 0; b < B; b++) {
        const float *zb = r->logits + (size_t)b * N;
        float *pb = r->prob + (size_t)b * N;
        softmax_row(zb, pb, N);
        int e = argmax_row(zb, N);
        if (count[e] >= capacity) {
            r->n_dropped++;
            continue;
        }
        count[e]++;
        r->disp_sample[r->n_disp] = b;
        r->disp_expert[r->n_disp] = e;
        r->disp_gate[r->n_disp] = pb[e];
        r->n_disp++;
    }
    return 0;
}

static int sw_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    sw *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = need(h, &s->dz, bn * sizeof(float));
    float *dp = need(h, &s->dp, bn * sizeof(float));
    if (!dz || !dp) {
        snprintf(err, ML_ERR_MAX, "switch: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    if (g->dlogits) memcpy(dz, g->dlogits, bn * sizeof(float));
    else memset(dz, 0, bn * sizeof(float));
    if (g->dprob) memcpy(dp, g->dprob, bn * sizeof(float));
    else memset(dp, 0, bn * sizeof(float));
    if (g->dgate)
        for (int t = 0; t < r->n_disp; t++)
            dp[(size_t)r->disp_sample[t] * N + r->disp_expert[t]] += g->dgate[t];
    for (int b = 0; b < B; b++) {
        const float *p = r->prob + (size_t)b * N, *dpb = dp + (size_t)b * N;
        float *d = dz + (size_t)b * N;
        double dot = 0;
        for (int n = 0; n < N; n++) dot += (double)p[n] * dpb[n];
        for (int n = 0; n < N; n++) d[n] += p[n] * (dpb[n] - (float)dot);
    }
    linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], r->grad[P_B], g->dx);
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
