/*
 * ppgemm.h — single-threaded C = A B with A packed once and reused: the GEMMs of the
 * Winograd transposed conv (conv.c, wg_forward and wg_backward), 16 per chunk of images, whose
 * A (the transformed weights U, or U^T) is the same for every chunk of a step.
 *
 * Why not cblas_sgemm: there each of those GEMMs (m 64-256, n 36-242, k 64-256) runs
 * at 100-137 GFLOP/s here against a 160 peak, since OpenBLAS packs A again on every call (or
 * takes its small-matrix kernel, which reads A with strides). Packed once into panels of
 * PP_MR rows, A streams through one register-blocked kernel at 145-170 (bench/ppgemm_bench.c).
 *
 * Layout: a packed matrix is ceil(M / PP_MR) panels; panel p holds, for k = 0 .. K-1, the
 * PP_MR floats A[p PP_MR + q][k] (q = 0 .. PP_MR-1, rows past M are 0).
 * Rounding: every C[m][n] is the sum over k in increasing k order, one fused multiply-add per
 * term, started from 0 (then added to C when accumulating) — the same bits for any N, any
 * blocking, any thread, and those of a plain loop with fmaf (tests/check_conv.c).
 */
#ifndef MOELAB_PPGEMM_H
#define MOELAB_PPGEMM_H

#include <stddef.h>

#define PP_MR 8

/* floats of a packed M x K matrix */
size_t ml_pp_floats(int M, int K);

/* ap from A (M x K): a[m lda + k] when trans is 0, a[k lda + m] (A given as its transpose,
 * K x M) when trans is 1 */
void ml_pp_pack(float *ap, const float *a, int M, int K, int lda, int trans);

/* C (M x N, row stride ldc) = A (packed M x K) B (K x N, row stride ldb), or, add 1, C += A B
 * (the sum over k formed from 0 first, then added to C). B's rows are read in whole vectors of
 * 16 floats: up to column 16 ceil(N / 16) - 1, so ldb >= that and the last row's floats past
 * N must be readable (what they hold reaches only columns of C that are not written). */
void ml_pp_gemm(int M, int N, int K, const float *ap, const float *b, int ldb, float *c, int ldc, int add);

/* the same with A read in place: A (M x K) at a, row stride lda (rows past M not read) */
void ml_pp_gemm_rows(int M, int N, int K, const float *a, int lda, const float *b, int ldb, float *c, int ldc,
                     int add);

/* t (C x R, row stride ldt) = a^T, a (R x C, row stride lda) */
void ml_pp_transpose(float *t, int ldt, const float *a, int R, int C, int lda);

#endif
