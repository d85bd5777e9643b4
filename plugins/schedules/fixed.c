/*
 * fixed — no growth: every layer keeps the configured number of experts. With `prune_dead`
 * (ABI 1.2), experts that have had no dispatched slot for `dead_window` training steps in a
 * row are removed (never the last one) and not replaced: the layer shrinks to the experts
 * the router uses. The idle counts are per-layer state tensors, checkpointed.
 */
#include "moelab/plugin_aux.h"

typedef struct sched {
    const ml_host *host;
    int prune;
    int64_t window;
} sched;

enum { NUM_OPTS = 2 };

static const ml_option options[NUM_OPTS] = {
    {"prune_dead", ML_OPT_BOOL, "false", 0, -1, NULL, "remove experts dead for dead_window steps", 0},
    {"dead_window", ML_OPT_INT, "300", 1, 1e9, NULL, "training steps without a dispatched slot that make an expert dead", 0},
};

static void *create(const ml_host *host, const ml_schedule_init *init, char *err) {
    sched *s = ml_aux_new(host, sizeof *s, "fixed", err);
    if (!s) return NULL;
    s->host = host;
    s->prune = (int)ml_aux_option(options, NUM_OPTS, init->opt, "prune_dead")->i;
    s->window = ml_aux_option(options, NUM_OPTS, init->opt, "dead_window")->i;
    return s;
}

static void destroy(void *self) {
    sched *s = self;
    if (s) s->host->free(s);
}

static int initial_experts(void *self, int layer, int configured) {
    (void)self, (void)layer;
    return configured;
}

static int states(void *self, ml_tensor_decl *out, int cap) {
    sched *s = self;
    if (!s->prune) return 0;
    if (cap < 1) return -1;
    out[0] = (ml_tensor_decl){.name = "idle", .per_expert = 1, .cols = 1, .init = ML_INIT_ZEROS};
    return 1;
}

static int observe(void *self, const ml_schedule_obs *o, char *err) {
    sched *s = self;
    (void)err;
    if (s->prune) ml_aux_idle_update(o->state[0], o->route);
    return 0;
}

static int decide_v2(void *self, const ml_progress *p, ml_schedule_decision *d, char *err) {
    sched *s = self;
    (void)err;
    for (int l = 0; l < p->num_layers && s->prune; l++)
        d->n_remove[l] = ml_aux_dead_experts(d->state[l][0], p->num_experts[l], (double)s->window, 1, d->remove[l]);
    return 0;
}

static const ml_schedule_api api = {
    .size = sizeof(ml_schedule_api),
    .create = create,
    .destroy = destroy,
    .initial_experts = initial_experts,
    .states = states,
    .observe = observe,
    .decide_v2 = decide_v2,
};

ML_PLUGIN_EXPORT = {
    ML_PLUGIN_HEADER(ML_PLUGIN_SCHEDULE),
    .name = "fixed",
    .version = "1.1",
    .doc = "no growth: the configured number of experts throughout; prune_dead removes dead experts",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
