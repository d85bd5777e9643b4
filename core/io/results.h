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
#include "model/health.h"
#include "base/json.h"

typedef struct ml_results ml_results;

/*
 * Creates <dir>/<experiment>/<run_id>/ (parents as needed) and checkpoints/ inside.
 * run_id NULL or "" = the UTC time "YYYYmmdd-HHMMSS", with "-2", "-3", ... appended
 * when taken (directory creation is atomic, so parallel workers never share a run).
 * An explicit run_id whose directory exists and is not empty is refused.
 * experiment and run_id are single path components (no '/', not "." or "..").
 */
ml_results *ml_results_open(const char *dir, const char *experiment, const char *run_id);
/* The same at an explicit run directory (config results.run_dir, which moelab sweep sets):
   parents are created; the directory itself must not exist or be empty. */
ml_results *ml_results_open_at(const char *run_dir);
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
 * Removes stale "*.tmp" files (regular files only) left in run_dir and run_dir/checkpoints
 * by a process that died between writing a temp file and renaming it. ml_results_open and
 * ml_results_reopen call it. Returns how many were removed, or ML_ERR (message set) when a
 * directory cannot be read or a file cannot be removed.
 */
int ml_results_clean_tmp(const char *run_dir);

/*
 * Opens an existing run directory to continue it (resume): stale temp files are removed,
 * metrics.csv's rows and columns are loaded so that later rows follow them (the file is
 * rewritten whole, as always), routing.csv (its header fixes the extra columns as before)
 * and events.jsonl are appended to. Files that do not exist yet are created when first
 * written. Returns NULL with a message when run_dir is not a directory or a file cannot
 * be read back (a malformed metrics.csv or routing.csv header is named with its line).
 * Free with ml_results_close.
 */
ml_results *ml_results_reopen(const char *run_dir);

/*
 * The current extent of the growing files, for saving in a checkpoint: rows in
 * metrics.csv, bytes in routing.csv and events.jsonl (0 when a file does not exist).
 * Any pointer may be NULL.
 */
void ml_results_sizes(ml_results *r, int *metrics_rows, long *routing_bytes, long *events_bytes);

/*
 * Cuts the files back to an extent ml_results_sizes gave earlier (rows written after a
 * checkpoint are dropped before a resumed run writes them again): metrics.csv keeps its
 * first metrics_rows rows (columns only later rows used are dropped too) and is rewritten
 * atomically; routing.csv and events.jsonl are truncated to the byte counts (0 removes the
 * file; routing.csv is then re-created with a new header). ML_ERR, changing nothing, when
 * an extent is larger than the file or would cut into routing.csv's header.
 */
int ml_results_truncate(ml_results *r, int metrics_rows, long routing_bytes, long events_bytes);

/*
 * The run's other line files (steps.csv, routing_steps.csv): append whole lines to
 * <dir>/<name>, flushed, the header written first when the file is new or empty; their
 * extent in bytes (0 when absent), for checkpoints; and cutting one back to an extent
 * (0 removes it) when a run resumes.
 */
int ml_results_append(ml_results *r, const char *name, const char *header, const char *text);
long ml_results_extent(const ml_results *r, const char *name);
int ml_results_cut(ml_results *r, const char *name, long bytes);


#endif
