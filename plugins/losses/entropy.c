/*
 * entropy — routing entropy as a loss: minimising it raises the entropy (goal: raise, the
 * default) or lowers it (goal: lower).
 *
 *   per_sample: value = -mean_b H(p_b)      (the router anti-collapse seed's bonus:
 *                                            entropy = -(p log p).sum(1).mean(),
 *                                            entropy_loss = -entropy)
 *   marginal:   value = -H(mean_b p_b)      (spreads the batch over experts, lets each
 *                                            sample stay confident)
 *
 * Option goal: raise (default) is the value above, which minimising raises the entropy;
 * lower negates it (value = +mean_b H(p_b), or +H(mean_b p_b)), which minimising lowers the
 * entropy: with mode per_sample it is the "dynamic loss" of Huang et al. 2024 ("Harder Tasks
 * Need More Experts", arXiv 2403.07652), L_d = -sum_i P_i log P_i per token, which keeps
 * top-p routing (router `top_p`) from spreading probability over many experts.
 *
 * H(p) = -sum_i p_i log p_i with the log clamped at p >= 1e-12, so one-hot rows are finite.
 * With h(p) = p log max(p, 1e-12): value = sum h, dh/dp = log p + 1 (p >= 1e-12), log 1e-12 below.
 */
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { NUM_OPTS = 2 };

static const ml_option options[NUM_OPTS] = {
    {"mode", ML_OPT_ENUM, "per_sample", 0, -1, "per_sample|marginal",
     "entropy of each sample's distribution, or of the batch-mean distribution", 0},
    {"goal", ML_OPT_ENUM, "raise", 0, -1, "raise|lower",
     "raise: value -H (a bonus); lower: value +H (Huang et al. 2024's dynamic loss for top_p)", 0},
};

typedef struct loss {
    const ml_host *host;
    int marginal;
    double sign; /* +1 goal raise (value -H), -1 goal lower (value +H) */
    ml_aux_buf m; /* (N) double: mean_b p_b */
} loss;

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    const ml_optval *mode = ml_aux_option(options, NUM_OPTS, init->opt, "mode");
    loss *l = ml_aux_new(host, sizeof *l, "entropy", err);
    if (!l) return NULL;
    l->host = host;
    l->marginal = mode->i == 1;
    l->sign = ml_aux_option(options, NUM_OPTS, init->opt, "goal")->i == 1 ? -1.0 : 1.0;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (!l) return;
    ml_aux_buf_free(l->host, &l->m);
    l->host->free(l);
}

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    loss *l = self;
    (void)dlogits;
    int B = r->B, N = r->N;
    *value = 0;
    if (B <= 0 || N <= 0) return 0;
    if (!l->marginal) {
        double v = 0;
        for (size_t j = 0; j < (size_t)B * N; j++) {
            v += ml_aux_xlogx(r->prob[j]);
            if (dprob) dprob[j] += (float)(l->sign * scale * ml_aux_xlogx_grad(r->prob[j]) / B);
        }
        *value = l->sign * v / B;
        return 0;
    }
    double *m = ml_aux_buf_get(l->host, &l->m, (size_t)N * sizeof *m);
    if (!m) {
        snprintf(err, ML_ERR_MAX, "entropy: out of memory");
        return -1;
    }
    memset(m, 0, (size_t)N * sizeof *m);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < N; i++) m[i] += r->prob[(size_t)b * N + i] / (double)B;
    double v = 0;
    for (int i = 0; i < N; i++) v += ml_aux_xlogx(m[i]);
    *value = l->sign * v;
    if (dprob)
        for (int b = 0; b < B; b++)
            for (int i = 0; i < N; i++)
                dprob[(size_t)b * N + i] += (float)(l->sign * scale * ml_aux_xlogx_grad(m[i]) / B);
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "entropy",
    .version = "1.1",
    .doc = "routing entropy, per sample or of the batch mean: -H to raise it (anti-collapse bonus), +H to lower it (top-p dynamic loss)",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
