/*
 * z_loss — the router z-loss of ST-MoE (Zoph et al. 2022, "ST-MoE", eq. 5, without its
 * coefficient): value = mean_b (logsumexp_i logits[b, i])^2. It keeps logits small, which
 * keeps the softmax out of float32 round-off. Gradient wrt logits only:
 * d/dlogits[b, i] = (2/B) lse_b softmax(logits_b)_i. logsumexp subtracts the row max.
 */
#include <math.h>

#include "moelab/plugin_aux.h"

typedef struct loss { const ml_host *host; } loss;

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    (void)init;
    loss *l = ml_aux_new(host, sizeof *l, "z_loss", err);
    if (l) l->host = host;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (l) l->host->free(l);
}

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    (void)self, (void)dprob, (void)err;
    int B = r->B, N = r->N;
    *value = 0;
    if (B <= 0 || N <= 0) return 0;
    double v = 0;
    for (int b = 0; b < B; b++) {
        const float *z = r->logits + (size_t)b * N;
        double lse = ml_aux_logsumexp(z, N);
        v += lse * lse;
        if (dlogits) /* d lse / dz_i = softmax(z)_i = exp(z_i − lse) */
            for (int i = 0; i < N; i++)
                dlogits[(size_t)b * N + i] += (float)(scale * 2.0 / B * lse * exp(z[i] - lse));
    }
    *value = v / B;
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "z_loss",
    .version = "1.0",
    .doc = "mean squared logsumexp of the router logits (ST-MoE, Zoph et al. 2022)",
    .options = NULL,
    .num_options = 0,
    .api = &api,
};
