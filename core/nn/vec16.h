/*
 * vec16.h — the 16-float vector of the hand-blocked kernels (conv.c, ppgemm.c): gcc vector
 * types (one AVX-512 register; gcc splits them on narrower targets), and a load and a store
 * of a vector's first cnt floats (AVX-512 masks, or a loop).
 */
#ifndef MOELAB_VEC16_H
#define MOELAB_VEC16_H

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias)); /* unaligned view */

/* the first cnt (1..16) floats at p, the rest 0 */
static inline v16 v16_ld_part(const float *p, int cnt) {
#if defined(__AVX512F__)
    return (v16)_mm512_maskz_loadu_ps((__mmask16)((1u << cnt) - 1), p);
#else
    v16 v = {0};
    for (int l = 0; l < cnt; l++) v[l] = p[l];
    return v;
#endif
}

/* the first cnt (1..16) floats of v to p; the floats after them untouched */
static inline void v16_st_part(float *p, v16 v, int cnt) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << cnt) - 1), (__m512)v);
#else
    for (int l = 0; l < cnt; l++) p[l] = v[l];
#endif
}

/* a b + c for every lane, rounded once (so the same bits at every optimisation level: gcc
 * contracts a * b + c into an FMA only from -O2) */
static inline v16 v16_fma_s(float a, v16 b, v16 c) {
#if defined(__AVX512F__)
    return (v16)_mm512_fmadd_ps(_mm512_set1_ps(a), (__m512)b, (__m512)c);
#else
    v16 r;
    for (int l = 0; l < 16; l++) r[l] = __builtin_fmaf(a, b[l], c[l]);
    return r;
#endif
}

#endif
