/*
 * ppgemm_bench.c — the Winograd transposed conv's GEMMs (16 per chunk, one per transform
 * point, each with its own A and B) by cblas_sgemm and by ml_pp_gemm (nn/ppgemm.h, A packed
 * once outside the timing), on the SRNN's shapes at 64 x 64 (m 4O or C, n the chunk's tiles,
 * k C or 4O; B's rows n floats apart, as in conv.c). Prints GFLOP/s of each (best of 30 runs of
 * the 16 GEMMs) and the largest difference of their results. Then dU's GEMMs, dM (m x n) times
 * V^T (V: c x n): cblas_sgemm's NoTrans x Trans against ml_pp_transpose of V and
 * ml_pp_gemm_rows reading dM in place (the transpose inside the timing).
 * Build by hand from the repository root after `make all`:
 *   B=/usr/lib/x86_64-linux-gnu/openblas-openmp
 *   gcc -O2 -march=native -fopenmp -Icore -Icore/include -I/usr/include/x86_64-linux-gnu/openblas-openmp \
 *       bench/ppgemm_bench.c build/libmoelab.a -o build/ppgemm_bench -L$B -Wl,-rpath,$B -lopenblas -lm
 *   OPENBLAS_CORETYPE=SkylakeX OMP_NUM_THREADS=1 build/ppgemm_bench
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "base/common.h"
#include "nn/ppgemm.h"

int main(void) {
    static const struct { const char *what; int M, N, K; } sh[] = {
        {"convT4 fwd (32x32, 1 image)", 128, 121, 64},  {"convT4 dV", 64, 121, 128},
        {"convT3 fwd (16x16, 1 image)", 128, 36, 128},  {"convT3 dV", 128, 36, 128},
        {"convT3 fwd (16x16, 4 images)", 128, 144, 128}, {"convT3 dV", 128, 144, 128},
        {"convT2 fwd (8x8, 8 images)", 256, 72, 256},    {"convT2 dV", 256, 72, 256},
        {"convT2 fwd (8x8, 16 images)", 256, 144, 256},  {"convT2 dV", 256, 144, 256},
    };
    for (size_t si = 0; si < sizeof sh / sizeof sh[0]; si++) {
        const int M = sh[si].M, N = sh[si].N, K = sh[si].K;
        const int L = (N + 15) / 16 * 16; /* row stride, as conv.c's V and M */
        const size_t na = (size_t)M * K, nb = (size_t)K * L, nc = (size_t)M * L, np = ml_pp_floats(M, K);
        float *a = ml_alloc_floats(16 * na), *ap = ml_alloc_floats(16 * np), *b = ml_alloc_floats(16 * nb),
              *c1 = ml_alloc_floats(16 * nc), *c2 = ml_alloc_floats(16 * nc);
        if (!a || !ap || !b || !c1 || !c2) return 1;
        for (size_t i = 0; i < 16 * na; i++) a[i] = 0.01f * (float)((i * 7) % 13) - 0.06f;
        for (size_t i = 0; i < 16 * nb; i++) b[i] = 0.01f * (float)((i * 5) % 11) - 0.05f;
        for (int p = 0; p < 16; p++) ml_pp_pack(ap + p * np, a + p * na, M, K, K, 0);
        double tb = 1e9, tp = 1e9;
        for (int r = 0; r < 30; r++) {
            double t0 = ml_now();
            for (int p = 0; p < 16; p++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a + p * na, K, b + p * nb, L,
                            0.0f, c1 + p * nc, L);
            double t1 = ml_now();
            for (int p = 0; p < 16; p++) ml_pp_gemm(M, N, K, ap + p * np, b + p * nb, L, c2 + p * nc, L, 0);
            double t2 = ml_now();
            if (t1 - t0 < tb) tb = t1 - t0;
            if (t2 - t1 < tp) tp = t2 - t1;
        }
        double diff = 0;
        for (size_t i = 0; i < 16 * nc; i++)
            if ((int)(i % L) < N) diff = fmax(diff, fabs((double)c1[i] - c2[i]));
        const double fl = 2.0 * M * N * K * 16 * 1e-9;
        printf("%-30s m %3d n %3d k %3d  cblas_sgemm %6.1f GFLOP/s  ml_pp_gemm %6.1f GFLOP/s  max diff %.1e\n",
               sh[si].what, M, N, K, fl / tb, fl / tp, diff);
        free(a), free(ap), free(b), free(c1), free(c2);
    }
    static const struct { const char *what; int M, N, K; } du[] = {
        {"convT4 dU (1 image)", 128, 64, 121}, {"convT3 dU (1 image)", 128, 128, 36},
        {"convT3 dU (4 images)", 128, 128, 144}, {"convT2 dU (8 images)", 256, 256, 72},
        {"convT2 dU (16 images)", 256, 256, 144},
    };
    for (size_t si = 0; si < sizeof du / sizeof du[0]; si++) {
        const int M = du[si].M, N = du[si].N, K = du[si].K, N16 = (N + 15) / 16 * 16;
        const size_t na = (size_t)M * K, nb = (size_t)N * K, nc = (size_t)M * N;
        float *a = ml_alloc_floats(16 * na), *b = ml_alloc_floats(16 * nb), *bt = ml_alloc_floats((size_t)K * N16),
              *c1 = ml_alloc_floats(16 * nc), *c2 = ml_alloc_floats(16 * nc);
        if (!a || !b || !bt || !c1 || !c2) return 1;
        for (size_t i = 0; i < 16 * na; i++) a[i] = 0.01f * (float)((i * 7) % 13) - 0.06f;
        for (size_t i = 0; i < 16 * nb; i++) b[i] = 0.01f * (float)((i * 5) % 11) - 0.05f;
        double tb = 1e9, tp = 1e9;
        for (int r = 0; r < 30; r++) {
            double t0 = ml_now();
            for (int p = 0; p < 16; p++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a + p * na, K, b + p * nb, K, 0.0f,
                            c1 + p * nc, N);
            double t1 = ml_now();
            for (int p = 0; p < 16; p++) {
                ml_pp_transpose(bt, N16, b + p * nb, N, K, K);
                ml_pp_gemm_rows(M, N, K, a + p * na, K, bt, N16, c2 + p * nc, N, 0);
            }
            double t2 = ml_now();
            if (t1 - t0 < tb) tb = t1 - t0;
            if (t2 - t1 < tp) tp = t2 - t1;
        }
        double diff = 0;
        for (size_t i = 0; i < 16 * nc; i++) diff = fmax(diff, fabs((double)c1[i] - c2[i]));
        const double fl = 2.0 * M * N * K * 16 * 1e-9;
        printf("%-30s m %3d n %3d k %3d  cblas_sgemm %6.1f GFLOP/s  transpose + ml_pp_gemm_rows %6.1f GFLOP/s  max diff %.1e\n",
               du[si].what, M, N, K, fl / tb, fl / tp, diff);
        free(a), free(b), free(bt), free(c1), free(c2);
    }
    return 0;
}
