/*
 * FROZEN ABI 1.1 FIXTURE — a router built against the frozen 1.1 header, as a plugin written
 * before ABI 1.2 is: top-1 of softmax(x W^T + b) with a per-expert state tensor `count` (the
 * samples dispatched to each expert, reported to routing.csv). It knows nothing of
 * ML_EV_EXPERTS_REMOVED: when experts are removed the host keeps the kept experts' rows of
 * w, b and count itself (tests/check_abi.c). Self-contained: the 1.1 plugin_aux.h is not
 * frozen, so the little math is written out here.
 */
#include <math.h>
#include <stdio.h>

#include "moelab/plugin.h"

typedef struct rt {
    const ml_host *host;
    int dim;
    float *dz;
    size_t cap;
} rt;

enum { P_W, P_B };

static void *create(const ml_host *host, const ml_router_init *init, char *err) {
    if (init->dim < 1) {
        snprintf(err, ML_ERR_MAX, "counting_v1_1: dim %d", init->dim);
        return NULL;
    }
    rt *r = host->alloc(sizeof *r);
    if (!r) {
        snprintf(err, ML_ERR_MAX, "counting_v1_1: out of memory");
        return NULL;
    }
    r->host = host;
    r->dim = init->dim;
    return r;
}

static void destroy(void *self) {
    rt *r = self;
    if (!r) return;
    r->host->free(r->dz);
    r->host->free(r);
}

static int params(void *self, ml_tensor_decl *out, int cap) {
    rt *r = self;
    if (cap < 2) return -1;
    out[P_W] = (ml_tensor_decl){"w", 1, 0, r->dim, ML_INIT_UNIFORM_FANIN, 0, r->dim, 0};
    out[P_B] = (ml_tensor_decl){"b", 1, 0, 1, ML_INIT_UNIFORM_FANIN, 0, r->dim, 0};
    return 2;
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    (void)self;
    if (cap < 1) return -1;
    out[0] = (ml_tensor_decl){"count", 1, 0, 1, ML_INIT_ZEROS, 0, 0, 1};
    return 1;
}

static int forward(void *self, ml_route *r, char *err) {
    rt *s = self;
    (void)err;
    const int B = r->B, D = r->D, N = r->N;
    r->n_disp = r->n_dropped = 0;
    for (int b = 0; b < B; b++) {
        float *z = r->logits + (size_t)b * N, *p = r->prob + (size_t)b * N;
        int best = 0;
        for (int e = 0; e < N; e++) {
            double v = r->param[P_B][e];
            for (int d = 0; d < D; d++) v += (double)r->x[(size_t)b * D + d] * r->param[P_W][(size_t)e * D + d];
            z[e] = (float)v;
            if (z[e] > z[best]) best = e;
        }
        double sum = 0;
        for (int e = 0; e < N; e++) sum += exp((double)z[e] - z[best]);
        for (int e = 0; e < N; e++) p[e] = (float)(exp((double)z[e] - z[best]) / sum);
        r->disp_sample[r->n_disp] = b;
        r->disp_expert[r->n_disp] = best;
        r->disp_gate[r->n_disp] = p[best];
        r->n_disp++;
    }
    (void)s;
    return 0;
}

static int backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    rt *s = self;
    const int B = r->B, D = r->D, N = r->N;
    size_t need = (size_t)B * N * sizeof(float);
    if (need > s->cap) {
        s->host->free(s->dz);
        if (!(s->dz = s->host->alloc(need))) {
            s->cap = 0;
            snprintf(err, ML_ERR_MAX, "counting_v1_1: out of memory");
            return -1;
        }
        s->cap = need;
    }
    /* dprob: from the gate (gate = prob of the chosen expert) and the losses; then softmax */
    for (int b = 0; b < B; b++) {
        const float *p = r->prob + (size_t)b * N;
        float *dz = s->dz + (size_t)b * N;
        double dp[4096], dot = 0;
        for (int e = 0; e < N && e < 4096; e++) dp[e] = g->dprob ? g->dprob[(size_t)b * N + e] : 0;
        dp[r->disp_expert[b]] += g->dgate[b];
        for (int e = 0; e < N; e++) dot += p[e] * dp[e];
        for (int e = 0; e < N; e++)
            dz[e] = (float)(p[e] * (dp[e] - dot) + (g->dlogits ? g->dlogits[(size_t)b * N + e] : 0));
    }
    for (int b = 0; b < B; b++)
        for (int e = 0; e < N; e++) {
            float d = s->dz[(size_t)b * N + e];
            r->grad[P_B][e] += d;
            for (int k = 0; k < D; k++) {
                r->grad[P_W][(size_t)e * D + k] += d * r->x[(size_t)b * D + k];
                g->dx[(size_t)b * D + k] += d * r->param[P_W][(size_t)e * D + k];
            }
        }
    return 0;
}

static int event(void *self, const ml_router_event *ev, char *err) {
    (void)self, (void)err;
    if (ev->kind == ML_EV_AFTER_BACKWARD && ev->load)
        for (int e = 0; e < ev->num_experts; e++) ev->state[0][e] += ev->load[e];
    return 0; /* other kinds, known or not, are nothing to it */
}

static const ml_router_api api = {sizeof(ml_router_api), create, destroy, params, states, forward, backward, event};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    .name = "counting_v1_1",
    .version = "1.1",
    .doc = "top-1 softmax router counting its dispatches per expert (frozen ABI 1.1 fixture)",
    .options = NULL,
    .num_options = 0,
    .api = &api,
};
