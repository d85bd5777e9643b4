/*
 * FROZEN ABI 1.0 FIXTURE — do not edit. The plugin load_balance exactly as moelab shipped it with
 * ABI 1.0 (only its name changed), compiled by the Makefile against the frozen 1.0 header
 * beside it (tests/abi/1.0/moelab/plugin.h) and, for comparison, against today's header.
 * tests/check_abi.c loads the 1.0 build into today's host, runs plugin-test on it and trains
 * with it: every later host must keep accepting it (docs/plugins.md, "Compatibility").
 */
/*
 * load_balance — the auxiliary load-balancing loss of the Switch Transformer (Fedus et al.
 * 2021, "Switch Transformers", eq. 4; the same form as GShard, Lepikhin et al. 2020):
 *
 *     value = N * sum_i f_i * P_i
 *
 * f_i = share of the dispatch triples sent to expert i (count_i / n_disp; a count, so no
 * gradient flows through it), P_i = mean over the batch of prob[:, i]. It is 1 when both
 * are uniform and N when everything goes to one expert. Gradient: d/dprob[b, i] = N f_i / B.
 */
#include <stdio.h>

#include "moelab/plugin.h"

typedef struct loss { const ml_host *host; } loss;

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    (void)init, (void)err;
    loss *l = host->alloc(sizeof *l);
    if (l) l->host = host;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (l) l->host->free(l);
}

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    loss *l = self;
    (void)dlogits;
    int B = r->B, N = r->N;
    *value = 0;
    if (B <= 0 || N <= 0 || r->n_disp <= 0) return 0;
    double *f = l->host->alloc((size_t)N * sizeof *f);
    if (!f) {
        snprintf(err, ML_ERR_MAX, "load_balance: out of memory");
        return -1;
    }
    for (int t = 0; t < r->n_disp; t++) {
        int e = r->disp_expert[t];
        if (e < 0 || e >= N) {
            snprintf(err, ML_ERR_MAX, "load_balance: dispatch %d names expert %d of %d", t, e, N);
            l->host->free(f);
            return -1;
        }
        f[e] += 1.0 / r->n_disp;
    }
    double v = 0;
    for (int i = 0; i < N; i++) {
        double P = 0;
        for (int b = 0; b < B; b++) P += r->prob[(size_t)b * N + i];
        v += f[i] * (P / B);
    }
    *value = N * v;
    if (dprob)
        for (int b = 0; b < B; b++)
            for (int i = 0; i < N; i++) dprob[(size_t)b * N + i] += (float)(scale * N * f[i] / B);
    l->host->free(f);
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "balance_v1_0",
    .version = "1.0",
    .doc = "N * sum_i f_i P_i, dispatch share times mean probability (Switch eq. 4, GShard)",
    .options = NULL,
    .num_options = 0,
    .api = &api,
};
