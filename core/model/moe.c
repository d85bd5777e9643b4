/* moe.c — the MoE layer: router plugin dispatch, gathered per-expert GEMMs, combine. */
#include "model/moe.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/crash.h"
#include "nn/ops.h"
#include "plugin/pluginhost.h"

static int declare_expert(ml_moe *m, int e) {
    char name[ML_TENSOR_NAME_MAX];
    int D = m->D, H = m->H;
    int s_w1[2] = {H, D}, s_b1[1] = {H}, s_w2[2] = {D, H}, s_b2[1] = {D};
    snprintf(name, sizeof name, "moe%d.expert%d.w1", m->layer, e);
    if ((m->hw1[e] = ml_params_declare(m->P, name, 2, s_w1, ML_INIT_UNIFORM_FANIN, 0, D)) < 0) return ML_ERR;
    snprintf(name, sizeof name, "moe%d.expert%d.b1", m->layer, e);
    if ((m->hb1[e] = ml_params_declare(m->P, name, 1, s_b1, ML_INIT_UNIFORM_FANIN, 0, D)) < 0) return ML_ERR;
    snprintf(name, sizeof name, "moe%d.expert%d.w2", m->layer, e);
    if ((m->hw2[e] = ml_params_declare(m->P, name, 2, s_w2, ML_INIT_UNIFORM_FANIN, 0, H)) < 0) return ML_ERR;
    snprintf(name, sizeof name, "moe%d.expert%d.b2", m->layer, e);
    if ((m->hb2[e] = ml_params_declare(m->P, name, 1, s_b2, ML_INIT_UNIFORM_FANIN, 0, H)) < 0) return ML_ERR;
    return ML_OK;
}

static int declare_router_tensors(ml_moe *m, ml_params *blk, int state, int *handles, int *count) {
    ml_tensor_decl decl[ML_MOE_MAX_RTENSORS];
    memset(decl, 0, sizeof decl);
    ml_crash_enter(m->file, state ? "states" : "params");
    int n = state ? m->api->states(m->router, decl, ML_MOE_MAX_RTENSORS)
                  : m->api->params(m->router, decl, ML_MOE_MAX_RTENSORS);
    ml_crash_leave();
    if (n < 0 || n > ML_MOE_MAX_RTENSORS)
        return ml_errorf("router '%s': %s() returned %d declarations, expected 0..%d", m->plugin->name,
                         state ? "states" : "params", n, ML_MOE_MAX_RTENSORS);
    for (int i = 0; i < n; i++) {
        const ml_tensor_decl *d = &decl[i];
        if (!d->name || d->cols < 1 || (!d->per_expert && d->rows < 1))
            return ml_errorf("router '%s': tensor declaration %d is invalid (name, rows or cols)", m->plugin->name, i);
        char name[ML_TENSOR_NAME_MAX];
        snprintf(name, sizeof name, "moe%d.router.%s", m->layer, d->name);
        int shape[2] = {d->per_expert ? m->N : d->rows, d->cols};
        int h = ml_params_declare(blk, name, 2, shape, d->init, d->init_value, d->fan_in);
        if (h < 0) return ml_error_prefix("router '%s'", m->plugin->name);
        handles[i] = h;
        if (state) {
            m->rs_decl[i] = *d;
            snprintf(m->rs_name[i], sizeof m->rs_name[i], "%s", d->name);
            m->rs_decl[i].name = m->rs_name[i];
        }
    }
    *count = n;
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
    m->plugin = router;
    m->file = ml_plugin_file(router);
    if (!m->file) m->file = router->name; /* a descriptor not loaded from a file (tests) */
    m->api = router->api;
    m->P = P;
    m->S = S;
    ml_rng_seed(&m->rng, seed ^ (0x5851f42d4c957f2dULL * (uint64_t)(layer + 1)));
    m->hw1 = ml_calloc((size_t)N, sizeof(int));
    m->hb1 = ml_calloc((size_t)N, sizeof(int));
    m->hw2 = ml_calloc((size_t)N, sizeof(int));
    m->hb2 = ml_calloc((size_t)N, sizeof(int));
    if (!m->hw1 || !m->hb1 || !m->hw2 || !m->hb2) goto fail;
    ml_router_init init = {sizeof init, layer, D, N, opt, seed + (uint64_t)layer};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(m->file, "create");
    m->router = m->api->create(ml_host_table(), &init, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (!m->router) {
        ml_errorf("router '%s' (%s): create failed: %s", router->name, m->file, err);
        goto fail;
    }
    for (int e = 0; e < N; e++)
        if (declare_expert(m, e)) goto fail;
    if (declare_router_tensors(m, P, 0, m->rp, &m->n_rp)) goto fail;
    if (declare_router_tensors(m, S, 1, m->rs, &m->n_rs)) goto fail;
    return m;
fail:
    ml_moe_free(m);
    return NULL;
}

static void free_buffers(ml_moe *m) {
    void *bufs[] = {m->logits, m->prob, m->ds, m->de, m->dg, m->order, m->estart, m->cursor, m->hits, m->pairs,
                    m->xg, m->hg, m->yg, m->dlogits, m->dprob, m->dgate, m->dyg, m->dhg,
                    m->dxg, m->grad_mag, m->load};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    m->logits = m->prob = m->dg = m->xg = m->hg = m->yg = NULL;
    m->dlogits = m->dprob = m->dgate = m->dyg = m->dhg = m->dxg = m->grad_mag = m->load = NULL;
    m->ds = m->de = m->order = m->estart = m->cursor = m->hits = NULL;
    m->pairs = NULL;
    m->cap_B = m->cap_N = 0;
}

void ml_moe_free(ml_moe *m) {
    if (!m) return;
    if (m->router) {
        ml_crash_enter(m->file, "destroy");
        m->api->destroy(m->router);
        ml_crash_leave();
    }
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
    /* the ABI counts dispatch triples in an int (ml_route.n_disp), at most B*N of them */
    if ((int64_t)B * m->N > INT32_MAX)
        return ml_errorf("moe layer %d: batch of %d samples x %d experts = %lld routing slots, more than "
                         "2^31-1 (lower train.batch_size or the number of experts)",
                         m->layer + 1, B, m->N, (long long)B * m->N);
    free_buffers(m);
    size_t BN = (size_t)B * m->N, K = BN;
    m->logits = ml_alloc_floats(BN);
    m->prob = ml_alloc_floats(BN);
    m->dlogits = ml_alloc_floats(BN);
    m->dprob = ml_alloc_floats(BN);
    m->ds = ml_calloc(K, sizeof(int32_t));
    m->de = ml_calloc(K, sizeof(int32_t));
    m->order = ml_calloc(K, sizeof(int32_t));
    m->dg = ml_alloc_floats(K);
    m->dgate = ml_alloc_floats(K);
    m->estart = ml_calloc((size_t)m->N + 1, sizeof(int32_t));
    m->cursor = ml_calloc((size_t)m->N, sizeof(int32_t));
    m->hits = ml_calloc((size_t)B, sizeof(int32_t));
    m->pairs = ml_calloc((BN + 63) / 64, sizeof(uint64_t));
    m->xg = ml_alloc_floats(K * m->D);
    m->yg = ml_alloc_floats(K * m->D);
    m->dyg = ml_alloc_floats(K * m->D);
    m->dxg = ml_alloc_floats(K * m->D);
    m->hg = ml_alloc_floats(K * m->H);
    m->dhg = ml_alloc_floats(K * m->H);
    m->grad_mag = ml_alloc_floats((size_t)m->N);
    m->load = ml_alloc_floats((size_t)m->N);
    if (!m->logits || !m->prob || !m->dlogits || !m->dprob || !m->ds || !m->de || !m->order ||
        !m->dg || !m->dgate || !m->estart || !m->cursor || !m->hits || !m->pairs || !m->xg || !m->yg || !m->dyg ||
        !m->dxg || !m->hg || !m->dhg || !m->grad_mag || !m->load) {
        free_buffers(m);
        return ml_errorf("moe layer %d: out of memory for a batch of %d with %d experts", m->layer, B, m->N);
    }
    m->cap_B = B;
    m->cap_N = m->N;
    return ML_OK;
}

static void bind_router(ml_moe *m) {
    for (int i = 0; i < m->n_rp; i++) {
        m->rp_ptr[i] = ml_params_data(m->P, m->rp[i]);
        m->rg_ptr[i] = ml_params_grad(m->P, m->rp[i]);
    }
    for (int i = 0; i < m->n_rs; i++) m->rs_ptr[i] = ml_params_data(m->S, m->rs[i]);
}

static void fill_route(ml_moe *m, ml_route *r, const float *z, int B, const int32_t *sample_id) {
    memset(r, 0, sizeof *r);
    r->size = sizeof *r;
    r->B = B;
    r->D = m->D;
    r->N = m->N;
    r->training = m->training;
    r->x = z;
    r->sample_id = sample_id;
    r->param = m->rp_ptr;
    r->grad = m->rg_ptr;
    r->state = m->rs_ptr;
    r->rng = &m->rng;
    r->step = m->step;
    r->logits = m->logits;
    r->prob = m->prob;
    r->disp_sample = m->ds;
    r->disp_expert = m->de;
    r->disp_gate = m->dg;
    r->n_disp = m->n_disp;
    r->n_dropped = m->n_dropped;
}

/* "router 'x' (file): forward: <what>"; returns ML_ERR. */
static int route_error(const ml_moe *m, const char *fmt, ...) ML_PRINTF(2, 3);
static int route_error(const ml_moe *m, const char *fmt, ...) {
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return ml_errorf("router '%s' (%s): forward: %s", m->plugin->name, m->file, what);
}

#define PROB_TOL 1e-6f /* a probability may stray this far outside [0, 1] by rounding */
#define ROW_TOL 1e-3   /* |sum of a prob row - 1|, as plugin-test allows */

/*
 * Everything the host reads of a forward, checked in one pass before any of it is used:
 * n_disp and n_dropped in range, every triple inside (B, N) with a finite gate >= 0 and no
 * (sample, expert) pair twice (a bitmap, not a search), prob finite in [0, 1] with rows
 * summing to 1, logits finite. Also counts triples per expert (estart) and per sample
 * (hits) for the counting sort that follows.
 */
static int check_route(ml_moe *m, const ml_route *r, int B) {
    const int N = m->N, K = r->n_disp;
    if (K < 0 || K > B * N) return route_error(m, "n_disp = %d, expected 0..%d (B*N)", K, B * N);
    if (r->n_dropped < 0 || r->n_dropped > B)
        return route_error(m, "n_dropped = %d, expected 0..%d (B)", r->n_dropped, B);
    memset(m->estart, 0, (size_t)(N + 1) * sizeof(int32_t));
    memset(m->hits, 0, (size_t)B * sizeof(int32_t));
    memset(m->pairs, 0, ((size_t)B * N + 63) / 64 * sizeof(uint64_t));
    for (int t = 0; t < K; t++) {
        int b = m->ds[t], e = m->de[t];
        float g = m->dg[t];
        int why = 0; /* 1 sample, 2 expert, 3 gate, 4 duplicate */
        if (b < 0 || b >= B) why = 1;
        else if (e < 0 || e >= N) why = 2;
        else if (!(g >= 0) || !isfinite(g)) why = 3;
        else {
            size_t bit = (size_t)b * N + e;
            uint64_t mask = (uint64_t)1 << (bit & 63);
            if (m->pairs[bit >> 6] & mask) why = 4;
            m->pairs[bit >> 6] |= mask;
        }
        if (why) {
            char bad[96];
            if (why == 1) snprintf(bad, sizeof bad, "sample must be in 0..%d", B - 1);
            else if (why == 2) snprintf(bad, sizeof bad, "expert must be in 0..%d", N - 1);
            else if (why == 3) snprintf(bad, sizeof bad, "gate must be finite and >= 0");
            else snprintf(bad, sizeof bad, "the pair (sample %d, expert %d) appears twice", b, e);
            return route_error(m, "dispatch[%d] = (sample %d, expert %d, gate %g): %s", t, b, e, (double)g, bad);
        }
        m->estart[e + 1]++;
        m->hits[b]++;
    }
    for (int b = 0; b < B; b++) {
        const float *p = m->prob + (size_t)b * N, *z = m->logits + (size_t)b * N;
        double s = 0;
        for (int e = 0; e < N; e++) {
            if (!(p[e] >= -PROB_TOL && p[e] <= 1 + PROB_TOL))
                return route_error(m, "prob[%d, %d] = %g: must be finite and in [0, 1]", b, e, (double)p[e]);
            if (!isfinite(z[e])) return route_error(m, "logits[%d, %d] = %g: must be finite", b, e, (double)z[e]);
            s += p[e];
        }
        if (fabs(s - 1) > ROW_TOL) return route_error(m, "prob row %d sums to %.6g, expected 1", b, s);
    }
    return ML_OK;
}

int ml_moe_forward(ml_moe *m, const float *z, float *y, int B, int training,
                   const int32_t *sample_id, const int32_t *label, int num_classes) {
    if (reserve(m, B)) return ML_ERR;
    const int D = m->D, H = m->H, N = m->N;
    m->B = B;
    m->x = z;
    m->training = training;
    m->label = label;
    m->sample_id = sample_id;
    m->num_classes = num_classes;
    bind_router(m);
    ml_route r;
    fill_route(m, &r, z, B, sample_id);
    char err[ML_ERR_MAX] = "";
    m->n_disp = m->n_dropped = 0; /* nothing of a failed forward is kept */
    ml_crash_enter(m->file, "forward");
    int frc = m->api->forward(m->router, &r, err);
    ml_crash_leave();
    if (frc) {
        ml_err_seal(err);
        return ml_errorf("router '%s' (%s): forward (layer %d): %s", m->plugin->name, m->file, m->layer, err);
    }
    if (check_route(m, &r, B)) return ML_ERR;
    const int K = r.n_disp;
    m->n_disp = K;
    m->n_dropped = r.n_dropped;

    /* counting sort of the triples by expert (check_route counted them): each expert's rows
       become one contiguous GEMM */
    for (int e = 0; e < N; e++) m->estart[e + 1] += m->estart[e];
    memcpy(m->cursor, m->estart, (size_t)N * sizeof(int32_t));
    for (int t = 0; t < K; t++) m->order[m->cursor[m->de[t]]++] = t;
    for (int s = 0; s < K; s++) memcpy(m->xg + (size_t)s * D, z + (size_t)m->ds[m->order[s]] * D, (size_t)D * sizeof(float));
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
        if (m->hits[b]) memset(yb, 0, (size_t)D * sizeof(float));
        else memcpy(yb, z + (size_t)b * D, (size_t)D * sizeof(float));
    }
    for (int s = 0; s < K; s++) {
        int t = m->order[s], b = m->ds[t];
        float g = m->dg[t];
        const float *zb = z + (size_t)b * D, *ys = m->yg + (size_t)s * D;
        float *yb = y + (size_t)b * D;
        for (int d = 0; d < D; d++) yb[d] += g * (zb[d] + ys[d]);
    }
    memset(m->dlogits, 0, (size_t)B * N * sizeof(float));
    memset(m->dprob, 0, (size_t)B * N * sizeof(float));
    return ML_OK;
}

void ml_moe_record(const ml_moe *m, ml_routing_record *r) {
    memset(r, 0, sizeof *r);
    r->size = sizeof *r;
    r->B = m->B;
    r->N = m->N;
    r->logits = m->logits;
    r->prob = m->prob;
    r->disp_sample = m->ds;
    r->disp_expert = m->de;
    r->disp_gate = m->dg;
    r->n_disp = m->n_disp;
    r->label = m->label;
    r->num_classes = m->num_classes;
}

static float sum_abs(const float *g, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabsf(g[i]);
    return (float)s;
}

int ml_moe_backward(ml_moe *m, const float *dy, float *dz) {
    const int D = m->D, H = m->H, N = m->N, B = m->B, K = m->n_disp;
    const float *z = m->x;
    for (int s = 0; s < K; s++) {
        int t = m->order[s], b = m->ds[t];
        float g = m->dg[t];
        const float *dyb = dy + (size_t)b * D, *zb = z + (size_t)b * D, *ys = m->yg + (size_t)s * D;
        float *dys = m->dyg + (size_t)s * D;
        double dgate = 0;
        for (int d = 0; d < D; d++) {
            dgate += (double)dyb[d] * (zb[d] + ys[d]);
            dys[d] = g * dyb[d];
        }
        m->dgate[t] = (float)dgate;
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
        if (!m->hits[b]) {
            const float *dyb = dy + (size_t)b * D;
            float *dzb = dz + (size_t)b * D;
            for (int d = 0; d < D; d++) dzb[d] += dyb[d];
        }
    for (int s = 0; s < K; s++) {
        int t = m->order[s], b = m->ds[t];
        float g = m->dg[t];
        const float *dyb = dy + (size_t)b * D, *dxs = m->dxg + (size_t)s * D;
        float *dzb = dz + (size_t)b * D;
        for (int d = 0; d < D; d++) dzb[d] += g * dyb[d] + dxs[d];
    }
    bind_router(m);
    ml_route r;
    fill_route(m, &r, z, B, m->sample_id);
    ml_route_grad g = {sizeof g, m->dgate, m->dlogits, m->dprob, dz};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(m->file, "backward");
    int brc = m->api->backward(m->router, &r, &g, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (brc) return ml_errorf("router '%s' backward (layer %d): %s", m->plugin->name, m->layer, err);
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
    m->step++;
    if (m->api->event) {
        ml_router_event ev = {sizeof ev, ML_EV_AFTER_BACKWARD, N, N, m->grad_mag, m->load,
                              m->rp_ptr, m->rs_ptr, m->epoch, m->step};
        ml_crash_enter(m->file, "event");
        int erc = m->api->event(m->router, &ev, err);
        ml_crash_leave();
        ml_err_seal(err);
        if (erc) return ml_errorf("router '%s' after-backward event (layer %d): %s", m->plugin->name, m->layer, err);
    }
    return ML_OK;
}

int ml_moe_grow_declare(ml_moe *m, int n_new) {
    if (n_new <= 0) return ML_OK;
    int N = m->N + n_new;
    int *h[4] = {m->hw1, m->hb1, m->hw2, m->hb2};
    for (int i = 0; i < 4; i++) {
        int *p = realloc(h[i], (size_t)N * sizeof(int));
        if (!p) return ml_errorf("moe layer %d: out of memory adding %d experts", m->layer, n_new);
        h[i] = p;
    }
    m->hw1 = h[0];
    m->hb1 = h[1];
    m->hw2 = h[2];
    m->hb2 = h[3];
    int old = m->N;
    m->N = N;
    for (int e = old; e < N; e++)
        if (declare_expert(m, e)) return ML_ERR;
    /* per-expert router tensors grow along their leading dimension */
    ml_tensor_decl decl[ML_MOE_MAX_RTENSORS];
    memset(decl, 0, sizeof decl);
    ml_crash_enter(m->file, "params");
    int n = m->api->params(m->router, decl, ML_MOE_MAX_RTENSORS);
    ml_crash_leave();
    for (int i = 0; i < n && i < m->n_rp; i++)
        if (decl[i].per_expert && ml_params_grow(m->P, m->rp[i], N)) return ML_ERR;
    for (int i = 0; i < m->n_rs; i++)
        if (m->rs_decl[i].per_expert && ml_params_grow(m->S, m->rs[i], N)) return ML_ERR;
    return ML_OK;
}

int ml_moe_grow_finish(ml_moe *m, int old_n) {
    free_buffers(m); /* re-sized at the next forward */
    if (!m->api->event) return ML_OK;
    bind_router(m);
    char err[ML_ERR_MAX] = "";
    ml_router_event ev = {sizeof ev, ML_EV_EXPERTS_ADDED, m->N, old_n, NULL, NULL,
                          m->rp_ptr, m->rs_ptr, m->epoch, m->step};
    ml_crash_enter(m->file, "event");
    int erc = m->api->event(m->router, &ev, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (erc) return ml_errorf("router '%s' experts-added event (layer %d): %s", m->plugin->name, m->layer, err);
    return ML_OK;
}

int ml_moe_epoch_end(ml_moe *m, int epoch) {
    m->epoch = epoch;
    if (!m->api->event) return ML_OK;
    bind_router(m);
    char err[ML_ERR_MAX] = "";
    ml_router_event ev = {sizeof ev, ML_EV_EPOCH_END, m->N, m->N, NULL, NULL, m->rp_ptr, m->rs_ptr, epoch, m->step};
    ml_crash_enter(m->file, "event");
    int erc = m->api->event(m->router, &ev, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (erc) return ml_errorf("router '%s' epoch-end event (layer %d): %s", m->plugin->name, m->layer, err);
    return ML_OK;
}

int ml_moe_reported_state(ml_moe *m, const char **names, const float **values, int cap) {
    int n = 0;
    for (int i = 0; i < m->n_rs && n < cap; i++)
        if (m->rs_decl[i].report && m->rs_decl[i].per_expert && m->rs_decl[i].cols == 1) {
            names[n] = m->rs_name[i];
            values[n] = ml_params_data(m->S, m->rs[i]);
            n++;
        }
    return n;
}
