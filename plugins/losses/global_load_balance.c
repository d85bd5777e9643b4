/*
 * global_load_balance — the Switch load-balancing loss with the dispatch share f counted over
 * a window of training steps (global-batch balance) instead of the current batch.
 *
 * Source: Z. Qiu, Z. Huang, B. Zheng, K. Wen, Z. Wang, R. Men, I. Titov, D. Liu, J. Zhou,
 * J. Lin, "Demons in the Detail: On Implementing Load Balancing Loss for Training
 * Specialized Mixture-of-Expert Models", arXiv 2501.11873 (2025): the global-batch LBL
 * (f_i synchronised over the global batch, P_i of the micro-batch, f a constant), against
 * the micro-batch LBL that pushes every small batch — and so every sequence — to balance. Reference code: Megatron-Core router.py `TopKRouter._apply_global_aux_loss`
 * (moe_router_load_balancing_type: global_aux_loss — tokens_per_expert summed over the
 * data-parallel group and accumulated over the steps in `global_tokens_per_expert` until
 * `reset_global_aux_loss_tracker`, then switch_load_balancing_loss_func with the current P):
 *
 *     value = N · Σ_i f_i · P_i
 *     P_i = (1/B) Σ_b prob[b, i]                                    this batch: the gradient
 *     f_i = (Σ_{s in window} c_i(s)) / (Σ_{s in window} T(s))       counted: no gradient
 *     ∂value/∂prob[b, i] = N f_i / B
 *
 * The window holds the W most recent training steps, this one included (option window = W;
 * W = 1 is `load_balance` exactly). c_i(s) and T(s) count as load_balance's option `count`
 * says: all_slots, the dispatch triples of expert i and all triples; first_choice, the
 * samples whose most probable expert is i and all samples. Megatron accumulates from a reset
 * to the next; moelab keeps a sliding window, so the horizon is the same at every step.
 *
 * State (ABI 1.1 states(), per layer, checkpointed, so --resume continues exactly):
 *   counts (N, W)  c_i(s) at slot s = step mod W; per expert, so it grows with the layer
 *                  (an added expert starts with zero counts)
 *   totals (1, W)  T(s)
 * (N·W floats per layer: the window is capped at 10000 steps, 160 MB at 4096 experts.)
 * A training evaluation writes this step's slot (the record's step, the training steps done
 * before this one, so a repeated evaluation of the same step overwrites, never double
 * counts); an evaluation with training = 0 reads the window with its batch in that slot's
 * place and writes nothing. Slots never written hold T = 0 and count nothing, so the first
 * W − 1 steps use the steps seen so far.
 *
 * Data parallelism (`mpirun -np R moelab run`): the host gathers every rank's router inputs,
 * so each rank's instance sees the whole global batch; c_i and T are already the global
 * batch's (what Megatron gets by summing them over its data-parallel group), every rank holds
 * the same window and f, and nothing here needs reducing over ranks (docs/routing.md).
 */
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { COUNT_ALL_SLOTS, COUNT_FIRST_CHOICE };
enum { OPT_WINDOW, OPT_COUNT, NUM_OPTS };

static const ml_option options[NUM_OPTS] = {
    [OPT_WINDOW] = {"window", ML_OPT_INT, "16", 1, 10000, NULL,
                    "training steps whose dispatch counts make f (this one included); 1 = load_balance"},
    [OPT_COUNT] = {"count", ML_OPT_ENUM, "all_slots", 0, -1, "all_slots|first_choice",
                   "f counts every dispatched slot, or only each sample's most probable expert (GShard)"},
};

enum { S_COUNTS, S_TOTALS, NUM_STATES };

typedef struct loss {
    const ml_host *host;
    int window, count;
    ml_aux_buf c; /* (N) double: this batch's counts c_i */
    ml_aux_buf f; /* (N) double: f_i */
} loss;

static void *create(const ml_host *host, const ml_loss_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (o[OPT_WINDOW].i < 1 || o[OPT_WINDOW].i > 10000) {
        snprintf(err, ML_ERR_MAX, "global_load_balance: option window must be in [1, 10000], got %lld",
                 (long long)o[OPT_WINDOW].i);
        return NULL;
    }
    loss *l = ml_aux_new(host, sizeof *l, "global_load_balance", err);
    if (!l) return NULL;
    l->host = host;
    l->window = (int)o[OPT_WINDOW].i;
    l->count = (int)o[OPT_COUNT].i;
    return l;
}

static void destroy(void *self) {
    loss *l = self;
    if (!l) return;
    ml_aux_buf_free(l->host, &l->c);
    ml_aux_buf_free(l->host, &l->f);
    l->host->free(l);
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    loss *l = self;
    if (cap < NUM_STATES) return -1;
    out[S_COUNTS] = (ml_tensor_decl){"counts", 1, 0, l->window, ML_INIT_ZEROS, 0, 0, 0};
    out[S_TOTALS] = (ml_tensor_decl){"totals", 0, 1, l->window, ML_INIT_ZEROS, 0, 0, 0};
    return NUM_STATES;
}

static int eval_v2(void *self, const ml_routing_record *r, ml_loss_eval *io, char *err) {
    loss *l = self;
    int B = r->B, N = r->N, W = l->window;
    io->value = 0;
    if (B <= 0 || N <= 0) return 0;
    if (!r->state) {
        snprintf(err, ML_ERR_MAX, "global_load_balance: no state tensors (the host keeps none here)");
        return -1;
    }
    double *c = ml_aux_buf_get(l->host, &l->c, (size_t)N * sizeof *c);
    double *f = ml_aux_buf_get(l->host, &l->f, (size_t)N * sizeof *f);
    if (!c || !f) {
        snprintf(err, ML_ERR_MAX, "global_load_balance: out of memory");
        return -1;
    }
    /* this batch's counts */
    memset(c, 0, (size_t)N * sizeof *c);
    double T;
    if (l->count == COUNT_FIRST_CHOICE) {
        for (int b = 0; b < B; b++) c[ml_aux_argmax(r->prob + (size_t)b * N, N)] += 1;
        T = B;
    } else {
        for (int t = 0; t < r->n_disp; t++) {
            int e = r->disp_expert[t];
            if (e < 0 || e >= N) {
                snprintf(err, ML_ERR_MAX, "global_load_balance: dispatch %d names expert %d of %d", t, e, N);
                return -1;
            }
            c[e] += 1;
        }
        T = r->n_disp;
    }
    /* under mpirun c (N) and T are the whole batch's already: the routing sees every rank's
       samples (the header) */
    float *counts = r->state[S_COUNTS], *totals = r->state[S_TOTALS];
    int slot = (int)(r->step >= 0 ? r->step % W : 0);
    double total = T;
    for (int s = 0; s < W; s++)
        if (s != slot) total += totals[s];
    for (int i = 0; i < N; i++) {
        double n = c[i];
        for (int s = 0; s < W; s++)
            if (s != slot) n += counts[(size_t)i * W + s];
        f[i] = total > 0 ? n / total : 0;
    }
    if (r->training) {
        for (int i = 0; i < N; i++) counts[(size_t)i * W + slot] = (float)c[i];
        totals[slot] = (float)T;
    }
    double v = 0;
    for (int i = 0; i < N; i++) {
        double P = 0;
        for (int b = 0; b < B; b++) P += r->prob[(size_t)b * N + i];
        v += f[i] * (P / B);
    }
    io->value = N * v;
    if (io->dprob)
        for (int b = 0; b < B; b++)
            for (int i = 0; i < N; i++) io->dprob[(size_t)b * N + i] += (float)(io->scale * N * f[i] / B);
    return 0;
}

static const ml_loss_api api = {
    .size = sizeof(ml_loss_api), .create = create, .destroy = destroy, .eval = NULL, .states = states,
    .eval_v2 = eval_v2,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_LOSS),
    .name = "global_load_balance",
    .version = "1.0",
    .doc = "N * sum_i f_i P_i with f counted over a window of training steps, P of this batch (Qiu et al. 2025 global-batch balance)",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
