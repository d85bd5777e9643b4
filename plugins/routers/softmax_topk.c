/*
 * softmax_topk — the standard MoE router (Shazeer et al. 2017 without the noise; Switch and
 * GShard with k = 1 / 2): logits = x W^T + b, prob = softmax(logits), each sample goes to
 * its k most probable experts (ties to the lower index) with gate = prob, or with the
 * top-k probabilities renormalised to sum to 1.
 *
 * Parameters: w (N, D) and b (N, 1), both U(-1/sqrt(D), 1/sqrt(D)) like nn.Linear.
 * No state; works for any B and any N (N is read from each call, so growth needs nothing).
 */
#include <math.h>
#include <string.h>

#include "moelab/plugin.h"

typedef struct router {
    const ml_host *host;
    int k, renorm, dim;
    float *scratch; /* (B, N) dprob in backward */
    size_t scratch_n;
} router;

/* both may change while the router runs (Lua exp.moe[i].router:set{k = 1}): event() takes
   the new values, and the next forward uses them */
static const ml_option options[] = {
    {"k", ML_OPT_INT, "2", 1, 64, NULL, "experts per sample (clipped to N)", ML_OPTF_RUNTIME},
    {"renormalize", ML_OPT_BOOL, "true", 0, -1, NULL,
     "divide each gate by the sum of the sample's top-k probabilities", ML_OPTF_RUNTIME},
};

static void *create(const ml_host *host, const ml_router_init *init, char *err) {
    (void)err;
    router *r = host->alloc(sizeof *r);
    if (!r) return NULL;
    r->host = host;
    r->k = (int)init->opt[0].i;
    r->renorm = (int)init->opt[1].i;
    r->dim = init->dim;
    return r;
}

static void destroy(void *self) {
    router *r = self;
    if (!r) return;
    r->host->free(r->scratch);
    r->host->free(r);
}

static int params(void *self, ml_tensor_decl *out, int cap) {
    router *r = self;
    if (cap < 2) return -1;
    ml_tensor_decl w = {"w", 1, 0, r->dim, ML_INIT_UNIFORM_FANIN, 0, r->dim, 0};
    ml_tensor_decl b = {"b", 1, 0, 1, ML_INIT_UNIFORM_FANIN, 0, r->dim, 0};
    out[0] = w;
    out[1] = b;
    return 2;
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

/* Scratch of at least n floats, zeroed. */
static float *scratch(router *r, size_t n, char *err) {
    if (n > r->scratch_n) {
        r->host->free(r->scratch);
        r->scratch = r->host->alloc(n * sizeof(float));
        r->scratch_n = r->scratch ? n : 0;
        if (!r->scratch) {
            strcpy(err, "softmax_topk: out of memory");
            return NULL;
        }
    }
    memset(r->scratch, 0, n * sizeof(float));
    return r->scratch;
}

static int forward(void *self, ml_route *rt, char *err) {
    router *r = self;
    (void)err;
    int B = rt->B, D = rt->D, N = rt->N, k = r->k < N ? r->k : N;
    const float *W = rt->param[0], *bias = rt->param[1];
    rt->n_disp = 0;
    rt->n_dropped = 0;
    if (B <= 0 || N <= 0) return 0;
    r->host->sgemm(0, 1, B, N, D, 1.0f, rt->x, D, W, D, 0.0f, rt->logits, N);
    for (int b = 0; b < B; b++) {
        float *z = rt->logits + (size_t)b * N, *p = rt->prob + (size_t)b * N;
        float m = -INFINITY;
        for (int e = 0; e < N; e++) {
            z[e] += bias[e];
            if (z[e] > m) m = z[e];
        }
        double s = 0;
        for (int e = 0; e < N; e++) s += (p[e] = expf(z[e] - m)); /* the max term is 1 */
        for (int e = 0; e < N; e++) p[e] = (float)(p[e] / s);
        /* top-k by logits (finer than probabilities that underflowed to 0); strict > keeps
           the lower index on ties */
        int first = rt->n_disp;
        double mass = 0;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < N; e++) {
                int taken = 0;
                for (int t = first; t < rt->n_disp && !taken; t++) taken = rt->disp_expert[t] == e;
                if (!taken && (best < 0 || z[e] > z[best])) best = e;
            }
            rt->disp_sample[rt->n_disp] = b;
            rt->disp_expert[rt->n_disp] = best;
            rt->disp_gate[rt->n_disp] = p[best];
            mass += p[best];
            rt->n_disp++;
        }
        if (r->renorm && mass > 0)
            for (int t = first; t < rt->n_disp; t++)
                rt->disp_gate[t] = (float)(rt->disp_gate[t] / mass);
    }
    return 0;
}

static int backward(void *self, const ml_route *rt, const ml_route_grad *g, char *err) {
    router *r = self;
    int B = rt->B, D = rt->D, N = rt->N;
    if (B <= 0 || N <= 0) return 0;
    float *dz = scratch(r, (size_t)B * N, err);
    if (!dz) return -1;
    /* dgate -> dprob. Renormalised: g_e = p_e / s, s = sum of the sample's top-k p, so
       dp_j = dg_j / s - (sum_e dg_e p_e) / s^2 for each selected j. The triples of one
       sample are contiguous (forward writes them so). */
    for (int t = 0; t < rt->n_disp;) {
        int b = rt->disp_sample[t], u = t;
        while (u < rt->n_disp && rt->disp_sample[u] == b) u++;
        const float *p = rt->prob + (size_t)b * N;
        float *dp = dz + (size_t)b * N;
        if (r->renorm) {
            double s = 0, dot = 0;
            for (int v = t; v < u; v++) {
                s += p[rt->disp_expert[v]];
                dot += (double)g->dgate[v] * p[rt->disp_expert[v]];
            }
            if (s > 0)
                for (int v = t; v < u; v++)
                    dp[rt->disp_expert[v]] += (float)(g->dgate[v] / s - dot / (s * s));
        } else {
            for (int v = t; v < u; v++) dp[rt->disp_expert[v]] += g->dgate[v];
        }
        t = u;
    }
    /* + dprob from losses, then the softmax Jacobian: dz = p * (dp - <p, dp>), + dlogits */
    for (int b = 0; b < B; b++) {
        const float *p = rt->prob + (size_t)b * N;
        float *d = dz + (size_t)b * N;
        if (g->dprob)
            for (int e = 0; e < N; e++) d[e] += g->dprob[(size_t)b * N + e];
        double dot = 0;
        for (int e = 0; e < N; e++) dot += (double)p[e] * d[e];
        for (int e = 0; e < N; e++) d[e] = (float)(p[e] * (d[e] - dot));
        if (g->dlogits)
            for (int e = 0; e < N; e++) d[e] += g->dlogits[(size_t)b * N + e];
    }
    float *dW = rt->grad[0], *db = rt->grad[1];
    r->host->sgemm(1, 0, N, D, B, 1.0f, dz, N, rt->x, D, 1.0f, dW, D); /* dW += dz^T x */
    for (int b = 0; b < B; b++)
        for (int e = 0; e < N; e++) db[e] += dz[(size_t)b * N + e];
    if (g->dx) r->host->sgemm(0, 0, B, D, N, 1.0f, dz, N, rt->param[0], D, 1.0f, g->dx, D);
    return 0;
}

static int event(void *self, const ml_router_event *ev, char *err) {
    router *r = self;
    (void)err;
    if (ev->kind == ML_EV_OPTIONS_CHANGED) {
        r->k = (int)ev->opt[0].i;
        r->renorm = (int)ev->opt[1].i;
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
    .num_options = 2,
    .api = &api,
};
