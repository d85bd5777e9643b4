/*
 * softmax_topk — the standard MoE router (Shazeer et al. 2017 without the noise; Switch and
 * GShard with k = 1 / 2): logits = x W^T + b, prob = softmax(logits), each sample goes to
 * its k most probable experts (ties to the lower index) with gate = prob, or with the
 * top-k probabilities renormalised to sum to 1.
 *
 * Parameters: w (N, D) and b (N, 1), both U(-1/sqrt(D), 1/sqrt(D)) like nn.Linear.
 * No state; works for any B and any N (N is read from each call, so growth needs nothing).
 * The numerics are moelab/plugin_aux.h's: its softmax, top-k by logits (finer than
 * probabilities that underflowed to 0), renormalised gates and their backward.
 */
#include <stdio.h>

#include "moelab/plugin_aux.h"

enum { NUM_OPTS = 2 };

/* both may change while the router runs (Lua exp.moe[i].router:set{k = 1}): event() takes
   the new values, and the next forward uses them */
static const ml_option options[NUM_OPTS] = {
    {"k", ML_OPT_INT, "2", 1, 64, NULL, "experts per sample (clipped to N)", ML_OPTF_RUNTIME},
    {"renormalize", ML_OPT_BOOL, "true", 0, -1, NULL,
     "divide each gate by the sum of the sample's top-k probabilities", ML_OPTF_RUNTIME},
};

typedef struct router {
    const ml_host *host;
    int k, renorm, dim;
    ml_aux_buf dz; /* (B, N) backward: dL/dlogits */
    ml_aux_buf dp; /* (B, N) backward: dL/dprob, gates that are probabilities included */
} router;

static void *create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *k = ml_aux_option(options, NUM_OPTS, init->opt, "k");
    const ml_optval *renorm = ml_aux_option(options, NUM_OPTS, init->opt, "renormalize");
    router *r = ml_aux_new(host, sizeof *r, "softmax_topk", err);
    if (!r) return NULL;
    r->host = host;
    r->k = (int)k->i;
    r->renorm = (int)renorm->i;
    r->dim = init->dim;
    return r;
}

static void destroy(void *self) {
    router *r = self;
    if (!r) return;
    ml_aux_buf_free(r->host, &r->dz);
    ml_aux_buf_free(r->host, &r->dp);
    r->host->free(r);
}

static int params(void *self, ml_tensor_decl *out, int cap) {
    router *r = self;
    if (cap < 2) return -1;
    out[0] = ml_aux_linear_decl("w", r->dim, r->dim);
    out[1] = ml_aux_linear_decl("b", 1, r->dim);
    return 2;
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int forward(void *self, ml_route *rt, char *err) {
    router *r = self;
    (void)err;
    int B = rt->B, D = rt->D, N = rt->N, k = r->k < N ? r->k : N;
    rt->n_disp = 0;
    rt->n_dropped = 0;
    if (B <= 0 || N <= 0) return 0;
    ml_aux_linear(r->host, rt->x, rt->param[0], rt->param[1], B, D, N, rt->logits);
    ml_aux_softmax(rt->logits, rt->prob, B, N);
    ml_aux_route_topk(rt, rt->logits, rt->prob, k, r->renorm);
    return 0;
}

static int backward(void *self, const ml_route *rt, const ml_route_grad *g, char *err) {
    router *r = self;
    int B = rt->B, D = rt->D, N = rt->N, k = r->k < N ? r->k : N;
    if (B <= 0 || N <= 0) return 0;
    size_t bn = (size_t)B * N;
    float *dz = ml_aux_buf_get(r->host, &r->dz, bn * sizeof(float));
    float *dp = ml_aux_buf_get(r->host, &r->dp, bn * sizeof(float));
    if (!dz || !dp) {
        snprintf(err, ML_ERR_MAX, "softmax_topk: out of memory in backward for B=%d N=%d", B, N);
        return -1;
    }
    ml_aux_softmax_router_bwd(rt, g, r->renorm ? k : 0, dz, dp);
    ml_aux_linear_bwd(r->host, rt->x, rt->param[0], dz, B, D, N, rt->grad[0], rt->grad[1], g->dx);
    return 0;
}

static int event(void *self, const ml_router_event *ev, char *err) {
    router *r = self;
    (void)err;
    if (ev->kind == ML_EV_OPTIONS_CHANGED) {
        r->k = (int)ml_aux_option(options, NUM_OPTS, ev->opt, "k")->i;
        r->renorm = (int)ml_aux_option(options, NUM_OPTS, ev->opt, "renormalize")->i;
    }
    return 0;
}

static const ml_router_api api = {
    .size = sizeof(ml_router_api),
    .create = create,
    .destroy = destroy,
    .params = params,
    .states = states,
    .forward = forward,
    .backward = backward,
    .event = event,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    .name = "softmax_topk",
    .version = "1.0",
    .doc = "softmax over linear logits, top-k dispatch (Shazeer et al. 2017; Switch k=1)",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
