/*
 * common.h — what every core module shares: status codes and the last-error message,
 * checked allocation, the deterministic RNG and small helpers.
 *
 * Errors: a core function that can fail returns ML_OK (0) or ML_ERR (-1) after setting a
 * one-line message with ml_errorf(); the caller reads it with ml_error() and may prefix
 * context with ml_error_prefix(). The core never exits; only core/main.c decides exit codes.
 */
#ifndef MOELAB_COMMON_H
#define MOELAB_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include "moelab/plugin.h"

#define ML_OK 0
#define ML_ERR (-1)

/* Exit statuses of the `moelab` command. */
#define ML_EXIT_RUNTIME 1 /* a run, script, plugin or data failure */
#define ML_EXIT_USAGE 2   /* bad command line or config: nothing was run */

#if defined(__GNUC__)
#define ML_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ML_PRINTF(a, b)
#endif

/* Sets the last error (one line, truncated at 1023 bytes); always returns ML_ERR. */
int ml_errorf(const char *fmt, ...) ML_PRINTF(1, 2);
/* Prepends "<prefix>: " to the last error; returns ML_ERR. */
int ml_error_prefix(const char *fmt, ...) ML_PRINTF(1, 2);
const char *ml_error(void);
void ml_error_clear(void);

/* Allocation that reports failure through ml_errorf; zero-filled. Free with free(). */
void *ml_calloc(size_t n, size_t size);
/* 64-byte aligned, zero-filled; free with free(). */
float *ml_alloc_floats(size_t n);
char *ml_strdup(const char *s);

/* xoshiro256** (Blackman & Vigna), seeded through splitmix64. */
void ml_rng_seed(ml_rng *r, uint64_t seed);
uint64_t ml_rng_u64(ml_rng *r);
double ml_rng_uniform(ml_rng *r);  /* [0, 1) */
double ml_rng_normal(ml_rng *r);   /* N(0, 1), Box-Muller */
/* Fisher-Yates shuffle of idx[0..n). */
void ml_rng_shuffle(ml_rng *r, int32_t *idx, size_t n);

/* Wall clock in seconds (CLOCK_MONOTONIC). */
double ml_now(void);

/* Logging to stderr: "moelab: warning: ..." */
void ml_log(int level, const char *fmt, ...) ML_PRINTF(2, 3);
extern int ml_log_level; /* messages below this level are dropped; default ML_LOG_INFO */

#endif
