/*
 * luaexp.h — the Lua 5.4 side of a run: a sandboxed state holding `exp` (the experiment)
 * and `moelab` (warn, version, standalone routers and losses), and the protected call of
 * the experiment script.
 *
 * The sandbox has no os.execute, io.popen, package.loadlib, C modules, debug library or
 * bytecode loading; io.open reads only under the run directory, the script's directory,
 * scripts/lib and the config's lua.allow_read paths, and writes only under the run
 * directory. `require` finds Lua modules in the script's directory and scripts/lib.
 *
 * Errors: the binding is the only place a core status becomes a Lua error (luaL_error
 * after releasing what it holds); a script error ends the run with "file.lua:LINE: msg"
 * and a traceback in ml_error().
 *
 * Ownership: ml_lua_new returns an owned state (ml_lua_free); the experiment is borrowed.
 */
#ifndef MOELAB_LUAEXP_H
#define MOELAB_LUAEXP_H

#include "experiment.h"

typedef struct ml_lua ml_lua;

/* lib_dir: scripts/lib of the installation (for require). exp may be NULL (no `exp`). */
ml_lua *ml_lua_new(ml_experiment *exp, const char *lib_dir);
void ml_lua_free(ml_lua *l);
/* Compiles the script (syntax errors are reported here, before anything runs). */
int ml_lua_load(ml_lua *l, const char *script_path);
/* Runs the compiled script, protected; ML_ERR with "file:LINE: msg\nstack traceback: ..." */
int ml_lua_exec(ml_lua *l);
/* Direct access for tests. */
struct lua_State *ml_lua_state(ml_lua *l);

#endif
