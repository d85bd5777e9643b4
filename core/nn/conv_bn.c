/* conv_bn.c — BatchNorm2d (optionally fused with ReLU) and channel concatenation. */
#include <math.h>
#include <stdlib.h>
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

/* Forward in three steps per channel, so that a split batch can sum the channel's sums over
 * the processes between them: the sum of x (pass 1), the sum of (x - mean)^2 about the mean
 * (pass 2), then the statistics, running updates and the affine map (finish). */
static double channel_sum(const float *x, int B, int C, int HW, int c) {
    double s = 0;
    for (int i = 0; i < B; i++) {
        float s1, s2;
        plane_moments(x + ((size_t)i * C + c) * HW, HW, 0.0f, &s1, &s2);
        s += s1;
    }
    return s;
}

static double channel_sumsq(const float *x, int B, int C, int HW, int c, double mu) {
    double ss = 0;
    for (int i = 0; i < B; i++) {
        float s1, s2;
        plane_moments(x + ((size_t)i * C + c) * HW, HW, (float)mu, &s1, &s2);
        ss += s2;
    }
    return ss;
}

/* The affine map y = x a + b of channel c from its saved statistics: forward_train's, and
 * the backward's ReLU mask (relu 2) recomputed from the same floats (b 0 without beta) */
static float mask_a(const float *gamma, const float *rstd, int c) { return gamma[c] * rstd[c]; }
static float mask_b(const float *beta, const float *mean, float a, int c) { return beta ? beta[c] - mean[c] * a : 0.0f; }

static void channel_finish(float *y, float *mean, float *rstd, float *running_mean, float *running_var,
                           const float *x, const float *gamma, const float *beta, int B, int C, int HW,
                           float momentum, float eps, int relu, int c, double N, double mu, double ss) {
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
    const float a = mask_a(gamma, rstd, c), bb = mask_b(beta, mean, a, c);
    for (int i = 0; i < B; i++)
        affine_plane(y + ((size_t)i * C + c) * HW, x + ((size_t)i * C + c) * HW, HW, a, bb, relu);
}

void ml_batchnorm2d_forward_train(float *y, float *mean, float *rstd, float *running_mean,
                                  float *running_var, const float *x, const float *gamma,
                                  const float *beta, int B, int C, int HW, float momentum,
                                  float eps, int relu) {
    const double N = (double)B * HW;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        const double mu = channel_sum(x, B, C, HW, c) / N;
        const double ss = channel_sumsq(x, B, C, HW, c, mu);
        channel_finish(y, mean, rstd, running_mean, running_var, x, gamma, beta, B, C, HW, momentum, eps,
                       relu, c, N, mu, ss);
    }
}

/*
 * The split batch: the two passes of one process, each channel's partial sums (and the
 * count) summed over the processes in double between them. One process adds its images'
 * plane sums in order; here each process adds its own images', then the processes' totals
 * are added: the same terms, grouped differently in double, so mean and variance agree with
 * one process's to double rounding (~1e-16 relative), far below the float results'.
 */
int ml_batchnorm2d_forward_train_part(const ml_comm *comm, float *y, float *mean, float *rstd,
                                      float *running_mean, float *running_var, const float *x,
                                      const float *gamma, const float *beta, int B, int C, int HW,
                                      float momentum, float eps, int relu) {
    if (!comm || comm->size < 2) {
        ml_batchnorm2d_forward_train(y, mean, rstd, running_mean, running_var, x, gamma, beta, B, C, HW,
                                     momentum, eps, relu);
        return ML_OK;
    }
    double *sum = malloc(sizeof(double) * (2 * (size_t)C + 1)), *sq = sum ? sum + C + 1 : NULL;
    if (!sum) return ml_errorf("batchnorm2d: out of memory for %d channels", C);
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) sum[c] = channel_sum(x, B, C, HW, c);
    sum[C] = (double)B * HW;
    if (comm->sum_doubles(sum, (size_t)C + 1)) goto fail;
    const double N = sum[C];
    if (N < 2) {
        free(sum);
        return ml_errorf("batchnorm2d: %g values per channel over all processes, training needs >= 2", N);
    }
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) sq[c] = channel_sumsq(x, B, C, HW, c, sum[c] / N);
    if (comm->sum_doubles(sq, (size_t)C)) goto fail;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++)
        channel_finish(y, mean, rstd, running_mean, running_var, x, gamma, beta, B, C, HW, momentum, eps,
                       relu, c, N, sum[c] / N, sq[c]);
    free(sum);
    return ML_OK;
fail:
    free(sum);
    return ml_error_prefix("batchnorm2d: summing the batch statistics over the processes");
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
 * In two steps per channel: the sums of g and g xh, then dx from their means.
 * The ReLU's mask: relu 1 reads y > 0; relu 2 recomputes it from x as the forward computed
 * y (affine_plane: x a + b > 0, a = gamma rstd, b = beta - mean a, given as ma and mb), the
 * same floats, so the same mask, without reading y.
 */
/* one plane's sums of g and g xh in LANES lanes; RELU a literal 0, 1 or 2 in each call */
static inline __attribute__((always_inline)) void plane_grad_sums(const int RELU, const float *d, const float *yp,
                                                                  const float *xp, int HW, float mu, float r,
                                                                  float ma, float mb, float *ag, float *agx) {
    int j = 0;
    for (; j + LANES <= HW; j += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            const float g = RELU == 2 ? (xp[j + l] * ma + mb > 0 ? d[j + l] : 0.0f)
                            : RELU == 1 ? (yp[j + l] > 0 ? d[j + l] : 0.0f) : d[j + l];
            ag[l] += g;
            agx[l] += g * (xp[j + l] - mu) * r;
        }
    for (int l = 0; j < HW; j++, l++) {
        const float g = RELU == 2 ? (xp[j] * ma + mb > 0 ? d[j] : 0.0f) : RELU == 1 ? (yp[j] > 0 ? d[j] : 0.0f) : d[j];
        ag[l] += g;
        agx[l] += g * (xp[j] - mu) * r;
    }
}

static void channel_grad_sums(const float *dy, const float *y, const float *x, float mu, float r, int B,
                              int C, int HW, int relu, float ma, float mb, int c, double *sg_out,
                              double *sgx_out) {
    double sg = 0, sgx = 0;
    for (int i = 0; i < B; i++) {
        const size_t off = ((size_t)i * C + c) * HW;
        const float *d = dy + off, *xp = x + off, *yp = relu == 1 ? y + off : NULL;
        float ag[LANES] = {0}, agx[LANES] = {0};
        switch (relu) {
        case 2: plane_grad_sums(2, d, yp, xp, HW, mu, r, ma, mb, ag, agx); break;
        case 1: plane_grad_sums(1, d, yp, xp, HW, mu, r, ma, mb, ag, agx); break;
        default: plane_grad_sums(0, d, yp, xp, HW, mu, r, ma, mb, ag, agx); break;
        }
        sg += lanes_sum(ag);
        sgx += lanes_sum(agx);
    }
    *sg_out = sg;
    *sgx_out = sgx;
}

/* set: dx's planes are zeroed here, each just before it is added to (in cache), instead of
 * by the caller in a pass of its own: the same additions, the same bits */
static void channel_dx(float *dx, const float *dy, const float *y, const float *x, float mu, float r,
                       float gamma, int B, int C, int HW, int relu, float ma, float mb, int c, float mg,
                       float mgx, int set) {
    const float a = gamma * r;
    for (int i = 0; i < B; i++) {
        const size_t off = ((size_t)i * C + c) * HW;
        const float *d = dy + off, *xp = x + off;
        float *o = dx + off;
        if (set) memset(o, 0, sizeof(float) * (size_t)HW);
        if (relu == 2) {
#pragma omp simd
            for (int j = 0; j < HW; j++) {
                const float g = xp[j] * ma + mb > 0 ? d[j] : 0.0f;
                o[j] += a * (g - mg - (xp[j] - mu) * r * mgx);
            }
        } else if (relu) {
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

static void bn_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *y,
                        const float *x, const float *mean, const float *rstd, const float *gamma,
                        const float *beta, int B, int C, int HW, int relu, int set) {
    const double N = (double)B * HW;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        double sg, sgx;
        const float ma = mask_a(gamma, rstd, c), mb = mask_b(beta, mean, ma, c);
        channel_grad_sums(dy, y, x, mean[c], rstd[c], B, C, HW, relu, ma, mb, c, &sg, &sgx);
        if (dbeta) dbeta[c] += (float)sg;
        if (dgamma) dgamma[c] += (float)sgx;
        if (!dx) continue;
        channel_dx(dx, dy, y, x, mean[c], rstd[c], gamma[c], B, C, HW, relu, ma, mb, c, (float)(sg / N),
                   (float)(sgx / N), set);
    }
}

void ml_batchnorm2d_backward(float *dx, float *dgamma, float *dbeta, const float *dy,
                             const float *y, const float *x, const float *mean, const float *rstd,
                             const float *gamma, int B, int C, int HW, int relu) {
    bn_backward(dx, dgamma, dbeta, dy, y, x, mean, rstd, gamma, NULL, B, C, HW, relu ? 1 : 0, 0);
}

/*
 * The split batch: dgamma and dbeta get this process's sums (the model's gradient sum adds
 * the processes'), dx the means over the whole batch, its sums and count summed over the
 * processes.
 */
static int bn_backward_part(const ml_comm *comm, float *dx, float *dgamma, float *dbeta, const float *dy,
                            const float *y, const float *x, const float *mean, const float *rstd,
                            const float *gamma, const float *beta, int B, int C, int HW, int relu, int set) {
    if (!comm || comm->size < 2) {
        bn_backward(dx, dgamma, dbeta, dy, y, x, mean, rstd, gamma, beta, B, C, HW, relu, set);
        return ML_OK;
    }
    double *sum = malloc(sizeof(double) * (2 * (size_t)C + 1)); /* sg (C), sgx (C), count */
    if (!sum) return ml_errorf("batchnorm2d: out of memory for %d channels", C);
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        const float ma = mask_a(gamma, rstd, c);
        channel_grad_sums(dy, y, x, mean[c], rstd[c], B, C, HW, relu, ma, mask_b(beta, mean, ma, c), c, &sum[c],
                          &sum[C + c]);
        if (dbeta) dbeta[c] += (float)sum[c];
        if (dgamma) dgamma[c] += (float)sum[C + c];
    }
    sum[2 * C] = (double)B * HW;
    /* dx NULL is the call site's, alike on every process: all of them skip the sum */
    if (dx && comm->sum_doubles(sum, 2 * (size_t)C + 1)) {
        free(sum);
        return ml_error_prefix("batchnorm2d: summing the gradient statistics over the processes");
    }
    if (dx) {
        const double N = sum[2 * C];
#pragma omp parallel for schedule(static)
        for (int c = 0; c < C; c++) {
            const float ma = mask_a(gamma, rstd, c);
            channel_dx(dx, dy, y, x, mean[c], rstd[c], gamma[c], B, C, HW, relu, ma, mask_b(beta, mean, ma, c), c,
                       (float)(sum[c] / N), (float)(sum[C + c] / N), set);
        }
    }
    free(sum);
    return ML_OK;
}

int ml_batchnorm2d_backward_part(const ml_comm *comm, float *dx, float *dgamma, float *dbeta,
                                 const float *dy, const float *y, const float *x, const float *mean,
                                 const float *rstd, const float *gamma, int B, int C, int HW, int relu) {
    return bn_backward_part(comm, dx, dgamma, dbeta, dy, y, x, mean, rstd, gamma, NULL, B, C, HW, relu ? 1 : 0, 0);
}

int ml_batchnorm2d_backward_part_set(const ml_comm *comm, float *dx, float *dgamma, float *dbeta,
                                     const float *dy, const float *y, const float *x, const float *mean,
                                     const float *rstd, const float *gamma, int B, int C, int HW, int relu) {
    return bn_backward_part(comm, dx, dgamma, dbeta, dy, y, x, mean, rstd, gamma, NULL, B, C, HW, relu ? 1 : 0, 1);
}

int ml_batchnorm2d_relu_backward_part_set(const ml_comm *comm, float *dx, float *dgamma, float *dbeta,
                                          const float *dy, const float *x, const float *mean, const float *rstd,
                                          const float *gamma, const float *beta, int B, int C, int HW) {
    return bn_backward_part(comm, dx, dgamma, dbeta, dy, NULL, x, mean, rstd, gamma, beta, B, C, HW, 2, 1);
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
