/* luastandalone.c — routers and losses created from Lua, run on Lua tables. */
#include "luastandalone.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "crash.h"
#include "params.h"
#include "pluginhost.h"

#define ROUTER_T "moelab.standalone_router"
#define LOSS_T "moelab.standalone_loss"
#define MAXT 16

typedef struct srouter {
    const ml_plugin *p;
    const ml_router_api *api;
    void *self;
    int D, N;
    ml_params P, S;
    int np, ns, hp[MAXT], hs[MAXT], pexp[MAXT], sexp[MAXT];
    ml_rng rng;
    int64_t step;
    /* last forward */
    int B;
    float *x, *logits, *prob, *gate;
    int32_t *ds, *de, *ids;
    int n_disp, n_dropped;
} srouter;

typedef struct sloss {
    const ml_plugin *p;
    const ml_loss_api *api;
    void *self;
} sloss;

/* Options from a Lua table, validated against the plugin's table; unknown keys are errors. */
static int read_options(lua_State *L, int idx, const ml_plugin *p, ml_optval *out) {
    if (ml_option_defaults(p, out)) return luaL_error(L, "%s", ml_error());
    if (lua_isnoneornil(L, idx)) return 0;
    luaL_checktype(L, idx, LUA_TTABLE);
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int top = lua_gettop(L); /* key at top - 1, value at top */
        if (lua_type(L, -2) != LUA_TSTRING) return luaL_error(L, "plugin '%s': option names must be strings", p->name);
        const char *k = lua_tostring(L, -2);
        int found = -1;
        for (int i = 0; i < p->num_options; i++)
            if (strcmp(p->options[i].name, k) == 0) found = i;
        if (found < 0) return luaL_error(L, "plugin '%s' has no option '%s'", p->name, k);
        const char *text = lua_isboolean(L, -1) ? (lua_toboolean(L, -1) ? "true" : "false") : luaL_tolstring(L, -1, NULL);
        if (ml_option_parse(&p->options[found], text, &out[found]))
            return luaL_error(L, "plugin '%s' option '%s': %s", p->name, k, ml_error());
        lua_settop(L, top - 1); /* keep the key for lua_next */
    }
    return 0;
}

/* Scripts name plugins; they never give a path. dlopen runs a file's constructors before any
 * check could refuse it, and a script can write files into its run directory, so a path is
 * refused here, before pluginhost sees it (ml_plugin_load takes '/' or ".so" as a path). */
static const ml_plugin *load_kind(lua_State *L, int kind, const char *name) {
    size_t n = strlen(name);
    const char *what = kind == ML_PLUGIN_ROUTER ? "router" : "loss";
    if (!n || strchr(name, '/') || (n >= 3 && strcmp(name + n - 3, ".so") == 0))
        luaL_error(L, "moelab.%s('%s'): scripts load plugins by name from the plugin search path, not by path; "
                      "hint: put the plugin in a plugin_path directory of the config and pass its name",
                   what, name);
    const ml_plugin *p = ml_plugin_load(kind, name);
    if (!p) luaL_error(L, "%s", ml_error());
    return p;
}

/* (B, W) matrix from a table of rows */
static float *read_matrix(lua_State *L, int idx, int *B, int W, const char *what) {
    luaL_checktype(L, idx, LUA_TTABLE);
    int n = (int)luaL_len(L, idx);
    if (n < 1) luaL_error(L, "%s: expected a non-empty table of rows", what);
    float *m = ml_alloc_floats((size_t)n * W);
    if (!m) luaL_error(L, "%s", ml_error());
    for (int b = 0; b < n; b++) {
        lua_rawgeti(L, idx, b + 1);
        if (!lua_istable(L, -1) || luaL_len(L, -1) != W) {
            free(m);
            luaL_error(L, "%s: row %d must be a table of %d numbers", what, b + 1, W);
        }
        for (int j = 0; j < W; j++) {
            lua_rawgeti(L, -1, j + 1);
            m[(size_t)b * W + j] = (float)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    *B = n;
    return m;
}

static void push_matrix(lua_State *L, const float *m, int B, int W) {
    lua_createtable(L, B, 0);
    for (int b = 0; b < B; b++) {
        lua_createtable(L, W, 0);
        for (int j = 0; j < W; j++) {
            lua_pushnumber(L, m[(size_t)b * W + j]);
            lua_rawseti(L, -2, j + 1);
        }
        lua_rawseti(L, -2, b + 1);
    }
}

static int declare(srouter *r, int state) {
    ml_tensor_decl d[MAXT];
    memset(d, 0, sizeof d);
    ml_crash_enter(ml_plugin_file(r->p), state ? "states" : "params");
    int n = state ? r->api->states(r->self, d, MAXT) : r->api->params(r->self, d, MAXT);
    ml_crash_leave();
    if (n < 0 || n > MAXT) return ml_errorf("router '%s' declared %d tensors", r->p->name, n);
    for (int i = 0; i < n; i++) {
        int shape[2] = {d[i].per_expert ? r->N : d[i].rows, d[i].cols};
        int h = ml_params_declare(state ? &r->S : &r->P, d[i].name, 2, shape, d[i].init, d[i].init_value, d[i].fan_in);
        if (h < 0) return ML_ERR;
        (state ? r->hs : r->hp)[i] = h;
        (state ? r->sexp : r->pexp)[i] = d[i].per_expert;
    }
    if (state) r->ns = n;
    else r->np = n;
    return ML_OK;
}

static void ptrs(srouter *r, const float **p, float **g, float **s) {
    for (int i = 0; i < r->np; i++) {
        p[i] = ml_params_data(&r->P, r->hp[i]);
        g[i] = ml_params_grad(&r->P, r->hp[i]);
    }
    for (int i = 0; i < r->ns; i++) s[i] = ml_params_data(&r->S, r->hs[i]);
}

static void free_fwd(srouter *r) {
    free(r->x);
    free(r->logits);
    free(r->prob);
    free(r->gate);
    free(r->ds);
    free(r->de);
    free(r->ids);
    r->x = r->logits = r->prob = r->gate = NULL;
    r->ds = r->de = r->ids = NULL;
    r->B = 0;
}

static srouter *check_router(lua_State *L) { return luaL_checkudata(L, 1, ROUTER_T); }

/* moelab.router(name, options, {dim=, experts=, seed=}) */
static int l_router(lua_State *L) {
    const ml_plugin *p = load_kind(L, ML_PLUGIN_ROUTER, luaL_checkstring(L, 1));
    ml_optval opt[64];
    if (p->num_options > 64) return luaL_error(L, "plugin '%s' has too many options", p->name);
    read_options(L, 2, p, opt);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "dim");
    lua_getfield(L, 3, "experts");
    lua_getfield(L, 3, "seed");
    lua_Integer Di = luaL_checkinteger(L, -3), Ni = luaL_checkinteger(L, -2);
    lua_Integer seed = luaL_optinteger(L, -1, 1);
    lua_pop(L, 3);
    /* the router's tensors live outside the Lua allocator (lua.memory_mb does not see them) */
    if (Di < 1 || Ni < 1 || Di > 65536 || Ni > 4096 || Di * Ni > (1 << 24))
        return luaL_error(L, "moelab.router: expected dim in 1..65536 and experts in 1..4096 with dim*experts <= %d, "
                             "got dim %I, experts %I", 1 << 24, Di, Ni);
    int D = (int)Di, N = (int)Ni;
    srouter *r = lua_newuserdatauv(L, sizeof *r, 0);
    memset(r, 0, sizeof *r);
    luaL_setmetatable(L, ROUTER_T);
    r->p = p;
    r->api = p->api;
    r->D = D;
    r->N = N;
    ml_params_init(&r->P, 1);
    ml_params_init(&r->S, 0);
    ml_rng_seed(&r->rng, (uint64_t)seed);
    ml_router_init init = {sizeof init, 0, D, N, opt, (uint64_t)seed};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(ml_plugin_file(p), "create");
    r->self = r->api->create(ml_host_table(), &init, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (!r->self) return luaL_error(L, "router '%s': create failed: %s", p->name, err);
    if (declare(r, 0) || declare(r, 1) || ml_params_commit(&r->P, &r->rng) || ml_params_commit(&r->S, &r->rng))
        return luaL_error(L, "%s", ml_error());
    return 1;
}

static int router_gc(lua_State *L) {
    srouter *r = check_router(L);
    if (r->self) {
        ml_crash_enter(ml_plugin_file(r->p), "destroy");
        r->api->destroy(r->self);
        ml_crash_leave();
    }
    r->self = NULL;
    free_fwd(r);
    ml_params_free(&r->P);
    ml_params_free(&r->S);
    return 0;
}

static void fill_route(srouter *r, ml_route *rt, const float **p, float **g, float **s, int training) {
    memset(rt, 0, sizeof *rt);
    rt->size = sizeof *rt;
    rt->B = r->B;
    rt->D = r->D;
    rt->N = r->N;
    rt->training = training;
    rt->x = r->x;
    rt->sample_id = r->ids;
    rt->param = p;
    rt->grad = g;
    rt->state = s;
    rt->rng = &r->rng;
    rt->step = r->step;
    rt->logits = r->logits;
    rt->prob = r->prob;
    rt->disp_sample = r->ds;
    rt->disp_expert = r->de;
    rt->disp_gate = r->gate;
    rt->n_disp = r->n_disp;
    rt->n_dropped = r->n_dropped;
}

static void push_dispatch(lua_State *L, const int32_t *ds, const int32_t *de, const float *g, int n) {
    lua_createtable(L, n, 0);
    for (int t = 0; t < n; t++) {
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, ds[t] + 1);
        lua_setfield(L, -2, "sample");
        lua_pushinteger(L, de[t] + 1);
        lua_setfield(L, -2, "expert");
        lua_pushnumber(L, g[t]);
        lua_setfield(L, -2, "gate");
        lua_rawseti(L, -2, t + 1);
    }
}

/* r:forward(x_rows [, {training=bool, ids={...}}]) -> {logits, prob, dispatch, dropped} */
static int router_forward(lua_State *L) {
    srouter *r = check_router(L);
    int B, training = 0;
    free_fwd(r);
    r->x = read_matrix(L, 2, &B, r->D, "forward: x");
    r->B = B;
    size_t BN = (size_t)B * r->N;
    r->logits = ml_alloc_floats(BN);
    r->prob = ml_alloc_floats(BN);
    r->gate = ml_alloc_floats(BN);
    r->ds = ml_calloc(BN, sizeof(int32_t));
    r->de = ml_calloc(BN, sizeof(int32_t));
    r->ids = ml_calloc((size_t)B, sizeof(int32_t));
    if (!r->logits || !r->prob || !r->gate || !r->ds || !r->de || !r->ids) return luaL_error(L, "%s", ml_error());
    for (int b = 0; b < B; b++) r->ids[b] = b;
    if (lua_istable(L, 3)) {
        lua_getfield(L, 3, "training");
        training = lua_toboolean(L, -1);
        lua_getfield(L, 3, "ids");
        if (lua_istable(L, -1))
            for (int b = 0; b < B; b++) {
                lua_rawgeti(L, -1, b + 1);
                r->ids[b] = (int32_t)lua_tointeger(L, -1);
                lua_pop(L, 1);
            }
        lua_pop(L, 2);
    }
    const float *p[MAXT];
    float *g[MAXT], *s[MAXT];
    ptrs(r, p, g, s);
    ml_route rt;
    fill_route(r, &rt, p, g, s, training);
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(ml_plugin_file(r->p), "forward");
    int frc = r->api->forward(r->self, &rt, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (frc) return luaL_error(L, "router '%s' forward: %s", r->p->name, err);
    if (rt.n_disp < 0 || rt.n_disp > B * r->N) /* the dispatch is read back below */
        return luaL_error(L, "router '%s' forward: n_disp = %d, expected 0..%d", r->p->name, rt.n_disp, B * r->N);
    r->n_disp = rt.n_disp;
    r->n_dropped = rt.n_dropped;
    lua_createtable(L, 0, 4);
    push_matrix(L, r->logits, B, r->N);
    lua_setfield(L, -2, "logits");
    push_matrix(L, r->prob, B, r->N);
    lua_setfield(L, -2, "prob");
    push_dispatch(L, r->ds, r->de, r->gate, r->n_disp);
    lua_setfield(L, -2, "dispatch");
    lua_pushinteger(L, r->n_dropped);
    lua_setfield(L, -2, "dropped");
    return 1;
}

/* r:backward{dgate={...}, dprob=rows, dlogits=rows} -> dx rows, {param name -> flat grad} */
static int router_backward(lua_State *L) {
    srouter *r = check_router(L);
    if (!r->B) return luaL_error(L, "backward: call forward first");
    luaL_checktype(L, 2, LUA_TTABLE);
    int B = r->B, K = r->n_disp, n;
    float *dgate = ml_alloc_floats((size_t)K + 1), *dx = ml_alloc_floats((size_t)B * r->D);
    float *dprob = NULL, *dlogits = NULL;
    lua_getfield(L, 2, "dgate");
    if (lua_istable(L, -1))
        for (int t = 0; t < K; t++) {
            lua_rawgeti(L, -1, t + 1);
            dgate[t] = (float)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
    lua_pop(L, 1);
    lua_getfield(L, 2, "dprob");
    if (!lua_isnil(L, -1)) dprob = read_matrix(L, lua_gettop(L), &n, r->N, "backward: dprob");
    lua_pop(L, 1);
    lua_getfield(L, 2, "dlogits");
    if (!lua_isnil(L, -1)) dlogits = read_matrix(L, lua_gettop(L), &n, r->N, "backward: dlogits");
    lua_pop(L, 1);
    ml_params_zero_grad(&r->P);
    const float *p[MAXT];
    float *g[MAXT], *s[MAXT];
    ptrs(r, p, g, s);
    ml_route rt;
    fill_route(r, &rt, p, g, s, 1);
    ml_route_grad gr = {sizeof gr, dgate, dlogits, dprob, dx};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(ml_plugin_file(r->p), "backward");
    int rc = r->api->backward(r->self, &rt, &gr, err);
    ml_crash_leave();
    ml_err_seal(err);
    free(dgate);
    free(dprob);
    free(dlogits);
    if (rc) {
        free(dx);
        return luaL_error(L, "router '%s' backward: %s", r->p->name, err);
    }
    push_matrix(L, dx, B, r->D);
    free(dx);
    lua_newtable(L);
    for (int i = 0; i < r->np; i++) {
        const ml_tensor *t = &r->P.t[r->hp[i]];
        lua_createtable(L, (int)t->n, 0);
        for (size_t j = 0; j < t->n; j++) {
            lua_pushnumber(L, g[i][j]);
            lua_rawseti(L, -2, (lua_Integer)j + 1);
        }
        lua_setfield(L, -2, t->name);
    }
    return 2;
}

/* r:tensors() -> {name -> flat array} of params and state; r:set(name, flat array) */
static int router_tensors(lua_State *L) {
    srouter *r = check_router(L);
    lua_newtable(L);
    for (int b = 0; b < 2; b++) {
        ml_params *P = b ? &r->S : &r->P;
        for (int i = 0; i < P->count; i++) {
            lua_createtable(L, (int)P->t[i].n, 0);
            for (size_t j = 0; j < P->t[i].n; j++) {
                lua_pushnumber(L, P->data[P->t[i].off + j]);
                lua_rawseti(L, -2, (lua_Integer)j + 1);
            }
            lua_setfield(L, -2, P->t[i].name);
        }
    }
    return 1;
}

static int router_set(lua_State *L) {
    srouter *r = check_router(L);
    const char *name = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    for (int b = 0; b < 2; b++) {
        ml_params *P = b ? &r->S : &r->P;
        int h = ml_params_find(P, name);
        if (h < 0) continue;
        if ((size_t)luaL_len(L, 3) != P->t[h].n)
            return luaL_error(L, "set: tensor '%s' has %d elements, got %d", name, (int)P->t[h].n, (int)luaL_len(L, 3));
        for (size_t j = 0; j < P->t[h].n; j++) {
            lua_rawgeti(L, 3, (lua_Integer)j + 1);
            P->data[P->t[h].off + j] = (float)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
        return 0;
    }
    return luaL_error(L, "set: router '%s' has no tensor '%s'", r->p->name, name);
}

/* r:add_experts(n) -> new N */
static int router_add_experts(lua_State *L) {
    srouter *r = check_router(L);
    lua_Integer ni = luaL_checkinteger(L, 2);
    int old = r->N;
    /* the same bounds as moelab.router(): these tensors are outside lua.memory_mb */
    luaL_argcheck(L, ni >= 1 && old + ni <= 4096 && (old + ni) * r->D <= (1 << 24), 2,
                  "expected >= 1, with at most 4096 experts and dim*experts <= 16777216");
    int n = (int)ni;
    r->N += n;
    for (int i = 0; i < r->np; i++)
        if (r->pexp[i] && ml_params_grow(&r->P, r->hp[i], r->N)) return luaL_error(L, "%s", ml_error());
    for (int i = 0; i < r->ns; i++)
        if (r->sexp[i] && ml_params_grow(&r->S, r->hs[i], r->N)) return luaL_error(L, "%s", ml_error());
    if (ml_params_commit(&r->P, &r->rng) || ml_params_commit(&r->S, &r->rng)) return luaL_error(L, "%s", ml_error());
    free_fwd(r);
    if (r->api->event) {
        const float *p[MAXT];
        float *g[MAXT], *s[MAXT];
        ptrs(r, p, g, s);
        ml_router_event ev = {sizeof ev, ML_EV_EXPERTS_ADDED, r->N, old, NULL, NULL, p, s, 0, r->step};
        char err[ML_ERR_MAX] = "";
        ml_crash_enter(ml_plugin_file(r->p), "event");
        int erc = r->api->event(r->self, &ev, err);
        ml_crash_leave();
        ml_err_seal(err);
        if (erc) return luaL_error(L, "router '%s' experts-added: %s", r->p->name, err);
    }
    lua_pushinteger(L, r->N);
    return 1;
}

/* r:after_backward(grad_mag, load) sends ML_EV_AFTER_BACKWARD with the given per-expert arrays */
static int router_after_backward(lua_State *L) {
    srouter *r = check_router(L);
    float gm[4096], ld[4096];
    if (r->N > 4096) return luaL_error(L, "after_backward: too many experts");
    for (int t = 0; t < 2; t++) {
        luaL_checktype(L, 2 + t, LUA_TTABLE);
        for (int e = 0; e < r->N; e++) {
            lua_rawgeti(L, 2 + t, e + 1);
            (t ? ld : gm)[e] = (float)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
    }
    r->step++;
    if (!r->api->event) return 0;
    const float *p[MAXT];
    float *g[MAXT], *s[MAXT];
    ptrs(r, p, g, s);
    ml_router_event ev = {sizeof ev, ML_EV_AFTER_BACKWARD, r->N, r->N, gm, ld, p, s, 0, r->step};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(ml_plugin_file(r->p), "event");
    int erc = r->api->event(r->self, &ev, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (erc) return luaL_error(L, "router '%s' event: %s", r->p->name, err);
    return 0;
}

static int router_index(lua_State *L) {
    srouter *r = check_router(L);
    const char *k = luaL_checkstring(L, 2);
    if (!strcmp(k, "num_experts")) lua_pushinteger(L, r->N);
    else if (!strcmp(k, "dim")) lua_pushinteger(L, r->D);
    else if (!strcmp(k, "name")) lua_pushstring(L, r->p->name);
    else {
        luaL_getmetatable(L, ROUTER_T);
        lua_getfield(L, -1, "methods");
        lua_getfield(L, -1, k);
        if (lua_isnil(L, -1)) return luaL_error(L, "router has no field '%s'", k);
    }
    return 1;
}

/* moelab.loss(name, options) */
static int l_loss(lua_State *L) {
    const ml_plugin *p = load_kind(L, ML_PLUGIN_LOSS, luaL_checkstring(L, 1));
    ml_optval opt[64];
    if (p->num_options > 64) return luaL_error(L, "plugin '%s' has too many options", p->name);
    read_options(L, 2, p, opt);
    sloss *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, LOSS_T);
    s->p = p;
    s->api = p->api;
    ml_loss_init init = {sizeof init, opt};
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(ml_plugin_file(p), "create");
    s->self = s->api->create(ml_host_table(), &init, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (!s->self) return luaL_error(L, "loss '%s': create failed: %s", p->name, err);
    return 1;
}

static int loss_gc(lua_State *L) {
    sloss *s = luaL_checkudata(L, 1, LOSS_T);
    if (s->self) {
        ml_crash_enter(ml_plugin_file(s->p), "destroy");
        s->api->destroy(s->self);
        ml_crash_leave();
    }
    s->self = NULL;
    return 0;
}

/* l:eval{prob=rows, logits=rows, dispatch={{sample,expert,gate}...}, labels={...}, classes=C}
 * -> value, {dprob=rows, dlogits=rows} */
static int loss_eval(lua_State *L) {
    sloss *s = luaL_checkudata(L, 1, LOSS_T);
    luaL_checktype(L, 2, LUA_TTABLE);
    int B, N, B2;
    lua_getfield(L, 2, "prob");
    luaL_argexpected(L, lua_istable(L, -1), 2, "table with prob = rows");
    lua_rawgeti(L, -1, 1);
    N = lua_istable(L, -1) ? (int)luaL_len(L, -1) : 0;
    lua_pop(L, 1);
    if (N < 1) return luaL_error(L, "eval: prob must be a table of rows");
    float *prob = read_matrix(L, lua_gettop(L), &B, N, "eval: prob");
    lua_pop(L, 1);
    float *logits = NULL;
    lua_getfield(L, 2, "logits");
    if (!lua_isnil(L, -1)) logits = read_matrix(L, lua_gettop(L), &B2, N, "eval: logits");
    else {
        logits = ml_alloc_floats((size_t)B * N);
        for (size_t i = 0; i < (size_t)B * N; i++) logits[i] = logf(prob[i] > 1e-30f ? prob[i] : 1e-30f);
    }
    lua_pop(L, 1);
    size_t BN = (size_t)B * N;
    int32_t *ds = ml_calloc(BN, sizeof(int32_t)), *de = ml_calloc(BN, sizeof(int32_t)), *lab = NULL;
    float *g = ml_alloc_floats(BN);
    int K = 0, classes = 0;
    lua_getfield(L, 2, "dispatch");
    if (lua_istable(L, -1)) {
        K = (int)luaL_len(L, -1);
        if ((size_t)K > BN) K = (int)BN;
        for (int t = 0; t < K; t++) {
            lua_rawgeti(L, -1, t + 1);
            lua_getfield(L, -1, "sample");
            lua_getfield(L, -2, "expert");
            lua_getfield(L, -3, "gate");
            ds[t] = (int32_t)lua_tointeger(L, -3) - 1;
            de[t] = (int32_t)lua_tointeger(L, -2) - 1;
            g[t] = (float)lua_tonumber(L, -1);
            lua_pop(L, 4);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, 2, "labels");
    if (lua_istable(L, -1)) {
        lab = ml_calloc((size_t)B, sizeof(int32_t));
        for (int b = 0; b < B; b++) {
            lua_rawgeti(L, -1, b + 1);
            lab[b] = (int32_t)lua_tointeger(L, -1) - 1;
            if (lab[b] + 1 > classes) classes = lab[b] + 1;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    float *dp = ml_alloc_floats(BN), *dl = ml_alloc_floats(BN);
    ml_routing_record rec = {sizeof rec, B, N, logits, prob, ds, de, g, K, lab, classes};
    double v = 0;
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(ml_plugin_file(s->p), "eval");
    int rc = s->api->eval(s->self, &rec, &v, 1.0f, dl, dp, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (!rc) {
        lua_pushnumber(L, v);
        lua_createtable(L, 0, 2);
        push_matrix(L, dp, B, N);
        lua_setfield(L, -2, "dprob");
        push_matrix(L, dl, B, N);
        lua_setfield(L, -2, "dlogits");
    }
    free(prob);
    free(logits);
    free(ds);
    free(de);
    free(g);
    free(lab);
    free(dp);
    free(dl);
    if (rc) return luaL_error(L, "loss '%s': %s", s->p->name, err);
    return 2;
}

static const luaL_Reg router_methods[] = {{"forward", router_forward}, {"backward", router_backward},
                                          {"tensors", router_tensors}, {"set", router_set},
                                          {"add_experts", router_add_experts},
                                          {"after_backward", router_after_backward}, {NULL, NULL}};

void ml_lua_open_standalone(lua_State *L) {
    luaL_newmetatable(L, ROUTER_T);
    lua_pushcfunction(L, router_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, router_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, router_methods);
    lua_setfield(L, -2, "methods");
    lua_pop(L, 1);
    luaL_newmetatable(L, LOSS_T);
    lua_newtable(L);
    lua_pushcfunction(L, loss_eval);
    lua_setfield(L, -2, "eval");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, loss_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_pushcfunction(L, l_router);
    lua_setfield(L, -2, "router");
    lua_pushcfunction(L, l_loss);
    lua_setfield(L, -2, "loss");
}
