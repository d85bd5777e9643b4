/* gradcheck.c — finite-difference gradient checks by one policy (gradcheck.h). */
#include "nn/gradcheck.h"

#include <math.h>

ml_gc_policy ml_gc_default(void) { return (ml_gc_policy){1e-2, 1e-2, 1e-3, 1e-2, 96, 0}; }

double ml_gc_scale(const float *a, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s = fmax(s, fabs(a[i]));
    return s;
}

int ml_gradcheck(const ml_gc_policy *pol, ml_gc_fn f, void *ctx, float *x, size_t n, const float *analytic,
                 double scale, ml_gc_result *out) {
    ml_gc_policy p = pol ? *pol : ml_gc_default();
    ml_gc_result r = {0, 0, 0, 0, 0, 0, 0};
    double floor_ = fmax(p.abs_floor, p.rel_floor * scale);
    size_t max = p.max_entries > 0 ? (size_t)p.max_entries : 1;
    size_t stride = n > max ? n / max : 1;
    for (size_t i = 0; i < n; i += stride) {
        const float x0 = x[i];
        const double a = analytic[i];
        double best = INFINITY, best_fd = NAN;
        int computed = 0;
        double h = p.eps;
        for (int q = 0; q < 4 && !(best <= p.tol / 4); q++, h /= 4) {
            x[i] = (float)(x0 + h);
            const double up = (double)x[i];
            const double fp = f(ctx);
            x[i] = (float)(x0 - h);
            const double dn = (double)x[i];
            const double fm = f(ctx);
            x[i] = x0;
            if (isnan(fp) || isnan(fm) || up == dn) continue;
            const double fd = (fp - fm) / (up - dn);
            double err = fabs(a - fd) / fmax(floor_, fabs(a) + fabs(fd));
            if (isnan(err)) err = INFINITY;
            if (!computed || err < best) best = err, best_fd = fd;
            computed = 1;
        }
        if (!computed) {
            r.skipped++;
            continue;
        }
        r.checked++;
        if (!(best <= p.tol)) r.outliers++;
        if (best >= r.worst) {
            r.worst = best;
            r.index = i;
            r.analytic = a;
            r.numeric = best_fd;
        }
    }
    if (out) *out = r;
    return r.checked > 0 && r.outliers <= (p.max_outliers > 0 ? p.max_outliers : 0);
}
