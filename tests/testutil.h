/*
 * testutil.h — helpers shared by the Check suites: finite-difference gradient checks,
 * paths into the build, temporary directories. Header-only; every function is static.
 */
#ifndef MOELAB_TESTUTIL_H
#define MOELAB_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The build directory (make test exports MOELAB_BUILD). */
static inline const char *tu_build(void) {
    const char *b = getenv("MOELAB_BUILD");
    return b && *b ? b : "build";
}

/* snprintf into a static rotating buffer: tu_path("%s/plugins/x.so", tu_build()). */
static inline const char *tu_path(const char *fmt, const char *a) {
    static char buf[4][1024];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], fmt, a);
    return buf[k];
}

/* A fresh empty directory under /tmp; returns a static buffer. */
static inline const char *tu_tmpdir(const char *tag) {
    static char dir[256];
    snprintf(dir, sizeof dir, "/tmp/moelab-test-%s-XXXXXX", tag);
    if (!mkdtemp(dir)) return NULL;
    return dir;
}

typedef double (*tu_scalar_fn)(void *ctx);

/*
 * Central differences of f with respect to x[i] for up to max_checks indices spread over
 * [0, n), compared with analytic[i]. Returns the largest error
 * |a - fd| / max(1e-3, |a| + |fd|); callers assert it is below ~1e-2.
 * f should accumulate in double; x is restored on return.
 */
static inline double tu_gradcheck(tu_scalar_fn f, void *ctx, float *x, const float *analytic,
                                  size_t n, int max_checks, double eps) {
    double worst = 0;
    size_t stride = n > (size_t)max_checks ? n / (size_t)max_checks : 1;
    for (size_t i = 0; i < n; i += stride) {
        float x0 = x[i];
        x[i] = (float)(x0 + eps);
        double fp = f(ctx);
        x[i] = (float)(x0 - eps);
        double fm = f(ctx);
        x[i] = x0;
        double fd = (fp - fm) / (2 * eps);
        double err = fabs(analytic[i] - fd) / fmax(1e-3, fabs(analytic[i]) + fabs(fd));
        if (err > worst) worst = err;
    }
    return worst;
}

/* Fills x with uniform values in [lo, hi) from a small LCG (tests need no core RNG). */
static inline void tu_fill(float *x, size_t n, unsigned seed, float lo, float hi) {
    unsigned s = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = lo + (hi - lo) * (float)((s >> 8) & 0xffffff) / 16777216.0f;
    }
}

/* Runs one suite and returns the process exit status. */
static inline int tu_run(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
