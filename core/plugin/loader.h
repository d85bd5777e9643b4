/*
 * loader.h — the host side of the plugin ABI (core/include/moelab/plugin.h): the host
 * function table given to every plugin, the search path, loading, validating and
 * normalising plugin shared objects, and listings. Options are in plugin/options.h, tensor
 * declarations in plugin/tensors.h, the instances in plugin/{router,loss,schedule}_host.h.
 *
 * Normalising: ml_plugin_load returns the host's view of a plugin, an ml_plugin laid out
 * as this host's plugin.h defines it, whose option table and api table are host-sized
 * copies (fields an older plugin's structs lack are 0 / NULL). Host code therefore reads
 * p->options[i] and p->api as plain C; only values passed back to the plugin are laid out
 * at the plugin's own element sizes (ml_plugin_optval_size, ml_plugin_decl_size).
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
/* Blocks plugins allocated through the table and have not freed (for leak checks). */
long ml_host_live_allocs(void);

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
/* The plugin's sizeof(ml_optval) and sizeof(ml_tensor_decl); this host's for a descriptor
   not loaded here (built into a test). */
size_t ml_plugin_optval_size(const ml_plugin *p);
size_t ml_plugin_decl_size(const ml_plugin *p);
/* sizeof of an ABI struct in version 1.0 ("ml_plugin", "ml_option", "ml_loss_api", ...),
   0 for a name it does not know; tests/check_abi.c compares them with the frozen header. */
size_t ml_abi_size_1_0(const char *what);
/* The same for version 1.1 (tests/abi/1.1 freezes its header). */
size_t ml_abi_size_1_1(const char *what);
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
 * Prints a plugin's listing: name, kind, version, file and doc, then one line per option:
 * name, type, default, range or choices, doc.
 */
void ml_plugin_print(const ml_plugin *p, const char *file, FILE *out);

#endif
