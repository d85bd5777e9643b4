/*
 * luaaux.h — helpers the Lua bindings share, in the manner of lauxlib: plugin options from
 * Lua values by the one set of scalar rules (plugin/options.h), and tables of rows read raw.
 *
 * A Lua value stands for a YAML scalar: an integer for an int ("2"), a float for a number
 * ("2.0", which an int option refuses as YAML does), a boolean for true/false, a string for
 * an enum choice. A string given for a number or a bool is refused like a quoted YAML
 * scalar ("yes" is not true). Errors are raised with luaL_error; nothing C-allocated is held
 * when they are.
 */
#ifndef MOELAB_LUAAUX_H
#define MOELAB_LUAAUX_H

#include <lua.h>
#include "base/common.h"

/* Reads the table at idx (nil: none) into out, which holds the values to start from (the
   defaults or the current values): unknown keys and bad values raise "<what>: option 'k':
   expected an integer, got '2.0' (...)", naming the valid options for an unknown key.
   changed (may be NULL) is set to 1 for each option the table names. */
void ml_lua_read_options(lua_State *L, int idx, const ml_plugin *p, ml_optval *out, unsigned char *changed,
                         const char *what);
/* Pushes a table {name = value} of option values. */
void ml_lua_push_options(lua_State *L, const ml_plugin *p, const ml_optval *v);

#endif
