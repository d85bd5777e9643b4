/* moe.c — the MoE layer: router plugin dispatch, gathered per-expert GEMMs, combine. */
#include "model/moe.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"

static int declare_expert(ml_moe *m, int e) {
    char name[ML_TENSOR_NAME_MAX];
    int D = m->D, H = m->H;
    int s_w1[2] = {H, D}, s_b1[1] = {H}, s_w2[2] = {D, H}, s_b2[1] = {D};
    snprintf(name, sizeof name, "moe%d.expert%d.w1", m->layer + 1, e);
    if ((m->hw1[e] = ml_params_declare(m->P, name, 2, s_w1, ML_INIT_UNIFORM_FANIN, 0, D)) < 0) return ML_ERR;
    snprintf(name, sizeof name, "moe%d.expert%d.b1", m->layer + 1, e);
    if ((m->hb1[e] = ml_params_declare(m->P, name, 1, s_b1, ML_INIT_UNIFORM_FANIN, 0, D)) < 0) return ML_ERR;
    snprintf(name, sizeof name, "moe%d.expert%d.w2", m->layer + 1, e);
    if ((m->hw2[e] = ml_params_declare(m->P, name, 2, s_w2, ML_INIT_UNIFORM_FANIN, 0, H)) < 0) return ML_ERR;
    snprintf(name, sizeof name, "moe%d.expert%d.b2", m->layer + 1, e);
    if ((m->hb2[e] = ml_params_declare(m->P, name, 1, s_b2, ML_INIT_UNIFORM_FANIN, 0, H)) < 0) return ML_ERR;
    return ML_OK;
}

ml_moe *ml_moe_new(int layer, int D, int H, int N, const ml_plugin *router, const ml_optval *opt,
                   ml_params *P, ml_params *S, uint64_t seed) {
    ml_moe *m = ml_calloc(1, sizeof *m);
    if (!m) return NULL;
    m->layer = layer;
    m->D = D;
    m->H = H;
    m->N = N;
    m->P = P;
    m->S = S;
    m->hw1 = ml_calloc((size_t)N, sizeof(int));
    m->hb1 = ml_calloc((size_t)N, sizeof(int));
    m->hw2 = ml_calloc((size_t)N, sizeof(int));
    m->hb2 = ml_calloc((size_t)N, sizeof(int));
    if (!m->hw1 || !m->hb1 || !m->hw2 || !m->hb2) goto fail;
    /* the router's tensors follow the experts' in the block, as they always have */
    for (int e = 0; e < N; e++)
        if (declare_expert(m, e)) goto fail;
    char prefix[32];
    snprintf(prefix, sizeof prefix, "moe%d.router.", layer + 1); /* layers from 1, as everywhere users see them */
    if (ml_router_inst_init(&m->router, router, opt, layer, D, N, seed + (uint64_t)layer,
                            seed ^ (0x5851f42d4c957f2dULL * (uint64_t)(layer + 1)), P, S, prefix))
        goto fail;
    return m;
fail:
    ml_moe_free(m);
    return NULL;
}

static void free_buffers(ml_moe *m) {
    void *bufs[] = {m->order, m->estart, m->cursor, m->xg, m->hg, m->yg, m->dlogits, m->dprob, m->dgate_loss,
                    m->dgate, m->dyg, m->dhg, m->dxg, m->grad_mag, m->load};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    m->xg = m->hg = m->yg = m->dlogits = m->dprob = m->dgate_loss = NULL;
    m->dgate = m->dyg = m->dhg = m->dxg = m->grad_mag = m->load = NULL;
    m->order = m->estart = m->cursor = NULL;
    m->cap_B = m->cap_N = 0;
}

void ml_moe_free(ml_moe *m) {
    if (!m) return;
    ml_router_inst_release(&m->router);
    free_buffers(m);
    free(m->hw1);
    free(m->hb1);
    free(m->hw2);
    free(m->hb2);
    free(m);
}

static int reserve(ml_moe *m, int B) {
    if (B <= m->cap_B && m->N <= m->cap_N) return ML_OK;
    if (B < m->cap_B) B = m->cap_B;
    free_buffers(m);
    size_t BN = (size_t)B * m->N, K = BN;
    m->dlogits = ml_alloc_floats(BN);
    m->dprob = ml_alloc_floats(BN);
    m->order = ml_calloc(K, sizeof(int32_t));
    m->dgate = ml_alloc_floats(K);
    m->dgate_loss = ml_alloc_floats(K);
    m->estart = ml_calloc((size_t)m->N + 1, sizeof(int32_t));
    m->cursor = ml_calloc((size_t)m->N, sizeof(int32_t));
    m->xg = ml_alloc_floats(K * m->D);
    m->yg = ml_alloc_floats(K * m->D);
    m->dyg = ml_alloc_floats(K * m->D);
    m->dxg = ml_alloc_floats(K * m->D);
    m->hg = ml_alloc_floats(K * m->H);
    m->dhg = ml_alloc_floats(K * m->H);
    m->grad_mag = ml_alloc_floats((size_t)m->N);
    m->load = ml_alloc_floats((size_t)m->N);
    if (!m->dlogits || !m->dprob || !m->order || !m->dgate || !m->dgate_loss || !m->estart || !m->cursor ||
        !m->xg || !m->yg || !m->dyg || !m->dxg || !m->hg || !m->dhg || !m->grad_mag || !m->load) {
        free_buffers(m);
        return ml_errorf("moe layer %d: out of memory for a batch of %d with %d experts", m->layer + 1, B, m->N);
    }
    m->cap_B = B;
    m->cap_N = m->N;
    return ML_OK;
}

int ml_moe_forward(ml_moe *m, const float *z, float *y, int B, int training,
                   const int32_t *sample_id, const int32_t *label, int num_classes) {
    m->B = 0; /* nothing of a failed forward is kept */
    /* the ABI counts dispatch triples in an int32 (ml_route.n_disp), at most B*N of them */
    if ((int64_t)B * m->N > INT32_MAX)
        return ml_errorf("moe layer %d: batch of %d samples x %d experts = %lld routing slots, more than "
                         "2^31-1 (lower train.batch_size or the number of experts)",
                         m->layer + 1, B, m->N, (long long)B * m->N);
    if (reserve(m, B)) return ML_ERR;
    const int D = m->D, H = m->H, N = m->N;
    if (ml_router_inst_forward(&m->router, z, B, training, sample_id)) return ML_ERR;
    const ml_router_inst *ri = &m->router;
    const int K = ri->n_disp;
    const int32_t *ds = ri->disp_sample, *de = ri->disp_expert;
    const float *dg = ri->disp_gate;
    m->B = B;
    m->x = z;
    m->training = training;
    m->label = label;
    m->num_classes = num_classes;

    /* counting sort of the triples by expert (the router host counted them): each expert's
       rows become one contiguous GEMM */
    m->estart[0] = 0;
    for (int e = 0; e < N; e++) m->estart[e + 1] = m->estart[e] + ri->per_expert[e];
    memcpy(m->cursor, m->estart, (size_t)N * sizeof(int32_t));
    for (int t = 0; t < K; t++) m->order[m->cursor[de[t]]++] = t;
    for (int s = 0; s < K; s++) memcpy(m->xg + (size_t)s * D, z + (size_t)ds[m->order[s]] * D, (size_t)D * sizeof(float));
    for (int e = 0; e < N; e++) {
        int r0 = m->estart[e], n = m->estart[e + 1] - r0;
        if (!n) continue;
        float *hg = m->hg + (size_t)r0 * H, *yg = m->yg + (size_t)r0 * D;
        ml_linear_forward(hg, m->xg + (size_t)r0 * D, ml_params_data(m->P, m->hw1[e]), ml_params_data(m->P, m->hb1[e]), n, D, H);
        ml_relu_forward(hg, hg, (size_t)n * H);
        ml_linear_forward(yg, hg, ml_params_data(m->P, m->hw2[e]), ml_params_data(m->P, m->hb2[e]), n, H, D);
    }
    for (int b = 0; b < B; b++) {
        float *yb = y + (size_t)b * D;
        if (ri->hits[b]) memset(yb, 0, (size_t)D * sizeof(float));
        else memcpy(yb, z + (size_t)b * D, (size_t)D * sizeof(float));
    }
    for (int s = 0; s < K; s++) {
        int t = m->order[s], b = ds[t];
        float g = dg[t];
        const float *zb = z + (size_t)b * D, *ys = m->yg + (size_t)s * D;
        float *yb = y + (size_t)b * D;
        for (int d = 0; d < D; d++) yb[d] += g * (zb[d] + ys[d]);
    }
    memset(m->dlogits, 0, (size_t)B * N * sizeof(float));
    memset(m->dprob, 0, (size_t)B * N * sizeof(float));
    memset(m->dgate_loss, 0, (size_t)(K > 0 ? K : 1) * sizeof(float));
    return ML_OK;
}

void ml_moe_record(const ml_moe *m, ml_routing_record *r) {
    ml_router_inst_record(&m->router, r);
    if (!m->B) r->B = r->n_disp = 0;
    r->label = m->label;
    r->num_classes = m->num_classes;
}

static float sum_abs(const float *g, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabsf(g[i]);
    return (float)s;
}

int ml_moe_backward(ml_moe *m, const float *dy, float *dz) {
    if (!m->B) return ml_errorf("moe layer %d: backward without a successful forward", m->layer + 1);
    const ml_router_inst *ri = &m->router;
    const int D = m->D, H = m->H, N = m->N, B = m->B, K = ri->n_disp;
    const int32_t *ds = ri->disp_sample;
    const float *dg = ri->disp_gate;
    const float *z = m->x;
    for (int s = 0; s < K; s++) {
        int t = m->order[s], b = ds[t];
        float g = dg[t];
        const float *dyb = dy + (size_t)b * D, *zb = z + (size_t)b * D, *ys = m->yg + (size_t)s * D;
        float *dys = m->dyg + (size_t)s * D;
        double dgate = 0;
        for (int d = 0; d < D; d++) {
            dgate += (double)dyb[d] * (zb[d] + ys[d]);
            dys[d] = g * dyb[d];
        }
        m->dgate[t] = (float)dgate + m->dgate_loss[t];
    }
    for (int e = 0; e < N; e++) {
        int r0 = m->estart[e], n = m->estart[e + 1] - r0;
        if (!n) continue;
        const float *hg = m->hg + (size_t)r0 * H, *xg = m->xg + (size_t)r0 * D;
        float *dys = m->dyg + (size_t)r0 * D, *dhg = m->dhg + (size_t)r0 * H, *dxg = m->dxg + (size_t)r0 * D;
        memset(dhg, 0, (size_t)n * H * sizeof(float));
        memset(dxg, 0, (size_t)n * D * sizeof(float));
        ml_linear_backward(dhg, ml_params_grad(m->P, m->hw2[e]), ml_params_grad(m->P, m->hb2[e]), dys, hg,
                           ml_params_data(m->P, m->hw2[e]), n, H, D);
        for (size_t i = 0; i < (size_t)n * H; i++)
            if (hg[i] <= 0) dhg[i] = 0;
        ml_linear_backward(dxg, ml_params_grad(m->P, m->hw1[e]), ml_params_grad(m->P, m->hb1[e]), dhg, xg,
                           ml_params_data(m->P, m->hw1[e]), n, D, H);
    }
    for (int b = 0; b < B; b++)
        if (!ri->hits[b]) {
            const float *dyb = dy + (size_t)b * D;
            float *dzb = dz + (size_t)b * D;
            for (int d = 0; d < D; d++) dzb[d] += dyb[d];
        }
    for (int s = 0; s < K; s++) {
        int t = m->order[s], b = ds[t];
        float g = dg[t];
        const float *dyb = dy + (size_t)b * D, *dxs = m->dxg + (size_t)s * D;
        float *dzb = dz + (size_t)b * D;
        for (int d = 0; d < D; d++) dzb[d] += g * dyb[d] + dxs[d];
    }
    if (ml_router_inst_backward(&m->router, m->dgate, m->dlogits, m->dprob, dz)) return ML_ERR;
    if (!m->training) return ML_OK;

    /* the SRNN saturation signal: mean |dL/dtheta| over each expert's parameters */
    size_t per_expert = (size_t)2 * H * D + H + D;
    for (int e = 0; e < N; e++) {
        float s = sum_abs(ml_params_grad(m->P, m->hw1[e]), (size_t)H * D) +
                  sum_abs(ml_params_grad(m->P, m->hb1[e]), (size_t)H) +
                  sum_abs(ml_params_grad(m->P, m->hw2[e]), (size_t)D * H) +
                  sum_abs(ml_params_grad(m->P, m->hb2[e]), (size_t)D);
        m->grad_mag[e] = s / (float)per_expert;
        m->load[e] = (float)(m->estart[e + 1] - m->estart[e]);
    }
    return ml_router_inst_after_backward(&m->router, m->grad_mag, m->load);
}

int ml_moe_grow_declare(ml_moe *m, int n_new) {
    if (n_new <= 0) return ML_OK;
    int N = m->N + n_new;
    int *h[4] = {m->hw1, m->hb1, m->hw2, m->hb2};
    for (int i = 0; i < 4; i++) {
        int *p = realloc(h[i], (size_t)N * sizeof(int));
        if (!p) return ml_errorf("moe layer %d: out of memory adding %d experts", m->layer + 1, n_new);
        h[i] = p;
        if (i == 0) m->hw1 = p;
        else if (i == 1) m->hb1 = p;
        else if (i == 2) m->hw2 = p;
        else m->hb2 = p;
    }
    int old = m->N;
    m->N = N;
    m->B = 0;
    free_buffers(m); /* re-sized at the next forward */
    for (int e = old; e < N; e++)
        if (declare_expert(m, e)) return ML_ERR;
    /* per-expert router tensors grow along their leading dimension */
    return ml_router_inst_grow_declare(&m->router, n_new);
}

int ml_moe_grow_finish(ml_moe *m, int old_n) { return ml_router_inst_grow_finish(&m->router, old_n); }

int ml_moe_epoch_end(ml_moe *m, int epoch) { return ml_router_inst_epoch_end(&m->router, epoch); }

int ml_moe_reported_state(ml_moe *m, const char **names, const float **values, int cap) {
    return ml_router_inst_reported_state(&m->router, names, values, cap);
}
