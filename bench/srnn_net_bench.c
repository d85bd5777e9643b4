/*
 * srnn_net_bench.c — times the SRNN net alone (encode, decode, decode_backward,
 * encode_backward, no MoE) on random data, the part of `moelab bench` the convolutions own.
 * Build by hand from the repository root after `make all` (the OpenMP build of OpenBLAS, as
 * the Makefile links it):
 *   B=/usr/lib/x86_64-linux-gnu/openblas-openmp
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -march=native -fopenmp -Icore -Icore/include \
 *       -I/usr/include/x86_64-linux-gnu/openblas-openmp bench/srnn_net_bench.c build/libmoelab.a \
 *       -o build/srnn_net_bench -L$B -Wl,-rpath,$B -lopenblas \
 *       $(pkg-config --libs lua5.4 yaml-0.1 zlib) -ldl -lm
 *   build/srnn_net_bench [H W C [B [threads [steps]]]]     (default 64 64 3 64 2 10)
 * Run it with OPENBLAS_CORETYPE=SkylakeX on an AVX-512 machine: moelab itself re-executes
 * with that kernel (core/main.c), a bare binary gets Debian OpenBLAS's AVX2 "Haswell"
 * kernels (or whatever the environment pins) at about half the GEMM speed.
 * Prints the best and the mean step over `steps` timed steps after 2 warm-up steps, and the
 * mean of each phase.
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "model/net.h"
#include "nn/params.h"

void openblas_set_num_threads(int n);

int main(int argc, char **argv) {
    const int H = argc > 3 ? atoi(argv[1]) : 64, W = argc > 3 ? atoi(argv[2]) : 64;
    const int C = argc > 3 ? atoi(argv[3]) : 3, B = argc > 4 ? atoi(argv[4]) : 64;
    const int T = argc > 5 ? atoi(argv[5]) : 2, S = argc > 6 ? atoi(argv[6]) : 10;
    openblas_set_num_threads(T);
    omp_set_num_threads(T);
    static const int ch[4] = {32, 64, 128, 256};
    const int D = 128;
    ml_params P, St;
    ml_params_init(&P, 1);
    ml_params_init(&St, 0);
    ml_net_shape shape = {C, H, W, D, 0, ch, 4};
    const ml_net_ops *ops = &ml_net_srnn;
    void *net = ops->create(&shape, &P, &St);
    ml_rng rng;
    ml_rng_seed(&rng, 0);
    if (!net || ml_params_commit(&P, &rng) || ml_params_commit(&St, &rng) || ops->reserve(net, B)) {
        fprintf(stderr, "srnn_net_bench: %s\n", ml_error());
        return 1;
    }
    const size_t nx = (size_t)B * C * H * W, nz = (size_t)B * D;
    float *x = ml_alloc_floats(nx), *xhat = ml_alloc_floats(nx), *dxhat = ml_alloc_floats(nx);
    float *z = ml_alloc_floats(nz), *dz = ml_alloc_floats(nz);
    for (size_t i = 0; i < nx; i++) x[i] = (float)ml_rng_uniform(&rng);
    double ph[4] = {0}, best = 1e30, tot = 0;
    for (int s = 0; s < S + 2; s++) {
        double t[5];
        ml_params_zero_grad(&P);
        t[0] = ml_now();
        ops->encode(net, x, B, 1, z);
        t[1] = ml_now();
        ops->decode(net, z, B, 1, xhat);
        t[2] = ml_now();
        for (size_t i = 0; i < nx; i++) dxhat[i] = 2.0f * (xhat[i] - x[i]) / (float)nx;
        memset(dz, 0, nz * sizeof(float));
        t[3] = ml_now();
        ops->decode_backward(net, dxhat, dz);
        t[4] = ml_now();
        ops->encode_backward(net, dz);
        const double end = ml_now();
        if (s < 2) continue;
        const double step = (t[1] - t[0]) + (t[2] - t[1]) + (t[4] - t[3]) + (end - t[4]);
        ph[0] += t[1] - t[0];
        ph[1] += t[2] - t[1];
        ph[2] += t[4] - t[3];
        ph[3] += end - t[4];
        tot += step;
        if (step < best) best = step;
    }
    const double gf = ops->flops_per_sample(net) * B / (tot / S) * 1e-9;
    printf("srnn_net image=%dx%dx%d batch=%d threads=%d best_ms=%.1f mean_ms=%.1f "
           "(encode %.1f decode %.1f decode_bwd %.1f encode_bwd %.1f) gflops=%.1f\n",
           H, W, C, B, T, best * 1e3, tot / S * 1e3, ph[0] / S * 1e3, ph[1] / S * 1e3,
           ph[2] / S * 1e3, ph[3] / S * 1e3, gf);
    ops->free(net);
    ml_params_free(&P);
    ml_params_free(&St);
    free(x), free(xhat), free(dxhat), free(z), free(dz);
    return 0;
}
