/* luaexp.c — the sandboxed Lua state, the `exp` and `moelab` bindings, protected script runs. */
#include "lua/luaexp.h"
#include "base/version.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "base/glob.h"
#include "base/scalar.h"
#include "run/checkpoint.h"
#include "lua/luaaux.h"
#include "lua/luastandalone.h"

struct ml_lua {
    lua_State *L;
    ml_experiment *e;
    char script_dir[PATH_MAX];
    char lib_dir[PATH_MAX];
    char run_dir[PATH_MAX];
    char files_dir[PATH_MAX + 8]; /* run_dir/files: the only place scripts may write */
    char **allow;          /* extra readable paths (realpath'd) */
    int n_allow;
    char **env;            /* lua.allow_env: the variables os.getenv may read */
    int n_env;
    int loaded;
    int in_epoch;          /* inside exp:train_epoch (its on_step may not start another) */
    /* limits (the allocator and the count hook read these) */
    size_t mem_used, mem_limit;
    int mem_mb;
    int mem_hit;           /* the allocator refused a block because of the cap */
    int timeout_s;         /* 0: none */
    double started;        /* ml_lua_exec's start (monotonic), 0 before */
    double int_seen;       /* when the hook first saw ml_exp_interrupted, 0: not yet */
    int stop;              /* ML_LUA_STOP_*: once set, no Lua code may continue */
    int closing;           /* ml_lua_free: no Lua code may run any more */
    int n_warn;            /* warnings printed (capped) */
    int fd_base;           /* descriptors the process held when the state was made, -1: unknown */
    int warn_len;
    char warn_buf[256];
};

#define EXP_T "moelab.experiment"
#define MOE_T "moelab.moe"
#define LOSS_T "moelab.loss"
#define SCHED_T "moelab.schedule"
#define OPTIM_T "moelab.optim"
#define GROUP_T "moelab.optim_group"
#define ROUTER_T "moelab.moe_router"
#define RO_T "moelab.readonly"

/* Originals of wrapped functions live in the registry, never in upvalues or tables a script
 * can reach (with the debug library absent, the registry is out of a script's reach). */
#define ORIG_LOAD "moelab.orig.load"
#define ORIG_GC "moelab.orig.collectgarbage"
#define ORIG_OPEN "moelab.orig.io.open"
#define ORIG_IOCLOSE "moelab.orig.io.close"
#define ORIG_RESUME "moelab.orig.coroutine.resume"
#define ORIG_CLOSE "moelab.orig.coroutine.close"
#define ORIG_MOVE "moelab.orig.table.move"
#define ORIG_CONCAT "moelab.orig.table.concat"
#define ORIG_SORT "moelab.orig.table.sort"
#define LOADED "moelab.loaded"

/* Instructions between two checks of the interrupt flag and the clock. The cost is not the
 * hook call (one per HOOK_COUNT instructions) but Lua 5.4 tracing every instruction once any
 * hook is set: a tight pure-Lua loop runs about 2x slower (2e8 iterations: 3.5 s -> 7.6 s);
 * scripts/train.lua spends its time in C and is not measurably slower. */
#define HOOK_COUNT 1000
/* After SIGINT/SIGTERM a script still in Lua code gets this long to reach its next exp call
 * (where it stops at once) before the hook stops it wherever it is. */
#define INTERRUPT_GRACE_S 1.0

/* Every thread of the state carries the ml_lua pointer in its extra space (lua_newthread
 * copies the main thread's), so the hook and the bindings find it without a table lookup. */
static ml_lua *getself(lua_State *L) { return *(ml_lua **)lua_getextraspace(L); }

/* A core failure becomes a Lua error at the script's line (luaL_error adds the position). */
static int core_error(lua_State *L) { return luaL_error(L, "%s", ml_error()); }

/* ------------------------------------------------------------- limits */

/* lua_Alloc with a cap. Lua never asks a shrink to fail, so only growth is refused; when
 * ptr is NULL, osize is a type tag, not a size. A refusal makes Lua run an emergency full
 * collection and retry, so the cap bounds live memory. */
static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    ml_lua *l = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        l->mem_used -= old;
        return NULL;
    }
    if (nsize > old) {
        size_t base = l->mem_used - old;
        if (nsize > l->mem_limit || base > l->mem_limit - nsize) {
            l->mem_hit = 1;
            return NULL;
        }
    }
    void *p = realloc(ptr, nsize);
    if (p) l->mem_used = l->mem_used - old + nsize;
    return p;
}

static int sb_panic(lua_State *L) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "moelab: lua: unprotected error: %s\n", msg ? msg : "(not a string)");
    return 0; /* lua aborts */
}

/* Warnings (errors in finalizers of C objects, warn() is not offered to scripts): a few
 * lines, each cut to fit, then silence, so a hostile script cannot flood stderr. */
static void sb_warn(void *ud, const char *msg, int tocont) {
    ml_lua *l = ud;
    if (!l->warn_len && !tocont && msg[0] == '@') return; /* control message ("@on") */
    size_t n = strlen(msg), room = sizeof l->warn_buf - 1 - (size_t)l->warn_len;
    if (n > room) n = room;
    memcpy(l->warn_buf + l->warn_len, msg, n);
    l->warn_len += (int)n;
    l->warn_buf[l->warn_len] = 0;
    if (tocont) return;
    if (l->n_warn < 5) ml_log(ML_LOG_WARN, "lua: %s", l->warn_buf);
    else if (l->n_warn == 5) ml_log(ML_LOG_WARN, "lua: further warnings are not shown");
    l->n_warn++;
    l->warn_len = 0;
}

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Decides whether the script must stop now. at_once: an exp call, where an interrupt needs no
 * grace. Once decided the reason sticks. */
static int due_stop(ml_lua *l, int at_once) {
    if (l->stop) return l->stop;
    if (ml_exp_interrupted) {
        double now = mono_now();
        if (at_once) return l->stop = ML_LUA_STOP_INTERRUPT;
        if (l->int_seen == 0) l->int_seen = now;
        else if (now - l->int_seen > INTERRUPT_GRACE_S) return l->stop = ML_LUA_STOP_INTERRUPT;
    }
    if (l->timeout_s > 0 && l->started > 0 && mono_now() - l->started > l->timeout_s)
        return l->stop = ML_LUA_STOP_TIMEOUT;
    return ML_LUA_STOP_NONE;
}

static const char *stop_message(ml_lua *l, char *buf, size_t n) {
    switch (l->stop) {
    case ML_LUA_STOP_INTERRUPT: snprintf(buf, n, "interrupted"); break;
    case ML_LUA_STOP_TIMEOUT: snprintf(buf, n, "script exceeded lua.timeout_s = %d s", l->timeout_s); break;
    case ML_LUA_STOP_MEMORY:
        snprintf(buf, n, "script exceeded its memory limit of %d MB (lua.memory_mb)", l->mem_mb);
        break;
    default: snprintf(buf, n, "stopped"); break;
    }
    return buf;
}

static void sb_hook(lua_State *L, lua_Debug *ar);

/* Raises the stop error. From here on this thread's hook runs at every instruction, so any
 * Lua code that runs after a C function swallowed the error (a load reader, a coroutine, a
 * pcall) raises again at its first instruction; the wrapped pcall/xpcall/resume/close/load
 * re-raise on return. Together the script cannot continue. */
static int stop_raise(lua_State *L, ml_lua *l) {
    char msg[128];
    lua_sethook(L, sb_hook, LUA_MASKCOUNT, 1);
    lua_pushstring(L, stop_message(l, msg, sizeof msg));
    return lua_error(L);
}

static void sb_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    ml_lua *l = getself(L);
    if (l->closing) luaL_error(L, "the script's state is closing");
    if (due_stop(l, 0)) stop_raise(L, l);
}

/* Every exp/moe/loss/schedule binding starts here. */
static void guard(lua_State *L) {
    ml_lua *l = getself(L);
    if (l->e && l->e->finished) luaL_error(L, "the run has finished");
    if (due_stop(l, 1)) stop_raise(L, l);
}

/* ------------------------------------------------------------------ paths */

static int path_under(const char *path, const char *dir) {
    size_t n = strlen(dir);
    if (n && dir[n - 1] == '/') return strncmp(path, dir, n) == 0; /* "/" (a realpath ends in '/' only then) */
    return n && strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == 0);
}

/* realpath of path, or of its directory when the file does not exist yet. A name that exists
 * but does not resolve (a dangling symlink, a loop) resolves to nothing: opening it for
 * writing would follow the link wherever it points. */
static int resolve(const char *path, char *out) {
    if (realpath(path, out)) return 1;
    struct stat st;
    if (lstat(path, &st) == 0) return 0;
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) return 0;
    char *slash = strrchr(dir, '/');
    const char *base = path;
    if (slash) {
        *slash = 0;
        base = path + (slash - dir) + 1;
        if (!*dir) strcpy(dir, "/");
    } else {
        strcpy(dir, ".");
    }
    if (!*base || !strcmp(base, ".") || !strcmp(base, "..")) return 0;
    char rd[PATH_MAX];
    if (!realpath(dir, rd)) return 0;
    size_t a = strlen(rd), b = strlen(base);
    if (a + 1 + b >= PATH_MAX) return 0;
    memcpy(out, rd, a);
    out[a] = '/';
    memcpy(out + a + 1, base, b + 1);
    return 1;
}

static int allowed(ml_lua *l, const char *path, int write) {
    char rp[PATH_MAX];
    if (!resolve(path, rp)) return 0;
    /* Writes go to files/ only: the rest of the run directory (config.yaml, checkpoints/,
     * the results files) is what --resume trusts, so a script must not be able to forge it. */
    if (write) return l->files_dir[0] && path_under(rp, l->files_dir);
    if (l->run_dir[0] && path_under(rp, l->run_dir)) return 1;
    if (path_under(rp, l->script_dir) || path_under(rp, l->lib_dir)) return 1;
    for (int i = 0; i < l->n_allow; i++)
        if (path_under(rp, l->allow[i])) return 1;
    return 0;
}

#define READ_RULE "scripts read only under the run directory, the script's directory, scripts/lib and lua.allow_read"
#define WRITE_RULE "scripts write only under exp.files_dir (the run directory's files/)"

static void refresh_run_dir(ml_lua *l) {
    if (!l->run_dir[0] && l->e && ml_exp_run_dir(l->e)) {
        char rp[PATH_MAX];
        if (realpath(ml_exp_run_dir(l->e), rp)) {
            strcpy(l->run_dir, rp); /* same size */
            snprintf(l->files_dir, sizeof l->files_dir, "%s/files", rp);
        }
    }
}

/* The sandbox's read rule, for bindings that open files by path (exp:load_checkpoint). */
static int may_read(lua_State *L, const char *path) {
    ml_lua *l = getself(L);
    refresh_run_dir(l);
    return allowed(l, path, 0);
}

/* ------------------------------------------------------------ aux helpers */

static void set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}
static void set_int(lua_State *L, const char *k, lua_Integer v) {
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

/*
 * The types of the exp API, in the manner of lauxlib: one metatable per type (with
 * __name, __metatable, __tostring), one luaL_Reg table of methods, one of field getters and
 * one of field setters. __index looks a key up among the getters, then the methods; a
 * getter and a setter are called with the stack __index / __newindex got: (object, key)
 * and (object, key, value). The tables are upvalues of the two metamethods, out of a
 * script's reach. Every access goes through guard(): nothing answers once the run is over.
 */
typedef struct class_def {
    const char *tname;  /* the metatable's name (luaL_checkudata) */
    const char *label;  /* the object in messages: "moe layer" */
    const luaL_Reg *getters, *setters, *methods;
    lua_CFunction tostring;
    const char *hint;   /* after "is read-only" (or NULL) */
    int named;          /* messages name the object by its name field: "loss 'load_balance'" */
} class_def;

static void guard(lua_State *L);
static void loop_check(lua_State *L, lua_Integer i);

/* "a, b, c" of the names of one or two luaL_Reg tables */
static void reg_names(const luaL_Reg *a, const luaL_Reg *b, char *buf, size_t n) {
    size_t used = 0;
    buf[0] = 0;
    const luaL_Reg *r[2] = {a, b};
    for (int t = 0; t < 2; t++)
        for (const luaL_Reg *q = r[t]; q && q->name && used < n; q++)
            used += (size_t)snprintf(buf + used, n - used, "%s%s", used ? ", " : "", q->name);
}

/* The object's label for messages: "loss 'load_balance'" for a named type. */
static const char *class_label(lua_State *L, int getters, const char *label, int named) {
    if (named && lua_getfield(L, getters, "name") == LUA_TFUNCTION) {
        lua_pushvalue(L, 1);
        lua_pushliteral(L, "name");
        lua_call(L, 2, 1);
        if (lua_type(L, -1) == LUA_TSTRING) return lua_pushfstring(L, "%s '%s'", label, lua_tostring(L, -1));
    }
    return label;
}

/* __index: upvalues getters, methods, label, "fields", named */
static int class_index(lua_State *L) {
    guard(L);
    luaL_checkstring(L, 2);
    lua_settop(L, 2);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) == LUA_TFUNCTION) {
        lua_CFunction get = lua_tocfunction(L, -1);
        lua_settop(L, 2);
        return get(L);
    }
    lua_pop(L, 1);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) return 1;
    return luaL_error(L, "%s has no field '%s' (fields: %s)",
                      class_label(L, lua_upvalueindex(1), lua_tostring(L, lua_upvalueindex(3)),
                                  lua_toboolean(L, lua_upvalueindex(5))),
                      lua_tostring(L, 2),
                      lua_tostring(L, lua_upvalueindex(4)));
}

/* __newindex: upvalues setters, getters, label, hint, named */
static int class_newindex(lua_State *L) {
    guard(L);
    const char *k = luaL_checkstring(L, 2);
    lua_settop(L, 3);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) == LUA_TFUNCTION) {
        lua_CFunction set = lua_tocfunction(L, -1);
        lua_settop(L, 3);
        return set(L);
    }
    lua_pushvalue(L, 2);
    int known = lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL;
    const char *label = class_label(L, lua_upvalueindex(2), lua_tostring(L, lua_upvalueindex(3)),
                                    lua_toboolean(L, lua_upvalueindex(5)));
    const char *hint = lua_tostring(L, lua_upvalueindex(4));
    return luaL_error(L, "%s: '%s' %s%s%s", label, k, known ? "is read-only" : "is not a field", *hint ? "; " : "", hint);
}

static void new_class(lua_State *L, const class_def *c) {
    char names[512];
    luaL_newmetatable(L, c->tname);
    lua_newtable(L);
    if (c->getters) luaL_setfuncs(L, c->getters, 0);
    lua_newtable(L);
    if (c->methods) luaL_setfuncs(L, c->methods, 0);
    lua_pushstring(L, c->label);
    reg_names(c->getters, c->methods, names, sizeof names);
    lua_pushstring(L, names);
    lua_pushboolean(L, c->named);
    lua_pushcclosure(L, class_index, 5);
    lua_setfield(L, -2, "__index");
    lua_newtable(L);
    if (c->setters) luaL_setfuncs(L, c->setters, 0);
    lua_newtable(L);
    if (c->getters) luaL_setfuncs(L, c->getters, 0);
    lua_pushstring(L, c->label);
    lua_pushstring(L, c->hint ? c->hint : "");
    lua_pushboolean(L, c->named);
    lua_pushcclosure(L, class_newindex, 5);
    lua_setfield(L, -2, "__newindex");
    if (c->tostring) {
        lua_pushcfunction(L, c->tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pushstring(L, c->tname); /* getmetatable() gives the name, not the table */
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

/* A setter's error, as luaL_argerror words an argument's: "bad value for exp.optim.lr
   (must be in (0, 10], got 20)". */
static int set_error(lua_State *L, const char *field, const char *msg) {
    return luaL_error(L, "bad value for %s (%s)", field, msg);
}

/* The number a setter was given (stack index 3): a number, finite. */
static double set_number(lua_State *L, const char *field) {
    if (lua_type(L, 3) != LUA_TNUMBER)
        set_error(L, field, lua_pushfstring(L, "number expected, got %s", luaL_typename(L, 3)));
    double v = lua_tonumber(L, 3);
    if (!isfinite(v)) set_error(L, field, lua_pushfstring(L, "a finite number expected, got %f", v));
    return v;
}

/* Pushes a read-only view of the table at idx: reads pass through, writes raise. */
static void push_readonly(lua_State *L, int idx) {
    idx = lua_absindex(L, idx);
    lua_newtable(L);
    luaL_getmetatable(L, RO_T);
    lua_newtable(L); /* per-proxy metatable so __index can differ */
    lua_pushvalue(L, idx);
    lua_setfield(L, -2, "__index");
    lua_getfield(L, -2, "__newindex");
    lua_setfield(L, -2, "__newindex");
    lua_getfield(L, -2, "__len");
    lua_setfield(L, -2, "__len");
    lua_getfield(L, -2, "__pairs");
    lua_setfield(L, -2, "__pairs");
    lua_pushliteral(L, "read-only table");
    lua_setfield(L, -2, "__metatable");
    lua_remove(L, -2);
    lua_setmetatable(L, -2);
}

static int ro_newindex(lua_State *L) {
    return luaL_error(L, "exp.config is read-only (tried to set '%s'); hint: use exp:log or a local variable",
                      luaL_tolstring(L, 2, NULL));
}
static int ro_len(lua_State *L) {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__index");
    lua_pushinteger(L, (lua_Integer)luaL_len(L, -1));
    return 1;
}
/* pairs() over a proxy walks the hidden table without handing it out (the state is the
 * proxy itself, so the writable original never reaches the script) */
static int ro_next(lua_State *L) {
    lua_settop(L, 2);
    if (!lua_getmetatable(L, 1) || lua_getfield(L, 3, "__index") != LUA_TTABLE) return 0;
    lua_pushvalue(L, 2);
    if (lua_next(L, 4)) return 2;
    lua_pushnil(L);
    return 1;
}
static int ro_pairs(lua_State *L) {
    lua_pushcfunction(L, ro_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Config node -> Lua value (maps/seqs become read-only tables). */
static void push_node(lua_State *L, const ml_cfg_node *n) {
    switch (ml_cfg_node_kind(n)) {
    case ML_CFG_MAP:
    case ML_CFG_SEQ: {
        int map = ml_cfg_node_kind(n) == ML_CFG_MAP, len = ml_cfg_node_len(n);
        lua_createtable(L, map ? 0 : len, map ? len : 0);
        for (int i = 0; i < len; i++) {
            const ml_cfg_node *c = ml_cfg_node_at(n, i);
            push_node(L, c);
            if (map) lua_setfield(L, -2, ml_cfg_node_key(c));
            else lua_rawseti(L, -2, i + 1);
        }
        push_readonly(L, -1);
        lua_remove(L, -2);
        break;
    }
    case ML_CFG_SCALAR: {
        const char *t = ml_cfg_node_text(n);
        if (ml_cfg_node_is_quoted(n)) lua_pushstring(L, t);
        else if (strcmp(t, "true") == 0) lua_pushboolean(L, 1);
        else if (strcmp(t, "false") == 0) lua_pushboolean(L, 0);
        else if (strcmp(t, "null") == 0 || strcmp(t, "~") == 0 || !*t) lua_pushnil(L);
        else if (!lua_stringtonumber(L, t)) lua_pushstring(L, t);
        break;
    }
    }
}

/* Lua table of scalar fields -> JSON object fields (without braces). */
/*
 * Checks an event's field table without running any script code (lua_next is raw; no
 * __tostring): string keys, values number, boolean or string. Raises before the caller
 * allocates anything, so an error can never leave a C buffer behind.
 */
#define EVENT_MAX_FIELDS 256

/* One field of exp:event's table, read before the JSON buffer exists (so nothing can raise
   while it does). Keys and string values point into the table, which anchors them. */
typedef struct event_field {
    const char *k, *s;
    int type, b;
    int isint;
    lua_Integer i;
    lua_Number n;
} event_field;

static int event_field_cmp(const void *a, const void *b) {
    return strcmp(((const event_field *)a)->k, ((const event_field *)b)->k);
}

/* Checks exp:event's field table (raw) and reads it into a userdata array sorted by name,
   left on the stack: events.jsonl then lists a table's fields in the same order in every
   process (pairs() order depends on Lua's per-process string hash seed). */
static event_field *read_event_fields(lua_State *L, int idx, int *count) {
    idx = lua_absindex(L, idx);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "exp:event: field names must be strings, got a %s", luaL_typename(L, -2));
        int t = lua_type(L, -1);
        if (t != LUA_TNUMBER && t != LUA_TBOOLEAN && t != LUA_TSTRING)
            luaL_error(L, "exp:event: field '%s' is a %s, expected a number, boolean or string", lua_tostring(L, -2),
                       luaL_typename(L, -1));
        if (++n > EVENT_MAX_FIELDS) luaL_error(L, "exp:event: more than %d fields", EVENT_MAX_FIELDS);
        lua_pop(L, 1);
    }
    event_field *f = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *f, 0);
    int k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        event_field *x = &f[k++];
        memset(x, 0, sizeof *x);
        x->k = lua_tostring(L, -2);
        x->type = lua_type(L, -1);
        if (x->type == LUA_TNUMBER) {
            x->isint = lua_isinteger(L, -1);
            if (x->isint) x->i = lua_tointeger(L, -1);
            else x->n = lua_tonumber(L, -1);
        } else if (x->type == LUA_TBOOLEAN) x->b = lua_toboolean(L, -1);
        else x->s = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    qsort(f, (size_t)n, sizeof *f, event_field_cmp);
    *count = n;
    return f;
}

/* Fields read by read_event_fields -> JSON object members. Raises nothing. */
static void fields_to_json(const event_field *f, int n, ml_json *j) {
    for (int i = 0; i < n; i++) {
        if (f[i].type == LUA_TNUMBER) {
            if (f[i].isint) ml_json_int(j, f[i].k, f[i].i);
            else ml_json_num(j, f[i].k, f[i].n);
        } else if (f[i].type == LUA_TBOOLEAN) ml_json_raw(j, f[i].k, f[i].b ? "true" : "false");
        else ml_json_str(j, f[i].k, f[i].s);
    }
}

/* ------------------------------------------------------------------ exp */

static int state_init(lua_State *L, ml_experiment *e);
static int state_save(void *ctx, char **json);

static ml_experiment *check_exp(lua_State *L) {
    ml_experiment **p = luaL_checkudata(L, 1, EXP_T);
    guard(L);
    return *p;
}

typedef struct hook_ctx {
    lua_State *L;
    int fn;      /* stack index of on_step, 0: none */
    int failed;  /* on_step raised: its error is on top of the stack */
    ml_experiment *e;
} hook_ctx;

/* on_step(p), protected: called with (on_step, e) */
static int call_on_step(lua_State *L) {
    ml_experiment *e = lua_touserdata(L, 2);
    lua_settop(L, 1);
    lua_createtable(L, 0, 4);
    set_int(L, "epoch", e->epoch);
    set_int(L, "step", e->step);
    set_int(L, "images_seen", e->images_seen);
    lua_call(L, 1, 0);
    return 0;
}

/* Runs at every step boundary of train_epoch: stops the epoch on a timeout (the C loop stops
 * on an interrupt by itself), then calls the script's on_step if it gave one. Nothing here
 * may raise (it runs inside the core's training loop): the call and everything that
 * allocates is inside lua_pcall, and an error stays on the stack for l_train_epoch. */
static int step_hook(void *ctx) {
    hook_ctx *h = ctx;
    lua_State *L = h->L;
    if (due_stop(getself(L), 0)) return ml_errorf("the script is stopping");
    if (!h->fn) return ML_OK;
    lua_pushcfunction(L, call_on_step);
    lua_pushvalue(L, h->fn);
    lua_pushlightuserdata(L, h->e);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
        h->failed = 1;
        return ml_errorf("on_step hook failed");
    }
    return ML_OK;
}

static int l_train_epoch(lua_State *L) {
    ml_experiment *e = check_exp(L);
    ml_lua *self = getself(L);
    /* a nested epoch would train inside the outer one's step and lose its metrics row */
    if (self->in_epoch) return luaL_error(L, "exp:train_epoch cannot be called from on_step");
    hook_ctx h = {L, 0, 0, e};
    lua_settop(L, 2);
    if (!lua_isnil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "on_step"); /* 3 */
        if (!lua_isnil(L, 3)) {
            luaL_argexpected(L, lua_isfunction(L, 3), 2, "table with on_step = function");
            h.fn = 3;
        }
    }
    luaL_checkstack(L, 8, "exp:train_epoch"); /* room for the hook's calls */
    ml_epoch_stats st;
    self->in_epoch = 1;
    int rc = ml_exp_train_epoch(e, step_hook, &h, &st);
    self->in_epoch = 0;
    if (due_stop(getself(L), 1)) /* interrupted during the epoch, or out of time */
        return stop_raise(L, getself(L));
    if (h.failed) return lua_error(L); /* re-raise the hook's own error, position intact */
    if (rc) return core_error(L);
    lua_createtable(L, 0, 8 + st.n_aux);
    set_int(L, "epoch", st.epoch);
    set_num(L, "loss", st.loss);
    set_num(L, "task_loss", st.task_loss);
    set_int(L, "images_seen", st.images_seen);
    set_int(L, "steps", st.steps);
    set_num(L, "seconds", st.seconds);
    set_num(L, "img_per_s", st.img_per_s);
    for (int i = 0; i < st.n_aux; i++) set_num(L, st.aux_name[i], st.aux_value[i]);
    if (e->model->seg) { /* segmentation: the validation set's COD metrics (docs/metrics.md) */
        const ml_segm *g = &e->seg.last;
        set_num(L, "iou", g->iou);
        set_num(L, "dice", g->dice);
        set_num(L, "mae", g->mae);
        set_num(L, "s", g->s_measure);
        set_num(L, "e_mean", g->e_mean);
        set_num(L, "e_max", g->e_max);
        set_num(L, "e_adaptive", g->e_adaptive);
        set_num(L, "wf", g->wfm);
    }
    return 1;
}

static int l_evaluate(lua_State *L) {
    ml_experiment *e = check_exp(L);
    ml_eval_stats st;
    if (ml_exp_evaluate(e, &st)) return core_error(L);
    lua_createtable(L, 0, 4 + st.n_aux);
    set_num(L, "loss", st.loss);
    set_num(L, "val_loss", st.loss);
    set_int(L, "samples", st.samples);
    for (int i = 0; i < st.n_aux; i++) set_num(L, st.aux_name[i], st.aux_value[i]);
    if (e->model->seg) { /* segmentation: the validation set's COD metrics (docs/metrics.md) */
        const ml_segm *g = &e->seg.last;
        set_num(L, "iou", g->iou);
        set_num(L, "dice", g->dice);
        set_num(L, "mae", g->mae);
        set_num(L, "s", g->s_measure);
        set_num(L, "e_mean", g->e_mean);
        set_num(L, "e_max", g->e_max);
        set_num(L, "e_adaptive", g->e_adaptive);
        set_num(L, "wf", g->wfm);
    }
    return 1;
}

typedef struct log_cell {
    const char *k; /* anchored by the table being logged */
    double v;
} log_cell;

static int log_cell_cmp(const void *a, const void *b) { return strcmp(((const log_cell *)a)->k, ((const log_cell *)b)->k); }

/* exp:log{...}: the columns in name order, so metrics.csv's header is the same in every
   process (pairs() order depends on Lua's per-process string hash seed). */
static int l_log(lua_State *L) {
    ml_experiment *e = check_exp(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) != LUA_TSTRING) return luaL_argerror(L, 2, "keys must be column names (strings)");
        if (++n > ML_MAX_COLS) return luaL_error(L, "exp:log: more than %d columns", ML_MAX_COLS);
        lua_pop(L, 1);
    }
    log_cell *c = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *c, 0);
    int i = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        size_t kl;
        const char *k = lua_tolstring(L, -2, &kl);
        /* names are copied out of the Lua allocator and become metrics.csv's header */
        int bad = kl == 0 || kl > 128;
        for (size_t j = 0; j < kl && !bad; j++)
            bad = (unsigned char)k[j] < 0x20 || (unsigned char)k[j] > 0x7e || k[j] == ',' || k[j] == '"';
        if (bad)
            return luaL_error(L, "exp:log: a column name (here %d bytes) must be 1..128 printable ASCII characters "
                                 "without ',' or '\"'", (int)(kl > INT_MAX ? INT_MAX : kl));
        int ok;
        double v = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : lua_tonumberx(L, -1, &ok);
        if (!lua_isboolean(L, -1) && !ok)
            return luaL_error(L, "exp:log: column '%s' has a %s value, expected a number or boolean", k, luaL_typename(L, -1));
        c[i].k = k;
        c[i++].v = v;
        lua_pop(L, 1);
    }
    qsort(c, (size_t)i, sizeof *c, log_cell_cmp);
    for (int j = 0; j < i; j++)
        if (ml_exp_log(e, c[j].k, c[j].v)) return core_error(L);
    return 0;
}

static int l_event(lua_State *L) {
    ml_experiment *e = check_exp(L);
    const char *kind = luaL_checkstring(L, 2);
    size_t kn = strlen(kind);
    int ok = kn >= 1 && kn <= 64;
    for (size_t i = 0; ok && i < kn; i++) ok = isalnum((unsigned char)kind[i]) || strchr("_.-", kind[i]);
    luaL_argcheck(L, ok, 2, "an event kind is 1..64 letters, digits, '_', '.' or '-'");
    int nf = 0;
    event_field *f = NULL;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        f = read_event_fields(L, 3, &nf); /* every error before the buffer exists */
    }
    ml_json j;
    ml_json_begin(&j);
    fields_to_json(f, nf, &j);
    int rc = ml_exp_event_json(e, kind, &j);
    ml_json_free(&j);
    if (rc) return core_error(L);
    return 0;
}

static int l_save_checkpoint(lua_State *L) {
    ml_experiment *e = check_exp(L);
    if (ml_exp_save_checkpoint(e, luaL_checkstring(L, 2))) return core_error(L);
    return 0;
}

static int l_load_checkpoint(lua_State *L) {
    ml_experiment *e = check_exp(L);
    const char *tag = luaL_checkstring(L, 2);
    int epoch;
    int64_t step;
    /* a path (a tag has no '/') obeys io.open's read rule, checked before anything opens it */
    if (strchr(tag, '/') && !may_read(L, tag))
        return luaL_error(L, "exp:load_checkpoint('%s'): not allowed by the sandbox; " READ_RULE
                             "; hint: add the path to lua.allow_read", tag);
    if (ml_exp_load_checkpoint(e, tag, &epoch, &step)) return core_error(L);
    lua_createtable(L, 0, 2);
    set_int(L, "epoch", epoch);
    set_int(L, "step", step);
    return 1;
}

static int exp_epoch(lua_State *L) {
    lua_pushinteger(L, check_exp(L)->epoch);
    return 1;
}
static int exp_step(lua_State *L) {
    lua_pushinteger(L, check_exp(L)->step);
    return 1;
}
static int exp_images_seen(lua_State *L) {
    lua_pushinteger(L, check_exp(L)->images_seen);
    return 1;
}
static int exp_num_layers(lua_State *L) {
    lua_pushinteger(L, check_exp(L)->model->L);
    return 1;
}
static int exp_run_dir(lua_State *L) {
    lua_pushstring(L, ml_exp_run_dir(check_exp(L)));
    return 1;
}
static int exp_files_dir(lua_State *L) {
    ml_experiment *e = check_exp(L);
    if (ml_exp_run_dir(e)) lua_pushfstring(L, "%s/files", ml_exp_run_dir(e));
    else lua_pushnil(L);
    return 1;
}
static int exp_name(lua_State *L) {
    lua_pushstring(L, check_exp(L)->experiment);
    return 1;
}
static int exp_resumed(lua_State *L) {
    lua_pushboolean(L, check_exp(L)->resumed);
    return 1;
}
/* the objects made once (push_exp): config, moe, losses, schedule, optim, state */
static int exp_cached(lua_State *L) {
    check_exp(L);
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

/* exp.state = {...}: the script's own table, saved in checkpoints */
static int exp_set_state(lua_State *L) {
    check_exp(L);
    if (!lua_istable(L, 3)) return set_error(L, "exp.state", lua_pushfstring(L, "table expected, got %s", luaL_typename(L, 3)));
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 3);
    lua_setfield(L, -2, "state");
    return 0;
}

static int exp_tostring(lua_State *L) {
    ml_experiment *e = *(ml_experiment **)luaL_checkudata(L, 1, EXP_T);
    lua_pushfstring(L, "experiment '%s' (epoch %d)", e->experiment, e->epoch);
    return 1;
}

/* exp.optim's section below */
static int l_freeze(lua_State *L);
static int l_unfreeze(lua_State *L);
static int l_param_names(lua_State *L);
static int l_params(lua_State *L);

static const luaL_Reg exp_getters[] = {
    {"config", exp_cached}, {"moe", exp_cached}, {"losses", exp_cached}, {"schedule", exp_cached},
    {"optim", exp_cached}, {"state", exp_cached}, {"epoch", exp_epoch}, {"step", exp_step}, {"images_seen", exp_images_seen},
    {"num_layers", exp_num_layers}, {"run_dir", exp_run_dir}, {"files_dir", exp_files_dir}, {"name", exp_name},
    {"resumed", exp_resumed}, {NULL, NULL}};
static const luaL_Reg exp_setters[] = {{"state", exp_set_state}, {NULL, NULL}};
static const luaL_Reg exp_methods[] = {
    {"train_epoch", l_train_epoch}, {"evaluate", l_evaluate}, {"log", l_log}, {"event", l_event},
    {"save_checkpoint", l_save_checkpoint}, {"load_checkpoint", l_load_checkpoint}, {"freeze", l_freeze},
    {"unfreeze", l_unfreeze}, {"param_names", l_param_names}, {"params", l_params}, {NULL, NULL}};
static const class_def exp_class = {EXP_T, "exp", exp_getters, exp_setters, exp_methods, exp_tostring,
                                    "hint: coefficients are exp.losses[name].coef", 0};

/* ----------------------------------------------------------------- moe[i] */

typedef struct moe_ud { ml_experiment *e; int layer; } moe_ud;

static moe_ud *check_moe(lua_State *L) {
    moe_ud *u = luaL_checkudata(L, 1, MOE_T);
    guard(L);
    return u;
}

/* add_experts' options table {init=, source=, noise=, ratio=, router_noise=, reason=} over
   the config's growth.* defaults in *g. */
static const char *read_growth(lua_State *L, int idx, const ml_experiment *e, int layer, ml_growth *g) {
    static const char *const keys[] = {"init", "source", "noise", "ratio", "router_noise", "reason", NULL};
    const char *reason = "script";
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_argerror(L, idx, lua_pushfstring(L, "option names must be strings, got %s", luaL_typename(L, -2)));
        const char *k = lua_tostring(L, -2);
        int which = -1;
        for (int i = 0; keys[i]; i++)
            if (!strcmp(k, keys[i])) which = i;
        if (which < 0)
            luaL_argerror(L, idx, lua_pushfstring(L, "unknown option '%s' (options: init, source, noise, ratio, "
                                                         "router_noise, reason)", k));
        if (which == 0 || which == 5) {
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_argerror(L, idx, lua_pushfstring(L, "'%s' must be a string, got %s", k, luaL_typename(L, -1)));
            if (which == 5) {
                reason = lua_tostring(L, -1);
            } else {
                int m = ml_growth_init_from_name(lua_tostring(L, -1));
                if (m < 0)
                    luaL_argerror(L, idx, lua_pushfstring(L, "init '%s': expected random, copy or drop_upcycle",
                                                             lua_tostring(L, -1)));
                g->init = (ml_expert_init)m;
            }
        } else if (which == 1) {
            int isint;
            lua_Integer v = lua_tointegerx(L, -1, &isint);
            int N = e->model->moe[layer]->N;
            if (!isint || v < 0 || v >= N)
                luaL_argerror(L, idx, lua_pushfstring(L, "source must be an expert id in 0..%d (experts count from 0)",
                                                         N - 1));
            g->source = (int)v;
        } else {
            int isnum;
            double v = lua_tonumberx(L, -1, &isnum);
            if (!isnum || lua_type(L, -1) != LUA_TNUMBER || !isfinite(v) || v < 0 || (which == 3 && v > 1))
                luaL_argerror(L, idx, lua_pushfstring(L, "'%s' must be a finite number %s", k,
                                                         which == 3 ? "in [0, 1]" : ">= 0"));
            if (which == 2) g->noise = v;
            else if (which == 3) g->ratio = v;
            else g->router_noise = v;
        }
        lua_pop(L, 1);
    }
    return reason;
}

/* moe:add_experts(n [, reason | {init=, source=, noise=, ratio=, router_noise=, reason=}]) */
static int l_add_experts(lua_State *L) {
    moe_ud *u = check_moe(L);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 1 && n <= ML_MOE_MAX_EXPERTS, 2, "expected 1..4096 experts to add");
    /* experts live outside the Lua allocator: a loop of additions must not exhaust memory */
    if (u->e->model->moe[u->layer]->N + n > ML_MOE_MAX_EXPERTS)
        return luaL_error(L, "add_experts: a layer holds at most 4096 experts (layer %d has %d, asked for %d more)",
                          u->layer + 1, u->e->model->moe[u->layer]->N, (int)n);
    ml_growth g;
    ml_exp_growth_defaults(u->e, &g);
    const char *reason;
    if (lua_istable(L, 3)) reason = read_growth(L, 3, u->e, u->layer, &g);
    else reason = luaL_optstring(L, 3, "script");
    if (ml_exp_add_experts_with(u->e, u->layer, (int)n, reason, &g)) return core_error(L);
    lua_pushinteger(L, u->e->model->moe[u->layer]->N);
    return 1;
}

/* moe:remove_experts(ids [, reason]) -> experts now, {old id of each expert now}: ids are
   expert numbers as in tensor names and routing.csv, from 0 */
static int l_remove_experts(lua_State *L) {
    moe_ud *u = check_moe(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    const char *reason = luaL_optstring(L, 3, "script");
    const int N = u->e->model->moe[u->layer]->N;
    lua_Integer n = luaL_len(L, 2);
    luaL_argcheck(L, n >= 1, 2, "expected a list of expert ids to remove");
    if (n >= N)
        return luaL_argerror(L, 2, lua_pushfstring(L, "layer %d has %d experts: removing %d would leave none "
                                                     "(at least one must stay)", u->layer + 1, N, (int)n));
    /* the ids in a Lua-owned buffer: an error below leaves nothing behind */
    int *ids = lua_newuserdatauv(L, (size_t)n * sizeof *ids, 0);
    uint8_t *seen = lua_newuserdatauv(L, (size_t)N, 0);
    memset(seen, 0, (size_t)N);
    for (lua_Integer i = 1; i <= n; i++) {
        loop_check(L, i);
        lua_geti(L, 2, i);
        int isint;
        lua_Integer v = lua_tointegerx(L, -1, &isint);
        if (!isint || lua_type(L, -1) != LUA_TNUMBER)
            return luaL_argerror(L, 2, lua_pushfstring(L, "ids[%d] is %s, expected an integer expert id", (int)i,
                                                         lua_type(L, -1) == LUA_TNUMBER ? "not an integer" : luaL_typename(L, -1)));
        if (v < 0 || v >= N)
            return luaL_argerror(L, 2, lua_pushfstring(L, "ids[%d] = %I: layer %d has experts 0..%d (ids count from 0, "
                                                         "as in tensor names)", (int)i, v, u->layer + 1, N - 1));
        if (seen[v]) return luaL_argerror(L, 2, lua_pushfstring(L, "expert %I is named twice", v));
        seen[v] = 1;
        ids[i - 1] = (int)v;
        lua_pop(L, 1);
    }
    if (ml_exp_remove_experts(u->e, u->layer, ids, (int)n, reason)) return core_error(L);
    const int nk = u->e->model->moe[u->layer]->N;
    lua_pushinteger(L, nk);
    lua_createtable(L, nk, 0);
    for (int x = 0, j = 0; x < N; x++)
        if (!seen[x]) {
            lua_pushinteger(L, x);
            lua_rawseti(L, -2, ++j);
        }
    return 2;
}

static void push_array(lua_State *L, const double *v, int n) {
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushnumber(L, v[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

/* An ml_health whose arrays are freed when the holder closes (return or error): building
   the result table allocates, and a memory error must not leave the arrays behind. */
#define HEALTH_T "moelab.health"

static int health_close(lua_State *L) {
    ml_health_free(lua_touserdata(L, 1));
    return 0;
}

static int l_stats(lua_State *L) {
    moe_ud *u = check_moe(L);
    const char *which = luaL_optstring(L, 2, "train");
    luaL_argcheck(L, !strcmp(which, "train") || !strcmp(which, "val"), 2, "expected 'train' or 'val'");
    lua_settop(L, 2);
    ml_health *hp = lua_newuserdatauv(L, sizeof *hp, 0);
    memset(hp, 0, sizeof *hp);
    luaL_setmetatable(L, HEALTH_T);
    lua_toclose(L, 3);
    if (ml_exp_health(u->e, u->layer, which[0] == 'v', hp)) return core_error(L);
    const ml_health h = *hp;
    lua_createtable(L, 0, 20);
    set_int(L, "num_experts", h.num_experts);
    push_array(L, h.utilisation, h.num_experts);
    lua_setfield(L, -2, "utilisation");
    push_array(L, h.importance, h.num_experts);
    lua_setfield(L, -2, "importance");
    set_num(L, "cv", h.cv);
    set_int(L, "active", h.active);
    set_int(L, "dead", h.dead);
    set_num(L, "entropy_norm", h.marginal_entropy_norm);
    set_num(L, "effective_experts", h.effective_experts);
    set_num(L, "slots_per_sample", h.slots_per_sample);
    set_num(L, "effective_norm", h.effective_norm);
    set_num(L, "max_share", h.max_share);
    set_num(L, "kl_uniform", h.kl_uniform);
    set_num(L, "sample_entropy", h.mean_sample_entropy);
    set_num(L, "mutual_info", h.mutual_info);
    set_num(L, "max_load", h.max_load_ratio);
    set_num(L, "dropped", h.dropped_share);
    set_num(L, "nmi", h.nmi_label);
    set_num(L, "load_balance", h.load_balance);
    set_int(L, "samples", h.samples);
    lua_pushboolean(L, h.collapsed);
    lua_setfield(L, -2, "collapsed");
    const char *names[ML_MAX_TENSORS];
    const float *vals[ML_MAX_TENSORS];
    ml_moe *m = u->e->model->moe[u->layer];
    int nx = ml_moe_reported_state(m, names, vals, ML_MAX_TENSORS);
    for (int i = 0; i < nx; i++) {
        lua_createtable(L, m->N, 0);
        for (int k = 0; k < m->N; k++) {
            lua_pushnumber(L, vals[i][k]);
            lua_rawseti(L, -2, k + 1);
        }
        lua_setfield(L, -2, names[i]);
    }
    return 1; /* the holder closes: the arrays are freed */
}

static int moe_num_experts(lua_State *L) {
    moe_ud *u = check_moe(L);
    lua_pushinteger(L, u->e->model->moe[u->layer]->N);
    return 1;
}
static int moe_layer(lua_State *L) {
    lua_pushinteger(L, check_moe(L)->layer + 1);
    return 1;
}
/* exp.moe[i].router, made once per layer (user value 1) */
static int moe_router(lua_State *L) {
    check_moe(L);
    lua_getiuservalue(L, 1, 1);
    return 1;
}

static int moe_tostring(lua_State *L) {
    moe_ud *u = luaL_checkudata(L, 1, MOE_T);
    lua_pushfstring(L, "moe layer %d (%d experts, router %s)", u->layer + 1, u->e->model->moe[u->layer]->N,
                    u->e->model->moe[u->layer]->router.plugin->name);
    return 1;
}

static const luaL_Reg moe_getters[] = {
    {"num_experts", moe_num_experts}, {"layer", moe_layer}, {"router", moe_router}, {NULL, NULL}};
static const luaL_Reg moe_methods[] = {
    {"add_experts", l_add_experts}, {"remove_experts", l_remove_experts}, {"stats", l_stats}, {NULL, NULL}};
static const class_def moe_class = {MOE_T, "moe layer", moe_getters, NULL, moe_methods, moe_tostring, NULL, 0};

/* ------------------------------------------------------------ moe[i].router */

/* The router of a layer: .name, .options, :set{...}. Its string form is the plugin's name,
   so print() and concatenation read as before it was an object. */
static moe_ud *check_router_ref(lua_State *L) {
    moe_ud *u = luaL_checkudata(L, 1, ROUTER_T);
    guard(L);
    return u;
}

static ml_router_inst *router_of(const moe_ud *u) { return &u->e->model->moe[u->layer]->router; }

static int router_name(lua_State *L) {
    lua_pushstring(L, router_of(check_router_ref(L))->plugin->name);
    return 1;
}

static int router_layer(lua_State *L) {
    lua_pushinteger(L, check_router_ref(L)->layer + 1);
    return 1;
}

/* a fresh table of the current values: writing into it changes nothing (use :set) */
static int router_options(lua_State *L) {
    const ml_router_inst *ri = router_of(check_router_ref(L));
    ml_lua_push_options(L, ri->plugin, ri->opt);
    return 1;
}

/* router:set{name = value, ...}: options the plugin flags ML_OPTF_RUNTIME, by the rules the
   YAML is read by; the plugin is told (ML_EV_OPTIONS_CHANGED) and may refuse; a change is a
   router_options event. Applies from the next forward. */
static int router_set(lua_State *L) {
    moe_ud *u = check_router_ref(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    ml_router_inst *ri = router_of(u);
    ml_optval opt[ML_MAX_OPTIONS];
    memcpy(opt, ri->opt, (size_t)ri->plugin->num_options * sizeof *opt);
    char what[64];
    snprintf(what, sizeof what, "exp.moe[%d].router:set", u->layer + 1);
    ml_lua_read_options(L, 2, ri->plugin, opt, NULL, what);
    if (ml_exp_set_router_options(u->e, u->layer, opt)) return luaL_error(L, "%s: %s", what, ml_error());
    return 0;
}

static int router_tostring(lua_State *L) {
    moe_ud *u = luaL_checkudata(L, 1, ROUTER_T);
    lua_pushstring(L, router_of(u)->plugin->name);
    return 1;
}

/* "router " .. exp.moe[1].router, as when it was the name */
static int router_concat(lua_State *L) {
    luaL_tolstring(L, 1, NULL);
    luaL_tolstring(L, 2, NULL);
    lua_concat(L, 2);
    return 1;
}

static const luaL_Reg router_getters[] = {
    {"name", router_name}, {"layer", router_layer}, {"options", router_options}, {NULL, NULL}};
static const luaL_Reg router_methods[] = {{"set", router_set}, {NULL, NULL}};
static const class_def router_class = {ROUTER_T, "router", router_getters, NULL, router_methods, router_tostring,
                                       "options change with :set{...}", 1};

/* ------------------------------------------------------------- losses[name] */

typedef struct loss_ud { ml_experiment *e; int idx; } loss_ud;

static loss_ud *check_loss(lua_State *L) {
    loss_ud *u = luaL_checkudata(L, 1, LOSS_T);
    guard(L);
    return u;
}
static int loss_coef(lua_State *L) {
    loss_ud *u = check_loss(L);
    lua_pushnumber(L, u->e->loss[u->idx].coef);
    return 1;
}
static int loss_name(lua_State *L) {
    loss_ud *u = check_loss(L);
    lua_pushstring(L, u->e->loss[u->idx].name);
    return 1;
}
static int loss_plugin(lua_State *L) {
    loss_ud *u = check_loss(L);
    lua_pushstring(L, u->e->loss[u->idx].plugin->name);
    return 1;
}
static int loss_set_coef(lua_State *L) {
    loss_ud *u = check_loss(L);
    ml_loss_slot *s = &u->e->loss[u->idx];
    const char *field = lua_pushfstring(L, "exp.losses['%s'].coef", s->name);
    double v = set_number(L, field);
    if (v < 0) return set_error(L, field, lua_pushfstring(L, "must be >= 0, got %f", v));
    s->coef = v;
    return 0;
}

static int loss_tostring(lua_State *L) {
    loss_ud *u = luaL_checkudata(L, 1, LOSS_T);
    lua_pushfstring(L, "loss '%s' (coef %f)", u->e->loss[u->idx].name, u->e->loss[u->idx].coef);
    return 1;
}

static const luaL_Reg loss_getters[] = {{"coef", loss_coef}, {"name", loss_name}, {"plugin", loss_plugin}, {NULL, NULL}};
static const luaL_Reg loss_setters[] = {{"coef", loss_set_coef}, {NULL, NULL}};
static const class_def loss_class = {LOSS_T, "loss", loss_getters, loss_setters, NULL, loss_tostring,
                                     "only coef can be set", 1};

/* ---------------------------------------------------------------- exp.optim */


static ml_experiment *check_optim(lua_State *L) {
    ml_experiment **p = luaL_checkudata(L, 1, OPTIM_T);
    guard(L);
    return *p;
}

/* The value at stack index 3 for the schema setting `key`, checked by the rule the YAML
   is checked by (io/config.h, ml_config_key_spec): "bad value for exp.optim.lr (must be in
   (0, 10], got 20)". */
static double set_setting(lua_State *L, const char *key, const char *field) {
    ml_scalar_spec sp;
    if (ml_config_key_spec(key, &sp)) return core_error(L);
    double v = set_number(L, field);
    char text[48];
    ml_scalar_fmt_num(v, text, sizeof text);
    if (ml_scalar_check(&sp, text, 0, NULL, NULL, 0) != ML_SC_OK) set_error(L, field, ml_error());
    return v;
}

/* the optimizer's settings by name (the getter and setter tables hold these names) */
static const struct { const char *name; size_t off; } optim_settings[] = {
    {"lr", offsetof(ml_optim, lr)},       {"beta1", offsetof(ml_optim, beta1)},
    {"beta2", offsetof(ml_optim, beta2)}, {"eps", offsetof(ml_optim, eps)},
    {"weight_decay", offsetof(ml_optim, weight_decay)}, {"momentum", offsetof(ml_optim, momentum)}};

static float *optim_field(ml_optim *o, const char *k) {
    for (size_t i = 0; i < sizeof optim_settings / sizeof *optim_settings; i++)
        if (!strcmp(k, optim_settings[i].name)) return (float *)((char *)o + optim_settings[i].off);
    return &o->lr; /* unreachable: only registered names get here */
}

static int optim_get(lua_State *L) {
    ml_experiment *e = check_optim(L);
    lua_pushnumber(L, *optim_field(&e->opt, lua_tostring(L, 2)));
    return 1;
}

static int optim_set(lua_State *L) {
    ml_experiment *e = check_optim(L);
    const char *k = lua_tostring(L, 2);
    char key[32], field[48];
    snprintf(key, sizeof key, "optim.%s", k);
    snprintf(field, sizeof field, "exp.optim.%s", k);
    *optim_field(&e->opt, k) = (float)set_setting(L, key, field);
    return 0;
}

static int optim_name(lua_State *L) {
    lua_pushstring(L, ml_optim_kind_name(check_optim(L)->opt.kind));
    return 1;
}

static int optim_steps(lua_State *L) {
    lua_pushinteger(L, check_optim(L)->opt.t);
    return 1;
}

static int optim_groups(lua_State *L) {
    check_optim(L);
    lua_getiuservalue(L, 1, 1);
    return 1;
}

static int optim_tostring(lua_State *L) {
    ml_experiment *e = *(ml_experiment **)luaL_checkudata(L, 1, OPTIM_T);
    lua_pushfstring(L, "optimizer %s (lr %f, %d groups)", ml_optim_kind_name(e->opt.kind), (double)e->opt.lr,
                    e->opt.n_groups);
    return 1;
}

static const luaL_Reg optim_getters[] = {
    {"name", optim_name}, {"steps", optim_steps}, {"lr", optim_get}, {"beta1", optim_get}, {"beta2", optim_get},
    {"eps", optim_get}, {"weight_decay", optim_get}, {"momentum", optim_get}, {"groups", optim_groups}, {NULL, NULL}};
static const luaL_Reg optim_setters[] = {{"lr", optim_set},  {"beta1", optim_set},        {"beta2", optim_set},
                                         {"eps", optim_set}, {"weight_decay", optim_set}, {"momentum", optim_set},
                                         {NULL, NULL}};
static const class_def optim_class = {OPTIM_T, "exp.optim", optim_getters, optim_setters, NULL, optim_tostring,
                                      "settable: lr, beta1, beta2, eps, weight_decay, momentum", 0};

/* exp.optim.groups[name] */
typedef struct group_ud { ml_experiment *e; int g; } group_ud;

static group_ud *check_group(lua_State *L) {
    group_ud *u = luaL_checkudata(L, 1, GROUP_T);
    guard(L);
    return u;
}

/* Freezes or unfreezes a group (g >= 0) or the tensors a pattern matches; records a
   "frozen" / "unfrozen" event when any tensor changed. Returns the tensors matched. */
static int set_frozen(lua_State *L, ml_experiment *e, int g, const char *pattern, int frozen) {
    int changed = 0, matched = ml_optim_set_frozen(&e->opt, &e->model->P, g, pattern, frozen, &changed);
    if (!changed) return matched;
    ml_json j;
    ml_json_begin(&j);
    ml_json_str(&j, g >= 0 ? "group" : "pattern", g >= 0 ? e->opt.group[g].name : pattern);
    ml_json_int(&j, "tensors", changed);
    int rc = ml_exp_event_json(e, frozen ? "frozen" : "unfrozen", &j);
    ml_json_free(&j);
    if (rc) core_error(L);
    return matched;
}

static int group_name(lua_State *L) {
    group_ud *u = check_group(L);
    lua_pushstring(L, u->e->opt.group[u->g].name);
    return 1;
}
static int group_match(lua_State *L) {
    group_ud *u = check_group(L);
    lua_pushstring(L, u->e->opt.group[u->g].match);
    return 1;
}
/* the value the group's tensors are updated with (its own or the base one) */
static int group_lr(lua_State *L) {
    group_ud *u = check_group(L);
    const ml_optim *o = &u->e->opt;
    lua_pushnumber(L, isnan(o->group[u->g].lr) ? o->lr : o->group[u->g].lr);
    return 1;
}
static int group_wd(lua_State *L) {
    group_ud *u = check_group(L);
    const ml_optim *o = &u->e->opt;
    lua_pushnumber(L, isnan(o->group[u->g].weight_decay) ? o->weight_decay : o->group[u->g].weight_decay);
    return 1;
}
static int group_frozen(lua_State *L) {
    group_ud *u = check_group(L);
    lua_pushboolean(L, u->e->opt.group[u->g].frozen);
    return 1;
}
static int group_tensors(lua_State *L) {
    group_ud *u = check_group(L);
    const ml_params *P = &u->e->model->P;
    int n = 0;
    for (int k = 0; k < P->count; k++) n += !P->t[k].removed && P->t[k].group == u->g;
    lua_pushinteger(L, n);
    return 1;
}
/* lr and weight_decay: a number by optim.groups' rule, or nil to follow exp.optim's */
static int group_set(lua_State *L) {
    group_ud *u = check_group(L);
    const char *k = lua_tostring(L, 2);
    ml_optim_group *g = &u->e->opt.group[u->g];
    float *dst = !strcmp(k, "lr") ? &g->lr : &g->weight_decay;
    if (lua_isnil(L, 3)) {
        *dst = NAN;
        return 0;
    }
    char key[48];
    snprintf(key, sizeof key, "optim.groups.*.%s", k);
    *dst = (float)set_setting(L, key, lua_pushfstring(L, "exp.optim.groups.%s.%s", g->name, k));
    return 0;
}
static int group_set_frozen(lua_State *L) {
    group_ud *u = check_group(L);
    if (lua_type(L, 3) != LUA_TBOOLEAN)
        return set_error(L, lua_pushfstring(L, "exp.optim.groups.%s.frozen", u->e->opt.group[u->g].name),
                         lua_pushfstring(L, "boolean expected, got %s", luaL_typename(L, 3)));
    set_frozen(L, u->e, u->g, NULL, lua_toboolean(L, 3));
    return 0;
}
static int group_tostring(lua_State *L) {
    group_ud *u = luaL_checkudata(L, 1, GROUP_T);
    const ml_optim_group *g = &u->e->opt.group[u->g];
    lua_pushfstring(L, "parameter group '%s' (%s%s)", g->name, g->match, g->frozen ? ", frozen" : "");
    return 1;
}

static const luaL_Reg group_getters[] = {{"name", group_name},     {"match", group_match},   {"lr", group_lr},
                                         {"weight_decay", group_wd}, {"frozen", group_frozen}, {"tensors", group_tensors},
                                         {NULL, NULL}};
static const luaL_Reg group_setters[] = {
    {"lr", group_set}, {"weight_decay", group_set}, {"frozen", group_set_frozen}, {NULL, NULL}};
static const class_def group_class = {GROUP_T, "parameter group", group_getters, group_setters, NULL, group_tostring,
                                      "settable: lr, weight_decay (nil: exp.optim's), frozen", 1};

/* exp:freeze(target), exp:unfreeze(target): a group's name, else a pattern on tensor names */
static int freeze(lua_State *L, int frozen) {
    ml_experiment *e = check_exp(L);
    size_t n;
    const char *target = luaL_checklstring(L, 2, &n);
    luaL_argcheck(L, n >= 1 && n <= ML_GLOB_MAX && strlen(target) == n, 2,
                  "a group name or a pattern of 1..127 bytes expected");
    int g = ml_optim_find_group(&e->opt, target);
    if (g < 0 && ml_glob_check(target)) return luaL_argerror(L, 2, ml_error());
    int matched = set_frozen(L, e, g, target, frozen);
    if (g < 0 && !matched)
        return luaL_argerror(L, 2, lua_pushfstring(L, "no parameter group is named '%s' and no parameter tensor's "
                                                      "name matches it (hint: exp:param_names())", target));
    lua_pushinteger(L, matched);
    return 1;
}
static int l_freeze(lua_State *L) { return freeze(L, 1); }
static int l_unfreeze(lua_State *L) { return freeze(L, 0); }

/* The optional pattern at stack index 2 (NULL: every tensor). */
static const char *opt_pattern(lua_State *L) {
    if (lua_isnoneornil(L, 2)) return NULL;
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);
    if (strlen(p) != n) luaL_argerror(L, 2, "a pattern without NUL bytes expected");
    if (ml_glob_check(p)) luaL_argerror(L, 2, ml_error());
    return p;
}

/* exp:param_names([pattern]) -> {name, ...} in the parameter block's order */
static int l_param_names(lua_State *L) {
    ml_experiment *e = check_exp(L);
    const char *pat = opt_pattern(L);
    const ml_params *P = &e->model->P;
    lua_newtable(L);
    lua_Integer n = 0;
    for (int k = 0; k < P->n_live; k++) {
        loop_check(L, k);
        const ml_tensor *t = &P->t[P->order[k]];
        if (pat && !ml_glob_match(pat, t->name)) continue;
        lua_pushstring(L, t->name);
        lua_rawseti(L, -2, ++n);
    }
    return 1;
}

/* exp:params([pattern]) -> {{name, shape, numel, group, frozen, lr, weight_decay, step}, ...} */
static int l_params(lua_State *L) {
    ml_experiment *e = check_exp(L);
    const char *pat = opt_pattern(L);
    const ml_params *P = &e->model->P;
    const ml_optim *o = &e->opt;
    lua_newtable(L);
    lua_Integer n = 0;
    for (int k = 0; k < P->n_live; k++) {
        loop_check(L, k);
        const ml_tensor *t = &P->t[P->order[k]];
        if (pat && !ml_glob_match(pat, t->name)) continue;
        lua_createtable(L, 0, 8);
        lua_pushstring(L, t->name);
        lua_setfield(L, -2, "name");
        lua_createtable(L, t->ndim, 0);
        for (int d = 0; d < t->ndim; d++) {
            lua_pushinteger(L, t->shape[d]);
            lua_rawseti(L, -2, d + 1);
        }
        lua_setfield(L, -2, "shape");
        set_int(L, "numel", (lua_Integer)t->n);
        if (t->group >= 0) {
            lua_pushstring(L, o->group[t->group].name);
            lua_setfield(L, -2, "group");
        }
        lua_pushboolean(L, t->frozen);
        lua_setfield(L, -2, "frozen");
        set_num(L, "lr", ml_optim_tensor_lr(o, t));
        set_num(L, "weight_decay", ml_optim_tensor_wd(o, t));
        set_int(L, "step", t->step);
        lua_rawseti(L, -2, ++n);
    }
    return 1;
}

/* ----------------------------------------------------------------- schedule */

/*
 * exp.schedule:decide() -> nil, or {[layer] = experts to add} as it always was, with two more
 * fields a script reads by name (they live in the table's metatable, so pairs and ipairs see
 * the layer numbers alone, as older scripts expect): d.remove[layer] = {ids...} for layers
 * with removals, d.layers[layer] = {add = n, remove = {ids...}} for every layer. Removal ids
 * count from 0 and name the experts before the decision; carry out removals first.
 */
static int l_decide(lua_State *L) {
    ml_experiment **p = luaL_checkudata(L, 1, SCHED_T);
    guard(L);
    ml_experiment *e = *p;
    const int nl = e->model->L;
    size_t total = 0;
    for (int l = 0; l < nl; l++) total += (size_t)e->model->moe[l]->N;
    int *buf = lua_newuserdatauv(L, (total + 2 * (size_t)nl) * sizeof(int) + (size_t)nl * sizeof(int *), 0);
    int **rem = (int **)(void *)buf, *add = (int *)(rem + nl), *nrem = add + nl, *ids = nrem + nl;
    for (int l = 0; l < nl; l++) {
        rem[l] = ids;
        ids += e->model->moe[l]->N;
    }
    if (ml_exp_schedule_decide(e, add, rem, nrem)) return core_error(L);
    int any = 0;
    for (int l = 0; l < nl; l++) any |= add[l] > 0 || nrem[l] > 0;
    if (!any) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, nl, 0); /* the result */
    for (int l = 0; l < nl; l++) {
        lua_pushinteger(L, add[l]);
        lua_rawseti(L, -2, l + 1);
    }
    lua_createtable(L, 0, 1); /* its metatable */
    lua_createtable(L, 0, 2); /* __index: remove, layers */
    lua_createtable(L, 0, 0);
    lua_createtable(L, nl, 0);
    for (int l = 0; l < nl; l++) {
        lua_createtable(L, 0, 2);
        lua_pushinteger(L, add[l]);
        lua_setfield(L, -2, "add");
        lua_createtable(L, nrem[l], 0);
        for (int i = 0; i < nrem[l]; i++) {
            lua_pushinteger(L, rem[l][i]);
            lua_rawseti(L, -2, i + 1);
        }
        if (nrem[l] > 0) {
            lua_pushvalue(L, -1);
            lua_rawseti(L, -5, l + 1); /* remove[l] */
        }
        lua_setfield(L, -2, "remove");
        lua_rawseti(L, -2, l + 1); /* layers[l] */
    }
    lua_setfield(L, -3, "layers");
    lua_setfield(L, -2, "remove");
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    return 1;
}

static int sched_name(lua_State *L) {
    ml_experiment **p = luaL_checkudata(L, 1, SCHED_T);
    guard(L);
    lua_pushstring(L, (*p)->sched.plugin->name);
    return 1;
}

static const luaL_Reg sched_getters[] = {{"name", sched_name}, {NULL, NULL}};
static const luaL_Reg sched_methods[] = {{"decide", l_decide}, {NULL, NULL}};
static const class_def sched_class = {SCHED_T, "schedule", sched_getters, NULL, sched_methods, NULL, NULL, 0};

/* ------------------------------------------------------------------ moelab */

static int l_warn(lua_State *L) {
    const char *msg = luaL_checkstring(L, 1);
    ml_lua *l = getself(L);
    ml_log(ML_LOG_WARN, "%s", msg);
    if (l->e && l->e->res && !l->e->finished) {
        ml_json j;
        ml_json_begin(&j);
        ml_json_str(&j, "message", msg);
        int rc = ml_exp_event_json(l->e, "warning", &j);
        ml_json_free(&j);
        if (rc) return core_error(L);
    }
    return 0;
}

static int l_print(lua_State *L) {
    int n = lua_gettop(L);
    for (int i = 1; i <= n; i++) {
        fputs(luaL_tolstring(L, i, NULL), stderr);
        lua_pop(L, 1);
        if (i < n) fputc('\t', stderr);
    }
    fputc('\n', stderr);
    return 0;
}

/* ------------------------------------------------------------------ sandbox */

static int call_orig(lua_State *L, const char *key) {
    lua_getfield(L, LUA_REGISTRYINDEX, key);
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* Files a script may hold open at once: the host needs descriptors of its own (checkpoints,
 * results, the crash summary), and a script that opens files in a loop must not take them. */
#define LUA_MAX_OPEN_FILES 128

static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

static int l_io_open(lua_State *L) {
    ml_lua *l = getself(L);
    int now = l->fd_base >= 0 ? count_fds() : -1;
    if (now >= 0 && now - l->fd_base >= LUA_MAX_OPEN_FILES)
        return luaL_error(L, "io.open: the script holds %d open files, at most %d are allowed; close files it no "
                          "longer needs (f:close())", now - l->fd_base, LUA_MAX_OPEN_FILES);
    const char *path = luaL_checkstring(L, 1);
    const char *mode = luaL_optstring(L, 2, "r");
    int write = strpbrk(mode, "wa+") != NULL;
    refresh_run_dir(l);
    if (!allowed(l, path, write))
        return luaL_error(L, "io.open('%s', '%s'): not allowed by the sandbox; %s; hint: %s", path, mode,
                          write ? WRITE_RULE : READ_RULE,
                          write ? "write into exp.files_dir" : "add the path to lua.allow_read");
    return call_orig(L, ORIG_OPEN);
}

/* io.close() without a file would close stdout */
static int l_io_close(lua_State *L) {
    luaL_checkudata(L, 1, LUA_FILEHANDLE);
    lua_settop(L, 1);
    return call_orig(L, ORIG_IOCLOSE);
}

/* load() in text mode only: no bytecode, also not from a reader function */
static int l_load(lua_State *L) {
    int n = lua_gettop(L); /* chunk [, chunkname [, mode [, env]]]: env's presence matters */
    luaL_checkany(L, 1);
    if (n < 3) lua_settop(L, 3);
    lua_pushliteral(L, "t");
    lua_replace(L, 3);
    int r = call_orig(L, ORIG_LOAD);
    /* a reader function runs inside load's protected parser: it could swallow a stop */
    if (due_stop(getself(L), 0)) return stop_raise(L, getself(L));
    return r;
}

static int load_text_file(lua_State *L, const char *path) {
    if (!may_read(L, path)) { /* an error message, like a file that cannot be opened */
        lua_pushfstring(L, "loading '%s' is not allowed by the sandbox; " READ_RULE, path);
        return LUA_ERRFILE;
    }
    return luaL_loadfilex(L, path, "t");
}

static int l_dofile(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    lua_settop(L, 1);
    if (load_text_file(L, path) != LUA_OK) return lua_error(L);
    lua_call(L, 0, LUA_MULTRET);
    return lua_gettop(L) - 1;
}

/* loadfile(path [, mode [, env]]): mode is always "t" */
static int l_loadfile(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int env = !lua_isnone(L, 3);
    lua_settop(L, 3);
    if (load_text_file(L, path) != LUA_OK) {
        luaL_pushfail(L);
        lua_insert(L, -2);
        return 2;
    }
    if (env) {
        lua_pushvalue(L, 3);
        if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
    }
    return 1;
}

/* require(name): package.loaded, else name.lua (dots become '/') from the script's directory
 * and scripts/lib, text only. No package.searchers, preload, path or C modules. */
static int l_require(lua_State *L) {
    ml_lua *l = getself(L);
    const char *name = luaL_checkstring(L, 1);
    lua_settop(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, LOADED);
    if (lua_getfield(L, 2, name) != LUA_TNIL) return 1;
    lua_pop(L, 1);
    char rel[PATH_MAX];
    if (snprintf(rel, sizeof rel, "%s", name) >= (int)sizeof rel || strstr(rel, "..") || rel[0] == '/')
        return luaL_error(L, "module '%s' not found (a module name is a dotted path inside the script's directory or scripts/lib)", name);
    for (char *c = rel; *c; c++)
        if (*c == '.') *c = '/';
    const char *dirs[2] = {l->script_dir, l->lib_dir};
    luaL_Buffer tried;
    luaL_buffinit(L, &tried);
    for (int i = 0; i < 2; i++) {
        if (!dirs[i][0]) continue;
        char path[PATH_MAX + 8];
        snprintf(path, sizeof path, "%s/%s.lua", dirs[i], rel);
        FILE *f = fopen(path, "r");
        if (!f || !allowed(l, path, 0)) {
            if (f) fclose(f);
            lua_pushfstring(L, "\n\tno file '%s'", path);
            luaL_addvalue(&tried);
            continue;
        }
        fclose(f);
        if (luaL_loadfilex(L, path, "t") != LUA_OK)
            return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, path, lua_tostring(L, -1));
        lua_pushvalue(L, 1);
        lua_pushstring(L, path);
        lua_call(L, 2, 1);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushboolean(L, 1);
        }
        lua_pushvalue(L, -1);
        lua_setfield(L, 2, name);
        lua_pushstring(L, path);
        return 2;
    }
    luaL_pushresult(&tried);
    return luaL_error(L, "module '%s' not found:%s", name, lua_tostring(L, -1));
}

/* pcall/xpcall as in lbaselib (yieldable through lua_pcallk), except that a stop (interrupt,
 * timeout) is re-raised instead of returned: a script cannot swallow it. */
static int finish_pcall(lua_State *L, int status, lua_KContext extra) {
    ml_lua *l = getself(L);
    if (status != LUA_OK && status != LUA_YIELD) {
        if (due_stop(l, 0)) return stop_raise(L, l);
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - (int)extra;
}

static int l_pcall(lua_State *L) {
    luaL_checkany(L, 1);
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    int status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, finish_pcall);
    return finish_pcall(L, status, 0);
}

static int l_xpcall(lua_State *L) {
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushboolean(L, 1);
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2);
    int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, finish_pcall);
    return finish_pcall(L, status, 2);
}

/* coroutine.resume/close return a coroutine's error instead of raising it */
static int l_co_resume(lua_State *L) {
    int r = call_orig(L, ORIG_RESUME);
    if (due_stop(getself(L), 0)) return stop_raise(L, getself(L));
    return r;
}

static int l_co_close(lua_State *L) {
    int r = call_orig(L, ORIG_CLOSE);
    if (due_stop(getself(L), 0)) return stop_raise(L, getself(L));
    return r;
}

/* A finalizer runs with hooks off (lgc.c GCTM), so a looping __gc could never be stopped:
 * tables cannot get one. Lua marks an object for finalization only when its metatable has
 * __gc at setmetatable time, so checking here is enough. */
static int l_setmetatable(lua_State *L) {
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (t == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: __gc metamethods are not allowed in the sandbox "
                                 "(a finalizer cannot be interrupted); hint: use a to-be-closed variable (<close>)");
        lua_pop(L, 1);
    }
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL) return luaL_error(L, "cannot change a protected metatable");
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

static int l_collectgarbage(lua_State *L) {
    const char *opt = luaL_optstring(L, 1, "collect");
    if (strcmp(opt, "collect") && strcmp(opt, "count") && strcmp(opt, "step"))
        return luaL_argerror(L, 1, "the sandbox allows only \"collect\", \"count\" and \"step\"");
    return call_orig(L, ORIG_GC);
}

/* table.move is a C loop that runs no Lua code on plain tables, so the hook cannot stop it:
 * a range of 2^50 nils would never end. No more elements than the memory cap could hold. */
static int l_table_move(lua_State *L) {
    ml_lua *l = getself(L);
    lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
    if (e >= f && (lua_Unsigned)e - (lua_Unsigned)f >= (lua_Unsigned)(l->mem_limit / 16))
        return luaL_error(L, "table.move: %I elements is more than lua.memory_mb could ever hold",
                          (lua_Integer)((lua_Unsigned)e - (lua_Unsigned)f + 1));
    return call_orig(L, ORIG_MOVE);
}

/* table.insert/remove/concat/sort loop in C over a length a script controls (a __len, or the
 * border of a sparse table): the length is asked once, bounded like table.move, and the
 * loops moelab runs itself check for a stop every 1024 elements, since the hook does not
 * run inside them. */
static lua_Integer max_elems(lua_State *L) { return (lua_Integer)(getself(L)->mem_limit / 16); }

static void loop_check(lua_State *L, lua_Integer i) {
    if ((i & 1023) == 0 && due_stop(getself(L), 0)) stop_raise(L, getself(L));
}

static lua_Integer table_len(lua_State *L, const char *fn) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_len(L, 1);
    if (n > max_elems(L))
        luaL_error(L, "table.%s: a length of %I is more than lua.memory_mb could ever hold", fn, n);
    if (n < 0) luaL_error(L, "table.%s: the table's length is %I, expected >= 0", fn, n);
    return n;
}

/* as ltablib.c's tinsert, with the length asked once */
static int l_table_insert(lua_State *L) {
    lua_Integer e = table_len(L, "insert") + 1, pos;
    switch (lua_gettop(L)) {
    case 2: pos = e; break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
        for (lua_Integer i = e; i > pos; i--) {
            loop_check(L, i);
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        break;
    default: return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

static int l_table_remove(lua_State *L) {
    lua_Integer size = table_len(L, "remove");
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size) luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2, "position out of bounds");
    lua_geti(L, 1, pos);
    for (; pos < size; pos++) {
        loop_check(L, pos);
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

/* the original with an explicit, bounded range (then it does not ask __len again) */
static int l_table_concat(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    lua_Integer j = lua_isnoneornil(L, 4) ? luaL_len(L, 1) : luaL_checkinteger(L, 4);
    if (j >= i && (lua_Unsigned)j - (lua_Unsigned)i >= (lua_Unsigned)max_elems(L))
        return luaL_error(L, "table.concat: %I elements is more than lua.memory_mb could ever hold",
                          (lua_Integer)((lua_Unsigned)j - (lua_Unsigned)i + 1));
    lua_settop(L, 2);
    lua_pushinteger(L, i);
    lua_pushinteger(L, j);
    return call_orig(L, ORIG_CONCAT);
}

/* A plain table's length is backed by memory; a table with a metatable (a __len, an __index
 * written in C) is copied into a plain one, sorted there and written back. */
static int l_table_sort(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!lua_getmetatable(L, 1)) return call_orig(L, ORIG_SORT);
    lua_pop(L, 1);
    lua_Integer n = table_len(L, "sort");
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    if (n < 2) return 0;
    lua_createtable(L, (int)n, 0); /* n <= memory cap / 16 < INT_MAX */
    for (lua_Integer i = 1; i <= n; i++) {
        loop_check(L, i);
        lua_geti(L, 1, i);
        lua_rawseti(L, 3, i);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, ORIG_SORT);
    lua_pushvalue(L, 3);
    lua_pushvalue(L, 2);
    lua_call(L, 2, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        loop_check(L, i);
        lua_rawgeti(L, 3, i);
        lua_seti(L, 1, i);
    }
    return 0;
}

static int l_getenv(lua_State *L) {
    ml_lua *l = getself(L);
    const char *name = luaL_checkstring(L, 1);
    for (int i = 0; i < l->n_env; i++)
        if (strcmp(l->env[i], name) == 0) {
            lua_pushstring(L, getenv(name));
            return 1;
        }
    return luaL_error(L, "os.getenv('%s'): not allowed by the sandbox; hint: list the variable in lua.allow_env", name);
}

/* Moves the allowed fields of the table at src into the table at dst (names: NULL-terminated). */
static void copy_fields(lua_State *L, int src, int dst, const char *const *names) {
    src = lua_absindex(L, src);
    dst = lua_absindex(L, dst);
    for (int i = 0; names[i]; i++) {
        lua_getfield(L, src, names[i]);
        lua_setfield(L, dst, names[i]);
    }
}

/* Calls a library's opener without registering it anywhere and leaves its table on the stack. */
static void open_lib(lua_State *L, lua_CFunction opener, const char *name) {
    lua_pushcfunction(L, opener);
    lua_pushstring(L, name);
    lua_call(L, 1, 1);
}

static void stash(lua_State *L, int t, const char *field, const char *key) {
    lua_getfield(L, t, field);
    lua_setfield(L, LUA_REGISTRYINDEX, key);
}

static void set_fn(lua_State *L, const char *name, lua_CFunction f) {
    lua_pushcfunction(L, f);
    lua_setfield(L, -2, name);
}

/* The library a script sees, built from an allow-list: globals, package.loaded and the string
 * metatable hold only what is listed here, and the originals of wrapped functions sit in the
 * registry. The debug and package libraries are never opened. */
static void sandbox(lua_State *L) {
    static const char *const base_ok[] = {"assert", "error", "getmetatable", "ipairs", "next", "pairs",
                                          "rawequal", "rawget", "rawlen", "rawset", "select", "tonumber",
                                          "tostring", "type", "_VERSION", NULL};
    static const char *const string_ok[] = {"byte", "char", "find", "format", "gmatch", "gsub", "len",
                                            "lower", "match", "rep", "reverse", "sub", "upper", "pack",
                                            "packsize", "unpack", NULL};
    static const char *const table_ok[] = {"concat", "insert", "move", "pack", "remove", "sort", "unpack", NULL};
    static const char *const math_ok[] = {"abs", "acos", "asin", "atan", "ceil", "cos", "deg", "exp", "floor",
                                          "fmod", "huge", "log", "max", "maxinteger", "min", "mininteger",
                                          "modf", "pi", "rad", "random", "randomseed", "sin", "sqrt", "tan",
                                          "tointeger", "type", "ult", NULL};
    static const char *const utf8_ok[] = {"char", "charpattern", "codes", "codepoint", "len", "offset", NULL};
    static const char *const co_ok[] = {"create", "isyieldable", "running", "status", "wrap", "yield", NULL};
    static const char *const os_ok[] = {"clock", "date", "difftime", "time", NULL};
    static const char *const io_ok[] = {"type", "write", NULL};

    lua_newtable(L); /* package.loaded, also require's cache */
    int loaded = lua_gettop(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, LOADED);
    lua_pushvalue(L, -1); /* lauxlib names functions in messages from here ("io.open") */
    lua_setfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);

    /* base: luaopen_base fills the global table; keep the listed names, drop the rest */
    open_lib(L, luaopen_base, "_G");
    int g = lua_gettop(L);
    stash(L, g, "load", ORIG_LOAD);
    stash(L, g, "collectgarbage", ORIG_GC);
    lua_newtable(L);
    copy_fields(L, g, -1, base_ok);
    lua_pushnil(L);
    while (lua_next(L, g)) { /* clearing existing fields during a traversal is allowed */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, g);
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, g);
    }
    lua_pop(L, 1);
    lua_pushvalue(L, g);
    lua_setfield(L, g, "_G");
    set_fn(L, "setmetatable", l_setmetatable);
    set_fn(L, "pcall", l_pcall);
    set_fn(L, "xpcall", l_xpcall);
    set_fn(L, "collectgarbage", l_collectgarbage);
    set_fn(L, "load", l_load);
    set_fn(L, "loadfile", l_loadfile);
    set_fn(L, "dofile", l_dofile);
    set_fn(L, "print", l_print);
    set_fn(L, "require", l_require);
    lua_pushvalue(L, g);
    lua_setfield(L, loaded, "_G");

    struct { const char *name; lua_CFunction open; const char *const *ok; } libs[] = {
        {"string", luaopen_string, string_ok}, {"table", luaopen_table, table_ok},
        {"math", luaopen_math, math_ok},       {"utf8", luaopen_utf8, utf8_ok},
        {"coroutine", luaopen_coroutine, co_ok}, {"os", luaopen_os, os_ok},
        {"io", luaopen_io, io_ok}};
    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        open_lib(L, libs[i].open, libs[i].name);
        lua_newtable(L);
        copy_fields(L, -2, -1, libs[i].ok);
        if (!strcmp(libs[i].name, "coroutine")) {
            stash(L, -2, "resume", ORIG_RESUME);
            stash(L, -2, "close", ORIG_CLOSE);
            set_fn(L, "resume", l_co_resume);
            set_fn(L, "close", l_co_close);
        } else if (!strcmp(libs[i].name, "table")) {
            stash(L, -2, "move", ORIG_MOVE);
            stash(L, -2, "concat", ORIG_CONCAT);
            stash(L, -2, "sort", ORIG_SORT);
            set_fn(L, "move", l_table_move);
            set_fn(L, "insert", l_table_insert);
            set_fn(L, "remove", l_table_remove);
            set_fn(L, "concat", l_table_concat);
            set_fn(L, "sort", l_table_sort);
        } else if (!strcmp(libs[i].name, "os")) {
            set_fn(L, "getenv", l_getenv);
        } else if (!strcmp(libs[i].name, "io")) {
            stash(L, -2, "open", ORIG_OPEN);
            stash(L, -2, "close", ORIG_IOCLOSE);
            set_fn(L, "open", l_io_open);
            set_fn(L, "close", l_io_close);
        } else if (!strcmp(libs[i].name, "string")) {
            /* the string metatable's __index was the full library (string.dump included) */
            lua_pushliteral(L, "");
            lua_getmetatable(L, -1);
            lua_pushvalue(L, -3);
            lua_setfield(L, -2, "__index");
            lua_pushliteral(L, "string");
            lua_setfield(L, -2, "__metatable");
            lua_pop(L, 2);
        }
        lua_remove(L, -2);
        lua_pushvalue(L, -1);
        lua_setfield(L, loaded, libs[i].name);
        lua_setfield(L, g, libs[i].name);
    }
    /* files: the methods are safe (they act on an open file); hide the metatable */
    luaL_getmetatable(L, LUA_FILEHANDLE);
    lua_pushliteral(L, "FILE*");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);

    lua_createtable(L, 0, 1);
    lua_pushvalue(L, loaded);
    lua_setfield(L, -2, "loaded");
    lua_pushvalue(L, -1);
    lua_setfield(L, loaded, "package");
    lua_setfield(L, g, "package");
    lua_pop(L, 2);
}

/* ------------------------------------------------------------------ setup */

static int push_exp(lua_State *L, ml_experiment *e) {
    ml_experiment **p = lua_newuserdatauv(L, sizeof *p, 1);
    *p = e;
    luaL_setmetatable(L, EXP_T);
    lua_newtable(L); /* cached fields */
    push_node(L, ml_config_root(e->cfg));
    lua_setfield(L, -2, "config");
    lua_createtable(L, e->model->L, 0);
    for (int l = 0; l < e->model->L; l++) {
        moe_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
        u->e = e;
        u->layer = l;
        luaL_setmetatable(L, MOE_T);
        moe_ud *r = lua_newuserdatauv(L, sizeof *r, 0); /* its router */
        *r = *u;
        luaL_setmetatable(L, ROUTER_T);
        lua_setiuservalue(L, -2, 1);
        lua_rawseti(L, -2, l + 1);
    }
    lua_setfield(L, -2, "moe");
    lua_createtable(L, 0, e->n_losses);
    for (int i = 0; i < e->n_losses; i++) {
        loss_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
        u->e = e;
        u->idx = i;
        luaL_setmetatable(L, LOSS_T);
        lua_setfield(L, -2, e->loss[i].name);
    }
    lua_setfield(L, -2, "losses");
    ml_experiment **s = lua_newuserdatauv(L, sizeof *s, 0);
    *s = e;
    luaL_setmetatable(L, SCHED_T);
    lua_setfield(L, -2, "schedule");
    ml_experiment **o = lua_newuserdatauv(L, sizeof *o, 1);
    *o = e;
    luaL_setmetatable(L, OPTIM_T);
    lua_createtable(L, 0, e->opt.n_groups); /* exp.optim.groups */
    for (int g = 0; g < e->opt.n_groups; g++) {
        group_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
        u->e = e;
        u->g = g;
        luaL_setmetatable(L, GROUP_T);
        lua_setfield(L, -2, e->opt.group[g].name);
    }
    lua_setiuservalue(L, -2, 1);
    lua_setfield(L, -2, "optim");
    int rc = state_init(L, e);
    lua_setfield(L, -2, "state");
    lua_setiuservalue(L, -2, 1);
    return rc;
}

/* Realpaths of the config list `key` (entries that do not resolve grant nothing). */
static void read_list(const ml_config *cfg, const char *key, int resolve_paths, char ***out, int *n_out) {
    int n = ml_config_len(cfg, key);
    for (int i = 0; i < n; i++) {
        char item[96], rp[PATH_MAX];
        snprintf(item, sizeof item, "%s.%d", key, i);
        const char *v = ml_config_str(cfg, item, "");
        if (resolve_paths) {
            if (!realpath(v, rp)) continue;
            v = rp;
        }
        char **a = realloc(*out, (size_t)(*n_out + 1) * sizeof *a);
        if (!a) break;
        *out = a;
        if ((a[*n_out] = ml_strdup(v))) (*n_out)++;
    }
}

ml_lua *ml_lua_new(ml_experiment *e, const char *lib_dir) {
    ml_lua *l = ml_calloc(1, sizeof *l);
    if (!l) return NULL;
    l->e = e;
    l->fd_base = count_fds();
    l->mem_mb = e ? (int)ml_config_int(e->cfg, "lua.memory_mb", ML_LUA_DEFAULT_MEMORY_MB) : ML_LUA_DEFAULT_MEMORY_MB;
    l->mem_limit = (size_t)l->mem_mb * 1024 * 1024;
    l->timeout_s = e ? (int)ml_config_int(e->cfg, "lua.timeout_s", 0) : 0;
    l->L = lua_newstate(sb_alloc, l);
    if (!l->L) {
        free(l);
        ml_errorf("lua: cannot create a state (out of memory)");
        return NULL;
    }
    if (lib_dir && !realpath(lib_dir, l->lib_dir)) l->lib_dir[0] = 0;
    lua_State *L = l->L;
    *(ml_lua **)lua_getextraspace(L) = l; /* before any thread exists: every thread copies it */
    lua_atpanic(L, sb_panic);
    lua_setwarnf(L, sb_warn, l);
    sandbox(L);
    luaL_newmetatable(L, RO_T);
    lua_pushcfunction(L, ro_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, ro_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, ro_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pop(L, 1);
    luaL_newmetatable(L, HEALTH_T);
    lua_pushcfunction(L, health_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, health_close);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    static const class_def *const classes[] = {&exp_class, &moe_class,   &loss_class,  &sched_class,
                                               &optim_class, &group_class, &router_class};
    for (size_t i = 0; i < sizeof classes / sizeof *classes; i++) new_class(L, classes[i]);
    luaL_getmetatable(L, ROUTER_T);
    lua_pushcfunction(L, router_concat);
    lua_setfield(L, -2, "__concat");
    lua_pop(L, 1);
    /* moelab.* */
    lua_newtable(L);
    lua_pushcfunction(L, l_warn);
    lua_setfield(L, -2, "warn");
    lua_pushliteral(L, ML_VERSION);
    lua_setfield(L, -2, "version");
    ml_lua_open_standalone(L);
    lua_setglobal(L, "moelab");
    if (e) {
        if (push_exp(L, e)) {
            ml_lua_free(l);
            return NULL;
        }
        lua_setglobal(L, "exp");
        e->state_save = state_save;
        e->state_ctx = l;
        read_list(e->cfg, "lua.allow_read", 1, &l->allow, &l->n_allow);
        read_list(e->cfg, "lua.allow_env", 0, &l->env, &l->n_env);
    }
    /* inherited by every coroutine created from here on (lua_newthread copies the hook) */
    lua_sethook(L, sb_hook, LUA_MASKCOUNT, HOOK_COUNT);
    return l;
}

void ml_lua_free(ml_lua *l) {
    if (!l) return;
    if (l->e && l->e->state_ctx == l) l->e->state_save = NULL;
    if (l->L) {
        /* Scripts cannot set Lua finalizers, so nothing of theirs should run in lua_close;
         * should anything, it gets no more than one hook period. */
        l->closing = 1;
        lua_sethook(l->L, sb_hook, LUA_MASKCOUNT, HOOK_COUNT);
        lua_close(l->L);
    }
    for (int i = 0; i < l->n_allow; i++) free(l->allow[i]);
    free(l->allow);
    for (int i = 0; i < l->n_env; i++) free(l->env[i]);
    free(l->env);
    free(l);
}

int ml_lua_stop_reason(const ml_lua *l) { return l ? l->stop : ML_LUA_STOP_NONE; }

lua_State *ml_lua_state(ml_lua *l) { return l->L; }

int ml_lua_load(ml_lua *l, const char *script_path) {
    char rp[PATH_MAX];
    if (!realpath(script_path, rp))
        return ml_errorf("%s: cannot open script: %s", script_path, strerror(errno));
    char *slash = strrchr(rp, '/');
    if (slash) {
        *slash = 0;
        strcpy(l->script_dir, rp); /* same size */
    }
    /* chunk name "@path" makes messages read "path:LINE: msg" */
    int rc = luaL_loadfilex(l->L, script_path, "t");
    if (rc != LUA_OK) {
        ml_errorf("%s", lua_tostring(l->L, -1));
        lua_pop(l->L, 1);
        return ML_ERR;
    }
    l->loaded = 1;
    return ML_OK;
}

static int traceback(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int ml_lua_exec(ml_lua *l) {
    if (!l->loaded) return ml_errorf("lua: no script loaded");
    lua_State *L = l->L;
    refresh_run_dir(l);
    l->started = mono_now();
    lua_pushcfunction(L, traceback);
    lua_insert(L, -2);
    int rc = lua_pcall(L, 0, 0, -2);
    if (rc == LUA_OK && !l->stop) {
        lua_pop(L, 1);
        return ML_OK;
    }
    const char *msg = rc != LUA_OK ? lua_tostring(L, -1) : NULL;
    /* the cap's refusal surfaces as Lua's "not enough memory" (also when a script re-raised it) */
    if (!l->stop && l->mem_hit && (rc == LUA_ERRMEM || (msg && strstr(msg, "not enough memory"))))
        l->stop = ML_LUA_STOP_MEMORY;
    char buf[128];
    if (l->stop) ml_errorf("%s", stop_message(l, buf, sizeof buf));
    else ml_errorf("%s", msg ? msg : "(error object is not a string)");
    lua_settop(L, 0);
    return ML_ERR;
}

/* ------------------------------------------------- exp.state in checkpoints */
/*
 * exp.state is a plain Lua table the script owns; checkpoints carry it as JSON (metadata
 * "run.script_state") and a resumed run starts with it restored. Numbers keep their Lua
 * subtype (integers as integers, floats always with a '.' or exponent, ±inf as ±1e999;
 * NaN is refused), object keys are sorted so the same state gives the same bytes, and a
 * table is either a list (keys exactly 1..n) or a map with string keys.
 */

#define STATE_MAX_DEPTH 32
/* The serialised exp.state is bounded well below the checkpoint reader's 100 MB header limit,
 * so every checkpoint written can be read back; a bigger state fails save_checkpoint before
 * anything is written. */
#define STATE_MAX_BYTES (16u << 20)

typedef struct state_enc {
    ml_strbuf j;    /* the JSON text */
    int any;
    int seen;       /* stack index of the set of tables already saved */
    char path[256]; /* where in exp.state, for messages */
} state_enc;

/* Appends t unless the state already outgrew STATE_MAX_BYTES (state_encode reports it). */
static void state_put(ml_strbuf *b, const char *t) {
    if (b->len > STATE_MAX_BYTES) return;
    ml_strbuf_puts(b, t);
}

/* Appends str as a JSON string unless the state would outgrow STATE_MAX_BYTES (escapes
 * counted first, so a big string never reaches the buffer). */
static void state_string(lua_State *L, state_enc *s, const char *str) {
    size_t n = 2;
    for (const unsigned char *p = (const unsigned char *)str; *p; p++)
        n += strchr("\"\\\n\r\t\b\f", *p) ? 2 : (*p < 0x20 || *p == 0x7f) ? 6 : 1;
    if (n > STATE_MAX_BYTES || s->j.len > STATE_MAX_BYTES - n)
        luaL_error(L, "exp.state is larger than %d MB serialised (at exp.state%s); a checkpoint cannot hold it",
                   (int)(STATE_MAX_BYTES >> 20), s->path);
    ml_strbuf_json_string(&s->j, str);
}

static int str_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void state_value(lua_State *L, state_enc *s, int idx, int depth);

static void state_table(lua_State *L, state_enc *s, int idx, int depth) {
    idx = lua_absindex(L, idx);
    if (depth > STATE_MAX_DEPTH)
        luaL_error(L, "exp.state%s: nested deeper than %d tables (a cycle?)", s->path, STATE_MAX_DEPTH);
    /* Only raw access from here on: no metamethod (Lua code) may run while a checkpoint is
     * being built, and a table with a metatable would not mean what its raw contents say. */
    if (lua_getmetatable(L, idx))
        luaL_error(L, "exp.state%s: a table with a metatable cannot be saved; use plain tables", s->path);
    luaL_checkstack(L, 8, "exp.state");
    /* a tree, not a graph: a table reached twice would be saved (and restored) twice, so a
     * small shared state could decode into far more than it was */
    lua_pushvalue(L, idx);
    if (lua_rawget(L, s->seen) != LUA_TNIL)
        luaL_error(L, "exp.state%s: this table appears twice in exp.state; checkpoints hold trees (copy it)", s->path);
    lua_pop(L, 1);
    lua_pushvalue(L, idx);
    lua_pushboolean(L, 1);
    lua_rawset(L, s->seen);
    if (s->j.len > STATE_MAX_BYTES)
        luaL_error(L, "exp.state is larger than %d MB serialised; a checkpoint cannot hold it", (int)(STATE_MAX_BYTES >> 20));
    lua_Integer n = 0, ints = 0;
    int strs = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        n++;
        if (lua_type(L, -1) == LUA_TSTRING) {
            size_t kl;
            const char *ks = lua_tolstring(L, -1, &kl);
            if (strlen(ks) != kl) luaL_error(L, "exp.state%s: a key with a NUL byte cannot be saved", s->path);
            strs++;
        } else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) ints++;
        else luaL_error(L, "exp.state%s: a key of type %s; keys must be strings, or 1..n for a list", s->path, luaL_typename(L, -1));
    }
    size_t plen = strlen(s->path);
    if (ints && (strs || lua_rawlen(L, idx) != (size_t)n))
        luaL_error(L, "exp.state%s: a table must be a list (keys 1..n) or have string keys only", s->path);
    if (ints) {
        state_put(&s->j, "[");
        for (lua_Integer i = 1; i <= n; i++) {
            if (i > 1) state_put(&s->j, ",");
            snprintf(s->path + plen, sizeof s->path - plen, "[%lld]", (long long)i);
            lua_rawgeti(L, idx, i);
            state_value(L, s, -1, depth + 1);
            lua_pop(L, 1);
        }
        s->path[plen] = 0;
        state_put(&s->j, "]");
        return;
    }
    const char **keys = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *keys, 0); /* freed by the GC */
    int k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        keys[k++] = lua_tostring(L, -1); /* the strings stay alive in the table */
    }
    qsort(keys, (size_t)k, sizeof *keys, str_cmp);
    state_put(&s->j, "{");
    for (int i = 0; i < k; i++) {
        if (i) state_put(&s->j, ",");
        state_string(L, s, keys[i]);
        state_put(&s->j, ":");
        snprintf(s->path + plen, sizeof s->path - plen, ".%s", keys[i]);
        lua_pushstring(L, keys[i]); /* no NUL in keys: the same string */
        lua_rawget(L, idx);
        state_value(L, s, -1, depth + 1);
        lua_pop(L, 1);
    }
    s->path[plen] = 0;
    state_put(&s->j, "}");
    lua_pop(L, 1); /* keys */
}

static void state_value(lua_State *L, state_enc *s, int idx, int depth) {
    char num[64];
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN: state_put(&s->j, lua_toboolean(L, idx) ? "true" : "false"); break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx));
        } else {
            double v = lua_tonumber(L, idx);
            if (isnan(v)) luaL_error(L, "exp.state%s is NaN, which a checkpoint cannot hold", s->path);
            if (isinf(v)) snprintf(num, sizeof num, v > 0 ? "1e999" : "-1e999");
            else {
                snprintf(num, sizeof num, "%.17g", v);
                if (!strpbrk(num, ".e")) strcat(num, ".0");
            }
        }
        state_put(&s->j, num);
        break;
    case LUA_TSTRING: {
        size_t len;
        const char *str = lua_tolstring(L, idx, &len);
        if (strlen(str) != len) luaL_error(L, "exp.state%s: a string with a NUL byte cannot be saved", s->path);
        state_string(L, s, str);
        break;
    }
    case LUA_TTABLE: state_table(L, s, idx, depth); break;
    default:
        luaL_error(L, "exp.state%s is a %s; checkpoints hold numbers, strings, booleans and tables", s->path,
                   luaL_typename(L, idx));
    }
}

static int state_encode(lua_State *L) {
    state_enc *s = lua_touserdata(L, 1);
    lua_getglobal(L, "exp");
    if (!luaL_testudata(L, -1, EXP_T)) return 0;
    lua_getiuservalue(L, -1, 1);
    lua_getfield(L, -1, "state");
    if (lua_isnil(L, -1)) return 0;
    s->any = 1;
    int top = lua_gettop(L);
    if (lua_type(L, top) != LUA_TTABLE)
        return luaL_error(L, "exp.state is a %s; it must be a table with string keys", luaL_typename(L, top));
    lua_newtable(L);
    s->seen = lua_gettop(L);
    lua_Integer n = 0;
    lua_pushnil(L);
    while (lua_next(L, top)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) n++;
    }
    if (n) return luaL_error(L, "exp.state must be a table with string keys (a list, or a key that is not a string, "
                             "cannot be restored as exp.state)");
    state_value(L, s, top, 0);
    return 0;
}

/* ml_state_save_fn: exp.state as JSON (NULL when there is none). */
static int state_save(void *ctx, char **json) {
    ml_lua *l = ctx;
    lua_State *L = l->L;
    *json = NULL;
    state_enc s;
    memset(&s, 0, sizeof s);
    lua_pushcfunction(L, state_encode);
    lua_pushlightuserdata(L, &s);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        ml_errorf("%s", lua_tostring(L, -1));
        lua_pop(L, 1);
        free(s.j.buf);
        return ML_ERR;
    }
    if (!s.any) {
        free(s.j.buf);
        return ML_OK; /* no state */
    }
    if (s.j.oom) return ml_errorf("exp.state: out of memory");
    if (s.j.len > STATE_MAX_BYTES) {
        free(s.j.buf);
        return ml_errorf("exp.state is larger than %d MB serialised; a checkpoint cannot hold it (the checkpoint "
                         "was not written)", (int)(STATE_MAX_BYTES >> 20));
    }
    ml_jv *v = ml_jv_parse(s.j.buf, s.j.len); /* e.g. invalid UTF-8 in a string */
    if (!v) {
        ml_error_prefix("exp.state cannot be saved as JSON");
        free(s.j.buf);
        return ML_ERR;
    }
    ml_jv_free(v);
    *json = s.j.buf;
    return ML_OK;
}

/* Runs protected (state_init): a checkpoint's state nested deeper than the encoder allows is
 * refused, and the stack grows as the tables nest. */
static void state_push(lua_State *L, const ml_jv *v, int depth) {
    luaL_checkstack(L, 4, "exp.state");
    switch (v->type) {
    case ML_JV_BOOL: lua_pushboolean(L, v->boolean); break;
    case ML_JV_NUM:
        if (v->is_int) lua_pushinteger(L, (lua_Integer)v->i);
        else lua_pushnumber(L, v->num);
        break;
    case ML_JV_STR: lua_pushstring(L, v->str); break;
    case ML_JV_ARR:
    case ML_JV_OBJ:
        if (depth > STATE_MAX_DEPTH)
            luaL_error(L, "the checkpoint's exp.state nests deeper than %d tables", STATE_MAX_DEPTH);
        lua_createtable(L, v->type == ML_JV_ARR ? v->n : 0, v->type == ML_JV_OBJ ? v->n : 0);
        for (int i = 0; i < v->n; i++) {
            if (v->items[i].type == ML_JV_NULL) continue;
            state_push(L, &v->items[i], depth + 1);
            if (v->type == ML_JV_ARR) lua_rawseti(L, -2, i + 1);
            else lua_setfield(L, -2, v->keys[i]);
        }
        break;
    default: lua_pushnil(L); break;
    }
}

static int state_decode(lua_State *L) {
    state_push(L, lua_touserdata(L, 1), 0);
    return 1;
}

/* Pushes exp.state at start: the restored table on resume, else an empty one. Fails (an
 * empty table pushed) when the checkpoint's state cannot be restored. */
static int state_init(lua_State *L, ml_experiment *e) {
    ml_jv *v = e->script_state ? ml_jv_parse(e->script_state, strlen(e->script_state)) : NULL;
    int rc = ML_OK;
    if (v && v->type == ML_JV_OBJ) {
        lua_pushcfunction(L, state_decode);
        lua_pushlightuserdata(L, v);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
            rc = ml_errorf("resume: %s", lua_tostring(L, -1));
            lua_pop(L, 1);
            lua_newtable(L);
        }
    } else {
        lua_newtable(L);
    }
    ml_jv_free(v);
    return rc;
}
