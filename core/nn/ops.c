/* ops.c — linear, ReLU, sigmoid and MSE kernels. */
#include "nn/ops.h"

#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define PAR_BLOCK ((size_t)1 << 14) /* floats per block of ml_zero and ml_copy */

void ml_zero(float *x, size_t n) {
    const size_t nb = (n + PAR_BLOCK - 1) / PAR_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (size_t b = 0; b < nb; b++) {
        const size_t o = b * PAR_BLOCK;
        memset(x + o, 0, sizeof(float) * (n - o < PAR_BLOCK ? n - o : PAR_BLOCK));
    }
}

void ml_copy(float *dst, const float *src, size_t n) {
    const size_t nb = (n + PAR_BLOCK - 1) / PAR_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (size_t b = 0; b < nb; b++) {
        const size_t o = b * PAR_BLOCK;
        memcpy(dst + o, src + o, sizeof(float) * (n - o < PAR_BLOCK ? n - o : PAR_BLOCK));
    }
}

void ml_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* sgemm with K = 0 must still scale C */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0 ? 0 : beta * C[(size_t)i * ldc + j];
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ml_linear_forward(float *y, const float *x, const float *w, const float *b, int B, int In, int Out) {
    if (b) {
        for (int r = 0; r < B; r++) memcpy(y + (size_t)r * Out, b, (size_t)Out * sizeof(float));
        ml_sgemm(0, 1, B, Out, In, 1.0f, x, In, w, In, 1.0f, y, Out);
    } else {
        ml_sgemm(0, 1, B, Out, In, 1.0f, x, In, w, In, 0.0f, y, Out);
    }
}

/* set: dw and db overwritten (beta 0, the first row copied), else accumulated */
static void linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                            int B, int In, int Out, int set) {
    if (B <= 0) return;
    if (dx) ml_sgemm(0, 0, B, In, Out, 1.0f, dy, Out, w, In, 1.0f, dx, In);
    if (dw) ml_sgemm(1, 0, Out, In, B, 1.0f, dy, Out, x, In, set ? 0.0f : 1.0f, dw, In);
    if (db) {
        int r = 0;
        if (set) memcpy(db, dy, (size_t)Out * sizeof(float)), r = 1;
        for (; r < B; r++) {
            const float *row = dy + (size_t)r * Out;
            for (int o = 0; o < Out; o++) db[o] += row[o];
        }
    }
}

void ml_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int B, int In, int Out) {
    linear_backward(dx, dw, db, dy, x, w, B, In, Out, 0);
}

void ml_linear_backward_set(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, int B, int In, int Out) {
    linear_backward(dx, dw, db, dy, x, w, B, In, Out, 1);
}

/* ------------------------------------------------ prefetch streams */

void ml_pf_init(ml_pf *s, int write) {
    memset(s, 0, sizeof *s);
    s->write = write;
}

void ml_pf_add(ml_pf *s, const void *p, size_t bytes) {
    if (s->n < ML_PF_SPANS && p && bytes) s->p[s->n] = p, s->len[s->n++] = bytes;
}

static inline void pf_lines(ml_pf *s, size_t lines) {
    while (lines > 0 && s->i < s->n) {
        const char *p = s->p[s->i] + s->at;
        if (s->write)
            __builtin_prefetch(p, 1);
        else
            __builtin_prefetch(p, 0);
        lines--;
        s->at += 64;
        if (s->at >= s->len[s->i]) s->i++, s->at = 0;
    }
}

void ml_pf_advance(ml_pf *s, size_t lines) { pf_lines(s, lines); }

/* ------------------------------------------------ the backward of few rows */

enum { ROWS_MAX = 8, ROWS_IN_MAX = 256 };

#if defined(__AVX512F__)
/* The shapes backward_rows takes: up to ROWS_MAX rows, In a multiple of 16 up to ROWS_IN_MAX,
   at most 10^6 multiply-adds (where OpenBLAS 0.3.21 takes its small-matrix kernels). */
static int rows_fit(int B, int In, int Out) {
    return B >= 1 && B <= ROWS_MAX && In % 16 == 0 && In >= 16 && In <= ROWS_IN_MAX && Out >= 1 &&
           (double)B * In * Out <= 1e6;
}

/* dx (B, In) += dy · w, dw (Out, In) = dy^T · x, db (Out) = sum_b dy (db may be NULL), one
   output row o at a time: w's row o read once for all B rows of dx, dw's row o written once,
   and before them the next In / 16 lines of rd and wr asked for. The additions are
   OpenBLAS's (rows_check): each dx element a chain of FMAs over o from +0, added to dx at
   the end; each dw element one over the rows from +0; db as linear_backward's. With dw_abs,
   the sum of |dw| as ml_linear_backward_set_pf says, while dw's rows are in registers. */
static void backward_rows(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w, int B,
                          int In, int Out, ml_pf *rd, ml_pf *wr, double *dw_abs) {
    const int nv = In / 16;
    __m512 acc[ROWS_MAX][ROWS_IN_MAX / 16]; /* (B, In) */
    __m512d sa = _mm512_setzero_pd(); /* lane l: |dw[i]| for i = l mod 8, in order */
    for (int r = 0; r < B; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    for (int o = 0; o < Out; o++) {
        const float *wo = w + (size_t)o * In;
        float *go = dw + (size_t)o * In;
        if (rd) pf_lines(rd, (size_t)nv);
        if (wr) pf_lines(wr, (size_t)nv);
        if (db) {
            float s = dy[o];
            for (int r = 1; r < B; r++) s += dy[(size_t)r * Out + o];
            db[o] = s;
        }
        for (int v = 0; v < nv; v++) {
            const __m512 wv = _mm512_loadu_ps(wo + 16 * v), d0 = _mm512_set1_ps(dy[o]);
            __m512 g = _mm512_fmadd_ps(d0, _mm512_loadu_ps(x + 16 * v), _mm512_setzero_ps());
            acc[0][v] = _mm512_fmadd_ps(d0, wv, acc[0][v]);
            for (int r = 1; r < B; r++) {
                const __m512 d = _mm512_set1_ps(dy[(size_t)r * Out + o]);
                g = _mm512_fmadd_ps(d, _mm512_loadu_ps(x + (size_t)r * In + 16 * v), g);
                acc[r][v] = _mm512_fmadd_ps(d, wv, acc[r][v]);
            }
            _mm512_storeu_ps(go + 16 * v, g);
            if (dw_abs) {
                const __m512 a = _mm512_abs_ps(g);
                sa = _mm512_add_pd(sa, _mm512_cvtps_pd(_mm512_castps512_ps256(a)));
                sa = _mm512_add_pd(sa, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1))));
            }
        }
    }
    if (dw_abs) {
        double l[8];
        _mm512_storeu_pd(l, sa);
        *dw_abs = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
    }
    if (dx)
        for (int r = 0; r < B; r++)
            for (int v = 0; v < nv; v++) {
                float *p = dx + (size_t)r * In + 16 * v;
                _mm512_storeu_ps(p, _mm512_add_ps(acc[r][v], _mm512_loadu_ps(p)));
            }
}

/* Whether ml_linear_backward_set (OpenBLAS) gives backward_rows's bits: shapes 16 to 256 wide,
   1 to ROWS_MAX rows, zeros of both signs among the inputs, dx not zero. One caller at a
   time: its buffers are static (a malloc and free of this size would raise glibc's mmap
   threshold, and so move where the process's later buffers go). */
static int rows_check(void) {
    static const int shapes[][2] = {{64, 128}, {128, 64}, {16, 48}, {256, 32}, {32, 256}, {96, 80}};
    enum { CAP = ROWS_MAX * ROWS_IN_MAX, WCAP = 64 * 128 };
    static float dy[CAP], x[CAP], dx1[CAP], dx2[CAP], db1[ROWS_IN_MAX], db2[ROWS_IN_MAX];
    static float w[WCAP], dw1[WCAP], dw2[WCAP];
    uint32_t seed = 12345;
    int same = 1;
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes && same; k++) {
        const int In = shapes[k][0], Out = shapes[k][1];
        for (int B = 1; B <= ROWS_MAX && same; B++) {
            float *fill[] = {dy, x, w, dx1};
            const int len[] = {B * Out, B * In, Out * In, B * In};
            for (int a = 0; a < 4; a++)
                for (int i = 0; i < len[a]; i++) {
                    seed = seed * 1664525u + 1013904223u;
                    const uint32_t r = seed >> 8;
                    fill[a][i] = r % 7 == 0 ? (r & 1 ? -0.0f : 0.0f) : (float)r / (float)(1 << 23) - 1.0f;
                }
            memcpy(dx2, dx1, sizeof(float) * B * In);
            ml_linear_backward_set(dx1, dw1, db1, dy, x, w, B, In, Out);
            backward_rows(dx2, dw2, db2, dy, x, w, B, In, Out, NULL, NULL, NULL);
            same = !memcmp(dx1, dx2, sizeof(float) * B * In) && !memcmp(dw1, dw2, sizeof(float) * Out * In) &&
                   !memcmp(db1, db2, sizeof(float) * Out);
        }
    }
    return same;
}

static int rows_state; /* 0: not known yet, 1: backward_rows gives OpenBLAS's bits, 2: not */
#endif

int ml_linear_backward_rows_max(void) {
#if defined(__AVX512F__)
    /* the first call checks */
    int s = __atomic_load_n(&rows_state, __ATOMIC_ACQUIRE);
    if (!s) {
#pragma omp critical(ml_linear_rows_check)
        {
            s = __atomic_load_n(&rows_state, __ATOMIC_ACQUIRE);
            if (!s) {
                s = rows_check() ? 1 : 2;
                __atomic_store_n(&rows_state, s, __ATOMIC_RELEASE);
            }
        }
    }
    return s == 1 ? ROWS_MAX : 0;
#else
    return 0;
#endif
}

int ml_linear_backward_set_pf(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                              int B, int In, int Out, ml_pf *rd, ml_pf *wr, double *dw_abs) {
#if defined(__AVX512F__)
    if (dw && rows_fit(B, In, Out) && ml_linear_backward_rows_max()) {
        backward_rows(dx, dw, db, dy, x, w, B, In, Out, rd, wr, dw_abs);
        return dw_abs != NULL;
    }
#endif
    (void)rd, (void)wr;
    ml_linear_backward_set(dx, dw, db, dy, x, w, B, In, Out);
    return 0;
}

void ml_relu_forward(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : 0;
}

void ml_relu_backward(float *dx, const float *dy, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += y[i] > 0 ? dy[i] : 0;
}

void ml_sigmoid_forward(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i]));
}

void ml_sigmoid_backward(float *dx, const float *dy, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += dy[i] * y[i] * (1.0f - y[i]);
}

/* sum of (a - t)^2 over one block, in 8 double lanes (element i in lane i mod 8), the lanes
 * then added in order: vectorises without reassociation */
static double sq_diff_block(const float *a, const float *t, size_t m) {
    double acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= m; i += 8)
#pragma omp simd
        for (int l = 0; l < 8; l++) {
            const double d = (double)a[i + l] - t[i + l];
            acc[l] += d * d;
        }
    for (int l = 0; i < m; i++, l++) {
        const double d = (double)a[i] - t[i];
        acc[l] += d * d;
    }
    double s = 0;
    for (int l = 0; l < 8; l++) s += acc[l];
    return s;
}

/* The blocks of PAR_BLOCK floats are summed on the OpenMP threads, up to 256 at a time, and
 * their sums added in block order: the same bits for any thread count. */
double ml_mse_forward(const float *a, const float *target, size_t n) {
    const size_t nb = (n + PAR_BLOCK - 1) / PAR_BLOCK;
    double s = 0;
    for (size_t g = 0; g < nb; g += 256) {
        double part[256];
        const size_t gn = nb - g < 256 ? nb - g : 256;
#pragma omp parallel for schedule(static) if (gn > 1)
        for (size_t j = 0; j < gn; j++) {
            const size_t o = (g + j) * PAR_BLOCK;
            part[j] = sq_diff_block(a + o, target + o, n - o < PAR_BLOCK ? n - o : PAR_BLOCK);
        }
        for (size_t j = 0; j < gn; j++) s += part[j];
    }
    return n ? s / (double)n : 0;
}

void ml_mse_backward(float *da, const float *a, const float *target, size_t n, float scale) {
    float k = 2.0f * scale / (float)n;
    for (size_t i = 0; i < n; i++) da[i] += k * (a[i] - target[i]);
}

void ml_mse_backward_set(float *da, const float *a, const float *target, size_t n, float scale) {
    const float k = 2.0f * scale / (float)n;
    const size_t nb = (n + PAR_BLOCK - 1) / PAR_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (size_t b = 0; b < nb; b++) {
        const size_t o = b * PAR_BLOCK, m = n - o < PAR_BLOCK ? n - o : PAR_BLOCK;
        float *d = da + o;
        const float *x = a + o, *t = target + o;
        memset(d, 0, sizeof(float) * m);
        for (size_t i = 0; i < m; i++) d[i] += k * (x[i] - t[i]);
    }
}
