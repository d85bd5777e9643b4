/*
 * gradcheck.h — the one finite-difference gradient check of moelab, used by every test of a
 * layer, loss or router backward (tests/) and by `moelab plugin-test`. One policy, so that a
 * gradient the tests accept is judged the same way as a stranger's plugin.
 *
 * The policy (docs/plugins.md, "How gradients are checked"):
 *   - Entries: at most max_entries of a tensor of n, spread over it (stride n / max_entries).
 *   - Central differences fd = (f(x + h) - f(x - h)) / ((x + h) - (x - h)), the denominator
 *     the step that float storage actually took; f accumulates in double.
 *   - Error of an entry: |a - fd| / max(floor, |a| + |fd|), with floor = max(abs_floor,
 *     rel_floor * scale) and scale the largest |analytic| over every tensor of one check, so
 *     an entry near zero is judged against the size of the gradient, not its own.
 *   - Steps: h = eps, eps/4, eps/16, eps/64; the smallest error of the steps counts. A kink
 *     (ReLU, max) or float rounding spoils one step; a wrong gradient is wrong at every step.
 *     f may return NaN when the point is not comparable (a discrete choice such as the
 *     top-k selection changed under the step): that step is skipped; an entry where every
 *     step is skipped is counted as skipped, not checked.
 *   - A tensor passes when at least one entry was checked and every checked entry's error
 *     is <= tol. Defaults: eps 1e-2, tol 1e-2, abs_floor 1e-3, rel_floor 1e-2, 96 entries.
 *   - Outliers: max_outliers (default 0) entries may exceed tol. Only end-to-end checks of
 *     a deep ReLU network in float set it (tests/check_srnn.c, tests/check_cod.c: 1 per
 *     tensor of 8 entries), where now and then an entry has a kink within every step; a
 *     wrong gradient is wrong at most entries, which no outlier allowance hides.
 *   - Kinks (opt in: kinks = 1; default 0, which leaves every result as above): an entry
 *     above tol is looked at once more before it counts as an outlier. Next to a kink f is
 *     piecewise smooth, so the analytic gradient, the derivative of the piece the base point
 *     lies on, must equal the ONE-SIDED difference quotient s(h) = (f(x +- h) - f(x)) / +-h
 *     on the side without the kink. The entry is a kink when one side's s is within tol of
 *     the analytic value (the same error measure) at two consecutive steps h and h/4, and
 *     the two sides' s differ by more than tol at one of them (gradcheck.c says why these
 *     steps and this tolerance). It then counts in kinks, not in outliers, worst or index;
 *     an entry whose analytic value matches neither side is an outlier as before. The
 *     caller bounds kinks (e.g. a fraction of checked): each is an entry the check could
 *     not resolve, and a kink explains an entry, not a tensor full of them.
 */
#ifndef MOELAB_GRADCHECK_H
#define MOELAB_GRADCHECK_H

#include <stddef.h>

typedef double (*ml_gc_fn)(void *ctx); /* f at the current x; NaN: not comparable here */

typedef struct ml_gc_policy {
    double eps;        /* first step */
    double tol;        /* largest error accepted */
    double abs_floor;  /* floor of the error's denominator */
    double rel_floor;  /* ... times the check's largest |analytic| */
    int max_entries;   /* entries checked per tensor */
    int max_outliers;  /* entries allowed above tol (0; see "Outliers" above) */
    int kinks;         /* 1: tell kinks from errors (0; see "Kinks" above) */
} ml_gc_policy;

typedef struct ml_gc_result {
    double worst;      /* largest error over the checked entries (0 when none) */
    size_t index;      /* the entry that gave it */
    double analytic, numeric;
    int checked, skipped;
    int outliers;      /* checked entries whose error is above tol (and, with kinks, no kink) */
    int kinks;         /* entries above tol that a kink explains (policy kinks only; else 0) */
} ml_gc_result;

/* The defaults above. */
ml_gc_policy ml_gc_default(void);
/* The largest |a[i]| of a tensor: the scale to pass (take the max over a check's tensors). */
double ml_gc_scale(const float *a, size_t n);
/*
 * Checks analytic (n) against central differences of f in x (n; perturbed one entry at a
 * time and restored). p NULL = defaults. Returns 1 when the tensor passes, 0 when not;
 * r (may be NULL) receives the details for the message.
 */
int ml_gradcheck(const ml_gc_policy *p, ml_gc_fn f, void *ctx, float *x, size_t n, const float *analytic,
                 double scale, ml_gc_result *r);

#endif
