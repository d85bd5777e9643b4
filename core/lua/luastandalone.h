/*
 * luastandalone.h — `moelab.router(...)` and `moelab.loss(...)`: any router or loss plugin
 * created on its own in Lua and evaluated on tensors given as Lua tables, for exploration
 * and tests (docs/lua-api.md). The plugin's tensors are owned by the Lua object (__gc).
 */
#ifndef MOELAB_LUASTANDALONE_H
#define MOELAB_LUASTANDALONE_H

#include <lua.h>

/* Adds router() and loss() to the table on top of the stack. */
void ml_lua_open_standalone(lua_State *L);

#endif
