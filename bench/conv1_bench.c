/*
 * conv1_bench.c — times one 3x3 stride-2 conv2d (padding 1, no activation) forward and its
 * dw/db backward (dx NULL, as for an encoder's first conv), on the path the shape function
 * picks or on a forced one, each call after a 32 MB sweep that evicts the layer's data from
 * L2, as happens between layers of a training step. Prints the minimum and mean of each.
 * Build by hand from the repository root after `make all`:
 *   B=/usr/lib/x86_64-linux-gnu/openblas-openmp
 *   gcc -O2 -march=native -fopenmp -Icore -Icore/include -I/usr/include/x86_64-linux-gnu/openblas-openmp \
 *       bench/conv1_bench.c build/libmoelab.a -o build/conv1_bench -L$B -Wl,-rpath,$B -lopenblas -lm
 *   build/conv1_bench [threads [reps [B [C [H [O [direct [dx]]]]]]]]
 *       (default 1 100 64 3 64 32 -1 0: the SRNN's enc.conv1 at batch 64; direct -1 keeps
 *        the shape function's choice, 0 forces the GEMM path, 3 the direct stride-2 path;
 *        dx 1 asks for the input gradient too)
 * Run it with OPENBLAS_CORETYPE=SkylakeX (see conv_bench.c).
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "nn/conv.h"

int main(int argc, char **argv) {
    const int T = argc > 1 ? atoi(argv[1]) : 1, reps = argc > 2 ? atoi(argv[2]) : 100;
    const int B = argc > 3 ? atoi(argv[3]) : 64, C = argc > 4 ? atoi(argv[4]) : 3;
    const int H = argc > 5 ? atoi(argv[5]) : 64, O = argc > 6 ? atoi(argv[6]) : 32;
    const int direct = argc > 7 ? atoi(argv[7]) : -1, need_dx = argc > 8 ? atoi(argv[8]) : 0;
    openblas_set_num_threads(T);
    omp_set_num_threads(T);
    ml_conv_shape s;
    if (ml_conv2d_shape(&s, B, C, H, H, O, 3, 2, 1, ML_CONV_ACT_NONE)) {
        fprintf(stderr, "conv1_bench: %s\n", ml_error());
        return 1;
    }
    if (direct >= 0) s.direct = direct;
    const size_t nx = ml_conv_in_size(&s), ny = ml_conv_out_size(&s), nw = ml_conv_weight_size(&s);
    const size_t nf = (size_t)8 << 20; /* the sweep, 32 MB */
    float *ws = ml_alloc_floats(ml_conv_workspace_floats(&s)), *x = ml_alloc_floats(nx);
    float *dx = ml_alloc_floats(nx), *y = ml_alloc_floats(ny), *dy = ml_alloc_floats(ny);
    float *w = ml_alloc_floats(nw), *dw = ml_alloc_floats(nw), *b = ml_alloc_floats((size_t)O);
    float *db = ml_alloc_floats((size_t)O), *sweep = ml_alloc_floats(nf);
    if (!ws || !x || !dx || !y || !dy || !w || !dw || !b || !db || !sweep) {
        fprintf(stderr, "conv1_bench: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < nx; i++) x[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < ny; i++) dy[i] = (float)((i * 40503u) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < nw; i++) w[i] = (float)((i * 7919u) % 1000) * 1e-4f - 0.05f;
    for (int i = 0; i < O; i++) b[i] = 0.01f * (float)i;
    memset(dx, 0, nx * sizeof(float));
    memset(dw, 0, nw * sizeof(float));
    memset(db, 0, (size_t)O * sizeof(float));
    memset(sweep, 0, nf * sizeof(float));
    double tf = 1e9, tb = 1e9, sf = 0, sb = 0;
    for (int r = 0; r < reps; r++) {
        for (size_t i = 0; i < nf; i += 16) sweep[i] += 1;
        const double t0 = ml_now();
        ml_conv2d_forward(&s, y, x, w, b, ws);
        const double t1 = ml_now();
        for (size_t i = 0; i < nf; i += 16) sweep[i] += 1;
        const double t2 = ml_now();
        ml_conv2d_backward(&s, need_dx ? dx : NULL, dw, db, dy, NULL, x, w, ws);
        const double t3 = ml_now();
        if (t1 - t0 < tf) tf = t1 - t0;
        if (t3 - t2 < tb) tb = t3 - t2;
        sf += t1 - t0, sb += t3 - t2;
    }
    printf("conv1_bench B=%d C=%d %dx%d -> O=%d %dx%d direct=%d dx=%d threads=%d: forward min %.3f mean %.3f ms, "
           "backward min %.3f mean %.3f ms (dw[0] %g)\n",
           B, C, H, H, O, s.Ho, s.Wo, s.direct, need_dx, T, tf * 1e3, sf / reps * 1e3, tb * 1e3, sb / reps * 1e3,
           dw[0]);
    return 0;
}
