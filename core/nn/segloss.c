/* segloss.c — BCE with logits, soft IoU and soft Dice on mask logits (segloss.h).
 * Masks are one channel per image (B x 64 x 64 is 65k pixels, about 2 ms of exp and log1p
 * per pass on one core): the images are shared among the OpenMP threads, each image's sums
 * in double in a fixed order, the per-image terms added in image order. */
#include "nn/segloss.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

/* images per call from which the loops go parallel */
#define PAR_MIN_IMAGES 2

/* the sum over b in order of the per-image terms part[b] */
static double sum_images(const double *part, int B) {
    double total = 0;
    for (int b = 0; b < B; b++) total += part[b];
    return total;
}

static double *image_terms(int B) {
    double *part = malloc(sizeof(double) * (size_t)(B > 0 ? B : 1));
    if (!part) abort(); /* no way to report from inside a kernel */
    return part;
}

/* sigmoid without overflow: exp of a non-positive argument only */
static inline float sigm(float z) {
    if (z >= 0) return 1.0f / (1.0f + expf(-z));
    const float e = expf(z);
    return e / (1.0f + e);
}

static inline double bce(float z, float t) {
    return (double)(z > 0 ? z : 0.0f) - (double)z * t + log1p(exp(-fabs((double)z)));
}

double ml_bce_logits_forward(const float *z, const float *t, const float *wt, int B, int N) {
    double *part = image_terms(B);
#pragma omp parallel for schedule(static) if (B >= PAR_MIN_IMAGES)
    for (int b = 0; b < B; b++) {
        const size_t off = (size_t)b * N;
        double s = 0, sw = 0;
        for (int j = 0; j < N; j++) {
            const double w = wt ? wt[off + j] : 1.0;
            s += w * bce(z[off + j], t[off + j]);
            sw += w;
        }
        part[b] = s / sw;
    }
    const double total = sum_images(part, B);
    free(part);
    return total / B;
}

void ml_bce_logits_backward(float *dz, const float *z, const float *t, const float *wt, int B,
                            int N, float scale) {
#pragma omp parallel for schedule(static) if (B >= PAR_MIN_IMAGES)
    for (int b = 0; b < B; b++) {
        const size_t off = (size_t)b * N;
        double sw = N;
        if (wt) {
            sw = 0;
            for (int j = 0; j < N; j++) sw += wt[off + j];
        }
        const float k = (float)(scale / (sw * B));
        for (int j = 0; j < N; j++) {
            const float w = wt ? wt[off + j] : 1.0f;
            dz[off + j] += k * w * (sigm(z[off + j]) - t[off + j]);
        }
    }
}

/* I = sum wt p t, P = sum wt p, T = sum wt t of image b */
static void overlap_sums(const float *z, const float *t, const float *wt, size_t off, int N,
                         double *I, double *P, double *T) {
    double i = 0, p = 0, q = 0;
    for (int j = 0; j < N; j++) {
        const double w = wt ? wt[off + j] : 1.0, pj = sigm(z[off + j]), tj = t[off + j];
        i += w * pj * tj;
        p += w * pj;
        q += w * tj;
    }
    *I = i, *P = p, *T = q;
}

double ml_soft_iou_forward(const float *z, const float *t, const float *wt, int B, int N,
                           float smooth) {
    double *part = image_terms(B);
#pragma omp parallel for schedule(static) if (B >= PAR_MIN_IMAGES)
    for (int b = 0; b < B; b++) {
        double I, P, T;
        overlap_sums(z, t, wt, (size_t)b * N, N, &I, &P, &T);
        part[b] = 1.0 - (I + smooth) / (P + T - I + smooth);
    }
    const double total = sum_images(part, B);
    free(part);
    return total / B;
}

void ml_soft_iou_backward(float *dz, const float *z, const float *t, const float *wt, int B, int N,
                          float smooth, float scale) {
#pragma omp parallel for schedule(static) if (B >= PAR_MIN_IMAGES)
    for (int b = 0; b < B; b++) {
        const size_t off = (size_t)b * N;
        double I, P, T;
        overlap_sums(z, t, wt, off, N, &I, &P, &T);
        const double num = I + smooth, den = P + T - I + smooth;
        const double k = scale / (den * den * B);
        for (int j = 0; j < N; j++) {
            const double w = wt ? wt[off + j] : 1.0, p = sigm(z[off + j]), tj = t[off + j];
            dz[off + j] += (float)(k * w * (num * (1.0 - tj) - den * tj) * p * (1.0 - p));
        }
    }
}

double ml_soft_dice_forward(const float *z, const float *t, const float *wt, int B, int N,
                            float smooth) {
    double *part = image_terms(B);
#pragma omp parallel for schedule(static) if (B >= PAR_MIN_IMAGES)
    for (int b = 0; b < B; b++) {
        double I, P, T;
        overlap_sums(z, t, wt, (size_t)b * N, N, &I, &P, &T);
        part[b] = 1.0 - (2 * I + smooth) / (P + T + smooth);
    }
    const double total = sum_images(part, B);
    free(part);
    return total / B;
}

void ml_soft_dice_backward(float *dz, const float *z, const float *t, const float *wt, int B,
                           int N, float smooth, float scale) {
#pragma omp parallel for schedule(static) if (B >= PAR_MIN_IMAGES)
    for (int b = 0; b < B; b++) {
        const size_t off = (size_t)b * N;
        double I, P, T;
        overlap_sums(z, t, wt, off, N, &I, &P, &T);
        const double num = 2 * I + smooth, den = P + T + smooth;
        const double k = scale / (den * den * B);
        for (int j = 0; j < N; j++) {
            const double w = wt ? wt[off + j] : 1.0, p = sigm(z[off + j]), tj = t[off + j];
            dz[off + j] += (float)(k * w * (num - 2 * tj * den) * p * (1.0 - p));
        }
    }
}
