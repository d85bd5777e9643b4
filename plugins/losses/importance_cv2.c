/*
 * importance_cv2 — the importance loss of Shazeer et al. 2017 ("Outrageously Large Neural
 * Networks", eqs. 6-7, without its coefficient): importance_i = sum over the batch of the gate
 * mass assigned to expert i (the disp_gate of expert i's triples), and
 *
 *     value = CV(importance)^2 = var(importance) / mean(importance)^2   (population variance)
 *
 *     d value / d importance_j = (2/N) (importance_j - mean) / mean^2 - (2/N) var / mean^3
 *
 * Gradient (ABI 1.1, eval_v2): d value / d gate_t = d value / d importance_e(t), given with
 * respect to the gates themselves; the router's backward carries it through however it made
 * the gates (renormalised top-k, capacity, ...), so the gradient is exact for every router.
 * With top-1 and renormalised gates every gate is 1 and the true gradient is 0.
 *
 * A 1.0 host calls eval, which can only give dL/dprob: there each dispatched gate is taken as
 * the prob at its (sample, expert) pair (d gate / d prob = 1 there, 0 elsewhere). That is
 * exact for gate = prob (softmax_topk with renormalize: false); for renormalised gates it
 * drops the coupling through the normaliser (cosine 0.82-0.995 with the true gradient, and
 * non-zero at k = 1 where the true one is 0).
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

/* importance, its mean and variance; *value the loss. d (N) receives d value / d importance
   (zeros when the mean is 0: no gate mass, no gradient). */
static int cv2(loss *l, const ml_routing_record *r, double *value, double **d, char *err) {
    int N = r->N;
    *value = 0;
    *d = NULL;
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
    /* imp becomes d value / d importance in place */
    double m2 = mean * mean;
    if (mean > 0) *value = var / m2;
    for (int i = 0; i < N; i++) imp[i] = mean > 0 ? 2.0 / N * (imp[i] - mean) / m2 - 2.0 / N * var / (m2 * mean) : 0;
    *d = imp;
    return 0;
}

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    (void)dlogits;
    double *d;
    if (cv2(self, r, value, &d, err)) return -1;
    if (d && dprob)
        for (int t = 0; t < r->n_disp; t++)
            dprob[(size_t)r->disp_sample[t] * r->N + r->disp_expert[t]] += (float)(scale * d[r->disp_expert[t]]);
    return 0;
}

static int eval_v2(void *self, const ml_routing_record *r, ml_loss_eval *io, char *err) {
    double *d;
    if (cv2(self, r, &io->value, &d, err)) return -1;
    if (d && io->dgate)
        for (int t = 0; t < r->n_disp; t++) io->dgate[t] += (float)(io->scale * d[r->disp_expert[t]]);
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval, .eval_v2 = eval_v2,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "importance_cv2",
    .version = "1.1",
    .doc = "squared coefficient of variation of per-expert gate mass (Shazeer et al. 2017)",
    .options = NULL,
    .num_options = 0,
    .api = &api,
};
