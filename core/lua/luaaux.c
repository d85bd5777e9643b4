/* luaaux.c — shared helpers of the Lua bindings (luaaux.h). */
#include "lua/luaaux.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "base/scalar.h"
#include "plugin/options.h"

/* The YAML text a Lua value stands for; *quoted 1 for a string (a YAML string scalar). */
static int value_text(lua_State *L, int idx, const ml_option *o, char *buf, size_t n, int *quoted) {
    *quoted = 0;
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN: snprintf(buf, n, "%s", lua_toboolean(L, idx) ? "true" : "false"); return 1;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) snprintf(buf, n, "%lld", (long long)lua_tointeger(L, idx));
        else {
            ml_scalar_fmt_num((double)lua_tonumber(L, idx), buf, n);
            if (!strpbrk(buf, ".eEn") && strlen(buf) + 3 <= n) strcat(buf, ".0"); /* 2.0 stays a float */
        }
        return 1;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (len >= n || strlen(s) != len) return 0;
        memcpy(buf, s, len + 1);
        *quoted = o->type != ML_OPT_ENUM; /* an enum choice is written as a string in Lua */
        return 1;
    }
    default: return 0;
    }
}

void ml_lua_read_options(lua_State *L, int idx, const ml_plugin *p, ml_optval *out, unsigned char *changed,
                         const char *what) {
    if (lua_isnoneornil(L, idx)) return;
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx)) luaL_error(L, "%s: options must be a table, got %s", what, luaL_typename(L, idx));
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "%s: option names must be strings", what);
        const char *k = lua_tostring(L, -2);
        int o = ml_option_find(p, k);
        if (o < 0) {
            char names[512];
            ml_option_names(p, names, sizeof names);
            luaL_error(L, "%s: plugin '%s' has no option '%s' (valid options: %s)", what, p->name, k, names);
        }
        char text[128];
        int quoted;
        if (!value_text(L, -1, &p->options[o], text, sizeof text, &quoted))
            luaL_error(L, "%s: option '%s': expected a number, boolean or string, got %s", what, k, luaL_typename(L, -1));
        ml_optval v;
        if (ml_option_parse(&p->options[o], text, quoted, &v) != ML_OK) {
            int range = strncmp(ml_error(), "must be", 7) == 0;
            luaL_error(L, "%s: option '%s'%s%s", what, k, range ? " " : ": ", ml_error());
        }
        out[o] = v;
        if (changed) changed[o] = 1;
        lua_pop(L, 1);
    }
}

void ml_lua_push_options(lua_State *L, const ml_plugin *p, const ml_optval *v) {
    lua_createtable(L, 0, p->num_options);
    for (int i = 0; i < p->num_options; i++) {
        const ml_option *o = &p->options[i];
        switch (o->type) {
        case ML_OPT_INT: lua_pushinteger(L, (lua_Integer)v[i].i); break;
        case ML_OPT_FLOAT: lua_pushnumber(L, v[i].f); break;
        case ML_OPT_BOOL: lua_pushboolean(L, (int)v[i].i); break;
        default: lua_pushstring(L, v[i].s ? v[i].s : ""); break;
        }
        lua_setfield(L, -2, o->name);
    }
}
