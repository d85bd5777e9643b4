/* luastandalone.c — routers and losses created from Lua, run on Lua tables, through the
   same router and loss hosts a run uses (plugin/router_host.h, plugin/loss_host.h). */
#include "lua/luastandalone.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/common.h"
#include "lua/luaaux.h"
#include "model/moe.h"
#include "nn/params.h"
#include "plugin/loader.h"
#include "plugin/loss_host.h"
#include "plugin/options.h"
#include "plugin/router_host.h"

#define ROUTER_T "moelab.standalone_router"
#define LOSS_T "moelab.standalone_loss"
#define GUARD_T "moelab.standalone_guard"
#define BUDGET_KEY "moelab.standalone_budget"

/* What a script can make the host hold outside its own memory (docs/lua-api.md, "Memory").
 * Per call: rows and rows*width of any matrix it passes. The buffers of a call are Lua
 * userdata, so they count against lua.memory_mb and are freed by the collector on any error;
 * so is a router's copy of the input of its last forward. What the hosts keep in C — router
 * and loss tensors (params, grads, moments, states) and a router's buffers of its last
 * forward — all standalone routers and losses of one Lua state share TENSOR_BUDGET for. */
#define MAX_ROWS 65536
#define MAX_ELEMS (1 << 24)
#define MAX_EXPERTS ML_MOE_MAX_EXPERTS
#define MAX_CLASSES 65536
#define TENSOR_BUDGET ((size_t)1 << 30)

typedef struct srouter {
    unsigned busy, gen; /* busy: the generation of the call in progress, 0 when idle */
    size_t charged;     /* bytes counted in *budget */
    size_t *budget;
    ml_params P, S;
    ml_router_inst ri;
    int live;           /* ri holds a created router */
} srouter;

typedef struct sloss {
    unsigned busy, gen;
    size_t charged;
    size_t *budget;
    ml_params S;
    ml_loss_inst li;
    int N;              /* experts its per-expert state was laid out for (0: none) */
    int live;
} sloss;

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

static size_t block_bytes(const ml_params *P) {
    return P->total * (P->trainable ? 4 : 1) * sizeof(float);
}

/* What the router host keeps for a forward of B rows with N experts (router_host.c reserve). */
static size_t fwd_bytes(size_t B, size_t N) {
    size_t BN = B * N;
    return BN * (3 * sizeof(float) + 2 * sizeof(int32_t)) + BN / 8 + 8 + N * sizeof(int32_t) + B * sizeof(int32_t) + 6 * 64;
}

/* Counts `want` bytes against the state's budget in place of what was counted before;
   0 when they do not fit (nothing changes then). */
static int charge(size_t *budget, size_t *charged, size_t want) {
    size_t others = *budget - *charged;
    if (want > TENSOR_BUDGET || others > TENSOR_BUDGET - want) return 0;
    *budget = others + want;
    *charged = want;
    return 1;
}

static size_t router_bytes(const srouter *r, size_t B, size_t N) {
    return block_bytes(&r->P) + block_bytes(&r->S) + fwd_bytes(B, N);
}

static srouter *check_router(lua_State *L) { return luaL_checkudata(L, 1, ROUTER_T); }

static size_t *get_budget(lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, BUDGET_KEY);
    size_t *budget = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return budget;
}

/* moelab.router(name, options, {dim=, experts=, seed=}) */
static int l_router(lua_State *L) {
    const ml_plugin *p = load_kind(L, ML_PLUGIN_ROUTER, luaL_checkstring(L, 1));
    ml_optval opt[ML_MAX_OPTIONS];
    if (ml_option_defaults(p, opt)) return luaL_error(L, "%s", ml_error());
    ml_lua_read_options(L, 2, p, opt, NULL, "moelab.router");
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "dim");
    lua_getfield(L, 3, "experts");
    lua_getfield(L, 3, "seed");
    lua_Integer Di = luaL_checkinteger(L, -3), Ni = luaL_checkinteger(L, -2);
    lua_Integer seed = luaL_optinteger(L, -1, 1);
    lua_pop(L, 3);
    /* the router's tensors live outside the Lua allocator (lua.memory_mb does not see them) */
    if (Di < 1 || Ni < 1 || Di > 65536 || Ni > MAX_EXPERTS || Di * Ni > (1 << 24))
        return luaL_error(L, "moelab.router: expected dim in 1..65536 and experts in 1..%d with dim*experts <= %d, "
                             "got dim %I, experts %I", MAX_EXPERTS, 1 << 24, Di, Ni);
    int D = (int)Di, N = (int)Ni;
    srouter *r = lua_newuserdatauv(L, sizeof *r, 2);
    memset(r, 0, sizeof *r);
    r->budget = get_budget(L);
    ml_params_init(&r->P, 1);
    ml_params_init(&r->S, 0);
    luaL_setmetatable(L, ROUTER_T); /* from here __gc releases whatever init made */
    r->live = 1;
    /* one RNG initialises the tensors and then drives the routing, as it always has here */
    if (ml_router_inst_init(&r->ri, p, opt, 0, D, N, (uint64_t)seed, (uint64_t)seed, &r->P, &r->S, "") ||
        ml_params_commit(&r->P, &r->ri.rng) || ml_params_commit(&r->S, &r->ri.rng))
        return luaL_error(L, "%s", ml_error());
    if (!charge(r->budget, &r->charged, router_bytes(r, 0, 0)))
        return luaL_error(L, "moelab.router: its tensors (%d MB) do not fit in what is left of the %d MB all "
                             "standalone routers and losses of a script may hold",
                          (int)(router_bytes(r, 0, 0) >> 20), (int)(TENSOR_BUDGET >> 20));
    return 1;
}

static int router_gc(lua_State *L) {
    srouter *r = check_router(L);
    if (r->live) ml_router_inst_release(&r->ri);
    r->live = 0;
    if (r->budget) *r->budget -= r->charged;
    r->charged = 0;
    ml_params_free(&r->P);
    ml_params_free(&r->S);
    return 0;
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
    ml_router_inst *ri = &r->ri;
    /* every argument is read and checked before anything is sized from it */
    int B = count_rows(L, 2, ri->D, "forward: x"), training = 0;
    if ((int64_t)B * ri->N > MAX_ELEMS)
        return luaL_error(L, "forward: rows * experts must be <= %d, got %d rows for %d experts", MAX_ELEMS, B, ri->N);
    size_t BD = (size_t)B * ri->D, o_id = up64(BD * sizeof(float)), total = o_id + up64((size_t)B * sizeof(int32_t));
    char *blk = scratch(L, total); /* 5: the input, kept (user value 2) until the next forward */
    float *x = (float *)blk;
    int32_t *ids = (int32_t *)(blk + o_id);
    fill_rows(L, 2, x, B, ri->D, "forward: x");
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
    size_t cap = (size_t)(B > ri->cap_B ? B : ri->cap_B);
    if (!charge(r->budget, &r->charged, router_bytes(r, cap, (size_t)ri->N)))
        return luaL_error(L, "forward: the router's buffers for %d rows (%d MB) do not fit in what is left of the %d MB "
                             "all standalone routers and losses of a script may hold",
                          B, (int)(fwd_bytes(cap, (size_t)ri->N) >> 20), (int)(TENSOR_BUDGET >> 20));
    /* the new forward replaces the last one (the old input becomes garbage) */
    lua_pushvalue(L, 5);
    lua_setiuservalue(L, 1, 2);
    if (ml_router_inst_forward(ri, x, B, training, ids)) return luaL_error(L, "%s", ml_error());
    lua_createtable(L, 0, 4);
    push_matrix(L, ri->logits, B, ri->N);
    lua_setfield(L, -2, "logits");
    push_matrix(L, ri->prob, B, ri->N);
    lua_setfield(L, -2, "prob");
    push_dispatch(L, ri->disp_sample, ri->disp_expert, ri->disp_gate, ri->n_disp);
    lua_setfield(L, -2, "dispatch");
    lua_pushinteger(L, ri->n_dropped);
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

/* r:backward{dgate={...}, dprob=rows, dlogits=rows} -> dx rows, {param name -> flat grad};
   the gradient of the last forward, with the training flag that forward had */
static int router_backward(lua_State *L) {
    srouter *r = check_router(L);
    lua_settop(L, 2);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checkstack(L, 16, NULL);
    enter(L, &r->busy, &r->gen, "router"); /* 3 */
    ml_router_inst *ri = &r->ri;
    if (!ri->valid) return luaL_error(L, "backward: call forward first (and it must have succeeded)");
    /* every argument is read before the plugin sees the buffers; all of them are scratch */
    int B = ri->B, K = ri->n_disp;
    float *dgate = scratch(L, ((size_t)K + 1) * sizeof(float));
    if (rawfield(L, 2, "dgate") == LUA_TTABLE)
        for (int t = 0; t < K; t++) {
            lua_rawgeti(L, -1, t + 1);
            dgate[t] = (float)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
    lua_pop(L, 1);
    float *dprob = opt_rows(L, "dprob", B, ri->N, "backward: dprob");
    float *dlogits = opt_rows(L, "dlogits", B, ri->N, "backward: dlogits");
    float *dx = scratch(L, (size_t)B * ri->D * sizeof(float));
    ml_params_zero_grad(&r->P);
    if (ml_router_inst_backward(ri, dgate, dlogits, dprob, dx)) return luaL_error(L, "%s", ml_error());
    push_matrix(L, dx, B, ri->D);
    lua_newtable(L);
    for (int i = 0; i < ri->param.n; i++) {
        const ml_tensor *t = &r->P.t[ri->param.handle[i]];
        const float *g = ml_params_grad(&r->P, ri->param.handle[i]);
        lua_createtable(L, (int)t->n, 0);
        for (size_t j = 0; j < t->n; j++) {
            lua_pushnumber(L, g[j]);
            lua_rawseti(L, -2, (lua_Integer)j + 1);
        }
        lua_setfield(L, -2, t->name);
    }
    return 2;
}

/* r:tensors() -> {name -> flat array} of params and state */
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

/* r:set(name, flat) writes a tensor; r:set{option = value, ...} changes options at run time
   (ABI 1.1, options the plugin flags ML_OPTF_RUNTIME), validated as the YAML would be */
static int router_set(lua_State *L) {
    srouter *r = check_router(L);
    check_idle(L, r->busy, "router");
    if (lua_istable(L, 2)) {
        ml_optval opt[ML_MAX_OPTIONS];
        memcpy(opt, r->ri.opt, (size_t)r->ri.plugin->num_options * sizeof *opt);
        ml_lua_read_options(L, 2, r->ri.plugin, opt, NULL, "set");
        if (ml_router_inst_set_options(&r->ri, opt)) return luaL_error(L, "%s", ml_error());
        return 0;
    }
    const char *name = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
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
    return luaL_error(L, "set: router '%s' has no tensor '%s'", r->ri.plugin->name, name);
}

/* r:add_experts(n) -> new N */
static int router_add_experts(lua_State *L) {
    srouter *r = check_router(L);
    lua_Integer ni = luaL_checkinteger(L, 2);
    ml_router_inst *ri = &r->ri;
    int old = ri->N;
    /* the same bounds as moelab.router(): these tensors are outside lua.memory_mb */
    luaL_argcheck(L, ni >= 1 && old + ni <= MAX_EXPERTS && (old + ni) * ri->D <= (1 << 24), 2,
                  "expected >= 1, with at most 4096 experts and dim*experts <= 16777216");
    check_idle(L, r->busy, "router");
    int n = (int)ni;
    /* the grown tensors must fit the state's budget (per-expert rows scale with N; 16-float
     * padding per tensor); checked before anything grows */
    size_t want = 0;
    const ml_tensor_set *sets[2] = {&ri->param, &ri->state};
    for (int b = 0; b < 2; b++) {
        const ml_params *P = b ? &r->S : &r->P;
        size_t fl = 0;
        for (int i = 0; i < sets[b]->n; i++) {
            const ml_tensor *t = &P->t[sets[b]->handle[i]];
            fl += (sets[b]->decl[i].per_expert ? t->n / (size_t)old * (size_t)(old + n) : t->n) + 16;
        }
        want += fl * (P->trainable ? 4 : 1) * sizeof(float);
    }
    if (!charge(r->budget, &r->charged, want))
        return luaL_error(L, "add_experts: the router's tensors (%d MB) would not fit in what is left of the %d MB "
                             "all standalone routers and losses of a script may hold",
                          (int)(want >> 20), (int)(TENSOR_BUDGET >> 20));
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 2); /* the last forward is gone with the growth */
    if (ml_router_inst_grow_declare(ri, n) || ml_params_commit(&r->P, &ri->rng) || ml_params_commit(&r->S, &ri->rng))
        return luaL_error(L, "%s", ml_error());
    charge(r->budget, &r->charged, router_bytes(r, 0, 0)); /* the estimate above is an upper bound */
    if (ml_router_inst_grow_finish(ri, old)) return luaL_error(L, "%s", ml_error());
    lua_pushinteger(L, ri->N);
    return 1;
}

/* r:after_backward(grad_mag, load) sends ML_EV_AFTER_BACKWARD with the given per-expert arrays */
static int router_after_backward(lua_State *L) {
    srouter *r = check_router(L);
    check_idle(L, r->busy, "router");
    int N = r->ri.N;
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 3);
    float *gm = scratch(L, (size_t)N * sizeof(float)), *ld = scratch(L, (size_t)N * sizeof(float));
    for (int t = 0; t < 2; t++)
        for (int e = 0; e < N; e++) {
            lua_rawgeti(L, 2 + t, e + 1);
            (t ? ld : gm)[e] = (float)lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
    if (ml_router_inst_after_backward(&r->ri, gm, ld)) return luaL_error(L, "%s", ml_error());
    return 0;
}

/* r:epoch_end() sends ML_EV_EPOCH_END (the epoch counts from 1) */
static int router_epoch_end(lua_State *L) {
    srouter *r = check_router(L);
    check_idle(L, r->busy, "router");
    if (ml_router_inst_epoch_end(&r->ri, r->ri.epoch + 1)) return luaL_error(L, "%s", ml_error());
    return 0;
}

/* r:metrics() -> {train = {name = mean}, eval = {...}, epoch = {...}} since the last call */
static int router_metrics(lua_State *L) {
    srouter *r = check_router(L);
    static const char *wn[3] = {"train", "eval", "epoch"};
    lua_createtable(L, 0, 3);
    for (int w = 0; w < 3; w++) {
        const char *names[ML_ROUTER_MAX_METRICS];
        double vals[ML_ROUTER_MAX_METRICS];
        int n = ml_router_inst_metrics(&r->ri, w, names, vals, ML_ROUTER_MAX_METRICS);
        lua_createtable(L, 0, n);
        for (int i = 0; i < n; i++) {
            lua_pushnumber(L, vals[i]);
            lua_setfield(L, -2, names[i]);
        }
        lua_setfield(L, -2, wn[w]);
        ml_router_inst_metrics_reset(&r->ri, w);
    }
    return 1;
}

static const luaL_Reg router_methods[] = {
    {"forward", router_forward},   {"backward", router_backward},     {"tensors", router_tensors},
    {"set", router_set},           {"add_experts", router_add_experts}, {"after_backward", router_after_backward},
    {"epoch_end", router_epoch_end}, {"metrics", router_metrics},     {NULL, NULL}};

static int router_index(lua_State *L) {
    srouter *r = check_router(L);
    const char *k = luaL_checkstring(L, 2);
    if (!strcmp(k, "num_experts")) lua_pushinteger(L, r->ri.N);
    else if (!strcmp(k, "dim")) lua_pushinteger(L, r->ri.D);
    else if (!strcmp(k, "name")) lua_pushstring(L, r->ri.plugin->name);
    else if (!strcmp(k, "options")) ml_lua_push_options(L, r->ri.plugin, r->ri.opt);
    else {
        lua_pushvalue(L, lua_upvalueindex(1)); /* the methods table */
        if (lua_getfield(L, -1, k) == LUA_TNIL) return luaL_error(L, "router has no field '%s'", k);
    }
    return 1;
}

/* moelab.loss(name, options [, {experts=N, layer=L}]) */
static int l_loss(lua_State *L) {
    const ml_plugin *p = load_kind(L, ML_PLUGIN_LOSS, luaL_checkstring(L, 1));
    ml_optval opt[ML_MAX_OPTIONS];
    if (ml_option_defaults(p, opt)) return luaL_error(L, "%s", ml_error());
    ml_lua_read_options(L, 2, p, opt, NULL, "moelab.loss");
    lua_Integer N = 0, layer = 1;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "experts");
        lua_getfield(L, 3, "layer");
        N = luaL_optinteger(L, -2, 0);
        layer = luaL_optinteger(L, -1, 1);
        lua_pop(L, 2);
        if (N < 0 || N > MAX_EXPERTS || layer < 1 || layer > 64)
            return luaL_error(L, "moelab.loss: expected experts in 1..%d and layer in 1..64, got experts %I, layer %I",
                              MAX_EXPERTS, N, layer);
    }
    sloss *s = lua_newuserdatauv(L, sizeof *s, 1);
    memset(s, 0, sizeof *s);
    s->budget = get_budget(L);
    ml_params_init(&s->S, 0);
    luaL_setmetatable(L, LOSS_T);
    s->live = 1;
    s->N = (int)N;
    ml_rng rng;
    ml_rng_seed(&rng, 1);
    if (ml_loss_inst_init(&s->li, p, opt, (int)layer - 1, (int)layer, N ? (int)N : 1, &s->S, "") ||
        ml_params_commit(&s->S, &rng))
        return luaL_error(L, "%s", ml_error());
    int per_expert = 0;
    for (int i = 0; i < s->li.state.n; i++) per_expert |= s->li.state.decl[i].per_expert;
    if (per_expert && !N)
        return luaL_error(L, "moelab.loss: loss '%s' keeps per-expert state: give {experts = N}", p->name);
    if (!charge(s->budget, &s->charged, block_bytes(&s->S)))
        return luaL_error(L, "moelab.loss: its state (%d MB) does not fit in what is left of the %d MB all standalone "
                             "routers and losses of a script may hold",
                          (int)(block_bytes(&s->S) >> 20), (int)(TENSOR_BUDGET >> 20));
    return 1;
}

static int loss_gc(lua_State *L) {
    sloss *s = luaL_checkudata(L, 1, LOSS_T);
    if (s->live) ml_loss_inst_release(&s->li);
    s->live = 0;
    if (s->budget) *s->budget -= s->charged;
    s->charged = 0;
    ml_params_free(&s->S);
    return 0;
}

/* l:eval{prob=rows, logits=rows, dispatch={{sample,expert,gate}...}, labels={...}, classes=C,
 * training=bool} -> value, {dprob=rows, dlogits=rows, dgate={...}} */
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
    if (s->N && N != s->N)
        return luaL_error(L, "eval: prob has %d columns, the loss was created for %d experts", N, s->N);
    float *prob = read_matrix(L, 4, &B, N, "eval: prob");
    size_t BN = (size_t)B * N;
    /* the logits are the router's own scores, not something moelab could make up from prob
       (z_loss of log(prob) is ~0 whatever the logits were): required */
    if (rawfield(L, 2, "logits") == LUA_TNIL)
        return luaL_error(L, "eval: logits missing (give the router's logits, e.g. out.logits of r:forward)");
    float *logits = read_matrix(L, -1, &B2, N, "eval: logits");
    if (B2 != B) return luaL_error(L, "eval: logits has %d rows, prob has %d", B2, B);
    int32_t *ds = scratch(L, BN * sizeof(int32_t)), *de = scratch(L, BN * sizeof(int32_t)), *lab = NULL;
    float *g = scratch(L, BN * sizeof(float) + 4);
    int K = 0, classes = 0, training = 0;
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
    rawfield(L, 2, "training");
    training = lua_toboolean(L, -1);
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
    float *dg = scratch(L, ((size_t)K + 1) * sizeof(float));
    ml_routing_record rec;
    memset(&rec, 0, sizeof rec);
    rec.size = sizeof rec;
    rec.B = B, rec.N = N, rec.logits = logits, rec.prob = prob;
    rec.disp_sample = ds, rec.disp_expert = de, rec.disp_gate = g, rec.n_disp = K;
    rec.label = lab, rec.num_classes = classes, rec.training = training;
    double v = 0;
    if (ml_loss_inst_eval(&s->li, &rec, 1.0f, dl, dp, dg, &v)) return luaL_error(L, "%s", ml_error());
    lua_pushnumber(L, v);
    lua_createtable(L, 0, 3);
    push_matrix(L, dp, B, N);
    lua_setfield(L, -2, "dprob");
    push_matrix(L, dl, B, N);
    lua_setfield(L, -2, "dlogits");
    lua_createtable(L, K, 0);
    for (int t = 0; t < K; t++) {
        lua_pushnumber(L, dg[t]);
        lua_rawseti(L, -2, t + 1);
    }
    lua_setfield(L, -2, "dgate");
    return 2;
}

void ml_lua_open_standalone(lua_State *L) {
    luaL_newmetatable(L, ROUTER_T);
    luaL_newlib(L, router_methods);
    lua_pushcclosure(L, router_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, router_gc);
    lua_setfield(L, -2, "__gc");
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
    /* bytes of standalone router and loss tensors held by this state (reached through the
     * registry, which scripts cannot see) */
    size_t *budget = lua_newuserdatauv(L, sizeof *budget, 0);
    *budget = 0;
    lua_setfield(L, LUA_REGISTRYINDEX, BUDGET_KEY);
    lua_pushcfunction(L, l_router);
    lua_setfield(L, -2, "router");
    lua_pushcfunction(L, l_loss);
    lua_setfield(L, -2, "loss");
}
