/* stats.c — mean, sd, Student's t interval; the t distribution through the incomplete beta
 * function (stats.h gives the formulas and their sources). */
#include "study/stats.h"

#include <float.h>
#include <math.h>

void ml_stats_describe(const double *x, int n, double level, ml_stats_desc *out) {
    out->n = 0;
    out->mean = out->sd = out->ci_lo = out->ci_hi = NAN;
    double sum = 0;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(x[i])) {
            sum += x[i];
            k++;
        }
    out->n = k;
    if (k == 0) return;
    double mean = sum / k;
    out->mean = mean;
    if (k == 1) return;
    /* corrected two-pass: the second sum removes the rounding error of the mean */
    double ss = 0, comp = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(x[i])) {
            double d = x[i] - mean;
            ss += d * d;
            comp += d;
        }
    ss -= comp * comp / k;
    double sd = sqrt(ss > 0 ? ss / (k - 1) : 0);
    out->sd = sd;
    if (!(level > 0 && level < 1)) return;
    double t = ml_stats_t_quantile(0.5 + level / 2, k - 1);
    double half = t * sd / sqrt((double)k);
    out->ci_lo = mean - half;
    out->ci_hi = mean + half;
}

/* The continued fraction of I_x(a, b) (A&S 26.5.8), by the modified Lentz method; it
   converges fast for x < (a + 1) / (a + b + 2). */
static double betacf(double a, double b, double x) {
    const double tiny = 1e-300, eps = 1e-16;
    double qab = a + b, qap = a + 1, qam = a - 1;
    double c = 1, d = 1 - qab * x / qap;
    if (fabs(d) < tiny) d = tiny;
    d = 1 / d;
    double h = d;
    for (int m = 1; m <= 1000000; m++) {
        int m2 = 2 * m;
        double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1 / d;
        h *= d * c;
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1 + aa * d;
        if (fabs(d) < tiny) d = tiny;
        c = 1 + aa / c;
        if (fabs(c) < tiny) c = tiny;
        d = 1 / d;
        double del = d * c;
        h *= del;
        if (fabs(del - 1) < eps) break;
    }
    return h;
}

/* lgamma(x) - the Stirling terms, x >= 10: 1/(12x) - 1/(360x³) + ... (A&S 6.1.41), to ~1e-15. */
static double stirling_rest(double x) {
    double r = 1 / x, r2 = r * r;
    return r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260 - r2 * (1.0 / 1680 - r2 / 1188))));
}

/* lgamma(a + b) - lgamma(a). For large a the two are huge and nearly equal (a = 5e8 at a
   billion degrees of freedom): the difference is taken from Stirling's series term by
   term instead, (a + b - ½)·log1p(b/a) + b·log a - b + rest(a + b) - rest(a). */
static double lgamma_diff(double a, double b) {
    if (a < 10 || a + b < 10) return lgamma(a + b) - lgamma(a);
    return (a + b - 0.5) * log1p(b / a) + b * log(a) - b + stirling_rest(a + b) - stirling_rest(a);
}

/* I_x(a, b) with y = 1 - x given separately (it is often known more precisely than 1 - x). */
static double betainc2(double a, double b, double x, double y) {
    if (!(a > 0 && b > 0) || !(x >= 0 && x <= 1) || !(y >= 0 && y <= 1)) return NAN;
    if (x == 0) return 0;
    if (y == 0) return 1;
    /* x^a y^b / (a B(a, b)) in logs; log x from y when x is near 1 (and the other way) */
    double lx = x > 0.5 ? log1p(-y) : log(x), ly = y > 0.5 ? log1p(-x) : log(y);
    double lbt = (a >= b ? lgamma_diff(a, b) - lgamma(b) : lgamma_diff(b, a) - lgamma(a)) + a * lx + b * ly;
    double bt = exp(lbt);
    if (x < (a + 1) / (a + b + 2)) return bt * betacf(a, b, x) / a;
    return 1 - bt * betacf(b, a, y) / b;
}

double ml_stats_betainc(double a, double b, double x) { return betainc2(a, b, x, 1 - x); }

/* P(T > t) for t >= 0. */
static double t_upper(double t, double df) {
    if (isinf(df)) return 0.5 * erfc(t / sqrt(2.0));
    double t2 = t * t;
    /* x = df / (df + t²) and 1 - x = t² / (df + t²), each without cancellation */
    return 0.5 * betainc2(df / 2, 0.5, df / (df + t2), t2 / (df + t2));
}

static double t_pdf(double t, double df) {
    if (isinf(df)) return exp(-t * t / 2) / sqrt(2 * M_PI);
    return exp(lgamma_diff(df / 2, 0.5) - 0.5 * log(df * M_PI) - (df + 1) / 2 * log1p(t * t / df));
}

double ml_stats_t_cdf(double t, double df) {
    if (!(df > 0) || isnan(t)) return NAN;
    if (isinf(t)) return t > 0 ? 1 : 0;
    double u = t_upper(fabs(t), df);
    return t >= 0 ? 1 - u : u;
}

/* The t >= 0 with P(T > t) = q, q in (0, 0.5]. */
static double t_upper_inverse(double q, double df) {
    if (q == 0.5) return 0;
    double lo = 0, hi = 1;
    while (t_upper(hi, df) > q) {
        lo = hi;
        hi *= 2;
        if (hi > 1e300) return INFINITY;
    }
    double t = (lo + hi) / 2;
    for (int it = 0; it < 400; it++) {
        double u = t_upper(t, df);
        if (u == q) return t;
        if (u > q) lo = t; /* the tail shrinks as t grows */
        else hi = t;
        /* Newton on the tail (d/dt P(T > t) = -pdf), held inside the bracket */
        double f = t_pdf(t, df), next = f > 0 ? t + (u - q) / f : NAN;
        if (!(next > lo && next < hi)) next = (lo + hi) / 2;
        if (fabs(next - t) <= 4 * DBL_EPSILON * next || hi - lo <= 4 * DBL_EPSILON * hi) return next;
        t = next;
    }
    return t;
}

double ml_stats_t_quantile(double p, double df) {
    if (!(df > 0) || !(p > 0 && p < 1)) return NAN;
    /* symmetric: the lower tail p is the upper tail of -t; 1 - p is exact for p >= 0.5 */
    double q = p < 0.5 ? p : 1 - p, t;
    if (df > 1e7 && !isinf(df)) {
        /* the continued fraction needs ~√df terms and loses digits there: the expansion
           around the normal quantile z (A&S 26.7.5), whose next term is O(df⁻³) */
        double z = t_upper_inverse(q, INFINITY), z2 = z * z;
        t = z + z * (z2 + 1) / (4 * df) + z * ((5 * z2 + 16) * z2 + 3) / (96 * df * df);
    } else {
        t = t_upper_inverse(q, df);
    }
    return p < 0.5 ? -t : t;
}
