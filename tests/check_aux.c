/*
 * check_aux.c — core/include/moelab/plugin_aux.h, the optional inline helpers of plugins:
 * the one softmax against a double-precision reference (sums, equal logits, huge logits),
 * logsumexp, argmax and top-k (ties to the lower index, NaN last), the renormalised top-k
 * gates, every backward against finite differences by the one policy of nn/gradcheck.h
 * (softmax Jacobian, renormalised gates, the whole softmax-router chain, linear), sigmoid,
 * softplus and p log p, dispatch, the scratch buffer, instance allocation, option lookup,
 * the row loops on several threads (the bits of the rows alone), and that the header
 * compiles alone under the plugin warnings (with and without OpenMP) with nothing unused
 * warned.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "moelab/plugin_aux.h"
#include "nn/gradcheck.h"
#include "plugin/loader.h"
#include "plugin/options.h"
#include "testutil.h"

/* The double-precision softmax of one row. */
static void ref_softmax(const float *z, double *p, int n) {
    double m = z[0], s = 0;
    for (int i = 1; i < n; i++) m = fmax(m, z[i]);
    for (int i = 0; i < n; i++) s += p[i] = exp((double)z[i] - m);
    for (int i = 0; i < n; i++) p[i] /= s;
}

/* Passes when every tensor of one check (by the one policy, the scale over all of them). */
static void gradcheck_all(ml_gc_fn f, void *ctx, float **x, const float **ana, const size_t *n,
                          int nt, const char *what) {
    double scale = 0;
    for (int j = 0; j < nt; j++) scale = fmax(scale, ml_gc_scale(ana[j], n[j]));
    for (int j = 0; j < nt; j++) {
        ml_gc_result r;
        int ok = ml_gradcheck(NULL, f, ctx, x[j], n[j], ana[j], scale, &r);
        ck_assert_msg(ok, "%s, tensor %d: error %g at %zu (analytic %g, finite differences %g; "
                      "%d checked)", what, j, r.worst, r.index, r.analytic, r.numeric, r.checked);
    }
}

/* ------------------------------------------------------------------- softmax */

START_TEST(softmax_matches_double_reference) {
    static const int Ns[] = {1, 2, 3, 7, 64, 1000};
    for (size_t c = 0; c < sizeof Ns / sizeof *Ns; c++) {
        int N = Ns[c], B = 3;
        float *z = malloc((size_t)B * N * sizeof *z), *p = malloc((size_t)B * N * sizeof *p);
        double *ref = malloc((size_t)N * sizeof *ref);
        tu_fill(z, (size_t)B * N, 11 + (unsigned)c, -20, 20);
        ml_aux_softmax(z, p, B, N);
        for (int b = 0; b < B; b++) {
            const float *zr = z + (size_t)b * N;
            ref_softmax(zr, ref, N);
            float m = zr[0];
            for (int i = 1; i < N; i++) m = fmaxf(m, zr[i]);
            double sum = 0;
            for (int i = 0; i < N; i++) {
                float pi = p[(size_t)b * N + i];
                /* float arithmetic: expf, the reciprocal and the product cost a few ulp (1e-6
                   covers them), and z_i - m rounded to float a relative 2^-24 |z_i - m| more */
                double tol = ref[i] * (1e-6 + 0x1p-23 * fabsf(zr[i] - m));
                ck_assert_msg(fabs(pi - ref[i]) <= tol + 1e-37,
                              "N=%d row %d entry %d: %.9g, double reference %.9g", N, b, i, pi, ref[i]);
                sum += pi;
            }
            ck_assert_msg(fabs(sum - 1) < 1e-6, "N=%d row %d sums to %.9g", N, b, sum);
        }
        free(z), free(p), free(ref);
    }
}
END_TEST

START_TEST(softmax_equal_logits_equal_probs) {
    float z[8], p[8];
    for (int i = 0; i < 8; i++) z[i] = 3.7f;
    ml_aux_softmax(z, p, 1, 8);
    for (int i = 0; i < 8; i++) {
        ck_assert(p[i] == p[0]);
        ck_assert_float_eq_tol(p[i], 0.125f, 1e-7f);
    }
    /* equal logits within an uneven row: bitwise equal probabilities */
    tu_fill(z, 8, 5, -3, 3);
    z[5] = z[2];
    ml_aux_softmax(z, p, 1, 8);
    ck_assert(p[5] == p[2]);
    /* in place (p = z) gives what out of place gives */
    float q[8];
    memcpy(q, z, sizeof q);
    ml_aux_softmax(q, q, 1, 8);
    ck_assert(!memcmp(q, p, sizeof q));
}
END_TEST

/* ml_aux_row_max (16 lanes from 32 logits on) finds what the plain loop does: NaNs anywhere
   but first never win, a NaN first stays, ties and infinities; rows of 1 to 100 */
static float row_max_loop(const float *z, int n) {
    float m = z[0];
    for (int i = 1; i < n; i++)
        if (z[i] > m) m = z[i];
    return m;
}

START_TEST(row_max_matches_loop) {
    float z[100];
    for (int n = 1; n <= 100; n++)
        for (int c = 0; c < 6; c++) {
            tu_fill(z, (size_t)n, (uint32_t)(7 * n + c), -5, c == 1 ? -1 : 5);
            if (c == 2) z[n / 2] = NAN;
            if (c == 3) z[0] = NAN;
            if (c == 4) z[n - 1] = INFINITY, z[n / 3] = -INFINITY;
            if (c == 5) z[n / 2] = z[n - 1] = 9; /* a tie at the top */
            const float a = ml_aux_row_max(z, n), b = row_max_loop(z, n);
            ck_assert_msg(a == b || (isnan(a) && isnan(b)), "n %d case %d: %g vs %g", n, c, (double)a, (double)b);
        }
}
END_TEST

START_TEST(softmax_huge_logits) {
    static const float rows[][3] = {
        {1e4f, -1e4f, 0},      {-1e4f, -1e4f, -1e4f}, {3e38f, -3e38f, 3e38f},
        {FLT_MAX, 0, -FLT_MAX}, {-FLT_MAX, -FLT_MAX, 1},
    };
    static const float want[][3] = {
        {1, 0, 0}, {1.0f / 3, 1.0f / 3, 1.0f / 3}, {0.5f, 0, 0.5f}, {1, 0, 0}, {0, 0, 1},
    };
    for (size_t r = 0; r < sizeof rows / sizeof *rows; r++) {
        float p[3];
        ml_aux_softmax(rows[r], p, 1, 3);
        double sum = 0;
        for (int i = 0; i < 3; i++) {
            ck_assert_msg(isfinite(p[i]), "row %zu entry %d: %g", r, i, p[i]);
            ck_assert_msg(fabsf(p[i] - want[r][i]) < 1e-7f, "row %zu entry %d: %.9g, want %.9g", r, i,
                          p[i], want[r][i]);
            sum += p[i];
        }
        ck_assert_msg(fabs(sum - 1) < 1e-6, "row %zu sums to %g", r, sum);
    }
}
END_TEST

START_TEST(logsumexp_values) {
    float z[50];
    tu_fill(z, 50, 3, -30, 30);
    double m = z[0], s = 0;
    for (int i = 1; i < 50; i++) m = fmax(m, z[i]);
    for (int i = 0; i < 50; i++) s += exp((double)z[i] - m);
    ck_assert_double_eq_tol(ml_aux_logsumexp(z, 50), m + log(s), 1e-12);
    const float big[2] = {1e4f, 1e4f}, one[1] = {-1e4f}, mixed[3] = {-FLT_MAX, 0, FLT_MAX};
    ck_assert_double_eq_tol(ml_aux_logsumexp(big, 2), 1e4 + log(2.0), 1e-9);
    ck_assert_double_eq(ml_aux_logsumexp(one, 1), -1e4);
    ck_assert_double_eq(ml_aux_logsumexp(mixed, 3), (double)FLT_MAX);
}
END_TEST

/* ------------------------------------------------------------------ top-k, argmax */

/* Reference: indices sorted by value descending, index ascending (insertion sort). */
static void ref_order(const float *z, int n, int *idx) {
    for (int i = 0; i < n; i++) {
        int j = i;
        while (j > 0 && (z[idx[j - 1]] < z[i] || (z[idx[j - 1]] == z[i] && idx[j - 1] > i))) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
    }
}

START_TEST(topk_ties_to_lower_index) {
    const float z[5] = {1, 3, 3, 2, 3};
    int32_t sel[5];
    ck_assert_int_eq(ml_aux_argmax(z, 5), 1);
    ml_aux_topk(z, 5, 3, sel);
    const int32_t top3[3] = {1, 2, 4};
    ck_assert(!memcmp(sel, top3, sizeof top3));
    ml_aux_topk(z, 5, 5, sel);
    const int32_t all[5] = {1, 2, 4, 3, 0};
    ck_assert(!memcmp(sel, all, sizeof all));
    const float zeros[2] = {-0.0f, 0.0f}; /* -0 == +0: a tie */
    ck_assert_int_eq(ml_aux_argmax(zeros, 2), 0);
    /* many ties at random: every k equals the reference order's first k */
    for (unsigned seed = 1; seed <= 20; seed++) {
        float v[13];
        int idx[13];
        tu_fill(v, 13, seed, 0, 4);
        for (int i = 0; i < 13; i++) v[i] = floorf(v[i]); /* values 0..3 */
        ref_order(v, 13, idx);
        ck_assert_int_eq(ml_aux_argmax(v, 13), idx[0]);
        for (int k = 1; k <= 13; k++) {
            int32_t s[13];
            ml_aux_topk(v, 13, k, s);
            for (int j = 0; j < k; j++)
                ck_assert_msg(s[j] == idx[j], "seed %u k %d: pick %d is %d, reference %d", seed, k, j,
                              s[j], idx[j]);
        }
    }
}
END_TEST

/* long rows (a router's N) with NaNs and ties among the numbers, every k up to 9 and n:
   the reference order's first k */
START_TEST(topk_long_rows) {
    enum { n = 300 };
    for (unsigned seed = 1; seed <= 8; seed++) {
        float v[n];
        int idx[n];
        int32_t s[n];
        tu_fill(v, n, 100 + seed, -50, 50);
        for (int i = 0; i < n; i++) {
            if (seed % 2) v[i] = floorf(v[i]); /* many ties */
            if (i % 37 == (int)seed) v[i] = NAN;
        }
        if (seed == 3) /* ascending: each entry ranks before all seen so far */
            for (int i = 0; i < n; i++) v[i] = (float)i;
        for (int i = 0; i < n; i++) { /* the reference: an insertion sort by the order itself */
            int j = i;
            for (; j > 0 && ml_aux_ranks_before(v, i, idx[j - 1]); j--) idx[j] = idx[j - 1];
            idx[j] = i;
        }
        for (int k = 1; k <= n; k = k < 9 ? k + 1 : k == 9 ? 150 : k == 150 ? n : n + 1) {
            ml_aux_topk(v, n, k, s);
            for (int j = 0; j < k; j++)
                ck_assert_msg(s[j] == idx[j], "seed %u k %d: pick %d is %d, reference %d", seed, k, j, s[j], idx[j]);
        }
    }
}
END_TEST

START_TEST(topk_nan_last) {
    const float z[4] = {NAN, 1, NAN, 2};
    int32_t sel[4];
    ml_aux_topk(z, 4, 4, sel);
    const int32_t want[4] = {3, 1, 0, 2}; /* the numbers, then the NaNs by index */
    ck_assert(!memcmp(sel, want, sizeof want));
    ck_assert_int_eq(ml_aux_argmax(z, 4), 3);
}
END_TEST

START_TEST(topk_gates_are_renormalised_probs) {
    float z[8], g[3];
    double p[8];
    int32_t sel[3];
    tu_fill(z, 8, 9, -4, 4);
    ref_softmax(z, p, 8);
    ml_aux_topk(z, 8, 3, sel);
    ml_aux_topk_gates(z, sel, 3, g);
    double s = p[sel[0]] + p[sel[1]] + p[sel[2]], sum = 0;
    for (int j = 0; j < 3; j++) {
        ck_assert_msg(fabs(g[j] - p[sel[j]] / s) < 1e-6 * p[sel[j]] / s, "gate %d: %.9g, p/s %.9g", j,
                      g[j], p[sel[j]] / s);
        sum += g[j];
    }
    ck_assert(fabs(sum - 1) < 1e-6);
    /* selected entries whose probabilities underflow (chosen by another score, as
       aux_free_bias does): the gates stay p_e / s = 1 / (1 + e^-0.5), 1 / (1 + e^0.5) */
    const float far[4] = {0, -1000, -1000.5f, 5};
    const int32_t two[2] = {1, 2};
    float pf[4];
    ml_aux_softmax(far, pf, 1, 4);
    ck_assert(pf[1] == 0 && pf[2] == 0);
    ml_aux_topk_gates(far, two, 2, g);
    ck_assert_float_eq_tol(g[0], (float)(1 / (1 + exp(-0.5))), 1e-7f);
    ck_assert_float_eq_tol(g[1], (float)(1 / (1 + exp(0.5))), 1e-7f);
}
END_TEST

/* ------------------------------------------------------------------- backward */

/* f = Σ c ⊙ softmax(z), B rows of N */
typedef struct sm_ctx { float *z; const float *c; int B, N; } sm_ctx;

static double sm_f(void *ctx) {
    sm_ctx *s = ctx;
    size_t n = (size_t)s->B * s->N;
    float *p = malloc(n * sizeof *p);
    ml_aux_softmax(s->z, p, s->B, s->N);
    double f = 0;
    for (size_t i = 0; i < n; i++) f += (double)s->c[i] * p[i];
    free(p);
    return f;
}

START_TEST(softmax_bwd_finite_differences) {
    enum { B = 3, N = 5 };
    float z[B * N], c[B * N], p[B * N], dz[B * N] = {0};
    tu_fill(z, B * N, 21, -2, 2);
    tu_fill(c, B * N, 22, -1, 1);
    ml_aux_softmax(z, p, B, N);
    ml_aux_softmax_bwd(p, c, dz, B, N);
    sm_ctx s = {z, c, B, N};
    float *x[1] = {z};
    const float *a[1] = {dz};
    size_t n[1] = {B * N};
    gradcheck_all(sm_f, &s, x, a, n, 1, "softmax backward");
    /* it accumulates */
    float twice[B * N];
    memcpy(twice, dz, sizeof dz);
    ml_aux_softmax_bwd(p, c, twice, B, N);
    for (int i = 0; i < B * N; i++) ck_assert_float_eq_tol(twice[i], 2 * dz[i], 1e-7f);
}
END_TEST

/* f = Σ_j c_j g_j(z), g the renormalised top-k gates; NaN when the top k changes */
typedef struct tg_ctx { float *z; const float *c; const int32_t *sel; int n, k; } tg_ctx;

static double tg_f(void *ctx) {
    tg_ctx *t = ctx;
    int32_t now[8] = {0};
    float g[8];
    ml_aux_topk(t->z, t->n, t->k, now);
    if (memcmp(now, t->sel, (size_t)t->k * sizeof *now)) return NAN;
    ml_aux_topk_gates(t->z, t->sel, t->k, g);
    double f = 0;
    for (int j = 0; j < t->k; j++) f += (double)t->c[j] * g[j];
    return f;
}

START_TEST(topk_gates_bwd_finite_differences) {
    enum { n = 7, k = 3 };
    float z[n], c[k], g[k], dz[n] = {0};
    int32_t sel[k];
    tu_fill(z, n, 31, -2, 2);
    tu_fill(c, k, 32, -1, 1);
    ml_aux_topk(z, n, k, sel);
    ml_aux_topk_gates(z, sel, k, g);
    ml_aux_topk_gates_bwd(g, c, sel, k, dz);
    tg_ctx t = {z, c, sel, n, k};
    float *x[1] = {z};
    const float *a[1] = {dz};
    size_t len[1] = {n};
    gradcheck_all(tg_f, &t, x, a, len, 1, "renormalised gate backward");
    /* = g_e = p_e / s to the probabilities, dp_e = (dg_e - <g, dg>) / s, then the softmax
       Jacobian (the derivation in plugin_aux.h), in double */
    double p[n], dp[n] = {0}, s = 0, dot = 0, pdp = 0;
    ref_softmax(z, p, n);
    for (int j = 0; j < k; j++) s += p[sel[j]], dot += (double)g[j] * c[j];
    for (int j = 0; j < k; j++) dp[sel[j]] = (c[j] - dot) / s;
    for (int i = 0; i < n; i++) pdp += p[i] * dp[i];
    for (int i = 0; i < n; i++) {
        double want = p[i] * (dp[i] - pdp);
        ck_assert_msg(fabs(dz[i] - want) < 1e-6, "entry %d: %.9g, by p / s %.9g", i, dz[i], want);
    }
}
END_TEST

/*
 * A softmax router's outputs from its scores z (B, N): prob = softmax(z); top-2 dispatch of
 * every sample with gate = prob (renorm 0; sample 1 dropped) or the renormalised gates
 * (renorm 2); f = Σ c·gate + Σ d·prob + Σ e·z. NaN when the selection changes.
 */
enum { RB = 4, RN = 5, RK = 2 };
typedef struct rt_ctx {
    float z[RB * RN], prob[RB * RN], gate[RB * RK];
    int32_t ds[RB * RK], de[RB * RK], de0[RB * RK];
    float c[RB * RK], d[RB * RN], e[RB * RN];
    int renorm, n0;
    ml_route r;
} rt_ctx;

static void rt_forward(rt_ctx *t) {
    ml_route *r = &t->r;
    memset(r, 0, sizeof *r);
    r->size = sizeof *r, r->B = RB, r->N = RN;
    r->logits = t->z, r->prob = t->prob;
    r->disp_sample = t->ds, r->disp_expert = t->de, r->disp_gate = t->gate;
    ml_aux_softmax(t->z, t->prob, RB, RN);
    for (int b = 0; b < RB; b++) {
        int32_t sel[RK];
        float g[RK];
        ml_aux_topk(t->z + b * RN, RN, RK, sel);
        ml_aux_topk_gates(t->z + b * RN, sel, RK, g);
        if (!t->renorm && b == 1) continue; /* a dropped sample */
        for (int j = 0; j < RK; j++)
            ml_aux_dispatch(r, b, sel[j], t->renorm ? g[j] : t->prob[b * RN + sel[j]]);
    }
}

static double rt_f(void *ctx) {
    rt_ctx *t = ctx;
    rt_forward(t);
    if (t->r.n_disp != t->n0 || memcmp(t->de, t->de0, (size_t)t->n0 * sizeof *t->de)) return NAN;
    double f = 0;
    for (int i = 0; i < t->r.n_disp; i++) f += (double)t->c[i] * t->gate[i];
    for (int i = 0; i < RB * RN; i++) f += (double)t->d[i] * t->prob[i] + (double)t->e[i] * t->z[i];
    return f;
}

START_TEST(softmax_router_bwd_finite_differences) {
    for (int renorm = 0; renorm <= RK; renorm += RK) {
        rt_ctx t;
        memset(&t, 0, sizeof t);
        t.renorm = renorm;
        tu_fill(t.z, RB * RN, 41, -2, 2);
        tu_fill(t.c, RB * RK, 42, -1, 1);
        tu_fill(t.d, RB * RN, 43, -1, 1);
        tu_fill(t.e, RB * RN, 44, -0.5f, 0.5f);
        rt_forward(&t);
        t.n0 = t.r.n_disp;
        ck_assert_int_eq(t.n0, renorm ? RB * RK : (RB - 1) * RK);
        memcpy(t.de0, t.de, sizeof t.de);
        float ds[RB * RN], dp[RB * RN];
        ml_route_grad g = {sizeof g, t.c, t.e, t.d, NULL};
        ml_aux_softmax_router_bwd(&t.r, &g, renorm, ds, dp);
        float *x[1] = {t.z};
        const float *a[1] = {ds};
        size_t n[1] = {RB * RN};
        gradcheck_all(rt_f, &t, x, a, n, 1, renorm ? "router backward, renormalised gates"
                                                   : "router backward, gate = prob");
        /* NULL dprob and dlogits are zeros */
        float ds0[RB * RN], zero[RB * RN] = {0};
        ml_route_grad gn = {sizeof gn, t.c, NULL, NULL, NULL}, gz = {sizeof gz, t.c, zero, zero, NULL};
        ml_aux_softmax_router_bwd(&t.r, &gn, renorm, ds0, dp);
        ml_aux_softmax_router_bwd(&t.r, &gz, renorm, ds, dp);
        ck_assert(!memcmp(ds0, ds, sizeof ds));
    }
}
END_TEST

/* f = Σ c ⊙ (x wᵀ + bias) */
enum { LB = 5, LD = 4, LN = 3 };
typedef struct lin_ctx { float x[LB * LD], w[LN * LD], bias[LN], c[LB * LN]; } lin_ctx;

static double lin_f(void *ctx) {
    lin_ctx *l = ctx;
    float z[LB * LN];
    ml_aux_linear(ml_host_table(), l->x, l->w, l->bias, LB, LD, LN, z);
    double f = 0;
    for (int i = 0; i < LB * LN; i++) f += (double)l->c[i] * z[i];
    return f;
}

START_TEST(linear_forward_backward) {
    const ml_host *h = ml_host_table();
    lin_ctx l;
    tu_fill(l.x, LB * LD, 51, -1, 1);
    tu_fill(l.w, LN * LD, 52, -1, 1);
    tu_fill(l.bias, LN, 53, -1, 1);
    tu_fill(l.c, LB * LN, 54, -1, 1);
    float z[LB * LN];
    ml_aux_linear(h, l.x, l.w, l.bias, LB, LD, LN, z);
    for (int b = 0; b < LB; b++)
        for (int i = 0; i < LN; i++) {
            double want = l.bias[i];
            for (int d = 0; d < LD; d++) want += (double)l.x[b * LD + d] * l.w[i * LD + d];
            ck_assert_double_eq_tol(z[b * LN + i], want, 1e-6);
        }
    float dw[LN * LD] = {0}, db[LN] = {0}, dx[LB * LD] = {0};
    ml_aux_linear_bwd(h, l.x, l.w, l.c, LB, LD, LN, dw, db, dx);
    float *x[3] = {l.x, l.w, l.bias};
    const float *a[3] = {dx, dw, db};
    size_t n[3] = {LB * LD, LN * LD, LN};
    gradcheck_all(lin_f, &l, x, a, n, 3, "linear backward");
    /* accumulates; NULL outputs are skipped; no bias in the forward */
    float dw2[LN * LD], dx2[LB * LD];
    memcpy(dw2, dw, sizeof dw), memcpy(dx2, dx, sizeof dx);
    ml_aux_linear_bwd(h, l.x, l.w, l.c, LB, LD, LN, dw2, NULL, dx2);
    for (int i = 0; i < LN * LD; i++) ck_assert_float_eq_tol(dw2[i], 2 * dw[i], 1e-6f);
    for (int i = 0; i < LB * LD; i++) ck_assert_float_eq_tol(dx2[i], 2 * dx[i], 1e-6f);
    float z0[LB * LN];
    ml_aux_linear(h, l.x, l.w, NULL, LB, LD, LN, z0);
    for (int i = 0; i < LB * LN; i++) ck_assert_float_eq_tol(z0[i] + l.bias[i % LN], z[i], 1e-6f);
    ml_tensor_decl wd = ml_aux_linear_decl("w", LD, LD), bd = ml_aux_linear_decl("b", 1, LD);
    ck_assert_str_eq(wd.name, "w");
    ck_assert(wd.per_expert == 1 && wd.cols == LD && wd.init == ML_INIT_UNIFORM_FANIN && wd.fan_in == LD);
    ck_assert(bd.per_expert == 1 && bd.cols == 1 && bd.fan_in == LD && bd.report == 0);
}
END_TEST

/* ---------------------------------------------------------------- elementwise */

static double ref_softplus(double v) { return v > 0 ? v + log1p(exp(-v)) : log1p(exp(v)); }

START_TEST(sigmoid_softplus_values) {
    static const float vs[] = {-1e4f, -100, -20, -1, -1e-3f, 0, 1e-3f, 1, 20, 100, 1e4f};
    for (size_t i = 0; i < sizeof vs / sizeof *vs; i++) {
        double v = vs[i], sg = 1 / (1 + exp(-v)), sp = ref_softplus(v), ls = -ref_softplus(-v);
        float a = ml_aux_sigmoid(vs[i]), b = ml_aux_softplus(vs[i]), c = ml_aux_log_sigmoid(vs[i]);
        ck_assert(isfinite(a) && isfinite(b) && isfinite(c));
        ck_assert_msg(fabs(a - sg) <= 1e-6 * sg + 1e-40, "sigmoid(%g) = %.9g, want %.9g", v, a, sg);
        ck_assert_msg(fabs(b - sp) <= 1e-6 * sp + 1e-40, "softplus(%g) = %.9g, want %.9g", v, b, sp);
        ck_assert_msg(fabs(c - ls) <= 1e-6 * fabs(ls) + 1e-40, "log_sigmoid(%g) = %.9g, want %.9g", v, c, ls);
    }
    /* softplus' = sigmoid, (log sigmoid)'(v) = sigmoid(-v): central differences in double */
    for (double v = -3; v <= 3; v += 0.75) {
        double h = 1e-3;
        double dsp = (ml_aux_softplus((float)(v + h)) - ml_aux_softplus((float)(v - h))) / (2 * h);
        double dls = (ml_aux_log_sigmoid((float)(v + h)) - ml_aux_log_sigmoid((float)(v - h))) / (2 * h);
        ck_assert_double_eq_tol(dsp, ml_aux_sigmoid((float)v), 1e-3);
        ck_assert_double_eq_tol(dls, ml_aux_sigmoid((float)-v), 1e-3);
    }
}
END_TEST

START_TEST(xlogx_values) {
    ck_assert_double_eq(ml_aux_xlogx(0), 0);
    ck_assert_double_eq(ml_aux_xlogx(1), 0);
    ck_assert_double_eq_tol(ml_aux_xlogx(0.5), 0.5 * log(0.5), 1e-15);
    ck_assert_double_eq_tol(ml_aux_xlogx(1e-20), 1e-20 * log(ML_AUX_P_MIN), 1e-30); /* clamped */
    ck_assert_double_eq_tol(ml_aux_xlogx_grad(0.5), log(0.5) + 1, 1e-15);
    ck_assert_double_eq(ml_aux_xlogx_grad(0), log(ML_AUX_P_MIN));
    for (double p = 0.05; p < 1; p += 0.1) {
        double h = 1e-6, fd = (ml_aux_xlogx(p + h) - ml_aux_xlogx(p - h)) / (2 * h);
        ck_assert_double_eq_tol(ml_aux_xlogx_grad(p), fd, 1e-6);
    }
}
END_TEST

/* ------------------------------------------------------------ dispatch, memory */

START_TEST(dispatch_and_gate_prob_bwd) {
    float gate[4], dp[2 * 3] = {0};
    int32_t ds[4], de[4];
    ml_route r;
    memset(&r, 0, sizeof r);
    r.B = 2, r.N = 3, r.disp_sample = ds, r.disp_expert = de, r.disp_gate = gate;
    ml_aux_dispatch(&r, 0, 2, 0.25f);
    ml_aux_dispatch(&r, 1, 0, 0.5f);
    ml_aux_dispatch(&r, 1, 1, 0.75f);
    ck_assert_int_eq(r.n_disp, 3);
    ck_assert(ds[0] == 0 && de[0] == 2 && gate[0] == 0.25f);
    ck_assert(ds[2] == 1 && de[2] == 1 && gate[2] == 0.75f);
    const float dg[3] = {1, 2, 3};
    ml_aux_gate_prob_bwd(&r, dg, dp);
    ml_aux_gate_prob_bwd(&r, dg, dp); /* accumulates */
    const float want[6] = {0, 0, 2, 4, 6, 0};
    ck_assert(!memcmp(dp, want, sizeof want));
    float dst[3] = {9, 9, 9};
    const float src[3] = {1, 2, 3};
    ml_aux_copy_or_zero(dst, src, 3);
    ck_assert(!memcmp(dst, src, sizeof src));
    ml_aux_copy_or_zero(dst, NULL, 3);
    ck_assert(dst[0] == 0 && dst[1] == 0 && dst[2] == 0);
}
END_TEST

/* A host whose allocations fail after `budget` of them. */
static int budget;
static void *tight_alloc(size_t n) { return budget-- > 0 ? calloc(1, n) : NULL; }

START_TEST(scratch_buffer_and_new) {
    const ml_host *h = ml_host_table();
    long live = ml_host_live_allocs();
    ml_aux_buf b = {0};
    char *p = ml_aux_buf_get(h, &b, 10);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(b.cap, 10);
    ck_assert_ptr_eq(ml_aux_buf_get(h, &b, 5), p); /* smaller: the same block */
    ck_assert_uint_eq(b.cap, 10);
    ck_assert_ptr_nonnull(ml_aux_buf_get(h, &b, 20));
    ck_assert_uint_eq(b.cap, 20);
    ck_assert_int_eq(ml_host_live_allocs(), live + 1); /* the old block was freed */
    ml_aux_buf_free(h, &b);
    ck_assert(b.p == NULL && b.cap == 0);
    ck_assert_int_eq(ml_host_live_allocs(), live);
    ml_aux_buf_free(h, &b); /* empty: a no-op */
    ck_assert_ptr_nonnull(ml_aux_buf_get(h, &b, 0)); /* 0 bytes still gives a block */
    ml_aux_buf_free(h, &b);

    ml_host tight = *h;
    tight.alloc = tight_alloc;
    tight.free = free;
    budget = 1;
    void *q = ml_aux_buf_get(&tight, &b, 8);
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_null(ml_aux_buf_get(&tight, &b, 16)); /* out of memory: b unchanged */
    ck_assert(b.p == q && b.cap == 8);
    ml_aux_buf_free(&tight, &b);

    char err[ML_ERR_MAX] = "";
    budget = 0;
    ck_assert_ptr_null(ml_aux_new(&tight, 64, "my_router", err));
    ck_assert_str_eq(err, "my_router: out of memory");
    unsigned char *obj = ml_aux_new(h, 64, "my_router", err);
    ck_assert_ptr_nonnull(obj);
    for (int i = 0; i < 64; i++) ck_assert_int_eq(obj[i], 0);
    h->free(obj);
}
END_TEST

/* ------------------------------------------------------------------ options */

START_TEST(option_lookup_by_name) {
    static const ml_option opts[3] = {
        {.name = "k", .type = ML_OPT_INT, .def = "2", .min = 1, .max = 64, .doc = ""},
        {.name = "renormalize", .type = ML_OPT_BOOL, .def = "true", .min = 0, .max = -1, .doc = ""},
        {.name = "mode", .type = ML_OPT_ENUM, .def = "a", .min = 0, .max = -1, .choices = "a|b", .doc = ""},
    };
    ml_optval vals[3] = {{.i = 4}, {.i = 0}, {.i = 1, .s = "b"}};
    ck_assert_int_eq(ml_aux_option_index(opts, 3, "k"), 0);
    ck_assert_int_eq(ml_aux_option_index(opts, 3, "mode"), 2);
    ck_assert_int_eq(ml_aux_option_index(opts, 3, "kk"), -1);
    ck_assert_int_eq(ml_aux_option_index(opts, 2, "mode"), -1); /* only n entries are read */
    ck_assert_ptr_eq(ml_aux_option(opts, 3, vals, "renormalize"), &vals[1]);
    ck_assert_str_eq(ml_aux_option(opts, 3, vals, "mode")->s, "b");
    ck_assert_ptr_null(ml_aux_option(opts, 3, vals, "K"));
    /* a built-in plugin's table, with the values the host resolves */
    char path[512];
    snprintf(path, sizeof path, "%s/plugins/softmax_topk.so", tu_build());
    const ml_plugin *p = ml_plugin_load(ML_PLUGIN_ROUTER, path);
    ck_assert_msg(p != NULL, "%s", ml_error());
    ml_optval v[ML_MAX_OPTIONS];
    ck_assert_int_eq(ml_option_defaults(p, v), ML_OK);
    ck_assert_int_eq(ml_aux_option(p->options, p->num_options, v, "k")->i, 2);
    ck_assert_int_eq(ml_aux_option(p->options, p->num_options, v, "renormalize")->i, 1);
    ml_plugins_unload_all();
}
END_TEST

/* -------------------------------------------------------------- row loops, threads */

/*
 * The row loops (plugin_aux.h, Threads): check_aux is built with OpenMP, so a call of
 * 64 x 300 runs on the threads. Softmax, its backward, the top-k dispatch (gates = prob and
 * renormalised), the router backward (both gate kinds, with and without dlogits and dprob),
 * the linear bias and its gradient: on 1, 2 and 3 threads the same bits as the one-row
 * functions called row by row, or the loops by rows of the serial versions. Logits with
 * ties (rounded to 1/8) so that top-k's tie rule is exercised.
 */
enum { PB = 64, PN = 300, PK = 2 };
typedef struct par_out {
    float prob[PB * PN], gate[PB * PK], ds[PB * PN], dp[PB * PN], ds0[PB * PN], dz[PB * PN], z[PB * PN], db[PN];
    int32_t smp[PB * PK], exp_[PB * PK];
    int n_disp;
} par_out;

static void par_run(par_out *o, const float *z, const float *c, const float *d, const float *e, const float *x,
                    const float *w, const float *bias, int renorm, int ref) {
    ml_route r;
    memset(&r, 0, sizeof r);
    memset(o, 0, sizeof *o);
    r.size = sizeof r, r.B = PB, r.N = PN;
    r.logits = (float *)z, r.prob = o->prob;
    r.disp_sample = o->smp, r.disp_expert = o->exp_, r.disp_gate = o->gate;
    ml_route_grad g = {sizeof g, c, e, d, NULL}, gn = {sizeof gn, c, NULL, NULL, NULL};
    const size_t n = (size_t)PB * PN;
    if (ref) { /* row by row, the one-row functions */
        for (int b = 0; b < PB; b++) ml_aux_softmax_row(z + (size_t)b * PN, o->prob + (size_t)b * PN, PN);
        for (int b = 0; b < PB; b++) ml_aux_route_topk_row(&r, z, o->prob, PK, renorm, b);
        r.n_disp = PB * PK;
        if (renorm) {
            for (int b = 0; b < PB; b++) ml_aux_softmax_router_bwd_row(&r, &g, PK, o->ds, o->dp, b);
            for (int b = 0; b < PB; b++) ml_aux_softmax_router_bwd_row(&r, &gn, PK, o->ds0, o->dp, b);
        } else { /* gates that are probabilities: the scatter first, then the rows */
            const ml_route_grad *gs[2] = {&g, &gn};
            float *dss[2] = {o->ds, o->ds0};
            for (int i = 0; i < 2; i++) {
                ml_aux_copy_or_zero(dss[i], gs[i]->dlogits, n);
                ml_aux_copy_or_zero(o->dp, gs[i]->dprob, n);
                ml_aux_gate_prob_bwd(&r, c, o->dp);
                for (int b = 0; b < PB; b++)
                    ml_aux_softmax_bwd_row(o->prob + (size_t)b * PN, o->dp + (size_t)b * PN, dss[i] + (size_t)b * PN, PN);
            }
        }
        for (int b = 0; b < PB; b++)
            ml_aux_softmax_bwd_row(o->prob + (size_t)b * PN, d + (size_t)b * PN, o->dz + (size_t)b * PN, PN);
    } else {
        ml_aux_softmax(z, o->prob, PB, PN);
        ml_aux_route_topk(&r, z, o->prob, PK, renorm);
        ml_aux_softmax_router_bwd(&r, &g, renorm ? PK : 0, o->ds, o->dp);
        ml_aux_softmax_router_bwd(&r, &gn, renorm ? PK : 0, o->ds0, o->dp);
        ml_aux_softmax_bwd(o->prob, d, o->dz, PB, PN);
    }
    o->n_disp = r.n_disp;
    /* the linear's bias: against its loop by rows after the product without bias */
    const ml_host *h = ml_host_table();
    float *z0 = malloc(sizeof o->z);
    ck_assert_ptr_nonnull(z0);
    ml_aux_linear(h, x, w, bias, PB, 8, PN, o->z);
    ml_aux_linear(h, x, w, NULL, PB, 8, PN, z0);
    for (int b = 0; b < PB; b++)
        for (int i = 0; i < PN; i++) z0[b * PN + i] += bias[i];
    ck_assert(!memcmp(z0, o->z, sizeof o->z));
    free(z0);
    memcpy(o->db, bias, sizeof o->db);
    if (ref) {
        for (int b = 0; b < PB; b++)
            for (int i = 0; i < PN; i++) o->db[i] += e[b * PN + i];
    } else {
        ml_aux_linear_bwd(h, x, w, e, PB, 8, PN, NULL, o->db, NULL);
    }
}

START_TEST(row_loops_same_bits_any_thread_count) {
    const size_t n = (size_t)PB * PN;
    float *z = malloc(n * 4), *c = malloc(PB * PK * 4), *d = malloc(n * 4), *e = malloc(n * 4);
    float *x = malloc(PB * 8 * 4), *w = malloc(PN * 8 * 4), *bias = malloc(PN * 4);
    par_out *ref = malloc(sizeof *ref), *got = malloc(sizeof *got);
    ck_assert(z && c && d && e && x && w && bias && ref && got);
    tu_fill(z, n, 61, -4, 4);
    for (size_t i = 0; i < n; i++) z[i] = roundf(z[i] * 8) / 8; /* ties */
    tu_fill(c, PB * PK, 62, -1, 1);
    tu_fill(d, n, 63, -1, 1);
    tu_fill(e, n, 64, -1, 1);
    tu_fill(x, PB * 8, 65, -1, 1);
    tu_fill(w, PN * 8, 66, -1, 1);
    tu_fill(bias, PN, 67, -1, 1);
    ck_assert(ml_aux_par_rows(PB, PN) == (omp_get_max_threads() > 1));
    const int threads0 = omp_get_max_threads();
    for (int renorm = 0; renorm <= 1; renorm++) {
        omp_set_num_threads(1);
        par_run(ref, z, c, d, e, x, w, bias, renorm, 1);
        ck_assert_int_eq(ref->n_disp, PB * PK);
        for (int threads = 1; threads <= 3; threads++) {
            omp_set_num_threads(threads);
            par_run(got, z, c, d, e, x, w, bias, renorm, 0);
            ck_assert_msg(!memcmp(ref, got, sizeof *ref), "renorm %d, %d threads: not the bits of the rows alone",
                          renorm, threads);
        }
    }
    omp_set_num_threads(threads0);
    free(z), free(c), free(d), free(e), free(x), free(w), free(bias), free(ref), free(got);
}
END_TEST

/* ------------------------------------------------------------ header hygiene */

/* The header alone, as a plugin includes it: plain C11 (no _GNU_SOURCE), the plugin
   warnings and -Wpedantic as errors; every function unused, none may warn. */
START_TEST(header_compiles_alone_without_warnings) {
    const char *dir = tu_tmpdir("aux");
    ck_assert_ptr_nonnull(dir);
    char src[512];
    snprintf(src, sizeof src, "%s/only_aux.c", dir);
    FILE *f = fopen(src, "w");
    ck_assert_ptr_nonnull(f);
    fputs("#include \"moelab/plugin_aux.h\"\n#include \"moelab/plugin_aux.h\"\n", f);
    fclose(f);
    /* as a plugin from outside the tree, and as the bundled ones (OpenMP) */
    for (int omp = 0; omp <= 1; omp++) {
        int rc = tu_sh("cc -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes "
                       "-Wpedantic -Werror -O2 -fPIC %s-I core/include -c %s -o %s/only_aux.o",
                       omp ? "-fopenmp " : "", src, dir);
        ck_assert_msg(rc == 0, "plugin_aux.h does not compile cleanly%s:\n%s", omp ? " with -fopenmp" : "", tu_out);
    }
    tu_rm_rf(dir);
}
END_TEST

static Suite *aux_suite(void) {
    Suite *s = suite_create("plugin_aux");
    TCase *t = tcase_create("helpers");
    tcase_set_timeout(t, 60);
    tcase_add_test(t, softmax_matches_double_reference);
    tcase_add_test(t, softmax_equal_logits_equal_probs);
    tcase_add_test(t, softmax_huge_logits);
    tcase_add_test(t, row_max_matches_loop);
    tcase_add_test(t, logsumexp_values);
    tcase_add_test(t, topk_ties_to_lower_index);
    tcase_add_test(t, topk_nan_last);
    tcase_add_test(t, topk_long_rows);
    tcase_add_test(t, topk_gates_are_renormalised_probs);
    tcase_add_test(t, softmax_bwd_finite_differences);
    tcase_add_test(t, topk_gates_bwd_finite_differences);
    tcase_add_test(t, softmax_router_bwd_finite_differences);
    tcase_add_test(t, linear_forward_backward);
    tcase_add_test(t, sigmoid_softplus_values);
    tcase_add_test(t, xlogx_values);
    tcase_add_test(t, dispatch_and_gate_prob_bwd);
    tcase_add_test(t, scratch_buffer_and_new);
    tcase_add_test(t, option_lookup_by_name);
    tcase_add_test(t, row_loops_same_bits_any_thread_count);
    tcase_add_test(t, header_compiles_alone_without_warnings);
    suite_add_tcase(s, t);
    return s;
}

int main(void) { return tu_run(aux_suite()); }
