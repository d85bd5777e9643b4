/*
 * ops.h — dense kernels: linear layers through cblas_sgemm, ReLU, sigmoid, MSE.
 *
 * Free functions over raw float buffers plus sizes (llm.c style), forward and backward
 * side by side. Backward functions ACCUMULATE (+=) into their gradient outputs; any
 * gradient output may be NULL when the caller does not need it. The caller owns every
 * buffer. Shapes: B rows (samples), In inputs, Out outputs.
 */
#ifndef MOELAB_OPS_H
#define MOELAB_OPS_H

#include <stddef.h>

/* y (B, Out) = x (B, In) · w (Out, In)^T + b (Out); b may be NULL. Overwrites y. */
void ml_linear_forward(float *y, const float *x, const float *w, const float *b, int B, int In, int Out);
/* dx (B, In) += dy · w;  dw (Out, In) += dy^T · x;  db (Out) += sum_b dy. */
void ml_linear_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, int B, int In, int Out);
/* The same with dw and db overwritten (=) rather than accumulated, bit for bit what zeroing
   them first gives (but the sign of a zero); dx still accumulates. B >= 1. */
void ml_linear_backward_set(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *w, int B, int In, int Out);

void ml_relu_forward(float *y, const float *x, size_t n);
/* dx += dy * (y > 0), y the forward output */
void ml_relu_backward(float *dx, const float *dy, const float *y, size_t n);
void ml_sigmoid_forward(float *y, const float *x, size_t n);
/* dx += dy * y * (1 - y), y the forward output */
void ml_sigmoid_backward(float *dx, const float *dy, const float *y, size_t n);

/* mean over n of (a - b)^2, accumulated in double */
double ml_mse_forward(const float *a, const float *target, size_t n);
/* da += scale * 2 (a - target) / n */
void ml_mse_backward(float *da, const float *a, const float *target, size_t n, float scale);
/* da = scale * 2 (a - target) / n, written: bitwise da zeroed then ml_mse_backward, in
   blocks shared among the OpenMP threads (each block zeroed in cache, then added to) */
void ml_mse_backward_set(float *da, const float *a, const float *target, size_t n, float scale);

/* x[0, n) = 0, and dst[0, n) = src[0, n) (not overlapping): in blocks shared among the OpenMP
   threads. For the large activation and gradient buffers of a step, which one thread alone
   would zero or copy while the others wait. */
void ml_zero(float *x, size_t n);
void ml_copy(float *dst, const float *src, size_t n);

/* Row-major sgemm: C (M,N) = alpha op(A) op(B) + beta C. */
void ml_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

#endif
