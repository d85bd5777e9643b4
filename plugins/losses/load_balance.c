/*
 * load_balance — the auxiliary load-balancing loss of the Switch Transformer (Fedus, Zoph,
 * Shazeer 2022, "Switch Transformers", JMLR, eq. 4-6) and GShard (Lepikhin et al. 2021,
 * ICLR, Algorithm 1):
 *
 *     value = N * sum_i f_i * P_i
 *
 * P_i = mean over the batch of prob[:, i]; f_i = the share of the batch sent to expert i,
 * a count, so no gradient flows through it. Option `count` says which share:
 *
 *   all_slots (default)  f_i = (dispatch triples of expert i) / n_disp: each of a sample's
 *                        k slots counts; a dropped sample has no triple and counts nowhere.
 *   first_choice         f_i = #{b : argmax_j prob[b, j] = i} / B: only each sample's first
 *                        choice, its most probable expert (ties to the lower index), and
 *                        every sample counts, dispatched or dropped. Switch eq. 5 as written
 *                        (f_i = 1/T sum_x 1{argmax p(x) = i}) and GShard's c_e / S (its
 *                        Algorithm 1 counts each token's top-1 expert before the capacity
 *                        check; its value is this one / N^2).
 *
 * The two agree for top-1 routing without drops. Both are 1 when f and P are uniform and
 * N when everything goes to one expert. Gradient: d/dprob[b, i] = N f_i / B.
 */
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { COUNT_ALL_SLOTS, COUNT_FIRST_CHOICE };
enum { NUM_OPTS = 1 };

static const ml_option options[NUM_OPTS] = {
    {.name = "count", .type = ML_OPT_ENUM, .def = "all_slots", .min = 0, .max = -1,
     .choices = "all_slots|first_choice",
     .doc = "f_i counts every dispatched slot, or only each sample's most probable expert (GShard)"},
};

typedef struct loss {
    const ml_host *host;
    int count;
    ml_aux_buf f; /* (N) double: f_i */
} loss;

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    const ml_optval *count = ml_aux_option(options, NUM_OPTS, init->opt, "count");
    loss *l = ml_aux_new(host, sizeof *l, "load_balance", err);
    if (!l) return NULL;
    l->host = host;
    l->count = (int)count->i;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (!l) return;
    ml_aux_buf_free(l->host, &l->f);
    l->host->free(l);
}

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    loss *l = self;
    (void)dlogits;
    int B = r->B, N = r->N;
    *value = 0;
    if (B <= 0 || N <= 0 || (l->count == COUNT_ALL_SLOTS && r->n_disp <= 0)) return 0;
    double *f = ml_aux_buf_get(l->host, &l->f, (size_t)N * sizeof *f);
    if (!f) {
        snprintf(err, ML_ERR_MAX, "load_balance: out of memory");
        return -1;
    }
    memset(f, 0, (size_t)N * sizeof *f);
    if (l->count == COUNT_FIRST_CHOICE) {
        for (int b = 0; b < B; b++) f[ml_aux_argmax(r->prob + (size_t)b * N, N)] += 1.0 / B;
    } else {
        for (int t = 0; t < r->n_disp; t++) {
            int e = r->disp_expert[t];
            if (e < 0 || e >= N) {
                snprintf(err, ML_ERR_MAX, "load_balance: dispatch %d names expert %d of %d", t, e, N);
                return -1;
            }
            f[e] += 1.0 / r->n_disp;
        }
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
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "load_balance",
    .version = "1.1",
    .doc = "N * sum_i f_i P_i, dispatch share times mean probability (Switch eq. 4, GShard)",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
