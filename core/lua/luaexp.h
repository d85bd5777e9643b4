/*
 * luaexp.h — the Lua 5.4 side of a run: a sandboxed state holding `exp` (the experiment)
 * and `moelab` (warn, version, standalone routers and losses), and the protected call of
 * the experiment script.
 *
 * The sandbox (docs/lua-api.md, "The sandbox") is built from an allow-list: the globals,
 * package.loaded and the string metatable hold only listed functions; there is no debug
 * library, `package` holds only `loaded`, and there is no bytecode, no os.execute/io.popen/
 * C modules, no __gc for tables; os.getenv reads only the names in lua.allow_env. io.open reads only under the run
 * directory, the script's directory, scripts/lib and lua.allow_read, and writes only under
 * the run directory (resolved paths: symlinks count where they point). `require` finds Lua
 * modules in the script's directory and scripts/lib. Plugins load by name only.
 *
 * Limits: the state's allocator caps Lua memory at lua.memory_mb (default 1024 MB, also for
 * `moelab lua`); a count hook checks ml_exp_interrupted and lua.timeout_s. Once a script must
 * stop, it cannot continue: pcall, xpcall, coroutine.resume/close and load re-raise the stop,
 * and every exp call raises it at once (an interrupt gets 1 s of grace in plain Lua code, so
 * the script normally stops at its next exp call).
 *
 * The exp API's types (exp, exp.moe[i], its router, exp.losses[name], exp.schedule,
 * exp.optim and its groups) are built as lauxlib builds its own: a metatable each, with
 * luaL_Reg tables of methods, field getters and field setters (docs/lua-api.md).
 *
 * Errors: the binding is the only place a core status becomes a Lua error (luaL_error
 * after releasing what it holds: no C buffer lives across a Lua error, a memory error
 * included); a script error ends the run with "file.lua:LINE: msg" and a traceback in
 * ml_error().
 *
 * Ownership: ml_lua_new returns an owned state (ml_lua_free); the experiment is borrowed.
 */
#ifndef MOELAB_LUAEXP_H
#define MOELAB_LUAEXP_H

#include "run/experiment.h"

typedef struct ml_lua ml_lua;

/* lib_dir: scripts/lib of the installation (for require). exp may be NULL (no `exp`). */
ml_lua *ml_lua_new(ml_experiment *exp, const char *lib_dir);
void ml_lua_free(ml_lua *l);
/* Compiles the script (syntax errors are reported here, before anything runs). */
int ml_lua_load(ml_lua *l, const char *script_path);
/* Runs the compiled script, protected; ML_ERR with "file:LINE: msg\nstack traceback: ...",
 * or, when the sandbox stopped the script (ml_lua_stop_reason), exactly one of
 * "interrupted", "script exceeded lua.timeout_s = N s",
 * "script exceeded its memory limit of N MB (lua.memory_mb)". */
int ml_lua_exec(ml_lua *l);

enum {
    ML_LUA_STOP_NONE = 0,  /* the script ended by itself (ok or its own error) */
    ML_LUA_STOP_INTERRUPT, /* ml_exp_interrupted was set (SIGINT/SIGTERM) */
    ML_LUA_STOP_TIMEOUT,   /* lua.timeout_s elapsed */
    ML_LUA_STOP_MEMORY     /* the run ended on lua.memory_mb */
};
#define ML_LUA_DEFAULT_MEMORY_MB 1024
/* Why the last ml_lua_exec stopped the script (ML_LUA_STOP_*); NONE for NULL. */
int ml_lua_stop_reason(const ml_lua *l);
/* Direct access for tests. */
struct lua_State *ml_lua_state(ml_lua *l);

#endif
