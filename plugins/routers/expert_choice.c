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
 * The paper's gating matrix has no bias, so neither does this router. A sample can be
 * chosen by several experts (gates need not sum to 1) or by none: such a sample gets no
 * triple and is counted in n_dropped (it passes through the residual). Ties in S[:, e]
 * go to the lower sample index. Every expert gets exactly C samples, so the load is
 * perfectly balanced by construction; the selection depends on the whole batch, so
 * evaluation with other batch sizes routes a sample differently (the paper's caveat about
 * auto-regressive decoding).
 *
 * logits = x W^T, prob = S. Triples come grouped by expert, samples ascending.
 * Backward: dgate adds into dS at the chosen entries, then the softmax Jacobian per sample.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin.h"

enum { OPT_CF, OPT_K, NUM_OPTS };

static const ml_option options[NUM_OPTS] = {
    [OPT_CF] = {"capacity_factor", ML_OPT_FLOAT, "1.0", 0, 100, NULL,
                "C = round(capacity_factor * B * k / N) samples per expert; in (0, 100]"},
    [OPT_K] = {"k", ML_OPT_INT, "2", 1, 64, NULL,
               "average number of experts per sample in the capacity formula"},
};

enum { P_W, NUM_PARAMS };

/* A scratch buffer that only grows. */
typedef struct buf {
    void *p;
    size_t cap; /* bytes */
} buf;

typedef struct ec {
    const ml_host *host;
    int D, k;
    double cf;
    buf idx, tmp; /* (B) forward: sample order by score */
    buf chosen;   /* (B) forward: chosen by the current expert */
    buf covered;  /* (B) forward: chosen by any expert */
    buf dz;       /* (B, N) backward: dL/dlogits */
    buf dp;       /* (B, N) backward: dL/dS */
} ec;

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
    ec *s = host->alloc(sizeof *s);
    if (!s) {
        snprintf(err, ML_ERR_MAX, "expert_choice: out of memory");
        return NULL;
    }
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
    h->free(s->idx.p);
    h->free(s->tmp.p);
    h->free(s->chosen.p);
    h->free(s->covered.p);
    h->free(s->dz.p);
    h->free(s->dp.p);
    h->free(s);
}

static int ec_params(void *self, ml_tensor_decl *out, int cap) {
    ec *s = self;
    if (cap < NUM_PARAMS) return -1;
    out[P_W] = (ml_tensor_decl){"w", 1, 0, s->D, ML_INIT_UNIFORM_FANIN, 0, s->D, 0};
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
    int *idx = need(h, &s->idx, (size_t)B * sizeof(int));
    int *tmp = need(h, &s->tmp, (size_t)B * sizeof(int));
    uint8_t *chosen = need(h, &s->chosen, (size_t)B);
    uint8_t *covered = need(h, &s->covered, (size_t)B);
    if (!idx || !tmp || !chosen || !covered) {
        snprintf(err, ML_ERR_MAX, "expert_choice: out of memory for B=%d", B);
        return -1;
    }
    double c = floor(s->cf * B * s->k / N + 0.5);
    int C = c < 1 ? 1 : c > B ? B : (int)c;
    float *S = r->prob;
    linear_fwd(h, r->x, r->param[P_W], B, D, N, r->logits);
    for (int b = 0; b < B; b++) softmax_row(r->logits + (size_t)b * N, S + (size_t)b * N, N);
    memset(covered, 0, (size_t)B);
    for (int e = 0; e < N; e++) {
        for (int b = 0; b < B; b++) idx[b] = b;
        sort_desc(idx, tmp, B, S + e, N);
        memset(chosen, 0, (size_t)B);
        for (int j = 0; j < C; j++) chosen[idx[j]] = 1;
        for (int b = 0; b < B; b++) {
            if (!chosen[b]) continue;
            covered[b] = 1;
            r->disp_sample[r->n_disp] = b;
            r->disp_expert[r->n_disp] = e;
            r->disp_gate[r->n_disp] = S[(size_t)b * N + e];
            r->n_disp++;
        }
    }
    for (int b = 0; b < B; b++) r->n_dropped += !covered[b];
    return 0;
}

static int ec_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    ec *s = self;
    const ml_host *h = s->host;
    int B = r->B, D = r->D, N = r->N;
    if (B == 0) return 0;
    size_t bn = (size_t)B * (size_t)N;
    float *dz = need(h, &s->dz, bn * sizeof(float));
    float *dp = need(h, &s->dp, bn * sizeof(float));
    if (!dz || !dp) {
        snprintf(err, ML_ERR_MAX, "expert_choice: out of memory in backward for B=%d N=%d", B, N);
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
    linear_bwd(h, r->x, r->param[P_W], dz, B, D, N, r->grad[P_W], g->dx);
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
