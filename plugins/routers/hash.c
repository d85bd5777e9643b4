/*
 * hash — Hash Layers: a fixed, parameter-free assignment of samples to experts.
 *
 * Source: S. Roller, S. Sukhbaatar, A. Szlam, J. Weston, "Hash Layers For Large Sparse
 * Models", NeurIPS 2021, the method section ("Hash Layers"): the expert of an input is a fixed hash
 * of the input itself (the paper hashes the token id), not a learned function of its
 * representation. Here the hashed key is the dataset index r->sample_id[b]:
 *
 *   expert(b) = splitmix64(sample_id[b]) mod N,  gate 1
 *
 * splitmix64 (Steele, Lea, Flood 2014) mixes every bit of the id, so consecutive ids
 * spread evenly over the experts and a sample keeps its expert across steps and epochs.
 * With k > 1 the sample gets k distinct experts, each with gate 1/k: a partial
 * Fisher-Yates shuffle of 0..N-1 driven by successive splitmix64 outputs seeded by the id
 * (the first expert is the k = 1 one). k is clipped to N.
 *
 * prob = 1/k on the hashed experts and 0 elsewhere (one-hot for k = 1): the routing
 * distribution is that of the hash, which has no gradient. logits are 0 (there are no
 * scores). No parameters, no state; backward adds nothing (the route does not depend on x).
 * Caveat: the assignment is "mod N", so adding experts re-hashes most samples, as any
 * fixed hash must; balance is by the ids, not by the data.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "moelab/plugin_aux.h"

enum { OPT_K, NUM_OPTS };

static const ml_option options[NUM_OPTS] = {
    [OPT_K] = {"k", ML_OPT_INT, "1", 1, 64, NULL,
               "distinct hashed experts per sample, gate 1/k each (clipped to N)"},
};

typedef struct hashr {
    const ml_host *host;
    int k;
    ml_aux_buf perm; /* (N) int: shuffle scratch */
} hashr;

/* splitmix64 step: advances *x and returns the mixed value. */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void *hash_create(const ml_host *host, const ml_router_init *init, char *err) {
    const ml_optval *o = init->opt;
    if (init->num_experts < 1) {
        snprintf(err, ML_ERR_MAX, "hash: needs num_experts >= 1, got %d", init->num_experts);
        return NULL;
    }
    if (o[OPT_K].i < 1 || o[OPT_K].i > 64) {
        snprintf(err, ML_ERR_MAX, "hash: option k must be in [1, 64], got %lld",
                 (long long)o[OPT_K].i);
        return NULL;
    }
    hashr *s = ml_aux_new(host, sizeof *s, "hash", err);
    if (!s) return NULL;
    s->host = host;
    s->k = (int)o[OPT_K].i;
    return s;
}

static void hash_destroy(void *self) {
    hashr *s = self;
    if (!s) return;
    ml_aux_buf_free(s->host, &s->perm);
    s->host->free(s);
}

static int hash_none(void *self, ml_tensor_decl *out, int cap) {
    (void)self, (void)out, (void)cap;
    return 0;
}

static int hash_forward(void *self, ml_route *r, char *err) {
    hashr *s = self;
    int B = r->B, N = r->N;
    if (N < 1 || B < 0) {
        snprintf(err, ML_ERR_MAX, "hash: forward with B=%d N=%d", B, N);
        return -1;
    }
    r->n_disp = 0;
    r->n_dropped = 0;
    if (B == 0) return 0;
    if (!r->sample_id) {
        snprintf(err, ML_ERR_MAX, "hash: the host passed no sample_id, which hash routing needs");
        return -1;
    }
    int *perm = ml_aux_buf_get(s->host, &s->perm, (size_t)N * sizeof(int));
    if (!perm) {
        snprintf(err, ML_ERR_MAX, "hash: out of memory for N=%d", N);
        return -1;
    }
    int k = s->k < N ? s->k : N;
    float gate = 1.0f / (float)k;
    size_t bn = (size_t)B * (size_t)N;
    memset(r->logits, 0, bn * sizeof(float));
    memset(r->prob, 0, bn * sizeof(float));
    for (int b = 0; b < B; b++) {
        uint64_t st = (uint64_t)(uint32_t)r->sample_id[b];
        for (int n = 0; n < N; n++) perm[n] = n;
        for (int j = 0; j < k; j++) {
            int pick = j + (int)(splitmix64(&st) % (uint64_t)(N - j));
            int e = perm[pick];
            perm[pick] = perm[j];
            perm[j] = e;
            r->prob[(size_t)b * N + e] = gate;
            ml_aux_dispatch(r, b, e, gate);
        }
    }
    return 0;
}

static int hash_backward(void *self, const ml_route *r, const ml_route_grad *g, char *err) {
    (void)self, (void)r, (void)g, (void)err;
    return 0; /* the route does not depend on x: nothing flows back */
}

static const ml_router_api api = {
    sizeof(ml_router_api), hash_create, hash_destroy, hash_none, hash_none,
    hash_forward, hash_backward, NULL,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_ROUTER),
    "hash",
    "1.0",
    "Roller et al. 2021 hash layers: expert = splitmix64(sample id) mod N, no parameters",
    options,
    NUM_OPTS,
    &api,
};
