/* common.c — last-error message, allocation, RNG, clock, logging. */
#include "base/common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char g_err[1024];
int ml_log_level = ML_LOG_INFO;

int ml_errorf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return ML_ERR;
}

int ml_error_prefix(const char *fmt, ...) {
    char old[sizeof g_err];
    memcpy(old, g_err, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof g_err - 3) return ML_ERR;
    g_err[n] = ':';
    g_err[n + 1] = ' ';
    size_t room = sizeof g_err - (size_t)n - 2;
    size_t len = strnlen(old, room - 1);
    memcpy(g_err + n + 2, old, len);
    g_err[n + 2 + len] = 0;
    return ML_ERR;
}

const char *ml_error(void) { return g_err[0] ? g_err : "unknown error"; }
void ml_error_clear(void) { g_err[0] = 0; }

void *ml_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) ml_errorf("out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

float *ml_alloc_floats(size_t n) {
    size_t bytes = ((n ? n : 1) * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes);
    if (!p) {
        ml_errorf("out of memory allocating %zu floats", n);
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

char *ml_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = ml_calloc(n, 1);
    if (d) memcpy(d, s, n);
    return d;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void ml_rng_seed(ml_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ml_rng_u64(ml_rng *r) {
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

double ml_rng_uniform(ml_rng *r) { return (ml_rng_u64(r) >> 11) * 0x1.0p-53; }

double ml_rng_normal(ml_rng *r) {
    double u1 = ml_rng_uniform(r), u2 = ml_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void ml_rng_shuffle(ml_rng *r, int32_t *idx, size_t n) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(ml_rng_u64(r) % i);
        int32_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

double ml_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ml_log(int level, const char *fmt, ...) {
    if (level < ml_log_level) return;
    va_list ap;
    va_start(ap, fmt);
    fputs(level >= ML_LOG_WARN ? "moelab: warning: " : "moelab: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
