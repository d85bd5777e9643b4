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

/*
 * A prefetch stream: up to ML_PF_SPANS spans of memory a kernel will read (or write) in this
 * order; ml_pf_advance asks for its next lines (one thread's, a few at a time between pieces
 * of work: a burst of hundreds would wait on the line-fill buffers as the loads would). The
 * caller owns the spans; the stream holds no memory.
 */
enum { ML_PF_SPANS = 4 };
typedef struct ml_pf {
    const char *p[ML_PF_SPANS];
    size_t len[ML_PF_SPANS]; /* bytes */
    int n, i;                /* spans, the one asked for next */
    size_t at;               /* its next byte to ask for */
    int write;               /* 1: the lines will be written (prefetchw) */
} ml_pf;
void ml_pf_init(ml_pf *s, int write);
void ml_pf_add(ml_pf *s, const void *p, size_t bytes); /* ignored past ML_PF_SPANS */
void ml_pf_advance(ml_pf *s, size_t lines);            /* asks for the next lines (64 bytes) */

/*
 * ml_linear_backward_set, the same bits, for the few rows of an expert, asking for the lines
 * of what comes next while it computes. For B <= ml_linear_backward_rows_max() rows and In a
 * multiple of 16 up to 256 it runs one output row at a time — w's row read once for all B
 * rows of dx, dw's row written once — and before each such row it asks for the next In / 16
 * lines of rd (to be read) and wr (to be written), when not NULL: streams over the weights
 * and gradients the caller goes through next (its next products, the next expert's), whose
 * lines then come from memory while this one computes. Otherwise it is
 * ml_linear_backward_set.
 *
 * The additions are OpenBLAS's small-matrix kernels' (0.3.21, its SkylakeX and Cooperlake
 * kernels): each dx element a chain of FMAs over the outputs in order, then added to dx; each
 * dw element one over the rows. The kernel runs only where OpenBLAS was seen to give its bits
 * (a check on the first call: widths 16 to 256, 1 to 8 rows, zeros of both signs among the
 * inputs), and with AVX-512; elsewhere (OpenBLAS's Haswell or Zen kernels, say)
 * ml_linear_backward_rows_max() is 0 and the products are OpenBLAS's.
 *
 * With dw_abs not NULL, the row kernel also sums |dw| over the Out·In elements in row-major
 * order while it writes them, in double, in 8 interleaved partial sums (element i in sum
 * i mod 8, each in order of i) added as ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)):
 * the MoE layer's |grad| sum (model/moe.c, grad_mag), bit for bit, without reading dw
 * again. Returns 1 when *dw_abs was written, 0 when not (BLAS ran, or dw_abs is NULL).
 */
int ml_linear_backward_set_pf(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                              int B, int In, int Out, ml_pf *rd, ml_pf *wr, double *dw_abs);
int ml_linear_backward_rows_max(void);

void ml_relu_forward(float *y, const float *x, size_t n);
/* dx += dy * (y > 0), y the forward output */
void ml_relu_backward(float *dx, const float *dy, const float *y, size_t n);
void ml_sigmoid_forward(float *y, const float *x, size_t n);
/* dx += dy * y * (1 - y), y the forward output */
void ml_sigmoid_backward(float *dx, const float *dy, const float *y, size_t n);

/* mean over n of (a - b)^2, accumulated in double: blocks of 16384 elements, each in 8 lanes
   (element i in lane i mod 8) added in order, on the OpenMP threads; the block sums added in
   order (the same bits for any thread count) */
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
