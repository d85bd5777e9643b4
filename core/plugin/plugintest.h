/*
 * plugintest.h — the conformance suite behind `moelab plugin-test FILE.so`: loads one
 * plugin by path and runs it through a small stand-in host, checking what the rest of
 * moelab relies on. Routers: options, tensor declarations, dispatch validity, finite-
 * difference gradients wrt x and every parameter, backward accumulation, determinism,
 * checkpoint round trip of state tensors, growth (EXPERTS_ADDED), extreme logits, odd batch
 * sizes. Losses: finite-difference gradients wrt prob and logits, accumulation and scale,
 * perfect balance, total collapse, one-hot probabilities. Schedules: initial_experts >= 1,
 * decisions never negative over a simulated run.
 *
 * Output: one line per check, `PASS name` or `FAIL name: reason`, then
 * `plugin-test: N passed, M failed`. The plugin stays loaded (see pluginhost.h).
 */
#ifndef MOELAB_PLUGINTEST_H
#define MOELAB_PLUGINTEST_H

#include <stdio.h>

/* Returns the number of failed checks, or -1 when the file cannot be loaded (the reason
   is printed to out and left in ml_error()). */
int ml_plugin_conformance(const char *path, FILE *out);

#endif
