/*
 * stats.h — the statistics a study reports over seeds: mean, sample standard deviation and
 * the confidence interval of the mean with Student's t quantile, which needs the t
 * distribution, which needs the regularized incomplete beta function. Everything is
 * computed here in double precision from libm's lgamma/erfc; no statistics library.
 *
 * The interval (docs/studies.md): for n finite values with mean m and sample standard
 * deviation s (divisor n - 1),
 *     m ± t_{(1+level)/2, n-1} · s / √n
 * (the textbook Student interval, e.g. NIST/SEMATECH e-Handbook of Statistical Methods,
 * §7.2.2.1). t's CDF is F(t) = 1 − ½·I_{ν/(ν+t²)}(ν/2, ½) for t ≥ 0 (Abramowitz & Stegun
 * 26.7.1 with 26.5.27), I evaluated by its continued fraction (A&S 26.5.8, modified Lentz;
 * Numerical Recipes §6.4, with lgamma differences for large arguments from Stirling's
 * series); the quantile is found by Newton steps on the upper tail kept inside a bisection
 * bracket, and beyond 10^7 degrees of freedom from the expansion around the normal
 * quantile (A&S 26.7.5).
 *
 * Nothing here allocates or fails; invalid arguments give NaN.
 */
#ifndef MOELAB_STATS_H
#define MOELAB_STATS_H

/* What ml_stats_describe reports. With n = 1, sd and the interval are NaN (one value has
   no spread); with n = 0 everything but n is NaN. */
typedef struct ml_stats_desc {
    int n;             /* finite values counted */
    double mean;
    double sd;         /* sample standard deviation, divisor n - 1 */
    double ci_lo, ci_hi; /* the level-confidence interval of the mean */
} ml_stats_desc;

/*
 * Describes the finite values among x[0..n) (NaN and ±inf are skipped, not counted) at a
 * confidence level in (0, 1), e.g. 0.95. The sum of squares uses the corrected two-pass
 * formula (Chan, Golub & LeVeque 1983), exact for constant data.
 */
void ml_stats_describe(const double *x, int n, double level, ml_stats_desc *out);

/* I_x(a, b), the regularized incomplete beta function, a, b > 0, x in [0, 1]. */
double ml_stats_betainc(double a, double b, double x);
/* P(T <= t) for Student's t with df > 0 degrees of freedom (df = INFINITY: the normal). */
double ml_stats_t_cdf(double t, double df);
/* The p-quantile of Student's t with df > 0 degrees of freedom, p in (0, 1): the t with
   P(T <= t) = p, to about 1e-12 relative. df = INFINITY gives the normal quantile. */
double ml_stats_t_quantile(double p, double df);

#endif
