/*
 * pluginhost.h — the host side of the plugin ABI (core/include/moelab/plugin.h): the host
 * function table given to every plugin, the search path, loading and validating plugin
 * shared objects, option parsing against a plugin's option table, and listings.
 *
 * Ownership: a loaded plugin (its descriptor, name, option table and file path) stays
 * valid until ml_plugins_unload_all(), which dlcloses every plugin; destroy all plugin
 * instances before calling it. Plugins are never unloaded one by one. The registry is
 * process-global and not thread-safe: load plugins from one thread, before training.
 *
 * Errors: functions return NULL or ML_ERR after ml_errorf() with a one-line message that
 * names the file (or plugin name) and the reason.
 */
#ifndef MOELAB_PLUGINHOST_H
#define MOELAB_PLUGINHOST_H

#include <stdio.h>
#include "base/common.h"

/* The host function table given to every plugin (alloc/free/log/rng/sgemm). Static. */
const ml_host *ml_host_table(void);

/*
 * Search path: directories tried in order when a plugin is named without a '/'. The host
 * sets: build/plugins (next to the executable), config plugin_path entries, then
 * $MOELAB_PLUGIN_PATH (colon-separated). Never the working directory unless listed.
 */
void ml_plugins_set_path(const char *const *dirs, int n); /* replaces the list (copies) */
void ml_plugins_add_path(const char *dir);                /* appends a copy */
/*
 * Sets the standard path: <directory of the running executable>/plugins, then the n
 * config entries, then each entry of $MOELAB_PLUGIN_PATH. Returns ML_OK.
 */
int ml_plugins_default_path(const char *const *config_dirs, int n);
/*
 * From now on, refuse to load any plugin file whose real path lies under dir (copied,
 * realpath'd; already-loaded plugins stay). The experiment forbids its run directory once
 * it exists: a script can write files there, and must never get one dlopen'ed, whatever
 * the search path says. ml_plugins_unload_all clears the list.
 */
void ml_plugins_forbid_dir(const char *dir);
/* The current list; *n receives its length. Borrowed until the path changes. */
const char *const *ml_plugins_path(int *n);

/*
 * Loads (or returns the already-loaded) plugin of that kind (ML_PLUGIN_ROUTER, ...; 0 for
 * any kind) by name ("softmax_topk": <dir>/<name>.so for each dir of the search path) or
 * by path (the argument contains a '/' or ends in ".so"; a bare "x.so" means ./x.so).
 * dlopen(RTLD_NOW | RTLD_LOCAL), then dlsym("moelab_plugin") and validation of the
 * descriptor: ABI version, kind, name, api table, option table (each default must parse
 * and lie in its range). Returns NULL with ml_error() naming the file and the reason.
 */
const ml_plugin *ml_plugin_load(int kind, const char *name_or_path);
/* The path a loaded plugin came from (borrowed), or NULL for a descriptor not loaded here. */
const char *ml_plugin_file(const ml_plugin *p);
/* "router", "loss", "schedule" or "unknown". */
const char *ml_plugin_kind_name(int kind);

/*
 * Loads every *.so in every directory of the search path (in path order, files sorted by
 * name) and calls on_plugin for each that loads, on_error (may be NULL) with the reason
 * for each that does not. A file reached twice (same real path) is reported once.
 * Returns the number of plugins passed to on_plugin.
 */
int ml_plugins_scan(void (*on_plugin)(const ml_plugin *p, const char *file, void *ctx),
                    void (*on_error)(const char *file, const char *reason, void *ctx),
                    void *ctx);
/* dlcloses every loaded plugin and forgets it; the search path is kept. */
void ml_plugins_unload_all(void);

/*
 * Parses a YAML scalar text against an option: INT (decimal, or an integral real such as
 * 1e6), FLOAT, BOOL (true/false, yes/no, on/off, any case), ENUM (one of the choices).
 * Range-checked (inclusive) when o->min <= o->max. On failure returns ML_ERR with the
 * message `expected <what>, got "<text>"`; callers prefix the option and location.
 * For ENUM, out->s points to an interned copy of the choice, valid until unload_all.
 */
int ml_option_parse(const ml_option *o, const char *text, ml_optval *out);
/* Fills out[0 .. p->num_options) with the parsed defaults. */
int ml_option_defaults(const ml_plugin *p, ml_optval *out);
/* Index of the option called name in p's table, or -1. */
int ml_option_find(const ml_plugin *p, const char *name);

/*
 * Prints a plugin's listing: name, kind, version, file and doc, then one line per option:
 * name, type, default, range or choices, doc.
 */
void ml_plugin_print(const ml_plugin *p, const char *file, FILE *out);

/*
 * Tensor declarations (ml_tensor_decl) as the host lays them out: rows for N experts, and
 * initialisation of rows [row0, row1) by the declaration's init (per-expert tensors grow
 * by initialising only their new rows). x points at row 0 of the tensor.
 */
int ml_tensor_decl_rows(const ml_tensor_decl *d, int num_experts);
void ml_tensor_decl_init(const ml_tensor_decl *d, float *x, int row0, int row1, ml_rng *rng);
/* Checks a plugin's declarations (names set and unique, sizes >= 1, known init). */
int ml_tensor_decls_check(const ml_tensor_decl *d, int n, const char *what);

#endif
