/*
 * config.h — experiment configs: one YAML file (plus the `base:` files it builds on and
 * the command line's `a.b=value` overrides) loaded into one validated, resolved tree.
 *
 * Loading reads the file, merges it over its base chain (maps deep-merged, lists replaced
 * whole), applies the overrides, then checks the result against the schema (one static
 * table in config.c, rendered into docs/configs.md by ml_config_schema_markdown) and
 * against the option tables of the plugins the config names, found through a callback
 * from the host. The resolved tree has every schema key and every plugin option, with
 * defaults filled in and numbers in canonical form, so the typed getters cannot fail for
 * schema keys. Any problem is one error, `FILE:LINE:COL: message` (or
 * `override 'a.b=v': message`), left in ml_error(); nothing is half-loaded.
 *
 * Ownership: ml_config_load returns an owned config, freed with ml_config_free. Every
 * string and node returned by the getters and the tree functions is owned by the config
 * and lives until ml_config_free. ml_config_schema_markdown returns a string the caller
 * frees with free().
 *
 * Scalars are kept as text with a `quoted` flag: a quoted scalar is always a string, a
 * plain one is typed by whoever reads it (the schema here, the Lua binding for params).
 * Keys the schema types as strings come out quoted; ints, floats and bools come out plain.
 */
#ifndef MOELAB_CONFIG_H
#define MOELAB_CONFIG_H

#include <stdint.h>
#include "base/scalar.h"
#include "moelab/plugin.h"

typedef struct ml_config ml_config;
typedef enum { ML_CFG_MAP = 1, ML_CFG_SEQ, ML_CFG_SCALAR } ml_cfg_kind;
typedef struct ml_cfg_node ml_cfg_node;

/*
 * Given a plugin kind (ML_PLUGIN_ROUTER/LOSS/SCHEDULE) and name, returns the plugin's
 * descriptor, or NULL after writing a one-line reason into err (ML_ERR_MAX bytes).
 * The descriptor must outlive the config (its option defaults may be referenced).
 */
typedef const ml_plugin *(*ml_config_find_plugin)(void *ctx, int kind, const char *name,
                                                  char *err);

/*
 * Loads path, applies overrides[0..n_overrides) ("train.epochs=3", "losses.0.coef=1e-4",
 * "router.name=noisy_topk"; the value is parsed as YAML), validates and resolves.
 * find may be NULL: plugin sections are then kept as written, unchecked and without
 * option defaults. Returns NULL and sets ml_error() on any error.
 */
ml_config *ml_config_load(const char *path, const char *const *overrides, int n_overrides,
                          ml_config_find_plugin find, void *find_ctx);
void ml_config_free(ml_config *c); /* NULL is a no-op */

/*
 * Typed getters by dotted path ("train.epochs", "losses.0.coef"). For a path absent from
 * the resolved tree, or a value of another type (a quoted scalar is never a number or a
 * bool), they return the fallback.
 */
int64_t ml_config_int(const ml_config *c, const char *path, int64_t fallback);
double ml_config_float(const ml_config *c, const char *path, double fallback);
int ml_config_bool(const ml_config *c, const char *path, int fallback);
const char *ml_config_str(const ml_config *c, const char *path, const char *fallback);
int ml_config_len(const ml_config *c, const char *path); /* seq length, -1 if absent */
/* The node at a dotted path, or NULL. */
const ml_cfg_node *ml_config_get(const ml_config *c, const char *path);

/*
 * The resolved option values of a plugin section ("router", "schedule", "losses.1") in
 * desc's option-table order; out has desc->num_options entries. ENUM strings are owned
 * by the config (or, for an option the config lacks because it was loaded without a
 * find callback, are desc's default string). Fails when the section is missing, names
 * another plugin, or holds a value that does not fit desc.
 */
int ml_config_plugin_options(const ml_config *c, const char *path, const ml_plugin *desc,
                             ml_optval *out);

/* Tree access (for the Lua binding). Map entries and seq items are reached by index. */
const ml_cfg_node *ml_config_root(const ml_config *c);
ml_cfg_kind ml_cfg_node_kind(const ml_cfg_node *n);
int ml_cfg_node_len(const ml_cfg_node *n);                      /* entries/items; 0 for scalars */
const ml_cfg_node *ml_cfg_node_at(const ml_cfg_node *n, int i); /* NULL when out of range */
const char *ml_cfg_node_key(const ml_cfg_node *n);              /* NULL for seq items, root */
const char *ml_cfg_node_text(const ml_cfg_node *n);             /* scalars; NULL otherwise */
int ml_cfg_node_is_quoted(const ml_cfg_node *n);                /* quoted scalar stays a string */
/*
 * Where the value came from: returns the file name (or "override 'a.b=v'", or "default")
 * and sets *line, *col (1-based; 0 when the source has no positions). line/col may be NULL.
 */
const char *ml_cfg_node_source(const ml_cfg_node *n, int *line, int *col);

/*
 * Loads a YAML file whose top level is a mapping as a plain tree (no base:, no schema, no
 * overrides), for the other YAML files moelab reads (a sweep's sweep.yaml). The tree
 * functions below and ml_config_get work on it; the typed getters read its scalars.
 */
ml_config *ml_config_load_plain(const char *path);
/* A node as one line of flow YAML, e.g. `[1, 2]`, `{name: z_loss, coef: 0.1}`, `"a b"`:
   the value text of a `key=value` override that recreates it. Owned, free(). */
char *ml_cfg_node_flow(const ml_cfg_node *n);

/* Where a map entry's key was written (1-based; the value's place for seq items). */
void ml_cfg_node_key_pos(const ml_cfg_node *n, int *line, int *col);

/*
 * Relative paths in a config (script, data.path, plugin_path, lua.allow_read, plugins named
 * by path) are relative to the file that names them, then to moelab's tree (this directory;
 * by default the first one above the running binary that holds scripts/train.lua).
 */
void ml_config_set_install_dir(const char *dir);

/* Writes the resolved config as YAML (defaults filled, no comments); ML_OK or ML_ERR. */
int ml_config_write(const ml_config *c, const char *path);
/* The resolved YAML text ml_config_write writes. */
const char *ml_config_yaml(const ml_config *c);
/* 64-bit FNV-1a hash of the resolved YAML text, for checkpoint metadata. */
uint64_t ml_config_hash(const ml_config *c);
/* The path the config was loaded from, as given. */
const char *ml_config_path(const ml_config *c);

/* The rule of the scalar schema key path ("optim.lr", "optim.groups.*.lr": list items as
   "*"), for values set while a run goes (Lua's exp.optim): the same type and range the
   YAML is checked against. ML_ERR when path is not a scalar key of the schema. */
int ml_config_key_spec(const char *path, ml_scalar_spec *out);

/* The schema reference (docs/configs.md's generated part) as Markdown; free with free(). */
char *ml_config_schema_markdown(void);

#endif
