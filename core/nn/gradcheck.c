/* gradcheck.c — finite-difference gradient checks by one policy (gradcheck.h). */
#include "nn/gradcheck.h"

#include <math.h>

enum { STEPS = 4 }; /* h = eps, eps/4, eps/16, eps/64 */

ml_gc_policy ml_gc_default(void) { return (ml_gc_policy){1e-2, 1e-2, 1e-3, 1e-2, 96, 0, 0}; }

double ml_gc_scale(const float *a, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s = fmax(s, fabs(a[i]));
    return s;
}

/* The policy's error of a against b: |a - b| / max(floor, |a| + |b|), NaN as infinite. */
static double gc_err(double a, double b, double floor_) {
    double err = fabs(a - b) / fmax(floor_, fabs(a) + fabs(b));
    return isnan(err) ? INFINITY : err;
}

/*
 * Kinks (policy kinks; gradcheck.h "Kinks"). The problem is the one of CS231n's notes
 * ("Neural Networks Part 3", Gradient checks, "Kinks in the objective",
 * https://cs231n.github.io/neural-networks-3/#gradcheck): a ReLU or max
 * makes f non-differentiable, and a difference whose step crosses the kink measures a mix of
 * the two slopes, while the analytic gradient is the slope of one piece. The notes suggest
 * tracking which side of each max won; moelab's f is a whole network, so this test looks at
 * f alone: on the side of the base point without a kink f is smooth, and the analytic
 * gradient a must be its one-sided derivative there.
 *
 * fs[side][q], xs[side][q]: f and the stored x at x0 + h_q (side 0) and x0 - h_q (side 1),
 * f NaN where not evaluated or not comparable; f0 = f(x0). An entry comes here only when no
 * step met tol / 4, so every step of the ladder was evaluated.
 *
 * One-sided quotients s(h) = (f(x0 +- h) - f0) / +-h carry two errors the central
 * difference keeps smaller, and the ladder is there to find a step where both are small:
 * - truncation, O(h): s(h) = a +- f'' h / 2, an error of about |f''| h / (4 |a|), which
 *   grows with h (within tol = 1e-2 at h = eps = 1e-2 while |f''| <= 4 |a|, at eps/64
 *   while |f''| <= 256 |a|);
 * - float noise: the model computes in float, so f carries a rounding noise delta (about
 *   1e-8 on COD's loss of 1.5, measured), which enters s(h) as delta / h, twice its weight
 *   in a central difference at the same h, and grows as h shrinks (at eps/64 it took the
 *   one-sided quotient of a correct gradient of 1.3e-3 in COD's check to an error of 0.017).
 * The tolerance is tol, by the same error measure as the central differences, not a looser
 * one: an entry is a kink when, at two consecutive steps of the ladder (h and h/4), the
 * one-sided quotient of one side is within tol of a at both, and at one of those steps the
 * two sides differ from each other by more than tol (the kink shows; two sides that agree
 * would have made the central difference, their mean, match). Where curvature or noise
 * spoil every pair, the entry stays an outlier: the test errs toward reporting, never
 * toward hiding. Two steps, not one: on the kink's side, with the kink at distance d < h,
 * s(h) = b + (a - b) d / h sweeps every value between the two pieces' slopes a and b as h
 * passes d, so it can meet a wrong value at one step by chance, hardly at two four apart.
 * Resolution: when the kink is closer than both steps of a pair, its side gives b at both,
 * and the check cannot tell which piece x0 lies on; either one-sided derivative is then
 * accepted. A wrong gradient (scaled, sign flipped) matches neither side. Callers bound
 * kinks, since each one is an entry the check could not resolve.
 */
static int gc_kink(double a, double x0, double f0, double fs[2][STEPS], double xs[2][STEPS], double tol,
                   double floor_) {
    if (isnan(f0)) return 0;
    double s[2][STEPS];
    int have[STEPS];
    for (int q = 0; q < STEPS; q++) {
        have[q] = 1;
        for (int side = 0; side < 2; side++) {
            const int ok = !isnan(fs[side][q]) && xs[side][q] != x0;
            s[side][q] = ok ? (fs[side][q] - f0) / (xs[side][q] - x0) : NAN;
            have[q] &= ok;
        }
    }
    for (int q = 0; q + 1 < STEPS; q++) {
        if (!have[q] || !have[q + 1]) continue;
        if (!(gc_err(s[0][q], s[1][q], floor_) > tol) && !(gc_err(s[0][q + 1], s[1][q + 1], floor_) > tol)) continue;
        for (int side = 0; side < 2; side++)
            if (gc_err(a, s[side][q], floor_) <= tol && gc_err(a, s[side][q + 1], floor_) <= tol) return 1;
    }
    return 0;
}

int ml_gradcheck(const ml_gc_policy *pol, ml_gc_fn f, void *ctx, float *x, size_t n, const float *analytic,
                 double scale, ml_gc_result *out) {
    ml_gc_policy p = pol ? *pol : ml_gc_default();
    ml_gc_result r = {0, 0, 0, 0, 0, 0, 0, 0};
    double floor_ = fmax(p.abs_floor, p.rel_floor * scale);
    size_t max = p.max_entries > 0 ? (size_t)p.max_entries : 1;
    size_t stride = n > max ? n / max : 1;
    for (size_t i = 0; i < n; i += stride) {
        const float x0 = x[i];
        const double a = analytic[i];
        double best = INFINITY, best_fd = NAN;
        double fs[2][STEPS], xs[2][STEPS]; /* f and x at x0 + h (0) and x0 - h (1), for kinks */
        int computed = 0;
        double h = p.eps;
        for (int q = 0; q < STEPS; q++) fs[0][q] = fs[1][q] = NAN, xs[0][q] = xs[1][q] = x0;
        for (int q = 0; q < STEPS && !(best <= p.tol / 4); q++, h /= 4) {
            x[i] = (float)(x0 + h);
            const double up = (double)x[i];
            const double fp = f(ctx);
            x[i] = (float)(x0 - h);
            const double dn = (double)x[i];
            const double fm = f(ctx);
            x[i] = x0;
            fs[0][q] = fp, xs[0][q] = up, fs[1][q] = fm, xs[1][q] = dn;
            if (isnan(fp) || isnan(fm) || up == dn) continue;
            const double fd = (fp - fm) / (up - dn);
            double err = gc_err(a, fd, floor_);
            if (!computed || err < best) best = err, best_fd = fd;
            computed = 1;
        }
        if (!computed) {
            r.skipped++;
            continue;
        }
        r.checked++;
        if (!(best <= p.tol)) {
            if (p.kinks && gc_kink(a, x0, f(ctx), fs, xs, p.tol, floor_)) {
                r.kinks++;
                continue;
            }
            r.outliers++;
        }
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
