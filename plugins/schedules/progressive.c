/*
 * progressive — grow every layer by `add` experts each `every_images` training images,
 * from `start` up to `max`:
 *
 *     target = min(max, start + floor(images_seen / every_images) * add)
 *     add[l] = max(0, target - num_experts[l])
 *
 * With `prune_dead` (ABI 1.2), experts that have had no dispatched slot for `dead_window`
 * training steps in a row are removed (never the last one), and the target counts the
 * experts that stay, so a dead expert is replaced by a fresh one (started as the config's
 * growth.init says) rather than kept: dead-expert recycling within the schedule.
 *
 * Without prune_dead the decision depends only on the progress record, so resuming from a
 * checkpoint (images_seen and num_experts restored) continues the same schedule; with it,
 * each layer's idle counts are state tensors, checkpointed like any other.
 */
#include "moelab/plugin_aux.h"

typedef struct sched {
    const ml_host *host;
    int64_t start, every, add, max;
    int prune;
    int64_t window;
} sched;

enum { NUM_OPTS = 6 };

static const ml_option options[NUM_OPTS] = {
    {"start", ML_OPT_INT, "2", 1, 4096, NULL, "experts per layer at the start", 0},
    {"every_images", ML_OPT_INT, "7000", 1, 1e12, NULL, "training images between additions", 0},
    {"add", ML_OPT_INT, "1", 1, 4096, NULL, "experts added to each layer per addition", 0},
    {"max", ML_OPT_INT, "16", 1, 4096, NULL, "experts per layer at most", 0},
    {"prune_dead", ML_OPT_BOOL, "false", 0, -1, NULL,
     "remove experts dead for dead_window steps (the target then refills the layer)", 0},
    {"dead_window", ML_OPT_INT, "300", 1, 1e9, NULL, "training steps without a dispatched slot that make an expert dead", 0},
};

static void *create(const ml_host *host, const ml_schedule_init *init, char *err) {
    sched *s = ml_aux_new(host, sizeof *s, "progressive", err);
    if (!s) return NULL;
    s->host = host;
    s->start = ml_aux_option(options, NUM_OPTS, init->opt, "start")->i;
    s->every = ml_aux_option(options, NUM_OPTS, init->opt, "every_images")->i;
    s->add = ml_aux_option(options, NUM_OPTS, init->opt, "add")->i;
    s->max = ml_aux_option(options, NUM_OPTS, init->opt, "max")->i;
    s->prune = (int)ml_aux_option(options, NUM_OPTS, init->opt, "prune_dead")->i;
    s->window = ml_aux_option(options, NUM_OPTS, init->opt, "dead_window")->i;
    return s;
}

static void destroy(void *self) {
    sched *s = self;
    if (s) s->host->free(s);
}

static int initial_experts(void *self, int layer, int configured) {
    sched *s = self;
    (void)layer, (void)configured;
    return (int)(s->start < s->max ? s->start : s->max);
}

/* With prune_dead, one per-expert state tensor: steps since the expert's last slot. */
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
    int64_t steps = p->images_seen > 0 ? p->images_seen / s->every : 0;
    /* steps * add can exceed max by far; cap before multiplying */
    int64_t target = steps >= s->max ? s->max : s->start + steps * s->add;
    if (target > s->max) target = s->max;
    for (int l = 0; l < p->num_layers; l++) {
        int N = p->num_experts[l];
        d->n_remove[l] = s->prune ? ml_aux_dead_experts(d->state[l][0], N, (double)s->window, 1, d->remove[l]) : 0;
        int64_t more = target - (N - d->n_remove[l]);
        d->add[l] = more > 0 ? (int)more : 0;
    }
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
    .name = "progressive",
    .version = "1.1",
    .doc = "add `add` experts per layer every `every_images` images, from `start` to `max`; prune_dead recycles dead experts",
    .options = options,
    .num_options = NUM_OPTS,
    .api = &api,
};
