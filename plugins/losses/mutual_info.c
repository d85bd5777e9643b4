/*
 * mutual_info — the mutual information between inputs and experts, negated so that
 * minimising it maximises I (the "balanced assignment, confident samples" objective of
 * e.g. Mod-Squad, Chen et al. 2023, and of information-maximising clustering, Krause et
 * al. 2010):
 *
 *     value = -[H(mean_b p_b) - mean_b H(p_b)]                = -I(x; E)
 *
 * With conditional: true and labels present, the label-conditioned form
 *
 *     value = -[H(E) - H(E|Y)],  H(E|Y) = sum_y pi_y H(mean of p over samples of class y)
 *
 * with pi_y the class share in the batch — the MI between expert and class, which rewards
 * experts that specialise by class. Without labels (label == NULL) it falls back to -I(x; E).
 * H uses log clamped at p >= 1e-12. With h(p) = p log p (so H = -sum h):
 *     unconditional d/dp[b,i] = (h'(m_i) - h'(p[b,i])) / B
 *     conditional   d/dp[b,i] = (h'(m_i) - h'(m_{y_b, i})) / B
 */
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { NUM_OPTS = 1 };

static const ml_option options[NUM_OPTS] = {
    {"conditional", ML_OPT_BOOL, "false", 0, -1, NULL,
     "use the class labels: maximise I(expert; class) instead of I(input; expert)", 0},
};

typedef struct loss {
    const ml_host *host;
    int conditional;
    ml_aux_buf m; /* (N + C + C N) double: m, class counts, class means */
} loss;

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    const ml_optval *cond = ml_aux_option(options, NUM_OPTS, init->opt, "conditional");
    loss *l = ml_aux_new(host, sizeof *l, "mutual_info", err);
    if (!l) return NULL;
    l->host = host;
    l->conditional = (int)cond->i;
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
    int cond = l->conditional && r->label && r->num_classes > 0;
    int C = cond ? r->num_classes : 0;
    *value = 0;
    if (B <= 0 || N <= 0) return 0;
    /* m (N), then for the conditional form count (C) and class means (C, N) */
    size_t nm = (size_t)N + (size_t)C + (size_t)C * N;
    double *m = ml_aux_buf_get(l->host, &l->m, nm * sizeof *m);
    if (!m) {
        snprintf(err, ML_ERR_MAX, "mutual_info: out of memory");
        return -1;
    }
    memset(m, 0, nm * sizeof *m);
    double *cnt = m + N, *mc = cnt + C;
    for (int b = 0; b < B; b++) {
        const float *p = r->prob + (size_t)b * N;
        for (int i = 0; i < N; i++) m[i] += p[i] / (double)B;
        if (cond) {
            int y = r->label[b];
            if (y < 0 || y >= C) {
                snprintf(err, ML_ERR_MAX, "mutual_info: label %d of sample %d is outside "
                         "[0, %d)", y, b, C);
                return -1;
            }
            cnt[y] += 1;
            for (int i = 0; i < N; i++) mc[(size_t)y * N + i] += p[i];
        }
    }
    double v = 0; /* -H(E) = sum h(m) */
    for (int i = 0; i < N; i++) v += ml_aux_xlogx(m[i]);
    if (cond) {
        for (int y = 0; y < C; y++)
            if (cnt[y] > 0)
                for (int i = 0; i < N; i++) {
                    mc[(size_t)y * N + i] /= cnt[y];
                    v -= cnt[y] / B * ml_aux_xlogx(mc[(size_t)y * N + i]);
                }
    } else {
        for (size_t j = 0; j < (size_t)B * N; j++) v -= ml_aux_xlogx(r->prob[j]) / B;
    }
    *value = v;
    if (dprob)
        for (int b = 0; b < B; b++)
            for (int i = 0; i < N; i++) {
                size_t j = (size_t)b * N + i;
                double inner = cond ? ml_aux_xlogx_grad(mc[(size_t)r->label[b] * N + i])
                                    : ml_aux_xlogx_grad(r->prob[j]);
                dprob[j] += (float)(scale * (ml_aux_xlogx_grad(m[i]) - inner) / B);
            }
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "mutual_info",
    .version = "1.0",
    .doc = "negated mutual information I(x; expert), or I(class; expert) with labels",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
