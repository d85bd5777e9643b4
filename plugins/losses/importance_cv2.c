/*
 * importance_cv2 — the importance loss of Shazeer et al. 2017 ("Outrageously Large Neural
 * Networks", eqs. 6-7, without its coefficient): importance_i = sum over the batch of the gate
 * mass assigned to expert i (the disp_gate of expert i's triples), and
 *
 *     value = CV(importance)^2 = var(importance) / mean(importance)^2   (population variance)
 *
 * Gradient. The gates come from the router's probabilities, but the loss API carries only
 * dL/dprob and dL/dlogits. We treat each dispatched gate as a function of prob with
 * d gate / d prob = 1 at its own (sample, expert) entry and 0 elsewhere, i.e. importance_i
 * is differentiated as if it were the sum of prob over the dispatched (b, i) pairs. That is
 * exact for gate = prob (softmax_topk with renormalize: false) and for renormalised gates it
 * drops the coupling through the normaliser — the pressure on each dispatched probability
 * still points the right way (towards less-used experts).
 *
 *     d value / d importance_j = (2/N) (importance_j - mean) / mean^2 - (2/N) var / mean^3
 */
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

typedef struct loss {
    const ml_host *host;
    ml_aux_buf imp; /* (N) double: importance */
} loss;

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    (void)init;
    loss *l = ml_aux_new(host, sizeof *l, "importance_cv2", err);
    if (!l) return NULL;
    l->host = host;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (!l) return;
    ml_aux_buf_free(l->host, &l->imp);
    l->host->free(l);
}

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    loss *l = self;
    (void)dlogits;
    int N = r->N;
    *value = 0;
    if (r->B <= 0 || N <= 0) return 0;
    double *imp = ml_aux_buf_get(l->host, &l->imp, (size_t)N * sizeof *imp);
    if (!imp) {
        snprintf(err, ML_ERR_MAX, "importance_cv2: out of memory");
        return -1;
    }
    memset(imp, 0, (size_t)N * sizeof *imp);
    for (int t = 0; t < r->n_disp; t++) {
        int e = r->disp_expert[t], b = r->disp_sample[t];
        if (e < 0 || e >= N || b < 0 || b >= r->B) {
            snprintf(err, ML_ERR_MAX, "importance_cv2: dispatch %d is (sample %d, expert %d), "
                     "outside (%d, %d)", t, b, e, r->B, N);
            return -1;
        }
        imp[e] += r->disp_gate[t];
    }
    double mean = 0, var = 0;
    for (int i = 0; i < N; i++) mean += imp[i] / N;
    for (int i = 0; i < N; i++) var += (imp[i] - mean) * (imp[i] - mean) / N;
    if (mean > 0) {
        *value = var / (mean * mean);
        if (dprob)
            for (int t = 0; t < r->n_disp; t++) {
                int e = r->disp_expert[t];
                double m2 = mean * mean;
                double d = 2.0 / N * (imp[e] - mean) / m2 - 2.0 / N * var / (m2 * mean);
                dprob[(size_t)r->disp_sample[t] * N + e] += (float)(scale * d);
            }
    }
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "importance_cv2",
    .version = "1.0",
    .doc = "squared coefficient of variation of per-expert gate mass (Shazeer et al. 2017)",
    .options = NULL,
    .num_options = 0,
    .api = &api,
};
