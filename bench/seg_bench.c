/*
 * seg_bench.c — times the segmentation MoE's layers and losses (nn/filter, nn/resample,
 * nn/groupnorm, nn/channels, nn/segloss) per call at the size an expert sees, B 16, C 64,
 * 64 x 64 by default, with a 3x3 conv2d 64 -> 16 (one texture branch) as a yardstick.
 * Build by hand from the repository root after `make all`:
 *   B=/usr/lib/x86_64-linux-gnu/openblas-openmp
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -march=native -fopenmp -Icore -Icore/include \
 *       -I/usr/include/x86_64-linux-gnu/openblas-openmp bench/seg_bench.c build/libmoelab.a \
 *       -o build/seg_bench -L$B -Wl,-rpath,$B -lopenblas -lm
 *   build/seg_bench [B C H W [threads [reps [filter]]]]   (default 16 64 64 64 2 10)
 * filter: time only the kernels whose name contains it (e.g. "lcn", "fwd").
 * Prints one line per kernel: the best and the median of `reps` timed calls after one
 * warm-up, and the bytes the call must move at least (inputs read + outputs written, the
 * accumulated gradients read and written) over the best time, and the least CPU time of the
 * calling thread (with threads=1: the cost of the call itself even when other processes
 * share the machine, which stretch the wall clock). The best of several calls is the
 * figure that estimates the cost on an idle machine.
 */
#include <omp.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "nn/channels.h"
#include "nn/conv.h"
#include "nn/filter.h"
#include "nn/groupnorm.h"
#include "nn/resample.h"
#include "nn/segloss.h"

void openblas_set_num_threads(int n);

/* CPU seconds of the calling thread: with one thread, the cost of a call on an idle core
 * even when other processes share the machine */
static double thread_cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int B, C, H, W, reps;
static float *x, *x2, *y, *y2, *y3, *g, *g2, *g3, *dx, *mean, *rstd, *w, *dw, *big, *dbig;
static float gm[1024], bt[1024], dgm[1024], dbt[1024], gmean[4096], grstd[4096];
static float *z, *t, *dz, *cbuf, *cws;
static ml_conv_shape cs;

enum {
    K_AVG3, K_AVG3_B, K_AVG5, K_AVG5_B, K_AVG31, K_BANDS, K_BANDS_B, K_EDGE, K_EDGE_B, K_DW3_B,
    K_LCN3, K_LCN3_B, K_LCN5, K_LCN5_B, K_GAP, K_GAP_B, K_UPB, K_UPB_B, K_UPN, K_UPN_B, K_GN,
    K_GN_B, K_CAT4, K_CAT4_B, K_BCE, K_BCE_B, K_IOU, K_IOU_B, K_CONV, K_CONV_B, K_N
};
static const char *names[K_N] = {
    "avgpool k3 fwd", "avgpool k3 bwd", "avgpool k5 fwd", "avgpool k5 bwd", "avgpool k31 fwd",
    "freqbands 3/5 fwd", "freqbands 3/5 bwd", "edge dwconv m3 fwd", "edge dwconv bwd dx",
    "dwconv k3 bwd dx+dw+db", "lcn k3 fwd", "lcn k3 bwd", "lcn k5 fwd", "lcn k5 bwd",
    "global avgpool fwd", "global avgpool bwd", "bilinear x2 fwd (in H/2)", "bilinear x2 bwd (in H/2)",
    "nearest x2 fwd (in H/2)", "nearest x2 bwd (in H/2)", "groupnorm G8 relu fwd", "groupnorm G8 relu bwd",
    "concat 4 x C/4 fwd", "concat 4 x C/4 bwd", "bce mask fwd", "bce mask bwd", "soft iou mask fwd",
    "soft iou mask bwd", "conv2d 3x3 C->C/4 fwd", "conv2d 3x3 C->C/4 bwd dx+dw+db",
};

/* floats moved at least by one call (read + written) */
static double floats_moved(int k) {
    const double n = (double)B * C * H * W, nh = n / 4, m = (double)B * H * W;
    switch (k) {
    case K_AVG3: case K_AVG5: case K_AVG31: return 2 * n;
    case K_AVG3_B: case K_AVG5_B: return 3 * n;
    case K_BANDS: return 4 * n;
    case K_BANDS_B: return 5 * n;
    case K_EDGE: return 4 * n;
    case K_EDGE_B: return 5 * n;
    case K_DW3_B: return 4 * n;
    case K_LCN3: case K_LCN5: return 4 * n;
    case K_LCN3_B: case K_LCN5_B: return 7 * n;
    case K_GAP: return n;
    case K_GAP_B: return 2 * n;
    case K_UPB: case K_UPN: return nh + n;
    case K_UPB_B: case K_UPN_B: return n + 2 * nh;
    case K_GN: return 2 * n;
    case K_GN_B: return 5 * n;
    case K_CAT4: return 2 * n;
    case K_CAT4_B: return 3 * n;
    case K_BCE: case K_IOU: return 2 * m;
    case K_BCE_B: case K_IOU_B: return 4 * m;
    case K_CONV: return n + nh;
    case K_CONV_B: return 3 * n + nh;
    }
    return 0;
}

static void run(int k) {
    const int HW = H * W, Cq = C / 4;
    switch (k) {
    case K_AVG3: ml_avgpool_forward(y, x, B, C, H, W, 3); break;
    case K_AVG3_B: ml_avgpool_backward(dx, g, B, C, H, W, 3); break;
    case K_AVG5: ml_avgpool_forward(y, x, B, C, H, W, 5); break;
    case K_AVG5_B: ml_avgpool_backward(dx, g, B, C, H, W, 5); break;
    case K_AVG31: ml_avgpool_forward(y, x, B, C, H, W, 31); break;
    case K_BANDS: ml_freqbands_forward(y, y2, y3, x, B, C, H, W, 3, 5); break;
    case K_BANDS_B: ml_freqbands_backward(dx, g, g2, g3, B, C, H, W, 3, 5); break;
    case K_EDGE: ml_dwconv_forward(big, x, w, NULL, B, C, H, W, 3, 3); break;
    case K_EDGE_B: ml_dwconv_backward(dx, NULL, NULL, dbig, x, w, B, C, H, W, 3, 3); break;
    case K_DW3_B: ml_dwconv_backward(dx, dw, dgm, g, x, w, B, C, H, W, 1, 3); break;
    case K_LCN3: ml_lcn_forward(y, mean, rstd, x, B, C, H, W, 3, 1e-4f); break;
    case K_LCN3_B: ml_lcn_backward(dx, g, y, x, mean, rstd, B, C, H, W, 3); break;
    case K_LCN5: ml_lcn_forward(y, mean, rstd, x, B, C, H, W, 5, 1e-4f); break;
    case K_LCN5_B: ml_lcn_backward(dx, g, y, x, mean, rstd, B, C, H, W, 5); break;
    case K_GAP: ml_global_avgpool_forward(y, x, B, C, HW); break;
    case K_GAP_B: ml_global_avgpool_backward(dx, g, B, C, HW); break;
    case K_UPB: ml_upsample_bilinear_forward(y, x2, B, C, H / 2, W / 2, 2); break;
    case K_UPB_B: ml_upsample_bilinear_backward(x2, g, B, C, H / 2, W / 2, 2); break;
    case K_UPN: ml_upsample_nearest_forward(y, x2, B, C, H / 2, W / 2, 2); break;
    case K_UPN_B: ml_upsample_nearest_backward(x2, g, B, C, H / 2, W / 2, 2); break;
    case K_GN: ml_groupnorm_forward(y, gmean, grstd, x, gm, bt, B, C, HW, 8, 1e-5f, 1); break;
    case K_GN_B: ml_groupnorm_backward(dx, dgm, dbt, g, y, x, gmean, grstd, gm, B, C, HW, 8, 1); break;
    case K_CAT4: {
        const float *xs[4] = {x, x + (size_t)B * Cq * HW, x + (size_t)2 * B * Cq * HW, x + (size_t)3 * B * Cq * HW};
        const int cc[4] = {Cq, Cq, Cq, Cq};
        ml_channels_concat_forward(y, xs, cc, 4, B, HW);
        break;
    }
    case K_CAT4_B: {
        float *dxs[4] = {dx, dx + (size_t)B * Cq * HW, dx + (size_t)2 * B * Cq * HW, dx + (size_t)3 * B * Cq * HW};
        const int cc[4] = {Cq, Cq, Cq, Cq};
        ml_channels_concat_backward(dxs, g, cc, 4, B, HW);
        break;
    }
    case K_BCE: (void)ml_bce_logits_forward(z, t, NULL, B, HW); break;
    case K_BCE_B: ml_bce_logits_backward(dz, z, t, NULL, B, HW, 1.0f); break;
    case K_IOU: (void)ml_soft_iou_forward(z, t, NULL, B, HW, 1.0f); break;
    case K_IOU_B: ml_soft_iou_backward(dz, z, t, NULL, B, HW, 1.0f, 1.0f); break;
    case K_CONV: ml_conv2d_forward(&cs, cbuf, x, w, gm, cws); break;
    case K_CONV_B: ml_conv2d_backward(&cs, dx, dw, dgm, g, NULL, x, w, cws); break;
    }
}

static float *buf(size_t n, unsigned seed) {
    float *p = ml_alloc_floats(n);
    if (!p) {
        fprintf(stderr, "seg_bench: out of memory (%zu floats)\n", n);
        exit(1);
    }
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        p[i] = (float)((s >> 8) & 0xffff) / 65536.0f - 0.5f;
    }
    return p;
}

int main(int argc, char **argv) {
    B = argc > 4 ? atoi(argv[1]) : 16;
    C = argc > 4 ? atoi(argv[2]) : 64;
    H = argc > 4 ? atoi(argv[3]) : 64;
    W = argc > 4 ? atoi(argv[4]) : 64;
    const int T = argc > 5 ? atoi(argv[5]) : 2;
    reps = argc > 6 ? atoi(argv[6]) : 10;
    const char *filter = argc > 7 ? argv[7] : NULL;
    if (B < 1 || C < 4 || C % 8 || C > 1024 || H < 2 || W < 2 || H % 2 || W % 2 || reps < 1) {
        fprintf(stderr, "usage: seg_bench [B C H W [threads [reps]]] (C a multiple of 8, H and W even)\n");
        return 2;
    }
    openblas_set_num_threads(T);
    omp_set_num_threads(T);
    const size_t n = (size_t)B * C * H * W, m = (size_t)B * H * W;
    x = buf(n, 1), y = buf(n, 2), y2 = buf(n, 3), y3 = buf(n, 4), g = buf(n, 5), g2 = buf(n, 6);
    g3 = buf(n, 7), dx = buf(n, 8), mean = buf(n, 9), rstd = buf(n, 10), x2 = buf(n / 4, 11);
    big = buf(3 * n, 12), dbig = buf(3 * n, 13), w = buf((size_t)C * C * 9, 14), dw = buf((size_t)C * C * 9, 15);
    z = buf(m, 16), t = buf(m, 17), dz = buf(m, 18);
    for (size_t i = 0; i < m; i++) t[i] = t[i] > 0 ? 1.0f : 0.0f;
    for (int c = 0; c < C; c++) gm[c] = 1, bt[c] = 0;
    ml_dwconv_edge_weights(w, C);
    if (ml_conv2d_shape(&cs, B, C, H, W, C / 4, 3, 1, 1, ML_CONV_ACT_NONE)) {
        fprintf(stderr, "seg_bench: %s\n", ml_error());
        return 1;
    }
    cbuf = buf(ml_conv_out_size(&cs), 19), cws = buf(ml_conv_workspace_floats(&cs), 20);
    printf("seg_bench B=%d C=%d H=%d W=%d threads=%d reps=%d\n", B, C, H, W, T, reps);
    double *ts = malloc(sizeof(double) * (size_t)reps), *cpu = malloc(sizeof(double) * (size_t)reps);
    for (int k = 0; k < K_N; k++) {
        if (filter && !strstr(names[k], filter)) continue;
        if (k == K_EDGE_B) memcpy(dbig, big, sizeof(float) * 3 * n); /* any gradient */
        run(k); /* warm-up */
        for (int r = 0; r < reps; r++) {
            const double c0 = thread_cpu(), t0 = ml_now();
            run(k);
            ts[r] = ml_now() - t0;
            cpu[r] = thread_cpu() - c0;
        }
        qsort(ts, (size_t)reps, sizeof *ts, cmp_double);
        qsort(cpu, (size_t)reps, sizeof *cpu, cmp_double);
        printf("%-32s best %8.3f ms  median %8.3f ms  %6.1f GB/s  main-thread cpu %8.3f ms\n",
               names[k], ts[0] * 1e3, ts[reps / 2] * 1e3, floats_moved(k) * 4 / ts[0] * 1e-9,
               cpu[0] * 1e3);
    }
    free(ts);
    free(cpu);
    return 0;
}
