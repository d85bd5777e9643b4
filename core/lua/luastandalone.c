/* luastandalone.c — routers and losses created from Lua, run on Lua tables. */
#include "lua/luastandalone.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "base/crash.h"
#include "nn/params.h"
#include "plugin/pluginhost.h"

#define ROUTER_T "moelab.standalone_router"
#define LOSS_T "moelab.standalone_loss"
#define GUARD_T "moelab.standalone_guard"
#define BUDGET_KEY "moelab.standalone_budget"
#define MAXT 16

/* What a script can make the host hold outside its own memory (docs/lua-api.md, "Memory").
 * Per call: rows and rows*width of any matrix it passes. The buffers of a call and of a
 * router's last forward are Lua userdata, so they count against lua.memory_mb and are freed
 * by the collector on any error. Router tensors (params, grads, moments, states) are plain C
 * blocks; all standalone routers of one Lua state share TENSOR_BUDGET for them. */
#define MAX_ROWS 65536
#define MAX_ELEMS (1 << 24)
#define MAX_EXPERTS 4096
#define MAX_CLASSES 65536
#define TENSOR_BUDGET ((size_t)1 << 30)

typedef struct srouter {
    unsigned busy, gen; /* busy: the generation of the call in progress, 0 when idle */
    size_t charged;     /* bytes of P and S counted in *budget */
    size_t *budget;
    const ml_plugin *p;
    const ml_router_api *api;
    void *self;
    int D, N;
    ml_params P, S;
    int np, ns, hp[MAXT], hs[MAXT], pexp[MAXT], sexp[MAXT];
    ml_rng rng;
    int64_t step;
    /* last forward: pointers into the block in user value 2 */
    int B;
    float *x, *logits, *prob, *gate;
    int32_t *ds, *de, *ids;
    int n_disp, n_dropped;
} srouter;

typedef struct sloss {
    unsigned busy, gen;
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

/* A zeroed block of n bytes, 64-byte aligned like ml_alloc_floats, owned by a userdata pushed
 * on the stack: it counts against lua.memory_mb, and an error anywhere frees it with the stack
 * (a failed call cannot leak). */
static void *scratch(lua_State *L, size_t n) {
    char *p = lua_newuserdatauv(L, n + 64, 0);
    memset(p, 0, n + 64);
    return (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63);
}

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Arguments are read raw (lua_rawlen, lua_rawget[i]): a __len or __index of a script table
 * would run Lua code in the middle of a call, and that code could call back into the same
 * router. Tables with metatables are read as the plain tables they are. */
static int count_rows(lua_State *L, int idx, int W, const char *what) {
    if (!lua_istable(L, idx)) luaL_error(L, "%s: expected a table of rows", what);
    lua_Unsigned n = lua_rawlen(L, idx);
    if (n < 1 || n > MAX_ROWS || (uint64_t)n * (uint64_t)W > (uint64_t)MAX_ELEMS)
        luaL_error(L, "%s: expected 1..%d rows with rows * width <= %d, got %I rows of width %d", what, MAX_ROWS,
                   MAX_ELEMS, (lua_Integer)n, W);
    return (int)n;
}

static void fill_rows(lua_State *L, int idx, float *m, int B, int W, const char *what) {
    for (int b = 0; b < B; b++) {
        lua_rawgeti(L, idx, b + 1);
        if (!lua_istable(L, -1) || lua_rawlen(L, -1) != (lua_Unsigned)W)
            luaL_error(L, "%s: row %d must be a table of %d numbers", what, b + 1, W);
        for (int j = 0; j < W; j++) {
            lua_rawgeti(L, -1, j + 1);
            m[(size_t)b * W + j] = (float)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
}

/* (B, W) matrix from a table of rows; pushes the scratch block that holds it */
static float *read_matrix(lua_State *L, int idx, int *B, int W, const char *what) {
    idx = lua_absindex(L, idx);
    int n = count_rows(L, idx, W, what);
    float *m = scratch(L, (size_t)n * W * sizeof(float));
    fill_rows(L, idx, m, n, W, what);
    *B = n;
    return m;
}

/* field k of the plain table at idx, pushed */
static int rawfield(lua_State *L, int idx, const char *k) {
    idx = lua_absindex(L, idx);
    lua_pushstring(L, k);
    return lua_rawget(L, idx);
}

/* A router or loss is not re-entrant: the plugin's state and the router's buffers are shared
 * by all its calls. With raw argument access, Lua code runs inside a call only as a finalizer
 * (a collection step while the call allocates); a call from there is refused. A to-be-closed
 * guard clears the flag on return and on error. An error that kills a coroutine leaves its
 * guard open, so a flag whose owning thread (user value 1) is dead is stale. */
typedef struct guard {
    unsigned *busy, gen;
} guard;

static int guard_close(lua_State *L) {
    guard *g = lua_touserdata(L, 1);
    if (g && g->busy && *g->busy == g->gen) *g->busy = 0;
    if (g) g->busy = NULL;
    return 0;
}

/* obj: stack index 1, a userdata whose user value 1 names the owning thread */
static void check_idle(lua_State *L, unsigned busy, const char *what) {
    if (!busy) return;
    lua_getiuservalue(L, 1, 1);
    lua_State *owner = lua_tothread(L, -1);
    lua_pop(L, 1);
    if (!owner || lua_status(owner) == LUA_OK || lua_status(owner) == LUA_YIELD)
        luaL_error(L, "%s is busy (re-entered from a metamethod)", what);
}

static void enter(lua_State *L, unsigned *busy, unsigned *gen, const char *what) {
    check_idle(L, *busy, what);
    guard *g = lua_newuserdatauv(L, sizeof *g, 0);
    g->busy = NULL;
    luaL_setmetatable(L, GUARD_T);
    lua_toclose(L, -1);
    lua_pushthread(L);
    lua_setiuservalue(L, 1, 1);
    if (++*gen == 0) ++*gen;
    g->gen = *busy = *gen;
    g->busy = busy;
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

/* forgets the last forward; its block (user value 2 of the router at idx) becomes garbage */
static void drop_fwd(lua_State *L, int idx, srouter *r) {
    r->x = r->logits = r->prob = r->gate = NULL;
    r->ds = r->de = r->ids = NULL;
    r->B = r->n_disp = r->n_dropped = 0;
    lua_pushnil(L);
    lua_setiuservalue(L, idx, 2);
}

static size_t tensor_bytes(const srouter *r) {
    return (r->P.total * (r->P.trainable ? 4 : 1) + r->S.total * (r->S.trainable ? 4 : 1)) * sizeof(float);
}

/* Counts `want` bytes of r's tensors against the state's budget; 0 when they do not fit
 * (nothing changes then). */
static int charge(srouter *r, size_t want) {
    size_t others = *r->budget - r->charged;
    if (want > TENSOR_BUDGET || others > TENSOR_BUDGET - want) return 0;
    *r->budget = others + want;
    r->charged = want;
    return 1;
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
    lua_getfield(L, LUA_REGISTRYINDEX, BUDGET_KEY);
    size_t *budget = lua_touserdata(L, -1);
    lua_pop(L, 1);
    srouter *r = lua_newuserdatauv(L, sizeof *r, 2);
    memset(r, 0, sizeof *r);
    r->budget = budget;
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
    if (!charge(r, tensor_bytes(r)))
        return luaL_error(L, "moelab.router: its tensors (%d MB) do not fit in what is left of the %d MB all "
                             "standalone routers of a script may hold",
                          (int)(tensor_bytes(r) >> 20), (int)(TENSOR_BUDGET >> 20));
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
    r->x = r->logits = r->prob = r->gate = NULL; /* the block is the collector's */
    r->ds = r->de = r->ids = NULL;
    r->B = 0;
    if (r->budget) *r->budget -= r->charged;
    r->charged = 0;
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
    lua_settop(L, 3);
    luaL_checkstack(L, 16, NULL);
    enter(L, &r->busy, &r->gen, "router"); /* 4 */
    /* every argument is read and checked before the router's buffers are sized from it */
    int B = count_rows(L, 2, r->D, "forward: x"), training = 0;
    if ((int64_t)B * r->N > MAX_ELEMS)
        return luaL_error(L, "forward: rows * experts must be <= %d, got %d rows for %d experts", MAX_ELEMS, B, r->N);
    size_t BD = (size_t)B * r->D, BN = (size_t)B * r->N;
    size_t o_l = up64(BD * sizeof(float)), o_p = o_l + up64(BN * sizeof(float)), o_g = o_p + up64(BN * sizeof(float));
    size_t o_ds = o_g + up64(BN * sizeof(float)), o_de = o_ds + up64(BN * sizeof(int32_t));
    size_t o_id = o_de + up64(BN * sizeof(int32_t)), total = o_id + up64((size_t)B * sizeof(int32_t));
    char *blk = scratch(L, total); /* 5 */
    float *x = (float *)blk;
    int32_t *ids = (int32_t *)(blk + o_id);
    fill_rows(L, 2, x, B, r->D, "forward: x");
    for (int b = 0; b < B; b++) ids[b] = b;
    if (lua_istable(L, 3)) {
        rawfield(L, 3, "training");
        training = lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (rawfield(L, 3, "ids") == LUA_TTABLE)
            for (int b = 0; b < B; b++) {
                lua_rawgeti(L, -1, b + 1);
                lua_Integer v = lua_tointeger(L, -1);
                if (v < INT32_MIN || v > INT32_MAX)
                    return luaL_error(L, "forward: ids[%d] = %I is not a 32-bit integer", b + 1, v);
                ids[b] = (int32_t)v;
                lua_pop(L, 1);
            }
        lua_pop(L, 1);
    }
    /* the new forward replaces the last one (the old block becomes garbage) */
    lua_pushvalue(L, 5);
    lua_setiuservalue(L, 1, 2);
    r->x = x;
    r->logits = (float *)(blk + o_l);
    r->prob = (float *)(blk + o_p);
    r->gate = (float *)(blk + o_g);
    r->ds = (int32_t *)(blk + o_ds);
    r->de = (int32_t *)(blk + o_de);
    r->ids = ids;
    r->B = B;
    r->n_disp = r->n_dropped = 0;
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
    if (frc || rt.n_disp < 0 || (size_t)rt.n_disp > BN) {
        drop_fwd(L, 1, r); /* a backward needs a forward that succeeded */
        if (frc) return luaL_error(L, "router '%s' forward: %s", r->p->name, err);
        /* the dispatch is read back below */
        return luaL_error(L, "router '%s' forward: n_disp = %d, expected 0..%d", r->p->name, rt.n_disp, (int)BN);
    }
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

/* optional field k of the table at 2: B rows of W numbers, or NULL when absent; pushes one value */
static float *opt_rows(lua_State *L, const char *k, int B, int W, const char *what) {
    if (rawfield(L, 2, k) == LUA_TNIL) return NULL;
    int idx = lua_gettop(L), n = count_rows(L, idx, W, what);
    if (n != B) luaL_error(L, "%s has %d rows, the last forward had %d", what, n, B);
    float *m = scratch(L, (size_t)n * W * sizeof(float));
    fill_rows(L, idx, m, n, W, what);
    lua_replace(L, idx);
    return m;
}

/* r:backward{dgate={...}, dprob=rows, dlogits=rows} -> dx rows, {param name -> flat grad} */
static int router_backward(lua_State *L) {
    srouter *r = check_router(L);
    lua_settop(L, 2);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checkstack(L, 16, NULL);
    enter(L, &r->busy, &r->gen, "router"); /* 3 */
    if (!r->B) return luaL_error(L, "backward: call forward first");
    /* every argument is read before the plugin sees the buffers; all of them are scratch */
    int B = r->B, K = r->n_disp;
    float *dgate = scratch(L, ((size_t)K + 1) * sizeof(float));
    if (rawfield(L, 2, "dgate") == LUA_TTABLE)
        for (int t = 0; t < K; t++) {
            lua_rawgeti(L, -1, t + 1);
            dgate[t] = (float)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
    lua_pop(L, 1);
    float *dprob = opt_rows(L, "dprob", B, r->N, "backward: dprob");
    float *dlogits = opt_rows(L, "dlogits", B, r->N, "backward: dlogits");
    float *dx = scratch(L, (size_t)B * r->D * sizeof(float));
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
    if (rc) return luaL_error(L, "router '%s' backward: %s", r->p->name, err);
    push_matrix(L, dx, B, r->D);
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
    lua_settop(L, 1);
    enter(L, &r->busy, &r->gen, "router"); /* a finalizer must not regrow P while it is read */
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
    check_idle(L, r->busy, "router");
    for (int b = 0; b < 2; b++) {
        ml_params *P = b ? &r->S : &r->P;
        int h = ml_params_find(P, name);
        if (h < 0) continue;
        if ((size_t)lua_rawlen(L, 3) != P->t[h].n)
            return luaL_error(L, "set: tensor '%s' has %d elements, got %d", name, (int)P->t[h].n, (int)lua_rawlen(L, 3));
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
    check_idle(L, r->busy, "router");
    int n = (int)ni;
    /* the grown tensors must fit the state's budget (per-expert rows scale with N; 16-float
     * padding per tensor); checked before anything grows */
    size_t want = 0;
    for (int b = 0; b < 2; b++) {
        const ml_params *P = b ? &r->S : &r->P;
        size_t fl = 0;
        for (int i = 0; i < (b ? r->ns : r->np); i++) {
            const ml_tensor *t = &P->t[b ? r->hs[i] : r->hp[i]];
            fl += ((b ? r->sexp[i] : r->pexp[i]) ? t->n / (size_t)old * (size_t)(old + n) : t->n) + 16;
        }
        want += fl * (P->trainable ? 4 : 1) * sizeof(float);
    }
    if (!charge(r, want))
        return luaL_error(L, "add_experts: the router's tensors (%d MB) would not fit in what is left of the %d MB "
                             "all standalone routers of a script may hold",
                          (int)(want >> 20), (int)(TENSOR_BUDGET >> 20));
    r->N += n;
    for (int i = 0; i < r->np; i++)
        if (r->pexp[i] && ml_params_grow(&r->P, r->hp[i], r->N)) return luaL_error(L, "%s", ml_error());
    for (int i = 0; i < r->ns; i++)
        if (r->sexp[i] && ml_params_grow(&r->S, r->hs[i], r->N)) return luaL_error(L, "%s", ml_error());
    if (ml_params_commit(&r->P, &r->rng) || ml_params_commit(&r->S, &r->rng)) return luaL_error(L, "%s", ml_error());
    charge(r, tensor_bytes(r)); /* the estimate above is an upper bound */
    drop_fwd(L, 1, r);
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
    check_idle(L, r->busy, "router");
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
    sloss *s = lua_newuserdatauv(L, sizeof *s, 1);
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
    lua_settop(L, 2);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checkstack(L, 24, NULL);
    enter(L, &s->busy, &s->gen, "loss"); /* 3 */
    /* everything is read raw and checked before the plugin sees it; buffers are scratch */
    int B, N, B2;
    rawfield(L, 2, "prob"); /* 4 */
    luaL_argexpected(L, lua_istable(L, 4), 2, "table with prob = rows");
    lua_rawgeti(L, 4, 1);
    lua_Unsigned w = lua_istable(L, -1) ? lua_rawlen(L, -1) : 0;
    lua_pop(L, 1);
    if (w < 1 || w > MAX_EXPERTS) return luaL_error(L, "eval: prob must be a table of rows of 1..%d numbers", MAX_EXPERTS);
    N = (int)w;
    float *prob = read_matrix(L, 4, &B, N, "eval: prob");
    size_t BN = (size_t)B * N;
    float *logits;
    if (rawfield(L, 2, "logits") != LUA_TNIL) {
        logits = read_matrix(L, -1, &B2, N, "eval: logits");
        if (B2 != B) return luaL_error(L, "eval: logits has %d rows, prob has %d", B2, B);
    } else {
        logits = scratch(L, BN * sizeof(float));
        for (size_t i = 0; i < BN; i++) logits[i] = logf(prob[i] > 1e-30f ? prob[i] : 1e-30f);
    }
    int32_t *ds = scratch(L, BN * sizeof(int32_t)), *de = scratch(L, BN * sizeof(int32_t)), *lab = NULL;
    float *g = scratch(L, BN * sizeof(float));
    int K = 0, classes = 0;
    if (rawfield(L, 2, "dispatch") == LUA_TTABLE) {
        int d = lua_gettop(L);
        lua_Unsigned k = lua_rawlen(L, d);
        if (k > BN) return luaL_error(L, "eval: dispatch has %I entries, at most rows * experts = %d", (lua_Integer)k, (int)BN);
        K = (int)k;
        for (int t = 0; t < K; t++) {
            if (lua_rawgeti(L, d, t + 1) != LUA_TTABLE)
                return luaL_error(L, "eval: dispatch[%d] must be a table {sample=, expert=, gate=}", t + 1);
            rawfield(L, -1, "sample");
            rawfield(L, -2, "expert");
            rawfield(L, -3, "gate");
            lua_Integer sm = lua_tointeger(L, -3), ex = lua_tointeger(L, -2);
            if (sm < 1 || sm > B || ex < 1 || ex > N)
                return luaL_error(L, "eval: dispatch[%d] = {sample=%I, expert=%I}, expected sample in 1..%d and "
                                     "expert in 1..%d",
                                  t + 1, sm, ex, B, N);
            ds[t] = (int32_t)sm - 1;
            de[t] = (int32_t)ex - 1;
            g[t] = (float)lua_tonumber(L, -1);
            lua_pop(L, 4);
        }
    }
    lua_pop(L, 1);
    int maxc = MAX_CLASSES;
    if (rawfield(L, 2, "classes") != LUA_TNIL) {
        lua_Integer c = lua_tointeger(L, -1);
        if (c < 1 || c > MAX_CLASSES) return luaL_error(L, "eval: classes must be an integer in 1..%d", MAX_CLASSES);
        maxc = classes = (int)c;
    }
    lua_pop(L, 1);
    if (rawfield(L, 2, "labels") == LUA_TTABLE) {
        lab = scratch(L, (size_t)B * sizeof(int32_t));
        for (int b = 0; b < B; b++) {
            lua_rawgeti(L, -2, b + 1);
            int isint;
            lua_Integer v = lua_tointegerx(L, -1, &isint);
            if (!isint || v < 1 || v > maxc)
                return luaL_error(L, "eval: labels[%d] must be an integer in 1..%d (one label per row of prob)", b + 1,
                                  maxc);
            lab[b] = (int32_t)v - 1;
            if (lab[b] + 1 > classes) classes = lab[b] + 1;
            lua_pop(L, 1);
        }
    } else if (classes) classes = 0; /* no labels: the plugin sees none */
    float *dp = scratch(L, BN * sizeof(float)), *dl = scratch(L, BN * sizeof(float));
    ml_routing_record rec = {sizeof rec, B, N, logits, prob, ds, de, g, K, lab, classes};
    double v = 0;
    char err[ML_ERR_MAX] = "";
    ml_crash_enter(ml_plugin_file(s->p), "eval");
    int rc = s->api->eval(s->self, &rec, &v, 1.0f, dl, dp, err);
    ml_crash_leave();
    ml_err_seal(err);
    if (rc) return luaL_error(L, "loss '%s': %s", s->p->name, err);
    lua_pushnumber(L, v);
    lua_createtable(L, 0, 2);
    push_matrix(L, dp, B, N);
    lua_setfield(L, -2, "dprob");
    push_matrix(L, dl, B, N);
    lua_setfield(L, -2, "dlogits");
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
    /* getmetatable(r) must not hand out __gc: called by hand it frees what a call is using */
    lua_pushliteral(L, "moelab.router");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
    luaL_newmetatable(L, LOSS_T);
    lua_newtable(L);
    lua_pushcfunction(L, loss_eval);
    lua_setfield(L, -2, "eval");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, loss_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "moelab.loss");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
    luaL_newmetatable(L, GUARD_T);
    lua_pushcfunction(L, guard_close);
    lua_setfield(L, -2, "__close");
    lua_pop(L, 1);
    /* bytes of standalone router tensors held by this state (reached through the registry,
     * which scripts cannot see) */
    size_t *budget = lua_newuserdatauv(L, sizeof *budget, 0);
    *budget = 0;
    lua_setfield(L, LUA_REGISTRYINDEX, BUDGET_KEY);
    lua_pushcfunction(L, l_router);
    lua_setfield(L, -2, "router");
    lua_pushcfunction(L, l_loss);
    lua_setfield(L, -2, "loss");
}
