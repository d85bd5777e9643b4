/*
 * provenance.h — what ties a run's results to the code, data and command that made it:
 * the "provenance" object of summary.json (moelab version and git commit, build flags,
 * the command line, the config's absolute path, the working directory, every plugin's
 * file, sha256 and ABI version, threads, the BLAS kernel, the host), the run's seed,
 * command-line overrides and group key (the overrides that are neither the seed nor
 * bookkeeping: what `moelab summarize` groups seeds by), and the list of resumes.
 * docs/results.md describes each field.
 *
 * The strings live in the experiment (ml_experiment.prov and friends, owned by it).
 */
#ifndef MOELAB_PROVENANCE_H
#define MOELAB_PROVENANCE_H

#include "run/experiment.h"

/* Records the command line (argv[0..argc)) and the overrides of a new run; before
   ml_exp_open_results. */
int ml_prov_set_command(ml_experiment *e, int argc, char *const *argv, const char *const *overrides, int n_overrides);
/* Builds the provenance of a new run (at ml_exp_open_results). */
int ml_prov_begin(ml_experiment *e);
/* On --resume: keeps what the run's summary.json says of its start (provenance,
   overrides, group, start time, earlier resumes) and appends this resume. */
int ml_prov_resume(ml_experiment *e, const char *run_dir, const char *tag);
/* Appends the provenance members to summary.json's object. */
void ml_prov_summary(const ml_experiment *e, ml_json *j, int finished);
void ml_prov_free(ml_experiment *e);

#endif
