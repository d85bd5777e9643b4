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
 *
 * Option `group` (G > 0): the sequence-wise form of DeepSeek-V2 (arXiv 2405.04434, section
 * 2.2.3, "Expert-Level Balance Loss") and DeepSeek-V3 (arXiv 2412.19437, section 2.1.2,
 * "Complementary Sequence-Wise Auxiliary Loss", eq. 17-20), Megatron-Core's
 * `sequence_load_balancing_loss_func`: the batch's rows are cut into consecutive groups of G
 * (the last one may be shorter), f^g and P^g are those of group g alone, and
 *
 *     value = (1/n_groups) sum_g N * sum_i f^g_i * P^g_i,   d/dprob[b, i] = N f^g_i / (|g| n_groups)
 *
 * for b in group g. G = 0 (the default) or G >= B is one group: the batch form above. A
 * group whose samples were all dropped (no triple, all_slots) adds 0 and still counts in
 * n_groups. G = 1 makes every row its own group: see docs/routing.md for what that does
 * (it does not balance anything).
 */
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { COUNT_ALL_SLOTS, COUNT_FIRST_CHOICE };
enum { NUM_OPTS = 2 };

static const ml_option options[NUM_OPTS] = {
    {.name = "count", .type = ML_OPT_ENUM, .def = "all_slots", .min = 0, .max = -1,
     .choices = "all_slots|first_choice",
     .doc = "f_i counts every dispatched slot, or only each sample's most probable expert (GShard)"},
    {.name = "group", .type = ML_OPT_INT, .def = "0", .min = 0, .max = 1000000,
     .doc = "rows per sequence/image: f and P per group of this many consecutive rows, averaged (0: the batch)"},
};

typedef struct loss {
    const ml_host *host;
    int count, group;
    ml_aux_buf f; /* (n_groups, N) double: f of each group */
    ml_aux_buf k; /* (n_groups) double: triples of each group, all_slots */
    ml_aux_buf P; /* (N) double: a group's column sums of prob */
    ml_aux_buf d; /* (N) float: a group's dprob term per expert */
} loss;

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    const ml_optval *count = ml_aux_option(options, NUM_OPTS, init->opt, "count");
    const ml_optval *group = ml_aux_option(options, NUM_OPTS, init->opt, "group");
    if (group->i < 0) {
        snprintf(err, ML_ERR_MAX, "load_balance: option group must be >= 0, got %lld", (long long)group->i);
        return NULL;
    }
    loss *l = ml_aux_new(host, sizeof *l, "load_balance", err);
    if (!l) return NULL;
    l->host = host;
    l->count = (int)count->i;
    l->group = (int)group->i;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (!l) return;
    ml_aux_buf_free(l->host, &l->f);
    ml_aux_buf_free(l->host, &l->k);
    ml_aux_buf_free(l->host, &l->P);
    ml_aux_buf_free(l->host, &l->d);
    l->host->free(l);
}

static int eval(void *self, const ml_routing_record *r, double *value, float scale,
                float *dlogits, float *dprob, char *err) {
    loss *l = self;
    (void)dlogits;
    int B = r->B, N = r->N;
    *value = 0;
    if (B <= 0 || N <= 0 || (l->count == COUNT_ALL_SLOTS && r->n_disp <= 0)) return 0;
    int G = l->group > 0 && l->group < B ? l->group : B, ng = (B + G - 1) / G;
    double *f = ml_aux_buf_get(l->host, &l->f, (size_t)ng * N * sizeof *f);
    double *k = ml_aux_buf_get(l->host, &l->k, (size_t)ng * sizeof *k);
    double *P = ml_aux_buf_get(l->host, &l->P, (size_t)N * sizeof *P);
    float *d = ml_aux_buf_get(l->host, &l->d, (size_t)N * sizeof *d);
    if (!f || !k || !P || !d) {
        snprintf(err, ML_ERR_MAX, "load_balance: out of memory");
        return -1;
    }
    memset(f, 0, (size_t)ng * N * sizeof *f);
    memset(k, 0, (size_t)ng * sizeof *k);
    /* f^g of each group g = b / G: every count adds 1 / (the group's total), summed in the
       order of the rows or triples (one group: the very operations of the batch form
       before groups existed, so its runs stay bit for bit the same) */
    if (l->count == COUNT_FIRST_CHOICE) {
        for (int g = 0; g < ng; g++) k[g] = (g + 1) * G < B ? G : B - g * G;
        for (int b = 0; b < B; b++) f[(size_t)(b / G) * N + ml_aux_argmax(r->prob + (size_t)b * N, N)] += 1.0 / k[b / G];
    } else {
        for (int t = 0; t < r->n_disp; t++) {
            int e = r->disp_expert[t], b = r->disp_sample[t];
            if (e < 0 || e >= N || b < 0 || b >= B) {
                snprintf(err, ML_ERR_MAX, "load_balance: dispatch %d is (sample %d, expert %d), outside (%d, %d)",
                         t, b, e, B, N);
                return -1;
            }
            k[b / G] += 1;
        }
        for (int t = 0; t < r->n_disp; t++) {
            int b = r->disp_sample[t];
            f[(size_t)(b / G) * N + r->disp_expert[t]] += 1.0 / k[b / G];
        }
    }
    double v = 0;
    for (int g = 0; g < ng; g++) {
        int b0 = g * G, b1 = b0 + G < B ? b0 + G : B, n = b1 - b0;
        double *fg = f + (size_t)g * N, vg = 0;
        if (k[g] == 0) continue; /* every sample of the group dropped: no share to count */
        /* P_i, each summed over the rows in order, row by row (contiguous reads) */
        for (int i = 0; i < N; i++) P[i] = 0;
        for (int b = b0; b < b1; b++) {
            const float *pb = r->prob + (size_t)b * N;
            for (int i = 0; i < N; i++) P[i] += pb[i];
        }
        for (int i = 0; i < N; i++) vg += fg[i] * (P[i] / n);
        v += N * vg;
        if (dprob) { /* the same term for every row of the group: computed once per expert */
            for (int i = 0; i < N; i++) d[i] = (float)(scale * N * fg[i] / n / ng);
            for (int b = b0; b < b1; b++)
                for (int i = 0; i < N; i++) dprob[(size_t)b * N + i] += d[i];
        }
    }
    *value = v / ng;
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = eval,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "load_balance",
    .version = "1.2",
    .doc = "N * sum_i f_i P_i, dispatch share times mean probability (Switch eq. 4, GShard); per group of rows (DeepSeek sequence-wise)",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
