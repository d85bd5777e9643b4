/* ppgemm.c — C = A B with A packed once (ppgemm.h). */
#include "nn/ppgemm.h"
#include "nn/vec16.h"

#include <string.h>

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

/* One PP_MR x (16 NV) block of C, mr of its rows and of the last vector cnt columns kept
 * (16: all; B is read in whole vectors, ppgemm.h). NV and whether cnt < 16 are constants
 * where this is inlined, so acc lives in registers: per k, NV loads of B and PP_MR
 * broadcasts of A feed PP_MR NV FMAs. (A masked load of B's last vector made gcc spill
 * the accumulators: 50 GFLOP/s instead of 150 at n = 36.) */
static inline __attribute__((always_inline)) void
block(const int NV, const int part, const int packed, const float *restrict ap, int lda, const float *restrict b,
      int ldb, int K, float *restrict c, int ldc, int mr, int cnt, int add) {
    /* A in place (packed 0): row q at ar[q], rows past mr read row mr - 1 (not stored) */
    const float *ar[PP_MR];
#pragma GCC unroll 8
    for (int q = 0; q < PP_MR; q++) ar[q] = packed ? ap : ap + (size_t)(q < mr ? q : mr - 1) * lda;
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
        for (int q = 0; q < PP_MR; q++) {
            const float aq = packed ? a[q] : ar[q][k];
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[q][v] = v16_fma_s(aq, bv[v], acc[q][v]);
        }
    }
#pragma GCC unroll 8
    for (int q = 0; q < PP_MR; q++) { /* unrolled, with q < mr tested: acc stays in registers */
        if (q >= mr) break;
        float *cr = c + (size_t)q * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            if (part && v == NV - 1) {
                if (add) acc[q][v] += v16_ld_part(cr + 16 * v, cnt);
                v16_st_part(cr + 16 * v, acc[q][v], cnt);
            } else {
                if (add) acc[q][v] += *(const v16u *)(cr + 16 * v);
                *(v16u *)(cr + 16 * v) = acc[q][v];
            }
        }
    }
}

/* block with NV, part and packed literal, so that each inlined copy keeps acc in registers */
static inline __attribute__((always_inline)) void
dispatch(const int packed, int nv, int part, const float *a, int lda, const float *b, int ldb, int K, float *c,
         int ldc, int mr, int cnt, int add) {
    switch (nv * 2 + part) {
    case 2: block(1, 0, packed, a, lda, b, ldb, K, c, ldc, mr, cnt, add); break;
    case 3: block(1, 1, packed, a, lda, b, ldb, K, c, ldc, mr, cnt, add); break;
    case 4: block(2, 0, packed, a, lda, b, ldb, K, c, ldc, mr, cnt, add); break;
    case 5: block(2, 1, packed, a, lda, b, ldb, K, c, ldc, mr, cnt, add); break;
    case 6: block(3, 0, packed, a, lda, b, ldb, K, c, ldc, mr, cnt, add); break;
    default: block(3, 1, packed, a, lda, b, ldb, K, c, ldc, mr, cnt, add); break;
    }
}

/* every row panel against the columns n0 .. n0 + w - 1 (w <= 48); A packed (lda 0) or in place */
static void columns(int M, int K, const float *ap, int lda, const float *b, int ldb, float *c, int ldc,
                    int n0, int w, int add) {
    const int nv = (w + 15) / 16, cnt = w - 16 * (nv - 1), part = cnt < 16;
    for (int m0 = 0; m0 < M; m0 += PP_MR) {
        const float *a = ap + (size_t)m0 * (lda ? (size_t)lda : (size_t)K);
        float *cb = c + (size_t)m0 * ldc + n0;
        const int mr = M - m0 < PP_MR ? M - m0 : PP_MR;
        if (lda) dispatch(0, nv, part, a, lda, b + n0, ldb, K, cb, ldc, mr, cnt, add);
        else dispatch(1, nv, part, a, 0, b + n0, ldb, K, cb, ldc, mr, cnt, add);
    }
}

/* Columns in blocks of 48: each block's K x 48 slice of B (48 KB at K = 256) is read once
 * per row panel from the L1/L2 cache, the packed A streams through. */
static void gemm(int M, int N, int K, const float *ap, int lda, const float *b, int ldb, float *c, int ldc,
                 int add) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!add)
            for (int m = 0; m < M; m++) memset(c + (size_t)m * ldc, 0, sizeof(float) * (size_t)N);
        return;
    }
    for (int n0 = 0; n0 < N; n0 += 16 * PP_NV)
        columns(M, K, ap, lda, b, ldb, c, ldc, n0, N - n0 < 16 * PP_NV ? N - n0 : 16 * PP_NV, add);
}
void ml_pp_gemm(int M, int N, int K, const float *ap, const float *b, int ldb, float *c, int ldc, int add) {
    gemm(M, N, K, ap, 0, b, ldb, c, ldc, add);
}
void ml_pp_gemm_rows(int M, int N, int K, const float *a, int lda, const float *b, int ldb, float *c, int ldc,
                     int add) {
    gemm(M, N, K, a, lda > 0 ? lda : 1, b, ldb, c, ldc, add);
}

#if defined(__AVX512F__)
/* The 16 x 16 block at a (rows lda apart) transposed into t (rows ldt apart): unpacks of 32-
 * and 64-bit pairs, then two rounds of 128-bit lane shuffles. */
static void tr16(float *t, int ldt, const float *a, int lda) {
    __m512 r[16], u[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(a + (size_t)i * lda);
    for (int i = 0; i < 16; i += 2) {
        u[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        u[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        const __m512d a0 = _mm512_castps_pd(u[i]), a1 = _mm512_castps_pd(u[i + 1]);
        const __m512d a2 = _mm512_castps_pd(u[i + 2]), a3 = _mm512_castps_pd(u[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    /* r[4 g + j] holds, in 128-bit lane l, rows 4 g .. 4 g + 3 of column 4 l + j */
    for (int j = 0; j < 4; j++) {
        u[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);      /* lanes 0, 2 of each */
        u[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xdd);  /* lanes 1, 3 */
        u[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        u[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xdd);
    }
    for (int j = 0; j < 4; j++) {
        _mm512_storeu_ps(t + (size_t)j * ldt, _mm512_shuffle_f32x4(u[j], u[8 + j], 0x88));
        _mm512_storeu_ps(t + (size_t)(8 + j) * ldt, _mm512_shuffle_f32x4(u[j], u[8 + j], 0xdd));
        _mm512_storeu_ps(t + (size_t)(4 + j) * ldt, _mm512_shuffle_f32x4(u[4 + j], u[12 + j], 0x88));
        _mm512_storeu_ps(t + (size_t)(12 + j) * ldt, _mm512_shuffle_f32x4(u[4 + j], u[12 + j], 0xdd));
    }
}
#endif

void ml_pp_transpose(float *t, int ldt, const float *a, int R, int C, int lda) {
    for (int r0 = 0; r0 < R; r0 += 16)
        for (int c0 = 0; c0 < C; c0 += 16) {
            const int re = R - r0 < 16 ? R - r0 : 16, ce = C - c0 < 16 ? C - c0 : 16;
#if defined(__AVX512F__)
            if (re == 16 && ce == 16) {
                tr16(t + (size_t)c0 * ldt + r0, ldt, a + (size_t)r0 * lda + c0, lda);
                continue;
            }
#endif
            for (int c = 0; c < ce; c++)
                for (int r = 0; r < re; r++) t[(size_t)(c0 + c) * ldt + r0 + r] = a[(size_t)(r0 + r) * lda + c0 + c];
        }
}
