/*
 * bad_router.c — test plugin: a router whose forward returns one chosen defect, for the
 * host's dispatch validation (core/model/moe.c). The valid base: prob and logits uniform
 * (1/N, 0), sample b to expert b % N with gate 1. `mode` picks the defect:
 *   ok, neg_gate, nan_gate, inf_gate (triple 2's gate), dup_pair (triple 2 repeats triple
 *   1's pair), bad_sample, bad_expert (triple 2), big_n_disp, neg_n_disp, neg_dropped,
 *   big_dropped, nan_prob, neg_prob, big_prob (prob[1, 1]), row_sum (row 1 doubled),
 *   nan_logits (logits[1, 1]), noterm (forward fails with an unterminated message),
 *   noterm_create (create does).
 */
#include <math.h>
#include <string.h>

#include "moelab/plugin.h"

enum {
    M_OK, M_NEG_GATE, M_NAN_GATE, M_INF_GATE, M_DUP_PAIR, M_BAD_SAMPLE, M_BAD_EXPERT, M_BIG_N_DISP,
    M_NEG_N_DISP, M_NEG_DROPPED, M_BIG_DROPPED, M_NAN_PROB, M_NEG_PROB, M_BIG_PROB, M_ROW_SUM,
    M_NAN_LOGITS, M_NOTERM, M_NOTERM_CREATE
};

typedef struct rt { const ml_host *host; int mode; } rt;

static void *create(const ml_host *host, const ml_router_init *init, char *err) {
    if (init->opt[0].i == M_NOTERM_CREATE) {
        memset(err, 'C', ML_ERR_MAX);
        return NULL;
    }
    rt *r = host->alloc(sizeof *r);
    if (r) r->host = host, r->mode = (int)init->opt[0].i;
    return r;
}

static void destroy(void *self) {
    rt *r = self;
    if (r) r->host->free(r);
}

static int params(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int forward(void *self, ml_route *r, char *err) {
    rt *s = self;
    int B = r->B, N = r->N;
    if (s->mode == M_NOTERM) {
        memset(err, 'F', ML_ERR_MAX);
        return -1;
    }
    for (int i = 0; i < B * N; i++) r->prob[i] = 1.0f / (float)N, r->logits[i] = 0;
    for (int b = 0; b < B; b++) r->disp_sample[b] = b, r->disp_expert[b] = b % N, r->disp_gate[b] = 1;
    r->n_disp = B;
    r->n_dropped = 0;
    switch (s->mode) {
    case M_NEG_GATE: r->disp_gate[2] = -0.5f; break;
    case M_NAN_GATE: r->disp_gate[2] = NAN; break;
    case M_INF_GATE: r->disp_gate[2] = INFINITY; break;
    case M_DUP_PAIR: r->disp_sample[2] = 1, r->disp_expert[2] = 1 % N; break;
    case M_BAD_SAMPLE: r->disp_sample[2] = B; break;
    case M_BAD_EXPERT: r->disp_expert[2] = -1; break;
    case M_BIG_N_DISP: r->n_disp = B * N + 1; break;
    case M_NEG_N_DISP: r->n_disp = -1; break;
    case M_NEG_DROPPED: r->n_dropped = -1; break;
    case M_BIG_DROPPED: r->n_dropped = B + 1; break;
    case M_NAN_PROB: r->prob[1 * N + 1] = NAN; break;
    case M_NEG_PROB: r->prob[1 * N + 1] = -0.25f; break;
    case M_BIG_PROB: r->prob[1 * N + 1] = 1.5f; break;
    case M_ROW_SUM: for (int e = 0; e < N; e++) r->prob[1 * N + e] *= 2; break;
    case M_NAN_LOGITS: r->logits[1 * N + 1] = NAN; break;
    default: break;
    }
    return 0;
}

static int backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    (void)self, (void)r, (void)g, (void)err;
    return 0;
}

static const ml_option options[] = {
    {"mode", ML_OPT_ENUM, "ok", 1, 0,
     "ok|neg_gate|nan_gate|inf_gate|dup_pair|bad_sample|bad_expert|big_n_disp|neg_n_disp|"
     "neg_dropped|big_dropped|nan_prob|neg_prob|big_prob|row_sum|nan_logits|noterm|noterm_create",
     "the defect forward (or create) returns"},
};

static const ml_router_api api = {
    .size = sizeof(ml_router_api), .create = create, .destroy = destroy, .params = params,
    .states = states, .forward = forward, .backward = backward, .event = NULL,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    .name = "bad_router",
    .version = "1.0",
    .doc = "a router returning one chosen defect (tests of dispatch validation)",
    .options = options,
    .num_options = 1,
    .api = &api,
};
