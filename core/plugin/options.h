/*
 * options.h — plugin options: reading a value against a plugin's option table by the one
 * set of scalar rules (base/scalar.h), defaults, lookup, formatting, and laying values out
 * for the plugin. The config loader (YAML and command-line overrides), the Lua bindings
 * (moelab.router, moelab.loss, router:set) and plugin-test all read options through
 * ml_option_parse, so a value one of them accepts no other refuses.
 *
 * Ownership: ENUM values point at interned copies of the choice, valid until
 * ml_plugins_unload_all() (which calls ml_options_release). ml_optvals_pack returns an
 * owned block (free()).
 */
#ifndef MOELAB_OPTIONS_H
#define MOELAB_OPTIONS_H

#include <stddef.h>
#include "base/common.h"
#include "base/scalar.h"

/* The scalar rule of an option: its type, and its range when min <= max. */
ml_scalar_spec ml_option_spec(const ml_option *o);

/*
 * Reads text against o. quoted: the value was written as a string (a quoted YAML scalar,
 * a Lua string for anything but an enum); only an ENUM accepts it then. ML_ERR with the
 * message of ml_scalar_check ("expected an integer, got '2.0' (hint: ...)", "must be in
 * [1, 64], got 100"), which callers prefix with the plugin, the option and where it came
 * from.
 */
int ml_option_parse(const ml_option *o, const char *text, int quoted, ml_optval *out);
/* Fills out[0 .. p->num_options) with the parsed defaults. */
int ml_option_defaults(const ml_plugin *p, ml_optval *out);
/* Index of the option called name in p's table, or -1. */
int ml_option_find(const ml_plugin *p, const char *name);
/* The value as YAML text: "2", "0.5", "true", "mean". */
void ml_option_format(const ml_option *o, const ml_optval *v, char *buf, size_t size);
/* "k, renormalize" — the option names, for "valid options are" messages. */
void ml_option_names(const ml_plugin *p, char *buf, size_t size);

/* The values v[0 .. p->num_options) laid out at the plugin's own sizeof(ml_optval), for
   passing to it (plugin.h, "Versioning"). Owned; NULL with a message when out of memory. */
void *ml_optvals_pack(const ml_plugin *p, const ml_optval *v);

/* What every host does first: out = given (or the defaults when given is NULL), and
   *packed = the same at the plugin's ml_optval size (owned). */
int ml_optvals_resolve(const ml_plugin *p, const ml_optval *given, ml_optval *out, void **packed);

/* Frees the interned ENUM strings (ml_plugins_unload_all calls it). */
void ml_options_release(void);

#endif
