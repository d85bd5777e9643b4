/*
 * random — a control: k distinct experts drawn uniformly at random per sample.
 *
 * No paper of its own: the baseline every learned router should beat (Roller et al. 2021,
 * "Hash Layers For Large Sparse Models", compare learned routing against random hashes).
 *
 *   experts(b) = k distinct experts, uniform without replacement, from r->rng
 *   gate 1/k each;  prob = 1/N everywhere;  logits = 0
 *
 * Draws are a partial Fisher-Yates shuffle per sample, in batch order, from the host's
 * RNG, so a run is deterministic given its seed; in evaluation too (a fresh draw each
 * call). k is clipped to N. No parameters, no state, nothing to learn: backward is empty.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { OPT_K, NUM_OPTS };

static const ml_option options[NUM_OPTS] = {
    [OPT_K] = {"k", ML_OPT_INT, "1", 1, 64, NULL,
               "distinct random experts per sample, gate 1/k each (clipped to N)"},
};

typedef struct rnd {
    const ml_host *host;
    int k;
    ml_aux_buf perm; /* (N) int: shuffle scratch */
} rnd;

static void *rnd_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX, "random: needs num_experts >= 1, got %d", init->num_experts);
        return NULL;
    }
    if (o[OPT_K].i < 1 || o[OPT_K].i > 64) {
        snprintf(err, ML_ERR_MAX, "random: option k must be in [1, 64], got %lld",
                 (long long)o[OPT_K].i);
        return NULL;
    }
    rnd *s = ml_aux_new(host, sizeof *s, "random", err);
    if (!s) return NULL;
    s->host = host;
    s->k = (int)o[OPT_K].i;
    return s;
}

static void rnd_destroy(void *self) {
    rnd *s = self;
    if (!s) return;
    ml_aux_buf_free(s->host, &s->perm);
    s->host->free(s);
}

static int rnd_none(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int rnd_forward(void *self, ml_route *r, char *err) {
    rnd *s = self;
    const ml_host *h = s->host;
    int B = r->B, N = r->N;
    if (N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX, "random: forward with B=%d N=%d", B, N);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    if (!r->rng) {
        snprintf(err, ML_ERR_MAX, "random: the host passed no rng, which random routing needs");
        return -1;
    }
    int *perm = ml_aux_buf_get(h, &s->perm, (size_t)N * sizeof(int));
    if (!perm) {
        snprintf(err, ML_ERR_MAX, "random: out of memory for N=%d", N);
        return -1;
    }
    int k = s->k < N ? s->k : N;
    float gate = 1.0f / (float)k, uni = 1.0f / (float)N;
    size_t bn = (size_t)B * (size_t)N;
    memset(r->logits, 0, bn * sizeof(float));
    for (size_t i = 0; i < bn; i++) r->prob[i] = uni;
    for (int b = 0; b < B; b++) {
        for (int n = 0; n < N; n++) perm[n] = n;
        for (int j = 0; j < k; j++) {
            int pick = j + (int)(h->rng_u64(r->rng) % (uint64_t)(N - j));
            int e = perm[pick];
            perm[pick] = perm[j];
            perm[j] = e;
            ml_aux_dispatch(r, b, e, gate);
        }
    }
    return 0;
}

static int rnd_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    (void)self, (void)r, (void)g, (void)err;
    return 0; /* nothing depends on x */
}

static const ml_router_api api = {
    sizeof(ml_router_api), rnd_create, rnd_destroy, rnd_none, rnd_none,
    rnd_forward, rnd_backward, NULL,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "random",
    "1.0",
    "control: k distinct experts uniformly at random per sample, gate 1/k, prob uniform",
    options,
    NUM_OPTS,
    &api,
};
