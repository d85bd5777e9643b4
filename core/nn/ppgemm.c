/* ppgemm.c — C = A B with A packed once (ppgemm.h). */
#include "nn/ppgemm.h"

#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* -std=c11 implies -ffp-contract=off: the kernel's acc += a * b must be one FMA */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

#define PP_NV 3 /* vectors of 16 columns per block: 8 x 48, 24 accumulators */

size_t ml_pp_floats(int M, int K) { return (size_t)(M + PP_MR - 1) / PP_MR * PP_MR * (size_t)K; }

void ml_pp_pack(float *ap, const float *a, int M, int K, int lda, int trans) {
    for (int m0 = 0; m0 < M; m0 += PP_MR) {
        float *p = ap + (size_t)m0 * K;
        const int mr = M - m0 < PP_MR ? M - m0 : PP_MR;
        for (int k = 0; k < K; k++) {
            float *d = p + (size_t)k * PP_MR;
            for (int q = 0; q < mr; q++)
                d[q] = trans ? a[(size_t)k * lda + m0 + q] : a[(size_t)(m0 + q) * lda + k];
            for (int q = mr; q < PP_MR; q++) d[q] = 0.0f;
        }
    }
}

/* the first cnt floats at p (the rest 0), and the first cnt of v to p */
static inline v16 ld_part(const float *p, int cnt) {
#if defined(__AVX512F__)
    return (v16)_mm512_maskz_loadu_ps((__mmask16)((1u << cnt) - 1), p);
#else
    v16 v = {0};
    for (int l = 0; l < cnt; l++) v[l] = p[l];
    return v;
#endif
}
static inline void st_part(float *p, v16 v, int cnt) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << cnt) - 1), (__m512)v);
#else
    for (int l = 0; l < cnt; l++) p[l] = v[l];
#endif
}

/* One PP_MR x (16 NV) block of C, mr of its rows and of the last vector cnt columns kept
 * (16: all; B is read in whole vectors, ppgemm.h). NV and whether cnt < 16 are constants
 * where this is inlined, so acc lives in registers: per k, NV loads of B and PP_MR
 * broadcasts of A feed PP_MR NV FMAs. (A masked load of B's last vector made gcc spill
 * the accumulators: 50 GFLOP/s instead of 150 at n = 36.) */
static inline __attribute__((always_inline)) void
block(const int NV, const int part, const float *restrict ap, const float *restrict b, int ldb, int K,
      float *restrict c, int ldc, int mr, int cnt, int add) {
    v16 acc[PP_MR][PP_NV];
#pragma GCC unroll 8
    for (int q = 0; q < PP_MR; q++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[q][v] = (v16){0};
    for (int k = 0; k < K; k++) {
        const float *br = b + (size_t)k * ldb;
        v16 bv[PP_NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            bv[v] = *(const v16u *)(br + 16 * v);
        const float *a = ap + (size_t)k * PP_MR;
#pragma GCC unroll 8
        for (int q = 0; q < PP_MR; q++)
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[q][v] += a[q] * bv[v];
    }
#pragma GCC unroll 8
    for (int q = 0; q < PP_MR; q++) { /* unrolled, with q < mr tested: acc stays in registers */
        if (q >= mr) break;
        float *cr = c + (size_t)q * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            if (part && v == NV - 1) {
                if (add) acc[q][v] += ld_part(cr + 16 * v, cnt);
                st_part(cr + 16 * v, acc[q][v], cnt);
            } else {
                if (add) acc[q][v] += *(const v16u *)(cr + 16 * v);
                *(v16u *)(cr + 16 * v) = acc[q][v];
            }
        }
    }
}

/* every row panel against the columns n0 .. n0 + w - 1 (w <= 48) */
static void columns(int M, int K, const float *ap, const float *b, int ldb, float *c, int ldc, int n0,
                    int w, int add) {
    const int nv = (w + 15) / 16, cnt = w - 16 * (nv - 1), part = cnt < 16;
    for (int m0 = 0; m0 < M; m0 += PP_MR) {
        const float *a = ap + (size_t)m0 * K;
        float *cb = c + (size_t)m0 * ldc + n0;
        const int mr = M - m0 < PP_MR ? M - m0 : PP_MR;
        switch (nv * 2 + part) {
        case 2: block(1, 0, a, b + n0, ldb, K, cb, ldc, mr, cnt, add); break;
        case 3: block(1, 1, a, b + n0, ldb, K, cb, ldc, mr, cnt, add); break;
        case 4: block(2, 0, a, b + n0, ldb, K, cb, ldc, mr, cnt, add); break;
        case 5: block(2, 1, a, b + n0, ldb, K, cb, ldc, mr, cnt, add); break;
        case 6: block(3, 0, a, b + n0, ldb, K, cb, ldc, mr, cnt, add); break;
        default: block(3, 1, a, b + n0, ldb, K, cb, ldc, mr, cnt, add); break;
        }
    }
}

/* Columns in blocks of 48: each block's K x 48 slice of B (48 KB at K = 256) is read once
 * per row panel from the L1/L2 cache, the packed A streams through. */
void ml_pp_gemm(int M, int N, int K, const float *ap, const float *b, int ldb, float *c, int ldc, int add) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!add)
            for (int m = 0; m < M; m++) memset(c + (size_t)m * ldc, 0, sizeof(float) * (size_t)N);
        return;
    }
    for (int n0 = 0; n0 < N; n0 += 16 * PP_NV)
        columns(M, K, ap, b, ldb, c, ldc, n0, N - n0 < 16 * PP_NV ? N - n0 : 16 * PP_NV, add);
}

/* 16 x 16 blocks: each reads 16 rows of 64 bytes and writes 16 */
void ml_pp_transpose(float *t, int ldt, const float *a, int R, int C, int lda) {
    for (int r0 = 0; r0 < R; r0 += 16)
        for (int c0 = 0; c0 < C; c0 += 16) {
            const int re = R - r0 < 16 ? R - r0 : 16, ce = C - c0 < 16 ? C - c0 : 16;
            for (int c = 0; c < ce; c++)
                for (int r = 0; r < re; r++) t[(size_t)(c0 + c) * ldt + r0 + r] = a[(size_t)(r0 + r) * lda + c0 + c];
        }
}
#pragma GCC pop_options
