/* conv_bn.c — BatchNorm2d (optionally fused with ReLU) and channel concatenation. */
#include <math.h>
#include <string.h>

#include "nn/conv.h"

/* Reductions over a plane run in LANES float partials (lane = j mod LANES), so they
 * vectorise without reassociation; the lanes are then summed in order, and the planes of a
 * channel in double, image by image. One channel per thread, static schedule: the results
 * are bitwise identical for a given thread count (and across thread counts too). */
#define LANES 16

static float lanes_sum(const float *acc) {
    float s = 0;
    for (int l = 0; l < LANES; l++) s += acc[l];
    return s;
}

/* sum of x[j] - m (m = 0: plain sum) and of (x[j] - m)^2 over j < n */
static void plane_moments(const float *x, int n, float m, float *s1, float *s2) {
    float a1[LANES] = {0}, a2[LANES] = {0};
    int j = 0;
    for (; j + LANES <= n; j += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            const float d = x[j + l] - m;
            a1[l] += d;
            a2[l] += d * d;
        }
    for (int l = 0; j < n; j++, l++) {
        const float d = x[j] - m;
        a1[l] += d;
        a2[l] += d * d;
    }
    *s1 = lanes_sum(a1);
    *s2 = lanes_sum(a2);
}

static void affine_plane(float *y, const float *x, int n, float a, float b, int relu) {
    if (relu)
#pragma omp simd
        for (int j = 0; j < n; j++) {
            const float v = x[j] * a + b;
            y[j] = v > 0 ? v : 0;
        }
    else
#pragma omp simd
        for (int j = 0; j < n; j++) y[j] = x[j] * a + b;
}

void ml_batchnorm2d_forward_train(float *y, float *mean, float *rstd, float *running_mean,
                                  float *running_var, const float *x, const float *gamma,
                                  const float *beta, int B, int C, int HW, float momentum,
                                  float eps, int relu) {
    const double N = (double)B * HW;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int i = 0; i < B; i++) {
            float s1, s2;
            plane_moments(x + ((size_t)i * C + c) * HW, HW, 0.0f, &s1, &s2);
            s += s1;
        }
        const double mu = s / N;
        double ss = 0;
        for (int i = 0; i < B; i++) {
            float s1, s2;
            plane_moments(x + ((size_t)i * C + c) * HW, HW, (float)mu, &s1, &s2);
            ss += s2;
        }
        const double var = ss / N;
        const float r = (float)(1.0 / sqrt(var + eps));
        mean[c] = (float)mu;
        rstd[c] = r;
        if (running_mean)
            running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mu);
        if (running_var) {
            const double unbiased = N > 1 ? ss / (N - 1) : var;
            running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
        }
        const float a = gamma[c] * r, bb = beta[c] - (float)mu * a;
        for (int i = 0; i < B; i++)
            affine_plane(y + ((size_t)i * C + c) * HW, x + ((size_t)i * C + c) * HW, HW, a, bb,
                         relu);
    }
}

void ml_batchnorm2d_forward_eval(float *y, const float *x, const float *gamma, const float *beta,
                                 const float *running_mean, const float *running_var, int B,
                                 int C, int HW, float eps, int relu) {
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        const float a = (float)(gamma[c] / sqrt((double)running_var[c] + eps));
        const float bb = beta[c] - running_mean[c] * a;
        for (int i = 0; i < B; i++)
            affine_plane(y + ((size_t)i * C + c) * HW, x + ((size_t)i * C + c) * HW, HW, a, bb,
                         relu);
    }
}

/*
 * With xh = (x - mean) rstd and g = dy (masked by y > 0 under relu):
 *   dbeta += sum g, dgamma += sum g xh,
 *   dx += gamma rstd (g - mean(g) - xh mean(g xh)).
 */
void ml_batchnorm2d_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *y, const float *x, const float *mean, const float *rstd,
                             const float *gamma, int B, int C, int HW, int relu) {
    const double N = (double)B * HW;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        const float mu = mean[c], r = rstd[c];
        double sg = 0, sgx = 0;
        for (int i = 0; i < B; i++) {
            const size_t off = ((size_t)i * C + c) * HW;
            const float *d = dy + off, *xp = x + off, *yp = relu ? y + off : NULL;
            float ag[LANES] = {0}, agx[LANES] = {0};
            int j = 0;
            for (; j + LANES <= HW; j += LANES)
#pragma omp simd
                for (int l = 0; l < LANES; l++) {
                    const float g = !yp || yp[j + l] > 0 ? d[j + l] : 0.0f;
                    ag[l] += g;
                    agx[l] += g * (xp[j + l] - mu) * r;
                }
            for (int l = 0; j < HW; j++, l++) {
                const float g = !yp || yp[j] > 0 ? d[j] : 0.0f;
                ag[l] += g;
                agx[l] += g * (xp[j] - mu) * r;
            }
            sg += lanes_sum(ag);
            sgx += lanes_sum(agx);
        }
        if (dbeta) dbeta[c] += (float)sg;
        if (dgamma) dgamma[c] += (float)sgx;
        if (!dx) continue;
        const float mg = (float)(sg / N), mgx = (float)(sgx / N), a = gamma[c] * r;
        for (int i = 0; i < B; i++) {
            const size_t off = ((size_t)i * C + c) * HW;
            const float *d = dy + off, *xp = x + off;
            float *o = dx + off;
            if (relu) {
                const float *yp = y + off;
#pragma omp simd
                for (int j = 0; j < HW; j++) {
                    const float g = yp[j] > 0 ? d[j] : 0.0f;
                    o[j] += a * (g - mg - (xp[j] - mu) * r * mgx);
                }
            } else {
#pragma omp simd
                for (int j = 0; j < HW; j++) o[j] += a * (d[j] - mg - (xp[j] - mu) * r * mgx);
            }
        }
    }
}

void ml_concat_channels_forward(float *y, const float *a, const float *b, int B, int Ca, int Cb,
                                int HW) {
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < B; i++) {
        memcpy(y + (size_t)i * (na + nb), a + (size_t)i * na, sizeof(float) * na);
        memcpy(y + (size_t)i * (na + nb) + na, b + (size_t)i * nb, sizeof(float) * nb);
    }
}

void ml_concat_channels_backward(float *da, float *db, const float *dy, int B, int Ca, int Cb,
                                 int HW) {
    const size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < B; i++) {
        const float *d = dy + (size_t)i * (na + nb);
        if (da)
            for (size_t j = 0; j < na; j++) da[(size_t)i * na + j] += d[j];
        if (db)
            for (size_t j = 0; j < nb; j++) db[(size_t)i * nb + j] += d[na + j];
    }
}
