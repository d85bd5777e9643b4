/* moe.c — the MoE layer: router plugin dispatch, gathered per-expert GEMMs, combine. */
#include "model/moe.h"

#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/ops.h"

/* The gather, combine and their backward below move K x D floats per layer (the COD model's
   first layer: 4 MB per pass); serially, a second thread would idle through them. Each
   loop is over independent rows, and a combined row adds its slots in the same order
   whatever the thread count. */
#define MOE_PAR_FLOATS ((size_t)1 << 15)

/* Zeroes expert e's stale gradients (ml_tensor.grad_stale): ml_params_zero_grad_used leaves
   the experts' gradients to the layer. The MLP expert's backward overwrites them; other
   kinds' are zeroed just before their backward (in cache); a split batch's forward zeroes
   those of experts with rows on other processes only; an idle expert's stay stale. */
void ml_moe_zero_stale(const ml_moe *m, int e) {
    for (int i = 0; i < m->nt[e]; i++) {
        ml_tensor *t = &m->P->t[m->th[e][i]];
        if (!t->grad_stale) continue;
        ml_zero(ml_moe_grad(m, e, i), t->n);
        t->grad_stale = 0;
    }
}

/* ------------------------------------------------ the residual-MLP expert kind */

/* f(z) = W2·relu(W1·z + b1) + b2 with W1 (H, D), W2 (D, H): the SRNN seed's expert. */
typedef struct mlp_kind {
    int H, cap_K;
    float *hg, *dhg;                /* (K, H) */
} mlp_kind;

enum { MLP_W1, MLP_B1, MLP_W2, MLP_B2 };

static void *mlp_create(ml_moe *m, const void *cfg) {
    (void)m;
    mlp_kind *k = ml_calloc(1, sizeof *k);
    if (k) k->H = *(const int *)cfg;
    /* the first call's check of OpenBLAS's bits, here rather than inside the first step */
    ml_linear_backward_rows_max();
    return k;
}

static void mlp_free(void *st) {
    mlp_kind *k = st;
    if (!k) return;
    free(k->hg), free(k->dhg);
    free(k);
}

static int mlp_describe(void *st, const ml_moe *m, int e, int i, ml_expert_tensor *t) {
    const mlp_kind *k = st;
    (void)e;
    const int D = m->D, H = k->H;
    static const char *const names[4] = {"w1", "b1", "w2", "b2"};
    if (i < 0 || i > 3) return -1;
    snprintf(t->name, sizeof t->name, "%s", names[i]);
    t->ndim = i % 2 ? 1 : 2;
    t->shape[0] = i == MLP_W1 || i == MLP_B1 ? H : D;
    t->shape[1] = i == MLP_W1 ? D : i == MLP_W2 ? H : 0;
    t->init = ML_INIT_UNIFORM_FANIN; /* nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
    t->init_value = 0;
    t->fan_in = i < 2 ? D : H;
    /* the H hidden units: rows of w1 and b1, columns of w2 */
    t->units = i == MLP_B2 ? 0 : H;
    t->unit_axis = i == MLP_W2 ? 1 : 0;
    t->unit_offset = 0;
    return 0;
}

static int mlp_reserve(void *st, ml_moe *m, int K) {
    mlp_kind *k = st;
    (void)m;
    if (K <= k->cap_K && k->hg) return ML_OK;
    free(k->hg), free(k->dhg);
    k->hg = ml_alloc_floats((size_t)K * k->H);
    k->dhg = ml_alloc_floats((size_t)K * k->H);
    k->cap_K = k->hg && k->dhg ? K : 0;
    return k->cap_K ? ML_OK : ML_ERR;
}

static int mlp_forward(void *st, ml_moe *m, int e, int r0, int n, const float *xg, float *yg, int training) {
    mlp_kind *k = st;
    (void)training;
    const int D = m->D, H = k->H;
    float *hg = k->hg + (size_t)r0 * H;
    ml_linear_forward(hg, xg, ml_moe_param(m, e, MLP_W1), ml_moe_param(m, e, MLP_B1), n, D, H);
    ml_relu_forward(hg, hg, (size_t)n * H);
    ml_linear_forward(yg, hg, ml_moe_param(m, e, MLP_W2), ml_moe_param(m, e, MLP_B2), n, H, D);
    return ML_OK;
}

/*
 * With many experts each used one sees ~2 rows, and its backward is bound by memory: reading
 * W2 and W1 and writing their gradients, lines the caches no longer hold since the forward.
 * With few rows, ml_linear_backward_set_pf asks for the lines PF_AHEAD lines ahead of those
 * it reads and writes, on into the next expert this thread runs, so that memory works while
 * it computes (docs/PERFORMANCE.md, Many experts, fifth pass: the experts' backward about a
 * sixth faster at 256 experts). An expert's first PF_AHEAD lines are asked for at its start:
 * the thread's previous expert asked for them already (asking again for a line in cache or on
 * its way costs next to nothing), its first did not.
 */
enum { PF_AHEAD = 64 };

/* expert e's W2 and W1 (grad: their gradients), in the order the backward goes through them */
static void mlp_pf_expert(const ml_moe *m, int e, int grad, ml_pf *s) {
    const size_t bytes = sizeof(float) * (size_t)m->D * (size_t)((const mlp_kind *)m->kst)->H;
    ml_pf_add(s, grad ? ml_moe_grad(m, e, MLP_W2) : ml_moe_param(m, e, MLP_W2), bytes);
    ml_pf_add(s, grad ? ml_moe_grad(m, e, MLP_W1) : ml_moe_param(m, e, MLP_W1), bytes);
}

/* rd over expert e's weights then next's (-1: none), wr over their gradients, the first
   PF_AHEAD lines of each asked for */
static void mlp_pf_streams(const ml_moe *m, int e, int next, ml_pf *rd, ml_pf *wr) {
    ml_pf_init(rd, 0), ml_pf_init(wr, 1);
    mlp_pf_expert(m, e, 0, rd), mlp_pf_expert(m, e, 1, wr);
    if (next >= 0) mlp_pf_expert(m, next, 0, rd), mlp_pf_expert(m, next, 1, wr);
    ml_pf_advance(rd, PF_AHEAD), ml_pf_advance(wr, PF_AHEAD);
}

static int mlp_backward(void *st, ml_moe *m, int e, int r0, int n, const float *xg, const float *dyg, float *dxg,
                        int next, ml_expert_abs *sums) {
    mlp_kind *k = st;
    const int D = m->D, H = k->H;
    const float *hg = k->hg + (size_t)r0 * H;
    float *dhg = k->dhg + (size_t)r0 * H;
    /* the step's first backward of the expert (its gradients stale, left to the layer to
       zero) writes them instead of zeroing and accumulating: one pass over them, not two */
    int set = n > 0;
    for (int i = 0; i < 4; i++) set &= m->P->t[m->th[e][i]].grad_stale;
    if (!set) ml_moe_zero_stale(m, e);
    void (*lin)(float *, float *, float *, const float *, const float *, const float *, int, int, int) =
        set ? ml_linear_backward_set : ml_linear_backward;
    ml_pf rd, wr; /* with few rows: the streams over what this backward and the next one go through */
    const int pf = set && n <= ml_linear_backward_rows_max();
    if (pf) mlp_pf_streams(m, e, next, &rd, &wr);
    memset(dhg, 0, (size_t)n * H * sizeof(float));
    /* the row kernel sums |dW| as it writes dW (sums); BLAS leaves that to grad_mag */
    if (!pf)
        lin(dhg, ml_moe_grad(m, e, MLP_W2), ml_moe_grad(m, e, MLP_B2), dyg, hg, ml_moe_param(m, e, MLP_W2), n, H, D);
    else if (ml_linear_backward_set_pf(dhg, ml_moe_grad(m, e, MLP_W2), ml_moe_grad(m, e, MLP_B2), dyg, hg,
                                       ml_moe_param(m, e, MLP_W2), n, H, D, &rd, &wr, sums ? &sums->s[MLP_W2] : NULL))
        sums->known |= 1u << MLP_W2;
    for (size_t i = 0; i < (size_t)n * H; i++)
        if (hg[i] <= 0) dhg[i] = 0;
    if (!pf)
        lin(dxg, ml_moe_grad(m, e, MLP_W1), ml_moe_grad(m, e, MLP_B1), dhg, xg, ml_moe_param(m, e, MLP_W1), n, D, H);
    else if (ml_linear_backward_set_pf(dxg, ml_moe_grad(m, e, MLP_W1), ml_moe_grad(m, e, MLP_B1), dhg, xg,
                                       ml_moe_param(m, e, MLP_W1), n, D, H, &rd, &wr, sums ? &sums->s[MLP_W1] : NULL))
        sums->known |= 1u << MLP_W1;
    for (int i = 0; i < 4; i++) m->P->t[m->th[e][i]].grad_stale = 0;
    return ML_OK;
}

static double mlp_flops(void *st, const ml_moe *m, int e) {
    const mlp_kind *k = st;
    (void)e;
    return 6.0 * 2.0 * m->D * k->H; /* two linears: 2·MAC forward, twice that backward */
}

const ml_expert_kind ml_expert_mlp = {"mlp",       mlp_create,   mlp_free,  mlp_describe, mlp_reserve,
                                      mlp_forward, mlp_backward, mlp_flops, NULL,        1, 1};

/* ------------------------------------------------------ experts' tensors */

int ml_moe_expert_tensor(const ml_moe *m, int e, int i, ml_expert_tensor *t) {
    memset(t, 0, sizeof *t);
    return m->kind->describe(m->kst, m, e, i, t);
}

int ml_moe_expert_tensor_as(const ml_moe *m, int e, int v, int i, ml_expert_tensor *t) {
    if (v < 0 || e < 0 || e >= ML_MOE_MAX_EXPERTS) return ml_moe_expert_tensor(m, e, i, t);
    int own = m->var[e]; /* m->var is the layer's own array: describe reads it */
    m->var[e] = v;
    int rc = ml_moe_expert_tensor(m, e, i, t);
    m->var[e] = own;
    return rc;
}

static int default_variant(const ml_moe *m, int e) {
    return m->kind->default_variant ? m->kind->default_variant(m->kst, m, e) : 0;
}

int ml_moe_variant_ok(const ml_moe *m, int v) {
    if (v < 0) return 0;
    for (int e = 0; e < ML_MOE_MAX_EXPERTS; e++) /* kinds cycle through a short list: found early */
        if (default_variant(m, e) == v) return 1;
    return 0;
}

static int grow_handles(ml_moe *m, int n) {
    int (*th)[ML_EXPERT_MAX_TENSORS] = realloc(m->th, (size_t)n * sizeof *th);
    if (!th) return ml_errorf("out of memory for %d experts", n);
    m->th = th;
    int *nt = realloc(m->nt, (size_t)n * sizeof *nt);
    if (!nt) return ml_errorf("out of memory for %d experts", n);
    m->nt = nt;
    return ML_OK;
}

/* Declares expert e's tensors "moe<L>.expert<e>.<name>" in the parameter block. */
static int declare_expert(ml_moe *m, int e) {
    ml_expert_tensor t;
    int i = 0;
    for (; i < ML_EXPERT_MAX_TENSORS && ml_moe_expert_tensor(m, e, i, &t) == 0; i++) {
        char name[ML_TENSOR_NAME_MAX];
        snprintf(name, sizeof name, "moe%d.expert%d.%s", m->layer + 1, e, t.name);
        if ((m->th[e][i] = ml_params_declare(m->P, name, t.ndim, t.shape, t.init, t.init_value, t.fan_in)) < 0)
            return ML_ERR;
        m->P->t[m->th[e][i]].zero_later = 1; /* zeroed or overwritten by the step that writes it */
    }
    if (i == ML_EXPERT_MAX_TENSORS && ml_moe_expert_tensor(m, e, i, &t) == 0)
        return ml_errorf("moe layer %d: a '%s' expert has more than %d tensors", m->layer + 1, m->kind->name,
                         ML_EXPERT_MAX_TENSORS);
    m->nt[e] = i;
    return ML_OK;
}

/* sum |g[i]| in double, in 8 interleaved partial sums (element i in sum i mod 8) added in a
   fixed order: one vector of doubles per 8 elements, the same order on every machine.
   sum_abs_rest continues the partial sums acc from element i on and adds them up. */
static double sum_abs_rest(const float *g, size_t n, size_t i, double acc[8]) {
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += fabsf(g[i + l]);
    for (int l = 0; i < n; i++, l++) acc[l] += fabsf(g[i]);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* sum_abs of two spans at once, each the same bits as alone: the additions of one span wait on
   each other (8 chains of n/8 adds), two spans keep twice as many in flight */
static void sum_abs2(const float *g, size_t n, const float *h, size_t m, double *sg, double *sh) {
    double a[8] = {0}, b[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n && i + 8 <= m; i += 8)
        for (int l = 0; l < 8; l++) {
            a[l] += fabsf(g[i + l]);
            b[l] += fabsf(h[i + l]);
        }
    *sg = sum_abs_rest(g, n, i, a);
    *sh = sum_abs_rest(h, m, i, b);
}

/* 1 unless d is Inf or NaN (the exponent bits, as ml_span_finite) */
static int double_finite(double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return (u & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
}

/*
 * The SRNN saturation signal of expert e: the mean |dL/dtheta| over its parameters. The same
 * pass checks the gradient for the optimizer: a sum in double of at most 2^31 floats' |g| is
 * finite exactly when every g is (their largest, 3.4e38, times 2^31 is far below DBL_MAX), so
 * each tensor whose sum is finite is marked grad_finite and ml_params_grad_finite_used does
 * not read it again.
 */
static float grad_mag(const ml_moe *m, int e, const ml_expert_abs *known) {
    float s = 0;
    size_t count = 0;
    const int nt = m->nt[e];
    double a[ML_EXPERT_MAX_TENSORS];
    int by[ML_EXPERT_MAX_TENSORS]; /* the tensors left to sum by size, largest first: in pairs of like size */
    int left = 0;
    for (int i = 0; i < nt; i++) {
        if (known && known->known >> i & 1) { /* summed by the backward, the same bits */
            a[i] = known->s[i];
            continue;
        }
        int j = left++;
        for (; j > 0 && m->P->t[m->th[e][by[j - 1]]].n < m->P->t[m->th[e][i]].n; j--) by[j] = by[j - 1];
        by[j] = i;
    }
    for (int k = 0; k < left; k += 2) {
        const int i = by[k];
        const size_t n = m->P->t[m->th[e][i]].n;
        if (k + 1 < left) {
            const int j = by[k + 1];
            sum_abs2(ml_moe_grad(m, e, i), n, ml_moe_grad(m, e, j), m->P->t[m->th[e][j]].n, &a[i], &a[j]);
        } else {
            double acc[8] = {0};
            a[i] = sum_abs_rest(ml_moe_grad(m, e, i), n, 0, acc);
        }
    }
    for (int i = 0; i < nt; i++) { /* s adds them in describe order */
        ml_tensor *t = &m->P->t[m->th[e][i]];
        t->grad_finite = (uint8_t)double_finite(a[i]);
        s += (float)a[i];
        count += t->n;
    }
    return count ? s / (float)count : 0;
}

/* ------------------------------------------------------------------ the layer */

static ml_moe *moe_new(int layer, int D, int R, int C, int HW, int N, const ml_expert_kind *kind,
                       const void *kind_cfg, const ml_plugin *router, const ml_optval *opt, ml_params *P,
                       ml_params *S, uint64_t seed) {
    ml_moe *m = ml_calloc(1, sizeof *m);
    if (!m) return NULL;
    m->layer = layer;
    m->D = D;
    m->R = R;
    m->C = C;
    m->HW = HW;
    m->N = N;
    m->P = P;
    m->S = S;
    m->kind = kind;
    if (!(m->kst = kind->create(m, kind_cfg)) || grow_handles(m, N)) goto fail;
    if (!(m->var = ml_calloc(ML_MOE_MAX_EXPERTS, sizeof *m->var))) goto fail;
    for (int e = 0; e < ML_MOE_MAX_EXPERTS; e++) m->var[e] = default_variant(m, e);
    /* the router's tensors follow the experts' in the block, as they always have */
    for (int e = 0; e < N; e++)
        if (declare_expert(m, e)) goto fail;
    char prefix[32];
    snprintf(prefix, sizeof prefix, "moe%d.router.", layer + 1); /* layers from 1, as everywhere users see them */
    if (ml_router_inst_init(&m->router, router, opt, layer, R, N, seed + (uint64_t)layer,
                            seed ^ (0x5851f42d4c957f2dULL * (uint64_t)(layer + 1)), P, S, prefix))
        goto fail;
    return m;
fail:
    ml_moe_free(m);
    return NULL;
}

ml_moe *ml_moe_new(int layer, int D, int H, int N, const ml_plugin *router, const ml_optval *opt,
                   ml_params *P, ml_params *S, uint64_t seed) {
    return moe_new(layer, D, D, D, 1, N, &ml_expert_mlp, &H, router, opt, P, S, seed);
}

ml_moe *ml_moe_new_spatial(int layer, int C, int HW, int N, const ml_expert_kind *kind, const void *kind_cfg,
                           const ml_plugin *router, const ml_optval *opt, ml_params *P, ml_params *S,
                           uint64_t seed) {
    if ((int64_t)C * HW > INT32_MAX) {
        ml_errorf("moe layer %d: feature maps of %d x %d floats are too large", layer + 1, C, HW);
        return NULL;
    }
    return moe_new(layer, C * HW, C, C, HW, N, kind, kind_cfg, router, opt, P, S, seed);
}

static void free_buffers(ml_moe *m) {
    void *bufs[] = {m->order, m->estart, m->cursor, m->bslot, m->bstart, m->xg, m->yg, m->dlogits, m->dprob, m->dgate_loss,
                    m->dgate, m->dyg, m->dxg, m->grad_mag, m->load, m->rin, m->drin, m->gin, m->dgin, m->used};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
    m->xg = m->yg = m->dlogits = m->dprob = m->dgate_loss = NULL;
    m->dgate = m->dyg = m->dxg = m->grad_mag = m->load = m->rin = m->drin = m->gin = m->dgin = NULL;
    m->order = m->estart = m->cursor = m->used = m->bslot = m->bstart = NULL;
    m->n_used = 0;
    m->cap_B = m->cap_N = 0;
}

void ml_moe_free(ml_moe *m) {
    if (!m) return;
    ml_router_inst_release(&m->router);
    free_buffers(m);
    if (m->kind) m->kind->free(m->kst);
    free(m->th);
    free(m->nt);
    free(m->var);
    free(m);
}

static int reserve(ml_moe *m, int B) {
    if (B <= m->cap_B && m->N <= m->cap_N && (!m->comm || m->gin)) return ML_OK;
    if (B < m->cap_B) B = m->cap_B;
    free_buffers(m);
    size_t BN = (size_t)B * m->N, K = BN;
    int spatial = m->R != m->D;
    m->dlogits = ml_alloc_floats(BN);
    m->dprob = ml_alloc_floats(BN);
    m->order = ml_calloc(K, sizeof(int32_t));
    m->dgate = ml_alloc_floats(K);
    m->dgate_loss = ml_alloc_floats(K);
    m->estart = ml_calloc((size_t)m->N + 1, sizeof(int32_t));
    m->cursor = ml_calloc((size_t)m->N, sizeof(int32_t));
    m->bslot = ml_calloc(K, sizeof(int32_t));
    m->bstart = ml_calloc((size_t)B + 1, sizeof(int32_t));
    m->used = ml_calloc((size_t)m->N, sizeof(int32_t));
    m->xg = ml_alloc_floats(K * m->D);
    m->yg = ml_alloc_floats(K * m->D);
    m->dyg = ml_alloc_floats(K * m->D);
    m->dxg = ml_alloc_floats(K * m->D);
    m->grad_mag = ml_alloc_floats((size_t)m->N);
    m->load = ml_alloc_floats((size_t)m->N);
    if (spatial) {
        m->rin = ml_alloc_floats((size_t)B * m->R);
        m->drin = ml_alloc_floats((size_t)B * m->R);
    }
    if (m->comm) {
        m->gin = ml_alloc_floats((size_t)B * m->R);
        m->dgin = ml_alloc_floats((size_t)B * m->R);
    }
    if (!m->dlogits || !m->dprob || !m->order || !m->dgate || !m->dgate_loss || !m->estart || !m->cursor || !m->used ||
        !m->bslot || !m->bstart ||
        !m->xg || !m->yg || !m->dyg || !m->dxg || !m->grad_mag || !m->load || (spatial && (!m->rin || !m->drin)) ||
        (m->comm && (!m->gin || !m->dgin))) {
        free_buffers(m);
        return ml_errorf("moe layer %d: out of memory for a batch of %d with %d experts", m->layer + 1, B, m->N);
    }
    m->cap_B = B;
    m->cap_N = m->N;
    return ML_OK;
}

/* rin (B, C) = the mean of each channel of x (B, C, HW): what a spatial layer's router sees. */
static void pool_forward(const ml_moe *m, const float *x, int B, float *rin) {
    const int C = m->C, HW = m->HW;
    const float inv = 1.0f / (float)HW;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * C * HW >= MOE_PAR_FLOATS)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            const float *p = x + ((size_t)b * C + c) * HW;
            double s = 0;
#pragma omp simd reduction(+ : s)
            for (int i = 0; i < HW; i++) s += p[i];
            rin[(size_t)b * C + c] = (float)s * inv;
        }
}

/* dx (B, C, HW) += drin (B, C) / HW, the pool's backward. */
static void pool_backward(const ml_moe *m, float *dx, int B, const float *drin) {
    const int C = m->C, HW = m->HW;
    const float inv = 1.0f / (float)HW;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * C * HW >= MOE_PAR_FLOATS)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            float g = drin[(size_t)b * C + c] * inv;
            float *p = dx + ((size_t)b * C + c) * HW;
            for (int i = 0; i < HW; i++) p[i] += g;
        }
}

/* AFTER_BACKWARD: each expert's mean |grad| (the SRNN saturation signal) and its load, the
   triples of the whole batch routed to it. */
static int after_backward(ml_moe *m, int have_mag) {
    const int N = m->N;
    for (int e = 0; e < N; e++) m->load[e] = (float)m->router.per_expert[e];
    /* an expert without samples has a zero gradient: no pass over it (the cost of a step
       grows with the experts used, not with N). The backward of a whole batch has summed the
       used experts' gradients already (have_mag), while they were in cache; a split batch's
       are final only now, summed over the processes. */
    if (!have_mag) {
        const int par = m->kind->parallel && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(dynamic, 1) if (par)
        for (int e = 0; e < N; e++) m->grad_mag[e] = m->load[e] > 0 ? grad_mag(m, e, NULL) : 0.0f;
    }
    return ml_router_inst_after_backward(&m->router, m->grad_mag, m->load);
}

/* Forward (backward = 0) or backward of the j-th expert with rows here (run_experts). */
static int run_expert(ml_moe *m, int j, int backward, int training, int mag, int next) {
    const int D = m->D, e = m->used[j], r0 = m->estart[e], n = m->estart[e + 1] - r0;
    const float *xg = m->xg + (size_t)r0 * D;
    if (!backward) return m->kind->forward(m->kst, m, e, r0, n, xg, m->yg + (size_t)r0 * D, training);
    float *dxg = m->dxg + (size_t)r0 * D;
    ml_zero(dxg, (size_t)n * D);
    if (!m->kind->own_stale) ml_moe_zero_stale(m, e);
    ml_expert_abs sums;
    sums.known = 0;
    int rc = m->kind->backward(m->kst, m, e, r0, n, xg, m->dyg + (size_t)r0 * D, dxg, next, mag ? &sums : NULL);
    if (!rc && mag) m->grad_mag[e] = grad_mag(m, e, &sums);
    return rc;
}

/*
 * The backward of the experts that have rows here, as run_experts, for experts of few rows
 * each (many experts): a dynamic schedule in which a thread claims its next expert before it
 * runs one of at most `few` rows, whose backward then asks for the next one's tensors
 * (mlp_backward), and after one of more (not to keep it from a thread that comes free
 * first). The smallest expert that failed, or -1.
 */
static int run_experts_ahead(ml_moe *m, int training, int mag, int few) {
    const int nu = m->n_used;
    int failed = -1, claimed = 0;
#pragma omp parallel
    {
        int j, next = -1;
#pragma omp atomic capture
        j = claimed++;
        while (j < nu) {
            const int e = m->used[j], early = m->estart[e + 1] - m->estart[e] <= few;
            if (early) {
#pragma omp atomic capture
                next = claimed++;
            }
            if (run_expert(m, j, 1, training, mag, early && next < nu ? m->used[next] : -1)) {
#pragma omp critical(ml_moe_run_experts)
                if (failed < 0 || e < failed) failed = e;
            }
            if (!early) {
#pragma omp atomic capture
                next = claimed++;
            }
            j = next;
        }
    }
    return failed;
}

/*
 * Forward (backward = 0) or backward of the experts that have rows here (m->used). A kind
 * that allows it (ml_expert_kind.parallel) has its experts shared among the OpenMP threads,
 * each expert computed whole by one thread with the same kernels (BLAS calls run
 * single-threaded inside the region) as it would be alone: the results are the same bits
 * whatever the thread count and the schedule. Other kinds run one expert after the other,
 * outside any parallel region (their own parallel loops inside one would be nested teams).
 * With mag (a training backward of the whole batch), each expert's gradient magnitude and
 * finiteness follow its backward (grad_mag) while the gradient is in cache; idle experts'
 * grad_mag is 0.
 */
static int run_experts(ml_moe *m, int backward, int training, int mag) {
    const int nu = m->n_used;
    int failed = -1;
    if (mag) memset(m->grad_mag, 0, (size_t)m->N * sizeof(float));
    if (m->kind->parallel && nu > 1 && omp_get_max_threads() > 1) {
        const int few = backward ? ml_linear_backward_rows_max() : 0;
        if (few > 0 && m->K <= (int64_t)few * nu) {
            failed = run_experts_ahead(m, training, mag, few);
        } else {
#pragma omp parallel for schedule(dynamic, 1)
            for (int j = 0; j < nu; j++)
                if (run_expert(m, j, backward, training, mag, -1)) {
#pragma omp critical(ml_moe_run_experts)
                    if (failed < 0 || m->used[j] < failed) failed = m->used[j];
                }
        }
    } else {
        /* one expert after the other, each parallel inside; on more threads their gradient
           magnitudes follow all of them, shared among the threads (each expert's whole by one
           thread: the same bits), not one serial pass after each */
        const int later = mag && nu > 1 && omp_get_max_threads() > 1;
        for (int j = 0; j < nu && failed < 0; j++)
            if (run_expert(m, j, backward, training, mag && !later, j + 1 < nu ? m->used[j + 1] : -1))
                failed = m->used[j];
        if (later && failed < 0) {
#pragma omp parallel for schedule(dynamic, 1)
            for (int j = 0; j < nu; j++) m->grad_mag[m->used[j]] = grad_mag(m, m->used[j], NULL);
        }
    }
    if (failed >= 0)
        return ml_error_prefix("moe layer %d: expert %d%s", m->layer + 1, failed, backward ? " backward" : "");
    return ML_OK;
}

int ml_moe_set_part(ml_moe *m, const ml_comm *comm, int B) {
    if (comm && comm->size > 1 && B < 1)
        return ml_errorf("moe layer %d: a split batch of %d samples, expected >= 1", m->layer + 1, B);
    m->comm = comm && comm->size > 1 ? comm : NULL;
    m->part_B = m->comm ? B : 0;
    return ML_OK;
}

/*
 * Test hook (tests/check_mpi.c, docs/lua-api.md): with MOELAB_TEST_ROUTING_MARGIN=FILE, every
 * training forward appends "layer step gap sample lo hi cgap expert" to FILE (rank 0 alone
 * under mpirun; every rank routes the whole batch). gap is the smallest, over the batch's
 * samples, of the gap between the lowest logit of an expert the sample was dispatched to (lo)
 * and the highest of one it was not (hi): the decisions of routers that send each sample to
 * the top k of the logits they report. cgap is the smallest, over the experts, of the gap
 * between the lowest prob of a sample dispatched to the expert and the highest of one that
 * was not: the decisions of routers whose experts choose samples by prob (expert_choice).
 * Samples (experts) with all or none dispatched have no gap; none at all writes inf and -1.
 * A decision whose gap is of the size of rounding noise can go either way in two
 * computations of the same maths (one process and two ranks): a test that compares them to
 * a tolerance needs every gap far above that noise.
 */
static void routing_margin_hook(const ml_moe *m, const ml_router_inst *ri, int B) {
    const char *path = getenv("MOELAB_TEST_ROUTING_MARGIN");
    if (!path || !*path || (m->comm && m->comm->rank != 0)) return;
    const int N = m->N;
    unsigned char *sel = calloc((size_t)B * N, 1);
    FILE *f = fopen(path, "a");
    if (sel && f) {
        for (int t = 0; t < ri->n_disp; t++) sel[(size_t)ri->disp_sample[t] * N + ri->disp_expert[t]] = 1;
        double margin = INFINITY, at_lo = 0, at_hi = 0;
        int at = -1;
        for (int b = 0; b < B; b++) {
            const float *zb = ri->logits + (size_t)b * N;
            const unsigned char *sb = sel + (size_t)b * N;
            double lo = INFINITY, hi = -INFINITY;
            for (int e = 0; e < N; e++)
                if (sb[e]) lo = fmin(lo, zb[e]);
                else hi = fmax(hi, zb[e]);
            if (isfinite(lo) && isfinite(hi) && lo - hi < margin) margin = lo - hi, at = b, at_lo = lo, at_hi = hi;
        }
        double cgap = INFINITY;
        int cat = -1;
        for (int e = 0; e < N; e++) {
            double lo = INFINITY, hi = -INFINITY;
            for (int b = 0; b < B; b++)
                if (sel[(size_t)b * N + e]) lo = fmin(lo, ri->prob[(size_t)b * N + e]);
                else hi = fmax(hi, ri->prob[(size_t)b * N + e]);
            if (isfinite(lo) && isfinite(hi) && lo - hi < cgap) cgap = lo - hi, cat = e;
        }
        fprintf(f, "%d %lld %.9g %d %.9g %.9g %.9g %d\n", m->layer + 1, (long long)ri->step + 1, margin, at, at_lo,
                at_hi, cgap, cat);
    }
    if (f) fclose(f);
    free(sel);
}

int ml_moe_forward(ml_moe *m, const float *z, float *y, int Bl, int training,
                   const int32_t *sample_id, const int32_t *label, int num_classes) {
    m->B = 0; /* nothing of a failed forward is kept */
    m->after_pending = 0;
    const ml_comm *comm = m->comm;
    /* a split forward: this process's Bl rows of the global batch of B (ml_moe_set_part) */
    const int B = comm ? m->part_B : Bl;
    const int off = comm ? ml_part_off(B, comm->size, comm->rank) : 0;
    if (comm && Bl != ml_part_off(B, comm->size, comm->rank + 1) - off)
        return ml_errorf("moe layer %d: %d rows, but rank %d's part of a batch of %d over %d ranks is %d", m->layer + 1,
                         Bl, comm->rank, B, comm->size, ml_part_off(B, comm->size, comm->rank + 1) - off);
    /* the ABI counts dispatch triples in an int32 (ml_route.n_disp), at most B*N of them */
    if ((int64_t)B * m->N > INT32_MAX)
        return ml_errorf("moe layer %d: batch of %d samples x %d experts = %lld routing slots, more than "
                         "2^31-1 (lower train.batch_size or the number of experts)",
                         m->layer + 1, B, m->N, (long long)B * m->N);
    if (reserve(m, B)) return ML_ERR;
    const int D = m->D, N = m->N;
    const float *rin = z;
    if (comm) {
        /* every process routes the whole global batch (the router is a small linear map; its
           forward, the losses and the routing statistics then see exactly what one process
           sees), and runs its own samples' triples through the experts */
        float *mine = m->gin + (size_t)off * m->R;
        if (m->rin) {
            pool_forward(m, z, Bl, mine);
        } else if (Bl > 0) {
            memcpy(mine, z, (size_t)Bl * D * sizeof(float));
        }
        if (comm->gather_rows(mine, m->gin, B, m->R))
            return ml_error_prefix("moe layer %d: gathering the router inputs", m->layer + 1);
        rin = m->gin;
    } else if (m->rin) {
        pool_forward(m, z, B, m->rin);
        rin = m->rin;
    }
    if (ml_router_inst_forward(&m->router, rin, B, training, sample_id)) return ML_ERR;
    const ml_router_inst *ri = &m->router;
    if (training) routing_margin_hook(m, ri, B);
    const int Kg = ri->n_disp;
    const int32_t *ds = ri->disp_sample, *de = ri->disp_expert;
    const float *dg = ri->disp_gate;

    /* counting sort of this process's triples by expert: each expert's rows become one
       contiguous batch (without a split, the router host counted them all) */
    int K = Kg;
    if (comm) {
        memset(m->cursor, 0, (size_t)N * sizeof(int32_t));
        K = 0;
        for (int t = 0; t < Kg; t++)
            if (ds[t] >= off && ds[t] < off + Bl) m->cursor[de[t]]++, K++;
    } else {
        memcpy(m->cursor, ri->per_expert, (size_t)N * sizeof(int32_t));
    }
    /* the experts' activations for this forward's K rows (grow-only) */
    if (K > 0 && m->kind->reserve(m->kst, m, K))
        return ml_errorf("moe layer %d: out of memory for the activations of %d routed samples", m->layer + 1, K);
    m->estart[0] = 0;
    for (int e = 0; e < N; e++) m->estart[e + 1] = m->estart[e] + m->cursor[e];
    memcpy(m->cursor, m->estart, (size_t)N * sizeof(int32_t));
    for (int t = 0; t < Kg; t++)
        if (ds[t] >= off && ds[t] < off + Bl) m->order[m->cursor[de[t]]++] = t;
    /* each sample's slots in slot order (counting sort by sample; the combine and its backward
       run sample by sample) */
    int32_t *bstart = m->bstart;
    memset(bstart, 0, (size_t)(Bl + 1) * sizeof(int32_t));
    for (int s = 0; s < K; s++) bstart[ds[m->order[s]] - off + 1]++;
    for (int b = 0; b < Bl; b++) bstart[b + 1] += bstart[b];
    for (int s = 0; s < K; s++) m->bslot[bstart[ds[m->order[s]] - off]++] = s;
    for (int b = Bl; b > 0; b--) bstart[b] = bstart[b - 1];
    bstart[0] = 0;
    const int par = (size_t)K * D >= MOE_PAR_FLOATS;
#pragma omp parallel for schedule(static) if (par)
    for (int s = 0; s < K; s++)
        memcpy(m->xg + (size_t)s * D, z + (size_t)(ds[m->order[s]] - off) * D, (size_t)D * sizeof(float));
    /* a training forward marks the tensors of the experts without samples in the whole batch
       idle (ml_tensor.idle; with a split batch, idle on every rank, so the summed gradients
       agree): the backward leaves their gradients at zero, zeroing and checks skip them, and a
       lazy optimizer leaves them as they are */
    m->n_used = 0;
    for (int e = 0; e < N; e++) {
        if (training) {
            const uint8_t idle = ri->per_expert[e] == 0;
            for (int i = 0; i < m->nt[e]; i++) {
                ml_tensor *t = &m->P->t[m->th[e][i]];
                t->idle = idle;
                t->grad_finite = 0; /* the backward checks it (grad_mag) */
            }
        }
        if (m->estart[e + 1] > m->estart[e]) m->used[m->n_used++] = e;
        /* an expert with rows elsewhere in a split batch: its part here of the gradient summed
           over the processes is zero. An idle one's stays stale: it reads as zero (and a lazy
           step does not read it at all), no pass over it. */
        else if (ri->per_expert[e] > 0) ml_moe_zero_stale(m, e);
    }
    if (run_experts(m, 0, training, 0)) return ML_ERR;
    /* each sample's row: its slots in order */
#pragma omp parallel for schedule(static) if (par)
    for (int b = 0; b < Bl; b++) {
        float *yb = y + (size_t)b * D;
        const float *zb = z + (size_t)b * D;
        if (ri->hits[off + b]) memset(yb, 0, (size_t)D * sizeof(float));
        else memcpy(yb, zb, (size_t)D * sizeof(float));
        for (int q = bstart[b]; q < bstart[b + 1]; q++) {
            const int s = m->bslot[q], t = m->order[s];
            const float g = dg[t], *ys = m->yg + (size_t)s * D;
            for (int d = 0; d < D; d++) yb[d] += g * (zb[d] + ys[d]);
        }
    }
    memset(m->dlogits, 0, (size_t)B * N * sizeof(float));
    memset(m->dprob, 0, (size_t)B * N * sizeof(float));
    memset(m->dgate_loss, 0, (size_t)(Kg > 0 ? Kg : 1) * sizeof(float));
    m->B = B;
    m->Bl = Bl;
    m->off = off;
    m->K = K;
    m->x = z;
    m->training = training;
    m->label = label;
    m->num_classes = num_classes;
    return ML_OK;
}

void ml_moe_record(const ml_moe *m, ml_routing_record *r) {
    ml_router_inst_record(&m->router, r);
    if (!m->B) r->B = r->n_disp = 0;
    r->label = m->label;
    r->num_classes = m->num_classes;
}

int ml_moe_backward(ml_moe *m, const float *dy, float *dz) {
    if (!m->B) return ml_errorf("moe layer %d: backward without a successful forward", m->layer + 1);
    const ml_router_inst *ri = &m->router;
    const ml_comm *comm = m->comm;
    const int D = m->D, Bl = m->Bl, off = m->off, K = m->K, Kg = ri->n_disp;
    const int32_t *ds = ri->disp_sample;
    const float *dg = ri->disp_gate;
    const float *z = m->x;
    if (comm) memset(m->dgate, 0, (size_t)(Kg > 0 ? Kg : 1) * sizeof(float));
    const int par = (size_t)K * D >= MOE_PAR_FLOATS;
#pragma omp parallel for schedule(static) if (par)
    for (int s = 0; s < K; s++) {
        int t = m->order[s], b = ds[t] - off;
        float g = dg[t];
        const float *dyb = dy + (size_t)b * D, *zb = z + (size_t)b * D, *ys = m->yg + (size_t)s * D;
        float *dys = m->dyg + (size_t)s * D;
        double dgate = 0;
#pragma omp simd reduction(+ : dgate)
        for (int d = 0; d < D; d++) {
            dgate += (double)dyb[d] * (zb[d] + ys[d]);
            dys[d] = g * dyb[d];
        }
        m->dgate[t] = comm ? (float)dgate : (float)dgate + m->dgate_loss[t];
    }
    if (comm) {
        /* the gates' gradient of the whole batch: each process has its own triples' (the
           others are zero here), the losses' part is the same everywhere */
        if (Kg > 0 && comm->sum_floats(m->dgate, (size_t)Kg))
            return ml_error_prefix("moe layer %d: summing the gate gradients", m->layer + 1);
        for (int t = 0; t < Kg; t++) m->dgate[t] += m->dgate_loss[t];
    }
    /* a whole batch's training backward: the experts' gradients are final after their own
       backward, so their magnitudes follow it at once */
    const int mag = m->training && !comm;
    if (run_experts(m, 1, m->training, mag)) return ML_ERR;
    /* each sample's row: the identity path if unrouted, then its slots in order */
#pragma omp parallel for schedule(static) if (par)
    for (int b = 0; b < Bl; b++) {
        const float *dyb = dy + (size_t)b * D;
        float *dzb = dz + (size_t)b * D;
        if (!ri->hits[off + b])
            for (int d = 0; d < D; d++) dzb[d] += dyb[d];
        for (int q = m->bstart[b]; q < m->bstart[b + 1]; q++) {
            const int s = m->bslot[q], t = m->order[s];
            const float g = dg[t], *dxs = m->dxg + (size_t)s * D;
            for (int d = 0; d < D; d++) dzb[d] += g * dyb[d] + dxs[d];
        }
    }
    if (comm) {
        /* the router's backward over the whole batch, as its forward: its parameter gradients
           are the whole batch's on every process; this process keeps its rows of dx */
        memset(m->dgin, 0, (size_t)m->B * m->R * sizeof(float));
        if (ml_router_inst_backward(&m->router, m->dgate, m->dlogits, m->dprob, m->dgin)) return ML_ERR;
        const float *mine = m->dgin + (size_t)off * m->R;
        if (m->rin) {
            pool_backward(m, dz, Bl, mine);
        } else {
            for (size_t i = 0; i < (size_t)Bl * D; i++) dz[i] += mine[i];
        }
    } else if (m->drin) { /* the router saw the pooled maps: its dx goes back through the pool */
        memset(m->drin, 0, (size_t)m->B * m->R * sizeof(float));
        if (ml_router_inst_backward(&m->router, m->dgate, m->dlogits, m->dprob, m->drin)) return ML_ERR;
        pool_backward(m, dz, m->B, m->drin);
    } else if (ml_router_inst_backward(&m->router, m->dgate, m->dlogits, m->dprob, dz)) {
        return ML_ERR;
    }
    if (!m->training) return ML_OK;
    /* a split batch: the experts' gradients are this process's part until they are summed */
    if (comm) {
        m->after_pending = 1;
        return ML_OK;
    }
    return after_backward(m, mag);
}

int ml_moe_after_backward(ml_moe *m) {
    if (!m->after_pending) return ML_OK;
    m->after_pending = 0;
    return after_backward(m, 0);
}

int ml_moe_grow_declare(ml_moe *m, int n_new, const int *variant) {
    if (n_new <= 0) return ML_OK;
    int N = m->N + n_new;
    if (N > ML_MOE_MAX_EXPERTS)
        return ml_errorf("moe layer %d: adding %d experts to %d: a layer holds at most %d", m->layer + 1, n_new, m->N,
                         ML_MOE_MAX_EXPERTS);
    if (grow_handles(m, N)) return ml_error_prefix("moe layer %d: adding %d experts", m->layer + 1, n_new);
    int old = m->N;
    m->N = N;
    m->B = 0;
    free_buffers(m); /* re-sized at the next forward */
    for (int e = old; e < N; e++) {
        m->var[e] = variant && variant[e - old] >= 0 ? variant[e - old] : default_variant(m, e);
        if (declare_expert(m, e)) return ML_ERR;
    }
    /* per-expert router tensors grow along their leading dimension */
    return ml_router_inst_grow_declare(&m->router, n_new);
}

int ml_moe_grow_finish(ml_moe *m, int old_n) { return ml_router_inst_grow_finish(&m->router, old_n); }

/* ------------------------------------------------------------------ removal */

int ml_moe_remove_declare(ml_moe *m, const int *kept, int nkeep) {
    const int N = m->N, L1 = m->layer + 1;
    if (nkeep < 1 || nkeep > N) return ml_errorf("moe layer %d: keep %d of %d experts", L1, nkeep, N);
    for (int j = 0; j < nkeep; j++)
        if (kept[j] < 0 || kept[j] >= N || (j > 0 && kept[j] <= kept[j - 1]))
            return ml_errorf("moe layer %d: the experts to keep must be ascending ids in 0..%d", L1, N - 1);
    /* the removed experts' tensors leave the block */
    for (int e = 0, j = 0; e < N; e++) {
        if (j < nkeep && kept[j] == e) {
            j++;
            continue;
        }
        for (int i = 0; i < m->nt[e]; i++)
            if (ml_params_remove(m->P, m->th[e][i])) return ML_ERR;
    }
    /* the kept ones take their new numbers, in ascending order: the name expert j takes was
       a removed expert's, or that of a kept expert renamed before it */
    for (int j = 0; j < nkeep; j++) {
        int e = kept[j];
        if (e != j)
            for (int i = 0; i < m->nt[e]; i++) {
                const char *old = m->P->t[m->th[e][i]].name;
                int l, x, n = 0;
                char name[ML_TENSOR_NAME_MAX];
                if (sscanf(old, "moe%d.expert%d.%n", &l, &x, &n) != 2 || n == 0)
                    return ml_errorf("moe layer %d: expert %d has a tensor named '%s'", L1, e, old);
                snprintf(name, sizeof name, "moe%d.expert%d.%s", L1, j, old + n);
                if (ml_params_rename(m->P, m->th[e][i], name)) return ML_ERR;
            }
        memmove(m->th[j], m->th[e], sizeof m->th[j]);
        m->nt[j] = m->nt[e];
        m->var[j] = m->var[e];
    }
    for (int e = nkeep; e < ML_MOE_MAX_EXPERTS; e++) m->var[e] = default_variant(m, e);
    m->N = nkeep;
    m->B = 0;
    free_buffers(m);
    return ml_router_inst_remove_declare(&m->router, kept, nkeep);
}

int ml_moe_remove_finish(ml_moe *m, const int *kept, int old_n) {
    return ml_router_inst_remove_finish(&m->router, kept, old_n);
}

/* ---------------------------------------------------- starting new experts */

/* Mean and standard deviation (n - 1 in the denominator, as torch's std()) of x[0..n). */
static void stats(const float *x, size_t n, double *mean, double *sd) {
    double s = 0, q = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    double mu = n ? s / (double)n : 0;
    for (size_t i = 0; i < n; i++) q += ((double)x[i] - mu) * ((double)x[i] - mu);
    *mean = mu;
    *sd = n > 1 ? sqrt(q / (double)(n - 1)) : 0;
}

/* The units of expert e (all its tensors that have units must agree); 0 when none. */
static int expert_units(const ml_moe *m, int e, int *units) {
    ml_expert_tensor t;
    *units = 0;
    for (int i = 0; ml_moe_expert_tensor(m, e, i, &t) == 0; i++) {
        if (t.units <= 0) continue;
        if (t.unit_axis < 0 || t.unit_axis >= t.ndim || t.unit_offset < 0 ||
            t.unit_offset + t.shape[t.unit_axis] > t.units || (*units && *units != t.units))
            return ml_errorf("moe layer %d: the '%s' kind describes the units of expert %d inconsistently (tensor %s)",
                             m->layer + 1, m->kind->name, e, t.name);
        *units = t.units;
    }
    return ML_OK;
}

int ml_moe_drop_units(const ml_moe *m, int e, double ratio, int *units) {
    if (expert_units(m, e, units)) return -1;
    return (int)floor(ratio * *units + 1e-9);
}

int ml_moe_init_experts(ml_moe *m, int first, int n, const ml_moe_init *in) {
    if (in->method == ML_EXPERT_INIT_RANDOM || n <= 0) return ML_OK;
    const int L1 = m->layer + 1;
    if (!(in->noise >= 0) || !(in->router_noise >= 0) || !(in->ratio >= 0 && in->ratio <= 1))
        return ml_errorf("moe layer %d: noise and router_noise must be >= 0, ratio in [0, 1]", L1);
    int *pick = NULL;
    for (int j = 0; j < n; j++) {
        const int e = first + j, src = in->source[j];
        if (src < 0 || src >= first)
            return ml_errorf("moe layer %d: expert %d cannot start as a copy of expert %d (the layer had experts 0..%d)",
                             L1, e, src, first - 1);
        if (m->var[src] != m->var[e] || m->nt[src] != m->nt[e])
            return ml_errorf("moe layer %d: expert %d and its source %d differ in structure (variants %d and %d)", L1, e,
                             src, m->var[e], m->var[src]);
        /* copy (values only: the new expert's Adam moments stay zero, its step counts 0) */
        for (int i = 0; i < m->nt[e]; i++) {
            const ml_tensor *ts = &m->P->t[m->th[src][i]], *te = &m->P->t[m->th[e][i]];
            if (ts->n != te->n) return ml_errorf("moe layer %d: tensor %s and %s differ in size", L1, ts->name, te->name);
            float *x = ml_moe_param(m, e, i);
            memcpy(x, ml_moe_param(m, src, i), te->n * sizeof(float));
            if (in->noise > 0) {
                double mu, sd;
                stats(x, te->n, &mu, &sd);
                for (size_t k = 0; k < te->n; k++) x[k] += (float)(in->noise * sd * ml_rng_normal(in->rng));
            }
        }
        if (in->method != ML_EXPERT_INIT_DROP_UPCYCLE) continue;
        /* drop-upcycling: one sampled set of units, re-initialised in every tensor that has them */
        int U = 0, r = ml_moe_drop_units(m, e, in->ratio, &U);
        if (r < 0) return ML_ERR;
        if (r == 0) continue;
        free(pick);
        if (!(pick = ml_calloc((size_t)U, sizeof *pick))) return ML_ERR;
        for (int u = 0; u < U; u++) pick[u] = u;
        for (int u = 0; u < r; u++) { /* partial Fisher-Yates: pick[0..r) is a uniform r-subset */
            int k = u + (int)(ml_rng_uniform(in->rng) * (U - u));
            if (k >= U) k = U - 1;
            int tmp = pick[u];
            pick[u] = pick[k];
            pick[k] = tmp;
        }
        for (int i = 0; i < m->nt[e]; i++) {
            ml_expert_tensor t;
            if (ml_moe_expert_tensor(m, e, i, &t) || t.units <= 0) continue;
            double mu, sd;
            stats(ml_moe_param(m, src, i), m->P->t[m->th[src][i]].n, &mu, &sd); /* the source's statistics */
            size_t outer = 1, inner = 1;
            for (int d = 0; d < t.unit_axis; d++) outer *= (size_t)t.shape[d];
            for (int d = t.unit_axis + 1; d < t.ndim; d++) inner *= (size_t)t.shape[d];
            const int A = t.shape[t.unit_axis];
            float *x = ml_moe_param(m, e, i);
            for (int u = 0; u < r; u++) {
                int s = pick[u] - t.unit_offset;
                if (s < 0 || s >= A) continue;
                for (size_t o = 0; o < outer; o++)
                    for (size_t k = 0; k < inner; k++)
                        x[(o * (size_t)A + (size_t)s) * inner + k] = (float)(mu + sd * ml_rng_normal(in->rng));
            }
        }
    }
    free(pick);
    /* the router's per-expert parameter rows: the source's, with a little noise to part them */
    ml_tensor_set *ps = &m->router.param;
    ml_tensor_set_bind(ps);
    for (int i = 0; i < ps->n; i++) {
        if (!ps->decl[i].per_expert) continue;
        const size_t cols = (size_t)ps->decl[i].cols;
        float *w = ps->data[i];
        double mu, sd;
        stats(w, (size_t)first * cols, &mu, &sd); /* over the rows of the experts there were */
        for (int j = 0; j < n; j++) {
            float *row = w + (size_t)(first + j) * cols;
            memcpy(row, w + (size_t)in->source[j] * cols, cols * sizeof(float));
            if (in->router_noise > 0)
                for (size_t k = 0; k < cols; k++) row[k] += (float)(in->router_noise * sd * ml_rng_normal(in->rng));
        }
    }
    return ML_OK;
}

int ml_moe_epoch_end(ml_moe *m, int epoch) { return ml_router_inst_epoch_end(&m->router, epoch); }

int ml_moe_reported_state(ml_moe *m, const char **names, const float **values, int cap) {
    return ml_router_inst_reported_state(&m->router, names, values, cap);
}
