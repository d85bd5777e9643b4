/* groupnorm.c — GroupNorm forward and backward, optionally fused with ReLU (groupnorm.h). */
#include "nn/groupnorm.h"

#include <math.h>
#include <stdlib.h>

#include "base/common.h"

#define PAR_MIN_FLOATS ((size_t)1 << 15)
/* reductions over a plane in LANES float partials (lane = j mod LANES), the lanes in order,
 * the planes of a group in double: a fixed order */
#define LANES 16

int ml_groupnorm_check(const char *what, int C, int G) {
    if (G < 1) return ml_errorf("%s: number of groups must be >= 1, got %d", what, G);
    if (C < 1 || C % G != 0)
        return ml_errorf("%s: %d channels do not split into %d groups (hint: the group count "
                         "must divide the channel count, e.g. %d)",
                         what, C, G, C >= 8 && C % 8 == 0 ? 8 : 1);
    return ML_OK;
}

static float lanes_sum(const float *a) {
    float s = 0;
    for (int l = 0; l < LANES; l++) s += a[l];
    return s;
}

/* sums of x - m and (x - m)^2 over one plane */
static void plane_moments(const float *x, int n, float m, double *s1, double *s2) {
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
    *s1 += lanes_sum(a1);
    *s2 += lanes_sum(a2);
}

void ml_groupnorm_forward(float *y, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int B, int C, int HW, int G, float eps, int relu) {
    const int Cg = C / G;
    const double N = (double)Cg * HW;
    const size_t n = (size_t)B * C * HW;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN_FLOATS)
    for (int bg = 0; bg < B * G; bg++) {
        const int b = bg / G, g = bg % G;
        const float *xg = x + ((size_t)b * C + (size_t)g * Cg) * HW;
        double s = 0, unused = 0;
        for (int c = 0; c < Cg; c++) plane_moments(xg + (size_t)c * HW, HW, 0.0f, &s, &unused);
        const float mu = (float)(s / N);
        double d1 = 0, d2 = 0;
        for (int c = 0; c < Cg; c++) plane_moments(xg + (size_t)c * HW, HW, mu, &d1, &d2);
        const float r = (float)(1.0 / sqrt(d2 / N + eps));
        mean[bg] = mu;
        rstd[bg] = r;
        for (int c = 0; c < Cg; c++) {
            const int ch = g * Cg + c;
            const float a = gamma[ch] * r, o = beta[ch] - mu * a;
            const float *xp = xg + (size_t)c * HW;
            float *yp = y + ((size_t)b * C + ch) * HW;
            if (relu)
#pragma omp simd
                for (int j = 0; j < HW; j++) {
                    const float v = xp[j] * a + o;
                    yp[j] = v > 0 ? v : 0;
                }
            else
#pragma omp simd
                for (int j = 0; j < HW; j++) yp[j] = xp[j] * a + o;
        }
    }
}

void ml_groupnorm_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *y,
                           const float *x, const float *mean, const float *rstd, const float *gamma,
                           int B, int C, int HW, int G, int relu) {
    const int Cg = C / G;
    const double N = (double)Cg * HW;
    const size_t n = (size_t)B * C * HW;
    if (!dx && !dgamma && !dbeta) return;
    /* per (image, channel): sum g and sum g xh, for the group's dx and for dgamma, dbeta */
    double *part = malloc(sizeof(double) * 2 * (size_t)B * C);
    if (!part) abort(); /* no way to report from inside a kernel */
#pragma omp parallel for schedule(static) if (n >= PAR_MIN_FLOATS)
    for (int bg = 0; bg < B * G; bg++) {
        const int b = bg / G, g = bg % G;
        const float mu = mean[bg], r = rstd[bg];
        double hs = 0, hxs = 0; /* sums of h = gamma g and of h xh over the group */
        for (int c = 0; c < Cg; c++) {
            const int ch = g * Cg + c;
            const size_t off = ((size_t)b * C + ch) * HW;
            const float *d = dy + off, *xp = x + off, *yp = relu ? y + off : NULL;
            float ag[LANES] = {0}, agx[LANES] = {0};
            int j = 0;
            for (; j + LANES <= HW; j += LANES)
#pragma omp simd
                for (int l = 0; l < LANES; l++) {
                    const float gv = !yp || yp[j + l] > 0 ? d[j + l] : 0.0f;
                    ag[l] += gv;
                    agx[l] += gv * ((xp[j + l] - mu) * r);
                }
            for (int l = 0; j < HW; j++, l++) {
                const float gv = !yp || yp[j] > 0 ? d[j] : 0.0f;
                ag[l] += gv;
                agx[l] += gv * ((xp[j] - mu) * r);
            }
            const double sg = lanes_sum(ag), sgx = lanes_sum(agx);
            part[2 * ((size_t)b * C + ch)] = sg;
            part[2 * ((size_t)b * C + ch) + 1] = sgx;
            hs += gamma[ch] * sg;
            hxs += gamma[ch] * sgx;
        }
        if (!dx) continue;
        const float mh = (float)(hs / N), mhx = (float)(hxs / N);
        for (int c = 0; c < Cg; c++) {
            const int ch = g * Cg + c;
            const size_t off = ((size_t)b * C + ch) * HW;
            const float *d = dy + off, *xp = x + off;
            const float gm = gamma[ch];
            float *o = dx + off;
            if (relu) {
                const float *yp = y + off;
#pragma omp simd
                for (int j = 0; j < HW; j++) {
                    const float gv = yp[j] > 0 ? d[j] : 0.0f;
                    o[j] += r * (gm * gv - mh - (xp[j] - mu) * r * mhx);
                }
            } else {
#pragma omp simd
                for (int j = 0; j < HW; j++) o[j] += r * (gm * d[j] - mh - (xp[j] - mu) * r * mhx);
            }
        }
    }
    if (dgamma || dbeta)
        for (int c = 0; c < C; c++) {
            double sg = 0, sgx = 0;
            for (int b = 0; b < B; b++) {
                sg += part[2 * ((size_t)b * C + c)];
                sgx += part[2 * ((size_t)b * C + c) + 1];
            }
            if (dbeta) dbeta[c] += (float)sg;
            if (dgamma) dgamma[c] += (float)sgx;
        }
    free(part);
}
