/*
 * window_loss.c — test plugin (ABI 1.1): a load-balance loss whose f is an exponential
 * moving average of the dispatch shares over training steps, kept per layer in a state
 * tensor (the shape of Qiu et al. 2025's global-batch balance, for the host test):
 *
 *     f_i <- (1 - a) f_i + a * count_i / n_disp      (training evaluations only)
 *     value = N * sum_i f_i * P_i,  P_i = mean_b prob[b, i]
 *
 * It checks that the host gives each instance its own layer (record.layer == init layer),
 * and reports the gradient through eval_v2 (dprob; none through the gates).
 */
#include <stdio.h>

#include "moelab/plugin.h"

static const ml_option options[] = {
    {.name = "rate", .type = ML_OPT_FLOAT, .def = "0.1", .min = 0, .max = 1, .doc = "EMA rate a"},
};

typedef struct loss {
    const ml_host *host;
    int layer;
    double rate;
} loss;

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    (void)err;
    loss *l = host->alloc(sizeof *l);
    if (!l) return NULL;
    l->host = host;
    l->layer = init->layer;
    l->rate = init->opt[0].f;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (l) l->host->free(l);
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    (void)self;
    if (cap < 1) return -1;
    ml_tensor_decl d = {.name = "f_ema", .per_expert = 1, .cols = 1, .init = ML_INIT_CONST, .init_value = 0.25f};
    out[0] = d;
    return 1;
}

static int eval_v2(void *self, const ml_routing_record *r, ml_loss_eval *io, char *err) {
    loss *l = self;
    if (r->layer != l->layer)
        return snprintf(err, ML_ERR_MAX, "instance of layer %d got a record of layer %d", l->layer, r->layer), -1;
    if (!r->state || !r->state[0]) return snprintf(err, ML_ERR_MAX, "no state tensor"), -1;
    float *f = r->state[0];
    int B = r->B, N = r->N;
    if (r->training && r->n_disp > 0) {
        for (int i = 0; i < N; i++) f[i] *= (float)(1 - l->rate);
        for (int t = 0; t < r->n_disp; t++) f[r->disp_expert[t]] += (float)(l->rate / r->n_disp);
    }
    double v = 0;
    for (int i = 0; i < N; i++) {
        double P = 0;
        for (int b = 0; b < B; b++) P += r->prob[(size_t)b * N + i];
        v += f[i] * P / B;
    }
    io->value = N * v;
    if (io->dprob)
        for (int b = 0; b < B; b++)
            for (int i = 0; i < N; i++) io->dprob[(size_t)b * N + i] += io->scale * (float)N * f[i] / (float)B;
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = NULL,
    .states = states, .eval_v2 = eval_v2,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "window_loss",
    .version = "1.0",
    .doc = "load balance with f an EMA over steps, per layer (a test of loss state)",
    .options = options,
    .num_options = 1,
    .api = &api,
};
