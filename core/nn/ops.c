/* ops.c — linear, ReLU, sigmoid and MSE kernels. */
#include "nn/ops.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

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

double ml_mse_forward(const float *a, const float *target, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - target[i];
        s += d * d;
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
