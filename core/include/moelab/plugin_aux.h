/*
 * moelab/plugin_aux.h — optional helpers for moelab plugins: the numerics the built-in
 * routers and losses share (one softmax, logsumexp, top-k, argmax, their backward, the
 * linear router layer, sigmoid and softplus, p log p), appending a dispatch triple, a
 * grow-only scratch buffer, and option lookup by name.
 *
 * Optional and header-only. Every function is static inline: including this header adds no
 * link dependency and no exported symbol (a plugin still exports only `moelab_plugin`),
 * and nothing in it is part of the ABI — a plugin compiles its own copy, so a later change
 * here never changes a plugin already built. moelab/plugin.h stays the only header a plugin
 * must include; this one includes it. Out of the tree, use the same -I as for plugin.h:
 *
 *     #include "moelab/plugin_aux.h"
 *     cc -O2 -shared -fPIC -fvisibility=hidden -I<moelab>/core/include my_router.c -o my_router.so -lm
 *
 * Conventions. Shapes use the letters of plugin.h: B samples, D features, N experts, K
 * dispatch slots; k experts selected for one sample, n the length of one row. Arrays are
 * row-major. "+=" in a comment means the function accumulates into that output (every
 * backward does, as the ABI asks), "=" that it overwrites it. Sums and dot products run in
 * double and the results are stored as float. Ties in any ranking go to the lower index.
 *
 * Why one softmax: two routers that computed the softmax of the same logits differently
 * (a division in double here, a multiply by a float reciprocal there) gave probabilities
 * that differ in the last bits, so their metrics and losses were not comparable bit for
 * bit. Every built-in router computes it here, one way.
 *
 * Threads. In a plugin compiled with OpenMP (-fopenmp; the bundled plugins are), the row
 * loops of ml_aux_softmax, ml_aux_softmax_bwd, ml_aux_route_topk, ml_aux_softmax_router_bwd
 * and the bias of ml_aux_linear and ml_aux_linear_bwd run on the host's OpenMP threads when
 * a call holds at least ML_AUX_PAR_MIN elements (B·N) and is not made inside a parallel
 * region already (plugin.h, Threads). Each row (each bias element) is computed whole by one
 * thread with the same arithmetic as alone, so the results are the same bits for any thread
 * count, and the same as in a plugin compiled without OpenMP, where every loop runs on the
 * calling thread.
 */
#ifndef MOELAB_PLUGIN_AUX_H
#define MOELAB_PLUGIN_AUX_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* The smallest probability a logarithm sees (ml_aux_xlogx): one-hot rows stay finite. */
#define ML_AUX_P_MIN 1e-12

/* ------------------------------------------------------------------ row loops */

/* The least B·N of a call whose rows are shared among the OpenMP threads: a 64 x 64 softmax
   (4 096 expf) takes some 15 µs on one thread, about twenty times what starting a parallel
   loop costs. */
#define ML_AUX_PAR_MIN 4096

/* 1 when a call over B rows of n elements shares its rows among threads (see Threads above);
   always 0 without OpenMP. */
static inline int ml_aux_par_rows(int B, int n) {
#ifdef _OPENMP
    return B > 1 && (size_t)B * (size_t)n >= ML_AUX_PAR_MIN && !omp_in_parallel() && omp_get_max_threads() > 1;
#else
    (void)B, (void)n;
    return 0;
#endif
}

/* for (int b = 0; b < B; b++) { body }, the iterations shared among the threads when par
   (ml_aux_par_rows); the body is the macro's last arguments (it may hold commas) */
#ifdef _OPENMP
#define ML_AUX_FOR_ROWS(par, b, B, ...)                                                                 \
    do {                                                                                               \
        if (par) {                                                                                     \
            _Pragma("omp parallel for schedule(static)") for (int b = 0; b < (B); b++) { __VA_ARGS__; } \
        } else {                                                                                       \
            for (int b = 0; b < (B); b++) { __VA_ARGS__; }                                             \
        }                                                                                              \
    } while (0)
#else
#define ML_AUX_FOR_ROWS(par, b, B, ...)                \
    do {                                               \
        (void)(par);                                   \
        for (int b = 0; b < (B); b++) { __VA_ARGS__; } \
    } while (0)
#endif

/* ------------------------------------------------------------------------ softmax */

/* The largest z_i of a row (n >= 1) as the loop 'm = z_0; if (z_i > m) m = z_i' finds it, in
   16 lanes when the row is long (no chain of n dependent compares): a NaN never wins a
   compare either way (a NaN z_0 stays), only the sign of a zero maximum may differ. Not
   inlined: the lanes read past short rows as far as the compiler can tell. */
static __attribute__((noinline, unused)) float ml_aux_row_max(const float *z, int n) {
    float m = z[0];
    int i = 1;
    if (n >= 32 && m == m) {
        float l[16];
        for (int j = 0; j < 16; j++) l[j] = m;
        for (i = 0; i + 16 <= n; i += 16)
            for (int j = 0; j < 16; j++) l[j] = z[i + j] > l[j] ? z[i + j] : l[j];
        for (int j = 0; j < 16; j++)
            if (l[j] > m) m = l[j];
    }
    for (; i < n; i++)
        if (z[i] > m) m = z[i];
    return m;
}

/*
 * p = softmax(z) row by row; z, p (B, N); p may be z. ml_aux_softmax_row: one row (N ≥ 1).
 *
 *     p_i = exp(z_i − m) / Σ_j exp(z_j − m),   m = max_j z_j
 *
 * The exponentials in float (expf), their sum s in double, then one multiply of each by
 * (float)(1 / s). The largest term is exp(0) = 1, so s ≥ 1: finite for any finite logits
 * (±1e4 included), never 0/0; a row sums to 1 within float rounding; equal logits give
 * bitwise equal probabilities.
 */
static inline void ml_aux_softmax_row(const float *zr, float *pr, int N) {
    const float m = ml_aux_row_max(zr, N);
    double s = 0;
    for (int i = 0; i < N; i++) s += pr[i] = expf(zr[i] - m);
    float inv = (float)(1.0 / s);
    for (int i = 0; i < N; i++) pr[i] *= inv;
}

static inline void ml_aux_softmax(const float *z, float *p, int B, int N) {
    if (N <= 0) return;
    ML_AUX_FOR_ROWS(ml_aux_par_rows(B, N), b, B, ml_aux_softmax_row(z + (size_t)b * N, p + (size_t)b * N, N));
}

/*
 * Backward of p = softmax(z) row by row: given p and dp = dL/dp, (B, N) each,
 *
 *     dz (B, N) += p ⊙ (dp − ⟨p, dp⟩)        (the softmax Jacobian-vector product)
 *
 * with ⟨p, dp⟩ and each difference in double. dz must not be dp. ml_aux_softmax_bwd_row: one row.
 */
static inline void ml_aux_softmax_bwd_row(const float *pr, const float *dpr, float *dzr, int N) {
    double dot = 0;
    for (int i = 0; i < N; i++) dot += (double)pr[i] * dpr[i];
    for (int i = 0; i < N; i++) dzr[i] += (float)(pr[i] * ((double)dpr[i] - dot));
}

static inline void ml_aux_softmax_bwd(const float *p, const float *dp, float *dz, int B, int N) {
    if (N <= 0) return;
    ML_AUX_FOR_ROWS(ml_aux_par_rows(B, N), b, B,
                    ml_aux_softmax_bwd_row(p + (size_t)b * N, dp + (size_t)b * N, dz + (size_t)b * N, N));
}

/*
 * log Σ_i exp(z_i) of one row z (n ≥ 1), in double: m + log Σ_i exp(z_i − m), m = max z.
 * Its gradient is softmax(z): d/dz_i = exp(z_i − logsumexp(z)).
 */
static inline double ml_aux_logsumexp(const float *z, int n) {
    double m = z[0], s = 0;
    for (int i = 1; i < n; i++)
        if (z[i] > m) m = z[i];
    for (int i = 0; i < n; i++) s += exp(z[i] - m);
    return m + log(s);
}

/* ---------------------------------------------------------------- top-k, argmax */

/*
 * 1 when entry i of z ranks before entry j: the larger value first, the lower index on
 * ties; a NaN ranks after every number (so a broken row still yields distinct indices).
 */
static inline int ml_aux_ranks_before(const float *z, int i, int j) {
    float a = z[i], c = z[j];
    if (isnan(a)) return isnan(c) && i < j;
    if (isnan(c)) return 1;
    return a > c || (a == c && i < j);
}

/* Index of the largest z_i of one row z (n ≥ 1); ties go to the lower index. */
static inline int ml_aux_argmax(const float *z, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (ml_aux_ranks_before(z, i, best)) best = i;
    return best;
}

/*
 * sel (k) = the indices of the k largest entries of one row z (n), largest first, ties to
 * the lower index (the order of ml_aux_ranks_before); 1 ≤ k ≤ n. Routers rank by logits,
 * not probabilities: logits whose probabilities both underflowed to 0 are still told
 * apart. One pass and no scratch: sel holds the best entries seen so far, in order; an entry
 * that does not rank before the last of k is passed over with one comparison (16 at a time
 * when none of them does), the others are inserted in place (O(n) for a row in random
 * order, O(k·n) at worst). The order is total, so the k picks are those of any exact method.
 */
static inline void ml_aux_topk(const float *z, int n, int k, int32_t *sel) {
    int have = 0;
    for (int i = 0; i < n; i++) {
        if (have == k) {
            /* the entries after the last pick rank before it exactly when they are greater
               (when it is not NaN): runs of 16 that hold none are passed over at once */
            const float c = z[sel[k - 1]];
            if (c == c)
                while (i + 16 <= n) {
                    int any = 0;
                    for (int j = 0; j < 16; j++) any |= z[i + j] > c;
                    if (any) break;
                    i += 16;
                }
            if (i == n) break;
            if (!ml_aux_ranks_before(z, i, sel[k - 1])) continue;
        }
        int p = have < k ? have++ : k - 1;
        for (; p > 0 && ml_aux_ranks_before(z, i, sel[p - 1]); p--) sel[p] = sel[p - 1];
        sel[p] = i;
    }
}

/*
 * The gates of renormalised top-k for one row: given logits z (n) and a selection sel (k),
 *
 *     g_j = p_{sel_j} / s,   p = softmax(z),   s = Σ_t p_{sel_t}            g (k)
 *
 * computed as the softmax of the selected logits (ml_aux_softmax), which is the same
 * value and stays defined when every selected probability underflows.
 */
static inline void ml_aux_topk_gates(const float *z, const int32_t *sel, int k, float *g) {
    for (int j = 0; j < k; j++) g[j] = z[sel[j]];
    ml_aux_softmax(g, g, 1, k);
}

/*
 * Backward of the renormalised top-k gates (ml_aux_topk_gates) to the logits of one row:
 * given the gates g (k), dg = dL/dg (k) and the selection sel (k),
 *
 *     dz_{sel_j} += g_j (dg_j − ⟨g, dg⟩)          dz (n); nothing outside the selection
 *
 * This is g_e = p_e / s differentiated to the probabilities, dp_e = (dg_e − ⟨g, dg⟩) / s
 * at each selected e, then through the softmax Jacobian of p = softmax(z): its ⟨p, dp⟩
 * term is Σ_e g_e (dg_e − ⟨g, dg⟩) = 0, which leaves p_e dp_e = the line above. It needs
 * neither p nor s, so it stays exact when they underflow. ⟨g, dg⟩ in double.
 */
static inline void ml_aux_topk_gates_bwd(const float *g, const float *dg, const int32_t *sel,
                                         int k, float *dz) {
    double dot = 0;
    for (int j = 0; j < k; j++) dot += (double)g[j] * dg[j];
    for (int j = 0; j < k; j++) dz[sel[j]] += (float)(g[j] * ((double)dg[j] - dot));
}

/* ------------------------------------------------------------ dispatch and gates */

/* Appends the triple (sample b, expert e, gate) to r's dispatch list. */
static inline void ml_aux_dispatch(ml_route *r, int32_t b, int32_t e, float gate) {
    r->disp_sample[r->n_disp] = b;
    r->disp_expert[r->n_disp] = e;
    r->disp_gate[r->n_disp] = gate;
    r->n_disp++;
}

/*
 * The top-k dispatch of a softmax router: each sample b goes to the k experts that rank
 * first in its row of the scores s (B, N) (ml_aux_topk: by logits, not probabilities), in
 * rank order, with gate p[b, e] (p (B, N), its probabilities), or with renorm the
 * renormalised gates over s (ml_aux_topk_gates). Writes the B·k triples in sample order
 * (sample b's at [b·k, b·k + k), as ml_aux_dispatch would append them), sets r->n_disp = B·k
 * and r->n_dropped = 0. 1 ≤ k ≤ min(N, 64). The rows are shared among the threads (Threads).
 */
static inline void ml_aux_route_topk_row(ml_route *r, const float *s, const float *p, int k, int renorm, int b) {
    const int N = r->N;
    const float *z = s + (size_t)b * N, *pr = p + (size_t)b * N;
    int32_t sel[64];
    float g[64];
    ml_aux_topk(z, N, k, sel);
    if (renorm) ml_aux_topk_gates(z, sel, k, g);
    for (int j = 0; j < k; j++) {
        const size_t t = (size_t)b * k + j;
        r->disp_sample[t] = b;
        r->disp_expert[t] = sel[j];
        r->disp_gate[t] = renorm ? g[j] : pr[sel[j]];
    }
}

static inline void ml_aux_route_topk(ml_route *r, const float *s, const float *p, int k, int renorm) {
    const int B = r->B;
    ML_AUX_FOR_ROWS(ml_aux_par_rows(B, r->N), b, B, ml_aux_route_topk_row(r, s, p, k, renorm, b));
    r->n_disp = B * k;
    r->n_dropped = 0;
}

/*
 * Backward of gates that are probabilities (gate_t = p[sample_t, expert_t]) over r's
 * dispatch list: dp (B, N) += dgate (K) at each triple's (sample, expert).
 */
static inline void ml_aux_gate_prob_bwd(const ml_route *r, const float *dgate, float *dp) {
    for (int t = 0; t < r->n_disp; t++)
        dp[(size_t)r->disp_sample[t] * r->N + r->disp_expert[t]] += dgate[t];
}

/* dst (n) = src, or 0 everywhere when src is NULL (a gradient the host may not pass). */
static inline void ml_aux_copy_or_zero(float *dst, const float *src, size_t n) {
    if (src) memcpy(dst, src, n * sizeof *dst);
    else memset(dst, 0, n * sizeof *dst);
}

/*
 * The backward of a softmax router to the scores s (B, N) its probabilities come from,
 * r->prob = softmax(s) row by row (s = r->logits for most routers), given the route r of
 * the forward and the host's gradients g (g->dprob, g->dlogits may be NULL). The gates are
 *   renorm_k = 0: probabilities, gate_t = prob[sample_t, expert_t], for any dispatch list
 *                 (top-k, capacity drops, expert choice);
 *   renorm_k = k: renormalised top-k (ml_aux_topk_gates over s), k triples per sample,
 *                 sample b's at [b·k, b·k + k) (every sample routed, in sample order).
 *
 *     ds = dlogits + J_softmax(prob)ᵀ (dprob + dgate at the dispatched pairs)     (0)
 *     ds = dlogits + J_softmax(prob)ᵀ dprob + ml_aux_topk_gates_bwd(per sample)  (k)
 *
 * ds (B, N) is overwritten; dp (B, N) is scratch. A router whose scores are not its logits
 * passes a copy of g with dlogits NULL and adds dlogits after its own chain rule.
 * ml_aux_softmax_router_bwd_row: row b alone, for renormalised gates (renorm_k = k) or
 * without g->dgate (gates that are probabilities need the scatter over the whole list first).
 */
static inline void ml_aux_softmax_router_bwd_row(const ml_route *r, const ml_route_grad *g, int k, float *ds,
                                                 float *dp, int b) {
    const size_t N = (size_t)r->N, o = (size_t)b * N;
    ml_aux_copy_or_zero(ds + o, g->dlogits ? g->dlogits + o : NULL, N);
    ml_aux_copy_or_zero(dp + o, g->dprob ? g->dprob + o : NULL, N);
    if (g->dgate && k > 0)
        ml_aux_topk_gates_bwd(r->disp_gate + (size_t)b * k, g->dgate + (size_t)b * k,
                              r->disp_expert + (size_t)b * k, k, ds + o);
    ml_aux_softmax_bwd_row(r->prob + o, dp + o, ds + o, (int)N);
}

static inline void ml_aux_softmax_router_bwd(const ml_route *r, const ml_route_grad *g,
                                             int renorm_k, float *ds, float *dp) {
    int B = r->B, N = r->N, k = renorm_k;
    size_t bn = (size_t)B * N;
    if (g->dgate && k == 0) { /* gates that are probabilities: their scatter over the dispatch list first */
        ml_aux_copy_or_zero(ds, g->dlogits, bn);
        ml_aux_copy_or_zero(dp, g->dprob, bn);
        ml_aux_gate_prob_bwd(r, g->dgate, dp);
        ml_aux_softmax_bwd(r->prob, dp, ds, B, N);
        return;
    }
    /* otherwise each row alone: the same additions to each element in the same order */
    if (N > 0) ML_AUX_FOR_ROWS(ml_aux_par_rows(B, N), b, B, ml_aux_softmax_router_bwd_row(r, g, k, ds, dp, b));
}

/* ----------------------------------------------------------------- linear router */

/*
 * The declaration of a per-expert parameter tensor (N, cols) initialised as PyTorch's
 * nn.Linear, U(−1/√fan_in, 1/√fan_in). A linear router over D features declares its weight
 * as ml_aux_linear_decl("w", D, D) and its bias as ml_aux_linear_decl("b", 1, D).
 */
static inline ml_tensor_decl ml_aux_linear_decl(const char *name, int cols, int fan_in) {
    ml_tensor_decl d = {.name = name, .per_expert = 1, .cols = cols,
                        .init = ML_INIT_UNIFORM_FANIN, .fan_in = fan_in};
    return d;
}

/*
 * z (B, N) = x (B, D) · w (N, D)ᵀ + bias (N), through host->sgemm; bias may be NULL.
 */
static inline void ml_aux_linear(const ml_host *h, const float *x, const float *w,
                                 const float *bias, int B, int D, int N, float *z) {
    h->sgemm(0, 1, B, N, D, 1.0f, x, D, w, D, 0.0f, z, N);
    if (bias)
        ML_AUX_FOR_ROWS(ml_aux_par_rows(B, N), b, B,
                        for (int i = 0; i < N; i++) z[(size_t)b * N + i] += bias[i]);
}

/*
 * Backward of ml_aux_linear, given x (B, D), w (N, D) and dz = dL/dz (B, N):
 *
 *     dw (N, D) += dzᵀ x,   dbias (N) += Σ_b dz[b, :],   dx (B, D) += dz w
 *
 * Any of dw, dbias, dx may be NULL (not wanted).
 */
static inline void ml_aux_linear_bwd(const ml_host *h, const float *x, const float *w,
                                     const float *dz, int B, int D, int N, float *dw,
                                     float *dbias, float *dx) {
    if (dw) h->sgemm(1, 0, N, D, B, 1.0f, dz, N, x, D, 1.0f, dw, D);
    if (dbias) /* expert by expert, each adding its rows in order: the bits of the loop by rows */
        ML_AUX_FOR_ROWS(ml_aux_par_rows(B, N), i, N, float acc = dbias[i];
                        for (int b = 0; b < B; b++) acc += dz[(size_t)b * N + i]; dbias[i] = acc);
    if (dx) h->sgemm(0, 0, B, D, N, 1.0f, dz, N, w, D, 1.0f, dx, D);
}

/* -------------------------------------------------------- elementwise functions */

/* σ(v) = 1 / (1 + e^−v), with no overflow for any v. σ' = σ (1 − σ). */
static inline float ml_aux_sigmoid(float v) {
    if (v >= 0) return 1.0f / (1.0f + expf(-v));
    float e = expf(v);
    return e / (1.0f + e);
}

/* softplus(v) = log(1 + e^v), with no overflow: v + log1p(e^−v) for v > 0. softplus' = σ. */
static inline float ml_aux_softplus(float v) {
    return v > 0 ? v + log1pf(expf(-v)) : log1pf(expf(v));
}

/* log σ(v) = −softplus(−v), finite for any finite v. (log σ)'(v) = σ(−v). */
static inline float ml_aux_log_sigmoid(float v) { return -ml_aux_softplus(-v); }

/*
 * h(p) = p · log max(p, ML_AUX_P_MIN), the term of −H(p) = Σ_i h(p_i); 0 at p = 0.
 * ml_aux_xlogx_grad: h'(p) = log p + 1 for p ≥ ML_AUX_P_MIN, log ML_AUX_P_MIN below.
 */
static inline double ml_aux_xlogx(double p) { return p * log(p > ML_AUX_P_MIN ? p : ML_AUX_P_MIN); }
static inline double ml_aux_xlogx_grad(double p) {
    return p >= ML_AUX_P_MIN ? log(p) + 1 : log(ML_AUX_P_MIN);
}

/* ------------------------------------------------------------------------ memory */

/*
 * size zero-filled bytes through host->alloc, for the instance a create returns; NULL
 * after writing "<who>: out of memory" into err (ML_ERR_MAX bytes).
 */
static inline void *ml_aux_new(const ml_host *h, size_t size, const char *who, char *err) {
    void *p = h->alloc(size);
    if (!p) snprintf(err, ML_ERR_MAX, "%s: out of memory", who);
    return p;
}

/* A buffer that only grows, for per-call scratch kept between calls. Start it zeroed. */
typedef struct ml_aux_buf {
    void *p;
    size_t cap; /* bytes */
} ml_aux_buf;

/*
 * b->p with room for at least n bytes (at least 1), through host->alloc; NULL when out of
 * memory (b is then unchanged). When it grows the old contents are not kept (the new block
 * is zero-filled); otherwise it holds what was last written.
 */
static inline void *ml_aux_buf_get(const ml_host *h, ml_aux_buf *b, size_t n) {
    if (n == 0) n = 1;
    if (n > b->cap) {
        void *q = h->alloc(n);
        if (!q) return NULL;
        h->free(b->p);
        b->p = q;
        b->cap = n;
    }
    return b->p;
}

/* Frees b's memory through host->free and empties it; an empty b is a no-op. */
static inline void ml_aux_buf_free(const ml_host *h, ml_aux_buf *b) {
    h->free(b->p);
    b->p = NULL;
    b->cap = 0;
}

/* --------------------------------------------------------------- options by name */

/* Index of the option called name in a table opt of n options, or -1 when it has none. */
static inline int ml_aux_option_index(const ml_option *opt, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (opt[i].name && strcmp(opt[i].name, name) == 0) return i;
    return -1;
}

/*
 * The value of option `name`: &vals[i] for its index i in the table opt (n options), or
 * NULL when the table has no such option. vals is an array the host passed in table order
 * (init->opt, ev->opt), so a plugin need not hard-code positions:
 *
 *     const ml_optval *k = ml_aux_option(options, NUM_OPTS, init->opt, "k");
 *     r->k = (int)k->i;
 *
 * (A name written in the plugin's own table, as here, is always found; a name that comes
 * from elsewhere needs the NULL check.)
 */
static inline const ml_optval *ml_aux_option(const ml_option *opt, int n, const ml_optval *vals,
                                             const char *name) {
    int i = ml_aux_option_index(opt, n, name);
    return i < 0 ? NULL : &vals[i];
}

/* ---------------------------------------------------------- schedules (ABI 1.2) */

/*
 * Dead experts, counted in steps (a schedule's per-expert state, ml_schedule_obs): idle[e]
 * is how many training steps in a row expert e has had no dispatched slot. After each step:
 * 0 for the experts the step dispatched to, +1 for the others. A float counts steps exactly
 * up to 2^24; the count stops there.
 */
static inline void ml_aux_idle_update(float *idle, const ml_routing_record *r) {
    for (int e = 0; e < r->N; e++)
        if (idle[e] < 16777216.0f) idle[e] += 1.0f;
    for (int t = 0; t < r->n_disp; t++) {
        int32_t e = r->disp_expert[t];
        if (e >= 0 && e < r->N) idle[e] = 0.0f;
    }
}

/*
 * The experts idle for at least `window` steps, most idle first (ties: the higher id first),
 * at most N - min_keep of them (never every expert): their ids into ids, returns how many.
 */
static inline int ml_aux_dead_experts(const float *idle, int N, double window, int min_keep, int32_t *ids) {
    int n = 0;
    for (int e = 0; e < N; e++)
        if (idle[e] >= window) {
            int k = n++;
            /* insertion by (idle desc, id desc) */
            while (k > 0 && (idle[ids[k - 1]] < idle[e] || (idle[ids[k - 1]] == idle[e] && ids[k - 1] < e))) {
                ids[k] = ids[k - 1];
                k--;
            }
            ids[k] = e;
        }
    int room = N - (min_keep > 1 ? min_keep : 1);
    return n < room ? n : room > 0 ? room : 0;
}

#endif
