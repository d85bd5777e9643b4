/*
 * good_router.c — test plugin: a valid minimal router, top-1 softmax over x W^T with
 * gate = prob. One source, several builds (the Makefile passes the -D flags):
 *   good_router.so      as it is
 *   broken_grad.so      -DROUTER_BROKEN=1: the backward misses the softmax Jacobian
 *   states20_router.so  -DROUTER_STATES=20: 20 state tensors, within ML_MAX_TENSORS
 *   states33_router.so  -DROUTER_STATES=33: 33 state tensors, one more than any host keeps
 * and tests/plugins/ctor_marker.c includes it under another name with a constructor.
 */
#include <math.h>
#include <stdio.h>

#include "moelab/plugin.h"

#ifndef ROUTER_BROKEN
#define ROUTER_BROKEN 0
#endif
#ifndef ROUTER_STATES
#define ROUTER_STATES 0
#endif
#ifndef ROUTER_NAME
#define ROUTER_NAME "good_router"
#define ROUTER_DOC "a valid minimal router"
#endif

typedef struct rt { const ml_host *host; int dim; } rt;

static void *create(const ml_host *host, const ml_router_init *init, char *err) {
    (void)err;
    rt *r = host->alloc(sizeof *r);
    if (r) r->host = host, r->dim = init->dim;
    return r;
}

static void destroy(void *self) {
    rt *r = self;
    if (r) r->host->free(r);
}

static int params(void *self, ml_tensor_decl *out, int cap) {
    rt *r = self;
    if (cap < 1) return -1;
    ml_tensor_decl w = {.name = "w", .per_expert = 1, .cols = r->dim, .init = ML_INIT_NORMAL,
                        .init_value = 0.5f};
    out[0] = w;
    return 1;
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    (void)self;
    static char names[ROUTER_STATES + 1][16];
    int n = ROUTER_STATES < cap ? ROUTER_STATES : cap;
    if (ROUTER_STATES > cap) return ROUTER_STATES; /* more than the host asked for: it must refuse */
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "s%d", i);
        ml_tensor_decl d = {.name = names[i], .per_expert = 1, .cols = 1, .init = ML_INIT_ZEROS};
        out[i] = d;
    }
    return n;
}

static int forward(void *self, ml_route *r, char *err) {
    (void)self, (void)err;
    const float *w = r->param[0];
    r->n_disp = r->B;
    r->n_dropped = 0;
    for (int b = 0; b < r->B; b++) {
        float *z = r->logits + (size_t)b * r->N, *p = r->prob + (size_t)b * r->N;
        int best = 0;
        for (int e = 0; e < r->N; e++) {
            double s = 0;
            for (int d = 0; d < r->D; d++) s += (double)r->x[(size_t)b * r->D + d] * w[(size_t)e * r->D + d];
            z[e] = (float)s;
            if (z[e] > z[best]) best = e;
        }
        double sum = 0;
        for (int e = 0; e < r->N; e++) sum += (p[e] = expf(z[e] - z[best]));
        for (int e = 0; e < r->N; e++) p[e] = (float)(p[e] / sum);
        r->disp_sample[b] = b, r->disp_expert[b] = best, r->disp_gate[b] = p[best];
    }
    /* ABI 1.1: a metric of the step (the host averages it over the epoch's forwards) */
    double g = 0;
    for (int b = 0; b < r->B; b++) g += r->disp_gate[b];
    if (r->B) r->metric(r->metric_ctx, "gate_mean", g / r->B);
    return 0;
}

static int backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    (void)self, (void)err;
    const float *w = r->param[0];
    float dz[256];
    if (r->N > 256) return -1;
    for (int b = 0; b < r->B; b++) {
        const float *p = r->prob + (size_t)b * r->N;
        for (int e = 0; e < r->N; e++) dz[e] = g->dprob ? g->dprob[(size_t)b * r->N + e] : 0;
        dz[r->disp_expert[b]] += g->dgate[b];
#if !ROUTER_BROKEN
        double dot = 0;
        for (int e = 0; e < r->N; e++) dot += (double)p[e] * dz[e];
        for (int e = 0; e < r->N; e++) dz[e] = (float)(p[e] * (dz[e] - dot));
#else
        (void)p; /* deliberately wrong: the softmax Jacobian is missing */
#endif
        for (int e = 0; e < r->N; e++) {
            if (g->dlogits) dz[e] += g->dlogits[(size_t)b * r->N + e];
            for (int d = 0; d < r->D; d++) {
                r->grad[0][(size_t)e * r->D + d] += dz[e] * r->x[(size_t)b * r->D + d];
                if (g->dx) g->dx[(size_t)b * r->D + d] += dz[e] * w[(size_t)e * r->D + d];
            }
        }
    }
    return 0;
}

static const ml_router_api api = {
    .size = sizeof(ml_router_api), .create = create, .destroy = destroy, .params = params,
    .states = states, .forward = forward, .backward = backward, .event = NULL,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    .name = ROUTER_NAME,
    .version = "1.0",
    .doc = ROUTER_DOC,
    .options = NULL,
    .num_options = 0,
    .api = &api,
};
