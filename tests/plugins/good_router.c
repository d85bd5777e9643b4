/*
 * good_router.c — test plugin: a valid minimal router
 * Top-1 softmax router over x W^T, gate = prob.
 */
#include <math.h>

#include "moelab/plugin.h"

#define BROKEN 0
/* tests/plugins/ctor_marker.c builds this router again under another name */
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
    (void)self, (void)out, (void)cap;
    return 0;
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
#if !BROKEN
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
