/*
 * testutil.h — helpers shared by the Check suites: finite-difference gradient checks (by
 * the one policy of core/nn/gradcheck.h), paths into the build, temporary directories,
 * running a shell command, reading a file. Header-only; every function is static.
 */
#ifndef MOELAB_TESTUTIL_H
#define MOELAB_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "nn/gradcheck.h"

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

/* The one gradient-check policy of moelab (core/nn/gradcheck.h, docs/plugins.md "How
 * gradients are checked"): a check passes when tu_gradcheck's result is <= TU_GC_TOL. */
#define TU_GC_TOL (ml_gc_default().tol)

/*
 * Central differences of f with respect to x[i] for up to max_checks indices spread over
 * [0, n), compared with analytic[i] by ml_gradcheck (steps eps, eps/4, ...; the error floor
 * scaled by the tensor's largest |analytic|). Returns the largest error; f may return NaN
 * at points that are not comparable. x is restored on return.
 */
static inline double tu_gradcheck(tu_scalar_fn f, void *ctx, float *x, const float *analytic,
                                  size_t n, int max_checks, double eps) {
    ml_gc_policy p = ml_gc_default();
    p.eps = eps;
    p.max_entries = max_checks;
    ml_gc_result r;
    ml_gradcheck(&p, f, ctx, x, n, analytic, ml_gc_scale(analytic, n), &r);
    return r.checked ? r.worst : INFINITY;
}

/* The output of the last tu_sh (stdout and stderr), NUL-terminated. */
static inline char *tu_outbuf(void) {
    static char b[1 << 16];
    return b;
}
#define tu_out (tu_outbuf())

/* Runs a shell command with stdout and stderr into tu_out; returns its exit status (-1
   when it did not exit). */
static inline int tu_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int tu_sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd - 8, fmt, ap);
    va_end(ap);
    strcat(cmd, " 2>&1");
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(tu_out, 1, (1 << 16) - 1, p);
    tu_out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The whole file (owned, free(); NUL-terminated), or NULL; *len (may be NULL) its size. */
static inline char *tu_slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (b) b[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return b;
}

/* The tensor bytes of a safetensors file (what follows the 8-byte header length and the
 * JSON header; owned, free()), or NULL; *len their size. Two runs are bitwise the same when
 * these are (metadata holds the wall clock and the checksum that covers it). */
static inline char *tu_tensor_bytes(const char *path, size_t *len) {
    size_t n;
    char *raw = tu_slurp(path, &n);
    uint64_t hn = 0;
    if (!raw || n < 8 || (memcpy(&hn, raw, 8), hn > n - 8)) {
        free(raw);
        return NULL;
    }
    *len = n - 8 - (size_t)hn;
    memmove(raw, raw + 8 + hn, *len);
    return raw;
}

/* rm -rf dir (a directory the test made under /tmp). */
static inline void tu_rm_rf(const char *dir) {
    if (strncmp(dir, "/tmp/", 5) != 0) return;
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) { /* best effort */ }
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
