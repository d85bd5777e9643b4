/* conv_bn.c — BatchNorm2d (optionally fused with ReLU) and channel concatenation. */
#include <math.h>
#include <string.h>

#include "conv.h"

/* Statistics per channel in double, one channel per thread, fixed order: deterministic. */
void ml_batchnorm2d_forward_train(float *y, float *mean, float *rstd, float *running_mean,
                                  float *running_var, const float *x, const float *gamma,
                                  const float *beta, int B, int C, int HW, float momentum,
                                  float eps, int relu) {
    const double N = (double)B * HW;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        double s = 0;
        for (int i = 0; i < B; i++) {
            const float *xp = x + ((size_t)i * C + c) * HW;
            float part = 0;
            for (int j = 0; j < HW; j++) part += xp[j];
            s += part;
        }
        const double mu = s / N;
        double ss = 0;
        for (int i = 0; i < B; i++) {
            const float *xp = x + ((size_t)i * C + c) * HW;
            const float m = (float)mu;
            float part = 0;
            for (int j = 0; j < HW; j++) part += (xp[j] - m) * (xp[j] - m);
            ss += part;
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
        for (int i = 0; i < B; i++) {
            const float *xp = x + ((size_t)i * C + c) * HW;
            float *yp = y + ((size_t)i * C + c) * HW;
            if (relu)
                for (int j = 0; j < HW; j++) {
                    const float v = xp[j] * a + bb;
                    yp[j] = v > 0 ? v : 0;
                }
            else
                for (int j = 0; j < HW; j++) yp[j] = xp[j] * a + bb;
        }
    }
}

void ml_batchnorm2d_forward_eval(float *y, const float *x, const float *gamma, const float *beta,
                                 const float *running_mean, const float *running_var, int B,
                                 int C, int HW, float eps, int relu) {
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        const float a = (float)(gamma[c] / sqrt((double)running_var[c] + eps));
        const float bb = beta[c] - running_mean[c] * a;
        for (int i = 0; i < B; i++) {
            const float *xp = x + ((size_t)i * C + c) * HW;
            float *yp = y + ((size_t)i * C + c) * HW;
            if (relu)
                for (int j = 0; j < HW; j++) {
                    const float v = xp[j] * a + bb;
                    yp[j] = v > 0 ? v : 0;
                }
            else
                for (int j = 0; j < HW; j++) yp[j] = xp[j] * a + bb;
        }
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
            float pg = 0, pgx = 0;
            for (int j = 0; j < HW; j++) {
                const float g = relu ? (y[off + j] > 0 ? dy[off + j] : 0) : dy[off + j];
                pg += g;
                pgx += g * (x[off + j] - mu) * r;
            }
            sg += pg;
            sgx += pgx;
        }
        if (dbeta) dbeta[c] += (float)sg;
        if (dgamma) dgamma[c] += (float)sgx;
        if (!dx) continue;
        const float mg = (float)(sg / N), mgx = (float)(sgx / N), a = gamma[c] * r;
        for (int i = 0; i < B; i++) {
            const size_t off = ((size_t)i * C + c) * HW;
            for (int j = 0; j < HW; j++) {
                const float g = relu ? (y[off + j] > 0 ? dy[off + j] : 0) : dy[off + j];
                dx[off + j] += a * (g - mg - (x[off + j] - mu) * r * mgx);
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
