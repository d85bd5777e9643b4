/* luaexp.c — the sandboxed Lua state, the `exp` and `moelab` bindings, protected script runs. */
#include "luaexp.h"

#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "luastandalone.h"

struct ml_lua {
    lua_State *L;
    ml_experiment *e;
    char script_dir[PATH_MAX];
    char lib_dir[PATH_MAX];
    char run_dir[PATH_MAX];
    char **allow;          /* extra readable paths (realpath'd) */
    int n_allow;
    int loaded;
};

#define EXP_T "moelab.experiment"
#define MOE_T "moelab.moe"
#define LOSS_T "moelab.loss"
#define SCHED_T "moelab.schedule"
#define RO_T "moelab.readonly"

static ml_lua *getself(lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, "moelab.self");
    ml_lua *l = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return l;
}

/* A core failure becomes a Lua error at the script's line (luaL_error adds the position). */
static int core_error(lua_State *L) { return luaL_error(L, "%s", ml_error()); }

/* ------------------------------------------------------------ aux helpers */

static void set_num(lua_State *L, const char *k, double v) {
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}
static void set_int(lua_State *L, const char *k, lua_Integer v) {
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
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
static int ro_next(lua_State *L) {
    lua_settop(L, 2);
    if (lua_next(L, 1)) {
        if (lua_istable(L, -1)) {
            lua_getmetatable(L, -1);
            lua_pop(L, 1);
        }
        return 2;
    }
    lua_pushnil(L);
    return 1;
}
static int ro_pairs(lua_State *L) {
    lua_pushcfunction(L, ro_next);
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "__index");
    lua_remove(L, -2);
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
static int table_to_json(lua_State *L, int idx, ml_json *j) {
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            return luaL_error(L, "event/log tables need string keys");
        }
        const char *k = lua_tostring(L, -2);
        switch (lua_type(L, -1)) {
        case LUA_TNUMBER:
            if (lua_isinteger(L, -1)) ml_json_int(j, k, lua_tointeger(L, -1));
            else ml_json_num(j, k, lua_tonumber(L, -1));
            break;
        case LUA_TBOOLEAN: ml_json_raw(j, k, lua_toboolean(L, -1) ? "true" : "false"); break;
        case LUA_TSTRING: ml_json_str(j, k, lua_tostring(L, -1)); break;
        default: ml_json_str(j, k, luaL_tolstring(L, -1, NULL)); lua_pop(L, 1); break;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* ------------------------------------------------------------------ exp */

static void state_init(lua_State *L, ml_experiment *e);
static int state_save(void *ctx, char **json);

static ml_experiment *check_exp(lua_State *L) {
    ml_experiment **p = luaL_checkudata(L, 1, EXP_T);
    return *p;
}

typedef struct hook_ctx {
    lua_State *L;
    int fn_ref;
    int err_ref;
    ml_experiment *e;
} hook_ctx;

static int step_hook(void *ctx) {
    hook_ctx *h = ctx;
    lua_State *L = h->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->fn_ref);
    lua_createtable(L, 0, 4);
    set_int(L, "epoch", h->e->epoch);
    set_int(L, "step", h->e->step);
    set_int(L, "images_seen", h->e->images_seen);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        h->err_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        return ml_errorf("on_step hook failed");
    }
    return ML_OK;
}

static int l_train_epoch(lua_State *L) {
    ml_experiment *e = check_exp(L);
    hook_ctx h = {L, LUA_NOREF, LUA_NOREF, e};
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "on_step");
        if (!lua_isnil(L, -1)) {
            luaL_argexpected(L, lua_isfunction(L, -1), 2, "table with on_step = function");
            h.fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        } else {
            lua_pop(L, 1);
        }
    }
    ml_epoch_stats st;
    int rc = ml_exp_train_epoch(e, h.fn_ref != LUA_NOREF ? step_hook : NULL, &h, &st);
    luaL_unref(L, LUA_REGISTRYINDEX, h.fn_ref);
    if (h.err_ref != LUA_NOREF) { /* re-raise the hook's own error, position intact */
        lua_rawgeti(L, LUA_REGISTRYINDEX, h.err_ref);
        luaL_unref(L, LUA_REGISTRYINDEX, h.err_ref);
        return lua_error(L);
    }
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
    return 1;
}

static int l_log(lua_State *L) {
    ml_experiment *e = check_exp(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) != LUA_TSTRING) return luaL_argerror(L, 2, "keys must be column names (strings)");
        const char *k = lua_tostring(L, -2);
        int ok;
        double v = lua_isboolean(L, -1) ? lua_toboolean(L, -1) : lua_tonumberx(L, -1, &ok);
        if (!lua_isboolean(L, -1) && !ok)
            return luaL_error(L, "exp:log: column '%s' has a %s value, expected a number or boolean", k, luaL_typename(L, -1));
        if (ml_exp_log(e, k, v)) return core_error(L);
        lua_pop(L, 1);
    }
    return 0;
}

static int l_event(lua_State *L) {
    ml_experiment *e = check_exp(L);
    const char *kind = luaL_checkstring(L, 2);
    ml_json j;
    ml_json_begin(&j);
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        table_to_json(L, 3, &j);
    }
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
    int epoch;
    int64_t step;
    if (ml_exp_load_checkpoint(e, luaL_checkstring(L, 2), &epoch, &step)) return core_error(L);
    lua_createtable(L, 0, 2);
    set_int(L, "epoch", epoch);
    set_int(L, "step", step);
    return 1;
}

static const luaL_Reg exp_methods[] = {
    {"train_epoch", l_train_epoch}, {"evaluate", l_evaluate}, {"log", l_log}, {"event", l_event},
    {"save_checkpoint", l_save_checkpoint}, {"load_checkpoint", l_load_checkpoint}, {NULL, NULL}};

static int exp_index(lua_State *L) {
    ml_experiment *e = check_exp(L);
    const char *k = luaL_checkstring(L, 2);
    lua_getiuservalue(L, 1, 1); /* cached tables: config, moe, losses, schedule */
    lua_getfield(L, -1, k);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 2);
    if (strcmp(k, "epoch") == 0) lua_pushinteger(L, e->epoch);
    else if (strcmp(k, "step") == 0) lua_pushinteger(L, e->step);
    else if (strcmp(k, "images_seen") == 0) lua_pushinteger(L, e->images_seen);
    else if (strcmp(k, "num_layers") == 0) lua_pushinteger(L, e->model->L);
    else if (strcmp(k, "run_dir") == 0) lua_pushstring(L, ml_exp_run_dir(e));
    else if (strcmp(k, "name") == 0) lua_pushstring(L, e->experiment);
    else if (strcmp(k, "resumed") == 0) lua_pushboolean(L, e->resumed);
    else {
        luaL_getmetatable(L, EXP_T);
        lua_getfield(L, -1, "methods");
        lua_getfield(L, -1, k);
        if (lua_isnil(L, -1)) return luaL_error(L, "exp has no field '%s'", k);
    }
    return 1;
}

static int exp_newindex(lua_State *L) {
    if (strcmp(luaL_checkstring(L, 2), "state") == 0) { /* the script's own table, saved in checkpoints */
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getiuservalue(L, 1, 1);
        lua_pushvalue(L, 3);
        lua_setfield(L, -2, "state");
        return 0;
    }
    return luaL_error(L, "exp.%s cannot be assigned; hint: coefficients are exp.losses[name].coef",
                      luaL_checkstring(L, 2));
}

static int exp_tostring(lua_State *L) {
    ml_experiment *e = check_exp(L);
    lua_pushfstring(L, "experiment '%s' (epoch %d)", e->experiment, e->epoch);
    return 1;
}

/* ----------------------------------------------------------------- moe[i] */

typedef struct moe_ud { ml_experiment *e; int layer; } moe_ud;

static moe_ud *check_moe(lua_State *L) { return luaL_checkudata(L, 1, MOE_T); }

static int l_add_experts(lua_State *L) {
    moe_ud *u = check_moe(L);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_argcheck(L, n >= 1 && n <= 4096, 2, "expected 1..4096 experts to add");
    const char *reason = luaL_optstring(L, 3, "script");
    if (ml_exp_add_experts(u->e, u->layer, (int)n, reason)) return core_error(L);
    lua_pushinteger(L, u->e->model->moe[u->layer]->N);
    return 1;
}

static void push_array(lua_State *L, const double *v, int n) {
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushnumber(L, v[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

static int l_stats(lua_State *L) {
    moe_ud *u = check_moe(L);
    const char *which = luaL_optstring(L, 2, "train");
    luaL_argcheck(L, !strcmp(which, "train") || !strcmp(which, "val"), 2, "expected 'train' or 'val'");
    ml_health h;
    if (ml_exp_health(u->e, u->layer, which[0] == 'v', &h)) return core_error(L);
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
    set_num(L, "sample_entropy", h.mean_sample_entropy);
    set_num(L, "mutual_info", h.mutual_info);
    set_num(L, "max_load", h.max_load_ratio);
    set_num(L, "dropped", h.dropped_share);
    set_num(L, "nmi", h.nmi_label);
    set_num(L, "load_balance", h.load_balance);
    set_int(L, "samples", h.samples);
    lua_pushboolean(L, h.collapsed);
    lua_setfield(L, -2, "collapsed");
    const char *names[ML_MOE_MAX_RTENSORS];
    const float *vals[ML_MOE_MAX_RTENSORS];
    ml_moe *m = u->e->model->moe[u->layer];
    int nx = ml_moe_reported_state(m, names, vals, ML_MOE_MAX_RTENSORS);
    for (int i = 0; i < nx; i++) {
        lua_createtable(L, m->N, 0);
        for (int k = 0; k < m->N; k++) {
            lua_pushnumber(L, vals[i][k]);
            lua_rawseti(L, -2, k + 1);
        }
        lua_setfield(L, -2, names[i]);
    }
    ml_health_free(&h);
    return 1;
}

static int moe_index(lua_State *L) {
    moe_ud *u = check_moe(L);
    const char *k = luaL_checkstring(L, 2);
    ml_moe *m = u->e->model->moe[u->layer];
    if (strcmp(k, "num_experts") == 0) lua_pushinteger(L, m->N);
    else if (strcmp(k, "layer") == 0) lua_pushinteger(L, u->layer + 1);
    else if (strcmp(k, "router") == 0) lua_pushstring(L, m->plugin->name);
    else if (strcmp(k, "add_experts") == 0) lua_pushcfunction(L, l_add_experts);
    else if (strcmp(k, "stats") == 0) lua_pushcfunction(L, l_stats);
    else return luaL_error(L, "moe layer has no field '%s' (fields: num_experts, layer, router, add_experts, stats)", k);
    return 1;
}

static int moe_tostring(lua_State *L) {
    moe_ud *u = check_moe(L);
    lua_pushfstring(L, "moe layer %d (%d experts, router %s)", u->layer + 1, u->e->model->moe[u->layer]->N,
                    u->e->model->moe[u->layer]->plugin->name);
    return 1;
}

/* ------------------------------------------------------------- losses[name] */

typedef struct loss_ud { ml_experiment *e; int idx; } loss_ud;

static int loss_index(lua_State *L) {
    loss_ud *u = luaL_checkudata(L, 1, LOSS_T);
    const char *k = luaL_checkstring(L, 2);
    ml_loss_slot *s = &u->e->loss[u->idx];
    if (strcmp(k, "coef") == 0) lua_pushnumber(L, s->coef);
    else if (strcmp(k, "name") == 0) lua_pushstring(L, s->name);
    else if (strcmp(k, "plugin") == 0) lua_pushstring(L, s->plugin->name);
    else return luaL_error(L, "loss '%s' has no field '%s' (fields: coef, name, plugin)", s->name, k);
    return 1;
}

static int loss_newindex(lua_State *L) {
    loss_ud *u = luaL_checkudata(L, 1, LOSS_T);
    const char *k = luaL_checkstring(L, 2);
    ml_loss_slot *s = &u->e->loss[u->idx];
    if (strcmp(k, "coef") != 0) return luaL_error(L, "loss '%s': only 'coef' can be set, not '%s'", s->name, k);
    double v = luaL_checknumber(L, 3);
    if (!isfinite(v) || v < 0) return luaL_error(L, "loss '%s': coef must be a finite number >= 0, got %f", s->name, v);
    s->coef = v;
    return 0;
}

static int loss_tostring(lua_State *L) {
    loss_ud *u = luaL_checkudata(L, 1, LOSS_T);
    lua_pushfstring(L, "loss '%s' (coef %f)", u->e->loss[u->idx].name, u->e->loss[u->idx].coef);
    return 1;
}

/* ----------------------------------------------------------------- schedule */

static int l_decide(lua_State *L) {
    ml_experiment **p = luaL_checkudata(L, 1, SCHED_T);
    ml_experiment *e = *p;
    int add[64];
    if (ml_exp_schedule_decide(e, add)) return core_error(L);
    int any = 0;
    for (int l = 0; l < e->model->L && l < 64; l++) any |= add[l] > 0;
    if (!any) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, e->model->L, 0);
    for (int l = 0; l < e->model->L && l < 64; l++) {
        lua_pushinteger(L, add[l]);
        lua_rawseti(L, -2, l + 1);
    }
    return 1;
}

static int sched_index(lua_State *L) {
    ml_experiment **p = luaL_checkudata(L, 1, SCHED_T);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "decide") == 0) lua_pushcfunction(L, l_decide);
    else if (strcmp(k, "name") == 0) lua_pushstring(L, (*p)->sched_plugin->name);
    else return luaL_error(L, "schedule has no field '%s' (fields: name, decide)", k);
    return 1;
}

/* ------------------------------------------------------------------ moelab */

static int l_warn(lua_State *L) {
    const char *msg = luaL_checkstring(L, 1);
    ml_lua *l = getself(L);
    ml_log(ML_LOG_WARN, "%s", msg);
    if (l->e && l->e->res) {
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

static int path_under(const char *path, const char *dir) {
    size_t n = strlen(dir);
    return n && strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == 0);
}

/* realpath of path, or of its directory when the file does not exist yet */
static int resolve(const char *path, char *out) {
    if (realpath(path, out)) return 1;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    const char *base = path;
    if (slash) {
        *slash = 0;
        base = slash + 1;
        if (!*dir) strcpy(dir, "/");
    } else {
        strcpy(dir, ".");
    }
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
    if (l->run_dir[0] && path_under(rp, l->run_dir)) return 1;
    if (write) return 0;
    if (path_under(rp, l->script_dir) || path_under(rp, l->lib_dir)) return 1;
    for (int i = 0; i < l->n_allow; i++)
        if (path_under(rp, l->allow[i])) return 1;
    return 0;
}

static void refresh_run_dir(ml_lua *l) {
    if (!l->run_dir[0] && l->e && ml_exp_run_dir(l->e)) {
        char rp[PATH_MAX];
        if (realpath(ml_exp_run_dir(l->e), rp)) strcpy(l->run_dir, rp); /* same size */
    }
}

static int l_io_open(lua_State *L) {
    ml_lua *l = getself(L);
    const char *path = luaL_checkstring(L, 1);
    const char *mode = luaL_optstring(L, 2, "r");
    int write = strpbrk(mode, "wa+") != NULL;
    refresh_run_dir(l);
    if (!allowed(l, path, write))
        return luaL_error(L, "io.open('%s', '%s'): not allowed by the sandbox; scripts %s; hint: add the path to lua.allow_read",
                          path, mode, write ? "write only under the run directory" : "read under the run directory, the script's directory, scripts/lib and lua.allow_read");
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* load() in text mode only: no bytecode */
static int l_load(lua_State *L) {
    int n = lua_gettop(L); /* chunk [, chunkname [, mode [, env]]] */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_settop(L, n < 3 ? 4 : n + 1); /* the original load, then at least chunk, chunkname, mode */
    lua_pushliteral(L, "t");
    lua_replace(L, 4);                /* mode: text only */
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int load_text_file(lua_State *L, const char *path) {
    ml_lua *l = getself(L);
    refresh_run_dir(l);
    if (!allowed(l, path, 0)) return luaL_error(L, "loading '%s' is not allowed by the sandbox", path);
    return luaL_loadfilex(L, path, "t");
}

static int l_dofile(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    if (load_text_file(L, path) != LUA_OK) return lua_error(L);
    lua_call(L, 0, LUA_MULTRET);
    return lua_gettop(L) - 1;
}

static int l_loadfile(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    if (load_text_file(L, path) != LUA_OK) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    return 1;
}

/* package.searchers replacement: Lua files from the script's directory and scripts/lib only */
static int l_searcher(lua_State *L) {
    ml_lua *l = getself(L);
    const char *name = luaL_checkstring(L, 1);
    char rel[PATH_MAX];
    snprintf(rel, sizeof rel, "%s", name);
    for (char *c = rel; *c; c++)
        if (*c == '.') *c = '/';
    if (strstr(rel, "..")) return 0;
    const char *dirs[2] = {l->script_dir, l->lib_dir};
    luaL_Buffer tried;
    luaL_buffinit(L, &tried);
    for (int i = 0; i < 2; i++) {
        if (!dirs[i][0]) continue;
        char path[PATH_MAX + 8];
        snprintf(path, sizeof path, "%s/%s.lua", dirs[i], rel);
        FILE *f = fopen(path, "r");
        if (!f) {
            lua_pushfstring(L, "\n\tno file '%s'", path);
            luaL_addvalue(&tried);
            continue;
        }
        fclose(f);
        if (luaL_loadfilex(L, path, "t") != LUA_OK)
            return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, path, lua_tostring(L, -1));
        lua_pushstring(L, path);
        return 2;
    }
    luaL_pushresult(&tried);
    return 1;
}

static void sandbox(lua_State *L) {
    luaL_openlibs(L);
    /* os: clocks and dates only */
    lua_getglobal(L, "os");
    const char *os_drop[] = {"execute", "exit", "remove", "rename", "tmpname", "setlocale", NULL};
    for (int i = 0; os_drop[i]; i++) {
        lua_pushnil(L);
        lua_setfield(L, -2, os_drop[i]);
    }
    lua_pop(L, 1);
    /* io: open through the path check; no popen, no name-opening helpers */
    lua_getglobal(L, "io");
    lua_getfield(L, -1, "open");
    lua_pushcclosure(L, l_io_open, 1);
    lua_setfield(L, -2, "open");
    const char *io_drop[] = {"popen", "lines", "input", "output", "tmpfile", NULL};
    for (int i = 0; io_drop[i]; i++) {
        lua_pushnil(L);
        lua_setfield(L, -2, io_drop[i]);
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_setglobal(L, "debug");
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    lua_getglobal(L, "load");
    lua_pushcclosure(L, l_load, 1);
    lua_setglobal(L, "load");
    lua_pushcfunction(L, l_dofile);
    lua_setglobal(L, "dofile");
    lua_pushcfunction(L, l_loadfile);
    lua_setglobal(L, "loadfile");
    lua_pushcfunction(L, l_print);
    lua_setglobal(L, "print");
    /* package: no C libraries; our own searcher */
    lua_getglobal(L, "package");
    lua_pushnil(L);
    lua_setfield(L, -2, "loadlib");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "path");
    lua_createtable(L, 2, 0);
    lua_getfield(L, -2, "searchers");
    lua_rawgeti(L, -1, 1); /* preload */
    lua_rawseti(L, -3, 1);
    lua_pop(L, 1);
    lua_pushcfunction(L, l_searcher);
    lua_rawseti(L, -2, 2);
    lua_setfield(L, -2, "searchers");
    lua_pop(L, 1);
}

/* ------------------------------------------------------------------ setup */

static void new_type(lua_State *L, const char *name, lua_CFunction index, lua_CFunction newindex,
                     lua_CFunction tostring) {
    luaL_newmetatable(L, name);
    lua_pushcfunction(L, index);
    lua_setfield(L, -2, "__index");
    if (newindex) {
        lua_pushcfunction(L, newindex);
        lua_setfield(L, -2, "__newindex");
    }
    if (tostring) {
        lua_pushcfunction(L, tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
}

static void push_exp(lua_State *L, ml_experiment *e) {
    ml_experiment **p = lua_newuserdatauv(L, sizeof *p, 1);
    *p = e;
    luaL_setmetatable(L, EXP_T);
    lua_newtable(L); /* cached fields */
    push_node(L, ml_config_root(e->cfg));
    lua_setfield(L, -2, "config");
    lua_createtable(L, e->model->L, 0);
    for (int l = 0; l < e->model->L; l++) {
        moe_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
        u->e = e;
        u->layer = l;
        luaL_setmetatable(L, MOE_T);
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
    state_init(L, e);
    lua_setfield(L, -2, "state");
    lua_setiuservalue(L, -2, 1);
}

ml_lua *ml_lua_new(ml_experiment *e, const char *lib_dir) {
    ml_lua *l = ml_calloc(1, sizeof *l);
    if (!l) return NULL;
    l->L = luaL_newstate();
    if (!l->L) {
        free(l);
        ml_errorf("lua: cannot create a state (out of memory)");
        return NULL;
    }
    l->e = e;
    if (lib_dir && !realpath(lib_dir, l->lib_dir)) l->lib_dir[0] = 0;
    lua_State *L = l->L;
    sandbox(L);
    lua_pushlightuserdata(L, l);
    lua_setfield(L, LUA_REGISTRYINDEX, "moelab.self");
    luaL_newmetatable(L, RO_T);
    lua_pushcfunction(L, ro_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, ro_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, ro_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pop(L, 1);
    new_type(L, EXP_T, exp_index, exp_newindex, exp_tostring);
    luaL_getmetatable(L, EXP_T);
    luaL_newlib(L, exp_methods);
    lua_setfield(L, -2, "methods");
    lua_pop(L, 1);
    new_type(L, MOE_T, moe_index, NULL, moe_tostring);
    new_type(L, LOSS_T, loss_index, loss_newindex, loss_tostring);
    new_type(L, SCHED_T, sched_index, NULL, NULL);
    /* moelab.* */
    lua_newtable(L);
    lua_pushcfunction(L, l_warn);
    lua_setfield(L, -2, "warn");
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "version");
    ml_lua_open_standalone(L);
    lua_setglobal(L, "moelab");
    if (e) {
        push_exp(L, e);
        lua_setglobal(L, "exp");
        e->state_save = state_save;
        e->state_ctx = l;
        int n = ml_config_len(e->cfg, "lua.allow_read");
        for (int i = 0; i < n; i++) {
            char key[64], rp[PATH_MAX];
            snprintf(key, sizeof key, "lua.allow_read.%d", i);
            const char *p = ml_config_str(e->cfg, key, "");
            if (!realpath(p, rp)) continue; /* a path that does not exist grants nothing */
            char **a = realloc(l->allow, (size_t)(l->n_allow + 1) * sizeof *a);
            if (!a) break;
            l->allow = a;
            if ((l->allow[l->n_allow] = ml_strdup(rp))) l->n_allow++;
        }
    }
    return l;
}

void ml_lua_free(ml_lua *l) {
    if (!l) return;
    if (l->e && l->e->state_ctx == l) l->e->state_save = NULL;
    if (l->L) lua_close(l->L);
    for (int i = 0; i < l->n_allow; i++) free(l->allow[i]);
    free(l->allow);
    free(l);
}

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
    lua_pushcfunction(L, traceback);
    lua_insert(L, -2);
    int rc = lua_pcall(L, 0, 0, -2);
    if (rc != LUA_OK) {
        ml_errorf("%s", lua_tostring(L, -1));
        lua_pop(L, 2);
        return ML_ERR;
    }
    lua_pop(L, 1);
    return ML_OK;
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

typedef struct state_enc {
    ml_json j;      /* only its buffer is used (ml_json_append_string escapes into it) */
    int any;
    char path[256]; /* where in exp.state, for messages */
} state_enc;

static void state_put(ml_json *j, const char *t) {
    size_t n = strlen(t);
    if (!j->buf) return;
    if (j->len + n + 1 > j->cap) {
        size_t cap = j->cap * 2 + n + 64;
        char *nb = realloc(j->buf, cap);
        if (!nb) {
            free(j->buf);
            j->buf = NULL;
            return;
        }
        j->buf = nb;
        j->cap = cap;
    }
    memcpy(j->buf + j->len, t, n + 1);
    j->len += n;
}

static int str_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void state_value(lua_State *L, state_enc *s, int idx, int depth);

static void state_table(lua_State *L, state_enc *s, int idx, int depth) {
    idx = lua_absindex(L, idx);
    if (depth > STATE_MAX_DEPTH)
        luaL_error(L, "exp.state%s: nested deeper than %d tables (a cycle?)", s->path, STATE_MAX_DEPTH);
    lua_Integer n = 0, ints = 0;
    int strs = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        n++;
        if (lua_type(L, -1) == LUA_TSTRING) strs++;
        else if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) ints++;
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
        ml_json_append_string(&s->j, keys[i]);
        state_put(&s->j, ":");
        snprintf(s->path + plen, sizeof s->path - plen, ".%s", keys[i]);
        lua_getfield(L, idx, keys[i]);
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
        ml_json_append_string(&s->j, str);
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
    state_value(L, s, -1, 0);
    return 0;
}

/* ml_state_save_fn: exp.state as JSON (NULL when there is none). */
static int state_save(void *ctx, char **json) {
    ml_lua *l = ctx;
    lua_State *L = l->L;
    *json = NULL;
    state_enc s;
    memset(&s, 0, sizeof s);
    ml_json_begin(&s.j); /* allocates the buffer; its "{" is dropped */
    if (!s.j.buf) return ML_ERR;
    s.j.len = 0;
    s.j.buf[0] = 0;
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
    if (!s.j.buf) return ml_errorf("exp.state: out of memory");
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

static void state_push(lua_State *L, const ml_jv *v) {
    switch (v->type) {
    case ML_JV_BOOL: lua_pushboolean(L, v->boolean); break;
    case ML_JV_NUM:
        if (v->is_int) lua_pushinteger(L, (lua_Integer)v->i);
        else lua_pushnumber(L, v->num);
        break;
    case ML_JV_STR: lua_pushstring(L, v->str); break;
    case ML_JV_ARR:
    case ML_JV_OBJ:
        lua_createtable(L, v->type == ML_JV_ARR ? v->n : 0, v->type == ML_JV_OBJ ? v->n : 0);
        for (int i = 0; i < v->n; i++) {
            if (v->items[i].type == ML_JV_NULL) continue;
            state_push(L, &v->items[i]);
            if (v->type == ML_JV_ARR) lua_rawseti(L, -2, i + 1);
            else lua_setfield(L, -2, v->keys[i]);
        }
        break;
    default: lua_pushnil(L); break;
    }
}

/* exp.state at start: the restored table on resume, else an empty one. */
static void state_init(lua_State *L, ml_experiment *e) {
    ml_jv *v = e->script_state ? ml_jv_parse(e->script_state, strlen(e->script_state)) : NULL;
    if (v && v->type == ML_JV_OBJ) state_push(L, v);
    else lua_newtable(L);
    ml_jv_free(v);
}
