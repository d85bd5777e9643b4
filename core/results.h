/*
 * results.h — one run's directory and the files in it, written so that what is already
 * on disk is never damaged: a new run never overwrites an old one, whole-file outputs
 * (metrics.csv, summary.json, checkpoints) are replaced atomically (temp file in the same
 * directory, fsync, rename, fsync of the directory), and line files (routing.csv,
 * events.jsonl) are only ever appended to and flushed line by line. The layout and every
 * column are documented in docs/results.md; each file reads with pandas without glue.
 *
 * Ownership: ml_results_open() returns an owned handle; ml_results_close() flushes and
 * frees it (NULL is a no-op). Strings passed in are borrowed for the call.
 * The JSON builder used for events and summaries (ml_json_*) is declared in json.h.
 */
#ifndef MOELAB_RESULTS_H
#define MOELAB_RESULTS_H

#include <stddef.h>
#include <stdint.h>
#include "health.h"
#include "json.h"

typedef struct ml_results ml_results;

/*
 * Creates <dir>/<experiment>/<run_id>/ (parents as needed) and checkpoints/ inside.
 * run_id NULL or "" = the UTC time "YYYYmmdd-HHMMSS", with "-2", "-3", ... appended
 * when taken (directory creation is atomic, so parallel workers never share a run).
 * An explicit run_id whose directory exists and is not empty is refused.
 * experiment and run_id are single path components (no '/', not "." or "..").
 */
ml_results *ml_results_open(const char *dir, const char *experiment, const char *run_id);
const char *ml_results_dir(const ml_results *r);  /* the run directory; borrowed */
const char *ml_results_run_id(const ml_results *r);
/* Writes "<run dir>/<rel>" into out[cap]; ML_ERR when it does not fit. */
int ml_results_path(const ml_results *r, const char *rel, char *out, size_t cap);

/*
 * Appends one row to metrics.csv (one row per epoch). A new name adds a column at the
 * right; earlier rows get an empty cell there. The whole file is rewritten through
 * ml_write_file_atomic after each row, so its header always covers every column and a
 * crash leaves the previous complete version. Numbers: integers (|v| < 2^53) exactly,
 * others with %.9g; NaN as "nan". Names must be non-empty and unique within a row.
 */
int ml_results_metrics_row(ml_results *r, const char *const *names, const double *values, int n);
/* The same, with text cells: strings[i] non-NULL replaces values[i]. strings may be NULL. */
int ml_results_metrics_row_mixed(ml_results *r, const char *const *names, const double *values,
                                 const char *const *strings, int n);

/*
 * Appends N rows (one per expert of h) to routing.csv, flushed. The header
 * "epoch,layer,expert,utilisation,importance,<extra...>" is fixed by the first call.
 * Later calls may give a subset of those extra columns, in any order (absent ones are
 * empty cells; extra_values[i] NULL is all empty); a name not in the header is an error.
 * extra_values[i] is (N) per-expert values reported by the router (e.g. saturation).
 */
int ml_results_routing_rows(ml_results *r, int epoch, int layer, const ml_health *h,
                            const char *const *extra_names, const float *const *extra_values,
                            int n_extra);

/*
 * Appends {"epoch":E,"step":S,"kind":"<kind>",<fields_json>} and a newline to
 * events.jsonl, flushed. fields_json: JSON object members without braces
 * ("\"expert\":3,\"reason\":\"dead\""), or NULL/"". The line is checked to be one valid
 * JSON object (no duplicate keys) before anything is written.
 */
int ml_results_event(ml_results *r, int epoch, int64_t step, const char *kind, const char *fields_json);

/* Writes summary.json atomically from the text of one JSON object (checked first). */
int ml_results_summary(ml_results *r, const char *json_object);

void ml_results_close(ml_results *r);

/*
 * Resuming a run: reopen an existing run directory (metrics.csv read back, routing.csv and
 * events.jsonl opened for appending), report the sizes a checkpoint records, and cut the
 * files back to such sizes (rows of metrics.csv, bytes of the line files) so a resumed run
 * continues them without duplicates.
 */
ml_results *ml_results_reopen(const char *run_dir);
int ml_results_truncate(ml_results *r, int metrics_rows, long routing_bytes, long events_bytes);
void ml_results_sizes(ml_results *r, int *metrics_rows, long *routing_bytes, long *events_bytes);

/*
 * Writes data[0..n) to path atomically: "<path>.tmp" in the same directory, fsync,
 * rename over path, fsync the directory. On failure the temp file is removed and any
 * existing file at path is untouched; the error names the path and the step that failed.
 */
int ml_write_file_atomic(const char *path, const void *data, size_t n);

#endif
