/*
 * conv_bench.c — times each SRNN conv layer (forward and backward) at batch 64 and
 * reports GFLOP/s against a 1536^3 cblas_sgemm measured in the same process.
 * Build by hand from the repository root after `make all`:
 *   B=/usr/lib/x86_64-linux-gnu/openblas-openmp
 *   gcc -O2 -march=native -fopenmp -Icore -Icore/include -I/usr/include/x86_64-linux-gnu/openblas-openmp \
 *       bench/conv_bench.c build/libmoelab.a -o build/conv_bench -L$B -Wl,-rpath,$B -lopenblas -lm
 *   build/conv_bench [H W C [B [threads]]]        (default 64 64 3 64 2)
 * Run it with OPENBLAS_CORETYPE=SkylakeX on an AVX-512 machine: moelab itself re-executes
 * with that kernel (core/main.c), a bare binary gets Debian OpenBLAS's AVX2 "Haswell"
 * kernels (or whatever the environment pins) at about half the GEMM speed.
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "nn/conv.h"

static double sgemm_peak(void) {
    const int n = 1536; /* not a power of two: 1024 aliases in the cache and reads half the peak */
    float *a = ml_alloc_floats((size_t)n * n), *b = ml_alloc_floats((size_t)n * n),
          *c = ml_alloc_floats((size_t)n * n);
    for (size_t i = 0; i < (size_t)n * n; i++) a[i] = 1e-3f * (float)(i % 7), b[i] = 1e-3f * (float)(i % 5);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t = ml_now();
        for (int i = 0; i < 5; i++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        double g = 2.0 * n * n * n * 5 / (ml_now() - t) * 1e-9;
        if (g > best) best = g;
    }
    free(a), free(b), free(c);
    return best;
}

struct layer { const char *name; ml_conv_shape s; int need_dx; };

int main(int argc, char **argv) {
    int H = argc > 3 ? atoi(argv[1]) : 64, W = argc > 3 ? atoi(argv[2]) : 64;
    int C = argc > 3 ? atoi(argv[3]) : 3, B = argc > 4 ? atoi(argv[4]) : 64;
    int T = argc > 5 ? atoi(argv[5]) : 2;
    int reps = 10;
    /* OpenBLAS's own default is not the OpenMP team size: set both, as moelab bench does */
    openblas_set_num_threads(T);
    omp_set_num_threads(T);
    struct layer L[13];
    int nl = 0, h = H, w = W, ch = C;
    const int enc[4] = {32, 64, 128, 256};
    for (int i = 0; i < 4; i++) {
        L[nl].name = "enc conv";
        if (ml_conv2d_shape(&L[nl].s, B, ch, h, w, enc[i], 3, 2, 1, ML_CONV_ACT_NONE)) goto fail;
        L[nl].need_dx = i > 0;
        h = L[nl].s.Ho, w = L[nl].s.Wo, ch = enc[i];
        nl++;
    }
    const int din[4] = {512, 256, 128, 64}, dout[4] = {128, 64, 32, 32};
    for (int i = 0; i < 4; i++) {
        L[nl].name = "dec convT";
        if (ml_convt2d_shape(&L[nl].s, B, din[i], h, w, dout[i], 4, 2, 1, ML_CONV_ACT_RELU)) goto fail;
        L[nl].need_dx = 1;
        h = L[nl].s.Ho, w = L[nl].s.Wo;
        nl++;
    }
    /* the transposed convs again on the general GEMM + col2im path, for comparison */
    for (int i = 4; i < 8; i++) {
        L[nl + 1 + i - 4] = L[i];
        L[nl + 1 + i - 4].name = "convT gen";
        L[nl + 1 + i - 4].s.subpixel = 0;
    }
    L[nl].name = "out conv";
    if (ml_conv2d_shape(&L[nl].s, B, 32, h, w, C, 3, 1, 1, ML_CONV_ACT_SIGMOID)) goto fail;
    L[nl].need_dx = 1;
    nl += 5;

    size_t maxws = 0, maxx = 0, maxy = 0, maxw = 0;
    for (int i = 0; i < nl; i++) {
        size_t a = ml_conv_workspace_floats(&L[i].s);
        if (a > maxws) maxws = a;
        if (ml_conv_in_size(&L[i].s) > maxx) maxx = ml_conv_in_size(&L[i].s);
        if (ml_conv_out_size(&L[i].s) > maxy) maxy = ml_conv_out_size(&L[i].s);
        if (ml_conv_weight_size(&L[i].s) > maxw) maxw = ml_conv_weight_size(&L[i].s);
    }
    float *ws = ml_alloc_floats(maxws), *x = ml_alloc_floats(maxx), *dx = ml_alloc_floats(maxx);
    float *y = ml_alloc_floats(maxy), *dy = ml_alloc_floats(maxy), *wt = ml_alloc_floats(maxw);
    float *dw = ml_alloc_floats(maxw), *b = ml_alloc_floats(512), *db = ml_alloc_floats(512);
    if (!ws || !x || !dx || !y || !dy || !wt || !dw || !b || !db) goto fail;
    for (size_t i = 0; i < maxx; i++) x[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < maxy; i++) dy[i] = (float)((i * 40503u) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < maxw; i++) wt[i] = (float)((i * 7919u) % 1000) * 1e-4f - 0.05f;

    double peak = sgemm_peak();
    printf("conv_bench image=%dx%dx%d batch=%d threads=%d sgemm_1536_peak=%.1f GFLOP/s workspace=%.1f MB\n",
           H, W, C, B, T, peak, maxws * 4e-6);
    printf("%-10s %-22s %5s %9s %9s %9s %8s %8s %6s\n", "layer", "shape", "chunk", "fwd ms",
           "bwd ms", "GFLOP", "GFLOP/s", "%peak", "");
    double tf_all = 0, tb_all = 0, fl_all = 0;
    for (int i = 0; i < nl; i++) {
        ml_conv_shape *s = &L[i].s;
        double f = 2.0 * s->B * s->O * s->C * s->k * s->k *
                   (s->transposed ? (double)s->H * s->W : (double)s->Ho * s->Wo);
        double fl = f * (L[i].need_dx ? 3 : 2);
        double tf = 1e9, tb = 1e9;
        for (int r = 0; r < reps + 1; r++) {
            double t0 = ml_now();
            if (s->transposed) ml_convt2d_forward(s, y, x, wt, b, ws);
            else ml_conv2d_forward(s, y, x, wt, b, ws);
            double t1 = ml_now();
            if (s->transposed) ml_convt2d_backward(s, L[i].need_dx ? dx : NULL, dw, db, dy, y, x, wt, ws);
            else ml_conv2d_backward(s, L[i].need_dx ? dx : NULL, dw, db, dy, y, x, wt, ws);
            double t2 = ml_now();
            if (r && t1 - t0 < tf) tf = t1 - t0;
            if (r && t2 - t1 < tb) tb = t2 - t1;
        }
        char sh[64];
        snprintf(sh, sizeof sh, "%dx%dx%d->%dx%dx%d", s->C, s->H, s->W, s->O, s->Ho, s->Wo);
        double g = fl / (tf + tb) * 1e-9;
        printf("%-10s %-22s %5d %9.2f %9.2f %9.3f %8.1f %7.0f%%\n", L[i].name, sh, s->chunk,
               tf * 1e3, tb * 1e3, fl * 1e-9, g, 100 * g / peak);
        tf_all += tf, tb_all += tb, fl_all += fl;
    }
    /* batch norm + relu of the four encoder blocks, and the four concats */
    double tbn = 0;
    {
        int hh = H / 2, ww = W / 2;
        float *mean = ml_alloc_floats(512), *rstd = ml_alloc_floats(512), *g = ml_alloc_floats(512);
        for (int i = 0; i < 4; i++, hh /= 2, ww /= 2) {
            double best = 1e9;
            for (int r = 0; r < reps + 1; r++) {
                double t0 = ml_now();
                ml_batchnorm2d_forward_train(y, mean, rstd, NULL, NULL, x, g, b, B, enc[i], hh * ww, 0.1f, 1e-5f, 1);
                ml_batchnorm2d_backward(dx, dw, db, dy, y, x, mean, rstd, g, B, enc[i], hh * ww, 1);
                ml_concat_channels_forward(y, x, dx, B, enc[i], enc[i], hh * ww);
                ml_concat_channels_backward(dx, dw, dy, B, enc[i], enc[i], hh * ww);
                double t = ml_now() - t0;
                if (r && t < best) best = t;
            }
            tbn += best;
        }
        free(mean), free(rstd), free(g);
    }
    printf("%-10s %-22s %5s %9.2f %9.2f %9.3f %8.1f %7.0f%%\n", "conv total", "", "", tf_all * 1e3,
           tb_all * 1e3, fl_all * 1e-9, fl_all / (tf_all + tb_all) * 1e-9,
           100 * fl_all / (tf_all + tb_all) * 1e-9 / peak);
    printf("bn+relu+concat fwd+bwd (4 blocks): %.2f ms\n", tbn * 1e3);
    printf("conv+bn+concat fwd+bwd: %.2f ms (%.1f img/s if nothing else ran)\n",
           (tf_all + tb_all + tbn) * 1e3, B / (tf_all + tb_all + tbn));
    return 0;
fail:
    fprintf(stderr, "conv_bench: %s\n", ml_error());
    return 1;
}
